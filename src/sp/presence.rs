//! Which tenants are connected now, joined with their accounts: the tenant list the console
//! shows, as one snapshot plus a stream of changes. In memory only: presence is rebuilt from
//! the tenants' reconnects when the SP restarts; accounts live in the registry.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use super::registry::TenantAccount;
use crate::util::now_unix_secs;
use crate::wire::protocol::{TenantInfo, TenantStatus};

/// A change to one row of the tenant list.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantEvent {
    Changed(TenantInfo),
    Removed(String),
}

/// What a live control connection reports about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub remote_addr: String,
    pub agent_version: String,
    pub services: Vec<String>,
    pub provider_access: bool,
}

/// Why the SP must drop a tenant's connection and sessions after an account change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kick {
    pub tenant: String,
    pub reason: KickReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    Disabled,
    Removed,
    SecretRotated,
}

/// A tenant whose control channel another SP node of the cluster holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub node: String,
    /// When that node admitted it, Unix seconds.
    pub since: u64,
    pub live: Live,
}

struct Entry {
    account: TenantAccount,
    live: Option<LiveEntry>,
    /// Held by another node (a cluster); a control channel on this node comes first.
    remote: Option<Remote>,
    open_sessions: u32,
}

struct LiveEntry {
    conn_id: u64,
    since: u64,
    live: Live,
    rtt_ms: Option<f64>,
}

impl Entry {
    fn info(&self) -> TenantInfo {
        let here = self.live.as_ref();
        let connected = match (here, &self.remote) {
            (Some(l), _) => Some((l.since, &l.live)),
            (None, Some(r)) => Some((r.since, &r.live)),
            (None, None) => None,
        };
        let status = match (connected, self.account.enabled) {
            (_, false) => TenantStatus::Disabled,
            (Some(_), true) => TenantStatus::Online,
            (None, true) => TenantStatus::Offline,
        };
        let live = connected.map(|(_, live)| live);
        TenantInfo {
            name: self.account.name.clone(),
            status,
            description: self.account.description.clone(),
            connected_since: connected.map(|(since, _)| since),
            last_seen: if connected.is_some() {
                Some(now_unix_secs())
            } else {
                self.account.last_seen
            },
            remote_addr: live.map(|l| l.remote_addr.clone()),
            agent_version: live.map(|l| l.agent_version.clone()),
            services: live.map(|l| l.services.clone()).unwrap_or_default(),
            provider_access: live.is_some_and(|l| l.provider_access),
            heartbeat_rtt_ms: here.and_then(|l| l.rtt_ms),
            open_sessions: self.open_sessions,
            tenant_key: self.account.tenant_key.clone(),
        }
    }
}

/// The live tenant table. A std `Mutex`: every operation is a short map update and never
/// awaits; the broadcast send happens under the lock so a snapshot and its subscription
/// never miss or repeat a change.
pub struct Presence {
    inner: Mutex<Inner>,
    events: broadcast::Sender<TenantEvent>,
}

struct Inner {
    tenants: BTreeMap<String, Entry>,
    next_conn_id: u64,
    /// Other nodes' holds on tenants whose account this node has not read yet (a tenant
    /// added elsewhere that connected there before this node's next registry poll): given
    /// to the tenant's entry when the account arrives.
    early_remotes: std::collections::HashMap<String, Remote>,
}

