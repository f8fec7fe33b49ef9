//! Stratum V1 without I/O, usable as a server (pool, proxy downstream) and as a client (miner, proxy
//! upstream). See `shared/docs/stratum-v1.md` for the protocol as real firmware speaks it.
//!
//! * [`client`]: the client half as a state machine (handshake, difficulty per job, extranonce and
//!   version-mask changes, verdicts), for the miner and the proxy's upstream side.
//! * [`framing`]: newline-delimited lines with a hard length limit ([`framing::MINER_LINE_BYTES_MAX`]
//!   toward a pool, [`framing::POOL_LINE_BYTES_MAX`] toward a client).
//! * [`envelope`]: a line as a JSON-RPC request, notification or response; ids are kept as raw JSON
//!   and echoed verbatim, whatever their type.
//! * [`client_to_server`]: `mining.configure`, `subscribe`, `authorize`, `submit`, `suggest_difficulty`,
//!   `suggest_target`, `extranonce.subscribe`: parsing (lenient where clients differ, strict where
//!   a mistake would be dangerous) and encoding.
//! * [`server_to_client`]: `mining.notify`, `set_difficulty`, `set_version_mask` (and SRI's
//!   `set_version`), `set_extranonce`, `client.reconnect`, `client.show_message`; results and the one
//!   reject form every client parses.
//!
//! Nothing here panics on input: every malformed field is a [`ParseError`] naming it.

pub mod client;
pub mod client_to_server;
pub mod envelope;
pub mod framing;
pub mod server_to_client;

pub use client_to_server::{ClientRequest, Configure, Submit};
pub use envelope::Incoming;
pub use server_to_client::{Notify, ServerMessage};

/// Stratum error codes (slush's original table; public-pool and miningcore use the same).
pub mod code {
    /// Other/unknown: malformed params, bad EN2 length, ntime out of range, bits outside the mask, unknown method.
    pub const OTHER: i32 = 20;
    /// Job not found / stale.
    pub const JOB_NOT_FOUND: i32 = 21;
    /// Duplicate share.
    pub const DUPLICATE: i32 = 22;
    /// Low difficulty share.
    pub const LOW_DIFFICULTY: i32 = 23;
    /// Unauthorized worker.
    pub const UNAUTHORIZED: i32 = 24;
    /// Not subscribed.
    pub const NOT_SUBSCRIBED: i32 = 25;
}

/// Why a message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not JSON, or not an object.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The envelope is not a request, notification or response.
    #[error("not a JSON-RPC request or response: {0}")]
    Envelope(String),
    /// A parameter is missing or wrong.
    #[error("{method} param {index} ({name}): {what}")]
    Param {
        /// Method.
        method: &'static str,
        /// Position.
        index: usize,
        /// Name.
        name: &'static str,
        /// What is wrong.
        what: String,
    },
}

/// Longest worker/user name accepted (`address.worker`).
pub const USER_BYTES_MAX: usize = 256;
/// Longest password accepted.
pub const PASSWORD_BYTES_MAX: usize = 256;
/// Longest job id accepted.
pub const JOB_ID_BYTES_MAX: usize = 64;
/// Longest extranonce2 accepted, in bytes.
pub const EXTRANONCE2_BYTES_MAX: usize = 32;
/// Longest user agent kept.
pub const AGENT_BYTES_MAX: usize = 128;

/// Parses exactly eight hex digits as a big-endian u32 (`"7c2bac1d"`), any case.
pub fn parse_hex_u32(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Decodes hex (even length, any case) into bytes, refusing more than `max` bytes.
pub fn parse_hex(s: &str, max: usize) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * max {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 2);
    for pair in b.chunks_exact(2) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out.push(u8::try_from(hi * 16 + lo).ok()?);
    }
    Some(out)
}

/// Lower-case hex.
pub fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_helpers() {
        assert_eq!(parse_hex_u32("7c2bac1d"), Some(0x7c2bac1d));
        assert_eq!(parse_hex_u32("7C2BAC1D"), Some(0x7c2bac1d));
        assert_eq!(parse_hex_u32("7c2bac1"), None);
        assert_eq!(parse_hex_u32("+c2bac1d"), None);
        assert_eq!(parse_hex_u32("7c2bac1d0"), None);
        assert_eq!(parse_hex("00ff", 2), Some(vec![0, 255]));
        assert_eq!(parse_hex("0ff", 2), None);
        assert_eq!(parse_hex("00ff00", 2), None);
        assert_eq!(parse_hex("zz", 2), None);
        assert_eq!(to_hex(&[0, 0xab]), "00ab");
    }
}
