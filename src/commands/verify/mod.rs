//! `airlock verify`: one sequential pass over a bundle, offline, on the copy engine (`pass`
//! is the source, `sink` the checking sink). Checks every volume's checksum, every member's
//! name, type, size and digest against `bundle.json`, that every manifest's children are
//! present, that `index.json` agrees with `bundle.json`, that `manifest.json` names only
//! images the bundle carries, and that the seek table matches the archive. `-v` lists each
//! blob as it is checked.

mod pass;
mod sink;

use crate::bundle::docker;
use crate::bundle::volumes::{checksum_name, explain_damage, Sums};
use crate::bundle::Bundle;
use crate::cli::VerifyArgs;
use crate::copy::{self, TargetImage};
use crate::error::{Error, Result};
use crate::manifest;
use crate::progress::{human, Reporter};
use std::io::Write;
use std::sync::Arc;

#[derive(serde::Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub bundle: String,
    pub ok: bool,
    pub volumes: Vec<VolumeReport>,
    pub images: usize,
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// The trusted key that signed the bundle, when one was given and the signature holds.
    pub signed_by: Option<String>,
    /// Objects the bundle relies on but does not carry (an incremental bundle), with the
    /// base bundle that carries each.
    pub external: Vec<String>,
}

#[derive(serde::Serialize)]
pub struct VolumeReport {
    pub file: String,
    pub sha256: String,
    pub ok: Option<bool>,
}

/// Runs every check; structural failures end the pass, content failures are collected. A
/// structural failure names the volumes that do not match `NAME.sha256`.
///
/// The bundle is read once, in order, by a [`pass::Pass`] that the copy engine reads from
/// as from any source, into a [`sink::CheckSink`] that only checks: the same walk as an
/// import (children first, each blob once, a tag only when everything under it passed).
pub async fn check(bundle: Arc<Bundle>, reporter: &Reporter) -> Result<Report> {
    let path = bundle.path.clone();
    check_pass(bundle, reporter)
        .await
        .map_err(|e| explain_damage(e, &path))
}

/// [`check`] for callers without an async runtime (the fuzz targets): runs it on a runtime
/// of its own.
pub fn check_blocking(bundle: Arc<Bundle>, reporter: &Reporter) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting a runtime for verify", e))?;
    rt.block_on(check(bundle, reporter))
}

