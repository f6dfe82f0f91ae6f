//! The tenant redirector: keeps one control connection to the SP open (steps 2 and 3), and
//! for each `OpenData` checks the request against its allow-list and consent, opens a data
//! connection, and connects it to the local service once the SP says `ready` (steps 7 and 9).
//!
//! What the SP can make a tenant do is bounded here: at most `max_sessions` sessions at once
//! (further requests are rejected with `busy`), a local service is dialled only for a data
//! channel the SP has matched and made `ready`, a pushed gateway pool is used only if it is a
//! short list of plain `host:port` entries and forgotten entry by entry when unreachable for a
//! day ([`super::pushed_pool`]), and the tenant's consent can be withdrawn while it
//! runs ([`run_with_consent`]), which ends the sessions already open.
//!
//! Nothing is opened without the SP's grant for that very session (`grants.rs`), and every
//! session ends in an end-to-end channel with the console key the grant names: the SP sees
//! only ciphertext.

mod grants;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backoff::Backoff;
use super::dial::{Dialer, Route};
use super::pushed_pool::{FORGET_AFTER, PoolKeeper};
use super::splice::{Counted, Counters, SpliceEnd, Strict, splice};
use super::tls::e2e::{self, Identity};
use super::tls::{Stream, TlsClient, Trust};
use crate::metrics::{TenantSessionEnd, TenantSessionMetrics};
use crate::tenant::config::{DEFAULT_MAX_SESSIONS, TenantConfig};
use crate::wire::frame::{self, Connection, MAX_FRAME_LEN};
use crate::wire::protocol::{
    Beat, ControlMsg, ErrorCode, HeartbeatClock, Hello, HelloReply, Role, SessionMsg,
    escape_untrusted,
};
use grants::{GrantGate, SpView};

/// How long open sessions may run on after shutdown (SIGTERM) before they are cut.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The consent the redirector starts with ([`run_with_consent`] can change it later).
    pub allow_provider_access: bool,
    pub services: BTreeMap<String, ServiceTarget>,
    /// Sessions open at once; the SP's further requests get `reject` with `busy`.
    pub max_sessions: usize,
    /// False: dial only `endpoints`, never the gateway pool the SP pushes.
    pub follow_gateway_pool: bool,
    /// Where the SP's gateway pool is remembered between runs.
    pub pool_file: Option<PathBuf>,
    /// A pushed gateway that fails every dial this long is forgotten (a day).
    pub forget_gateway_after: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub healthy_after: Duration,
    /// At shutdown, open sessions may run this long to their end; then they are cut.
    pub drain_timeout: Duration,
    /// The tenant's key file (made on first start); `None`: `identity`, or a key in memory
    /// for this run (the lab).
    pub key_file: Option<PathBuf>,
    /// A key made by the caller, kept across runs in one process (tests that restart a
    /// tenant); used when there is no `key_file`.
    pub identity: Option<Arc<Identity>>,
    /// Where the SP's grant key is pinned on first sight; `None`: pinned for this run only.
    pub grant_pin_file: Option<PathBuf>,
    /// The tenant lock: when not empty, the only console keys a grant may name.
    pub operator_keys: Vec<[u8; 32]>,
    /// Where the sessions are counted (`/metrics` of `[admin]`).
    pub metrics: Arc<TenantSessionMetrics>,
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
            (None, Some(fp)) => Trust::Pinned(crate::wire::parse_fingerprint(fp)?),
            (None, None) => return Err(anyhow!("no ca_cert or ca_fingerprint")),
        };
        let pool_file = crate::tenant::config::beside(config_path, ".gateways.json");
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
            pool_file: Some(pool_file),
            max_sessions: config.max_sessions,
            follow_gateway_pool: config.follow_gateway_pool,
            key_file: config.key_file.clone(),
            grant_pin_file: Some(crate::tenant::config::beside(config_path, ".sp-grant-key")),
            operator_keys: config.operator_keys(),
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
            max_sessions: DEFAULT_MAX_SESSIONS,
            follow_gateway_pool: true,
            pool_file: None,
            forget_gateway_after: FORGET_AFTER,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            drain_timeout: DRAIN_TIMEOUT,
            key_file: None,
            identity: None,
            grant_pin_file: None,
            operator_keys: Vec::new(),
            metrics: Arc::new(TenantSessionMetrics::new()),
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
    let (_consent, consent_rx) = watch::channel(config.allow_provider_access);
    run_with_consent(config, shutdown, state, consent_rx).await
}

