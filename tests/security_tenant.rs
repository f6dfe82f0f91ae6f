//! Issue 14, the tenant side and the state files: what an SP can make a tenant redirector do
//! (a session cap, the local service only after `ready`, a checked gateway pool, consent
//! withdrawn while running), the SP's state dir permissions, and a shutdown that a tenant
//! which stopped reading cannot hold.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fake_sp::{FakeSp, FakeStream};
use common::{PATIENCE, Proc, RAC, TestSp, eventually, quick_config, tcp_echo};
use rac::net::console::ConsoleError;
use rac::net::pushed_pool::PushedPool;
use rac::net::tenant_redirector::ServiceTarget;
use rac::net::tls::{TlsClient, Trust};
use rac::sp::config::SpConfig;
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{ControlMsg, ErrorCode, Role, SessionMsg, TenantStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn refused(err: ConsoleError) -> (ErrorCode, String) {
    match err {
        ConsoleError::Refused { code, message } => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Writes `data` on a session and reads it back.
async fn echo_once<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
) {
    s.write_all(data).await.expect("write");
    s.flush().await.expect("flush");
    let mut back = vec![0; data.len()];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_tenant_redirectors_cap_are_refused_busy() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("capped");
    let mut config = sp.tenant_config("capped", &secret);
    config.max_sessions = 2;
    let mut tenant = common::TestTenant::start(config);
    tenant.online().await;
    let console = sp.console().await;

    let mut first = console
        .open_session("capped", "echo", |_, _| {})
        .await
        .expect("first");
    let mut second = console
        .open_session("capped", "echo", |_, _| {})
        .await
        .expect("second");
    echo_once(&mut first.stream, b"one").await;
    echo_once(&mut second.stream, b"two").await;
    let (code, message) = refused(
        console
            .open_session("capped", "echo", |_, _| {})
            .await
            .err()
            .expect("the third is over the cap"),
    );
    assert_eq!(code, ErrorCode::Busy, "{message}");
    assert!(message.contains("session cap"), "{message}");
    echo_once(&mut first.stream, b"the open ones carry on").await;

    // A session that ends gives its slot back.
    drop(first);
    let mut third = eventually(PATIENCE, "a slot frees up", async || {
        match console.open_session("capped", "echo", |_, _| {}).await {
            Ok(session) => Some(session),
            Err(e) => {
                assert_eq!(refused(e).0, ErrorCode::Busy);
                None
            }
        }
    })
    .await;
    echo_once(&mut third.stream, b"three").await;
}

/// Sends a ping and waits for its pong: every frame sent before it has been handled.
async fn round_trip(control: &mut FakeStream, seq: u64) {
    write_frame(control, &ControlMsg::Ping { seq, rtt_us: None })
        .await
        .expect("ping");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let msg: ControlMsg = read_frame(control, MAX_FRAME_LEN)
                .await
                .expect("read")
                .expect("open");
            if msg == (ControlMsg::Pong { seq }) {
                return;
            }
        }
    })
    .await
    .expect("pong in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_service_is_connected_only_after_the_sps_ready() {
    let fake = FakeSp::start().await;
    let local = std::net::TcpListener::bind("127.0.0.1:0").expect("bind local service");
    local.set_nonblocking(true).expect("nonblocking");
    let local_addr = local.local_addr().expect("addr");
    let mut services = BTreeMap::new();
    services.insert(
        "svc".to_string(),
        ServiceTarget::Tcp(local_addr.to_string()),
    );
    let tenant = common::TestTenant::start(fake.tenant_config(services));
    let mut control = fake.control(Vec::new()).await;
    let console = rac::net::tls::e2e::Identity::generate().expect("console key");
    // The console's ClientHello comes ahead in `open_data` (as the real SP passes it to a
    // tenant that takes it): the tenant answers it at once, and still dials nothing.
    let dialing = rac::net::tls::e2e::Dialing::start(&console).expect("client hello");
    write_frame(
        &mut control,
        &ControlMsg::OpenData {
            session_id: "s1".into(),
            nonce: "n1".into(),
            service: "svc".into(),
            grant: fake.grant("s1", "svc", &console.fingerprint_text()),
            client_hello: Some(hex::encode(dialing.client_hello())),
        },
    )
    .await
    .expect("open_data");
    let (mut data, hello) = fake.accept().await;
    assert!(matches!(hello.role, Role::TenantData { .. }), "{hello:?}");
    // The data channel is open and has said hello, but no `ready` yet: the local service
    // has not been dialled. (Before the fix it was dialled together with the data channel,
    // and a loopback connect lands in the accept queue well before a TLS handshake ends.)
    match local.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the local service was connected from {from} before ready"),
        Err(e) => panic!("accept: {e}"),
    }
    write_frame(
        &mut data,
        &SessionMsg::Ready {
            session_id: "s1".into(),
            tenant_key: None,
            client_hello_sent: false,
        },
    )
    .await
    .expect("ready");
    // After `ready` the console's end-to-end handshake comes first; only then is the local
    // service dialled.
    let raw = rac::net::tls::e2e::leave_server(data).expect("boundary");
    let (mut inner, _) = dialing
        .finish(raw, None, true)
        .await
        .expect("end-to-end handshake");
    let local = TcpListener::from_std(local).expect("tokio listener");
    let (mut tcp, _) = tokio::time::timeout(PATIENCE, local.accept())
        .await
        .expect("the local service is dialled after ready")
        .expect("accept");
    inner.write_all(b"after ready").await.expect("write");
    inner.flush().await.expect("flush");
    let mut got = [0u8; 11];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut got))
        .await
        .expect("bytes in time")
        .expect("read");
    assert_eq!(&got, b"after ready");
    drop(tenant);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_gateway_pool_from_the_sp_is_ignored_whole() {
    let fake = FakeSp::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pool_file = dir.path().join("tenant.toml.gateways.json");
    let mut config = fake.tenant_config(BTreeMap::new());
    config.pool_file = Some(pool_file.clone());
    let _tenant = common::TestTenant::start(config);
    let good = vec![
        "127.0.0.1:7001".to_string(),
        "gw.example.net:6180".to_string(),
    ];
    let mut control = fake.control(good.clone()).await;
    round_trip(&mut control, 1).await;
    let remembered = |path: &Path| -> Vec<String> {
        PushedPool::load(path).expect("a valid pool file").gateways
    };
    assert_eq!(remembered(&pool_file), good);

    let too_many: Vec<String> = (0..17).map(|i| format!("10.0.0.{i}:6180")).collect();
    let bad_pools = [
        too_many,
        vec!["127.0.0.1:7002".into(), "https://evil.example/x:443".into()],
        vec!["evil.example/path:443".into()],
        vec!["evil example:443".into()],
        vec!["evil.example:0".into()],
        vec!["evil.example:70000".into()],
        vec![format!("{}:443", "a".repeat(300))],
    ];
    for (i, pool) in bad_pools.into_iter().enumerate() {
        write_frame(
            &mut control,
            &ControlMsg::Gateways {
                gateways: pool.clone(),
            },
        )
        .await
        .expect("gateways");
        round_trip(&mut control, 10 + i as u64).await;
        assert_eq!(remembered(&pool_file), good, "after {pool:?}");
    }
    // A good pool is still taken.
    let next = vec!["127.0.0.1:7003".to_string()];
    write_frame(
        &mut control,
        &ControlMsg::Gateways {
            gateways: next.clone(),
        },
    )
    .await
    .expect("gateways");
    round_trip(&mut control, 99).await;
    assert_eq!(remembered(&pool_file), next);
}

