//! Export → bundle → import against real registries, with skopeo as the witness: digests
//! kept byte for byte, deduplication, the bundle readable without airlock, target naming,
//! platform filtering, and an import that completes after an interruption.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn write_images_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("images.txt");
    std::fs::write(&p, text).expect("write images file");
    p
}

fn json_stdout(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", describe_output(out)))
}

fn export(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let out = run_airlock(
        std::iter::once("export").chain(args.iter().copied()),
        envs,
        None,
    );
    assert_success(&out, "airlock export");
    out
}

#[test]
fn round_trip_keeps_every_digest_and_stores_shared_blobs_once() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = write_images_file(dir.path(), &corpus.images_file(&src.host()));
    let bundle = dir.path().join("b.tar.zst");
    let out = export(
        &[
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let summary = json_stdout(&out);
    assert_eq!(
        summary["images"].as_array().map(|a| a.len()),
        Some(corpus.images.len())
    );

    // Every blob of every image is in the bundle exactly once.
    let bj = read_bundle_json(&bundle);
    let listed: Vec<String> = bj["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .map(|b| b["digest"].as_str().unwrap_or_default().to_string())
        .collect();
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a blob is listed twice");
    let mut expected: HashSet<String> = corpus.all_blob_digests().into_iter().collect();
    for img in &corpus.images {
        expected.insert(img.digest.clone());
        expected.extend(img.child_digests());
    }
    let got: HashSet<String> = listed.iter().cloned().collect();

    // verify walks the images like an import, yet reads the file once, in order: every blob
    // (layers and configs; manifests are checked as the engine reaches them) comes in
    // bundle order, and none is read a second time.
    let out = run_airlock(["verify", "-v", bundle.to_str().unwrap()], &[], None);
    assert_success(&out, "verify -v");
    let err = stderr_text(&out);
    assert!(!err.contains("out of bundle order"), "{err}");
    let checked: Vec<String> = err
        .lines()
        .filter_map(|l| l.strip_prefix("ok   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(
        checked, listed,
        "verify checks every member once, in bundle order"
    );
    assert_eq!(
        got, expected,
        "bundle objects differ from the corpus objects"
    );
    let members = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -t", bundle.display()))
        .output()
        .expect("tar -t");
    let names = String::from_utf8_lossy(&members.stdout).to_string();
    let shared = format!("blobs/sha256/{}", &corpus.shared_layer_digest[7..]);
    assert_eq!(
        names.lines().filter(|l| *l == shared).count(),
        1,
        "the shared base layer must be stored once"
    );
    assert_eq!(names.lines().next(), Some("bundle.json"));

    // Import into an empty registry: same digests, read by skopeo.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "airlock import");
    let report = json_stdout(&out);
    for img in &corpus.images {
        let at_src = skopeo_digest(&src, &img.name());
        let at_dst = skopeo_digest(&dst, &img.name());
        assert_eq!(at_src, img.digest, "{} at the source", img.name());
        assert_eq!(at_dst, img.digest, "{} at the target", img.name());
        for child in img.child_digests() {
            assert!(
                dst.client().manifest_digest(&img.repo, &child).is_some(),
                "child {child} of {} missing at the target",
                img.name()
            );
        }
    }
    // The shared layer went over the wire once and was mounted into the other repositories.
    assert!(
        report["blobsMounted"].as_u64().unwrap_or(0) >= corpus.shared_layer_repos.len() as u64 - 1
    );
    // Every upload ends in one PUT ?digest= (a mount has none).
    let uploads_of_shared = dst.access_log("PUT", "/blobs/uploads/").len();
    assert_eq!(
        report["blobsUploaded"].as_u64(),
        Some(uploads_of_shared as u64),
        "every upload is counted"
    );
    let non_manifest: HashSet<String> = corpus.all_blob_digests().into_iter().collect();
    assert_eq!(
        report["blobsUploaded"].as_u64(),
        Some(non_manifest.len() as u64),
        "each distinct blob is uploaded exactly once"
    );
}

#[test]
fn bundle_is_a_plain_oci_layout_that_skopeo_reads_and_matches_the_schema() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = write_images_file(dir.path(), &corpus.images_file(&src.host()));
    let bundle = dir.path().join("b.tar.zst");
    export(
        &[
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "-q",
        ],
        &[],
    );

    // bundle.json validates against the published schema.
    let bj = read_bundle_json(&bundle);
    assert_bundle_schema(&bj);
    let validator = bundle_schema();
    // The shipped example is valid too, and a broken one is not.
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bundle-schema/example.bundle.json"
        ))
        .expect("read example"),
    )
    .expect("example is JSON");
    assert!(validator.is_valid(&example));
    let mut broken = bj.clone();
    broken["blobs"][0]["digest"] = Value::String("sha256:nothex".into());
    assert!(!validator.is_valid(&broken));

    // zstd -d | tar -x gives an OCI layout skopeo reads, by full source reference.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -x -C '{}'",
            bundle.display(),
            layout.display()
        ))
        .output()
        .expect("unpack");
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(layout.join("oci-layout").is_file() && layout.join("index.json").is_file());
    let dst = TestRegistry::start(RegistryOpts::plain());
    for img in &corpus.images {
        // Every manifest is in the layout as the exact bytes served.
        let stored = std::fs::read(layout.join("blobs/sha256").join(&img.digest[7..]))
            .expect("root manifest in the layout");
        assert_eq!(sha256_digest(&stored), img.digest);
        // skopeo 1.9's oci: transport only resolves OCI media types by name; Docker-format
        // manifests stay byte-exact in the layout (checked above) but skopeo cannot name them.
        if !img.media_type.starts_with("application/vnd.oci.") {
            continue;
        }
        let reference = img.reference(&src.host());
        let (mut cmd, _tmp) = skopeo_command();
        let raw = cmd
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:{reference}", layout.display()))
            .output()
            .expect("skopeo inspect");
        assert!(
            raw.status.success(),
            "skopeo inspect oci:{reference}: {}",
            describe_output(&raw)
        );
        assert_eq!(
            sha256_digest(&raw.stdout),
            img.digest,
            "{reference} in the layout"
        );
        // And skopeo can push it from the unpacked layout without airlock.
        let (mut cmd, _tmp) = skopeo_command();
        let copied = cmd
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{reference}", layout.display()))
            .arg(format!("docker://{}/{}", dst.host(), img.name()))
            .output()
            .expect("skopeo copy");
        assert!(
            copied.status.success(),
            "skopeo copy {reference}: {}",
            describe_output(&copied)
        );
        assert_eq!(skopeo_digest(&dst, &img.name()), img.digest);
    }
}

