//! The read side of the OCI distribution API over one or more bundles, answered straight
//! from the compressed files: `GET /v2/`, manifests by tag or digest (the exact stored bytes
//! and media type), blobs with `HEAD` and `Range`, tag lists and the catalog with `n`/`last`
//! paging, and the referrers API built from the bundles' companions. Every write answers 405
//! `UNSUPPORTED`. Optional TLS and htpasswd (bcrypt) basic auth; a log line per request.

pub mod frames;
pub mod namespace;

use crate::digest::Digest;
use crate::error::{Error, Result};
use base64::Engine as _;
use bytes::Bytes;
use frames::{range_stream, FrameCache};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use namespace::Namespace;
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Decoded frames kept for all clients together unless `--frame-cache` says otherwise, in
/// MiB: two of the writer's 4 MiB frames. With the frames being fetched (`frames::FETCHES`)
/// and those kept by quick responses between pieces (`frames::PINS`), serve holds at most
/// 40 MiB of frames whatever the number of clients (144 MiB for a bundle of an earlier
/// version, whose frames are 16 MiB: the cache then keeps one), and each connection at most
/// a piece and its buffer (`CONNECTION_BUFFER`). 16 MiB took `serve` of 33,340 images over
/// 50 MiB under 8 clients; 8 MiB costs the clients of one 1 GiB layer some decodes (README's
/// benchmarks).
pub const FRAME_CACHE_MIB: u32 = 8;

/// The most a connection buffers to send, beyond the piece under way (hyper's default is
/// about 400 KiB), and the largest request head it reads.
const CONNECTION_BUFFER: usize = 64 << 10;

/// Users from an htpasswd file (bcrypt entries, as `htpasswd -B` writes them).
pub struct Htpasswd {
    entries: HashMap<String, String>,
    /// Hashes of user:password pairs already checked (bcrypt is slow on purpose; clients send
    /// the header with every request).
    good: Mutex<HashSet<[u8; 32]>>,
    /// One bcrypt check at a time: wrong passwords sent in a flood cost one core, not all.
    checking: tokio::sync::Semaphore,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let mut entries = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line.split_once(':').ok_or_else(|| {
                Error::Usage(format!("{} line {}: not user:hash", path.display(), n + 1))
            })?;
            if !hash.starts_with("$2") {
                return Err(Error::Usage(format!(
                    "{} line {}: only bcrypt entries are supported (htpasswd -B)",
                    path.display(),
                    n + 1
                )));
            }
            entries.insert(user.to_string(), hash.to_string());
        }
        if entries.is_empty() {
            return Err(Error::Usage(format!("{}: no users", path.display())));
        }
        Ok(Htpasswd {
            entries,
            good: Mutex::default(),
            checking: tokio::sync::Semaphore::new(1),
        })
    }

    /// Checks an `Authorization: Basic …` value.
    async fn check(self: &Arc<Self>, header: Option<&HeaderValue>) -> bool {
        let Some(raw) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
        else {
            return false;
        };
        let key: [u8; 32] = sha2::Sha256::digest(&raw).into();
        if self.good.lock().is_ok_and(|g| g.contains(&key)) {
            return true;
        }
        let Ok(pair) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, pass)) = pair.split_once(':') else {
            return false;
        };
        // An unknown user costs a check too (against some user's hash, its answer unused), so
        // that the time taken does not tell which users exist.
        let (hash, known) = match self.entries.get(user) {
            Some(h) => (h.clone(), true),
            None => match self.entries.values().next() {
                Some(h) => (h.clone(), false),
                None => return false,
            },
        };
        let Ok(_turn) = self.checking.acquire().await else {
            return false;
        };
        let pass = pass.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        if ok {
            if let Ok(mut g) = self.good.lock() {
                g.insert(key);
            }
        }
        ok
    }
}

