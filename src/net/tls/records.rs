//! A TLS 1.3 connection carried on without rustls' connection object once the handshake
//! and the first frames are done.
//!
//! Why: an idle tenant control connection inside rustls keeps a 4 KiB receive buffer, the
//! connection state machine and tokio-rustls' stream around for as long as the tenant stays
//! connected; with 15,000 tenants that was most of the SP's memory. Here rustls hands over its
//! traffic keys ([`rustls::ServerConnection::dangerous_extract_secrets`], the API made for
//! kernel TLS) and the connection keeps only the two record keys, two sequence numbers and the
//! socket. Buffers exist only while a record is in flight.
//!
//! The record protection itself (nonce from IV and sequence number, additional data, inner
//! content type and padding) stays rustls' own code: [`MessageEncrypter`] and
//! [`MessageDecrypter`] of the negotiated suite. This module only cuts the byte stream into
//! records (RFC 8446 §5.1) and decides what each content type means after the handshake:
//! application data is passed on, `close_notify` ends the stream, any other alert and any
//! post-handshake handshake message (a `KeyUpdate`, say) end the connection with an error
//! that names it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::ServerStream;

/// Record header: content type, legacy version, length.
const HEADER_LEN: usize = 5;
/// Largest plaintext in one record (2^14).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest encrypted record body a peer may send (2^14 + 256, RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Once reads come back full, read this much at once.
const STREAMING_READ: usize = 64 * 1024;
/// Otherwise read at least this much: a control frame's record (a ping is about 60 bytes)
/// arrives in one system call, and a read that comes back short tells tokio the socket is
/// drained, so the next read waits for readiness instead of calling `recv` again.
const SMALL_READ: usize = 512;

const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_LEVEL_WARNING: u8 = 1;

/// Takes a server connection whose handshake is complete and whose outgoing records are all
/// written, and splits it into a reader and a writer that carry on its record layer.
///
/// Plaintext rustls already decrypted but nobody read, and bytes read ahead from the socket,
/// are carried over. A record the peer had only partly sent when rustls last read the socket
/// cannot be: the SP takes over only where the protocol has the peer waiting for the SP's
/// reply (see PROTOCOL.md), and a peer that sends early anyway is cut off by a failed record.
pub fn take_over(stream: ServerStream) -> io::Result<(RecordReader, RecordWriter)> {
    take_over_onto(stream, None)
}

/// [`take_over`], the socket moved to the reactor of `runtime` (when given): the halves are
/// then polled on that runtime only.
pub fn take_over_onto(
    stream: ServerStream,
    runtime: Option<&tokio::runtime::Handle>,
) -> io::Result<(RecordReader, RecordWriter)> {
    let (io, mut conn) = stream.into_inner();
    let suite = match conn.negotiated_cipher_suite() {
        Some(SupportedCipherSuite::Tls13(suite)) => suite,
        _ => return Err(io::Error::other("not a TLS 1.3 connection")),
    };
    let mut unread = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match io::Read::read(&mut conn.reader(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => unread.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let (tx_key, tx_iv) = key_and_iv(tx)?;
    let (rx_key, rx_iv) = key_and_iv(rx)?;
    let limit = suite.common.confidentiality_limit;
    let (tcp, ahead) = io.into_parts();
    let tcp = match runtime {
        Some(runtime) => {
            let socket = tcp.into_std()?;
            let _in_runtime = runtime.enter();
            tokio::net::TcpStream::from_std(socket)?
        }
        None => tcp,
    };
    let (read_half, write_half) = tcp.into_split();
    let plain_len = unread.len();
    // The carried-over plaintext first, then the bytes read ahead, as if just read.
    let buf = [unread, ahead].concat();
    let reader = RecordReader {
        tcp: read_half,
        decrypter: suite.aead_alg.decrypter(rx_key, rx_iv),
        seq: rx_seq,
        filled: buf.len(),
        buf,
        plain: 0..plain_len,
        next: plain_len,
        streaming: false,
        closed: false,
    };
    let writer = RecordWriter {
        tcp: write_half,
        encrypter: suite.aead_alg.encrypter(tx_key, tx_iv),
        seq: tx_seq,
        limit,
        out: Vec::new(),
        written: 0,
        close_sent: false,
    };
    Ok((reader, writer))
}

fn key_and_iv(
    secrets: ConnectionTrafficSecrets,
) -> io::Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv)> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(io::Error::other(
            "unsupported cipher for a record connection",
        )),
    }
}

