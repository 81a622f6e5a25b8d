//! [`RawClient`]: an independent, minimal registry client on reqwest used to build and
//! inspect test content.

use serde_json::json;
use serde_json::Value;
use std::time::Duration;

use super::corpus::{
    image_config, pretty3, Descriptor, ImageFormat, Layer, Platform, PushedManifest,
};
use super::media::{
    DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_CONFIG, OCI_INDEX,
    OCI_MANIFEST,
};
use super::util::sha256_digest;

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
        RawClient::with_identity(base_url, auth, ca_pem, None, false)
    }

    /// [`RawClient::new`] presenting a client certificate (`identity_pem`: key and certificate),
    /// and with `any_dates`, taking a certificate whatever its dates (a registry serving an
    /// expired one on purpose).
    pub fn with_identity(
        base_url: &str,
        auth: Option<(String, String)>,
        ca_pem: Option<&[u8]>,
        identity_pem: Option<&[u8]>,
        any_dates: bool,
    ) -> RawClient {
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
        if let Some(pem) = identity_pem {
            let id = reqwest::Identity::from_pem(pem).expect("parse test client certificate");
            b = b.identity(id);
        }
        if any_dates {
            b = b.danger_accept_invalid_certs(true);
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

fn push_unique(v: &mut Vec<Descriptor>, d: Descriptor) {
    if !v.iter().any(|x| x.digest == d.digest) {
        v.push(d);
    }
}
