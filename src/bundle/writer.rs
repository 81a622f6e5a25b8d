//! Writing a bundle: a tar stream whose every member starts a new zstd frame (large members
//! span several frames), closed by the zstd seekable-format seek table, into one file or
//! volumes. Headers are fixed (ustar, mode 0644, uid/gid 0, one mtime) so that the same
//! input gives the same bytes.

use super::volumes::VolumeWriter;
use crate::error::{Error, IoContext, Result};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Uncompressed size at which a member's data starts a new frame.
pub const FRAME_SIZE: u32 = 16 * 1024 * 1024;
/// zstd level: 3 is zstd's default, fast enough to keep up with a LAN.
pub const LEVEL: i32 = 3;

/// A `Write` handle to the volume writer that the encoder can own while we keep the writer.
#[derive(Clone)]
struct Shared(Arc<Mutex<Option<VolumeWriter>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self
            .0
            .lock()
            .map_err(|_| io::Error::other("bundle writer poisoned"))?;
        match g.as_mut() {
            Some(w) => w.write(buf),
            None => Err(io::Error::other("bundle writer closed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        let mut g = self
            .0
            .lock()
            .map_err(|_| io::Error::other("bundle writer poisoned"))?;
        match g.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

pub struct BundleWriter {
    tar: tar::Builder<zeekstd::Encoder<'static, Shared>>,
    volumes: Shared,
    mtime: u64,
    path: PathBuf,
}

impl BundleWriter {
    /// Starts `path` (as `path.partial`, or volumes when `split` is set).
    pub fn create(path: &Path, split: Option<u64>, mtime: u64) -> Result<BundleWriter> {
        let volumes = Shared(Arc::new(Mutex::new(Some(VolumeWriter::create(
            path, split,
        )?))));
        let encoder = zeekstd::EncodeOptions::new()
            .compression_level(LEVEL)
            .checksum_flag(true)
            .frame_size_policy(zeekstd::FrameSizePolicy::Uncompressed(FRAME_SIZE))
            .into_encoder(volumes.clone())
            .map_err(|e| Error::bundle(path, format!("starting the zstd encoder: {e}")))?;
        let mut tar = tar::Builder::new(encoder);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(BundleWriter {
            tar,
            volumes,
            mtime,
            path: path.to_path_buf(),
        })
    }

    /// Appends one member of `size` bytes read from `data`, then ends the zstd frame so the
    /// next member starts a new one.
    pub fn append(&mut self, name: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)
            .ctx(|| format!("bundle member name {name}"))?;
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let path = self.path.display().to_string();
        self.tar
            .append(&h, data)
            .map_err(|e| Error::io(format!("writing {name} into bundle {path}"), e))?;
        self.tar
            .get_mut()
            .end_frame()
            .map_err(|e| Error::bundle(&self.path, format!("ending a zstd frame: {e}")))?;
        Ok(())
    }

    /// Ends the tar stream, writes the seek table, syncs and renames the files into place.
    pub fn finish(self) -> Result<Vec<PathBuf>> {
        let path = self.path.clone();
        let encoder = self
            .tar
            .into_inner()
            .ctx(|| format!("finishing bundle {}", path.display()))?;
        encoder
            .finish()
            .map_err(|e| Error::bundle(&path, format!("writing the seek table: {e}")))?;
        let writer = self
            .volumes
            .0
            .lock()
            .map_err(|_| Error::bundle(&path, "writer poisoned"))?
            .take()
            .ok_or_else(|| Error::bundle(&path, "writer already closed"))?;
        writer.finish()
    }
}
