//! A real HTTPS authentication webhook: Python's http.server over ssl
//! (tests/python/webhook_server.py), its certificate from the test PKI, requiring
//! mqttgate's own client certificate and recording every request it is sent.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use mqttgate::cli::pki::Ca;
use serde_json::Value;

use super::{leaf, write};

/// The bearer token the webhook expects (never logged by mqttgate).
pub const TOKEN: &str = "tok-7f3a9c-never-log-me";

/// The Python webhook: its port, what it recorded, and its files (the CA that issued
/// its certificate is the harness root).
pub struct Hook {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Hook {
    pub fn start(root: &Ca) -> Hook {
        let dir = tempfile::tempdir().unwrap();
        let server = root.issue(&mqttgate::cli::pki::LeafSpec::server()).unwrap();
        let cert = write(dir.path(), "hook.pem", &server.cert_pem);
        let key = write(dir.path(), "hook.key", &server.key_pem);
        let ca = write(dir.path(), "hook-ca.pem", &root.cert.cert_pem);
        write(dir.path(), "token", &format!("{TOKEN}\n"));
        // mqttgate's certificate towards the webhook (mutual TLS).
        let me = root.issue(&leaf("mqttgate-gw")).unwrap();
        write(dir.path(), "gw.pem", &me.cert_pem);
        write(dir.path(), "gw.key", &me.key_pem);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/webhook_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([&cert, &key, &dir.path().join("requests.jsonl"), &ca])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("webhook server did not start: {line:?}"));
        Hook { child, port, dir }
    }

    /// The `[auth.webhook]` section for this webhook, with `more` lines in it.
    pub fn section(&self, more: &str) -> String {
        self.section_for(&format!("https://localhost:{}/mqtt/auth", self.port), more)
    }

    pub fn section_for(&self, url: &str, more: &str) -> String {
        let p = |n: &str| self.dir.path().join(n).display().to_string();
        format!(
            "\n[auth.webhook]\nurl = \"{url}\"\nca_certificates = \"{}\"\nbearer_token_file = \"{}\"\nclient_certificate = \"{}\"\nclient_key = \"{}\"\n{more}\n",
            p("hook-ca.pem"),
            p("token"),
            p("gw.pem"),
            p("gw.key")
        )
    }

    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The requests whose body's userName (or clientId) is `key`.
    pub fn requests_for(&self, key: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r["body"]["userName"] == key
                    || (r["body"]["userName"].is_null() && r["body"]["clientId"] == key)
            })
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
