//! `airlock export`: resolve the requested images at their source registries, download their
//! blobs (concurrently, into a content-addressed cache that makes a re-run cheap) and write
//! them, deduplicated and verified, into one bundle.

use crate::bundle::model::{
    Base, BlobEntry, BundleManifest, ExternalBlob, FailedImage, ImageEntry, Layout, Member,
};
use crate::bundle::{
    Bundle, BundleWriter, BUNDLE_JSON, INDEX_JSON, OCI_LAYOUT, OCI_LAYOUT_CONTENT,
};
use crate::cli::ExportArgs;
use crate::config::{self, Side, DEFAULT_SOURCE_REGISTRY, DEFAULT_SOURCE_REPOSITORY};
use crate::copy::{self, Resolved};
use crate::digest::{Digest, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::fetch::{self, Source, Supply};
use crate::progress::{human, Reporter};
use crate::reference::{validate_repository, validate_tag, Reference};
use crate::registry::Registry;
use futures_util::stream::{self, StreamExt};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An image to export, with the namespace import will replace.
#[derive(Clone, Debug)]
pub struct Requested {
    pub reference: Reference,
    pub namespace: String,
    pub path: String,
    /// Platforms to keep for this image (empty: the global `--platform` list).
    pub platforms: Vec<String>,
    /// For a signature or attestation carried along: the image digest it is about.
    pub subject: Option<Digest>,
}

/// Reads the image list: arguments, then the file's lines (`#` comments, blanks ignored).
fn image_list(args: &ExportArgs) -> Result<Vec<String>> {
    let mut out: Vec<String> = args.images.clone();
    if let Some(f) = &args.images_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::Usage(format!("images file {}: {e}", f.display())))?;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                out.push(line.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "no images to export: name them as arguments or with -f/--images-file".into(),
        ));
    }
    Ok(out)
}

/// Turns the list into references. A name without `/` is a short name when a source
/// registry, repository or tag was given (flag or environment): it expands to
/// REGISTRY/REPOSITORY/NAME:TAG. Everything else is read as docker reads it.
pub fn requested_images(args: &ExportArgs) -> Result<Vec<Requested>> {
    let names = image_list(args)?;
    let r = &args.registry;
    let namespace_mode = r.registry.is_some()
        || r.repository.is_some()
        || r.tag.is_some()
        || config::env("SOURCE_DOCKER_REGISTRY").is_some()
        || config::env("SOURCE_DOCKER_REPOSITORY").is_some()
        || config::env("SOURCE_DOCKER_TAG").is_some();
    let mut source: Option<(String, String)> = None;
    let mut tag: Option<String> = None;
    let mut out = Vec::new();
    for name in names {
        if namespace_mode && !name.contains('/') {
            if source.is_none() {
                let reg = config::value(
                    r.registry.as_ref(),
                    "--registry",
                    "SOURCE_DOCKER_REGISTRY",
                    "Source container registry",
                    Some(DEFAULT_SOURCE_REGISTRY),
                    true,
                )?;
                let repo = config::value(
                    r.repository.as_ref(),
                    "--repository",
                    "SOURCE_DOCKER_REPOSITORY",
                    "Source repository",
                    Some(DEFAULT_SOURCE_REPOSITORY),
                    true,
                )?;
                crate::reference::validate_registry(&reg).map_err(Error::Usage)?;
                validate_repository(&repo)
                    .map_err(|e| Error::Usage(format!("--repository: {e}")))?;
                source = Some((reg, repo));
            }
            let (reg, repo) = source.clone().unwrap_or_default();
            let (short, inline_tag) = match name.split_once(':') {
                Some((n, t)) => (n.to_string(), Some(t.to_string())),
                None => (name.clone(), None),
            };
            let t = match inline_tag {
                Some(t) => t,
                None => {
                    if tag.is_none() {
                        tag = Some(config::value(
                            r.tag.as_ref(),
                            "--tag",
                            "SOURCE_DOCKER_TAG",
                            "Source image tag",
                            None,
                            false,
                        )?);
                    }
                    tag.clone().unwrap_or_default()
                }
            };
            validate_tag(&t).map_err(Error::Usage)?;
            let reference = Reference::parse(&format!("{reg}/{repo}/{short}:{t}"))?;
            out.push(Requested {
                reference,
                namespace: repo.clone(),
                path: short,
                platforms: Vec::new(),
                subject: None,
            });
        } else {
            let reference = Reference::parse(&name)?;
            if reference.tag.is_none() {
                return Err(Error::Usage(format!(
                    "{name}: give a tag with the digest (name:tag@sha256:…) so import knows which tag to write"
                )));
            }
            out.push(Requested {
                path: reference.repository.clone(),
                namespace: String::new(),
                reference,
                platforms: Vec::new(),
                subject: None,
            });
        }
    }
    // The same image named twice is exported once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|r| seen.insert(r.reference.to_string()));
    Ok(out)
}

