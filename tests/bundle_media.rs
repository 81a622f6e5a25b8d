//! Acceptance tests for issue 3, "Bundles fit for removable media": volumes and their checksum
//! file, broken volume sets, minisign signatures, reproducible bundles and hostile archives.
//! Everything goes through the real binary against real registries (tests/common).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A hostile or broken bundle must be refused quickly: no allocation or loop sized by what
/// the archive claims.
const QUICK: Duration = Duration::from_secs(20);
/// Address-space limit (KiB) for runs on hostile bundles: an allocation sized by a lying
/// header fails (and aborts the process) instead of succeeding lazily.
const ADDRESS_SPACE_KIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create tempdir")
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// `NAME.NNN`
fn volume(base: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n:03}", base.display()))
}

/// `NAME.SUFFIX`
fn beside(base: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", base.display()))
}

/// The volumes of `base` that exist, in order (stops at the first gap).
fn volumes_of(base: &Path) -> Vec<PathBuf> {
    (1..1000)
        .map(|n| volume(base, n))
        .take_while(|v| v.is_file())
        .collect()
}

/// Exports `images` (the text of an images file) into `out`; panics unless it succeeds.
fn export(images: &str, out: &Path, extra: &[&str], envs: &[(&str, &str)]) {
    let list = beside(out, "images.txt");
    fs::write(&list, images).expect("write images file");
    let mut args: Vec<OsString> = vec![
        "export".into(),
        "-f".into(),
        list.clone().into(),
        "-o".into(),
        out.into(),
        "--plain-http".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let o = run_airlock(&args, envs, None);
    assert_success(&o, &format!("export to {}", out.display()));
    fs::remove_file(&list).expect("remove images file");
}

fn import_args(bundle: &Path, target: &TestRegistry, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "import".into(),
        bundle.into(),
        "--registry".into(),
        target.host().into(),
        "--plain-http".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// One small image (Docker schema2, 4 blobs): a few KiB of bundle.
fn one_image(corpus: &Corpus, host: &str) -> String {
    corpus.images_file_where(host, |i| i.repo == "src/beta")
}

/// The target name (`repo:tag`) of every image in a bundle exported from `host`.
fn target_names(bundle: &airlock::bundle::Bundle, host: &str) -> Vec<String> {
    bundle
        .manifest
        .images
        .iter()
        .map(|i| {
            i.source
                .strip_prefix(&format!("{host}/"))
                .expect("source under the source registry")
                .to_string()
        })
        .collect()
}

/// OCI and Docker layer media types.
fn is_layer(media_type: &str) -> bool {
    media_type.contains("layer") || media_type.contains("rootfs")
}

fn open_bundle(p: &Path) -> airlock::bundle::Bundle {
    airlock::bundle::Bundle::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn flip_byte(file: &Path, at: u64) {
    let mut bytes = fs::read(file).expect("read file to corrupt");
    bytes[at as usize] ^= 0x55;
    fs::write(file, bytes).expect("write corrupted file");
}

fn sh(cwd: &Path, script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .expect("run sh")
}

/// Every file and directory below `dir` (to prove a run created nothing).
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// Runs airlock with `cwd` as working directory, under an address-space limit, killed after
/// 120 s. Returns the output and how long it took.
fn run_limited(cwd: &Path, args: &[OsString]) -> (Output, Duration) {
    let home = tempdir("airlock-test-home-");
    let base = airlock_command(home.path());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(airlock_bin())
        .args(args);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("MALLOC_ARENA_MAX", "2")
        .env("RUST_BACKTRACE", "0")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn airlock under sh");
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let out = Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    (out, elapsed)
}

/// A clean refusal: exit code 1 or 2 (not a signal, not a panic), quickly, with an error line
/// that names one of `names`.
/// `airlock verify BUNDLE --trusted-key KEY`.
fn verify_trusted(bundle: &Path, key: &Path) -> Vec<OsString> {
    vec![
        OsString::from("verify"),
        bundle.into(),
        "--trusted-key".into(),
        key.into(),
    ]
}

fn assert_refused(what: &str, out: &Output, elapsed: Duration, names: &[&str]) {
    let err = stderr_text(out);
    eprintln!("--- {what} ({elapsed:.1?}):\n{}", err.trim_end());
    assert!(
        elapsed < QUICK,
        "{what}: took {elapsed:?}\n{}",
        describe_output(out)
    );
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "{what}: expected exit 1 or 2\n{}",
        describe_output(out)
    );
    assert!(
        !err.contains("panicked")
            && !err.contains("memory allocation")
            && !err.contains("out of memory"),
        "{what}: crashed, or tried an allocation sized by the archive\n{}",
        describe_output(out)
    );
    assert!(
        err.contains("error"),
        "{what}: no error message\n{}",
        describe_output(out)
    );
    assert!(
        names.iter().any(|n| err.contains(n)),
        "{what}: the error names none of {names:?}\n{}",
        describe_output(out)
    );
}

/// A bundle.json member with new content (its header follows).
fn bundle_json_member(v: &serde_json::Value) -> Member {
    Member::regular(
        "bundle.json",
        serde_json::to_vec_pretty(v).expect("serialize bundle.json"),
    )
}

/// Exports the whole corpus from `src` into volumes of 16 KiB at `base` (the corpus is about
/// 50 KiB compressed: at least 3 of them); how many there are.
fn export_in_volumes(corpus: &Corpus, src: &TestRegistry, base: &Path) -> usize {
    export(
        &corpus.images_file(&src.host()),
        base,
        &["--split-size", "16K"],
        &[],
    );
    let n = volumes_of(base).len();
    assert!(n >= 3, "expected at least 3 volumes, got {n}");
    n
}

/// Every image of the corpus has at `dst` the digest it has at `src` (skopeo's word).
fn assert_same_digests(corpus: &Corpus, src: &TestRegistry, dst: &TestRegistry, after: &str) {
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(dst, &img.name()),
            skopeo_digest(src, &img.name()),
            "{} after {after}",
            img.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Volumes
// ---------------------------------------------------------------------------------------------

#[test]
fn split_bundle_is_volumes_with_checksums_and_imports_from_any_volume() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-");
    let base = dir.path().join("corpus.tar.zst");

    export_in_volumes(&corpus, &src, &base);
    assert!(
        !base.exists(),
        "{} must not exist when split",
        base.display()
    );
    let vols = volumes_of(&base);
    assert!(
        !volume(&base, vols.len() + 1).exists(),
        "a volume after a gap"
    );
    for (i, v) in vols.iter().enumerate() {
        let len = fs::metadata(v).expect("volume metadata").len();
        if i + 1 < vols.len() {
            assert_eq!(len, 16 * 1024, "{} is not exactly 16 KiB", v.display());
        } else {
            assert!(len > 0 && len <= 16 * 1024, "last volume holds {len} bytes");
        }
    }
    for leftover in tree(dir.path()) {
        assert!(
            !leftover.to_string_lossy().ends_with(".partial"),
            "{} left behind",
            leftover.display()
        );
    }

    // NAME.sha256 lists every volume, in order, and coreutils agrees with it.
    let sums = fs::read_to_string(beside(&base, "sha256")).expect("read NAME.sha256");
    let listed: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").expect("sha256sum line").1)
        .collect();
    let expected: Vec<String> = vols.iter().map(|v| file_name(v)).collect();
    assert_eq!(listed, expected, "NAME.sha256:\n{sums}");
    let check = sh(dir.path(), "sha256sum -c corpus.tar.zst.sha256");
    assert!(
        check.status.success(),
        "sha256sum -c: {}",
        describe_output(&check)
    );

    // The concatenation is a plain .tar.zst, bundle.json first.
    let listing = sh(dir.path(), "cat corpus.tar.zst.0* | zstd -d | tar -t");
    assert!(listing.status.success(), "{}", describe_output(&listing));
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names[..4],
        ["bundle.json", "oci-layout", "index.json", "manifest.json"],
        "{names:?}"
    );
    assert!(names[4..].iter().all(|n| n.starts_with("blobs/sha256/")));

    // verify and inspect take the base name or any volume.
    for given in [base.clone(), volume(&base, 2)] {
        let o = run_airlock([OsString::from("verify"), given.clone().into()], &[], None);
        assert_success(&o, &format!("verify {}", given.display()));
        assert!(
            stderr_text(&o).contains("all good"),
            "{}",
            describe_output(&o)
        );
    }
    let o = run_airlock(
        [OsString::from("inspect"), volume(&base, 1).into()],
        &[],
        None,
    );
    assert_success(&o, "inspect NAME.001");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains(&format!("volumes  {}", vols.len())),
        "{shown}"
    );
    for img in &corpus.images {
        assert!(shown.contains(&img.reference(&src.host())), "{shown}");
    }

    // Import from the third volume's name: every image arrives with its source digest.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let o = run_airlock(import_args(&volume(&base, 3), &dst, &[]), &[], None);
    assert_success(&o, "import NAME.003");
    assert_same_digests(&corpus, &src, &dst, "import");

    // Without --split-size: one file, and NAME.sha256 names it.
    let single = dir.path().join("single.tar.zst");
    export(&one_image(&corpus, &src.host()), &single, &[], &[]);
    assert!(single.is_file());
    assert!(!volume(&single, 1).exists());
    let sums = fs::read_to_string(beside(&single, "sha256")).expect("read single.sha256");
    assert_eq!(sums.lines().count(), 1, "{sums}");
    assert!(sums.ends_with("  single.tar.zst\n"), "{sums}");
    let check = sh(dir.path(), "sha256sum -c single.tar.zst.sha256");
    assert!(check.status.success(), "{}", describe_output(&check));
}

