//! Downloading blobs from the source registries: one blob as a stream checked against its
//! digest and size, resumed with `Range` when the transfer is cut ([`download`]); a verified
//! stream written into the content-addressed cache ([`to_cache`]), which a re-run reuses once
//! each entry is checked again ([`check_cached`]); and the cache's housekeeping. Where the
//! bytes go next is the bundle sink's business (`bundle::sink`).

use crate::copy::Object;
use crate::digest::{Digest, Verifier, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::registry::retry::Budget;
use crate::registry::Registry;
use bytes::Bytes;
use futures_util::StreamExt;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Blobs larger than this do not go through the cache: they are downloaded (in parallel
/// parts where the registry allows) into a spool file the bundle writer reads and removes,
/// or streamed straight into the bundle.
pub const STREAM_THRESHOLD: u64 = 256 * 1024 * 1024;

/// The size above which blobs stream: `AIRLOCK_STREAM_OVER` (K/M/G suffixes) or 256 MiB.
pub fn stream_threshold() -> u64 {
    crate::options::stream_over(&crate::options::ProcessEnv, STREAM_THRESHOLD)
}

/// Whether a cache entry from an earlier run still holds exactly `o`; a damaged one is
/// removed (and then fetched again, like a missing one).
pub async fn check_cached(path: &Path, digest: &Digest, size: u64) -> bool {
    let p = path.to_path_buf();
    let digest = digest.clone();
    let intact = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&p)?;
        // `--jobs` of these run at once: a modest buffer each (64 KiB reads hash as fast).
        let mut r = VerifyingReader::new(BufReader::with_capacity(64 << 10, &f), &digest, size);
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

pub fn cache_path(cache: &Path, d: &Digest) -> PathBuf {
    cache.join("blobs/sha256").join(d.hex())
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
            what: o.at_source(),
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
                    .get_blob(self.o.repo(), &self.o.digest, seen, &mut self.budget)
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
                    self.budget.reached(verifier.seen());
                    if !self.budget.again(None).await {
                        return Err(Error::registry(
                            self.reg.name(),
                            format!(
                                "{}: download interrupted {} times in a row, last: {e}",
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

/// Writes a blob's verified stream (a `BlobSource`'s, which ends in an error when the content
/// does not match) into the cache: into `tmp/` first, renamed into place once complete.
pub async fn to_cache(
    mut body: futures_util::stream::BoxStream<'static, Result<Bytes>>,
    digest: &Digest,
    size: u64,
    cache: &Path,
) -> Result<PathBuf> {
    let dest = cache_path(cache, digest);
    let tmp = cache
        .join("tmp")
        .join(format!("{}.{}", digest.hex(), std::process::id()));
    // Listed for removal on SIGINT/SIGTERM until it is renamed into the cache.
    let mut file = crate::cleanup::create(&tmp)
        .map(tokio::fs::File::from_std)
        .ctx(|| format!("creating {}", tmp.display()))?;
    let result: Result<u64> = async {
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .ctx(|| format!("writing {}", tmp.display()))?;
        }
        file.flush()
            .await
            .ctx(|| format!("writing {}", tmp.display()))?;
        Ok(written)
    }
    .await;
    drop(file);
    match result {
        Ok(n) if n == size => {}
        Ok(n) => {
            crate::cleanup::remove(&tmp);
            return Err(Error::Integrity {
                what: format!("blob {digest}"),
                detail: format!("{n} bytes arrived, {size} expected"),
            });
        }
        Err(e) => {
            crate::cleanup::remove(&tmp);
            return Err(e);
        }
    }
    if let Err(e) = crate::cleanup::rename(&tmp, &dest) {
        crate::cleanup::remove(&tmp);
        return Err(Error::io(format!("moving {digest} into the cache"), e));
    }
    Ok(dest)
}
