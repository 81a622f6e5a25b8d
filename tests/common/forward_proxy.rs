//! [`ForwardProxy`]: a loopback HTTP forward proxy, as sites put between the connected side
//! and the internet: `CONNECT host:port` opens a tunnel (TLS passes through it untouched) and
//! a request in absolute form (`GET http://host:port/path`) is forwarded to its host. It can
//! ask for Basic credentials (`407` without them) and records what each client asked for.
//! Only loopback destinations are reached.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;

struct Shared {
    stop: AtomicBool,
    /// `Basic ...` value a request must carry in `Proxy-Authorization`, when set.
    want_auth: Option<String>,
    /// "CONNECT 127.0.0.1:PORT", "FORWARD 127.0.0.1:PORT" or "REFUSED 407", in order.
    seen: Mutex<Vec<String>>,
    open: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn record(&self, what: String) {
        if let Ok(mut s) = self.seen.lock() {
            s.push(what);
        }
    }
}

/// A forward proxy on 127.0.0.1 (see the module documentation).
///
/// ```ignore
/// let proxy = ForwardProxy::start(Some(("corp", "Pr0xy-pass")));
/// run_airlock([...], &[("HTTPS_PROXY", &proxy.url_with(Some(("corp", "Pr0xy-pass"))))], None);
/// assert!(proxy.seen().contains(&format!("CONNECT {}", reg.host())));
/// ```
pub struct ForwardProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl ForwardProxy {
    /// Starts the proxy; with `auth`, every request must carry those Basic credentials.
    pub fn start(auth: Option<(&str, &str)>) -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("ForwardProxy bind");
        listener
            .set_nonblocking(true)
            .expect("ForwardProxy set_nonblocking");
        let addr = listener.local_addr().expect("ForwardProxy local_addr");
        let want_auth = auth.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            want_auth,
            seen: Mutex::new(Vec::new()),
            open: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("forward-proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn ForwardProxy thread");
        ForwardProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`, with `user:password@` when given: a value for `HTTPS_PROXY`.
    pub fn url_with(&self, auth: Option<(&str, &str)>) -> String {
        match auth {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// What clients asked for so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Stops accepting and cuts every open connection (also done on drop).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Ok(open) = self.shared.open.lock() {
            for s in open.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let sh = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("forward-proxy-conn".into())
                    .spawn(move || serve(client, sh));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads a request head (up to the blank line, 64 KiB at most), byte by byte so that nothing
/// after it is consumed.
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 << 10 || s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(head)
}

fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let mut parts = first.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let auth = lines
        .clone()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("proxy-authorization")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    if let Some(want) = &shared.want_auth {
        if &auth != want {
            shared.record("REFUSED 407".into());
            let _ = client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test proxy\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    }
    let (dest, tunnel) = if method == "CONNECT" {
        (target.to_string(), true)
    } else if let Some(rest) = target.strip_prefix("http://") {
        (
            rest.split('/').next().unwrap_or_default().to_string(),
            false,
        )
    } else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let upstream = dest
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.ip().is_loopback())
        .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok());
    let Some(mut upstream) = upstream else {
        shared.record(format!("BAD GATEWAY {dest}"));
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    if tunnel {
        shared.record(format!("CONNECT {dest}"));
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else {
        shared.record(format!("FORWARD {dest}"));
        // The request goes on as it came (registries accept the absolute form), less the
        // credentials meant for the proxy.
        let kept: Vec<&str> = text
            .trim_end_matches("\r\n")
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("proxy-authorization:"))
            .collect();
        let head = format!("{}\r\n\r\n", kept.join("\r\n"));
        if upstream.write_all(head.as_bytes()).is_err() {
            return;
        }
    }
    if let Ok(mut open) = shared.open.lock() {
        for s in [&client, &upstream] {
            if let Ok(c) = s.try_clone() {
                open.push(c);
            }
        }
    }
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}
