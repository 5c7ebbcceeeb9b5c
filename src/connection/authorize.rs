//! Topic-space authorization of one live session (SPEC §11): what happens to each client
//! PUBLISH and SUBSCRIBE, and to the broker's SUBACK for a SUBSCRIBE that was cut down.
//! The relay ([`super::authorized_relay`]) frames the packets; this file decides, keeps
//! the session's topic aliases, and counts and logs every decision. No I/O.
//!
//! - PUBLISH: the topic (resolved through the client's v5 topic aliases, so an alias can
//!   never name a topic that was not decided) is checked against the client's
//!   [`ClientPermissions`]. Denied: dropped; v5 QoS 1 gets PUBACK 0x87 and QoS 2 PUBREC
//!   0x87 (which ends a QoS 2 flow), QoS 0 nothing; v3.1.1 has no way to say no, so the
//!   connection is closed.
//! - SUBSCRIBE: each filter on its own. Denied filters get 0x87 (v5) / 0x80 (v3.1.1) in
//!   their place of the SUBACK; the others go to the broker in a SUBSCRIBE cut down to
//!   them, and the broker's SUBACK is given the denied codes back in order. All denied:
//!   mqttgate answers the SUBACK itself and nothing goes upstream.
//! - UNSUBSCRIBE and every other packet pass: unsubscribing from a filter the client was
//!   never granted is a no-op at the broker, and denying it would only leave the client
//!   unsure what it still receives.
//!
//! In audit mode every decision is made, counted and logged the same way, with result
//! `would_deny`, and the packet passes unchanged.
//!
//! A JWT session without `[authorization]` runs the same relay only so its AUTH packets
//! are found (SPEC §9): its authorizer ([`Authorizer::allow_all`]) checks no topic and
//! counts nothing.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

use crate::authz::{Action, ClientPermissions};
use crate::config::AuthzMode;
use crate::metrics::{self, Metrics};
use crate::mqtt::client_packets::{self as packets, PublishHead, Subscribe, PUBACK, PUBREC};
use crate::mqtt::{code, Version};

/// SUBSCRIBEs cut down and waiting for the broker's SUBACK; a client that sends more
/// without reading its SUBACKs is closed rather than held in memory.
const MAX_PENDING_MERGES: usize = 64;
/// Denials logged per session per window; the rest are counted and summarised, like the
/// connection denial log.
const LOGGED_PER_WINDOW: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// SUBACK code for a denied filter in v3.1.1, which has only "failure".
const V3_SUBACK_FAILURE: u8 = 0x80;

/// Why the session must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A v3.1.1 PUBLISH was denied: MQTT 3.1.1 has no negative acknowledgement.
    NotAuthorized,
    /// The client broke the protocol in a way that could hide a topic from the decision
    /// (an unknown or out-of-range topic alias, a malformed PUBLISH or SUBSCRIBE), or
    /// flooded SUBSCRIBEs without reading.
    ProtocolError,
}

/// What becomes of a PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    Forward,
    /// Dropped, answered with these bytes when there is an answer (v5 QoS 1 and 2).
    Drop(Option<[u8; 5]>),
}

/// What becomes of a SUBSCRIBE.
#[derive(Debug, PartialEq, Eq)]
pub enum Subscribed {
    Forward,
    /// Some filters denied: this SUBSCRIBE goes to the broker instead.
    CutDown(Vec<u8>),
    /// Every filter denied: this SUBACK goes to the client and nothing to the broker.
    Answer(Vec<u8>),
}

/// The counters of one mode, looked up once per session so a decision costs an atomic add.
#[derive(Clone, Debug)]
pub struct Counters {
    publish_allowed: Counter,
    publish_denied: Counter,
    subscribe_allowed: Counter,
    subscribe_denied: Counter,
}

impl Counters {
    pub fn new(metrics: &Metrics, mode: AuthzMode) -> Counters {
        let get = |action, result| {
            metrics
                .authorization_decisions
                .get_or_create(&metrics::AuthzDecision { action, result })
                .clone()
        };
        let denied = mode.denied_label();
        Counters {
            publish_allowed: get("publish", "allowed"),
            publish_denied: get("publish", denied),
            subscribe_allowed: get("subscribe", "allowed"),
            subscribe_denied: get("subscribe", denied),
        }
    }
}

