use std::path::Path;

use super::*;

fn files() -> Files<'static> {
    Files {
        client_groups: Path::new("groups.json"),
        topic_spaces: Path::new("spaces.json"),
        permission_bindings: Path::new("bindings.json"),
    }
}

/// The three ```json blocks of this module's documentation, in order.
fn documented_example() -> [String; 3] {
    let source = include_str!("mod.rs");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in source.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match (&mut current, doc) {
            (None, "```json") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
        .try_into()
        .expect("three json blocks in the module doc")
}

fn example() -> Authz {
    let [groups, spaces, bindings] = documented_example();
    Authz::parse(&files(), &groups, &spaces, &bindings).unwrap()
}

fn truck() -> Vec<(String, AttributeValue)> {
    vec![
        ("fleet".into(), AttributeValue::String("north".into())),
        ("type".into(), AttributeValue::String("vehicle".into())),
        ("year".into(), AttributeValue::Int(2022)),
    ]
}

fn load(groups: &str, spaces: &str, bindings: &str) -> Result<Authz, String> {
    Authz::parse(&files(), groups, spaces, bindings).map_err(|e| e.to_string())
}

const GROUPS: &str = r#"[{"name": "vehicles", "query": "attributes.type = 'vehicle'"}]"#;
const SPACES: &str =
    r#"[{"name": "telemetry", "topicTemplates": ["v/${client.authenticationName}/#"]}]"#;

fn binding(group: &str, space: &str, permission: &str) -> String {
    format!(
        r#"[{{"name": "b-1", "clientGroupName": "{group}", "topicSpaceName": "{space}", "permission": "{permission}"}}]"#
    )
}

#[test]
fn the_documented_example_loads_and_means_what_it_says() {
    let authz = example();
    let attrs = truck();
    let truck = Facts::new("truck-7", &attrs);
    assert_eq!(authz.client_groups(&truck), ["$all", "vehicles"]);
    assert_eq!(
        authz.decide(&truck, Action::Publish, "vehicles/truck-7/telemetry/engine"),
        Some("vehicles-publish-telemetry")
    );
    assert_eq!(
        authz.decide(
            &truck,
            Action::Publish,
            "fleets/north/vehicles/truck-7/status"
        ),
        Some("vehicles-publish-telemetry")
    );
    assert_eq!(
        authz.decide(&truck, Action::Publish, "vehicles/truck-8/telemetry"),
        None
    );
    assert_eq!(
        authz.decide(&truck, Action::Subscribe, "broadcast/#"),
        Some("everyone-hears-broadcasts")
    );
    assert_eq!(
        authz.decide(&truck, Action::Subscribe, "vehicles/truck-7/telemetry/#"),
        None
    );

    let dispatcher = Facts::new("dispatch-1", &[]);
    assert_eq!(authz.client_groups(&dispatcher), ["$all", "dispatchers"]);
    assert_eq!(
        authz.decide(&dispatcher, Action::Subscribe, "vehicles/+/telemetry/#"),
        Some("dispatchers-read-telemetry")
    );
    assert_eq!(authz.decide(&dispatcher, Action::Subscribe, "#"), None);
    assert_eq!(
        authz.decide(&dispatcher, Action::Publish, "broadcast/x"),
        None
    );
}

#[test]
fn precomputed_permissions_agree_with_the_model() {
    let authz = example();
    let attrs = truck();
    let roles = vec![(
        "roles".to_string(),
        AttributeValue::Strings(vec!["dispatch".into()]),
    )];
    let clients = [
        Facts::new("truck-7", &attrs),
        Facts::new("dispatch-1", &[]),
        Facts::new("ops", &roles),
        Facts::new("nobody", &[]),
    ];
    let topics = [
        "vehicles/truck-7/telemetry/engine",
        "vehicles/truck-7/telemetry",
        "vehicles/+/telemetry/#",
        "fleets/north/vehicles/truck-7/status",
        "fleets/#",
        "broadcast/#",
        "broadcast/x",
        "#",
        "$SYS/x",
    ];
    for facts in &clients {
        let permissions = authz.permissions(facts);
        for action in Action::ALL {
            for topic in topics {
                assert_eq!(
                    permissions.decide(action, topic),
                    authz.decide(facts, action, topic),
                    "{} {} {topic}",
                    facts.authentication_name,
                    action.as_str()
                );
            }
        }
    }
}

#[test]
fn permissions_list_the_substituted_filters() {
    let authz = example();
    let attrs = truck();
    let permissions = authz.permissions(&Facts::new("truck-7", &attrs));
    let publish: Vec<_> = permissions.grants(Action::Publish).collect();
    assert_eq!(
        publish,
        [
            ("vehicles-publish-telemetry", "vehicles/truck-7/telemetry/#"),
            (
                "vehicles-publish-telemetry",
                "fleets/north/vehicles/truck-7/status"
            ),
        ]
    );
    let subscribe: Vec<_> = permissions.grants(Action::Subscribe).collect();
    assert_eq!(subscribe, [("everyone-hears-broadcasts", "broadcast/#")]);
    assert!(!permissions.is_empty());
}

#[test]
fn a_template_whose_attribute_is_missing_grants_nothing_and_the_rest_still_apply() {
    let authz = example();
    // A vehicle with no fleet: the fleet template is dropped, its own topic stays.
    let attrs = vec![
        ("type".to_string(), AttributeValue::String("vehicle".into())),
        ("year".to_string(), AttributeValue::Int(2021)),
    ];
    let facts = Facts::new("van-2", &attrs);
    let permissions = authz.permissions(&facts);
    assert_eq!(permissions.grants(Action::Publish).count(), 1);
    assert!(permissions
        .decide(Action::Publish, "vehicles/van-2/telemetry")
        .is_some());
}

#[test]
fn a_client_in_no_group_but_all_gets_only_what_all_is_bound_to() {
    let authz = example();
    let attrs = vec![("type".to_string(), AttributeValue::String("vehicle".into()))];
    // year missing: `attributes.year >= 2020` is false.
    let facts = Facts::new("old-truck", &attrs);
    assert_eq!(authz.client_groups(&facts), ["$all"]);
    let permissions = authz.permissions(&facts);
    assert_eq!(permissions.grants(Action::Publish).count(), 0);
    assert_eq!(permissions.grants(Action::Subscribe).count(), 1);
}

#[test]
fn the_first_allowing_binding_by_name_is_reported() {
    let spaces = r##"[{"name": "all", "topicTemplates": ["#"]}]"##;
    let bindings = r#"[
        {"name": "zeta", "clientGroupName": "$all", "topicSpaceName": "all", "permission": "Publisher"},
        {"name": "alpha", "clientGroupName": "$all", "topicSpaceName": "all", "permission": "Publisher"}
    ]"#;
    let authz = load("[]", spaces, bindings).unwrap();
    let facts = Facts::new("x", &[]);
    assert_eq!(authz.decide(&facts, Action::Publish, "a"), Some("alpha"));
    assert_eq!(
        authz.permissions(&facts).decide(Action::Publish, "a"),
        Some("alpha")
    );
    assert_eq!(
        authz.decide(&facts, Action::Subscribe, "a"),
        None,
        "publisher only"
    );
}

