//! Reading a bundle without trusting it: the seek table and `bundle.json` give where every
//! member must be; opening checks the tar header found at each of those places, and each
//! read checks it again and the digest and size of the content. Reads decode only the frames
//! the seek table names, and fail if those frames hold less than it says. Random access for
//! import, one sequential pass for verify.

use super::docker::MANIFEST_JSON;
use super::model::{BundleManifest, MAX_BUNDLE_JSON};
use super::volumes::{discover, MultiFile};
use super::{tar_span, BUNDLE_JSON, INDEX_JSON, OCI_LAYOUT};
use crate::digest::{Digest, HashingReader, VerifyingReader};
use crate::error::{Error, Result};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use zeekstd::SeekTable;

/// The most a frame may decode to for [`Bundle::decode_frame`], which holds it whole: airlock
/// writes frames of 4 MiB (16 MiB before), so this leaves room and stops a hostile table.
const MAX_FRAME: u64 = 64 << 20;

/// Where a member sits in the uncompressed tar stream.
#[derive(Clone, Debug)]
pub struct Location {
    pub name: String,
    pub header: u64,
    pub size: u64,
}

/// The compressed archive: its files and seek table, read by uncompressed offset.
struct Archive {
    /// The bundle's base name, for messages.
    path: PathBuf,
    files: MultiFile,
    seek: SeekTable,
}

/// An open bundle: its files, seek table and checked `bundle.json`.
pub struct Bundle {
    /// The bundle's base name, for messages.
    pub path: PathBuf,
    pub volumes: Vec<PathBuf>,
    archive: Archive,
    pub manifest: BundleManifest,
    /// The digest of the `bundle.json` bytes parsed into `manifest`; the bytes themselves
    /// (tens of MiB for 100,000 blobs) are read again when a signature is checked.
    bundle_json_digest: Digest,
    /// Where every member's header is, in archive order: `bundle.json` and the layout
    /// members, then `manifest.blobs` in order (so a blob's member is found through the
    /// manifest's digest index). Names and sizes are the manifest's, given by
    /// [`member`](Self::member): at 100,000 blobs a name held for each would be 10 MiB.
    headers: Vec<u64>,
    /// The names and sizes of the members before the blobs.
    lead: Vec<(&'static str, u64)>,
}

/// Checks a 512-byte ustar header and returns its name and size.
pub fn parse_header(block: &[u8; 512]) -> std::result::Result<(String, u64, u8), String> {
    let stored = parse_octal(&block[148..156]).ok_or("bad header checksum field")?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u64
            }
        })
        .sum();
    if sum != stored {
        return Err("tar header checksum mismatch".into());
    }
    let h = tar::Header::from_byte_slice(block);
    let name = h
        .path()
        .map_err(|e| format!("bad member name: {e}"))?
        .to_string_lossy()
        .into_owned();
    let size = h.size().map_err(|e| format!("bad member size: {e}"))?;
    Ok((name, size, block[156]))
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(s.trim(), 8).ok()
}

/// Whether a tar entry type byte is a regular file.
pub fn is_regular(t: u8) -> bool {
    t == b'0' || t == 0
}

impl Archive {
    fn read_error(&self, at: u64, e: io::Error) -> Error {
        Error::bundle(
            &self.path,
            format!(
                "reading at archive offset {at}: {e} (around {})",
                self.files.file_at(self.compressed_pos(at)).display()
            ),
        )
    }

    /// Approximate compressed position of an uncompressed offset (for naming the volume).
    fn compressed_pos(&self, at: u64) -> u64 {
        let idx = self.seek.frame_index_decomp(at);
        self.seek.frame_start_comp(idx).unwrap_or(0)
    }

    /// Parses `bundle.json` as it is read: its bytes (43 MB at 100,000 blobs) are never held
    /// whole. Returns it, checked, with the digest of its bytes.
    fn parse_bundle_json(&self, size: u64) -> Result<(BundleManifest, Digest)> {
        let (parsed, read, digest) =
            parse_hashed(self.range(512, size)?).map_err(|e| self.read_error(512, e))?;
        // What the parser left (after a syntax error) was read too: a member that ends early
        // is cut short, not invalid.
        if read != size {
            return Err(Error::bundle(&self.path, "bundle.json is cut short"));
        }
        let m = parsed
            .map_err(|e| Error::bundle(&self.path, format!("bundle.json is not valid: {e}")))?;
        m.validate(&self.path)?;
        Ok((m, digest))
    }

