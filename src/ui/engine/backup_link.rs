//! The session's conversation with the tenant backup service: the engine side runs a
//! [`BackupClient`] over the session stream, serves the window's [`BackupRequest`]s and sends
//! it [`BackupUpdate`]s.
//!
//! The link subscribes to the service's events. Job progress and log lines of a run the window
//! knows go to it as [`RunChange`]s, which it applies to its own inventory; anything else (a run
//! starting or ending, an action, a lag) re-reads the inventory and sends it whole. The link
//! keeps only the run ids of the last inventory it sent, which is all it needs to tell the two
//! apart: the window's copy is that inventory with the same changes applied in the same order.
//! A small `info` request once a second measures the round trip the Connection view plots, and
//! a full re-read every [`REREAD_EVERY`] catches the rest (schedules moving on).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::tenant::backup::BackupEvent;
use crate::tenant::backup::{BackupClient, ClientError};

use super::messages::{BackupRequest, BackupUpdate, RunChange};

/// How often the round trip is measured.
pub const RTT_EVERY: Duration = Duration::from_secs(1);
/// How often the whole inventory is re-read even without events.
pub const REREAD_EVERY: Duration = Duration::from_secs(30);

/// Serves the window's requests over `stream` until the stream or the request channel ends.
/// `rtt_us` receives the round trip of a small request, in microseconds.
pub async fn run<S>(
    stream: S,
    mut requests: mpsc::UnboundedReceiver<BackupRequest>,
    rtt_us: Arc<AtomicU64>,
    send: impl Fn(BackupUpdate) + Send + Sync + 'static,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut client = BackupClient::new(stream);
    if let Err(e) = client
        .hello(&format!("rac-console/{}", crate::VERSION))
        .await
    {
        send(BackupUpdate::Unavailable(e.to_string()));
        return Err(e).context("backup service hello");
    }
    client
        .subscribe()
        .await
        .context("subscribing to the backup service's events")?;
    let mut known_runs = send_inventory(&mut client, &send).await?;
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
                let Some(event) = event.context("reading the backup service's events")? else {
                    return Ok(());
                };
                match run_change(&event) {
                    Some(change) if known_runs.contains(change.run()) => {
                        send(BackupUpdate::Run(change));
                        continue;
                    }
                    _ => None,
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
            if let BackupRequest::Action(action) = request {
                match client.action(action.clone()).await {
                    Ok(outcome) => send(BackupUpdate::ActionDone {
                        summary: match outcome.session {
                            Some(session) => format!("done, run {session}"),
                            None => "done".into(),
                        },
                        action,
                    }),
                    Err(ClientError::Server { message, .. }) => send(BackupUpdate::ActionRefused {
                        action,
                        reason: message,
                    }),
                    Err(e) => return Err(e).context("sending an action"),
                }
            }
            next = requests.try_recv().ok();
        }
        known_runs = send_inventory(&mut client, &send).await?;
    }
}

/// Reads the inventory and hands it to the window; returns the ids of its job runs.
async fn send_inventory<S>(
    client: &mut BackupClient<S>,
    send: &impl Fn(BackupUpdate),
) -> anyhow::Result<HashSet<String>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let inventory = client
        .inventory()
        .await
        .context("reading the backup server's inventory")?;
    let runs = inventory.sessions.iter().map(|s| s.id.clone()).collect();
    send(BackupUpdate::Inventory(Box::new(inventory)));
    Ok(runs)
}

