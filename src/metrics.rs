//! Prometheus metrics (`/metrics` on an admin listener). Each engine owns its registry (no
//! global one), so two engines in one process (the lab, the tests) count apart. Labels take a
//! few fixed values only (no tenant or operator names: per-tenant figures are the admin
//! API's). The hot paths only add to atomics: every labelled counter is looked up once, here,
//! and kept as a field; bytes are counted when a session ends, not as they pass.

use prometheus_client::encoding::text::encode_registry as encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of the metrics text: Prometheus' text format 0.0.4, which every scraper
/// and `promtool check metrics` read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`;
/// Prometheus' text format wants the family named as its samples, and has no `# EOF` or
/// `# UNIT`. Renames the `# HELP` and `# TYPE` lines of counters, drops the rest.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// One label with a fixed value.
type Label = [(&'static str, &'static str); 1];

/// A counter family with a fixed set of label values, each looked up once.
struct Fixed {
    family: Family<Label, Counter>,
}

impl Fixed {
    fn new() -> Self {
        Fixed {
            family: Family::default(),
        }
    }
    fn get(&self, key: &'static str, value: &'static str) -> Counter {
        self.family.get_or_create_owned(&[(key, value)])
    }
}

/// `rac_build_info{version}`: always 1, the version in its label (a gauge, which every
/// Prometheus parser reads).
fn register_build_info(registry: &mut Registry) {
    let info = Family::<Label, Gauge>::default();
    info.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    registry.register("rac_build_info", "The running rac's version", info);
}

/// Histogram buckets for durations from 1 ms to about 33 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

/// How a control connection's admission ended, as its label says it.
#[derive(Debug, Clone, Copy)]
pub enum ControlResult {
    Admitted,
    AuthFailed,
    TenantDisabled,
    TenantKeyChanged,
    Other,
}

/// How a session ended (or why it never started), as its label says it.
#[derive(Debug, Clone, Copy)]
pub enum SessionEnd {
    /// Refused or failed before `ready` (access, offline, timeout, rejected by the tenant).
    Refused,
    Closed,
    ClosedWithoutNotify,
    Failed,
    SpShutdown,
    TenantEnded,
    TokenRevoked,
    EndedByAdmin,
}

/// Why a connection was given up before its hello.
#[derive(Debug, Clone, Copy)]
pub enum HandshakeFailure {
    /// The TLS handshake itself failed (wrong CA, not TLS, a protocol error).
    Tls,
    /// Handshake and hello did not finish within `handshake_timeout_secs`.
    Timeout,
    /// Nothing within `first_byte_timeout_secs`, or closed before saying anything.
    Silent,
    /// A PROXY header that was malformed or came from an untrusted address.
    Proxy,
    /// A first frame that was not a valid hello.
    BadHello,
}

/// Why a connection or a login was refused to protect the SP.
#[derive(Debug, Clone, Copy)]
pub enum Shed {
    /// Every place for connections in their handshake was held.
    AdmissionFull,
    /// Displaced by newer connections while silent.
    Displaced,
    /// Too many failed logins from the source.
    LoginRateLimited,
    /// Every password-check slot was busy.
    LoginBusy,
}

/// The SP's metrics.
pub struct SpMetrics {
    registry: Registry,
    /// Set by the cloud redirector at each registry poll (every 500 ms by default).
    pub tenants_connected: Gauge,
    pub sessions_active: Gauge,
    control: [Counter; 5],
    sessions: [Counter; 8],
    pub session_setup_seconds: Histogram,
    to_tenant_bytes: Counter,
    from_tenant_bytes: Counter,
    handshake_failures: [Counter; 5],
    logins_ok: Counter,
    logins_failed: Counter,
    shed: [Counter; 4],
    pub heartbeat_rtt_seconds: Histogram,
    pub registry_write_seconds: Histogram,
}

impl std::fmt::Debug for SpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpMetrics")
    }
}

