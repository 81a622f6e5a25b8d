//! `verify`'s one sequential read of a bundle, offered to the copy engine as its [`Source`].
//!
//! One thread reads the raw volumes and hashes them (for `NAME.sha256`); the pass decompresses
//! the stream and walks the tar members in order, checking each one's name, type and size
//! against `bundle.json` and its content against its digest. When the engine asks for a blob,
//! the pass reads forward to it (checking every member on the way, keeping manifests) and
//! hands its bytes over as they are checked; the engine asks in bundle order, so the bundle is
//! read once. A blob asked for after the pass went by it is read again by random access.
//! A structural failure (a member that is not where `bundle.json` says, a damaged frame)
//! ends the pass; a content failure (a digest) is recorded and the pass goes on.

use crate::bundle::docker::MANIFEST_JSON;
use crate::bundle::reader::{is_regular, parse_header};
use crate::bundle::volumes::MultiFile;
use crate::bundle::{tar_span, Bundle, INDEX_JSON};
use crate::digest::{Digest, Verifier};
use crate::error::{Error, Result};
use crate::manifest;
use crate::pipe::ChannelReader;
use crate::progress::{human, Reporter};
use crate::registry::{BlobSource, MAX_MANIFEST_SIZE};
use crate::spill::{Kept, KeptWriter, Spill};
use crate::store::Source;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use sha2::{Digest as _, Sha256};
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Hashes the raw bytes of each volume as they stream by.
struct VolumeHasher {
    inner: MultiFile,
    bounds: Vec<(PathBuf, u64)>,
    current: usize,
    in_current: u64,
    hasher: Sha256,
    sums: Vec<(PathBuf, String)>,
}

