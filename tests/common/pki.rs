//! The test PKI, made with the openssl CLI: a CA and a server certificate, and for registries
//! that ask for client certificates a second CA and a client certificate.

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

/// Generate a second CA that signs client certificates, and one client certificate from it
/// (extendedKeyUsage clientAuth). Writes `client-ca.key client-ca.crt client.key client.cert`
/// into `dir` (the `.cert`/`.key` names docker's certs.d pairs).
pub fn generate_client_pki(dir: &Path) {
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
            .args([
                "-keyout",
                "client-ca.key",
                "-out",
                "client-ca.crt",
                "-days",
                "7",
            ])
            .args(["-subj", "/CN=airlock test client CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        "openssl: create test client CA",
    );
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-new"])
            .args(ec)
            .args(["-keyout", "client.key", "-out", "client.csr"])
            .args(["-subj", "/CN=airlock test client"]),
        "openssl: create client CSR",
    );
    fs::write(
        dir.join("client.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
    .expect("write client.ext");
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", "client.csr", "-CA", "client-ca.crt"])
            .args([
                "-CAkey",
                "client-ca.key",
                "-CAcreateserial",
                "-out",
                "client.cert",
            ])
            .args(["-days", "7", "-extfile", "client.ext"]),
        "openssl: sign client certificate",
    );
}
