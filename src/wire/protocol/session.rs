//! What a console session or a tenant data connection hears before the splice.

use serde::{Deserialize, Serialize};

use super::ErrorCode;

/// What a console session or tenant data connection hears before the splice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionMsg {
    /// A stage of the flow was reached (console only).
    Progress {
        stage: Stage,
    },
    /// Spliced: this is the last TLS record the SP sends on this connection, and the last
    /// either side reads or writes through the SP's TLS. From the next byte on, the TCP
    /// connection carries the end-to-end channel between console and tenant, which the SP
    /// copies without reading.
    Ready {
        session_id: String,
        /// Console only: the tenant key the SP has on record for this tenant, for a console
        /// that has not pinned one yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant_key: Option<String>,
        /// Console only: true when the SP passed the console's `client_hello` on to the
        /// tenant, which has answered it already; absent (false): the console sends its
        /// ClientHello now, as the first bytes after `ready`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        client_hello_sent: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The stages a console sees while a session opens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The SP accepted the request and sent `OpenData` to the tenant.
    WaitingForTenant,
    /// A stage of a later version: a console shows nothing for it and keeps waiting.
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_of_a_later_version_reads_as_other() {
        let msg: SessionMsg =
            serde_json::from_str(r#"{"type":"progress","stage":"tenant_is_thinking"}"#)
                .expect("an unknown stage still parses");
        assert_eq!(
            msg,
            SessionMsg::Progress {
                stage: Stage::Other
            }
        );
        let known: SessionMsg =
            serde_json::from_str(r#"{"type":"progress","stage":"waiting_for_tenant"}"#)
                .expect("parse");
        assert_eq!(
            known,
            SessionMsg::Progress {
                stage: Stage::WaitingForTenant
            }
        );
    }
}
