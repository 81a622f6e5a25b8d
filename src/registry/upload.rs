//! Writing blobs: cross-repository mounts and uploads that every registry accepts.
//!
//! An upload opens a session (`POST`). A blob of up to 5 MiB goes in one `PUT ?digest=` with
//! the body (two requests, where chunks take three). A larger one goes in `PATCH` chunks with
//! `Content-Range` (64 MiB by default, `AIRLOCK_CHUNK_SIZE`, never under 5 MiB but the last,
//! raised to the registry's `OCI-Chunk-Min-Length`) and is committed with a `PUT ?digest=`
//! without a body. A registry that refuses `PATCH` (Google's) gets one monolithic `PUT` with
//! the body for every blob instead; a registry that refuses a `PUT` with a body
//! (Artifactory) gets chunks for every blob; each refusal is met once and remembered for that
//! registry. A request refused with `413` (a proxy's body limit, nginx's
//! `client_max_body_size`) lowers the largest request body for that registry to the power of
//! two below it, down to 64 KiB: blobs over it go in chunks that size. A cut chunk resumes from the offset the registry reports
//! (`GET` on the session) instead of from byte 0. A mount answered 202 continues in the session
//! it opened; one answered 401/403/404/405 falls back to an upload. A session given up on is
//! cancelled with `DELETE`. The whole upload is one operation with one retry budget.

use super::retry::{retryable_status, Budget};
use super::transport::{send_watched, Activity, SendError};
use super::{On401, Registry, Scope};
use crate::digest::Digest;
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Response, StatusCode, Url};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// What a cross-repository mount did.
pub enum MountResult {
    Mounted,
    /// The registry did not mount; an upload session was opened at this location instead.
    Upload(Url),
    /// The registry refused (401, 403, 404, 405): upload it.
    NotMounted,
}

/// Where an upload reads the blob from; it must be re-readable from any offset.
pub trait BlobSource: Send + Sync {
    /// The blob's bytes from `offset` to its end. An error in the stream is a content or
    /// local failure (digest mismatch, damaged bundle): it ends the upload, never retried.
    fn open(&self, offset: u64) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// Whether the blob can also be read in parts, each on a connection of its own (a source
    /// registry that honours `Range`): the parts reader, or `None` (read it with `open`).
    fn parts(&self) -> Option<Arc<dyn PartSource>> {
        None
    }
}

