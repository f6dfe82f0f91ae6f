//! The SP's session tickets, readable by the next SP process too.
//!
//! rustls' own ticketer makes a new random key per process, so after an SP restart every
//! tenant's ticket is unreadable and every reconnect is a full handshake: the SP signs and
//! each tenant checks the certificate chain, 15,000 times within seconds. With the key kept
//! in the state dir (`ticket.key`, 0600, as secret as `server.key`: a ticket authenticates
//! the SP on resumption), reconnects after a restart resume instead. Resumption in TLS 1.3
//! still runs a fresh key exchange (rustls offers only `psk_dhe_ke`), so each connection
//! keeps forward secrecy. A key older than [`KEY_MAX_AGE`] is replaced at start.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// How long a ticket may be used to resume.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// When a ticket key is replaced by a new one (at the SP's next start).
pub const KEY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

const KEY_LEN: usize = 32;

/// Seals and opens tickets with one AES-256-GCM key; each ticket is a random nonce followed
/// by the sealed state.
pub struct TicketKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a ticket key (64 hex digits expected)")]
    Malformed { path: String },
    #[error("no randomness for a ticket key")]
    Random,
}

impl TicketKey {
    /// The key in `path`, or a new one written there (0600) when there is none or it is
    /// older than [`KEY_MAX_AGE`].
    pub fn load_or_create(path: &Path) -> Result<Self, TicketKeyError> {
        let file_error = |source| TicketKeyError::File {
            path: path.display().to_string(),
            source,
        };
        let age = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|modified| {
                SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default()
            });
        let stale = match age {
            Ok(age) => age > KEY_MAX_AGE,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(file_error(e)),
        };
        if stale {
            let bytes = random_key()?;
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "replaced the week-old session ticket key")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_error(e)),
            }
            crate::util::files::write_private(path, hex::encode(bytes).as_bytes())
                .map_err(file_error)?;
            return Self::from_bytes(&bytes);
        }
        let text = std::fs::read_to_string(path).map_err(file_error)?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == KEY_LEN)
            .ok_or_else(|| TicketKeyError::Malformed {
                path: path.display().to_string(),
            })?;
        Self::from_bytes(&bytes)
    }

    /// A key kept in memory only (tests, an SP without a state dir).
    pub fn generate() -> Result<Self, TicketKeyError> {
        Self::from_bytes(&random_key()?)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, TicketKeyError> {
        // Every caller passes KEY_LEN bytes, the length AES-256 takes.
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| TicketKeyError::Random)?;
        Ok(TicketKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }
}

fn random_key() -> Result<[u8; KEY_LEN], TicketKeyError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TicketKeyError::Random)?;
    Ok(bytes)
}

impl rustls::server::ProducesTickets for TicketKey {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = nonce.to_vec();
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = ticket.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::empty(), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn a_ticket_sealed_by_one_process_opens_in_the_next_and_nowhere_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ticket.key");
        let first = TicketKey::load_or_create(&path).expect("made");
        let ticket = first.encrypt(b"resumption state").expect("sealed");
        assert_ne!(&ticket[NONCE_LEN..], b"resumption state");
        let next = TicketKey::load_or_create(&path).expect("loaded");
        assert_eq!(
            next.decrypt(&ticket).as_deref(),
            Some(&b"resumption state"[..])
        );
        let other = TicketKey::generate().expect("another key");
        assert_eq!(other.decrypt(&ticket), None, "another key cannot read it");
        let mut tampered = ticket.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(next.decrypt(&tampered), None, "a changed ticket is refused");
        assert_eq!(next.decrypt(b"short"), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_malformed_key_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ticket.key");
        std::fs::write(&path, "not hex").expect("write");
        let err = TicketKey::load_or_create(&path).expect_err("refused");
        assert!(err.to_string().contains("ticket.key"), "{err}");
    }
}
