//! Loading an image-set file: [`load`] reads it, [`parse`] deserializes it and validates every
//! entry (registries, namespaces, credentials, TLS, excludes, tag rules, platforms) before
//! anything touches the network. Every problem is a usage error naming file, line and key.

use super::model::{CredentialSource, Exclude, ImageRule, ImageSet, RegistrySet};
use super::tags::{parse_version_req, TagRule, VersionRange};
use super::yaml::{KeyPath, RawCredentials, RawFile, RawRegistry, RawRule, Source};
use crate::error::{Error, Result};
use crate::reference::{validate_registry, validate_repository, validate_tag, Reference};
use crate::registry::TlsOptions;
use std::path::Path;

/// The tag rule catalog repositories get when `catalogTags` is not given.
const DEFAULT_CATALOG_NEWEST: usize = 1;

/// Checks `os/arch[/variant]`.
fn validate_platform(p: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = p.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid platform {p:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"))
    }
}

fn valid_env_name(v: &str) -> bool {
    v.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// The file as written (serde), before validation

/// Reads, parses and validates an image-set file. Every problem is an [`Error::Usage`] of the
/// form `FILE:LINE: KEY: MESSAGE`.
pub fn load(path: &Path) -> Result<ImageSet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    parse(path, text)
}

/// Parses and validates the text of an image-set file; `path` names it in messages and
/// anchors relative `caCert` paths.
pub fn parse(path: &Path, text: String) -> Result<ImageSet> {
    let src = Source {
        file: path,
        text: &text,
    };
    let raw: RawFile = serde_norway::from_str(&text).map_err(|e| src.yaml_error(&e))?;
    let root = KeyPath::default();

    let platforms = validate_platforms(&src, &root.key("platforms"), raw.platforms)?;
    if raw.registries.is_empty() {
        return Err(src.fail(&root.key("registries"), "no registries: list at least one"));
    }
    let base_dir = path.parent().unwrap_or(Path::new(""));
    let mut registries: Vec<RegistrySet> = Vec::new();
    for (ri, r) in raw.registries.into_iter().enumerate() {
        let set = validate_registry_entry(&src, ri, r, base_dir)?;
        if let Some(prev) = registries.iter().find(|p| p.registry == set.registry) {
            if prev.credentials != set.credentials || !same_tls(&prev.tls, &set.tls) {
                return Err(src.fail(
                    &root.key("registries").index(ri).key("registry"),
                    format!(
                        "{} is listed again with other credentials or tls settings; \
                         one registry has one connection: make them the same",
                        set.registry
                    ),
                ));
            }
        }
        registries.push(set);
    }
    Ok(ImageSet {
        path: path.to_path_buf(),
        platforms,
        registries,
        text,
    })
}

fn same_tls(a: &TlsOptions, b: &TlsOptions) -> bool {
    a.ca_cert == b.ca_cert && a.insecure == b.insecure && a.plain_http == b.plain_http
}

fn validate_platforms(src: &Source, at: &KeyPath, list: Vec<String>) -> Result<Vec<String>> {
    for (i, p) in list.iter().enumerate() {
        validate_platform(p).map_err(|e| src.fail(&at.index(i), e))?;
    }
    Ok(list)
}

