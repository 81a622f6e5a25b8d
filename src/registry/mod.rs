//! Our client for the OCI distribution API: connection and TLS settings, authentication,
//! retries with back-off, and the manifest and blob operations export and import need.
//! Manifests are kept as the exact bytes served; blobs are streamed, never held whole.

pub mod auth;

use crate::credentials::Credentials;
use crate::digest::Digest;
use crate::error::{Error, Result};
use auth::{basic_header, Challenge, TokenResponse};
use futures_util::StreamExt;
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::Mutex;

/// Every manifest media type we accept, in `Accept` header form.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// The largest manifest we read (the distribution registry's own limit is 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

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

/// Retry policy for requests that can be repeated.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// A pushed or pulled manifest: its exact bytes, media type and digest.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// What a cross-repository mount did.
pub enum MountResult {
    Mounted,
    /// The registry did not mount; an upload session was opened at this location instead.
    Upload(Url),
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<String, String>,
}

/// A client for one registry.
pub struct Registry {
    /// The registry as the user named it (`docker.io`, `127.0.0.1:5000`).
    name: String,
    base: Url,
    http: reqwest::Client,
    creds: Option<Credentials>,
    auth: Mutex<AuthState>,
    retry: RetryPolicy,
}

fn api_host(name: &str) -> &str {
    if name == crate::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        name
    }
}

