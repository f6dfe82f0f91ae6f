//! Gateway pools from the clients' side, and the SP's handling of PROXY headers.

mod common;

use std::time::Duration;

use common::{PATIENCE, TestSp, TestTenant, eventually, quick_config, wait_status};
use rac::net::console::ConsoleClient;
use rac::net::dial::Route;
use rac::net::gateway::{self, GatewayConfig};
use rac::net::tenant_redirector::AgentState;
use rac::net::tls::{TlsClient, Trust};
use rac::wire::frame::{self, read_frame, write_frame};
use rac::wire::protocol::{Hello, HelloReply, Role, TenantStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Gw {
    addr: String,
    shutdown: CancellationToken,
}

async fn start_gateway(backend: std::net::SocketAddr, proxy_protocol: bool) -> Gw {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut config = GatewayConfig::new(vec![backend]);
    config.proxy_protocol = proxy_protocol;
    config.drain_timeout = Duration::ZERO;
    let shutdown = CancellationToken::new();
    tokio::spawn(gateway::run(config, listener, shutdown.clone()));
    Gw { addr, shutdown }
}

async fn echo_once(console: &ConsoleClient, tenant: &str) -> rac::net::console::Session {
    let mut session = console
        .open_session(tenant, "echo", |_, _| {})
        .await
        .expect("session");
    session.stream.write_all(b"pool").await.expect("write");
    let mut buf = [0u8; 4];
    session.stream.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"pool");
    session
}

/// A gateway dies: the tenant's control channel comes back through the other one, and the
/// console's next session goes around the dead gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_moves_tenants_and_consoles_to_another() {
    let mut config = quick_config();
    config.trusted_proxies = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    let sp = TestSp::start(config).await;
    let gw1 = start_gateway(sp.addr, true).await;
    let gw2 = start_gateway(sp.addr, true).await;
    let secret = sp.add_tenant("acme");
    let mut tenant_config = sp.tenant_config("acme", &secret);
    tenant_config.endpoints = vec![gw1.addr.clone(), gw2.addr.clone()];
    let mut tenant = TestTenant::start(tenant_config);
    tenant.online().await;
    assert_eq!(
        *tenant.state.borrow(),
        AgentState::Online {
            endpoint: gw1.addr.clone()
        }
    );

    let console = ConsoleClient::new(rac::net::console::ConsoleConfig {
        route: Route::Gateways(vec![gw1.addr.clone(), gw2.addr.clone()]),
        ..sp.console_config()
    })
    .expect("client");
    console
        .login(&sp.password)
        .await
        .expect("login through gateway 1");
    let session = echo_once(&console, "acme").await;
    assert!(session.via_gateway);
    assert_eq!(session.endpoint, gw1.addr);

    gw1.shutdown.cancel();
    tokio::time::timeout(
        PATIENCE,
        tenant.state.wait_for(|s| {
            *s == AgentState::Online {
                endpoint: gw2.addr.clone(),
            }
        }),
    )
    .await
    .expect("tenant back through gateway 2 in time")
    .expect("state");
    wait_status(&console, "acme", TenantStatus::Online).await;
    let session = echo_once(&console, "acme").await;
    assert_eq!(session.endpoint, gw2.addr);
    drop(gw2);
}

/// The SP believes a PROXY header only from a trusted gateway address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_trusted_gateway_is_used_and_refused_from_others() {
    async fn control_via_proxy_header(sp: &TestSp, secret: &str) -> Result<HelloReply, String> {
        let mut tcp = TcpStream::connect(sp.addr).await.expect("connect");
        let claimed: std::net::SocketAddr = "203.0.113.7:4242".parse().expect("addr");
        tcp.write_all(&rac::net::proxy_protocol::encode_v2(claimed, sp.addr))
            .await
            .expect("header");
        let tls = TlsClient::new(&Trust::CaFile(sp.ca.clone()), "localhost").expect("tls");
        let mut stream = tls.handshake(tcp).await.map_err(|e| e.to_string())?;
        let hello = Hello::new(Role::TenantControl {
            tenant: "acme".into(),
            secret: secret.into(),
            agent: "test".into(),
            services: vec![],
            provider_access: true,
            tenant_key: rac::wire::format_fingerprint(&[1; 32]),
            early_client_hello: false,
        });
        write_frame(&mut stream, &hello)
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_frame::<HelloReply, _>(&mut stream, frame::MAX_FRAME_LEN)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed")?;
        // Keep the control connection open while the caller looks at the tenant list.
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        Ok(reply)
    }

    let mut trusted = quick_config();
    trusted.trusted_proxies = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    let sp = TestSp::start(trusted).await;
    let secret = sp.add_tenant("acme");
    let reply = control_via_proxy_header(&sp, &secret)
        .await
        .expect("accepted");
    assert!(matches!(reply, HelloReply::Welcome(_)), "{reply:?}");
    let console = sp.console().await;
    wait_status(&console, "acme", TenantStatus::Online).await;
    let listed = console.tenants().await.expect("list");
    assert_eq!(listed[0].remote_addr.as_deref(), Some("203.0.113.7:4242"));

    let untrusting = TestSp::start(quick_config()).await;
    let secret = untrusting.add_tenant("acme");
    let refused = control_via_proxy_header(&untrusting, &secret).await;
    assert!(
        refused.is_err(),
        "a PROXY header from a non-gateway is refused: {refused:?}"
    );
    // And the SP goes on serving everyone else.
    let mut tenant = TestTenant::start(untrusting.tenant_config("acme", &secret));
    tenant.online().await;
}

/// The SP hands its gateway pool to tenants, and a changed pool reaches them live; the
/// tenant remembers it beside its config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sp_hands_out_its_gateway_pool_and_updates_it_live() {
    let mut config = quick_config();
    config.gateways = vec!["gw-a.example.net:6180".into()];
    let sp = TestSp::start(config.clone()).await;
    let secret = sp.add_tenant("acme");
    let dir = tempfile::tempdir().expect("tempdir");
    let pool_file = dir.path().join("tenant.toml.gateways.json");
    let mut tenant_config = sp.tenant_config("acme", &secret);
    tenant_config.pool_file = Some(pool_file.clone());
    let mut tenant = TestTenant::start(tenant_config);
    tenant.online().await;
    let read_pool = || -> Vec<String> {
        rac::net::pushed_pool::PushedPool::load(&pool_file)
            .map(|pool| pool.gateways)
            .unwrap_or_default()
    };
    assert_eq!(read_pool(), vec!["gw-a.example.net:6180".to_string()]);

    config.gateways = vec![
        "gw-b.example.net:6180".into(),
        "gw-c.example.net:6180".into(),
    ];
    std::fs::write(sp.state.config(), toml::to_string(&config).expect("toml")).expect("write");
    eventually(PATIENCE, "new pool reached the tenant", async || {
        (read_pool().len() == 2).then_some(())
    })
    .await;
    assert_eq!(read_pool()[0], "gw-b.example.net:6180");
    // The tenant stayed connected throughout.
    assert!(matches!(*tenant.state.borrow(), AgentState::Online { .. }));
}
