//! The image-set file of `airlock export --config FILE`: a YAML document that says, per
//! registry, which repositories to export and which of their tags (explicit tags, a regular
//! expression, a semver range, the newest N, every tag, or every repository of a namespace
//! through the registry's catalog), with excludes, credentials, TLS settings and platforms.
//!
//! [`load`] parses and validates the whole file before anything touches the network; every
//! problem is a usage error that names the file, the line and the key
//! (`arc.yaml:12: registries[0].images[1].semver: invalid version requirement "…"`).
//! [`ImageSet::select`] then lists tags (and the catalog where asked) through connected
//! clients and resolves every entry to concrete `registry/namespace/name:tag` references, in a
//! deterministic order. The tag logic itself ([`TagRule::select`], [`apply_excludes`],
//! [`parse_version_req`], [`parse_semver_tag`]) is pure and works on plain lists of tags.
//!
//! Line numbers for problems found after parsing come from a second pass over the YAML events
//! (`Locate`): a visitor walks to the offending key or list item and stops there with a
//! marker error, and serde_norway stamps that error with the position of the event it was on.

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::reference::{validate_registry, validate_repository, validate_tag, Reference};
use crate::registry::{Registry, TlsOptions};
use futures_util::stream::{self, StreamExt};
use semver::{Version, VersionReq};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many tag listings run at once during [`ImageSet::select`].
const LIST_CONCURRENCY: usize = 8;

/// The tag rule catalog repositories get when `catalogTags` is not given.
const DEFAULT_CATALOG_NEWEST: usize = 1;

// ---------------------------------------------------------------------------------------------
// The parsed, validated model
// ---------------------------------------------------------------------------------------------

/// A parsed and validated image-set file.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// The file it was read from (as given), used in every error message.
    pub path: PathBuf,
    /// The global platform filter (`os/arch[/variant]`); empty keeps every platform.
    pub platforms: Vec<String>,
    /// The registries, in file order.
    pub registries: Vec<RegistrySet>,
    /// The file's text, to find lines for errors found while selecting.
    text: String,
}

/// One entry of `registries`.
#[derive(Clone, Debug)]
pub struct RegistrySet {
    /// `host[:port]` as written in the file.
    pub registry: String,
    /// The namespace image names are below; empty when names are full repository paths.
    pub namespace: String,
    pub credentials: CredentialSource,
    /// TLS settings; a relative `caCert` is resolved against the file's directory.
    pub tls: TlsOptions,
    /// The listed images, in file order.
    pub images: Vec<ImageRule>,
    /// `Some(rule)` when `catalog: true`: every catalog repository under the namespace that is
    /// not listed in `images` nor excluded by name, with this tag rule (`catalogTags`).
    pub catalog: Option<TagRule>,
    /// `exclude`: repository names (below the namespace), or `name:tag`.
    pub exclude: Vec<Exclude>,
}

/// Where a registry's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `docker` (the default): the command line and `SOURCE_DOCKER_*` environment, else
    /// docker's config.json and credential helpers, else podman's auth.json.
    Default,
    /// `anonymous`: never send credentials.
    Anonymous,
    /// `{usernameEnv: VAR, passwordEnv: VAR}`: read from these environment variables.
    Env {
        username_var: String,
        password_var: String,
    },
}

impl CredentialSource {
    /// For [`CredentialSource::Env`], reads the two variables (a usage error names the one that
    /// is unset or empty); `None` for the other sources.
    pub fn env_credentials(&self) -> Result<Option<Credentials>> {
        let CredentialSource::Env {
            username_var,
            password_var,
        } = self
        else {
            return Ok(None);
        };
        let read = |var: &str, key: &str| {
            crate::config::env(var).ok_or_else(|| {
                Error::Usage(format!(
                    "credentials: environment variable {var} (named by {key}) is not set or empty"
                ))
            })
        };
        let user = read(username_var, "usernameEnv")?;
        let pass = read(password_var, "passwordEnv")?;
        Ok(Some(Credentials::new(user, pass)))
    }
}

