//! The export cache (`--cache-dir`, `AIRLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/airlock` or
//! `~/.cache/airlock`): where it lives, what it holds, and pruning it by age or size. Entries
//! are `blobs/sha256/<hex>`, each checked against its digest before it is trusted; `tmp/`
//! holds downloads under way.

use crate::error::{Error, IoContext, Result};
// The largest manifest kept in, or read from, the cache: the largest read from a registry.
use crate::registry::MAX_MANIFEST_SIZE as MAX_MANIFEST;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The cache directory: the one given, else the environment's default.
pub fn dir(given: Option<&Path>) -> Result<PathBuf> {
    crate::options::cache_dir(given, &crate::options::ProcessEnv)
}

/// A manifest an earlier export kept ([`keep_manifest`]), checked against its digest: `None`
/// when it is not there, too large to be one, or damaged (a damaged one is removed and
/// fetched again). Found, it counts as used now (`cache prune --older-than`).
pub async fn manifest(dir: &Path, digest: &crate::digest::Digest) -> Option<Vec<u8>> {
    let path = crate::fetch::cache_path(dir, digest);
    let digest = digest.clone();
    // One blocking task for the whole lookup: a miss is one failed open.
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = std::fs::File::open(&path).ok()?;
        let meta = f.metadata().ok()?;
        if !meta.is_file() || meta.len() > MAX_MANIFEST {
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&f).read_to_end(&mut bytes).ok()?;
        if crate::digest::Digest::of(&bytes) != digest {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let _ = f.set_modified(SystemTime::now());
        Some(bytes)
    })
    .await
    .ok()
    .flatten()
}

/// Keeps a manifest whose digest the caller checked, for later exports: written under `tmp/`
/// (a name of its own, as two images may fetch one manifest at once), then renamed into
/// place. Best effort: a manifest not kept is fetched again next time.
pub async fn keep_manifest(dir: &Path, digest: &crate::digest::Digest, bytes: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if bytes.len() as u64 > MAX_MANIFEST {
        return;
    }
    let path = crate::fetch::cache_path(dir, digest);
    // `.PID` last, as every temporary file's name ends (see `fetch::clean_stale_temps`).
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir
        .join("tmp")
        .join(format!("{}-m{n}.{}", digest.hex(), std::process::id()));
    let bytes = bytes.to_vec();
    let _ = tokio::task::spawn_blocking(move || {
        if path.exists() {
            return;
        }
        if std::fs::write(&tmp, &bytes).is_err() || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    })
    .await;
}

/// One cached blob.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub size: u64,
    /// Last written or used.
    pub used: SystemTime,
}

/// What the cache holds.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub dir: PathBuf,
    pub entries: usize,
    pub bytes: u64,
    /// Seconds since the least recently used entry was used.
    pub oldest_age_secs: Option<u64>,
    /// Downloads under way, or left by a process that was killed.
    pub temporary_files: usize,
}

