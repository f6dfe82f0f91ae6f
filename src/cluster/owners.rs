//! Tenant ownership with fencing, and the cluster-wide presence read from it.
//!
//! The bucket `rac_owners` holds one key per tenant; its value names the node (and that
//! node's process instance) holding the tenant's control channel. A claim is a
//! compare-and-set on the key's revision: it writes only if the key is still at the revision
//! the claimer read, so of two claims made from the same state exactly one wins. The revision
//! the winning write got is the claim's [`Epoch`]: unique, and larger for every later claim.
//!
//! A node *believes* it owns a tenant from the moment its claim is acknowledged until its
//! [`Claim`] is lost: it sees (in the bucket's watch) any newer revision of the key, it
//! releases the claim, or [`Cluster::confirm`] finds the bucket moved on. Beliefs of two nodes
//! may overlap while a takeover's notice travels (milliseconds; bounded by the watch), but
//! never at the same epoch, and anything done as owner presents the epoch: a request names
//! the epoch it was routed by and the owner refuses a different one, and [`Cluster::confirm`]
//! reads the bucket's leader, so it fails for every claim a newer claim has replaced.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::{BusError, Cluster, OWNERS_BUCKET, Shared, View, name_of_token, subject_token};
use crate::util::lock;

/// A claim's fencing token: the bucket revision its write got. Later claims have larger ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The value of a tenant's key in `rac_owners` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerValue {
    pub node: String,
    /// The owning process's instance (see `Shared::instance`).
    pub instance: String,
    /// What the tenant said of itself when the owner admitted it, for other nodes' lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<OwnerLive>,
}

/// A tenant's control channel as its owner admitted it: the row other nodes show in their
/// tenant lists. Written with the claim and not updated after it (the owner checks every
/// open against the tenant's current status anyway).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerLive {
    pub remote_addr: String,
    pub agent_version: String,
    pub services: Vec<String>,
    pub provider_access: bool,
    /// Unix seconds.
    pub since: u64,
}

/// A change to a tenant's status (its services, its consent) after its owner claimed it,
/// published by the owner on [`STATUS_SUBJECT`]. Every node applies it to its copy of the
/// owner record while that record is still the claim at `epoch` by `node`; a notice about an
/// older claim changes nothing. Not kept in the bucket: a node that joins later shows the
/// tenant as its owner admitted it until the next change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusNotice {
    pub tenant: String,
    pub node: String,
    pub epoch: Epoch,
    pub services: Vec<String>,
    pub provider_access: bool,
}

/// Where owners publish [`StatusNotice`]s (core NATS, no answer).
pub const STATUS_SUBJECT: &str = "rac.presence.status";

/// A tenant online somewhere in the cluster: its owner is alive and is the same process that
/// claimed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantOwner {
    pub tenant: String,
    pub node: String,
    /// The owner's advertised internal address.
    pub addr: String,
    pub epoch: Epoch,
    /// The tenant's control channel as the owner admitted it (none from a claim made
    /// without it).
    pub live: Option<OwnerLive>,
}

/// A change to the cluster's tenant presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// Online, or now held by another node or at another epoch.
    Online(TenantOwner),
    Offline {
        tenant: String,
    },
}

/// This node's ownership of one tenant. It is valid until [`Claim::lost`] fires: another
/// claim replaced it, this node released it, or a confirmation failed. The SP holds it next
/// to the tenant's control channel and closes that channel when it fires.
#[derive(Debug)]
pub struct Claim {
    pub tenant: String,
    pub epoch: Epoch,
    /// The revision the compare-and-set expected: `0` if the key was never written, else the
    /// previous claim's epoch or the revision of its release.
    pub replaced_revision: u64,
    /// The node that held the tenant before, if any held it.
    pub previous_owner: Option<String>,
    lost: CancellationToken,
}

impl Claim {
    /// Completes when the claim is no longer this node's.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    /// True once the claim is no longer this node's.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// A token cancelled when the claim is lost, for the tasks that must end with it (the
    /// control channel, its sessions). Cancelling it does not end the claim.
    pub fn lost_token(&self) -> CancellationToken {
        self.lost.child_token()
    }
}

/// The newest entry seen for a tenant.
pub(crate) struct Record {
    revision: u64,
    /// `None` after a release (a delete marker).
    owner: Option<OwnerValue>,
}

/// A claim this node believes it holds.
struct Mine {
    epoch: Epoch,
    lost: CancellationToken,
}

/// The ownership part of the node's [`View`].
#[derive(Default)]
pub(crate) struct OwnersView {
    entries: HashMap<String, Record>,
    mine: HashMap<String, Mine>,
}

