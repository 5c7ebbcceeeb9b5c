//! mqttgate
pub mod anchors;
pub mod cert;
pub mod mqtt;
