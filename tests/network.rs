//! Real networks (issue 7): slow links, stalls, forward proxies, and concurrent imports of
//! shared manifests.
//!
//! Every test talks to a real registry, here through a [`ThrottleProxy`] that holds each
//! connection to a bandwidth or freezes, or a [`ForwardProxy`] such as sites put between the
//! connected side and the internet. What is checked is what a user relies on: exit codes, how
//! long a failure takes, the error naming the registry (or the proxy), and the digests at the
//! target.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// `net/big:1`: one OCI image whose only layer is `size` random (incompressible) bytes.
fn push_big_image(reg: &TestRegistry, size: usize) -> PushedManifest {
    reg.client().push_image(
        "net/big",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[random_layer(0x5107, size, false)],
        &[],
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Asserts a failed run: exit 1, within `limit`, an error naming `host` and saying it stalled.
fn assert_stall_failure(out: &Output, took: Duration, limit: Duration, host: &str, what: &str) {
    println!(
        "{what}: exit {:?} after {took:?}; {}",
        out.status.code(),
        stderr_text(out).trim()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1\n{}",
        describe_output(out)
    );
    assert!(
        took < limit,
        "{what}: took {took:?}, more than {limit:?}\n{}",
        describe_output(out)
    );
    let err = stderr_text(out);
    assert!(
        err.contains(host),
        "{what}: the error does not name the registry {host}:\n{err}"
    );
    let lower = err.to_lowercase();
    assert!(
        ["stall", "timed out", "timeout"]
            .iter()
            .any(|w| lower.contains(w)),
        "{what}: the error does not say the transfer stalled or timed out:\n{err}"
    );
}

#[test]
fn the_throttle_proxy_holds_its_rate_both_ways_and_counts_bytes() {
    let reg = TestRegistry::start(RegistryOpts::plain());
    let rate = 256 * 1024;
    let proxy = ThrottleProxy::for_registry(&reg, rate);
    let via = RawClient::new(&format!("http://{}", proxy.host()), None, None);
    let blob = random_bytes(11, 512 * 1024);

    let t = Instant::now();
    let d = via.push_blob("net/throttle", &blob);
    let up = t.elapsed();
    assert!(reg.blob_exists("net/throttle", &d.digest));
    let t = Instant::now();
    let back = via
        .get_blob("net/throttle", &d.digest)
        .expect("blob reads back");
    let down = t.elapsed();
    assert_eq!(sha256_digest(&back), d.digest);

    // 512 KiB at 256 KiB/s: about 2 s each way (less the first slice), never near instant.
    for (dir, took) in [("up", up), ("down", down)] {
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "{dir}: 512 KiB at 256 KiB/s took {took:?}"
        );
    }
    assert!(
        proxy.bytes_up() >= blob.len() as u64,
        "{}",
        proxy.bytes_up()
    );
    assert!(
        proxy.bytes_down() >= blob.len() as u64,
        "{}",
        proxy.bytes_down()
    );
    assert!(proxy.connections() >= 1);

    // Frozen: a request gets nowhere; thawed: it completes.
    proxy.set_rate(0);
    proxy.freeze();
    let before = proxy.bytes_down();
    let frozen = RawClient::new(&format!("http://{}", proxy.host()), None, None);
    let waiter = std::thread::spawn(move || frozen.ping(Duration::from_millis(800)));
    assert_eq!(
        waiter.join().expect("ping thread"),
        None,
        "a frozen proxy answered"
    );
    assert_eq!(proxy.bytes_down(), before, "bytes moved while frozen");
    proxy.thaw();
    assert_eq!(via.ping(Duration::from_secs(5)), Some(200));
}

#[test]
fn the_throttle_proxy_passes_tls_through() {
    let reg = TestRegistry::start(RegistryOpts::plain().with_tls());
    let pushed = reg.client().push_image(
        "net/tls",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(3, "tls", true)],
        &[],
    );
    let proxy = ThrottleProxy::for_registry(&reg, 512 * 1024);
    let ca = std::fs::read(reg.ca_cert_path()).expect("read the test CA");
    let via = RawClient::new(&format!("https://{}", proxy.host()), None, Some(&ca));
    let m = via
        .get_manifest("net/tls", "1")
        .expect("the manifest reads back over TLS through the proxy");
    assert_eq!(m.digest, pushed.digest);
    // skopeo through the proxy, trusting the registry's CA (the certificate names 127.0.0.1).
    assert_eq!(skopeo_digest(&proxy, "net/tls:1"), pushed.digest);
    assert!(proxy.bytes_down() > 0 && proxy.bytes_up() > 0);
}