/// Everything a request handler needs.
pub struct Server {
    pub ns: Namespace,
    pub cache: Arc<FrameCache>,
    pub users: Option<Arc<Htpasswd>>,
    pub quiet: bool,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// A failure on this side (a damaged bundle): the detail goes to the log, where the operator
/// sees it; the client learns which object failed, not the bundle's path on this machine.
fn internal(what: &str, e: &Error) -> Response<Body> {
    eprintln!("airlock serve: {what}: {e}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        &format!("{what} could not be read from the bundle (see the server's log)"),
    )
}

/// An error in the distribution spec's JSON form.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let mut r = Response::new(full(body.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

/// A JSON answer (no body for HEAD, the length either way), with a `Link` to the next page
/// when there is one.
fn json_answer(
    body: String,
    head: bool,
    content_type: &str,
    link: Option<String>,
) -> Response<Body> {
    let len = body.len() as u64;
    let mut r = with_len(Response::new(if head { empty() } else { full(body) }), len);
    header(&mut r, "content-type", content_type);
    if let Some(l) = link {
        header(&mut r, "link", &l);
    }
    r
}

fn with_len(mut r: Response<Body>, len: u64) -> Response<Body> {
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn header(r: &mut Response<Body>, k: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        r.headers_mut().insert(k, v);
    }
}

/// `n` and `last` of a list request.
fn paging(query: &str) -> (Option<usize>, Option<String>) {
    let mut n = None;
    let mut last = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "n" => n = v.parse().ok(),
            "last" => last = Some(v.into_owned()),
            _ => {}
        }
    }
    (n, last)
}

/// One page of a sorted list, with the `Link` to the next one.
fn page<'a>(
    items: impl Iterator<Item = &'a String>,
    query: &str,
    path: &str,
) -> (Vec<&'a String>, Option<String>) {
    let (n, last) = paging(query);
    let mut rest = items.filter(|i| last.as_ref().is_none_or(|l| *i > l));
    let n = n.unwrap_or(usize::MAX);
    let page: Vec<&String> = rest.by_ref().take(n).collect();
    let link = match (page.last(), rest.next()) {
        (Some(l), Some(_)) => {
            let q: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", l)
                .finish();
            Some(format!("<{path}?{q}>; rel=\"next\""))
        }
        _ => None,
    };
    (page, link)
}

/// What a `Range` header asks of a blob (RFC 9110, section 14).
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// Bytes `from..to`: a 206.
    Part(u64, u64),
    /// No byte of the blob is in the range: a 416.
    Unsatisfiable,
    /// Not one byte range this server reads (another unit, several ranges, a malformed
    /// one): the header is ignored and the whole blob sent, as the RFC has it.
    Whole,
}

/// Reads a `Range` header against a blob of `size` bytes. The unit is matched without regard
/// to case, and a last position past the end (however large) means the end.
fn parse_range(v: &str, size: u64) -> Ranged {
    let Some((unit, spec)) = v.trim().split_once('=') else {
        return Ranged::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    // Digits only; a number too large for 64 bits is as good as the largest.
    let number = |t: &str| -> Option<u64> {
        let t = t.trim();
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().unwrap_or(u64::MAX))
    };
    if a.trim().is_empty() {
        return match number(b) {
            None => Ranged::Whole,
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(size.saturating_sub(n), size),
        };
    }
    let Some(from) = number(a) else {
        return Ranged::Whole;
    };
    let last = if b.trim().is_empty() {
        None
    } else {
        match number(b) {
            Some(l) if l >= from => Some(l),
            _ => return Ranged::Whole,
        }
    };
    if from >= size {
        return Ranged::Unsatisfiable;
    }
    let to = last.map_or(size, |l| l.saturating_add(1).min(size));
    Ranged::Part(from, to)
}

