//! Every combination is a case (SPEC §13): method (certificate, JWT, webhook)
//! × mode (enforce, audit) × upstream (rewrite, passthrough) × transport (TLS,
//! WebSocket), each driven with an allowed client and a would-be-denied one against a
//! real Mosquitto, asserting what the broker saw: the username and ClientId it logged,
//! and whether the client's Will reached a subscriber when the client dropped its
//! connection. A combination the configuration refuses is a row too, asserting the
//! refusal. PROXY v2 upstream rows need Mosquitto 2.1 and live in
//! tests/interop_mosquitto21.rs.
//!
//! A new option that changes what the broker sees or what a client may do adds a field
//! to [`Row`] and the rows that set it.

mod common;

use std::time::Duration;

use common::*;
use mqttgate::cli::pki::Issued;
use mqttgate::mqtt::properties::id;
use mqttgate::mqtt::{Connect, Version, Will};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Certificate,
    Jwt,
    Webhook,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Enforce,
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Username {
    Rewrite,
    Passthrough,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tls,
    WebSocket,
}

/// One gate configuration: every method is configured in it, and both transports.
#[derive(Clone, Copy, Debug)]
struct Row {
    mode: Mode,
    username: Username,
}

/// What one client presents.
struct Attempt {
    /// Its credentials are good (the decision before the grant allows it).
    allowed: bool,
    /// Its CONNECT username is not its verified name.
    spoofs: bool,
    /// Its Will names another client's topic.
    will_elsewhere: bool,
    /// The CONNECT's username and ClientId.
    username: Option<String>,
    client_id: String,
    /// The name mqttgate verifies for an allowed client.
    verified: Option<String>,
    token: Option<String>,
    /// The certificate it presents.
    cert: Option<Issued>,
}

/// What the broker should see of an attempt: nothing, or this ClientId and username.
#[derive(Debug, PartialEq)]
enum Seen {
    Nothing,
    As {
        client_id: String,
        username: Option<String>,
    },
}

/// The combination table: what reaches the broker for each row and attempt.
fn expected(row: Row, a: &Attempt) -> Seen {
    let refused =
        !a.allowed || a.will_elsewhere || (a.spoofs && row.username == Username::Passthrough);
    match (row.mode, !refused) {
        (Mode::Enforce, false) => Seen::Nothing,
        // Audit mode: every client as itself, its own username and ClientId (no identity
        // asserted for anyone, so a broker that authenticates clients decides).
        (Mode::Audit, _) => Seen::As {
            client_id: a.client_id.clone(),
            username: a.username.clone(),
        },
        (Mode::Enforce, true) => {
            let name = a.verified.clone().expect("an allowed client has a name");
            Seen::As {
                client_id: format!("{name}/{}", a.client_id),
                username: match row.username {
                    Username::Rewrite => Some(name),
                    // Passthrough: only the verified name, or none, ever goes upstream.
                    Username::Passthrough => a.username.clone(),
                },
            }
        }
    }
}

struct Gate {
    env: Env,
    jwt_key: std::path::PathBuf,
    _keys: tempfile::TempDir,
    _hook: Hook,
}

