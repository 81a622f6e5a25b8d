//! `airlock serve`: the registry API answered straight from compressed bundles, read by
//! skopeo (the independent witness) and by raw HTTP: every source digest, Range and HEAD,
//! paging, errors in the spec's form, writes refused, TLS and htpasswd, a base + incremental
//! chain, a damaged frame answered with an error and never with bytes, many clients at once.

mod common;

use common::*;
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `airlock serve`.
struct Served {
    child: Child,
    port: u16,
    cert_dir: Option<PathBuf>,
    creds: Option<(String, String)>,
    _home: tempfile::TempDir,
}

impl Endpoint for Served {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        self.cert_dir.clone()
    }
    fn creds(&self) -> Option<(String, String)> {
        self.creds.clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(bundles: &[&Path], extra: &[&str]) -> Served {
        Served::start_with(bundles, extra, None, None)
    }

    fn start_with(
        bundles: &[&Path],
        extra: &[&str],
        cert_dir: Option<PathBuf>,
        creds: Option<(String, String)>,
    ) -> Served {
        let home = tempfile::tempdir().expect("home");
        let port = free_port();
        let mut cmd = airlock_command(home.path());
        cmd.arg("serve")
            .args(bundles)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(home.path().join("serve.log")).expect("serve's log file"),
            );
        let child = cmd.spawn().expect("start airlock serve");
        let served = Served {
            child,
            port,
            cert_dir,
            creds,
            _home: home,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "airlock serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    /// What serve printed on its standard error so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self._home.path().join("serve.log")).unwrap_or_default()
    }

    fn raw(&self) -> RawClient {
        RawClient::new(&format!("http://127.0.0.1:{}", self.port), None, None)
    }
}

fn export_all(src: &TestRegistry, corpus: &Corpus, dir: &Path, name: &str) -> PathBuf {
    let list = dir.join(format!("{name}.txt"));
    std::fs::write(&list, corpus.images_file(&src.host())).expect("images file");
    let bundle = dir.join(format!("{name}.tar.zst"));
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().expect("utf8"),
            "-o",
            bundle.to_str().expect("utf8"),
            "-q",
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    bundle
}