/// A whole blob's pieces, checked against its digest as they go: the last piece is handed on
/// only once the blob matches, so a blob whose frames are sound but whose bytes are not (a
/// bundle made to lie) ends in an error, cut short, never whole and wrong.
fn checked(
    pieces: futures_util::stream::BoxStream<'static, Result<Bytes>>,
    d: &Digest,
    size: u64,
) -> futures_util::stream::BoxStream<'static, Result<Bytes>> {
    let what = format!("blob {d}");
    let start = (
        pieces,
        Some(crate::digest::Verifier::new(d, size)),
        None::<Bytes>,
    );
    futures_util::stream::unfold(start, move |(mut pieces, verifier, held)| {
        let what = what.clone();
        async move {
            let mut verifier = verifier?;
            let mut held = held;
            loop {
                match pieces.next().await {
                    Some(Ok(piece)) => {
                        if let Err(e) = verifier.update(&piece) {
                            let e = Error::Integrity {
                                what,
                                detail: e.to_string(),
                            };
                            return Some((Err(e), (pieces, None, None)));
                        }
                        if let Some(before) = held.replace(piece) {
                            return Some((Ok(before), (pieces, Some(verifier), held)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (pieces, None, None))),
                    None => {
                        return match verifier.finish() {
                            Ok(()) => held.map(|last| (Ok(last), (pieces, None, None))),
                            Err(e) => {
                                eprintln!("airlock serve: {what}: {e}");
                                Some((Err(e), (pieces, None, None)))
                            }
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

impl Server {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if let Some(users) = &self.users {
            if !users.check(req.headers().get(AUTHORIZATION)).await {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                );
                header(&mut r, "www-authenticate", "Basic realm=\"airlock\"");
                return r;
            }
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let head = method == Method::HEAD;
        if path == "/v2/" || path == "/v2" {
            if method != Method::GET && !head {
                return error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "read-only");
            }
            let mut r = json_answer("{}".into(), head, "application/json", None);
            header(&mut r, "docker-distribution-api-version", "registry/2.0");
            return r;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "not an OCI distribution path",
            );
        };
        if method != Method::GET && !head {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is a read-only view of airlock bundles",
            );
        }
        if rest == "_catalog" {
            let (repos, link) = page(self.ns.repos().into_iter(), &query, "/v2/_catalog");
            let body = serde_json::json!({ "repositories": repos }).to_string();
            return json_answer(body, head, "application/json", link);
        }
        if let Some(repo) = rest.strip_suffix("/tags/list") {
            let Some(tags) = self.ns.tags.get(repo) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    "repository name not known",
                );
            };
            let (tags, link) = page(tags.keys(), &query, &format!("/v2/{repo}/tags/list"));
            let body = serde_json::json!({ "name": repo, "tags": tags }).to_string();
            return json_answer(body, head, "application/json", link);
        }
        for (sep, kind) in [("/manifests/", 0), ("/blobs/", 1), ("/referrers/", 2)] {
            if let Some((repo, reference)) = rest.rsplit_once(sep) {
                if !self.ns.has_repo(repo) {
                    return error(
                        StatusCode::NOT_FOUND,
                        "NAME_UNKNOWN",
                        "repository name not known",
                    );
                }
                return match kind {
                    0 => self.manifest(repo, reference, head).await,
                    1 => {
                        self.blob(repo, reference, head, req.headers().get(RANGE))
                            .await
                    }
                    _ => self.referrers(repo, reference, &query, head),
                };
            }
        }
        error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown path")
    }

    async fn manifest(&self, repo: &str, reference: &str, head: bool) -> Response<Body> {
        let Some(d) = self.ns.resolve(repo, reference) else {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            );
        };
        // A layer or config asked for by digest is no manifest (and is never read whole).
        let (bundle, media_type, size) = match self.ns.object(&d) {
            Ok(x) if crate::manifest::is_manifest(&x.1) => x,
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                )
            }
        };
        let d2 = d.clone();
        let bytes = if head {
            Ok(Vec::new())
        } else {
            tokio::task::spawn_blocking(move || {
                bundle.read_blob(&d2, crate::registry::MAX_MANIFEST_SIZE)
            })
            .await
            .unwrap_or_else(|e| Err(Error::Failed(e.to_string())))
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => return internal(&format!("manifest {d}"), &e),
        };
        let mut r = with_len(Response::new(full(bytes)), size);
        header(&mut r, "content-type", &media_type);
        header(&mut r, "docker-content-digest", d.text().as_str());
        header(&mut r, "etag", &format!("\"{d}\""));
        r
    }

    async fn blob(
        &self,
        repo: &str,
        reference: &str,
        head: bool,
        range: Option<&HeaderValue>,
    ) -> Response<Body> {
        let Ok(d) = Digest::parse(reference) else {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "not a digest");
        };
        if !self.ns.in_repo(repo, &d) {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            );
        }
        let Ok((bundle, _, size)) = self.ns.object(&d) else {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            );
        };
        let Some((base, _)) = bundle.content_of(&d) else {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            );
        };
        let asked = range
            .and_then(|v| v.to_str().ok())
            .map_or(Ranged::Whole, |v| parse_range(v, size));
        let (from, to, partial) = match asked {
            Ranged::Whole => (0, size, false),
            Ranged::Part(a, b) => (a, b, true),
            Ranged::Unsatisfiable => {
                let mut r = error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "RANGE_INVALID",
                    "range not satisfiable",
                );
                header(&mut r, "content-range", &format!("bytes */{size}"));
                return r;
            }
        };
        let body = if head || from == to {
            empty()
        } else {
            let bi = self.ns.bundle_index(&bundle);
            let pieces = range_stream(self.cache.clone(), bi, bundle, base, from, to);
            // A whole blob is checked against its digest on the way; a range cannot be.
            let mut stream = if partial {
                pieces
            } else {
                checked(pieces, &d, size)
            };
            // The first piece is read before the answer starts, so a damaged frame there is
            // a 500, not a cut body.
            let first = match stream.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => return internal(&format!("blob {d}"), &e),
                None => Bytes::new(),
            };
            let all = futures_util::stream::once(async move { Ok(first) })
                .chain(stream)
                .map(|r| {
                    r.map(Frame::data)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                });
            BodyExt::boxed_unsync(StreamBody::new(all))
        };
        let mut r = with_len(Response::new(body), to - from);
        if partial {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            header(
                &mut r,
                "content-range",
                &format!("bytes {from}-{}/{size}", to.saturating_sub(1)),
            );
        }
        header(&mut r, "content-type", "application/octet-stream");
        header(&mut r, "docker-content-digest", d.text().as_str());
        header(&mut r, "accept-ranges", "bytes");
        header(&mut r, "etag", &format!("\"{d}\""));
        r
    }

    fn referrers(&self, repo: &str, reference: &str, query: &str, head: bool) -> Response<Body> {
        let Ok(subject) = Digest::parse(reference) else {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "not a digest");
        };
        let wanted: Option<String> = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "artifactType")
            .map(|(_, v)| v.into_owned());
        let manifests: Vec<serde_json::Value> = self
            .ns
            .referrers(repo, &subject)
            .iter()
            .filter(|r| wanted.is_none() || r.artifact_type == wanted)
            .map(|r| {
                let mut m = serde_json::json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.text().as_str(),
                    "size": r.size,
                });
                if let Some(a) = &r.artifact_type {
                    m["artifactType"] = serde_json::Value::String(a.clone());
                }
                m
            })
            .collect();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::manifest::OCI_INDEX,
            "manifests": manifests,
        })
        .to_string();
        let mut r = json_answer(body, head, crate::manifest::OCI_INDEX, None);
        if wanted.is_some() {
            header(&mut r, "oci-filters-applied", "artifactType");
        }
        r
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Connections served at once; more wait in the system's listen queue until one ends.
const MAX_CONNECTIONS: usize = 256;
/// A request's head must have arrived this long after the connection began waiting for it
/// (idle keep-alive connections close after it too); a TLS handshake must end within it.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection on which no byte has moved, either way, for this long is closed: a client
/// that stopped reading a blob holds its buffers and a connection slot no longer.
const STALL: Duration = Duration::from_secs(120);

