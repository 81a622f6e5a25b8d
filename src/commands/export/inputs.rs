//! What the user asked for: the image list from arguments or a file (short names expanded
//! with the source registry, repository and tag), the output name, the cache, and what an
//! earlier bundle already carried (`--since`).

use crate::bundle::model::Base;
use crate::cli::ExportArgs;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::options::{Prompter, SourceSide};
use crate::reference::{validate_repository, validate_tag, Reference};
use crate::units::rfc3339;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An image to export, with the namespace import will replace.
#[derive(Clone, Debug)]
pub struct Requested {
    pub reference: Reference,
    pub namespace: String,
    pub path: String,
    /// Platforms to keep for this image, when it has a list of its own (an image-set entry:
    /// empty keeps every platform); `None` takes the global list (`--platform`, else the
    /// image-set file's).
    pub platforms: Option<Vec<String>>,
    /// For a signature or attestation carried along: the image digest it is about (boxed, like
    /// `ImageEntry`'s: 8 bytes when absent, as it nearly always is, not 33).
    pub subject: Option<Box<Digest>>,
    /// The root manifest when it was already fetched (a referrers index from the OCI 1.1
    /// referrers API, carried under the referrers tag schema's `sha256-<hex>` tag).
    pub prefetched: Option<Box<crate::registry::Manifest>>,
}

/// Reads the image list: arguments, then the file's lines (`#` comments, blanks ignored);
/// the file `-` is standard input.
fn image_list(args: &ExportArgs) -> Result<Vec<String>> {
    let mut out: Vec<String> = args.images.clone();
    if let Some(f) = &args.images_file {
        let text = if f.as_os_str() == "-" {
            if args.registry.password_stdin {
                return Err(Error::Usage(
                    "-f - and --password-stdin both read standard input: give the images in a file or as arguments, or the password in SOURCE_DOCKER_PASSWORD".into(),
                ));
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::Usage(format!("images from standard input (-f -): {e}")))?;
            text
        } else {
            std::fs::read_to_string(f)
                .map_err(|e| Error::Usage(format!("images file {}: {e}", f.display())))?
        };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                out.push(line.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "no images to export: name them as arguments or with -f/--images-file".into(),
        ));
    }
    Ok(out)
}

/// Turns the list into references. A name without `/` is a short name when a source
/// registry, repository or tag was given (flag or environment): it expands to
/// REGISTRY/REPOSITORY/NAME:TAG. Everything else is read as docker reads it.
///
/// The origin procedure's defaults (`mcr.microsoft.com`, `arcdata`) apply only when its
/// mode is clearly chosen: a `SOURCE_DOCKER_*` variable is set, or a terminal prompt offers
/// them. With `--registry` alone a short name has no namespace unless `--repository` gives
/// one. With only `--tag` or `--repository` and no terminal, a short name is a usage error
/// that says what to add.
pub fn requested_images(
    args: &ExportArgs,
    source_side: &SourceSide,
    prompter: &dyn Prompter,
) -> Result<Vec<Requested>> {
    let names = image_list(args)?;
    let namespace_mode = source_side.namespace_mode;
    let mut source: Option<(String, String)> = None;
    let mut tag: Option<String> = None;
    let mut out = Vec::new();
    for name in names {
        if namespace_mode && !name.contains('/') {
            if source.is_none() {
                // The fallbacks (and the procedure's defaults) are in `options`.
                let (reg, repo) = source_side.short_name_source(&name, prompter)?;
                crate::reference::validate_registry(&reg).map_err(Error::Usage)?;
                if !repo.is_empty() {
                    validate_repository(&repo)
                        .map_err(|e| Error::Usage(format!("--repository: {e}")))?;
                }
                source = Some((reg, repo));
            }
            let (reg, repo) = source.clone().unwrap_or_default();
            // NAME, NAME:TAG or NAME:TAG@DIGEST (pinned, written under TAG by import).
            let (named, pin) = match name.split_once('@') {
                Some((n, d)) => (n, format!("@{d}")),
                None => (name.as_str(), String::new()),
            };
            let (short, inline_tag) = match named.split_once(':') {
                Some((n, t)) => (n.to_string(), Some(t.to_string())),
                None => (named.to_string(), None),
            };
            let t = match inline_tag {
                Some(t) => t,
                None if !pin.is_empty() => {
                    return Err(Error::Usage(format!(
                        "{name}: give a tag with the digest ({short}:TAG{pin}) so import knows \
                         which tag to write"
                    )))
                }
                None => {
                    if tag.is_none() {
                        tag = Some(source_side.short_name_tag(prompter)?);
                    }
                    tag.clone().unwrap_or_default()
                }
            };
            validate_tag(&t).map_err(Error::Usage)?;
            let full = if repo.is_empty() {
                format!("{reg}/{short}:{t}{pin}")
            } else {
                format!("{reg}/{repo}/{short}:{t}{pin}")
            };
            let reference = Reference::parse(&full)?;
            out.push(Requested {
                reference,
                namespace: repo.clone(),
                path: short,
                platforms: None,
                subject: None,
                prefetched: None,
            });
        } else {
            let reference = Reference::parse(&name)?;
            if reference.tag.is_none() {
                return Err(Error::Usage(format!(
                    "{name}: give a tag with the digest (name:tag@sha256:…) so import knows which tag to write"
                )));
            }
            out.push(Requested {
                path: reference.repository.clone(),
                namespace: String::new(),
                reference,
                platforms: None,
                subject: None,
                prefetched: None,
            });
        }
    }
    // The same image named twice is exported once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|r| seen.insert(r.reference.to_string()));
    Ok(out)
}