/// A bundle of one image `REPO:1` with one random (incompressible) layer of `size` bytes,
/// exported from a registry that is gone once this returns. Returns the bundle and the layer's
/// digest.
fn one_layer_bundle(dir: &Path, repo: &str, seed: u64, size: usize) -> (PathBuf, String) {
    let src = TestRegistry::start(RegistryOpts::plain());
    let layer = random_layer(seed, size, false);
    let digest = layer.digest();
    src.client().push_image(
        repo,
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[layer],
        &[],
    );
    let bundle = dir.join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-q",
            &format!("{}/{repo}:1", src.host()),
            "-o",
            bundle.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    (bundle, digest)
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn error_code(r: &RawResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

/// Follows `Link` paging with `n` items a page.
fn paged(raw: &RawClient, first: &str, key: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut next = Some(first.to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages < 100, "paging does not end");
        let r = raw.request("GET", &path, &[], None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        out.extend(
            v[key]
                .as_array()
                .expect("list")
                .iter()
                .map(|x| x.as_str().expect("string").to_string()),
        );
        next = r.header("link").map(|l| {
            let start = l.find('<').expect("<") + 1;
            let end = l.find('>').expect(">");
            l[start..end].to_string()
        });
    }
    (out, pages)
}

#[test]
fn serve_answers_skopeo_with_every_source_digest_ranges_paging_and_errors() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = export_all(&src, &corpus, dir.path(), "b");
    let served = Served::start(&[&bundle], &[]);

    // skopeo reads every image with the digest it had at the source.
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&served, &img.name()),
            img.digest,
            "{} through serve",
            img.name()
        );
    }
    let index = corpus
        .images
        .iter()
        .find(|i| i.is_index())
        .expect("an index");
    let plain = corpus
        .images
        .iter()
        .find(|i| !i.is_index())
        .expect("a manifest");
    for (img, all) in [(index, true), (plain, false)] {
        let oci = dir.path().join(format!("oci-{}", img.tag));
        skopeo_copy_to_oci(&served, &img.name(), &oci, "x", all)
            .unwrap_or_else(|e| panic!("skopeo copy {}: {e}", img.name()));
    }

    // Blobs: whole, ranged, HEAD.
    let raw = served.raw();
    let layer = plain.blob_digests().into_iter().next().expect("a blob");
    let path = format!("/v2/{}/blobs/{layer}", plain.repo);
    let whole = raw.request("GET", &path, &[], None);
    assert_eq!(whole.status, 200);
    assert_eq!(sha(&whole.body), layer);
    assert_eq!(whole.header("docker-content-digest"), Some(layer.as_str()));
    let size = whole.body.len();
    assert!(size > 100, "the test layer is big enough for ranges");
    let part = raw.request("GET", &path, &[("range", "bytes=10-99")], None);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[10..100]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-99/{size}").as_str())
    );
    let tail = raw.request("GET", &path, &[("range", "bytes=-7")], None);
    assert_eq!(tail.body, whole.body[size - 7..]);
    let head = raw.request("HEAD", &path, &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(size.to_string().as_str())
    );
    let beyond = raw.request("GET", &path, &[("range", &format!("bytes={size}-"))], None);
    assert_eq!(beyond.status, 416);
    // A range past the end (however large) runs to the end; the unit's case does not matter.
    let huge = raw.request(
        "GET",
        &path,
        &[("range", "Bytes=3-99999999999999999999")],
        None,
    );
    assert_eq!((huge.status, &huge.body[..]), (206, &whole.body[3..]));
    // Ranges this server does not read (another unit, several at once, malformed) are
    // ignored: the whole blob, 200 (RFC 9110), never a 416.
    for ignored in ["items=0-1", "bytes=0-1,5-6", "bytes=9-2", "bytes=x-"] {
        let r = raw.request("GET", &path, &[("range", ignored)], None);
        assert_eq!(r.status, 200, "Range: {ignored}");
        assert_eq!(sha(&r.body), layer, "Range: {ignored}");
    }
    // The manifests endpoint serves manifests only: a blob's digest there is unknown.
    for method in ["GET", "HEAD"] {
        let r = raw.request(
            method,
            &format!("/v2/{}/manifests/{layer}", plain.repo),
            &[],
            None,
        );
        assert_eq!(r.status, 404, "{method} of a layer as a manifest");
        if method == "GET" {
            assert_eq!(error_code(&r), "MANIFEST_UNKNOWN");
        }
    }

    // Manifests: exact bytes and media type, by tag and by digest.
    let m = raw.request(
        "GET",
        &format!("/v2/{}/manifests/{}", index.repo, index.tag),
        &[("accept", MANIFEST_ACCEPT)],
        None,
    );
    assert_eq!(m.status, 200);
    assert_eq!(sha(&m.body), index.digest);
    assert_eq!(m.header("content-type"), Some(index.media_type.as_str()));
    let by_digest = raw.request(
        "HEAD",
        &format!("/v2/{}/manifests/{}", index.repo, index.digest),
        &[],
        None,
    );
    assert_eq!(by_digest.status, 200);
    assert_eq!(
        by_digest.header("docker-content-digest"),
        Some(index.digest.as_str())
    );

    // Catalog and tags, one item a page.
    let (repos, pages) = paged(&raw, "/v2/_catalog?n=1", "repositories");
    let mut expected = corpus.repos();
    expected.sort();
    expected.dedup();
    assert_eq!(repos, expected);
    assert_eq!(pages, expected.len());
    let repo_with_tags = &index.repo;
    let (tags, _) = paged(&raw, &format!("/v2/{repo_with_tags}/tags/list?n=1"), "tags");
    let mut want: Vec<String> = corpus
        .images
        .iter()
        .filter(|i| &i.repo == repo_with_tags)
        .map(|i| i.tag.clone())
        .collect();
    want.sort();
    assert_eq!(tags, want);

    // Errors in the spec's form; writes refused.
    let r = raw.request("GET", "/v2/no/such/manifests/latest", &[], None);
    assert_eq!((r.status, error_code(&r).as_str()), (404, "NAME_UNKNOWN"));
    let r = raw.request(
        "GET",
        &format!("/v2/{}/manifests/nope", plain.repo),
        &[],
        None,
    );
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = raw.request(
        "GET",
        &format!("/v2/{}/blobs/{missing}", plain.repo),
        &[],
        None,
    );
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    // A blob and a manifest the bundle holds, but for another repository's images only: not
    // there in this one, as in a registry.
    let plain_blobs = plain.blob_digests();
    let (other, foreign) = corpus
        .images
        .iter()
        .filter(|i| i.repo != plain.repo)
        .find_map(|i| {
            let b = i
                .blob_digests()
                .into_iter()
                .find(|b| !plain_blobs.contains(b))?;
            Some((i, b))
        })
        .expect("another repository with a blob of its own");
    let r = raw.request(
        "GET",
        &format!("/v2/{}/blobs/{foreign}", plain.repo),
        &[],
        None,
    );
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    let r = raw.request(
        "GET",
        &format!("/v2/{}/blobs/{foreign}", other.repo),
        &[],
        None,
    );
    assert_eq!((r.status, sha(&r.body)), (200, foreign.clone()));
    let r = raw.request(
        "GET",
        &format!("/v2/{}/manifests/{}", plain.repo, other.digest),
        &[("accept", OCI_MANIFEST)],
        None,
    );
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let r = raw.request(
        "PUT",
        &format!("/v2/{}/manifests/new", plain.repo),
        &[("content-type", OCI_MANIFEST)],
        Some(m.body.clone()),
    );
    assert_eq!((r.status, error_code(&r).as_str()), (405, "UNSUPPORTED"));
    let r = raw.request(
        "POST",
        &format!("/v2/{}/blobs/uploads/", plain.repo),
        &[],
        None,
    );
    assert_eq!((r.status, error_code(&r).as_str()), (405, "UNSUPPORTED"));

    // airlock's own client exports from serve and imports elsewhere: same digests.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let list = dir.path().join("again.txt");
    std::fs::write(&list, corpus.images_file(&served.host())).expect("list");
    let again = dir.path().join("again.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-q",
            "-f",
            list.to_str().expect("utf8"),
            "-o",
            again.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_success(&out, "export from serve");
    let out = run_airlock(
        [
            "import",
            "-q",
            again.to_str().expect("utf8"),
            "--registry",
            &dst.host(),
        ],
        &[],
        None,
    );
    assert_success(&out, "import of what serve gave");
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&dst, &img.name()),
            img.digest,
            "{}",
            img.name()
        );
    }
    // And `copy` from serve straight into a registry: the same digests again.
    let dst2 = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "copy",
            "-q",
            "-f",
            list.to_str().expect("utf8"),
            "--to-registry",
            &dst2.host(),
        ],
        &[],
        None,
    );
    assert_success(&out, "copy from serve");
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&dst2, &img.name()),
            img.digest,
            "{}",
            img.name()
        );
    }
}

