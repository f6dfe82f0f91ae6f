//! Admission: which connections still in their handshake the SP keeps when it has too many.
//!
//! Every connection is accepted and registered here until its hello is read. A source (an IPv4 address, an IPv6 /64) may keep `per_source` *silent*
//! connections (no byte received yet, for longer than `grace`); past that each new one
//! displaces the source's oldest silent one, so a flood of idle sockets only ever displaces
//! itself. Connections that talk are not held to the per-source cap: a NAT full of tenants
//! reconnecting at once, or a console opening 200 sessions, is not an attack. All sources
//! together hold at most `total`; at that cap the oldest silent connection of anyone gives way,
//! and if none is silent, the oldest of a source holding twice its fair share or more (one
//! source talking slowly does not keep the others out). Otherwise there is no room, and the
//! accept loop waits for a place: in a reconnect storm from many sources nobody is cut off
//! mid-handshake.
//!
//! "Silent" means a connection's task looked and found no byte (and, for the per-source cap,
//! none came within the grace): in a reconnect storm the SP's tasks run behind the accept loop, and a tenant whose
//! hello is already queued is not a silent socket. For the same reason a connection given up
//! as silent is closed only if its socket still holds no byte when its task hears of it;
//! otherwise it takes a place again, as talking ([`Ticket::readmit`]).
//!
//! Behind a trusted gateway the first admission is of the gateway's address, with the global
//! cap as its only limit; once the PROXY header names the client, the connection is moved to
//! the client's address and that address's cap applies ([`Ticket::rekey`]).
//!
//! Every shed connection is counted; [`Admission::take_summary`] hands the counts to a caller
//! that logs one line per interval instead of one per connection.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The unit a per-source cap counts: one IPv4 address, or one IPv6 /64 (the login limiter's
/// rule, in one place).
pub use crate::sp::auth::source_key;

/// The caps, as `sp.toml` sets them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections in their handshake, over all sources.
    pub total: usize,
    /// Silent connections from one source.
    pub per_source: usize,
    /// How long a new connection may be silent before it counts as silent: its first bytes
    /// are on the way, and its task may not have looked yet.
    pub grace: Duration,
}

/// Why a connection was given up, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Displaced: a newer connection needed its place (it had sent nothing).
    Displaced,
    /// Refused: no place came free for it within the handshake timeout.
    Refused,
    /// Closed by the caller for sending nothing within the first-byte deadline.
    Silent,
}

/// Counts of shed connections since the last summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub displaced: u64,
    pub refused: u64,
    pub silent: u64,
    /// The sources that lost the most, most first (at most three).
    pub top_sources: Vec<(IpAddr, u64)>,
}

impl Summary {
    pub fn is_empty(&self) -> bool {
        self.displaced + self.refused + self.silent == 0
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} displaced, {} refused, {} silent past the first-byte deadline",
            self.displaced, self.refused, self.silent
        )?;
        if !self.top_sources.is_empty() {
            let top: Vec<String> = self
                .top_sources
                .iter()
                .map(|(ip, n)| format!("{ip} ({n})"))
                .collect();
            write!(f, "; most from {}", top.join(", "))?;
        }
        Ok(())
    }
}

struct Entry {
    source: IpAddr,
    silent: bool,
    /// Its task has looked and found no byte waiting. Until then a connection never gives
    /// way: in a reconnect storm the SP's tasks run seconds behind the accept loop, and a
    /// tenant whose hello is already queued is not a silent socket.
    looked: bool,
    since: Instant,
    tokens: Tokens,
}

/// How a connection's task hears that its place was given up.
#[derive(Clone, Default)]
struct Tokens {
    /// Given up while talking (its source held twice its share): close.
    evict: CancellationToken,
    /// Given up while known silent: close, unless the first bytes have come since the task
    /// last looked (an SP behind in a storm looks late); then [`Ticket::readmit`].
    silent: CancellationToken,
}

impl Entry {
    /// Known silent, and (for the per-source cap, `grace` > 0) for longer than `grace`.
    fn displaceable(&self, now: Instant, grace: Duration) -> bool {
        self.silent && self.looked && now.duration_since(self.since) >= grace
    }
}

/// How many silent connections, oldest first, the global cap looks through for one that may
/// give way (bounds the time under the lock).
const SCAN: usize = 1024;

