//! Helpers shared by the integration tests: real engines on 127.0.0.1 port 0, real TLS.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rac::net::cloud_redirector::{self, SpEngine};
use rac::net::console::{ConsoleClient, ConsoleConfig};
use rac::net::dial::Route;
use rac::net::tenant_redirector::{self, AgentState, RedirectorConfig, ServiceTarget};
use rac::net::tls::{ClientStream, TlsClient, Trust};
use rac::sp::config::{SpConfig, StateDir};
use rac::sp::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A hang guard for waits that normally take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// An SP on its own state dir, serving a port-0 listener.
pub struct TestSp {
    pub addr: SocketAddr,
    pub state: StateDir,
    pub ca: PathBuf,
    pub operator: String,
    pub password: String,
    pub registry: Registry,
    pub config: SpConfig,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

pub fn quick_config() -> SpConfig {
    SpConfig {
        heartbeat_secs: 1,
        dead_after_secs: 4,
        session_open_timeout_secs: 5,
        registry_poll_millis: 100,
        ..SpConfig::default()
    }
}

impl TestSp {
    pub async fn start(config: SpConfig) -> TestSp {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("sp"));
        let init = rac::sp::init_state_dir(&state, "admin", &[]).expect("sp init");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let registry = Registry::open(&state.registry()).expect("registry");
        let shutdown = CancellationToken::new();
        let task = spawn_sp(&state, config.clone(), listener, shutdown.clone());
        TestSp {
            addr,
            ca: init.ca_cert,
            operator: init.operator,
            password: init.password,
            state,
            registry,
            config,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// Stops the SP and starts it again on the same port and state.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(PATIENCE, &mut self.task).await;
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind same port");
        self.shutdown = CancellationToken::new();
        self.task = spawn_sp(
            &self.state,
            self.config.clone(),
            listener,
            self.shutdown.clone(),
        );
    }

    pub fn add_tenant(&self, name: &str) -> String {
        self.registry
            .add_tenant(name, "test tenant")
            .expect("add tenant")
    }

    pub fn console_config(&self) -> ConsoleConfig {
        ConsoleConfig {
            route: Route::Direct(self.addr.to_string()),
            trust: Trust::CaFile(self.ca.clone()),
            server_name: "localhost".into(),
            user: self.operator.clone(),
        }
    }

    /// A console logged in as the SP's first operator.
    pub async fn console(&self) -> Arc<ConsoleClient> {
        let client = ConsoleClient::new(self.console_config()).expect("client");
        client.login(&self.password).await.expect("login");
        client
    }

    /// A raw TLS connection to the SP port (for speaking the protocol by hand).
    pub async fn raw(&self) -> ClientStream {
        let tls = TlsClient::new(&Trust::CaFile(self.ca.clone()), "localhost").expect("tls");
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        tls.handshake(tcp).await.expect("handshake")
    }

    pub fn tenant_config(&self, name: &str, secret: &str) -> RedirectorConfig {
        let mut services = BTreeMap::new();
        services.insert(
            "echo".to_string(),
            ServiceTarget::Local(rac::lab::echo_service()),
        );
        RedirectorConfig {
            tenant: name.into(),
            secret: secret.into(),
            endpoints: vec![self.addr.to_string()],
            trust: Trust::CaFile(self.ca.clone()),
            server_name: "localhost".into(),
            services,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..RedirectorConfig::defaults()
        }
    }
}

impl Drop for TestSp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the SP as `rac sp run` does: settings from `sp.toml` in its state dir.
fn spawn_sp(
    state: &StateDir,
    config: SpConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    std::fs::write(state.config(), toml::to_string(&config).expect("toml")).expect("write sp.toml");
    let engine = SpEngine::open(state).expect("open SP");
    tokio::spawn(cloud_redirector::run(engine, listener, shutdown))
}

/// A running tenant redirector.
pub struct TestTenant {
    pub state: watch::Receiver<AgentState>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestTenant {
    pub fn start(config: RedirectorConfig) -> TestTenant {
        let (tx, state) = watch::channel(AgentState::Connecting);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tenant_redirector::run_with_state(
            config,
            shutdown.clone(),
            tx,
        ));
        TestTenant {
            state,
            shutdown,
            task,
        }
    }

    pub async fn online(&mut self) {
        tokio::time::timeout(
            PATIENCE,
            self.state
                .wait_for(|s| matches!(s, AgentState::Online { .. })),
        )
        .await
        .expect("tenant online in time")
        .expect("state channel open");
    }

    /// Waits until the redirector is not online (for instance after a refusal).
    pub async fn not_online(&mut self) -> AgentState {
        tokio::time::timeout(
            PATIENCE,
            self.state
                .wait_for(|s| matches!(s, AgentState::Waiting { .. })),
        )
        .await
        .expect("tenant dropped in time")
        .expect("state channel open")
        .clone()
    }
}

impl Drop for TestTenant {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until the SP lists `tenant` with the given status.
pub async fn wait_status(
    console: &ConsoleClient,
    tenant: &str,
    status: rac::net::protocol::TenantStatus,
) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let tenants = console.tenants().await.expect("tenant list");
            if tenants
                .iter()
                .any(|t| t.name == tenant && t.status == status)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("status reached in time");
}
