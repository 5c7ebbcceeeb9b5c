//! JWT clients (SPEC §9): issuer keys made with `openssl`, tokens minted with PyJWT
//! (independently of mqttgate's Rust code), mqttgate with `[auth.jwt]`, and a byte-level
//! MQTT 5 client that presents no certificate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mqttgate::mqtt::properties::id;
use mqttgate::mqtt::{Connect, Version};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::*;

pub const ISSUER: &str = "https://issuer.example.com";
pub const AUDIENCE: &str = "mqttgate";
pub const SENSOR: &str = "SubjectMatchesAuthenticationName";

/// Python with paho-mqtt and PyJWT (tests/requirements.txt); installed when missing.
/// Checked once per test binary: each check starts an interpreter.
pub fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(find_python).clone()
}

fn find_python() -> PathBuf {
    let python = python_with_paho();
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", "import jwt, cryptography"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&python) {
        let reqs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/requirements.txt");
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(reqs)
            .status();
    }
    assert!(
        ok(&python),
        "PyJWT is not importable and could not be installed"
    );
    python
}

/// An RSA issuer key made by openssl: `<dir>/<kid>.key` and the self-signed certificate
/// `<dir>/<kid>.pem` (whose file stem is the kid mqttgate gives it).
pub fn issuer_key(dir: &Path, kid: &str) -> PathBuf {
    let key = dir.join(format!("{kid}.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=test issuer"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(dir.join(format!("{kid}.pem")))
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{}", text(&out));
    key
}

/// PyJWT's `jwt.encode(claims, key, algorithm, headers)`.
pub fn mint(key: &Path, claims: &Value, alg: &str, headers: &Value) -> String {
    let out = Command::new(python())
        .args([
            "-c",
            "import json, sys, jwt\n\
             key = open(sys.argv[1]).read() if sys.argv[1] else None\n\
             print(jwt.encode(json.loads(sys.argv[2]), key, algorithm=sys.argv[3], headers=json.loads(sys.argv[4])))",
        ])
        .arg(key)
        .arg(claims.to_string())
        .arg(alg)
        .arg(headers.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn now() -> i64 {
    mqttgate::trust::unix_now()
}

pub fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": sub, "exp": now() + 600,
           "nbf": now() - 5, "iat": now() - 5, "jti": format!("jti-{sub}"), "floor": 3})
}

pub fn kid(k: &str) -> Value {
    json!({"kid": k})
}

/// mqttgate with `[auth.jwt]` over a folder holding issuer key k1 (skew 0, so token
/// times are exact), a registry with one certificate client (sensor-1), and Mosquitto.
pub struct Jwt {
    pub env: Env,
    pub keys: tempfile::TempDir,
    pub k1: PathBuf,
}

pub async fn gate(extra: &str) -> Jwt {
    gate_with_top(extra, "").await
}

/// As [`gate`], with top-level keys (`mode = "audit"`).
pub async fn gate_with_top(extra: &str, top: &str) -> Jwt {
    gate_with(extra, |setup| setup.top = top.to_string()).await
}

/// As [`gate`], with the setup adjusted by `adjust` before mqttgate starts.
pub async fn gate_with(extra: &str, adjust: impl FnOnce(&mut Setup)) -> Jwt {
    let keys = tempfile::tempdir().unwrap();
    let k1 = issuer_key(keys.path(), "k1");
    // Only the certificates are key files; the private keys live beside them.
    let certs = keys.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::rename(keys.path().join("k1.pem"), certs.join("k1.pem")).unwrap();
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SENSOR)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = format!(
        "[auth.jwt]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nkeys = [\"{}\"]\nskew_seconds = 0\n{extra}",
        certs.display()
    );
    adjust(&mut setup);
    Jwt {
        env: Env::start(pki, setup).await,
        keys,
        k1,
    }
}

impl Jwt {
    pub fn cert(&self, kid: &str) -> PathBuf {
        self.keys.path().join("certs").join(format!("{kid}.pem"))
    }
}

/// A TLS client that presents no certificate.
pub async fn tls_without_certificate(env: &Env) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(env.pki.root.cert.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(mqttgate::trust::verifier::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(env.addr()).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a handshake without a client certificate succeeds when JWT is enabled")
}

/// A v5 CONNECT with the Authentication Method and Data properties (when `method` is set).
pub fn jwt_connect(client_id: &str, method: Option<&str>, token: &[u8]) -> Vec<u8> {
    let mut properties = vec![id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 0];
    if let Some(m) = method {
        properties.push(id::AUTHENTICATION_METHOD);
        put_str(&mut properties, m.as_bytes());
        properties.push(id::AUTHENTICATION_DATA);
        put_str(&mut properties, token);
    }
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        properties,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
    .encode()
    .unwrap()
}

/// Connects without a certificate, sends `connect`, returns the CONNACK (and the stream).
pub async fn connack_for(env: &Env, connect: &[u8]) -> (Vec<u8>, TlsStream<TcpStream>) {
    let mut tls = tls_without_certificate(env).await;
    tls.write_all(connect).await.unwrap();
    let connack = try_read_packet(&mut tls, Duration::from_secs(5))
        .await
        .expect("a CONNACK");
    (connack, tls)
}

/// The Authentication Method property of a v5 CONNACK, if any.
pub fn connack_method(connack: &[u8]) -> Option<String> {
    let (_, body) = split_packet(connack);
    // Flags, code, then the property length (one byte: these CONNACKs are short).
    let list = &body[3..3 + usize::from(body[2])];
    match mqttgate::mqtt::properties::find(list, id::AUTHENTICATION_METHOD).unwrap() {
        Some(mqttgate::mqtt::properties::Value::Str(m)) => Some(m.to_string()),
        _ => None,
    }
}

pub async fn ping(tls: &mut TlsStream<TcpStream>) -> bool {
    tls.write_all(&[0xc0, 0x00]).await.is_ok()
        && read_packet(tls, Duration::from_secs(5)).await == Some(vec![0xd0, 0x00])
}