#[derive(Default)]
struct Table {
    next_id: u64,
    /// Ids grow with time, so the smallest id in a set is its oldest connection.
    entries: HashMap<u64, Entry>,
    silent: BTreeSet<u64>,
    by_source: HashMap<IpAddr, SourceEntries>,
    shed: ShedCounts,
}

#[derive(Default)]
struct SourceEntries {
    all: BTreeSet<u64>,
    silent: BTreeSet<u64>,
}

#[derive(Default)]
struct ShedCounts {
    displaced: u64,
    refused: u64,
    silent: u64,
    by_source: HashMap<IpAddr, u64>,
}

impl Table {
    fn count(&self, source: IpAddr) -> usize {
        self.by_source.get(&source).map_or(0, |s| s.all.len())
    }

    fn insert(&mut self, source: IpAddr, silent: bool, since: Instant, tokens: Tokens) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let at = self.by_source.entry(source).or_default();
        at.all.insert(id);
        if silent {
            at.silent.insert(id);
            self.silent.insert(id);
        }
        self.entries.insert(
            id,
            Entry {
                source,
                silent,
                looked: false,
                since,
                tokens,
            },
        );
        id
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        self.silent.remove(&id);
        if let Some(at) = self.by_source.get_mut(&entry.source) {
            at.all.remove(&id);
            at.silent.remove(&id);
            if at.all.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    fn mark_looked(&mut self, id: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.looked = true;
        }
    }

    fn mark_talking(&mut self, id: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.silent = false;
            self.silent.remove(&id);
            if let Some(at) = self.by_source.get_mut(&entry.source) {
                at.silent.remove(&id);
            }
        }
    }

    /// Gives up connection `id`, which is talking: its task sees the eviction and closes it.
    fn evict(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            entry.tokens.evict.cancel();
            self.count_shed(entry.source, Shed::Displaced);
        }
    }

    /// Gives up connection `id`, known silent: its task checks for bytes that came since it
    /// looked, and counts the displacement if there are none.
    fn give_up_silent(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            entry.tokens.silent.cancel();
        }
    }

    fn count_shed(&mut self, source: IpAddr, why: Shed) {
        match why {
            Shed::Displaced => self.shed.displaced += 1,
            Shed::Refused => self.shed.refused += 1,
            Shed::Silent => self.shed.silent += 1,
        }
        // Bounded: a summary drains the map every interval, and only sources that lost a
        // connection are in it.
        *self.shed.by_source.entry(source).or_insert(0) += 1;
    }

    /// Keeps `source` at no more than `limits.per_source` silent connections: past it, its
    /// oldest one known silent for longer than the grace gives way.
    fn trim_source(&mut self, source: IpAddr, limits: &Limits, now: Instant) {
        let Some(at) = self.by_source.get(&source) else {
            return;
        };
        if at.silent.len() < limits.per_source {
            return;
        }
        let oldest = at.silent.first().copied();
        if let Some(id) = oldest
            && self
                .entries
                .get(&id)
                .is_some_and(|e| e.displaceable(now, limits.grace))
        {
            self.give_up_silent(id);
        }
    }

    /// Makes room for one more connection under the global cap; false if there is none now.
    fn make_room_overall(&mut self, source: IpAddr, limits: &Limits, now: Instant) -> bool {
        if self.entries.len() < limits.total {
            return true;
        }
        let silent = self.silent.iter().take(SCAN).copied().find(|id| {
            self.entries
                .get(id)
                .is_some_and(|e| e.displaceable(now, Duration::ZERO))
        });
        if let Some(id) = silent {
            self.give_up_silent(id);
            return true;
        }
        // Everyone is talking. A source holding at least twice its fair share (the cap over
        // the sources, the newcomer's counted) gives up its oldest, unless it is the
        // newcomer's own: one source that talks slowly does not keep everyone else out. In
        // a reconnect storm from many sources none holds that much, and nobody is cut off
        // mid-handshake; the newcomer waits for a place.
        let largest = self
            .by_source
            .iter()
            .max_by_key(|(_, at)| at.all.len())
            .map(|(ip, at)| (*ip, at.all.len(), at.all.first().copied()));
        let sources = self.by_source.len() + usize::from(self.count(source) == 0);
        match largest {
            Some((ip, n, Some(id)))
                if ip != source
                    && n * sources >= 2 * limits.total
                    && n > self.count(source) + 1 =>
            {
                self.evict(id);
                true
            }
            _ => false,
        }
    }
}

