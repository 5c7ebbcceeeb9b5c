//! mqttgate
pub mod mqtt;
