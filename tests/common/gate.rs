//! mqttgate in-process: the per-test PKI, the setup and config it starts from, the running
//! environment, the clients that talk to it (mosquitto_pub/sub, TLS byte-level, admin HTTP,
//! paho) and the assertions on what they heard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mqttgate::cli::pki::{self, Ca, Issued, LeafSpec};
use mqttgate::config::Config;
use mqttgate::server::Server;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::broker::{find_tool, tool, Mosquitto};
use super::wire::*;
use super::write;

/// The PKI of one test: a root, an intermediate under it, and the server certificate.
pub struct Pki {
    pub root: Ca,
    pub inter: Ca,
    pub server: Issued,
}

impl Pki {
    pub fn new() -> Pki {
        let root = Ca::root("Test Root CA").unwrap();
        let inter = root.intermediate("Test Intermediate CA").unwrap();
        let server = root.issue(&LeafSpec::server()).unwrap();
        Pki {
            root,
            inter,
            server,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// What to start mqttgate with.
pub struct Setup {
    pub clients_json: String,
    /// CA files to register, as PEM text.
    pub ca_pems: Vec<String>,
    pub sources: Vec<&'static str>,
    /// Extra TOML appended to the generated config (whole sections).
    pub extra: String,
    /// Top-level keys put before every section (`mode = "audit"`).
    pub top: String,
    pub upstream: Option<String>,
    /// `upstream.client_id`; the default (one session per identity) when None.
    pub client_id: Option<&'static str>,
    /// `upstream.username`; `rewrite` when None.
    pub username: Option<&'static str>,
    /// The `[sessions]` section. By default both limits are off: tests reconnect one
    /// identity many times a second and hold several of its sessions; tests/sessions.rs
    /// sets its own.
    pub sessions: String,
    /// The broker's `acl_file`; the default lets each username use `devices/<name>/#`
    /// and anonymous clients read `devices/#`.
    pub broker_acl: Option<&'static str>,
}

impl Setup {
    pub fn new(clients_json: &str) -> Setup {
        Setup {
            clients_json: clients_json.to_string(),
            ca_pems: Vec::new(),
            sources: Vec::new(),
            extra: String::new(),
            top: String::new(),
            upstream: None,
            client_id: None,
            username: None,
            sessions: "[sessions]\nconnects_per_second = 0\nmax_per_authentication_name = 0\n"
                .to_string(),
            broker_acl: None,
        }
    }
}

/// A running test environment: Mosquitto, mqttgate in front of it, and the files.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub mosquitto: Mosquitto,
    pub gate: Arc<Server>,
    pub config_file: PathBuf,
    pub registry_file: PathBuf,
}

impl Env {
    pub async fn start(pki: Pki, setup: Setup) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mosquitto = match setup.broker_acl {
            Some(acl) => Mosquitto::start_with_acl(dir.path(), acl),
            None => Mosquitto::start(dir.path()),
        };
        let config_file = write_config(dir.path(), &pki, &setup, mosquitto.port);
        let config = Config::load(&config_file).expect("test config loads");
        let gate = Server::start(config).await.expect("mqttgate starts");
        let registry_file = dir.path().join("clients.json");
        Env {
            dir,
            pki,
            mosquitto,
            gate,
            config_file,
            registry_file,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gate.local_addr()
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a client's certificate (with `chain` after it) and key; returns their paths.
    pub fn client_files(&self, name: &str, leaf: &Issued, chain: &[&Issued]) -> (PathBuf, PathBuf) {
        let mut pem = leaf.cert_pem.clone();
        for c in chain {
            pem.push_str(&c.cert_pem);
        }
        let cert = write(self.dir.path(), &format!("{name}.pem"), &pem);
        let key = write(self.dir.path(), &format!("{name}.key"), &leaf.key_pem);
        (cert, key)
    }

    /// The CA file clients use to verify mqttgate's server certificate.
    pub fn server_ca(&self) -> PathBuf {
        self.path("server-ca.pem")
    }

    /// Runs mosquitto_pub through mqttgate. `args` are extra arguments (topic, message,
    /// -u, -V...).
    pub fn pub_(&self, cert: &Path, key: &Path, args: &[&str]) -> Output {
        run_client(
            "mosquitto_pub",
            self.port(),
            &self.server_ca(),
            cert,
            key,
            args,
        )
    }

    pub fn sub_(&self, cert: &Path, key: &Path, args: &[&str]) -> Output {
        run_client(
            "mosquitto_sub",
            self.port(),
            &self.server_ca(),
            cert,
            key,
            args,
        )
    }

    /// Starts mosquitto_sub in the background (it prints each message on its own line).
    pub fn spawn_sub(&self, cert: &Path, key: &Path, args: &[&str]) -> Child {
        client_command(
            "mosquitto_sub",
            self.port(),
            &self.server_ca(),
            cert,
            key,
            args,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    }

    /// A byte-level TLS client presenting `leaf` (plus `chain`).
    pub async fn tls(
        &self,
        leaf: &Issued,
        chain: &[&Issued],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        tls_connect(self.addr(), &self.pki.root.cert.cert_pem, leaf, chain).await
    }

    /// Waits until this gate's metric line `series` reads `want` (see `await_metric`).
    pub async fn await_metric(&self, series: &str, want: f64) {
        await_metric(
            self.gate.admin_addr(),
            series,
            want,
            Duration::from_secs(10),
        )
        .await
    }

    pub fn mosquitto_log(&self) -> String {
        std::fs::read_to_string(self.path("mosquitto.log")).unwrap_or_default()
    }
}

/// Writes the three authorization lists (Azure's client groups, topic spaces and
/// permission bindings) to `dir` and returns the `[authorization]` section naming them,
/// with `mode` when given.
pub fn authorization_section(
    dir: &Path,
    groups: &str,
    spaces: &str,
    bindings: &str,
    mode: Option<&str>,
) -> String {
    let at = |name, text| write(dir, name, text).display().to_string();
    let mode = mode
        .map(|m| format!("mode = \"{m}\"\n"))
        .unwrap_or_default();
    format!(
        "\n[authorization]\nclient_groups = \"{}\"\ntopic_spaces = \"{}\"\npermission_bindings = \"{}\"\n{mode}",
        at("client-groups.json", groups),
        at("topic-spaces.json", spaces),
        at("permission-bindings.json", bindings),
    )
}

pub fn write_config(dir: &Path, pki: &Pki, setup: &Setup, broker_port: u16) -> PathBuf {
    write(dir, "server.pem", &pki.server.cert_pem);
    write(dir, "server.key", &pki.server.key_pem);
    write(dir, "server-ca.pem", &pki.root.cert.cert_pem);
    write(dir, "clients.json", &setup.clients_json);
    let mut cas = Vec::new();
    for (i, pem) in setup.ca_pems.iter().enumerate() {
        let name = format!("ca{i}.pem");
        write(dir, &name, pem);
        cas.push(format!("\"{name}\""));
    }
    let sources: Vec<String> = setup.sources.iter().map(|s| format!("\"{s}\"")).collect();
    let upstream = setup
        .upstream
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{broker_port}"));
    let text = format!(
        "{}listen = \"127.0.0.1:0\"\nalternativeAuthenticationNameSources = [{}]\n\n[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\nca_certificates = [{}]\n\n[registry]\nclients = \"clients.json\"\n\n[upstream]\naddress = \"{upstream}\"\nclient_id = \"{}\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\nupstream_check_interval_ms = 200\n\n[reload]\nwatch_interval_ms = 200\n\n{}\n{}\n",
        setup.top,
        sources.join(", "),
        cas.join(", "),
        setup.client_id.unwrap_or("authentication-name"),
        // Unset: rewrite, or passthrough in audit mode (which refuses rewrite).
        setup
            .username
            .map(|u| format!("username = \"{u}\"\n"))
            .unwrap_or_default(),
        setup.sessions,
        setup.extra
    );
    write(dir, "mqttgate.toml", &text)
}

fn client_command(
    tool_name: &str,
    port: u16,
    cafile: &Path,
    cert: &Path,
    key: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(tool(tool_name));
    cmd.args(["-h", "localhost", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(cafile)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(args);
    cmd
}

pub fn run_client(
    tool_name: &str,
    port: u16,
    cafile: &Path,
    cert: &Path,
    key: &Path,
    args: &[&str],
) -> Output {
    client_command(tool_name, port, cafile, cert, key, args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The text a mosquitto client printed, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub async fn tls_connect(
    addr: SocketAddr,
    server_ca_pem: &str,
    leaf: &Issued,
    chain: &[&Issued],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, server_ca_pem, leaf, chain).await
}

/// A TLS client over a TCP connection already made (from a chosen source address, or to
/// a load balancer), presenting `leaf` (plus `chain`).
pub async fn tls_over(
    tcp: TcpStream,
    server_ca_pem: &str,
    leaf: &Issued,
    chain: &[&Issued],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut certs = vec![CertificateDer::from(leaf.der.clone())];
    certs.extend(chain.iter().map(|c| CertificateDer::from(c.der.clone())));
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(mqttgate::trust::verifier::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // In TLS 1.3 a client-certificate refusal arrives after the client's handshake is
    // done; a zero-length flush lets it surface on the next read.
    tls.flush().await?;
    Ok(tls)
}

/// A registry entry in Azure's client-resource shape.
pub fn chain_client(name: &str, scheme: &str) -> String {
    format!(
        r#"{{"name":"{name}","properties":{{"authenticationName":"{name}","clientCertificateAuthentication":{{"validationScheme":"{scheme}"}},"state":"Enabled"}}}}"#
    )
}

pub fn thumbprint_client(name: &str, thumbprints: &[String]) -> String {
    let list: Vec<String> = thumbprints.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"{{"name":"{name}","properties":{{"clientCertificateAuthentication":{{"validationScheme":"ThumbprintMatch","allowedThumbprints":[{}]}}}}}}"#,
        list.join(",")
    )
}

pub fn thumbprint_of(i: &Issued) -> String {
    mqttgate::trust::cert::Thumbprint::of(&i.der).to_string()
}

pub fn leaf(cn: &str) -> LeafSpec {
    LeafSpec::client(cn)
}

pub fn self_signed(spec: &LeafSpec, ca: bool) -> Issued {
    pki::self_signed(spec, ca).unwrap()
}

/// Python with paho-mqtt, for tests that drive a real paho client. Fails (never skips)
/// when paho-mqtt is missing after trying to install it.
pub fn python_with_paho() -> PathBuf {
    let python = find_tool("python3").expect("python3 is needed for paho-mqtt tests");
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", "import paho.mqtt.client"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !ok(&python) {
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "paho-mqtt==2.1.0"])
            .status();
    }
    assert!(
        ok(&python),
        "paho-mqtt is not importable and could not be installed"
    );
    python
}

/// Runs `tests/python/<script>` with paho-mqtt as a client of `port`, presenting `cert`'s
/// certificate; the script's arguments are HOST PORT CAFILE CERT KEY then `rest`. Returns the
/// one JSON object it prints.
pub async fn run_paho_script(
    env: &Env,
    script: &str,
    port: u16,
    (cert, key): (PathBuf, PathBuf),
    rest: &[&str],
) -> serde_json::Value {
    let python = python_with_paho();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut args: Vec<String> = vec![
        path.display().to_string(),
        "localhost".into(),
        port.to_string(),
        env.server_ca().display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    ];
    args.extend(rest.iter().map(|a| a.to_string()));
    let out =
        tokio::task::spawn_blocking(move || Command::new(python).args(&args).output().unwrap())
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {}", text(&out)))
}

/// A GET on the admin listener: (status, body); status 0 when it closed unanswered.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = String::new();
    // A connection closed unanswered (past `admin.max_connections`) ends in a reset rather
    // than EOF when our request was never read: the write or the read fails, and that is
    // the same answer as EOF.
    if s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .is_ok()
    {
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("the admin listener neither answered nor closed");
        if read.is_err() {
            out.clear();
        }
    }
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls the admin listener at `admin` until the metric line `series` reads `want`; fails
/// the test with the last scrape after `wait`.
pub async fn await_metric(admin: SocketAddr, series: &str, want: f64, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (_, scrape) = admin_get(admin, "/metrics").await;
        if metric(&scrape, series) == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never read {want}:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one exact metric line (name with labels) in a scrape, if present.
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// What a byte-level client heard after the handshake and its CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// The handshake failed, or the connection failed or closed before any MQTT byte
    /// arrived: a TLS-level refusal. Holds the error text for assertion messages.
    TlsRefused(String),
    /// The complete CONNACK, and whether the server closed the connection right after it
    /// (only looked at when the CONNACK refuses; `false` for an accepted connection).
    Connack(Vec<u8>, bool),
}

/// Connects with the byte-level client presenting `leaf` (plus `chain`), sends a CONNECT of
/// `version` (3, 4 or 5) with `username`, and reports what came back.
pub async fn connect_as(
    env: &Env,
    leaf: &Issued,
    chain: &[&Issued],
    version: u8,
    username: Option<&str>,
) -> Heard {
    let mut tls = match env.tls(leaf, chain).await {
        Ok(t) => t,
        Err(e) => return Heard::TlsRefused(format!("handshake: {e}")),
    };
    if let Err(e) = tls
        .write_all(&connect_packet(version, "byte-client", username))
        .await
    {
        return Heard::TlsRefused(format!("write: {e}"));
    }
    match try_read_packet(&mut tls, Duration::from_secs(5)).await {
        Err(NoPacket::Closed(e)) => Heard::TlsRefused(format!("read: {e}")),
        Err(NoPacket::TimedOut) => panic!("no answer in time"),
        Err(NoPacket::MidPacket(got, e)) => panic!("mid-packet after {got:02x?}: {e}"),
        Ok(connack) => {
            let refused = connack.get(3).is_some_and(|&c| c != 0);
            let closed = if refused {
                let (rest, closed) = read_until_close(&mut tls, Duration::from_secs(3)).await;
                assert!(
                    rest.is_empty(),
                    "bytes after a refusing CONNACK: {rest:02x?}"
                );
                closed
            } else {
                false
            };
            Heard::Connack(connack, closed)
        }
    }
}

/// Asserts the byte-level client was refused with Not authorized in `version` (4 or 5) and
/// the connection was then closed.
pub async fn assert_not_authorized(
    env: &Env,
    leaf: &Issued,
    chain: &[&Issued],
    version: u8,
    username: Option<&str>,
) {
    let expected = if version == 5 {
        NOT_AUTHORIZED_V5.to_vec()
    } else {
        NOT_AUTHORIZED_V311.to_vec()
    };
    assert_eq!(
        connect_as(env, leaf, chain, version, username).await,
        Heard::Connack(expected, true)
    );
}

/// Asserts the byte-level client was accepted (CONNACK return code 0).
pub async fn assert_accepted(
    env: &Env,
    leaf: &Issued,
    chain: &[&Issued],
    version: u8,
    username: Option<&str>,
) {
    match connect_as(env, leaf, chain, version, username).await {
        Heard::Connack(c, _) if c[0] == 0x20 && c[3] == 0x00 => {}
        other => panic!("expected an accepting CONNACK, got {other:02x?}"),
    }
}

/// Asserts the connection was refused during the TLS handshake with a fatal alert whose
/// rustls name contains `alert` (e.g. "UnknownCA", "CertificateExpired"): no MQTT byte came
/// back.
pub async fn assert_tls_refused(env: &Env, leaf: &Issued, chain: &[&Issued], alert: &str) {
    match connect_as(env, leaf, chain, 4, Some("anyone")).await {
        Heard::TlsRefused(e) => assert!(
            e.contains("fatal alert") && e.contains(alert),
            "expected fatal alert {alert}, got: {e}"
        ),
        other => panic!("expected a TLS-level refusal, got {other:02x?}"),
    }
}

/// mosquitto_pub was accepted.
pub fn assert_pub_ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

/// mosquitto_pub (MQTT v3.1.1) was refused with CONNACK Not authorized.
pub fn assert_pub_not_authorised(o: &Output) {
    assert!(!o.status.success(), "{}", text(o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Connection Refused: not authorised."),
        "{}",
        text(o)
    );
}

/// mosquitto_pub failed at the TLS layer: a failure status and no CONNACK refusal text.
pub fn assert_pub_tls_refused(o: &Output) {
    assert!(!o.status.success(), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    // mosquitto_pub connects asynchronously, so a handshake the server aborts usually
    // surfaces as a lost connection rather than as a TLS error.
    assert!(
        err.contains("The connection was lost")
            || err.contains("A TLS error occurred")
            || err.contains("Protocol error"),
        "{}",
        text(o)
    );
    assert!(!err.contains("Connection Refused"), "{}", text(o));
}

/// Over one byte-level connection presenting `leaf`: CONNECT (v3.1.1) with `username`, then
/// SUBSCRIBE to `topic`, PUBLISH "hi" on it, and PINGREQ. Does the broker echo the message?
/// Its `%u` ACL drops the publication unless the upstream username is the topic's identity
/// (Mosquitto 2.0.11 grants the SUBSCRIBE either way). The PINGRESP, queued after any echo,
/// ends the wait.
pub async fn broker_echoes(
    env: &Env,
    leaf: &Issued,
    chain: &[&Issued],
    username: Option<&str>,
    topic: &str,
) -> bool {
    let mut tls = env.tls(leaf, chain).await.expect("handshake");
    let mut bytes = connect_packet(4, "byte-client", username);
    bytes.extend_from_slice(&subscribe_packet(1, topic, 0));
    let publish = publish_packet(topic, 0, 0, b"hi");
    bytes.extend_from_slice(&publish);
    bytes.extend_from_slice(&[0xc0, 0x00]);
    tls.write_all(&bytes).await.unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(
        try_read_packet(&mut tls, wait).await.unwrap(),
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK"
    );
    assert_eq!(
        try_read_packet(&mut tls, wait).await.unwrap(),
        [0x90, 0x03, 0x00, 0x01, 0x00],
        "SUBACK for {topic}"
    );
    let next = try_read_packet(&mut tls, wait).await.unwrap();
    if next == publish {
        assert_eq!(try_read_packet(&mut tls, wait).await.unwrap(), [0xd0, 0x00]);
        true
    } else {
        assert_eq!(next, [0xd0, 0x00], "neither the echo nor PINGRESP");
        false
    }
}

/// Asserts the broker knows this connection as `name`: a message on `devices/{name}/x`
/// makes the round trip through the `%u` ACL (see `broker_echoes`).
pub async fn assert_broker_sees(
    env: &Env,
    leaf: &Issued,
    chain: &[&Issued],
    username: Option<&str>,
    name: &str,
) {
    let topic = format!("devices/{name}/x");
    assert!(
        broker_echoes(env, leaf, chain, username, &topic).await,
        "the broker did not echo {topic}: it does not know this connection as {name}"
    );
}

/// rcgen writes Ed25519 keys as PKCS#8 v2 (with the public key), which OpenSSL 3.0 — and so
/// mosquitto_pub — can't load ("STORE routines ... unsupported"). The same key as PKCS#8 v1
/// (RFC 8410's fixed 16-byte prefix and the 32-byte seed) loads everywhere. Other keys are
/// returned unchanged.
pub fn openssl_loadable_key(key_pem: &str) -> String {
    let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let der = der.secret_der();
    const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    // SEQUENCE { INTEGER 1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed }, [1] pub }
    if der.len() < 48 || der[2..5] != [0x02, 0x01, 0x01] || der[7..12] != ED25519_OID {
        return key_pem.to_string();
    }
    assert_eq!(
        der[12..16],
        [0x04, 0x22, 0x04, 0x20],
        "Ed25519 PKCS#8 layout"
    );
    let mut v1 = V1_PREFIX.to_vec();
    v1.extend_from_slice(&der[16..48]);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    pem.push_str(&base64(&v1));
    pem.push_str("\n-----END PRIVATE KEY-----\n");
    pem
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A byte-level MQTT 3.1.1 session through mqttgate that got CONNACK 0.
pub async fn session(
    env: &Env,
    cert: &Issued,
    client_id: &str,
    username: Option<&str>,
) -> TlsStream<TcpStream> {
    let mut tls = env.tls(cert, &[]).await.expect("tls handshake");
    tls.write_all(&connect_packet(4, client_id, username))
        .await
        .unwrap();
    let connack = read_exact(&mut tls, 4, Duration::from_secs(5)).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK for {client_id}");
    tls
}

/// Subscribes a 3.1.1 session to `filter` and waits for a granted SUBACK.
pub async fn subscribe<S>(s: &mut S, packet_id: u16, filter: &str, qos: u8)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(&subscribe_packet(packet_id, filter, qos))
        .await
        .unwrap();
    let suback = try_read_packet(s, Duration::from_secs(5)).await.unwrap();
    let mut want = packet_id.to_be_bytes().to_vec();
    want.push(qos);
    assert_eq!(
        split_packet(&suback),
        (0x90, &want[..]),
        "SUBACK for {filter}"
    );
}
