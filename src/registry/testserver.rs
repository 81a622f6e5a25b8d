//! A tiny HTTP/1.1 server for the registry client's unit tests: it plays the answers the
//! real registry of the integration tests cannot give (lapsing tokens, redirects to another
//! host, Retry-After dates). One request per connection; the handler sees every request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Answer {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Answer {
        self.body = b.into();
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

pub struct TestServer {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    /// A server whose handler is told the port it listens on (to name itself, under another
    /// host name, in the URLs it answers with).
    pub fn start_knowing_port(
        handler: impl Fn(&Seen, u16) -> Answer + Send + Sync + 'static,
    ) -> TestServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        TestServer::start_on(l, move |r| handler(r, port))
    }

    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> TestServer {
        TestServer::start_on(TcpListener::bind("127.0.0.1:0").expect("bind"), handler)
    }

    fn start_on(
        l: TcpListener,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> TestServer {
        let addr = l.local_addr().expect("addr").to_string();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(stream) = stream else { return };
                let handler = handler.clone();
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let mut w = match stream.try_clone() {
                        Ok(w) => w,
                        Err(_) => return,
                    };
                    let mut r = BufReader::new(stream);
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let mut headers = HashMap::new();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let req = Seen {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let a = handler(&req);
                    if let Ok(mut s) = seen.lock() {
                        s.push(req);
                    }
                    let mut out = format!("HTTP/1.1 {} X\r\n", a.status);
                    for (k, v) in &a.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str(&format!(
                        "content-length: {}\r\nconnection: close\r\n\r\n",
                        a.body.len()
                    ));
                    let _ = w.write_all(out.as_bytes());
                    let _ = w.write_all(&a.body);
                });
            }
        });
        TestServer { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A client for a test server, over plain HTTP, with quick back-offs.
pub async fn plain(addr: &str, creds: Option<crate::credentials::Credentials>) -> super::Registry {
    let tls = super::TlsOptions {
        plain_http: true,
        ..Default::default()
    };
    let retry = super::RetryPolicy {
        first_delay: std::time::Duration::from_millis(20),
        ..Default::default()
    };
    super::Registry::connect(addr, &tls, creds, retry)
        .await
        .expect("connect")
}