fn cache_dir(args: &ExportArgs) -> Result<PathBuf> {
    if let Some(d) = &args.cache_dir {
        return Ok(d.clone());
    }
    if let Some(x) = config::env("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(x).join("airlock"));
    }
    if let Some(h) = config::env("HOME") {
        return Ok(PathBuf::from(h).join(".cache").join("airlock"));
    }
    Err(Error::Usage(
        "no cache directory: give --cache-dir or set XDG_CACHE_HOME or HOME".into(),
    ))
}

/// RFC 3339 UTC from seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
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

/// Checks `os/arch[/variant]`.
fn validate_platform(p: &str) -> Result<()> {
    let parts: Vec<&str> = p.split('/').collect();
    let well_formed = (2..=3).contains(&parts.len())
        && parts.iter().all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if well_formed {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "platform {p:?}: expected os/arch[/variant] in lowercase"
        )))
    }
}

/// Fills `{date}` (YYYY-MM-DD), `{month}` (YYYY-MM) and `{tag}` in the output name.
fn expand_output(template: &Path, mtime: u64, tags: &[String]) -> Result<PathBuf> {
    let t = template.to_string_lossy();
    if !t.contains('{') {
        return Ok(template.to_path_buf());
    }
    let date = rfc3339(mtime);
    let mut s = t
        .replace("{date}", &date[..10])
        .replace("{month}", &date[..7]);
    if s.contains("{tag}") {
        let distinct: HashSet<&String> = tags.iter().collect();
        if distinct.len() != 1 {
            return Err(Error::Usage(format!(
                "-o {t}: {{tag}} needs every image to have the same tag (they have {})",
                distinct.len()
            )));
        }
        let tag = tags.first().cloned().unwrap_or_default();
        s = s.replace("{tag}", &tag);
    }
    if s.contains('{') || s.contains('}') {
        return Err(Error::Usage(format!(
            "-o {t}: only {{date}}, {{month}} and {{tag}} can be filled in"
        )));
    }
    Ok(PathBuf::from(s))
}

/// What earlier bundles carried: each object's digest and the bundle.json digest of the
/// bundle that holds it.
#[derive(Default)]
struct Carried {
    by: HashMap<Digest, (Digest, u64)>,
    bases: HashMap<Digest, Base>,
}

/// Reads `--since`: a bundle (any volume) or its `bundle.json`.
fn load_since(path: &Path) -> Result<Carried> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let bytes = if is_json {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Usage(format!("--since {}: {e}", path.display())))?;
        if meta.len() > crate::bundle::model::MAX_BUNDLE_JSON {
            return Err(Error::Usage(format!(
                "--since {}: too large for a bundle.json",
                path.display()
            )));
        }
        std::fs::read(path).map_err(|e| Error::Usage(format!("--since {}: {e}", path.display())))?
    } else {
        Bundle::open(path)?.bundle_json
    };
    let prev = BundleManifest::parse(&bytes, path)?;
    let digest = Digest::of(&bytes);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut c = Carried::default();
    for b in &prev.blobs {
        c.by.insert(b.digest.clone(), (digest.clone(), b.size));
    }
    for x in &prev.external {
        c.by.insert(x.digest.clone(), (x.bundle.clone(), x.size));
    }
    for b in &prev.bases {
        c.bases.insert(b.bundle_json.clone(), b.clone());
    }
    c.bases.insert(
        digest.clone(),
        Base {
            bundle_json: digest,
            created: prev.created.clone(),
            name,
        },
    );
    Ok(c)
}

