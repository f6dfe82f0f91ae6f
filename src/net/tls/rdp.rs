//! TLS for remote desktops. RDP runs inside a session's stream and negotiates its own TLS in
//! the middle of its handshake (X.224 first, then the upgrade), with certificates that are
//! self-signed as a rule: the relay's TLS (the SP's CA) protects the hops, and RDP's TLS is
//! the end-to-end layer between the console and the desktop. A client here accepts whatever
//! certificate the desktop shows and reports its SHA-256 (pinning it per tenant is the
//! caller's business); the handshake signature is still checked, so the certificate's key is
//! the one CredSSP binds to. TLS 1.2 is allowed beside 1.3: most RDP servers speak 1.2.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{TlsAcceptor, TlsError, provider};
use crate::wire::fingerprint;

/// The TLS stream a desktop client runs RDP over, after the upgrade.
pub type RdpTlsStream<S> = tokio_rustls::client::TlsStream<S>;

/// What the desktop's certificate says, for CredSSP and for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopCertificate {
    /// The certificate's subjectPublicKey bits: CredSSP proves the password was sent to the
    /// holder of this key.
    pub public_key: Vec<u8>,
    /// SHA-256 of the certificate's DER, what a console shows and pins.
    pub fingerprint: [u8; 32],
}

/// Runs the client side of RDP's TLS upgrade on `stream`.
pub async fn desktop_client_upgrade<S>(
    stream: S,
    server_name: &str,
) -> std::io::Result<(RdpTlsStream<S>, DesktopCertificate)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyDesktopCertificate))
        .with_no_client_auth();
    // CredSSP does not support TLS session resumption (MS-CSSP 3.1.5).
    config.resumption = rustls::client::Resumption::disabled();
    let name = ServerName::try_from(server_name.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| std::io::Error::other("the desktop presented no certificate"))?;
    let certificate = DesktopCertificate {
        public_key: subject_public_key(cert.as_ref()).map_err(std::io::Error::other)?,
        fingerprint: fingerprint(cert.as_ref()),
    };
    Ok((tls, certificate))
}

/// The subjectPublicKey bits of a DER certificate.
fn subject_public_key(der: &[u8]) -> Result<Vec<u8>, String> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("the desktop's certificate does not parse: {e}"))?;
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the desktop's public key is not a whole number of bytes".to_string())
}

/// A desktop server's TLS: a fresh self-signed ECDSA P-256 certificate for `names`, as
/// Windows and FreeRDP make their own when nobody installed one. Returns the acceptor and
/// what clients will see of the certificate.
pub fn desktop_server_acceptor(
    names: &[String],
) -> Result<(TlsAcceptor, DesktopCertificate), TlsError> {
    let general = |e: rcgen::Error| TlsError::Config(rustls::Error::General(e.to_string()));
    let key = rcgen::KeyPair::generate().map_err(general)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(general)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("desktop"),
    );
    let cert = params.self_signed(&key).map_err(general)?;
    let der: CertificateDer<'static> = cert.der().clone();
    let certificate = DesktopCertificate {
        public_key: subject_public_key(der.as_ref())
            .map_err(|e| TlsError::Config(rustls::Error::General(e)))?,
        fingerprint: fingerprint(der.as_ref()),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}

/// Accepts any certificate (RDP's are self-signed; the caller compares the fingerprint),
/// but verifies that the handshake was signed by that certificate's key.
#[derive(Debug)]
struct AnyDesktopCertificate;

impl ServerCertVerifier for AnyDesktopCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::tls12_signature(message, cert, dss)
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

    #[tokio::test]
    async fn a_desktop_client_sees_the_self_signed_key_it_was_served() {
        let (acceptor, served) =
            desktop_server_acceptor(&["acme".to_string()]).expect("self-signed certificate");
        assert!(!served.public_key.is_empty());
        let (client, server) = tokio::io::duplex(64 * 1024);
        let accept = tokio::spawn(async move { acceptor.accept(server).await.map(|_| ()) });
        // Kept open until the server has read the client's Finished.
        let (_client, seen) = desktop_client_upgrade(client, "acme")
            .await
            .expect("client upgrade");
        accept.await.expect("join").expect("server handshake");
        assert_eq!(seen, served);
    }
}
