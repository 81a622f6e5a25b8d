//! The bundle's zstd encoder: a seekable stream of frames (zstd's seekable format), each
//! frame either compressed at [`LEVEL`] or *stored* as raw zstd blocks for content that is
//! compressed already (gzip and zstd layers), where zstd would spend CPU to gain nothing.
//! Both kinds are ordinary zstd frames with an XXH64 content checksum, so `zstd -d`, our
//! seekable reader and serve's frame cache read them alike. It owns the seek table, written
//! once at the end, and hands the output on in chunks of about [`CHUNK`] bytes.

use std::io::{self, Write};
use xxhash_rust::xxh64::Xxh64;
use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer};

/// zstd level for content worth compressing: 3 is zstd's default, fast enough for a LAN.
pub const LEVEL: i32 = 3;
/// The compressed frames' window: 1 MiB.
const WINDOW_LOG: u32 = 20;
/// Output is handed on in chunks of about this size.
pub const CHUNK: usize = 256 << 10;
/// The largest block of a stored frame (zstd's block size limit).
const BLOCK: usize = 128 * 1024;
/// A stored frame's header: the zstd magic number, a descriptor with only the content
/// checksum flag set (no content size, not single-segment), and a window of 128 KiB.
const STORED_HEADER: [u8; 6] = [0x28, 0xB5, 0x2F, 0xFD, 0x04, 0x38];

/// How a member's frames are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// zstd at [`LEVEL`].
    Compress,
    /// Raw zstd blocks: for content that is compressed already.
    Store,
}

impl Compression {
    /// `Store` for blobs whose media type says they are compressed already (gzip or zstd
    /// layers, OCI's and Docker's names alike, and encrypted ones), `Compress` otherwise.
    pub fn for_media_type(media_type: &str) -> Compression {
        let m = media_type.trim().to_ascii_lowercase();
        let compressed = ["gzip", "zstd", "+encrypted"]
            .iter()
            .any(|end| m.ends_with(end));
        if compressed {
            Compression::Store
        } else {
            Compression::Compress
        }
    }
}

/// Where finished chunks of output go.
pub type ChunkSink = Box<dyn FnMut(Vec<u8>) -> io::Result<()> + Send>;

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

/// The encoder. Frames end at `frame_size` uncompressed bytes, or when [`end_frame`]
/// (Self::end_frame) is called.
pub struct Encoder {
    cctx: CCtx<'static>,
    sink: ChunkSink,
    out: Vec<u8>,
    table: zeekstd::SeekTable,
    frame_size: u32,
    mode: Compression,
    /// Uncompressed and compressed bytes of the frame under way.
    frame_in: u32,
    frame_out: u32,
    /// A stored frame has its header written.
    stored_open: bool,
    /// Where the header of the stored block being filled sits in `out`.
    block_at: Option<usize>,
    hash: Xxh64,
    total_in: u64,
    total_out: u64,
}

impl Encoder {
    pub fn new(sink: ChunkSink, frame_size: u32) -> io::Result<Encoder> {
        let mut cctx = CCtx::try_create().ok_or_else(|| io::Error::other("zstd: out of memory"))?;
        cctx.set_parameter(CParameter::CompressionLevel(LEVEL))
            .map_err(zstd_error)?;
        cctx.set_parameter(CParameter::ChecksumFlag(true))
            .map_err(zstd_error)?;
        // A 1 MiB window (level 3 picks 2 MiB): what is compressed is JSON, configs and the
        // rare uncompressed layer; every reader's decoder then holds 1 MiB less too.
        cctx.set_parameter(CParameter::WindowLog(WINDOW_LOG))
            .map_err(zstd_error)?;
        Ok(Encoder {
            cctx,
            sink,
            out: Vec::with_capacity(CHUNK + BLOCK + 64),
            table: zeekstd::SeekTable::new(),
            frame_size: frame_size.max(1),
            mode: Compression::Compress,
            frame_in: 0,
            frame_out: 0,
            stored_open: false,
            block_at: None,
            hash: Xxh64::new(0),
            total_in: 0,
            total_out: 0,
        })
    }

    /// How the next frames are written; ends the frame under way first.
    pub fn set_mode(&mut self, mode: Compression) -> io::Result<()> {
        if mode != self.mode {
            self.end_frame()?;
            self.mode = mode;
        }
        Ok(())
    }

