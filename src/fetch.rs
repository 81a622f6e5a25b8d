//! Getting blobs from the source registries to the bundle writer, in bundle order, with as
//! few writes as possible: blobs up to 256 MiB go through the content-addressed cache, which
//! a re-run reuses, fetched ahead by `--jobs` workers; larger blobs stream straight from the
//! registry into the bundle (unless `--cache-all` sends every blob through the cache).
//! Every byte is checked against the blob's digest and size; a cut download resumes with a
//! `Range` request.

use crate::copy::Object;
use crate::digest::{Digest, Verifier, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::registry::retry::Budget;
use crate::registry::Registry;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use tokio::io::AsyncWriteExt;

/// Blobs larger than this are never fetched ahead into the cache: they stream into the
/// bundle when their turn comes (writing them to disk twice would cost more than it saves).
pub const STREAM_THRESHOLD: u64 = 256 * 1024 * 1024;
/// Chunks handed from a download to the writer.
const STREAM_CHUNK: usize = 256 * 1024;

/// The size above which blobs stream: `AIRLOCK_STREAM_OVER` (K/M/G suffixes) or 256 MiB.
pub fn stream_threshold() -> u64 {
    crate::options::stream_over(&crate::options::ProcessEnv, STREAM_THRESHOLD)
}

#[derive(Debug)]
enum Slot {
    Pending,
    /// In the cache from an earlier run, with the right size: checked against its digest
    /// before it is used (a damaged entry is removed and fetched again).
    Unverified(PathBuf),
    Prefetching,
    Ready {
        path: PathBuf,
        hit: bool,
    },
    Failed(String),
    Streaming,
    /// A prefetch worker is checking a cache entry.
    Checking,
}

/// What a prefetch worker took on.
enum Claim {
    Fetch(Object),
    Check(Object, PathBuf),
}

/// Whether a cache entry from an earlier run still holds exactly `o`; a damaged one is
/// removed (and then fetched again, like a missing one).
async fn check_cached(path: &Path, o: &Object) -> bool {
    let p = path.to_path_buf();
    let (digest, size) = (o.digest.clone(), o.size);
    let intact = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p)?;
        let mut r = VerifyingReader::new(BufReader::with_capacity(1 << 20, &f), &digest, size);
        io::copy(&mut r, &mut io::sink())?;
        // Used now: `cache prune --older-than` goes by this time.
        let _ = f.set_modified(std::time::SystemTime::now());
        Ok::<_, io::Error>(())
    })
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    if !intact {
        let _ = tokio::fs::remove_file(path).await;
    }
    intact
}

