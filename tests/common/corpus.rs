//! Test content: layers, descriptors, platforms, image configs, and the deterministic corpus
//! of every manifest kind airlock must carry ([`build_corpus`]).

use serde_json::json;
use serde_json::Value;

use super::media::{
    ARTIFACT_CONFIG, ARTIFACT_LAYER, DOCKER_LAYER_GZIP, DOCKER_LIST, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
};
use super::raw::RawClient;
use super::registry::TestRegistry;
use super::util::{derive_seed, gzip_stored, random_bytes, sha256_digest, tar_of};

/// The namespace the corpus puts most repositories under (see [`build_corpus`]).
pub const CORPUS_NAMESPACE: &str = "src";

// ---------------------------------------------------------------------------------------------
// Layers, descriptors, platforms
// ---------------------------------------------------------------------------------------------

/// A layer: its uncompressed tar (for `diff_ids`) and the blob bytes that get pushed.
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: Vec<u8>,
    /// The blob as stored in the registry: `gzip_stored(tar)` or `tar` itself.
    pub blob: Vec<u8>,
    pub gzip: bool,
}

impl Layer {
    pub fn from_tar(tar: Vec<u8>, gzip: bool) -> Layer {
        let blob = if gzip { gzip_stored(&tar) } else { tar.clone() };
        Layer { tar, blob, gzip }
    }

    pub fn from_files(files: &[(&str, &[u8])], gzip: bool) -> Layer {
        Layer::from_tar(tar_of(files), gzip)
    }

    pub fn digest(&self) -> String {
        sha256_digest(&self.blob)
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }

    pub fn diff_id(&self) -> String {
        sha256_digest(&self.tar)
    }

    pub fn oci_media_type(&self) -> &'static str {
        if self.gzip {
            OCI_LAYER_GZIP
        } else {
            OCI_LAYER_TAR
        }
    }

    pub fn docker_media_type(&self) -> &'static str {
        if self.gzip {
            DOCKER_LAYER_GZIP
        } else {
            "application/vnd.docker.image.rootfs.diff.tar"
        }
    }
}

/// A layer holding one file of `n` pseudo-random bytes (the tar adds ~1.5 KiB).
pub fn random_layer(seed: u64, n: usize, gzip: bool) -> Layer {
    let data = random_bytes(seed, n);
    Layer::from_files(&[("data.bin", &data)], gzip)
}

/// A small layer with a few text files whose content depends on `seed` and `label`.
pub fn small_layer(seed: u64, label: &str, gzip: bool) -> Layer {
    let s = derive_seed(seed, label);
    let a = format!("layer {label} seed {seed}\n");
    let b = random_bytes(s, 2048 + (s % 2048) as usize);
    let path = format!("opt/{}/data.bin", label.replace(['/', ':'], "_"));
    Layer::from_files(&[("etc/airlock-test.txt", a.as_bytes()), (&path, &b)], gzip)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
        }
    }

    pub fn with_media_type(mut self, media_type: &str) -> Descriptor {
        self.media_type = media_type.to_string();
        self
    }

    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    /// "os/arch[/variant]" as `--platform` spells it.
    pub fn spec(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

/// Serialise with a 3-space indent: valid JSON, deliberately not what any tool would produce
/// when re-serialising, so a changed digest proves bytes were not preserved.
pub fn pretty3(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("serialise manifest");
    out
}

/// The kind of single-image manifest to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Oci,
    Docker,
}

/// A manifest that was pushed, with everything a test needs to check it elsewhere.
#[derive(Clone, Debug)]
pub struct PushedManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// Platform when this is a single-platform image manifest.
    pub platform: Option<Platform>,
    /// Child manifests (for an index/list), recursively flattened.
    pub children: Vec<PushedManifest>,
    /// Every blob (configs and layers) below this manifest, including children's, deduplicated.
    pub blobs: Vec<Descriptor>,
}

impl PushedManifest {
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size(),
        }
    }

    pub fn blob_digests(&self) -> Vec<String> {
        self.blobs.iter().map(|d| d.digest.clone()).collect()
    }
}

/// A valid-ish image config (what skopeo and runtimes need: architecture, os, rootfs.diff_ids).
pub fn image_config(platform: &Platform, layers: &[Layer], labels: &[(&str, &str)]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(Layer::diff_id).collect();
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut cfg = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = &platform.variant {
        cfg["variant"] = json!(v);
    }
    serde_json::to_vec(&cfg).expect("serialise config")
}

// ---------------------------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------------------------

/// One tagged top-level image of the corpus.
#[derive(Clone, Debug)]
pub struct CorpusImage {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    /// The pushed manifest (bytes, children, all blobs below it).
    pub manifest: PushedManifest,
}

impl CorpusImage {
    /// `repo:tag`
    pub fn name(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    /// `HOST/repo:tag`
    pub fn reference(&self, host: &str) -> String {
        format!("{host}/{}:{}", self.repo, self.tag)
    }

    /// `HOST/repo@sha256:…`
    pub fn digest_reference(&self, host: &str) -> String {
        format!("{host}/{}@{}", self.repo, self.digest)
    }

    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }

