//! Running the airlock binary with an isolated environment, and reading its output.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

const AIRLOCK_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Running airlock
// ---------------------------------------------------------------------------------------------

/// Path of the airlock binary cargo built for these tests.
pub fn airlock_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_airlock"))
}

/// Environment variables never inherited by airlock in tests (exact names).
const SCRUBBED_VARS: &[&str] = &[
    "DOCKER_CONFIG",
    "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "SOURCE_DATE_EPOCH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// Environment variable prefixes never inherited by airlock in tests.
const SCRUBBED_PREFIXES: &[&str] = &["SOURCE_DOCKER_", "TARGET_DOCKER_", "AIRLOCK_"];

/// An airlock command with an isolated environment rooted at `home` (which the caller keeps):
/// inherited credentials/proxy/AIRLOCK_* variables removed, `HOME=home`,
/// `XDG_CACHE_HOME=home/.cache`, `AIRLOCK_CACHE_DIR=home/airlock-cache`, stdin null.
pub fn airlock_command(home: &Path) -> Command {
    let mut cmd = Command::new(airlock_bin());
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if SCRUBBED_VARS.contains(&k) || SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("AIRLOCK_CACHE_DIR", home.join("airlock-cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run airlock to completion (killed after 300 s) with an isolated environment (see
/// [`airlock_command`]); `envs` are applied last and override the defaults. `stdin`, when
/// given, is written to a pipe that is then closed; otherwise stdin is /dev/null. Never a TTY.
pub fn run_airlock<I, S>(args: I, envs: &[(&str, &str)], stdin: Option<&str>) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let home = tempfile::Builder::new()
        .prefix("airlock-test-home-")
        .tempdir()
        .expect("create temp HOME");
    let mut cmd = airlock_command(home.path());
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", airlock_bin().display()));
    let writer = child.stdin.take().map(|mut pipe| {
        let data = stdin.unwrap_or_default().to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(data.as_bytes());
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
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
    let deadline = Instant::now() + AIRLOCK_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for airlock") {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_t.join().unwrap_or_default();
                let stderr = err_t.join().unwrap_or_default();
                panic!(
                    "airlock did not finish within {AIRLOCK_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    drop(home);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// stdout and stderr of an Output, for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panic with the full output unless the command succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        describe_output(out)
    );
}

/// A command's standard error as text.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
