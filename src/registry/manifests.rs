//! Manifests: read by tag or digest as the exact bytes served (digest checked against the
//! reference or `Docker-Content-Digest` when the registry sends one, and always computed
//! locally), written from the exact bytes with their media type (a tag a registry will not
//! rewrite is fine when it holds that manifest already), and the OCI 1.1 referrers of a
//! manifest. With a cache (export's), a manifest asked by digest (an index's child) is kept
//! there, and read from it by later exports instead of fetched again; a registry that
//! announces a pull rate limit (Docker Hub, which counts manifest `GET`s, not `HEAD`s) has
//! its tags' manifests kept too, and is asked for a tag's digest with `HEAD` first: the
//! manifest is fetched only when the cache lacks it.

use super::transport::read_limited;
use super::{Manifest, Registry, Scope, MANIFEST_ACCEPT, MAX_MANIFEST_SIZE};
use crate::digest::Digest;
use crate::error::{Error, Result};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use std::sync::atomic::Ordering;

impl Registry {
    /// Fetches a manifest by tag or digest, as the exact bytes served, and checks its digest.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Manifest> {
        let cache = self.manifest_cache.get();
        if let Some(dir) = cache {
            let digest = if reference.starts_with("sha256:") {
                Digest::parse(reference).ok()
            } else if self.announces_rate_limit.load(Ordering::Relaxed) {
                self.head_manifest(repo, reference).await
            } else {
                None
            };
            if let Some(d) = digest {
                if let Some(bytes) = crate::cache::manifest(dir, &d).await {
                    if let Some(media_type) = crate::manifest::media_type(&bytes, None) {
                        return Ok(Manifest {
                            bytes,
                            media_type,
                            digest: d,
                        });
                    }
                }
            }
        }
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
        if cache.is_some() && resp.headers().contains_key("ratelimit-limit") {
            self.announces_rate_limit.store(true, Ordering::Relaxed);
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
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE, self.retry.idle_timeout)
            .await
            .map_err(|e| Error::transient(&self.name, format!("{what}: {e}"), None))?;
        let digest = Digest::of(&bytes);
        // The digest is computed locally; a registry that omits the header loses nothing.
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(exp) = expected {
            if exp != digest.text().as_str() {
                return Err(Error::Integrity {
                    what,
                    detail: format!("expected {exp}, the bytes served hash to {digest}"),
                });
            }
        }
        let media_type = crate::manifest::media_type(&bytes, content_type.as_deref())
            .ok_or_else(|| Error::registry(&self.name, format!("{what}: no media type")))?;
        // Kept: a manifest asked by digest (an index's child, found by digest next time), and
        // with a pull limit one asked by tag too (found after a HEAD). Not the others: a
        // file each is not free, and nothing would find them.
        if let Some(dir) = cache {
            if reference.starts_with("sha256:") || self.announces_rate_limit.load(Ordering::Relaxed)
            {
                crate::cache::keep_manifest(dir, &digest, &bytes).await;
            }
        }
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// The digest a tag names, from `HEAD` (which a rate limit does not count): `None` when
    /// the answer gives none or the request fails (the `GET` that follows says why).
    async fn head_manifest(&self, repo: &str, tag: &str) -> Option<Digest> {
        let url = self.url(&format!("v2/{repo}/manifests/{tag}")).ok()?;
        let resp = self
            .send(&Scope::pull(repo), || {
                Ok(self.http.head(url.clone()).header(ACCEPT, MANIFEST_ACCEPT))
            })
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let d = resp.headers().get("docker-content-digest")?.to_str().ok()?;
        Digest::parse(d).ok()
    }

