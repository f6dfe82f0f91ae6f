//! Security properties of the SP port, over real TLS on loopback: unauthenticated load does not
//! hurt tenants, tenants are isolated from each other, tokens and nonces are short-lived
//! credentials, and guessing passwords is slowed and logged. `docs/SECURITY.md` maps each claim
//! of the threat model to the test that proves it.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::wire::{ask, assert_session_error, open_data};
use common::{
    PATIENCE, TestSp, TestTenant, echo_checked, eventually, loopback, open_in_background, pattern,
    quick_config, tcp_from, wait_status,
};
use rac::net::console::{ConsoleClient, ConsoleConfig, ConsoleError};
use rac::net::tenant_redirector::AgentState;
use rac::net::tls::{TlsClient, Trust};
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{
    ApiRequest, ApiResponse, ControlMsg, ErrorCode, Hello, HelloReply, Role, SessionMsg,
    TenantStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn refused_code<T>(result: Result<T, ConsoleError>) -> ErrorCode {
    match result {
        Err(ConsoleError::Refused { code, .. }) => code,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got success"),
    }
}

fn reply_code(reply: &HelloReply) -> Option<ErrorCode> {
    match reply {
        HelloReply::Error(e) => Some(e.code),
        HelloReply::Welcome(_) => None,
    }
}

/// Waits until the peer closes `tcp` (EOF or reset); how long that took from `since`, or
/// `None` if it stayed open for the whole hang guard.
async fn closed_after(tcp: &mut TcpStream, since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

/// Every state other than `Online` a tenant redirector enters from now on.
fn watch_online(tenant: &TestTenant) -> Arc<Mutex<Vec<AgentState>>> {
    let mut state = tenant.state.clone();
    let left = Arc::new(Mutex::new(Vec::new()));
    let out = left.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let now = state.borrow_and_update().clone();
            if !matches!(now, AgentState::Online { .. }) {
                left.lock().expect("states").push(now);
            }
        }
    });
    out
}

/// The ways an unauthenticated peer can stall a handshake.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// TCP only, then silence.
    Silent,
    /// The first bytes of a TLS ClientHello record, then silence.
    PartialTls,
    /// A finished TLS handshake and half a hello frame, then silence.
    HalfHello,
    /// A finished TLS handshake, then the hello one byte every 200 ms (slowloris).
    Dribble,
}

