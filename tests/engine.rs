//! The engine side of real-network robustness (issue 7): import writes each manifest once per
//! repository, no request is made twice for the same thing, `--tag`/`--repository` leave
//! companions their names, a failed re-export keeps the old signed bundle, SIGTERM/SIGINT
//! leave nothing behind, damaged cache entries are fetched again, and the free space is
//! checked before anything is downloaded. Every test talks to real registries.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------------------------

/// Request paths of an access log's lines (`PUT /v2/x/manifests/y HTTP/1.1" 201` → the path).
fn paths(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// How often each path occurs.
fn counts(paths: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in paths {
        *m.entry(p.clone()).or_insert(0) += 1;
    }
    m
}

/// Every regular file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A tmpfs of `size` mounted at `dir` for the life of the value (needs root).
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mkdir for tmpfs");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a {size} tmpfs at {}",
            dir.display()
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A TCP proxy in front of a registry that forwards bytes both ways at a limited rate per
/// connection (bytes per second; 0 means unlimited), switchable while it runs.
struct SlowProxy {
    port: u16,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    fn start(upstream_port: u16, rate: u64) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind slow proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let rate = Arc::new(AtomicU64::new(rate));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (rate.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                            continue;
                        };
                        for (from, to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let rate = r.clone();
                                std::thread::spawn(move || pipe(from, to, rate));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SlowProxy { port, rate, stop }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, rate: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let r = rate.load(Ordering::Relaxed);
        if r > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Sends `signal` (e.g. "TERM") to a child and waits (at most 20 s) for it to exit; returns
/// its exit code and how long it took to stop.
fn signal_and_wait(child: &mut Child, signal: &str) -> (Option<i32>, Duration) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal}");
    let sent = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait for airlock") {
            return (s.code(), sent.elapsed());
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("airlock did not stop within 20 s of SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most `limit`) until `cond` holds.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stderr of a finished child.
fn child_stderr(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// `repo` with one image of a single big random layer (plus a small one), tagged `tag`.
fn push_big_image(reg: &TestRegistry, repo: &str, tag: &str, seed: u64, size: usize) -> String {
    let layers = [
        random_layer(seed, size, false),
        small_layer(seed, "small", true),
    ];
    reg.client()
        .push_image(
            repo,
            Some(tag),
            ImageFormat::Oci,
            &Platform::linux_amd64(),
            &layers,
            &[],
        )
        .digest
}

// ---------------------------------------------------------------------------------------------
// 1. Each manifest once per repository
// ---------------------------------------------------------------------------------------------

/// Three tags on one index (two platforms) and two tags on one plain manifest, imported with
/// `-j 8` five times into fresh registries: every tag has the source digest each time, and the
/// target's access log shows every manifest written by digest at most once per repository,
/// every tag once.
#[test]
fn tags_sharing_a_manifest_are_written_once_each_after_it() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let c = src.client();
    let base = small_layer(7, "base", true);
    let children: Vec<PushedManifest> = [("amd64", 1), ("arm64", 2)]
        .iter()
        .map(|(arch, seed)| {
            c.push_image(
                "src/multi",
                None,
                ImageFormat::Oci,
                &Platform::new("linux", arch, None),
                &[base.clone(), small_layer(*seed, arch, true)],
                &[],
            )
        })
        .collect();
    let index_tags = ["latest", "v1.1.0", "v1.1"];
    let index = c.push_index("src/multi", index_tags[0], ImageFormat::Oci, &children);
    for t in &index_tags[1..] {
        c.push_manifest("src/multi", t, &index.bytes, OCI_INDEX);
    }
    let plain_tags = ["latest", "1.0"];
    let plain = c.push_image(
        "src/plain",
        Some(plain_tags[0]),
        ImageFormat::Docker,
        &Platform::linux_amd64(),
        &[base.clone(), small_layer(3, "plain", true)],
        &[],
    );
    c.push_manifest("src/plain", plain_tags[1], &plain.bytes, DOCKER_MANIFEST);

    let host = src.host();
    let mut refs: Vec<String> = index_tags
        .iter()
        .map(|t| format!("{host}/src/multi:{t}"))
        .collect();
    refs.extend(plain_tags.iter().map(|t| format!("{host}/src/plain:{t}")));
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("shared.tar.zst");
    let mut args = vec!["export".to_string(), "-o".into(), path_str(&bundle)];
    args.extend(refs);
    let out = run_airlock(&args, &[], None);
    assert_success(&out, "export of shared tags");

    let expected: Vec<(&str, &str, &str)> = index_tags
        .iter()
        .map(|t| ("src/multi", *t, index.digest.as_str()))
        .chain(
            plain_tags
                .iter()
                .map(|t| ("src/plain", *t, plain.digest.as_str())),
        )
        .collect();
    for round in 1..=5 {
        let dst = TestRegistry::start(RegistryOpts::plain());
        let out = run_airlock(
            [
                "import",
                &path_str(&bundle),
                "--registry",
                &dst.host(),
                "-j",
                "8",
            ],
            &[],
            None,
        );
        assert_success(&out, &format!("import round {round}"));
        for (repo, tag, digest) in &expected {
            assert_eq!(
                dst.client().manifest_digest(repo, tag).as_deref(),
                Some(*digest),
                "round {round}: {repo}:{tag}"
            );
        }
        for child in &children {
            assert!(
                dst.client()
                    .manifest_digest("src/multi", &child.digest)
                    .is_some(),
                "round {round}: child {} missing",
                child.digest
            );
        }
        let puts = paths(&dst.access_log("PUT", "/manifests/"));
        for (path, n) in counts(&puts) {
            assert_eq!(n, 1, "round {round}: {path} written {n} times: {puts:#?}");
        }
        // Every manifest into each repository by digest at most once, the tags once each.
        let by_tag = puts.iter().filter(|p| !p.contains("/sha256:")).count();
        assert_eq!(by_tag, expected.len(), "round {round}: {puts:#?}");
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

// ---------------------------------------------------------------------------------------------
// 2. No request twice for the same thing
// ---------------------------------------------------------------------------------------------

/// With `--config`, the tag list of a repository is read once, though both the image-set
/// rules and the search for signatures need it.
#[test]
fn an_image_set_export_lists_each_repository_once() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let c = src.client();
    let img = c.push_image(
        "ns/app",
        Some("v1.0.0"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(11, "app", true)],
        &[],
    );
    c.push_manifest("ns/app", "v1.1.0", &img.bytes, OCI_MANIFEST);
    let dir = tempfile::tempdir().expect("tempdir");
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        format!(
            "registries:\n  - registry: {}\n    namespace: ns\n    images:\n      - {{ name: app, newest: 2 }}\n",
            src.host()
        ),
    )
    .expect("write image set");
    let bundle = dir.path().join("set.tar.zst");
    let out = run_airlock(
        [
            "export",
            "--config",
            &path_str(&set),
            "-o",
            &path_str(&bundle),
        ],
        &[],
        None,
    );
    assert_success(&out, "export --config");
    let lists = src.access_log("GET", "/v2/ns/app/tags/list");
    assert_eq!(lists.len(), 1, "tag list read more than once: {lists:#?}");
    let bj = read_bundle_json(&bundle);
    assert_eq!(bj["images"].as_array().map(|a| a.len()), Some(2));
}

/// An incremental bundle imported where its base already is: each external blob is asked
/// for (HEAD) once per repository, not once to check and again to place it.
#[test]
fn external_blobs_are_checked_once_on_import() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let c = src.client();
    let layers = [small_layer(21, "one", true), small_layer(22, "two", true)];
    let first = c.push_image(
        "src/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &layers,
        &[],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/src/app:1", src.host()),
            "-o",
            &path_str(&base),
        ],
        &[],
        None,
    );
    assert_success(&out, "base export");
    // Same blobs, a new manifest (another label): everything but the manifest and config is
    // external in the incremental bundle.
    let second = c.push_image(
        "src/app",
        Some("2"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &layers,
        &[("release", "2")],
    );
    let inc = dir.path().join("inc.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/src/app:2", src.host()),
            "-o",
            &path_str(&inc),
            "--since",
            &path_str(&base),
        ],
        &[],
        None,
    );
    assert_success(&out, "incremental export");
    let external: Vec<String> = read_bundle_json(&inc)["external"]
        .as_array()
        .expect("external blobs")
        .iter()
        .map(|x| x["digest"].as_str().expect("digest").to_string())
        .collect();
    assert_eq!(external.len(), 2, "both layers are external");

    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        ["import", &path_str(&base), "--registry", &dst.host()],
        &[],
        None,
    );
    assert_success(&out, "base import");
    let before = dst.access_log("HEAD", "/blobs/").len();
    let out = run_airlock(
        ["import", &path_str(&inc), "--registry", &dst.host()],
        &[],
        None,
    );
    assert_success(&out, "incremental import");
    assert_eq!(
        dst.client().manifest_digest("src/app", "2").as_deref(),
        Some(second.digest.as_str())
    );
    assert_eq!(
        dst.client().manifest_digest("src/app", "1").as_deref(),
        Some(first.digest.as_str())
    );
    let heads = paths(&dst.access_log("HEAD", "/blobs/")[before..]);
    for d in &external {
        let n = heads.iter().filter(|p| p.ends_with(d.as_str())).count();
        assert_eq!(n, 1, "external blob {d} asked for {n} times: {heads:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. --tag / --repository and companions
// ---------------------------------------------------------------------------------------------

/// A bundle carrying a cosign-style signature, imported with `--tag` and `--repository`: the
/// image goes under the new tag, the signature keeps its `sha256-<hex>.sig` tag next to it.
#[test]
fn import_tag_and_repository_leave_companions_their_names() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let c = src.client();
    let img = c.push_image(
        "src/signed",
        Some("1.0"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(31, "signed", true)],
        &[],
    );
    let sig_tag = format!("sha256-{}.sig", &img.digest[7..]);
    let payload = format!(
        r#"{{"critical":{{"image":{{"docker-manifest-digest":"{}"}}}}}}"#,
        img.digest
    );
    let sig = c.push_artifact(
        "src/signed",
        &sig_tag,
        OCI_CONFIG,
        b"{}",
        &[(
            "application/vnd.dev.cosign.simplesigning.v1+json",
            payload.into_bytes(),
        )],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("signed.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/src/signed:1.0", src.host()),
            "-o",
            &path_str(&bundle),
        ],
        &[],
        None,
    );
    assert_success(&out, "export with a signature");
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            &path_str(&bundle),
            "--registry",
            &dst.host(),
            "--repository",
            "mirror",
            "--tag",
            "v9",
        ],
        &[],
        None,
    );
    assert_success(&out, "import --tag --repository");
    assert_eq!(
        dst.client()
            .manifest_digest("mirror/src/signed", "v9")
            .as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(
        dst.client()
            .manifest_digest("mirror/src/signed", &sig_tag)
            .as_deref(),
        Some(sig.digest.as_str())
    );
    let mut tags = dst.tags("mirror/src/signed");
    tags.sort();
    let mut want = vec![sig_tag.clone(), "v9".to_string()];
    want.sort();
    assert_eq!(tags, want);

    // TARGET_DOCKER_TAG works the same way.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        ["import", &path_str(&bundle), "--registry", &dst.host()],
        &[("TARGET_DOCKER_TAG", "env-tag")],
        None,
    );
    assert_success(&out, "import with TARGET_DOCKER_TAG");
    assert_eq!(
        dst.client()
            .manifest_digest("src/signed", &sig_tag)
            .as_deref(),
        Some(sig.digest.as_str())
    );
    assert_eq!(
        dst.client()
            .manifest_digest("src/signed", "env-tag")
            .as_deref(),
        Some(img.digest.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A failed re-export keeps the old signed bundle
// ---------------------------------------------------------------------------------------------

/// A signed export, then re-exports to the same name (unsigned, then signed) that fail while
/// writing (every blob download is cut): the old bundle, its `.sha256` and its `.minisig` are
/// byte-identical afterwards, nothing `.partial` is left, and `import --trusted-key` of the
/// old bundle succeeds.
#[test]
fn a_failed_reexport_leaves_the_old_signed_bundle_valid() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let first = push_big_image(&src, "src/keep", "1", 41, 256 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("signer");
    let out = run_airlock(
        ["keygen", "-o", &path_str(&key), "--no-password"],
        &[],
        None,
    );
    assert_success(&out, "keygen");
    let secret = PathBuf::from(format!("{}.key", key.display()));
    let public = PathBuf::from(format!("{}.pub", key.display()));
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir out");
    let bundle = out_dir.join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/src/keep:1", src.host()),
            "-o",
            &path_str(&bundle),
            "--sign",
            &path_str(&secret),
        ],
        &[],
        None,
    );
    assert_success(&out, "signed export");
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", bundle.display()));
    let set = [bundle.clone(), side(".sha256"), side(".minisig")];
    let before: Vec<Vec<u8>> = set
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();

    // New content at the source, and every blob download cut short through the proxy.
    push_big_image(&src, "src/keep", "1", 42, 256 * 1024);
    let proxy = FaultProxy::for_registry(
        &src,
        FaultPlan::new(Fault::TruncateBody { after_bytes: 100 }, 10_000)
            .method("GET")
            .path_contains("/blobs/"),
    );
    for signed in [false, true] {
        let mut args = vec![
            "export".to_string(),
            format!("{}/src/keep:1", proxy.host()),
            "-o".into(),
            path_str(&bundle),
            "--retries".into(),
            "0".into(),
        ];
        if signed {
            args.extend(["--sign".to_string(), path_str(&secret)]);
        }
        let out = run_airlock(&args, &[], None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "re-export (signed: {signed}) should fail: {}",
            describe_output(&out)
        );
        for (p, old) in set.iter().zip(&before) {
            let now = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(
                now == *old,
                "{} changed by a failed re-export (signed: {signed})",
                p.display()
            );
        }
        let left: Vec<PathBuf> = files_below(&out_dir)
            .into_iter()
            .filter(|p| !set.contains(p))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    let dst = TestRegistry::start(RegistryOpts::plain());
    let out = run_airlock(
        [
            "import",
            &path_str(&bundle),
            "--registry",
            &dst.host(),
            "--trusted-key",
            &path_str(&public),
        ],
        &[],
        None,
    );
    assert_success(&out, "import --trusted-key of the old bundle");
    assert_eq!(
        dst.client().manifest_digest("src/keep", "1").as_deref(),
        Some(first.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Signals, and the cache
// ---------------------------------------------------------------------------------------------

/// SIGTERM during an export that is downloading (slowly, through a throttling proxy): it stops
/// within a couple of seconds with exit 143, and neither `NAME.partial` nor a cache temporary
/// file is left. A re-run completes with every digest. SIGINT does the same with exit 130.
#[test]
fn sigterm_and_sigint_stop_an_export_and_leave_nothing_behind() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let digest = push_big_image(&src, "src/slow", "1", 51, 4 * 1024 * 1024);
    let proxy = SlowProxy::start(src.port(), 256 * 1024);
    let home = tempfile::tempdir().expect("home");
    let cache = home.path().join("airlock-cache");
    let out_dir = home.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir out");
    let bundle = out_dir.join("slow.tar.zst");
    let reference = format!("{}/src/slow:1", proxy.host());
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let mut child = airlock_command(home.path())
            .args(["export", &reference, "-o", &path_str(&bundle)])
            .spawn()
            .expect("spawn airlock export");
        let tmp = cache.join("tmp");
        // Both under way: a download into the cache and the bundle being written (the
        // writer may open its file a moment after the first download starts).
        wait_for(
            Duration::from_secs(30),
            "a download into the cache while the bundle is being written",
            || !files_below(&tmp).is_empty() && out_dir.join("slow.tar.zst.partial").exists(),
        );
        let (got, took) = signal_and_wait(&mut child, signal);
        let err = child_stderr(&mut child);
        assert_eq!(got, Some(code), "SIG{signal}: {err}");
        assert!(
            took < Duration::from_secs(3),
            "SIG{signal}: took {took:?} to stop"
        );
        assert!(
            files_below(&out_dir).is_empty(),
            "SIG{signal} left {:?}",
            files_below(&out_dir)
        );
        assert!(
            files_below(&tmp).is_empty(),
            "SIG{signal} left cache temporaries {:?}",
            files_below(&tmp)
        );
    }
    proxy.set_rate(0);
    let mut cmd = airlock_command(home.path());
    cmd.args(["export", &reference, "-o", &path_str(&bundle)]);
    let out = cmd.output().expect("run airlock");
    assert_success(&out, "export after the signals");
    let bj = read_bundle_json(&bundle);
    assert_eq!(bj["images"][0]["digest"], digest.as_str());
}

/// SIGTERM during an import that is uploading (slowly): exit 143 within a couple of seconds;
/// a re-run completes and the target has every digest.
/// Ctrl-C at a prompt stops airlock: at a hidden password prompt (keygen on a terminal,
/// played by `script`), SIGINT gives exit 130 within a few seconds, no key file, and the
/// terminal's echo back on (the prompt had turned it off). Before, the prompt's read was
/// interrupted into an error (exit 1), and at a visible prompt nothing happened until Enter.
#[test]
fn sigint_at_a_password_prompt_exits_130_and_gives_the_terminal_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = dir.path().join("k");
    let bin = airlock_bin();
    let script = format!(
        "{} keygen -o {}; echo EXIT=$?; stty -a",
        bin.display(),
        prefix.display()
    );
    let home = tempfile::tempdir().expect("home");
    let mut child = Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .env("HOME", home.path())
        .env_remove("AIRLOCK_KEY_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (bsdutils)");
    // airlock, as a grandchild: found by its executable and its arguments.
    let prefix_text = prefix.display().to_string();
    let find = || -> Option<u32> {
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (exe == bin && String::from_utf8_lossy(&cmd).contains(&prefix_text)).then_some(pid)
            })
    };
    let mut pid = None;
    wait_for(Duration::from_secs(20), "airlock keygen to start", || {
        pid = find();
        pid.is_some()
    });
    // At the prompt by now (it asks at once); a moment for it to turn echo off.
    std::thread::sleep(Duration::from_millis(500));
    let pid = pid.expect("pid").to_string();
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    wait_for(Duration::from_secs(10), "airlock to stop", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    let took = sent.elapsed();
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("script");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        text.contains("EXIT=130"),
        "not stopped with 130 ({took:?}): {text}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?} to stop");
    assert!(
        text.split_whitespace().any(|w| w == "echo"),
        "the terminal's echo stayed off: {text}"
    );
    assert!(!dir.path().join("k.key").exists(), "a key file was written");
}

