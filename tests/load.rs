//! `podman load -i b.tar.zst`, with no registry: the bundle's docker-archive `manifest.json`
//! makes a real podman (vfs storage in a throw-away root) load every image of a multi-image
//! bundle (a Docker manifest list, an OCI index with two tags, single-platform images, an
//! image pinned by digest), each with the config of the platform the README promises;
//! artifacts stay out. `verify` checks the member and names it when it is damaged.

mod common;

use common::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A podman with its own storage under `dir`.
struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    auth: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let auth = dir.join("auth.json");
        std::fs::write(&auth, "{\"auths\":{}}\n").expect("auth.json");
        Podman {
            root: dir.join("podman-root"),
            runroot: dir.join("podman-run"),
            auth,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("REGISTRY_AUTH_FILE", &self.auth)
            .stdin(Stdio::null())
            .output()
            .expect("podman is installed (.ci/run installs it)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The image ID (`sha256:` + its config digest) `name` has in this storage, if any.
    fn image_id(&self, name: &str) -> Option<String> {
        let out = self.run(&["image", "inspect", "--format", "{{.Id}}", name]);
        out.status
            .success()
            .then(|| format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim()))
    }

    /// Every image ID in this storage.
    fn all_ids(&self) -> Vec<String> {
        self.ok(&["images", "-a", "--no-trunc", "--format", "{{.ID}}"])
            .lines()
            .map(|l| {
                let l = l.trim();
                if l.starts_with("sha256:") {
                    l.to_string()
                } else {
                    format!("sha256:{l}")
                }
            })
            .collect()
    }
}

/// Exports `refs` into `out` with `extra` flags; panics unless it succeeds.
fn export(refs: &[String], out: &Path, extra: &[&str]) {
    let mut args: Vec<OsString> = vec!["export".into(), "-o".into(), out.into(), "-q".into()];
    args.extend(refs.iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    let o = run_airlock(&args, &[], None);
    assert_success(&o, &format!("export to {}", out.display()));
}

/// The config digest of `image` (`repo:tag` or `repo@digest`) as skopeo reads it from the
/// registry; for an index, that of its child for `platform` (`os/arch`).
fn config_of(src: &TestRegistry, image: &str, platform: &str) -> String {
    let raw = skopeo_raw(src, image).unwrap_or_else(|e| panic!("skopeo {image}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    if let Some(children) = v["manifests"].as_array() {
        let child = children
            .iter()
            .find(|c| {
                format!(
                    "{}/{}",
                    c["platform"]["os"].as_str().unwrap_or(""),
                    c["platform"]["architecture"].as_str().unwrap_or("")
                ) == platform
            })
            .unwrap_or_else(|| panic!("{image} has no {platform} child"));
        let repo = image.split([':', '@']).next().expect("repo");
        let digest = child["digest"].as_str().expect("child digest");
        return config_of(src, &format!("{repo}@{digest}"), platform);
    }
    v["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string()
}

/// The member names of a bundle, as plain `zstd -dc | tar -t` lists them.
fn tar_listing(bundle: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc \"$1\" | tar -tf -")
        .arg("sh")
        .arg(bundle)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn manifest_json_of(bundle: &Path) -> serde_json::Value {
    let out = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc \"$1\" | tar -xOf - manifest.json")
        .arg("sh")
        .arg(bundle)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("manifest.json is JSON")
}

/// Tags the corpus's OCI index `src/multi:2.0` as `latest` too (the most common shape: one
/// index under `latest` and a version tag) and returns it.
fn tag_multi_latest<'a>(src: &TestRegistry, corpus: &'a Corpus) -> &'a CorpusImage {
    let multi = corpus.get("src/multi", "2.0");
    src.client().push_manifest(
        "src/multi",
        "latest",
        &multi.manifest.bytes,
        &multi.media_type,
    );
    multi
}