#[test]
fn short_names_environment_and_target_naming() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("arc.tar.zst");
    let host = src.host();
    // The original procedure's variables, short names as arguments.
    export(
        &["alpha", "beta", "-o", bundle.to_str().unwrap(), "-q"],
        &[
            ("SOURCE_DOCKER_REGISTRY", &host),
            ("SOURCE_DOCKER_REPOSITORY", "src"),
            ("SOURCE_DOCKER_TAG", "1.0"),
        ],
    );
    let bj = read_bundle_json(&bundle);
    let sources: Vec<&str> = bj["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["source"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        sources,
        vec![
            format!("{host}/src/alpha:1.0"),
            format!("{host}/src/beta:1.0")
        ]
    );
    assert_eq!(bj["images"][0]["namespace"], "src");
    assert_eq!(bj["images"][0]["path"], "alpha");

    // Import: TARGET_DOCKER_REPOSITORY replaces the namespace; --tag replaces the tag.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        ["import", bundle.to_str().unwrap()],
        &[
            ("TARGET_DOCKER_REGISTRY", &dst.host()),
            ("TARGET_DOCKER_REPOSITORY", "mirror"),
        ],
        None,
    );
    assert_success(&out, "import with env");
    assert_eq!(
        skopeo_digest(&dst, "mirror/alpha:1.0"),
        corpus.get("src/alpha", "1.0").digest
    );
    assert_eq!(
        skopeo_digest(&dst, "mirror/beta:1.0"),
        corpus.get("src/beta", "1.0").digest
    );
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--repository",
            "team/x",
            "--tag",
            "v9",
        ],
        &[],
        None,
    );
    assert_success(&out, "import with --repository --tag");
    assert_eq!(
        skopeo_digest(&dst, "team/x/alpha:v9"),
        corpus.get("src/alpha", "1.0").digest
    );
    assert_eq!(
        skopeo_digest(&dst, "team/x/beta:v9"),
        corpus.get("src/beta", "1.0").digest
    );

    // Full references keep their path; --repository is prepended.
    let full = dir.path().join("full.tar.zst");
    export(
        &[
            &format!("{host}/other/delta:1"),
            "-o",
            full.to_str().unwrap(),
            "-q",
        ],
        &[],
    );
    let out = run_airlock(
        [
            "import",
            full.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--repository",
            "mirror",
        ],
        &[],
        None,
    );
    assert_success(&out, "import full reference");
    assert_eq!(
        skopeo_digest(&dst, "mirror/other/delta:1"),
        corpus.get("other/delta", "1").digest
    );

    // --tag that would put two different images on one name: refused before pushing anything.
    let two = dir.path().join("two.tar.zst");
    export(
        &[
            "alpha:1.0",
            "alpha:1.1",
            "--registry",
            &host,
            "--repository",
            "src",
            "-o",
            two.to_str().unwrap(),
            "-q",
        ],
        &[],
    );
    let empty = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            two.to_str().unwrap(),
            "--registry",
            &empty.host(),
            "--tag",
            "same",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("src/alpha:1.0") && err.contains("src/alpha:1.1"),
        "{err}"
    );
    assert!(
        empty.catalog().is_empty(),
        "nothing may be pushed: {:?}",
        empty.catalog()
    );
}

