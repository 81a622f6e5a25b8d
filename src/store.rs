//! The two ends of the copy engine (`copy::push`). A [`Source`] is what images are read from:
//! a bundle (`import`) or the source registries (`copy`, `export`); the engine needs only what
//! an object is, a manifest's exact bytes, and a re-readable blob stream checked against its
//! digest. A [`Sink`] is where they go: a registry (`import`, `copy`) or a bundle being written
//! (`export`, see `bundle_sink`); the engine asks it whether it has a blob, mounts, puts blobs
//! and writes manifests and tags.

use crate::bundle::Bundle;
use crate::copy::Object;
use crate::digest::{Digest, DigestIndex};
use crate::error::{Error, Result};
use crate::progress::Reporter;
use crate::registry::retry::Budget;
use crate::registry::{BlobSource, Manifest, MountResult, PartSource, Registry, MAX_MANIFEST_SIZE};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a push reads.
pub trait Source: Send + Sync {
    /// Size and media type of an object this source carries.
    fn describe(&self, d: &Digest) -> Option<(u64, Arc<str>)>;
    /// Size of an object the images need that this source does not carry (an incremental
    /// bundle's base carried it): it must be in the target already.
    fn external(&self, _d: &Digest) -> Option<u64> {
        None
    }
    /// Which earlier bundle carries an external object (for messages).
    fn external_home(&self, _d: &Digest) -> String {
        String::new()
    }
    /// The error when external objects are missing at the target.
    fn missing_externals(&self, target: &str, missing: Vec<String>) -> Error {
        Error::Failed(format!(
            "{} objects are missing in {target}:\n  {}",
            missing.len(),
            missing.join("\n  ")
        ))
    }
    /// How many objects this source knows, carried or external: room for a push's plan, so
    /// that its list of 100,000 blobs is not grown by doubling. Zero when unknown.
    fn objects_hint(&self) -> usize {
        0
    }
    /// Where an object sits among those [`objects_hint`](Self::objects_hint) counts (below
    /// it), carried or external: a push's plan marks each in a list instead of a map of
    /// 100,000 digests. `None` for an object this source does not number.
    fn position(&self, _d: &Digest) -> Option<usize> {
        None
    }
    /// A manifest's exact bytes.
    fn manifest<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>>>;
    /// A blob as an upload source; `reporter`'s bar moves with its bytes.
    fn blob(&self, d: &Digest, reporter: &Reporter) -> Box<dyn BlobSource>;
}

/// Where a push writes. Repositories are the target's (a bundle has one namespace and
/// ignores them); a blob is put once per repository that needs it, mounted into the others.
pub trait Sink: Send + Sync {
    /// The registry's name or the bundle's path, for messages.
    fn name(&self) -> &str;
    /// Whether `repo` has the blob already.
    fn has_blob<'a>(&'a self, repo: &'a str, d: &'a Digest) -> BoxFuture<'a, Result<bool>>;
    /// Of `repos`, those the target has nothing in at all: their blobs are put without asking
    /// `has_blob` first. An error when the target cannot tell (then every blob is asked about);
    /// by default it tells nothing.
    fn lacking<'a, 'r: 'a>(
        &'a self,
        _repos: HashSet<&'r str>,
    ) -> BoxFuture<'a, Result<HashSet<&'r str>>> {
        Box::pin(async { Ok(HashSet::new()) })
    }
    /// Makes a blob that `from` has present in `repo` without sending it.
    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
        from: &'a str,
    ) -> BoxFuture<'a, Result<MountResult>>;
    /// Stores a blob read from `src` (checked against `d` and `size` as it streams);
    /// `session` is an upload a refused mount opened.
    fn put_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
        size: u64,
        src: &'a dyn BlobSource,
        session: Option<reqwest::Url>,
    ) -> BoxFuture<'a, Result<()>>;
    /// Writes a manifest under `reference` (a digest, or the tag: the engine writes tags last,
    /// once everything beneath them is there).
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        m: &'a Manifest,
    ) -> BoxFuture<'a, Result<()>>;
}

/// `mount_blob` of a sink with one namespace (a bundle, a check): a blob put once is in every
/// repository, so it is "mounted" exactly when it was put (`put`).
pub fn mount_in_one_namespace<'a>(put: bool) -> BoxFuture<'a, Result<MountResult>> {
    Box::pin(async move {
        Ok(if put {
            MountResult::Mounted
        } else {
            MountResult::NotMounted
        })
    })
}

impl Sink for Registry {
    fn name(&self) -> &str {
        Registry::name(self)
    }