/// Media carried across by hand are often renamed (`arc-2026-11.tar.zst` for `bundle.tar.zst`),
/// and the checksum file with them, whose lines still name the volumes as export wrote them.
/// Such a bundle opens and imports (the checksum file no longer makes its volumes "missing"),
/// `verify` compares each volume against its line and says the names differ, and a volume
/// that no line stands for is said to be unchecked, never passed over in silence.
#[test]
fn a_renamed_bundle_is_checked_against_the_checksum_lines_of_its_old_name() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-renamed-");
    let pristine = dir.path().join("set.tar.zst");
    let n = export_in_volumes(&corpus, &src, &pristine);
    let single = dir.path().join("single.tar.zst");
    export(&one_image(&corpus, &src.host()), &single, &[], &[]);

    // Every file renamed, the checksum file's contents as export wrote them.
    let renamed = dir.path().join("media");
    fs::create_dir_all(&renamed).expect("mkdir");
    let rename = |from: &Path, to: &str| {
        fs::copy(from, renamed.join(to)).expect("copy");
    };
    for k in 1..=n {
        rename(
            &volume(&pristine, k),
            &format!("arc-2026-11.tar.zst.{k:03}"),
        );
    }
    rename(&beside(&pristine, "sha256"), "arc-2026-11.tar.zst.sha256");
    rename(&single, "one.tar.zst");
    rename(&beside(&single, "sha256"), "one.tar.zst.sha256");
    let base = renamed.join("arc-2026-11.tar.zst");
    let verify = |b: &Path| run_airlock([OsString::from("verify"), b.into()], &[], None);

    for (b, old) in [
        (&base, "set.tar.zst.002"),
        (&renamed.join("one.tar.zst"), "single.tar.zst"),
    ] {
        let o = verify(b);
        assert_success(&o, &format!("verify {}", b.display()));
        let err = stderr_text(&o);
        assert!(err.contains("all good"), "{}", describe_output(&o));
        assert!(
            err.contains(old) && err.contains("renamed"),
            "verify does not say the checksum file names the volume {old}\n{}",
            describe_output(&o)
        );
    }

    // And it imports under its new name, every image with its source digest.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let o = run_airlock(import_args(&volume(&base, 2), &dst, &[]), &[], None);
    assert_success(&o, "import of the renamed volumes");
    assert_same_digests(&corpus, &src, &dst, "import of the renamed volumes");

    // The line that stands for .002 is compared: a wrong one fails, naming the volume.
    let sums = renamed.join("arc-2026-11.tar.zst.sha256");
    let text = fs::read_to_string(&sums).expect("read sums");
    let wrong: String = text
        .lines()
        .map(|l| {
            let (h, name) = l.split_once("  ").expect("sha256sum line");
            if name.ends_with(".002") {
                let flipped = if h.starts_with('0') { "1" } else { "0" };
                format!("{flipped}{}  {name}\n", &h[1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&sums, wrong).expect("write sums");
    let o = verify(&base);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    let err = stderr_text(&o);
    assert!(
        err.contains("arc-2026-11.tar.zst.002") && err.contains("does not match"),
        "{}",
        describe_output(&o)
    );

    // A checksum file that lists the first volumes only: the others are said to be unchecked.
    let short: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    fs::write(&sums, short).expect("write sums");
    let o = verify(&base);
    assert_success(&o, "verify with a short checksum file");
    let err = stderr_text(&o);
    for k in 3..=n {
        assert!(
            err.contains(&format!("arc-2026-11.tar.zst.{k:03} is not listed")),
            "volume {k} passed over in silence\n{}",
            describe_output(&o)
        );
    }
    assert!(
        !err.contains("arc-2026-11.tar.zst.002 is not listed"),
        "{err}"
    );
}

/// `airlock import /media/usb`: the directory the media mounted on, not the bundle in it. Each
/// command says so and names the bundles there (a single file, and volumes by their base
/// name), or that there are none; nothing is pushed.
#[test]
fn a_directory_given_for_a_bundle_names_the_bundles_in_it() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-dir-");
    let usb = dir.path().join("usb");
    fs::create_dir_all(&usb).expect("mkdir");
    export_in_volumes(&corpus, &src, &usb.join("arc-2026-11.tar.zst"));
    export(
        &one_image(&corpus, &src.host()),
        &usb.join("tools.tar.zst"),
        &[],
        &[],
    );
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).expect("mkdir");
    let dst = TestRegistry::start(RegistryOpts::plain());

    for (given, says) in [
        (
            &usb,
            vec![
                "is a directory".to_string(),
                usb.join("arc-2026-11.tar.zst").display().to_string(),
                usb.join("tools.tar.zst").display().to_string(),
            ],
        ),
        (&empty, vec!["holds no bundle".to_string()]),
    ] {
        for args in [
            vec![OsString::from("verify"), given.into()],
            vec![OsString::from("inspect"), given.into()],
            import_args(given, &dst, &[]),
        ] {
            let o = run_airlock(args.clone(), &[], None);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{args:?}\n{}",
                describe_output(&o)
            );
            let err = stderr_text(&o);
            for s in &says {
                assert!(
                    err.contains(s.as_str()),
                    "{args:?}: no {s:?}\n{}",
                    describe_output(&o)
                );
            }
            assert!(
                !err.contains("tar.zst.001") && !err.contains(".sha256"),
                "a volume or checksum file offered as a bundle\n{err}"
            );
        }
    }
    assert!(dst.catalog().is_empty(), "{:?}", dst.catalog());
}

