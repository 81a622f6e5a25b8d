//! The copy engine: walks an image's graph children-first from a registry, deduplicates
//! objects across images, and copies images from any [`Source`] into any [`Sink`]:
//! registry → bundle (`export`), bundle → registry (`import`), registry → registry (`copy`),
//! bundle → a sink that only checks (`verify`). It skips what the sink has, mounts across
//! repositories, puts every blob once (each byte checked against its digest as it streams),
//! writes manifests children-first, each once per repository per run, and the tags last, one
//! after the other, and only when everything under them is there. A bundle being written
//! (`export`), which has one namespace and lists its manifests and tags itself, takes the
//! blobs alone ([`push_objects`]).

use crate::bundle::ImageEntry;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, Kind};
use crate::progress::Reporter;
use crate::registry::{Manifest, MountResult, Registry};
use crate::spill::Kept;
use crate::store::Sink;
use crate::store::Source;
use futures_util::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One object of an image graph: a manifest (kept as its exact bytes) or a blob to fetch.
#[derive(Clone, Debug)]
pub struct Object {
    pub digest: Digest,
    pub size: u64,
    /// Shared ([`crate::shared`]).
    pub media_type: Arc<str>,
    /// Manifests carry their bytes (set aside on disk until written); blobs are fetched from
    /// `repo` at the source.
    pub inline: Option<Kept>,
    /// Where the object lives at the source: shared by the objects of every image of one
    /// repository ([`Home`]).
    pub home: Arc<Home>,
}

/// The registry and repository objects are read from. Made once per repository before the
/// images are resolved, and shared by all their objects. Made per image as each resolved, these
/// two small names stayed alive among everything resolving it freed, and glibc could not give
/// those pages back: an export of 10,000 images with 100,000 blobs peaked 6 MiB higher.
#[derive(Debug)]
pub struct Home {
    pub registry: Box<str>,
    pub repo: Box<str>,
}

impl Home {
    pub fn new(registry: &str, repo: &str) -> Arc<Home> {
        Arc::new(Home {
            registry: registry.into(),
            repo: repo.into(),
        })
    }
}

impl Object {
    /// The source registry's name.
    pub fn registry(&self) -> &str {
        &self.home.registry
    }

    /// The repository at the source.
    pub fn repo(&self) -> &str {
        &self.home.repo
    }

    /// `blob <digest> of <registry>/<repository>`: the object named in messages.
    pub fn at_source(&self) -> String {
        format!(
            "blob {} of {}/{}",
            self.digest,
            self.registry(),
            self.repo()
        )
    }

    /// A manifest's bytes, read back from where they were set aside; `None` for a blob.
    pub fn manifest_bytes(&self) -> Result<Option<Vec<u8>>> {
        self.inline
            .as_ref()
            .map(|k| {
                k.bytes()
                    .map_err(|e| Error::io(format!("reading back manifest {}", self.digest), e))
            })
            .transpose()
    }
}

/// An image resolved at its source.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The root manifest (its bytes are those of the last object).
    pub digest: Digest,
    /// Shared ([`crate::shared`]).
    pub media_type: Arc<str>,
    pub size: u64,
    /// The digest at the source when platform filtering rewrote the index (boxed: 8 bytes when
    /// absent, not 33).
    pub source_digest: Option<Box<Digest>>,
    pub platforms: Vec<String>,
    /// Children first, root manifest last, each once.
    pub objects: Vec<Object>,
}

const MAX_DEPTH: usize = 4;

/// Resolves `reference` in `home`'s repository (of `reg`): fetches the manifest and, for an
/// index, each child manifest (filtered to `platforms` when given), and lists every blob
/// beneath.
pub async fn resolve(
    reg: &Registry,
    home: &Arc<Home>,
    reference: &str,
    platforms: &[String],
) -> Result<Resolved> {
    let root = reg.get_manifest(&home.repo, reference).await?;
    resolve_manifest(reg, home, reference, root, platforms).await
}

/// Like [`resolve`], from a root manifest already fetched (`reference` names it in messages).
pub async fn resolve_manifest(
    reg: &Registry,
    home: &Arc<Home>,
    reference: &str,
    root: Manifest,
    platforms: &[String],
) -> Result<Resolved> {
    let what = format!("{}/{}:{reference}", reg.name(), home.repo);
    let mut objects = Vec::new();
    let mut seen = HashSet::new();
    let mut kept_platforms = Vec::new();
    let mut root = root;
    let mut source_digest = None;
    if manifest::kind(&root.media_type) == Some(Kind::Index) && !platforms.is_empty() {
        if let Some(bytes) = manifest::filter_index(&root.bytes, platforms, &what)? {
            source_digest = Some(Box::new(root.digest.clone()));
            root = Manifest {
                digest: Digest::of(&bytes),
                bytes,
                media_type: root.media_type.clone(),
            };
        }
    }
    if manifest::kind(&root.media_type) == Some(Kind::Index) {
        for c in manifest::children(&root.bytes, &root.media_type, &what)? {
            if let Some(p) = &c.platform {
                kept_platforms.push(p.clone());
            }
        }
    }
    walk(reg, home, &root, &what, 0, &mut objects, &mut seen).await?;
    // The root last; its bytes move into its object, held once.
    let Manifest {
        digest,
        bytes,
        media_type,
    } = root;
    let size = bytes.len() as u64;
    let media_type = crate::shared::shared(&media_type);
    if !seen.contains(&digest) {
        objects.push(Object {
            digest: digest.clone(),
            size,
            media_type: media_type.clone(),
            inline: Some(Kept::new(bytes)),
            home: home.clone(),
        });
    }
    // Held until the export is written, for every image: no room to spare.
    objects.shrink_to_fit();
    Ok(Resolved {
        digest,
        media_type,
        size,
        source_digest,
        platforms: kept_platforms,
        objects,
    })
}