/// A pushed gateway that never answers is forgotten once it has failed every dial for
/// `forget_gateway_after` (a day; a second here): the tenant stops dialling it and the pool
/// file says so. A tenant with `follow_gateway_pool = false` never takes the SP's pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_gateway_unreachable_for_a_day_is_forgotten() {
    let fake = FakeSp::start().await;
    let sp_addr = fake.listener.local_addr().expect("addr").to_string();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pool_file = dir.path().join("tenant.toml.gateways.json");
    let mut config = fake.tenant_config(BTreeMap::new());
    config.pool_file = Some(pool_file.clone());
    config.forget_gateway_after = Duration::from_secs(1);
    let tenant = common::TestTenant::start(config);
    let mut control = fake.control(vec![dead.clone()]).await;
    round_trip(&mut control, 1).await;
    assert_eq!(
        PushedPool::load(&pool_file).expect("pool").gateways,
        vec![dead.clone()]
    );
    // The SP goes away: every dial now fails, at the SP and at the pushed gateway.
    drop(control);
    drop(fake);
    let forgotten = eventually(PATIENCE, "the dead gateway forgotten", async || {
        PushedPool::load(&pool_file).filter(|pool| pool.forgotten.contains_key(&dead))
    })
    .await;
    assert!(forgotten.gateways.is_empty(), "{forgotten:?}");
    assert!(
        !forgotten.forgotten.contains_key(&sp_addr),
        "the tenant's own endpoint is never forgotten: {forgotten:?}"
    );
    drop(tenant);

    // Not following: the pushed pool is neither dialled nor written down.
    let fake = FakeSp::start().await;
    let own_file = dir.path().join("own.toml.gateways.json");
    let mut config = fake.tenant_config(BTreeMap::new());
    config.pool_file = Some(own_file.clone());
    config.follow_gateway_pool = false;
    let _tenant = common::TestTenant::start(config);
    let mut control = fake.control(vec![dead.clone()]).await;
    round_trip(&mut control, 1).await;
    assert!(!own_file.exists(), "a pool written while not following");
}

