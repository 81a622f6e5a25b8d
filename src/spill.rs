//! Bytes kept until the end of a command on disk rather than in memory: the manifests an
//! export resolves before it writes them, and those `verify` keeps through its one pass
//! (5 MiB at 10,000 images, and growing with the corpus), and the `index.json` and
//! `manifest.json` it checks. They go to one temporary file per process in `$TMPDIR` (else
//! `/var/tmp`) that has no name (`O_TMPFILE`: no other process can open it, and the system
//! removes it when airlock exits, however it exits; where the file system does not allow that,
//! a file of mode 0600 unlinked the moment it is made). Where no such file can be made or
//! written, they stay in memory: keeping them never fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// An append-only temporary file.
#[derive(Debug)]
pub struct Stash {
    file: File,
    end: AtomicU64,
}

/// Where the temporary file goes: `$TMPDIR`, else `/var/tmp` (on disk by convention, where
/// `/tmp` is often memory).
fn stash_dir() -> PathBuf {
    match std::env::var_os("TMPDIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/tmp"),
    }
}

/// The process's stash, made on first use; `None` when it cannot be.
fn stash() -> Option<&'static Stash> {
    static STASH: OnceLock<Option<Stash>> = OnceLock::new();
    STASH
        .get_or_init(|| Stash::in_dir(&stash_dir()).ok())
        .as_ref()
}

