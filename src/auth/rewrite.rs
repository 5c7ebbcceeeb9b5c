//! SPEC §4, what the broker sees: the CONNECT re-encoded with the client's identity as
//! username and client identifier, per the `[upstream]` modes, and without authentication
//! properties (SPEC §9, §13). Pure; [`super::grant`] calls it.

use crate::auth::Identity;
use crate::config::{ClientIdMode, UsernameMode};
use crate::mqtt::properties::{self, id};
use crate::mqtt::Connect;

/// SPEC §4: the CONNECT the broker sees.
pub fn upstream_connect(
    connect: &Connect,
    identity: &Identity,
    username: UsernameMode,
    client_id: ClientIdMode,
) -> Connect {
    let mut c = connect.clone();
    // SPEC §13: authentication is mqttgate's, for every method. The token was mqttgate's
    // to check, the webhook has judged the method and data; the broker would refuse a
    // method it does not know (and must never see a token). A list that does not parse:
    // no properties at all beat forwarding a token.
    if !c.properties.is_empty() {
        c.properties = properties::without(
            &c.properties,
            &[id::AUTHENTICATION_METHOD, id::AUTHENTICATION_DATA],
        )
        .unwrap_or_default();
    }
    if username == UsernameMode::Rewrite {
        c.username = Some(identity.authentication_name.clone());
        c.password = None;
    }
    match client_id {
        ClientIdMode::AuthenticationName => {
            c.client_id = identity.authentication_name.clone();
        }
        ClientIdMode::Passthrough => {}
        ClientIdMode::PerIdentity => {
            c.client_id = per_identity_client_id(&identity.authentication_name, &connect.client_id);
        }
    }
    c
}

/// An injective encoding of (authentication name, client id): the name has '%' and '/'
/// percent-escaped, so the first '/' always ends it.
pub fn per_identity_client_id(name: &str, client_id: &str) -> String {
    let mut out = String::with_capacity(name.len() + client_id.len() + 1);
    for ch in name.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out.push('/');
    out.push_str(client_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{IdentitySource, Method};
    use crate::mqtt::Version;
    use crate::trust::registry::Scheme;

    fn identity(name: &str) -> Identity {
        Identity {
            authentication_name: name.into(),
            client_name: name.into(),
            scheme: Some(Scheme::SubjectMatchesAuthenticationName),
            source: IdentitySource::Username,
            valid_until: i64::MAX,
            method: crate::auth::Method::Certificate,
            attributes: vec![],
            jti: None,
        }
    }

    fn connect() -> Connect {
        Connect {
            version: Version::V311,
            clean_start: true,
            keep_alive: 60,
            properties: vec![],
            client_id: "device-chosen".into(),
            will: None,
            username: Some("sensor-17".into()),
            password: Some(b"secret".to_vec()),
        }
    }

    #[test]
    fn rewrite_sets_username_and_client_id_and_drops_password() {
        let c = upstream_connect(
            &connect(),
            &identity("Sensor-17"),
            UsernameMode::Rewrite,
            ClientIdMode::AuthenticationName,
        );
        assert_eq!(c.username.as_deref(), Some("Sensor-17"));
        assert_eq!(c.password, None);
        assert_eq!(c.client_id, "Sensor-17");
        assert_eq!(c.keep_alive, 60);
    }

    #[test]
    fn passthrough_keeps_what_the_client_sent() {
        let c = upstream_connect(
            &connect(),
            &identity("sensor-17"),
            UsernameMode::Passthrough,
            ClientIdMode::Passthrough,
        );
        assert_eq!(c, connect());
    }

    #[test]
    fn a_jwt_client_s_authentication_properties_never_reach_the_broker() {
        let mut c = connect();
        c.version = Version::V5;
        let mut props = vec![id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 60];
        props.extend_from_slice(&[id::AUTHENTICATION_METHOD, 0, 10]);
        props.extend_from_slice(b"CUSTOM-JWT");
        props.extend_from_slice(&[id::AUTHENTICATION_DATA, 0, 3, b'a', b'.', b'b']);
        c.properties = props;
        let mut jwt = identity("sensor-17");
        jwt.method = Method::Jwt;
        let up = upstream_connect(
            &c,
            &jwt,
            UsernameMode::Rewrite,
            ClientIdMode::AuthenticationName,
        );
        assert_eq!(
            up.properties,
            vec![id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 60]
        );
        assert_eq!(up.authentication_method(), Ok(None));
        // SPEC §13: whatever the method, the authentication properties stay here.
        let cert = upstream_connect(
            &c,
            &identity("sensor-17"),
            UsernameMode::Rewrite,
            ClientIdMode::AuthenticationName,
        );
        assert_eq!(
            cert.properties,
            vec![id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 60]
        );
    }

    #[test]
    fn a_webhook_client_s_authentication_properties_never_reach_the_broker() {
        let mut c = connect();
        c.version = Version::V5;
        let mut props = vec![id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 60];
        props.extend_from_slice(&[id::AUTHENTICATION_METHOD, 0, 4]);
        props.extend_from_slice(b"HOOK");
        props.extend_from_slice(&[id::AUTHENTICATION_DATA, 0, 2, 1, 2]);
        c.properties = props;
        let mut hook = identity("dev-1");
        hook.method = Method::Webhook;
        let up = upstream_connect(
            &c,
            &hook,
            UsernameMode::Rewrite,
            ClientIdMode::AuthenticationName,
        );
        assert_eq!(
            up.properties,
            vec![id::SESSION_EXPIRY_INTERVAL, 0, 0, 0, 60]
        );
    }

    #[test]
    fn per_identity_client_ids_never_collide() {
        assert_eq!(per_identity_client_id("a", "b/c"), "a/b/c");
        assert_ne!(
            per_identity_client_id("a/b", "c"),
            per_identity_client_id("a", "b/c")
        );
        assert_eq!(per_identity_client_id("a/b", "c"), "a%2Fb/c");
        assert_ne!(
            per_identity_client_id("a%2Fb", "c"),
            per_identity_client_id("a/b", "c")
        );
    }
}
