//! Connections to the server under test: TCP, or TLS with the client certificate.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::*;

pub(crate) type Dyn = Box<dyn Stream>;
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub(crate) struct Dialer {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The TLS version and cipher suite of the first connection, for the report.
    pub(crate) negotiated: OnceLock<String>,
    /// `--ws PATH`: MQTT over WebSockets after the TLS handshake.
    ws: Option<(String, String)>,
}

impl Dialer {
    pub(crate) fn new(cli: &Cli) -> Result<Dialer, String> {
        let tls = if cli.tls {
            let ca = cli.ca.as_ref().ok_or("--tls needs --ca")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca:?}: {e}"))? {
                roots
                    .add(c.map_err(|e| format!("{ca:?}: {e}"))?)
                    .map_err(|e| e.to_string())?;
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
            let mut config = match (&cli.cert, &cli.key) {
                (Some(cert), Some(key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .map_err(|e| format!("{cert:?}: {e}"))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("{cert:?}: {e}"))?;
                    let key =
                        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key:?}: {e}"))?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| e.to_string())?
                }
                _ => builder.with_no_client_auth(),
            };
            if !cli.resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            let name = ServerName::try_from(cli.sni.clone()).map_err(|e| e.to_string())?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Dialer {
            addr: cli.addr,
            tls,
            negotiated: OnceLock::new(),
            ws: cli.ws.clone().map(|path| (path, cli.sni.clone())),
        })
    }

    pub(crate) async fn dial(&self) -> std::io::Result<Dyn> {
        let stream = self.dial_stream().await?;
        match &self.ws {
            None => Ok(stream),
            Some((path, host)) => Ok(Box::new(crate::ws::upgrade(stream, path, host).await?)),
        }
    }

    async fn dial_stream(&self) -> std::io::Result<Dyn> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                self.negotiated.get_or_init(|| {
                    let c = tls.get_ref().1;
                    let suite = c.negotiated_cipher_suite().map(|s| s.suite());
                    match (c.protocol_version(), suite) {
                        (Some(v), Some(s)) => format!("{v:?} {s:?}"),
                        _ => "unknown".to_string(),
                    }
                });
                Ok(Box::new(tls))
            }
        }
    }
}
