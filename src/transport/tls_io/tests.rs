//! Against a real rustls client over an in-memory pipe: a small pipe so every flight
//! and record crosses it in pieces.

use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::*;
use crate::cli::pki::{Ca, LeafSpec};
use crate::server::slots::{Slots, Stage};

const PIPE: usize = 4096;
const DEADLINE: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config whose certificate chain is at least `chain_bytes` long (long DNS
/// names in the leaf), and a client config that trusts it.
fn configs(chain_bytes: usize) -> (Arc<ServerConfig>, Arc<ClientConfig>, usize) {
    let root = Ca::root("tls_io test root").unwrap();
    let inter = root.intermediate("tls_io test intermediate").unwrap();
    let mut spec = LeafSpec::server();
    let mut i = 0;
    while spec.dns.iter().map(|d| d.len() + 4).sum::<usize>() < chain_bytes {
        spec.dns.push(format!("{i:04}.{}.example", "a".repeat(60)));
        i += 1;
    }
    let leaf = inter.issue(&spec).unwrap();
    let chain = vec![
        CertificateDer::from(leaf.der.clone()),
        CertificateDer::from(inter.cert.der.clone()),
    ];
    let chain_len = chain.iter().map(|c| c.len()).sum();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.cert.der.clone()))
        .unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client), chain_len)
}

/// A completed handshake: the server's end and the client's.
async fn pair(chain_bytes: usize) -> (TlsConn<DuplexStream>, TlsStream<DuplexStream>) {
    let (server, client, _) = configs(chain_bytes);
    let (a, b) = duplex(PIPE);
    let name = ServerName::try_from("localhost").unwrap();
    let (s, c) = timeout(DEADLINE, async {
        tokio::join!(
            TlsConn::accept(server, a),
            TlsConnector::from(client).connect(name, b)
        )
    })
    .await
    .expect("handshake finished in time");
    (s.expect("server handshake"), c.expect("client handshake"))
}

#[tokio::test]
async fn server_flight_larger_than_a_pool_buffer_completes() {
    let (_, _, chain_len) = configs(21 * 1024);
    assert!(chain_len > pool::SIZE, "chain of {chain_len} bytes");
    let (mut s, mut c) = pair(21 * 1024).await;
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 4];
    timeout(DEADLINE, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    s.write_all(b"pong").await.unwrap();
    s.flush().await.unwrap();
    timeout(DEADLINE, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"pong");
}

#[tokio::test]
async fn one_byte_reads_get_every_byte_in_order() {
    let (mut s, mut c) = pair(0).await;
    let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            c.write_all(&sent).await.unwrap();
            c.flush().await.unwrap();
            c
        })
    };
    let mut got = Vec::with_capacity(sent.len());
    let mut one = [0u8; 1];
    while got.len() < sent.len() {
        let n = timeout(DEADLINE, s.read(&mut one)).await.unwrap().unwrap();
        assert_eq!(n, 1, "a 1-byte read makes progress until the data ends");
        got.push(one[0]);
    }
    assert_eq!(got, sent);
    writer.await.unwrap();
}