impl VolumeHasher {
    fn new(inner: MultiFile, volumes: &[PathBuf]) -> VolumeHasher {
        let bounds = volumes
            .iter()
            .map(|v| {
                (
                    v.clone(),
                    std::fs::metadata(v).map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        VolumeHasher {
            inner,
            bounds,
            current: 0,
            in_current: 0,
            hasher: Sha256::new(),
            sums: Vec::new(),
        }
    }

    fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && self.current < self.bounds.len() {
            let left = self.bounds[self.current].1 - self.in_current;
            let take = (left as usize).min(buf.len());
            self.hasher.update(&buf[..take]);
            self.in_current += take as u64;
            buf = &buf[take..];
            if self.in_current == self.bounds[self.current].1 {
                let h = std::mem::take(&mut self.hasher);
                self.sums.push((
                    self.bounds[self.current].0.clone(),
                    hex::encode(h.finalize()),
                ));
                self.current += 1;
                self.in_current = 0;
            }
        }
    }
}

impl Read for VolumeHasher {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }
}

/// How much of the volumes the reading thread reads at a time. Up to seven such buffers are
/// about (four queued, one being filled, one being read, one on its way back): at 1 MiB each
/// they were 7 MiB of verify's peak, for no speed.
const READ_CHUNK: usize = 256 << 10;

/// Reads the volumes on a thread of its own, hashing them, and hands the bytes over a small
/// bounded channel (buffers come back to be filled again); returns the reading end and the
/// thread, which yields the hashes.
fn spawn_volume_reader(
    mut hasher: VolumeHasher,
) -> Result<(ChannelReader, JoinHandle<io::Result<VolumeHasher>>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let (back, free) = std::sync::mpsc::channel::<Vec<u8>>();
    let handle = std::thread::Builder::new()
        .name("verify-read".into())
        .spawn(move || -> io::Result<VolumeHasher> {
            loop {
                let mut buf = free.try_recv().unwrap_or_default();
                buf.resize(READ_CHUNK, 0);
                match hasher.read(&mut buf) {
                    Ok(0) => return Ok(hasher),
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            return Ok(hasher);
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                }
            }
        })
        .map_err(|e| Error::io("starting the reading thread", e))?;
    Ok((ChannelReader::new(rx, back), handle))
}

type Decoder = zstd::stream::read::Decoder<'static, BufReader<ChannelReader>>;

/// A sink that notes whether anything but zeros was written to it.
#[derive(Default)]
struct Zeros {
    other: bool,
}

impl io::Write for Zeros {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.other |= buf.iter().any(|b| *b != 0);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the pass found, once it is over.
pub struct Findings {
    /// Content failures, one per member.
    pub errors: Vec<String>,
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    /// Each volume's SHA-256, in order.
    pub volume_sums: Vec<(PathBuf, String)>,
    /// Where `index.json` disagrees with `bundle.json` (checked as it was read, so that its
    /// bytes are not held through the pass).
    pub index_errors: Vec<String>,
    /// The docker-archive `manifest.json` (set aside), when it has one and it is sound.
    pub docker_manifest: Option<Kept>,
    /// Every sound manifest the bundle holds, by position in its blobs (set aside on disk).
    pub manifests: Spill,
}

struct State {
    dec: Option<Decoder>,
    hash_thread: Option<JoinHandle<io::Result<VolumeHasher>>>,
    /// The next member to read.
    next: usize,
    /// A structural failure: the pass cannot go on.
    fatal: Option<String>,
    errors: Vec<String>,
    manifests: Spill,
    /// `None` until `index.json` is read.
    index_errors: Option<Vec<String>>,
    docker_manifest: Option<Kept>,
    blobs_checked: usize,
    bytes_checked: u64,
    /// The read buffer, reused from member to member.
    buf: Vec<u8>,
}

/// The manifest kept at blob `blob` during the pass, read back.
pub fn read_back(bundle: &Bundle, kept: &Spill, blob: usize) -> Result<Option<Vec<u8>>> {
    kept.get(blob).map_err(|e| {
        let d = bundle.manifest.blobs.get(blob).map(|b| &b.digest);
        let what = d.map(|d| format!(" {d}")).unwrap_or_default();
        Error::bundle(
            &bundle.path,
            format!("reading back manifest{what} kept during the pass: {e}"),
        )
    })
}

/// The sequential pass (see the module documentation).
pub struct Pass {
    pub bundle: Arc<Bundle>,
    state: Mutex<State>,
    reporter: Reporter,
    /// How many members come before the blobs.
    lead: usize,
}

impl Pass {
    /// Starts reading the bundle (the volume thread starts at once).
    pub fn start(bundle: Arc<Bundle>, reporter: Reporter) -> Result<Pass> {
        let (raw, hash_thread) =
            spawn_volume_reader(VolumeHasher::new(bundle.raw_stream(), &bundle.volumes))?;
        let dec = zstd::stream::read::Decoder::new(raw)
            .map_err(|e| Error::bundle(&bundle.path, format!("zstd: {e}")))?;
        let lead = bundle.first_blob_member();
        Ok(Pass {
            state: Mutex::new(State {
                dec: Some(dec),
                hash_thread: Some(hash_thread),
                next: 0,
                fatal: None,
                errors: Vec::new(),
                manifests: Spill::new(),
                index_errors: None,
                docker_manifest: None,
                blobs_checked: 0,
                bytes_checked: 0,
                buf: Vec::new(),
            }),
            bundle,
            reporter,
            lead,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::bundle(&self.bundle.path, "the verify pass failed"))
    }

    fn fatal(&self, st: &mut State, msg: String) -> Error {
        st.fatal = Some(msg.clone());
        Error::bundle(&self.bundle.path, msg)
    }

    /// How a member is named in messages: blobs by digest.
    fn describe_member(&self, i: usize) -> String {
        match i
            .checked_sub(self.lead)
            .and_then(|b| self.bundle.manifest.blobs.get(b))
        {
            Some(b) => format!("blob {}", b.digest),
            None => self.bundle.member(i).map(|m| m.name).unwrap_or_default(),
        }
    }

    /// The digest a member must have (none for `bundle.json`, which is what it is), and
    /// whether its bytes are kept (manifests, `index.json` and `manifest.json`).
    fn expectation(&self, i: usize, name: &str) -> (Option<Digest>, bool) {
        match i.checked_sub(self.lead) {
            Some(b) => match self.bundle.manifest.blobs.get(b) {
                Some(b) => {
                    let keep = manifest::is_manifest(&b.media_type) && b.size <= MAX_MANIFEST_SIZE;
                    (Some(b.digest.clone()), keep)
                }
                None => (None, false),
            },
            // A layout member: bundle.json itself, oci-layout, index.json, manifest.json.
            None => (
                self.bundle.layout_digest(name).cloned(),
                name == INDEX_JSON || name == MANIFEST_JSON,
            ),
        }
    }

    /// Reads member `i` (the next one), checking it; `forward` gets its bytes as they are
    /// read (until it returns false). Err: the pass cannot go on.
    fn read_member(
        &self,
        st: &mut State,
        i: usize,
        mut forward: Option<&mut dyn FnMut(Bytes) -> bool>,
    ) -> Result<std::result::Result<(), String>> {
        let Some(expected) = self.bundle.member(i) else {
            return Err(self.fatal(st, format!("no member {}", i + 1)));
        };
        let mut block = [0u8; 512];
        let header = match st.dec.as_mut() {
            Some(dec) => dec.read_exact(&mut block),
            None => Err(io::Error::other("the pass is over")),
        };
        if let Err(e) = header {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(self.fatal(st, self.ends_early(i)));
            }
            // zstd checks a frame when it ends, which is when the next header is read: the
            // damage is in the member before.
            let damaged = match i.checked_sub(1) {
                Some(prev) => format!(" (in or after {})", self.describe_member(prev)),
                None => String::new(),
            };
            return Err(self.fatal(st, format!("reading member {}{damaged}: {e}", i + 1)));
        }
        if block.iter().all(|b| *b == 0) {
            return Err(self.fatal(st, self.ends_early(i)));
        }
        let (name, size, kind) = match parse_header(&block) {
            Ok(h) => h,
            Err(e) => return Err(self.fatal(st, format!("reading member {}: {e}", i + 1))),
        };
        if name != expected.name || !is_regular(kind) {
            let msg = format!(
                "member {} is {name:?}, expected the regular file {}",
                i + 1,
                expected.name
            );
            return Err(self.fatal(st, msg));
        }
        if size != expected.size {
            let msg = format!(
                "member {name} holds {size} bytes, bundle.json says {}",
                expected.size
            );
            return Err(self.fatal(st, msg));
        }
        let (digest, keep) = self.expectation(i, &name);
        let mut verifier = digest.as_ref().map(|d| Verifier::new(d, size));
        // index.json and manifest.json (MiBs at 10,000 images) are set aside as they stream
        // by; a manifest's bytes are sized once.
        let layout_json = keep && (name == INDEX_JSON || name == MANIFEST_JSON);
        let mut streamed = layout_json.then(|| KeptWriter::new(size));
        let mut kept = Vec::with_capacity(if keep && !layout_json {
            size.min(MAX_MANIFEST_SIZE) as usize
        } else {
            0
        });
        let mut left = size;
        // One buffer for the whole pass: a fresh one per read costs a memset and page faults
        // per MiB, as much as the hashing.
        let mut buf = std::mem::take(&mut st.buf);
        buf.resize(1 << 20, 0);
        while left > 0 {
            let want = buf.len().min(left as usize);
            let read = match st.dec.as_mut() {
                Some(dec) => dec.read(&mut buf[..want]),
                None => Err(io::Error::other("the pass is over")),
            };
            let n = match read {
                Ok(0) => return Err(self.fatal(st, format!("reading {name}: the archive ends"))),
                Ok(n) => n,
                Err(e) => return Err(self.fatal(st, format!("reading {name}: {e}"))),
            };
            let chunk = &buf[..n];
            left -= n as u64;
            if let Some(v) = verifier.as_mut() {
                if let Err(e) = v.update(chunk) {
                    return Err(self.fatal(st, e.to_string()));
                }
            }
            match streamed.as_mut() {
                Some(w) => w.write(chunk),
                None if keep => kept.extend_from_slice(chunk),
                None => {}
            }
            self.reporter.inc(n as u64);
            if let Some(f) = forward.as_mut() {
                if !f(Bytes::copy_from_slice(chunk)) {
                    forward = None; // the reader went away; the member is still checked
                }
            }
        }
        st.buf = buf;
        // The padding to the next 512-byte block.
        let pad = tar_span(size) - 512 - size;
        if pad > 0 {
            let mut zeros = vec![0u8; pad as usize];
            let r = match st.dec.as_mut() {
                Some(dec) => dec.read_exact(&mut zeros),
                None => Err(io::Error::other("the pass is over")),
            };
            if let Err(e) = r {
                return Err(self.fatal(st, format!("reading {name}: {e}")));
            }
            // No digest covers these bytes: what the tar format has as zeros must be zeros.
            if zeros.iter().any(|b| *b != 0) {
                return Err(self.fatal(
                    st,
                    format!("bytes other than zeros in the tar padding after {name}"),
                ));
            }
        }
        let verdict = match verifier {
            Some(v) => v.finish().map_err(|e| {
                let msg = format!("{name}: {e}");
                st.errors.push(msg.clone());
                msg
            }),
            None => Ok(()),
        };
        if let Some(b) = i
            .checked_sub(self.lead)
            .and_then(|b| self.bundle.manifest.blobs.get(b))
        {
            match &verdict {
                Ok(()) => self.reporter.detail(format!(
                    "ok   {} {} {}",
                    b.digest,
                    human(b.size),
                    b.media_type
                )),
                Err(msg) => self.reporter.detail(format!("BAD  {} ({msg})", b.digest)),
            }
            st.blobs_checked += 1;
            st.bytes_checked += size;
        }
        let streamed = match streamed.map(KeptWriter::finish).transpose() {
            Ok(s) => s,
            Err(e) => return Err(self.fatal(st, format!("setting {name} aside: {e}"))),
        };
        if keep {
            match (&digest, name.as_str(), streamed) {
                (_, INDEX_JSON, Some(index)) => {
                    st.index_errors = Some(super::index_disagreements(
                        index.reader(),
                        &self.bundle.manifest.images,
                    ))
                }
                // Damaged bytes are reported by the digest check; only sound ones are read.
                (_, MANIFEST_JSON, Some(m)) => st.docker_manifest = verdict.is_ok().then_some(m),
                (Some(_), _, None) if verdict.is_ok() => {
                    if let Some(blob) = i.checked_sub(self.lead) {
                        st.manifests.put(blob, kept)
                    }
                }
                _ => {}
            }
        }
        Ok(verdict)
    }

