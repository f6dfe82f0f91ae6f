//! The cloud redirector: the SP port. One TLS port takes every role; the first frame
//! (`Hello`) says which. The accept loop only accepts (it waits only when admission has no
//! place to free, see `admit`): the first byte (under a short deadline), the PROXY header, the TLS handshake and the hello run in the
//! connection's own task under one timeout, and `net::admission` decides which of them to give
//! up when too many are in flight.

mod control;
mod nodes;
mod operator;
mod session;

pub use nodes::NodeLink;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acceptor::Acceptor;
use super::admission::{self, Admission, Shed, Ticket};
use super::proxy_protocol;
use super::tls::{self, ServerStream, TlsAcceptor};
use crate::metrics::{HandshakeFailure, Shed as ShedMetric};
use crate::sp::config::StateDir;
use crate::sp::presence::{Kick, KickReason};
use crate::sp::{Refusal, SpService};
use crate::util::lock;
use crate::wire::frame::{self, MAX_HELLO_LEN};
use crate::wire::protocol::{
    ControlMsg, ErrorCode, Hello, PROTOCOL_VERSION, Role, escape_untrusted,
};

/// Everything `run` needs: the SP backup service and the server's TLS identity.
pub struct SpEngine {
    pub service: Arc<SpService>,
    pub acceptor: TlsAcceptor,
    /// The cluster bus, once [`join_cluster`](Self::join_cluster) joined it.
    pub cluster: Option<NodeLink>,
}

impl SpEngine {
    /// Loads an SP from its state dir (made by `rac sp init`).
    pub fn open(state: &StateDir) -> Result<Self> {
        let service = SpService::open(state)?;
        let tickets = tls::tickets::TicketKey::load_or_create(&state.ticket_key())?;
        let acceptor =
            tls::server_acceptor_with_tickets(&state.server_chain(), &state.server_key(), tickets)
                .context("loading the SP's certificate")?;
        Ok(SpEngine {
            service,
            acceptor,
            cluster: None,
        })
    }
}

/// A tenant's live control connection, as sessions and account changes reach it.
struct ControlHandle {
    conn_id: u64,
    /// Boxed messages: a channel allocates room for 32 of them up front, per tenant.
    tx: mpsc::Sender<Box<ControlMsg>>,
    /// Cancelled when a newer connection of the same tenant replaces this one.
    replaced: CancellationToken,
    /// The tenant takes the console's ClientHello inside `open_data` (its hello said so).
    early_client_hello: bool,
}

/// Where `open_data` for a tenant held here goes.
struct ControlRoute {
    conn_id: u64,
    tx: mpsc::Sender<Box<ControlMsg>>,
    early_client_hello: bool,
}

/// A console waiting for its tenant's data connection (between steps 6 and 8).
struct Pending {
    tenant: String,
    /// The control connection the `open_data` went out on: if it ends first, nobody will
    /// answer, and the console hears so at once. `None`: another node holds the tenant.
    conn_id: Option<u64>,
    nonce: String,
    deadline: Instant,
    tx: oneshot::Sender<DataOutcome>,
}

enum DataOutcome {
    Connected(Box<ServerStream>),
    Rejected(Refusal),
}

/// State shared by every connection of one SP.
struct Shared {
    sp: Arc<SpService>,
    shutdown: CancellationToken,
    controls: Mutex<HashMap<String, ControlHandle>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Cancelling a tenant's token ends all its sessions (tenant disabled or removed).
    tenant_sessions: Mutex<HashMap<String, CancellationToken>>,
    /// Spliced sessions and operator connections (the tenant feed) by number, with the token
    /// that opened each: a revoked token ends them.
    live_sessions: Mutex<HashMap<u64, LiveSession>>,
    next_session: std::sync::atomic::AtomicU64,
    admission: Arc<Admission>,
    /// This node's part in a cluster with a bus.
    cluster: Option<NodeLink>,
    /// Sessions whose consoles wait on other nodes, by session id (see `nodes.rs`).
    forwards: Mutex<HashMap<String, nodes::Forward>>,
    /// Sessions this node forwards to other nodes now.
    forwarding: std::sync::atomic::AtomicUsize,
    /// Where tenant control connections live after their welcome.
    control_thread: Arc<ControlThread>,
}

