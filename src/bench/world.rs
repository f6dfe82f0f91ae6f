//! The benchmark's world: an SP state dir with many tenant accounts, the SP as its own
//! process, the tenant services the sessions reach (in this process, on loopback), one full
//! tenant redirector serving them, and a logged-in console.

use super::desktop::{INPUT_SERVICE, InputDesktop, STREAM_SERVICE, StreamDesktop};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::procs::RacProcess;
use crate::net::console::{ConsoleClient, ConsoleConfig, ConsoleKeys};
use crate::net::dial::Route;
use crate::net::tenant_redirector::{self, AgentState, RedirectorConfig, ServiceTarget};
use crate::net::tls::Trust;
use crate::sp::config::StateDir;
use crate::sp::registry::Registry;

/// The tenant whose full redirector serves the throughput and latency sessions.
pub const BENCH_TENANT: &str = "bench";
/// Service that sends as many bytes as asked for (a big u64 first), then closes; served
/// inside the tenant redirector (as `rac tenant` serves its backup service), so a session's
/// bytes cross exactly the relay's two TLS hops.
pub const SOURCE: &str = "source";
/// The same service on a TCP port of the tenant side: one more loopback hop per byte.
pub const SOURCE_TCP: &str = "source-tcp";
/// Service that echoes.
pub const ECHO: &str = "echo";
pub(super) const OPERATOR: &str = "bench";

