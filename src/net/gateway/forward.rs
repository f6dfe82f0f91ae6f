//! One forwarded connection: a backend picked, the client's first bytes checked (no PROXY
//! header of its own, within the first-data deadline), then both directions copied until
//! they end, an error names the side that failed, or the idle timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::silent::Silent;
use super::{BUFFER_SIZE, BULK_BUFFER_SIZE, BULK_IDLE, GatewayState, GatewayStats};
use crate::net::proxy_protocol;

/// PROXY protocol v1 (text) starts with this.
const PROXY_V1_PREFIX: &[u8] = b"PROXY ";

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
pub(super) async fn serve(
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
}
