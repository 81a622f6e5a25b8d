//! The image-set file as written (the serde `Raw*` types, before validation) and the
//! line-locating reader: [`KeyPath`] names a value (`registries[0].images[1].semver`),
//! [`Source`] finds its line and formats `FILE:LINE: KEY: MESSAGE` usage errors.
//!
//! Line numbers for problems found after parsing come from a second pass over the YAML events
//! (`Locate`): a visitor walks to the offending key or list item and stops there with a
//! marker error, and serde_norway stamps that error with the position of the event it was on.

use super::model::CredentialSource;
use crate::error::Error;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The file as written (serde), before validation
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with `registries` (and optionally `platforms`)"
)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) platforms: Vec<String>,
    pub(super) registries: Vec<RawRegistry>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a registry entry: a mapping with `registry`, `namespace`, `images`…"
)]
pub(super) struct RawRegistry {
    pub(super) registry: String,
    #[serde(default)]
    pub(super) namespace: String,
    #[serde(default)]
    pub(super) credentials: Option<RawCredentials>,
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) catalog: bool,
    #[serde(default)]
    pub(super) catalog_tags: Option<RawRule>,
    #[serde(default)]
    pub(super) exclude: Vec<String>,
    #[serde(default)]
    pub(super) images: Vec<RawImage>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with `caCert`, `insecure`, `plainHttp`"
)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub(super) insecure: bool,
    #[serde(default)]
    pub(super) plain_http: bool,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a tag rule: a mapping with one of `tags`, `tagRegex`, `semver`, `newest`, `allTags`"
)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) tags: Option<Vec<String>>,
    #[serde(default)]
    pub(super) tag_regex: Option<String>,
    #[serde(default)]
    pub(super) semver: Option<String>,
    #[serde(default)]
    pub(super) newest: Option<u64>,
    #[serde(default)]
    pub(super) all_tags: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an image: a mapping with `name` and a tag rule"
)]
pub(super) struct RawImage {
    pub(super) name: String,
    #[serde(default)]
    pub(super) tags: Option<Vec<String>>,
    #[serde(default)]
    pub(super) tag_regex: Option<String>,
    #[serde(default)]
    pub(super) semver: Option<String>,
    #[serde(default)]
    pub(super) newest: Option<u64>,
    #[serde(default)]
    pub(super) all_tags: Option<bool>,
    #[serde(default)]
    pub(super) platforms: Option<Vec<String>>,
}

impl RawImage {
    pub(super) fn rule(&self) -> RawRule {
        RawRule {
            tags: self.tags.clone(),
            tag_regex: self.tag_regex.clone(),
            semver: self.semver.clone(),
            newest: self.newest,
            all_tags: self.all_tags,
        }
    }
}

pub(super) enum RawCredentials {
    Named(CredentialSource),
    Env(RawEnvCredentials),
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a mapping with `usernameEnv` and `passwordEnv`"
)]
pub(super) struct RawEnvCredentials {
    pub(super) username_env: String,
    pub(super) password_env: String,
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
pub(super) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(super) fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub(super) fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    pub(super) fn image(registry: usize, image: usize) -> KeyPath {
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
pub(super) struct Source<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
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
    pub(super) fn fail(&self, path: &KeyPath, msg: impl fmt::Display) -> Error {
        Error::Usage(self.message(path, msg))
    }

    pub(super) fn message(&self, path: &KeyPath, msg: impl fmt::Display) -> String {
        let line = self.line(path);
        if path.0.is_empty() {
            format!("{}:{line}: {msg}", self.file.display())
        } else {
            format!("{}:{line}: {path}: {msg}", self.file.display())
        }
    }

    /// A serde_norway error as `FILE:LINE: KEY: MESSAGE`, in the file's own vocabulary.
    pub(super) fn yaml_error(&self, e: &serde_norway::Error) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