/// [`run_with_state`], with the tenant's consent to provider sessions following `consent`
/// (`rac tenant` re-reads its config file on SIGHUP and sends the new value). A change is
/// reported to the SP in a `status` frame at once; a withdrawal also ends every session
/// open now, and refuses new ones with `provider_access_disabled`.
pub async fn run_with_consent(
    config: RedirectorConfig,
    shutdown: CancellationToken,
    state: watch::Sender<AgentState>,
    consent: watch::Receiver<bool>,
) -> Result<()> {
    let tls = TlsClient::new(&config.trust, &config.server_name).context("setting up TLS")?;
    let identity = match (&config.key_file, &config.identity) {
        (Some(file), _) => Arc::new(Identity::load_or_create(file).context("the tenant's key")?),
        (None, Some(identity)) => identity.clone(),
        (None, None) => Arc::new(Identity::generate().context("the tenant's key")?),
    };
    tracing::info!(tenant = %config.tenant, key = %identity.fingerprint_text(), "tenant key");
    let keys = Arc::new(Keys {
        identity,
        gate: GrantGate::new(config.grant_pin_file.clone(), config.operator_keys.clone()),
    });
    let dialer = Dialer::new(&Route::Gateways(config.endpoints.clone()), tls);
    let pool = PoolKeeper::start(
        &config.tenant,
        config.follow_gateway_pool,
        config.pool_file.clone(),
        config.endpoints.clone(),
        config.forget_gateway_after,
        &dialer,
    );
    // Sessions are not cut at shutdown but at the end of the drain that follows it.
    let cut = CancellationToken::new();
    let sessions = Sessions {
        tracker: TaskTracker::new(),
        slots: Arc::new(Semaphore::new(config.max_sessions.max(1))),
        consent: consent.clone(),
        withdrawn: Arc::new(std::sync::Mutex::new(cut.child_token())),
        keys,
    };
    let config = Arc::new(config);
    let _watcher = super::AbortOnDrop(tokio::spawn(end_sessions_on_withdrawal(
        config.tenant.clone(),
        consent,
        sessions.withdrawn.clone(),
        cut.clone(),
    )));
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max);
    while !shutdown.is_cancelled() {
        state.send_replace(AgentState::Connecting);
        let started = Instant::now();
        let result =
            control_connection(&config, &dialer, &pool, &shutdown, &state, &sessions).await;
        let was_online = matches!(*state.borrow(), AgentState::Online { .. });
        pool.review(&dialer);
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= config.healthy_after {
            backoff.reset();
        }
        // Replaced by another redirector with this tenant's credentials: coming back at once
        // would replace it in turn, and the two would take the tenant's place from each other
        // in a loop. Wait the longest delay instead.
        let replaced = result
            .as_ref()
            .err()
            .is_some_and(|e| e.downcast_ref::<Replaced>().is_some());
        let retry_in = if replaced {
            config.backoff_max
        } else if was_online {
            backoff.after_lost_connection()
        } else {
            backoff.next_delay()
        };
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
    drain(&config, &sessions.tracker, &cut).await;
    state.send_replace(AgentState::Stopped);
    Ok(())
}

/// After shutdown: lets the open sessions run for up to `drain_timeout`, then cuts the rest
/// and waits for them to close.
async fn drain(config: &RedirectorConfig, tracker: &TaskTracker, cut: &CancellationToken) {
    tracker.close();
    if tracker.is_empty() {
        return;
    }
    tracing::info!(tenant = %config.tenant, open = tracker.len(), drain_timeout = ?config.drain_timeout, "draining the open sessions");
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(tenant = %config.tenant, open = tracker.len(), "drain timeout passed; ending the remaining sessions");
        cut.cancel();
        tracker.wait().await;
    }
}

/// The sessions of one redirector, across its control connections.
struct Sessions {
    tracker: TaskTracker,
    /// One permit per session open at once (`max_sessions`).
    slots: Arc<Semaphore>,
    /// The tenant's consent now.
    consent: watch::Receiver<bool>,
    /// Cancelled (and replaced by a fresh token) when consent is withdrawn: every session
    /// holds the token that was current when it started. Each is a child of the drain's
    /// cut, so the end of a drain cancels them all.
    withdrawn: Arc<std::sync::Mutex<CancellationToken>>,
    keys: Arc<Keys>,
}

