//! The backup service's state file: the whole inventory as one JSON document, replaced
//! atomically (temp file in the same folder, fsync, rename, fsync the folder) so that a crash
//! at any moment leaves either the old or the new state on disk, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::Inventory;

/// Format version of the state file; bumped on incompatible changes.
pub const STATE_FORMAT: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing, syncing or renaming failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but is not a valid state file.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The file was written by an incompatible version.
    #[error("state file {path} has format {found}, this build reads format {STATE_FORMAT}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
}

#[derive(Serialize)]
struct FileOut<'a> {
    format: u32,
    inventory: &'a Inventory,
}

#[derive(Deserialize)]
struct FileIn {
    format: u32,
    inventory: Inventory,
}

/// The state file of one backup service.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// A store at `path` (nothing is read or written yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Store { path: path.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "state.json".into());
        name.push(".tmp");
        self.path.with_file_name(name)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    }

    /// Reads the state. `Ok(None)` when the file does not exist. A leftover temp file from
    /// an interrupted write is ignored: the renamed file is the last good state.
    pub fn load(&self) -> Result<Option<Inventory>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(&self.path)(e)),
        };
        // Peek at the format before the full parse, so an old file says so instead of
        // failing on a missing field.
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let corrupt = |source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        };
        let version: Version = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if version.format != STATE_FORMAT {
            return Err(StoreError::Format {
                path: self.path.clone(),
                found: version.format,
            });
        }
        let file: FileIn = serde_json::from_slice(&bytes).map_err(corrupt)?;
        debug_assert_eq!(file.format, STATE_FORMAT);
        Ok(Some(file.inventory))
    }

    /// Loads the state, or makes one with `fresh` and saves it when there is no file yet.
    pub fn load_or_create(
        &self,
        fresh: impl FnOnce() -> Inventory,
    ) -> Result<Inventory, StoreError> {
        if let Some(inv) = self.load()? {
            return Ok(inv);
        }
        let inv = fresh();
        self.save(&inv)?;
        Ok(inv)
    }

    /// Serializes the state to the bytes [`Store::write`] puts on disk.
    pub fn encode(inv: &Inventory) -> Vec<u8> {
        let file = FileOut {
            format: STATE_FORMAT,
            inventory: inv,
        };
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(&file).unwrap_or_default()
    }

    /// Writes the state atomically and durably (blocking; call it off the async threads).
    pub fn save(&self, inv: &Inventory) -> Result<(), StoreError> {
        self.write(&Self::encode(inv))
    }

    /// Replaces the file with `bytes`: temp file, fsync, rename over the file, fsync the folder.
    pub fn write(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let temp = self.temp_path();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(self.io(&temp))?;
        file.write_all(bytes).map_err(self.io(&temp))?;
        file.sync_all().map_err(self.io(&temp))?;
        drop(file);
        fs::rename(&temp, &self.path).map_err(self.io(&self.path))?;
        self.sync_dir()
    }

    #[cfg(unix)]
    fn sync_dir(&self) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(dir))
    }

    #[cfg(not(unix))]
    fn sync_dir(&self) -> Result<(), StoreError> {
        // Windows cannot open a folder as a file; rename there is already durable enough.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::backup::generator::generate;

    const NOW: u64 = 1_780_000_000;

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("backup.json"));
        (dir, store)
    }

    #[test]
    fn missing_file_loads_as_none_and_create_saves() {
        let (_dir, store) = temp_store();
        assert!(store.load().expect("load").is_none());
        let inv = store
            .load_or_create(|| generate(7, "acme", NOW))
            .expect("create");
        assert!(store.path().exists());
        assert_eq!(store.load().expect("load"), Some(inv));
    }

    #[test]
    fn survives_restart() {
        let (_dir, store) = temp_store();
        let mut inv = generate(3, "acme", NOW);
        store.save(&inv).expect("save");
        inv.server.name = "renamed".into();
        store.save(&inv).expect("save again");
        let reopened = Store::new(store.path());
        assert_eq!(reopened.load().expect("load"), Some(inv));
    }

    #[test]
    fn interrupted_write_keeps_last_good_state() {
        let (_dir, store) = temp_store();
        let inv = generate(5, "acme", NOW);
        store.save(&inv).expect("save");
        // A crash mid-write leaves a truncated temp file beside the good one.
        let bytes = Store::encode(&generate(6, "other", NOW));
        fs::write(store.temp_path(), &bytes[..bytes.len() / 2]).expect("torn temp");
        assert_eq!(store.load().expect("load"), Some(inv.clone()));
        // And the next save replaces the stale temp file.
        store.save(&inv).expect("save over stale temp");
        assert!(!store.temp_path().exists());
        assert_eq!(store.load().expect("load"), Some(inv));
    }

    #[test]
    fn corrupt_and_foreign_files_are_clear_errors() {
        let (_dir, store) = temp_store();
        fs::write(store.path(), b"{\"format\": 1, \"inventory\": {").expect("write");
        let err = store.load().expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
        fs::write(store.path(), b"{\"format\": 99, \"inventory\": {}}").expect("write");
        let err = store.load().expect_err("format");
        assert!(matches!(err, StoreError::Format { found: 99, .. }), "{err}");
        // load_or_create must not overwrite a corrupt file.
        fs::write(store.path(), b"garbage").expect("write");
        assert!(store.load_or_create(|| generate(1, "x", NOW)).is_err());
        assert_eq!(fs::read(store.path()).expect("read"), b"garbage");
    }
}
