//! How a desktop session fails, in words an operator acts on: IronRDP's connector, session
//! and I/O errors mapped to [`DesktopError`]. The hard case is NLA: a wrong password shows up
//! only as the server closing the stream in the middle of CredSSP.

use ironrdp_connector::{ConnectorError, ConnectorErrorKind};
use ironrdp_pdu::nego::FailureCode;

use super::stream::NotRdp;

/// Why a desktop session could not open or ended, in words an operator acts on.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// NLA refused the user, domain or password (or a server asked for a password and
    /// refused it).
    #[error("authentication failed: the desktop refused the user name, domain or password")]
    AuthenticationFailed,
    /// The server would not agree on a security protocol, or denied access.
    #[error("the desktop refused the connection: {0}")]
    Refused(String),
    /// RDP's TLS upgrade failed.
    #[error("TLS with the desktop failed: {0}")]
    Tls(String),
    /// The stream broke or closed.
    #[error("connection to the desktop lost: {0}")]
    ConnectionLost(String),
    /// The service at the other end is not a remote desktop.
    #[error("{0}")]
    NotRdp(String),
    /// The desktop sent something this client does not understand.
    #[error("RDP protocol error: {0}")]
    Protocol(String),
}

/// The error and every source under it, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Whether an io::Error somewhere under `error` says the peer closed the stream.
fn closed_by_peer(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The [`NotRdp`] refusal somewhere under `error`.
fn find_not_rdp<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a NotRdp> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<NotRdp>())
        {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// Names a connection failure. With NLA, a wrong password shows up only as the server
/// closing the stream in the middle of CredSSP (IronRDP reports "not enough bytes"), so a
/// close during an NLA handshake is reported as failed authentication.
pub(super) fn connector_error(error: ConnectorError, nla: bool) -> DesktopError {
    if let Some(not_rdp) = find_not_rdp(&error) {
        return DesktopError::NotRdp(not_rdp.to_string());
    }
    match error.kind() {
        ConnectorErrorKind::AccessDenied => return DesktopError::AuthenticationFailed,
        ConnectorErrorKind::Negotiation(failure) => {
            let why = match failure.code() {
                FailureCode::HYBRID_REQUIRED_BY_SERVER => {
                    "it requires NLA (CredSSP), which this client offered; check the server's security settings".to_string()
                }
                FailureCode::SSL_REQUIRED_BY_SERVER => "it requires TLS".to_string(),
                FailureCode::SSL_NOT_ALLOWED_BY_SERVER => {
                    "it allows only standard RDP security, which is not encrypted end to end; enable TLS or NLA on the server".to_string()
                }
                FailureCode::SSL_CERT_NOT_ON_SERVER => "it has no TLS certificate".to_string(),
                _ => failure.to_string(),
            };
            return DesktopError::Refused(why);
        }
        ConnectorErrorKind::Credssp(e) => {
            use ironrdp_connector::sspi::ErrorKind;
            if e.error_type == ErrorKind::LogonDenied {
                return DesktopError::AuthenticationFailed;
            }
        }
        _ => {}
    }
    if closed_by_peer(&error) {
        if nla {
            return DesktopError::AuthenticationFailed;
        }
        return DesktopError::ConnectionLost(format!(
            "the desktop closed the connection during the RDP handshake ({})",
            chain(&error)
        ));
    }
    DesktopError::Protocol(chain(&error))
}

pub(super) fn session_error(error: ironrdp_session::SessionError) -> DesktopError {
    if closed_by_peer(&error) {
        DesktopError::ConnectionLost(chain(&error))
    } else {
        DesktopError::Protocol(chain(&error))
    }
}

pub(super) fn io_error(error: std::io::Error) -> DesktopError {
    DesktopError::ConnectionLost(error.to_string())
}