/// The thread the tenants' control connections run on after their welcome: a current-thread
/// runtime of their own. Thousands of idle tenants each wake the SP once per heartbeat; on
/// the main runtime such a wake-up often woke its second worker as well, for nothing (at
/// 15,000 tenants pinging every 30 s: 1.3–1.6% of a core, against 0.9% with one worker,
/// docs/BENCHMARKS.md). Here one thread wakes, alone. Handshakes, sessions and operators stay
/// on the main runtime, whose two workers they use.
struct ControlThread {
    handle: tokio::runtime::Handle,
    /// Tracks the connections here, so the SP's shutdown waits for their goodbyes.
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl ControlThread {
    fn start(tracker: TaskTracker) -> std::io::Result<Arc<Self>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("rac-control".into())
            .spawn(move || runtime.block_on(stopped.cancelled()))?;
        Ok(Arc::new(ControlThread {
            handle,
            tracker,
            stop,
        }))
    }

    /// The runtime whose reactor a control connection's socket moves to.
    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handle.spawn(self.tracker.track_future(task));
    }
}

impl Drop for ControlThread {
    /// Ends the thread (once nothing on it holds the SP's state any more).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A spliced session or an operator connection, as the registry watcher sees it.
struct LiveSession {
    token: String,
    cancel: CancellationToken,
}

impl Shared {
    fn sessions_token(&self, tenant: &str) -> CancellationToken {
        lock(&self.tenant_sessions)
            .entry(tenant.to_string())
            .or_insert_with(|| self.shutdown.child_token())
            .clone()
    }

    /// The tenant's control connection now: its number and its command queue.
    fn control_sender(&self, tenant: &str) -> Option<ControlRoute> {
        lock(&self.controls).get(tenant).map(|h| ControlRoute {
            conn_id: h.conn_id,
            tx: h.tx.clone(),
            early_client_hello: h.early_client_hello,
        })
    }

