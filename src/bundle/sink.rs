//! The bundle being written, as the copy engine's sink (`export` = registries → bundle).
//!
//! The engine puts blobs concurrently, `--jobs` at a time, in bundle order; the writer thread
//! takes them strictly in bundle order from one mailbox, where each blob's delivery waits
//! until its turn (a byte of state per blob, an entry only while a delivery waits):
//! - blobs up to the stream threshold are downloaded into the content-addressed cache (a
//!   re-run finds them there and checks them again) and handed over as files; those of
//!   64 MiB and more in `Range` segments the same way, checked as they fill;
//! - larger blobs are downloaded in `Range` segments of 32 MiB, in order and up to four at a
//!   time, into a spool file that the writer reads right behind the segments as they fill
//!   (so it hashes and writes while the rest downloads, not after) and removes once read.
//!   Spools ahead of the writer take at most a byte budget together; within one blob the
//!   download runs at most that budget past the writer, which frees each segment it has
//!   read (a hole punched in the file), so that a 20 GiB layer needs about 4 GiB of spool,
//!   not 20. From a registry that ignores `Range` they stream straight into the bundle when
//!   their turn comes.
//!
//! Every byte is checked against its blob's digest and size once: by the download (cache,
//! stream, segments bound for the cache) or by the writer as it reads (a spool's segments).
//! Manifests travel inline in the objects list: the writer writes them itself, and the
//! engine's manifest and tag writes only confirm that the bundle holds them.

