//! Writing a bundle: a tar stream whose every member starts a new zstd frame (large members
//! span several frames), closed by the zstd seekable-format seek table, into one file or
//! volumes. Headers are fixed (ustar, mode 0644, uid/gid 0, one mtime) so that the same
//! input gives the same bytes. Compression runs on the caller's thread; hashing and writing
//! the compressed bytes run on a thread of their own, so the two overlap.

use super::volumes::{SideFile, VolumeWriter};
use crate::error::{Error, IoContext, Result};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Uncompressed size at which a member's data starts a new frame.
pub const FRAME_SIZE: u32 = 16 * 1024 * 1024;
/// zstd level: 3 is zstd's default, fast enough to keep up with a LAN.
pub const LEVEL: i32 = 3;
/// Compressed bytes are handed to the output thread in chunks of this size.
const CHUNK: usize = 1 << 20;
/// How many chunks may wait for the output thread (bounds memory to a few MiB).
const QUEUE: usize = 4;

/// The encoder's output: buffers compressed bytes and hands them to the output thread.
struct PipeSink {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl PipeSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the bundle output failed"))
    }
}

impl Write for PipeSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

pub struct BundleWriter {
    tar: Option<tar::Builder<zeekstd::Encoder<'static, PipeSink>>>,
    output: Option<JoinHandle<io::Result<VolumeWriter>>>,
    mtime: u64,
    path: PathBuf,
}

impl BundleWriter {
    /// Starts `path` (as `path.partial`, or volumes when `split` is set).
    pub fn create(path: &Path, split: Option<u64>, mtime: u64) -> Result<BundleWriter> {
        let mut volumes = VolumeWriter::create(path, split)?;
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let output = std::thread::Builder::new()
            .name("bundle-output".into())
            .spawn(move || -> io::Result<VolumeWriter> {
                for chunk in rx {
                    volumes.write_all(&chunk)?;
                }
                Ok(volumes)
            })
            .ctx(|| "starting the bundle output thread".into())?;
        let sink = PipeSink {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let encoder = zeekstd::EncodeOptions::new()
            .compression_level(LEVEL)
            .checksum_flag(true)
            .frame_size_policy(zeekstd::FrameSizePolicy::Uncompressed(FRAME_SIZE))
            .into_encoder(sink)
            .map_err(|e| Error::bundle(path, format!("starting the zstd encoder: {e}")))?;
        let mut tar = tar::Builder::new(encoder);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(BundleWriter {
            tar: Some(tar),
            output: Some(output),
            mtime,
            path: path.to_path_buf(),
        })
    }

    /// The output thread's own error, which explains a broken pipe on our side.
    fn output_error(&mut self, fallback: Error) -> Error {
        self.tar = None;
        match self.output.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => Error::io(format!("writing bundle {}", self.path.display()), e),
            _ => fallback,
        }
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
        let Some(tar) = self.tar.as_mut() else {
            return Err(Error::bundle(&self.path, "writer already closed"));
        };
        let result = tar
            .append(&h, data)
            .map_err(|e| {
                (
                    e.kind(),
                    Error::io(format!("writing {name} into bundle {path}"), e),
                )
            })
            .and_then(|_| {
                tar.get_mut().end_frame().map_err(|e| {
                    (
                        io::ErrorKind::Other,
                        Error::bundle(&self.path, format!("ending a zstd frame: {e}")),
                    )
                })
            });
        match result {
            Ok(_) => Ok(()),
            Err((io::ErrorKind::BrokenPipe, e)) => Err(self.output_error(e)),
            Err((_, e)) => Err(e),
        }
    }

    /// Ends the tar stream, writes the seek table, syncs and renames the files into place.
    pub fn finish(self) -> Result<Vec<PathBuf>> {
        self.finish_with(&[])
    }

    /// Like [`finish`](Self::finish), and puts `side` files in place once the bundle is.
    pub fn finish_with(mut self, side: &[SideFile]) -> Result<Vec<PathBuf>> {
        let path = self.path.clone();
        let tar = self
            .tar
            .take()
            .ok_or_else(|| Error::bundle(&path, "writer already closed"))?;
        let encoder = match tar.into_inner() {
            Ok(e) => e,
            Err(e) => {
                let e = Error::io(format!("finishing bundle {}", path.display()), e);
                return Err(self.output_error(e));
            }
        };
        // Writes the seek table and flushes; dropping the encoder closes the channel.
        if let Err(e) = encoder.finish() {
            let e = Error::bundle(&path, format!("writing the seek table: {e}"));
            return Err(self.output_error(e));
        }
        let volumes = match self.output.take().map(|h| h.join()) {
            Some(Ok(Ok(v))) => v,
            Some(Ok(Err(e))) => {
                return Err(Error::io(format!("writing bundle {}", path.display()), e))
            }
            _ => return Err(Error::bundle(&path, "the output thread failed")),
        };
        volumes.finish(side)
    }
}

impl Drop for BundleWriter {
    /// An unfinished bundle: close the stream and wait for the output thread, whose
    /// `VolumeWriter` then removes the partial files before the process can exit.
    fn drop(&mut self) {
        self.tar = None;
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
    }
}
