//! Core's JSON-RPC error codes (`src/rpc/protocol.h`) and the error type both halves use.

use serde::{Deserialize, Serialize};

/// Standard JSON-RPC 2.0 and Core-specific error codes.
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid parameters (JSON-RPC 2.0).
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// std::exception thrown in command handling.
    pub const MISC_ERROR: i32 = -1;
    /// Unexpected type was passed as parameter.
    pub const TYPE_ERROR: i32 = -3;
    /// Invalid address or key.
    pub const INVALID_ADDRESS_OR_KEY: i32 = -5;
    /// Invalid, missing or duplicate parameter.
    pub const INVALID_PARAMETER: i32 = -8;
    /// Error parsing or validating structure in raw format.
    pub const DESERIALIZATION_ERROR: i32 = -22;
    /// General error during transaction or block submission.
    pub const VERIFY_ERROR: i32 = -25;
    /// Transaction or block was rejected by network rules.
    pub const VERIFY_REJECTED: i32 = -26;
    /// Transaction already in chain.
    pub const VERIFY_ALREADY_IN_CHAIN: i32 = -27;
    /// Client still warming up.
    pub const IN_WARMUP: i32 = -28;
    /// Bitcoin is not connected.
    pub const CLIENT_NOT_CONNECTED: i32 = -9;
    /// Still downloading initial blocks.
    pub const CLIENT_IN_INITIAL_DOWNLOAD: i32 = -10;
}

/// A JSON-RPC error object `{"code": …, "message": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("RPC error {code}: {message}")]
pub struct RpcError {
    /// Core's error code.
    pub code: i32,
    /// Message.
    pub message: String,
}

impl RpcError {
    /// A new error.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
    /// -8, invalid parameter.
    pub fn invalid_parameter(message: impl Into<String>) -> RpcError {
        RpcError::new(code::INVALID_PARAMETER, message)
    }
    /// -3, wrong type.
    pub fn type_error(message: impl Into<String>) -> RpcError {
        RpcError::new(code::TYPE_ERROR, message)
    }
}