    /// Keeps manifests fetched by digest (and, from a registry that announces a pull limit, by
    /// tag) in `dir` (export's cache, `blobs/sha256/`), and reads a manifest from there instead
    /// of fetching it when its digest is known (see the module).
    pub fn cache_manifests_in(&self, dir: std::path::PathBuf) {
        let _ = self.manifest_cache.set(dir);
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
            let status = resp.status().as_u16();
            let refused = self.push_refused(&what, repo, resp).await;
            return self.refused_tag(repo, reference, m, status, refused).await;
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if d != m.digest.text().as_str() {
                return Err(Error::Integrity {
                    what,
                    detail: format!("the registry stored it as {d}"),
                });
            }
        }
        Ok(())
    }

    /// A tag push the registry refused. Registries that never rewrite a tag (Harbor's and
    /// ECR's immutable tags, Artifactory without overwrite permission) refuse it even when the
    /// tag already holds this very manifest, as on a re-run or a second import of one bundle:
    /// that is the tag as wanted, not a failure. Otherwise `refused`, saying what the tag
    /// holds when that is known.
    async fn refused_tag(
        &self,
        repo: &str,
        reference: &str,
        m: &Manifest,
        status: u16,
        refused: Error,
    ) -> Result<()> {
        if reference.starts_with("sha256:") || !matches!(status, 400 | 403 | 409 | 412) {
            return Err(refused);
        }
        match self.get_manifest(repo, reference).await {
            Ok(there) if there.digest == m.digest => Ok(()),
            Ok(there) => Err(Error::registry(
                &self.name,
                format!(
                    "{}; the tag holds another manifest, {}",
                    refused.text_after(&self.name),
                    there.digest
                ),
            )),
            Err(_) => Err(refused),
        }
    }

    /// An error for a refused push; a 404 `NAME_UNKNOWN` says which project to create.
    pub(super) async fn push_refused(
        &self,
        what: &str,
        repo: &str,
        resp: reqwest::Response,
    ) -> Error {
        let status = resp.status();
        if status != StatusCode::NOT_FOUND {
            return self.unexpected(what, resp).await;
        }
        let body = self.error_body(resp).await;
        if !super::error_codes(&body)
            .iter()
            .any(|c| c == "NAME_UNKNOWN")
        {
            return Error::registry(
                &self.name,
                format!(
                    "{what}: answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
            );
        }
        let project = repo.split('/').next().unwrap_or(repo);
        Error::registry(
            &self.name,
            format!(
                "{what}: the registry does not know repository {repo} and will not create it \
                 on push (NAME_UNKNOWN). Create the project {project:?} (Harbor, GitLab, \
                 Nexus, a Quay organisation) or the repository {repo:?} (ECR) first, or import \
                 under another --repository"
            ),
        )
    }

    /// The OCI 1.1 referrers of a manifest (`GET /v2/<repo>/referrers/<digest>`): an image
    /// index listing them, or `None` when the registry has no referrers API or none exist.
    /// A registry with the API never answers it with 404 (the distribution spec), so a 404
    /// is remembered and the registry is not asked again.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Manifest>> {
        if self.no_referrers_api.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let url = self.url(&format!("v2/{repo}/referrers/{digest}"))?;
        let resp = self
            .send(&Scope::pull(repo), || {
                Ok(self
                    .http
                    .get(url.clone())
                    .header(ACCEPT, crate::manifest::OCI_INDEX))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            // No such API here (404, as the spec has it; 400, 405 or 501 from some).
            StatusCode::NOT_FOUND
            | StatusCode::BAD_REQUEST
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => {
                self.no_referrers_api.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            _ => {
                return Err(self
                    .unexpected(&format!("asking the referrers of {repo}@{digest}"), resp)
                    .await)
            }
        }
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE, self.retry.idle_timeout)
            .await
            .map_err(|e| {
                Error::transient(
                    &self.name,
                    format!("the referrers of {repo}@{digest}: {e}"),
                    None,
                )
            })?;
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
}

#[cfg(test)]
mod tests {
    use super::super::testserver::{plain, Answer, TestServer};
    use super::*;

    /// A registry without the referrers API (404) is asked once per run; one with it is
    /// asked for every subject and its index is handed back.
    #[tokio::test]
    async fn a_registry_without_the_referrers_api_is_asked_once() {
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2}]}"#;
        let without = TestServer::start(|r| match r.path.as_str() {
            "/v2/" => Answer::new(200),
            _ => Answer::new(404).body("404 page not found"),
        });
        let with = TestServer::start(move |r| match r.path.as_str() {
            "/v2/" => Answer::new(200),
            p if p.contains("/referrers/") => Answer::new(200).body(index),
            _ => Answer::new(404),
        });
        let subjects: Vec<Digest> = ["a", "b", "c"]
            .iter()
            .map(|s| Digest::of(s.as_bytes()))
            .collect();

        let reg = plain(&without.addr, None).await;
        for d in &subjects {
            assert!(reg.referrers("r", d).await.expect("no error").is_none());
        }
        let asked = |s: &TestServer| {
            s.seen()
                .iter()
                .filter(|r| r.path.contains("/referrers/"))
                .count()
        };
        assert_eq!(
            asked(&without),
            1,
            "a registry that answered 404 is not asked again"
        );

        let reg = plain(&with.addr, None).await;
        for d in &subjects {
            let found = reg
                .referrers("r", d)
                .await
                .expect("no error")
                .expect("an index");
            assert_eq!(found.bytes, index.as_bytes());
        }
        assert_eq!(
            asked(&with),
            3,
            "a registry with the API is asked for every subject"
        );
    }

    /// A registry that refuses the referrers API's route (405) has none; one that fails
    /// (503 through the retries, 403) gives an error naming the subject, for a warning, and
    /// is asked again about the next one.
    #[tokio::test]
    async fn a_failing_referrers_answer_is_an_error_and_a_refused_route_no_api() {
        let refused = TestServer::start(|r| match r.path.as_str() {
            "/v2/" => Answer::new(200),
            _ => Answer::new(405),
        });
        let failing = TestServer::start(|r| match r.path.as_str() {
            "/v2/" => Answer::new(200),
            _ => Answer::new(403).body(r#"{"errors":[{"code":"DENIED","message":"denied"}]}"#),
        });
        let d = Digest::of(b"a");
        let reg = plain(&refused.addr, None).await;
        assert!(reg.referrers("r", &d).await.expect("no error").is_none());
        assert!(reg.referrers("r", &d).await.expect("no error").is_none());
        assert_eq!(
            refused
                .seen()
                .iter()
                .filter(|r| r.path.contains("/referrers/"))
                .count(),
            1
        );
        let reg = plain(&failing.addr, None).await;
        let e = reg.referrers("r", &d).await.expect_err("403 is an error");
        assert!(e.to_string().contains(&d.to_string()), "{e}");
        assert!(reg.referrers("r", &d).await.is_err(), "asked again");
    }
}
