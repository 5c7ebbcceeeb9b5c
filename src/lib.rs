//! mqttgate puts Azure Event Grid's MQTT client-certificate authentication in front of an
//! unmodified MQTT broker. One connection's path:
//!
//! ```text
//! client ──TLS──► accept ─► handshake ─► read CONNECT ─► decide ─┬─► dial broker ─► relay ◄──► broker
//!                 (limit)   (rustls,     (3.1/3.1.1/5,   (registry,│   (deadline)    (both ways,
//!                           cert chain   bounded size    name      │                  re-decided on
//!                           or pin)      and time)       sources)  └─► CONNACK refusal, close   reload)
//! ```
//!
//! Modules, in the order a connection meets them:
//! - [`server`]: accept loop, connection limit, reload, shutdown.
//! - [`connection`]: one connection's phases.
//! - [`tls`]: rustls configuration and the client-certificate verifier.
//! - [`tls_io`]: the TLS stream (rustls unbuffered API, buffers only while bytes are in flight).
//! - [`mqtt`]: the CONNECT codec and the packets mqttgate sends (pure).
//! - [`packet_io`]: reads one packet under a deadline and a size bound (the CONNECT, the CONNACK).
//! - [`auth`]: the decision (pure).
//! - [`registry`], [`anchors`], [`cert`]: the clients, the CA certificates, certificate fields.
//! - [`relay`]: the byte copy after the CONNECT; [`pool`]: the I/O buffers both borrow.
//! - [`config`], [`state`], [`metrics`], [`cli`]; [`os_limits`]: accept queue and open files.

pub mod admin;
pub mod admit;
pub mod anchors;
pub mod audit;
pub mod auth;
pub mod cert;
pub mod cli;
pub mod config;
pub mod connection;
pub mod demo;
pub mod explain;
pub mod memory;
pub mod metrics;
pub mod mqtt;
pub mod os_limits;
pub mod packet_io;
pub mod pki;
pub mod pool;
pub mod registry;
pub mod relay;
pub mod server;
pub mod slots;
pub mod state;
pub mod tls;
pub mod tls_io;