#[test]
fn thirty_two_clients_at_once_get_every_blob_intact() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = export_all(&src, &corpus, dir.path(), "b");
    let served = Served::start(&[&bundle], &["-q"]);
    let mut work: Vec<(String, String)> = Vec::new();
    for img in &corpus.images {
        for d in img.blob_digests() {
            work.push((img.repo.clone(), d));
        }
    }
    let port = served.port;
    let handles: Vec<_> = (0..32)
        .map(|n| {
            let work = work.clone();
            std::thread::spawn(move || {
                let raw = RawClient::new(&format!("http://127.0.0.1:{port}"), None, None);
                let mut bad = Vec::new();
                // Each client starts at another place in the list.
                for i in 0..work.len() {
                    let (repo, d) = &work[(i + n * 7) % work.len()];
                    let r = raw.request("GET", &format!("/v2/{repo}/blobs/{d}"), &[], None);
                    if r.status != 200 || sha(&r.body) != *d {
                        bad.push(format!("{repo} {d}: {}", r.status));
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} bad answers: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

#[test]
fn serve_over_tls_with_htpasswd() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = export_all(&src, &corpus, dir.path(), "b");
    let pki = dir.path().join("pki");
    generate_test_pki(&pki);
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir_all(&cert_dir).expect("certs");
    std::fs::copy(pki.join("ca.crt"), cert_dir.join("ca.crt")).expect("ca");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, htpasswd_line("puller", "s3cret")).expect("htpasswd");
    let (crt, key) = (pki.join("server.crt"), pki.join("server.key"));
    let args = [
        "--tls-cert",
        crt.to_str().expect("utf8"),
        "--tls-key",
        key.to_str().expect("utf8"),
        "--htpasswd",
        htpasswd.to_str().expect("utf8"),
    ];
    let served = Served::start_with(
        &[&bundle],
        &args,
        Some(cert_dir),
        Some(("puller".into(), "s3cret".into())),
    );
    let img = &corpus.images[0];
    assert_eq!(skopeo_digest(&served, &img.name()), img.digest);
    assert!(
        skopeo_inspect_raw_as(&served, &img.name(), None).is_err(),
        "anonymous pull allowed"
    );
    assert!(
        skopeo_inspect_raw_as(&served, &img.name(), Some(("puller", "wrong"))).is_err(),
        "a wrong password was accepted"
    );
}

#[test]
fn a_base_and_its_incremental_serve_the_whole_month_together() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let base = export_all(&src, &corpus, dir.path(), "base");
    // Next month: one more image sharing the corpus's layers, and one new layer.
    let first = &corpus.images[0];
    let new_layer = random_layer(99, 4096, true);
    let pushed = src.client().push_image(
        &first.repo,
        Some("next"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[new_layer],
        &[],
    );
    let list = dir.path().join("next.txt");
    std::fs::write(
        &list,
        format!(
            "{}\n{}/{}:next\n",
            corpus.images_file(&src.host()),
            src.host(),
            first.repo
        ),
    )
    .expect("list");
    let inc = dir.path().join("inc.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-q",
            "-f",
            list.to_str().expect("utf8"),
            "--since",
            base.to_str().expect("utf8"),
            "-o",
            inc.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_success(&out, "incremental export");
    let both = Served::start(&[&base, &inc], &["-q"]);
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&both, &img.name()),
            img.digest,
            "{}",
            img.name()
        );
        let oci = dir
            .path()
            .join(format!("oci-{}-{}", img.repo.replace('/', "_"), img.tag));
        skopeo_copy_to_oci(&both, &img.name(), &oci, "x", true)
            .unwrap_or_else(|e| panic!("{}: {e}", img.name()));
    }
    assert_eq!(
        skopeo_digest(&both, &format!("{}:next", first.repo)),
        pushed.digest
    );
    // --image serves a subset.
    let some = Served::start(&[&base, &inc], &["-q", "--image", "src/beta:*"]);
    let raw = some.raw();
    let (repos, _) = paged(&raw, "/v2/_catalog", "repositories");
    assert_eq!(repos, vec!["src/beta".to_string()]);
    let r = raw.request("GET", "/v2/src/alpha/manifests/1.0", &[], None);
    assert_eq!((r.status, error_code(&r).as_str()), (404, "NAME_UNKNOWN"));
    drop(some);
    // The incremental alone lacks the base's layers: a pull of an old image fails cleanly.
    let alone = Served::start(&[&inc], &["-q"]);
    let layer = first.blob_digests().into_iter().next().expect("blob");
    let r = alone.raw().request(
        "GET",
        &format!("/v2/{}/blobs/{layer}", first.repo),
        &[],
        None,
    );
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
}

#[test]
fn a_damaged_frame_is_answered_with_an_error_never_with_bytes() {
    // One image whose layer (random, so incompressible) is most of the bundle.
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, layer_digest) = one_layer_bundle(dir.path(), "big/one", 7, 3 * 1024 * 1024);
    // Intact, the layer is served whole.
    {
        let intact = Served::start(&[&bundle], &["-q"]);
        let r = intact.raw().request(
            "GET",
            &format!("/v2/big/one/blobs/{layer_digest}"),
            &[],
            None,
        );
        assert_eq!((r.status, sha(&r.body)), (200, layer_digest.clone()));
    }
    let mut bytes = std::fs::read(&bundle).expect("read bundle");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&bundle, &bytes).expect("write bundle");
    let served = Served::start(&[&bundle], &["-q"]);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o"])
        .arg(dir.path().join("got"))
        .args(["-w", "%{http_code}"])
        .arg(format!(
            "http://127.0.0.1:{}/v2/big/one/blobs/{layer_digest}",
            served.port
        ))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    let got = std::fs::read(dir.path().join("got")).unwrap_or_default();
    assert!(
        code != "200" || !out.status.success(),
        "a damaged layer was served as a complete 200 ({} bytes)",
        got.len()
    );
    assert_ne!(sha(&got), layer_digest);
    assert!(
        got.len() < 3 * 1024 * 1024,
        "the damaged frame's bytes were sent ({} bytes)",
        got.len()
    );
}

