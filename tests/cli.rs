//! The command line as scripts use it: `-q`/`-v` refused together, `-f -` (image names on
//! standard input), `verify -v` listing every blob, `inspect -q` as a silent check,
//! `completions` and `man`.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// The subcommands `airlock --help` lists (clap's own `help` aside).
fn subcommands() -> Vec<String> {
    let out = run_airlock(["--help"], &[], None);
    assert_success(&out, "--help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect();
    for core in [
        "export",
        "import",
        "inspect",
        "verify",
        "keygen",
        "completions",
        "man",
    ] {
        assert!(
            names.iter().any(|n| n == core),
            "{core} not in --help:\n{help}"
        );
    }
    names
}

fn stdout_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two small images in a fresh registry, exported with their names on standard input
/// (`-f -`). Returns the registry (keep it alive), the bundle and the names given.
fn exported_from_stdin(dir: &Path) -> (TestRegistry, PathBuf, Vec<String>) {
    let src = TestRegistry::start(RegistryOpts::plain());
    let c = src.client();
    let platform = Platform::linux_amd64();
    c.push_image(
        "src/one",
        Some("1.0"),
        ImageFormat::Oci,
        &platform,
        &[small_layer(1, "one", true)],
        &[],
    );
    c.push_image(
        "src/two",
        Some("2.0"),
        ImageFormat::Docker,
        &platform,
        &[small_layer(2, "two-a", true), small_layer(3, "two-b", true)],
        &[],
    );
    let host = src.host();
    let names = vec![format!("{host}/src/one:1.0"), format!("{host}/src/two:2.0")];
    let stdin = format!(
        "# images for this month\n{}\n\n{}  # the second\n",
        names[0], names[1]
    );
    let bundle = dir.join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            "-",
            "-o",
            bundle.to_str().expect("utf-8 path"),
        ],
        &[],
        Some(&stdin),
    );
    assert_success(&out, "export -f -");
    (src, bundle, names)
}

fn blob_digests(bundle: &Path) -> Vec<String> {
    let bj = read_bundle_json(bundle);
    bj["blobs"]
        .as_array()
        .expect("blobs in bundle.json")
        .iter()
        .map(|b| b["digest"].as_str().expect("digest").to_string())
        .collect()
}

#[test]
fn quiet_and_verbose_are_refused_together_on_every_subcommand() {
    let cases: &[&[&str]] = &[
        &["export", "-o", "x.tar.zst", "example.org/a:1"],
        &["import", "x.tar.zst"],
        &["copy", "example.org/a:1", "--to-registry", "localhost:1"],
        &["verify", "x.tar.zst"],
        &["inspect", "x.tar.zst"],
    ];
    for args in cases {
        for qv in [["-q", "-v"], ["--quiet", "--verbose"]] {
            let mut all: Vec<&str> = args.to_vec();
            all.extend(qv);
            let out = run_airlock(&all, &[], None);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{all:?} should be a usage error\n{}",
                describe_output(&out)
            );
            let err = stderr_text(&out);
            assert!(err.contains("cannot be used with"), "{all:?}: {err}");
        }
    }
    // inspect -q prints nothing, so JSON with it makes no sense either.
    let out = run_airlock(["inspect", "-q", "--json", "x.tar.zst"], &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
}

#[test]
fn export_reads_image_names_from_standard_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, bundle, names) = exported_from_stdin(dir.path());
    let bj = read_bundle_json(&bundle);
    let mut sources: Vec<String> = bj["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| i["source"].as_str().expect("source").to_string())
        .collect();
    sources.sort();
    assert_eq!(sources, names);
    for (repo, tag) in [("src/one", "1.0"), ("src/two", "2.0")] {
        let at_source = src
            .client()
            .manifest_digest(repo, tag)
            .expect("digest at the source");
        let image = bj["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| {
                i["source"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(&format!("{repo}:{tag}")))
            })
            .expect("image in bundle.json");
        assert_eq!(image["digest"].as_str(), Some(at_source.as_str()));
    }
}

#[test]
fn images_on_standard_input_and_password_stdin_are_refused_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            "-",
            "--password-stdin",
            "-u",
            "robot",
            "--registry",
            "127.0.0.1:1",
            "-o",
            bundle.to_str().expect("utf-8 path"),
        ],
        &[],
        Some("127.0.0.1:1/src/one:1.0\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(err.contains("standard input"), "{err}");
    assert!(!bundle.exists());
}

#[test]
fn empty_standard_input_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("b.tar.zst");
    let out = run_airlock(
        [
            "export",
            "-f",
            "-",
            "-o",
            bundle.to_str().expect("utf-8 path"),
        ],
        &[],
        Some("# nothing\n\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains("no images"),
        "{}",
        describe_output(&out)
    );
}

