//! The SP backup service: operator and tenant accounts, who is connected, the audit log, and
//! the rules that decide whether a console may open a tenant. It knows no sockets:
//! `net::cloud_redirector` hosts it on the wire.

pub mod admin;
pub mod auth;
pub mod config;
pub mod pki;
pub mod presence;
pub mod registry;
pub mod sessions;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::metrics::{Shed, SpMetrics};
use crate::wire::protocol::{ErrorCode, GRANT_MAX_SECS, Grant, GrantBody, GrantKey};
use config::{SpConfig, StateDir};
use presence::{Kick, Presence};
use registry::{Operator, Registry, TokenCheck};

/// A refusal with its stable code and words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
    fn plain(code: ErrorCode) -> Self {
        Refusal::new(code, code.describe())
    }
}

/// The SP backup service of one node.
pub struct SpService {
    pub config: SpConfig,
    pub registry: Registry,
    pub presence: Presence,
    limiter: auth::LoginLimiter,
    /// Password checks running at once (Argon2id is slow and takes 19 MiB each).
    checker: Arc<auth::PasswordChecker>,
    seen_data_version: AtomicI64,
    /// `sp.toml`, re-read while running for its gateway pool.
    config_path: Option<std::path::PathBuf>,
    config_text: std::sync::Mutex<String>,
    gateways: std::sync::RwLock<Vec<String>>,
    /// Signs every session's grant (`grant.key` in the state dir).
    grant_key: GrantKey,
    /// Tenant keys seen for the first time, not yet in the registry: written in one
    /// transaction by [`flush_tenant_keys`](Self::flush_tenant_keys), so a first start of
    /// 15,000 tenants is not 15,000 synced commits.
    new_tenant_keys: std::sync::Mutex<Vec<(String, String)>>,
    /// Connections from each trusted gateway since the start.
    gateways_seen: std::sync::Mutex<std::collections::HashMap<IpAddr, GatewaySeen>>,
    /// This node's metrics (`/metrics` on the admin listener).
    pub metrics: Arc<SpMetrics>,
    /// The sessions being relayed now.
    pub sessions: sessions::SessionTable,
    /// When this service started (Unix seconds).
    pub started_at: u64,
    /// Set while the SP port accepts connections.
    serving: AtomicBool,
    /// Set once the SP began to shut down.
    draining: AtomicBool,
    /// Cancelled to ask the SP to stop (a signal, or `POST /v1/node/drain`): `rac sp run`
    /// hands it to the SP port's loop, which then drains and returns.
    stop_request: tokio_util::sync::CancellationToken,
    /// Why this cluster node cannot trust its view of the cluster now (its bus is down):
    /// it refuses new sessions and `/readyz` says so. `None` on a single SP.
    bus_problem: std::sync::Mutex<Option<String>>,
    /// Notified to re-read `sp.toml` at once (see [`request_reload`](Self::request_reload)).
    reload_request: tokio::sync::Notify,
}

/// What re-reading `sp.toml` came to ([`SpService::reload_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigReload {
    /// Its text is as last read (or this SP has no `sp.toml`): nothing to do.
    Unchanged,
    /// The file does not load or is not valid, in these words: the running settings stay.
    Refused(String),
    /// The file loads. `gateways`: the new pool, now handed out, when it changed;
    /// `at_restart`: the other settings that differ from the running ones, by key, which
    /// apply at the next start.
    Loaded {
        gateways: Option<Vec<String>>,
        at_restart: Vec<String>,
    },
}

/// The top-level keys (sections as one key) whose values differ between `running` and
/// `loaded`, but for the gateway pool, which applies while running.
fn changed_keys(running: &SpConfig, loaded: &SpConfig) -> Vec<String> {
    let table = |config: &SpConfig| match toml::Value::try_from(config) {
        Ok(toml::Value::Table(table)) => table,
        // Settings always serialize as a table; were they not, no key reads as changed.
        _ => toml::Table::new(),
    };
    let (running, loaded) = (table(running), table(loaded));
    let mut keys: Vec<String> = running
        .keys()
        .chain(loaded.keys())
        .filter(|key| *key != "gateways" && running.get(*key) != loaded.get(*key))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// What the SP has seen of one trusted gateway since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewaySeen {
    /// Connections accepted from it.
    pub connections: u64,
    /// When the last one came (Unix seconds; 0: none yet).
    pub last_seen: u64,
}

