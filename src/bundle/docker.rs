//! The docker-archive `manifest.json` member: one entry per loadable image (`Config`,
//! `RepoTags`, `Layers` pointing at `blobs/sha256/…`), so that `docker load` and `podman load`
//! read a bundle with many images as it is. Which images get an entry, and the check `verify`
//! makes of the member.

use super::model::ImageEntry;
use crate::digest::Digest;
use crate::error::Result;
use crate::manifest::{self, Kind};
use serde::{Deserialize, Serialize};
use std::borrow::{Borrow, Cow};
use std::collections::HashMap;

pub const MANIFEST_JSON: &str = "manifest.json";

/// The platform picked from an index when no `--platform` was given at export.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

const IMAGE_CONFIGS: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Layer media types a docker-archive loader unpacks (plain, gzip or zstd tar).
const IMAGE_LAYERS: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// One image of `manifest.json`, as `docker save` writes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DockerEntry {
    pub config: String,
    pub repo_tags: Vec<String>,
    pub layers: Vec<String>,
}

/// One image of `manifest.json` as export writes it: [`DockerEntry`]'s JSON, held as digests
/// (a layout path each would be a string of 77 bytes, for every layer of 10,000 images).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadEntry {
    pub config: Digest,
    pub repo_tags: Vec<String>,
    pub layers: Vec<Digest>,
}

impl Serialize for LoadEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Paths<'a>(&'a [Digest]);
        impl Serialize for Paths<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(Digest::layout_path))
            }
        }
        let mut st = s.serialize_struct("DockerEntry", 3)?;
        st.serialize_field("Config", &self.config.layout_path())?;
        st.serialize_field("RepoTags", &self.repo_tags)?;
        st.serialize_field("Layers", &Paths(&self.layers))?;
        st.end()
    }
}

/// What the bundle stores, by digest: the media type, and the bytes for manifests.
#[derive(Clone)]
pub struct Stored<'a> {
    pub media_type: &'a str,
    pub bytes: Option<Cow<'a, [u8]>>,
}

/// The entries of `manifest.json`, planned, and, for messages, the images left out and why.
/// An entry is held as the image manifest it loads and the images that tag it; its config,
/// layers and tags are read again from the manifest and the images each time it is written
/// ([`Built::entries`]). Held whole, the entries of 33,340 images were 11 MiB.
pub struct Built {
    /// Per entry, in order: the image manifest it loads.
    manifests: Vec<Digest>,
    /// The images (by their place in the list given to [`build`]) that tag each entry, entry
    /// after entry; each entry's run starts at its place in `starts`.
    tagged: Vec<u32>,
    starts: Vec<u32>,
    pub skipped: Vec<(String, String)>,
}

/// One entry per distinct image manifest that a docker-archive loader can load, in the order
/// of `images`: several tags of one manifest share its entry. For an index, the child of the
/// first of `platforms`, else of linux/amd64. Companions (signatures, SBOMs), artifacts and
/// images with an object this bundle does not carry (`--since`) are left out.
pub fn build<'a, I: Borrow<ImageEntry>>(
    images: impl IntoIterator<Item = Result<I>>,
    platforms: &[String],
    stored: &dyn Fn(&Digest) -> Option<Stored<'a>>,
) -> Result<Built> {
    let wanted = platforms
        .first()
        .map(String::as_str)
        .unwrap_or(DEFAULT_PLATFORM);
    let mut manifests: Vec<Digest> = Vec::new();
    let mut by_manifest: HashMap<Digest, u32> = HashMap::new();
    // (entry, image) for every tagged image, in the order of the images.
    let mut tags: Vec<(u32, u32)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, img) in images.into_iter().enumerate() {
        let img = img?;
        let img: &ImageEntry = img.borrow();
        if img.subject.is_some() {
            continue;
        }
        let digest = match loadable(img, wanted, stored) {
            Ok(d) => d,
            Err(why) => {
                skipped.push((img.source.to_string(), why));
                continue;
            }
        };
        let at = *by_manifest.entry(digest).or_insert_with_key(|d| {
            manifests.push(d.clone());
            manifests.len() as u32 - 1
        });
        if !img.tag.is_empty() {
            tags.push((at, i as u32));
        }
    }
    drop(by_manifest);
    manifests.shrink_to_fit();
    // Stable: each entry's tags stay in the order of the images.
    tags.sort_by_key(|&(entry, _)| entry);
    let mut starts = Vec::with_capacity(manifests.len() + 1);
    let mut next = 0;
    for entry in 0..manifests.len() as u32 {
        starts.push(next);
        while tags.get(next as usize).is_some_and(|&(e, _)| e == entry) {
            next += 1;
        }
    }
    starts.push(next);
    Ok(Built {
        manifests,
        tagged: tags.into_iter().map(|(_, image)| image).collect(),
        starts,
        skipped,
    })
}

