//! Listing: a repository's tags and the registry's catalog, following `Link` paging.

use super::transport::read_limited;
use super::{Registry, Scope};
use crate::error::{Error, Result};
use reqwest::Url;

/// The target of a `Link: <…>; rel="next"` header, resolved against `base`.
fn next_link(header: &str, base: &Url) -> Option<Url> {
    let start = header.find('<')? + 1;
    let end = header[start..].find('>')? + start;
    if !header[end..].contains("rel=\"next\"") {
        return None;
    }
    base.join(&header[start..end]).ok()
}

impl Registry {
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
                .and_then(|v| next_link(v, &url));
            let body = read_limited(resp, 64 << 20, self.retry.idle_timeout)
                .await
                .map_err(|e| Error::transient(&self.name, format!("{what}: {e}"), None))?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::registry(&self.name, format!("{what}: {e}")))?;
            if let Some(items) = v.get(key).and_then(|t| t.as_array()) {
                out.extend(items.iter().filter_map(|t| t.as_str().map(str::to_string)));
            }
        }
        Ok(out)
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
        self.list_paged(url, &Scope::catalog(), "repositories", "the catalog")
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let base = Url::parse("https://r.example/v2/x/tags/list?n=2").expect("url");
        assert_eq!(
            next_link(r#"</v2/x/tags/list?n=2&last=b>; rel="next""#, &base)
                .expect("next")
                .as_str(),
            "https://r.example/v2/x/tags/list?n=2&last=b"
        );
        assert_eq!(
            next_link(r#"<https://other.example/p?q=1>; rel="next""#, &base)
                .expect("next")
                .as_str(),
            "https://other.example/p?q=1"
        );
        assert!(next_link(r#"</v2/x/tags/list?n=2>; rel="prev""#, &base).is_none());
    }
}
