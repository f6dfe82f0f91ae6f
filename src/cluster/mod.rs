//! The NATS bus between SP nodes (issue 19, part 2): which node holds each tenant's control
//! channel, fenced by an epoch ([`owners`]); which nodes are alive ([`nodes`]); the whole
//! cluster's tenant presence, read from the same bucket; requests to the node that owns a
//! tenant ([`requests`]); and account changes broadcast to every node ([`accounts`]).
//!
//! It sits beside `net/`: it holds a network connection (to NATS) and spawns tasks, so the
//! domain layers (`sp/`, `tenant/`) never use it; it uses only `wire/` and the base helpers,
//! so `net/` can wire it into the SP. What NATS holds, and why the fencing is safe, is in
//! docs/CLUSTER.md ("What NATS holds").
//!
//! One [`Cluster`] per SP node. Cloning it is cheap; when the last clone is dropped its tasks
//! stop (the node's heartbeat with them, so the others see it dead after `dead_after`).
//! [`Cluster::leave`] is the clean way out: it releases what the node owns and says goodbye.

pub mod accounts;
pub mod nodes;
pub mod owners;
pub mod requests;
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::util::lock;

pub use accounts::{AccountChange, AccountChanges, AccountEvent};
pub use nodes::NodeInfo;
pub use owners::{Claim, Epoch, OwnerLive, PresenceChange, StatusNotice, TenantOwner};
pub use requests::{
    IncomingOpen, OpenData, OpenDataReply, OpenRequests, Rejections, RequestError, SessionRejected,
};

/// The bucket of tenant ownership: key = tenant, value = [`owners::OwnerValue`].
pub const OWNERS_BUCKET: &str = "rac_owners";
/// The bucket of node heartbeats: key = node, value = [`nodes::NodeValue`].
pub const NODES_BUCKET: &str = "rac_nodes";
/// How long NATS keeps a node's last heartbeat: only a cleanup of nodes gone for good;
/// liveness is judged from heartbeats seen, against `dead_after` (see [`nodes`]).
pub const NODES_MAX_AGE: Duration = Duration::from_secs(300);

/// How this node joins the bus. The SP's `[cluster]` section maps onto it.
#[derive(Clone)]
pub struct BusConfig {
    /// This node's name, unique in the cluster (the name rule).
    pub node: String,
    /// The internal address other nodes reach this one at (`host:port`), announced with
    /// each heartbeat.
    pub advertise: String,
    /// NATS server URLs (`nats://host:4222`, …); the client fails over between them.
    pub urls: Vec<String>,
    /// How NATS knows this node.
    pub auth: BusAuth,
    /// How often the node announces itself.
    pub heartbeat_every: Duration,
    /// A node not heard from for this long is dead: its tenants are offline and may be
    /// claimed by the next node their tenant reaches.
    pub dead_after: Duration,
    /// Copies JetStream keeps of each bucket (3 on a three-server NATS cluster). Used when
    /// the first node creates the buckets; later changes are made on the server.
    pub replicas: usize,
}

impl BusConfig {
    /// Defaults for everything but the names: a heartbeat a second, dead after five.
    pub fn new(node: &str, advertise: &str, urls: Vec<String>) -> BusConfig {
        BusConfig {
            node: node.to_string(),
            advertise: advertise.to_string(),
            urls,
            auth: BusAuth::None,
            heartbeat_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            replicas: 1,
        }
    }

    /// Checks the names and times, with a message for the operator.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |m: String| Err(BusError::Config(m));
        if let Err(e) = crate::wire::validate_name(&self.node) {
            return bad(format!("node name: {e}"));
        }
        if self.advertise.is_empty() {
            return bad("advertised address is empty".into());
        }
        if self.urls.is_empty() {
            return bad("no NATS URL".into());
        }
        if self.heartbeat_every.is_zero() || self.dead_after < self.heartbeat_every * 3 {
            return bad(format!(
                "dead_after ({:?}) must be at least three heartbeats ({:?} each)",
                self.dead_after, self.heartbeat_every
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("node", &self.node)
            .field("advertise", &self.advertise)
            .field("urls", &self.urls)
            .field("auth", &self.auth)
            .field("heartbeat_every", &self.heartbeat_every)
            .field("dead_after", &self.dead_after)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// NATS credentials. Secrets never reach `Debug`.
#[derive(Clone, Default)]
pub enum BusAuth {
    #[default]
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
}

impl fmt::Debug for BusAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusAuth::None => f.write_str("None"),
            BusAuth::Token(_) => f.write_str("Token(***)"),
            BusAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
        }
    }
}

/// What went wrong on the bus. Callers branch on the variant, never on the text.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cluster config: {0}")]
    Config(String),
    #[error("invalid tenant name: {0}")]
    Name(#[from] crate::wire::InvalidName),
    #[error("connecting to NATS: {0}")]
    Connect(String),
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    /// Other nodes kept changing the tenant's entry while this one tried to claim it.
    #[error("tenant {0}: ownership contended, gave up after several tries")]
    Contended(String),
    #[error("NATS: {0}")]
    Nats(String),
}

impl BusError {
    fn js(e: impl fmt::Display) -> BusError {
        BusError::JetStream(format!("{e:#}"))
    }
}

/// Why the node must not take new sessions now (for `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no heartbeat reached NATS for {0:?}")]
    HeartbeatStale(Duration),
    #[error("the cluster's ownership table is not loaded yet")]
    NotSynced,
}