/// How `manifest.json` names a tagged image: `REGISTRY/REPOSITORY:TAG`.
pub fn repo_tag(img: &ImageEntry) -> String {
    format!("{}/{}:{}", img.registry, img.source_repository(), img.tag)
}

impl Built {
    /// How many entries `manifest.json` has.
    pub fn len(&self) -> usize {
        self.manifests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty()
    }

    /// The entries as `manifest.json` holds them, made one at a time as they are written:
    /// `tag_of` names image `n` of those given to [`build`] ([`repo_tag`]), and `stored` is
    /// what `build` was given.
    pub fn entries<'b>(
        &'b self,
        tag_of: &'b dyn Fn(usize) -> Result<String>,
        stored: &'b dyn Fn(&Digest) -> Option<Stored<'b>>,
    ) -> Entries<'b> {
        Entries {
            built: self,
            tag_of,
            stored,
        }
    }
}

/// `manifest.json`'s list of entries ([`Built::entries`]); each is read again from its
/// manifest as it is serialised.
pub struct Entries<'b> {
    built: &'b Built,
    tag_of: &'b dyn Fn(usize) -> Result<String>,
    stored: &'b dyn Fn(&Digest) -> Option<Stored<'b>>,
}

impl Entries<'_> {
    /// Entry `n`: its config and layers from its image manifest, and its tags (each once, in
    /// the order of the images).
    pub fn get(&self, n: usize) -> std::result::Result<LoadEntry, String> {
        let Some(manifest) = self.built.manifests.get(n) else {
            return Err(format!("{MANIFEST_JSON} has no entry {n}"));
        };
        let mut entry = load_parts(manifest, self.stored)?;
        let run = |i: usize| self.built.starts.get(i).map_or(0, |&s| s as usize);
        let tagged = self
            .built
            .tagged
            .get(run(n)..run(n + 1))
            .unwrap_or_default();
        for &i in tagged {
            let tag = (self.tag_of)(i as usize).map_err(|e| e.to_string())?;
            if !entry.repo_tags.contains(&tag) {
                entry.repo_tags.push(tag);
            }
        }
        Ok(entry)
    }
}

impl Serialize for Entries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.built.len()))?;
        for n in 0..self.built.len() {
            seq.serialize_element(&self.get(n).map_err(S::Error::custom)?)?;
        }
        seq.end()
    }
}

/// The image manifest of `img` to load, or why there is none.
fn loadable<'a>(
    img: &ImageEntry,
    wanted: &str,
    stored: &dyn Fn(&Digest) -> Option<Stored<'a>>,
) -> std::result::Result<Digest, String> {
    let what = format!("manifest {}", img.digest);
    let image_manifest = match manifest::kind(&img.media_type) {
        Some(Kind::Image) => img.digest.clone(),
        Some(Kind::Index) => {
            let (mt, bytes) = manifest_of(&img.digest, stored)?;
            let children = manifest::children(&bytes, mt, &what).map_err(|e| e.to_string())?;
            children
                .into_iter()
                .find(|c| {
                    manifest::kind(&c.media_type) == Some(Kind::Image)
                        && c.platform
                            .as_deref()
                            .is_some_and(|p| manifest::platform_matches(p, wanted))
                })
                .map(|c| c.digest)
                .ok_or_else(|| format!("the index has no {wanted} image"))?
        }
        None => return Err(format!("{} is not an image", img.media_type)),
    };
    load_parts(&image_manifest, stored)?;
    Ok(image_manifest)
}

