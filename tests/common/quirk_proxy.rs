//! QuirkProxy: an HTTP/1.1-aware loopback proxy in front of a plain-HTTP real registry that
//! plays the ways real registries differ (no chunked or no monolithic uploads, minimum chunk
//! sizes, refused mounts, missing `Docker-Content-Digest`, relative `Location`, `NAME_UNKNOWN`
//! on push, blob GETs redirected to another host, no leeway for expired tokens, a cut PATCH,
//! slow answers), and records every request for assertions.
//!
//! One upstream connection per request (`Connection: close`), and the client connection is
//! closed after each response. Request bodies (Content-Length or chunked) are streamed, never
//! buffered whole.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Endpoint, TestRegistry};

/// One registry behaviour played by a [`QuirkProxy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quirk {
    /// PATCH on an upload session answered `405` with an `UNSUPPORTED` error (no chunked
    /// uploads, as Google's registry).
    NoChunked,
    /// A `PUT ?digest=` carrying a non-empty body answered `400` (no monolithic uploads, as
    /// Artifactory).
    NoMonolithic,
    /// Only the last chunk of a session may be smaller than this many bytes (as ECR): a PATCH
    /// (or a PUT with a body) that follows a smaller PATCH in the same session is answered
    /// `416`.
    MinChunk(u64),
    /// `POST ?mount=&from=` forwarded without the mount parameters: a real session is opened
    /// and its `202` + `Location` returned.
    MountRefused202,
    /// `POST ?mount=` answered `401` with the registry's challenge.
    MountRefused401,
    /// `Docker-Content-Digest` removed from every response.
    NoContentDigest,
    /// Absolute `Location` headers rewritten to path and query only.
    RelativeLocation,
    /// Pushes (upload POSTs, manifest PUTs) to repositories starting with this prefix answered
    /// `404 NAME_UNKNOWN` (Harbor or GitLab project missing).
    NameUnknown(String),
    /// `GET /v2/<repo>/blobs/<digest>` answered `307` to a second listener reached as
    /// `http://localhost:<port>` that serves the blob (fetched upstream with the harness's
    /// credentials, honouring `Range`) and records the `Authorization` headers it sees.
    RedirectBlobs,
    /// `GET /v2/<repo>/blobs/<digest>` answered `307` to `http://127.0.0.1:<port>` where
    /// nothing listens (storage that is down or that a firewall blocks), with a signature in
    /// the query as object storage's presigned URLs carry ([`REDIRECT_SIGNATURE`]).
    RedirectBlobsNowhere,
    /// A request whose `Authorization: Bearer <jwt>` has an `exp` in the past is answered `401`
    /// with the registry's Bearer challenge (no leeway, unlike distribution's 60 s).
    RejectExpiredTokens,
    /// The `nth` (1-based) PATCH whose body is larger than `after_bytes` has its connection cut
    /// after the client sent that many body bytes, none of which reach the registry (lost in
    /// transit): the session stays where the previous chunk left it, and a client can resume
    /// from the offset the registry reports.
    CutPatch { nth: usize, after_bytes: u64 },
    /// Like [`Quirk::CutPatch`], but the `after_bytes` bytes are forwarded to the registry
    /// before both connections are cut. Distribution 2.8 writes them into the session and then
    /// refuses the session (`404 BLOB_UPLOAD_INVALID`, "upload resumed at wrong offset": its
    /// `_state` still names the previous offset), so a client must start a new upload.
    CutPatchDelivered { nth: usize, after_bytes: u64 },
    /// Every `every`-th PATCH whose body is larger than `after_bytes` is cut as
    /// [`Quirk::CutPatch`] cuts its one (lost in transit): a link that drops now and then
    /// through a long upload, the chunks between the cuts going through.
    CutEveryPatch { every: usize, after_bytes: u64 },
    /// A blob commit (`PUT …/blobs/uploads/…?digest=`) the registry answered `201` is
    /// answered `504 Gateway Timeout` instead: a proxy that gave up waiting while object
    /// storage assembled the blob, which the registry took all the same. A retry of the
    /// commit then finds the session spent (`404 BLOB_UPLOAD_UNKNOWN`).
    LoseCommitAnswer,
    /// Every request waits this many milliseconds before it is handled.
    Delay(u64),
    /// `PUT /v2/<repo>/manifests/<tag>` of a tag the registry has already answered `412`
    /// `PRECONDITION`, as Harbor does for a tag an immutability rule covers, whatever the
    /// manifest (the one the tag holds included); pushes by digest go through.
    ImmutableTags,
    /// `GET /v2/_catalog` answered `404` with an `UNSUPPORTED` error (GitLab, a registry with
    /// its catalog turned off).
    NoCatalog,
    /// `GET /v2/_catalog` answered `200 {"repositories":[]}` whatever the registry holds (a
    /// registry whose catalog lists nothing it should).
    EmptyCatalog,
    /// A request whose `Content-Length` is over this many bytes is answered `413` with nginx's
    /// page and `Connection: close` as soon as its head is read, before its body (which is
    /// then read and thrown away, as nginx's lingering close does): a registry behind nginx
    /// with `client_max_body_size`, or behind ingress-nginx (1 MiB unless
    /// `proxy-body-size` says otherwise).
    BodyLimit(u64),
    /// `GET /v2/<repo>/manifests/<reference>` answered `429` as Docker Hub answers a spent
    /// pull limit: its `TOOMANYREQUESTS` error, `ratelimit-*` headers and no `Retry-After`.
    PullRateLimit,
    /// Manifest answers (`GET` and `HEAD`) carry Docker Hub's `ratelimit-limit` and
    /// `ratelimit-remaining` headers (a registry that counts manifest `GET`s).
    AnnounceRateLimit,
}

