//! The client side of a connection: the stream the phases and the relay read and write
//! ([`ClientStream`]), the client's address ([`Peer`]), and the I/O under them.

pub mod packet_io;
pub mod pool;
pub mod proxy;
pub mod relay;
pub mod tls_io;
pub mod ws;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use self::tls_io::TlsConn;
use self::ws::WsConn;

/// The client's byte stream after its handshake, whatever carries it. Every phase after the
/// handshake and the relay take this type, so a transport is one more variant here (MQTT
/// over WebSockets, SPEC §8), not another copy of the connection path.
// The TLS variant stays inline on purpose: it is most sessions, and boxing it would add an
// allocation and a pointer hop to every read and write of the plain path.
#[allow(clippy::large_enum_variant)]
pub enum ClientStream {
    /// MQTT directly over TLS (port 8883).
    Tls(TlsConn),
    /// MQTT in WebSocket binary frames over TLS (port 443, path `/mqtt`). Boxed: the
    /// framing state would otherwise grow every TLS session's task too.
    Ws(Box<WsConn<TlsConn>>),
}

impl ClientStream {
    /// The certificate chain the client presented in its handshake, leaf first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            ClientStream::Tls(t) => t.peer_certificates(),
            ClientStream::Ws(w) => w.get_ref().peer_certificates(),
        }
    }

    /// The negotiated TLS version and cipher suite, for the audit log.
    pub fn tls_facts(&self) -> (String, String) {
        match self {
            ClientStream::Tls(t) => tls_facts(t),
            ClientStream::Ws(w) => tls_facts(w.get_ref()),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(t) => Pin::new(t).poll_read(cx, buf),
            ClientStream::Ws(w) => Pin::new(w.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tls(t) => Pin::new(t).poll_write(cx, buf),
            ClientStream::Ws(w) => Pin::new(w.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(t) => Pin::new(t).poll_flush(cx),
            ClientStream::Ws(w) => Pin::new(w.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(t) => Pin::new(t).poll_shutdown(cx),
            ClientStream::Ws(w) => Pin::new(w.as_mut()).poll_shutdown(cx),
        }
    }
}

fn tls_facts(tls: &TlsConn) -> (String, String) {
    (
        tls.protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        tls.negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default(),
    )
}

/// Where a client connects from: the accepted socket's address, or, behind a load balancer
/// speaking the PROXY protocol, the address its header carries (SPEC §8). Logs, the audit
/// log and the denial rate limiter all use [`Peer::addr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The listener the client came in by; a metric label.
    pub transport: Transport,
    /// The address the client connected to (mqttgate's, or the load balancer's).
    pub local: SocketAddr,
    /// The proxy the connection came through, when a PROXY header named another address.
    pub via: Option<SocketAddr>,
}

impl Peer {
    /// A client that connected to mqttgate itself.
    pub fn direct(addr: SocketAddr, local: SocketAddr, transport: Transport) -> Peer {
        Peer {
            addr,
            transport,
            local,
            via: None,
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Which listener a connection came in by: MQTT over TLS, or over WebSockets over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tls,
    WebSocket,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::WebSocket => "websocket",
        }
    }
}
