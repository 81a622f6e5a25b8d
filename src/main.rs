//! The `airlock` binary: parse the command line, run the command, map errors to exit codes.

use airlock::cli::{Cli, Command};
use airlock::commands;
use airlock::error::{Error, EXIT_OK};
use clap::Parser;

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
    let code = match outcome {
        Ok(Ok(())) => EXIT_OK,
        Ok(Err(e)) => {
            eprintln!("airlock: error: {e}");
            e.exit_code()
        }
        Err((name, code)) => {
            // Our own unfinished files go; nothing new can be created from now on.
            let removed = airlock::cleanup::remove_all();
            eprintln!(
                "airlock: stopped by {name}; removed {}",
                airlock::units::count(removed.len() as u64, "unfinished file", "unfinished files")
            );
            code
        }
    };
    // Leave background transfers behind: the outcome is decided.
    runtime.shutdown_background();
    std::process::exit(code);
}