    /// Acts on an account change: says goodbye on the control connection and, unless only
    /// the secret changed, ends the tenant's sessions.
    fn kick(&self, kick: &Kick) {
        let (code, reason) = match kick.reason {
            KickReason::Disabled => (ErrorCode::TenantDisabled, "tenant disabled by the SP"),
            KickReason::Removed => (ErrorCode::AuthFailed, "tenant account removed by the SP"),
            KickReason::SecretRotated => (ErrorCode::AuthFailed, "tenant secret rotated by the SP"),
        };
        tracing::info!(tenant = %kick.tenant, reason, "dropping tenant connection");
        if let Some(handle) = lock(&self.controls).remove(&kick.tenant) {
            let _ = handle.tx.try_send(Box::new(ControlMsg::Goodbye {
                code,
                reason: reason.to_string(),
            }));
            // If the goodbye could not be queued the connection still ends.
            handle.replaced.cancel();
        }
        if kick.reason != KickReason::SecretRotated
            && let Some(token) = lock(&self.tenant_sessions).remove(&kick.tenant)
        {
            token.cancel();
        }
    }
}

/// Serves the SP port until `shutdown` fires, then ends every connection and returns.
pub async fn run(
    engine: SpEngine,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let config = engine.service.config.clone();
    // A cluster node drains before it stops (see `nodes::drain`): `shutdown` ends the
    // accepting, `stop` everything else, once the drain is over.
    let stop = match &engine.cluster {
        Some(_) => CancellationToken::new(),
        None => shutdown.clone(),
    };
    let tracker = TaskTracker::new();
    let control_thread = ControlThread::start(tracker.clone())
        .context("starting the control connections' thread")?;
    let shared = Arc::new(Shared {
        sp: engine.service,
        shutdown: stop.clone(),
        controls: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        tenant_sessions: Mutex::new(HashMap::new()),
        live_sessions: Mutex::new(HashMap::new()),
        next_session: std::sync::atomic::AtomicU64::new(1),
        admission: Admission::new(admission::Limits {
            total: config.max_pending_handshakes,
            per_source: config.max_pending_per_source,
            // A third of the first-byte deadline: a peer's first bytes are long there by then.
            grace: config.first_byte_timeout() / 3,
        }),
        cluster: engine.cluster,
        forwards: Mutex::new(HashMap::new()),
        forwarding: std::sync::atomic::AtomicUsize::new(0),
        control_thread,
    });
    let acceptor = engine.acceptor;
    tracker.spawn(watch_registry(shared.clone()));
    tracker.spawn(summarise_admission(shared.clone()));
    nodes::spawn_tasks(&shared, &tracker);
    let mut listener = Acceptor::new("SP", listener);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "SP listening");
    }
    shared.sp.set_serving(true);

    while let Some((tcp, peer)) = listener.next(&shutdown).await {
        let gateway = config.trusted_proxies.contains(&peer.ip());
        if gateway {
            shared.sp.note_gateway(peer.ip());
        }
        let Some(ticket) = admit(&shared, peer, gateway).await else {
            // Refused: dropping the socket closes it; the summary counts it.
            continue;
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let role_tracker = tracker.clone();
        tracker.spawn(async move {
            // Boxed: the handshake's state (a whole TLS connection in the making) is freed
            // when it ends instead of staying in the task for the connection's lifetime.
            let hello = tokio::select! {
                hello = Box::pin(tokio::time::timeout(
                    shared.sp.config.handshake_timeout(),
                    handshake(&shared, &acceptor, tcp, peer, &ticket),
                )) => hello,
                _ = ticket.evicted() => {
                    shared.sp.metrics.shed(ShedMetric::Displaced);
                    tracing::debug!(%peer, "displaced while talking: its source held more than twice its share");
                    return;
                }
            };
            drop(ticket);
            match hello {
                Ok(Ok((stream, client, hello))) => {
                    let via = (client != peer).then_some(peer);
                    dispatch(&role_tracker, shared, stream, client, via, hello)
                }
                Ok(Err(Failed(why, e))) => {
                    match why {
                        Some(why) => shared.sp.metrics.handshake_failed(why),
                        None => shared.sp.metrics.shed(ShedMetric::Displaced),
                    }
                    // Debug-escaped: the error may quote bytes the peer sent.
                    tracing::debug!(%peer, error = ?format!("{e:#}"), "connection refused during handshake");
                }
                Err(_) => {
                    shared.sp.metrics.handshake_failed(HandshakeFailure::Timeout);
                    tracing::debug!(%peer, "handshake timed out");
                }
            }
        });
    }

    // Not ready from here on (`/readyz`): no new connections, sessions end. Draining is set
    // before serving is cleared, so `/readyz` never gives "not accepting" as the reason of a
    // drain.
    shared.sp.set_draining();
    drop(listener);
    shared.sp.set_serving(false);
    nodes::drain(&shared).await;
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "connections still open after 5 s of shutdown"
        );
    }
    // The control thread ends when the last connection on it has (its `Drop`): one still
    // writing its goodbye finishes, and records the tenant's last sighting, first.
    Ok(())
}

/// A place in admission for a connection just accepted. When every place is held by a
/// connection that talks or may yet (a reconnect storm outrunning the SP's tasks), the accept
/// loop waits for one, and the connections behind wait in the kernel's backlog: known tenants
/// reconnecting are slowed, not refused. Places free as handshakes end, so the wait is bounded
/// by the handshake timeout; past it the connection is refused.
async fn admit(shared: &Shared, peer: SocketAddr, gateway: bool) -> Option<Ticket> {
    const RETRY: Duration = Duration::from_millis(5);
    let started = tokio::time::Instant::now();
    loop {
        if let Some(ticket) = shared.admission.admit(peer.ip(), gateway) {
            return Some(ticket);
        }
        if started.elapsed() >= shared.sp.config.handshake_timeout() {
            shared.admission.count_shed(peer.ip(), Shed::Refused);
            shared.sp.metrics.shed(ShedMetric::AdmissionFull);
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shared.shutdown.cancelled() => return None,
        }
    }
}

/// A connection given up during its handshake: at which stage (for the metrics; `None`:
/// displaced by newer connections while silent), and why.
struct Failed(Option<HandshakeFailure>, anyhow::Error);

