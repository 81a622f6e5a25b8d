//! The Debian package as an operator gets it: its file list, its conffile, its maintainer
//! scripts (none that enable anything), the packaged binary, a man page rendered with
//! `man -l`, and the systemd units. The package is target/debian/airlock_VERSION_ARCH.deb;
//! when it is missing, scripts/build-deb.sh builds it first (several minutes: a release build).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// A release build on a busy machine: generous, but bounded.
const BUILD_LIMIT: Duration = Duration::from_secs(40 * 60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        other => other,
    }
}

fn deb_path() -> PathBuf {
    root()
        .join("target/debian")
        .join(format!("airlock_{VERSION}_{}.deb", deb_arch()))
}

/// Runs scripts/build-deb.sh, killed after [`BUILD_LIMIT`].
fn build_deb() -> Result<(), String> {
    let script = root().join("scripts/build-deb.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(root())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let deadline = Instant::now() + BUILD_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("{} failed: {s}", script.display())),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not finish within {BUILD_LIMIT:?}",
                    script.display()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return Err(format!("waiting for {}: {e}", script.display())),
        }
    }
}

/// The package, built once per test run when missing.
fn deb() -> &'static Path {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = DEB.get_or_init(|| {
        let p = deb_path();
        if !p.exists() {
            eprintln!("{} is missing: running scripts/build-deb.sh", p.display());
            build_deb()?;
        }
        if p.exists() {
            Ok(p)
        } else {
            Err(format!(
                "scripts/build-deb.sh did not produce {}",
                p.display()
            ))
        }
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("no package to test: {e}"),
    }
}

/// The package's data and control parts, unpacked once per test run with `dpkg-deb`.
struct Unpacked {
    data: PathBuf,
    control: PathBuf,
}

fn unpacked() -> &'static Unpacked {
    static UNPACKED: OnceLock<Unpacked> = OnceLock::new();
    UNPACKED.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging-test");
        let _ = std::fs::remove_dir_all(&base);
        let u = Unpacked {
            data: base.join("root"),
            control: base.join("DEBIAN"),
        };
        std::fs::create_dir_all(&u.data).expect("create the unpack dir");
        let deb = deb();
        check(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&u.data),
            "dpkg-deb -x",
        );
        check(
            Command::new("dpkg-deb").arg("-e").arg(deb).arg(&u.control),
            "dpkg-deb -e",
        );
        u
    })
}

fn check(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `dpkg-deb -c`: (mode, path without the leading `.`) per entry.
fn listing() -> Vec<(String, String)> {
    let out = check(Command::new("dpkg-deb").arg("-c").arg(deb()), "dpkg-deb -c");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.').to_string();
            Some((f.first()?.to_string(), path))
        })
        .collect()
}