/// One session's authorization state.
#[derive(Debug)]
pub struct Authorizer {
    /// None: no topic checks at all (no `[authorization]`); PUBLISH and SUBSCRIBE pass
    /// without being parsed.
    permissions: Option<ClientPermissions>,
    mode: AuthzMode,
    version: Version,
    /// The client's topic aliases (alias 1 at index 0), as many as the broker's CONNACK
    /// allows; grown when an alias is first set.
    aliases: Vec<Option<Box<str>>>,
    alias_max: u16,
    /// Per cut-down SUBSCRIBE (by packet identifier), each filter's denial code or `None`
    /// for a filter the broker answers.
    merges: Vec<(u16, Vec<Option<u8>>)>,
    /// None with `permissions`: nothing is decided, so nothing is counted (and no
    /// authorization series appear in the metrics of a gate without authorization).
    counters: Option<Counters>,
    /// Decisions not yet added to `counters`: publish allowed, publish denied, subscribe
    /// allowed, subscribe denied. Added once per batch of packets ([`Self::flush_counts`]),
    /// so the relay's threads do not contend on the shared counters per message.
    tally: [u64; 4],
    /// For the log: who this is.
    name: String,
    log: LogLimit,
}

impl Authorizer {
    pub fn new(
        permissions: ClientPermissions,
        mode: AuthzMode,
        version: Version,
        alias_max: u16,
        counters: Counters,
        name: String,
    ) -> Authorizer {
        Authorizer {
            permissions: Some(permissions),
            mode,
            version,
            aliases: Vec::new(),
            alias_max,
            merges: Vec::new(),
            counters: Some(counters),
            tally: [0; 4],
            name,
            log: LogLimit::default(),
        }
    }

    /// A session with no topic checks: a JWT session without `[authorization]`, whose
    /// relay only looks for AUTH packets.
    pub fn allow_all(version: Version, name: String) -> Authorizer {
        Authorizer {
            permissions: None,
            mode: AuthzMode::Enforce,
            version,
            aliases: Vec::new(),
            alias_max: 0,
            merges: Vec::new(),
            counters: None,
            tally: [0; 4],
            name,
            log: LogLimit::default(),
        }
    }

    /// Whether PUBLISH and SUBSCRIBE are decided at all; without, the relay passes them
    /// after one header check.
    pub fn checks_topics(&self) -> bool {
        self.permissions.is_some()
    }

    /// Takes the permissions a reload computed; whether they are the ones the session had.
    /// The caller ends a session whose permissions changed (Azure:
    /// `ClientAuthorizationError`); one whose did not goes on with the new grants, whose
    /// binding names may have changed.
    pub fn replace(&mut self, permissions: ClientPermissions) -> bool {
        // A session that started without topic checks keeps none: `[authorization]` is
        // read once, at start, so it has none to compare with.
        let Some(current) = self.permissions.as_mut() else {
            return true;
        };
        let same = permissions.fingerprint() == current.fingerprint();
        *current = permissions;
        same
    }

    /// Adds the decisions made since the last call to the shared counters.
    pub fn flush_counts(&mut self) {
        let Some(c) = &self.counters else {
            return;
        };
        let counters = [
            &c.publish_allowed,
            &c.publish_denied,
            &c.subscribe_allowed,
            &c.subscribe_denied,
        ];
        for (n, counter) in self.tally.iter_mut().zip(counters) {
            if *n > 0 {
                counter.inc_by(std::mem::take(n));
            }
        }
    }

    pub fn mode(&self) -> AuthzMode {
        self.mode
    }

    /// Decides a PUBLISH from its head.
    pub fn publish(&mut self, head: &PublishHead<'_>) -> Result<Publish, Stop> {
        let Some(permissions) = &self.permissions else {
            return Ok(Publish::Forward);
        };
        let topic = resolve(&mut self.aliases, self.alias_max, head)?;
        if permissions.decide(Action::Publish, topic).is_some() {
            self.tally[0] += 1;
            return Ok(Publish::Forward);
        }
        self.tally[1] += 1;
        let topic = topic.to_string();
        self.log_denial(Action::Publish, &topic);
        if self.mode == AuthzMode::Audit {
            return Ok(Publish::Forward);
        }
        match (self.version, head.qos, head.packet_id) {
            (Version::V5, 1, Some(id)) => Ok(Publish::Drop(Some(packets::ack_v5(
                PUBACK,
                id,
                code::V5_NOT_AUTHORIZED,
            )))),
            (Version::V5, 2, Some(id)) => Ok(Publish::Drop(Some(packets::ack_v5(
                PUBREC,
                id,
                code::V5_NOT_AUTHORIZED,
            )))),
            (Version::V5, _, _) => Ok(Publish::Drop(None)),
            _ => Err(Stop::NotAuthorized),
        }
    }

