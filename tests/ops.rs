//! The operator's month: `diff` between this month's bundle and last month's (bundles and
//! extracted bundle.json files), and `cache ls` / `cache prune` on export's cache.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

fn export(list: &str, dir: &Path, name: &str, cache: &Path) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.txt"));
    std::fs::write(&file, list).expect("list");
    let out_path = dir.join(format!("{name}.tar.zst"));
    let out = run_airlock(
        [
            "export",
            "-q",
            "-f",
            file.to_str().expect("utf8"),
            "-o",
            out_path.to_str().expect("utf8"),
            "--cache-dir",
            cache.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    out_path
}

fn json(out: &std::process::Output) -> Value {
    assert_success(out, "airlock");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe_output(out)))
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn diff_of_two_months_names_added_removed_and_retagged_images_and_the_new_bytes() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let host = src.host();
    // Month 1: every corpus image but the last.
    let (kept, dropped) = corpus.images.split_at(corpus.images.len() - 1);
    let month1_list: String = kept
        .iter()
        .map(|i| format!("{}\n", i.reference(&host)))
        .collect();
    let m1 = export(&month1_list, dir.path(), "m1", &cache);
    // Month 2: the first image's tag moves to a new build, a new image appears, the first
    // month's last image is gone... and the dropped one comes in instead.
    let first = &kept[0];
    let rebuilt = src.client().push_image(
        &first.repo,
        Some(&first.tag),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[random_layer(4242, 50_000, true)],
        &[],
    );
    let fresh = src.client().push_image(
        "src/newcomer",
        Some("1.0"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[random_layer(4343, 20_000, true)],
        &[],
    );
    let removed = &kept[kept.len() - 1];
    let mut month2: Vec<String> = kept[..kept.len() - 1]
        .iter()
        .map(|i| i.reference(&host))
        .collect();
    month2.push(dropped[0].reference(&host));
    month2.push(format!("{host}/src/newcomer:1.0"));
    let m2 = export(&(month2.join("\n") + "\n"), dir.path(), "m2", &cache);

    let d = json(&run_airlock(
        [
            "diff",
            m1.to_str().expect("utf8"),
            m2.to_str().expect("utf8"),
            "--json",
        ],
        &[],
        None,
    ));
    let mut added = vec![
        dropped[0].reference(&host),
        format!("{host}/src/newcomer:1.0"),
    ];
    added.sort();
    assert_eq!(names(&d["added"]), added);
    assert_eq!(names(&d["removed"]), vec![removed.reference(&host)]);
    assert_eq!(names(&d["retagged"]), vec![first.reference(&host)]);
    assert_eq!(d["retagged"][0]["old"], first.digest.as_str());
    assert_eq!(d["retagged"][0]["new"], rebuilt.digest.as_str());
    assert_ne!(fresh.digest, rebuilt.digest);
    assert_eq!(d["unchanged"].as_u64(), Some(kept.len() as u64 - 2));
    // The new bytes are exactly what month 2 carries that month 1 did not.
    let (b1, b2) = (read_bundle_json(&m1), read_bundle_json(&m2));
    let old: HashSet<&str> = b1["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .map(|b| b["digest"].as_str().expect("digest"))
        .collect();
    let new_bytes: u64 = b2["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .filter(|b| !old.contains(b["digest"].as_str().expect("digest")))
        .map(|b| b["size"].as_u64().expect("size"))
        .sum();
    assert!(new_bytes > 50_000);
    assert_eq!(d["newBytes"].as_u64(), Some(new_bytes));

    // The same from the extracted bundle.json files, and as text.
    let j1 = dir.path().join("m1.json");
    let j2 = dir.path().join("m2.json");
    std::fs::write(&j1, serde_json::to_vec(&b1).expect("json")).expect("write");
    std::fs::write(&j2, serde_json::to_vec(&b2).expect("json")).expect("write");
    let d2 = json(&run_airlock(
        [
            "diff",
            j1.to_str().expect("utf8"),
            j2.to_str().expect("utf8"),
            "--json",
        ],
        &[],
        None,
    ));
    assert_eq!(d2["newBytes"], d["newBytes"]);
    assert_eq!(d2["retagged"], d["retagged"]);
    let text = run_airlock(
        [
            "diff",
            m1.to_str().expect("utf8"),
            m2.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_success(&text, "diff");
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains("retagged") && shown.contains(&first.reference(&host)),
        "{shown}"
    );
    // A file that is not a bundle is an error naming it.
    let junk = dir.path().join("junk.tar.zst");
    std::fs::write(&junk, b"not a bundle").expect("write");
    let bad = run_airlock(
        [
            "diff",
            junk.to_str().expect("utf8"),
            m2.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr_text(&bad).contains("junk.tar.zst"));
}

/// `cache prune` deletes only what is the cache's own: a directory given by mistake that is
/// an OCI image layout is refused, a `blobs/sha256` that is a symbolic link is not followed,
/// and files not named by a digest are left; each refusal exits 2 and removes nothing.
#[test]
fn cache_prune_deletes_only_the_caches_own_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hex = "ab".repeat(32);
    let prune = |cache: &std::path::Path| {
        run_airlock(
            [
                "cache",
                "prune",
                "--cache-dir",
                cache.to_str().expect("utf8"),
                "--max-size",
                "1",
            ],
            &[],
            None,
        )
    };
    // An OCI image layout (a skopeo oci: directory, an extracted bundle).
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    std::fs::write(layout.join("blobs/sha256").join(&hex), b"a blob").expect("write");
    let o = prune(&layout);
    assert_eq!(o.status.code(), Some(2), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("OCI image layout"),
        "{}",
        describe_output(&o)
    );
    assert!(
        layout.join("blobs/sha256").join(&hex).is_file(),
        "a layout's blob was removed"
    );
    // A cache whose blobs/sha256 is a link to somewhere else.
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).expect("mkdir");
    std::fs::write(victim.join(&hex), b"precious").expect("write");
    let linked = dir.path().join("linked");
    std::fs::create_dir_all(linked.join("blobs")).expect("mkdir");
    std::os::unix::fs::symlink(&victim, linked.join("blobs/sha256")).expect("symlink");
    let o = prune(&linked);
    assert_eq!(o.status.code(), Some(2), "{}", describe_output(&o));
    assert!(
        victim.join(&hex).is_file(),
        "the link was followed and its target pruned"
    );
    // Files not named by a digest are not the cache's.
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("blobs/sha256")).expect("mkdir");
    std::fs::write(cache.join("blobs/sha256/notes.txt"), b"mine").expect("write");
    std::fs::write(cache.join("blobs/sha256").join(&hex), b"an entry").expect("write");
    let o = prune(&cache);
    assert_success(&o, "prune of a cache");
    assert!(
        cache.join("blobs/sha256/notes.txt").is_file(),
        "a file not named by a digest went"
    );
    assert!(
        !cache.join("blobs/sha256").join(&hex).exists(),
        "the entry stayed"
    );
}

/// `cache prune` never removes what a running export uses: while an export reads the cache
/// (slowly, through a throttled link), a prune is refused saying so and removes nothing, and
/// the export completes; once it is done, the prune goes through.
#[test]
fn cache_prune_waits_for_no_export_and_is_refused_during_one() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let c = cache.to_str().expect("utf8").to_string();
    // An export through a slow link: its cache fills as it goes, and it reads each entry back.
    let proxy = ThrottleProxy::for_registry(&src, 8 * 1024);
    let list = dir.path().join("slow.txt");
    std::fs::write(&list, corpus.images_file(&proxy.host())).expect("list");
    let home = tempfile::tempdir().expect("home");
    let mut slow = airlock_command(home.path());
    slow.args(["export", "-q", "--plain-http", "--cache-dir", &c, "-f"])
        .arg(&list)
        .arg("-o")
        .arg(dir.path().join("slow.tar.zst"));
    let running = slow.spawn().expect("start the export");
    let cached = || {
        std::fs::read_dir(cache.join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let waiting = std::time::Instant::now();
    while cached() < 2 && waiting.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = cached();
    let o = run_airlock(
        ["cache", "prune", "--cache-dir", &c, "--max-size", "1"],
        &[],
        None,
    );
    let still = cached();
    let done = running.wait_with_output().expect("the export");
    assert_success(&done, "the export the prune met");
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("an export is using the cache"),
        "{}",
        describe_output(&o)
    );
    assert!(
        still >= before,
        "the prune removed entries during the export"
    );
    let o = run_airlock(
        ["cache", "prune", "--cache-dir", &c, "--max-size", "1"],
        &[],
        None,
    );
    assert_success(&o, "prune after the export");
}

#[test]
fn cache_ls_and_prune() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let c = cache.to_str().expect("utf8");
    let empty = json(&run_airlock(
        ["cache", "ls", "--cache-dir", c, "--json"],
        &[],
        None,
    ));
    assert_eq!(empty["entries"].as_u64(), Some(0));
    let b = export(&corpus.images_file(&src.host()), dir.path(), "b", &cache);
    let blobs = read_bundle_json(&b)["blobs"]
        .as_array()
        .expect("blobs")
        .iter()
        .filter(|x| !x["mediaType"].as_str().unwrap_or("").contains("manifest"))
        .filter(|x| !x["mediaType"].as_str().unwrap_or("").contains("index"))
        .count();
    let ls = json(&run_airlock(
        ["cache", "ls", "--cache-dir", c, "--json"],
        &[],
        None,
    ));
    // Every blob, and the manifests of multi-platform images (an index's children, kept by
    // digest for the next export).
    let children: std::collections::HashSet<&str> = corpus
        .images
        .iter()
        .flat_map(|i| i.manifest.children.iter().map(|c| c.digest.as_str()))
        .collect();
    assert!(!children.is_empty(), "the corpus has an index");
    assert_eq!(
        ls["entries"].as_u64(),
        Some((blobs + children.len()) as u64),
        "{ls}"
    );
    assert!(ls["bytes"].as_u64().expect("bytes") > 0);
    // Export's own summary says how big the cache is.
    let list = dir.path().join("b.txt");
    let again = dir.path().join("summary.tar.zst");
    let summary = json(&run_airlock(
        [
            "export",
            "--json",
            "-f",
            list.to_str().expect("utf8"),
            "-o",
            again.to_str().expect("utf8"),
            "--cache-dir",
            c,
        ],
        &[],
        None,
    ));
    assert_eq!(summary["cacheEntries"], ls["entries"], "{summary}");
    assert_eq!(summary["cacheSize"], ls["bytes"], "{summary}");
    // Nothing is older than a day.
    let p = json(&run_airlock(
        [
            "cache",
            "prune",
            "--cache-dir",
            c,
            "--older-than",
            "1d",
            "--json",
        ],
        &[],
        None,
    ));
    assert_eq!(p["removed"].as_u64(), Some(0));
    let entries: Vec<_> = std::fs::read_dir(cache.join("blobs/sha256"))
        .expect("entries")
        .map(|e| e.expect("entry").path())
        .collect();
    let age = |paths: &[std::path::PathBuf]| {
        for p in paths {
            let f = std::fs::File::options().write(true).open(p).expect("open");
            f.set_modified(
                std::time::SystemTime::now() - std::time::Duration::from_secs(60 * 86_400),
            )
            .expect("mtime");
        }
    };
    // Entries an export uses count as fresh again, however old they were.
    age(&entries);
    export(
        &corpus.images_file(&src.host()),
        dir.path(),
        "reused",
        &cache,
    );
    let p = json(&run_airlock(
        [
            "cache",
            "prune",
            "--cache-dir",
            c,
            "--older-than",
            "30d",
            "--json",
        ],
        &[],
        None,
    ));
    assert_eq!(p["removed"].as_u64(), Some(0), "entries in use were pruned");
    // Age half of the entries by two months: they go.
    let old = entries.len() / 2;
    age(&entries[..old]);
    let p = json(&run_airlock(
        [
            "cache",
            "prune",
            "--cache-dir",
            c,
            "--older-than",
            "30d",
            "--json",
        ],
        &[],
        None,
    ));
    assert_eq!(p["removed"].as_u64(), Some(old as u64));
    for e in &entries[..old] {
        assert!(!e.exists(), "{} was not pruned", e.display());
    }
    // A size limit of one byte empties it.
    let p = json(&run_airlock(
        [
            "cache",
            "prune",
            "--cache-dir",
            c,
            "--max-size",
            "1",
            "--json",
        ],
        &[],
        None,
    ));
    assert_eq!(p["kept"].as_u64(), Some(0));
    // prune with nothing to go by is a usage error.
    let u = run_airlock(["cache", "prune", "--cache-dir", c], &[], None);
    assert_eq!(u.status.code(), Some(2));
    // The next export fetches again and still writes a good bundle.
    let again = export(
        &corpus.images_file(&src.host()),
        dir.path(),
        "again",
        &cache,
    );
    let out = run_airlock(["verify", again.to_str().expect("utf8")], &[], None);
    assert_success(&out, "verify");
}

