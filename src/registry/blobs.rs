//! Reading blobs: `HEAD` (does the repository have it?) and ranged `GET` as a stream that
//! fails on a stall. Registries that keep blobs in object storage (Docker Hub, ECR, GCR,
//! Harbor on S3) answer with a redirect to another host; it is followed by hand, and the
//! registry's `Authorization` goes only to the registry's own origin, never to that host.

use super::retry::{retryable_status, Budget};
use super::transport::{idle_body, send_watched, Activity};
use super::{Registry, Scope};
use crate::digest::Digest;
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};

/// Redirects followed for one blob request at most.
const MAX_REDIRECTS: usize = 5;

/// A blob download under way.
pub struct BlobDownload {
    /// The body from `start` on; an item is an error when the connection broke or stalled.
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
    /// Where the body starts: the offset asked for, or 0 when the server ignored the range.
    pub start: u64,
}

impl Registry {
    /// Sends a blob request (`GET` or `HEAD`) and follows redirects: with the registry's
    /// credentials on its own origin, without them anywhere else.
    async fn blob_request(
        &self,
        method: Method,
        repo: &str,
        digest: &Digest,
        offset: u64,
        end: Option<u64>,
        budget: &mut Budget,
    ) -> Result<Response> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let scope = Scope::pull(repo);
        let range = match end {
            Some(end) => Some(format!("bytes={offset}-{}", end.saturating_sub(1))),
            None => (offset > 0).then(|| format!("bytes={offset}-")),
        };
        let build = |u: &Url| {
            let mut r = self.http.request(method.clone(), u.clone());
            if let Some(v) = &range {
                r = r.header("range", v);
            }
            r
        };
        'again: loop {
            let mut resp = self
                .send_in(&scope, || Ok(build(&url)), budget, super::On401::Fail)
                .await?;
            let mut hops = 0;
            while resp.status().is_redirection() && resp.headers().contains_key(LOCATION) {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(Error::registry(
                        &self.name,
                        format!("blob {digest} in {repo}: more than {MAX_REDIRECTS} redirects"),
                    ));
                }
                let next = self.location(&resp)?;
                let mut req = build(&next);
                if self.own(&next) {
                    if let Some(h) = self.authorization(&scope, None).await? {
                        req = req.header(AUTHORIZATION, h);
                    }
                }
                resp = match send_watched(req, self.retry.idle_timeout, &Activity::new()).await {
                    Ok(r) if retryable_status(r.status()) => {
                        let ra = super::retry_after(&r);
                        if budget.again(ra).await {
                            continue 'again;
                        }
                        return Err(self.gave_up(
                            format!("blob {digest}: {} answered {}", host_of(&next), r.status()),
                            budget,
                        ));
                    }
                    Ok(r) => r,
                    Err(e) => {
                        if budget.again(None).await {
                            continue 'again;
                        }
                        return Err(
                            self.gave_up(format!("blob {digest}: {}: {e}", host_of(&next)), budget)
                        );
                    }
                };
            }
            return Ok(resp);
        }
    }

    /// `HEAD` a blob: its size (0 when not told) if the repository has it.
    pub async fn blob_exists(
        &self,
        repo: &str,
        digest: &Digest,
        scope: &Scope,
    ) -> Result<Option<u64>> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let resp = self.send(scope, || Ok(self.http.head(url.clone()))).await?;
        match resp.status() {
            // A redirect to storage means the registry has it.
            s if s.is_success() || s.is_redirection() => Ok(Some(
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

    /// Starts a blob download at `offset` (a resumed download asks for a `Range`), spending
    /// tries from the download's `budget`.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
        budget: &mut Budget,
    ) -> Result<BlobDownload> {
        let resp = self
            .blob_request(Method::GET, repo, digest, offset, None, budget)
            .await?;
        let start = match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => offset,
            StatusCode::OK => 0,
            _ => {
                return Err(self
                    .unexpected(&format!("blob {digest} in {}/{repo}", self.name), resp)
                    .await)
            }
        };
        Ok(BlobDownload {
            body: idle_body(resp, self.retry.idle_timeout),
            start,
        })
    }
}

