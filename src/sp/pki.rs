//! The SP's certificates: a CA made once by `rac sp init`, and the server certificate it signs.
//! Keys are ECDSA P-256 (fast handshakes); files are PEM in the state dir, keys mode 0600.

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM text of a freshly made CA and server certificate.
pub struct SpCertificates {
    pub ca_cert_pem: String,
    /// SHA-256 of the CA certificate's DER, as pinning shows it (`AB:CD:...`).
    pub ca_fingerprint: String,
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// Makes a CA and a server certificate for `localhost`, `127.0.0.1` and every extra SAN
/// (DNS names or IP addresses).
pub fn generate(extra_sans: &[String]) -> Result<SpCertificates> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_params = ca_params()?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for san in extra_sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let server_key = KeyPair::generate().context("generating the server key")?;
    let mut server_params =
        CertificateParams::new(sans).context("a --san is not a valid DNS name or IP address")?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "Remote Access Console SP");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .context("signing the server certificate")?;

    Ok(SpCertificates {
        ca_cert_pem: ca_cert.pem(),
        ca_fingerprint: crate::wire::format_fingerprint(&crate::wire::fingerprint(ca_cert.der())),
        ca_key_pem: ca_key.serialize_pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// The CA's name and constraints. An issuer built from them and the CA's key signs
/// certificates that chain to the CA `generate` made (same subject, same key identifier).
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Remote Access Console SP CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A client certificate and its key (PEM), for the admin listener's mutual TLS.
pub struct ClientCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Signs a client certificate named `name` (its common name) with the SP's CA key: what the
/// admin listener asks for when `[admin] mutual_tls` is on. Valid for `days` days.
pub fn issue_client(ca_key_pem: &str, name: &str, days: u32) -> Result<ClientCertificate> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("reading the CA key")?;
    let issuer = Issuer::new(ca_params()?, &ca_key);
    let key = KeyPair::generate().context("generating the client key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = std::time::SystemTime::now();
    // An hour back, for clocks a little apart.
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the client certificate")?;
    Ok(ClientCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a file readable by its owner only (keys, secrets).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    write_private_bytes(path, contents.as_bytes())
}

/// [`write_private`] for binary contents.
pub fn write_private_bytes(path: &Path, contents: &[u8]) -> Result<()> {
    crate::util::files::write_private(path, contents)
        .with_context(|| format!("writing {}", path.display()))
}