pub(super) fn cache_dir(args: &ExportArgs) -> Result<PathBuf> {
    crate::cache::dir(args.cache_dir.as_deref())
}

/// Checks `os/arch[/variant]`.
pub(super) fn validate_platform(p: &str) -> Result<()> {
    let parts: Vec<&str> = p.split('/').collect();
    let well_formed = (2..=3).contains(&parts.len())
        && parts.iter().all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if well_formed {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "platform {p:?}: expected os/arch[/variant] in lowercase"
        )))
    }
}

/// The tags asked for, as `{tag}` in `-o` needs them: how many different ones, and the tag
/// when there is only one. Not the list: 33,340 names held through the whole export.
#[derive(Clone, Debug, Default)]
pub struct TagsAsked {
    pub distinct: usize,
    pub only: Option<String>,
}

impl TagsAsked {
    pub fn of<'a>(tags: impl Iterator<Item = &'a str>) -> TagsAsked {
        let distinct: HashSet<&str> = tags.collect();
        TagsAsked {
            distinct: distinct.len(),
            only: match distinct.len() {
                1 => distinct.into_iter().next().map(str::to_string),
                _ => None,
            },
        }
    }
}

/// Fills `{date}` (YYYY-MM-DD), `{month}` (YYYY-MM) and `{tag}` in the output name.
pub(super) fn expand_output(template: &Path, mtime: u64, tags: &TagsAsked) -> Result<PathBuf> {
    let t = template.to_string_lossy();
    if !t.contains('{') {
        return Ok(template.to_path_buf());
    }
    let date = rfc3339(mtime);
    let mut s = t
        .replace("{date}", &date[..10])
        .replace("{month}", &date[..7]);
    if s.contains("{tag}") {
        let Some(tag) = tags.only.as_deref() else {
            return Err(Error::Usage(format!(
                "-o {t}: {{tag}} needs every image to have the same tag (they have {})",
                tags.distinct
            )));
        };
        s = s.replace("{tag}", tag);
    }
    if s.contains('{') || s.contains('}') {
        return Err(Error::Usage(format!(
            "-o {t}: only {{date}}, {{month}} and {{tag}} can be filled in"
        )));
    }
    Ok(PathBuf::from(s))
}

/// What earlier bundles carried: each object's digest and the bundle.json digest of the
/// bundle that holds it.
#[derive(Default)]
pub(super) struct Carried {
    pub by: HashMap<Digest, (Digest, u64)>,
    pub bases: HashMap<Digest, Base>,
}

/// Reads `--since`: a bundle (any volume) or its `bundle.json`.
pub(super) fn load_since(path: &Path) -> Result<Carried> {
    let (digest, prev) = crate::bundle::read_manifest(path).map_err(|e| match e {
        Error::Io { source, .. } => Error::Usage(format!("--since {}: {source}", path.display())),
        e => e,
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut c = Carried::default();
    for b in &prev.blobs {
        c.by.insert(b.digest.clone(), (digest.clone(), b.size));
    }
    for x in &prev.external {
        c.by.insert(x.digest.clone(), (x.bundle.clone(), x.size));
    }
    for b in &prev.bases {
        c.bases.insert(b.bundle_json.clone(), b.clone());
    }
    c.bases.insert(
        digest.clone(),
        Base {
            bundle_json: digest,
            created: prev.created.clone(),
            name,
        },
    );
    Ok(c)
}