#[test]
fn fingerprints_change_exactly_when_permissions_do() {
    let authz = example();
    let attrs = truck();
    let before = authz.permissions(&Facts::new("truck-7", &attrs));
    assert_eq!(
        before.fingerprint(),
        authz
            .permissions(&Facts::new("truck-7", &attrs))
            .fingerprint()
    );

    // Another vehicle's own topics differ.
    let other = authz.permissions(&Facts::new("truck-8", &attrs));
    assert_ne!(before.fingerprint(), other.fingerprint());

    // A changed attribute value changes a substituted filter.
    let mut moved = truck();
    moved[0].1 = AttributeValue::String("south".into());
    let moved = authz.permissions(&Facts::new("truck-7", &moved));
    assert_ne!(before.fingerprint(), moved.fingerprint());

    // Renaming a binding changes nothing a client can do.
    let [groups, spaces, bindings] = documented_example();
    let renamed = bindings.replace("vehicles-publish-telemetry", "vehicles-pub");
    let renamed = Authz::parse(&files(), &groups, &spaces, &renamed).unwrap();
    let after = renamed.permissions(&Facts::new("truck-7", &attrs));
    assert_eq!(before.fingerprint(), after.fingerprint());
    assert_ne!(
        before, after,
        "but the values still differ in the binding named"
    );

    // Switching a binding from Publisher to Subscriber does.
    let switched = bindings.replacen("\"Publisher\"", "\"Subscriber\"", 1);
    let switched = Authz::parse(&files(), &groups, &spaces, &switched).unwrap();
    let after = switched.permissions(&Facts::new("truck-7", &attrs));
    assert_ne!(before.fingerprint(), after.fingerprint());
}