/// nginx's answer to a request body over `client_max_body_size`.
pub const NGINX_413: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// The signature in the query of [`Quirk::RedirectBlobsNowhere`]'s redirects: it must never
/// be printed.
pub const REDIRECT_SIGNATURE: &str = "0f1e2d3c4b5a-presigned-S1GNATURE";

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct QuirkRecord {
    /// Arrival order, from 0.
    pub seq: usize,
    pub at: Instant,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string without `?` (empty when none).
    pub query: String,
    /// `Basic`, `Bearer exp=<unix seconds>` or `Bearer (not a JWT)`; never the secret itself.
    pub auth: Option<String>,
    pub content_range: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Request body bytes read from the client (forwarded, or drained when answered here).
    pub body_bytes: u64,
    /// Status sent to the client; None when the connection was cut or failed.
    pub status: Option<u16>,
    /// `Location` of the response as sent to the client.
    pub location: Option<String>,
    /// `Range` of the response (upload progress).
    pub range: Option<String>,
    /// Whether the response sent to the client carried `Docker-Content-Digest`.
    pub content_digest: bool,
    /// What the proxy did: `forwarded`, `mount-stripped`, `refused-405`, `refused-400`,
    /// `refused-416`, `refused-401-mount`, `name-unknown`, `redirected`, `expired-token`,
    /// `no-catalog`, `empty-catalog`, `too-large`, `rate-limited`, `cut`, `upstream-error`.
    pub action: String,
}

impl QuirkRecord {
    /// The value of a query parameter (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|p| {
            p.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// The upload session id of a request on `/v2/<repo>/blobs/uploads/<id>`, or of the
    /// `Location` answered to an upload POST.
    pub fn session(&self) -> Option<String> {
        session_of(&self.path).or_else(|| {
            if self.method == "POST" {
                self.location.as_deref().and_then(|l| {
                    let no_query = l.split('?').next().unwrap_or_default();
                    session_of(no_query)
                })
            } else {
                None
            }
        })
    }

    /// The repository of a `/v2/<repo>/...` request.
    pub fn repo(&self) -> Option<String> {
        repo_of(&self.path)
    }

    /// Start offset of `Content-Range: <start>-<end>` (also accepts `bytes <start>-<end>/…`).
    pub fn range_start(&self) -> Option<u64> {
        let cr = self.content_range.as_deref()?;
        let cr = cr.trim().trim_start_matches("bytes").trim();
        cr.split('-').next()?.trim().parse().ok()
    }

    pub fn is_upload_post(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/blobs/uploads/")
    }

    pub fn is_mount(&self) -> bool {
        self.is_upload_post() && self.query_param("mount").is_some()
    }

    /// A PUT that commits an upload (`?digest=`).
    pub fn is_commit(&self) -> bool {
        self.method == "PUT"
            && self.path.contains("/blobs/uploads/")
            && self.query_param("digest").is_some()
    }

    /// The committed digest of a commit PUT (percent-decoded `sha256%3A…`).
    pub fn commit_digest(&self) -> Option<String> {
        self.query_param("digest")
            .map(|d| d.replace("%3A", ":").replace("%3a", ":"))
    }
}

impl std::fmt::Display for QuirkRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {} {}", self.seq, self.method, self.path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        write!(f, " body={}", self.body_bytes)?;
        if let Some(cr) = &self.content_range {
            write!(f, " content-range={cr}")?;
        }
        if let Some(a) = &self.auth {
            write!(f, " auth={a}")?;
        }
        match self.status {
            Some(s) => write!(f, " -> {s}")?,
            None => write!(f, " -> (no answer)")?,
        }
        if let Some(r) = &self.range {
            write!(f, " range={r}")?;
        }
        write!(f, " [{}]", self.action)
    }
}

/// Cut-off applied to bearer tokens by [`QuirkProxy::expire_early`].
#[derive(Clone, Copy, Debug)]
struct ExpireEarly {
    skip: usize,
    count: usize,
    margin: Duration,
}

struct Shared {
    stop: AtomicBool,
    upstream: SocketAddr,
    upstream_host: String,
    quirks: Vec<Quirk>,
    /// `WWW-Authenticate` of the upstream's `GET /v2/` (None for an open registry).
    challenge: Option<String>,
    /// `Basic …` for the harness's credentials (used by the blob host only).
    harness_auth: Option<String>,
    blob_port: Option<u16>,
    /// Where [`Quirk::RedirectBlobsNowhere`] sends blob GETs: a port nothing listens on.
    nowhere_port: Option<u16>,
    seq: AtomicUsize,
    records: Mutex<Vec<QuirkRecord>>,
    big_patches: AtomicUsize,
    cut_done: AtomicBool,
    bearer_seen: AtomicUsize,
    expire_early: Mutex<Option<ExpireEarly>>,
    expired_rejected: AtomicUsize,
    /// Session id → size of its last PATCH (MinChunk).
    last_patch: Mutex<HashMap<String, u64>>,
    /// Authorization headers seen by the blob host (None when absent; values redacted).
    blob_host_auth: Mutex<Vec<Option<String>>>,
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_conn: AtomicU64,
}

