//! Where the images come from: connecting to the source registries (credentials, TLS, an
//! image-set file's settings), resolving every image, and finding the signatures and
//! attestations stored beside them.

use super::Requested;
use crate::bundle::model::FailedImage;
use crate::cli::ExportArgs;
use crate::copy::{self, Home, Resolved};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::memory::Dwindling;
use crate::options::{ProcessEnv, SourceSide, Terminal};
use crate::progress::{human, Reporter};
use crate::reference::Reference;
use crate::registry::Registry;
use futures_util::stream::{self, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Connects to every registry the images come from. Credentials from flags or environment
/// belong to the source registry: the one named by --registry/SOURCE_DOCKER_REGISTRY, or the
/// only registry in the list.
pub(super) async fn connect_sources(
    args: &ExportArgs,
    source: &SourceSide,
    requested: &[Requested],
) -> Result<HashMap<String, Arc<Registry>>> {
    let mut registries: Vec<String> = Vec::new();
    for r in requested {
        if !registries.contains(&r.reference.registry) {
            registries.push(r.reference.registry.clone());
        }
    }
    let named = source.credentials_for.clone();
    let explicit_creds = source.login.explicit();
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
    let tls = &source.tls;
    let mut clients = HashMap::new();
    for name in &registries {
        let creds = if Some(name) == creds_for.as_ref() {
            source.login.credentials(name, &Terminal)?
        } else {
            crate::credentials::from_config_files(name)
        };
        let reg = crate::credentials::connect(name, tls, creds, args.out.retry_policy()).await?;
        clients.insert(name.clone(), Arc::new(reg));
    }
    Ok(clients)
}

/// Connects to every registry of an image-set file, each with its own TLS settings and
/// credential source.
pub(super) async fn connect_image_set(
    args: &ExportArgs,
    source: &SourceSide,
    set: &crate::imageset::ImageSet,
) -> Result<HashMap<String, Arc<Registry>>> {
    use crate::imageset::CredentialSource;
    // Flag and environment credentials go to one registry only, as with images named on the
    // command line: the one `--registry`/`SOURCE_DOCKER_REGISTRY` names, or the file's only
    // one. The others' `docker` entries read the config files (a private registry's password
    // must not go to docker.io).
    // A registry's name as references normalise it (index.docker.io → docker.io).
    let normal = |r: &str| {
        Reference::parse(&format!("{r}/x"))
            .map(|p| p.registry)
            .unwrap_or_else(|_| r.to_string())
    };
    let mut names: Vec<String> = Vec::new();
    for r in &set.registries {
        if matches!(r.credentials, CredentialSource::Default)
            && !names.contains(&normal(&r.registry))
        {
            names.push(normal(&r.registry));
        }
    }
    let creds_for = match (&source.credentials_for, names.len()) {
        (Some(n), _) => Some(normal(n)),
        (None, 1) => names.first().cloned(),
        (None, 0) => None,
        (None, _) if source.login.explicit() => {
            return Err(Error::Usage(format!(
                "{} names several registries ({}); say which one the username is for with \
                 --registry or SOURCE_DOCKER_REGISTRY",
                set.path.display(),
                names.join(", ")
            )))
        }
        (None, _) => None,
    };
    let mut clients = HashMap::new();
    for r in &set.registries {
        if clients.contains_key(&r.registry) {
            continue;
        }
        let creds = match &r.credentials {
            CredentialSource::Default if creds_for.as_deref() == Some(&*normal(&r.registry)) => {
                source.login.credentials(&r.registry, &Terminal)?
            }
            CredentialSource::Default => crate::credentials::from_config_files(&r.registry),
            CredentialSource::Anonymous => None,
            env @ CredentialSource::Env { .. } => env.env_credentials(&ProcessEnv)?,
        };
        let reg = Arc::new(
            crate::credentials::connect(&r.registry, &r.tls, creds, args.out.retry_policy())
                .await?,
        );
        // Images name their registry as references normalise it (index.docker.io → docker.io).
        clients.insert(normal(&r.registry), reg.clone());
        clients.insert(r.registry.clone(), reg);
    }
    Ok(clients)
}

/// Resolves every image; with `keep_going` a failed image is set aside instead of failing.
pub(super) async fn resolve_all(
    requested: Vec<Requested>,
    clients: &HashMap<String, Arc<Registry>>,
    global_platforms: &[String],
    jobs: usize,
    keep_going: bool,
    reporter: &Reporter,
) -> Result<(Vec<(Requested, Resolved)>, Vec<FailedImage>)> {
    // Taken in the order asked, as each is resolved: a list of every result besides the
    // resolved images would hold them twice at its peak.
    let n = requested.len();
    // Each repository's name for its objects is made now, once, not as each image resolves
    // (see `copy::Home`). The registry is named as its client names itself.
    let homes: Vec<Arc<Home>> = {
        let mut made: HashMap<(&str, &str), Arc<Home>> = HashMap::new();
        requested
            .iter()
            .map(|r| {
                let registry = clients
                    .get(&r.reference.registry)
                    .map_or(&*r.reference.registry, |reg| reg.name());
                let repo = &*r.reference.repository;
                made.entry((registry, repo))
                    .or_insert_with(|| Home::new(registry, repo))
                    .clone()
            })
            .collect()
    };
    let mut results = stream::iter(Dwindling::new(requested).zip(homes))
        .map(|(req, home)| {
            let reg = clients.get(&req.reference.registry).cloned();
            // Signatures and attestations are taken whole.
            let platforms = match (&req.platforms, &req.subject) {
                (Some(own), _) => own.clone(),
                (None, None) => global_platforms.to_vec(),
                (None, Some(_)) => Vec::new(),
            };
            let reporter = reporter.clone();
            async move {
                let r = async {
                    let reg = reg.ok_or_else(|| Error::Failed("registry not connected".into()))?;
                    match &req.prefetched {
                        Some(root) => {
                            copy::resolve_manifest(
                                &reg,
                                &home,
                                &req.reference.reference(),
                                (**root).clone(),
                                &platforms,
                            )
                            .await
                        }
                        None => {
                            copy::resolve(&reg, &home, &req.reference.reference(), &platforms).await
                        }
                    }
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
                        r.digest.short(),
                        r.objects.len(),
                        human(r.objects.iter().map(|o| o.size).sum())
                    ));
                }
                (req, r)
            }
        })
        .buffered(jobs);
    let mut ok = Vec::with_capacity(n);
    let mut failed = Vec::new();
    while let Some((req, r)) = results.next().await {
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

/// Signatures, attestations and SBOMs of the exported images, each carried as an image of
/// its own: cosign-style companion tags (`sha256-<hex>.sig`, `.att`, `.sbom`) and the OCI
/// referrers tag schema (`sha256-<hex>`) found by listing tags; where a root manifest has no
/// such tag, the OCI 1.1 referrers API is asked, and its answer (an index of the referrers)
/// travels under the tag schema's name, so a target without the API still finds them.
pub(super) async fn companions(
    resolved: &[(Requested, Resolved)],
    clients: &HashMap<String, Arc<Registry>>,
    tag_lists: &crate::imageset::TagLists,
    jobs: usize,
    reporter: &Reporter,
) -> Result<Vec<Requested>> {
    // Tags of every repository, listed once each.
    let mut repos: Vec<(String, String)> = Vec::new();
    for (req, _) in resolved {
        let key = (
            req.reference.registry.clone(),
            req.reference.repository.clone(),
        );
        if !repos.contains(&key) {
            repos.push(key);
        }
    }
    let tags_of: HashMap<(String, String), Vec<String>> = stream::iter(repos)
        .map(|key| async move {
            let tags = match clients.get(&key.0) {
                Some(reg) => tag_lists.list(reg, &key.1).await.unwrap_or_else(|e| {
                    reporter.warn(format!(
                        "cannot list the tags of {}/{} to find signatures: {e}",
                        key.0, key.1
                    ));
                    Vec::new()
                }),
                None => Vec::new(),
            };
            (key, tags)
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    let mut out = Vec::new();
    // Companions are named by `sha256-` tags: only an image asked for under such a tag can
    // be one of them already.
    let mut seen: HashSet<String> = resolved
        .iter()
        .filter(|(r, _)| {
            r.reference
                .tag
                .as_deref()
                .is_some_and(|t| t.starts_with("sha256-"))
        })
        .map(|(r, _)| r.reference.to_string())
        .collect();
    // The roots to ask the referrers API about, as (image, subject): the companion's request
    // is made only for an answer (a request made ready for every image was 22 MiB of the
    // 70 MiB that export's heap peaked at with 33,340 images).
    let mut ask_api: Vec<(usize, Digest)> = Vec::new();
    let no_tags = Vec::new();
    for (at, (req, r)) in resolved.iter().enumerate() {
        let key = (
            req.reference.registry.clone(),
            req.reference.repository.clone(),
        );
        let tags = tags_of.get(&key).unwrap_or(&no_tags);
        let roots: Vec<Digest> = std::iter::once(r.digest.clone())
            .chain(r.source_digest.as_deref().cloned())
            .collect();
        // The root and every manifest under it, once each (the objects hold the root too).
        let mut subjects = roots.clone();
        for o in &r.objects {
            if crate::manifest::is_manifest(&o.media_type) && !subjects.contains(&o.digest) {
                subjects.push(o.digest.clone());
            }
        }
        for subject in subjects {
            let prefix = format!("sha256-{}", subject.hex());
            for suffix in ["", ".sig", ".att", ".sbom"] {
                if tags.iter().any(|t| *t == format!("{prefix}{suffix}")) {
                    let c = companion(req, &subject, suffix);
                    if seen.insert(c.reference.to_string()) {
                        out.push(c);
                    }
                }
            }
            if roots.contains(&subject) && !tags.contains(&prefix) {
                ask_api.push((at, subject));
            }
        }
    }
    let from_api: Vec<Requested> = stream::iter(ask_api)
        .map(|(at, subject)| async move {
            let req = &resolved.get(at)?.0;
            let reg = clients.get(&req.reference.registry)?;
            match reg.referrers(&req.reference.repository, &subject).await {
                Ok(Some(index)) => {
                    let mut c = companion(req, &subject, "");
                    c.prefetched = Some(Box::new(index));
                    Some(c)
                }
                Ok(None) => None,
                Err(e) => {
                    reporter.warn(format!(
                        "cannot ask {} for the signatures and attestations of {} (referrers \
                         API): {e}",
                        reg.name(),
                        req.reference
                    ));
                    None
                }
            }
        })
        // In the order asked, so that the bundle's order does not depend on the network.
        .buffered(jobs)
        .filter_map(|c| async move { c })
        .collect()
        .await;
    for c in from_api {
        if seen.insert(c.reference.to_string()) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The request for `req`'s companion about `subject`: the same repository under the tag
/// `sha256-<hex><suffix>`.
fn companion(req: &Requested, subject: &Digest, suffix: &str) -> Requested {
    let mut reference = req.reference.clone();
    reference.tag = Some(format!("sha256-{}{suffix}", subject.hex()));
    reference.digest = None;
    Requested {
        reference,
        namespace: req.namespace.clone(),
        path: req.path.clone(),
        platforms: None,
        subject: Some(Box::new(subject.clone())),
        prefetched: None,
    }
}
