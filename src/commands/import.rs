//! `airlock import`: push every image of a bundle into the target registry under the target
//! repository and tag, byte for byte, refusing name collisions before anything is pushed.

use crate::bundle::{Bundle, ImageEntry};
use crate::cli::ImportArgs;
use crate::copy::{self, TargetImage};
use crate::error::{Error, Result};
use crate::options::{ImportOptions, ProcessEnv, Terminal};
use crate::progress::{human, Reporter};
use crate::reference::{validate_repository, validate_tag};
use std::sync::Arc;

/// Where each image goes: `--repository` replaces the namespace recorded at export (or is
/// prepended when there was none); `--tag` replaces every image's tag. Companions (signatures,
/// attestations, SBOMs and referrers indexes, which name their subject) keep their
/// `sha256-<hex of the subject>[.suffix]` tag and follow their subject into its new
/// repository. Two different images sent to one name is a usage error naming both.
pub fn plan_targets(
    images: Vec<Arc<ImageEntry>>,
    repository: Option<&str>,
    tag: Option<&str>,
) -> Result<Vec<TargetImage>> {
    if let Some(t) = tag {
        validate_tag(t).map_err(Error::Usage)?;
    }
    // `--tag`: one copy shared by every image it renames.
    let retag: Option<Arc<str>> = tag.map(Arc::from);
    let mut out: Vec<TargetImage> = Vec::with_capacity(images.len());
    for img in images {
        let repo = match repository {
            Some(ns) => format!("{ns}/{}", img.path),
            None => img.source_repository(),
        };
        validate_repository(&repo)
            .map_err(|e| Error::Usage(format!("target repository for {}: {e}", img.source)))?;
        let repo = TargetImage::repo_after(out.last(), repo);
        out.push(match (&retag, &img.subject) {
            (Some(t), None) => TargetImage::new(img, repo, t.clone()),
            _ => {
                validate_tag(&img.tag).map_err(Error::Usage)?;
                TargetImage::same_tag(img, repo)
            }
        });
    }
    drop_repeated_names(out)
}

/// `targets` without the images that repeat an earlier one's name with the same root (the
/// first is kept); an error naming both when two different images share a name (the clash
/// met first in the order given).
fn drop_repeated_names(mut targets: Vec<TargetImage>) -> Result<Vec<TargetImage>> {
    let first = copy::first_of_each_key(targets.len(), |i| (&*targets[i].repo, targets[i].tag()));
    let clash = (0..targets.len()).find(|&i| {
        let f = first[i] as usize;
        f != i && targets[f].entry.digest != targets[i].entry.digest
    });
    if let Some(later) = clash {
        let (held, later) = (&targets[first[later] as usize], &targets[later]);
        return Err(Error::Usage(format!(
            "{} and {} would both be pushed to {}:{}; nothing was pushed \
             (choose another --tag or --repository)",
            held.entry.source,
            later.entry.source,
            later.repo,
            later.tag()
        )));
    }
    // Every image not first of its name repeats it with the same root.
    let mut at = 0;
    targets.retain(|_| {
        at += 1;
        first[at - 1] as usize == at - 1
    });
    targets.shrink_to_fit();
    Ok(targets)
}

/// Tells the user when the target refused large requests (`413`) and uploads went in smaller
/// chunks for it: raising the limit of the proxy in front of it makes them faster.
pub(crate) fn note_body_limit(target: &crate::registry::Registry, reporter: &Reporter) {
    if let Some(max) = target.body_limit() {
        reporter.warn(format!(
            "{} (or a proxy in front of it) refused requests over {} with 413 Payload Too \
             Large: blobs went in chunks of at most {}, more requests than needed; raising \
             its request body limit makes uploads faster (nginx: client_max_body_size 0)",
            target.name(),
            human(max),
            human(max)
        ));
    }
}

/// Prints what a push did and turns failed images into an error naming each (`done`:
/// "imported" or "copied").
pub(crate) fn finish(
    report: copy::PushReport,
    reporter: &Reporter,
    json: bool,
    done: &str,
) -> Result<()> {
    reporter.info(format!(
        "{} pushed, {} failed; blobs: {} uploaded ({}), {} mounted, {} already there",
        crate::units::count(report.images_pushed_count as u64, "image", "images"),
        report.images_failed.len(),
        report.blobs_uploaded,
        human(report.bytes_uploaded),
        report.blobs_mounted,
        report.blobs_skipped
    ));
    if json {
        crate::progress::print_json(&report)?;
    }
    if report.images_failed.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = report
        .images_failed
        .iter()
        .map(|(name, why)| format!("  {name}: {why}"))
        .collect();
    Err(Error::Failed(format!(
        "{} of {} {} not {done} (their tags were not written):\n{}",
        report.images_failed.len(),
        crate::units::count(
            (report.images_failed.len() + report.images_pushed_count) as u64,
            "image",
            "images"
        ),
        if report.images_failed.len() == 1 {
            "was"
        } else {
            "were"
        },
        lines.join("\n")
    )))
}

