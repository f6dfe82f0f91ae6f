//! The sessions being relayed now, as the admin API lists and ends them: who opened which
//! tenant's service from where, since when, and the bytes so far. The cloud redirector adds a
//! session when it splices it and removes it when the splice ends; ending one here cancels
//! its splice and records who ended it, which its audit row then says. The table also
//! remembers, for a while, why it ended each session it ended, for the console that asks
//! afterwards (its end-to-end channel, which the SP cannot write into, only saw a cut).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::registry::Actor;
use crate::util::lock;

/// One spliced session.
pub struct LiveSession {
    pub session_id: String,
    pub tenant: String,
    pub operator: String,
    pub service: String,
    /// The console's address (behind a gateway, the one its PROXY header named).
    pub console_addr: String,
    /// The cloud gateway the console came through, if any.
    pub gateway: Option<String>,
    pub started_at: u64,
    /// Bytes so far, console to tenant and back (the splice's live counters).
    pub to_tenant: Arc<AtomicU64>,
    pub from_tenant: Arc<AtomicU64>,
    /// Cancels the splice.
    pub cancel: CancellationToken,
    ended_by: Mutex<Option<Actor>>,
}

/// A session as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub tenant: String,
    pub operator: String,
    pub service: String,
    pub console_addr: String,
    /// `direct`, or `gateway ADDR`.
    pub route: String,
    pub started_at: u64,
    pub bytes_to_tenant: u64,
    pub bytes_from_tenant: u64,
}

/// The live sessions of one SP, by session id.
#[derive(Default)]
pub struct SessionTable {
    sessions: Mutex<HashMap<String, Arc<LiveSession>>>,
    ended: Mutex<RecentEnds>,
}

/// How long the SP remembers why it ended a session: a console asks within a second or two.
pub const END_REASON_KEPT: Duration = Duration::from_secs(600);
/// At most this many reasons are kept (the oldest go first): a few hundred bytes each.
const END_REASONS_MAX: usize = 4096;

/// Why the SP ended recent sessions, for the console that opened each.
#[derive(Default)]
struct RecentEnds {
    by_id: HashMap<String, EndReason>,
    /// Session ids, oldest end first.
    order: VecDeque<(Instant, String)>,
}

struct EndReason {
    operator: String,
    reason: String,
}

impl RecentEnds {
    fn add(&mut self, now: Instant, session_id: &str, reason: EndReason) {
        self.expire(now);
        while self.order.len() >= END_REASONS_MAX {
            self.pop_oldest();
        }
        if self.by_id.insert(session_id.to_string(), reason).is_none() {
            self.order.push_back((now, session_id.to_string()));
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= END_REASON_KEPT)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.by_id.remove(&id);
        }
    }
}

/// A session's place in the table; dropping it removes the session.
pub struct Listed<'a> {
    table: &'a SessionTable,
    session: Arc<LiveSession>,
}

impl Listed<'_> {
    /// Who ended the session from outside, if someone did.
    pub fn ended_by(&self) -> Option<Actor> {
        lock(&self.session.ended_by).clone()
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        lock(&self.table.sessions).remove(&self.session.session_id);
    }
}

impl LiveSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session_id: String,
        tenant: String,
        operator: String,
        service: String,
        console_addr: String,
        gateway: Option<String>,
        counters: (Arc<AtomicU64>, Arc<AtomicU64>),
        cancel: CancellationToken,
    ) -> Self {
        LiveSession {
            session_id,
            tenant,
            operator,
            service,
            console_addr,
            gateway,
            started_at: crate::util::now_unix_secs(),
            to_tenant: counters.0,
            from_tenant: counters.1,
            cancel,
            ended_by: Mutex::new(None),
        }
    }

    fn view(&self) -> SessionView {
        SessionView {
            session_id: self.session_id.clone(),
            tenant: self.tenant.clone(),
            operator: self.operator.clone(),
            service: self.service.clone(),
            console_addr: self.console_addr.clone(),
            route: match &self.gateway {
                Some(gateway) => format!("gateway {gateway}"),
                None => "direct".to_string(),
            },
            started_at: self.started_at,
            bytes_to_tenant: self.to_tenant.load(Ordering::Relaxed),
            bytes_from_tenant: self.from_tenant.load(Ordering::Relaxed),
        }
    }
}