    /// Uncompressed bytes written so far.
    pub fn total_in(&self) -> u64 {
        self.total_in
    }

    /// Ends the frame under way (nothing if no byte was written since the last one).
    pub fn end_frame(&mut self) -> io::Result<()> {
        match self.mode {
            Compression::Compress => {
                if self.frame_in == 0 {
                    return Ok(());
                }
                let mut empty = InBuffer::around(&[]);
                loop {
                    let before = self.out.len();
                    self.out.reserve(CCtx::out_size());
                    let mut ob = OutBuffer::around_pos(&mut self.out, before);
                    let left = self
                        .cctx
                        .compress_stream2(&mut ob, &mut empty, ZSTD_EndDirective::ZSTD_e_end)
                        .map_err(zstd_error)?;
                    let produced = ob.pos() - before;
                    self.frame_out += produced as u32;
                    if left == 0 {
                        break;
                    }
                }
            }
            Compression::Store => {
                if !self.stored_open {
                    return Ok(());
                }
                let (at, size) = match self.block_at.take() {
                    Some(at) => (at, self.out.len() - at - 3),
                    None => {
                        let at = self.out.len();
                        self.out.extend_from_slice(&[0; 3]);
                        self.frame_out += 3;
                        (at, 0)
                    }
                };
                self.block_header(at, size, true);
                let sum = self.hash.digest() as u32;
                self.out.extend_from_slice(&sum.to_le_bytes());
                self.frame_out += 4;
                self.stored_open = false;
            }
        }
        self.table
            .log_frame(self.frame_out, self.frame_in)
            .map_err(|e| io::Error::other(format!("seek table: {e}")))?;
        self.frame_in = 0;
        self.frame_out = 0;
        self.maybe_send(false)
    }

    /// Ends the last frame, writes the seek table and hands on the rest. Returns the bytes
    /// written (uncompressed in, compressed out including the seek table).
    pub fn finish(mut self) -> io::Result<(u64, u64)> {
        self.end_frame()?;
        let table = std::mem::take(&mut self.table);
        let mut ser = table.into_format_serializer(zeekstd::seek_table::Format::Foot);
        let mut buf = [0u8; 4096];
        loop {
            let n = ser.write_into(&mut buf);
            if n == 0 {
                break;
            }
            self.out.extend_from_slice(&buf[..n]);
        }
        self.maybe_send(true)?;
        Ok((self.total_in, self.total_out))
    }

    fn block_header(&mut self, at: usize, size: usize, last: bool) {
        // Block_Type 0 (raw) in bits 1-2, the size above bit 3, little-endian in 3 bytes.
        let v = ((size as u32) << 3) | u32::from(last);
        self.out[at..at + 3].copy_from_slice(&v.to_le_bytes()[..3]);
    }

    /// Hands `out` on once it holds a chunk (or whatever it holds when `all`), never while a
    /// stored block's header is still to be filled in.
    fn maybe_send(&mut self, all: bool) -> io::Result<()> {
        if self.block_at.is_some() || self.out.is_empty() || (!all && self.out.len() < CHUNK) {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK + BLOCK + 64));
        self.total_out += chunk.len() as u64;
        (self.sink)(chunk)
    }

    fn compress(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let before = self.out.len();
            self.out.reserve(CCtx::out_size());
            let mut ob = OutBuffer::around_pos(&mut self.out, before);
            let mut ib = InBuffer::around(data);
            self.cctx
                .compress_stream2(&mut ob, &mut ib, ZSTD_EndDirective::ZSTD_e_continue)
                .map_err(zstd_error)?;
            let produced = ob.pos() - before;
            let taken = ib.pos();
            self.frame_out += produced as u32;
            data = &data[taken..];
            self.maybe_send(false)?;
        }
        Ok(())
    }

    fn store(&mut self, mut data: &[u8]) -> io::Result<()> {
        if !self.stored_open {
            self.out.extend_from_slice(&STORED_HEADER);
            self.frame_out += STORED_HEADER.len() as u32;
            self.hash.reset(0);
            self.stored_open = true;
        }
        self.hash.update(data);
        while !data.is_empty() {
            let at = match self.block_at {
                Some(at) => at,
                None => {
                    let at = self.out.len();
                    self.out.extend_from_slice(&[0; 3]);
                    self.frame_out += 3;
                    self.block_at = Some(at);
                    at
                }
            };
            let filled = self.out.len() - at - 3;
            let n = (BLOCK - filled).min(data.len());
            self.out.extend_from_slice(&data[..n]);
            self.frame_out += n as u32;
            data = &data[n..];
            if filled + n == BLOCK {
                self.block_header(at, BLOCK, false);
                self.block_at = None;
                self.maybe_send(false)?;
            }
        }
        Ok(())
    }
}

