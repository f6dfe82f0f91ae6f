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
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Remote Access Console SP CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
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

/// Writes a file readable by its owner only (keys, secrets).
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    write_private_bytes(path, contents.as_bytes())
}

/// [`write_private`] for binary contents.
pub fn write_private_bytes(path: &Path, contents: &[u8]) -> Result<()> {
    crate::util::files::write_private(path, contents)
        .with_context(|| format!("writing {}", path.display()))
}
