//! `verify`'s sink for the copy engine: it stores nothing and checks what it is given. A
//! blob is read to its end (the pass checks its digest as it goes); a manifest must name
//! only children the bundle holds with the size it declares, or that an earlier bundle is
//! declared to carry; a tag is accepted only once its manifest passed.

use crate::bundle::Bundle;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest;
use crate::registry::{BlobSource, Manifest, MountResult};
use crate::store::Sink;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// A manifest's state in [`CheckSink`].
const UNCHECKED: u8 = 0;
const SOUND: u8 = 1;
const FAULTY: u8 = 2;

pub struct CheckSink {
    bundle: Arc<Bundle>,
    name: String,
    /// Which of the bundle's blobs (by position in `bundle.json`) were read to their end
    /// with the right digest.
    checked: Vec<AtomicBool>,
    /// Which of the bundle's blobs were checked as manifests (by position in `bundle.json`):
    /// [`UNCHECKED`], [`SOUND`] or [`FAULTY`]. A byte a blob, not a map of digests.
    manifests: Vec<AtomicU8>,
    /// Why each faulty manifest is faulty, and the verdict on manifests the bundle does not
    /// hold (both rare).
    faults: Mutex<HashMap<Digest, String>>,
    /// What was found wrong, each once.
    errors: Mutex<BTreeSet<String>>,
}

impl CheckSink {
    pub fn new(bundle: Arc<Bundle>) -> CheckSink {
        CheckSink {
            name: bundle.path.display().to_string(),
            checked: (0..bundle.manifest.blobs.len())
                .map(|_| AtomicBool::new(false))
                .collect(),
            manifests: (0..bundle.manifest.blobs.len())
                .map(|_| AtomicU8::new(UNCHECKED))
                .collect(),
            bundle,
            faults: Mutex::default(),
            errors: Mutex::default(),
        }
    }

    /// Blob `d`'s entry in a list kept per bundle blob (`checked`, `manifests`).
    fn slot<'a, T>(&self, per_blob: &'a [T], d: &Digest) -> Option<&'a T> {
        self.bundle
            .manifest
            .blob_index(d)
            .and_then(|i| per_blob.get(i))
    }

    /// The verdict on manifest `d`, when it was checked already.
    fn verdict(&self, d: &Digest) -> Option<std::result::Result<(), String>> {
        let state = self
            .slot(&self.manifests, d)
            .map(|s| s.load(Ordering::Acquire));
        match state {
            Some(SOUND) => Some(Ok(())),
            Some(UNCHECKED) => None,
            // Faulty, or not in the bundle: the reason is kept.
            _ => self
                .faults
                .lock()
                .ok()
                .and_then(|f| f.get(d).cloned())
                .map(Err),
        }
    }

    /// Whether manifest `d` was checked already.
    pub fn checked_manifest(&self, d: &Digest) -> bool {
        self.verdict(d).is_some()
    }

    /// Checks a manifest's children against the bundle (once per manifest).
    pub fn check_manifest(&self, d: &Digest, bytes: &[u8]) -> std::result::Result<(), String> {
        if let Some(v) = self.verdict(d) {
            return v;
        }
        let m = &self.bundle.manifest;
        let mut problems = Vec::new();
        match m.blob(d) {
            None => problems.push(format!("manifest {d} is not in the bundle")),
            Some(b) => match manifest::children(bytes, &b.media_type, &format!("manifest {d}")) {
                Ok(children) => {
                    for c in children {
                        match m.blob(&c.digest) {
                            Some(cb) if cb.size == c.size => {}
                            Some(cb) => problems.push(format!(
                                "manifest {d}: child {} is {} bytes in the bundle, {} in the \
                                 manifest",
                                c.digest, cb.size, c.size
                            )),
                            None => match m.external_blob(&c.digest) {
                                // Declared as carried by a base bundle: accepted as declared.
                                Some(x) if x.size == c.size => {}
                                _ => problems.push(format!(
                                    "manifest {d}: child {} is not in the bundle",
                                    c.digest
                                )),
                            },
                        }
                    }
                }
                Err(e) => problems.push(e.to_string()),
            },
        }
        let verdict = if problems.is_empty() {
            Ok(())
        } else {
            if let Ok(mut e) = self.errors.lock() {
                e.extend(problems.iter().cloned());
            }
            Err(problems.join("; "))
        };
        // The reason first, then the state that sends readers to it.
        if let Err(why) = &verdict {
            if let Ok(mut f) = self.faults.lock() {
                f.insert(d.clone(), why.clone());
            }
        }
        if let Some(slot) = self.slot(&self.manifests, d) {
            let state = if verdict.is_ok() { SOUND } else { FAULTY };
            slot.store(state, Ordering::Release);
        }
        verdict
    }

    /// What was found wrong, sorted.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Sink for CheckSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn has_blob<'a>(&'a self, _repo: &'a str, d: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        // An incremental bundle's blobs that a base carries are taken as declared.
        let declared = !self.bundle.holds(d) && self.bundle.manifest.external_blob(d).is_some();
        Box::pin(async move { Ok(declared) })
    }

    fn mount_blob<'a>(
        &'a self,
        _repo: &'a str,
        d: &'a Digest,
        _from: &'a str,
    ) -> BoxFuture<'a, Result<MountResult>> {
        // A bundle has one namespace: a blob checked once is checked for every image.
        let there = self
            .slot(&self.checked, d)
            .is_some_and(|c| c.load(Ordering::Acquire));
        crate::store::mount_in_one_namespace(there)
    }

    fn put_blob<'a>(
        &'a self,
        _repo: &'a str,
        d: &'a Digest,
        size: u64,
        src: &'a dyn BlobSource,
        _session: Option<reqwest::Url>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut body = src.open(0)?;
            let mut seen = 0u64;
            while let Some(chunk) = body.next().await {
                seen += chunk?.len() as u64;
            }
            if seen != size {
                return Err(Error::Integrity {
                    what: format!("blob {d}"),
                    detail: format!("{seen} bytes read, {size} declared"),
                });
            }
            if let Some(c) = self.slot(&self.checked, d) {
                c.store(true, Ordering::Release);
            }
            Ok(())
        })
    }

    fn put_manifest<'a>(
        &'a self,
        _repo: &'a str,
        _reference: &'a str,
        m: &'a Manifest,
    ) -> BoxFuture<'a, Result<()>> {
        let verdict = self.check_manifest(&m.digest, &m.bytes);
        Box::pin(async move { verdict.map_err(Error::Failed) })
    }
}