/// Tags a stage's error with the stage.
fn at<T>(why: HandshakeFailure, result: Result<T>) -> Result<T, Failed> {
    result.map_err(|e| Failed(Some(why), e))
}

/// The first byte, the PROXY header (from trusted gateways only), TLS, and the first frame.
async fn handshake(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
    ticket: &Ticket,
) -> Result<(ServerStream, SocketAddr, Hello), Failed> {
    at(
        HandshakeFailure::Silent,
        tcp.set_nodelay(true).map_err(Into::into),
    )?;
    first_byte(shared, &tcp, peer, ticket).await?;
    let header = proxy_protocol::read_proxy_header(&mut tcp, shared.sp.config.handshake_timeout())
        .await
        .context("reading a PROXY header");
    let client = match at(HandshakeFailure::Proxy, header)? {
        None => peer,
        Some(h) if shared.sp.config.trusted_proxies.contains(&peer.ip()) => {
            let client = h.source.unwrap_or(peer);
            ticket.rekey(client.ip());
            // The gateway spoke for its client; the client itself must speak in time too.
            first_byte(shared, &tcp, client, ticket).await?;
            client
        }
        Some(_) => {
            return at(
                HandshakeFailure::Proxy,
                Err(anyhow::anyhow!(
                    "PROXY header from {peer}, which is not a trusted gateway"
                )),
            );
        }
    };
    ticket.talking();
    let stream = acceptor
        .accept(tls::ReadAhead::new(tcp))
        .await
        .context("TLS handshake");
    let mut stream = at(HandshakeFailure::Tls, stream)?;
    let body = frame::read_frame_bytes(&mut stream, MAX_HELLO_LEN)
        .await
        .map_err(anyhow::Error::from)
        .and_then(|body| body.context("closed before saying hello"));
    let body = at(HandshakeFailure::BadHello, body)?;
    match parse_hello(&body) {
        Ok(hello) => Ok((stream, client, hello)),
        Err(refusal) => {
            let _ = send_error(&mut stream, &refusal).await;
            at(
                HandshakeFailure::BadHello,
                Err(anyhow::anyhow!("{}", refusal.message)),
            )
        }
    }
}

/// Waits for a connection's first byte, under `first_byte_timeout_secs`: a socket that says
/// nothing is closed long before the handshake timeout. If no byte is there at the first
/// look, admission is told: that connection may give way to a newer one at once.
async fn first_byte(
    shared: &Shared,
    tcp: &TcpStream,
    from: SocketAddr,
    ticket: &Ticket,
) -> Result<(), Failed> {
    let silent = |e: anyhow::Error| Failed(Some(HandshakeFailure::Silent), e);
    let mut byte = [0u8; 1];
    let mut peek = std::pin::pin!(tokio::time::timeout(
        shared.sp.config.first_byte_timeout(),
        tcp.peek(&mut byte)
    ));
    let first_look = std::future::poll_fn(|cx| Poll::Ready(peek.as_mut().poll(cx))).await;
    let peeked = match first_look {
        Poll::Ready(peeked) => peeked,
        Poll::Pending => {
            ticket.looked_silent();
            loop {
                tokio::select! {
                    peeked = peek.as_mut() => break peeked,
                    () = ticket.given_up_while_silent() => {
                        // In a storm this task may run long after the bytes came: ask the
                        // socket itself before closing a tenant that did speak.
                        if bytes_waiting(tcp) {
                            ticket.readmit();
                            continue;
                        }
                        ticket.displaced();
                        return Err(Failed(None, anyhow::anyhow!("displaced by newer connections while silent")));
                    }
                }
            }
        }
    };
    match peeked {
        Ok(Ok(0)) => Err(silent(anyhow::anyhow!("closed before sending anything"))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(silent(
            anyhow::Error::from(e).context("waiting for the first byte"),
        )),
        Err(_) => {
            shared.admission.count_shed(from.ip(), Shed::Silent);
            Err(silent(anyhow::anyhow!(
                "sent nothing within the first-byte deadline"
            )))
        }
    }
}

/// Are bytes waiting on `tcp` now? Asked of the kernel (through a duplicate of the socket's
/// descriptor), not of the runtime, whose view of readiness lags when it is busy.
fn bytes_waiting(tcp: &TcpStream) -> bool {
    use std::os::fd::AsFd;
    let Ok(fd) = tcp.as_fd().try_clone_to_owned() else {
        return false;
    };
    // The duplicate shares the socket's non-blocking mode: this never waits.
    let probe = std::net::TcpStream::from(fd);
    matches!(probe.peek(&mut [0u8; 1]), Ok(n) if n > 0)
}

/// Logs what admission gave up, one line per interval, so a flood of sockets cannot flood the
/// log too.
async fn summarise_admission(shared: Arc<Shared>) {
    const EVERY: Duration = Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let summary = shared.admission.take_summary();
        if !summary.is_empty() {
            tracing::warn!(
                pending = shared.admission.pending(),
                "connections in handshake given up in the last {}s: {summary}",
                EVERY.as_secs()
            );
        }
    }
}

