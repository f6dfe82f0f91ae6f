//! The session's conversation with the tenant backup service: the engine side runs a
//! [`BackupClient`] over the session stream; the window sends [`Request`]s and draws the
//! [`Update`]s.
//!
//! The link subscribes to the service's events: job progress and log lines are applied to its
//! copy of the inventory as they come; anything else (a session starting or ending, an action,
//! a lag) re-reads the inventory. A small `info` request once a second measures the round trip
//! the Connection view plots, and a full re-read every [`REREAD_EVERY`] catches the rest
//! (schedules moving on).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::tenant::backup::model::MAX_LOG_LINES;
use crate::tenant::backup::{Action, BackupClient, ClientError, Event, Inventory};

/// How often the round trip is measured.
pub const RTT_EVERY: Duration = Duration::from_secs(1);
/// How often the whole inventory is re-read even without events.
pub const REREAD_EVERY: Duration = Duration::from_secs(30);

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
    client
        .subscribe()
        .await
        .context("subscribing to the backup service's events")?;
    let mut inventory = client
        .inventory()
        .await
        .context("reading the backup server's inventory")?;
    send(Update::Inventory(Box::new(inventory.clone())));
    let mut rtt_tick = tokio::time::interval(RTT_EVERY);
    rtt_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reread_tick = tokio::time::interval(REREAD_EVERY);
    reread_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    reread_tick.tick().await;
    loop {
        // `next_event` is cancel-safe, so it may race the window's requests and the timers.
        let request = tokio::select! {
            _ = rtt_tick.tick() => {
                let sent = Instant::now();
                client.info().await.context("backup service info")?;
                rtt_us.store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                continue;
            }
            _ = reread_tick.tick() => None,
            event = client.next_event() => {
                match event.context("reading the backup service's events")? {
                    None => return Ok(()),
                    Some(event) if apply(&mut inventory, &event) => {
                        send(Update::Inventory(Box::new(inventory.clone())));
                        continue;
                    }
                    Some(_) => None,
                }
            }
            request = requests.recv() => match request {
                Some(request) => Some(request),
                None => return Ok(()),
            },
        };
        // A request, or `None` for a change the events do not describe: either way the
        // queued requests run in order, then the inventory is read again.
        let mut next = request;
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
        inventory = client
            .inventory()
            .await
            .context("reading the backup server's inventory")?;
        send(Update::Inventory(Box::new(inventory.clone())));
    }
}

/// Applies a progress or log event to the inventory; `false` when the event needs a re-read.
fn apply(inventory: &mut Inventory, event: &Event) -> bool {
    match event {
        Event::JobProgress {
            session,
            stage,
            progress,
            bytes_read,
            bytes_transferred,
            rate_bytes_per_sec,
            ..
        } => match inventory.sessions.iter_mut().find(|s| s.id == *session) {
            Some(s) => {
                s.stage = *stage;
                s.progress = *progress;
                s.bytes_read = *bytes_read;
                s.bytes_transferred = *bytes_transferred;
                s.rate_bytes_per_sec = *rate_bytes_per_sec;
                true
            }
            None => false,
        },
        Event::LogLine { session, line, .. } => {
            match inventory.sessions.iter_mut().find(|s| s.id == *session) {
                Some(s) => {
                    s.log.push(line.clone());
                    if s.log.len() > MAX_LOG_LINES {
                        s.log.remove(0);
                    }
                    true
                }
                None => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::backup::model::{LogLine, Severity};

    #[test]
    fn progress_and_log_events_update_the_inventory_and_others_ask_for_a_reread() {
        let mut inv = crate::tenant::backup::generate(3, "acme", 1_795_000_000);
        let session = inv
            .sessions
            .first()
            .cloned()
            .expect("generated servers have past job runs");
        let progress = Event::JobProgress {
            session: session.id.clone(),
            job: session.job.clone(),
            stage: session.stage,
            progress: 0.42,
            bytes_read: 7,
            bytes_transferred: 5,
            rate_bytes_per_sec: 3,
        };
        assert!(apply(&mut inv, &progress));
        assert_eq!(inv.sessions[0].progress, 0.42);
        assert_eq!(inv.sessions[0].bytes_transferred, 5);
        let line = LogLine {
            time_unix_secs: 1,
            severity: Severity::Info,
            text: "processing mailbox 12".into(),
        };
        let log = Event::LogLine {
            session: session.id.clone(),
            job: session.job.clone(),
            line: line.clone(),
        };
        assert!(apply(&mut inv, &log));
        assert_eq!(inv.sessions[0].log.last(), Some(&line));
        assert!(!apply(&mut inv, &Event::Lagged { missed: 1 }));
        let unknown = Event::JobProgress {
            session: "nope".into(),
            job: "nope".into(),
            stage: session.stage,
            progress: 0.0,
            bytes_read: 0,
            bytes_transferred: 0,
            rate_bytes_per_sec: 0,
        };
        assert!(
            !apply(&mut inv, &unknown),
            "an unknown session asks for a re-read"
        );
    }
}