#[test]
fn import_plan_writes_nothing_and_image_patterns_choose_what_is_imported() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let bundle = export(&corpus.images_file(&src.host()), dir.path(), "b", &cache);
    let b = bundle.to_str().expect("utf8");
    let dst = TestRegistry::start(RegistryOpts::plain());
    let host = dst.host();
    let plan = json(&run_airlock(
        ["import", b, "--registry", &host, "--plan", "--json"],
        &[],
        None,
    ));
    assert_eq!(
        plan["images"].as_array().map(|a| a.len()),
        Some(corpus.images.len())
    );
    let layers: HashSet<String> = corpus.all_blob_digests().into_iter().collect();
    assert_eq!(plan["blobsToUpload"].as_u64(), Some(layers.len() as u64));
    assert!(plan["blobsToMount"].as_u64().unwrap_or(0) > 0, "{plan}");
    assert_eq!(plan["blobsAlreadyThere"].as_u64(), Some(0));
    // Nothing written: no repository, and no write request reached the registry.
    assert!(dst.catalog().is_empty());
    for m in ["PUT", "POST", "PATCH", "DELETE"] {
        assert!(dst.access_log(m, "/v2/").is_empty(), "--plan sent {m}");
    }
    // The text form names the mapping.
    let text = run_airlock(
        [
            "import",
            b,
            "--registry",
            &host,
            "--plan",
            "--repository",
            "mirror",
        ],
        &[],
        None,
    );
    assert_success(&text, "import --plan");
    let shown = String::from_utf8_lossy(&text.stdout);
    assert!(
        shown.contains(&format!("{host}/mirror/src/alpha:1.0")),
        "{shown}"
    );

    // --image: only alpha's tags.
    let out = run_airlock(
        [
            "import",
            b,
            "--registry",
            &host,
            "--image",
            "src/alpha:*",
            "-q",
        ],
        &[],
        None,
    );
    assert_success(&out, "import --image");
    assert!(
        !dst.access_log("PUT", "/v2/").is_empty(),
        "the access log shows writes (so its silence above meant something)"
    );
    assert_eq!(dst.catalog(), vec!["src/alpha".to_string()]);
    let mut tags = dst.tags("src/alpha");
    tags.sort();
    let mut want: Vec<String> = corpus
        .images
        .iter()
        .filter(|i| i.repo == "src/alpha")
        .map(|i| i.tag.clone())
        .collect();
    want.sort();
    assert_eq!(tags, want);
    // Planning the rest now: alpha's blobs are there, the shared base layer mounts.
    let plan = json(&run_airlock(
        ["import", b, "--registry", &host, "--plan", "--json"],
        &[],
        None,
    ));
    assert!(
        plan["blobsAlreadyThere"].as_u64().unwrap_or(0) > 0,
        "{plan}"
    );
    assert!(plan["blobsToUpload"].as_u64().unwrap_or(0) < layers.len() as u64);
    // A pattern that matches nothing is a usage error.
    let none = run_airlock(
        ["import", b, "--registry", &host, "--image", "nope/*"],
        &[],
        None,
    );
    assert_eq!(none.status.code(), Some(2), "{}", describe_output(&none));
}