// ---------------------------------------------------------------------------------------------
// 2. Broken volume sets
// ---------------------------------------------------------------------------------------------

/// Copies the volumes and checksum file of `base` into a new directory.
fn copy_set(base: &Path, into: &Path) -> PathBuf {
    fs::create_dir_all(into).expect("mkdir");
    for v in volumes_of(base).into_iter().chain([beside(base, "sha256")]) {
        fs::copy(&v, into.join(v.file_name().expect("name"))).expect("copy volume");
    }
    into.join(base.file_name().expect("name"))
}

/// A split size that would take more than 999 volumes (what readers look for, NAME.001 to
/// NAME.999) fails the export saying so, and leaves nothing behind; 1,109 unreadable volumes
/// were written before.
#[test]
fn a_split_into_more_than_999_volumes_is_refused_and_leaves_nothing() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-");
    let base = dir.path().join("tiny.tar.zst");
    let list = dir.path().join("images.txt");
    fs::write(&list, corpus.images_file(&src.host())).expect("write images file");
    let o = run_airlock(
        [
            OsString::from("export"),
            "-f".into(),
            list.clone().into(),
            "-o".into(),
            base.clone().into(),
            "--plain-http".into(),
            "--split-size".into(),
            "16".into(),
        ],
        &[],
        None,
    );
    assert_ne!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("more than 999 volumes"),
        "{}",
        describe_output(&o)
    );
    let left: Vec<_> = fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "images.txt")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A checksum file that is no listing (here a sparse GiB) is not read whole: verify says it
/// cannot use it, and checks the bundle all the same.
#[test]
fn a_checksum_file_of_a_gigabyte_is_not_read_whole() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-");
    let base = dir.path().join("b.tar.zst");
    export(&corpus.images_file(&src.host()), &base, &[], &[]);
    let sums = dir.path().join("b.tar.zst.sha256");
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&sums)
        .and_then(|f| f.set_len(1 << 30))
        .expect("a sparse GiB");
    let o = run_airlock([OsString::from("verify"), base.clone().into()], &[], None);
    assert_success(&o, "verify beside a GiB checksum file");
    assert!(
        stderr_text(&o).contains("is not a checksum listing airlock can use"),
        "{}",
        describe_output(&o)
    );
}

/// A byte damaged in the second volume: import refuses the bundle naming that volume (it
/// does not match its line in the .sha256), as verify does, whatever part of the archive
/// the byte was in.
#[test]
fn import_names_the_damaged_volume() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-");
    let base = dir.path().join("v.tar.zst");
    export(
        &one_image(&corpus, &src.host()),
        &base,
        &["--split-size", "2K"],
        &[],
    );
    let second = volume(&base, 2);
    let mut bytes = fs::read(&second).expect("read volume 2");
    bytes[452] ^= 0x20;
    fs::write(&second, &bytes).expect("write volume 2");
    let target = TestRegistry::start(RegistryOpts::plain());
    let o = run_airlock(import_args(&base, &target, &[]), &[], None);
    assert_ne!(o.status.code(), Some(0), "{}", describe_output(&o));
    let name = second
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        stderr_text(&o).contains(&name),
        "the error does not name {name}: {}",
        describe_output(&o)
    );
}

/// Bytes no digest covers are checked too: text in the tar padding after a member, and a
/// header (`../evil`, which `tar -t` lists) in the second end-of-archive block, each make
/// verify fail; the same bundle written back as it was passes.
#[test]
fn verify_refuses_bytes_hidden_where_the_tar_format_has_zeros() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-");
    let base = dir.path().join("b.tar.zst");
    export(&one_image(&corpus, &src.host()), &base, &[], &[]);
    let members = read_members(&base);
    let rewrite = |name: &str, padding: Option<&[u8]>, end: Vec<u8>| -> Output {
        let out = dir.path().join(name);
        let mut frames: Vec<Box<dyn Read>> = Vec::new();
        let mut hidden = padding;
        for m in &members {
            let mut bytes = m.tar_bytes();
            let used = 512 + m.data.len();
            if let Some(text) = hidden.filter(|t| bytes.len() - used >= t.len()) {
                bytes[used..used + text.len()].copy_from_slice(text);
                hidden = None;
            }
            frames.push(in_frame(bytes));
        }
        assert!(hidden.is_none(), "no member with room in its padding");
        frames.push(in_frame(end));
        write_frames(&out, frames);
        run_airlock([OsString::from("verify"), out.into()], &[], None)
    };
    let o = rewrite("same.tar.zst", None, vec![0; 1024]);
    assert_success(&o, "verify of the bundle written back as it was");
    let o = rewrite("padded.tar.zst", Some(b"hidden text"), vec![0; 1024]);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("tar padding"),
        "{}",
        describe_output(&o)
    );
    let mut end = vec![0; 512];
    end.extend_from_slice(Member::regular("../evil", b"x".to_vec()).header.as_bytes());
    let o = rewrite("evil.tar.zst", None, end);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("after the archive's end-of-archive block"),
        "{}",
        describe_output(&o)
    );
}

