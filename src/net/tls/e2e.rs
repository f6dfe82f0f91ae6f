//! The end-to-end channel of a session: after `ready`, the console and the tenant redirector
//! run a TLS 1.3 handshake with each other through the SP, which only copies the bytes.
//! Both sides authenticate by key, not by name or CA: the console accepts only the tenant
//! key it has pinned (or, the first time, the one the SP has on record), the tenant only the
//! console key the SP's grant names. Nothing is resumed: every session proves both keys.
//!
//! Also here: leaving the relay's own TLS at `ready` ([`leave_client`], [`leave_server`]),
//! and the long-lived key pairs of consoles and tenants ([`Identity`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{ClientStream, ReadAhead, ServerStream, provider};
use crate::wire::format_fingerprint;

/// The name both ends use inside the channel (keys are checked, names are not).
const INNER_NAME: &str = "e2e.rac.invalid";

/// Why the end-to-end channel could not be set up, or a key could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The tenant presented another key than the one pinned for it.
    #[error(
        "the tenant's key changed: pinned {pinned}, presented {presented}. Someone may be \
         between this console and the tenant (the SP itself, or whoever holds its keys). If \
         the tenant's server was reinstalled, forget the pin and connect again."
    )]
    TenantKeyChanged { pinned: String, presented: String },
    /// The tenant presented another key than the SP has on record (first contact).
    #[error(
        "the tenant presented key {presented}, but the SP has {on_record} on record for it; \
         refusing the session"
    )]
    NotTheRecordedKey {
        on_record: String,
        presented: String,
    },
    /// The console presented another key than the grant names.
    #[error("the console presented key {presented}, not the key {granted} the grant names")]
    NotTheGrantedKey { granted: String, presented: String },
    /// The peer's certificate could not be read.
    #[error("the peer's certificate is unreadable: {0}")]
    BadCertificate(String),
    /// The relay's TLS still held bytes at `ready`: the peer broke the protocol.
    #[error("{0}")]
    NotAtBoundary(&'static str),
    #[error("end-to-end handshake failed: {0}")]
    Handshake(String),
    #[error("{path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
}

/// SHA-256 of the SubjectPublicKeyInfo of a certificate's key: what identifies a console or
/// a tenant, whatever certificate wraps the key.
pub fn key_fingerprint(cert_der: &[u8]) -> Result<[u8; 32], E2eError> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| E2eError::BadCertificate(e.to_string()))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| E2eError::BadCertificate(e.to_string()))?;
    Ok(crate::wire::fingerprint(&spki))
}

/// A long-lived key pair (ECDSA P-256) and a self-signed certificate made for it each run.
pub struct Identity {
    /// The self-signed certificate and its key, ready to sign: parsed once, not per session.
    certified: Arc<rustls::sign::CertifiedKey>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", format_fingerprint(&self.fingerprint))
    }
}

impl Identity {
    /// A new key, kept only in memory (the lab, tests, benches).
    pub fn generate() -> Result<Self, E2eError> {
        let key = rcgen::KeyPair::generate().map_err(|e| E2eError::Key(e.to_string()))?;
        Self::from_key(key)
    }

    /// The key in `path` (PKCS#8 PEM), or a new one written there readable by its owner
    /// only. A key file others may read is made private, with a warning.
    pub fn load_or_create(path: &Path) -> Result<Self, E2eError> {
        let file_error = |source| E2eError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                tighten(path).map_err(file_error)?;
                let key = rcgen::KeyPair::from_pem(&pem)
                    .map_err(|e| E2eError::Key(format!("{}: {e}", path.display())))?;
                Self::from_key(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(|e| E2eError::Key(e.to_string()))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(file_error)?;
                }
                crate::util::files::write_private(path, key.serialize_pem().as_bytes())
                    .map_err(file_error)?;
                tracing::info!(path = %path.display(), "made a new end-to-end key");
                Self::from_key(key)
            }
            Err(e) => Err(file_error(e)),
        }
    }

    fn from_key(key: rcgen::KeyPair) -> Result<Self, E2eError> {
        let params = rcgen::CertificateParams::new(vec![INNER_NAME.to_string()])
            .map_err(|e| E2eError::Key(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| E2eError::Key(e.to_string()))?;
        let cert = cert.der().clone();
        let fingerprint = key_fingerprint(cert.as_ref())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| E2eError::Key(e.to_string()))?;
        Ok(Identity {
            certified: Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signer)),
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The fingerprint as hellos and grants carry it (`AB:CD:..`).
    pub fn fingerprint_text(&self) -> String {
        format_fingerprint(&self.fingerprint)
    }

    fn resolver(&self) -> Arc<rustls::sign::SingleCertAndKey> {
        Arc::new(rustls::sign::SingleCertAndKey::from(self.certified.clone()))
    }
}

