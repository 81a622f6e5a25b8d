//! `airlock inspect`: what a bundle holds, from `bundle.json` and the seek table alone;
//! `-v` adds every blob, `-q` prints nothing (the bundle opened: exit 0).

use crate::bundle::Bundle;
use crate::cli::InspectArgs;
use crate::error::{Error, Result};
use crate::progress::{human, write_image_table};
use std::io::Write;

pub fn run(args: InspectArgs) -> Result<()> {
    let b = Bundle::open_index(&args.bundle)?;
    if args.quiet {
        // Opening it was the check: errors above, nothing to say otherwise.
        return Ok(());
    }
    let m = &b.manifest;
    let mut out = std::io::stdout().lock();
    let w = |e: std::io::Error| Error::io("writing to stdout", e);
    if args.json {
        /// The report, written out as it is serialised (never built whole in memory: the
        /// manifest of a 100,000-blob bundle is tens of MiB of JSON).
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Report<'a> {
            bundle: String,
            volumes: Vec<String>,
            compressed_size: u64,
            frames: u32,
            manifest: &'a crate::bundle::model::BundleManifest,
        }
        let report = Report {
            bundle: b.path.display().to_string(),
            volumes: b.volumes.iter().map(|v| v.display().to_string()).collect(),
            compressed_size: b.compressed_size(),
            frames: b.seek_table().num_frames(),
            manifest: m,
        };
        let mut buffered = std::io::BufWriter::new(&mut out);
        serde_json::to_writer_pretty(&mut buffered, &report)
            .map_err(|e| Error::Failed(format!("writing to stdout: {e}")))?;
        writeln!(buffered).map_err(w)?;
        buffered.flush().map_err(w)?;
        return Ok(());
    }
    writeln!(out, "bundle   {}", b.path.display()).map_err(w)?;
    writeln!(out, "created  {} by {}", m.created, m.tool).map_err(w)?;
    if b.volumes.len() > 1 {
        writeln!(out, "volumes  {}", b.volumes.len()).map_err(w)?;
    }
    if !m.platforms.is_empty() {
        writeln!(out, "platforms kept  {}", m.platforms.join(", ")).map_err(w)?;
    }
    writeln!(out).map_err(w)?;
    let shown = crate::bundle::model::select_images(&m.images, &args.image);
    if !args.image.is_empty() && shown.is_empty() {
        return Err(Error::Usage(format!(
            "no image of {} matches --image {}",
            b.path.display(),
            args.image.join(", ")
        )));
    }
    let width = write_image_table(
        &mut out,
        shown.iter().map(|i| -> &crate::bundle::ImageEntry { i }),
    )
    .map_err(w)?;
    for f in &m.failed {
        writeln!(out, "{:width$}  NOT EXPORTED: {}", f.source, f.error).map_err(w)?;
    }
    let signatures = m.images.iter().filter(|i| i.subject.is_some()).count();
    if signatures > 0 {
        writeln!(
            out,
            "({signatures} of these are signatures or attestations of the others)"
        )
        .map_err(w)?;
    }
    if !m.external.is_empty() {
        // Sizes a bundle.json states, unchecked here: added without wrapping.
        let size = m
            .external
            .iter()
            .fold(0u64, |a, x| a.saturating_add(x.size));
        writeln!(
            out,
            "\nincremental: {} blobs ({}) are not in this bundle; import these first:",
            m.external.len(),
            human(size)
        )
        .map_err(w)?;
        for b in &m.bases {
            writeln!(
                out,
                "  {} (created {}, bundle.json {})",
                b.name, b.created, b.bundle_json
            )
            .map_err(w)?;
        }
    }
    if args.verbose {
        writeln!(out, "\nblobs:").map_err(w)?;
        for blob in &m.blobs {
            writeln!(
                out,
                "  {} {:>10} {}",
                blob.digest,
                human(blob.size),
                blob.media_type
            )
            .map_err(w)?;
        }
    }
    let sum_images = m.images.iter().fold(0u64, |a, i| a.saturating_add(i.size));
    writeln!(out).map_err(w)?;
    writeln!(
        out,
        "{}, {}, {} ({} before deduplication), {} compressed",
        crate::units::count(m.images.len() as u64, "image", "images"),
        crate::units::count(m.blobs.len() as u64, "unique blob", "unique blobs"),
        human(m.total_size),
        human(sum_images),
        human(b.compressed_size())
    )
    .map_err(w)?;
    Ok(())
}