    /// Every blob digest below the image (children included).
    pub fn blob_digests(&self) -> Vec<String> {
        self.manifest.blob_digests()
    }

    /// Child manifest digests (empty for a single manifest).
    pub fn child_digests(&self) -> Vec<String> {
        self.manifest
            .children
            .iter()
            .map(|c| c.digest.clone())
            .collect()
    }
}

/// Knobs for [`build_corpus_with`].
#[derive(Clone, Debug)]
pub struct CorpusOptions {
    /// Content seed: same seed, same digests; different seed, every blob differs.
    pub seed: u64,
    /// Namespace of the main repositories (`src` → `src/alpha`, …).
    pub namespace: String,
    /// Namespace of the repository outside it (`other` → `other/delta`).
    pub other_namespace: String,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            seed: 0,
            namespace: CORPUS_NAMESPACE.into(),
            other_namespace: "other".into(),
        }
    }
}

/// What [`build_corpus`] pushed.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub seed: u64,
    pub namespace: String,
    pub images: Vec<CorpusImage>,
    /// Base layer shared by alpha, beta, gamma (amd64), multi (amd64) and other/delta.
    pub shared_layer_digest: String,
    /// Repositories (with namespace) that contain the shared layer.
    pub shared_layer_repos: Vec<String>,
}

impl Corpus {
    /// `(repo, tag, digest, media type)` of every tagged image.
    pub fn entries(&self) -> Vec<(String, String, String, String)> {
        self.images
            .iter()
            .map(|i| {
                (
                    i.repo.clone(),
                    i.tag.clone(),
                    i.digest.clone(),
                    i.media_type.clone(),
                )
            })
            .collect()
    }

    /// The image `repo:tag`; panics if the corpus has no such image.
    pub fn get(&self, repo: &str, tag: &str) -> &CorpusImage {
        self.images
            .iter()
            .find(|i| i.repo == repo && i.tag == tag)
            .unwrap_or_else(|| panic!("corpus has no image {repo}:{tag}"))
    }

    /// Images whose repository is under `namespace/`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<&CorpusImage> {
        let prefix = format!("{namespace}/");
        self.images
            .iter()
            .filter(|i| i.repo.starts_with(&prefix))
            .collect()
    }

    /// Distinct repositories, sorted.
    pub fn repos(&self) -> Vec<String> {
        let mut r: Vec<String> = self.images.iter().map(|i| i.repo.clone()).collect();
        r.sort();
        r.dedup();
        r
    }

    /// Every distinct blob digest in the corpus.
    pub fn all_blob_digests(&self) -> Vec<String> {
        let mut v: Vec<String> = self.images.iter().flat_map(|i| i.blob_digests()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// An images file: one `HOST/repo:tag` per line, with a comment header and a blank line.
    pub fn images_file(&self, host: &str) -> String {
        images_file(host, self.images.iter())
    }

    /// An images file for a subset, e.g. `|i| i.repo == "src/alpha"`.
    pub fn images_file_where(&self, host: &str, pred: impl Fn(&CorpusImage) -> bool) -> String {
        images_file(host, self.images.iter().filter(|i| pred(i)))
    }
}

/// One `HOST/repo:tag` per line after a comment and a blank line (to exercise the parser).
pub fn images_file<'a>(host: &str, images: impl Iterator<Item = &'a CorpusImage>) -> String {
    let mut s = String::from("# images for airlock tests\n\n");
    for i in images {
        s.push_str(&i.reference(host));
        s.push('\n');
    }
    s
}

/// [`build_corpus_with`] with seed 0 under `src/` plus `other/delta`.
pub fn build_corpus(reg: &TestRegistry) -> Corpus {
    build_corpus_with(reg.client(), &CorpusOptions::default())
}

/// Same as [`build_corpus`] with another seed (every blob and digest differs).
pub fn build_corpus_seeded(reg: &TestRegistry, seed: u64) -> Corpus {
    build_corpus_with(
        reg.client(),
        &CorpusOptions {
            seed,
            ..CorpusOptions::default()
        },
    )
}

