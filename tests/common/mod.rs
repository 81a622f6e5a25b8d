//! Integration-test harness for airlock.
//!
//! Everything here is independent of airlock's own code: registries are real CNCF distribution
//! processes (`docker-registry`), content is pushed with a small raw-HTTP client built on
//! reqwest, and results are witnessed with `skopeo`. Use it from a test file with `mod common;`.
//!
//! The API is synchronous on purpose. Network calls run on a private tokio runtime inside a
//! scoped helper thread, so every function here can also be called from `#[tokio::test]` code
//! (it blocks that worker thread for the duration of the call, which is fine in tests).
//!
//! Main pieces:
//! - [`TestRegistry`]: a throw-away registry (plain HTTP, TLS with a test CA, htpasswd auth).
//! - [`RawClient`]: blob/manifest push and read-back by raw HTTP.
//! - [`build_corpus`]: a deterministic set of images of every manifest kind airlock must carry.
//! - [`skopeo_digest`] / [`skopeo_exists`]: the independent witness.
//! - [`FaultProxy`]: a loopback TCP proxy that answers 503/429, disconnects or truncates
//!   (faults need a plain-HTTP registry behind it; TLS is piped through untouched).
//! - [`ThrottleProxy`]: a loopback TCP proxy holding each connection to a bandwidth, counting
//!   bytes each way; it can also freeze (a stalled link). TLS passes through untouched.
//! - [`run_airlock`]: runs the binary with an isolated environment and no TTY.
#![allow(dead_code)]

mod airlock;
mod bundle;
mod corpus;
mod media;
mod pki;
mod proxy;
mod raw;
mod registry;
mod skopeo;
mod throttle;
mod util;

// Re-exported so that `use common::*` and `common::name` keep working (a test file that uses
// nothing from one of them would otherwise warn).
#[allow(unused_imports)]
pub use airlock::*;
#[allow(unused_imports)]
pub use bundle::*;
#[allow(unused_imports)]
pub use corpus::*;
#[allow(unused_imports)]
pub use media::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use skopeo::*;
#[allow(unused_imports)]
pub use throttle::*;
#[allow(unused_imports)]
pub use util::*;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

// ---------------------------------------------------------------------------------------------
// TokenServer
// ---------------------------------------------------------------------------------------------

const TOKEN_SERVICE: &str = "airlock-test";
const TOKEN_ISSUER: &str = "airlock-test-issuer";

/// A minimal Docker token server for a token-auth [`TestRegistry`]: checks HTTP basic
/// credentials and answers `{"token": JWT}` with an RS256 JWT (signed by the `openssl` CLI,
/// certificate in the `x5c` header) granting exactly the requested scopes. Loopback only;
/// stops on drop.
pub struct TokenServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    issued: Arc<AtomicUsize>,
}

impl TokenServer {
    pub fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        fs::create_dir_all(dir).expect("token dir");
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=airlock-test-token-signer"])
            .arg("-keyout")
            .arg(dir.join("token.key"))
            .arg("-out")
            .arg(dir.join("token.crt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl req");
        assert!(
            status.success(),
            "openssl could not make the token signing key"
        );
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(dir.join("token.crt"))
            .output()
            .expect("run openssl x509");
        assert!(der.status.success());
        use base64::Engine as _;
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("token server address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let (stop2, issued2) = (stop.clone(), issued.clone());
        let key = dir.join("token.key");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let user = user.to_string();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = serve_token(stream, &expected, &user, &x5c, &key, &issued2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenServer {
            port,
            stop,
            thread: Some(thread),
            issued,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// How many tokens were handed out.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token(
    mut stream: TcpStream,
    expected_auth: &str,
    user: &str,
    x5c: &str,
    key: &Path,
    issued: &AtomicUsize,
) -> io::Result<()> {
    use base64::Engine as _;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let authorized = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("authorization") && v.trim() == expected_auth
        })
    });
    let respond = |stream: &mut TcpStream, status: &str, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if !authorized {
        respond(
            &mut stream,
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#,
        );
        return Ok(());
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", v)) = pair.split_once('=') else {
            continue;
        };
        let scope = percent_decode(v);
        let mut parts = scope.splitn(3, ':');
        if let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        {
            access.push(json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": user,
        "aud": TOKEN_SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", issued.load(Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(signing_input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        respond(&mut stream, "500 Internal Server Error", "{}");
        return Ok(());
    }
    let jwt = format!("{signing_input}.{}", b64.encode(&out.stdout));
    issued.fetch_add(1, Ordering::SeqCst);
    let body = json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string();
    respond(&mut stream, "200 OK", &body);
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
