//! Joining two plain TCP sockets inside the kernel: each direction moves through a pipe with
//! splice(2), socket → pipe → socket, so the bytes are never copied into this process (on
//! Linux the pipe only holds references to the received pages). What the SP does with a
//! session after `ready`, where it copies an end-to-end channel it cannot read. (Gateways
//! still copy through their own buffers: they watch each connection's activity as it goes.)
//!
//! Same contract as [`splice`](super::splice::splice): both directions run until each has
//! ended, a half-close is passed on, bytes are counted as they go, and `cancel` stops it. A
//! pipe holds at most 64 KiB, so a side that stops reading stops the other side's sender, and
//! nothing piles up. Where no pipe can be made (the open-files limit reached), the session is
//! copied through user space as before rather than refused.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::splice::{Counters, Side, SpliceEnd, SpliceReport, splice};

/// Bytes asked of the kernel per splice: the default pipe's capacity.
const CHUNK: usize = 64 * 1024;

/// A plain socket and the bytes already read from it that its reader did not take (read
/// ahead while it still carried TLS records): they go out first.
pub struct RawSide {
    pub tcp: TcpStream,
    pub pending: Vec<u8>,
}

/// Relays between `a` and `b` inside the kernel until both directions end or `cancel` fires.
pub async fn splice_sockets(
    a: RawSide,
    b: RawSide,
    counters: &Counters,
    cancel: &CancellationToken,
) -> SpliceReport {
    let end = tokio::select! {
        end = run(a, b, counters, cancel) => end,
        _ = cancel.cancelled() => SpliceEnd::Cancelled,
    };
    SpliceReport {
        a_to_b: counters.a_to_b.load(Ordering::Relaxed),
        b_to_a: counters.b_to_a.load(Ordering::Relaxed),
        end,
    }
}

async fn run(a: RawSide, b: RawSide, counters: &Counters, cancel: &CancellationToken) -> SpliceEnd {
    // What was read ahead goes out first (a few KiB at most, into fresh send buffers).
    let pending = tokio::try_join!(
        forward(&a.pending, &b.tcp, Side::B, &counters.a_to_b),
        forward(&b.pending, &a.tcp, Side::A, &counters.b_to_a),
    );
    if let Err((side, error)) = pending {
        return SpliceEnd::Failed {
            side,
            error: error.to_string(),
        };
    }
    let (ab, ba) = match (pipe(), pipe()) {
        (Ok(ab), Ok(ba)) => (ab, ba),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!("no pipe for a kernel splice ({e}); copying through user space");
            return splice(a.tcp, b.tcp, counters, cancel).await.end;
        }
    };
    let both = tokio::try_join!(
        direction(&a.tcp, Side::A, &b.tcp, Side::B, &ab, &counters.a_to_b),
        direction(&b.tcp, Side::B, &a.tcp, Side::A, &ba, &counters.b_to_a),
    );
    match both {
        Ok(_) => SpliceEnd::Closed,
        Err((side, error)) => SpliceEnd::Failed {
            side,
            error: error.to_string(),
        },
    }
}

/// A pipe's two ends, non-blocking: bytes go `into` it and come `out`.
struct Pipe {
    out: rustix::fd::OwnedFd,
    into: rustix::fd::OwnedFd,
}

fn pipe() -> io::Result<Pipe> {
    let (out, into) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    Ok(Pipe { out, into })
}

/// One direction: everything `from` sends, to `to`; at `from`'s end of stream, `to` is
/// half-closed. An error names the side it happened on.
async fn direction(
    from: &TcpStream,
    from_side: Side,
    to: &TcpStream,
    to_side: Side,
    pipe: &Pipe,
    count: &AtomicU64,
) -> Result<(), (Side, io::Error)> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        // The pipe is empty here: fill it from the socket.
        let filled = loop {
            from.readable().await.map_err(|e| (from_side, e))?;
            let moved = from.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(
                    from, None, &pipe.into, None, CHUNK, flags,
                )?)
            });
            match moved {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err((from_side, e)),
            }
        };
        if filled == 0 {
            return match rustix::net::shutdown(to, rustix::net::Shutdown::Write) {
                // The other side is gone already: nothing left to tell it.
                Ok(()) | Err(rustix::io::Errno::NOTCONN) => Ok(()),
                Err(e) => Err((to_side, e.into())),
            };
        }
        count.fetch_add(filled as u64, Ordering::Relaxed);
        // Empty it into the other socket.
        let mut left = filled;
        while left > 0 {
            to.writable().await.map_err(|e| (to_side, e))?;
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &pipe.out, None, to, None, left, flags,
                )?)
            });
            match moved {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err((to_side, e)),
            }
        }
    }
}

