//! Image references as docker and podman spell them: `nginx` is
//! `docker.io/library/nginx:latest`, `host:5000/a/b:t@sha256:…` keeps every part.

use crate::digest::Digest;
use crate::error::{Error, Result};
use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference the way docker does, defaulting the tag to `latest` when there is
    /// neither tag nor digest.
    pub fn parse(input: &str) -> Result<Reference> {
        let s = input.trim();
        let bad = |why: &str| Error::Usage(format!("invalid image reference {input:?}: {why}"));
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if let Some((rest, also)) = without_scheme(s) {
            return Err(bad(&format!(
                "a reference has no scheme: give {rest}{also}"
            )));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|_| bad("bad digest"))?)),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_registry(&registry).map_err(|e| bad(&e))?;
        validate_repository(&repository).map_err(|e| bad(&e))?;
        if let Some(t) = &tag {
            validate_tag(t).map_err(|e| bad(&e))?;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks a repository path against the distribution grammar (lowercase components of
/// alphanumerics separated by `.`, `_`, `__`, `-`; components joined by `/`).
pub fn validate_repository(repo: &str) -> std::result::Result<(), String> {
    if repo.is_empty() || repo.len() > 255 {
        return Err("repository must be 1 to 255 characters".into());
    }
    let trimmed = repo.trim_matches('/');
    if trimmed != repo && !trimmed.is_empty() {
        return Err(format!(
            "repository {repo:?} starts or ends with \"/\": give {trimmed:?}"
        ));
    }
    for comp in repo.split('/') {
        let ok = !comp.is_empty()
            && comp
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && comp.as_bytes()[0].is_ascii_alphanumeric()
            && comp.as_bytes()[comp.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "repository component {comp:?} must be lowercase letters, digits and . _ - \
                 (starting and ending with a letter or digit)"
            ));
        }
    }
    Ok(())
}

/// Checks a tag against the distribution grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        ))
    }
}

/// `s` without `http://`, `https://` or skopeo's `docker://` (any case), when it starts with
/// one, and what else the scheme asks for: `--plain-http` for `http://`.
fn without_scheme(s: &str) -> Option<(&str, &'static str)> {
    [
        (
            "http://",
            " (and --plain-http: the registry speaks plain HTTP)",
        ),
        ("https://", ""),
        ("docker://", ""),
    ]
    .iter()
    .find_map(|(scheme, also)| {
        s.get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| (&s[scheme.len()..], *also))
    })
}

/// Checks a registry host[:port].
pub fn validate_registry(host: &str) -> std::result::Result<(), String> {
    if let Some((rest, also)) = without_scheme(host) {
        let bare = rest.split('/').next().unwrap_or(rest);
        return Err(format!(
            "registry {host:?} is a URL: give the host, {bare}{also}"
        ));
    }
    // host, host:port, [ipv6] or [ipv6]:port
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail))
                if !v6.is_empty()
                    && v6
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
            {
                (
                    "v6",
                    tail.strip_prefix(':')
                        .map(Some)
                        .unwrap_or(if tail.is_empty() { None } else { Some("x") }),
                )
            }
            _ => ("", None),
        },
        None => match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "registry {host:?} must be a host name or address with an optional :port"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(p("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(p("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(p("bitnami/redis"), "docker.io/bitnami/redis:latest");
        assert_eq!(
            p("index.docker.io/library/nginx:1"),
            "docker.io/library/nginx:1"
        );
        assert_eq!(
            p("quay.io/prometheus/prometheus:v2.53.0"),
            "quay.io/prometheus/prometheus:v2.53.0"
        );
        assert_eq!(p("localhost/a/b"), "localhost/a/b:latest");
        assert_eq!(p("127.0.0.1:5000/a/b:1.0"), "127.0.0.1:5000/a/b:1.0");
        assert_eq!(p("[::1]:5000/a/b:1.0"), "[::1]:5000/a/b:1.0");
        let d = crate::digest::Digest::of(b"x");
        assert_eq!(p(&format!("reg.io/a@{d}")), format!("reg.io/a@{d}"));
        assert_eq!(
            Reference::parse("127.0.0.1:5000/a").unwrap().repository,
            "a"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "a:b:c/d",
            "reg.io/a@sha256:xyz",
            "reg.io/-a",
            "a:-t",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    /// A URL pasted from a browser or a registry's web page, a repository written as a path
    /// (`/arcdata/`): the error says what to give.
    #[test]
    fn a_url_or_a_slashed_repository_says_what_to_give() {
        let e = validate_registry("https://harbor.corp.example:8443/harbor/projects").unwrap_err();
        assert!(
            e.ends_with("give the host, harbor.corp.example:8443"),
            "{e}"
        );
        let e = validate_registry("HTTP://10.0.0.5:5000/").unwrap_err();
        assert!(
            e.contains("give the host, 10.0.0.5:5000 ") && e.contains("--plain-http"),
            "{e}"
        );
        let e = Reference::parse("http://127.0.0.1:5000/lib/alpine:3.20")
            .unwrap_err()
            .to_string();
        assert!(e.contains("give 127.0.0.1:5000/lib/alpine:3.20 "), "{e}");
        // skopeo's transport name, from a script being replaced.
        let e = Reference::parse("docker://quay.io/org/app:1.2")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("give quay.io/org/app:1.2"), "{e}");
        assert!(validate_registry("harbor.corp.example:8443").is_ok());
        let e = validate_repository("/arcdata/").unwrap_err();
        assert!(e.ends_with(r#"give "arcdata""#), "{e}");
    }
}
