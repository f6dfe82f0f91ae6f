//! Stream wrappers for IronRDP: one makes a stream `Sync`, as its futures require; one
//! refuses a peer that does not speak RDP before IronRDP's framing reads it.

use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Makes a `Send` stream `Sync`. IronRDP's connection futures hold `&Framed<S>` across
/// awaits, so they ask for `S: Sync`; a session stream (a boxed `dyn Stream`) is only `Send`.
/// Every use here goes through `&mut self`, so the mutex is never locked: `get_mut` costs
/// nothing, and no two tasks can share the stream.
pub struct SyncStream<S>(Mutex<S>);

impl<S> SyncStream<S> {
    pub fn new(stream: S) -> Self {
        SyncStream(Mutex::new(stream))
    }

    pub fn into_inner(self) -> S {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn inner(self: Pin<&mut Self>) -> Pin<&mut S>
    where
        S: Unpin,
    {
        Pin::new(
            self.get_mut()
                .0
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SyncStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner().poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SyncStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }
}

/// The peer's first byte was not the start of an RDP answer (a TPKT header, version 3).
#[derive(Debug, thiserror::Error)]
#[error("the service does not answer like an RDP server (its first byte is {0:#04x}, not 0x03)")]
pub struct NotRdp(pub u8);

/// Checks the first byte the peer sends before the TLS upgrade: an RDP server answers the
/// connection request with a TPKT header (0x03). IronRDP's framing can spin forever on some
/// other bytes (a zero-length PDU of the wrong kind), where no timeout can stop it, so a
/// service that is not RDP is refused here first.
pub struct ExpectRdp<S> {
    inner: S,
    checked: bool,
}

impl<S> ExpectRdp<S> {
    pub fn new(inner: S) -> Self {
        ExpectRdp {
            inner,
            checked: false,
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ExpectRdp<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && !this.checked
            && let Some(&first) = buf.filled().get(before)
        {
            this.checked = true;
            if first != 0x03 {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    NotRdp(first),
                )));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ExpectRdp<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peer_that_is_not_rdp_is_refused_at_its_first_byte() {
        let (mut peer, ours) = tokio::io::duplex(64);
        peer.write_all(b"\0\0\0\x10{").await.expect("write");
        let mut guarded = ExpectRdp::new(ours);
        let err = guarded.read(&mut [0; 8]).await.expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not 0x03"), "{err}");

        let (mut peer, ours) = tokio::io::duplex(64);
        peer.write_all(&[3, 0, 0, 11]).await.expect("write");
        let mut guarded = ExpectRdp::new(ours);
        let mut got = [0; 4];
        guarded
            .read_exact(&mut got)
            .await
            .expect("a TPKT header passes");
        assert_eq!(got, [3, 0, 0, 11]);
    }
}
