//! TLS 1.3 for every hop, and the only module that imports rustls. The SP serves its
//! certificate chain; clients trust the SP's CA file or a pinned SHA-256 fingerprint.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::wire::{fingerprint, format_fingerprint};

pub mod e2e;
mod rdp;
mod records;
pub mod tickets;
pub use rdp::{DesktopCertificate, RdpTlsStream, desktop_client_upgrade, desktop_server_acceptor};
pub use records::{RecordReader, RecordWriter, take_over, take_over_onto};

pub use tokio_rustls::TlsAcceptor;
pub type ServerStream<S = ReadAhead> = tokio_rustls::server::TlsStream<S>;
pub type ClientStream = tokio_rustls::client::TlsStream<ReadAhead>;

/// Certificate and key problems: always an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The one crypto provider, made once: every session's end-to-end handshake builds its own
/// configurations from it.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(make_provider).clone()
}

fn make_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first (rustls' default order starts with AES-256): 10 AES rounds instead of
    // 14 per block, and a relayed byte goes through four AES-GCM passes. Still TLS 1.3 AEAD.
    provider
        .cipher_suites
        .sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            _ => 2,
        });
    Arc::new(provider)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The SP's acceptor: server chain (server certificate, then CA) and key from PEM files,
/// with a ticket key of this process only (tests, tools).
pub fn server_acceptor(chain_pem: &Path, key_pem: &Path) -> Result<TlsAcceptor, TlsError> {
    let tickets = tickets::TicketKey::generate()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    server_acceptor_with_tickets(chain_pem, key_pem, tickets)
}

/// The SP's acceptor with the ticket key of its state dir, so that tenants reconnecting
/// after a restart resume their TLS sessions.
pub fn server_acceptor_with_tickets(
    chain_pem: &Path,
    key_pem: &Path,
    tickets: tickets::TicketKey,
) -> Result<TlsAcceptor, TlsError> {
    let chain = read_certs(chain_pem)?;
    let key = read_key(key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // Stateless session tickets: resumed handshakes (tenant data connections, reconnects
    // after a restart) skip the certificate signature and its check, and the SP keeps no
    // per-client session cache.
    config.ticketer = Arc::new(tickets);
    config.send_tls13_tickets = 1;
    // Long-lived idle connections carry on without rustls' connection state (`records`).
    config.enable_secret_extraction = true;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The admin listener's acceptor for mutual TLS: the SP's chain and key, and a client
/// certificate that chains to the CA in `client_ca_pem` required of every client (no
/// tickets, no secret extraction: a few admin connections, served by rustls to the end).
pub fn mutual_acceptor(
    chain_pem: &Path,
    key_pem: &Path,
    client_ca_pem: &Path,
) -> Result<TlsAcceptor, TlsError> {
    let chain = read_certs(chain_pem)?;
    let key = read_key(key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(client_ca_pem)? {
        roots.add(ca)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // The admin listener speaks HTTP/1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How a client decides to trust the SP.
#[derive(Clone, PartialEq, Eq)]
pub enum Trust {
    /// The SP's CA certificate (PEM file).
    CaFile(std::path::PathBuf),
    /// The SHA-256 of the SP's CA certificate (then the chain and name are verified against
    /// that CA alone) or of its server certificate (then exactly that certificate is accepted).
    Pinned([u8; 32]),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::CaFile(path) => write!(f, "CaFile({})", path.display()),
            Trust::Pinned(fp) => write!(f, "Pinned({})", format_fingerprint(fp)),
        }
    }
}

/// A client TLS configuration, shared by all connections of one client so that TLS
/// sessions are resumed.
#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

impl TlsClient {
    /// `server_name` is the name the SP's certificate must carry (`localhost`, an IP, a DNS name).
    pub fn new(trust: &Trust, server_name: &str) -> Result<Self, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let config = match trust {
            Trust::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pinned(fingerprint) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(*fingerprint)))
                .with_no_client_auth(),
        };
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|_| {
            TlsError::Config(rustls::Error::General(format!(
                "{server_name:?} is not a valid server name"
            )))
        })?;
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the client handshake on a connected socket.
    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<ClientStream> {
        tcp.set_nodelay(true)?;
        self.connector
            .connect(self.server_name.clone(), ReadAhead::new(tcp))
            .await
            .map_err(describe_handshake_error)
    }
}

