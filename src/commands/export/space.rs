//! The free-space check an export makes before it downloads anything: the bundle at `-o` and
//! the blobs that will go through the cache must fit where they are written (statvfs).

use super::Contents;
use crate::error::{Error, Result};
use crate::fetch;
use crate::progress::human;
use std::path::{Path, PathBuf};

/// Free bytes for an unprivileged writer, and the device id, of the filesystem at `dir`.
fn statvfs(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Usage(format!("{} contains a NUL byte", dir.display())))?;
    // SAFETY: `st` is a plain C struct filled by statvfs; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(Error::io(
            format!("checking the free space at {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    let dev = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("checking {}", dir.display()), e))?
        .dev();
    Ok((free, dev))
}

/// The directory a path will be written in (`.` for a bare file name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What the export will write: the bundle (its members before compression, tar headers
/// and padding included: compressed layers do not shrink, so this is what to plan for) and
/// the blobs that will be downloaded into the cache (those that are not there yet and are
/// small enough to go through it) with the spool space of the larger ones.
pub(super) fn needed(contents: &Contents, cache: &Path, cache_all: bool) -> (u64, u64) {
    let stream_over = if cache_all {
        u64::MAX
    } else {
        fetch::stream_threshold()
    };
    // bundle.json, oci-layout and index.json are small; a generous allowance covers them and
    // the zstd frame headers and seek table.
    let mut bundle: u64 = 64 * 1024 + 2 * 512;
    let mut cached: u64 = 0;
    // Large blobs pass through spool files in the cache's tmp/: at most the spool budget
    // ahead of the writer, plus the one the writer reads, which holds no more than a window
    // of it where the file system frees what was read (ext4, XFS, Btrfs, tmpfs; not FAT).
    let (mut large, mut largest) = (0u64, 0u64);
    for o in &contents.objects {
        bundle = bundle.saturating_add(crate::bundle::tar_span(o.size) + 64);
        if o.inline.is_none() && o.size > stream_over {
            large = large.saturating_add(o.size);
            largest = largest.max(o.size);
        }
        if o.inline.is_some() || o.size > stream_over {
            continue;
        }
        let there = std::fs::metadata(fetch::cache_path(cache, &o.digest))
            .map(|m| m.len() == o.size)
            .unwrap_or(false);
        if !there {
            cached = cached.saturating_add(o.size);
        }
    }
    let read_spool = if largest > crate::bundle::sink::READ_SPOOL_MAX
        && crate::bundle::sink::punches_holes(&cache.join("tmp"))
    {
        crate::bundle::sink::READ_SPOOL_MAX
    } else {
        largest
    };
    let spool = large.min(crate::bundle::sink::AHEAD_BUDGET.saturating_add(read_spool));
    (bundle, cached.saturating_add(spool))
}

/// Fails (exit 1) when the bundle at `out`, or the cache, or both on one filesystem, will not
/// fit: says how much is needed, how much is free, and where.
pub(super) fn check(contents: &Contents, out: &Path, cache: &Path, cache_all: bool) -> Result<()> {
    let (bundle, cached) = needed(contents, cache, cache_all);
    let out_dir = dir_of(out);
    let (out_free, out_fs) = statvfs(&out_dir)?;
    let (cache_free, cache_fs) = statvfs(cache)?;
    let short = |what: String, need: u64, free: u64, dir: &Path| {
        Error::Failed(format!(
            "No space left for {what} at {}: it needs about {} ({need} bytes), {} ({free} bytes) \
             is free there; {} more is needed. Nothing was downloaded.",
            dir.display(),
            human(need),
            human(free),
            human(need - free)
        ))
    };
    let name = out.display().to_string();
    if out_fs == cache_fs && cached > 0 {
        let need = bundle.saturating_add(cached);
        if need > out_free {
            return Err(short(
                format!(
                    "{name} ({}) and the blobs to cache in {} ({})",
                    human(bundle),
                    cache.display(),
                    human(cached)
                ),
                need,
                out_free,
                &out_dir,
            ));
        }
        return Ok(());
    }
    if bundle > out_free {
        return Err(short(name, bundle, out_free, &out_dir));
    }
    if cached > cache_free {
        return Err(short(
            format!("the blobs to cache in {}", cache.display()),
            cached,
            cache_free,
            cache,
        ));
    }
    Ok(())
}