async fn check_pass(bundle: Arc<Bundle>, reporter: &Reporter) -> Result<Report> {
    let mut rep = Report {
        bundle: bundle.path.display().to_string(),
        images: bundle.manifest.images.len(),
        ..Default::default()
    };
    let pass = Arc::new(pass::Pass::start(bundle.clone(), reporter.clone())?);
    let checker = Arc::new(sink::CheckSink::new(bundle.clone()));
    let targets = TargetImage::all_named(bundle.manifest.images.iter().cloned());
    // One job: the engine asks for blobs in bundle order, so the pass reads the file once.
    // Its per-image account is not needed: the pass and the sink name each problem.
    let walked = copy::push(
        Arc::new(pass.clone()),
        checker.clone(),
        targets,
        1,
        false,
        Reporter::new(true, false),
    )
    .await;
    let p = pass.clone();
    let found = tokio::task::spawn_blocking(move || p.finish())
        .await
        .map_err(|e| Error::Failed(format!("verifying: {e}")))??;
    walked?;
    // Manifests no image reaches (or whose image failed first) are checked too, in bundle
    // order.
    for blob in found.manifests.positions() {
        let Some(b) = bundle.manifest.blobs.get(blob) else {
            continue;
        };
        if checker.checked_manifest(&b.digest) {
            continue;
        }
        if let Some(bytes) = pass::read_back(&bundle, &found.manifests, blob)? {
            let _ = checker.check_manifest(&b.digest, &bytes);
        }
    }
    rep.errors = found.errors;
    rep.errors.extend(checker.errors());
    rep.blobs_checked = found.blobs_checked;
    rep.bytes_checked = found.bytes_checked;
    let volume_sums = found.volume_sums;

    // manifest.json names only image configs and layers that are members of this bundle:
    // the configs carried here, with the layer lists that go with them.
    if let Some(docker_manifest) = &found.docker_manifest {
        let mut loadable = docker::Loadable::default();
        for blob in found.manifests.positions() {
            let Some(b) = bundle.manifest.blobs.get(blob) else {
                continue;
            };
            if manifest::kind(&b.media_type) != Some(manifest::Kind::Image) {
                continue;
            }
            let Some(bytes) = pass::read_back(&bundle, &found.manifests, blob)? else {
                continue;
            };
            let what = format!("manifest {}", b.digest);
            let Ok(children) = manifest::children(&bytes, &b.media_type, &what) else {
                continue;
            };
            let carried = children.iter().all(|c| bundle.holds(&c.digest));
            if let (true, Some((config, layers))) = (carried, children.split_first()) {
                loadable.add(&config.digest, layers.iter().map(|l| &l.digest));
            }
        }
        rep.errors
            .extend(docker::check(docker_manifest.reader(), loadable));
    }

    // Volume checksums against the .sha256 file.
    let sums_file = checksum_name(&bundle.path);
    let sums = Sums::read(&bundle.path);
    match &sums {
        None if sums_file.exists() => rep.warnings.push(format!(
            "{} is not a checksum listing airlock can use (sha256sum lines, at most {} MiB): \
             the volumes were not checked against it",
            sums_file.display(),
            crate::bundle::volumes::MAX_SUMS_FILE >> 20
        )),
        None => rep
            .warnings
            .push(format!("no checksum file {}", sums_file.display())),
        Some(s) if s.renamed => {
            let old: Vec<&str> = s.lines.iter().map(|l| l.listed.as_str()).collect();
            rep.warnings.push(match old.as_slice() {
                [one] => format!(
                    "{} names the bundle {one} (renamed after export?): {} was checked \
                     against that line; `sha256sum -c` looks for {one}",
                    sums_file.display(),
                    bundle.path.display()
                ),
                _ => format!(
                    "{} names the volumes {} (renamed after export?): each volume was checked \
                     against the line with its number; `sha256sum -c` looks for the old names",
                    sums_file.display(),
                    old.join(", ")
                ),
            });
        }
        Some(_) => {}
    }
    for (file, sum) in &volume_sums {
        let line = sums.as_ref().and_then(|s| s.line_for(file));
        let ok = line.map(|l| &l.sha256 == sum);
        if sums.is_some() && line.is_none() {
            rep.warnings.push(format!(
                "{} is not listed in {}: its checksum was not compared",
                file.display(),
                sums_file.display()
            ));
        }
        if ok == Some(false) {
            rep.errors.push(format!(
                "{}: sha256 {sum} does not match {}",
                file.display(),
                sums_file.display()
            ));
        }
        rep.volumes.push(VolumeReport {
            file: file.display().to_string(),
            sha256: sum.clone(),
            ok,
        });
    }

    // index.json names exactly the images of bundle.json.
    rep.errors.extend(found.index_errors);
    rep.external = bundle
        .manifest
        .external
        .iter()
        .map(|x| {
            format!(
                "{} ({} bytes) from {}",
                x.digest,
                x.size,
                bundle.manifest.base_of(x)
            )
        })
        .collect();
    rep.ok = rep.errors.is_empty();
    Ok(rep)
}

/// Where `index.json` does not name exactly the images of `bundle.json`, in order (their
/// digests and `org.opencontainers.image.ref.name`). Each entry is compared as it is parsed,
/// and only the fields compared are read: the entries of a 30,000-image index would be
/// several MiB of strings.
fn index_disagreements(
    index_json: impl std::io::Read,
    images: &[Arc<crate::bundle::model::ImageEntry>],
) -> Vec<String> {
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::Deserializer as _;
    #[derive(serde::Deserialize)]
    struct IndexEntry {
        digest: Option<String>,
        #[serde(default)]
        annotations: Option<RefName>,
    }
    #[derive(serde::Deserialize)]
    struct RefName {
        #[serde(rename = "org.opencontainers.image.ref.name")]
        name: Option<String>,
    }
    /// The index's entries, compared with `images` one by one; counts them.
    struct Compare<'a> {
        images: &'a [Arc<crate::bundle::model::ImageEntry>],
        errors: Vec<String>,
        listed: usize,
    }
    impl<'de> Visitor<'de> for &mut Compare<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an OCI index")
        }
        // The index: only `manifests` is read.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "manifests" {
                    map.next_value_seed(&mut *self)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
        // Its `manifests`.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            while let Some(e) = seq.next_element::<IndexEntry>()? {
                if let Some(img) = self.images.get(self.listed) {
                    let name = e.annotations.as_ref().and_then(|a| a.name.as_deref());
                    if e.digest.as_deref() != Some(img.digest.text().as_str())
                        || name != Some(&*img.source)
                    {
                        self.errors.push(format!(
                            "index.json disagrees with bundle.json about {}",
                            img.source
                        ));
                    }
                }
                self.listed += 1;
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for &mut Compare<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    let mut compare = Compare {
        images,
        errors: Vec::new(),
        listed: 0,
    };
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(index_json));
    if let Err(e) = de.deserialize_map(&mut compare).and_then(|()| de.end()) {
        return vec![format!("index.json is not a valid OCI index: {e}")];
    }
    let mut errors = Vec::new();
    if compare.listed != images.len() {
        errors.push(format!(
            "index.json lists {} manifests, bundle.json {} images",
            compare.listed,
            images.len()
        ));
    }
    errors.extend(compare.errors);
    errors
}