/// Image lists written from Kubernetes manifests pin images as NAME:TAG@DIGEST: a short name
/// takes the pin as a full reference does (fetched by digest, written under the tag), and a
/// digest without a tag is refused before any request.
#[test]
fn short_names_pinned_by_digest_are_fetched_by_it_and_written_under_their_tag() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("pinned.tar.zst");
    let host = src.host();
    let alpha = corpus.get("src/alpha", "1.0").digest.clone();
    let beta = corpus.get("src/beta", "1.0").digest.clone();
    let env = [
        ("SOURCE_DOCKER_REGISTRY", host.as_str()),
        ("SOURCE_DOCKER_REPOSITORY", "src"),
        ("SOURCE_DOCKER_TAG", "latest"),
    ];
    let pinned = format!("alpha:1.0@{alpha}");
    export(
        &[&pinned, "beta:1.0", "-o", bundle.to_str().unwrap(), "-q"],
        &env,
    );
    let bj = read_bundle_json(&bundle);
    let img = &bj["images"][0];
    assert_eq!(img["source"], format!("{host}/src/alpha:1.0@{alpha}"));
    assert_eq!(img["digest"], alpha.as_str());
    assert_eq!(img["tag"], "1.0");
    assert_eq!(img["namespace"], "src");
    assert_eq!(img["path"], "alpha");

    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        ["import", bundle.to_str().unwrap(), "-q"],
        &[
            ("TARGET_DOCKER_REGISTRY", &dst.host()),
            ("TARGET_DOCKER_REPOSITORY", "mirror"),
        ],
        None,
    );
    assert_success(&out, "import of a pinned short name");
    assert_eq!(skopeo_digest(&dst, "mirror/alpha:1.0"), alpha);
    assert_eq!(skopeo_digest(&dst, "mirror/beta:1.0"), beta);

    // A pin that is not the repository's: the export fails naming the image.
    let wrong = format!("alpha:1.0@{beta}");
    let other = dir.path().join("wrong.tar.zst");
    let out = run_airlock(
        ["export", &wrong, "-o", other.to_str().unwrap(), "-q"],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains(&format!("src/alpha:1.0@{beta}")),
        "names the image: {}",
        describe_output(&out)
    );
    assert!(!other.exists(), "no bundle from a failed export");

    // A digest with no tag: import would not know which tag to write.
    let untagged = format!("alpha@{alpha}");
    let out = run_airlock(
        ["export", &untagged, "-o", other.to_str().unwrap(), "-q"],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains(&format!("alpha:TAG@{alpha}")),
        "says how to write it: {}",
        describe_output(&out)
    );
}