/// The tenant's own key and its checks of the SP's grants.
struct Keys {
    identity: Arc<Identity>,
    gate: GrantGate,
}

impl Sessions {
    /// The token a starting session ends on. Taken *before* the session looks at the
    /// consent, so a withdrawal between the two is never missed: either the session sees
    /// the withdrawn consent, or its token is the one the withdrawal cancels.
    fn withdrawal_token(&self) -> CancellationToken {
        crate::util::lock(&self.withdrawn).clone()
    }
}

/// Ends the open sessions each time consent goes from given to withdrawn, whether or not a
/// control connection is up at that moment.
async fn end_sessions_on_withdrawal(
    tenant: String,
    mut consent: watch::Receiver<bool>,
    withdrawn: Arc<std::sync::Mutex<CancellationToken>>,
    cut: CancellationToken,
) {
    let mut allowed = *consent.borrow_and_update();
    while consent.changed().await.is_ok() {
        let now = *consent.borrow_and_update();
        if allowed && !now {
            let mut current = crate::util::lock(&withdrawn);
            current.cancel();
            *current = cut.child_token();
            tracing::info!(%tenant, "provider access withdrawn: open sessions ended");
        } else if !allowed && now {
            tracing::info!(%tenant, "provider access granted again");
        }
        allowed = now;
    }
}

/// The SP ended the control connection because a newer one with this tenant's credentials
/// took its place (`goodbye` with `replaced`).
#[derive(Debug, thiserror::Error)]
#[error(
    "{endpoint}: {reason} (another redirector runs with this tenant's credentials; \
     this one waits the longest backoff before it tries again)"
)]
struct Replaced {
    endpoint: String,
    /// The SP's words, "replaced by a connection from ADDR", escaped.
    reason: String,
}

