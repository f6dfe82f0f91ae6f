//! The one accept loop step every listener uses (the SP port, the gateway, the backup
//! service's own port, `rac connect`'s local port): accept the next connection, pause with
//! growing, jittered delays ([`Backoff`]) while accepting fails (out of file descriptors, say)
//! instead of spinning, and stop at once when shutdown fires, even in the middle of a pause.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;

/// First pause after a failed accept; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// A listener and its accept backoff.
pub struct Acceptor {
    listener: TcpListener,
    backoff: Backoff,
    /// What listens, for the log ("SP", "gateway", ...).
    what: &'static str,
}

impl Acceptor {
    pub fn new(what: &'static str, listener: TcpListener) -> Acceptor {
        Acceptor {
            listener,
            backoff: Backoff::new(FIRST_PAUSE, MAX_PAUSE),
            what,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, or `None` once `shutdown` has fired. Cancel-safe: dropped before
    /// it returns, it loses no connection (one not yet accepted stays in the backlog).
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok(pair) => {
                    self.backoff.reset();
                    return Some(pair);
                }
                Err(e) => {
                    let pause = self.backoff.next_delay();
                    tracing::warn!("{}: accept failed: {e}; retrying in {pause:.0?}", self.what);
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_out_connections_and_stops_at_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut acceptor = Acceptor::new("test", listener);
        let shutdown = CancellationToken::new();
        let client = TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = acceptor.next(&shutdown).await.expect("a connection");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        shutdown.cancel();
        // A connection waiting in the backlog does not keep a stopped acceptor going.
        let _late = TcpStream::connect(addr).await.expect("connect");
        assert!(acceptor.next(&shutdown).await.is_none());
    }
}
