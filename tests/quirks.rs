//! Registry quirks played by a proxy in front of the real registry (issue 7): each one ends
//! with every digest at the target equal to the source, or with the clear error.
//!
//! Run one: `cargo test --test quirks -- NAME`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;

/// What the source held: `(repo, tag, manifest digest, blobs)` per tagged image.
struct Source {
    images: Vec<(String, String, String, Vec<Descriptor>)>,
}

impl Source {
    fn of_corpus(c: &Corpus) -> Source {
        Source {
            images: c
                .images
                .iter()
                .map(|i| {
                    (
                        i.repo.clone(),
                        i.tag.clone(),
                        i.digest.clone(),
                        i.manifest.blobs.clone(),
                    )
                })
                .collect(),
        }
    }

    fn images_file(&self, host: &str) -> String {
        let mut s = String::new();
        for (repo, tag, _, _) in &self.images {
            s.push_str(&format!("{host}/{repo}:{tag}\n"));
        }
        s
    }

    fn blob_size(&self, digest: &str) -> Option<u64> {
        self.images
            .iter()
            .flat_map(|i| i.3.iter())
            .find(|d| d.digest == digest)
            .map(|d| d.size)
    }

    fn sorted_digests(&self) -> Vec<String> {
        let mut v: Vec<String> = self.images.iter().map(|i| i.2.clone()).collect();
        v.sort();
        v
    }
}

/// The full harness corpus in a fresh registry.
fn corpus_source() -> (TestRegistry, Source) {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let s = Source::of_corpus(&corpus);
    (src, s)
}

/// One image `src/big:1` with a 12 MiB incompressible layer (and a small config).
fn big_source() -> (TestRegistry, Source) {
    let src = TestRegistry::start(RegistryOpts::plain());
    let layer = random_layer(0x05ee_db16, 12 * MIB, false);
    let m = src.client().push_image(
        "src/big",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[layer],
        &[("org.airlock.test.image", "big")],
    );
    let s = Source {
        images: vec![(
            "src/big".into(),
            "1".into(),
            m.digest.clone(),
            m.blobs.clone(),
        )],
    };
    (src, s)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Export the images of `s` from `host` into `dir/NAME`; panics unless it succeeds.
fn export(
    s: &Source,
    host: &str,
    dir: &Path,
    name: &str,
    envs: &[(&str, &str)],
) -> (PathBuf, std::process::Output) {
    let list = dir.join(format!("{name}.txt"));
    std::fs::write(&list, s.images_file(host)).expect("write images file");
    let bundle = dir.join(name);
    let out = run_airlock(
        ["export", "-f", path_str(&list), "-o", path_str(&bundle)],
        envs,
        None,
    );
    (bundle, out)
}

/// Export straight from the source registry (no proxy).
fn plain_bundle(src: &TestRegistry, s: &Source) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, out) = export(s, &src.host(), dir.path(), "b.tar.zst", &[]);
    assert_success(&out, "export from the source registry");
    (dir, bundle)
}

fn import(
    bundle: &Path,
    host: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let mut args = vec!["import", path_str(bundle), "--registry", host];
    args.extend_from_slice(extra);
    run_airlock(args, envs, None)
}

/// Every image of `s` at `target` (read directly, not through the proxy) with the source's
/// manifest digest and every blob present in its repository.
fn assert_target_has(target: &TestRegistry, s: &Source, log: &str) {
    for (repo, tag, digest, blobs) in &s.images {
        let got = target
            .get_manifest(repo, tag)
            .unwrap_or_else(|| panic!("{repo}:{tag} missing at the target\nproxy log:\n{log}"));
        assert_eq!(&got.digest, digest, "{repo}:{tag} digest at the target");
        for b in blobs {
            assert!(
                target.blob_exists(repo, &b.digest),
                "blob {} missing in {repo} at the target\nproxy log:\n{log}",
                b.digest
            );
        }
    }
}

/// The manifest digests a bundle carries, sorted.
fn bundle_digests(bundle: &Path) -> Vec<String> {
    let bj = read_bundle_json(bundle);
    let mut v: Vec<String> = bj["images"]
        .as_array()
        .expect("bundle.json has images")
        .iter()
        .map(|i| i["digest"].as_str().expect("image digest").to_string())
        .collect();
    v.sort();
    v
}

fn assert_verifies(bundle: &Path) {
    let out = run_airlock(["verify", path_str(bundle)], &[], None);
    assert_success(&out, "verify the bundle exported through the proxy");
}