/// Calls `f` with every entry of the cache, in directory order.
fn each_entry(dir: &Path, mut f: impl FnMut(Entry)) -> Result<()> {
    // What `cache prune` deletes must be the cache's: not an OCI image layout given by
    // mistake (its blobs look the same), nor what a symbolic link points to.
    if dir.join("oci-layout").exists() {
        return Err(Error::Usage(format!(
            "{} is an OCI image layout, not airlock's cache",
            dir.display()
        )));
    }
    let blobs = dir.join("blobs/sha256");
    for part in [dir.join("blobs"), blobs.clone()] {
        match std::fs::symlink_metadata(&part) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Usage(format!(
                    "{} is a symbolic link: airlock's cache holds its entries itself",
                    part.display()
                )))
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    for e in std::fs::read_dir(&blobs).ctx(|| format!("reading {}", blobs.display()))? {
        let e = e.ctx(|| format!("reading {}", blobs.display()))?;
        let meta = e
            .metadata()
            .ctx(|| format!("reading {}", e.path().display()))?;
        // Entries are named by their digest's 64 hex digits; anything else is not ours.
        let named = e
            .file_name()
            .to_str()
            .is_some_and(|n| crate::digest::Digest::parse(&format!("sha256:{n}")).is_ok());
        if !meta.is_file() || !named {
            continue;
        }
        f(Entry {
            path: e.path(),
            size: meta.len(),
            used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    Ok(())
}

/// A lock on a cache directory (`DIR/lock`, `flock`): exports hold it shared while they use
/// the cache, `cache prune` exclusively, so that a prune never removes an entry an export has
/// found and is about to read. Released when dropped (or when the process ends, however).
pub struct CacheLock {
    _file: std::fs::File,
}

/// Takes the cache's lock: shared waits for a prune under way (seconds); exclusive fails at
/// once, naming the cache, when an export holds it.
pub fn lock(dir: &Path, exclusive: bool) -> Result<CacheLock> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    let op = if exclusive {
        libc::LOCK_EX | libc::LOCK_NB
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: a plain system call on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(CacheLock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                return Err(Error::Failed(format!(
                    "an export is using the cache {}: prune it once the export is done",
                    dir.display()
                )))
            }
            _ => return Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }
}

/// Every entry of the cache, least recently used first.
pub fn entries(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    each_entry(dir, |e| out.push(e))?;
    out.sort_by_key(|e| e.used);
    Ok(out)
}

/// What the cache holds, counted as its directory is read: no list of its entries (export
/// ends with this, and a cache of 100,000 blobs listed was 15 MiB).
pub fn summary(dir: &Path) -> Result<Summary> {
    let (mut entries, mut bytes, mut oldest) = (0, 0, None::<SystemTime>);
    each_entry(dir, |e| {
        entries += 1;
        bytes += e.size;
        oldest = Some(oldest.map_or(e.used, |o| o.min(e.used)));
    })?;
    let temporary_files = std::fs::read_dir(dir.join("tmp"))
        .map(|r| r.count())
        .unwrap_or(0);
    Ok(Summary {
        dir: dir.to_path_buf(),
        entries,
        bytes,
        oldest_age_secs: oldest.map(|used| {
            SystemTime::now()
                .duration_since(used)
                .unwrap_or(Duration::ZERO)
                .as_secs()
        }),
        temporary_files,
    })
}

/// What a prune removed.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    pub removed: usize,
    pub bytes_freed: u64,
    pub kept: usize,
    pub bytes_kept: u64,
}

/// Removes entries unused for longer than `older_than`, then the least recently used until
/// the rest fit in `max_size`.
pub fn prune(dir: &Path, older_than: Option<Duration>, max_size: Option<u64>) -> Result<Pruned> {
    if !dir.join("blobs").exists() {
        return Ok(Pruned::default());
    }
    let mut all = entries(dir)?;
    // Not while an export uses the cache (after the checks of what the directory is).
    let _lock = lock(dir, true)?;
    let now = SystemTime::now();
    let mut out = Pruned::default();
    let remove = |e: &Entry, out: &mut Pruned| -> Result<()> {
        match std::fs::remove_file(&e.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io(format!("removing {}", e.path.display()), err)),
        }
        out.removed += 1;
        out.bytes_freed += e.size;
        Ok(())
    };
    if let Some(age) = older_than {
        let (old, keep): (Vec<Entry>, Vec<Entry>) = all
            .into_iter()
            .partition(|e| now.duration_since(e.used).unwrap_or(Duration::ZERO) > age);
        for e in &old {
            remove(e, &mut out)?;
        }
        all = keep;
    }
    if let Some(max) = max_size {
        let mut total: u64 = all.iter().map(|e| e.size).sum();
        let mut keep = Vec::new();
        for e in all {
            if total > max {
                total -= e.size;
                remove(&e, &mut out)?;
            } else {
                keep.push(e);
            }
        }
        all = keep;
    }
    out.kept = all.len();
    out.bytes_kept = all.iter().map(|e| e.size).sum();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry named by a digest: `name` repeated to 64 hex digits.
    fn hex(name: &str) -> String {
        name.repeat(64)
    }

    fn entry(dir: &Path, name: &str, size: usize, age_days: u64) {
        let p = dir.join("blobs/sha256").join(hex(name));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, vec![0u8; size]).expect("write");
        let f = std::fs::File::options().write(true).open(&p).expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400))
            .expect("mtime");
    }

    #[test]
    fn prune_by_age_then_by_size_least_recently_used_first() {
        let d = tempfile::tempdir().expect("tempdir");
        entry(d.path(), "a", 100, 40);
        entry(d.path(), "b", 100, 20);
        entry(d.path(), "c", 100, 10);
        entry(d.path(), "e", 100, 0);
        let s = summary(d.path()).expect("summary");
        assert_eq!((s.entries, s.bytes), (4, 400));
        assert!(s.oldest_age_secs.expect("age") >= 40 * 86_400 - 60);
        let p = prune(d.path(), Some(Duration::from_secs(30 * 86_400)), None).expect("prune");
        assert_eq!((p.removed, p.kept), (1, 3));
        assert!(!d.path().join("blobs/sha256").join(hex("a")).exists());
        let p = prune(d.path(), None, Some(150)).expect("prune");
        assert_eq!((p.removed, p.bytes_kept), (2, 100));
        assert!(
            d.path().join("blobs/sha256").join(hex("e")).exists(),
            "the newest stays"
        );
    }
}