use crate::copy::Object;
use crate::digest::{Digest, Verifier, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::fetch;
use crate::registry::{BlobSource, Manifest, MountResult, PartSource};
use crate::store::{RegistryObjects, Sink};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// A blob's slot was handed a delivery (the first one counts; later ones are dropped).
const SENT: u8 = 1;
/// The blob was put whole (a "mount" of it is a no-op).
const PUT: u8 = 2;
/// The writer took the slot's delivery.
const TAKEN: u8 = 4;

/// Parallel `Range` requests of one large blob at most.
const MAX_PARTS: u64 = 4;
/// Large blobs are fetched in segments of this size, in order, `parts` at a time: the reader
/// follows a few segments behind the fastest request instead of waiting for the first of
/// four quarters while the other three fill (the last three quarters were hashed and
/// written after the download ended). A request per 32 MiB costs a round trip each on a
/// distant link: 3% at 100 ms and 10 MiB/s.
const SEGMENT: u64 = 32 * 1024 * 1024;
/// Bytes of large blobs that may be spooled ahead of the writer (the blob the writer waits
/// for is always fetched, whatever its size).
pub const AHEAD_BUDGET: u64 = 4 * 1024 * 1024 * 1024;
/// The most that the spool of the blob the writer reads holds on disk, whatever the blob's
/// size: the budget downloaded past the writer, the segment it reads and one being filled
/// at the window's edge (what it has read is freed where the file system punches holes).
pub const READ_SPOOL_MAX: u64 = AHEAD_BUDGET + 2 * SEGMENT;
/// How many slots past the writer's a blob may be put into: what waits for the writer (a
/// path, a stream) is held in memory, and from a warm cache the engine would otherwise hand
/// over every blob of the bundle (100,000 paths, 15 MiB) before the writer took the first.
const AHEAD_SLOTS: usize = 1024;
/// Spool writes are gathered into pieces of this size.
const PIECE: usize = 1024 * 1024;
/// At most this many received pieces go into one write (the system's limit is 1,024).
const MAX_PIECES: usize = 512;
/// Cuts a segment may suffer in a row (with no byte arriving in between) before it gives up.
const PART_RETRIES: u32 = 5;

/// How the writer reads one blob.
enum Delivery {
    /// A file in the cache, checked against the digest when it was downloaded or found.
    Cached { path: PathBuf, hit: bool },
    /// A spool file being filled by parallel parts: read as it fills, checked as it is read.
    Spool(Arc<Spool>),
    /// A download, checked as it arrives, streaming in as the writer reads.
    Stream(StreamReader),
    /// Fetching failed: the bundle cannot be finished.
    Failed(String),
}

/// What the writer took, for its counters and for clean-up after a failed read.
pub enum Taken {
    /// From the cache (`hit`: it was there before this run).
    Cached { path: PathBuf, hit: bool },
    /// Downloaded in this run, straight into the bundle.
    Downloaded,
}

/// The bundle's side of the engine: see the module documentation.
pub struct BundleSink {
    name: String,
    cache: PathBuf,
    /// The bundle's objects in bundle order (the engine's source holds them): a blob's slot
    /// is its position there; manifests, carried inline, have none.
    objects: Arc<RegistryObjects>,
    /// Per object: `SENT`, `PUT` and `TAKEN` bits.
    slots: Vec<AtomicU8>,
    /// Deliveries waiting for the writer.
    mailbox: Mutex<Mailbox>,
    /// Rung when a delivery arrives or the engine is done.
    arrived: Condvar,
    /// The slot the writer waits for; `usize::MAX` once it stopped.
    writer_at: AtomicUsize,
    closed: Arc<AtomicBool>,
    /// Bytes spooled ahead of the writer, against `AHEAD_BUDGET`.
    ahead: Arc<AtomicU64>,
    /// Rung when the writer moves on or stops, or spool space is freed.
    changed: Arc<Notify>,
    stream_over: u64,
    parts: u64,
    downloaded: AtomicU64,
    cached: AtomicU64,
}

/// Deliveries not yet taken by the writer, by slot.
#[derive(Default)]
struct Mailbox {
    ready: BTreeMap<usize, Delivery>,
    /// The engine is done: a slot with no delivery by now will never get one.
    engine_done: bool,
    /// The writer is gone: deliveries are dropped (a stream's download stops with it).
    writer_gone: bool,
}

/// The writer's end: takes the blobs in bundle order.
pub struct Inbox {
    sink: Arc<BundleSink>,
}

impl BundleSink {
    /// A sink for the bundle at `out` holding `objects` (in bundle order); `jobs` bounds the
    /// parallel requests of one large blob.
    pub fn new(
        objects: Arc<RegistryObjects>,
        out: &Path,
        cache: &Path,
        cache_all: bool,
        jobs: usize,
    ) -> (Arc<BundleSink>, Inbox) {
        let n = objects.objects().len();
        let sink = Arc::new(BundleSink {
            name: out.display().to_string(),
            cache: cache.to_path_buf(),
            objects,
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
            mailbox: Mutex::default(),
            arrived: Condvar::new(),
            writer_at: AtomicUsize::new(0),
            closed: Arc::default(),
            ahead: Arc::default(),
            changed: Arc::default(),
            stream_over: if cache_all {
                u64::MAX
            } else {
                fetch::stream_threshold()
            },
            parts: (jobs as u64).clamp(1, MAX_PARTS),
            downloaded: AtomicU64::new(0),
            cached: AtomicU64::new(0),
        });
        let inbox = Inbox { sink: sink.clone() };
        (sink, inbox)
    }

    /// Bytes downloaded in this run and bytes taken from the cache.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.downloaded.load(Ordering::Relaxed),
            self.cached.load(Ordering::Relaxed),
        )
    }

    /// The engine is done: a blob it never delivered fails the writer instead of leaving it
    /// waiting.
    pub fn close(&self) {
        self.mail().engine_done = true;
        self.arrived.notify_all();
    }

    fn mail(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        match self.mailbox.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sets `bit` in slot `i`'s state; true if it was set already.
    fn mark(&self, i: usize, bit: u8) -> bool {
        self.slots
            .get(i)
            .is_some_and(|s| s.fetch_or(bit, Ordering::AcqRel) & bit != 0)
    }

    fn stopped(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn stopped_error(&self) -> Error {
        Error::Failed(format!("the writer of {} stopped", self.name))
    }

    /// The slot of a blob the bundle stores (none for a manifest or an object it lacks).
    fn slot(&self, d: &Digest) -> Option<usize> {
        let i = self.objects.position(d)?;
        self.objects.objects().get(i)?.inline.is_none().then_some(i)
    }

    /// Hands blob `i`'s delivery to the writer: the first for a slot counts, and none is kept
    /// once the writer is gone (dropped outside the lock: a stream's download ends with it).
    fn deliver(&self, i: usize, d: Delivery) {
        if i >= self.slots.len() || self.mark(i, SENT) {
            return;
        }
        let mut mail = self.mail();
        if mail.writer_gone {
            drop(mail);
            drop(d);
            return;
        }
        mail.ready.insert(i, d);
        drop(mail);
        self.arrived.notify_all();
    }

    /// Waits until `ready` holds (looked at again whenever the writer moves on or spool space
    /// is freed); fails once the writer stopped.
    async fn wait_until(&self, ready: impl Fn(&Self) -> bool) -> Result<()> {
        wait_on(&self.changed, || {
            if self.stopped() {
                return Err(self.stopped_error());
            }
            Ok(ready(self))
        })
        .await
    }

    /// Takes `size` bytes of the spool budget for blob `i`, once they fit in it or the writer
    /// waits for the blob (which is fetched whatever its size). The bytes are counted the
    /// moment they fit, in the same look: blobs that wait together cannot all see the same
    /// room and all take it (each then spending a request before counting itself).
    async fn reserve(&self, i: usize, size: u64) -> Result<Reservation> {
        self.wait_until(|s| {
            let mut now = s.ahead.load(Ordering::Acquire);
            loop {
                let fits = now.saturating_add(size) <= AHEAD_BUDGET
                    || s.writer_at.load(Ordering::Acquire) >= i;
                if !fits {
                    return false;
                }
                match s.ahead.compare_exchange_weak(
                    now,
                    now.saturating_add(size),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return true,
                    Err(actual) => now = actual,
                }
            }
        })
        .await?;
        Ok(Reservation {
            taken: self.ahead.clone(),
            freed: self.changed.clone(),
            size,
        })
    }

    /// Puts blob `i`: from the cache, into the cache, through a spool or as a stream.
    async fn put(&self, i: usize, d: &Digest, size: u64, src: &dyn BlobSource) -> Result<()> {
        // The engine puts blobs in bundle order, so the one the writer waits for is never
        // held back here.
        self.wait_until(|s| {
            s.writer_at
                .load(Ordering::Acquire)
                .saturating_add(AHEAD_SLOTS)
                >= i
        })
        .await?;
        let path = fetch::cache_path(&self.cache, d);
        let in_cache = tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.len() == size);
        if in_cache && fetch::check_cached(&path, d, size).await {
            self.cached.fetch_add(size, Ordering::Relaxed);
            self.deliver(i, Delivery::Cached { path, hit: true });
            return Ok(());
        }
        if size <= self.stream_over {
            // Big enough to gain from parallel requests (on a link that holds each connection
            // to a rate): fetched in segments, checked as they fill.
            if size >= 2 * SEGMENT {
                if let Some(parts) = src.parts() {
                    if let Some(path) = self.parts_to_cache(d, size, parts).await? {
                        self.downloaded.fetch_add(size, Ordering::Relaxed);
                        self.deliver(i, Delivery::Cached { path, hit: false });
                        return Ok(());
                    }
                }
            }
            let path = fetch::to_cache(src.open(0)?, d, size, &self.cache).await?;
            self.downloaded.fetch_add(size, Ordering::Relaxed);
            self.deliver(i, Delivery::Cached { path, hit: false });
            return Ok(());
        }
        if let Some(parts) = src.parts() {
            let reserved = self.reserve(i, size).await?;
            if self.spool(i, d, size, parts, reserved).await? {
                return Ok(());
            }
            // The registry ignores Range: stream it when its turn comes.
        }
        self.wait_until(|s| s.writer_at.load(Ordering::Acquire) >= i)
            .await?;
        let (reader, done) = StreamReader::start(src.open(0)?);
        self.deliver(i, Delivery::Stream(reader));
        let r = done
            .await
            .unwrap_or_else(|_| Err(Error::Failed(format!("blob {d}: the download stopped"))));
        if r.is_ok() {
            self.downloaded.fetch_add(size, Ordering::Relaxed);
        }
        r
    }

    /// Downloads a large blob in segments into a spool file the writer reads as it fills.
    /// False when the registry answered the first segment's request with the whole blob
    /// (nothing was spooled).
    async fn spool(
        &self,
        i: usize,
        d: &Digest,
        size: u64,
        parts: Arc<dyn PartSource>,
        reserved: Reservation,
    ) -> Result<bool> {
        let Some(first) = parts.open_part(0, size.min(SEGMENT)).await? else {
            return Ok(false);
        };
        let path = self
            .cache
            .join("tmp")
            .join(format!("{}.spool.{}", d.hex(), std::process::id()));
        // The writer waits for this blob or will: past the writer, the download goes no
        // further than the budget of bytes ahead, and what the writer has read is freed.
        let window = Window {
            ahead: AHEAD_BUDGET,
            moved: self.changed.clone(),
            stopped: self.closed.clone(),
        };
        // Counted against the budget until the writer is done with it (it is dropped).
        let spool = Spool::create(path, d, size, SEGMENT, reserved, Some(window))?;
        self.deliver(i, Delivery::Spool(spool.clone()));
        fill_all(&spool, parts, first, self.parts).await?;
        self.downloaded.fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }

    /// Downloads a blob bound for the cache in `Range` segments, checking it against its
    /// digest as the segments fill (on a blocking thread that follows them), then moves it
    /// into the cache. `None` when the registry answered the first segment's request with
    /// the whole blob.
    async fn parts_to_cache(
        &self,
        d: &Digest,
        size: u64,
        parts: Arc<dyn PartSource>,
    ) -> Result<Option<PathBuf>> {
        let Some(first) = parts.open_part(0, size.min(SEGMENT)).await? else {
            return Ok(None);
        };
        let tmp = self
            .cache
            .join("tmp")
            .join(format!("{}.parts.{}", d.hex(), std::process::id()));
        let spool = Spool::create(tmp.clone(), d, size, SEGMENT, Default::default(), None)?;
        let digest = d.clone();
        let follower = spool.clone();
        let check = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut r = SpoolReader {
                spool: follower,
                pos: 0,
            };
            let mut v = Verifier::new(&digest, size);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return v.finish(),
                    Ok(n) => v.update(&buf[..n]).map_err(|e| Error::Integrity {
                        what: format!("blob {digest}"),
                        detail: e.to_string(),
                    })?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The download's own error, which `filled` reports.
                    Err(e) => return Err(Error::Failed(e.to_string())),
                }
            }
        });
        let filled = fill_all(&spool, parts, first, self.parts).await;
        let checked = check
            .await
            .map_err(|e| Error::Failed(format!("checking blob {d}: {e}")));
        // A failed download is the error to report (the check fails with it).
        filled?;
        checked??;
        // Renamed while the spool (which removes its file when dropped) is still held.
        let dest = fetch::cache_path(&self.cache, d);
        crate::cleanup::rename(&tmp, &dest)
            .map_err(|e| Error::io(format!("moving {d} into the cache"), e))?;
        Ok(Some(dest))
    }
}

