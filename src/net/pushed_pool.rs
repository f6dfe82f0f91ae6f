//! The gateway pool an SP pushes to a tenant, as the tenant redirector keeps it.
//!
//! What an SP can make a tenant dial is bounded here: a pushed pool is taken only if it passes
//! [`check_gateway_pool`] (a bad pool is ignored whole), it is remembered in a file beside the
//! tenant's config so the tenant can fail over after a restart, and an entry that has failed
//! every dial for `forget_after` (a day) is forgotten: the tenant stops trying it, and ignores
//! it for another `forget_after` if the SP pushes it again. A tenant that sets
//! `follow_gateway_pool = false` dials only the endpoints in its own config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::dial::Dialer;
use crate::tenant::config::{BadPool, check_gateway_pool};
use crate::util::files::write_atomically;

/// How long a pushed gateway may fail every dial before the tenant forgets it.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The remembered pool: what the pool file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedPool {
    /// The entries in use, in the SP's order.
    pub gateways: Vec<String>,
    /// Entries that have failed every dial since then (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failing_since: BTreeMap<String, u64>,
    /// Entries forgotten for staying unreachable, and when (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forgotten: BTreeMap<String, u64>,
}

/// The file's two shapes: this one, or the plain list earlier versions wrote.
#[derive(Deserialize)]
#[serde(untagged)]
enum PoolFile {
    Current(PushedPool),
    List(Vec<String>),
}

impl PushedPool {
    /// Reads a pool file; `None` (with a warning) when it is missing, unreadable or fails
    /// [`check_gateway_pool`].
    pub fn load(path: &Path) -> Option<PushedPool> {
        let text = std::fs::read_to_string(path).ok()?;
        let pool = match serde_json::from_str(&text) {
            Ok(PoolFile::Current(pool)) => pool,
            Ok(PoolFile::List(gateways)) => PushedPool {
                gateways,
                ..PushedPool::default()
            },
            Err(e) => {
                tracing::warn!("ignoring the gateway pool in {}: {e}", path.display());
                return None;
            }
        };
        match check_gateway_pool(&pool.gateways) {
            Ok(()) => Some(pool),
            Err(why) => {
                tracing::warn!("ignoring the gateway pool in {}: {why}", path.display());
                None
            }
        }
    }

