//! `airlock export`: resolve the requested images at their source registries and write them,
//! deduplicated and verified, into one bundle. `inputs` reads what was asked (arguments, an
//! images file, an image-set file, `--since`), `sources` connects and resolves, `images`
//! sets the images aside until they are written out, `plan` shows `--plan`, `write` streams
//! the bundle out.

mod images;
mod inputs;
mod plan;
mod sources;
mod space;
mod write;

pub use inputs::{requested_images, Requested};

use crate::bundle::model::{Base, ExternalBlob, FailedImage, ImageEntry};
use crate::cli::ExportArgs;
use crate::copy::{self, Object, Resolved};
use crate::error::{Error, IoContext, Result};
use crate::options::{ExportOptions, ProcessEnv, SourceSide, Terminal};
use crate::progress::Reporter;
use images::{Collect, Images};
use inputs::{cache_dir, expand_output, load_since, validate_platform, Carried, TagsAsked};
use sources::{companions, connect_image_set, connect_sources, resolve_all};
use std::path::Path;
use std::sync::Arc;

/// What the bundle will hold.
struct Contents<I = Images> {
    /// Stored objects, in archive order.
    objects: Vec<Object>,
    /// Objects a base bundle carries.
    external: Vec<ExternalBlob>,
    bases: Vec<Base>,
    images: I,
}

/// The images and every object they need, once each (what `copy` pushes).
pub(crate) fn images_and_objects(
    resolved: Vec<(Requested, Resolved)>,
) -> Result<(Vec<Arc<ImageEntry>>, Vec<Object>)> {
    let n = resolved.len();
    let c = assemble(resolved, &Carried::default(), Vec::with_capacity(n))?;
    Ok((c.images, c.objects))
}

/// Every object once, less what a base bundle already carried (manifests always travel).
///
/// The resolved images are taken apart as the bundle's lists are built, so that the largest
/// lists an export holds are never held twice: a first pass marks which objects are met
/// first (borrowing their digests), the second moves those into the list of objects and
/// frees each image's own list as it goes.
fn assemble<I: Collect>(
    resolved: Vec<(Requested, Resolved)>,
    carried: &Carried,
    mut images: I,
) -> Result<Contents<I>> {
    let first_met = copy::first_met(resolved.iter().map(|(_, r)| r));
    let carried_by = |o: &Object| {
        carried
            .by
            .get(&o.digest)
            .filter(|(_, size)| *size == o.size && !crate::manifest::is_manifest(&o.media_type))
            .map(|(bundle, _)| bundle)
    };
    let stored = resolved
        .iter()
        .flat_map(|(_, r)| &r.objects)
        .zip(&first_met)
        .filter(|(o, first)| **first && carried_by(o).is_none())
        .count();
    let mut objects = Vec::with_capacity(stored);
    let mut external = Vec::new();
    let mut first = first_met.into_iter();
    for (req, r) in crate::memory::Dwindling::new(resolved) {
        let Requested {
            reference,
            namespace,
            path,
            subject,
            ..
        } = req;
        let Resolved {
            digest,
            media_type,
            source_digest,
            platforms,
            objects: own,
            ..
        } = r;
        let size = own.iter().map(|o| o.size).sum();
        let blobs = own.iter().map(|o| o.digest.clone()).collect();
        images.add(ImageEntry {
            source: reference.to_string().into(),
            registry: crate::shared::shared(&reference.registry),
            namespace: namespace.into(),
            path: path.into(),
            tag: reference.tag.unwrap_or_default().into(),
            digest,
            source_digest,
            subject,
            media_type,
            platforms: platforms.into(),
            size,
            blobs,
        })?;
        for o in own {
            if first.next() != Some(true) {
                continue;
            }
            match carried_by(&o) {
                Some(bundle) => external.push(ExternalBlob {
                    digest: o.digest.clone(),
                    size: o.size,
                    media_type: o.media_type.to_string(),
                    bundle: bundle.clone(),
                }),
                None => objects.push(o),
            }
        }
    }
    let mut bases: Vec<Base> = Vec::new();
    for x in &external {
        if !bases.iter().any(|b| b.bundle_json == x.bundle) {
            if let Some(b) = carried.bases.get(&x.bundle) {
                bases.push(b.clone());
            }
        }
    }
    Ok(Contents {
        objects,
        external,
        bases,
        images,
    })
}