fn walk<'a>(
    reg: &'a Registry,
    home: &'a Arc<Home>,
    m: &'a Manifest,
    what: &'a str,
    depth: usize,
    out: &'a mut Vec<Object>,
    seen: &'a mut HashSet<Digest>,
) -> futures_util::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if depth > MAX_DEPTH {
            return Err(Error::Integrity {
                what: what.to_string(),
                detail: "indexes nested too deep".into(),
            });
        }
        for c in manifest::children(&m.bytes, &m.media_type, what)? {
            if seen.contains(&c.digest) {
                continue;
            }
            if manifest::is_manifest(&c.media_type) {
                let child = reg
                    .get_manifest(&home.repo, c.digest.text().as_str())
                    .await?;
                if child.bytes.len() as u64 != c.size {
                    return Err(Error::Integrity {
                        what: format!("{what}: manifest {}", c.digest),
                        detail: format!(
                            "the index declares {} bytes, the registry served {}",
                            c.size,
                            child.bytes.len()
                        ),
                    });
                }
                walk(reg, home, &child, what, depth + 1, out, seen).await?;
                seen.insert(c.digest.clone());
                out.push(Object {
                    digest: c.digest,
                    size: c.size,
                    media_type: crate::shared::shared(&child.media_type),
                    inline: Some(Kept::new(child.bytes)),
                    home: home.clone(),
                });
            } else {
                seen.insert(c.digest.clone());
                out.push(Object {
                    digest: c.digest,
                    size: c.size,
                    media_type: crate::shared::shared(&c.media_type),
                    inline: None,
                    home: home.clone(),
                });
            }
        }
        Ok(())
    })
}

/// For every object of every image in turn, whether it is the first with its digest: what
/// keeps each object once, in the order first met.
pub fn first_met<'a>(images: impl IntoIterator<Item = &'a Resolved>) -> Vec<bool> {
    // The digests are borrowed: 8 bytes an object, not 32.
    let mut seen: HashSet<&Digest> = HashSet::new();
    images
        .into_iter()
        .flat_map(|img| &img.objects)
        .map(|o| seen.insert(&o.digest))
        .collect()
}

/// An image to push and where it goes.
#[derive(Clone, Debug)]
pub struct TargetImage {
    /// Shared with the bundle's list of images (verify walks them without a copy).
    pub entry: Arc<ImageEntry>,
    /// Shared by the images of one repository that come one after the other
    /// ([`all_named`](Self::all_named)): 33,340 images are 3,334 repositories.
    pub repo: Arc<str>,
    /// The tag pushed when it is not the entry's own: `--tag` (one copy shared by every image)
    /// or the digest of an untagged image. Nearly always none: a copy of each image's tag was
    /// 33,340 allocations of a few bytes.
    retag: Option<Arc<str>>,
}

impl TargetImage {
    /// `entry` pushed into `repo` under `tag`.
    pub fn new(entry: Arc<ImageEntry>, repo: Arc<str>, tag: Arc<str>) -> TargetImage {
        let retag = (*tag != *entry.tag).then_some(tag);
        TargetImage { entry, repo, retag }
    }

    /// `entry` pushed into `repo` under its own tag.
    pub fn same_tag(entry: Arc<ImageEntry>, repo: Arc<str>) -> TargetImage {
        TargetImage {
            entry,
            repo,
            retag: None,
        }
    }

    /// The tag it is pushed under.
    pub fn tag(&self) -> &str {
        self.retag.as_deref().unwrap_or(&self.entry.tag)
    }

    /// Every entry under the name its bundle gives it (its source repository and tag, or its
    /// digest when it has no tag): what export writes and verify walks. The images of a
    /// repository that come one after the other share its name.
    pub fn all_named(entries: impl ExactSizeIterator<Item = Arc<ImageEntry>>) -> Vec<TargetImage> {
        let mut out: Vec<TargetImage> = Vec::with_capacity(entries.len());
        for entry in entries {
            let repo = TargetImage::repo_after(out.last(), entry.source_repository());
            out.push(if entry.tag.is_empty() {
                let tag = entry.digest.to_string().into();
                TargetImage::new(entry, repo, tag)
            } else {
                TargetImage::same_tag(entry, repo)
            });
        }
        out
    }

    /// `repo` as the repository of the image after `prev`: `prev`'s own copy of the name when
    /// it is the same repository (the images of a repository mostly come one after the
    /// other).
    pub fn repo_after(prev: Option<&TargetImage>, repo: String) -> Arc<str> {
        match prev.filter(|p| *p.repo == *repo) {
            Some(p) => p.repo.clone(),
            None => repo.into(),
        }
    }

    pub fn name(&self, registry: &str) -> String {
        format!("{registry}/{}:{}", self.repo, self.tag())
    }
}

/// What an import did.
#[derive(Default, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// Named only when the caller asked for the names (`push`'s `keep_names`); counted always.
    pub images_pushed: Vec<String>,
    #[serde(skip)]
    pub images_pushed_count: usize,
    pub images_failed: BTreeMap<String, String>,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub manifests_pushed: u64,
}

