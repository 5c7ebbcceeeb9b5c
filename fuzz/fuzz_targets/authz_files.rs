//! Any bytes as the three authorization files (client groups, topic spaces, permission
//! bindings, split at 0xff bytes): loading never panics, and a loaded model answers any
//! client's permissions and any topic without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mqttgate::authz::{Action, Authz, Facts, Files};
use mqttgate::trust::registry::AttributeValue;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff).map(String::from_utf8_lossy);
    let (Some(groups), Some(spaces), Some(bindings)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let topic = parts.next().unwrap_or_default();
    let files = Files {
        client_groups: Path::new("client-groups.json"),
        topic_spaces: Path::new("topic-spaces.json"),
        permission_bindings: Path::new("permission-bindings.json"),
    };
    if let Ok(model) = Authz::parse(&files, &groups, &spaces, &bindings) {
        let attributes = vec![
            ("floor".to_string(), AttributeValue::Int(12)),
            ("room".to_string(), AttributeValue::String("345".into())),
        ];
        let facts = Facts::new("sensor-1", &attributes);
        let _ = model.client_groups(&facts);
        let permissions = model.permissions(&facts);
        for action in [Action::Publish, Action::Subscribe] {
            // The compiled permissions and the model decide alike.
            assert_eq!(
                permissions.decide(action, &topic),
                model.decide(&facts, action, &topic)
            );
        }
    }
});
