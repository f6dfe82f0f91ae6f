//! The SP's signed permission for one session (step 6): which console key may open which
//! service on which tenant, until when. The SP signs it with its grant key (Ed25519) and
//! sends it with `open_data`; the tenant checks it before it opens a data connection, and
//! accepts in the end-to-end handshake only the console key the grant names.
//!
//! The signed bytes are the `body` string exactly as sent (JSON text, so no canonical form
//! is needed), prefixed with [`SIGNING_CONTEXT`] so a grant signature can never be taken
//! for a signature over anything else.

use std::fmt;

use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

/// Longest a grant may live: the SP issues grants for this long, and a tenant refuses one
/// whose expiry lies further ahead.
pub const GRANT_MAX_SECS: u64 = 60;
/// What whole-second clocks may put between the SP's `now` and the tenant's estimate of it.
const CLOCK_ROUNDING_SECS: u64 = 1;

/// What an Ed25519 grant signature covers, before the body.
const SIGNING_CONTEXT: &[u8] = b"rac grant v1\n";

/// A grant as it travels: the body's JSON text and an Ed25519 signature over it, hex.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub body: String,
    pub signature: String,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Grant({})", self.body)
    }
}

/// What a grant allows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantBody {
    pub session_id: String,
    pub tenant: String,
    pub service: String,
    /// The operator the session is for (shown and logged by the tenant).
    pub operator: String,
    /// SHA-256 of the console's public key, `AB:CD:..`.
    pub console_key: String,
    /// Seconds since the Unix epoch, by the SP's clock.
    pub expires: u64,
}

/// Why a tenant refuses a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the grant's signature is not the SP's grant key")]
    BadSignature,
    #[error("the grant is malformed: {0}")]
    Malformed(String),
    #[error("the grant is for {field} {granted:?}, not {asked:?}")]
    Mismatch {
        field: &'static str,
        granted: String,
        asked: String,
    },
    #[error("the grant expired {0} s ago")]
    Expired(u64),
    #[error("the grant lives {0} s, longer than the {GRANT_MAX_SECS} s a grant may")]
    TooLong(u64),
    #[error("the grant for session {0} was used before")]
    Replayed(String),
    #[error("console key {0} is not among the operator keys this tenant accepts")]
    KeyNotAllowed(String),
    #[error(
        "the SP's grant key changed: pinned {pinned}, the SP now sends {sent}; if the SP was \
         set up anew, delete {pin_file} and restart the tenant redirector"
    )]
    SpKeyChanged {
        pinned: String,
        sent: String,
        pin_file: String,
    },
    #[error("the SP sent no usable grant key in its welcome")]
    NoSpKey,
}

impl Grant {
    /// Checks the signature against the SP's grant public key (32 bytes) and returns the body.
    /// The caller checks what the body says ([`GrantBody::check`]).
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<GrantBody, GrantError> {
        let sig = hex::decode(&self.signature).map_err(|_| GrantError::BadSignature)?;
        let mut signed = SIGNING_CONTEXT.to_vec();
        signed.extend_from_slice(self.body.as_bytes());
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&signed, &sig)
            .map_err(|_| GrantError::BadSignature)?;
        serde_json::from_str(&self.body).map_err(|e| GrantError::Malformed(e.to_string()))
    }
}

impl GrantBody {
    /// Checks the body against the request it came with: this tenant, this service, this
    /// session, and not expired by the SP's clock (`sp_now`).
    pub fn check(
        &self,
        tenant: &str,
        service: &str,
        session_id: &str,
        sp_now: u64,
    ) -> Result<(), GrantError> {
        let mismatch = |field, granted: &str, asked: &str| GrantError::Mismatch {
            field,
            granted: granted.to_string(),
            asked: asked.to_string(),
        };
        if self.tenant != tenant {
            return Err(mismatch("tenant", &self.tenant, tenant));
        }
        if self.service != service {
            return Err(mismatch("service", &self.service, service));
        }
        if self.session_id != session_id {
            return Err(mismatch("session", &self.session_id, session_id));
        }
        if self.expires <= sp_now {
            return Err(GrantError::Expired(sp_now - self.expires));
        }
        // The tenant knows the SP's clock to the whole second (the welcome's `now`), so a
        // grant signed for exactly GRANT_MAX_SECS may look one second longer.
        if self.expires - sp_now > GRANT_MAX_SECS + CLOCK_ROUNDING_SECS {
            return Err(GrantError::TooLong(self.expires - sp_now));
        }
        Ok(())
    }
}

