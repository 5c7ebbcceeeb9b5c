//! Brokers: a real Mosquitto (found or installed), a back-end subscriber straight on it,
//! and a stand-in broker that records what mqttgate sends upstream.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{eventually, free_port, write};

static INSTALL: Once = Once::new();

pub(super) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds a Mosquitto tool, installing the Debian packages once if it is missing.
pub fn tool(name: &str) -> PathBuf {
    if let Some(p) = find_tool(name) {
        return p;
    }
    INSTALL.call_once(|| {
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "mosquitto", "mosquitto-clients"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    });
    find_tool(name).unwrap_or_else(|| {
        panic!("{name} is not installed and could not be installed: run `apt-get install mosquitto mosquitto-clients`")
    })
}

/// A real Mosquitto on 127.0.0.1 that trusts the username mqttgate injects, with the ACL
/// `pattern readwrite devices/%u/#`.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// Its stderr; `log_type subscribe` puts one line per SUBSCRIBE there.
    log: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        // Anonymous clients (back-end services on loopback) may read every device's topics;
        // clients coming through mqttgate always have a username, so only the pattern applies.
        Mosquitto::start_with_acl(
            dir,
            "topic read devices/#\n\npattern readwrite devices/%u/#\n",
        )
    }

    /// A Mosquitto whose `acl_file` holds `acl`.
    pub fn start_with_acl(dir: &Path, acl: &str) -> Mosquitto {
        let bin = tool("mosquitto");
        let acl = write(dir, "acl", acl);
        for _ in 0..20 {
            let port = free_port();
            let conf = write(
                dir,
                "mosquitto.conf",
                &format!(
                    "per_listener_settings true\nlistener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type subscribe\nmax_packet_size 4194304\n",
                    acl.display()
                ),
            );
            let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start mosquitto");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Mosquitto {
                        child,
                        port,
                        log: dir.join("mosquitto.log"),
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "mosquitto did not start; see {}",
            dir.join("mosquitto.log").display()
        );
    }

    /// How many SUBSCRIBEs to `filter` the broker has processed, from its log lines
    /// "<time>: <client id> <qos> <filter>". Mosquitto is single-threaded and logs once the
    /// subscription is in place, so a PUBLISH it processes after the line reaches it.
    pub fn subscriptions(&self, filter: &str) -> usize {
        let suffix = format!(" {filter}");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with(&suffix) && l.split(' ').count() == 4)
            .count()
    }

    /// Waits until the broker has processed `n` SUBSCRIBEs to `filter`.
    pub async fn await_subscriptions(&self, filter: &str, n: usize) {
        assert!(
            eventually(Duration::from_secs(10), || self.subscriptions(filter) >= n).await,
            "the broker saw {} of {n} SUBSCRIBEs to {filter}",
            self.subscriptions(filter)
        );
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A back-end subscriber straight on the broker (anonymous, loopback): a mosquitto_sub
/// whose printed payloads are collected as they arrive.
pub struct Backend {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Starts a back-end subscriber to `topic` at QoS 1 and returns once the broker has its
/// subscription.
pub async fn backend_sub(broker: &Mosquitto, topic: &str) -> Backend {
    let before = broker.subscriptions(topic);
    let mut child = Command::new(tool("mosquitto_sub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (stdout, sink) = (child.stdout.take().unwrap(), lines.clone());
    // mosquitto_sub flushes after each message; the thread ends when it exits.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    broker.await_subscriptions(topic, before + 1).await;
    Backend {
        child,
        lines,
        reader: Some(reader),
    }
}

impl Backend {
    /// The payloads printed so far, one per line.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Stops the subscriber and returns the lines it printed.
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // What was still in the pipe.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in broker: records what the first connection that sends anything transmits,
/// up to a whole CONNECT, answers CONNACK 0, and returns what it recorded. Connections that
/// close without a byte (mqttgate's readiness probes) are skipped.
pub async fn recording_broker() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            loop {
                if let Ok(Some(_)) = mqttgate::mqtt::parse_connect(&buf, 1 << 20) {
                    let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]).await;
                    return buf;
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    assert!(buf.is_empty(), "mqttgate closed before a whole CONNECT");
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    });
    (addr, task)
}

/// A stand-in broker for one whole session: answers the CONNECT of the first connection
/// that sends anything with a v5 CONNACK 0, and returns every byte that connection sent
/// (CONNECT included) once it closes. It answers nothing else.
pub async fn session_recording_broker() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let (mut buf, mut answered) = (Vec::new(), false);
            loop {
                if !answered && matches!(mqttgate::mqtt::parse_connect(&buf, 1 << 20), Ok(Some(_)))
                {
                    let _ = s.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
                    answered = true;
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            // mqttgate's readiness probes close without a byte.
            if !buf.is_empty() {
                return buf;
            }
        }
    });
    (addr, task)
}

/// The first byte of each whole MQTT packet in `bytes`, in order.
pub fn packet_types(bytes: &[u8]) -> Vec<u8> {
    let mut firsts = Vec::new();
    let mut at = 0;
    while let Ok(Some(len)) = mqttgate::mqtt::packet_len(&bytes[at..]) {
        if at + len > bytes.len() {
            break;
        }
        firsts.push(bytes[at]);
        at += len;
    }
    firsts
}