pub struct World {
    pub dir: tempfile::TempDir,
    pub state: StateDir,
    pub sp: RacProcess,
    /// Every SP start listens here (the storm restarts it on the same port).
    pub sp_addr: SocketAddr,
    pub ca: PathBuf,
    pub password: String,
    pub console: Arc<ConsoleClient>,
    /// Name and secret of each idle tenant account.
    pub idle_tenants: Vec<(String, String)>,
    pub source_addr: SocketAddr,
    pub echo_addr: SocketAddr,
    /// The bench desktops' RDP servers (also the bench tenant's desktop services).
    pub input_desktop_addr: SocketAddr,
    pub stream_desktop_addr: SocketAddr,
    /// The full-screen desktop behind `stream_desktop_addr` (its pace is set per run).
    pub stream_desktop: Arc<StreamDesktop>,
    /// The SP's admin listener (on the same port after a restart), when asked for.
    pub admin: Option<AdminAccess>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

/// SP settings the benchmark writes to `sp.toml` or passes to `rac sp run`.
pub struct SpSettings {
    pub heartbeat_secs: u64,
    /// Serve the admin listener (`--admin`), with a read-only token for the bench.
    pub admin: bool,
    /// Session rows written to the audit log before the SP starts.
    pub audit_rows: u64,
}

/// The SP's admin listener as the bench reaches it.
#[derive(Clone)]
pub struct AdminAccess {
    pub addr: SocketAddr,
    /// A read-only admin token.
    pub token: String,
}

impl World {
    pub async fn start(idle_tenants: usize, settings: &SpSettings) -> Result<World> {
        // RAC_BENCH_KEEP=1 keeps the state dir and the children's logs for a look afterwards.
        let dir = tempfile::Builder::new()
            .prefix("rac-bench-")
            .disable_cleanup(std::env::var_os("RAC_BENCH_KEEP").is_some())
            .tempdir()
            .context("making a temporary dir")?;
        tracing::debug!("bench state in {}", dir.path().display());
        let state = StateDir::new(dir.path().join("sp"));
        let init = crate::sp::init_state_dir(&state, OPERATOR, &[], None)?;
        std::fs::write(
            state.config(),
            format!(
                "heartbeat_secs = {}\ndead_after_secs = {}\n",
                settings.heartbeat_secs,
                settings.heartbeat_secs * 3 + 5
            ),
        )
        .context("writing sp.toml")?;
        let registry = Registry::open(&state.registry())?;
        let bench_secret = registry.add_tenant(BENCH_TENANT, "benchmark sessions")?;
        let started = Instant::now();
        let mut idle = Vec::with_capacity(idle_tenants);
        for i in 0..idle_tenants {
            let name = format!("idle-{i:05}");
            let secret = registry.add_tenant(&name, "")?;
            idle.push((name, secret));
        }
        tracing::debug!(
            "added {idle_tenants} tenants to the registry in {:?}",
            started.elapsed()
        );
        let admin = if settings.admin {
            let token = registry.create_admin_token(
                "bench",
                crate::sp::registry::AdminScope::ReadOnly,
                &crate::sp::registry::Actor::Local,
            )?;
            Some(AdminAccess {
                addr: free_port()?,
                token,
            })
        } else {
            None
        };
        drop(registry);
        if settings.audit_rows > 0 {
            let started = Instant::now();
            super::admin::fill_audit(&state.registry(), settings.audit_rows)?;
            tracing::debug!(
                "wrote {} audit rows in {:?}",
                settings.audit_rows,
                started.elapsed()
            );
        }

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let source_addr = serve(&tasks, &shutdown, source_conn).await?;
        let echo_addr = serve(&tasks, &shutdown, echo_conn).await?;
        let input_desktop_addr = desktop_service(&tasks, &shutdown, InputDesktop::new()).await?;
        let stream_desktop = StreamDesktop::new();
        let stream_desktop_addr =
            desktop_service(&tasks, &shutdown, stream_desktop.clone()).await?;

        let sp = spawn_sp(&state, "127.0.0.1:0", admin.as_ref(), dir.path())?;
        let sp_addr = sp.addr;
        let console = logged_in_console(
            Route::Direct(sp_addr.to_string()),
            &init.ca_cert,
            &init.password,
        )
        .await?;

        let mut services = BTreeMap::new();
        services.insert(SOURCE.into(), source_service());
        services.insert(
            SOURCE_TCP.into(),
            ServiceTarget::Tcp(source_addr.to_string()),
        );
        services.insert(ECHO.into(), ServiceTarget::Tcp(echo_addr.to_string()));
        for (name, addr) in [
            (INPUT_SERVICE, input_desktop_addr),
            (STREAM_SERVICE, stream_desktop_addr),
        ] {
            services.insert(name.into(), ServiceTarget::Tcp(addr.to_string()));
        }
        let config = RedirectorConfig {
            tenant: BENCH_TENANT.into(),
            secret: bench_secret,
            endpoints: vec![sp_addr.to_string()],
            trust: Trust::CaFile(init.ca_cert.clone()),
            server_name: "localhost".into(),
            services,
            // Back within a fraction of a second after the SP restarts.
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RedirectorConfig::defaults()
        };
        let (state_tx, mut state_rx) = watch::channel(AgentState::Connecting);
        {
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = tenant_redirector::run_with_state(config, shutdown, state_tx).await
                {
                    tracing::error!("bench tenant redirector: {e:#}");
                }
            });
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            state_rx.wait_for(|s| matches!(s, AgentState::Online { .. })),
        )
        .await
        .context("the bench tenant did not come online")?
        .context("bench tenant redirector stopped")?;