fn tighten(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "key file was readable by others (mode {mode:o}); made it 0600");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Takes a client connection out of the relay's TLS at `ready`: the socket with whatever
/// the SP sent after its last record, as plain bytes.
pub fn leave_client(stream: ClientStream) -> Result<ReadAhead, E2eError> {
    let (mut io, mut conn) = stream.into_inner();
    let unsent = conn.wants_write();
    at_boundary(&mut conn.reader(), unsent)?;
    io.set_raw();
    Ok(io)
}

/// The SP's side of [`leave_client`].
pub fn leave_server(stream: ServerStream) -> Result<ReadAhead, E2eError> {
    let (mut io, mut conn) = stream.into_inner();
    let unsent = conn.wants_write();
    at_boundary(&mut conn.reader(), unsent)?;
    io.set_raw();
    Ok(io)
}

fn at_boundary(reader: &mut dyn std::io::Read, wants_write: bool) -> Result<(), E2eError> {
    if wants_write {
        return Err(E2eError::NotAtBoundary(
            "TLS records still unsent at ready (flush before leaving TLS)",
        ));
    }
    let mut byte = [0u8; 1];
    match reader.read(&mut byte) {
        Ok(0) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        _ => Err(E2eError::NotAtBoundary(
            "the peer sent data through the relay's TLS after its hello; the protocol allows none",
        )),
    }
}

/// The console's side of the handshake, begun before the session is asked for: its
/// ClientHello ([`client_hello`](Self::client_hello)) can go ahead in the hello, so a tenant
/// that takes it answers while its data connection opens (PROTOCOL.md, "The ClientHello sent
/// ahead"), and the console's answer follows at once after `ready`.
pub struct Dialing {
    conn: rustls::ClientConnection,
    config: Arc<rustls::ClientConfig>,
    verifier: Arc<TenantKeyVerifier>,
    client_hello: Vec<u8>,
}

impl Dialing {
    /// Makes the ClientHello (a fresh key share); nothing is sent yet.
    pub fn start(console: &Identity) -> Result<Self, E2eError> {
        let handshake = |e: rustls::Error| E2eError::Handshake(e.to_string());
        let verifier = Arc::new(TenantKeyVerifier {
            expected: Mutex::new(None),
            seen: Mutex::new(None),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(handshake)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(console.resolver());
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        let mut conn =
            rustls::ClientConnection::new(config.clone(), inner_name()?).map_err(handshake)?;
        let mut client_hello = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut client_hello)
                .map_err(|e| E2eError::Handshake(e.to_string()))?;
        }
        Ok(Dialing {
            conn,
            config,
            verifier,
            client_hello,
        })
    }

    /// The TLS records that open the handshake, to send ahead.
    pub fn client_hello(&self) -> &[u8] {
        &self.client_hello
    }

    /// Completes the handshake over `raw` (the connection after `ready`). `expected` is the
    /// pinned tenant key, or the one the SP has on record when nothing is pinned yet
    /// (`pinned` says which, for the error); `hello_sent`: the tenant has the ClientHello
    /// already (`ready` said so), else it goes first now. Returns the stream and the key the
    /// tenant presented.
    pub async fn finish(
        self,
        mut raw: ReadAhead,
        expected: Option<([u8; 32], bool)>,
        hello_sent: bool,
    ) -> Result<(ClientStream, [u8; 32]), E2eError> {
        use tokio::io::AsyncWriteExt;
        let Dialing {
            mut conn,
            config,
            verifier,
            client_hello,
        } = self;
        *crate::util::lock(&verifier.expected) = expected;
        if !hello_sent {
            raw.write_all(&client_hello)
                .await
                .map_err(|e| E2eError::Handshake(format!("sending the ClientHello: {e}")))?;
        }
        // tokio-rustls makes a connection of its own; the one that sent the ClientHello takes
        // its place before the handshake reads anything.
        let result = tokio_rustls::TlsConnector::from(config)
            .connect_with(inner_name()?, raw, |fresh| std::mem::swap(fresh, &mut conn))
            .await;
        match result {
            Ok(stream) => {
                let seen = crate::util::lock(&verifier.seen)
                    .take()
                    .ok_or_else(|| E2eError::Handshake("the tenant presented no key".into()))?;
                Ok((stream, seen))
            }
            Err(e) => Err(verifier.explain(e)),
        }
    }
}

