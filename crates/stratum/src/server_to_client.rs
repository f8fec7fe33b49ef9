//! Server → client messages and replies: encoding (pool side) and parsing (miner and proxy side).

use crate::{parse_hex, parse_hex_u32, to_hex, ParseError};
use serde_json::{json, Value};

/// `mining.notify` params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Job id (short decimal digits from our pool).
    pub job_id: String,
    /// Previous block hash in Stratum's word-swapped form.
    pub prevhash: [u8; 32],
    /// Coinbase before EN1.
    pub coinb1: Vec<u8>,
    /// Coinbase after EN2.
    pub coinb2: Vec<u8>,
    /// Merkle branch, internal order.
    pub merkle_branch: Vec<[u8; 32]>,
    /// Version.
    pub version: u32,
    /// nbits.
    pub nbits: u32,
    /// ntime.
    pub ntime: u32,
    /// Discard earlier jobs.
    pub clean_jobs: bool,
}

/// A message from the server that is not a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `mining.notify`.
    Notify(Notify),
    /// `mining.set_difficulty` (int or float on the wire).
    SetDifficulty(f64),
    /// `mining.set_version_mask` (or SRI's `mining.set_version`).
    SetVersionMask(u32),
    /// `mining.set_extranonce`.
    SetExtranonce {
        /// New extranonce1.
        extranonce1: Vec<u8>,
        /// New extranonce2 size.
        extranonce2_size: usize,
    },
    /// `client.reconnect` (`[]` or `[host, port, wait]`).
    Reconnect {
        /// Host, if given.
        host: Option<String>,
        /// Port, if given (int or string on the wire).
        port: Option<u16>,
        /// Seconds to wait.
        wait_s: u64,
    },
    /// `client.show_message`.
    ShowMessage(String),
}

/// Formats a difficulty: an integer when it is one (ASIC firmware reads `valueint`), else a float.
pub fn difficulty_json(d: f64) -> Value {
    if d >= 1.0 && d.fract() == 0.0 && d < 9.0e15 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // integral, positive, < 2^53
        return json!(d as u64);
    }
    json!(d)
}

