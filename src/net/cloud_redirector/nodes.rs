//! The SP port as one node of a cluster with a bus (`[cluster] nats_urls`): the node claims
//! each tenant whose control channel it takes (`control.rs`), lists the tenants other nodes
//! hold, asks a tenant's owner to send `open_data` for a console waiting here, sends
//! `open_data` for consoles waiting on other nodes, and forwards those sessions' data
//! channels to the console's node.
//!
//! Forwarding: the tenant's data channel reaches its owner (B) while the console waits on
//! another node (A). B connects to A's SP port as a client (TLS, A's certificate checked
//! against the SP's CA) and says the tenant's own data hello, nonce included; A matches it
//! to the waiting console as if the tenant had come itself, audits and counts the session.
//! A's answer (`ready` or an error) is the last record of that TLS; B passes it on to the
//! tenant, both of B's connections leave TLS, and B copies the end-to-end channel's bytes
//! between them, which it cannot read any more than A can.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpStream;

use super::DataOutcome;
use super::{ServerStream, Shared, SpEngine, lock, send_error};
use crate::cluster::{
    BusAuth, BusConfig, Claim, Cluster, OpenData, OpenDataReply, OwnerLive, SessionRejected,
};
use crate::net::socket_splice::{RawSide, splice_sockets};
use crate::net::splice::Counters;
use crate::net::tls::{self, TlsClient, Trust};
use crate::sp::Refusal;
use crate::sp::config::StateDir;
use crate::sp::presence::{Live, Remote};
use crate::wire::frame::{self, MAX_HELLO_LEN};
use crate::wire::protocol::{ControlMsg, ErrorCode, Hello, PROTOCOL_VERSION, Role, SessionMsg};

/// How long a node waits for a tenant's owner to take a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long forwarding may take to reach the console's node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claim or a release may take on the bus.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the bus's health is copied to the SP (`/readyz`, new sessions).
const HEALTH_EVERY: Duration = Duration::from_millis(250);
/// Requests from other nodes waiting to be handled at once.
const REQUEST_QUEUE: usize = 1024;

/// This node's part in the cluster: the bus, and the TLS client it dials other nodes with.
#[derive(Clone)]
pub struct NodeLink {
    pub bus: Cluster,
    to_nodes: TlsClient,
}

/// A session another node's console waits for: the tenant's data channel, once it comes
/// here, goes on to `to`.
pub(super) struct Forward {
    tenant: String,
    /// The console's node, by name (where a rejection goes) and by address.
    node: String,
    to: String,
    deadline: Instant,
    /// The connection to the console's node, dialled when the request came, so that it is
    /// ready (TCP and TLS done) by the time the tenant's data channel arrives.
    link: tokio::task::JoinHandle<std::io::Result<tls::ClientStream>>,
}

/// Connects to another node's SP port as a TLS client, within [`CONNECT_TIMEOUT`].
async fn dial_node(client: TlsClient, to: String) -> std::io::Result<tls::ClientStream> {
    let connect = async {
        let tcp = TcpStream::connect(&to).await?;
        client.handshake(tcp).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            ))
        })
}

impl SpEngine {
    /// Joins the cluster bus `[cluster]` names, if it names one (else does nothing).
    /// `listening` is the SP port's address, advertised to the other nodes unless
    /// `[cluster] advertise` says otherwise.
    pub async fn join_cluster(&mut self, state: &StateDir, listening: SocketAddr) -> Result<()> {
        let Some(cluster) = self.service.config.cluster.clone() else {
            return Ok(());
        };
        if cluster.nats_urls.is_empty() {
            return Ok(());
        }
        let advertise = cluster.advertised(listening)?;
        let mut config = BusConfig::new(&cluster.node, &advertise, cluster.nats_urls.clone());
        if let Some(token) = cluster.nats_token()? {
            config.auth = BusAuth::Token(token);
        }
        let bus = Cluster::connect(config)
            .await
            .context("joining the cluster bus (NATS)")?;
        // Every node holds the same certificate, for `localhost` among its names.
        let to_nodes = TlsClient::new(&Trust::CaFile(state.ca_cert()), "localhost")
            .context("the TLS client for the other nodes")?;
        tracing::info!(node = %cluster.node, %advertise, nats = ?cluster.nats_urls, "joined the cluster bus");
        self.cluster = Some(NodeLink { bus, to_nodes });
        Ok(())
    }
}