impl Stash {
    /// A new file in `dir` that only this process can read: one that never has a name
    /// (`O_TMPFILE`) where the file system allows it, else one unlinked as soon as it is made.
    /// Either lives as long as its handle.
    fn in_dir(dir: &Path) -> io::Result<Stash> {
        use std::os::unix::fs::OpenOptionsExt;
        #[cfg(target_os = "linux")]
        let nameless = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        #[cfg(not(target_os = "linux"))]
        let nameless: io::Result<File> = Err(io::ErrorKind::Unsupported.into());
        let file = match nameless {
            Ok(f) => f,
            Err(_) => {
                static SEQ: AtomicU64 = AtomicU64::new(0);
                let name = dir.join(format!(
                    ".airlock-stash-{}-{}",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                // create_new: never a file (or a link) that was there before.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&name)?;
                std::fs::remove_file(&name)?;
                f
            }
        };
        Ok(Stash {
            file,
            end: AtomicU64::new(0),
        })
    }

    /// Appends `bytes`; on a write error (a full disk) they stay in memory.
    fn keep(&'static self, bytes: Vec<u8>) -> Kept {
        let Ok(len) = u32::try_from(bytes.len()) else {
            return Kept::Held(Arc::new(bytes));
        };
        let at = self.end.fetch_add(u64::from(len), Ordering::Relaxed);
        match self.file.write_all_at(&bytes, at) {
            Ok(()) => Kept::Stashed {
                stash: self,
                at,
                len,
            },
            Err(_) => Kept::Held(Arc::new(bytes)),
        }
    }
}

/// Bytes set aside: in the stash, or in memory.
#[derive(Clone, Debug)]
pub enum Kept {
    Held(Arc<Vec<u8>>),
    Stashed {
        stash: &'static Stash,
        at: u64,
        len: u32,
    },
}

impl Kept {
    /// Sets `bytes` aside in the process's stash (in memory when there is none).
    pub fn new(bytes: Vec<u8>) -> Kept {
        match stash() {
            Some(s) => s.keep(bytes),
            None => Kept::Held(Arc::new(bytes)),
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Kept::Held(b) => b.len() as u64,
            Kept::Stashed { len, .. } => u64::from(*len),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of the bytes, for what parses them as a stream.
    pub fn reader(&self) -> KeptReader<'_> {
        KeptReader { kept: self, pos: 0 }
    }

    /// The bytes, read back.
    pub fn bytes(&self) -> io::Result<Vec<u8>> {
        match self {
            Kept::Held(b) => Ok(b.to_vec()),
            Kept::Stashed { stash, at, len } => {
                let mut out = vec![0u8; *len as usize];
                stash.file.read_exact_at(&mut out, *at)?;
                Ok(out)
            }
        }
    }
}

/// Bytes set aside as they stream by, their length known in advance (a member of a bundle
/// being read): they never have to be held whole.
pub struct KeptWriter {
    /// The stash and where the bytes go in it, while writing to it works.
    stash: Option<(&'static Stash, u64)>,
    /// The room reserved there.
    size: u64,
    written: u64,
    memory: Vec<u8>,
    /// A failure to fall back to memory (the stash could not be read back).
    failed: Option<io::Error>,
}

impl KeptWriter {
    /// Room for `size` bytes in the process's stash (in memory when there is none).
    pub fn new(size: u64) -> KeptWriter {
        let stash = match (stash(), u32::try_from(size)) {
            (Some(s), Ok(_)) => Some((s, s.end.fetch_add(size, Ordering::Relaxed))),
            _ => None,
        };
        KeptWriter {
            stash,
            size,
            written: 0,
            memory: Vec::new(),
            failed: None,
        }
    }

    pub fn write(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some((s, at)) = self.stash {
            // Never past the room reserved (that is the next one's).
            let fits = self.written + chunk.len() as u64 <= self.size;
            if fits && s.file.write_all_at(chunk, at + self.written).is_ok() {
                self.written += chunk.len() as u64;
                return;
            }
            // The disk is full (or more came than announced): what is written comes back
            // into memory, and the rest goes there.
            self.stash = None;
            let mut back = vec![0u8; self.written as usize];
            if let Err(e) = s.file.read_exact_at(&mut back, at) {
                self.failed = Some(e);
                return;
            }
            self.memory = back;
        }
        self.memory.extend_from_slice(chunk);
        self.written += chunk.len() as u64;
    }

    /// What was written, set aside.
    pub fn finish(self) -> io::Result<Kept> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match (self.stash, u32::try_from(self.written)) {
            (Some((stash, at)), Ok(len)) => Ok(Kept::Stashed { stash, at, len }),
            _ => Ok(Kept::Held(Arc::new(self.memory))),
        }
    }
}

/// Reads kept bytes from the start.
pub struct KeptReader<'a> {
    kept: &'a Kept,
    pos: u64,
}

impl io::Read for KeptReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.kept.len().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        match self.kept {
            Kept::Held(b) => {
                let start = self.pos as usize;
                buf[..n].copy_from_slice(&b[start..start + n]);
            }
            Kept::Stashed { stash, at, .. } => {
                stash.file.read_exact_at(&mut buf[..n], at + self.pos)?;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Byte strings by their position in a list (`verify`: a bundle's blobs), kept once, read
/// back as often as asked. About 50 bytes an entry, whatever the bytes.
#[derive(Default)]
pub struct Spill {
    kept: BTreeMap<u32, Kept>,
}

impl Spill {
    pub fn new() -> Spill {
        Spill::default()
    }

    /// Keeps `bytes` at `at`; a position already kept keeps its first bytes.
    pub fn put(&mut self, at: usize, bytes: Vec<u8>) {
        let Ok(at) = u32::try_from(at) else {
            return;
        };
        self.kept.entry(at).or_insert_with(|| Kept::new(bytes));
    }

    /// The bytes kept at `at`.
    pub fn get(&self, at: usize) -> io::Result<Option<Vec<u8>>> {
        let Ok(at) = u32::try_from(at) else {
            return Ok(None);
        };
        self.kept.get(&at).map(Kept::bytes).transpose()
    }

    pub fn contains(&self, at: usize) -> bool {
        u32::try_from(at).is_ok_and(|at| self.kept.contains_key(&at))
    }

    /// Every position kept, in order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.kept.keys().map(|&at| at as usize)
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_bytes_come_back_from_the_stash() {
        let dir = tempfile::tempdir().unwrap();
        let stash: &'static Stash = Box::leak(Box::new(Stash::in_dir(dir.path()).unwrap()));
        // The file has no name: nothing is left behind, whatever happens.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let items: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; i as usize * 37]).collect();
        let kept: Vec<Kept> = items.iter().map(|b| stash.keep(b.clone())).collect();
        for (b, k) in items.iter().zip(&kept) {
            assert!(matches!(k, Kept::Stashed { .. }));
            assert_eq!(k.len(), b.len() as u64);
            assert_eq!(&k.bytes().unwrap(), b);
        }
        // Kept from several threads at once, each gets its own bytes back.
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mine: Vec<(Vec<u8>, Kept)> = (0..100u32)
                        .map(|i| {
                            let b = format!("{t}-{i}").repeat(i as usize % 7 + 1).into_bytes();
                            (b.clone(), stash.keep(b))
                        })
                        .collect();
                    mine.iter().all(|(b, k)| &k.bytes().unwrap() == b)
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap());
        }
    }

    #[test]
    fn bytes_written_as_they_stream_come_back_whole_and_as_a_stream() {
        use std::io::Read;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = KeptWriter::new(data.len() as u64);
        for chunk in data.chunks(7_919) {
            w.write(chunk);
        }
        let kept = w.finish().unwrap();
        assert_eq!(kept.len(), data.len() as u64);
        assert_eq!(kept.bytes().unwrap(), data);
        let mut streamed = Vec::new();
        let mut r = std::io::BufReader::with_capacity(1000, kept.reader());
        r.read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, data);
        let held = Kept::Held(Arc::new(data.clone()));
        let mut streamed = Vec::new();
        held.reader().read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, data);
    }

    #[test]
    fn more_bytes_than_announced_go_to_memory_whole() {
        let mut w = KeptWriter::new(10);
        w.write(b"0123456");
        w.write(b"789abc");
        let next = Kept::new(b"the next one".to_vec());
        let kept = w.finish().unwrap();
        assert_eq!(kept.bytes().unwrap(), b"0123456789abc");
        assert_eq!(next.bytes().unwrap(), b"the next one");
    }

    #[test]
    fn a_stash_that_cannot_be_made_is_refused_and_bytes_stay_in_memory() {
        assert!(Stash::in_dir(Path::new("/nonexistent/airlock")).is_err());
        let k = Kept::Held(Arc::new(b"held".to_vec()));
        assert_eq!(k.bytes().unwrap(), b"held");
        assert_eq!(k.len(), 4);
    }

    #[test]
    fn a_spill_gives_back_each_position_once_in_order() {
        let mut s = Spill::new();
        let items: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + i as usize]).collect();
        // Kept out of order, as manifests come among a bundle's blobs.
        for (at, b) in items.iter().enumerate().rev() {
            s.put(at * 3, b.clone());
        }
        // Kept again: the first bytes stay.
        s.put(9, b"other".to_vec());
        assert_eq!(s.len(), 20);
        for (at, b) in items.iter().enumerate() {
            assert_eq!(s.get(at * 3).unwrap().as_ref(), Some(b));
        }
        assert_eq!(s.get(1).unwrap(), None);
        assert!(s.contains(0) && !s.contains(2));
        let listed: Vec<usize> = s.positions().collect();
        assert_eq!(listed, (0..20).map(|i| i * 3).collect::<Vec<_>>());
    }
}
