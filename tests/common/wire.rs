//! The relay protocol spoken by hand over a raw TLS stream to the SP, as a peer written in
//! another language would: a frame read or sent and answered, the hellos of each role, the
//! `open_data` a hand-made tenant waits for, and a connection that can end with a bare FIN.

use std::net::Shutdown;

use rac::net::tls::{ClientStream, TlsClient, Trust};
use rac::sp::config::SpConfig;
use rac::wire::frame::{MAX_FRAME_LEN, read_frame, write_frame};
use rac::wire::protocol::{ControlMsg, ErrorCode, Hello, HelloReply, Role, SessionMsg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{PATIENCE, TestSp, next_control, quick_config};

/// [`quick_config`] for tests that hold a hand-made control connection and read it only when
/// they want a frame: the SP drops a silent tenant after two minutes, not four seconds.
pub fn hand_made_config() -> SpConfig {
    SpConfig {
        dead_after_secs: 120,
        ..quick_config()
    }
}

/// [`hand_made_config`] with a session open timeout longer than the hang guard: a console
/// that waits for the timeout, instead of hearing at once, fails the test.
pub fn patient_open_config() -> SpConfig {
    SpConfig {
        session_open_timeout_secs: PATIENCE.as_secs() * 2,
        ..hand_made_config()
    }
}

/// The next frame, as `T`; panics naming `what` if the stream fails or ends first.
pub async fn expect_frame<T: DeserializeOwned, S: AsyncRead + Unpin>(
    stream: &mut S,
    what: &str,
) -> T {
    read_frame(stream, MAX_FRAME_LEN)
        .await
        .unwrap_or_else(|e| panic!("reading {what}: {e}"))
        .unwrap_or_else(|| panic!("the stream ended before {what}"))
}

/// Sends `msg` as one frame and reads the answer.
pub async fn ask<T, S>(stream: &mut S, msg: &impl Serialize) -> T
where
    T: DeserializeOwned,
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_frame(stream, msg).await.expect("send a frame");
    expect_frame(stream, "the answer").await
}

/// A tenant control hello (offering `services`) on `stream`; panics unless the SP welcomes
/// it.
pub async fn control_hello(
    stream: &mut ClientStream,
    tenant: &str,
    secret: &str,
    agent: &str,
    services: &[&str],
) {
    let hello = Hello::new(Role::TenantControl {
        tenant: tenant.into(),
        secret: secret.into(),
        agent: agent.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        provider_access: true,
        tenant_key: test_tenant_key(tenant),
        early_client_hello: false,
    });
    let welcome: HelloReply = ask(stream, &hello).await;
    assert!(matches!(welcome, HelloReply::Welcome(_)), "{welcome:?}");
}

/// A hand-made tenant's key: one per tenant name for the whole test process, so its hellos
/// always present the same key and [`tenant_end_to_end`] can prove it.
pub fn test_tenant_identity(tenant: &str) -> std::sync::Arc<rac::net::tls::e2e::Identity> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static KEYS: OnceLock<Mutex<HashMap<String, Arc<rac::net::tls::e2e::Identity>>>> =
        OnceLock::new();
    let mut keys = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    keys.entry(tenant.to_string())
        .or_insert_with(|| Arc::new(rac::net::tls::e2e::Identity::generate().expect("key")))
        .clone()
}

/// The key fingerprint a hand-made tenant presents in its control hello.
pub fn test_tenant_key(tenant: &str) -> String {
    test_tenant_identity(tenant).fingerprint_text()
}

/// The tenant's end of a session a hand-made tenant's data connection carries: after
/// `ready`, the end-to-end handshake with the console holding `console_key`.
pub async fn tenant_end_to_end(
    data: ClientStream,
    tenant: &str,
    console_key: [u8; 32],
) -> rac::net::tls::ServerStream {
    rac::net::tls::e2e::accept(
        after_ready(data),
        &test_tenant_identity(tenant),
        console_key,
    )
    .await
    .expect("end-to-end handshake with the console")
}