/// Connects to every registry the images come from. Credentials from flags or environment
/// belong to the source registry: the one named by --registry/SOURCE_DOCKER_REGISTRY, or the
/// only registry in the list.
async fn connect_sources(
    args: &ExportArgs,
    requested: &[Requested],
) -> Result<HashMap<String, Arc<Registry>>> {
    let mut registries: Vec<String> = Vec::new();
    for r in requested {
        if !registries.contains(&r.reference.registry) {
            registries.push(r.reference.registry.clone());
        }
    }
    let named = args
        .registry
        .registry
        .clone()
        .or_else(|| config::env("SOURCE_DOCKER_REGISTRY"));
    let explicit_creds = args.registry.username.is_some()
        || args.registry.password_stdin
        || config::env("SOURCE_DOCKER_USERNAME").is_some();
    let creds_for = match (&named, registries.len()) {
        (Some(n), _) => Some(n.clone()),
        (None, 1) => registries.first().cloned(),
        (None, _) if explicit_creds => {
            return Err(Error::Usage(format!(
                "the images come from several registries ({}); say which one the username is for with --registry",
                registries.join(", ")
            )))
        }
        _ => None,
    };
    let tls = config::tls(&args.registry);
    let mut clients = HashMap::new();
    for name in &registries {
        let creds = if Some(name) == creds_for.as_ref() {
            config::credentials(&args.registry, Side::Source, name)?
        } else {
            crate::credentials::from_config_files(name)
        };
        let reg = config::connect(name, &tls, creds, args.out.retry_policy()).await?;
        clients.insert(name.clone(), Arc::new(reg));
    }
    Ok(clients)
}

/// Connects to every registry of an image-set file, each with its own TLS settings and
/// credential source.
async fn connect_image_set(
    args: &ExportArgs,
    set: &crate::imageset::ImageSet,
) -> Result<HashMap<String, Arc<Registry>>> {
    use crate::imageset::CredentialSource;
    let mut clients = HashMap::new();
    for r in &set.registries {
        if clients.contains_key(&r.registry) {
            continue;
        }
        let creds = match &r.credentials {
            CredentialSource::Default => {
                config::credentials(&args.registry, Side::Source, &r.registry)?
            }
            CredentialSource::Anonymous => None,
            env @ CredentialSource::Env { .. } => env.env_credentials()?,
        };
        let reg =
            Arc::new(config::connect(&r.registry, &r.tls, creds, args.out.retry_policy()).await?);
        // Images name their registry as references normalise it (index.docker.io → docker.io).
        if let Ok(normal) = Reference::parse(&format!("{}/x", r.registry)) {
            clients.insert(normal.registry, reg.clone());
        }
        clients.insert(r.registry.clone(), reg);
    }
    Ok(clients)
}

