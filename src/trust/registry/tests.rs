use super::*;

// SHA-256 of "test" and of "foo": real 64-digit values, as in the SPEC example.
const T1: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const T2: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const SHA1: &str = "A94A8FE5CCB19BA61C4C0873D391E987982FBBD3";

fn load(json: &str) -> Result<Registry, RegistryError> {
    Registry::from_json(json.as_bytes(), Path::new("clients.json"))
}

fn refused(json: &str) -> String {
    load(json)
        .expect_err("registry should be refused")
        .to_string()
}

fn spec_example() -> String {
    format!(
        r#"[
  {{ "name": "sensor-17",
"properties": {{
  "authenticationName": "sensor-17.plant.example.com",
  "clientCertificateAuthentication": {{ "validationScheme": "DnsMatchesAuthenticationName" }},
  "state": "Enabled",
  "attributes": {{ "room": "345", "floor": 12, "types": ["Fan", "Light"] }},
  "description": "line 3 vibration sensor" }} }},
  {{ "name": "legacy-gw",
"properties": {{
  "clientCertificateAuthentication": {{
    "validationScheme": "ThumbprintMatch",
    "allowedThumbprints": ["{T1}", "{T2}"] }} }} }}
]"#
    )
}

#[test]
fn test_thumbprints_are_what_they_claim() {
    assert_eq!(Thumbprint::of(b"test").to_string(), T1);
    assert_eq!(Thumbprint::of(b"foo").to_string(), T2);
}

#[test]
fn spec_example_parses() {
    let registry = load(&spec_example()).unwrap();
    assert_eq!(registry.len(), 2);
    let sensor = registry.get("sensor-17.plant.example.com").unwrap();
    assert_eq!(sensor.name, "sensor-17");
    assert_eq!(sensor.scheme, Scheme::DnsMatchesAuthenticationName);
    assert_eq!(sensor.state, State::Enabled);
    assert!(sensor.thumbprints.is_empty());
    assert_eq!(sensor.description, Some("line 3 vibration sensor"));
    assert_eq!(
        sensor.attributes.get("room").unwrap(),
        AttributeValue::String("345".into())
    );
    assert_eq!(
        sensor.attributes.get("floor").unwrap(),
        AttributeValue::Int(12)
    );
    assert_eq!(
        sensor.attributes.get("types").unwrap(),
        AttributeValue::Strings(vec!["Fan".into(), "Light".into()])
    );
    let gw = registry.get("legacy-gw").unwrap();
    assert_eq!(gw.scheme, Scheme::ThumbprintMatch);
    assert_eq!(gw.thumbprints, [T1.parse().unwrap(), T2.parse().unwrap()]);
    assert!(registry.has_thumbprint(&Thumbprint::of(b"foo")));
    assert!(!registry.has_thumbprint(&Thumbprint::of(b"bar")));
}

#[test]
fn arm_list_shape_is_accepted() {
    let json = format!(r#"{{"value": {}, "nextLink": null}}"#, spec_example());
    assert_eq!(load(&json).unwrap().len(), 2);
}

#[test]
fn azure_rest_entry_extra_fields_are_ignored() {
    let json = format!(
        r#"{{"value": [{{
  "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.EventGrid/namespaces/ns1/clients/gw-7",
  "name": "gw-7",
  "type": "Microsoft.EventGrid/namespaces/clients",
  "systemData": {{
"createdBy": "ops@example.com", "createdByType": "User",
"createdAt": "2025-03-01T10:00:00.0000000Z",
"lastModifiedBy": "ops@example.com", "lastModifiedByType": "User",
"lastModifiedAt": "2025-03-02T10:00:00.0000000Z" }},
  "properties": {{
"description": null,
"authenticationName": "GW-7",
"clientCertificateAuthentication": {{
  "validationScheme": "ThumbprintMatch",
  "allowedThumbprints": ["{}"] }},
"state": "Disabled",
"attributes": {{}},
"provisioningState": "Succeeded",
"futureSetting": {{ "anything": [1, 2, 3] }} }} }}]}}"#,
        T1.to_uppercase()
    );
    let registry = load(&json).unwrap();
    let gw = registry.get("gw-7").unwrap();
    assert_eq!(gw.authentication_name, "GW-7");
    assert_eq!(gw.state, State::Disabled);
    assert_eq!(gw.description, None);
    assert_eq!(gw.thumbprints[0].to_string(), T1);
}

