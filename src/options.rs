//! Options resolved in one place: every value a command runs with that can come from more
//! than one source (a flag, an environment variable, a terminal prompt, a config file, a
//! default) is decided here, and every fallback rule is in this file.
//!
//! | variable                          | flag                         | default                          | commands            |
//! |-----------------------------------|------------------------------|----------------------------------|---------------------|
//! | `SOURCE_DOCKER_REGISTRY`          | `--registry`                 | `mcr.microsoft.com` (\*)         | export, copy        |
//! | `SOURCE_DOCKER_REPOSITORY`        | `--repository`               | `arcdata` (\*)                   | export, copy        |
//! | `SOURCE_DOCKER_TAG`               | `--tag`                      | none: prompt, else usage error   | export, copy        |
//! | `SOURCE_DOCKER_USERNAME`          | `--username`                 | docker/podman saved credentials  | export, copy        |
//! | `SOURCE_DOCKER_PASSWORD`          | `--password-stdin` (no flag) | hidden prompt, else usage error  | export, copy        |
//! | `TARGET_DOCKER_REGISTRY`          | `--registry`, `--to-registry`| none: prompt, else usage error   | import, copy        |
//! | `TARGET_DOCKER_REPOSITORY`        | `--repository`, `--to-repository` | the bundle's namespaces     | import, copy        |
//! | `TARGET_DOCKER_TAG`               | `--tag`, `--to-tag`          | the bundle's tags                | import, copy        |
//! | `TARGET_DOCKER_USERNAME`          | `--username`, `--to-username`| docker/podman saved credentials  | import, copy        |
//! | `TARGET_DOCKER_PASSWORD`          | `--password-stdin`, `--to-password-stdin` | hidden prompt, else usage error | import, copy |
//! | `AIRLOCK_TIMEOUT`                 | `--timeout`                  | `60s`                            | export, import, copy|
//! | `AIRLOCK_CACHE_DIR`               | `--cache-dir`                | `$XDG_CACHE_HOME/airlock`, `~/.cache/airlock` | export, cache |
//! | `AIRLOCK_KEY_PASSWORD`            | none                         | hidden prompt, else usage error  | keygen, export --sign |
//! | `AIRLOCK_CHUNK_SIZE`              | none                         | `64M` (at least 5M)              | import, copy        |
//! | `AIRLOCK_STREAM_OVER`             | none                         | `256M`                           | export              |
//! | `SOURCE_DATE_EPOCH`               | none                         | now                              | export              |
//! | `TMPDIR` ([`crate::spill`])       | none                         | `/var/tmp`                       | export, copy, verify|
//! | `MALLOC_ARENA_MAX` (glibc)        | none                         | `2`                              | all                 |
//!
//! (\*) The offline procedure's defaults apply only in its mode: a `SOURCE_DOCKER_REGISTRY`,
//! `_REPOSITORY` or `_TAG` variable is set, or a terminal prompt offers them. With `--registry`
//! alone a short name sits at the registry's top level; with only `--tag` or `--repository`
//! and no terminal a short name is a usage error.
//!
//! The order is always: flag > variable > prompt (on a terminal) > default. An empty flag or
//! variable counts as unset. Passwords never come from flags. `AIRLOCK_TIMEOUT` and
//! `AIRLOCK_CACHE_DIR` are read by clap (so `--help` shows them) with the same order.
//!
//! The environment is read through [`Env`] and the terminal through [`Prompter`], so the unit
//! tests below check the whole table without touching the process environment.

use crate::cli::{CopyArgs, ExportArgs, ImportArgs, OutputArgs, RegistryArgs};
use crate::credentials::{self, Credentials};
use crate::error::{Error, Result};
use crate::reference::validate_repository;
use crate::registry::{RetryPolicy, TlsOptions};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_SOURCE_REGISTRY: &str = "mcr.microsoft.com";
pub const DEFAULT_SOURCE_REPOSITORY: &str = "arcdata";

/// The upload chunk size when `AIRLOCK_CHUNK_SIZE` does not say.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// Where environment variables come from: the process ([`ProcessEnv`]) or, in tests, a map.
pub trait Env {
    /// The variable's value as set (possibly empty).
    fn raw(&self, name: &str) -> Option<String>;

