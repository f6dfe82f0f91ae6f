//! Replacing a file so that a crash or a power cut leaves the old contents or the new ones,
//! never a mix: a fresh temp file in the same folder, fsync, rename over the target, fsync
//! the folder. The tenant backup store adds a lock and its own reporting on top
//! (`tenant::backup::store`); the rest (the pushed gateway pool, the console's exports) use
//! [`write_atomically`].

use std::io::Write as _;
use std::path::Path;

/// Replaces `path` with `bytes`, durably. A failing folder sync after the rename is an error
/// here although the new contents are in place: callers that must tell the two apart use
/// [`sync_dir`] themselves, as the backup store does.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    // On failure the temp file is removed when `temp` drops.
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("syncing the folder {}: {e}", dir.display()),
            )
        })
}

/// Windows cannot open a folder as a file; a rename there is already durable enough.
#[cfg(not(unix))]
pub fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Creates `path` (it must not exist) readable and writable by its owner only (0600 on Unix),
/// with `contents`, synced to disk: keys and secrets.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temp_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.csv");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.csv")]);
        // A folder that does not exist: an error, nothing written.
        let missing = dir.path().join("nope").join("out.csv");
        assert!(write_atomically(&missing, b"x").is_err());
    }
}