    /// A reader over `len` uncompressed bytes starting at `start`. It decodes only the frames
    /// the seek table says hold them, and fails (rather than waiting for more) if those frames
    /// end before the bytes do.
    fn range(&self, start: u64, len: u64) -> Result<impl Read + use<>> {
        let cannot = |e: String| {
            Error::bundle(
                &self.path,
                format!("cannot read archive bytes {start}..{}: {e}", start + len),
            )
        };
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.seek.size_decomp())
            .ok_or_else(|| cannot("beyond the end of the archive".into()))?;
        let first = self.seek.frame_index_decomp(start);
        let last = self
            .seek
            .frame_index_decomp(end.saturating_sub(1).max(start));
        let mut table = SeekTable::new();
        for i in first..=last {
            let (c, d) = self
                .frame_sizes(i)
                .map_err(|e| cannot(format!("seek table: {e}")))?;
            table
                .log_frame(c, d)
                .map_err(|e| cannot(format!("seek table: {e}")))?;
        }
        let c_start = self
            .seek
            .frame_start_comp(first)
            .map_err(|e| cannot(e.to_string()))?;
        let c_end = self
            .seek
            .frame_end_comp(last)
            .map_err(|e| cannot(e.to_string()))?;
        let d_start = self
            .seek
            .frame_start_decomp(first)
            .map_err(|e| cannot(e.to_string()))?;
        let window = Window {
            inner: self.files.clone(),
            start: c_start,
            len: c_end.saturating_sub(c_start),
            pos: 0,
        };
        let dec = zeekstd::DecodeOptions::new(window)
            .seek_table(table)
            .offset(start - d_start)
            .offset_limit(end - d_start)
            .into_decoder()
            .map_err(|e| cannot(e.to_string()))?;
        Ok(dec.take(len))
    }

    /// Compressed and uncompressed size of frame `i`.
    fn frame_sizes(&self, i: u32) -> std::result::Result<(u32, u32), String> {
        let s = &self.seek;
        let size = |a: zeekstd::Result<u64>, b: zeekstd::Result<u64>| -> Result<u32, String> {
            let (a, b) = (a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?);
            b.checked_sub(a)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("frame {i} has an impossible size"))
        };
        Ok((
            size(s.frame_start_comp(i), s.frame_end_comp(i))?,
            size(s.frame_start_decomp(i), s.frame_end_decomp(i))?,
        ))
    }

    /// Checks that the tar header at a member's place says what bundle.json says.
    fn check_header(&self, m: &Location) -> Result<()> {
        self.check_header_with(m, &mut HeaderReader::default())
    }

    /// [`check_header`](Self::check_header) through `reader` (one for many members).
    fn check_header_with(&self, m: &Location, reader: &mut HeaderReader) -> Result<()> {
        let (name, size) = self.read_header_with(m, reader)?;
        if name != m.name || size != m.size {
            return Err(Error::bundle(
                &self.path,
                format!(
                    "expected member {} of {} bytes at offset {}, found {name:?} of {size} bytes",
                    m.name, m.size, m.header
                ),
            ));
        }
        Ok(())
    }

    /// Reads and checks the tar header of a member.
    fn read_header(&self, m: &Location) -> Result<(String, u64)> {
        self.read_header_with(m, &mut HeaderReader::default())
    }

    /// [`read_header`](Self::read_header) through `reader`.
    fn read_header_with(&self, m: &Location, reader: &mut HeaderReader) -> Result<(String, u64)> {
        let block = reader.block(self, m.header)?;
        let (name, size, kind) = parse_header(&block).map_err(|e| {
            Error::bundle(
                &self.path,
                format!(
                    "member at archive offset {}: {e} (around {})",
                    m.header,
                    self.files.file_at(self.compressed_pos(m.header)).display()
                ),
            )
        })?;
        if !is_regular(kind) {
            return Err(Error::bundle(
                &self.path,
                format!("member {name:?} is not a regular file"),
            ));
        }
        Ok((name, size))
    }
}

