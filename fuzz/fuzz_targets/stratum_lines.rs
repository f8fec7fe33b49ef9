//! Fuzz target: arbitrary bytes through the pool's line decoder, the JSON-RPC envelope, the request
//! parser (submit included) and the client-side notification parser. Nothing may panic, no line may
//! exceed the limit, and a parsed submit must survive an encode/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratum::framing::{LineBuffer, MINER_LINE_BYTES_MAX};
use stratum::{ClientRequest, Incoming, ServerMessage};

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the input is chunked, as a socket would deliver it.
    let (split, body) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => return,
    };
    let mut buf = LineBuffer::new(MINER_LINE_BYTES_MAX);
    for chunk in body.chunks(split) {
        buf.extend(chunk);
        loop {
            let line = match buf.next_line() {
                Ok(Some(l)) => l.to_vec(),
                Ok(None) => break,
                Err(_) => return, // the connection would be closed
            };
            assert!(line.len() <= MINER_LINE_BYTES_MAX);
            let Ok(msg) = Incoming::parse(&line) else { continue };
            match msg {
                Incoming::Request { method, params, .. } | Incoming::Notification { method, params } => {
                    if let Ok(req) = ClientRequest::parse(&method, &params) {
                        if let ClientRequest::Submit(s) = &req {
                            let again = req.to_line(1);
                            let Ok(Incoming::Request { method, params, .. }) = Incoming::parse(again.trim_end().as_bytes()) else {
                                panic!("encoded submit does not parse");
                            };
                            assert_eq!(ClientRequest::parse(&method, &params).ok(), Some(ClientRequest::Submit(s.clone())));
                        }
                    }
                    let _ = ServerMessage::parse(&method, &params);
                }
                Incoming::Response { .. } => {}
            }
        }
    }
});
