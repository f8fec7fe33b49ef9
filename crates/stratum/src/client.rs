//! The client half as a state machine without I/O: what a miner (or a proxy's upstream side) sends,
//! and what each line from the pool means for it (stratum-v1.md §3, §4, §11).
//!
//! Feed every line from the pool to [`ClientSession::on_line`]; it returns [`ClientEvent`]s and
//! queues the lines to send, which [`ClientSession::take_output`] drains. The flow: `configure`
//! (when version rolling is wanted) and `subscribe` at [`ClientSession::start`]; after the subscribe
//! reply, `suggest_difficulty` (if set), `extranonce.subscribe` (if set) and `authorize`.
//!
//! Semantics kept here so every user gets them right:
//! * a difficulty applies to the jobs that arrive after it (cgminer semantics): each
//!   [`Assignment`] carries the difficulty current when its notify arrived;
//! * `set_extranonce` applies from the next notify;
//! * `set_version_mask` (or SRI's `set_version`) applies at once and only narrows what configure
//!   granted;
//! * a reply is a reject when `error` is non-null or `result` is not `true` (§6);
//! * requests in flight are bounded ([`PENDING_REQUESTS_MAX`]); a pool that never answers makes
//!   [`ClientSession::submit`] fail instead of growing memory.

use crate::client_to_server::{ClientRequest, Configure, Submit};
use crate::envelope::Incoming;
use crate::server_to_client::{reply_verdict, result_line, Notify, ServerMessage};
use crate::{code, parse_hex, EXTRANONCE2_BYTES_MAX};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Requests awaiting a reply, at most. A submit beyond it is refused with [`ClientError::TooManyPending`].
pub const PENDING_REQUESTS_MAX: usize = 1024;

/// Longest extranonce1 accepted from a pool, in bytes.
pub const EXTRANONCE1_BYTES_MAX: usize = 32;

/// What the client asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// User agent sent in subscribe (`name/version`).
    pub agent: String,
    /// `address[.worker]`.
    pub user: String,
    /// Password (may carry `d=` hints).
    pub password: String,
    /// Version-rolling mask to request in `mining.configure`; `None` sends no configure.
    pub version_rolling_mask: Option<u32>,
    /// Difficulty to suggest after subscribing.
    pub suggest_difficulty: Option<f64>,
    /// Send `mining.extranonce.subscribe`.
    pub extranonce_subscribe: bool,
}

/// A job with everything needed to mine it, fixed when its notify arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The notify.
    pub notify: Notify,
    /// Extranonce1 in force for this job.
    pub extranonce1: Vec<u8>,
    /// Extranonce2 size in bytes.
    pub extranonce2_size: usize,
    /// Difficulty current when the job arrived.
    pub difficulty: f64,
    /// Granted version-rolling mask (`None`: do not roll).
    pub version_mask: Option<u32>,
}

/// What a line from the pool meant.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Subscribe succeeded.
    Subscribed {
        /// Extranonce1.
        extranonce1: Vec<u8>,
        /// Extranonce2 size.
        extranonce2_size: usize,
    },
    /// The configure reply: the granted mask, or `None` when the pool refused or ignored rolling.
    VersionRolling(Option<u32>),
    /// Authorize succeeded.
    Authorized,
    /// A new job.
    Job(Box<Assignment>),
    /// The version mask changed (applies at once).
    VersionMask(u32),
    /// A new difficulty (applies to the next job).
    Difficulty(f64),
    /// A submit's verdict.
    SubmitResult {
        /// The request id [`ClientSession::submit`] returned.
        id: u64,
        /// Accepted, or rejected with the pool's reason.
        outcome: Result<(), String>,
    },
    /// The pool asks us to reconnect.
    Reconnect {
        /// Host, if given.
        host: Option<String>,
        /// Port, if given.
        port: Option<u16>,
        /// Seconds to wait first.
        wait_s: u64,
    },
    /// `client.show_message`.
    Message(String),
    /// A line that could not be used; the session goes on (a malformed job is dropped).
    Ignored(String),
}

