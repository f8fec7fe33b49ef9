//! Client → server requests: parsing (pool side) and encoding (miner and proxy side).
//!
//! Lenient where real clients differ: `null` params, int or float difficulties, a missing 6th submit
//! param (no version rolling), a missing `min-bit-count`. Strict where it matters: ntime, nonce and
//! version bits are exactly 8 hex digits; extranonce2 is even-length hex; numbers that must be
//! integers are integers; strings have length limits.

use crate::{
    parse_hex, parse_hex_u32, to_hex, ParseError, EXTRANONCE2_BYTES_MAX, JOB_ID_BYTES_MAX,
    PASSWORD_BYTES_MAX, USER_BYTES_MAX,
};
use serde_json::{json, Value};

/// `mining.configure` (BIP310).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Configure {
    /// Extension codes, as listed.
    pub extensions: Vec<String>,
    /// `version-rolling.mask` (default `ffffffff` when version-rolling is asked without a mask).
    pub version_rolling_mask: Option<u32>,
    /// `version-rolling.min-bit-count`, often missing.
    pub version_rolling_min_bit_count: Option<u32>,
    /// `minimum-difficulty.value`.
    pub minimum_difficulty: Option<f64>,
}

/// `mining.submit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    /// Worker name as sent.
    pub worker: String,
    /// Job id as sent.
    pub job_id: String,
    /// Extranonce2 bytes (length checked against the session by the server).
    pub extranonce2: Vec<u8>,
    /// ntime.
    pub ntime: u32,
    /// nonce.
    pub nonce: u32,
    /// Version bits (6th param); `None` when absent.
    pub version_bits: Option<u32>,
}

/// A request from a miner.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    /// `mining.configure`.
    Configure(Configure),
    /// `mining.subscribe` with the user agent and a resume id, either may be absent.
    Subscribe {
        /// User agent.
        agent: Option<String>,
        /// Previous session id.
        session: Option<String>,
    },
    /// `mining.authorize`.
    Authorize {
        /// `address[.worker]`.
        user: String,
        /// Password (may carry `d=` hints).
        password: String,
    },
    /// `mining.submit`.
    Submit(Submit),
    /// `mining.suggest_difficulty`.
    SuggestDifficulty(f64),
    /// `mining.suggest_target` (64 hex digits, big-endian).
    SuggestTarget(units::Target),
    /// `mining.extranonce.subscribe`.
    ExtranonceSubscribe,
    /// Any other method (answered with error 20).
    Unknown(String),
}

fn perr(method: &'static str, index: usize, name: &'static str, what: impl Into<String>) -> ParseError {
    ParseError::Param {
        method,
        index,
        name,
        what: what.into(),
    }
}

fn string_at<'a>(
    p: &'a [Value],
    i: usize,
    m: &'static str,
    name: &'static str,
    max: usize,
) -> Result<&'a str, ParseError> {
    match p.get(i) {
        Some(Value::String(s)) if s.len() <= max => Ok(s),
        Some(Value::String(_)) => Err(perr(m, i, name, format!("longer than {max} bytes"))),
        Some(_) => Err(perr(m, i, name, "expected a string")),
        None => Err(perr(m, i, name, "missing")),
    }
}

fn opt_string(p: &[Value], i: usize, max: usize) -> Option<String> {
    p.get(i)
        .and_then(Value::as_str)
        .map(|s| s.chars().take(max).collect())
}

fn positive_number(p: &[Value], i: usize, m: &'static str, name: &'static str) -> Result<f64, ParseError> {
    match p.get(i) {
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| perr(m, i, name, "must be a positive number")),
        Some(Value::String(s)) => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| perr(m, i, name, "must be a positive number")),
        Some(_) => Err(perr(m, i, name, "expected a number")),
        None => Err(perr(m, i, name, "missing")),
    }
}

