//! The relay protocol as docs/PROTOCOL.md writes it, tried by hand over real TLS on loopback,
//! as a peer written in another language would meet it (issue 20): every refusal in one
//! shape, nonces that die with the console's wait, dead peers noticed on time, a replaced
//! control connection told so, and sessions that end with a bare TCP FIN on one side.

mod common;

use std::time::{Duration, Instant};

use common::wire::{
    after_ready, assert_session_error, bare_fin, console_hello, data_hello, expect_frame,
    frames_until_closed, hand_made_config, open_data, patient_open_config, ping,
};
use common::{
    PATIENCE, TestSp, TestTenant, eventually, loopback, next_control, open_in_background, pattern,
    quick_config, wait_status,
};
use rac::net::tenant_redirector::AgentState;
use rac::net::tls::{ClientStream, ReadAhead};
use rac::sp::config::SpConfig;
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{
    ControlMsg, ErrorCode, HelloReply, SessionMsg, Stage, TenantStatus, Welcome,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        (login(json!(1)), "version_mismatch", "sent 1"),
        (
            login(json!(99_999_999_999u64)),
            "version_mismatch",
            "99999999999",
        ),
    ];
    for (body, code, words) in cases {
        let reply = sp.first_frame_reply(&body).await;
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
    let sp = TestSp::start(hand_made_config()).await;
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
    let sp = TestSp::start(patient_open_config()).await;
    let mut control = sp.hand_made_tenant("acme").await;
    let console = sp.console().await;
    wait_status(&console, "acme", TenantStatus::Online).await;
    let waiting = open_in_background(&console, "acme");
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
    let sp = TestSp::start(patient_open_config()).await;
    let mut control = sp.hand_made_tenant("acme").await;
    let token = operator_token(&sp).await;
    for with_fin in [false, true] {
        let (mut console, fin) = sp.raw_with_fin().await;
        let progress = console_hello(&mut console, &token, "acme").await;
        assert_eq!(
            progress,
            SessionMsg::Progress {
                stage: Stage::WaitingForTenant
            }
        );
        let (session_id, nonce) = open_data(&mut control).await;
        if with_fin {
            bare_fin(&fin);
        } else {
            console.shutdown().await.expect("close_notify");
        }
        // The SP closes its side once it has noticed (and dropped the nonce).
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, console.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("bare FIN {with_fin}: the SP kept the console waiting"))
            .ok();
        let (reply, _) = sp.present_nonce("acme", &session_id, &nonce).await;
        assert_session_error(&reply, ErrorCode::BadNonce);
    }
    let entries = sp.registry.audit_entries(10).expect("audit");
    assert!(entries.is_empty(), "no session was opened: {entries:?}");
}

/// Point 4: a console whose wait timed out has been told `tenant_timeout`; its nonce is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_dies_when_the_console_times_out() {
    let sp = TestSp::start(SpConfig {
        session_open_timeout_secs: 1,
        ..hand_made_config()
    })
    .await;
    let mut control = sp.hand_made_tenant("acme").await;
    let token = operator_token(&sp).await;
    let mut console = sp.raw().await;
    let _progress = console_hello(&mut console, &token, "acme").await;
    let (session_id, nonce) = open_data(&mut control).await;
    let timed_out: SessionMsg = expect_frame(&mut console, "the timeout").await;
    assert_session_error(&timed_out, ErrorCode::TenantTimeout);
    let (reply, _) = sp.present_nonce("acme", &session_id, &nonce).await;
    assert_session_error(&reply, ErrorCode::BadNonce);
}

