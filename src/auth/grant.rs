//! The grant (SPEC §13): everything a decision lets a connection do, computed once, by
//! [`grant`], from the decided identity, the CONNECT and the upstream settings. The relay,
//! the re-decision on reload, re-authentication, `explain` and `check` read this value;
//! none of them derives a piece of it from the configuration again. Pure.
//!
//! What it fixes, each from one place:
//! - the CONNECT the broker receives: username and ClientId per the `[upstream]` modes,
//!   never a password under rewrite, never authentication properties (for any method),
//!   the Session Expiry Interval capped at Azure's maximum;
//! - the PROXY v2 identity: the verified name, or none for a client audit mode let
//!   through unverified;
//! - the Will, decided as a publish under `[authorization]`;
//! - the session name claimed among the identity's sessions (SPEC §10), and, for an empty
//!   ClientId, the session name mqttgate assigned;
//! - what the client is told in its CONNACK that the broker would not say (the assigned
//!   ClientId, the Session Expiry Interval used).

use crate::auth::rewrite::upstream_connect;
use crate::auth::{same_name, Denied, Identity, Method};
use crate::authz::{Action, ClientPermissions};
use crate::config::{AuthzMode, ClientIdMode, UsernameMode};
use crate::mqtt::properties::{self, id, Value};
use crate::mqtt::{Connect, Version};
use crate::transport::proxy;

/// The `[upstream]` and `[sessions]` settings a grant is computed from, as the effective
/// configuration has them (audit mode's overrides already applied, in `config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub username: UsernameMode,
    pub client_id: ClientIdMode,
    /// A PROXY v2 header opens each upstream connection.
    pub proxy: bool,
    /// Azure's `maximumSessionExpiryInHours`, in seconds.
    pub max_session_expiry: u32,
}

/// What a connection may do, decided once.
#[derive(Debug)]
pub struct Grant {
    pub identity: Identity,
    /// False for a client audit mode let through as itself: nothing about it is asserted
    /// to the broker.
    pub verified: bool,
    /// The CONNECT the broker receives.
    pub connect: Connect,
    /// With a PROXY v2 header upstream: the name its SSL TLV asserts (None: the header
    /// carries the address only).
    pub proxy_name: Option<String>,
    /// The session this connection is of, among its identity's (SPEC §10).
    pub session: String,
    /// Told to an MQTT 5 client in its CONNACK: the ClientId mqttgate assigned to an empty
    /// one (MQTT 5 §3.2.2.3.7).
    pub assigned_client_id: Option<String>,
    /// Told to an MQTT 5 client in its CONNACK: the Session Expiry Interval used, when it
    /// is not the one the client asked for (MQTT 5 §3.2.2.3.2).
    pub session_expiry: Option<u32>,
    /// Under `[authorization]`: what the identity may publish and subscribe to, under the
    /// model of the trust state it was decided against.
    pub permissions: Option<ClientPermissions>,
}

/// The session name of every connection under `client_id = "authentication-name"`: the
/// broker sees one session per identity whatever the ClientId.
pub const ONE_SESSION: &str = "-";

/// SPEC §13: the grant of a verified identity, or the denial its CONNECT earns (a name
/// that cannot go upstream, a username that is not the verified name under passthrough,
/// a Will the client may not publish). `assign` makes a fresh session name for an empty
/// ClientId.
/// `permissions` are the identity's under the authorization model, with the model's mode.
pub fn grant(
    connect: &Connect,
    identity: Identity,
    permissions: Option<(ClientPermissions, AuthzMode)>,
    up: &Upstream,
    assign: impl FnOnce() -> String,
) -> Result<Grant, Denied> {
    let name = identity.authentication_name.as_str();
    if !forwardable(name, up.proxy) {
        return Err(Denied::NameNotForwardable);
    }
    if up.username == UsernameMode::Passthrough {
        if let Some(u) = connect.username.as_deref().filter(|u| !u.is_empty()) {
            if !same_name(u, name) {
                return Err(Denied::UsernameNotVerified);
            }
        }
    }
    if let (Some(will), Some((p, AuthzMode::Enforce))) = (&connect.will, &permissions) {
        if p.decide(Action::Publish, &will.topic).is_none() {
            return Err(Denied::WillNotAuthorized);
        }
    }
    let (client_id, assigned) = session_name(connect, up.client_id, assign);
    let mut sent = connect.clone();
    sent.client_id = client_id.clone();
    let mut upstream = upstream_connect(&sent, &identity, up.username, up.client_id);
    let session_expiry = cap_session_expiry(&mut upstream, up.max_session_expiry);
    let session = match up.client_id {
        ClientIdMode::AuthenticationName => ONE_SESSION.to_string(),
        ClientIdMode::PerIdentity | ClientIdMode::Passthrough => client_id,
    };
    Ok(Grant {
        proxy_name: up.proxy.then(|| identity.authentication_name.clone()),
        identity,
        verified: true,
        connect: upstream,
        session,
        assigned_client_id: assigned.filter(|_| connect.version == Version::V5),
        session_expiry,
        permissions: permissions.map(|(p, _)| p),
    })
}