impl OwnersView {
    /// Whether this node believes it holds `tenant` at `epoch`.
    pub(crate) fn holds(&self, tenant: &str, epoch: Epoch) -> bool {
        self.mine
            .get(tenant)
            .is_some_and(|m| m.epoch == epoch && !m.lost.is_cancelled())
    }
}

/// How often a claim retries when other nodes keep moving the key under it.
const CLAIM_ATTEMPTS: u32 = 10;

/// The tenant's owner if the tenant is online: the owner node is alive and is still the
/// process instance that wrote the entry.
fn effective(view: &View, tenant: &str) -> Option<TenantOwner> {
    let record = view.owners.entries.get(tenant)?;
    let owner = record.owner.as_ref()?;
    let node = view.nodes.get(&owner.node)?;
    if !node.alive || node.instance != owner.instance {
        return None;
    }
    Some(TenantOwner {
        tenant: tenant.to_string(),
        node: owner.node.clone(),
        addr: node.addr.clone(),
        epoch: Epoch(record.revision),
        live: owner.live.clone(),
    })
}

fn announce(
    tx: &broadcast::Sender<PresenceChange>,
    tenant: &str,
    before: Option<TenantOwner>,
    after: Option<TenantOwner>,
) {
    if before == after {
        return;
    }
    let change = match after {
        Some(owner) => PresenceChange::Online(owner),
        None => PresenceChange::Offline {
            tenant: tenant.to_string(),
        },
    };
    // No receiver is fine: nobody is listening.
    let _ = tx.send(change);
}

/// Applies one entry of the bucket's watch. Called with the entries in revision order; an
/// entry at or below the revision already known (a replay after re-watching) changes nothing.
pub(crate) fn apply(shared: &Shared, entry: &async_nats::jetstream::kv::Entry) {
    let tenant = name_of_token(&entry.key);
    let owner = match entry.operation {
        async_nats::jetstream::kv::Operation::Put => {
            match serde_json::from_slice::<OwnerValue>(&entry.value) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(
                        tenant,
                        "unreadable ownership entry ({e}); counted as no owner"
                    );
                    None
                }
            }
        }
        _ => None,
    };
    let mut view = lock(&shared.view);
    record(shared, &mut view, &tenant, entry.revision, owner);
}

/// Records `revision` of a tenant's key, ends this node's belief in any older epoch, and
/// announces the presence change. The broadcast happens under the lock, so a snapshot taken
/// with a subscription ([`Cluster::presence`]) neither misses nor repeats a change.
fn record(
    shared: &Shared,
    view: &mut View,
    tenant: &str,
    revision: u64,
    owner: Option<OwnerValue>,
) {
    if view
        .owners
        .entries
        .get(tenant)
        .is_some_and(|r| r.revision >= revision)
    {
        return;
    }
    let before = effective(view, tenant);
    view.owners
        .entries
        .insert(tenant.to_string(), Record { revision, owner });
    if let Some(mine) = view.owners.mine.get(tenant)
        && revision > mine.epoch.0
    {
        tracing::info!(tenant, epoch = mine.epoch.0, revision, "lost ownership");
        mine.lost.cancel();
        view.owners.mine.remove(tenant);
    }
    let after = effective(view, tenant);
    announce(&shared.presence_tx, tenant, before, after);
}

/// Applies a [`StatusNotice`] to the owner record it is about, if that record is still the
/// notice's claim; announces the changed presence.
pub(crate) fn apply_status(shared: &Shared, notice: StatusNotice) {
    let mut view = lock(&shared.view);
    let before = effective(&view, &notice.tenant);
    let Some(record) = view.owners.entries.get_mut(&notice.tenant) else {
        return;
    };
    let Some(owner) = record.owner.as_mut() else {
        return;
    };
    if record.revision != notice.epoch.0 || owner.node != notice.node {
        return;
    }
    let live = owner.live.get_or_insert_with(OwnerLive::default);
    live.services = notice.services;
    live.provider_access = notice.provider_access;
    let after = effective(&view, &notice.tenant);
    announce(&shared.presence_tx, &notice.tenant, before, after);
}

/// Hears the owners' [`StatusNotice`]s for as long as the node runs (the client subscribes
/// again by itself after a reconnect).
pub(crate) async fn status_loop(shared: Arc<Shared>) {
    let mut notices = match super::subscribe_json(&shared.client, STATUS_SUBJECT).await {
        Ok(notices) => notices,
        Err(e) => {
            tracing::error!("cannot hear the tenants' status changes from other nodes: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            notice = notices.next() => match notice {
                Some(notice) => apply_status(&shared, notice),
                None => return,
            },
        }
    }
}