/// Resolves every image; with `keep_going` a failed image is set aside instead of failing.
async fn resolve_all(
    requested: Vec<Requested>,
    clients: &HashMap<String, Arc<Registry>>,
    global_platforms: &[String],
    jobs: usize,
    keep_going: bool,
    reporter: &Reporter,
) -> Result<(Vec<(Requested, Resolved)>, Vec<FailedImage>)> {
    let results: Vec<(Requested, Result<Resolved>)> = stream::iter(requested)
        .map(|req| {
            let reg = clients.get(&req.reference.registry).cloned();
            let platforms = if req.platforms.is_empty() && req.subject.is_none() {
                global_platforms.to_vec()
            } else {
                req.platforms.clone()
            };
            let reporter = reporter.clone();
            async move {
                let r = async {
                    let reg = reg.ok_or_else(|| Error::Failed("registry not connected".into()))?;
                    copy::resolve(
                        &reg,
                        &req.reference.repository,
                        &req.reference.reference(),
                        &platforms,
                    )
                    .await
                    .map_err(|e| match e {
                        Error::NotFound { registry, .. } => Error::NotFound {
                            registry,
                            what: format!("image {}", req.reference),
                        },
                        e @ Error::Usage(_) => e,
                        e => Error::Failed(format!("image {}: {e}", req.reference)),
                    })
                }
                .await;
                if let Ok(r) = &r {
                    reporter.info(format!(
                        "resolved {} ({}, {} objects, {})",
                        req.reference,
                        r.root.digest.short(),
                        r.objects.len(),
                        human(r.objects.iter().map(|o| o.size).sum())
                    ));
                }
                (req, r)
            }
        })
        .buffered(jobs)
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (req, r) in results {
        match r {
            Ok(r) => ok.push((req, r)),
            Err(e) if keep_going && !matches!(e, Error::Usage(_)) => {
                reporter.warn(format!("skipping {}: {e}", req.reference));
                failed.push(FailedImage {
                    source: req.reference.to_string(),
                    error: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok((ok, failed))
}

/// Signatures, attestations and SBOMs stored as cosign-style companion tags
/// (`sha256-<hex>.sig`, `.att`, `.sbom`) or under the OCI referrers tag schema
/// (`sha256-<hex>`) for the exported images: each becomes an image of its own.
async fn companions(
    resolved: &[(Requested, Resolved)],
    clients: &HashMap<String, Arc<Registry>>,
    reporter: &Reporter,
) -> Result<Vec<Requested>> {
    let mut tags_of: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut out = Vec::new();
    let mut seen: HashSet<String> = resolved
        .iter()
        .map(|(r, _)| r.reference.to_string())
        .collect();
    for (req, r) in resolved {
        let key = (
            req.reference.registry.clone(),
            req.reference.repository.clone(),
        );
        if !tags_of.contains_key(&key) {
            let Some(reg) = clients.get(&key.0) else {
                continue;
            };
            let tags = match reg.list_tags(&key.1).await {
                Ok(t) => t,
                Err(e) => {
                    reporter.warn(format!(
                        "cannot list the tags of {}/{} to find signatures: {e}",
                        key.0, key.1
                    ));
                    Vec::new()
                }
            };
            tags_of.insert(key.clone(), tags);
        }
        let tags = tags_of.get(&key).cloned().unwrap_or_default();
        let mut subjects: Vec<Digest> = vec![r.root.digest.clone()];
        if let Some(d) = &r.source_digest {
            subjects.push(d.clone());
        }
        subjects.extend(
            r.objects
                .iter()
                .filter(|o| crate::manifest::is_manifest(&o.media_type))
                .map(|o| o.digest.clone()),
        );
        for subject in subjects {
            let prefix = format!("sha256-{}", subject.hex());
            for tag in tags.iter().filter(|t| {
                t.as_str() == prefix
                    || [".sig", ".att", ".sbom"]
                        .iter()
                        .any(|s| t.as_str() == format!("{prefix}{s}"))
            }) {
                let mut reference = req.reference.clone();
                reference.tag = Some(tag.clone());
                reference.digest = None;
                if seen.insert(reference.to_string()) {
                    out.push(Requested {
                        reference,
                        namespace: req.namespace.clone(),
                        path: req.path.clone(),
                        platforms: Vec::new(),
                        subject: Some(subject.clone()),
                    });
                }
            }
        }
    }
    Ok(out)
}

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

pub async fn run(args: ExportArgs) -> Result<()> {
    // The image list from the command line is read (and checked) before any network work;
    // an image-set file is loaded now and its tags are listed once connected.
    let image_set = match &args.config {
        Some(path) => {
            if !args.images.is_empty() || args.images_file.is_some() {
                return Err(Error::Usage(
                    "give the images either in --config or as arguments/--images-file, not both"
                        .into(),
                ));
            }
            Some(crate::imageset::load(path)?)
        }
        None => None,
    };
    let cli_requested = match &image_set {
        Some(_) => Vec::new(),
        None => requested_images(&args)?,
    };
    let signer = if args.plan {
        None
    } else {
        args.sign
            .as_deref()
            .map(crate::signing::Signer::load)
            .transpose()?
    };
    let split = args
        .split_size
        .as_deref()
        .map(config::parse_size)
        .transpose()?;
    for p in &args.platform {
        validate_platform(p)?;
    }
    let mtime = match config::env("SOURCE_DATE_EPOCH") {
        Some(s) => s.parse::<u64>().map_err(|_| {
            Error::Usage(format!(
                "SOURCE_DATE_EPOCH={s:?} is not a number of seconds"
            ))
        })?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    // Checked now so a bad -o fails before any network work; {tag} is filled in later.
    if let Some(parent) = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.to_string_lossy().contains('{'))
    {
        if !parent.is_dir() {
            return Err(Error::Usage(format!(
                "output directory {} does not exist",
                parent.display()
            )));
        }
    }
    let carried = match &args.since {
        Some(p) => load_since(p)?,
        None => Carried::default(),
    };
    let cache = cache_dir(&args)?;
    for sub in ["blobs/sha256", "tmp"] {
        std::fs::create_dir_all(cache.join(sub))
            .ctx(|| format!("creating cache directory {}", cache.join(sub).display()))?;
    }
    let mut reporter = Reporter::new(args.out.quiet || args.out.json, args.out.verbose);
    let jobs = args.out.jobs as usize;
    let (mut requested, clients, set_platforms) = match &image_set {
        Some(set) => {
            let clients = connect_image_set(&args, set).await?;
            let selected = set.select(&clients).await?;
            let requested: Vec<Requested> = selected
                .into_iter()
                .map(|s| Requested {
                    reference: s.reference,
                    namespace: s.namespace,
                    path: s.path,
                    platforms: s.platforms,
                    subject: None,
                })
                .collect();
            (requested, clients, set.platforms.clone())
        }
        None => {
            let clients = connect_sources(&args, &cli_requested).await?;
            (cli_requested, clients, Vec::new())
        }
    };
    for p in requested.iter().flat_map(|r| &r.platforms) {
        validate_platform(p)?;
    }
    let tags: Vec<String> = requested
        .iter()
        .filter_map(|r| r.reference.tag.clone())
        .collect();
    let out = expand_output(&args.output, mtime, &tags)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::Usage(format!(
                "output directory {} does not exist",
                parent.display()
            )));
        }
    }
    let global_platforms = if args.platform.is_empty() {
        set_platforms
    } else {
        args.platform.clone()
    };

    // Resolve every image before writing anything: an unknown image fails here (or, with
    // --keep-going, is left out and named in the bundle).
    let (mut resolved, failed) = resolve_all(
        std::mem::take(&mut requested),
        &clients,
        &global_platforms,
        jobs,
        args.keep_going,
        &reporter,
    )
    .await?;
    if resolved.is_empty() {
        return Err(Error::Failed(
            "no image could be resolved; nothing to export".into(),
        ));
    }
    if !args.no_referrers {
        let extra = companions(&resolved, &clients, &reporter).await?;
        if !extra.is_empty() {
            let (more, more_failed) =
                resolve_all(extra, &clients, &[], jobs, true, &reporter).await?;
            for f in more_failed {
                reporter.warn(format!("could not carry {}: {}", f.source, f.error));
            }
            resolved.extend(more);
        }
    }

    // What the bundle carries: every object once, less what a base bundle already carried
    // (manifests always travel).
    let all_objects = copy::dedup_order(resolved.iter().map(|(_, r)| r));
    let mut objects = Vec::new();
    let mut external = Vec::new();
    for o in all_objects {
        let carried_by = carried
            .by
            .get(&o.digest)
            .filter(|(_, size)| *size == o.size && !crate::manifest::is_manifest(&o.media_type));
        match carried_by {
            Some((bundle, _)) => external.push(ExternalBlob {
                digest: o.digest.clone(),
                size: o.size,
                media_type: o.media_type.clone(),
                bundle: bundle.clone(),
            }),
            None => objects.push(o),
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
    let images: Vec<ImageEntry> = resolved
        .iter()
        .map(|(req, r)| ImageEntry {
            source: req.reference.to_string(),
            registry: req.reference.registry.clone(),
            namespace: req.namespace.clone(),
            path: req.path.clone(),
            tag: req.reference.tag.clone().unwrap_or_default(),
            digest: r.root.digest.clone(),
            source_digest: r.source_digest.clone(),
            subject: req.subject.clone(),
            media_type: r.root.media_type.clone(),
            platforms: r.platforms.clone(),
            size: r.objects.iter().map(|o| o.size).sum(),
            blobs: r.objects.iter().map(|o| o.digest.clone()).collect(),
        })
        .collect();
    let total_size: u64 = objects.iter().map(|o| o.size).sum();

    if args.plan {
        let cached_size = objects
            .iter()
            .filter(|o| o.inline.is_none())
            .filter(|o| {
                std::fs::metadata(fetch::cache_path(&cache, &o.digest))
                    .map(|m| m.len() == o.size)
                    .unwrap_or(false)
            })
            .map(|o| o.size)
            .sum();
        let plan = Plan {
            images: images
                .iter()
                .map(|i| PlanImage {
                    source: i.source.clone(),
                    digest: i.digest.to_string(),
                    platforms: i.platforms.clone(),
                    size: i.size,
                    subject: i.subject.as_ref().map(|d| d.to_string()),
                })
                .collect(),
            failed: failed.clone(),
            blobs: objects.len(),
            bundle_size: total_size,
            external_size: external.iter().map(|x| x.size).sum(),
            external_blobs: external.len(),
            cached_size,
        };
        print_plan(&plan, &images, &out, args.out.json)?;
        return if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Partial(format!(
                "{} image(s) could not be resolved",
                failed.len()
            )))
        };
    }

    let root_sizes: Vec<u64> = resolved
        .iter()
        .map(|(_, r)| r.root.bytes.len() as u64)
        .collect();
    let index_json = build_index_json(&images, &root_sizes)?;
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
        platforms: global_platforms.clone(),
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
        failed: failed.clone(),
    };
    manifest.validate(&out)?;
    let bundle_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Failed(format!("bundle.json: {e}")))?;
    // The signature is written beside the bundle and renamed into place with it; an unsigned
    // export removes a stale one so it cannot be mistaken for this bundle's.
    let sig_path = crate::signing::signature_path(&out);
    let sig_partial = PathBuf::from(format!("{}.partial", sig_path.display()));
    match &signer {
        Some(s) => {
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let sig = s.sign(
                &bundle_json,
                &format!("airlock bundle {name} created {}", manifest.created),
            )?;
            std::fs::write(&sig_partial, sig)
                .ctx(|| format!("writing {}", sig_partial.display()))?;
        }
        None => {
            if sig_path.exists() {
                std::fs::remove_file(&sig_path)
                    .ctx(|| format!("removing the stale signature {}", sig_path.display()))?;
            }
        }
    }

    // Small blobs are fetched ahead into the cache by --jobs workers; the writer takes blobs
    // in bundle order and streams the ones nobody fetched yet straight into the bundle.
    let supply = Supply::new(&objects, clients.clone(), &cache, jobs);
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
                let mut r = fetch::open(source, o)?;
                if let Err(e) = w.append(&name, o.size, &mut r) {
                    // A damaged cache entry must not poison the next run.
                    if let Some(p) = cached_file {
                        let _ = std::fs::remove_file(&p);
                    }
                    return Err(e);
                }
                bar.inc(o.size);
            }
            let files = w.finish()?;
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
            let _ = std::fs::remove_file(&sig_partial);
            return Err(e);
        }
    };
    if signer.is_some() {
        std::fs::rename(&sig_partial, &sig_path)
            .ctx(|| format!("renaming to {}", sig_path.display()))?;
    }
    reporter.finish_bar();
    let compressed: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    reporter.info(format!(
        "wrote {} ({} images, {} blobs, {} in {} on disk; downloaded {}, {} from cache)",
        out.display(),
        manifest.images.len(),
        manifest.blobs.len(),
        human(total_size),
        human(compressed),
        human(downloaded),
        human(cached)
    ));
    if args.out.json {
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
            external_blobs: manifest.external.len(),
            external_size: manifest.external.iter().map(|x| x.size).sum(),
            failed: manifest.failed.clone(),
        };
        config::print_json(&summary)?;
    }
    if manifest.failed.is_empty() {
        Ok(())
    } else {
        let lines: Vec<String> = manifest
            .failed
            .iter()
            .map(|f| format!("  {}: {}", f.source, f.error))
            .collect();
        Err(Error::Partial(format!(
            "{} holds {} images; {} could not be exported:\n{}",
            out.display(),
            manifest.images.len(),
            manifest.failed.len(),
            lines.join("\n")
        )))
    }
}

fn print_plan(plan: &Plan, images: &[ImageEntry], out: &Path, json: bool) -> Result<()> {
    if json {
        return config::print_json(plan);
    }
    let mut stdout = std::io::stdout().lock();
    let w = |e: std::io::Error| Error::io("writing to stdout", e);
    let width = crate::progress::write_image_table(&mut stdout, images).map_err(w)?;
    for f in &plan.failed {
        writeln!(stdout, "{:width$}  FAILED: {}", f.source, f.error).map_err(w)?;
    }
    writeln!(stdout).map_err(w)?;
    writeln!(
        stdout,
        "{} would get {} images, {} blobs, {} before compression ({} already in the cache)",
        out.display(),
        plan.images.len(),
        plan.blobs,
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

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_374_400), "2025-11-29T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