/// Takes a hand-made connection out of the SP's TLS after `ready`: what both ends exchange
/// from there on goes through the SP as it is (a real console and tenant run their
/// end-to-end handshake over it).
pub fn after_ready(stream: ClientStream) -> rac::net::tls::ReadAhead {
    rac::net::tls::e2e::leave_client(stream).expect("at a record boundary after ready")
}

/// A console's session hello for `tenant`'s `echo` service; the SP's first answer.
pub async fn console_hello(stream: &mut ClientStream, token: &str, tenant: &str) -> SessionMsg {
    let hello = Hello::new(Role::ConsoleSession {
        token: token.into(),
        tenant: tenant.into(),
        service: "echo".into(),
        client_hello: None,
    });
    ask(stream, &hello).await
}

/// A tenant's data hello for one session; the SP's answer.
pub async fn data_hello(
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
    ask(stream, &hello).await
}

/// The session id and nonce of the next `open_data` on a hand-made control connection
/// (pings answered on the way).
pub async fn open_data(control: &mut ClientStream) -> (String, String) {
    next_control(control, |m| match m {
        ControlMsg::OpenData {
            session_id, nonce, ..
        } => Some((session_id.clone(), nonce.clone())),
        _ => None,
    })
    .await
}

/// Sends a ping with `seq` on a hand-made control connection; the `seq` of the pong that
/// answers it.
pub async fn ping(control: &mut ClientStream, seq: u64) -> u64 {
    write_frame(control, &ControlMsg::Ping { seq, rtt_us: None })
        .await
        .expect("ping");
    next_control(control, |m| match m {
        ControlMsg::Pong { seq } => Some(*seq),
        _ => None,
    })
    .await
}

/// Reads control frames (answering none) until the SP ends the connection; the frames that
/// are not pings, and whether the end was a clean TLS close_notify.
pub async fn frames_until_closed(control: &mut ClientStream) -> (Vec<ControlMsg>, bool) {
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

/// Panics unless `msg` is a session `error` with `code`.
pub fn assert_session_error(msg: &SessionMsg, code: ErrorCode) {
    assert!(
        matches!(msg, SessionMsg::Error { code: got, .. } if *got == code),
        "expected a {code:?} error, got {msg:?}"
    );
}

impl TestSp {
    /// Sends `body` as the first frame of a fresh connection; the SP's answer.
    pub async fn first_frame_reply(&self, body: &impl Serialize) -> serde_json::Value {
        ask(&mut self.raw().await, body).await
    }

    /// Adds the tenant `name` and opens a hand-made control connection for it, past its
    /// welcome.
    pub async fn hand_made_tenant(&self, name: &str) -> ClientStream {
        let secret = self.add_tenant(name);
        self.raw_control(name, &secret).await
    }

    /// A tenant data hello on a fresh connection: the SP's answer, and the connection (spliced
    /// to the console after `ready`).
    pub async fn present_nonce(
        &self,
        tenant: &str,
        session_id: &str,
        nonce: &str,
    ) -> (SessionMsg, ClientStream) {
        let mut data = self.raw().await;
        let reply = data_hello(&mut data, tenant, session_id, nonce).await;
        (reply, data)
    }

    /// A TLS connection to the SP, and a second handle on its socket to end it with a bare
    /// TCP FIN (a shutdown of the write side with no TLS close_notify before it), as many TLS
    /// stacks end a connection: see [`bare_fin`].
    pub async fn raw_with_fin(&self) -> (ClientStream, std::net::TcpStream) {
        let addr = self.addr;
        let std_tcp = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(addr))
            .await
            .expect("join")
            .expect("connect");
        let fin = std_tcp.try_clone().expect("clone the socket");
        std_tcp.set_nonblocking(true).expect("nonblocking");
        let tcp = tokio::net::TcpStream::from_std(std_tcp).expect("tokio socket");
        let tls = TlsClient::new(&Trust::CaFile(self.ca.clone()), "localhost").expect("tls");
        (tls.handshake(tcp).await.expect("handshake"), fin)
    }
}

/// Ends the write side of the socket under a [`TestSp::raw_with_fin`] stream with a bare FIN.
pub fn bare_fin(socket: &std::net::TcpStream) {
    socket.shutdown(Shutdown::Write).expect("bare FIN");
}