/// podman, a real container engine, pulls from serve (vfs storage in a throw-away root): every
/// image lands with its source digest, a Docker manifest list and an OCI index included.
#[test]
fn podman_pulls_every_image_from_serve() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = export_all(&src, &corpus, dir.path(), "b");
    let served = Served::start(&[&bundle], &["-q"]);
    let root = dir.path().join("podman-root");
    let runroot = dir.path().join("podman-run");
    std::fs::write(dir.path().join("auth.json"), "{\"auths\":{}}\n").expect("auth.json");
    let podman = |args: &[&str]| {
        let out = std::process::Command::new("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("REGISTRY_AUTH_FILE", dir.path().join("auth.json"))
            .stdin(Stdio::null())
            .output()
            .expect("podman is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut pulled = 0;
    for img in &corpus.images {
        if img
            .manifest
            .blobs
            .iter()
            .any(|b| b.media_type == ARTIFACT_LAYER)
        {
            continue; // not a container image: podman refuses artifacts by design
        }
        let name = format!("{}/{}", served.host(), img.name());
        podman(&["pull", "-q", "--tls-verify=false", &name]);
        let digest = podman(&["image", "inspect", "--format", "{{.Digest}}", &name]);
        assert_eq!(digest, img.digest, "{name} pulled by podman");
        pulled += 1;
    }
    assert!(
        pulled >= corpus.images.len() - 1,
        "podman pulled {pulled} images"
    );
    assert!(corpus.images.iter().any(|i| i.media_type == DOCKER_LIST));
    assert!(corpus.images.iter().any(|i| i.media_type == OCI_INDEX));
}

/// A blob larger than one zstd frame (the writer starts a new frame every 4 MiB of a member,
/// its 512-byte tar header included): served whole, and ranges that cross frame boundaries
/// come back exact; with the default cache, with none (`--frame-cache 0`: a request decodes
/// the frames it sends unless another response holds them), and with one smaller than a frame
/// (`--frame-cache 1`: each frame kept alone). A cache size out of range is refused before
/// anything is served.
#[test]
fn blobs_spanning_several_frames_are_served_whole_and_by_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, layer_digest) = one_layer_bundle(dir.path(), "big/frames", 11, 40 * 1024 * 1024);
    for extra in [
        &["-q"][..],
        &["-q", "--frame-cache", "0"],
        &["-q", "--frame-cache", "1"],
    ] {
        let served = Served::start(&[&bundle], extra);
        serves_whole_and_by_range(&served, &layer_digest);
    }
    let home = tempfile::tempdir().expect("home");
    let out = airlock_command(home.path())
        .arg("serve")
        .arg(&bundle)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--frame-cache", "70000"])
        .stdin(Stdio::null())
        .output()
        .expect("run airlock serve");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--frame-cache") && err.contains("0..=65536"),
        "{err}"
    );
}

