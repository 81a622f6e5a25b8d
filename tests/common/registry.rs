//! [`TestRegistry`]: a throw-away CNCF distribution process (plain HTTP, TLS with a test CA,
//! htpasswd or token auth), its options, and the [`Endpoint`] trait.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

use super::corpus::Descriptor;
use super::pki::{expire_server_certificate, generate_client_pki, generate_test_pki};
use super::raw::{FetchedManifest, RawClient};
use std::process::Stdio;
use std::time::Instant;

use super::util::{free_port, run_tool};
use super::{TokenServer, TOKEN_ISSUER, TOKEN_SERVICE};

const REGISTRY_BIN: &str = "docker-registry";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// TestRegistry
// ---------------------------------------------------------------------------------------------

/// How to start a [`TestRegistry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// htpasswd (bcrypt) user and password; the registry then requires basic auth.
    pub auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// With `tls`: require a client certificate (mutual TLS) signed by a second test CA; the
    /// harness's client and [`TestRegistry::cert_dir`] carry one.
    pub client_certs: bool,
    /// With `tls`: serve a certificate that expired yesterday (the harness's client takes it
    /// anyway).
    pub expired_certificate: bool,
    /// With `auth`: use token authentication (Bearer JWTs from a [`TokenServer`] that checks
    /// those credentials) instead of htpasswd basic auth.
    pub token: bool,
}

impl RegistryOpts {
    pub fn plain() -> RegistryOpts {
        RegistryOpts::default()
    }

    pub fn with_auth(mut self, user: &str, pass: &str) -> RegistryOpts {
        self.auth = Some((user.into(), pass.into()));
        self
    }

    pub fn with_tls(mut self) -> RegistryOpts {
        self.tls = true;
        self
    }

    /// Mutual TLS: the registry refuses clients without a certificate from its client CA.
    pub fn with_expired_certificate(mut self) -> RegistryOpts {
        self.tls = true;
        self.expired_certificate = true;
        self
    }

    pub fn with_client_certs(mut self) -> RegistryOpts {
        self.tls = true;
        self.client_certs = true;
        self
    }

    /// Token authentication: the registry sends clients to a token server that issues signed
    /// JWTs for the requested scopes to `user`/`pass`.
    pub fn with_token_auth(mut self, user: &str, pass: &str) -> RegistryOpts {
        self.auth = Some((user.into(), pass.into()));
        self.token = true;
        self
    }
}

/// Something skopeo (and airlock) can reach: host, optional CA dir, optional credentials.
pub trait Endpoint {
    /// `127.0.0.1:PORT`
    fn host(&self) -> String;
    /// A directory holding `ca.crt` when the endpoint speaks TLS; None for plain HTTP.
    fn tls_cert_dir(&self) -> Option<PathBuf>;
    fn creds(&self) -> Option<(String, String)>;
}

/// A plain-HTTP endpoint without auth, e.g. `airlock serve` on a port.
pub struct PlainEndpoint(pub String);

impl Endpoint for PlainEndpoint {
    fn host(&self) -> String {
        self.0.clone()
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        None
    }
    fn creds(&self) -> Option<(String, String)> {
        None
    }
}

/// A CNCF distribution registry on 127.0.0.1, killed on drop.
pub struct TestRegistry {
    /// The token server of a token-auth registry (stopped on drop).
    token_server: Option<TokenServer>,
    child: Option<Child>,
    port: u16,
    opts: RegistryOpts,
    client: RawClient,
    // Last field: dropped after the child is killed.
    dir: TempDir,
}

/// `htpasswd -Bbn USER PASS` (bcrypt, which distribution requires).
pub fn htpasswd_line(user: &str, pass: &str) -> String {
    let out = run_tool(
        Command::new("htpasswd").args(["-Bbn", user, pass]),
        "htpasswd -Bbn",
    );
    String::from_utf8(out.stdout)
        .expect("htpasswd output is UTF-8")
        .trim()
        .to_string()
        + "\n"
}

fn yaml_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "''"))
}

