//! Writing the bundle: `bundle.json` (and its signature), the layout (with the docker-archive
//! `manifest.json`), then every object in bundle order, taken from the cache or streamed from the registry.

use super::images::Images;
use super::Contents;
use crate::bundle::docker::{self, MANIFEST_JSON};
use crate::bundle::model::{BundleManifest, FailedImage, Layout, Member};
use crate::bundle::sink::{BundleSink, Taken};
use crate::bundle::{
    BundleWriter, SideFile, BUNDLE_JSON, INDEX_JSON, OCI_LAYOUT, OCI_LAYOUT_CONTENT,
};
use crate::copy::{self, Object};
use crate::digest::{Digest, HashingWriter, VerifyingReader};
use crate::error::{Error, IoContext, Result};
use crate::progress::{human, Reporter};
use crate::registry::Registry;
use crate::signing::Signer;
use crate::store::RegistryObjects;
use crate::units::{count, rfc3339};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
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

/// `index.json`: every image's root manifest, named by its full source reference. Each
/// image is read back as its entry is written ([`Images`]), in the order of the keys as
/// earlier versions wrote them: sorted.
struct Index<'a> {
    images: &'a Images,
    root_sizes: &'a [u64],
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry<'a> {
    annotations: Names<'a>,
    digest: &'a Digest,
    media_type: &'a str,
    size: u64,
}

#[derive(serde::Serialize)]
struct Names<'a> {
    #[serde(rename = "io.containerd.image.name")]
    containerd: &'a str,
    #[serde(rename = "org.opencontainers.image.ref.name")]
    oci: &'a str,
}

impl serde::Serialize for Index<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq, SerializeStruct};
        struct Manifests<'a>(&'a Index<'a>);
        impl serde::Serialize for Manifests<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let Index { images, root_sizes } = self.0;
                let mut seq = s.serialize_seq(Some(images.len().min(root_sizes.len())))?;
                for (img, size) in images.iter().zip(root_sizes.iter()) {
                    let img = img.map_err(S::Error::custom)?;
                    seq.serialize_element(&IndexEntry {
                        annotations: Names {
                            containerd: &img.source,
                            oci: &img.source,
                        },
                        digest: &img.digest,
                        media_type: &img.media_type,
                        size: *size,
                    })?;
                }
                seq.end()
            }
        }
        let mut st = s.serialize_struct("Index", 3)?;
        st.serialize_field("manifests", &Manifests(self))?;
        st.serialize_field("mediaType", crate::manifest::OCI_INDEX)?;
        st.serialize_field("schemaVersion", &2u32)?;
        st.end()
    }
}

/// The images as a JSON list, each read back as it is written.
struct ImageList<'a>(&'a Images);

impl serde::Serialize for ImageList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for img in self.0.iter() {
            seq.serialize_element(&img.map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// The manifests of the objects, for `manifest.json` ([`docker::Stored`]), found through the
/// source's own index. The first that cannot be read back is kept, and fails the export.
struct StoredObjects<'o> {
    objects: &'o RegistryObjects,
    unreadable: RefCell<Option<Error>>,
}

impl<'o> StoredObjects<'o> {
    fn new(objects: &'o RegistryObjects) -> Self {
        StoredObjects {
            objects,
            unreadable: RefCell::new(None),
        }
    }

    fn get(&self, d: &Digest) -> Option<docker::Stored<'o>> {
        let o = self.objects.get(d)?;
        let bytes = match o.manifest_bytes() {
            Ok(b) => b,
            Err(e) => {
                self.unreadable.borrow_mut().get_or_insert(e);
                None
            }
        };
        Some(docker::Stored {
            media_type: &o.media_type,
            bytes: bytes.map(std::borrow::Cow::Owned),
        })
    }

    /// `r`, unless a manifest could not be read back on the way (that error comes first).
    fn checked<T>(self, r: Result<T>) -> Result<T> {
        match self.unreadable.into_inner() {
            Some(e) => Err(e),
            None => r,
        }
    }
}