/// What PROTOCOL.md promises about bytes around `ready`: a console must send nothing between
/// its hello and `ready` (its next bytes belong to the end-to-end channel); one that sends
/// data early is refused, and its nonce dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_that_sends_data_before_ready_is_refused() {
    let sp = TestSp::start(hand_made_config()).await;
    let mut control = sp.hand_made_tenant("acme").await;
    let token = operator_token(&sp).await;
    let mut console = sp.raw().await;
    let progress = console_hello(&mut console, &token, "acme").await;
    assert!(
        matches!(progress, SessionMsg::Progress { .. }),
        "{progress:?}"
    );
    let (session_id, nonce) = open_data(&mut control).await;
    console.write_all(b"early request").await.expect("write");
    console.flush().await.expect("flush");
    let refused: SessionMsg = expect_frame(&mut console, "the refusal").await;
    assert_session_error(&refused, ErrorCode::BadRequest);
    let SessionMsg::Error { message, .. } = refused else {
        unreachable!()
    };
    assert!(message.contains("before ready"), "{message}");
    let (reply, _) = sp.present_nonce("acme", &session_id, &nonce).await;
    assert_session_error(&reply, ErrorCode::BadNonce);
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

/// PROTOCOL.md's heartbeats: the SP answers every `ping` with a `pong`, and sends a `ping` of
/// its own right after the pong of the tenant's first ping and of every sixth after it (the
/// round trip), unless the ping tells the tenant's own round trip (`rtt_us`); a tenant that
/// keeps pinging hears no other ping. A tenant that goes silent
/// hears a ping 1¼ heartbeats after its last frame, then every heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sp_pings_with_every_sixth_pong_and_a_quiet_tenant_after_a_heartbeat_and_a_quarter() {
    let heartbeat = Duration::from_secs(2);
    let sp = TestSp::start(SpConfig {
        heartbeat_secs: heartbeat.as_secs(),
        dead_after_secs: 30,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("pinger");
    let mut control = sp.raw_control("pinger", &secret).await;
    let mut sp_pings = Vec::new();
    for seq in 1..=13u64 {
        write_frame(&mut control, &ControlMsg::Ping { seq, rtt_us: None })
            .await
            .expect("ping");
        let pong: ControlMsg = expect_frame(&mut control, "pong").await;
        assert!(
            matches!(pong, ControlMsg::Pong { seq: s } if s == seq),
            "{pong:?}"
        );
        if seq % 6 == 1 {
            let ping: ControlMsg = expect_frame(&mut control, "the SP's ping").await;
            let ControlMsg::Ping { seq: theirs, .. } = ping else {
                panic!("after pong {seq}: {ping:?}");
            };
            sp_pings.push(seq);
            write_frame(&mut control, &ControlMsg::Pong { seq: theirs })
                .await
                .expect("pong");
        }
    }
    assert_eq!(sp_pings, [1, 7, 13]);
    // A tenant that reports its own round trip with each ping hears no ping after its pongs
    // (the next frame after each ping is its pong), and the SP shows the reported figure.
    for seq in 14..=26u64 {
        write_frame(
            &mut control,
            &ControlMsg::Ping {
                seq,
                rtt_us: Some(1234),
            },
        )
        .await
        .expect("ping");
        let pong: ControlMsg = expect_frame(&mut control, "pong").await;
        assert!(
            matches!(pong, ControlMsg::Pong { seq: s } if s == seq),
            "after ping {seq}: {pong:?}"
        );
    }
    let row = sp
        .service
        .presence
        .info("pinger")
        .expect("the tenant's row");
    let rtt = row.heartbeat_rtt_ms.expect("a round trip");
    assert!((rtt - 1.234).abs() < 1e-6, "{row:?}");

    // Silence: the next frames are the SP's pings, the first 2.5 s after our last frame.
    let silent_from = Instant::now();
    let mut at = Vec::new();
    for _ in 0..2 {
        let ping: ControlMsg = expect_frame(&mut control, "a ping for a quiet tenant").await;
        assert!(matches!(ping, ControlMsg::Ping { .. }), "{ping:?}");
        at.push(silent_from.elapsed());
    }
    eprintln!("the SP pinged a quiet tenant after {at:?}");
    let slack = Duration::from_millis(50);
    assert!(at[0] + slack >= heartbeat * 5 / 4, "{at:?}");
    assert!(at[1] - at[0] + slack >= heartbeat, "{at:?}");
    assert!(at[1] < Duration::from_secs(20), "{at:?}");
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
            grant_key: None,
            now: None,
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
    let sp = TestSp::start(hand_made_config()).await;
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
    assert_eq!(ping(&mut second, 7).await, 7);
}

/// Point 6, the tenant's side: a redirector replaced by another connection with its
/// credentials waits the longest backoff and says why, instead of coming straight back to
/// replace the newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_redirector_backs_off_instead_of_fighting() {
    let sp = TestSp::start(hand_made_config()).await;
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
    assert_eq!(ping(&mut newcomer, 3).await, 3);
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
    let reply = sp
        .first_frame_reply(
            &json!({"version": 2, "role": "operator", "user": sp.operator,
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

/// Point 9, after `ready`: the SP copies the end-to-end channel's bytes as they are, so one
/// side ending its direction with a FIN after its last bytes ends only that direction: they
/// arrive, the other direction carries a megabyte on to its own end, and the audit says
/// `closed`, with every byte counted. (Hand-made ends exchange plain bytes where a real
/// console and tenant run their handshake: the SP cannot tell the difference.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_ends_one_direction_and_the_other_carries_on() {
    const MORE: usize = 1024 * 1024;
    let sp = TestSp::start(hand_made_config()).await;
    let mut control = sp.hand_made_tenant("acme").await;
    let token = operator_token(&sp).await;
    for finisher in [Finisher::Console, Finisher::Tenant] {
        let mut console = sp.raw().await;
        let _progress = console_hello(&mut console, &token, "acme").await;
        let (session_id, nonce) = open_data(&mut control).await;
        let mut data = sp.raw().await;
        let ready = data_hello(&mut data, "acme", &session_id, &nonce).await;
        assert!(matches!(ready, SessionMsg::Ready { .. }), "{ready:?}");
        let ready: SessionMsg = expect_frame(&mut console, "ready").await;
        assert!(matches!(ready, SessionMsg::Ready { .. }), "{ready:?}");
        let (mut console, mut data) = (after_ready(console), after_ready(data));

        let (quitter, stayer) = match finisher {
            Finisher::Console => (&mut console, &mut data),
            Finisher::Tenant => (&mut data, &mut console),
        };
        quitter.write_all(b"last words").await.expect("write");
        quitter.shutdown().await.expect("FIN");
        let mut got = Vec::new();
        tokio::time::timeout(PATIENCE, stayer.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("the end of that direction");
        assert_eq!(got, b"last words", "{finisher:?}");
        // The other direction still flows, a megabyte of it, then ends.
        let more = pattern(9, MORE);
        let writing = async {
            stayer.write_all(&more).await.expect("write more");
            stayer.shutdown().await.expect("FIN");
        };
        let mut back = Vec::new();
        let reading = tokio::time::timeout(PATIENCE, quitter.read_to_end(&mut back));
        let ((), read) = tokio::join!(writing, reading);
        read.expect("in time").expect("read to the end");
        assert!(back == more, "{finisher:?}: {} bytes came back", back.len());

        let entry = eventually(PATIENCE, "the audit row closes", async || {
            let entries = sp.registry.audit_entries(1).expect("audit");
            entries
                .into_iter()
                .next()
                .filter(|entry| entry.ended_at.is_some())
        })
        .await;
        let (to_tenant, from_tenant) = match finisher {
            Finisher::Console => (10, MORE as u64),
            Finisher::Tenant => (MORE as u64, 10),
        };
        assert_eq!(entry.outcome, "closed");
        assert_eq!(entry.bytes_to_tenant, to_tenant, "{entry:?}");
        assert_eq!(entry.bytes_from_tenant, from_tenant, "{entry:?}");
    }
}

/// An operator connection by hand, logged in with `token`, past its welcome.
async fn operator_by_token(sp: &TestSp, token: &str) -> ClientStream {
    let mut stream = sp.raw().await;
    let hello = json!({"version": 2, "role": "operator", "user": sp.operator, "token": token});
    write_frame(&mut stream, &hello).await.expect("hello");
    let welcome: Value = read_frame(&mut stream, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    stream
}

/// Reads one frame where the SP is expected to answer and then end the connection with
/// close_notify: the frame, and that the end after it was clean.
async fn last_frame_then_clean_end(stream: &mut ClientStream) -> Value {
    let frame: Value = tokio::time::timeout(PATIENCE, read_frame(stream, MAX_FRAME_LEN))
        .await
        .expect("an answer in time")
        .expect("read")
        .expect("a frame");
    let end = tokio::time::timeout(PATIENCE, read_frame::<Value, _>(stream, MAX_FRAME_LEN))
        .await
        .expect("the end in time");
    assert!(
        matches!(end, Ok(None)),
        "after {frame}: expected close_notify, got {end:?}"
    );
    frame
}

/// PROTOCOL.md, "Operator API": an operator connection, a live feed included, hears
/// `shutting_down` in the one error shape when the SP stops, then a clean close, so a
/// console can tell a stopping SP from a broken network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_feed_hears_shutting_down_when_the_sp_stops() {
    let sp = TestSp::start(quick_config()).await;
    let token = operator_token(&sp).await;
    let mut feed = operator_by_token(&sp, &token).await;
    write_frame(
        &mut feed,
        &json!({"type": "list_tenants", "subscribe": true}),
    )
    .await
    .expect("request");
    let snapshot: Value = read_frame(&mut feed, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("snapshot");
    assert_eq!(snapshot["type"], "tenants", "{snapshot}");
    sp.shutdown.cancel();
    let bye = last_frame_then_clean_end(&mut feed).await;
    assert_eq!(bye["type"], "error", "{bye}");
    assert_eq!(bye["code"], "shutting_down", "{bye}");
}

/// PROTOCOL.md, "Operator API": `logout` is answered `logged_out`, then the SP closes the
/// connection cleanly, and the token is dead for the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_out_is_followed_by_a_clean_close() {
    let sp = TestSp::start(quick_config()).await;
    let token = operator_token(&sp).await;
    let mut stream = operator_by_token(&sp, &token).await;
    write_frame(&mut stream, &json!({"type": "logout"}))
        .await
        .expect("logout");
    let answer = last_frame_then_clean_end(&mut stream).await;
    assert_eq!(answer, json!({"type": "logged_out"}));
    let reply = sp
        .first_frame_reply(
            &json!({"version": 2, "role": "operator", "user": sp.operator, "token": token}),
        )
        .await;
    assert_eq!(reply["code"], "auth_failed", "{reply}");
}

/// PROTOCOL.md, "Unknown and malformed input": unknown fields are ignored (in a hello, an
/// operator request, a control frame); a known control frame sent the wrong way is ignored;
/// an unknown operator request is `bad_request`, then a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_ignored_and_unknown_requests_refused() {
    let sp = TestSp::start(SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    })
    .await;
    let secret = sp.add_tenant("acme");
    // Online first, so the SP knows the tenant before the operator lists it.
    let mut control = sp.raw_control("acme", &secret).await;
    let token = operator_token(&sp).await;
    let reply = sp
        .first_frame_reply(
            &json!({"version": 2, "role": "operator", "user": sp.operator, "token": token,
                "from_a_later_version": {"x": 1}}),
        )
        .await;
    assert_eq!(reply["type"], "welcome", "{reply}");

    let mut operator = operator_by_token(&sp, &token).await;
    write_frame(
        &mut operator,
        &json!({"type": "list_tenants", "subscribe": false, "page_size": 10}),
    )
    .await
    .expect("request");
    let tenants: Value = read_frame(&mut operator, MAX_FRAME_LEN)
        .await
        .expect("read")
        .expect("tenants");
    assert_eq!(tenants["type"], "tenants", "{tenants}");
    assert_eq!(tenants["tenants"][0]["name"], "acme", "{tenants}");
    write_frame(&mut operator, &json!({"type": "list_operators"}))
        .await
        .expect("request");
    let refused = last_frame_then_clean_end(&mut operator).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "bad_request", "{refused}");
    let message = refused["message"].as_str().expect("message");
    assert!(message.starts_with("malformed request"), "{message}");

    for ignored in [
        json!({"type": "gateways", "gateways": ["gw.example.net:6180"]}),
        json!({"type": "pong", "seq": 99}),
        json!({"type": "open_data", "session_id": "x", "nonce": "y", "service": "z",
            "grant": {"body": "{}", "signature": ""}}),
    ] {
        write_frame(&mut control, &ignored).await.expect("frame");
    }
    write_frame(
        &mut control,
        &json!({"type": "ping", "seq": 5, "sent_at": 1}),
    )
    .await
    .expect("ping");
    let pong = next_control(&mut control, |m| match m {
        ControlMsg::Pong { seq } => Some(*seq),
        ControlMsg::Goodbye { .. } => panic!("{m:?}"),
        _ => None,
    })
    .await;
    assert_eq!(pong, 5);
}

/// PROTOCOL.md, "Frames": a hello whose length prefix is over 16 KiB is not read: the SP
/// closes the connection at once, without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_closed_without_an_answer() {
    let sp = TestSp::start(quick_config()).await;
    let mut stream = sp.raw().await;
    let prefix = u32::try_from(16 * 1024 + 1).expect("fits").to_be_bytes();
    stream.write_all(&prefix).await.expect("length prefix");
    stream.flush().await.expect("flush");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the SP closes in time");
    assert!(rest.is_empty(), "an answer came: {rest:?} ({read:?})");
}

