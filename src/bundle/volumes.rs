//! The files a bundle lives in: one file or numbered volumes (`NAME.001`, `NAME.002`, …)
//! whose concatenation is the bundle. A writer that splits and hashes as it goes and only
//! renames into place when everything is flushed, and a reader that seeks across volumes.

use crate::digest::HashingWriter;
use crate::error::{Error, IoContext, Result};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Volumes a bundle may have: `NAME.001` to `NAME.999`, as readers look for them.
pub const MAX_VOLUMES: usize = 999;

/// The name of volume `n` (1-based) of `base`.
pub fn volume_name(base: &Path, n: usize) -> PathBuf {
    with_suffix(base, &format!(".{n:03}"))
}

/// A side file of a bundle (its `.sha256`, a `.minisig`, a public key) read whole, up to
/// `limit` bytes: a larger one is an error, not read into memory (a hostile or mistaken file
/// of gigabytes took `inspect` to a GB).
pub fn read_side_file(path: &Path, limit: u64) -> io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {limit} bytes such a file holds"),
        ));
    }
    Ok(text)
}

/// The most a `.sha256` file may hold: a line per volume (999 at most) of about 100 bytes.
pub const MAX_SUMS_FILE: u64 = 1 << 20;

/// The checksum file of `base`.
pub fn checksum_name(base: &Path) -> PathBuf {
    with_suffix(base, ".sha256")
}

fn partial(p: &Path) -> PathBuf {
    with_suffix(p, ".partial")
}

/// A file that belongs beside the bundle and is replaced together with it.
#[derive(Clone, Debug)]
pub enum SideFile {
    /// `partial` (already written and listed with [`crate::cleanup`]) becomes `dest`.
    Replace { partial: PathBuf, dest: PathBuf },
    /// `dest` belongs to the previous bundle of that name and must go (e.g. its signature
    /// when the new bundle is not signed).
    Remove(PathBuf),
}

/// How much of a volume is handed to the kernel to write back at a time.
const WRITEBACK: u64 = 32 * 1024 * 1024;

/// Writes the bundle's bytes into `NAME.partial`, or into `NAME.NNN.partial` volumes of at
/// most `split` bytes; `finish` syncs, renames and writes `NAME.sha256`. Dropped unfinished,
/// it removes its partial files, so a failed export leaves nothing that looks complete.
pub struct VolumeWriter {
    base: PathBuf,
    split: Option<u64>,
    current: Option<HashingWriter<BufWriter<File>>>,
    /// Bytes of the current volume handed to the kernel for writing back (see
    /// [`WRITEBACK`]).
    written_back: u64,
    /// Finished volumes: final name and sha256.
    done: Vec<(PathBuf, String)>,
    partials: Vec<PathBuf>,
    finished: bool,
}

impl VolumeWriter {
    pub fn create(base: &Path, split: Option<u64>) -> Result<VolumeWriter> {
        if split == Some(0) {
            return Err(Error::Usage("--split-size must be more than 0".into()));
        }
        let mut w = VolumeWriter {
            base: base.to_path_buf(),
            split,
            current: None,
            written_back: 0,
            done: Vec::new(),
            partials: Vec::new(),
            finished: false,
        };
        w.open_next()?;
        Ok(w)
    }

    fn final_name(&self, n: usize) -> PathBuf {
        match self.split {
            Some(_) => volume_name(&self.base, n),
            None => self.base.clone(),
        }
    }

    fn open_next(&mut self) -> Result<()> {
        let n = self.partials.len() + 1;
        if n > MAX_VOLUMES {
            return Err(Error::Usage(format!(
                "{} would need more than {MAX_VOLUMES} volumes of {} bytes: give a larger \
                 --split-size",
                self.base.display(),
                self.split.unwrap_or(0)
            )));
        }
        let name = self.final_name(n);
        let p = partial(&name);
        let f = crate::cleanup::create(&p).ctx(|| format!("creating {}", p.display()))?;
        self.partials.push(p);
        // The encoder hands over whole chunks of a MiB, which pass the buffer straight to the
        // file; the buffer only gathers what is written in smaller pieces.
        self.current = Some(HashingWriter::new(BufWriter::with_capacity(64 << 10, f)));
        self.written_back = 0;
        Ok(())
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some(w) = self.current.take() {
            let (buf, sum) = w.finish();
            let f = buf.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            let n = self.done.len() + 1;
            self.done.push((self.final_name(n), sum));
        }
        Ok(())
    }