#[test]
fn broken_volume_sets_are_refused_naming_the_volume() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-broken-");
    let pristine = dir.path().join("pristine").join("set.tar.zst");
    fs::create_dir_all(pristine.parent().expect("parent")).expect("mkdir");
    let n = export_in_volumes(&corpus, &src, &pristine);
    let dst = TestRegistry::start(RegistryOpts::plain());

    let refuses_everything = |case: &str, base: &Path, names: &[&str]| {
        for args in [
            vec![OsString::from("verify"), base.into()],
            vec![OsString::from("inspect"), base.into()],
            import_args(base, &dst, &[]),
        ] {
            let what = format!("{case}: {:?}", args[0]);
            let (o, t) = run_limited(dir.path(), &args);
            assert_refused(&what, &o, t, names);
        }
        assert!(dst.catalog().is_empty(), "{case}: {:?}", dst.catalog());
    };

    // A missing middle volume.
    let base = copy_set(&pristine, &dir.path().join("missing"));
    fs::remove_file(volume(&base, 2)).expect("remove .002");
    refuses_everything("missing .002", &base, &["set.tar.zst.002"]);
    // Also when the volume given is one after the gap.
    let (o, t) = run_limited(
        dir.path(),
        &[OsString::from("verify"), volume(&base, 3).into()],
    );
    assert_refused("missing .002, verify .003", &o, t, &["set.tar.zst.002"]);

    // Swapped volumes.
    let base = copy_set(&pristine, &dir.path().join("swapped"));
    let (one, two) = (
        fs::read(volume(&base, 1)).expect("read"),
        fs::read(volume(&base, 2)).expect("read"),
    );
    fs::write(volume(&base, 1), two).expect("write");
    fs::write(volume(&base, 2), one).expect("write");
    refuses_everything(
        "swapped .001/.002",
        &base,
        &["set.tar.zst.001", "set.tar.zst.002"],
    );

    // A short last volume.
    let base = copy_set(&pristine, &dir.path().join("short"));
    let last = volume(&base, n);
    let len = fs::metadata(&last).expect("metadata").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open last volume")
        .set_len(len / 2)
        .expect("truncate");
    refuses_everything("short last volume", &base, &[&file_name(&last)]);

    // One flipped byte in the middle of .002, inside a layer's compressed frame.
    let base = copy_set(&pristine, &dir.path().join("corrupt"));
    let b = open_bundle(&base);
    let first_len = fs::metadata(volume(&base, 1)).expect("metadata").len();
    let second_len = fs::metadata(volume(&base, 2)).expect("metadata").len();
    let st = b.seek_table();
    // The frame around the middle of .002, or the next one that is a layer inside .002.
    let mut frame = st.frame_index_comp(first_len + second_len / 2);
    let (digest, at) = loop {
        let d_start = st.frame_start_decomp(frame).expect("frame start");
        let c_start = st.frame_start_comp(frame).expect("frame start");
        let c_end = st.frame_end_comp(frame).expect("frame end");
        assert!(
            c_end <= first_len + second_len,
            "no layer frame inside .002"
        );
        let member = b
            .members()
            .find(|m| m.header == d_start)
            .expect("each frame starts a member");
        let blob = b
            .manifest
            .blobs
            .iter()
            .find(|x| x.digest.layout_path() == member.name);
        if let Some(blob) = blob.filter(|x| is_layer(&x.media_type)) {
            break (blob.digest.to_string(), (c_start + c_end) / 2);
        }
        frame += 1;
    };
    flip_byte(&volume(&base, 2), at - first_len);
    let (o, t) = run_limited(dir.path(), &[OsString::from("verify"), base.clone().into()]);
    assert_refused("corrupt .002: verify", &o, t, &["set.tar.zst.002"]);
    let affected: Vec<String> = b
        .manifest
        .images
        .iter()
        .zip(target_names(&b, &src.host()))
        .filter(|(i, _)| i.blobs.iter().any(|d| d.to_string() == digest))
        .map(|(_, name)| name)
        .collect();
    assert!(!affected.is_empty());
    let (o, t) = run_limited(dir.path(), &import_args(&base, &dst, &[]));
    assert_refused("corrupt .002: import", &o, t, &[&digest]);
    assert!(
        stderr_text(&o).contains("set.tar.zst.002"),
        "the import error does not name the volume holding the blob\n{}",
        describe_output(&o)
    );
    for name in &affected {
        assert!(
            !skopeo_exists(&dst, name),
            "{name} was tagged although its layer {digest} is corrupt"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Signatures
// ---------------------------------------------------------------------------------------------

fn keygen(prefix: &Path, password: Option<&str>) -> Output {
    let mut args = vec![OsString::from("keygen"), "-o".into(), prefix.into()];
    let envs: Vec<(&str, &str)> = match password {
        Some(p) => vec![("AIRLOCK_KEY_PASSWORD", p)],
        None => {
            args.push("--no-password".into());
            vec![]
        }
    };
    run_airlock(&args, &envs, None)
}

/// The secret key is never left readable by others: `keygen --force` over a key file of mode
/// 0644 writes a new file of mode 0600, and a link where the key goes (even one pointing
/// nowhere) is refused without --force and replaced, not followed, with it.
#[test]
fn keygen_writes_the_secret_key_only_to_a_new_file_of_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("airlock-keys-");
    let prefix = dir.path().join("k");
    let key = dir.path().join("k.key");
    fs::write(&key, b"old").expect("write");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut args = vec![OsString::from("keygen"), "-o".into(), prefix.clone().into()];
    args.extend(["--no-password".into(), "--force".into()]);
    let o = run_airlock(&args, &[], None);
    assert_success(&o, "keygen --force");
    let mode = fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key's mode is {mode:o}");

    let linked = dir.path().join("l");
    let target = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.path().join("l.key")).expect("symlink");
    let o = keygen(&linked, None);
    assert_eq!(o.status.code(), Some(2), "{}", describe_output(&o));
    assert!(!target.exists(), "the key went through the link");
    let mut args = vec![OsString::from("keygen"), "-o".into(), linked.clone().into()];
    args.extend(["--no-password".into(), "--force".into()]);
    let o = run_airlock(&args, &[], None);
    assert_success(&o, "keygen --force over a link");
    assert!(!target.exists(), "the key went through the link");
    let meta = fs::symlink_metadata(dir.path().join("l.key")).expect("key");
    assert!(
        meta.file_type().is_file(),
        "the link was not replaced by a file"
    );
}

