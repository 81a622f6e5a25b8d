//! Integration-test harness for airlock.
//!
//! Everything here is independent of airlock's own code: registries are real CNCF distribution
//! processes (`docker-registry`), content is pushed with a small raw-HTTP client built on
//! reqwest, and results are witnessed with `skopeo`. Use it from a test file with `mod common;`.
//!
//! The API is synchronous on purpose. Network calls run on a private tokio runtime inside a
//! scoped helper thread, so every function here can also be called from `#[tokio::test]` code
//! (it blocks that worker thread for the duration of the call, which is fine in tests).
//!
//! Main pieces:
//! - [`TestRegistry`]: a throw-away registry (plain HTTP, TLS with a test CA, htpasswd auth).
//! - [`RawClient`]: blob/manifest push and read-back by raw HTTP.
//! - [`build_corpus`]: a deterministic set of images of every manifest kind airlock must carry.
//! - [`skopeo_digest`] / [`skopeo_exists`]: the independent witness.
//! - [`FaultProxy`]: a loopback TCP proxy that answers 503/429, disconnects or truncates
//!   (faults need a plain-HTTP registry behind it; TLS is piped through untouched).
//! - [`run_airlock`]: runs the binary with an isolated environment and no TTY.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Media types
// ---------------------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const ARTIFACT_CONFIG: &str = "application/vnd.example.thing.config.v1+json";
pub const ARTIFACT_LAYER: &str = "application/vnd.example.thing.layer.v1";

/// Every manifest media type the harness reads back (distribution 2.8 answers 404 for OCI and
/// silently down-converts lists when the Accept header does not name the stored type).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The namespace the corpus puts most repositories under (see [`build_corpus`]).
pub const CORPUS_NAMESPACE: &str = "src";

const REGISTRY_BIN: &str = "docker-registry";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
const AIRLOCK_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Small helpers: digests, deterministic bytes, gzip without a compression crate
// ---------------------------------------------------------------------------------------------

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Derive a sub-seed from a seed and a label, so every blob of a corpus gets its own stream.
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(label.as_bytes());
    let out = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    u64::from_le_bytes(b)
}

/// splitmix64: tiny, fast, deterministic; plenty for test data.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

/// Exactly `n` pseudo-random bytes determined by `seed` (incompressible).
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    Prng::new(seed).fill(&mut v);
    v
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc ^ 0xFFFF_FFFF
}

/// A valid gzip stream of `data` using deflate "stored" blocks (no compression), so layers
/// are real `tar+gzip` without a compression crate. Deterministic (mtime 0, OS 255).
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 32);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    } else {
        let mut chunks = data.chunks(65535).peekable();
        while let Some(chunk) = chunks.next() {
            out.push(u8::from(chunks.peek().is_none()));
            let len = chunk.len() as u16;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A deterministic tar stream (fixed mtime/uid/gid/mode) holding `files`.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data)
            .expect("append tar entry");
    }
    b.into_inner().expect("finish tar")
}

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