    /// Syncs and renames every volume into place and writes the `.sha256` file, then puts the
    /// side files in place (`side`: a signature written beside the bundle, or a stale one to
    /// remove). Until then the previous bundle of that name and its side files are untouched.
    /// Returns the final file names.
    pub fn finish(mut self, side: &[SideFile]) -> Result<Vec<PathBuf>> {
        self.close_current()
            .map_err(|e| super::writer::write_error(&self.base, e))?;
        let mut listing = String::new();
        for (name, sum) in &self.done {
            let file_name = name
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            listing.push_str(&format!("{sum}  {file_name}\n"));
        }
        let sums = checksum_name(&self.base);
        let sums_partial = partial(&sums);
        crate::cleanup::write(&sums_partial, listing.as_bytes())
            .ctx(|| format!("writing {}", sums_partial.display()))?;
        self.partials.push(sums_partial.clone());
        // Everything is written and synced: from here on the new set replaces the old one.
        for (i, (name, _)) in self.done.iter().enumerate() {
            crate::cleanup::rename(&self.partials[i], name)
                .ctx(|| format!("renaming to {}", name.display()))?;
        }
        crate::cleanup::rename(&sums_partial, &sums)
            .ctx(|| format!("renaming to {}", sums.display()))?;
        for f in side {
            match f {
                SideFile::Replace { partial, dest } => crate::cleanup::rename(partial, dest)
                    .ctx(|| format!("renaming to {}", dest.display()))?,
                SideFile::Remove(dest) => match fs::remove_file(dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("removing the stale {}", dest.display()),
                            e,
                        ))
                    }
                },
            }
        }
        self.remove_stale()?;
        if let Some(dir) = self.base.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.finished = true;
        Ok(self.done.iter().map(|(n, _)| n.clone()).collect())
    }
}

impl VolumeWriter {
    /// Removes what an earlier export to the same name left that is not part of this bundle
    /// (a single file where volumes now are, volumes where a single file now is, volumes past
    /// the new last one), so nobody reads a stale bundle by its name.
    fn remove_stale(&self) -> Result<()> {
        let remove = |p: &Path| -> Result<()> {
            match fs::remove_file(p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(format!("removing the stale {}", p.display()), e)),
            }
        };
        if self.split.is_some() {
            remove(&self.base)?;
        }
        let first_stale = if self.split.is_some() {
            self.done.len() + 1
        } else {
            1
        };
        for n in first_stale..=MAX_VOLUMES {
            let v = volume_name(&self.base, n);
            if !v.exists() {
                break;
            }
            remove(&v)?;
        }
        Ok(())
    }

    /// Starts writing back what the current volume holds past the last [`WRITEBACK`] bytes
    /// handed over (`sync_file_range`, which does not wait for the disk), so that the disk
    /// writes while the export downloads and hashes, and the `fsync` at the end finds little
    /// left. Before, the bundle waited in the page cache (up to a fifth of memory, Linux's
    /// default), and the `fsync` wrote it all after the last byte: 0.43 s for 1 GiB on a fast
    /// disk, minutes for GiBs bound for a slow USB stick. Only a hint: the `fsync` at the end
    /// is what reports a failed write.
    fn write_back(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(c) = &self.current {
            use std::os::unix::io::AsRawFd;
            let end = c.written() - c.written() % WRITEBACK;
            if end >= self.written_back + WRITEBACK {
                let fd = c.get_ref().get_ref().as_raw_fd();
                let (from, len) = (self.written_back, end - self.written_back);
                if let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) {
                    // SAFETY: a plain system call on a file descriptor this writer owns.
                    unsafe { libc::sync_file_range(fd, from, len, libc::SYNC_FILE_RANGE_WRITE) };
                }
                self.written_back = end;
            }
        }
    }
}