    /// A manifest kept on the way, read back.
    fn kept(&self, st: &State, d: &Digest) -> Result<Option<Vec<u8>>> {
        match self.bundle.manifest.blob_index(d) {
            Some(blob) => read_back(&self.bundle, &st.manifests, blob),
            None => Ok(None),
        }
    }

    fn ends_early(&self, i: usize) -> String {
        format!(
            "the archive ends after {i} members; bundle.json lists {} (first missing: {})",
            self.bundle.member_count(),
            self.bundle.member(i).map(|m| m.name).unwrap_or_default()
        )
    }

    /// Reads forward to member `idx` and through it, forwarding its bytes. The verdict is
    /// member `idx`'s.
    fn read_to(
        &self,
        st: &mut State,
        idx: usize,
        forward: Option<&mut dyn FnMut(Bytes) -> bool>,
    ) -> Result<std::result::Result<(), String>> {
        if let Some(f) = &st.fatal {
            return Err(Error::bundle(&self.bundle.path, f.clone()));
        }
        while st.next < idx {
            let i = st.next;
            // A content failure is recorded in the findings; the pass goes on.
            let _verdict = self.read_member(st, i, None)?;
            st.next += 1;
        }
        let verdict = self.read_member(st, idx, forward)?;
        st.next += 1;
        Ok(verdict)
    }