/// Parses the first frame of a connection (its JSON body, without the length prefix).
///
/// Checks the version before the role, so a peer of another version gets told so in words:
/// `version_mismatch` only for a whole number this SP does not speak; a body that is not a
/// JSON object, or has no `version` or one that is not a whole number, is `bad_request`
/// saying which. Public so the fuzz targets (`fuzz/`) reach the exact parse the SP runs on
/// untrusted bytes.
pub fn parse_hello(body: &[u8]) -> Result<Hello, Refusal> {
    let bad = |message: String| Refusal::new(ErrorCode::BadRequest, message);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("hello is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(bad(format!(
            "hello is not a JSON object: {}",
            escape_untrusted(&value.to_string(), 40)
        )));
    };
    let version = match object.get("version") {
        None => {
            return Err(bad(format!(
                "version: missing (this SP speaks version {PROTOCOL_VERSION})"
            )));
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            bad(format!(
                "version: {} is not a whole number (this SP speaks version {PROTOCOL_VERSION})",
                escape_untrusted(&v.to_string(), 40)
            ))
        })?,
    };
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(Refusal::new(
            ErrorCode::VersionMismatch,
            format!(
                "protocol version mismatch: this SP speaks version {PROTOCOL_VERSION}, the peer sent {version}"
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("malformed hello: {e}")))
}

/// Each role's handler runs as a task of its own, so a connection holds only the state of its
/// own role: an idle tenant control connection carries no room for the handshake or for a
/// session's splice.
fn dispatch(
    tracker: &TaskTracker,
    shared: Arc<Shared>,
    stream: ServerStream,
    client: SocketAddr,
    via: Option<SocketAddr>,
    hello: Hello,
) {
    tracing::debug!(%client, role = hello.role.name(), "hello");
    match hello.role {
        Role::TenantControl {
            tenant,
            secret,
            agent,
            services,
            provider_access,
            tenant_key,
            early_client_hello,
        } => {
            let live = crate::sp::presence::Live {
                remote_addr: client.to_string(),
                agent_version: agent,
                services,
                provider_access,
            };
            tracker.spawn(control::serve(
                shared,
                stream,
                tenant,
                secret,
                tenant_key,
                live,
                early_client_hello,
            ));
        }
        Role::TenantData {
            tenant,
            session_id,
            nonce,
        } => {
            tracker.spawn(session::tenant_data(
                shared, stream, tenant, session_id, nonce,
            ));
        }
        Role::ConsoleSession {
            token,
            tenant,
            service,
            client_hello,
        } => {
            tracker.spawn(session::console(
                shared,
                stream,
                session::ConsoleAddr { client, via },
                token,
                session::Asked {
                    tenant,
                    service,
                    client_hello,
                },
            ));
        }
        Role::Operator {
            user,
            password,
            token,
            console_key,
        } => {
            tracker.spawn(operator::serve(
                shared,
                stream,
                client,
                operator::Credentials {
                    user,
                    password,
                    token,
                    console_key,
                },
            ));
        }
    }
}

/// Sends `{"type":"error","code":..,"message":..}`, the one error shape of every role.
async fn send_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    refusal: &Refusal,
) -> Result<(), frame::FrameError> {
    let msg =
        serde_json::json!({"type": "error", "code": refusal.code, "message": refusal.message});
    frame::write_frame(w, &msg).await?;
    let _ = w.shutdown().await;
    Ok(())
}

