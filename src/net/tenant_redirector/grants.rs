//! What the tenant checks before it opens anything for the SP: the session's grant (step 7).
//! The grant must carry the signature of the SP's grant key, pinned the first time the
//! tenant saw it (on its authenticated control connection); it must name this tenant, the
//! service and the session asked for; it must not have expired by the SP's clock nor have
//! been used before; and, under the tenant lock, it must name a console key the tenant
//! lists. Only then is a data connection opened, and only the key the grant names may end
//! the session's end-to-end channel on the console's side.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::util::lock;
use crate::wire::protocol::{Grant, GrantBody, GrantError, parse_grant_key};
use crate::wire::{format_fingerprint, parse_fingerprint};

/// The SP's key and clock as one control connection's welcome gave them.
#[derive(Debug, Clone)]
pub(super) struct SpView {
    /// The pinned grant key, or why the welcome's key cannot be used.
    key: Result<[u8; 32], GrantError>,
    /// The SP's clock minus this machine's, in seconds.
    clock_offset: i64,
}

/// The grant checks of one tenant redirector, across its control connections.
pub(super) struct GrantGate {
    pin_file: Option<PathBuf>,
    pinned: Mutex<Option<[u8; 32]>>,
    /// Sessions whose grant was used, with its expiry (SP clock): a replay is refused.
    used: Mutex<HashMap<String, u64>>,
    /// The tenant lock (empty: any console key the SP grants).
    operator_keys: Vec<[u8; 32]>,
}

/// A grant the tenant accepted: the console key to require, and what it allows.
#[derive(Debug)]
pub(super) struct Accepted {
    pub console_key: [u8; 32],
    pub body: GrantBody,
}

impl GrantGate {
    pub fn new(pin_file: Option<PathBuf>, operator_keys: Vec<[u8; 32]>) -> Self {
        let pinned = pin_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| parse_grant_key(&text));
        GrantGate {
            pin_file,
            pinned: Mutex::new(pinned),
            used: Mutex::new(HashMap::new()),
            operator_keys,
        }
    }

    /// Takes a welcome's grant key and clock: the first key seen is pinned (and written to
    /// the pin file); a different one later makes every grant fail, loudly.
    pub fn welcome(&self, grant_key: Option<&str>, sp_now: Option<u64>) -> SpView {
        let clock_offset = sp_now.map_or(0, |now| now as i64 - crate::util::now_unix_secs() as i64);
        let key = match grant_key.and_then(parse_grant_key) {
            None => Err(GrantError::NoSpKey),
            Some(sent) => {
                let mut pinned = lock(&self.pinned);
                match *pinned {
                    Some(pin) if pin == sent => Ok(pin),
                    Some(pin) => Err(GrantError::SpKeyChanged {
                        pinned: hex::encode(pin),
                        sent: hex::encode(sent),
                        pin_file: self
                            .pin_file
                            .as_ref()
                            .map_or("(in memory)".into(), |f| f.display().to_string()),
                    }),
                    None => {
                        if let Some(file) = &self.pin_file
                            && let Err(e) = crate::util::files::write_atomically(
                                file,
                                format!("{}\n", hex::encode(sent)).as_bytes(),
                            )
                        {
                            tracing::warn!(file = %file.display(), "could not keep the SP's grant key pin: {e:#}");
                        }
                        tracing::info!(key = %hex::encode(sent), "pinned the SP's grant key");
                        *pinned = Some(sent);
                        Ok(sent)
                    }
                }
            }
        };
        if let Err(e) = &key {
            tracing::error!("every session will be refused: {e}");
        }
        SpView { key, clock_offset }
    }

    /// Checks the grant of one `open_data`.
    pub fn check(
        &self,
        sp: &SpView,
        grant: &Grant,
        tenant: &str,
        service: &str,
        session_id: &str,
    ) -> Result<Accepted, GrantError> {
        let key = sp.key.clone()?;
        let body = grant.verify(&key)?;
        let sp_now = (crate::util::now_unix_secs() as i64 + sp.clock_offset).max(0) as u64;
        body.check(tenant, service, session_id, sp_now)?;
        let console_key = parse_fingerprint(&body.console_key)
            .map_err(|_| GrantError::Malformed("console_key is not a fingerprint".into()))?;
        if !self.operator_keys.is_empty() && !self.operator_keys.contains(&console_key) {
            return Err(GrantError::KeyNotAllowed(format_fingerprint(&console_key)));
        }
        let mut used = lock(&self.used);
        used.retain(|_, expires| *expires > sp_now);
        if used.insert(body.session_id.clone(), body.expires).is_some() {
            return Err(GrantError::Replayed(body.session_id));
        }
        Ok(Accepted { console_key, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::{GRANT_MAX_SECS, GrantKey};

    fn body(console_key: &str) -> GrantBody {
        GrantBody {
            session_id: "s1".into(),
            tenant: "acme".into(),
            service: "backup".into(),
            operator: "admin".into(),
            console_key: console_key.into(),
            expires: crate::util::now_unix_secs() + GRANT_MAX_SECS,
        }
    }

    const CONSOLE: &str = "11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11:11";

    #[test]
    fn a_grant_is_used_once_and_the_sp_key_is_pinned_in_its_file() {
        let dir = tempfile::tempdir().expect("dir");
        let pin = dir.path().join("pin");
        let sp = GrantKey::generate().expect("key");
        let gate = GrantGate::new(Some(pin.clone()), Vec::new());
        let view = gate.welcome(Some(&sp.public_hex()), Some(crate::util::now_unix_secs()));
        let grant = sp.sign(&body(CONSOLE));
        let ok = gate
            .check(&view, &grant, "acme", "backup", "s1")
            .expect("accepted");
        assert_eq!(format_fingerprint(&ok.console_key), CONSOLE);
        assert!(matches!(
            gate.check(&view, &grant, "acme", "backup", "s1"),
            Err(GrantError::Replayed(_))
        ));
        // A new gate (a restart) reads the pin back and refuses another SP key.
        let again = GrantGate::new(Some(pin), Vec::new());
        let other = GrantKey::generate().expect("key");
        let view = again.welcome(Some(&other.public_hex()), None);
        assert!(matches!(
            again.check(&view, &other.sign(&body(CONSOLE)), "acme", "backup", "s1"),
            Err(GrantError::SpKeyChanged { .. })
        ));
    }

    #[test]
    fn the_tenant_lock_and_a_skewed_clock() {
        let sp = GrantKey::generate().expect("key");
        let locked = GrantGate::new(None, vec![[0x22; 32]]);
        let view = locked.welcome(Some(&sp.public_hex()), None);
        assert!(matches!(
            locked.check(&view, &sp.sign(&body(CONSOLE)), "acme", "backup", "s1"),
            Err(GrantError::KeyNotAllowed(_))
        ));
        // This machine's clock is an hour behind the SP's: the grant is judged by the SP's.
        let gate = GrantGate::new(None, Vec::new());
        let view = gate.welcome(
            Some(&sp.public_hex()),
            Some(crate::util::now_unix_secs() + 3600),
        );
        let mut skewed = body(CONSOLE);
        skewed.expires += 3600;
        gate.check(&view, &sp.sign(&skewed), "acme", "backup", "s1")
            .expect("valid by the SP's clock");
    }
}