    /// Decides each filter of a SUBSCRIBE.
    pub fn subscribe(&mut self, sub: &Subscribe<'_>) -> Result<Subscribed, Stop> {
        if self.permissions.is_none() {
            return Ok(Subscribed::Forward);
        }
        let denial = match self.version {
            Version::V5 => code::V5_NOT_AUTHORIZED,
            _ => V3_SUBACK_FAILURE,
        };
        let mut codes = Vec::with_capacity(sub.filters.len());
        for (filter, _) in &sub.filters {
            let grants = self.permissions.as_ref();
            if grants.is_some_and(|p| p.decide(Action::Subscribe, filter).is_some()) {
                self.tally[2] += 1;
                codes.push(None);
            } else {
                self.tally[3] += 1;
                self.log_denial(Action::Subscribe, filter);
                codes.push(Some(denial));
            }
        }
        if self.mode == AuthzMode::Audit || codes.iter().all(Option::is_none) {
            return Ok(Subscribed::Forward);
        }
        if codes.iter().all(Option::is_some) {
            let codes: Vec<u8> = codes.into_iter().flatten().collect();
            return Ok(Subscribed::Answer(packets::suback(
                self.version,
                sub.packet_id,
                &codes,
            )));
        }
        if self.merges.len() >= MAX_PENDING_MERGES {
            return Err(Stop::ProtocolError);
        }
        let kept = sub
            .filters
            .iter()
            .zip(&codes)
            .filter(|(_, c)| c.is_none())
            .map(|(f, _)| *f);
        let cut = packets::encode_subscribe(sub, kept);
        // A client reusing a packet identifier before its SUBACK: the newest wins.
        self.merges.retain(|(id, _)| *id != sub.packet_id);
        self.merges.push((sub.packet_id, codes));
        Ok(Subscribed::CutDown(cut))
    }

    /// Whether a broker SUBACK may need merging (so the relay frames broker packets).
    pub fn awaits_suback(&self) -> bool {
        !self.merges.is_empty()
    }

    /// The SUBACK for the client in place of the broker's `body`, when it answers a
    /// SUBSCRIBE that was cut down.
    pub fn suback(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let id = packets::suback_packet_id(body)?;
        let at = self.merges.iter().position(|(i, _)| *i == id)?;
        let (_, codes) = self.merges.swap_remove(at);
        let merged = packets::merge_suback(self.version, body, &codes);
        if merged.is_none() {
            warn!(
                authentication_name = self.name.as_str(),
                packet_id = id,
                "the broker's SUBACK does not match the SUBSCRIBE it was sent; passed on as it is"
            );
        }
        merged
    }

    fn log_denial(&mut self, action: Action, topic: &str) {
        let (log, suppressed) = self.log.check(Instant::now());
        if suppressed > 0 {
            warn!(target: "mqttgate::audit", event = "authorization_denials_suppressed", authentication_name = self.name.as_str(), suppressed, "authorization denials of this session were not logged in the last minute");
        }
        if log {
            info!(
                target: "mqttgate::audit",
                event = "authorization",
                result = self.mode.denied_label(),
                action = action.as_str(),
                topic,
                authentication_name = self.name.as_str(),
                "no permission binding allows this"
            );
        }
    }
}

/// The topic a PUBLISH is for: its own, which sets its alias when it has one, or the
/// one its alias was last set to. Aliases are the client's to the broker, so they
/// follow what the client sent, denied PUBLISHes included.
fn resolve<'a>(
    aliases: &'a mut Vec<Option<Box<str>>>,
    alias_max: u16,
    head: &PublishHead<'a>,
) -> Result<&'a str, Stop> {
    let Some(alias) = head.topic_alias else {
        if head.topic.is_empty() {
            return Err(Stop::ProtocolError);
        }
        return Ok(head.topic);
    };
    if alias == 0 || alias > alias_max {
        return Err(Stop::ProtocolError);
    }
    let i = usize::from(alias - 1);
    if head.topic.is_empty() {
        return aliases
            .get(i)
            .and_then(|t| t.as_deref())
            .ok_or(Stop::ProtocolError);
    }
    if aliases.len() <= i {
        aliases.resize(i + 1, None);
    }
    if aliases[i].as_deref() != Some(head.topic) {
        aliases[i] = Some(head.topic.into());
    }
    Ok(head.topic)
}