impl Default for SpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SpMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        register_build_info(&mut registry);
        let tenants_connected = Gauge::default();
        registry.register(
            "rac_sp_tenants_connected",
            "Tenants with a live control connection",
            tenants_connected.clone(),
        );
        let control = Fixed::new();
        let control_counters = [
            "admitted",
            "auth_failed",
            "tenant_disabled",
            "tenant_key_changed",
            "other",
        ]
        .map(|v| control.get("result", v));
        registry.register(
            "rac_sp_control_connections",
            "Tenant control connections by the result of their admission",
            control.family,
        );
        let sessions_active = Gauge::default();
        registry.register(
            "rac_sp_sessions_active",
            "Console sessions being relayed now",
            sessions_active.clone(),
        );
        let sessions = Fixed::new();
        let session_counters = [
            "refused",
            "closed",
            "closed_without_notify",
            "failed",
            "sp_shutdown",
            "tenant_ended",
            "token_revoked",
            "ended_by_admin",
        ]
        .map(|v| sessions.get("outcome", v));
        registry.register(
            "rac_sp_sessions",
            "Console sessions by how they ended (refused: never reached ready)",
            sessions.family,
        );
        let session_setup_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "rac_sp_session_setup_seconds",
            "From a console's session hello to ready",
            session_setup_seconds.clone(),
        );
        let bytes = Fixed::new();
        let to_tenant_bytes = bytes.get("direction", "to_tenant");
        let from_tenant_bytes = bytes.get("direction", "from_tenant");
        registry.register(
            "rac_sp_relayed_bytes",
            "Bytes relayed by ended sessions, by direction",
            bytes.family,
        );
        let handshakes = Fixed::new();
        let handshake_failures =
            ["tls", "timeout", "silent", "proxy", "bad_hello"].map(|v| handshakes.get("reason", v));
        registry.register(
            "rac_sp_handshake_failures",
            "Connections given up before their hello, by reason",
            handshakes.family,
        );
        let logins = Fixed::new();
        let logins_ok = logins.get("result", "ok");
        let logins_failed = logins.get("result", "failed");
        registry.register(
            "rac_sp_logins",
            "Operator password logins by result (refused ones are in rac_sp_shed)",
            logins.family,
        );
        let shed = Fixed::new();
        let shed_counters = [
            "admission_full",
            "displaced",
            "login_rate_limited",
            "login_busy",
        ]
        .map(|v| shed.get("reason", v));
        registry.register(
            "rac_sp_shed",
            "Connections and logins refused to protect the SP, by reason",
            shed.family,
        );
        let heartbeat_rtt_seconds = Histogram::new(seconds_buckets());
        registry.register(
            "rac_sp_heartbeat_rtt_seconds",
            "Heartbeat round trips of tenant control connections",
            heartbeat_rtt_seconds.clone(),
        );
        let registry_write_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "rac_sp_registry_write_seconds",
            "Registry writes on the session and login paths, each a synced commit",
            registry_write_seconds.clone(),
        );
        SpMetrics {
            registry,
            tenants_connected,
            sessions_active,
            control: control_counters,
            sessions: session_counters,
            session_setup_seconds,
            to_tenant_bytes,
            from_tenant_bytes,
            handshake_failures,
            logins_ok,
            logins_failed,
            shed: shed_counters,
            heartbeat_rtt_seconds,
            registry_write_seconds,
        }
    }

    pub fn control(&self, result: ControlResult) {
        self.control[result as usize].inc();
    }

    pub fn session_end(&self, end: SessionEnd) {
        self.sessions[end as usize].inc();
    }

    /// A session's bytes, once, when it ends.
    pub fn relayed(&self, to_tenant: u64, from_tenant: u64) {
        self.to_tenant_bytes.inc_by(to_tenant);
        self.from_tenant_bytes.inc_by(from_tenant);
    }

    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].inc();
    }

    pub fn login(&self, ok: bool) {
        if ok {
            self.logins_ok.inc();
        } else {
            self.logins_failed.inc();
        }
    }

    pub fn shed(&self, why: Shed) {
        self.shed[why as usize].inc();
    }

    /// The text Prometheus scrapes ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        to_prometheus_text(&text)
    }
}

/// How a session ended at a tenant redirector (or why it never started), as its label
/// says it.
#[derive(Debug, Clone, Copy)]
pub enum TenantSessionEnd {
    /// Answered with `reject` (grant refused, at the session cap, no consent, no such service).
    Refused,
    /// Granted but never carried: the data connection, `ready`, the end-to-end handshake or
    /// the local service failed.
    Failed,
    /// Carried, and both sides finished.
    Closed,
    /// Carried, then cut: a reset, a truncated channel (the SP or the console cut it).
    Cut,
    /// Ended by the tenant: consent withdrawn, or the drain at shutdown ran out.
    Withdrawn,
}

/// A tenant redirector's session metrics, on its `[admin]` listener beside
/// [`Snapshot`]'s figures: sessions relayed now, sessions by outcome, bytes by direction
/// (counted when each session ends).
pub struct TenantSessionMetrics {
    registry: Registry,
    pub sessions_active: Gauge,
    sessions: [Counter; 5],
    to_service_bytes: Counter,
    from_service_bytes: Counter,
}

