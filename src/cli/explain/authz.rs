//! `explain --topic T --publish|--subscribe`: the authorization step for a client the
//! decision allowed. It renders `Authz::client_groups` and `Authz::decide`, and checks the
//! per-session `ClientPermissions` (what a live connection uses) agrees; it decides
//! nothing itself.

use crate::auth::Identity;
use crate::authz::{Action, Facts};
use crate::config::{AuthzMode, Config};
use crate::mqtt::code;
use crate::trust::Trust;

/// The authorization lines for `id` asking to do `action` on `topic`, and whether it may.
pub fn lines(
    config: &Config,
    trust: &Trust,
    id: &Identity,
    action: Action,
    topic: &str,
) -> (Vec<String>, bool) {
    let (Some(model), Some(a)) = (trust.authz.as_deref(), config.authorization.as_ref()) else {
        return (
            vec!["authorization: not configured ([authorization]): every topic is relayed".into()],
            true,
        );
    };
    let mode = match a.mode {
        AuthzMode::Enforce => "enforce",
        AuthzMode::Audit => "audit (denials are counted and logged, and relayed)",
    };
    let facts = Facts::new(&id.authentication_name, &id.attributes);
    let mut out = vec![
        format!("authorization: mode {mode}"),
        format!(
            "authorization: client groups: {}",
            model.client_groups(&facts).join(", ")
        ),
    ];
    let permissions = model.permissions(&facts);
    for (binding, filter) in permissions.grants(action) {
        out.push(format!(
            "authorization: {} grant: {filter:?} (binding {binding:?})",
            action.as_str()
        ));
    }
    let decided = model.decide(&facts, action, topic);
    debug_assert_eq!(decided, permissions.decide(action, topic));
    let allowed = match decided {
        Some(binding) => {
            out.push(format!(
                "authorization: {} {topic:?}: ALLOWED by binding {binding:?}",
                action.as_str()
            ));
            true
        }
        None => {
            let answer = match action {
                Action::Publish => format!(
                    "MQTT 5: dropped, QoS 1 PUBACK / QoS 2 PUBREC 0x{:02X}; MQTT 3.1.1: connection closed",
                    code::V5_NOT_AUTHORIZED
                ),
                Action::Subscribe => format!(
                    "SUBACK 0x{:02X} (MQTT 5) / 0x80 (MQTT 3.1.1) for this filter",
                    code::V5_NOT_AUTHORIZED
                ),
            };
            out.push(format!(
                "authorization: {} {topic:?}: DENIED: no permission binding allows it ({answer})",
                action.as_str()
            ));
            a.mode == AuthzMode::Audit
        }
    };
    (out, allowed)
}