        Ok(World {
            state,
            sp,
            sp_addr,
            ca: init.ca_cert,
            password: init.password,
            console,
            idle_tenants: idle,
            source_addr,
            echo_addr,
            input_desktop_addr,
            stream_desktop_addr,
            stream_desktop,
            admin,
            shutdown,
            tasks,
            dir,
        })
    }

    /// A console that reaches the SP through `route`, logged in.
    pub async fn console_via(&self, route: Route) -> Result<Arc<ConsoleClient>> {
        logged_in_console(route, &self.ca, &self.password).await
    }

    /// Kills the SP (SIGKILL) and starts it again on the same port.
    pub fn kill_sp(&mut self) -> Result<()> {
        self.sp.kill()
    }

    pub fn start_sp_again(&mut self) -> Result<()> {
        self.sp = spawn_sp(
            &self.state,
            &self.sp_addr.to_string(),
            self.admin.as_ref(),
            self.dir.path(),
        )?;
        Ok(())
    }

    /// Waits until the bench tenant is online at the (new) SP.
    pub async fn wait_bench_tenant_online(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(list) = self.console.tenants().await
                && list.iter().any(|t| {
                    t.name == BENCH_TENANT
                        && t.status == crate::wire::protocol::TenantStatus::Online
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the bench tenant did not come back online");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A cloud gateway process in front of `backend`.
    pub fn spawn_gateway(&self, backend: SocketAddr, name: &str) -> Result<RacProcess> {
        RacProcess::spawn(
            &[
                "gateway".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--backend".into(),
                backend.to_string(),
            ],
            &[],
            "gateway listening on",
            &self.dir.path().join(format!("{name}.log")),
        )
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

fn spawn_sp(
    state: &StateDir,
    listen: &str,
    admin: Option<&AdminAccess>,
    dir: &std::path::Path,
) -> Result<RacProcess> {
    let mut args = vec![
        "sp".into(),
        "run".into(),
        "--state-dir".into(),
        state.root.display().to_string(),
        "--listen".into(),
        listen.into(),
    ];
    if let Some(admin) = admin {
        args.extend(["--admin".into(), admin.addr.to_string()]);
    }
    RacProcess::spawn(
        &args,
        &super::procs::extra_env("RAC_BENCH_SP_ENV")?,
        "SP listening on",
        &dir.join("sp.log"),
    )
}

/// A loopback port free now, for the SP's admin listener (kept across the SP's restarts).
fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Accepts on a port-0 loopback listener and serves each connection with `handler`.
async fn serve<F, Fut>(
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    handler: F,
) -> Result<SocketAddr>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown.clone();
    let inner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let conn = handler(tcp);
                    let shutdown = shutdown.clone();
                    inner.spawn(async move {
                        tokio::select! {
                            _ = conn => {}
                            _ = shutdown.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("bench service accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    Ok(addr)
}

/// Serves `desktop` over RDP on a port-0 loopback listener.
async fn desktop_service(
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    desktop: Arc<dyn crate::net::rdp::server::Desktop>,
) -> Result<SocketAddr> {
    let handler = crate::net::rdp::server::desktop_handler(desktop, vec!["localhost".into()]);
    serve(tasks, shutdown, move |tcp| {
        let handler = handler.clone();
        async move {
            handler(Box::new(tcp)).await;
            Ok(())
        }
    })
    .await
}

/// Size of the buffers the services and load generators read and write with.
pub const IO_BUF: usize = 256 * 1024;

/// A console of the bench's operator that reaches an SP through `route`, logged in.
pub(super) async fn logged_in_console(
    route: Route,
    ca: &std::path::Path,
    password: &str,
) -> Result<Arc<ConsoleClient>> {
    let console = ConsoleClient::new(ConsoleConfig {
        route,
        trust: Trust::CaFile(ca.to_path_buf()),
        server_name: "localhost".into(),
        user: OPERATOR.into(),
        keys: ConsoleKeys::in_memory()?,
    })?;
    console.login(password).await.context("logging in")?;
    Ok(console)
}

/// The source service run inside the tenant redirector (no loopback hop to a TCP service).
pub(super) fn source_service() -> ServiceTarget {
    ServiceTarget::Local(Arc::new(|stream| {
        Box::pin(async move {
            if let Err(e) = source_conn(stream).await {
                tracing::debug!("source service: {e}");
            }
        })
    }))
}

async fn source_conn<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    let mut want = stream.read_u64().await?;
    let chunk = vec![0x5au8; IO_BUF];
    while want > 0 {
        let n = want.min(IO_BUF as u64) as usize;
        stream.write_all(&chunk[..n]).await?;
        want -= n as u64;
    }
    stream.shutdown().await?;
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn echo_conn(mut tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return tcp.shutdown().await;
        }
        tcp.write_all(&buf[..n]).await?;
    }
}