#[test]
fn sigterm_stops_an_import_and_a_rerun_completes() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let digest = push_big_image(&src, "src/up", "1", 61, 4 * 1024 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("up.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/src/up:1", src.host()),
            "-o",
            &path_str(&bundle),
        ],
        &[],
        None,
    );
    assert_success(&out, "export");
    let dst = TestRegistry::start(RegistryOpts::plain());
    let proxy = SlowProxy::start(dst.port(), 256 * 1024);
    let home = tempfile::tempdir().expect("home");
    let mut child = airlock_command(home.path())
        .args(["import", &path_str(&bundle), "--registry", &proxy.host()])
        .spawn()
        .expect("spawn airlock import");
    wait_for(Duration::from_secs(30), "an upload to start", || {
        !dst.access_log("POST", "/blobs/uploads/").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, took) = signal_and_wait(&mut child, "TERM");
    let err = child_stderr(&mut child);
    assert_eq!(code, Some(143), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    assert!(
        dst.client().manifest_digest("src/up", "1").is_none(),
        "an interrupted import must not tag"
    );
    assert!(
        files_below(dir.path())
            == vec![
                bundle.clone(),
                PathBuf::from(format!("{}.sha256", bundle.display()))
            ],
        "import left files: {:?}",
        files_below(dir.path())
    );
    let out = run_airlock(
        ["import", &path_str(&bundle), "--registry", &dst.host()],
        &[],
        None,
    );
    assert_success(&out, "import after SIGTERM");
    assert_eq!(
        dst.client().manifest_digest("src/up", "1").as_deref(),
        Some(digest.as_str())
    );
    let manifest = dst
        .client()
        .get_manifest("src/up", &digest)
        .expect("manifest at the target");
    let v: serde_json::Value = serde_json::from_slice(&manifest.bytes).expect("manifest json");
    for l in v["layers"].as_array().expect("layers") {
        let d = l["digest"].as_str().expect("layer digest");
        assert!(dst.blob_exists("src/up", d), "layer {d} missing");
    }
}

/// A cache entry damaged between runs (one byte flipped) is checked, found bad and fetched
/// again: the export succeeds and the entry is good again. A temporary file that a killed
/// run left in the cache (its process gone) is removed.
#[test]
fn a_damaged_cache_entry_is_fetched_again_and_stale_temporaries_go() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let digest = push_big_image(&src, "src/cached", "1", 71, 512 * 1024);
    let home = tempfile::tempdir().expect("home");
    let cache = home.path().join("airlock-cache");
    let bundle = home.path().join("c.tar.zst");
    let export = || {
        airlock_command(home.path())
            .args([
                "export",
                &format!("{}/src/cached:1", src.host()),
                "-o",
                &path_str(&bundle),
            ])
            .output()
            .expect("run airlock")
    };
    assert_success(&export(), "first export");
    let entries = files_below(&cache.join("blobs/sha256"));
    let big = entries
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a cached blob")
        .clone();
    let mut bytes = std::fs::read(&big).expect("read cache entry");
    bytes[1000] ^= 0x55;
    std::fs::write(&big, &bytes).expect("damage cache entry");
    // A temporary file of a process that is gone.
    let mut dead = Command::new("true").spawn().expect("spawn true");
    let dead_pid = dead.id();
    dead.wait().expect("wait true");
    let stale = cache
        .join("tmp")
        .join(format!("{}.{dead_pid}", "ab".repeat(32)));
    std::fs::write(&stale, b"half a blob").expect("write stale temp");

    let gets_before = src.access_log("GET", "/blobs/").len();
    let out = export();
    assert_success(&out, "export over a damaged cache entry");
    let fixed = std::fs::read(&big).expect("read cache entry again");
    let name = big.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(sha256_digest(&fixed), format!("sha256:{name}"));
    let gets = src.access_log("GET", "/blobs/")[gets_before..].to_vec();
    assert!(
        gets.iter().any(|g| g.contains(name)),
        "the damaged blob was not fetched again: {gets:#?}"
    );
    assert!(!stale.exists(), "a dead run's temporary file was left");
    let verify = run_airlock(["verify", &path_str(&bundle)], &[], None);
    assert_success(&verify, "verify");
    assert_eq!(
        read_bundle_json(&bundle)["images"][0]["digest"],
        digest.as_str()
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Free space
// ---------------------------------------------------------------------------------------------

/// Too little room at `-o` (a 1 MiB tmpfs for a 3 MiB image), or in the cache: exit 1 before
/// any blob is downloaded, saying how much is needed, how much is free, and where. Needs root
/// to mount a tmpfs (CI runs as root); elsewhere it says so and does nothing.
#[test]
fn export_checks_free_space_before_downloading() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let src = TestRegistry::start(RegistryOpts::plain());
    push_big_image(&src, "src/huge", "1", 81, 3 * 1024 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    let _disk = SmallDisk::mount(&small, "1m");
    let reference = format!("{}/src/huge:1", src.host());

    // The bundle does not fit.
    let out = run_airlock(
        [
            "export",
            &reference,
            "-o",
            &path_str(&small.join("b.tar.zst")),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains(&path_str(&small)) && err.contains("needs") && err.contains("free"),
        "{err}"
    );
    assert!(files_below(&small).is_empty(), "{:?}", files_below(&small));
    assert!(
        src.access_log("GET", "/blobs/").is_empty(),
        "nothing may be downloaded"
    );

    // The bundle fits, the cache does not.
    let cache = small.join("cache");
    let out = run_airlock(
        [
            "export",
            &reference,
            "-o",
            &path_str(&dir.path().join("b.tar.zst")),
        ],
        &[("AIRLOCK_CACHE_DIR", &path_str(&cache))],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains(&path_str(&cache)) && err.contains("needs") && err.contains("free"),
        "{err}"
    );
    assert!(!dir.path().join("b.tar.zst").exists());
    assert!(
        src.access_log("GET", "/blobs/").is_empty(),
        "nothing may be downloaded"
    );
}