impl Presence {
    pub fn new(accounts: Vec<TenantAccount>) -> Self {
        let (events, _) = broadcast::channel(4096);
        let tenants = accounts
            .into_iter()
            .map(|account| {
                (
                    account.name.clone(),
                    Entry {
                        account,
                        live: None,
                        remote: None,
                        open_sessions: 0,
                    },
                )
            })
            .collect();
        Presence {
            inner: Mutex::new(Inner {
                tenants,
                next_conn_id: 1,
                early_remotes: std::collections::HashMap::new(),
            }),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::util::lock(&self.inner)
    }

    fn publish(&self, event: TenantEvent) {
        // No subscriber is fine: nobody is watching the list right now.
        let _ = self.events.send(event);
    }

    /// The stored account of one tenant (for authentication).
    pub fn account(&self, name: &str) -> Option<TenantAccount> {
        self.lock().tenants.get(name).map(|e| e.account.clone())
    }

    pub fn info(&self, name: &str) -> Option<TenantInfo> {
        self.lock().tenants.get(name).map(Entry::info)
    }

    /// A receiver for every change from now on. A list read in [`chunk_after`] steps after
    /// it misses no change: one made before a tenant's row was read is in the row and comes
    /// again as an event (the same state twice, harmless); one made after it comes as an event.
    ///
    /// [`chunk_after`]: Self::chunk_after
    pub fn subscribe(&self) -> broadcast::Receiver<TenantEvent> {
        let _inner = self.lock();
        self.events.subscribe()
    }

    /// Up to `max` tenants in name order after `after` (from the first with `None`). The
    /// lock is held for one chunk, not for the whole list: heartbeats and session opens
    /// wait for a thousand rows at most.
    pub fn chunk_after(&self, after: Option<&str>, max: usize) -> Vec<TenantInfo> {
        use std::ops::Bound;
        let inner = self.lock();
        let from = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        inner
            .tenants
            .range::<str, _>((from, Bound::Unbounded))
            .take(max)
            .map(|(_, entry)| entry.info())
            .collect()
    }

    #[cfg(test)]
    pub fn online_count(&self) -> usize {
        self.lock()
            .tenants
            .values()
            .filter(|e| e.live.is_some())
            .count()
    }

    /// Applies the registry's current accounts; returns the connections to drop.
    pub fn sync_accounts(&self, accounts: Vec<TenantAccount>) -> Vec<Kick> {
        let mut inner = self.lock();
        let mut kicks = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for account in accounts {
            seen.insert(account.name.clone());
            match inner.tenants.get_mut(&account.name) {
                Some(entry) if entry.account == account => {}
                Some(entry) => {
                    let reason = if !account.enabled && entry.account.enabled {
                        Some(KickReason::Disabled)
                    } else if account.secret_hash != entry.account.secret_hash {
                        Some(KickReason::SecretRotated)
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        kicks.push(Kick {
                            tenant: account.name.clone(),
                            reason,
                        });
                    }
                    entry.account = account;
                    let info = entry.info();
                    self.publish(TenantEvent::Changed(info));
                }
                None => {
                    let remote = inner.early_remotes.remove(&account.name);
                    let entry = Entry {
                        account,
                        live: None,
                        remote,
                        open_sessions: 0,
                    };
                    self.publish(TenantEvent::Changed(entry.info()));
                    inner.tenants.insert(entry.account.name.clone(), entry);
                }
            }
        }
        let removed: Vec<String> = inner
            .tenants
            .keys()
            .filter(|name| !seen.contains(*name))
            .cloned()
            .collect();
        for name in removed {
            inner.tenants.remove(&name);
            self.publish(TenantEvent::Removed(name.clone()));
            kicks.push(Kick {
                tenant: name,
                reason: KickReason::Removed,
            });
        }
        kicks
    }

    /// Marks a tenant online if `admit` accepts its account as it is *now*, in one step under
    /// the table's lock: an account change applied by [`sync_accounts`](Self::sync_accounts)
    /// (a disable, a rotated secret) lands either before the check, which then refuses, or
    /// after the tenant is online, where its kick finds the connection. `admit` sees `None`
    /// for an unknown tenant, and may note what it learned in the account (a tenant's first
    /// key). Returns the id of this connection.
    pub fn connect_checked<E>(
        &self,
        name: &str,
        live: Live,
        admit: impl FnOnce(Option<&mut TenantAccount>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut inner = self.lock();
        admit(inner.tenants.get_mut(name).map(|e| &mut e.account))?;
        let conn_id = inner.next_conn_id;
        inner.next_conn_id += 1;
        if let Some(entry) = inner.tenants.get_mut(name) {
            entry.live = Some(LiveEntry {
                conn_id,
                since: now_unix_secs(),
                live,
                rtt_ms: None,
            });
            let info = entry.info();
            self.publish(TenantEvent::Changed(info));
        }
        Ok(conn_id)
    }

    /// Marks a tenant online; returns the id of this connection. A newer connection of the
    /// same tenant replaces the older one (the older one may be half-open).
    pub fn connect(&self, name: &str, live: Live) -> Option<u64> {
        let mut inner = self.lock();
        let conn_id = inner.next_conn_id;
        inner.next_conn_id += 1;
        let entry = inner.tenants.get_mut(name)?;
        entry.live = Some(LiveEntry {
            conn_id,
            since: now_unix_secs(),
            live,
            rtt_ms: None,
        });
        let info = entry.info();
        self.publish(TenantEvent::Changed(info));
        Some(conn_id)
    }

    /// Marks a tenant offline if `conn_id` is still its current connection.
    /// Returns whether it was (and so whether `last_seen` should be stored).
    pub fn disconnect(&self, name: &str, conn_id: u64) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.tenants.get_mut(name) else {
            return false;
        };
        if entry.live.as_ref().is_none_or(|l| l.conn_id != conn_id) {
            return false;
        }
        entry.live = None;
        entry.account.last_seen = Some(now_unix_secs());
        let info = entry.info();
        self.publish(TenantEvent::Changed(info));
        true
    }

    /// The tenant changed what it offers or its consent.
    pub fn update_status(&self, name: &str, conn_id: u64, services: Vec<String>, access: bool) {
        self.update_live(name, conn_id, true, |l| {
            l.live.services = services;
            l.live.provider_access = access;
        });
    }

    /// Stores a heartbeat round trip. Published only when it moved noticeably, so thousands
    /// of idle tenants do not flood the consoles with events.
    pub fn set_rtt(&self, name: &str, conn_id: u64, rtt_ms: f64) {
        let mut publish = false;
        self.update_live(name, conn_id, false, |l| {
            publish = match l.rtt_ms {
                None => true,
                Some(old) => (rtt_ms - old).abs() > 1.0 + old * 0.5,
            };
            l.rtt_ms = Some(rtt_ms);
        });
        if publish && let Some(info) = self.info(name) {
            self.publish(TenantEvent::Changed(info));
        }
    }

    fn update_live(&self, name: &str, conn_id: u64, publish: bool, f: impl FnOnce(&mut LiveEntry)) {
        let mut inner = self.lock();
        let Some(entry) = inner.tenants.get_mut(name) else {
            return;
        };
        let Some(live) = entry.live.as_mut().filter(|l| l.conn_id == conn_id) else {
            return;
        };
        f(live);
        if publish {
            let info = entry.info();
            self.publish(TenantEvent::Changed(info));
        }
    }

    /// Counts open sessions per tenant (shown in the list).
    /// Notes that another node of the cluster holds the tenant's control channel now (or
    /// no longer, with `None`). Publishes a change only when the row changes.
    pub fn set_remote(&self, name: &str, remote: Option<Remote>) {
        let mut inner = self.lock();
        let Some(entry) = inner.tenants.get_mut(name) else {
            match remote {
                Some(remote) => inner.early_remotes.insert(name.to_string(), remote),
                None => inner.early_remotes.remove(name),
            };
            return;
        };
        if entry.remote == remote {
            return;
        }
        let before = entry.info();
        entry.remote = remote;
        let after = entry.info();
        if before != after {
            self.publish(TenantEvent::Changed(after));
        }
    }

    /// Sets every tenant's other-node holder from a whole snapshot of the cluster (at start,
    /// and after changes were missed): tenants not in `remote` are held by no other node.
    pub fn sync_remotes(&self, remote: &std::collections::HashMap<String, Remote>) {
        let mut inner = self.lock();
        let early = remote
            .iter()
            .filter(|(name, _)| !inner.tenants.contains_key(*name))
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        inner.early_remotes = early;
        for (name, entry) in inner.tenants.iter_mut() {
            let now = remote.get(name).cloned();
            if entry.remote != now {
                let before = entry.info();
                entry.remote = now;
                let after = entry.info();
                if before != after {
                    self.publish(TenantEvent::Changed(after));
                }
            }
        }
    }

    pub fn session_delta(&self, name: &str, opened: bool) {
        let mut inner = self.lock();
        if let Some(entry) = inner.tenants.get_mut(name) {
            if opened {
                entry.open_sessions += 1;
            } else {
                entry.open_sessions = entry.open_sessions.saturating_sub(1);
            }
            let info = entry.info();
            self.publish(TenantEvent::Changed(info));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, enabled: bool, hash: &str) -> TenantAccount {
        TenantAccount {
            name: name.into(),
            enabled,
            description: String::new(),
            created_at: 0,
            last_seen: None,
            secret_hash: hash.into(),
            tenant_key: None,
        }
    }

    fn live() -> Live {
        Live {
            remote_addr: "127.0.0.1:1".into(),
            agent_version: "t".into(),
            services: vec!["backup".into()],
            provider_access: true,
        }
    }

    #[test]
    fn the_list_reads_in_chunks_in_name_order_from_a_cursor() {
        let names = ["delta", "alpha", "echo", "charlie", "bravo"];
        let presence = Presence::new(names.iter().map(|n| account(n, true, "h")).collect());
        let names_of =
            |chunk: Vec<TenantInfo>| chunk.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names_of(presence.chunk_after(None, 2)), ["alpha", "bravo"]);
        assert_eq!(
            names_of(presence.chunk_after(Some("bravo"), 2)),
            ["charlie", "delta"]
        );
        assert_eq!(names_of(presence.chunk_after(Some("delta"), 2)), ["echo"]);
        assert!(presence.chunk_after(Some("echo"), 2).is_empty());
        // A cursor between names (one removed meanwhile) goes on from the next.
        assert_eq!(names_of(presence.chunk_after(Some("b"), 1)), ["bravo"]);
    }

    #[test]
    fn connect_disconnect_publish_changes() {
        let presence = Presence::new(vec![account("acme", true, "h")]);
        let mut rx = presence.subscribe();
        let snapshot = presence.chunk_after(None, 10);
        assert_eq!(snapshot[0].status, TenantStatus::Offline);
        let id = presence.connect("acme", live()).expect("known tenant");
        match rx.try_recv().expect("event") {
            TenantEvent::Changed(info) => {
                assert_eq!(info.status, TenantStatus::Online);
                assert_eq!(info.services, vec!["backup".to_string()]);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A stale connection id does not take a newer connection offline.
        let newer = presence.connect("acme", live()).expect("known");
        assert!(!presence.disconnect("acme", id));
        assert!(presence.disconnect("acme", newer));
        assert_eq!(
            presence.info("acme").expect("row").status,
            TenantStatus::Offline
        );
        assert!(presence.connect("nobody", live()).is_none());
    }

    #[test]
    fn a_tenant_held_by_another_node_is_listed_online_with_what_it_offers() {
        let presence = Presence::new(vec![account("acme", true, "h"), account("beta", true, "h")]);
        let mut rx = presence.subscribe();
        let remote = Remote {
            node: "sp-b".into(),
            since: 7,
            live: Live {
                services: vec!["rdp".into()],
                ..live()
            },
        };
        presence.set_remote("acme", Some(remote.clone()));
        let info = presence.info("acme").expect("row");
        assert_eq!(info.status, TenantStatus::Online);
        assert_eq!(info.services, ["rdp"]);
        assert_eq!(info.connected_since, Some(7));
        assert!(info.check_open("rdp").is_ok());
        assert!(matches!(rx.try_recv(), Ok(TenantEvent::Changed(_))));
        // The same again is no change.
        presence.set_remote("acme", Some(remote.clone()));
        assert!(rx.try_recv().is_err());
        // A connection here comes first; without it the other node's row shows again.
        let id = presence.connect("acme", live()).expect("known");
        assert_eq!(presence.info("acme").expect("row").services, ["backup"]);
        presence.disconnect("acme", id);
        assert_eq!(presence.info("acme").expect("row").services, ["rdp"]);
        // A snapshot of the cluster: beta moved to another node, acme is held nowhere else.
        let mut now = std::collections::HashMap::new();
        now.insert("beta".to_string(), remote);
        presence.sync_remotes(&now);
        assert_eq!(
            presence.info("acme").expect("row").status,
            TenantStatus::Offline
        );
        assert_eq!(
            presence.info("beta").expect("row").status,
            TenantStatus::Online
        );
        // A disabled tenant is disabled wherever it is held.
        presence.sync_accounts(vec![
            account("acme", true, "h"),
            account("beta", false, "h"),
        ]);
        assert_eq!(
            presence.info("beta").expect("row").status,
            TenantStatus::Disabled
        );
        // Held elsewhere before this node read its account (added and connected between two
        // registry polls): online as soon as the account arrives.
        let remote = Remote {
            node: "sp-c".into(),
            since: 9,
            live: live(),
        };
        presence.set_remote("gamma", Some(remote.clone()));
        assert!(presence.info("gamma").is_none());
        presence.sync_accounts(vec![
            account("acme", true, "h"),
            account("beta", false, "h"),
            account("gamma", true, "h"),
        ]);
        assert_eq!(
            presence.info("gamma").expect("row").status,
            TenantStatus::Online
        );
        // ... and from a snapshot just the same; a hold that ended before is forgotten.
        let mut now = std::collections::HashMap::new();
        now.insert("delta".to_string(), remote);
        presence.sync_remotes(&now);
        presence.set_remote("epsilon", None);
        presence.sync_accounts(vec![
            account("acme", true, "h"),
            account("beta", false, "h"),
            account("gamma", true, "h"),
            account("delta", true, "h"),
            account("epsilon", true, "h"),
        ]);
        assert_eq!(
            presence.info("delta").expect("row").status,
            TenantStatus::Online
        );
        assert_eq!(
            presence.info("epsilon").expect("row").status,
            TenantStatus::Offline
        );
    }

    #[test]
    fn account_changes_kick_the_right_tenants() {
        let presence = Presence::new(vec![
            account("a", true, "h"),
            account("b", true, "h"),
            account("c", true, "h"),
        ]);
        let kicks = presence.sync_accounts(vec![
            account("a", false, "h"),
            account("b", true, "new"),
            account("d", true, "h"),
        ]);
        assert_eq!(
            kicks,
            vec![
                Kick {
                    tenant: "a".into(),
                    reason: KickReason::Disabled
                },
                Kick {
                    tenant: "b".into(),
                    reason: KickReason::SecretRotated
                },
                Kick {
                    tenant: "c".into(),
                    reason: KickReason::Removed
                },
            ]
        );
        assert_eq!(
            presence.info("a").expect("row").status,
            TenantStatus::Disabled
        );
        assert!(presence.info("d").is_some());
        assert!(presence.info("c").is_none());
    }
}
