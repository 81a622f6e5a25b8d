//! The test PKI, made with the openssl CLI: a CA and a server certificate, and for registries
//! that ask for client certificates a second CA and a client certificate.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::util::run_tool;

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A self-signed CA in `dir`: `NAME.key` and `NAME.crt`, common name `cn`.
fn make_ca(dir: &Path, name: &str, cn: &str) {
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509", "-new"])
            .args(EC)
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ])
            .args(["-days", "7", "-subj", &format!("/CN={cn}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        &format!("openssl: create {cn}"),
    );
}

/// A key `NAME.key` and a certificate `out` for `cn` in `dir`, signed by the CA `ca`
/// (`ca.crt`, `ca.key`) with the extensions `ext`.
fn make_leaf(dir: &Path, name: &str, out: &str, cn: &str, ca: &str, ext: &str) {
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-new"])
            .args(EC)
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])
            .args(["-subj", &format!("/CN={cn}")]),
        &format!("openssl: create the CSR of {cn}"),
    );
    fs::write(dir.join(format!("{name}.ext")), ext).expect("write the extensions");
    sign(dir, name, out, ca, "7");
}

/// Signs `NAME.csr` in `dir` with the CA `ca` and the extensions `NAME.ext` into `out`, valid
/// for `days` from now (negative: it expired that long ago).
fn sign(dir: &Path, name: &str, out: &str, ca: &str, days: &str) {
    run_tool(
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", &format!("{name}.csr")])
            .args(["-CA", &format!("{ca}.crt"), "-CAkey", &format!("{ca}.key")])
            .args(["-CAcreateserial", "-out", out, "-days", days])
            .args(["-extfile", &format!("{name}.ext")]),
        &format!("openssl: sign {out} for {days} days"),
    );
}

/// Generate a CA and a server certificate (SAN IP:127.0.0.1, DNS:localhost) with openssl.
/// Writes `ca.key ca.crt server.key server.crt` into `dir`.
pub fn generate_test_pki(dir: &Path) {
    fs::create_dir_all(dir).expect("create tls dir");
    make_ca(dir, "ca", "airlock test CA");
    make_leaf(
        dir,
        "server",
        "server.crt",
        "localhost",
        "ca",
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid,issuer\n",
    );
}

/// Signs the server certificate of [`generate_test_pki`] in `dir` again, valid until
/// yesterday (`-days -1`: its notAfter a day before its notBefore, now).
pub fn expire_server_certificate(dir: &Path) {
    sign(dir, "server", "server.crt", "ca", "-1");
}

/// Generate a second CA that signs client certificates, and one client certificate from it
/// (extendedKeyUsage clientAuth). Writes `client-ca.key client-ca.crt client.key client.cert`
/// into `dir` (the `.cert`/`.key` names docker's certs.d pairs).
pub fn generate_client_pki(dir: &Path) {
    fs::create_dir_all(dir).expect("create tls dir");
    make_ca(dir, "client-ca", "airlock test client CA");
    make_leaf(
        dir,
        "client",
        "client.cert",
        "airlock test client",
        "client-ca",
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    );
}
