//! The parsed, validated model of an image-set file: [`ImageSet`], its [`RegistrySet`]s with
//! their [`ImageRule`]s, [`CredentialSource`] and [`Exclude`], and the [`Selected`] images a
//! selection resolves to.

use super::tags::TagRule;
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::reference::{validate_repository, validate_tag, Reference};
use crate::registry::TlsOptions;
use std::fmt;
use std::path::PathBuf;

/// A parsed and validated image-set file.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// The file it was read from (as given), used in every error message.
    pub path: PathBuf,
    /// The global platform filter (`os/arch[/variant]`); empty keeps every platform.
    pub platforms: Vec<String>,
    /// The registries, in file order.
    pub registries: Vec<RegistrySet>,
    /// The file's text, to find lines for errors found while selecting.
    pub(super) text: String,
}

/// One entry of `registries`.
#[derive(Clone, Debug)]
pub struct RegistrySet {
    /// `host[:port]` as written in the file.
    pub registry: String,
    /// The namespace image names are below; empty when names are full repository paths.
    pub namespace: String,
    pub credentials: CredentialSource,
    /// TLS settings; a relative `caCert` is resolved against the file's directory.
    pub tls: TlsOptions,
    /// The listed images, in file order.
    pub images: Vec<ImageRule>,
    /// `Some(rule)` when `catalog: true`: every catalog repository under the namespace that is
    /// not listed in `images` nor excluded by name, with this tag rule (`catalogTags`).
    pub catalog: Option<TagRule>,
    /// `exclude`: repository names (below the namespace), or `name:tag`.
    pub exclude: Vec<Exclude>,
}

/// Where a registry's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `docker` (the default): the command line and `SOURCE_DOCKER_*` environment, else
    /// docker's config.json and credential helpers, else podman's auth.json.
    Default,
    /// `anonymous`: never send credentials.
    Anonymous,
    /// `{usernameEnv: VAR, passwordEnv: VAR}`: read from these environment variables.
    Env {
        username_var: String,
        password_var: String,
    },
}

impl CredentialSource {
    /// For [`CredentialSource::Env`], reads the two variables (a usage error names the one that
    /// is unset or empty); `None` for the other sources.
    pub fn env_credentials(&self, env: &dyn crate::options::Env) -> Result<Option<Credentials>> {
        let CredentialSource::Env {
            username_var,
            password_var,
        } = self
        else {
            return Ok(None);
        };
        let read = |var: &str, key: &str| {
            env.var(var).ok_or_else(|| {
                Error::Usage(format!(
                    "credentials: environment variable {var} (named by {key}) is not set or empty"
                ))
            })
        };
        let user = read(username_var, "usernameEnv")?;
        let pass = read(password_var, "passwordEnv")?;
        Ok(Some(Credentials::new(user, pass)))
    }
}

/// One entry of `images`.
#[derive(Clone, Debug)]
pub struct ImageRule {
    /// The name below the namespace (may contain `/`).
    pub name: String,
    /// The repository path at the registry (`namespace/name`, normalised as docker does).
    pub repository: String,
    pub rule: TagRule,
    /// The image's own platform list, overriding the global one (`Some(vec![])` keeps every
    /// platform even when a global list is set).
    pub platforms: Option<Vec<String>>,
    /// Position in the file: (registry index, image index).
    pub(super) index: (usize, usize),
}

/// One entry of `exclude`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclude {
    /// Repository name below the namespace.
    pub name: String,
    /// `None` excludes the whole repository.
    pub tag: Option<String>,
}

impl Exclude {
    /// Parses `name` or `name:tag`.
    pub fn parse(text: &str) -> std::result::Result<Exclude, String> {
        let t = text.trim();
        let (name, tag) = match t.rsplit_once(':') {
            Some((n, tag)) => (n, Some(tag)),
            None => (t, None),
        };
        validate_repository(name)?;
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        Ok(Exclude {
            name: name.to_string(),
            tag: tag.map(str::to_string),
        })
    }

    pub(super) fn excludes_repository(&self, name: &str) -> bool {
        self.tag.is_none() && self.name == name
    }
}

impl fmt::Display for Exclude {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// One image to export, fully resolved to a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// `registry/namespace/name:tag`, parsed with [`Reference::parse`].
    pub reference: Reference,
    /// The registry entry's namespace (what import may replace); may be empty.
    pub namespace: String,
    /// The name below the namespace (the full repository path when the namespace is empty).
    pub path: String,
    /// The image's platforms, else the global ones, else empty (every platform).
    pub platforms: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_credentials_read_the_named_variables() {
        let src = CredentialSource::Env {
            username_var: "AIRLOCK_IMAGESET_TEST_UNSET_U".into(),
            password_var: "AIRLOCK_IMAGESET_TEST_UNSET_P".into(),
        };
        let vars = std::collections::HashMap::from([(
            "AIRLOCK_IMAGESET_TEST_UNSET_P".to_string(),
            "p".to_string(),
        )]);
        let e = src.env_credentials(&vars).unwrap_err();
        assert!(
            e.to_string()
                .contains("AIRLOCK_IMAGESET_TEST_UNSET_U (named by usernameEnv)"),
            "{e}"
        );
        let set = std::collections::HashMap::from([
            ("AIRLOCK_IMAGESET_TEST_UNSET_U".to_string(), "u".to_string()),
            ("AIRLOCK_IMAGESET_TEST_UNSET_P".to_string(), "p".to_string()),
        ]);
        let c = src.env_credentials(&set).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password()), ("u", "p"));
        assert!(CredentialSource::Default
            .env_credentials(&set)
            .unwrap()
            .is_none());
        assert!(CredentialSource::Anonymous
            .env_credentials(&set)
            .unwrap()
            .is_none());
    }
}