    /// Reads what is left, the end of the archive, the seek table, and the volume hashes.
    pub fn finish(&self) -> Result<Findings> {
        let mut st = self.lock()?;
        if let Some(f) = &st.fatal {
            return Err(Error::bundle(&self.bundle.path, f.clone()));
        }
        let total = self.bundle.member_count();
        while st.next < total {
            let i = st.next;
            let _verdict = self.read_member(&mut st, i, None)?;
            st.next += 1;
        }
        let Some(mut dec) = st.dec.take() else {
            return Err(Error::bundle(
                &self.bundle.path,
                "the verify pass ended twice",
            ));
        };
        // What follows the last member: end-of-archive blocks, not another member.
        let mut block = [0u8; 512];
        let mut got = 0;
        while got < 512 {
            match dec.read(&mut block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    let msg = format!(
                        "after the last member (in or after {}): {e}",
                        self.describe_member(total.saturating_sub(1))
                    );
                    return Err(Error::bundle(&self.bundle.path, msg));
                }
            }
        }
        if got == 512 && block.iter().any(|b| *b != 0) {
            let name = parse_header(&block)
                .map(|(n, _, _)| n)
                .unwrap_or_else(|_| "(not a tar header)".into());
            return Err(Error::bundle(
                &self.bundle.path,
                format!("unexpected extra member {name:?}"),
            ));
        }
        // Drain the rest (padding, the seek table) so every volume is hashed; a writer leaves
        // 1 KiB of end-of-archive blocks, so much more is not ours to decompress.
        const TRAILER_LIMIT: u64 = 1 << 20;
        let mut zeros = Zeros::default();
        let trailer = io::copy(&mut (&mut dec).take(TRAILER_LIMIT), &mut zeros)
            .map_err(|e| Error::bundle(&self.bundle.path, format!("after the archive: {e}")))?;
        if trailer == TRAILER_LIMIT {
            return Err(Error::bundle(
                &self.bundle.path,
                "more than 1 MiB of data follows the end of the archive",
            ));
        }
        // The rest of the end-of-archive blocks: `tar` would read a header there.
        if zeros.other {
            return Err(Error::bundle(
                &self.bundle.path,
                "bytes other than zeros after the archive's end-of-archive block",
            ));
        }
        let mut raw = dec.finish();
        io::copy(&mut raw, &mut io::sink()).map_err(|e| {
            Error::bundle(&self.bundle.path, format!("reading the seek table: {e}"))
        })?;
        drop(raw);
        let hasher = match st.hash_thread.take().map(|h| h.join()) {
            Some(Ok(Ok(h))) => h,
            Some(Ok(Err(e))) => {
                return Err(Error::bundle(&self.bundle.path, format!("reading: {e}")))
            }
            _ => {
                return Err(Error::bundle(
                    &self.bundle.path,
                    "the reading thread failed",
                ))
            }
        };
        Ok(Findings {
            errors: std::mem::take(&mut st.errors),
            blobs_checked: st.blobs_checked,
            bytes_checked: st.bytes_checked,
            volume_sums: hasher.sums,
            index_errors: st.index_errors.take().unwrap_or_else(|| {
                super::index_disagreements(&[][..], &self.bundle.manifest.images)
            }),
            docker_manifest: st.docker_manifest.take(),
            manifests: std::mem::take(&mut st.manifests),
        })
    }
}

impl Source for Arc<Pass> {
    fn describe(&self, d: &Digest) -> Option<(u64, Arc<str>)> {
        self.bundle.describe(d)
    }

