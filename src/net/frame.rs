//! Length-prefixed JSON frames: the one framing every message of the project uses.
//!
//! A frame is a 4-byte big-endian body length followed by that many bytes of UTF-8 JSON.
//! The reader enforces a hard maximum per call site, so an unauthenticated peer can make
//! the SP allocate at most [`MAX_HELLO_LEN`] bytes. Reads use `read_exact`, never a read-ahead
//! buffer, so after the last frame the stream can be handed to a raw byte splice with
//! nothing lost.

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
    let buf = encode_frame(msg)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
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
}