/// Waits until `check` says ready (`Ok(true)`) or fails, looking again each time `notify`
/// rings (registered before each look, so no ring between a look and the wait is missed).
async fn wait_on(notify: &Notify, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if check()? {
            return Ok(());
        }
        notified.await;
    }
}

/// Fills every segment of a spool, in order, `workers` requests at a time (the first
/// segment's request already answered with `first`). The first failure stops the others and
/// fails the spool; so does this future being dropped unfinished, so that a reader never
/// waits for bytes that will not come.
async fn fill_all(
    spool: &Arc<Spool>,
    parts: Arc<dyn PartSource>,
    first: futures_util::stream::BoxStream<'static, io::Result<Bytes>>,
    workers: u64,
) -> Result<()> {
    let mut guard = PartGuard {
        spool: spool.clone(),
        done: false,
    };
    let next = AtomicUsize::new(1);
    let mut first = Some(first);
    let count = spool.segments();
    let workers = usize::try_from(workers).unwrap_or(1).clamp(1, count.max(1));
    let worker = |body: Option<futures_util::stream::BoxStream<'static, io::Result<Bytes>>>| {
        let (next, parts) = (&next, parts.clone());
        async move {
            let mut body = body;
            // The worker handed the first segment's answer starts there; the others take
            // the next segment nobody has.
            let mut k = if body.is_some() {
                0
            } else {
                next.fetch_add(1, Ordering::Relaxed)
            };
            while k < count {
                spool.room_for(k).await?;
                fill(spool, k, parts.as_ref(), body.take()).await?;
                k = next.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Error>(())
        }
    };
    let tasks: Vec<_> = (0..workers).map(|_| worker(first.take())).collect();
    let r = futures_util::future::try_join_all(tasks).await.map(|_| ());
    if let Err(e) = &r {
        spool.fail(e.to_string());
    }
    guard.done = true;
    r
}

