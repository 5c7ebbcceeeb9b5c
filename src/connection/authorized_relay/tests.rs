use super::*;
use crate::authz::{Authz, Facts, Files};
use crate::config::AuthzMode;
use crate::connection::authorize::Counters;
use crate::metrics::Metrics;
use crate::mqtt::client_packets as packets;
use std::path::Path;
use std::time::Duration;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

const GROUPS: &str = r#"[]"#;
const SPACES: &str = r#"[{"name":"mine","topicTemplates":["ok/#"]}]"#;
const BINDINGS: &str = r#"[{"name":"pub-mine","clientGroupName":"$all","topicSpaceName":"mine","permission":"Publisher"},{"name":"sub-mine","clientGroupName":"$all","topicSpaceName":"mine","permission":"Subscriber"}]"#;

fn relay(version: Version, pipelined: &[u8]) -> AuthorizedRelay {
    let p = Path::new("x.json");
    let files = Files {
        client_groups: p,
        topic_spaces: p,
        permission_bindings: p,
    };
    let model = Authz::parse(&files, GROUPS, SPACES, BINDINGS).unwrap();
    let perms = model.permissions(&Facts::new("c", &[]));
    let metrics = Metrics::new();
    let counters = Counters::new(&metrics, AuthzMode::Enforce);
    let auth = Authorizer::new(perms, AuthzMode::Enforce, version, 4, counters, "c".into());
    AuthorizedRelay::new(
        auth,
        version,
        pipelined.to_vec(),
        PacketBoundary::default(),
        (metrics.up_bytes(), metrics.down_bytes()),
    )
}

fn publish(version: Version, topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&[0, 7]);
    }
    if version == Version::V5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    let mut out = vec![0x30 | qos << 1];
    crate::mqtt::put_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Runs the relay between two duplex pairs; returns the client's and broker's ends.
fn start(mut r: AuthorizedRelay) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Ended>) {
    let (client_app, mut client) = duplex(1 << 20);
    let (mut upstream, broker) = duplex(1 << 20);
    let task = tokio::spawn(async move {
        loop {
            match r.run(&mut client, &mut upstream).await {
                Ended::HalfClosed => continue,
                e => return e,
            }
        }
    });
    (client_app, broker, task)
}

async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("in time")
        .unwrap();
    got
}

#[tokio::test]
async fn denied_publishes_are_dropped_and_answered_allowed_ones_pass_byte_for_byte() {
    let v5 = Version::V5;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let allowed = publish(v5, "ok/1", 1, &big);
    let denied_big = publish(v5, "no/1", 1, &big);
    let pipelined = publish(v5, "no/0", 0, b"x");
    let (mut client, mut broker, _task) = start(relay(v5, &pipelined));
    let small = publish(v5, "ok/2", 0, b"hi");
    let stream = [&denied_big[..], &allowed, &small].concat();
    // Written in odd-sized pieces, so heads and payloads split across reads.
    for chunk in stream.chunks(7_777) {
        client.write_all(chunk).await.unwrap();
    }
    let want = [&allowed[..], &small].concat();
    assert_eq!(read_n(&mut broker, want.len()).await, want);
    assert_eq!(read_n(&mut client, 5).await, [0x40, 0x03, 0x00, 0x07, 0x87]);
}

#[tokio::test]
async fn a_mixed_subscribe_is_cut_down_and_the_suback_merged_between_broker_packets() {
    let v5 = Version::V5;
    let (mut client, mut broker, _task) = start(relay(v5, &[]));
    // SUBSCRIBE id 3: "no/x" (denied), "ok/#" (allowed).
    let sub = [
        0x82, 0x0f, 0x00, 0x03, 0x00, 0x00, 0x04, b'n', b'o', b'/', b'x', 0x01, 0x00, 0x04, b'o',
        b'k', b'/', b'#', 0x01,
    ];
    let mut sub = sub.to_vec();
    sub[1] = (sub.len() - 2) as u8;
    client.write_all(&sub).await.unwrap();
    let cut = [
        0x82, 0x0a, 0x00, 0x03, 0x00, 0x00, 0x04, b'o', b'k', b'/', b'#', 0x01,
    ];
    assert_eq!(read_n(&mut broker, cut.len()).await, cut);
    // A PUBLISH split around the broker's SUBACK arrival, then the SUBACK.
    let p = publish(v5, "ok/a", 0, b"payload");
    broker.write_all(&p[..4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker.write_all(&p[4..]).await.unwrap();
    broker
        .write_all(&[0x90, 0x04, 0x00, 0x03, 0x00, 0x01])
        .await
        .unwrap();
    let want = [&p[..], &[0x90, 0x05, 0x00, 0x03, 0x00, 0x87, 0x01]].concat();
    assert_eq!(read_n(&mut client, want.len()).await, want);
}

#[tokio::test]
async fn an_answer_waits_for_the_broker_packet_in_progress() {
    let v5 = Version::V5;
    let (mut client, mut broker, _task) = start(relay(v5, &[]));
    let p = publish(v5, "ok/a", 0, b"0123456789");
    broker.write_all(&p[..6]).await.unwrap();
    assert_eq!(read_n(&mut client, 6).await, &p[..6]);
    client.write_all(&publish(v5, "no", 1, b"")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    broker.write_all(&p[6..]).await.unwrap();
    let want = [&p[6..], &[0x40, 0x03, 0x00, 0x07, 0x87]].concat();
    assert_eq!(read_n(&mut client, want.len()).await, want);
}

#[tokio::test]
async fn a_denied_v311_publish_ends_the_session() {
    let v3 = Version::V311;
    let (mut client, mut broker, task) = start(relay(v3, &[]));
    let ok = publish(v3, "ok/a", 0, b"1");
    client
        .write_all(&[&ok[..], &publish(v3, "no", 0, b"2")].concat())
        .await
        .unwrap();
    assert_eq!(read_n(&mut broker, ok.len()).await, ok);
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Ended::NotAuthorized), "{ended:?}");
}

#[tokio::test]
async fn an_unknown_alias_ends_the_session() {
    let v5 = Version::V5;
    // Alias 2 never set, empty topic.
    let p = [0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x02];
    let (_client, _broker, task) = start(relay(v5, &p));
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ended, Ended::ProtocolError), "{ended:?}");
}