impl Write for VolumeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut want = buf.len();
        if let Some(limit) = self.split {
            let written = self.current.as_ref().map(|c| c.written()).unwrap_or(0);
            if written >= limit {
                self.close_current()?;
                self.open_next()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                return self.write(buf);
            }
            want = want.min((limit - written) as usize);
        }
        let n = match self.current.as_mut() {
            Some(c) => c.write(&buf[..want])?,
            None => return Err(io::Error::other("bundle writer already closed")),
        };
        self.write_back();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.current.as_mut() {
            Some(c) => c.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for VolumeWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.current = None;
            for p in &self.partials {
                crate::cleanup::remove(p);
            }
        }
    }
}

/// A volume's name split into the bundle's name and its number (`b.tar.zst.002` →
/// `("b.tar.zst", "002")`); `None` for a name without a three-digit number at its end.
fn split_volume(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
        .filter(|(_, n)| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `NAME.sha256` as read back: each line with the file of this bundle it stands for.
pub struct Sums {
    /// The checksum file.
    pub file: PathBuf,
    pub lines: Vec<SumLine>,
    /// The lines name the volumes under another name than the bundle's: it was renamed
    /// after export (media carried by hand often are), and each line stands for the volume
    /// with its suffix (`.001`, …, or none for a single file).
    pub renamed: bool,
}

pub struct SumLine {
    /// The name the line gives.
    pub listed: String,
    pub sha256: String,
    /// The file beside the bundle the line is for.
    pub stands_for: PathBuf,
}

impl Sums {
    /// The checksum file of the bundle `base` (a single file or the base of volumes); `None`
    /// when there is none, or it lists nothing.
    pub fn read(base: &Path) -> Option<Sums> {
        let file = checksum_name(base);
        let text = read_side_file(&file, MAX_SUMS_FILE).ok()?;
        let listed: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, n)| (n.trim().to_string(), h.trim().to_string()))
            .collect();
        if listed.is_empty() {
            return None;
        }
        let base_name = base.file_name()?.to_string_lossy().into_owned();
        let suffixes = renamed_suffixes(&listed, &base_name, base.is_file());
        let renamed = suffixes.is_some();
        let lines = listed
            .into_iter()
            .enumerate()
            .map(|(k, (listed, sha256))| {
                let stands_for = match &suffixes {
                    Some(s) => base.with_file_name(format!("{base_name}{}", s[k])),
                    None => base.with_file_name(&listed),
                };
                SumLine {
                    listed,
                    sha256,
                    stands_for,
                }
            })
            .collect();
        Some(Sums {
            file,
            lines,
            renamed,
        })
    }

    /// The line for `file`, if one stands for it.
    pub fn line_for(&self, file: &Path) -> Option<&SumLine> {
        self.lines.iter().find(|l| l.stands_for == file)
    }
}

/// Where the lines of a checksum file name the files of one bundle under another name than
/// `base`: the suffix each line's name has after that other name (`""` for one line naming a
/// single file, when the bundle is one; `.001`, `.002`, … for volumes). `None` when a line
/// names a file of `base`'s own name, or the lines are not one bundle's.
fn renamed_suffixes(
    listed: &[(String, String)],
    base: &str,
    single_file: bool,
) -> Option<Vec<String>> {
    let of_base = |n: &str| n == base || split_volume(n).is_some_and(|(b, _)| b == base);
    if listed.iter().any(|(n, _)| of_base(n)) {
        return None;
    }
    if single_file {
        let [(single, _)] = listed else {
            return None;
        };
        let volume = split_volume(single).is_some();
        return (!volume && !single.contains('/')).then(|| vec![String::new()]);
    }
    let mut stem = None;
    let mut suffixes = Vec::with_capacity(listed.len());
    for (name, _) in listed {
        let (s, n) = split_volume(name)?;
        if s.contains('/') {
            return None;
        }
        if *stem.get_or_insert(s) != s {
            return None;
        }
        suffixes.push(format!(".{n}"));
    }
    let mut distinct = suffixes.clone();
    distinct.sort();
    distinct.dedup();
    (distinct.len() == suffixes.len()).then_some(suffixes)
}