impl Sink for BundleSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn has_blob<'a>(&'a self, _repo: &'a str, _d: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(false) })
    }

    fn mount_blob<'a>(
        &'a self,
        _repo: &'a str,
        d: &'a Digest,
        _from: &'a str,
    ) -> BoxFuture<'a, Result<MountResult>> {
        // A bundle has one namespace: a blob put once is there for every image.
        let there = self
            .slot(d)
            .and_then(|i| self.slots.get(i))
            .is_some_and(|x| x.load(Ordering::Acquire) & PUT != 0);
        crate::store::mount_in_one_namespace(there)
    }

    fn put_blob<'a>(
        &'a self,
        _repo: &'a str,
        d: &'a Digest,
        size: u64,
        src: &'a dyn BlobSource,
        _session: Option<reqwest::Url>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(i) = self.slot(d) else {
                return Err(Error::Failed(format!(
                    "blob {d} is not one that {} holds",
                    self.name
                )));
            };
            match self.put(i, d, size, src).await {
                Ok(()) => {
                    self.mark(i, PUT);
                    Ok(())
                }
                Err(e) => {
                    self.deliver(i, Delivery::Failed(e.to_string()));
                    Err(e)
                }
            }
        })
    }

    fn put_manifest<'a>(
        &'a self,
        _repo: &'a str,
        _reference: &'a str,
        m: &'a Manifest,
    ) -> BoxFuture<'a, Result<()>> {
        // Manifests (and the tags naming them, in bundle.json and index.json) were written
        // with the bundle's contents list; the writer stores their bytes in bundle order.
        let held = self
            .objects
            .get(&m.digest)
            .is_some_and(|o| o.inline.is_some())
            && crate::digest::Digest::of(&m.bytes) == m.digest;
        Box::pin(async move {
            if held {
                Ok(())
            } else {
                Err(Error::Failed(format!(
                    "manifest {} is not one that {} holds",
                    m.digest, self.name
                )))
            }
        })
    }
}

