//! docker's and podman's per-registry TLS files, `certs.d/HOST[:PORT]/`: every `*.crt` is a
//! CA certificate to trust for that registry, and a `NAME.cert` with its `NAME.key` is the
//! client certificate to present (registries behind mutual TLS). Read from
//! `/etc/docker/certs.d`, `/etc/containers/certs.d` and `$XDG_CONFIG_HOME/containers/certs.d`
//! (`~/.config/containers/certs.d`), where a machine set up to push to the registry keeps
//! them already.

use crate::error::{Error, Result};
use crate::options::Env;
use std::path::{Path, PathBuf};

/// What the certs.d directories hold for one registry.
#[derive(Default)]
pub struct RegistryCerts {
    /// CA certificates (PEM files).
    pub roots: Vec<PathBuf>,
    /// The client certificate and its key (PEM files), the first pair found.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The certs.d directories, in the order they are read.
pub fn dirs(env: &dyn Env) -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from("/etc/docker/certs.d"),
        PathBuf::from("/etc/containers/certs.d"),
    ];
    let config = env
        .var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(c) = config {
        v.push(c.join("containers/certs.d"));
    }
    v
}

/// The files under `DIR/name/` of each of `dirs`. A `.cert` without its `.key` (or the other
/// way round) is an error naming both, as docker makes it.
pub fn for_registry(name: &str, dirs: &[PathBuf]) -> Result<RegistryCerts> {
    let mut found = RegistryCerts::default();
    // A name with a path separator or a parent component is no registry of ours to look up.
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Ok(found);
    }
    for dir in dirs {
        let d = dir.join(name);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in &files {
            match f.extension().and_then(|e| e.to_str()) {
                Some("crt") => found.roots.push(f.clone()),
                Some(ext @ ("cert" | "key")) => {
                    let (what, other, other_what) = if ext == "cert" {
                        ("client certificate", "key", "key")
                    } else {
                        ("client key", "cert", "certificate")
                    };
                    let partner = f.with_extension(other);
                    if !partner.is_file() {
                        return Err(Error::Usage(format!(
                            "{what} {} has no {other_what} {}",
                            f.display(),
                            partner.display()
                        )));
                    }
                    if ext == "cert" {
                        found.identity.get_or_insert((f.clone(), partner));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_and_client_pairs_are_found_per_registry() {
        let t = tempfile::tempdir().expect("tempdir");
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::fs::create_dir_all(a.join("reg.example:5000")).expect("mkdir");
        std::fs::create_dir_all(b.join("reg.example:5000")).expect("mkdir");
        std::fs::create_dir_all(a.join("other.example")).expect("mkdir");
        for (p, s) in [
            (a.join("reg.example:5000/ca.crt"), "ca"),
            (b.join("reg.example:5000/second.crt"), "ca2"),
            (b.join("reg.example:5000/me.cert"), "cert"),
            (b.join("reg.example:5000/me.key"), "key"),
            (a.join("other.example/ca.crt"), "other"),
        ] {
            std::fs::write(p, s).expect("write");
        }
        let dirs = vec![a.clone(), b.clone(), t.path().join("missing")];
        let c = for_registry("reg.example:5000", &dirs).expect("found");
        assert_eq!(
            c.roots,
            vec![
                a.join("reg.example:5000/ca.crt"),
                b.join("reg.example:5000/second.crt")
            ]
        );
        assert_eq!(
            c.identity,
            Some((
                b.join("reg.example:5000/me.cert"),
                b.join("reg.example:5000/me.key")
            ))
        );
        // The port is part of the name, as docker has it.
        let none = for_registry("reg.example", &dirs).expect("nothing");
        assert!(none.roots.is_empty() && none.identity.is_none());
        assert!(for_registry("../a", &dirs)
            .expect("refused")
            .roots
            .is_empty());

        // A certificate without its key is an error naming the key.
        std::fs::remove_file(b.join("reg.example:5000/me.key")).expect("rm");
        let err = for_registry("reg.example:5000", &dirs)
            .err()
            .expect("a lone .cert is an error")
            .to_string();
        assert!(err.contains("me.key"), "{err}");
    }

    #[test]
    fn the_users_directory_follows_xdg_config_home_then_home() {
        let env = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            dirs(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).last(),
            Some(&PathBuf::from("/x/containers/certs.d"))
        );
        assert_eq!(
            dirs(&env(&[("XDG_CONFIG_HOME", ""), ("HOME", "/h")])).last(),
            Some(&PathBuf::from("/h/.config/containers/certs.d"))
        );
    }
}
