//! Node liveness: each node puts its record (advertised address, process instance) into the
//! bucket `rac_nodes` every `heartbeat_every`; every node watches the bucket and notes, on
//! its own monotonic clock, when it last saw each node's heartbeat. A node not seen for
//! `dead_after` is dead: its tenants are offline, and their next claim (made anyway by
//! compare-and-set) meets no competition. No clocks are compared between machines.
//!
//! nats-server 2.9 has no per-key expiry, and an entry aged out by the bucket's `max_age`
//! produces no event, so `max_age` ([`super::NODES_MAX_AGE`]) only sweeps away nodes gone for
//! good; liveness is the watch plus this node's clock. A clean exit deletes the record, and
//! the others see the node gone at once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::owners::{self, json_of};
use super::{BusError, Cluster, Shared, name_of_token, subject_token};
use crate::util::{lock, now_unix_secs};

/// The value of a node's key in `rac_nodes` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeValue {
    pub addr: String,
    pub instance: String,
    /// When this instance started, Unix seconds (for people; not used for liveness).
    pub started: u64,
}

/// What this node knows of another (or of itself).
pub(crate) struct NodeState {
    pub(crate) addr: String,
    pub(crate) instance: String,
    pub(crate) started: u64,
    pub(crate) last_seen: Instant,
    pub(crate) alive: bool,
}

/// A node as [`Cluster::nodes`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub addr: String,
    pub alive: bool,
    /// Since when this node has not seen a heartbeat from it.
    pub silent_for: Duration,
    /// When its process started, Unix seconds, as it says.
    pub started: u64,
}

/// Puts this node's record once; notes the time JetStream acknowledged it.
pub(crate) async fn beat(shared: &Shared) -> Result<(), BusError> {
    let value = NodeValue {
        addr: shared.config.advertise.clone(),
        instance: shared.instance.clone(),
        started: shared.started,
    };
    let put = shared
        .nodes_kv
        .put(subject_token(&shared.config.node), json_of(&value).into());
    match tokio::time::timeout(shared.config.dead_after, put).await {
        Ok(Ok(_)) => {
            *lock(&shared.last_beat_ok) = Some(Instant::now());
            Ok(())
        }
        Ok(Err(e)) => Err(BusError::js(e)),
        Err(_) => Err(BusError::JetStream(
            "heartbeat not acknowledged in time".into(),
        )),
    }
}

/// Beats every `heartbeat_every` until the node stops. A failing streak is logged once.
pub(crate) async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = shared.stop.cancelled() => return,
            result = beat(&shared) => result,
        };
        match result {
            Ok(()) if failing => {
                tracing::info!("heartbeats reach NATS again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!("heartbeat failed: {e}; the other nodes will count this one dead");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Applies one entry of the nodes bucket's watch.
pub(crate) fn apply(shared: &Shared, entry: &async_nats::jetstream::kv::Entry) {
    let name = name_of_token(&entry.key);
    let mut view = lock(&shared.view);
    match entry.operation {
        async_nats::jetstream::kv::Operation::Put => {
            let value = match serde_json::from_slice::<NodeValue>(&entry.value) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(node = name, "unreadable node record ({e}); ignored");
                    return;
                }
            };
            // A record from the first look at the bucket may be old: a node that died minutes
            // ago is still there until `max_age`. Its age by the server's stamp decides only
            // whether it starts out dead; after that, only heartbeats seen count.
            let mut last_seen = Instant::now();
            if !view.nodes_synced {
                let age_secs = (time_now_unix() - entry.created.unix_timestamp()).max(0) as u64;
                let age = Duration::from_secs(age_secs);
                if age > shared.config.dead_after {
                    last_seen = Instant::now()
                        .checked_sub(age)
                        .unwrap_or_else(|| Instant::now() - shared.config.dead_after * 2);
                }
            }
            let alive = last_seen.elapsed() <= shared.config.dead_after;
            let state = NodeState {
                addr: value.addr,
                instance: value.instance,
                started: value.started,
                last_seen,
                alive,
            };
            let old = view.nodes.get(&name);
            let returned = old.is_none_or(|old| !old.alive || old.instance != state.instance);
            if returned && alive {
                tracing::info!(node = name, addr = state.addr, "node alive");
            }
            // The usual heartbeat (alive before and after, same process, same address)
            // changes no tenant's owner: its tenants are not looked at. With thousands of
            // tenants per node, that look is most of an idle node's work.
            let same = old.is_some_and(|old| {
                old.alive == state.alive && old.instance == state.instance && old.addr == state.addr
            });
            if same {
                view.nodes.insert(name, state);
                return;
            }
            let before = owners::tenants_of(&view, &name);
            view.nodes.insert(name.clone(), state);
            owners::node_changed(shared, &view, before);
        }
        _ => {
            let before = owners::tenants_of(&view, &name);
            if view.nodes.remove(&name).is_some() {
                tracing::info!(node = name, "node left");
            }
            owners::node_changed(shared, &view, before);
        }
    }
}

fn time_now_unix() -> i64 {
    i64::try_from(now_unix_secs()).unwrap_or(i64::MAX)
}

/// Follows the bucket for as long as the node runs (see [`super::follow`]).
pub(crate) async fn watch_loop(shared: Arc<Shared>) {
    super::follow(shared, super::Bucket::Nodes).await
}

/// Marks nodes dead when their heartbeats stop, checking a few times per heartbeat period.
pub(crate) async fn liveness_loop(shared: Arc<Shared>) {
    let period = (shared.config.heartbeat_every / 4).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut view = lock(&shared.view);
        let dead: Vec<String> = view
            .nodes
            .iter()
            .filter(|(_, n)| n.alive && n.last_seen.elapsed() > shared.config.dead_after)
            .map(|(name, _)| name.clone())
            .collect();
        for name in dead {
            let before = owners::tenants_of(&view, &name);
            if let Some(node) = view.nodes.get_mut(&name) {
                node.alive = false;
                tracing::warn!(
                    node = name,
                    silent_ms = node.last_seen.elapsed().as_millis() as u64,
                    "node dead: no heartbeat"
                );
            }
            owners::node_changed(&shared, &view, before);
        }
    }
}

impl Cluster {
    /// Every node this one knows of, alive or dead, by name.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let view = lock(&self.shared().view);
        let mut all: Vec<NodeInfo> = view
            .nodes
            .iter()
            .map(|(name, n)| NodeInfo {
                name: name.clone(),
                addr: n.addr.clone(),
                alive: n.alive,
                silent_for: n.last_seen.elapsed(),
                started: n.started,
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The advertised address of `node` if it is alive as this node sees it.
    pub fn alive_addr(&self, node: &str) -> Option<String> {
        lock(&self.shared().view)
            .nodes
            .get(node)
            .filter(|n| n.alive)
            .map(|n| n.addr.clone())
    }

    /// Whether `node` is alive as this node sees it.
    pub fn is_alive(&self, node: &str) -> bool {
        lock(&self.shared().view)
            .nodes
            .get(node)
            .is_some_and(|n| n.alive)
    }
}