/// A session's denial log budget: `LOGGED_PER_WINDOW` per `LOG_WINDOW`.
#[derive(Debug, Default)]
struct LogLimit {
    window: Option<(Instant, u32)>,
}

impl LogLimit {
    /// `(log_it, suppressed_in_the_last_window)`.
    fn check(&mut self, now: Instant) -> (bool, u32) {
        let (start, count) = self.window.get_or_insert((now, 0));
        let mut suppressed = 0;
        if now.duration_since(*start) >= LOG_WINDOW {
            suppressed = count.saturating_sub(LOGGED_PER_WINDOW);
            (*start, *count) = (now, 0);
        }
        *count += 1;
        (*count <= LOGGED_PER_WINDOW, suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Authz, Facts, Files};
    use std::path::Path;

    const GROUPS: &str = r#"[{"name":"devices","query":"attributes.type = 'device'"}]"#;
    const SPACES: &str = r#"[{"name":"own","topicTemplates":["d/${client.authenticationName}/#"]},{"name":"cmds","topicTemplates":["cmd/#"]}]"#;
    const BINDINGS: &str = r#"[{"name":"pub-own","clientGroupName":"devices","topicSpaceName":"own","permission":"Publisher"},{"name":"sub-cmds","clientGroupName":"devices","topicSpaceName":"cmds","permission":"Subscriber"}]"#;

    fn authorizer(version: Version, mode: AuthzMode, alias_max: u16) -> (Authorizer, Metrics) {
        let p = Path::new("x.json");
        let files = Files {
            client_groups: p,
            topic_spaces: p,
            permission_bindings: p,
        };
        let model = Authz::parse(&files, GROUPS, SPACES, BINDINGS).unwrap();
        let attrs = vec![(
            "type".to_string(),
            crate::trust::registry::AttributeValue::String("device".into()),
        )];
        let perms = model.permissions(&Facts::new("d1", &attrs));
        let metrics = Metrics::new();
        let counters = Counters::new(&metrics, mode);
        (
            Authorizer::new(perms, mode, version, alias_max, counters, "d1".into()),
            metrics,
        )
    }

    fn head(topic: &str, qos: u8, alias: Option<u16>) -> PublishHead<'_> {
        PublishHead {
            topic,
            qos,
            packet_id: (qos > 0).then_some(5),
            topic_alias: alias,
        }
    }

    fn count(m: &Metrics, action: &'static str, result: &'static str) -> u64 {
        m.authorization_decisions
            .get_or_create(&metrics::AuthzDecision { action, result })
            .get()
    }

    #[test]
    fn a_denied_publish_is_answered_by_qos_and_version() {
        let (mut a, m) = authorizer(Version::V5, AuthzMode::Enforce, 0);
        assert_eq!(a.publish(&head("d/d1/t", 1, None)), Ok(Publish::Forward));
        assert_eq!(
            a.publish(&head("d/d2/t", 1, None)),
            Ok(Publish::Drop(Some([0x40, 0x03, 0x00, 0x05, 0x87])))
        );
        assert_eq!(
            a.publish(&head("d/d2/t", 2, None)),
            Ok(Publish::Drop(Some([0x50, 0x03, 0x00, 0x05, 0x87])))
        );
        assert_eq!(a.publish(&head("d/d2/t", 0, None)), Ok(Publish::Drop(None)));
        a.flush_counts();
        assert_eq!(count(&m, "publish", "allowed"), 1);
        assert_eq!(count(&m, "publish", "denied"), 3);
        let (mut v3, _) = authorizer(Version::V311, AuthzMode::Enforce, 0);
        assert_eq!(v3.publish(&head("x", 0, None)), Err(Stop::NotAuthorized));
    }

    #[test]
    fn an_alias_resolves_to_the_topic_it_was_last_set_to() {
        let (mut a, _) = authorizer(Version::V5, AuthzMode::Enforce, 2);
        assert_eq!(a.publish(&head("d/d1/t", 0, Some(1))), Ok(Publish::Forward));
        assert_eq!(a.publish(&head("", 0, Some(1))), Ok(Publish::Forward));
        // Set to a denied topic: the denied PUBLISH still sets it, so the alias is denied.
        assert_eq!(
            a.publish(&head("d/d2/t", 0, Some(1))),
            Ok(Publish::Drop(None))
        );
        assert_eq!(
            a.publish(&head("", 1, Some(1))),
            Ok(Publish::Drop(Some([0x40, 3, 0, 5, 0x87])))
        );
        // Never set, zero, or past the broker's maximum: the session ends.
        assert_eq!(a.publish(&head("", 0, Some(2))), Err(Stop::ProtocolError));
        assert_eq!(a.publish(&head("", 0, Some(0))), Err(Stop::ProtocolError));
        assert_eq!(
            a.publish(&head("d/d1/t", 0, Some(3))),
            Err(Stop::ProtocolError)
        );
        assert_eq!(a.publish(&head("", 0, None)), Err(Stop::ProtocolError));
    }

