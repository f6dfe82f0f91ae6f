//! The backup service's state file: the whole inventory as one JSON document, replaced
//! atomically (a fresh temp file in the same folder, fsync, rename, fsync the folder) so that a
//! crash at any moment leaves either the old or the new state on disk, never a torn one.
//!
//! One writer at a time: the first write takes an exclusive lock on `<file>.lock` (an OS
//! advisory lock, released by the kernel when the process ends, even by SIGKILL) and keeps it
//! while any clone of the [`Store`] lives, so a second process on the same file gets a clear
//! error instead of interleaving its states with ours.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::model::Inventory;

/// Format version of the state file; bumped on incompatible changes.
pub const STATE_FORMAT: u32 = 1;

/// How long a write waits for the lock of a holder that is ending (a service being replaced
/// in the same process), before it reports the file as in use.
const LOCK_WAIT: Duration = Duration::from_secs(2);

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
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// The file was written by an incompatible version.
    #[error("state file {path} has format {found}, this build reads format {STATE_FORMAT}")]
    Format {
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The state could not be serialized; nothing was written.
    #[error("the state could not be encoded (nothing was written): {0}")]
    Encode(serde_json::Error),
    /// Another writer holds the state file's lock.
    #[error(
        "state file {path} is in use by another process ({holder}; lock file {lock}): stop it or give this one another state_file"
    )]
    Locked {
        /// The state file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// Who holds it, as it wrote itself into the lock file.
        holder: String,
    },
}

/// What a successful [`Store::write`] achieved.
#[must_use]
#[derive(Debug)]
pub enum Written {
    /// Renamed into place and the folder synced: it survives a power loss.
    Durable,
    /// Renamed into place (this process, a restart and every reader see the new state), but
    /// syncing the folder afterwards failed, so a power loss may still bring back the state
    /// before it. The change is applied; it is not yet durable.
    AppliedNotDurable {
        /// The folder whose fsync failed.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::Durable => f.write_str("written durably"),
            Written::AppliedNotDurable { dir, source } => write!(
                f,
                "applied but not yet durable (syncing the folder {} failed: {source})",
                dir.display()
            ),
        }
    }
}

impl Written {
    /// Logs a write that was applied but is not yet durable (a warning, not a failure).
    pub fn log(&self, path: &Path) {
        if let Written::AppliedNotDurable { .. } = self {
            tracing::warn!("state file {}: {self}", path.display());
        }
    }
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

/// Syncs a folder to disk (a function so tests can make it fail).
type DirSync = fn(&Path) -> std::io::Result<()>;

/// The state file of one backup service.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    /// The lock file, open and locked once this store (or a clone) has written.
    lock: Arc<Mutex<Option<File>>>,
    dir_sync: DirSync,
}

