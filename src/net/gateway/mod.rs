//! The cloud gateway: a TCP forwarder at the SP's edge.
//!
//! Clients (consoles, tenant redirectors) connect to a gateway; it picks a healthy SP backend
//! with the fewest open connections and splices the two sockets. Bytes pass through untouched:
//! TLS runs end to end between the client and the SP, so the gateway holds no key and never looks
//! at the payload. Optionally it prefixes each backend connection with a PROXY protocol v2 header
//! (see [`super::proxy_protocol`]) carrying the real client address.
//!
//! Memory per forwarded connection: two [`BUFFER_SIZE`] (16 KiB) buffers, one per direction,
//! plus the connection task (its future measured 1.3 KiB) and two socket registrations: about
//! 34 KiB of user space in all; the kernel's socket buffers come on top and are the OS's to
//! tune. 16 KiB holds one full TLS record, so a record usually moves with one read and one
//! write, at well under a tenth of the ~512 KB per connection a common commercial gateway
//! budgets. A direction that streams (a read fills its buffer) moves to a
//! [`BULK_BUFFER_SIZE`] buffer, and back to the small one after [`BULK_IDLE`] without data:
//! a connection holds up to 2 × 128 KiB only while it streams.
//!
//! Silent connections (a client that has not sent a byte yet) are what an outsider can open
//! for free, so they are kept on a short leash: each must send its first bytes within
//! [`GatewayConfig::first_data_timeout`] (a real client sends its TLS ClientHello at once),
//! and one source (an IPv4 address, or an IPv6 /64) holds at most
//! [`GatewayConfig::max_silent_per_source`] of them: a new one closes that source's oldest,
//! so a flood from one place costs others nothing. When the SP ends a connection before the
//! client has said anything, both sides close at once rather than wait for the client.
//!
//! The gateway forwards bytes, and it alone may add a PROXY protocol header: a client stream
//! that itself begins with a PROXY header (the v2 signature or v1 `PROXY `) is closed, so a
//! client can never forge the source address the SP believes.
//!
//! This file holds the configuration, the counters and the accept loop; `forward.rs` serves
//! one connection, `backends.rs` keeps the SP backends' health and load, `silent.rs` the
//! silent connections per source.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod backends;
mod forward;
mod silent;

use backends::{Pool, health_loop};
use forward::serve;
use silent::{SilentTable, WarnSummary};

use super::acceptor::Acceptor;

/// Size of each of the two copy buffers of a forwarded connection.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// A direction whose read fills [`BUFFER_SIZE`] is streaming: it switches to a buffer this big,
/// so bulk transfers take a quarter of the system calls and wake-ups per byte while idle and
/// interactive connections keep the small one.
pub const BULK_BUFFER_SIZE: usize = 128 * 1024;
/// A streaming direction that has read nothing for this long goes back to [`BUFFER_SIZE`].
pub const BULK_IDLE: Duration = Duration::from_secs(1);

/// Default of [`GatewayConfig::max_silent_per_source`].
pub const DEFAULT_MAX_SILENT_PER_SOURCE: usize = 32;
/// Default of [`GatewayConfig::first_data_timeout`], in seconds.
pub const DEFAULT_FIRST_DATA_TIMEOUT_SECS: u64 = 3;
/// Default of [`GatewayConfig::idle_timeout`], in seconds: well above the SP's tenant
/// heartbeat (30 s) and dead-peer limit (95 s), so the SP notices a dead peer first and a
/// healthy control connection never idles out here.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 600;

/// How a gateway runs. Build it with [`GatewayConfig::new`] and adjust fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The SP ports this gateway forwards to.
    pub backends: Vec<SocketAddr>,
    /// Most connections forwarded at once; connections over it are accepted and closed at once.
    pub max_connections: usize,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A client that has sent nothing this long after connecting is closed.
    pub first_data_timeout: Duration,
    /// Most connections one source (IPv4 address or IPv6 /64) may hold open without having
    /// sent data; one more closes that source's oldest silent connection.
    pub max_silent_per_source: usize,
    /// Pause between two rounds of backend health checks.
    pub health_interval: Duration,
    /// Limit for a TCP connect to a backend, by a health check or for a client.
    pub connect_timeout: Duration,
    /// After shutdown, how long open connections may go on before they are cut.
    pub drain_timeout: Duration,
    /// Prefix every backend connection with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
}