impl Bundle {
    /// Opens a bundle by its base name, a volume, or a single file, and checks every
    /// member's tar header against `bundle.json` before anything trusts it.
    pub fn open(given: &Path) -> Result<Bundle> {
        Bundle::open_checked(given, true)
    }

    /// Opens a bundle reading only `bundle.json` (in the first volume) and the seek table (at
    /// the end of the last): what `inspect` shows. The members' headers are checked when
    /// each member is read, as always.
    pub fn open_index(given: &Path) -> Result<Bundle> {
        Bundle::open_checked(given, false)
    }

    fn open_checked(given: &Path, check_headers: bool) -> Result<Bundle> {
        let (base, volumes) = discover(given)?;
        let files = MultiFile::open(&volumes)?;
        check_seek_table_footer(&files)?;
        let mut probe = files.clone();
        let seek = SeekTable::from_seekable(&mut probe).map_err(|e| {
            Error::bundle(
                files.file_at(files.len()),
                format!(
                    "no valid zstd seek table at the end ({e}): the bundle is truncated, a \
                     volume is missing, or it was not written by airlock"
                ),
            )
        })?;
        if seek.num_frames() == 0 {
            return Err(Error::bundle(
                files.file_at(files.len()),
                "the seek table lists no frames: this is not a bundle",
            ));
        }
        let table_len = seek.clone().into_serializer().encoded_len() as u64;
        if seek.size_comp() + table_len != files.len() {
            return Err(Error::bundle(
                files.file_at(files.len()),
                format!(
                    "the seek table describes {} compressed bytes but the files hold {}: the \
                     bundle is truncated or has extra data",
                    seek.size_comp() + table_len,
                    files.len()
                ),
            ));
        }
        let archive = Archive {
            path: base.clone(),
            files,
            seek,
        };
        // bundle.json: first member, read through its header.
        let first = Location {
            name: BUNDLE_JSON.into(),
            header: 0,
            size: 0,
        };
        let (name, size) = archive.read_header(&first)?;
        if name != BUNDLE_JSON {
            return Err(Error::bundle(
                &base,
                format!("the first member is {name:?}, not bundle.json"),
            ));
        }
        if size > MAX_BUNDLE_JSON {
            return Err(Error::bundle(
                &base,
                format!("bundle.json declares {size} bytes (at most {MAX_BUNDLE_JSON})"),
            ));
        }
        let (manifest, bundle_json_digest) = archive.parse_bundle_json(size)?;
        // Where every other member must be.
        let layout = &manifest.layout;
        let lead: Vec<(&'static str, u64)> = [
            (BUNDLE_JSON, size),
            (OCI_LAYOUT, layout.oci_layout.size),
            (INDEX_JSON, layout.index.size),
        ]
        .into_iter()
        .chain(
            layout
                .docker_manifest
                .as_ref()
                .map(|m| (MANIFEST_JSON, m.size)),
        )
        .collect();
        let mut headers = Vec::with_capacity(lead.len() + manifest.blobs.len());
        let mut off = 0;
        for size in lead
            .iter()
            .map(|l| l.1)
            .chain(manifest.blobs.iter().map(|b| b.size))
        {
            headers.push(off);
            off += tar_span(size);
        }
        let expected_end = off + 1024;
        let seek = &archive.seek;
        if seek.size_decomp() != expected_end {
            return Err(Error::bundle(
                archive.files.file_at(archive.files.len()),
                format!(
                    "bundle.json describes {expected_end} bytes of archive but the seek table \
                     holds {}: the bundle is truncated, has extra members or is inconsistent",
                    seek.size_decomp()
                ),
            ));
        }
        let bundle = Bundle {
            path: base,
            volumes,
            archive,
            manifest,
            bundle_json_digest,
            headers,
            lead,
        };
        let seek = &bundle.archive.seek;
        for (i, &header) in bundle.headers.iter().enumerate() {
            let idx = seek.frame_index_decomp(header);
            let starts = seek.frame_start_decomp(idx).ok() == Some(header);
            if !starts {
                let name = bundle.member(i).map(|m| m.name).unwrap_or_default();
                return Err(Error::bundle(
                    &bundle.path,
                    format!("member {name} does not start a zstd frame: the seek table does not match bundle.json"),
                ));
            }
        }
        // Every member's header says what bundle.json says, before anything trusts the
        // bundle: names, types and sizes that differ are refused here, not halfway through
        // an import.
        if check_headers {
            let mut reader = HeaderReader::default();
            for i in 1..bundle.member_count() {
                if let Some(m) = bundle.member(i) {
                    bundle.archive.check_header_with(&m, &mut reader)?;
                }
            }
        }
        Ok(bundle)
    }