impl Inbox {
    /// Blocks until blob `o` can be read (call from the writer's thread, in bundle order): a
    /// reader that yields exactly its bytes, checked against its digest.
    pub fn take(&mut self, o: &Object) -> Result<(Box<dyn Read + Send>, Taken)> {
        let Some(i) = self.sink.slot(&o.digest) else {
            return Err(Error::Failed(format!("blob {} has no slot", o.digest)));
        };
        self.sink.writer_at.store(i, Ordering::Release);
        self.sink.changed.notify_waiters();
        if self.sink.mark(i, TAKEN) {
            return Err(Error::Failed(format!("blob {} taken twice", o.digest)));
        }
        let delivery = {
            let mut mail = self.sink.mail();
            loop {
                if let Some(d) = mail.ready.remove(&i) {
                    break d;
                }
                if mail.engine_done {
                    return Err(Error::Failed(format!(
                        "{} was never fetched",
                        o.at_source()
                    )));
                }
                mail = match self.sink.arrived.wait(mail) {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        };
        Ok(match delivery {
            Delivery::Cached { path, hit } => {
                let f = std::fs::File::open(&path).ctx(|| format!("opening {}", path.display()))?;
                // Checked when it was downloaded or found: read once, its size enforced.
                let what = format!("{} (blob {})", path.display(), o.digest);
                // A buffer no bigger than the blob: most are a few KiB, and a MiB taken and
                // given back for each of 100,000 of them leaves the heap in pieces.
                let room = o.size.clamp(8 << 10, 1 << 20) as usize;
                let r = Exact::new(BufReader::with_capacity(room, f), o.size, what);
                (Box::new(r), Taken::Cached { path, hit })
            }
            Delivery::Spool(spool) => {
                let (digest, size) = (spool.digest.clone(), spool.size);
                let r = SpoolReader { spool, pos: 0 };
                (
                    Box::new(VerifyingReader::new(r, &digest, size)),
                    Taken::Downloaded,
                )
            }
            Delivery::Stream(s) => {
                let what = format!("blob {} from {}/{}", o.digest, o.registry(), o.repo());
                (Box::new(Exact::new(s, o.size, what)), Taken::Downloaded)
            }
            Delivery::Failed(e) => return Err(Error::Failed(e)),
        })
    }
}

impl Drop for Inbox {
    /// The writer is done or failed: nobody waits for a turn any more.
    fn drop(&mut self) {
        self.sink.closed.store(true, Ordering::Release);
        self.sink.writer_at.store(usize::MAX, Ordering::Release);
        self.sink.changed.notify_waiters();
        // Deliveries nobody will take: a stream's download stops when its reader goes.
        let left = {
            let mut mail = self.sink.mail();
            mail.writer_gone = true;
            std::mem::take(&mut mail.ready)
        };
        drop(left);
    }
}

/// A reader's bytes, failing unless there are exactly `size` of them (`tar` would pad a
/// short member silently).
struct Exact<R> {
    inner: R,
    left: u64,
    what: String,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, size: u64, what: String) -> Exact<R> {
        Exact {
            inner,
            left: size,
            what,
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left || (n == 0 && self.left > 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not the size it was declared with", self.what),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A large blob's spool file: filled in segments, read in order by the writer, removed
/// when the writer is done with it.
struct Spool {
    path: PathBuf,
    /// Written by the segments' downloads, read by the writer through `reader`.
    file: std::fs::File,
    reader: std::fs::File,
    state: Mutex<SpoolState>,
    cond: Condvar,
    size: u64,
    digest: Digest,
    /// Its bytes of the spool budget, given back when it is dropped (after the file went).
    _budget: Reservation,
    /// The segment size ([`SEGMENT`]; smaller in tests).
    seg: u64,
    /// For the bundle's spools: how far the download may run ahead of the writer, whose
    /// reader gives back (punches out) each segment it has read. `None` for blobs bound for
    /// the cache, which keep every byte.
    window: Option<Window>,
    /// Where the writer's reader has got to, in whole segments.
    read_to: AtomicU64,
    /// Whether the file system punches holes (cleared at the first refusal).
    punching: AtomicBool,
}

/// How far a spool's download may run ahead of its reader, and how it learns that the reader
/// moved or the writer stopped.
struct Window {
    /// Bytes past the reader's position that may be fetched.
    ahead: u64,
    /// Rung when the reader has read a segment, or the writer stopped.
    moved: Arc<Notify>,
    /// Set once the writer stopped.
    stopped: Arc<AtomicBool>,
}

struct SpoolState {
    /// Bytes written of each segment, from its start.
    filled: Vec<u64>,
    failed: Option<String>,
}

impl Spool {
    /// A spool file of `size` bytes at `path` (listed for removal on a signal), filled in
    /// segments of `seg` bytes, ahead of its reader within `window`; `budget` (already
    /// taken) is given back when it is dropped.
    fn create(
        path: PathBuf,
        d: &Digest,
        size: u64,
        seg: u64,
        budget: Reservation,
        window: Option<Window>,
    ) -> Result<Arc<Spool>> {
        let seg = seg.max(1);
        let file = crate::cleanup::create(&path).ctx(|| format!("creating {}", path.display()))?;
        let sized = file
            .set_len(size)
            .ctx(|| format!("sizing {}", path.display()));
        let reader = sized
            .and_then(|_| std::fs::File::open(&path).ctx(|| format!("opening {}", path.display())));
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                crate::cleanup::remove(&path);
                return Err(e);
            }
        };
        Ok(Arc::new(Spool {
            path,
            file,
            reader,
            state: Mutex::new(SpoolState {
                filled: vec![0; usize::try_from(size.div_ceil(seg)).unwrap_or(0)],
                failed: None,
            }),
            cond: Condvar::new(),
            size,
            digest: d.clone(),
            _budget: budget,
            seg,
            window,
            read_to: AtomicU64::new(0),
            punching: AtomicBool::new(true),
        }))
    }

    /// How many segments the blob has.
    fn segments(&self) -> usize {
        usize::try_from(self.size.div_ceil(self.seg)).unwrap_or(0)
    }

    /// Segment `k`'s bytes, `start..end`.
    fn segment(&self, k: usize) -> (u64, u64) {
        let start = (k as u64).saturating_mul(self.seg).min(self.size);
        (start, start.saturating_add(self.seg).min(self.size))
    }

    /// Waits until segment `k` may be fetched: it starts within the window past the reader
    /// (always, for a spool without one). Fails once the writer stopped or the spool failed.
    async fn room_for(&self, k: usize) -> Result<()> {
        let Some(w) = &self.window else {
            return Ok(());
        };
        let (start, _) = self.segment(k);
        wait_on(&w.moved, || {
            if w.stopped.load(Ordering::Acquire) {
                return Err(Error::Failed(format!(
                    "blob {}: the bundle's writer stopped",
                    self.digest
                )));
            }
            if let Some(e) = self.state.lock().ok().and_then(|st| st.failed.clone()) {
                return Err(Error::Failed(e));
            }
            Ok(start < self.read_to.load(Ordering::Acquire).saturating_add(w.ahead))
        })
        .await
    }

    /// The reader (there is one) has read everything before `to`, a segment boundary, and
    /// will not come back: for a spool with a window, frees what it had not freed of that on
    /// disk (where the file system punches holes), and lets the download move on.
    fn read_past(&self, to: u64) {
        let from = self.read_to.load(Ordering::Acquire);
        if to <= from {
            return;
        }
        self.read_to.store(to, Ordering::Release);
        let Some(w) = &self.window else {
            return;
        };
        if self.punching.load(Ordering::Relaxed) {
            if let Err(e) = punch_hole(&self.file, from, to) {
                // A file system that cannot punch holes is not asked again; another failure
                // (ENOSPC splitting an extent on a full disk) leaves this range and tries the
                // next, so one refusal does not let the spool grow to the whole blob.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                ) {
                    self.punching.store(false, Ordering::Relaxed);
                }
            }
        }
        w.moved.notify_waiters();
    }

    fn filled(&self, k: usize, n: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.filled[k] = n;
        }
        self.cond.notify_all();
    }

    fn fail(&self, why: String) {
        if let Ok(mut st) = self.state.lock() {
            st.failed.get_or_insert(why);
        }
        self.cond.notify_all();
    }

    /// Writes the pieces `data` one after the other at `at` (on a blocking thread).
    async fn write_at(self: &Arc<Self>, data: Vec<Bytes>, at: u64) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || write_all_vectored_at(&me.file, &data, at))
            .await
            .map_err(|e| Error::Failed(format!("spool writer: {e}")))?
            .ctx(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // The budget goes back once this returns, with the file gone.
        crate::cleanup::remove(&self.path);
    }
}

