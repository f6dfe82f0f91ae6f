//! Faults during live sessions: a tenant killed (SIGKILL), the SP process killed (SIGKILL) and
//! started again, and a connection whose peer vanishes without a FIN. A killed gateway is in
//! `tests/failover.rs` (`a_killed_gateway_moves_tenants_and_consoles_to_another`); a reconnect
//! storm of a thousand tenants is in `tests/load.rs`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    PATIENCE, Proc, RAC, TestSp, TestTenant, echo_checked, eventually, pattern, quick_config,
    tcp_echo, wait_status,
};
use rac::net::console::{ConsoleClient, ConsoleConfig};
use rac::net::dial::Route;
use rac::net::tenant_redirector::{AgentState, RedirectorConfig, ServiceTarget};
use rac::net::tls::Trust;
use rac::sp::registry::Registry;
use rac::wire::protocol::{ErrorCode, TenantStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn rac_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(RAC).args(args).output().expect("run rac");
    assert!(
        out.status.success(),
        "rac {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Waits until the stream ends (EOF, reset or TLS error); returns how long that took.
async fn ended_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Duration {
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the stream ended in time");
    started.elapsed()
}

/// The tenant redirector is killed with SIGKILL in the middle of a session: the console's
/// stream ends at once (from the kernel's FIN, not a heartbeat timeout), the SP marks the
/// tenant offline, the audit row is closed, and the next session is refused as
/// `tenant_offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tenant_ends_the_console_stream_promptly() {
    // A long dead_after: a prompt end cannot come from the heartbeat.
    let dead_after = Duration::from_secs(30);
    let sp = TestSp::start(rac::sp::config::SpConfig {
        dead_after_secs: dead_after.as_secs(),
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let service = tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tenant.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"acme\"\nsecret = \"{secret}\"\nca_cert = \"{}\"\nendpoints = [\"{}\"]\n\
             server_name = \"localhost\"\n[services]\necho = \"{service}\"\n",
            sp.ca.display(),
            sp.addr
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf8 path");
    let (mut tenant, _) = Proc::start(&["tenant", "--config", config], "connected to the SP");

    let console = sp.console().await;
    wait_status(&console, "acme", TenantStatus::Online).await;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    session.stream.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    session.stream.read_exact(&mut buf).await.expect("echo");

    tenant.kill();
    let took = ended_within(&mut session.stream).await;
    assert!(
        took < dead_after / 3,
        "the console's stream ended only after {took:?}"
    );
    wait_status(&console, "acme", TenantStatus::Offline).await;
    assert_eq!(
        console
            .open_session("acme", "echo", |_, _| {})
            .await
            .err()
            .and_then(|e| e.code()),
        Some(ErrorCode::TenantOffline)
    );
    drop(session);
    let row = eventually(PATIENCE, "the audit row is closed", async || {
        let entries = sp.registry.audit_entries(1).expect("audit");
        entries.into_iter().next().filter(|e| e.ended_at.is_some())
    })
    .await;
    common::assert_carried(row.bytes_to_tenant, 6);
}

/// Every waiting delay a tenant redirector reports from now on.
fn record_waits(tenant: &TestTenant) -> Arc<Mutex<Vec<Duration>>> {
    let mut state: watch::Receiver<AgentState> = tenant.state.clone();
    let waits = Arc::new(Mutex::new(Vec::new()));
    let out = waits.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            if let AgentState::Waiting { retry_in, .. } = &*state.borrow_and_update() {
                waits.lock().expect("waits").push(*retry_in);
            }
        }
    });
    out
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// `rac sp run` is killed with SIGKILL while a session is live and started again on the same
/// state dir: the console's stream ends, the tenants retry with growing, jittered delays and
/// come back by themselves, the registry keeps every account and token, the audit log keeps
/// every row, and the interrupted session is marked `interrupted` by the restarted SP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sp_process_loses_nothing_and_tenants_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("sp");
    let state_s = state.to_str().expect("utf8");
    let init = rac_json(&["sp", "init", "--state-dir", state_s, "--json"]);
    let password = init["password"].as_str().expect("password").to_string();
    let ca = PathBuf::from(init["ca_cert"].as_str().expect("ca"));
    std::fs::write(
        state.join("sp.toml"),
        "heartbeat_secs = 1\ndead_after_secs = 4\nregistry_poll_millis = 100\n",
    )
    .expect("sp.toml");
    let names = ["t0", "t1", "t2"];
    let secrets: Vec<String> = names
        .iter()
        .map(|n| {
            rac_json(&["sp", "tenant", "add", n, "--state-dir", state_s, "--json"])["secret"]
                .as_str()
                .expect("secret")
                .to_string()
        })
        .collect();
    let addr = free_port();
    let addr_s = addr.to_string();
    let run = ["sp", "run", "--state-dir", state_s, "--listen", &addr_s];
    let (mut sp, _) = Proc::start(&run, "SP listening on");

    let base = Duration::from_millis(100);
    let max = Duration::from_secs(1);
    let mut tenants: Vec<TestTenant> = names
        .iter()
        .zip(&secrets)
        .map(|(name, secret)| TestTenant::start(redirector(name, secret, addr, &ca, base, max)))
        .collect();
    for t in &mut tenants {
        t.online().await;
    }
    let console = ConsoleClient::new(ConsoleConfig {
        route: Route::Direct(addr_s.clone()),
        trust: Trust::CaFile(ca.clone()),
        server_name: "localhost".into(),
        user: "admin".into(),
        keys: rac::net::console::ConsoleKeys::in_memory().expect("console key"),
    })
    .expect("client");
    console.login(&password).await.expect("login");

    // One session that ends cleanly, one left open.
    let mut done = console
        .open_session("t0", "echo", |_, _| {})
        .await
        .expect("session");
    done.stream.write_all(b"abc").await.expect("write");
    let mut buf = [0u8; 3];
    done.stream.read_exact(&mut buf).await.expect("echo");
    done.stream.shutdown().await.expect("half-close");
    ended_within(&mut done.stream).await;
    let registry = Registry::open(&state.join("registry.sqlite")).expect("registry");
    eventually(PATIENCE, "first session closed", async || {
        registry.audit_entries(1).expect("audit")[0].ended_at
    })
    .await;
    let mut live = console
        .open_session("t1", "echo", |_, _| {})
        .await
        .expect("session");
    live.stream.write_all(b"live").await.expect("write");
    let mut buf = [0u8; 4];
    live.stream.read_exact(&mut buf).await.expect("echo");

    let waits: Vec<_> = tenants.iter().map(record_waits).collect();
    sp.kill();
    ended_within(&mut live.stream).await;
    for t in &mut tenants {
        t.not_online().await;
    }
    // Down long enough for several retries each (ceilings 100, 200, 400, 800 ms...).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_sp, _) = Proc::start(&run, "SP listening on");
    for t in &mut tenants {
        t.online().await;
    }
    // The first wait after losing a connection that was up is spread over [0, 8 base] (every
    // tenant of a restarted SP loses it at the same moment); after it, exponential backoff
    // with jitter: every delay within [base/2, max]. The delays grew past the base, and no two
    // delays of any tenants are the same.
    let waits: Vec<Vec<Duration>> = waits
        .iter()
        .map(|w| w.lock().expect("waits").clone())
        .collect();
    eprintln!("reconnect delays: {waits:?}");
    let all: Vec<Duration> = waits.iter().flatten().copied().collect();
    assert!(waits.iter().all(|w| w.len() >= 2), "{waits:?}");
    let spread = (base * rac::net::backoff::LOSS_SPREAD).min(max);
    assert!(waits.iter().all(|w| w[0] <= spread), "{waits:?}");
    let mut later = waits.iter().flat_map(|w| &w[1..]);
    assert!(later.all(|d| *d >= base / 2 && *d <= max), "{all:?}");
    assert!(all.iter().any(|d| *d > base), "{all:?}");
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "jitter: {all:?}");

    // Nothing lost: the accounts, the token (no new login), both audit rows.
    for name in names {
        wait_status(&console, name, TenantStatus::Online).await;
    }
    // The sessions' rows (the tenants' additions by `rac sp tenant add` have rows of their own).
    let entries: Vec<_> = registry
        .audit_entries(10)
        .expect("audit")
        .into_iter()
        .filter(|e| e.service != "account")
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (interrupted, closed) = (&entries[0], &entries[1]);
    assert_eq!(closed.tenant, "t0");
    assert_eq!(closed.outcome, "closed");
    common::assert_carried(closed.bytes_to_tenant, 3);
    common::assert_carried(closed.bytes_from_tenant, 3);
    assert_eq!(interrupted.tenant, "t1");
    assert!(interrupted.ended_at.is_some());
    assert!(
        interrupted.outcome.starts_with("interrupted"),
        "{}",
        interrupted.outcome
    );
    let again = console
        .open_session("t1", "echo", |_, _| {})
        .await
        .expect("a session after the restart");
    echo_checked(again.stream, pattern(3, 1 << 20)).await;
}