#[derive(Default)]
struct Counters {
    uploaded: AtomicU64,
    bytes: AtomicU64,
    mounted: AtomicU64,
    skipped: AtomicU64,
    manifests: AtomicU64,
}

/// Pushes every image of `source` into `target`. Blobs go first, each uploaded once and
/// mounted into the other repositories that need it; then, per image whose blobs are all
/// there, its manifests children-first and the tag last. Failures are collected per image;
/// the images pushed are named in the report only with `keep_names` (at 33,340 images the
/// names are 2.6 MiB that export and verify never read).
pub async fn push(
    source: Arc<dyn Source>,
    target: Arc<dyn Sink>,
    images: Vec<TargetImage>,
    jobs: usize,
    keep_names: bool,
    reporter: Reporter,
) -> Result<PushReport> {
    let counters = Arc::new(Counters::default());
    let needs = needs_of(source.as_ref(), &images);
    let found = Arc::new(check_external(source.as_ref(), target.as_ref(), &needs, jobs).await?);
    let fresh = Arc::new(fresh_repos(target.as_ref(), &needs, &reporter).await);
    // Failures per (blob, repository): a repository the registry refuses (a missing project)
    // fails its own images, not every image that shares a layer with it.
    let failed_blobs: Arc<Mutex<HashMap<(Digest, String), String>>> = Arc::default();
    stream::iter(needs)
        .for_each_concurrent(jobs, |need| {
            let source = source.clone();
            let target = target.clone();
            let counters = counters.clone();
            let failed = failed_blobs.clone();
            let reporter = reporter.clone();
            let found = found.clone();
            let fresh = fresh.clone();
            async move {
                let known = Known {
                    first_having: found.get(need.digest).copied(),
                    fresh: &fresh,
                };
                let failures = place_blob(
                    source.as_ref(),
                    target.as_ref(),
                    &need,
                    known,
                    &counters,
                    &reporter,
                )
                .await;
                if let Ok(mut f) = failed.lock() {
                    for (repo, e) in failures {
                        f.insert((need.digest.clone(), repo), e.to_string());
                    }
                }
            }
        })
        .await;
    let failed_blobs = failed_blobs.lock().map(|f| f.clone()).unwrap_or_default();
    // Manifests: one job per (repository, root manifest), however many tags point at it.
    // Child manifests are written once per (repository, digest) for the whole run; the root
    // once, then its other tags one after the other. The registry stores a manifest
    // non-atomically, so the same manifest is never written into one repository twice at once.
    let groups = group_by_root(&images);
    let written = ManifestsWritten::for_roots(groups.len());
    // Each group's outcome goes into the report as it comes: a list of every outcome would
    // hold 10,000 names and errors besides the report's own.
    let mut images_pushed = Vec::new();
    let mut images_pushed_count = 0;
    let mut images_failed = BTreeMap::new();
    let mut outcomes = stream::iter(groups)
        .map(|group| {
            let source = source.clone();
            let target = target.clone();
            let counters = counters.clone();
            let failed_blobs = &failed_blobs;
            let written = &written;
            let reporter = reporter.clone();
            async move {
                let names: Vec<String> = group
                    .tags
                    .iter()
                    .map(|t| format!("{}/{}:{t}", target.name(), group.repo))
                    .collect();
                if let Some(why) = group
                    .entry
                    .blobs
                    .iter()
                    .find_map(|d| failed_blobs.get(&(d.clone(), group.repo.to_string())))
                {
                    return names
                        .into_iter()
                        .map(|n| (n, Err(Error::Failed(why.clone()))))
                        .collect();
                }
                push_group(
                    source.as_ref(),
                    target.as_ref(),
                    &group,
                    written,
                    &counters,
                    &reporter,
                )
                .await
            }
        })
        .buffer_unordered(jobs);
    while let Some(outcome) = outcomes.next().await {
        for (name, r) in outcome {
            match r {
                Ok(()) => {
                    images_pushed_count += 1;
                    if keep_names {
                        images_pushed.push(name);
                    }
                }
                Err(e) => {
                    images_failed.insert(name, e.to_string());
                }
            }
        }
    }
    images_pushed.sort();
    Ok(PushReport {
        blobs_uploaded: counters.uploaded.load(Ordering::Relaxed),
        bytes_uploaded: counters.bytes.load(Ordering::Relaxed),
        blobs_mounted: counters.mounted.load(Ordering::Relaxed),
        blobs_skipped: counters.skipped.load(Ordering::Relaxed),
        manifests_pushed: counters.manifests.load(Ordering::Relaxed),
        images_pushed,
        images_pushed_count,
        images_failed,
    })
}

