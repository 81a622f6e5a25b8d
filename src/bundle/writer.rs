//! Writing a bundle: a tar stream whose every member starts a new zstd frame (large members
//! span several frames), closed by the zstd seekable-format seek table, into one file or
//! volumes. Members that are compressed already are stored in raw zstd blocks, the rest
//! compressed (see [`super::encoder`]). Headers are fixed (ustar, mode 0644, uid/gid 0, one
//! mtime) so that the same input gives the same bytes. Compression runs on the caller's
//! thread; hashing and writing the compressed bytes run on a thread of their own, so the two
//! overlap.

use super::encoder::{ChunkSink, Encoder};
pub use super::encoder::{Compression, LEVEL};
use super::volumes::{SideFile, VolumeWriter};
use crate::error::{Error, IoContext, Result};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

/// Uncompressed size at which a member's data starts a new frame. `serve` decodes and checks
/// a whole frame before it sends a byte of it, so this is what one response holds: 4 MiB
/// (16 MiB until this version; readers take frames of any size). A 1 GiB layer gets 256
/// seek-table entries of 12 bytes.
pub const FRAME_SIZE: u32 = 4 * 1024 * 1024;
/// How many chunks (of [`encoder::CHUNK`](super::encoder::CHUNK)) may wait for the output
/// thread: 1 MiB.
const QUEUE: usize = 4;
/// What a member's data is read in: `io::copy`'s 8 KiB made 131,000 reads (each a `pread`
/// and a lock on a spool file) of a 1 GiB layer.
const COPY_BUF: usize = 256 * 1024;

/// A failure to write the bundle `path`. A file larger than its file system takes (`EFBIG`:
/// FAT32 holds files under 4 GiB, the file system of most removable media) says how to split.
pub fn write_error(path: &std::path::Path, e: std::io::Error) -> Error {
    let mut context = format!("writing bundle {}", path.display());
    if e.raw_os_error() == Some(libc::EFBIG) {
        context.push_str(
            " (its file system takes no file this large: FAT32 holds files under 4 GiB; \
             split the bundle into volumes that fit with --split-size, 4095M for FAT32)",
        );
    }
    Error::io(context, e)
}

