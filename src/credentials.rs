//! Credentials for a registry: where they come from (flags, the seed's environment variables,
//! docker's config.json and its helpers, podman's auth.json, a hidden prompt) and a type that
//! never prints its password or identity token.

use crate::error::{Error, Result};
use crate::registry::TlsOptions;
use std::fmt;

/// A username and password, or an identity token (an OAuth2 refresh token that docker's
/// config.json keeps in place of a password, as `az acr login` leaves it). `Debug` and
/// `Display` never show the password or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
    identity_token: bool,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
            identity_token: false,
        }
    }

    /// An identity token: exchanged at the registry's token endpoint for access tokens
    /// (`grant_type=refresh_token`), never sent as a password.
    pub fn identity_token(token: impl Into<String>) -> Self {
        Credentials {
            username: String::new(),
            password: token.into(),
            identity_token: true,
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The identity token, when these are one.
    pub fn refresh_token(&self) -> Option<&str> {
        self.identity_token.then_some(self.password.as_str())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

/// Keys under which docker and podman store Docker Hub credentials.
fn lookup_keys(registry: &str) -> Vec<String> {
    if registry == crate::reference::DOCKER_HUB {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![registry.to_string(), format!("https://{registry}")]
    }
}

/// Looks the registry up in docker's config.json (with `credHelpers`/`credsStore`), then in
/// podman's auth.json: a username and password, or an identity token.
pub fn from_config_files(registry: &str) -> Option<Credentials> {
    let found = |c: docker_credential::DockerCredential| match c {
        docker_credential::DockerCredential::UsernamePassword(u, p) => Credentials::new(u, p),
        docker_credential::DockerCredential::IdentityToken(t) => Credentials::identity_token(t),
    };
    for key in lookup_keys(registry) {
        if let Ok(c) = docker_credential::get_credential(&key) {
            return Some(found(c));
        }
    }
    for key in lookup_keys(registry) {
        if let Ok(c) = docker_credential::get_podman_credential(&key) {
            return Some(found(c));
        }
    }
    None
}

/// Asks for a username and password on a terminal, after a registry said it needs them.
pub fn prompt_credentials(registry: &str) -> Result<Option<Credentials>> {
    if !crate::prompt::interactive() {
        return Ok(None);
    }
    let Some(user) = crate::prompt::ask(&format!("Username for {registry}"), None)? else {
        return Ok(None);
    };
    let pass = crate::prompt::password(&format!("Password for {user} at {registry}: "))?;
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
        Err(Error::Auth { .. }) if creds.is_none() && crate::prompt::interactive() => {
            let creds = prompt_credentials(name)?;
            Registry::connect(name, tls, creds, retry).await
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials::new("alice", "s3cret-pw");
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret-pw"));
    }
}
