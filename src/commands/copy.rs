//! `airlock copy`: the origin procedure's pull-and-push in one step, registry to registry,
//! with export's source options and import's target options (`--to-…`): images resolved at
//! the source as export resolves them, pushed as import pushes them (same digests, skip what
//! exists, mount, every byte checked, tags last). Nothing is written to local disk.

use crate::cli::{CopyArgs, ExportArgs};
use crate::commands::export::{images_and_objects, inputs, partial, select};
use crate::commands::import::{finish, note_body_limit, plan_targets};
use crate::error::Result;
use crate::options::{CopyOptions, ProcessEnv, Terminal};
use crate::progress::{human, Reporter};
use crate::store::RegistryObjects;
use std::sync::Arc;

/// Export's view of the source side of `copy`.
fn source_args(args: &CopyArgs) -> ExportArgs {
    ExportArgs {
        images: args.images.clone(),
        config: args.config.clone(),
        images_file: args.images_file.clone(),
        output: std::path::PathBuf::new(),
        platform: args.platform.clone(),
        split_size: None,
        cache_dir: None,
        cache_all: false,
        since: None,
        plan: args.plan,
        keep_going: args.keep_going,
        no_referrers: args.no_referrers,
        sign: None,
        registry: args.registry.clone(),
        out: args.out.clone(),
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanLine {
    source: String,
    target: String,
    digest: String,
    size: u64,
}

pub async fn run(args: CopyArgs) -> Result<()> {
    let opts = CopyOptions::resolve(&args, &ProcessEnv, &Terminal)?;
    let (registry, repository, tag) = (
        opts.target.registry.clone(),
        opts.target.repository.clone(),
        opts.target.tag.clone(),
    );
    let src = source_args(&args);
    let (image_set, cli_requested) = inputs(&src, &opts.source)?;
    let mut reporter = Reporter::new(args.out.quiet || args.out.json, args.out.verbose);
    // One step, nothing kept: copy has no cache.
    let mut sel = select(
        &src,
        &opts.source,
        image_set.as_ref(),
        cli_requested,
        None,
        &reporter,
    )
    .await?;
    let (images, objects) = images_and_objects(std::mem::take(&mut sel.resolved))?;
    let targets = plan_targets(images, repository.as_deref(), tag.as_deref())?;
    let total: u64 = objects.iter().map(|o| o.size).sum();
    if args.plan {
        let lines: Vec<PlanLine> = targets
            .iter()
            .map(|t| PlanLine {
                source: t.entry.source.to_string(),
                target: t.name(&registry),
                digest: t.entry.digest.to_string(),
                size: t.entry.size,
            })
            .collect();
        if args.out.json {
            crate::progress::print_json(&serde_json::json!({
                "images": lines,
                "objects": objects.len(),
                "totalSize": total,
                "failed": sel.failed,
            }))?;
        } else {
            for l in &lines {
                println!(
                    "{} -> {}  {}  {}",
                    l.source,
                    l.target,
                    &l.digest,
                    human(l.size)
                );
            }
            println!(
                "{}, {}, {} (nothing was copied)",
                crate::units::count(lines.len() as u64, "image", "images"),
                crate::units::count(objects.len() as u64, "object", "objects"),
                human(total)
            );
        }
        return partial(
            &sel.failed,
            format!(
                "{} could not be resolved",
                crate::units::count(sel.failed.len() as u64, "image", "images")
            ),
        );
    }
    let creds = opts.target.login.credentials(&registry, &Terminal)?;
    let target = crate::credentials::connect(
        &registry,
        &opts.target.tls,
        creds,
        opts.transfer.retry.clone(),
    )
    .await?;
    reporter.info(format!(
        "copying {} ({}) into {registry}",
        crate::units::count(targets.len() as u64, "image", "images"),
        human(total)
    ));
    reporter.start_bar(total, "copying");
    let source = Arc::new(RegistryObjects::new(objects, sel.clients));
    let target = Arc::new(target);
    let report = crate::copy::push(
        source,
        target.clone(),
        targets,
        args.out.jobs as usize,
        args.out.json,
        reporter.clone(),
    )
    .await;
    reporter.finish_bar();
    note_body_limit(&target, &reporter);
    finish(report?, &reporter, args.out.json, "copied")?;
    partial(
        &sel.failed,
        format!(
            "{} could not be resolved and {} not copied",
            crate::units::count(sel.failed.len() as u64, "image", "images"),
            if sel.failed.len() == 1 { "was" } else { "were" }
        ),
    )
}