/// Which images the docker-archive `manifest.json` loads (see [`crate::bundle::docker`]);
/// none when no image of the bundle can be loaded that way. Images left out are named with
/// `-v` when a reporter is given.
fn docker_plan(
    images: &Images,
    platforms: &[String],
    objects: &RegistryObjects,
    reporter: Option<&Reporter>,
) -> Result<docker::Built> {
    let stored = StoredObjects::new(objects);
    let built = docker::build(images.iter(), platforms, &|d| stored.get(d));
    let built = stored.checked(built)?;
    if let Some(r) = reporter {
        for (source, why) in &built.skipped {
            r.detail(format!("{MANIFEST_JSON}: leaving out {source}: {why}"));
        }
    }
    Ok(built)
}

/// `f` given `manifest.json`'s entries, each read again from its manifest as `f` serialises it.
fn with_docker_entries<T>(
    built: &docker::Built,
    images: &Images,
    objects: &RegistryObjects,
    f: impl FnOnce(&docker::Entries) -> Result<T>,
) -> Result<T> {
    let stored = StoredObjects::new(objects);
    let get = |d: &Digest| stored.get(d);
    let tag_of = |n: usize| images.get(n).map(|img| docker::repo_tag(&img));
    let r = f(&built.entries(&tag_of, &get));
    stored.checked(r)
}

/// `bundle.json` as export writes it: `manifest` with its lists of images and blobs made as
/// it is serialised, the images read back ([`Images`]) and the blobs from the objects
/// (`manifest.images` and `manifest.blobs` are left empty), instead of held as second lists
/// (the images of 33,340 images are 15 MiB, 100,000 blobs 5.6 MiB); field for field as
/// [`BundleManifest`] serialises itself.
struct BundleJson<'a> {
    manifest: &'a BundleManifest,
    images: &'a Images,
    objects: &'a [Object],
}

impl<'a> BundleJson<'a> {
    fn new(manifest: &'a BundleManifest, images: &'a Images, objects: &'a [Object]) -> Self {
        BundleJson {
            manifest,
            images,
            objects,
        }
    }
}

/// A [`crate::bundle::model::BlobEntry`], borrowed from an object.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobOf<'a> {
    digest: &'a Digest,
    size: u64,
    media_type: &'a str,
}

impl serde::Serialize for BundleJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Blobs<'a>(&'a [Object]);
        impl serde::Serialize for Blobs<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|o| BlobOf {
                    digest: &o.digest,
                    size: o.size,
                    media_type: &o.media_type,
                }))
            }
        }
        let m = self.manifest;
        let mut st = s.serialize_struct("BundleManifest", 12)?;
        st.serialize_field("format", &m.format)?;
        st.serialize_field("formatVersion", &m.format_version)?;
        st.serialize_field("tool", &m.tool)?;
        st.serialize_field("created", &m.created)?;
        st.serialize_field("platforms", &m.platforms)?;
        st.serialize_field("images", &ImageList(self.images))?;
        st.serialize_field("blobs", &Blobs(self.objects))?;
        st.serialize_field("totalSize", &m.total_size)?;
        st.serialize_field("layout", &m.layout)?;
        // Left out when empty, as `BundleManifest` leaves them.
        if !m.external.is_empty() {
            st.serialize_field("external", &m.external)?;
        }
        if !m.bases.is_empty() {
            st.serialize_field("bases", &m.bases)?;
        }
        if !m.failed.is_empty() {
            st.serialize_field("failed", &m.failed)?;
        }
        st.end()
    }
}

/// The digest and size of `value` as pretty JSON, hashed as it is serialised, not buffered:
/// `bundle.json`, `index.json` and `manifest.json` of 10,000 images are MiBs each. The writer
/// serialises it again ([`append_json`]).
fn json_member<T: serde::Serialize>(value: &T) -> serde_json::Result<Member> {
    let mut h = HashingWriter::new(io::sink());
    serde_json::to_writer_pretty(&mut h, value)?;
    let size = h.written();
    let (_, digest) = h.digest();
    Ok(Member { digest, size })
}

/// Measures `value` as [`json_member`] does and signs the very bytes it measures: they go
/// through a pipe to the signer, on a thread of its own, and are never held whole.
/// [`append_json`] then writes them only if they come out the same again.
fn signed_json_member<T: serde::Serialize>(
    value: &T,
    signer: &Signer,
    comment: &str,
) -> Result<(Member, String)> {
    let (writer, reader) = crate::pipe::pipe(4, 64 << 10);
    std::thread::scope(|scope| {
        let signing = scope.spawn(move || signer.sign(reader, comment));
        let measured = (|| -> io::Result<Member> {
            let mut h = HashingWriter::new(io::BufWriter::with_capacity(64 << 10, writer));
            serde_json::to_writer_pretty(&mut h, value)?;
            io::Write::flush(&mut h)?;
            let size = h.written();
            let (_, digest) = h.digest();
            Ok(Member { digest, size })
        })();
        // The pipe's writing end is gone either way, so the signer has reached its end. Its
        // error comes first: a serialiser whose reader went away only saw a broken pipe.
        let signature = signing
            .join()
            .map_err(|_| Error::Failed("signing bundle.json: the signer panicked".into()))??;
        let member = measured.map_err(|e| Error::Failed(format!("{BUNDLE_JSON}: {e}")))?;
        Ok((member, signature))
    })
}

