//! The connection: the HTTP client (TLS trust, with `certs.d`'s CAs and client certificate,
//! connect timeout, no automatic redirects, the environment's forward proxy) and the idle
//! watchdog. Timeouts measure stalls, not sizes: a request fails only when no byte has moved,
//! in either direction, for the idle limit; a 5 GiB upload over a slow link is fine.

use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use reqwest::{RequestBuilder, Response};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long a TCP (and TLS) connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The default idle limit: no byte moved in either direction for this long is a stall.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach one registry.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra CA certificate (PEM) to trust.
    pub ca_cert: Option<PathBuf>,
    /// Skip certificate verification.
    pub insecure: bool,
    /// Speak plain HTTP.
    pub plain_http: bool,
}

/// Formats an error with its chain of causes (reqwest hides the useful part in sources).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Builds the HTTP client for one registry. Redirects are not followed automatically: blob
/// downloads follow them by hand, without the registry's credentials (see `blobs`).
pub fn client(name: &str, tls: &TlsOptions) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &tls.ca_cert {
        let pem = read_pem(ca, "CA certificate")?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| Error::Usage(format!("CA certificate {}: {}", ca.display(), chain(&e))))?;
        builder = builder.add_root_certificate(cert);
    }
    // What docker or podman was given for this registry: its CAs and client certificate.
    let dirs = super::certsd::dirs(&crate::options::ProcessEnv);
    let certs = super::certsd::for_registry(name, &dirs)?;
    for ca in &certs.roots {
        let pem = read_pem(ca, "CA certificate")?;
        let bundle = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Usage(format!("CA certificate {}: {}", ca.display(), chain(&e))))?;
        for cert in bundle {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &certs.identity {
        let mut pem = read_pem(key, "client key")?;
        pem.push(b'\n');
        pem.extend(read_pem(cert, "client certificate")?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            Error::Usage(format!(
                "client certificate {} with key {}: {}",
                cert.display(),
                key.display(),
                chain(&e)
            ))
        })?;
        builder = builder.identity(id);
    }
    if tls.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| Error::registry(name, format!("building HTTP client: {}", chain(&e))))
}

/// The bytes of a PEM file the client is built with; `what` names it in the error.
fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))
}

/// The proxy the environment sends requests for `url` through, as "the proxy
/// http://HOST:PORT (HTTPS_PROXY)", never with the credentials its URL may carry; `None` when
/// it goes direct. reqwest reads `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and
/// their lower-case forms) with hyper-util's matcher, which this asks the same question.
pub fn proxy_for(url: &reqwest::Url) -> Option<String> {
    let uri: hyper::Uri = url.as_str().parse().ok()?;
    let proxy = hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri)?;
    let names: &[&str] = match url.scheme() {
        "https" => &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"],
        _ => &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"],
    };
    let from = names
        .iter()
        .find(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()))
        .copied()
        .unwrap_or("the environment");
    let shown = proxy.uri().to_string();
    Some(format!(
        "the proxy {} ({from})",
        shown.strip_suffix('/').unwrap_or(&shown)
    ))
}

/// The most a request body can leave in socket buffers (ours, the kernel's, a proxy's) once
/// it has been handed over in full, and the slowest link we allow it to drain over: the wait
/// for the answer to an upload gets this much time on top of the idle limit.
const MAX_BUFFERED: u64 = 16 * 1024 * 1024;
const SLOWEST_DRAIN: u64 = 512 * 1024;

/// When bytes last moved for one request, in either direction, and how many body bytes were
/// handed to the connection.
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that bytes moved now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Records `n` request-body bytes handed to the connection.
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// How long the bytes handed over may still take to leave the buffers.
    fn drain_allowance(&self) -> Duration {
        let buffered = self.sent.load(Ordering::Relaxed).min(MAX_BUFFERED);
        Duration::from_millis(buffered * 1000 / SLOWEST_DRAIN)
    }

    /// How long since bytes last moved.
    pub fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// Why one request did not give a response.
#[derive(Debug)]
pub enum SendError {
    /// The connection failed or broke.
    Http(reqwest::Error),
    /// Nothing moved for the idle limit.
    Stalled(Duration),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Http(e) => write!(f, "request failed: {}", chain(e)),
            SendError::Stalled(d) => write!(
                f,
                "stalled: no data moved for {} (--timeout)",
                crate::units::show_duration(*d)
            ),
        }
    }
}

/// `e` with its URL cut to scheme, host and path. A registry's redirect to object storage
/// carries a signature in its query (S3's `X-Amz-Signature`, Azure's `sig`) that works as a
/// credential for some minutes, an upload location may carry session state, and errors end
/// up in logs.
pub fn scrubbed(mut e: reqwest::Error) -> reqwest::Error {
    if let Some(u) = e.url_mut() {
        u.set_query(None);
        u.set_fragment(None);
        let _ = u.set_username("");
        let _ = u.set_password(None);
    }
    e
}

/// Sends a request, failing only when nothing moved for `idle`: the request body (when it is
/// a [`Watched`] stream sharing `activity`) and the wait for the response both count. Once a
/// body has been handed over, the wait for the answer also allows for the buffers between us
/// and the registry to drain (at most 16 MiB at 512 KiB/s).
pub async fn send_watched(
    req: RequestBuilder,
    idle: Duration,
    activity: &Activity,
) -> std::result::Result<Response, SendError> {
    activity.touch();
    let fut = req.send();
    tokio::pin!(fut);
    loop {
        // Body bytes handed over may still sit in socket buffers: give them time to drain.
        let idle = idle + activity.drain_allowance();
        let wait = idle.saturating_sub(activity.idle_for());
        tokio::select! {
            r = &mut fut => {
                activity.touch();
                return r.map_err(|e| SendError::Http(scrubbed(e)));
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {
                if activity.idle_for() >= idle {
                    return Err(SendError::Stalled(idle));
                }
            }
        }
    }
}

/// A stream that records progress on an [`Activity`] each time it yields bytes.
pub struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Activity) -> Self {
        Watched { inner, activity }
    }
}