#[test]
fn az_cli_flattened_entry_is_read() {
    // `az eventgrid namespace client list` flattens `properties` into the entry.
    let json = r#"[{
  "attributes": { "room": "345", "floor": 5 },
  "authenticationName": "client1-authn-ID",
  "clientCertificateAuthentication": { "validationScheme": "SubjectMatchesAuthenticationName" },
  "description": "This is a test client",
  "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.EventGrid/namespaces/ns1/clients/client1",
  "name": "client1",
  "provisioningState": "Succeeded",
  "resourceGroup": "rg",
  "state": "Enabled",
  "systemData": { "createdAt": "2025-03-01T10:00:00+00:00", "createdByType": "User" },
  "type": "Microsoft.EventGrid/namespaces/clients"
}]"#;
    let registry = load(json).unwrap();
    let client = registry.get("client1-authn-id").unwrap();
    assert_eq!(client.name, "client1");
    assert_eq!(client.authentication_name, "client1-authn-ID");
    assert_eq!(
        client.attributes.get("floor").unwrap(),
        AttributeValue::Int(5)
    );
}

#[test]
fn flattened_field_errors_name_the_field_without_properties() {
    let err = refused(r#"[{"name": "c", "state": "On"}]"#);
    assert_eq!(
        err,
        r#"clients.json: entry 0 ("c"): state: expected "Enabled" or "Disabled", got "On""#
    );
}

#[test]
fn both_shapes_in_one_entry_are_refused() {
    let err = refused(
        r#"[{"name": "c", "authenticationName": "x", "properties": {"authenticationName": "y"}}]"#,
    );
    assert!(
        err.contains(r#"entry 0 ("c"): authenticationName: given both"#),
        "{err}"
    );
}

#[test]
fn defaults_apply_when_properties_are_absent_or_empty() {
    for entry in [
        r#"{"name": "dev-1"}"#,
        r#"{"name": "dev-1", "properties": {}}"#,
        r#"{"name": "dev-1", "properties": null}"#,
        r#"{"name": "dev-1", "properties": {"clientCertificateAuthentication": {}, "state": null}}"#,
    ] {
        let registry = load(&format!("[{entry}]")).unwrap();
        let client = registry.clients().get(0).unwrap();
        assert_eq!(client.authentication_name, "dev-1", "{entry}");
        assert_eq!(client.scheme, Scheme::SubjectMatchesAuthenticationName);
        assert_eq!(client.state, State::Enabled);
        assert!(client.thumbprints.is_empty() && client.attributes.is_empty());
        assert_eq!(client.description, None);
    }
}

#[test]
fn lookup_ignores_case_and_keeps_original_case() {
    let registry = load(
        r#"[{"name": "a", "properties": {"authenticationName": "Sensor-17.Plant.Example.COM"}},
            {"name": "b", "properties": {"authenticationName": "ÄRGER"}}]"#,
    )
    .unwrap();
    let client = registry.get("sensor-17.plant.example.com").unwrap();
    assert_eq!(client.authentication_name, "Sensor-17.Plant.Example.COM");
    assert_eq!(
        registry.get("SENSOR-17.PLANT.EXAMPLE.COM").unwrap().name,
        "a"
    );
    // SPEC §7: only ASCII letters fold.
    assert_eq!(registry.get("ÄRGER").unwrap().name, "b");
    assert!(registry.get("ärger").is_none());
    assert!(registry.get("sensor-18.plant.example.com").is_none());
    assert!(registry.get("").is_none());
}

#[test]
fn lookup_folds_ascii_case_only() {
    let registry = load(
        r#"[{"name": "a", "properties": {"authenticationName": "kiosk"}},
            {"name": "b", "properties": {"authenticationName": "ÄRGER"}}]"#,
    )
    .unwrap();
    assert_eq!(registry.get("KIOSK").unwrap().name, "a");
    assert!(registry.get("\u{212A}iosk").is_none());
    assert!(registry.get("ärger").is_none());
    assert_eq!(registry.get("ÄRGER").unwrap().name, "b");
}