/// Import the corpus through a proxy playing `quirk` into a fresh plain registry; returns
/// the target, the proxy and the source (the import must succeed).
fn import_through(
    quirk: Quirk,
    s: &Source,
    bundle: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (TestRegistry, QuirkProxy) {
    import_through_all(vec![quirk], s, bundle, extra, envs)
}

/// [`import_through`] a proxy playing every one of `quirks` (none: a proxy that only records).
fn import_through_all(
    quirks: Vec<Quirk>,
    s: &Source,
    bundle: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (TestRegistry, QuirkProxy) {
    let target = TestRegistry::start(RegistryOpts::plain());
    let proxy = QuirkProxy::start_with(&target, quirks);
    let out = import(bundle, &proxy.host(), extra, envs);
    assert!(
        out.status.success(),
        "import through the proxy failed:\n{}\nproxy log:\n{}",
        describe_output(&out),
        proxy.describe()
    );
    assert_target_has(&target, s, &proxy.describe());
    (target, proxy)
}

// ---------------------------------------------------------------------------------------------

/// Google's registry refuses chunked uploads: the PATCH of the first blob too large for one
/// PUT is answered 405, airlock falls back to a monolithic `PUT ?digest=` with the body and
/// remembers it for the rest of the run.
#[test]
fn no_chunked_uploads_fall_back_to_monolithic_put_and_remember_it() {
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    // One job, so that "the first upload" is well defined.
    let (_t, proxy) = import_through(Quirk::NoChunked, &s, &bundle, &["-j", "1"], &[]);
    let log = proxy.describe();
    let recs = proxy.records();
    assert!(
        recs.iter().any(|r| r.action == "refused-405"),
        "airlock never tried a PATCH, so the quirk was not exercised:\n{log}"
    );
    let commits: Vec<&QuirkRecord> = recs
        .iter()
        .filter(|r| r.is_commit() && r.status == Some(201))
        .collect();
    assert!(!commits.is_empty(), "no upload committed:\n{log}");
    for c in &commits {
        let d = c.commit_digest().expect("commit digest");
        let size = s
            .blob_size(&d)
            .unwrap_or_else(|| panic!("unknown blob {d}"));
        assert_eq!(
            c.body_bytes, size,
            "upload of {d} did not end as a monolithic PUT of the whole blob:\n{log}"
        );
    }
    let mut patched: Vec<String> = recs
        .iter()
        .filter(|r| r.method == "PATCH")
        .filter_map(|r| r.session())
        .collect();
    patched.dedup();
    assert_eq!(
        patched.len(),
        1,
        "only one upload may try PATCH (the refusal is remembered):\n{log}"
    );
    // The 12 MiB layer tried PATCH, and went on in one PUT in the same session.
    let layer = s.images[0]
        .3
        .iter()
        .max_by_key(|d| d.size)
        .expect("a layer");
    let layer_session = commits
        .iter()
        .find(|c| c.commit_digest().as_deref() == Some(layer.digest.as_str()))
        .and_then(|c| c.session());
    assert_eq!(layer_session.as_ref(), patched.first(), "{log}");
}

/// Artifactory refuses a PUT that carries the blob: the first small blob's PUT is refused
/// once, and from then on airlock sends every blob in PATCH chunks and commits with an empty
/// PUT.
#[test]
fn no_monolithic_uploads_use_chunks_and_an_empty_commit() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    // One job, so that the refusal is met once.
    let (_t, proxy) = import_through(Quirk::NoMonolithic, &s, &bundle, &["-j", "1"], &[]);
    let log = proxy.describe();
    let recs = proxy.records();
    let refused = recs.iter().filter(|r| r.action == "refused-400").count();
    assert_eq!(
        refused, 1,
        "a PUT with the blob is tried once, then never again:\n{log}"
    );
    let commits: Vec<&QuirkRecord> = recs
        .iter()
        .filter(|r| r.is_commit() && r.status == Some(201))
        .collect();
    assert!(commits.len() > 1, "no upload committed:\n{log}");
    assert!(
        commits.iter().all(|c| c.body_bytes == 0),
        "a committed PUT carried the blob:\n{log}"
    );
    let patched: std::collections::HashSet<String> = recs
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == Some(202))
        .filter_map(|r| r.session())
        .collect();
    assert!(
        commits
            .iter()
            .all(|c| c.session().is_some_and(|sid| patched.contains(&sid))),
        "a blob was committed without its chunk:\n{log}"
    );
}

/// A registry that takes both: a blob of up to 5 MiB goes in two requests (POST, then a PUT
/// carrying it), a larger one in PATCH chunks and an empty PUT.
#[test]
fn small_blobs_go_in_one_put_and_large_ones_in_chunks() {
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through_all(Vec::new(), &s, &bundle, &[], &[]);
    let log = proxy.describe();
    let recs = proxy.records();
    let commits: Vec<&QuirkRecord> = recs
        .iter()
        .filter(|r| r.is_commit() && r.status == Some(201))
        .collect();
    assert_eq!(commits.len(), s.images[0].3.len(), "{log}");
    for c in &commits {
        let d = c.commit_digest().expect("commit digest");
        let size = s.blob_size(&d).expect("a blob of the image");
        let sid = c.session().expect("a session");
        let patches = recs
            .iter()
            .filter(|r| r.method == "PATCH" && r.session().as_ref() == Some(&sid))
            .count();
        if size <= 5 * MIB as u64 {
            assert_eq!(
                c.body_bytes, size,
                "{d} is small: one PUT carries it\n{log}"
            );
            assert_eq!(patches, 0, "{d} is small: no PATCH\n{log}");
        } else {
            assert_eq!(c.body_bytes, 0, "{d} is large: an empty commit\n{log}");
            assert!(patches >= 1, "{d} is large: sent in chunks\n{log}");
        }
    }
}

/// ECR wants every chunk but the last to be at least 5 MiB: with `AIRLOCK_CHUNK_SIZE=1M`
/// airlock still sends 5 MiB chunks, and a 12 MiB blob goes in more than one PATCH.
#[test]
fn minimum_chunk_size_is_respected() {
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let min = 5 * MIB as u64;
    let (_t, proxy) = import_through(
        Quirk::MinChunk(min),
        &s,
        &bundle,
        &[],
        &[("AIRLOCK_CHUNK_SIZE", "1M")],
    );
    let log = proxy.describe();
    let recs = proxy.records();
    assert!(
        !recs.iter().any(|r| r.action == "refused-416"),
        "a chunk under the minimum was followed by another:\n{log}"
    );
    let big = &s.images[0].3;
    let layer = big.iter().max_by_key(|d| d.size).expect("a layer");
    let session = recs
        .iter()
        .filter(|r| r.is_commit() && r.commit_digest().as_deref() == Some(layer.digest.as_str()))
        .find_map(|r| r.session())
        .unwrap_or_else(|| panic!("the 12 MiB layer was never committed:\n{log}"));
    let mut sessions: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for r in recs.iter().filter(|r| r.method == "PATCH") {
        if let Some(sid) = r.session() {
            sessions.entry(sid).or_default().push(r.body_bytes);
        }
    }
    for (sid, sizes) in &sessions {
        if let Some((_, rest)) = sizes.split_last() {
            assert!(
                rest.iter().all(|n| *n >= min),
                "session {sid}: a non-final PATCH under 5 MiB: {sizes:?}\n{log}"
            );
        }
    }
    let sizes = sessions.get(&session).cloned().unwrap_or_default();
    assert!(
        sizes.len() > 1,
        "the 12 MiB layer went in {} PATCH (chunks expected): {sizes:?}\n{log}",
        sizes.len()
    );
    assert_eq!(sizes.iter().sum::<u64>(), layer.size, "{log}");
}