/// The run change a progress or log event describes; `None` for events that need a re-read.
fn run_change(event: &BackupEvent) -> Option<RunChange> {
    match event {
        BackupEvent::JobProgress {
            session,
            stage,
            progress,
            bytes_read,
            bytes_transferred,
            rate_bytes_per_sec,
            ..
        } => Some(RunChange::Progress {
            run: session.clone(),
            stage: *stage,
            progress: *progress,
            bytes_read: *bytes_read,
            bytes_transferred: *bytes_transferred,
            rate_bytes_per_sec: *rate_bytes_per_sec,
        }),
        BackupEvent::LogLine { session, line, .. } => Some(RunChange::Log {
            run: session.clone(),
            line: line.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::backup::model::{LogLine, Severity};

    /// What the link and the window do with one event, together: `true` when it became a
    /// change the window applied, `false` when it asks for a re-read.
    fn apply(inv: &mut crate::tenant::backup::Inventory, event: &BackupEvent) -> bool {
        run_change(event).is_some_and(|change| change.apply(inv))
    }

    #[test]
    fn progress_and_log_events_update_the_inventory_and_others_ask_for_a_reread() {
        let mut inv = crate::tenant::backup::generate(3, "acme", 1_795_000_000);
        let session = inv
            .sessions
            .first()
            .cloned()
            .expect("generated servers have past job runs");
        let progress = BackupEvent::JobProgress {
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
        let log = BackupEvent::LogLine {
            session: session.id.clone(),
            job: session.job.clone(),
            line: line.clone(),
        };
        assert!(apply(&mut inv, &log));
        assert_eq!(inv.sessions[0].log.last(), Some(&line));
        assert!(!apply(&mut inv, &BackupEvent::Lagged { missed: 1 }));
        let unknown = BackupEvent::JobProgress {
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

    /// A running job over a real backup service: its progress reaches the window as run
    /// changes the window can apply, not as whole inventories.
    #[tokio::test]
    async fn a_running_job_reaches_the_window_as_run_changes() {
        use crate::tenant::backup::model::Schedule;
        use crate::tenant::backup::{
            BackupAction, BackupService, ServiceConfig, Shape, Store, generate_with_shape,
            serve_connection, simulate,
        };
        use tokio_util::sync::CancellationToken;

        let dir = tempfile::tempdir().expect("temp dir");
        let config = ServiceConfig {
            tick_interval: Duration::from_millis(20),
            ..ServiceConfig::default()
        };
        let service =
            BackupService::open(Store::new(dir.path().join("state.json")), config, || {
                let mut inv =
                    generate_with_shape(7, Shape::Small, "acme", crate::util::now_unix_secs());
                for job in &mut inv.jobs {
                    job.schedule = Schedule::Manual;
                    job.next_run_unix_secs = None;
                    job.enabled = true;
                }
                inv
            })
            .expect("open the service");
        let stop = CancellationToken::new();
        tokio::spawn(simulate(service.clone(), stop.clone()));
        let (console_end, service_end) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve_connection(service, service_end));
        let (updates_tx, mut updates) = mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let rtt = Arc::new(AtomicU64::new(u64::MAX));
        tokio::spawn(run(console_end, requests, rtt, move |u| {
            let _ = updates_tx.send(u);
        }));

        let collect = async {
            let Some(BackupUpdate::Inventory(first)) = updates.recv().await else {
                panic!("the link starts with the whole inventory");
            };
            let mut window = *first;
            let job = window.jobs[0].id.clone();
            requests_tx
                .send(BackupRequest::Action(BackupAction::StartJob {
                    job: job.clone(),
                }))
                .expect("link running");
            let mut progress_changes = 0;
            while progress_changes < 3 {
                match updates.recv().await.expect("the link keeps running") {
                    BackupUpdate::Inventory(inv) => window = *inv,
                    BackupUpdate::Run(change) => {
                        assert!(
                            change.apply(&mut window),
                            "a change for a run the window knows"
                        );
                        let run = window.running_session(&job).map(|r| r.id.as_str());
                        if matches!(&change, RunChange::Progress { .. })
                            && run == Some(change.run())
                        {
                            progress_changes += 1;
                        }
                    }
                    BackupUpdate::ActionRefused { reason, .. } => panic!("start refused: {reason}"),
                    BackupUpdate::ActionDone { .. } => {}
                    BackupUpdate::Unavailable(why) => panic!("backup service unavailable: {why}"),
                }
            }
            window
        };
        let window = tokio::time::timeout(Duration::from_secs(60), collect)
            .await
            .expect("three progress changes in time (only a guard against hangs)");
        stop.cancel();
        let job = &window.jobs[0].id;
        assert!(
            window
                .running_session(job)
                .is_some_and(|r| r.progress > 0.0),
            "the window's copy shows the run's progress"
        );
    }
}