fn serves_whole_and_by_range(served: &Served, layer_digest: &str) {
    let raw = served.raw();
    let path = format!("/v2/big/frames/blobs/{layer_digest}");
    let whole = raw.request("GET", &path, &[], None);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(sha(&whole.body), layer_digest);
    let mib = 1024 * 1024;
    for (from, to) in [
        (4 * mib - 700, 4 * mib + 700),
        (16 * mib - 700, 16 * mib + 700),
        (5, 33 * mib),
        (whole.body.len() - 10, whole.body.len()),
    ] {
        let r = raw.request(
            "GET",
            &path,
            &[("range", &format!("bytes={from}-{}", to - 1))],
            None,
        );
        assert_eq!(r.status, 206);
        assert!(r.body == whole.body[from..to], "range {from}-{to} differs");
    }
    // Eight clients at once, each the whole blob: every one intact.
    let port = served.port;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let raw = RawClient::new(&format!("http://127.0.0.1:{port}"), None, None);
                let r = raw.request("GET", &path, &[], None);
                (r.status, sha(&r.body))
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().expect("client"), (200, layer_digest.to_string()));
    }
}

/// Compressible text, `n` bytes of it.
fn text_bytes(n: usize, salt: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u32;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "{salt} line {i}: the quick brown fox {} jumps over the lazy dog\n",
                i % 977
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

/// Issue 9: a layer whose media type says gzip is stored in raw zstd blocks (zstd would gain
/// nothing), an uncompressed layer and the JSON members are still compressed, and every
/// reader reads the bundle as before: verify, `zstd -dc | tar -t`, import (skopeo sees the
/// same digests, the registry the same bytes) and serve (whole blob and Range across a frame
/// boundary).
#[test]
fn gzip_layers_are_stored_and_every_reader_reads_them() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    // A real gzip (`gzip -6`) of a tar holding text and 17 MiB of noise: several 4 MiB
    // frames.
    let gz_tar = tar_of(&[
        ("etc/motd", &text_bytes(2 << 20, 1)),
        ("usr/lib/blob.bin", &random_bytes(9, 17 << 20)),
    ]);
    std::fs::write(d.join("layer.tar"), &gz_tar).expect("write tar");
    let out = std::process::Command::new("gzip")
        .args(["-6", "-n", "-c", "layer.tar"])
        .current_dir(d)
        .output()
        .expect("run gzip");
    assert!(out.status.success(), "gzip failed");
    let gz = Layer {
        tar: gz_tar,
        blob: out.stdout,
        gzip: true,
    };
    assert!(gz.blob.len() < gz.tar.len(), "gzip did not compress");
    let plain = Layer::from_files(&[("usr/share/doc/README", &text_bytes(4 << 20, 2))], false);
    let src = TestRegistry::start(RegistryOpts::plain());
    let pushed = src.client().push_image(
        "stored/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[gz.clone(), plain.clone()],
        &[],
    );

    let bundle = d.join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "--json",
            &format!("{}/stored/app:1", src.host()),
            "-o",
            bundle.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("export --json summary");
    let on_disk = std::fs::metadata(&bundle).expect("bundle").len();
    let total = summary["totalSize"].as_u64().expect("totalSize");
    let ratio = summary["compressionRatio"]
        .as_f64()
        .expect("compressionRatio");
    assert!(
        (ratio - total as f64 / on_disk as f64).abs() < 0.01,
        "{ratio} vs {total}/{on_disk}"
    );

    // The gzip layer's frames hold its bytes plus a little framing; the plain layer shrinks.
    let b = airlock::bundle::Bundle::open(&bundle).expect("open bundle");
    let st = b.seek_table();
    let stored_size = |digest: &str| -> (u64, u32) {
        let m = b
            .members()
            .find(|m| m.name == format!("blobs/sha256/{}", &digest[7..]))
            .expect("member");
        let first = st.frame_index_decomp(m.header);
        let last = st.frame_index_decomp(m.header + airlock::bundle::tar_span(m.size) - 1);
        let c = st.frame_end_comp(last).expect("end") - st.frame_start_comp(first).expect("start");
        (c, last - first + 1)
    };
    let (gz_c, gz_frames) = stored_size(&gz.digest());
    let span = airlock::bundle::tar_span(gz.size());
    let frame = u64::from(airlock::bundle::writer::FRAME_SIZE);
    assert_eq!(
        u64::from(gz_frames),
        span.div_ceil(frame),
        "the gzip layer spans one frame per {frame} bytes of its tar member"
    );
    assert!(gz_frames >= 2, "the gzip layer spans several frames");
    // Its tar member (header, data, padding), 3 bytes per raw block of at most 128 KiB, and
    // a frame header and checksum (at most 18 bytes) per frame.
    let framing = span.div_ceil(128 << 10) * 3 + u64::from(gz_frames) * 18;
    assert!(
        gz_c >= gz.size() && gz_c <= span + framing,
        "gzip layer of {} bytes takes {gz_c} in the bundle",
        gz.size()
    );
    let (plain_c, _) = stored_size(&plain.digest());
    assert!(
        plain_c < plain.size() / 4,
        "plain layer of {} bytes takes {plain_c}",
        plain.size()
    );
    assert!(on_disk < gz.size() + plain.size() / 4 + 64 * 1024);

    let out = run_airlock(["verify", bundle.to_str().expect("utf8")], &[], None);
    assert_success(&out, "verify");

    // zstd and tar read every member.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("zstd -dc b.tar.zst | tar -t")
        .current_dir(d)
        .output()
        .expect("zstd | tar");
    assert!(out.status.success(), "zstd -dc | tar -t failed");
    let listed: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let mut expected: std::collections::BTreeSet<String> =
        ["bundle.json", "oci-layout", "index.json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    // The docker-archive list: the image is a linux/amd64 one that podman can load.
    expected.insert("manifest.json".into());
    for blob in &b.manifest.blobs {
        expected.insert(blob.digest.layout_path());
    }
    assert_eq!(listed, expected);

    // Import: the same digests for skopeo, the same layer bytes at the registry.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            "-q",
            bundle.to_str().expect("utf8"),
            "--registry",
            &dst.host(),
        ],
        &[],
        None,
    );
    assert_success(&out, "import");
    assert_eq!(skopeo_digest(&dst, "stored/app:1"), pushed.digest);
    let got = dst
        .client()
        .get_blob("stored/app", &gz.digest())
        .expect("gzip layer at the registry");
    assert!(got == gz.blob, "the gzip layer's bytes differ");

    // Serve: the whole blob, and a Range across the boundary of its two frames.
    let served = Served::start(&[&bundle], &[]);
    let raw = served.raw();
    let path = format!("/v2/stored/app/blobs/{}", gz.digest());
    let r = raw.request("GET", &path, &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(sha(&r.body), gz.digest());
    // The second frame starts 4 MiB into the member's tar stream, 512 bytes of header in.
    let boundary = (4u64 << 20) - 512;
    let (from, to) = (boundary - 1000, boundary + 1000);
    let r = raw.request(
        "GET",
        &path,
        &[("Range", &format!("bytes={from}-{to}"))],
        None,
    );
    assert_eq!(r.status, 206);
    assert!(
        r.body == gz.blob[from as usize..=to as usize],
        "Range bytes differ"
    );
}

