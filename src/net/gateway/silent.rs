//! The gateway's bookkeeping of connections still silent (no client byte yet), capped per
//! source, and the WARN lines that summarise floods instead of repeating them.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The refusals that can come in floods are logged as one WARN summary per this interval.
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The connections that have not sent data yet, by source ([`crate::sp::auth::source_key`]:
/// IPv4 address or IPv6 /64), oldest first. Each holds a token that closes it.
pub(super) struct SilentTable {
    pub(super) cap: usize,
    next_id: AtomicU64,
    by_source: Mutex<HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>>,
}

impl SilentTable {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            next_id: AtomicU64::new(0),
            by_source: Mutex::new(HashMap::new()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>> {
        // Each critical section is one map update that cannot leave the map inconsistent.
        crate::util::lock(&self.by_source)
    }

    /// Counts a new silent connection from `peer`. Over the cap, the source's oldest silent
    /// connection is told to close; the second value says whether that happened.
    pub(super) fn register(&self, peer: IpAddr) -> (Silent<'_>, bool) {
        let key = crate::sp::auth::source_key(peer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closes = CancellationToken::new();
        let mut map = self.lock();
        let queue = map.entry(key).or_default();
        let mut evicted = false;
        while queue.len() >= self.cap {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
                evicted = true;
            }
        }
        queue.push_back((id, closes.clone()));
        drop(map);
        let silent = Silent {
            table: self,
            key,
            id,
            closes,
            counted: true,
        };
        (silent, evicted)
    }

    fn remove(&self, key: IpAddr, id: u64) {
        let mut map = self.lock();
        if let Some(queue) = map.get_mut(&key) {
            queue.retain(|(other, _)| *other != id);
            if queue.is_empty() {
                map.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    #[cfg(test)]
    pub(super) fn count(&self, peer: IpAddr) -> usize {
        self.lock()
            .get(&crate::sp::auth::source_key(peer))
            .map_or(0, VecDeque::len)
    }
}

/// One connection's place in the [`SilentTable`], until its client sends data or it ends.
pub(super) struct Silent<'a> {
    table: &'a SilentTable,
    key: IpAddr,
    id: u64,
    /// Cancelled when a newer silent connection of the same source pushes this one out.
    pub(super) closes: CancellationToken,
    counted: bool,
}

impl Silent<'_> {
    /// The client sent data (or its EOF): it no longer counts as silent.
    pub(super) fn spoke(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.table.remove(self.key, self.id);
        }
    }
}

impl Drop for Silent<'_> {
    fn drop(&mut self) {
        self.spoke();
    }
}

/// A WARN line for an event that can come in floods: the first one is logged at once, later
/// ones are counted and reported in one line at most every [`WARN_INTERVAL`].
#[derive(Default)]
pub(super) struct WarnSummary {
    state: Mutex<WarnState>,
}

#[derive(Default)]
struct WarnState {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl WarnSummary {
    /// Counts one event at `now`; returns how many to report if a line is due.
    pub(super) fn record(&self, now: Instant) -> Option<u64> {
        let mut state = crate::util::lock(&self.state);
        state.unlogged += 1;
        if state
            .last_logged
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            return None;
        }
        state.last_logged = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_table_closes_the_oldest_of_the_same_source_and_groups_ipv6_by_64() {
        let table = SilentTable::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let (first, evicted) = table.register(ip("2001:db8::1"));
        assert!(!evicted);
        let (second, _) = table.register(ip("2001:db8::ffff:2"));
        // Another /64, and IPv4: counted apart.
        let (other, _) = table.register(ip("2001:db8:0:1::1"));
        let (v4, _) = table.register(ip("192.0.2.1"));
        assert_eq!(table.count(ip("2001:db8::9")), 2);
        let (third, evicted) = table.register(ip("2001:db8::3"));
        assert!(evicted);
        assert!(first.closes.is_cancelled(), "the oldest is closed");
        assert!(!second.closes.is_cancelled() && !third.closes.is_cancelled());
        assert!(!other.closes.is_cancelled() && !v4.closes.is_cancelled());
        assert_eq!(table.count(ip("2001:db8::1")), 2);

        // Speaking or ending leaves the table; an empty source leaves no entry.
        let mut second = second;
        second.spoke();
        assert_eq!(table.count(ip("2001:db8::1")), 1);
        drop((first, second, third, other, v4));
        assert!(table.is_empty());
    }

    #[test]
    fn warn_summary_logs_at_most_once_per_interval_and_counts_the_rest() {
        let summary = WarnSummary::default();
        let t0 = Instant::now();
        assert_eq!(summary.record(t0), Some(1));
        for s in 1..10 {
            assert_eq!(summary.record(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(summary.record(t0 + WARN_INTERVAL), Some(10));
        assert_eq!(summary.record(t0 + WARN_INTERVAL), None);
    }
}
