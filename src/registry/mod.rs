//! Our client for the OCI distribution API, one concern a file: `transport` (HTTP client, TLS,
//! idle watchdog), `ping` (scheme choice, first contact), `auth` (challenges, token cache),
//! `retry` (the one retry layer), `blobs` (HEAD/GET, redirects), `upload` (POST/PATCH/PUT,
//! mounts, resume), `manifests`, `list` (tags, catalog). This file holds the client itself and
//! the request loop every operation goes through. Manifests are kept as the exact bytes
//! served; blobs are streamed, never held whole.

pub mod auth;
pub mod blobs;
pub mod certsd;
pub mod list;
pub mod manifests;
pub mod ping;
pub mod retry;
#[cfg(test)]
pub(crate) mod testserver;
pub mod transport;
pub mod upload;

use crate::credentials::Credentials;
use crate::digest::Digest;
use crate::error::{Error, Result};
use auth::{Challenge, TokenCache};
use reqwest::header::{AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use retry::{parse_retry_after, retryable_status, Budget};
use std::sync::atomic::AtomicU8;
use std::sync::RwLock;
use std::time::Duration;
use transport::{read_limited, send_watched, Activity};

/// Whether two URLs share scheme, host and port.
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub use blobs::BlobDownload;
pub use retry::RetryPolicy;
pub use transport::TlsOptions;
pub use upload::{BlobSource, MountResult, PartSource};

/// Every manifest media type we accept, in `Accept` header form.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// The largest manifest we read (the distribution registry's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// A pushed or pulled manifest: its exact bytes, media type and digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// A repository scope for tokens.
#[derive(Clone, Debug)]
pub struct Scope(Vec<String>);

impl Scope {
    pub fn none() -> Self {
        Scope(Vec::new())
    }
    pub fn pull(repo: &str) -> Self {
        Scope(vec![format!("repository:{repo}:pull")])
    }
    pub fn push(repo: &str) -> Self {
        Scope(vec![format!("repository:{repo}:pull,push")])
    }
    /// Push on `repo` and pull on `from` (what a cross-repository mount needs).
    pub fn mount(repo: &str, from: &str) -> Self {
        Scope(vec![
            format!("repository:{repo}:pull,push"),
            format!("repository:{from}:pull"),
        ])
    }
    pub fn catalog() -> Self {
        Scope(vec!["registry:catalog:*".into()])
    }
    fn key(&self) -> String {
        self.0.join(" ")
    }
}

/// A client for one registry.
pub struct Registry {
    /// The registry as the user named it (`docker.io`, `127.0.0.1:5000`).
    name: String,
    base: Url,
    http: reqwest::Client,
    creds: Option<Credentials>,
    challenge: RwLock<Option<Challenge>>,
    tokens: TokenCache,
    retry: RetryPolicy,
    /// How this registry takes uploads, learnt from its answers (see `upload`).
    upload_mode: AtomicU8,
    /// Whether it takes a `PUT` carrying a blob, learnt from its answers (see `upload`).
    put_body: AtomicU8,
    /// The largest request body it (or a proxy in front of it) was not seen to refuse with
    /// `413`, learnt from its answers (`u64::MAX` until then; see `upload`).
    body_max: std::sync::atomic::AtomicU64,
    /// Where manifests fetched are kept by digest, and found again (export's cache): set by
    /// [`Registry::cache_manifests_in`].
    manifest_cache: std::sync::OnceLock<std::path::PathBuf>,
    /// Set once a manifest answer announced a pull rate limit (`RateLimit-Limit`, Docker
    /// Hub's, which counts manifest `GET`s and not `HEAD`s): tags are then asked with `HEAD`
    /// first, and a manifest already in the cache is not fetched again.
    announces_rate_limit: std::sync::atomic::AtomicBool,
    /// Set once the registry answered the referrers API with 404: it has none (a registry
    /// that has one must not answer 404), so it is not asked again in this run.
    no_referrers_api: std::sync::atomic::AtomicBool,
}

/// What the caller does with a 401 that survived re-authentication.
#[derive(Clone, Copy, PartialEq, Eq)]
enum On401 {
    /// Fail with an authentication error naming the registry.
    Fail,
    /// Hand the response back (a refused mount falls back to an upload).
    Return,
}

impl Registry {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    fn challenge(&self) -> Option<Challenge> {
        match self.challenge.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_challenge(&self, c: Challenge) {
        match self.challenge.write() {
            Ok(mut g) => *g = Some(c),
            Err(poisoned) => *poisoned.into_inner() = Some(c),
        }
    }

    fn auth_error(&self) -> Error {
        Error::Auth {
            registry: self.name.clone(),
            detail: if self
                .creds
                .as_ref()
                .is_some_and(|c| c.refresh_token().is_some())
            {
                "the registry refused the identity token from the docker config (it may have \
                 expired: log in again, or give a username and password)"
                    .into()
            } else if self.creds.is_some() {
                "the registry refused the username and password".into()
            } else {
                "the registry requires credentials and none were given".into()
            },
        }
    }

    /// Whether `url` is on the registry's own origin: the only one its credentials go to (a
    /// `Location` or `Link` naming another host, or plain HTTP, gets none, and its 401 teaches
    /// nothing about how to log in).
    fn own(&self, url: &Url) -> bool {
        same_origin(url, &self.base)
    }

    /// `req` with `auth` as its `Authorization` header if it goes to the registry's own
    /// origin, and whether it does: every request that carries the registry's credentials is
    /// made ready here.
    fn authorized(
        &self,
        req: RequestBuilder,
        auth: Option<&str>,
    ) -> Result<(RequestBuilder, bool)> {
        let (client, request) = req.build_split();
        let mut request =
            request.map_err(|e| Error::registry(&self.name, format!("making a request: {e}")))?;
        let own = self.own(request.url());
        if let (Some(h), true) = (auth, own) {
            let v = reqwest::header::HeaderValue::from_str(h).map_err(|_| {
                Error::registry(&self.name, "an Authorization value that is no header")
            })?;
            request.headers_mut().insert(AUTHORIZATION, v);
        }
        Ok((RequestBuilder::from_parts(client, request), own))
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| Error::registry(&self.name, format!("bad URL path {path:?}: {e}")))
    }

    /// Resolves a `Location` header, absolute or relative to the request's URL.
    fn location(&self, resp: &Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::registry(
                    &self.name,
                    format!("{} answered without a Location header", resp.url().path()),
                )
            })?;
        resp.url().join(loc).map_err(|e| {
            // Without its query, which may hold a signature.
            let shown = loc.split('?').next().unwrap_or_default();
            Error::registry(&self.name, format!("bad Location {shown:?}: {e}"))
        })
    }

    /// Sends a replayable request (no streaming body) with auth and its own retry budget.
    async fn send(
        &self,
        scope: &Scope,
        build: impl Fn() -> Result<RequestBuilder>,
    ) -> Result<Response> {
        self.send_in(scope, build, &mut Budget::new(&self.retry), On401::Fail)
            .await
    }

    /// The request loop: adds the `Authorization` header for `scope`; retries connection
    /// failures, stalls, 429 and 5xx within `budget` (honouring `Retry-After`); on a 401 learns
    /// the challenge, drops the refused token and tries once more. Any other answer is returned
    /// as it is, for the caller to judge.
    async fn send_in(
        &self,
        scope: &Scope,
        build: impl Fn() -> Result<RequestBuilder>,
        budget: &mut Budget,
        on_401: On401,
    ) -> Result<Response> {
        let mut reauthed = false;
        let mut stale: Option<String> = None;
        loop {
            let auth = match self.authorization(scope, stale.take().as_deref()).await {
                Ok(a) => a,
                Err(Error::Transient {
                    detail,
                    retry_after,
                    ..
                }) => {
                    if budget.again(retry_after).await {
                        continue;
                    }
                    return Err(self.gave_up(detail, budget));
                }
                Err(e) => return Err(e),
            };
            let (req, own) = self.authorized(build()?, auth.as_deref())?;
            let (why, retry_after) =
                match send_watched(req, self.retry.idle_timeout, &Activity::new()).await {
                    Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && own => {
                        if let Some(c) = resp
                            .headers()
                            .get(WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(Challenge::parse)
                        {
                            self.set_challenge(c);
                        }
                        if !reauthed && self.challenge().is_some() {
                            // A lapsed or revoked token, or a challenge we had not seen yet.
                            reauthed = true;
                            stale = auth;
                            continue;
                        }
                        if on_401 == On401::Fail {
                            return Err(self.auth_error());
                        }
                        return Ok(resp);
                    }
                    Ok(resp) if retryable_status(resp.status()) => {
                        let ra = retry_after(&resp);
                        let (status, path) = (resp.status(), resp.url().path().to_string());
                        let said = error_messages(&self.error_body(resp).await);
                        let mut why = format!("{path} answered {status}");
                        if !said.is_empty() {
                            why = format!("{why}: {said}");
                        }
                        if status == StatusCode::TOO_MANY_REQUESTS && self.creds.is_none() {
                            // Docker Hub's and others' limits are per account, lower for
                            // anonymous pulls.
                            why.push_str(
                                " (airlock asked anonymously: a registry's rate limit is often \
                                 higher for an account: --username, SOURCE_DOCKER_USERNAME or \
                                 docker login)",
                            );
                        }
                        (why, ra)
                    }
                    Ok(resp) => return Ok(resp),
                    Err(e) => (e.to_string(), None),
                };
            if !budget.again(retry_after).await {
                return Err(self.gave_up(why, budget));
            }
        }
    }

    fn gave_up(&self, why: String, budget: &Budget) -> Error {
        Error::transient(
            &self.name,
            format!("{why} (gave up after {} attempts)", budget.failures()),
            None,
        )
    }

    /// The start of an error answer's body (its error codes and message), or nothing when it
    /// cannot be read.
    async fn error_body(&self, resp: Response) -> Vec<u8> {
        read_limited(resp, 4096, self.retry.idle_timeout)
            .await
            .unwrap_or_default()
    }

    /// Turns an unexpected answer into an error naming the registry, the object and the
    /// registry's own error code and message.
    async fn unexpected(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        let body = self.error_body(resp).await;
        let body = String::from_utf8_lossy(&body);
        let detail = body.trim();
        if status == StatusCode::NOT_FOUND {
            return Error::NotFound {
                registry: self.name.clone(),
                what: what.to_string(),
            };
        }
        if status == StatusCode::FORBIDDEN {
            return Error::Auth {
                registry: self.name.clone(),
                detail: format!("{what}: access denied (403) {detail}"),
            };
        }
        if retryable_status(status) {
            return Error::transient(&self.name, format!("{what}: answered {status}"), None);
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let said = error_messages(body.as_bytes());
            return Error::registry(&self.name, format!("{what}: {}", too_large(None, &said)));
        }
        Error::registry(
            &self.name,
            format!(
                "{what}: answered {status}{}{detail}",
                if detail.is_empty() { "" } else { ": " }
            ),
        )
    }
}

