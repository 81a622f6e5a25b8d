//! Bundle signatures in the minisign format: `airlock keygen` key pairs, the `NAME.minisig`
//! file that export writes beside the bundle (it signs the exact bytes of `bundle.json`,
//! which names the digest of every other member), and the check that verify and import run
//! against a trusted public key. `minisign -V` verifies the same files.

use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the signature of a bundle lives: `NAME.minisig` beside `NAME` (or its volumes).
pub fn signature_path(base: &Path) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// The password for an encrypted secret key: `AIRLOCK_KEY_PASSWORD`, else a hidden prompt.
fn key_password(what: &str) -> Result<String> {
    if let Some(p) = crate::options::key_password(&crate::options::ProcessEnv) {
        return Ok(p);
    }
    if crate::prompt::interactive() {
        return rpassword::prompt_password(format!("Password for {what}: "))
            .map_err(|e| Error::io("reading the key password", e));
    }
    Err(Error::Usage(format!(
        "{what} is encrypted: set AIRLOCK_KEY_PASSWORD or run on a terminal"
    )))
}

fn key_id(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Writes `PREFIX.key` (secret) and `PREFIX.pub` (public). The secret key is encrypted with a
/// password unless `no_password`.
pub fn keygen(prefix: &Path, no_password: bool, force: bool) -> Result<(PathBuf, PathBuf, String)> {
    let mut sk_path = prefix.as_os_str().to_owned();
    sk_path.push(".key");
    let mut pk_path = prefix.as_os_str().to_owned();
    pk_path.push(".pub");
    let (sk_path, pk_path) = (PathBuf::from(sk_path), PathBuf::from(pk_path));
    for p in [&sk_path, &pk_path] {
        // A link counts as there, even when it points nowhere.
        if std::fs::symlink_metadata(p).is_ok() && !force {
            return Err(Error::Usage(format!(
                "{} exists; remove it or pass --force",
                p.display()
            )));
        }
    }
    let kp = if no_password {
        minisign::KeyPair::generate_unencrypted_keypair()
    } else {
        let pw = if let Some(p) = crate::options::key_password(&crate::options::ProcessEnv) {
            p
        } else if crate::prompt::interactive() {
            let a = rpassword::prompt_password("Password for the new secret key: ")
                .map_err(|e| Error::io("reading the password", e))?;
            let b = rpassword::prompt_password("Again: ")
                .map_err(|e| Error::io("reading the password", e))?;
            if a != b {
                return Err(Error::Usage("the passwords differ".into()));
            }
            a
        } else {
            return Err(Error::Usage(
                "a password for the secret key is needed: set AIRLOCK_KEY_PASSWORD, run on a \
                 terminal, or pass --no-password"
                    .into(),
            ));
        };
        minisign::KeyPair::generate_encrypted_keypair(Some(pw))
    }
    .map_err(|e| Error::Failed(format!("generating a key pair: {e}")))?;
    let id = key_id(kp.pk.keynum());
    let pk_box = kp
        .pk
        .to_box()
        .map_err(|e| Error::Failed(format!("encoding the public key: {e}")))?;
    let sk_box = kp
        .sk
        .to_box(Some(&format!("airlock secret key {id}")))
        .map_err(|e| Error::Failed(format!("encoding the secret key: {e}")))?;
    write_private(&sk_path, sk_box.to_string().as_bytes())?;
    std::fs::write(&pk_path, pk_box.to_string())
        .ctx(|| format!("writing {}", pk_path.display()))?;
    Ok((sk_path, pk_path, id))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A new file, made 0600 here: an existing one (--force) keeps its mode when truncated, and
    // a link there would take the key elsewhere, so whatever is there goes first.
    match std::fs::symlink_metadata(path) {
        Ok(_) => std::fs::remove_file(path).ctx(|| format!("replacing {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("writing {}", path.display()), e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("writing {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).ctx(|| format!("writing {}", path.display()))
}

/// A secret key loaded (and decrypted) for signing.
pub struct Signer {
    sk: minisign::SecretKey,
}

impl Signer {
    pub fn load(path: &Path) -> Result<Signer> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("secret key {}: {e}", path.display())))?;
        let sk_box = minisign::SecretKeyBox::from_string(&text)
            .map_err(|e| Error::Usage(format!("secret key {}: {e}", path.display())))?;
        let probe = minisign::SecretKeyBox::from_string(&text)
            .and_then(|b| b.into_unencrypted_secret_key());
        let sk = match probe {
            Ok(sk) if !sk.is_encrypted() => sk,
            _ => {
                let pw = key_password(&format!("secret key {}", path.display()))?;
                sk_box.into_secret_key(Some(pw)).map_err(|e| {
                    Error::Usage(format!(
                        "secret key {}: {e} (wrong password?)",
                        path.display()
                    ))
                })?
            }
        };
        Ok(Signer { sk })
    }

    /// Signs the bytes of `bundle.json` that `bundle_json` yields, read as a stream (minisign
    /// signs their BLAKE2b hash, so they are never held whole); the trusted comment names the
    /// bundle and its creation time.
    pub fn sign(&self, bundle_json: impl Read, comment: &str) -> Result<String> {
        let sig = minisign::sign(
            None,
            &self.sk,
            bundle_json,
            Some(comment),
            Some("airlock signature of bundle.json"),
        )
        .map_err(|e| Error::Failed(format!("signing bundle.json: {e}")))?;
        Ok(sig.into_string())
    }
}

/// Checks `NAME.minisig` against the bytes of `bundle.json` that `bundle_json` yields, read as
/// a stream, with a trusted public key. Returns the key id and the trusted comment.
pub fn verify(base: &Path, bundle_json: impl Read, trusted_key: &Path) -> Result<(String, String)> {
    let pk_text = crate::bundle::volumes::read_side_file(trusted_key, 64 << 10)
        .map_err(|e| Error::Usage(format!("trusted key {}: {e}", trusted_key.display())))?;
    let pk = minisign::PublicKeyBox::from_string(&pk_text)
        .and_then(|b| b.into_public_key())
        .or_else(|_| minisign::PublicKey::from_base64(pk_text.trim()))
        .map_err(|e| {
            Error::Usage(format!(
                "trusted key {}: not a minisign public key: {e}",
                trusted_key.display()
            ))
        })?;
    let sig_path = signature_path(base);
    let sig_text = match crate::bundle::volumes::read_side_file(&sig_path, 64 << 10) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::bundle(
                base,
                format!(
                    "the bundle is not signed (no {}), and --trusted-key requires a signature",
                    sig_path.display()
                ),
            ))
        }
        Err(e) => return Err(Error::io(format!("reading {}", sig_path.display()), e)),
    };
    let sig = minisign::SignatureBox::from_string(&sig_text)
        .map_err(|e| Error::bundle(&sig_path, format!("not a minisign signature: {e}")))?;
    let signer = key_id(sig.keynum());
    let trusted = key_id(pk.keynum());
    if signer != trusted {
        return Err(Error::bundle(
            base,
            format!(
                "signed by key {signer}, not by the trusted key {trusted} ({})",
                trusted_key.display()
            ),
        ));
    }
    // A legacy signature covers the bytes themselves, which minisign would read whole before
    // refusing it: refused here first. airlock and `minisign -S` sign the hash.
    if !sig.is_prehashed() {
        return Err(Error::bundle(
            &sig_path,
            "a legacy minisign signature (of the whole content, not its hash): not accepted",
        ));
    }
    minisign::verify(&pk, &sig, Unseekable(bundle_json), true, false, false).map_err(|e| {
        if let minisign::ErrorKind::Io = e.kind() {
            Error::bundle(
                base,
                format!("reading bundle.json to check its signature: {e}"),
            )
        } else {
            Error::bundle(
                base,
                format!("the signature does not match bundle.json: {e}; the bundle was altered"),
            )
        }
    })?;
    let comment = sig.trusted_comment().unwrap_or_default();
    Ok((trusted, comment))
}

/// A stream for `minisign::verify`, which asks for `Seek` but seeks only to print what it
/// checked (never asked of it here).
struct Unseekable<R>(R);

impl<R: Read> Read for Unseekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R> std::io::Seek for Unseekable<R> {
    fn seek(&mut self, _: std::io::SeekFrom) -> std::io::Result<u64> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "bundle.json is read as a stream",
        ))
    }
}