#[test]
fn an_upload_or_download_slower_than_the_idle_timeout_completes() {
    const SIZE: usize = 6 * MIB;
    const RATE: u64 = MIB as u64;
    let src = TestRegistry::start(RegistryOpts::plain());
    let big = push_big_image(&src, SIZE);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("big.tar.zst");

    // Download: ~6 s through 1 MiB/s with --timeout 2s; bytes flow all along.
    let proxy = ThrottleProxy::for_registry(&src, RATE);
    let t = Instant::now();
    let out = run_airlock(
        [
            "export",
            &format!("{}/net/big:1", proxy.host()),
            "-o",
            path_str(&bundle),
            "--timeout",
            "2s",
            "--plain-http",
        ],
        &[],
        None,
    );
    let took = t.elapsed();
    println!("export of 6 MiB at 1 MiB/s with --timeout 2s: {took:?}");
    assert_success(&out, "export through a 1 MiB/s link with --timeout 2s");
    assert!(
        proxy.bytes_down() >= SIZE as u64,
        "the layer did not come through the proxy ({} bytes)",
        proxy.bytes_down()
    );
    assert!(
        took >= Duration::from_secs(4),
        "the throttle did not hold the download ({took:?} for 6 MiB at 1 MiB/s)"
    );
    drop(proxy);
    let out = run_airlock(["verify", path_str(&bundle)], &[], None);
    assert_success(&out, "verify the slowly exported bundle");

    // Upload: the one request carrying the 6 MiB layer takes ~6 s, three times --timeout.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let proxy = ThrottleProxy::for_registry(&dst, RATE);
    let t = Instant::now();
    let out = run_airlock(
        [
            "import",
            path_str(&bundle),
            "--registry",
            &proxy.host(),
            "--timeout",
            "2s",
            "--plain-http",
        ],
        &[],
        None,
    );
    let took = t.elapsed();
    println!("import of 6 MiB at 1 MiB/s with --timeout 2s: {took:?}");
    assert_success(&out, "import through a 1 MiB/s link with --timeout 2s");
    assert!(
        proxy.bytes_up() >= SIZE as u64,
        "the layer did not go through the proxy ({} bytes)",
        proxy.bytes_up()
    );
    assert!(
        took >= Duration::from_secs(4),
        "the throttle did not hold the upload ({took:?} for 6 MiB at 1 MiB/s)"
    );
    assert_eq!(skopeo_digest(&dst, "net/big:1"), big.digest);
    for b in big.blob_digests() {
        assert!(
            dst.blob_exists("net/big", &b),
            "blob {b} missing at the target"
        );
    }
    // Not re-sent after a timeout: one upload's worth plus requests, not two.
    assert!(
        proxy.bytes_up() < (SIZE + SIZE / 2) as u64,
        "the layer was sent more than once ({} bytes up)",
        proxy.bytes_up()
    );
}

/// A link that drops a long download again and again, more often in all than `--retries`
/// allows, each time after some bytes: each try moves the download forward (resumed with
/// `Range` where it stopped), so it completes, checked; the count is of failures in a row.
#[test]
fn a_download_cut_more_often_than_its_retries_completes_while_each_try_moves_it_forward() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let big = push_big_image(&src, 2 * MIB);
    let layer = big
        .blobs
        .iter()
        .max_by_key(|d| d.size)
        .expect("a layer")
        .digest
        .clone();
    let proxy = FaultProxy::for_registry(
        &src,
        FaultPlan::new(
            Fault::TruncateBody {
                after_bytes: 256 * 1024,
            },
            4,
        )
        .method("GET")
        .path_contains(&format!("/blobs/{layer}")),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("cut.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/net/big:1", proxy.host()),
            "-o",
            path_str(&out_path),
            "--retries",
            "1",
            "--plain-http",
            "--cache-dir",
            path_str(&dir.path().join("cache")),
        ],
        &[],
        None,
    );
    assert_success(&out, "export through a link that cuts the layer four times");
    assert_eq!(
        proxy.faults_injected(),
        4,
        "the layer's download was cut four times"
    );
    let out = run_airlock(["verify", path_str(&out_path)], &[], None);
    assert_success(&out, "verify after the resumed download");
}