#[test]
fn signed_bundles_verify_with_airlock_and_minisign_and_tampering_is_refused() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-sign-");
    let d = dir.path();
    let images = corpus.images_file_where(&src.host(), |i| i.repo == "src/alpha");

    let o = keygen(&d.join("k"), None);
    assert_success(&o, "keygen");
    assert!(d.join("k.key").is_file() && d.join("k.pub").is_file());
    let o = keygen(&d.join("k"), None);
    assert_eq!(o.status.code(), Some(2), "keygen over existing keys");

    let signed = d.join("signed.tar.zst");
    let key = d.join("k.key").display().to_string();
    export(&images, &signed, &["--sign", &key], &[]);
    let sig = beside(&signed, "minisig");
    assert!(sig.is_file(), "no {}", sig.display());

    let pubkey = d.join("k.pub");
    let o = run_airlock(
        [
            OsString::from("verify"),
            signed.clone().into(),
            "--trusted-key".into(),
            pubkey.clone().into(),
        ],
        &[],
        None,
    );
    assert_success(&o, "verify --trusted-key");
    assert!(
        stderr_text(&o).contains("signature"),
        "{}",
        describe_output(&o)
    );

    // The minisign CLI agrees: the signature covers bundle.json's bytes.
    let o = sh(
        d,
        "zstd -dc signed.tar.zst | tar -xO bundle.json > bundle.json && \
         minisign -Vm bundle.json -x signed.tar.zst.minisig -p k.pub",
    );
    assert!(o.status.success(), "minisign -V: {}", describe_output(&o));

    let dst = TestRegistry::start(RegistryOpts::plain());
    let refused = |what: &str, bundle: &Path, names: &[&str]| {
        let (o, t) = run_limited(d, &verify_trusted(bundle, &pubkey));
        assert_refused(&format!("{what}: verify"), &o, t, names);
        let (o, t) = run_limited(
            d,
            &import_args(
                bundle,
                &dst,
                &["--trusted-key", &pubkey.display().to_string()],
            ),
        );
        assert_refused(&format!("{what}: import"), &o, t, names);
        assert!(
            dst.catalog().is_empty(),
            "{what}: import pushed {:?}",
            dst.catalog()
        );
    };

    // An unsigned bundle.
    let unsigned = d.join("unsigned.tar.zst");
    export(&images, &unsigned, &[], &[]);
    assert!(!beside(&unsigned, "minisig").exists());
    refused("unsigned", &unsigned, &["not signed"]);

    // Signed by another key.
    assert_success(&keygen(&d.join("other"), None), "keygen other");
    let other = d.join("other.tar.zst");
    let other_key = d.join("other.key").display().to_string();
    export(&images, &other, &["--sign", &other_key], &[]);
    refused("other key", &other, &["not by the trusted key"]);

    // A legacy minisign signature (of bundle.json's bytes themselves, not of their hash) by
    // the trusted key: refused, before bundle.json is read whole to check it.
    let legacy = d.join("legacy.tar.zst");
    fs::copy(&signed, &legacy).expect("copy");
    let o = sh(
        d,
        "zstd -dc legacy.tar.zst | tar -xO bundle.json > legacy.json && \
         minisign -S -l -s k.key -m legacy.json -x legacy.tar.zst.minisig </dev/null && \
         minisign -Vm legacy.json -x legacy.tar.zst.minisig -p k.pub",
    );
    assert!(
        o.status.success(),
        "minisign -S -l: {}",
        describe_output(&o)
    );
    refused("legacy signature", &legacy, &["legacy"]);

    // A layer's compressed bytes changed after signing (bundle.json and signature intact).
    let flipped = d.join("flipped.tar.zst");
    fs::copy(&signed, &flipped).expect("copy");
    fs::copy(&sig, beside(&flipped, "minisig")).expect("copy");
    let b = open_bundle(&flipped);
    let layer = b
        .manifest
        .blobs
        .iter()
        .find(|x| is_layer(&x.media_type))
        .expect("a layer");
    let m = b
        .members()
        .find(|m| m.name == layer.digest.layout_path())
        .expect("layer member");
    let st = b.seek_table();
    let frame = st.frame_index_decomp(m.header);
    let at =
        (st.frame_start_comp(frame).expect("start") + st.frame_end_comp(frame).expect("end")) / 2;
    flip_byte(&flipped, at);
    // Import reads the bundle once, checking each blob as it streams (issue 9): the damaged
    // layer fails the images holding it, which get no tag, and is never committed; images
    // that do not share it may be pushed.
    let holders: Vec<(String, String)> = b
        .manifest
        .images
        .iter()
        .filter(|i| i.blobs.contains(&layer.digest))
        .map(|i| {
            let name = i
                .source
                .strip_prefix(&format!("{}/", src.host()))
                .expect("source under the source registry");
            let (repo, tag) = name.rsplit_once(':').expect("repo:tag");
            (repo.to_string(), tag.to_string())
        })
        .collect();
    assert!(!holders.is_empty());
    let layer_refused = |what: &str, bundle: &Path, names: &[&str]| {
        let (o, t) = run_limited(d, &verify_trusted(bundle, &pubkey));
        assert_refused(&format!("{what}: verify"), &o, t, names);
        let dst = TestRegistry::start(RegistryOpts::plain());
        let (o, t) = run_limited(
            d,
            &import_args(
                bundle,
                &dst,
                &["--trusted-key", &pubkey.display().to_string()],
            ),
        );
        assert_refused(
            &format!("{what}: import"),
            &o,
            t,
            &[layer.digest.text().as_str()],
        );
        for repo in dst.catalog() {
            assert!(
                !dst.blob_exists(&repo, layer.digest.text().as_str()),
                "{what}: the damaged layer was committed in {repo}"
            );
        }
        for (repo, tag) in &holders {
            assert!(
                !dst.tags(repo).contains(tag),
                "{what}: {repo}:{tag} holds the damaged layer and was tagged"
            );
        }
    };
    layer_refused("flipped layer byte", &flipped, &["flipped.tar.zst"]);

    // A layer's content changed after signing, re-compressed into a valid archive: only its
    // digest (named by the signed bundle.json) can tell.
    let altered = d.join("altered.tar.zst");
    let mut members = read_members(&signed);
    let target = members
        .iter_mut()
        .find(|m| m.name() == layer.digest.layout_path())
        .expect("layer member");
    let mid = target.data.len() / 2;
    target.data[mid] ^= 1;
    write_bundle(&altered, &members);
    fs::copy(&sig, beside(&altered, "minisig")).expect("copy");
    layer_refused("altered layer", &altered, &[layer.digest.text().as_str()]);

    // A frame spliced in after the first blob and hidden from the seek table (merged into that
    // blob's entry): random access never sees it, a sequential reader does. It is a GNU
    // long-name header announcing ~1 GiB of name, which a tar reader that applies extensions
    // would read into memory.
    let spliced = d.join("spliced.tar.zst");
    let members = read_members(&signed);
    let bomb_size = (1u64 << 30) - 4096;
    let mut bomb = Member::regular("././@LongLink", vec![]);
    bomb.header.set_entry_type(tar::EntryType::GNULongName);
    bomb.header.set_size(bomb_size);
    bomb.header.set_cksum();
    let mut frames: Vec<Box<dyn Read>> = members.iter().map(|m| in_frame(m.tar_bytes())).collect();
    frames.insert(
        4,
        Box::new(
            std::io::Cursor::new(bomb.header.as_bytes().to_vec())
                .chain(std::io::repeat(0).take(bomb_size)),
        ),
    );
    frames.push(in_frame(vec![0; 1024]));
    let ranges = write_frames(&spliced, frames);
    edit_seek_table(&spliced, |e| {
        let (blob, hidden) = (ranges[3].clone(), ranges[4].clone());
        let c: u32 = e[blob.start..hidden.end].iter().map(|x| x.0).sum();
        let d: u32 = e[blob.clone()].iter().map(|x| x.1).sum();
        e.splice(blob.start..hidden.end, [(c, d)]);
    });
    fs::copy(&sig, beside(&spliced, "minisig")).expect("copy");
    // verify reads the whole archive in sequence and refuses it. import reads members through
    // the seek table only (one pass, issue 9): the hidden frame is never read, and what it
    // pushes is exactly what the signed bundle.json names, each blob checked as it streams.
    let verify = vec![
        OsString::from("verify"),
        spliced.clone().into(),
        "--trusted-key".into(),
        pubkey.clone().into(),
    ];
    let (o, t) = run_limited(d, &verify);
    assert_refused("spliced frame: verify", &o, t, &["spliced.tar.zst"]);
    let spliced_dst = TestRegistry::start(RegistryOpts::plain());
    let (o, t) = run_limited(
        d,
        &import_args(
            &spliced,
            &spliced_dst,
            &["--trusted-key", &pubkey.display().to_string()],
        ),
    );
    assert!(t < QUICK, "spliced frame: import took {t:?}");
    assert_success(&o, "spliced frame: import");
    for img in corpus.images.iter().filter(|i| i.repo == "src/alpha") {
        assert_eq!(
            skopeo_digest(&spliced_dst, &img.name()),
            img.digest,
            "{}",
            img.name()
        );
    }

    // An encrypted secret key: the password comes from AIRLOCK_KEY_PASSWORD.
    let start = Instant::now();
    assert_success(
        &keygen(&d.join("enc"), Some("correct horse")),
        "keygen with password",
    );
    let keygen_time = start.elapsed();
    let enc_key = d.join("enc.key").display().to_string();
    let enc_bundle = d.join("enc.tar.zst");
    export(
        &images,
        &enc_bundle,
        &["--sign", &enc_key],
        &[("AIRLOCK_KEY_PASSWORD", "correct horse")],
    );
    let o = run_airlock(
        [
            OsString::from("verify"),
            enc_bundle.clone().into(),
            "--trusted-key".into(),
            d.join("enc.pub").into(),
        ],
        &[],
        None,
    );
    assert_success(&o, "verify bundle signed with the encrypted key");
    let wrong = d.join("wrong.tar.zst");
    fs::write(d.join("list.txt"), &images).expect("write");
    let o = run_airlock(
        [
            OsString::from("export"),
            "-f".into(),
            d.join("list.txt").into(),
            "-o".into(),
            wrong.clone().into(),
            "--plain-http".into(),
            "--sign".into(),
            enc_key.clone().into(),
        ],
        &[("AIRLOCK_KEY_PASSWORD", "wrong horse")],
        None,
    );
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "{}",
        describe_output(&o)
    );
    assert!(
        stderr_text(&o).contains("enc.key"),
        "{}",
        describe_output(&o)
    );
    assert!(!wrong.exists() && !beside(&wrong, "minisig").exists());
    // Without the variable and without a terminal, signing cannot ask: a usage error.
    let o = run_airlock(
        [
            OsString::from("export"),
            "-f".into(),
            d.join("list.txt").into(),
            "-o".into(),
            wrong.clone().into(),
            "--plain-http".into(),
            "--sign".into(),
            enc_key.into(),
        ],
        &[],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", describe_output(&o));
    assert!(
        stderr_text(&o).contains("AIRLOCK_KEY_PASSWORD"),
        "{}",
        describe_output(&o)
    );
    eprintln!("keygen with a password took {keygen_time:?}");
}

