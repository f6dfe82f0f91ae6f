//! The relay protocol as docs/PROTOCOL.md writes it, tried by hand over real TLS on loopback,
//! as a peer written in another language would meet it (issue 20): every refusal in one
//! shape, nonces that die with the console's wait, dead peers noticed on time, a replaced
//! control connection told so, and sessions that end with a bare TCP FIN on one side.

mod common;

use std::time::{Duration, Instant};

use common::{PATIENCE, TestSp, TestTenant, loopback, next_control, pattern, quick_config};
use rac::net::tenant_redirector::AgentState;
use rac::net::tls::{ClientStream, ReadAhead, TlsClient, Trust};
use rac::sp::config::SpConfig;
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{
    ControlMsg, ErrorCode, Hello, HelloReply, Role, SessionMsg, Stage, Welcome,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `body` as the first frame of a fresh connection; the SP's answer.
async fn first_frame_reply(sp: &TestSp, body: &Value) -> Value {
    let mut stream = sp.raw().await;
    write_frame(&mut stream, body).await.expect("hello");
    read_frame(&mut stream, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("a reply")
}

/// Logs in with the SP's first operator by password; the welcome.
async fn password_welcome(sp: &TestSp) -> Welcome {
    match sp.login_from(loopback(1), &sp.operator, &sp.password).await {
        HelloReply::Welcome(welcome) => welcome,
        HelloReply::Error(e) => panic!("login refused: {e:?}"),
    }
}

async fn operator_token(sp: &TestSp) -> String {
    password_welcome(sp).await.token.expect("a token")
}

/// A TLS connection to the SP, and a second handle on its socket to end it with a bare TCP
/// FIN (a shutdown of the write side with no TLS close_notify before it), as many TLS stacks
/// end a connection.
async fn raw_with_fin(sp: &TestSp) -> (ClientStream, std::net::TcpStream) {
    let addr = sp.addr;
    let std_tcp = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(addr))
        .await
        .expect("join")
        .expect("connect");
    let fin = std_tcp.try_clone().expect("clone the socket");
    std_tcp.set_nonblocking(true).expect("nonblocking");
    let tcp = tokio::net::TcpStream::from_std(std_tcp).expect("tokio socket");
    let tls = TlsClient::new(&Trust::CaFile(sp.ca.clone()), "localhost").expect("tls");
    (tls.handshake(tcp).await.expect("handshake"), fin)
}

/// Sends a console's session hello on `stream` and reads the SP's first answer.
async fn console_hello(stream: &mut ClientStream, token: &str, tenant: &str) -> SessionMsg {
    let hello = Hello::new(Role::ConsoleSession {
        token: token.into(),
        tenant: tenant.into(),
        service: "echo".into(),
    });
    write_frame(stream, &hello).await.expect("console hello");
    read_frame(stream, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("an answer")
}

/// Sends a tenant data hello on `stream` and reads the SP's answer.
async fn data_hello(
    stream: &mut ClientStream,
    tenant: &str,
    session_id: &str,
    nonce: &str,
) -> SessionMsg {
    let hello = Hello::new(Role::TenantData {
        tenant: tenant.into(),
        session_id: session_id.into(),
        nonce: nonce.into(),
    });
    write_frame(stream, &hello).await.expect("data hello");
    read_frame(stream, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("an answer")
}

async fn open_data(control: &mut ClientStream) -> (String, String) {
    next_control(control, |m| match m {
        ControlMsg::OpenData {
            session_id, nonce, ..
        } => Some((session_id.clone(), nonce.clone())),
        _ => None,
    })
    .await
}

/// Reads control frames (answering none) until the SP ends the connection; the frames that
/// are not pings, and whether the end was a clean TLS close_notify.
async fn frames_until_closed(control: &mut ClientStream) -> (Vec<ControlMsg>, bool) {
    tokio::time::timeout(PATIENCE, async {
        let mut seen = Vec::new();
        loop {
            match read_frame::<ControlMsg, _>(control, MAX_FRAME_LEN).await {
                Ok(Some(ControlMsg::Ping { .. })) => {}
                Ok(Some(msg)) => seen.push(msg),
                Ok(None) => return (seen, true),
                Err(_) => return (seen, false),
            }
        }
    })
    .await
    .expect("the SP ends the connection in time")
}

/// Point 1: a first frame that is not a JSON object, or has no numeric `version`, is
/// `bad_request` saying what is wrong; only a numeric version the SP does not speak is
/// `version_mismatch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_without_a_numeric_version_is_a_bad_request() {
    let sp = TestSp::start(quick_config()).await;
    let login = |version: Value| json!({"version": version, "role": "operator", "user": "u", "password": "p"});
    let cases = [
        (json!([1, "operator"]), "bad_request", "JSON object"),
        (json!("hello"), "bad_request", "JSON object"),
        (
            json!({"role": "operator", "user": "u", "password": "p"}),
            "bad_request",
            "version",
        ),
        (login(json!("1")), "bad_request", "version"),
        (login(json!(null)), "bad_request", "version"),
        (login(json!(-1)), "bad_request", "version"),
        (login(json!(1.5)), "bad_request", "version"),
        (login(json!(2)), "version_mismatch", "sent 2"),
        (
            login(json!(99_999_999_999u64)),
            "version_mismatch",
            "99999999999",
        ),
    ];
    for (body, code, words) in cases {
        let reply = first_frame_reply(&sp, &body).await;
        assert_eq!(reply["type"], "error", "{body}: {reply}");
        assert_eq!(reply["code"], code, "{body}: {reply}");
        let message = reply["message"].as_str().expect("a message");
        assert!(
            message.contains(words),
            "{body}: {message:?} lacks {words:?}"
        );
        assert!(!message.contains("sent none"), "{body}: {message:?}");
    }
}

/// Point 2: an unknown `type`, or a field of the wrong type, on a control connection gets one
/// `goodbye` with `bad_request` naming the problem, then a clean close (close_notify), not a
/// silent cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_control_frame_gets_one_bad_request_goodbye_and_a_clean_close() {
    let sp = TestSp::start(SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let cases = [
        (json!({"type": "no_such_type"}), "no_such_type"),
        (
            json!({"type": "ping", "seq": "x"}),
            "\"ping\" frame: invalid type: string",
        ),
        (
            json!({"type": "ping", "seq": -1}),
            "\"ping\" frame: invalid value: integer `-1`",
        ),
        (json!({"type": "ping"}), "missing field `seq`"),
        (
            json!({"type": "reject", "session_id": 5, "code": "busy", "reason": "r"}),
            "\"reject\" frame: invalid type: integer `5`",
        ),
        (json!(["ping", 1]), "not a JSON object"),
    ];
    for (frame, words) in cases {
        let mut control = sp.raw_control("acme", &secret).await;
        write_frame(&mut control, &frame).await.expect("frame");
        let (seen, clean) = frames_until_closed(&mut control).await;
        match seen.as_slice() {
            [ControlMsg::Goodbye { code, reason }] => {
                assert_eq!(*code, ErrorCode::BadRequest, "{frame}: {reason}");
                assert!(
                    reason.contains(words),
                    "{frame}: {reason:?} lacks {words:?}"
                );
            }
            other => panic!("{frame}: expected one goodbye, got {other:?}"),
        }
        assert!(clean, "{frame}: closed without close_notify");
    }
}

/// Point 2 (the console's side): a console waiting on a tenant whose control connection ends
/// (here on a malformed frame) hears at once, not after the open timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_hears_at_once_when_the_control_connection_it_waits_on_ends() {
    // Longer than the hang guard: a console that waited for the timeout fails the test.
    let sp = TestSp::start(SpConfig {
        session_open_timeout_secs: PATIENCE.as_secs() * 2,
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut control = sp.raw_control("acme", &secret).await;
    let console = sp.console().await;
    common::wait_status(&console, "acme", rac::wire::protocol::TenantStatus::Online).await;
    let waiting = tokio::spawn({
        let console = console.clone();
        async move { console.open_session("acme", "echo", |_, _| {}).await }
    });
    let _ = open_data(&mut control).await;
    write_frame(&mut control, &json!({"type": "ping", "seq": "x"}))
        .await
        .expect("frame");
    let refused = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the console hears before the open timeout")
        .expect("join");
    match refused {
        Err(rac::net::console::ConsoleError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::TenantOffline, "{message}");
        }
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

/// Point 4: a console that closes its connection while it waits (close_notify, or a bare
/// FIN) ends its session's nonce at once: a data channel that arrives afterwards gets
/// `bad_nonce`, never `ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_dies_as_soon_as_the_console_stops_waiting() {
    let sp = TestSp::start(SpConfig {
        session_open_timeout_secs: PATIENCE.as_secs() * 2,
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut control = sp.raw_control("acme", &secret).await;
    let token = operator_token(&sp).await;
    for bare_fin in [false, true] {
        let (mut console, fin) = raw_with_fin(&sp).await;
        let progress = console_hello(&mut console, &token, "acme").await;
        assert_eq!(
            progress,
            SessionMsg::Progress {
                stage: Stage::WaitingForTenant
            }
        );
        let (session_id, nonce) = open_data(&mut control).await;
        if bare_fin {
            fin.shutdown(std::net::Shutdown::Write).expect("bare FIN");
        } else {
            console.shutdown().await.expect("close_notify");
        }
        // The SP closes its side once it has noticed (and dropped the nonce).
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, console.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("bare FIN {bare_fin}: the SP kept the console waiting"))
            .ok();
        let mut data = sp.raw().await;
        let reply = data_hello(&mut data, "acme", &session_id, &nonce).await;
        assert!(
            matches!(
                reply,
                SessionMsg::Error {
                    code: ErrorCode::BadNonce,
                    ..
                }
            ),
            "bare FIN {bare_fin}: {reply:?}"
        );
    }
    let entries = sp.registry.audit_entries(10).expect("audit");
    assert!(entries.is_empty(), "no session was opened: {entries:?}");
}

/// Point 4: a console whose wait timed out has been told `tenant_timeout`; its nonce is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_dies_when_the_console_times_out() {
    let sp = TestSp::start(SpConfig {
        session_open_timeout_secs: 1,
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut control = sp.raw_control("acme", &secret).await;
    let token = operator_token(&sp).await;
    let mut console = sp.raw().await;
    let _progress = console_hello(&mut console, &token, "acme").await;
    let (session_id, nonce) = open_data(&mut control).await;
    let timed_out: SessionMsg = read_frame(&mut console, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("an answer");
    assert!(
        matches!(
            timed_out,
            SessionMsg::Error {
                code: ErrorCode::TenantTimeout,
                ..
            }
        ),
        "{timed_out:?}"
    );
    let mut data = sp.raw().await;
    let reply = data_hello(&mut data, "acme", &session_id, &nonce).await;
    assert!(
        matches!(
            reply,
            SessionMsg::Error {
                code: ErrorCode::BadNonce,
                ..
            }
        ),
        "{reply:?}"
    );
}

/// What PROTOCOL.md promises about bytes around `ready`: what the console sends before it
/// reaches the tenant first, after the splice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_the_console_sends_before_ready_reach_the_tenant_first() {
    let sp = TestSp::start(SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut control = sp.raw_control("acme", &secret).await;
    let token = operator_token(&sp).await;
    let mut console = sp.raw().await;
    let hello = Hello::new(Role::ConsoleSession {
        token,
        tenant: "acme".into(),
        service: "echo".into(),
    });
    // The hello and the first request in one write, before any answer.
    let mut first = rac::wire::frame::encode_frame(&hello).expect("encode");
    first.extend_from_slice(b"early request");
    console.write_all(&first).await.expect("write");
    let (session_id, nonce) = open_data(&mut control).await;
    let mut data = sp.raw().await;
    let ready = data_hello(&mut data, "acme", &session_id, &nonce).await;
    assert!(matches!(ready, SessionMsg::Ready { .. }), "{ready:?}");
    let mut got = [0u8; 13];
    tokio::time::timeout(PATIENCE, data.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("the early bytes");
    assert_eq!(&got, b"early request");
    data.write_all(b"answer").await.expect("answer");
    let mut frames = Vec::new();
    loop {
        let msg: SessionMsg = read_frame(&mut console, MAX_FRAME_LEN)
            .await
            .expect("read")
            .expect("a frame");
        let ready = matches!(msg, SessionMsg::Ready { .. });
        frames.push(msg);
        if ready {
            break;
        }
    }
    assert!(
        matches!(
            frames.as_slice(),
            [SessionMsg::Progress { .. }, SessionMsg::Ready { .. }]
        ),
        "{frames:?}"
    );
    let mut answer = [0u8; 6];
    console.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"answer");
}

/// Point 5: a tenant that goes silent is dropped `dead_after_secs` after it was last heard,
/// not at the first heartbeat tick after that. With a heartbeat of 10 s and dead_after of
/// 11 s the tick-based check fired at 20 s; the bounds leave seconds of slack either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tenant_is_dropped_at_dead_after_not_a_heartbeat_later() {
    let sp = TestSp::start(SpConfig {
        heartbeat_secs: 10,
        dead_after_secs: 11,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("quiet");
    let mut control = sp.raw_control("quiet", &secret).await;
    let heard = Instant::now();
    let _ = frames_until_closed(&mut control).await;
    let silent = heard.elapsed();
    eprintln!("dropped after {silent:?} of silence");
    assert!(silent >= Duration::from_millis(10_500), "{silent:?}");
    assert!(silent < Duration::from_secs(16), "{silent:?}");
}

/// Point 5, the tenant's side: a redirector whose SP goes silent gives up on it
/// `dead_after_secs` (from the welcome) after it last heard it, not a heartbeat later. The
/// "SP" is a TLS server with the test SP's certificate that welcomes and then says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirector_drops_a_silent_sp_at_dead_after() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let acceptor = rac::net::tls::server_acceptor(&sp.state.server_chain(), &sp.state.server_key())
        .expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_sp = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream = acceptor
            .accept(ReadAhead::new(tcp))
            .await
            .expect("handshake");
        let _hello = rac::wire::frame::read_frame_bytes(&mut stream, MAX_FRAME_LEN)
            .await
            .expect("hello");
        let welcome = HelloReply::Welcome(Welcome {
            server: "silent".into(),
            heartbeat_secs: 10,
            dead_after_secs: 11,
            gateways: vec![],
            token: None,
            token_expires_in_secs: None,
        });
        write_frame(&mut stream, &welcome).await.expect("welcome");
        // Silent from here on, and reading nothing: the tenant's pings pile up unanswered.
        tokio::time::sleep(PATIENCE * 2).await;
        drop(stream);
    });
    let mut config = sp.tenant_config("acme", &secret);
    config.endpoints = vec![silent_sp.to_string()];
    config.follow_gateway_pool = false;
    let mut tenant = TestTenant::start(config);
    tenant.online().await;
    let heard = Instant::now();
    let state = tenant.not_online().await;
    let silent = heard.elapsed();
    eprintln!("gave up after {silent:?} of silence: {state:?}");
    assert!(silent >= Duration::from_millis(10_500), "{silent:?}");
    assert!(silent < Duration::from_secs(16), "{silent:?}");
    server.abort();
}

/// Point 6: a second control connection with the same credentials replaces the first, and
/// the first hears why in a `goodbye` with `replaced` naming the newcomer's address, then a
/// clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_control_connection_replaces_the_first_with_goodbye_replaced() {
    let sp = TestSp::start(SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut first = sp.raw_control("acme", &secret).await;
    let mut second = sp.raw_control("acme", &secret).await;
    let (seen, clean) = frames_until_closed(&mut first).await;
    match seen.as_slice() {
        [ControlMsg::Goodbye { code, reason }] => {
            assert_eq!(*code, ErrorCode::Replaced, "{reason}");
            assert!(
                reason.contains("replaced by a connection from 127.0.0.1:"),
                "{reason}"
            );
        }
        other => panic!("expected one goodbye, got {other:?}"),
    }
    assert!(clean, "closed without close_notify");
    // The newcomer is the tenant's connection now.
    write_frame(&mut second, &ControlMsg::Ping { seq: 7 })
        .await
        .expect("ping");
    let pong = next_control(&mut second, |m| match m {
        ControlMsg::Pong { seq } => Some(*seq),
        _ => None,
    })
    .await;
    assert_eq!(pong, 7);
}

/// Point 6, the tenant's side: a redirector replaced by another connection with its
/// credentials waits the longest backoff and says why, instead of coming straight back to
/// replace the newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_redirector_backs_off_instead_of_fighting() {
    let sp = TestSp::start(SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut config = sp.tenant_config("acme", &secret);
    config.backoff_max = Duration::from_secs(3600);
    let mut tenant = TestTenant::start(config);
    tenant.online().await;
    let mut newcomer = sp.raw_control("acme", &secret).await;
    match tenant.not_online().await {
        AgentState::Waiting {
            retry_in,
            last_error,
        } => {
            assert_eq!(retry_in, Duration::from_secs(3600), "{last_error}");
            assert!(
                last_error.contains("replaced by a connection from 127.0.0.1:"),
                "{last_error}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The newcomer keeps the tenant's slot.
    write_frame(&mut newcomer, &ControlMsg::Ping { seq: 3 })
        .await
        .expect("ping");
    let pong = next_control(&mut newcomer, |m| match m {
        ControlMsg::Pong { seq } => Some(*seq),
        _ => None,
    })
    .await;
    assert_eq!(pong, 3);
}

/// A goodbye code this build does not know (from a newer SP) still parses, so the tenant
/// reads the goodbye and its reason instead of failing on the frame.
#[test]
fn a_goodbye_with_an_unknown_code_still_parses() {
    let msg: ControlMsg =
        serde_json::from_str(r#"{"type":"goodbye","code":"from_the_future","reason":"r"}"#)
            .expect("parses");
    assert!(
        matches!(msg, ControlMsg::Goodbye { code: ErrorCode::Other, ref reason } if reason == "r"),
        "{msg:?}"
    );
    let replaced: ControlMsg =
        serde_json::from_str(r#"{"type":"goodbye","code":"replaced","reason":"r"}"#)
            .expect("parses");
    assert!(
        matches!(
            replaced,
            ControlMsg::Goodbye {
                code: ErrorCode::Replaced,
                ..
            }
        ),
        "{replaced:?}"
    );
}

/// Point 7: a login with a token says how long that token has left, as a password login does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_login_welcome_says_when_the_token_expires() {
    let sp = TestSp::start(quick_config()).await;
    let first = password_welcome(&sp).await;
    let ttl = first.token_expires_in_secs.expect("password login: ttl");
    assert_eq!(ttl, sp.config.token_ttl_secs);
    let reply = first_frame_reply(
        &sp,
        &json!({"version": 1, "role": "operator", "user": sp.operator,
                "token": first.token.expect("token")}),
    )
    .await;
    assert_eq!(reply["type"], "welcome", "{reply}");
    let left = reply["token_expires_in_secs"]
        .as_u64()
        .unwrap_or_else(|| panic!("token login without token_expires_in_secs: {reply}"));
    assert!(left <= ttl, "{left} > {ttl}");
    assert!(left + PATIENCE.as_secs() >= ttl, "{left} of {ttl}");
}

/// Which side of a session ends its stream with a bare TCP FIN.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finisher {
    Console,
    Tenant,
}

/// Point 9: one side ends its session with a bare TCP FIN after its last bytes; they arrive,
/// the other direction carries a megabyte on to its own clean end, and the audit says
/// `closed (no close_notify from …)`, with every byte counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_fin_ends_one_direction_and_the_other_carries_on() {
    const MORE: usize = 1024 * 1024;
    let sp = TestSp::start(SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    let mut control = sp.raw_control("acme", &secret).await;
    let token = operator_token(&sp).await;
    for finisher in [Finisher::Console, Finisher::Tenant] {
        let (mut console, console_fin) = raw_with_fin(&sp).await;
        let _progress = console_hello(&mut console, &token, "acme").await;
        let (session_id, nonce) = open_data(&mut control).await;
        let (mut data, data_fin) = raw_with_fin(&sp).await;
        let ready = data_hello(&mut data, "acme", &session_id, &nonce).await;
        assert!(matches!(ready, SessionMsg::Ready { .. }), "{ready:?}");
        let ready: SessionMsg = read_frame(&mut console, MAX_FRAME_LEN)
            .await
            .expect("read")
            .expect("ready");
        assert!(matches!(ready, SessionMsg::Ready { .. }), "{ready:?}");

        let (quitter, quitter_fin, stayer) = match finisher {
            Finisher::Console => (&mut console, &console_fin, &mut data),
            Finisher::Tenant => (&mut data, &data_fin, &mut console),
        };
        quitter.write_all(b"last words").await.expect("write");
        quitter.flush().await.expect("flush");
        quitter_fin
            .shutdown(std::net::Shutdown::Write)
            .expect("bare FIN");
        let mut got = Vec::new();
        tokio::time::timeout(PATIENCE, stayer.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("a clean end from the SP");
        assert_eq!(got, b"last words", "{finisher:?}");
        // The other direction still flows, a megabyte of it, then ends cleanly.
        let more = pattern(9, MORE);
        let writing = async {
            stayer.write_all(&more).await.expect("write more");
            stayer.shutdown().await.expect("close_notify");
        };
        let mut back = Vec::new();
        let reading = tokio::time::timeout(PATIENCE, quitter.read_to_end(&mut back));
        let ((), read) = tokio::join!(writing, reading);
        read.expect("in time").expect("read to a clean end");
        assert!(back == more, "{finisher:?}: {} bytes came back", back.len());

        let entry = tokio::time::timeout(PATIENCE, async {
            loop {
                let entries = sp.registry.audit_entries(1).expect("audit");
                if let Some(entry) = entries.into_iter().next()
                    && entry.ended_at.is_some()
                {
                    return entry;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the audit row closes");
        let (party, to_tenant, from_tenant) = match finisher {
            Finisher::Console => ("console", 10, MORE as u64),
            Finisher::Tenant => ("tenant", MORE as u64, 10),
        };
        assert_eq!(
            entry.outcome,
            format!("closed (no close_notify from the {party})")
        );
        assert_eq!(entry.bytes_to_tenant, to_tenant, "{entry:?}");
        assert_eq!(entry.bytes_from_tenant, from_tenant, "{entry:?}");
    }
}