/// A session the SP allows (step 5): who asks, and the console key its grant will name.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub operator: Operator,
    pub console_key: String,
}

/// What `rac sp init` made.
pub struct InitResult {
    pub operator: String,
    pub password: String,
    pub ca_cert: std::path::PathBuf,
    pub ca_fingerprint: String,
}

/// Creates a new state dir: CA, server certificate, registry and one operator. With
/// `cluster`, the registry is that PostgreSQL database (its schema made now, which must hold
/// no operator yet) and `sp.toml` gets the `[cluster]` section; further nodes get a copy of
/// this state dir, not an init of their own (docs/CLUSTER.md).
pub fn init_state_dir(
    state: &StateDir,
    operator: &str,
    extra_sans: &[String],
    cluster: Option<config::ClusterConfig>,
) -> Result<InitResult> {
    if state.registry().exists() || state.ca_cert().exists() {
        anyhow::bail!(
            "{} already holds an SP (found {}); refusing to overwrite it",
            state.root.display(),
            if state.registry().exists() {
                "registry.sqlite"
            } else {
                "ca.pem"
            }
        );
    }
    crate::wire::validate_name(operator)?;
    // The database first: a wrong URL or password leaves no half-made state dir behind.
    let shared = match &cluster {
        Some(cluster) => {
            let config = SpConfig {
                cluster: Some(cluster.clone()),
                ..SpConfig::default()
            };
            config.validate()?;
            let target = cluster.postgres_target()?;
            let place = target.describe();
            let registry = Registry::open_postgres(target)
                .with_context(|| format!("opening the registry in {place}"))?;
            if let Some(first) = registry.operators()?.first() {
                anyhow::bail!(
                    "{place} already holds a registry (operator {:?}): to add a node, copy \
                     the first node's state dir and give it its own [cluster] node name \
                     (docs/CLUSTER.md)",
                    first.name
                );
            }
            Some((registry, config))
        }
        None => None,
    };
    state.create_private()?;
    let certs = pki::generate(extra_sans)?;
    std::fs::write(state.ca_cert(), &certs.ca_cert_pem)
        .with_context(|| format!("writing {}", state.ca_cert().display()))?;
    pki::write_private(&state.ca_key(), &certs.ca_key_pem)?;
    std::fs::write(
        state.server_chain(),
        format!("{}{}", certs.server_cert_pem, certs.ca_cert_pem),
    )
    .with_context(|| format!("writing {}", state.server_chain().display()))?;
    pki::write_private(&state.server_key(), &certs.server_key_pem)?;
    let registry = match shared {
        Some((registry, config)) => {
            let text = format!(
                "# This SP is one node of a cluster sharing its registry in PostgreSQL \
                 (docs/CLUSTER.md).\n{}",
                toml::to_string(&config).context("writing sp.toml")?
            );
            crate::util::files::write_private(&state.config(), text.as_bytes())?;
            registry
        }
        None => Registry::open(&state.registry()).context("creating the registry")?,
    };
    load_or_create_grant_key(&state.grant_key())?;
    let password = auth::random_hex_16();
    registry.add_operator(operator, &password, "*")?;
    let ca_fingerprint = certs.ca_fingerprint.clone();
    Ok(InitResult {
        operator: operator.to_string(),
        password,
        ca_cert: state.ca_cert(),
        ca_fingerprint,
    })
}

