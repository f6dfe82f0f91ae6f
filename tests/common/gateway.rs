//! The gateway's test harness, shared by `tests/gateway.rs` and `tests/security_gateway.rs`:
//! a gateway in a task with its stats, backends that are accept loops, and the checks both
//! files make on a forwarded stream.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rac::net::gateway::{self, GatewayConfig, GatewayStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::PATIENCE;

/// `f`, or a panic naming `what` after `PATIENCE`.
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("hang guard expired: {what}"))
}

pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port")
}

/// A gateway running in a task, with its stats; dropped = cancelled and aborted.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub stats: Arc<GatewayStats>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> Self {
        let listener = bind().await;
        let addr = listener.local_addr().expect("gateway address");
        let shutdown = CancellationToken::new();
        let stats = Arc::new(GatewayStats::default());
        let task = tokio::spawn(gateway::run_with_stats(
            config,
            listener,
            shutdown.clone(),
            stats.clone(),
        ));
        Self {
            addr,
            shutdown,
            stats,
            task,
        }
    }

    /// Waits for `run` to return, and checks it returned `Ok`.
    pub async fn join(&mut self) {
        guard("gateway run returns", &mut self.task)
            .await
            .expect("gateway task did not panic")
            .expect("gateway run returned Ok");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// A backend: an accept loop running `handler` for each connection. Dropping it closes the
/// listener and every connection it holds, like a crashed SP.
pub struct TestBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn spawn_backend<F, Fut>(listener: TcpListener, handler: F) -> TestBackend
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().expect("backend address");
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        conns.spawn(handler(stream));
                    }
                }
                Some(_) = conns.join_next() => {}
            }
        }
    });
    TestBackend { addr, task }
}

/// Writes `msg` and reads the same bytes back.
pub async fn assert_echo(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("write to echo");
    let mut back = vec![0u8; msg.len()];
    guard("echo", stream.read_exact(&mut back))
        .await
        .expect("read echo");
    assert_eq!(back, msg);
}

/// Returns once the peer has closed: EOF or a reset.
pub async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    loop {
        match guard(what, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