impl<S, E> Stream for Watched<S>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    type Item = std::result::Result<Bytes, E>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(b))) = &r {
            self.activity.sent(b.len() as u64);
        }
        r
    }
}

/// A response body as a stream that fails with a "stalled" error when no chunk arrives for
/// `idle`, however long the whole body takes.
pub fn idle_body(resp: Response, idle: Duration) -> BoxStream<'static, std::io::Result<Bytes>> {
    let inner = resp.bytes_stream().boxed();
    futures_util::stream::unfold(Some(inner), move |state| async move {
        let mut inner = state?;
        match tokio::time::timeout(idle, inner.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(inner))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(chain(&scrubbed(e)))), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "stalled: no data for {} (--timeout)",
                        crate::units::show_duration(idle)
                    ),
                )),
                None,
            )),
        }
    })
    .boxed()
}

/// Reads a small response body (JSON, manifests), refusing more than `limit` bytes and
/// failing when it stalls for `idle`.
pub async fn read_limited(
    resp: Response,
    limit: u64,
    idle: Duration,
) -> std::result::Result<Vec<u8>, String> {
    let announced = resp.content_length();
    if let Some(len) = announced {
        if len > limit {
            return Err(format!("body of {len} bytes exceeds the limit of {limit}"));
        }
    }
    // Sized once when announced: export keeps every manifest it reads until it is written,
    // and a vector grown by doubling holds up to twice its bytes. (At most 1 MiB ahead of
    // the bytes: a length is only a promise.)
    let mut out = Vec::with_capacity(announced.unwrap_or(0).min(1 << 20) as usize);
    let mut stream = idle_body(resp, idle);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!("body exceeds the limit of {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    out.shrink_to_fit();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A server that reads the request slowly (64 KiB every 8 ms, about 8 MiB/s) and answers
    /// 201 only when the whole body has arrived.
    fn slow_reader_server(body_len: usize) -> (String, std::thread::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = format!("http://{}/", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = 0usize;
            let mut head = Vec::new();
            let mut body_start = None;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                std::thread::sleep(Duration::from_millis(8));
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                got += n;
                if body_start.is_none() {
                    head.extend_from_slice(&buf[..n]);
                    body_start = head
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| p + 4);
                }
                if body_start.is_some_and(|b| got - b >= body_len) {
                    break;
                }
            }
            let _ = s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
            got
        });
        (addr, h)
    }

    #[tokio::test]
    async fn a_slow_upload_longer_than_the_idle_limit_completes() {
        // 24 MiB at about 8 MiB/s: some 3 s for the request, with a 1 s idle limit.
        let len = 24 * 1024 * 1024;
        let (url, h) = slow_reader_server(len);
        let client = client("test", &TlsOptions::default()).expect("client");
        let activity = Activity::new();
        let chunks: Vec<std::io::Result<Bytes>> = (0..len / (64 * 1024))
            .map(|_| Ok(Bytes::from(vec![7u8; 64 * 1024])))
            .collect();
        let body = Watched::new(futures_util::stream::iter(chunks), activity.clone());
        let req = client
            .put(url)
            .header("content-length", len.to_string())
            .body(reqwest::Body::wrap_stream(body));
        let started = Instant::now();
        let resp = send_watched(req, Duration::from_secs(1), &activity)
            .await
            .expect("the upload must complete");
        assert_eq!(resp.status().as_u16(), 201);
        assert!(h.join().expect("server") >= len);
        assert!(started.elapsed() >= Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_stall() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            std::thread::sleep(Duration::from_secs(2));
            drop(s);
        });
        let client = client("test", &TlsOptions::default()).expect("client");
        let activity = Activity::new();
        let started = Instant::now();
        let r = send_watched(client.get(url), Duration::from_millis(300), &activity).await;
        assert!(matches!(r, Err(SendError::Stalled(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_millis(1500));
        let _ = h.join();
    }

    #[tokio::test]
    async fn a_body_that_stops_mid_way_is_a_stall() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf");
            std::thread::sleep(Duration::from_secs(2));
        });
        let client = client("test", &TlsOptions::default()).expect("client");
        let resp = client.get(url).send().await.expect("headers");
        let err = read_limited(resp, 1000, Duration::from_millis(300))
            .await
            .expect_err("must stall");
        assert!(err.contains("stalled"), "{err}");
        let _ = h.join();
    }

    #[tokio::test]
    async fn errors_never_show_a_urls_query_or_credentials() {
        // Refused: nothing listens on the port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let client = client("test", &TlsOptions::default()).expect("client");
        let url =
            format!("http://u:pw-S3cret@127.0.0.1:{port}/store/blob?X-Amz-Signature=s1g-S3cret");
        let r = send_watched(client.get(url), Duration::from_secs(5), &Activity::new()).await;
        let msg = match r {
            Err(e) => e.to_string(),
            Ok(resp) => panic!("a closed port answered {}", resp.status()),
        };
        assert!(
            msg.contains(&format!("127.0.0.1:{port}/store/blob")),
            "{msg}"
        );
        assert!(!msg.contains("S3cret"), "{msg}");

        // Cut in the middle of the body.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf");
        });
        let url = format!("http://{addr}/store/blob?sig=s1g-S3cret");
        let resp = client.get(url).send().await.expect("headers");
        let _ = h.join();
        let err = read_limited(resp, 1000, Duration::from_secs(5))
            .await
            .expect_err("a cut body fails");
        assert!(!err.contains("S3cret"), "{err}");
    }
}
