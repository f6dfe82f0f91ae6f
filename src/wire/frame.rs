//! Length-prefixed JSON frames: the one framing every message of the project uses.
//!
//! A frame is a 4-byte big-endian body length followed by that many bytes of UTF-8 JSON.
//! The reader enforces a hard maximum per call site, so an unauthenticated peer can make
//! the SP allocate at most [`MAX_HELLO_LEN`] bytes.
//!
//! Two ways to read: [`read_frame`] reads exactly one frame and not a byte more (for a hello,
//! after which the stream may go to a raw byte splice with nothing lost); a [`Connection`]
//! owns a buffer, so its [`Connection::next`] is cancel-safe inside `select!` and a loop can
//! read and write frames on one stream without a reader task.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame a peer may send before it has authenticated (the `Hello`).
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// Largest frame on an authenticated control or API connection.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("connection closed without TLS close_notify")]
    ClosedAbruptly,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The connection broke (reset, cut mid-frame, closed without TLS close_notify), as
    /// opposed to the peer sending something that is not a frame.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            FrameError::Truncated | FrameError::ClosedAbruptly | FrameError::Io(_)
        )
    }
}

/// Reads one frame's raw JSON body. Returns `Ok(None)` on a clean end of stream
/// before the first byte of a frame.
pub async fn read_frame_bytes<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        // A TLS stream reports a peer that closed without close_notify as UnexpectedEof.
        let n = reader
            .read(&mut len_buf[filled..])
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof if filled == 0 => FrameError::ClosedAbruptly,
                std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                _ => FrameError::Io(e),
            })?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Reads and decodes one frame. `Ok(None)` means the peer closed cleanly between frames.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<Option<T>, FrameError> {
    match read_frame_bytes(reader, max_len).await? {
        Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
        None => Ok(None),
    }
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, msg)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Encodes and writes one frame with a single write, then flushes.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    write_encoded(writer, &encode_frame(msg)?).await
}

/// Encodes and writes frames back to back with a single write (one TLS record, one system
/// call), then flushes.
pub async fn write_frames<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    msgs: &[T],
) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    for msg in msgs {
        buf.extend_from_slice(&encode_frame(msg)?);
    }
    write_encoded(writer, &buf).await
}

async fn write_encoded<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &[u8],
) -> Result<(), FrameError> {
    writer.write_all(buf).await?;
    writer.flush().await?;
    Ok(())
}

/// A framed connection: frames read from a stream through a buffer it owns, and frames
/// written to it. [`next`](Connection::next) is cancel-safe: bytes already read when a
/// `select!` drops it stay in the buffer for the next call, so a loop can wait for a frame
/// and for other work at once. [`into_parts`](Connection::into_parts) hands back the stream
/// and any bytes read past the last frame.
pub struct Connection<S> {
    stream: S,
    /// Bytes read but not yet returned as frames.
    buf: Vec<u8>,
    max_len: usize,
}