#[test]
fn missing_required_values_without_a_terminal_are_usage_errors() {
    let out = run_airlock(
        [
            "export",
            "alpha",
            "--registry",
            "127.0.0.1:1",
            "--repository",
            "src",
            "-o",
            "/tmp/x.tar.zst",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tag") && err.contains("SOURCE_DOCKER_TAG"),
        "{err}"
    );

    let out = run_airlock(["import", "/tmp/does-not-matter.tar.zst"], &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--registry") && err.contains("TARGET_DOCKER_REGISTRY"),
        "{err}"
    );

    let out = run_airlock(["export", "-o", "/tmp/x.tar.zst"], &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));

    let out = run_airlock(["export", "--bogus-flag"], &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
}

#[test]
fn platform_filter_rewrites_the_index_and_records_the_source_digest() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let multi = corpus.get("src/multi", "2.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("amd64.tar.zst");
    export(
        &[
            &multi.reference(&src.host()),
            "--platform",
            "linux/amd64",
            "-o",
            bundle.to_str().unwrap(),
            "-q",
        ],
        &[],
    );
    let bj = read_bundle_json(&bundle);
    let img = &bj["images"][0];
    assert_eq!(img["sourceDigest"], multi.digest.as_str());
    assert_ne!(img["digest"], multi.digest.as_str());
    assert_eq!(img["platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(bj["platforms"], serde_json::json!(["linux/amd64"]));
    let new_digest = img["digest"].as_str().expect("digest").to_string();

    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
        ],
        &[],
        None,
    );
    assert_success(&out, "import filtered");
    let raw = skopeo_raw(&dst, &multi.name()).expect("filtered index at the target");
    assert_eq!(sha256_digest(&raw), new_digest);
    let index: Value = serde_json::from_slice(&raw).expect("index JSON");
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["platform"]["architecture"], "amd64");

    // Asking for a platform the image does not have is a clear error.
    let out = run_airlock(
        [
            "export",
            &multi.reference(&src.host()),
            "--platform",
            "linux/s390x",
            "-o",
            dir.path().join("n.tar.zst").to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("linux/s390x"));
}

#[test]
fn an_interrupted_import_completes_on_rerun_and_sends_only_what_is_missing() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = write_images_file(dir.path(), &corpus.images_file(&src.host()));
    let bundle = dir.path().join("b.tar.zst");
    export(
        &[
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "-q",
        ],
        &[],
    );

    // First attempt: the target fails every blob upload after the first three.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let proxy = FaultProxy::for_registry(
        &dst,
        FaultPlan::new(Fault::ServiceUnavailable, 10_000)
            .skip(3)
            .method("PUT")
            .path_contains("/blobs/uploads/"),
    );
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &proxy.host(),
            "--plain-http",
            "-j",
            "1",
            "--retries",
            "1",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("were not imported"), "{err}");
    // No tag points at an image whose blobs are not all there.
    let tagged: Vec<&CorpusImage> = corpus
        .images
        .iter()
        .filter(|i| dst.client().manifest_digest(&i.repo, &i.tag).is_some())
        .collect();
    for img in &tagged {
        for b in img.blob_digests() {
            assert!(
                dst.blob_exists(&img.repo, &b),
                "{} is tagged but lacks {b}",
                img.name()
            );
        }
    }
    assert!(
        tagged.len() < corpus.images.len(),
        "the fault must have stopped some images"
    );
    let uploaded_before = dst.access_log("PUT", "digest=").len();
    assert!(uploaded_before >= 3);

    // Second run, straight to the registry: completes, re-sending nothing already there.
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "second import");
    let report = json_stdout(&out);
    assert!(
        report["blobsSkipped"].as_u64().unwrap_or(0) >= 3,
        "{report}"
    );
    let distinct: HashSet<String> = corpus.all_blob_digests().into_iter().collect();
    assert!(
        report["blobsUploaded"].as_u64().unwrap_or(u64::MAX) <= (distinct.len() - 3) as u64,
        "{report}"
    );
    for img in &corpus.images {
        assert_eq!(skopeo_digest(&dst, &img.name()), img.digest);
    }
    // Third run: nothing left to send.
    let out = run_airlock(
        [
            "import",
            bundle.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "third import");
    let report = json_stdout(&out);
    assert_eq!(report["blobsUploaded"], 0, "{report}");
    assert_eq!(report["blobsMounted"], 0, "{report}");
}