/// Push the corpus through `client`:
///
/// | image | kind |
/// |---|---|
/// | `NS/alpha:1.0` | OCI manifest, layers [base, alpha-1] (gzip) |
/// | `NS/alpha:1.1`, `NS/alpha:latest` (same digest) | OCI manifest, [base, alpha-1, alpha-2 (plain tar)] |
/// | `NS/beta:1.0` | Docker schema2, [base, beta-1] |
/// | `NS/gamma:3.0` | Docker manifest list: linux/amd64 [base, gamma-amd64], linux/arm/v7 [gamma-arm] (children untagged) |
/// | `NS/multi:2.0` | OCI index: linux/amd64 [base, multi-amd64], linux/arm64 [multi-arm64-base, multi-arm64] (children untagged) |
/// | `NS/artifact:v1` | OCI artifact, config `application/vnd.example.thing.config.v1+json`, layer `application/vnd.example.thing.layer.v1` |
/// | `OTHER/delta:1` | OCI manifest, [base, delta-1] |
///
/// All manifests are pretty-printed with a 3-space indent.
pub fn build_corpus_with(client: &RawClient, opts: &CorpusOptions) -> Corpus {
    let seed = opts.seed;
    let ns = &opts.namespace;
    let repo = |name: &str| format!("{ns}/{name}");
    let label = |image: &str| -> Vec<(String, String)> {
        vec![
            ("org.airlock.test.image".into(), image.into()),
            ("org.airlock.test.seed".into(), seed.to_string()),
        ]
    };
    fn l(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }
    let amd64 = Platform::linux_amd64();
    let arm64 = Platform::new("linux", "arm64", Some("v8"));
    let armv7 = Platform::new("linux", "arm", Some("v7"));

    let base = small_layer(seed, "shared-base", true);
    let mut images = Vec::new();
    let mut add = |repo: &str, tag: &str, m: &PushedManifest| {
        images.push(CorpusImage {
            repo: repo.into(),
            tag: tag.into(),
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            manifest: m.clone(),
        });
    };

    // alpha: two versions sharing layers, plus an alias tag.
    let alpha = repo("alpha");
    let a1 = small_layer(seed, "alpha-1", true);
    let a2 = small_layer(seed, "alpha-2", false);
    let m = client.push_image(
        &alpha,
        Some("1.0"),
        ImageFormat::Oci,
        &amd64,
        &[base.clone(), a1.clone()],
        &l(&label("alpha:1.0")),
    );
    add(&alpha, "1.0", &m);
    let m = client.push_image(
        &alpha,
        Some("1.1"),
        ImageFormat::Oci,
        &amd64,
        &[base.clone(), a1, a2],
        &l(&label("alpha:1.1")),
    );
    add(&alpha, "1.1", &m);
    client.push_manifest(&alpha, "latest", &m.bytes, &m.media_type);
    add(&alpha, "latest", &m);

    // beta: Docker schema2.
    let beta = repo("beta");
    let m = client.push_image(
        &beta,
        Some("1.0"),
        ImageFormat::Docker,
        &amd64,
        &[base.clone(), small_layer(seed, "beta-1", true)],
        &l(&label("beta:1.0")),
    );
    add(&beta, "1.0", &m);

    // gamma: Docker manifest list over two schema2 images pushed by digest.
    let gamma = repo("gamma");
    let g_amd = client.push_image(
        &gamma,
        None,
        ImageFormat::Docker,
        &amd64,
        &[base.clone(), small_layer(seed, "gamma-amd64", true)],
        &l(&label("gamma:3.0 amd64")),
    );
    let g_arm = client.push_image(
        &gamma,
        None,
        ImageFormat::Docker,
        &armv7,
        &[small_layer(seed, "gamma-arm", true)],
        &l(&label("gamma:3.0 arm")),
    );
    let m = client.push_index(&gamma, "3.0", ImageFormat::Docker, &[g_amd, g_arm]);
    add(&gamma, "3.0", &m);

    // multi: OCI index with linux/amd64 and linux/arm64.
    let multi = repo("multi");
    let m_amd = client.push_image(
        &multi,
        None,
        ImageFormat::Oci,
        &amd64,
        &[base.clone(), small_layer(seed, "multi-amd64", true)],
        &l(&label("multi:2.0 amd64")),
    );
    let m_arm = client.push_image(
        &multi,
        None,
        ImageFormat::Oci,
        &arm64,
        &[
            small_layer(seed, "multi-arm64-base", true),
            small_layer(seed, "multi-arm64", true),
        ],
        &l(&label("multi:2.0 arm64")),
    );
    let m = client.push_index(&multi, "2.0", ImageFormat::Oci, &[m_amd, m_arm]);
    add(&multi, "2.0", &m);

    // artifact: unknown config media type and layer media type.
    let artifact = repo("artifact");
    let cfg = serde_json::to_vec(&json!({"thing": "airlock-test", "seed": seed})).expect("json");
    let payload = random_bytes(derive_seed(seed, "artifact-payload"), 3000);
    let m = client.push_artifact(
        &artifact,
        "v1",
        ARTIFACT_CONFIG,
        &cfg,
        &[(ARTIFACT_LAYER, payload)],
    );
    add(&artifact, "v1", &m);

    // other/delta: outside the namespace, shares the base layer.
    let delta = format!("{}/delta", opts.other_namespace);
    let m = client.push_image(
        &delta,
        Some("1"),
        ImageFormat::Oci,
        &amd64,
        &[base.clone(), small_layer(seed, "delta-1", true)],
        &l(&label("delta:1")),
    );
    add(&delta, "1", &m);

    let shared = base.digest();
    let mut shared_repos: Vec<String> = images
        .iter()
        .filter(|i| i.blob_digests().contains(&shared))
        .map(|i| i.repo.clone())
        .collect();
    shared_repos.sort();
    shared_repos.dedup();
    Corpus {
        seed,
        namespace: ns.clone(),
        images,
        shared_layer_digest: shared,
        shared_layer_repos: shared_repos,
    }
}