impl ClientRequest {
    /// Parses a request by method and params.
    pub fn parse(method: &str, p: &[Value]) -> Result<ClientRequest, ParseError> {
        Ok(match method {
            "mining.configure" => ClientRequest::Configure(parse_configure(p)?),
            "mining.subscribe" => ClientRequest::Subscribe {
                agent: opt_string(p, 0, crate::AGENT_BYTES_MAX),
                session: opt_string(p, 1, 64),
            },
            "mining.authorize" => {
                const M: &str = "mining.authorize";
                let user = string_at(p, 0, M, "user", USER_BYTES_MAX)?.to_string();
                let password = match p.get(1) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) if s.len() <= PASSWORD_BYTES_MAX => s.clone(),
                    Some(Value::String(_)) => {
                        return Err(perr(
                            M,
                            1,
                            "password",
                            format!("longer than {PASSWORD_BYTES_MAX} bytes"),
                        ))
                    }
                    Some(_) => return Err(perr(M, 1, "password", "expected a string")),
                };
                ClientRequest::Authorize { user, password }
            }
            "mining.submit" => ClientRequest::Submit(parse_submit(p)?),
            "mining.suggest_difficulty" => ClientRequest::SuggestDifficulty(positive_number(
                p,
                0,
                "mining.suggest_difficulty",
                "difficulty",
            )?),
            "mining.suggest_target" => {
                const M: &str = "mining.suggest_target";
                let s = string_at(p, 0, M, "target", 64)?;
                let t = units::U256::from_be_hex(s)
                    .filter(|t| !t.is_zero())
                    .ok_or_else(|| perr(M, 0, "target", "expected up to 64 hex digits, not zero"))?;
                ClientRequest::SuggestTarget(units::Target::from_u256(t))
            }
            "mining.extranonce.subscribe" => ClientRequest::ExtranonceSubscribe,
            other => ClientRequest::Unknown(other.chars().take(64).collect()),
        })
    }

    /// The method name.
    pub fn method(&self) -> &str {
        match self {
            ClientRequest::Configure(_) => "mining.configure",
            ClientRequest::Subscribe { .. } => "mining.subscribe",
            ClientRequest::Authorize { .. } => "mining.authorize",
            ClientRequest::Submit(_) => "mining.submit",
            ClientRequest::SuggestDifficulty(_) => "mining.suggest_difficulty",
            ClientRequest::SuggestTarget(_) => "mining.suggest_target",
            ClientRequest::ExtranonceSubscribe => "mining.extranonce.subscribe",
            ClientRequest::Unknown(m) => m,
        }
    }

    /// Encodes as a request line (client side), newline included.
    pub fn to_line(&self, id: u64) -> String {
        let params = match self {
            ClientRequest::Configure(c) => {
                let mut obj = serde_json::Map::new();
                if let Some(m) = c.version_rolling_mask {
                    obj.insert("version-rolling.mask".into(), json!(format!("{m:08x}")));
                }
                if let Some(n) = c.version_rolling_min_bit_count {
                    obj.insert("version-rolling.min-bit-count".into(), json!(n));
                }
                if let Some(d) = c.minimum_difficulty {
                    obj.insert("minimum-difficulty.value".into(), json!(d));
                }
                json!([c.extensions, obj])
            }
            ClientRequest::Subscribe { agent, session } => match session {
                Some(s) => json!([agent, s]),
                None => json!([agent.clone().unwrap_or_default()]),
            },
            ClientRequest::Authorize { user, password } => json!([user, password]),
            ClientRequest::Submit(s) => {
                let mut v = vec![
                    json!(s.worker),
                    json!(s.job_id),
                    json!(to_hex(&s.extranonce2)),
                    json!(format!("{:08x}", s.ntime)),
                    json!(format!("{:08x}", s.nonce)),
                ];
                if let Some(b) = s.version_bits {
                    v.push(json!(format!("{b:08x}")));
                }
                Value::Array(v)
            }
            ClientRequest::SuggestDifficulty(d) => json!([d]),
            ClientRequest::SuggestTarget(t) => json!([t.to_be_hex()]),
            ClientRequest::ExtranonceSubscribe => json!([]),
            ClientRequest::Unknown(_) => json!([]),
        };
        let mut s = json!({"id": id, "method": self.method(), "params": params}).to_string();
        s.push('\n');
        s
    }
}