/// One entry of `images`.
#[derive(Clone, Debug)]
pub struct ImageRule {
    /// The name below the namespace (may contain `/`).
    pub name: String,
    /// The repository path at the registry (`namespace/name`, normalised as docker does).
    pub repository: String,
    pub rule: TagRule,
    /// The image's own platform list, overriding the global one (`Some(vec![])` keeps every
    /// platform even when a global list is set).
    pub platforms: Option<Vec<String>>,
    /// Position in the file: (registry index, image index).
    index: (usize, usize),
}

/// Which tags of a repository to take.
#[derive(Clone, Debug)]
pub enum TagRule {
    /// `tags`: exactly these (not checked against the registry's list; a missing tag fails
    /// when the image is resolved).
    Tags(Vec<String>),
    /// `tagRegex`: every listed tag the expression matches (anchored only as written).
    Regex(regex::Regex),
    /// `semver` and/or `newest`: the listed tags that parse as semver (a leading `v`
    /// allowed), within the range when one is given, the newest N when `newest` is given.
    Semver {
        range: Option<VersionRange>,
        newest: Option<usize>,
    },
    /// `allTags: true`: every listed tag.
    All,
}

/// A `semver` requirement with the text it was written as.
#[derive(Clone, Debug)]
pub struct VersionRange {
    pub text: String,
    pub req: VersionReq,
}

/// One entry of `exclude`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclude {
    /// Repository name below the namespace.
    pub name: String,
    /// `None` excludes the whole repository.
    pub tag: Option<String>,
}

impl Exclude {
    /// Parses `name` or `name:tag`.
    pub fn parse(text: &str) -> std::result::Result<Exclude, String> {
        let t = text.trim();
        let (name, tag) = match t.rsplit_once(':') {
            Some((n, tag)) => (n, Some(tag)),
            None => (t, None),
        };
        validate_repository(name)?;
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        Ok(Exclude {
            name: name.to_string(),
            tag: tag.map(str::to_string),
        })
    }

    fn excludes_repository(&self, name: &str) -> bool {
        self.tag.is_none() && self.name == name
    }
}

impl fmt::Display for Exclude {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One image to export, fully resolved to a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// `registry/namespace/name:tag`, parsed with [`Reference::parse`].
    pub reference: Reference,
    /// The registry entry's namespace (what import may replace); may be empty.
    pub namespace: String,
    /// The name below the namespace (the full repository path when the namespace is empty).
    pub path: String,
    /// The image's platforms, else the global ones, else empty (every platform).
    pub platforms: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Pure tag selection
// ---------------------------------------------------------------------------------------------

/// Parses a tag as a semantic version, allowing a leading `v` (`v1.14.0`, `1.15.0-rc1`).
pub fn parse_semver_tag(tag: &str) -> Option<Version> {
    let s = tag.strip_prefix('v').unwrap_or(tag);
    Version::parse(s).ok()
}

/// Parses a version requirement in the semver crate's syntax (`>=1.14.0, <2`), also accepting
/// comparators separated by spaces (`>=1.14.0 <2`), an operator apart from its version
/// (`>= 1.14.0`) and a leading `v` on versions (`>=v1.14.0`).
pub fn parse_version_req(text: &str) -> std::result::Result<VersionReq, String> {
    let mut parts: Vec<String> = Vec::new();
    let mut op = String::new();
    for tok in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        if tok.chars().all(|c| "<>=~^".contains(c)) {
            op.push_str(tok);
            continue;
        }
        let split = tok
            .find(|c: char| !"<>=~^".contains(c))
            .unwrap_or(tok.len());
        let (tok_op, version) = tok.split_at(split);
        let version = match version.strip_prefix('v') {
            Some(v) if v.starts_with(|c: char| c.is_ascii_digit()) => v,
            _ => version,
        };
        parts.push(format!("{op}{tok_op}{version}"));
        op.clear();
    }
    if !op.is_empty() {
        parts.push(op);
    }
    if parts.is_empty() {
        return Err("it is empty".into());
    }
    VersionReq::parse(&parts.join(", ")).map_err(|e| e.to_string())
}

/// Sorts tags by semver, newest first (ties, like `v1.0.0` and `1.0.0`, lexicographically).
fn by_semver_descending(mut tags: Vec<(Version, String)>) -> Vec<String> {
    tags.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    tags.into_iter().map(|(_, t)| t).collect()
}

impl TagRule {
    /// Whether the rule needs the registry's tag list (every rule but explicit `tags`).
    pub fn needs_listing(&self) -> bool {
        !matches!(self, TagRule::Tags(_))
    }

