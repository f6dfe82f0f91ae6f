//! Several SP nodes on one PostgreSQL registry, as an admin sets them up: `rac sp init
//! --postgres` on the first node, a copy of its state dir for the second, `rac sp run` on
//! both, against Debian's PostgreSQL started by the test on a loopback port.
//!
//! With `nats-server` too (the cluster bus), three nodes: a console on one opens a tenant held
//! by another, a node killed moves its tenants, a node without its bus refuses sessions.
//!
//! Skipped (with the reason printed) where PostgreSQL or nats-server is not installed, unless
//! `CI` is set.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{PATIENCE, Pipe, Proc, RAC, TestTenant, echo_checked, eventually, pattern};
use rac::cluster::testing::NatsServer;
use rac::net::console::{ConsoleClient, ConsoleConfig, ConsoleKeys};
use rac::net::dial::Route;
use rac::net::tenant_redirector::AgentState;
use rac::net::tenant_redirector::{RedirectorConfig, ServiceTarget};
use rac::net::tls::Trust;
use rac::sp::registry::local_server::{self, LocalPostgres};
use rac::wire::protocol::TenantStatus;
use tokio::io::AsyncReadExt;

fn postgres() -> Option<LocalPostgres> {
    if !local_server::available() && std::env::var_os("CI").is_none() {
        eprintln!("skipped: PostgreSQL's server programs are not installed");
        return None;
    }
    Some(LocalPostgres::start().expect("start PostgreSQL"))
}

fn rac(args: &[&str]) -> Command {
    let mut cmd = Command::new(RAC);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("RAC_POSTGRES_PASSWORD");
    cmd
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().expect("run rac");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let (ok, stdout, stderr) = output(cmd);
    assert!(ok, "{cmd:?} failed: {stderr}");
    stdout
}

/// `rac sp tenant add NAME` on the node at `state`; returns the tenant's secret.
fn add_tenant(state: &str, name: &str) -> String {
    let added = json(&run_ok(&mut rac(&[
        "sp",
        "tenant",
        "add",
        name,
        "--state-dir",
        state,
        "--json",
    ])));
    added["secret"].as_str().expect("secret").to_string()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `cp -a`: what an admin does to give a second node the first one's keys.
fn copy_state_dir(from: &Path, to: &Path, node: &str) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
    let config = to.join("sp.toml");
    let text = std::fs::read_to_string(&config).expect("sp.toml");
    assert!(text.contains("node = \"sp-a\""), "{text}");
    std::fs::write(
        &config,
        text.replace("node = \"sp-a\"", &format!("node = \"{node}\"")),
    )
    .expect("write sp.toml");
}

/// The tenant `acme` (offering `echo`) connected to the first of the nodes at `tenant_at`
/// that answers, online, and a console logged in at `console_at` as the first operator;
/// `state` is a node's state dir (for its CA).
async fn tenant_and_console(
    state: &Path,
    tenant_at: &[&str],
    console_at: &str,
    secret: &str,
    operator_password: &str,
) -> (TestTenant, std::sync::Arc<ConsoleClient>) {
    let ca = state.join("ca.pem");
    let tenant = echo_tenant("acme", secret, tenant_at, &ca).await;
    let console = console_at_node(&ca, console_at, operator_password).await;
    (tenant, console)
}

/// The tenant `name` offering `echo`, trying the nodes at `endpoints` in order, online. It
/// takes two sessions at once and rejects a third (`busy`).
async fn echo_tenant(name: &str, secret: &str, endpoints: &[&str], ca: &Path) -> TestTenant {
    let mut services = BTreeMap::new();
    services.insert(
        "echo".to_string(),
        ServiceTarget::Local(rac::lab::echo_service()),
    );
    let mut tenant = TestTenant::start(RedirectorConfig {
        tenant: name.into(),
        secret: secret.into(),
        endpoints: endpoints.iter().map(|n| n.to_string()).collect(),
        trust: Trust::CaFile(ca.to_path_buf()),
        server_name: "localhost".into(),
        services,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        identity: Some(common::wire::test_tenant_identity(name)),
        max_sessions: 2,
        ..RedirectorConfig::defaults()
    });
    tenant.online().await;
    tenant
}