fn push_unique(v: &mut Vec<Descriptor>, d: Descriptor) {
    if !v.iter().any(|x| x.digest == d.digest) {
        v.push(d);
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
// RawClient: an independent, minimal registry client used to build and inspect test content
// ---------------------------------------------------------------------------------------------

/// Raw response of [`RawClient::request`].
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A manifest read back from a registry.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// sha256 of `bytes` (the registry's Docker-Content-Digest is checked against it).
    pub digest: String,
}

/// Minimal registry client on reqwest. Sends basic auth on every request when configured,
/// trusts an extra CA when given, never uses proxies. Panics with clear messages on errors.
pub struct RawClient {
    base: reqwest::Url,
    auth: Option<(String, String)>,
    client: reqwest::Client,
    rt: Option<tokio::runtime::Runtime>,
}

impl RawClient {
    /// `base_url` like `http://127.0.0.1:5000`; `ca_pem` is an extra trusted CA (PEM).
    pub fn new(base_url: &str, auth: Option<(String, String)>, ca_pem: Option<&[u8]>) -> RawClient {
        let base = reqwest::Url::parse(base_url)
            .unwrap_or_else(|e| panic!("invalid registry base URL {base_url:?}: {e}"));
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .user_agent("airlock-test-harness/1");
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).expect("parse test CA certificate");
            b = b.add_root_certificate(cert);
        }
        let client = b.build().expect("build reqwest client");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("harness-http")
            .enable_all()
            .build()
            .expect("build tokio runtime for the harness client");
        RawClient {
            base,
            auth,
            client,
            rt: Some(rt),
        }
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// Run a future on the private runtime from any context (also from inside another runtime).
    fn block<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let rt = self.rt.as_ref().expect("harness runtime is alive");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn url(&self, path_and_query: &str) -> reqwest::Url {
        self.base
            .join(path_and_query)
            .unwrap_or_else(|e| panic!("bad request path {path_and_query:?}: {e}"))
    }

    fn req(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, url);
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, what: &str) -> RawResponse {
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e:#}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading body failed: {e:#}"))
            .to_vec();
        RawResponse {
            status,
            headers,
            body,
        }
    }

    /// Any request; `path_and_query` is relative to the base URL (e.g. `/v2/`).
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> RawResponse {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut rb = self.req(m, self.url(path_and_query));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let what = format!("{method} {path_and_query}");
        self.block(self.send(rb, &what))
    }

    /// Status of `GET /v2/` within `timeout`, or None if the connection failed.
    pub fn ping(&self, timeout: Duration) -> Option<u16> {
        let rb = self
            .req(reqwest::Method::GET, self.url("/v2/"))
            .timeout(timeout);
        self.block(async move { rb.send().await.ok().map(|r| r.status().as_u16()) })
    }

    /// Monolithic upload: `POST /v2/<repo>/blobs/uploads/` then `PUT <location>&digest=…`.
    /// Returns a descriptor with media type `application/octet-stream` (see
    /// [`Descriptor::with_media_type`]).
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256_digest(bytes);
        let what = format!("push blob {digest} to {repo}");
        self.block(async {
            let post = self.req(
                reqwest::Method::POST,
                self.url(&format!("/v2/{repo}/blobs/uploads/")),
            );
            let r = self.send(post, &what).await;
            assert_eq!(
                r.status,
                202,
                "{what}: POST uploads: {} {}",
                r.status,
                r.text()
            );
            let loc = r
                .header("location")
                .unwrap_or_else(|| panic!("{what}: no Location header on 202"));
            let mut put_url = self
                .base
                .join(loc)
                .unwrap_or_else(|e| panic!("{what}: bad Location {loc:?}: {e}"));
            put_url.query_pairs_mut().append_pair("digest", &digest);
            let put = self
                .req(reqwest::Method::PUT, put_url)
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec());
            let r = self.send(put, &what).await;
            assert_eq!(
                r.status,
                201,
                "{what}: PUT upload: {} {}",
                r.status,
                r.text()
            );
            if let Some(d) = r.header("docker-content-digest") {
                assert_eq!(d, digest, "{what}: registry computed another digest");
            }
        });
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size: bytes.len() as u64,
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the exact bytes; returns their digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> String {
        let digest = sha256_digest(bytes);
        let what = format!("push manifest {repo}:{reference} ({media_type})");
        let rb = self
            .req(
                reqwest::Method::PUT,
                self.url(&format!("/v2/{repo}/manifests/{reference}")),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec());
        let r = self.block(self.send(rb, &what));
        assert_eq!(r.status, 201, "{what}: {} {}", r.status, r.text());
        if let Some(d) = r.header("docker-content-digest") {
            assert_eq!(d, digest, "{what}: registry computed another digest");
        }
        digest
    }

    /// GET a manifest with an Accept header naming every manifest type; None on 404.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Option<FetchedManifest> {
        let r = self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", MANIFEST_ACCEPT)],
            None,
        );
        if r.status == 404 {
            return None;
        }
        assert_eq!(
            r.status,
            200,
            "GET manifest {repo}:{reference}: {} {}",
            r.status,
            r.text()
        );
        let digest = sha256_digest(&r.body);
        if let Some(d) = r.header("docker-content-digest") {
            assert_eq!(
                d, digest,
                "GET manifest {repo}:{reference}: digest header mismatch"
            );
        }
        let media_type = r.header("content-type").unwrap_or_default().to_string();
        Some(FetchedManifest {
            bytes: r.body,
            media_type,
            digest,
        })
    }

    /// Digest of a manifest via HEAD; None on 404.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let r = self.request(
            "HEAD",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", MANIFEST_ACCEPT)],
            None,
        );
        match r.status {
            404 => None,
            200 => Some(
                r.header("docker-content-digest")
                    .expect("HEAD manifest has Docker-Content-Digest")
                    .to_string(),
            ),
            s => panic!("HEAD manifest {repo}:{reference}: unexpected status {s}"),
        }
    }

    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let r = self.request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], None);
        match r.status {
            200 => true,
            404 => false,
            s => panic!("HEAD blob {repo}@{digest}: unexpected status {s}"),
        }
    }

    pub fn get_blob(&self, repo: &str, digest: &str) -> Option<Vec<u8>> {
        let r = self.request("GET", &format!("/v2/{repo}/blobs/{digest}"), &[], None);
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!(
                "GET blob {repo}@{digest}: unexpected status {s} {}",
                r.text()
            ),
        }
    }

    /// Sorted tags of a repository (distribution 2.8 returns them unsorted); empty on 404.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let r = self.request("GET", &format!("/v2/{repo}/tags/list"), &[], None);
        if r.status == 404 {
            return Vec::new();
        }
        assert_eq!(r.status, 200, "tags/list {repo}: {} {}", r.status, r.text());
        let v: Value = serde_json::from_slice(&r.body).expect("tags/list is JSON");
        let mut tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// All repositories, following `Link` pages (distribution 2.8 rejects `n` > 1000 with 400).
    pub fn catalog(&self) -> Vec<String> {
        let mut repos = Vec::new();
        let mut next = Some("/v2/_catalog?n=100".to_string());
        while let Some(path) = next.take() {
            let r = self.request("GET", &path, &[], None);
            assert_eq!(r.status, 200, "GET {path}: {} {}", r.status, r.text());
            let v: Value = serde_json::from_slice(&r.body).expect("_catalog is JSON");
            if let Some(a) = v["repositories"].as_array() {
                repos.extend(a.iter().filter_map(|t| t.as_str().map(String::from)));
            }
            // Link: </v2/_catalog?last=x&n=100>; rel="next"
            next = r
                .header("link")
                .and_then(|l| Some(l[l.find('<')? + 1..l.find('>')?].to_string()));
        }
        repos
    }

    /// DELETE a manifest by digest (the registry runs with delete enabled); returns the status.
    pub fn delete_manifest(&self, repo: &str, digest: &str) -> u16 {
        self.request(
            "DELETE",
            &format!("/v2/{repo}/manifests/{digest}"),
            &[],
            None,
        )
        .status
    }

    /// DELETE (unlink) a blob from a repository; returns the status (202 when done).
    pub fn delete_blob(&self, repo: &str, digest: &str) -> u16 {
        self.request("DELETE", &format!("/v2/{repo}/blobs/{digest}"), &[], None)
            .status
    }

    /// Push an image: layers, config, then the manifest under `reference` (a tag, or `None` to
    /// push it by digest only, e.g. as the child of an index).
    pub fn push_image(
        &self,
        repo: &str,
        reference: Option<&str>,
        format: ImageFormat,
        platform: &Platform,
        layers: &[Layer],
        labels: &[(&str, &str)],
    ) -> PushedManifest {
        let (config_mt, manifest_mt) = match format {
            ImageFormat::Oci => (OCI_CONFIG, OCI_MANIFEST),
            ImageFormat::Docker => (DOCKER_CONFIG, DOCKER_MANIFEST),
        };
        let mut blobs = Vec::new();
        let mut layer_descs = Vec::new();
        for l in layers {
            let mt = match format {
                ImageFormat::Oci => l.oci_media_type(),
                ImageFormat::Docker => l.docker_media_type(),
            };
            let d = self.push_blob(repo, &l.blob).with_media_type(mt);
            layer_descs.push(d.to_json());
            push_unique(&mut blobs, d);
        }
        let config = image_config(platform, layers, labels);
        let cd = self.push_blob(repo, &config).with_media_type(config_mt);
        push_unique(&mut blobs, cd.clone());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": cd.to_json(),
            "layers": layer_descs,
        });
        let bytes = pretty3(&manifest);
        let digest = sha256_digest(&bytes);
        let reference = reference
            .map(String::from)
            .unwrap_or_else(|| digest.clone());
        self.push_manifest(repo, &reference, &bytes, manifest_mt);
        PushedManifest {
            digest,
            media_type: manifest_mt.into(),
            bytes,
            platform: Some(platform.clone()),
            children: Vec::new(),
            blobs,
        }
    }

    /// Push an OCI index (`ImageFormat::Oci`) or Docker manifest list (`ImageFormat::Docker`)
    /// over already pushed children (which carry their platform).
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        format: ImageFormat,
        children: &[PushedManifest],
    ) -> PushedManifest {
        let mt = match format {
            ImageFormat::Oci => OCI_INDEX,
            ImageFormat::Docker => DOCKER_LIST,
        };
        let mut entries = Vec::new();
        let mut blobs = Vec::new();
        for c in children {
            let mut e = c.descriptor().to_json();
            if let Some(p) = &c.platform {
                e["platform"] = p.to_json();
            }
            entries.push(e);
            for b in &c.blobs {
                push_unique(&mut blobs, b.clone());
            }
        }
        let index = json!({"schemaVersion": 2, "mediaType": mt, "manifests": entries});
        let bytes = pretty3(&index);
        let digest = self.push_manifest(repo, tag, &bytes, mt);
        PushedManifest {
            digest,
            media_type: mt.into(),
            bytes,
            platform: None,
            children: children.to_vec(),
            blobs,
        }
    }

    /// Push an OCI artifact: non-image config media type and custom layer media types.
    pub fn push_artifact(
        &self,
        repo: &str,
        tag: &str,
        config_media_type: &str,
        config: &[u8],
        layers: &[(&str, Vec<u8>)],
    ) -> PushedManifest {
        let mut blobs = Vec::new();
        let mut layer_descs = Vec::new();
        for (mt, data) in layers {
            let d = self.push_blob(repo, data).with_media_type(mt);
            layer_descs.push(d.to_json());
            push_unique(&mut blobs, d);
        }
        let cd = self
            .push_blob(repo, config)
            .with_media_type(config_media_type);
        push_unique(&mut blobs, cd.clone());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cd.to_json(),
            "layers": layer_descs,
            "annotations": {"org.opencontainers.image.title": "airlock test artifact"},
        });
        let bytes = pretty3(&manifest);
        let digest = self.push_manifest(repo, tag, &bytes, OCI_MANIFEST);
        PushedManifest {
            digest,
            media_type: OCI_MANIFEST.into(),
            bytes,
            platform: None,
            children: Vec::new(),
            blobs,
        }
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        // shutdown_background never blocks, so dropping is fine inside async tests too.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TestRegistry
// ---------------------------------------------------------------------------------------------

