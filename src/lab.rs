//! The lab: an SP, two cloud gateways and simulated tenants in one process, on real loopback
//! sockets with real TLS. `rac` with no arguments opens the console on it; `rac lab
//! --headless` prints how to reach it; the tests use it as their world.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod desktop;
mod font;
mod scribbles;

use crate::net::cloud_redirector::{self, SpEngine};
use crate::net::console::{ConsoleConfig, ConsoleKeys};
use crate::net::dial::Route;
use crate::net::gateway::{self, GatewayConfig};
use crate::net::tenant_redirector::{
    self, AgentState, LocalHandler, RedirectorConfig, ServiceTarget,
};
use crate::net::tls::Trust;
use crate::sp::config::{SpConfig, StateDir};
use crate::sp::registry::Registry;
use crate::tenant::backup::{
    BackupService, SERVICE_NAME, ServiceConfig, Store, generate_for_index,
};
use crate::util::now_unix_secs;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Simulated tenants that come online.
    pub tenants: usize,
    /// Cloud gateways in front of the SP.
    pub gateways: usize,
    /// Also add one tenant of each kind that cannot be opened (offline, disabled, provider
    /// access off), so a console shows every state.
    pub demo_faults: bool,
    /// SP settings (heartbeats and timeouts); tests shorten them.
    pub sp_config: SpConfig,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            tenants: 12,
            gateways: 2,
            demo_faults: false,
            sp_config: SpConfig {
                heartbeat_secs: 5,
                dead_after_secs: 16,
                ..SpConfig::default()
            },
        }
    }
}

/// Tenants added with `demo_faults`.
pub const OFFLINE_TENANT: &str = "northwind-offline";
pub const DISABLED_TENANT: &str = "umbrella-disabled";
pub const PRIVATE_TENANT: &str = "wayne-private";

const NAMES: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "hooli",
    "stark",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "gringotts",
    "oscorp",
    "aperture",
    "monarch",
    "vandelay",
    "dunder",
    "sterling",
    "pied-piper",
    "massive-dynamic",
    "blue-sun",
    "weyland",
];

/// The lab tenant names, in order: well-known names first, then numbered ones.
pub fn tenant_name(index: usize) -> String {
    match NAMES.get(index) {
        Some(name) => name.to_string(),
        None => format!("tenant-{:05}", index + 1),
    }
}

/// A running lab. Dropping it stops everything; [`Lab::stop`] waits for the stop.
pub struct Lab {
    pub sp_addr: SocketAddr,
    pub gateways: Vec<SocketAddr>,
    pub ca_cert: PathBuf,
    pub ca_fingerprint: String,
    pub operator: String,
    pub password: String,
    /// The tenants that are online (every name a console can open).
    pub tenants: Vec<String>,
    /// The SP's state dir (registry, certificates).
    pub state_dir: StateDir,
    agents: Vec<(String, watch::Receiver<AgentState>)>,
    /// The window's key and tenant pins for this lab (in memory: a lab lives one run).
    console_keys: ConsoleKeys,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _dir: tempfile::TempDir,
}

/// The one JSON line `rac lab --headless` prints when ready.
#[derive(Debug, Serialize)]
pub struct ReadyLine<'a> {
    pub sp: String,
    pub gateways: Vec<String>,
    pub ca_cert: String,
    pub operator: Credentials<'a>,
    pub tenants: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct Credentials<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