/// mqttgate with the registry (sensor-1), `[auth.jwt]`, `[auth.webhook]` (clients
/// without a certificate and without a method), `[authorization]` (every client may
/// publish and subscribe under `devices/<its name>/#`), a WebSocket listener, in front
/// of a Mosquitto whose ACL lets anonymous clients use `devices/#` (a passthrough
/// client without a username) and every username its own `devices/<name>/#`.
async fn gate(row: Row) -> Result<Gate, String> {
    let keys = tempfile::tempdir().unwrap();
    let jwt_key = issuer_key(keys.path(), "k1");
    let certs = keys.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::rename(keys.path().join("k1.pem"), certs.join("k1.pem")).unwrap();
    let pki = Pki::new();
    let hook = Hook::start(&pki.root);
    let authorization = authorization_section(
        keys.path(),
        r#"[{"name": "$all"}]"#,
        r#"[{"name": "own", "topicTemplates": ["devices/${client.authenticationName}/#"]}]"#,
        r#"[{"name": "own-publish", "clientGroupName": "$all", "topicSpaceName": "own", "permission": "Publisher"},
            {"name": "own-subscribe", "clientGroupName": "$all", "topicSpaceName": "own", "permission": "Subscriber"}]"#,
        None,
    );
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.client_id = Some("per-identity");
    setup.username = Some(match row.username {
        Username::Rewrite => "rewrite",
        Username::Passthrough => "passthrough",
    });
    if row.mode == Mode::Audit {
        setup.top = "mode = \"audit\"\n".into();
    }
    setup.broker_acl = Some("topic readwrite devices/#\n\npattern readwrite devices/%u/#\n");
    setup.extra = format!(
        "[websocket]\nlisten = \"127.0.0.1:0\"\n\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nkeys = [\"{}\"]\n{authorization}{}",
        certs.display(),
        hook.section(""),
    );
    // Env::start panics on a refused configuration; the refusal row wants the error.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pki, &setup, 1);
    if let Err(e) = mqttgate::config::Config::load(&config) {
        return Err(e.to_string());
    }
    Ok(Gate {
        env: Env::start(pki, setup).await,
        jwt_key,
        _keys: keys,
        _hook: hook,
    })
}

/// The clients of `method` under `row`: an allowed one, a would-be-denied one, and the
/// allowed one asking for more than it may have (a Will on another client's topic; a
/// JWT client typing another name).
fn attempts(g: &Gate, row: Row, method: Method, tag: &str) -> Vec<Attempt> {
    let mut all = Vec::from(base_attempts(g, row, method, tag));
    let [mut will_elsewhere, _] = base_attempts(g, row, method, &format!("{tag}-w"));
    will_elsewhere.will_elsewhere = true;
    all.push(will_elsewhere);
    if method == Method::Jwt {
        let [mut spoof, _] = base_attempts(g, row, method, &format!("{tag}-s"));
        spoof.username = Some("mallory".into());
        spoof.spoofs = true;
        all.push(spoof);
    }
    all
}

fn base_attempts(g: &Gate, row: Row, method: Method, tag: &str) -> [Attempt; 2] {
    let pki = &g.env.pki;
    match method {
        Method::Certificate => [
            Attempt {
                allowed: true,
                spoofs: false,
                will_elsewhere: false,
                username: Some("sensor-1".into()),
                client_id: format!("cert-ok-{tag}"),
                verified: Some("sensor-1".into()),
                token: None,
                cert: Some(pki.root.issue(&leaf("sensor-1")).unwrap()),
            },
            // A registered certificate claiming a name no client has.
            Attempt {
                allowed: false,
                spoofs: false,
                will_elsewhere: false,
                username: Some("nobody".into()),
                client_id: format!("cert-no-{tag}"),
                verified: None,
                token: None,
                cert: Some(pki.root.issue(&leaf("sensor-1")).unwrap()),
            },
        ],
        Method::Jwt => {
            let mint_for = |sub: &str, exp: i64| {
                let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": exp});
                mint(&g.jwt_key, &claims, "RS256", &kid("k1"))
            };
            [
                Attempt {
                    allowed: true,
                    spoofs: false,
                    will_elsewhere: false,
                    // Under passthrough the username must be the token's sub.
                    username: match row.username {
                        Username::Rewrite => Some("typed-anything".into()),
                        Username::Passthrough => Some("dev-a".into()),
                    },
                    client_id: format!("jwt-ok-{tag}"),
                    verified: Some("dev-a".into()),
                    token: Some(mint_for("dev-a", now() + 600)),
                    cert: None,
                },
                // An expired token.
                Attempt {
                    allowed: false,
                    spoofs: false,
                    will_elsewhere: false,
                    username: Some("nobody".into()),
                    client_id: format!("jwt-no-{tag}"),
                    verified: None,
                    token: Some(mint_for("dev-a", now() - 600)),
                    cert: None,
                },
            ]
        }
        Method::Webhook => [
            // The test webhook allows keys starting with "allow" as "hook-<key>", keyed
            // by the username or, without one, the ClientId: no username here, so that
            // passthrough has no unverified one to hand over.
            Attempt {
                allowed: true,
                spoofs: false,
                will_elsewhere: false,
                username: None,
                client_id: format!("allow-{tag}"),
                verified: Some(format!("hook-allow-{tag}")),
                token: None,
                cert: None,
            },
            Attempt {
                allowed: false,
                spoofs: false,
                will_elsewhere: false,
                username: Some("deny-x".into()),
                client_id: format!("hook-no-{tag}"),
                verified: None,
                token: None,
                cert: None,
            },
        ],
    }
}