#[test]
fn arm_shape_with_value_and_properties_is_read() {
    let groups = r#"{"value": [{"name": "vehicles", "id": "/x", "properties": {"query": "attributes.type = 'vehicle'", "provisioningState": "Succeeded"}}], "nextLink": null}"#;
    let spaces = r#"{"value": [{"name": "telemetry", "properties": {"topicTemplates": ["v/${client.authenticationName}/#"], "topicSpaceName": null}}]}"#;
    let bindings = r#"{"value": [{"name": "b-1", "properties": {"clientGroupName": "vehicles", "topicSpaceName": "telemetry", "permission": "Publisher"}}]}"#;
    let authz = load(groups, spaces, bindings).unwrap();
    let attrs = truck();
    assert_eq!(
        authz.decide(&Facts::new("t", &attrs), Action::Publish, "v/t/x"),
        Some("b-1")
    );
}

#[test]
fn empty_lists_allow_nothing() {
    let authz = load("[]", "[]", "[]").unwrap();
    let facts = Facts::new("x", &[]);
    assert_eq!(authz.client_groups(&facts), ["$all"]);
    assert!(authz.permissions(&facts).is_empty());
    assert_eq!(authz.decide(&facts, Action::Publish, "a"), None);
}

#[test]
fn references_ignore_case_like_arm_names() {
    let authz = load(
        GROUPS,
        SPACES,
        &binding("VEHICLES", "Telemetry", "Publisher"),
    )
    .unwrap();
    let attrs = truck();
    assert!(authz
        .decide(&Facts::new("t", &attrs), Action::Publish, "v/t")
        .is_some());
}