/// How to start a [`TestRegistry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// htpasswd (bcrypt) user and password; the registry then requires basic auth.
    pub auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// With `auth`: use token authentication (Bearer JWTs from a [`TokenServer`] that checks
    /// those credentials) instead of htpasswd basic auth.
    pub token: bool,
}

impl RegistryOpts {
    pub fn plain() -> RegistryOpts {
        RegistryOpts::default()
    }

    pub fn with_auth(mut self, user: &str, pass: &str) -> RegistryOpts {
        self.auth = Some((user.into(), pass.into()));
        self
    }

    pub fn with_tls(mut self) -> RegistryOpts {
        self.tls = true;
        self
    }

    /// Token authentication: the registry sends clients to a token server that issues signed
    /// JWTs for the requested scopes to `user`/`pass`.
    pub fn with_token_auth(mut self, user: &str, pass: &str) -> RegistryOpts {
        self.auth = Some((user.into(), pass.into()));
        self.token = true;
        self
    }
}

/// Something skopeo (and airlock) can reach: host, optional CA dir, optional credentials.
pub trait Endpoint {
    /// `127.0.0.1:PORT`
    fn host(&self) -> String;
    /// A directory holding `ca.crt` when the endpoint speaks TLS; None for plain HTTP.
    fn tls_cert_dir(&self) -> Option<PathBuf>;
    fn creds(&self) -> Option<(String, String)>;
}