#[test]
fn a_stalled_registry_fails_fast_naming_it() {
    let src = TestRegistry::start(RegistryOpts::plain());
    push_big_image(&src, 6 * MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = Duration::from_secs(20);

    // A registry that accepts connections and never answers.
    let proxy = ThrottleProxy::for_registry(&src, 0);
    proxy.freeze();
    let out_path = dir.path().join("silent.tar.zst");
    let t = Instant::now();
    let out = run_airlock(
        [
            "export",
            &format!("{}/net/big:1", proxy.host()),
            "-o",
            path_str(&out_path),
            "--timeout",
            "1s",
            "--retries",
            "1",
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_stall_failure(
        &out,
        t.elapsed(),
        limit,
        &proxy.host(),
        "export from a silent registry",
    );
    assert!(!out_path.exists(), "a bundle was left after the failure");
    assert_eq!(proxy.bytes_down(), 0);
    drop(proxy);

    // A registry that freezes in the middle of the layer's body.
    let proxy = ThrottleProxy::for_registry(&src, 0);
    proxy.freeze_after_down(MIB as u64);
    let out_path = dir.path().join("frozen.tar.zst");
    let t = Instant::now();
    let out = run_airlock(
        [
            "export",
            &format!("{}/net/big:1", proxy.host()),
            "-o",
            path_str(&out_path),
            "--timeout",
            "1s",
            "--retries",
            "1",
            "--plain-http",
        ],
        &[],
        None,
    );
    assert_stall_failure(
        &out,
        t.elapsed(),
        limit,
        &proxy.host(),
        "export from a registry that freezes mid-body",
    );
    assert!(
        proxy.is_frozen(),
        "the proxy never froze: the export failed before the layer's body\n{}",
        describe_output(&out)
    );
    assert!(!out_path.exists(), "a bundle was left after the failure");
}

/// The tags of `shared/app`, all on one OCI index.
const APP_TAGS: [&str; 3] = ["latest", "v1.1.0", "v1.1"];

/// One tag of the shared-manifest corpus and the manifests below it.
struct SharedTag {
    repo: String,
    tag: String,
    digest: String,
    children: Vec<String>,
}

/// Three repositories whose tags share manifests:
/// - `shared/app`: one OCI index (amd64 + arm64) tagged `latest`, `v1.1.0` and `v1.1`;
/// - `shared/tool`: one Docker manifest list (amd64 + arm/v7) tagged `2.0` and `2`;
/// - `shared/plain`: one OCI manifest tagged `1.0` and `stable`.
fn build_shared_corpus(reg: &TestRegistry) -> Vec<SharedTag> {
    let c = reg.client();
    let amd64 = Platform::linux_amd64();
    let arm64 = Platform::new("linux", "arm64", Some("v8"));
    let armv7 = Platform::new("linux", "arm", Some("v7"));
    let base = small_layer(42, "shared-base", true);
    let mut tags = Vec::new();
    let mut tag_all = |repo: &str, m: &PushedManifest, names: &[&str]| {
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                let d = c.push_manifest(repo, name, &m.bytes, &m.media_type);
                assert_eq!(d, m.digest, "re-tagging {repo}:{name}");
            }
            tags.push(SharedTag {
                repo: repo.into(),
                tag: (*name).into(),
                digest: m.digest.clone(),
                children: m.children.iter().map(|c| c.digest.clone()).collect(),
            });
        }
    };

    // The index carries several platforms, so each import of one of its tags writes several
    // child manifests: more manifests written twice at once when tags are pushed in parallel.
    let app = "shared/app";
    let mut children = Vec::new();
    for (i, p) in [
        amd64.clone(),
        arm64.clone(),
        armv7.clone(),
        Platform::new("linux", "ppc64le", None),
        Platform::new("linux", "s390x", None),
    ]
    .iter()
    .enumerate()
    {
        let mut layers = vec![small_layer(42, &format!("app-{i}"), true)];
        if i == 0 {
            layers.insert(0, base.clone());
        }
        children.push(c.push_image(app, None, ImageFormat::Oci, p, &layers, &[]));
    }
    let index = c.push_index(app, "latest", ImageFormat::Oci, &children);
    tag_all(app, &index, &APP_TAGS);

    let tool = "shared/tool";
    let a = c.push_image(
        tool,
        None,
        ImageFormat::Docker,
        &amd64,
        &[base.clone(), small_layer(42, "tool-amd64", true)],
        &[],
    );
    let b = c.push_image(
        tool,
        None,
        ImageFormat::Docker,
        &armv7,
        &[small_layer(42, "tool-armv7", true)],
        &[],
    );
    let list = c.push_index(tool, "2.0", ImageFormat::Docker, &[a, b]);
    tag_all(tool, &list, &["2.0", "2"]);

    let plain = "shared/plain";
    let m = c.push_image(
        plain,
        Some("1.0"),
        ImageFormat::Oci,
        &amd64,
        &[base, small_layer(42, "plain", false)],
        &[],
    );
    tag_all(plain, &m, &["1.0", "stable"]);
    tags
}

/// What is wrong at `reg` for this corpus (empty when every tag and child has its digest).
fn shared_corpus_problems(reg: &TestRegistry, tags: &[SharedTag]) -> Vec<String> {
    let mut problems = Vec::new();
    for t in tags {
        match reg.get_manifest(&t.repo, &t.tag) {
            Some(m) if m.digest == t.digest => {}
            Some(m) => problems.push(format!(
                "{}:{} is {} at the target, {} at the source",
                t.repo, t.tag, m.digest, t.digest
            )),
            None => problems.push(format!("{}:{} is missing at the target", t.repo, t.tag)),
        }
        for child in &t.children {
            if reg.get_manifest(&t.repo, child).map(|m| m.digest) != Some(child.clone()) {
                problems.push(format!("{}@{child} is missing at the target", t.repo));
            }
        }
    }
    problems
}

#[test]
fn tags_sharing_manifests_import_completely_ten_times_with_eight_jobs() {
    const RUNS: usize = 10;
    let src = TestRegistry::start(RegistryOpts::plain());
    let tags = build_shared_corpus(&src);
    assert_eq!(tags.len(), APP_TAGS.len() + 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    let mut lines = String::from("# tags that share manifests\n");
    for t in &tags {
        lines.push_str(&format!("{}/{}:{}\n", src.host(), t.repo, t.tag));
    }
    std::fs::write(&list, lines).expect("write images file");
    let bundle = dir.path().join("shared.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            path_str(&list),
            "-o",
            path_str(&bundle),
            "-j",
            "8",
        ],
        &[],
        None,
    );
    assert_success(&out, "export of the shared-manifest corpus");

    let mut failures = Vec::new();
    for run in 1..=RUNS {
        let dst = TestRegistry::start(RegistryOpts::plain());
        let out = run_airlock(
            [
                "import",
                path_str(&bundle),
                "--registry",
                &dst.host(),
                "-j",
                "8",
            ],
            &[],
            None,
        );
        let problems = shared_corpus_problems(&dst, &tags);
        let ok = out.status.success() && problems.is_empty();
        println!(
            "import run {run}/{RUNS}: exit {:?}, {}",
            out.status.code(),
            if ok { "complete" } else { "INCOMPLETE" }
        );
        if !ok {
            failures.push(format!(
                "run {run}: exit {:?}; {problems:?}\n{}",
                out.status.code(),
                stderr_text(&out)
            ));
        }
    }
    println!(
        "{} of {RUNS} imports with -j 8 complete",
        RUNS - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {RUNS} imports with -j 8 failed or were incomplete:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The big layer's digest in a pushed single-layer image (its largest blob).
fn big_layer_digest(reg: &TestRegistry, m: &PushedManifest) -> String {
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).expect("manifest json");
    let layers = v["layers"].as_array().expect("layers");
    let d = layers[0]["digest"].as_str().expect("digest").to_string();
    assert!(reg.blob_exists("net/big", &d));
    d
}

/// `GET` requests for `digest` in a proxy's log, with their `Range` (None when whole).
fn blob_gets(log: &[String], digest: &str) -> Vec<Option<String>> {
    log.iter()
        .filter(|l| l.starts_with("GET ") && l.contains(&format!("/blobs/{digest}")))
        .map(|l| {
            l.split_once(" range=")
                .map(|(_, r)| r.split(" -> ").next().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn large_blobs_are_fetched_in_parallel_ranges_resumed_when_cut_and_streamed_when_ranges_are_ignored(
) {
    // 80 MiB counts as large here (AIRLOCK_STREAM_OVER=1M): three segments (32, 32, 16 MiB).
    const SIZE: usize = 80 * MIB;
    let src = TestRegistry::start(RegistryOpts::plain());
    let big = push_big_image(&src, SIZE);
    let layer = big_layer_digest(&src, &big);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let env = [
        ("AIRLOCK_STREAM_OVER", "1M"),
        ("AIRLOCK_CACHE_DIR", path_str(&cache)),
    ];
    let export = |host: &str, name: &str| {
        let bundle = dir.path().join(name);
        let out = run_airlock(
            [
                "export",
                &format!("{host}/net/big:1"),
                "-o",
                path_str(&bundle),
                "--plain-http",
                "-j",
                "4",
            ],
            &env,
            None,
        );
        (bundle, out)
    };
    let check = |bundle: &Path, what: &str| {
        let out = run_airlock(["verify", path_str(bundle)], &[], None);
        assert_success(&out, &format!("verify: {what}"));
        let dst = TestRegistry::start(RegistryOpts::plain());
        let out = run_airlock(
            [
                "import",
                path_str(bundle),
                "--registry",
                &dst.host(),
                "--plain-http",
            ],
            &[],
            None,
        );
        assert_success(&out, &format!("import: {what}"));
        assert_eq!(skopeo_digest(&dst, "net/big:1"), big.digest, "{what}");
        let leftovers: Vec<_> = std::fs::read_dir(cache.join("tmp"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "{what}: spool files left: {leftovers:?}"
        );
        let cached = std::fs::metadata(cache.join("blobs/sha256").join(&layer[7..])).is_ok();
        assert!(
            !cached,
            "{what}: a large blob does not go through the cache"
        );
    };

    // Parallel parts: several ranged GETs of the one blob, covering it from byte 0.
    let proxy = FaultProxy::for_registry(&src, FaultPlan::none());
    let (a, out) = export(&proxy.host(), "a.tar.zst");
    assert_success(&out, "export in parallel parts");
    let gets = blob_gets(&proxy.request_log(), &layer);
    let ranges: Vec<&String> = gets.iter().flatten().collect();
    assert!(
        ranges.len() >= 3 && ranges.iter().any(|r| r.starts_with("bytes=0-")),
        "expected at least three ranged GETs of {layer}: {gets:?}"
    );
    check(&a, "parallel parts");

    // A part cut in the middle resumes from where it stopped, not from its start.
    let proxy = FaultProxy::for_registry(
        &src,
        FaultPlan::new(
            Fault::TruncateBody {
                after_bytes: 5 * MIB,
            },
            2,
        )
        .method("GET")
        .path_contains(&format!("/blobs/{layer}")),
    );
    let (b, out) = export(&proxy.host(), "b.tar.zst");
    assert_success(&out, "export through cut parts");
    assert_eq!(proxy.faults_injected(), 2);
    let gets = blob_gets(&proxy.request_log(), &layer);
    assert!(gets.len() >= 5, "three parts and two resumes: {gets:?}");
    check(&b, "cut parts");

    // A registry that ignores Range sends the whole blob: it streams into the bundle instead.
    let proxy = FaultProxy::for_registry(
        &src,
        FaultPlan::new(Fault::DropRange, usize::MAX)
            .method("GET")
            .path_contains("/blobs/"),
    );
    let (c, out) = export(&proxy.host(), "c.tar.zst");
    assert_success(&out, "export from a registry that ignores Range");
    assert!(
        proxy
            .request_log()
            .iter()
            .any(|l| l.contains(&layer) && l.ends_with("range-dropped")),
        "{:#?}",
        proxy.request_log()
    );
    check(&c, "ranges ignored");

    // Blobs bound for the cache (the default 256 MiB line) are fetched in parts too, checked
    // once complete, and kept for the next run.
    let proxy = FaultProxy::for_registry(&src, FaultPlan::none());
    let d = dir.path().join("d.tar.zst");
    let cache2 = dir.path().join("cache2");
    let out = run_airlock(
        [
            "export",
            &format!("{}/net/big:1", proxy.host()),
            "-o",
            path_str(&d),
            "--plain-http",
            "-j",
            "4",
        ],
        &[("AIRLOCK_CACHE_DIR", path_str(&cache2))],
        None,
    );
    assert_success(&out, "export into the cache in parts");
    let gets = blob_gets(&proxy.request_log(), &layer);
    assert!(
        gets.iter().flatten().count() >= 3,
        "expected ranged GETs of {layer}: {gets:?}"
    );
    let cached = std::fs::read(cache2.join("blobs/sha256").join(&layer[7..])).expect("cached");
    assert_eq!(
        sha256_digest(&cached),
        layer,
        "the cache holds the blob, whole"
    );
    let out = run_airlock(["verify", path_str(&d)], &[], None);
    assert_success(&out, "verify: parts into the cache");
}

/// Bytes that do not match their digest (bit rot in the registry's storage, or a proxy that
/// alters what it passes) fail the export naming the blob, whichever way the blob travels:
/// into the cache in one request or in `Range` segments, through a spool in segments, or
/// streamed whole from a registry that ignores `Range`. No bundle is left, and nothing of the
/// blob in the cache for the next run to trust.
#[test]
fn damaged_bytes_from_the_registry_fail_the_export_naming_the_blob_on_every_download_path() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let big = push_big_image(&src, 80 * MIB);
    let layer = big_layer_digest(&src, &big);
    let small = src.client().push_image(
        "net/small",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[random_layer(0x5108, 256 * 1024, false)],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&small.bytes).expect("manifest json");
    let small_layer = v["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    // In the third 32 MiB segment of the large layer; in the middle of the small one.
    src.damage_blob(&layer, 70 * MIB as u64);
    src.damage_blob(&small_layer, 100_000);
    let ignores_range = FaultProxy::for_registry(
        &src,
        FaultPlan::new(Fault::DropRange, usize::MAX)
            .method("GET")
            .path_contains("/blobs/"),
    );
    let cases = [
        (
            "a small blob into the cache",
            src.host(),
            "net/small:1",
            &small_layer,
            None,
        ),
        (
            "a blob into the cache in segments",
            src.host(),
            "net/big:1",
            &layer,
            None,
        ),
        (
            "a large blob spooled in segments",
            src.host(),
            "net/big:1",
            &layer,
            Some("1M"),
        ),
        (
            "a large blob streamed whole",
            ignores_range.host(),
            "net/big:1",
            &layer,
            Some("1M"),
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (k, (what, host, image, digest, stream_over)) in cases.into_iter().enumerate() {
        let cache = dir.path().join(format!("cache-{k}"));
        let bundle = dir.path().join(format!("b{k}.tar.zst"));
        let mut env = vec![("AIRLOCK_CACHE_DIR", path_str(&cache))];
        env.extend(stream_over.map(|s| ("AIRLOCK_STREAM_OVER", s)));
        let out = run_airlock(
            [
                "export",
                &format!("{host}/{image}"),
                "-o",
                path_str(&bundle),
                "--plain-http",
                "-j",
                "4",
            ],
            &env,
            None,
        );
        let err = stderr_text(&out);
        println!("{what}: exit {:?}; {}", out.status.code(), err.trim());
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {}",
            describe_output(&out)
        );
        assert!(
            err.contains(digest.as_str()),
            "{what}: the error names the blob {digest}: {err}"
        );
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read the output directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("b{k}.")))
            .collect();
        assert!(left.is_empty(), "{what}: bundle files left: {left:?}");
        assert!(
            !cache.join("blobs/sha256").join(&digest[7..]).exists(),
            "{what}: the damaged blob was kept in the cache"
        );
        let temps: Vec<_> = std::fs::read_dir(cache.join("tmp"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(temps.is_empty(), "{what}: temporary files left: {temps:?}");
    }
}

/// The connected side behind a corporate proxy: `HTTPS_PROXY` (with Basic credentials in its
/// URL) tunnels the export to a TLS registry, `HTTP_PROXY` forwards the import to a plain one,
/// `NO_PROXY` goes around it; a proxy that refuses the credentials fails the run naming the
/// proxy, and its password is never printed.
#[test]
fn exports_and_imports_go_through_a_forward_proxy_and_no_proxy_goes_around_it() {
    let src = TestRegistry::start(
        RegistryOpts::plain()
            .with_auth("puller", "pull-S3cret")
            .with_tls(),
    );
    let pushed = src.client().push_image(
        "proxied/app",
        Some("1.0"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0x9a0, "proxied", true)],
        &[],
    );
    let dst = TestRegistry::start(RegistryOpts::plain());
    let proxy = ForwardProxy::start(Some(("corp", "Pr0xy-S3cret")));
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let ca = src.ca_cert_path();
    let image = format!("{}/proxied/app:1.0", src.host());
    let export = |proxy_env: &[(&str, &str)]| {
        let mut env = vec![
            ("SOURCE_DOCKER_USERNAME", "puller"),
            ("SOURCE_DOCKER_PASSWORD", "pull-S3cret"),
        ];
        env.extend_from_slice(proxy_env);
        run_airlock(
            [
                "export",
                image.as_str(),
                "-o",
                path_str(&bundle),
                "--ca-cert",
                path_str(&ca),
            ],
            &env,
            None,
        )
    };

    // Wrong credentials for the proxy: exit 1, the proxy named, its password never shown.
    let wrong = proxy.url_with(Some(("corp", "not-the-Pa55")));
    let out = export(&[("HTTPS_PROXY", &wrong)]);
    let err = stderr_text(&out);
    println!("refused by the proxy: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(err.contains(&proxy.host()), "{err}");
    assert!(err.contains("proxy authorization required"), "{err}");
    assert!(
        !err.contains("not-the-Pa55") && !err.contains("Pr0xy-S3cret"),
        "{err}"
    );
    assert!(
        !bundle.exists(),
        "a refused export wrote {}",
        bundle.display()
    );
    assert_eq!(proxy.seen(), vec!["REFUSED 407".to_string()]);

    // The right ones: every connection to the source is a tunnel through the proxy.
    let good = proxy.url_with(Some(("corp", "Pr0xy-S3cret")));
    let out = export(&[("HTTPS_PROXY", &good)]);
    assert_success(&out, "export through the proxy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_text(&out)
    );
    assert!(!text.contains("Pr0xy-S3cret"), "{text}");
    let seen = proxy.seen();
    let tunnels = seen
        .iter()
        .filter(|s| **s == format!("CONNECT {}", src.host()))
        .count();
    assert!(tunnels >= 1, "{seen:?}");
    assert_eq!(
        tunnels + 1,
        seen.len(),
        "only tunnels to the source: {seen:?}"
    );

    // NO_PROXY names the source: the proxy (here one that is gone) is not used at all.
    let dead = ForwardProxy::start(None);
    let dead_url = dead.url_with(None);
    drop(dead);
    std::fs::remove_file(&bundle).expect("remove the bundle");
    let out = export(&[("HTTPS_PROXY", &dead_url), ("NO_PROXY", "127.0.0.1")]);
    assert_success(&out, "export around the proxy");

    // Import to a plain-HTTP registry: forwarded by the proxy, same digest at the target.
    let before = proxy.seen().len();
    let out = run_airlock(
        [
            "import",
            path_str(&bundle),
            "--registry",
            &dst.host(),
            "--plain-http",
        ],
        &[("HTTP_PROXY", &good)],
        None,
    );
    assert_success(&out, "import through the proxy");
    let seen = proxy.seen();
    assert!(
        seen[before..]
            .iter()
            .all(|s| *s == format!("FORWARD {}", dst.host())),
        "{seen:?}"
    );
    assert!(
        seen.len() > before,
        "the import did not use the proxy: {seen:?}"
    );
    assert_eq!(skopeo_digest(&dst, "proxied/app:1.0"), pushed.digest);
}
