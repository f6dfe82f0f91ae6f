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

/// How a splice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides finished.
    Closed,
    /// One side failed (reset, timeout): the message says which.
    Failed(String),
    /// Stopped from outside (tenant disabled, shutdown).
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
    let mut a = Counted::new(a, counters.a_to_b.clone());
    let mut b = Counted::new(b, counters.b_to_a.clone());
    let end = tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, SPLICE_BUF, SPLICE_BUF) => {
            match result {
                Ok(_) => SpliceEnd::Closed,
                Err(e) => SpliceEnd::Failed(e.to_string()),
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
