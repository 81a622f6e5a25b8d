//! [`ThrottleProxy`]: a loopback TCP proxy that holds each connection to a bandwidth in each
//! direction (a token bucket refilled continuously, spent in small slices so the flow is
//! smooth), counts the bytes each way, and can freeze to play a link that stalls.
//!
//! It works on bytes, not on HTTP: TLS passes through untouched and every request of a
//! keep-alive connection shares that connection's budget.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::registry::{Endpoint, TestRegistry};

/// The largest slice moved at once; at most 1/50 s worth of the rate.
const MAX_SLICE: usize = 16 * 1024;
const MIN_SLICE: usize = 256;
/// The socket buffer asked for on the client side of the proxy, so that a client's writes
/// track what the proxy really forwards instead of vanishing into megabytes of kernel buffer.
const CLIENT_SOCKET_BUFFER: i32 = 32 * 1024;
/// The longest single sleep, so that stopping the proxy is noticed promptly.
const MAX_NAP: Duration = Duration::from_millis(20);

struct Shared {
    stop: AtomicBool,
    upstream: SocketAddr,
    /// Bytes per second per connection and direction; 0 means unlimited.
    rate: AtomicU64,
    /// Freeze once this many bytes went downstream in total (`u64::MAX`: never).
    freeze_after_down: AtomicU64,
    frozen: AtomicBool,
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicUsize,
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A loopback TCP proxy that limits each connection to `bytes_per_sec` in each direction.
///
/// ```ignore
/// let proxy = ThrottleProxy::for_registry(&reg, 1024 * 1024); // 1 MiB/s
/// run_airlock(["import", b, "--registry", &proxy.host(), "--timeout", "2s"], &[], None);
/// assert!(proxy.bytes_up() > 6 << 20);
/// ```
///
/// [`ThrottleProxy::freeze`] (or [`ThrottleProxy::freeze_after_down`]) stops every byte in
/// both directions while connections stay open and new ones are still accepted: a stalled
/// link, not a refused one. Dropping the proxy (or [`ThrottleProxy::stop`]) stops the
/// listener and cuts open connections.
pub struct ThrottleProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    tls_cert_dir: Option<PathBuf>,
    creds: Option<(String, String)>,
}

