//! What the user sees while work goes on: a progress bar on a terminal, plain lines in logs,
//! nothing with `--quiet`; `--json` summaries go to stdout, everything else to stderr.

use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};

#[derive(Clone)]
pub struct Reporter {
    quiet: bool,
    verbose: bool,
    bar: Option<ProgressBar>,
    tty: bool,
}

impl Reporter {
    pub fn new(quiet: bool, verbose: bool) -> Reporter {
        Reporter {
            quiet,
            verbose,
            bar: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// A line of progress (suppressed by `--quiet`).
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(msg.as_ref()),
            None => eprintln!("{}", msg.as_ref()),
        }
    }

    /// A line shown only with `--verbose`.
    pub fn detail(&self, msg: impl AsRef<str>) {
        if self.verbose {
            self.info(msg);
        }
    }

    /// A warning, shown even with `--quiet`.
    pub fn warn(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(format!("warning: {}", msg.as_ref())),
            None => eprintln!("warning: {}", msg.as_ref()),
        }
    }

    /// Starts a byte-counting bar on a terminal.
    pub fn start_bar(&mut self, total: u64, label: &str) {
        if self.quiet || !self.tty {
            return;
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        self.bar = Some(bar);
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Takes back bytes counted for a transfer that is being redone.
    pub fn dec(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.dec(n);
        }
    }

    pub fn finish_bar(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A reader that moves the progress bar as bytes pass.
pub struct Counting<R> {
    inner: R,
    reporter: Reporter,
}

impl<R> Counting<R> {
    pub fn new(inner: R, reporter: Reporter) -> Self {
        Counting { inner, reporter }
    }
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reporter.inc(n as u64);
        Ok(n)
    }
}

/// The IMAGE / DIGEST / SIZE / PLATFORMS table of `inspect` and `export --plan`. Returns the
/// width of the first column, for lines that follow.
pub fn write_image_table<'a>(
    out: &mut impl std::io::Write,
    images: impl Iterator<Item = &'a crate::bundle::ImageEntry> + Clone,
) -> std::io::Result<usize> {
    let width = images
        .clone()
        .map(|i| i.source.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:width$}  {:19}  {:>10}  PLATFORMS",
        "IMAGE", "DIGEST", "SIZE"
    )?;
    for i in images {
        let platforms = if i.platforms.is_empty() {
            "-".to_string()
        } else {
            i.platforms.join(",")
        };
        writeln!(
            out,
            "{:width$}  {:19}  {:>10}  {platforms}",
            i.source,
            i.digest.short(),
            human(i.size)
        )?;
    }
    Ok(width)
}

/// `1.2 GiB` style sizes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints a serialisable summary as pretty JSON on stdout (for `--json`).
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    // Buffered: stdout alone writes each line on its own (a plan of 33,340 images is
    // 170,000 lines).
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut stdout, value)
        .map_err(|e| Error::Failed(format!("printing JSON: {e}")))?;
    writeln!(stdout)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("writing to stdout", e))
}
