//! ZMQ `hashblock` notifications, both ends, as Bitcoin Core speaks them.
//!
//! A message is three frames: `"hashblock"`, the 32-byte block hash in display (RPC) byte order, and a
//! 4-byte little-endian sequence number (Core's `zmqpublishnotifier.cpp`). The subscriber reconnects
//! with exponential backoff (up to [`RECONNECT_BACKOFF_MAX`]); a malformed message is logged and
//! skipped. The publisher lets the dev chain notify other pool software the way Core would.

use crate::Tip;
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::watch;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

/// Longest wait between reconnect attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The topic.
pub const TOPIC: &str = "hashblock";

/// Parses a `hashblock` message into the block hash.
pub fn parse_hashblock(m: &ZmqMessage) -> Result<BlockHash, String> {
    if m.get(0).map(|t| t.as_ref()) != Some(TOPIC.as_bytes()) {
        return Err("not a hashblock message".into());
    }
    let body = m.get(1).ok_or("hashblock message without a body")?;
    let mut h: [u8; 32] = body
        .as_ref()
        .try_into()
        .map_err(|_| format!("hashblock body is {} bytes, not 32", body.len()))?;
    h.reverse(); // display order -> internal order
    Ok(BlockHash::from_byte_array(h))
}

/// Builds a `hashblock` message.
pub fn hashblock_message(hash: &BlockHash, seq: u32) -> ZmqMessage {
    let mut display = hash.to_byte_array();
    display.reverse();
    let mut m = ZmqMessage::from(Bytes::from_static(TOPIC.as_bytes()));
    m.push_back(Bytes::copy_from_slice(&display));
    m.push_back(Bytes::copy_from_slice(&seq.to_le_bytes()));
    m
}

/// Subscribes to `endpoint` and calls `on_block` for every hash, reconnecting forever (the caller owns
/// the task and aborts it to stop).
pub async fn subscribe(endpoint: String, on_block: impl Fn(BlockHash) + Send + 'static) {
    let mut wait = Duration::from_millis(100);
    loop {
        let mut sub = zeromq::SubSocket::new();
        let connected = async {
            sub.connect(&endpoint).await?;
            sub.subscribe(TOPIC).await
        }
        .await;
        if let Err(e) = connected {
            tracing::warn!(%endpoint, error = %e, "ZMQ connect failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RECONNECT_BACKOFF_MAX);
            continue;
        }
        wait = Duration::from_millis(100);
        loop {
            match sub.recv().await {
                Ok(m) => match parse_hashblock(&m) {
                    Ok(h) => on_block(h),
                    Err(e) => tracing::warn!(%endpoint, error = %e, "ignoring a malformed ZMQ message"),
                },
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "ZMQ receive failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Binds a publisher on `endpoint` (e.g. `tcp://127.0.0.1:28332`; port 0 picks one) and publishes every
/// new tip. Returns the bound endpoint and the task (abort it to stop).
pub async fn publish(
    endpoint: &str,
    mut tips: watch::Receiver<Tip>,
) -> Result<(String, tokio::task::JoinHandle<()>), String> {
    let mut pub_socket = zeromq::PubSocket::new();
    let bound = pub_socket
        .bind(endpoint)
        .await
        .map_err(|e| format!("ZMQ bind {endpoint}: {e}"))?;
    let task = tokio::spawn(async move {
        let mut seq = 0u32;
        while tips.changed().await.is_ok() {
            let tip = *tips.borrow_and_update();
            if let Err(e) = pub_socket.send(hashblock_message(&tip.hash, seq)).await {
                tracing::warn!(error = %e, "ZMQ publish failed");
            }
            seq = seq.wrapping_add(1);
        }
    });
    Ok((bound.to_string(), task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_bad_messages() {
        let h = devchain::params::genesis().block_hash();
        let m = hashblock_message(&h, 7);
        assert_eq!(parse_hashblock(&m), Ok(h));
        // body in display order, as Core sends it
        assert_eq!(m.get(1).map(|b| b[0]), Some(0x0f));
        assert!(parse_hashblock(&ZmqMessage::from("rawtx")).is_err());
        let mut short = ZmqMessage::from("hashblock");
        short.push_back(Bytes::from_static(&[1, 2, 3]));
        assert!(parse_hashblock(&short).unwrap_err().contains("3 bytes"));
    }
}