/// Thousands of stalled and slowloris connections from several addresses are all cut at the
/// handshake timeout; meanwhile a session moves checksummed data, the established tenant's
/// heartbeats go on, and a new console logs in and opens a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_cut_at_the_handshake_timeout_while_tenants_carry_on() {
    const STALLED: usize = 2000;
    const SOURCES: usize = 8;
    let handshake_timeout = Duration::from_secs(3);
    let config = rac::sp::config::SpConfig {
        handshake_timeout_secs: handshake_timeout.as_secs(),
        max_pending_per_source: STALLED / SOURCES + 10,
        ..quick_config()
    };
    let sp = Arc::new(TestSp::start(config).await);
    let tenant = sp.online_tenant("acme").await;
    let left_online = watch_online(&tenant);
    let console = sp.console().await;
    let session = console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session before the flood");

    // The flood: each stalled connection reports how long the SP took to close it.
    let tls = Arc::new(TlsClient::new(&Trust::CaFile(sp.ca.clone()), "localhost").expect("tls"));
    let mut stalled = Vec::with_capacity(STALLED);
    let mut batch = Vec::new();
    for i in 0..STALLED {
        // In batches well under the listen backlog (1024): a burst beyond it overflows the
        // kernel's accept queue, and a silent client whose handshake the kernel dropped there
        // never reaches the SP (nor hears of it). A probe's TLS handshake after each batch
        // shows the SP has accepted everything queued before it.
        if batch.len() == 250 {
            accepted_all(&sp, &tls, std::mem::take(&mut batch)).await;
        }
        let kind = match i % 40 {
            0 => Stall::HalfHello,
            1 => Stall::Dribble,
            2..=19 => Stall::PartialTls,
            _ => Stall::Silent,
        };
        let source = loopback(2 + (i % SOURCES) as u8);
        let (sp, tls) = (sp.clone(), tls.clone());
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        batch.push(connected);
        stalled.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut tcp = tcp_from(source, sp.addr).await.expect("connect");
            let _ = connected_tx.send(());
            match kind {
                Stall::Silent => {}
                Stall::PartialTls => tcp
                    .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                    .await
                    .expect("write"),
                Stall::HalfHello | Stall::Dribble => {
                    let mut stream = tls.handshake(tcp).await.expect("handshake");
                    let hello = rac::wire::frame::encode_frame(&Hello::new(Role::Operator {
                        user: "admin".into(),
                        password: Some("not the password".into()),
                        token: None,
                        console_key: None,
                    }))
                    .expect("encode");
                    if let Stall::HalfHello = kind {
                        stream
                            .write_all(&hello[..hello.len() / 2])
                            .await
                            .expect("write");
                    } else {
                        for byte in &hello {
                            if stream.write_all(&[*byte]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    // Until the SP closes it: EOF, an error, or a TLS alert.
                    let mut sink = Vec::new();
                    let closed =
                        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink)).await;
                    return (kind, closed.ok().map(|_| started.elapsed()));
                }
            }
            (kind, closed_after(&mut tcp, started).await)
        }));
    }

    accepted_all(&sp, &tls, batch).await;

    // While the flood is on: 16 MiB of checksummed data through the open session...
    let transfer = tokio::spawn(echo_checked(session.stream, pattern(7, 16 << 20)));
    // ...and a new console logs in and opens a session.
    let newcomer = sp.console().await;
    let mut fresh = newcomer
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("a session opens during the flood");
    fresh.stream.write_all(b"still here").await.expect("write");
    let mut buf = [0u8; 10];
    fresh.stream.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"still here");
    tokio::time::timeout(PATIENCE, transfer)
        .await
        .expect("transfer in time")
        .expect("data intact");

    let mut slowest = Duration::ZERO;
    let mut open = Vec::new();
    for task in stalled {
        let (kind, after) = task.await.expect("stalled client");
        let Some(after) = after else {
            open.push(kind);
            continue;
        };
        // Cut by the timeout, not earlier (nothing else ends a stalled handshake).
        assert!(
            after + Duration::from_millis(20) >= handshake_timeout,
            "{kind:?} closed after only {after:?}"
        );
        slowest = slowest.max(after);
    }
    assert!(open.is_empty(), "{} never closed: {open:?}", open.len());
    eprintln!("{STALLED} stalled connections closed, the last after {slowest:?}");

    // The tenant's heartbeats went on all along: never offline, and its round trip measured.
    let info = console
        .tenants()
        .await
        .expect("list")
        .into_iter()
        .find(|t| t.name == "acme")
        .expect("acme");
    assert_eq!(info.status, TenantStatus::Online);
    assert!(info.heartbeat_rtt_ms.is_some(), "{info:?}");
    let left = left_online.lock().expect("states").clone();
    assert!(
        left.is_empty(),
        "the tenant left Online during the flood: {left:?}"
    );
    assert!(matches!(*tenant.state.borrow(), AgentState::Online { .. }));
}

/// Waits until every connection of `batch` is made, then until a probe completes TLS with
/// the SP: the accept queue is first in, first out, so everything before it was accepted.
async fn accepted_all(
    sp: &TestSp,
    tls: &TlsClient,
    batch: Vec<tokio::sync::oneshot::Receiver<()>>,
) {
    for connected in batch {
        let _ = connected.await;
    }
    let probe = tcp_from(loopback(1), sp.addr).await.expect("probe connect");
    tokio::time::timeout(PATIENCE, tls.handshake(probe))
        .await
        .expect("probe in time")
        .expect("probe handshake");
}

