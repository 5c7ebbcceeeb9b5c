//! Metric families, registered once. Every label value is an enum's fixed string, never
//! anything a client sent, so cardinality is bounded by the code, not by the fleet.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultReason {
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Decision {
    pub result: &'static str,
    pub reason: &'static str,
    pub scheme: &'static str,
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Connack {
    pub protocol: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Result_ {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

pub struct Metrics {
    pub registry: Registry,
    pub accepted: Counter,
    pub active: Gauge,
    pub refused_at_limit: Counter,
    pub handshakes: Family<ResultReason, Counter>,
    pub handshake_seconds: Histogram,
    pub decisions: Family<Decision, Counter>,
    pub connacks: Family<Connack, Counter>,
    pub accept_to_connect_seconds: Family<Outcome, Histogram>,
    pub dials: Family<Result_, Counter>,
    pub dial_seconds: Histogram,
    pub bytes: Family<Direction, Counter>,
    pub closed: Family<Reason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mqttgate");
        let accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "TCP connections accepted by the listener",
            accepted.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "connections_active",
            "Connections currently open, in any phase",
            active.clone(),
        );
        let refused_at_limit = Counter::default();
        registry.register(
            "connections_refused_at_limit",
            "TCP connections closed before any TLS work because mqttgate was past its connection limit",
            refused_at_limit.clone(),
        );
        let handshakes = Family::<ResultReason, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes by result and failure reason",
            handshakes.clone(),
        );
        let handshake_seconds = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "tls_handshake_duration",
            "Time from TCP accept to the end of the TLS handshake",
            Unit::Seconds,
            handshake_seconds.clone(),
        );
        let decisions = Family::<Decision, Counter>::default();
        registry.register(
            "auth_decisions",
            "Authentication decisions by result, denial reason, validation scheme and identity source",
            decisions.clone(),
        );
        let connacks = Family::<Connack, Counter>::default();
        registry.register(
            "connacks_sent",
            "CONNACK refusals sent by mqttgate itself, by protocol version and reason code",
            connacks.clone(),
        );
        let accept_to_connect_seconds =
            Family::<Outcome, Histogram>::new_with_constructor(
                || Histogram::new(latency_buckets()),
            );
        registry.register_with_unit(
            "accept_to_decision",
            "Time from TCP accept to the CONNECT forwarded upstream (outcome=forwarded) or a refusal sent (outcome=refused)",
            Unit::Seconds,
            accept_to_connect_seconds.clone(),
        );
        let dials = Family::<Result_, Counter>::default();
        registry.register(
            "upstream_dials",
            "Upstream broker dials by result",
            dials.clone(),
        );
        let dial_seconds = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "upstream_dial_duration",
            "Time to open the TCP connection to the upstream broker",
            Unit::Seconds,
            dial_seconds.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register_with_unit(
            "relayed",
            "Bytes relayed after the CONNECT, by direction",
            Unit::Bytes,
            bytes.clone(),
        );
        let closed = Family::<Reason, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections closed, by reason",
            closed.clone(),
        );
        Metrics {
            registry,
            accepted,
            active,
            refused_at_limit,
            handshakes,
            handshake_seconds,
            decisions,
            connacks,
            accept_to_connect_seconds,
            dials,
            dial_seconds,
            bytes,
            closed,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn up_bytes(&self) -> Counter {
        self.bytes
            .get_or_create(&Direction {
                direction: "client_to_broker",
            })
            .clone()
    }

    pub fn down_bytes(&self) -> Counter {
        self.bytes
            .get_or_create(&Direction {
                direction: "broker_to_client",
            })
            .clone()
    }
}
