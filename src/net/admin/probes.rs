//! `/metrics` of the engines without an API: a cloud gateway (`rac gateway --admin`) and a
//! tenant redirector (`[admin] listen` in its config). Their figures are the counters they
//! keep anyway, read at each scrape (and the redirector's session metrics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Kind, Snapshot, TenantSessionMetrics};
use crate::net::gateway::GatewayStats;
use crate::net::tenant_redirector::AgentState;

/// A gateway's metrics text.
pub fn gateway_metrics(stats: &GatewayStats) -> String {
    let mut m = Snapshot::new();
    let counters = [
        (
            "rac_gateway_accepted",
            "Connections accepted, including those closed at once for being over the cap",
            stats.accepted(),
        ),
        (
            "rac_gateway_refused_over_cap",
            "Connections closed at once because max_connections were open",
            stats.refused_over_cap(),
        ),
        (
            "rac_gateway_no_backend",
            "Connections closed because no backend could be reached",
            stats.no_backend(),
        ),
        (
            "rac_gateway_silent_evicted",
            "Silent connections closed because their source held too many",
            stats.silent_evicted(),
        ),
        (
            "rac_gateway_first_data_timeouts",
            "Connections closed because the client sent nothing in time",
            stats.first_data_timeouts(),
        ),
        (
            "rac_gateway_proxy_header_refused",
            "Connections closed because the client sent a PROXY header itself",
            stats.proxy_header_refused(),
        ),
        (
            "rac_gateway_backend_ended_first",
            "Connections closed because the backend ended before the client spoke",
            stats.backend_ended_first(),
        ),
    ];
    for (name, help, value) in counters {
        m.add(name, help, Kind::Counter, value as f64);
    }
    m.add(
        "rac_gateway_connections_active",
        "Connections being connected or forwarded now",
        Kind::Gauge,
        stats.active() as f64,
    );
    m.finish()
}

/// What a tenant redirector's metrics count, from its state as it changes.
#[derive(Debug, Default)]
pub struct TenantFigures {
    online: AtomicU64,
    connects: AtomicU64,
    drops: AtomicU64,
}

impl TenantFigures {
    /// Follows `state` until it closes or `shutdown` fires.
    pub async fn follow(
        self: Arc<Self>,
        mut state: watch::Receiver<AgentState>,
        shutdown: CancellationToken,
    ) {
        loop {
            let online = matches!(*state.borrow_and_update(), AgentState::Online { .. });
            let was = self.online.swap(online as u64, Ordering::Relaxed) == 1;
            match (was, online) {
                (false, true) => self.connects.fetch_add(1, Ordering::Relaxed),
                (true, false) => self.drops.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// The metrics text; `consent` is the provider-access consent now, `sessions` the
    /// redirector's session metrics (`RedirectorConfig::metrics`).
    pub fn render(&self, consent: bool, sessions: &TenantSessionMetrics) -> String {
        let mut m = Snapshot::new();
        m.add(
            "rac_tenant_connected",
            "1 while the control channel to the SP is up",
            Kind::Gauge,
            self.online.load(Ordering::Relaxed) as f64,
        );
        m.add(
            "rac_tenant_connects",
            "Control channels established",
            Kind::Counter,
            self.connects.load(Ordering::Relaxed) as f64,
        );
        m.add(
            "rac_tenant_disconnects",
            "Control channels lost",
            Kind::Counter,
            self.drops.load(Ordering::Relaxed) as f64,
        );
        m.add(
            "rac_tenant_provider_access",
            "1 while the tenant consents to provider sessions",
            Kind::Gauge,
            consent as u8 as f64,
        );
        m.add_sessions(sessions);
        m.finish()
    }
}