/// The registry a state dir's `sp.toml` names: PostgreSQL for a cluster node (`[cluster]`),
/// else `registry.sqlite` in the state dir.
pub fn open_registry(state: &StateDir, config: &SpConfig) -> Result<Registry> {
    match &config.cluster {
        Some(cluster) => {
            let target = cluster.postgres_target()?;
            let place = target.describe();
            Registry::open_postgres(target)
                .with_context(|| format!("opening the registry in {place}"))
        }
        None => {
            if !state.registry().exists() {
                anyhow::bail!(
                    "{} has no registry.sqlite and its sp.toml has no [cluster]: \
                     not an SP state dir (run `rac sp init --state-dir {}` first)",
                    state.root.display(),
                    state.root.display()
                );
            }
            Registry::open(&state.registry())
                .with_context(|| format!("opening {}", state.registry().display()))
        }
    }
}

/// The SP's grant key from `path`, or a new one written there (0600): a state dir made
/// before grants existed gets its key on its first start after the upgrade.
fn load_or_create_grant_key(path: &std::path::Path) -> Result<GrantKey> {
    match std::fs::read(path) {
        Ok(der) => {
            GrantKey::from_pkcs8(&der).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = GrantKey::generate()?;
            pki::write_private_bytes(path, key.to_pkcs8())?;
            tracing::info!(path = %path.display(), "made the SP's grant-signing key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl SpService {
    /// Opens the service on an initialized state dir.
    pub fn open(state: &StateDir) -> Result<Arc<Self>> {
        state.ensure_initialized()?;
        let config = SpConfig::load(&state.config())?;
        let registry = open_registry(state, &config)?;
        tracing::info!(registry = %registry.location(), "registry open");
        let text = std::fs::read_to_string(state.config()).unwrap_or_default();
        let grant_key = load_or_create_grant_key(&state.grant_key())?;
        let mut service = Self::build(config, registry, grant_key)?;
        service.config_path = Some(state.config());
        service.config_text = std::sync::Mutex::new(text);
        Ok(Arc::new(service))
    }

    /// A service on an open registry with settings given in code (the lab, tests).
    /// Its grant key lives in memory only.
    pub fn with_registry(config: SpConfig, registry: Registry) -> Result<Arc<Self>> {
        Ok(Arc::new(Self::build(
            config,
            registry,
            GrantKey::generate()?,
        )?))
    }

    fn build(config: SpConfig, registry: Registry, grant_key: GrantKey) -> Result<Self> {
        config.validate()?;
        // On a shared registry the open rows may be other nodes' live sessions.
        let interrupted = match &config.cluster {
            None => registry.close_interrupted_sessions()?,
            // Only the rows this node left open: the others may be other nodes' live
            // sessions.
            Some(cluster) => {
                registry.set_node(&cluster.node);
                registry.close_interrupted_sessions_of(&cluster.node)?
            }
        };
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "closed audit entries left open by an earlier run"
            );
        }
        let presence = Presence::new(registry.tenants()?);
        let seen = registry.data_version()?;
        let metrics = Arc::new(SpMetrics::new());
        registry.observe_writes(metrics.registry_write_seconds.clone());
        Ok(SpService {
            limiter: auth::LoginLimiter::new(
                config.login_max_failures,
                Duration::from_secs(config.login_window_secs),
            ),
            checker: auth::PasswordChecker::new(auth::default_concurrent_checks()),
            gateways: std::sync::RwLock::new(config.gateways.clone()),
            config,
            registry,
            presence,
            seen_data_version: AtomicI64::new(seen),
            config_path: None,
            config_text: std::sync::Mutex::new(String::new()),
            grant_key,
            new_tenant_keys: std::sync::Mutex::new(Vec::new()),
            gateways_seen: std::sync::Mutex::default(),
            metrics,
            sessions: sessions::SessionTable::default(),
            started_at: crate::util::now_unix_secs(),
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stop_request: tokio_util::sync::CancellationToken::new(),
            bus_problem: std::sync::Mutex::new(None),
            reload_request: tokio::sync::Notify::new(),
        })
    }

    /// The SP port accepts connections (`true`) or no longer does.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// The SP began to shut down: it takes no new connections and lets sessions end.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Asks the SP to drain and stop, as SIGTERM does. `/readyz` says "draining" from here.
    pub fn request_stop(&self) {
        self.set_draining();
        self.stop_request.cancel();
    }

    /// Cancelled once a stop is asked for (see [`request_stop`](Self::request_stop)).
    pub fn stop_requested(&self) -> tokio_util::sync::CancellationToken {
        self.stop_request.clone()
    }

    /// Records whether the cluster bus works (`None`: it does, or there is no cluster).
    pub fn set_bus_problem(&self, problem: Option<String>) {
        let mut current = crate::util::lock(&self.bus_problem);
        if *current != problem {
            match &problem {
                Some(p) => tracing::warn!("cluster bus not usable, refusing new sessions: {p}"),
                None => tracing::info!("cluster bus usable again"),
            }
            *current = problem;
        }
    }

    /// Why the cluster bus cannot be used now, if it cannot.
    pub fn bus_problem(&self) -> Option<String> {
        crate::util::lock(&self.bus_problem).clone()
    }

    /// The grant key's public half, hex, as tenants pin it.
    pub fn grant_public_key(&self) -> String {
        self.grant_key.public_hex()
    }

    /// Signs the grant for one session, valid for [`GRANT_MAX_SECS`].
    pub fn grant(&self, session_id: &str, tenant: &str, service: &str, who: &Authorized) -> Grant {
        self.grant_key.sign(&GrantBody {
            session_id: session_id.to_string(),
            tenant: tenant.to_string(),
            service: service.to_string(),
            operator: who.operator.name.clone(),
            console_key: who.console_key.clone(),
            expires: crate::util::now_unix_secs() + GRANT_MAX_SECS,
        })
    }

    /// Writes the tenant keys seen for the first time since the last call (the registry
    /// poll calls it). A failed write keeps them for the next call.
    pub fn flush_tenant_keys(&self) -> Result<usize> {
        let keys = std::mem::take(&mut *crate::util::lock(&self.new_tenant_keys));
        if keys.is_empty() {
            return Ok(0);
        }
        match self.registry.record_tenant_keys(&keys) {
            Ok(n) => {
                tracing::info!(recorded = n, "recorded first-seen tenant keys");
                Ok(n)
            }
            Err(e) => {
                crate::util::lock(&self.new_tenant_keys).extend(keys);
                Err(e.into())
            }
        }
    }

    /// The cloud gateway pool handed to tenants now.
    pub fn gateways(&self) -> Vec<String> {
        self.gateways
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads `sp.toml` and applies what applies while running: the gateway pool. Other
    /// settings take effect at the next start (they are named in the log). A file that does
    /// not load is reported and ignored: the running settings stay. The registry poll calls
    /// this with `asked` false (then a file whose text did not change is not parsed again);
    /// a reload request ([`request_reload`](Self::request_reload), SIGHUP) with `asked` true,
    /// which re-reads the file whatever its text and logs what came of it.
    pub fn reload_config(&self, asked: bool) -> ConfigReload {
        let Some(path) = self.config_path.as_ref() else {
            if asked {
                tracing::info!("reload: this SP has no sp.toml to re-read");
            }
            return ConfigReload::Unchanged;
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        {
            let mut seen = crate::util::lock(&self.config_text);
            if *seen == text && !asked {
                return ConfigReload::Unchanged;
            }
            *seen = text;
        }
        let config = match SpConfig::load(path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(
                    "reload: keeping the running settings, {} is refused: {e:#}",
                    path.display()
                );
                return ConfigReload::Refused(format!("{e:#}"));
            }
        };
        let at_restart = changed_keys(&self.config, &config);
        if !at_restart.is_empty() {
            tracing::warn!(
                "reload: {} changed in {}: applies at the next start (systemctl restart rac-sp)",
                at_restart.join(", "),
                path.display()
            );
        }
        let gateways = {
            let mut gateways = self.gateways.write().unwrap_or_else(|p| p.into_inner());
            (*gateways != config.gateways).then(|| {
                *gateways = config.gateways.clone();
                config.gateways
            })
        };
        match &gateways {
            Some(pool) => tracing::info!(gateways = ?pool, "reload: gateway pool changed"),
            None if asked => tracing::info!(
                "reload: re-read {}; the gateway pool is unchanged",
                path.display()
            ),
            None => {}
        }
        ConfigReload::Loaded {
            gateways,
            at_restart,
        }
    }

    /// Asks the SP port's loop to re-read `sp.toml` now (SIGHUP), as it does at each
    /// registry poll when the file changed.
    pub fn request_reload(&self) {
        self.reload_request.notify_one();
    }

    /// Completes at the next [`request_reload`](Self::request_reload) (one made while nobody
    /// waited is kept for the next wait).
    pub async fn reload_requested(&self) {
        self.reload_request.notified().await;
    }

    /// Checks a tenant's control-connection credentials.
    pub fn authenticate_tenant(&self, tenant: &str, secret: &str) -> Result<(), Refusal> {
        check_tenant(self.presence.account(tenant).as_ref(), secret)
    }

    /// A control connection's admission, in the metrics ([`admit_tenant`](Self::admit_tenant)
    /// counts its own; the caller counts a refusal of
    /// [`authenticate_tenant`](Self::authenticate_tenant)).
    pub fn count_control(&self, result: Result<(), &Refusal>) {
        use crate::metrics::ControlResult;
        self.metrics.control(match result {
            Ok(()) => ControlResult::Admitted,
            Err(r) => match r.code {
                ErrorCode::AuthFailed => ControlResult::AuthFailed,
                ErrorCode::TenantDisabled => ControlResult::TenantDisabled,
                ErrorCode::TenantKeyChanged => ControlResult::TenantKeyChanged,
                _ => ControlResult::Other,
            },
        });
    }

    /// Notes a connection accepted from a trusted gateway (`/v1/gateways`).
    pub fn note_gateway(&self, gateway: IpAddr) {
        let mut seen = crate::util::lock(&self.gateways_seen);
        let entry = seen.entry(gateway).or_default();
        entry.connections += 1;
        entry.last_seen = crate::util::now_unix_secs();
    }

    /// The trusted gateways, with what this SP has seen of each since it started.
    pub fn gateways_seen(&self) -> Vec<(IpAddr, GatewaySeen)> {
        let seen = crate::util::lock(&self.gateways_seen);
        self.config
            .trusted_proxies
            .iter()
            .map(|ip| (*ip, seen.get(ip).cloned().unwrap_or_default()))
            .collect()
    }

    /// Admits a tenant's control connection: checks its secret and enabled flag again,
    /// against the account as it is at this moment, and marks it online in the same step
    /// ([`Presence::connect_checked`]), so a `rotate-secret` or `disable` that lands after
    /// [`authenticate_tenant`](Self::authenticate_tenant) is never missed. Refuses with the
    /// same codes as `authenticate_tenant`. Returns the connection's id.
    ///
    /// The tenant's key is checked in the same step: the first key a tenant presents is
    /// recorded (in memory at once, in the registry at the next
    /// [`flush_tenant_keys`](Self::flush_tenant_keys)); another key afterwards is refused
    /// with `tenant_key_changed` until an admin runs `rac sp tenant reset-key`.
    pub fn admit_tenant(
        &self,
        tenant: &str,
        secret: &str,
        tenant_key: &str,
        live: presence::Live,
    ) -> Result<u64, Refusal> {
        let key = crate::wire::parse_fingerprint(tenant_key)
            .map(|fp| crate::wire::format_fingerprint(&fp))
            .map_err(|_| Refusal::new(ErrorCode::BadRequest, "tenant_key is not a fingerprint"));
        let admitted = key.and_then(|key| self.admit_tenant_key(tenant, secret, key, live));
        self.count_control(admitted.as_ref().map(|_| ()));
        admitted
    }

    fn admit_tenant_key(
        &self,
        tenant: &str,
        secret: &str,
        key: String,
        live: presence::Live,
    ) -> Result<u64, Refusal> {
        self.presence.connect_checked(tenant, live, |account| {
            check_tenant(account.as_deref(), secret)?;
            let Some(account) = account else {
                return Ok(());
            };
            match &account.tenant_key {
                Some(recorded) if *recorded != key => {
                    tracing::error!(?tenant, recorded = %recorded, presented = %key, "tenant refused: its key is not the one on record");
                    Err(Refusal::new(
                        ErrorCode::TenantKeyChanged,
                        format!(
                            "tenant {tenant} presented key {key}, but the SP has {recorded} on \
                             record; if the tenant's server was reinstalled, an SP admin runs \
                             `rac sp tenant reset-key {tenant}`"
                        ),
                    ))
                }
                Some(_) => Ok(()),
                None => {
                    tracing::info!(?tenant, key = %key, "recording the tenant's key (first sight)");
                    account.tenant_key = Some(key.clone());
                    crate::util::lock(&self.new_tenant_keys).push((tenant.to_string(), key.clone()));
                    Ok(())
                }
            }
        })
    }

    /// Admits a password login from `source`, quickly (call it from async code): counts the
    /// attempt against the source's limit, then takes one of the few password-check slots
    /// (a source that logged in successfully lately has one lane more). Refuses with
    /// `rate_limited` when the source used up its attempts, and with `busy` when every slot
    /// is taken (that refusal does not count against the source). The slow part is
    /// [`LoginAttempt::finish`].
    pub fn begin_login(self: &Arc<Self>, source: IpAddr) -> Result<LoginAttempt, Refusal> {
        if let Err(wait) = self.limiter.begin(source) {
            self.metrics.shed(Shed::LoginRateLimited);
            tracing::warn!(%source, "login refused: too many failures from this address");
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "too many failed logins from {source}; try again in {} s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let Some(permit) = self.checker.try_acquire(self.limiter.is_known(source)) else {
            self.limiter.forgive(source);
            self.metrics.shed(Shed::LoginBusy);
            tracing::debug!(%source, "login refused: every password check slot is busy");
            return Err(Refusal::plain(ErrorCode::Busy));
        };
        Ok(LoginAttempt {
            sp: self.clone(),
            source,
            permit,
        })
    }

    /// Operator login with a password, both halves at once ([`begin_login`](Self::begin_login)
    /// then [`LoginAttempt::finish`]). Slow: call from a blocking thread.
    pub fn login(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<(String, u64), Refusal> {
        self.begin_login(source)?.finish(user, password, None)
    }

    /// Resolves a session token to its operator.
    pub fn check_token(&self, token: &str) -> Result<Operator, Refusal> {
        self.check_token_key(token).map(|(operator, _)| operator)
    }

    /// Resolves a session token to its operator and the console key its login registered.
    fn check_token_key(&self, token: &str) -> Result<(Operator, Option<String>), Refusal> {
        match self.registry.check_token(token).map_err(internal)? {
            TokenCheck::Valid {
                operator,
                console_key,
            } => Ok((operator, console_key)),
            TokenCheck::Expired => Err(Refusal::plain(ErrorCode::TokenExpired)),
            TokenCheck::Unknown => Err(Refusal::new(
                ErrorCode::AuthFailed,
                "unknown or revoked session token; log in again",
            )),
        }
    }

    /// Decides whether `token` may open `service` on `tenant` now (step 5).
    pub fn authorize_session(
        &self,
        token: &str,
        tenant: &str,
        service: &str,
    ) -> Result<Authorized, Refusal> {
        if let Some(problem) = self.bus_problem() {
            // Not knowing where tenants are, or whether a right was revoked elsewhere, the
            // node opens nothing rather than act on a stale view.
            return Err(Refusal::new(
                ErrorCode::Internal,
                format!("this SP node cannot reach its cluster ({problem}); try again shortly"),
            ));
        }
        let (operator, console_key) = self.check_token_key(token)?;
        if !operator.may_open(tenant) {
            return Err(Refusal::new(
                ErrorCode::AccessDenied,
                format!("operator {} may not open tenant {tenant}", operator.name),
            ));
        }
        let info = self.presence.info(tenant).ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnknownTenant,
                format!("unknown tenant {tenant:?}"),
            )
        })?;
        info.check_open(service)
            .map_err(|e| Refusal::new(e.code, e.message))?;
        let console_key =
            console_key.ok_or_else(|| Refusal::plain(ErrorCode::ConsoleKeyMissing))?;
        Ok(Authorized {
            operator,
            console_key,
        })
    }

    /// Picks up accounts changed by other processes (`rac sp tenant ...`). Returns the
    /// tenants whose connections must be dropped.
    pub fn refresh_accounts(&self) -> Result<Vec<Kick>> {
        let version = self.registry.data_version()?;
        if self.seen_data_version.swap(version, Ordering::SeqCst) == version {
            return Ok(Vec::new());
        }
        Ok(self.presence.sync_accounts(self.registry.tenants()?))
    }
}