/// SPEC §12: a client audit mode lets through as itself: its own username, password and
/// ClientId, no PROXY identity, no authentication properties; the Session Expiry cap
/// still applies.
/// `permissions` are computed by the caller for the name the client typed (audited, never
/// enforced).
pub fn unverified(
    connect: &Connect,
    method: Method,
    permissions: impl FnOnce(&Identity) -> Option<ClientPermissions>,
    up: &Upstream,
    assign: impl FnOnce() -> String,
) -> Grant {
    let identity = Identity::unverified(connect.username.as_deref(), method);
    let (client_id, assigned) = session_name(connect, ClientIdMode::Passthrough, assign);
    let mut sent = connect.clone();
    sent.client_id = client_id.clone();
    let mut upstream = upstream_connect(
        &sent,
        &identity,
        UsernameMode::Passthrough,
        ClientIdMode::Passthrough,
    );
    let session_expiry = cap_session_expiry(&mut upstream, up.max_session_expiry);
    Grant {
        permissions: permissions(&identity),
        identity,
        verified: false,
        connect: upstream,
        proxy_name: None,
        session: client_id,
        assigned_client_id: assigned.filter(|_| connect.version == Version::V5),
        session_expiry,
    }
}

impl Grant {
    /// The PROXY v2 header that opens the upstream connection, when one is sent.
    pub fn proxy_header(
        &self,
        up: &Upstream,
        source: std::net::SocketAddr,
        destination: std::net::SocketAddr,
    ) -> Option<Vec<u8>> {
        up.proxy
            .then(|| proxy::encode(source, destination, self.proxy_name.as_deref()))
    }
}

/// A name goes upstream as the username, in a ClientId and as the PROXY TLV's CN: no
/// control characters (Mosquitto cuts a CN short at a NUL, a log line at a newline), and
/// short enough for Mosquitto's 500-byte PROXY header.
pub fn forwardable(name: &str, proxy_header: bool) -> bool {
    !name.is_empty()
        && !name.chars().any(char::is_control)
        && (!proxy_header || proxy::max_encoded_len(name.len()) <= proxy::MOSQUITTO_LIMIT)
}

/// The ClientId the session is known by, and the one mqttgate assigned when the client
/// sent none (SPEC §13: an empty ClientId is a session of its own that no later
/// connection can take over). Under "authentication-name" the broker's ClientId is the
/// name whatever the client sent, so nothing is assigned.
fn session_name(
    connect: &Connect,
    mode: ClientIdMode,
    assign: impl FnOnce() -> String,
) -> (String, Option<String>) {
    if !connect.client_id.is_empty() || mode == ClientIdMode::AuthenticationName {
        return (connect.client_id.clone(), None);
    }
    let id = assign();
    (id.clone(), Some(id))
}