/// The engine for a sink with one namespace whose manifests and tags travel in its own list
/// of contents (the bundle `export` writes): every blob of `objects` is put once, `jobs` at a
/// time, in the order given, through the same steps as [`push`]'s; the manifests among them
/// are the sink's to write. No image is walked: at 33,340 images the images and the plan of
/// which repositories need which blob were 15 MiB that such a sink never reads, held while
/// every blob was written. The first blob that could not be put fails the push (its error
/// names it, as the download or the sink made it); what was put, the sink counts.
pub async fn push_objects(
    source: &dyn Source,
    target: &dyn Sink,
    objects: &[Object],
    jobs: usize,
    reporter: &Reporter,
) -> Result<()> {
    let counters = Counters::default();
    let first_failure: Mutex<Option<Error>> = Mutex::new(None);
    let nothing_known = HashSet::new();
    stream::iter(objects.iter().filter(|o| o.inline.is_none()))
        .for_each_concurrent(jobs, |o| {
            let (counters, first_failure) = (&counters, &first_failure);
            let known = Known {
                first_having: None,
                fresh: &nothing_known,
            };
            async move {
                let need = Need {
                    digest: &o.digest,
                    size: o.size,
                    repos: smallvec::smallvec![o.repo()],
                    external: None,
                };
                let failures = place_blob(source, target, &need, known, counters, reporter).await;
                if let Some((_, e)) = failures.into_iter().next() {
                    if let Ok(mut first) = first_failure.lock() {
                        first.get_or_insert(e);
                    }
                }
            }
        })
        .await;
    match first_failure
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Which repositories need each blob (manifests are pushed later, by image); blobs that a
/// base bundle carried (`external`) must be in the target already.
fn needs_of<'a>(source: &dyn Source, images: &'a [TargetImage]) -> Vec<Need<'a>> {
    // Room for every object of the source at once: grown by doubling, the list would be
    // held twice over while it moves (100,000 blobs). Each object the source numbers is
    // marked with its need's place in a list (8 bytes an object); a map, for the others.
    let room = source.objects_hint();
    let mut needs: Vec<Need> = Vec::with_capacity(room);
    let mut marked: Vec<usize> = vec![usize::MAX; room];
    let mut pos: HashMap<&Digest, usize> = HashMap::new();
    for img in images {
        for d in &img.entry.blobs {
            let (size, external) = match (source.describe(d), source.external(d)) {
                (Some((_, mt)), _) if manifest::is_manifest(&mt) => continue,
                (Some((size, _)), _) => (size, false),
                (None, Some(size)) => (size, true),
                (None, None) => continue,
            };
            let mark = source.position(d).filter(|&p| p < room);
            let known = match mark {
                Some(p) => marked.get(p).copied().filter(|&n| n != usize::MAX),
                None => pos.get(d).copied(),
            };
            let i = match known {
                Some(i) => i,
                None => {
                    needs.push(Need {
                        digest: d,
                        size,
                        repos: Repos::new(),
                        external: external.then_some(img),
                    });
                    let i = needs.len() - 1;
                    match mark.and_then(|p| marked.get_mut(p)) {
                        Some(slot) => *slot = i,
                        None => {
                            pos.insert(d, i);
                        }
                    }
                    i
                }
            };
            // The images of a repository mostly come one after the other: a repeat of the
            // last one is skipped here, the others below.
            let repos = &mut needs[i].repos;
            if repos.last() != Some(&&*img.repo) {
                repos.push(&img.repo);
            }
        }
    }
    drop((marked, pos));
    // Each repository once, in the order first met. A set per blob, not one of every
    // (blob, repository) pair: a base layer is needed by thousands of repositories.
    let mut seen: HashSet<&str> = HashSet::new();
    for n in needs.iter_mut().filter(|n| n.repos.len() > 1) {
        seen.clear();
        n.repos.retain(|r| seen.insert(r));
        n.repos.shrink_to_fit();
    }
    // Held through the whole push: no room to spare (shrunk in place).
    needs.shrink_to_fit();
    needs
}

/// What a push would do, asked of the target with `HEAD` requests only: nothing is written.
/// The images are named as they are written out ([`PlannedImages`]), not held as names.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushPlan<'a> {
    pub images: PlannedImages<'a>,
    pub blobs_to_upload: usize,
    pub bytes_to_upload: u64,
    pub blobs_to_mount: usize,
    pub blobs_already_there: usize,
    /// External blobs (an incremental bundle's) that the target lacks, each with the bundle
    /// that carries it.
    pub missing: Vec<String>,
}

/// The images of a plan and the target they go to: each [`PlannedImage`] is made as it is
/// serialized or shown (at 33,340 images, held as names they were 5 MiB).
#[derive(Debug)]
pub struct PlannedImages<'a> {
    images: &'a [TargetImage],
    target: &'a str,
}

impl<'a> PlannedImages<'a> {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = PlannedImage<'a>> + '_ {
        self.images.iter().map(|t| PlannedImage {
            source: &t.entry.source,
            target: t.name(self.target),
            digest: &t.entry.digest,
        })
    }
}

impl serde::Serialize for PlannedImages<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedImage<'a> {
    pub source: &'a str,
    pub target: String,
    pub digest: &'a Digest,
}