    /// Applies the rule to the tags a registry listed (ignored for explicit `tags`). The result
    /// has no duplicates and is sorted: by semver, newest first, for `semver`/`newest`;
    /// lexicographically otherwise.
    pub fn select(&self, available: &[String]) -> Vec<String> {
        let mut out: Vec<String> = match self {
            TagRule::Tags(tags) => tags.clone(),
            TagRule::Regex(re) => available
                .iter()
                .filter(|t| re.is_match(t))
                .cloned()
                .collect(),
            TagRule::All => available.to_vec(),
            TagRule::Semver { range, newest } => {
                let mut seen = HashSet::new();
                let candidates: Vec<(Version, String)> = available
                    .iter()
                    .filter(|t| seen.insert(t.as_str()))
                    .filter_map(|t| parse_semver_tag(t).map(|v| (v, t.clone())))
                    .filter(|(v, _)| range.as_ref().is_none_or(|r| r.req.matches(v)))
                    .collect();
                let mut sorted = by_semver_descending(candidates);
                if let Some(n) = newest {
                    sorted.truncate(*n);
                }
                return sorted;
            }
        };
        out.sort();
        out.dedup();
        out
    }
}

impl fmt::Display for TagRule {
    /// The rule as it is written in the file, for messages and plans.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagRule::Tags(tags) => write!(f, "tags [{}]", tags.join(", ")),
            TagRule::Regex(re) => write!(f, "tagRegex '{}'", re.as_str()),
            TagRule::All => f.write_str("allTags"),
            TagRule::Semver {
                range: Some(r),
                newest: None,
            } => write!(f, "semver '{}'", r.text),
            TagRule::Semver {
                range: Some(r),
                newest: Some(n),
            } => write!(f, "semver '{}' with newest: {n}", r.text),
            TagRule::Semver {
                range: None,
                newest: Some(n),
            } => write!(f, "newest: {n}"),
            TagRule::Semver {
                range: None,
                newest: None,
            } => f.write_str("every semver tag"),
        }
    }
}

/// Drops the tags of repository `name` that `excludes` names (`name:tag`), and every tag when
/// the whole repository is excluded (`name`).
pub fn apply_excludes(name: &str, tags: Vec<String>, excludes: &[Exclude]) -> Vec<String> {
    if excludes.iter().any(|e| e.excludes_repository(name)) {
        return Vec::new();
    }
    tags.into_iter()
        .filter(|t| {
            !excludes
                .iter()
                .any(|e| e.name == name && e.tag.as_deref() == Some(t.as_str()))
        })
        .collect()
}

/// The tags of repository `name` that `rule` takes from `available`, with `excludes` applied
/// before the rule (so `newest: 1` with the newest release excluded takes the one before it)
/// and after it (for explicit `tags`).
pub fn select_tags(
    rule: &TagRule,
    name: &str,
    available: &[String],
    excludes: &[Exclude],
) -> Vec<String> {
    let kept = apply_excludes(name, available.to_vec(), excludes);
    apply_excludes(name, rule.select(&kept), excludes)
}

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
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with `registries` (and optionally `platforms`)"
)]
struct RawFile {
    #[serde(default)]
    platforms: Vec<String>,
    registries: Vec<RawRegistry>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a registry entry: a mapping with `registry`, `namespace`, `images`…"
)]
struct RawRegistry {
    registry: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    credentials: Option<RawCredentials>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    catalog: bool,
    #[serde(default)]
    catalog_tags: Option<RawRule>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    images: Vec<RawImage>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with `caCert`, `insecure`, `plainHttp`"
)]
struct RawTls {
    #[serde(default)]
    ca_cert: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    plain_http: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a tag rule: a mapping with one of `tags`, `tagRegex`, `semver`, `newest`, `allTags`"
)]
struct RawRule {
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    tag_regex: Option<String>,
    #[serde(default)]
    semver: Option<String>,
    #[serde(default)]
    newest: Option<u64>,
    #[serde(default)]
    all_tags: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an image: a mapping with `name` and a tag rule"
)]
struct RawImage {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    tag_regex: Option<String>,
    #[serde(default)]
    semver: Option<String>,
    #[serde(default)]
    newest: Option<u64>,
    #[serde(default)]
    all_tags: Option<bool>,
    #[serde(default)]
    platforms: Option<Vec<String>>,
}