/// A registry that answers a mount with 202 (a plain session, not mounted): airlock uploads
/// into that session.
#[test]
fn mount_answered_202_falls_back_to_an_upload() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(Quirk::MountRefused202, &s, &bundle, &[], &[]);
    let log = proxy.describe();
    assert!(
        proxy.records().iter().any(|r| r.action == "mount-stripped"),
        "airlock never tried a mount, so the quirk was not exercised:\n{log}"
    );
}

/// A registry that answers a mount with 401 (no pull right on the source repository): airlock
/// uploads instead. Basic auth behind, so the challenge is the registry's own.
#[test]
fn mount_answered_401_falls_back_to_an_upload() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let target = TestRegistry::start(RegistryOpts::plain().with_auth("pusher", "pU5h-pass"));
    let proxy = QuirkProxy::start(&target, Quirk::MountRefused401);
    let out = import(
        &bundle,
        &proxy.host(),
        &[],
        &[
            ("TARGET_DOCKER_USERNAME", "pusher"),
            ("TARGET_DOCKER_PASSWORD", "pU5h-pass"),
        ],
    );
    let log = proxy.describe();
    assert!(
        out.status.success(),
        "import: {}\nproxy log:\n{log}",
        describe_output(&out)
    );
    assert!(
        proxy
            .records()
            .iter()
            .any(|r| r.action == "refused-401-mount"),
        "airlock never tried a mount, so the quirk was not exercised:\n{log}"
    );
    assert_target_has(&target, &s, &log);
    assert!(!stderr_text(&out).contains("pU5h-pass"));
}

/// No `Docker-Content-Digest` on any answer: import and export both complete.
#[test]
fn missing_docker_content_digest_is_fine() {
    let (src, s) = corpus_source();
    let (dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(Quirk::NoContentDigest, &s, &bundle, &[], &[]);
    assert!(proxy.records().iter().all(|r| !r.content_digest));
    // The pull side, through the same quirk in front of the source.
    let pull = QuirkProxy::start(&src, Quirk::NoContentDigest);
    let (again, out) = export(&s, &pull.host(), dir.path(), "again.tar.zst", &[]);
    assert!(
        out.status.success(),
        "export: {}\nproxy log:\n{}",
        describe_output(&out),
        pull.describe()
    );
    assert_eq!(bundle_digests(&again), s.sorted_digests());
    assert_verifies(&again);
}

/// `Location` answered as a path without scheme and host: import and export complete.
#[test]
fn relative_location_is_fine() {
    let (src, s) = corpus_source();
    let (dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(Quirk::RelativeLocation, &s, &bundle, &[], &[]);
    let log = proxy.describe();
    let locs: Vec<String> = proxy
        .records()
        .iter()
        .filter_map(|r| r.location.clone())
        .collect();
    assert!(!locs.is_empty(), "no Location was ever answered:\n{log}");
    assert!(locs.iter().all(|l| l.starts_with('/')), "{log}");
    let pull = QuirkProxy::start(&src, Quirk::RelativeLocation);
    let (again, out) = export(&s, &pull.host(), dir.path(), "again.tar.zst", &[]);
    assert!(
        out.status.success(),
        "export: {}\nproxy log:\n{}",
        describe_output(&out),
        pull.describe()
    );
    assert_eq!(bundle_digests(&again), s.sorted_digests());
}

/// Harbor or GitLab without the project: the push is answered 404 NAME_UNKNOWN; airlock exits
/// 1 naming the registry and what to create, and writes no tag there.
#[test]
fn name_unknown_on_push_names_the_project_to_create() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let target = TestRegistry::start(RegistryOpts::plain());
    let proxy = QuirkProxy::start(&target, Quirk::NameUnknown("other/".into()));
    let out = import(&bundle, &proxy.host(), &[], &[]);
    let log = proxy.describe();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\nproxy log:\n{log}",
        describe_output(&out)
    );
    let err = stderr_text(&out);
    assert!(
        err.contains(&proxy.host()),
        "the error does not name the registry: {err}"
    );
    assert!(
        err.contains("other/delta") || err.contains("'other'") || err.contains("\"other\""),
        "the error does not name the repository or project: {err}"
    );
    assert!(
        err.to_lowercase().contains("create"),
        "the error does not say what to create: {err}"
    );
    assert!(
        proxy.records().iter().any(|r| r.action == "name-unknown"),
        "{log}"
    );
    assert!(
        target.tags("other/delta").is_empty(),
        "a tag was written in the refused repository"
    );
    // The refusal is the other project's alone: every image elsewhere, sharing layers with
    // it or not, is imported whole.
    for (repo, tag, digest, _) in s.images.iter().filter(|i| !i.0.starts_with("other/")) {
        assert_eq!(
            target.client().manifest_digest(repo, tag).as_deref(),
            Some(digest.as_str()),
            "{repo}:{tag} was not imported\n{}",
            describe_output(&out)
        );
    }
}

