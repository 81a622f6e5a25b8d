//! What `serve` answers for: the repositories, tags, objects and referrers of one or more
//! bundles, named as `import` would push them. A name carried by several bundles is taken
//! from the newest; an object is read from whichever bundle holds it.

use crate::bundle::Bundle;
use crate::bundle::{BlobEntry, ImageEntry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A referrer of a manifest, as the referrers API lists it.
#[derive(Clone, Debug)]
pub struct Referrer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub artifact_type: Option<String>,
}

pub struct Namespace {
    /// Oldest first.
    pub bundles: Vec<Arc<Bundle>>,
    /// repository → tag → root manifest.
    pub tags: BTreeMap<String, BTreeMap<String, Digest>>,
    /// repository → its images (shared with the bundles' lists): an object belongs to a
    /// repository when one of them lists it. A set of every repository's objects, and a map
    /// of every object to its bundle, were 10 MiB at 33,340 images.
    images: HashMap<String, Vec<Arc<ImageEntry>>>,
    /// (repository, subject) → its referrers.
    referrers: HashMap<(String, Digest), Vec<Referrer>>,
}

impl Namespace {
    /// Builds the namespace of `bundles`, mapping names with `repository` and `tag` as import
    /// does.
    pub fn new(
        mut bundles: Vec<Arc<Bundle>>,
        repository: Option<&str>,
        tag: Option<&str>,
        patterns: &[String],
    ) -> Result<Namespace> {
        bundles.sort_by(|a, b| a.manifest.created.cmp(&b.manifest.created));
        let mut ns = Namespace {
            bundles,
            tags: BTreeMap::new(),
            images: HashMap::new(),
            referrers: HashMap::new(),
        };
        for (i, b) in ns.bundles.clone().iter().enumerate() {
            let chosen = crate::bundle::model::select_images(&b.manifest.images, patterns);
            let targets = crate::commands::import::plan_targets(
                chosen.into_iter().cloned().collect(),
                repository,
                tag,
            )?;
            for t in targets {
                ns.tags
                    .entry(t.repo.to_string())
                    .or_default()
                    .insert(t.tag().to_string(), t.entry.digest.clone());
                ns.images
                    .entry(t.repo.to_string())
                    .or_default()
                    .push(t.entry.clone());
                if let Some(subject) = &t.entry.subject {
                    ns.add_referrers(i, &t.repo, subject, &t.entry.digest, t.tag());
                }
            }
        }
        Ok(ns)
    }

    /// A companion's referrers: a referrers-tag index lists them; a cosign-style companion
    /// (`.sig`, `.att`, `.sbom`) is one.
    fn add_referrers(
        &mut self,
        bundle: usize,
        repo: &str,
        subject: &Digest,
        d: &Digest,
        tag: &str,
    ) {
        let b = &self.bundles[bundle];
        let Some(entry) = b.manifest.blob(d) else {
            return;
        };
        let Ok(bytes) = b.read_blob(d, crate::registry::MAX_MANIFEST_SIZE) else {
            return;
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let list = self
            .referrers
            .entry((repo.to_string(), subject.clone()))
            .or_default();
        let is_tag_index = !tag.contains('.') && v.get("manifests").is_some();
        if is_tag_index {
            for m in v
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
            {
                let (Some(digest), Some(size), Some(mt)) = (
                    m.get("digest")
                        .and_then(|x| x.as_str())
                        .and_then(|x| Digest::parse(x).ok()),
                    m.get("size").and_then(|x| x.as_u64()),
                    m.get("mediaType").and_then(|x| x.as_str()),
                ) else {
                    continue;
                };
                if list.iter().any(|r| r.digest == digest) {
                    continue;
                }
                list.push(Referrer {
                    digest,
                    size,
                    media_type: mt.to_string(),
                    artifact_type: m
                        .get("artifactType")
                        .and_then(|x| x.as_str())
                        .map(str::to_string),
                });
            }
        } else if !list.iter().any(|r| r.digest == *d) {
            let artifact_type = v
                .get("artifactType")
                .and_then(|x| x.as_str())
                .or_else(|| {
                    v.get("config")
                        .and_then(|c| c.get("mediaType"))
                        .and_then(|x| x.as_str())
                })
                .map(str::to_string);
            list.push(Referrer {
                digest: d.clone(),
                size: entry.size,
                media_type: entry.media_type.to_string(),
                artifact_type,
            });
        }
    }

    pub fn has_repo(&self, repo: &str) -> bool {
        self.tags.contains_key(repo)
    }

    pub fn repos(&self) -> BTreeSet<&String> {
        self.tags.keys().collect()
    }

    /// The manifest a tag or digest names in a repository.
    pub fn resolve(&self, repo: &str, reference: &str) -> Option<Digest> {
        if reference.starts_with("sha256:") {
            let d = Digest::parse(reference).ok()?;
            return self.in_repo(repo, &d).then_some(d);
        }
        self.tags.get(repo)?.get(reference).cloned()
    }

    /// Whether `repo` uses object `d` and some bundle holds it. The repository's images are
    /// looked through (a few dozen digests for a repository of ten tags).
    pub fn in_repo(&self, repo: &str, d: &Digest) -> bool {
        self.images
            .get(repo)
            .is_some_and(|imgs| imgs.iter().any(|i| i.blobs.contains(d)))
            && self.holder(d).is_some()
    }

    /// The newest bundle holding `d`, with its entry there (each bundle's lookup is
    /// logarithmic).
    fn holder(&self, d: &Digest) -> Option<(&Arc<Bundle>, &BlobEntry)> {
        self.bundles
            .iter()
            .rev()
            .find_map(|b| Some((b, b.manifest.blob(d)?)))
    }

    /// The bundle holding `d`, with its media type and size.
    pub fn object(&self, d: &Digest) -> Result<(Arc<Bundle>, String, u64)> {
        let (b, entry) = self
            .holder(d)
            .ok_or_else(|| Error::Failed(format!("no bundle holds {d}")))?;
        Ok((b.clone(), entry.media_type.to_string(), entry.size))
    }

    pub fn referrers(&self, repo: &str, subject: &Digest) -> &[Referrer] {
        self.referrers
            .get(&(repo.to_string(), subject.clone()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Bundle index of a bundle (for the frame cache's keys).
    pub fn bundle_index(&self, b: &Arc<Bundle>) -> usize {
        self.bundles
            .iter()
            .position(|x| Arc::ptr_eq(x, b))
            .unwrap_or(usize::MAX)
    }
}