/// A password login admitted by [`SpService::begin_login`]: it holds a password-check slot
/// and has been counted against its source. Dropped unfinished, it stays counted.
pub struct LoginAttempt {
    sp: Arc<SpService>,
    source: IpAddr,
    permit: auth::CheckPermit,
}

impl LoginAttempt {
    /// Checks the password (Argon2id: slow, call from a blocking thread) and issues a token,
    /// bound to the console key the console named. Returns the new token and its lifetime.
    pub fn finish(
        mut self,
        user: &str,
        password: &str,
        console_key: Option<&str>,
    ) -> Result<(String, u64), Refusal> {
        let sp = &self.sp;
        let source = self.source;
        let account = match sp.registry.operator_password_hash(user) {
            Ok(account) => account,
            Err(e) => {
                sp.limiter.forgive(source);
                return Err(internal(e));
            }
        };
        let checked = match &account {
            Some(hash) => self.permit.verify(password, hash),
            None => {
                // An unknown user costs the same time as a wrong password.
                self.permit.burn(password);
                false
            }
        };
        drop(self.permit);
        let (Some(hash), true) = (account, checked) else {
            sp.metrics.login(false);
            tracing::warn!(%source, ?user, "failed login");
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "login failed: wrong user name or password",
            ));
        };
        // A success takes back its own attempt but does not clear the address's failures:
        // otherwise an attacker with one valid account could reset the count between
        // guesses at another's.
        sp.limiter.succeeded(source);
        let ttl = sp.config.token_ttl_secs;
        // Issued only if the password is still the one just checked: a `rac sp operator
        // passwd` (or `remove`) while the check ran leaves the old password without a token.
        match sp.registry.create_token_for_password(
            user,
            &hash,
            Duration::from_secs(ttl),
            console_key,
        ) {
            Ok(Some(token)) => {
                sp.metrics.login(true);
                tracing::info!(%source, ?user, "operator logged in");
                Ok((token, ttl))
            }
            Ok(None) => {
                tracing::warn!(%source, ?user, "login raced a password change; refused");
                Err(Refusal::new(
                    ErrorCode::AuthFailed,
                    "login failed: the password changed meanwhile",
                ))
            }
            Err(e) => Err(internal(e)),
        }
    }
}

