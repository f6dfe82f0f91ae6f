//! The session's conversation with the tenant backup service: the engine side runs the
//! service's client over the session stream; the window sends [`Request`]s and draws the
//! [`Update`]s.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::tenant::backup::{Action, Inventory};

/// What the window asks the backup service.
#[derive(Debug, Clone)]
pub enum Request {
    /// Read the whole inventory again.
    Refresh,
    /// An operator action (start, stop, enable, disable a job, ...).
    Action(Action),
}

/// What the backup service answered.
#[derive(Debug, Clone)]
pub enum Update {
    /// A fresh inventory.
    Inventory(Box<Inventory>),
    /// An action was accepted.
    ActionDone { action: Action, summary: String },
    /// An action was refused, with the server's reason.
    ActionRefused { action: Action, reason: String },
    /// The backup service cannot be used over this session (and why).
    Unavailable(String),
}

/// Serves the window's requests over `stream` until the stream or the request channel ends.
///
/// The tenant backup service's client is being written in `tenant::backup`; until it exists
/// this says so in the tab and keeps the session open.
pub async fn run<S>(
    stream: S,
    mut requests: mpsc::UnboundedReceiver<Request>,
    _rtt_us: Arc<AtomicU64>,
    send: impl Fn(Update) + Send + Sync + 'static,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _stream = stream;
    send(Update::Unavailable(
        "this console build cannot speak the backup service's protocol yet".into(),
    ));
    while requests.recv().await.is_some() {}
    Ok(())
}
