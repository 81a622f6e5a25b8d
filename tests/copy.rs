//! `airlock copy`: registry to registry in one step, on the same engine as import. The
//! origin procedure's variables alone (namespace and tag rewritten), every digest kept
//! (Docker manifest list, OCI index, schema2, artifacts), skip and mount on a second run,
//! `--plan` writing nothing, and credentials on both sides.

mod common;

use common::*;
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert_success(out, "airlock copy");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe_output(out)))
}

#[test]
fn copy_keeps_every_digest_skips_and_mounts_on_a_second_run() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dst = TestRegistry::start(RegistryOpts::plain());
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let args = [
        "copy",
        "-f",
        list.to_str().expect("utf8"),
        "--to-registry",
        &dst.host(),
        "--json",
        "-j",
        "8",
    ];
    // --plan copies nothing.
    let mut plan_args = args.to_vec();
    plan_args.push("--plan");
    let plan = json(&run_airlock(&plan_args, &[], None));
    assert_eq!(
        plan["images"].as_array().map(|a| a.len()),
        Some(corpus.images.len())
    );
    assert!(dst.catalog().is_empty(), "--plan wrote to the target");

    let first = json(&run_airlock(args, &[], None));
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(&dst, &img.name()),
            img.digest,
            "{} at the target",
            img.name()
        );
    }
    assert!(
        first["blobsMounted"].as_u64().unwrap_or(0) > 0,
        "the shared base layer was not mounted: {first}"
    );
    // No bundle, no cache: nothing on local disk.
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        1,
        "copy left files behind"
    );
    let second = json(&run_airlock(args, &[], None));
    assert_eq!(second["blobsUploaded"].as_u64(), Some(0), "{second}");
    assert!(second["blobsSkipped"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn copy_with_the_origin_procedures_variables_alone() {
    let src = TestRegistry::start(RegistryOpts::plain().with_auth("puller", "pull-pw"));
    let corpus = build_corpus(&src);
    let dst = TestRegistry::start(RegistryOpts::plain().with_auth("pusher", "push-pw"));
    let (src_host, dst_host) = (src.host(), dst.host());
    let out = run_airlock(
        [
            "copy",
            "alpha",
            "beta",
            "-q",
            "--plain-http",
            "--to-plain-http",
        ],
        &[
            ("SOURCE_DOCKER_REGISTRY", src_host.as_str()),
            ("SOURCE_DOCKER_REPOSITORY", CORPUS_NAMESPACE),
            ("SOURCE_DOCKER_TAG", "1.0"),
            ("SOURCE_DOCKER_USERNAME", "puller"),
            ("SOURCE_DOCKER_PASSWORD", "pull-pw"),
            ("TARGET_DOCKER_REGISTRY", dst_host.as_str()),
            ("TARGET_DOCKER_REPOSITORY", "mirror"),
            ("TARGET_DOCKER_TAG", "v2"),
            ("TARGET_DOCKER_USERNAME", "pusher"),
            ("TARGET_DOCKER_PASSWORD", "push-pw"),
        ],
        None,
    );
    assert_success(&out, "copy with variables");
    let text = format!(
        "{}{}",
        stderr_text(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !text.contains("pull-pw") && !text.contains("push-pw"),
        "a password was printed"
    );
    for name in ["alpha", "beta"] {
        let img = corpus.get(&format!("{CORPUS_NAMESPACE}/{name}"), "1.0");
        assert_eq!(
            skopeo_digest(&dst, &format!("mirror/{name}:v2")),
            img.digest,
            "mirror/{name}:v2"
        );
    }
    let mut repos = dst.catalog();
    repos.sort();
    assert_eq!(repos, vec!["mirror/alpha", "mirror/beta"]);
    // The wrong target password: exit 1 naming the target, nothing of it printed.
    let bad = run_airlock(
        ["copy", "alpha", "-q", "--plain-http", "--to-plain-http"],
        &[
            ("SOURCE_DOCKER_REGISTRY", src_host.as_str()),
            ("SOURCE_DOCKER_REPOSITORY", CORPUS_NAMESPACE),
            ("SOURCE_DOCKER_TAG", "1.0"),
            ("SOURCE_DOCKER_USERNAME", "puller"),
            ("SOURCE_DOCKER_PASSWORD", "pull-pw"),
            ("TARGET_DOCKER_REGISTRY", dst_host.as_str()),
            ("TARGET_DOCKER_USERNAME", "pusher"),
            ("TARGET_DOCKER_PASSWORD", "not-it"),
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(1), "{}", describe_output(&bad));
    let err = stderr_text(&bad);
    assert!(
        err.contains(&dst_host) && err.contains("authentication"),
        "{err}"
    );
    assert!(!err.contains("not-it"));
}