/// A tenant's secret and enabled flag against its stored account (`None`: unknown tenant).
/// The secret is checked first, so only its holder learns that a tenant is disabled.
fn check_tenant(account: Option<&registry::TenantAccount>, secret: &str) -> Result<(), Refusal> {
    let wrong = || Refusal::new(ErrorCode::AuthFailed, "unknown tenant or wrong secret");
    let account = account.ok_or_else(wrong)?;
    if !auth::constant_time_eq(&auth::sha256_hex(secret), &account.secret_hash) {
        return Err(wrong());
    }
    if !account.enabled {
        return Err(Refusal::plain(ErrorCode::TenantDisabled));
    }
    Ok(())
}

fn internal(err: impl std::fmt::Display) -> Refusal {
    tracing::error!("registry error: {err}");
    // No stale answer when the registry cannot be read (a cluster node that lost
    // PostgreSQL): refused, and said so.
    Refusal::new(
        ErrorCode::Internal,
        "the SP cannot read its registry now; try again shortly",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    fn live() -> presence::Live {
        presence::Live {
            remote_addr: "127.0.0.1:1".into(),
            agent_version: "test".into(),
            services: vec!["echo".into()],
            provider_access: true,
        }
    }

    /// The SP's own registry connection and a second one, as `rac sp tenant ...` in another
    /// process has.
    fn sp_and_admin() -> (tempfile::TempDir, Arc<SpService>, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.sqlite");
        let sp =
            SpService::with_registry(SpConfig::default(), Registry::open(&path).expect("open"))
                .expect("service");
        let admin = Registry::open(&path).expect("second connection");
        (dir, sp, admin)
    }

    #[test]
    fn a_disable_between_authentication_and_admission_is_not_missed() {
        let (_dir, sp, admin) = sp_and_admin();
        let secret = admin.add_tenant("acme", "").expect("add");
        sp.refresh_accounts().expect("refresh");
        sp.authenticate_tenant("acme", &secret)
            .expect("authenticated");
        // The registry poll applies the disable now: no connection is there to kick yet.
        admin.set_enabled("acme", false).expect("disable");
        assert_eq!(sp.refresh_accounts().expect("refresh").len(), 1);
        let refused = sp
            .admit_tenant("acme", &secret, KEY, live())
            .expect_err("refused");
        assert_eq!(refused.code, ErrorCode::TenantDisabled);
        assert_eq!(sp.presence.online_count(), 0);
    }

    #[test]
    fn a_tenants_first_key_is_recorded_and_another_is_refused_until_reset() {
        let (_dir, sp, admin) = sp_and_admin();
        let secret = admin.add_tenant("acme", "").expect("add");
        sp.refresh_accounts().expect("refresh");
        sp.admit_tenant("acme", &secret, KEY, live())
            .expect("first key");
        assert_eq!(sp.flush_tenant_keys().expect("flush"), 1);
        let stored = admin.tenants().expect("tenants")[0].tenant_key.clone();
        let expected = crate::wire::format_fingerprint(
            &crate::wire::parse_fingerprint(KEY).expect("fingerprint"),
        );
        assert_eq!(stored.as_deref(), Some(expected.as_str()));
        let other = "bb".repeat(32);
        let refused = sp
            .admit_tenant("acme", &secret, &other, live())
            .expect_err("another key");
        assert_eq!(refused.code, ErrorCode::TenantKeyChanged);
        // The same key in another form is the same key.
        sp.admit_tenant("acme", &secret, &expected, live())
            .expect("same key");
        admin.reset_tenant_key("acme").expect("reset");
        sp.refresh_accounts().expect("refresh");
        sp.admit_tenant("acme", &secret, &other, live())
            .expect("a new key after the reset");
    }

    #[test]
    fn a_rotation_between_authentication_and_admission_is_not_missed() {
        let (_dir, sp, admin) = sp_and_admin();
        let old = admin.add_tenant("acme", "").expect("add");
        sp.refresh_accounts().expect("refresh");
        sp.authenticate_tenant("acme", &old).expect("authenticated");
        let new = admin.rotate_secret("acme").expect("rotate");
        sp.refresh_accounts().expect("refresh");
        let refused = sp
            .admit_tenant("acme", &old, KEY, live())
            .expect_err("refused");
        assert_eq!(refused.code, ErrorCode::AuthFailed);
        assert_eq!(sp.presence.online_count(), 0);
        // The new secret is admitted; an unknown tenant keeps its code.
        sp.admit_tenant("acme", &new, KEY, live())
            .expect("admitted");
        assert_eq!(sp.presence.online_count(), 1);
        let unknown = sp
            .admit_tenant("nobody", &new, KEY, live())
            .expect_err("unknown");
        assert_eq!(unknown.code, ErrorCode::AuthFailed);
    }
}