/// Blob GETs redirected (307) to object storage on another host: export completes, and that
/// host never sees the registry's credentials.
#[test]
fn redirected_blob_gets_do_not_carry_credentials() {
    let src = TestRegistry::start(RegistryOpts::plain().with_auth("reader", "rE4d-pass"));
    let corpus = build_corpus(&src);
    let s = Source::of_corpus(&corpus);
    let proxy = QuirkProxy::start(&src, Quirk::RedirectBlobs);
    let dir = tempfile::tempdir().expect("tempdir");
    let (bundle, out) = export(
        &s,
        &proxy.host(),
        dir.path(),
        "b.tar.zst",
        &[
            ("SOURCE_DOCKER_USERNAME", "reader"),
            ("SOURCE_DOCKER_PASSWORD", "rE4d-pass"),
        ],
    );
    let log = proxy.describe();
    assert!(
        out.status.success(),
        "export: {}\nproxy log:\n{log}",
        describe_output(&out)
    );
    assert!(
        proxy.records().iter().any(|r| r.action == "redirected"),
        "no blob GET was redirected:\n{log}"
    );
    assert!(
        proxy.blob_host_requests() > 0,
        "the redirect was not followed to {:?}",
        proxy.blob_host()
    );
    assert_eq!(
        proxy.blob_host_authorizations(),
        Vec::<String>::new(),
        "the other host saw an Authorization header"
    );
    assert_eq!(bundle_digests(&bundle), s.sorted_digests());
    assert_verifies(&bundle);
    assert!(!stderr_text(&out).contains("rE4d-pass"));
}

/// The registry redirects blob downloads to storage that does not answer (down, or blocked by
/// a firewall): export fails after its retries, naming the blob and the storage host, and the
/// signature of the presigned redirect (a credential for its lifetime) is never printed.
#[test]
fn a_redirect_to_storage_that_fails_names_the_host_and_never_its_signature() {
    let src = TestRegistry::start(RegistryOpts::plain().with_auth("reader", "rE4d-pass"));
    let pushed = src.client().push_image(
        "stored/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0x5707, "stored", true)],
        &[],
    );
    let proxy = QuirkProxy::start(&src, Quirk::RedirectBlobsNowhere);
    let storage = proxy.nowhere_host().expect("the storage host");
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let image = format!("{}/stored/app:1", proxy.host());
    let out = run_airlock(
        [
            "export",
            &image,
            "-o",
            path_str(&bundle),
            "--retries",
            "1",
            "-v",
        ],
        &[
            ("SOURCE_DOCKER_USERNAME", "reader"),
            ("SOURCE_DOCKER_PASSWORD", "rE4d-pass"),
        ],
        None,
    );
    let err = stderr_text(&out);
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    println!("{}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        proxy.records().iter().any(|r| r.action == "redirected"),
        "no blob GET was redirected:\n{}",
        proxy.describe()
    );
    assert!(
        pushed.blobs.iter().any(|b| err.contains(&b.digest)),
        "no blob named: {err}"
    );
    assert!(
        err.contains(&storage),
        "the storage host is not named: {err}"
    );
    assert!(!text.contains(REDIRECT_SIGNATURE), "{text}");
    assert!(!text.contains("X-Amz-Signature"), "{text}");
    assert!(!text.contains("rE4d-pass"), "{text}");
    assert!(
        !bundle.exists(),
        "a failed export left {}",
        bundle.display()
    );
}

/// Harbor refuses any push to a tag an immutability rule covers, even of the manifest the tag
/// holds already (412). A second import of one bundle (a re-run, a full bundle carried again)
/// finds every tag on its manifest and succeeds; a tag that holds another manifest fails,
/// naming it, and keeps what it holds.
#[test]
fn immutable_tags_already_on_their_manifest_are_not_an_error() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (target, proxy) = import_through(Quirk::ImmutableTags, &s, &bundle, &[], &[]);
    let refused = |p: &QuirkProxy| {
        p.records()
            .iter()
            .filter(|r| r.action == "immutable")
            .count()
    };
    assert_eq!(refused(&proxy), 0, "{}", proxy.describe());

    // Again, with every tag there: each push refused, the import a success.
    let out = import(&bundle, &proxy.host(), &["-j", "8"], &[]);
    assert_success(&out, "a second import into immutable tags");
    assert!(refused(&proxy) >= s.images.len(), "{}", proxy.describe());
    assert_target_has(&target, &s, &proxy.describe());

    // One tag moved to another image meanwhile: that tag fails, named; it keeps its image.
    let (repo, tag, _, _) = &s.images[0];
    let other = target.client().push_image(
        repo,
        Some(tag),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0x1e0, "moved", true)],
        &[],
    );
    let out = import(&bundle, &proxy.host(), &[], &[]);
    let err = stderr_text(&out);
    println!("{}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(err.contains(&format!("{repo}:{tag}")), "{err}");
    assert!(err.contains(&other.digest), "{err}");
    assert_eq!(
        skopeo_digest(&target, &format!("{repo}:{tag}")),
        other.digest
    );
}

/// One tag refused does not fail another image that shares its manifest: `src/app:v1-amd64`
/// is the amd64 child of the index `src/app:latest`; at the target, the immutable tag
/// `v1-amd64` holds another image. That tag fails, named; `latest` lands whole (its child
/// written by digest), though the refused write was of the same manifest under the tag.
#[test]
fn a_tag_refused_for_one_image_does_not_fail_another_that_shares_its_manifest() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let client = src.client();
    let amd = client.push_image(
        "src/app",
        None,
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0xa11, "app-amd64", true)],
        &[],
    );
    let arm = client.push_image(
        "src/app",
        None,
        ImageFormat::Oci,
        &Platform::new("linux", "arm64", Some("v8")),
        &[small_layer(0xa12, "app-arm64", true)],
        &[],
    );
    client.push_manifest("src/app", "v1-amd64", &amd.bytes, &amd.media_type);
    let index = client.push_index("src/app", "latest", ImageFormat::Oci, &[amd.clone(), arm]);
    // The tag first, so that its write of the shared manifest comes first (-j 1).
    let s = Source {
        images: vec![
            (
                "src/app".into(),
                "v1-amd64".into(),
                amd.digest.clone(),
                amd.blobs.clone(),
            ),
            (
                "src/app".into(),
                "latest".into(),
                index.digest.clone(),
                index.blobs.clone(),
            ),
        ],
    };
    let (_dir, bundle) = plain_bundle(&src, &s);
    let target = TestRegistry::start(RegistryOpts::plain());
    let other = target.client().push_image(
        "src/app",
        Some("v1-amd64"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0xa13, "already-there", true)],
        &[],
    );
    let proxy = QuirkProxy::start_with(&target, vec![Quirk::ImmutableTags]);
    let out = import(&bundle, &proxy.host(), &["-j", "1"], &[]);
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        err.contains("src/app:v1-amd64"),
        "names the refused tag: {err}"
    );
    let failures = err.split("airlock: error:").nth(1).unwrap_or_default();
    assert!(
        failures.contains("1 of 2 images") && !failures.contains("src/app:latest"),
        "latest failed with the refused tag: {err}\n{}",
        proxy.describe()
    );
    assert_eq!(skopeo_digest(&target, "src/app:latest"), index.digest);
    assert_eq!(skopeo_digest(&target, "src/app:v1-amd64"), other.digest);
}