impl Lab {
    /// Starts the lab and returns once every tenant that should be online is.
    pub async fn start(options: LabOptions) -> Result<Lab> {
        let dir = tempfile::Builder::new()
            .prefix("rac-lab-")
            .tempdir()
            .context("creating the lab's temporary state dir")?;
        let state = StateDir::new(dir.path().join("sp"));
        let init = crate::sp::init_state_dir(&state, "operator", &[], None)?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();

        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sp_listener = crate::net::listen(loopback)?;
        let sp_addr = sp_listener.local_addr()?;
        let mut gateway_listeners = Vec::new();
        for _ in 0..options.gateways {
            gateway_listeners.push(crate::net::listen(loopback)?);
        }
        let gateways: Vec<SocketAddr> = gateway_listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<std::io::Result<_>>()?;

        // Accounts first, so the SP starts with them.
        let registry = Registry::open(&state.registry())?;
        let mut secrets = Vec::new();
        for i in 0..options.tenants {
            let name = tenant_name(i);
            let secret = registry.add_tenant(&name, &format!("Lab tenant {}", i + 1))?;
            secrets.push((name, secret, true));
        }
        if options.demo_faults {
            registry.add_tenant(OFFLINE_TENANT, "Lab tenant whose redirector is not running")?;
            let secret = registry.add_tenant(DISABLED_TENANT, "Lab tenant disabled by the SP")?;
            registry.set_enabled(DISABLED_TENANT, false)?;
            let _ = secret;
            let secret =
                registry.add_tenant(PRIVATE_TENANT, "Lab tenant that refuses provider access")?;
            secrets.push((PRIVATE_TENANT.to_string(), secret, false));
        }
        drop(registry);

        let mut sp_config = options.sp_config.clone();
        sp_config.gateways = gateways.iter().map(|g| g.to_string()).collect();
        sp_config.trusted_proxies = vec![std::net::Ipv4Addr::LOCALHOST.into()];
        let engine = SpEngine {
            service: crate::sp::SpService::with_registry(
                sp_config,
                Registry::open(&state.registry())?,
            )?,
            acceptor: crate::net::tls::server_acceptor(&state.server_chain(), &state.server_key())?,
            cluster: None,
        };
        tracker.spawn(log_error(
            "SP",
            cloud_redirector::run(engine, sp_listener, shutdown.clone()),
        ));
        for listener in gateway_listeners {
            let mut config = GatewayConfig::new(vec![sp_addr]);
            config.proxy_protocol = true;
            config.drain_timeout = Duration::from_secs(1);
            tracker.spawn(log_error(
                "gateway",
                gateway::run(config, listener, shutdown.clone()),
            ));
        }

        let backup_dir = dir.path().join("tenants");
        std::fs::create_dir_all(&backup_dir)?;
        let mut endpoints: Vec<String> = gateways.iter().map(|g| g.to_string()).collect();
        endpoints.push(sp_addr.to_string());
        let mut agents = Vec::new();
        let mut online = Vec::new();
        for (index, (name, secret, provider_access)) in secrets.into_iter().enumerate() {
            let backup = {
                let name = name.clone();
                let store = Store::new(backup_dir.join(format!("{name}.json")));
                let path = store.path().display().to_string();
                BackupService::open(
                    store,
                    ServiceConfig {
                        // Lab job runs finish in a minute or two instead of an hour.
                        sim_speed: 30.0,
                        sim_seed: index as u64,
                        ..ServiceConfig::default()
                    },
                    move || generate_for_index(index, &name, now_unix_secs()),
                )
                .with_context(|| format!("opening the backup service state {path}"))?
            };
            tracker.spawn(crate::tenant::backup::simulate(
                backup.clone(),
                shutdown.clone(),
            ));
            let desktop = desktop::LabDesktop::new(&name, backup.clone());
            let config = RedirectorConfig {
                tenant: name.clone(),
                secret,
                endpoints: endpoints.clone(),
                trust: Trust::CaFile(init.ca_cert.clone()),
                server_name: "localhost".into(),
                allow_provider_access: provider_access,
                services: lab_services(&name, backup, desktop),
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_secs(5),
                ..RedirectorConfig::defaults()
            };
            let (state_tx, state_rx) = watch::channel(AgentState::Connecting);
            tracker.spawn(log_error(
                "tenant redirector",
                tenant_redirector::run_with_state(config, shutdown.clone(), state_tx),
            ));
            if provider_access {
                online.push(name.clone());
            }
            agents.push((name, state_rx));
        }
        let lab = Lab {
            sp_addr,
            gateways,
            ca_cert: init.ca_cert,
            ca_fingerprint: init.ca_fingerprint,
            operator: init.operator,
            password: init.password,
            tenants: online,
            state_dir: state,
            agents,
            console_keys: ConsoleKeys::in_memory()?,
            shutdown,
            tracker,
            _dir: dir,
        };
        lab.wait_online(Duration::from_secs(60)).await?;
        Ok(lab)
    }

    /// Waits until every started tenant redirector is online.
    pub async fn wait_online(&self, timeout: Duration) -> Result<()> {
        let all = async {
            for (_, state) in &self.agents {
                let mut state = state.clone();
                state
                    .wait_for(|s| matches!(s, AgentState::Online { .. }))
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(result) => result,
            Err(_) => {
                let waiting: Vec<String> = self
                    .agents
                    .iter()
                    .filter(|(_, s)| !matches!(*s.borrow(), AgentState::Online { .. }))
                    .map(|(name, s)| format!("{name}: {:?}", *s.borrow()))
                    .collect();
                bail!(
                    "lab tenants not online after {timeout:?}: {}",
                    waiting.join("; ")
                )
            }
        }
    }

    pub fn ready_line(&self) -> String {
        let line = ReadyLine {
            sp: self.sp_addr.to_string(),
            gateways: self.gateways.iter().map(|g| g.to_string()).collect(),
            ca_cert: self.ca_cert.display().to_string(),
            operator: Credentials {
                user: &self.operator,
                password: &self.password,
            },
            tenants: &self.tenants,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// How a console reaches this lab directly.
    pub fn console_config(&self) -> ConsoleConfig {
        ConsoleConfig {
            route: Route::Direct(self.sp_addr.to_string()),
            trust: Trust::CaFile(self.ca_cert.clone()),
            server_name: "localhost".into(),
            user: self.operator.clone(),
            keys: self.console_keys.clone(),
        }
    }

    /// Stops every engine and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The services every lab tenant offers: its backup server, its desktop, and an echo for
/// tests.
fn lab_services(
    tenant: &str,
    backup: Arc<BackupService>,
    desktop: Arc<desktop::LabDesktop>,
) -> std::collections::BTreeMap<String, ServiceTarget> {
    let mut services = std::collections::BTreeMap::new();
    services.insert(
        SERVICE_NAME.to_string(),
        ServiceTarget::Local(crate::net::backup_host::handler(backup)),
    );
    services.insert(
        crate::net::rdp::SERVICE_NAME.to_string(),
        ServiceTarget::Local(crate::net::rdp::server::desktop_handler(
            desktop,
            vec![tenant.to_string()],
        )),
    );
    services.insert("echo".to_string(), ServiceTarget::Local(echo_service()));
    services
}

/// Echoes every byte back; ends its side when the console ends its side.
pub fn echo_service() -> LocalHandler {
    Arc::new(|stream| {
        Box::pin(async move {
            let (mut reader, mut writer) = tokio::io::split(stream);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
        })
    })
}

async fn log_error(what: &'static str, task: impl std::future::Future<Output = Result<()>>) {
    if let Err(e) = task.await {
        tracing::error!("lab {what} stopped: {e:#}");
    }
}