/// The TLS facts a console shows on its Connection tab.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// SHA-256 of the SP's end-entity certificate.
    pub peer_fingerprint: String,
    pub resumed: bool,
}

/// Reads the negotiated parameters of a client connection.
pub fn client_info(stream: &ClientStream) -> TlsInfo {
    let conn = stream.get_ref().1;
    TlsInfo {
        version: conn
            .protocol_version()
            .map(|v| format!("{v:?}").replace("TLSv1_3", "TLS 1.3"))
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        peer_fingerprint: conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| format_fingerprint(&fingerprint(cert.as_ref())))
            .unwrap_or_default(),
        resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
    }
}

/// A failed TLS handshake, in words a user acts on; carried inside the `io::Error` that
/// [`TlsClient::handshake`] returns, so a caller can tell a refused certificate apart.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("certificate not trusted: the SP's certificate failed verification ({0})")]
    Untrusted(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// Turns rustls' errors inside an io::Error into a [`HandshakeError`].
fn describe_handshake_error(err: std::io::Error) -> std::io::Error {
    let described = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|tls| match tls {
            rustls::Error::InvalidCertificate(reason) => {
                HandshakeError::Untrusted(format!("{reason:?}"))
            }
            other => HandshakeError::Tls(other.to_string()),
        });
    match described {
        Some(described) => std::io::Error::new(err.kind(), described),
        None => err,
    }
}

/// SHA-256 of the first certificate in a PEM file (what `rac sp init` shows for pinning).
pub fn pem_fingerprint(path: &Path) -> Result<String, TlsError> {
    let certs = read_certs(path)?;
    Ok(format_fingerprint(&fingerprint(certs[0].as_ref())))
}

/// First contact with an SP that is trusted by fingerprint: fetches the certificate chain it
/// presents and returns the SHA-256 of its last certificate (the SP's CA, as `rac sp init`
/// prints it) for the operator to compare and confirm. Nothing is trusted or sent: the
/// handshake is abandoned as soon as the chain is seen.
pub async fn probe_fingerprint(address: &str, server_name: &str) -> std::io::Result<String> {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .dangerous()
        // A pin nothing matches: the handshake stops after the chain has been noted.
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
            seen: Some(seen.clone()),
            ..PinnedVerifier::new([0; 32])
        }))
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).map_err(|_| {
        std::io::Error::other(format!("{server_name:?} is not a valid server name"))
    })?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect(address),
    )
    .await
    .map_err(|_| std::io::Error::other(format!("{address} did not answer")))??;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        connector.connect(name, tcp),
    )
    .await;
    let last = crate::util::lock(&seen).take();
    last.map(|fp| format_fingerprint(&fp)).ok_or_else(|| {
        std::io::Error::other(format!("{address} did not present a TLS certificate"))
    })
}

/// A TLS 1.2 handshake signature, checked against the certificate's key: what every
/// verifier here does once it has accepted the certificate itself.
fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// [`tls12_signature`] for TLS 1.3.
fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// The signature schemes the verifiers accept.
fn signature_schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Trusts the SP by a pinned SHA-256 fingerprint.
///
/// A pin names one certificate, and that certificate must be the one that vouches for the key
/// the handshake is signed with:
/// - a pin equal to the end-entity certificate accepts exactly that certificate;
/// - a pin equal to a CA certificate in the chain makes that CA the *only* trust root, and the
///   chain, its validity dates and the server name are verified against it by rustls' WebPKI
///   verifier, as for a CA file.
///
/// Finding the pinned certificate anywhere in the chain is not enough: the SP's CA certificate
/// is public (every handshake sends it), so a man in the middle could present its own leaf with
/// the real CA beside it.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The WebPKI verifier rooted at the pinned CA, made the first time a handshake shows that
    /// certificate (the pin is only its hash).
    anchored: std::sync::OnceLock<Arc<rustls::client::WebPkiServerVerifier>>,
    /// For `probe_fingerprint`: where to note the last certificate of the chain presented.
    seen: Option<Arc<std::sync::Mutex<Option<[u8; 32]>>>>,
}