#[test]
fn inspect_shows_images_digests_platforms_and_sizes() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = write_images_file(dir.path(), &corpus.images_file(&src.host()));
    let bundle = dir.path().join("b.tar.zst");
    export(
        &[
            "-f",
            list.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
            "-q",
        ],
        &[],
    );
    let out = run_airlock(["inspect", bundle.to_str().unwrap()], &[], None);
    assert_success(&out, "inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    for img in &corpus.images {
        assert!(text.contains(&img.reference(&src.host())), "{text}");
        assert!(text.contains(&img.digest[..19]), "{text}");
    }
    assert!(text.contains("linux/arm64/v8"), "{text}");
    let out = run_airlock(["inspect", bundle.to_str().unwrap(), "--json"], &[], None);
    assert_success(&out, "inspect --json");
    let v = json_stdout(&out);
    assert_eq!(
        v["manifest"]["images"].as_array().map(|a| a.len()),
        Some(corpus.images.len())
    );
    assert_eq!(
        v["compressedSize"].as_u64(),
        std::fs::metadata(&bundle).ok().map(|m| m.len())
    );
}

#[test]
fn manifests_set_aside_on_disk_leave_nothing_behind_and_change_no_byte() {
    // Export and verify set manifests aside in a temporary file in $TMPDIR, unlinked at once.
    // Where none can be made they stay in memory: the bundle is the same, byte for byte.
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = write_images_file(dir.path(), &corpus.images_file(&src.host()));
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp dir");
    let tmp_str = tmp.to_str().unwrap();
    let mut bundles = Vec::new();
    for (name, tmpdir) in [("disk", tmp_str), ("memory", "/nonexistent/airlock-tmp")] {
        let bundle = dir.path().join(format!("{name}.tar.zst"));
        let env = [("TMPDIR", tmpdir), ("SOURCE_DATE_EPOCH", "1700000000")];
        export(
            &[
                "-f",
                list.to_str().unwrap(),
                "-o",
                bundle.to_str().unwrap(),
                "-q",
            ],
            &env,
        );
        let out = run_airlock(["verify", bundle.to_str().unwrap()], &env, None);
        assert_success(&out, &format!("verify ({name})"));
        bundles.push(std::fs::read(&bundle).expect("read bundle"));
    }
    let left: Vec<_> = std::fs::read_dir(&tmp).expect("read tmp").collect();
    assert!(left.is_empty(), "left in $TMPDIR: {left:?}");
    assert!(
        bundles[0] == bundles[1],
        "the bundle depends on where manifests were set aside"
    );
}