/// One image `src/layers:1` (also tagged `latest`) with a 12 MiB and a 3 MiB incompressible
/// layer and a small config.
fn two_layer_source() -> (TestRegistry, Source) {
    let src = TestRegistry::start(RegistryOpts::plain());
    let layers = [
        random_layer(0x0b0d_1e51, 12 * MIB, false),
        random_layer(0x0b0d_1e52, 3 * MIB, false),
    ];
    let mut images = Vec::new();
    for tag in ["1", "latest"] {
        let m = src.client().push_image(
            "src/layers",
            Some(tag),
            ImageFormat::Oci,
            &Platform::linux_amd64(),
            &layers,
            &[("org.airlock.test.image", "layers")],
        );
        images.push(("src/layers".into(), tag.into(), m.digest.clone(), m.blobs));
    }
    (src, Source { images })
}

/// A registry behind nginx whose `client_max_body_size` is 2m (ingress-nginx's default is
/// 1m): nginx answers 413 to any larger request, before reading it. The import still lands
/// every image, byte for byte: each refusal lowers the largest request for that registry to
/// the power of two below it, so the 12 MiB layer goes in 2 MiB chunks and the 3 MiB one too;
/// the config still goes in one PUT (a 413 is a size limit, not a refusal of PUT bodies); the
/// user is told what the proxy cost. Eight jobs learn the limit at once.
#[test]
fn a_proxys_body_limit_brings_requests_under_it() {
    let (src, s) = two_layer_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let limit = 2 * MIB as u64;
    let target = TestRegistry::start(RegistryOpts::plain());
    let proxy = QuirkProxy::start(&target, Quirk::BodyLimit(limit));
    let out = import(&bundle, &proxy.host(), &["-j", "8"], &[]);
    let log = proxy.describe();
    assert_success(&out, &format!("import behind a 2 MiB body limit\n{log}"));
    assert_target_has(&target, &s, &log);
    assert_skopeo_reads(&target, &s);

    let recs = proxy.records();
    let refused: Vec<&QuirkRecord> = recs.iter().filter(|r| r.action == "too-large").collect();
    // 12 MiB -> 8 -> 4 -> 2 for the large layer, 3 MiB -> 2 for the other: a handful of
    // refusals, not one per chunk.
    assert!(
        !refused.is_empty() && refused.len() <= 8,
        "{} refusals:\n{log}",
        refused.len()
    );
    let (_, _, _, blobs) = &s.images[0];
    for b in blobs {
        let commit = recs
            .iter()
            .find(|r| {
                r.is_commit()
                    && r.status == Some(201)
                    && r.commit_digest().as_deref() == Some(b.digest.as_str())
            })
            .unwrap_or_else(|| panic!("no commit of {}:\n{log}", b.digest));
        let session = commit.session();
        let patched: Vec<u64> = recs
            .iter()
            .filter(|r| r.method == "PATCH" && r.status == Some(202) && r.session() == session)
            .map(|r| r.body_bytes)
            .collect();
        if b.size > limit {
            assert!(
                patched.iter().all(|n| *n == limit || *n == b.size % limit),
                "{} went in chunks of {patched:?}, not of the 2 MiB under the limit:\n{log}",
                b.digest
            );
            assert_eq!(patched.iter().sum::<u64>(), b.size, "{log}");
        } else {
            assert!(patched.is_empty(), "{} was chunked:\n{log}", b.digest);
            assert_eq!(
                commit.body_bytes, b.size,
                "{} not in one PUT:\n{log}",
                b.digest
            );
        }
    }
    let err = stderr_text(&out);
    assert!(
        err.contains("refused requests over 2.0 MiB with 413")
            && err.contains("client_max_body_size"),
        "{err}"
    );
}

