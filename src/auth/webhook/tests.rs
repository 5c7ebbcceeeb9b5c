use super::*;
use rustls::pki_types::pem::PemObject;

fn cert(cn: &str) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.self_signed(&key).unwrap().der().clone()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[test]
fn request_has_azures_fields_with_base64_and_pem() {
    let chain = [cert("leaf"), cert("intermediate")];
    let r = Request {
        client_id: "dev-1",
        user_name: Some("alice"),
        password: Some(b"p\xe4ss\x00"),
        authentication_method: Some("CUSTOM"),
        authentication_data: Some(&[1, 2, 3]),
        client_certificate: Some(&chain),
        client_certificate_chain: Some(&chain),
    };
    let v = json(&r.body());
    assert_eq!(v["clientId"], "dev-1");
    assert_eq!(v["userName"], "alice");
    assert_eq!(v["password"], "cORzcwA=");
    assert_eq!(v["authenticationMethod"], "CUSTOM");
    assert_eq!(v["authenticationData"], "AQID");
    let leaf = v["clientCertificate"].as_str().unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap(),
        chain[0]
    );
    let pems: Vec<_> =
        CertificateDer::pem_slice_iter(v["clientCertificateChain"].as_str().unwrap().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    assert_eq!(pems, chain.to_vec());
    assert!(leaf.lines().all(|l| l.len() <= 64));
}

#[test]
fn absent_fields_are_left_out_and_equal_requests_have_equal_bodies() {
    let r = |user| Request {
        client_id: "",
        user_name: user,
        password: None,
        authentication_method: None,
        authentication_data: None,
        client_certificate: None,
        client_certificate_chain: None,
    };
    assert_eq!(r(None).body(), br#"{"clientId":""}"#);
    assert_eq!(
        cache_key(&r(Some("a")).body()),
        cache_key(&r(Some("a")).body())
    );
    assert_ne!(
        cache_key(&r(Some("a")).body()),
        cache_key(&r(Some("b")).body())
    );
}

#[test]
fn allow_answer_becomes_an_identity_until_its_expiration() {
    let a = Answer::parse(
        br#"{"decision":"allow","clientAuthenticationName":"dev-1","expiration":2000,
             "attributes":{"zone":"a","floor":3,"groups":["x","y"]}}"#,
        1000,
    );
    let id = decide(&a, 1500).unwrap();
    assert_eq!(id.authentication_name, "dev-1");
    assert_eq!(id.method, Method::Webhook);
    assert_eq!(id.source, IdentitySource::Webhook);
    assert_eq!(id.valid_until, 2000);
    assert_eq!(
        id.attributes,
        vec![
            ("floor".into(), AttributeValue::Int(3)),
            (
                "groups".into(),
                AttributeValue::Strings(vec!["x".into(), "y".into()])
            ),
            ("zone".into(), AttributeValue::String("a".into())),
        ]
    );
    assert_eq!(
        decide(&a, 2000).unwrap_err().reason,
        Denied::Webhook(WebhookDenied::Expired)
    );
    assert_eq!(a.cache_until(), Some(2000));
}

#[test]
fn allow_without_expiration_holds_for_the_default_and_is_not_cached() {
    let a = Answer::parse(
        br#"{"decision":"Allow","clientAuthenticationName":"dev-1"}"#,
        1000,
    );
    assert_eq!(
        decide(&a, 1001).unwrap().valid_until,
        1000 + DEFAULT_VALIDITY_SECONDS
    );
    assert_eq!(a.cache_until(), None);
}