    fn has_blob<'a>(&'a self, repo: &'a str, d: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let scope = crate::registry::Scope::push(repo);
            Ok(self.blob_exists(repo, d, &scope).await?.is_some())
        })
    }

    /// The repositories its catalog (`GET /v2/_catalog`, every page) does not list. A
    /// repository that holds a blob is listed (distribution lists one as soon as a blob is
    /// uploaded into it, before any manifest). A catalog that wrongly leaves one out costs
    /// uploads of blobs it had, never a wrong image: the registry takes a blob it has again.
    fn lacking<'a, 'r: 'a>(
        &'a self,
        repos: HashSet<&'r str>,
    ) -> BoxFuture<'a, Result<HashSet<&'r str>>> {
        Box::pin(async move {
            let mut lacking = repos;
            self.catalog_each(|listed| {
                lacking.remove(listed);
            })
            .await?;
            Ok(lacking)
        })
    }

    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
        from: &'a str,
    ) -> BoxFuture<'a, Result<MountResult>> {
        Box::pin(Registry::mount_blob(self, repo, d, from))
    }

    fn put_blob<'a>(
        &'a self,
        repo: &'a str,
        d: &'a Digest,
        size: u64,
        src: &'a dyn BlobSource,
        session: Option<reqwest::Url>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.upload_blob(repo, d, size, src, session))
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        m: &'a Manifest,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Registry::put_manifest(self, repo, reference, m))
    }
}

impl Source for Arc<Bundle> {
    fn describe(&self, d: &Digest) -> Option<(u64, Arc<str>)> {
        self.manifest
            .blob(d)
            .map(|b| (b.size, b.media_type.clone()))
    }

    fn external(&self, d: &Digest) -> Option<u64> {
        self.manifest.external_blob(d).map(|x| x.size)
    }

    fn objects_hint(&self) -> usize {
        self.manifest.blobs.len() + self.manifest.external.len()
    }

    fn position(&self, d: &Digest) -> Option<usize> {
        let m = &self.manifest;
        m.blob_index(d)
            .or_else(|| m.external_index(d).map(|x| m.blobs.len() + x))
    }

    fn external_home(&self, d: &Digest) -> String {
        self.manifest
            .external_blob(d)
            .map(|x| self.manifest.base_of(x))
            .unwrap_or_default()
    }

    fn missing_externals(&self, target: &str, missing: Vec<String>) -> Error {
        let bases: Vec<String> = self
            .manifest
            .bases
            .iter()
            .map(|b| format!("{} (created {})", b.name, b.created))
            .collect();
        Error::Failed(format!(
            "{} is incremental and {} of the blobs it relies on are not in {target}; import {} \
             first. Nothing was written. Missing:\n  {}",
            self.path.display(),
            missing.len(),
            bases.join(" and "),
            missing.join("\n  ")
        ))
    }

    fn manifest<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>>> {
        let bundle = self.clone();
        let d2 = d.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || bundle.read_blob(&d2, MAX_MANIFEST_SIZE))
                .await
                .map_err(|e| Error::Failed(format!("reading manifest {d}: {e}")))?
        })
    }

    fn blob(&self, d: &Digest, reporter: &Reporter) -> Box<dyn BlobSource> {
        Box::new(BundleBlob {
            bundle: self.clone(),
            digest: d.clone(),
            progress: Progress::new(reporter),
        })
    }
}

/// Moves a progress bar with the bytes of one blob; a resume from an earlier offset takes
/// the difference back.
struct Progress {
    reporter: Reporter,
    counted: Arc<AtomicU64>,
}