fn validate_registry_entry(
    src: &Source,
    ri: usize,
    r: RawRegistry,
    base_dir: &Path,
) -> Result<RegistrySet> {
    let at = KeyPath::default().key("registries").index(ri);
    let registry = r.registry.trim().to_string();
    if registry.is_empty() {
        return Err(src.fail(&at.key("registry"), "empty: give host[:port]"));
    }
    validate_registry(&registry).map_err(|e| src.fail(&at.key("registry"), e))?;
    // Docker's rule: a first path component is a registry only with a '.' or ':' in it, or as
    // `localhost`; anything else would be read as a Docker Hub namespace.
    let host_probe =
        Reference::parse(&format!("{registry}/x")).map_err(|e| src.fail(&at.key("registry"), e))?;
    let hub_alias = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    if host_probe.registry == crate::reference::DOCKER_HUB
        && !hub_alias.contains(&registry.as_str())
    {
        return Err(src.fail(
            &at.key("registry"),
            format!(
                "{registry:?} would be read as a Docker Hub namespace, not a host: \
                 add its port ({registry}:443) or its domain"
            ),
        ));
    }
    let namespace = r.namespace.trim().to_string();
    if !namespace.is_empty() {
        validate_repository(&namespace).map_err(|e| src.fail(&at.key("namespace"), e))?;
    }

    let credentials = match r.credentials {
        None => CredentialSource::Default,
        Some(RawCredentials::Named(c)) => c,
        Some(RawCredentials::Env(e)) => {
            for (key, var) in [
                ("usernameEnv", &e.username_env),
                ("passwordEnv", &e.password_env),
            ] {
                if !valid_env_name(var) {
                    return Err(src.fail(
                        &at.key("credentials").key(key),
                        format!("{var:?} is not an environment variable name"),
                    ));
                }
            }
            CredentialSource::Env {
                username_var: e.username_env,
                password_var: e.password_env,
            }
        }
    };

    let tls = match r.tls {
        None => TlsOptions::default(),
        Some(t) => {
            let ca_cert = match t.ca_cert {
                Some(ca) => {
                    let ca = base_dir.join(ca);
                    if !ca.is_file() {
                        return Err(src.fail(
                            &at.key("tls").key("caCert"),
                            format!("{} is not a readable file", ca.display()),
                        ));
                    }
                    Some(ca)
                }
                None => None,
            };
            TlsOptions {
                ca_cert,
                insecure: t.insecure,
                plain_http: t.plain_http,
            }
        }
    };

    let mut exclude = Vec::new();
    for (i, e) in r.exclude.iter().enumerate() {
        exclude.push(
            Exclude::parse(e)
                .map_err(|m| src.fail(&at.key("exclude").index(i), format!("{e:?}: {m}")))?,
        );
    }

    let catalog = match (r.catalog, r.catalog_tags) {
        (true, Some(rule)) => Some(validate_rule(src, &at.key("catalogTags"), rule)?),
        (true, None) => Some(TagRule::Semver {
            range: None,
            newest: Some(DEFAULT_CATALOG_NEWEST),
        }),
        (false, Some(_)) => {
            return Err(src.fail(
                &at.key("catalogTags"),
                "has no effect without `catalog: true`",
            ))
        }
        (false, None) => None,
    };

    if r.images.is_empty() && catalog.is_none() {
        return Err(src.fail(
            &at,
            "no images: list them under `images`, or set `catalog: true`",
        ));
    }
    let prefix = if namespace.is_empty() {
        String::new()
    } else {
        format!("{namespace}/")
    };
    let mut images = Vec::new();
    for (ii, img) in r.images.into_iter().enumerate() {
        let iat = at.key("images").index(ii);
        let name = img.name.trim().to_string();
        validate_repository(&name).map_err(|e| src.fail(&iat.key("name"), e))?;
        let reference = Reference::parse(&format!("{registry}/{prefix}{name}"))
            .map_err(|e| src.fail(&iat.key("name"), e))?;
        if let Some((k, _)) = exclude
            .iter()
            .enumerate()
            .find(|(_, e)| e.excludes_repository(&name))
        {
            return Err(src.fail(
                &iat.key("name"),
                format!("{name} is listed here and excluded by exclude[{k}]: remove one of them"),
            ));
        }
        let rule = validate_rule(src, &iat, img.rule())?;
        let platforms = match img.platforms {
            Some(p) => Some(validate_platforms(src, &iat.key("platforms"), p)?),
            None => None,
        };
        images.push(ImageRule {
            name,
            repository: reference.repository,
            rule,
            platforms,
            index: (ri, ii),
        });
    }

    Ok(RegistrySet {
        registry,
        namespace,
        credentials,
        tls,
        images,
        catalog,
        exclude,
    })
}

