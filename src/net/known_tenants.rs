//! The console's memory of tenant keys, like SSH's `known_hosts`: the key a tenant presented
//! the first time this console opened it through an SP is remembered, and a session whose
//! tenant presents another key is refused (`net::tls::e2e`). Kept per SP (by the SHA-256 of
//! the SP's CA or pinned certificate), since two SPs may each have a tenant of one name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::util::lock;
use crate::wire::{format_fingerprint, parse_fingerprint};

/// Pinned tenant keys, in a JSON file (`known_tenants.json` in the config dir) or in memory.
#[derive(Debug, Default)]
pub struct KnownTenants {
    path: Option<PathBuf>,
    pins: Mutex<BTreeMap<String, String>>,
}

fn entry(sp: &str, tenant: &str) -> String {
    format!("{sp}/{tenant}")
}

impl KnownTenants {
    /// Pins kept for this run only (the lab, tests).
    pub fn in_memory() -> Self {
        KnownTenants::default()
    }

    /// Pins read from and written to `path` (a missing file is an empty list; an unreadable
    /// one is an error, so pins are never silently forgotten).
    pub fn in_file(path: PathBuf) -> std::io::Result<Self> {
        let pins = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                std::io::Error::other(format!(
                    "{}: not a list of tenant keys: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(KnownTenants {
            path: Some(path),
            pins: Mutex::new(pins),
        })
    }

    /// The key pinned for `tenant` of the SP `sp`.
    pub fn get(&self, sp: &str, tenant: &str) -> Option<[u8; 32]> {
        lock(&self.pins)
            .get(&entry(sp, tenant))
            .and_then(|k| parse_fingerprint(k).ok())
    }

    /// Pins `key` (first use).
    pub fn pin(&self, sp: &str, tenant: &str, key: &[u8; 32]) -> std::io::Result<()> {
        let mut pins = lock(&self.pins);
        pins.insert(entry(sp, tenant), format_fingerprint(key));
        self.save(&pins)
    }

    /// Forgets a tenant's pin (its server was reinstalled): the next session pins anew.
    pub fn forget(&self, sp: &str, tenant: &str) -> std::io::Result<bool> {
        let mut pins = lock(&self.pins);
        let had = pins.remove(&entry(sp, tenant)).is_some();
        self.save(&pins)?;
        Ok(had)
    }

    fn save(&self, pins: &BTreeMap<String, String>) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(pins).map_err(std::io::Error::other)?;
        crate::util::files::write_atomically(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_survive_a_restart_and_are_per_sp() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("cfg").join("known_tenants.json");
        let known = KnownTenants::in_file(path.clone()).expect("empty");
        known.pin("sp1", "acme", &[1; 32]).expect("pin");
        let again = KnownTenants::in_file(path.clone()).expect("read back");
        assert_eq!(again.get("sp1", "acme"), Some([1; 32]));
        assert_eq!(again.get("sp2", "acme"), None);
        assert!(again.forget("sp1", "acme").expect("forget"));
        assert_eq!(
            KnownTenants::in_file(path.clone())
                .expect("read")
                .get("sp1", "acme"),
            None
        );
        std::fs::write(&path, "{garbage").expect("write");
        assert!(KnownTenants::in_file(path).is_err());
    }
}
