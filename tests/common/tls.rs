//! A throw-away PKI made with the openssl command: a CA, a server
//! certificate for localhost/127.0.0.1 and a client certificate, plus an RSA
//! key pair for signing JWTs.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the openssl command is needed (apt-get install -y openssl): {e}")
        });
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn signed(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), extensions).expect("write extensions");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// Writes a CA named `ca_name` and certificates it signs into `dir`.
pub fn make_pki(dir: &Path, ca_name: &str) -> Pki {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name}"),
        ],
    );
    signed(
        dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(
        dir,
        "client",
        "/CN=orderflow-client",
        "extendedKeyUsage=clientAuth\n",
    );
    Pki {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// An RSA key pair: the private key (PEM) and the public key's modulus in
/// base64url, as a JWK's `n`.
pub fn rsa_key(dir: &Path, name: &str) -> (Vec<u8>, String) {
    let file = format!("{name}.pem");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &file,
        ],
    );
    let output = Command::new("openssl")
        .args(["rsa", "-in", &file, "-noout", "-modulus"])
        .current_dir(dir)
        .output()
        .expect("openssl rsa -modulus");
    let text = String::from_utf8_lossy(&output.stdout);
    let hex = text.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex modulus"))
        .collect();
    use base64::Engine;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    (std::fs::read(dir.join(&file)).expect("key file"), n)
}