/// A JWT session's relay without `[authorization]`: topics pass unchecked, an AUTH
/// is handed up whole and nothing after it moves until the session has decided it.
#[tokio::test]
async fn an_auth_is_handed_up_whole_never_forwarded_and_answered_between_broker_packets() {
    let v5 = Version::V5;
    let metrics = Metrics::new();
    let mut r = AuthorizedRelay::new(
        Authorizer::allow_all(v5, "c".into()),
        v5,
        Vec::new(),
        PacketBoundary::default(),
        (metrics.up_bytes(), metrics.down_bytes()),
    );
    let (mut client_app, mut client) = duplex(1 << 20);
    let (mut upstream, mut broker) = duplex(1 << 20);
    let (handed, mut handed_rx) = tokio::sync::mpsc::unbounded_channel();
    let (go, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            match r.run(&mut client, &mut upstream).await {
                Ended::HalfClosed => {}
                Ended::Reauthenticate(packet) => {
                    handed.send(packet).unwrap();
                    go_rx.recv().await.unwrap();
                    r.answer(&[0xF0, 0x00]);
                }
                e => return e,
            }
        }
    });
    // Denied by `relay()`'s grants; no topic checks here.
    let before = publish(v5, "no/1", 1, b"x");
    let auth = [0xF0, 0x06, 0x19, 0x04, 0x16, 0x00, 0x01, b't'];
    let after = publish(v5, "no/2", 0, b"after");
    // A broker PUBLISH in progress: the answer waits for its end.
    let down = publish(v5, "d", 0, b"0123456789");
    broker.write_all(&down[..5]).await.unwrap();
    assert_eq!(read_n(&mut client_app, 5).await, &down[..5]);
    for chunk in [&before[..], &auth, &after].concat().chunks(3) {
        client_app.write_all(chunk).await.unwrap();
    }
    assert_eq!(read_n(&mut broker, before.len()).await, before);
    let got = tokio::time::timeout(Duration::from_secs(5), handed_rx.recv()).await;
    assert_eq!(got.unwrap().unwrap(), Ok(auth.to_vec()));
    let early = tokio::time::timeout(Duration::from_millis(100), broker.read_u8()).await;
    assert!(
        early.is_err(),
        "a byte after the AUTH moved before it was decided"
    );
    go.send(()).unwrap();
    assert_eq!(read_n(&mut broker, after.len()).await, after);
    broker.write_all(&down[5..]).await.unwrap();
    let want = [&down[5..], &[0xF0, 0x00]].concat();
    assert_eq!(read_n(&mut client_app, want.len()).await, want);
}

#[tokio::test]
async fn an_auth_past_the_bound_is_handed_up_as_its_length_unread() {
    let v5 = Version::V5;
    let mut header = vec![0xF0];
    crate::mqtt::put_varint(&mut header, MAX_AUTH);
    let total = header.len() + MAX_AUTH;
    let (_client, _broker, task) = start(relay(v5, &header));
    let ended = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, Ended::Reauthenticate(Err(n)) if n == total),
        "{ended:?}"
    );
}

#[tokio::test]
async fn type_15_is_not_ours_in_v311() {
    let v3 = Version::V311;
    let (_client, mut broker, _task) = start(relay(v3, &[0xF0, 0x00]));
    assert_eq!(read_n(&mut broker, 2).await, [0xF0, 0x00]);
}

