//! The `airlock` binary: parse the command line, run the command, map errors to exit codes.

use airlock::cli::{Cli, Command};
use airlock::commands;
use airlock::error::{Error, EXIT_OK};
use clap::Parser;
use std::time::Duration;

/// Waits for SIGINT or SIGTERM; returns its name and the exit code it maps to (128 + signal
/// number: 130, 143). Pends forever when the handlers cannot be installed.
async fn stop_signal() -> (&'static str, i32) {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
        },
        _ => std::future::pending().await,
    }
}

/// Keeps glibc's malloc to one arena (unless `MALLOC_ARENA_MAX` says otherwise). By default
/// glibc gives threads up to 8 arenas a core, each keeping what was freed in it: an export of
/// 10,000 images held 8 MiB more that way, for no speed. With two, the engine's short-lived
/// buffers (made on the runtime's threads) grew a second heap beside the holes that
/// resolving the images left in the first: an export of 33,340 images peaked at 69–83 MiB,
/// against 69 MiB with one, in the same time.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // mallopt only sets a tunable; 0 means it refused, and the default stands.
        // SAFETY: called before any other thread exists.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

fn main() {
    limit_malloc_arenas();
    // An empty variable counts as unset (README); clap would take "" for a value. Removed
    // here, before any thread starts.
    for var in ["AIRLOCK_TIMEOUT", "AIRLOCK_CACHE_DIR"] {
        if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(var);
        }
    }
    let cli = Cli::parse();
    let terminal = terminal_settings();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("airlock: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(async move {
        // `serve` stops on the signals itself, gracefully; it writes no files.
        if let Command::Serve(a) = cli.command {
            return Ok(commands::serve::run(a).await);
        }
        // Listen before any work starts, so that an early signal is not missed.
        let stop = stop_signal();
        // The same signals, heard on a thread of their own: work that blocks its thread (a
        // prompt waiting for a line, keygen, cache prune) cannot hear them, so after a grace
        // the stop is made from here.
        tokio::spawn(async move {
            let (name, code) = stop_signal().await;
            let _ = SIGNALLED.set((name, code));
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop_now(name, code, terminal);
        });
        let work = async move {
            match cli.command {
                Command::Export(a) => commands::export::run(a).await,
                Command::Import(a) => commands::import::run(a).await,
                Command::Copy(a) => commands::copy::run(a).await,
                Command::Inspect(a) => {
                    tokio::task::spawn_blocking(move || commands::inspect::run(a))
                        .await
                        .map_err(|e| Error::Failed(e.to_string()))?
                }
                Command::Keygen(a) => commands::keygen(a),
                Command::Completions(a) => commands::docs::completions(a),
                Command::Man(a) => commands::docs::man(a),
                Command::Serve(_) => Err(Error::Failed("serve runs on its own".into())),
                Command::Diff(a) => tokio::task::spawn_blocking(move || commands::diff::run(a))
                    .await
                    .map_err(|e| Error::Failed(e.to_string()))?,
                Command::Cache(a) => commands::cache::run(a),
                Command::Verify(a) => commands::verify::run(a).await,
            }
        };
        tokio::select! {
            biased;
            (name, code) = stop => Err((name, code)),
            r = work => Ok(r),
        }
    });
    // A signal that interrupted blocking work (a password prompt's read) is what stopped it.
    let outcome = match (outcome, SIGNALLED.get()) {
        (Ok(_), Some(&(name, code))) => Err((name, code)),
        (o, _) => o,
    };
    let code = match outcome {
        Ok(Ok(())) => EXIT_OK,
        Ok(Err(e)) => {
            eprintln!("airlock: error: {e}");
            e.exit_code()
        }
        Err((name, code)) => stop_now(name, code, terminal),
    };
    // Leave background transfers behind: the outcome is decided.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// The signal heard, once it was: (its name, the exit code it gives).
static SIGNALLED: std::sync::OnceLock<(&'static str, i32)> = std::sync::OnceLock::new();

/// Stops the process for signal `name`: the terminal as it was (a hidden prompt turns echo
/// off), our own unfinished files removed (nothing new can be created from now on), exit
/// `code`.
fn stop_now(name: &str, code: i32, terminal: Option<libc::termios>) -> ! {
    restore_terminal(terminal);
    let removed = airlock::cleanup::remove_all();
    eprintln!(
        "airlock: stopped by {name}; removed {}",
        airlock::units::count(removed.len() as u64, "unfinished file", "unfinished files")
    );
    std::process::exit(code);
}

/// The terminal's settings on standard input, when it is one.
fn terminal_settings() -> Option<libc::termios> {
    // SAFETY: isatty and tcgetattr on descriptor 0 with a zeroed struct they fill.
    unsafe {
        if libc::isatty(0) != 1 {
            return None;
        }
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(0, &mut t) == 0).then_some(t)
    }
}

fn restore_terminal(saved: Option<libc::termios>) {
    if let Some(t) = saved {
        // SAFETY: tcsetattr on descriptor 0 with settings tcgetattr gave.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
}
