//! `airlock completions SHELL` and `airlock man [--dir DIR]`: the shell completion scripts
//! (clap_complete) and the man pages (clap_mangen), generated from the clap definitions so
//! they never drift from the flags. The Debian package ships their output.

use crate::cli::{Cli, CompletionShell, CompletionsArgs, ManArgs};
use crate::error::{Error, Result};
use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

/// The name the binary is installed under, and the prefix of every man page.
const BIN: &str = "airlock";

/// Prints the completion script for one shell on stdout.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    match args.shell {
        CompletionShell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, BIN, &mut buf)
        }
        CompletionShell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, BIN, &mut buf)
        }
        CompletionShell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, BIN, &mut buf)
        }
    }
    write_stdout(&buf)
}

/// Prints `airlock.1`, or writes it and one page per subcommand into `--dir`.
pub fn man(args: ManArgs) -> Result<()> {
    let pages = pages()?;
    match args.dir {
        None => {
            let main = pages
                .into_iter()
                .next()
                .ok_or_else(|| Error::Failed("no man page was generated".into()))?;
            write_stdout(&main.1)
        }
        Some(dir) => write_pages(&dir, &pages),
    }
}

/// Every page: `airlock.1` first, then `airlock-SUBCOMMAND.1` for each subcommand.
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    // clap's own `help` subcommand gets no page, and the main page does not name one.
    let cmd = Cli::command().disable_help_subcommand(true);
    let version = env!("CARGO_PKG_VERSION");
    let mut out = Vec::new();
    out.push((format!("{BIN}.1"), render(cmd.clone())?));
    for sub in cmd.get_subcommands() {
        let name = format!("{BIN}-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("{BIN} {}", sub.get_name()))
            .display_name(name.clone())
            .version(version);
        out.push((format!("{name}.1"), render(page)?));
    }
    Ok(out)
}

fn render(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .manual("airlock manual")
        .render(&mut buf)
        .map_err(|e| Error::Failed(format!("rendering the man page: {e}")))?;
    Ok(buf)
}

fn write_pages(dir: &Path, pages: &[(String, Vec<u8>)]) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    for (name, bytes) in pages {
        let path = dir.join(name);
        std::fs::write(&path, bytes)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    eprintln!("{} man pages written to {}", pages.len(), dir.display());
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("writing to stdout", e))
}

#[cfg(test)]
mod tests {
    use super::pages;

    #[test]
    fn one_page_per_subcommand() {
        let pages = pages().expect("pages");
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for n in [
            "airlock.1",
            "airlock-export.1",
            "airlock-import.1",
            "airlock-inspect.1",
            "airlock-verify.1",
            "airlock-keygen.1",
            "airlock-completions.1",
            "airlock-man.1",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(!names.contains(&"airlock-help.1"));
        let export = &pages
            .iter()
            .find(|(n, _)| n == "airlock-export.1")
            .expect("export page")
            .1;
        let text = String::from_utf8_lossy(export);
        assert!(text.contains(".TH airlock-export 1"), "{text}");
        assert!(text.contains("timeout"), "{text}");
    }
}
