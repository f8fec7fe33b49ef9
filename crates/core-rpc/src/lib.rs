//! Bitcoin Core's JSON-RPC, both halves.
//!
//! * [`error`]: Core's RPC error codes and the [`RpcError`] type.
//! * [`gbt`]: the `getblocktemplate` result as JSON, parsed into and produced from
//!   [`mining_core::BlockTemplate`], with consistency checks (txids, target vs bits, witness commitment).
//! * [`client`]: an HTTP/1.1 JSON-RPC client (basic auth or cookie file, timeouts, clear errors).
//! * [`http`]: the bounded HTTP/1.1 edge (connection cap, header-read timeout, connection lifetime)
//!   this server and the pool's API are served through.
//! * [`server`]: a Core-compatible JSON-RPC HTTP server over any [`server::RpcHandler`]
//!   (auth, JSON-RPC 1.0/2.0 and batches, Core's status codes, named limits).
//!
//! This crate knows the wire format; it knows nothing about which chain answers.

pub mod client;
pub mod error;
pub mod gbt;
pub mod http;
pub mod server;

pub use client::{Auth, ClientError, RpcClient};
pub use error::RpcError;

/// Most satoshis there can be (21 million BTC).
const MAX_SAT: i64 = 2_100_000_000_000_000;

/// An amount as Core prints it (BTC, a JSON number with at most 8 decimals; negative for a wallet
/// transaction's fee), in satoshis exactly. Core's number is decimal with 8 places; the nearest
/// double times 10^8 rounds back to it exactly below 2^53 sat, far above 21 million BTC. `None` for a
/// non-number, more than 8 decimals' worth of fraction, or more than 21 million BTC.
pub fn amount_to_sat(v: &serde_json::Value) -> Option<i64> {
    let btc = v.as_f64()?;
    let sat = (btc * 1e8).round();
    if !sat.is_finite() || sat.abs() > MAX_SAT as f64 || ((btc * 1e8) - sat).abs() > 1e-3 {
        return None;
    }
    Some(sat as i64)
}

/// Satoshis as the decimal BTC string Core's amount parameters accept (`"0.00012345"`): no float on
/// the way out.
pub fn sat_to_amount(sat: u64) -> serde_json::Value {
    serde_json::Value::String(format!("{}.{:08}", sat / 100_000_000, sat % 100_000_000))
}

#[cfg(test)]
mod amount_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_exact() {
        assert_eq!(amount_to_sat(&json!(-0.0000141)), Some(-1410));
        assert_eq!(amount_to_sat(&json!(3.125)), Some(312_500_000));
        assert_eq!(
            amount_to_sat(&json!(20999999.99999999)),
            Some(2_099_999_999_999_999)
        );
        assert_eq!(amount_to_sat(&json!(0.000000001)), None);
        assert_eq!(amount_to_sat(&json!("1")), None);
        assert_eq!(amount_to_sat(&json!(22000000)), None);
        assert_eq!(sat_to_amount(1), json!("0.00000001"));
        assert_eq!(sat_to_amount(312_500_000), json!("3.12500000"));
        for s in [0u64, 1, 546, 99_999_999, 100_000_000, 2_099_999_999_999_999] {
            let v: serde_json::Value = serde_json::from_str(sat_to_amount(s).as_str().unwrap()).unwrap();
            assert_eq!(amount_to_sat(&v), Some(s as i64), "{s}");
        }
    }
}
