//! The token server of token-auth test registries: a minimal Docker token service issuing
//! RS256 JWTs per scope, with a configurable lifetime (`expires_in`, also the JWT `exp`),
//! optional anonymous pull tokens (as Docker Hub gives), OAuth2's refresh-token grant for an
//! identity token (as `az acr login` leaves in docker's config), and a log of every token
//! issued.
//!
//! A [`TestRegistry`] started with [`RegistryOpts::with_token_auth`] owns one; reach it with
//! [`TestRegistry::token_control`] to change its options while it runs and to read its log.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::TestRegistry;

// ---------------------------------------------------------------------------------------------
// TokenServer
// ---------------------------------------------------------------------------------------------

pub const TOKEN_SERVICE: &str = "airlock-test";
pub const TOKEN_ISSUER: &str = "airlock-test-issuer";

/// How a [`TokenServer`] issues tokens. The default is the historical behaviour: 300 s tokens,
/// credentials required.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// Lifetime of a token: `expires_in` in the JSON answer, and the JWT `exp` (rounded up to
    /// the next whole second, as `exp` is in seconds).
    pub expires_in: Duration,
    /// Leave `expires_in` out of the JSON answer (clients must then assume 60 s); the JWT
    /// still carries `exp` from [`TokenOptions::expires_in`].
    pub omit_expires_in: bool,
    /// Answer requests without credentials with a token granting only `pull` on the requested
    /// repositories (like Docker Hub's anonymous tokens). Wrong credentials are still refused.
    pub anonymous_pull: bool,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            expires_in: Duration::from_secs(300),
            omit_expires_in: false,
            anonymous_pull: false,
        }
    }
}

/// One token handed out, as recorded by the token server.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// When it was issued.
    pub at: SystemTime,
    /// The authenticated account, or None for an anonymous token.
    pub account: Option<String>,
    /// Granted scopes, `repository:NAME:ACTIONS`, in request order.
    pub scopes: Vec<String>,
    /// The `expires_in` promised (also when left out of the answer).
    pub expires_in: Duration,
    /// The JWT `exp` claim (Unix seconds).
    pub exp: u64,
    /// The JWT `jti` claim.
    pub jti: String,
    /// Asked for with OAuth2's refresh-token grant (a `POST` carrying the identity token)
    /// rather than a `GET` with Basic credentials.
    pub by_refresh_token: bool,
}

impl IssuedToken {
    /// When the token stops being valid by its `expires_in` (issue time + lifetime).
    pub fn expires_at(&self) -> SystemTime {
        self.at + self.expires_in
    }

    /// The granted scopes sorted and joined with a space: a key for "the same scope set".
    pub fn scope_key(&self) -> String {
        let mut s = self.scopes.clone();
        s.sort();
        s.join(" ")
    }

    pub fn is_anonymous(&self) -> bool {
        self.account.is_none()
    }
}

struct TokenShared {
    port: u16,
    /// The identity token (OAuth2 refresh token) the server accepts for its user.
    identity_token: String,
    opts: Mutex<TokenOptions>,
    log: Mutex<Vec<IssuedToken>>,
    issued: AtomicUsize,
    stop: AtomicBool,
}

/// Token servers alive in this test process, by port (looked up from a registry's challenge).
static TOKEN_SERVERS: Mutex<Vec<(u16, Weak<TokenShared>)>> = Mutex::new(Vec::new());

/// A minimal Docker token server for a token-auth [`TestRegistry`]: checks HTTP basic
/// credentials and answers `{"token": JWT, "expires_in": N}` with an RS256 JWT (signed by the
/// `openssl` CLI, certificate in the `x5c` header) granting exactly the requested scopes.
/// Loopback only; one thread per connection; stops on drop.
pub struct TokenServer {
    shared: Arc<TokenShared>,
    thread: Option<JoinHandle<()>>,
}

/// A handle on a running [`TokenServer`]: change its options, read its log.
#[derive(Clone)]
pub struct TokenControl {
    shared: Arc<TokenShared>,
}

struct Signer {
    x5c: String,
    key: PathBuf,
    expected_auth: String,
    user: String,
}