/// Finds the files of a bundle given its base name, any of its volumes, or a single file.
/// Volumes must be numbered without gaps; the `.sha256` file, when present, must name them all.
pub fn discover(given: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if given.is_dir() {
        let found = bundles_in(given);
        let detail = if found.is_empty() {
            "is a directory, and holds no bundle (NAME.tar.zst, or volumes NAME.001, …)".to_string()
        } else {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            format!(
                "is a directory: give the bundle in it: {}",
                names.join(", ")
            )
        };
        return Err(Error::bundle(given, detail));
    }
    let s = given.to_string_lossy();
    // A volume name: strip `.NNN` to get the base.
    let base = match split_volume(&s) {
        Some((b, _)) => PathBuf::from(b),
        None => given.to_path_buf(),
    };
    if base.is_file() {
        return Ok((base.clone(), vec![base]));
    }
    let mut vols = Vec::new();
    for n in 1..=MAX_VOLUMES {
        let v = volume_name(&base, n);
        if v.is_file() {
            vols.push(v);
        } else {
            break;
        }
    }
    if vols.is_empty() {
        return Err(Error::bundle(
            given,
            "no such file, and no volumes named like NAME.001 beside it",
        ));
    }
    // Any volume after a gap means one is missing.
    for n in vols.len() + 2..=vols.len() + 10 {
        let v = volume_name(&base, n);
        if v.is_file() {
            return Err(Error::bundle(
                volume_name(&base, vols.len() + 1),
                format!("volume is missing (but {} exists)", v.display()),
            ));
        }
    }
    if let Some(sums) = Sums::read(&base) {
        for line in &sums.lines {
            if !line.stands_for.is_file() {
                let listed = if sums.renamed {
                    format!(" as {}", line.listed)
                } else {
                    String::new()
                };
                return Err(Error::bundle(
                    &line.stands_for,
                    format!(
                        "volume listed in {}{listed} is missing",
                        sums.file.display()
                    ),
                ));
            }
        }
    }
    Ok((base, vols))
}

/// The bundles in directory `dir`, by the names to give (`NAME.tar.zst`, or the base name of
/// volumes `NAME.001`, …), sorted; at most ten.
fn bundles_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match split_volume(&name) {
                Some((base, "001")) => Some(dir.join(base)),
                Some(_) => None,
                None => name.ends_with(".tar.zst").then(|| dir.join(&name)),
            }
        })
        .collect();
    found.sort();
    found.truncate(10);
    found
}

/// The volumes (or the single file) whose sha256 differs from the one `NAME.sha256` lists.
/// Re-reads them; used to explain a failure, so empty when there is no checksum file.
pub fn damaged_volumes(base: &Path, volumes: &[PathBuf]) -> Vec<PathBuf> {
    use sha2::{Digest as _, Sha256};
    let Some(sums) = Sums::read(base) else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter(|v| {
            let Some(want) = sums.line_for(v).map(|l| l.sha256.as_str()) else {
                return false;
            };
            let mut h = Sha256::new();
            match File::open(v).and_then(|mut f| io::copy(&mut f, &mut h)) {
                Ok(_) => hex::encode(h.finalize()) != *want,
                Err(_) => true,
            }
        })
        .cloned()
        .collect()
}

/// Adds to a bundle error which volumes do not match `NAME.sha256`: a structural failure in
/// a damaged volume is then reported against that volume.
pub fn explain_damage(e: Error, given: &Path) -> Error {
    let Ok((base, volumes)) = discover(given) else {
        return e;
    };
    let damaged = damaged_volumes(&base, &volumes);
    if damaged.is_empty() {
        return e;
    }
    let detail = match e {
        Error::Bundle { detail, .. } => detail,
        other => other.to_string(),
    };
    let lines: Vec<String> = damaged
        .iter()
        .map(|v| {
            format!(
                "{} does not match its checksum in {}: it is damaged or out of order",
                v.display(),
                checksum_name(&base).display()
            )
        })
        .collect();
    Error::bundle(base, format!("{detail}\n  {}", lines.join("\n  ")))
}

/// Reads the concatenation of several files as one seekable stream.
pub struct MultiFile {
    files: Vec<(PathBuf, u64)>,
    total: u64,
    pos: u64,
    open: Option<(usize, File)>,
}