/// Reads parts of one blob, each on its own connection.
pub trait PartSource: Send + Sync {
    /// Bytes `start..end` of the blob, unchecked (the reader checks the whole blob against its
    /// digest); `Ok(None)` when the source answers with the whole blob instead.
    fn open_part(
        &self,
        start: u64,
        end: u64,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<Option<BoxStream<'static, std::io::Result<Bytes>>>>,
    >;
}

const MODE_UNKNOWN: u8 = 0;
const MODE_CHUNKED: u8 = 1;
const MODE_MONOLITHIC: u8 = 2;

/// Whether the registry takes a `PUT ?digest=` carrying the blob (`put_body`).
const BODY_UNKNOWN: u8 = 0;
const BODY_TAKEN: u8 = 1;
const BODY_REFUSED: u8 = 2;

/// The largest blob sent in one `PUT` with its body: below the smallest chunk, chunks buy
/// nothing (no resume point), and a cut PUT sends at most this much again.
pub const ONE_PUT_MAX: u64 = MIN_CHUNK;

/// The smallest chunk but the last (ECR's limit).
pub const MIN_CHUNK: u64 = 5 * 1024 * 1024;
/// The smallest request body a `413` may bring the chunks down to; a refusal of a request
/// this small or smaller is an error.
pub const MIN_BODY: u64 = 64 * 1024;

/// The chunk size when `AIRLOCK_CHUNK_SIZE` does not say.
pub const DEFAULT_CHUNK: u64 = crate::options::DEFAULT_CHUNK_SIZE;

/// The chunk size: `AIRLOCK_CHUNK_SIZE` or 64 MiB, at least 5 MiB, at least what the
/// registry asked for.
fn chunk_size(registry_min: u64) -> u64 {
    crate::options::chunk_size(&crate::options::ProcessEnv)
        .max(MIN_CHUNK)
        .max(registry_min)
}

/// An open upload session.
struct Session {
    url: Url,
    /// Bytes the registry holds.
    offset: u64,
    /// False after a failure: ask the registry where it stands before sending more.
    known: bool,
    /// `OCI-Chunk-Min-Length` from the registry.
    min_chunk: u64,
}

/// How one try of an upload ended.
enum Outcome {
    /// Worth another try (the session is kept and asked where it stands).
    Again(String, Option<Duration>),
    /// The registry refuses PATCH: upload in one PUT instead.
    NoChunks,
    /// The registry refuses a PUT carrying the blob: upload in chunks instead.
    NoBody,
    /// A request carrying this many bytes was refused with `413`: send smaller ones.
    TooLarge(u64),
    Fatal(Error),
}

impl From<Error> for Outcome {
    /// A failure that may pass (a token endpoint that broke, a budget a request spent) is
    /// judged by the upload's own budget; anything else ends the upload.
    fn from(e: Error) -> Self {
        match e {
            Error::Transient {
                detail,
                retry_after,
                ..
            } => Outcome::Again(detail, retry_after),
            e => Outcome::Fatal(e),
        }
    }
}

/// The first content error a body stream met, kept so a failed request can tell "the
/// network broke" from "the blob is bad".
type SourceError = Arc<Mutex<Option<Error>>>;

fn take_source_error(slot: &SourceError) -> Option<Error> {
    match slot.lock() {
        Ok(mut g) => g.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

struct Shared {
    inner: BoxStream<'static, Result<Bytes>>,
    leftover: Bytes,
}

/// One request body: the next `remaining` bytes of a blob stream shared by the chunks of one
/// upload, so a large blob is read once, not once per chunk.
struct ChunkBody {
    shared: Arc<Mutex<Shared>>,
    remaining: u64,
    /// The blob's last chunk: its final bytes go out only when the source has ended too, so
    /// that the source's verdict on the content (checked at its end) is heard first.
    last: bool,
    /// The source has ended (checked before the last bytes go out).
    ended: bool,
    activity: Activity,
    error: SourceError,
}

impl ChunkBody {
    fn fail(&self, e: Error) -> Poll<Option<std::io::Result<Bytes>>> {
        let msg = e.to_string();
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        Poll::Ready(Some(Err(std::io::Error::other(msg))))
    }
}

impl Stream for ChunkBody {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = self.shared.clone();
        let mut s = match shared.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if s.leftover.is_empty() {
            match s.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(b))) => s.leftover = b,
                Poll::Ready(Some(Err(e))) => return self.fail(e),
                Poll::Ready(None) => {
                    return self.fail(Error::Failed(
                        "the blob ended before its declared size".into(),
                    ))
                }
            }
        }
        let n = (self.remaining as usize).min(s.leftover.len());
        if self.last && n as u64 == self.remaining && !self.ended {
            // The final bytes wait until the source has ended and vouched for the content:
            // the connection stops polling a body once its Content-Length has been sent.
            if s.leftover.len() > n {
                return self.fail(Error::Failed(
                    "the blob is longer than its declared size".into(),
                ));
            }
            match s.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Ok(b))) if b.is_empty() => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(_))) => {
                    return self.fail(Error::Failed(
                        "the blob is longer than its declared size".into(),
                    ))
                }
                Poll::Ready(Some(Err(e))) => return self.fail(e),
            }
        }
        let out = s.leftover.split_to(n);
        drop(s);
        self.remaining -= n as u64;
        self.activity.sent(n as u64);
        Poll::Ready(Some(Ok(out)))
    }
}

fn body_of(
    shared: &Arc<Mutex<Shared>>,
    len: u64,
    last: bool,
    activity: &Activity,
    error: &SourceError,
) -> reqwest::Body {
    reqwest::Body::wrap_stream(ChunkBody {
        shared: shared.clone(),
        remaining: len,
        last,
        ended: false,
        activity: activity.clone(),
        error: error.clone(),
    })
}

/// The end of `Range: 0-N` as the next offset (N+1). `0-0` is read as nothing held: the
/// distribution registry says `0-0` for an empty session.
fn offset_from_range(resp: &Response) -> Option<u64> {
    held_until(resp.headers().get("range")?.to_str().ok()?)
}

/// The next offset from an upload status `Range: 0-N` header value.
fn held_until(v: &str) -> Option<u64> {
    let v = v.trim().trim_start_matches("bytes=");
    let (start, end) = v.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if start != 0 {
        return None;
    }
    Some(if end == 0 { 0 } else { end + 1 })
}

/// The largest power of two under `n` (`n` > 1).
fn power_of_two_below(n: u64) -> u64 {
    1u64 << (63 - (n.max(2) - 1).leading_zeros())
}

