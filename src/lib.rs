//! mqttgate
pub mod cert;
pub mod mqtt;