/// One address may keep only `max_pending_per_source` silent connections; past it each new one
/// displaces that address's oldest silent one at once, other addresses are served, and the
/// address is served again once its stalled connections are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_source_cap_displaces_the_oldest_silent_and_spares_other_sources() {
    const CAP: usize = 20;
    let handshake_timeout = Duration::from_secs(4);
    let sp = TestSp::start(rac::sp::config::SpConfig {
        handshake_timeout_secs: handshake_timeout.as_secs(),
        first_byte_timeout_secs: handshake_timeout.as_secs(),
        max_pending_per_source: CAP,
        ..quick_config()
    })
    .await;
    let greedy = loopback(20);
    let mut held = Vec::new();
    let started = Instant::now();
    for _ in 0..CAP {
        held.push(tcp_from(greedy, sp.addr).await.expect("connect"));
    }
    // Past the grace (a third of the first-byte deadline) they count as silent: each newer
    // one displaces the oldest.
    tokio::time::sleep(handshake_timeout / 3 + Duration::from_millis(300)).await;
    for _ in 0..10 {
        held.push(tcp_from(greedy, sp.addr).await.expect("connect"));
    }
    let mut closes = Vec::new();
    for mut tcp in held {
        closes.push(tokio::spawn(async move {
            closed_after(&mut tcp, started)
                .await
                .expect("closed in time")
        }));
    }
    // Another address logs in while the greedy one is at its cap.
    let reply = sp
        .login_from(loopback(21), &sp.operator, &sp.password)
        .await;
    assert_eq!(reply_code(&reply), None, "{reply:?}");

    let mut early = 0;
    let mut at_timeout = 0;
    for close in closes {
        if close.await.expect("task") < handshake_timeout {
            early += 1;
        } else {
            at_timeout += 1;
        }
    }
    assert_eq!(
        (early, at_timeout),
        (10, CAP),
        "the oldest ten are displaced at once, the newest twenty closed at the deadline"
    );
    // Its stalled connections are gone: the greedy address is served again.
    let reply = sp.login_from(greedy, &sp.operator, &sp.password).await;
    assert_eq!(reply_code(&reply), None, "{reply:?}");
}

/// Five wrong passwords from one address, and that address is refused even with the right
/// password for the rest of the window; another address is not; every failure is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_logins_are_rate_limited_and_logged() {
    let logs = capture_logs();
    let sp = TestSp::start(quick_config()).await;
    sp.registry
        .add_operator("mallory-target", "correct horse", "*")
        .expect("operator");
    let attacker = loopback(40);
    for attempt in 0..5 {
        let reply = sp
            .login_from(attacker, "mallory-target", &format!("guess {attempt}"))
            .await;
        assert_eq!(reply_code(&reply), Some(ErrorCode::AuthFailed), "{reply:?}");
    }
    let reply = sp
        .login_from(attacker, "mallory-target", "correct horse")
        .await;
    match &reply {
        HelloReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.message.contains("try again in"), "{}", e.message);
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Other users from that address are refused too; another address is not.
    let reply = sp.login_from(attacker, &sp.operator, &sp.password).await;
    assert_eq!(reply_code(&reply), Some(ErrorCode::RateLimited));
    let reply = sp
        .login_from(loopback(41), "mallory-target", "correct horse")
        .await;
    assert_eq!(reply_code(&reply), None, "{reply:?}");

    let text = logs.text();
    let failures = text
        .lines()
        .filter(|l| {
            l.contains("failed login") && l.contains("127.0.0.40") && l.contains("mallory-target")
        })
        .count();
    assert_eq!(failures, 5, "each failure is logged with address and user");
    assert!(
        text.lines()
            .any(|l| l.contains("too many failures") && l.contains("127.0.0.40")),
        "the refusal is logged"
    );
    assert!(
        !text.contains("guess 0") && !text.contains("correct horse"),
        "passwords never reach the log"
    );
}

