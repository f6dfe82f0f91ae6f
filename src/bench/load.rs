//! Load generators: bulk streams, session opens, a slow reader and idle forwarded
//! connections, each run through the relay and directly on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::world::{ECHO, IO_BUF, SOURCE};
use crate::net::console::{ConsoleClient, OpenStage};
use crate::net::tls::Stream;

/// How a load generator reaches the tenant service.
#[derive(Clone)]
pub enum Path {
    /// Plain TCP to the service, on loopback.
    Direct(std::net::SocketAddr),
    /// A session through the SP (and whatever route the console client has).
    Session(Arc<ConsoleClient>),
}

impl Path {
    async fn open(&self, service: &str) -> Result<Box<dyn Stream>> {
        match self {
            Path::Direct(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                Ok(Box::new(tcp))
            }
            Path::Session(console) => {
                let session = console
                    .open_session(super::world::BENCH_TENANT, service, |_, _| {})
                    .await
                    .with_context(|| format!("opening a session to {service}"))?;
                Ok(Box::new(session.stream))
            }
        }
    }
}

/// Asks the source service for `bytes` and reads them to the end.
async fn pull(mut stream: Box<dyn Stream>, bytes: u64) -> Result<()> {
    stream.write_all(&bytes.to_be_bytes()).await?;
    stream.flush().await?;
    let mut buf = vec![0u8; IO_BUF];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != bytes {
        bail!("stream ended after {got} of {bytes} bytes");
    }
    let _ = stream.shutdown().await;
    Ok(())
}

/// `streams` parallel streams of `total / streams` bytes each from a source service
/// (`SOURCE` or `SOURCE_TCP`; a direct path always reaches the TCP one); the streams are
/// opened first, then timed from the first request to the last byte. Returns Gbit/s.
pub async fn throughput(path: &Path, service: &str, streams: usize, total: u64) -> Result<f64> {
    let per_stream = total / streams as u64;
    let mut opened = Vec::with_capacity(streams);
    for _ in 0..streams {
        opened.push(path.open(service).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|s| tokio::spawn(pull(s, per_stream)))
        .collect();
    for task in tasks {
        task.await.context("stream task")??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((per_stream * streams as u64) as f64 * 8.0 / secs / 1e9)
}

/// From `connect()` to the first byte of the echo service's answer to one byte.
pub async fn open_once(path: &Path) -> Result<Duration> {
    Ok(open_timed(path).await?.first_byte)
}

/// When each step of one open was done, from `connect()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTimes {
    /// TCP and TLS to the SP done, the request sent (zero for a direct path).
    pub request_sent: Duration,
    /// `ready` received: the tenant's data connection is spliced.
    pub spliced: Duration,
    /// The end-to-end handshake with the tenant done.
    pub end_to_end: Duration,
    /// The echo's answer to one byte received.
    pub first_byte: Duration,
}

/// Opens a session to the echo service (or connects to it directly) and times each step.
pub async fn open_timed(path: &Path) -> Result<OpenTimes> {
    let started = Instant::now();
    let mut times = OpenTimes::default();
    let mut stream: Box<dyn Stream> = match path {
        Path::Direct(_) => path.open(ECHO).await?,
        Path::Session(console) => {
            let session = console
                .open_session(super::world::BENCH_TENANT, ECHO, |_, _| {})
                .await
                .context("opening a session to the echo service")?;
            for (stage, at) in &session.stages {
                match stage {
                    OpenStage::RequestSent => times.request_sent = *at,
                    OpenStage::Spliced => times.spliced = *at,
                    OpenStage::WaitingForTenant => {}
                }
            }
            times.end_to_end = started.elapsed();
            Box::new(session.stream)
        }
    };
    stream.write_all(b"?").await?;
    stream.flush().await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    times.first_byte = started.elapsed();
    let _ = stream.shutdown().await;
    Ok(times)
}

/// The `q` quantile (0..=1) of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// Opens `sessions` sessions that each ask the source for far more than they read, and
/// reads nothing for `stall`. Returns the streams (so the caller measures before dropping).
pub async fn slow_readers(path: &Path, sessions: usize) -> Result<Vec<Box<dyn Stream>>> {
    let mut held = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut stream = path.open(SOURCE).await?;
        stream.write_all(&(1u64 << 40).to_be_bytes()).await?;
        stream.flush().await?;
        // One read so the whole path is known to flow before it stalls.
        let mut buf = vec![0u8; 1024];
        stream.read_exact(&mut buf).await?;
        held.push(stream);
    }
    Ok(held)
}

/// Opens `conns` connections to an echo service through a gateway, moves `payload` bytes
/// through each both ways, and keeps them open.
pub async fn forwarded_connections(
    gateway: std::net::SocketAddr,
    conns: usize,
    payload: usize,
) -> Result<Vec<TcpStream>> {
    let data = vec![0x33u8; payload];
    let mut back = vec![0u8; payload];
    let mut held = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut tcp = TcpStream::connect(gateway).await?;
        tcp.set_nodelay(true)?;
        let (mut rx, mut tx) = tcp.split();
        tokio::try_join!(tx.write_all(&data), rx.read_exact(&mut back))?;
        held.push(tcp);
    }
    Ok(held)
}
