//! Bad input and bad networks: unknown images, wrong passwords, TLS, corrupt and truncated
//! bundles, a registry that is down or flaky. Each gets a clear error naming the image, blob,
//! registry or file, a non-zero exit, and nothing half-done that looks complete.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Flips one byte in the middle of the compressed frame that holds `digest`'s content.
fn corrupt_blob(bundle: &Path, digest: &str) {
    let b = airlock::bundle::Bundle::open(bundle).expect("open bundle");
    let name = format!("blobs/sha256/{}", &digest[7..]);
    let m = b
        .members()
        .find(|m| m.name == name)
        .expect("blob is in the bundle");
    let table = b.seek_table();
    let frame = table.frame_index_decomp(m.header + 512 + m.size / 2);
    let start = table.frame_start_comp(frame).expect("frame start");
    let end = table.frame_end_comp(frame).expect("frame end");
    let at = start + (end - start) / 2;
    let mut bytes = std::fs::read(bundle).expect("read bundle");
    bytes[at as usize] ^= 0x40;
    std::fs::write(bundle, bytes).expect("write bundle");
}

#[test]
fn an_unknown_image_fails_naming_it_and_writes_no_bundle() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("b.tar.zst");
    let missing = format!("{}/src/nope:9.9", src.host());
    let out = run_airlock(
        [
            "export",
            &corpus.get("src/alpha", "1.0").reference(&src.host()),
            &missing,
            "-o",
            out_path.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains(&missing),
        "{}",
        stderr_text(&out)
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "left behind: {:?}",
        files_in(dir.path())
    );
    // A tag that does not exist in an existing repository, too.
    let missing_tag = format!("{}/src/alpha:0.0.0", src.host());
    let out = run_airlock(
        ["export", &missing_tag, "-o", out_path.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains(&missing_tag),
        "{}",
        stderr_text(&out)
    );
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn basic_auth_and_tls_on_both_sides_and_wrong_passwords() {
    let src = TestRegistry::start(
        RegistryOpts::plain()
            .with_auth("puller", "pull-S3cret")
            .with_tls(),
    );
    let corpus = build_corpus(&src);
    let dst = TestRegistry::start(
        RegistryOpts::plain()
            .with_auth("pusher", "push-S3cret")
            .with_tls(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("write list");
    let ca = src.ca_cert_path();

    // Wrong password: names the registry, says authentication failed, never shows the password.
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
        &[
            ("SOURCE_DOCKER_USERNAME", "puller"),
            ("SOURCE_DOCKER_PASSWORD", "wrong-Pa55word"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains(&src.host()) && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!err.contains("wrong-Pa55word"));
    assert!(!bundle.exists());

    // No credentials at all: the same, clearly.
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains("authentication failed"),
        "{}",
        stderr_text(&out)
    );

    // Without the CA the certificate is refused (verified by default).
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[
            ("SOURCE_DOCKER_USERNAME", "puller"),
            ("SOURCE_DOCKER_PASSWORD", "pull-S3cret"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(err.contains(&src.host()), "{err}");
    assert!(
        err.contains("UnknownIssuer")
            && err.contains("--ca-cert FILE")
            && err.contains(&format!("/etc/docker/certs.d/{}/ca.crt", src.host())),
        "says where the registry's CA goes: {err}"
    );

    // Right password from the environment, CA given: works.
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
        &[
            ("SOURCE_DOCKER_USERNAME", "puller"),
            ("SOURCE_DOCKER_PASSWORD", "pull-S3cret"),
        ],
        None,
    );
    assert_success(&out, "export with credentials");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pull-S3cret"));
    let raw = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}'", bundle.display()))
        .output()
        .expect("zstd");
    let text = String::from_utf8_lossy(&raw.stdout);
    assert!(
        !text.contains("pull-S3cret") && !text.contains("puller"),
        "credentials in the bundle"
    );

    // Import with --password-stdin: wrong first, then right.
    let dst_ca = dst.ca_cert_path();
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--ca-cert",
            dst_ca.to_str().unwrap(),
            "--username",
            "pusher",
            "--password-stdin",
        ],
        &[],
        Some("nope-nope\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains(&dst.host()) && err.contains("authentication failed"),
        "{err}"
    );
    assert!(!err.contains("nope-nope"));
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--ca-cert",
            dst_ca.to_str().unwrap(),
            "--username",
            "pusher",
            "--password-stdin",
        ],
        &[],
        Some("push-S3cret\n"),
    );
    assert_success(&out, "import with --password-stdin");
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&dst, &img.name()),
            img.digest,
            "{}",
            img.name()
        );
    }
    // TARGET_DOCKER_* credentials work as well (re-import: everything already there).
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--ca-cert",
            dst_ca.to_str().unwrap(),
        ],
        &[
            ("TARGET_DOCKER_REGISTRY", &dst.host()),
            ("TARGET_DOCKER_USERNAME", "pusher"),
            ("TARGET_DOCKER_PASSWORD", "push-S3cret"),
        ],
        None,
    );
    assert_success(&out, "import with TARGET_DOCKER_* credentials");
    // --insecure skips verification.
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--insecure",
        ],
        &[
            ("TARGET_DOCKER_USERNAME", "pusher"),
            ("TARGET_DOCKER_PASSWORD", "push-S3cret"),
        ],
        None,
    );
    assert_success(&out, "import with --insecure");
}