/// Issue 9: `import --trusted-key` reads the bundle once. The signature over bundle.json and
/// the seek table's agreement with it are checked first; then every blob is checked against
/// its digest as it streams. A tampered layer fails the images holding it: the layer is never
/// committed, no tag of those images is written, and images that do not share it are pushed.
/// A bundle.json changed after signing pushes nothing.
#[test]
fn signed_import_checks_every_blob_as_it_streams() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let c = src.client();
    let platform = Platform::linux_amd64();
    // `la` is a gzip layer (stored raw in the bundle), held by two images of signed/a.
    let la = random_layer(91, 300_000, true);
    let la2 = random_layer(92, 50_000, false);
    let lb = random_layer(93, 200_000, false);
    c.push_image(
        "signed/a",
        Some("1"),
        ImageFormat::Oci,
        &platform,
        std::slice::from_ref(&la),
        &[],
    );
    c.push_image(
        "signed/a",
        Some("2"),
        ImageFormat::Oci,
        &platform,
        &[la.clone(), la2],
        &[],
    );
    let b1 = c.push_image(
        "signed/b",
        Some("1"),
        ImageFormat::Oci,
        &platform,
        &[lb],
        &[],
    );
    let dir = tempdir("airlock-media-onepass-");
    let d = dir.path();
    assert_success(&keygen(&d.join("k"), None), "keygen");
    let key = d.join("k.key").display().to_string();
    let pubkey = d.join("k.pub").display().to_string();
    let images = format!(
        "{h}/signed/a:1\n{h}/signed/a:2\n{h}/signed/b:1\n",
        h = src.host()
    );
    let signed = d.join("signed.tar.zst");
    export(&images, &signed, &["--sign", &key], &[]);
    let sig = beside(&signed, "minisig");

    // Untampered: imports whole.
    let dst = TestRegistry::start(RegistryOpts::plain());
    let o = run_airlock(
        import_args(&signed, &dst, &["--trusted-key", &pubkey]),
        &[],
        None,
    );
    assert_success(&o, "signed import");
    assert_eq!(dst.tags("signed/a"), vec!["1", "2"]);
    assert_eq!(skopeo_digest(&dst, "signed/b:1"), b1.digest);

    let tampered_fails_only_its_images = |what: &str, bundle: &Path| {
        fs::copy(&sig, beside(bundle, "minisig")).expect("copy signature");
        let dst = TestRegistry::start(RegistryOpts::plain());
        let (o, t) = run_limited(d, &import_args(bundle, &dst, &["--trusted-key", &pubkey]));
        assert_refused(what, &o, t, &[la.digest().as_str()]);
        assert!(
            !dst.blob_exists("signed/a", &la.digest()),
            "{what}: the tampered layer was committed"
        );
        assert!(
            dst.tags("signed/a").is_empty(),
            "{what}: a tag of an image holding the tampered layer was written: {:?}",
            dst.tags("signed/a")
        );
        assert_eq!(dst.tags("signed/b"), vec!["1"], "{what}");
        assert_eq!(skopeo_digest(&dst, "signed/b:1"), b1.digest, "{what}");
        // verify still reads everything and refuses it.
        let verify = vec![
            OsString::from("verify"),
            bundle.into(),
            "--trusted-key".into(),
            pubkey.clone().into(),
        ];
        let (o, t) = run_limited(d, &verify);
        assert_refused(
            &format!("{what}: verify"),
            &o,
            t,
            &[bundle.to_str().expect("utf8"), la.digest().as_str()],
        );
    };

    // The layer's content changed and re-compressed into a valid archive: the frame
    // checksums agree, only the digest named by the signed bundle.json can tell.
    let altered = d.join("altered.tar.zst");
    let mut members = read_members(&signed);
    let layer_name = format!("blobs/sha256/{}", &la.digest()[7..]);
    let m = members
        .iter_mut()
        .find(|m| m.name() == layer_name)
        .expect("layer member");
    let mid = m.data.len() / 2;
    m.data[mid] ^= 1;
    write_bundle(&altered, &members);
    tampered_fails_only_its_images("altered layer", &altered);

    // One byte of the stored layer flipped in place: its frame's checksum fails.
    let flipped = d.join("flipped.tar.zst");
    fs::copy(&signed, &flipped).expect("copy");
    let b = open_bundle(&flipped);
    let m = b
        .members()
        .find(|m| m.name == layer_name)
        .expect("layer member");
    let st = b.seek_table();
    let frame = st.frame_index_decomp(m.header);
    assert_eq!(
        st.frame_size_comp(frame).expect("size"),
        st.frame_size_decomp(frame).expect("size") + 6 + 4 + 3 * 3,
        "the gzip layer's frame is stored: its size plus header, block headers and checksum"
    );
    flip_byte(
        &flipped,
        st.frame_start_comp(frame).expect("start") + 512 + 1000,
    );
    tampered_fails_only_its_images("flipped stored byte", &flipped);

    // bundle.json changed after signing: the signature fails and nothing is pushed.
    let edited = d.join("edited.tar.zst");
    let mut members = read_members(&signed);
    let mut v: serde_json::Value = serde_json::from_slice(&members[0].data).expect("bundle.json");
    v["images"][0]["tag"] = serde_json::json!("evil");
    members[0] = bundle_json_member(&v);
    write_bundle(&edited, &members);
    fs::copy(&sig, beside(&edited, "minisig")).expect("copy signature");
    let dst = TestRegistry::start(RegistryOpts::plain());
    let (o, t) = run_limited(d, &import_args(&edited, &dst, &["--trusted-key", &pubkey]));
    assert_refused("edited bundle.json", &o, t, &["signature"]);
    assert!(dst.catalog().is_empty(), "pushed {:?}", dst.catalog());
}