/// A loopback HTTP/1.1 proxy in front of a plain-HTTP [`TestRegistry`] playing [`Quirk`]s.
/// Dropping it stops both listeners and cuts open connections.
pub struct QuirkProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    creds: Option<(String, String)>,
    threads: Vec<JoinHandle<()>>,
}

impl QuirkProxy {
    /// A proxy in front of `reg` (plain HTTP) playing `quirk`.
    pub fn start(reg: &TestRegistry, quirk: Quirk) -> QuirkProxy {
        QuirkProxy::start_with(reg, vec![quirk])
    }

    /// A proxy playing several quirks at once (e.g. `Delay` with `RejectExpiredTokens`).
    pub fn start_with(reg: &TestRegistry, quirks: Vec<Quirk>) -> QuirkProxy {
        use base64::Engine as _;
        assert!(
            !reg.is_tls(),
            "QuirkProxy needs a plain-HTTP registry behind it"
        );
        let upstream: SocketAddr = reg
            .host()
            .parse()
            .unwrap_or_else(|e| panic!("registry host {} is not ip:port: {e}", reg.host()));
        let challenge = probe_challenge(upstream);
        let harness_auth = reg.credentials().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("QuirkProxy bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("QuirkProxy set_nonblocking");
        let addr = listener.local_addr().expect("QuirkProxy local_addr");
        let mut blob_listeners = Vec::new();
        if quirks.contains(&Quirk::RedirectBlobs) {
            let l = TcpListener::bind("127.0.0.1:0").expect("QuirkProxy bind blob host");
            let port = l.local_addr().expect("blob host local_addr").port();
            blob_listeners.push(l);
            // `localhost` may resolve to ::1 first: listen there too when IPv6 is available.
            if let Ok(l6) = TcpListener::bind(("::1", port)) {
                blob_listeners.push(l6);
            }
        }
        let blob_port = blob_listeners
            .first()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let nowhere_port = quirks.contains(&Quirk::RedirectBlobsNowhere).then(|| {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("QuirkProxy: a free port")
        });
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            upstream,
            upstream_host: reg.host(),
            quirks,
            challenge,
            harness_auth,
            blob_port,
            nowhere_port,
            seq: AtomicUsize::new(0),
            records: Mutex::new(Vec::new()),
            big_patches: AtomicUsize::new(0),
            cut_done: AtomicBool::new(false),
            bearer_seen: AtomicUsize::new(0),
            expire_early: Mutex::new(None),
            expired_rejected: AtomicUsize::new(0),
            last_patch: Mutex::new(HashMap::new()),
            blob_host_auth: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("quirk-proxy-accept".into())
                .spawn(move || accept_loop(listener, sh, handle_request))
                .expect("spawn QuirkProxy thread"),
        );
        for l in blob_listeners {
            l.set_nonblocking(true).expect("blob host set_nonblocking");
            let sh = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("quirk-blob-host".into())
                    .spawn(move || accept_loop(l, sh, handle_blob_host))
                    .expect("spawn blob host thread"),
            );
        }
        QuirkProxy {
            addr,
            shared,
            creds: reg.credentials(),
            threads,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT` where [`Quirk::RedirectBlobsNowhere`] sends blob GETs.
    pub fn nowhere_host(&self) -> Option<String> {
        self.shared.nowhere_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// `localhost:PORT` of the blob host (with [`Quirk::RedirectBlobs`]).
    pub fn blob_host(&self) -> Option<String> {
        self.shared.blob_port.map(|p| format!("localhost:{p}"))
    }

    /// Every request so far, in arrival order.
    pub fn records(&self) -> Vec<QuirkRecord> {
        let mut v = self
            .shared
            .records
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        v.sort_by_key(|r| r.seq);
        v
    }

    /// Requests with this method.
    pub fn records_of(&self, method: &str) -> Vec<QuirkRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.method == method)
            .collect()
    }

    /// The request log as text, one line per request (for assertion messages).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for r in self.records() {
            s.push_str(&r.to_string());
            s.push('\n');
        }
        s
    }

    /// Requests answered 401 because their bearer token had expired.
    pub fn expired_rejections(&self) -> usize {
        self.shared.expired_rejected.load(Ordering::SeqCst)
    }

    /// From the `skip`-th request carrying a bearer token on (counting from now), judge `count`
    /// of them as if the clock were `margin` later (with [`Quirk::RejectExpiredTokens`]): a
    /// margin at least the token lifetime makes them expired, to force a 401 mid-job.
    pub fn expire_early(&self, skip: usize, count: usize, margin: Duration) {
        let seen = self.shared.bearer_seen.load(Ordering::SeqCst);
        if let Ok(mut e) = self.shared.expire_early.lock() {
            *e = Some(ExpireEarly {
                skip: seen + skip,
                count,
                margin,
            });
        }
    }

    /// Requests the blob host received.
    pub fn blob_host_requests(&self) -> usize {
        self.shared
            .blob_host_auth
            .lock()
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// The `Authorization` headers the blob host saw (scheme only), one entry per request
    /// that carried one.
    pub fn blob_host_authorizations(&self) -> Vec<String> {
        self.shared
            .blob_host_auth
            .lock()
            .map(|v| v.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the one cut of [`Quirk::CutPatch`] (or `CutPatchDelivered`) happened.
    pub fn cut_done(&self) -> bool {
        self.shared.cut_done.load(Ordering::SeqCst)
    }
}

impl Endpoint for QuirkProxy {
    fn host(&self) -> String {
        QuirkProxy::host(self)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        None
    }
    fn creds(&self) -> Option<(String, String)> {
        self.creds.clone()
    }
}

impl Drop for QuirkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Ok(conns) = self.shared.conns.lock() {
            for c in conns.values().flatten() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------------

type Handler = fn(&mut TcpStream, u64, &Shared) -> io::Result<()>;

fn accept_loop(listener: TcpListener, sh: Arc<Shared>, handler: Handler) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                if !peer.ip().is_loopback() {
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                register(&sh, id, &stream);
                let sh2 = sh.clone();
                let _ = std::thread::Builder::new()
                    .name("quirk-proxy-conn".into())
                    .spawn(move || {
                        let _ = handler(&mut stream, id, &sh2);
                        let _ = stream.shutdown(Shutdown::Both);
                        if let Ok(mut conns) = sh2.conns.lock() {
                            conns.remove(&id);
                        }
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Keep a handle on a socket so that dropping the proxy can cut it.
fn register(sh: &Shared, id: u64, s: &TcpStream) {
    if let (Ok(c), Ok(mut conns)) = (s.try_clone(), sh.conns.lock()) {
        conns.entry(id).or_default().push(c);
    }
}

/// A parsed request or response head.
struct Head {
    /// Request: method, target, version; response: version, status, reason.
    first: Vec<String>,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<u64> {
        self.get("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    /// Serialise with hop-by-hop connection headers replaced by `Connection: close`.
    fn to_bytes(&self) -> Vec<u8> {
        let mut s = self.first.join(" ");
        s.push_str("\r\n");
        for (k, v) in &self.headers {
            let lower = k.to_ascii_lowercase();
            if lower == "connection" || lower == "keep-alive" || lower == "proxy-connection" {
                continue;
            }
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("Connection: close\r\n\r\n");
        s.into_bytes()
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// A stream with bytes already read ahead.
struct Src<'a> {
    buf: Vec<u8>,
    pos: usize,
    stream: &'a mut TcpStream,
}

impl Src<'_> {
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.buf.len() {
            return Ok(true);
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        chunk.truncate(n);
        self.buf = chunk;
        self.pos = 0;
        Ok(n > 0)
    }

    /// Up to `max` bytes (at least one unless EOF).
    fn take(&mut self, max: usize) -> io::Result<&[u8]> {
        if !self.fill()? {
            return Ok(&[]);
        }
        let end = self.buf.len().min(self.pos + max);
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// One line including its CRLF (bounded to 8 KiB).
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while !out.ends_with(b"\n") {
            if out.len() > 8192 || !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bad chunk line",
                ));
            }
            out.push(self.buf[self.pos]);
            self.pos += 1;
        }
        Ok(out)
    }

    /// The bytes read ahead and not consumed.
    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

/// Read a head (up to 64 KiB); returns it and the bytes read past it.
fn read_head(stream: &mut TcpStream, request: bool) -> io::Result<Option<(Head, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        // A TLS handshake (a client trying HTTPS first, as airlock does on loopback): answered
        // at once as a plain-HTTP server answers it, not left to the client's timeout.
        if request && buf[0] == 0x16 {
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return Ok(None);
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or_default();
    let first: Vec<String> = if request {
        first_line.split_whitespace().map(String::from).collect()
    } else {
        first_line.splitn(3, ' ').map(String::from).collect()
    };
    if first.len() < 2 {
        return Ok(None);
    }
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(Some((Head { first, headers }, buf[end..].to_vec())))
}

/// A writer that keeps accepting (and dropping) bytes after its first failure, so that a
/// request body is still read to its end when the upstream stopped listening.
struct Lenient<'a> {
    inner: Option<&'a mut dyn Write>,
    failed: bool,
}

impl Lenient<'_> {
    fn put(&mut self, b: &[u8]) {
        if self.failed {
            return;
        }
        if let Some(w) = self.inner.as_mut() {
            if w.write_all(b).is_err() {
                self.failed = true;
            }
        }
    }
}

/// Copy a request body framed by `head` from `src` to `sink` (raw framing kept). Stops after
/// `limit` body bytes when given. Returns (body bytes, complete).
fn pump_body(
    head: &Head,
    src: &mut Src<'_>,
    sink: &mut Lenient<'_>,
    limit: Option<u64>,
) -> io::Result<(u64, bool)> {
    let limit = limit.unwrap_or(u64::MAX);
    let mut done = 0u64;
    if head.chunked() {
        loop {
            let line = src.line()?;
            sink.put(&line);
            let text = String::from_utf8_lossy(&line);
            let size_hex = text.trim().split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size_hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                loop {
                    let l = src.line()?;
                    sink.put(&l);
                    if l == b"\r\n" || l == b"\n" {
                        return Ok((done, true));
                    }
                }
            }
            let mut left = size;
            while left > 0 {
                let allowed = left.min(limit - done);
                if allowed == 0 {
                    return Ok((done, false));
                }
                let part = src.take(allowed.min(1 << 20) as usize)?;
                if part.is_empty() {
                    return Ok((done, false));
                }
                let n = part.len() as u64;
                let part = part.to_vec();
                sink.put(&part);
                left -= n;
                done += n;
            }
            let crlf = src.line()?;
            sink.put(&crlf);
        }
    }
    let total = head.content_length().unwrap_or(0);
    while done < total {
        let allowed = (total - done).min(limit - done);
        if allowed == 0 {
            return Ok((done, false));
        }
        let part = src.take(allowed.min(1 << 20) as usize)?;
        if part.is_empty() {
            return Ok((done, false));
        }
        let part = part.to_vec();
        sink.put(&part);
        done += part.len() as u64;
    }
    Ok((done, true))
}

/// Write a small response with `Connection: close`.
fn respond(client: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &str) {
    let mut s = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let _ = client.write_all(s.as_bytes());
    let _ = client.flush();
}

/// `GET /v2/` on the upstream: its `WWW-Authenticate`, if any.
fn probe_challenge(upstream: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /v2/ HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let (head, _) = read_head(&mut s, false).ok()??;
    head.get("www-authenticate").map(String::from)
}

/// `/v2/<repo>/blobs/uploads/<id>` → `<id>`.
fn session_of(path: &str) -> Option<String> {
    let i = path.find("/blobs/uploads/")?;
    let id = path[i + "/blobs/uploads/".len()..].trim_end_matches('/');
    (!id.is_empty()).then(|| id.to_string())
}

/// `/v2/<repo>/(blobs|manifests|tags|referrers)/…` → `<repo>`.
fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    ["/blobs/", "/manifests/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|m| rest.rfind(m))
        .min()
        .map(|i| rest[..i].to_string())
}

/// The `exp` claim of a JWT, if it is one.
fn jwt_exp(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["exp"]
        .as_u64()
        .or_else(|| v["exp"].as_f64().map(|f| f as u64))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn push_record(sh: &Shared, rec: QuirkRecord) {
    if let Ok(mut r) = sh.records.lock() {
        r.push(rec);
    }
}

/// Whether the registry behind answers `HEAD` of the manifest at `path` with 200 (asked with
/// the harness's credentials).
fn upstream_has_manifest(sh: &Shared, path: &str) -> bool {
    let Ok(mut up) = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) else {
        return false;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = format!(
        "HEAD {path} HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\n",
        sh.upstream_host,
        super::media::MANIFEST_ACCEPT
    );
    if let Some(a) = &sh.harness_auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    if up.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut status = [0u8; 12];
    up.read_exact(&mut status).is_ok() && status.ends_with(b" 200")
}

fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]}).to_string()
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

/// What to do with a request.
enum Action {
    Forward,
    /// Forward with another target (path?query).
    ForwardAs(String),
    /// Cut after this many body bytes; forward them or not.
    Cut(u64, bool),
    /// Drain the body and answer here: status line, headers, body, record label.
    Answer(String, Vec<(&'static str, String)>, String, &'static str),
    /// Answer nginx's 413 at once, then read the body and throw it away.
    TooLarge,
}

/// Reads the request body (up to `limit` bytes) and throws it away: how many bytes came.
fn drain(head: &Head, src: &mut Src<'_>, limit: Option<u64>) -> u64 {
    let mut nowhere = Lenient {
        inner: None,
        failed: false,
    };
    pump_body(head, src, &mut nowhere, limit)
        .map(|(n, _)| n)
        .unwrap_or(0)
}

fn handle_request(client: &mut TcpStream, _id: u64, sh: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some((head, rest)) = read_head(client, true)? else {
        return Ok(());
    };
    let seq = sh.seq.fetch_add(1, Ordering::SeqCst);
    let method = head.first[0].clone();
    let target = head.first[1].clone();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let bearer = head
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let auth = head.get("authorization").map(|a| match &bearer {
        Some(t) => match jwt_exp(t) {
            Some(exp) => format!("Bearer exp={exp}"),
            None => "Bearer (not a JWT)".into(),
        },
        None => a.split_whitespace().next().unwrap_or_default().to_string(),
    });
    let mut rec = QuirkRecord {
        seq,
        at: Instant::now(),
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        auth,
        content_range: head.get("content-range").map(String::from),
        content_length: head.content_length(),
        chunked: head.chunked(),
        body_bytes: 0,
        status: None,
        location: None,
        range: None,
        content_digest: false,
        action: "forwarded".into(),
    };
    for q in &sh.quirks {
        if let Quirk::Delay(ms) = q {
            std::thread::sleep(Duration::from_millis(*ms));
        }
    }
    let has_body = head.chunked() || head.content_length().unwrap_or(0) > 0;
    let is_patch = method == "PATCH" && session_of(&path).is_some();
    let is_upload_post = method == "POST" && path.ends_with("/blobs/uploads/");
    let is_mount = is_upload_post && rec.query_param("mount").is_some();
    let repo = repo_of(&path).unwrap_or_default();
    let mut action = Action::Forward;

    // Bearer tokens first: an expired token is refused whatever the request is.
    if let (Some(token), true) = (&bearer, sh.quirks.contains(&Quirk::RejectExpiredTokens)) {
        let n = sh.bearer_seen.fetch_add(1, Ordering::SeqCst);
        let mut margin = 0.0;
        if let Ok(e) = sh.expire_early.lock() {
            if let Some(e) = *e {
                if n >= e.skip && n < e.skip + e.count {
                    margin = e.margin.as_secs_f64();
                }
            }
        }
        if let Some(exp) = jwt_exp(token) {
            if now_unix() + margin >= exp as f64 {
                sh.expired_rejected.fetch_add(1, Ordering::SeqCst);
                let actions = if method == "GET" || method == "HEAD" {
                    "pull"
                } else {
                    "pull,push"
                };
                let base = sh
                    .challenge
                    .clone()
                    .unwrap_or_else(|| "Bearer realm=\"quirk-proxy\"".into());
                let challenge =
                    format!("{base},scope=\"repository:{repo}:{actions}\",error=\"invalid_token\"");
                action = Action::Answer(
                    "401 Unauthorized".into(),
                    vec![
                        ("WWW-Authenticate", challenge),
                        ("Content-Type", "application/json".into()),
                    ],
                    error_body("UNAUTHORIZED", "authentication required: token expired"),
                    "expired-token",
                );
            }
        }
    }

    if matches!(action, Action::Forward) {
        for q in &sh.quirks {
            match q {
                Quirk::NoChunked if is_patch => {
                    action = Action::Answer(
                        "405 Method Not Allowed".into(),
                        vec![("Content-Type", "application/json".into())],
                        error_body("UNSUPPORTED", "chunked uploads are not supported"),
                        "refused-405",
                    );
                }
                Quirk::NoMonolithic
                    if method == "PUT" && rec.query_param("digest").is_some() && has_body =>
                {
                    action = Action::Answer(
                        "400 Bad Request".into(),
                        vec![("Content-Type", "application/json".into())],
                        error_body(
                            "BLOB_UPLOAD_INVALID",
                            "monolithic uploads are not supported: PATCH the data first",
                        ),
                        "refused-400",
                    );
                }
                Quirk::MinChunk(min) if is_patch || (method == "PUT" && has_body) => {
                    let sid = session_of(&path).unwrap_or_default();
                    let last = sh.last_patch.lock().ok().and_then(|m| m.get(&sid).copied());
                    if last.is_some_and(|l| l < *min) {
                        action = Action::Answer(
                            "416 Requested Range Not Satisfiable".into(),
                            vec![("Content-Type", "application/json".into())],
                            error_body(
                                "BLOB_UPLOAD_INVALID",
                                &format!("only the last chunk may be smaller than {min} bytes"),
                            ),
                            "refused-416",
                        );
                    }
                }
                Quirk::MountRefused202 if is_mount => {
                    let q: Vec<&str> = query
                        .split('&')
                        .filter(|p| !p.starts_with("mount=") && !p.starts_with("from="))
                        .filter(|p| !p.is_empty())
                        .collect();
                    let t = if q.is_empty() {
                        path.clone()
                    } else {
                        format!("{path}?{}", q.join("&"))
                    };
                    action = Action::ForwardAs(t);
                }
                Quirk::MountRefused401 if is_mount => {
                    let from = rec.query_param("from").unwrap_or_default();
                    let challenge = match &sh.challenge {
                        Some(c) if c.starts_with("Bearer") => format!(
                            "{c},scope=\"repository:{from}:pull\",error=\"insufficient_scope\""
                        ),
                        Some(c) => c.clone(),
                        None => "Basic realm=\"airlock-quirk-proxy\"".into(),
                    };
                    action = Action::Answer(
                        "401 Unauthorized".into(),
                        vec![
                            ("WWW-Authenticate", challenge),
                            ("Content-Type", "application/json".into()),
                        ],
                        error_body("UNAUTHORIZED", "not allowed to mount from that repository"),
                        "refused-401-mount",
                    );
                }
                Quirk::NameUnknown(prefix)
                    if repo.starts_with(prefix.as_str())
                        && (is_upload_post
                            || (method == "PUT" && path.contains("/manifests/"))) =>
                {
                    action = Action::Answer(
                        "404 Not Found".into(),
                        vec![("Content-Type", "application/json".into())],
                        error_body("NAME_UNKNOWN", "repository name not known to registry"),
                        "name-unknown",
                    );
                }
                Quirk::ImmutableTags
                    if method == "PUT"
                        && path.contains("/manifests/")
                        && !path.contains("/manifests/sha256:")
                        && upstream_has_manifest(sh, &path) =>
                {
                    let tag = path.rsplit('/').next().unwrap_or_default();
                    action = Action::Answer(
                        "412 Precondition Failed".into(),
                        vec![("Content-Type", "application/json".into())],
                        error_body(
                            "PRECONDITION",
                            &format!("The image {repo}:{tag} is configured as Immutable, cannot be updated"),
                        ),
                        "immutable",
                    );
                }
                Quirk::NoCatalog if path == "/v2/_catalog" => {
                    action = Action::Answer(
                        "404 Not Found".into(),
                        vec![("Content-Type", "application/json".into())],
                        error_body("UNSUPPORTED", "the catalog is not available"),
                        "no-catalog",
                    );
                }
                Quirk::EmptyCatalog if path == "/v2/_catalog" => {
                    action = Action::Answer(
                        "200 OK".into(),
                        vec![("Content-Type", "application/json".into())],
                        r#"{"repositories":[]}"#.into(),
                        "empty-catalog",
                    );
                }
                Quirk::PullRateLimit if method == "GET" && path.contains("/manifests/") => {
                    action = Action::Answer(
                        "429 Too Many Requests".into(),
                        vec![
                            ("Content-Type", "application/json".into()),
                            ("ratelimit-limit", "100;w=21600".into()),
                            ("ratelimit-remaining", "0;w=21600".into()),
                        ],
                        error_body(
                            "TOOMANYREQUESTS",
                            "You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit",
                        ),
                        "rate-limited",
                    );
                }
                Quirk::BodyLimit(max) if head.content_length().is_some_and(|n| n > *max) => {
                    action = Action::TooLarge;
                }
                Quirk::RedirectBlobs | Quirk::RedirectBlobsNowhere
                    if method == "GET"
                        && path.contains("/blobs/sha256:")
                        && !path.contains("/blobs/uploads/") =>
                {
                    let location = if *q == Quirk::RedirectBlobs {
                        format!("http://localhost:{}{path}", sh.blob_port.unwrap_or(0))
                    } else {
                        format!(
                            "http://127.0.0.1:{}{path}?X-Amz-Expires=300&X-Amz-Signature={REDIRECT_SIGNATURE}",
                            sh.nowhere_port.unwrap_or(0)
                        )
                    };
                    action = Action::Answer(
                        "307 Temporary Redirect".into(),
                        vec![("Location", location)],
                        String::new(),
                        "redirected",
                    );
                }
                Quirk::CutPatch { nth, after_bytes }
                | Quirk::CutPatchDelivered { nth, after_bytes }
                    if is_patch =>
                {
                    let big = head.chunked() || head.content_length().unwrap_or(0) > *after_bytes;
                    if big && !sh.cut_done.load(Ordering::SeqCst) {
                        let n = sh.big_patches.fetch_add(1, Ordering::SeqCst) + 1;
                        if n == *nth {
                            sh.cut_done.store(true, Ordering::SeqCst);
                            let deliver = matches!(q, Quirk::CutPatchDelivered { .. });
                            action = Action::Cut(*after_bytes, deliver);
                        }
                    }
                }
                Quirk::CutEveryPatch { every, after_bytes } if is_patch => {
                    let big = head.chunked() || head.content_length().unwrap_or(0) > *after_bytes;
                    if big {
                        let n = sh.big_patches.fetch_add(1, Ordering::SeqCst) + 1;
                        if n % (*every).max(1) == 0 {
                            action = Action::Cut(*after_bytes, false);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    let mut src = Src {
        buf: rest,
        pos: 0,
        stream: client,
    };
    if let Action::Cut(n, false) = action {
        // Read what the client sends up to the cut, deliver nothing, cut the client.
        rec.body_bytes = drain(&head, &mut src, Some(n));
        let _ = src.stream.shutdown(Shutdown::Both);
        rec.action = "cut".into();
        push_record(sh, rec);
        return Ok(());
    }
    if let Action::TooLarge = action {
        // nginx answers from the head alone and keeps reading (and dropping) what the client
        // still sends before it closes.
        let mut answer = src.stream.try_clone()?;
        respond(
            &mut answer,
            "413 Request Entity Too Large",
            &[
                ("Content-Type", "text/html".into()),
                ("Server", "nginx".into()),
            ],
            NGINX_413,
        );
        let n = drain(&head, &mut src, None);
        let _ = src.stream.shutdown(Shutdown::Both);
        rec.body_bytes = n;
        rec.status = Some(413);
        rec.action = "too-large".into();
        push_record(sh, rec);
        return Ok(());
    }
    if let Action::Answer(status, headers, body, label) = &action {
        let n = drain(&head, &mut src, None);
        rec.body_bytes = n;
        respond(src.stream, status, headers, body);
        rec.status = status
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok());
        rec.location = headers
            .iter()
            .find(|(k, _)| *k == "Location")
            .map(|(_, v)| v.clone());
        rec.action = label.to_string();
        push_record(sh, rec);
        return Ok(());
    }

    // Forward.
    let mut fwd = Head {
        first: head.first.clone(),
        headers: head.headers.clone(),
    };
    if let Action::ForwardAs(t) = &action {
        fwd.first[1] = t.clone();
        rec.action = "mount-stripped".into();
    }
    let mut upstream = match TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) {
        Ok(u) => u,
        Err(_) => {
            respond(src.stream, "502 Bad Gateway", &[], "");
            rec.status = Some(502);
            rec.action = "upstream-error".into();
            push_record(sh, rec);
            return Ok(());
        }
    };
    upstream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let _ = upstream.write_all(&fwd.to_bytes());
    let limit = match action {
        Action::Cut(n, _) => Some(n),
        _ => None,
    };
    let (n, complete) = {
        let mut sink = Lenient {
            inner: Some(&mut upstream),
            failed: false,
        };
        pump_body(&head, &mut src, &mut sink, limit).unwrap_or((0, false))
    };
    rec.body_bytes = n;
    if limit.is_some() {
        // The cut: both sides see the connection end in the middle of the body.
        let _ = upstream.shutdown(Shutdown::Both);
        let _ = src.stream.shutdown(Shutdown::Both);
        rec.action = "cut".into();
        push_record(sh, rec);
        return Ok(());
    }
    if !complete {
        // The client went away mid-body: pass that on.
        let _ = upstream.shutdown(Shutdown::Both);
        rec.action = "client-gone".into();
        push_record(sh, rec);
        return Ok(());
    }
    if is_patch {
        if let (Some(sid), Ok(mut m)) = (session_of(&path), sh.last_patch.lock()) {
            m.insert(sid, n);
        }
    }

    // The response.
    let Some((mut resp, resp_rest)) = read_head(&mut upstream, false).ok().flatten() else {
        respond(src.stream, "502 Bad Gateway", &[], "");
        rec.status = Some(502);
        rec.action = "upstream-error".into();
        push_record(sh, rec);
        return Ok(());
    };
    if sh.quirks.contains(&Quirk::NoContentDigest) {
        resp.remove("docker-content-digest");
    }
    if sh.quirks.contains(&Quirk::AnnounceRateLimit) && path.contains("/manifests/") {
        resp.headers
            .push(("ratelimit-limit".into(), "100;w=21600".into()));
        resp.headers
            .push(("ratelimit-remaining".into(), "99;w=21600".into()));
    }
    if sh.quirks.contains(&Quirk::RelativeLocation) {
        for (k, v) in resp.headers.iter_mut() {
            if k.eq_ignore_ascii_case("location") {
                if let Some(after) = v.split_once("://").map(|(_, a)| a.to_string()) {
                    *v = match after.find('/') {
                        Some(i) => after[i..].to_string(),
                        None => "/".into(),
                    };
                }
            }
        }
    }
    if sh.quirks.contains(&Quirk::LoseCommitAnswer)
        && method == "PUT"
        && path.contains("/blobs/uploads/")
        && query.contains("digest=")
        && resp.first.get(1).map(String::as_str) == Some("201")
    {
        respond(src.stream, "504 Gateway Timeout", &[], "");
        rec.status = Some(504);
        rec.action = "commit-answer-lost".into();
        push_record(sh, rec);
        return Ok(());
    }
    rec.status = resp.first.get(1).and_then(|s| s.parse().ok());
    rec.location = resp.get("location").map(String::from);
    rec.range = resp.get("range").map(String::from);
    rec.content_digest = resp.get("docker-content-digest").is_some();
    let client = src.stream;
    let sent = client
        .write_all(&resp.to_bytes())
        .and_then(|_| client.write_all(&resp_rest))
        .and_then(|_| io::copy(&mut upstream, client).map(|_| ()));
    if sent.is_err() {
        rec.action = format!("{} (client gone during response)", rec.action);
    }
    let _ = client.flush();
    push_record(sh, rec);
    Ok(())
}

/// The second host of [`Quirk::RedirectBlobs`]: records the `Authorization` header (scheme
/// only), then fetches the path from the registry with the harness's credentials and relays
/// the answer (status, `Range`/`Content-Range`, body).
fn handle_blob_host(client: &mut TcpStream, _id: u64, sh: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some((head, _)) = read_head(client, true)? else {
        return Ok(());
    };
    let seen = head.get("authorization").map(|a| {
        format!(
            "{} <redacted>",
            a.split_whitespace().next().unwrap_or_default()
        )
    });
    if let Ok(mut v) = sh.blob_host_auth.lock() {
        v.push(seen);
    }
    let method = head.first[0].clone();
    let target = head.first[1].clone();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\n",
        sh.upstream_host
    );
    if let Some(r) = head.get("range") {
        req.push_str(&format!("Range: {r}\r\n"));
    }
    if let Some(a) = &sh.harness_auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5))?;
    upstream.set_read_timeout(Some(Duration::from_secs(120)))?;
    upstream.write_all(req.as_bytes())?;
    let Some((mut resp, rest)) = read_head(&mut upstream, false)? else {
        respond(client, "502 Bad Gateway", &[], "");
        return Ok(());
    };
    // Object storage knows nothing of the registry.
    resp.remove("docker-content-digest");
    resp.remove("docker-distribution-api-version");
    resp.remove("www-authenticate");
    client.write_all(&resp.to_bytes())?;
    client.write_all(&rest)?;
    io::copy(&mut upstream, client)?;
    client.flush()
}