#[test]
fn docker_config_json_credentials_are_used() {
    let src = TestRegistry::start(RegistryOpts::plain().with_auth("cfguser", "cfg-pass"));
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).expect("mkdir");
    let auth = base64_encode(b"cfguser:cfg-pass");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, src.host()),
    )
    .expect("write config.json");
    let bundle = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            &corpus.get("src/alpha", "1.0").reference(&src.host()),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
        None,
    );
    assert_success(&out, "export with docker config.json");
}

/// An image-set file over two registries, the procedure's variables naming the first: its
/// username and password go to it alone; the second, whose `credentials` is `docker` too,
/// gets what docker's config.json holds for it (here another account), never the first's.
#[test]
fn image_set_credentials_from_the_environment_go_only_to_the_registry_they_name() {
    let a = TestRegistry::start(RegistryOpts::plain().with_auth("robot", "s3cret-A"));
    let b = TestRegistry::start(RegistryOpts::plain().with_auth("other", "pw-B"));
    let ca = build_corpus(&a);
    let cb = build_corpus(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).expect("mkdir");
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            b.host(),
            base64_encode(b"other:pw-B")
        ),
    )
    .expect("write config.json");
    let cfg = dir.path().join("set.yaml");
    std::fs::write(
        &cfg,
        format!(
            "registries:\n  - registry: {}\n    namespace: src\n    tls: {{ plainHttp: true }}\n    images: [{{ name: alpha, tags: ['1.0'] }}]\n  - registry: {}\n    namespace: src\n    tls: {{ plainHttp: true }}\n    images: [{{ name: beta, tags: ['1.0'] }}]\n",
            a.host(),
            b.host()
        ),
    )
    .expect("write set");
    let bundle = dir.path().join("two.tar.zst");
    let out = run_airlock(
        [
            "export",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ("SOURCE_DOCKER_REGISTRY", &a.host()),
            ("SOURCE_DOCKER_USERNAME", "robot"),
            ("SOURCE_DOCKER_PASSWORD", "s3cret-A"),
        ],
        None,
    );
    assert_success(
        &out,
        "export from two registries, each with its own credentials",
    );
    let bj = read_bundle_json(&bundle);
    let digests: Vec<&str> = bj["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter_map(|i| i["digest"].as_str())
        .collect();
    assert_eq!(
        digests,
        [
            ca.get("src/alpha", "1.0").digest.as_str(),
            cb.get("src/beta", "1.0").digest.as_str()
        ]
    );
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn a_corrupt_or_truncated_bundle_is_refused_and_no_affected_tag_is_written() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let alpha = corpus.get("src/alpha", "1.0");
    let beta = corpus.get("src/beta", "1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            &alpha.reference(&src.host()),
            &beta.reference(&src.host()),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    let good = std::fs::read(&bundle).expect("read");

    // A layer unique to beta, corrupted on the media.
    let beta_only: Vec<String> = beta
        .blob_digests()
        .into_iter()
        .filter(|d| !alpha.blob_digests().contains(d))
        .collect();
    let victim = beta_only
        .iter()
        .max_by_key(|d| {
            beta.manifest
                .blobs
                .iter()
                .find(|b| &b.digest == *d)
                .map(|b| b.size)
                .unwrap_or(0)
        })
        .expect("beta has its own layer")
        .clone();
    corrupt_blob(&bundle, &victim);

    let out = run_airlock(["verify", bundle.to_str().unwrap()], &[], None);
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains(&victim[..19]),
        "verify must name the blob: {}",
        stderr_text(&out)
    );

    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--retries",
            "0",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains(&victim[..19]) && err.contains("b.tar.zst"),
        "{err}"
    );
    assert!(
        !skopeo_exists(&dst, &beta.name()),
        "beta must not be tagged"
    );
    assert!(
        !dst.blob_exists(&beta.repo, &victim),
        "the corrupt blob must not land"
    );
    // The intact image went in.
    assert_eq!(skopeo_digest(&dst, &alpha.name()), alpha.digest);

    // Cut short: refused up front, naming the file, nothing pushed.
    std::fs::write(&bundle, &good[..good.len() / 2]).expect("truncate");
    let empty = TestRegistry::start(RegistryOpts::plain());
    for args in [
        vec!["verify", bundle.to_str().unwrap()],
        vec!["inspect", bundle.to_str().unwrap()],
        vec![
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &empty.host(),
        ],
    ] {
        let out = run_airlock(&args, &[], None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            describe_output(&out)
        );
        let err = stderr_text(&out);
        assert!(
            err.contains("b.tar.zst") && err.contains("truncated"),
            "{args:?}: {err}"
        );
    }
    assert!(empty.catalog().is_empty());
}