impl std::fmt::Debug for TenantSessionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantSessionMetrics")
    }
}

impl Default for TenantSessionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TenantSessionMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sessions_active = Gauge::default();
        registry.register(
            "rac_tenant_sessions_active",
            "Sessions relayed to a local service now",
            sessions_active.clone(),
        );
        let sessions = Fixed::new();
        let session_counters =
            ["refused", "failed", "closed", "cut", "withdrawn"].map(|v| sessions.get("outcome", v));
        registry.register(
            "rac_tenant_sessions",
            "Session requests from the SP by how they ended (refused: answered with reject)",
            sessions.family,
        );
        let bytes = Fixed::new();
        let to_service_bytes = bytes.get("direction", "to_service");
        let from_service_bytes = bytes.get("direction", "from_service");
        registry.register(
            "rac_tenant_relayed_bytes",
            "Bytes relayed by ended sessions between the console and the local service, by direction",
            bytes.family,
        );
        TenantSessionMetrics {
            registry,
            sessions_active,
            sessions: session_counters,
            to_service_bytes,
            from_service_bytes,
        }
    }

    pub fn session_end(&self, end: TenantSessionEnd) {
        self.sessions[end as usize].inc();
    }

    /// A session's bytes, once, when it ends.
    pub fn relayed(&self, to_service: u64, from_service: u64) {
        self.to_service_bytes.inc_by(to_service);
        self.from_service_bytes.inc_by(from_service);
    }
}

/// Metrics for engines whose figures are read from counters they keep anyway (the gateway,
/// the tenant redirector): the caller lists (name, help, kind, value) at each scrape.
pub struct Snapshot {
    text: String,
}

/// What a [`Snapshot`] figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Snapshot {
    /// A snapshot that starts with `rac_build_info`.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        register_build_info(&mut registry);
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &registry);
        Snapshot { text }
    }

    /// Adds one figure without labels.
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        use std::fmt::Write;
        // Written as OpenMetrics, like the registry's part; `finish` renames counters.
        let (kind, sample) = match kind {
            Kind::Counter => ("counter", format!("{name}_total")),
            Kind::Gauge => ("gauge", name.to_string()),
        };
        let _ = write!(
            self.text,
            "# HELP {name} {help}.\n# TYPE {name} {kind}\n{sample} {value}\n"
        );
    }

    /// Adds a tenant redirector's session metrics.
    pub fn add_sessions(&mut self, sessions: &TenantSessionMetrics) {
        // OpenMetrics too, its `# EOF` dropped by `finish`.
        let _ = encode(&mut self.text, &sessions.registry);
    }

    /// The text Prometheus scrapes ([`CONTENT_TYPE`]).
    pub fn finish(self) -> String {
        to_prometheus_text(&self.text)
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_reach_the_text_with_their_labels() {
        let m = SpMetrics::new();
        m.control(ControlResult::Admitted);
        m.session_end(SessionEnd::EndedByAdmin);
        m.relayed(10, 20);
        m.shed(Shed::LoginBusy);
        m.handshake_failed(HandshakeFailure::BadHello);
        let text = m.encode();
        for line in [
            "rac_sp_control_connections_total{result=\"admitted\"} 1",
            "rac_sp_sessions_total{outcome=\"ended_by_admin\"} 1",
            "rac_sp_relayed_bytes_total{direction=\"from_tenant\"} 20",
            "rac_sp_shed_total{reason=\"login_busy\"} 1",
            "rac_sp_handshake_failures_total{reason=\"bad_hello\"} 1",
            "rac_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            text.contains("# TYPE rac_sp_sessions_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let sessions = TenantSessionMetrics::new();
        sessions.session_end(TenantSessionEnd::Cut);
        sessions.relayed(5, 6);
        let mut snapshot = Snapshot::new();
        snapshot.add("rac_gateway_accepted", "Accepted", Kind::Counter, 3.0);
        snapshot.add_sessions(&sessions);
        let text = snapshot.finish();
        assert!(
            text.contains(
                "# TYPE rac_gateway_accepted_total counter\nrac_gateway_accepted_total 3\n"
            ),
            "{text}"
        );
        for line in [
            "# TYPE rac_tenant_sessions_total counter\n",
            "rac_tenant_sessions_total{outcome=\"cut\"} 1\n",
            "rac_tenant_relayed_bytes_total{direction=\"from_service\"} 6\n",
            "rac_tenant_sessions_active 0\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
    }
}
