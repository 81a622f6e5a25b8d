//! The error type of the library and the exit codes the binary maps it to.

use std::path::PathBuf;

/// Exit code: everything was done.
pub const EXIT_OK: i32 = 0;
/// Exit code: the work failed (network, registry, bundle, digest, disk...).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code: the command line or the environment was wrong; nothing was done.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: done in part (`export --keep-going` left some images out; the bundle says which).
pub const EXIT_PARTIAL: i32 = 3;

/// Everything that can go wrong, with enough context to name the image, blob, registry or file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that cannot be done as asked (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The registry refused our credentials, or wanted some we do not have.
    #[error("registry {registry}: authentication failed: {detail}")]
    Auth { registry: String, detail: String },
    /// A manifest or blob that does not exist at the registry.
    #[error("{what}: not found in registry {registry}")]
    NotFound { registry: String, what: String },
    /// Any other registry or transport failure.
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    /// A registry or transport failure that may pass (a broken connection, a stall, 429, 5xx):
    /// worth another try within the operation's retry budget.
    #[error("registry {registry}: {detail}")]
    Transient {
        registry: String,
        detail: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Content that does not match the digest or size it was declared with.
    #[error("{what}: content does not match its digest or size: {detail}")]
    Integrity { what: String, detail: String },
    /// A bundle that is malformed, truncated, corrupt or hostile.
    #[error("bundle {}: {detail}", file.display())]
    Bundle { file: PathBuf, detail: String },
    /// A local I/O failure, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Several images failed; each is named in the message.
    #[error("{0}")]
    Failed(String),
    /// The work was done in part, as asked (exit 3).
    #[error("{0}")]
    Partial(String),
}

impl Error {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Partial(_) => EXIT_PARTIAL,
            _ => EXIT_FAILURE,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn bundle(file: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Bundle {
            file: file.into(),
            detail: detail.into(),
        }
    }

    pub fn transient(
        registry: impl Into<String>,
        detail: impl Into<String>,
        retry_after: Option<std::time::Duration>,
    ) -> Self {
        Error::Transient {
            registry: registry.into(),
            detail: detail.into(),
            retry_after,
        }
    }

    /// Names the object a registry failure was about (`blob sha256:… of reg/repo: stalled…`),
    /// unless the message already does.
    pub fn about(self, what: &str) -> Self {
        self.map_detail(|detail| {
            if detail.contains(what) {
                detail
            } else {
                format!("{what}: {detail}")
            }
        })
    }

    /// The same failure with the detail of a registry failure (`Registry`, `Transient`)
    /// rewritten by `f`; any other error as it is.
    pub fn map_detail(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Error::Registry { registry, detail } => Error::Registry {
                registry,
                detail: f(detail),
            },
            Error::Transient {
                registry,
                detail,
                retry_after,
            } => Error::Transient {
                registry,
                detail: f(detail),
                retry_after,
            },
            e => e,
        }
    }

    /// The message without its leading `registry NAME: `, to be said again of that registry.
    pub fn text_after(&self, registry: &str) -> String {
        let msg = self.to_string();
        match msg.strip_prefix(&format!("registry {registry}: ")) {
            Some(rest) => rest.to_string(),
            None => msg,
        }
    }

    pub fn registry(registry: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Registry {
            registry: registry.into(),
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what we were doing" to io::Result values.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