fn parse_configure(p: &[Value]) -> Result<Configure, ParseError> {
    const M: &str = "mining.configure";
    let extensions: Vec<String> = match p.first() {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .take(16)
            .map(|s| s.chars().take(64).collect())
            .collect(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(perr(M, 0, "extensions", "expected an array of strings")),
    };
    let params = match p.get(1) {
        Some(Value::Object(o)) => Some(o),
        None | Some(Value::Null) => None,
        Some(_) => return Err(perr(M, 1, "extension-params", "expected an object")),
    };
    let get = |k: &str| params.and_then(|o| o.get(k));
    let version_rolling_mask = match get("version-rolling.mask") {
        Some(Value::String(s)) => Some(
            parse_hex_u32(&format!("{s:0>8}"))
                .ok_or_else(|| perr(M, 1, "version-rolling.mask", "expected up to 8 hex digits"))?,
        ),
        Some(_) => return Err(perr(M, 1, "version-rolling.mask", "expected a hex string")),
        None if extensions.iter().any(|e| e == "version-rolling") => Some(0xffff_ffff),
        None => None,
    };
    let version_rolling_min_bit_count = match get("version-rolling.min-bit-count") {
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .filter(|x| *x <= 32)
                .ok_or_else(|| perr(M, 1, "version-rolling.min-bit-count", "expected 0..=32"))?,
        ),
        Some(_) => return Err(perr(M, 1, "version-rolling.min-bit-count", "expected a number")),
        None => None,
    };
    let minimum_difficulty = match get("minimum-difficulty.value") {
        Some(Value::Number(n)) => Some(
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| perr(M, 1, "minimum-difficulty.value", "expected a number >= 0"))?,
        ),
        Some(_) => return Err(perr(M, 1, "minimum-difficulty.value", "expected a number")),
        None => None,
    };
    Ok(Configure {
        extensions,
        version_rolling_mask,
        version_rolling_min_bit_count,
        minimum_difficulty,
    })
}

