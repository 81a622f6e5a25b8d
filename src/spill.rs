//! Bytes kept until the end of a command on disk rather than in memory: the manifests that
//! `verify` keeps through its one pass (tens of MiB at 30,000 images), in a temporary file
//! that no other process can open and that the system removes when airlock exits.

use crate::digest::Digest;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Byte strings by digest, appended once, read back as often as asked.
pub struct Spill {
    /// `None` when no temporary file could be made: the bytes stay in `memory`.
    file: Option<File>,
    memory: Vec<u8>,
    len: u64,
    /// Where each one sits (offset, length). 80 bytes an entry, not the bytes themselves.
    at: BTreeMap<Digest, (u64, u32)>,
}

/// Where the temporary file goes: `$TMPDIR`, else `/var/tmp` (on disk by convention, where
/// `/tmp` is often memory).
fn spill_dir() -> PathBuf {
    match std::env::var_os("TMPDIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/tmp"),
    }
}

/// A new file in `dir` that is unlinked at once: it lives as long as its handle.
fn anonymous_file(dir: &std::path::Path) -> io::Result<File> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = dir.join(format!(
        ".airlock-spill-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&name)?;
    std::fs::remove_file(&name)?;
    Ok(f)
}

impl Spill {
    /// A spill in a temporary file, or in memory when none can be made (a read-only system).
    pub fn new() -> Spill {
        Spill::in_dir(&spill_dir())
    }

    fn in_dir(dir: &std::path::Path) -> Spill {
        Spill {
            file: anonymous_file(dir).ok(),
            memory: Vec::new(),
            len: 0,
            at: BTreeMap::new(),
        }
    }

    /// Keeps `bytes` under `d`; a digest already kept keeps its first bytes.
    pub fn put(&mut self, d: &Digest, bytes: &[u8]) -> io::Result<()> {
        if self.at.contains_key(d) {
            return Ok(());
        }
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::other(format!("{d}: too large to keep")))?;
        match &self.file {
            Some(f) => f.write_all_at(bytes, self.len)?,
            None => self.memory.extend_from_slice(bytes),
        }
        self.at.insert(d.clone(), (self.len, len));
        self.len += u64::from(len);
        Ok(())
    }

    /// The bytes kept under `d`.
    pub fn get(&self, d: &Digest) -> io::Result<Option<Vec<u8>>> {
        let Some(&(offset, len)) = self.at.get(d) else {
            return Ok(None);
        };
        let mut out = vec![0u8; len as usize];
        match &self.file {
            Some(f) => f.read_exact_at(&mut out, offset)?,
            None => {
                let start = offset as usize;
                let kept = self
                    .memory
                    .get(start..start + out.len())
                    .ok_or_else(|| io::Error::other(format!("{d}: kept bytes out of range")))?;
                out.copy_from_slice(kept);
            }
        }
        Ok(Some(out))
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.at.contains_key(d)
    }

    /// Every digest kept, in order.
    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.at.keys()
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

impl Default for Spill {
    fn default() -> Spill {
        Spill::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Vec<Spill> {
        let on_disk = Spill::in_dir(&std::env::temp_dir());
        assert!(on_disk.file.is_some(), "no temporary file in the temp dir");
        let in_memory = Spill::in_dir(std::path::Path::new("/nonexistent/airlock"));
        assert!(in_memory.file.is_none());
        vec![on_disk, in_memory]
    }

    #[test]
    fn kept_bytes_come_back_by_digest_on_disk_and_in_memory() {
        for mut s in both() {
            let items: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + i as usize * 37]).collect();
            for b in &items {
                s.put(&Digest::of(b), b).unwrap();
            }
            // Kept again: the first bytes stay.
            s.put(&Digest::of(&items[3]), b"other").unwrap();
            assert_eq!(s.len(), 50);
            for b in &items {
                assert_eq!(s.get(&Digest::of(b)).unwrap().as_deref(), Some(&b[..]));
            }
            assert_eq!(s.get(&Digest::of(b"never kept")).unwrap(), None);
            let listed: Vec<&Digest> = s.digests().collect();
            let mut sorted = listed.clone();
            sorted.sort();
            assert_eq!(listed, sorted);
            assert!(s.contains(&Digest::of(&items[0])));
        }
    }

    #[test]
    fn the_temporary_file_leaves_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::in_dir(dir.path());
        assert!(s.file.is_some());
        s.put(&Digest::of(b"x"), b"x").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(
            s.get(&Digest::of(b"x")).unwrap().as_deref(),
            Some(&b"x"[..])
        );
    }
}