/// Clients that ask for a large layer and then stop reading (a stalled or very slow link) do
/// not hold up the others: with more of them than serve keeps frames for between pieces (and
/// than it lent frames to before, when this test hung), another client still gets the image's
/// manifest, config and that same layer, whole and intact, while they hang on.
#[test]
fn clients_that_stop_reading_do_not_hold_up_the_others() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, layer_digest) = one_layer_bundle(dir.path(), "big/frames", 12, 40 * 1024 * 1024);
    let served = Served::start(&[&bundle], &["-q"]);
    let path = format!("/v2/big/frames/blobs/{layer_digest}");
    let stalled: Vec<_> = (0..6)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("ask");
            s
        })
        .collect();
    // Long enough for serve to fill their sockets and be left waiting on them.
    std::thread::sleep(Duration::from_secs(3));
    let port = served.port;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let raw = RawClient::new(&format!("http://127.0.0.1:{port}"), None, None);
        let got = raw.get_manifest("big/frames", "1").map(|m| {
            let json: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
            let config = json["config"]["digest"].as_str().unwrap_or("").to_string();
            let config_bytes = raw.get_blob("big/frames", &config);
            (config, config_bytes.map(|b| sha(&b)))
        });
        let layer = raw.request("GET", &path, &[], None);
        let _ = tx.send((got, layer.status, sha(&layer.body)));
    });
    let (got, status, layer_sha) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the other client was held up by the ones that stopped reading");
    let (config, config_sha) = got.expect("the manifest");
    assert_eq!(config_sha.as_deref(), Some(config.as_str()));
    assert_eq!((status, layer_sha), (200, layer_digest));
    drop(stalled);
}