/// Announces the presence changes a node's coming or going made to its tenants, given what
/// [`tenants_of`] said before.
pub(crate) fn node_changed(
    shared: &Shared,
    view: &View,
    before: HashMap<String, Option<TenantOwner>>,
) {
    for (tenant, was) in before {
        let now = effective(view, &tenant);
        announce(&shared.presence_tx, &tenant, was, now);
    }
}

/// The effective owners of the tenants whose entry names `node`, before a change to it.
pub(crate) fn tenants_of(view: &View, node: &str) -> HashMap<String, Option<TenantOwner>> {
    view.owners
        .entries
        .iter()
        .filter(|(_, r)| r.owner.as_ref().is_some_and(|o| o.node == node))
        .map(|(t, _)| (t.clone(), effective(view, t)))
        .collect()
}

/// Takes every claim this node holds (ending each), for [`Cluster::leave`].
pub(crate) fn drain_mine(shared: &Shared) -> Vec<(String, Epoch)> {
    let mut view = lock(&shared.view);
    view.owners
        .mine
        .drain()
        .map(|(tenant, mine)| {
            mine.lost.cancel();
            (tenant, mine.epoch)
        })
        .collect()
}

/// Deletes the tenant's entry if it is still at `epoch`. `Ok(false)`: it had moved on.
pub(crate) async fn release_epoch(
    shared: &Shared,
    tenant: &str,
    epoch: Epoch,
) -> Result<bool, BusError> {
    match shared
        .owners_kv
        .delete_expect_revision(subject_token(tenant), Some(epoch.0))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
            Ok(false)
        }
        Err(e) => Err(BusError::js(e)),
    }
}

/// Follows the bucket for as long as the node runs (see [`super::follow`]).
pub(crate) async fn watch_loop(shared: Arc<Shared>) {
    super::follow(shared, super::Bucket::Owners).await
}

impl Cluster {
    /// Makes this node the owner of `tenant`, taking it over from whichever node held it (the
    /// tenant's newest control channel wins, as on one node). Compare-and-set on the key's
    /// revision, retried while other nodes move it. The returned claim may already be lost if
    /// a newer claim overtook it; [`Claim::lost`] then completes at once.
    pub async fn claim(&self, tenant: &str) -> Result<Claim, BusError> {
        self.claim_with(tenant, None).await
    }

