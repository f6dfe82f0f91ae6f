//! Every message of the backup service's wire protocol in one place: requests from a console,
//! responses that echo the request `id`, and events pushed to subscribers. Each message is one
//! JSON frame of the project's frame codec (`wire::frame`). Described in `docs/PROTOCOL.md`
//! ("The tenant backup service").

use serde::{Deserialize, Serialize};

use super::model::{LogLine, RunStage, RunState, ServerInfo};
use super::ops::{BackupAction, Change};

/// Version of this protocol, checked in `hello`.
pub const BACKUP_PROTOCOL_VERSION: u32 = 1;

/// A request from a console. `id` is chosen by the client and echoed in the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response.
    pub id: u64,
    /// What is asked.
    #[serde(flatten)]
    pub body: RequestBody,
}

/// The kinds of request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// Version check and server info; optional, but a client should send it first.
    Hello {
        /// The client's [`BACKUP_PROTOCOL_VERSION`].
        protocol_version: u32,
        /// Free-form client name, for the log.
        #[serde(default)]
        client: String,
    },
    /// The server info alone.
    Info,
    /// The whole inventory.
    Inventory,
    /// Start receiving events on this connection.
    Subscribe,
    /// Stop receiving events.
    Unsubscribe,
    /// Do an action.
    Action { action: BackupAction },
}

/// Answer to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupHello {
    /// Always [`super::SERVICE_NAME`].
    pub service: String,
    /// The server's [`BACKUP_PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The backup server.
    pub server: ServerInfo,
}

/// The stable codes of error answers: an action's refusal (`not_found` ... `invalid`, see
/// `ActionError`), or a request the service could not take. A code this version does not
/// know (from a newer service) reads as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    JobRunning,
    JobNotRunning,
    JobDisabled,
    InUse,
    CertificateRequired,
    ProxyUnavailable,
    ProxyBusy,
    DuplicateName,
    LocalProxy,
    Invalid,
    /// Not JSON, or not a request.
    BadRequest,
    /// The client's hello names another protocol version.
    UnsupportedVersion,
    /// A request over `MAX_REQUEST_LEN`.
    FrameTooLarge,
    /// The state file could not be written; the action was not applied.
    StorageFailed,
    /// The service could not encode its answer.
    Internal,
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::JobRunning => "job_running",
            ErrorCode::JobNotRunning => "job_not_running",
            ErrorCode::JobDisabled => "job_disabled",
            ErrorCode::InUse => "in_use",
            ErrorCode::CertificateRequired => "certificate_required",
            ErrorCode::ProxyUnavailable => "proxy_unavailable",
            ErrorCode::ProxyBusy => "proxy_busy",
            ErrorCode::DuplicateName => "duplicate_name",
            ErrorCode::LocalProxy => "local_proxy",
            ErrorCode::Invalid => "invalid",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// Any frame the server sends: a response (with the request's `id`, `null` when the request
/// could not be read) carrying `result` or `error`, or an event (no `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    /// A pushed event.
    Event { event: BackupEvent },
    /// A response.
    Response {
        /// The request's id, or `null`.
        id: Option<u64>,
        /// The answer on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<serde_json::Value>,
        /// The reason on failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
}

/// A live change, pushed to subscribed connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BackupEvent {
    /// A job run advanced (`session` is the run's id, `session-N`).
    JobProgress {
        session: String,
        job: String,
        stage: RunStage,
        /// Overall progress 0..=1.
        progress: f64,
        /// Bytes read so far.
        bytes_read: u64,
        /// Bytes written to the repository so far.
        bytes_transferred: u64,
        rate_bytes_per_sec: u64,
    },
    /// A job run logged a line.
    LogLine {
        session: String,
        job: String,
        line: LogLine,
    },
    /// A job run started (`running`) or ended.
    SessionState {
        session: String,
        job: String,
        /// Its new state.
        state: RunState,
    },
    /// Something in the inventory changed (an action, or the simulation).
    Changed(Change),
    /// This subscriber fell behind and missed `missed` events; re-read the inventory.
    Lagged {
        /// How many events were dropped.
        missed: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let req: Request = serde_json::from_str(
            r#"{"id": 7, "type": "action", "action": {"type": "stop_job", "job": "job-1"}}"#,
        )
        .expect("parse");
        assert_eq!(req.id, 7);
        assert!(matches!(req.body, RequestBody::Action { .. }));
        let req: Request =
            serde_json::from_str(r#"{"id": 1, "type": "inventory"}"#).expect("parse");
        assert_eq!(req.body, RequestBody::Inventory);
        assert!(serde_json::from_str::<Request>(r#"{"id": 1, "type": "nope"}"#).is_err());
    }

    #[test]
    fn server_frames_tell_events_from_responses() {
        let event = ServerFrame::Event {
            event: BackupEvent::Lagged { missed: 3 },
        };
        let json = serde_json::to_string(&event).expect("encode");
        assert_eq!(json, r#"{"event":{"type":"lagged","missed":3}}"#);
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&json).expect("decode"),
            event
        );
        let resp = ServerFrame::Response {
            id: Some(4),
            result: None,
            error: Some(WireError {
                code: ErrorCode::NotFound,
                message: "unknown job 'x'".into(),
            }),
        };
        let json = serde_json::to_string(&resp).expect("encode");
        assert_eq!(
            serde_json::from_str::<ServerFrame>(&json).expect("decode"),
            resp
        );
        let changed = BackupEvent::Changed(Change {
            kind: "job".into(),
            id: "job-1".into(),
            change: "enabled".into(),
        });
        assert_eq!(
            serde_json::to_value(&changed).expect("encode"),
            serde_json::json!({"type": "changed", "kind": "job", "id": "job-1", "change": "enabled"})
        );
    }

    #[test]
    fn error_codes_read_as_written_and_unknown_ones_as_other() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::StorageFailed,
            ErrorCode::FrameTooLarge,
        ] {
            let json = serde_json::to_string(&code).expect("encode");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&json).expect("decode"),
                code
            );
        }
        let newer: ErrorCode = serde_json::from_str("\"quota_exceeded\"").expect("decode");
        assert_eq!(newer, ErrorCode::Other);
    }
}