impl Progress {
    fn new(reporter: &Reporter) -> Progress {
        Progress {
            reporter: reporter.clone(),
            counted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A new read starts at `offset`.
    fn restart(&self, offset: u64) {
        let before = self.counted.swap(offset, Ordering::Relaxed);
        if before > offset {
            self.reporter.dec(before - offset);
        }
    }

    fn add(&self, n: u64) {
        self.reporter.inc(n);
        self.counted.fetch_add(n, Ordering::Relaxed);
    }

    fn share(&self) -> Progress {
        Progress {
            reporter: self.reporter.clone(),
            counted: self.counted.clone(),
        }
    }
}

/// A blob of a bundle: read on a blocking thread through a small bounded channel, checked
/// against its digest as it streams, re-readable from any offset.
struct BundleBlob {
    bundle: Arc<Bundle>,
    digest: Digest,
    progress: Progress,
}

impl BlobSource for BundleBlob {
    fn open(&self, offset: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
        self.progress.restart(offset);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
        let bundle = self.bundle.clone();
        let digest = self.digest.clone();
        let progress = self.progress.share();
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
            // Chunks of 256 KiB at most and no bigger than what is left (at least a byte, for
            // the read that ends the blob and checks it): a small blob's chunk is its size,
            // not 256 KiB held until it is sent.
            let size = r.size();
            let mut pos = 0u64;
            loop {
                let left = size.saturating_sub(pos).clamp(1, 256 * 1024);
                let mut buf = vec![0u8; left as usize];
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
                        let chunk = Bytes::from(buf).slice(skip..);
                        progress.add(chunk.len() as u64);
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

/// Images resolved at their source registries (`copy`): manifests carried as the bytes that
/// were served, blobs downloaded as they are pushed.
pub struct RegistryObjects {
    /// In the order given (export's bundle order).
    objects: Vec<Object>,
    /// Where each digest is in `objects`.
    at: DigestIndex,
    clients: HashMap<String, Arc<Registry>>,
}

impl RegistryObjects {
    pub fn new(objects: Vec<Object>, clients: HashMap<String, Arc<Registry>>) -> Self {
        let at = DigestIndex::new(&objects, |o| &o.digest);
        RegistryObjects {
            objects,
            at,
            clients,
        }
    }

    /// Every object, in the order given: export's writer walks them without a copy of its own.
    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    /// Where an object is in [`objects`](Self::objects).
    pub fn position(&self, d: &Digest) -> Option<usize> {
        self.at.find(&self.objects, |o| &o.digest, d)
    }

    /// The object with digest `d`.
    pub fn get(&self, d: &Digest) -> Option<&Object> {
        self.position(d).and_then(|i| self.objects.get(i))
    }
}

impl Source for RegistryObjects {
    fn describe(&self, d: &Digest) -> Option<(u64, Arc<str>)> {
        self.get(d).map(|o| (o.size, o.media_type.clone()))
    }

    fn objects_hint(&self) -> usize {
        self.objects.len()
    }

    fn position(&self, d: &Digest) -> Option<usize> {
        RegistryObjects::position(self, d)
    }

    fn manifest<'a>(&'a self, d: &'a Digest) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            self.get(d)
                .map(Object::manifest_bytes)
                .transpose()?
                .flatten()
                .ok_or_else(|| Error::Failed(format!("manifest {d} was not resolved")))
        })
    }

    fn blob(&self, d: &Digest, reporter: &Reporter) -> Box<dyn BlobSource> {
        Box::new(RegistryBlob {
            object: self.get(d).cloned(),
            digest: d.clone(),
            clients: self.clients.clone(),
            progress: Progress::new(reporter),
        })
    }
}

/// A blob read from its source registry while it is pushed: checked against its digest and
/// size as it streams; a cut download resumes with `Range`.
struct RegistryBlob {
    object: Option<Object>,
    digest: Digest,
    clients: HashMap<String, Arc<Registry>>,
    progress: Progress,
}

impl BlobSource for RegistryBlob {
    fn open(&self, offset: u64) -> Result<BoxStream<'static, Result<Bytes>>> {
        let o = self
            .object
            .clone()
            .ok_or_else(|| Error::Failed(format!("blob {} was not resolved", self.digest)))?;
        let reg = self
            .clients
            .get(o.registry())
            .cloned()
            .ok_or_else(|| Error::Failed(format!("no client for registry {}", o.registry())))?;
        self.progress.restart(offset);
        let progress = self.progress.share();
        // The whole blob is downloaded and checked; the bytes before `offset` are only hashed.
        let body = crate::fetch::download(reg, o, offset);
        Ok(body
            .map(move |r| {
                if let Ok(b) = &r {
                    progress.add(b.len() as u64);
                }
                r
            })
            .boxed())
    }

    fn parts(&self) -> Option<Arc<dyn PartSource>> {
        let o = self.object.clone()?;
        let reg = self.clients.get(o.registry()).cloned()?;
        Some(Arc::new(RegistryParts { reg, object: o }))
    }
}

/// Ranged reads of one blob at its source registry.
struct RegistryParts {
    reg: Arc<Registry>,
    object: Object,
}

impl PartSource for RegistryParts {
    fn open_part(
        &self,
        start: u64,
        end: u64,
    ) -> BoxFuture<'static, Result<Option<BoxStream<'static, std::io::Result<Bytes>>>>> {
        let reg = self.reg.clone();
        let o = self.object.clone();
        Box::pin(async move {
            let mut budget = Budget::new(reg.retry_policy());
            let dl = reg
                .get_blob_part(o.repo(), &o.digest, start, end, &mut budget)
                .await
                .map_err(|e| e.about(&o.at_source()))?;
            Ok(dl.map(|d| d.body))
        })
    }
}