/// The relay code's own cost per 64-byte QoS 0 PUBLISH (v3.1.1, batches of 16, one
/// pooled buffer per read), plain vs authorized, over in-memory streams: the added
/// nanoseconds per message without TLS or the machine's noise around them.
/// `cargo test --release --lib relay_cost -- --ignored --nocapture`
#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement, not a check"]
async fn relay_cost_per_small_publish() {
    const MESSAGES: usize = 400_000;
    let v3 = Version::V311;
    let one = publish(v3, "bench/12345/t3", 0, &[7u8; 64]);
    let batch: Vec<u8> = one.repeat(16);
    let spaces = r#"[{"name":"own","topicTemplates":["devices/${client.authenticationName}/telemetry/#","devices/${client.authenticationName}/status","fleets/+/vehicles/${client.authenticationName}/#"]},{"name":"bench","topicTemplates":["bench/#"]}]"#;
    let bindings = r#"[{"name":"a-own","clientGroupName":"$all","topicSpaceName":"own","permission":"Publisher"},{"name":"b-bench","clientGroupName":"$all","topicSpaceName":"bench","permission":"Publisher"}]"#;
    let p = Path::new("x.json");
    let files = Files {
        client_groups: p,
        topic_spaces: p,
        permission_bindings: p,
    };
    let model = Authz::parse(&files, "[]", spaces, bindings).unwrap();
    let perms = model.permissions(&Facts::new("c", &[]));
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let mut topics = 0;
        for _ in 0..MESSAGES {
            let one = std::hint::black_box(&one);
            let h = packets::fixed_header(one).unwrap().unwrap();
            let head = packets::publish_head(v3, h.first, &one[h.header_len..], h.body_len);
            topics += head.unwrap().unwrap().topic.len();
        }
        let parse = t.elapsed().as_nanos() as f64 / MESSAGES as f64;
        let t = std::time::Instant::now();
        for _ in 0..MESSAGES {
            let topic = std::hint::black_box("bench/12345/t3");
            topics += perms.decide(crate::authz::Action::Publish, topic).is_some() as usize;
        }
        let decide = t.elapsed().as_nanos() as f64 / MESSAGES as f64;
        assert!(topics > MESSAGES);
        println!("parse: {parse:.0} ns, decide: {decide:.0} ns per message");
    }
    for authorized in [false, true, false, true] {
        let (mut client_app, mut client) = duplex(1 << 16);
        let (mut upstream, mut broker) = duplex(1 << 16);
        let metrics = Metrics::new();
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            while let Ok(n) = broker.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        let batch = batch.clone();
        let writer = tokio::spawn(async move {
            for _ in 0..MESSAGES / 16 {
                client_app.write_all(&batch).await.unwrap();
            }
            client_app.shutdown().await.unwrap();
            client_app
        });
        let started = std::time::Instant::now();
        if authorized {
            let perms = model.permissions(&Facts::new("c", &[]));
            let counters = Counters::new(&metrics, AuthzMode::Enforce);
            let auth = Authorizer::new(perms, AuthzMode::Enforce, v3, 0, counters, "c".into());
            let mut r = AuthorizedRelay::new(
                auth,
                v3,
                Vec::new(),
                PacketBoundary::default(),
                (metrics.up_bytes(), metrics.down_bytes()),
            );
            let _ = r.run(&mut client, &mut upstream).await;
        } else {
            let mut r = crate::transport::relay::Relay::with_counters(
                metrics.up_bytes(),
                metrics.down_bytes(),
            );
            let _ = r.run(&mut client, &mut upstream).await;
        }
        let elapsed = started.elapsed();
        drop(upstream);
        let _app = writer.await.unwrap();
        assert_eq!(drain.await.unwrap(), MESSAGES * one.len());
        println!(
            "{}: {:.0} ns per message",
            if authorized { "authorized" } else { "plain" },
            elapsed.as_nanos() as f64 / MESSAGES as f64
        );
    }
}

/// A broker stream whose first flushes are not done at once (a full socket buffer).
struct SlowFlush {
    inner: DuplexStream,
    pending_flushes: usize,
}

impl AsyncRead for SlowFlush {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlowFlush {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending_flushes > 0 {
            self.pending_flushes -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_auth_behind_a_flush_that_waits_is_still_handed_up() {
    let v5 = Version::V5;
    let metrics = Metrics::new();
    let before = publish(v5, "no/1", 0, b"x");
    let auth = [0xF0, 0x06, 0x19, 0x04, 0x16, 0x00, 0x01, b't'];
    let mut r = AuthorizedRelay::new(
        Authorizer::allow_all(v5, "c".into()),
        v5,
        [&before[..], &auth].concat(),
        PacketBoundary::default(),
        (metrics.up_bytes(), metrics.down_bytes()),
    );
    let (_client_app, mut client) = duplex(1 << 20);
    let (upstream, mut broker) = duplex(1 << 20);
    let mut upstream = SlowFlush {
        inner: upstream,
        pending_flushes: 1,
    };
    let ended = tokio::time::timeout(Duration::from_secs(5), r.run(&mut client, &mut upstream))
        .await
        .expect("the AUTH is handed up, not lost while the flush before it waits");
    assert!(
        matches!(&ended, Ended::Reauthenticate(Ok(p)) if p == &auth),
        "{ended:?}"
    );
    assert_eq!(read_n(&mut broker, before.len()).await, before);
}