/// A plain-HTTP endpoint without auth, e.g. `airlock serve` on a port.
pub struct PlainEndpoint(pub String);

impl Endpoint for PlainEndpoint {
    fn host(&self) -> String {
        self.0.clone()
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        None
    }
    fn creds(&self) -> Option<(String, String)> {
        None
    }
}

/// A CNCF distribution registry on 127.0.0.1, killed on drop.
pub struct TestRegistry {
    /// The token server of a token-auth registry (stopped on drop).
    token_server: Option<TokenServer>,
    child: Option<Child>,
    port: u16,
    opts: RegistryOpts,
    client: RawClient,
    // Last field: dropped after the child is killed.
    dir: TempDir,
}

/// A port that was free a moment ago (bind :0, read, drop).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn run_tool(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Generate a CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) with openssl.
/// Writes `ca.key ca.crt server.key server.crt` into `dir`.
pub fn generate_test_pki(dir: &Path) {
    fs::create_dir_all(dir).expect("create tls dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509", "-new"])
            .args(ec)
            .args(["-keyout", "ca.key", "-out", "ca.crt", "-days", "7"])
            .args(["-subj", "/CN=airlock test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        "openssl: create test CA",
    );
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-new"])
            .args(ec)
            .args(["-keyout", "server.key", "-out", "server.csr"])
            .args(["-subj", "/CN=localhost"]),
        "openssl: create server CSR",
    );
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid,issuer\n",
    )
    .expect("write server.ext");
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt"])
            .args(["-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt"])
            .args(["-days", "7", "-extfile", "server.ext"]),
        "openssl: sign server certificate",
    );
}

/// `htpasswd -Bbn USER PASS` (bcrypt, which distribution requires).
pub fn htpasswd_line(user: &str, pass: &str) -> String {
    let out = run_tool(
        Command::new("htpasswd").args(["-Bbn", user, pass]),
        "htpasswd -Bbn",
    );
    String::from_utf8(out.stdout)
        .expect("htpasswd output is UTF-8")
        .trim()
        .to_string()
        + "\n"
}

fn yaml_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "''"))
}