#[test]
fn verify_verbose_lists_every_blob_and_quiet_prints_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_src, bundle, _) = exported_from_stdin(dir.path());
    let digests = blob_digests(&bundle);
    assert!(digests.len() >= 5, "two configs, three layers: {digests:?}");

    let out = run_airlock(
        ["verify", "-v", bundle.to_str().expect("utf-8 path")],
        &[],
        None,
    );
    assert_success(&out, "verify -v");
    let err = stderr_text(&out);
    let listed: Vec<&str> = err.lines().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(listed.len(), digests.len(), "one line per blob:\n{err}");
    for d in &digests {
        assert!(
            listed.iter().any(|l| l.contains(d.as_str())),
            "{d} not listed:\n{err}"
        );
    }

    let out = run_airlock(
        ["verify", "-q", bundle.to_str().expect("utf-8 path")],
        &[],
        None,
    );
    assert_success(&out, "verify -q");
    assert!(out.stdout.is_empty(), "{}", describe_output(&out));
    assert!(out.stderr.is_empty(), "{}", describe_output(&out));

    // Without -v: no per-blob lines.
    let out = run_airlock(["verify", bundle.to_str().expect("utf-8 path")], &[], None);
    assert_success(&out, "verify");
    assert!(
        !stderr_text(&out).lines().any(|l| l.starts_with("ok ")),
        "{}",
        describe_output(&out)
    );
}

#[test]
fn inspect_quiet_is_a_silent_check_and_verbose_lists_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_src, bundle, _) = exported_from_stdin(dir.path());
    let path = bundle.to_str().expect("utf-8 path");

    let out = run_airlock(["inspect", "-q", path], &[], None);
    assert_success(&out, "inspect -q");
    assert!(out.stdout.is_empty(), "{}", describe_output(&out));
    assert!(out.stderr.is_empty(), "{}", describe_output(&out));

    let out = run_airlock(["inspect", "-v", path], &[], None);
    assert_success(&out, "inspect -v");
    let text = stdout_text(&out);
    for d in blob_digests(&bundle) {
        assert!(text.contains(&d), "{d} not listed:\n{text}");
    }

    // Not a bundle: an error naming the file, nothing on stdout, a non-zero exit.
    let junk = dir.path().join("junk.tar.zst");
    std::fs::write(&junk, b"not a bundle at all").expect("write junk");
    let out = run_airlock(["inspect", "-q", junk.to_str().expect("utf-8")], &[], None);
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(out.stdout.is_empty(), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains("junk.tar.zst"),
        "{}",
        describe_output(&out)
    );

    let missing = dir.path().join("missing.tar.zst");
    let out = run_airlock(
        ["inspect", "-q", missing.to_str().expect("utf-8")],
        &[],
        None,
    );
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(out.stdout.is_empty(), "{}", describe_output(&out));
}

#[test]
fn completions_name_every_subcommand() {
    let subcommands = subcommands();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef airlock"),
        ("fish", "complete -c airlock"),
    ] {
        let out = run_airlock(["completions", shell], &[], None);
        assert_success(&out, &format!("completions {shell}"));
        let text = stdout_text(&out);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        for sub in &subcommands {
            assert!(text.contains(sub.as_str()), "{shell}: {sub} missing");
        }
        for flag in ["timeout", "images-file", "trusted-key"] {
            assert!(text.contains(flag), "{shell}: --{flag} missing");
        }
    }
    let out = run_airlock(["completions", "powershell"], &[], None);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
}