/// `import --plan`: the mapping and what would be uploaded, mounted or skipped.
fn show_plan(plan: &copy::PushPlan, registry: &str, json: bool) -> Result<()> {
    if json {
        crate::progress::print_json(plan)?;
    } else {
        use std::io::Write;
        let width = plan
            .images
            .iter()
            .map(|i| i.source.len())
            .max()
            .unwrap_or(0);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut lines = || -> std::io::Result<()> {
            for i in plan.images.iter() {
                writeln!(
                    out,
                    "{:width$}  ->  {}  {}",
                    i.source,
                    i.target,
                    i.digest.short()
                )?;
            }
            writeln!(
                out,
                "\n{} into {registry}: {} blobs to upload ({}), {} to mount, {} already there. \
                 Nothing was written.",
                crate::units::count(plan.images.len() as u64, "image", "images"),
                plan.blobs_to_upload,
                human(plan.bytes_to_upload),
                plan.blobs_to_mount,
                plan.blobs_already_there
            )?;
            for m in &plan.missing {
                writeln!(out, "missing: {m}")?;
            }
            out.flush()
        };
        lines().map_err(|e| Error::io("writing the plan to stdout", e))?;
    }
    if plan.missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "{} blobs this incremental bundle relies on are not in {registry}; import the base \
             bundle first",
            plan.missing.len()
        )))
    }
}

