//! Listing: a repository's tags and the registry's catalog, following `Link` paging.

use super::transport::read_limited;
use super::{Registry, Scope};
use crate::error::{Error, Result};
use reqwest::Url;

/// The target of the link whose relation is `next` in a `Link` header (RFC 8288: one or
/// more `<target>; param=value…` separated by commas, `rel` quoted or not, a relation among
/// several), resolved against `base`.
fn next_link(header: &str, base: &Url) -> Option<Url> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        // This link's parameters run to the next link's `<`.
        let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
        let is_next = after[close + 1..params_end].split(';').any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_end_matches(',')
                        .trim()
                        .trim_matches('"')
                        .split_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return base.join(target).ok();
        }
        rest = &after[params_end..];
    }
    None
}

impl Registry {
    /// Follows `Link: <…>; rel="next"` paging of a list endpoint, handing each of `key`'s
    /// strings to `each` as its page comes (no page is kept once read). A page whose `key` is
    /// not a list (or `null`, distribution's "none") fails; so does one without `key` when it
    /// is `required`.
    async fn each_paged(
        &self,
        first: Url,
        scope: &Scope,
        (key, required): (&str, bool),
        what: &str,
        mut each: impl FnMut(&str),
    ) -> Result<()> {
        const MAX_PAGES: usize = 10_000;
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
            match v.get(key) {
                Some(serde_json::Value::Array(items)) => {
                    items.iter().filter_map(|t| t.as_str()).for_each(&mut each)
                }
                Some(serde_json::Value::Null) => {}
                None if !required => {}
                _ => {
                    return Err(Error::registry(
                        &self.name,
                        format!("{what}: the answer has no list `{key}`"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// [`each_paged`](Self::each_paged), collected.
    async fn list_paged(
        &self,
        first: Url,
        scope: &Scope,
        key: &str,
        what: &str,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.each_paged(first, scope, (key, false), what, |s| {
            out.push(s.to_string())
        })
        .await?;
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
        let mut out = Vec::new();
        self.catalog_each(|r| out.push(r.to_string())).await?;
        Ok(out)
    }

    /// [`catalog`](Self::catalog), each repository handed to `each` as its page comes.
    pub async fn catalog_each(&self, each: impl FnMut(&str)) -> Result<()> {
        let mut url = self.url("v2/_catalog")?;
        url.query_pairs_mut().append_pair("n", "1000");
        let key = ("repositories", true);
        self.each_paged(url, &Scope::catalog(), key, "the catalog", each)
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
        // Several links: the next one, wherever it stands; rel unquoted or among others.
        assert_eq!(
            next_link(r#"</p?last=a>; rel="prev", </n?last=c>; rel="next""#, &base)
                .expect("next")
                .path(),
            "/n"
        );
        assert_eq!(
            next_link("</n?last=c>; rel=next", &base)
                .expect("next")
                .path(),
            "/n"
        );
        assert_eq!(
            next_link(r#"</n>; title="x"; rel="last next""#, &base)
                .expect("next")
                .path(),
            "/n"
        );
        assert!(next_link(r#"</n>; rel="nextpage""#, &base).is_none());
        assert!(next_link("", &base).is_none());
    }

    /// A page link to another origin is followed without the registry's credentials.
    #[tokio::test]
    async fn a_catalog_page_on_another_origin_gets_no_credentials() {
        use super::super::testserver::{plain, Answer, TestServer};
        let server = TestServer::start_knowing_port(move |r, port| {
            let authed = r.headers.contains_key("authorization");
            match (r.path.as_str(), authed) {
                ("/v2/", false) => Answer::new(401).header("www-authenticate", "Basic realm=\"r\""),
                ("/v2/", true) => Answer::new(200),
                ("/v2/_catalog?n=1000", _) => Answer::new(200)
                    .header(
                        "link",
                        &format!(
                            "<http://localhost:{port}/v2/_catalog?n=1000&last=a>; rel=\"next\""
                        ),
                    )
                    .body(r#"{"repositories":["a"]}"#),
                (_, _) => Answer::new(200).body(r#"{"repositories":["b"]}"#),
            }
        });
        let creds = crate::credentials::Credentials::new("robot", "s3cret");
        let reg = plain(&server.addr, Some(creds)).await;
        assert_eq!(reg.catalog().await.expect("catalog"), ["a", "b"]);
        let seen = server.seen();
        let second = seen
            .iter()
            .find(|r| {
                r.headers
                    .get("host")
                    .is_some_and(|h| h.starts_with("localhost"))
            })
            .expect("the second page was asked of localhost");
        assert!(
            !second.headers.contains_key("authorization"),
            "credentials went to another origin"
        );
        assert!(
            seen.iter()
                .any(|r| r.path == "/v2/_catalog?n=1000" && r.headers.contains_key("authorization")),
            "the registry's own origin gets them"
        );
    }
}