/// PROTOCOL.md, "Timeouts and limits": every default the table gives for an `sp.toml` key or a
/// `rac gateway` flag is the code's default, and every numeric `sp.toml` key is in it.
#[test]
fn the_documented_defaults_are_the_code_s() {
    let doc = include_str!("../docs/PROTOCOL.md");
    let start = doc.find("\n## Timeouts and limits\n").expect("the section");
    let table = &doc[start..];
    let table = &table[..table[1..].find("\n## ").expect("the next section") + 1];
    let sp = serde_json::to_value(SpConfig::default()).expect("serialize");
    let gateway = rac::net::gateway::GatewayConfig::new(Vec::new());
    let flags = [
        (
            "--first-data-timeout-secs",
            rac::net::gateway::DEFAULT_FIRST_DATA_TIMEOUT_SECS,
        ),
        (
            "--max-silent-per-source",
            rac::net::gateway::DEFAULT_MAX_SILENT_PER_SOURCE as u64,
        ),
        (
            "--idle-timeout-secs",
            rac::net::gateway::DEFAULT_IDLE_TIMEOUT_SECS,
        ),
        ("--max-connections", gateway.max_connections as u64),
    ];
    let mut checked = std::collections::BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
        let [_, default, setting, _] = cells[..] else {
            continue;
        };
        let numbers: Vec<u64> = default
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().expect("a number"))
            .collect();
        let settings = setting.split('`').skip(1).step_by(2);
        let known = settings.filter_map(|key| {
            let value = match sp.get(key) {
                Some(value) => value.as_u64()?,
                None => flags.iter().find(|(flag, _)| *flag == key)?.1,
            };
            Some((key, value))
        });
        for ((key, value), documented) in known.zip(&numbers) {
            assert_eq!(*documented, value, "{key}: {row}");
            checked.insert(key.to_string());
        }
    }
    let numeric = sp
        .as_object()
        .expect("an object")
        .iter()
        .filter(|(_, value)| value.is_u64())
        .map(|(key, _)| key.clone());
    for key in numeric.chain(flags.iter().map(|(flag, _)| flag.to_string())) {
        assert!(checked.contains(&key), "{key} is not in the table");
    }
}