/// Removes what killed runs left in the cache's `tmp` directory: temporary files whose
/// process is gone (their names end in `.PID`) or that are older than a day. Returns how many.
pub fn clean_stale_temps(tmp_dir: &Path) -> usize {
    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let Ok(entries) = std::fs::read_dir(tmp_dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .rsplit_once('.')
            .and_then(|(_, p)| p.parse::<u32>().ok());
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > DAY);
        let orphan = match pid {
            Some(pid) if pid == me => false,
            Some(pid) => !process_alive(pid),
            None => false,
        };
        if (orphan || old) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this id exists (signal 0 probes without sending anything).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

struct State {
    slots: HashMap<Digest, Slot>,
    /// Remote objects in bundle order.
    order: Vec<Object>,
    /// Index in `order` of the blob the writer works on.
    writer_at: usize,
}

/// Where the writer reads a blob from.
pub enum Source {
    /// A verified file in the cache (`hit`: it was there before this run).
    Cached { path: PathBuf, hit: bool },
    /// A download in progress.
    Stream(StreamReader),
}

pub struct Supply {
    state: Mutex<State>,
    ready: Condvar,
    progress: tokio::sync::Notify,
    clients: HashMap<String, Arc<Registry>>,
    cache: PathBuf,
    handle: tokio::runtime::Handle,
    window: usize,
    /// Blobs larger than this stream into the bundle instead of going through the cache.
    stream_over: u64,
}

impl Supply {
    /// Prepares the supply for `objects` (inline manifests are ignored); blobs already in the
    /// cache with the right size are taken from there once their digest checks out.
    pub fn new(
        objects: &[Object],
        clients: HashMap<String, Arc<Registry>>,
        cache: &Path,
        jobs: usize,
        cache_all: bool,
    ) -> Arc<Supply> {
        let order: Vec<Object> = objects
            .iter()
            .filter(|o| o.inline.is_none())
            .cloned()
            .collect();
        let mut slots = HashMap::new();
        for o in &order {
            let path = cache_path(cache, &o.digest);
            let hit = std::fs::metadata(&path)
                .map(|m| m.len() == o.size)
                .unwrap_or(false);
            slots.insert(
                o.digest.clone(),
                if hit {
                    Slot::Unverified(path)
                } else {
                    Slot::Pending
                },
            );
        }
        Arc::new(Supply {
            state: Mutex::new(State {
                slots,
                order,
                writer_at: 0,
            }),
            ready: Condvar::new(),
            progress: tokio::sync::Notify::new(),
            clients,
            cache: cache.to_path_buf(),
            handle: tokio::runtime::Handle::current(),
            window: (jobs * 4).max(16),
            stream_over: if cache_all {
                u64::MAX
            } else {
                stream_threshold()
            },
        })
    }

    /// Starts `workers` tasks that fetch small blobs ahead of the writer into the cache.
    pub fn start_prefetch(self: &Arc<Self>, workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..workers)
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move { me.prefetch_worker().await })
            })
            .collect()
    }

    /// The next small pending blob (or cache entry to check) within the window ahead of the
    /// writer, marked as taken.
    fn claim_next(&self) -> Option<Option<Claim>> {
        let mut st = self.state.lock().ok()?;
        let limit = (st.writer_at + self.window).min(st.order.len());
        let start = st.writer_at.min(limit);
        if start >= st.order.len() {
            return None; // the writer is past everything: nothing left to do
        }
        let pick = st.order[start..limit]
            .iter()
            .find(|o| match st.slots.get(&o.digest) {
                Some(Slot::Pending) => o.size <= self.stream_over,
                Some(Slot::Unverified(_)) => true,
                _ => false,
            })
            .cloned();
        if let Some(o) = &pick {
            if let Some(Slot::Unverified(path)) = st.slots.get(&o.digest) {
                let path = path.clone();
                st.slots.insert(o.digest.clone(), Slot::Checking);
                return Some(Some(Claim::Check(o.clone(), path)));
            }
            st.slots.insert(o.digest.clone(), Slot::Prefetching);
        }
        Some(pick.map(Claim::Fetch))
    }

    async fn prefetch_worker(self: Arc<Self>) {
        loop {
            // Register for progress before looking, so a wake-up between the two is not lost.
            let notified = self.progress.notified();
            let o = match self.claim_next() {
                None => return,
                Some(None) => {
                    notified.await;
                    continue;
                }
                Some(Some(Claim::Fetch(o))) => o,
                Some(Some(Claim::Check(o, path))) => {
                    let intact = check_cached(&path, &o).await;
                    if let Ok(mut st) = self.state.lock() {
                        let slot = if intact {
                            Slot::Ready { path, hit: true }
                        } else {
                            Slot::Pending
                        };
                        st.slots.insert(o.digest.clone(), slot);
                    }
                    self.ready.notify_all();
                    self.progress.notify_waiters();
                    continue;
                }
            };
            let result = match self.clients.get(&o.registry) {
                Some(reg) => fetch_to_cache(reg, &o, &self.cache).await,
                None => Err(Error::Failed(format!("no registry for blob {}", o.digest))),
            };
            if let Ok(mut st) = self.state.lock() {
                let slot = match result {
                    Ok(path) => Slot::Ready { path, hit: false },
                    Err(e) => Slot::Failed(e.to_string()),
                };
                st.slots.insert(o.digest.clone(), slot);
            }
            self.ready.notify_all();
        }
    }

    /// Blocks until the writer can read `o` (call from a blocking thread, in bundle order).
    pub fn take(&self, o: &Object) -> Result<Source> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| Error::Failed("blob supply poisoned".into()))?;
        if let Some(i) = st.order.iter().position(|x| x.digest == o.digest) {
            st.writer_at = i;
        }
        self.progress.notify_waiters();
        loop {
            match st.slots.get(&o.digest) {
                Some(Slot::Ready { path, hit }) => {
                    return Ok(Source::Cached {
                        path: path.clone(),
                        hit: *hit,
                    })
                }
                Some(Slot::Failed(e)) => return Err(Error::Failed(e.clone())),
                Some(Slot::Unverified(path)) => {
                    let path = path.clone();
                    st.slots.insert(o.digest.clone(), Slot::Checking);
                    drop(st);
                    let intact = self.handle.block_on(check_cached(&path, o));
                    st = self
                        .state
                        .lock()
                        .map_err(|_| Error::Failed("blob supply poisoned".into()))?;
                    let slot = if intact {
                        Slot::Ready { path, hit: true }
                    } else {
                        Slot::Pending
                    };
                    st.slots.insert(o.digest.clone(), slot);
                }
                Some(Slot::Prefetching) | Some(Slot::Checking) => {
                    st = self
                        .ready
                        .wait(st)
                        .map_err(|_| Error::Failed("blob supply poisoned".into()))?;
                }
                Some(Slot::Pending) if o.size <= self.stream_over => {
                    // Nobody fetched it yet, and it is small enough for the cache: fetch it
                    // into the cache here, so a re-run finds it.
                    st.slots.insert(o.digest.clone(), Slot::Prefetching);
                    drop(st);
                    let result = match self.clients.get(&o.registry) {
                        Some(reg) => self.handle.block_on(fetch_to_cache(reg, o, &self.cache)),
                        None => Err(Error::Failed(format!("no registry for blob {}", o.digest))),
                    };
                    st = self
                        .state
                        .lock()
                        .map_err(|_| Error::Failed("blob supply poisoned".into()))?;
                    let slot = match result {
                        Ok(path) => Slot::Ready { path, hit: false },
                        Err(e) => Slot::Failed(e.to_string()),
                    };
                    st.slots.insert(o.digest.clone(), slot);
                }
                Some(Slot::Pending) => {
                    st.slots.insert(o.digest.clone(), Slot::Streaming);
                    break;
                }
                Some(Slot::Streaming) | None => {
                    return Err(Error::Failed(format!("blob {} requested twice", o.digest)))
                }
            }
        }
        drop(st);
        let reg = self
            .clients
            .get(&o.registry)
            .cloned()
            .ok_or_else(|| Error::Failed(format!("no registry for blob {}", o.digest)))?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let obj = o.clone();
        self.handle.spawn(async move { pump(&reg, &obj, tx).await });
        Ok(Source::Stream(StreamReader {
            rx,
            current: Bytes::new(),
            done: false,
            what: format!("blob {} from {}/{}", o.digest, o.registry, o.repo),
        }))
    }

    /// Stops the prefetchers (the writer is done or failed).
    pub fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.writer_at = st.order.len();
        }
        self.progress.notify_waiters();
    }
}