/// The connection as the node sees it: `reconnects` counts the times the connection came
/// back after a loss. Core NATS messages sent meanwhile are lost to this node, so on a new
/// count the SP re-reads accounts from the registry (see [`accounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connection {
    pub connected: bool,
    pub reconnects: u64,
}

/// One node's handle on the bus. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    handle: Arc<Handle>,
}

/// Stops the tasks when the last [`Cluster`] clone goes.
struct Handle {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// What the tasks and the handle share.
pub(crate) struct Shared {
    pub(crate) config: BusConfig,
    /// Random per process start: a node restarted under the same name does not inherit the
    /// ownership entries of its previous life.
    pub(crate) instance: String,
    /// When this process joined, Unix seconds.
    pub(crate) started: u64,
    pub(crate) client: async_nats::Client,
    pub(crate) owners_kv: kv::Store,
    pub(crate) nodes_kv: kv::Store,
    pub(crate) view: Mutex<View>,
    pub(crate) presence_tx: broadcast::Sender<PresenceChange>,
    pub(crate) connection: watch::Sender<Connection>,
    /// When a heartbeat last reached NATS (acknowledged by JetStream).
    pub(crate) last_beat_ok: Mutex<Option<tokio::time::Instant>>,
    pub(crate) stop: CancellationToken,
}

/// The node's picture of the cluster, behind one lock so that ownership, presence and
/// liveness change together.
#[derive(Default)]
pub(crate) struct View {
    pub(crate) owners: owners::OwnersView,
    pub(crate) nodes: HashMap<String, nodes::NodeState>,
    pub(crate) owners_synced: bool,
    pub(crate) nodes_synced: bool,
}

impl Cluster {
    /// Connects to NATS, creates the buckets if this is the first node, loads the ownership
    /// and node tables, and starts the heartbeat. NATS must be reachable now; later losses are
    /// survived (the client reconnects, [`Cluster::ready`] says so meanwhile).
    pub async fn connect(config: BusConfig) -> Result<Cluster, BusError> {
        config.validate()?;
        let (connection, _) = watch::channel(Connection::default());
        let events = connection.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("rac-sp {}", config.node))
            .connection_timeout(Duration::from_secs(5))
            // A silent server (stopped, not closed) is noticed within two pings.
            .ping_interval(config.dead_after.max(Duration::from_secs(2)))
            .reconnect_delay_callback(|attempt| {
                let ms = 100u64.saturating_mul(1 << attempt.min(5));
                Duration::from_millis(ms.min(2_000))
            })
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => events.send_modify(|c| {
                            if !c.connected {
                                c.connected = true;
                                c.reconnects += 1;
                            }
                        }),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the connection to NATS; reconnecting");
                            events.send_modify(|c| c.connected = false)
                        }
                        other => tracing::debug!("NATS: {other}"),
                    }
                }
            });
        options = match &config.auth {
            BusAuth::None => options,
            BusAuth::Token(t) => options.token(t.clone()),
            BusAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
        };
        let urls: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| BusError::Config(format!("NATS URL: {e}")))?;
        let client = options
            .connect(urls)
            .await
            .map_err(|e| BusError::Connect(format!("{e:#}")))?;
        // The first `Connected` event counted as a reconnect; start from a clean count.
        connection.send_replace(Connection {
            connected: client.connection_state() == async_nats::connection::State::Connected,
            reconnects: 0,
        });

        let js = jetstream::new(client.clone());
        let owners_kv = open_bucket(
            &js,
            OWNERS_BUCKET,
            "rac: which SP node holds each tenant's control channel",
            Duration::ZERO,
            config.replicas,
        )
        .await?;
        let nodes_kv = open_bucket(
            &js,
            NODES_BUCKET,
            "rac: SP nodes and their heartbeats",
            NODES_MAX_AGE,
            config.replicas,
        )
        .await?;

        let stop = CancellationToken::new();
        let (presence_tx, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            instance: hex::encode(rand::random::<[u8; 8]>()),
            started: crate::util::now_unix_secs(),
            config,
            client,
            owners_kv,
            nodes_kv,
            view: Mutex::new(View::default()),
            presence_tx,
            connection,
            last_beat_ok: Mutex::new(None),
            stop: stop.clone(),
        });
        // The first heartbeat before anything else: a node that cannot write cannot start.
        nodes::beat(&shared).await?;
        tokio::spawn(nodes::heartbeat_loop(shared.clone()));
        tokio::spawn(nodes::watch_loop(shared.clone()));
        tokio::spawn(nodes::liveness_loop(shared.clone()));
        tokio::spawn(owners::watch_loop(shared.clone()));
        tokio::spawn(owners::status_loop(shared.clone()));

        let cluster = Cluster {
            handle: Arc::new(Handle {
                shared,
                _stop: stop.drop_guard(),
            }),
        };
        cluster.wait_synced(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared().config.node
    }

    async fn wait_synced(&self, limit: Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let view = lock(&self.shared().view);
                if view.owners_synced && view.nodes_synced {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BusError::JetStream(
                    "the ownership and node tables did not load in time".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `Ok` when the node may take new sessions: connected to NATS, its last heartbeat
    /// acknowledged within `dead_after` (so the others see it alive), and the tables loaded.
    pub fn ready(&self) -> Result<(), NotReady> {
        let shared = self.shared();
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(NotReady::Disconnected);
        }
        let last = *lock(&shared.last_beat_ok);
        let age = last.map_or(Duration::MAX, |t| t.elapsed());
        if age > shared.config.dead_after {
            return Err(NotReady::HeartbeatStale(age));
        }
        let view = lock(&shared.view);
        if !(view.owners_synced && view.nodes_synced) {
            return Err(NotReady::NotSynced);
        }
        Ok(())
    }

    /// The connection's state and its count of reconnects, as a watch.
    pub fn connection(&self) -> watch::Receiver<Connection> {
        self.shared().connection.subscribe()
    }

    /// A clean exit: releases every tenant this node owns (each only if still its own),
    /// removes the node's heartbeat so the others see it gone at once, and stops the tasks.
    pub async fn leave(self) -> Result<(), BusError> {
        let shared = self.shared().clone();
        let mine = owners::drain_mine(&shared);
        for (tenant, epoch) in mine {
            owners::release_epoch(&shared, &tenant, epoch).await?;
        }
        shared.stop.cancel();
        shared
            .nodes_kv
            .delete(subject_token(&shared.config.node))
            .await
            .map_err(BusError::js)?;
        shared
            .client
            .flush()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        Ok(())
    }
}

/// Opens a bucket, creating it if this is the first node. A bucket is a stream of a fixed
/// shape; it is made here rather than by async-nats' `create_key_value`, which first reads
/// the account's info in a form nats-server 2.9 does not send. The shape is the one the NATS
/// tools give a bucket: one message per key (`history: 1`), deletes as markers, direct gets.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, BusError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        max_message_size: 1024,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(BusError::js)?;
    js.get_key_value(bucket).await.map_err(BusError::js)
}