    fn external(&self, d: &Digest) -> Option<u64> {
        self.bundle.external(d)
    }

    fn external_home(&self, d: &Digest) -> String {
        self.bundle.external_home(d)
    }

    fn objects_hint(&self) -> usize {
        self.bundle.objects_hint()
    }

    fn position(&self, d: &Digest) -> Option<usize> {
        self.bundle.position(d)
    }

    fn manifest<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>>> {
        let pass = self.clone();
        let d = d.clone();
        Box::pin(async move {
            // Kept on the way already (the usual case): no hop to a blocking thread.
            if let Ok(st) = pass.state.try_lock() {
                if let Some(m) = pass.kept(&st, &d)? {
                    return Ok(m);
                }
            }
            tokio::task::spawn_blocking(move || {
                let mut st = pass.lock()?;
                if let Some(m) = pass.kept(&st, &d)? {
                    return Ok(m);
                }
                match pass.bundle.member_index(&d) {
                    Some(idx) if idx >= st.next => {
                        if let Err(e) = pass.read_to(&mut st, idx, None)? {
                            return Err(Error::bundle(&pass.bundle.path, e));
                        }
                        pass.kept(&st, &d)?
                            .ok_or_else(|| Error::Failed(format!("manifest {d} is too large")))
                    }
                    // Passed and not kept (it failed its digest): read it again.
                    _ => {
                        drop(st);
                        pass.bundle.read_blob(&d, MAX_MANIFEST_SIZE)
                    }
                }
            })
            .await
            .map_err(|e| Error::Failed(format!("reading a manifest: {e}")))?
        })
    }

