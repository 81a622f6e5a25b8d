//! Resolving flags, the offline-deployment procedure's environment variables and credentials
//! into the settings a command runs with. Flags win over the environment; on a terminal a
//! missing value is asked for (through `prompt`); without one it is a usage error.

use crate::cli::RegistryArgs;
use crate::credentials::{self, Credentials};
use crate::error::{Error, Result};
use crate::prompt;
use crate::registry::TlsOptions;

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
    if prompt::interactive() {
        if let Some(v) = prompt::ask(question, default)? {
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
        prompt::password_from_stdin()?
    } else if let Some(p) = env(&pass_var) {
        p
    } else if prompt::interactive() {
        prompt::password(&format!(
            "Password for {username} at {} registry {registry}: ",
            side.label()
        ))?
    } else {
        return Err(Error::Usage(format!(
            "a password for {username} at {registry} is required: use --password-stdin or set {pass_var}"
        )));
    };
    Ok(Some(Credentials::new(username, password)))
}

pub fn tls(args: &RegistryArgs) -> TlsOptions {
    TlsOptions {
        ca_cert: args.ca_cert.clone(),
        insecure: args.insecure,
        plain_http: args.plain_http,
    }
}