#[tokio::test]
async fn eof_without_close_notify_is_unexpected_eof() {
    let (mut s, c) = pair(0).await;
    let (tcp, _) = c.into_inner();
    drop(tcp);
    let mut buf = [0u8; 64];
    let err = timeout(DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn client_close_notify_is_a_clean_end_after_its_data() {
    let (mut s, mut c) = pair(0).await;
    c.write_all(b"last words").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .unwrap()
        .expect("close_notify ends the stream cleanly");
    assert_eq!(got, b"last words");
}

#[tokio::test]
async fn server_close_notify_is_a_clean_end_for_the_client() {
    let (mut s, mut c) = pair(0).await;
    s.write_all(b"bye").await.unwrap();
    timeout(DEADLINE, s.shutdown()).await.unwrap().unwrap();
    let mut got = Vec::new();
    timeout(DEADLINE, c.read_to_end(&mut got))
        .await
        .unwrap()
        .expect("the client saw close_notify, not a bare EOF");
    assert_eq!(got, b"bye");
    // rustls' client answers with its own close_notify, which the server reads as the end.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

/// A peer that keeps sending one endless handshake message gets an error once the
/// receive buffer's bound is reached; the server has taken at most that bound.
#[tokio::test]
async fn endless_handshake_message_is_refused_within_the_receive_bound() {
    let (server, _, _) = configs(0);
    let (a, mut b) = duplex(PIPE);
    let accept = tokio::spawn(TlsConn::accept(server, a));
    // A ClientHello announcing the largest length, then record after record of it.
    let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xff];
    first.resize(5 + 0x4000, 0x41);
    let mut more = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    more.resize(5 + 0x4000, 0x41);
    let mut written = 0usize;
    let sending = async {
        b.write_all(&first).await?;
        written += first.len();
        for _ in 0..64 {
            b.write_all(&more).await?;
            written += more.len();
        }
        io::Result::Ok(())
    };
    let sent = timeout(DEADLINE, sending)
        .await
        .expect("the server stops reading");
    assert!(sent.is_err(), "the server must close before 1 MiB arrives");
    let err = timeout(DEADLINE, accept)
        .await
        .unwrap()
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(
        written <= MAX_IN + PIPE + more.len(),
        "server took {written} bytes"
    );
}

/// Many KeyUpdates with no data between them: rustls' limit ends the connection with
/// an error instead of answering each one.
#[tokio::test]
async fn key_update_flood_without_data_is_refused() {
    let (mut s, mut c) = pair(0).await;
    let flood = async {
        for _ in 0..200 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            c.flush().await?;
        }
        io::Result::Ok(())
    };
    let reading = async {
        let mut buf = [0u8; 64];
        loop {
            if s.read(&mut buf).await? == 0 {
                return io::Result::Ok(());
            }
        }
    };
    let (_, read) = timeout(DEADLINE, async { tokio::join!(flood, reading) })
        .await
        .expect("no hang");
    let err = read.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

/// KeyUpdates between data, each asking the server to update too: every byte still
/// arrives, every answer decrypts at the client, memory stays in the pool's buffers.
#[tokio::test]
async fn key_updates_between_data_keep_both_directions_working() {
    let (mut s, mut c) = pair(0).await;
    let client = async {
        let mut echo = [0u8; 1];
        for i in 0..500u32 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            c.write_all(&[(i % 256) as u8]).await?;
            c.flush().await?;
            c.read_exact(&mut echo).await?;
            assert_eq!(echo[0], (i % 256) as u8);
        }
        c.shutdown().await
    };
    let server = async {
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            s.write_all(&buf[..n]).await?;
            s.flush().await?;
            assert!(s.plain.capacity() <= MAX_IN);
        }
    };
    let (c, s) = timeout(DEADLINE, async { tokio::join!(client, server) })
        .await
        .expect("no hang");
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn a_partial_client_hello_is_idle_and_an_answered_one_progressing() {
    let (server, client, _) = configs(0);
    let (slots, pending) = Slots::one_pending();
    let (a, mut b) = duplex(64 * 1024);
    let served = tokio::spawn(async move { pending.watch(TlsConn::accept(server, a)).await });
    slots.reaches(Stage::Accepted).await;
    let mut hello = Vec::new();
    let name = ServerName::try_from("localhost").unwrap();
    rustls::ClientConnection::new(client, name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    // Half a ClientHello, however long it takes to drip: still idle.
    b.write_all(&hello[..hello.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(slots.stages(), [Stage::Accepted]);
    // The rest: mqttgate answers it, and the connection is progressing.
    b.write_all(&hello[hello.len() / 2..]).await.unwrap();
    slots.reaches(Stage::Hello).await;
    drop(b);
    let _ = timeout(DEADLINE, served)
        .await
        .expect("ends once the client is gone");
}

#[tokio::test]
async fn idle_after_the_handshake_until_the_first_connect_byte() {
    let (server, client, _) = configs(0);
    let (slots, pending) = Slots::one_pending();
    let (a, b) = duplex(PIPE);
    let served = tokio::spawn(async move {
        pending
            .watch(async {
                let mut tls = TlsConn::accept(server, a).await.unwrap();
                let mut buf = Vec::new();
                let deadline = tokio::time::Instant::now() + DEADLINE;
                crate::transport::packet_io::read_packet(&mut tls, &mut buf, deadline, 64, |b| {
                    crate::mqtt::packet_len(b).map(|n| n.filter(|&n| b.len() >= n))
                })
                .await
                .map_err(|e| e.to_string())
            })
            .await
    });
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = TlsConnector::from(client).connect(name, b).await.unwrap();
    slots.reaches(Stage::Handshaken).await;
    // The first byte of a CONNECT (a PINGREQ's here): progressing from then on.
    c.write_all(&[0xc0]).await.unwrap();
    c.flush().await.unwrap();
    slots.reaches(Stage::Connecting).await;
    c.write_all(&[0x00]).await.unwrap();
    c.flush().await.unwrap();
    let read = timeout(DEADLINE, served).await.unwrap().unwrap();
    assert_eq!(read, Ok(Ok(2)));
}