fn redirector(
    name: &str,
    secret: &str,
    sp: SocketAddr,
    ca: &Path,
    base: Duration,
    max: Duration,
) -> RedirectorConfig {
    let mut services = BTreeMap::new();
    services.insert(
        "echo".to_string(),
        ServiceTarget::Local(rac::lab::echo_service()),
    );
    RedirectorConfig {
        tenant: name.into(),
        secret: secret.into(),
        endpoints: vec![sp.to_string()],
        trust: Trust::CaFile(ca.to_path_buf()),
        server_name: "localhost".into(),
        services,
        backoff_base: base,
        backoff_max: max,
        ..RedirectorConfig::defaults()
    }
}

/// A TCP relay that can turn into a black hole: after `cut`, the connections it carries stay
/// open but nothing more crosses them, both ways, and no FIN is ever sent (a peer that
/// vanished, a NAT that forgot the flow). Connections made after the cut are relayed again.
struct Blackhole {
    addr: SocketAddr,
    generation: watch::Sender<u64>,
}

impl Blackhole {
    async fn start(backend: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (generation, _) = watch::channel(0u64);
        let cuts = generation.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(backend).await else {
                    continue;
                };
                let mut cut = cuts.clone();
                let born = *cut.borrow_and_update();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let mut up = [0u8; 16 * 1024];
                    let mut down = [0u8; 16 * 1024];
                    let mut forwarding = true;
                    loop {
                        tokio::select! {
                            n = cr.read(&mut up) => {
                                let n = match n { Ok(n) if n > 0 => n, _ if forwarding => return, _ => 0 };
                                if forwarding && sw.write_all(&up[..n]).await.is_err() { return; }
                            },
                            n = sr.read(&mut down) => {
                                let n = match n { Ok(n) if n > 0 => n, _ if forwarding => return, _ => 0 };
                                if forwarding && cw.write_all(&down[..n]).await.is_err() { return; }
                            },
                            changed = cut.changed(), if forwarding => {
                                if changed.is_err() || *cut.borrow_and_update() > born {
                                    forwarding = false;
                                }
                            }
                        }
                        if !forwarding {
                            // Swallow whatever arrives, keep both sockets open, send nothing.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                });
            }
        });
        Blackhole { addr, generation }
    }

    /// Stops forwarding on every connection open now.
    fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// The path between tenant and SP goes silent without a FIN: both ends notice by heartbeat