/// The exit for work done in part: the images that could not be exported, named.
pub(crate) fn partial(failed: &[FailedImage], what: String) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = failed
        .iter()
        .map(|f| format!("  {}: {}", f.source, f.error))
        .collect();
    Err(Error::Partial(format!("{what}:\n{}", lines.join("\n"))))
}

/// The images asked for, resolved at their sources (with their companions unless
/// `--no-referrers`), and the clients of the source registries: what export writes and
/// what copy pushes.
pub(crate) struct Selection {
    pub resolved: Vec<(Requested, Resolved)>,
    pub failed: Vec<FailedImage>,
    pub clients: std::collections::HashMap<String, std::sync::Arc<crate::registry::Registry>>,
    /// The platform filter in force (`--platform`, or the image-set file's).
    pub platforms: Vec<String>,
    /// The tags asked for (for `{tag}` in `-o`).
    pub tags: TagsAsked,
}

/// Has every client keep its manifests in `dir`, when given.
fn keep_manifests(
    clients: &std::collections::HashMap<String, Arc<crate::registry::Registry>>,
    dir: Option<&Path>,
) {
    if let Some(dir) = dir {
        for reg in clients.values() {
            reg.cache_manifests_in(dir.to_path_buf());
        }
    }
}

/// Connects to the source registries and resolves every image before anything is written:
/// an unknown image fails here (or, with `--keep-going`, is left out and named). With
/// `manifest_cache` (export's cache), manifests are kept there and read back by digest.
pub(crate) async fn select(
    args: &ExportArgs,
    source: &SourceSide,
    image_set: Option<&crate::imageset::ImageSet>,
    cli_requested: Vec<Requested>,
    manifest_cache: Option<&Path>,
    reporter: &Reporter,
) -> Result<Selection> {
    let jobs = args.out.jobs as usize;
    // Tag lists are read once per repository in this run (image-set rules and signatures).
    let tag_lists = crate::imageset::TagLists::default();
    // `--platform` replaces the file's global list; an image's own list still wins.
    let with_cli_platforms;
    let image_set = match image_set {
        Some(set) if !args.platform.is_empty() => {
            with_cli_platforms = set.with_platforms(args.platform.clone());
            Some(&with_cli_platforms)
        }
        other => other,
    };
    let (mut requested, clients, set_platforms) = match image_set {
        Some(set) => {
            let clients = connect_image_set(args, source, set).await?;
            keep_manifests(&clients, manifest_cache);
            let selected = set.select_with(&clients, &tag_lists).await?;
            let requested: Vec<Requested> = selected
                .into_iter()
                .map(|s| Requested {
                    reference: s.reference,
                    namespace: s.namespace,
                    path: s.path,
                    platforms: Some(s.platforms),
                    subject: None,
                    prefetched: None,
                })
                .collect();
            (requested, clients, set.platforms.clone())
        }
        None => {
            let clients = connect_sources(args, source, &cli_requested).await?;
            keep_manifests(&clients, manifest_cache);
            (cli_requested, clients, Vec::new())
        }
    };
    for p in requested.iter().flat_map(|r| r.platforms.iter().flatten()) {
        validate_platform(p)?;
    }
    let tags = TagsAsked::of(requested.iter().filter_map(|r| r.reference.tag.as_deref()));
    let global_platforms = if args.platform.is_empty() {
        set_platforms
    } else {
        args.platform.clone()
    };
    let (mut resolved, failed) = resolve_all(
        std::mem::take(&mut requested),
        &clients,
        &global_platforms,
        jobs,
        args.keep_going,
        reporter,
    )
    .await?;
    if resolved.is_empty() {
        return Err(Error::Failed(
            "no image could be resolved; nothing to do".into(),
        ));
    }
    if !args.no_referrers {
        let extra = companions(&resolved, &clients, &tag_lists, jobs, reporter).await?;
        if !extra.is_empty() {
            let (more, more_failed) =
                resolve_all(extra, &clients, &[], jobs, true, reporter).await?;
            for f in more_failed {
                reporter.warn(format!("could not carry {}: {}", f.source, f.error));
            }
            resolved.extend(more);
        }
    }
    Ok(Selection {
        resolved,
        failed,
        clients,
        platforms: global_platforms,
        tags,
    })
}

/// What was asked for, read and checked before any network work: an image-set file (its tags
/// are listed once connected), or the names given as arguments or in `-f`.
pub(crate) fn inputs(
    args: &ExportArgs,
    source: &SourceSide,
) -> Result<(Option<crate::imageset::ImageSet>, Vec<Requested>)> {
    match &args.config {
        Some(path) => {
            if !args.images.is_empty() || args.images_file.is_some() {
                return Err(Error::Usage(
                    "give the images either in --config or as arguments/--images-file, not both"
                        .into(),
                ));
            }
            Ok((Some(crate::imageset::load(path)?), Vec::new()))
        }
        None => Ok((None, requested_images(args, source, &Terminal)?)),
    }
}