/// One control connection, from dial to its end.
async fn control_connection(
    config: &Arc<RedirectorConfig>,
    dialer: &Arc<Dialer>,
    pool: &PoolKeeper,
    shutdown: &CancellationToken,
    state: &watch::Sender<AgentState>,
    sessions: &Sessions,
) -> Result<()> {
    let dialed = dialer.dial().await?;
    pool.review(dialer);
    let endpoint = dialed.endpoint.clone();
    let mut conn = Connection::new(dialed.stream, MAX_FRAME_LEN);
    let mut consent = sessions.consent.clone();
    let hello = Hello::new(Role::TenantControl {
        tenant: config.tenant.clone(),
        secret: config.secret.clone(),
        agent: format!("rac-tenant/{}", crate::VERSION),
        services: config.services.keys().cloned().collect(),
        provider_access: *consent.borrow_and_update(),
        tenant_key: sessions.keys.identity.fingerprint_text(),
        early_client_hello: true,
    });
    conn.send(&hello).await?;
    let reply = tokio::time::timeout(Duration::from_secs(15), conn.next::<HelloReply>())
        .await
        .map_err(|_| anyhow!("{endpoint}: no answer to hello"))??
        .ok_or_else(|| anyhow!("{endpoint}: closed before answering hello"))?;
    let welcome = match reply {
        HelloReply::Welcome(w) => w,
        HelloReply::Error(e) => {
            return Err(anyhow!("{endpoint} refused the tenant: {}", e.message));
        }
    };
    pool.pushed(dialer, &welcome.gateways);
    let sp = sessions
        .keys
        .gate
        .welcome(welcome.grant_key.as_deref(), welcome.now);
    tracing::info!(tenant = %config.tenant, %endpoint, "connected to the SP");
    state.send_replace(AgentState::Online {
        endpoint: endpoint.clone(),
    });

    let heartbeat = Duration::from_secs(welcome.heartbeat_secs.max(1));
    let dead_after = Duration::from_secs(welcome.dead_after_secs.max(welcome.heartbeat_secs + 1));
    // Session tasks report refusals through this channel; the loop writes them.
    let (outgoing_tx, mut outgoing) = mpsc::channel::<ControlMsg>(64);
    // One timer for the pings and the dead-SP deadline (see HeartbeatClock).
    let mut clock = HeartbeatClock::new(Instant::now(), heartbeat, dead_after);
    let wake = tokio::time::sleep_until(clock.next_wake().into());
    tokio::pin!(wake);
    let mut seq = 0;
    // The last ping's number and when it went, and the round trip of the last one answered:
    // told to the SP with the next ping (so it need not ping to measure it).
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut rtt_us: Option<u64> = None;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = outgoing.recv() => msg,
            Ok(()) = consent.changed() => {
                let provider_access = *consent.borrow_and_update();
                tracing::info!(tenant = %config.tenant, provider_access, "reporting the new consent to the SP");
                Some(ControlMsg::Status {
                    services: config.services.keys().cloned().collect(),
                    provider_access,
                })
            }
            item = conn.next::<ControlMsg>() => {
                clock.heard(Instant::now());
                match item {
                    Ok(None) => return Err(anyhow!("{endpoint} closed the control connection")),
                    Err(e) if e.is_connection_lost() => return Err(anyhow!("lost the control connection to {endpoint}: {e}")),
                    Err(e) => return Err(anyhow!("bad frame from {endpoint}: {e}")),
                    Ok(Some(msg)) => match msg {
                        ControlMsg::Ping { seq, .. } => Some(ControlMsg::Pong { seq }),
                        ControlMsg::Pong { seq } => {
                            if let Some((sent, at)) = ping_sent && sent == seq {
                                rtt_us = Some(at.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
                                ping_sent = None;
                            }
                            None
                        }
                        ControlMsg::OpenData { session_id, nonce, service, grant, client_hello } => {
                            let request = Request { session_id, nonce, service, grant, client_hello };
                            start_session(config, dialer, sessions, &sp, request, &outgoing_tx)
                        }
                        ControlMsg::Gateways { gateways } => {
                            pool.pushed(dialer, &gateways);
                            None
                        }
                        ControlMsg::Goodbye { code: ErrorCode::Replaced, reason } => {
                            let reason = escape_untrusted(&reason, 200);
                            return Err(Replaced { endpoint, reason }.into());
                        }
                        ControlMsg::Goodbye { code, reason } => {
                            let reason = escape_untrusted(&reason, 200);
                            return Err(anyhow!("the SP ended the connection ({code}): {reason}"));
                        }
                        other => {
                            tracing::debug!("ignoring unexpected control message {other:?}");
                            None
                        }
                    },
                }
            }
            () = &mut wake => {
                let beat = clock.wake(Instant::now());
                wake.as_mut().reset(clock.next_wake().into());
                match beat {
                    Beat::Dead => {
                        dialer.went_silent(&endpoint);
                        return Err(anyhow!("no heartbeat from {endpoint} for {dead_after:?}"));
                    }
                    Beat::Tick => {
                        seq += 1;
                        ping_sent = Some((seq, Instant::now()));
                        Some(ControlMsg::Ping { seq, rtt_us })
                    }
                    Beat::Nothing => None,
                }
            }
        };
        if let Some(msg) = msg {
            let sent = tokio::time::timeout(dead_after, conn.send(&msg)).await;
            let Ok(sent) = sent else {
                dialer.went_silent(&endpoint);
                return Err(anyhow!("{endpoint} stopped reading"));
            };
            sent?;
        }
    }
}

/// One `open_data` as it arrived.
struct Request {
    session_id: String,
    nonce: String,
    service: String,
    grant: crate::wire::protocol::Grant,
    client_hello: Option<String>,
}

/// Checks the request's grant, then starts one session's task; answers `grant_refused` at
/// once for a grant that fails a check, and `busy` when `max_sessions` are open.
fn start_session(
    config: &Arc<RedirectorConfig>,
    dialer: &Arc<Dialer>,
    sessions: &Sessions,
    sp: &SpView,
    request: Request,
    control: &mpsc::Sender<ControlMsg>,
) -> Option<ControlMsg> {
    let Request {
        session_id,
        nonce,
        service,
        grant,
        client_hello,
    } = request;
    let accepted = match sessions
        .keys
        .gate
        .check(sp, &grant, &config.tenant, &service, &session_id)
    {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::warn!(tenant = %config.tenant, service = ?service, "session refused: {e}");
            config.metrics.session_end(TenantSessionEnd::Refused);
            return Some(ControlMsg::Reject {
                session_id,
                code: ErrorCode::GrantRefused,
                reason: format!("tenant {} refused the grant: {e}", config.tenant),
            });
        }
    };
    tracing::info!(tenant = %config.tenant, service = ?service, operator = ?accepted.body.operator, console_key = %crate::wire::format_fingerprint(&accepted.console_key), "session granted");
    let Ok(slot) = sessions.slots.clone().try_acquire_owned() else {
        tracing::warn!(tenant = %config.tenant, service = ?service, max_sessions = config.max_sessions, "session refused: at the session cap");
        config.metrics.session_end(TenantSessionEnd::Refused);
        return Some(ControlMsg::Reject {
            session_id,
            code: ErrorCode::Busy,
            reason: format!(
                "the tenant redirector of {} is at its session cap ({} sessions open); try again later",
                config.tenant, config.max_sessions
            ),
        });
    };
    let withdrawn = sessions.withdrawal_token();
    let consent = *sessions.consent.borrow();
    let request = SessionRequest {
        session_id,
        nonce,
        service,
        consent,
        withdrawn,
        console_key: accepted.console_key,
        client_hello,
    };
    let task = open_session(
        config.clone(),
        dialer.clone(),
        sessions.keys.clone(),
        request,
        control.clone(),
    );
    sessions.tracker.spawn(async move {
        task.await;
        drop(slot);
    });
    None
}