/// What a `413` means, for a request of `bytes` when known, with what the registry said in an
/// OCI error body (`said`, from [`error_messages`]; a registry may mean a quota): the page a
/// proxy answers with (nginx's HTML) is left out.
fn too_large(bytes: Option<u64>, said: &str) -> String {
    let what = match bytes {
        Some(n) => format!("a request of {n} bytes"),
        None => "the request".to_string(),
    };
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" (the registry said: {said})")
    };
    format!(
        "answered 413 Payload Too Large{said}: the registry, or a proxy in front of it, refuses \
         {what}. Raise its request body limit (nginx: client_max_body_size 0; ingress-nginx: \
         the annotation nginx.ingress.kubernetes.io/proxy-body-size: \"0\")"
    )
}

/// `Retry-After` of a response, in seconds or as an HTTP date.
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// The `(code, message)` of each error in an OCI error body
/// (`{"errors":[{"code":"NAME_UNKNOWN","message":…}]}`), each `None` when absent; nothing when
/// the body is not one (an HTML page, nothing).
fn oci_errors(body: &[u8]) -> Vec<(Option<String>, Option<String>)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(errs) = v.get("errors").and_then(|e| e.as_array()) else {
        return Vec::new();
    };
    errs.iter()
        .map(|e| {
            let field = |k: &str| e.get(k).and_then(|c| c.as_str()).map(str::to_string);
            (field("code"), field("message"))
        })
        .collect()
}