/// A console logged in as the first operator at the node at `node`.
async fn console_at_node(
    ca: &Path,
    node: &str,
    operator_password: &str,
) -> std::sync::Arc<ConsoleClient> {
    let console = ConsoleClient::new(ConsoleConfig {
        route: Route::Direct(node.to_string()),
        trust: Trust::CaFile(ca.to_path_buf()),
        server_name: "localhost".into(),
        user: "admin".into(),
        keys: ConsoleKeys::in_memory().expect("console key"),
    })
    .expect("client");
    console.login(operator_password).await.expect("login");
    console
}

/// The first ended `echo` session with at least 1 MiB sent to the tenant, as
/// `rac sp audit` on the node at `state` reads it (waiting for it to be written).
async fn ended_session_row(state: &str) -> serde_json::Value {
    eventually(PATIENCE, "the session in the audit log", async || {
        let rows = json(&run_ok(&mut rac(&[
            "sp",
            "audit",
            "--state-dir",
            state,
            "--json",
        ])));
        rows.as_array().and_then(|rows| {
            rows.iter()
                .find(|r| {
                    r["service"] == "echo"
                        && r["outcome"] != "open"
                        && r["bytes_to_tenant"].as_u64() >= Some(1 << 20)
                })
                .cloned()
        })
    })
    .await
}

/// Opens a session to `acme`, disables the tenant with `rac sp tenant disable` on the node
/// at `state`, and checks that the session ends and the tenant is dropped.
async fn a_disable_ends_the_session(console: &ConsoleClient, tenant: &mut TestTenant, state: &str) {
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session before the disable");
    run_ok(&mut rac(&[
        "sp",
        "tenant",
        "disable",
        "acme",
        "--state-dir",
        state,
    ]));
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, session.stream.read(&mut buf))
        .await
        .expect("the session ends in time");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the session ended: {read:?}"
    );
    tenant.not_online().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_accounts_and_audit_and_a_change_on_one_ends_a_session_on_the_other() {
    let Some(pg) = postgres() else { return };
    pg.create_database("rac").expect("database");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("sp-a");
    let a_s = a.to_str().expect("utf8");
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, format!("{}\n", pg.password())).expect("password file");
    let url = pg.url("rac");

    // Mistakes an admin makes are named, and leave no state dir behind.
    let (ok, _, stderr) = output(
        rac(&["sp", "init", "--state-dir", a_s, "--node", "sp-a"])
            .args(["--postgres", &url])
            .env("RAC_POSTGRES_PASSWORD", "not the password"),
    );
    assert!(!ok);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!a.exists(), "a failed init leaves nothing");
    let with_password = url.replace("rac@", &format!("rac:{}@", pg.password()));
    let (ok, _, stderr) = output(&mut rac(&[
        "sp",
        "init",
        "--state-dir",
        a_s,
        "--postgres",
        &with_password,
    ]));
    assert!(!ok);
    assert!(stderr.contains("carries a password"), "{stderr}");
    assert!(!stderr.contains(pg.password()), "never echoed: {stderr}");

    let init = json(&run_ok(
        rac(&["sp", "init", "--state-dir", a_s, "--node", "sp-a", "--json"])
            .args(["--postgres", &url, "--postgres-password-file"])
            .arg(&password_file),
    ));
    let operator_password = init["password"].as_str().expect("password").to_string();
    assert!(
        !a.join("registry.sqlite").exists(),
        "the registry is in PostgreSQL"
    );

    // A second init on the same database would make a second CA: refused, with the way.
    let other = dir.path().join("other");
    let (ok, _, stderr) = output(
        rac(&["sp", "init", "--state-dir", other.to_str().expect("utf8")])
            .args(["--node", "sp-x", "--postgres", &url])
            .env("RAC_POSTGRES_PASSWORD", pg.password()),
    );
    assert!(!ok);
    assert!(
        stderr.contains("already holds a registry") && stderr.contains("copy"),
        "{stderr}"
    );

    let b = dir.path().join("sp-b");
    let b_s = b.to_str().expect("utf8");
    copy_state_dir(&a, &b, "sp-b");

    // A tenant added on node A is listed on node B.
    let secret = add_tenant(a_s, "acme");
    let listed = json(&run_ok(&mut rac(&[
        "sp",
        "tenant",
        "list",
        "--state-dir",
        b_s,
        "--json",
    ])));
    assert_eq!(listed[0]["name"], "acme", "{listed}");

    let (_node_a, line) = Proc::spawn_until(
        &mut rac(&["sp", "run", "--state-dir", a_s, "--listen", "127.0.0.1:0"]),
        "SP listening on",
        Pipe::Stderr,
    );
    let addr_a = line.rsplit(' ').next().expect("address").to_string();
    let (_node_b, _) = Proc::spawn_until(
        &mut rac(&["sp", "run", "--state-dir", b_s, "--listen", "127.0.0.1:0"]),
        "SP listening on",
        Pipe::Stderr,
    );

    // The tenant and a console on node A; data through it intact.
    let (mut tenant, console) =
        tenant_and_console(&a, &[&addr_a], &addr_a, &secret, &operator_password).await;
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    echo_checked(session.stream, pattern(7, 1 << 20)).await;

    // The audit row node A wrote is read on node B.
    assert_eq!(ended_session_row(b_s).await["tenant"], "acme");

    // Disabled on node B: node A drops the tenant and the session it holds.
    a_disable_ends_the_session(&console, &mut tenant, b_s).await;
    let refused = console.open_session("acme", "echo", |_, _| {}).await;
    assert!(refused.is_err(), "a disabled tenant cannot be opened");
}