/// within `dead_after_secs` (not before the peer has been silent that long), the SP lists the
/// tenant offline, and the tenant reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_detected_by_heartbeats() {
    let heartbeat = Duration::from_secs(1);
    let dead_after = Duration::from_secs(3);
    let sp = TestSp::start(rac::sp::config::SpConfig {
        heartbeat_secs: heartbeat.as_secs(),
        dead_after_secs: dead_after.as_secs(),
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let hole = Blackhole::start(sp.addr).await;
    let mut config = sp.tenant_config("acme", &secret);
    config.endpoints = vec![hole.addr.to_string()];
    let mut tenant = TestTenant::start(config);
    tenant.online().await;
    let console = sp.console().await;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session through the relay");
    session.stream.write_all(b"ok").await.expect("write");
    let mut buf = [0u8; 2];
    session.stream.read_exact(&mut buf).await.expect("echo");

    let cut_at = Instant::now();
    hole.cut();
    let state = tenant.not_online().await;
    let tenant_noticed = cut_at.elapsed();
    assert!(
        format!("{state:?}").contains("no heartbeat"),
        "the tenant noticed by heartbeat: {state:?}"
    );
    // Its last frame from the SP came at most one heartbeat before the cut.
    assert!(
        tenant_noticed + heartbeat >= dead_after,
        "noticed after only {tenant_noticed:?}"
    );
    wait_status(&console, "acme", TenantStatus::Offline).await;
    let sp_noticed = cut_at.elapsed();
    assert!(
        sp_noticed + heartbeat >= dead_after,
        "SP noticed after {sp_noticed:?}"
    );
    eprintln!("half-open noticed: tenant after {tenant_noticed:?}, SP after {sp_noticed:?}");

    // New connections through the relay work: the tenant is back by itself.
    tenant.online().await;
    wait_status(&console, "acme", TenantStatus::Online).await;
    let again = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session after the tenant came back");
    echo_checked(again.stream, pattern(5, 64 * 1024)).await;
}

/// A tenant redirector told to stop (SIGTERM, here its shutdown token) drains: the sessions
/// open then keep working for up to `drain_timeout` and are cut after it; when they end by
/// themselves sooner, it stops at once instead of waiting out the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_tenant_drains_its_sessions_then_cuts_them() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let echo = tcp_echo().await;
    let drain = Duration::from_secs(2);
    let mut config = sp.tenant_config("acme", &secret);
    config
        .services
        .insert("tcp-echo".into(), ServiceTarget::Tcp(echo.to_string()));
    config.drain_timeout = drain;
    let mut tenant = TestTenant::start(config.clone());
    tenant.online().await;
    let console = sp.console().await;
    let mut session = console
        .open_session("acme", "tcp-echo", |_, _| {})
        .await
        .expect("session")
        .stream;
    session.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    session.read_exact(&mut buf).await.expect("echo");

    tenant.shutdown.cancel();
    let stopped = Instant::now();
    // During the drain the session still carries data.
    session.write_all(b"during").await.expect("write");
    session
        .read_exact(&mut buf)
        .await
        .expect("echo while draining");
    assert_eq!(&buf, b"during");
    // Then it is cut, and the redirector stops.
    ended_within(&mut session).await;
    assert!(
        stopped.elapsed() >= drain,
        "the session was cut after {:?}, before the drain of {drain:?} ended",
        stopped.elapsed()
    );
    tokio::time::timeout(PATIENCE, &mut tenant.task)
        .await
        .expect("the redirector stopped after its drain")
        .expect("join")
        .expect("run");

    // A session that ends during the drain lets the redirector stop without waiting an hour.
    config.drain_timeout = Duration::from_secs(3600);
    let mut tenant = TestTenant::start(config);
    tenant.online().await;
    let session = console
        .open_session("acme", "tcp-echo", |_, _| {})
        .await
        .expect("session")
        .stream;
    tenant.shutdown.cancel();
    drop(session);
    tokio::time::timeout(PATIENCE, &mut tenant.task)
        .await
        .expect("the redirector stopped once its last session ended")
        .expect("join")
        .expect("run");
}