impl TokenServer {
    /// A token server with the default [`TokenOptions`] for `user`/`pass`.
    pub fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        TokenServer::start_with(dir, user, pass, TokenOptions::default())
    }

    pub fn start_with(dir: &Path, user: &str, pass: &str, opts: TokenOptions) -> TokenServer {
        use base64::Engine as _;
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
        let signer = Arc::new(Signer {
            x5c: base64::engine::general_purpose::STANDARD.encode(&der.stdout),
            key: dir.join("token.key"),
            expected_auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ),
            user: user.to_string(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("token server address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(TokenShared {
            port,
            identity_token: format!("identity-{port}-{}", signer.x5c.len()),
            opts: Mutex::new(opts),
            log: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        if let Ok(mut all) = TOKEN_SERVERS.lock() {
            all.retain(|(_, w)| w.strong_count() > 0);
            all.push((port, Arc::downgrade(&shared)));
        }
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let (sh2, signer2) = (sh.clone(), signer.clone());
                        std::thread::spawn(move || {
                            let _ = serve_token(stream, &signer2, &sh2);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenServer {
            shared,
            thread: Some(thread),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.shared.port)
    }

    /// How many tokens were handed out.
    pub fn issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// A handle to change options and read the log while the server runs.
    pub fn control(&self) -> TokenControl {
        TokenControl {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TokenControl {
    /// The token server whose realm is on `port`, if it runs in this process.
    pub fn for_port(port: u16) -> Option<TokenControl> {
        let all = TOKEN_SERVERS.lock().ok()?;
        all.iter()
            .rev()
            .find(|(p, _)| *p == port)
            .and_then(|(_, w)| w.upgrade())
            .map(|shared| TokenControl { shared })
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.shared.port)
    }

    /// The identity token docker would keep in config.json for this server's user: the
    /// server exchanges it for access tokens with OAuth2's refresh-token grant.
    pub fn identity_token(&self) -> String {
        self.shared.identity_token.clone()
    }

    pub fn options(&self) -> TokenOptions {
        self.shared
            .opts
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default()
    }

    /// Replace the options; tokens issued from now on follow them.
    pub fn set_options(&self, opts: TokenOptions) {
        if let Ok(mut o) = self.shared.opts.lock() {
            *o = opts;
        }
    }

    /// Tokens issued from now on live `d` (JSON `expires_in` and JWT `exp`).
    pub fn set_expires_in(&self, d: Duration) {
        let mut o = self.options();
        o.expires_in = d;
        self.set_options(o);
    }

    /// Allow (or not) anonymous pull tokens from now on.
    pub fn set_anonymous_pull(&self, allow: bool) {
        let mut o = self.options();
        o.anonymous_pull = allow;
        self.set_options(o);
    }

    /// How many tokens were handed out.
    pub fn issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Every token issued so far, in issue order.
    pub fn log(&self) -> Vec<IssuedToken> {
        self.shared
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// Forget the log (e.g. after setting up content, before the job under test).
    pub fn clear_log(&self) {
        if let Ok(mut l) = self.shared.log.lock() {
            l.clear();
        }
    }

    /// The log as text, one token per line, relative to the first token's time.
    pub fn describe_log(&self) -> String {
        describe_tokens(&self.log())
    }
}

/// One line per token: `+1.234s anonymous|ACCOUNT exp+2s [scopes]`.
pub fn describe_tokens(log: &[IssuedToken]) -> String {
    let Some(t0) = log.first().map(|t| t.at) else {
        return "(no tokens issued)".into();
    };
    let mut s = String::new();
    for t in log {
        let rel = t.at.duration_since(t0).unwrap_or_default();
        s.push_str(&format!(
            "+{:.3}s {} expires_in={:?} exp={} [{}]\n",
            rel.as_secs_f64(),
            t.account.as_deref().unwrap_or("anonymous"),
            t.expires_in,
            t.exp,
            t.scopes.join(" ")
        ));
    }
    s
}

impl TestRegistry {
    /// The token server of a token-auth registry (found through the realm of its challenge).
    /// Panics when the registry does not use token auth.
    pub fn token_control(&self) -> TokenControl {
        let r = self.client().request("GET", "/v2/", &[], None);
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        let port = challenge_realm_port(&challenge).unwrap_or_else(|| {
            panic!(
                "registry {} has no Bearer challenge with a loopback realm: {challenge:?}",
                self.host()
            )
        });
        TokenControl::for_port(port)
            .unwrap_or_else(|| panic!("no token server of this test process on port {port}"))
    }
}

/// The port of `realm="http://127.0.0.1:PORT/..."` in a Bearer challenge.
fn challenge_realm_port(challenge: &str) -> Option<u16> {
    let rest = &challenge[challenge.find("realm=\"")? + 7..];
    let realm = &rest[..rest.find('"')?];
    let hostport = realm.strip_prefix("http://")?.split('/').next()?;
    hostport.rsplit_once(':')?.1.parse().ok()
}

fn serve_token(mut stream: TcpStream, signer: &Signer, sh: &TokenShared) -> io::Result<()> {
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
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    // OAuth2's refresh-token grant: a form in the body of a POST.
    let mut form = Vec::new();
    if method == "POST" {
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        form = String::from_utf8_lossy(&body)
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect::<Vec<_>>();
    }
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let auth_header = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_string())
    });
    let respond = |stream: &mut TcpStream, status: &str, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    let opts = sh.opts.lock().map(|o| o.clone()).unwrap_or_default();
    let by_refresh_token = method == "POST";
    let account = if by_refresh_token {
        if field("grant_type").as_deref() != Some("refresh_token")
            || field("refresh_token").as_deref() != Some(sh.identity_token.as_str())
        {
            respond(
                &mut stream,
                "401 Unauthorized",
                r#"{"error":"invalid_grant"}"#,
            );
            return Ok(());
        }
        Some(signer.user.clone())
    } else {
        match auth_header {
            Some(a) if a == signer.expected_auth => Some(signer.user.clone()),
            None if opts.anonymous_pull => None,
            _ => {
                respond(
                    &mut stream,
                    "401 Unauthorized",
                    r#"{"details":"bad credentials"}"#,
                );
                return Ok(());
            }
        }
    };
    // GET: one `scope` parameter each; the grant's form: space-separated in one.
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let asked: Vec<String> = if by_refresh_token {
        field("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    } else {
        query
            .split('&')
            .filter_map(|p| match p.split_once('=') {
                Some(("scope", v)) => Some(percent_decode(v)),
                _ => None,
            })
            .collect()
    };
    let mut access = Vec::new();
    let mut scopes = Vec::new();
    for scope in asked {
        let mut parts = scope.splitn(3, ':');
        if let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        {
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| account.is_some() || *a == "pull")
                .collect();
            if actions.is_empty() {
                continue;
            }
            scopes.push(format!("{kind}:{name}:{}", actions.join(",")));
            access.push(json!({"type": kind, "name": name, "actions": actions}));
        }
    }
    let now = SystemTime::now();
    let now_f = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let secs = now_f as u64;
    let exp = (now_f + opts.expires_in.as_secs_f64()).ceil() as u64;
    let seq = sh.issued.fetch_add(1, Ordering::SeqCst);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [signer.x5c]});
    let jti = format!("{secs}-{seq}");
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": account.clone().unwrap_or_default(),
        "aud": TOKEN_SERVICE,
        "exp": exp,
        "nbf": secs.saturating_sub(10),
        "iat": secs,
        "jti": jti,
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&signer.key)
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
    let body = if opts.omit_expires_in {
        json!({"token": jwt, "access_token": jwt})
    } else {
        // Whole seconds, as registries send it; sub-second lifetimes are rounded up to 1 s.
        let secs = opts.expires_in.as_secs_f64().ceil().max(1.0) as u64;
        json!({"token": jwt, "access_token": jwt, "expires_in": secs})
    };
    if let Ok(mut log) = sh.log.lock() {
        log.push(IssuedToken {
            at: now,
            account,
            scopes,
            expires_in: opts.expires_in,
            exp,
            jti,
            by_refresh_token,
        });
    }
    respond(&mut stream, "200 OK", &body.to_string());
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