/// Writes `bytes` to `to` and counts them.
async fn forward(
    mut bytes: &[u8],
    to: &TcpStream,
    to_side: Side,
    count: &AtomicU64,
) -> Result<(), (Side, io::Error)> {
    count.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    while !bytes.is_empty() {
        to.writable().await.map_err(|e| (to_side, e))?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((to_side, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets: (the far end, the end the splice holds).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (far, near) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (far.expect("connect"), near.expect("accept").0)
    }

    fn side(tcp: TcpStream, pending: &[u8]) -> RawSide {
        RawSide {
            tcp,
            pending: pending.to_vec(),
        }
    }

    #[tokio::test]
    async fn relays_pending_bytes_first_then_megabytes_both_ways_with_half_close() {
        let (mut console, a) = socket_pair().await;
        let (mut tenant, b) = socket_pair().await;
        let counters = Counters::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let counters = counters.clone();
            async move {
                splice_sockets(
                    side(a, b"early-a "),
                    side(b, b"early-b "),
                    &counters,
                    &cancel,
                )
                .await
            }
        });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up_sent, down_sent) = (up.clone(), down.clone());
        let (console_got, tenant_got) = tokio::join!(
            async {
                let (mut r, mut w) = console.split();
                let send = async {
                    w.write_all(&up_sent).await.expect("console writes");
                    w.shutdown().await.expect("console half-closes");
                };
                let mut got = Vec::new();
                let recv = r.read_to_end(&mut got);
                let (_, n) = tokio::join!(send, recv);
                n.expect("console reads to the end");
                got
            },
            async {
                let (mut r, mut w) = tenant.split();
                let mut got = Vec::new();
                // The tenant answers only after the console has finished: the half-close
                // must reach it while its own direction stays open.
                r.read_to_end(&mut got)
                    .await
                    .expect("tenant reads to the end");
                w.write_all(&down_sent).await.expect("tenant writes");
                w.shutdown().await.expect("tenant closes");
                got
            }
        );
        assert_eq!(tenant_got.len(), up.len() + 8);
        assert_eq!(&tenant_got[..8], b"early-a ");
        assert!(
            tenant_got[8..] == up[..],
            "the console's bytes arrive unchanged"
        );
        assert_eq!(&console_got[..8], b"early-b ");
        assert!(
            console_got[8..] == down[..],
            "the tenant's bytes arrive unchanged"
        );
        let report = task.await.expect("join");
        assert_eq!(report.end, SpliceEnd::Closed);
        assert_eq!(report.a_to_b, up.len() as u64 + 8);
        assert_eq!(report.b_to_a, down.len() as u64 + 8);
    }

    #[tokio::test]
    async fn a_reset_names_the_side_it_happened_on() {
        let (console, a) = socket_pair().await;
        let (tenant, b) = socket_pair().await;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(async move {
            splice_sockets(side(a, b""), side(b, b""), &Counters::default(), &cancel).await
        });
        // A close with a zero linger time sends a reset.
        tenant.set_zero_linger().expect("linger");
        drop(tenant);
        let report = task.await.expect("join");
        drop(console);
        match report.end {
            SpliceEnd::Failed { side, .. } => assert_eq!(side, Side::B),
            other => panic!("expected a failure on the tenant's side, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn cancel_stops_and_reports_bytes_so_far() {
        let (mut console, a) = socket_pair().await;
        let (mut tenant, b) = socket_pair().await;
        let counters = Counters::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (counters, cancel) = (counters.clone(), cancel.clone());
            async move { splice_sockets(side(a, b""), side(b, b""), &counters, &cancel).await }
        });
        console.write_all(b"abc").await.expect("write");
        let mut buf = [0u8; 3];
        tenant.read_exact(&mut buf).await.expect("read");
        cancel.cancel();
        let report = task.await.expect("join");
        assert_eq!(report.end, SpliceEnd::Cancelled);
        assert_eq!(report.a_to_b, 3);
        // Both sockets are closed with the splice: the far ends see their end of stream.
        assert_eq!(tenant.read(&mut buf).await.expect("eof"), 0);
    }
}