/// Plans a push of `images` from `source` into `target` (see [`PushPlan`]).
pub async fn plan<'a>(
    source: &dyn Source,
    target: &'a dyn Sink,
    images: &'a [TargetImage],
    jobs: usize,
) -> Result<PushPlan<'a>> {
    let needs = needs_of(source, images);
    let fresh = &fresh_repos(target, &needs, &Reporter::new(true, false)).await;
    let mut plan = PushPlan {
        images: PlannedImages {
            images,
            target: target.name(),
        },
        blobs_to_upload: 0,
        bytes_to_upload: 0,
        blobs_to_mount: 0,
        blobs_already_there: 0,
        missing: Vec::new(),
    };
    // Each blob's answers are counted as they come: (need, repositories that have it).
    let mut heads = stream::iter(needs.iter())
        .map(|n| async move {
            let mut present = 0;
            for repo in &n.repos {
                // An external blob is asked about wherever it may be (as `push` does).
                let absent = n.external.is_none() && fresh.contains(repo);
                if !absent && target.has_blob(repo, n.digest).await? {
                    present += 1;
                }
            }
            Ok::<_, Error>((n, present))
        })
        .buffer_unordered(jobs);
    while let Some(h) = heads.next().await {
        let (n, present) = h?;
        plan.blobs_already_there += present;
        let absent = n.repos.len() - present;
        if absent == 0 {
            continue;
        }
        if present > 0 {
            plan.blobs_to_mount += absent;
        } else if let Some(first) = n.external {
            plan.missing.push(format!(
                "{} (needed by {}) is carried by {}",
                n.digest,
                first.name(target.name()),
                source.external_home(n.digest)
            ));
        } else {
            plan.blobs_to_upload += 1;
            plan.bytes_to_upload += n.size;
            plan.blobs_to_mount += absent - 1;
        }
    }
    plan.missing.sort();
    Ok(plan)
}

/// The repositories a blob goes to: nearly always one, held in place (a list of one, an
/// allocation of its own per blob, was 3 MiB at 100,000 blobs, held until each was placed).
type Repos<'a> = smallvec::SmallVec<[&'a str; 1]>;

/// A blob and where it must end up (borrowed from the images: one per blob, 100,000 of them).
struct Need<'a> {
    digest: &'a Digest,
    size: u64,
    repos: Repos<'a>,
    /// Carried by a base bundle, not this one: the first image that needs it (for messages).
    /// An image's name is made only for a message: 8 bytes a blob, not a string.
    external: Option<&'a TargetImage>,
}