/// A connection's stream, noting when a byte last moved either way (the registry client's
/// [`Activity`](crate::registry::transport::Activity), which times its requests out alike).
struct Watched {
    inner: tokio::net::TcpStream,
    activity: crate::registry::transport::Activity,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut me.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            me.activity.touch();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = std::pin::Pin::new(&mut me.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            me.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = std::pin::Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            me.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Serves until SIGINT/SIGTERM, then lets requests under way finish (10 s at most) and closes
/// idle connections at once.
pub async fn listen(
    server: Arc<Server>,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listening address", e))?;
    eprintln!(
        "serving {} from {} on {}://{local}/ (Ctrl-C to stop)",
        crate::units::count(server.ns.tags.len() as u64, "repository", "repositories"),
        crate::units::count(server.ns.bundles.len() as u64, "bundle", "bundles"),
        if tls.is_some() { "https" } else { "http" }
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            _ = &mut stop => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("airlock serve: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let server = server.clone();
        let tls = tls.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let server = server.clone();
                async move {
                    let started = Instant::now();
                    // The path and query only: a request in absolute form may carry
                    // user:password@ in its authority.
                    let target = req
                        .uri()
                        .path_and_query()
                        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
                    let line = format!("{remote} {} {target}", req.method());
                    let quiet = server.quiet;
                    let resp = server.handle(req).await;
                    if !quiet {
                        let len = resp
                            .headers()
                            .get(CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        eprintln!(
                            "{line} {} {len} {}ms",
                            resp.status().as_u16(),
                            started.elapsed().as_millis()
                        );
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let activity = crate::registry::transport::Activity::new();
            let watched = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            let io: Box<dyn Stream> = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(watched)).await {
                        Ok(Ok(s)) => Box::new(s),
                        _ => return,
                    }
                }
                None => Box::new(watched),
            };
            // What a connection buffers beyond the piece it is sending: a client that reads
            // slowly or not at all holds this much and one piece (`frames::range_stream`).
            let mut http = hyper::server::conn::http1::Builder::new();
            http.max_buf_size(CONNECTION_BUFFER)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = stopped.changed(), if !closing => {
                        // Requests under way finish; an idle connection closes now.
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tokio::time::sleep(STALL / 4) => {
                        if activity.idle_for() >= STALL {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while slots.available_permits() < MAX_CONNECTIONS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("airlock serve: stopped");
    Ok(())
}

/// A TLS acceptor from a PEM certificate chain and key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| Error::Usage(format!("--tls-cert {}: {e}", cert.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Usage(format!("--tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "--tls-cert {}: no certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Usage(format!("--tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Usage(format!("--tls-cert/--tls-key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use Ranged::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 100));
        assert_eq!(parse_range("bytes=95-200", 100), Part(95, 100));
        assert_eq!(parse_range("Bytes=0-0", 100), Part(0, 1));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999", 100),
            Part(0, 100)
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=a-1", 100), Whole);
        assert_eq!(parse_range("bytes=+1-2", 100), Whole);
    }

    #[test]
    fn pages() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let (p, link) = page(items.iter(), "n=2", "/v2/_catalog");
        assert_eq!(p, vec!["a", "b"]);
        assert_eq!(
            link.as_deref(),
            Some("</v2/_catalog?n=2&last=b>; rel=\"next\"")
        );
        let (p, link) = page(items.iter(), "n=2&last=b", "/v2/_catalog");
        assert_eq!(p, vec!["c", "d"]);
        assert_eq!(link, None);
        let (p, _) = page(items.iter(), "", "/v2/_catalog");
        assert_eq!(p.len(), 4);
    }
}