/// SPEC §10: caps a v5 CONNECT's Session Expiry Interval at `max` seconds; the value used
/// when it was capped.
fn cap_session_expiry(connect: &mut Connect, max: u32) -> Option<u32> {
    if connect.version != Version::V5 {
        return None;
    }
    let asked = match properties::find(&connect.properties, id::SESSION_EXPIRY_INTERVAL) {
        Ok(Some(Value::FourBytes(s))) => s,
        _ => return None,
    };
    if asked <= max {
        return None;
    }
    let mut list = properties::without(&connect.properties, &[id::SESSION_EXPIRY_INTERVAL])
        .unwrap_or_default();
    list.push(id::SESSION_EXPIRY_INTERVAL);
    list.extend_from_slice(&max.to_be_bytes());
    connect.properties = list;
    Some(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IdentitySource;
    use crate::mqtt::Will;

    fn identity(name: &str, method: Method) -> Identity {
        Identity {
            authentication_name: name.into(),
            client_name: name.into(),
            scheme: None,
            source: IdentitySource::Username,
            valid_until: i64::MAX,
            method,
            attributes: vec![],
            jti: None,
        }
    }

    fn connect(client_id: &str, username: Option<&str>) -> Connect {
        Connect {
            version: Version::V5,
            clean_start: true,
            keep_alive: 30,
            properties: vec![id::SESSION_EXPIRY_INTERVAL, 0xff, 0xff, 0xff, 0xff],
            client_id: client_id.into(),
            will: None,
            username: username.map(str::to_string),
            password: Some(b"pw".to_vec()),
        }
    }

    const UP: Upstream = Upstream {
        username: UsernameMode::Rewrite,
        client_id: ClientIdMode::PerIdentity,
        proxy: true,
        max_session_expiry: 3600,
    };

    #[test]
    fn a_verified_grant_names_the_identity_upstream_and_caps_the_session_expiry() {
        let g = grant(
            &connect("c1", Some("x")),
            identity("dev", Method::Jwt),
            None,
            &UP,
            || unreachable!(),
        )
        .unwrap();
        assert_eq!(g.connect.username.as_deref(), Some("dev"));
        assert_eq!(g.connect.password, None);
        assert_eq!(g.connect.client_id, "dev/c1");
        assert_eq!(g.proxy_name.as_deref(), Some("dev"));
        assert_eq!(g.session, "c1");
        assert_eq!(g.session_expiry, Some(3600));
        assert_eq!(
            properties::find(&g.connect.properties, id::SESSION_EXPIRY_INTERVAL),
            Ok(Some(Value::FourBytes(3600)))
        );
    }

    #[test]
    fn an_unverified_grant_asserts_nothing() {
        let g = unverified(
            &connect("c1", Some("typed")),
            Method::Certificate,
            |_| None,
            &UP,
            || unreachable!(),
        );
        assert!(!g.verified);
        assert_eq!(g.connect.username.as_deref(), Some("typed"));
        assert_eq!(g.connect.client_id, "c1");
        assert_eq!(g.proxy_name, None);
    }

    #[test]
    fn names_with_control_characters_or_past_the_proxy_limit_are_not_forwardable() {
        for name in ["alice\0x", "bob\nmallory", ""] {
            let r = grant(
                &connect("c", None),
                identity(name, Method::Jwt),
                None,
                &UP,
                String::new,
            );
            assert_eq!(r.err(), Some(Denied::NameNotForwardable), "{name:?}");
        }
        let long = "n".repeat(480);
        assert!(!forwardable(&long, true));
        assert!(forwardable(&long, false));
    }

    #[test]
    fn passthrough_takes_only_the_verified_name_as_username() {
        let up = Upstream {
            username: UsernameMode::Passthrough,
            ..UP
        };
        let other = grant(
            &connect("c", Some("dev-b")),
            identity("dev-a", Method::Jwt),
            None,
            &up,
            String::new,
        );
        assert_eq!(other.err(), Some(Denied::UsernameNotVerified));
        let same = grant(
            &connect("c", Some("DEV-A")),
            identity("dev-a", Method::Jwt),
            None,
            &up,
            String::new,
        )
        .unwrap();
        assert_eq!(same.connect.username.as_deref(), Some("DEV-A"));
    }

    #[test]
    fn an_empty_client_id_gets_a_session_of_its_own() {
        let g = grant(
            &connect("", None),
            identity("dev", Method::Certificate),
            None,
            &UP,
            || "assigned-1".into(),
        )
        .unwrap();
        assert_eq!(g.connect.client_id, "dev/assigned-1");
        assert_eq!(g.assigned_client_id.as_deref(), Some("assigned-1"));
        assert_eq!(g.session, "assigned-1");
        // One session per identity: nothing to assign.
        let one = Upstream {
            client_id: ClientIdMode::AuthenticationName,
            ..UP
        };
        let g = grant(
            &connect("", None),
            identity("dev", Method::Certificate),
            None,
            &one,
            || unreachable!(),
        )
        .unwrap();
        assert_eq!(
            (g.connect.client_id.as_str(), g.session.as_str()),
            ("dev", ONE_SESSION)
        );
    }

    #[test]
    fn a_will_is_decided_as_a_publish() {
        let files = crate::authz::Files {
            client_groups: std::path::Path::new("g.json"),
            topic_spaces: std::path::Path::new("s.json"),
            permission_bindings: std::path::Path::new("b.json"),
        };
        let model = crate::authz::Authz::parse(
            &files,
            r#"[{"name": "$all"}]"#,
            r#"[{"name": "own", "topicTemplates": ["devices/${client.authenticationName}/#"]}]"#,
            r#"[{"name": "publish-own", "clientGroupName": "$all", "topicSpaceName": "own", "permission": "Publisher"}]"#,
        )
        .unwrap();
        let perms = model.permissions(&crate::authz::Facts::new("dev", &[]));
        let mut c = connect("c", None);
        c.will = Some(Will {
            properties: vec![],
            topic: "secret/commands".into(),
            payload: vec![],
            qos: 1,
            retain: true,
        });
        let denied = grant(
            &c,
            identity("dev", Method::Certificate),
            Some((perms.clone(), AuthzMode::Enforce)),
            &UP,
            String::new,
        );
        assert_eq!(denied.err(), Some(Denied::WillNotAuthorized));
        // Audit authorization counts, never refuses.
        assert!(grant(
            &c,
            identity("dev", Method::Certificate),
            Some((perms.clone(), AuthzMode::Audit)),
            &UP,
            String::new,
        )
        .is_ok());
        c.will.as_mut().unwrap().topic = "devices/dev/will".into();
        assert!(grant(
            &c,
            identity("dev", Method::Certificate),
            Some((perms.clone(), AuthzMode::Enforce)),
            &UP,
            String::new,
        )
        .is_ok());
    }
}