/// A limit no upload can live with (16 KiB, under the 64 KiB airlock goes down to): the
/// import fails, naming the blob, the 413 and the setting to raise, without nginx's page;
/// no tag is written.
#[test]
fn a_body_limit_too_small_to_upload_under_is_a_clear_error() {
    let (src, s) = two_layer_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let target = TestRegistry::start(RegistryOpts::plain());
    let proxy = QuirkProxy::start(&target, Quirk::BodyLimit(16 * 1024));
    let out = import(&bundle, &proxy.host(), &[], &[]);
    let err = stderr_text(&out);
    println!("{}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let layer = s.images[0]
        .3
        .iter()
        .max_by_key(|d| d.size)
        .expect("a layer");
    assert!(err.contains(&layer.digest), "{err}");
    assert!(
        err.contains("413") && err.contains("client_max_body_size") && err.contains("65536 bytes"),
        "{err}"
    );
    assert!(!err.contains("<html>"), "{err}");
    assert!(
        !err.contains("went in chunks"),
        "no note on chunk sizes: {err}"
    );
    for (repo, tag, _, _) in &s.images {
        assert!(
            target.get_manifest(repo, tag).is_none(),
            "{repo}:{tag} was tagged"
        );
    }
}

/// Docker Hub's pull limit spent: every manifest GET answered 429 with its message. The export
/// retries within `--retries`, then fails naming the image, the 429 and what the registry said,
/// and, asked anonymously, that an account gets more; no bundle is written. With credentials,
/// no such advice.
#[test]
fn a_spent_pull_rate_limit_says_what_the_registry_said() {
    let (src, s) = big_source();
    let proxy = QuirkProxy::start(&src, Quirk::PullRateLimit);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, s.images_file(&proxy.host())).expect("write images file");
    let bundle = dir.path().join("b.tar.zst");
    let run = |envs: &[(&str, &str)]| {
        run_airlock(
            [
                "export",
                "-f",
                path_str(&list),
                "-o",
                path_str(&bundle),
                "--retries",
                "1",
            ],
            envs,
            None,
        )
    };
    let out = run(&[]);
    let err = stderr_text(&out);
    println!("{}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(err.contains("src/big:1"), "names the image: {err}");
    assert!(
        err.contains("429")
            && err
                .contains("TOOMANYREQUESTS: You have reached your unauthenticated pull rate limit"),
        "{err}"
    );
    assert!(
        err.contains("asked anonymously") && err.contains("--username"),
        "{err}"
    );
    assert!(!bundle.exists());
    assert!(
        proxy
            .records()
            .iter()
            .filter(|r| r.action == "rate-limited")
            .count()
            >= 2,
        "retried once:\n{}",
        proxy.describe()
    );

    let out = run(&[
        ("SOURCE_DOCKER_USERNAME", "puller"),
        ("SOURCE_DOCKER_PASSWORD", "pull-S3cret"),
    ]);
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(err.contains("TOOMANYREQUESTS"), "{err}");
    assert!(!err.contains("asked anonymously"), "{err}");
}

/// The connection of a chunk is cut mid-body: airlock asks the registry where the session is
/// (GET on the upload location) and goes on from that offset in the same session, without a
/// new POST for that blob.
/// A link that drops every other chunk of a long upload, more often in all than `--retries`
/// allows: each try moves the upload forward (the chunks between the cuts stay with the
/// registry), so it goes on from where the registry stands and completes; the count is of
/// failures in a row.
#[test]
fn an_upload_cut_more_often_than_its_retries_completes_while_each_try_moves_it_forward() {
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(
        Quirk::CutEveryPatch {
            every: 2,
            after_bytes: MIB as u64 / 2,
        },
        &s,
        &bundle,
        &["--retries", "1", "-j", "1"],
        &[("AIRLOCK_CHUNK_SIZE", "1M")],
    );
    let cuts = proxy.records().iter().filter(|r| r.action == "cut").count();
    assert!(
        cuts >= 2,
        "the layer's upload was cut {cuts} times; the test needs more cuts than the one retry \
         --retries 1 allows in a row:\n{}",
        proxy.describe()
    );
}

/// A commit the registry took, whose answer a proxy lost (504): the retry finds the session
/// spent (404), the registry is asked whether it has the blob (it has), and the import goes
/// on instead of failing the blob's images.
#[test]
fn a_commit_whose_answer_was_lost_is_found_done() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(Quirk::LoseCommitAnswer, &s, &bundle, &[], &[]);
    let lost = proxy
        .records()
        .iter()
        .filter(|r| r.action == "commit-answer-lost")
        .count();
    assert!(lost > 0, "no commit answer was lost:\n{}", proxy.describe());
    // The same for a blob sent in chunks and committed by an empty PUT.
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(Quirk::LoseCommitAnswer, &s, &bundle, &[], &[]);
    let recs = proxy.records();
    assert!(
        recs.iter()
            .any(|r| r.action == "commit-answer-lost" && r.method == "PUT" && r.body_bytes == 0),
        "no empty commit lost its answer:\n{}",
        proxy.describe()
    );
}

#[test]
fn cut_chunk_resumes_from_the_registry_offset() {
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(
        Quirk::CutPatch {
            nth: 2,
            after_bytes: MIB as u64,
        },
        &s,
        &bundle,
        &[],
        &[("AIRLOCK_CHUNK_SIZE", "1M")],
    );
    let log = proxy.describe();
    let recs = proxy.records();
    let cut = recs
        .iter()
        .find(|r| r.action == "cut")
        .unwrap_or_else(|| panic!("no PATCH was cut (fewer than two chunks?):\n{log}"));
    let sid = cut.session().expect("the cut PATCH has a session");
    let layer = s.images[0]
        .3
        .iter()
        .max_by_key(|d| d.size)
        .expect("a layer")
        .clone();
    // Committed in the cut session: no second session (POST) was needed for the blob.
    let committed_in: Vec<String> = recs
        .iter()
        .filter(|r| r.is_commit() && r.status == Some(201))
        .filter(|r| r.commit_digest().as_deref() == Some(layer.digest.as_str()))
        .filter_map(|r| r.session())
        .collect();
    assert_eq!(
        committed_in,
        vec![sid.clone()],
        "the blob was not finished in the session that was cut:\n{log}"
    );
    // One POST per blob of the image (layer and config), none more.
    let posts = recs
        .iter()
        .filter(|r| r.is_upload_post() && r.repo().as_deref() == Some("src/big"))
        .count();
    let later: Vec<&QuirkRecord> = recs
        .iter()
        .filter(|r| r.seq > cut.seq && r.session().as_deref() == Some(sid.as_str()))
        .collect();
    let status = later
        .iter()
        .find(|r| r.method == "GET" && r.range.is_some())
        .unwrap_or_else(|| panic!("no GET on the upload location after the cut:\n{log}"));
    let end: u64 = status
        .range
        .as_deref()
        .and_then(|r| r.trim().split('-').nth(1))
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("bad Range {:?}", status.range));
    let next = later
        .iter()
        .find(|r| r.method == "PATCH" && r.seq > status.seq)
        .unwrap_or_else(|| panic!("no PATCH after the status GET:\n{log}"));
    assert_eq!(
        next.range_start(),
        Some(end + 1),
        "the next chunk does not start at the registry's offset:\n{log}"
    );
    assert!(
        posts <= s.images[0].3.len(),
        "a second upload session was opened for a blob:\n{log}"
    );
}

