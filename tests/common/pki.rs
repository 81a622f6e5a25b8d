//! The test PKI: a CA and a server certificate made with the openssl CLI.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::util::run_tool;

/// Generate a CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) with openssl.
/// Writes `ca.key ca.crt server.key server.crt` into `dir`.
pub fn generate_test_pki(dir: &Path) {
    fs::create_dir_all(dir).expect("create tls dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509", "-new"])
            .args(ec)
            .args(["-keyout", "ca.key", "-out", "ca.crt", "-days", "7"])
            .args(["-subj", "/CN=airlock test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        "openssl: create test CA",
    );
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-new"])
            .args(ec)
            .args(["-keyout", "server.key", "-out", "server.csr"])
            .args(["-subj", "/CN=localhost"]),
        "openssl: create server CSR",
    );
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid,issuer\n",
    )
    .expect("write server.ext");
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt"])
            .args(["-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt"])
            .args(["-days", "7", "-extfile", "server.ext"]),
        "openssl: sign server certificate",
    );
}
