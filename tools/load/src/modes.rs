//! The load modes: connect storm, reconnect storm, idle sessions, publish/subscribe.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::*;

// ---- modes ----

pub(crate) async fn storm(cli: Arc<Cli>, concurrency: usize, max: u64) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let ok = Arc::new(AtomicU64::new(0));
    let started_count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(OnceLock::<String>::new());
    let before = cpu_snapshot(&watched);
    let self_before = self_cpu();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cli.duration);
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (cli, dialer, ok, errors, first_error, started_count) = (
            cli.clone(),
            dialer.clone(),
            ok.clone(),
            errors.clone(),
            first_error.clone(),
            started_count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut reader = Reader::new();
            while Instant::now() < deadline && started_count.fetch_add(1, Ordering::Relaxed) < max {
                let t = Instant::now();
                let r = timeout(Duration::from_secs(10), async {
                    reader.start = 0;
                    reader.end = 0;
                    let mut s = mqtt_connect(&cli, &dialer, client_id("s"), &mut reader).await?;
                    s.write_all(&[0xe0, 0x00])
                        .await
                        .map_err(|e| format!("DISCONNECT: {e}"))?;
                    let _ = s.shutdown().await;
                    Ok::<_, String>(())
                })
                .await
                .unwrap_or_else(|_| Err("timeout".into()));
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        lat.push(t.elapsed().as_nanos() as u64);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        let _ = first_error.set(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(&watched, &before);
    lat.sort_unstable();
    let n = ok.load(Ordering::Relaxed);
    json!({
        "mode": "storm",
        "negotiated": dialer.negotiated.get(),
        "connections": n,
        "errors": errors.load(Ordering::Relaxed),
        "first_error": first_error.get(),
        "seconds": elapsed,
        "conn_per_s": n as f64 / elapsed,
        "connect_ms_p50": percentile(&lat, 0.5).map(|v| v / 1000.0),
        "connect_ms_p99": percentile(&lat, 0.99).map(|v| v / 1000.0),
        "cpu_s": cpu,
        "loadgen_cpu_s": self_cpu() - self_before,
    })
}

/// TcpExt ListenOverflows from /proc/net/netstat (system-wide): SYNs or ACKs dropped
/// because an accept queue was full.
pub(crate) fn listen_overflows() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return f64::NAN;
    };
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = lines[..] else {
        return f64::NAN;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(f64::NAN)
}

pub(crate) async fn reconnect(cli: Arc<Cli>, clients: usize, limit: f64) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let retries = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(OnceLock::<String>::new());
    // Every client waits for one signal, so the connects leave together.
    let go = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (cli, dialer, retries, first_error, go, ready) = (
            cli.clone(),
            dialer.clone(),
            retries.clone(),
            first_error.clone(),
            go.clone(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let notified = go.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            ready.wait().await;
            notified.await;
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(limit);
            let id = client_id("r");
            let mut reader = Reader::new();
            let mut attempt = 0u32;
            loop {
                reader.start = 0;
                reader.end = 0;
                let left = deadline.saturating_duration_since(Instant::now());
                match timeout(left, mqtt_connect(&cli, &dialer, id.clone(), &mut reader)).await {
                    // Held open until the run ends, as a reconnected client stays.
                    Ok(Ok(s)) => return Some((start.elapsed(), s)),
                    Ok(Err(e)) => {
                        let _ = first_error.set(e);
                    }
                    Err(_) => return None,
                }
                retries.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                // Like a client library's reconnect delay: short, growing, capped.
                let pause = Duration::from_millis((100 * u64::from(attempt)).min(1000));
                if Instant::now() + pause >= deadline {
                    return None;
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    ready.wait().await;
    let before = cpu_snapshot(&watched);
    let overflows_before = listen_overflows();
    let start = Instant::now();
    go.notify_waiters();
    let mut admitted = Vec::with_capacity(clients);
    let mut held = Vec::with_capacity(clients);
    for t in tasks {
        if let Ok(Some((took, s))) = t.await {
            admitted.push(took.as_nanos() as u64 / 1000);
            held.push(s);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(&watched, &before);
    admitted.sort_unstable();
    let all = admitted.len() == clients;
    let out = json!({
        "mode": "reconnect",
        "negotiated": dialer.negotiated.get(),
        "clients": clients,
        "admitted": admitted.len(),
        "all_admitted_s": if all { admitted.last().map(|us| *us as f64 / 1e6) } else { None },
        "admitted_ms_p50": percentile(&admitted, 0.5),
        "admitted_ms_p99": percentile(&admitted, 0.99),
        "retries": retries.load(Ordering::Relaxed),
        "first_error": first_error.get(),
        "listen_overflows": listen_overflows() - overflows_before,
        "seconds": elapsed,
        "cpu_s": cpu,
    });
    drop(held);
    out
}

pub(crate) async fn idle(
    cli: Arc<Cli>,
    counts: Vec<usize>,
    concurrency: usize,
    settle_ms: u64,
    stage_timeout: f64,
) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let mut held: Vec<Dyn> = Vec::new();
    let mut stages = Vec::new();
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let rss = |w: &[Watched]| -> Value {
        let mut m = serde_json::Map::new();
        for p in w {
            m.insert(p.name.clone(), json!(rss_kib(p.pid)));
        }
        Value::Object(m)
    };
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    stages.push(
        json!({"connections": 0, "rss_kib": rss(&watched), "tcp_mem_pages": tcp_mem_pages()}),
    );
    for target in counts {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(stage_timeout);
        while held.len() < target && Instant::now() < deadline && errors < 1000 {
            let batch = (target - held.len()).min(concurrency.max(1));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch {
                let (cli, dialer) = (cli.clone(), dialer.clone());
                set.spawn(async move {
                    let mut reader = Reader::new();
                    timeout(
                        Duration::from_secs(10),
                        mqtt_connect(&cli, &dialer, client_id("i"), &mut reader),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timeout".into()))
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(s)) => held.push(s),
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        let open_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(settle_ms)).await;
        stages.push(json!({
            "connections": held.len(),
            "open_seconds": open_s,
            "rss_kib": rss(&watched),
            "tcp_mem_pages": tcp_mem_pages(),
        }));
    }
    let out = json!({
        "mode": "idle",
        "stages": stages,
        "errors": errors,
        "first_error": first_error,
    });
    // Close without waiting on each peer: dropping sends FIN.
    drop(held);
    out
}

/// Closed-loop accounting for unbounded publishing.
#[derive(Default)]
pub(crate) struct Flow {
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) forgiven: AtomicU64,
    pub(crate) wake: tokio::sync::Notify,
}

impl Flow {
    pub(crate) fn outstanding(&self) -> u64 {
        let done = self.delivered.load(Ordering::Relaxed) + self.forgiven.load(Ordering::Relaxed);
        self.published.load(Ordering::Relaxed).saturating_sub(done)
    }

    pub(crate) fn forgive(&self) {
        self.forgiven
            .fetch_add(self.outstanding(), Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(crate) struct SubStats {
    pub(crate) received: u64,
    pub(crate) lat_ns: Vec<u64>,
}

pub(crate) const LAT_CAP: usize = 2_000_000;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn pubsub(
    cli: Arc<Cli>,
    publishers: usize,
    subscribers: usize,
    qos: u8,
    size: usize,
    rate: f64,
    batch: usize,
    inflight: usize,
    topic_prefix: String,
    window: u64,
    warmup_ms: u64,
) -> Value {
    let dialer = Arc::new(Dialer::new(&cli).unwrap_or_else(|e| fail(&e)));
    let watched = parse_pids(&cli.pids).unwrap_or_else(|e| fail(&e));
    let v5 = cli.mqtt == 5;
    let size = size.max(8);
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Messages stamped at or after this (ns since epoch) are counted; u64::MAX: not yet.
    let window_start = Arc::new(AtomicU64::new(u64::MAX));
    let window_end = Arc::new(AtomicU64::new(u64::MAX));
    let subscribers = subscribers.max(1);
    let flow = Arc::new(Flow::default());

    // Subscribers first, each on its own topic; publishers spread over the topics.
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut reader = Reader::new();
        let mut s = mqtt_connect(&cli, &dialer, client_id("sub"), &mut reader)
            .await
            .unwrap_or_else(|e| fail(&format!("subscriber: {e}")));
        let topic = format!("{topic_prefix}/{}/t{i}", std::process::id());
        s.write_all(&subscribe_packet(v5, &topic, qos))
            .await
            .unwrap_or_else(|e| fail(&format!("subscribe: {e}")));
        let (first, _, _) = reader
            .next(&mut s)
            .await
            .unwrap_or_else(|e| fail(&format!("suback: {e}")));
        if first != 0x90 {
            fail(&format!("expected SUBACK, got {first:#x}"));
        }
        let (stop, ws, we, flow) = (
            stop.clone(),
            window_start.clone(),
            window_end.clone(),
            flow.clone(),
        );
        subs.push(tokio::spawn(async move {
            let mut st = SubStats::default();
            let mut acks: Vec<u8> = Vec::new();
            loop {
                let r = timeout(Duration::from_millis(200), reader.next(&mut s)).await;
                let (first, hl, p) = match r {
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => continue,
                    Ok(Err(_)) => break,
                    Ok(Ok(x)) => x,
                };
                if first >> 4 != 3 {
                    continue;
                }
                let pq = (first >> 1) & 3;
                let tl = u16::from_be_bytes([p[hl], p[hl + 1]]) as usize;
                let mut at = hl + 2 + tl;
                if pq > 0 {
                    acks.extend_from_slice(&[0x40, 0x02, p[at], p[at + 1]]);
                    at += 2;
                }
                if v5 {
                    at += 1 + p[at] as usize; // property length (small: one byte)
                }
                let now = epoch.elapsed().as_nanos() as u64;
                flow.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(ts) = p.get(at..at + 8) {
                    let sent = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
                    if sent >= ws.load(Ordering::Relaxed) && sent < we.load(Ordering::Relaxed) {
                        st.received += 1;
                        if st.lat_ns.len() < LAT_CAP {
                            st.lat_ns.push(now.saturating_sub(sent));
                        }
                    }
                }
                if reader.start == reader.end {
                    flow.wake.notify_waiters();
                }
                // Acknowledge when nothing more is buffered, so acks go out in batches.
                if !acks.is_empty() && reader.start == reader.end {
                    if s.write_all(&acks).await.is_err() {
                        break;
                    }
                    acks.clear();
                }
            }
            st
        }));
    }

    let sent = Arc::new(AtomicU64::new(0));
    let pub_errors = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    let per_pub = rate / publishers.max(1) as f64;
    for i in 0..publishers {
        let mut reader = Reader::new();
        let s = mqtt_connect(&cli, &dialer, client_id("pub"), &mut reader)
            .await
            .unwrap_or_else(|e| fail(&format!("publisher: {e}")));
        let topic = format!("{topic_prefix}/{}/t{}", std::process::id(), i % subscribers);
        let (stop, sent, pub_errors, ws, we, flow) = (
            stop.clone(),
            sent.clone(),
            pub_errors.clone(),
            window_start.clone(),
            window_end.clone(),
            flow.clone(),
        );
        pubs.push(tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(s);
            let acked = Arc::new(AtomicU64::new(0));
            let notify = Arc::new(tokio::sync::Notify::new());
            let (acked2, notify2, stop2) = (acked.clone(), notify.clone(), stop.clone());
            // Drains what the broker sends a publisher (PUBACKs for QoS 1).
            let drain = tokio::spawn(async move {
                while !stop2.load(Ordering::Relaxed) {
                    match timeout(Duration::from_millis(200), reader.next(&mut rd)).await {
                        Ok(Ok((first, _, _))) => {
                            if first >> 4 == 4 {
                                acked2.fetch_add(1, Ordering::Relaxed);
                                notify2.notify_one();
                            }
                        }
                        Ok(Err(_)) => break,
                        Err(_) => {}
                    }
                }
            });
            let mut payload = vec![0x5au8; size];
            let mut out = Vec::with_capacity(batch.max(1) * (size + 64));
            let mut id: u16 = 0;
            let mut my_sent = 0u64;
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                let n = if per_pub > 0.0 {
                    tick.tick().await;
                    let due = (t0.elapsed().as_secs_f64() * per_pub) as u64;
                    due.saturating_sub(my_sent).min(10_000) as usize
                } else {
                    // Closed loop: wait while the window is full. A message the broker
                    // dropped would hold the window forever, so a stall of 50 ms forgives
                    // what is outstanding.
                    let b = batch.max(1) as u64;
                    let mut progress = (flow.delivered.load(Ordering::Relaxed), Instant::now());
                    while flow.outstanding() + b > window {
                        let _ = timeout(Duration::from_millis(1), flow.wake.notified()).await;
                        let d = flow.delivered.load(Ordering::Relaxed);
                        if d != progress.0 {
                            progress = (d, Instant::now());
                        } else if progress.1.elapsed() > Duration::from_millis(50) {
                            flow.forgive();
                            break;
                        }
                    }
                    flow.published.fetch_add(b, Ordering::Relaxed);
                    b as usize
                };
                out.clear();
                let mut k = 0;
                while k < n {
                    if qos > 0 {
                        let outstanding = my_sent + k as u64 - acked.load(Ordering::Relaxed);
                        if outstanding >= inflight as u64 {
                            break;
                        }
                    }
                    id = id.wrapping_add(1).max(1);
                    let now = epoch.elapsed().as_nanos() as u64;
                    payload[..8].copy_from_slice(&now.to_be_bytes());
                    publish_packet(&mut out, v5, &topic, qos, id, &payload);
                    k += 1;
                    if now >= ws.load(Ordering::Relaxed) && now < we.load(Ordering::Relaxed) {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if k == 0 {
                    // Window full: wait for an acknowledgement (bounded).
                    let _ = timeout(Duration::from_millis(50), notify.notified()).await;
                    continue;
                }
                my_sent += k as u64;
                if wr.write_all(&out).await.is_err() {
                    pub_errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if per_pub <= 0.0 {
                    tokio::task::yield_now().await;
                }
            }
            let _ = wr.write_all(&[0xe0, 0x00]).await;
            let _ = wr.shutdown().await;
            let _ = timeout(Duration::from_millis(500), drain).await;
        }));
    }

    tokio::time::sleep(Duration::from_millis(warmup_ms)).await;
    let before = cpu_snapshot(&watched);
    let self_before = self_cpu();
    window_start.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(cli.duration)).await;
    window_end.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    // Messages sent inside the window may still be on their way: give them a moment, but
    // charge the CPU of the window only.
    let cpu = cpu_delta(&watched, &before);
    let loadgen_cpu = self_cpu() - self_before;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        let _ = timeout(Duration::from_secs(3), p).await;
    }
    let mut received = 0;
    let mut lat = Vec::new();
    for s in subs {
        if let Ok(Ok(st)) = timeout(Duration::from_secs(3), s).await {
            received += st.received;
            lat.extend(st.lat_ns);
        }
    }
    lat.sort_unstable();
    let sent = sent.load(Ordering::Relaxed);
    json!({
        "mode": "pubsub",
        "publishers": publishers,
        "subscribers": subscribers,
        "qos": qos,
        "size": size,
        "rate": rate,
        "seconds": window,
        "sent": sent,
        "received": received,
        "lost": sent.saturating_sub(received),
        "msgs_per_s": received as f64 / window,
        "bytes_per_s": received as f64 * size as f64 / window,
        "lat_us_p50": percentile(&lat, 0.5),
        "lat_us_p90": percentile(&lat, 0.9),
        "lat_us_p99": percentile(&lat, 0.99),
        "lat_us_max": lat.last().map(|v| *v as f64 / 1000.0),
        "publish_errors": pub_errors.load(Ordering::Relaxed),
        "cpu_s": cpu,
        "loadgen_cpu_s": loadgen_cpu,
    })
}