/// Why the session cannot go on (reconnect, or try another pool).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The pool refused or garbled the subscribe.
    #[error("subscribe failed: {0}")]
    Subscribe(String),
    /// The pool refused the credentials.
    #[error("authorization refused: {0}")]
    Authorize(String),
    /// A notify or submit arrived before the session was subscribed.
    #[error("pool sent {0} before subscribe completed")]
    OutOfOrder(&'static str),
    /// Too many requests in flight.
    #[error("{0} requests awaiting replies (limit PENDING_REQUESTS_MAX); the pool is not answering")]
    TooManyPending(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Configure,
    Subscribe,
    Authorize,
    SuggestDifficulty,
    ExtranonceSubscribe,
    Submit,
}

/// One connection's client state.
#[derive(Debug)]
pub struct ClientSession {
    opts: ClientOptions,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    extranonce: Option<(Vec<u8>, usize)>,
    next_extranonce: Option<(Vec<u8>, usize)>,
    difficulty: f64,
    mask: Option<u32>,
    authorized: bool,
    out: Vec<String>,
}

impl ClientSession {
    /// A session that has sent nothing yet.
    pub fn new(opts: ClientOptions) -> ClientSession {
        ClientSession {
            opts,
            next_id: 1,
            pending: HashMap::new(),
            extranonce: None,
            next_extranonce: None,
            difficulty: 1.0,
            mask: None,
            authorized: false,
            out: Vec::new(),
        }
    }

    fn request(&mut self, req: &ClientRequest, kind: Pending) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.out.push(req.to_line(id));
        self.pending.insert(id, kind);
        id
    }

    /// Queues the opening requests (configure, subscribe).
    pub fn start(&mut self) {
        if let Some(mask) = self.opts.version_rolling_mask {
            let c = Configure {
                extensions: vec!["version-rolling".into()],
                version_rolling_mask: Some(mask),
                version_rolling_min_bit_count: Some(2),
                minimum_difficulty: None,
            };
            self.request(&ClientRequest::Configure(c), Pending::Configure);
        }
        let sub = ClientRequest::Subscribe {
            agent: Some(self.opts.agent.clone()),
            session: None,
        };
        self.request(&sub, Pending::Subscribe);
    }

    /// Lines to write to the pool, in order.
    pub fn take_output(&mut self) -> Vec<String> {
        std::mem::take(&mut self.out)
    }

    /// Whether subscribe and authorize both succeeded.
    pub fn ready(&self) -> bool {
        self.authorized && self.extranonce.is_some()
    }

    /// The difficulty the next job will carry.
    pub fn difficulty(&self) -> f64 {
        self.difficulty
    }

    /// The granted version-rolling mask.
    pub fn version_mask(&self) -> Option<u32> {
        self.mask
    }

    /// Requests awaiting replies.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues a `mining.submit`; returns its request id.
    pub fn submit(
        &mut self,
        job_id: &str,
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version_bits: Option<u32>,
    ) -> Result<u64, ClientError> {
        if self.extranonce.is_none() {
            return Err(ClientError::OutOfOrder("a share"));
        }
        if self.pending.len() >= PENDING_REQUESTS_MAX {
            return Err(ClientError::TooManyPending(self.pending.len()));
        }
        let s = Submit {
            worker: self.opts.user.clone(),
            job_id: job_id.to_string(),
            extranonce2: extranonce2.to_vec(),
            ntime,
            nonce,
            version_bits: if self.mask.is_some() { version_bits } else { None },
        };
        Ok(self.request(&ClientRequest::Submit(s), Pending::Submit))
    }

    /// Handles one line from the pool (without its newline).
    pub fn on_line(&mut self, line: &[u8]) -> Result<Vec<ClientEvent>, ClientError> {
        let msg = match Incoming::parse(line) {
            Ok(m) => m,
            Err(e) => return Ok(vec![ClientEvent::Ignored(e.to_string())]),
        };
        match msg {
            Incoming::Response {
                id,
                result,
                error,
                reject_reason,
            } => self.on_response(&id, &result, &error, reject_reason.as_deref()),
            Incoming::Notification { method, params } => self.on_notification(&method, &params),
            Incoming::Request { id, method, params } => {
                // A server-to-client request: answer it (cgminer and cpuminer answer client.get_version).
                if method == "client.get_version" {
                    self.out.push(result_line(&id, json!(self.opts.agent)));
                    return Ok(Vec::new());
                }
                // Some pools put an id on notifications: handle them as such, answer the rest with 20.
                match ServerMessage::parse(&method, &params) {
                    Ok(Some(_)) => self.on_notification(&method, &params),
                    _ => {
                        self.out.push(crate::server_to_client::error_line(
                            &id,
                            code::OTHER,
                            "Unknown method",
                        ));
                        Ok(vec![ClientEvent::Ignored(format!(
                            "unknown request {}",
                            method.chars().take(64).collect::<String>()
                        ))])
                    }
                }
            }
        }
    }

    fn on_response(
        &mut self,
        id: &Value,
        result: &Value,
        error: &Value,
        reject_reason: Option<&str>,
    ) -> Result<Vec<ClientEvent>, ClientError> {
        let Some((n, kind)) = id.as_u64().and_then(|n| self.pending.remove(&n).map(|k| (n, k))) else {
            return Ok(vec![ClientEvent::Ignored(format!(
                "reply to an unknown id {}",
                truncate(&id.to_string())
            ))]);
        };
        let verdict = reply_verdict(result, error, reject_reason);
        match kind {
            Pending::Configure => {
                let _ = verdict; // a configure result is an object, not `true`
                let granted = (result.get("version-rolling") == Some(&Value::Bool(true)))
                    .then(|| {
                        result
                            .get("version-rolling.mask")
                            .and_then(Value::as_str)
                            .and_then(|s| crate::parse_hex_u32(&format!("{s:0>8}")))
                    })
                    .flatten()
                    .map(|m| m & self.opts.version_rolling_mask.unwrap_or(0))
                    .filter(|m| *m != 0);
                self.mask = granted;
                Ok(vec![ClientEvent::VersionRolling(granted)])
            }
            Pending::Subscribe => {
                // A subscribe result is an array, not `true`: a non-null error or a non-array fails it.
                if !error.is_null() || !result.is_array() {
                    return Err(ClientError::Subscribe(
                        verdict.err().unwrap_or_else(|| "result is not an array".into()),
                    ));
                }
                let en1 = result
                    .get(1)
                    .and_then(Value::as_str)
                    .and_then(|s| parse_hex(s, EXTRANONCE1_BYTES_MAX))
                    .ok_or_else(|| {
                        ClientError::Subscribe(format!(
                            "extranonce1 must be hex of at most {EXTRANONCE1_BYTES_MAX} bytes"
                        ))
                    })?;
                let size = result
                    .get(2)
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n <= EXTRANONCE2_BYTES_MAX)
                    .ok_or_else(|| {
                        ClientError::Subscribe(format!(
                            "extranonce2 size must be an integer 0..={EXTRANONCE2_BYTES_MAX}"
                        ))
                    })?;
                self.extranonce = Some((en1.clone(), size));
                if let Some(d) = self.opts.suggest_difficulty {
                    self.request(&ClientRequest::SuggestDifficulty(d), Pending::SuggestDifficulty);
                }
                if self.opts.extranonce_subscribe {
                    self.request(&ClientRequest::ExtranonceSubscribe, Pending::ExtranonceSubscribe);
                }
                let auth = ClientRequest::Authorize {
                    user: self.opts.user.clone(),
                    password: self.opts.password.clone(),
                };
                self.request(&auth, Pending::Authorize);
                Ok(vec![ClientEvent::Subscribed {
                    extranonce1: en1,
                    extranonce2_size: size,
                }])
            }
            Pending::Authorize => match verdict {
                Ok(()) => {
                    self.authorized = true;
                    Ok(vec![ClientEvent::Authorized])
                }
                Err(e) => Err(ClientError::Authorize(e)),
            },
            // Optional requests: a refusal changes nothing.
            Pending::SuggestDifficulty | Pending::ExtranonceSubscribe => Ok(Vec::new()),
            Pending::Submit => Ok(vec![ClientEvent::SubmitResult {
                id: n,
                outcome: verdict,
            }]),
        }
    }

    fn on_notification(&mut self, method: &str, params: &[Value]) -> Result<Vec<ClientEvent>, ClientError> {
        let msg = match ServerMessage::parse(method, params) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Ok(vec![ClientEvent::Ignored(format!(
                    "unknown notification {}",
                    truncate(method)
                ))])
            }
            Err(e) => return Ok(vec![ClientEvent::Ignored(e.to_string())]),
        };
        Ok(vec![match msg {
            ServerMessage::Notify(n) => {
                if let Some(next) = self.next_extranonce.take() {
                    self.extranonce = Some(next);
                }
                let Some((en1, size)) = self.extranonce.clone() else {
                    return Err(ClientError::OutOfOrder("mining.notify"));
                };
                ClientEvent::Job(Box::new(Assignment {
                    notify: n,
                    extranonce1: en1,
                    extranonce2_size: size,
                    difficulty: self.difficulty,
                    version_mask: self.mask,
                }))
            }
            ServerMessage::SetDifficulty(d) => {
                self.difficulty = d;
                ClientEvent::Difficulty(d)
            }
            ServerMessage::SetVersionMask(m) => {
                // Only narrows what was negotiated; without configure there is nothing to roll.
                let requested = self.opts.version_rolling_mask.unwrap_or(0);
                let m = m & requested;
                self.mask = (m != 0).then_some(m);
                ClientEvent::VersionMask(m)
            }
            ServerMessage::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => {
                if extranonce1.len() > EXTRANONCE1_BYTES_MAX {
                    return Ok(vec![ClientEvent::Ignored(
                        "set_extranonce: extranonce1 too long".into(),
                    )]);
                }
                self.next_extranonce = Some((extranonce1, extranonce2_size));
                ClientEvent::Ignored("set_extranonce: applies from the next notify".into())
            }
            ServerMessage::Reconnect { host, port, wait_s } => ClientEvent::Reconnect { host, port, wait_s },
            ServerMessage::ShowMessage(m) => ClientEvent::Message(m),
        }])
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ClientOptions {
        ClientOptions {
            agent: "cloudmine/0".into(),
            user: "bcrt1qexample.w1".into(),
            password: "x".into(),
            version_rolling_mask: Some(0x1fff_e000),
            suggest_difficulty: Some(0.5),
            extranonce_subscribe: true,
        }
    }

    fn feed(s: &mut ClientSession, line: &str) -> Vec<ClientEvent> {
        s.on_line(line.as_bytes()).unwrap()
    }

    const NOTIFY: &str = r#"{"id":null,"method":"mining.notify","params":["7","00000000000000000000000000000000000000000000000000000000000000aa","01","02",[],"20000000","207fffff","5f5e1000",true]}"#;

    #[test]
    fn full_handshake_and_job_semantics() {
        let mut s = ClientSession::new(opts());
        s.start();
        let out = s.take_output();
        assert_eq!(out.len(), 2);
        assert!(out[0].contains("mining.configure") && out[0].contains("1fffe000"));
        assert!(out[1].contains("mining.subscribe") && out[1].contains("\"id\":2"));
        assert_eq!(
            feed(
                &mut s,
                r#"{"id":1,"result":{"version-rolling":true,"version-rolling.mask":"1fffe000"},"error":null}"#
            ),
            vec![ClientEvent::VersionRolling(Some(0x1fff_e000))]
        );
        let ev = feed(
            &mut s,
            r#"{"id":2,"result":[[["mining.notify","1"]],"0000abcd",4],"error":null}"#,
        );
        assert_eq!(
            ev,
            vec![ClientEvent::Subscribed {
                extranonce1: vec![0, 0, 0xab, 0xcd],
                extranonce2_size: 4
            }]
        );
        let out = s.take_output();
        assert!(out[0].contains("mining.suggest_difficulty"));
        assert!(out[1].contains("mining.extranonce.subscribe"));
        assert!(out[2].contains("mining.authorize"));
        assert!(!s.ready());
        assert_eq!(
            feed(&mut s, r#"{"id":5,"result":true,"error":null}"#),
            vec![ClientEvent::Authorized]
        );
        assert!(s.ready());
        // difficulty applies to the next job, not retroactively
        feed(
            &mut s,
            r#"{"id":null,"method":"mining.set_difficulty","params":[0.001]}"#,
        );
        let ev = feed(&mut s, NOTIFY);
        let ClientEvent::Job(a) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(a.difficulty, 0.001);
        assert_eq!(a.version_mask, Some(0x1fff_e000));
        feed(&mut s, r#"{"method":"mining.set_difficulty","params":[8]}"#);
        assert_eq!(s.difficulty(), 8.0);
        // set_extranonce applies from the next notify
        feed(
            &mut s,
            r#"{"id":null,"method":"mining.set_extranonce","params":["ffff0000",8]}"#,
        );
        let ev = feed(&mut s, NOTIFY);
        let ClientEvent::Job(b) = &ev[0] else { panic!() };
        assert_eq!(
            (b.extranonce1.clone(), b.extranonce2_size, b.difficulty),
            (vec![0xff, 0xff, 0, 0], 8, 8.0)
        );
        // set_version (SRI's name) narrows the mask at once
        feed(
            &mut s,
            r#"{"id":null,"method":"mining.set_version","params":["00006000"]}"#,
        );
        assert_eq!(s.version_mask(), Some(0x6000));
        // submits carry version bits; verdicts in the reject form of §6
        let id = s
            .submit("7", &[0, 0, 0, 1], 0x5f5e1000, 42, Some(0x2000))
            .unwrap();
        let line = s.take_output().pop().unwrap();
        assert!(
            line.contains(r#""params":["bcrt1qexample.w1","7","00000001","5f5e1000","0000002a","00002000"]"#),
            "{line}"
        );
        let ev = feed(
            &mut s,
            &format!(
                r#"{{"id":{id},"result":false,"error":[23,"Low difficulty share",null],"reject-reason":"Low difficulty share"}}"#
            ),
        );
        assert_eq!(
            ev,
            vec![ClientEvent::SubmitResult {
                id,
                outcome: Err("Low difficulty share".into())
            }]
        );
    }

    #[test]
    fn refusals_and_garbage() {
        let mut s = ClientSession::new(ClientOptions {
            version_rolling_mask: None,
            suggest_difficulty: None,
            extranonce_subscribe: false,
            ..opts()
        });
        s.start();
        assert_eq!(s.take_output().len(), 1);
        // a notify before subscribe is a protocol error
        assert_eq!(
            s.on_line(NOTIFY.as_bytes()),
            Err(ClientError::OutOfOrder("mining.notify"))
        );
        // garbage is ignored, not fatal
        for bad in [
            "{",
            "[]",
            r#"{"id":99,"result":true}"#,
            r#"{"method":"mining.notify","params":["1"]}"#,
            r#"{"method":"mining.set_difficulty","params":[-1]}"#,
        ] {
            let ev = s.on_line(bad.as_bytes()).unwrap();
            assert!(
                matches!(ev.as_slice(), [ClientEvent::Ignored(_)]),
                "{bad}: {ev:?}"
            );
        }
        assert!(matches!(
            s.on_line(br#"{"id":1,"result":[[],"zz",4],"error":null}"#),
            Err(ClientError::Subscribe(_))
        ));
        let mut s = ClientSession::new(opts());
        s.start();
        s.take_output();
        // a pool without configure: error 20, no rolling
        assert_eq!(
            feed(
                &mut s,
                r#"{"id":1,"result":null,"error":[20,"Unknown method",null]}"#
            ),
            vec![ClientEvent::VersionRolling(None)]
        );
        feed(&mut s, r#"{"id":2,"result":[[],"00",0],"error":null}"#);
        s.take_output();
        assert!(matches!(
            s.on_line(br#"{"id":5,"result":false,"error":[24,"Unauthorized worker",null]}"#),
            Err(ClientError::Authorize(_))
        ));
        // submits without a granted mask carry no version bits
        let _ = s.submit("1", &[], 1, 2, Some(0x2000)).unwrap();
        let line = s.take_output().pop().unwrap();
        assert!(line.contains(r#""00000002"]"#), "{line}");
        // client.get_version is answered
        feed(&mut s, r#"{"id":"v","method":"client.get_version","params":[]}"#);
        assert_eq!(
            s.take_output(),
            vec!["{\"error\":null,\"id\":\"v\",\"result\":\"cloudmine/0\"}\n".to_string()]
        );
    }

    #[test]
    fn pending_requests_are_bounded() {
        let mut s = ClientSession::new(ClientOptions {
            version_rolling_mask: None,
            ..opts()
        });
        s.start();
        s.on_line(br#"{"id":1,"result":[[],"00",4],"error":null}"#)
            .unwrap();
        let mut refused = None;
        for i in 0..PENDING_REQUESTS_MAX + 5 {
            if let Err(e) = s.submit("1", &[0; 4], 0, i as u32, None) {
                refused = Some((i, e));
                break;
            }
        }
        let (i, e) = refused.unwrap();
        assert_eq!(e, ClientError::TooManyPending(PENDING_REQUESTS_MAX));
        assert!(i < PENDING_REQUESTS_MAX);
    }
}