#[test]
fn podman_loads_every_image_of_a_multi_image_bundle() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    // The most common shape: one index under `latest` and a version tag.
    tag_multi_latest(&src, &corpus);
    let delta = corpus.get("other/delta", "1");
    let mut refs: Vec<String> = corpus
        .images
        .iter()
        .filter(|i| i.repo != "other/delta")
        .map(|i| i.reference(&host))
        .collect();
    refs.push(format!("{host}/src/multi:latest"));
    // Pinned by digest: the tag given with it names the image.
    refs.push(format!("{}@{}", delta.reference(&host), delta.digest));
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    export(&refs, &bundle, &["--plain-http"]);

    // Plain tools see the member, right after the OCI layout's.
    let names = tar_listing(&bundle);
    assert_eq!(
        names[..4],
        ["bundle.json", "oci-layout", "index.json", "manifest.json"],
        "{names:?}"
    );
    let bj = read_bundle_json(&bundle);
    assert_bundle_schema(&bj);
    assert!(bj["layout"]["dockerManifest"]["digest"].is_string(), "{bj}");
    let mj = manifest_json_of(&bundle);
    let entries = mj.as_array().expect("manifest.json is a list");
    // alpha 1.0, alpha 1.1 (= latest), beta, gamma, multi (2.0 and latest), delta; no artifact.
    assert_eq!(entries.len(), 6, "{mj:#}");
    for e in entries {
        for p in std::iter::once(&e["Config"]).chain(e["Layers"].as_array().expect("Layers")) {
            let p = p.as_str().expect("path");
            assert!(names.iter().any(|n| n == p), "{p} is not a member");
        }
    }
    let o = run_airlock(["verify", bundle.to_str().expect("utf8")], &[], None);
    assert_success(&o, "verify");

    let podman = Podman::new(dir.path());
    let loaded = podman.ok(&["load", "-i", bundle.to_str().expect("utf8")]);

    let mut tagged = 0;
    for img in &corpus.images {
        let name = img.reference(&host);
        if img.repo == "src/artifact" {
            assert!(podman.image_id(&name).is_none(), "{name} is not an image");
            continue;
        }
        let want = config_of(&src, &img.name(), "linux/amd64");
        assert_eq!(
            podman.image_id(&name).as_deref(),
            Some(want.as_str()),
            "{name} after podman load ({loaded})"
        );
        tagged += 1;
    }
    let want = config_of(&src, "src/multi:latest", "linux/amd64");
    assert_eq!(
        podman
            .image_id(&format!("{host}/src/multi:latest"))
            .as_deref(),
        Some(want.as_str()),
        "the second tag of the index"
    );
    assert_eq!(tagged, 7);
    // Nothing else was loaded: one image per entry.
    let mut ids = podman.all_ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert!(corpus.images.iter().any(|i| i.media_type == DOCKER_LIST));
    assert!(corpus.images.iter().any(|i| i.media_type == OCI_INDEX));
}

#[test]
fn an_export_for_arm64_loads_the_arm64_child() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let multi = tag_multi_latest(&src, &corpus);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("arm.tar.zst");
    export(
        &[
            multi.reference(&host),
            format!("{host}/src/multi:latest"),
            corpus.get("src/alpha", "1.0").reference(&host),
        ],
        &bundle,
        &["--plain-http", "--platform", "linux/arm64"],
    );
    let podman = Podman::new(dir.path());
    podman.ok(&["load", "-i", bundle.to_str().expect("utf8")]);
    let arm = config_of(&src, "src/multi:2.0", "linux/arm64");
    assert_ne!(arm, config_of(&src, "src/multi:2.0", "linux/amd64"));
    for tag in ["2.0", "latest"] {
        assert_eq!(
            podman
                .image_id(&format!("{host}/src/multi:{tag}"))
                .as_deref(),
            Some(arm.as_str()),
            "multi:{tag}"
        );
    }
    assert_eq!(
        podman
            .image_id(&corpus.get("src/alpha", "1.0").reference(&host))
            .as_deref(),
        Some(config_of(&src, "src/alpha:1.0", "").as_str())
    );
}

#[test]
fn verify_names_a_damaged_manifest_json() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let host = src.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    export(
        &[
            corpus.get("src/alpha", "1.0").reference(&host),
            corpus.get("src/beta", "1.0").reference(&host),
        ],
        &bundle,
        &["--plain-http"],
    );
    let b = airlock::bundle::Bundle::open(&bundle).expect("open bundle");
    let m = b
        .members()
        .find(|m| m.name == "manifest.json")
        .expect("a manifest.json member");
    let st = b.seek_table();
    let frame = st.frame_index_decomp(m.header + 512 + m.size / 2);
    let (start, end) = (
        st.frame_start_comp(frame).expect("frame start"),
        st.frame_end_comp(frame).expect("frame end"),
    );
    drop(b);
    let mut bytes = std::fs::read(&bundle).expect("read bundle");
    bytes[((start + end) / 2) as usize] ^= 0x20;
    std::fs::write(&bundle, bytes).expect("write bundle");
    let o = run_airlock(["verify", bundle.to_str().expect("utf8")], &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("manifest.json"),
        "{}",
        describe_output(&o)
    );
}