impl SessionTable {
    /// Lists a session until the returned guard is dropped.
    pub fn insert(&self, session: LiveSession) -> Listed<'_> {
        let session = Arc::new(session);
        lock(&self.sessions).insert(session.session_id.clone(), session.clone());
        Listed {
            table: self,
            session,
        }
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = lock(&self.sessions).values().map(|s| s.view()).collect();
        views.sort_by(|a, b| (a.started_at, &a.session_id).cmp(&(b.started_at, &b.session_id)));
        views
    }

    pub fn get(&self, session_id: &str) -> Option<SessionView> {
        lock(&self.sessions).get(session_id).map(|s| s.view())
    }

    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends a live session on behalf of `by`. `false` when there is no such session. The
    /// reason is recorded before the splice is cancelled, so a console that sees its channel
    /// cut and then asks [`SessionTable::end_reason`] finds it.
    pub fn end(&self, session_id: &str, by: Actor) -> bool {
        let Some(session) = lock(&self.sessions).get(session_id).cloned() else {
            return false;
        };
        let reason = EndReason {
            operator: session.operator.clone(),
            reason: format!("the SP's administrator ended this session ({by})"),
        };
        lock(&self.ended).add(Instant::now(), session_id, reason);
        *lock(&session.ended_by) = Some(by);
        session.cancel.cancel();
        true
    }

    /// Why the SP ended `session_id`, if it did within [`END_REASON_KEPT`], told only to the
    /// operator who opened it (to anyone else the session is unknown).
    pub fn end_reason(&self, session_id: &str, operator: &str) -> Option<String> {
        let mut ended = lock(&self.ended);
        ended.expire(Instant::now());
        ended
            .by_id
            .get(session_id)
            .filter(|end| end.operator == operator)
            .map(|end| end.reason.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_while_its_guard_lives_and_ending_it_names_the_actor() {
        let table = SessionTable::default();
        let cancel = CancellationToken::new();
        let counters = (Arc::new(AtomicU64::new(5)), Arc::new(AtomicU64::new(7)));
        let listed = table.insert(LiveSession::new(
            "s1".into(),
            "acme".into(),
            "alice".into(),
            "backup".into(),
            "10.0.0.1:5".into(),
            Some("10.0.0.9".into()),
            counters,
            cancel.clone(),
        ));
        let view = table.get("s1").expect("listed");
        assert_eq!(view.route, "gateway 10.0.0.9");
        assert_eq!((view.bytes_to_tenant, view.bytes_from_tenant), (5, 7));
        assert!(!table.end("nope", Actor::Local));
        assert!(table.end("s1", Actor::AdminToken("ops".into())));
        assert!(cancel.is_cancelled());
        assert_eq!(listed.ended_by(), Some(Actor::AdminToken("ops".into())));
        drop(listed);
        assert!(table.is_empty());
        // The reason outlives the session, for its own operator only.
        assert_eq!(
            table.end_reason("s1", "alice").as_deref(),
            Some("the SP's administrator ended this session (admin token ops)")
        );
        assert_eq!(table.end_reason("s1", "mallory"), None);
        assert_eq!(table.end_reason("nope", "alice"), None);
    }

    #[test]
    fn end_reasons_expire_and_are_capped() {
        let reason = || EndReason {
            operator: "alice".into(),
            reason: "r".into(),
        };
        let mut ends = RecentEnds::default();
        let t0 = Instant::now();
        ends.add(t0, "old", reason());
        ends.add(t0 + Duration::from_secs(1), "newer", reason());
        ends.expire(t0 + END_REASON_KEPT);
        assert!(!ends.by_id.contains_key("old"));
        assert!(ends.by_id.contains_key("newer"));
        let later = t0 + Duration::from_secs(2);
        for i in 0..END_REASONS_MAX + 10 {
            ends.add(later, &format!("s{i}"), reason());
        }
        assert_eq!(ends.by_id.len(), END_REASONS_MAX);
        assert_eq!(ends.order.len(), END_REASONS_MAX);
        assert!(!ends.by_id.contains_key("s0"), "the oldest went first");
        assert!(
            ends.by_id
                .contains_key(&format!("s{}", END_REASONS_MAX + 9))
        );
    }
}
