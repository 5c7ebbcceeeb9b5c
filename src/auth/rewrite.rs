//! SPEC §4, what the broker sees: the CONNECT re-encoded with the client's identity as
//! username and client identifier, per the `[upstream]` modes. Pure.

use crate::auth::Identity;
use crate::config::{ClientIdMode, UsernameMode};
use crate::mqtt::Connect;

/// SPEC §4: the CONNECT the broker sees.
pub fn upstream_connect(
    connect: &Connect,
    identity: &Identity,
    username: UsernameMode,
    client_id: ClientIdMode,
) -> Connect {
    let mut c = connect.clone();
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
    use crate::auth::IdentitySource;
    use crate::mqtt::Version;
    use crate::trust::registry::Scheme;

    fn identity(name: &str) -> Identity {
        Identity {
            authentication_name: name.into(),
            client_name: name.into(),
            scheme: Scheme::SubjectMatchesAuthenticationName,
            source: IdentitySource::Username,
            valid_until: i64::MAX,
            method: crate::auth::Method::Certificate,
            attributes: Vec::new(),
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