/// Writes `value` as pretty JSON under `name`, serialised a second time: it must come out as
/// [`json_member`] measured it (`member`), or the bundle fails.
fn append_json<T: serde::Serialize>(
    w: &mut BundleWriter,
    name: &str,
    member: &Member,
    value: &T,
) -> Result<()> {
    w.append_written(name, member.size, &mut |out| {
        let mut h = HashingWriter::new(out);
        serde_json::to_writer_pretty(&mut h, value).map_err(io::Error::from)?;
        if h.digest().1 != member.digest {
            return Err(io::Error::other(format!(
                "{name} came out differently when written than when measured"
            )));
        }
        Ok(())
    })
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
    /// `totalSize / compressedSize`, two decimals.
    compression_ratio: f64,
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

/// Blob bytes per byte on disk, two decimals (gzip layers are stored, so near 1 for them).
fn ratio(total: u64, on_disk: u64) -> f64 {
    if on_disk == 0 {
        return 0.0;
    }
    (total as f64 / on_disk as f64 * 100.0).round() / 100.0
}

/// Writes the bundle; returns what it holds and which images it names as failed.
pub(super) async fn write(
    job: Job,
    contents: Contents,
    root_sizes: &[u64],
    failed: Vec<FailedImage>,
    mut reporter: Reporter,
) -> Result<Written> {
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
    // The objects are held once, by the source the engine reads from: the layout members are
    // written from them (found through its index) and the writer walks them there.
    let source = Arc::new(RegistryObjects::new(objects, clients));
    let objects = source.objects();
    let total_size: u64 = objects.iter().map(|o| o.size).sum();
    let json_failed = |what: &str, e: serde_json::Error| Error::Failed(format!("{what}: {e}"));
    let index = json_member(&Index {
        images: &images,
        root_sizes,
    })
    .map_err(|e| json_failed(INDEX_JSON, e))?;
    let docker = docker_plan(&images, &platforms, &source, Some(&reporter))?;
    let docker_manifest = if docker.is_empty() {
        None
    } else {
        Some(with_docker_entries(&docker, &images, &source, |entries| {
            json_member(entries).map_err(|e| json_failed(MANIFEST_JSON, e))
        })?)
    };
    let manifest = BundleManifest {
        format: crate::bundle::model::FORMAT.into(),
        format_version: crate::bundle::model::FORMAT_VERSION,
        tool: format!("airlock {}", env!("CARGO_PKG_VERSION")),
        created: rfc3339(mtime),
        platforms,
        // Written from `images` and the objects ([`BundleJson`]).
        images: Vec::new(),
        blobs: Vec::new(),
        total_size,
        layout: Layout {
            oci_layout: Member {
                digest: Digest::of(OCI_LAYOUT_CONTENT),
                size: OCI_LAYOUT_CONTENT.len() as u64,
            },
            index,
            docker_manifest,
        },
        external,
        bases,
        failed,
        lookup: Default::default(),
    };
    {
        let check = manifest.check_lists(
            images.len(),
            objects.iter().map(|o| (&o.digest, o.size)),
            &out,
        )?;
        for img in images.iter() {
            check.image(&img?)?;
        }
    }
    // The signature is written beside the bundle and renamed into place with it; an unsigned
    // export removes a stale one, but only once the new bundle is in place, so that a failed
    // export leaves the previous bundle, its checksums and its signature as they were.
    let sig_path = crate::signing::signature_path(&out);
    let sig_partial = PathBuf::from(format!("{}.partial", sig_path.display()));
    // bundle.json is serialised straight into the bundle (at 10,000 images it is 12 MiB of
    // text), and for a signature straight into the signer: never held whole.
    let (side, signed_member) = match &signer {
        Some(s) => {
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (member, sig) = signed_json_member(
                &BundleJson::new(&manifest, &images, objects),
                s,
                &format!("airlock bundle {name} created {}", manifest.created),
            )?;
            crate::cleanup::write(&sig_partial, sig.as_bytes())
                .ctx(|| format!("writing {}", sig_partial.display()))?;
            let side = SideFile::Replace {
                partial: sig_partial.clone(),
                dest: sig_path.clone(),
            };
            (side, Some(member))
        }
        None => (SideFile::Remove(sig_path.clone()), None),
    };

    // The layout members go first, before the engine's own structures exist: at 10,000
    // images these buffers and those structures are each tens of MiB, and need not be held
    // together.
    let out2 = out.clone();
    let root_sizes = root_sizes.to_vec();
    type Started = (BundleWriter, BundleManifest, Images);
    let blob_count = objects.len();
    let objects = source.clone();
    let w = tokio::task::spawn_blocking(move || -> Result<Started> {
        let mut w = BundleWriter::create(&out2, split, mtime)?;
        let json = BundleJson::new(&manifest, &images, objects.objects());
        let member = match signed_member {
            // As it was signed: written only if it comes out the same again.
            Some(m) => m,
            None => json_member(&json).map_err(|e| Error::Failed(format!("{BUNDLE_JSON}: {e}")))?,
        };
        append_json(&mut w, BUNDLE_JSON, &member, &json)?;
        w.append(
            OCI_LAYOUT,
            OCI_LAYOUT_CONTENT.len() as u64,
            &mut &OCI_LAYOUT_CONTENT[..],
        )?;
        let layout = &manifest.layout;
        let index = Index {
            images: &images,
            root_sizes: &root_sizes,
        };
        append_json(&mut w, INDEX_JSON, &layout.index, &index)?;
        if let Some(m) = &layout.docker_manifest {
            with_docker_entries(&docker, &images, &objects, |entries| {
                append_json(&mut w, MANIFEST_JSON, m, entries)
            })?;
        }
        drop(docker);
        Ok((w, manifest, images))
    })
    .await
    .map_err(|e| Error::Failed(format!("bundle writer: {e}")))
    .and_then(|r| r);
    let (mut w, manifest, images) = match w {
        Ok(w) => w,
        Err(e) => {
            crate::cleanup::remove(&sig_partial);
            return Err(e);
        }
    };

    // What the end of the export reports is kept. The images are not: `bundle.json`,
    // `index.json` and `manifest.json` are written, and the engine puts the blobs in bundle
    // order without them.
    let BundleManifest {
        external, failed, ..
    } = manifest;
    let counts = Written {
        images: images.len(),
        blobs: blob_count,
        external_blobs: external.len(),
        external_size: external.iter().map(|x| x.size).sum(),
        failed,
    };
    drop(external);
    let summary_images: Vec<SummaryImage> = if json {
        let read: Result<Vec<SummaryImage>> = images
            .iter()
            .map(|i| {
                i.map(|i| SummaryImage {
                    source: i.source.into(),
                    digest: i.digest.to_string(),
                    platforms: i.platforms.into(),
                    size: i.size,
                })
            })
            .collect();
        match read {
            Ok(s) => s,
            Err(e) => {
                // The writer goes with its partial volumes; the signature's goes too.
                crate::cleanup::remove(&sig_partial);
                return Err(e);
            }
        }
    } else {
        Vec::new()
    };
    drop(images);
    crate::memory::give_back();
    // The engine (registries → this bundle) fetches blobs `--jobs` at a time, in bundle
    // order; the writer thread takes each when its turn comes (see `bundle::sink`).
    let (sink, mut inbox) = BundleSink::new(source.clone(), &out, &cache, cache_all, jobs);
    reporter.start_bar(total_size, "writing bundle");
    let bar = reporter.clone();
    let objects = source.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>> {
        for o in objects.objects() {
            let name = o.digest.layout_path();
            if let Some(bytes) = o.manifest_bytes()? {
                let mut r = VerifyingReader::new(&bytes[..], &o.digest, o.size);
                w.append(&name, o.size, &mut r)?;
                bar.inc(o.size);
                continue;
            }
            let (r, taken) = inbox.take(o)?;
            let mut r = crate::progress::Counting::new(r, bar.clone());
            let how = crate::bundle::writer::Compression::for_media_type(&o.media_type);
            if let Err(e) = w.append_as(&name, o.size, &mut r, how) {
                // A damaged cache entry must not poison the next run.
                if let Taken::Cached { path, .. } = taken {
                    let _ = std::fs::remove_file(&path);
                }
                return Err(e);
            }
        }
        drop(inbox);
        w.finish_with(std::slice::from_ref(&side))
    });
    // The engine's own messages are not an export's: it reports through the writer's bar.
    let pushed = copy::push_objects(
        source.as_ref(),
        sink.as_ref(),
        source.objects(),
        jobs,
        &Reporter::new(true, false),
    )
    .await;
    // Whatever the engine did not deliver fails the writer rather than leaving it waiting.
    sink.close();
    let written = writer
        .await
        .map_err(|e| Error::Failed(format!("bundle writer: {e}")))
        .and_then(|r| r)
        .and_then(|files| {
            // The writer finished, so every blob arrived; the engine's account must agree.
            pushed.map(|()| files)
        });
    let (downloaded, cached) = sink.counters();
    let written = written.map(|files| (files, downloaded, cached));
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
        "wrote {} ({}, {}, {} in {} on disk, ratio {:.2}; downloaded {}, {} from cache; the \
         cache {} holds {} in {})",
        out.display(),
        count(counts.images as u64, "image", "images"),
        count(counts.blobs as u64, "blob", "blobs"),
        human(total_size),
        human(compressed),
        ratio(total_size, compressed),
        human(downloaded),
        human(cached),
        cache.display(),
        human(cache_now.bytes),
        count(cache_now.entries as u64, "entry", "entries")
    ));
    if json {
        let summary = Summary {
            bundle: out.display().to_string(),
            files: files.iter().map(|f| f.display().to_string()).collect(),
            images: summary_images,
            blobs: counts.blobs,
            total_size,
            compressed_size: compressed,
            compression_ratio: ratio(total_size, compressed),
            downloaded_bytes: downloaded,
            cached_bytes: cached,
            cache_size: cache_now.bytes,
            cache_entries: cache_now.entries,
            external_blobs: counts.external_blobs,
            external_size: counts.external_size,
            failed: counts.failed.clone(),
        };
        crate::progress::print_json(&summary)?;
    }
    Ok(counts)
}

