//! MQTT over WebSockets (SPEC §8, MQTT 5.0 §6): the opening handshake ([`upgrade`]), the
//! framing ([`frame`]), and the stream the connection path reads and writes ([`WsConn`]).
//!
//! Why not tungstenite: it assembles messages and keeps a read buffer (128 KiB by default)
//! and a write buffer per connection for the life of the connection. MQTT needs neither:
//! its packets are a byte stream that may cross frames, and mqttgate's TLS stream and relay
//! already hold buffers only while bytes move. The framing is small; the HTTP request is
//! parsed by `httparse` (hyper's parser).

pub mod frame;
pub mod upgrade;

mod conn;

pub use self::conn::{accept, frame_error, UpgradeRules, WsConn};
pub use self::upgrade::UpgradeRefusal;