/// The messages of one core NATS subscription, each read as JSON: account changes, session
/// rejections, status notices.
pub struct Messages<T> {
    sub: async_nats::Subscriber,
    _of: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> Messages<T> {
    /// The next readable message (an unreadable one is logged and skipped), or `None` once
    /// the subscription ends.
    pub async fn next(&mut self) -> Option<T> {
        use futures_util::StreamExt;
        loop {
            let message = self.sub.next().await?;
            match serde_json::from_slice(&message.payload) {
                Ok(value) => return Some(value),
                Err(e) => {
                    tracing::warn!(subject = %message.subject, "an unreadable message on the bus: {e}")
                }
            }
        }
    }
}

/// Subscribes to `subject`; the subscription is in place at the server when this returns.
pub(crate) async fn subscribe_json<T>(
    client: &async_nats::Client,
    subject: impl async_nats::ToSubject,
) -> Result<Messages<T>, BusError> {
    let sub = client
        .subscribe(subject)
        .await
        .map_err(|e| BusError::Nats(e.to_string()))?;
    round_trip(client).await?;
    Ok(Messages {
        sub,
        _of: std::marker::PhantomData,
    })
}

/// Publishes `value` as JSON on `subject` (core NATS: no answer, at most once).
pub(crate) async fn publish_json(
    client: &async_nats::Client,
    subject: impl async_nats::ToSubject,
    value: &impl serde::Serialize,
) -> Result<(), BusError> {
    client
        .publish(subject, owners::json_of(value).into())
        .await
        .map_err(|e| BusError::Nats(e.to_string()))
}

/// Waits until the server has processed everything this client sent before, a new
/// subscription included (a flush only empties the socket): a request the server answers
/// itself, which it handles after the client's earlier messages.
pub(crate) async fn round_trip(client: &async_nats::Client) -> Result<(), BusError> {
    client
        .request("$JS.API.INFO", Vec::new().into())
        .await
        .map(drop)
        .map_err(|e| BusError::Nats(e.to_string()))
}

/// The two buckets a node follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bucket {
    Owners,
    Nodes,
}