impl PinnedVerifier {
    fn new(fingerprint: [u8; 32]) -> Self {
        PinnedVerifier {
            fingerprint,
            provider: provider(),
            anchored: std::sync::OnceLock::new(),
            seen: None,
        }
    }

    /// The verifier whose only root is `ca` (a certificate whose hash is the pin).
    fn anchored_at(
        &self,
        ca: &CertificateDer<'_>,
    ) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        if let Some(verifier) = self.anchored.get() {
            return Ok(verifier.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        Ok(self.anchored.get_or_init(|| verifier).clone())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(seen) = &self.seen {
            let last = intermediates.last().unwrap_or(end_entity);
            *crate::util::lock(seen) = Some(fingerprint(last.as_ref()));
        }
        if fingerprint(end_entity.as_ref()) == self.fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(ca) = intermediates
            .iter()
            .find(|cert| fingerprint(cert.as_ref()) == self.fingerprint)
        else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        };
        self.anchored_at(ca)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

/// How much [`ReadAhead`] reads from the socket at once.
pub const READ_AHEAD: usize = 64 * 1024;

/// A TCP stream that serves rustls' small reads from one large socket read.
///
/// rustls reads TLS records from the socket at most 4 KiB at a time, so a 16 KiB record cost
/// four `read` calls; through the relay (three TLS receivers per byte) those calls were a
/// large share of the CPU per byte. Here, once a read comes back full (a stream is flowing),
/// one `read` takes up to [`READ_AHEAD`] bytes and the small reads are copied out of that
/// buffer. The buffer exists only while data flows: it is freed when the socket has nothing
/// more to give, so an idle connection (thousands of tenant control connections) holds none
/// and a heartbeat frame is read without allocating.
///
/// While the stream carries the relay's own TLS (every connection to the SP port, from the
/// first byte to `ready`), it hands rustls one TLS record at a time and never a byte past
/// the end of a record ([`RecordCursor`]). So when a session leaves that TLS after `ready`,
/// nothing of the end-to-end channel that follows has been swallowed by rustls: it is all
/// still here, and [`set_raw`](Self::set_raw) lets it through as plain bytes.
pub struct ReadAhead {
    tcp: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    /// `Some` while record-bounded.
    records: Option<RecordCursor>,
}

/// Where a TLS byte stream is between record boundaries: collecting a 5-byte record header,
/// or inside a record body.
#[derive(Debug, Default, Clone, Copy)]
struct RecordCursor {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl RecordCursor {
    /// How many bytes may be handed out before the next boundary.
    fn allowance(&self) -> usize {
        if self.body_left > 0 {
            self.body_left
        } else {
            5 - self.header_len
        }
    }

    /// Notes bytes handed out (at most [`allowance`](Self::allowance) of them).
    fn consume(&mut self, bytes: &[u8]) {
        if self.body_left > 0 {
            self.body_left -= bytes.len();
            return;
        }
        self.header[self.header_len..self.header_len + bytes.len()].copy_from_slice(bytes);
        self.header_len += bytes.len();
        if self.header_len == 5 {
            self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            self.header_len = 0;
        }
    }
}

impl ReadAhead {
    /// A stream that starts record-bounded (it is about to carry TLS).
    pub fn new(tcp: TcpStream) -> Self {
        ReadAhead {
            tcp,
            buf: Vec::new(),
            pos: 0,
            records: Some(RecordCursor::default()),
        }
    }

    /// From here on the stream is plain bytes: reads are no longer cut at record boundaries.
    /// Call it only at a record boundary (after TLS was taken apart at one).
    pub fn set_raw(&mut self) {
        self.records = None;
    }

    /// The socket underneath.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// The socket and the bytes read from it that nobody has taken yet.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let mut rest = self.buf;
        rest.drain(..self.pos);
        (self.tcp, rest)
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.records.is_some() {
            return this.poll_read_record_bounded(cx, out);
        }
        loop {
            if this.pos < this.buf.len() {
                let n = out.remaining().min(this.buf.len() - this.pos);
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.buf.len() {
                    // Keep the allocation while data flows; a dry socket below frees it.
                    this.buf.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.buf.capacity() == 0 || out.remaining() >= READ_AHEAD {
                // Not streaming (or a big read anyway): read straight into the caller's
                // buffer. Only a read that fills it suggests a stream worth buffering.
                let before = out.filled().len();
                let wanted = out.remaining();
                let result = std::pin::Pin::new(&mut this.tcp).poll_read(cx, out);
                if matches!(result, Poll::Ready(Ok(()))) && out.filled().len() - before == wanted {
                    this.buf.reserve_exact(READ_AHEAD);
                }
                return result;
            }
            if this.tcp.poll_read_ready(cx)?.is_pending() {
                this.buf = Vec::new();
                return Poll::Pending;
            }
            match this.tcp.try_read_buf(&mut this.buf) {
                // End of stream: nothing was added, and the caller sees no bytes.
                Ok(0) => {
                    this.buf = Vec::new();
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    this.buf = Vec::new();
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl ReadAhead {
    /// Reads from the socket into the buffer and hands out no more than the rest of the
    /// current record (or of its header). Only the handshake and the relay's few frames come
    /// this way, so the buffer is freed whenever it is emptied.
    fn poll_read_record_bounded(
        &mut self,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let Some(cursor) = self.records.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if self.pos < self.buf.len() {
                let n = out
                    .remaining()
                    .min(self.buf.len() - self.pos)
                    .min(cursor.allowance());
                let bytes = &self.buf[self.pos..self.pos + n];
                cursor.consume(bytes);
                out.put_slice(bytes);
                self.pos += n;
                if self.pos == self.buf.len() {
                    self.buf = Vec::new();
                    self.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if self.tcp.poll_read_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
            self.buf.reserve(16 * 1024 + 5);
            match self.tcp.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    self.buf = Vec::new();
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Nothing came: an idle connection holds no buffer while it waits.
                    self.buf = Vec::new();
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Any stream the splice and the frame codec accept.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
    }

    fn verify(
        pin: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("name");
        PinnedVerifier::new(fingerprint(pin.as_ref())).verify_server_cert(
            &chain[0],
            &chain[1..],
            &name,
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn a_pinned_ca_is_the_only_root_and_the_name_is_checked() {
        let sp = crate::sp::pki::generate(&[]).expect("sp certificates");
        let attacker = crate::sp::pki::generate(&[]).expect("attacker certificates");
        let (ca, leaf) = (der(&sp.ca_cert_pem), der(&sp.server_cert_pem));
        let forged = der(&attacker.server_cert_pem);

        assert!(verify(&ca, &[leaf.clone(), ca.clone()], "localhost").is_ok());
        // The real CA beside a leaf it never signed is no pin match.
        assert!(verify(&ca, &[forged.clone(), ca.clone()], "localhost").is_err());
        // A leaf the CA signed, but for another name.
        assert!(verify(&ca, &[leaf.clone(), ca.clone()], "sp.example.net").is_err());
    }

    #[test]
    fn a_pinned_leaf_accepts_exactly_that_leaf() {
        let sp = crate::sp::pki::generate(&[]).expect("sp certificates");
        let attacker = crate::sp::pki::generate(&[]).expect("attacker certificates");
        let (ca, leaf) = (der(&sp.ca_cert_pem), der(&sp.server_cert_pem));
        let forged = der(&attacker.server_cert_pem);

        assert!(verify(&leaf, &[leaf.clone(), ca.clone()], "localhost").is_ok());
        // The pinned leaf tucked in as an "intermediate" vouches for nothing.
        assert!(verify(&leaf, &[forged, leaf.clone(), ca], "localhost").is_err());
    }
}
