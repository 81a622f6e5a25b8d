//! The monthly job: incremental bundles (`--since`), `--plan`, `--keep-going` (exit 3),
//! `{date}`/`{tag}` in `-o`, and signatures carried along as companion tags.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn incremental_bundles_carry_only_new_blobs_and_import_needs_the_base_first() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&host)).expect("list");
    let oct = dir.path().join("arc-2026-10.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            oct.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_success(&out, "October export");

    // November: one new layer on top of alpha 1.1's layers, under a new tag.
    let base_layers: Vec<Layer> = vec![small_layer(7, "november", true)];
    let nov_image = src.client().push_image(
        "src/alpha",
        Some("1.2"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &base_layers,
        &[("month", "november")],
    );
    let mut nov_list = corpus.images_file(&host);
    nov_list.push_str(&format!("{host}/src/alpha:1.2\n"));
    std::fs::write(&list, nov_list).expect("list");
    let nov = dir.path().join("arc-2026-11.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "--since",
            oct.to_str().unwrap(),
            "-o",
            nov.to_str().unwrap(),
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "November export --since");
    let oct_size = std::fs::metadata(&oct).expect("oct").len();
    let nov_size = std::fs::metadata(&nov).expect("nov").len();
    assert!(
        nov_size * 3 < oct_size,
        "incremental {nov_size} vs full {oct_size}"
    );
    let bj = read_bundle_json(&nov);
    let stored: Vec<&str> = bj["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    let external: Vec<&str> = bj["external"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    // Only the new image's own blobs travel, plus every manifest.
    for d in nov_image.blob_digests() {
        assert!(stored.contains(&d.as_str()), "new blob {d} must travel");
    }
    assert!(external.contains(&corpus.shared_layer_digest.as_str()));
    for img in &corpus.images {
        assert!(
            stored.contains(&img.digest.as_str()),
            "manifests always travel"
        );
    }
    assert_eq!(bj["bases"][0]["name"], "arc-2026-10.tar.zst");
    assert_bundle_schema(&bj);

    // Offline verify accepts the external blobs as declared and reports them.
    let out = run_airlock(["verify", nov.to_str().unwrap(), "--json"], &[], None);
    assert_success(&out, "verify incremental");
    let rep: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        rep["external"].as_array().map(|a| a.len()),
        Some(external.len())
    );

    // Import into an empty registry: refused before anything is written, naming October.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        ["import", nov.to_str().unwrap(), "--registry", &dst.host()],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains("arc-2026-10.tar.zst"),
        "{}",
        stderr_text(&out)
    );
    // Each missing blob names an image that needs it, as it would be pushed.
    assert!(
        stderr_text(&out).contains(&format!("(needed by {}/", dst.host())),
        "{}",
        stderr_text(&out)
    );
    assert!(
        dst.catalog().is_empty(),
        "nothing may be written: {:?}",
        dst.catalog()
    );

    // October first, then November: everything arrives with its digest.
    let out = run_airlock(
        ["import", oct.to_str().unwrap(), "--registry", &dst.host()],
        &[],
        None,
    );
    assert_success(&out, "import October");
    let out = run_airlock(
        [
            "import",
            nov.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "import November");
    for img in &corpus.images {
        assert_eq!(skopeo_digest(&dst, &img.name()), img.digest);
    }
    assert_eq!(skopeo_digest(&dst, "src/alpha:1.2"), nov_image.digest);

    // December, based on November (given as its bundle.json): blobs only October carried are
    // still external and still name October.
    let extracted = dir.path().join("nov-bundle.json");
    std::fs::write(&extracted, serde_json::to_vec(&bj).unwrap()).expect("write bundle.json");
    let raw = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -xO bundle.json > '{}'",
            nov.display(),
            extracted.display()
        ))
        .output()
        .expect("extract");
    assert!(raw.status.success());
    let dec = dir.path().join("arc-2026-12.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "--since",
            extracted.to_str().unwrap(),
            "-o",
            dec.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_success(&out, "December export --since bundle.json");
    let dj = read_bundle_json(&dec);
    let names: Vec<&str> = dj["bases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"arc-2026-10.tar.zst") && names.contains(&"nov-bundle.json"),
        "{names:?}"
    );
    // Each base is named by the digest of its bundle.json's exact bytes, whether --since was
    // given the bundle (October, through November) or the file (November); both are hashed
    // as they are parsed.
    let base_digest = |name: &str| {
        dj["bases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .and_then(|b| b["bundleJson"].as_str())
            .map(str::to_string)
    };
    let nov_bytes = std::fs::read(&extracted).expect("read nov-bundle.json");
    assert_eq!(
        base_digest("nov-bundle.json"),
        Some(sha256_digest(&nov_bytes))
    );
    let oct_bytes = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -xO bundle.json",
            oct.display()
        ))
        .output()
        .expect("extract October's bundle.json");
    assert!(oct_bytes.status.success() && !oct_bytes.stdout.is_empty());
    assert_eq!(
        base_digest("arc-2026-10.tar.zst"),
        Some(sha256_digest(&oct_bytes.stdout))
    );
    assert!(
        dj["blobs"].as_array().unwrap().iter().all(|b| {
            let mt = b["mediaType"].as_str().unwrap_or_default();
            mt.contains("manifest") || mt.contains("index")
        }),
        "nothing new: only manifests travel"
    );
    let out = run_airlock(
        ["import", dec.to_str().unwrap(), "--registry", &dst.host()],
        &[],
        None,
    );
    assert_success(&out, "import December");
}

