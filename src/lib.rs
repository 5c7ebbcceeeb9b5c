//! mqttgate
pub mod anchors;
pub mod cert;
pub mod mqtt;
pub mod registry;
