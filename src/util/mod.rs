//! Small helpers every layer may use (a base module): the clock in Unix seconds, a mutex lock
//! that survives a panicked holder, durable file replacement ([`files`]) and the words for
//! numbers people read ([`format`]).

pub mod files;
pub mod format;

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; `0` if the clock reads before 1970 (a wrong age on screen or
/// in a row is better than a panic).
pub fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The console's folder for its settings and keys: `RAC_CONFIG_DIR` when set (tests, a
/// second identity), else the platform's config dir (`~/.config/rac` on Linux).
pub fn config_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("RAC_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(dir.into());
    }
    directories::ProjectDirs::from("net", "rac", "rac").map(|d| d.config_dir().to_path_buf())
}

/// Locks `m`, also when an earlier holder panicked. Only for data every critical section
/// leaves consistent at each step (a map insert or remove, a counter): the panic cannot have
/// left it half changed.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This machine's name (the kernel's, else `HOSTNAME`), if it has one.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}