/// Opens a source as a reader that fails unless the content matches digest and size. A
/// cached file is hashed as it is read; a stream was hashed by its download.
pub fn open(source: Source, o: &Object) -> Result<Box<dyn Read + Send>> {
    Ok(match source {
        Source::Cached { path, .. } => {
            let f = std::fs::File::open(&path).ctx(|| format!("opening {}", path.display()))?;
            Box::new(VerifyingReader::new(
                BufReader::with_capacity(1 << 20, f),
                &o.digest,
                o.size,
            ))
        }
        Source::Stream(s) => Box::new(s),
    })
}

pub fn cache_path(cache: &Path, d: &Digest) -> PathBuf {
    cache.join("blobs/sha256").join(d.hex())
}

enum Msg {
    Data(Bytes),
    /// Everything was sent and matched the digest and size.
    Done,
    Fail(String),
}

/// The writer's end of a streaming download.
pub struct StreamReader {
    rx: tokio::sync::mpsc::Receiver<Msg>,
    current: Bytes,
    done: bool,
    what: String,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.current = b,
                Some(Msg::Done) => self.done = true,
                Some(Msg::Fail(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                None => {
                    return Err(io::Error::other(format!(
                        "{}: the download ended unexpectedly",
                        self.what
                    )))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// What a download step gave.
enum Step {
    /// The next verified-so-far bytes.
    Data(Bytes),
    /// The registry ignored the `Range` of a resumed download: what came before is void.
    Restarted,
    /// Everything arrived and matched the digest and size.
    End,
}

/// One blob download: streams the body, checks every byte against the digest and size, and
/// resumes a cut or stalled transfer with a `Range` request. The download is one operation
/// with one retry budget, shared by its requests and its resumes.
struct Download<'a> {
    reg: &'a Registry,
    o: &'a Object,
    what: String,
    verifier: Option<Verifier>,
    budget: Budget,
    body: Option<futures_util::stream::BoxStream<'static, io::Result<Bytes>>>,
}

impl<'a> Download<'a> {
    fn new(reg: &'a Registry, o: &'a Object) -> Download<'a> {
        Download {
            reg,
            o,
            what: format!("blob {} of {}/{}", o.digest, reg.name(), o.repo),
            verifier: Some(Verifier::new(&o.digest, o.size)),
            budget: Budget::new(reg.retry_policy()),
            body: None,
        }
    }

    async fn next(&mut self) -> Result<Step> {
        loop {
            let Some(verifier) = self.verifier.as_mut() else {
                return Ok(Step::End);
            };
            let Some(body) = self.body.as_mut() else {
                let seen = verifier.seen();
                let dl = self
                    .reg
                    .get_blob(&self.o.repo, &self.o.digest, seen, &mut self.budget)
                    .await
                    .map_err(|e| e.about(&self.what))?;
                let start = dl.start;
                self.body = Some(dl.body);
                if start != seen {
                    *verifier = Verifier::new(&self.o.digest, self.o.size);
                    return Ok(Step::Restarted);
                }
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    verifier.update(&chunk).map_err(|e| Error::Integrity {
                        what: self.what.clone(),
                        detail: e.to_string(),
                    })?;
                    return Ok(Step::Data(chunk));
                }
                Some(Err(e)) => {
                    self.body = None;
                    if !self.budget.again(None).await {
                        return Err(Error::registry(
                            self.reg.name(),
                            format!(
                                "{}: download interrupted {} times, last: {e}",
                                self.what,
                                self.budget.failures()
                            ),
                        ));
                    }
                }
                None => {
                    if let Some(v) = self.verifier.take() {
                        v.finish()?;
                    }
                    return Ok(Step::End);
                }
            }
        }
    }
}

/// Streams a blob from its source registry from `offset` on (`copy`): the whole blob is
/// downloaded and checked against its digest and size (the bytes before `offset` are only
/// hashed); a cut transfer resumes with `Range`, and bytes sent again after a restart are not
/// handed on twice. The stream's last item is an error when the content does not match.
pub fn download(
    reg: Arc<Registry>,
    o: Object,
    offset: u64,
) -> futures_util::stream::BoxStream<'static, Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut dl = Download::new(&reg, &o);
        // `pos`: where this pass of the download is; `next_out`: the first byte not handed on.
        let (mut pos, mut next_out) = (0u64, offset);
        loop {
            match dl.next().await {
                Ok(Step::Data(c)) => {
                    let start = pos;
                    pos += c.len() as u64;
                    if pos <= next_out {
                        continue;
                    }
                    let chunk = c.slice(next_out.saturating_sub(start) as usize..);
                    next_out = pos;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(Step::Restarted) => pos = 0,
                Ok(Step::End) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
        .boxed()
}

/// Downloads a blob into a channel for the writer. Bytes already handed over cannot be taken
/// back, so a registry that cannot resume a cut transfer is an error here.
async fn pump(reg: &Registry, o: &Object, tx: tokio::sync::mpsc::Sender<Msg>) {
    let mut dl = Download::new(reg, o);
    let mut buf = BytesMut::with_capacity(STREAM_CHUNK);
    let mut sent = false;
    loop {
        let msg = match dl.next().await {
            Ok(Step::Data(c)) => {
                buf.extend_from_slice(&c);
                if buf.len() < STREAM_CHUNK {
                    continue;
                }
                sent = true;
                Msg::Data(buf.split().freeze())
            }
            Ok(Step::Restarted) if !sent => {
                buf.clear();
                continue;
            }
            Ok(Step::Restarted) => Msg::Fail(format!(
                "{}: the download was cut and the registry cannot resume it (no Range support)",
                dl.what
            )),
            Ok(Step::End) => {
                if !buf.is_empty() && tx.send(Msg::Data(buf.split().freeze())).await.is_err() {
                    return;
                }
                Msg::Done
            }
            Err(e) => Msg::Fail(e.to_string()),
        };
        let last = !matches!(msg, Msg::Data(_));
        if tx.send(msg).await.is_err() || last {
            return; // the writer gave up, or we are done
        }
    }
}

/// Downloads a blob into the cache; verifies digest and size before renaming it into place.
pub async fn fetch_to_cache(reg: &Registry, o: &Object, cache: &Path) -> Result<PathBuf> {
    let dest = cache_path(cache, &o.digest);
    let tmp = cache
        .join("tmp")
        .join(format!("{}.{}", o.digest.hex(), std::process::id()));
    // Listed for removal on SIGINT/SIGTERM until it is renamed into the cache.
    let create = || async {
        crate::cleanup::create(&tmp)
            .map(tokio::fs::File::from_std)
            .ctx(|| format!("creating {}", tmp.display()))
    };
    let mut file = create().await?;
    let mut dl = Download::new(reg, o);
    let result: Result<()> = async {
        loop {
            match dl.next().await? {
                Step::Data(c) => file
                    .write_all(&c)
                    .await
                    .ctx(|| format!("writing {}", tmp.display()))?,
                Step::Restarted => file = create().await?,
                Step::End => break,
            }
        }
        file.flush()
            .await
            .ctx(|| format!("writing {}", tmp.display()))
    }
    .await;
    drop(file);
    if let Err(e) = result {
        crate::cleanup::remove(&tmp);
        return Err(e);
    }
    if let Err(e) = crate::cleanup::rename(&tmp, &dest) {
        crate::cleanup::remove(&tmp);
        return Err(Error::io(format!("moving {} into the cache", o.digest), e));
    }
    Ok(dest)
}