    /// Writes the pool file durably ([`write_atomically`]): a crash leaves the old file or
    /// the new one, never half of one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(path, text.as_bytes())
    }

    /// Takes a pool the SP pushed, leaving out entries forgotten less than `forget_after` ago;
    /// a pool that fails [`check_gateway_pool`] changes nothing.
    pub fn take(
        &mut self,
        pushed: &[String],
        now: SystemTime,
        forget_after: Duration,
    ) -> Result<(), BadPool> {
        check_gateway_pool(pushed)?;
        let now = unix(now);
        self.forgotten
            .retain(|_, at| now.saturating_sub(*at) < forget_after.as_secs());
        self.gateways = pushed
            .iter()
            .filter(|e| !self.forgotten.contains_key(*e))
            .cloned()
            .collect();
        let gateways = &self.gateways;
        self.failing_since.retain(|e, _| gateways.contains(e));
        Ok(())
    }

    /// Brings in what the dialer saw (`failing` tells since when an entry has failed every
    /// dial) and forgets the entries that have failed for `forget_after`, except those in
    /// `keep` (the tenant's own endpoints). Returns the entries forgotten now.
    pub fn review(
        &mut self,
        failing: impl Fn(&str) -> Option<SystemTime>,
        keep: &[String],
        now: SystemTime,
        forget_after: Duration,
    ) -> Vec<String> {
        let now_secs = unix(now);
        let mut forget = Vec::new();
        for entry in &self.gateways {
            match failing(entry) {
                Some(since) => {
                    let since = unix(since);
                    self.failing_since.insert(entry.clone(), since);
                    if now_secs.saturating_sub(since) >= forget_after.as_secs()
                        && !keep.contains(entry)
                    {
                        forget.push(entry.clone());
                    }
                }
                None => {
                    self.failing_since.remove(entry);
                }
            }
        }
        for entry in &forget {
            self.gateways.retain(|e| e != entry);
            self.failing_since.remove(entry);
            self.forgotten.insert(entry.clone(), now_secs);
        }
        forget
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The tenant redirector's keeper of the pushed pool: feeds it to the dialer, keeps the file
/// up to date and forgets dead entries.
pub struct PoolKeeper {
    tenant: String,
    /// False when the tenant dials only its configured endpoints.
    follow: bool,
    file: Option<PathBuf>,
    configured: Vec<String>,
    forget_after: Duration,
    pool: Mutex<PushedPool>,
}

impl PoolKeeper {
    /// Loads the pool file (when the tenant follows the SP's pool) and hands its entries,
    /// with their failure clocks, to `dialer`.
    pub fn start(
        tenant: &str,
        follow: bool,
        file: Option<PathBuf>,
        configured: Vec<String>,
        forget_after: Duration,
        dialer: &Dialer,
    ) -> PoolKeeper {
        let pool = match (&file, follow) {
            (Some(path), true) => PushedPool::load(path).unwrap_or_default(),
            _ => PushedPool::default(),
        };
        dialer.add_endpoints(&pool.gateways);
        for (entry, since) in &pool.failing_since {
            dialer.note_failing_since(entry, UNIX_EPOCH + Duration::from_secs(*since));
        }
        PoolKeeper {
            tenant: tenant.to_string(),
            follow,
            file,
            configured,
            forget_after,
            pool: Mutex::new(pool),
        }
    }

    /// The SP pushed `gateways` (in its welcome or a `gateways` frame).
    pub fn pushed(&self, dialer: &Dialer, gateways: &[String]) {
        if gateways.is_empty() {
            return;
        }
        if !self.follow {
            tracing::debug!(tenant = %self.tenant, pool = ?gateways, "not following the SP's gateway pool (follow_gateway_pool = false)");
            return;
        }
        let mut pool = self.lock();
        let before = pool.clone();
        if let Err(why) = pool.take(gateways, SystemTime::now(), self.forget_after) {
            tracing::warn!(tenant = %self.tenant, pool = ?gateways, "ignoring the gateway pool the SP sent: {why}");
            return;
        }
        let left_out: Vec<&String> = gateways
            .iter()
            .filter(|e| !pool.gateways.contains(e))
            .collect();
        if !left_out.is_empty() {
            tracing::info!(tenant = %self.tenant, ?left_out, "leaving out pushed gateways forgotten for being unreachable");
        }
        // Entries the SP no longer lists are dropped, unless the tenant's config has them.
        for gone in before
            .gateways
            .iter()
            .filter(|e| !pool.gateways.contains(e))
        {
            if !self.configured.contains(gone) {
                dialer.remove_endpoint(gone);
            }
        }
        dialer.add_endpoints(&pool.gateways);
        self.save_if_changed(&before, &pool);
    }

    /// After a dial: forgets the pushed entries that have failed every dial for a day.
    pub fn review(&self, dialer: &Dialer) {
        if !self.follow {
            return;
        }
        let mut pool = self.lock();
        let before = pool.clone();
        let forgotten = pool.review(
            |e| dialer.failing_since(e),
            &self.configured,
            SystemTime::now(),
            self.forget_after,
        );
        for entry in &forgotten {
            dialer.remove_endpoint(entry);
            tracing::warn!(tenant = %self.tenant, gateway = ?entry, "forgetting a gateway the SP pushed: unreachable for {:?}", self.forget_after);
        }
        self.save_if_changed(&before, &pool);
    }

    fn save_if_changed(&self, before: &PushedPool, now: &PushedPool) {
        let Some(path) = &self.file else { return };
        // Unchanged, or still nothing to remember: no write.
        if before == now && (path.exists() || *now == PushedPool::default()) {
            return;
        }
        if let Err(e) = now.save(path) {
            tracing::warn!(tenant = %self.tenant, "could not remember the gateway pool in {}: {e}", path.display());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PushedPool> {
        crate::util::lock(&self.pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn entries(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_entry_failing_for_a_day_is_forgotten_and_a_repush_ignored_for_a_day() {
        let mut pool = PushedPool::default();
        pool.take(&entries(&["gw1:6180", "gw2:6180"]), at(0), DAY)
            .expect("good pool");
        let failing = |e: &str| (e == "gw2:6180").then(|| at(10));
        // Failing for less than a day: kept, with its clock.
        assert!(pool.review(failing, &[], at(10 + 3600), DAY).is_empty());
        assert_eq!(pool.failing_since.get("gw2:6180"), Some(&1_000_010));
        // A day after the first failure: forgotten.
        let gone = pool.review(failing, &[], at(10 + DAY.as_secs()), DAY);
        assert_eq!(gone, entries(&["gw2:6180"]));
        assert_eq!(pool.gateways, entries(&["gw1:6180"]));
        assert!(pool.failing_since.is_empty());
        // Pushed again within the day: left out; a day later: taken again.
        let again = entries(&["gw1:6180", "gw2:6180"]);
        pool.take(&again, at(20 + DAY.as_secs()), DAY)
            .expect("pool");
        assert_eq!(pool.gateways, entries(&["gw1:6180"]));
        pool.take(&again, at(20 + 2 * DAY.as_secs()), DAY)
            .expect("pool");
        assert_eq!(pool.gateways, again);
        assert!(pool.forgotten.is_empty());
    }

    #[test]
    fn a_success_resets_the_clock_and_own_endpoints_are_never_forgotten() {
        let mut pool = PushedPool::default();
        pool.take(&entries(&["gw1:6180", "sp:6180"]), at(0), DAY)
            .expect("pool");
        let failing = |_: &str| Some(at(0));
        assert!(pool.review(failing, &[], at(100), DAY).is_empty());
        assert_eq!(pool.failing_since.len(), 2);
        // gw1 answered once: its clock is gone.
        let failing = |e: &str| (e == "sp:6180").then(|| at(0));
        assert!(pool.review(failing, &[], at(200), DAY).is_empty());
        assert_eq!(pool.failing_since.len(), 1);
        // sp:6180 is also in the tenant's own config: kept however long it fails.
        let keep = entries(&["sp:6180"]);
        assert!(
            pool.review(failing, &keep, at(5 * DAY.as_secs()), DAY)
                .is_empty()
        );
        assert_eq!(pool.gateways.len(), 2);
    }

    #[test]
    fn a_bad_pool_changes_nothing() {
        let mut pool = PushedPool::default();
        pool.take(&entries(&["gw1:6180"]), at(0), DAY)
            .expect("pool");
        let bad = entries(&["gw1:6180", "https://evil.example/x:443"]);
        assert!(pool.take(&bad, at(1), DAY).is_err());
        assert_eq!(pool.gateways, entries(&["gw1:6180"]));
    }

    #[test]
    fn the_file_round_trips_and_the_old_plain_list_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tenant.toml.gateways.json");
        let mut pool = PushedPool::default();
        pool.take(&entries(&["gw1:6180", "gw2:6180"]), at(0), DAY)
            .expect("pool");
        pool.review(|_| Some(at(5)), &[], at(6), DAY);
        pool.save(&path).expect("save");
        assert_eq!(PushedPool::load(&path), Some(pool));

        std::fs::write(&path, r#"["gw3:6180"]"#).expect("write");
        let old = PushedPool::load(&path).expect("old format");
        assert_eq!(old.gateways, entries(&["gw3:6180"]));

        std::fs::write(&path, r#"["not a host port"]"#).expect("write");
        assert_eq!(PushedPool::load(&path), None);
        std::fs::write(&path, "{garbage").expect("write");
        assert_eq!(PushedPool::load(&path), None);
    }
}