impl RawImage {
    fn rule(&self) -> RawRule {
        RawRule {
            tags: self.tags.clone(),
            tag_regex: self.tag_regex.clone(),
            semver: self.semver.clone(),
            newest: self.newest,
            all_tags: self.all_tags,
        }
    }
}

enum RawCredentials {
    Named(CredentialSource),
    Env(RawEnvCredentials),
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with `usernameEnv` and `passwordEnv`"
)]
struct RawEnvCredentials {
    username_env: String,
    password_env: String,
}

impl<'de> Deserialize<'de> for RawCredentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCredentials;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "`docker`, `anonymous` or a mapping {usernameEnv: VAR, passwordEnv: VAR}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RawCredentials, E> {
                match v {
                    "docker" => Ok(RawCredentials::Named(CredentialSource::Default)),
                    "anonymous" => Ok(RawCredentials::Named(CredentialSource::Anonymous)),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<RawCredentials, A::Error> {
                RawEnvCredentials::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawCredentials::Env)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Paths to keys, and finding their lines
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A path to a value in the file, displayed as `registries[0].images[1].semver`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    fn image(registry: usize, image: usize) -> KeyPath {
        KeyPath::default()
            .key("registries")
            .index(registry)
            .key("images")
            .index(image)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The message the locator stops with; never shown.
const FOUND: &str = "\u{1}airlock: located\u{1}";

/// Walks the YAML events to the value at a path and fails there, so that serde_norway marks
/// the error with that value's (or, for the last key of the path, that key's) position.
struct Locate<'a>(&'a [Seg]);

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! locate_scalar {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> std::result::Result<(), E> {
            self.scalar()
        })*
    };
}