#[test]
fn a_registry_that_is_down_gives_a_clear_error_after_retries() {
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = run_airlock(
        [
            "export",
            &format!("{host}/src/alpha:1.0"),
            "-o",
            dir.path().join("b.tar.zst").to_str().unwrap(),
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(err.contains(&host) && err.contains("attempts"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(files_in(dir.path()).is_empty());

    let bundle_dir = tempfile::tempdir().expect("tempdir");
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let bundle = bundle_dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            &corpus.get("src/alpha", "1.0").reference(&src.host()),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &host,
            "--retries",
            "2",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(stderr_text(&out).contains(&host), "{}", stderr_text(&out));
}

#[test]
fn transient_5xx_429_and_cut_downloads_are_retried() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = |host: &str| {
        let p = dir
            .path()
            .join(format!("images-{}.txt", host.replace(':', "_")));
        std::fs::write(&p, corpus.images_file(host)).expect("write list");
        p
    };

    // 503 on the first requests.
    let proxy = FaultProxy::fail_503(&src, 3);
    let bundle = dir.path().join("a.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list(&proxy.host()).to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_success(&out, "export through 503s");
    assert_eq!(proxy.faults_injected(), 3);

    // 429 with Retry-After: 1 is honoured.
    let proxy = FaultProxy::throttle_429(&src, 2);
    let started = Instant::now();
    let out = run_airlock(
        [
            "export",
            "-f",
            list(&proxy.host()).to_str().unwrap(),
            "-o",
            dir.path().join("b.tar.zst").to_str().unwrap(),
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_success(&out, "export through 429s");
    assert_eq!(proxy.faults_injected(), 2);
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A blob download cut in the middle resumes (or restarts) and still verifies.
    let proxy = FaultProxy::for_registry(
        &src,
        FaultPlan::new(Fault::TruncateBody { after_bytes: 64 }, 2)
            .method("GET")
            .path_contains("/blobs/sha256:"),
    );
    let c = dir.path().join("c.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list(&proxy.host()).to_str().unwrap(),
            "-o",
            c.to_str().unwrap(),
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_success(&out, "export through cut downloads");
    assert_eq!(proxy.faults_injected(), 2);
    let out = run_airlock(["verify", c.to_str().unwrap()], &[], None);
    assert_success(&out, "verify after resumed downloads");

    // Blobs that stream straight into the bundle (here every blob, by lowering the size at
    // which they stream) resume a cut download with a Range request too; none is cached.
    let proxy = FaultProxy::for_registry(
        &src,
        FaultPlan::new(Fault::TruncateBody { after_bytes: 64 }, 2)
            .method("GET")
            .path_contains("/blobs/sha256:"),
    );
    let streamed = dir.path().join("streamed.tar.zst");
    let stream_cache = dir.path().join("stream-cache");
    let out = run_airlock(
        [
            "export",
            "-f",
            list(&proxy.host()).to_str().unwrap(),
            "-o",
            streamed.to_str().unwrap(),
            "--plain-http",
        ],
        &[
            ("AIRLOCK_STREAM_OVER", "1"),
            ("AIRLOCK_CACHE_DIR", stream_cache.to_str().unwrap()),
        ],
        None,
    );
    assert_success(&out, "streaming export through cut downloads");
    assert_eq!(proxy.faults_injected(), 2);
    assert!(
        proxy
            .request_log()
            .iter()
            .any(|l| l.contains("/blobs/sha256:")),
        "blob downloads went through the proxy"
    );
    // (The cache keeps the children of indexes, manifests, but no blob.)
    let blobs: std::collections::HashSet<String> = corpus
        .images
        .iter()
        .flat_map(|i| i.manifest.blobs.iter().map(|d| d.digest.clone()))
        .collect();
    let cached: Vec<String> = std::fs::read_dir(stream_cache.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                .filter(|d| blobs.contains(d))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        cached.is_empty(),
        "streamed blobs written to the cache: {cached:?}"
    );
    let out = run_airlock(["verify", streamed.to_str().unwrap()], &[], None);
    assert_success(&out, "verify after resumed streams");

    // Imports retry too.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let proxy = FaultProxy::for_registry(
        &dst,
        FaultPlan::new(Fault::ServiceUnavailable, 4)
            .method("PUT")
            .path_contains("/blobs/uploads/"),
    );
    let out = run_airlock(
        [
            "import",
            c.to_str().unwrap(),
            "--registry",
            &proxy.host(),
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_success(&out, "import through 503s");
    assert_eq!(proxy.faults_injected(), 4);
    for img in &corpus.images {
        assert_eq!(skopeo_digest(&dst, &img.name()), img.digest);
    }
}

#[test]
fn a_rerun_export_reuses_its_cache() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("write list");
    let cache_env = [("AIRLOCK_CACHE_DIR", cache.to_str().unwrap())];
    let first = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            dir.path().join("1.tar.zst").to_str().unwrap(),
            "--json",
        ],
        &cache_env,
        None,
    );
    assert_success(&first, "first export");
    let gets_before = src.access_log("GET", "/blobs/sha256:").len();
    let second = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            dir.path().join("2.tar.zst").to_str().unwrap(),
            "--json",
        ],
        &cache_env,
        None,
    );
    assert_success(&second, "second export");
    let v: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    assert_eq!(v["downloadedBytes"], 0, "{v}");
    assert_eq!(
        src.access_log("GET", "/blobs/sha256:").len(),
        gets_before,
        "no blob fetched again"
    );

    // Large blobs stream and are not cached, unless --cache-all (here every blob counts as
    // large).
    let big_cache = dir.path().join("big-cache");
    let envs = [
        ("AIRLOCK_CACHE_DIR", big_cache.to_str().unwrap()),
        ("AIRLOCK_STREAM_OVER", "1"),
    ];
    for (n, extra) in [(3, None), (4, Some("--cache-all")), (5, None)] {
        let mut args = vec![
            "export".to_string(),
            "-f".into(),
            list.to_str().unwrap().into(),
            "-o".into(),
            dir.path()
                .join(format!("{n}.tar.zst"))
                .to_str()
                .unwrap()
                .into(),
            "--json".into(),
        ];
        args.extend(extra.map(str::to_string));
        let out = run_airlock(&args, &envs, None);
        assert_success(&out, "export");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        match n {
            3 | 4 => assert_eq!(v["cachedBytes"], 0, "{v}"),
            _ => assert_eq!(v["downloadedBytes"], 0, "--cache-all kept everything: {v}"),
        }
    }
}

#[test]
fn bearer_token_auth_for_import_mount_and_export() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("write list");
    let bundle = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");

    // A registry that sends clients to a token server (Bearer JWTs per scope).
    let tok = TestRegistry::start(RegistryOpts::plain().with_token_auth("robot", "t0ken-Pass"));
    let creds = [
        ("TARGET_DOCKER_USERNAME", "robot"),
        ("TARGET_DOCKER_PASSWORD", "t0ken-Pass"),
    ];
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &tok.host(),
            "--json",
        ],
        &creds,
        None,
    );
    assert_success(&out, "import with bearer tokens");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        report["blobsMounted"].as_u64().unwrap_or(0) > 0,
        "mounts need pull on the source repository: {report}"
    );
    assert!(tok.tokens_issued() > 0);
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&tok, &img.name()),
            img.digest,
            "{}",
            img.name()
        );
    }

    // Pull side: export back from the token registry, same digests.
    let again = dir.path().join("again.tar.zst");
    let refs = corpus.images_file(&tok.host());
    let list2 = dir.path().join("images2.txt");
    std::fs::write(&list2, refs).expect("write list");
    let out = run_airlock(
        [
            "export",
            "-f",
            list2.to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ],
        &[
            ("SOURCE_DOCKER_USERNAME", "robot"),
            ("SOURCE_DOCKER_PASSWORD", "t0ken-Pass"),
        ],
        None,
    );
    assert_success(&out, "export with bearer tokens");
    let a = read_bundle_json(&bundle);
    let b = read_bundle_json(&again);
    let digests = |v: &serde_json::Value| -> Vec<String> {
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["digest"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(digests(&a), digests(&b));

    // Wrong password and no password: the token server refuses; airlock says so.
    for envs in [
        vec![
            ("TARGET_DOCKER_USERNAME", "robot"),
            ("TARGET_DOCKER_PASSWORD", "nope-nope"),
        ],
        vec![],
    ] {
        let out = run_airlock(
            [
                "import",
                bundle.to_str().unwrap(),
                "--registry",
                &tok.host(),
            ],
            &envs,
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
        let err = stderr_text(&out);
        assert!(
            err.contains(&tok.host()) && err.contains("authentication failed"),
            "{err}"
        );
        assert!(!err.contains("nope-nope"));
    }
}

/// A disk that fills up during export: a clear error naming the file, and nothing left behind.
/// Needs root to mount a tiny tmpfs (CI runs as root); elsewhere it says so and does nothing.
#[test]
fn a_full_disk_fails_the_export_cleanly() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24k", "tmpfs"])
        .arg(&small)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a 24 KiB tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let out_path = small.join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            out_path.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains("b.tar.zst") && err.contains("No space left"),
        "{err}"
    );
    assert!(
        files_in(&small).is_empty(),
        "left behind: {:?}",
        files_in(&small)
    );
}

