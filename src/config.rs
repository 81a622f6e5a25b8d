//! Resolving flags, the offline-deployment procedure's environment variables, credentials
//! and interactive prompts into the settings a command runs with. Flags win over the
//! environment; on a terminal a missing value is asked for; without one it is a usage error.

use crate::cli::RegistryArgs;
use crate::credentials::{self, Credentials};
use crate::error::{Error, Result};
use crate::registry::TlsOptions;
use std::io::{IsTerminal, Read, Write};

pub const DEFAULT_SOURCE_REGISTRY: &str = "mcr.microsoft.com";
pub const DEFAULT_SOURCE_REPOSITORY: &str = "arcdata";

/// Which side of the air gap: selects the `SOURCE_DOCKER_*` or `TARGET_DOCKER_*` variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn var(self, what: &str) -> String {
        match self {
            Side::Source => format!("SOURCE_DOCKER_{what}"),
            Side::Target => format!("TARGET_DOCKER_{what}"),
        }
    }
    fn label(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// A non-empty environment variable.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether we may ask questions: stdin and stderr are both terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks on the terminal; an empty answer takes the default.
pub fn prompt(question: &str, default: Option<&str>) -> Result<Option<String>> {
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

/// A flag, else its environment variable, else (on a terminal) a prompt with an optional
/// default, else the default when `default_without_tty`, else a usage error naming both.
pub fn value(
    flag_value: Option<&String>,
    flag: &str,
    var: &str,
    question: &str,
    default: Option<&str>,
    default_without_tty: bool,
) -> Result<String> {
    if let Some(v) = flag_value.filter(|v| !v.is_empty()) {
        return Ok(v.clone());
    }
    if let Some(v) = env(var) {
        return Ok(v);
    }
    if interactive() {
        if let Some(v) = prompt(question, default)? {
            return Ok(v);
        }
    } else if default_without_tty {
        if let Some(d) = default {
            return Ok(d.to_string());
        }
    }
    Err(Error::Usage(format!(
        "{question} is required: give {flag} or set {var}"
    )))
}

/// Reads a password from standard input (one trailing newline is dropped).
fn password_from_stdin() -> Result<String> {
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

/// Credentials for `registry` from, in order: `--username` with `--password-stdin`, the
/// side's environment variables (a hidden prompt completes a username without password),
/// docker's config.json and credential helpers, podman's auth.json; else anonymous.
pub fn credentials(args: &RegistryArgs, side: Side, registry: &str) -> Result<Option<Credentials>> {
    let user_var = side.var("USERNAME");
    let pass_var = side.var("PASSWORD");
    let username = args
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| env(&user_var));
    let Some(username) = username else {
        if args.password_stdin {
            return Err(Error::Usage(format!(
                "--password-stdin needs a username: give --username or set {user_var}"
            )));
        }
        return Ok(credentials::from_config_files(registry));
    };
    let password = if args.password_stdin {
        password_from_stdin()?
    } else if let Some(p) = env(&pass_var) {
        p
    } else if interactive() {
        rpassword::prompt_password(format!(
            "Password for {username} at {} registry {registry}: ",
            side.label()
        ))
        .map_err(|e| Error::io("reading the password", e))?
    } else {
        return Err(Error::Usage(format!(
            "a password for {username} at {registry} is required: use --password-stdin or set {pass_var}"
        )));
    };
    Ok(Some(Credentials::new(username, password)))
}

/// Asks for a username and password on a terminal, after a registry said it needs them.
pub fn prompt_credentials(registry: &str) -> Result<Option<Credentials>> {
    if !interactive() {
        return Ok(None);
    }
    let Some(user) = prompt(&format!("Username for {registry}"), None)? else {
        return Ok(None);
    };
    let pass = rpassword::prompt_password(format!("Password for {user} at {registry}: "))
        .map_err(|e| Error::io("reading the password", e))?;
    Ok(Some(Credentials::new(user, pass)))
}

/// Connects to a registry; when it wants credentials we lack and a terminal is attached, asks
/// for a username and password and tries once more.
pub async fn connect(
    name: &str,
    tls: &TlsOptions,
    creds: Option<Credentials>,
    retry: crate::registry::RetryPolicy,
) -> Result<crate::registry::Registry> {
    use crate::registry::Registry;
    match Registry::connect(name, tls, creds.clone(), retry.clone()).await {
        Err(Error::Auth { .. }) if creds.is_none() && interactive() => {
            let creds = prompt_credentials(name)?;
            Registry::connect(name, tls, creds, retry).await
        }
        r => r,
    }
}

/// Prints a serialisable summary as pretty JSON on stdout (for `--json`).
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)
        .map_err(|e| Error::Failed(format!("printing JSON: {e}")))?;
    writeln!(stdout).map_err(|e| Error::io("writing to stdout", e))
}

pub fn tls(args: &RegistryArgs) -> TlsOptions {
    TlsOptions {
        ca_cert: args.ca_cert.clone(),
        insecure: args.insecure,
        plain_http: args.plain_http,
    }
}

/// Parses `4G`, `700M`, `512K`, `1T` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(Error::Usage(format!("size {s:?}: unknown suffix {c}"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        Error::Usage(format!(
            "size {s:?} is not a number with an optional K/M/G/T suffix"
        ))
    })?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::Usage(format!("size {s:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("700m").unwrap(), 700 << 20);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
    }
}