#[test]
fn errors_name_the_file_the_entry_and_the_query_column() {
    let groups = r#"[{"name": "vehicles", "query": "attributes.type = 'vehicle'"}, {"name": "bad-one", "query": "attributes.floor >= 'x'"}]"#;
    assert_eq!(
        load(groups, SPACES, "[]").unwrap_err(),
        "groups.json: client group \"bad-one\" (entry 1): query: column 21: expected an integer (orderings compare integers), found a string"
    );
    let err = Authz::parse(&files(), groups, SPACES, "[]").unwrap_err();
    let AuthzError::Entry {
        problem: Problem::Query(query),
        ..
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(query.column(), Some(21));
}

#[test]
fn bindings_to_unknown_groups_or_spaces_are_load_errors() {
    assert_eq!(
        load(GROUPS, SPACES, &binding("trucks", "telemetry", "Publisher")).unwrap_err(),
        "bindings.json: permission binding \"b-1\" (entry 0): client group \"trucks\" is not in groups.json"
    );
    assert_eq!(
        load(GROUPS, SPACES, &binding("vehicles", "status", "Publisher")).unwrap_err(),
        "bindings.json: permission binding \"b-1\" (entry 0): topic space \"status\" is not in spaces.json"
    );
    assert_eq!(
        load(GROUPS, SPACES, &binding("vehicles", "telemetry", "publisher")).unwrap_err(),
        "bindings.json: permission binding \"b-1\" (entry 0): permission must be \"Publisher\" or \"Subscriber\", found \"publisher\""
    );
}

#[test]
fn topic_space_errors_name_the_space_and_the_template() {
    let spaces = r#"[{"name": "telemetry", "topicTemplates": ["ok/#", "v/${client.id}"]}]"#;
    assert_eq!(
        load(GROUPS, spaces, "[]").unwrap_err(),
        "spaces.json: topic space \"telemetry\" (entry 0): topic template 1 (\"v/${client.id}\"): column 3: unknown variable: expected ${client.authenticationName} or ${client.attributes.<key>}"
    );
    let eleven = format!(
        r#"[{{"name": "many", "topicTemplates": [{}]}}]"#,
        ["\"a/+\""; 11].join(",")
    );
    assert!(load(GROUPS, &eleven, "[]")
        .unwrap_err()
        .ends_with("11 topic templates, over Azure's limit of 10"));
    for bad in [
        r#"[{"name": "none"}]"#,
        r#"[{"name": "abc", "topicTemplates": "a/#"}]"#,
        r#"[{"name": "abc", "topicTemplates": [1]}]"#,
        r#"[{"name": "abc", "topicTemplates": []}]"#,
    ] {
        assert!(load(GROUPS, bad, "[]").is_err(), "{bad}");
    }
}

#[test]
fn entries_are_checked_for_shape_names_and_uniqueness() {
    let cases = [
        (r#"{"items": []}"#, "groups.json: expected a JSON array of client groups or an object with a \"value\" array"),
        ("7", "groups.json: expected a JSON array of client groups or an object with a \"value\" array"),
        (r#"{"value": [], "nextLink": "https://x"}"#, "groups.json: the list is one page of several (nextLink is set); save the whole list"),
        ("[1]", "groups.json: client group entry 0: not a JSON object"),
        (r#"[{"query": "authenticationName = 'a'"}]"#, "groups.json: client group entry 0: name is missing"),
        (r#"[{"name": "ab", "query": "authenticationName = 'a'"}]"#, "groups.json: client group \"ab\" (entry 0): name must be 3 to 50 letters, digits and hyphens"),
        (r#"[{"name": "a_b", "query": "authenticationName = 'a'"}]"#, "groups.json: client group \"a_b\" (entry 0): name must be 3 to 50 letters, digits and hyphens"),
        (r#"[{"name": "abc"}]"#, "groups.json: client group \"abc\" (entry 0): query is missing"),
        (r#"[{"name": "abc", "query": 5}]"#, "groups.json: client group \"abc\" (entry 0): query must be a string"),
        (r#"[{"name": "abc", "query": "authenticationName = 'a'"}, {"name": "ABC", "query": "authenticationName = 'b'"}]"#, "groups.json: client group \"ABC\" (entry 1): the name is also used by entry 0 (names are compared ignoring case)"),
        (r#"[{"name": "abc", "query": "authenticationName = 'a'", "properties": {"query": "authenticationName = 'a'"}}]"#, "groups.json: client group \"abc\" (entry 0): query is given both at the top and under properties; use one shape"),
        (r#"[{"name": "$all", "query": "authenticationName = 'a'"}]"#, "groups.json: client group \"$all\" (entry 0): $all is built in and cannot have a query"),
        ("[", "groups.json: invalid JSON: EOF while parsing a list at line 1 column 1"),
    ];
    for (groups, expected) in cases {
        assert_eq!(load(groups, "[]", "[]").unwrap_err(), expected, "{groups}");
    }
    // Azure lists the built-in group with an empty or null query; it is accepted.
    load(r#"[{"name": "$all", "query": null}, {"name": "x-1", "query": "authenticationName = 'a'"}]"#, "[]", "[]").unwrap();
    load(
        r#"[{"name": "$all", "properties": {"query": ""}}]"#,
        "[]",
        "[]",
    )
    .unwrap();
}

#[test]
fn load_reads_the_three_files_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let [groups, spaces, bindings] = documented_example();
    let paths = ["g.json", "s.json", "b.json"].map(|n| dir.path().join(n));
    for (path, text) in paths.iter().zip([groups, spaces, bindings]) {
        std::fs::write(path, text).unwrap();
    }
    let files = Files {
        client_groups: &paths[0],
        topic_spaces: &paths[1],
        permission_bindings: &paths[2],
    };
    Authz::load(&files).unwrap();

    std::fs::remove_file(&paths[1]).unwrap();
    let err = Authz::load(&files).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: cannot read", paths[1].display())),
        "{err}"
    );
}

#[test]
fn the_model_and_permissions_can_be_shared_across_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Authz>();
    shared::<ClientPermissions>();
}

#[test]
fn shared_subscriptions_are_decided_by_their_filter() {
    let authz = example();
    let permissions = authz.permissions(&Facts::new("dispatch-1", &[]));
    assert_eq!(
        permissions.decide(Action::Subscribe, "$share/ops/vehicles/+/telemetry/#"),
        Some("dispatchers-read-telemetry")
    );
    assert_eq!(
        permissions.decide(Action::Subscribe, "$share/ops/fleets/#"),
        Some("dispatchers-read-telemetry")
    );
    assert_eq!(permissions.decide(Action::Subscribe, "$share/ops/#"), None);
}
