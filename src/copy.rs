//! The copy engine: walks an image's graph children-first from a registry, deduplicates
//! objects across images, and pushes a bundle's images into a registry (skip what exists,
//! mount across repositories, upload from the bundle with retries, manifests children-first,
//! the tag last and only when everything under it is there).

use crate::bundle::{Bundle, ImageEntry};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, Kind};
use crate::progress::Reporter;
use crate::registry::{Manifest, MountResult, Registry, MAX_MANIFEST_SIZE};
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One object of an image graph: a manifest (kept as its exact bytes) or a blob to fetch.
#[derive(Clone, Debug)]
pub struct Object {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Manifests carry their bytes; blobs are fetched from `repo` at the source.
    pub inline: Option<Arc<Vec<u8>>>,
    /// Where the object lives at the source.
    pub registry: String,
    pub repo: String,
}

/// An image resolved at its source.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub root: Manifest,
    /// The digest at the source when platform filtering rewrote the index.
    pub source_digest: Option<Digest>,
    pub platforms: Vec<String>,
    /// Children first, root manifest last, each once.
    pub objects: Vec<Object>,
}

const MAX_DEPTH: usize = 4;

/// Resolves `reference` in `repo`: fetches the manifest and, for an index, each child manifest
/// (filtered to `platforms` when given), and lists every blob beneath.
pub async fn resolve(
    reg: &Registry,
    repo: &str,
    reference: &str,
    platforms: &[String],
) -> Result<Resolved> {
    let root = reg.get_manifest(repo, reference).await?;
    resolve_manifest(reg, repo, reference, root, platforms).await
}

/// Like [`resolve`], from a root manifest already fetched (`reference` names it in messages).
pub async fn resolve_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    root: Manifest,
    platforms: &[String],
) -> Result<Resolved> {
    let what = format!("{}/{repo}:{reference}", reg.name());
    let mut objects = Vec::new();
    let mut seen = HashSet::new();
    let mut kept_platforms = Vec::new();
    let mut root = root;
    let mut source_digest = None;
    if manifest::kind(&root.media_type) == Some(Kind::Index) && !platforms.is_empty() {
        if let Some(bytes) = manifest::filter_index(&root.bytes, platforms, &what)? {
            source_digest = Some(root.digest.clone());
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
    walk(reg, repo, &root, &what, 0, &mut objects, &mut seen).await?;
    Ok(Resolved {
        root,
        source_digest,
        platforms: kept_platforms,
        objects,
    })
}

fn walk<'a>(
    reg: &'a Registry,
    repo: &'a str,
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
                let child = reg.get_manifest(repo, c.digest.as_str()).await?;
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
                walk(reg, repo, &child, what, depth + 1, out, seen).await?;
                seen.insert(c.digest.clone());
                out.push(Object {
                    digest: c.digest,
                    size: c.size,
                    media_type: child.media_type.clone(),
                    inline: Some(Arc::new(child.bytes)),
                    registry: reg.name().to_string(),
                    repo: repo.to_string(),
                });
            } else {
                seen.insert(c.digest.clone());
                out.push(Object {
                    digest: c.digest,
                    size: c.size,
                    media_type: c.media_type,
                    inline: None,
                    registry: reg.name().to_string(),
                    repo: repo.to_string(),
                });
            }
        }
        if depth == 0 && seen.insert(m.digest.clone()) {
            out.push(Object {
                digest: m.digest.clone(),
                size: m.bytes.len() as u64,
                media_type: m.media_type.clone(),
                inline: Some(Arc::new(m.bytes.clone())),
                registry: reg.name().to_string(),
                repo: repo.to_string(),
            });
        }
        Ok(())
    })
}

/// Every object of every image, each once, in the order first met.
pub fn dedup_order<'a>(images: impl IntoIterator<Item = &'a Resolved>) -> Vec<Object> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for img in images {
        for o in &img.objects {
            if seen.insert(o.digest.clone()) {
                out.push(o.clone());
            }
        }
    }
    out
}

/// An image of a bundle and where it goes.
#[derive(Clone, Debug)]
pub struct TargetImage {
    pub entry: ImageEntry,
    pub repo: String,
    pub tag: String,
}

impl TargetImage {
    pub fn name(&self, registry: &str) -> String {
        format!("{registry}/{}:{}", self.repo, self.tag)
    }
}

/// What an import did.
#[derive(Default, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    pub images_pushed: Vec<String>,
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