    /// Every member in archive order (see [`member`](Self::member)).
    pub fn members(&self) -> impl Iterator<Item = Location> + '_ {
        (0..self.headers.len()).filter_map(|i| self.member(i))
    }

    /// How many members the archive holds.
    pub fn member_count(&self) -> usize {
        self.headers.len()
    }

    /// Member `i` in archive order: its name, where its header is, and its size.
    pub fn member(&self, i: usize) -> Option<Location> {
        let header = *self.headers.get(i)?;
        let (name, size) = match self.lead.get(i) {
            Some(&(name, size)) => (name.to_string(), size),
            None => {
                let b = self.manifest.blobs.get(i - self.lead.len())?;
                (b.digest.layout_path(), b.size)
            }
        };
        Some(Location { name, header, size })
    }

    /// The exact bytes of `bundle.json` (what a signature covers) as a stream, read again from
    /// the archive: never held whole (43 MB at 33,340 images). At its end the stream fails
    /// unless they are the bytes `manifest` was parsed from.
    pub fn bundle_json_stream(&self) -> Result<impl Read + use<>> {
        let size = self.lead.first().map_or(0, |l| l.1);
        Ok(BundleJsonStream {
            inner: HashingReader::new(self.archive.range(512, size)?),
            size,
            expected: self.bundle_json_digest.clone(),
            checked: false,
        })
    }

    /// The digest of `bundle.json`'s bytes, learnt as it was parsed.
    pub fn bundle_json_digest(&self) -> &Digest {
        &self.bundle_json_digest
    }

    /// The index in `members` of the first blob: the layout members (`bundle.json`,
    /// `oci-layout`, `index.json` and, when there is one, `manifest.json`) come before it.
    pub fn first_blob_member(&self) -> usize {
        self.lead.len()
    }

    /// The digest bundle.json gives a layout member (none for `bundle.json` itself).
    pub fn layout_digest(&self, name: &str) -> Option<&Digest> {
        let layout = &self.manifest.layout;
        match name {
            OCI_LAYOUT => Some(&layout.oci_layout.digest),
            INDEX_JSON => Some(&layout.index.digest),
            MANIFEST_JSON => layout.docker_manifest.as_ref().map(|m| &m.digest),
            _ => None,
        }
    }

    /// Opens a member's content after checking that its header says what bundle.json says.
    fn open_member(&self, m: &Location) -> Result<impl Read + use<>> {
        self.archive.check_header(m)?;
        self.archive.range(m.header + 512, m.size)
    }

    /// A reader over one blob that fails, naming the blob and the bundle, if its content does
    /// not match its digest and size.
    pub fn open_blob(&self, d: &Digest) -> Result<BlobReader> {
        let idx = self
            .member_index(d)
            .ok_or_else(|| Error::bundle(&self.path, format!("blob {d} is not in this bundle")))?;
        let m = self
            .member(idx)
            .ok_or_else(|| Error::bundle(&self.path, format!("blob {d} has no member")))?;
        let inner = self.open_member(&m)?;
        let mut bundle = self.path.display().to_string();
        if self.volumes.len() > 1 {
            // Name the volumes the blob is stored in: that is what to replace if it is damaged.
            let first = self.archive.seek.frame_index_decomp(m.header);
            let last = self
                .archive
                .seek
                .frame_index_decomp(m.header + tar_span(m.size) - 1);
            if let (Ok(start), Ok(end)) = (
                self.archive.seek.frame_start_comp(first),
                self.archive.seek.frame_end_comp(last),
            ) {
                let names: Vec<String> = self
                    .archive
                    .files
                    .files_between(start, end)
                    .iter()
                    .map(|v| v.display().to_string())
                    .collect();
                bundle = format!("{bundle} (stored in {})", names.join(", "));
            }
        }
        Ok(BlobReader {
            inner: Box::new(VerifyingReader::new(inner, d, m.size)),
            digest: d.clone(),
            size: m.size,
            bundle,
        })
    }

    /// Where a blob's content sits in the uncompressed archive: (offset, size).
    pub fn content_of(&self, d: &Digest) -> Option<(u64, u64)> {
        let m = self.member(self.member_index(d)?)?;
        Some((m.header + 512, m.size))
    }

    /// Where in `members` a blob is.
    pub fn member_index(&self, d: &Digest) -> Option<usize> {
        self.manifest
            .blob_index(d)
            .map(|i| self.first_blob_member() + i)
    }

    /// Whether the bundle carries this blob.
    pub fn holds(&self, d: &Digest) -> bool {
        self.manifest.blob_index(d).is_some()
    }

    /// The frame holding uncompressed archive offset `at`: its index and the uncompressed
    /// range it covers.
    pub fn frame_at(&self, at: u64) -> Result<(u32, u64, u64)> {
        let seek = &self.archive.seek;
        let i = seek.frame_index_decomp(at);
        let start = seek
            .frame_start_decomp(i)
            .map_err(|e| Error::bundle(&self.path, format!("seek table: {e}")))?;
        let end = seek
            .frame_end_decomp(i)
            .map_err(|e| Error::bundle(&self.path, format!("seek table: {e}")))?;
        if at < start || at >= end {
            return Err(Error::bundle(
                &self.path,
                format!("no frame holds archive offset {at}"),
            ));
        }
        Ok((i, start, end))
    }

    /// Decodes frame `i` whole. The frame's own checksum is checked before any byte is
    /// returned, so a damaged frame gives an error, never wrong bytes.
    pub fn decode_frame(&self, i: u32) -> Result<Vec<u8>> {
        let a = &self.archive;
        let (c, d) = a
            .frame_sizes(i)
            .map_err(|e| Error::bundle(&self.path, format!("seek table: {e}")))?;
        // Decoded whole, so never more than airlock writes (4 MiB; 16 MiB before): a seek
        // table is read before anything checks it.
        if u64::from(d) > MAX_FRAME {
            return Err(Error::bundle(
                &self.path,
                format!(
                    "frame {i} holds {d} bytes by the seek table, more than the {} MiB a bundle's \
                     frames hold",
                    MAX_FRAME >> 20
                ),
            ));
        }
        let start = a
            .seek
            .frame_start_comp(i)
            .map_err(|e| Error::bundle(&self.path, format!("seek table: {e}")))?;
        let window = Window {
            inner: a.files.clone(),
            start,
            len: c as u64,
            pos: 0,
        };
        let mut out = Vec::with_capacity(d as usize);
        let dstart = a.seek.frame_start_decomp(i).unwrap_or(0);
        // `take`: the decoder looks past the frame's end, where the window would call it a
        // truncation; and it gives no more than a byte past what the table says (a frame that
        // decodes to gigabytes is stopped there).
        zstd::stream::read::Decoder::new(window.take(c as u64))
            .and_then(|dec| dec.take(u64::from(d) + 1).read_to_end(&mut out))
            .map_err(|e| a.read_error(dstart, e))?;
        if out.len() != d as usize {
            return Err(Error::bundle(
                &self.path,
                format!(
                    "frame {i} decodes to {} bytes, the seek table says {d}",
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    /// Reads a small blob (a manifest) whole, verified.
    pub fn read_blob(&self, d: &Digest, limit: u64) -> Result<Vec<u8>> {
        let size = self.manifest.blob(d).map(|b| b.size).unwrap_or(0);
        if size > limit {
            return Err(Error::bundle(
                &self.path,
                format!(
                    "blob {d} declares {size} bytes, more than the {limit} allowed for a manifest"
                ),
            ));
        }
        let mut out = Vec::with_capacity(size as usize);
        self.open_blob(d)?
            .read_to_end(&mut out)
            .map_err(|e| Error::bundle(&self.path, e.to_string()))?;
        Ok(out)
    }

    /// All volumes (or the single file) in one stream, for a sequential pass.
    pub fn raw_stream(&self) -> MultiFile {
        self.archive.files.clone()
    }

    pub fn seek_table(&self) -> &SeekTable {
        &self.archive.seek
    }

    pub fn compressed_size(&self) -> u64 {
        self.archive.files.len()
    }
}

/// Refuses a seek table whose footer claims more frames than the files can hold, before the
/// zstd seekable parser reserves memory for them.
fn check_seek_table_footer(files: &MultiFile) -> Result<()> {
    const FOOTER: u64 = 9;
    const SKIPPABLE_HEADER: u64 = 8;
    let last = files.file_at(files.len());
    let len = files.len();
    if len < SKIPPABLE_HEADER + FOOTER {
        return Err(Error::bundle(
            last,
            format!("{len} bytes is too short to be a bundle (no zstd seek table at the end)"),
        ));
    }
    let mut footer = [0u8; FOOTER as usize];
    let mut f = files.clone();
    f.seek(SeekFrom::Start(len - FOOTER))
        .and_then(|_| f.read_exact(&mut footer))
        .map_err(|e| Error::bundle(&last, format!("reading the seek table: {e}")))?;
    if footer[5..] != zeekstd::SEEKABLE_MAGIC_NUMBER.to_le_bytes() {
        return Err(Error::bundle(
            last,
            "no zstd seek table at the end: the bundle is truncated, a volume is missing, or it \
             was not written by airlock",
        ));
    }
    let frames = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]) as u64;
    let per_frame = if footer[4] & 0x80 != 0 { 12 } else { 8 };
    let table = SKIPPABLE_HEADER + frames * per_frame + FOOTER;
    if table > len {
        return Err(Error::bundle(
            last,
            format!(
                "the seek table claims {frames} frames ({table} bytes), more than the {len} \
                 bytes of the bundle: it is truncated, damaged or not written by airlock"
            ),
        ));
    }
    Ok(())
}

/// Reads the tar header at the start of a member's frame, decoding no more of the frame than
/// it takes. One reader serves many members with one decoder context and a small input
/// buffer and one open file: a decoder made per member (a context, 256 KiB of buffers and the
/// file opened again each) took 2 of the 2.7 seconds of opening a bundle of 100,000 blobs for
/// `import --plan`.
#[derive(Default)]
struct HeaderReader {
    dctx: Option<zstd::zstd_safe::DCtx<'static>>,
    input: Vec<u8>,
    /// Moved from frame to frame: its volume stays open (a window made per member opened
    /// the file again each time).
    window: Option<Window>,
}

impl HeaderReader {
    /// The 512 bytes at archive offset `at`, where a frame must start; read through the
    /// general path (`Archive::range`) if none does or the frame is shorter than a block.
    fn block(&mut self, a: &Archive, at: u64) -> Result<[u8; 512]> {
        let mut block = [0u8; 512];
        let i = a.seek.frame_index_decomp(at);
        let frame = a.frame_sizes(i).ok().zip(a.seek.frame_start_comp(i).ok());
        let Some(((c, _), start)) =
            frame.filter(|((_, d), _)| *d >= 512 && a.seek.frame_start_decomp(i).ok() == Some(at))
        else {
            a.range(at, 512)?
                .read_exact(&mut block)
                .map_err(|e| a.read_error(at, e))?;
            return Ok(block);
        };
        let zstd_error = |code: usize| {
            a.read_error(
                at,
                io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code))),
            )
        };
        let dctx = self.dctx.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        dctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(zstd_error)?;
        self.input.resize(4096, 0);
        let window = self.window.get_or_insert_with(|| Window {
            inner: a.files.clone(),
            start: 0,
            len: 0,
            pos: 0,
        });
        (window.start, window.len, window.pos) = (start, u64::from(c), 0);
        let mut filled = 0;
        while filled < block.len() {
            let n = window
                .read(&mut self.input)
                .map_err(|e| a.read_error(at, e))?;
            let mut input = zstd::zstd_safe::InBuffer::around(&self.input[..n]);
            // The decoder takes all the input it is given while it has room to write.
            while input.pos() < n && filled < block.len() {
                let mut out = zstd::zstd_safe::OutBuffer::around_pos(&mut block[..], filled);
                let before = input.pos();
                dctx.decompress_stream(&mut out, &mut input)
                    .map_err(zstd_error)?;
                let progress = out.pos() > filled || input.pos() > before;
                filled = out.pos();
                if !progress {
                    break;
                }
            }
        }
        Ok(block)
    }
}