/// The SP's grant-signing key.
pub struct GrantKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantKey({})", self.public_hex())
    }
}

impl GrantKey {
    /// A new random key.
    pub fn generate() -> Result<Self, GrantError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| GrantError::Malformed("no randomness for a grant key".into()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// The key from its PKCS#8 document (what [`to_pkcs8`](Self::to_pkcs8) gave).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, GrantError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| GrantError::Malformed(format!("grant key: {e}")))?;
        Ok(GrantKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    pub fn to_pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key, hex (as the welcome carries it).
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, body: &GrantBody) -> Grant {
        let body = serde_json::to_string(body).unwrap_or_default();
        let mut signed = SIGNING_CONTEXT.to_vec();
        signed.extend_from_slice(body.as_bytes());
        Grant {
            signature: hex::encode(self.pair.sign(&signed).as_ref()),
            body,
        }
    }
}

/// Reads a grant public key as the welcome carries it (64 hex digits).
pub fn parse_grant_key(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> GrantBody {
        GrantBody {
            session_id: "s1".into(),
            tenant: "acme".into(),
            service: "backup".into(),
            operator: "admin".into(),
            console_key: "AB".into(),
            expires: 1_000 + 60,
        }
    }

    fn public(key: &GrantKey) -> [u8; 32] {
        parse_grant_key(&key.public_hex()).expect("32 bytes")
    }

    #[test]
    fn a_signed_grant_verifies_and_checks() {
        let key = GrantKey::generate().expect("key");
        let grant = key.sign(&body());
        let got = grant.verify(&public(&key)).expect("verifies");
        assert_eq!(got, body());
        got.check("acme", "backup", "s1", 1_000).expect("valid");
        let again = GrantKey::from_pkcs8(key.to_pkcs8()).expect("reload");
        assert_eq!(again.public_hex(), key.public_hex());
    }

    #[test]
    fn another_key_or_a_changed_body_fails_the_signature() {
        let key = GrantKey::generate().expect("key");
        let other = GrantKey::generate().expect("key");
        let grant = key.sign(&body());
        assert_eq!(grant.verify(&public(&other)), Err(GrantError::BadSignature));
        let mut tampered = grant.clone();
        tampered.body = tampered.body.replace("backup", "rdp");
        assert_eq!(
            tampered.verify(&public(&key)),
            Err(GrantError::BadSignature)
        );
        let mut garbage = grant;
        garbage.signature = "zz".into();
        assert_eq!(garbage.verify(&public(&key)), Err(GrantError::BadSignature));
    }

    #[test]
    fn a_grant_for_something_else_or_out_of_time_is_refused() {
        let b = body();
        assert!(matches!(
            b.check("other", "backup", "s1", 1_000),
            Err(GrantError::Mismatch {
                field: "tenant",
                ..
            })
        ));
        assert!(matches!(
            b.check("acme", "rdp", "s1", 1_000),
            Err(GrantError::Mismatch {
                field: "service",
                ..
            })
        ));
        assert!(matches!(
            b.check("acme", "backup", "s2", 1_000),
            Err(GrantError::Mismatch {
                field: "session",
                ..
            })
        ));
        assert_eq!(
            b.check("acme", "backup", "s1", 1_070),
            Err(GrantError::Expired(10))
        );
        assert_eq!(
            b.check("acme", "backup", "s1", 900),
            Err(GrantError::TooLong(160))
        );
        // Whole-second clocks: a 60 s grant may look 61 s long to the tenant, not 62.
        let expires = b.expires;
        assert_eq!(b.check("acme", "backup", "s1", expires - 61), Ok(()));
        assert_eq!(
            b.check("acme", "backup", "s1", expires - 62),
            Err(GrantError::TooLong(62))
        );
    }
}
