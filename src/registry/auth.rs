//! Registry authentication: parsing `WWW-Authenticate` challenges, Basic credentials, and
//! Bearer tokens fetched from the challenge's realm (with Basic credentials, or an identity
//! token through OAuth2's refresh-token grant), cached per scope for as long as their
//! `expires_in` says (60 s when absent), refreshed before they lapse and again when the
//! registry answers 401 with one. One fetch per scope at a time; other scopes never wait.

use super::transport::{chain, read_limited, send_watched, Activity};
use super::{Registry, Scope};
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use base64::Engine as _;
use reqwest::header::AUTHORIZATION;
use reqwest::{StatusCode, Url};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the registry asked for in its `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let realm = params.get("realm")?.clone();
        Some(Challenge::Bearer {
            realm,
            service: params.get("service").cloned(),
        })
    }
}

/// Parses comma-separated `key="value"` (or bare `key=value`) pairs.
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The `Authorization: Basic …` value for credentials.
pub fn basic_header(creds: &Credentials) -> String {
    let raw = format!("{}:{}", creds.username, creds.password());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The token endpoint's answer.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    /// Lifetime in seconds (the token spec's default is 60).
    pub expires_in: Option<u64>,
}

/// The token spec: "if expires_in is omitted, assume 60 seconds".
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

impl TokenResponse {
    /// The token and how long it lives, counted from `asked` (when we sent the request, so
    /// the network's delay eats into our margin, not past the expiry).
    pub fn into_token(self, asked: Instant) -> Option<Token> {
        let lifetime = self
            .expires_in
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        Some(Token {
            value,
            expires: asked + lifetime,
            margin: (lifetime / 4).min(Duration::from_secs(10)),
        })
    }
}

/// A Bearer token and when it lapses.
#[derive(Clone)]
pub struct Token {
    value: String,
    expires: Instant,
    /// Refresh this long before `expires`: a request must not arrive with a lapsed token.
    margin: Duration,
}

impl Token {
    fn fresh(&self, now: Instant) -> bool {
        now + self.margin < self.expires
    }
}

/// Tokens per scope. The map's lock is held only to find a scope's slot; the slot's own
/// async lock serialises fetches of that scope alone.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

impl TokenCache {
    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Token>>> {
        let mut slots = match self.slots.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.entry(key.to_string()).or_default().clone()
    }
}

impl Registry {
    /// The `Authorization` value for a scope: Basic credentials, or a Bearer token (cached,
    /// fetched when missing, lapsing, or equal to `stale`, the one a 401 just refused).
    pub(super) async fn authorization(
        &self,
        scope: &Scope,
        stale: Option<&str>,
    ) -> Result<Option<String>> {
        let challenge = self.challenge();
        match challenge {
            None => Ok(None),
            // An identity token is for token endpoints only, never sent as a password.
            Some(Challenge::Basic) => Ok(self
                .creds
                .as_ref()
                .filter(|c| c.refresh_token().is_none())
                .map(basic_header)),
            Some(Challenge::Bearer { realm, service }) => {
                let slot = self.tokens.slot(&scope.key());
                let mut held = slot.lock().await;
                if let Some(t) = held.as_ref() {
                    let header = format!("Bearer {}", t.value);
                    if t.fresh(Instant::now()) && stale != Some(header.as_str()) {
                        return Ok(Some(header));
                    }
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                let header = format!("Bearer {}", token.value);
                *held = Some(token);
                Ok(Some(header))
            }
        }
    }

    /// One request to the token endpoint. A failure that may pass is `Transient`, so the
    /// request that needed the token retries it within its own budget.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<Token> {
        let realm_url = Url::parse(realm)
            .map_err(|e| Error::registry(&self.name, format!("bad token realm {realm:?}: {e}")))?;
        // The token spec's GET: service and each scope in the query.
        let get = || {
            let mut url = realm_url.clone();
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for s in &scope.0 {
                    q.append_pair("scope", s);
                }
            }
            self.http.get(url)
        };
        let req = match self.creds.as_ref().map(|c| (c, c.refresh_token())) {
            // OAuth2's refresh-token grant, as docker does with an identity token: a form
            // posted to the realm, the scopes space-separated.
            Some((_, Some(refresh))) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("client_id", "airlock".to_string()),
                    ("refresh_token", refresh.to_string()),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_string()));
                }
                if !scope.0.is_empty() {
                    form.push(("scope", scope.0.join(" ")));
                }
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                self.http
                    .post(realm_url.clone())
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body)
            }
            Some((c, None)) => get().header(AUTHORIZATION, basic_header(c)),
            None => get(),
        };
        let asked = Instant::now();
        let idle = self.retry.idle_timeout;
        let resp = send_watched(req, idle, &Activity::new())
            .await
            .map_err(|e| Error::transient(&self.name, format!("token endpoint: {e}"), None))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.auth_error());
        }
        if super::retry::retryable_status(status) {
            let ra = super::retry_after(&resp);
            return Err(Error::transient(
                &self.name,
                format!("token endpoint answered {status}"),
                ra,
            ));
        }
        if !status.is_success() {
            return Err(Error::registry(
                &self.name,
                format!("token endpoint answered {status}"),
            ));
        }
        let bytes = read_limited(resp, 1 << 20, idle)
            .await
            .map_err(|e| Error::transient(&self.name, format!("token endpoint: {e}"), None))?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| Error::registry(&self.name, format!("token endpoint: {}", chain(&e))))?;
        body.into_token(asked)
            .ok_or_else(|| Error::registry(&self.name, "token endpoint returned no token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn tokens_live_as_long_as_expires_in_says_less_a_margin() {
        let now = Instant::now();
        let t = |json: &str| {
            serde_json::from_str::<TokenResponse>(json)
                .expect("json")
                .into_token(now)
                .expect("token")
        };
        let short = t(r#"{"token":"a","expires_in":2}"#);
        assert!(short.fresh(now + Duration::from_millis(1400)));
        assert!(
            !short.fresh(now + Duration::from_millis(1600)),
            "refresh 0.5 s early"
        );
        let default = t(r#"{"access_token":"b"}"#);
        assert!(default.fresh(now + Duration::from_secs(49)));
        assert!(
            !default.fresh(now + Duration::from_secs(51)),
            "60 s less 10 s"
        );
        let long = t(r#"{"token":"c","expires_in":3600}"#);
        assert!(long.fresh(now + Duration::from_secs(3589)));
        assert!(!long.fresh(now + Duration::from_secs(3591)));
        assert!(serde_json::from_str::<TokenResponse>(r#"{"token":""}"#)
            .expect("json")
            .into_token(now)
            .is_none());
    }

    #[test]
    fn basic_header_encodes() {
        let c = Credentials::new("user", "pass");
        assert_eq!(basic_header(&c), "Basic dXNlcjpwYXNz");
    }
}