/// A window `[start, start + len)` of the bundle's bytes, for the frames one read needs.
/// Reading past its end is an error: the seek table promised more than the frames hold.
struct Window {
    inner: MultiFile,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the zstd frames end before the seek table says they do",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the bundle's files end before its seek table says they do",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        self.pos = new;
        Ok(new)
    }
}

/// A verified reader over one blob of a bundle. Its errors name the blob and the bundle.
pub struct BlobReader {
    inner: Box<dyn Read + Send>,
    digest: Digest,
    /// The blob's size, as its member says.
    size: u64,
    /// The bundle (and the volumes holding the blob), for messages.
    bundle: String,
}

impl BlobReader {
    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} in bundle {}: {e}", self.digest, self.bundle),
            )
        })
    }
}

/// `bundle.json` parsed from `r` as it is read, every byte hashed, never held whole; after a
/// syntax error the rest is read too. Returns the parse, how many bytes were read and their
/// digest; failing to read `r` is the error.
pub(crate) fn parse_hashed(
    r: impl Read,
) -> io::Result<(serde_json::Result<BundleManifest>, u64, Digest)> {
    // serde_json reads a byte at a time: the buffer is outside the hashing.
    let mut r = io::BufReader::with_capacity(1 << 16, HashingReader::new(r));
    let parsed: serde_json::Result<BundleManifest> = serde_json::from_reader(&mut r);
    if let Err(e) = &parsed {
        if let Some(kind) = e.io_error_kind() {
            return Err(io::Error::new(kind, e.to_string()));
        }
    }
    io::copy(&mut r, &mut io::sink())?;
    let hashed = r.into_inner();
    Ok((parsed, hashed.read_so_far(), hashed.digest()))
}