/// A hand-made tenant `beta` on the node at `owner` offers one more service and withdraws
/// its consent after connecting; `console`, on another node, sees both.
async fn a_status_change_reaches_the_other_nodes(
    state: &Path,
    owner: &str,
    console: &ConsoleClient,
) {
    use rac::wire::protocol::{ControlMsg, TenantInfo};
    let state_dir = state.to_str().expect("utf8");
    let secret = add_tenant(state_dir, "beta");
    let tls = rac::net::tls::TlsClient::new(&Trust::CaFile(state.join("ca.pem")), "localhost")
        .expect("TLS client");
    let tcp = tokio::net::TcpStream::connect(owner)
        .await
        .expect("connect");
    let mut beta = tls.handshake(tcp).await.expect("TLS");
    common::wire::control_hello(&mut beta, "beta", &secret, "hand-made/1", &["echo"]).await;
    let row = async |want: &dyn Fn(&TenantInfo) -> bool| {
        let list = console.tenants().await.ok()?;
        list.into_iter().find(|t| t.name == "beta" && want(t))
    };
    eventually(
        PATIENCE,
        "beta listed as its node admitted it",
        async || row(&|t| t.status == TenantStatus::Online && t.provider_access).await,
    )
    .await;
    let status = ControlMsg::Status {
        services: vec!["echo".into(), "files".into()],
        provider_access: false,
    };
    rac::wire::frame::write_frame(&mut beta, &status)
        .await
        .expect("status");
    let changed = eventually(
        PATIENCE,
        "beta's new status on the other node",
        async || row(&|t| !t.provider_access).await,
    )
    .await;
    assert_eq!(changed.services, ["echo", "files"], "{changed:?}");
    assert_eq!(changed.status, TenantStatus::Online, "{changed:?}");
}

/// `rac sp init --postgres` into `dir` as node `sp-a`, the password from a file, with the
/// cluster bus at `nats` if given; returns the operator's password.
fn init_node(pg: &LocalPostgres, db: &str, dir: &Path, nats: Option<&str>) -> String {
    pg.create_database(db).expect("database");
    let password_file = dir.with_extension("pg-password");
    std::fs::write(&password_file, pg.password()).expect("password file");
    let mut init = rac(&["sp", "init", "--node", "sp-a", "--json", "--state-dir"]);
    init.arg(dir)
        .args(["--postgres", &pg.url(db), "--postgres-password-file"])
        .arg(&password_file);
    if let Some(nats) = nats {
        init.args(["--nats", nats]);
    }
    let init = json(&run_ok(&mut init));
    init["password"].as_str().expect("password").to_string()
}

/// `rac sp run` on `state` with an admin listener; returns the process, the SP address and
/// the admin address (both printed on stderr).
fn run_node_with_admin(state: &str) -> (Proc, String, String) {
    use std::io::BufRead;
    let mut child = rac(&[
        "sp",
        "run",
        "--state-dir",
        state,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn rac sp run");
    let stderr = child.stderr.take().expect("stderr");
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // RAC_TEST_NODE_LOG=1 shows the node's log beside the test's output.
    let show = std::env::var_os("RAC_TEST_NODE_LOG").is_some();
    let name = Path::new(state)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if show {
                eprintln!("[{name}] {line}");
            }
            let _ = tx.send(line);
        }
    });
    let (mut sp, mut admin) = (None, None);
    while sp.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("the node prints its addresses");
        let last = line.rsplit(' ').next().unwrap_or_default().to_string();
        if line.contains("SP admin listening on") {
            admin = Some(last);
        } else if line.contains("SP listening on") {
            sp = Some(last);
        }
    }
    (proc, sp.expect("sp"), admin.expect("admin"))
}

