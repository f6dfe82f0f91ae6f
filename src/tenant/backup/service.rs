//! The tenant backup service on the wire: [`BackupService`] owns the state, its file and the
//! live event channel; [`serve_connection`] serves one console over the frame codec;
//! [`simulate`] drives the job runs. `net::backup_host` gives it a listener or a session.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::model::{Inventory, RunState, ServerInfo};
use super::ops::{self, ActionError, ActionOutcome, BackupAction};
use super::protocol::{
    BACKUP_PROTOCOL_VERSION, BackupEvent, BackupHello, ErrorCode, Request, RequestBody,
    ServerFrame, WireError,
};
use super::sim::{Simulator, recover_interrupted};
use super::store::{Store, StoreError, Written};
use crate::util::now_unix_secs;
use crate::wire::frame::{Connection, FrameError};

/// Largest request frame a console may send (requests are small; responses may be larger).
pub const MAX_REQUEST_LEN: usize = 1024 * 1024;
/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// How the service runs its simulation and persistence.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Real time between simulation ticks.
    pub tick_interval: Duration,
    /// Simulated seconds per real second (1.0 = real time; the lab uses more).
    pub sim_speed: f64,
    /// Seed of the simulation's random choices.
    pub sim_seed: u64,
    /// Longest time simulated progress stays unsaved (starts and ends are saved at once).
    pub persist_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            tick_interval: Duration::from_millis(500),
            sim_speed: 1.0,
            sim_seed: 0,
            persist_interval: Duration::from_secs(10),
        }
    }
}

/// Why an action was not done.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The action was refused; nothing changed.
    #[error(transparent)]
    Refused(#[from] ActionError),
    /// The state file could not be written; the action was not applied.
    #[error("the action was not saved: {0}")]
    Storage(#[from] StoreError),
}

impl ServiceError {
    /// The wire form of the error.
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            ServiceError::Refused(e) => e.code(),
            ServiceError::Storage(_) => ErrorCode::StorageFailed,
        };
        WireError {
            code,
            message: format!("{self:#}"),
        }
    }
}

struct State {
    inv: Inventory,
    sim: Simulator,
    last_saved: Instant,
}

/// One tenant's backup server, shared by every connection and the simulation task.
pub struct BackupService {
    // A std mutex: every critical section is short, synchronous work on plain data (a lookup,
    // a clone, a simulation step) and never spans an `.await`, so readers never wait for disk.
    state: Mutex<State>,
    // Serializes every change *with* its write to disk (held across the fsync, hence async):
    // the file always holds the newest acknowledged state, and readers are not blocked.
    commit: tokio::sync::Mutex<()>,
    events: broadcast::Sender<BackupEvent>,
    store: Store,
    config: ServiceConfig,
}