impl MultiFile {
    pub fn open(paths: &[PathBuf]) -> Result<MultiFile> {
        let mut files = Vec::new();
        let mut total = 0u64;
        for p in paths {
            let len = fs::metadata(p)
                .ctx(|| format!("reading {}", p.display()))?
                .len();
            total += len;
            files.push((p.clone(), len));
        }
        Ok(MultiFile {
            files,
            total,
            pos: 0,
            open: None,
        })
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Which file holds byte `pos`, and where it starts.
    fn locate(&self, pos: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (i, (_, len)) in self.files.iter().enumerate() {
            if pos < start + len {
                return Some((i, start));
            }
            start += len;
        }
        None
    }

    /// The files that hold bytes `start..end` (for error messages).
    pub fn files_between(&self, start: u64, end: u64) -> Vec<PathBuf> {
        let mut at = 0;
        let mut out = Vec::new();
        for (p, len) in &self.files {
            if at < end && start < at + len {
                out.push(p.clone());
            }
            at += len;
        }
        out
    }

    /// The file that holds byte `pos` (for error messages).
    pub fn file_at(&self, pos: u64) -> PathBuf {
        self.locate(pos)
            .or_else(|| self.files.len().checked_sub(1).map(|i| (i, 0)))
            .map(|(i, _)| self.files[i].0.clone())
            .unwrap_or_default()
    }
}

impl Clone for MultiFile {
    fn clone(&self) -> Self {
        MultiFile {
            files: self.files.clone(),
            total: self.total,
            pos: self.pos,
            open: None,
        }
    }
}

impl Read for MultiFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((idx, start)) = self.locate(self.pos) else {
            return Ok(0);
        };
        let within = self.pos - start;
        let reopen = !matches!(&self.open, Some((i, _)) if *i == idx);
        if reopen {
            let f = File::open(&self.files[idx].0).map_err(|e| {
                io::Error::new(e.kind(), format!("{}: {e}", self.files[idx].0.display()))
            })?;
            self.open = Some((idx, f));
        }
        let Some((_, f)) = self.open.as_mut() else {
            return Ok(0);
        };
        f.seek(SeekFrom::Start(within))?;
        let left = self.files[idx].1 - within;
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for MultiFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.total.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        self.pos = new;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::renamed_suffixes;

    fn lines(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), "0".repeat(64)))
            .collect()
    }

    #[test]
    fn checksum_lines_of_a_renamed_bundle_stand_for_its_volumes_by_number() {
        let volumes = lines(&["set.tar.zst.002", "set.tar.zst.001"]);
        assert_eq!(
            renamed_suffixes(&volumes, "arc.tar.zst", false),
            Some(vec![".002".to_string(), ".001".to_string()])
        );
        // A new name that is a prefix of the old one is still a rename.
        assert!(renamed_suffixes(&volumes, "set", false).is_some());
        // The bundle's own names: nothing to stand in for.
        assert_eq!(renamed_suffixes(&volumes, "set.tar.zst", false), None);
        assert_eq!(
            renamed_suffixes(&lines(&["single.tar.zst"]), "one.tar.zst", true),
            Some(vec![String::new()])
        );
        assert_eq!(
            renamed_suffixes(&lines(&["one.tar.zst"]), "one.tar.zst", true),
            None
        );
        // Not the lines of one bundle: two stems, a repeated number, a path, no number, or
        // one file's line for a bundle of volumes.
        for (names, single) in [
            (&["a.tar.zst.001", "b.tar.zst.002"][..], false),
            (&["a.tar.zst.001", "a.tar.zst.001"][..], false),
            (&["dir/a.tar.zst.001", "dir/a.tar.zst.002"][..], false),
            (&["a.tar.zst", "a.tar.zst.001"][..], false),
            (&["notes.txt"][..], false),
            (&["a.tar.zst.001"][..], true),
            (&["dir/a.tar.zst"][..], true),
        ] {
            assert_eq!(
                renamed_suffixes(&lines(names), "arc.tar.zst", single),
                None,
                "{names:?}"
            );
        }
    }
}