/// The tasks a cluster node runs beside its SP port, until it shuts down.
pub(super) fn spawn_tasks(shared: &Arc<Shared>, tracker: &tokio_util::task::TaskTracker) {
    if shared.cluster.is_none() {
        return;
    }
    tracker.spawn(serve_requests(shared.clone()));
    tracker.spawn(follow_presence(shared.clone()));
    tracker.spawn(watch_health(shared.clone()));
    tracker.spawn(follow_rejections(shared.clone()));
}

/// A cluster node stopping (SIGTERM): its port is closed already. Sends its tenants away,
/// `drain_rate` a second, each with a goodbye that tells its redirector to reconnect (to
/// another node: this one no longer listens), then lets the sessions it relays or forwards
/// go on until they end or `drain_secs` pass. Does nothing on a single SP.
pub(super) async fn drain(shared: &Shared) {
    let (Some(_), Some(cluster)) = (&shared.cluster, &shared.sp.config.cluster) else {
        return;
    };
    let tenants: Vec<String> = lock(&shared.controls).keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(cluster.drain_secs);
    tracing::info!(
        tenants = tenants.len(),
        per_second = cluster.drain_rate,
        "draining: sending this node's tenants to the other nodes"
    );
    let mut pace = tokio::time::interval(Duration::from_secs(1) / cluster.drain_rate.max(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tenant in tenants {
        pace.tick().await;
        let handle = lock(&shared.controls).remove(&tenant);
        if let Some(handle) = handle {
            let _ = handle.tx.try_send(Box::new(ControlMsg::Goodbye {
                code: ErrorCode::ShuttingDown,
                reason: "this SP node is shutting down; connect to another node".into(),
            }));
            handle.replaced.cancel();
        }
    }
    let running = || shared.sp.sessions.len() + shared.forwarding.load(Ordering::SeqCst);
    if running() > 0 {
        tracing::info!(
            sessions = running(),
            "draining: letting sessions finish (at most {} s)",
            cluster.drain_secs
        );
    }
    while running() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if running() > 0 {
        tracing::warn!(
            sessions = running(),
            "draining: ending the sessions still open at the deadline"
        );
    }
}

/// What a tenant said of itself, as the other nodes list it.
pub(super) fn owner_live(live: &Live) -> OwnerLive {
    OwnerLive {
        remote_addr: live.remote_addr.clone(),
        agent_version: live.agent_version.clone(),
        services: live.services.clone(),
        provider_access: live.provider_access,
        since: crate::util::now_unix_secs(),
    }
}

/// Claims `tenant` for this node, in a cluster with a bus (`None` without one).
pub(super) async fn claim(
    shared: &Shared,
    tenant: &str,
    live: &Live,
) -> Result<Option<Claim>, Refusal> {
    let Some(link) = &shared.cluster else {
        return Ok(None);
    };
    let refuse = |why: String| {
        Refusal::new(
            ErrorCode::Internal,
            format!(
                "the SP cannot record the connection in its cluster now ({why}); try again shortly"
            ),
        )
    };
    match tokio::time::timeout(
        CLAIM_TIMEOUT,
        link.bus.claim_with(tenant, Some(owner_live(live))),
    )
    .await
    {
        Ok(Ok(claim)) => Ok(Some(claim)),
        Ok(Err(e)) => Err(refuse(e.to_string())),
        Err(_) => Err(refuse(format!(
            "the bus did not answer within {CLAIM_TIMEOUT:?}"
        ))),
    }
}

/// Gives the tenant up on the bus (its control channel here ended).
pub(super) async fn release(shared: &Shared, claim: Claim) {
    let Some(link) = &shared.cluster else { return };
    let tenant = claim.tenant.clone();
    match tokio::time::timeout(CLAIM_TIMEOUT, link.bus.release(claim)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(?tenant, "releasing the tenant on the bus: {e}"),
        Err(_) => tracing::warn!(?tenant, "releasing the tenant on the bus timed out"),
    }
}

/// Closes the tenant's control channel here when another node takes the tenant (a newer
/// connection of it reached that node): the goodbye says so, as for a replaced connection
/// on one node.
pub(super) fn watch_claim(
    shared: Arc<Shared>,
    tenant: String,
    conn_id: u64,
    lost: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = lost.cancelled() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let handle = {
            let mut controls = lock(&shared.controls);
            match controls.get(&tenant) {
                Some(h) if h.conn_id == conn_id => controls.remove(&tenant),
                _ => None,
            }
        };
        if let Some(handle) = handle {
            tracing::info!(?tenant, "another SP node took the tenant over");
            let _ = handle.tx.try_send(Box::new(ControlMsg::Goodbye {
                code: ErrorCode::Replaced,
                reason: "a newer connection of the tenant replaced this one (it reached \
                         another SP node, or this one again)"
                    .into(),
            }));
            handle.replaced.cancel();
        }
    });
}