impl ThrottleProxy {
    /// Proxy to `upstream` (`127.0.0.1:PORT`; loopback only) at `bytes_per_sec` per connection
    /// and direction (0: unlimited).
    pub fn start(upstream: &str, bytes_per_sec: u64) -> ThrottleProxy {
        let upstream: SocketAddr = upstream
            .parse()
            .unwrap_or_else(|e| panic!("ThrottleProxy upstream {upstream:?} is not ip:port: {e}"));
        assert!(
            upstream.ip().is_loopback(),
            "ThrottleProxy only forwards to loopback addresses"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("ThrottleProxy bind 127.0.0.1:0");
        // Accepted sockets inherit the receive buffer (and the window it advertises).
        set_socket_buffer(&listener, SO_RCVBUF, CLIENT_SOCKET_BUFFER);
        listener
            .set_nonblocking(true)
            .expect("ThrottleProxy set_nonblocking");
        let addr = listener.local_addr().expect("ThrottleProxy local_addr");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            upstream,
            rate: AtomicU64::new(bytes_per_sec),
            freeze_after_down: AtomicU64::new(u64::MAX),
            frozen: AtomicBool::new(false),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("throttle-proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn ThrottleProxy thread");
        ThrottleProxy {
            addr,
            shared,
            accept: Some(accept),
            tls_cert_dir: None,
            creds: None,
        }
    }

    /// Proxy in front of `reg` (plain or TLS; its CA and credentials serve the proxy too, as
    /// the certificate names 127.0.0.1).
    pub fn for_registry(reg: &TestRegistry, bytes_per_sec: u64) -> ThrottleProxy {
        let mut p = ThrottleProxy::start(&reg.host(), bytes_per_sec);
        p.tls_cert_dir = Endpoint::tls_cert_dir(reg);
        p.creds = reg.credentials();
        p
    }

    /// Change the rate for every connection, open ones included (0: unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Stop moving bytes, in both directions, on every connection (open and future ones).
    pub fn freeze(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// Move bytes again after [`ThrottleProxy::freeze`].
    pub fn thaw(&self) {
        self.shared
            .freeze_after_down
            .store(u64::MAX, Ordering::SeqCst);
        self.shared.frozen.store(false, Ordering::SeqCst);
    }

    /// Freeze once `n` bytes in total went downstream (registry to client): a transfer that
    /// stops in the middle of a body.
    pub fn freeze_after_down(&self, n: u64) {
        self.shared.freeze_after_down.store(n, Ordering::SeqCst);
        if self.shared.down.load(Ordering::SeqCst) >= n {
            self.freeze();
        }
    }

    pub fn is_frozen(&self) -> bool {
        self.shared.frozen.load(Ordering::SeqCst)
    }

    /// Bytes forwarded client → upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Bytes forwarded upstream → client so far.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stop accepting and cut every open connection (also done on drop).
    pub fn stop(&mut self) {
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

impl Endpoint for ThrottleProxy {
    fn host(&self) -> String {
        ThrottleProxy::host(self)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        self.tls_cert_dir.clone()
    }
    fn creds(&self) -> Option<(String, String)> {
        self.creds.clone()
    }
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    while !sh.stopped() {
        match listener.accept() {
            Ok((client, peer)) => {
                if !peer.ip().is_loopback() {
                    continue;
                }
                let _ = client.set_nonblocking(false);
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                register(&sh, id, &client);
                let sh2 = sh.clone();
                let _ = std::thread::Builder::new()
                    .name("throttle-proxy-conn".into())
                    .spawn(move || {
                        serve(client, id, &sh2);
                        if let Ok(mut conns) = sh2.conns.lock() {
                            conns.remove(&id);
                        }
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Keep a handle on a socket so that stopping the proxy can cut it.
fn register(sh: &Shared, id: u64, s: &TcpStream) {
    if let (Ok(c), Ok(mut conns)) = (s.try_clone(), sh.conns.lock()) {
        conns.entry(id).or_default().push(c);
    }
}

/// Connect upstream and pump both directions until both ends are closed.
fn serve(client: TcpStream, id: u64, sh: &Arc<Shared>) {
    set_socket_buffer(&client, SO_SNDBUF, CLIENT_SOCKET_BUFFER);
    let Ok(upstream) = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    register(sh, id, &upstream);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let sh2 = sh.clone();
    let up = std::thread::Builder::new()
        .name("throttle-proxy-up".into())
        .spawn(move || pump(c2, u2, Direction::Up, &sh2));
    pump(upstream, client, Direction::Down, sh);
    if let Ok(t) = up {
        let _ = t.join();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// Bytes per slice at `rate`: 1/50 s worth, within [MIN_SLICE, MAX_SLICE].
fn slice_for(rate: u64) -> usize {
    if rate == 0 {
        return MAX_SLICE;
    }
    ((rate / 50) as usize).clamp(MIN_SLICE, MAX_SLICE)
}

/// One direction's token bucket: refills at the rate, holds at most one slice.
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new() -> TokenBucket {
        TokenBucket {
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Wait until `want` bytes (at most one slice) may go; returns how many, or None when
    /// the proxy stops meanwhile.
    fn take(&mut self, want: usize, sh: &Shared) -> Option<usize> {
        loop {
            if sh.stopped() {
                return None;
            }
            let rate = sh.rate.load(Ordering::SeqCst);
            let now = Instant::now();
            if rate == 0 {
                self.last = now;
                return Some(want.min(MAX_SLICE));
            }
            let slice = slice_for(rate);
            let elapsed = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate as f64).min(slice as f64);
            self.last = now;
            let need = want.min(slice);
            if self.tokens >= need as f64 {
                self.tokens -= need as f64;
                return Some(need);
            }
            let wait = Duration::from_secs_f64((need as f64 - self.tokens) / rate as f64);
            std::thread::sleep(wait.min(MAX_NAP));
        }
    }
}

/// Sleep while the proxy is frozen; false when it stops meanwhile.
fn wait_while_frozen(sh: &Shared) -> bool {
    while sh.frozen.load(Ordering::SeqCst) {
        if sh.stopped() {
            return false;
        }
        std::thread::sleep(MAX_NAP);
    }
    !sh.stopped()
}

/// Copy `from` → `to` under the bucket, counting; half-closes `to` when `from` ends.
fn pump(mut from: TcpStream, mut to: TcpStream, dir: Direction, sh: &Shared) {
    let mut bucket = TokenBucket::new();
    let mut buf = vec![0u8; MAX_SLICE];
    'outer: loop {
        if !wait_while_frozen(sh) {
            break;
        }
        let slice = slice_for(sh.rate.load(Ordering::SeqCst));
        let n = match from.read(&mut buf[..slice]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0;
        while off < n {
            if !wait_while_frozen(sh) {
                break 'outer;
            }
            let mut want = n - off;
            if dir == Direction::Down {
                // Never let more than the freeze threshold through.
                let limit = sh.freeze_after_down.load(Ordering::SeqCst);
                let room = limit.saturating_sub(sh.down.load(Ordering::SeqCst));
                if room == 0 {
                    sh.frozen.store(true, Ordering::SeqCst);
                    continue;
                }
                want = want.min(usize::try_from(room).unwrap_or(usize::MAX));
            }
            let Some(k) = bucket.take(want, sh) else {
                break 'outer;
            };
            // Counted before the write, so that a peer that has read these bytes always
            // finds them counted; taken back if the write fails.
            let counter = match dir {
                Direction::Up => &sh.up,
                Direction::Down => &sh.down,
            };
            counter.fetch_add(k as u64, Ordering::SeqCst);
            if to.write_all(&buf[off..off + k]).is_err() {
                counter.fetch_sub(k as u64, Ordering::SeqCst);
                break 'outer;
            }
            off += k;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

const SO_SNDBUF: i32 = 7;
const SO_RCVBUF: i32 = 8;

/// Best effort `setsockopt(SOL_SOCKET, opt, bytes)` (Linux; the standard library has no
/// setter for socket buffer sizes and the harness adds no dependency for it).
#[cfg(target_os = "linux")]
fn set_socket_buffer(sock: &impl std::os::fd::AsRawFd, opt: i32, bytes: i32) {
    const SOL_SOCKET: i32 = 1;
    extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            value: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
    }
    // SAFETY: a valid open descriptor, a pointer to an i32 that outlives the call, its size.
    unsafe {
        setsockopt(
            sock.as_raw_fd(),
            SOL_SOCKET,
            opt,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_socket_buffer<T>(_sock: &T, _opt: i32, _bytes: i32) {}
