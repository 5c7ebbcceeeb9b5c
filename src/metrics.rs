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
    /// `auth::Method::label`: certificate, jwt or webhook.
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Connack {
    pub sender: &'static str,
    pub protocol: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// A pending connection's state (server/slots.rs): `queued` (its task has not run yet),
/// `idle` or `progressing`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PendingState {
    pub state: &'static str,
}

/// Which side of a session was still open.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Side {
    pub side: &'static str,
}

/// How a connection ended: `outcome` is tls_failure, refused or session.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Close {
    pub outcome: &'static str,
    pub reason: &'static str,
    /// "tls" or "websocket": the listener the connection came in by.
    pub transport: &'static str,
}

/// An authorization decision: `action` publish|subscribe, `result` allowed|denied|would_deny.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzDecision {
    pub action: &'static str,
    pub result: &'static str,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reload {
    pub component: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemeState {
    pub scheme: &'static str,
    pub state: &'static str,
}

/// A registered CA certificate: `<file name>#<position in file>`. Operator-configured,
/// so bounded by the configuration, never by clients.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnchorLabel {
    pub anchor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: &'static str,
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
    pub admin_refused: Counter,
    pub admin_open: Gauge,
    /// Pending connections (accepted, no session yet) by state: the idle ones are what a
    /// full pending cap sheds.
    pub pending: Family<PendingState, Gauge>,
    pub handshakes: Family<ResultReason, Counter>,
    pub handshake_seconds: Histogram,
    pub decisions: Family<Decision, Counter>,
    pub connacks: Family<Connack, Counter>,
    pub accept_to_decision_seconds: Family<Outcome, Histogram>,
    pub dials: Family<Result_, Counter>,
    pub dial_seconds: Histogram,
    pub bytes: Family<Direction, Counter>,
    pub closed: Family<Close, Counter>,
    pub linger_expired: Family<Side, Counter>,
    pub reloads: Family<Reload, Counter>,
    pub last_reload: Gauge,
    pub registry_clients: Family<SchemeState, Gauge>,
    pub client_cert_days: Histogram,
    pub server_cert_expiry: Gauge,
    pub ca_expiry: Family<AnchorLabel, Gauge>,
    pub ca_skipped: Family<Reason, Gauge>,
    pub upstream_up: Gauge,
    pub ready: Gauge,
    pub authorization_decisions: Family<AuthzDecision, Counter>,
    pub webhook_requests: Family<Result_, Counter>,
    pub webhook_request_seconds: Histogram,
    /// JWT re-authentications (SPEC §9): `result` ok, failed or would_deny; `reason` the
    /// failure's label, empty when ok.
    pub reauthentications: Family<ResultReason, Counter>,
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
        let admin_refused = Counter::default();
        registry.register(
            "admin_connections_refused",
            "Admin connections closed to stay within admin.max_connections: the oldest idle one, or the newcomer when none was idle",
            admin_refused.clone(),
        );
        let admin_open = Gauge::default();
        registry.register(
            "admin_connections_open",
            "Admin connections open and not yet answered, this scrape included",
            admin_open.clone(),
        );
        let pending = Family::<PendingState, Gauge>::default();
        registry.register(
            "connections_pending",
            "Connections holding a pending slot: queued (not yet run by a busy server), idle (waiting on the client to start its next step) or progressing",
            pending.clone(),
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
            "Authentication decisions by result, denial reason, validation scheme, identity source and method",
            decisions.clone(),
        );
        let connacks = Family::<Connack, Counter>::default();
        registry.register(
            "connacks_sent",
            "CONNACKs sent to clients, by sender (mqttgate for its refusals, broker for the broker's answer it forwarded), protocol version and reason code",
            connacks.clone(),
        );
        let accept_to_decision_seconds =
            Family::<Outcome, Histogram>::new_with_constructor(
                || Histogram::new(latency_buckets()),
            );
        registry.register_with_unit(
            "accept_to_decision",
            "Time from TCP accept to the broker's CONNACK forwarded to the client (outcome=connack_forwarded) or mqttgate's refusal sent (outcome=refused)",
            Unit::Seconds,
            accept_to_decision_seconds.clone(),
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
            "Bytes relayed between client and broker (the forwarded CONNECT and CONNACK included), by direction",
            Unit::Bytes,
            bytes.clone(),
        );
        let closed = Family::<Close, Counter>::default();
        registry.register(
            "connections_closed",
            "Accepted connections by how they ended, exactly one each: outcome tls_failure (reason: the handshake failure), refused (the refusal) or session (who or what ended it)",
            closed.clone(),
        );
        let linger_expired = Family::<Side, Counter>::default();
        registry.register(
            "linger_expired",
            "Sessions closed by mqttgate because one side stayed open past the linger after the other had closed, by the side that stayed open",
            linger_expired.clone(),
        );
        let reloads = Family::<Reload, Counter>::default();
        registry.register(
            "reloads",
            "Reloads of the trust files, by component (all on success, the failing one on failure) and result",
            reloads.clone(),
        );
        let last_reload = Gauge::default();
        registry.register_with_unit(
            "last_reload_success_timestamp",
            "Unix time of the last successful load of the trust files",
            Unit::Seconds,
            last_reload.clone(),
        );
        let registry_clients = Family::<SchemeState, Gauge>::default();
        registry.register(
            "registry_clients",
            "Clients in the registry by validation scheme and state",
            registry_clients.clone(),
        );
        let client_cert_days =
            Histogram::new([1.0, 7.0, 14.0, 30.0, 60.0, 90.0, 180.0, 365.0, 730.0]);
        registry.register(
            "client_certificate_days_to_expiry",
            "Days until the client certificate expires, observed at each successful handshake",
            client_cert_days.clone(),
        );
        let server_cert_expiry = Gauge::default();
        registry.register_with_unit(
            "server_certificate_expiry_timestamp",
            "notAfter of mqttgate's own certificate, as Unix time",
            Unit::Seconds,
            server_cert_expiry.clone(),
        );
        let ca_expiry = Family::<AnchorLabel, Gauge>::default();
        registry.register_with_unit(
            "ca_certificate_expiry_timestamp",
            "notAfter of each registered CA certificate, as Unix time",
            Unit::Seconds,
            ca_expiry.clone(),
        );
        let ca_skipped = Family::<Reason, Gauge>::default();
        registry.register(
            "ca_certificates_skipped",
            "Registered CA certificates not loaded at the last (re)load, by reason (expired)",
            ca_skipped.clone(),
        );
        let upstream_up = Gauge::default();
        registry.register(
            "upstream_up",
            "1 when the last periodic check could open a TCP connection to the upstream broker",
            upstream_up.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 when /readyz answers 200", ready.clone());
        let webhook_requests = Family::<Result_, Counter>::default();
        registry.register(
            "webhook_requests",
            "Answers sought from the authentication webhook, by result: allow, deny, malformed (its answer), cached (reused, not sent), timeout, error (connection, TLS or a non-5xx unexpected status), status_5xx, overload (max_concurrent in flight, not sent)",
            webhook_requests.clone(),
        );
        let webhook_request_seconds = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "webhook_request",
            "Time from sending a request to the authentication webhook to its answer or failure",
            Unit::Seconds,
            webhook_request_seconds.clone(),
        );
        let build = Family::<BuildInfo, Gauge>::default();
        build
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "mqttgate's version", build);
        let authorization_decisions = Family::<AuthzDecision, Counter>::default();
        registry.register(
            "authorization_decisions",
            "Topic-space authorization decisions by action (publish, subscribe: one per filter) and result (allowed, denied, or would_deny in audit mode)",
            authorization_decisions.clone(),
        );
        let reauthentications = Family::<ResultReason, Counter>::default();
        registry.register(
            "reauthentications",
            "JWT sessions' re-authentications with an MQTT 5 AUTH packet, by result (ok, failed, or would_deny in audit mode) and the failure's reason",
            reauthentications.clone(),
        );
        Metrics {
            authorization_decisions,
            reauthentications,
            registry,
            reloads,
            last_reload,
            registry_clients,
            client_cert_days,
            server_cert_expiry,
            ca_expiry,
            ca_skipped,
            upstream_up,
            ready,
            accepted,
            active,
            refused_at_limit,
            admin_refused,
            admin_open,
            pending,
            handshakes,
            handshake_seconds,
            decisions,
            connacks,
            accept_to_decision_seconds,
            dials,
            dial_seconds,
            bytes,
            closed,
            linger_expired,
            webhook_requests,
            webhook_request_seconds,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Sets the gauges that describe a newly published trust state.
    pub fn observe_trust(&self, trust: &crate::trust::Trust) {
        use crate::trust::registry::{Scheme, State};
        for scheme in Scheme::ALL {
            for state in [State::Enabled, State::Disabled] {
                let n = trust
                    .registry
                    .clients()
                    .iter()
                    .filter(|c| c.scheme == scheme && c.state == state)
                    .count();
                self.registry_clients
                    .get_or_create(&SchemeState {
                        scheme: scheme.label(),
                        state: match state {
                            State::Enabled => "enabled",
                            State::Disabled => "disabled",
                        },
                    })
                    .set(n as i64);
            }
        }
        self.server_cert_expiry.set(trust.server_cert.not_after);
        self.ca_expiry.clear();
        let anchors = &trust.anchors;
        let loaded = anchors
            .anchors
            .iter()
            .map(|a| (&a.file, a.index, a.info.not_after));
        let skipped = anchors
            .skipped
            .iter()
            .map(|s| (&s.file, s.index, s.not_after));
        // Skipped (expired) CAs keep their series, in the past, so an expiry alert fires.
        for (file, index, not_after) in loaded.chain(skipped) {
            let file = file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.ca_expiry
                .get_or_create(&AnchorLabel {
                    anchor: format!("{file}#{index}"),
                })
                .set(not_after);
        }
        self.ca_skipped
            .get_or_create(&Reason { reason: "expired" })
            .set(anchors.skipped.len() as i64);
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