/// Bytes taken from a budget of spool space (`BundleSink::reserve`), given back when this is
/// dropped, which wakes whoever waits for room. The default takes nothing from a budget of
/// its own.
#[derive(Default)]
struct Reservation {
    taken: Arc<AtomicU64>,
    freed: Arc<Notify>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.taken.fetch_sub(self.size, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// Writes `pieces` one after the other into `file` from `at`: one `pwritev` for all of them
/// where it takes them whole, again for what is left where it does not.
fn write_all_vectored_at(file: &std::fs::File, pieces: &[Bytes], at: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let (mut first, mut skip, mut at) = (0usize, 0usize, at);
    loop {
        // Empty pieces (or what is left of one) at the front take no bytes.
        while first < pieces.len() && pieces[first].len() == skip {
            first += 1;
            skip = 0;
        }
        if first == pieces.len() {
            return Ok(());
        }
        let slices: Vec<io::IoSlice<'_>> = pieces[first..]
            .iter()
            .enumerate()
            .map(|(i, p)| io::IoSlice::new(if i == 0 { &p[skip..] } else { &p[..] }))
            .collect();
        let offset = i64::try_from(at).map_err(|_| io::Error::other("offset out of range"))?;
        let count = libc::c_int::try_from(slices.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the slices borrow
        // `pieces`, which outlive the call; the descriptor is the spool's own.
        let r = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                count,
                offset,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = r as usize;
        at += n as u64;
        while n > 0 && first < pieces.len() {
            let left = pieces[first].len() - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
}

/// Frees bytes `from..to` of `file` on disk, its size unchanged (`FALLOC_FL_PUNCH_HOLE`);
/// `EOPNOTSUPP` where the file system (or the system) does not.
fn punch_hole(file: &std::fs::File, from: u64, to: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to.saturating_sub(from)))
        else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: a plain system call on a file descriptor the spool owns.
            let r = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, from, to);
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
}

/// Whether the file system of `dir` punches holes in files, so that a spool frees what its
/// reader has read: tried on a small file made there and removed.
pub fn punches_holes(dir: &Path) -> bool {
    let path = dir.join(format!("punch-check.{}", std::process::id()));
    let Ok(f) = crate::cleanup::create(&path) else {
        return false;
    };
    let punched = f.write_all_at(&[1u8; 3 * 4096], 0).is_ok() && punch_hole(&f, 4096, 8192).is_ok();
    drop(f);
    crate::cleanup::remove(&path);
    punched
}

/// Fails the spool if its download ends without finishing (an error or a cancelled task), so
/// the writer never waits for bytes that will not come.
struct PartGuard {
    spool: Arc<Spool>,
    done: bool,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if !self.done {
            self.spool
                .fail(format!("blob {}: the download stopped", self.spool.digest));
        }
    }
}

/// What a segment's download received since its last write, kept as the pieces the
/// connection delivered (no copy: they go to the file in one vectored write).
#[derive(Default)]
struct Pending {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Pending {
    /// Writes the pieces at `at` in segment `k` (which starts at `start`), moves `at` past
    /// them and tells the reader.
    async fn write(
        &mut self,
        spool: &Arc<Spool>,
        k: usize,
        start: u64,
        at: &mut u64,
    ) -> Result<()> {
        spool
            .write_at(std::mem::take(&mut self.pieces), *at)
            .await?;
        *at += std::mem::take(&mut self.len) as u64;
        spool.filled(k, *at - start);
        Ok(())
    }
}

/// Downloads segment `k` of a spooled blob (starting with `body` when its request is already
/// answered), resuming a cut transfer where it stopped.
async fn fill(
    spool: &Arc<Spool>,
    k: usize,
    parts: &dyn PartSource,
    mut body: Option<futures_util::stream::BoxStream<'static, io::Result<Bytes>>>,
) -> Result<()> {
    let (start, end) = spool.segment(k);
    let what = format!("blob {} (bytes {start}-{})", spool.digest, end - 1);
    let mut at = start;
    let mut cuts = 0u32;
    let mut pending = Pending::default();
    while at < end {
        let mut stream = match body.take() {
            Some(b) => b,
            None => match parts.open_part(at, end).await? {
                Some(b) => b,
                None => {
                    return Err(Error::Failed(format!(
                        "{what}: the registry stopped honouring Range requests"
                    )))
                }
            },
        };
        let mut cut = None;
        loop {
            match stream.next().await {
                Some(Ok(c)) => {
                    if at + (pending.len + c.len()) as u64 > end {
                        return Err(Error::Integrity {
                            what,
                            detail: "the registry sent more bytes than the range asked".into(),
                        });
                    }
                    pending.len += c.len();
                    pending.pieces.push(c);
                    if pending.len >= PIECE || pending.pieces.len() >= MAX_PIECES {
                        pending.write(spool, k, start, &mut at).await?;
                        cuts = 0;
                    }
                }
                Some(Err(e)) => {
                    cut = Some(e.to_string());
                    break;
                }
                None => break,
            }
        }
        if !pending.pieces.is_empty() {
            pending.write(spool, k, start, &mut at).await?;
            // Bytes arrived before the cut: it is not one in a row.
            cuts = 0;
        }
        if at < end {
            cuts += 1;
            if cuts > PART_RETRIES {
                return Err(Error::Failed(format!(
                    "{what}: the download was cut {cuts} times in a row, last: {}",
                    cut.unwrap_or_else(|| "the connection closed early".into())
                )));
            }
            tokio::time::sleep(Duration::from_millis(250 * u64::from(cuts))).await;
        }
    }
    Ok(())
}

/// The writer's reader of a spool: waits for each byte to be written before reading it.
struct SpoolReader {
    spool: Arc<Spool>,
    pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let sp = &self.spool;
        if self.pos >= sp.size || buf.is_empty() {
            return Ok(0);
        }
        let k = usize::try_from(self.pos / sp.seg).unwrap_or(usize::MAX);
        let (start, end) = sp.segment(k);
        let available = {
            let mut st = sp
                .state
                .lock()
                .map_err(|_| io::Error::other("spool state poisoned"))?;
            loop {
                if let Some(e) = &st.failed {
                    return Err(io::Error::other(e.clone()));
                }
                let have = start + st.filled[k];
                if have > self.pos {
                    break have - self.pos;
                }
                st = sp
                    .cond
                    .wait_timeout(st, Duration::from_secs(1))
                    .map_err(|_| io::Error::other("spool state poisoned"))?
                    .0;
            }
        };
        let n = (buf.len() as u64).min(available).min(end - self.pos) as usize;
        let got = sp.reader.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::other(format!(
                "{} ended early",
                sp.path.display()
            )));
        }
        self.pos += got as u64;
        sp.read_past(self.pos - self.pos % sp.seg);
        Ok(got)
    }
}