/// The media type and bytes of manifest `d`, or why they are not there.
fn manifest_of<'a>(
    d: &Digest,
    stored: &dyn Fn(&Digest) -> Option<Stored<'a>>,
) -> std::result::Result<(&'a str, Cow<'a, [u8]>), String> {
    match stored(d) {
        Some(Stored {
            media_type,
            bytes: Some(b),
        }) => Ok((media_type, b)),
        _ => Err(format!("manifest {d} is not carried in this bundle")),
    }
}

/// What an entry of `manifest.json` loads from `image_manifest` (without tags): its config
/// and layers, or why it cannot be loaded.
fn load_parts<'a>(
    image_manifest: &Digest,
    stored: &dyn Fn(&Digest) -> Option<Stored<'a>>,
) -> std::result::Result<LoadEntry, String> {
    let (mt, bytes) = manifest_of(image_manifest, stored)?;
    let what = format!("manifest {image_manifest}");
    let parts = manifest::children(&bytes, mt, &what).map_err(|e| e.to_string())?;
    let Some((config, layers)) = parts.split_first() else {
        return Err(format!("{what} has no config"));
    };
    if !IMAGE_CONFIGS.contains(&config.media_type.as_str()) {
        return Err(format!(
            "{what}: config {} is not an image config (an artifact)",
            config.media_type
        ));
    }
    if let Some(l) = layers
        .iter()
        .find(|l| !IMAGE_LAYERS.contains(&l.media_type.as_str()))
    {
        return Err(format!(
            "{what}: layer media type {} is not loadable",
            l.media_type
        ));
    }
    if let Some(missing) = parts.iter().find(|c| stored(&c.digest).is_none()) {
        return Err(format!(
            "{what}: blob {} is not carried in this bundle (an earlier bundle has it)",
            missing.digest
        ));
    }
    Ok(LoadEntry {
        config: config.digest.clone(),
        repo_tags: Vec::new(),
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
    })
}

/// The image configs a bundle carries, with the layer lists that go with them: what
/// [`check`] holds `manifest.json` against. Each pair is kept as one digest (of the config's
/// path and its layers' paths), not as the paths: 77 bytes a path, for every layer of 30,000
/// images, were 18 MiB.
#[derive(Default)]
pub struct Loadable {
    configs: Vec<Digest>,
    images: Vec<Digest>,
}

impl Loadable {
    /// A config and its layers, as an image manifest of the bundle names them.
    pub fn add<'d>(&mut self, config: &Digest, layers: impl IntoIterator<Item = &'d Digest>) {
        let paths: Vec<String> = layers.into_iter().map(Digest::layout_path).collect();
        self.images.push(image_key(&config.layout_path(), &paths));
        self.configs.push(config.clone());
    }

    /// Sorted and deduplicated, for lookups.
    fn ready(mut self) -> Loadable {
        for v in [&mut self.configs, &mut self.images] {
            v.sort_unstable();
            v.dedup();
        }
        self
    }
}

/// The digest of a `manifest.json` entry's config and layers, as their paths are written
/// (each after its length: no two lists of paths give the same text).
fn image_key(config: &str, layers: &[String]) -> Digest {
    let mut text = String::with_capacity(82 * (layers.len() + 1));
    for p in std::iter::once(config).chain(layers.iter().map(String::as_str)) {
        text.push_str(&p.len().to_string());
        text.push(':');
        text.push_str(p);
    }
    Digest::of(text.as_bytes())
}

