//! Self-test of the integration-test harness in `tests/common`: real registries, the corpus,
//! the skopeo witness and the fault-injecting proxy. Uses no airlock code.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn corpus_matches_skopeo_on_plain_registry() {
    let reg = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&reg);

    // Every manifest kind is present.
    let kinds: Vec<&str> = corpus
        .images
        .iter()
        .map(|i| i.media_type.as_str())
        .collect();
    for mt in [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST] {
        assert!(kinds.contains(&mt), "corpus lacks {mt}");
    }
    assert_eq!(corpus.get("src/artifact", "v1").media_type, OCI_MANIFEST);
    assert_eq!(
        corpus.get("src/alpha", "1.1").digest,
        corpus.get("src/alpha", "latest").digest
    );
    assert!(corpus.in_namespace("other").len() == 1);
    assert!(corpus.in_namespace(CORPUS_NAMESPACE).len() >= 6);

    for img in &corpus.images {
        // The independent witness sees exactly the bytes the pusher wrote.
        assert_eq!(
            skopeo_digest(&reg, &img.name()),
            img.digest,
            "skopeo digest of {}",
            img.name()
        );
        let m = reg
            .get_manifest(&img.repo, &img.tag)
            .unwrap_or_else(|| panic!("{} missing", img.name()));
        assert_eq!(m.digest, img.digest);
        assert_eq!(m.media_type, img.media_type);
        assert_eq!(m.bytes, img.manifest.bytes);
        // Deliberately non-canonical: a 3-space pretty print.
        assert!(
            String::from_utf8_lossy(&m.bytes).contains("\n   \"schemaVersion\""),
            "{} is not 3-space indented",
            img.name()
        );
        assert!(skopeo_exists(&reg, &format!("{}@{}", img.repo, img.digest)));
        for c in img.child_digests() {
            assert!(skopeo_exists(&reg, &format!("{}@{c}", img.repo)));
        }
        for b in img.blob_digests() {
            assert!(
                reg.blob_exists(&img.repo, &b),
                "{} lacks blob {b}",
                img.repo
            );
        }
    }
    assert!(!skopeo_exists(&reg, "src/alpha:nope"));

    // The shared base layer really is shared across repositories.
    assert!(
        corpus.shared_layer_repos.len() >= 4,
        "{:?}",
        corpus.shared_layer_repos
    );
    assert!(corpus
        .shared_layer_repos
        .contains(&"other/delta".to_string()));
    for r in &corpus.shared_layer_repos {
        assert!(reg.blob_exists(r, &corpus.shared_layer_digest));
    }

    // Platforms of the OCI index and the manifest list, and their configs agree.
    let multi = corpus.get("src/multi", "2.0");
    let idx: serde_json::Value = serde_json::from_slice(&multi.manifest.bytes).expect("index json");
    let plats: Vec<String> = idx["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or(""),
                m["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(plats, ["linux/amd64", "linux/arm64"]);
    for child in &multi.manifest.children {
        let m: serde_json::Value = serde_json::from_slice(&child.bytes).expect("manifest json");
        let cfg_digest = m["config"]["digest"].as_str().expect("config digest");
        let cfg = reg
            .client()
            .get_blob("src/multi", cfg_digest)
            .expect("config blob");
        let cfg: serde_json::Value = serde_json::from_slice(&cfg).expect("config json");
        let p = child.platform.as_ref().expect("child platform");
        assert_eq!(cfg["architecture"], p.architecture.as_str());
        assert_eq!(cfg["os"], p.os.as_str());
        assert_eq!(
            cfg["rootfs"]["diff_ids"].as_array().map(Vec::len),
            m["layers"].as_array().map(Vec::len)
        );
    }
    let gamma = corpus.get("src/gamma", "3.0");
    let specs: Vec<String> = gamma
        .manifest
        .children
        .iter()
        .map(|c| c.platform.as_ref().expect("platform").spec())
        .collect();
    assert_eq!(specs, ["linux/amd64", "linux/arm/v7"]);

    // skopeo can copy images of each kind into an OCI layout (configs are valid enough).
    let oci = tempfile::tempdir().expect("tempdir");
    let layout = oci.path().join("layout");
    for (image, all) in [
        ("src/alpha:1.1", false),
        ("src/beta:1.0", false),
        ("src/gamma:3.0", true),
        ("src/multi:2.0", true),
    ] {
        skopeo_copy_to_oci(
            &reg,
            image,
            &layout,
            image.replace(['/', ':'], "-").as_str(),
            all,
        )
        .unwrap_or_else(|e| panic!("skopeo copy {image} to oci: failed: {e}"));
    }

    // Images file.
    let f = corpus.images_file(&reg.host());
    assert!(f.contains(&format!("{}/src/alpha:1.0\n", reg.host())));
    assert_eq!(
        f.lines().filter(|l| l.contains('/')).count(),
        corpus.images.len()
    );
    let only_alpha = corpus.images_file_where(&reg.host(), |i| i.repo == "src/alpha");
    assert_eq!(only_alpha.lines().filter(|l| l.contains('/')).count(), 3);

    // Catalog and tags.
    let cat = reg.catalog();
    for r in corpus.repos() {
        assert!(cat.contains(&r), "catalog lacks {r}");
    }
    assert_eq!(reg.tags("src/alpha"), ["1.0", "1.1", "latest"]);

    // The access log shows requests (used by tests that count uploads).
    assert!(!reg
        .access_log("PUT", "/v2/src/alpha/manifests/1.0")
        .is_empty());
}

#[test]
fn corpus_is_deterministic_per_seed() {
    let reg = TestRegistry::start(RegistryOpts::plain());
    let a = build_corpus_with(reg.client(), &CorpusOptions::default());
    let b = build_corpus_with(
        reg.client(),
        &CorpusOptions {
            namespace: "again".into(),
            other_namespace: "again-other".into(),
            ..CorpusOptions::default()
        },
    );
    let c = build_corpus_with(
        reg.client(),
        &CorpusOptions {
            seed: 7,
            namespace: "seven".into(),
            other_namespace: "seven-other".into(),
        },
    );
    let digests = |c: &Corpus| {
        c.images
            .iter()
            .map(|i| i.digest.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&a), digests(&b), "same seed, same digests");
    assert_eq!(a.all_blob_digests(), b.all_blob_digests());
    for (x, y) in a.images.iter().zip(&c.images) {
        assert_ne!(
            x.digest,
            y.digest,
            "{} should differ with another seed",
            x.name()
        );
    }
    let a_blobs = a.all_blob_digests();
    assert!(c.all_blob_digests().iter().all(|d| !a_blobs.contains(d)));
}

#[test]
fn auth_and_tls_registry() {
    let reg = TestRegistry::start(
        RegistryOpts::plain()
            .with_auth("tester", "s3cret-pass")
            .with_tls(),
    );
    assert!(reg.url().starts_with("https://127.0.0.1:"));
    assert!(reg.cert_dir().join("ca.crt").is_file());
    assert!(reg.ca_cert_path().is_file());

    // The harness client (creds + CA) can push.
    let layer = small_layer(1, "auth", true);
    let img = reg.client().push_image(
        "secure/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[layer],
        &[],
    );

    // skopeo with creds + cert-dir works and sees the same digest.
    assert_eq!(skopeo_digest(&reg, "secure/app:1"), img.digest);
    assert!(skopeo_exists(&reg, "secure/app:1"));

    // Without creds: refused.
    let err = skopeo_inspect_raw_as(&reg, "secure/app:1", None).expect_err("anonymous must fail");
    assert!(
        err.contains("unauthorized")
            || err.contains("authentication required")
            || err.contains("401"),
        "unexpected error: {err}"
    );
    // Wrong password: refused.
    assert!(skopeo_inspect_raw_as(&reg, "secure/app:1", Some(("tester", "wrong"))).is_err());
    // Without the CA: TLS verification fails.
    let (mut cmd, _tmp) = skopeo_command();
    let out = cmd
        .args(["inspect", "--raw", "--creds", "tester:s3cret-pass"])
        .arg(format!("docker://{}/secure/app:1", reg.host()))
        .output()
        .expect("run skopeo");
    assert!(
        !out.status.success(),
        "skopeo must not trust the test CA by default"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("x509") || stderr.contains("certificate"),
        "{stderr}"
    );

    // Raw: 401 with a Basic challenge when no credentials are sent.
    let anon = RawClient::new(
        &reg.url(),
        None,
        Some(&std::fs::read(reg.ca_cert_path()).expect("read CA")),
    );
    let r = anon.request("GET", "/v2/", &[], None);
    assert_eq!(r.status, 401);
    let chal = r.header("www-authenticate").unwrap_or_default().to_string();
    assert!(chal.starts_with("Basic realm="), "challenge: {chal}");
    assert_eq!(reg.client().request("GET", "/v2/", &[], None).status, 200);
}

#[test]
fn fault_proxy_injects_then_forwards() {
    let reg = TestRegistry::start(RegistryOpts::plain());
    let proxy = FaultProxy::fail_503(&reg, 3);
    let c = RawClient::new(&proxy.url(), None, None);
    for i in 0..3 {
        let r = c.request("GET", "/v2/", &[], None);
        assert_eq!(r.status, 503, "request {i}");
        assert_eq!(r.header("connection"), Some("close"));
    }
    let r = c.request("GET", "/v2/", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(proxy.faults_injected(), 3);
    assert_eq!(proxy.requests(), 4);

    // Uploads through the proxy work once it forwards (Location points back at the proxy).
    let blob = random_bytes(5, 300_000);
    let d = c.push_blob("via/proxy", &blob);
    assert_eq!(
        reg.client().get_blob("via/proxy", &d.digest),
        Some(blob.clone())
    );
    assert_eq!(proxy.requests(), 6, "{:#?}", proxy.request_log());

    // 429 with Retry-After, only for blob requests, after skipping one.
    proxy.set_plan(
        FaultPlan::new(
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            2,
        )
        .path_contains("/blobs/")
        .skip(1),
    );
    assert_eq!(c.request("GET", "/v2/", &[], None).status, 200);
    let path = format!("/v2/via/proxy/blobs/{}", d.digest);
    assert_eq!(c.request("HEAD", &path, &[], None).status, 200);
    let r = c.request("GET", &path, &[], None);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(c.request("GET", &path, &[], None).status, 429);
    assert_eq!(c.request("GET", &path, &[], None).body, blob);

    // A 503 while the client is still sending a request body is read as a 503, not a reset.
    proxy.set_plan(FaultPlan::new(Fault::ServiceUnavailable, 1).method("PUT"));
    let r = c.request(
        "PUT",
        "/v2/via/proxy/blobs/uploads/x",
        &[],
        Some(vec![7u8; 2_000_000]),
    );
    assert_eq!(r.status, 503);

    // Disconnect: the client sees a connection error.
    proxy.set_plan(FaultPlan::new(Fault::Disconnect, 1));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.request("GET", "/v2/", &[], None)
    }));
    assert!(caught.is_err(), "a disconnect must fail the request");

    // Truncated body: the client gets fewer bytes than Content-Length, then an error.
    proxy.set_plan(FaultPlan::new(Fault::TruncateBody { after_bytes: 1000 }, 1).method("GET"));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.request("GET", &path, &[], None)
    }));
    assert!(caught.is_err(), "a truncated body must fail the request");
    let r = c.request("GET", &path, &[("range", "bytes=1000-")], None);
    assert!(
        r.status == 206 || r.status == 200,
        "range status {}",
        r.status
    );
    if r.status == 206 {
        assert_eq!(r.body, blob[1000..]);
    }

    // skopeo through the proxy (plain endpoint).
    proxy.set_plan(FaultPlan::none());
    let img = reg.client().push_image(
        "via/img",
        Some("t"),
        ImageFormat::Docker,
        &Platform::linux_amd64(),
        &[small_layer(3, "x", true)],
        &[],
    );
    assert_eq!(skopeo_digest(&proxy, "via/img:t"), img.digest);

    // Dropping the proxy stops it.
    let host = proxy.host();
    drop(proxy);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if std::net::TcpStream::connect(&host).is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "proxy still accepting after drop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gzip_layers_are_valid_gzip_and_tar() {
    for n in [0usize, 10, 65535, 65536, 200_000] {
        let data = random_bytes(n as u64, n);
        let gz = gzip_stored(&data);
        let mut child = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run gzip");
        let mut stdin = child.stdin.take().expect("stdin");
        let t = std::thread::spawn(move || stdin.write_all(&gz).expect("write to gzip"));
        let out = child.wait_with_output().expect("gzip output");
        t.join().expect("writer");
        assert!(out.status.success(), "gzip -dc failed for n={n}");
        assert_eq!(out.stdout, data, "round trip n={n}");
    }
    let layer = random_layer(9, 100_000, true);
    let mut ar = tar::Archive::new(layer.tar.as_slice());
    let entries: Vec<_> = ar
        .entries()
        .expect("tar entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(entries, ["data.bin"]);
    assert_eq!(layer.diff_id(), sha256_digest(&layer.tar));
    assert_ne!(layer.digest(), layer.diff_id());
}

#[tokio::test]
async fn harness_is_usable_from_async_tests() {
    let reg = TestRegistry::start(RegistryOpts::plain());
    let d = reg.push_blob("async/test", b"hello");
    assert!(reg.blob_exists("async/test", &d.digest));
    drop(reg);
}

#[test]
fn registry_restart_keeps_content_and_port() {
    let mut reg = TestRegistry::start(RegistryOpts::plain());
    let d = reg.push_blob("keep/me", b"persistent");
    let url = reg.url();
    reg.stop();
    assert_eq!(reg.client().ping(Duration::from_millis(300)), None);
    reg.restart();
    assert_eq!(reg.url(), url);
    assert!(reg.blob_exists("keep/me", &d.digest));
    assert_eq!(reg.access_log("PUT", "/v2/keep/me/blobs/uploads/").len(), 1);
}