#[test]
fn plan_shows_what_would_be_exported_and_writes_nothing() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let target = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
            "--plan",
        ],
        &[],
        None,
    );
    assert_success(&out, "--plan");
    let text = String::from_utf8_lossy(&out.stdout);
    for img in &corpus.images {
        assert!(text.contains(&img.reference(&src.host())), "{text}");
    }
    assert!(!target.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the list file"
    );
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
            "--plan",
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "--plan --json");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        plan["images"].as_array().map(|a| a.len()),
        Some(corpus.images.len())
    );
    let real = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            target.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_success(&real, "export");
    assert_eq!(plan["bundleSize"], read_bundle_json(&target)["totalSize"]);
}

#[test]
fn keep_going_exports_the_rest_names_the_failures_and_exits_3() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("b.tar.zst");
    let missing = format!("{host}/src/gone:1");
    let alpha = corpus.get("src/alpha", "1.0").reference(&host);
    let out = run_airlock(
        [
            "export",
            &alpha,
            &missing,
            "-o",
            out_path.to_str().unwrap(),
            "--keep-going",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe_output(&out));
    assert!(stderr_text(&out).contains(&missing));
    let bj = read_bundle_json(&out_path);
    assert_eq!(bj["failed"][0]["source"], missing.as_str());
    assert_bundle_schema(&bj);
    assert_eq!(bj["images"].as_array().map(|a| a.len()), Some(1));
    let out = run_airlock(["verify", out_path.to_str().unwrap()], &[], None);
    assert_success(&out, "verify a partial bundle");

    // An image without the platform asked for is one of the failures, not the end of the run
    // (multi has amd64 and arm64, gamma amd64 and arm/v7).
    let gamma = corpus.get("src/gamma", "3.0").reference(&host);
    let multi = corpus.get("src/multi", "2.0").reference(&host);
    let arm = dir.path().join("arm.tar.zst");
    let out = run_airlock(
        [
            "export",
            &gamma,
            &multi,
            "-o",
            arm.to_str().unwrap(),
            "--platform",
            "linux/arm/v7",
            "--keep-going",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe_output(&out));
    let bj = read_bundle_json(&arm);
    assert_eq!(bj["failed"][0]["source"], multi.as_str());
    assert_eq!(
        bj["images"][0]["platforms"],
        serde_json::json!(["linux/arm/v7"])
    );
    // Without --keep-going, the run fails naming it (exit 1, not a usage error).
    let out = run_airlock(
        [
            "export",
            &multi,
            "-o",
            dir.path().join("none.tar.zst").to_str().unwrap(),
            "--platform",
            "linux/arm/v7",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(stderr_text(&out).contains("none of the platforms linux/arm/v7"));
}

#[test]
fn output_names_fill_in_date_and_tag() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let _corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("arc-{tag}-{date}.tar.zst");
    let out = run_airlock(
        [
            "export",
            "alpha",
            "beta",
            "--registry",
            &src.host(),
            "--repository",
            "src",
            "--tag",
            "1.0",
            "-o",
            template.to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
        None,
    );
    assert_success(&out, "export with {tag} and {date}");
    assert!(dir.path().join("arc-1.0-2023-11-14.tar.zst").is_file());
    assert!(dir
        .path()
        .join("arc-1.0-2023-11-14.tar.zst.sha256")
        .is_file());
}

#[test]
fn signatures_travel_as_companion_tags_unless_asked_not_to() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let alpha = corpus.get("src/alpha", "1.0");
    let sig_tag = format!("sha256-{}.sig", &alpha.digest[7..]);
    let payload = format!(
        r#"{{"critical":{{"image":{{"docker-manifest-digest":"{}"}}}}}}"#,
        alpha.digest
    );
    let sig = src.client().push_artifact(
        "src/alpha",
        &sig_tag,
        "application/vnd.oci.image.config.v1+json",
        b"{}",
        &[(
            "application/vnd.dev.cosign.simplesigning.v1+json",
            payload.into_bytes(),
        )],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let b = dir.path().join("b.tar.zst");
    let out = run_airlock(
        ["export", &alpha.reference(&host), "-o", b.to_str().unwrap()],
        &[],
        None,
    );
    assert_success(&out, "export with signatures");
    let bj = read_bundle_json(&b);
    let images = bj["images"].as_array().expect("images");
    let carried = images
        .iter()
        .find(|i| i["tag"] == sig_tag.as_str())
        .expect("signature carried");
    assert_eq!(carried["subject"], alpha.digest.as_str());
    assert_bundle_schema(&bj);
    assert_eq!(carried["digest"], sig.digest.as_str());

    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            b.to_str().unwrap(),
            "--registry",
            &dst.host(),
            "--repository",
            "mirror",
        ],
        &[],
        None,
    );
    assert_success(&out, "import with signatures");
    assert_eq!(
        skopeo_digest(&dst, &format!("mirror/src/alpha:{sig_tag}")),
        sig.digest
    );
    assert_eq!(skopeo_digest(&dst, "mirror/src/alpha:1.0"), alpha.digest);

    let nb = dir.path().join("n.tar.zst");
    let out = run_airlock(
        [
            "export",
            &alpha.reference(&host),
            "-o",
            nb.to_str().unwrap(),
            "--no-referrers",
        ],
        &[],
        None,
    );
    assert_success(&out, "export --no-referrers");
    assert_eq!(
        read_bundle_json(&nb)["images"].as_array().map(|a| a.len()),
        Some(1)
    );
}

/// The distribution registry has no referrers API (it answers 404): an export of many images
/// asks it once, not once per image, and still carries every image.
#[test]
fn a_registry_without_the_referrers_api_is_asked_once_per_export() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("write images file");
    let b = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            b.to_str().unwrap(),
            "-j",
            "1",
        ],
        &[],
        None,
    );
    assert_success(&out, "export of the corpus");
    assert!(corpus.images.len() > 2, "a corpus of several images");
    assert_eq!(
        read_bundle_json(&b)["images"].as_array().map(|a| a.len()),
        Some(corpus.images.len())
    );
    let asked = src.access_log("GET", "/referrers/");
    assert_eq!(
        asked.len(),
        1,
        "the referrers API asked more than once: {asked:#?}"
    );
}

