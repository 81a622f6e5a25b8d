//! `bundle.json`, the first member of every bundle: what it holds, and the checks that make
//! a hostile or damaged one fail before anything trusts it.

use crate::digest::{Digest, DigestIndex};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

pub const FORMAT: &str = "airlock-bundle";
pub const FORMAT_VERSION: u32 = 1;
/// The largest `bundle.json` we read.
pub const MAX_BUNDLE_JSON: u64 = 64 * 1024 * 1024;
pub const MAX_IMAGES: usize = 100_000;
pub const MAX_BLOBS: usize = 1_000_000;
/// No single object may claim more than 1 TiB.
pub const MAX_BLOB_SIZE: u64 = 1 << 40;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleManifest {
    pub format: String,
    pub format_version: u32,
    pub tool: String,
    pub created: String,
    /// The `--platform` filter given at export; empty when every platform was kept.
    pub platforms: Vec<String>,
    #[serde(deserialize_with = "compact")]
    pub images: Vec<Arc<ImageEntry>>,
    #[serde(deserialize_with = "compact")]
    pub blobs: Vec<BlobEntry>,
    pub total_size: u64,
    pub layout: Layout,
    /// Objects the images need that this bundle does not carry, because an earlier bundle
    /// (named in `bases`) did: an incremental bundle (`export --since`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalBlob>,
    /// The bundles that carry the external objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<Base>,
    /// Images that were asked for but could not be exported (`export --keep-going`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedImage>,
    /// Where each digest sits in `blobs` and `external`, built on first use: lookups stay
    /// logarithmic with 100,000 blobs, at 8 bytes a blob.
    #[serde(skip)]
    pub lookup: std::sync::OnceLock<Lookup>,
}

/// Digest → position in `blobs` and in `external`.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    blobs: DigestIndex,
    external: DigestIndex,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The digest of the `bundle.json` of the bundle that carries it.
    pub bundle: Digest,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Base {
    /// The digest of the base bundle's `bundle.json`.
    pub bundle_json: Digest,
    /// When the base bundle was made.
    pub created: String,
    /// Its file name, as given to `--since`.
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailedImage {
    pub source: String,
    pub error: String,
}

/// One image of a bundle. Its strings and lists are boxed (16 bytes each, not 24: no room to
/// grow, which a bundle's entries never do): 1.5 MiB less at 33,340 images.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageEntry {
    /// The full source reference.
    pub source: Box<str>,
    /// Shared ([`crate::shared`]), like `media_type`.
    #[serde(deserialize_with = "crate::shared::deserialize")]
    pub registry: Arc<str>,
    /// The `--repository` given at export for short names; empty for full references.
    pub namespace: Box<str>,
    /// The repository path below the namespace.
    pub path: Box<str>,
    pub tag: Box<str>,
    /// The root manifest stored in the bundle.
    pub digest: Digest,
    /// The digest at the source, when platform filtering rewrote the index. (Boxed, like
    /// `subject`: 8 bytes when absent, as it nearly always is, not 33.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<Box<Digest>>,
    /// For a signature, attestation or SBOM carried along: the digest it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Box<Digest>>,
    #[serde(deserialize_with = "crate::shared::deserialize")]
    pub media_type: Arc<str>,
    pub platforms: Box<[String]>,
    pub size: u64,
    /// Every object of the image, children first, the root manifest last.
    pub blobs: Box<[Digest]>,
}

