//! Joining two streams: bytes flow both ways until both sides have finished, a half-close on
//! one side is passed on to the other, and each direction is counted as it goes (so a
//! session cut short still reports what it carried). Buffers are fixed: a slow reader on
//! one side slows the writer on the other, nothing piles up in memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Buffer per direction. Large enough for a full TLS record (16 KiB) several times over.
pub const SPLICE_BUF: usize = 64 * 1024;

/// Counts the bytes read from the wrapped stream (and, optionally, those written to it).
pub struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Option<Arc<AtomicU64>>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, read: Arc<AtomicU64>) -> Self {
        Counted {
            inner,
            read,
            written: None,
        }
    }

    /// Counts both ways: what the console reads and what it writes.
    pub fn both(inner: S, read: Arc<AtomicU64>, written: Arc<AtomicU64>) -> Self {
        Counted {
            inner,
            read,
            written: Some(written),
        }
    }

    fn count_written(&self, result: &Poll<io::Result<usize>>) {
        if let (Some(written), Poll::Ready(Ok(n))) = (&self.written, result) {
            written.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let added = buf.filled().len() - before;
        if added > 0 {
            self.read.fetch_add(added as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_written(&result);
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_written(&result);
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An end-to-end stream whose end without close_notify is an error (truncated: someone cut
/// the connection between the two ends), not an end of stream: what came before it may be
/// incomplete, and the other side must not take it for a finished transfer.
pub struct Strict<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for Strict<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the end-to-end channel was cut without close_notify (truncated)",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Strict<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Which of the two streams given to [`splice`]: the caller knows what each one is (the
/// console or the tenant, the data channel or the local service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// How a splice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides finished cleanly.
    Closed,
    /// Both sides finished, but `side` ended its stream with a bare TCP FIN and no TLS
    /// close_notify (many TLS stacks do). What it sent was delivered, and the other direction
    /// carried on until it finished too.
    ClosedWithoutNotify { side: Side },
    /// A read from or a write to `side` failed (reset, TLS error).
    Failed { side: Side, error: String },
    /// Stopped from outside (tenant disabled, token revoked, shutdown).
    Cancelled,
}

/// What a splice carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpliceReport {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub end: SpliceEnd,
}

/// Live byte counters of a splice, readable while it runs.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub a_to_b: Arc<AtomicU64>,
    pub b_to_a: Arc<AtomicU64>,
}

/// Relays between `a` and `b` until both directions end or `cancel` fires.
pub async fn splice<A, B>(
    a: A,
    b: B,
    counters: &Counters,
    cancel: &CancellationToken,
) -> SpliceReport
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = SideStream::new(Counted::new(a, counters.a_to_b.clone()), Side::A);
    let mut b = SideStream::new(Counted::new(b, counters.b_to_a.clone()), Side::B);
    let end = tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, SPLICE_BUF, SPLICE_BUF) => {
            match result {
                Ok(_) if a.no_close_notify => SpliceEnd::ClosedWithoutNotify { side: Side::A },
                Ok(_) if b.no_close_notify => SpliceEnd::ClosedWithoutNotify { side: Side::B },
                Ok(_) => SpliceEnd::Closed,
                Err(e) => {
                    let (side, error) = match e.get_ref().and_then(|i| i.downcast_ref::<SideError>()) {
                        Some(tagged) => (tagged.side, tagged.source.to_string()),
                        // Every error passes through a SideStream; this is only a fallback.
                        None => (Side::A, e.to_string()),
                    };
                    SpliceEnd::Failed { side, error }
                }
            }
        }
        _ = cancel.cancelled() => SpliceEnd::Cancelled,
    };
    SpliceReport {
        a_to_b: counters.a_to_b.load(Ordering::Relaxed),
        b_to_a: counters.b_to_a.load(Ordering::Relaxed),
        end,
    }
}

/// An I/O error and the side it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
struct SideError {
    side: Side,
    source: io::Error,
}