fn protocol_error(text: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text.into())
}

/// The receiving half: decrypts records and reads as a plain byte stream.
pub struct RecordReader {
    tcp: OwnedReadHalf,
    decrypter: Box<dyn MessageDecrypter>,
    seq: u64,
    /// Bytes from the socket, valid up to `filled`. `buf[plain]` is decrypted plaintext
    /// not yet read; `buf[next..filled]` is ciphertext not yet decrypted.
    buf: Vec<u8>,
    filled: usize,
    plain: std::ops::Range<usize>,
    next: usize,
    /// The last socket read filled what it was offered: read big from now on.
    streaming: bool,
    /// `close_notify` received: the stream has ended.
    closed: bool,
}

impl RecordReader {
    /// Decrypts the record at `buf[next..]` if it is all there. `Ok(false)`: more bytes needed.
    fn open_record(&mut self) -> io::Result<bool> {
        let pending = &self.buf[self.next..self.filled];
        if pending.len() < HEADER_LEN {
            return Ok(false);
        }
        let (typ, version, len) = (
            pending[0],
            u16::from_be_bytes([pending[1], pending[2]]),
            u16::from_be_bytes([pending[3], pending[4]]) as usize,
        );
        if typ != u8::from(ContentType::ApplicationData) || version != 0x0303 {
            return Err(protocol_error(format!(
                "not a TLS 1.3 record (type {typ}, version {version:#06x})"
            )));
        }
        if len > MAX_CIPHERTEXT {
            return Err(protocol_error(format!(
                "TLS record of {len} bytes exceeds {MAX_CIPHERTEXT}"
            )));
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(false);
        }
        let body_start = self.next + HEADER_LEN;
        let body = &mut self.buf[body_start..body_start + len];
        let message =
            InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, body);
        let plain = self
            .decrypter
            .decrypt(message, self.seq)
            .map_err(|e| protocol_error(format!("TLS record rejected: {e}")))?;
        self.seq += 1;
        let (typ, payload_len) = (plain.typ, plain.payload.len());
        // Decryption is in place: the plaintext starts where the body did.
        let payload = body_start..body_start + payload_len;
        self.next = body_start + len;
        match typ {
            ContentType::ApplicationData => self.plain = payload,
            ContentType::Alert => {
                let alert = &self.buf[payload];
                if alert.len() == 2 && alert[1] == ALERT_CLOSE_NOTIFY {
                    self.closed = true;
                } else {
                    return Err(protocol_error(format!("peer sent TLS alert {alert:?}")));
                }
            }
            ContentType::Handshake => {
                let kind = self.buf.get(payload.start).copied().unwrap_or_default();
                return Err(protocol_error(format!(
                    "peer sent a TLS handshake message (type {kind}) after the handshake; \
                     key updates are not supported on this connection"
                )));
            }
            other => {
                return Err(protocol_error(format!(
                    "unexpected TLS content type {other:?}"
                )));
            }
        }
        Ok(true)
    }

    /// Reads more ciphertext from the socket. `Ok(false)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // Keep only the partial record, at the front.
        if self.next > 0 {
            self.buf.copy_within(self.next..self.filled, 0);
            self.filled -= self.next;
            self.next = 0;
            self.plain = 0..0;
        }
        let needed = match self.buf[..self.filled].get(3..5) {
            Some(len) => HEADER_LEN + u16::from_be_bytes([len[0], len[1]]) as usize,
            None => HEADER_LEN,
        }
        .saturating_sub(self.filled)
        .max(1);
        let want = needed.max(if self.streaming {
            STREAMING_READ
        } else {
            SMALL_READ
        });
        if self.buf.len() < self.filled + want {
            self.buf.resize(self.filled + want, 0);
        }
        let mut space = ReadBuf::new(&mut self.buf[self.filled..]);
        match Pin::new(&mut self.tcp).poll_read(cx, &mut space) {
            Poll::Pending => {
                if self.filled == 0 && !self.streaming {
                    // Nothing in flight: an idle connection holds no buffer.
                    self.buf = Vec::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let (n, offered) = (space.filled().len(), space.capacity());
                self.filled += n;
                self.streaming = n == offered && n > 0;
                Poll::Ready(Ok(n > 0))
            }
        }
    }
}