/// A download streaming into the bundle: the writer's blocking end of a checked stream.
struct StreamReader {
    rx: mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
    done: bool,
}

impl StreamReader {
    /// Forwards `body` to the reader; the receiver learns the download's outcome.
    fn start(
        mut body: futures_util::stream::BoxStream<'static, Result<Bytes>>,
    ) -> (StreamReader, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(16);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = loop {
                match body.next().await {
                    Some(Ok(c)) => {
                        if tx.send(Ok(c)).await.is_err() {
                            break Err(Error::Failed("the bundle writer stopped reading".into()));
                        }
                    }
                    Some(Err(e)) => {
                        let msg = e.to_string();
                        let _ = tx.send(Err(e)).await;
                        break Err(Error::Failed(msg));
                    }
                    None => break Ok(()),
                }
            };
            let _ = done_tx.send(outcome);
        });
        (
            StreamReader {
                rx,
                current: Bytes::new(),
                done: false,
            },
            done_rx,
        )
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
                }
                None => self.done = true,
            }
        }
        if self.current.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::BoxFuture;
    use futures_util::stream::BoxStream;
    use std::os::unix::fs::MetadataExt;

    /// A blob in memory served by `Range`, remembering where each request started.
    struct Memory {
        data: Bytes,
        starts: Mutex<Vec<u64>>,
    }

    impl PartSource for Memory {
        fn open_part(
            &self,
            start: u64,
            end: u64,
        ) -> BoxFuture<'static, Result<Option<BoxStream<'static, io::Result<Bytes>>>>> {
            if let Ok(mut s) = self.starts.lock() {
                s.push(start);
            }
            let part = self.data.slice(start as usize..end as usize);
            let pieces: Vec<io::Result<Bytes>> =
                part.chunks(4096).map(|c| Ok(part.slice_ref(c))).collect();
            Box::pin(async move {
                Ok(Some(
                    futures_util::stream::iter(pieces).boxed() as BoxStream<'static, _>
                ))
            })
        }
    }

    const SEG: u64 = 64 * 1024;

    fn blob(segments: u64) -> (Arc<Memory>, Digest) {
        let data: Vec<u8> = (0..segments * SEG).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Digest::of(&data);
        let m = Memory {
            data: Bytes::from(data),
            starts: Mutex::default(),
        };
        (Arc::new(m), digest)
    }

    fn window(ahead: u64) -> (Window, Arc<Notify>, Arc<AtomicBool>) {
        let (moved, stopped) = (Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
        let w = Window {
            ahead,
            moved: moved.clone(),
            stopped: stopped.clone(),
        };
        (w, moved, stopped)
    }

    fn furthest(m: &Memory) -> u64 {
        m.starts
            .lock()
            .map(|s| s.iter().copied().max().unwrap_or(0))
            .unwrap_or(0)
    }

    /// A spool at `path` of a `segments`-segment blob whose download runs with `workers`
    /// requests and a window of `ahead` bytes, started; with the blob, the spool, the
    /// download's task and the window's signals.
    struct Filling {
        src: Arc<Memory>,
        spool: Arc<Spool>,
        task: tokio::task::JoinHandle<Result<()>>,
        moved: Arc<Notify>,
        stopped: Arc<AtomicBool>,
    }

    async fn start_filling(path: PathBuf, segments: u64, ahead: u64, workers: u64) -> Filling {
        let (src, digest) = blob(segments);
        let (w, moved, stopped) = window(ahead);
        let size = segments * SEG;
        let spool =
            Spool::create(path, &digest, size, SEG, Default::default(), Some(w)).expect("spool");
        let first = src.open_part(0, SEG).await.expect("first").expect("ranged");
        let parts: Arc<dyn PartSource> = src.clone();
        let task = tokio::spawn({
            let spool = spool.clone();
            async move { fill_all(&spool, parts, first, workers).await }
        });
        Filling {
            src,
            spool,
            task,
            moved,
            stopped,
        }
    }

    /// The download of a spool goes no further than its window past the reader, and what
    /// the reader has read no longer takes room on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_downloads_within_its_window_and_frees_what_was_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool");
        let Filling {
            src,
            spool,
            task: filling,
            ..
        } = start_filling(path.clone(), 16, 4 * SEG, 4).await;
        // Nobody reads yet: the download stops at the window (segments 0 to 3).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!filling.is_finished(), "the download ran past its window");
        assert_eq!(
            furthest(&src),
            3 * SEG,
            "segments past the window were asked for"
        );

        // The reader reads six segments: the download moves on to the window past it, and
        // those six are freed.
        let reading = spool.clone();
        let mut reader = tokio::task::spawn_blocking(move || {
            let mut r = SpoolReader {
                spool: reading,
                pos: 0,
            };
            let mut buf = vec![0u8; (6 * SEG) as usize];
            r.read_exact(&mut buf).map(|_| r)
        })
        .await
        .expect("join")
        .expect("six segments");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            furthest(&src),
            9 * SEG,
            "the download stops at the window past the reader"
        );
        let allocated = std::fs::metadata(&path).expect("stat").blocks() * 512;
        assert!(
            allocated <= 5 * SEG,
            "{allocated} bytes on disk with four segments unread (ten downloaded, six read)"
        );
        // The rest, checked against the digest: the bytes are the blob's.
        let rest = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        });
        filling.await.expect("join").expect("download");
        let rest = rest.await.expect("join").expect("read the rest");
        assert_eq!(&rest[..], &src.data[(6 * SEG) as usize..]);
    }

    /// Received pieces, empty ones among them, land one after the other where they belong.
    #[test]
    fn pieces_are_written_in_order_at_their_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("create");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let all = Bytes::from(data.clone());
        let cuts = [0, 0, 1, 4096, 4096, 70_000, 299_999, 300_000];
        let pieces: Vec<Bytes> = cuts.windows(2).map(|w| all.slice(w[0]..w[1])).collect();
        write_all_vectored_at(&f, &pieces, 5).expect("write");
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len(), 5 + data.len());
        assert_eq!(&got[..5], &[0u8; 5]);
        assert!(got[5..] == data[..], "the bytes are the pieces', in order");
        // Nothing but empty pieces: nothing to write, and no error.
        write_all_vectored_at(&f, &[Bytes::new(), Bytes::new()], 7).expect("empty pieces");
        assert_eq!(std::fs::read(&path).expect("read").len(), 5 + data.len());
    }

    /// The free-space check asks the cache's file system whether it punches holes; the file
    /// it tries that on does not stay.
    #[test]
    fn the_hole_punching_check_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(punches_holes(dir.path()), "ext4 and tmpfs punch holes");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!punches_holes(&dir.path().join("missing")));
    }

    /// A download waiting for the reader ends, with an error, when the writer stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_held_by_its_window_ends_when_the_writer_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Filling {
            task: filling,
            moved,
            stopped,
            ..
        } = start_filling(dir.path().join("spool"), 8, 2 * SEG, 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!filling.is_finished());
        stopped.store(true, Ordering::Release);
        moved.notify_waiters();
        let r = tokio::time::timeout(Duration::from_secs(5), filling)
            .await
            .expect("the download ended")
            .expect("join");
        let e = r.expect_err("a stopped writer fails the download");
        assert!(e.to_string().contains("writer stopped"), "{e}");
    }

    /// A blob served by `Range` whose requests are counted and never answered: a registry
    /// that takes its time.
    struct Unanswered {
        asked: Arc<AtomicUsize>,
    }

    impl PartSource for Unanswered {
        fn open_part(
            &self,
            _start: u64,
            _end: u64,
        ) -> BoxFuture<'static, Result<Option<BoxStream<'static, io::Result<Bytes>>>>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }
    }

    impl BlobSource for Unanswered {
        fn open(&self, _offset: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
            Err(Error::Failed("this source is read in parts".into()))
        }
        fn parts(&self) -> Option<Arc<dyn PartSource>> {
            Some(Arc::new(Unanswered {
                asked: self.asked.clone(),
            }))
        }
    }

    #[tokio::test]
    async fn large_blobs_waiting_together_take_the_spool_budget_in_turn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = Arc::new(RegistryObjects::new(Vec::new(), Default::default()));
        let (sink, _inbox) =
            BundleSink::new(objects, &dir.path().join("b.tar.zst"), dir.path(), false, 4);
        // Three blobs of three quarters of the budget each, past the one the writer waits
        // for (slot 0): one at a time fits. Each counts its own requests.
        let size = AHEAD_BUDGET / 4 * 3;
        let asked: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let puts: Vec<_> = (1..=3u8)
            .zip(&asked)
            .map(|(k, asked)| {
                let (sink, asked) = (sink.clone(), asked.clone());
                let d = Digest::parse(&format!("sha256:{}", format!("{k:02x}").repeat(32)))
                    .expect("digest");
                tokio::spawn(
                    async move { sink.put(k.into(), &d, size, &Unanswered { asked }).await },
                )
            })
            .collect();
        let started = || -> Vec<usize> {
            (0..3)
                .filter(|&k| asked[k].load(Ordering::SeqCst) > 0)
                .collect()
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = started();
        assert_eq!(
            first.len(),
            1,
            "one blob's download at a time fits in the budget"
        );
        assert_eq!(sink.ahead.load(Ordering::SeqCst), size);
        // The one downloading stops (a failure, or Ctrl-C): its share goes to the next.
        puts[first[0]].abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = started();
        assert_eq!(
            now.len(),
            2,
            "the next blob starts once its room is freed: {now:?}"
        );
        assert_eq!(sink.ahead.load(Ordering::SeqCst), size);
        for p in &puts {
            p.abort();
        }
    }

    /// A blob served by `Range` whose every response is cut after `cut` bytes: a flaky link
    /// on which each connection still gets somewhere.
    struct Cutting {
        data: Bytes,
        cut: usize,
    }

    impl PartSource for Cutting {
        fn open_part(
            &self,
            start: u64,
            end: u64,
        ) -> BoxFuture<'static, Result<Option<BoxStream<'static, io::Result<Bytes>>>>> {
            let asked = self.data.slice(start as usize..end as usize);
            let sent = asked.slice(..asked.len().min(self.cut));
            let mut body: Vec<io::Result<Bytes>> = vec![Ok(sent)];
            if asked.len() > self.cut {
                body.push(Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut")));
            }
            Box::pin(async move { Ok(Some(futures_util::stream::iter(body).boxed())) })
        }
    }

    /// Every cut comes after some bytes (more cuts in all than the retries allowed in a row):
    /// the segment resumes each time and the blob arrives whole.
    #[tokio::test]
    async fn a_segment_cut_again_and_again_completes_while_each_try_gets_somewhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (m, digest) = blob(1);
        let src = Arc::new(Cutting {
            data: m.data.clone(),
            cut: (SEG / 8) as usize,
        });
        let spool = Spool::create(
            dir.path().join("s"),
            &digest,
            SEG,
            SEG,
            Default::default(),
            None,
        )
        .expect("spool");
        let first = src.open_part(0, SEG).await.expect("first").expect("ranged");
        fill_all(&spool, src.clone(), first, 1)
            .await
            .expect("eight tries, each with bytes, fill the segment");
        let got = std::fs::read(dir.path().join("s")).expect("read the spool");
        assert_eq!(&got[..], &m.data[..]);
    }
}