#[test]
fn deny_answer_denies_and_keeps_a_bounded_reason() {
    let long = "r".repeat(1000);
    let a = Answer::parse(
        format!(r#"{{"decision":"deny","errorReason":"{long}"}}"#).as_bytes(),
        0,
    );
    match &a {
        Answer::Deny { reason: Some(r) } => assert_eq!(r.len(), 256),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decide(&a, 0).unwrap_err().reason,
        Denied::Webhook(WebhookDenied::Deny)
    );
    assert_eq!(a.cache_until(), None);
    assert_eq!(
        Answer::parse(br#"{"decision":"deny"}"#, 0),
        Answer::Deny { reason: None }
    );
}

#[test]
fn anything_but_azures_shape_is_malformed_and_denies() {
    let cases: [&[u8]; 14] = [
        b"",
        b"null",
        b"[]",
        b"allow",
        br#"{}"#,
        br#"{"decision":"maybe"}"#,
        br#"{"decision":"allow"}"#,
        br#"{"decision":"allow","clientAuthenticationName":""}"#,
        br#"{"decision":"allow","clientAuthenticationName":"a\nb"}"#,
        br#"{"decision":"allow","clientAuthenticationName":"a","expiration":"soon"}"#,
        br#"{"decision":"allow","clientAuthenticationName":"a","expiration":1.5}"#,
        br#"{"decision":"allow","clientAuthenticationName":"a","attributes":{"n":4294967296}}"#,
        br#"{"decision":"allow","clientAuthenticationName":"a","attributes":{"l":[1]}}"#,
        br#"{"decision":"allow","clientAuthenticationName":"a","extra":1}"#,
    ];
    for body in cases {
        let a = Answer::parse(body, 0);
        assert!(
            matches!(a, Answer::Malformed(_)),
            "{}: {a:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            decide(&a, 0).unwrap_err().reason,
            Denied::Webhook(WebhookDenied::Malformed)
        );
    }
    let name = "n".repeat(MAX_NAME_CHARS + 1);
    let body = format!(r#"{{"decision":"allow","clientAuthenticationName":"{name}"}}"#);
    assert!(matches!(
        Answer::parse(body.as_bytes(), 0),
        Answer::Malformed(_)
    ));
    let huge = vec![b' '; MAX_ANSWER_BYTES + 1];
    assert_eq!(
        Answer::parse(&huge, 0),
        Answer::Malformed("answer too large")
    );
    // Duplicate keys could smuggle a second decision past a lenient reader.
    assert!(matches!(
        Answer::parse(br#"{"decision":"deny","decision":"allow"}"#, 0),
        Answer::Malformed(_)
    ));
}

fn allow_until(until: i64) -> Arc<Answer> {
    Arc::new(Answer::Allow {
        name: "a".into(),
        attributes: vec![],
        expiration: Some(until),
        received_at: 0,
    })
}

#[test]
fn cache_honours_expiration_and_keeps_only_reusable_answers() {
    let mut c = Cache::new(10);
    c.insert([1; 32], allow_until(100), 50);
    assert!(c.get(&[1; 32], 99).is_some());
    assert!(c.get(&[1; 32], 100).is_none());
    assert!(c.is_empty(), "an expired entry is dropped when met");
    c.insert([2; 32], Arc::new(Answer::Deny { reason: None }), 0);
    c.insert([3; 32], Arc::new(Answer::Malformed("x")), 0);
    c.insert([4; 32], allow_until(10), 10);
    assert!(c.is_empty());
}

#[test]
fn full_cache_drops_expired_then_soonest_expiring() {
    let mut c = Cache::new(2);
    c.insert([1; 32], allow_until(20), 0);
    c.insert([2; 32], allow_until(30), 0);
    c.insert([3; 32], allow_until(40), 0);
    assert_eq!(c.len(), 2);
    assert!(c.get(&[1; 32], 0).is_none());
    assert!(c.get(&[2; 32], 0).is_some() && c.get(&[3; 32], 0).is_some());
    c.insert([4; 32], allow_until(50), 35);
    assert!(c.get(&[3; 32], 35).is_some() && c.get(&[4; 32], 35).is_some());
    assert_eq!(Cache::new(0).len(), 0);
}

#[test]
fn route_follows_spec_9_and_the_decides_setting() {
    let never = || -> bool { panic!("the registry is only asked in unregistered mode") };
    let cert = Presented {
        certificate: true,
        jwt: false,
    };
    let bare = Presented {
        certificate: false,
        jwt: false,
    };
    assert_eq!(route(None, cert, never), Route::Elsewhere);
    assert_eq!(route(None, bare, never), Route::Elsewhere);
    for d in [Decides::NoCertificate, Decides::Unregistered, Decides::All] {
        assert_eq!(route(Some(d), bare, never), Route::Webhook, "{d:?}");
        // JWT's, with or without a certificate, whatever `decides` says.
        for certificate in [true, false] {
            let jwt = Presented {
                certificate,
                jwt: true,
            };
            assert_eq!(route(Some(d), jwt, never), Route::Elsewhere, "{d:?}");
        }
    }
    assert_eq!(
        route(Some(Decides::NoCertificate), cert, never),
        Route::Elsewhere
    );
    assert_eq!(route(Some(Decides::All), cert, never), Route::Webhook);
    assert_eq!(
        route(Some(Decides::Unregistered), cert, || true),
        Route::Elsewhere
    );
    assert_eq!(
        route(Some(Decides::Unregistered), cert, || false),
        Route::Webhook
    );
}

#[test]
fn registered_finds_the_name_as_the_registry_decision_does() {
    let reg = Registry::from_json(
        br#"[{"name":"leaf","properties":{"state":"Disabled"}}]"#,
        std::path::Path::new("clients.json"),
    )
    .unwrap();
    let policy = Policy {
        name_sources: vec![crate::auth::NameSource::Subject],
        subject_match: crate::auth::SubjectMatch::CommonName,
    };
    let c = cert("leaf");
    assert!(
        registered(&c, None, &reg, &policy),
        "a disabled client is still the registry's"
    );
    assert!(registered(&c, Some("LEAF"), &reg, &policy));
    assert!(!registered(&c, Some("other"), &reg, &policy));
    assert!(!registered(&cert("stranger"), None, &reg, &policy));
    assert!(!registered(
        b"not a certificate",
        Some("leaf"),
        &reg,
        &policy
    ));
}