#[test]
fn names_differing_beyond_ascii_case_are_distinct_clients() {
    let registry = load(
        r#"[{"name": "a", "properties": {"authenticationName": "kiosk"}},
            {"name": "b", "properties": {"authenticationName": "\u212Aiosk"}},
            {"name": "\u212A"}, {"name": "k"}]"#,
    )
    .unwrap();
    assert_eq!(registry.get("\u{212A}iosk").unwrap().name, "b");
    assert_eq!(registry.len(), 4);
}

#[test]
fn ip_literal_names_are_looked_up_as_addresses() {
    let registry = load(
        r#"[{"name": "a", "properties": {"authenticationName": "2001:0db8:0:0:0:0:0:7"}},
            {"name": "b", "properties": {"authenticationName": "10.0.0.7"}}]"#,
    )
    .unwrap();
    assert_eq!(registry.get("2001:db8::7").unwrap().name, "a");
    assert_eq!(registry.get("2001:DB8:0::7").unwrap().name, "a");
    assert_eq!(registry.get("10.0.0.7").unwrap().name, "b");
    assert!(registry.get("2001:db8::8").is_none());
}

#[test]
fn ip_literal_names_equal_as_addresses_are_refused() {
    let err = refused(
        r#"[{"name": "a", "properties": {"authenticationName": "2001:db8::7"}},
            {"name": "b", "properties": {"authenticationName": "2001:0db8:0:0:0:0:0:7"}}]"#,
    );
    assert!(
        err.starts_with(
            r#"clients.json: entry 1 ("b"): properties.authenticationName: "2001:0db8:0:0:0:0:0:7" is already used by entry 0 ("a")"#
        ),
        "{err}"
    );
}

#[test]
fn authentication_names_equal_ignoring_case_are_refused_naming_both_entries() {
    let err = refused(
        r#"[{"name": "a", "properties": {"authenticationName": "Dev-1"}},
            {"name": "b"},
            {"name": "c", "properties": {"authenticationName": "dEV-1"}}]"#,
    );
    assert_eq!(
        err,
        r#"clients.json: entry 2 ("c"): properties.authenticationName: "dEV-1" is already used by entry 0 ("a") (compared ignoring case)"#
    );
}

#[test]
fn defaulted_authentication_name_collides_too() {
    let err = refused(
        r#"[{"name": "x", "properties": {"authenticationName": "dev-1"}}, {"name": "DEV-1"}]"#,
    );
    assert!(
        err.contains(
            r#"entry 1 ("DEV-1"): authenticationName: "DEV-1" is already used by entry 0 ("x")"#
        ),
        "{err}"
    );
}

#[test]
fn duplicate_names_are_refused() {
    let err = refused(
        r#"[{"name": "gw", "properties": {"authenticationName": "one"}},
            {"name": "gw", "properties": {"authenticationName": "two"}}]"#,
    );
    assert!(
        err.starts_with(
            r#"clients.json: entry 1 ("gw"): name: "gw" is already used by entry 0 ("gw")"#
        ),
        "{err}"
    );
}