fn line(v: Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

impl ServerMessage {
    /// Encodes as a notification line (`"id":null`), newline included.
    pub fn to_line(&self) -> String {
        let (method, params) = match self {
            ServerMessage::Notify(n) => (
                "mining.notify",
                json!([
                    n.job_id,
                    to_hex(&n.prevhash),
                    to_hex(&n.coinb1),
                    to_hex(&n.coinb2),
                    n.merkle_branch.iter().map(|b| to_hex(b)).collect::<Vec<_>>(),
                    format!("{:08x}", n.version),
                    format!("{:08x}", n.nbits),
                    format!("{:08x}", n.ntime),
                    n.clean_jobs
                ]),
            ),
            ServerMessage::SetDifficulty(d) => ("mining.set_difficulty", json!([difficulty_json(*d)])),
            ServerMessage::SetVersionMask(m) => ("mining.set_version_mask", json!([format!("{m:08x}")])),
            ServerMessage::SetExtranonce {
                extranonce1,
                extranonce2_size,
            } => (
                "mining.set_extranonce",
                json!([to_hex(extranonce1), extranonce2_size]),
            ),
            ServerMessage::Reconnect { host, port, wait_s } => match (host, port) {
                (Some(h), Some(p)) => ("client.reconnect", json!([h, p, wait_s])),
                _ => ("client.reconnect", json!([])),
            },
            ServerMessage::ShowMessage(m) => ("client.show_message", json!([m])),
        };
        line(json!({"id": null, "method": method, "params": params}))
    }

    /// Parses a server notification (client side). `Ok(None)` for methods we do not know.
    pub fn parse(method: &str, p: &[Value]) -> Result<Option<ServerMessage>, ParseError> {
        let perr = |m: &'static str, i: usize, name: &'static str, what: &str| ParseError::Param {
            method: m,
            index: i,
            name,
            what: what.into(),
        };
        Ok(Some(match method {
            "mining.notify" => {
                const M: &str = "mining.notify";
                if p.len() < 9 {
                    return Err(perr(M, p.len(), "params", "expected 9 params"));
                }
                let s = |i: usize, name: &'static str| {
                    p.get(i)
                        .and_then(Value::as_str)
                        .ok_or_else(|| perr(M, i, name, "expected a string"))
                };
                let job_id = s(0, "job_id")?.chars().take(crate::JOB_ID_BYTES_MAX).collect();
                let prevhash: [u8; 32] = parse_hex(s(1, "prevhash")?, 32)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| perr(M, 1, "prevhash", "expected 64 hex digits"))?;
                let coinb1 = parse_hex(s(2, "coinb1")?, crate::framing::POOL_LINE_BYTES_MAX)
                    .ok_or_else(|| perr(M, 2, "coinb1", "expected hex"))?;
                let coinb2 = parse_hex(s(3, "coinb2")?, crate::framing::POOL_LINE_BYTES_MAX)
                    .ok_or_else(|| perr(M, 3, "coinb2", "expected hex"))?;
                let branch_json = p
                    .get(4)
                    .and_then(Value::as_array)
                    .ok_or_else(|| perr(M, 4, "merkle_branch", "expected an array"))?;
                if branch_json.len() > 32 {
                    return Err(perr(M, 4, "merkle_branch", "more than 32 levels"));
                }
                let mut merkle_branch = Vec::with_capacity(branch_json.len());
                for b in branch_json {
                    let h: [u8; 32] = b
                        .as_str()
                        .and_then(|x| parse_hex(x, 32))
                        .and_then(|v| v.try_into().ok())
                        .ok_or_else(|| perr(M, 4, "merkle_branch", "each entry must be 64 hex digits"))?;
                    merkle_branch.push(h);
                }
                let h32 = |i: usize, name: &'static str| {
                    s(i, name).and_then(|x| {
                        parse_hex_u32(x).ok_or_else(|| perr(M, i, name, "expected 8 hex digits"))
                    })
                };
                let version = h32(5, "version")?;
                let nbits = h32(6, "nbits")?;
                let ntime = h32(7, "ntime")?;
                // Bitaxe reads clean_jobs from the last element; so do we.
                let clean_jobs = p
                    .last()
                    .and_then(Value::as_bool)
                    .ok_or_else(|| perr(M, p.len() - 1, "clean_jobs", "expected a boolean"))?;
                ServerMessage::Notify(Notify {
                    job_id,
                    prevhash,
                    coinb1,
                    coinb2,
                    merkle_branch,
                    version,
                    nbits,
                    ntime,
                    clean_jobs,
                })
            }
            "mining.set_difficulty" => {
                let d = p
                    .first()
                    .and_then(Value::as_f64)
                    .filter(|d| d.is_finite() && *d > 0.0);
                ServerMessage::SetDifficulty(d.ok_or_else(|| {
                    perr(
                        "mining.set_difficulty",
                        0,
                        "difficulty",
                        "expected a positive number",
                    )
                })?)
            }
            "mining.set_version_mask" | "mining.set_version" => {
                let m = p.first().and_then(Value::as_str).and_then(parse_hex_u32);
                ServerMessage::SetVersionMask(
                    m.ok_or_else(|| perr("mining.set_version_mask", 0, "mask", "expected 8 hex digits"))?,
                )
            }
            "mining.set_extranonce" => {
                const M: &str = "mining.set_extranonce";
                let en1 = p
                    .first()
                    .and_then(Value::as_str)
                    .and_then(|s| parse_hex(s, 32))
                    .ok_or_else(|| perr(M, 0, "extranonce1", "expected hex"))?;
                let size = p
                    .get(1)
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|n| *n <= crate::EXTRANONCE2_BYTES_MAX)
                    .ok_or_else(|| perr(M, 1, "extranonce2_size", "expected 0..=32"))?;
                ServerMessage::SetExtranonce {
                    extranonce1: en1,
                    extranonce2_size: size,
                }
            }
            "client.reconnect" => {
                let host = p
                    .first()
                    .and_then(Value::as_str)
                    .map(|h| h.chars().take(255).collect());
                let port = match p.get(1) {
                    Some(Value::Number(n)) => n.as_u64().and_then(|x| u16::try_from(x).ok()),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                let wait_s = p.get(2).and_then(Value::as_u64).unwrap_or(0).min(3600);
                ServerMessage::Reconnect { host, port, wait_s }
            }
            "client.show_message" => ServerMessage::ShowMessage(
                p.first()
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(512)
                    .collect(),
            ),
            _ => return Ok(None),
        }))
    }
}

