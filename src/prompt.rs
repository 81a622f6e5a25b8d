//! Questions on the terminal: whether we may ask at all ([`interactive`]), a visible
//! question with a default ([`ask`]), a hidden password prompt ([`password`]) and a password
//! piped on standard input ([`password_from_stdin`]). What is asked, and when, is decided in
//! `options`; this module only talks to the terminal.

use crate::error::{Error, Result};
use std::io::{IsTerminal, Read, Write};

/// Whether we may ask questions: stdin and stderr are both terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks on the terminal; an empty answer takes the default.
pub fn ask(question: &str, default: Option<&str>) -> Result<Option<String>> {
    let mut err = std::io::stderr();
    match default {
        Some(d) => write!(err, "{question} [{d}]: "),
        None => write!(err, "{question}: "),
    }
    .and_then(|_| err.flush())
    .map_err(|e| Error::io("writing the prompt", e))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::io("reading the answer", e))?;
    let answer = line.trim();
    Ok(if answer.is_empty() {
        default.map(str::to_string)
    } else {
        Some(answer.to_string())
    })
}

/// Asks for a password without echoing it.
pub fn password(question: &str) -> Result<String> {
    rpassword::prompt_password(question).map_err(|e| Error::io("reading the password", e))
}

/// Reads a password from standard input (one trailing newline is dropped).
pub fn password_from_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Error::io("reading the password from standard input", e))?;
    let s = s.strip_suffix('\n').unwrap_or(&s);
    let s = s.strip_suffix('\r').unwrap_or(s);
    if s.is_empty() {
        return Err(Error::Usage(
            "--password-stdin: standard input was empty".into(),
        ));
    }
    Ok(s.to_string())
}