/// Checks that exactly one tag rule is given (or `semver` with `newest`) and builds it.
fn validate_rule(src: &Source, at: &KeyPath, r: RawRule) -> Result<TagRule> {
    let given: Vec<&str> = [
        ("tags", r.tags.is_some()),
        ("tagRegex", r.tag_regex.is_some()),
        ("semver", r.semver.is_some()),
        ("newest", r.newest.is_some()),
        ("allTags", r.all_tags == Some(true)),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    match given.as_slice() {
        [] => {
            return Err(src.fail(
                at,
                "no tag rule: give one of tags, tagRegex, semver, newest, allTags: true",
            ))
        }
        [_] | ["semver", "newest"] => {}
        [first, second, ..] => {
            return Err(src.fail(
                &at.key(second),
                format!(
                    "only one tag rule per entry, but both `{first}` and `{second}` are given \
                     (only `semver` and `newest` combine)"
                ),
            ))
        }
    }
    if let Some(tags) = r.tags {
        if tags.is_empty() {
            return Err(src.fail(&at.key("tags"), "empty: list at least one tag"));
        }
        for (i, t) in tags.iter().enumerate() {
            validate_tag(t).map_err(|e| src.fail(&at.key("tags").index(i), e))?;
        }
        return Ok(TagRule::Tags(tags));
    }
    if let Some(re) = r.tag_regex {
        let compiled = regex::Regex::new(&re).map_err(|e| {
            src.fail(
                &at.key("tagRegex"),
                format!("invalid regular expression '{re}': {e}"),
            )
        })?;
        return Ok(TagRule::Regex(compiled));
    }
    if r.all_tags == Some(true) {
        return Ok(TagRule::All);
    }
    let newest = match r.newest {
        Some(0) => return Err(src.fail(&at.key("newest"), "must be at least 1")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let range = match r.semver {
        Some(text) => {
            let req = parse_version_req(&text).map_err(|e| {
                src.fail(
                    &at.key("semver"),
                    format!("invalid version requirement {text:?}: {e}"),
                )
            })?;
            Some(VersionRange { text, req })
        }
        None => None,
    };
    Ok(TagRule::Semver { range, newest })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageset::TagRule;

    fn load_str(text: &str) -> Result<ImageSet> {
        parse(Path::new("arc.yaml"), text.to_string())
    }

    /// The usage error a file gives.
    fn err(text: &str) -> String {
        match load_str(text) {
            Err(Error::Usage(m)) => m,
            Err(e) => panic!("not a usage error: {e}"),
            Ok(_) => panic!("accepted:\n{text}"),
        }
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const FULL: &str = r#"# arc.yaml — what the monthly export takes
platforms: [linux/amd64]
registries:
  - registry: mcr.microsoft.com
    namespace: arcdata
    credentials: docker
    tls: { insecure: false, plainHttp: false }
    catalog: true
    catalogTags: { newest: 2 }
    exclude: [arc-legacy, "arc-sqlmi:v1.13.0"]
    images:
      - name: arc-controller
        tags: [v1.14.0, v1.14.1]
      - name: arc-sqlmi
        tagRegex: '^v1\.14\.\d+$'
      - name: arc-postgres
        semver: '>=1.14.0, <2'
      - name: arc-monitor
        newest: 3
      - name: arc-tools
        allTags: true
        platforms: [linux/amd64, linux/arm64]
      - name: sub/path/image
        semver: '>=1.14.0 <2'
        newest: 1
  - registry: 127.0.0.1:5000
    credentials: { usernameEnv: MIRROR_USER, passwordEnv: MIRROR_PASS }
    images:
      - name: library/nginx
        tags: ['1.27']
        platforms: []
  - registry: quay.io
    credentials: anonymous
    images:
      - { name: prometheus/prometheus, semver: '^2.53' }
"#;

    #[test]
    fn parses_a_full_file() {
        let set = load_str(FULL).unwrap();
        assert_eq!(set.path, Path::new("arc.yaml"));
        assert_eq!(set.platforms, vec!["linux/amd64"]);
        assert_eq!(set.registries.len(), 3);
        let mcr = &set.registries[0];
        assert_eq!(mcr.registry, "mcr.microsoft.com");
        assert_eq!(mcr.namespace, "arcdata");
        assert_eq!(mcr.credentials, CredentialSource::Default);
        assert!(!mcr.tls.insecure && !mcr.tls.plain_http && mcr.tls.ca_cert.is_none());
        assert_eq!(
            mcr.exclude,
            vec![
                Exclude {
                    name: "arc-legacy".into(),
                    tag: None
                },
                Exclude {
                    name: "arc-sqlmi".into(),
                    tag: Some("v1.13.0".into())
                }
            ]
        );
        assert_eq!(
            mcr.catalog.as_ref().map(|r| r.to_string()).as_deref(),
            Some("newest: 2")
        );
        let rules: Vec<String> = mcr.images.iter().map(|i| i.rule.to_string()).collect();
        assert_eq!(
            rules,
            vec![
                "tags [v1.14.0, v1.14.1]",
                r"tagRegex '^v1\.14\.\d+$'",
                "semver '>=1.14.0, <2'",
                "newest: 3",
                "allTags",
                "semver '>=1.14.0 <2' with newest: 1",
            ]
        );
        assert_eq!(mcr.images[1].repository, "arcdata/arc-sqlmi");
        assert_eq!(mcr.images[5].repository, "arcdata/sub/path/image");
        assert_eq!(mcr.images[0].platforms, None);
        assert_eq!(
            mcr.images[4].platforms,
            Some(tags(&["linux/amd64", "linux/arm64"]))
        );
        let local = &set.registries[1];
        assert_eq!(local.namespace, "");
        assert_eq!(
            local.credentials,
            CredentialSource::Env {
                username_var: "MIRROR_USER".into(),
                password_var: "MIRROR_PASS".into()
            }
        );
        assert_eq!(local.images[0].platforms, Some(vec![]));
        assert!(local.catalog.is_none());
        assert_eq!(set.registries[2].credentials, CredentialSource::Anonymous);
        assert_eq!(
            set.registries[2].images[0].rule.to_string(),
            "semver '^2.53'"
        );
    }

    #[test]
    fn catalog_defaults_to_the_newest_tag() {
        let set =
            load_str("registries:\n  - registry: r.io\n    namespace: ns\n    catalog: true\n")
                .unwrap();
        assert_eq!(
            set.registries[0]
                .catalog
                .as_ref()
                .map(|r| r.to_string())
                .as_deref(),
            Some("newest: 1")
        );
        assert!(set.registries[0].images.is_empty());
    }

    #[test]
    fn ca_cert_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let file = dir.path().join("set.yaml");
        std::fs::write(
            &file,
            "registries:\n  - registry: r.io\n    tls: { caCert: ca.pem }\n    images: [{ name: a, allTags: true }]\n",
        )
        .unwrap();
        let set = load(&file).unwrap();
        assert_eq!(
            set.registries[0].tls.ca_cert.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        let missing = err(
            "registries:\n  - registry: r.io\n    tls:\n      insecure: true\n      caCert: /nonexistent/ca.pem\n    images: [{ name: a, allTags: true }]\n",
        );
        assert!(
            missing.starts_with("arc.yaml:5: registries[0].tls.caCert: /nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn missing_file_names_it() {
        let e = load(Path::new("/nonexistent/arc.yaml")).unwrap_err();
        assert!(
            matches!(&e, Error::Usage(m) if m.starts_with("/nonexistent/arc.yaml: ")),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_name_line_and_alternatives() {
        let m = err(
            "registries:\n  - registry: r.io\n    images:\n      - name: a\n        tgs: [v1]\n",
        );
        assert!(
            m.starts_with("arc.yaml:5: registries[0].images[0]: unknown key 'tgs' (expected one of name, tags, tagRegex, semver, newest, allTags, platforms)"),
            "{m}"
        );
        let m = err("platform: [linux/amd64]\nregistries: []\n");
        assert!(
            m.starts_with("arc.yaml:1: unknown key 'platform' (expected platforms or registries)"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    namespce: ns\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: registries[0]: unknown key 'namespce'"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    tls: { insecure: true, plainHTTP: true }\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: registries[0].tls: unknown key 'plainHTTP'"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    catalog: true\n    catalogTags:\n      newst: 2\n");
        assert!(
            m.starts_with("arc.yaml:5: registries[0].catalogTags: unknown key 'newst'"),
            "{m}"
        );
    }

    #[test]
    fn type_and_syntax_errors_have_lines() {
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags: v1.14.0\n");
        assert!(
            m.starts_with("arc.yaml:5: registries[0].images[0].tags: invalid type"),
            "{m}"
        );
        let m = err("registries:\n  - namespace: x\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:2: registries[0]: missing key 'registry'"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n   images: [\n");
        assert!(m.starts_with("arc.yaml:3: "), "{m}");
        let m = err("");
        assert!(m.starts_with("arc.yaml:1: "), "{m}");
        let m = err(
            "registries:\n  - registry: r.io\n    images:\n      - name: a\n        newest: -1\n",
        );
        assert!(
            m.starts_with("arc.yaml:5: registries[0].images[0].newest: invalid type"),
            "{m}"
        );
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let m = err("registries:\n  - registry: r.io\n    namespace: ns\n    images:\n      - name: a\n        tags: [v1]\n      - name: b\n        semver: '>=1.x.y'\n");
        assert!(
            m.starts_with(r#"arc.yaml:8: registries[0].images[1].semver: invalid version requirement ">=1.x.y""#),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: a\n        tagRegex: '^v1\\.(14'\n");
        assert!(
            m.starts_with(r#"arc.yaml:5: registries[0].images[0].tagRegex: invalid regular expression '^v1\.(14'"#),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags: [v1]\n        newest: 2\n");
        assert!(
            m.starts_with("arc.yaml:6: registries[0].images[0].newest: only one tag rule per entry, but both `tags` and `newest`"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags: [v1]\n      - name: b\n        platforms: [linux/amd64]\n");
        assert!(
            m.starts_with("arc.yaml:6: registries[0].images[1]: no tag rule"),
            "{m}"
        );
        let m = err("registries:\n  - registry: ''\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:2: registries[0].registry: empty"),
            "{m}"
        );
        let m = err(
            "registries:\n  - registry: myregistry\n    images: [{ name: a, allTags: true }]\n",
        );
        assert!(m.starts_with("arc.yaml:2: registries[0].registry: \"myregistry\" would be read as a Docker Hub namespace"), "{m}");
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: Arc-Controller\n        allTags: true\n");
        assert!(
            m.starts_with("arc.yaml:4: registries[0].images[0].name: repository component"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    namespace: Arc/\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: registries[0].namespace: "),
            "{m}"
        );
        let m = err("platforms:\n  - linux/amd64\n  - linux\nregistries:\n  - registry: r.io\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: platforms[1]: invalid platform \"linux\""),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: a\n        allTags: true\n        platforms: [linux/amd64, 'linux//v7']\n");
        assert!(
            m.starts_with("arc.yaml:6: registries[0].images[0].platforms[1]: invalid platform"),
            "{m}"
        );
        let m = err(
            "registries:\n  - registry: r.io\n    images:\n      - name: a\n        newest: 0\n",
        );
        assert!(
            m.starts_with("arc.yaml:5: registries[0].images[0].newest: must be at least 1"),
            "{m}"
        );
        let m = err(
            "registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags: []\n",
        );
        assert!(
            m.starts_with("arc.yaml:5: registries[0].images[0].tags: empty"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags:\n          - v1\n          - -bad\n");
        assert!(
            m.starts_with("arc.yaml:7: registries[0].images[0].tags[1]: tag \"-bad\""),
            "{m}"
        );
        let m = err("registries: []\n");
        assert!(
            m.starts_with("arc.yaml:1: registries: no registries"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    namespace: ns\n");
        assert!(m.starts_with("arc.yaml:2: registries[0]: no images"), "{m}");
        let m = err("registries:\n  - registry: r.io\n    catalogTags: { newest: 1 }\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: registries[0].catalogTags: has no effect"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    catalog: true\n    catalogTags: { tags: [a], newest: 1 }\n");
        assert!(
            m.starts_with("arc.yaml:4: registries[0].catalogTags.newest: only one tag rule"),
            "{m}"
        );
    }

    #[test]
    fn credential_and_exclude_errors() {
        let m = err("registries:\n  - registry: r.io\n    credentials: dockr\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: registries[0].credentials: invalid value: string \"dockr\", expected `docker`, `anonymous` or a mapping"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    credentials:\n      usernameEnv: U\n      password: P\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:5: registries[0].credentials: unknown key 'password' (expected usernameEnv or passwordEnv)"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    credentials: { usernameEnv: U, passwordEnv: '1X' }\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:3: registries[0].credentials.passwordEnv: \"1X\" is not an environment variable name"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    exclude:\n      - ok\n      - 'Bad:tag'\n    images: [{ name: a, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:5: registries[0].exclude[1]: \"Bad:tag\""),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    exclude: [a]\n    images:\n      - name: b\n        allTags: true\n      - name: a\n        allTags: true\n");
        assert!(
            m.starts_with("arc.yaml:7: registries[0].images[1].name: a is listed here and excluded by exclude[0]"),
            "{m}"
        );
        let m = err("registries:\n  - registry: r.io\n    images: [{ name: a, allTags: true }]\n  - registry: r.io\n    credentials: anonymous\n    images: [{ name: b, allTags: true }]\n");
        assert!(
            m.starts_with("arc.yaml:4: registries[1].registry: r.io is listed again"),
            "{m}"
        );
    }

    #[test]
    fn anchors_and_aliases_share_one_tag_list() {
        let set = load_str(
            "registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags: &release [v1.14.0]\n      - name: b\n        tags: *release\n      - name: c\n        tgs: *release\n",
        );
        let m = match set {
            Err(Error::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            m.starts_with("arc.yaml:9: registries[0].images[2]: unknown key 'tgs'"),
            "{m}"
        );
        let set = load_str(
            "registries:\n  - registry: r.io\n    images:\n      - name: a\n        tags: &release [v1.14.0]\n      - name: b\n        tags: *release\n",
        )
        .unwrap();
        assert_eq!(
            set.registries[0].images[1].rule.to_string(),
            "tags [v1.14.0]"
        );
    }

    #[test]
    fn the_example_file_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/arc.yaml"));
        let set = load(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.registries.len(), 1);
        let mcr = &set.registries[0];
        assert_eq!(mcr.registry, "mcr.microsoft.com");
        assert_eq!(mcr.namespace, "arcdata");
        assert!(mcr.images.len() >= 18, "{}", mcr.images.len());
        for img in &mcr.images {
            assert!(
                matches!(&img.rule, TagRule::Tags(t) if t.len() == 1),
                "{}",
                img.name
            );
        }
        let names: Vec<&str> = mcr.images.iter().map(|i| i.name.as_str()).collect();
        for want in [
            "arc-controller",
            "arc-sqlmi",
            "arc-postgres-12",
            "arc-logs-fluentbit",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }
}
