//! The gateway's SP backends: which are up (a TCP health check every few seconds, and a
//! failed connect), how many connections each carries, and picking the least loaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// One SP backend and what the gateway knows about it.
#[derive(Debug)]
pub(super) struct Backend {
    pub(super) addr: SocketAddr,
    pub(super) up: AtomicBool,
    pub(super) active: AtomicUsize,
}

impl Backend {
    /// Records the backend's state; logs only when it changes.
    pub(super) fn set_up(&self, up: bool, why: &str) {
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
pub(super) struct Pool {
    pub(super) backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
}

impl Pool {
    pub(super) fn new(addrs: &[SocketAddr]) -> Self {
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
    pub(super) fn pick(&self, tried: &[usize]) -> Option<usize> {
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
    pub(super) async fn connect(&self, connect_timeout: Duration) -> Option<(TcpStream, Lease)> {
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
pub(super) struct Lease {
    pub(super) backend: Arc<Backend>,
}

impl Lease {
    pub(super) fn new(backend: Arc<Backend>) -> Self {
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
pub(super) async fn health_loop(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::gateway::tests::addrs;

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
}