/// The cut chunk's bytes reached the registry before the cut: distribution 2.8 then refuses
/// the session (its `_state` names the previous offset; "upload resumed at wrong offset"),
/// so the GET on the upload location answers 404. airlock must not give up: it starts the
/// blob over in a new session and the import completes.
#[test]
fn cut_chunk_the_registry_refuses_to_resume_starts_over() {
    let (src, s) = big_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (_t, proxy) = import_through(
        Quirk::CutPatchDelivered {
            nth: 2,
            after_bytes: MIB as u64,
        },
        &s,
        &bundle,
        &[],
        &[("AIRLOCK_CHUNK_SIZE", "1M")],
    );
    let log = proxy.describe();
    assert!(
        proxy.cut_done(),
        "no PATCH was cut (fewer than two chunks?):\n{log}"
    );
    let layer = s.images[0]
        .3
        .iter()
        .max_by_key(|d| d.size)
        .expect("a layer")
        .clone();
    assert!(
        proxy.records().iter().any(|r| r.is_commit()
            && r.status == Some(201)
            && r.commit_digest().as_deref() == Some(layer.digest.as_str())),
        "the layer was never committed:\n{log}"
    );
}

/// The harness itself: skopeo (an independent client) pushes through the proxy, and a PATCH
/// with chunked transfer-encoding is sent by hand; the proxy streams both, records their sizes,
/// and the content at the registry is intact. `RelativeLocation` and `NoContentDigest` are on,
/// so the rewritten headers are exercised by a client other than airlock.
#[test]
fn quirk_proxy_forwards_chunked_bodies_for_an_independent_client() {
    let (src, s) = big_source();
    let target = TestRegistry::start(RegistryOpts::plain());
    let proxy = QuirkProxy::start_with(
        &target,
        vec![Quirk::RelativeLocation, Quirk::NoContentDigest],
    );
    let (mut cmd, _tmp) = skopeo_command();
    let out = cmd
        .args(["copy", "--preserve-digests"])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}/src/big:1", src.host()))
        .arg(format!("docker://{}/src/big:1", proxy.host()))
        .output()
        .expect("run skopeo copy");
    let log = proxy.describe();
    assert!(
        out.status.success(),
        "skopeo copy through the proxy: {}\nproxy log:\n{log}",
        describe_output(&out)
    );
    assert_target_has(&target, &s, &log);
    let layer = s.images[0]
        .3
        .iter()
        .max_by_key(|d| d.size)
        .expect("a layer");
    let recs = proxy.records();
    let sent: u64 = recs
        .iter()
        .filter(|r| r.method == "PATCH" || r.is_commit())
        .filter(|r| {
            r.session()
                == recs
                    .iter()
                    .find(|c| c.is_commit() && c.commit_digest().as_deref() == Some(&layer.digest))
                    .and_then(|c| c.session())
        })
        .map(|r| r.body_bytes)
        .sum();
    assert_eq!(
        sent, layer.size,
        "body bytes recorded for the layer:\n{log}"
    );

    // skopeo sends known lengths; a chunked transfer-encoded PATCH by hand, through the proxy.
    let data = random_bytes(7, 900 * 1024);
    let digest = sha256_digest(&data);
    let (status, head) = raw_http(&proxy.host(), "POST", "/v2/src/raw/blobs/uploads/", None);
    assert_eq!(status, 202, "{head}");
    let loc = header_of(&head, "location").expect("Location");
    assert!(loc.starts_with('/'), "RelativeLocation: {loc}");
    let (status, head) = raw_http(&proxy.host(), "PATCH", &loc, Some(&data));
    assert_eq!(status, 202, "{head}");
    assert_eq!(
        header_of(&head, "range").as_deref(),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let loc = header_of(&head, "location").expect("Location");
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = format!("{loc}{sep}digest={}", digest.replace(':', "%3A"));
    let (status, head) = raw_http(&proxy.host(), "PUT", &put, None);
    assert_eq!(status, 201, "{head}");
    assert_eq!(
        target.client().get_blob("src/raw", &digest).as_deref(),
        Some(&data[..])
    );
    let patch = proxy
        .records()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.chunked)
        .expect("the chunked PATCH was recorded");
    assert_eq!(patch.body_bytes, data.len() as u64);
}