/// The `code`s of an OCI error body.
fn error_codes(body: &[u8]) -> Vec<String> {
    oci_errors(body)
        .into_iter()
        .filter_map(|(c, _)| c)
        .collect()
}

/// `CODE: message` of each error in an OCI error body, joined with `; ` (empty when the body
/// is not one).
fn error_messages(body: &[u8]) -> String {
    oci_errors(body)
        .into_iter()
        .map(
            |(c, m)| match (c.unwrap_or_default(), m.unwrap_or_default()) {
                (c, m) if m.is_empty() => c,
                (c, m) if c.is_empty() => m,
                (c, m) => format!("{c}: {m}"),
            },
        )
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::testserver::{plain, Answer, TestServer};
    use super::*;
    use std::sync::{Arc, Mutex};

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// A registry with a token endpoint whose tokens live 1 s; tokens named in `revoked` are
    /// refused with 401 (as a registry does with one that lapsed on its clock).
    fn token_registry(revoked: Arc<Mutex<Vec<String>>>) -> (TestServer, Arc<Mutex<String>>) {
        let me = Arc::new(Mutex::new(String::new()));
        let me2 = me.clone();
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = TestServer::start(move |r| {
            let realm = format!(
                "Bearer realm=\"http://{}/token\",service=\"t\"",
                me2.lock().expect("addr")
            );
            if r.path.starts_with("/token") {
                std::thread::sleep(Duration::from_millis(100));
                let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Answer::new(200).body(format!(r#"{{"token":"tok-{n}","expires_in":1}}"#));
            }
            let token = r
                .headers
                .get("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string);
            let ok = token
                .as_ref()
                .is_some_and(|t| !revoked.lock().expect("revoked").contains(t));
            if !ok {
                return Answer::new(401).header("www-authenticate", &realm);
            }
            if r.path == "/v2/" {
                return Answer::new(200);
            }
            Answer::new(200)
                .header("content-type", OCI_MANIFEST)
                .body(format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}"}}"#
                ))
        });
        *me.lock().expect("addr") = server.addr.clone();
        (server, me)
    }

    fn token_fetches(s: &TestServer, scope: &str) -> Vec<String> {
        s.seen()
            .into_iter()
            .filter(|r| r.path.starts_with("/token") && r.path.contains(scope))
            .map(|r| r.path)
            .collect()
    }

    fn manifest_tokens(s: &TestServer) -> Vec<String> {
        s.seen()
            .into_iter()
            .filter(|r| r.path.contains("/manifests/"))
            .filter_map(|r| r.headers.get("authorization").cloned())
            .collect()
    }

    #[tokio::test]
    async fn tokens_are_fetched_once_per_scope_refreshed_before_expiry_and_after_a_401() {
        let revoked: Arc<Mutex<Vec<String>>> = Arc::default();
        let (server, _) = token_registry(revoked.clone());
        let reg = Arc::new(plain(&server.addr, None).await);
        let scope = "repository%3Ar%3Apull";
        // Eight requests at once for one scope: one token fetch.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let reg = reg.clone();
            tasks.push(tokio::spawn(
                async move { reg.get_manifest("r", "x").await },
            ));
        }
        for t in tasks {
            t.await.expect("task").expect("manifest");
        }
        assert_eq!(token_fetches(&server, scope).len(), 1);
        // The token lives 1 s: 0.8 s later it is refreshed before the registry can refuse it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        reg.get_manifest("r", "x").await.expect("manifest");
        assert_eq!(token_fetches(&server, scope).len(), 2);
        let used = manifest_tokens(&server);
        let last = used.last().cloned().expect("a token was used");
        assert!(
            used[..8].iter().all(|t| *t != last),
            "a new token: {used:?}"
        );
        // The registry refuses the current token mid-job: fetched again, request retried.
        revoked
            .lock()
            .expect("revoked")
            .push(last.trim_start_matches("Bearer ").to_string());
        reg.get_manifest("r", "x")
            .await
            .expect("manifest after a 401");
        assert_eq!(token_fetches(&server, scope).len(), 3);
    }

    #[test]
    fn error_codes_are_read_from_oci_error_bodies() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#;
        assert_eq!(error_codes(body), vec!["NAME_UNKNOWN".to_string()]);
        assert!(error_codes(b"not json").is_empty());
        assert_eq!(
            error_messages(
                br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your unauthenticated pull rate limit."}]}"#
            ),
            "TOOMANYREQUESTS: You have reached your unauthenticated pull rate limit."
        );
        assert_eq!(error_messages(b"<html>busy</html>"), "");
        // A 413 keeps what a registry said (a quota), never a proxy's page.
        let quota = too_large(Some(65536), "DENIED: storage quota exceeded");
        assert!(
            quota.contains("(the registry said: DENIED: storage quota exceeded)")
                && quota.contains("a request of 65536 bytes"),
            "{quota}"
        );
        assert!(!too_large(None, "").contains("said"));
        assert_eq!(
            error_messages(br#"{"errors":[{"code":"A"},{"message":"b"}]}"#),
            "A; b"
        );
    }
}