    /// [`claim`](Self::claim), recording what the tenant said of itself for the other
    /// nodes' lists.
    pub async fn claim_with(
        &self,
        tenant: &str,
        live: Option<OwnerLive>,
    ) -> Result<Claim, BusError> {
        crate::wire::validate_name(tenant)?;
        let shared = self.shared();
        let key = subject_token(tenant);
        let value = OwnerValue {
            node: shared.config.node.clone(),
            instance: shared.instance.clone(),
            live,
        };
        let body = json_of(&value);
        for attempt in 0..CLAIM_ATTEMPTS {
            let current = shared.owners_kv.entry(&key).await.map_err(BusError::js)?;
            let (expected, previous_owner) = match current {
                None => (0, None),
                Some(e) => {
                    let owner = (e.operation == async_nats::jetstream::kv::Operation::Put)
                        .then(|| serde_json::from_slice::<OwnerValue>(&e.value).ok())
                        .flatten()
                        .map(|o| o.node);
                    (e.revision, owner)
                }
            };
            match shared
                .owners_kv
                .update(&key, body.clone().into(), expected)
                .await
            {
                Ok(revision) => {
                    return Ok(self.install(tenant, revision, expected, previous_owner, value));
                }
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision =>
                {
                    // Someone wrote between our read and our write; read again, after a
                    // short random pause so that contenders spread out.
                    let ms = rand::random_range(1..=5u64 << attempt.min(4));
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                Err(e) => return Err(BusError::js(e)),
            }
        }
        Err(BusError::Contended(tenant.to_string()))
    }

    /// Records an acknowledged claim as this node's belief, unless a newer revision of the
    /// key is already known (then the claim is returned lost).
    fn install(
        &self,
        tenant: &str,
        revision: u64,
        expected: u64,
        previous_owner: Option<String>,
        value: OwnerValue,
    ) -> Claim {
        let shared = self.shared();
        let lost = CancellationToken::new();
        let mut view = lock(&shared.view);
        let newer_seen = view
            .owners
            .entries
            .get(tenant)
            .is_some_and(|r| r.revision > revision);
        let newer_mine = view
            .owners
            .mine
            .get(tenant)
            .is_some_and(|m| m.epoch.0 > revision);
        if newer_seen || newer_mine {
            lost.cancel();
        } else {
            let mine = Mine {
                epoch: Epoch(revision),
                lost: lost.clone(),
            };
            if let Some(old) = view.owners.mine.insert(tenant.to_string(), mine) {
                // This node's older claim (a reconnect to the same node) ends here.
                old.lost.cancel();
            }
            // The watch brings the same revision later and then changes nothing.
            record(shared, &mut view, tenant, revision, Some(value));
        }
        Claim {
            tenant: tenant.to_string(),
            epoch: Epoch(revision),
            replaced_revision: expected,
            previous_owner,
            lost,
        }
    }

    /// Tells every node that `tenant`, which this node holds, changed its services or its
    /// consent. Nothing is sent for a tenant this node does not hold.
    pub async fn announce_status(
        &self,
        tenant: &str,
        services: Vec<String>,
        provider_access: bool,
    ) -> Result<(), BusError> {
        let shared = self.shared();
        let Some(epoch) = lock(&shared.view).owners.mine.get(tenant).map(|m| m.epoch) else {
            return Ok(());
        };
        let notice = StatusNotice {
            tenant: tenant.to_string(),
            node: shared.config.node.clone(),
            epoch,
            services,
            provider_access,
        };
        super::publish_json(&shared.client, STATUS_SUBJECT, &notice).await
    }

    /// Gives the tenant up (its control channel closed cleanly): the claim ends here, and
    /// the entry is deleted only if it is still at the claim's epoch, so a node never removes
    /// another's claim. `Ok(false)`: another node had already taken the tenant.
    pub async fn release(&self, claim: Claim) -> Result<bool, BusError> {
        let shared = self.shared();
        {
            let mut view = lock(&shared.view);
            if view
                .owners
                .mine
                .get(&claim.tenant)
                .is_some_and(|m| m.epoch == claim.epoch)
            {
                view.owners.mine.remove(&claim.tenant);
            }
        }
        claim.lost.cancel();
        release_epoch(shared, &claim.tenant, claim.epoch).await
    }

    /// Checks with the bucket's leader that the claim is still the tenant's newest entry:
    /// for an act that must not happen twice. `Ok(false)` ends the claim (it fires
    /// [`Claim::lost`]). Linearizable with claims on the same NATS server or JetStream
    /// cluster: a claim acknowledged before this call started makes it return `false`.
    pub async fn confirm(&self, claim: &Claim) -> Result<bool, BusError> {
        if claim.is_lost() {
            return Ok(false);
        }
        let shared = self.shared();
        let subject = format!("$KV.{OWNERS_BUCKET}.{}", subject_token(&claim.tenant));
        let current = match shared
            .owners_kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message.sequence,
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                0
            }
            Err(e) => return Err(BusError::js(e)),
        };
        if current == claim.epoch.0 {
            return Ok(true);
        }
        let mut view = lock(&shared.view);
        if view
            .owners
            .mine
            .get(&claim.tenant)
            .is_some_and(|m| m.epoch == claim.epoch)
        {
            view.owners.mine.remove(&claim.tenant);
        }
        claim.lost.cancel();
        Ok(false)
    }

    /// Whether this node holds `tenant` at `epoch` now, by its own view (no round trip): the
    /// check an owner makes on a request routed to it.
    pub fn holds(&self, tenant: &str, epoch: Epoch) -> bool {
        lock(&self.shared().view).owners.holds(tenant, epoch)
    }

    /// The tenant's owner if it is online anywhere in the cluster.
    pub fn owner(&self, tenant: &str) -> Option<TenantOwner> {
        effective(&lock(&self.shared().view), tenant)
    }

    /// Every tenant online anywhere in the cluster, by name.
    pub fn online(&self) -> Vec<TenantOwner> {
        let view = lock(&self.shared().view);
        let mut all: Vec<TenantOwner> = view
            .owners
            .entries
            .keys()
            .filter_map(|t| effective(&view, t))
            .collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        all
    }

    /// The online tenants now and every change after, with nothing missed or repeated
    /// between the two.
    pub fn presence(&self) -> (Vec<TenantOwner>, broadcast::Receiver<PresenceChange>) {
        let view = lock(&self.shared().view);
        let rx = self.shared().presence_tx.subscribe();
        let mut all: Vec<TenantOwner> = view
            .owners
            .entries
            .keys()
            .filter_map(|t| effective(&view, t))
            .collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        (all, rx)
    }
}

/// JSON of one of the bus's plain structs (which always serialize).
pub(crate) fn json_of<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