/// A tenant can never receive, join or end another tenant's session: `open_data` goes only to
/// the tenant named; another tenant's `reject` of it is ignored; a data connection that names
/// the wrong tenant, or guesses, is refused and changes nothing; a wrong secret cannot replace
/// the tenant's control connection; the other tenant leaving does not touch the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_receive_join_or_end_another_tenants_session() {
    // Hand-made tenants answer pings only while the test reads them: a long dead_after.
    let sp = TestSp::start(rac::sp::config::SpConfig {
        dead_after_secs: 60,
        ..quick_config()
    })
    .await;
    let alpha_secret = sp.add_tenant("alpha");
    let beta_secret = sp.add_tenant("beta");
    let mut alpha = sp.raw_control("alpha", &alpha_secret).await;
    let beta = sp.raw_control("beta", &beta_secret).await;
    let console = sp.console().await;
    wait_status(&console, "beta", TenantStatus::Online).await;

    // Beta records everything it hears for the whole test, and answers pings.
    let (beta_reader, beta_writer) = tokio::io::split(beta);
    let beta_writer = Arc::new(tokio::sync::Mutex::new(beta_writer));
    let (beta_tx, mut beta_heard) = tokio::sync::mpsc::unbounded_channel();
    let beta_task = tokio::spawn({
        let writer = beta_writer.clone();
        let mut reader = beta_reader;
        async move {
            while let Ok(Some(msg)) = read_frame::<ControlMsg, _>(&mut reader, MAX_FRAME_LEN).await
            {
                if let ControlMsg::Ping { seq, .. } = msg {
                    let _ = write_frame(&mut *writer.lock().await, &ControlMsg::Pong { seq }).await;
                }
                if beta_tx.send(msg).is_err() {
                    return;
                }
            }
        }
    });

    let opening = open_in_background(&console, "alpha");
    let (session_id, nonce) = open_data(&mut alpha).await;

    // Beta tries to end it on its own control connection: ignored. A ping round trip after
    // it shows the SP has handled the reject.
    for msg in [
        ControlMsg::Reject {
            session_id: session_id.clone(),
            code: ErrorCode::ServiceUnavailable,
            reason: "not mine to reject".into(),
        },
        ControlMsg::Ping {
            seq: 77,
            rtt_us: None,
        },
    ] {
        write_frame(&mut *beta_writer.lock().await, &msg)
            .await
            .expect("beta writes");
    }
    let mut beta_log = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(msg) = beta_heard.recv().await {
            let done = matches!(msg, ControlMsg::Pong { seq: 77 });
            beta_log.push(msg);
            if done {
                return;
            }
        }
    })
    .await
    .expect("beta's pong");
    // Beta tries to join as itself, and as alpha with guessed nonces.
    for (tenant, guess) in [
        ("beta", nonce.clone()),
        ("alpha", "0".repeat(64)),
        ("alpha", nonce[..63].to_string()),
        ("alpha", String::new()),
    ] {
        let (reply, _) = sp.present_nonce(tenant, &session_id, &guess).await;
        assert!(
            matches!(
                reply,
                SessionMsg::Error {
                    code: ErrorCode::BadNonce,
                    ..
                }
            ),
            "{tenant}: {reply:?}"
        );
    }
    // Beta cannot take over alpha's control connection without alpha's secret.
    let mut usurper = sp.raw().await;
    let hello = Hello::new(Role::TenantControl {
        tenant: "alpha".into(),
        secret: beta_secret.clone(),
        agent: "usurper".into(),
        services: vec!["echo".into()],
        provider_access: true,
        tenant_key: common::wire::test_tenant_key("alpha"),
        early_client_hello: false,
    });
    let reply: HelloReply = ask(&mut usurper, &hello).await;
    assert_eq!(reply_code(&reply), Some(ErrorCode::AuthFailed));

    // Alpha's request is still pending: alpha's own data connection opens it.
    let (reply, data) = sp.present_nonce("alpha", &session_id, &nonce).await;
    assert!(matches!(reply, SessionMsg::Ready { .. }), "{reply:?}");
    let console_key = sp.console_keys.identity.fingerprint();
    let mut data = common::wire::tenant_end_to_end(data, "alpha", console_key).await;
    let mut session = opening.await.expect("join").expect("session opened");

    // Beta goes away entirely; the session is untouched.
    beta_task.abort();
    let _ = beta_task.await;
    drop(beta_writer);
    session.stream.write_all(b"for alpha").await.expect("write");
    let mut buf = [0u8; 9];
    data.read_exact(&mut buf)
        .await
        .expect("alpha's side gets it");
    assert_eq!(&buf, b"for alpha");
    data.write_all(b"from alpha").await.expect("write");
    let mut buf = [0u8; 10];
    session
        .stream
        .read_exact(&mut buf)
        .await
        .expect("console gets it");
    assert_eq!(&buf, b"from alpha");

    // Beta never heard of alpha's session.
    while let Ok(msg) = beta_heard.try_recv() {
        beta_log.push(msg);
    }
    for msg in beta_log {
        assert!(
            matches!(msg, ControlMsg::Ping { .. } | ControlMsg::Pong { .. }),
            "beta heard {msg:?}"
        );
    }
}