/// Where the entries of a `manifest.json` name other than configs of the bundle with their
/// own layers (read as a stream: each entry is checked as it is parsed).
pub fn check(manifest_json: impl std::io::Read, loadable: Loadable) -> Vec<String> {
    struct Entries {
        loadable: Loadable,
        errors: Vec<String>,
    }
    impl Entries {
        fn check(&mut self, n: usize, e: DockerEntry) {
            let name = e
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| format!("entry {n}"));
            let config = e
                .config
                .strip_prefix("blobs/sha256/")
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                .filter(|d| self.loadable.configs.binary_search(d).is_ok());
            let key = image_key(&e.config, &e.layers);
            match config {
                Some(_) if self.loadable.images.binary_search(&key).is_ok() => {}
                Some(_) => self.errors.push(format!(
                    "{MANIFEST_JSON}: {name}: its layers are not those of its config's image"
                )),
                None => self.errors.push(format!(
                    "{MANIFEST_JSON}: {name}: config {} is not an image config of this bundle",
                    e.config
                )),
            }
        }
    }
    impl<'de> serde::de::Visitor<'de> for &mut Entries {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of images")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<(), A::Error> {
            let mut n = 0;
            while let Some(e) = seq.next_element::<DockerEntry>()? {
                n += 1;
                self.check(n, e);
            }
            Ok(())
        }
    }
    use serde::Deserializer as _;
    let mut entries = Entries {
        loadable: loadable.ready(),
        errors: Vec::new(),
    };
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(manifest_json));
    if let Err(e) = de.deserialize_seq(&mut entries).and_then(|()| de.end()) {
        return vec![format!("{MANIFEST_JSON} is not valid: {e}")];
    }
    entries.errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn image(source: &str, tag: &str, digest: &Digest, media_type: &str) -> Arc<ImageEntry> {
        Arc::new(ImageEntry {
            source: source.into(),
            registry: "reg.test".into(),
            namespace: "".into(),
            path: "lib/app".into(),
            tag: tag.into(),
            digest: digest.clone(),
            source_digest: None,
            subject: None,
            media_type: media_type.into(),
            platforms: Box::default(),
            size: 0,
            blobs: vec![digest.clone()].into(),
        })
    }

    fn manifest_bytes(config: &Digest, config_mt: &str, layer: &Digest) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": config_mt, "digest": config.text().as_str(), "size": 2},
            "layers": [{"mediaType": IMAGE_LAYERS[1], "digest": layer.text().as_str(), "size": 3}],
        }))
        .unwrap_or_default()
    }

    #[test]
    fn picks_the_platform_merges_tags_and_skips_artifacts_and_external_blobs() {
        let (cfg_amd, cfg_arm, layer) = (Digest::of(b"ca"), Digest::of(b"cr"), Digest::of(b"l"));
        let amd = manifest_bytes(&cfg_amd, IMAGE_CONFIGS[0], &layer);
        let arm = manifest_bytes(&cfg_arm, IMAGE_CONFIGS[1], &layer);
        let (amd_d, arm_d) = (Digest::of(&amd), Digest::of(&arm));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": manifest::OCI_MANIFEST, "digest": arm_d.text().as_str(), "size": arm.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": manifest::OCI_MANIFEST, "digest": amd_d.text().as_str(), "size": amd.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": manifest::OCI_MANIFEST, "digest": amd_d.text().as_str(), "size": amd.len(),
                 "platform": {"os": "unknown", "architecture": "unknown"}},
            ],
        }))
        .unwrap_or_default();
        let index_d = Digest::of(&index);
        let art_cfg = Digest::of(b"art");
        let art = manifest_bytes(&art_cfg, "application/vnd.example+json", &layer);
        let art_d = Digest::of(&art);
        let mut stored = HashMap::new();
        for (d, mt, b) in [
            (&amd_d, manifest::OCI_MANIFEST, Some(&amd[..])),
            (&arm_d, manifest::OCI_MANIFEST, Some(&arm[..])),
            (&index_d, manifest::OCI_INDEX, Some(&index[..])),
            (&art_d, manifest::OCI_MANIFEST, Some(&art[..])),
            (&cfg_amd, IMAGE_CONFIGS[0], None),
            (&cfg_arm, IMAGE_CONFIGS[1], None),
            (&art_cfg, "application/vnd.example+json", None),
        ] {
            stored.insert(
                d,
                Stored {
                    media_type: mt,
                    bytes: b.map(Cow::Borrowed),
                },
            );
        }
        let images = [
            image(
                "reg.test/lib/app:latest",
                "latest",
                &index_d,
                manifest::OCI_INDEX,
            ),
            image("reg.test/lib/app:1.0", "1.0", &index_d, manifest::OCI_INDEX),
            image(
                "reg.test/lib/app:art",
                "art",
                &art_d,
                manifest::OCI_MANIFEST,
            ),
        ];
        // The layer is external: nothing is loadable.
        let get = |d: &Digest| stored.get(d).cloned();
        let tag_of = |n: usize| Ok(repo_tag(&images[n]));
        let built = build(images.iter().map(|i| Ok(&**i)), &[], &get).unwrap();
        assert!(built.is_empty());
        assert_eq!(built.skipped.len(), 3);

        stored.insert(
            &layer,
            Stored {
                media_type: IMAGE_LAYERS[1],
                bytes: None,
            },
        );
        let get = |d: &Digest| stored.get(d).cloned();
        let built = build(images.iter().map(|i| Ok(&**i)), &[], &get).unwrap();
        let expected = vec![DockerEntry {
            config: cfg_amd.layout_path(),
            repo_tags: vec![
                "reg.test/lib/app:latest".into(),
                "reg.test/lib/app:1.0".into(),
            ],
            layers: vec![layer.layout_path()],
        }];
        // Written as `docker save` writes it, byte for byte.
        let entries = built.entries(&tag_of, &get);
        assert_eq!(
            serde_json::to_string_pretty(&entries).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap()
        );
        assert_eq!(built.skipped.len(), 1, "the artifact");

        let arm64 = build(
            images.iter().map(|i| Ok(&**i)),
            &["linux/arm64".into()],
            &get,
        )
        .unwrap();
        assert_eq!(arm64.len(), 1);
        assert_eq!(arm64.entries(&tag_of, &get).get(0).unwrap().config, cfg_arm);
        let none = build(
            images.iter().map(|i| Ok(&**i)),
            &["linux/s390x".into()],
            &get,
        )
        .unwrap();
        assert!(none.is_empty());

        let known = || {
            let mut l = Loadable::default();
            l.add(&cfg_amd, [&layer]);
            l.add(&cfg_arm, []);
            l
        };
        let bytes = serde_json::to_vec_pretty(&entries).unwrap();
        assert!(check(&bytes[..], known()).is_empty());
        let errors = check(&bytes[..], Loadable::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("is not an image config of this bundle"));
        // The right config with other layers.
        let mut other = Loadable::default();
        other.add(&cfg_amd, [&cfg_arm]);
        let errors = check(&bytes[..], other);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("its layers are not those"), "{errors:?}");
        assert_eq!(check(&b"{"[..], known()).len(), 1);
        assert_eq!(check(&b"[] []"[..], known()).len(), 1);
    }
    #[test]
    fn no_two_lists_of_paths_give_one_image_key() {
        let k = |c: &str, l: &[&str]| {
            image_key(c, &l.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let keys = [
            k("c", &["a", "b"]),
            k("c", &["ab"]),
            k("c", &["a\nb"]),
            k("ca", &["b"]),
            k("c", &["a", "b", ""]),
            k("c", &[]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(k("c", &["a", "b"]), keys[0]);
    }
}