pub async fn run(args: ImportArgs) -> Result<()> {
    let opts = ImportOptions::resolve(&args, &ProcessEnv, &Terminal)?;
    let (registry, repository, tag) = (
        opts.target.registry.clone(),
        opts.target.repository.clone(),
        opts.target.tag.clone(),
    );
    let mut reporter = Reporter::new(args.out.quiet || args.out.json, args.out.verbose);

    let path = args.bundle.clone();
    let given = args.bundle.clone();
    let bundle = tokio::task::spawn_blocking(move || Bundle::open(&path))
        .await
        .map_err(|e| Error::Failed(format!("opening the bundle: {e}")))?
        // Which volume does not match its checksum, as verify says it.
        .map_err(|e| crate::bundle::volumes::explain_damage(e, &given))?;
    let bundle = Arc::new(bundle);
    if let Some(key) = &args.trusted_key {
        // One pass: the signature covers bundle.json, which names the digest and size of every
        // member; `Bundle::open` has already checked the seek table and every member header
        // against it. Each manifest and blob is then checked against its digest as it streams
        // (an upload's last bytes wait for that verdict), so a tampered blob fails its images,
        // is never committed, and no tag of an image holding it is written.
        let (id, _) = crate::signing::verify(&bundle.path, bundle.bundle_json_stream()?, key)?;
        reporter.info(format!(
            "signature by trusted key {id} is good; every blob is checked against it as it is \
             pushed"
        ));
    }
    // The engine's targets share the bundle's images (`Arc`): nothing is copied.
    let chosen: Vec<Arc<ImageEntry>> =
        crate::bundle::model::select_images(&bundle.manifest.images, &args.image)
            .into_iter()
            .cloned()
            .collect();
    if chosen.is_empty() {
        return Err(Error::Usage(format!(
            "no image of {} matches --image {}",
            bundle.path.display(),
            args.image.join(", ")
        )));
    }
    let targets = plan_targets(chosen, repository.as_deref(), tag.as_deref())?;

    let creds = opts.target.login.credentials(&registry, &Terminal)?;
    let target = crate::credentials::connect(
        &registry,
        &opts.target.tls,
        creds,
        opts.transfer.retry.clone(),
    )
    .await?;
    if args.plan {
        let source: Arc<dyn crate::store::Source> = Arc::new(bundle.clone());
        let plan = copy::plan(source.as_ref(), &target, &targets, args.out.jobs as usize).await?;
        return show_plan(&plan, &registry, args.out.json);
    }
    let target = Arc::new(target);
    reporter.info(format!(
        "importing {} ({}) from {} into {registry}",
        crate::units::count(targets.len() as u64, "image", "images"),
        human(bundle.manifest.total_size),
        bundle.path.display()
    ));
    reporter.start_bar(bundle.manifest.total_size, "uploading");
    let report = copy::push(
        Arc::new(bundle.clone()),
        target.clone(),
        targets,
        args.out.jobs as usize,
        args.out.json,
        reporter.clone(),
    )
    .await;
    note_body_limit(&target, &reporter);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            reporter.finish_bar();
            return Err(e);
        }
    };
    reporter.finish_bar();
    finish(report, &reporter, args.out.json, "imported")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn img(ns: &str, path: &str, tag: &str, content: &[u8]) -> ImageEntry {
        let d = Digest::of(content);
        ImageEntry {
            source: format!("reg.io/{ns}/{path}:{tag}").into(),
            registry: "reg.io".into(),
            namespace: ns.into(),
            path: path.into(),
            tag: tag.into(),
            digest: d.clone(),
            source_digest: None,
            subject: None,
            media_type: crate::manifest::OCI_MANIFEST.into(),
            platforms: vec![].into(),
            size: 1,
            blobs: vec![d].into(),
        }
    }

    fn arcs(images: Vec<ImageEntry>) -> Vec<Arc<ImageEntry>> {
        images.into_iter().map(Arc::new).collect()
    }

    #[test]
    fn maps_namespaces_and_tags() {
        let images = vec![
            img("arcdata", "arc-controller", "v1", b"a"),
            img("", "library/nginx", "1.27", b"b"),
        ];
        let t = plan_targets(arcs(images.clone()), None, None).unwrap();
        assert_eq!((&*t[0].repo, t[0].tag()), ("arcdata/arc-controller", "v1"));
        assert_eq!(&*t[1].repo, "library/nginx");
        let t = plan_targets(arcs(images), Some("mirror"), Some("v2")).unwrap();
        assert_eq!((&*t[0].repo, t[0].tag()), ("mirror/arc-controller", "v2"));
        assert_eq!(&*t[1].repo, "mirror/library/nginx");
    }

    #[test]
    fn companions_keep_their_tags() {
        let image = img("a", "x", "1", b"one");
        let mut sig = img("a", "x", "sha256-abc.sig", b"sig");
        sig.subject = Some(Box::new(image.digest.clone()));
        let t = plan_targets(arcs(vec![image, sig]), Some("m"), Some("v2")).unwrap();
        assert_eq!((&*t[0].repo, t[0].tag()), ("m/x", "v2"));
        assert_eq!((&*t[1].repo, t[1].tag()), ("m/x", "sha256-abc.sig"));
    }

    #[test]
    fn refuses_two_images_on_one_name() {
        let images = vec![img("a", "x", "1", b"one"), img("a", "x", "2", b"two")];
        let err = plan_targets(arcs(images), None, Some("same")).unwrap_err();
        assert!(matches!(err, Error::Usage(_)));
        assert!(
            err.to_string().contains("reg.io/a/x:1") && err.to_string().contains("reg.io/a/x:2")
        );
        // The same image under two tags collapsing to one name is fine.
        let images = vec![img("a", "x", "1", b"one"), img("a", "x", "2", b"one")];
        assert_eq!(
            plan_targets(arcs(images), None, Some("same"))
                .unwrap()
                .len(),
            1
        );
    }

    /// Repeats are dropped wherever they come, the first of each name is kept, and the order
    /// given stays; the clash named is the first met in that order.
    #[test]
    fn keeps_the_first_of_each_name_in_order_and_names_the_first_clash() {
        let images = vec![
            img("a", "y", "1", b"two"),
            img("a", "x", "1", b"one"),
            img("a", "y", "2", b"two"),
            img("a", "x", "2", b"one"),
            img("a", "w", "1", b"three"),
        ];
        let t = plan_targets(arcs(images), None, Some("v")).unwrap();
        let kept: Vec<&str> = t.iter().map(|t| &*t.entry.source).collect();
        assert_eq!(kept, ["reg.io/a/y:1", "reg.io/a/x:1", "reg.io/a/w:1"]);
        assert!(t.iter().all(|t| t.tag() == "v"));

        let images = vec![
            img("a", "x", "1", b"one"),
            img("a", "x", "2", b"one"),
            img("a", "x", "3", b"two"),
            img("a", "x", "4", b"three"),
        ];
        let err = plan_targets(arcs(images), None, Some("v"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("reg.io/a/x:1 and reg.io/a/x:3 would both be pushed to a/x:v"),
            "{err}"
        );
    }
}