pub async fn run(args: VerifyArgs) -> Result<()> {
    let given = args.bundle.clone();
    let bundle = tokio::task::spawn_blocking(move || Bundle::open(&given))
        .await
        .map_err(|e| Error::Failed(format!("opening the bundle: {e}")))?
        .map_err(|e| explain_damage(e, &args.bundle))?;
    let bundle = Arc::new(bundle);
    let mut reporter = Reporter::new(args.quiet || args.json, args.verbose);
    let signature = match &args.trusted_key {
        Some(key) => {
            let (id, comment) =
                crate::signing::verify(&bundle.path, bundle.bundle_json_stream()?, key)?;
            reporter.info(format!("signature by trusted key {id} is good ({comment})"));
            Some(id)
        }
        None => None,
    };
    reporter.start_bar(bundle.manifest.total_size, "verifying");
    let mut rep = check(bundle.clone(), &reporter).await?;
    reporter.finish_bar();
    rep.signed_by = signature;
    if rep.signed_by.is_none() && crate::signing::signature_path(&bundle.path).exists() {
        rep.warnings
            .push("the bundle is signed, but no --trusted-key was given to check it".into());
    }
    if args.json {
        let mut out = std::io::stdout();
        serde_json::to_writer_pretty(&mut out, &rep).map_err(|e| Error::Failed(e.to_string()))?;
        let _ = writeln!(out);
    } else {
        for w in &rep.warnings {
            reporter.warn(w);
        }
        reporter.info(format!(
            "{}: {}, {}, {} checked; {}{}",
            bundle.path.display(),
            crate::units::count(rep.images as u64, "image", "images"),
            crate::units::count(rep.blobs_checked as u64, "blob", "blobs"),
            human(rep.bytes_checked),
            crate::units::count(rep.volumes.len() as u64, "volume", "volumes"),
            if rep.ok { ", all good" } else { "" }
        ));
        if !rep.external.is_empty() {
            reporter.info(format!(
                "{} blobs are not in this bundle but declared as carried by earlier bundles: {}",
                rep.external.len(),
                bundle
                    .manifest
                    .bases
                    .iter()
                    .map(|b| format!("{} (created {})", b.name, b.created))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if rep.ok {
        Ok(())
    } else {
        Err(Error::bundle(
            &bundle.path,
            format!("verification failed:\n  {}", rep.errors.join("\n  ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::model::ImageEntry;
    use crate::digest::Digest;

    fn image(source: &str, content: &str) -> ImageEntry {
        ImageEntry {
            source: source.into(),
            registry: "r.example".into(),
            namespace: "".into(),
            path: "lib/app".into(),
            tag: "1".into(),
            digest: Digest::of(content.as_bytes()),
            source_digest: None,
            subject: None,
            media_type: crate::manifest::OCI_INDEX.into(),
            platforms: Box::default(),
            size: 0,
            blobs: Box::default(),
        }
    }

    fn index_of(entries: &[(&Digest, &str)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(d, name)| {
                serde_json::json!({
                    "mediaType": crate::manifest::OCI_INDEX,
                    "digest": d.text().as_str(),
                    "size": 2,
                    "annotations": {"org.opencontainers.image.ref.name": name},
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .expect("json")
    }

    #[test]
    fn index_json_must_name_exactly_the_images_of_bundle_json() {
        let a = image("r.example/lib/app:1", "a");
        let b = image("r.example/lib/app:latest", "b");
        let images = [Arc::new(a.clone()), Arc::new(b.clone())];
        let good = index_of(&[(&a.digest, &a.source), (&b.digest, &b.source)]);
        assert!(index_disagreements(&good[..], &images).is_empty());

        let swapped = index_of(&[(&a.digest, &b.source), (&b.digest, &a.source)]);
        let errors = index_disagreements(&swapped[..], &images);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("disagrees") && errors[0].contains(&*a.source));

        let short = index_of(&[(&a.digest, &a.source)]);
        let errors = index_disagreements(&short[..], &images);
        assert_eq!(
            errors,
            ["index.json lists 1 manifests, bundle.json 2 images"]
        );

        let long = index_of(&[
            (&a.digest, &a.source),
            (&b.digest, &b.source),
            (&b.digest, "x"),
        ]);
        let errors = index_disagreements(&long[..], &images);
        assert_eq!(
            errors,
            ["index.json lists 3 manifests, bundle.json 2 images"]
        );
        let errors = index_disagreements(&br#"{"schemaVersion": 2}"#[..], &images);
        assert_eq!(
            errors,
            ["index.json lists 0 manifests, bundle.json 2 images"]
        );

        for bad in [&b"{not json"[..], b"[]", br#"{"manifests": {}}"#, b"{} {}"] {
            let errors = index_disagreements(bad, &images);
            assert!(
                errors[0].starts_with("index.json is not a valid OCI index"),
                "{errors:?}"
            );
        }
    }
}
