//! `export --plan`: what would be exported, with sizes, and nothing written.

use super::Contents;
use crate::bundle::model::{FailedImage, ImageEntry};
use crate::error::{Error, Result};
use crate::fetch;
use crate::progress::human;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanImage {
    source: String,
    digest: String,
    platforms: Vec<String>,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Plan {
    images: Vec<PlanImage>,
    failed: Vec<FailedImage>,
    blobs: usize,
    /// Bytes the bundle will carry (deduplicated, before compression).
    bundle_size: u64,
    /// Bytes left out because a base bundle carries them.
    external_size: u64,
    external_blobs: usize,
    /// Bytes already in the cache.
    cached_size: u64,
}

fn print_plan(plan: &Plan, images: &[Arc<ImageEntry>], out: &Path, json: bool) -> Result<()> {
    if json {
        return crate::progress::print_json(plan);
    }
    let mut stdout = std::io::stdout().lock();
    let w = |e: std::io::Error| Error::io("writing to stdout", e);
    let width = crate::progress::write_image_table(
        &mut stdout,
        images.iter().map(|i| -> &ImageEntry { i }),
    )
    .map_err(w)?;
    for f in &plan.failed {
        writeln!(stdout, "{:width$}  FAILED: {}", f.source, f.error).map_err(w)?;
    }
    writeln!(stdout).map_err(w)?;
    writeln!(
        stdout,
        "{} would get {}, {}, {} before compression ({} already in the cache)",
        out.display(),
        crate::units::count(plan.images.len() as u64, "image", "images"),
        crate::units::count(plan.blobs as u64, "blob", "blobs"),
        human(plan.bundle_size),
        human(plan.cached_size)
    )
    .map_err(w)?;
    if plan.external_blobs > 0 {
        writeln!(
            stdout,
            "left out: {} blobs, {}, carried by earlier bundles",
            plan.external_blobs,
            human(plan.external_size)
        )
        .map_err(w)?;
    }
    Ok(())
}

/// Prints the plan: every image, what the bundle would carry, what is cached, what a base
/// bundle carries.
pub(super) fn show(
    contents: &Contents,
    failed: &[FailedImage],
    cache: &Path,
    out: &Path,
    json: bool,
) -> Result<()> {
    let cached_size = contents
        .objects
        .iter()
        .filter(|o| o.inline.is_none())
        .filter(|o| {
            std::fs::metadata(fetch::cache_path(cache, &o.digest))
                .map(|m| m.len() == o.size)
                .unwrap_or(false)
        })
        .map(|o| o.size)
        .sum();
    // A preview, written once: the images are read back and held.
    let images = contents.images.held()?;
    let plan = Plan {
        images: images
            .iter()
            .map(|i| PlanImage {
                source: i.source.to_string(),
                digest: i.digest.to_string(),
                platforms: i.platforms.to_vec(),
                size: i.size,
                subject: i.subject.as_ref().map(|d| d.to_string()),
            })
            .collect(),
        failed: failed.to_vec(),
        blobs: contents.objects.len(),
        bundle_size: contents.objects.iter().map(|o| o.size).sum(),
        external_size: contents.external.iter().map(|x| x.size).sum(),
        external_blobs: contents.external.len(),
        cached_size,
    };
    print_plan(&plan, &images, out, json)
}
