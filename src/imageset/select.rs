//! Selection against registries: [`ImageSet::select`] lists tags (and catalogs) through
//! connected clients, applies the rules and excludes, and resolves every entry to concrete
//! [`Selected`] references in a deterministic order; [`TagLists`] keeps each tag list read
//! in a run so it is asked for once.

use super::model::{ImageRule, ImageSet, RegistrySet, Selected};
use super::tags::{select_tags, TagRule};
use super::yaml::{KeyPath, Source};
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::registry::Registry;
use futures_util::stream::{self, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How many tag listings run at once during [`ImageSet::select`].
const LIST_CONCURRENCY: usize = 8;

/// Where a repository to list came from.
enum Origin<'a> {
    Listed(&'a ImageRule),
    Catalog,
}

struct Job<'a> {
    name: String,
    repository: String,
    rule: &'a TagRule,
    platforms: Vec<String>,
    origin: Origin<'a>,
}

/// One repository's tag list, filled on first use.
type TagListCell = Arc<tokio::sync::OnceCell<Vec<String>>>;

/// The tag lists read in one run, per (registry, repository): each is asked for once, even
/// when several parts of the run need it at the same time.
#[derive(Clone, Default)]
pub struct TagLists {
    lists: Arc<std::sync::Mutex<HashMap<(String, String), TagListCell>>>,
}

impl TagLists {
    /// The tags of `repository` at `client`'s registry, listed on first use. A failed listing
    /// is not kept (the next caller asks again).
    pub async fn list(&self, client: &Registry, repository: &str) -> Result<Vec<String>> {
        let cell = {
            let mut lists = self
                .lists
                .lock()
                .map_err(|_| Error::Failed("tag list cache poisoned".into()))?;
            lists
                .entry((client.name().to_string(), repository.to_string()))
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| client.list_tags(repository))
            .await
            .cloned()
    }
}

impl ImageSet {
    /// The same set with `platforms` as its global list (`--platform` given with a file).
    pub fn with_platforms(&self, platforms: Vec<String>) -> ImageSet {
        ImageSet {
            platforms,
            ..self.clone()
        }
    }

    /// Lists tags (and the catalog where asked) through the given clients (one per
    /// `RegistrySet.registry`, already connected by the caller; a client keyed by the
    /// normalised name, e.g. `docker.io` for `index.docker.io`, is found too) and applies the
    /// rules and excludes.
    ///
    /// Order: registries in file order, images in file order then catalog repositories sorted;
    /// tags newest first by semver for `semver`/`newest`, else lexicographically. The same
    /// reference selected twice appears once. Every listed image whose rule leaves no tag is
    /// reported, together, as a usage error naming the file, line, image and rule; a catalog
    /// repository that has no matching tag (or no tags at all) is skipped.
    pub async fn select(&self, clients: &HashMap<String, Arc<Registry>>) -> Result<Vec<Selected>> {
        self.select_with(clients, &TagLists::default()).await
    }