/// serve faces clients it cannot trust: a connection that sends nothing is closed once its
/// head has not come for 30 s (it held a connection slot and a task forever), while others
/// are answered; a request in absolute form with `user:password@` in its target is logged
/// without them.
#[test]
fn silent_connections_are_closed_and_credentials_in_a_target_are_not_logged() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, _) = one_layer_bundle(dir.path(), "small/one", 3, 4096);
    let served = Served::start(&[&bundle], &[]);
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(90)))
        .expect("read timeout");
    let opened = Instant::now();

    let mut c = std::net::TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    write!(
        c,
        "GET http://robot:s3cret-Pa55@127.0.0.1:{0}/v2/ HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\n\
         Connection: close\r\n\r\n",
        served.port
    )
    .expect("send");
    let mut answer = String::new();
    c.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let log = served.log();
    assert!(log.contains("GET /v2/ 200"), "the request is logged: {log}");
    assert!(
        !log.contains("s3cret"),
        "a password in the target was logged: {log}"
    );

    let mut one = [0u8; 1];
    let read = silent.read(&mut one);
    let waited = opened.elapsed();
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent connection was not closed by the server: {read:?} after {waited:?}"
    );
    assert!(
        waited >= Duration::from_secs(25) && waited < Duration::from_secs(60),
        "closed after {waited:?}, where the head timeout is 30 s"
    );
}