#[test]
fn man_prints_the_main_page_and_writes_one_page_per_subcommand() {
    let out = run_airlock(["man"], &[], None);
    assert_success(&out, "man");
    let main = stdout_text(&out);
    assert!(main.contains(".TH airlock 1"), "{main}");
    let subcommands = subcommands();
    for sub in &subcommands {
        assert!(
            main.contains(&format!("airlock\\-{sub}(1)")),
            "main page does not name airlock-{sub}(1):\n{main}"
        );
    }
    assert!(!main.contains("airlock\\-help"), "{main}");

    let dir = tempfile::tempdir().expect("tempdir");
    let pages = dir.path().join("man1");
    let out = run_airlock(
        ["man", "--dir", pages.to_str().expect("utf-8 path")],
        &[],
        None,
    );
    assert_success(&out, "man --dir");
    let mut written: Vec<String> = std::fs::read_dir(&pages)
        .expect("man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut expected: Vec<String> = subcommands
        .iter()
        .map(|s| format!("airlock-{s}.1"))
        .chain(["airlock.1".to_string()])
        .collect();
    expected.sort();
    assert_eq!(written, expected);
    let export = std::fs::read_to_string(pages.join("airlock-export.1")).expect("export page");
    assert!(export.contains(".TH airlock-export 1"), "{export}");
    for flag in ["timeout", "images", "AIRLOCK_TIMEOUT"] {
        assert!(export.contains(flag), "export page lacks {flag}:\n{export}");
    }
}

/// Where short names go, flag by flag and variable by variable: the origin procedure's
/// defaults only in its own (variable) mode, and a usage error that says what to add when
/// only a tag is given.
/// An empty AIRLOCK_CACHE_DIR or AIRLOCK_TIMEOUT counts as unset, as every variable does (an
/// `AIRLOCK_CACHE_DIR=` line in the service's export.env made every run a usage error).
#[test]
fn empty_airlock_variables_count_as_unset() {
    let o = run_airlock(
        ["cache", "ls", "--json"],
        &[("AIRLOCK_CACHE_DIR", ""), ("AIRLOCK_TIMEOUT", "")],
        None,
    );
    assert_success(
        &o,
        "cache ls with empty AIRLOCK_CACHE_DIR and AIRLOCK_TIMEOUT",
    );
    let o = run_airlock(
        [
            "export",
            "127.0.0.1:9/x/y:1",
            "-o",
            "unused.tar.zst",
            "--plan",
            "--retries",
            "0",
        ],
        &[("AIRLOCK_TIMEOUT", "")],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
}

#[test]
fn short_name_defaults_are_in_the_open() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let host = src.host();
    let pushed = src.client().push_image(
        "alpha",
        Some("1.0"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(5, "top-level", true)],
        &[],
    );
    let planned = |args: &[&str], envs: &[(&str, &str)]| {
        let mut all = vec![
            "export",
            "--plan",
            "--json",
            "-o",
            "/tmp/never-written.tar.zst",
        ];
        all.extend_from_slice(args);
        run_airlock(&all, envs, None)
    };
    // Only --tag: no registry, no terminal: a usage error naming what to add.
    let out = planned(&["nginx", "--tag", "1.27"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe_output(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains("--registry") && err.contains("SOURCE_DOCKER_REGISTRY"),
        "{err}"
    );
    assert!(err.contains("docker.io/library/nginx"), "{err}");
    // --registry alone: the short name sits at the registry's top level.
    let out = planned(&["alpha", "--registry", &host, "--tag", "1.0"], &[]);
    assert_success(&out, "export --registry --tag alpha");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(plan["images"][0]["source"], format!("{host}/alpha:1.0"));
    assert_eq!(plan["images"][0]["digest"], pushed.digest.as_str());
    // A SOURCE_DOCKER_* variable chooses the procedure's mode: its repository default applies.
    let out = planned(
        &["alpha", "--registry", &host],
        &[("SOURCE_DOCKER_TAG", "1.0")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(
        stderr_text(&out).contains(&format!("{host}/arcdata/alpha:1.0")),
        "{}",
        stderr_text(&out)
    );
    // --help shows the defaults and the variables.
    let help = run_airlock(["export", "--help"], &[], None);
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "SOURCE_DOCKER_REGISTRY",
        "SOURCE_DOCKER_REPOSITORY",
        "SOURCE_DOCKER_TAG",
        "mcr.microsoft.com",
        "arcdata",
        "AIRLOCK_TIMEOUT",
    ] {
        assert!(
            text.contains(needle),
            "export --help does not mention {needle}"
        );
    }
}

/// `inspect --image` shows the matching images only; a pattern matching nothing is an error.
#[test]
fn inspect_image_patterns() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("list.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("list");
    let bundle = dir.path().join("b.tar.zst");
    let b = bundle.to_str().expect("utf8");
    let out = run_airlock(
        ["export", "-q", "-f", list.to_str().expect("utf8"), "-o", b],
        &[],
        None,
    );
    assert_success(&out, "export");
    let out = run_airlock(["inspect", b, "--image", "*/beta:*"], &[], None);
    assert_success(&out, "inspect --image");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("src/beta:1.0"), "{text}");
    assert!(!text.contains("src/alpha"), "{text}");
    let none = run_airlock(["inspect", b, "--image", "nothing-*"], &[], None);
    assert_eq!(none.status.code(), Some(2), "{}", describe_output(&none));
}

/// `-o` naming a directory (`/media/usb`, or `/srv/bundles/` in a scheduled job's settings)
/// is refused at once with the file name to give, not after the whole download, when the
/// bundle is renamed into place. The source here does not answer: the refusal comes first.
#[test]
fn an_output_naming_a_directory_is_refused_before_any_download() {
    let dir = tempfile::tempdir().expect("tempdir");
    let usb = dir.path().join("usb");
    std::fs::create_dir(&usb).expect("mkdir");
    let missing = dir.path().join("bundles");
    for (given, says) in [
        (usb.display().to_string(), "is a directory"),
        (format!("{}/", usb.display()), "is a directory"),
        (format!("{}/", missing.display()), "is a directory"),
        // A monthly name still to be filled in, in a directory that is not there.
        (
            format!("{}/arc-{{date}}.tar.zst", missing.display()),
            "does not exist",
        ),
    ] {
        let out = run_airlock(
            [
                "export",
                "127.0.0.1:9/lib/alpine:3.20",
                "--plain-http",
                "--retries",
                "0",
                "-o",
                given.as_str(),
            ],
            &[],
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "-o {given}\n{}",
            describe_output(&out)
        );
        let err = stderr_text(&out);
        let what = if says == "is a directory" {
            "bundle.tar.zst"
        } else {
            "bundles"
        };
        assert!(
            err.contains(says) && err.contains(what),
            "-o {given}: the error does not say what to give\n{}",
            describe_output(&out)
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("usb")], "{left:?}");
    assert_eq!(std::fs::read_dir(&usb).expect("read usb").count(), 0);
}