impl<S> Connection<S> {
    /// Frames of more than `max_len` bytes are refused.
    pub fn new(stream: S, max_len: usize) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
            max_len,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream, and the bytes read from it that no frame has used.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// A whole frame's body at the front of the buffer, taken out of it.
    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_len,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// The next frame's raw body; `Ok(None)` when the peer closed cleanly between frames.
    /// Cancel-safe.
    pub async fn next_bytes(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if let Some(body) = self.take_frame()? {
                return Ok(Some(body));
            }
            self.buf.reserve(8 * 1024);
            let between_frames = self.buf.is_empty();
            // `read_buf` is cancel-safe: it either read bytes into `buf` or did nothing.
            let n = self.stream.read_buf(&mut self.buf).await.map_err(|e| {
                match e.kind() {
                    // A TLS stream reports a peer that closed without close_notify this way.
                    std::io::ErrorKind::UnexpectedEof if between_frames => {
                        FrameError::ClosedAbruptly
                    }
                    std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                    _ => FrameError::Io(e),
                }
            })?;
            if n == 0 {
                return if between_frames {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// The next frame, decoded; `Ok(None)` when the peer closed cleanly between frames.
    /// Cancel-safe. A frame that does not decode is an error, and the frames after it can
    /// still be read.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_bytes().await? {
            Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
            None => Ok(None),
        }
    }
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Writes one frame and flushes. Not cancel-safe: a frame cut off halfway breaks the
    /// stream, so call it in a `select!` branch's body, not as one of its futures.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        write_frame(&mut self.stream, msg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        text: String,
    }

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        let msg = Msg {
            text: "hello".into(),
        };
        write_frame(&mut buf, &msg).await.expect("write");
        write_frame(&mut buf, &msg).await.expect("write");
        let mut reader = buf.as_slice();
        for _ in 0..2 {
            let got: Option<Msg> = read_frame(&mut reader, 1024).await.expect("read");
            assert_eq!(got.as_ref(), Some(&msg));
        }
        let end: Option<Msg> = read_frame(&mut reader, 1024).await.expect("eof");
        assert!(end.is_none());
    }

    /// Fails every read the way a TLS stream reports a peer gone without close_notify.
    struct NoCloseNotify;

    impl AsyncRead for NoCloseNotify {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no close_notify");
            std::task::Poll::Ready(Err(eof))
        }
    }

    #[tokio::test]
    async fn a_peer_gone_without_close_notify_is_a_lost_connection() {
        let err = read_frame::<Msg, _>(&mut NoCloseNotify, 1024)
            .await
            .expect_err("an abrupt close is not a clean end");
        assert!(matches!(err, FrameError::ClosedAbruptly), "{err:?}");
        assert!(err.is_connection_lost());
        // Two bytes of a length prefix, then gone: cut mid-frame.
        let mut reader = tokio::io::AsyncReadExt::chain(&[0u8, 0][..], NoCloseNotify);
        let err = read_frame::<Msg, _>(&mut reader, 1024)
            .await
            .expect_err("cut mid-frame");
        assert!(matches!(err, FrameError::Truncated), "{err:?}");
        let malformed = read_frame::<Msg, _>(&mut &[0u8, 0, 0, 1, b'x'][..], 1024)
            .await
            .expect_err("not JSON");
        assert!(!malformed.is_connection_lost());
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocation() {
        let mut bytes = (u32::MAX).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let err = read_frame::<Msg, _>(&mut bytes.as_slice(), 1024)
            .await
            .expect_err("must refuse");
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_and_garbage_frames_are_errors() {
        let mut truncated = 10u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{\"te");
        let err = read_frame::<Msg, _>(&mut truncated.as_slice(), 1024)
            .await
            .expect_err("truncated");
        assert!(matches!(err, FrameError::Truncated), "{err}");

        let mut half_len: &[u8] = &[0, 0];
        let err = read_frame::<Msg, _>(&mut half_len, 1024)
            .await
            .expect_err("half length");
        assert!(matches!(err, FrameError::Truncated), "{err}");

        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0x00, 0x13, 0x37]);
        let err = read_frame::<Msg, _>(&mut garbage.as_slice(), 1024)
            .await
            .expect_err("garbage");
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }

    /// Hands out its bytes a few at a time, and is pending (as a socket with nothing to read
    /// is) before each chunk, so a reader is cancelled in the middle of frames.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        ready: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            self.ready = false;
            let end = (self.pos + 3).min(self.data.len());
            let chunk = self.data[self.pos..end].to_vec();
            buf.put_slice(&chunk);
            self.pos = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_connection_loses_nothing_when_next_is_cancelled() {
        let mut data = Vec::new();
        for i in 0..20 {
            let msg = Msg {
                text: format!("message {i}"),
            };
            write_frame(&mut data, &msg).await.expect("write");
        }
        data.extend_from_slice(b"raw tail");
        let mut conn = Connection::new(
            Trickle {
                data,
                pos: 0,
                ready: false,
            },
            1024,
        );
        let mut got = Vec::new();
        while got.len() < 20 {
            // Cancelled after every poll that made no frame: the bytes stay in the buffer.
            tokio::select! {
                biased;
                msg = conn.next::<Msg>() => got.push(msg.expect("frame").expect("not the end")),
                () = std::future::ready(()) => {}
            }
        }
        for (i, msg) in got.iter().enumerate() {
            assert_eq!(msg.text, format!("message {i}"));
        }
        // The bytes after the last frame come back with the stream.
        let (mut stream, mut leftover) = conn.into_parts();
        stream.read_to_end(&mut leftover).await.expect("rest");
        assert_eq!(leftover, b"raw tail");
    }

    #[tokio::test]
    async fn a_connection_refuses_oversized_and_cut_frames_and_skips_bad_ones() {
        let mut bytes = (2000u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let mut conn = Connection::new(bytes.as_slice(), 1024);
        let err = conn.next::<Msg>().await.expect_err("too large");
        assert!(
            matches!(err, FrameError::TooLarge { len: 2000, .. }),
            "{err}"
        );

        let mut bytes = vec![0, 0, 0, 1, b'x'];
        write_frame(&mut bytes, &Msg { text: "ok".into() })
            .await
            .expect("write");
        bytes.extend_from_slice(&[0, 0, 0, 9, b'{']);
        let mut conn = Connection::new(bytes.as_slice(), 1024);
        let err = conn.next::<Msg>().await.expect_err("not JSON");
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        let ok = conn.next::<Msg>().await.expect("next frame").expect("some");
        assert_eq!(ok.text, "ok");
        let err = conn.next::<Msg>().await.expect_err("cut");
        assert!(matches!(err, FrameError::Truncated), "{err}");

        let mut conn = Connection::new(&b""[..], 1024);
        assert!(conn.next::<Msg>().await.expect("clean end").is_none());
        let mut conn = Connection::new(NoCloseNotify, 1024);
        let err = conn.next::<Msg>().await.expect_err("abrupt");
        assert!(matches!(err, FrameError::ClosedAbruptly), "{err}");
    }
}
