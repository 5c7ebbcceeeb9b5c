//! The real mqttgate executable, started on an environment's files with ports of its own,
//! for what only a process shows: signals, exit status, the log on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, write, Env};

/// The real mqttgate binary, started on an environment's files with ports of its own.
pub struct Binary {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl Binary {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name ("TERM", "HUP").
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits for the process to exit (in a blocking thread) and returns its status.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Env {
    /// This environment's configuration on listen port `port` and admin port `admin`,
    /// rewritten by `edit`, written as `<name>.toml`.
    pub fn config_on_ports(
        &self,
        name: &str,
        port: u16,
        admin: u16,
        edit: impl Fn(String) -> String,
    ) -> PathBuf {
        let config = std::fs::read_to_string(&self.config_file)
            .unwrap()
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
                1,
            )
            .replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"127.0.0.1:{admin}\""),
            );
        write(self.dir.path(), &format!("{name}.toml"), &edit(config))
    }

    /// Starts the binary with this environment's configuration, rewritten by `edit`, on
    /// fresh listen and admin ports, with `global` arguments before `run` (e.g.
    /// `--log-format json`). Returns once the listener accepts connections.
    pub fn spawn_binary(
        &self,
        name: &str,
        global: &[&str],
        edit: impl Fn(String) -> String,
    ) -> Binary {
        // Another test may take a port between free_port() and the bind: the binary then
        // exits at start, and is started again on other ports.
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            let config_file = self.config_on_ports(name, port, admin, &edit);
            let log = self.path(&format!("{name}.log"));
            let mut child = Command::new(env!("CARGO_BIN_EXE_mqttgate"))
                // The tests read its info lines (and wait for "listening").
                .env("RUST_LOG", "info")
                .args(global)
                .args(["run", "--config"])
                .arg(&config_file)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
            let started = Instant::now();
            // Listening is logged once both listeners are bound; a port another process
            // holds would answer a connect without it.
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // a port was taken: try others
                }
                let listening =
                    std::fs::read_to_string(&log).is_ok_and(|l| l.contains("mqttgate listening"));
                if listening
                    && std::net::TcpStream::connect(addr).is_ok()
                    && std::net::TcpStream::connect(admin).is_ok()
                {
                    return Binary {
                        child: Some(child),
                        addr,
                        admin,
                        log,
                    };
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the mqttgate binary did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("the mqttgate binary exited at start 5 times (ports taken?)");
    }
}
