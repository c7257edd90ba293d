//! Test certificates, made with the openssl CLI (ECDSA P-256) in a directory:
//! two CAs, `ca` (trusted by the gateway in the tests) and `rogue` (not), and three
//! leaves: `server` (CN=localhost, from `ca`), `client` (CN given, from `ca`) and
//! `stranger` (the same CN, from `rogue`). Each leaf as `<name>.pem` and `<name>.der`,
//! its key as `<name>.key` (SEC1 PEM) and `<name>.key.der` (PKCS#8 DER).

use std::path::Path;
use std::process::Command;

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is required");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the CAs and leaves described above in `dir`, the client's and the
/// stranger's with CN `cn`.
pub fn make_pki(dir: &Path, cn: &str) {
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    for k in ["ca", "rogue", "server", "client", "stranger"] {
        let key = format!("{k}.key");
        openssl(
            dir,
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                &key,
            ],
        );
    }
    for (k, subj) in [("ca", "/CN=Test CA"), ("rogue", "/CN=Rogue CA")] {
        let (key, pem) = (format!("{k}.key"), format!("{k}.pem"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-subj",
                subj,
                "-days",
                "30",
                "-out",
                &pem,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    let device = format!("/CN={cn}");
    for (k, subj, ca) in [
        ("server", "/CN=localhost", "ca"),
        ("client", &device[..], "ca"),
        ("stranger", &device[..], "rogue"),
    ] {
        let (key, csr, pem) = (format!("{k}.key"), format!("{k}.csr"), format!("{k}.pem"));
        let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(
            dir,
            &["req", "-new", "-key", &key, "-subj", subj, "-out", &csr],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "leaf.ext",
                "-out",
                &pem,
            ],
        );
        let der = format!("{k}.der");
        openssl(dir, &["x509", "-in", &pem, "-outform", "DER", "-out", &der]);
        let key_der = format!("{k}.key.der");
        openssl(
            dir,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &key_der,
            ],
        );
    }
}
