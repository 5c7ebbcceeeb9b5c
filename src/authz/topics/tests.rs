use super::*;

fn attrs() -> Vec<(String, AttributeValue)> {
    vec![
        ("dollar".into(), AttributeValue::String("$SYS".into())),
        ("empty".into(), AttributeValue::String(String::new())),
        ("fleet".into(), AttributeValue::String("north".into())),
        ("floor".into(), AttributeValue::Int(-3)),
        ("hash".into(), AttributeValue::String("a#".into())),
        ("nul".into(), AttributeValue::String("a\0b".into())),
        ("on".into(), AttributeValue::Bool(true)),
        ("plus".into(), AttributeValue::String("+".into())),
        ("slash".into(), AttributeValue::String("a/b".into())),
        ("tags".into(), AttributeValue::Strings(vec!["x".into()])),
    ]
}

fn substitute_as(name: &str, template: &str) -> Option<String> {
    let attrs = attrs();
    Template::parse(template)
        .unwrap_or_else(|e| panic!("{template:?}: {e}"))
        .substitute(&Facts::new(name, &attrs))
}

fn substitute(template: &str) -> Option<String> {
    substitute_as("dev-1", template)
}

fn column(template: &str) -> (usize, &'static str) {
    match Template::parse(template) {
        Err(TemplateError::At { column, problem }) => (column, problem),
        other => panic!("{template:?}: {other:?}"),
    }
}

#[test]
fn variables_fill_whole_segments_and_parts_of_segments() {
    assert_eq!(
        substitute("devices/${client.authenticationName}/#").as_deref(),
        Some("devices/dev-1/#")
    );
    assert_eq!(
        substitute("fleet-${client.attributes.fleet}/+").as_deref(),
        Some("fleet-north/+")
    );
    assert_eq!(
        substitute("m/${client.authenticationName}.f${client.attributes.floor}/t").as_deref(),
        Some("m/dev-1.f-3/t")
    );
    assert_eq!(
        substitute("${client.attributes.fleet}${client.authenticationName}").as_deref(),
        Some("northdev-1")
    );
    assert_eq!(substitute("plain/+/#").as_deref(), Some("plain/+/#"));
    assert_eq!(substitute("$SYS/x").as_deref(), Some("$SYS/x"));
    assert_eq!(
        substitute("a/$b/c}").as_deref(),
        Some("a/$b/c}"),
        "a bare dollar or closing brace is text"
    );
}

#[test]
fn a_missing_or_unusable_attribute_grants_nothing() {
    for key in ["missing", "on", "tags"] {
        let template = format!("t/${{client.attributes.{key}}}");
        assert_eq!(substitute(&template), None, "{key}");
    }
}

#[test]
fn a_value_that_would_widen_the_filter_is_refused() {
    for key in ["plus", "hash", "slash", "nul", "empty"] {
        let template = format!("t/${{client.attributes.{key}}}/x");
        assert_eq!(substitute(&template), None, "{key}");
    }
    assert_eq!(substitute_as("a/b", "d/${client.authenticationName}"), None);
    assert_eq!(substitute_as("#", "d/${client.authenticationName}"), None);
    assert_eq!(substitute_as("x+", "d/${client.authenticationName}"), None);
}

#[test]
fn a_value_cannot_open_a_dollar_topic() {
    assert_eq!(substitute("${client.attributes.dollar}/#"), None);
    assert_eq!(
        substitute_as("$SYS", "${client.authenticationName}/#"),
        None
    );
    // Elsewhere a '$' is ordinary text.
    assert_eq!(
        substitute("t/${client.attributes.dollar}").as_deref(),
        Some("t/$SYS")
    );
}

#[test]
fn invalid_templates_are_refused_with_their_column() {
    assert_eq!(Template::parse(""), Err(TemplateError::Empty));
    assert_eq!(column("a/#/b").0, 3);
    assert_eq!(column("a/b#").0, 4);
    assert_eq!(column("a/x+/b").0, 4);
    assert_eq!(column("a/${client.authenticationName}+").0, 31);
    assert_eq!(column("a/\0").0, 3);
    assert_eq!(
        column("a/${client.authenticationName"),
        (3, "'${' without a closing '}' in its segment")
    );
    assert_eq!(column("a/${client.attributes.a/b}").0, 3);
    assert_eq!(column("ä/${client.name}"), (3, UNKNOWN_VARIABLE));
    assert_eq!(column("a/${clientId}").0, 3);
    assert_eq!(column("a/${client.AuthenticationName}").0, 3);
    assert_eq!(
        column("a/x${client.attributes.}"),
        (4, "an attribute key is letters, digits and underscores")
    );
    assert_eq!(column("a/${client.attributes.a-b}").0, 3);
    let long = "a".repeat(MAX_FILTER_BYTES + 1);
    assert!(matches!(
        Template::parse(&long),
        Err(TemplateError::TooLong { .. })
    ));
}

