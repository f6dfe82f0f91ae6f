//! Helpers shared by the integration tests: real engines on 127.0.0.1 port 0, real TLS; the
//! `rac` binary as a child process; one way to poll, one hang guard. The gateway's test
//! harness is in `gateway.rs`; the protocol spoken by hand (frames, hellos, `open_data`, a
//! bare FIN) in `wire.rs`.
#![allow(dead_code)]

pub mod fake_sp;
pub mod gateway;
pub mod wire;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long `eventually` and `eventually_blocking` sleep between two looks.
const POLL: Duration = Duration::from_millis(20);

/// Calls `probe` every 20 ms until it yields `Some`, and returns that value. Panics naming
/// `what` once `timeout` has passed, a hung probe included: a hang guard, not a timing
/// assertion.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let found = tokio::time::timeout(timeout, async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("not within {timeout:?}: {what}"))
}

/// `eventually` for tests without a runtime (the ones that only run processes).
pub fn eventually_blocking<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(POLL);
    }
}

/// The `rac` binary this test run built.
pub const RAC: &str = env!("CARGO_BIN_EXE_rac");

/// Which output of a child carries the line `Proc::spawn_until` waits for.
#[derive(Clone, Copy, Debug)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// A child process, killed (SIGKILL) and reaped when dropped, however the test ends.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `rac ARGS` (RUST_LOG=info) and waits for a line containing `marker` on stderr;
    /// returns that line.
    pub fn start(args: &[&str], marker: &str) -> (Proc, String) {
        let mut cmd = Command::new(RAC);
        cmd.args(args).env("RUST_LOG", "info");
        Proc::spawn_until(&mut cmd, marker, Pipe::Stderr)
    }

    /// Spawns `cmd` and waits for the first line containing `marker` on `pipe`; returns that
    /// line. The rest of that pipe is drained so the child never blocks on it; the other
    /// output goes nowhere, and stdin is empty (nothing waits for a terminal).
    pub fn spawn_until(cmd: &mut Command, marker: &str, pipe: Pipe) -> (Proc, String) {
        cmd.stdin(Stdio::null());
        match pipe {
            Pipe::Stdout => cmd.stdout(Stdio::piped()).stderr(Stdio::null()),
            Pipe::Stderr => cmd.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let output: Box<dyn std::io::Read + Send> = match pipe {
            Pipe::Stdout => Box::new(child.stdout.take().expect("stdout")),
            Pipe::Stderr => Box::new(child.stderr.take().expect("stderr")),
        };
        let child = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted = marker.to_string();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains(&wanted) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        let line = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("{cmd:?} printed no line with {marker:?}"));
        (child, line)
    }

    /// Sends the signal `name` (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.0.id());
    }

    /// Waits for the child to exit by itself (within `PATIENCE`).
    pub fn exited(&mut self) -> ExitStatus {
        eventually_blocking(PATIENCE, "the process exits", || {
            self.0.try_wait().expect("try_wait")
        })
    }

    /// SIGKILL: no chance to say goodbye, close TLS or write anything.
    pub fn kill(&mut self) {
        self.0.kill().expect("kill");
        self.0.wait().expect("reap");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP echo server on 127.0.0.1 port 0, standing in for a tenant's local service.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

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
    /// The running SP's backup service (what its admin listener serves).
    pub service: Arc<rac::sp::SpService>,
    /// The consoles' key and tenant pins (one console identity per test SP).
    pub console_keys: rac::net::console::ConsoleKeys,
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
        let init = rac::sp::init_state_dir(&state, "admin", &[], None).expect("sp init");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let registry = Registry::open(&state.registry()).expect("registry");
        let shutdown = CancellationToken::new();
        let (service, task) = spawn_sp(&state, config.clone(), listener, shutdown.clone());
        TestSp {
            service,
            console_keys: rac::net::console::ConsoleKeys::in_memory().expect("console key"),
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
        (self.service, self.task) = spawn_sp(
            &self.state,
            self.config.clone(),
            listener,
            self.shutdown.clone(),
        );
    }

    /// Adds a tenant, starts its redirector (offering `echo`) and waits until it is online.
    pub async fn online_tenant(&self, name: &str) -> TestTenant {
        let secret = self.add_tenant(name);
        let mut tenant = TestTenant::start(self.tenant_config(name, &secret));
        tenant.online().await;
        tenant
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
            keys: self.console_keys.clone(),
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
            // One key per tenant name in a test: a restarted tenant is the same tenant.
            identity: Some(wire::test_tenant_identity(name)),
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
) -> (
    Arc<rac::sp::SpService>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    std::fs::write(state.config(), toml::to_string(&config).expect("toml")).expect("write sp.toml");
    let engine = SpEngine::open(state).expect("open SP");
    let service = engine.service.clone();
    (
        service,
        tokio::spawn(cloud_redirector::run(engine, listener, shutdown)),
    )
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
        let waited = tokio::time::timeout(
            PATIENCE,
            self.state
                .wait_for(|s| matches!(s, AgentState::Online { .. })),
        )
        .await
        .map(|seen| seen.map(drop));
        match waited {
            Ok(seen) => seen.expect("state channel open"),
            Err(_) => panic!(
                "tenant not online after {PATIENCE:?}; its state: {:?}",
                *self.state.borrow()
            ),
        }
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

/// Starts opening a session to `tenant`'s `echo` service in a task of its own, so the test
/// can play the tenant's side meanwhile; the task's result is the console's.
pub fn open_in_background(
    console: &Arc<ConsoleClient>,
    tenant: &str,
) -> tokio::task::JoinHandle<Result<rac::net::console::Session, rac::net::console::ConsoleError>> {
    let console = console.clone();
    let tenant = tenant.to_string();
    tokio::spawn(async move { console.open_session(&tenant, "echo", |_, _| {}).await })
}

/// Waits until the SP lists `tenant` with the given status.
pub async fn wait_status(
    console: &ConsoleClient,
    tenant: &str,
    status: rac::wire::protocol::TenantStatus,
) {
    eventually(PATIENCE, &format!("{tenant} is {status:?}"), async || {
        let tenants = console.tenants().await.expect("tenant list");
        tenants
            .iter()
            .any(|t| t.name == tenant && t.status == status)
            .then_some(())
    })
    .await;
}

/// A TCP connection to `to` from the loopback address `source` (127.0.0.x), so tests can play
/// many clients without meeting the per-source cap.
pub async fn tcp_from(source: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// The loopback address 127.0.0.`n`.
pub fn loopback(n: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, n))
}

impl TestSp {
    /// A raw TLS connection to the SP port from the loopback address `source`.
    pub async fn raw_from(&self, source: std::net::IpAddr) -> ClientStream {
        let tls = TlsClient::new(&Trust::CaFile(self.ca.clone()), "localhost").expect("tls");
        let tcp = tcp_from(source, self.addr).await.expect("connect");
        tls.handshake(tcp).await.expect("handshake")
    }

    /// A hand-made tenant control connection, past its welcome: the test reads and writes
    /// the control messages itself.
    pub async fn raw_control(&self, tenant: &str, secret: &str) -> ClientStream {
        let mut control = self.raw().await;
        wire::control_hello(&mut control, tenant, secret, "hand-made/1", &["echo"]).await;
        control
    }

    /// Operator login by hand from `source`: the hello reply (welcome or error).
    pub async fn login_from(
        &self,
        source: std::net::IpAddr,
        user: &str,
        password: &str,
    ) -> rac::wire::protocol::HelloReply {
        use rac::wire::protocol::{Hello, Role};
        let mut stream = self.raw_from(source).await;
        let hello = Hello::new(Role::Operator {
            user: user.into(),
            password: Some(password.into()),
            token: None,
            console_key: Some(self.console_keys.identity.fingerprint_text()),
        });
        wire::ask(&mut stream, &hello).await
    }
}

/// Reads control messages until one matches `pick` (pings are answered on the way).
pub async fn next_control<T>(
    control: &mut ClientStream,
    mut pick: impl FnMut(&rac::wire::protocol::ControlMsg) -> Option<T>,
) -> T {
    use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
    use rac::wire::protocol::ControlMsg;
    tokio::time::timeout(PATIENCE, async {
        loop {
            let msg: ControlMsg = read_frame(control, MAX_FRAME_LEN)
                .await
                .expect("read control")
                .expect("control open");
            if let ControlMsg::Ping { seq, .. } = msg {
                write_frame(control, &ControlMsg::Pong { seq })
                    .await
                    .expect("pong");
            }
            if let Some(found) = pick(&msg) {
                return found;
            }
        }
    })
    .await
    .expect("control message in time")
}

/// Deterministic pseudo-random bytes (xorshift), so a receiver can check what it got.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = (seed << 1) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `data` through an echo session and checks every byte comes back, in order, while
/// writing and reading at the same time. Returns the SHA-256 of what came back.
pub async fn echo_checked<S>(stream: S, data: Vec<u8>) -> [u8; 32]
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sent: [u8; 32] = Sha256::digest(&data).into();
    let len = data.len();
    let writing = tokio::spawn(async move {
        for chunk in data.chunks(64 * 1024) {
            writer.write_all(chunk).await.expect("write");
        }
        writer.flush().await.expect("flush");
        writer
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < len {
        let n = reader.read(&mut buf).await.expect("read");
        assert!(n > 0, "stream ended after {received} of {len} bytes");
        hasher.update(&buf[..n]);
        received += n;
    }
    let _writer = writing.await.expect("writer");
    let got: [u8; 32] = hasher.finalize().into();
    assert_eq!(got, sent, "echoed bytes differ from the bytes sent");
    got
}

/// Panics unless `counted` (what the SP's audit counted one way) fits a session that carried
/// `plaintext` bytes that way: the SP counts the end-to-end channel as it copied it, so the
/// TLS records' headers and tags and the handshake (certificates) come on top, a few KiB.
pub fn assert_carried(counted: u64, plaintext: u64) {
    let most = plaintext + plaintext / 50 + 8 * 1024;
    assert!(
        (plaintext..=most).contains(&counted),
        "the SP counted {counted} bytes for {plaintext} bytes of plaintext (expected {plaintext} to {most})"
    );
}