fn inner_name() -> Result<ServerName<'static>, E2eError> {
    ServerName::try_from(INNER_NAME).map_err(|e| E2eError::Handshake(e.to_string()))
}

/// The console's side of the handshake over `raw` (the connection after `ready`), with the
/// ClientHello sent there. See [`Dialing::finish`].
pub async fn connect(
    raw: ReadAhead,
    console: &Identity,
    expected: Option<([u8; 32], bool)>,
) -> Result<(ClientStream, [u8; 32]), E2eError> {
    Dialing::start(console)?.finish(raw, expected, false).await
}

/// The tenant's side of the handshake, begun from a ClientHello that came ahead in
/// `open_data`: its answer ([`flight`](Self::flight)) is ready before the data connection
/// is, and goes out on it right after the tenant's hello.
pub struct Answering {
    conn: rustls::ServerConnection,
    config: Arc<rustls::ServerConfig>,
    verifier: Arc<ConsoleKeyVerifier>,
    flight: Vec<u8>,
    /// The ClientHello was refused; the flight holds the alert that says so.
    failed: Option<String>,
}

impl Answering {
    /// Reads the console's ClientHello and makes the answer (ServerHello to Finished, or the
    /// alert that refuses it).
    pub fn start(
        tenant: &Identity,
        console_key: [u8; 32],
        client_hello: &[u8],
    ) -> Result<Self, E2eError> {
        let (config, verifier) = server_config(tenant, console_key)?;
        let mut conn = rustls::ServerConnection::new(config.clone())
            .map_err(|e| E2eError::Handshake(e.to_string()))?;
        let mut input = client_hello;
        let mut failed = None;
        while !input.is_empty() && failed.is_none() {
            match conn.read_tls(&mut input) {
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        failed = Some(e.to_string());
                    }
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if failed.is_none() && conn.is_handshaking() && !conn.wants_write() {
            failed = Some("the ClientHello sent ahead is incomplete".into());
        }
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight)
                .map_err(|e| E2eError::Handshake(e.to_string()))?;
        }
        Ok(Answering {
            conn,
            config,
            verifier,
            flight,
            failed,
        })
    }

    /// What to send first on the data connection after the hello.
    pub fn flight(&self) -> &[u8] {
        &self.flight
    }

    /// Completes the handshake over `raw` (the data connection after `ready`), the flight
    /// already sent.
    pub async fn finish(self, raw: ReadAhead) -> Result<ServerStream, E2eError> {
        let Answering {
            mut conn,
            config,
            verifier,
            failed,
            ..
        } = self;
        if let Some(problem) = failed {
            return Err(E2eError::Handshake(problem));
        }
        let result = tokio_rustls::TlsAcceptor::from(config)
            .accept_with(raw, |fresh| std::mem::swap(fresh, &mut conn))
            .await;
        result.map_err(|e| verifier.explain(e))
    }
}

