//! The tenant redirector: keeps one control connection to the SP open (steps 2 and 3), and
//! for each `OpenData` checks the request against its allow-list and consent, opens a data
//! connection and splices it to the local service (steps 7 and 9).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backoff::Backoff;
use super::dial::{Dialer, Route};
use super::frame::{self, MAX_FRAME_LEN};
use super::protocol::{ControlMsg, ErrorCode, Hello, HelloReply, Role, SessionMsg};
use super::splice::{Counters, splice};
use super::tls::{Stream, TlsClient, Trust};
use crate::tenant::config::TenantConfig;

/// A service served inside this process (the lab's simulated tenants, `[backup_service]`).
pub type LocalHandler =
    Arc<dyn Fn(Box<dyn Stream>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Where a named service lives.
#[derive(Clone)]
pub enum ServiceTarget {
    /// A TCP service on this side (`host:port`).
    Tcp(String),
    /// A service in this process.
    Local(LocalHandler),
}

impl std::fmt::Debug for ServiceTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceTarget::Tcp(addr) => write!(f, "Tcp({addr})"),
            ServiceTarget::Local(_) => f.write_str("Local"),
        }
    }
}

/// Everything the tenant redirector needs, built from a [`TenantConfig`] or by the lab.
#[derive(Clone)]
pub struct RedirectorConfig {
    pub tenant: String,
    pub secret: String,
    pub endpoints: Vec<String>,
    pub trust: Trust,
    pub server_name: String,
    pub allow_provider_access: bool,
    pub services: BTreeMap<String, ServiceTarget>,
    /// Where the SP's gateway pool is remembered between runs.
    pub pool_file: Option<PathBuf>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub healthy_after: Duration,
}