/// A console can open only the tenants its operator may: refused sessions to others, a list
/// and a live feed that never mention them, and a token that cannot be used under another name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_opens_and_sees_only_the_tenants_its_token_allows() {
    let sp = TestSp::start(quick_config()).await;
    let mine = sp.add_tenant("mine");
    let theirs = sp.add_tenant("theirs");
    sp.registry
        .add_operator("scoped", "scoped-pw", "mine")
        .expect("operator");
    let mut t_mine = TestTenant::start(sp.tenant_config("mine", &mine));
    t_mine.online().await;
    let scoped = ConsoleClient::new(ConsoleConfig {
        user: "scoped".into(),
        ..sp.console_config()
    })
    .expect("client");
    scoped.login("scoped-pw").await.expect("login");
    let mut feed = scoped.subscribe().await.expect("feed");
    match feed.next().await.expect("snapshot") {
        // One page: the window's feed asks for the compact form.
        Some(ApiResponse::TenantPage(page)) => {
            assert!(page.first && !page.more, "{page:?}");
            let tenants = page.into_tenants().expect("a well-formed page");
            let names: Vec<_> = tenants.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, vec!["mine"]);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // "theirs" comes online and goes away: the scoped feed hears nothing of it, but does hear
    // of "mine" going offline afterwards (so it was listening).
    let mut t_theirs = TestTenant::start(sp.tenant_config("theirs", &theirs));
    t_theirs.online().await;
    let admin = sp.console().await;
    wait_status(&admin, "theirs", TenantStatus::Online).await;
    drop(t_theirs);
    wait_status(&admin, "theirs", TenantStatus::Offline).await;
    drop(t_mine);
    tokio::time::timeout(PATIENCE, async {
        loop {
            match feed.next().await.expect("feed") {
                Some(ApiResponse::TenantChanged { tenant }) => {
                    assert_eq!(tenant.name, "mine", "the feed leaked {tenant:?}");
                    if tenant.status == TenantStatus::Offline {
                        return;
                    }
                }
                Some(ApiResponse::TenantPage(page)) => {
                    let tenants = page.into_tenants().expect("a well-formed page");
                    assert!(tenants.iter().all(|t| t.name == "mine"), "{tenants:?}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("mine went offline in the feed");

    assert_eq!(
        refused_code(scoped.open_session("theirs", "echo", |_, _| {}).await),
        ErrorCode::AccessDenied
    );
    // The scoped token under the admin's name is refused, and so is a made-up token.
    let token = sp
        .registry
        .create_token("scoped", Duration::from_secs(60))
        .expect("token");
    for (user, token) in [("admin", token.clone()), ("scoped", "ab".repeat(32))] {
        let mut stream = sp.raw().await;
        let hello = Hello::new(Role::Operator {
            user: user.into(),
            password: None,
            token: Some(token),
            console_key: None,
        });
        let reply: HelloReply = ask(&mut stream, &hello).await;
        assert_eq!(reply_code(&reply), Some(ErrorCode::AuthFailed), "{user}");
    }
    let forger = ConsoleClient::new(sp.console_config()).expect("client");
    forger.set_token("cd".repeat(32));
    assert_eq!(
        refused_code(forger.open_session("mine", "echo", |_, _| {}).await),
        ErrorCode::AuthFailed
    );
}

/// Tokens expire after `token_ttl_secs`, and end at once on logout or when the SP revokes the
/// operator's tokens; a revoked token opens nothing and reads no list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_can_be_revoked() {
    let sp = TestSp::start(rac::sp::config::SpConfig {
        token_ttl_secs: 1,
        ..quick_config()
    })
    .await;
    let _tenant = sp.online_tenant("acme").await;

    let short = ConsoleClient::new(sp.console_config()).expect("client");
    assert_eq!(short.login(&sp.password).await.expect("login"), 1);
    short
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("fresh token works");
    // Token times are whole seconds: past 2 s the 1 s token is certainly expired.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        refused_code(short.open_session("acme", "echo", |_, _| {}).await),
        ErrorCode::TokenExpired
    );
    assert_eq!(refused_code(short.tenants().await), ErrorCode::TokenExpired);

    // Revoked by the SP (as `rac sp operator` does through the registry).
    let console_key = sp.console_keys.identity.fingerprint_text();
    let long = sp
        .registry
        .create_token_with_key("admin", Duration::from_secs(3600), Some(&console_key))
        .expect("token");
    let revoked = ConsoleClient::new(sp.console_config()).expect("client");
    revoked.set_token(long.clone());
    let mut open = revoked
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("valid token works");
    let other = rac::sp::registry::Registry::open(&sp.state.registry()).expect("open");
    assert!(other.revoke_operator_tokens("admin").expect("revoke") >= 1);
    // The session opened with the revoked token ends too, and the audit log says why.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, open.stream.read_to_end(&mut rest))
        .await
        .expect("the revoked token's session ends")
        .ok();
    eventually(PATIENCE, "audit says the token was revoked", async || {
        let entries = sp.registry.audit_entries(20).expect("audit");
        entries
            .iter()
            .any(|e| e.outcome == "ended: operator token revoked")
            .then_some(())
    })
    .await;
    assert_eq!(
        refused_code(revoked.open_session("acme", "echo", |_, _| {}).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(refused_code(revoked.tenants().await), ErrorCode::AuthFailed);

    // Logged out: the token is gone for everyone who holds it.
    let sp_ttl_long = sp
        .registry
        .create_token("admin", Duration::from_secs(3600))
        .expect("token");
    let a = ConsoleClient::new(sp.console_config()).expect("client");
    a.set_token(sp_ttl_long.clone());
    let b = ConsoleClient::new(sp.console_config()).expect("client");
    b.set_token(sp_ttl_long);
    a.logout().await.expect("logout");
    assert_eq!(
        refused_code(b.open_session("acme", "echo", |_, _| {}).await),
        ErrorCode::AuthFailed
    );
}

/// A nonce works once, for the tenant it was sent to, until the console stops waiting; after
/// that, or after the tenant rejected the request, it opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_expire_with_the_wait_and_die_with_a_reject() {
    let sp = TestSp::start(rac::sp::config::SpConfig {
        session_open_timeout_secs: 1,
        dead_after_secs: 60,
        ..quick_config()
    })
    .await;
    let mut control = sp.hand_made_tenant("alpha").await;
    let console = sp.console().await;
    wait_status(&console, "alpha", TenantStatus::Online).await;

    // Too late: the console gave up after 1 s, the nonce with it.
    let waiting = open_in_background(&console, "alpha");
    let (session_id, nonce) = open_data(&mut control).await;
    assert_eq!(
        refused_code(waiting.await.expect("join")),
        ErrorCode::TenantTimeout
    );
    let (reply, _) = sp.present_nonce("alpha", &session_id, &nonce).await;
    assert_session_error(&reply, ErrorCode::BadNonce);

    // Rejected: the console hears the tenant's reason and the nonce is spent.
    let waiting = open_in_background(&console, "alpha");
    let (session_id, nonce) = open_data(&mut control).await;
    write_frame(
        &mut control,
        &ControlMsg::Reject {
            session_id: session_id.clone(),
            code: ErrorCode::ServiceUnavailable,
            reason: "backup server is down".into(),
        },
    )
    .await
    .expect("reject");
    match waiting.await.expect("join") {
        Err(ConsoleError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::ServiceUnavailable);
            assert!(message.contains("backup server is down"), "{message}");
        }
        Err(other) => panic!("expected the tenant's refusal, got {other:?}"),
        Ok(_) => panic!("expected the tenant's refusal, got a session"),
    }
    let (reply, _) = sp.present_nonce("alpha", &session_id, &nonce).await;
    assert_session_error(&reply, ErrorCode::BadNonce);
}

/// The operator list API refuses an unknown request type and a frame over the limit, and the
/// SP answers a list request only after a successful login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_need_a_login_and_a_sane_frame() {
    let sp = TestSp::start(quick_config()).await;
    // A list request instead of a hello: refused as a malformed hello.
    let mut stream = sp.raw().await;
    let reply: HelloReply = ask(
        &mut stream,
        &ApiRequest::ListTenants {
            subscribe: true,
            compact: false,
        },
    )
    .await;
    assert!(
        matches!(
            reply_code(&reply),
            Some(ErrorCode::VersionMismatch | ErrorCode::BadRequest)
        ),
        "{reply:?}"
    );
    // Logged in, then a request frame over 16 KiB: the connection ends, nothing is listed.
    let mut stream = sp.raw().await;
    let hello = Hello::new(Role::Operator {
        user: sp.operator.clone(),
        password: Some(sp.password.clone()),
        token: None,
        console_key: None,
    });
    let reply: HelloReply = ask(&mut stream, &hello).await;
    assert_eq!(reply_code(&reply), None);
    stream
        .write_all(&(64 * 1024u32).to_be_bytes())
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("closed");
    let listed = String::from_utf8_lossy(&rest);
    assert!(!listed.contains("\"tenants\""), "{listed}");
}

/// Log lines of every test in this binary, for the tests that check what is logged.
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Logs {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("rac=info")
                .with_ansi(false)
                .with_writer(move || LogWriter(writer.clone()))
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            buffer
        })
        .clone();
    Logs(buffer)
}

/// The failure count of an address survives a successful login from it: an attacker who holds
/// one account cannot reset the limit between guesses at another account's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_login_does_not_reset_the_failure_count() {
    let sp = TestSp::start(quick_config()).await;
    sp.registry
        .add_operator("insider", "insider-pw", "")
        .expect("operator");
    let attacker = loopback(42);
    for round in 0..2 {
        for attempt in 0..2 {
            let reply = sp
                .login_from(attacker, "admin", &format!("guess {round} {attempt}"))
                .await;
            assert_eq!(reply_code(&reply), Some(ErrorCode::AuthFailed), "{reply:?}");
        }
        let reply = sp.login_from(attacker, "insider", "insider-pw").await;
        assert_eq!(reply_code(&reply), None, "the insider's own login works");
    }
    let reply = sp.login_from(attacker, "admin", "guess 2 0").await;
    assert_eq!(reply_code(&reply), Some(ErrorCode::AuthFailed));
    // Five failures in the window, successes in between or not: limited.
    let reply = sp.login_from(attacker, "admin", &sp.password).await;
    assert_eq!(
        reply_code(&reply),
        Some(ErrorCode::RateLimited),
        "{reply:?}"
    );
}