/// Polls the registry for account changes made by other processes, and `sp.toml` for a new
/// gateway pool, and acts on them; a reload request (SIGHUP) runs a poll at once, and
/// re-reads `sp.toml` even if its text looks the same.
async fn watch_registry(shared: Arc<Shared>) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(shared.sp.config.registry_poll_millis));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => false,
            () = shared.sp.reload_requested() => true,
            _ = shared.shutdown.cancelled() => return,
        };
        // First-seen tenant keys go to the registry before it is read back, so the read
        // does not take them away from the presence table.
        if let Err(e) = shared.sp.flush_tenant_keys() {
            tracing::error!("recording tenant keys: {e:#}");
        }
        match shared.sp.refresh_accounts() {
            Ok(kicks) => kicks.iter().for_each(|k| shared.kick(k)),
            Err(e) => tracing::error!("reading the registry: {e:#}"),
        }
        end_sessions_of_revoked_tokens(&shared);
        // For `/metrics` and `/v1/server`: one look per poll, none per connection.
        let connected = lock(&shared.controls).len();
        shared.sp.metrics.tenants_connected.set(connected as i64);
        if let crate::sp::ConfigReload::Loaded {
            gateways: Some(gateways),
            ..
        } = shared.sp.reload_config(asked)
        {
            let tenants = {
                let controls = lock(&shared.controls);
                for handle in controls.values() {
                    let _ = handle.tx.try_send(Box::new(ControlMsg::Gateways {
                        gateways: gateways.clone(),
                    }));
                }
                controls.len()
            };
            tracing::info!(
                tenants,
                "pushed the new gateway pool to the connected tenants"
            );
        }
    }
}

/// Ends the sessions and operator connections whose token no longer exists (revoked by
/// logout, `rac sp operator revoke`, `passwd`, `set-tenants` or `remove`). An expired but
/// still stored token lets its open sessions run to their end; an operator connection ends at
/// its token's expiry by its own timer (`operator.rs`).
fn end_sessions_of_revoked_tokens(shared: &Shared) {
    let open: Vec<(u64, String)> = lock(&shared.live_sessions)
        .iter()
        .map(|(id, s)| (*id, s.token.clone()))
        .collect();
    for (id, token) in open {
        if matches!(
            shared.sp.registry.check_token(&token),
            Ok(crate::sp::registry::TokenCheck::Unknown)
        ) && let Some(session) = lock(&shared.live_sessions).remove(&id)
        {
            session.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_version_is_checked_first() {
        let err = parse_hello(br#"{"version": 99, "role": "something_new"}"#).expect_err("v99");
        assert_eq!(err.code, ErrorCode::VersionMismatch);
        assert!(err.message.contains("99"), "{}", err.message);
        let err = parse_hello(b"\x00garbage").expect_err("garbage");
        assert_eq!(err.code, ErrorCode::BadRequest);
        let err = parse_hello(br#"{"version": 2, "role": "tenant_data"}"#).expect_err("fields");
        assert_eq!(err.code, ErrorCode::BadRequest);
        for (body, words) in [
            (&br#"[1]"#[..], "not a JSON object"),
            (br#"{"role": "operator"}"#, "version: missing"),
            (
                br#"{"version": "1", "role": "operator"}"#,
                "version: \"1\" is not",
            ),
            (br#"{"version": -1}"#, "version: -1 is not"),
            (br#"{"version": 1.0}"#, "version: 1.0 is not"),
        ] {
            let err = parse_hello(body).expect_err("no numeric version");
            assert_eq!(err.code, ErrorCode::BadRequest, "{}", err.message);
            assert!(err.message.contains(words), "{}", err.message);
        }
        // A version-1 peer (before end-to-end sessions) is told the version differs.
        let old = parse_hello(br#"{"version":1,"role":"operator","user":"u","password":"p"}"#)
            .expect_err("v1");
        assert_eq!(old.code, ErrorCode::VersionMismatch);
        let ok = parse_hello(br#"{"version":2,"role":"operator","user":"u","password":"p"}"#)
            .expect("valid");
        assert_eq!(ok.role.name(), "operator");
    }
}