impl TestRegistry {
    /// Start a registry; panics (with the registry log) if it is not up within 15 s.
    pub fn start(opts: RegistryOpts) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("airlock-test-registry-")
            .tempdir()
            .expect("create registry tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("data")).expect("create data dir");
        let mut ca_pem = None;
        if opts.tls {
            generate_test_pki(&root.join("tls"));
            if opts.expired_certificate {
                expire_server_certificate(&root.join("tls"));
            }
            fs::create_dir_all(root.join("certs")).expect("create cert dir");
            fs::copy(root.join("tls/ca.crt"), root.join("certs/ca.crt")).expect("copy ca.crt");
            ca_pem = Some(fs::read(root.join("tls/ca.crt")).expect("read ca.crt"));
        }
        let mut identity_pem = None;
        if opts.client_certs {
            generate_client_pki(&root.join("tls"));
            for f in ["client.cert", "client.key"] {
                fs::copy(root.join("tls").join(f), root.join("certs").join(f))
                    .expect("copy the client certificate");
            }
            let mut pem = fs::read(root.join("tls/client.key")).expect("read client.key");
            pem.extend(fs::read(root.join("tls/client.cert")).expect("read client.cert"));
            identity_pem = Some(pem);
        }
        let mut token_server = None;
        if let Some((u, p)) = &opts.auth {
            if opts.token {
                token_server = Some(TokenServer::start(&root.join("token"), u, p));
            } else {
                fs::write(root.join("htpasswd"), htpasswd_line(u, p)).expect("write htpasswd");
            }
        }
        let scheme = if opts.tls { "https" } else { "http" };
        let client_for = |port: u16| {
            RawClient::with_identity(
                &format!("{scheme}://127.0.0.1:{port}"),
                opts.auth.clone(),
                ca_pem.as_deref(),
                identity_pem.as_deref(),
                opts.expired_certificate,
            )
        };
        let port = free_port();
        let token_realm = token_server.as_ref().map(|t| t.realm());
        let mut reg = TestRegistry {
            token_server,
            child: None,
            port,
            opts: opts.clone(),
            client: client_for(port),
            dir,
        };
        for attempt in 1..=5 {
            TestRegistry::write_config(reg.dir.path(), reg.port, &opts, token_realm.as_deref());
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(log) => {
                    reg.kill();
                    if attempt < 5 && log.contains("address already in use") {
                        // Someone took the port between bind(:0) and the registry's bind.
                        reg.port = free_port();
                        reg.client = client_for(reg.port);
                        continue;
                    }
                    panic!(
                        "docker-registry did not start on port {} (attempt {attempt}); its log:\n{log}",
                        reg.port
                    );
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn write_config(root: &Path, port: u16, opts: &RegistryOpts, token_realm: Option<&str>) {
        let mut y = String::new();
        y.push_str("version: 0.1\n");
        y.push_str("log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n");
        y.push_str("storage:\n  filesystem:\n");
        let _ = writeln!(y, "    rootdirectory: {}", yaml_quote(&root.join("data")));
        y.push_str("  delete:\n    enabled: true\n");
        y.push_str("  maintenance:\n    uploadpurging:\n      enabled: false\n");
        y.push_str("http:\n");
        let _ = writeln!(y, "  addr: 127.0.0.1:{port}");
        y.push_str("  secret: airlock-test-secret\n");
        if opts.tls {
            y.push_str("  tls:\n");
            let _ = writeln!(
                y,
                "    certificate: {}",
                yaml_quote(&root.join("tls/server.crt"))
            );
            let _ = writeln!(y, "    key: {}", yaml_quote(&root.join("tls/server.key")));
            if opts.client_certs {
                y.push_str("    clientcas:\n");
                let _ = writeln!(y, "      - {}", yaml_quote(&root.join("tls/client-ca.crt")));
            }
        }
        if let Some(realm) = token_realm {
            y.push_str("auth:\n  token:\n");
            let _ = writeln!(y, "    realm: {realm}");
            let _ = writeln!(y, "    service: {TOKEN_SERVICE}");
            let _ = writeln!(y, "    issuer: {TOKEN_ISSUER}");
            let _ = writeln!(
                y,
                "    rootcertbundle: {}",
                yaml_quote(&root.join("token/token.crt"))
            );
        } else if opts.auth.is_some() {
            y.push_str("auth:\n  htpasswd:\n    realm: airlock-test\n");
            let _ = writeln!(y, "    path: {}", yaml_quote(&root.join("htpasswd")));
        }
        fs::write(root.join("config.yml"), y).expect("write registry config.yml");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let root = self.dir.path().to_path_buf();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("registry.log"))
            .expect("open registry.log");
        let log2 = log.try_clone().expect("clone log handle");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(root.join("config.yml"))
            .env_remove("REGISTRY_HTTP_ADDR")
            .env_remove("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot spawn {REGISTRY_BIN} (apt-get install docker-registry): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("(exited with {status})\n{}", self.log()));
                }
            }
            if let Some(s) = self.client.ping(Duration::from_secs(1)) {
                if s == 200 || s == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "(no answer on /v2/ within {STARTUP_TIMEOUT:?})\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill the registry process (content stays on disk); see [`TestRegistry::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Start the registry again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn_and_wait() {
            self.kill();
            panic!(
                "docker-registry did not restart on port {}; log:\n{log}",
                self.port
            );
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    pub fn is_tls(&self) -> bool {
        self.opts.tls
    }

    pub fn opts(&self) -> &RegistryOpts {
        &self.opts
    }

    pub fn credentials(&self) -> Option<(String, String)> {
        self.opts.auth.clone()
    }

    /// Tokens issued so far by the token server of a token-auth registry.
    pub fn tokens_issued(&self) -> usize {
        self.token_server.as_ref().map(|t| t.issued()).unwrap_or(0)
    }

    /// The test CA certificate (PEM). Panics if the registry was started without TLS.
    pub fn ca_cert_path(&self) -> PathBuf {
        assert!(
            self.opts.tls,
            "ca_cert_path(): registry was started without TLS"
        );
        self.dir.path().join("tls/ca.crt")
    }

    /// A directory holding `ca.crt` (and `client.cert`, `client.key` with client
    /// certificates), for `skopeo --cert-dir` (or docker's certs.d).
    pub fn cert_dir(&self) -> PathBuf {
        assert!(
            self.opts.tls,
            "cert_dir(): registry was started without TLS"
        );
        self.dir.path().join("certs")
    }

    /// The registry's temporary directory (config.yml, registry.log, data/, tls/, certs/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Storage root of the filesystem driver (to corrupt or inspect blobs behind its back).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's log (warnings plus one access-log line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Access-log request lines like `PUT /v2/src/alpha/blobs/uploads/… HTTP/1.1" 201`,
    /// filtered by method and a substring of the path (counts uploads, mounts, retries).
    pub fn access_log(&self, method: &str, path_contains: &str) -> Vec<String> {
        let needle = format!("\"{method} ");
        self.log()
            .lines()
            .filter_map(|l| l.find(&needle).map(|i| l[i + 1..].to_string()))
            .filter(|l| l.contains(path_contains))
            .collect()
    }

    /// The harness' own client for this registry (credentials and CA configured).
    pub fn client(&self) -> &RawClient {
        &self.client
    }

    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Descriptor {
        self.client.push_blob(repo, bytes)
    }

    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> String {
        self.client
            .push_manifest(repo, reference, bytes, media_type)
    }

    pub fn get_manifest(&self, repo: &str, reference: &str) -> Option<FetchedManifest> {
        self.client.get_manifest(repo, reference)
    }

    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        self.client.blob_exists(repo, digest)
    }

    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.client.tags(repo)
    }

    /// Flips one byte of a stored blob at `offset`, as bit rot on the registry's disk (or a
    /// proxy that alters what it passes) would: the registry goes on serving it, same size,
    /// under its old digest.
    pub fn damage_blob(&self, digest: &str, offset: u64) {
        use std::os::unix::fs::FileExt;
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = self
            .dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).expect("read the byte");
        b[0] ^= 0x55;
        f.write_all_at(&b, offset).expect("write the byte back");
    }

    pub fn catalog(&self) -> Vec<String> {
        self.client.catalog()
    }
}

impl Endpoint for TestRegistry {
    fn host(&self) -> String {
        TestRegistry::host(self)
    }
    fn tls_cert_dir(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.cert_dir())
    }
    fn creds(&self) -> Option<(String, String)> {
        self.credentials()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}