/// Stopping serve closes idle keep-alive connections at once (clients keep them open between
/// pulls) instead of waiting out the 10 s given to requests under way.
#[test]
fn a_stop_does_not_wait_for_idle_connections() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, _) = one_layer_bundle(dir.path(), "small/one", 4, 4096);
    let mut served = Served::start(&[&bundle], &["-q"]);
    let mut k = std::net::TcpStream::connect(("127.0.0.1", served.port)).expect("connect");
    write!(k, "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut buf = [0u8; 512];
    let n = k.read(&mut buf).expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "kept-alive request answered"
    );
    let pid = served.child.id().to_string();
    let stopping = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exited = loop {
        if let Ok(Some(st)) = served.child.try_wait() {
            break st;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "serve took {took:?} to stop with an idle connection open (exit {exited:?})"
    );
}

/// A frame that hides more than its seek table says (a second zstd frame of 256 MiB of zeros
/// spliced into it, 8 KiB compressed) is refused when a client asks for it, and serve does
/// not decode it whole to find out: its memory stays far below the hidden quarter GiB.
#[test]
fn a_frame_hiding_more_than_its_seek_table_says_is_refused_without_decoding_it() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, layer) = one_layer_bundle(dir.path(), "big/one", 11, 1024 * 1024);
    let zeros = zstd::stream::encode_all(std::io::repeat(0).take(256 << 20), 3).expect("zstd");
    // Into the layer's frame, the largest.
    let (frames, _) = read_seek_table(&std::fs::read(&bundle).expect("read bundle"));
    let k = (0..frames.len())
        .max_by_key(|&i| frames[i].1)
        .expect("a frame");
    splice_into_frame(&bundle, k, &zeros);
    let served = Served::start(&[&bundle], &["-q"]);
    let r = served
        .raw()
        .request("GET", &format!("/v2/big/one/blobs/{layer}"), &[], None);
    assert_eq!(r.status, 500, "a frame that lies about its size was served");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", served.child.id())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 128 * 1024,
        "serve peaked at {peak_kib} KiB: the hidden frame was decoded"
    );
}

/// A bundle made to lie: the layer's bytes changed and its frames written again, sound (their
/// checksums match) but no longer the layer. A pull of the whole blob is checked against its
/// digest on the way: it ends cut short with an error, never as a complete wrong blob.
#[test]
fn a_blob_whose_sound_frames_hold_other_bytes_is_never_served_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, layer) = one_layer_bundle(dir.path(), "big/one", 12, 1024 * 1024);
    let hex = layer.trim_start_matches("sha256:");
    let mut members = read_members(&bundle);
    let m = members
        .iter_mut()
        .find(|m| m.name().ends_with(hex))
        .expect("the layer's member");
    let last = m.data.len() - 1;
    m.data[last] ^= 0x01;
    write_bundle(&bundle, &members);
    let served = Served::start(&[&bundle], &["-q"]);
    let got = dir.path().join("got");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o"])
        .arg(&got)
        .args(["-w", "%{http_code}"])
        .arg(format!(
            "http://127.0.0.1:{}/v2/big/one/blobs/{layer}",
            served.port
        ))
        .output()
        .expect("curl");
    let body = std::fs::read(&got).unwrap_or_default();
    assert!(
        !out.status.success(),
        "curl took the answer as complete ({} bytes, HTTP {})",
        body.len(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(sha(&body), layer);
    // curl's 18: the body ended before its Content-Length.
    assert_eq!(out.status.code(), Some(18), "the answer was not cut short");
}
