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

mod backends;
mod silent;

use backends::{Pool, health_loop};
use silent::{Silent, SilentTable, WarnSummary};

use super::acceptor::Acceptor;
use super::proxy_protocol;

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
/// PROXY protocol v1 (text) starts with this.
const PROXY_V1_PREFIX: &[u8] = b"PROXY ";

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
    shared: Arc<GatewayState>,
    _permit: OwnedSemaphorePermit,
) {
    shared.stats.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&shared.stats);
    let first_data_deadline = Instant::now() + shared.first_data_timeout;
    let (mut silent, evicted) = shared.silent.register(peer.ip());
    if evicted {
        shared.stats.silent_evicted.fetch_add(1, Ordering::Relaxed);
        if let Some(closed) = shared.evictions_log.record(Instant::now()) {
            warn!(
                %peer,
                closed,
                cap = shared.silent.cap,
                "closed the oldest silent connections of sources over the per-source cap \
                 (this source and others, since the last such line)"
            );
        }
    }
    let connected = tokio::select! {
        connected = shared.pool.connect(shared.connect_timeout) => connected,
        () = silent.closes.cancelled() => {
            debug!(%peer, "silent connection closed: its source opened newer ones");
            return;
        }
    };
    let Some((backend, lease)) = connected else {
        shared.stats.no_backend.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, "no healthy backend; closing client connection");
        return;
    };
    let backend_addr = lease.backend.addr;
    let client = Client {
        stream: client,
        peer,
        first_data_deadline,
        silent: &mut silent,
    };
    match forward(client, backend, &shared).await {
        Ok(ended) => {
            ended.count(&shared.stats);
            debug!(%peer, backend = %backend_addr, "connection ended: {}", ended.describe());
        }
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

/// How a forwarded connection ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Both directions reached EOF.
    Closed,
    /// Nothing moved for `idle_timeout`.
    Idle,
    /// The client sent nothing within `first_data_timeout`.
    NoFirstData,
    /// A newer silent connection from the same source pushed this one out.
    Evicted,
    /// The client's stream began with a PROXY protocol header.
    ProxyHeader,
    /// The backend ended before the client sent anything: both sides closed at once.
    BackendEndedFirst,
}

impl Ended {
    fn describe(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Idle => "idle timeout",
            Ended::NoFirstData => "the client sent nothing in time",
            Ended::Evicted => "silent, and its source opened newer silent connections",
            Ended::ProxyHeader => "the client sent a PROXY header of its own",
            Ended::BackendEndedFirst => "the backend ended before the client sent anything",
        }
    }

    /// Counts the ends the stats keep. An eviction is counted where it is decided (it may
    /// close a connection that is still connecting to its backend).
    fn count(self, stats: &GatewayStats) {
        let counter = match self {
            Ended::Closed | Ended::Idle | Ended::Evicted => return,
            Ended::NoFirstData => &stats.first_data_timeouts,
            Ended::ProxyHeader => &stats.proxy_header_refused,
            Ended::BackendEndedFirst => &stats.backend_ended_first,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client side of a connection being forwarded, and what is known about its first data.
struct Client<'a, 's> {
    stream: TcpStream,
    peer: SocketAddr,
    first_data_deadline: Instant,
    silent: &'a mut Silent<'s>,
}

/// What the client's first bytes were.
enum FirstData {
    /// Bytes to forward (empty: the client closed its side without sending any).
    Bytes(Vec<u8>),
    /// A PROXY protocol header: refused.
    ProxyHeader,
    /// Nothing came before the deadline.
    TimedOut,
}

/// Whether `buf` starts a PROXY protocol header (v2 binary signature or v1 `PROXY `).
#[derive(Debug, PartialEq, Eq)]
enum ProxyPrefix {
    /// It is one: refuse.
    Yes,
    /// Too short to tell: read more.
    Maybe,
    /// It is not one.
    No,
}

fn proxy_prefix(buf: &[u8]) -> ProxyPrefix {
    let signatures: [&[u8]; 2] = [&proxy_protocol::SIGNATURE, PROXY_V1_PREFIX];
    if signatures.iter().any(|sig| buf.starts_with(sig)) {
        ProxyPrefix::Yes
    } else if signatures.iter().any(|sig| sig.starts_with(buf)) {
        ProxyPrefix::Maybe
    } else {
        ProxyPrefix::No
    }
}

/// Reads the client's first bytes, until they cannot be the start of a PROXY header, EOF, or
/// the deadline.
async fn first_data<R: AsyncRead + Unpin>(
    reader: &mut R,
    deadline: Instant,
) -> io::Result<FirstData> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut len = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, reader.read(&mut buf[len..])).await {
            Ok(read) => read?,
            Err(_) => return Ok(FirstData::TimedOut),
        };
        len += n;
        match proxy_prefix(&buf[..len]) {
            ProxyPrefix::Yes => return Ok(FirstData::ProxyHeader),
            // At EOF the few bytes read go on, and the pump reads the EOF again.
            ProxyPrefix::Maybe if n > 0 => continue,
            ProxyPrefix::Maybe | ProxyPrefix::No => {
                buf.truncate(len);
                return Ok(FirstData::Bytes(buf));
            }
        }
    }
}

