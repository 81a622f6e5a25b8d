//! Writing the bundle: `bundle.json` (and its signature), the layout, then every object in
//! bundle order, taken from the cache or streamed from the registry.

use super::inputs::rfc3339;
use super::Contents;
use crate::bundle::model::{BlobEntry, BundleManifest, FailedImage, ImageEntry, Layout, Member};
use crate::bundle::{
    BundleWriter, SideFile, BUNDLE_JSON, INDEX_JSON, OCI_LAYOUT, OCI_LAYOUT_CONTENT,
};
use crate::digest::{Digest, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::fetch::{self, Source, Supply};
use crate::progress::{human, Reporter};
use crate::registry::Registry;
use crate::signing::Signer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The settings of one bundle write.
pub(super) struct Job {
    pub out: PathBuf,
    pub split: Option<u64>,
    pub mtime: u64,
    /// The global platform filter, recorded in bundle.json.
    pub platforms: Vec<String>,
    pub signer: Option<Signer>,
    pub clients: HashMap<String, Arc<Registry>>,
    pub cache: PathBuf,
    pub jobs: usize,
    pub json: bool,
    /// Send every blob through the cache (`--cache-all`).
    pub cache_all: bool,
}

/// `index.json`: every image's root manifest, named by its full source reference.
fn build_index_json(images: &[ImageEntry], root_sizes: &[u64]) -> Result<Vec<u8>> {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .zip(root_sizes)
        .map(|(img, size)| {
            serde_json::json!({
                "mediaType": img.media_type,
                "digest": img.digest,
                "size": size,
                "annotations": {
                    "org.opencontainers.image.ref.name": img.source,
                    "io.containerd.image.name": img.source,
                }
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::manifest::OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec_pretty(&index).map_err(|e| Error::Failed(format!("index.json: {e}")))
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    bundle: String,
    files: Vec<String>,
    images: Vec<SummaryImage>,
    blobs: usize,
    total_size: u64,
    compressed_size: u64,
    downloaded_bytes: u64,
    cached_bytes: u64,
    /// What the cache holds after this export.
    cache_size: u64,
    cache_entries: usize,
    external_blobs: usize,
    external_size: u64,
    failed: Vec<FailedImage>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryImage {
    source: String,
    digest: String,
    platforms: Vec<String>,
    size: u64,
}

/// Writes the bundle and returns its bundle.json.
pub(super) async fn write(
    job: Job,
    contents: Contents,
    root_sizes: &[u64],
    failed: Vec<FailedImage>,
    mut reporter: Reporter,
) -> Result<BundleManifest> {
    let Job {
        out,
        split,
        mtime,
        platforms,
        signer,
        clients,
        cache,
        jobs,
        json,
        cache_all,
    } = job;
    let Contents {
        objects,
        external,
        bases,
        images,
    } = contents;
    let total_size: u64 = objects.iter().map(|o| o.size).sum();
    let index_json = build_index_json(&images, root_sizes)?;
    let blobs: Vec<BlobEntry> = objects
        .iter()
        .map(|o| BlobEntry {
            digest: o.digest.clone(),
            size: o.size,
            media_type: o.media_type.clone(),
        })
        .collect();
    let manifest = BundleManifest {
        format: crate::bundle::model::FORMAT.into(),
        format_version: crate::bundle::model::FORMAT_VERSION,
        tool: format!("airlock {}", env!("CARGO_PKG_VERSION")),
        created: rfc3339(mtime),
        platforms,
        images,
        blobs,
        total_size,
        layout: Layout {
            oci_layout: Member {
                digest: Digest::of(OCI_LAYOUT_CONTENT),
                size: OCI_LAYOUT_CONTENT.len() as u64,
            },
            index: Member {
                digest: Digest::of(&index_json),
                size: index_json.len() as u64,
            },
        },
        external,
        bases,
        failed,
    };
    manifest.validate(&out)?;
    let bundle_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Failed(format!("bundle.json: {e}")))?;
    // The signature is written beside the bundle and renamed into place with it; an unsigned
    // export removes a stale one, but only once the new bundle is in place, so that a failed
    // export leaves the previous bundle, its checksums and its signature as they were.
    let sig_path = crate::signing::signature_path(&out);
    let sig_partial = PathBuf::from(format!("{}.partial", sig_path.display()));
    let side = match &signer {
        Some(s) => {
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sig = s.sign(
                &bundle_json,
                &format!("airlock bundle {name} created {}", manifest.created),
            )?;
            crate::cleanup::write(&sig_partial, sig.as_bytes())
                .ctx(|| format!("writing {}", sig_partial.display()))?;
            SideFile::Replace {
                partial: sig_partial.clone(),
                dest: sig_path.clone(),
            }
        }
        None => SideFile::Remove(sig_path.clone()),
    };

    // Small blobs are fetched ahead into the cache by --jobs workers; the writer takes blobs
    // in bundle order and streams the ones nobody fetched yet straight into the bundle.
    let supply = Supply::new(&objects, clients.clone(), &cache, jobs, cache_all);
    struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for t in &self.0 {
                t.abort();
            }
        }
    }
    let _guard = AbortOnDrop(supply.start_prefetch(jobs));

    reporter.start_bar(total_size, "writing bundle");
    let bar = reporter.clone();
    let out2 = out.clone();
    let supply2 = supply.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<(Vec<PathBuf>, u64, u64)> {
        let supply = supply2;
        let result = (|| {
            let mut w = BundleWriter::create(&out2, split, mtime)?;
            w.append(BUNDLE_JSON, bundle_json.len() as u64, &mut &bundle_json[..])?;
            w.append(
                OCI_LAYOUT,
                OCI_LAYOUT_CONTENT.len() as u64,
                &mut &OCI_LAYOUT_CONTENT[..],
            )?;
            w.append(INDEX_JSON, index_json.len() as u64, &mut &index_json[..])?;
            let (mut downloaded, mut cached) = (0u64, 0u64);
            for o in &objects {
                let name = o.digest.layout_path();
                if let Some(bytes) = &o.inline {
                    let mut r = VerifyingReader::new(&bytes[..], &o.digest, o.size);
                    w.append(&name, o.size, &mut r)?;
                    bar.inc(o.size);
                    continue;
                }
                let source = supply.take(o)?;
                let cached_file = match &source {
                    Source::Cached { path, hit } => {
                        if *hit {
                            cached += o.size;
                        } else {
                            downloaded += o.size;
                        }
                        Some(path.clone())
                    }
                    Source::Stream(_) => {
                        downloaded += o.size;
                        None
                    }
                };
                let mut r = crate::progress::Counting::new(fetch::open(source, o)?, bar.clone());
                if let Err(e) = w.append(&name, o.size, &mut r) {
                    // A damaged cache entry must not poison the next run.
                    if let Some(p) = cached_file {
                        let _ = std::fs::remove_file(&p);
                    }
                    return Err(e);
                }
            }
            let files = w.finish_with(std::slice::from_ref(&side))?;
            Ok((files, downloaded, cached))
        })();
        supply.finish();
        result
    });
    let written = writer
        .await
        .map_err(|e| Error::Failed(format!("bundle writer: {e}")))
        .and_then(|r| r);
    let (files, downloaded, cached) = match written {
        Ok(w) => w,
        Err(e) => {
            crate::cleanup::remove(&sig_partial);
            return Err(e);
        }
    };
    reporter.finish_bar();
    let compressed: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    // How big the cache has grown (`airlock cache prune` trims it).
    let cache_now = crate::cache::summary(&cache).unwrap_or_default();
    reporter.info(format!(
        "wrote {} ({} images, {} blobs, {} in {} on disk; downloaded {}, {} from cache; the \
         cache {} holds {} in {} entries)",
        out.display(),
        manifest.images.len(),
        manifest.blobs.len(),
        human(total_size),
        human(compressed),
        human(downloaded),
        human(cached),
        cache.display(),
        human(cache_now.bytes),
        cache_now.entries
    ));
    if json {
        let summary = Summary {
            bundle: out.display().to_string(),
            files: files.iter().map(|f| f.display().to_string()).collect(),
            images: manifest
                .images
                .iter()
                .map(|i| SummaryImage {
                    source: i.source.clone(),
                    digest: i.digest.to_string(),
                    platforms: i.platforms.clone(),
                    size: i.size,
                })
                .collect(),
            blobs: manifest.blobs.len(),
            total_size,
            compressed_size: compressed,
            downloaded_bytes: downloaded,
            cached_bytes: cached,
            cache_size: cache_now.bytes,
            cache_entries: cache_now.entries,
            external_blobs: manifest.external.len(),
            external_size: manifest.external.iter().map(|x| x.size).sum(),
            failed: manifest.failed.clone(),
        };
        crate::progress::print_json(&summary)?;
    }
    Ok(manifest)
}