/// Before anything is written: every external blob must already be in the target (in one of
/// the repositories that need it; it is mounted into the others). Names the base bundle to
/// import first when some are missing. Returns, per external blob, the index in its `repos`
/// of the first repository that has it (the ones before it do not): `place_blob` starts from
/// there instead of asking again.
async fn check_external(
    source: &dyn Source,
    target: &dyn Sink,
    needs: &[Need<'_>],
    jobs: usize,
) -> Result<HashMap<Digest, usize>> {
    type Check = std::result::Result<(Digest, usize), String>;
    let checks: Vec<Result<Check>> =
        stream::iter(needs.iter().filter_map(|n| Some((n, n.external?))))
            .map(|(n, first)| async move {
                for (i, repo) in n.repos.iter().enumerate() {
                    if target.has_blob(repo, n.digest).await? {
                        return Ok(Ok((n.digest.clone(), i)));
                    }
                }
                let base = source.external_home(n.digest);
                Ok(Err(format!(
                    "{} (needed by {}) is carried by {base}",
                    n.digest,
                    first.name(target.name())
                )))
            })
            .buffer_unordered(jobs)
            .collect()
            .await;
    let mut missing = Vec::new();
    let mut found = HashMap::new();
    for c in checks {
        match c? {
            Ok((d, i)) => {
                found.insert(d, i);
            }
            Err(m) => missing.push(m),
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    missing.sort();
    Err(source.missing_externals(target.name(), missing))
}

/// The repositories of `needs` that the target has nothing in (`Sink::lacking`: a
/// registry's catalog does not list them). A blob is not asked about there: it is mounted or
/// uploaded at once, a request less per blob and repository (a third of a first import's
/// requests). When the target cannot tell, none: every blob is asked about.
async fn fresh_repos<'a>(
    target: &dyn Sink,
    needs: &[Need<'a>],
    reporter: &Reporter,
) -> HashSet<&'a str> {
    let repos: HashSet<&'a str> = needs.iter().flat_map(|n| n.repos.iter().copied()).collect();
    if repos.is_empty() {
        return repos;
    }
    match target.lacking(repos).await {
        Ok(fresh) => {
            reporter.detail(format!(
                "{}: {} of the target repositories are new (not in its catalog)",
                target.name(),
                fresh.len()
            ));
            fresh
        }
        Err(e) => {
            reporter.detail(format!(
                "{}: no catalog to read ({e}); every blob is asked about",
                target.name()
            ));
            HashSet::new()
        }
    }
}

/// What is known of a blob's place in the target before it is placed.
#[derive(Clone, Copy)]
struct Known<'k, 'a> {
    /// The index of the first repository of its need found to have it by `check_external`
    /// (those before it do not): none of them is asked again.
    first_having: Option<usize>,
    /// Repositories the target has nothing in ([`fresh_repos`]): not asked.
    fresh: &'k HashSet<&'a str>,
}

/// Makes one blob present in every repository in `repos`, without asking what `known` says.
async fn place_blob(
    source: &dyn Source,
    target: &dyn Sink,
    need: &Need<'_>,
    known: Known<'_, '_>,
    counters: &Counters,
    reporter: &Reporter,
) -> Vec<(String, Error)> {
    let mut have: Option<&str> = None;
    if let Some(i) = known.first_having {
        // Start from the repository that has it (checked before anything was written).
        have = need.repos.get(i).copied();
    }
    let mut failures = Vec::new();
    for (i, repo) in need.repos.iter().enumerate() {
        let present = match known.first_having {
            Some(k) if i < k => Some(false),
            Some(k) if i == k => Some(true),
            _ if known.fresh.contains(repo) => Some(false),
            _ => None,
        };
        match place_in(
            source, target, need, repo, present, have, counters, reporter,
        )
        .await
        {
            Ok(()) => have = Some(repo),
            // Bad content fails it everywhere; a refusal of one repository fails only that one.
            Err(e @ (Error::Integrity { .. } | Error::Bundle { .. })) => {
                let why = e.to_string();
                failures.extend(
                    need.repos[i..]
                        .iter()
                        .map(|r| (r.to_string(), Error::Failed(why.clone()))),
                );
                break;
            }
            Err(e) => failures.push((repo.to_string(), e)),
        }
    }
    failures
}

/// Makes one blob present in one repository: already there (`present`, or asked), mounted
/// from `have`, or uploaded.
#[allow(clippy::too_many_arguments)]
async fn place_in(
    source: &dyn Source,
    target: &dyn Sink,
    need: &Need<'_>,
    repo: &str,
    present: Option<bool>,
    have: Option<&str>,
    counters: &Counters,
    reporter: &Reporter,
) -> Result<()> {
    let (digest, size) = (need.digest, need.size);
    let present = match present {
        Some(p) => p,
        None => target.has_blob(repo, digest).await?,
    };
    if present {
        counters.skipped.fetch_add(1, Ordering::Relaxed);
        reporter.detail(format!("{repo}: blob {} already there", digest.short()));
        return Ok(());
    }
    let mut location = None;
    if let Some(from) = have {
        match target.mount_blob(repo, digest, from).await? {
            MountResult::Mounted => {
                counters.mounted.fetch_add(1, Ordering::Relaxed);
                reporter.detail(format!(
                    "{repo}: mounted blob {} from {from}",
                    digest.short()
                ));
                return Ok(());
            }
            MountResult::Upload(loc) => location = Some(loc),
            MountResult::NotMounted => {}
        }
    }
    if need.external.is_some() {
        return Err(Error::Failed(format!(
            "blob {digest} is not in the source (a base bundle carries it) and could not be \
             mounted into {repo}"
        )));
    }
    let blob = source.blob(digest, reporter);
    target
        .put_blob(repo, digest, size, blob.as_ref(), location)
        .await?;
    counters.uploaded.fetch_add(1, Ordering::Relaxed);
    counters.bytes.fetch_add(size, Ordering::Relaxed);
    reporter.detail(format!(
        "{repo}: uploaded blob {} ({size} bytes)",
        digest.short()
    ));
    Ok(())
}

/// One root manifest going into one repository, with every tag that points at it (borrowed
/// from the images: at 10,000 images a copy of each would be megabytes).
struct RootGroup<'a> {
    repo: &'a str,
    entry: &'a ImageEntry,
    /// In the order the images were given; each once (nearly always one, held in place).
    tags: smallvec::SmallVec<[&'a str; 1]>,
}

/// For each of `n` items, the first (in the order given) of those whose `key` equals its own.
/// Found through the positions sorted by key (4 bytes an item, and 4 for the answer), not a
/// map of every key: at 33,340 images a map of (repository, root) pairs was 2 MiB, and one of
/// (repository, tag) names 5 MiB.
pub fn first_of_each_key<K: Ord>(n: usize, key: impl Fn(usize) -> K) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    // Stable: among equal keys, the item given first comes first.
    order.sort_by_key(|&i| key(i as usize));
    let mut first = vec![0; n];
    let mut run = order.first().copied().unwrap_or(0);
    for &i in &order {
        if key(i as usize) != key(run as usize) {
            run = i;
        }
        first[i as usize] = run;
    }
    first
}

/// Groups the images by (target repository, root digest), keeping the first-seen order, and
/// makes the list at its size (grown by doubling, it held 1.5 MiB to spare at 33,340 images).
fn group_by_root(images: &[TargetImage]) -> Vec<RootGroup<'_>> {
    let first = first_of_each_key(images.len(), |i| {
        (&*images[i].repo, &images[i].entry.digest)
    });
    let count = first
        .iter()
        .enumerate()
        .filter(|&(i, &f)| i == f as usize)
        .count();
    // A group's first image's place in `groups`.
    let mut slot: Vec<u32> = vec![0; images.len()];
    let mut groups: Vec<RootGroup> = Vec::with_capacity(count);
    for (i, img) in images.iter().enumerate() {
        let f = first[i] as usize;
        if f == i {
            slot[i] = groups.len() as u32;
            groups.push(RootGroup {
                repo: &img.repo,
                entry: &img.entry,
                tags: smallvec::smallvec![img.tag()],
            });
        } else {
            let tags = &mut groups[slot[f] as usize].tags;
            if !tags.contains(&img.tag()) {
                tags.push(img.tag());
            }
        }
    }
    groups
}

/// The outcome of one manifest write, shared by every job that needs it.
type WriteCell = Arc<tokio::sync::OnceCell<std::result::Result<(), String>>>;

/// Manifest writes of this run, one cell per (repository, digest), both borrowed from the
/// images: the first job that needs a manifest in a repository writes it, the others wait for
/// that write and share its outcome. A write that succeeded leaves the one shared `done` cell
/// in its place, not a cell of its own (tens of thousands of manifests at scale).
struct ManifestsWritten<'a> {
    cells: Mutex<HashMap<(&'a str, &'a Digest), WriteCell>>,
    done: WriteCell,
}