impl Locate<'_> {
    /// A scalar is the end of the walk: here when the path ends here, else not found.
    fn scalar<E: de::Error>(&self) -> std::result::Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    locate_scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
        visit_u128: u128, visit_f64: f64, visit_str: &str);
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<(), E> {
        self.scalar()
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let wanted = match first {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        };
        while let Some(hit) = map.next_key_seed(LocateKey {
            wanted,
            stop: rest.is_empty(),
        })? {
            if hit {
                map.next_value_seed(Locate(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let mut i = 0;
        loop {
            let found = if *first == Seg::Index(i) {
                seq.next_element_seed(Locate(rest))?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if found.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// A mapping key: true when it is the wanted one; fails on it when the walk stops there.
struct LocateKey<'a> {
    wanted: Option<&'a str>,
    stop: bool,
}

impl<'de> DeserializeSeed<'de> for LocateKey<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LocateKey<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<bool, E> {
        let hit = self.wanted == Some(v);
        if hit && self.stop {
            return Err(E::custom(FOUND));
        }
        Ok(hit)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<bool, E> {
        Ok(false)
    }
}

/// The file being read: its name (for messages) and text (for lines).
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// The 1-based line of the value (or last key) at `path`, if it is in the file.
    fn locate(&self, path: &[Seg]) -> Option<usize> {
        let de = serde_norway::Deserializer::from_str(self.text);
        match Locate(path).deserialize(de) {
            Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| l.line()),
            _ => None,
        }
    }

    /// The line of `path`, else of its nearest ancestor that is in the file, else 1.
    fn line(&self, path: &KeyPath) -> usize {
        let mut p = path.0.as_slice();
        loop {
            if let Some(line) = self.locate(p) {
                return line;
            }
            match p.split_last() {
                Some((_, parent)) if !parent.is_empty() => p = parent,
                _ => return 1,
            }
        }
    }

    /// `FILE:LINE: KEY: MESSAGE` as a usage error.
    fn fail(&self, path: &KeyPath, msg: impl fmt::Display) -> Error {
        Error::Usage(self.message(path, msg))
    }

    fn message(&self, path: &KeyPath, msg: impl fmt::Display) -> String {
        let line = self.line(path);
        if path.0.is_empty() {
            format!("{}:{line}: {msg}", self.file.display())
        } else {
            format!("{}:{line}: {path}: {msg}", self.file.display())
        }
    }

    /// A serde_norway error as `FILE:LINE: KEY: MESSAGE`, in the file's own vocabulary.
    fn yaml_error(&self, e: &serde_norway::Error) -> Error {
        let mut msg = e.to_string();
        let line = match e.location() {
            Some(loc) => {
                for suffix in [
                    format!(" at line {} column {}", loc.line(), loc.column()),
                    format!(" at position {}", loc.index()),
                ] {
                    if let Some(m) = msg.strip_suffix(&suffix) {
                        msg = m.to_string();
                        break;
                    }
                }
                loc.line()
            }
            None => 1,
        };
        Error::Usage(format!(
            "{}:{line}: {}",
            self.file.display(),
            friendly_serde_message(&msg)
        ))
    }
}

/// Rewrites serde's field vocabulary into the file's: ``unknown field `tgs`, expected one of
/// `name`, `tags` `` becomes `unknown key 'tgs' (expected one of name, tags)`.
fn friendly_serde_message(msg: &str) -> String {
    const UNKNOWN: &str = "unknown field `";
    if let Some(i) = msg.find(UNKNOWN) {
        let rest = &msg[i + UNKNOWN.len()..];
        if let Some(end) = rest.find('`') {
            let tail = rest[end + 1..].trim_start_matches(", ").replace('`', "");
            return format!("{}unknown key '{}' ({tail})", &msg[..i], &rest[..end]);
        }
    }
    for (from, to) in [
        ("missing field `", "missing key '"),
        ("duplicate field `", "duplicate key '"),
    ] {
        if let Some(i) = msg.find(from) {
            let rest = &msg[i + from.len()..];
            if let Some(end) = rest.find('`') {
                return format!("{}{to}{}'{}", &msg[..i], &rest[..end], &rest[end + 1..]);
            }
        }
    }
    msg.to_string()
}

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Selection against registries
// ---------------------------------------------------------------------------------------------

/// Where a repository to list came from.
enum Origin<'a> {
    Listed(&'a ImageRule),
    Catalog,
}

struct Job<'a> {
    name: String,
    repository: String,
    rule: &'a TagRule,
    platforms: Vec<String>,
    origin: Origin<'a>,
}

/// One repository's tag list, filled on first use.
type TagListCell = Arc<tokio::sync::OnceCell<Vec<String>>>;

/// The tag lists read in one run, per (registry, repository): each is asked for once, even
/// when several parts of the run need it at the same time.
#[derive(Clone, Default)]
pub struct TagLists {
    lists: Arc<std::sync::Mutex<HashMap<(String, String), TagListCell>>>,
}

impl TagLists {
    /// The tags of `repository` at `client`'s registry, listed on first use. A failed listing
    /// is not kept (the next caller asks again).
    pub async fn list(&self, client: &Registry, repository: &str) -> Result<Vec<String>> {
        let cell = {
            let mut lists = self
                .lists
                .lock()
                .map_err(|_| Error::Failed("tag list cache poisoned".into()))?;
            lists
                .entry((client.name().to_string(), repository.to_string()))
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| client.list_tags(repository))
            .await
            .cloned()
    }
}

impl ImageSet {
    /// Lists tags (and the catalog where asked) through the given clients (one per
    /// `RegistrySet.registry`, already connected by the caller; a client keyed by the
    /// normalised name, e.g. `docker.io` for `index.docker.io`, is found too) and applies the
    /// rules and excludes.
    ///
    /// Order: registries in file order, images in file order then catalog repositories sorted;
    /// tags newest first by semver for `semver`/`newest`, else lexicographically. The same
    /// reference selected twice appears once. Every listed image whose rule leaves no tag is
    /// reported, together, as a usage error naming the file, line, image and rule; a catalog
    /// repository that has no matching tag (or no tags at all) is skipped.
    pub async fn select(&self, clients: &HashMap<String, Arc<Registry>>) -> Result<Vec<Selected>> {
        self.select_with(clients, &TagLists::default()).await
    }

    /// Like [`select`](Self::select), reading tag lists through `tags`, which keeps them for
    /// the rest of the run (the search for signatures reads the same lists).
    pub async fn select_with(
        &self,
        clients: &HashMap<String, Arc<Registry>>,
        tags: &TagLists,
    ) -> Result<Vec<Selected>> {
        let src = Source {
            file: &self.path,
            text: &self.text,
        };
        let mut out: Vec<Selected> = Vec::new();
        let mut empty: Vec<String> = Vec::new();
        for (ri, reg) in self.registries.iter().enumerate() {
            let client = self.client_for(reg, clients)?;
            let prefix = if reg.namespace.is_empty() {
                String::new()
            } else {
                format!("{}/", reg.namespace)
            };
            let mut jobs: Vec<Job> = reg
                .images
                .iter()
                .map(|img| Job {
                    name: img.name.clone(),
                    repository: img.repository.clone(),
                    rule: &img.rule,
                    platforms: img
                        .platforms
                        .clone()
                        .unwrap_or_else(|| self.platforms.clone()),
                    origin: Origin::Listed(img),
                })
                .collect();
            if let Some(rule) = &reg.catalog {
                let at = KeyPath::default()
                    .key("registries")
                    .index(ri)
                    .key("catalog");
                let repos = client.catalog().await.map_err(|e| match e {
                    Error::NotFound { registry, .. } => Error::registry(
                        registry,
                        src.message(
                            &at,
                            "this registry does not offer a catalog (_catalog: 404)",
                        ),
                    ),
                    e => e,
                })?;
                let listed: HashSet<&str> = reg.images.iter().map(|i| i.name.as_str()).collect();
                let mut names: Vec<String> = repos
                    .iter()
                    .filter_map(|r| {
                        if prefix.is_empty() {
                            Some(r.as_str())
                        } else {
                            r.strip_prefix(&prefix)
                        }
                    })
                    .filter(|n| !listed.contains(n))
                    .filter(|n| !reg.exclude.iter().any(|e| e.excludes_repository(n)))
                    .map(str::to_string)
                    .collect();
                names.sort();
                names.dedup();
                for name in names {
                    let repository = Reference::parse(&format!("{}/{prefix}{name}", reg.registry))
                        .map_err(|e| {
                            Error::registry(
                                &reg.registry,
                                format!("the catalog lists {prefix}{name}: {e}"),
                            )
                        })?
                        .repository;
                    jobs.push(Job {
                        name,
                        repository,
                        rule,
                        platforms: self.platforms.clone(),
                        origin: Origin::Catalog,
                    });
                }
            }

            let listings: Vec<Result<Option<Vec<String>>>> = stream::iter(jobs.iter())
                .map(|job| {
                    let client = Arc::clone(&client);
                    async move {
                        if !job.rule.needs_listing() {
                            return Ok(None);
                        }
                        match tags.list(&client, &job.repository).await {
                            Ok(tags) => Ok(Some(tags)),
                            // A catalog repository without tags: nothing to take.
                            Err(Error::NotFound { .. })
                                if matches!(job.origin, Origin::Catalog) =>
                            {
                                Ok(Some(Vec::new()))
                            }
                            Err(Error::NotFound { registry, .. }) => Err(Error::NotFound {
                                registry,
                                what: format!("repository {}", job.repository),
                            }),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(LIST_CONCURRENCY)
                .collect()
                .await;

            for (job, listing) in jobs.iter().zip(listings) {
                let listed = listing?;
                let all = listed.unwrap_or_default();
                let tags = select_tags(job.rule, &job.name, &all, &reg.exclude);
                if tags.is_empty() {
                    if let Origin::Listed(img) = job.origin {
                        let at = KeyPath::image(img.index.0, img.index.1);
                        let before = job.rule.select(&all);
                        let why = if !job.rule.needs_listing() {
                            "every tag it names is excluded".to_string()
                        } else if all.is_empty() {
                            format!(
                                "the repository {}/{} has no tags",
                                reg.registry, job.repository
                            )
                        } else if before.is_empty() {
                            format!(
                                "matched none of the {} tags of {}/{}",
                                all.len(),
                                reg.registry,
                                job.repository
                            )
                        } else {
                            format!("every tag it selected ({}) is excluded", before.join(", "))
                        };
                        empty.push(src.message(&at, format!("{} ({}): {why}", job.name, job.rule)));
                    }
                    continue;
                }
                for tag in tags {
                    let reference =
                        Reference::parse(&format!("{}/{prefix}{}:{tag}", reg.registry, job.name))?;
                    out.push(Selected {
                        path: if reg.namespace.is_empty() {
                            reference.repository.clone()
                        } else {
                            job.name.clone()
                        },
                        reference,
                        namespace: reg.namespace.clone(),
                        platforms: job.platforms.clone(),
                    });
                }
            }
        }
        if !empty.is_empty() {
            return Err(Error::Usage(empty.join("\n")));
        }
        let mut seen = HashSet::new();
        out.retain(|s| seen.insert(s.reference.to_string()));
        Ok(out)
    }

    fn client_for(
        &self,
        reg: &RegistrySet,
        clients: &HashMap<String, Arc<Registry>>,
    ) -> Result<Arc<Registry>> {
        if let Some(c) = clients.get(&reg.registry) {
            return Ok(Arc::clone(c));
        }
        Reference::parse(&format!("{}/x", reg.registry))
            .ok()
            .and_then(|r| clients.get(&r.registry))
            .map(Arc::clone)
            .ok_or_else(|| {
                Error::Failed(format!(
                    "{}: registry {} is not connected",
                    self.path.display(),
                    reg.registry
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn env_credentials_read_the_named_variables() {
        let src = CredentialSource::Env {
            username_var: "AIRLOCK_IMAGESET_TEST_UNSET_U".into(),
            password_var: "AIRLOCK_IMAGESET_TEST_UNSET_P".into(),
        };
        let e = src.env_credentials().unwrap_err();
        assert!(
            e.to_string()
                .contains("AIRLOCK_IMAGESET_TEST_UNSET_U (named by usernameEnv)"),
            "{e}"
        );
        assert!(CredentialSource::Default
            .env_credentials()
            .unwrap()
            .is_none());
        assert!(CredentialSource::Anonymous
            .env_credentials()
            .unwrap()
            .is_none());
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

    const LISTED: &[&str] = &[
        "latest",
        "v1.13.0",
        "v1.14.0",
        "1.14.1",
        "v1.15.0-rc1",
        "v1.15.0-rc2",
        "v1.15.0",
        "v2.0.0",
        "v1.14",
        "v1.14.0_2022-12-13",
    ];

    fn rule(yaml_rule: &str) -> TagRule {
        let text = format!(
            "registries:\n  - registry: r.io\n    images:\n      - {{ name: a, {yaml_rule} }}\n"
        );
        load_str(&text).unwrap().registries[0].images[0]
            .rule
            .clone()
    }

    #[test]
    fn semver_tags_parse_with_an_optional_v() {
        assert_eq!(parse_semver_tag("v1.14.0"), Some(Version::new(1, 14, 0)));
        assert_eq!(parse_semver_tag("1.14.0"), Some(Version::new(1, 14, 0)));
        assert!(parse_semver_tag("v1.15.0-rc1").is_some_and(|v| !v.pre.is_empty()));
        for bad in ["latest", "v1.14", "V1.0.0", "vv1.0.0", "v1.14.0_2022-12-13"] {
            assert_eq!(parse_semver_tag(bad), None, "{bad}");
        }
    }

    #[test]
    fn newest_orders_by_semver_with_prereleases_below_their_release() {
        assert_eq!(
            rule("newest: 4").select(&tags(LISTED)),
            tags(&["v2.0.0", "v1.15.0", "v1.15.0-rc2", "v1.15.0-rc1"])
        );
        assert_eq!(
            rule("newest: 100").select(&tags(LISTED)),
            tags(&[
                "v2.0.0",
                "v1.15.0",
                "v1.15.0-rc2",
                "v1.15.0-rc1",
                "1.14.1",
                "v1.14.0",
                "v1.13.0"
            ])
        );
        // Equal versions are ordered by their text; duplicates are dropped.
        assert_eq!(
            rule("newest: 3").select(&tags(&["v1.0.0", "1.0.0", "1.0.0", "0.9.0"])),
            tags(&["1.0.0", "v1.0.0", "0.9.0"])
        );
    }

    #[test]
    fn semver_ranges_select_newest_first() {
        assert_eq!(
            rule("semver: '>=1.14.0, <2'").select(&tags(LISTED)),
            tags(&["v1.15.0", "1.14.1", "v1.14.0"])
        );
        // The space-separated form, operators apart from versions, and `v` in the range.
        for form in ["'>=1.14.0 <2'", "'>= 1.14.0 < 2'", "'>=v1.14.0, <v2'"] {
            assert_eq!(
                rule(&format!("semver: {form}")).select(&tags(LISTED)),
                tags(&["v1.15.0", "1.14.1", "v1.14.0"]),
                "{form}"
            );
        }
        // Pre-releases only when the range names one of the same version (cargo's rule).
        assert_eq!(
            rule("semver: '>=1.15.0-rc1, <1.15.0'").select(&tags(LISTED)),
            tags(&["v1.15.0-rc2", "v1.15.0-rc1"])
        );
        assert_eq!(
            rule("semver: '*', newest: 1").select(&tags(LISTED)),
            tags(&["v2.0.0"])
        );
        assert_eq!(
            rule("semver: '~1.14', newest: 1").select(&tags(LISTED)),
            tags(&["1.14.1"])
        );
        assert!(rule("semver: '>=3'").select(&tags(LISTED)).is_empty());
        assert!(parse_version_req("").is_err());
        assert!(parse_version_req(">=1.0.0 ||").is_err());
        assert!(parse_version_req("1.2.3 - 2.0.0").is_err());
    }

    #[test]
    fn regex_all_and_explicit_tags_sort_lexicographically() {
        assert_eq!(
            rule(r"tagRegex: '^v1\.1[45]\.\d+$'").select(&tags(LISTED)),
            tags(&["v1.14.0", "v1.15.0"])
        );
        // Anchored only as written.
        assert_eq!(
            rule(r"tagRegex: 'rc'").select(&tags(LISTED)),
            tags(&["v1.15.0-rc1", "v1.15.0-rc2"])
        );
        let all = rule("allTags: true").select(&tags(LISTED));
        let mut sorted = tags(LISTED);
        sorted.sort();
        assert_eq!(all, sorted);
        let explicit = rule("tags: [v2, v1, v2]");
        assert!(!explicit.needs_listing());
        assert_eq!(explicit.select(&[]), tags(&["v1", "v2"]));
    }

    #[test]
    fn excludes_by_name_and_by_name_and_tag() {
        let ex = vec![
            Exclude::parse("arc-legacy").unwrap(),
            Exclude::parse("arc-sqlmi:v1.13.0").unwrap(),
            Exclude::parse("sub/dir:v2").unwrap(),
        ];
        let t = tags(&["v1.13.0", "v1.14.0"]);
        assert!(apply_excludes("arc-legacy", t.clone(), &ex).is_empty());
        assert_eq!(
            apply_excludes("arc-sqlmi", t.clone(), &ex),
            tags(&["v1.14.0"])
        );
        assert_eq!(apply_excludes("arc-controller", t.clone(), &ex), t);
        assert_eq!(
            apply_excludes("sub/dir", tags(&["v1", "v2"]), &ex),
            tags(&["v1"])
        );
        assert_eq!(ex[2].to_string(), "sub/dir:v2");
        // Excluded before the rule: the newest release that is not excluded.
        let listed = tags(&["v1.13.0", "v1.14.0", "v1.14.1"]);
        let ex2 = vec![Exclude::parse("a:v1.14.1").unwrap()];
        assert_eq!(
            select_tags(&rule("newest: 1"), "a", &listed, &ex2),
            tags(&["v1.14.0"])
        );
        assert_eq!(
            select_tags(&rule("tags: [v1.14.1, v1.13.0]"), "a", &listed, &ex2),
            tags(&["v1.13.0"])
        );
        assert!(select_tags(&rule("allTags: true"), "a", &listed, &ex[..1]).len() == 3);
        assert!(Exclude::parse("a:").is_err());
        assert!(Exclude::parse("").is_err());
    }

    #[test]
    fn serde_messages_use_the_file_vocabulary() {
        assert_eq!(
            friendly_serde_message("a[0]: unknown field `x`, expected `name`"),
            "a[0]: unknown key 'x' (expected name)"
        );
        assert_eq!(
            friendly_serde_message("a: unknown field `x`, there are no fields"),
            "a: unknown key 'x' (there are no fields)"
        );
        assert_eq!(
            friendly_serde_message("a: duplicate field `tags`"),
            "a: duplicate key 'tags'"
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
