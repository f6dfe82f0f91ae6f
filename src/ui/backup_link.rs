//! The session's conversation with the tenant backup service: the engine side runs a
//! [`BackupClient`] over the session stream; the window sends [`Request`]s and draws the
//! [`Update`]s.
//!
//! The client reads events with a call that is not cancel-safe, so one task cannot wait on
//! events and on the window's requests at once. Instead the link re-reads the inventory
//! about once a second (and right after each action), which also measures the round trip
//! the Connection view plots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::tenant::backup::{Action, BackupClient, ClientError, Inventory};

/// How often the inventory is re-read while the tab is open.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the window asks the backup service.
#[derive(Debug, Clone)]
pub enum Request {
    /// Read the whole inventory again now.
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
/// `rtt_us` receives the round trip of a small request, in microseconds.
pub async fn run<S>(
    stream: S,
    mut requests: mpsc::UnboundedReceiver<Request>,
    rtt_us: Arc<AtomicU64>,
    send: impl Fn(Update) + Send + Sync + 'static,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut client = BackupClient::new(stream);
    if let Err(e) = client
        .hello(&format!("rac-console/{}", crate::VERSION))
        .await
    {
        send(Update::Unavailable(e.to_string()));
        return Err(e).context("backup service hello");
    }
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let sent = Instant::now();
        client.info().await.context("backup service info")?;
        rtt_us.store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
        let inventory = client
            .inventory()
            .await
            .context("reading the backup server's inventory")?;
        send(Update::Inventory(Box::new(inventory)));

        let request = tokio::select! {
            _ = tick.tick() => continue,
            request = requests.recv() => request,
        };
        let Some(request) = request else {
            return Ok(());
        };
        // Everything the window queued, in order; then a fresh inventory.
        let mut next = Some(request);
        while let Some(request) = next {
            if let Request::Action(action) = request {
                match client.action(action.clone()).await {
                    Ok(outcome) => send(Update::ActionDone {
                        summary: match outcome.session {
                            Some(session) => format!("done, run {session}"),
                            None => "done".into(),
                        },
                        action,
                    }),
                    Err(ClientError::Server { message, .. }) => send(Update::ActionRefused {
                        action,
                        reason: message,
                    }),
                    Err(e) => return Err(e).context("sending an action"),
                }
            }
            next = requests.try_recv().ok();
        }
    }
}