/// A list read without room to spare. A JSON list does not say its length, so it is read into
/// a vector grown by doubling: up to twice the room, held as long as the bundle is open (the
/// blobs of 33,340 images had 3 MiB to spare, their images' lists of digests 2 MiB).
fn compact<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Vec<T>, D::Error> {
    let mut v = Vec::<T>::deserialize(d)?;
    v.shrink_to_fit();
    Ok(v)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    /// Shared ([`crate::shared`]): a bundle of 100,000 blobs names a handful of media types.
    #[serde(deserialize_with = "crate::shared::deserialize")]
    pub media_type: Arc<str>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Layout {
    pub oci_layout: Member,
    pub index: Member,
    /// The docker-archive `manifest.json` (for `docker load` / `podman load`), when at least
    /// one image can be loaded that way; older bundles have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_manifest: Option<Member>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    pub digest: Digest,
    pub size: u64,
}

/// Whether `text` matches a glob `pattern` (`*` any run of characters, `/` included; `?` one).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The images of a bundle that `--image` patterns select: a pattern matches the name as the
/// bundle records it (`REPOSITORY:TAG`, the repository as import would push it without
/// `--repository`) or the full source reference. Signatures and other companions follow
/// their subjects. No patterns: every image.
pub fn select_images<'a>(
    images: &'a [Arc<ImageEntry>],
    patterns: &[String],
) -> Vec<&'a Arc<ImageEntry>> {
    if patterns.is_empty() {
        return images.iter().collect();
    }
    let hit = |i: &ImageEntry| {
        let short = format!("{}:{}", i.source_repository(), i.tag);
        patterns
            .iter()
            .any(|p| glob_match(p, &short) || glob_match(p, &i.source))
    };
    let chosen: HashSet<&Digest> = images
        .iter()
        .filter(|i| i.subject.is_none() && hit(i))
        .map(|i| &i.digest)
        .collect();
    images
        .iter()
        .filter(|i| match &i.subject {
            Some(s) => chosen.contains(&**s) || hit(i),
            None => chosen.contains(&i.digest) && hit(i),
        })
        .collect()
}

impl ImageEntry {
    /// The repository at the source: `namespace/path`, or `path` when there is no namespace.
    pub fn source_repository(&self) -> String {
        if self.namespace.is_empty() {
            self.path.to_string()
        } else {
            format!("{}/{}", self.namespace, self.path)
        }
    }
}

impl BundleManifest {
    /// Internal consistency: known format, bounded counts and sizes, every image object
    /// listed once in `blobs`, totals that add up, names that are valid.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let check = self.check_lists(
            self.images.len(),
            self.blobs.iter().map(|b| (&b.digest, b.size)),
            file,
        )?;
        self.images.iter().try_for_each(|img| check.image(img))
    }

    /// [`validate`](Self::validate) but for the checks of each image, which the answer makes
    /// ([`ImageCheck::image`]); the number of images and the list of blobs (each one's digest
    /// and size) are given instead of taken from `images` and `blobs`: export writes both from
    /// its own lists rather than hold them here again (the images of 33,340 images are 15 MiB,
    /// 100,000 blobs 5.6 MiB).
    pub fn check_lists<'a>(
        &'a self,
        images: usize,
        blobs: impl ExactSizeIterator<Item = (&'a Digest, u64)>,
        file: &'a Path,
    ) -> Result<ImageCheck<'a>> {
        let bad = |d: String| Err(Error::bundle(file, format!("bundle.json: {d}")));
        if self.format != FORMAT {
            return bad(format!("format is {:?}, not {FORMAT:?}", self.format));
        }
        if self.format_version != FORMAT_VERSION {
            return bad(format!(
                "format version {} is not supported (this airlock reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if images == 0 || images > MAX_IMAGES {
            return bad(format!("{images} images (1 to {MAX_IMAGES} allowed)"));
        }
        if blobs.len() > MAX_BLOBS {
            return bad(format!("{} blobs (at most {MAX_BLOBS})", blobs.len()));
        }
        let mut seen = HashSet::with_capacity(blobs.len());
        let mut total: u64 = 0;
        for (digest, size) in blobs {
            if !seen.insert(digest) {
                return bad(format!("blob {digest} is listed twice"));
            }
            if size > MAX_BLOB_SIZE {
                return bad(format!("blob {digest} declares an absurd size {size}"));
            }
            total = total.saturating_add(size);
        }
        if total != self.total_size {
            return bad(format!(
                "totalSize {} does not match the sum of blob sizes {total}",
                self.total_size
            ));
        }
        if self.external.len() > MAX_BLOBS || self.bases.len() > MAX_BLOBS {
            return bad("too many external objects or bases".into());
        }
        let bases: HashSet<&Digest> = self.bases.iter().map(|b| &b.bundle_json).collect();
        let mut external = HashSet::new();
        for x in &self.external {
            if seen.contains(&x.digest) || !external.insert(&x.digest) {
                return bad(format!("external blob {} is listed twice", x.digest));
            }
            if x.size > MAX_BLOB_SIZE {
                return bad(format!(
                    "external blob {} declares an absurd size",
                    x.digest
                ));
            }
            if !bases.contains(&x.bundle) {
                return bad(format!(
                    "external blob {} names bundle {}, which is not among the bases",
                    x.digest, x.bundle
                ));
            }
        }
        let layout = &self.layout;
        for l in [&layout.oci_layout, &layout.index]
            .into_iter()
            .chain(layout.docker_manifest.as_ref())
        {
            if l.size > MAX_BUNDLE_JSON {
                return bad(format!(
                    "layout member {} declares an absurd size",
                    l.digest
                ));
            }
        }
        Ok(ImageCheck {
            seen,
            external,
            file,
        })
    }

    fn lookup(&self) -> &Lookup {
        // The first entry wins (validate refuses duplicates anyway).
        self.lookup.get_or_init(|| Lookup {
            blobs: DigestIndex::new(&self.blobs, |b| &b.digest),
            external: DigestIndex::new(&self.external, |x| &x.digest),
        })
    }

    pub fn blob(&self, d: &Digest) -> Option<&BlobEntry> {
        self.blob_index(d).and_then(|i| self.blobs.get(i))
    }

    /// Where a blob sits in `blobs`.
    pub fn blob_index(&self, d: &Digest) -> Option<usize> {
        self.lookup().blobs.find(&self.blobs, |b| &b.digest, d)
    }

    pub fn external_blob(&self, d: &Digest) -> Option<&ExternalBlob> {
        self.external_index(d).and_then(|i| self.external.get(i))
    }

    /// Where an external blob sits in `external`.
    pub fn external_index(&self, d: &Digest) -> Option<usize> {
        self.lookup()
            .external
            .find(&self.external, |x| &x.digest, d)
    }

    /// The base bundle that carries an external blob, for messages.
    pub fn base_of(&self, x: &ExternalBlob) -> String {
        match self.bases.iter().find(|b| b.bundle_json == x.bundle) {
            Some(b) => format!(
                "{} (created {}, bundle.json {})",
                b.name, b.created, b.bundle_json
            ),
            None => format!("the bundle whose bundle.json is {}", x.bundle),
        }
    }
}

