use super::*;

fn attrs() -> Vec<(String, AttributeValue)> {
    let mut attrs = vec![
        ("floor".to_string(), AttributeValue::Int(3)),
        ("room".to_string(), AttributeValue::String("345".into())),
        (
            "type".to_string(),
            AttributeValue::String("home-sensors".into()),
        ),
        (
            "sensors".to_string(),
            AttributeValue::Strings(vec!["motion".into(), "noise".into()]),
        ),
        ("none".to_string(), AttributeValue::Strings(vec![])),
        ("on".to_string(), AttributeValue::Bool(true)),
    ];
    attrs.sort_by(|a, b| a.0.cmp(&b.0));
    attrs
}

/// Whether the query holds for client "dev-1" with `attrs()`.
fn holds(query: &str) -> bool {
    let attrs = attrs();
    let q = Query::parse(query).unwrap_or_else(|e| panic!("{query:?}: {e}"));
    q.matches(&Facts::new("dev-1", &attrs))
}

fn error(query: &str) -> QueryError {
    match Query::parse(query) {
        Ok(q) => panic!("{query:?} parsed: {q:?}"),
        Err(e) => e,
    }
}

fn error_column(query: &str) -> usize {
    error(query).column().expect("a column")
}

#[test]
fn equality_on_strings_and_integers() {
    assert!(holds("attributes.room = '345'"));
    assert!(holds("attributes.room = \"345\""));
    assert!(!holds("attributes.room = '346'"));
    assert!(holds("attributes.floor = 3"));
    assert!(!holds("attributes.floor = 4"));
    assert!(holds("authenticationName = 'dev-1'"));
    assert!(!holds("authenticationName = 'DEV-1'"), "case-sensitive");
}

#[test]
fn both_spellings_of_not_equal() {
    for op in ["<>", "!="] {
        assert!(holds(&format!("attributes.room {op} '346'")));
        assert!(!holds(&format!("attributes.room {op} '345'")));
        assert!(holds(&format!("attributes.floor {op} 4")));
        assert!(!holds(&format!("attributes.floor {op} 3")));
        assert!(holds(&format!("authenticationName {op} 'other'")));
    }
}

#[test]
fn orderings_compare_integers() {
    assert!(holds("attributes.floor < 4"));
    assert!(!holds("attributes.floor < 3"));
    assert!(holds("attributes.floor > 2"));
    assert!(!holds("attributes.floor > 3"));
    assert!(holds("attributes.floor <= 3"));
    assert!(!holds("attributes.floor <= 2"));
    assert!(holds("attributes.floor >= 3"));
    assert!(!holds("attributes.floor >= 4"));
    assert!(holds("attributes.floor > -10"));
    assert!(holds("attributes.floor<=5"), "no spaces needed");
}

#[test]
fn in_holds_when_any_value_is_equal() {
    assert!(holds("authenticationName IN ['client1', 'dev-1']"));
    assert!(!holds("authenticationName IN ['client1', 'client2']"));
    assert!(holds("attributes.floor in [1, 2, 3]"));
    assert!(
        holds("attributes.room In [3, '345']"),
        "mixed literal types"
    );
    assert!(!holds("attributes.floor IN ['3']"), "no conversion");
    assert!(holds(
        "attributes.sensors IN [\"motion\", \"humidity\", \"temperature\"]"
    ));
    assert!(!holds("attributes.sensors IN ['light']"));
}

#[test]
fn and_binds_tighter_than_or() {
    // true or (false and false): with `or` binding tighter this would be false.
    assert!(holds(
        "attributes.floor = 3 or attributes.floor = 4 and attributes.room = 'x'"
    ));
    // (false and true) or true
    assert!(holds(
        "attributes.floor = 4 and attributes.room = '345' or attributes.floor = 3"
    ));
    // (false and …) or false
    assert!(!holds(
        "attributes.floor = 4 and attributes.room = '345' or attributes.floor = 5"
    ));
}

#[test]
fn parentheses_override_precedence() {
    assert!(!holds(
        "(attributes.floor = 3 or attributes.floor = 4) and attributes.room = 'x'"
    ));
    assert!(holds(
        "((attributes.floor = 3)) and (attributes.room = 'x' or attributes.room = '345')"
    ));
    assert!(holds(
        "(attributes.sensors = \"motion\" or attributes.sensors = \"humidity\") or attributes.type = \"home-sensors\""
    ));
}

#[test]
fn keywords_are_case_insensitive() {
    assert!(holds("attributes.floor = 3 AND attributes.room = '345'"));
    assert!(holds("attributes.floor = 4 Or attributes.room = '345'"));
    assert!(holds("attributes.floor iN [3]"));
}

#[test]
fn array_attribute_holds_equality_when_any_element_does() {
    assert!(holds("attributes.sensors = 'motion'"));
    assert!(holds("attributes.sensors = 'noise'"));
    assert!(!holds("attributes.sensors = 'light'"));
    assert!(!holds("attributes.none = ''"));
}