async fn forward(
    client: Client<'_, '_>,
    mut backend: TcpStream,
    shared: &GatewayState,
) -> Result<Ended, ForwardError> {
    let Client {
        stream: mut client,
        peer,
        first_data_deadline,
        silent,
    } = client;
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
    let client_spoke = AtomicBool::new(false);
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    // Client to backend: first the client's first bytes, checked; then a plain copy.
    // `Some(ended)` ends the whole connection.
    let upstream = async {
        let first = tokio::select! {
            first = first_data(&mut client_read, first_data_deadline) => first.map_err(ForwardError::Client)?,
            () = silent.closes.cancelled() => return Ok(Some(Ended::Evicted)),
        };
        let first = match first {
            FirstData::Bytes(bytes) => bytes,
            FirstData::ProxyHeader => {
                if let Some(refused) = shared.proxy_log.record(Instant::now()) {
                    warn!(%peer, refused, "closed client connections that sent a PROXY header of their own \
                        (this client and others, since the last such line)");
                }
                return Ok(Some(Ended::ProxyHeader));
            }
            FirstData::TimedOut => return Ok(Some(Ended::NoFirstData)),
        };
        client_spoke.store(true, Ordering::Relaxed);
        silent.spoke();
        activity.touch();
        backend_write
            .write_all(&first)
            .await
            .map_err(ForwardError::Backend)?;
        drop(first);
        pump(
            &mut client_read,
            &mut backend_write,
            &activity,
            ForwardError::Client,
            ForwardError::Backend,
        )
        .await
        .map(|_| None)
    };
    let downstream = pump(
        &mut backend_read,
        &mut client_write,
        &activity,
        ForwardError::Backend,
        ForwardError::Client,
    );
    tokio::pin!(upstream, downstream);
    let (mut upstream_done, mut downstream_done) = (false, false);
    loop {
        tokio::select! {
            up = &mut upstream, if !upstream_done => match up? {
                Some(ended) => return Ok(ended),
                None => upstream_done = true,
            },
            down = &mut downstream, if !downstream_done => {
                down?;
                downstream_done = true;
                // The backend is done and the client has not said a word: nothing more can
                // happen here, so close both rather than hold the backend's socket (in
                // CLOSE-WAIT) until the client speaks.
                if !client_spoke.load(Ordering::Relaxed) {
                    return Ok(Ended::BackendEndedFirst);
                }
            },
            () = activity.idle(shared.idle_timeout) => return Ok(Ended::Idle),
        }
        if upstream_done && downstream_done {
            return Ok(Ended::Closed);
        }
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
    use backends::Lease;
    use std::net::IpAddr;

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

    #[test]
    fn proxy_prefix_spots_both_versions_whole_or_begun() {
        let v2 = proxy_protocol::SIGNATURE;
        assert_eq!(proxy_prefix(&v2), ProxyPrefix::Yes);
        assert_eq!(proxy_prefix(b"PROXY TCP4 1.2.3.4"), ProxyPrefix::Yes);
        assert_eq!(proxy_prefix(&v2[..5]), ProxyPrefix::Maybe);
        assert_eq!(proxy_prefix(b"PROX"), ProxyPrefix::Maybe);
        assert_eq!(proxy_prefix(b""), ProxyPrefix::Maybe);
        assert_eq!(proxy_prefix(b"\x16\x03\x01"), ProxyPrefix::No);
        assert_eq!(proxy_prefix(b"\r\n\r\nGET"), ProxyPrefix::No);
        assert_eq!(proxy_prefix(b"PROXYish"), ProxyPrefix::No);
    }

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
        assert_eq!(summary.record(t0 + silent::WARN_INTERVAL), Some(10));
        assert_eq!(summary.record(t0 + silent::WARN_INTERVAL), None);
    }
}