// ---------------------------------------------------------------------------------------------
// 4. Reproducible
// ---------------------------------------------------------------------------------------------

#[test]
fn same_images_and_source_date_epoch_give_identical_bundles() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-repro-");
    let images = corpus.images_file(&src.host());
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let mut outputs = Vec::new();
    for run in ["one", "two"] {
        let out = dir.path().join(run).join("corpus.tar.zst");
        fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
        // Separate runs, each with a fresh cache (run_airlock gives each its own HOME).
        export(&images, &out, &[], &epoch);
        outputs.push(out);
    }
    let (a, b) = (&outputs[0], &outputs[1]);
    let (bytes_a, bytes_b) = (fs::read(a).expect("read"), fs::read(b).expect("read"));
    assert!(
        bytes_a == bytes_b,
        "the two bundles differ ({} and {} bytes)",
        bytes_a.len(),
        bytes_b.len()
    );
    assert_eq!(
        fs::read(beside(a, "sha256")).expect("read"),
        fs::read(beside(b, "sha256")).expect("read")
    );

    let bundle = open_bundle(a);
    assert_eq!(bundle.manifest.created, "2023-11-14T22:13:20Z");
    for m in read_members(a) {
        let h = &m.header;
        assert_eq!(h.mtime().expect("mtime"), 1_700_000_000, "{}", m.name());
        assert_eq!(h.mode().expect("mode"), 0o644, "{}", m.name());
        assert_eq!(
            (h.uid().expect("uid"), h.gid().expect("gid")),
            (0, 0),
            "{}",
            m.name()
        );
    }

    // A different epoch changes the bytes (the test above could not pass by accident).
    let other = dir.path().join("three").join("corpus.tar.zst");
    fs::create_dir_all(other.parent().expect("parent")).expect("mkdir");
    export(&images, &other, &[], &[("SOURCE_DATE_EPOCH", "1700000001")]);
    assert_ne!(fs::read(&other).expect("read"), bytes_a);
}

// ---------------------------------------------------------------------------------------------
// 5. Hostile bundles
// ---------------------------------------------------------------------------------------------

/// A hostile case: where its files are, and what the error may name.
struct Case {
    name: &'static str,
    root: PathBuf,
    bundle: PathBuf,
    names: Vec<String>,
}

