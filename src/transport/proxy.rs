//! The PROXY protocol, version 2 (SPEC §8), pure: the header a load balancer puts before
//! the TLS bytes (parsed here, inbound), and the header mqttgate puts before the CONNECT it
//! sends a Mosquitto 2.1 broker (encoded here, outbound) carrying the client's address and
//! its authentication name as the TLS client certificate's CN. Callers own the I/O and its
//! deadline.
//!
//! Written here rather than taken from a crate: the format is a 16-byte prefix, two
//! addresses and a TLV list, and the parser must never read past the header (the TLS
//! ClientHello follows it on the same socket), which `header_len` makes exact.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Every v2 header starts with these 12 bytes.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol and the 2-byte length.
pub const PREFIX_LEN: usize = 16;
/// The largest header Mosquitto 2.1 accepts (`PROXY_PACKET_LIMIT`), length prefix excluded.
pub const MOSQUITTO_LIMIT: usize = 500;

const CMD_LOCAL: u8 = 0x20;
const CMD_PROXY: u8 = 0x21;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
const UNSPEC: u8 = 0x00;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS`: the client connected
/// over TLS and presented a certificate, in this connection and its session.
const PP2_CLIENT_SSL_CERT: u8 = 0x07;

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY v2 signature")]
    NoSignature,
    #[error("unsupported PROXY version or command 0x{0:02x}")]
    Command(u8),
    #[error("unsupported PROXY address family 0x{0:02x}")]
    Family(u8),
    #[error("PROXY header of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("PROXY addresses are shorter than their family needs")]
    Short,
}

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The proxy's own connection (a health check): use the socket's addresses.
    Local,
    /// A proxied client: where it came from and where it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// The whole header's length once its 16-byte prefix is in `buf`: `Ok(None)` until then.
/// Refuses anything that is not a v2 header, or longer than `max` bytes in all.
pub fn header_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProxyError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyError::NoSignature);
    }
    if buf.len() < PREFIX_LEN {
        return Ok(None);
    }
    if buf[12] != CMD_LOCAL && buf[12] != CMD_PROXY {
        return Err(ProxyError::Command(buf[12]));
    }
    let len = PREFIX_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > max {
        return Err(ProxyError::TooLong(len));
    }
    Ok(Some(len))
}

/// Parses a complete header (`buf` holds exactly `header_len` bytes or more). TLVs are
/// skipped: nothing a load balancer adds is trusted beyond the addresses.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<(Header, usize)>, ProxyError> {
    let Some(len) = header_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[PREFIX_LEN..len];
    if buf[12] == CMD_LOCAL {
        return Ok(Some((Header::Local, len)));
    }
    let header = match buf[13] {
        TCP4 => {
            let a = body.get(..12).ok_or(ProxyError::Short)?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        TCP6 => {
            let a = body.get(..36).ok_or(ProxyError::Short)?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC with PROXY: the proxy does not know; treat like LOCAL.
        UNSPEC => Header::Local,
        other => return Err(ProxyError::Family(other)),
    };
    Ok(Some((header, len)))
}

/// The outbound header for a client: its address, the address it connected to, and the SSL
/// TLV whose CN sub-TLV is `cn` (Mosquitto 2.1 with `use_identity_as_username` takes it as
/// the username). Mixed families are sent as IPv6 (IPv4-mapped).
///
/// Without `cn` (a client audit mode let through unverified, SPEC §13) the header carries
/// the addresses only: no SSL TLV, so the broker is told of no certificate at all.
pub fn encode(source: SocketAddr, destination: SocketAddr, cn: Option<&str>) -> Vec<u8> {
    let (family, addresses) = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let mut a = Vec::with_capacity(12);
            a.extend_from_slice(&s.ip().octets());
            a.extend_from_slice(&d.ip().octets());
            a.extend_from_slice(&s.port().to_be_bytes());
            a.extend_from_slice(&d.port().to_be_bytes());
            (TCP4, a)
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let mut a = Vec::with_capacity(36);
            a.extend_from_slice(&v6(source).octets());
            a.extend_from_slice(&v6(destination).octets());
            a.extend_from_slice(&source.port().to_be_bytes());
            a.extend_from_slice(&destination.port().to_be_bytes());
            (TCP6, a)
        }
    };
    // SSL TLV value: client flags (1), verify result (4, 0 = verified), then sub-TLVs.
    let mut body = addresses;
    if let Some(cn) = cn {
        let mut ssl = vec![PP2_CLIENT_SSL_CERT, 0, 0, 0, 0];
        push_tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
        push_tlv(&mut body, PP2_TYPE_SSL, &ssl);
    }
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(CMD_PROXY);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The largest header `encode` makes for a name of `cn_bytes` bytes (IPv6 addresses), as
/// Mosquitto counts it (without the 16-byte prefix).
pub fn max_encoded_len(cn_bytes: usize) -> usize {
    36 + 3 + 5 + 3 + cn_bytes
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A TCP4 header as HAProxy's `send-proxy-v2` writes it (no TLVs): 203.0.113.7:40000
    /// to 192.0.2.1:8883.
    fn haproxy_tcp4() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 203, 0, 113, 7, 192, 0, 2, 1]);
        h.extend_from_slice(&40000u16.to_be_bytes());
        h.extend_from_slice(&8883u16.to_be_bytes());
        h
    }

    #[test]
    fn every_proper_prefix_needs_more_and_the_whole_header_parses() {
        let mut h = haproxy_tcp4();
        h.extend_from_slice(&[0x16, 0x03, 0x01]); // the ClientHello that follows
        for n in 0..28 {
            assert_eq!(parse(&h[..n], 512), Ok(None), "prefix {n}");
        }
        let want = Header::Proxied {
            source: v4("203.0.113.7:40000"),
            destination: v4("192.0.2.1:8883"),
        };
        assert_eq!(parse(&h, 512), Ok(Some((want, 28))));
        assert_eq!(header_len(&h[..16], 512), Ok(Some(28)));
    }

    #[test]
    fn tcp6_local_and_unspec_headers_parse() {
        let src: SocketAddr = "[2001:db8::7]:1234".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:8883".parse().unwrap();
        let h = encode(src, dst, Some("x"));
        assert_eq!(
            parse(&h, 512).unwrap().unwrap().0,
            Header::Proxied {
                source: src,
                destination: dst
            }
        );
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local, 512), Ok(Some((Header::Local, 16))));
        let mut unspec = SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&unspec, 512), Ok(Some((Header::Local, 16))));
    }

    #[test]
    fn what_is_not_a_v2_header_is_refused_at_the_first_wrong_byte() {
        // A TLS ClientHello straight away: no header.
        assert_eq!(header_len(&[0x16], 512), Err(ProxyError::NoSignature));
        // PROXY v1 text.
        assert_eq!(header_len(b"PROXY TCP4", 512), Err(ProxyError::NoSignature));
        let mut bad = haproxy_tcp4();
        bad[12] = 0x11;
        assert_eq!(parse(&bad, 512), Err(ProxyError::Command(0x11)));
        let mut udp = haproxy_tcp4();
        udp[13] = 0x12;
        assert_eq!(parse(&udp, 512), Err(ProxyError::Family(0x12)));
        let mut short = haproxy_tcp4();
        short[15] = 4;
        short.truncate(20);
        assert_eq!(parse(&short, 512), Err(ProxyError::Short));
        let mut long = haproxy_tcp4();
        long[14] = 0x10;
        assert_eq!(
            header_len(&long, 512),
            Err(ProxyError::TooLong(16 + 0x100c))
        );
    }

    #[test]
    fn the_outbound_header_has_mosquittos_ssl_layout() {
        let h = encode(
            v4("203.0.113.7:40000"),
            v4("127.0.0.1:1883"),
            Some("sensor-17"),
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11]);
        let tlv_len = 5 + 3 + 9;
        want.extend_from_slice(&((12 + 3 + tlv_len) as u16).to_be_bytes());
        want.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x07, 0x5b]);
        want.extend_from_slice(&[0x20, 0x00, tlv_len as u8, 0x07, 0, 0, 0, 0]);
        want.extend_from_slice(&[0x22, 0x00, 0x09]);
        want.extend_from_slice(b"sensor-17");
        assert_eq!(h, want);
        // What mqttgate sends it can read back.
        assert!(matches!(parse(&h, 512), Ok(Some((Header::Proxied { .. }, n))) if n == h.len()));
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6_and_the_size_bound_holds() {
        let src: SocketAddr = "[2001:db8::7]:1234".parse().unwrap();
        let h = encode(src, v4("127.0.0.1:1883"), Some(&"n".repeat(100)));
        assert_eq!(h[13], TCP6);
        assert_eq!(h.len() - PREFIX_LEN, max_encoded_len(100));
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("198.51.100.1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten").is_err());
    }
}
