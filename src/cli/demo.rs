//! `mqttgate certs demo DIR`: a complete demo deployment in one folder: a root CA, an
//! intermediate (the one registered, as Azure recommends), mqttgate's server certificate,
//! one client per validation scheme, a self-signed thumbprint client, a disabled client,
//! the registry JSON, mqttgate's config and a Mosquitto config. Keys are written with
//! mode 0600 and must never be committed (certs/demo is git-ignored).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::cli::pki::{self, Ca, Issued, LeafSpec};
use crate::trust::cert::Thumbprint;

pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// One demo client: its registry entry and certificate.
pub struct DemoClient {
    pub name: &'static str,
    pub scheme: &'static str,
    pub authentication_name: String,
    pub enabled: bool,
}

/// Ports the demo files point at.
#[derive(Clone, Copy, Debug)]
pub struct DemoPorts {
    pub listen: u16,
    pub admin: u16,
    pub broker: u16,
}

impl Default for DemoPorts {
    fn default() -> Self {
        DemoPorts {
            listen: 8883,
            admin: 9090,
            broker: 18830,
        }
    }
}

fn write_file(path: &Path, content: &str, secret: bool) -> Result<(), DemoError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

fn write_pair(dir: &Path, name: &str, issued: &Issued) -> Result<(), DemoError> {
    write_file(&dir.join(format!("{name}.pem")), &issued.cert_pem, false)?;
    write_file(&dir.join(format!("{name}.key")), &issued.key_pem, true)
}

/// Writes the demo into `dir` (created if missing) and returns the clients it made.
pub fn generate(dir: &Path, ports: DemoPorts) -> Result<Vec<DemoClient>, DemoError> {
    fs::create_dir_all(dir.join("clients"))?;
    let root = Ca::root("mqttgate demo root CA")?;
    let inter = root.intermediate("mqttgate demo devices CA")?;
    write_pair(dir, "root-ca", &root.cert)?;
    write_pair(dir, "devices-ca", &inter.cert)?;
    // Clients verify mqttgate against the root; mqttgate trusts the devices intermediate only.
    write_file(&dir.join("server-ca.pem"), &root.cert.cert_pem, false)?;
    let server = root.issue(&LeafSpec::server())?;
    write_pair(dir, "server", &server)?;

    let base = |cn: Option<&str>| LeafSpec {
        cn: cn.map(str::to_string),
        ..LeafSpec::client("unused")
    };
    let ip: IpAddr = "10.20.30.40".parse().expect("literal ip");
    let specs: Vec<(DemoClient, LeafSpec)> = vec![
        (
            client(
                "sensor-subject",
                "SubjectMatchesAuthenticationName",
                "sensor-subject",
            ),
            base(Some("sensor-subject")),
        ),
        (
            client(
                "sensor-dns",
                "DnsMatchesAuthenticationName",
                "sensor-dns.devices.example.com",
            ),
            LeafSpec {
                dns: vec!["sensor-dns.devices.example.com".into()],
                ..base(None)
            },
        ),
        (
            client(
                "sensor-uri",
                "UriMatchesAuthenticationName",
                "spiffe://example.com/devices/sensor-uri",
            ),
            LeafSpec {
                uris: vec!["spiffe://example.com/devices/sensor-uri".into()],
                ..base(None)
            },
        ),
        (
            client("sensor-ip", "IpMatchesAuthenticationName", "10.20.30.40"),
            LeafSpec {
                ips: vec![ip],
                ..base(None)
            },
        ),
        (
            client(
                "sensor-email",
                "EmailMatchesAuthenticationName",
                "sensor-email@devices.example.com",
            ),
            LeafSpec {
                emails: vec!["sensor-email@devices.example.com".into()],
                ..base(None)
            },
        ),
        (
            DemoClient {
                enabled: false,
                ..client(
                    "disabled-device",
                    "SubjectMatchesAuthenticationName",
                    "disabled-device",
                )
            },
            base(Some("disabled-device")),
        ),
    ];
    let mut entries = Vec::new();
    let mut clients = Vec::new();
    for (c, spec) in specs {
        let issued = inter.issue(&spec)?;
        write_pair(&dir.join("clients"), c.name, &issued)?;
        entries.push(serde_json::json!({
            "name": c.name,
            "properties": {
                "authenticationName": c.authentication_name,
                "clientCertificateAuthentication": { "validationScheme": c.scheme },
                "state": if c.enabled { "Enabled" } else { "Disabled" },
                "description": "mqttgate demo client"
            }
        }));
        clients.push(c);
    }
    // The thumbprint client is self-signed, like most devices registered that way.
    let gw = pki::self_signed(&base(Some("legacy-gw")), false)?;
    write_pair(&dir.join("clients"), "legacy-gw", &gw)?;
    entries.push(serde_json::json!({
        "name": "legacy-gw",
        "properties": {
            "clientCertificateAuthentication": {
                "validationScheme": "ThumbprintMatch",
                "allowedThumbprints": [Thumbprint::of(&gw.der).to_string()]
            },
            "description": "mqttgate demo self-signed gateway"
        }
    }));
    clients.push(client("legacy-gw", "ThumbprintMatch", "legacy-gw"));

    write_file(
        &dir.join("clients.json"),
        &(serde_json::to_string_pretty(&entries)? + "\n"),
        false,
    )?;
    write_file(&dir.join("mqttgate.toml"), &config_text(ports), false)?;
    write_file(&dir.join("acl"), "pattern readwrite devices/%u/#\n", false)?;
    write_file(
        &dir.join("mosquitto.conf"),
        &format!(
            "# Mosquitto behind mqttgate: reachable on loopback only, trusts the username\n\
             # mqttgate injects (the certificate identity) and binds topics to it.\n\
             per_listener_settings true\n\
             listener {} 127.0.0.1\n\
             allow_anonymous true\n\
             acl_file {}\n\
             persistence false\n",
            ports.broker,
            absolute(&dir.join("acl"))?.display()
        ),
        false,
    )?;
    Ok(clients)
}

fn absolute(p: &Path) -> Result<PathBuf, DemoError> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn client(name: &'static str, scheme: &'static str, auth: &str) -> DemoClient {
    DemoClient {
        name,
        scheme,
        authentication_name: auth.to_string(),
        enabled: true,
    }
}

fn config_text(ports: DemoPorts) -> String {
    format!(
        r#"# mqttgate demo configuration (generated by `mqttgate certs demo`).
listen = "0.0.0.0:{listen}"
# Used when a client sends no username, in this order.
alternativeAuthenticationNameSources = [
  "ClientCertificateSubject",
  "ClientCertificateDns",
  "ClientCertificateUri",
  "ClientCertificateIp",
  "ClientCertificateEmail",
]

[tls]
certificate = "server.pem"
private_key = "server.key"
# Only the intermediate that signs the devices is registered, as Azure recommends.
ca_certificates = ["devices-ca.pem"]

[registry]
clients = "clients.json"

[upstream]
address = "127.0.0.1:{broker}"
username = "rewrite"
client_id = "authentication-name"

[admin]
listen = "127.0.0.1:{admin}"

[mqtt]
reason_strings = true
"#,
        listen = ports.listen,
        broker = ports.broker,
        admin = ports.admin
    )
}