impl Registry {
    /// Starts a download of bytes `start..end` of a blob (for parallel parts of one large
    /// blob). `None` when the registry ignored the `Range` and would send the whole blob: the
    /// caller then reads it in one piece. The bytes are not checked here: the caller checks the
    /// whole blob against its digest.
    pub async fn get_blob_part(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
        budget: &mut Budget,
    ) -> Result<Option<BlobDownload>> {
        let resp = self
            .blob_request(Method::GET, repo, digest, start, Some(end), budget)
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                // The answer must be exactly the range asked for.
                let want = format!("bytes {start}-{}/", end.saturating_sub(1));
                let range_ok = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with(&want));
                if !range_ok {
                    return Ok(None);
                }
                Ok(Some(BlobDownload {
                    body: idle_body(resp, self.retry.idle_timeout),
                    start,
                }))
            }
            StatusCode::OK => Ok(None),
            _ => Err(self
                .unexpected(&format!("blob {digest} in {}/{repo}", self.name), resp)
                .await),
        }
    }
}

fn host_of(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testserver::{plain, Answer, TestServer};
    use super::*;
    use crate::credentials::Credentials;
    use futures_util::StreamExt;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn redirects_to_another_host_never_carry_the_registrys_credentials() {
        // The storage host is reached as "localhost", the registry as "127.0.0.1".
        let storage = TestServer::start(|r| {
            assert!(r.path.starts_with("/bucket/"), "{}", r.path);
            Answer::new(200).body("from storage")
        });
        let storage_port = storage.addr.rsplit(':').next().expect("port").to_string();
        let me = Arc::new(Mutex::new(String::new()));
        let me2 = me.clone();
        let registry = TestServer::start(move |r| {
            if !r.headers.contains_key("authorization") {
                return Answer::new(401).header("www-authenticate", "Basic realm=\"r\"");
            }
            match r.path.as_str() {
                "/v2/" => Answer::new(200),
                p if p.contains("/blobs/sha256:aaaa") => Answer::new(307).header(
                    "location",
                    &format!("http://localhost:{storage_port}/bucket/aa?sig=x"),
                ),
                // Same origin: the registry's credentials may go along.
                p if p.contains("/blobs/sha256:bbbb") => Answer::new(302).header(
                    "location",
                    &format!("http://{}/internal/bb", me2.lock().expect("addr")),
                ),
                "/internal/bb" => Answer::new(200).body("from the registry"),
                p => Answer::new(404).body(p.to_string()),
            }
        });
        *me.lock().expect("addr") = registry.addr.clone();
        let reg = plain(&registry.addr, Some(Credentials::new("u", "p"))).await;
        let read = |c: &'static str| {
            let reg = &reg;
            async move {
                let mut budget = Budget::new(reg.retry_policy());
                let digest = Digest::parse(&format!("sha256:{}", c.repeat(64))).expect("digest");
                let mut dl = reg
                    .get_blob("r", &digest, 0, &mut budget)
                    .await
                    .expect("get");
                let mut out = Vec::new();
                while let Some(c) = dl.body.next().await {
                    out.extend_from_slice(&c.expect("chunk"));
                }
                String::from_utf8(out).expect("utf8")
            }
        };
        assert_eq!(read("a").await, "from storage");
        assert_eq!(read("b").await, "from the registry");
        let storage_seen = storage.seen();
        assert_eq!(storage_seen.len(), 1);
        assert!(
            !storage_seen[0].headers.contains_key("authorization"),
            "credentials leaked to the storage host"
        );
    }

    #[test]
    fn origins() {
        let a = Url::parse("https://r.example/v2/").expect("url");
        assert!(super::super::same_origin(
            &a,
            &Url::parse("https://r.example:443/x").expect("url")
        ));
        assert!(!super::super::same_origin(
            &a,
            &Url::parse("https://s3.example/x").expect("url")
        ));
        assert!(!super::super::same_origin(
            &a,
            &Url::parse("http://r.example/x").expect("url")
        ));
        assert!(!super::super::same_origin(
            &a,
            &Url::parse("https://r.example:8443/x").expect("url")
        ));
    }
}