/// The table of connections in their handshake, shared by the accept loop and the
/// connections' tasks.
pub struct Admission {
    limits: Limits,
    table: Mutex<Table>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Each critical section leaves the table consistent before it can panic.
        crate::util::lock(&self.table)
    }

    /// Registers a connection just accepted from `peer`. `gateway` is true for a trusted
    /// gateway, whose address holds the connections of many clients: only the global cap
    /// applies to it until [`Ticket::rekey`] names the client. `None`: no room now (every
    /// place is held by a connection that talks, or may yet); the caller may wait for one,
    /// and counts a refusal ([`Admission::count_shed`]) if it gives up.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, gateway: bool) -> Option<Ticket> {
        let source = source_key(peer);
        let now = Instant::now();
        let mut table = self.table();
        if !gateway {
            table.trim_source(source, &self.limits, now);
        }
        if !table.make_room_overall(source, &self.limits, now) {
            return None;
        }
        let tokens = Tokens::default();
        let id = table.insert(source, true, now, tokens.clone());
        Some(Ticket {
            admission: self.clone(),
            place: Mutex::new(Place { id, source, tokens }),
        })
    }

    /// Counts a connection its caller closed (e.g. silent past the first-byte deadline).
    pub fn count_shed(&self, peer: IpAddr, why: Shed) {
        self.table().count_shed(source_key(peer), why);
    }

    /// Connections in their handshake now.
    pub fn pending(&self) -> usize {
        self.table().entries.len()
    }

    /// The counts since the last call, and resets them.
    pub fn take_summary(&self) -> Summary {
        let shed = std::mem::take(&mut self.table().shed);
        let mut top: Vec<(IpAddr, u64)> = shed.by_source.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(3);
        Summary {
            displaced: shed.displaced,
            refused: shed.refused,
            silent: shed.silent,
            top_sources: top,
        }
    }
}

/// One admitted connection's place in the table; dropping it frees the place.
pub struct Ticket {
    admission: Arc<Admission>,
    place: Mutex<Place>,
}

/// Where a ticket's entry is: its id and source change with [`Ticket::rekey`] and
/// [`Ticket::readmit`].
struct Place {
    id: u64,
    source: IpAddr,
    tokens: Tokens,
}