/// The tenant's TLS server for one session: TLS 1.3 only, no tickets, and only the console
/// key the grant names.
fn server_config(
    tenant: &Identity,
    console_key: [u8; 32],
) -> Result<(Arc<rustls::ServerConfig>, Arc<ConsoleKeyVerifier>), E2eError> {
    let verifier = Arc::new(ConsoleKeyVerifier {
        granted: console_key,
        presented: Mutex::new(None),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| E2eError::Handshake(e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(tenant.resolver());
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok((Arc::new(config), verifier))
}

/// The tenant's side: accepts the handshake over `raw` (the data connection after `ready`),
/// the ClientHello read there, only from the console key the grant names.
pub async fn accept(
    raw: ReadAhead,
    tenant: &Identity,
    console_key: [u8; 32],
) -> Result<ServerStream, E2eError> {
    let (config, verifier) = server_config(tenant, console_key)?;
    let result = tokio_rustls::TlsAcceptor::from(config).accept(raw).await;
    result.map_err(|e| verifier.explain(e))
}

/// The console's check of the tenant's certificate: its key, and that it signed the
/// handshake.
#[derive(Debug)]
struct TenantKeyVerifier {
    /// The key required and whether it is a pin (true) or the SP's record (false); known
    /// once `ready` is read, before the tenant's certificate is.
    expected: Mutex<Option<([u8; 32], bool)>>,
    seen: Mutex<Option<[u8; 32]>>,
}

impl TenantKeyVerifier {
    fn explain(&self, e: std::io::Error) -> E2eError {
        let seen = *crate::util::lock(&self.seen);
        let expected = *crate::util::lock(&self.expected);
        match (expected, seen) {
            (Some((want, pinned)), Some(got)) if want != got => {
                let (want, got) = (format_fingerprint(&want), format_fingerprint(&got));
                if pinned {
                    E2eError::TenantKeyChanged {
                        pinned: want,
                        presented: got,
                    }
                } else {
                    E2eError::NotTheRecordedKey {
                        on_record: want,
                        presented: got,
                    }
                }
            }
            _ => E2eError::Handshake(e.to_string()),
        }
    }
}

fn refused() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

impl ServerCertVerifier for TenantKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = key_fingerprint(end_entity.as_ref()).map_err(|_| refused())?;
        *crate::util::lock(&self.seen) = Some(got);
        match *crate::util::lock(&self.expected) {
            Some((want, _)) if want != got => Err(refused()),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken here".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::signature_schemes()
    }
}

/// The tenant's check of the console's certificate against the grant.
#[derive(Debug)]
struct ConsoleKeyVerifier {
    granted: [u8; 32],
    presented: Mutex<Option<[u8; 32]>>,
}

impl ConsoleKeyVerifier {
    fn explain(&self, e: std::io::Error) -> E2eError {
        match crate::util::lock(&self.presented).take() {
            Some(presented) if presented != self.granted => E2eError::NotTheGrantedKey {
                granted: format_fingerprint(&self.granted),
                presented: format_fingerprint(&presented),
            },
            _ => E2eError::Handshake(e.to_string()),
        }
    }
}

impl ClientCertVerifier for ConsoleKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = key_fingerprint(end_entity.as_ref()).map_err(|_| refused())?;
        *crate::util::lock(&self.presented) = Some(got);
        if got == self.granted {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not spoken here".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::signature_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A raw connected pair of ReadAhead streams, as the two ends see them after `ready`.
    async fn raw_pair() -> (ReadAhead, ReadAhead) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut a, mut b) = (
            ReadAhead::new(a.expect("connect")),
            ReadAhead::new(b.expect("accept").0),
        );
        a.set_raw();
        b.set_raw();
        (a, b)
    }

    #[tokio::test]
    async fn keys_that_match_carry_bytes_both_ways() {
        let (console, tenant) = (
            Identity::generate().expect("key"),
            Identity::generate().expect("key"),
        );
        let (c, t) = raw_pair().await;
        let want = console.fingerprint();
        let server = tokio::spawn(async move {
            let mut s = accept(t, &tenant, want).await.expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(b"world").await.expect("write");
            s.flush().await.expect("flush");
            (buf, tenant.fingerprint())
        });
        let (mut stream, seen) = connect(c, &console, None).await.expect("connect");
        stream.write_all(b"hello").await.expect("write");
        stream.flush().await.expect("flush");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"world");
        let (got, tenant_fp) = server.await.expect("server");
        assert_eq!(&got, b"hello");
        assert_eq!(seen, tenant_fp);
    }

    #[tokio::test]
    async fn another_tenant_key_than_the_pin_is_refused_and_named() {
        let (console, tenant) = (
            Identity::generate().expect("key"),
            Identity::generate().expect("key"),
        );
        let pinned = Identity::generate().expect("key").fingerprint();
        let (c, t) = raw_pair().await;
        let want = console.fingerprint();
        let _server = tokio::spawn(async move { accept(t, &tenant, want).await.map(|_| ()) });
        let Err(err) = connect(c, &console, Some((pinned, true))).await else {
            panic!("a tenant key other than the pin was accepted");
        };
        assert!(matches!(err, E2eError::TenantKeyChanged { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_console_key_the_grant_does_not_name_is_refused() {
        let (console, tenant) = (
            Identity::generate().expect("key"),
            Identity::generate().expect("key"),
        );
        let granted = Identity::generate().expect("key").fingerprint();
        let (c, t) = raw_pair().await;
        let server = tokio::spawn(async move { accept(t, &tenant, granted).await.map(|_| ()) });
        let client = connect(c, &console, None).await;
        let err = server.await.expect("task").expect_err("refused");
        assert!(matches!(err, E2eError::NotTheGrantedKey { .. }), "{err:?}");
        // The console learns nothing went through: its first read fails or ends.
        if let Ok((mut stream, _)) = client {
            let mut buf = [0u8; 1];
            assert!(!matches!(stream.read(&mut buf).await, Ok(n) if n > 0));
        }
    }

    #[test]
    fn a_key_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub").join("key.pem");
        let made = Identity::load_or_create(&path).expect("create");
        let again = Identity::load_or_create(&path).expect("load");
        assert_eq!(made.fingerprint(), again.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "not a key").expect("write");
        assert!(Identity::load_or_create(&path).is_err());
    }
}