impl TestRegistry {
    /// Start a registry; panics (with the registry log) if it is not up within 15 s.
    pub fn start(opts: RegistryOpts) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("airlock-test-registry-")
            .tempdir()
            .expect("create registry tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("data")).expect("create data dir");
        let mut ca_pem = None;
        if opts.tls {
            generate_test_pki(&root.join("tls"));
            fs::create_dir_all(root.join("certs")).expect("create cert dir");
            fs::copy(root.join("tls/ca.crt"), root.join("certs/ca.crt")).expect("copy ca.crt");
            ca_pem = Some(fs::read(root.join("tls/ca.crt")).expect("read ca.crt"));
        }
        let mut token_server = None;
        if let Some((u, p)) = &opts.auth {
            if opts.token {
                token_server = Some(TokenServer::start(&root.join("token"), u, p));
            } else {
                fs::write(root.join("htpasswd"), htpasswd_line(u, p)).expect("write htpasswd");
            }
        }
        let scheme = if opts.tls { "https" } else { "http" };
        let client_for = |port: u16| {
            RawClient::new(
                &format!("{scheme}://127.0.0.1:{port}"),
                opts.auth.clone(),
                ca_pem.as_deref(),
            )
        };
        let port = free_port();
        let token_realm = token_server.as_ref().map(|t| t.realm());
        let mut reg = TestRegistry {
            token_server,
            child: None,
            port,
            opts: opts.clone(),
            client: client_for(port),
            dir,
        };
        for attempt in 1..=5 {
            TestRegistry::write_config(reg.dir.path(), reg.port, &opts, token_realm.as_deref());
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(log) => {
                    reg.kill();
                    if attempt < 5 && log.contains("address already in use") {
                        // Someone took the port between bind(:0) and the registry's bind.
                        reg.port = free_port();
                        reg.client = client_for(reg.port);
                        continue;
                    }
                    panic!(
                        "docker-registry did not start on port {} (attempt {attempt}); its log:\n{log}",
                        reg.port
                    );
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn write_config(root: &Path, port: u16, opts: &RegistryOpts, token_realm: Option<&str>) {
        let mut y = String::new();
        y.push_str("version: 0.1\n");
        y.push_str("log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n");
        y.push_str("storage:\n  filesystem:\n");
        let _ = writeln!(y, "    rootdirectory: {}", yaml_quote(&root.join("data")));
        y.push_str("  delete:\n    enabled: true\n");
        y.push_str("  maintenance:\n    uploadpurging:\n      enabled: false\n");
        y.push_str("http:\n");
        let _ = writeln!(y, "  addr: 127.0.0.1:{port}");
        y.push_str("  secret: airlock-test-secret\n");
        if opts.tls {
            y.push_str("  tls:\n");
            let _ = writeln!(
                y,
                "    certificate: {}",
                yaml_quote(&root.join("tls/server.crt"))
            );
            let _ = writeln!(y, "    key: {}", yaml_quote(&root.join("tls/server.key")));
        }
        if let Some(realm) = token_realm {
            y.push_str("auth:\n  token:\n");
            let _ = writeln!(y, "    realm: {realm}");
            let _ = writeln!(y, "    service: {TOKEN_SERVICE}");
            let _ = writeln!(y, "    issuer: {TOKEN_ISSUER}");
            let _ = writeln!(
                y,
                "    rootcertbundle: {}",
                yaml_quote(&root.join("token/token.crt"))
            );
        } else if opts.auth.is_some() {
            y.push_str("auth:\n  htpasswd:\n    realm: airlock-test\n");
            let _ = writeln!(y, "    path: {}", yaml_quote(&root.join("htpasswd")));
        }
        fs::write(root.join("config.yml"), y).expect("write registry config.yml");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let root = self.dir.path().to_path_buf();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("registry.log"))
            .expect("open registry.log");
        let log2 = log.try_clone().expect("clone log handle");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(root.join("config.yml"))
            .env_remove("REGISTRY_HTTP_ADDR")
            .env_remove("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot spawn {REGISTRY_BIN} (apt-get install docker-registry): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("(exited with {status})\n{}", self.log()));
                }
            }
            if let Some(s) = self.client.ping(Duration::from_secs(1)) {
                if s == 200 || s == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "(no answer on /v2/ within {STARTUP_TIMEOUT:?})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the registry process (content stays on disk); see [`TestRegistry::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Start the registry again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn_and_wait() {
            self.kill();
            panic!(
                "docker-registry did not restart on port {}; log:\n{log}",
                self.port
            );
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn is_tls(&self) -> bool {
        self.opts.tls
    }

    pub fn opts(&self) -> &RegistryOpts {
        &self.opts
    }

    pub fn credentials(&self) -> Option<(String, String)> {
        self.opts.auth.clone()
    }

    /// Tokens issued so far by the token server of a token-auth registry.
    pub fn tokens_issued(&self) -> usize {
        self.token_server.as_ref().map(|t| t.issued()).unwrap_or(0)
    }

    /// The test CA certificate (PEM). Panics if the registry was started without TLS.
    pub fn ca_cert_path(&self) -> PathBuf {
        assert!(
            self.opts.tls,
            "ca_cert_path(): registry was started without TLS"
        );
        self.dir.path().join("tls/ca.crt")
    }

    /// A directory containing only `ca.crt`, for `skopeo --cert-dir` (or docker's certs.d).
    pub fn cert_dir(&self) -> PathBuf {
        assert!(
            self.opts.tls,
            "cert_dir(): registry was started without TLS"
        );
        self.dir.path().join("certs")
    }

    /// The registry's temporary directory (config.yml, registry.log, data/, tls/, certs/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Storage root of the filesystem driver (to corrupt or inspect blobs behind its back).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's log (warnings plus one access-log line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Access-log request lines like `PUT /v2/src/alpha/blobs/uploads/… HTTP/1.1" 201`,
    /// filtered by method and a substring of the path (counts uploads, mounts, retries).
    pub fn access_log(&self, method: &str, path_contains: &str) -> Vec<String> {
        let needle = format!("\"{method} ");
        self.log()
            .lines()
            .filter_map(|l| l.find(&needle).map(|i| l[i + 1..].to_string()))
            .filter(|l| l.contains(path_contains))
            .collect()
    }

    /// The harness' own client for this registry (credentials and CA configured).
    pub fn client(&self) -> &RawClient {
        &self.client
    }

    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Descriptor {
        self.client.push_blob(repo, bytes)
    }

    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> String {
        self.client
            .push_manifest(repo, reference, bytes, media_type)
    }

    pub fn get_manifest(&self, repo: &str, reference: &str) -> Option<FetchedManifest> {
        self.client.get_manifest(repo, reference)
    }

    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        self.client.blob_exists(repo, digest)
    }

    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.client.tags(repo)
    }

    pub fn catalog(&self) -> Vec<String> {
        self.client.catalog()
    }
}

impl Endpoint for TestRegistry {
    fn host(&self) -> String {
        TestRegistry::host(self)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.cert_dir())
    }
    fn creds(&self) -> Option<(String, String)> {
        self.credentials()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
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

// ---------------------------------------------------------------------------------------------
// skopeo witness
// ---------------------------------------------------------------------------------------------

/// A `skopeo` command with an isolated environment (temp HOME, empty auth file, permissive
/// policy, no proxies). Keep the returned TempDir alive while the command runs.
pub fn skopeo_command() -> (Command, TempDir) {
    let tmp = tempfile::Builder::new()
        .prefix("airlock-test-skopeo-")
        .tempdir()
        .expect("skopeo tempdir");
    let auth = tmp.path().join("auth.json");
    fs::write(&auth, "{\"auths\":{}}\n").expect("write empty auth.json");
    let policy = tmp.path().join("policy.json");
    fs::write(
        &policy,
        "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}\n",
    )
    .expect("write policy.json");
    let mut cmd = Command::new("skopeo");
    cmd.env("HOME", tmp.path())
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("DOCKER_CONFIG", tmp.path().join("docker"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.arg("--policy")
        .arg(&policy)
        .args(["--command-timeout", "120s"])
        .stdin(Stdio::null());
    (cmd, tmp)
}

fn skopeo_tls_args(cmd: &mut Command, ep: &dyn Endpoint, flag_prefix: &str) {
    match ep.tls_cert_dir() {
        Some(d) => {
            cmd.arg(format!("--{flag_prefix}cert-dir")).arg(d);
        }
        None => {
            cmd.arg(format!("--{flag_prefix}tls-verify=false"));
        }
    }
}

/// `skopeo inspect --raw docker://HOST/IMAGE` with explicit credentials (None: anonymous).
/// `image` is `repo:tag` or `repo@sha256:…`.
pub fn skopeo_inspect_raw_as(
    ep: &dyn Endpoint,
    image: &str,
    creds: Option<(&str, &str)>,
) -> Result<Vec<u8>, String> {
    let (mut cmd, _tmp) = skopeo_command();
    cmd.args(["inspect", "--raw"]);
    skopeo_tls_args(&mut cmd, ep, "");
    match creds {
        Some((u, p)) => {
            cmd.arg("--creds").arg(format!("{u}:{p}"));
        }
        None => {
            cmd.arg("--no-creds");
        }
    }
    cmd.arg(format!("docker://{}/{image}", ep.host()));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo (apt-get install skopeo): {e}"));
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Raw manifest bytes as skopeo sees them, using the endpoint's own credentials.
pub fn skopeo_raw(ep: &dyn Endpoint, image: &str) -> Result<Vec<u8>, String> {
    let creds = ep.creds();
    skopeo_inspect_raw_as(
        ep,
        image,
        creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    )
}

/// `sha256:` + hex sha256 of `skopeo inspect --raw docker://HOST/IMAGE`; panics on failure.
pub fn skopeo_digest(ep: &dyn Endpoint, image: &str) -> String {
    match skopeo_raw(ep, image) {
        Ok(b) => sha256_digest(&b),
        Err(e) => panic!("skopeo inspect --raw {}/{image} failed: {e}", ep.host()),
    }
}

/// Whether skopeo can read the manifest of `image` (any failure counts as "no").
pub fn skopeo_exists(ep: &dyn Endpoint, image: &str) -> bool {
    skopeo_raw(ep, image).is_ok()
}

/// `skopeo copy [--all] docker://HOST/IMAGE oci:DIR:REF`.
pub fn skopeo_copy_to_oci(
    ep: &dyn Endpoint,
    image: &str,
    oci_dir: &Path,
    oci_ref: &str,
    all: bool,
) -> Result<(), String> {
    let (mut cmd, _tmp) = skopeo_command();
    cmd.arg("copy");
    if all {
        cmd.arg("--all");
    }
    skopeo_tls_args(&mut cmd, ep, "src-");
    match ep.creds() {
        Some((u, p)) => {
            cmd.arg("--src-creds").arg(format!("{u}:{p}"));
        }
        None => {
            cmd.arg("--src-no-creds");
        }
    }
    cmd.arg(format!("docker://{}/{image}", ep.host()))
        .arg(format!("oci:{}:{oci_ref}", oci_dir.display()));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// FaultProxy
// ---------------------------------------------------------------------------------------------

/// What the proxy does to a request selected by its [`FaultPlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `HTTP/1.1 503 Service Unavailable`, `Connection: close`.
    ServiceUnavailable,
    /// `HTTP/1.1 429 Too Many Requests` with `Retry-After: <secs>`, `Connection: close`.
    TooManyRequests { retry_after_secs: u32 },
    /// Close the connection without any response.
    Disconnect,
    /// Forward, but cut the response after `after_bytes` bytes of its body, then close.
    TruncateBody { after_bytes: usize },
}

/// Which requests get the fault: among requests matching the filters, skip the first `skip`,
/// then fault the next `count`; everything else is forwarded.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub fault: Fault,
    pub count: usize,
    pub skip: usize,
    /// Only requests whose method equals this (e.g. "GET").
    pub method: Option<String>,
    /// Only requests whose path contains this (e.g. "/blobs/").
    pub path_contains: Option<String>,
}

impl FaultPlan {
    pub fn new(fault: Fault, count: usize) -> FaultPlan {
        FaultPlan {
            fault,
            count,
            skip: 0,
            method: None,
            path_contains: None,
        }
    }

    /// Forward everything.
    pub fn none() -> FaultPlan {
        FaultPlan::new(Fault::ServiceUnavailable, 0)
    }

    pub fn skip(mut self, n: usize) -> FaultPlan {
        self.skip = n;
        self
    }

    pub fn method(mut self, m: &str) -> FaultPlan {
        self.method = Some(m.to_string());
        self
    }

    pub fn path_contains(mut self, s: &str) -> FaultPlan {
        self.path_contains = Some(s.to_string());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

struct ProxyShared {
    stop: AtomicBool,
    upstream: SocketAddr,
    plan: Mutex<FaultPlan>,
    matched: AtomicUsize,
    requests: AtomicUsize,
    injected: AtomicUsize,
    log: Mutex<Vec<String>>,
    conns: Mutex<std::collections::HashMap<u64, Vec<TcpStream>>>,
    next_conn: std::sync::atomic::AtomicU64,
}

/// A loopback TCP proxy in front of a plain-HTTP registry that injects faults.
///
/// It reads each request head, counts it, and either answers with the fault or forwards the
/// request (rewritten to `Connection: close`, so every request uses its own connection and is
/// counted) and pipes bytes both ways for the rest of that connection. TLS connections
/// (first byte 0x16) are piped untouched and not counted, so faults need a plain registry.
/// Dropping the proxy stops the listener and cuts open connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Proxy to `upstream` (`127.0.0.1:PORT`; loopback only).
    pub fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .parse()
            .unwrap_or_else(|e| panic!("FaultProxy upstream {upstream:?} is not ip:port: {e}"));
        assert!(
            upstream.ip().is_loopback(),
            "FaultProxy only forwards to loopback addresses"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("FaultProxy bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("FaultProxy set_nonblocking");
        let addr = listener.local_addr().expect("FaultProxy local_addr");
        let shared = Arc::new(ProxyShared {
            stop: AtomicBool::new(false),
            upstream,
            plan: Mutex::new(plan),
            matched: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(std::collections::HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawn FaultProxy thread");
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Proxy in front of `reg` (which should be plain HTTP for faults to apply).
    pub fn for_registry(reg: &TestRegistry, plan: FaultPlan) -> FaultProxy {
        FaultProxy::start(&reg.host(), plan)
    }

    /// 503 to the first `n` requests, then forward.
    pub fn fail_503(reg: &TestRegistry, n: usize) -> FaultProxy {
        FaultProxy::for_registry(reg, FaultPlan::new(Fault::ServiceUnavailable, n))
    }

    /// 429 with `Retry-After: 1` to the first `n` requests, then forward.
    pub fn throttle_429(reg: &TestRegistry, n: usize) -> FaultProxy {
        FaultProxy::for_registry(
            reg,
            FaultPlan::new(
                Fault::TooManyRequests {
                    retry_after_secs: 1,
                },
                n,
            ),
        )
    }

    /// Replace the plan and reset the match counter (request/fault totals keep counting).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().expect("plan lock") = plan;
        self.shared.matched.store(0, Ordering::SeqCst);
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// HTTP requests seen (faulted or forwarded).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn faults_injected(&self) -> usize {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// One line per request: `METHOD PATH -> forwarded|503|429|disconnect|truncated`.
    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().expect("log lock").clone()
    }
}

impl Endpoint for FaultProxy {
    fn host(&self) -> String {
        FaultProxy::host(self)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        None
    }
    fn creds(&self) -> Option<(String, String)> {
        None
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Ok(conns) = self.shared.conns.lock() {
            for c in conns.values().flatten() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<ProxyShared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if !peer.ip().is_loopback() {
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                let id = sh.next_conn.fetch_add(1, Ordering::SeqCst);
                register(&sh, id, &stream);
                let sh2 = sh.clone();
                let _ = std::thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || {
                        let _ = handle_conn(stream, id, &sh2);
                        if let Ok(mut conns) = sh2.conns.lock() {
                            conns.remove(&id);
                        }
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn handle_conn(mut client: TcpStream, id: u64, sh: &ProxyShared) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut first = [0u8; 1];
    if client.peek(&mut first)? == 0 {
        return Ok(());
    }
    if first[0] == 0x16 {
        // TLS: no way to see requests; pipe untouched.
        client.set_read_timeout(None)?;
        let upstream = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5))?;
        register(sh, id, &upstream);
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        let t = std::thread::spawn(move || pipe(c2, u2));
        pipe(upstream, client);
        let _ = t.join();
        return Ok(());
    }

    // Read the request head.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    sh.requests.fetch_add(1, Ordering::SeqCst);

    let plan = sh
        .plan
        .lock()
        .map(|p| p.clone())
        .unwrap_or_else(|_| FaultPlan::none());
    let mut fault = None;
    if plan.count > 0 && plan.matches(&method, &path) {
        let i = sh.matched.fetch_add(1, Ordering::SeqCst);
        if i >= plan.skip && i < plan.skip + plan.count {
            fault = Some(plan.fault);
        }
    }
    let outcome = match fault {
        None => "forwarded",
        Some(Fault::ServiceUnavailable) => "503",
        Some(Fault::TooManyRequests { .. }) => "429",
        Some(Fault::Disconnect) => "disconnect",
        Some(Fault::TruncateBody { .. }) => "truncated",
    };
    if fault.is_some() && !matches!(fault, Some(Fault::TruncateBody { .. })) {
        sh.injected.fetch_add(1, Ordering::SeqCst);
    }
    if let Ok(mut log) = sh.log.lock() {
        log.push(format!("{method} {path} -> {outcome}"));
    }

    let canned = |status: &str, extra: &str| -> String {
        let body = format!("{status} (injected by airlock test FaultProxy)\n");
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match fault {
        Some(Fault::ServiceUnavailable) => {
            respond_and_linger(client, &canned("503 Service Unavailable", ""));
            return Ok(());
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let extra = format!("Retry-After: {retry_after_secs}\r\n");
            respond_and_linger(client, &canned("429 Too Many Requests", &extra));
            return Ok(());
        }
        Some(Fault::Disconnect) => {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        _ => {}
    }

    // Forward with Connection: close so that the next request comes on a new connection.
    let mut new_head = String::with_capacity(head.len() + 32);
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:")
            || lower.starts_with("keep-alive:")
            || lower.starts_with("proxy-connection:")
        {
            continue;
        }
        new_head.push_str(line);
        new_head.push_str("\r\n");
    }
    new_head.push_str("Connection: close\r\n\r\n");
    let mut upstream = match TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) {
        Ok(u) => u,
        Err(_) => {
            respond_and_linger(client, &canned("502 Bad Gateway", ""));
            return Ok(());
        }
    };
    register(sh, id, &upstream);
    upstream.write_all(new_head.as_bytes())?;
    upstream.write_all(&buf[head_end..])?;
    client.set_read_timeout(None)?;
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || pipe(c2, u2));
    match fault {
        Some(Fault::TruncateBody { after_bytes }) => {
            let cut = copy_truncated(&mut upstream, &mut client, after_bytes);
            if cut {
                sh.injected.fetch_add(1, Ordering::SeqCst);
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
        _ => {
            let _ = io::copy(&mut upstream, &mut client);
            // The response is complete (Connection: close); end both directions.
            let _ = client.shutdown(Shutdown::Both);
        }
    }
    let _ = up.join();
    Ok(())
}

/// Keep a handle on a socket so that dropping the proxy can cut it.
fn register(sh: &ProxyShared, id: u64, s: &TcpStream) {
    if let (Ok(c), Ok(mut conns)) = (s.try_clone(), sh.conns.lock()) {
        conns.entry(id).or_default().push(c);
    }
}

/// Copy a response, but only `after_bytes` of its body; true when something was cut.
fn copy_truncated(from: &mut TcpStream, to: &mut TcpStream, after_bytes: usize) -> bool {
    let mut head = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut pending = loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = to.write_all(&head);
                return false;
            }
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head) {
            let rest = head.split_off(end);
            if to.write_all(&head).is_err() {
                return false;
            }
            break rest;
        }
    };
    let mut budget = after_bytes;
    loop {
        let allowed = budget.min(pending.len());
        if to.write_all(&pending[..allowed]).is_err() {
            return false;
        }
        budget -= allowed;
        if allowed < pending.len() {
            return true;
        }
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        pending = chunk[..n].to_vec();
    }
}

/// Write a canned response, half-close, and drain what the client still sends (a request
/// body), so the client reads the response instead of a connection reset.
fn respond_and_linger(mut client: TcpStream, response: &str) {
    let _ = client.write_all(response.as_bytes());
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sink = [0u8; 16384];
    while Instant::now() < deadline {
        match client.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Running airlock
// ---------------------------------------------------------------------------------------------

/// Path of the airlock binary cargo built for these tests.
pub fn airlock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_airlock"))
}

/// Environment variables never inherited by airlock in tests (exact names).
const SCRUBBED_VARS: &[&str] = &[
    "DOCKER_CONFIG",
    "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "SOURCE_DATE_EPOCH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// Environment variable prefixes never inherited by airlock in tests.
const SCRUBBED_PREFIXES: &[&str] = &["SOURCE_DOCKER_", "TARGET_DOCKER_", "AIRLOCK_"];

/// An airlock command with an isolated environment rooted at `home` (which the caller keeps):
/// inherited credentials/proxy/AIRLOCK_* variables removed, `HOME=home`,
/// `XDG_CACHE_HOME=home/.cache`, `AIRLOCK_CACHE_DIR=home/airlock-cache`, stdin null.
pub fn airlock_command(home: &Path) -> Command {
    let mut cmd = Command::new(airlock_bin());
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if SCRUBBED_VARS.contains(&k) || SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("AIRLOCK_CACHE_DIR", home.join("airlock-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run airlock to completion (killed after 300 s) with an isolated environment (see
/// [`airlock_command`]); `envs` are applied last and override the defaults. `stdin`, when
/// given, is written to a pipe that is then closed; otherwise stdin is /dev/null. Never a TTY.
pub fn run_airlock<I, S>(args: I, envs: &[(&str, &str)], stdin: Option<&str>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let home = tempfile::Builder::new()
        .prefix("airlock-test-home-")
        .tempdir()
        .expect("create temp HOME");
    let mut cmd = airlock_command(home.path());
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", airlock_bin().display()));
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.unwrap_or_default().to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(data.as_bytes());
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + AIRLOCK_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for airlock") {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_t.join().unwrap_or_default();
                let stderr = err_t.join().unwrap_or_default();
                panic!(
                    "airlock did not finish within {AIRLOCK_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    drop(home);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// stdout and stderr of an Output, for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panic with the full output unless the command succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        describe_output(out)
    );
}

// ---------------------------------------------------------------------------------------------
// Reading bundles without airlock
// ---------------------------------------------------------------------------------------------

/// bundle.json as stored in a bundle, read with plain `zstd -dc | tar -xO` (not airlock).
pub fn read_bundle_json(bundle: &Path) -> Value {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -xO bundle.json",
            bundle.display()
        ))
        .output()
        .expect("run zstd | tar");
    assert!(
        out.status.success(),
        "zstd | tar failed: {}",
        describe_output(&out)
    );
    serde_json::from_slice(&out.stdout).expect("bundle.json is JSON")
}

/// The published JSON Schema of bundle.json (`bundle-schema/bundle.schema.json`), compiled.
pub fn bundle_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bundle-schema/bundle.schema.json"
        ))
        .expect("read schema"),
    )
    .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Asserts that a bundle.json matches the published schema, listing every violation.
pub fn assert_bundle_schema(bj: &Value) {
    let errors: Vec<String> = bundle_schema()
        .iter_errors(bj)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "bundle.json violates the schema: {errors:#?}"
    );
}

/// A command's standard error as text.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// TokenServer (tests/common/token.rs) and QuirkProxy (tests/common/quirk_proxy.rs)
// ---------------------------------------------------------------------------------------------

mod quirk_proxy;
mod token;
#[allow(unused_imports)]
pub use quirk_proxy::*;
#[allow(unused_imports)]
pub use token::*;
