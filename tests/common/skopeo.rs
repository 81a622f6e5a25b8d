//! skopeo, the independent witness: raw manifests, digests, copies to an OCI layout.

use std::fs;
use std::process::Command;
use std::process::Stdio;
use tempfile::TempDir;

use std::path::Path;

use super::registry::Endpoint;
use super::util::sha256_digest;

// ---------------------------------------------------------------------------------------------
// skopeo witness
// ---------------------------------------------------------------------------------------------

/// A `skopeo` command with an isolated environment (temp HOME, empty auth file, permissive
/// policy, no proxies). Keep the returned TempDir alive while the command runs.
pub fn skopeo_command() -> (Command, TempDir) {
    let tmp = tempfile::Builder::new()
        .prefix("airlock-test-skopeo-")
        .tempdir()
        .expect("skopeo tempdir");
    let auth = tmp.path().join("auth.json");
    fs::write(&auth, "{\"auths\":{}}\n").expect("write empty auth.json");
    let policy = tmp.path().join("policy.json");
    fs::write(
        &policy,
        "{\"default\":[{\"type\":\"insecureAcceptAnything\"}]}\n",
    )
    .expect("write policy.json");
    let mut cmd = Command::new("skopeo");
    cmd.env("HOME", tmp.path())
        .env("REGISTRY_AUTH_FILE", &auth)
        .env("DOCKER_CONFIG", tmp.path().join("docker"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.arg("--policy")
        .arg(&policy)
        .args(["--command-timeout", "120s"])
        .stdin(Stdio::null());
    (cmd, tmp)
}

fn skopeo_tls_args(cmd: &mut Command, ep: &dyn Endpoint, flag_prefix: &str) {
    match ep.tls_cert_dir() {
        Some(d) => {
            cmd.arg(format!("--{flag_prefix}cert-dir")).arg(d);
        }
        None => {
            cmd.arg(format!("--{flag_prefix}tls-verify=false"));
        }
    }
}

/// `skopeo inspect --raw docker://HOST/IMAGE` with explicit credentials (None: anonymous).
/// `image` is `repo:tag` or `repo@sha256:…`.
pub fn skopeo_inspect_raw_as(
    ep: &dyn Endpoint,
    image: &str,
    creds: Option<(&str, &str)>,
) -> Result<Vec<u8>, String> {
    let (mut cmd, _tmp) = skopeo_command();
    cmd.args(["inspect", "--raw"]);
    skopeo_tls_args(&mut cmd, ep, "");
    match creds {
        Some((u, p)) => {
            cmd.arg("--creds").arg(format!("{u}:{p}"));
        }
        None => {
            cmd.arg("--no-creds");
        }
    }
    cmd.arg(format!("docker://{}/{image}", ep.host()));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo (apt-get install skopeo): {e}"));
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Raw manifest bytes as skopeo sees them, using the endpoint's own credentials.
pub fn skopeo_raw(ep: &dyn Endpoint, image: &str) -> Result<Vec<u8>, String> {
    let creds = ep.creds();
    skopeo_inspect_raw_as(
        ep,
        image,
        creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    )
}

/// `sha256:` + hex sha256 of `skopeo inspect --raw docker://HOST/IMAGE`; panics on failure.
pub fn skopeo_digest(ep: &dyn Endpoint, image: &str) -> String {
    match skopeo_raw(ep, image) {
        Ok(b) => sha256_digest(&b),
        Err(e) => panic!("skopeo inspect --raw {}/{image} failed: {e}", ep.host()),
    }
}

/// Whether skopeo can read the manifest of `image` (any failure counts as "no").
pub fn skopeo_exists(ep: &dyn Endpoint, image: &str) -> bool {
    skopeo_raw(ep, image).is_ok()
}

/// `skopeo copy [--all] docker://HOST/IMAGE oci:DIR:REF`.
pub fn skopeo_copy_to_oci(
    ep: &dyn Endpoint,
    image: &str,
    oci_dir: &Path,
    oci_ref: &str,
    all: bool,
) -> Result<(), String> {
    let (mut cmd, _tmp) = skopeo_command();
    cmd.arg("copy");
    if all {
        cmd.arg("--all");
    }
    skopeo_tls_args(&mut cmd, ep, "src-");
    match ep.creds() {
        Some((u, p)) => {
            cmd.arg("--src-creds").arg(format!("{u}:{p}"));
        }
        None => {
            cmd.arg("--src-no-creds");
        }
    }
    cmd.arg(format!("docker://{}/{image}", ep.host()))
        .arg(format!("oci:{}:{oci_ref}", oci_dir.display()));
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
