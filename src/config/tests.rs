use super::*;

const MINIMAL: &str = r#"
[tls]
certificate = "server.pem"
private_key = "server.key"
ca_certificates = ["ca.pem"]
[registry]
clients = "clients.json"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/mqttgate/mqttgate.toml"))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(c.upstream, "127.0.0.1:1883");
    assert_eq!(c.username_mode, UsernameMode::Rewrite);
    assert_eq!(c.client_id_mode, ClientIdMode::PerIdentity);
    assert_eq!(
        c.sessions,
        SessionLimits {
            max_per_authentication_name: 1,
            connects_per_second: 1.0,
            max_session_expiry: 3600,
        }
    );
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.dial_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_connect_bytes, 65536);
    assert_eq!(c.min_tls, TlsVersion::V12);
    assert!(!c.reason_strings);
    assert!(c.name_sources.is_empty());
    assert_eq!(c.subject_match, SubjectMatch::CommonName);
    assert_eq!(c.limits.listen_backlog, 4096);
    assert_eq!(c.admin_max_connections, 64);
}

#[test]
fn listen_backlog_and_admin_cap_are_bounded() {
    for (extra, field) in [
        ("[limits]\nlisten_backlog = 0\n", "limits.listen_backlog:"),
        (
            "[limits]\nlisten_backlog = 70000\n",
            "limits.listen_backlog:",
        ),
        ("[admin]\nmax_connections = 0\n", "admin.max_connections:"),
        (
            "[websocket]\nlisten = \"127.0.0.1:0\"\nallowed_origins = [\"https://a.example/\"]\n",
            "websocket.allowed_origins:",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
    let c = parse(&format!("{MINIMAL}[limits]\nlisten_backlog = 1000\n")).unwrap();
    assert_eq!(c.limits.listen_backlog, 1000);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server_cert, Path::new("/etc/mqttgate/server.pem"));
    assert_eq!(c.registry_file, Path::new("/etc/mqttgate/clients.json"));
    assert_eq!(c.ca_files, vec![PathBuf::from("/etc/mqttgate/ca.pem")]);
}

#[test]
fn name_sources_keep_their_order() {
    let text = format!(
            "alternativeAuthenticationNameSources = [\"ClientCertificateDns\", \"ClientCertificateSubject\"]\n{MINIMAL}"
        );
    let c = parse(&text).unwrap();
    assert_eq!(c.name_sources, vec![NameSource::Dns, NameSource::Subject]);
}

#[test]
fn unknown_key_is_refused_naming_file_and_key() {
    let text = MINIMAL.replace("[registry]", "[registry]\nclinets = \"x\"");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("/etc/mqttgate/mqttgate.toml:"), "{err}");
    assert!(err.contains("clinets"), "{err}");
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (
            "alternativeAuthenticationNameSources = [\"CertificateDns\"]\n",
            "alternativeAuthenticationNameSources",
        ),
        ("listen = \"8883\"\n", "listen"),
        ("subject_match = \"dn\"\n", "subject_match"),
    ];
    for (prefix, field) in cases {
        let err = parse(&format!("{prefix}{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("/etc/mqttgate/mqttgate.toml: {field}:")),
            "{err}"
        );
    }
    let err = parse(&format!("{MINIMAL}[upstream]\nusername = \"keep\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream.username:"), "{err}");
    let err = parse(&format!("{MINIMAL}[limits]\nconnect_timeout_ms = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.connect_timeout_ms:"), "{err}");
}

#[test]
fn duplicate_name_source_is_refused() {
    let text = format!(
            "alternativeAuthenticationNameSources = [\"ClientCertificateIp\", \"ClientCertificateIp\"]\n{MINIMAL}"
        );
    assert!(parse(&text)
        .unwrap_err()
        .to_string()
        .contains("listed twice"));
}

const JWT: &str = r#"
[auth.jwt]
issuer = "https://issuer.example.com"
audiences = ["mqttgate"]
keys = ["jwt/"]
"#;

#[test]
fn jwt_section_gets_documented_defaults() {
    let c = parse(&format!("{MINIMAL}{JWT}")).unwrap();
    let jwt = c.jwt.unwrap();
    assert_eq!(jwt.policy.algorithms, vec![jsonwebtoken::Algorithm::RS256]);
    assert_eq!(jwt.policy.skew_seconds, 60);
    assert_eq!(
        jwt.policy.methods,
        vec![crate::auth::jwt::JwtMethod::Custom]
    );
    assert!(!jwt.policy.require_registered);
    assert_eq!(jwt.keys, vec![PathBuf::from("/etc/mqttgate/jwt/")]);
    assert!(parse(MINIMAL).unwrap().jwt.is_none());
}