/// [`Bundle::bundle_json_stream`]'s stream: `bundle.json` read from the archive, checked
/// against the size and digest it had when the bundle was opened once it is all read.
struct BundleJsonStream<R> {
    inner: HashingReader<R>,
    size: u64,
    expected: Digest,
    checked: bool,
}

impl<R: Read> Read for BundleJsonStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.checked {
            self.checked = true;
            if self.inner.read_so_far() != self.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bundle.json is cut short",
                ));
            }
            if self.inner.digest_so_far() != self.expected {
                return Err(io::Error::other(
                    "bundle.json changed on disk while the bundle was open",
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleWriter;

    /// A bundle whose only member is a `bundle.json` holding `json`.
    fn bundle_with(dir: &Path, json: &[u8]) -> PathBuf {
        let path = dir.join("b.tar.zst");
        let mut w = BundleWriter::create(&path, None, 0).unwrap();
        w.append(BUNDLE_JSON, json.len() as u64, &mut &json[..])
            .unwrap();
        w.finish().unwrap();
        path
    }

    #[test]
    fn a_bundle_json_that_is_not_json_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = bundle_with(
            dir.path(),
            b"{\"format\": \"airlock-bundle\", \"images\": [",
        );
        let e = Bundle::open(&path).err().expect("refused").to_string();
        assert!(e.contains("bundle.json is not valid"), "{e}");
        assert!(e.contains("b.tar.zst"), "{e}");
    }
}