/// One request on its own connection; a body is sent with chunked transfer-encoding in
/// 64 KiB chunks. Returns the status and the response head.
fn raw_http(host: &str, method: &str, target: &str, body: Option<&[u8]>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).expect("connect to the proxy");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("read timeout");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    match body {
        Some(_) => head
            .push_str("Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n"),
        None => head.push_str("Content-Length: 0\r\n"),
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    if let Some(b) = body {
        for c in b.chunks(64 * 1024) {
            s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                .and_then(|_| s.write_all(c))
                .and_then(|_| s.write_all(b"\r\n"))
                .expect("send chunk");
        }
        s.write_all(b"0\r\n\r\n").expect("send last chunk");
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// The target's catalog: a first import asks nothing of repositories the target lacks
// ---------------------------------------------------------------------------------------------

/// A target that already holds one image of the corpus (`alpha:1.0`, imported alone), and the
/// repository that image is in.
fn seeded_target(bundle: &Path, s: &Source) -> (TestRegistry, String) {
    let target = TestRegistry::start(RegistryOpts::plain());
    let out = import(bundle, &target.host(), &["--image", "*alpha:1.0"], &[]);
    assert_success(&out, "import of alpha:1.0 alone");
    let seeded = target.catalog();
    assert_eq!(seeded.len(), 1, "one repository seeded: {seeded:?}");
    assert!(s.images.iter().any(|i| i.0 == seeded[0]));
    (target, seeded[0].clone())
}

/// The repositories asked about a blob (`HEAD /v2/<repo>/blobs/…`), each once.
fn repos_asked(proxy: &QuirkProxy) -> Vec<String> {
    let mut v: Vec<String> = proxy
        .records_of("HEAD")
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .filter_map(|r| r.repo())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The JSON an `import --plan --json` prints; panics unless it succeeds.
fn plan_json(bundle: &Path, host: &str) -> serde_json::Value {
    let out = import(bundle, host, &["--plan", "--json"], &[]);
    assert_success(&out, "import --plan --json");
    serde_json::from_slice(&out.stdout).expect("the plan is JSON")
}

/// `import -j 8 --json` through `proxy`; panics unless it succeeds. The report, and the
/// proxy's log.
fn import_json(bundle: &Path, proxy: &QuirkProxy) -> (serde_json::Value, String) {
    let out = import(bundle, &proxy.host(), &["-j", "8", "--json"], &[]);
    let log = proxy.describe();
    assert!(
        out.status.success(),
        "import: {}\nproxy log:\n{log}",
        describe_output(&out)
    );
    let report = serde_json::from_slice(&out.stdout).expect("report JSON");
    (report, log)
}

/// skopeo reads every image of `s` at `target` with the source's digest.
fn assert_skopeo_reads(target: &TestRegistry, s: &Source) {
    for (repo, tag, digest, _) in &s.images {
        assert_eq!(&skopeo_digest(target, &format!("{repo}:{tag}")), digest);
    }
}

/// Into a target that has one repository of the corpus: the catalog is read once, and blobs
/// are asked about (`HEAD`) only in that repository; every other repository gets its blobs
/// without a question. The plan says the same as one made blob by blob (a registry without
/// a catalog), and the import ends with every digest the source's (skopeo reads them), the
/// seeded image's blobs found there, not sent again.
#[test]
fn a_first_import_asks_nothing_of_repositories_the_catalog_lacks() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (target, seeded) = seeded_target(&bundle, &s);

    let asked_by_blob = QuirkProxy::start(&target, Quirk::NoCatalog);
    let by_blob = plan_json(&bundle, &asked_by_blob.host());
    let by_catalog_proxy = QuirkProxy::start_with(&target, vec![]);
    let by_catalog = plan_json(&bundle, &by_catalog_proxy.host());
    // The same counts (the images' targets name each proxy).
    for key in [
        "blobsToUpload",
        "bytesToUpload",
        "blobsToMount",
        "blobsAlreadyThere",
        "missing",
    ] {
        assert_eq!(by_catalog[key], by_blob[key], "{key}: {by_catalog}");
    }
    assert!(by_catalog["blobsToUpload"].as_u64().unwrap_or(0) > 0);
    assert!(by_catalog["blobsAlreadyThere"].as_u64().unwrap_or(0) >= 3);
    assert_eq!(
        repos_asked(&by_catalog_proxy),
        vec![seeded.clone()],
        "--plan asked about blobs of repositories the catalog lacks:\n{}",
        by_catalog_proxy.describe()
    );
    assert!(repos_asked(&asked_by_blob).len() > 1);

    let proxy = QuirkProxy::start_with(&target, vec![]);
    let (report, log) = import_json(&bundle, &proxy);
    let catalogs = proxy
        .records_of("GET")
        .iter()
        .filter(|r| r.path == "/v2/_catalog")
        .count();
    assert_eq!(catalogs, 1, "the catalog read {catalogs} times:\n{log}");
    assert_eq!(repos_asked(&proxy), vec![seeded.clone()], "{log}");
    assert!(
        report["blobsSkipped"].as_u64().unwrap_or(0) >= 3,
        "the seeded image's config and layers were not found there: {report}"
    );
    assert_target_has(&target, &s, &log);
    assert_skopeo_reads(&target, &s);
}

/// A registry that offers no catalog (404 `UNSUPPORTED`): every blob is asked about, as
/// before, and the import completes.
#[test]
fn without_a_catalog_every_blob_is_asked_about() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let (target, proxy) = import_through(Quirk::NoCatalog, &s, &bundle, &["-j", "8"], &[]);
    let log = proxy.describe();
    assert!(
        proxy.records().iter().any(|r| r.action == "no-catalog"),
        "the catalog was never asked for:\n{log}"
    );
    let mut repos: Vec<String> = s.images.iter().map(|i| i.0.clone()).collect();
    repos.sort();
    repos.dedup();
    assert_eq!(repos_asked(&proxy), repos, "{log}");
    assert_skopeo_reads(&target, &s);
}

/// A catalog that lists nothing while the registry holds every image already: the blobs are
/// sent again (the registry takes a blob it has), never a wrong image: every digest the same.
#[test]
fn a_catalog_that_lists_nothing_costs_uploads_not_images() {
    let (src, s) = corpus_source();
    let (_dir, bundle) = plain_bundle(&src, &s);
    let target = TestRegistry::start(RegistryOpts::plain());
    assert_success(&import(&bundle, &target.host(), &[], &[]), "first import");
    let proxy = QuirkProxy::start(&target, Quirk::EmptyCatalog);
    let (report, log) = import_json(&bundle, &proxy);
    assert!(repos_asked(&proxy).is_empty(), "{log}");
    assert!(
        report["blobsUploaded"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert_target_has(&target, &s, &log);
    assert_skopeo_reads(&target, &s);
}