/// Does an error answer mean "this registry does not take PATCH uploads"?
fn refuses_chunks(status: StatusCode, body: &[u8]) -> bool {
    matches!(status.as_u16(), 405 | 501)
        || (status == StatusCode::BAD_REQUEST
            && super::error_codes(body).iter().any(|c| c == "UNSUPPORTED"))
}

/// May an error answer to a `PUT` carrying the blob mean "this registry takes no body on a
/// PUT"? Not when it says the digest or size is wrong: that is the content's fault. Not a
/// `413` either: that is a limit on the body's size (chunks of a size it takes).
fn may_refuse_body(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 405 | 415 | 501)
}

/// Does an error answer to a `PUT` carrying the blob (see [`may_refuse_body`]) say the
/// registry refuses the body itself rather than this blob?
fn refuses_body(body: &[u8]) -> bool {
    !super::error_codes(body)
        .iter()
        .any(|c| c == "DIGEST_INVALID" || c == "SIZE_INVALID")
}

impl Registry {
    /// Asks the registry to mount `digest` from repository `from` into `repo`.
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<MountResult> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest.text().as_str())
            .append_pair("from", from);
        let resp = self
            .send_in(
                &Scope::mount(repo, from),
                || Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0")),
                &mut Budget::new(&self.retry),
                On401::Return,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountResult::Mounted),
            StatusCode::ACCEPTED => Ok(MountResult::Upload(self.location(&resp)?)),
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED => Ok(MountResult::NotMounted),
            _ => Err(self
                .unexpected(&format!("mounting blob {digest} into {repo}"), resp)
                .await),
        }
    }

    /// Uploads a blob of `size` bytes from `source` into `repo`, in `session` when a refused
    /// mount already opened one.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        session: Option<Url>,
    ) -> Result<()> {
        let what = format!("uploading blob {digest} to {}/{repo}", self.name);
        let mut budget = Budget::new(&self.retry);
        let mut session = session.map(|url| Session {
            url,
            offset: 0,
            known: true,
            min_chunk: 0,
        });
        loop {
            let outcome = self
                .try_upload(repo, digest, size, source, &mut session, &mut budget, &what)
                .await;
            let (why, retry_after) = match outcome {
                Ok(()) => return Ok(()),
                Err(Outcome::Again(why, ra)) => (why, ra),
                Err(Outcome::NoChunks) => {
                    // Remembered: this and every later upload go in one PUT.
                    self.upload_mode.store(MODE_MONOLITHIC, Ordering::Relaxed);
                    continue;
                }
                Err(Outcome::NoBody) => {
                    // Remembered: this and every later upload go in chunks, in a new session.
                    self.put_body.store(BODY_REFUSED, Ordering::Relaxed);
                    self.cancel(repo, session.take()).await;
                    continue;
                }
                Err(Outcome::TooLarge(bytes)) => {
                    // Remembered: every later request carries at most a power of two below
                    // `bytes` (which is over MIN_BODY), so this ends. The session stands
                    // where it stood: ask it.
                    self.body_max
                        .fetch_min(power_of_two_below(bytes), Ordering::Relaxed);
                    if let Some(s) = session.as_mut() {
                        s.known = false;
                    }
                    continue;
                }
                Err(Outcome::Fatal(e)) => {
                    self.cancel(repo, session.take()).await;
                    return self.landed_after_all(repo, digest, size, e).await;
                }
            };
            // A PUT that carried the whole blob and got no answer it could read (a proxy's
            // 504, a cut) may have gone through: ask before sending it all again.
            if session.as_ref().is_some_and(|s| s.offset == u64::MAX)
                && self.holds_whole(repo, digest, size).await
            {
                return Ok(());
            }
            // What the registry holds (a session a PUT used up holds nothing to go on from).
            budget.reached(
                session
                    .as_ref()
                    .filter(|s| s.offset != u64::MAX)
                    .map_or(0, |s| s.offset),
            );
            if !budget.again(retry_after).await {
                self.cancel(repo, session.take()).await;
                let e = self.gave_up(format!("{what}: {why}"), &budget);
                return self.landed_after_all(repo, digest, size, e).await;
            }
            if let Some(s) = session.as_mut() {
                s.known = false;
            }
        }
    }

    /// Before an upload is given up: a commit whose answer was lost (a proxy's timeout while
    /// object storage assembled a large blob, a cut connection) may have gone through, and its
    /// retry then finds the session spent. The registry checked the digest when it took the
    /// blob: one that has it, at its size, has it whole.
    async fn landed_after_all(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        failure: Error,
    ) -> Result<()> {
        // A failure of the blob's source (a damaged bundle) is told as it is.
        if !matches!(
            failure,
            Error::Registry { .. } | Error::Transient { .. } | Error::NotFound { .. }
        ) {
            return Err(failure);
        }
        if self.holds_whole(repo, digest, size).await {
            Ok(())
        } else {
            Err(failure)
        }
    }

    /// Whether `repo` has the blob at its size (the registry checked its digest when it took
    /// it; a size it does not tell is taken as the blob's).
    async fn holds_whole(&self, repo: &str, digest: &Digest, size: u64) -> bool {
        matches!(
            self.blob_exists(repo, digest, &Scope::push(repo)).await,
            Ok(Some(n)) if n == size || n == 0
        )
    }

    /// Opens an upload session.
    async fn start_session(&self, repo: &str, budget: &mut Budget, what: &str) -> Result<Session> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .send_in(
                &Scope::push(repo),
                || Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0")),
                budget,
                On401::Fail,
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.push_refused(what, repo, resp).await);
        }
        let min_chunk = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok(Session {
            url: self.location(&resp)?,
            offset: 0,
            known: true,
            min_chunk,
        })
    }

    /// Asks the registry how much of a session it holds (`GET` on the session). `None`
    /// when the session is gone.
    async fn session_status(
        &self,
        repo: &str,
        s: &Session,
        budget: &mut Budget,
    ) -> std::result::Result<Option<(Url, u64)>, Outcome> {
        let resp = self
            .send_in(
                &Scope::push(repo),
                || Ok(self.http.get(s.url.clone())),
                budget,
                On401::Fail,
            )
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::ACCEPTED => {
                let url = if resp.headers().contains_key(reqwest::header::LOCATION) {
                    self.location(&resp)?
                } else {
                    s.url.clone()
                };
                Ok(offset_from_range(&resp).map(|o| (url, o)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Outcome::Fatal(
                self.unexpected("asking the state of an upload", resp).await,
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_upload(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        session: &mut Option<Session>,
        budget: &mut Budget,
        what: &str,
    ) -> std::result::Result<(), Outcome> {
        if let Some(s) = session.as_mut() {
            if !s.known {
                match self.session_status(repo, s, budget).await? {
                    Some((url, offset)) if offset <= size => {
                        s.url = url;
                        s.offset = offset;
                        s.known = true;
                    }
                    // Gone, or a state we cannot read: start again.
                    _ => {
                        let old = session.take();
                        self.cancel(repo, old).await;
                    }
                }
            }
        }
        if session.is_none() {
            *session = Some(self.start_session(repo, budget, what).await?);
        }
        let Some(s) = session.as_mut() else {
            return Err(Outcome::Fatal(Error::Failed(format!(
                "{what}: no upload session"
            ))));
        };
        let mode = self.upload_mode.load(Ordering::Relaxed);
        let body = self.put_body.load(Ordering::Relaxed);
        let one_put_max = ONE_PUT_MAX.min(self.body_max());
        if mode == MODE_MONOLITHIC || (size <= one_put_max && body != BODY_REFUSED) {
            // One PUT with the whole body, from the start of a fresh session.
            if s.offset != 0 {
                let old = session.take();
                self.cancel(repo, old).await;
                *session = Some(self.start_session(repo, budget, what).await?);
            }
            let Some(s) = session.as_mut() else {
                return Err(Outcome::Fatal(Error::Failed(format!(
                    "{what}: no upload session"
                ))));
            };
            // A refusal may still be met (once) unless PUT is all this registry takes.
            let may_refuse = mode != MODE_MONOLITHIC && body == BODY_UNKNOWN;
            self.put_whole(repo, digest, size, source, s, may_refuse, what)
                .await?;
            self.put_body.store(BODY_TAKEN, Ordering::Relaxed);
            return Ok(());
        }
        self.patch_chunks(repo, size, source, s, what).await?;
        if mode == MODE_UNKNOWN {
            self.upload_mode.store(MODE_CHUNKED, Ordering::Relaxed);
        }
        // Commit: a PUT without a body, replayable.
        let mut put = s.url.clone();
        put.query_pairs_mut()
            .append_pair("digest", digest.text().as_str());
        let resp = self
            .send_in(
                &Scope::push(repo),
                || Ok(self.http.put(put.clone()).header(CONTENT_LENGTH, "0")),
                budget,
                On401::Fail,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Outcome::Fatal(self.push_refused(what, repo, resp).await));
        }
        Ok(())
    }

    /// Sends the blob from `s.offset` in PATCH chunks.
    async fn patch_chunks(
        &self,
        repo: &str,
        size: u64,
        source: &dyn BlobSource,
        s: &mut Session,
        what: &str,
    ) -> std::result::Result<(), Outcome> {
        let chunk = chunk_size(s.min_chunk).min(self.body_max());
        let error: SourceError = Arc::default();
        let scope = Scope::push(repo);
        let mut shared: Option<(Arc<Mutex<Shared>>, u64)> = None;
        while s.offset < size {
            let len = chunk.min(size - s.offset);
            // (Re)open the source where the registry stands; a stream positioned there is
            // reused from one chunk to the next.
            let stream = match &shared {
                Some((sh, pos)) if *pos == s.offset => sh.clone(),
                _ => Arc::new(Mutex::new(Shared {
                    inner: source.open(s.offset)?,
                    leftover: Bytes::new(),
                })),
            };
            shared = Some((stream.clone(), s.offset + len));
            let auth = self.authorization(&scope, None).await?;
            let activity = Activity::new();
            let req = self
                .http
                .patch(s.url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len.to_string())
                .header(
                    "content-range",
                    format!("{}-{}", s.offset, s.offset + len - 1),
                )
                .body(body_of(
                    &stream,
                    len,
                    s.offset + len == size,
                    &activity,
                    &error,
                ));
            let (req, _) = self.authorized(req, auth.as_deref())?;
            let sent = send_watched(req, self.retry.idle_timeout, &activity).await;
            if let Some(e) = take_source_error(&error) {
                return Err(Outcome::Fatal(e));
            }
            let resp = match sent {
                Ok(r) => r,
                Err(e @ (SendError::Http(_) | SendError::Stalled(_))) => {
                    return Err(Outcome::Again(e.to_string(), None))
                }
            };
            let status = resp.status();
            match status {
                StatusCode::ACCEPTED | StatusCode::NO_CONTENT | StatusCode::CREATED => {
                    let expected = s.offset + len;
                    if resp.headers().contains_key(reqwest::header::LOCATION) {
                        s.url = self.location(&resp)?;
                    }
                    s.offset = offset_from_range(&resp)
                        .filter(|o| *o != 0)
                        .unwrap_or(expected);
                }
                StatusCode::UNAUTHORIZED => {
                    // A token that lapsed mid-upload: refresh it and resume.
                    self.authorization(&scope, auth.as_deref()).await?;
                    return Err(Outcome::Again(format!("PATCH answered {status}"), None));
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    return Err(Outcome::Again(
                        "the registry holds a different part of the blob".into(),
                        None,
                    ))
                }
                s_ if retryable_status(s_) => {
                    let ra = super::retry_after(&resp);
                    return Err(Outcome::Again(format!("PATCH answered {status}"), ra));
                }
                StatusCode::PAYLOAD_TOO_LARGE => {
                    let said = super::error_messages(&self.error_body(resp).await);
                    return Err(self.too_large(what, "PATCH", len, &said));
                }
                _ => {
                    let body = self.error_body(resp).await;
                    if refuses_chunks(status, &body)
                        && self.upload_mode.load(Ordering::Relaxed) == MODE_UNKNOWN
                    {
                        return Err(Outcome::NoChunks);
                    }
                    return Err(self.refused(what, "PATCH", status, &body));
                }
            }
        }
        Ok(())
    }

    /// A request carrying `bytes` answered `413` (the registry saying `said`): go on with
    /// smaller ones, unless it was small already.
    fn too_large(&self, what: &str, request: &str, bytes: u64, said: &str) -> Outcome {
        if bytes > MIN_BODY {
            return Outcome::TooLarge(bytes);
        }
        // No size works: the error says so, not a note on chunk sizes.
        self.body_max.store(0, Ordering::Relaxed);
        Outcome::Fatal(Error::registry(
            &self.name,
            format!("{what}: {request} {}", super::too_large(Some(bytes), said)),
        ))
    }

    /// The largest request body to send this registry: what `413`s left, never under
    /// `MIN_BODY` (0, "no size works", is left by a refusal at `MIN_BODY`: that upload failed).
    fn body_max(&self) -> u64 {
        self.body_max.load(Ordering::Relaxed).max(MIN_BODY)
    }

    /// The largest request body this registry takes when a `413` said so (see
    /// [`Registry::upload_blob`]), for a note to the user: uploads over it went in smaller
    /// chunks.
    pub fn body_limit(&self) -> Option<u64> {
        let max = self.body_max.load(Ordering::Relaxed);
        (max != u64::MAX && max != 0).then_some(max)
    }

    /// A request of an upload refused for good: the registry's status and what it said.
    fn refused(&self, what: &str, request: &str, status: StatusCode, body: &[u8]) -> Outcome {
        Outcome::Fatal(Error::registry(
            &self.name,
            format!(
                "{what}: {request} answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ),
        ))
    }

    /// A monolithic upload: `PUT ?digest=` carrying the whole blob. With `may_refuse`, an
    /// answer saying the registry takes no body on a PUT is `NoBody` (go on in chunks).
    #[allow(clippy::too_many_arguments)]
    async fn put_whole(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        s: &mut Session,
        may_refuse: bool,
        what: &str,
    ) -> std::result::Result<(), Outcome> {
        let scope = Scope::push(repo);
        let error: SourceError = Arc::default();
        let stream = Arc::new(Mutex::new(Shared {
            inner: source.open(0)?,
            leftover: Bytes::new(),
        }));
        let mut put = s.url.clone();
        put.query_pairs_mut()
            .append_pair("digest", digest.text().as_str());
        let auth = self.authorization(&scope, None).await?;
        let activity = Activity::new();
        let req = self
            .http
            .put(put)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size.to_string())
            .body(body_of(&stream, size, true, &activity, &error));
        let (req, _) = self.authorized(req, auth.as_deref())?;
        let sent = send_watched(req, self.retry.idle_timeout, &activity).await;
        if let Some(e) = take_source_error(&error) {
            return Err(Outcome::Fatal(e));
        }
        // Whatever happens next, this session has been used up.
        s.offset = u64::MAX;
        s.known = false;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Err(Outcome::Again(e.to_string(), None)),
        };
        let status = resp.status();
        if status == StatusCode::CREATED {
            return Ok(());
        }
        if status == StatusCode::UNAUTHORIZED {
            self.authorization(&scope, auth.as_deref()).await?;
            return Err(Outcome::Again(format!("PUT answered {status}"), None));
        }
        if retryable_status(status) {
            let ra = super::retry_after(&resp);
            return Err(Outcome::Again(format!("PUT answered {status}"), ra));
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let said = super::error_messages(&self.error_body(resp).await);
            if self.upload_mode.load(Ordering::Relaxed) == MODE_MONOLITHIC {
                return Err(Outcome::Fatal(Error::registry(
                    &self.name,
                    format!(
                        "{what}: PUT {} (and the registry refuses chunked uploads)",
                        super::too_large(Some(size), &said)
                    ),
                )));
            }
            return Err(self.too_large(what, "PUT", size, &said));
        }
        if may_refuse && may_refuse_body(status) {
            let body = self.error_body(resp).await;
            if refuses_body(&body) {
                return Err(Outcome::NoBody);
            }
            return Err(self.refused(what, "PUT", status, &body));
        }
        let e = self.push_refused(what, repo, resp).await;
        if self.upload_mode.load(Ordering::Relaxed) != MODE_MONOLITHIC {
            return Err(Outcome::Fatal(e));
        }
        Err(Outcome::Fatal(Error::registry(
            &self.name,
            format!(
                "{} (the registry refused chunked uploads too)",
                e.to_string()
                    .strip_prefix(&format!("registry {}: ", self.name))
                    .unwrap_or(&e.to_string())
            ),
        )))
    }

    /// Cancels a session given up on (best effort, one try, with the token we hold).
    async fn cancel(&self, repo: &str, session: Option<Session>) {
        let Some(s) = session else { return };
        let auth = self
            .authorization(&Scope::push(repo), None)
            .await
            .ok()
            .flatten();
        let Ok((req, _)) = self.authorized(self.http.delete(s.url), auth.as_deref()) else {
            return;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), req.send()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testserver::{plain, Answer, TestServer};
    use super::*;

    struct Memory(Vec<u8>);

    impl BlobSource for Memory {
        fn open(&self, offset: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
            let rest = Bytes::copy_from_slice(&self.0[offset as usize..]);
            Ok(futures_util::stream::iter(vec![Ok(rest)]).boxed())
        }
    }

    /// Blobs just over the one-PUT size, so that they go in chunks unless PATCH is refused.
    fn large(fill: u8) -> Vec<u8> {
        vec![fill; ONE_PUT_MAX as usize + 1]
    }

    async fn upload_all(reg: &Registry, contents: &[Vec<u8>]) {
        for content in contents {
            let d = Digest::of(content);
            reg.upload_blob(
                "r",
                &d,
                content.len() as u64,
                &Memory(content.clone()),
                None,
            )
            .await
            .expect("upload");
        }
    }

    /// An upload session on another origin (here `localhost` for a registry reached as
    /// `127.0.0.1`, a host the registry named in `Location`) gets no credentials: they go to
    /// the registry's own origin only.
    #[tokio::test]
    async fn an_upload_location_on_another_origin_gets_no_credentials() {
        let server = TestServer::start_knowing_port(move |r, port| {
            let authed = r.headers.contains_key("authorization");
            match (r.method.as_str(), r.path.as_str()) {
                ("GET", "/v2/") if !authed => {
                    Answer::new(401).header("www-authenticate", "Basic realm=\"r\"")
                }
                ("GET", "/v2/") => Answer::new(200),
                ("POST", _) => Answer::new(202).header(
                    "location",
                    &format!("http://localhost:{port}/upload/s1?state=x"),
                ),
                ("PUT", p) if p.starts_with("/upload/s1?state=x&digest=") => Answer::new(201),
                (m, p) => Answer::new(400).body(format!("unexpected {m} {p}")),
            }
        });
        let creds = crate::credentials::Credentials::new("robot", "s3cret");
        let reg = plain(&server.addr, Some(creds)).await;
        upload_all(&reg, &[b"a small blob".to_vec()]).await;
        let seen = server.seen();
        let post = seen.iter().find(|r| r.method == "POST").expect("a POST");
        assert!(
            post.headers.contains_key("authorization"),
            "the registry's own origin gets the credentials"
        );
        let put = seen.iter().find(|r| r.method == "PUT").expect("a PUT");
        assert!(
            !put.headers.contains_key("authorization"),
            "credentials were sent to another origin: {:?}",
            put.headers
        );
    }

    #[tokio::test]
    async fn a_registry_refusing_patch_gets_monolithic_puts_and_that_is_remembered() {
        let server = TestServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v2/") => Answer::new(200),
            ("POST", _) => Answer::new(202).header("location", "/upload/s1?state=x"),
            ("PATCH", _) => Answer::new(405)
                .body(r#"{"errors":[{"code":"UNSUPPORTED","message":"no chunks"}]}"#),
            ("PUT", p) if p.starts_with("/upload/s1?state=x&digest=sha256%3A") => Answer::new(201),
            (m, p) => Answer::new(400).body(format!("unexpected {m} {p}")),
        });
        let reg = plain(&server.addr, None).await;
        let contents = [large(1), large(2)];
        upload_all(&reg, &contents).await;
        let seen = server.seen();
        let patches = seen.iter().filter(|r| r.method == "PATCH").count();
        let puts: Vec<_> = seen.iter().filter(|r| r.method == "PUT").collect();
        assert_eq!(patches, 1, "only the first upload tries PATCH");
        assert_eq!(puts.len(), 2);
        assert_eq!(puts[0].body, contents[0]);
        assert_eq!(puts[1].body, contents[1]);
    }

    /// A small blob goes in two requests, POST and a PUT carrying it; a large one in chunks
    /// and an empty PUT.
    #[tokio::test]
    async fn small_blobs_go_in_one_put_and_large_ones_in_chunks() {
        let server = TestServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v2/") => Answer::new(200),
            ("POST", _) => Answer::new(202).header("location", "/upload/s1?state=x"),
            ("PATCH", _) => Answer::new(202)
                .header("location", "/upload/s1?state=y")
                // The whole of the large blob below (ONE_PUT_MAX + 1 bytes).
                .header("range", "0-5242880"),
            ("PUT", p) if p.contains("digest=sha256%3A") => Answer::new(201),
            (m, p) => Answer::new(400).body(format!("unexpected {m} {p}")),
        });
        let reg = plain(&server.addr, None).await;
        let small = b"a small blob".to_vec();
        upload_all(&reg, &[small.clone(), large(3)]).await;
        let seen = server.seen();
        let methods: Vec<&str> = seen
            .iter()
            .filter(|r| r.path != "/v2/")
            .map(|r| r.method.as_str())
            .collect();
        assert_eq!(methods, ["POST", "PUT", "POST", "PATCH", "PUT"]);
        let puts: Vec<_> = seen.iter().filter(|r| r.method == "PUT").collect();
        assert_eq!(puts[0].body, small);
        assert!(
            puts[1].body.is_empty(),
            "the chunked upload commits without a body"
        );
    }

    /// A registry that refuses a PUT carrying the blob gets chunks instead, in a new session,
    /// and is not sent another such PUT.
    #[tokio::test]
    async fn a_registry_refusing_a_put_with_a_body_gets_chunks_and_that_is_remembered() {
        let server = TestServer::start(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v2/") => Answer::new(200),
            ("POST", _) => Answer::new(202).header("location", "/upload/s1?state=x"),
            ("DELETE", _) => Answer::new(204),
            ("PATCH", _) => Answer::new(202).header("location", "/upload/s1?state=y"),
            ("PUT", _) if !r.body.is_empty() => Answer::new(400).body(
                r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"PATCH the data first"}]}"#,
            ),
            ("PUT", p) if p.contains("digest=sha256%3A") => Answer::new(201),
            (m, p) => Answer::new(400).body(format!("unexpected {m} {p}")),
        });
        let reg = plain(&server.addr, None).await;
        let contents = [b"first".to_vec(), b"second".to_vec()];
        upload_all(&reg, &contents).await;
        let seen = server.seen();
        let with_body = seen
            .iter()
            .filter(|r| r.method == "PUT" && !r.body.is_empty())
            .count();
        assert_eq!(
            with_body, 1,
            "only the first upload tries a PUT with the blob"
        );
        let patches: Vec<_> = seen.iter().filter(|r| r.method == "PATCH").collect();
        assert_eq!(patches.len(), 2, "both blobs went in a chunk");
        assert_eq!(patches[0].body, contents[0]);
        assert_eq!(patches[1].body, contents[1]);
        let commits = seen
            .iter()
            .filter(|r| r.method == "PUT" && r.body.is_empty())
            .count();
        assert_eq!(commits, 2);
    }

    #[test]
    fn offsets_from_range_headers() {
        assert_eq!(held_until("0-0"), Some(0));
        assert_eq!(held_until("0-1048575"), Some(1_048_576));
        assert_eq!(held_until("bytes=0-9"), Some(10));
        assert_eq!(held_until("5-9"), None);
        assert_eq!(held_until("junk"), None);
    }

    #[test]
    fn a_413_brings_requests_to_the_power_of_two_below() {
        const M: u64 = 1024 * 1024;
        assert_eq!(power_of_two_below(64 * M), 32 * M);
        assert_eq!(power_of_two_below(12 * M), 8 * M);
        assert_eq!(power_of_two_below(3 * M), 2 * M);
        assert_eq!(power_of_two_below(2 * M + 1), 2 * M);
        assert_eq!(power_of_two_below(MIN_BODY + 1), MIN_BODY);
        assert_eq!(power_of_two_below(2), 1);
    }

    #[test]
    fn chunk_refusals() {
        assert!(refuses_chunks(StatusCode::METHOD_NOT_ALLOWED, b""));
        assert!(refuses_chunks(
            StatusCode::BAD_REQUEST,
            br#"{"errors":[{"code":"UNSUPPORTED"}]}"#
        ));
        assert!(!refuses_chunks(
            StatusCode::BAD_REQUEST,
            br#"{"errors":[{"code":"DIGEST_INVALID"}]}"#
        ));
    }

    #[test]
    fn body_refusals() {
        for code in [400, 405, 415, 501] {
            assert!(may_refuse_body(StatusCode::from_u16(code).expect("status")));
        }
        for code in [401, 403, 404, 413, 416, 500, 503] {
            assert!(!may_refuse_body(
                StatusCode::from_u16(code).expect("status")
            ));
        }
        assert!(refuses_body(
            br#"{"errors":[{"code":"BLOB_UPLOAD_INVALID"}]}"#
        ));
        assert!(refuses_body(b"monolithic uploads are not supported"));
        assert!(!refuses_body(br#"{"errors":[{"code":"DIGEST_INVALID"}]}"#));
        assert!(!refuses_body(br#"{"errors":[{"code":"SIZE_INVALID"}]}"#));
    }
}