/// Pushes every image of `bundle` into `target`. Blobs go first, each uploaded once and
/// mounted into the other repositories that need it; then, per image whose blobs are all
/// there, its manifests children-first and the tag last. Failures are collected per image.
pub async fn push_bundle(
    bundle: Arc<Bundle>,
    target: Arc<Registry>,
    images: Vec<TargetImage>,
    jobs: usize,
    reporter: Reporter,
) -> Result<PushReport> {
    let counters = Arc::new(Counters::default());
    // Which repositories need each blob (manifests are pushed later, by image); blobs that
    // a base bundle carried (`external`) must be in the target already.
    let mut needs: Vec<Need> = Vec::new();
    let mut pos: HashMap<Digest, usize> = HashMap::new();
    for img in &images {
        for d in &img.entry.blobs {
            let (size, external) = match (bundle.manifest.blob(d), bundle.manifest.external_blob(d))
            {
                (Some(b), _) if manifest::is_manifest(&b.media_type) => continue,
                (Some(b), _) => (b.size, false),
                (None, Some(x)) => (x.size, true),
                (None, None) => continue,
            };
            let i = *pos.entry(d.clone()).or_insert_with(|| {
                needs.push(Need {
                    digest: d.clone(),
                    size,
                    external,
                    repos: Vec::new(),
                    images: Vec::new(),
                });
                needs.len() - 1
            });
            if !needs[i].repos.contains(&img.repo) {
                needs[i].repos.push(img.repo.clone());
            }
            needs[i].images.push(img.name(target.name()));
        }
    }
    check_external(&bundle, &target, &needs, jobs).await?;
    let failed_blobs: Arc<Mutex<HashMap<Digest, String>>> = Arc::default();
    stream::iter(needs)
        .for_each_concurrent(jobs, |need| {
            let bundle = bundle.clone();
            let target = target.clone();
            let counters = counters.clone();
            let failed = failed_blobs.clone();
            let reporter = reporter.clone();
            async move {
                if let Err(e) = place_blob(&bundle, &target, &need, &counters, &reporter).await {
                    if let Ok(mut f) = failed.lock() {
                        f.insert(need.digest, e.to_string());
                    }
                }
            }
        })
        .await;
    let failed_blobs = failed_blobs.lock().map(|f| f.clone()).unwrap_or_default();
    let results: Vec<(String, Result<()>)> = stream::iter(images)
        .map(|img| {
            let bundle = bundle.clone();
            let target = target.clone();
            let counters = counters.clone();
            let failed_blobs = &failed_blobs;
            let reporter = reporter.clone();
            async move {
                let name = img.name(target.name());
                if let Some((d, why)) = img
                    .entry
                    .blobs
                    .iter()
                    .find_map(|d| failed_blobs.get(d).map(|w| (d, w)))
                {
                    let _ = d;
                    return (name, Err(Error::Failed(why.clone())));
                }
                let r = push_manifests(&bundle, &target, &img, &counters).await;
                if r.is_ok() {
                    reporter.info(format!("pushed {name} ({})", img.entry.digest));
                }
                (name, r)
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut report = PushReport {
        blobs_uploaded: counters.uploaded.load(Ordering::Relaxed),
        bytes_uploaded: counters.bytes.load(Ordering::Relaxed),
        blobs_mounted: counters.mounted.load(Ordering::Relaxed),
        blobs_skipped: counters.skipped.load(Ordering::Relaxed),
        manifests_pushed: counters.manifests.load(Ordering::Relaxed),
        ..Default::default()
    };
    for (name, r) in results {
        match r {
            Ok(()) => report.images_pushed.push(name),
            Err(e) => {
                report.images_failed.insert(name, e.to_string());
            }
        }
    }
    report.images_pushed.sort();
    Ok(report)
}

/// A blob and where it must end up.
struct Need {
    digest: Digest,
    size: u64,
    /// Carried by a base bundle, not this one.
    external: bool,
    repos: Vec<String>,
    images: Vec<String>,
}

/// Before anything is written: every external blob must already be in the target (in one of
/// the repositories that need it; it is mounted into the others). Names the base bundle to
/// import first when some are missing.
async fn check_external(
    bundle: &Bundle,
    target: &Registry,
    needs: &[Need],
    jobs: usize,
) -> Result<()> {
    let checks: Vec<Result<Option<String>>> = stream::iter(needs.iter().filter(|n| n.external))
        .map(|n| async move {
            for repo in &n.repos {
                let scope = crate::registry::Scope::push(repo);
                if target.blob_exists(repo, &n.digest, &scope).await?.is_some() {
                    return Ok(None);
                }
            }
            let base = bundle
                .manifest
                .external_blob(&n.digest)
                .map(|x| bundle.manifest.base_of(x))
                .unwrap_or_default();
            Ok(Some(format!(
                "{} (needed by {}) is carried by {base}",
                n.digest,
                n.images.first().cloned().unwrap_or_default()
            )))
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut missing = Vec::new();
    for c in checks {
        if let Some(m) = c? {
            missing.push(m);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    let bases: Vec<String> = bundle
        .manifest
        .bases
        .iter()
        .map(|b| format!("{} (created {})", b.name, b.created))
        .collect();
    Err(Error::Failed(format!(
        "{} is incremental and {} of the blobs it relies on are not in {}; import {} first. \
         Nothing was written. Missing:\n  {}",
        bundle.path.display(),
        missing.len(),
        target.name(),
        bases.join(" and "),
        missing.join("\n  ")
    )))
}

/// Makes one blob present in every repository in `repos`.
async fn place_blob(
    bundle: &Arc<Bundle>,
    target: &Arc<Registry>,
    need: &Need,
    counters: &Counters,
    reporter: &Reporter,
) -> Result<()> {
    let (digest, size) = (&need.digest, need.size);
    let mut have: Option<String> = None;
    let scope_of = |r: &str| crate::registry::Scope::push(r);
    if need.external {
        // Start from a repository that has it (checked before anything was written).
        for repo in &need.repos {
            if target
                .blob_exists(repo, digest, &scope_of(repo))
                .await?
                .is_some()
            {
                have = Some(repo.clone());
                break;
            }
        }
    }
    for repo in &need.repos {
        if target
            .blob_exists(repo, digest, &scope_of(repo))
            .await?
            .is_some()
        {
            counters.skipped.fetch_add(1, Ordering::Relaxed);
            reporter.detail(format!("{repo}: blob {} already there", digest.short()));
            have = Some(repo.clone());
            continue;
        }
        let mut location = None;
        if let Some(from) = &have {
            match target.mount_blob(repo, digest, from).await? {
                MountResult::Mounted => {
                    counters.mounted.fetch_add(1, Ordering::Relaxed);
                    reporter.detail(format!(
                        "{repo}: mounted blob {} from {from}",
                        digest.short()
                    ));
                    continue;
                }
                MountResult::Upload(loc) => location = Some(loc),
                MountResult::NotMounted => {}
            }
        }
        if need.external {
            return Err(Error::Failed(format!(
                "blob {digest} is not in this bundle (a base bundle carries it) and could not be \
                 mounted into {repo}"
            )));
        }
        upload(bundle, target, repo, digest, size, location, reporter).await?;
        counters.uploaded.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(size, Ordering::Relaxed);
        reporter.detail(format!(
            "{repo}: uploaded blob {} ({size} bytes)",
            digest.short()
        ));
        have = Some(repo.clone());
    }
    Ok(())
}

/// Streams a blob from the bundle into the registry (the registry client retries and
/// resumes; content that does not match its digest ends the upload at once).
async fn upload(
    bundle: &Arc<Bundle>,
    target: &Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    location: Option<reqwest::Url>,
    reporter: &Reporter,
) -> Result<()> {
    let source = BundleBlob {
        bundle: bundle.clone(),
        digest: digest.clone(),
        reporter: reporter.clone(),
        counted: Arc::new(AtomicU64::new(0)),
    };
    target
        .upload_blob(repo, digest, size, &source, location)
        .await
}

/// A blob of the bundle as an upload source: read on a blocking thread through a small
/// bounded channel, checked against its digest as it streams, re-readable from any offset.
struct BundleBlob {
    bundle: Arc<Bundle>,
    digest: Digest,
    reporter: Reporter,
    /// How far the progress bar has been moved for this blob; a resume from an earlier
    /// offset takes the difference back.
    counted: Arc<AtomicU64>,
}

impl crate::registry::BlobSource for BundleBlob {
    fn open(&self, offset: u64) -> Result<BoxStream<'static, Result<bytes::Bytes>>> {
        let before = self.counted.swap(offset, Ordering::Relaxed);
        if before > offset {
            self.reporter.dec(before - offset);
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(4);
        let bundle = self.bundle.clone();
        let digest = self.digest.clone();
        let reporter = self.reporter.clone();
        let counted = self.counted.clone();
        tokio::task::spawn_blocking(move || {
            let fail = |e: Error| {
                let _ = tx.blocking_send(Err(e));
            };
            // The whole blob is read (and so checked against its digest); the bytes before
            // `offset` are only hashed.
            let mut r = match bundle.open_blob(&digest) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let mut pos = 0u64;
            loop {
                let mut buf = vec![0u8; 256 * 1024];
                match r.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let start = pos;
                        pos += n as u64;
                        if pos <= offset {
                            continue;
                        }
                        let skip = offset.saturating_sub(start) as usize;
                        buf.truncate(n);
                        let chunk = bytes::Bytes::from(buf).slice(skip..);
                        reporter.inc(chunk.len() as u64);
                        counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return; // the request ended early: not a content problem
                        }
                    }
                    Err(e) => return fail(Error::bundle(&bundle.path, e.to_string())),
                }
            }
        });
        Ok(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }).boxed())
    }
}

/// Pushes an image's manifests: children by digest first, then the root under its tag.
async fn push_manifests(
    bundle: &Arc<Bundle>,
    target: &Registry,
    img: &TargetImage,
    counters: &Counters,
) -> Result<()> {
    for d in &img.entry.blobs {
        let Some(b) = bundle.manifest.blob(d) else {
            continue;
        };
        if !manifest::is_manifest(&b.media_type) {
            continue;
        }
        let bundle2 = bundle.clone();
        let d2 = d.clone();
        let bytes = tokio::task::spawn_blocking(move || bundle2.read_blob(&d2, MAX_MANIFEST_SIZE))
            .await
            .map_err(|e| Error::Failed(format!("reading manifest {d}: {e}")))??;
        let m = Manifest {
            bytes,
            media_type: b.media_type.clone(),
            digest: d.clone(),
        };
        let reference = if *d == img.entry.digest {
            img.tag.clone()
        } else {
            d.to_string()
        };
        target.put_manifest(&img.repo, &reference, &m).await?;
        counters.manifests.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