#[test]
fn none_and_hmac_algorithms_are_refused_at_load_naming_the_field() {
    for alg in ["none", "HS256", "HS512", "RS1"] {
        let text = format!("{MINIMAL}{JWT}algorithms = [\"{alg}\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/mqttgate/mqttgate.toml: auth.jwt.algorithms:"),
            "{err}"
        );
    }
    let text = format!("{MINIMAL}{JWT}algorithms = [\"RS256\", \"ES256\"]\n");
    assert_eq!(
        parse(&text).unwrap().jwt.unwrap().policy.algorithms.len(),
        2
    );
}

#[test]
fn bad_jwt_values_name_their_field() {
    let cases = [
        ("methods = [\"PLAIN\"]\n", "auth.jwt.methods:"),
        ("skew_seconds = -1\n", "auth.jwt.skew_seconds:"),
        ("skew_seconds = 7200\n", "auth.jwt.skew_seconds:"),
        ("issuers = \"x\"\n", "issuers"),
    ];
    for (extra, field) in cases {
        let err = parse(&format!("{MINIMAL}{JWT}{extra}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    let err = parse(&format!("{MINIMAL}{}", JWT.replace("[\"mqttgate\"]", "[]")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth.jwt.audiences:"), "{err}");
    let text = format!(
        "{MINIMAL}{JWT}methods = [\"CUSTOM-JWT\", \"OAUTH2-JWT\"]\nrequire_registered = true\n"
    );
    let jwt = parse(&text).unwrap().jwt.unwrap();
    assert_eq!(jwt.policy.methods.len(), 2);
    assert!(jwt.policy.require_registered);
}

#[test]
fn webhook_section_is_validated_naming_file_and_field() {
    assert!(parse(MINIMAL).unwrap().webhook.is_none());
    let text = format!(
            "{MINIMAL}[auth.webhook]\nurl = \"https://auth.local/x\"\nca_certificates = \"w.pem\"\nbearer_token_file = \"t\"\n"
        );
    let c = parse(&text).unwrap();
    let w = c.webhook.as_ref().unwrap();
    assert_eq!(w.ca_certificates, Path::new("/etc/mqttgate/w.pem"));
    assert!(c
        .watched_files()
        .contains(&PathBuf::from("/etc/mqttgate/t")));
    let err = parse(&text.replace("https:", "http:"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/mqttgate/mqttgate.toml: auth.webhook.url:"),
        "{err}"
    );
    let err = parse(&format!("{text}colour = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn missing_section_is_named() {
    let err = parse("[tls]\ncertificate = \"a\"\nprivate_key = \"b\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("registry"), "{err}");
}

/// Issue 17 point 9: a rate whose interval is no Duration (1e-300 once panicked at start)
/// is refused naming the field; so is a session expiry outside Azure's 1-8 hours.
#[test]
fn session_values_outside_their_range_are_errors_not_panics() {
    for (extra, field) in [
        (
            "[sessions]\nconnects_per_second = 1e-300\n",
            "sessions.connects_per_second:",
        ),
        (
            "[sessions]\nconnects_per_second = 1e300\n",
            "sessions.connects_per_second:",
        ),
        (
            "[sessions]\nconnects_per_second = -1\n",
            "sessions.connects_per_second:",
        ),
        (
            "[sessions]\nmaximum_session_expiry_hours = 0\n",
            "sessions.maximum_session_expiry_hours:",
        ),
        (
            "[sessions]\nmaximum_session_expiry_hours = 9\n",
            "sessions.maximum_session_expiry_hours:",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert!(err.contains(field), "{extra}: {err}");
    }
    let c = parse(&format!(
        "{MINIMAL}[sessions]\nconnects_per_second = 0.001\nmaximum_session_expiry_hours = 8\n"
    ))
    .unwrap();
    assert_eq!(c.sessions.max_session_expiry, 8 * 3600);
}

/// Issue 17 point 11: audit mode lets unverified clients through, so a broker told to
/// trust mqttgate's usernames (`rewrite`) would take typed names as verified: refused at
/// start, with why. Unset, the username is passed through, and so is the ClientId.
#[test]
fn audit_mode_refuses_rewrite_and_passes_names_through() {
    let err = parse(&format!(
        "mode = \"audit\"\n{MINIMAL}[upstream]\nusername = \"rewrite\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("upstream.username:"), "{err}");
    assert!(err.contains("audit mode"), "{err}");
    let c = parse(&format!("mode = \"audit\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.username_mode, UsernameMode::Passthrough);
    assert_eq!(c.client_id_mode, ClientIdMode::Passthrough);
}