#[test]
fn hostile_bundles_are_refused_without_writing_or_pushing_anything() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempdir("airlock-media-hostile-");
    let valid = dir.path().join("valid.tar.zst");
    export(&one_image(&corpus, &src.host()), &valid, &[], &[]);
    let members = read_members(&valid);
    assert_eq!(
        members.len(),
        8,
        "bundle.json, oci-layout, index.json, manifest.json, 4 blobs"
    );
    let bj: serde_json::Value = serde_json::from_slice(&members[0].data).expect("bundle.json");
    let layer_idx = members
        .iter()
        .position(|m| {
            bj["blobs"].as_array().expect("blobs").iter().any(|b| {
                is_layer(b["mediaType"].as_str().unwrap_or(""))
                    && m.name()
                        == format!(
                            "blobs/sha256/{}",
                            &b["digest"].as_str().expect("digest")[7..]
                        )
            })
        })
        .expect("a layer member");
    let layer_name = members[layer_idx].name();
    let layer_digest = format!("sha256:{}", &layer_name["blobs/sha256/".len()..]);
    let target = TestRegistry::start(RegistryOpts::plain());

    let new_case = |name: &'static str| -> Case {
        let root = dir.path().join(name);
        fs::create_dir_all(root.join("bundle")).expect("mkdir");
        fs::create_dir_all(root.join("work")).expect("mkdir");
        let bundle = root.join("bundle").join(format!("{name}.tar.zst"));
        Case {
            name,
            root,
            names: vec![format!("{name}.tar.zst")],
            bundle,
        }
    };
    let mut cases: Vec<Case> = Vec::new();

    // Sanity: the crafting helpers rebuild a bundle that airlock accepts.
    let rebuilt = new_case("rebuilt");
    write_bundle(&rebuilt.bundle, &members);
    let o = run_airlock(
        [OsString::from("verify"), rebuilt.bundle.clone().into()],
        &[],
        None,
    );
    assert_success(&o, "verify the rebuilt valid bundle");

    // Names that leave the directory, in place of a layer (same size and content).
    for (name, member_name) in [
        ("dotdot", "../evil".to_string()),
        (
            "absolute",
            dir.path()
                .join("absolute")
                .join("evil-abs")
                .display()
                .to_string(),
        ),
    ] {
        let c = new_case(name);
        let mut m = members.clone();
        m[layer_idx].set_raw_name(&member_name);
        write_bundle(&c.bundle, &m);
        cases.push(c);
    }

    // An extra member `../evil` after the ones bundle.json lists.
    let c = new_case("extra");
    let mut m = members.clone();
    m.push(Member::regular("../evil", b"evil\n".to_vec()));
    write_bundle(&c.bundle, &m);
    cases.push(c);

    // Links and devices in place of a layer, keeping its name and size.
    for (name, kind, link) in [
        ("symlink", tar::EntryType::Symlink, "../evil"),
        ("hardlink", tar::EntryType::Link, "bundle.json"),
        ("chardev", tar::EntryType::Char, ""),
        ("fifo", tar::EntryType::Fifo, ""),
        ("directory", tar::EntryType::Directory, ""),
    ] {
        let c = new_case(name);
        let mut m = members.clone();
        m[layer_idx].header.set_entry_type(kind);
        if kind == tar::EntryType::Char {
            m[layer_idx].header.set_device_major(1).expect("major");
            m[layer_idx].header.set_device_minor(3).expect("minor");
        }
        m[layer_idx].set_raw_link(link);
        write_bundle(&c.bundle, &m);
        cases.push(c);
    }

    // A GNU long-name entry (its data is the next member's name) in place of oci-layout.
    let c = new_case("longname");
    let mut m = members.clone();
    m[1].header.set_entry_type(tar::EntryType::GNULongName);
    m[1].header.set_cksum();
    write_bundle(&c.bundle, &m);
    cases.push(c);

    // The same member twice.
    let c = new_case("duplicate");
    let mut m = members.clone();
    m.insert(layer_idx + 1, members[layer_idx].clone());
    write_bundle(&c.bundle, &m);
    cases.push(c);

    // A layer one byte shorter than bundle.json says (same 512-byte span when possible).
    let c = new_case("short-member");
    let mut m = members.clone();
    let len = m[layer_idx].data.len();
    m[layer_idx].data.truncate(len - 1);
    m[layer_idx].header.set_size(len as u64 - 1);
    m[layer_idx].header.set_cksum();
    write_bundle(&c.bundle, &m);
    cases.push(c);

    // bundle.json declaring absurd sizes and counts.
    let with_layer_size = |size: u64| -> serde_json::Value {
        let mut v = bj.clone();
        let old = v["blobs"]
            .as_array()
            .expect("blobs")
            .iter()
            .find(|b| b["digest"] == layer_digest.as_str())
            .expect("layer entry")["size"]
            .as_u64()
            .expect("size");
        for b in v["blobs"].as_array_mut().expect("blobs") {
            if b["digest"] == layer_digest.as_str() {
                b["size"] = size.into();
            }
        }
        let total = v["totalSize"].as_u64().expect("total") - old + size;
        v["totalSize"] = total.into();
        let isize = v["images"][0]["size"].as_u64().expect("size") - old + size;
        v["images"][0]["size"] = isize.into();
        v
    };
    for (name, size) in [("size-2-62", 1u64 << 62), ("size-1-tib", 1u64 << 40)] {
        let c = new_case(name);
        let mut m = members.clone();
        m[0] = bundle_json_member(&with_layer_size(size));
        m[layer_idx].header.set_size(size);
        m[layer_idx].header.set_cksum();
        write_bundle(&c.bundle, &m);
        cases.push(c);
    }
    let c = new_case("bundle-json-1-tib");
    let mut m = members.clone();
    m[0].header.set_size(1 << 40);
    m[0].header.set_cksum();
    write_bundle(&c.bundle, &m);
    cases.push(c);
    let c = new_case("too-many-images");
    let mut v = bj.clone();
    let img = v["images"][0].clone();
    let mut img = img;
    img["blobs"] = serde_json::json!([img["digest"].clone()]);
    v["images"] = serde_json::Value::Array(vec![img; 100_001]);
    let mut m = members.clone();
    m[0] = Member::regular("bundle.json", serde_json::to_vec(&v).expect("json"));
    write_bundle(&c.bundle, &m);
    cases.push(c);

    // Seek tables that lie.
    let c = new_case("seek-dsize");
    fs::copy(&valid, &c.bundle).expect("copy");
    edit_seek_table(&c.bundle, |e| e[1].1 += 512);
    cases.push(c);
    let c = new_case("seek-csize");
    fs::copy(&valid, &c.bundle).expect("copy");
    edit_seek_table(&c.bundle, |e| {
        e[1].0 += 7;
        e[2].0 -= 7;
    });
    cases.push(c);
    let c = new_case("seek-frames");
    fs::copy(&valid, &c.bundle).expect("copy");
    let mut bytes = fs::read(&c.bundle).expect("read");
    let n = bytes.len();
    bytes[n - 9..n - 5].copy_from_slice(&0x07FF_FFFFu32.to_le_bytes());
    fs::write(&c.bundle, bytes).expect("write");
    cases.push(c);
    // Not a bundle at all.
    let c = new_case("not-zstd");
    fs::write(&c.bundle, random_bytes(7, 4096)).expect("write");
    cases.push(c);
    let c = new_case("plain-tar");
    let mut tar_bytes: Vec<u8> = members.iter().flat_map(Member::tar_bytes).collect();
    tar_bytes.extend_from_slice(&[0; 1024]);
    fs::write(&c.bundle, tar_bytes).expect("write");
    cases.push(c);
    let c = new_case("empty");
    fs::write(&c.bundle, b"").expect("write");
    cases.push(c);

    // A volume set whose checksum file names a volume that is missing.
    let mut c = new_case("missing-listed-volume");
    let whole = fs::read(&valid).expect("read");
    let third = whole.len().div_ceil(3);
    let mut listing = String::new();
    for (i, chunk) in whole.chunks(third).enumerate() {
        let v = volume(&c.bundle, i + 1);
        fs::write(&v, chunk).expect("write volume");
        listing.push_str(&format!(
            "{}  {}\n",
            &sha256_digest(chunk)[7..],
            file_name(&v)
        ));
    }
    fs::write(beside(&c.bundle, "sha256"), listing).expect("write sums");
    let last = volume(&c.bundle, 3);
    fs::remove_file(&last).expect("remove");
    c.names = vec![file_name(&last)];
    cases.push(c);

    for mut c in cases {
        if !c.names.iter().any(|n| n.contains(".tar.zst.")) {
            c.names.push(layer_name.clone());
        }
        let names: Vec<&str> = c.names.iter().map(String::as_str).collect();
        let before = tree(&c.root);
        let work = c.root.join("work");
        for args in [
            vec![OsString::from("verify"), c.bundle.clone().into()],
            import_args(&c.bundle, &target, &[]),
        ] {
            let what = format!("{}: {:?}", c.name, args[0]);
            let (o, t) = run_limited(&work, &args);
            assert_refused(&what, &o, t, &names);
            assert!(
                target.catalog().is_empty(),
                "{what}: pushed {:?}\n{}",
                target.catalog(),
                describe_output(&o)
            );
            assert_eq!(tree(&c.root), before, "{what}: files appeared");
            assert!(!dir.path().join("evil").exists(), "{what}: wrote ../evil");
        }
    }

    // A layer that claims 1 GiB more than it holds, with a seek table and bundle.json that
    // agree with each other. Only reading the layer shows the lie, so import may push the
    // other (intact, digest-checked) blobs; it must not spin at the end of the data, and it
    // must not tag the image.
    let c = new_case("seek-consistent-lie");
    let mut m = members.clone();
    let real = m[layer_idx].data.len() as u64;
    let extra = 1u64 << 30;
    m[0] = bundle_json_member(&with_layer_size(real + extra));
    m[layer_idx].header.set_size(real + extra);
    m[layer_idx].header.set_cksum();
    write_bundle(&c.bundle, &m);
    edit_seek_table(&c.bundle, |e| e[layer_idx].1 += extra as u32);

    let target = TestRegistry::start(RegistryOpts::plain());
    let work = c.root.join("work");
    let (o, t) = run_limited(&work, &[OsString::from("verify"), c.bundle.clone().into()]);
    assert_refused(
        "consistent lie: verify",
        &o,
        t,
        &[&layer_name, "seek-consistent-lie"],
    );
    let (o, t) = run_limited(&work, &import_args(&c.bundle, &target, &[]));
    assert_refused("consistent lie: import", &o, t, &[&layer_digest]);
    assert!(
        !skopeo_exists(&target, "src/beta:1.0"),
        "the lying image was tagged"
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzz regressions
// ---------------------------------------------------------------------------------------------

/// Every input the fuzzer found (tests/data/fuzz-regressions) is refused cleanly by verify.
#[test]
fn fuzz_regressions_are_refused_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/data/fuzz-regressions")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_none_or(|x| x != "md"))
        .collect();
    assert!(
        !inputs.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    let work = tempdir("airlock-media-fuzz-");
    for path in inputs {
        // A copy, so no checksum file or volume beside it is picked up.
        let copy = work.path().join(format!("{}.tar.zst", file_name(&path)));
        fs::copy(&path, &copy).expect("copy");
        let (o, t) = run_limited(work.path(), &[OsString::from("verify"), copy.into()]);
        assert_refused(&file_name(&path), &o, t, &[&file_name(&path)]);
    }
}
