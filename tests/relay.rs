//! The nine steps and every refusal a console can meet, over real TLS on loopback.

mod common;

use std::time::Duration;

use common::wire::{ask, assert_session_error};
use common::{
    PATIENCE, TestSp, TestTenant, eventually, open_in_background, quick_config, wait_status,
};
use rac::net::console::{ConsoleClient, ConsoleError, OpenStage};
use rac::net::tls::{TlsClient, Trust};
use rac::wire::frame::{self, read_frame};
use rac::wire::protocol::{ControlMsg, ErrorCode, HelloReply, SessionMsg, TenantStatus};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn refused_code(err: ConsoleError) -> ErrorCode {
    match err {
        ConsoleError::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Steps 1 to 9: a tenant connects, the console sees it, opens a session, bytes flow both
/// ways, and the session lands in the audit log with its byte counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_steps_echo_and_audit() {
    let sp = TestSp::start(quick_config()).await;
    let _tenant = sp.online_tenant("acme").await;

    let console = sp.console().await;
    wait_status(&console, "acme", TenantStatus::Online).await;
    let tenants = console.tenants().await.expect("list");
    let acme = tenants
        .iter()
        .find(|t| t.name == "acme")
        .expect("acme listed");
    assert_eq!(acme.services, vec!["echo".to_string()]);
    assert!(acme.provider_access);
    assert!(
        acme.remote_addr
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert!(
        acme.agent_version
            .as_deref()
            .is_some_and(|v| v.starts_with("rac-tenant/"))
    );

    let mut stages = Vec::new();
    let mut session = console
        .open_session("acme", "echo", |s, _| stages.push(s))
        .await
        .expect("session opens");
    assert_eq!(
        stages,
        vec![
            OpenStage::RequestSent,
            OpenStage::WaitingForTenant,
            OpenStage::Spliced
        ]
    );
    assert_eq!(session.tls.version, "TLS 1.3");
    assert!(!session.via_gateway);
    session
        .stream
        .write_all(b"ping through the relay")
        .await
        .expect("write");
    let mut buf = [0u8; 22];
    session.stream.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping through the relay");
    session.stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    session
        .stream
        .read_to_end(&mut rest)
        .await
        .expect("eof after half-close");
    assert!(rest.is_empty());

    // The audit row is closed once both sides are done.
    let e = eventually(PATIENCE, "audit entry closed", async || {
        let entries = sp.registry.audit_entries(10).expect("audit");
        entries.into_iter().next().filter(|e| e.ended_at.is_some())
    })
    .await;
    assert_eq!((e.tenant.as_str(), e.service.as_str()), ("acme", "echo"));
    assert_eq!(e.operator, "admin");
    common::assert_carried(e.bytes_to_tenant, 22);
    common::assert_carried(e.bytes_from_tenant, 22);
    assert_eq!(e.outcome, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_reason() {
    let sp = TestSp::start(quick_config()).await;
    let on = sp.add_tenant("on");
    let private = sp.add_tenant("private");
    sp.add_tenant("off");
    sp.add_tenant("gone");
    sp.registry.set_enabled("gone", false).expect("disable");
    let mut t1 = TestTenant::start(sp.tenant_config("on", &on));
    let mut private_cfg = sp.tenant_config("private", &private);
    private_cfg.allow_provider_access = false;
    let mut t2 = TestTenant::start(private_cfg);
    t1.online().await;
    t2.online().await;
    let console = sp.console().await;
    wait_status(&console, "private", TenantStatus::Online).await;
    // The SP learns of registry changes from its watcher, a moment later.
    wait_status(&console, "gone", TenantStatus::Disabled).await;

    let code = |tenant: &'static str, service: &'static str| {
        let console = console.clone();
        async move {
            refused_code(
                console
                    .open_session(tenant, service, |_, _| {})
                    .await
                    .err()
                    .expect("refused"),
            )
        }
    };
    assert_eq!(code("nobody", "echo").await, ErrorCode::UnknownTenant);
    assert_eq!(code("off", "echo").await, ErrorCode::TenantOffline);
    assert_eq!(code("gone", "echo").await, ErrorCode::TenantDisabled);
    assert_eq!(
        code("private", "echo").await,
        ErrorCode::ProviderAccessDisabled
    );
    assert_eq!(code("on", "ssh").await, ErrorCode::ServiceNotOffered);

    // Wrong password.
    let stranger = ConsoleClient::new(sp.console_config()).expect("client");
    assert_eq!(
        refused_code(stranger.login("wrong").await.expect_err("bad password")),
        ErrorCode::AuthFailed
    );
    // Expired token.
    let expired = sp
        .registry
        .create_token("admin", Duration::ZERO)
        .expect("token");
    stranger.set_token(expired);
    assert_eq!(
        refused_code(
            stranger
                .open_session("on", "echo", |_, _| {})
                .await
                .err()
                .expect("expired")
        ),
        ErrorCode::TokenExpired
    );
    // An operator limited to other tenants.
    sp.registry
        .add_operator("limited", "pw-limited", "private")
        .expect("operator");
    let limited = ConsoleClient::new(rac::net::console::ConsoleConfig {
        user: "limited".into(),
        ..sp.console_config()
    })
    .expect("client");
    limited.login("pw-limited").await.expect("login");
    assert_eq!(
        refused_code(
            limited
                .open_session("on", "echo", |_, _| {})
                .await
                .err()
                .expect("denied")
        ),
        ErrorCode::AccessDenied
    );
    let visible: Vec<String> = limited
        .tenants()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(visible, vec!["private".to_string()]);

    // A logged-out token stops working.
    let c2 = sp.console().await;
    c2.logout().await.expect("logout");
    assert!(matches!(c2.tenants().await, Err(ConsoleError::NotLoggedIn)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_and_untrusted_certificate_are_explained() {
    let sp = TestSp::start(quick_config()).await;
    let mut raw = sp.raw().await;
    let hello =
        serde_json::json!({"version": 99, "role": "operator", "user": "admin", "password": "x"});
    let reply: HelloReply = ask(&mut raw, &hello).await;
    match reply {
        HelloReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::VersionMismatch);
            assert!(
                e.message.contains("version 2") && e.message.contains("99"),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // A console that trusts another CA refuses the SP.
    let other = TestSp::start(quick_config()).await;
    let config = rac::net::console::ConsoleConfig {
        trust: Trust::CaFile(other.ca.clone()),
        ..sp.console_config()
    };
    let client = ConsoleClient::new(config).expect("client");
    match client.login(&sp.password).await {
        Err(ConsoleError::Dial(e)) => {
            assert!(e.is_untrusted(), "{e}");
            assert!(e.to_string().contains("certificate not trusted"), "{e}");
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
    // First contact: the fingerprint the SP presents is its CA's, as `rac sp init` printed it.
    let probed = rac::net::tls::probe_fingerprint(&sp.addr.to_string(), "localhost")
        .await
        .expect("probe");
    assert_eq!(probed, rac::net::tls::pem_fingerprint(&sp.ca).expect("fp"));
    // A pinned fingerprint of the right CA works; a wrong pin does not.
    let pin = rac::wire::parse_fingerprint(&rac::net::tls::pem_fingerprint(&sp.ca).expect("fp"))
        .expect("parse");
    let pinned = ConsoleClient::new(rac::net::console::ConsoleConfig {
        trust: Trust::Pinned(pin),
        ..sp.console_config()
    })
    .expect("client");
    pinned.login(&sp.password).await.expect("pinned login");
    let wrong = ConsoleClient::new(rac::net::console::ConsoleConfig {
        trust: Trust::Pinned([7; 32]),
        ..sp.console_config()
    })
    .expect("client");
    assert!(matches!(
        wrong.login(&sp.password).await,
        Err(ConsoleError::Dial(_))
    ));
}

/// A tenant that never answers `OpenData`: the console hears a timeout, not a hang.
/// Nonces are single-use and bound to the tenant they were sent to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_are_single_use_bound_and_a_silent_tenant_times_out() {
    let mut config = quick_config();
    config.session_open_timeout_secs = 2;
    let sp = TestSp::start(config).await;
    let secret_a = sp.add_tenant("alpha");
    let secret_b = sp.add_tenant("beta");
    let console = sp.console().await;

    // A hand-made tenant that authenticates and then only listens.
    let mut control = sp.raw_control("alpha", &secret_a).await;
    wait_status(&console, "alpha", TenantStatus::Online).await;

    let opening = open_in_background(&console, "alpha");
    let (session_id, nonce) = loop {
        match read_frame::<ControlMsg, _>(&mut control, frame::MAX_FRAME_LEN)
            .await
            .expect("read")
            .expect("msg")
        {
            ControlMsg::OpenData {
                session_id,
                nonce,
                service,
                ..
            } => {
                assert_eq!(service, "echo");
                break (session_id, nonce);
            }
            _ => continue,
        }
    };
    // Another tenant presenting alpha's nonce is refused.
    let _ = &secret_b;
    let (reply, _) = sp.present_nonce("beta", &session_id, &nonce).await;
    assert_session_error(&reply, ErrorCode::BadNonce);
    let (reply, _) = sp
        .present_nonce("alpha", &session_id, &"0".repeat(64))
        .await;
    assert_session_error(&reply, ErrorCode::BadNonce);
    // The right tenant with the right nonce gets the session...
    let (reply, data) = sp.present_nonce("alpha", &session_id, &nonce).await;
    assert!(matches!(reply, SessionMsg::Ready { .. }), "{reply:?}");
    // ...spliced to the console, whose end-to-end handshake (a TLS record) arrives on it.
    let mut data = common::wire::after_ready(data);
    let mut b = [0u8; 1];
    data.read_exact(&mut b).await.expect("tenant side receives");
    assert_eq!(b[0], 0x16, "a TLS handshake record from the console");
    opening.abort();
    // ...once.
    let (reply, _) = sp.present_nonce("alpha", &session_id, &nonce).await;
    assert_session_error(&reply, ErrorCode::BadNonce);

    // Now the tenant stays silent: the console is told it timed out.
    let err = console
        .open_session("alpha", "echo", |_, _| {})
        .await
        .err()
        .expect("timeout");
    assert_eq!(refused_code(err), ErrorCode::TenantTimeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_tenant_ends_its_sessions_and_keeps_it_out() {
    let sp = TestSp::start(quick_config()).await;
    let mut tenant = sp.online_tenant("acme").await;
    let console = sp.console().await;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    session.stream.write_all(b"hi").await.expect("write");
    let mut buf = [0u8; 2];
    session.stream.read_exact(&mut buf).await.expect("echo");

    // As `rac sp tenant disable` does: another process's registry connection.
    let admin = rac::sp::registry::Registry::open(&sp.state.registry()).expect("open");
    admin.set_enabled("acme", false).expect("disable");

    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, session.stream.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "the session must end when the tenant is disabled"
    );
    let state = tenant.not_online().await;
    assert!(format!("{state:?}").contains("disabled"), "{state:?}");
    wait_status(&console, "acme", TenantStatus::Disabled).await;
    // It stays out: reconnects are refused while disabled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!matches!(
        *tenant.state.borrow(),
        rac::net::tenant_redirector::AgentState::Online { .. }
    ));
    let entry = &sp.registry.audit_entries(1).expect("audit")[0];
    let closed = eventually(PATIENCE, "audit closed", async || {
        let e = sp.registry.audit_entries(1).expect("audit").remove(0);
        e.ended_at.is_some().then_some(e)
    })
    .await;
    assert!(closed.outcome.contains("disabled"), "{}", closed.outcome);
    assert_eq!(entry.tenant, "acme");

    // Enabled again, it comes back by itself.
    admin.set_enabled("acme", true).expect("enable");
    tenant.online().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_arrive_intact() {
    let sp = TestSp::start(quick_config()).await;
    let _tenant = sp.online_tenant("acme").await;
    let console = sp.console().await;
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    let (mut reader, mut writer) = tokio::io::split(session.stream);
    const TOTAL: usize = 64 * 1024 * 1024;
    let sender = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            for b in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            writer.write_all(&chunk).await.expect("write");
            hasher.update(&chunk);
            sent += chunk.len();
        }
        writer.shutdown().await.expect("shutdown");
        hasher.finalize()
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    loop {
        let n = reader.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        received += n;
    }
    assert_eq!(received, TOTAL);
    assert_eq!(hasher.finalize(), sender.await.expect("join"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sessions() {
    let sp = TestSp::start(quick_config()).await;
    // A hundred at once through one tenant: over the tenant redirector's default cap (64),
    // which `security_tenant` tests on its own.
    let secret = sp.add_tenant("acme");
    let mut config = sp.tenant_config("acme", &secret);
    config.max_sessions = 128;
    let mut tenant = TestTenant::start(config);
    tenant.online().await;
    let console = sp.console().await;
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let console = console.clone();
        tasks.push(tokio::spawn(async move {
            let mut session = console
                .open_session("acme", "echo", |_, _| {})
                .await
                .expect("session");
            let payload: Vec<u8> = (0..4096u32).map(|j| (i * 7 + j) as u8).collect();
            session.stream.write_all(&payload).await.expect("write");
            let mut back = vec![0u8; payload.len()];
            session.stream.read_exact(&mut back).await.expect("read");
            assert_eq!(back, payload, "session {i} got its own bytes");
        }));
    }
    for task in tasks {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("in time")
            .expect("session ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let sp = TestSp::start(quick_config()).await;
    let tenant = sp.online_tenant("acme").await;

    // Oversized length prefix after TLS.
    let mut raw = sp.raw().await;
    raw.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, raw.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "oversized frame closes the connection");
    // Garbage JSON after TLS: an error frame then close.
    let mut raw = sp.raw().await;
    raw.write_all(&[0, 0, 0, 5, b'{', 0xff, b'x', b'}', b'!'])
        .await
        .expect("write");
    let reply = read_frame::<HelloReply, _>(&mut raw, frame::MAX_FRAME_LEN)
        .await
        .expect("read");
    assert!(
        matches!(reply, Some(HelloReply::Error(ref e)) if e.code == ErrorCode::BadRequest),
        "{reply:?}"
    );
    // Plain garbage instead of TLS.
    let mut tcp = tokio::net::TcpStream::connect(sp.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut sink))
        .await
        .expect("closed");
    // A connection that says nothing is cut at the handshake timeout; meanwhile the SP serves.
    let _silent = tokio::net::TcpStream::connect(sp.addr)
        .await
        .expect("connect");

    let console = sp.console().await;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("still serving");
    session.stream.write_all(b"ok").await.expect("write");
    let mut buf = [0u8; 2];
    session.stream.read_exact(&mut buf).await.expect("echo");
    // The tenant's control connection was never disturbed.
    assert!(matches!(
        *tenant.state.borrow(),
        rac::net::tenant_redirector::AgentState::Online { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_reconnects_after_sp_restart_and_nothing_is_lost() {
    let mut sp = TestSp::start(quick_config()).await;
    let mut tenant = sp.online_tenant("acme").await;
    let console = sp.console().await;
    let mut session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    session.stream.write_all(b"abc").await.expect("write");
    let mut b = [0u8; 3];
    session.stream.read_exact(&mut b).await.expect("echo");

    sp.restart().await;
    tenant.not_online().await;
    tenant.online().await;
    // Tokens live in the registry: the same console goes on without logging in again.
    wait_status(&console, "acme", TenantStatus::Online).await;
    let mut again = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session after restart");
    again.stream.write_all(b"def").await.expect("write");
    again.stream.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"def");
    let entries = sp.registry.audit_entries(10).expect("audit");
    assert!(entries.len() >= 2, "both sessions audited: {entries:?}");
}

/// The wrong secret, and a rotated secret, keep a tenant out with a clear reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_rotated_secret_is_refused() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let mut wrong = TestTenant::start(sp.tenant_config("acme", &"ab".repeat(32)));
    let state = wrong.not_online().await;
    assert!(format!("{state:?}").contains("wrong secret"), "{state:?}");
    drop(wrong);
    let mut tenant = TestTenant::start(sp.tenant_config("acme", &secret));
    tenant.online().await;
    let admin = rac::sp::registry::Registry::open(&sp.state.registry()).expect("open");
    admin.rotate_secret("acme").expect("rotate");
    let state = tenant.not_online().await;
    assert!(format!("{state:?}").contains("rotated"), "{state:?}");
    let _ = TlsClient::new(&Trust::CaFile(sp.ca.clone()), "localhost").expect("tls");
}