    /// The variable when it is set and not empty (an empty variable counts as unset).
    fn var(&self, name: &str) -> Option<String> {
        self.raw(name).filter(|v| !v.is_empty())
    }
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn raw(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn raw(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Questions on a terminal: the real one ([`Terminal`]) or, in tests, scripted answers.
pub trait Prompter {
    /// Whether questions may be asked at all.
    fn interactive(&self) -> bool;
    /// A visible question; an empty answer takes the default.
    fn ask(&self, question: &str, default: Option<&str>) -> Result<Option<String>>;
    /// A hidden question (passwords).
    fn password(&self, question: &str) -> Result<String>;
    /// A password piped on standard input (`--password-stdin`).
    fn password_from_stdin(&self) -> Result<String>;
}

/// The process's terminal (see `crate::prompt`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Terminal;

impl Prompter for Terminal {
    fn interactive(&self) -> bool {
        crate::prompt::interactive()
    }
    fn ask(&self, question: &str, default: Option<&str>) -> Result<Option<String>> {
        crate::prompt::ask(question, default)
    }
    fn password(&self, question: &str) -> Result<String> {
        crate::prompt::password(question)
    }
    fn password_from_stdin(&self) -> Result<String> {
        crate::prompt::password_from_stdin()
    }
}

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

/// A flag's value unless empty, else the variable's.
fn flag_or_var(flag: Option<&String>, env: &dyn Env, var: &str) -> Option<String> {
    flag.filter(|v| !v.is_empty())
        .cloned()
        .or_else(|| env.var(var))
}

/// What a flag or variable gave (`given`), else (on a terminal) a prompt with an optional
/// default, else the default when `default_without_tty`, else a usage error naming the flag
/// and the variable.
fn given_or_asked(
    given: Option<String>,
    flag: &str,
    var: &str,
    question: &str,
    default: Option<&str>,
    default_without_tty: bool,
    prompter: &dyn Prompter,
) -> Result<String> {
    if let Some(v) = given {
        return Ok(v);
    }
    if prompter.interactive() {
        if let Some(v) = prompter.ask(question, default)? {
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

/// Who to log in as, on one side: the username from its flag or variable, and where the
/// password will come from. `Debug` never shows the password.
#[derive(Clone)]
pub struct Login {
    side: Side,
    /// `--username` as given (even empty, it says credentials were meant).
    username_flag: Option<String>,
    /// The username: the flag unless empty, else `*_DOCKER_USERNAME`.
    username: Option<String>,
    /// `--password-stdin`.
    password_stdin: bool,
    /// `*_DOCKER_PASSWORD`.
    password_var: Option<String>,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("side", &self.side)
            .field("username", &self.username)
            .field("password_stdin", &self.password_stdin)
            .field(
                "password_var",
                &self.password_var.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Login {
    pub fn resolve(args: &RegistryArgs, side: Side, env: &dyn Env) -> Login {
        Login {
            side,
            username_flag: args.username.clone(),
            username: flag_or_var(args.username.as_ref(), env, &side.var("USERNAME")),
            password_stdin: args.password_stdin,
            password_var: env.var(&side.var("PASSWORD")),
        }
    }

    /// Whether credentials were asked for explicitly (a username flag or variable, or
    /// `--password-stdin`).
    pub fn explicit(&self) -> bool {
        self.username_flag.is_some() || self.password_stdin || self.username.is_some()
    }

    /// Credentials for `registry` from, in order: the username (flag, else variable) with
    /// `--password-stdin`, else the password variable, else a hidden prompt; without a
    /// username, docker's config.json and credential helpers, then podman's auth.json; else
    /// anonymous (`None`).
    pub fn credentials(
        &self,
        registry: &str,
        prompter: &dyn Prompter,
    ) -> Result<Option<Credentials>> {
        let user_var = self.side.var("USERNAME");
        let pass_var = self.side.var("PASSWORD");
        let Some(username) = self.username.clone() else {
            if self.password_stdin {
                return Err(Error::Usage(format!(
                    "--password-stdin needs a username: give --username or set {user_var}"
                )));
            }
            return Ok(credentials::from_config_files(registry));
        };
        let password = if self.password_stdin {
            prompter.password_from_stdin()?
        } else if let Some(p) = &self.password_var {
            p.clone()
        } else if prompter.interactive() {
            prompter.password(&format!(
                "Password for {username} at {} registry {registry}: ",
                self.side.label()
            ))?
        } else {
            return Err(Error::Usage(format!(
                "a password for {username} at {registry} is required: use --password-stdin or set {pass_var}"
            )));
        };
        Ok(Some(Credentials::new(username, password)))
    }
}

/// The TLS flags of one side.
pub fn tls(args: &RegistryArgs) -> TlsOptions {
    TlsOptions {
        ca_cert: args.ca_cert.clone(),
        insecure: args.insecure,
        plain_http: args.plain_http,
    }
}

/// Concurrency and retry settings (`--jobs`, `--retries`, `--timeout`/`AIRLOCK_TIMEOUT`).
#[derive(Clone, Debug)]
pub struct Transfer {
    pub jobs: usize,
    pub retry: RetryPolicy,
}

impl Transfer {
    pub fn resolve(out: &OutputArgs) -> Transfer {
        Transfer {
            jobs: out.jobs as usize,
            retry: out.retry_policy(),
        }
    }
}

/// The source side of export and copy (`--registry`… and `SOURCE_DOCKER_*`).
#[derive(Clone, Debug)]
pub struct SourceSide {
    /// The offline procedure's mode: a `SOURCE_DOCKER_REGISTRY`, `_REPOSITORY` or `_TAG`
    /// variable is set. Only then do its defaults apply without a terminal.
    pub env_mode: bool,
    /// A registry was given (flag or variable).
    pub registry_given: bool,
    /// Short names (no `/`) expand with registry, repository and tag: a registry, repository
    /// or tag was given (flag or variable).
    pub namespace_mode: bool,
    /// `--registry` as given, else `SOURCE_DOCKER_REGISTRY`: the registry explicit
    /// credentials belong to.
    pub credentials_for: Option<String>,
    registry: Option<String>,
    repository_flag: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
    pub login: Login,
    pub tls: TlsOptions,
}

impl SourceSide {
    pub fn resolve(args: &RegistryArgs, env: &dyn Env) -> SourceSide {
        let env_mode = [
            "SOURCE_DOCKER_REGISTRY",
            "SOURCE_DOCKER_REPOSITORY",
            "SOURCE_DOCKER_TAG",
        ]
        .iter()
        .any(|v| env.var(v).is_some());
        let registry = flag_or_var(args.registry.as_ref(), env, "SOURCE_DOCKER_REGISTRY");
        let registry_given = registry.is_some();
        SourceSide {
            env_mode,
            registry_given,
            namespace_mode: registry_given
                || env_mode
                || args.repository.is_some()
                || args.tag.is_some(),
            credentials_for: args
                .registry
                .clone()
                .or_else(|| env.var("SOURCE_DOCKER_REGISTRY")),
            registry,
            repository_flag: args.repository.clone(),
            repository: flag_or_var(args.repository.as_ref(), env, "SOURCE_DOCKER_REPOSITORY"),
            tag: flag_or_var(args.tag.as_ref(), env, "SOURCE_DOCKER_TAG"),
            login: Login::resolve(args, Side::Source, env),
            tls: tls(args),
        }
    }

    /// The registry and repository short names expand with (`name` is the first short
    /// name, for the message). Without a registry (flag or variable), outside the procedure's
    /// mode and without a terminal this is a usage error; the procedure's defaults
    /// (`mcr.microsoft.com`, `arcdata`) apply in its mode or as a prompt's suggestion; with a
    /// registry flag alone the repository is empty (the registry's top level).
    pub fn short_name_source(
        &self,
        name: &str,
        prompter: &dyn Prompter,
    ) -> Result<(String, String)> {
        if !self.registry_given && !self.env_mode && !prompter.interactive() {
            return Err(Error::Usage(format!(
                "{name} is a short name, and no source registry was given: add \
                 --registry HOST (or set SOURCE_DOCKER_REGISTRY; the offline \
                 procedure's registry is {DEFAULT_SOURCE_REGISTRY} with repository \
                 {DEFAULT_SOURCE_REPOSITORY}), or name the image in full (for example \
                 docker.io/library/{name}:TAG)"
            )));
        }
        let reg = given_or_asked(
            self.registry.clone(),
            "--registry",
            "SOURCE_DOCKER_REGISTRY",
            "Source container registry",
            Some(DEFAULT_SOURCE_REGISTRY),
            self.env_mode,
            prompter,
        )?;
        let repo = if self.env_mode || prompter.interactive() {
            given_or_asked(
                self.repository.clone(),
                "--repository",
                "SOURCE_DOCKER_REPOSITORY",
                "Source repository",
                Some(DEFAULT_SOURCE_REPOSITORY),
                self.env_mode,
                prompter,
            )?
        } else {
            self.repository_flag.clone().unwrap_or_default()
        };
        Ok((reg, repo))
    }

    /// The tag for short names written without one: `--tag`, else `SOURCE_DOCKER_TAG`, else a
    /// prompt, else a usage error.
    pub fn short_name_tag(&self, prompter: &dyn Prompter) -> Result<String> {
        given_or_asked(
            self.tag.clone(),
            "--tag",
            "SOURCE_DOCKER_TAG",
            "Source image tag",
            None,
            false,
            prompter,
        )
    }
}

/// The target side of import and copy (`--registry`… for import, `--to-registry`… for copy;
/// `TARGET_DOCKER_*` for both).
#[derive(Clone, Debug)]
pub struct TargetSide {
    /// Required: flag, else `TARGET_DOCKER_REGISTRY`, else a prompt, else a usage error.
    pub registry: String,
    /// Replaces the namespace the bundle recorded.
    pub repository: Option<String>,
    /// Replaces every image's tag.
    pub tag: Option<String>,
    pub login: Login,
    pub tls: TlsOptions,
}

impl TargetSide {
    /// `flag` is the flags' prefix: `--` for import, `--to-` for copy.
    pub fn resolve(
        r: &RegistryArgs,
        flag: &str,
        env: &dyn Env,
        prompter: &dyn Prompter,
    ) -> Result<TargetSide> {
        let registry = given_or_asked(
            flag_or_var(r.registry.as_ref(), env, "TARGET_DOCKER_REGISTRY"),
            &format!("{flag}registry"),
            "TARGET_DOCKER_REGISTRY",
            "Target container registry",
            None,
            false,
            prompter,
        )?;
        crate::reference::validate_registry(&registry).map_err(Error::Usage)?;
        let repository = flag_or_var(r.repository.as_ref(), env, "TARGET_DOCKER_REPOSITORY");
        if let Some(ns) = &repository {
            validate_repository(ns).map_err(|e| Error::Usage(format!("{flag}repository: {e}")))?;
        }
        Ok(TargetSide {
            registry,
            repository,
            tag: flag_or_var(r.tag.as_ref(), env, "TARGET_DOCKER_TAG"),
            login: Login::resolve(r, Side::Target, env),
            tls: tls(r),
        })
    }
}

/// `airlock export`.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub source: SourceSide,
    pub transfer: Transfer,
    /// `--split-size`, parsed.
    pub split_size: Option<u64>,
    /// The bundle's time: `SOURCE_DATE_EPOCH`, else now.
    pub mtime: u64,
}

impl ExportOptions {
    /// The source side, which reading the image list needs first (it cannot fail).
    pub fn source(args: &ExportArgs, env: &dyn Env) -> SourceSide {
        SourceSide::resolve(&args.registry, env)
    }

    /// The rest, checked after the image list: split size and time. (The cache directory is
    /// resolved by [`cache_dir`] when export first needs it.)
    pub fn resolve(args: &ExportArgs, source: SourceSide, env: &dyn Env) -> Result<Self> {
        let split_size = args
            .split_size
            .as_deref()
            .map(crate::units::parse_size)
            .transpose()?;
        let mtime = match env.var("SOURCE_DATE_EPOCH") {
            Some(s) => s.parse::<u64>().map_err(|_| {
                Error::Usage(format!(
                    "SOURCE_DATE_EPOCH={s:?} is not a number of seconds"
                ))
            })?,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        Ok(ExportOptions {
            source,
            transfer: Transfer::resolve(&args.out),
            split_size,
            mtime,
        })
    }
}

/// `airlock import`.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub target: TargetSide,
    pub transfer: Transfer,
}

impl ImportOptions {
    pub fn resolve(args: &ImportArgs, env: &dyn Env, prompter: &dyn Prompter) -> Result<Self> {
        Ok(ImportOptions {
            target: TargetSide::resolve(&args.registry, "--", env, prompter)?,
            transfer: Transfer::resolve(&args.out),
        })
    }
}

/// `airlock copy`: export's source side, import's target side as `--to-*`.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub source: SourceSide,
    pub target: TargetSide,
    pub transfer: Transfer,
}

impl CopyOptions {
    /// Checks that at most one thing reads standard input, then resolves both sides.
    pub fn resolve(args: &CopyArgs, env: &dyn Env, prompter: &dyn Prompter) -> Result<Self> {
        if args.registry.password_stdin && args.to.to_password_stdin {
            return Err(Error::Usage(
                "--password-stdin and --to-password-stdin both read standard input: give one of \
                 the passwords through SOURCE_DOCKER_PASSWORD or TARGET_DOCKER_PASSWORD instead"
                    .into(),
            ));
        }
        if args.to.to_password_stdin && args.images_file.as_deref() == Some(Path::new("-")) {
            return Err(Error::Usage(
                "-f - and --to-password-stdin both read standard input: give the target password \
                 through TARGET_DOCKER_PASSWORD instead"
                    .into(),
            ));
        }
        let target = TargetSide::resolve(&args.to.registry_args(), "--to-", env, prompter)?;
        Ok(CopyOptions {
            source: SourceSide::resolve(&args.registry, env),
            target,
            transfer: Transfer::resolve(&args.out),
        })
    }
}

/// The cache directory: the one given (`--cache-dir`, or `AIRLOCK_CACHE_DIR` through clap),
/// else `$XDG_CACHE_HOME/airlock`, else `$HOME/.cache/airlock`.
pub fn cache_dir(given: Option<&Path>, env: &dyn Env) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    if let Some(x) = env.var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(x).join("airlock"));
    }
    if let Some(h) = env.var("HOME") {
        return Ok(PathBuf::from(h).join(".cache").join("airlock"));
    }
    Err(Error::Usage(
        "no cache directory: give --cache-dir or set XDG_CACHE_HOME or HOME".into(),
    ))
}

/// The password of an encrypted secret key: `AIRLOCK_KEY_PASSWORD` (the caller prompts when
/// it is unset).
pub fn key_password(env: &dyn Env) -> Option<String> {
    env.var("AIRLOCK_KEY_PASSWORD")
}

/// The upload chunk size: `AIRLOCK_CHUNK_SIZE` (K/M/G suffixes; an unreadable value is
/// ignored) or 64 MiB. The upload applies its own floor and the registry's minimum.
pub fn chunk_size(env: &dyn Env) -> u64 {
    env.var("AIRLOCK_CHUNK_SIZE")
        .and_then(|v| crate::units::parse_size(&v).ok())
        .unwrap_or(DEFAULT_CHUNK_SIZE)
}

/// The size above which export streams blobs instead of caching them:
/// `AIRLOCK_STREAM_OVER` (an unreadable value is ignored), else `default`.
pub fn stream_over(env: &dyn Env, default: u64) -> u64 {
    env.var("AIRLOCK_STREAM_OVER")
        .and_then(|v| crate::units::parse_size(&v).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::cell::RefCell;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A scripted terminal: `None` is no terminal; answers are taken in order.
    struct Script {
        tty: bool,
        answers: RefCell<Vec<String>>,
        asked: RefCell<Vec<String>>,
    }

    impl Script {
        fn none() -> Script {
            Script {
                tty: false,
                answers: RefCell::new(Vec::new()),
                asked: RefCell::new(Vec::new()),
            }
        }
        fn tty(answers: &[&str]) -> Script {
            Script {
                tty: true,
                answers: RefCell::new(answers.iter().rev().map(|s| s.to_string()).collect()),
                asked: RefCell::new(Vec::new()),
            }
        }
    }

    impl Prompter for Script {
        fn interactive(&self) -> bool {
            self.tty
        }
        fn ask(&self, question: &str, default: Option<&str>) -> Result<Option<String>> {
            self.asked.borrow_mut().push(question.to_string());
            let a = self.answers.borrow_mut().pop().unwrap_or_default();
            Ok(if a.is_empty() {
                default.map(str::to_string)
            } else {
                Some(a)
            })
        }
        fn password(&self, question: &str) -> Result<String> {
            self.asked.borrow_mut().push(question.to_string());
            Ok(self.answers.borrow_mut().pop().unwrap_or_default())
        }
        fn password_from_stdin(&self) -> Result<String> {
            Ok("from-stdin".into())
        }
    }

    fn export(argv: &str) -> ExportArgs {
        let argv = format!("airlock export -o out.tar.zst {argv}");
        match Cli::try_parse_from(argv.split_whitespace()).map(|c| c.command) {
            Ok(Command::Export(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn import(argv: &str) -> ImportArgs {
        let argv = format!("airlock import b.tar.zst {argv}");
        match Cli::try_parse_from(argv.split_whitespace()).map(|c| c.command) {
            Ok(Command::Import(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn copy(argv: &str) -> CopyArgs {
        let argv = format!("airlock copy {argv}");
        match Cli::try_parse_from(argv.split_whitespace()).map(|c| c.command) {
            Ok(Command::Copy(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn usage(r: Result<impl fmt::Debug>) -> String {
        match r {
            Err(Error::Usage(m)) => m,
            other => panic!("not a usage error: {other:?}"),
        }
    }

    #[test]
    fn flag_beats_variable_and_variable_beats_default() {
        let e = env(&[
            ("SOURCE_DOCKER_REGISTRY", "var.io"),
            ("SOURCE_DOCKER_REPOSITORY", "varns"),
            ("SOURCE_DOCKER_TAG", "vtag"),
        ]);
        let s = SourceSide::resolve(&export("--registry flag.io --tag ftag").registry, &e);
        assert_eq!(
            s.short_name_source("a", &Script::none()).unwrap(),
            ("flag.io".to_string(), "varns".to_string())
        );
        assert_eq!(s.short_name_tag(&Script::none()).unwrap(), "ftag");
        let s = SourceSide::resolve(&export("").registry, &e);
        assert_eq!(
            s.short_name_source("a", &Script::none()).unwrap(),
            ("var.io".to_string(), "varns".to_string())
        );
        assert_eq!(s.short_name_tag(&Script::none()).unwrap(), "vtag");
    }

    #[test]
    fn empty_variable_counts_as_unset() {
        let e = env(&[
            ("SOURCE_DOCKER_REGISTRY", ""),
            ("SOURCE_DOCKER_REPOSITORY", ""),
            ("SOURCE_DOCKER_TAG", ""),
        ]);
        let s = SourceSide::resolve(&export("").registry, &e);
        assert!(!s.env_mode && !s.registry_given && !s.namespace_mode);
        let t = usage(TargetSide::resolve(
            &import("").registry,
            "--",
            &env(&[("TARGET_DOCKER_REGISTRY", "")]),
            &Script::none(),
        ));
        assert!(
            t.contains("give --registry or set TARGET_DOCKER_REGISTRY"),
            "{t}"
        );
        // An empty flag counts as unset too: the variable fills in.
        let s = SourceSide::resolve(
            &export("--tag=").registry,
            &env(&[("SOURCE_DOCKER_TAG", "v1")]),
        );
        assert_eq!(s.short_name_tag(&Script::none()).unwrap(), "v1");
    }

    #[test]
    fn source_mode_defaults_only_in_the_procedures_mode_or_on_a_prompt() {
        // A SOURCE_DOCKER_* variable chooses the procedure's mode: its defaults fill in.
        let s = SourceSide::resolve(
            &export("").registry,
            &env(&[("SOURCE_DOCKER_TAG", "v1.14.0")]),
        );
        assert!(s.env_mode && s.namespace_mode);
        assert_eq!(
            s.short_name_source("a", &Script::none()).unwrap(),
            (
                DEFAULT_SOURCE_REGISTRY.to_string(),
                DEFAULT_SOURCE_REPOSITORY.to_string()
            )
        );
        // --registry alone: no namespace, no procedure default.
        let s = SourceSide::resolve(&export("--registry r.io").registry, &env(&[]));
        assert!(!s.env_mode);
        assert_eq!(
            s.short_name_source("a", &Script::none()).unwrap(),
            ("r.io".to_string(), String::new())
        );
        // A terminal offers the defaults; an empty answer takes them.
        let s = SourceSide::resolve(&export("--tag v1").registry, &env(&[]));
        let tty = Script::tty(&["", ""]);
        assert_eq!(
            s.short_name_source("a", &tty).unwrap(),
            (
                DEFAULT_SOURCE_REGISTRY.to_string(),
                DEFAULT_SOURCE_REPOSITORY.to_string()
            )
        );
        assert_eq!(
            *tty.asked.borrow(),
            vec!["Source container registry", "Source repository"]
        );
        // Nothing at all: full references only, short names are not expanded.
        assert!(!SourceSide::resolve(&export("").registry, &env(&[])).namespace_mode);
    }

    #[test]
    fn tag_alone_with_short_names_is_a_usage_error() {
        for argv in ["--tag v1", "--repository ns"] {
            let s = SourceSide::resolve(&export(argv).registry, &env(&[]));
            assert!(s.namespace_mode, "{argv}");
            let m = usage(s.short_name_source("arc-controller", &Script::none()));
            assert!(
                m.starts_with("arc-controller is a short name, and no source registry was given: add --registry HOST"),
                "{m}"
            );
        }
        // No tag anywhere and no terminal: the tag is a usage error naming flag and variable.
        let s = SourceSide::resolve(&export("--registry r.io").registry, &env(&[]));
        let m = usage(s.short_name_tag(&Script::none()));
        assert_eq!(
            m,
            "Source image tag is required: give --tag or set SOURCE_DOCKER_TAG"
        );
    }

    #[test]
    fn import_target_comes_from_flags_then_target_docker_variables() {
        let e = env(&[
            ("TARGET_DOCKER_REGISTRY", "var.io:5000"),
            ("TARGET_DOCKER_REPOSITORY", "varns"),
            ("TARGET_DOCKER_TAG", "vtag"),
            ("SOURCE_DOCKER_REGISTRY", "wrong.io"),
        ]);
        let o = ImportOptions::resolve(&import(""), &e, &Script::none()).unwrap();
        assert_eq!(o.target.registry, "var.io:5000");
        assert_eq!(o.target.repository.as_deref(), Some("varns"));
        assert_eq!(o.target.tag.as_deref(), Some("vtag"));
        let o = ImportOptions::resolve(
            &import("--registry flag.io --repository fns --tag ftag -j 7"),
            &e,
            &Script::none(),
        )
        .unwrap();
        assert_eq!(o.target.registry, "flag.io");
        assert_eq!(o.target.repository.as_deref(), Some("fns"));
        assert_eq!(o.target.tag.as_deref(), Some("ftag"));
        assert_eq!(o.transfer.jobs, 7);
        // On a terminal a missing registry is asked for.
        let tty = Script::tty(&["asked.io"]);
        let o = ImportOptions::resolve(&import(""), &env(&[]), &tty).unwrap();
        assert_eq!(o.target.registry, "asked.io");
        assert!(o.target.repository.is_none() && o.target.tag.is_none());
        let m = usage(ImportOptions::resolve(
            &import("--repository Bad/"),
            &e,
            &Script::none(),
        ));
        assert!(m.starts_with("--repository: "), "{m}");
    }

    #[test]
    fn copy_to_flags_beat_target_docker_variables() {
        let e = env(&[
            ("TARGET_DOCKER_REGISTRY", "var.io"),
            ("TARGET_DOCKER_TAG", "vtag"),
            ("TARGET_DOCKER_USERNAME", "varuser"),
            ("TARGET_DOCKER_PASSWORD", "varpass"),
        ]);
        let o = CopyOptions::resolve(
            &copy("a/b:1 --registry src.io --to-registry to.io --to-username touser"),
            &e,
            &Script::none(),
        )
        .unwrap();
        assert_eq!(o.target.registry, "to.io");
        assert_eq!(o.target.tag.as_deref(), Some("vtag"));
        let c = o
            .target
            .login
            .credentials("to.io", &Script::none())
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("touser", "varpass"));
        // The source side's --registry is not the target's.
        assert_eq!(o.source.credentials_for.as_deref(), Some("src.io"));
        let o = CopyOptions::resolve(&copy("a/b:1"), &e, &Script::none()).unwrap();
        assert_eq!(o.target.registry, "var.io");
        let m = usage(CopyOptions::resolve(
            &copy("a/b:1"),
            &env(&[]),
            &Script::none(),
        ));
        assert!(
            m.contains("give --to-registry or set TARGET_DOCKER_REGISTRY"),
            "{m}"
        );
        let m = usage(CopyOptions::resolve(
            &copy("a/b:1 --password-stdin --to-password-stdin"),
            &e,
            &Script::none(),
        ));
        assert!(
            m.starts_with("--password-stdin and --to-password-stdin"),
            "{m}"
        );
    }

    #[test]
    fn passwords_never_come_from_flags() {
        for argv in ["--password secret", "-p secret", "--to-password secret"] {
            let argv = format!("airlock copy a/b:1 {argv}");
            assert!(
                Cli::try_parse_from(argv.split_whitespace()).is_err(),
                "{argv} was accepted"
            );
        }
        // The password comes from --password-stdin, the variable, or a hidden prompt.
        let e = env(&[("SOURCE_DOCKER_PASSWORD", "varpass")]);
        let s = SourceSide::resolve(&export("-u me --password-stdin").registry, &e);
        let c = s
            .login
            .credentials("r.io", &Script::none())
            .unwrap()
            .unwrap();
        assert_eq!(c.password(), "from-stdin");
        let s = SourceSide::resolve(&export("-u me").registry, &e);
        let c = s
            .login
            .credentials("r.io", &Script::none())
            .unwrap()
            .unwrap();
        assert_eq!(c.password(), "varpass");
        let s = SourceSide::resolve(&export("-u me").registry, &env(&[]));
        let tty = Script::tty(&["typed"]);
        let c = s.login.credentials("r.io", &tty).unwrap().unwrap();
        assert_eq!(c.password(), "typed");
        assert_eq!(
            *tty.asked.borrow(),
            vec!["Password for me at source registry r.io: "]
        );
        let m = usage(s.login.credentials("r.io", &Script::none()));
        assert!(
            m.contains("use --password-stdin or set SOURCE_DOCKER_PASSWORD"),
            "{m}"
        );
        let s = SourceSide::resolve(&export("--password-stdin").registry, &env(&[]));
        let m = usage(s.login.credentials("r.io", &Script::none()));
        assert!(m.starts_with("--password-stdin needs a username"), "{m}");
    }

    #[test]
    fn debug_output_redacts_passwords() {
        let e = env(&[
            ("SOURCE_DOCKER_USERNAME", "me"),
            ("SOURCE_DOCKER_PASSWORD", "hunter2-secret"),
            ("TARGET_DOCKER_REGISTRY", "t.io"),
            ("TARGET_DOCKER_PASSWORD", "hunter3-secret"),
        ]);
        let o =
            CopyOptions::resolve(&copy("a/b:1 --to-username you"), &e, &Script::none()).unwrap();
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(o.source.login.explicit());
    }

    #[test]
    fn airlock_variables() {
        let e = env(&[("AIRLOCK_CHUNK_SIZE", "8M"), ("AIRLOCK_STREAM_OVER", "1G")]);
        assert_eq!(chunk_size(&e), 8 << 20);
        assert_eq!(stream_over(&e, 5), 1 << 30);
        let bad = env(&[("AIRLOCK_CHUNK_SIZE", "lots"), ("AIRLOCK_STREAM_OVER", "")]);
        assert_eq!(chunk_size(&bad), DEFAULT_CHUNK_SIZE);
        assert_eq!(stream_over(&bad, 5), 5);
        assert_eq!(
            key_password(&env(&[("AIRLOCK_KEY_PASSWORD", "k")])).as_deref(),
            Some("k")
        );
        assert_eq!(key_password(&env(&[("AIRLOCK_KEY_PASSWORD", "")])), None);
        // The cache: flag (or AIRLOCK_CACHE_DIR via clap), else XDG_CACHE_HOME, else HOME.
        let both = env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(
            cache_dir(Some(Path::new("/given")), &both).unwrap(),
            Path::new("/given")
        );
        assert_eq!(cache_dir(None, &both).unwrap(), Path::new("/x/airlock"));
        assert_eq!(
            cache_dir(None, &env(&[("XDG_CACHE_HOME", ""), ("HOME", "/h")])).unwrap(),
            Path::new("/h/.cache/airlock")
        );
        assert!(cache_dir(None, &env(&[])).is_err());
        // SOURCE_DATE_EPOCH sets the bundle's time; a bad value is a usage error.
        let a = export("--split-size 4G");
        let o = ExportOptions::resolve(
            &a,
            SourceSide::resolve(&a.registry, &both),
            &env(&[("SOURCE_DATE_EPOCH", "1700000000")]),
        )
        .unwrap();
        assert_eq!((o.mtime, o.split_size), (1_700_000_000, Some(4 << 30)));
        let m = usage(ExportOptions::resolve(
            &a,
            SourceSide::resolve(&a.registry, &both),
            &env(&[("SOURCE_DATE_EPOCH", "yesterday")]),
        ));
        assert!(m.starts_with("SOURCE_DATE_EPOCH=\"yesterday\""), "{m}");
    }
}