#[test]
fn authentication_name_length_counts_characters() {
    let ok = "é".repeat(128); // 256 bytes, 128 characters
    let registry = load(&format!(
        r#"[{{"name": "a", "properties": {{"authenticationName": "{ok}"}}}}]"#
    ))
    .unwrap();
    assert!(registry.get(&ok).is_some());

    let long = "é".repeat(129);
    let err = refused(&format!(
        r#"[{{"name": "a", "properties": {{"authenticationName": "{long}"}}}}]"#
    ));
    assert_eq!(
        err,
        r#"clients.json: entry 0 ("a"): properties.authenticationName: must be 1 to 128 characters, got 129"#
    );
    let err = refused(r#"[{"name": "a", "properties": {"authenticationName": ""}}]"#);
    assert!(
        err.ends_with("properties.authenticationName: must be 1 to 128 characters, got 0"),
        "{err}"
    );

    let long_name = "n".repeat(129);
    let err = refused(&format!(r#"[{{"name": "{long_name}"}}]"#));
    assert!(
        err.contains("authenticationName (defaulted from name): must be 1 to 128"),
        "{err}"
    );
}

#[test]
fn unknown_validation_scheme_lists_the_valid_ones() {
    let err = refused(
        r#"[{"name": "a", "properties": {"clientCertificateAuthentication": {"validationScheme": "thumbprintMatch"}}}]"#,
    );
    assert_eq!(
        err,
        "clients.json: entry 0 (\"a\"): properties.clientCertificateAuthentication.validationScheme: \
         unknown validation scheme \"thumbprintMatch\"; expected one of SubjectMatchesAuthenticationName, \
         DnsMatchesAuthenticationName, UriMatchesAuthenticationName, IpMatchesAuthenticationName, \
         EmailMatchesAuthenticationName, ThumbprintMatch"
    );
}

fn thumbprint_client(scheme: &str, thumbprints: &str) -> String {
    format!(
        r#"[{{"name": "sensor-17", "properties": {{"clientCertificateAuthentication":
            {{"validationScheme": "{scheme}", "allowedThumbprints": {thumbprints}}}}}}}]"#
    )
}