/// Platforms: an image's own list replaces the file's global one, `platforms: []` keeps every
/// platform of its image even under a global list, and `--platform` replaces the global list
/// (never an image's own).
#[test]
fn an_empty_platform_list_keeps_every_platform_and_the_flag_replaces_the_global_list() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("set.yaml");
    std::fs::write(
        &cfg,
        format!(
            "platforms: [linux/amd64]\nregistries:\n  - registry: {host}\n    namespace: src\n    tls: {{ plainHttp: true }}\n    images:\n      - name: gamma\n        tags: ['3.0']\n        platforms: []\n      - name: multi\n        tags: ['2.0']\n"
        ),
    )
    .expect("write set");
    let gamma = corpus.get("src/gamma", "3.0").digest.clone();
    let multi = corpus.get("src/multi", "2.0").digest.clone();
    for (flag, multi_kept) in [
        (None, "linux/amd64"),
        (Some("linux/arm64"), "linux/arm64/v8"),
    ] {
        let bundle = dir.path().join(format!("p-{}.tar.zst", flag.is_some()));
        let mut args = vec![
            "export".to_string(),
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "-o".into(),
            bundle.to_str().unwrap().into(),
            "-q".into(),
        ];
        if let Some(f) = flag {
            args.extend(["--platform".to_string(), f.to_string()]);
        }
        let out = run_airlock(&args, &[], None);
        assert_success(&out, "export with platform lists");
        let bj = read_bundle_json(&bundle);
        let image = |path: &str| {
            bj["images"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["path"] == path)
                .unwrap_or_else(|| panic!("{path} in the bundle"))
                .clone()
        };
        let g = image("gamma");
        assert_eq!(
            g["digest"],
            gamma.as_str(),
            "gamma kept whole (flag {flag:?})"
        );
        assert!(g.get("sourceDigest").is_none(), "gamma was not rewritten");
        let m = image("multi");
        assert_eq!(
            m["platforms"],
            serde_json::json!([multi_kept]),
            "flag {flag:?}"
        );
        assert_eq!(m["sourceDigest"], multi.as_str());
    }
}

