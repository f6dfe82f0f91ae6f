//! Thousands of idle tenants in one process. Each is a lean control-connection client (not a
//! full tenant redirector): the same TLS client, hello, heartbeats both ways and jittered
//! exponential reconnect (`net::backoff`, 0.5 s doubling to 30 s) as `rac tenant`, but no
//! data-connection handling, no gateway pool file and no per-tenant TLS configuration, so
//! 15,000 of them fit beside the SP on two cores. Source addresses are spread over
//! 127.0.0.2–127.0.0.65, as tenants behind different NATs would be.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::backoff::Backoff;
use crate::net::tls::TlsClient;
use crate::wire::frame::{self, MAX_FRAME_LEN};
use crate::wire::protocol::{ControlMsg, Hello, HelloReply, Role};

const SOURCE_ADDRESSES: u32 = 64;

/// Counters every tenant task updates.
#[derive(Debug, Default)]
pub struct SwarmStats {
    /// Tenants whose control connection is welcomed and open now.
    pub online: AtomicUsize,
    /// Connects refused (nobody listening: the SP is down).
    pub connect_refused: AtomicU64,
    /// Failures (reset, closed or refused in the handshake or hello) of attempts begun and
    /// ended while `sp_up` was set: the SP refusing work it should take.
    pub refused_while_up: AtomicU64,
    /// Any failure while the SP was down (expected in a restart).
    pub failed_while_down: AtomicU64,
    /// Set by the benchmark while the SP is listening.
    pub sp_up: AtomicBool,
    /// Welcomes received in all.
    pub welcomes: AtomicU64,
}

