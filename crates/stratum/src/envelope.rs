//! A Stratum line as JSON-RPC: a request (`method` with an id), a notification (`method`, id null or
//! missing) or a response (`result`/`error`). Unknown top-level keys are ignored. The id is kept as raw
//! JSON and echoed verbatim with its type (numbers, strings, even repeated ids: order is what correlates).

use crate::ParseError;
use serde_json::Value;

/// A parsed line.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request to answer.
    Request {
        /// The id, verbatim.
        id: Value,
        /// Method name.
        method: String,
        /// Positional params (`null`/missing becomes empty).
        params: Vec<Value>,
    },
    /// A notification: act on it, do not reply.
    Notification {
        /// Method name.
        method: String,
        /// Positional params.
        params: Vec<Value>,
    },
    /// A response to one of our requests.
    Response {
        /// The id.
        id: Value,
        /// Result (`null` when missing).
        result: Value,
        /// Error (`null` when none).
        error: Value,
        /// A top-level `reject-reason`, if present (ckpool).
        reject_reason: Option<String>,
    },
}

impl Incoming {
    /// Parses one line.
    pub fn parse(line: &[u8]) -> Result<Incoming, ParseError> {
        let v: Value = serde_json::from_slice(line).map_err(|e| ParseError::Json(e.to_string()))?;
        let Value::Object(mut obj) = v else {
            return Err(ParseError::Json("expected a JSON object".into()));
        };
        let id = obj.remove("id").unwrap_or(Value::Null);
        if let Some(m) = obj.remove("method") {
            let Value::String(method) = m else {
                return Err(ParseError::Envelope("method is not a string".into()));
            };
            let params = match obj.remove("params") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a,
                Some(_) => return Err(ParseError::Envelope("params is not an array".into())),
            };
            return Ok(if id.is_null() {
                Incoming::Notification { method, params }
            } else {
                Incoming::Request { id, method, params }
            });
        }
        if obj.contains_key("result") || obj.contains_key("error") {
            let reject_reason = obj
                .get("reject-reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            return Ok(Incoming::Response {
                id,
                result: obj.remove("result").unwrap_or(Value::Null),
                error: obj.remove("error").unwrap_or(Value::Null),
                reject_reason,
            });
        }
        Err(ParseError::Envelope("neither method nor result/error".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes() {
        let r = Incoming::parse(
            br#"{"id":"xnsub","method":"mining.extranonce.subscribe","params":[],"jsonrpc":"2.0"}"#,
        )
        .unwrap();
        assert!(matches!(r, Incoming::Request { ref id, .. } if *id == json!("xnsub")));
        let n = Incoming::parse(br#"{"id":null,"method":"mining.suggest_target","params":["00"]}"#).unwrap();
        assert!(matches!(n, Incoming::Notification { .. }));
        let n = Incoming::parse(br#"{"method":"mining.notify","params":null}"#).unwrap();
        assert!(matches!(n, Incoming::Notification { ref params, .. } if params.is_empty()));
        let r = Incoming::parse(br#"{"id":4,"result":false,"error":null,"reject-reason":"Stale"}"#).unwrap();
        assert!(matches!(r, Incoming::Response { reject_reason: Some(ref s), .. } if s == "Stale"));
        assert!(Incoming::parse(b"[1,2]").is_err());
        assert!(Incoming::parse(b"{\"method\":5}").is_err());
        assert!(Incoming::parse(b"{\"method\":\"x\",\"params\":{}}").is_err());
        assert!(Incoming::parse(b"{}").is_err());
        assert!(Incoming::parse(b"\xff\xfe").is_err());
    }
}