impl ManifestsWritten<'_> {
    /// Room for `roots` manifests up front: grown by doubling as they were written, the
    /// cells of 33,340 roots were held twice over at the end of a push (1 MiB).
    fn for_roots(roots: usize) -> Self {
        ManifestsWritten {
            cells: Mutex::new(HashMap::with_capacity(roots)),
            done: Arc::new(tokio::sync::OnceCell::new_with(Some(Ok(())))),
        }
    }
}

/// Writes `m` into `repo` under `reference` unless this run already did (or is doing) it
/// under any reference; waits for a write in progress. True when this call wrote it.
async fn put_once<'a>(
    target: &dyn Sink,
    written: &ManifestsWritten<'a>,
    repo: &'a str,
    digest: &'a Digest,
    reference: &str,
    m: &Manifest,
    counters: &Counters,
) -> Result<bool> {
    let cell = {
        let mut w = written
            .cells
            .lock()
            .map_err(|_| Error::Failed("manifest bookkeeping poisoned".into()))?;
        w.entry((repo, digest)).or_default().clone()
    };
    let mut mine = false;
    let outcome = cell
        .get_or_init(|| async {
            mine = true;
            let r = target.put_manifest(repo, reference, m).await;
            if r.is_ok() {
                counters.manifests.fetch_add(1, Ordering::Relaxed);
            }
            r.map_err(|e| e.to_string())
        })
        .await;
    match outcome {
        Ok(()) => {
            if mine {
                // Jobs waiting on this cell hold it; later ones find `done`.
                if let Ok(mut w) = written.cells.lock() {
                    w.insert((repo, digest), written.done.clone());
                }
            }
            Ok(mine)
        }
        Err(e) if mine => Err(Error::Failed(e.clone())),
        Err(e) => {
            // The write that failed was another image's, under its own reference (a tag
            // the registry refused, say): this one tries under its own before failing.
            match target.put_manifest(repo, reference, m).await {
                Ok(()) => {
                    counters.manifests.fetch_add(1, Ordering::Relaxed);
                    Ok(true)
                }
                Err(mine) => Err(Error::Failed(format!(
                    "manifest {} could not be written into {repo}: {mine} (and as another \
                     image's: {e})",
                    m.digest
                ))),
            }
        }
    }
}