impl Ticket {
    fn place(&self) -> MutexGuard<'_, Place> {
        crate::util::lock(&self.place)
    }

    fn id(&self) -> u64 {
        self.place().id
    }

    /// Resolves when the connection, talking, was displaced by a newer one: close it.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.place().tokens.evict.clone().cancelled_owned()
    }

    /// Resolves when the connection was given up while known silent. Its task then closes
    /// it ([`Ticket::displaced`]) or, if its first bytes are waiting after all, keeps it
    /// ([`Ticket::readmit`]).
    pub fn given_up_while_silent(&self) -> WaitForCancellationFutureOwned {
        self.place().tokens.silent.clone().cancelled_owned()
    }

    /// Given up while silent, and nothing had come: counted as displaced.
    pub fn displaced(&self) {
        let source = self.place().source;
        self.admission.count_shed(source, Shed::Displaced);
    }

    /// Given up while silent, but its first bytes had come since its task looked: it takes
    /// a place again, as talking, even past the global cap. The cap is overrun only by
    /// connections that have spoken, each at most once, so by at most the cap again.
    pub fn readmit(&self) {
        let mut place = self.place();
        if !place.tokens.silent.is_cancelled() {
            return; // still in its place
        }
        let tokens = Tokens {
            evict: place.tokens.evict.clone(),
            silent: CancellationToken::new(),
        };
        let mut table = self.admission.table();
        place.id = table.insert(place.source, false, Instant::now(), tokens.clone());
        place.tokens = tokens;
    }

    /// The connection's task looked and no byte was waiting: it may give way at once.
    pub fn looked_silent(&self) {
        let id = self.id();
        self.admission.table().mark_looked(id);
    }

    /// The connection sent its first byte: from now on it is not displaced for being silent.
    pub fn talking(&self) {
        let id = self.id();
        self.admission.table().mark_talking(id);
    }

    /// Moves the connection from the gateway's address to the client's, which the gateway's
    /// PROXY header named, under that client's cap.
    pub fn rekey(&self, client: IpAddr) {
        let source = source_key(client);
        let mut place = self.place();
        let mut table = self.admission.table();
        // The id changes under the table's lock, so no other caller sees it half moved.
        let Some(old) = table.remove(place.id) else {
            // Already given up; the caller hears of it and closes.
            return;
        };
        table.trim_source(source, &self.admission.limits, Instant::now());
        place.id = table.insert(source, old.silent, old.since, old.tokens);
        place.source = source;
    }

    /// Given up, for either reason.
    #[cfg(test)]
    fn given_up(&self) -> bool {
        let place = self.place();
        place.tokens.evict.is_cancelled() || place.tokens.silent.is_cancelled()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let id = self.id();
        self.admission.table().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    fn admission(total: usize, per_source: usize, grace: Duration) -> Arc<Admission> {
        Admission::new(Limits {
            total,
            per_source,
            grace,
        })
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_mapped_v4_is_v4() {
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().expect("address");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("address");
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(source_key(a.into()), source_key(b.into()));
        assert_ne!(source_key(a.into()), source_key(c.into()));
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().expect("address");
        assert_eq!(source_key(mapped.into()), ip(1));
    }

    #[test]
    fn a_source_past_its_silent_cap_displaces_its_own_oldest_silent_connection() {
        let adm = admission(100, 2, Duration::ZERO);
        let first = adm.admit(ip(1), false).expect("room");
        let second = adm.admit(ip(1), false).expect("room");
        first.looked_silent();
        second.looked_silent();
        let third = adm
            .admit(ip(1), false)
            .expect("the oldest silent one makes room");
        assert!(first.given_up(), "the oldest was displaced");
        assert!(!third.given_up());
        // Its task finds nothing waiting on the socket, closes it, and counts it.
        first.displaced();
        assert_eq!(adm.pending(), 2);
        let summary = adm.take_summary();
        assert_eq!(summary.displaced, 1);
        assert_eq!(summary.top_sources, vec![(ip(1), 1)]);
        assert!(
            adm.take_summary().is_empty(),
            "taking the summary resets it"
        );
    }

    #[test]
    fn connections_within_the_grace_or_talking_are_not_held_to_the_source_cap() {
        let adm = admission(100, 2, Duration::from_secs(3600));
        let young: Vec<Ticket> = (0..5)
            .map(|_| {
                let ticket = adm.admit(ip(1), false).expect("room");
                ticket.looked_silent();
                ticket
            })
            .collect();
        assert!(
            young.iter().all(|t| !t.given_up()),
            "a burst is not a flood"
        );
        let adm = admission(100, 2, Duration::ZERO);
        let talking: Vec<Ticket> = (0..10)
            .map(|_| {
                let ticket = adm.admit(ip(1), false).expect("room");
                ticket.talking();
                ticket
            })
            .collect();
        assert!(
            talking.iter().all(|t| !t.given_up()),
            "talking connections are never displaced by their own source"
        );
        assert_eq!(adm.pending(), 10);
    }

    #[test]
    fn at_the_global_cap_the_oldest_silent_connection_of_anyone_makes_room() {
        let adm = admission(3, 10, Duration::ZERO);
        let flood: Vec<Ticket> = (0..3)
            .map(|_| adm.admit(ip(1), false).expect("room"))
            .collect();
        flood.iter().for_each(Ticket::looked_silent);
        let honest = adm.admit(ip(2), false).expect("room made");
        assert!(flood[0].given_up());
        assert!(!honest.given_up());
        assert_eq!(adm.pending(), 3);
    }

    #[test]
    fn at_the_global_cap_with_everyone_talking_a_source_past_twice_its_share_gives_way() {
        let adm = admission(6, 10, Duration::ZERO);
        let flood: Vec<Ticket> = (0..6)
            .map(|_| adm.admit(ip(1), false).expect("room"))
            .collect();
        flood.iter().for_each(Ticket::talking);
        // ip(1) holds all six places; with a newcomer, its fair share is three.
        let honest = adm
            .admit(ip(2), false)
            .expect("the source holding everything gave way");
        honest.talking();
        assert!(flood[0].given_up());
        // Five of six for ip(1) among three sources (a share of two): it gives way again.
        let other = adm.admit(ip(3), false).expect("ip(1) still holds the most");
        other.talking();
        assert!(flood[1].given_up());
        assert!(!honest.given_up());
        assert_eq!(adm.take_summary().displaced, 2);
    }

    #[test]
    fn a_reconnect_storm_from_many_sources_cuts_nobody_off_mid_handshake() {
        // Eight sources, each holding about its share of the cap, all talking: a newcomer
        // finds no room and waits (the accept loop retries), nobody is displaced, even from
        // a source holding a few more than the newcomer's.
        let adm = admission(16, 10, Duration::ZERO);
        let counts = [3, 3, 2, 2, 2, 2, 1, 1];
        let storm: Vec<Ticket> = counts
            .iter()
            .enumerate()
            .flat_map(|(n, &k)| (0..k).map(move |_| n as u8 + 1))
            .map(|n| adm.admit(ip(n), false).expect("room"))
            .collect();
        storm.iter().for_each(Ticket::talking);
        assert!(adm.admit(ip(8), false).is_none(), "no room, nobody kicked");
        assert!(
            adm.admit(ip(9), false).is_none(),
            "no room for a new source either"
        );
        assert!(storm.iter().all(|t| !t.given_up()));
        assert_eq!(adm.take_summary(), Summary::default());
    }

    #[test]
    fn a_storm_of_connections_not_yet_looked_at_keeps_its_places() {
        // Tenants reconnecting faster than the SP's tasks run: their hellos are queued, but
        // no task has looked. None gives way to a newcomer, however long they wait...
        let adm = admission(3, 1, Duration::ZERO);
        let storm: Vec<Ticket> = (1..=3)
            .map(|n| adm.admit(ip(n), false).expect("room"))
            .collect();
        assert!(adm.admit(ip(4), false).is_none(), "no room, nobody kicked");
        assert!(storm.iter().all(|t| !t.given_up()));
        // ...while one its task found silent does, at once.
        storm[1].looked_silent();
        let newcomer = adm.admit(ip(4), false).expect("the silent one made room");
        assert!(storm[1].given_up());
        assert!(!storm[0].given_up() && !newcomer.given_up());
        storm[1].displaced();
        assert_eq!(adm.take_summary().displaced, 1);
    }

    #[test]
    fn a_connection_given_up_as_silent_whose_bytes_had_come_takes_a_place_again() {
        let adm = admission(2, 10, Duration::ZERO);
        let late = adm.admit(ip(1), false).expect("room");
        let quiet = adm.admit(ip(2), false).expect("room");
        late.looked_silent();
        quiet.looked_silent();
        let newcomer = adm
            .admit(ip(3), false)
            .expect("the oldest silent one made room");
        assert!(late.given_up() && !quiet.given_up());
        // Its task finds the first bytes there after all (it had looked too early).
        late.readmit();
        late.talking();
        assert_eq!(adm.pending(), 3, "over the cap by the one that had spoken");
        assert_eq!(adm.take_summary().displaced, 0, "nothing was shed");
        // The next newcomer takes the place of the one that is really silent.
        let next = adm.admit(ip(4), false).expect("room made");
        assert!(quiet.given_up());
        quiet.displaced();
        assert_eq!(adm.take_summary().displaced, 1);
        assert!(!late.given_up(), "readmitted, it keeps its new place");
        drop((late, newcomer, next));
        assert_eq!(adm.pending(), 0);
    }

    #[test]
    fn a_gateway_is_capped_only_globally_and_rekey_applies_the_client_cap() {
        let adm = admission(100, 2, Duration::ZERO);
        let through: Vec<Ticket> = (0..5)
            .map(|_| adm.admit(ip(9), true).expect("room"))
            .collect();
        assert_eq!(
            adm.pending(),
            5,
            "the gateway is not held to the per-source cap"
        );
        // Each client connection is looked at again once the PROXY header named its client.
        for t in &through[..2] {
            t.rekey(ip(1));
            t.looked_silent();
        }
        through[2].rekey(ip(1));
        assert!(
            through[0].given_up(),
            "the client's oldest silent one gave way"
        );
        through[3].rekey(ip(2));
        assert!(!through[3].given_up());
        drop(through);
        assert_eq!(adm.pending(), 0, "every place is freed on drop");
    }
}