pub struct BundleWriter {
    tar: Option<tar::Builder<Encoder>>,
    output: Option<JoinHandle<io::Result<VolumeWriter>>>,
    mtime: u64,
    path: PathBuf,
    /// Reused by every member read from a reader ([`COPY_BUF`] once the first is).
    copy_buf: Vec<u8>,
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
        let sink: ChunkSink = Box::new(move |chunk| {
            tx.send(chunk)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the bundle output failed"))
        });
        let encoder = Encoder::new(sink, FRAME_SIZE)
            .map_err(|e| Error::bundle(path, format!("starting the zstd encoder: {e}")))?;
        let mut tar = tar::Builder::new(encoder);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(BundleWriter {
            tar: Some(tar),
            output: Some(output),
            mtime,
            path: path.to_path_buf(),
            copy_buf: Vec::new(),
        })
    }

    /// The output thread's own error, which explains a broken pipe on our side.
    fn output_error(&mut self, fallback: Error) -> Error {
        self.tar = None;
        match self.output.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => write_error(&self.path, e),
            _ => fallback,
        }
    }

    /// Appends one member of `size` bytes read from `data`, compressed, then ends the zstd
    /// frame so the next member starts a new one.
    pub fn append(&mut self, name: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        self.append_as(name, size, data, Compression::Compress)
    }

    /// Like [`append`](Self::append), with the member's frames written as `how` says
    /// (`Compression::for_media_type` picks it for a blob).
    pub fn append_as(
        &mut self,
        name: &str,
        size: u64,
        data: &mut dyn Read,
        how: Compression,
    ) -> Result<()> {
        let mut buf = std::mem::take(&mut self.copy_buf);
        // A buffer no larger than the member: most are a few KiB.
        let room = usize::try_from(size).unwrap_or(COPY_BUF).clamp(1, COPY_BUF);
        if buf.len() < room {
            buf.resize(room, 0);
        }
        let r = self.member(name, size, how, &mut |out| {
            copy(data, out, &mut buf[..room])
        });
        self.copy_buf = buf;
        r
    }

    /// Appends one member of `size` bytes that `write` produces as it goes (a serialiser
    /// writing straight into the bundle, so the member is never held whole), compressed.
    pub fn append_written(
        &mut self,
        name: &str,
        size: u64,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        self.member(name, size, Compression::Compress, write)
    }

    /// Writes one member ([`tar_member`]) in frames of its own, written as `how` says.
    fn member(
        &mut self,
        name: &str,
        size: u64,
        how: Compression,
        write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<()> {
        let h = self.header(name, size)?;
        let Some(tar) = self.tar.as_mut() else {
            return Err(Error::bundle(&self.path, "writer already closed"));
        };
        let enc = tar.get_mut();
        let frame_error = |e: io::Error| {
            let kind = e.kind();
            (
                kind,
                Error::bundle(&self.path, format!("ending a zstd frame: {e}")),
            )
        };
        let data_error = |e: io::Error| {
            let kind = e.kind();
            let what = format!("writing {name} into bundle {}", self.path.display());
            (kind, Error::io(what, e))
        };
        let result = enc
            .set_mode(how)
            .map_err(frame_error)
            .and_then(|()| tar_member(enc, &h, size, write).map_err(data_error))
            .and_then(|()| enc.end_frame().map_err(frame_error));
        match result {
            Ok(()) => Ok(()),
            Err((io::ErrorKind::BrokenPipe, e)) => Err(self.output_error(e)),
            Err((_, e)) => Err(e),
        }
    }

    /// The header of a regular member (fixed fields: see the module documentation).
    fn header(&self, name: &str, size: u64) -> Result<tar::Header> {
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
        Ok(h)
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
        let mut tar = tar;
        // The end-of-archive blocks are compressed whatever the last member was.
        if let Err(e) = tar.get_mut().set_mode(Compression::Compress) {
            let e = Error::bundle(&path, format!("ending a zstd frame: {e}"));
            return Err(self.output_error(e));
        }
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
            Some(Ok(Err(e))) => return Err(write_error(&path, e)),
            _ => return Err(Error::bundle(&path, "the output thread failed")),
        };
        volumes.finish(side)
    }
}

/// Copies `data` to `out` through `buf` (see [`COPY_BUF`]).
fn copy(data: &mut dyn Read, out: &mut dyn Write, buf: &mut [u8]) -> io::Result<()> {
    loop {
        let n = match data.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
    }
}

/// Writes a member as `tar::Builder::append` does: the header, the data `write` puts out,
/// zeros to the next block. Anything other than exactly `size` bytes of data fails.
fn tar_member(
    out: &mut impl Write,
    header: &tar::Header,
    size: u64,
    write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    out.write_all(header.as_bytes())?;
    let mut counted = Counted { inner: out, n: 0 };
    write(&mut counted)?;
    if counted.n != size {
        return Err(io::Error::other(format!(
            "{} bytes were written, {size} announced",
            counted.n
        )));
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize])
}

/// Counts the bytes written through it.
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
        let file = std::fs::File::open(path).unwrap();
        let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(file).unwrap());
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn a_member_written_as_it_is_made_reads_back_like_one_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.zst");
        let json = b"{\n  \"a\": 1\n}".to_vec();
        let mut w = BundleWriter::create(&path, None, 0).unwrap();
        w.append_written("bundle.json", json.len() as u64, &mut |out| {
            out.write_all(&json[..4])?;
            out.write_all(&json[4..])
        })
        .unwrap();
        w.append("blob", 3, &mut &b"abc"[..]).unwrap();
        w.finish().unwrap();
        assert_eq!(
            members(&path),
            vec![
                ("bundle.json".to_string(), json.clone()),
                ("blob".to_string(), b"abc".to_vec())
            ]
        );
    }

    #[test]
    fn a_member_written_short_or_long_fails_and_leaves_no_bundle() {
        for written in [&b"abcd"[..], &b"abcdef"[..]] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.tar.zst");
            let mut w = BundleWriter::create(&path, None, 0).unwrap();
            let e = w
                .append_written("bundle.json", 5, &mut |out| out.write_all(written))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("bundle.json") && e.contains("5 announced"),
                "{e}"
            );
            drop(w);
            assert!(!path.exists());
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}