/// One side of a splice: its errors carry the side's name, and a TLS stream that ends without
/// close_notify (rustls reports `UnexpectedEof`) counts as that side's end of stream, so the
/// other direction is not cut short while it still carries data.
struct SideStream<S> {
    inner: S,
    side: Side,
    no_close_notify: bool,
}

impl<S> SideStream<S> {
    fn new(inner: S, side: Side) -> Self {
        SideStream {
            inner,
            side,
            no_close_notify: false,
        }
    }

    fn tag<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(Err(source)) => Poll::Ready(Err(io::Error::new(
                source.kind(),
                SideError {
                    side: self.side,
                    source,
                },
            ))),
            other => other,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SideStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.no_close_notify = true;
                Poll::Ready(Ok(()))
            }
            other => self.tag(other),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SideStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.tag(result)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.tag(result)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.tag(result)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.tag(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let counters = Counters::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let counters = counters.clone();
            async move { splice(a, b, &counters, &cancel).await }
        });
        client.write_all(b"hello server").await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to eof");
        assert_eq!(got, b"hello server");
        // The other direction still flows after the half-close.
        server.write_all(b"hi client, bye").await.expect("write");
        server.shutdown().await.expect("close");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"hi client, bye");
        let report = task.await.expect("join");
        assert_eq!(report.a_to_b, 12);
        assert_eq!(report.b_to_a, 14);
        assert_eq!(report.end, SpliceEnd::Closed);
    }

    /// A stream whose end of input is reported as the error `kind` (as rustls reports a
    /// missing close_notify, or a socket a reset).
    struct EndsWith<S> {
        inner: S,
        kind: std::io::ErrorKind,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for EndsWith<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                    Poll::Ready(Err(io::Error::new(self.kind, "stream ended badly")))
                }
                other => other,
            }
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for EndsWith<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_missing_close_notify_ends_one_direction_and_the_other_carries_on() {
        let (mut client, a) = tokio::io::duplex(256 * 1024);
        let (b, mut server) = tokio::io::duplex(256 * 1024);
        let a = EndsWith {
            inner: a,
            kind: std::io::ErrorKind::UnexpectedEof,
        };
        let counters = Counters::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let counters = counters.clone();
            async move { splice(a, b, &counters, &cancel).await }
        });
        client.write_all(b"last words").await.expect("write");
        client.shutdown().await.expect("bare FIN");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to eof");
        assert_eq!(got, b"last words");
        // The tenant still has plenty to say after the console's abrupt end.
        let reply = vec![7u8; 100_000];
        server.write_all(&reply).await.expect("write");
        server.shutdown().await.expect("close");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, reply);
        let report = task.await.expect("join");
        assert_eq!(report.end, SpliceEnd::ClosedWithoutNotify { side: Side::A });
        assert_eq!(report.b_to_a, 100_000);
    }

    #[tokio::test]
    async fn a_failure_names_the_side_it_happened_on() {
        let (client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let b = EndsWith {
            inner: b,
            kind: std::io::ErrorKind::ConnectionReset,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(async move { splice(a, b, &Counters::default(), &cancel).await });
        server.shutdown().await.expect("close");
        let report = task.await.expect("join");
        drop(client);
        match report.end {
            SpliceEnd::Failed { side, error } => {
                assert_eq!(side, Side::B);
                assert!(error.contains("stream ended badly"), "{error}");
            }
            other => panic!("expected a failure on side B, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn cancel_stops_and_reports_bytes_so_far() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let counters = Counters::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let (counters, cancel) = (counters.clone(), cancel.clone());
            async move { splice(a, b, &counters, &cancel).await }
        });
        client.write_all(b"abc").await.expect("write");
        let mut buf = [0u8; 3];
        server.read_exact(&mut buf).await.expect("read");
        cancel.cancel();
        let report = task.await.expect("join");
        assert_eq!(report.end, SpliceEnd::Cancelled);
        assert_eq!(report.a_to_b, 3);
    }
}