/// Copies the bus's health to the SP: a node that cannot trust its view refuses sessions.
async fn watch_health(shared: Arc<Shared>) {
    let Some(link) = &shared.cluster else { return };
    loop {
        shared
            .sp
            .set_bus_problem(link.bus.ready().err().map(|e| e.to_string()));
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = shared.shutdown.cancelled() => break,
        }
    }
    // Leaving releases this node's tenants at once, instead of after the dead-node timeout.
    if let Err(e) = link.bus.clone().leave().await {
        tracing::warn!("leaving the cluster bus: {e}");
    }
}

/// Keeps the tenant list's rows of tenants held by other nodes.
async fn follow_presence(shared: Arc<Shared>) {
    let Some(link) = &shared.cluster else { return };
    let me = link.bus.node().to_string();
    // A claim made without the tenant's row lists it online with nothing offered.
    let remote = |owner: &crate::cluster::TenantOwner| {
        (owner.node != me).then(|| {
            let live = owner.live.clone().unwrap_or_default();
            Remote {
                node: owner.node.clone(),
                since: live.since,
                live: Live {
                    remote_addr: live.remote_addr,
                    agent_version: live.agent_version,
                    services: live.services,
                    provider_access: live.provider_access,
                },
            }
        })
    };
    loop {
        let (online, mut changes) = link.bus.presence();
        let now: HashMap<String, Remote> = online
            .iter()
            .filter_map(|o| remote(o).map(|r| (o.tenant.clone(), r)))
            .collect();
        shared.sp.presence.sync_remotes(&now);
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = shared.shutdown.cancelled() => return,
            };
            match change {
                Ok(crate::cluster::PresenceChange::Online(owner)) => {
                    shared.sp.presence.set_remote(&owner.tenant, remote(&owner));
                }
                Ok(crate::cluster::PresenceChange::Offline { tenant }) => {
                    shared.sp.presence.set_remote(&tenant, None);
                }
                // Missed changes: start again from a snapshot.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Answers other nodes' requests to open a session on a tenant this node holds.
async fn serve_requests(shared: Arc<Shared>) {
    let Some(link) = &shared.cluster else { return };
    let mut requests = match link.bus.serve_open_requests(REQUEST_QUEUE).await {
        Ok(requests) => requests,
        Err(e) => {
            tracing::error!("cannot serve the other nodes' session requests: {e}");
            return;
        }
    };
    loop {
        let incoming = tokio::select! {
            incoming = requests.next() => match incoming { Some(i) => i, None => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let request = incoming.request.clone();
        let reply = open_for_other_node(&shared, link, request).await;
        if let Err(e) = incoming.respond(reply).await {
            tracing::warn!("answering a session request: {e}");
        }
    }
}

/// Sends `open_data` for a console on another node, if this node holds the tenant and the
/// tenant offers what is asked.
async fn open_for_other_node(shared: &Shared, link: &NodeLink, request: OpenData) -> OpenDataReply {
    let refused = |reason: String| OpenDataReply::Refused { reason };
    let Some(grant) = request.grant else {
        return refused("the request carries no grant".into());
    };
    if let Some(info) = shared.sp.presence.info(&request.tenant)
        && let Err(e) = info.check_open(&request.service)
    {
        return refused(e.message);
    }
    let Some(route) = shared.control_sender(&request.tenant) else {
        return OpenDataReply::NotOwner;
    };
    let Some(to) = link.bus.alive_addr(&request.from_node) else {
        return refused(format!("node {} is not alive", request.from_node));
    };
    {
        let now = Instant::now();
        let mut forwards = lock(&shared.forwards);
        forwards.retain(|_, f| {
            let live = f.deadline > now;
            if !live {
                // The tenant never came: the dialled connection is not needed.
                f.link.abort();
            }
            live
        });
        let link = tokio::spawn(dial_node(link.to_nodes.clone(), to.clone()));
        forwards.insert(
            request.session_id.clone(),
            Forward {
                tenant: request.tenant.clone(),
                node: request.from_node.clone(),
                to,
                deadline: now + shared.sp.config.session_open_timeout(),
                link,
            },
        );
    }
    let client_hello = request.client_hello.filter(|_| route.early_client_hello);
    let client_hello_sent = client_hello.is_some();
    let sent = route
        .tx
        .send(Box::new(ControlMsg::OpenData {
            session_id: request.session_id.clone(),
            nonce: request.nonce,
            service: request.service,
            grant,
            client_hello,
        }))
        .await;
    if sent.is_err() {
        if let Some(forward) = lock(&shared.forwards).remove(&request.session_id) {
            forward.link.abort();
        }
        return OpenDataReply::NotOwner;
    }
    OpenDataReply::Accepted { client_hello_sent }
}

/// Asks the owner of `tenant` (another node) to send `open_data` for a console waiting here;
/// returns whether the console's ClientHello went with it.
pub(super) async fn open_on_owner(
    shared: &Shared,
    tenant: &str,
    request: OpenData,
) -> Result<bool, Refusal> {
    let offline = |why: String| Refusal::new(ErrorCode::TenantOffline, why);
    let Some(link) = &shared.cluster else {
        return Err(offline(format!("tenant {tenant} is offline")));
    };
    match link.bus.open_on_owner(request, REQUEST_TIMEOUT).await {
        Ok((_, OpenDataReply::Accepted { client_hello_sent })) => Ok(client_hello_sent),
        Ok((owner, OpenDataReply::NotOwner)) => Err(offline(format!(
            "tenant {tenant} moved away from node {} just now; try again",
            owner.node
        ))),
        Ok((owner, OpenDataReply::Refused { reason })) => Err(Refusal::new(
            ErrorCode::TenantRejected,
            format!("node {} refused: {reason}", owner.node),
        )),
        Err(e) => Err(offline(format!("tenant {tenant}: {e}"))),
    }
}

/// A tenant's new status (services, consent) from its control connection `conn_id`: in this
/// node's list, and, on a cluster node, announced to the other nodes' lists.
pub(super) fn update_status(
    shared: &Shared,
    tenant: &str,
    conn_id: u64,
    services: Vec<String>,
    provider_access: bool,
) {
    shared
        .sp
        .presence
        .update_status(tenant, conn_id, services.clone(), provider_access);
    let Some(link) = &shared.cluster else { return };
    let bus = link.bus.clone();
    let tenant = tenant.to_string();
    tokio::spawn(async move {
        if let Err(e) = bus
            .announce_status(&tenant, services, provider_access)
            .await
        {
            tracing::warn!(%tenant, "announcing a status change to the other nodes: {e}");
        }
    });
}

/// A tenant rejected a session whose console waits on another node: that node hears the
/// reason at once (and the connection dialled to it is not needed).
pub(super) fn pass_on_rejection(
    shared: &Shared,
    forward: Forward,
    session_id: String,
    refusal: Refusal,
) {
    forward.link.abort();
    let Some(link) = &shared.cluster else { return };
    let bus = link.bus.clone();
    let rejected = SessionRejected {
        tenant: forward.tenant,
        session_id,
        code: refusal.code,
        reason: refusal.message,
    };
    tokio::spawn(async move {
        if let Err(e) = bus.send_rejection(&forward.node, &rejected).await {
            tracing::warn!(node = %forward.node, tenant = %rejected.tenant, "passing on a session rejection: {e}");
        }
    });
}

/// The rejections other nodes pass on for the consoles waiting here: each such console
/// hears its tenant's reason.
async fn follow_rejections(shared: Arc<Shared>) {
    let Some(link) = &shared.cluster else { return };
    let mut rejections = match link.bus.rejections().await {
        Ok(rejections) => rejections,
        Err(e) => {
            tracing::error!("cannot hear the other nodes' session rejections: {e}");
            return;
        }
    };
    loop {
        let rejected = tokio::select! {
            r = rejections.next() => match r { Some(r) => r, None => return },
            _ = shared.shutdown.cancelled() => return,
        };
        let mut pending = lock(&shared.pending);
        // Only a session this node asked another node to open, for that tenant.
        let asked = pending
            .get(&rejected.session_id)
            .is_some_and(|p| p.tenant == rejected.tenant && p.conn_id.is_none());
        if asked && let Some(p) = pending.remove(&rejected.session_id) {
            let refusal = Refusal::new(rejected.code, rejected.reason);
            let _ = p.tx.send(DataOutcome::Rejected(refusal));
        }
    }
}

/// Whether `tenant` is online on another node (and the bus is usable).
pub(super) fn held_elsewhere(shared: &Shared, tenant: &str) -> bool {
    shared
        .cluster
        .as_ref()
        .and_then(|link| link.bus.owner(tenant).map(|o| o.node != link.bus.node()))
        .unwrap_or(false)
}

/// The session a data channel arriving here is for, when its console waits on another
/// node: taken (once) if the tenant is the one the request was for.
pub(super) fn take_forward(shared: &Shared, tenant: &str, session_id: &str) -> Option<Forward> {
    let mut forwards = lock(&shared.forwards);
    let valid = forwards
        .get(session_id)
        .is_some_and(|f| f.tenant == tenant && Instant::now() < f.deadline);
    if valid {
        forwards.remove(session_id)
    } else {
        None
    }
}

/// Takes a tenant's data channel on to the node its console waits on (see the module's
/// doc), then copies the session's bytes until either side ends.
pub(super) async fn forward_data(
    shared: Arc<Shared>,
    mut tenant_side: ServerStream,
    tenant: String,
    session_id: String,
    nonce: String,
    forward: Forward,
) {
    let fail = |why: String| Refusal::new(ErrorCode::Internal, why);
    let to = forward.to;
    let mut upstream = match forward.link.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let refusal = fail(format!(
                "the console's SP node ({to}) cannot be reached: {e}"
            ));
            let _ = send_error(&mut tenant_side, &refusal).await;
            return;
        }
        Err(e) => {
            let refusal = fail(format!("connecting to the console's SP node ({to}): {e}"));
            let _ = send_error(&mut tenant_side, &refusal).await;
            return;
        }
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: Role::TenantData {
            tenant: tenant.clone(),
            session_id: session_id.clone(),
            nonce,
        },
    };
    // The console's node answers with the last record of its TLS: `ready` or an error.
    let answer = async {
        frame::write_frame(&mut upstream, &hello).await?;
        frame::read_frame_bytes(&mut upstream, MAX_HELLO_LEN).await
    };
    let answer: serde_json::Value = match answer.await {
        Ok(Some(body)) => match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(e) => {
                let refusal = fail(format!("the console's SP node answered nonsense: {e}"));
                let _ = send_error(&mut tenant_side, &refusal).await;
                return;
            }
        },
        Ok(None) => {
            let refusal = fail("the console's SP node closed the forwarded channel".into());
            let _ = send_error(&mut tenant_side, &refusal).await;
            return;
        }
        Err(e) => {
            let refusal = fail(format!("forwarding to the console's SP node: {e}"));
            let _ = send_error(&mut tenant_side, &refusal).await;
            return;
        }
    };
    let ready = matches!(
        serde_json::from_value::<SessionMsg>(answer.clone()),
        Ok(SessionMsg::Ready { .. })
    );
    if let Err(e) = frame::write_frame(&mut tenant_side, &answer).await {
        tracing::debug!(?tenant, ?session_id, "the tenant left before ready: {e}");
        return;
    }
    if !ready {
        use tokio::io::AsyncWriteExt;
        let _ = tenant_side.shutdown().await;
        return;
    }
    let (tenant_raw, console_raw) = match (
        tls::e2e::leave_server(tenant_side),
        tls::e2e::leave_client(upstream),
    ) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                ?tenant,
                ?session_id,
                "forwarding: leaving TLS at ready: {e}"
            );
            return;
        }
    };
    let raw = |stream: tls::ReadAhead| {
        let (tcp, pending) = stream.into_parts();
        RawSide { tcp, pending }
    };
    // A disabled or removed tenant's sessions end here too; the console's node audits.
    let cancel = shared.sessions_token(&tenant).child_token();
    let counters = Counters::default();
    tracing::info!(?tenant, ?session_id, %to, "session forwarded to the console's node");
    shared.forwarding.fetch_add(1, Ordering::SeqCst);
    let report = splice_sockets(raw(tenant_raw), raw(console_raw), &counters, &cancel).await;
    shared.forwarding.fetch_sub(1, Ordering::SeqCst);
    tracing::info!(
        ?tenant,
        ?session_id,
        from_tenant = report.a_to_b,
        to_tenant = report.b_to_a,
        end = ?report.end,
        "forwarded session ended"
    );
}