/// The subcommands' man page names, from the binary built for these tests.
fn expected_man_pages() -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    check(
        Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(["man", "--dir"])
            .arg(dir.path()),
        "airlock man --dir",
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_package_holds_every_file_in_its_place() {
    let list = listing();
    let paths: Vec<&str> = list.iter().map(|(_, p)| p.as_str()).collect();
    let mut expected: Vec<String> = [
        "/usr/bin/airlock",
        "/usr/share/bash-completion/completions/airlock",
        "/usr/share/zsh/vendor-completions/_airlock",
        "/usr/share/fish/vendor_completions.d/airlock.fish",
        "/usr/share/doc/airlock/examples/arc.yaml",
        "/usr/share/doc/airlock/README.md",
        "/lib/systemd/system/airlock-export.service",
        "/lib/systemd/system/airlock-export.timer",
        "/etc/airlock/export.env",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pages = expected_man_pages();
    assert!(pages.len() >= 8, "{pages:?}");
    for page in &pages {
        expected.push(format!("/usr/share/man/man1/{page}.gz"));
    }
    for e in &expected {
        assert!(
            paths.contains(&e.as_str()),
            "{e} is not in the package: {paths:#?}"
        );
    }
    let mode = |p: &str| {
        list.iter()
            .find(|(_, q)| q == p)
            .map(|(m, _)| m.clone())
            .unwrap_or_default()
    };
    assert_eq!(mode("/usr/bin/airlock"), "-rwxr-xr-x");
    // The environment file may hold a password.
    assert_eq!(mode("/etc/airlock/export.env"), "-rw-------");
    // Nothing enables the units behind the package's back (no .wants links).
    assert!(
        !paths.iter().any(|p| p.starts_with("/etc/systemd")),
        "{paths:#?}"
    );
    // The README and the example are the repository's.
    let u = unpacked();
    for (packaged, source) in [
        (
            "usr/share/doc/airlock/examples/arc.yaml",
            "examples/arc.yaml",
        ),
        ("usr/share/doc/airlock/README.md", "README.md"),
    ] {
        let same = std::fs::read(u.data.join(packaged)).expect("packaged file")
            == std::fs::read(root().join(source)).expect("source file");
        assert!(
            same,
            "{packaged} differs from {source}: rebuild the package (scripts/build-deb.sh)"
        );
    }
}

#[test]
fn the_environment_file_is_a_conffile_and_no_script_enables_the_units() {
    let u = unpacked();
    let conffiles = std::fs::read_to_string(u.control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/airlock/export.env"),
        "conffiles: {conffiles:?}"
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let Ok(text) = std::fs::read_to_string(u.control.join(script)) else {
            continue;
        };
        for word in [
            "systemctl",
            "deb-systemd-helper",
            "deb-systemd-invoke",
            "enable",
        ] {
            assert!(
                !text.contains(word),
                "{script} mentions {word}; the units must stay disabled:\n{text}"
            );
        }
    }
    let control = std::fs::read_to_string(u.control.join("control")).expect("control");
    assert!(control.contains("Package: airlock"), "{control}");
    assert!(
        control.contains(&format!("Version: {VERSION}")),
        "{control}"
    );
}

#[test]
fn the_packaged_binary_runs() {
    let bin = unpacked().data.join("usr/bin/airlock");
    let out = check(Command::new(&bin).arg("--version"), "airlock --version");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("airlock {VERSION}")
    );
    let out = check(
        Command::new(&bin).args(["export", "--help"]),
        "export --help",
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--timeout", "--images-file", "--config"] {
        assert!(
            help.contains(flag),
            "{flag} missing from export --help:\n{help}"
        );
    }
}

/// Drops the overstrike sequences (`x\bx`, `_\bx`) a formatter may leave in.
fn plain(text: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn man_renders_the_packaged_export_page() {
    let page = unpacked()
        .data
        .join("usr/share/man/man1/airlock-export.1.gz");
    assert!(page.exists(), "{} missing", page.display());
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .expect("run `man` (Debian: apt-get install man-db)");
    let text = plain(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "man -l failed: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // groff may render ASCII hyphens as U+2010 or U+2212.
    let text = text.replace(['\u{2010}', '\u{2212}'], "-");
    assert!(text.contains("airlock-export"), "{text}");
    for flag in ["--timeout", "--images-file", "--output"] {
        assert!(
            text.contains(flag),
            "{flag} not in the rendered page:\n{text}"
        );
    }
}

/// `Key=value` lines of a unit file.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_units_run_the_packaged_binary_monthly_with_the_environment_file() {
    let u = unpacked();
    let service = std::fs::read_to_string(u.data.join("lib/systemd/system/airlock-export.service"))
        .expect("service unit");
    assert_eq!(
        unit_values(&service, "EnvironmentFile"),
        ["/etc/airlock/export.env"]
    );
    let exec = unit_values(&service, "ExecStart");
    assert_eq!(exec.len(), 1, "{service}");
    assert!(
        exec[0].starts_with("/usr/bin/airlock export "),
        "ExecStart={}",
        exec[0]
    );
    assert!(
        exec[0].contains("--config ${AIRLOCK_CONFIG}"),
        "{}",
        exec[0]
    );
    assert!(
        unit_values(&service, "Environment")
            .contains(&"AIRLOCK_CONFIG=/etc/airlock/arc.yaml".to_string()),
        "{service}"
    );
    assert_eq!(unit_values(&service, "Type"), ["oneshot"]);
    assert_eq!(unit_values(&service, "SuccessExitStatus"), ["3"]);

    let timer = std::fs::read_to_string(u.data.join("lib/systemd/system/airlock-export.timer"))
        .expect("timer unit");
    let on = unit_values(&timer, "OnCalendar");
    assert_eq!(on.len(), 1, "{timer}");
    // Monthly: `monthly`, or a fixed day of every month (`*-*-DD HH:MM:SS`).
    let monthly = on[0] == "monthly"
        || on[0]
            .strip_prefix("*-*-")
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|day| day.parse::<u8>().is_ok_and(|d| (1..=28).contains(&d)));
    assert!(monthly, "OnCalendar={} is not monthly", on[0]);
    // Where systemd is at hand, ask it: three elapses, same day of three successive months.
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["calendar", "--iterations=3", &on[0]])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "systemd-analyze calendar: {text}");
        let dates: Vec<(u32, u32)> = text
            .lines()
            .filter(|l| l.contains("Next elapse:") || l.contains("Iter. #"))
            .filter_map(|l| {
                let date = l.split(':').nth(1)?.split_whitespace().nth(1)?;
                let mut p = date.split('-').skip(1).map(|n| n.parse::<u32>().ok());
                Some((p.next()??, p.next()??))
            })
            .collect();
        assert_eq!(dates.len(), 3, "{text}");
        for w in dates.windows(2) {
            assert_eq!(w[0].1, w[1].1, "not the same day of the month: {text}");
            assert_eq!(w[1].0, w[0].0 % 12 + 1, "not the next month: {text}");
        }
    }
    assert_eq!(unit_values(&timer, "Persistent"), ["true"]);
    assert_eq!(unit_values(&timer, "WantedBy"), ["timers.target"]);

    // The environment file: every setting commented out (defaults), each variable the
    // service reads documented.
    let env = std::fs::read_to_string(u.data.join("etc/airlock/export.env")).expect("env file");
    for line in env.lines() {
        let l = line.trim();
        assert!(l.is_empty() || l.starts_with('#'), "not commented: {line}");
    }
    for var in [
        "AIRLOCK_CONFIG",
        "AIRLOCK_OUTPUT",
        "AIRLOCK_EXPORT_ARGS",
        "AIRLOCK_CACHE_DIR",
    ] {
        assert!(service.contains(var), "the service does not use {var}");
        assert!(env.contains(&format!("#{var}=")), "{var} not in export.env");
    }
}

#[test]
fn the_packaged_completions_are_the_binarys() {
    let u = unpacked();
    let bin = u.data.join("usr/bin/airlock");
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/airlock"),
        ("zsh", "usr/share/zsh/vendor-completions/_airlock"),
        ("fish", "usr/share/fish/vendor_completions.d/airlock.fish"),
    ] {
        let packaged = std::fs::read_to_string(u.data.join(path)).expect("packaged completions");
        let out = check(
            Command::new(&bin).args(["completions", shell]),
            "completions",
        );
        assert_eq!(packaged, String::from_utf8_lossy(&out.stdout), "{shell}");
        for sub in ["export", "import", "inspect", "verify", "keygen"] {
            assert!(packaged.contains(sub), "{shell} completions lack {sub}");
        }
    }
}