/// Reads the tenant's row from the SP until `pick` holds.
async fn wait_row(
    console: &rac::net::console::ConsoleClient,
    name: &str,
    pick: impl Fn(&rac::wire::protocol::TenantInfo) -> bool,
) {
    eventually(PATIENCE, "the tenant's row", async || {
        let tenants = console.tenants().await.expect("list");
        tenants
            .iter()
            .any(|t| t.name == name && pick(t))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_consent_with_sighup_ends_running_sessions_and_tells_the_sp() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("tenant.toml");
    let write_config = |allow: bool| {
        std::fs::write(
            &config_path,
            format!(
                "name = \"acme\"\nsecret = \"{secret}\"\nca_cert = \"{}\"\nendpoints = [\"{}\"]\n\
                 server_name = \"localhost\"\nallow_provider_access = {allow}\n[services]\necho = \"{echo}\"\n",
                sp.ca.display(),
                sp.addr
            ),
        )
        .expect("write config");
    };
    write_config(true);
    let (tenant, _) = Proc::start(
        &["tenant", "--config", config_path.to_str().expect("utf8")],
        "connected to the SP",
    );
    let console = sp.console().await;
    wait_row(&console, "acme", |t| {
        t.status == TenantStatus::Online && t.provider_access
    })
    .await;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("open");
    echo_once(&mut session.stream, b"before").await;

    write_config(false);
    tenant.signal("HUP");
    // The running session ends ...
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(PATIENCE, session.stream.read(&mut buf))
        .await
        .expect("the session ends in time");
    assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
    // ... the SP hears the new consent from a tenant that stays online ...
    wait_row(&console, "acme", |t| {
        t.status == TenantStatus::Online && !t.provider_access
    })
    .await;
    // ... and new sessions are refused.
    let (code, message) = refused(
        console
            .open_session("acme", "echo", |_, _| {})
            .await
            .err()
            .expect("refused"),
    );
    assert_eq!(code, ErrorCode::ProviderAccessDisabled, "{message}");

    // Given again, sessions work again.
    write_config(true);
    tenant.signal("HUP");
    wait_row(&console, "acme", |t| t.provider_access).await;
    let mut again = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("open again");
    echo_once(&mut again.stream, b"after").await;
}

#[test]
fn rac_tenant_help_says_what_an_sp_can_make_it_do() {
    let out = Command::new(RAC)
        .args(["tenant", "--help"])
        .output()
        .expect("run rac tenant --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for words in [
        "max_sessions",
        "busy",
        "ready",
        "16 entries",
        "SIGHUP",
        "allow_provider_access",
    ] {
        assert!(help.contains(words), "{words:?} missing from:\n{help}");
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sp_state_dir_is_private_and_loose_permissions_are_fixed_on_open() {
    use std::os::unix::fs::PermissionsExt;
    let sp = TestSp::start(quick_config()).await;
    sp.add_tenant("acme");
    let registry = sp.state.registry();
    // The SP and the test both hold the registry open: -wal and -shm exist.
    let [db, wal, shm] = rac::sp::registry::registry_files(&registry);
    assert_eq!(mode(&sp.state.root), 0o700, "state dir");
    for file in [&db, &wal, &shm] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(mode(&sp.state.ca_key()), 0o600);

    // An existing state dir with loose permissions is fixed, with a warning, when a command
    // opens it.
    std::fs::set_permissions(&sp.state.root, std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(RAC)
        .args(["sp", "tenant", "list", "--state-dir"])
        .arg(&sp.state.root)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rac sp tenant list");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by others"), "{stderr}");
    assert_eq!(mode(&sp.state.root), 0o700);
    assert_eq!(mode(&db), 0o600);
}

/// A tenant control connection whose socket reads almost nothing: its receive buffer is a
/// few KiB, so the SP's writes to it stall as soon as the test stops reading.
async fn stingy_control(sp: &TestSp, tenant: &str, secret: &str) -> rac::net::tls::ClientStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp: TcpStream = socket.connect(sp.addr).await.expect("connect");
    let tls = TlsClient::new(&Trust::CaFile(sp.ca.clone()), "localhost").expect("tls");
    let mut control = tls.handshake(tcp).await.expect("handshake");
    common::wire::control_hello(&mut control, tenant, secret, "stingy/1", &[]).await;
    control
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_stopped_reading_cannot_hold_the_sps_shutdown() {
    // Long heartbeats: before the fix, a write stuck on this tenant waited dead_after_secs
    // (120 s) and the goodbye after it as long again.
    let sp = TestSp::start(SpConfig {
        heartbeat_secs: 60,
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("stingy");
    let mut control = stingy_control(&sp, "stingy", &secret).await;
    // Pings the SP must answer, never reading the pongs: the SP's socket fills and its
    // pong write blocks; then it stops reading and our own writes stall.
    let batch: Vec<u8> = {
        let mut frames = Vec::new();
        for seq in 0..500u64 {
            let body = serde_json::to_vec(&ControlMsg::Ping { seq, rtt_us: None }).expect("json");
            frames.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frames.extend_from_slice(&body);
        }
        frames
    };
    let mut stalled = false;
    for _ in 0..20_000 {
        let write = async {
            control.write_all(&batch).await?;
            control.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the SP closed early: {e}"),
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(stalled, "the SP kept reading; its writes never stalled");

    let shut = Instant::now();
    sp.shutdown.cancel();
    // The control task ends (and stores the tenant's last seen) within the goodbye
    // deadline (5 s), with a generous margin for a loaded machine.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let row = sp.registry.tenants().expect("tenants");
            if row
                .iter()
                .any(|t| t.name == "stingy" && t.last_seen.is_some())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled control connection still held its task {:?} after shutdown",
        shut.elapsed()
    );
    drop(control);
}