#[test]
fn an_image_set_file_drives_the_export() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("set.yaml");
    std::fs::write(
        &cfg,
        format!(
            "# the monthly set\nregistries:\n  - registry: {host}\n    namespace: src\n    tls: {{ plainHttp: true }}\n    images:\n      - name: alpha\n        tagRegex: '^1\\.'\n      - name: multi\n        tags: ['2.0']\n        platforms: [linux/arm64]\n"
        ),
    )
    .expect("write set");
    let out = run_airlock(
        [
            "export",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            "unused.tar.zst",
            "--plan",
            "--json",
        ],
        &[],
        None,
    );
    assert_success(&out, "--config --plan");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("json");
    let sources: Vec<&str> = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        vec![
            format!("{host}/src/alpha:1.0"),
            format!("{host}/src/alpha:1.1"),
            format!("{host}/src/multi:2.0"),
        ]
    );
    let bundle = dir.path().join("set-{date}.tar.zst");
    let out = run_airlock(
        [
            "export",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1764547200")],
        None,
    );
    assert_success(&out, "--config export");
    let written = dir.path().join("set-2025-12-01.tar.zst");
    let bj = read_bundle_json(&written);
    assert_bundle_schema(&bj);
    let multi = bj["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == "multi")
        .expect("multi");
    assert_eq!(multi["platforms"], serde_json::json!(["linux/arm64/v8"]));
    assert_eq!(
        multi["sourceDigest"],
        corpus.get("src/multi", "2.0").digest.as_str()
    );

    // A mistake in the file names the file, the line and the key; exit 2, nothing written.
    std::fs::write(&cfg, format!("registries:\n  - registry: {host}\n    images:\n      - name: alpha\n        tgs: [x]\n")).expect("write");
    let out = run_airlock(
        [
            "export",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            dir.path().join("x.tar.zst").to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(err.contains("set.yaml:5") && err.contains("tgs"), "{err}");
}

#[test]
fn rerunning_to_the_same_name_leaves_no_stale_files() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let name = dir.path().join("b.tar.zst");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "-f",
            list.to_str().unwrap(),
            "-o",
            name.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run_airlock(&args, &[], None);
        assert_success(&out, "export");
    };
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("b.tar.zst"))
            .collect();
        v.sort();
        v
    };
    run(&[]);
    assert_eq!(listing(), vec!["b.tar.zst", "b.tar.zst.sha256"]);
    run(&["--split-size", "8K"]);
    let split = listing();
    assert!(
        !split.contains(&"b.tar.zst".to_string()),
        "the old single file is gone: {split:?}"
    );
    assert!(split.len() > 4, "{split:?}");
    run(&["--split-size", "32K"]);
    let fewer = listing();
    assert!(
        fewer.len() < split.len(),
        "volumes past the new last one are gone: {fewer:?}"
    );
    run(&[]);
    assert_eq!(listing(), vec!["b.tar.zst", "b.tar.zst.sha256"]);
    let out = run_airlock(["verify", name.to_str().unwrap()], &[], None);
    assert_success(&out, "verify");
}