    fn blob(&self, d: &Digest, reporter: &Reporter) -> Box<dyn BlobSource> {
        Box::new(PassBlob {
            pass: self.clone(),
            digest: d.clone(),
            reporter: reporter.clone(),
        })
    }
}

/// Members up to this size are read on the caller's thread.
const INLINE_READ: u64 = 256 * 1024;

/// A blob read by the pass.
struct PassBlob {
    pass: Arc<Pass>,
    digest: Digest,
    reporter: Reporter,
}

impl BlobSource for PassBlob {
    fn open(&self, offset: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
        let idx = self.pass.bundle.member_index(&self.digest).ok_or_else(|| {
            Error::bundle(
                &self.pass.bundle.path,
                format!("blob {} is not in this bundle", self.digest),
            )
        })?;
        let behind = self.pass.lock()?.next > idx;
        if behind || offset > 0 {
            // Out of bundle order: read it again, on its own.
            self.pass.reporter.detail(format!(
                "blob {} read again, out of bundle order",
                self.digest
            ));
            return self
                .pass
                .bundle
                .blob(&self.digest, &self.reporter)
                .open(offset);
        }
        // A small member (a config, a small layer) is read here and now: a hop to a
        // blocking thread would cost more than the read, ten thousand times over.
        let size = self.pass.bundle.member(idx).map_or(0, |m| m.size);
        if size <= INLINE_READ {
            let mut bytes = Vec::with_capacity(size as usize);
            let mut keep = |b: Bytes| {
                bytes.extend_from_slice(&b);
                true
            };
            let outcome = match self.pass.lock() {
                Ok(mut st) => self.pass.read_to(&mut st, idx, Some(&mut keep)),
                Err(e) => Err(e),
            };
            let item = match outcome {
                Ok(Ok(())) => Ok(Bytes::from(bytes)),
                Ok(Err(msg)) => Err(Error::Integrity {
                    what: format!("blob {}", self.digest),
                    detail: msg,
                }),
                Err(e) => Err(e),
            };
            return Ok(stream::once(async move { item }).boxed());
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
        let pass = self.pass.clone();
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || {
            let mut send = |b: Bytes| tx.blocking_send(Ok(b)).is_ok();
            let outcome = match pass.lock() {
                Ok(mut st) => pass.read_to(&mut st, idx, Some(&mut send)),
                Err(e) => Err(e),
            };
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(msg)) => Some(Error::Integrity {
                    what: format!("blob {digest}"),
                    detail: msg,
                }),
                Err(e) => Some(e),
            };
            if let Some(e) = failure {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }).boxed())
    }
}
