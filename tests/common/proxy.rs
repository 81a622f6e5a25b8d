//! [`FaultProxy`]: a loopback TCP proxy that answers 503/429, disconnects or truncates.

use std::io;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use std::path::PathBuf;

use super::registry::{Endpoint, TestRegistry};

// ---------------------------------------------------------------------------------------------
// FaultProxy
// ---------------------------------------------------------------------------------------------

/// What the proxy does to a request selected by its [`FaultPlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `HTTP/1.1 503 Service Unavailable`, `Connection: close`.
    ServiceUnavailable,
    /// `HTTP/1.1 429 Too Many Requests` with `Retry-After: <secs>`, `Connection: close`.
    TooManyRequests { retry_after_secs: u32 },
    /// Close the connection without any response.
    Disconnect,
    /// Forward, but cut the response after `after_bytes` bytes of its body, then close.
    TruncateBody { after_bytes: usize },
    /// Forward without the request's `Range` header (a registry or CDN that ignores ranges
    /// and always sends the whole blob).
    DropRange,
}

/// Which requests get the fault: among requests matching the filters, skip the first `skip`,
/// then fault the next `count`; everything else is forwarded.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub fault: Fault,
    pub count: usize,
    pub skip: usize,
    /// Only requests whose method equals this (e.g. "GET").
    pub method: Option<String>,
    /// Only requests whose path contains this (e.g. "/blobs/").
    pub path_contains: Option<String>,
}

impl FaultPlan {
    pub fn new(fault: Fault, count: usize) -> FaultPlan {
        FaultPlan {
            fault,
            count,
            skip: 0,
            method: None,
            path_contains: None,
        }
    }

    /// Forward everything.
    pub fn none() -> FaultPlan {
        FaultPlan::new(Fault::ServiceUnavailable, 0)
    }

    pub fn skip(mut self, n: usize) -> FaultPlan {
        self.skip = n;
        self
    }

    pub fn method(mut self, m: &str) -> FaultPlan {
        self.method = Some(m.to_string());
        self
    }