/// The monthly job again, with the cache of last month: every manifest asked by digest (an
/// index's children) is read from the cache, checked, not fetched; a damaged one is fetched
/// again and the cache mended; the bundle is byte for byte the same. A registry that counts
/// manifest `GET`s against a pull limit (Docker Hub, which announces it in `ratelimit-*`
/// headers, played by a proxy) is asked for tags with `HEAD` once it has said so, so a re-run
/// of known images spends one pull, not one per image.
#[test]
fn a_rerun_reads_known_manifests_from_the_cache_and_spares_a_pull_limit() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let export = |name: &str, list: &std::path::Path, extra: &[&str]| {
        let out_path = dir.path().join(name);
        let mut args = vec![
            "export".to_string(),
            "-f".into(),
            list.to_str().unwrap().into(),
            "-o".into(),
            out_path.to_str().unwrap().into(),
            "--cache-dir".into(),
            cache.to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = run_airlock(&args, &[("SOURCE_DATE_EPOCH", "1764547200")], None);
        assert_success(&out, &format!("export {name}"));
        std::fs::read(&out_path).expect("read the bundle")
    };
    let by_digest = || src.access_log("GET", "/manifests/sha256:").len();
    let by_tag = || {
        src.access_log("GET", "/manifests/")
            .iter()
            .filter(|l| !l.contains("/manifests/sha256:"))
            .count()
    };
    let first = export("1.tar.zst", &list, &[]);
    let (children, tags) = (by_digest(), by_tag());
    assert!(
        children > 0,
        "the corpus has indexes: their children are asked by digest"
    );

    let second = export("2.tar.zst", &list, &[]);
    assert!(
        first == second,
        "the re-run's bundle differs from the first"
    );
    assert_eq!(by_digest(), children, "a child manifest fetched again");
    assert_eq!(
        by_tag(),
        2 * tags,
        "each tag is asked again (a tag may move)"
    );

    // A cached manifest damaged: fetched again, the cache mended, the bundle the same.
    let multi = corpus
        .images
        .iter()
        .find(|i| !i.manifest.children.is_empty())
        .expect("an index in the corpus");
    let child = &multi.manifest.children[0].digest;
    let cached = cache
        .join("blobs/sha256")
        .join(child.trim_start_matches("sha256:"));
    std::fs::write(&cached, b"{\"damaged\":true}").expect("damage the cached manifest");
    let third = export("3.tar.zst", &list, &[]);
    assert!(
        first == third,
        "the bundle after a damaged cache entry differs"
    );
    assert_eq!(
        by_digest(),
        children + 1,
        "only the damaged manifest fetched again"
    );
    let mended = std::fs::read(&cached).expect("the cache entry");
    assert_eq!(&sha256_digest(&mended), child);

    // Through a registry that announces a pull limit, whose tags' manifests are then kept
    // too: on the re-run the first tag is fetched (and says so), every other one is asked
    // with HEAD and found in the cache; nothing else is fetched.
    let proxy = QuirkProxy::start(&src, Quirk::AnnounceRateLimit);
    let via = dir.path().join("via-proxy.txt");
    std::fs::write(&via, corpus.images_file(&proxy.host())).expect("list");
    let manifests = |method: &str| {
        proxy
            .records()
            .iter()
            .filter(|r| r.method == method && r.path.contains("/manifests/"))
            .count()
    };
    let fourth = export("4.tar.zst", &via, &["-j", "1"]);
    let (gets, heads) = (manifests("GET"), manifests("HEAD"));
    let fifth = export("5.tar.zst", &via, &["-j", "1"]);
    assert!(
        fourth == fifth,
        "the re-run through the proxy gave another bundle"
    );
    assert_eq!(manifests("GET") - gets, 1, "{}", proxy.describe());
    assert_eq!(
        manifests("HEAD") - heads,
        corpus.images.len() - 1,
        "{}",
        proxy.describe()
    );
}