/// The checks of each image of a `bundle.json` against its lists of blobs
/// ([`BundleManifest::check_lists`]).
pub struct ImageCheck<'a> {
    seen: HashSet<&'a Digest>,
    external: HashSet<&'a Digest>,
    file: &'a Path,
}

impl ImageCheck<'_> {
    pub fn image(&self, img: &ImageEntry) -> Result<()> {
        let (seen, external, file) = (&self.seen, &self.external, self.file);
        let bad = |d: String| Err(Error::bundle(file, format!("bundle.json: {d}")));
        let name = &img.source;
        if !seen.contains(&img.digest) {
            return bad(format!(
                "image {name}: its manifest {} is not in blobs",
                img.digest
            ));
        }
        if img.blobs.last() != Some(&img.digest) {
            return bad(format!(
                "image {name}: its blob list must end with its manifest"
            ));
        }
        for d in &img.blobs {
            if !seen.contains(d) && !external.contains(d) {
                return bad(format!("image {name}: blob {d} is not in blobs"));
            }
        }
        crate::reference::validate_repository(&img.source_repository())
            .map_err(|e| Error::bundle(file, format!("bundle.json: image {name}: {e}")))?;
        crate::reference::validate_tag(&img.tag)
            .map_err(|e| Error::bundle(file, format!("bundle.json: image {name}: {e}")))?;
        crate::reference::validate_registry(&img.registry)
            .map_err(|e| Error::bundle(file, format!("bundle.json: image {name}: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod select_tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("src/*", "src/alpha:1.0"));
        assert!(glob_match("*:1.?", "src/alpha:1.0"));
        assert!(glob_match("*alpha*", "reg.io/src/alpha:1.0"));
        assert!(!glob_match("src/*:2.0", "src/alpha:1.0"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", "ab"));
        assert!(glob_match("a*b*c", "axxbyyc"));
    }
}