/// One `open_data` request, with the consent seen when it arrived.
struct SessionRequest {
    session_id: String,
    nonce: String,
    service: String,
    consent: bool,
    /// Cancelled when consent is withdrawn while the session runs, or at the drain's end.
    withdrawn: CancellationToken,
    /// The one console key the grant allows at the other end.
    console_key: [u8; 32],
    /// The console's ClientHello, when it came ahead in `open_data` (hex).
    client_hello: Option<String>,
}

/// Steps 7 and 9 for one session: the checks, the data channel, `ready`, and only then the
/// local service. A local service that cannot be reached by then ends the session (the SP
/// has already spliced it, so a `reject` would come too late).
async fn open_session(
    config: Arc<RedirectorConfig>,
    dialer: Arc<Dialer>,
    keys: Arc<Keys>,
    request: SessionRequest,
    control: mpsc::Sender<ControlMsg>,
) {
    let SessionRequest {
        session_id,
        nonce,
        service,
        consent,
        withdrawn,
        console_key,
        client_hello,
    } = request;
    let mut tally = Tally::new(&config.metrics, &withdrawn);
    let reject = |code: ErrorCode, reason: String| {
        tracing::info!(tenant = %config.tenant, service = ?service, "session refused: {reason}");
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
    if !consent || withdrawn.is_cancelled() {
        tally.end = TenantSessionEnd::Refused;
        return reject(
            ErrorCode::ProviderAccessDisabled,
            format!("tenant {} does not allow provider access", config.tenant),
        )
        .await;
    }
    let Some(target) = config.services.get(&service).cloned() else {
        tally.end = TenantSessionEnd::Refused;
        return reject(
            ErrorCode::ServiceNotOffered,
            format!("tenant {} does not offer {service:?}", config.tenant),
        )
        .await;
    };
    let client_hello = match client_hello.map(hex::decode).transpose() {
        Ok(hello) => hello,
        Err(_) => {
            tally.end = TenantSessionEnd::Refused;
            return reject(
                ErrorCode::GrantRefused,
                format!(
                    "tenant {}: the ClientHello in open_data is not hex",
                    config.tenant
                ),
            )
            .await;
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
    // A ClientHello that came ahead is answered (a key exchange and a signature) on another
    // task while this one opens the data connection; the answer follows the hello.
    let identity = keys.identity.clone();
    let answer = client_hello.map(|hello| {
        tokio::spawn(async move { e2e::Answering::start(&identity, console_key, &hello) })
    });
    let data = tokio::select! {
        data = data => data,
        _ = withdrawn.cancelled() => return,
    };
    let answering = match answer {
        None => None,
        Some(task) => match task.await {
            Ok(Ok(answering)) => Some(answering),
            Ok(Err(e)) => {
                tracing::warn!(tenant = %config.tenant, service = ?service, "session refused: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(tenant = %config.tenant, service = ?service, "answering the ClientHello: {e}");
                return;
            }
        },
    };
    let mut data = match data {
        Ok(data) => data,
        Err(reason) => {
            tracing::warn!(tenant = %config.tenant, "data connection failed: {reason}");
            return;
        }
    };
    if let Some(answering) = &answering {
        // Raw bytes behind the hello's record: the SP reads nothing here before `ready`, and
        // passes them to the console right after it.
        let raw = &mut data.get_mut().0;
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(raw, answering.flight()).await {
            tracing::warn!(tenant = %config.tenant, "data connection failed: {e}");
            return;
        }
    }
    let ready = tokio::select! {
        ready = tokio::time::timeout(
            Duration::from_secs(15),
            frame::read_frame::<SessionMsg, _>(&mut data, MAX_FRAME_LEN),
        ) => ready,
        _ = withdrawn.cancelled() => return,
    };
    match ready {
        Ok(Ok(Some(SessionMsg::Ready { .. }))) => {}
        Ok(Ok(Some(SessionMsg::Error { message, .. }))) => {
            tracing::warn!(tenant = %config.tenant, "SP refused the data connection: {message:?}");
            return;
        }
        other => {
            tracing::warn!(tenant = %config.tenant, "no ready from the SP: {other:?}");
            return;
        }
    }
    // The SP's TLS ends with `ready`; the console's end-to-end handshake follows.
    let inner = async {
        let raw = e2e::leave_client(data)?;
        match answering {
            Some(answering) => answering.finish(raw).await,
            None => e2e::accept(raw, &keys.identity, console_key).await,
        }
    };
    let data = tokio::select! {
        inner = tokio::time::timeout(Duration::from_secs(15), inner) => match inner {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(tenant = %config.tenant, service = ?service, "session refused: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(tenant = %config.tenant, service = ?service, "the console did not complete the end-to-end handshake");
                return;
            }
        },
        _ = withdrawn.cancelled() => return,
    };
    tracing::debug!(tenant = %config.tenant, service = ?service, session_id = ?session_id, "session spliced end to end");
    match target {
        ServiceTarget::Tcp(addr) => {
            let tcp = tokio::select! {
                tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr)) => tcp,
                _ = withdrawn.cancelled() => return,
            };
            let tcp = match tcp {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    tracing::warn!(tenant = %config.tenant, service = ?service, "local service {addr} unreachable: {e}; ending the session");
                    return;
                }
                Err(_) => {
                    tracing::warn!(tenant = %config.tenant, service = ?service, "local service {addr} did not answer; ending the session");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            tally.relaying();
            let report = splice(Strict(data), tcp, &Counters::default(), &withdrawn).await;
            tally.end = match report.end {
                SpliceEnd::Closed | SpliceEnd::ClosedWithoutNotify { .. } => {
                    TenantSessionEnd::Closed
                }
                SpliceEnd::Failed { .. } => TenantSessionEnd::Cut,
                SpliceEnd::Cancelled => TenantSessionEnd::Withdrawn,
            };
            tally.bytes = (report.a_to_b, report.b_to_a);
        }
        ServiceTarget::Local(handler) => {
            let counters = Counters::default();
            let data = Counted::both(data, counters.a_to_b.clone(), counters.b_to_a.clone());
            tally.relaying();
            tally.end = tokio::select! {
                // The service ends the session however its stream ended.
                _ = handler(Box::new(data)) => TenantSessionEnd::Closed,
                _ = withdrawn.cancelled() => TenantSessionEnd::Withdrawn,
            };
            tally.bytes = (
                counters.a_to_b.load(std::sync::atomic::Ordering::Relaxed),
                counters.b_to_a.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }
}

/// One session in the redirector's metrics, counted when it is dropped however
/// [`open_session`] returns: `failed` unless it says otherwise (`withdrawn` when consent
/// was withdrawn or the drain ran out first), active while it relays.
struct Tally<'a> {
    metrics: &'a TenantSessionMetrics,
    withdrawn: &'a CancellationToken,
    end: TenantSessionEnd,
    /// Console to local service, and back.
    bytes: (u64, u64),
    relaying: bool,
}

impl<'a> Tally<'a> {
    fn new(metrics: &'a TenantSessionMetrics, withdrawn: &'a CancellationToken) -> Self {
        Tally {
            metrics,
            withdrawn,
            end: TenantSessionEnd::Failed,
            bytes: (0, 0),
            relaying: false,
        }
    }

    fn relaying(&mut self) {
        self.metrics.sessions_active.inc();
        self.relaying = true;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.relaying {
            self.metrics.sessions_active.dec();
        }
        let end = match self.end {
            TenantSessionEnd::Failed if self.withdrawn.is_cancelled() => {
                TenantSessionEnd::Withdrawn
            }
            end => end,
        };
        self.metrics.session_end(end);
        self.metrics.relayed(self.bytes.0, self.bytes.1);
    }
}
