//! Instruction-count probe for `scripts/cost.sh`, which runs it under
//! `valgrind --tool=callgrind --toggle-collect=...` so only the measured functions count:
//!
//! - `measured_connect_path`: parse one CONNECT and `auth::decide` it against a registry of
//!   `CLIENTS` clients (the per-connection work after the handshake).
//! - `measured_relay_plain`: one 64-byte PUBLISH through `relay::Relay` (buffer from the
//!   pool, read, write, buffer back), over in-memory streams.
//! - `measured_relay_tls`: the same message decrypted from one TLS record by the server
//!   side of a rustls connection and the answer encrypted into one record: the crypto a
//!   message costs mqttgate in each direction.
//!
//! Usage: `cost CLIENTS ITERATIONS`. Each measured function runs ITERATIONS times; the
//! script divides callgrind's inclusive count by ITERATIONS.

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use mqttgate::auth::{self, Peer, Policy, SubjectMatch};
use mqttgate::cli::pki::{Ca, LeafSpec};
use mqttgate::mqtt::{self, Connect, Version};
use mqttgate::transport::relay::Relay;
use mqttgate::trust::cert::CertInfo;
use mqttgate::trust::registry::Registry;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn registry(n: usize) -> Registry {
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "name": format!("device-{i}"),
                "properties": {
                    "authenticationName": format!("device-{i}"),
                    "clientCertificateAuthentication": {
                        "validationScheme": "SubjectMatchesAuthenticationName"
                    },
                    "state": "Enabled"
                }
            })
        })
        .collect();
    let json = serde_json::to_vec(&entries).expect("json");
    Registry::from_json(&json, Path::new("cost-registry.json")).expect("registry loads")
}

#[inline(never)]
fn measured_connect_path(packet: &[u8], cert: &CertInfo, reg: &Registry, policy: &Policy) -> bool {
    let (connect, _) = mqtt::parse_connect(packet, 64 * 1024)
        .expect("valid")
        .expect("complete");
    let decision = auth::decide(
        &Peer { cert, chains: true },
        connect.username.as_deref(),
        reg,
        policy,
    );
    std::hint::black_box(decision).is_ok()
}

/// A client that has one message to give each time it is asked, then nothing (Pending).
struct OneMessage<'a> {
    msg: &'a [u8],
    ready: bool,
}

impl AsyncRead for OneMessage<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ready {
            self.ready = false;
            buf.put_slice(self.msg);
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl AsyncWrite for OneMessage<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A broker that accepts every byte and has nothing to say.
struct Sink(u64);

impl AsyncRead for Sink {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0 += b.len() as u64;
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[inline(never)]
fn measured_relay_plain(relay: &mut Relay, client: &mut OneMessage<'_>, broker: &mut Sink) {
    client.ready = true;
    let mut cx = Context::from_waker(Waker::noop());
    let fut = relay.run(client, broker);
    let mut fut = std::pin::pin!(fut);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
}

fn tls_pair() -> (rustls::ClientConnection, rustls::ServerConnection) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let root = Ca::root("cost root").expect("ca");
    let server = root.issue(&LeafSpec::server()).expect("server cert");
    let client = root
        .issue(&LeafSpec::client("device-1"))
        .expect("client cert");
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&root.cert.cert_pem)).expect("root");
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let sconf = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![der(&server.cert_pem)], key(&server.key_pem))
        .expect("server config");
    let cconf = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![der(&client.cert_pem)], key(&client.key_pem))
        .expect("client config");
    let mut c = rustls::ClientConnection::new(
        Arc::new(cconf),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut s = rustls::ServerConnection::new(Arc::new(sconf)).expect("server");
    for _ in 0..20 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        transfer(&mut c, &mut s);
    }
    assert!(
        !c.is_handshaking() && !s.is_handshaking(),
        "handshake completes"
    );
    (c, s)
}

fn transfer(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
    let mut buf = Vec::new();
    c.write_tls(&mut buf).expect("client writes");
    let mut rd = &buf[..];
    while !rd.is_empty() {
        s.read_tls(&mut rd).expect("server reads");
    }
    s.process_new_packets().expect("server processes");
    buf.clear();
    s.write_tls(&mut buf).expect("server writes");
    let mut rd = &buf[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).expect("client reads");
    }
    c.process_new_packets().expect("client processes");
}

/// Server side only: one incoming record decrypted and read, one outgoing record
/// written and encrypted.
#[inline(never)]
fn measured_relay_tls(
    s: &mut rustls::ServerConnection,
    record: &[u8],
    msg: &[u8],
    out: &mut Vec<u8>,
) {
    let mut rd = record;
    s.read_tls(&mut rd).expect("read record");
    s.process_new_packets().expect("decrypt");
    let mut plain = [0u8; 256];
    let n = s.reader().read(&mut plain).expect("plaintext");
    assert_eq!(n, msg.len());
    s.writer().write_all(msg).expect("encrypt");
    out.clear();
    s.write_tls(out).expect("record out");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let iters: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);

    // (a) CONNECT + decide, for a client in the middle of the registry.
    let reg = registry(clients);
    let name = format!("device-{}", clients / 2);
    let ca = Ca::root("cost root").expect("ca");
    let leaf = ca.issue(&LeafSpec::client(&name)).expect("leaf");
    let cert = CertInfo::parse(&leaf.der).expect("cert");
    let policy = Policy {
        name_sources: vec![auth::NameSource::Subject],
        subject_match: SubjectMatch::CommonName,
    };
    let packet = Connect {
        version: Version::V311,
        clean_start: true,
        keep_alive: 60,
        properties: Vec::new(),
        client_id: "sensor-7".into(),
        will: None,
        username: Some(name.clone()),
        password: None,
    }
    .encode()
    .unwrap();
    let mut allowed = 0;
    for _ in 0..iters {
        allowed += measured_connect_path(&packet, &cert, &reg, &policy) as usize;
    }
    assert_eq!(allowed, iters, "the probe client is allowed");

    // (b) one 64-byte PUBLISH through the relay.
    let mut publish = vec![0x30, 62, 0, 8];
    publish.extend_from_slice(b"devices/");
    publish.resize(64, 0x5a);
    let mut relay = Relay::new();
    let mut client = OneMessage {
        msg: &publish,
        ready: false,
    };
    let mut broker = Sink(0);
    for _ in 0..iters {
        measured_relay_plain(&mut relay, &mut client, &mut broker);
    }
    assert_eq!(broker.0, (iters * 64) as u64);

    // (b') the same message's TLS work on mqttgate's side: decrypt in, encrypt out.
    let (mut c, mut s) = tls_pair();
    let mut records = Vec::with_capacity(iters);
    for _ in 0..iters {
        c.writer().write_all(&publish).expect("client writes");
        let mut r = Vec::new();
        c.write_tls(&mut r).expect("client record");
        records.push(r);
    }
    let mut out = Vec::with_capacity(256);
    for r in &records {
        measured_relay_tls(&mut s, r, &publish, &mut out);
    }
    println!(
        "clients={clients} iterations={iters} registry_len={} relayed_bytes={}",
        reg.len(),
        broker.0
    );
}
