//! The wire vocabulary, below everything else: length-prefixed JSON frames ([`frame`]), the
//! relay protocol's messages ([`protocol`]), the name rule every hello and account obeys, and
//! certificate fingerprints as people type them. Pure data and codecs over
//! `AsyncRead`/`AsyncWrite`: no sockets, no TLS, no state. docs/PROTOCOL.md is its prose.
//!
//! The backup protocol's messages stay beside the backup model in `tenant::backup::protocol`:
//! they carry the model's own types.

#[cfg(test)]
mod doc_check;
pub mod frame;
pub mod protocol;

use sha2::{Digest, Sha256};

/// A tenant, operator or service name that breaks [`validate_name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidName(pub String);

/// Tenant, operator and service names: 1 to 64 ASCII letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit. Safe in logs, file names and CSV.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(InvalidName(name.to_string()))
    }
}

/// A fingerprint that is not 32 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {0:?}: expected 64 hex digits (colons allowed)")]
pub struct BadFingerprint(pub String);

/// SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// `AB:CD:...` form, as browsers show fingerprints.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts `AB:CD:..`, `abcd..` or `sha256:abcd..`.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], BadFingerprint> {
    let hex_digits: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&hex_digits).map_err(|_| BadFingerprint(text.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| BadFingerprint(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_common_form() {
        let fp = fingerprint(b"abc");
        let colons = format_fingerprint(&fp);
        assert_eq!(parse_fingerprint(&colons).expect("colons"), fp);
        let plain = hex::encode(fp);
        assert_eq!(parse_fingerprint(&plain).expect("plain"), fp);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{plain}")).expect("prefixed"),
            fp
        );
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn names_are_short_plain_ascii() {
        for good in ["acme", "a", "acme-2.backup_1", &"a".repeat(64)] {
            validate_name(good).expect(good);
        }
        for bad in [
            "",
            "-acme",
            ".acme",
            "../etc",
            "ac me",
            "acmé",
            &"a".repeat(65),
        ] {
            assert_eq!(
                validate_name(bad),
                Err(InvalidName(bad.to_string())),
                "{bad}"
            );
        }
    }
}