/// Follows a bucket for as long as the node runs: the current entries first (the table is
/// *synced* once they are in), then every change. When the watch ends (NATS lost for
/// long, the server restarted) it watches again from the revision after the last one seen:
/// with `history: 1` each key's newest entry is the one that counts, so a node that was cut
/// off still sees, for each key, whatever replaced what it knew. The watch's own consumer
/// already recovers from short losses; this is the second line.
pub(crate) async fn follow(shared: Arc<Shared>, bucket: Bucket) {
    use futures_util::StreamExt;
    let store = match bucket {
        Bucket::Owners => shared.owners_kv.clone(),
        Bucket::Nodes => shared.nodes_kv.clone(),
    };
    let mark_synced = |shared: &Shared| {
        let mut view = lock(&shared.view);
        match bucket {
            Bucket::Owners => view.owners_synced = true,
            Bucket::Nodes => view.nodes_synced = true,
        }
    };
    let mut next_revision = 0u64;
    let mut failures = 0u32;
    loop {
        let start = async {
            if next_revision == 0 {
                let info = store
                    .stream
                    .get_info()
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                // From the first revision rather than "last per key": with one message per
                // key that is the same set, and nats-server 2.9's last-per-key start can
                // drop an entry written while the watch is being set up.
                let watch = store
                    .watch_all_from_revision(1)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let last = (info.state.messages > 0).then_some(info.state.last_sequence);
                Ok::<_, String>((watch, last))
            } else {
                let watch = store
                    .watch_all_from_revision(next_revision)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                Ok((watch, Some(0)))
            }
        };
        let started = tokio::select! {
            _ = shared.stop.cancelled() => return,
            started = start => started,
        };
        // The table is complete once the watch has brought the bucket's last revision as it
        // was when the watch began (or a newer one). The watch's own "seen current" flag is
        // not enough: nats-server 2.9 miscounts the pending entries of such a watch.
        let (mut watch, sync_at) = match started {
            Ok((watch, last)) => {
                failures = 0;
                if last.is_none() {
                    mark_synced(&shared);
                }
                (watch, last.unwrap_or(0))
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!("watching {bucket:?}: {e}; retrying");
                }
                failures += 1;
                let pause = Duration::from_millis(100 << failures.min(4));
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        loop {
            let item = tokio::select! {
                _ = shared.stop.cancelled() => return,
                item = watch.next() => item,
            };
            match item {
                None => break,
                Some(Err(e)) => tracing::debug!("watching {bucket:?}: {e:#}"),
                Some(Ok(entry)) => {
                    next_revision = entry.revision + 1;
                    match bucket {
                        Bucket::Owners => owners::apply(&shared, &entry),
                        Bucket::Nodes => nodes::apply(&shared, &entry),
                    }
                    if entry.seen_current || entry.revision >= sync_at {
                        mark_synced(&shared);
                    }
                }
            }
        }
        tracing::debug!("the {bucket:?} watch ended; watching again from {next_revision}");
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// A name as one token of a NATS subject or KV key: names may hold '.', which NATS reads as
/// a separator, so '.' becomes '=' (which no name holds: the mapping is one to one).
pub(crate) fn subject_token(name: &str) -> String {
    name.replace('.', "=")
}

/// The inverse of [`subject_token`].
pub(crate) fn name_of_token(token: &str) -> String {
    token.replace('=', ".")
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn names_map_to_single_tokens_and_back() {
        for name in ["acme", "acme.corp", "a-b_c.d.", "x..y"] {
            let t = subject_token(name);
            assert!(!t.contains('.'), "{t}");
            assert_eq!(name_of_token(&t), name);
        }
    }

    #[test]
    fn config_is_checked() {
        let ok = BusConfig::new(
            "sp-a",
            "10.0.0.1:6190",
            vec!["nats://127.0.0.1:4222".into()],
        );
        assert!(ok.validate().is_ok());
        let mut unnamed = ok.clone();
        unnamed.node = "-a".into();
        assert!(matches!(unnamed.validate(), Err(BusError::Config(_))));
        let mut hasty = ok.clone();
        hasty.dead_after = Duration::from_secs(2);
        assert!(matches!(hasty.validate(), Err(BusError::Config(_))));
        let mut no_urls = ok;
        no_urls.urls.clear();
        assert!(matches!(no_urls.validate(), Err(BusError::Config(_))));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut c = BusConfig::new("sp-a", "10.0.0.1:6190", vec!["nats://h:4222".into()]);
        c.auth = BusAuth::Token("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        c.auth = BusAuth::UserPassword {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