impl GatewayConfig {
    /// A configuration with the defaults for everything but the backends.
    pub fn new(backends: Vec<SocketAddr>) -> Self {
        Self {
            backends,
            max_connections: 4096,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            first_data_timeout: Duration::from_secs(DEFAULT_FIRST_DATA_TIMEOUT_SECS),
            max_silent_per_source: DEFAULT_MAX_SILENT_PER_SOURCE,
            health_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(30),
            proxy_protocol: false,
        }
    }

    /// Checks the configuration, with a message that names the offending setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.backends.is_empty() {
            bail!("the gateway needs at least one backend");
        }
        for (i, addr) in self.backends.iter().enumerate() {
            if self.backends[..i].contains(addr) {
                bail!("backend {addr} is listed twice");
            }
            if addr.port() == 0 {
                bail!("backend {addr} has no port");
            }
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        if self.max_silent_per_source == 0 {
            bail!("max_silent_per_source must be at least 1");
        }
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
            ("first_data_timeout", self.first_data_timeout),
            ("health_interval", self.health_interval),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                bail!("{name} must be greater than zero");
            }
        }
        Ok(())
    }
}

/// Counters of a running gateway, shared with the caller of [`run_with_stats`].
#[derive(Debug, Default)]
pub struct GatewayStats {
    accepted: AtomicU64,
    refused_over_cap: AtomicU64,
    no_backend: AtomicU64,
    silent_evicted: AtomicU64,
    first_data_timeouts: AtomicU64,
    proxy_header_refused: AtomicU64,
    backend_ended_first: AtomicU64,
    active: AtomicUsize,
}

impl GatewayStats {
    /// Connections accepted, including those closed at once for being over the cap.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max_connections` were already open.
    pub fn refused_over_cap(&self) -> u64 {
        self.refused_over_cap.load(Ordering::Relaxed)
    }

    /// Connections closed because no backend could be reached.
    pub fn no_backend(&self) -> u64 {
        self.no_backend.load(Ordering::Relaxed)
    }

    /// Silent connections closed because their source opened more than
    /// `max_silent_per_source`.
    pub fn silent_evicted(&self) -> u64 {
        self.silent_evicted.load(Ordering::Relaxed)
    }

    /// Connections closed because the client sent nothing within `first_data_timeout`.
    pub fn first_data_timeouts(&self) -> u64 {
        self.first_data_timeouts.load(Ordering::Relaxed)
    }

    /// Connections closed because the client's stream began with a PROXY header.
    pub fn proxy_header_refused(&self) -> u64 {
        self.proxy_header_refused.load(Ordering::Relaxed)
    }

    /// Connections closed on both sides because the backend ended before the client sent data.
    pub fn backend_ended_first(&self) -> u64 {
        self.backend_ended_first.load(Ordering::Relaxed)
    }

    /// Connections open now (being connected or forwarded).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Runs a gateway on `listener` until `shutdown` is cancelled, then drains: stops accepting,
/// lets open connections finish for up to `drain_timeout`, cuts the rest and returns.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_stats(config, listener, shutdown, Arc::default()).await
}