impl Store {
    /// A store at `path` (nothing is read, written or locked yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Store {
            path: path.into(),
            lock: Arc::new(Mutex::new(None)),
            dir_sync: crate::util::files::sync_dir,
        }
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<file>.lock`, beside the state file.
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.file_name();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    fn file_name(&self) -> std::ffi::OsString {
        self.path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "state.json".into())
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    /// Temp files are `.<file>.<random>.tmp`: a fresh, unpredictable name per write, created
    /// exclusively, so no other writer and no planted file or symlink can be written through.
    fn temp_prefix(&self) -> String {
        format!(".{}.", self.file_name().to_string_lossy())
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    }

    /// Reads the state. `Ok(None)` when the file does not exist. A leftover temp file from
    /// an interrupted write is ignored: the renamed file is the last good state. Reading
    /// takes no lock.
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
        self.save(&inv)?.log(&self.path);
        Ok(inv)
    }

    /// Serializes the state to the bytes [`Store::write`] puts on disk. An error here means
    /// nothing may be written: an empty or partial state must never replace a good one.
    pub fn encode(inv: &Inventory) -> Result<Vec<u8>, StoreError> {
        encode_value(&FileOut {
            format: STATE_FORMAT,
            inventory: inv,
        })
    }

    /// Writes the state atomically and durably (blocking; call it off the async threads).
    pub fn save(&self, inv: &Inventory) -> Result<Written, StoreError> {
        self.write(&Self::encode(inv)?)
    }

    /// Replaces the file with `bytes`: a fresh temp file, fsync, rename over the file, fsync
    /// the folder. Takes the lock first (and keeps it). Empty bytes are refused: they are
    /// never a state. Once the rename is done the change is applied, whatever follows: a
    /// failing folder sync is [`Written::AppliedNotDurable`], not an error.
    pub fn write(&self, bytes: &[u8]) -> Result<Written, StoreError> {
        if bytes.is_empty() {
            return Err(self.io(&self.path)(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "refusing to replace the state with an empty file",
            )));
        }
        self.hold_lock()?;
        let dir = self.dir().to_owned();
        let mut temp = tempfile::Builder::new()
            .prefix(&self.temp_prefix())
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(self.io(&dir))?;
        let temp_path = temp.path().to_owned();
        temp.write_all(bytes).map_err(self.io(&temp_path))?;
        temp.as_file().sync_all().map_err(self.io(&temp_path))?;
        // On failure the temp file is removed when `temp` drops.
        temp.persist(&self.path)
            .map_err(|e| self.io(&self.path)(e.error))?;
        match (self.dir_sync)(&dir) {
            Ok(()) => Ok(Written::Durable),
            Err(source) => Ok(Written::AppliedNotDurable { dir, source }),
        }
    }

    /// Takes the exclusive lock on `<file>.lock` unless this store already holds it; a
    /// holder that is ending gets [`LOCK_WAIT`] to let go. The holder writes its process id
    /// into the file, so the error can say who has it. Once locked, temp files left by an
    /// interrupted write of an earlier holder are removed (nobody else can be writing them).
    fn hold_lock(&self) -> Result<(), StoreError> {
        let mut held = crate::util::lock(&self.lock);
        if held.is_some() {
            return Ok(());
        }
        let lock_path = self.lock_path();
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&lock_path).map_err(self.io(&lock_path))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    return Err(StoreError::Locked {
                        path: self.path.clone(),
                        lock: lock_path,
                        holder: if holder.is_empty() {
                            "holder unknown".to_string()
                        } else {
                            holder.chars().take(200).collect()
                        },
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(self.io(&lock_path)(e)),
            }
        }
        let me = format!("pid {}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .map_err(self.io(&lock_path))?;
        self.remove_stale_temps();
        *held = Some(file);
        Ok(())
    }

    fn remove_stale_temps(&self) {
        let prefix = self.temp_prefix();
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// This store with a folder sync that always fails (tests of [`Written::AppliedNotDurable`]).
    #[cfg(test)]
    pub(crate) fn with_failing_dir_sync(mut self) -> Self {
        self.dir_sync = |_| Err(std::io::Error::other("injected fsync failure"));
        self
    }
}

fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
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
        let _ = store.save(&inv).expect("save");
        inv.server.name = "renamed".into();
        let _ = store.save(&inv).expect("save again");
        let reopened = Store::new(store.path());
        assert_eq!(reopened.load().expect("load"), Some(inv));
    }

    fn temp_files(store: &Store) -> Vec<String> {
        let dir = store.path().parent().expect("dir");
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn interrupted_write_keeps_last_good_state() {
        let (_dir, store) = temp_store();
        let inv = generate(5, "acme", NOW);
        let _ = store.save(&inv).expect("save");
        let path = store.path().to_owned();
        drop(store);
        // A crash mid-write leaves a truncated temp file beside the good one.
        let torn = path.with_file_name(".backup.json.k3j9x1.tmp");
        let bytes = Store::encode(&generate(6, "other", NOW)).expect("encode");
        fs::write(&torn, &bytes[..bytes.len() / 2]).expect("torn temp");
        let store = Store::new(&path);
        assert_eq!(store.load().expect("load"), Some(inv.clone()));
        // The next writer removes the stale temp file and leaves none of its own.
        let _ = store.save(&inv).expect("save over stale temp");
        assert!(!torn.exists());
        assert_eq!(temp_files(&store), Vec::<String>::new());
        assert_eq!(store.load().expect("load"), Some(inv));
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_temp_file_or_symlink_is_never_written_through() {
        let (dir, store) = temp_store();
        let victim = dir.path().join("victim.txt");
        fs::write(&victim, b"untouched").expect("victim");
        // The old fixed temp name, planted as a symlink to another file.
        let fixed = dir.path().join("backup.json.tmp");
        std::os::unix::fs::symlink(&victim, &fixed).expect("symlink");
        let inv = generate(5, "acme", NOW);
        assert!(matches!(store.save(&inv).expect("save"), Written::Durable));
        assert_eq!(fs::read(&victim).expect("victim"), b"untouched");
        assert!(
            fs::symlink_metadata(&fixed)
                .expect("still there")
                .is_symlink()
        );
        assert!(
            !fs::symlink_metadata(store.path())
                .expect("state")
                .is_symlink()
        );
        assert_eq!(store.load().expect("load"), Some(inv));
    }

    #[test]
    fn a_second_writer_is_refused_with_the_file_and_the_holder() {
        let (_dir, first) = temp_store();
        let inv = generate(5, "acme", NOW);
        let _ = first.save(&inv).expect("first writer");
        // A clone shares the lock; an independent store (as another process would open it:
        // a lock of its own on the same file) is refused.
        let _ = first.clone().save(&inv).expect("a clone writes too");
        let second = Store::new(first.path());
        let err = second.save(&generate(6, "other", NOW)).expect_err("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&first.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(first.load().expect("load"), Some(inv));
        // Once the first writer is gone, the second may write.
        drop(first);
        let _ = second.save(&generate(6, "other", NOW)).expect("free now");
    }

    #[test]
    fn an_encode_error_or_an_empty_state_writes_nothing() {
        let (_dir, store) = temp_store();
        let inv = generate(5, "acme", NOW);
        let _ = store.save(&inv).expect("save");
        // JSON objects need string keys: a map keyed by pairs cannot be encoded.
        let mut bad = std::collections::HashMap::new();
        bad.insert((1u8, 2u8), 3u8);
        let err = encode_value(&bad).expect_err("not encodable");
        assert!(matches!(err, StoreError::Encode(_)), "{err}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        store.write(&[]).expect_err("an empty state is refused");
        assert_eq!(store.load().expect("load"), Some(inv));
    }

    #[test]
    fn a_failed_folder_sync_after_the_rename_is_applied_not_failed() {
        let (_dir, store) = temp_store();
        let store = store.with_failing_dir_sync();
        let inv = generate(5, "acme", NOW);
        let written = store.save(&inv).expect("applied, not an error");
        assert!(
            matches!(written, Written::AppliedNotDurable { .. }),
            "{written:?}"
        );
        assert!(
            written.to_string().contains("applied but not yet durable"),
            "{written}"
        );
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
