//! First contact: which host and scheme answer for a registry name (HTTPS; plain HTTP when
//! asked, or as a fallback for loopback registries, as docker does), and `GET /v2/`, which
//! learns the auth challenge and checks credentials before any work starts. A failure says
//! which proxy it went through, and where a client certificate goes when the registry wants
//! one.

use super::auth::{Challenge, TokenCache};
use super::transport::{self, send_watched, Activity};
use super::{Registry, RetryPolicy, Scope, TlsOptions};
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{StatusCode, Url};
use std::sync::atomic::AtomicU8;
use std::sync::RwLock;

/// The host that serves a registry name's API.
fn api_host(name: &str) -> &str {
    if name == crate::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        name
    }
}

/// `detail` with a hint for the TLS failures a user can mend: the alert a registry behind
/// mutual TLS answers a client without (or with the wrong) certificate (where that certificate
/// goes); a registry CA this machine does not trust (where it goes); a registry certificate
/// out of its dates (what this machine's clock says: a disconnected machine without NTP is
/// often days or years off).
fn with_cert_hint(detail: String, name: &str) -> String {
    if detail.contains("BadCertificate") || detail.contains("CertificateRequired") {
        format!(
            "{detail} (the registry may want a client certificate: NAME.cert and NAME.key in \
             /etc/docker/certs.d/{name}/ or ~/.config/containers/certs.d/{name}/)"
        )
    } else if detail.contains("invalid peer certificate: UnknownIssuer") {
        format!(
            "{detail} (the registry's certificate is signed by a CA this machine does not \
             trust: give it with --ca-cert FILE, or put it in /etc/docker/certs.d/{name}/ca.crt)"
        )
    } else if out_of_dates(&detail) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| crate::units::rfc3339(d.as_secs()))
            .unwrap_or_else(|_| "before 1970".into());
        format!(
            "{detail} (a certificate's dates are judged by this machine's clock, which says \
             {now}: if that is wrong, set it; if it is right, the registry's certificate \
             needs renewing)"
        )
    } else {
        detail
    }
}

/// Does a TLS failure say the peer's certificate has expired or is not valid yet (rustls:
/// `Expired`, `NotValidYet`, or their forms with the dates)?
fn out_of_dates(detail: &str) -> bool {
    detail.contains("invalid peer certificate: Expired")
        || detail.contains("invalid peer certificate: NotValidYet")
        || detail.contains("certificate expired: verification time")
        || detail.contains("certificate not valid yet: verification time")
}

pub(super) fn is_loopback(name: &str) -> bool {
    let host = name
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(name);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl Registry {
    /// Builds a client and checks the registry answers `GET /v2/`, picking the scheme.
    pub async fn connect(
        name: &str,
        tls: &TlsOptions,
        creds: Option<Credentials>,
        retry: RetryPolicy,
    ) -> Result<Registry> {
        crate::reference::validate_registry(name).map_err(Error::Usage)?;
        let http = transport::client(name, tls)?;
        let host = api_host(name);
        let schemes: &[&str] = if tls.plain_http {
            &["http"]
        } else if is_loopback(name) {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut errors: Vec<(&str, Option<String>, Error)> = Vec::new();
        for scheme in schemes {
            let base = Url::parse(&format!("{scheme}://{host}/"))
                .map_err(|e| Error::Usage(format!("registry {name:?}: {e}")))?;
            let reg = Registry {
                name: name.to_string(),
                base,
                http: http.clone(),
                creds: creds.clone(),
                challenge: RwLock::new(None),
                tokens: TokenCache::default(),
                retry: retry.clone(),
                upload_mode: AtomicU8::new(0),
                put_body: AtomicU8::new(0),
                body_max: std::sync::atomic::AtomicU64::new(u64::MAX),
                no_referrers_api: Default::default(),
                manifest_cache: Default::default(),
                // Docker Hub's limit is known before it says so.
                announces_rate_limit: (name == crate::reference::DOCKER_HUB).into(),
            };
            // A loopback HTTPS attempt that fails to connect falls back at once, without retries.
            let fallback = schemes.len() > 1 && *scheme == "https";
            // A failure through a proxy says so: the proxy may be what failed.
            let via = transport::proxy_for(&reg.base);
            match reg.ping(fallback).await {
                Ok(()) => return Ok(reg),
                // Wrong credentials are final, whatever the scheme.
                Err(e @ Error::Auth { .. }) => return Err(e),
                Err(e) => errors.push((scheme, via, e.map_detail(|d| with_cert_hint(d, name)))),
            }
        }
        match errors.len() {
            0 => Err(Error::registry(name, "no scheme to try")),
            1 => match errors.remove(0) {
                (_, Some(via), e) => Err(Error::registry(
                    name,
                    format!("through {via}: {}", e.text_after(name)),
                )),
                (_, None, e) => Err(e),
            },
            _ => Err(Error::registry(
                name,
                errors
                    .iter()
                    .map(|(scheme, via, e)| match via {
                        Some(via) => format!("over {scheme} through {via}: {}", e.text_after(name)),
                        None => format!("over {scheme}: {}", e.text_after(name)),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// `GET /v2/`: learns the auth challenge and checks credentials where they are needed.
    async fn ping(&self, single_try: bool) -> Result<()> {
        let url = self.url("v2/")?;
        let resp = if single_try {
            send_watched(
                self.http.get(url.clone()),
                self.retry.idle_timeout,
                &Activity::new(),
            )
            .await
            .map_err(|e| Error::registry(&self.name, format!("cannot connect: {e}")))?
        } else {
            // No challenge is known yet: this sends no Authorization and hands a 401 back.
            self.send_in(
                &Scope::none(),
                || Ok(self.http.get(url.clone())),
                &mut super::retry::Budget::new(&self.retry),
                super::On401::Return,
            )
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
                self.set_challenge(challenge.clone());
                if challenge == Challenge::Basic {
                    // Check the credentials now, so a wrong password fails before any work.
                    if self.creds.is_none() {
                        return Err(self.auth_error());
                    }
                    let r = self
                        .send(&Scope::none(), || Ok(self.http.get(url.clone())))
                        .await?;
                    if !r.status().is_success() {
                        return Err(self.unexpected("GET /v2/", r).await);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_out_of_their_dates_get_the_clock() {
        for d in [
            "client error (Connect): invalid peer certificate: Expired",
            "invalid peer certificate: NotValidYet",
            "certificate expired: verification time 1800000000 (UNIX), but certificate is not \
             valid after 1700000000 (100000000 seconds ago)",
            "certificate not valid yet: verification time 1600000000 (UNIX), but certificate \
             is not valid before 1700000000 (100000000 seconds in the future)",
        ] {
            let hinted = with_cert_hint(d.to_string(), "r.example:5000");
            assert!(hinted.starts_with(d), "{hinted}");
            assert!(
                hinted.contains("this machine's clock, which says 20"),
                "{hinted}"
            );
        }
        let other = "invalid peer certificate: BadSignature".to_string();
        assert_eq!(with_cert_hint(other.clone(), "r.example:5000"), other);
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("localhost:443"));
        assert!(!is_loopback("registry.local:5000"));
        assert!(!is_loopback("10.0.0.1"));
    }
}