    pub fn path_contains(mut self, s: &str) -> FaultPlan {
        self.path_contains = Some(s.to_string());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

struct ProxyShared {
    stop: AtomicBool,
    upstream: SocketAddr,
    plan: Mutex<FaultPlan>,
    matched: AtomicUsize,
    requests: AtomicUsize,
    injected: AtomicUsize,
    log: Mutex<Vec<String>>,
    conns: Mutex<std::collections::HashMap<u64, Vec<TcpStream>>>,
    next_conn: std::sync::atomic::AtomicU64,
}

/// A loopback TCP proxy in front of a plain-HTTP registry that injects faults.
///
/// It reads each request head, counts it, and either answers with the fault or forwards the
/// request (rewritten to `Connection: close`, so every request uses its own connection and is
/// counted) and pipes bytes both ways for the rest of that connection. TLS connections
/// (first byte 0x16) are piped untouched and not counted, so faults need a plain registry.
/// Dropping the proxy stops the listener and cuts open connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Proxy to `upstream` (`127.0.0.1:PORT`; loopback only).
    pub fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .parse()
            .unwrap_or_else(|e| panic!("FaultProxy upstream {upstream:?} is not ip:port: {e}"));
        assert!(
            upstream.ip().is_loopback(),
            "FaultProxy only forwards to loopback addresses"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("FaultProxy bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("FaultProxy set_nonblocking");
        let addr = listener.local_addr().expect("FaultProxy local_addr");
        let shared = Arc::new(ProxyShared {
            stop: AtomicBool::new(false),
            upstream,
            plan: Mutex::new(plan),
            matched: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(std::collections::HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn FaultProxy thread");
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Proxy in front of `reg` (which should be plain HTTP for faults to apply).
    pub fn for_registry(reg: &TestRegistry, plan: FaultPlan) -> FaultProxy {
        FaultProxy::start(&reg.host(), plan)
    }

    /// 503 to the first `n` requests, then forward.
    pub fn fail_503(reg: &TestRegistry, n: usize) -> FaultProxy {
        FaultProxy::for_registry(reg, FaultPlan::new(Fault::ServiceUnavailable, n))
    }

    /// 429 with `Retry-After: 1` to the first `n` requests, then forward.
    pub fn throttle_429(reg: &TestRegistry, n: usize) -> FaultProxy {
        FaultProxy::for_registry(
            reg,
            FaultPlan::new(
                Fault::TooManyRequests {
                    retry_after_secs: 1,
                },
                n,
            ),
        )
    }

    /// Replace the plan and reset the match counter (request/fault totals keep counting).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().expect("plan lock") = plan;
        self.shared.matched.store(0, Ordering::SeqCst);
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// HTTP requests seen (faulted or forwarded).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn faults_injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// One line per request: `METHOD PATH [range=RANGE] -> forwarded|503|429|disconnect|truncated|range-dropped`.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().expect("log lock").clone()
    }
}

impl Endpoint for FaultProxy {
    fn host(&self) -> String {
        FaultProxy::host(self)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        None
    }
    fn creds(&self) -> Option<(String, String)> {
        None
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Ok(conns) = self.shared.conns.lock() {
            for c in conns.values().flatten() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<ProxyShared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if !peer.ip().is_loopback() {
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                register(&sh, id, &stream);
                let sh2 = sh.clone();
                let _ = std::thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = handle_conn(stream, id, &sh2);
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

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn handle_conn(mut client: TcpStream, id: u64, sh: &ProxyShared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut first = [0u8; 1];
    if client.peek(&mut first)? == 0 {
        return Ok(());
    }
    if first[0] == 0x16 {
        // TLS: no way to see requests; pipe untouched.
        client.set_read_timeout(None)?;
        let upstream = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5))?;
        register(sh, id, &upstream);
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        let t = std::thread::spawn(move || pipe(c2, u2));
        pipe(upstream, client);
        let _ = t.join();
        return Ok(());
    }

    // Read the request head.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    sh.requests.fetch_add(1, Ordering::SeqCst);

    let plan = sh
        .plan
        .lock()
        .map(|p| p.clone())
        .unwrap_or_else(|_| FaultPlan::none());
    let mut fault = None;
    if plan.count > 0 && plan.matches(&method, &path) {
        let i = sh.matched.fetch_add(1, Ordering::SeqCst);
        if i >= plan.skip && i < plan.skip + plan.count {
            fault = Some(plan.fault);
        }
    }
    let outcome = match fault {
        None => "forwarded",
        Some(Fault::ServiceUnavailable) => "503",
        Some(Fault::TooManyRequests { .. }) => "429",
        Some(Fault::Disconnect) => "disconnect",
        Some(Fault::TruncateBody { .. }) => "truncated",
        Some(Fault::DropRange) => "range-dropped",
    };
    if fault.is_some() && !matches!(fault, Some(Fault::TruncateBody { .. })) {
        sh.injected.fetch_add(1, Ordering::SeqCst);
    }
    let range = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("range")
            .then(|| value.trim().to_string())
    });
    if let Ok(mut log) = sh.log.lock() {
        match &range {
            Some(r) => log.push(format!("{method} {path} range={r} -> {outcome}")),
            None => log.push(format!("{method} {path} -> {outcome}")),
        }
    }

    let canned = |status: &str, extra: &str| -> String {
        let body = format!("{status} (injected by airlock test FaultProxy)\n");
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Some(Fault::ServiceUnavailable) => {
            respond_and_linger(client, &canned("503 Service Unavailable", ""));
            return Ok(());
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let extra = format!("Retry-After: {retry_after_secs}\r\n");
            respond_and_linger(client, &canned("429 Too Many Requests", &extra));
            return Ok(());
        }
        Some(Fault::Disconnect) => {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        _ => {}
    }

    // Forward with Connection: close so that the next request comes on a new connection.
    let mut new_head = String::with_capacity(head.len() + 32);
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:")
            || lower.starts_with("keep-alive:")
            || lower.starts_with("proxy-connection:")
            || (fault == Some(Fault::DropRange) && lower.starts_with("range:"))
        {
            continue;
        }
        new_head.push_str(line);
        new_head.push_str("\r\n");
    }
    new_head.push_str("Connection: close\r\n\r\n");
    let mut upstream = match TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) {
        Ok(u) => u,
        Err(_) => {
            respond_and_linger(client, &canned("502 Bad Gateway", ""));
            return Ok(());
        }
    };
    register(sh, id, &upstream);
    upstream.write_all(new_head.as_bytes())?;
    upstream.write_all(&buf[head_end..])?;
    client.set_read_timeout(None)?;
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || pipe(c2, u2));
    match fault {
        Some(Fault::TruncateBody { after_bytes }) => {
            let cut = copy_truncated(&mut upstream, &mut client, after_bytes);
            if cut {
                sh.injected.fetch_add(1, Ordering::SeqCst);
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        _ => {
            let _ = io::copy(&mut upstream, &mut client);
            // The response is complete (Connection: close); end both directions.
            let _ = client.shutdown(Shutdown::Both);
        }
    }
    let _ = up.join();
    Ok(())
}

/// Keep a handle on a socket so that dropping the proxy can cut it.
fn register(sh: &ProxyShared, id: u64, s: &TcpStream) {
    if let (Ok(c), Ok(mut conns)) = (s.try_clone(), sh.conns.lock()) {
        conns.entry(id).or_default().push(c);
    }
}

/// Copy a response, but only `after_bytes` of its body; true when something was cut.
fn copy_truncated(from: &mut TcpStream, to: &mut TcpStream, after_bytes: usize) -> bool {
    let mut head = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut pending = loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = to.write_all(&head);
                return false;
            }
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head) {
            let rest = head.split_off(end);
            if to.write_all(&head).is_err() {
                return false;
            }
            break rest;
        }
    };
    let mut budget = after_bytes;
    loop {
        let allowed = budget.min(pending.len());
        if to.write_all(&pending[..allowed]).is_err() {
            return false;
        }
        budget -= allowed;
        if allowed < pending.len() {
            return true;
        }
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        pending = chunk[..n].to_vec();
    }
}

/// Write a canned response, half-close, and drain what the client still sends (a request
/// body), so the client reads the response instead of a connection reset.
fn respond_and_linger(mut client: TcpStream, response: &str) {
    let _ = client.write_all(response.as_bytes());
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sink = [0u8; 16384];
    while Instant::now() < deadline {
        match client.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}