/// Media whose file system takes no file as large as the bundle (FAT32: under 4 GiB; played
/// here by a file-size limit of 48 KiB, with SIGXFSZ ignored, so that a write past it fails
/// with EFBIG as it does on FAT32): a clear error naming the file and saying to split, nothing
/// left behind; with `--split-size` under the limit the export fits and verifies.
#[test]
fn a_bundle_too_large_for_its_file_system_says_to_split_it() {
    use std::os::unix::process::CommandExt;
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let media = dir.path().join("media");
    std::fs::create_dir(&media).expect("mkdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let bundle = media.join("b.tar.zst");
    const LIMIT: u64 = 48 * 1024;
    let export = |extra: &[&str]| {
        let home = tempfile::tempdir().expect("home");
        let mut cmd = airlock_command(home.path());
        cmd.args(["export", "-f", list.to_str().unwrap(), "-o"])
            .arg(&bundle)
            .args(extra);
        // The limit holds for every file; the cache's (the corpus's blobs) are all under it.
        let cache = dir.path().join("cache");
        cmd.arg("--cache-dir").arg(&cache);
        // SAFETY: between fork and exec, only async-signal-safe calls (setrlimit, signal).
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: LIMIT as libc::rlim_t,
                    rlim_max: LIMIT as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
        cmd.output().expect("run airlock")
    };
    let out = export(&[]);
    let err = stderr_text(&out);
    println!("{}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        err.contains(&bundle.display().to_string()) && err.contains("File too large"),
        "{err}"
    );
    assert!(err.contains("--split-size"), "says to split: {err}");
    assert!(
        files_in(&media).is_empty(),
        "left behind: {:?}",
        files_in(&media)
    );

    let out = export(&["--split-size", "32K"]);
    assert_success(
        &out,
        "export in 32 KiB volumes under a 48 KiB file-size limit",
    );
    let first = media.join("b.tar.zst.001");
    assert!(first.exists(), "{:?}", files_in(&media));
    let out = run_airlock(["verify", first.to_str().unwrap()], &[], None);
    assert_success(&out, "verify the volumes");
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A registry behind mutual TLS, set up the way docker and podman are: its CA and a client
/// certificate in `certs.d/HOST:PORT/` (here the user's, under `$XDG_CONFIG_HOME`). airlock
/// finds them there with no flag, exports and imports; with the CA alone the registry refuses
/// the connection, and the error names the registry.
#[test]
fn certs_d_gives_the_registrys_ca_and_client_certificate() {
    let reg = TestRegistry::start(RegistryOpts::plain().with_client_certs());
    let pushed = reg.client().push_image(
        "mtls/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0x3a1, "mtls", true)],
        &[],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    let certs = config.join("containers/certs.d").join(reg.host());
    std::fs::create_dir_all(&certs).expect("mkdir certs.d");
    std::fs::copy(reg.ca_cert_path(), certs.join("ca.crt")).expect("copy ca.crt");
    let bundle = dir.path().join("b.tar.zst");
    let image = format!("{}/mtls/app:1", reg.host());
    let config_s = config.to_str().expect("utf-8 path").to_string();
    let env = [("XDG_CONFIG_HOME", config_s.as_str())];
    let export = || {
        run_airlock(
            ["export", image.as_str(), "-o", bundle.to_str().unwrap()],
            &env,
            None,
        )
    };

    // The CA alone: the TLS handshake fails, the registry wants a client certificate.
    let out = export();
    let err = stderr_text(&out);
    println!("without a client certificate: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(err.contains(&reg.host()), "{err}");
    assert!(err.contains("client certificate"), "{err}");
    assert!(!bundle.exists());

    // The client certificate and its key beside the CA, as docker pairs them.
    for f in ["client.cert", "client.key"] {
        std::fs::copy(reg.cert_dir().join(f), certs.join(f)).expect("copy the client pair");
    }
    let out = export();
    assert_success(&out, "export with certs.d");
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &reg.host(),
            "--repository",
            "copied",
        ],
        &env,
        None,
    );
    assert_success(&out, "import with certs.d");
    assert_eq!(skopeo_digest(&reg, "copied/mtls/app:1"), pushed.digest);
}

/// A registry whose certificate is out of its dates: expired, or "not valid yet" to a
/// disconnected machine whose clock is off (no NTP, often days or years). Export from it and
/// import into it fail before any work, naming the registry and the reason, and saying what
/// this machine's clock says, so that the operator can tell a wrong clock from a certificate
/// to renew; nothing is written.
#[test]
fn a_certificate_out_of_its_dates_says_what_this_machines_clock_says() {
    let expired = TestRegistry::start(RegistryOpts::plain().with_expired_certificate());
    expired.client().push_image(
        "old/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0xda7e, "expired", true)],
        &[],
    );
    let today = || {
        let out = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .expect("run date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The day before the runs, and after each (a run across midnight says either).
    let before = today();
    let ca = expired.ca_cert_path();
    let ca = ca.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let bundle_s = bundle.to_str().expect("utf-8 path");
    let says = |err: &str| {
        assert!(err.contains(&expired.host()), "{err}");
        assert!(err.contains("Expired"), "{err}");
        assert!(
            [before.clone(), today()]
                .iter()
                .any(|d| err.contains(&format!("this machine's clock, which says {d}"))),
            "{err}"
        );
    };

    let image = format!("{}/old/app:1", expired.host());
    let out = run_airlock(
        ["export", image.as_str(), "-o", bundle_s, "--ca-cert", ca],
        &[],
        None,
    );
    let err = stderr_text(&out);
    println!("export: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    says(&err);
    assert!(!bundle.exists());

    // The disconnected side: a bundle from a good registry, into the expired one.
    let good = TestRegistry::start(RegistryOpts::plain());
    good.client().push_image(
        "new/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0xda7f, "good", true)],
        &[],
    );
    let image = format!("{}/new/app:1", good.host());
    let out = run_airlock(["export", image.as_str(), "-o", bundle_s], &[], None);
    assert_success(&out, "export from a good registry");
    let host = expired.host();
    let out = run_airlock(
        ["import", bundle_s, "--registry", &host, "--ca-cert", ca],
        &[],
        None,
    );
    let err = stderr_text(&out);
    println!("import: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    says(&err);
    assert!(expired.get_manifest("new/app", "1").is_none());
}