#[test]
fn array_attribute_not_equal_means_no_element_is_equal() {
    assert!(!holds("attributes.sensors <> 'motion'"));
    assert!(holds("attributes.sensors != 'light'"));
    assert!(holds("attributes.none <> 'motion'"));
    assert!(!holds("attributes.sensors > 1"), "arrays hold strings");
    assert!(!holds("attributes.sensors = 1"));
}

#[test]
fn a_missing_attribute_makes_every_comparison_false() {
    for query in [
        "attributes.nope = 'x'",
        "attributes.nope <> 'x'",
        "attributes.nope != 1",
        "attributes.nope < 1",
        "attributes.nope >= 1",
        "attributes.nope IN ['x', 1]",
    ] {
        assert!(!holds(query), "{query}");
    }
    assert!(holds("attributes.nope = 'x' or attributes.floor = 3"));
}

#[test]
fn type_mismatches_are_false_not_converted() {
    assert!(!holds("attributes.room = 345"));
    assert!(!holds("attributes.room <> 345"));
    assert!(!holds("attributes.room > 1"));
    assert!(!holds("attributes.floor = '3'"));
    assert!(!holds("attributes.floor <> '3'"));
    assert!(!holds("attributes.on = 'true'"));
    assert!(!holds("attributes.on <> 'true'"));
    assert!(!holds("attributes.on = 1"));
}

#[test]
fn attribute_keys_are_case_sensitive() {
    assert!(!holds("attributes.Floor = 3"));
}

#[test]
fn impossible_comparisons_are_load_errors() {
    let e = error("attributes.floor < '3'");
    assert_eq!(
        e,
        QueryError::Unexpected {
            column: 20,
            expected: "an integer (orderings compare integers)",
            found: "a string".into(),
        }
    );
    assert_eq!(error_column("authenticationName = 5"), 22);
    assert_eq!(error_column("authenticationName > 'a'"), 20);
    assert_eq!(error_column("authenticationName IN ['a', 5]"), 29);
}

#[test]
fn errors_name_the_column_and_what_was_expected() {
    let e = error("attributes.floor = 3 and");
    assert_eq!(
        e.to_string(),
        "column 25: expected authenticationName, attributes.<key> or '(', found the end of the query"
    );
    assert_eq!(
        error("attributes.floor == 3").to_string(),
        "column 19: expected a quoted string or an integer, found '='"
    );
    assert_eq!(error_column("floor = 3"), 1);
    assert_eq!(error_column("attributes. = 3"), 1);
    assert_eq!(
        error_column("attributes.a-b = 3"),
        13,
        "'-' starts a number"
    );
    assert_eq!(error_column("attributes.floor 3"), 18);
    assert_eq!(
        error_column("attributes.floor = 3 attributes.room = 'x'"),
        22
    );
    assert_eq!(
        error_column("attributes.floor = 3 nand attributes.room = 'x'"),
        22
    );
    assert_eq!(error_column("(attributes.floor = 3"), 22);
    assert_eq!(error_column("attributes.floor = 3)"), 21);
    assert_eq!(error_column("attributes.floor IN 3"), 21);
    assert_eq!(error_column("attributes.floor IN [3 4]"), 24);
    assert_eq!(error_column("attributes.floor IN []"), 22);
    assert_eq!(
        error_column("attributes.floor NOT IN [3]"),
        18,
        "Azure has no NOT IN"
    );
    assert_eq!(error_column("attributes.room = 'abc"), 19);
    assert_eq!(error_column("attributes.floor = -"), 20);
    assert_eq!(error_column("attributes.floor = 99999999999999999999"), 20);
    assert_eq!(error_column("attributes.floor = 3 & x"), 22);
    assert_eq!(error_column(""), 1);
    assert_eq!(error_column("   "), 4);
}

#[test]
fn columns_count_characters_not_bytes() {
    // 'ä' and '☃' are two and three bytes.
    assert_eq!(error_column("attributes.room = 'ä☃' oops"), 24);
}

#[test]
fn length_and_depth_are_bounded() {
    let long = format!("attributes.room = '{}'", "x".repeat(MAX_QUERY_BYTES));
    assert!(matches!(
        Query::parse(&long),
        Err(QueryError::TooLong { .. })
    ));

    let nested = |n: usize| format!("{}attributes.floor = 3{}", "(".repeat(n), ")".repeat(n));
    assert!(holds(&nested(MAX_DEPTH)));
    assert_eq!(
        Query::parse(&nested(MAX_DEPTH + 1)),
        Err(QueryError::TooDeep {
            column: MAX_DEPTH + 1
        })
    );
}

#[test]
fn long_flat_chains_do_not_recurse() {
    let chain = vec!["attributes.floor = 3"; 75].join(" and ");
    assert!(chain.len() < MAX_QUERY_BYTES);
    assert!(holds(&chain));
}

#[test]
fn azure_sample_queries_parse() {
    for query in [
        "(attributes.sensors = \"motion\" or attributes.sensors = \"humidity\") or attributes.type = \"home-sensors\"",
        "attributes.sensors IN [\"motion\", \"humidity\", \"temperature\"] and attributes.floor <= 5",
        "authenticationName IN ['client1', 'client2']",
        "attributes.b IN ['a', 'b', 'c']",
    ] {
        Query::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    }
}