/// [`run`], updating `stats` as it goes (for tests and metrics).
pub async fn run_with_stats(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    stats: Arc<GatewayStats>,
) -> anyhow::Result<()> {
    config.validate().context("invalid gateway configuration")?;
    let local = listener
        .local_addr()
        .context("gateway listener has no local address")?;
    info!(%local, backends = ?config.backends, proxy_protocol = config.proxy_protocol, "gateway listening");

    let pool = Arc::new(Pool::new(&config.backends));
    let mut health = JoinSet::new();
    health.spawn(health_loop(
        pool.clone(),
        config.health_interval,
        config.connect_timeout,
        shutdown.clone(),
    ));

    let shared = Arc::new(GatewayState {
        pool,
        stats,
        connect_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        first_data_timeout: config.first_data_timeout,
        proxy_protocol: config.proxy_protocol,
        silent: SilentTable::new(config.max_silent_per_source),
        evictions_log: WarnSummary::default(),
        proxy_log: WarnSummary::default(),
    });
    // Over the cap we accept and close at once rather than stop accepting: a client left in the
    // kernel's backlog sees a completed connect and then silence until its handshake times out,
    // while a prompt close lets a gateway pool client fail over to the next gateway straight
    // away. The accept loop also keeps draining the backlog, so stale connects do not pile up.
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut conns = JoinSet::new();
    let mut listener = Acceptor::new("gateway", listener);

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = conns.join_next() => log_join(done),
            accepted = listener.next(&shutdown) => match accepted {
                Some((client, peer)) => {
                    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            conns.spawn(serve(client, peer, shared.clone(), permit));
                        }
                        Err(_) => {
                            shared.stats.refused_over_cap.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, "connection cap reached; closing new connection");
                            drop(client);
                        }
                    }
                }
                None => break,
            },
        }
    }

    // Closing the listener makes new connects fail instead of waiting in the backlog.
    drop(listener);
    health.shutdown().await;
    info!(open = conns.len(), drain_timeout = ?config.drain_timeout, "gateway draining");
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while let Some(done) = conns.join_next().await {
            log_join(done);
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            open = conns.len(),
            "drain timeout passed; closing the remaining connections"
        );
        conns.shutdown().await;
    }
    info!(%local, "gateway stopped");
    Ok(())
}

fn log_join(done: Result<(), JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        error!(error = %e, "gateway connection task panicked");
    }
}

/// What every connection task needs.
struct GatewayState {
    pool: Arc<Pool>,
    stats: Arc<GatewayStats>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    first_data_timeout: Duration,
    proxy_protocol: bool,
    silent: SilentTable,
    /// Silent connections closed over the per-source cap.
    evictions_log: WarnSummary,
    /// Client streams that began with a PROXY header.
    proxy_log: WarnSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], 9000 + p)))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::new(addrs(1))
            .validate()
            .expect("defaults validate");
    }

    #[test]
    fn validate_names_the_problem() {
        let cases: [(GatewayConfig, &str); 5] = [
            (GatewayConfig::new(vec![]), "at least one backend"),
            (
                GatewayConfig::new(vec![addrs(1)[0], addrs(1)[0]]),
                "listed twice",
            ),
            (
                GatewayConfig {
                    max_connections: 0,
                    ..GatewayConfig::new(addrs(1))
                },
                "max_connections",
            ),
            (
                GatewayConfig {
                    idle_timeout: Duration::ZERO,
                    ..GatewayConfig::new(addrs(1))
                },
                "idle_timeout",
            ),
            (
                GatewayConfig::new(vec![SocketAddr::from(([127, 0, 0, 1], 0))]),
                "no port",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().expect_err("invalid config");
            assert!(err.to_string().contains(needle), "{err:#} lacks {needle}");
        }
    }

    #[test]
    fn validate_names_the_new_limits() {
        let base = GatewayConfig::new(addrs(1));
        let zero_silent = GatewayConfig {
            max_silent_per_source: 0,
            ..base.clone()
        };
        let zero_first = GatewayConfig {
            first_data_timeout: Duration::ZERO,
            ..base
        };
        for (config, needle) in [
            (zero_silent, "max_silent_per_source"),
            (zero_first, "first_data_timeout"),
        ] {
            let err = config.validate().expect_err("invalid config");
            assert!(err.to_string().contains(needle), "{err:#} lacks {needle}");
        }
    }
}