#[test]
fn sha1_thumbprint_is_refused_with_its_position() {
    let err = refused(&thumbprint_client(
        "ThumbprintMatch",
        &format!(r#"["{T1}", "{SHA1}"]"#),
    ));
    assert_eq!(
        err,
        "clients.json: entry 0 (\"sensor-17\"): properties.clientCertificateAuthentication.allowedThumbprints[1]: \
         looks like a SHA-1 thumbprint; mqttgate needs SHA-256 (64 hex digits)"
    );
}

#[test]
fn malformed_thumbprints_are_refused() {
    let err = refused(&thumbprint_client("ThumbprintMatch", r#"["not-hex"]"#));
    assert!(err.contains(r#"entry 0 ("sensor-17"): properties.clientCertificateAuthentication.allowedThumbprints[0]: 'n' is not"#), "{err}");
    let err = refused(&thumbprint_client("ThumbprintMatch", "[42]"));
    assert!(
        err.ends_with("allowedThumbprints[0]: expected a string, got a number"),
        "{err}"
    );
    let err = refused(&thumbprint_client("ThumbprintMatch", &format!(r#""{T1}""#)));
    assert!(
        err.ends_with("allowedThumbprints: expected an array, got a string"),
        "{err}"
    );
}

#[test]
fn thumbprint_match_needs_one_or_two_thumbprints() {
    let missing = r#"[{"name": "gw", "properties": {"clientCertificateAuthentication": {"validationScheme": "ThumbprintMatch"}}}]"#;
    assert!(refused(missing).ends_with(r#"entry 0 ("gw"): properties.clientCertificateAuthentication.allowedThumbprints: required with ThumbprintMatch"#));
    assert!(refused(&thumbprint_client("ThumbprintMatch", "[]"))
        .ends_with("must hold 1 or 2 thumbprints (primary, secondary), got 0"));
    let three = format!(r#"["{T1}", "{T2}", "{}"]"#, Thumbprint::of(b"bar"));
    assert!(refused(&thumbprint_client("ThumbprintMatch", &three)).ends_with("got 3"));
    let one = load(&thumbprint_client(
        "ThumbprintMatch",
        &format!(r#"["{T2}"]"#),
    ))
    .unwrap();
    assert_eq!(one.clients().get(0).unwrap().thumbprints.len(), 1);
}

#[test]
fn thumbprints_are_forbidden_with_other_schemes() {
    let err = refused(&thumbprint_client(
        "DnsMatchesAuthenticationName",
        &format!(r#"["{T1}"]"#),
    ));
    assert!(err.starts_with(r#"clients.json: entry 0 ("sensor-17"): properties.clientCertificateAuthentication.allowedThumbprints: not allowed with DnsMatchesAuthenticationName"#), "{err}");
    // An empty or null list grants nothing; Azure may write either.
    for empty in ["[]", "null"] {
        let registry = load(&thumbprint_client("DnsMatchesAuthenticationName", empty)).unwrap();
        assert!(registry.clients().get(0).unwrap().thumbprints.is_empty());
    }
}

#[test]
fn same_thumbprint_twice_on_one_client_is_refused() {
    let colons: Vec<&str> = (0..32).map(|i| &T1[2 * i..2 * i + 2]).collect();
    let err = refused(&thumbprint_client(
        "ThumbprintMatch",
        &format!(r#"["{T1}", "{}"]"#, colons.join(":")),
    ));
    assert!(
        err.ends_with("allowedThumbprints[1]: repeats allowedThumbprints[0]"),
        "{err}"
    );
}

#[test]
fn same_thumbprint_on_several_clients_is_allowed() {
    let json = format!(
        r#"[{{"name": "a", "properties": {{"clientCertificateAuthentication": {{"validationScheme": "ThumbprintMatch", "allowedThumbprints": ["{T1}"]}}}}}},
            {{"name": "b", "properties": {{"clientCertificateAuthentication": {{"validationScheme": "ThumbprintMatch", "allowedThumbprints": ["{T2}", "{T1}"]}}}}}}]"#
    );
    let registry = load(&json).unwrap();
    assert_eq!(registry.len(), 2);
    assert!(registry.has_thumbprint(&T1.parse().unwrap()));
}

#[test]
fn state_must_be_enabled_or_disabled_exactly() {
    let disabled = load(r#"[{"name": "a", "properties": {"state": "Disabled"}}]"#).unwrap();
    assert_eq!(disabled.clients().get(0).unwrap().state, State::Disabled);
    let err = refused(r#"[{"name": "a", "properties": {"state": "enabled"}}]"#);
    assert_eq!(
        err,
        r#"clients.json: entry 0 ("a"): properties.state: expected "Enabled" or "Disabled", got "enabled""#
    );
    let err = refused(r#"[{"name": "a", "properties": {"state": true}}]"#);
    assert!(
        err.ends_with("properties.state: expected a string, got a boolean"),
        "{err}"
    );
}

#[test]
fn attribute_values_of_other_types_are_refused() {
    let ok = load(
        r#"[{"name": "a", "properties": {"attributes": {"On": true, "n_1": -3, "tags": []}}}]"#,
    )
    .unwrap();
    let attrs = ok.clients().get(0).unwrap().attributes;
    assert_eq!(attrs.get("On").unwrap(), AttributeValue::Bool(true));
    assert_eq!(attrs.get("n_1").unwrap(), AttributeValue::Int(-3));
    assert_eq!(attrs.get("tags").unwrap(), AttributeValue::Strings(vec![]));
    for bad in [
        r#"1.5"#,
        "null",
        r#"{"x": 1}"#,
        r#"["a", 1]"#,
        "18446744073709551615",
    ] {
        let err = refused(&format!(
            r#"[{{"name": "a", "properties": {{"attributes": {{"k": {bad}}}}}}}]"#
        ));
        assert_eq!(
            err,
            r#"clients.json: entry 0 ("a"): properties.attributes["k"]: value must be an integer, a boolean, a string or an array of strings"#,
            "{bad}"
        );
    }
}

#[test]
fn attributes_read_back_as_given_in_key_order() {
    let long = "x".repeat(300); // a length that takes two bytes to encode
    let json = format!(
        r#"[{{"name": "a", "properties": {{"attributes": {{"z": {}, "a": {}, "s": "{long}",
            "u": "Ärger ☃", "e": "", "t": ["", "{long}", "b"], "b": false}}}}}},
            {{"name": "b"}}]"#,
        i64::MIN,
        i64::MAX
    );
    let registry = load(&json).unwrap();
    let attrs = registry.clients().get(0).unwrap().attributes;
    let read: Vec<(&str, AttributeValue)> = attrs.iter().collect();
    assert_eq!(
        read,
        [
            ("a", AttributeValue::Int(i64::MAX)),
            ("b", AttributeValue::Bool(false)),
            ("e", AttributeValue::String(String::new())),
            ("s", AttributeValue::String(long.clone())),
            (
                "t",
                AttributeValue::Strings(vec![String::new(), long.clone(), "b".into()])
            ),
            ("u", AttributeValue::String("Ärger ☃".into())),
            ("z", AttributeValue::Int(i64::MIN)),
        ]
    );
    assert_eq!(attrs.len(), 7);
    assert_eq!(attrs.get("missing"), None);
    let none = registry.clients().get(1).unwrap().attributes;
    assert!(none.is_empty());
    assert_eq!(none.iter().count(), 0);
}

#[test]
fn an_empty_description_is_not_an_absent_one() {
    let registry = load(
        r#"[{"name": "a", "properties": {"description": ""}},
            {"name": "b", "properties": {"description": null}},
            {"name": "c", "properties": {"description": "d"}}]"#,
    )
    .unwrap();
    let descriptions: Vec<Option<&str>> =
        registry.clients().iter().map(|c| c.description).collect();
    assert_eq!(descriptions, [Some(""), None, Some("d")]);
    let c = registry.get("C").unwrap();
    assert_eq!((c.name, c.authentication_name), ("c", "c"));
}

#[test]
fn attribute_keys_must_be_word_characters() {
    for key in ["room-no", "", "räum", "a b"] {
        let err = refused(&format!(
            r#"[{{"name": "a", "properties": {{"attributes": {{"{key}": "1"}}}}}}]"#
        ));
        assert!(
            err.ends_with(&format!(
                r#"properties.attributes[{key:?}]: key must match [A-Za-z0-9_]+"#
            )),
            "{err}"
        );
    }
    let err = refused(r#"[{"name": "a", "properties": {"attributes": ["x"]}}]"#);
    assert!(
        err.ends_with("properties.attributes: expected an object, got an array"),
        "{err}"
    );
}

#[test]
fn name_is_required_and_non_empty() {
    assert_eq!(
        refused(r#"[{"properties": {}}]"#),
        "clients.json: entry 0: name: required"
    );
    assert_eq!(
        refused(r#"[{"name": "a"}, {"name": ""}]"#),
        "clients.json: entry 1: name: must not be empty"
    );
    assert_eq!(
        refused(r#"[{"name": 7}]"#),
        "clients.json: entry 0: name: expected a string, got a number"
    );
    assert_eq!(
        refused(r#"["a"]"#),
        "clients.json: entry 0: expected an object, got a string"
    );
}

#[test]
fn description_and_properties_types_are_checked() {
    let err = refused(r#"[{"name": "a", "properties": {"description": 5}}]"#);
    assert!(
        err.ends_with("properties.description: expected a string, got a number"),
        "{err}"
    );
    let err = refused(r#"[{"name": "a", "properties": "x"}]"#);
    assert!(
        err.ends_with(r#"entry 0 ("a"): properties: expected an object, got a string"#),
        "{err}"
    );
    let err = refused(
        r#"[{"name": "a", "properties": {"clientCertificateAuthentication": "ThumbprintMatch"}}]"#,
    );
    assert!(
        err.ends_with(
            "properties.clientCertificateAuthentication: expected an object, got a string"
        ),
        "{err}"
    );
}

#[test]
fn other_document_shapes_are_refused() {
    let shape =
        "clients.json: expected a JSON array of clients or an object with a \"value\" array";
    for doc in [
        r#"{}"#,
        r#"{"value": {}}"#,
        r#""clients""#,
        "3",
        "null",
        r#"{"clients": []}"#,
    ] {
        assert_eq!(refused(doc), shape, "{doc}");
    }
    assert!(load("[]").unwrap().is_empty());
    assert!(load(r#"{"value": []}"#).unwrap().is_empty());
}

#[test]
fn invalid_json_error_has_line_and_column() {
    let err = refused("[\n  {\"name\": \"a\",}\n]");
    assert!(err.starts_with("clients.json: invalid JSON: "), "{err}");
    assert!(err.contains("line 2 column"), "{err}");
}

#[test]
fn byte_order_marks_are_handled() {
    let mut with_bom = b"\xef\xbb\xbf".to_vec();
    with_bom.extend_from_slice(br#"[{"name": "a"}]"#);
    assert_eq!(
        Registry::from_json(&with_bom, Path::new("c.json"))
            .unwrap()
            .len(),
        1
    );
    let utf16 = b"\xff\xfe[\0]\0";
    let err = Registry::from_json(utf16, Path::new("c.json")).unwrap_err();
    assert_eq!(err.to_string(), "c.json: file is UTF-16; save it as UTF-8");
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let tmp = crate::trust::cert::tests::TempDir::new("registry-load");
    let path = tmp.path("clients.json");
    std::fs::write(&path, spec_example()).unwrap();
    assert_eq!(Registry::load(&path, DEFAULT_MAX_BYTES).unwrap().len(), 2);
    let missing = tmp.path("absent.json");
    let err = Registry::load(&missing, DEFAULT_MAX_BYTES).unwrap_err();
    assert!(err
        .to_string()
        .starts_with(&format!("{}: cannot read: ", missing.display())));
}

#[test]
fn file_over_max_bytes_is_refused_naming_the_file_and_the_field() {
    let tmp = crate::trust::cert::tests::TempDir::new("registry-cap");
    let path = tmp.path("clients.json");
    std::fs::write(&path, spec_example()).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(Registry::load(&path, size).unwrap().len(), 2);
    let err = Registry::load(&path, size - 1).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: file is {size} bytes, over registry.max_bytes ({}); raise it in the configuration if the registry is really this large",
            path.display(),
            size - 1
        )
    );
}

#[test]
fn an_entry_error_comes_from_the_stream_with_its_position() {
    // The entry after the bad one is never parsed; the error still names entry 1.
    let err = refused(r#"{"value": [{"name": "a"}, {"name": "b", "state": 1}, {"name": "#);
    assert_eq!(
        err,
        r#"clients.json: entry 1 ("b"): state: expected a string, got a number"#
    );
    let err = refused(r#"{"value": [{"name": "a"}], "nextLink": "x", "id": [1, {"a": 2}]} x"#);
    assert!(
        err.starts_with("clients.json: invalid JSON: trailing"),
        "{err}"
    );
}

#[test]
fn scheme_spellings_and_labels() {
    let labels: Vec<&str> = Scheme::ALL.iter().map(|s| s.label()).collect();
    assert_eq!(
        labels,
        ["subject", "dns", "uri", "ip", "email", "thumbprint"]
    );
    for scheme in Scheme::ALL {
        assert_eq!(Scheme::parse(scheme.as_str()), Some(scheme));
        assert_eq!(scheme.to_string(), scheme.as_str());
    }
    assert_eq!(Scheme::parse("dnsmatchesauthenticationname"), None);
}

#[test]
fn lookup_in_a_100000_client_registry() {
    let mut json = String::from("[");
    for i in 0..100_000 {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"name":"c{i}","properties":{{"authenticationName":"Device-{i}.example.com"}}}}"#
        ));
    }
    json.push(']');
    let registry = load(&json).unwrap();
    assert_eq!(registry.len(), 100_000);
    for i in (0..100_000).step_by(997) {
        let client = registry.get(&format!("DEVICE-{i}.EXAMPLE.COM")).unwrap();
        assert_eq!(client.name, format!("c{i}"));
    }
    assert!(registry.get("device-100000.example.com").is_none());
}