pub async fn run(args: ExportArgs) -> Result<()> {
    // The image list from the command line is read (and checked) before any network work;
    // an image-set file is loaded now and its tags are listed once connected.
    let source = ExportOptions::source(&args, &ProcessEnv);
    let (image_set, cli_requested) = inputs(&args, &source)?;
    let signer = if args.plan {
        None
    } else {
        args.sign
            .as_deref()
            .map(crate::signing::Signer::load)
            .transpose()?
    };
    let opts = ExportOptions::resolve(&args, source, &ProcessEnv)?;
    let (split, mtime) = (opts.split_size, opts.mtime);
    for p in &args.platform {
        validate_platform(p)?;
    }
    // Checked now so a bad -o fails before any network work; {tag} is filled in later.
    check_output(&args.output)?;
    let carried = match &args.since {
        Some(p) => load_since(p)?,
        None => Carried::default(),
    };
    let cache = cache_dir(&args)?;
    for sub in ["blobs/sha256", "tmp"] {
        std::fs::create_dir_all(cache.join(sub))
            .ctx(|| format!("creating cache directory {}", cache.join(sub).display()))?;
    }
    // Held to the end of the export: `cache prune` waits for it.
    let _cache_lock = crate::cache::lock(&cache, false)?;
    let reporter = Reporter::new(args.out.quiet || args.out.json, args.out.verbose);
    // What killed runs (SIGKILL, power loss) left half-written in the cache.
    let stale = crate::fetch::clean_stale_temps(&cache.join("tmp"));
    if stale > 0 {
        reporter.detail(format!(
            "removed {} that interrupted runs left in {}",
            crate::units::count(stale as u64, "temporary file", "temporary files"),
            cache.join("tmp").display()
        ));
    }
    let jobs = opts.transfer.jobs;
    let Selection {
        resolved,
        failed,
        clients,
        platforms: global_platforms,
        tags,
    } = select(
        &args,
        &opts.source,
        image_set.as_ref(),
        cli_requested,
        Some(&cache),
        &reporter,
    )
    .await?;
    let out = expand_output(&args.output, mtime, &tags)?;
    check_output(&out)?;
    let root_sizes: Vec<u64> = resolved.iter().map(|(_, r)| r.size).collect();
    let n = resolved.len();
    let contents = assemble(resolved, &carried, Images::with_capacity(n))?;
    drop(carried);
    crate::memory::give_back();
    if args.plan {
        plan::show(&contents, &failed, &cache, &out, args.out.json)?;
        return partial(
            &failed,
            format!(
                "{} could not be resolved",
                crate::units::count(failed.len() as u64, "image", "images")
            ),
        );
    }
    // Before the first download: will it all fit?
    space::check(&contents, &out, &cache, args.cache_all)?;
    let job = write::Job {
        out: out.clone(),
        split,
        mtime,
        platforms: global_platforms,
        signer,
        clients,
        cache,
        jobs,
        json: args.out.json,
        cache_all: args.cache_all,
    };
    let written = write::write(job, contents, &root_sizes, failed, reporter).await?;
    partial(
        &written.failed,
        format!(
            "{} holds {}; {} could not be exported",
            out.display(),
            crate::units::count(written.images as u64, "image", "images"),
            written.failed.len()
        ),
    )
}

/// Refuses an output path that cannot become the bundle, before any network work: one in a
/// directory that does not exist, or one that names a directory (the rename at the very end
/// of a long export would fail). Parts of `out` with a `{date}` or `{tag}` still to fill in
/// are left for the check after they are.
fn check_output(out: &Path) -> Result<()> {
    let unfilled = |p: &Path| p.to_string_lossy().contains('{');
    let names_dir = out.is_dir() || out.to_string_lossy().ends_with('/');
    if names_dir && !unfilled(out) {
        return Err(Error::Usage(format!(
            "-o {} is a directory: give the bundle's file name, e.g. {}",
            out.display(),
            out.join("bundle.tar.zst").display()
        )));
    }
    if let Some(parent) = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !unfilled(p))
    {
        if !parent.is_dir() {
            return Err(Error::Usage(format!(
                "output directory {} does not exist",
                parent.display()
            )));
        }
    }
    Ok(())
}