/// The name whose `devices/<name>/#` the client may publish to, at mqttgate and at the
/// broker: its verified name, or what it typed when audit mode lets it through unverified.
fn will_topic(a: &Attempt) -> String {
    if a.will_elsewhere {
        return "devices/other-device/will".into();
    }
    let name = a
        .verified
        .as_deref()
        .or(a.username.as_deref())
        .unwrap_or("anonymous");
    format!("devices/{name}/will")
}

fn connect_bytes(a: &Attempt, will_payload: &str) -> Vec<u8> {
    let mut properties = vec![];
    if let Some(token) = &a.token {
        properties.push(id::AUTHENTICATION_METHOD);
        put_str(&mut properties, b"CUSTOM-JWT");
        properties.push(id::AUTHENTICATION_DATA);
        put_str(&mut properties, token.as_bytes());
    }
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        properties,
        client_id: a.client_id.clone(),
        will: Some(Will {
            properties: vec![],
            topic: will_topic(a),
            payload: will_payload.as_bytes().to_vec(),
            qos: 1,
            retain: false,
        }),
        username: a.username.clone(),
        password: None,
    }
    .encode()
    .unwrap()
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// TLS to `addr`, with the attempt's certificate if it has one.
async fn tls(env: &Env, addr: std::net::SocketAddr, cert: Option<&Issued>) -> Box<dyn Stream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(env.pki.root.cert.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(mqttgate::trust::verifier::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.der.clone())],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    Box::new(s)
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// One masked binary frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x82];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
    }
    f.extend(MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// Sends the CONNECT over `transport`; returns the stream and the first MQTT packet
/// heard (None: closed without one).
async fn open(
    env: &Env,
    transport: Transport,
    a: &Attempt,
    connect: &[u8],
) -> (Box<dyn Stream>, Option<Vec<u8>>) {
    match transport {
        Transport::Tls => {
            let mut s = tls(env, env.addr(), a.cert.as_ref()).await;
            s.write_all(connect).await.unwrap();
            let heard = read_packet(&mut s, WAIT).await;
            (s, heard)
        }
        Transport::WebSocket => {
            let addr = env.gate.websocket_addr().unwrap();
            let mut s = tls(env, addr, a.cert.as_ref()).await;
            s.write_all(UPGRADE.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tokio::time::timeout(WAIT, s.read(&mut byte)).await {
                    Ok(Ok(1)) => head.push(byte[0]),
                    other => panic!("no upgrade answer: {other:?}"),
                }
            }
            assert!(head.starts_with(b"HTTP/1.1 101 "));
            s.write_all(&frame(connect)).await.unwrap();
            // The server's frames are unmasked; a CONNACK fits one short frame.
            let heard: Option<Vec<u8>> = tokio::time::timeout(WAIT, async {
                let mut h = [0u8; 2];
                s.read_exact(&mut h).await.ok()?;
                let mut body = vec![0u8; usize::from(h[1] & 0x7f)];
                s.read_exact(&mut body).await.ok()?;
                (h[0] & 0x0f == 0x2).then_some(body)
            })
            .await
            .unwrap_or_default();
            (s, heard)
        }
    }
}

/// The test broker's ACL: anonymous clients may publish under `devices/`, a username
/// under `devices/<username>/`.
fn broker_allows(username: Option<&str>, topic: &str) -> bool {
    match username {
        None => topic.starts_with("devices/"),
        Some(u) => topic.starts_with(&format!("devices/{u}/")),
    }
}

/// The broker's log line for a client: `as <id> (p5, c1, k30[, u'<user>'])`.
fn broker_line(client_id: &str, username: Option<&str>) -> String {
    match username {
        Some(u) => format!(" as {client_id} (p5, c1, k30, u'{u}')"),
        None => format!(" as {client_id} (p5, c1, k30)"),
    }
}

async fn drive(row: Row) {
    let g = match gate(row).await {
        Ok(g) => g,
        Err(e) => {
            assert_eq!(
                (row.mode, row.username),
                (Mode::Audit, Username::Rewrite),
                "{row:?} refused: {e}"
            );
            assert!(
                e.contains("upstream.username") && e.contains("audit mode"),
                "{e}"
            );
            return;
        }
    };
    assert!(
        !(row.mode == Mode::Audit && row.username == Username::Rewrite),
        "audit mode with rewrite must be refused at start"
    );
    let env = &g.env;
    let backend = backend_sub(&env.mosquitto, "devices/#").await;
    let (mut wills, mut refused, mut withheld) = (Vec::new(), Vec::new(), Vec::new());
    for method in [Method::Certificate, Method::Jwt, Method::Webhook] {
        for transport in [Transport::Tls, Transport::WebSocket] {
            let tag = format!("{:?}-{:?}", transport, method).to_lowercase();
            for (i, a) in attempts(&g, row, method, &tag).into_iter().enumerate() {
                let case = format!(
                    "{row:?} {method:?} {transport:?} allowed={} spoofs={} will_elsewhere={}",
                    a.allowed, a.spoofs, a.will_elsewhere
                );
                let will = format!("will-{tag}-{i}");
                let (stream, heard) = open(env, transport, &a, &connect_bytes(&a, &will)).await;
                let heard = heard.unwrap_or_default();
                match expected(row, &a) {
                    Seen::Nothing => {
                        assert_eq!(heard.get(3), Some(&0x87), "{case}: {heard:02x?}");
                        assert!(
                            !env.mosquitto_log()
                                .contains(&format!("{} (p5", a.client_id)),
                            "{case}: a refused client reached the broker"
                        );
                        refused.push(will);
                    }
                    Seen::As {
                        client_id,
                        username,
                    } => {
                        assert_eq!(heard.get(3), Some(&0x00), "{case}: {heard:02x?}");
                        let line = broker_line(&client_id, username.as_deref());
                        assert!(
                            eventually(WAIT, || env.mosquitto_log().contains(&line)).await,
                            "{case}: the broker never logged {line:?}:\n{}",
                            env.mosquitto_log()
                        );
                        // Dropped without DISCONNECT under a grant that holds: the Will
                        // goes out, as MQTT says, where the broker's own ACL allows it
                        // (audit mode lets a Will on another client's topic through to a
                        // broker that then decides).
                        match broker_allows(username.as_deref(), &will_topic(&a)) {
                            true => wills.push((case, will)),
                            false => withheld.push(will),
                        }
                    }
                }
                drop(stream);
            }
        }
    }
    for (case, will) in &wills {
        assert!(
            eventually(Duration::from_secs(10), || backend.lines().contains(will)).await,
            "{case}: its Will never reached the subscriber: {:?}",
            backend.lines()
        );
    }
    // Every Will above reached the subscriber after the refusals: none of theirs did.
    let lines = backend.finish();
    for will in refused.iter().chain(&withheld) {
        assert!(
            !lines.contains(will),
            "{row:?}: {will} was published: {lines:?}"
        );
    }
    assert_eq!(
        refused.is_empty(),
        row.mode == Mode::Audit,
        "enforcing mode refuses some of each row's clients, audit mode none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_rewrite() {
    drive(Row {
        mode: Mode::Enforce,
        username: Username::Rewrite,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_passthrough() {
    drive(Row {
        mode: Mode::Enforce,
        username: Username::Passthrough,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passthrough() {
    drive(Row {
        mode: Mode::Audit,
        username: Username::Passthrough,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rewrite_is_refused_at_start() {
    drive(Row {
        mode: Mode::Audit,
        username: Username::Rewrite,
    })
    .await;
}