/// What a finished export reports.
pub(super) struct Written {
    pub images: usize,
    blobs: usize,
    external_blobs: usize,
    external_size: u64,
    /// The images that could not be exported (`--keep-going`), named in the bundle.
    pub failed: Vec<FailedImage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Serialises as a different digit each time: a value that does not come out the same
    /// twice.
    struct Drifting(Cell<u32>);

    impl serde::Serialize for Drifting {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            let n = self.0.get();
            self.0.set(n + 1);
            s.serialize_u32(n % 10)
        }
    }

    /// `bundle.json` written from the images set aside and the objects is what
    /// `BundleManifest` writes with the same images and blobs listed, with and without the
    /// fields left out when empty.
    #[test]
    fn bundle_json_from_the_images_and_objects_is_the_manifest_with_its_lists() {
        use crate::bundle::model::{Base, BlobEntry, ExternalBlob, ImageEntry};
        use crate::commands::export::images::Collect;
        let home = copy::Home::new("reg.test", "lib/app");
        let objects: Vec<Object> = [&b"config"[..], b"layer"]
            .iter()
            .map(|bytes| Object {
                digest: Digest::of(bytes),
                size: bytes.len() as u64,
                media_type: crate::shared::shared("application/vnd.oci.image.layer.v1.tar"),
                inline: None,
                home: home.clone(),
            })
            .collect();
        let image = ImageEntry {
            source: "reg.test/lib/app:1.0".into(),
            registry: "reg.test".into(),
            namespace: "".into(),
            path: "lib/app".into(),
            tag: "1.0".into(),
            digest: objects[1].digest.clone(),
            source_digest: None,
            subject: None,
            media_type: crate::manifest::OCI_MANIFEST.into(),
            platforms: vec!["linux/amd64".into()].into(),
            size: 11,
            blobs: objects.iter().map(|o| o.digest.clone()).collect(),
        };
        let mut images = Images::default();
        images.add(image.clone()).unwrap();
        let member = Member {
            digest: Digest::of(b"m"),
            size: 1,
        };
        let mut manifest = BundleManifest {
            format: crate::bundle::model::FORMAT.into(),
            format_version: crate::bundle::model::FORMAT_VERSION,
            tool: "airlock test".into(),
            created: rfc3339(0),
            platforms: vec!["linux/amd64".into()],
            images: Vec::new(),
            blobs: Vec::new(),
            total_size: 11,
            layout: Layout {
                oci_layout: member.clone(),
                index: member.clone(),
                docker_manifest: Some(member),
            },
            external: Vec::new(),
            bases: Vec::new(),
            failed: Vec::new(),
            lookup: Default::default(),
        };
        let listed = |m: &BundleManifest| {
            let mut m = m.clone();
            m.images = vec![Arc::new(image.clone())];
            m.blobs = objects
                .iter()
                .map(|o| BlobEntry {
                    digest: o.digest.clone(),
                    size: o.size,
                    media_type: o.media_type.clone(),
                })
                .collect();
            serde_json::to_string_pretty(&m).unwrap()
        };
        let from_objects = |m: &BundleManifest| {
            serde_json::to_string_pretty(&BundleJson::new(m, &images, &objects)).unwrap()
        };
        assert_eq!(from_objects(&manifest), listed(&manifest));
        manifest.external.push(ExternalBlob {
            digest: Digest::of(b"x"),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            bundle: Digest::of(b"base"),
        });
        manifest.bases.push(Base {
            bundle_json: Digest::of(b"base"),
            created: rfc3339(0),
            name: "base.tar.zst".into(),
        });
        manifest.failed.push(FailedImage {
            source: "reg.test/lib/gone:1".into(),
            error: "not found".into(),
        });
        let full = from_objects(&manifest);
        assert_eq!(full, listed(&manifest));
        for field in [
            "\"external\"",
            "\"bases\"",
            "\"failed\"",
            "\"blobs\"",
            "reg.test/lib/app:1.0",
        ] {
            assert!(full.contains(field), "{field} in {full}");
        }
    }

    #[test]
    fn a_layout_member_is_measured_then_written_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.zst");
        let value = serde_json::json!({"manifests": [{"digest": "x", "size": 1}]});
        let member = json_member(&value).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(member.size, pretty.len() as u64);
        assert_eq!(member.digest, Digest::of(&pretty));
        let mut w = BundleWriter::create(&path, None, 0).unwrap();
        append_json(&mut w, INDEX_JSON, &member, &value).unwrap();
        w.finish().unwrap();
        let mut tar = tar::Archive::new(
            zstd::stream::read::Decoder::new(std::fs::File::open(&path).unwrap()).unwrap(),
        );
        let mut entries = tar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        assert_eq!(bytes, pretty);
    }

    /// What a signed export writes as `bundle.json` (measured, then written only if it comes
    /// out the same) is exactly what the signature covers, though it is never held whole.
    #[test]
    fn a_signed_member_is_what_the_signature_covers() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public, _) = crate::signing::keygen(&dir.path().join("k"), true, false).unwrap();
        let signer = Signer::load(&key).unwrap();
        // Several pipe pieces' worth.
        let value: Vec<serde_json::Value> = (0..5000)
            .map(|i| serde_json::json!({"digest": format!("sha256:{i:064}"), "size": i}))
            .collect();
        let (member, signature) = signed_json_member(&value, &signer, "a test").unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert!(pretty.len() > 4 * (64 << 10));
        assert_eq!(member.size, pretty.len() as u64);
        assert_eq!(member.digest, Digest::of(&pretty));
        let base = dir.path().join("b.tar.zst");
        std::fs::write(crate::signing::signature_path(&base), signature).unwrap();
        let (_, comment) = crate::signing::verify(&base, &pretty[..], &public).unwrap();
        assert_eq!(comment, "a test");
        let mut altered = pretty.clone();
        altered[pretty.len() / 2] ^= 1;
        let e = crate::signing::verify(&base, &altered[..], &public)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn a_layout_member_that_comes_out_differently_fails_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.zst");
        let value = Drifting(Cell::new(0));
        let member = json_member(&value).unwrap();
        let mut w = BundleWriter::create(&path, None, 0).unwrap();
        let e = append_json(&mut w, INDEX_JSON, &member, &value)
            .unwrap_err()
            .to_string();
        assert!(e.contains("index.json came out differently"), "{e}");
        drop(w);
        assert!(!path.exists(), "no bundle is left behind");
    }
}
