//! The operator role after its welcome: API requests and responses, and the rows of the
//! tenant list with the rule for whether a tenant can be opened now.

use serde::{Deserialize, Serialize};

use super::{ErrorCode, ErrorMsg, TenantPage};

/// Operator API requests, after a successful operator hello.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiRequest {
    /// The tenant list once; with `subscribe`, followed by live `TenantChanged` /
    /// `TenantRemoved` frames until the connection closes.
    ListTenants {
        #[serde(default)]
        subscribe: bool,
        /// Snapshots as [`TenantPage`]s instead of one `Tenants` frame (left off when
        /// false, as an older console sends it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        compact: bool,
    },
    /// Ends the token now.
    Logout,
    /// Why the SP ended a session this operator opened, asked after its end-to-end channel
    /// was cut (the SP cannot say it inside that channel). Answered by `SessionEnded`.
    SessionEnd { session_id: String },
}

/// Operator API responses and events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiResponse {
    Tenants {
        tenants: Vec<TenantInfo>,
    },
    /// A page of a compact snapshot (`list_tenants` with `compact`).
    TenantPage(TenantPage),
    TenantChanged {
        tenant: TenantInfo,
    },
    TenantRemoved {
        name: String,
    },
    LoggedOut,
    /// The answer to `SessionEnd`.
    SessionEnded {
        session_id: String,
        /// Why the SP ended the session (`the SP's administrator ended this session (admin token
        /// ops)`); absent when the SP did not end it, or no longer remembers it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// Whether a tenant can be reached now.
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Online,
    #[default]
    Offline,
    Disabled,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Online => "online",
            TenantStatus::Offline => "offline",
            TenantStatus::Disabled => "disabled",
        }
    }
}

/// One row of the tenant list: the registry's account joined with live presence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TenantInfo {
    pub name: String,
    pub status: TenantStatus,
    #[serde(default)]
    pub description: String,
    /// Unix seconds when the current control connection was accepted.
    pub connected_since: Option<u64>,
    /// Unix seconds of the last control connection's end (or of now, while online).
    pub last_seen: Option<u64>,
    pub remote_addr: Option<String>,
    pub agent_version: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    pub provider_access: bool,
    /// Round trip of the last heartbeat, in milliseconds.
    pub heartbeat_rtt_ms: Option<f64>,
    #[serde(default)]
    pub open_sessions: u32,
    /// SHA-256 of the tenant redirector's public key as the SP recorded it (`AB:CD:..`); in
    /// the full list only, not in compact pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_key: Option<String>,
}

impl TenantInfo {
    /// May a session to `service` be opened on this tenant now? The rule the SP enforces
    /// (after the operator's scope), and that `rac connect` checks first so its message is the
    /// SP's: disabled, offline, provider access off, or the service not offered.
    pub fn check_open(&self, service: &str) -> Result<(), ErrorMsg> {
        let tenant = &self.name;
        let refuse = |code, message: String| Err(ErrorMsg { code, message });
        match self.status {
            TenantStatus::Disabled => refuse(
                ErrorCode::TenantDisabled,
                format!("tenant {tenant} is disabled"),
            ),
            TenantStatus::Offline => refuse(
                ErrorCode::TenantOffline,
                format!("tenant {tenant} is offline (its redirector is not connected)"),
            ),
            TenantStatus::Online if !self.provider_access => refuse(
                ErrorCode::ProviderAccessDisabled,
                format!("tenant {tenant} has disabled remote access by the provider"),
            ),
            TenantStatus::Online if !self.services.iter().any(|s| s == service) => refuse(
                ErrorCode::ServiceNotOffered,
                format!(
                    "tenant {tenant} does not offer the service {service:?} (it offers: {})",
                    if self.services.is_empty() {
                        "none".to_string()
                    } else {
                        self.services.join(", ")
                    }
                ),
            ),
            TenantStatus::Online => Ok(()),
        }
    }
}