fn is_loopback(name: &str) -> bool {
    let host = name
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(name);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

/// Formats an error with its chain of causes (reqwest hides the useful part in sources).
fn chain(e: &dyn std::error::Error) -> String {
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
    fn key(&self) -> String {
        self.0.join(" ")
    }
}

impl Registry {
    /// Builds a client and checks the registry answers `GET /v2/`, picking the scheme: HTTPS,
    /// or plain HTTP when asked, or as a fallback for loopback registries as docker does.
    pub async fn connect(
        name: &str,
        tls: &TlsOptions,
        creds: Option<Credentials>,
        retry: RetryPolicy,
    ) -> Result<Registry> {
        crate::reference::validate_registry(name).map_err(Error::Usage)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &tls.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::io(format!("reading CA certificate {}", ca.display()), e))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Usage(format!("CA certificate {}: {}", ca.display(), chain(&e)))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        if tls.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| Error::registry(name, format!("building HTTP client: {}", chain(&e))))?;
        let host = api_host(name);
        let schemes: &[&str] = if tls.plain_http {
            &["http"]
        } else if is_loopback(name) {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut errors: Vec<(String, Error)> = Vec::new();
        for scheme in schemes {
            let base = Url::parse(&format!("{scheme}://{host}/"))
                .map_err(|e| Error::Usage(format!("registry {name:?}: {e}")))?;
            let reg = Registry {
                name: name.to_string(),
                base,
                http: http.clone(),
                creds: creds.clone(),
                auth: Mutex::new(AuthState::default()),
                retry: retry.clone(),
            };
            // A loopback HTTPS attempt that fails to connect falls back at once, without retries.
            let fallback = schemes.len() > 1 && *scheme == "https";
            match reg.ping(fallback).await {
                Ok(()) => return Ok(reg),
                // Wrong credentials are final, whatever the scheme.
                Err(e @ Error::Auth { .. }) => return Err(e),
                Err(e) => errors.push((scheme.to_string(), e)),
            }
        }
        match errors.len() {
            0 => Err(Error::registry(name, "no scheme to try")),
            1 => Err(errors.remove(0).1),
            _ => Err(Error::registry(
                name,
                errors
                    .iter()
                    .map(|(scheme, e)| {
                        let msg = e.to_string();
                        let prefix = format!("registry {name}: ");
                        format!(
                            "over {scheme}: {}",
                            msg.strip_prefix(&prefix).unwrap_or(&msg)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// How long to wait before attempt `attempt` (2, 3, …) of a transfer.
    pub fn transfer_backoff(&self, attempt: u32) -> Duration {
        self.backoff(attempt.saturating_sub(1), None)
    }

    /// `GET /v2/`: learns the auth challenge and checks credentials where they are needed.
    async fn ping(&self, single_try: bool) -> Result<()> {
        let url = self.url("v2/")?;
        let resp = if single_try {
            self.http.get(url.clone()).send().await.map_err(|e| {
                Error::registry(&self.name, format!("cannot connect: {}", chain(&e)))
            })?
        } else {
            self.send_raw(&Scope::none(), || Ok(self.http.get(url.clone())), false)
                .await?
        };
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse)
                    .ok_or_else(|| {
                        Error::registry(
                            &self.name,
                            "answered 401 without a usable WWW-Authenticate challenge",
                        )
                    })?;
                self.auth.lock().await.challenge = Some(challenge.clone());
                if challenge == Challenge::Basic {
                    // Check the credentials now, so a wrong password fails before any work.
                    let resp = self
                        .send_raw(&Scope::none(), || Ok(self.http.get(url.clone())), false)
                        .await?;
                    if resp.status() == StatusCode::UNAUTHORIZED {
                        return Err(self.auth_error());
                    }
                }
                Ok(())
            }
            s => Err(Error::registry(
                &self.name,
                format!("GET /v2/ answered {s}: this does not look like an OCI registry"),
            )),
        }
    }

    fn auth_error(&self) -> Error {
        Error::Auth {
            registry: self.name.clone(),
            detail: if self.creds.is_some() {
                "the registry refused the username and password".into()
            } else {
                "the registry requires credentials and none were given".into()
            },
        }
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| Error::registry(&self.name, format!("bad URL path {path:?}: {e}")))
    }

    /// Resolves a `Location` header, which may be relative.
    fn location(&self, resp: &Response) -> Result<Url> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::registry(&self.name, "upload answer without a Location header")
            })?;
        self.base
            .join(loc)
            .map_err(|e| Error::registry(&self.name, format!("bad Location {loc:?}: {e}")))
    }

    /// The Authorization header for a scope, fetching a token when the registry wants Bearer.
    async fn authorization(&self, scope: &Scope, refresh: bool) -> Result<Option<String>> {
        let mut state = self.auth.lock().await;
        match state.challenge.clone() {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.creds.as_ref().map(basic_header)),
            Some(Challenge::Bearer { realm, service }) => {
                let key = scope.key();
                if !refresh {
                    if let Some(t) = state.tokens.get(&key) {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                }
                let mut url = Url::parse(&realm).map_err(|e| {
                    Error::registry(&self.name, format!("bad token realm {realm:?}: {e}"))
                })?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    for s in &scope.0 {
                        q.append_pair("scope", s);
                    }
                }
                let mut last = None;
                for attempt in 0..self.retry.attempts {
                    if attempt > 0 {
                        tokio::time::sleep(self.backoff(attempt, None)).await;
                    }
                    let mut req = self.http.get(url.clone());
                    if let Some(c) = &self.creds {
                        req = req.header(AUTHORIZATION, basic_header(c));
                    }
                    match req.send().await {
                        Ok(resp) if resp.status().is_success() => {
                            let bytes = read_limited(resp, 1 << 20).await.map_err(|e| {
                                Error::registry(&self.name, format!("token endpoint: {e}"))
                            })?;
                            let body: TokenResponse =
                                serde_json::from_slice(&bytes).map_err(|e| {
                                    Error::registry(&self.name, format!("token endpoint: {e}"))
                                })?;
                            let token = body.into_token().ok_or_else(|| {
                                Error::registry(&self.name, "token endpoint returned no token")
                            })?;
                            state.tokens.insert(key, token.clone());
                            return Ok(Some(format!("Bearer {token}")));
                        }
                        Ok(resp)
                            if resp.status() == StatusCode::UNAUTHORIZED
                                || resp.status() == StatusCode::FORBIDDEN =>
                        {
                            return Err(self.auth_error());
                        }
                        Ok(resp) if retryable_status(resp.status()) => {
                            last = Some(format!("token endpoint answered {}", resp.status()));
                        }
                        Ok(resp) => {
                            return Err(Error::registry(
                                &self.name,
                                format!("token endpoint answered {}", resp.status()),
                            ))
                        }
                        Err(e) => last = Some(format!("token endpoint: {}", chain(&e))),
                    }
                }
                Err(Error::registry(
                    &self.name,
                    last.unwrap_or_else(|| "token endpoint failed".into()),
                ))
            }
        }
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.retry.max_retry_after);
        }
        self.retry.first_delay * 2u32.saturating_pow(attempt.saturating_sub(1))
    }

    /// Sends a request built by `build`, with auth, retrying connection errors, 429 and 5xx
    /// with back-off, and re-authenticating once on 401. Returns the final response, whatever
    /// its status, except that a 401 after re-authentication is an authentication error.
    async fn send_raw(
        &self,
        scope: &Scope,
        build: impl Fn() -> Result<RequestBuilder>,
        auth_fails: bool,
    ) -> Result<Response> {
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = build()?;
            if let Some(h) = self.authorization(scope, false).await? {
                req = req.header(AUTHORIZATION, h);
            }
            let outcome = req.send().await;
            let (why, retry_after) = match outcome {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    let had_challenge = self.auth.lock().await.challenge.is_some();
                    if let Some(c) = challenge {
                        self.auth.lock().await.challenge = Some(c);
                    }
                    if !refreshed && (self.creds.is_some() || !had_challenge) {
                        refreshed = true;
                        // Fetch a fresh token (or start sending Basic) and try again.
                        self.authorization(scope, true).await?;
                        attempt -= 1;
                        continue;
                    }
                    if auth_fails {
                        return Err(self.auth_error());
                    }
                    return Ok(resp);
                }
                Ok(resp) if retryable_status(resp.status()) => {
                    let ra = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (format!("answered {}", resp.status()), ra)
                }
                Ok(resp) => return Ok(resp),
                Err(e) => (format!("request failed: {}", chain(&e)), None),
            };
            if attempt >= self.retry.attempts {
                return Err(Error::registry(
                    &self.name,
                    format!("{why} (gave up after {attempt} attempts)"),
                ));
            }
            tokio::time::sleep(self.backoff(attempt, retry_after)).await;
        }
    }

    async fn send(
        &self,
        scope: &Scope,
        build: impl Fn() -> Result<RequestBuilder>,
    ) -> Result<Response> {
        self.send_raw(scope, build, true).await
    }

    /// Turns an unexpected answer into an error naming the registry, the object and the
    /// registry's own error message.
    async fn unexpected(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        let body = read_limited(resp, 4096).await.unwrap_or_default();
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
        Error::registry(
            &self.name,
            format!(
                "{what}: answered {status}{}{detail}",
                if detail.is_empty() { "" } else { ": " }
            ),
        )
    }

    /// Fetches a manifest by tag or digest, as the exact bytes served, and checks its digest.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Manifest> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let what = format!("manifest {}/{repo}:{reference}", self.name);
        let what = what.replace(":sha256:", "@sha256:");
        let resp = self
            .send(&Scope::pull(repo), || {
                Ok(self.http.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.unexpected(&what, resp).await);
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| Error::registry(&self.name, format!("{what}: {e}")))?;
        let digest = Digest::of(&bytes);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(exp) = expected {
            if exp != digest.as_str() {
                return Err(Error::Integrity {
                    what,
                    detail: format!("expected {exp}, the bytes served hash to {digest}"),
                });
            }
        }
        let media_type = crate::manifest::media_type(&bytes, content_type.as_deref())
            .ok_or_else(|| Error::registry(&self.name, format!("{what}: no media type")))?;
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `HEAD` a blob: its size if the repository has it.
    pub async fn blob_exists(
        &self,
        repo: &str,
        digest: &Digest,
        scope: &Scope,
    ) -> Result<Option<u64>> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self.send(scope, || Ok(self.http.head(url.clone()))).await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self
                .unexpected(&format!("blob {digest} in {repo}"), resp)
                .await),
        }
    }

    /// Starts a blob download at `offset` (a resumed download asks for a `Range`). Returns the
    /// response and the offset it actually starts at (0 when the registry ignored the range).
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, u64)> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .send(&Scope::pull(repo), || {
                let mut r = self.http.get(url.clone());
                if offset > 0 {
                    r = r.header("range", format!("bytes={offset}-"));
                }
                Ok(r)
            })
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => Ok((resp, offset)),
            StatusCode::OK => Ok((resp, 0)),
            _ => Err(self
                .unexpected(&format!("blob {digest} in {}/{repo}", self.name), resp)
                .await),
        }
    }

    /// Asks the registry to mount `digest` from repository `from` into `repo`.
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<MountResult> {
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let resp = self
            .send(&Scope::mount(repo, from), || {
                Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountResult::Mounted),
            StatusCode::ACCEPTED => Ok(MountResult::Upload(self.location(&resp)?)),
            _ => Err(self
                .unexpected(&format!("mounting blob {digest} into {repo}"), resp)
                .await),
        }
    }

    /// Opens an upload session.
    pub async fn start_upload(&self, repo: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .send(&Scope::push(repo), || {
                Ok(self.http.post(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self
                .unexpected(&format!("starting an upload to {repo}"), resp)
                .await);
        }
        self.location(&resp)
    }

    /// Streams a blob's bytes into an open upload session (one PATCH) and commits it with its
    /// digest (PUT). Not retried here: a failed body cannot be replayed, the caller restarts
    /// the upload from its source.
    pub async fn finish_upload(
        &self,
        repo: &str,
        location: Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let scope = Scope::push(repo);
        let what = format!("uploading blob {digest} to {}/{repo}", self.name);
        let mut req = self
            .http
            .request(Method::PATCH, location)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size.to_string())
            .body(body);
        if let Some(h) = self.authorization(&scope, false).await? {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::registry(&self.name, format!("{what}: {}", chain(&e))))?;
        if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT {
            return Err(self.unexpected(&what, resp).await);
        }
        let mut put = self.location(&resp)?;
        put.query_pairs_mut().append_pair("digest", digest.as_str());
        let resp = self
            .send(&scope, || {
                Ok(self.http.put(put.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.unexpected(&what, resp).await);
        }
        Ok(())
    }

    /// Follows `Link: <…>; rel="next"` paging of a list endpoint, collecting `key`'s strings.
    async fn list_paged(
        &self,
        first: Url,
        scope: &Scope,
        key: &str,
        what: &str,
    ) -> Result<Vec<String>> {
        const MAX_PAGES: usize = 10_000;
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(Error::registry(
                    &self.name,
                    format!("{what}: too many pages"),
                ));
            }
            let resp = self.send(scope, || Ok(self.http.get(url.clone()))).await?;
            if !resp.status().is_success() {
                return Err(self.unexpected(what, resp).await);
            }
            next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let start = v.find('<')? + 1;
                    let end = v[start..].find('>')? + start;
                    v[end..]
                        .contains("rel=\"next\"")
                        .then(|| v[start..end].to_string())
                })
                .and_then(|l| self.base.join(&l).ok());
            let body = read_limited(resp, 64 << 20)
                .await
                .map_err(|e| Error::registry(&self.name, format!("{what}: {e}")))?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::registry(&self.name, format!("{what}: {e}")))?;
            if let Some(items) = v.get(key).and_then(|t| t.as_array()) {
                out.extend(items.iter().filter_map(|t| t.as_str().map(str::to_string)));
            }
        }
        Ok(out)
    }

    /// The OCI 1.1 referrers of a manifest (`GET /v2/<repo>/referrers/<digest>`): an image
    /// index listing them, or `None` when the registry has no referrers API or none exist.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Manifest>> {
        let url = self.url(&format!("v2/{repo}/referrers/{digest}"))?;
        let resp = self
            .send(&Scope::pull(repo), || {
                Ok(self
                    .http
                    .get(url.clone())
                    .header(ACCEPT, crate::manifest::OCI_INDEX))
            })
            .await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let bytes = match read_limited(resp, MAX_MANIFEST_SIZE).await {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let has_referrers = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("manifests")
                    .and_then(|m| m.as_array())
                    .map(|m| !m.is_empty())
            })
            .unwrap_or(false);
        Ok(has_referrers.then(|| Manifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type: crate::manifest::OCI_INDEX.to_string(),
        }))
    }

    /// Every tag of a repository (`GET /v2/<repo>/tags/list`, paged).
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>> {
        let url = self.url(&format!("v2/{repo}/tags/list"))?;
        self.list_paged(url, &Scope::pull(repo), "tags", &format!("tags of {repo}"))
            .await
    }

    /// Every repository the registry lists (`GET /v2/_catalog`, paged); not all registries
    /// offer it.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        let mut url = self.url("v2/_catalog")?;
        url.query_pairs_mut().append_pair("n", "1000");
        let scope = Scope(vec!["registry:catalog:*".into()]);
        self.list_paged(url, &scope, "repositories", "the catalog")
            .await
    }

    /// Pushes a manifest's exact bytes under a tag or its digest.
    pub async fn put_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> Result<()> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let what = format!(
            "pushing manifest {} to {}/{repo}:{reference}",
            m.digest, self.name
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(&m.media_type)
                .map_err(|_| Error::registry(&self.name, format!("{what}: bad media type")))?,
        );
        let resp = self
            .send(&Scope::push(repo), || {
                Ok(self
                    .http
                    .put(url.clone())
                    .headers(headers.clone())
                    .body(m.bytes.clone()))
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.unexpected(&what, resp).await);
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if d != m.digest.as_str() {
                return Err(Error::Integrity {
                    what,
                    detail: format!("the registry stored it as {d}"),
                });
            }
        }
        Ok(())
    }
}

fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || s == StatusCode::REQUEST_TIMEOUT
        || matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_limited(resp: Response, limit: u64) -> std::result::Result<Vec<u8>, String> {
    if let Some(len) = resp.content_length() {
        if len > limit {
            return Err(format!("body of {len} bytes exceeds the limit of {limit}"));
        }
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| chain(&e))?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(format!("body exceeds the limit of {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("localhost:443"));
        assert!(!is_loopback("registry.local:5000"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