/// Pushes one root's manifests: children by digest first (each once per repository for the
/// whole run), then the root once under its first tag, then each further tag in turn, after
/// the root exists. A failure anywhere leaves every tag of the group unwritten.
async fn push_group<'a>(
    source: &dyn Source,
    target: &dyn Sink,
    group: &RootGroup<'a>,
    written: &ManifestsWritten<'a>,
    counters: &Counters,
    reporter: &Reporter,
) -> Vec<(String, Result<()>)> {
    let names: Vec<String> = group
        .tags
        .iter()
        .map(|t| format!("{}/{}:{t}", target.name(), group.repo))
        .collect();
    let all_failed = |e: Error| -> Vec<(String, Result<()>)> {
        let why = e.to_string();
        names
            .iter()
            .map(|n| (n.clone(), Err(Error::Failed(why.clone()))))
            .collect()
    };
    let root_digest = &group.entry.digest;
    let mut root = None;
    for d in &group.entry.blobs {
        let Some((_, media_type)) = source.describe(d) else {
            continue;
        };
        if !manifest::is_manifest(&media_type) {
            continue;
        }
        let m = match source.manifest(d).await {
            Ok(bytes) => Manifest {
                bytes,
                media_type: media_type.to_string(),
                digest: d.clone(),
            },
            Err(e) => return all_failed(e),
        };
        if d == root_digest {
            root = Some(m);
            continue;
        }
        let reference = d.to_string();
        if let Err(e) = put_once(target, written, group.repo, d, &reference, &m, counters).await {
            return all_failed(e);
        }
    }
    let Some(root) = root else {
        return all_failed(Error::Failed(format!(
            "the source lists no manifest {root_digest} for {}",
            names.first().cloned().unwrap_or_default()
        )));
    };
    let mut out = Vec::new();
    let mut tags = group.tags.iter().zip(&names);
    let Some((first, first_name)) = tags.next() else {
        return out;
    };
    // The root: written once; when another root wrote it by digest (it is that root's child),
    // the first tag still needs writing.
    match put_once(
        target,
        written,
        group.repo,
        root_digest,
        first,
        &root,
        counters,
    )
    .await
    {
        Ok(true) => out.push((first_name.clone(), Ok(()))),
        Ok(false) => {
            let r = target.put_manifest(group.repo, first, &root).await;
            if r.is_ok() {
                counters.manifests.fetch_add(1, Ordering::Relaxed);
            }
            out.push((first_name.clone(), r));
        }
        Err(e) => return all_failed(e),
    }
    for (tag, name) in tags {
        let r = target.put_manifest(group.repo, tag, &root).await;
        if r.is_ok() {
            counters.manifests.fetch_add(1, Ordering::Relaxed);
        }
        out.push((name.clone(), r));
    }
    for (name, r) in &out {
        if r.is_ok() {
            reporter.info(format!("pushed {name} ({root_digest})"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::BlobSource;
    use futures_util::future::BoxFuture;

    /// Carries every digest it is asked about, as a layer of 7 bytes; numbers those listed
    /// (a bundle or export numbers each object it carries).
    struct Layers(Vec<Digest>);

    impl Source for Layers {
        fn describe(&self, _d: &Digest) -> Option<(u64, Arc<str>)> {
            Some((7, Arc::from("application/vnd.oci.image.layer.v1.tar+gzip")))
        }
        fn objects_hint(&self) -> usize {
            self.0.len()
        }
        fn position(&self, d: &Digest) -> Option<usize> {
            self.0.iter().position(|x| x == d)
        }
        fn manifest<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>>> {
            Box::pin(async move { Err(Error::Failed(format!("no manifest {d}"))) })
        }
        fn blob(&self, _d: &Digest, _reporter: &Reporter) -> Box<dyn BlobSource> {
            unreachable!("the plan reads no blob")
        }
    }

    fn image(repo: &str, tag: &str, blobs: &[&Digest]) -> TargetImage {
        let root = Digest::of(format!("{repo}:{tag}").as_bytes());
        TargetImage {
            entry: Arc::new(ImageEntry {
                source: format!("src.example/{repo}:{tag}").into(),
                registry: Arc::from("src.example"),
                namespace: "".into(),
                path: repo.into(),
                tag: tag.into(),
                digest: root,
                source_digest: None,
                subject: None,
                media_type: Arc::from(manifest::OCI_MANIFEST),
                platforms: Box::default(),
                size: 0,
                blobs: blobs.iter().map(|d| (*d).clone()).collect(),
            }),
            repo: Arc::from(repo),
            retag: None,
        }
    }

    /// Every image under its bundle name; the images of a repository that come one after the
    /// other share one copy of its name, and an image without a tag goes by its digest.
    #[test]
    fn all_named_names_each_image_and_shares_a_repository_met_in_a_row() {
        let l = Digest::of(b"l");
        let mut untagged = (*image("r/two", "x", &[&l]).entry).clone();
        untagged.tag = "".into();
        let entries = vec![
            image("r/one", "1", &[&l]).entry,
            image("r/one", "2", &[&l]).entry,
            Arc::new(untagged),
            image("r/one", "3", &[&l]).entry,
        ];
        let root_of_untagged = entries[2].digest.to_string();
        let t = TargetImage::all_named(entries.into_iter());
        let names: Vec<(&str, &str)> = t.iter().map(|t| (&*t.repo, t.tag())).collect();
        assert_eq!(
            names,
            vec![
                ("r/one", "1"),
                ("r/one", "2"),
                ("r/two", root_of_untagged.as_str()),
                ("r/one", "3"),
            ]
        );
        assert!(Arc::ptr_eq(&t[0].repo, &t[1].repo));
        assert!(!Arc::ptr_eq(&t[1].repo, &t[3].repo));
    }

    /// A base layer shared by images listed tag by tag across repositories (each repository
    /// met again after others): every blob once, in the order first met, and each repository
    /// that needs it once, in the order first met.
    #[test]
    fn each_blob_once_with_each_repository_once_in_first_met_order() {
        let base = Digest::of(b"base");
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let images = vec![
            image("r/one", "1", &[&base, &a]),
            image("r/two", "1", &[&base, &b]),
            image("r/one", "2", &[&base, &a]),
            image("r/three", "1", &[&base, &c]),
            image("r/two", "2", &[&base, &b]),
            image("r/two", "3", &[&base, &b]),
        ];
        // Unnumbered (found through a map), numbered in another order than the images',
        // and numbered in part: the same plan.
        for numbered in [
            vec![],
            vec![c.clone(), base.clone(), b.clone(), a.clone()],
            vec![b.clone(), base.clone()],
        ] {
            let source = Layers(numbered.clone());
            let needs = needs_of(&source, &images);
            let got: Vec<(&Digest, Vec<&str>)> =
                needs.iter().map(|n| (n.digest, n.repos.to_vec())).collect();
            assert_eq!(
                got,
                vec![
                    (&base, vec!["r/one", "r/two", "r/three"]),
                    (&a, vec!["r/one"]),
                    (&b, vec!["r/two"]),
                    (&c, vec!["r/three"]),
                ],
                "numbered {numbered:?}"
            );
            assert!(needs.iter().all(|n| n.size == 7 && n.external.is_none()));
        }
    }

    /// One group per (repository, root), in the order first met, with its tags each once in
    /// the order given; the same root in another repository is a group of its own.
    #[test]
    fn groups_each_root_per_repository_with_its_tags_in_order() {
        let l = Digest::of(b"l");
        let x = image("r/a", "1", &[&l]);
        let tagged = |t: &TargetImage, repo: &str, tag: &str| TargetImage {
            entry: Arc::new(ImageEntry {
                tag: tag.into(),
                ..(*t.entry).clone()
            }),
            repo: Arc::from(repo),
            retag: None,
        };
        let images = vec![
            x.clone(),
            image("r/b", "1", &[&l]),
            tagged(&x, "r/a", "2"),
            x.clone(),
            tagged(&x, "r/b", "2"),
            tagged(&x, "r/a", "0"),
        ];
        let groups = group_by_root(&images);
        let seen: Vec<(&str, &Digest, Vec<&str>)> = groups
            .iter()
            .map(|g| (g.repo, &g.entry.digest, g.tags.to_vec()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("r/a", &x.entry.digest, vec!["1", "2", "0"]),
                ("r/b", &images[1].entry.digest, vec!["1"]),
                ("r/b", &x.entry.digest, vec!["2"]),
            ]
        );
        assert!(group_by_root(&[]).is_empty());
    }
}
