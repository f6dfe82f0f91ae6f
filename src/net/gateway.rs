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

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::proxy_protocol;

/// Size of each of the two copy buffers of a forwarded connection.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// A direction whose read fills [`BUFFER_SIZE`] is streaming: it switches to a buffer this big,
/// so bulk transfers take a quarter of the system calls and wake-ups per byte while idle and
/// interactive connections keep the small one.
pub const BULK_BUFFER_SIZE: usize = 128 * 1024;
/// A streaming direction that has read nothing for this long goes back to [`BUFFER_SIZE`].
pub const BULK_IDLE: Duration = Duration::from_secs(1);

/// Longest pause of the accept loop after repeated accept errors (such as running out of file
/// descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How a gateway runs. Build it with [`GatewayConfig::new`] and adjust fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The SP ports this gateway forwards to.
    pub backends: Vec<SocketAddr>,
    /// Most connections forwarded at once; connections over it are accepted and closed at once.
    pub max_connections: usize,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
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
            idle_timeout: Duration::from_secs(600),
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
        for (name, value) in [
            ("idle_timeout", self.idle_timeout),
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

    let shared = Arc::new(Shared {
        pool,
        stats,
        connect_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        proxy_protocol: config.proxy_protocol,
    });
    // Over the cap we accept and close at once rather than stop accepting: a client left in the
    // kernel's backlog sees a completed connect and then silence until its handshake times out,
    // while a prompt close lets a gateway pool client fail over to the next gateway straight
    // away. The accept loop also keeps draining the backlog, so stale connects do not pile up.
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut conns = JoinSet::new();
    let mut backoff = Duration::ZERO;

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = conns.join_next() => log_join(done),
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    backoff = Duration::ZERO;
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
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    warn!(error = %e, ?backoff, "gateway accept failed; pausing");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
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
struct Shared {
    pool: Arc<Pool>,
    stats: Arc<GatewayStats>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    proxy_protocol: bool,
}

/// One SP backend and what the gateway knows about it.
#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    up: AtomicBool,
    active: AtomicUsize,
}

impl Backend {
    /// Records the backend's state; logs only when it changes.
    fn set_up(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                info!(backend = %self.addr, "backend is up");
            } else {
                warn!(backend = %self.addr, reason = why, "backend is down");
            }
        }
    }
}

