//! mqttgate puts Azure Event Grid's MQTT client authentication in front of an unmodified MQTT
//! broker. One connection's path, each phase one function in [`connection`]:
//!
//! ```text
//!           server                 connection (phases)                        transport
//! client ─► accept ─► pending ─► 1 handshake ─► 2 read_connect ─► 3 decide ─┬─► 4 dial ─► 5 CONNACK ─► 6 relay ◄──► broker
//!           (caps,    slot       (rustls;       (mqtt codec,     (auth +     │  (deadline) (passed on)   (both ways;
//!           backlog)             trust::admit)  size + deadline)  trust,     │                           re-decided on
//!                                                                  newest    └─► refusal CONNACK, close  reload; linger;
//!                                                                  state)                                expiry; drain)
//!                                              7 record: one outcome per connection (metrics + audit)
//! ```
//!
//! On a listener that takes PROXY protocol v2, phase 0 reads the header that names the client
//! before the handshake; on the WebSocket listener, phase 1b answers the HTTP/1.1 upgrade
//! after it. Both run under the same connect deadline.
//!
//! Modules, by concern:
//! - [`server`]: accept loop and admission slots, sessions per authentication name, reload
//!   watcher, admin listener, OS limits, shutdown.
//! - [`connection`]: one connection's phases ([`connection::serve`]), its outcome record,
//!   the upstream side (dial, CONNECT, CONNACK) and the live session.
//! - [`transport`]: the client stream ([`transport::ClientStream`]: TLS, or a WebSocket over
//!   TLS) and the client's address ([`transport::Peer`], set from a PROXY v2 header when the
//!   listener takes one), the TLS I/O and its buffer pool, the relay, packet reads under a
//!   deadline.
//! - [`mqtt`]: the codec (pure): CONNECT, the packets mqttgate sends or watches, properties.
//! - [`auth`]: the decision (pure): authentication methods ([`auth::Method`]: certificate,
//!   JWT, webhook) and names, registry checks, and what the broker sees ([`auth::rewrite`]).
//! - [`trust`]: what is loaded and reloaded (registry, CA certificates, CRLs, the server
//!   certificate) and the one admission function ([`trust::admit`]).
//! - [`authz`]: authorization (pure): client groups, topic spaces, permission bindings.
//! - [`cli`]: `check`, `explain` (renders the decision's steps), `thumbprint`, `certs demo`.
//! - [`config`], [`metrics`], [`audit`].

pub mod audit;
pub mod auth;
pub mod authz;
pub mod cli;
pub mod config;
pub mod connection;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod mqtt;
pub mod server;
pub mod transport;
pub mod trust;
