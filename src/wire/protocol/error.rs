//! Refusals: the `error` frame and the stable [`ErrorCode`]s every refusal carries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A refusal. The connection is closed after it is sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}

/// Why the SP refused something: stable codes a client can branch on. A code this build does
/// not know (from a newer SP) reads as [`ErrorCode::Other`], so the frame that carries it
/// (an `error`, a `goodbye`) still parses and its message is still shown.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    VersionMismatch,
    BadRequest,
    AuthFailed,
    RateLimited,
    TokenExpired,
    AccessDenied,
    UnknownTenant,
    TenantDisabled,
    TenantOffline,
    ProviderAccessDisabled,
    ServiceNotOffered,
    ServiceUnavailable,
    TenantTimeout,
    TenantRejected,
    BadNonce,
    AlreadyConnected,
    /// Every password-check slot of the SP is taken: try the login again in a moment.
    Busy,
    Overloaded,
    ShuttingDown,
    Internal,
    /// `goodbye` only: a newer control connection with the same tenant's credentials took
    /// this one's place. The tenant should not reconnect at once (it would replace the
    /// newcomer in turn): two redirectors run with one tenant's secret.
    Replaced,
    /// A tenant's control hello named another key than the one the SP recorded for it.
    TenantKeyChanged,
    /// The tenant refused the SP's grant for a session (bad signature, another tenant or
    /// service, expired, used before, or a console key the tenant does not accept).
    GrantRefused,
    /// The session's token was issued to a console that registered no key at login.
    ConsoleKeyMissing,
    /// A code this build does not know. Never sent.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The reason in words, as a console shows it.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::VersionMismatch => "protocol version mismatch",
            ErrorCode::BadRequest => "malformed request",
            ErrorCode::AuthFailed => "login failed",
            ErrorCode::RateLimited => "too many failed attempts; try again later",
            ErrorCode::TokenExpired => "session token expired; log in again",
            ErrorCode::AccessDenied => "access denied",
            ErrorCode::UnknownTenant => "unknown tenant",
            ErrorCode::TenantDisabled => "tenant is disabled",
            ErrorCode::TenantOffline => "tenant is offline",
            ErrorCode::ProviderAccessDisabled => "remote access disabled by the tenant",
            ErrorCode::ServiceNotOffered => "service not offered by the tenant",
            ErrorCode::ServiceUnavailable => "the tenant could not reach its local service",
            ErrorCode::TenantTimeout => "tenant did not answer in time",
            ErrorCode::TenantRejected => "tenant refused the session",
            ErrorCode::BadNonce => "unknown, expired or already used nonce",
            ErrorCode::AlreadyConnected => "tenant is already connected from elsewhere",
            ErrorCode::Busy => "the SP is busy checking other logins; try again in a moment",
            ErrorCode::Overloaded => "server busy; try again",
            ErrorCode::ShuttingDown => "server is shutting down",
            ErrorCode::Internal => "internal server error",
            ErrorCode::Replaced => "replaced by a newer connection of the same tenant",
            ErrorCode::TenantKeyChanged => {
                "the tenant's key is not the one on record; an SP admin must reset it"
            }
            ErrorCode::GrantRefused => "the tenant refused the SP's grant for this session",
            ErrorCode::ConsoleKeyMissing => {
                "this console registered no key at login; log in again with a current console"
            }
            ErrorCode::Other => "refused (a reason this version does not know)",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::HelloReply;

    #[test]
    fn an_unknown_error_code_parses_as_other() {
        let reply: HelloReply =
            serde_json::from_str(r#"{"type":"error","code":"new_in_v2","message":"m"}"#)
                .expect("parses");
        assert_eq!(
            reply,
            HelloReply::Error(ErrorMsg {
                code: ErrorCode::Other,
                message: "m".into()
            })
        );
        let text = serde_json::to_string(&ErrorCode::Replaced).expect("serialize");
        assert_eq!(text, r#""replaced""#);
    }
}

/// What is wrong with a frame or hello a peer sent, in one escaped line: the message of the
/// `bad_request` that answers it, and of the log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);