impl Write for Encoder {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let len = data.len();
        while !data.is_empty() {
            if self.frame_in >= self.frame_size {
                self.end_frame()?;
            }
            let n = ((self.frame_size - self.frame_in) as usize).min(data.len());
            match self.mode {
                Compression::Compress => self.compress(&data[..n])?,
                Compression::Store => self.store(&data[..n])?,
            }
            self.frame_in += n as u32;
            self.total_in += n as u64;
            data = &data[n..];
        }
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn encode(parts: &[(Compression, Vec<u8>)], frame: u32) -> Vec<u8> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let sink: ChunkSink = Box::new(move |c| {
            o.lock().unwrap().extend_from_slice(&c);
            Ok(())
        });
        let mut e = Encoder::new(sink, frame).unwrap();
        for (mode, data) in parts {
            e.set_mode(*mode).unwrap();
            e.write_all(data).unwrap();
            e.end_frame().unwrap();
        }
        let (i, o2) = e.finish().unwrap();
        let bytes = out.lock().unwrap().clone();
        assert_eq!(o2, bytes.len() as u64);
        assert_eq!(i, parts.iter().map(|p| p.1.len() as u64).sum::<u64>());
        bytes
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn media_types() {
        for m in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ] {
            assert_eq!(Compression::for_media_type(m), Compression::Store, "{m}");
        }
        for m in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "",
        ] {
            assert_eq!(Compression::for_media_type(m), Compression::Compress, "{m}");
        }
    }

    /// Stored and compressed frames, odd sizes and frame splits: zstd decodes the whole
    /// stream (checking every frame's checksum), and the seek table lists every frame.
    #[test]
    fn stored_frames_decode_and_are_listed() {
        let text = b"hello bundle ".repeat(50_000);
        let parts = vec![
            (Compression::Compress, text.clone()),
            (Compression::Store, noise(BLOCK * 3, 7)),
            (Compression::Store, noise(BLOCK * 2 + 17, 9)),
            (Compression::Store, noise(5, 3)),
            (Compression::Compress, b"{}".to_vec()),
            (Compression::Store, noise(1_000_000, 11)),
        ];
        let frame = 300_000;
        let bytes = encode(&parts, frame);
        let all: Vec<u8> = parts.iter().flat_map(|p| p.1.clone()).collect();
        let decoded = zstd::stream::decode_all(&bytes[..]).unwrap();
        assert_eq!(decoded.len(), all.len());
        assert!(decoded == all);
        let mut src = zeekstd::BytesWrapper::new(&bytes);
        let table = zeekstd::SeekTable::from_seekable(&mut src).unwrap();
        let expected: u32 = parts
            .iter()
            .map(|p| (p.1.len() as u32).div_ceil(frame))
            .sum();
        assert_eq!(table.num_frames(), expected);
        assert_eq!(table.size_decomp(), all.len() as u64);
        // Stored frames cost a few bytes over their content; text still shrinks.
        let stored: usize = parts[1..4].iter().map(|p| p.1.len()).sum::<usize>() + 1_000_000;
        assert!(
            bytes.len() < stored + 2_000 + text.len() / 10,
            "{}",
            bytes.len()
        );
        // A flipped byte in a stored frame fails its checksum.
        let mut bad = bytes.clone();
        let at = table.frame_start_comp(1).unwrap() as usize + 100;
        bad[at] ^= 1;
        assert!(zstd::stream::decode_all(&bad[..]).is_err());
    }

    #[test]
    fn same_input_same_bytes() {
        let parts = vec![
            (Compression::Store, noise(400_000, 5)),
            (Compression::Compress, b"abc".repeat(1000)),
        ];
        assert_eq!(encode(&parts, 1 << 20), encode(&parts, 1 << 20));
    }
}