#[test]
fn a_topic_space_holds_one_to_ten_valid_templates() {
    assert_eq!(
        parse_topic_space::<&str>(&[]),
        Err(TopicSpaceError::NoTemplates)
    );
    let ten = vec!["a/+"; MAX_TEMPLATES];
    assert_eq!(parse_topic_space(&ten).unwrap().len(), 10);
    let eleven = vec!["a/+"; MAX_TEMPLATES + 1];
    assert_eq!(
        parse_topic_space(&eleven),
        Err(TopicSpaceError::TooMany { count: 11 })
    );
    let e = parse_topic_space(&["ok/#", "bad/#/x"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "topic template 1 (\"bad/#/x\"): column 5: '#' must be the last segment"
    );
}

#[test]
fn publish_matches_topic_names_mqtt_style() {
    let cases = [
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("a/+", "a/b", true),
        ("a/+", "a/", true),
        ("a/+", "a", false),
        ("a/+", "a/b/c", false),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/#", "ab", false),
        ("+/+", "/x", true),
        ("#", "anything/at/all", true),
        ("A/b", "a/b", false),
    ];
    for (filter, topic, allowed) in cases {
        assert_eq!(publish_allowed(filter, topic), allowed, "{filter} {topic}");
    }
}

#[test]
fn publish_never_allows_wildcards_or_empty_topics() {
    assert!(!publish_allowed("#", "a/+"));
    assert!(!publish_allowed("#", "a/#"));
    assert!(!publish_allowed("#", ""));
    assert!(!publish_allowed("#", "a\0"));
}

#[test]
fn leading_wildcards_do_not_reach_dollar_topics() {
    assert!(!publish_allowed("#", "$SYS/x"));
    assert!(!publish_allowed("+/x", "$SYS/x"));
    assert!(publish_allowed("$SYS/#", "$SYS/x"));
    assert!(
        publish_allowed("a/+", "a/$x"),
        "only the first level counts"
    );
    assert!(!subscribe_allowed("#", "$SYS/#"));
    assert!(!subscribe_allowed("+/#", "$SYS/x"));
    assert!(subscribe_allowed("$SYS/#", "$SYS/+"));
    assert!(
        subscribe_allowed("#", "+/x"),
        "a requested wildcard excludes $-topics itself"
    );
}

#[test]
fn subscribe_allows_filters_inside_the_template() {
    let cases = [
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/+", "a/b", true),
        ("a/+", "a/+", true),
        ("a/+", "a/#", false),
        ("a/+", "a/b/c", false),
        ("a/b", "a/+", false),
        ("a/b", "a/#", false),
        ("a/#", "a", true),
        ("a/#", "a/#", true),
        ("a/#", "a/+/c", true),
        ("a/#", "a/+/#", true),
        ("a/#", "#", false),
        ("a/#", "+/b", false),
        ("a/+/c", "a/b/c", true),
        ("a/+/c", "a/+/c", true),
        ("a/+/c", "a/+/+", false),
        ("a/+/c", "a/b", false),
        ("#", "#", true),
        ("#", "+/+/x", true),
        ("+/#", "#", true),
        ("+/+/#", "#", false),
        ("+", "#", false),
        ("a/+/#", "a/#", false),
    ];
    for (filter, requested, allowed) in cases {
        assert_eq!(
            subscribe_allowed(filter, requested),
            allowed,
            "{filter} ⊇ {requested}"
        );
    }
}

#[test]
fn subscribe_refuses_invalid_requested_filters() {
    for requested in [
        "",
        "a/#/b",
        "a+",
        "a/b#",
        "a\0",
        "$share/g",
        "$share//a",
        "$share/g/",
    ] {
        assert!(!subscribe_allowed("#", requested), "{requested:?}");
    }
}

#[test]
fn shared_subscriptions_are_judged_by_their_filter() {
    assert!(subscribe_allowed("a/#", "$share/workers/a/b"));
    assert!(!subscribe_allowed("a/#", "$share/workers/b"));
    assert!(
        !subscribe_allowed("a/#", "$share/a/#"),
        "the group is not a level"
    );
    assert!(!subscribe_allowed("a/#", "$share/g+/a"));
}

/// The matcher as first written, level by level with `split`: the byte walk must agree.
fn publish_allowed_by_levels(filter: &str, topic: &str) -> bool {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return false;
    }
    let dollar = topic.starts_with('$');
    let mut topic_levels = topic.split('/');
    for (index, level) in filter.split('/').enumerate() {
        match (level, topic_levels.next()) {
            ("#", _) => return !(index == 0 && dollar),
            ("+", Some(_)) if index == 0 && dollar => return false,
            ("+", Some(_)) => {}
            (literal, Some(t)) if literal == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

proptest::proptest! {
    #[test]
    fn the_byte_walk_agrees_with_the_level_split(
        filter in "(\\$?[ab+#]{0,2}/){0,4}[ab+#]{0,2}",
        topic in "(\\$?[ab+#]{0,2}/){0,4}[ab]{0,2}",
    ) {
        proptest::prop_assert_eq!(
            publish_allowed(&filter, &topic),
            publish_allowed_by_levels(&filter, &topic),
            "filter {:?} topic {:?}", filter, topic
        );
    }
}
