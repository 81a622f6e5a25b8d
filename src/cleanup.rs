//! The process-wide list of files this run is writing and has not yet put in place
//! (`NAME.partial`, volume and side-file partials, cache temporaries). A file is registered
//! as it is created and unregistered when it is renamed into place or removed; on SIGINT or
//! SIGTERM `remove_all` deletes whatever is still listed, and no new file can be created
//! afterwards, so an interrupted run leaves nothing of its own behind.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

struct Registry {
    paths: BTreeSet<PathBuf>,
    /// Set once the process is stopping: nothing new may be created.
    closed: bool,
}

static FILES: Mutex<Registry> = Mutex::new(Registry {
    paths: BTreeSet::new(),
    closed: false,
});

fn lock() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves the set as it was: still usable.
    FILES.lock().unwrap_or_else(|e| e.into_inner())
}

fn stopping() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "airlock is stopping")
}

/// Creates (truncates) `path` and lists it for removal until [`keep`] or [`remove`]. The file
/// is created under the lock, so a signal cannot slip between creating and listing it.
pub fn create(path: &Path) -> io::Result<File> {
    let mut reg = lock();
    if reg.closed {
        return Err(stopping());
    }
    let f = File::create(path)?;
    reg.paths.insert(path.to_path_buf());
    Ok(f)
}

/// Writes `data` to `path` as [`create`] does.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Renames a listed file into its final place and stops listing it.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    let mut reg = lock();
    if reg.closed {
        return Err(stopping());
    }
    std::fs::rename(from, to)?;
    reg.paths.remove(from);
    Ok(())
}

/// Removes a listed file (a missing one is fine) and stops listing it.
pub fn remove(path: &Path) {
    let mut reg = lock();
    let _ = std::fs::remove_file(path);
    reg.paths.remove(path);
}

/// Stops listing `path` without touching it.
pub fn keep(path: &Path) {
    lock().paths.remove(path);
}

/// Removes every listed file and refuses new ones from now on. Returns what was removed.
pub fn remove_all() -> Vec<PathBuf> {
    let mut reg = lock();
    reg.closed = true;
    let mut removed = Vec::new();
    for p in std::mem::take(&mut reg.paths) {
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_until_renamed_or_removed() {
        let dir = std::env::temp_dir().join(format!("airlock-cleanup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.partial");
        let b = dir.join("b.partial");
        write(&a, b"a").unwrap();
        create(&b).unwrap();
        rename(&a, &dir.join("a")).unwrap();
        assert!(lock().paths.contains(&b) && !lock().paths.contains(&a));
        remove(&b);
        assert!(!b.exists() && !lock().paths.contains(&b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
