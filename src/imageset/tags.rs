//! The tag rules of an image-set entry and the pure logic that applies them to a registry's tag
//! list: [`TagRule`], semver tags and ranges ([`parse_semver_tag`], [`parse_version_req`]),
//! and excludes ([`apply_excludes`], [`select_tags`]).

use super::model::Exclude;
use semver::{Version, VersionReq};
use std::collections::HashSet;
use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
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
        crate::imageset::parse(Path::new("arc.yaml"), text)
            .unwrap()
            .registries[0]
            .images[0]
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
}