    /// Like [`select`](Self::select), reading tag lists through `tags`, which keeps them for
    /// the rest of the run (the search for signatures reads the same lists).
    pub async fn select_with(
        &self,
        clients: &HashMap<String, Arc<Registry>>,
        tags: &TagLists,
    ) -> Result<Vec<Selected>> {
        let src = Source {
            file: &self.path,
            text: &self.text,
        };
        let mut out: Vec<Selected> = Vec::new();
        let mut empty: Vec<String> = Vec::new();
        for (ri, reg) in self.registries.iter().enumerate() {
            let client = self.client_for(reg, clients)?;
            let prefix = if reg.namespace.is_empty() {
                String::new()
            } else {
                format!("{}/", reg.namespace)
            };
            let mut jobs: Vec<Job> = reg
                .images
                .iter()
                .map(|img| Job {
                    name: img.name.clone(),
                    repository: img.repository.clone(),
                    rule: &img.rule,
                    platforms: img
                        .platforms
                        .clone()
                        .unwrap_or_else(|| self.platforms.clone()),
                    origin: Origin::Listed(img),
                })
                .collect();
            if let Some(rule) = &reg.catalog {
                let at = KeyPath::default()
                    .key("registries")
                    .index(ri)
                    .key("catalog");
                let repos = client.catalog().await.map_err(|e| match e {
                    Error::NotFound { registry, .. } => Error::registry(
                        registry,
                        src.message(
                            &at,
                            "this registry does not offer a catalog (_catalog: 404)",
                        ),
                    ),
                    e => e,
                })?;
                let listed: HashSet<&str> = reg.images.iter().map(|i| i.name.as_str()).collect();
                let mut names: Vec<String> = repos
                    .iter()
                    .filter_map(|r| {
                        if prefix.is_empty() {
                            Some(r.as_str())
                        } else {
                            r.strip_prefix(&prefix)
                        }
                    })
                    .filter(|n| !listed.contains(n))
                    .filter(|n| !reg.exclude.iter().any(|e| e.excludes_repository(n)))
                    .map(str::to_string)
                    .collect();
                names.sort();
                names.dedup();
                for name in names {
                    let repository = Reference::parse(&format!("{}/{prefix}{name}", reg.registry))
                        .map_err(|e| {
                            Error::registry(
                                &reg.registry,
                                format!("the catalog lists {prefix}{name}: {e}"),
                            )
                        })?
                        .repository;
                    jobs.push(Job {
                        name,
                        repository,
                        rule,
                        platforms: self.platforms.clone(),
                        origin: Origin::Catalog,
                    });
                }
            }

            let listings: Vec<Result<Option<Vec<String>>>> = stream::iter(jobs.iter())
                .map(|job| {
                    let client = Arc::clone(&client);
                    async move {
                        if !job.rule.needs_listing() {
                            return Ok(None);
                        }
                        match tags.list(&client, &job.repository).await {
                            Ok(tags) => Ok(Some(tags)),
                            // A catalog repository without tags: nothing to take.
                            Err(Error::NotFound { .. })
                                if matches!(job.origin, Origin::Catalog) =>
                            {
                                Ok(Some(Vec::new()))
                            }
                            Err(Error::NotFound { registry, .. }) => Err(Error::NotFound {
                                registry,
                                what: format!("repository {}", job.repository),
                            }),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(LIST_CONCURRENCY)
                .collect()
                .await;

            for (job, listing) in jobs.iter().zip(listings) {
                let listed = listing?;
                let all = listed.unwrap_or_default();
                let tags = select_tags(job.rule, &job.name, &all, &reg.exclude);
                if tags.is_empty() {
                    if let Origin::Listed(img) = job.origin {
                        let at = KeyPath::image(img.index.0, img.index.1);
                        let before = job.rule.select(&all);
                        let why = if !job.rule.needs_listing() {
                            "every tag it names is excluded".to_string()
                        } else if all.is_empty() {
                            format!(
                                "the repository {}/{} has no tags",
                                reg.registry, job.repository
                            )
                        } else if before.is_empty() {
                            format!(
                                "matched none of the {} tags of {}/{}",
                                all.len(),
                                reg.registry,
                                job.repository
                            )
                        } else {
                            format!("every tag it selected ({}) is excluded", before.join(", "))
                        };
                        empty.push(src.message(&at, format!("{} ({}): {why}", job.name, job.rule)));
                    }
                    continue;
                }
                for tag in tags {
                    let reference =
                        Reference::parse(&format!("{}/{prefix}{}:{tag}", reg.registry, job.name))?;
                    out.push(Selected {
                        path: if reg.namespace.is_empty() {
                            reference.repository.clone()
                        } else {
                            job.name.clone()
                        },
                        reference,
                        namespace: reg.namespace.clone(),
                        platforms: job.platforms.clone(),
                    });
                }
            }
        }
        if !empty.is_empty() {
            return Err(Error::Usage(empty.join("\n")));
        }
        let mut seen = HashSet::new();
        out.retain(|s| seen.insert(s.reference.to_string()));
        Ok(out)
    }

    fn client_for(
        &self,
        reg: &RegistrySet,
        clients: &HashMap<String, Arc<Registry>>,
    ) -> Result<Arc<Registry>> {
        if let Some(c) = clients.get(&reg.registry) {
            return Ok(Arc::clone(c));
        }
        Reference::parse(&format!("{}/x", reg.registry))
            .ok()
            .and_then(|r| clients.get(&r.registry))
            .map(Arc::clone)
            .ok_or_else(|| {
                Error::Failed(format!(
                    "{}: registry {} is not connected",
                    self.path.display(),
                    reg.registry
                ))
            })
    }
}