fn parse_submit(p: &[Value]) -> Result<Submit, ParseError> {
    const M: &str = "mining.submit";
    if !(5..=6).contains(&p.len()) {
        return Err(ParseError::Param {
            method: M,
            index: p.len(),
            name: "params",
            what: format!("expected 5 or 6 params, got {}", p.len()),
        });
    }
    let worker = string_at(p, 0, M, "worker", USER_BYTES_MAX)?.to_string();
    let job_id = string_at(p, 1, M, "job_id", JOB_ID_BYTES_MAX)?.to_string();
    let en2 = string_at(p, 2, M, "extranonce2", 2 * EXTRANONCE2_BYTES_MAX)?;
    let extranonce2 = parse_hex(en2, EXTRANONCE2_BYTES_MAX)
        .ok_or_else(|| perr(M, 2, "extranonce2", "expected even-length hex"))?;
    let hex32 = |i: usize, name: &'static str| -> Result<u32, ParseError> {
        let s = string_at(p, i, M, name, 8)?;
        parse_hex_u32(s).ok_or_else(|| perr(M, i, name, "expected exactly 8 hex digits"))
    };
    let ntime = hex32(3, "ntime")?;
    let nonce = hex32(4, "nonce")?;
    let version_bits = match p.get(5) {
        None | Some(Value::Null) => None,
        Some(_) => Some(hex32(5, "version_bits")?),
    };
    Ok(Submit {
        worker,
        job_id,
        extranonce2,
        ntime,
        nonce,
        version_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Incoming;

    fn req(line: &str) -> Result<ClientRequest, ParseError> {
        match Incoming::parse(line.as_bytes())? {
            Incoming::Request { method, params, .. } | Incoming::Notification { method, params } => {
                ClientRequest::parse(&method, &params)
            }
            Incoming::Response { .. } => panic!("response"),
        }
    }

    #[test]
    fn real_client_lines() {
        // Bitaxe / cgminer configure without min-bit-count
        let c = req(r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"ffffffff"}]}"#).unwrap();
        assert!(matches!(
            c,
            ClientRequest::Configure(Configure {
                version_rolling_mask: Some(0xffffffff),
                version_rolling_min_bit_count: None,
                ..
            })
        ));
        // SRI's empty configure
        assert!(matches!(
            req(r#"{"id":0,"method":"mining.configure","params":[[],{}]}"#).unwrap(),
            ClientRequest::Configure(_)
        ));
        // Braiins subscribe with nulls
        let s = req(r#"{"id":1,"method":"mining.subscribe","params":["Braiins OS 2019-06-05",null,"stratum.slushpool.com:3333",null]}"#).unwrap();
        assert!(matches!(
            s,
            ClientRequest::Subscribe {
                agent: Some(_),
                session: None
            }
        ));
        // cpuminer 5-param submit
        let s =
            req(r#"{"id":4,"method":"mining.submit","params":["w","1","00000001","647025b5","0a029ed1"]}"#)
                .unwrap();
        assert!(matches!(
            s,
            ClientRequest::Submit(Submit {
                version_bits: None,
                nonce: 0x0a029ed1,
                ..
            })
        ));
        // with version bits, upper case hex
        let s = req(r#"{"id":4,"method":"mining.submit","params":["w","1","0000000A","647025B5","0A029ED1","0000E000"]}"#).unwrap();
        assert!(matches!(
            s,
            ClientRequest::Submit(Submit {
                version_bits: Some(0xe000),
                ..
            })
        ));
        // suggest_difficulty int and float
        assert_eq!(
            req(r#"{"id":4,"method":"mining.suggest_difficulty","params":[512]}"#).unwrap(),
            ClientRequest::SuggestDifficulty(512.0)
        );
        assert_eq!(
            req(r#"{"id":4,"method":"mining.suggest_difficulty","params":[0.5]}"#).unwrap(),
            ClientRequest::SuggestDifficulty(0.5)
        );
        assert!(matches!(req(r#"{"id":null,"method":"mining.suggest_target","params":["00000000ffff0000000000000000000000000000000000000000000000000000"]}"#).unwrap(), ClientRequest::SuggestTarget(_)));
        assert_eq!(
            req(r#"{"id":"xnsub","method":"mining.extranonce.subscribe","params":[]}"#).unwrap(),
            ClientRequest::ExtranonceSubscribe
        );
        assert!(matches!(
            req(r#"{"id":9,"method":"mining.get_transactions","params":[]}"#).unwrap(),
            ClientRequest::Unknown(_)
        ));
    }

    #[test]
    fn bad_params_are_errors_not_panics() {
        for line in [
            r#"{"id":4,"method":"mining.submit","params":["w","1","00000001","647025b5"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w","1","00000001","647025b5","0a029ed1","0","x"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w","1","0000001","647025b5","0a029ed1"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w","1","zz","647025b5","0a029ed1"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w","1","00000001",-5,"0a029ed1"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w","1","00000001","647025b","0a029ed1"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w","1","00000001","647025b5","0a029ed1","+0000000"]}"#,
            r#"{"id":4,"method":"mining.submit","params":[1,"1","00000001","647025b5","0a029ed1"]}"#,
            r#"{"id":4,"method":"mining.submit","params":["w",1,"00000001","647025b5","0a029ed1"]}"#,
            r#"{"id":4,"method":"mining.suggest_difficulty","params":[-1]}"#,
            r#"{"id":4,"method":"mining.suggest_difficulty","params":[0]}"#,
            r#"{"id":4,"method":"mining.suggest_difficulty","params":["abc"]}"#,
            r#"{"id":4,"method":"mining.suggest_difficulty","params":[]}"#,
            r#"{"id":4,"method":"mining.authorize","params":[]}"#,
            r#"{"id":4,"method":"mining.authorize","params":[5,"x"]}"#,
            r#"{"id":1,"method":"mining.configure","params":["version-rolling",{}]}"#,
            r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.mask":"xyz"}]}"#,
            r#"{"id":1,"method":"mining.configure","params":[["version-rolling"],{"version-rolling.min-bit-count":-2}]}"#,
            r#"{"id":null,"method":"mining.suggest_target","params":["zz"]}"#,
        ] {
            assert!(req(line).is_err(), "{line}");
        }
        let long = format!(
            r#"{{"id":4,"method":"mining.authorize","params":["{}","x"]}}"#,
            "a".repeat(300)
        );
        assert!(req(&long).is_err());
    }

    #[test]
    fn encode_parse_round_trip() {
        let s = Submit {
            worker: "bcrt1q.w".into(),
            job_id: "17".into(),
            extranonce2: vec![0, 0, 0, 9],
            ntime: 0x647025b5,
            nonce: 1,
            version_bits: Some(0x2000),
        };
        let line = ClientRequest::Submit(s.clone()).to_line(7);
        assert!(line.ends_with('\n'));
        assert_eq!(req(line.trim_end()).unwrap(), ClientRequest::Submit(s));
        let c = Configure {
            extensions: vec!["version-rolling".into()],
            version_rolling_mask: Some(0x1fffe000),
            version_rolling_min_bit_count: Some(2),
            minimum_difficulty: None,
        };
        assert_eq!(
            req(ClientRequest::Configure(c.clone()).to_line(1).trim_end()).unwrap(),
            ClientRequest::Configure(c)
        );
    }
}