    #[test]
    fn a_mixed_subscribe_is_cut_down_and_its_suback_merged() {
        let (mut a, m) = authorizer(Version::V5, AuthzMode::Enforce, 0);
        let sub = Subscribe {
            packet_id: 9,
            properties: &[0],
            filters: vec![("cmd/a", 1), ("secret/#", 0), ("cmd/#", 2)],
        };
        let Ok(Subscribed::CutDown(cut)) = a.subscribe(&sub) else {
            panic!("cut down")
        };
        assert_eq!(
            cut,
            packets::encode_subscribe(&sub, [("cmd/a", 1), ("cmd/#", 2)].into_iter())
        );
        assert!(a.awaits_suback());
        assert_eq!(a.suback(&[0, 8, 0, 1, 2]), None, "another packet id");
        assert_eq!(
            a.suback(&[0, 9, 0, 1, 2]).unwrap(),
            [0x90, 0x06, 0, 9, 0, 1, 0x87, 2]
        );
        assert!(!a.awaits_suback());
        a.flush_counts();
        assert_eq!(count(&m, "subscribe", "allowed"), 2);
        assert_eq!(count(&m, "subscribe", "denied"), 1);
        let all_denied = Subscribe {
            packet_id: 4,
            properties: &[0],
            filters: vec![("x", 0), ("y", 0)],
        };
        assert_eq!(
            a.subscribe(&all_denied),
            Ok(Subscribed::Answer(vec![0x90, 0x05, 0, 4, 0, 0x87, 0x87]))
        );
        let (mut v3, _) = authorizer(Version::V311, AuthzMode::Enforce, 0);
        let one = Subscribe {
            packet_id: 4,
            properties: &[],
            filters: vec![("x", 0)],
        };
        assert_eq!(
            v3.subscribe(&one),
            Ok(Subscribed::Answer(vec![0x90, 0x03, 0, 4, 0x80]))
        );
    }

    #[test]
    fn audit_mode_counts_would_deny_and_passes_everything() {
        let (mut a, m) = authorizer(Version::V311, AuthzMode::Audit, 0);
        assert_eq!(a.publish(&head("x", 1, None)), Ok(Publish::Forward));
        let sub = Subscribe {
            packet_id: 1,
            properties: &[],
            filters: vec![("x", 0), ("cmd/1", 0)],
        };
        assert_eq!(a.subscribe(&sub), Ok(Subscribed::Forward));
        a.flush_counts();
        assert_eq!(count(&m, "publish", "would_deny"), 1);
        assert_eq!(count(&m, "subscribe", "would_deny"), 1);
        assert_eq!(count(&m, "subscribe", "allowed"), 1);
        assert_eq!(count(&m, "publish", "denied"), 0);
    }

    #[test]
    fn allow_all_decides_nothing_and_counts_nothing() {
        let metrics = Metrics::new();
        let mut a = Authorizer::allow_all(Version::V5, "j".into());
        assert!(!a.checks_topics());
        // Not even an alias past any maximum: nothing is resolved.
        assert_eq!(a.publish(&head("", 1, Some(9))), Ok(Publish::Forward));
        let sub = Subscribe {
            packet_id: 1,
            properties: &[0],
            filters: vec![("#", 0)],
        };
        assert_eq!(a.subscribe(&sub), Ok(Subscribed::Forward));
        a.flush_counts();
        assert!(!metrics.render().contains("authorization_decisions_total{"));
    }

    #[test]
    fn the_denial_log_is_limited_per_window() {
        let mut l = LogLimit::default();
        let t0 = Instant::now();
        for _ in 0..LOGGED_PER_WINDOW {
            assert_eq!(l.check(t0), (true, 0));
        }
        assert_eq!(l.check(t0), (false, 0));
        assert_eq!(l.check(t0 + LOG_WINDOW), (true, 1));
    }
}