/// `/readyz`: its status and body.
async fn readyz(http: &reqwest::Client, admin: &str) -> (u16, String) {
    match http.get(format!("http://{admin}/readyz")).send().await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_postgres_says_so_refuses_sessions_and_recovers() {
    let Some(mut pg) = postgres() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("sp-a");
    let a_s = a.to_str().expect("utf8");
    let operator_password = init_node(&pg, "rac", &a, None);
    let secret = add_tenant(a_s, "acme");
    let (_node, addr, admin) = run_node_with_admin(a_s);
    let (_tenant, console) =
        tenant_and_console(&a, &[&addr], &addr, &secret, &operator_password).await;
    let http = reqwest::Client::new();
    eventually(PATIENCE, "ready", async || {
        (readyz(&http, &admin).await.0 == 200).then_some(())
    })
    .await;

    pg.stop().expect("stop PostgreSQL");
    let body = eventually(PATIENCE, "/readyz says the registry is gone", async || {
        let (status, body) = readyz(&http, &admin).await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("registry"), "{body}");
    let refused = console.open_session("acme", "echo", |_, _| {}).await;
    let message = match refused {
        Ok(_) => panic!("a session was opened on rights the node cannot read"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("cannot read its registry"), "{message}");

    pg.restart().expect("restart PostgreSQL");
    eventually(PATIENCE, "ready again", async || {
        (readyz(&http, &admin).await.0 == 200).then_some(())
    })
    .await;
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session once the database is back");
    echo_checked(session.stream, pattern(9, 64 * 1024)).await;
}

/// Whether the console's node lists `tenant` online.
async fn listed_online(console: &ConsoleClient, tenant: &str) -> bool {
    console.tenants().await.is_ok_and(|list| {
        list.iter()
            .any(|t| t.name == tenant && t.status == TenantStatus::Online)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_open_tenants_held_by_another_node_and_move_a_dead_nodes_tenants() {
    let Some(pg) = postgres() else { return };
    let Some(mut nats) = NatsServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let state = |node: &str| dir.path().join(node);
    let operator_password = init_node(&pg, "rac", &state("sp-a"), Some(&nats.url()));
    let text = std::fs::read_to_string(state("sp-a").join("sp.toml")).expect("sp.toml");
    assert!(text.contains("nats_urls"), "{text}");
    copy_state_dir(&state("sp-a"), &state("sp-b"), "sp-b");
    copy_state_dir(&state("sp-a"), &state("sp-c"), "sp-c");
    let path = |node: &str| state(node).to_str().expect("utf8").to_string();
    let secret = add_tenant(&path("sp-a"), "acme");
    let (_a, addr_a, admin_a) = run_node_with_admin(&path("sp-a"));
    let (mut node_b, addr_b, _) = run_node_with_admin(&path("sp-b"));
    let (_c, addr_c, _) = run_node_with_admin(&path("sp-c"));

    // The tenant reaches node B (C is its second address); the console is on node A.
    let (mut tenant, console) = tenant_and_console(
        &state("sp-a"),
        &[&addr_b, &addr_c],
        &addr_a,
        &secret,
        &operator_password,
    )
    .await;
    assert_eq!(
        *tenant.state.borrow(),
        AgentState::Online {
            endpoint: addr_b.clone()
        }
    );
    eventually(
        PATIENCE,
        "node A lists the tenant node B holds",
        async || listed_online(&console, "acme").await.then_some(()),
    )
    .await;
    a_status_change_reaches_the_other_nodes(&state("sp-a"), &addr_b, &console).await;
    // A session from A to the tenant held by B: B sends open_data, the tenant's data channel
    // reaches B, B forwards it to A. Data intact both ways.
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session across nodes");
    let second = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a second session across nodes");
    // The tenant rejects a third (its session cap): B passes the tenant's reason on to A,
    // and the console hears it, not a timeout.
    let rejected = std::time::Instant::now();
    let message = match console.open_session("acme", "echo", |_, _| {}).await {
        Ok(_) => panic!("a third session opened past the tenant's cap of two"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("session cap"), "{message}");
    println!(
        "a rejection across nodes reached the console in {:?}",
        rejected.elapsed()
    );
    drop(second);
    echo_checked(session.stream, pattern(3, 1 << 20)).await;
    // Node A audits it, with the bytes it relayed; read on node C.
    assert_eq!(ended_session_row(&path("sp-c")).await["tenant"], "acme");

    // Disabled on node C: the session held through A and B ends, the tenant is dropped.
    a_disable_ends_the_session(&console, &mut tenant, &path("sp-c")).await;
    run_ok(&mut rac(&[
        "sp",
        "tenant",
        "enable",
        "acme",
        "--state-dir",
        &path("sp-c"),
    ]));
    tenant.online().await;
    eventually(PATIENCE, "node A lists the tenant again", async || {
        listed_online(&console, "acme").await.then_some(())
    })
    .await;

    // kill -9 of the node holding the tenant: it reconnects to C, and A opens it there.
    let killed = std::time::Instant::now();
    node_b.kill();
    let moved = eventually(PATIENCE, "the tenant online through node C", async || {
        let state = tenant.state.borrow().clone();
        (state
            == AgentState::Online {
                endpoint: addr_c.clone(),
            }
            && listed_online(&console, "acme").await)
            .then(|| killed.elapsed())
    })
    .await;
    println!("tenant online through another node {moved:?} after kill -9");
    assert!(moved < Duration::from_secs(10), "{moved:?}");
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session after the move");
    echo_checked(session.stream, pattern(4, 64 * 1024)).await;

    // NATS lost: node A says so and refuses sessions, then serves again once it is back.
    let http = reqwest::Client::new();
    nats.kill();
    let body = eventually(PATIENCE, "/readyz names the bus", async || {
        let (status, body) = readyz(&http, &admin_a).await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("cluster bus"), "{body}");
    let message = match console.open_session("acme", "echo", |_, _| {}).await {
        Ok(_) => panic!("a session opened while the node cannot see its cluster"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("cannot reach its cluster"), "{message}");
    nats.restart().await;
    eventually(PATIENCE, "ready again", async || {
        (readyz(&http, &admin_a).await.0 == 200).then_some(())
    })
    .await;
    let session = eventually(PATIENCE, "a session once the bus is back", async || {
        console.open_session("acme", "echo", |_, _| {}).await.ok()
    })
    .await;
    echo_checked(session.stream, pattern(5, 64 * 1024)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_sends_its_tenants_away_at_its_drain_rate() {
    const TENANTS: usize = 9;
    const RATE: u32 = 4;
    let Some(pg) = postgres() else { return };
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let state = |node: &str| dir.path().join(node);
    let path = |node: &str| state(node).to_str().expect("utf8").to_string();
    let operator_password = init_node(&pg, "rac", &state("sp-a"), Some(&nats.url()));
    copy_state_dir(&state("sp-a"), &state("sp-b"), "sp-b");
    // Node A drains slowly enough to be seen: RATE tenants a second.
    let config = state("sp-a").join("sp.toml");
    let text = std::fs::read_to_string(&config).expect("sp.toml");
    let text = text.replace("drain_rate = 500", &format!("drain_rate = {RATE}"));
    assert!(text.contains(&format!("drain_rate = {RATE}")), "{text}");
    std::fs::write(&config, text).expect("write sp.toml");
    let mut secrets = Vec::new();
    for i in 0..TENANTS {
        secrets.push(add_tenant(&path("sp-a"), &format!("t{i}")));
    }
    let (mut node_a, addr_a, admin_a) = run_node_with_admin(&path("sp-a"));
    let (_b, addr_b, _) = run_node_with_admin(&path("sp-b"));

    // Every tenant on A first (B is each one's second address).
    let ca = state("sp-a").join("ca.pem");
    let mut tenants = Vec::new();
    for (i, secret) in secrets.iter().enumerate() {
        tenants.push(echo_tenant(&format!("t{i}"), secret, &[&addr_a, &addr_b], &ca).await);
    }
    // A console on B with a session to t0, which A holds: forwarded through A.
    let console = console_at_node(&ca, &addr_b, &operator_password).await;
    eventually(PATIENCE, "B lists t0, held by A", async || {
        listed_online(&console, "t0").await.then_some(())
    })
    .await;
    let session = console
        .open_session("t0", "echo", |_, _| {})
        .await
        .expect("a session through A");

    // SIGTERM: A stops listening at once, says so in /readyz, and sends its tenants to B
    // at RATE a second.
    node_a.signal("TERM");
    let http = reqwest::Client::new();
    let on_b = AgentState::Online {
        endpoint: addr_b.clone(),
    };
    // Each tenant's move is timed as it happens, all watched at once.
    let watches: Vec<_> = tenants
        .iter()
        .map(|tenant| {
            let mut state = tenant.state.clone();
            let on_b = on_b.clone();
            tokio::spawn(async move {
                tokio::time::timeout(PATIENCE, state.wait_for(|s| *s == on_b))
                    .await
                    .expect("the tenant moves to B in time")
                    .map(drop)
                    .expect("state channel");
                std::time::Instant::now()
            })
        })
        .collect();
    let mut moved_at = Vec::new();
    for watch in watches {
        moved_at.push(watch.await.expect("watch task"));
    }
    let first = moved_at.iter().min().expect("moves");
    let last = moved_at.iter().max().expect("moves");
    let spread = last.duration_since(*first);
    println!("{TENANTS} tenants moved over {spread:?} at {RATE} a second");
    // (TENANTS - 1) intervals of 1/RATE at least; a slow machine only spreads them more.
    let least = Duration::from_secs(1) * (TENANTS as u32 - 1) / RATE;
    assert!(spread >= least.mul_f64(0.8), "{spread:?} < {least:?}");
    let (status, body) = readyz(&http, &admin_a).await;
    assert!(status == 503 || status == 0, "{status} {body}");

    // The session forwarded through A goes on while A drains; A exits once it ends.
    echo_checked(session.stream, pattern(6, 64 * 1024)).await;
    let exited = node_a.exited();
    assert!(exited.success(), "{exited:?}");
    for i in 0..TENANTS {
        assert!(listed_online(&console, &format!("t{i}")).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_loses_its_tenants_within_the_dead_peer_timeout() {
    let Some(pg) = postgres() else { return };
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    // Heartbeats every second, a peer dead after three: a stopped node is found out soon.
    const DEAD_AFTER: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = |node: &str| dir.path().join(node);
    let operator_password = init_node(&pg, "rac", &state("sp-a"), Some(&nats.url()));
    let config = state("sp-a").join("sp.toml");
    let text = std::fs::read_to_string(&config).expect("sp.toml");
    let mut set = 0;
    let text: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("heartbeat_secs") {
                set += 1;
                "heartbeat_secs = 1".to_string()
            } else if line.starts_with("dead_after_secs") {
                set += 1;
                format!("dead_after_secs = {}", DEAD_AFTER.as_secs())
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(set, 2, "sp.toml sets both: {text:?}");
    std::fs::write(&config, text.join("\n")).expect("write sp.toml");
    copy_state_dir(&state("sp-a"), &state("sp-b"), "sp-b");
    let path = |node: &str| state(node).to_str().expect("utf8").to_string();
    let secret = add_tenant(&path("sp-a"), "acme");
    let (node_a, addr_a, _) = run_node_with_admin(&path("sp-a"));
    let (_b, addr_b, _) = run_node_with_admin(&path("sp-b"));
    let (tenant, console_b) = tenant_and_console(
        &state("sp-a"),
        &[&addr_a, &addr_b],
        &addr_b,
        &secret,
        &operator_password,
    )
    .await;
    eventually(PATIENCE, "B lists the tenant A holds", async || {
        listed_online(&console_b, "acme").await.then_some(())
    })
    .await;

    // SIGSTOP: A's sockets stay open but nothing answers on them. The tenant's heartbeat
    // finds it dead and reconnects to B, which takes the tenant over from the silent owner.
    let stopped = std::time::Instant::now();
    node_a.signal("STOP");
    let on_b = AgentState::Online {
        endpoint: addr_b.clone(),
    };
    let moved = eventually(PATIENCE, "the tenant online through node B", async || {
        (*tenant.state.borrow() == on_b && listed_online(&console_b, "acme").await)
            .then(|| stopped.elapsed())
    })
    .await;
    println!("tenant online through B {moved:?} after SIGSTOP of its node");
    assert!(moved < DEAD_AFTER + Duration::from_secs(10), "{moved:?}");
    let session = console_b
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session once B holds the tenant");
    echo_checked(session.stream, pattern(7, 64 * 1024)).await;

    // A resumes: it finds its claim replaced, and lists the tenant as B's, not its own
    // (a session from A goes through B).
    node_a.signal("CONT");
    let console_a =
        console_at_node(&state("sp-a").join("ca.pem"), &addr_a, &operator_password).await;
    let session = eventually(PATIENCE, "a session from A once it resumed", async || {
        console_a.open_session("acme", "echo", |_, _| {}).await.ok()
    })
    .await;
    echo_checked(session.stream, pattern(8, 64 * 1024)).await;
    assert_eq!(*tenant.state.borrow(), on_b, "the tenant stayed on B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rac_sp_drain_sends_a_nodes_tenants_away_and_stops_it() {
    // A single SP is refused before anything is sent: its tenants have nowhere to go.
    let single = tempfile::tempdir().expect("tempdir");
    let single_dir = single.path().join("sp");
    run_ok(rac(&["sp", "init", "--json", "--state-dir"]).arg(&single_dir));
    let (ok, _, err) = output(
        rac(&["sp", "drain", "--state-dir"])
            .arg(&single_dir)
            .env("RAC_ADMIN_TOKEN", "x"),
    );
    assert!(!ok && err.contains("not a cluster node"), "{err}");

    let Some(pg) = postgres() else { return };
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let state = |node: &str| dir.path().join(node);
    let operator_password = init_node(&pg, "rac", &state("sp-a"), Some(&nats.url()));
    copy_state_dir(&state("sp-a"), &state("sp-b"), "sp-b");
    let path = |node: &str| state(node).to_str().expect("utf8").to_string();
    let mut secrets = Vec::new();
    for name in ["t0", "t1"] {
        secrets.push(add_tenant(&path("sp-a"), name));
    }
    let token = |name: &str, read_only: bool| {
        let mut cmd = rac(&["sp", "admin-token", "create", name, "--json", "--state-dir"]);
        cmd.arg(path("sp-a"));
        if read_only {
            cmd.arg("--read-only");
        }
        json(&run_ok(&mut cmd))["token"]
            .as_str()
            .expect("token")
            .to_string()
    };
    let (writer, reader) = (token("drainer", false), token("watcher", true));
    let (mut node_a, addr_a, admin_a) = run_node_with_admin(&path("sp-a"));
    let (_b, addr_b, _) = run_node_with_admin(&path("sp-b"));
    let ca = state("sp-a").join("ca.pem");
    let mut tenants = Vec::new();
    for (name, secret) in ["t0", "t1"].iter().zip(&secrets) {
        tenants.push(echo_tenant(name, secret, &[&addr_a, &addr_b], &ca).await);
    }
    let drain = move |token: Option<String>| {
        let mut cmd = rac(&[
            "sp",
            "drain",
            "--state-dir",
            &path("sp-a"),
            "--admin",
            &admin_a,
        ]);
        cmd.env_remove("RAC_ADMIN_TOKEN");
        if let Some(token) = token {
            cmd.env("RAC_ADMIN_TOKEN", token);
        }
        tokio::task::spawn_blocking(move || output(&mut cmd))
    };

    // Without a token, and with a read-only one: refused, and the node goes on serving.
    let (ok, _, err) = drain.clone()(None).await.expect("rac sp drain");
    assert!(!ok && err.contains("an admin token is needed"), "{err}");
    let (ok, _, err) = drain.clone()(Some(reader)).await.expect("rac sp drain");
    assert!(!ok && err.contains("HTTP 403"), "{err}");
    let on_a = AgentState::Online {
        endpoint: addr_a.clone(),
    };
    assert!(tenants.iter().all(|t| *t.state.borrow() == on_a));

    // With a read-write token: followed to the end, the tenants on B, the node gone.
    let (ok, out, err) = drain(Some(writer)).await.expect("rac sp drain");
    assert!(ok, "{err}");
    assert!(out.contains("node sp-a is draining"), "{out}");
    assert!(out.contains("node sp-a drained and stopped"), "{out}");
    assert!(node_a.exited().success());
    let on_b = AgentState::Online {
        endpoint: addr_b.clone(),
    };
    for tenant in &mut tenants {
        let mut state = tenant.state.clone();
        tokio::time::timeout(PATIENCE, state.wait_for(|s| *s == on_b))
            .await
            .expect("the tenant moves to B")
            .expect("state channel");
    }
    let console = console_at_node(&ca, &addr_b, &operator_password).await;
    let session = console
        .open_session("t1", "echo", |_, _| {})
        .await
        .expect("a session through B after the drain");
    echo_checked(session.stream, pattern(9, 64 * 1024)).await;
    // The request is audited with the token's name.
    let audit = run_ok(rac(&["sp", "audit", "--json", "--state-dir"]).arg(state("sp-b")));
    assert!(audit.contains("token drainer: node drain"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flapping_between_two_nodes_is_never_held_by_both_for_long() {
    let Some(pg) = postgres() else { return };
    let Some(nats) = NatsServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let state = |node: &str| dir.path().join(node);
    let operator_password = init_node(&pg, "rac", &state("sp-a"), Some(&nats.url()));
    copy_state_dir(&state("sp-a"), &state("sp-b"), "sp-b");
    let path = |node: &str| state(node).to_str().expect("utf8").to_string();
    let secret = add_tenant(&path("sp-a"), "acme");
    let token = json(&run_ok(&mut rac(&[
        "sp",
        "admin-token",
        "create",
        "watcher",
        "--read-only",
        "--json",
        "--state-dir",
        &path("sp-a"),
    ])))["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (_a, addr_a, admin_a) = run_node_with_admin(&path("sp-a"));
    let (_b, addr_b, admin_b) = run_node_with_admin(&path("sp-b"));
    let http = reqwest::Client::new();
    // How many control connections a node holds now (`tenants_online` of /v1/server).
    let held = async |admin: &str| -> u64 {
        let server: serde_json::Value = http
            .get(format!("http://{admin}/v1/server"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /v1/server")
            .json()
            .await
            .expect("JSON");
        server["tenants_online"].as_u64().expect("tenants_online")
    };

    // Two redirectors with the same credentials, one trying A first and the other B: each
    // new connection replaces the other's, on the other node, and the replaced one comes
    // back after its longest backoff (500 ms), so the tenant flaps between the nodes.
    let ca = state("sp-a").join("ca.pem");
    let mut x = echo_tenant("acme", &secret, &[&addr_a, &addr_b], &ca).await;
    let y = echo_tenant("acme", &secret, &[&addr_b, &addr_a], &ca).await;
    let (mut moves, mut holder) = (0, None);
    let (mut both_since, mut longest_both) = (None::<std::time::Instant>, Duration::ZERO);
    let run = std::time::Instant::now();
    while run.elapsed() < Duration::from_secs(6) {
        let (a, b) = tokio::join!(held(&admin_a), held(&admin_b));
        assert!(
            a <= 1 && b <= 1,
            "a node holds two connections of one tenant: {a} {b}"
        );
        if a + b > 1 {
            let since = *both_since.get_or_insert_with(std::time::Instant::now);
            longest_both = longest_both.max(since.elapsed());
        } else {
            both_since = None;
        }
        let now = match (a, b) {
            (1, 0) => Some("A"),
            (0, 1) => Some("B"),
            _ => None,
        };
        if now.is_some() && now != holder {
            moves += 1;
            holder = now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the tenant moved {moves} times in 6 s; both nodes held it for at most {longest_both:?} at a time"
    );
    assert!(moves >= 3, "the tenant did not flap: {moves} moves");
    // Both may hold it while a takeover's notice travels (milliseconds); a node that kept a
    // replaced connection would hold it until the end.
    assert!(longest_both < Duration::from_secs(3), "{longest_both:?}");

    // At rest: one redirector left, one node holds the tenant, and a console on either
    // node opens it.
    y.shutdown.cancel();
    drop(y);
    x.online().await;
    eventually(PATIENCE, "exactly one node holds the tenant", async || {
        let (a, b) = tokio::join!(held(&admin_a), held(&admin_b));
        (a + b == 1).then_some(())
    })
    .await;
    for addr in [&addr_a, &addr_b] {
        let console = console_at_node(&ca, addr, &operator_password).await;
        let session = eventually(PATIENCE, "a session at rest", async || {
            console.open_session("acme", "echo", |_, _| {}).await.ok()
        })
        .await;
        echo_checked(session.stream, pattern(10, 64 * 1024)).await;
    }
}