impl BackupService {
    /// Opens the state file (creating it from `fresh` when missing), marks sessions that a
    /// previous process left running as failed, and saves. A corrupt file is an error.
    pub fn open(
        store: Store,
        config: ServiceConfig,
        fresh: impl FnOnce() -> Inventory,
    ) -> Result<Arc<Self>, StoreError> {
        let mut inv = store.load_or_create(fresh)?;
        let now = now_unix_secs();
        let interrupted = recover_interrupted(&mut inv, now);
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "sessions left running by a previous process marked failed"
            );
        }
        inv.server.started_at_unix_secs = now;
        store.save(&inv)?.log(store.path());
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(BackupService {
            state: Mutex::new(State {
                inv,
                sim: Simulator::new(config.sim_seed),
                last_saved: Instant::now(),
            }),
            commit: tokio::sync::Mutex::new(()),
            events,
            store,
            config,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a critical section leaves plain data behind; keep serving it.
        crate::util::lock(&self.state)
    }

    /// The service's configuration.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The server info, with `uptime_secs` filled in.
    pub fn info(&self) -> ServerInfo {
        let mut info = self.lock().inv.server.clone();
        info.uptime_secs = now_unix_secs().saturating_sub(info.started_at_unix_secs);
        info
    }

    /// A snapshot of the whole inventory, with `uptime_secs` filled in.
    pub fn inventory(&self) -> Inventory {
        let mut inv = self.lock().inv.clone();
        inv.server.uptime_secs = now_unix_secs().saturating_sub(inv.server.started_at_unix_secs);
        inv
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BackupEvent> {
        self.events.subscribe()
    }

    /// Validates and applies an action, and saves it before returning: an `Ok` answer means
    /// the change is in the state file (and durable, unless syncing the folder after the
    /// rename failed: then it is applied, logged as not yet durable, and still `Ok`). On any
    /// error nothing changed.
    pub async fn act(&self, action: &BackupAction) -> Result<ActionOutcome, ServiceError> {
        let _commit = self.commit.lock().await;
        let (next, bytes, outcome, changes) = {
            let state = self.lock();
            let mut next = state.inv.clone();
            let (outcome, changes) = ops::apply(&mut next, action, now_unix_secs(), true)?;
            let bytes = Store::encode(&next)?;
            (next, bytes, outcome, changes)
        };
        // Past the rename the change is applied, durable or not.
        self.write(bytes).await?.log(self.store.path());
        {
            let mut state = self.lock();
            state.inv = next;
            state.last_saved = Instant::now();
        }
        let job = match action {
            BackupAction::StartJob { job } | BackupAction::StopJob { job } => Some(job.clone()),
            _ => None,
        };
        if let (Some(job), Some(session)) = (job, outcome.session.clone()) {
            let state = if matches!(action, BackupAction::StartJob { .. }) {
                RunState::Running
            } else {
                RunState::Stopped
            };
            let _ = self.events.send(BackupEvent::SessionState {
                session,
                job,
                state,
            });
        }
        for change in changes {
            // No subscribers is not an error.
            let _ = self.events.send(BackupEvent::Changed(change));
        }
        Ok(outcome)
    }

    /// Advances the simulation by `real` elapsed time (scaled by `sim_speed`), publishes its
    /// events and saves when a session started or ended, or when `persist_interval` passed.
    pub async fn tick(&self, real: Duration) -> Result<(), StoreError> {
        let _commit = self.commit.lock().await;
        let (events, bytes) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let dt = real.as_secs_f64() * self.config.sim_speed;
            let out = state.sim.tick(&mut state.inv, now_unix_secs(), dt);
            let due = state.last_saved.elapsed() >= self.config.persist_interval;
            let bytes = (out.sessions_changed || due).then(|| {
                state.last_saved = Instant::now();
                Store::encode(&state.inv)
            });
            (out.events, bytes)
        };
        let saved = match bytes {
            Some(Ok(bytes)) => self.write(bytes).await.map(|w| w.log(self.store.path())),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        };
        for event in events {
            let _ = self.events.send(event);
        }
        saved
    }

    /// Saves the current state now (e.g. at shutdown, to keep simulated progress).
    pub async fn persist(&self) -> Result<(), StoreError> {
        let _commit = self.commit.lock().await;
        let bytes = Store::encode(&self.lock().inv)?;
        self.write(bytes).await?.log(self.store.path());
        Ok(())
    }

    async fn write(&self, bytes: Vec<u8>) -> Result<Written, StoreError> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.write(&bytes)).await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Io {
                path: self.store.path().to_owned(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    async fn answer(
        &self,
        id: u64,
        body: RequestBody,
        subscription: &mut Option<broadcast::Receiver<BackupEvent>>,
    ) -> ServerFrame {
        let result = match body {
            RequestBody::Hello {
                protocol_version,
                client,
            } => {
                if protocol_version != BACKUP_PROTOCOL_VERSION {
                    Err(WireError {
                        code: ErrorCode::UnsupportedVersion,
                        message: format!(
                            "client speaks protocol {protocol_version}, this server speaks {BACKUP_PROTOCOL_VERSION}"
                        ),
                    })
                } else {
                    tracing::debug!(client, "backup console said hello");
                    to_value(&BackupHello {
                        service: super::SERVICE_NAME.into(),
                        protocol_version: BACKUP_PROTOCOL_VERSION,
                        server: self.info(),
                    })
                }
            }
            RequestBody::Info => to_value(&self.info()),
            RequestBody::Inventory => to_value(&self.inventory()),
            RequestBody::Subscribe => {
                *subscription = Some(self.subscribe());
                Ok(serde_json::json!({ "subscribed": true }))
            }
            RequestBody::Unsubscribe => {
                *subscription = None;
                Ok(serde_json::json!({ "subscribed": false }))
            }
            RequestBody::Action { action } => match self.act(&action).await {
                Ok(outcome) => to_value(&outcome),
                Err(e) => Err(e.to_wire()),
            },
        };
        response(Some(id), result)
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, WireError> {
    serde_json::to_value(value).map_err(|e| WireError {
        code: ErrorCode::Internal,
        message: e.to_string(),
    })
}

fn response(id: Option<u64>, result: Result<serde_json::Value, WireError>) -> ServerFrame {
    match result {
        Ok(value) => ServerFrame::Response {
            id,
            result: Some(value),
            error: None,
        },
        Err(error) => ServerFrame::Response {
            id,
            result: None,
            error: Some(error),
        },
    }
}

fn bad_request(id: Option<u64>, message: String) -> ServerFrame {
    response(
        id,
        Err(WireError {
            code: ErrorCode::BadRequest,
            message,
        }),
    )
}

async fn next_event(
    subscription: &mut Option<broadcast::Receiver<BackupEvent>>,
) -> Result<BackupEvent, broadcast::error::RecvError> {
    match subscription {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves one console connection until it closes: answers requests in order and, while
/// subscribed, pushes events. A malformed request gets a `bad_request` answer and the
/// connection goes on; a broken frame (too large, cut off) ends this connection only.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send>(
    service: Arc<BackupService>,
    stream: S,
) -> anyhow::Result<()> {
    let mut conn = Connection::new(stream, MAX_REQUEST_LEN);
    let mut subscription: Option<broadcast::Receiver<BackupEvent>> = None;
    loop {
        tokio::select! {
            body = conn.next_bytes() => {
                let body = match body {
                    Ok(Some(body)) => body,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        if let FrameError::TooLarge { len, max } = e {
                            let frame = response(None, Err(WireError {
                                code: ErrorCode::FrameTooLarge,
                                message: format!("request of {len} bytes exceeds {max} bytes"),
                            }));
                            let _ = conn.send(&frame).await;
                        }
                        return Err(anyhow::Error::new(e).context("reading a request"));
                    }
                };
                let frame = match serde_json::from_slice::<serde_json::Value>(&body) {
                    Err(e) => bad_request(None, format!("not JSON: {e}")),
                    Ok(value) => {
                        let id = value.get("id").and_then(serde_json::Value::as_u64);
                        match (id, serde_json::from_value::<Request>(value)) {
                            (_, Ok(req)) => service.answer(req.id, req.body, &mut subscription).await,
                            (id, Err(e)) => bad_request(id, format!("malformed request: {e}")),
                        }
                    }
                };
                conn.send(&frame).await.context("writing a response")?;
            }
            event = next_event(&mut subscription) => {
                let event = match event {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(missed)) => BackupEvent::Lagged { missed },
                    Err(broadcast::error::RecvError::Closed) => {
                        subscription = None;
                        continue;
                    }
                };
                conn.send(&ServerFrame::Event { event }).await.context("writing an event")?;
            }
        }
    }
}

/// Drives the simulation of `service` every `tick_interval` until `shutdown`, then saves the
/// state. `net::backup_host::run` starts it itself; call it directly when the service is hosted without a
/// listener (behind the tenant redirector, in the lab).
pub async fn simulate(service: Arc<BackupService>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(service.config.tick_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => {
                if let Err(e) = service.persist().await {
                    tracing::error!("backup service: saving the state at shutdown failed: {e}");
                }
                return;
            }
        }
        let now = tokio::time::Instant::now();
        let result = service.tick(now - last).await;
        last = now;
        // Log a storage failure once, not every tick, and say when it recovers.
        match (result, failing) {
            (Err(e), false) => {
                tracing::error!("backup service: saving simulated progress failed: {e}");
                failing = true;
            }
            (Ok(()), true) => {
                tracing::info!("backup service: saving works again");
                failing = false;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::backup::generator::{Shape, generate_with_shape};
    use crate::wire::frame::read_frame;

    fn service(dir: &tempfile::TempDir) -> Arc<BackupService> {
        service_on(Store::new(dir.path().join("state.json")))
    }

    fn service_on(store: Store) -> Arc<BackupService> {
        BackupService::open(store, ServiceConfig::default(), || {
            generate_with_shape(1, Shape::Small, "t", now_unix_secs())
        })
        .expect("open")
    }

    #[tokio::test]
    async fn an_action_whose_folder_sync_fails_is_applied_and_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let svc = service_on(Store::new(&path).with_failing_dir_sync());
        let job = svc.inventory().jobs[0].id.clone();
        let was = svc.inventory().job(&job).expect("job").enabled;
        let action = if was {
            BackupAction::DisableJob { job: job.clone() }
        } else {
            BackupAction::EnableJob { job: job.clone() }
        };
        svc.act(&action)
            .await
            .expect("applied though not yet durable: not a failure");
        assert_eq!(svc.inventory().job(&job).expect("job").enabled, !was);
        let on_disk = Store::new(&path).load().expect("load").expect("state");
        assert_eq!(on_disk.job(&job).expect("job").enabled, !was);
    }

    async fn roundtrip(stream: &mut tokio::io::DuplexStream, raw: &[u8]) -> serde_json::Value {
        use tokio::io::AsyncWriteExt;
        stream.write_all(raw).await.expect("write");
        read_frame::<serde_json::Value, _>(stream, usize::MAX)
            .await
            .expect("read")
            .expect("a frame")
    }

    fn frame(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    #[tokio::test]
    async fn bad_requests_get_answers_and_the_connection_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = service(&dir);
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(serve_connection(svc, server));

        let v = roundtrip(&mut client, &frame("not json")).await;
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], "bad_request");
        let v = roundtrip(&mut client, &frame(r#"{"id": 5, "type": "fly"}"#)).await;
        assert_eq!(v["id"], 5);
        assert_eq!(v["error"]["code"], "bad_request");
        let v = roundtrip(
            &mut client,
            &frame(r#"{"id": 6, "type": "hello", "protocol_version": 99}"#),
        )
        .await;
        assert_eq!(v["error"]["code"], "unsupported_version");
        let v = roundtrip(
            &mut client,
            &frame(
                r#"{"id": 7, "type": "action", "action": {"type": "start_job", "job": "nope"}}"#,
            ),
        )
        .await;
        assert_eq!(v["error"]["code"], "not_found");
        let v = roundtrip(&mut client, &frame(r#"{"id": 8, "type": "info"}"#)).await;
        assert_eq!(v["id"], 8);
        assert!(v["result"]["name"].is_string());

        // A frame over the request limit ends this connection with a last answer.
        let v = roundtrip(&mut client, &(MAX_REQUEST_LEN as u32 + 1).to_be_bytes()).await;
        assert_eq!(v["error"]["code"], "frame_too_large");
        let result = task.await.expect("join");
        assert!(result.is_err());
    }
}
