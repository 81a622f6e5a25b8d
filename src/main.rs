//! The `airlock` binary: parse the command line, run the command, map errors to exit codes.

use airlock::cli::{Cli, Command};
use airlock::commands;
use airlock::error::{Error, EXIT_OK};
use clap::Parser;

fn main() {
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
    let result: Result<(), Error> = runtime.block_on(async move {
        match cli.command {
            Command::Export(a) => commands::export::run(a).await,
            Command::Import(a) => commands::import::run(a).await,
            Command::Inspect(a) => tokio::task::spawn_blocking(move || commands::inspect::run(a))
                .await
                .map_err(|e| Error::Failed(e.to_string()))?,
            Command::Keygen(a) => commands::keygen(a),
            Command::Serve(a) => commands::serve::run(a).await,
            Command::Diff(a) => tokio::task::spawn_blocking(move || commands::diff::run(a))
                .await
                .map_err(|e| Error::Failed(e.to_string()))?,
            Command::Cache(a) => commands::cache::run(a),
            Command::Verify(a) => tokio::task::spawn_blocking(move || commands::verify::run(a))
                .await
                .map_err(|e| Error::Failed(e.to_string()))?,
        }
    });
    let code = match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("airlock: error: {e}");
            e.exit_code()
        }
    };
    // Leave background transfers behind: the outcome is decided.
    runtime.shutdown_background();
    std::process::exit(code);
}