impl AsyncRead for RecordReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = out.remaining().min(this.plain.len());
                out.put_slice(&this.buf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.open_record()? {
                continue;
            }
            if !ready!(this.poll_fill(cx))? {
                return Poll::Ready(if this.filled > this.next {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a TLS record",
                    ))
                } else {
                    // Closed without close_notify: the frame codec above still notices
                    // an end in the middle of a frame.
                    Ok(())
                });
            }
        }
    }
}

/// The sending half: each write becomes one record of up to 16 KiB.
pub struct RecordWriter {
    tcp: OwnedWriteHalf,
    encrypter: Box<dyn MessageEncrypter>,
    seq: u64,
    /// Records allowed under these keys (the suite's confidentiality limit).
    limit: u64,
    /// An encrypted record not yet fully written, and how much of it is.
    out: Vec<u8>,
    written: usize,
    close_sent: bool,
}

impl RecordWriter {
    fn seal(&mut self, typ: ContentType, plaintext: &[u8]) -> io::Result<()> {
        if self.seq >= self.limit {
            return Err(io::Error::other(
                "this connection's TLS keys are used up; reconnect",
            ));
        }
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(plaintext),
        };
        let record = self
            .encrypter
            .encrypt(message, self.seq)
            .map_err(io::Error::other)?;
        self.seq += 1;
        self.out = record.encode();
        self.written = 0;
        Ok(())
    }

    /// Writes what is left of the pending record.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RecordWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_PLAINTEXT);
        this.seal(ContentType::ApplicationData, &buf[..n])?;
        // The bytes are taken: a socket that cannot take them now gets them on the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            this.seal(
                ContentType::Alert,
                &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
            )?;
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::net::tls::{ClientStream, ReadAhead, TlsAcceptor, TlsClient, Trust};

    /// A TLS server and client on loopback with the SP's own certificate setup; the server
    /// has read `greeting` through rustls and handed the connection over.
    struct Pair {
        reader: RecordReader,
        writer: RecordWriter,
        client: ClientStream,
    }

    async fn pair(greeting: &[u8], sent_after_greeting: &[u8]) -> Pair {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = crate::sp::pki::generate(&[]).expect("certificates");
        let chain = dir.path().join("chain.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(
            &chain,
            format!("{}{}", certs.server_cert_pem, certs.ca_cert_pem),
        )
        .expect("chain");
        std::fs::write(&key, &certs.server_key_pem).expect("key");
        let acceptor: TlsAcceptor = super::super::server_acceptor(&chain, &key).expect("acceptor");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &certs.ca_cert_pem).expect("ca");
        let client_tls = TlsClient::new(&Trust::CaFile(ca), "localhost").expect("client");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let greeting_len = greeting.len();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor
                .accept(ReadAhead::new(tcp))
                .await
                .expect("handshake");
            let mut got = vec![0u8; greeting_len];
            stream.read_exact(&mut got).await.expect("greeting");
            stream.write_all(b"welcome").await.expect("welcome");
            stream.flush().await.expect("flush");
            (got, take_over(stream).expect("take over"))
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut client = client_tls.handshake(tcp).await.expect("client handshake");
        // The greeting and what follows it in one write: both arrive before the take-over.
        client
            .write_all(&[greeting, sent_after_greeting].concat())
            .await
            .expect("greeting");
        client.flush().await.expect("flush");
        let mut welcome = [0u8; 7];
        client.read_exact(&mut welcome).await.expect("welcome");
        assert_eq!(&welcome, b"welcome");
        let (got, (reader, writer)) = server.await.expect("server task");
        assert_eq!(got, greeting);
        Pair {
            reader,
            writer,
            client,
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_after_the_take_over() {
        let mut p = pair(b"hello", b"early").await;
        // Bytes the peer sent right behind the greeting were decrypted by rustls and are
        // carried over.
        let mut early = [0u8; 5];
        p.reader.read_exact(&mut early).await.expect("early bytes");
        assert_eq!(&early, b"early");

        // Larger than one record, both ways.
        let big = pattern(100_000);
        p.client.write_all(&big).await.expect("client write");
        p.client.flush().await.expect("flush");
        let mut got = vec![0u8; big.len()];
        p.reader.read_exact(&mut got).await.expect("server read");
        assert_eq!(got, big);

        p.writer.write_all(&big).await.expect("server write");
        p.writer.flush().await.expect("flush");
        let mut got = vec![0u8; big.len()];
        p.client.read_exact(&mut got).await.expect("client read");
        assert_eq!(got, big);

        // close_notify both ways is a clean end of stream.
        p.writer.shutdown().await.expect("server shutdown");
        assert_eq!(p.client.read(&mut got).await.expect("client eof"), 0);
        p.client.shutdown().await.expect("client shutdown");
        assert_eq!(p.reader.read(&mut got).await.expect("server eof"), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let mut p = pair(b"hello", b"").await;
        p.client.write_all(b"ping").await.expect("write");
        p.client.flush().await.expect("flush");
        let mut got = [0u8; 4];
        p.reader.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        // The next read finds nothing and waits: the buffer is gone meanwhile.
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            p.reader.read(&mut got),
        )
        .await;
        assert!(waited.is_err(), "nothing was sent, the read must wait");
        assert_eq!(p.reader.buf.capacity(), 0);
        p.writer.write_all(b"pong").await.expect("write");
        p.writer.flush().await.expect("flush");
        assert!(p.writer.out.capacity() == 0);
        p.client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
    }

    /// Writes raw bytes under the client's TLS layer, as a broken or hostile peer would.
    fn inject(client: &ClientStream, bytes: &[u8]) {
        let tcp = client.get_ref().0.get_ref();
        assert_eq!(tcp.try_write(bytes).expect("raw write"), bytes.len());
    }

    async fn read_error(reader: &mut RecordReader) -> String {
        let mut buf = [0u8; 16];
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read(&mut buf))
            .await
            .expect("the reader must not hang")
            .expect_err("the record must be refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        err.to_string()
    }

    #[tokio::test]
    async fn forged_and_malformed_records_are_refused() {
        let mut p = pair(b"hello", b"").await;
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend(pattern(40));
        inject(&p.client, &forged);
        let err = read_error(&mut p.reader).await;
        assert!(err.contains("TLS record rejected"), "{err}");

        let mut p = pair(b"hello", b"").await;
        inject(&p.client, &[23, 3, 3, 0xff, 0xff]);
        let err = read_error(&mut p.reader).await;
        assert!(err.contains("exceeds"), "{err}");

        let mut p = pair(b"hello", b"").await;
        inject(&p.client, &[22, 3, 1, 0, 4, 1, 2, 3, 4]);
        let err = read_error(&mut p.reader).await;
        assert!(err.contains("not a TLS 1.3 record"), "{err}");
    }

    #[tokio::test]
    async fn a_key_update_ends_the_connection_with_a_reason() {
        let mut p = pair(b"hello", b"").await;
        p.client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        p.client.write_all(b"after").await.expect("write");
        p.client.flush().await.expect("flush");
        let err = read_error(&mut p.reader).await;
        assert!(err.contains("key updates are not supported"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_mid_record_is_an_error_not_an_end() {
        let mut p = pair(b"hello", b"").await;
        inject(&p.client, &[23, 3, 3, 0, 40, 1, 2, 3]);
        drop(p.client);
        let mut buf = [0u8; 16];
        let err = p.reader.read(&mut buf).await.expect_err("truncated record");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