pub struct Swarm {
    pub stats: Arc<SwarmStats>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Swarm {
    /// Starts one task per tenant; at most `ramp_parallel` first connects are in flight at
    /// once (later reconnects are not limited, as real tenants do not coordinate). Tenant
    /// `i` tries the SP addresses from `sps[i % len]` on, in order, as a tenant redirector
    /// tries its endpoints: several SP nodes share the tenants evenly, and a node that
    /// refuses connections sends its tenants to the next.
    pub fn start(
        tenants: &[(String, String)],
        sps: &[SocketAddr],
        tls: TlsClient,
        ramp_parallel: usize,
    ) -> Swarm {
        let sps: Arc<[SocketAddr]> = sps.into();
        let stats = Arc::new(SwarmStats::default());
        stats.sp_up.store(true, Ordering::SeqCst);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ramp = Arc::new(Semaphore::new(ramp_parallel));
        for (i, (name, secret)) in tenants.iter().enumerate() {
            let source = IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i as u32 % SOURCE_ADDRESSES,
            ));
            let tenant = LeanTenant {
                name: name.clone(),
                secret: secret.clone(),
                sps: sps.clone(),
                preferred: AtomicUsize::new(i % sps.len().max(1)),
                source,
                tls: tls.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
            };
            tasks.spawn(tenant.run(ramp.clone()));
        }
        tasks.close();
        Swarm { stats, stop, tasks }
    }

    pub fn online(&self) -> usize {
        self.stats.online.load(Ordering::SeqCst)
    }

    /// Waits until `n` tenants are online; returns how long it took. Says how far it got
    /// every 5 s, and gives up after `limit`, or after 30 s without one more tenant online.
    pub async fn wait_online(&self, n: usize, limit: Duration) -> Result<Duration> {
        const REPORT_EVERY: Duration = Duration::from_secs(5);
        const STALLED_AFTER: Duration = Duration::from_secs(30);
        let started = Instant::now();
        let (mut reported, mut last_count, mut last_change) = (started, 0, started);
        loop {
            let online = self.online();
            if online >= n {
                return Ok(started.elapsed());
            }
            if online != last_count {
                (last_count, last_change) = (online, Instant::now());
            }
            if started.elapsed() > limit || last_change.elapsed() > STALLED_AFTER {
                bail!(
                    "only {online} of {n} tenants online after {:.0} s (RAC_BENCH_KEEP=1 \
                     keeps the SP's log)",
                    started.elapsed().as_secs_f64()
                );
            }
            if reported.elapsed() >= REPORT_EVERY {
                eprintln!("bench: {online} of {n} tenants online");
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

struct LeanTenant {
    name: String,
    secret: String,
    sps: Arc<[SocketAddr]>,
    /// The address tried first: the one that worked last.
    preferred: AtomicUsize,
    source: IpAddr,
    tls: TlsClient,
    stats: Arc<SwarmStats>,
    stop: CancellationToken,
}

/// Why a connection attempt ended.
enum Failure {
    Refused,
    Other(String),
}

impl LeanTenant {
    async fn run(self, ramp: Arc<Semaphore>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut first = Some(ramp);
        loop {
            let permit = match first.take() {
                Some(ramp) => ramp.acquire_owned().await.ok(),
                None => None,
            };
            let started = Instant::now();
            // Only an attempt made while the new SP listens can be refused by it: one made
            // while the old SP was going down fails later, but not by the new SP's doing.
            let up_at_start = self.stats.sp_up.load(Ordering::SeqCst);
            let result = tokio::select! {
                r = self.connection(permit) => r,
                _ = self.stop.cancelled() => return,
            };
            let up = up_at_start && self.stats.sp_up.load(Ordering::SeqCst);
            let was_online = result.is_ok();
            match result {
                Err(Failure::Refused) => {
                    self.stats.connect_refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(Failure::Other(why)) if up => {
                    tracing::debug!(tenant = %self.name, "refused while the SP listens: {why}");
                    self.stats.refused_while_up.fetch_add(1, Ordering::Relaxed);
                }
                Err(Failure::Other(_)) => {
                    self.stats.failed_while_down.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {}
            }
            if started.elapsed() >= Duration::from_secs(60) {
                backoff.reset();
            }
            // The tenant redirector's rule: a connection that was up and was lost is followed
            // by a spread first reconnect.
            let delay = if was_online {
                backoff.after_lost_connection()
            } else {
                backoff.next_delay()
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// One control connection; `Ok` when it was welcomed and later ended.
    async fn connection(
        &self,
        ramp: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), Failure> {
        let other = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| Failure::Other(format!("{what}: {e}"))
        };
        let tcp = self.connect().await?;
        let mut stream = tokio::time::timeout(Duration::from_secs(15), self.tls.handshake(tcp))
            .await
            .map_err(|_| Failure::Other("TLS handshake timed out".into()))?
            .map_err(other("TLS handshake"))?;
        let hello = Hello::new(Role::TenantControl {
            tenant: self.name.clone(),
            secret: self.secret.clone(),
            agent: format!("rac-bench/{}", crate::VERSION),
            services: vec!["backup".into()],
            provider_access: true,
            // These tenants open no sessions, so no key pair: a fingerprint that stays the
            // same across reconnects is what the SP records and checks.
            tenant_key: crate::wire::format_fingerprint(&crate::wire::fingerprint(
                format!("rac bench tenant key/{}", self.name).as_bytes(),
            )),
            early_client_hello: false,
        });
        frame::write_frame(&mut stream, &hello)
            .await
            .map_err(|e| Failure::Other(format!("hello: {e}")))?;
        let welcome = match tokio::time::timeout(
            Duration::from_secs(15),
            frame::read_frame::<HelloReply, _>(&mut stream, MAX_FRAME_LEN),
        )
        .await
        {
            Ok(Ok(Some(HelloReply::Welcome(w)))) => w,
            other => return Err(Failure::Other(format!("no welcome: {other:?}"))),
        };
        drop(ramp);
        self.stats.welcomes.fetch_add(1, Ordering::Relaxed);
        self.stats.online.fetch_add(1, Ordering::SeqCst);
        let result = self.heartbeats(stream, welcome.heartbeat_secs.max(1)).await;
        self.stats.online.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = result {
            tracing::debug!(tenant = %self.name, "control connection ended: {e:#}");
        }
        Ok(())
    }

    /// A TCP connection to the first SP address that takes one, from the preferred one on.
    async fn connect(&self) -> Result<tokio::net::TcpStream, Failure> {
        let other = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| Failure::Other(format!("{what}: {e}"))
        };
        let start = self.preferred.load(Ordering::Relaxed);
        for i in 0..self.sps.len() {
            let index = (start + i) % self.sps.len();
            let socket = TcpSocket::new_v4().map_err(other("socket"))?;
            socket
                .bind(SocketAddr::new(self.source, 0))
                .map_err(other("bind"))?;
            match socket.connect(self.sps[index]).await {
                Ok(tcp) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(tcp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(other("connect")(e)),
            }
        }
        Err(Failure::Refused)
    }

    /// Answers pings and sends its own, until the SP goes away.
    async fn heartbeats(
        &self,
        stream: crate::net::tls::ClientStream,
        heartbeat_secs: u64,
    ) -> Result<()> {
        let heartbeat = Duration::from_secs(heartbeat_secs);
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        // As `rac tenant`: each ping tells the round trip of the previous one.
        let mut ping_sent: Option<(u64, std::time::Instant)> = None;
        let mut rtt_us: Option<u64> = None;
        loop {
            // The read is kept across ticks: a frame is never half read and dropped.
            let read = frame::read_frame::<ControlMsg, _>(&mut reader, MAX_FRAME_LEN);
            tokio::pin!(read);
            let msg = loop {
                tokio::select! {
                    msg = &mut read => break msg,
                    _ = tick.tick() => {
                        seq += 1;
                        ping_sent = Some((seq, std::time::Instant::now()));
                        frame::write_frame(&mut writer, &ControlMsg::Ping { seq, rtt_us }).await?;
                    }
                }
            };
            match msg? {
                None => return Err(anyhow!("the SP closed the connection")),
                Some(ControlMsg::Ping { seq, .. }) => {
                    frame::write_frame(&mut writer, &ControlMsg::Pong { seq }).await?;
                }
                Some(ControlMsg::Pong { seq }) => {
                    if let Some((sent, at)) = ping_sent
                        && sent == seq
                    {
                        rtt_us = Some(at.elapsed().as_micros().try_into().unwrap_or(u64::MAX));
                        ping_sent = None;
                    }
                }
                Some(ControlMsg::Goodbye { reason, .. }) => {
                    return Err(anyhow!("goodbye: {reason}"));
                }
                Some(_) => {}
            }
        }
    }
}
