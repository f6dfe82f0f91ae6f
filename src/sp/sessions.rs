//! The sessions being relayed now, as the admin API lists and ends them: who opened which
//! tenant's service from where, since when, and the bytes so far. The cloud redirector adds a
//! session when it splices it and removes it when the splice ends; ending one here cancels
//! its splice and records who ended it, which its audit row then says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

    /// Ends a live session on behalf of `by`. `false` when there is no such session.
    pub fn end(&self, session_id: &str, by: Actor) -> bool {
        let Some(session) = lock(&self.sessions).get(session_id).cloned() else {
            return false;
        };
        *lock(&session.ended_by) = Some(by);
        session.cancel.cancel();
        true
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
    }
}
