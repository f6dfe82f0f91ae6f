//! Issue 17: every session is end-to-end encrypted between the console and the tenant
//! redirector, and the SP only copies ciphertext. The "evil SP" suite: an SP (or whoever
//! holds its keys, or sits on its sockets) that substitutes its own tenant key, flips a bit,
//! replays or forges grants, or tries to carry on in plaintext is refused with a clear error;
//! and a positive proof that the bytes at the SP's sockets never hold a session's plaintext.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::fake_sp::{FakeSp, FakeStream};
use common::{PATIENCE, TestSp, TestTenant, eventually, quick_config};
use rac::net::console::{ConsoleClient, ConsoleConfig, ConsoleError};
use rac::net::dial::Route;
use rac::net::tenant_redirector::ServiceTarget;
use rac::net::tls::e2e::{self, E2eError, Identity};
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{ControlMsg, ErrorCode, Grant, HelloReply, Role, SessionMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Records every byte through it, per connection and direction (what the SP's socket on
/// that side sees), and can flip one bit of the stream toward the client.
struct Tap {
    addr: SocketAddr,
    conns: Captured,
}

/// Each connection's bytes through a [`Tap`]: (client to target, target to client).
type Captured = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

impl Tap {
    /// A tap in front of `target`; `flip_at`: the offset in the target-to-client direction
    /// (counted over all connections) whose lowest bit is flipped.
    async fn start(target: SocketAddr, flip_at: Option<usize>) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let downstream = Arc::new(Mutex::new(0usize));
        let record = conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let index = {
                    let mut conns = record.lock().expect("lock");
                    conns.push((Vec::new(), Vec::new()));
                    conns.len() - 1
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, record.clone(), (index, false), None));
                tokio::spawn(pump(
                    sr,
                    cw,
                    record.clone(),
                    (index, true),
                    flip_at.map(|at| (at, downstream.clone())),
                ));
            }
        });
        Tap { addr, conns }
    }

    fn contains(&self, needle: &[u8]) -> bool {
        let conns = self.conns.lock().expect("lock");
        conns.iter().any(|(up, down)| {
            [up, down]
                .iter()
                .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
    }

    fn len(&self) -> usize {
        let conns = self.conns.lock().expect("lock");
        conns.iter().map(|(up, down)| up.len() + down.len()).sum()
    }

    /// The last connection's bytes in one direction.
    fn last(&self, toward_client: bool) -> Vec<u8> {
        let conns = self.conns.lock().expect("lock");
        let (up, down) = conns.last().expect("a connection");
        if toward_client {
            down.clone()
        } else {
            up.clone()
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Captured,
    (index, toward_client): (usize, bool),
    flip: Option<(usize, Arc<Mutex<usize>>)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((at, count)) = &flip {
            let mut count = count.lock().expect("lock");
            if *count <= *at && *at < *count + n {
                buf[*at - *count] ^= 1;
            }
            *count += n;
        }
        {
            let mut conns = record.lock().expect("lock");
            let (up, down) = &mut conns[index];
            if toward_client { down } else { up }.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// What a session carries in these tests: easy to find in a capture, never in ciphertext.
const PLAINTEXT: &[u8] = b"ACME-PAYROLL-BACKUP: account 4711, the password is hunter2. ";

/// An SP, a tenant `acme` offering `echo` whose control and data connections pass through
/// `tenant_tap`, and a console (logged in directly) whose sessions pass through
/// `console_tap`.
struct World {
    sp: TestSp,
    _tenant: TestTenant,
    console_tap: Tap,
    tenant_tap: Tap,
    console: Arc<ConsoleClient>,
}

async fn world(flip_toward_console_at: Option<usize>) -> World {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let tenant_tap = Tap::start(sp.addr, None).await;
    let mut config = sp.tenant_config("acme", &secret);
    config.endpoints = vec![tenant_tap.addr.to_string()];
    let mut tenant = TestTenant::start(config);
    tenant.online().await;
    let console_tap = Tap::start(sp.addr, flip_toward_console_at).await;
    let console = ConsoleClient::new(ConsoleConfig {
        route: Route::Direct(console_tap.addr.to_string()),
        ..sp.console_config()
    })
    .expect("client");
    console.login(&sp.password).await.expect("login");
    World {
        sp,
        _tenant: tenant,
        console_tap,
        tenant_tap,
        console,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sps_sockets_never_carry_a_sessions_plaintext() {
    let w = world(None).await;
    let mut session = w
        .console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    assert!(session.e2e.pinned_now, "first use pins the tenant's key");
    let sent: Vec<u8> = PLAINTEXT.repeat(2000);
    session.stream.write_all(&sent).await.expect("write");
    session.stream.flush().await.expect("flush");
    let mut back = vec![0u8; sent.len()];
    tokio::time::timeout(PATIENCE, session.stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(
        back, sent,
        "the echo service got and sent back the plaintext"
    );
    drop(session);

    // The SP passed the tenant's bytes on as they came: the end of what the tenant's data
    // connection carried to the SP is, byte for byte, the end of what the SP sent the
    // console (an SP that decrypted and encrypted again would send other bytes).
    let tail = 10_000;
    eventually(
        PATIENCE,
        "the SP passes the tenant's bytes on unchanged",
        async || {
            let (from_tenant, to_console) = (w.tenant_tap.last(false), w.console_tap.last(true));
            (from_tenant.len() > tail
                && to_console.len() > tail
                && from_tenant[from_tenant.len() - tail..] == to_console[to_console.len() - tail..])
                .then_some(())
        },
    )
    .await;

    // Both of the SP's sides carried the session (far more than the plaintext's size, both
    // ways), and neither ever held a piece of the plaintext.
    assert!(
        w.console_tap.len() > 2 * sent.len(),
        "{}",
        w.console_tap.len()
    );
    assert!(
        w.tenant_tap.len() > 2 * sent.len(),
        "{}",
        w.tenant_tap.len()
    );
    for piece in PLAINTEXT.chunks(16) {
        assert!(!w.console_tap.contains(piece), "console side: {piece:?}");
        assert!(!w.tenant_tap.contains(piece), "tenant side: {piece:?}");
    }

    // The key the console pinned is the one the SP recorded for the tenant.
    let recorded = eventually(PATIENCE, "the SP records the tenant's key", async || {
        w.sp.registry
            .tenants()
            .expect("tenants")
            .into_iter()
            .find(|t| t.name == "acme")
            .and_then(|t| t.tenant_key)
    })
    .await;
    let again = w
        .console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("second session");
    assert!(!again.e2e.pinned_now, "the second session matches the pin");
    assert_eq!(again.e2e.tenant_key, recorded);
    assert_eq!(again.e2e.version, "TLS 1.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_on_the_way_ends_the_session_and_no_corrupt_byte_is_delivered() {
    // The bit is flipped far past the relay's own handshake and frames, inside the echo.
    let w = world(Some(200_000)).await;
    let session = w
        .console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = tokio::io::split(session.stream);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&sent).await;
        let _ = write.flush().await;
        write
    });
    let mut got = Vec::new();
    let err = tokio::time::timeout(PATIENCE, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the session ends in time")
    .expect("the session ends with an error, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(
        got.len() < 1_000_000,
        "the stream stopped at the flipped record"
    );
    let expected: Vec<u8> = (0..got.len() as u32).map(|i| (i % 251) as u8).collect();
    assert!(
        got == expected,
        "every byte delivered before the error is intact"
    );
    writer.abort();
    drop(session.e2e);
}

/// A console-facing SP made from the real SP's own certificate and key (so the console
/// trusts it exactly as it trusts the SP): it answers a session hello with `ready` naming
/// `says_tenant_key`, then ends the end-to-end handshake itself with `its_key`.
async fn evil_sp(
    sp: &TestSp,
    says_tenant_key: String,
    its_key: Identity,
    console_key: [u8; 32],
) -> SocketAddr {
    let acceptor = rac::net::tls::server_acceptor(&sp.state.server_chain(), &sp.state.server_key())
        .expect("the SP's own certificate");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor
            .accept(rac::net::tls::ReadAhead::new(tcp))
            .await
            .expect("TLS");
        let hello: rac::wire::protocol::Hello = read_frame(&mut tls, MAX_FRAME_LEN)
            .await
            .expect("hello")
            .expect("hello");
        assert!(matches!(hello.role, Role::ConsoleSession { .. }));
        write_frame(
            &mut tls,
            &SessionMsg::Ready {
                session_id: "evil".into(),
                tenant_key: Some(says_tenant_key),
                client_hello_sent: false,
            },
        )
        .await
        .expect("ready");
        let raw = e2e::leave_server(tls).expect("boundary");
        let _ = e2e::accept(raw, &its_key, console_key).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sp_that_puts_its_own_key_in_the_tenants_place_is_refused() {
    let w = world(None).await;
    // A first session through the real SP pins the tenant's real key.
    let real = w
        .console
        .open_session("acme", "echo", |_, _| {})
        .await
        .expect("session");
    let real_key = real.e2e.tenant_key.clone();
    drop(real);
    let console_key = w.sp.console_keys.identity.fingerprint();

    // The same SP, turned: it claims its own key is the tenant's.
    let evil_key = Identity::generate().expect("key");
    let addr = evil_sp(&w.sp, evil_key.fingerprint_text(), evil_key, console_key).await;
    let turned = ConsoleClient::new(ConsoleConfig {
        route: Route::Direct(addr.to_string()),
        ..w.sp.console_config()
    })
    .expect("client");
    turned.set_token("ab".repeat(32));
    match turned.open_session("acme", "echo", |_, _| {}).await {
        Err(ConsoleError::EndToEnd(E2eError::TenantKeyChanged { pinned, presented })) => {
            assert_eq!(pinned, real_key);
            assert_ne!(presented, real_key);
        }
        Err(other) => panic!("expected a changed-key refusal, got {other}"),
        Ok(_) => panic!("a session through the substituted key was opened"),
    }

    // A console that has pinned nothing yet still holds the SP to the key it has on record:
    // an SP whose `ready` says the real key but which presents another is refused.
    let fresh_keys = rac::net::console::ConsoleKeys::in_memory().expect("keys");
    let evil_key = Identity::generate().expect("key");
    let addr = evil_sp(
        &w.sp,
        real_key.clone(),
        evil_key,
        fresh_keys.identity.fingerprint(),
    )
    .await;
    let fresh = ConsoleClient::new(ConsoleConfig {
        route: Route::Direct(addr.to_string()),
        keys: fresh_keys,
        ..w.sp.console_config()
    })
    .expect("client");
    fresh.set_token("ab".repeat(32));
    match fresh.open_session("acme", "echo", |_, _| {}).await {
        Err(ConsoleError::EndToEnd(E2eError::NotTheRecordedKey { on_record, .. })) => {
            assert_eq!(on_record, real_key);
        }
        Err(other) => panic!("expected a not-the-recorded-key refusal, got {other}"),
        Ok(_) => panic!("a session through the substituted key was opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_key_changed_is_refused_until_an_admin_resets_it() {
    let sp = TestSp::start(quick_config()).await;
    let secret = sp.add_tenant("acme");
    let mut first = sp.raw().await;
    common::wire::control_hello(&mut first, "acme", &secret, "t/1", &["echo"]).await;
    drop(first);
    let recorded = eventually(PATIENCE, "the first key is recorded", async || {
        sp.registry.tenants().expect("tenants")[0]
            .tenant_key
            .clone()
    })
    .await;
    assert_eq!(recorded, common::wire::test_tenant_key("acme"));

    let other_key = rac::wire::format_fingerprint(&[7; 32]);
    let hello_with = |key: String| {
        rac::wire::protocol::Hello::new(Role::TenantControl {
            tenant: "acme".into(),
            secret: secret.clone(),
            agent: "t/1".into(),
            services: vec!["echo".into()],
            provider_access: true,
            tenant_key: key,
            early_client_hello: false,
        })
    };
    let reply: HelloReply =
        common::wire::ask(&mut sp.raw().await, &hello_with(other_key.clone())).await;
    match reply {
        HelloReply::Error(e) => {
            assert_eq!(e.code, ErrorCode::TenantKeyChanged);
            assert!(e.message.contains("reset-key"), "{}", e.message);
        }
        other => panic!("expected tenant_key_changed, got {other:?}"),
    }

    // `rac sp tenant reset-key` (another process's registry write): the next key is taken.
    sp.registry.reset_tenant_key("acme").expect("reset");
    eventually(
        PATIENCE,
        "the new key is accepted after the reset",
        async || {
            let reply: HelloReply =
                common::wire::ask(&mut sp.raw().await, &hello_with(other_key.clone())).await;
            matches!(reply, HelloReply::Welcome(_)).then_some(())
        },
    )
    .await;
}

/// The next `reject` on a hand-made SP's control connection (pings answered).
async fn next_reject(control: &mut FakeStream) -> (ErrorCode, String) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let msg: ControlMsg = read_frame(control, MAX_FRAME_LEN)
                .await
                .expect("read")
                .expect("control open");
            match msg {
                ControlMsg::Ping { seq, .. } => {
                    write_frame(control, &ControlMsg::Pong { seq })
                        .await
                        .expect("pong");
                }
                ControlMsg::Reject { code, reason, .. } => return (code, reason),
                _ => {}
            }
        }
    })
    .await
    .expect("a reject in time")
}

async fn open_data(control: &mut FakeStream, session_id: &str, service: &str, grant: Grant) {
    write_frame(
        control,
        &ControlMsg::OpenData {
            session_id: session_id.into(),
            nonce: "n".into(),
            service: service.into(),
            grant,
            client_hello: None,
        },
    )
    .await
    .expect("open_data");
}

/// The tenant's data connection for `session_id` on a hand-made SP, made `ready` and taken
/// out of the relay's TLS there, as the real SP leaves it.
async fn ready_at_the_boundary(fake: &FakeSp, session_id: &str) -> rac::net::tls::ReadAhead {
    let (mut data, _) = fake.accept().await;
    write_frame(
        &mut data,
        &SessionMsg::Ready {
            session_id: session_id.into(),
            tenant_key: None,
            client_hello_sent: false,
        },
    )
    .await
    .expect("ready");
    e2e::leave_server(data).expect("boundary")
}

/// A local TCP service that counts the connections it gets.
async fn counting_service() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            *seen.lock().expect("lock") += 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_stale_or_foreign_grants_are_refused() {
    let fake = FakeSp::start().await;
    let (service_addr, dialled) = counting_service().await;
    let mut services = BTreeMap::new();
    services.insert("svc".to_string(), ServiceTarget::Tcp(service_addr));
    let locked_key = Identity::generate().expect("key");
    let mut config = fake.tenant_config(services);
    config.operator_keys = vec![locked_key.fingerprint()];
    let _tenant = TestTenant::start(config);
    let mut control = fake.control(Vec::new()).await;
    let console = locked_key.fingerprint_text();

    // A valid grant: the tenant opens its data connection.
    let grant = fake.grant("s1", "svc", &console);
    open_data(&mut control, "s1", "svc", grant.clone()).await;
    let (_data, hello) = fake.accept().await;
    assert!(matches!(hello.role, Role::TenantData { .. }), "{hello:?}");

    let cases: Vec<(&str, &str, Grant, &str)> = vec![
        ("s1", "svc", grant, "used before"),
        ("s2", "svc", fake.grant("s9", "svc", &console), "session"),
        ("s3", "svc", fake.grant("s3", "other", &console), "service"),
        (
            "s4",
            "svc",
            rac::wire::protocol::GrantKey::generate()
                .expect("key")
                .sign(&rac::wire::protocol::GrantBody {
                    session_id: "s4".into(),
                    tenant: "acme".into(),
                    service: "svc".into(),
                    operator: "admin".into(),
                    console_key: console.clone(),
                    expires: rac::util::now_unix_secs() + 30,
                }),
            "signature",
        ),
        (
            "s5",
            "svc",
            fake.grant_key.sign(&rac::wire::protocol::GrantBody {
                session_id: "s5".into(),
                tenant: "acme".into(),
                service: "svc".into(),
                operator: "admin".into(),
                console_key: console.clone(),
                expires: rac::util::now_unix_secs() - 5,
            }),
            "expired",
        ),
        (
            "s6",
            "svc",
            fake.grant_key.sign(&rac::wire::protocol::GrantBody {
                session_id: "s6".into(),
                tenant: "other-tenant".into(),
                service: "svc".into(),
                operator: "admin".into(),
                console_key: console.clone(),
                expires: rac::util::now_unix_secs() + 30,
            }),
            "tenant",
        ),
        (
            "s7",
            "svc",
            fake.grant(
                "s7",
                "svc",
                &Identity::generate().expect("key").fingerprint_text(),
            ),
            "not among the operator keys",
        ),
    ];
    for (session_id, service, grant, why) in cases {
        open_data(&mut control, session_id, service, grant).await;
        let (code, reason) = next_reject(&mut control).await;
        assert_eq!(code, ErrorCode::GrantRefused, "{session_id}: {reason}");
        assert!(
            reason.contains(why),
            "{session_id}: {reason:?} should say {why:?}"
        );
    }
    assert_eq!(
        *dialled.lock().expect("lock"),
        0,
        "no local service was dialled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_talks_only_to_the_granted_console_key_and_never_in_plaintext() {
    let fake = FakeSp::start().await;
    let (service_addr, dialled) = counting_service().await;
    let mut services = BTreeMap::new();
    services.insert("svc".to_string(), ServiceTarget::Tcp(service_addr));
    let _tenant = TestTenant::start(fake.tenant_config(services));
    let mut control = fake.control(Vec::new()).await;
    let granted = Identity::generate().expect("key");

    // Step 7 then `ready` for a session granted to `granted`, on the tenant's data channel
    // (at the end-to-end boundary, as the real SP leaves it).
    let mut session = async |session_id: &str| {
        open_data(
            &mut control,
            session_id,
            "svc",
            fake.grant(session_id, "svc", &granted.fingerprint_text()),
        )
        .await;
        ready_at_the_boundary(&fake, session_id).await
    };

    // The SP carries on in plaintext: the tenant expects a handshake and gets none.
    let mut raw = session("plain").await;
    raw.write_all(b"GET /backup HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, raw.read(&mut buf))
        .await
        .expect("the tenant answers or closes in time")
        .unwrap_or(0);
    assert!(
        !buf[..n].windows(4).any(|w| w == b"GET "),
        "nothing of the plaintext came back"
    );

    // The SP's own key (or any but the granted one) in the console's place.
    let raw = session("impostor").await;
    let impostor = Identity::generate().expect("key");
    if let Ok((mut stream, _)) = e2e::connect(raw, &impostor, None).await {
        let mut buf = [0u8; 1];
        assert!(
            !matches!(stream.read(&mut buf).await, Ok(n) if n > 0),
            "the tenant ended the impostor's handshake"
        );
    }
    assert_eq!(
        *dialled.lock().expect("lock"),
        0,
        "no local service was dialled"
    );

    // The granted key gets through, and only then is the local service dialled.
    let raw = session("granted").await;
    let (mut stream, _) = e2e::connect(raw, &granted, None).await.expect("handshake");
    stream.write_all(b"hello").await.expect("write");
    stream.flush().await.expect("flush");
    let mut back = [0u8; 5];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&back, b"hello");
    assert_eq!(*dialled.lock().expect("lock"), 1);
}

/// The ClientHello a console sends ahead reaches the tenant through the SP: an SP that
/// alters it, puts its own in its place, or sends garbage there opens nothing. The tenant's
/// answer is bound to the bytes it got, so the console's handshake fails; the SP's own
/// ClientHello gets the SP only as far as the key check; the local service is never dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_sent_ahead_that_the_sp_alters_or_replaces_opens_nothing() {
    let fake = FakeSp::start().await;
    let (service_addr, dialled) = counting_service().await;
    let mut services = BTreeMap::new();
    services.insert("svc".to_string(), ServiceTarget::Tcp(service_addr));
    let _tenant = TestTenant::start(fake.tenant_config(services));
    let mut control = fake.control(Vec::new()).await;
    let granted = Identity::generate().expect("key");

    // `open_data` with `client_hello`, the data connection, `ready`: the raw connection the
    // SP would copy to the console, with the tenant's answer already on its way.
    let mut session = async |session_id: &str, client_hello: String| {
        write_frame(
            &mut control,
            &ControlMsg::OpenData {
                session_id: session_id.into(),
                nonce: "n".into(),
                service: "svc".into(),
                grant: fake.grant(session_id, "svc", &granted.fingerprint_text()),
                client_hello: Some(client_hello),
            },
        )
        .await
        .expect("open_data");
        ready_at_the_boundary(&fake, session_id).await
    };

    // One bit of the console's own ClientHello flipped on the way (in its random).
    let dialing = e2e::Dialing::start(&granted).expect("client hello");
    let mut altered = dialing.client_hello().to_vec();
    altered[20] ^= 1;
    let raw = session("altered", hex::encode(&altered)).await;
    let refused = dialing.finish(raw, None, true).await;
    assert!(refused.is_err(), "an altered ClientHello must not complete");

    // The SP's own ClientHello in the console's place: the tenant answers it, and refuses
    // the SP's key at the end of the handshake.
    let impostor = Identity::generate().expect("key");
    let dialing = e2e::Dialing::start(&impostor).expect("client hello");
    let raw = session("impostor", hex::encode(dialing.client_hello())).await;
    if let Ok((mut stream, _)) = dialing.finish(raw, None, true).await {
        let mut buf = [0u8; 1];
        assert!(
            !matches!(stream.read(&mut buf).await, Ok(n) if n > 0),
            "the tenant ended the impostor's handshake"
        );
    }

    // Garbage that only starts like a handshake record: the tenant's answer is an alert.
    let dialing = e2e::Dialing::start(&granted).expect("client hello");
    let raw = session("garbage", "1603010005ffffffffff".into()).await;
    let error = dialing
        .finish(raw, None, true)
        .await
        .err()
        .expect("garbage must not complete");
    assert!(
        error.to_string().contains("end-to-end handshake failed"),
        "{error}"
    );
    assert_eq!(
        *dialled.lock().expect("lock"),
        0,
        "no local service was dialled"
    );

    // The granted console's untouched ClientHello gets through, the service dialled once.
    let dialing = e2e::Dialing::start(&granted).expect("client hello");
    let raw = session("granted", hex::encode(dialing.client_hello())).await;
    let (mut stream, _) = dialing.finish(raw, None, true).await.expect("handshake");
    stream.write_all(b"hello").await.expect("write");
    stream.flush().await.expect("flush");
    let mut back = [0u8; 5];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&back, b"hello");
    assert_eq!(*dialled.lock().expect("lock"), 1);
}
