//! HTTPS on the HTTP listener (rustls): a certificate made by the `openssl` CLI, a client that
//! verifies it (Python's `ssl`), plain HTTP refused on the TLS port, a silent client that does
//! not hold up other handshakes, TLS accepted as the credential for a non-loopback listener,
//! and unusable certificate files named by their key.

mod http_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeinfer_engine::EngineChoice;
use edgeinferd::config::{Config, ConfigErrorKind};
use http_support::*;

/// A self-signed P-256 certificate for 127.0.0.1, and its key.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=edgeinferd-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI is required for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// GET or POST over HTTPS, verifying the server against `ca`; prints `status body`.
const CLIENT: &str = r#"
import http.client, ssl, sys
port, ca, method, path, body = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
c.request(method, path, body.encode() if body else None, {"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, r.read().decode())
"#;

fn https(port: u16, ca: &Path, method: &str, path: &str, body: &str) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string()])
        .arg(ca)
        .args([method, path, body])
        .output()
        .expect("python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn serves_https_with_a_verified_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "server");
    let mut cfg = Config::default();
    cfg.http.tls_cert = Some(cert.clone());
    cfg.http.tls_key = Some(key);
    cfg.validate().unwrap();
    let h = serve(
        &cfg,
        table(&[spec("churn", "churn_rf", EngineChoice::Tract)]),
    );
    let port = h.local_addr().port();

    // A client that says nothing must not stall the handshakes of others.
    let _silent = std::net::TcpStream::connect(h.local_addr()).unwrap();

    let (ok, out) = https(port, &cert, "GET", "/readyz", "");
    assert!(ok && out.starts_with("200 "), "{out}");
    let features = format!("{{\"features\": [[{}]]}}", vec!["0.5"; 20].join(","));
    let (ok, out) = https(port, &cert, "POST", "/predict", &features);
    assert!(
        ok && out.starts_with("200 ") && out.contains("\"predictions\""),
        "{out}"
    );

    // A certificate the client does not trust: the client refuses (the server is real TLS).
    let (other, _) = make_cert(dir.path(), "other");
    let (ok, out) = https(port, &other, "GET", "/readyz", "");
    assert!(!ok && out.contains("CERTIFICATE_VERIFY_FAILED"), "{out}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(h.local_addr()).unwrap();
    plain.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    plain
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        !reply.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&reply)
    );
}

#[test]
fn tls_is_a_credential_for_a_public_listener_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "a");
    let (_, other_key) = make_cert(dir.path(), "b");
    let mut cfg = Config::default();
    cfg.http.listen = Some("0.0.0.0:7701".parse().unwrap());
    cfg.http.tls_cert = Some(cert.clone());
    cfg.http.tls_key = Some(key.clone());
    cfg.validate()
        .expect("TLS secures a non-loopback HTTP listener");

    for (c, k, key_name, words) in [
        (
            dir.path().join("missing.crt"),
            key.clone(),
            "http.tls_cert",
            "cannot read certificates",
        ),
        (
            key.clone(),
            key.clone(),
            "http.tls_cert",
            "holds no PEM certificate",
        ),
        (
            cert.clone(),
            cert.clone(),
            "http.tls_key",
            "not a PEM private key",
        ),
        (
            cert.clone(),
            other_key,
            "http.tls_cert",
            "do not go together",
        ),
    ] {
        cfg.http.tls_cert = Some(c);
        cfg.http.tls_key = Some(k);
        let e = cfg.validate().unwrap_err();
        let p = e
            .problems
            .iter()
            .find(|p| p.key == key_name)
            .unwrap_or_else(|| panic!("{key_name} not named: {e}"));
        assert_eq!(p.kind, ConfigErrorKind::Invalid);
        assert!(p.message.contains(words), "{words:?} not in {}", p.message);
        // Without a usable TLS pair the public listener is also refused as insecure.
        assert!(
            e.problems
                .iter()
                .any(|p| p.key == "http.listen" && p.kind == ConfigErrorKind::Insecure),
            "{e}"
        );
    }
}