/// The backends, and the rotating start for breaking ties between equally loaded ones.
#[derive(Debug)]
struct Pool {
    backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Pool {
    fn new(addrs: &[SocketAddr]) -> Self {
        Self {
            // Start optimistic: the first health round runs at once and corrects this, and a
            // failed connect marks a backend down straight away.
            backends: addrs
                .iter()
                .map(|&addr| {
                    Arc::new(Backend {
                        addr,
                        up: AtomicBool::new(true),
                        active: AtomicUsize::new(0),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The healthy backend with the fewest open connections, not in `tried`. Ties go round
    /// robin so that short connections spread over equally idle backends.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, usize)> = None;
        for i in (0..n).map(|k| (start + k) % n) {
            let backend = &self.backends[i];
            if tried.contains(&i) || !backend.up.load(Ordering::Relaxed) {
                continue;
            }
            let load = backend.active.load(Ordering::Relaxed);
            if best.is_none_or(|(_, best_load)| load < best_load) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Connects to a healthy backend, trying the next one whenever a connect fails.
    async fn connect(&self, connect_timeout: Duration) -> Option<(TcpStream, Lease)> {
        let mut tried = Vec::new();
        while let Some(i) = self.pick(&tried) {
            tried.push(i);
            let lease = Lease::new(self.backends[i].clone());
            let addr = lease.backend.addr;
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Some((stream, lease)),
                Ok(Err(e)) => lease.backend.set_up(false, &format!("connect failed: {e}")),
                Err(_) => lease.backend.set_up(false, "connect timed out"),
            }
        }
        None
    }
}

/// Counts one open connection against a backend for as long as it lives.
struct Lease {
    backend: Arc<Backend>,
}

impl Lease {
    fn new(backend: Arc<Backend>) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        Self { backend }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks every backend with a TCP connect once per `interval` until `shutdown`.
async fn health_loop(
    pool: Arc<Pool>,
    interval: Duration,
    connect_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut checks = JoinSet::new();
        for backend in &pool.backends {
            let backend = backend.clone();
            checks.spawn(async move {
                match tokio::time::timeout(connect_timeout, TcpStream::connect(backend.addr)).await
                {
                    Ok(Ok(_probe)) => backend.set_up(true, "health check passed"),
                    Ok(Err(e)) => backend.set_up(false, &format!("health check failed: {e}")),
                    Err(_) => backend.set_up(false, "health check timed out"),
                }
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { while checks.join_next().await.is_some() {} } => {}
        }
    }
}

/// Which side of a forwarded connection failed.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("client side: {0}")]
    Client(io::Error),
    #[error("backend side: {0}")]
    Backend(io::Error),
}

/// Serves one client connection: picks a backend, sends the PROXY header if configured, then
/// forwards until both directions end, an error, or the idle timeout.
async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    shared.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&shared.stats);
    let Some((backend, lease)) = shared.pool.connect(shared.connect_timeout).await else {
        shared.stats.no_backend.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, "no healthy backend; closing client connection");
        return;
    };
    let backend_addr = lease.backend.addr;
    match forward(client, peer, backend, &shared).await {
        Ok(Ended::Closed) => debug!(%peer, backend = %backend_addr, "connection closed"),
        Ok(Ended::Idle) => debug!(%peer, backend = %backend_addr, "idle connection closed"),
        Err(e) => {
            debug!(%peer, backend = %backend_addr, error = %e, "connection ended with an error")
        }
    }
}

struct ActiveGuard<'a>(&'a GatewayStats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Ended {
    Closed,
    Idle,
}

async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    mut backend: TcpStream,
    shared: &Shared,
) -> Result<Ended, ForwardError> {
    // Interactive sessions go through here: do not hold small writes back.
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    if shared.proxy_protocol {
        let local = client.local_addr().map_err(ForwardError::Client)?;
        let header = proxy_protocol::encode_v2(peer, local);
        backend
            .write_all(&header)
            .await
            .map_err(ForwardError::Backend)?;
    }

    let activity = Activity::new();
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let upstream = pump(
        &mut client_read,
        &mut backend_write,
        &activity,
        ForwardError::Client,
        ForwardError::Backend,
    );
    let downstream = pump(
        &mut backend_read,
        &mut client_write,
        &activity,
        ForwardError::Backend,
        ForwardError::Client,
    );
    tokio::select! {
        both = async { tokio::try_join!(upstream, downstream) } => both.map(|_| Ended::Closed),
        () = activity.idle(shared.idle_timeout) => Ok(Ended::Idle),
    }
}

/// Copies one direction until EOF, then half-closes the writer so the other side sees the EOF
/// while the opposite direction keeps flowing.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    activity: &Activity,
    read_err: fn(io::Error) -> ForwardError,
    write_err: fn(io::Error) -> ForwardError,
) -> Result<u64, ForwardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut total = 0u64;
    loop {
        let n = if buf.len() > BUFFER_SIZE {
            // `read` is cancel-safe: a timed-out read has taken nothing from the socket.
            match tokio::time::timeout(BULK_IDLE, reader.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    buf = vec![0u8; BUFFER_SIZE];
                    continue;
                }
            }
        } else {
            reader.read(&mut buf).await
        }
        .map_err(read_err)?;
        activity.touch();
        if n == 0 {
            writer.shutdown().await.map_err(write_err)?;
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await.map_err(write_err)?;
        activity.touch();
        total += n as u64;
        if n == buf.len() && n < BULK_BUFFER_SIZE {
            buf = vec![0u8; BULK_BUFFER_SIZE];
        }
    }
}

/// When a connection last moved a byte, shared by its two directions (same task, so relaxed
/// atomics are plenty).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
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
    fn pick_prefers_fewest_connections_and_skips_down_and_tried() {
        let pool = Pool::new(&addrs(3));
        pool.backends[0].active.store(2, Ordering::Relaxed);
        pool.backends[1].active.store(1, Ordering::Relaxed);
        pool.backends[2].active.store(3, Ordering::Relaxed);
        assert_eq!(pool.pick(&[]), Some(1));
        assert_eq!(pool.pick(&[1]), Some(0));
        pool.backends[0].up.store(false, Ordering::Relaxed);
        assert_eq!(pool.pick(&[1]), Some(2));
        assert_eq!(pool.pick(&[1, 2]), None);
    }

    #[test]
    fn pick_spreads_ties() {
        let pool = Pool::new(&addrs(3));
        let mut seen = [0usize; 3];
        for _ in 0..30 {
            seen[pool.pick(&[]).expect("a backend is up")] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }

    #[test]
    fn lease_counts_open_connections() {
        let pool = Pool::new(&addrs(1));
        let lease = Lease::new(pool.backends[0].clone());
        assert_eq!(pool.backends[0].active.load(Ordering::Relaxed), 1);
        drop(lease);
        assert_eq!(pool.backends[0].active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_activity() {
        let activity = Activity::new();
        tokio::time::sleep(Duration::from_millis(60)).await;
        activity.touch();
        let touched = Instant::now();
        activity.idle(Duration::from_millis(100)).await;
        // `touch` keeps whole milliseconds, so the deadline may come up to 1 ms early.
        assert!(touched.elapsed() >= Duration::from_millis(99));
        assert!(activity.start.elapsed() >= Duration::from_millis(159));
    }
}