/// A successful reply, newline included. `id` is echoed verbatim.
pub fn result_line(id: &Value, result: Value) -> String {
    line(json!({"id": id, "result": result, "error": null}))
}

/// A reject in the form every client parses (stratum-v1.md §6), newline included.
pub fn error_line(id: &Value, code: i32, message: &str) -> String {
    line(
        json!({"id": id, "result": if code == crate::code::OTHER { Value::Null } else { json!(false) }, "error": [code, message, null], "reject-reason": message}),
    )
}

/// The `mining.subscribe` result: `[[["mining.set_difficulty", sid], ["mining.notify", sid]], EN1, EN2 size]`.
pub fn subscribe_result(session_id: &str, extranonce1: &[u8], extranonce2_size: usize) -> Value {
    json!([
        [
            ["mining.set_difficulty", session_id],
            ["mining.notify", session_id]
        ],
        to_hex(extranonce1),
        extranonce2_size
    ])
}

/// How a client reads a reply: accepted, or rejected with the best reason available
/// (`reject-reason`, then `error[1]`, then `error.message`).
pub fn reply_verdict(result: &Value, error: &Value, reject_reason: Option<&str>) -> Result<(), String> {
    if error.is_null() && *result == Value::Bool(true) {
        return Ok(());
    }
    if let Some(r) = reject_reason {
        return Err(r.to_string());
    }
    let msg = error
        .get(1)
        .and_then(Value::as_str)
        .or_else(|| error.get("message").and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| {
            if error.is_null() {
                "rejected".into()
            } else {
                error.to_string()
            }
        });
    Err(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Incoming;

    fn parse(line: &str) -> ServerMessage {
        match Incoming::parse(line.as_bytes()).unwrap() {
            Incoming::Notification { method, params } | Incoming::Request { method, params, .. } => {
                ServerMessage::parse(&method, &params).unwrap().unwrap()
            }
            Incoming::Response { .. } => panic!(),
        }
    }

    #[test]
    fn round_trips() {
        let n = Notify {
            job_id: "12".into(),
            prevhash: [3; 32],
            coinb1: vec![1, 2],
            coinb2: vec![3],
            merkle_branch: vec![[9; 32]],
            version: 0x2000_0000,
            nbits: 0x207fffff,
            ntime: 0x6000_0000,
            clean_jobs: true,
        };
        for m in [
            ServerMessage::Notify(n),
            ServerMessage::SetDifficulty(0.001),
            ServerMessage::SetDifficulty(16384.0),
            ServerMessage::SetVersionMask(0x1fffe000),
            ServerMessage::SetExtranonce {
                extranonce1: vec![1, 2, 3, 4],
                extranonce2_size: 4,
            },
            ServerMessage::Reconnect {
                host: Some("h".into()),
                port: Some(3333),
                wait_s: 0,
            },
        ] {
            assert_eq!(parse(m.to_line().trim_end()), m);
        }
        assert!(ServerMessage::SetDifficulty(512.0).to_line().contains("[512]"));
        assert_eq!(
            parse(r#"{"method":"mining.set_version","params":["1fffe000"]}"#),
            ServerMessage::SetVersionMask(0x1fffe000)
        );
        assert!(matches!(
            parse(r#"{"id":null,"method":"client.reconnect","params":["h","3334",5]}"#),
            ServerMessage::Reconnect {
                port: Some(3334),
                wait_s: 5,
                ..
            }
        ));
    }

    #[test]
    fn reject_form_and_verdicts() {
        let l = error_line(&json!(4), crate::code::LOW_DIFFICULTY, "Low difficulty share");
        assert_eq!(
            l.trim_end(),
            r#"{"error":[23,"Low difficulty share",null],"id":4,"reject-reason":"Low difficulty share","result":false}"#
        );
        let Incoming::Response {
            result,
            error,
            reject_reason,
            ..
        } = Incoming::parse(l.trim_end().as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            reply_verdict(&result, &error, reject_reason.as_deref()),
            Err("Low difficulty share".into())
        );
        assert_eq!(reply_verdict(&json!(true), &Value::Null, None), Ok(()));
        assert_eq!(
            reply_verdict(&json!(false), &json!({"code": 21, "message": "stale"}), None),
            Err("stale".into())
        );
        assert_eq!(
            reply_verdict(&json!(null), &json!([21, "Job not found", null]), None),
            Err("Job not found".into())
        );
    }
}