impl std::fmt::Debug for RedirectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedirectorConfig")
            .field("tenant", &self.tenant)
            .field("endpoints", &self.endpoints)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl RedirectorConfig {
    /// From a config file's contents; local services come as TCP targets.
    pub fn from_file(config: &TenantConfig, config_path: &std::path::Path) -> Result<Self> {
        let trust = match (&config.ca_cert, &config.ca_fingerprint) {
            (Some(path), _) => Trust::CaFile(path.clone()),
            (None, Some(fp)) => Trust::Pinned(super::tls::parse_fingerprint(fp)?),
            (None, None) => return Err(anyhow!("no ca_cert or ca_fingerprint")),
        };
        let mut pool_file = config_path.as_os_str().to_owned();
        pool_file.push(".gateways.json");
        Ok(RedirectorConfig {
            tenant: config.name.clone(),
            secret: config.secret.clone(),
            endpoints: config.endpoints.clone(),
            trust,
            server_name: config.server_name(),
            allow_provider_access: config.allow_provider_access,
            services: config
                .services
                .iter()
                .map(|(name, addr)| (name.clone(), ServiceTarget::Tcp(addr.clone())))
                .collect(),
            pool_file: Some(PathBuf::from(pool_file)),
            ..RedirectorConfig::defaults()
        })
    }

    /// Defaults for the fields a config file does not set.
    pub fn defaults() -> Self {
        RedirectorConfig {
            tenant: String::new(),
            secret: String::new(),
            endpoints: Vec::new(),
            trust: Trust::Pinned([0; 32]),
            server_name: "localhost".into(),
            allow_provider_access: true,
            services: BTreeMap::new(),
            pool_file: None,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// What the redirector is doing now (for the lab, the tests and the logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    Connecting,
    Online {
        endpoint: String,
    },
    Waiting {
        retry_in: Duration,
        last_error: String,
    },
    Stopped,
}

/// Runs the tenant redirector until `shutdown` fires.
pub async fn run(config: RedirectorConfig, shutdown: CancellationToken) -> Result<()> {
    let (state, _) = watch::channel(AgentState::Connecting);
    run_with_state(config, shutdown, state).await
}

/// [`run`], reporting its state on a watch channel.
pub async fn run_with_state(
    config: RedirectorConfig,
    shutdown: CancellationToken,
    state: watch::Sender<AgentState>,
) -> Result<()> {
    let tls = TlsClient::new(&config.trust, &config.server_name).context("setting up TLS")?;
    let dialer = Dialer::new(&Route::Gateways(config.endpoints.clone()), tls);
    if let Some(pool) = config.pool_file.as_ref().and_then(|p| load_pool(p)) {
        dialer.add_endpoints(&pool);
    }
    let config = Arc::new(config);
    let sessions = TaskTracker::new();
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    while !shutdown.is_cancelled() {
        state.send_replace(AgentState::Connecting);
        let started = Instant::now();
        let result = control_connection(&config, &dialer, &shutdown, &state, &sessions).await;
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= config.healthy_after {
            backoff.reset();
        }
        let retry_in = backoff.next_delay();
        let last_error = match result {
            Ok(()) => "control connection closed".to_string(),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(tenant = %config.tenant, "{last_error}; reconnecting in {retry_in:.1?}");
        state.send_replace(AgentState::Waiting {
            retry_in,
            last_error,
        });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    sessions.close();
    sessions.wait().await;
    state.send_replace(AgentState::Stopped);
    Ok(())
}

/// One control connection, from dial to its end.
async fn control_connection(
    config: &Arc<RedirectorConfig>,
    dialer: &Arc<Dialer>,
    shutdown: &CancellationToken,
    state: &watch::Sender<AgentState>,
    sessions: &TaskTracker,
) -> Result<()> {
    let dialed = dialer.dial().await?;
    let endpoint = dialed.endpoint.clone();
    let mut stream = dialed.stream;
    let hello = Hello::new(Role::TenantControl {
        tenant: config.tenant.clone(),
        secret: config.secret.clone(),
        agent: format!("rac-tenant/{}", crate::VERSION),
        services: config.services.keys().cloned().collect(),
        provider_access: config.allow_provider_access,
    });
    frame::write_frame(&mut stream, &hello).await?;
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        frame::read_frame::<HelloReply, _>(&mut stream, MAX_FRAME_LEN),
    )
    .await
    .map_err(|_| anyhow!("{endpoint}: no answer to hello"))??
    .ok_or_else(|| anyhow!("{endpoint}: closed before answering hello"))?;
    let welcome = match reply {
        HelloReply::Welcome(w) => w,
        HelloReply::Error(e) => {
            return Err(anyhow!("{endpoint} refused the tenant: {}", e.message));
        }
    };
    remember_pool(config, dialer, &welcome.gateways);
    tracing::info!(tenant = %config.tenant, %endpoint, "connected to the SP");
    state.send_replace(AgentState::Online {
        endpoint: endpoint.clone(),
    });

    let heartbeat = Duration::from_secs(welcome.heartbeat_secs.max(1));
    let dead_after = Duration::from_secs(welcome.dead_after_secs.max(welcome.heartbeat_secs + 1));
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (incoming_tx, mut incoming) = mpsc::channel(16);
    let reader_task = tokio::spawn(async move {
        loop {
            let item = frame::read_frame::<ControlMsg, _>(&mut reader, MAX_FRAME_LEN).await;
            let stop = !matches!(item, Ok(Some(_)));
            if incoming_tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let _reader = super::AbortOnDrop(reader_task);
    // Session tasks report refusals through this channel; the loop writes them.
    let (outgoing_tx, mut outgoing) = mpsc::channel::<ControlMsg>(64);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_heard = Instant::now();
    let mut seq = 0;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = outgoing.recv() => msg,
            item = incoming.recv() => {
                last_heard = Instant::now();
                match item {
                    None | Some(Ok(None)) => return Err(anyhow!("{endpoint} closed the control connection")),
                    Some(Err(e)) if e.is_connection_lost() => return Err(anyhow!("lost the control connection to {endpoint}: {e}")),
                    Some(Err(e)) => return Err(anyhow!("bad frame from {endpoint}: {e}")),
                    Some(Ok(Some(msg))) => match msg {
                        ControlMsg::Ping { seq } => Some(ControlMsg::Pong { seq }),
                        ControlMsg::Pong { .. } => None,
                        ControlMsg::OpenData { session_id, nonce, service } => {
                            let task = open_session(config.clone(), dialer.clone(), session_id, nonce, service, outgoing_tx.clone());
                            sessions.spawn(task);
                            None
                        }
                        ControlMsg::Gateways { gateways } => {
                            remember_pool(config, dialer, &gateways);
                            None
                        }
                        ControlMsg::Goodbye { code, reason } => {
                            return Err(anyhow!("the SP ended the connection ({code}): {reason}"));
                        }
                        other => {
                            tracing::debug!("ignoring unexpected control message {other:?}");
                            None
                        }
                    },
                }
            }
            _ = tick.tick() => {
                if last_heard.elapsed() > dead_after {
                    return Err(anyhow!("no heartbeat from {endpoint} for {dead_after:?}"));
                }
                seq += 1;
                Some(ControlMsg::Ping { seq })
            }
        };
        if let Some(msg) = msg {
            tokio::time::timeout(dead_after, frame::write_frame(&mut writer, &msg))
                .await
                .map_err(|_| anyhow!("{endpoint} stopped reading"))??;
        }
    }
}

/// Steps 7 and 9 for one session.
async fn open_session(
    config: Arc<RedirectorConfig>,
    dialer: Arc<Dialer>,
    session_id: String,
    nonce: String,
    service: String,
    control: mpsc::Sender<ControlMsg>,
) {
    let reject = |code: ErrorCode, reason: String| {
        tracing::info!(tenant = %config.tenant, %service, "session refused: {reason}");
        let control = control.clone();
        let session_id = session_id.clone();
        async move {
            let _ = control
                .send(ControlMsg::Reject {
                    session_id,
                    code,
                    reason,
                })
                .await;
        }
    };
    if !config.allow_provider_access {
        return reject(
            ErrorCode::ProviderAccessDisabled,
            format!("tenant {} does not allow provider access", config.tenant),
        )
        .await;
    }
    let Some(target) = config.services.get(&service).cloned() else {
        return reject(
            ErrorCode::ServiceNotOffered,
            format!("tenant {} does not offer {service:?}", config.tenant),
        )
        .await;
    };
    // The local service and the data connection are set up at the same time.
    let local = async {
        match &target {
            ServiceTarget::Tcp(addr) => {
                let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                    .await
                    .map_err(|_| format!("{addr} did not answer"))?
                    .map_err(|e| format!("{addr}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                Ok::<_, String>(Some(tcp))
            }
            ServiceTarget::Local(_) => Ok(None),
        }
    };
    let data = async {
        let dialed = dialer.dial().await.map_err(|e| e.to_string())?;
        let mut stream = dialed.stream;
        let hello = Hello::new(Role::TenantData {
            tenant: config.tenant.clone(),
            session_id: session_id.clone(),
            nonce: nonce.clone(),
        });
        frame::write_frame(&mut stream, &hello)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(stream)
    };
    let (local, data) = tokio::join!(local, data);
    let local = match local {
        Ok(local) => local,
        Err(reason) => {
            return reject(
                ErrorCode::ServiceUnavailable,
                format!("local service {service} unreachable: {reason}"),
            )
            .await;
        }
    };
    let mut data = match data {
        Ok(data) => data,
        Err(reason) => {
            tracing::warn!(tenant = %config.tenant, "data connection failed: {reason}");
            return;
        }
    };
    match tokio::time::timeout(
        Duration::from_secs(15),
        frame::read_frame::<SessionMsg, _>(&mut data, MAX_FRAME_LEN),
    )
    .await
    {
        Ok(Ok(Some(SessionMsg::Ready { .. }))) => {}
        Ok(Ok(Some(SessionMsg::Error { message, .. }))) => {
            tracing::warn!(tenant = %config.tenant, "SP refused the data connection: {message}");
            return;
        }
        other => {
            tracing::warn!(tenant = %config.tenant, "no ready from the SP: {other:?}");
            return;
        }
    }
    tracing::debug!(tenant = %config.tenant, %service, %session_id, "session spliced");
    let never = CancellationToken::new();
    match (local, target) {
        (Some(tcp), _) => {
            splice(data, tcp, &Counters::default(), &never).await;
        }
        (None, ServiceTarget::Local(handler)) => handler(Box::new(data)).await,
        (None, ServiceTarget::Tcp(_)) => {}
    }
}

fn remember_pool(config: &RedirectorConfig, dialer: &Dialer, gateways: &[String]) {
    if gateways.is_empty() {
        return;
    }
    dialer.add_endpoints(gateways);
    if let Some(path) = &config.pool_file {
        let text = serde_json::to_string_pretty(gateways).unwrap_or_default();
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            tracing::warn!(
                "could not remember the gateway pool in {}: {e}",
                path.display()
            );
        }
    }
}

fn load_pool(path: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}
