//! `[auth.jwt]` (SPEC §9): the TOML as written and its validation into an
//! [`auth::jwt::JwtPolicy`](crate::auth::jwt::JwtPolicy) and the key paths. The keys
//! themselves are read with the other trust files (`trust::jwt_keys`), so they reload.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use crate::auth::jwt::{JwtMethod, JwtPolicy};

pub const DEFAULT_ALGORITHMS: [&str; 1] = ["RS256"];
pub const DEFAULT_SKEW_SECONDS: i64 = 60;
pub const DEFAULT_METHODS: [&str; 1] = ["CUSTOM-JWT"];
/// A skew past an hour is a misconfigured clock, not a tolerance.
pub const MAX_SKEW_SECONDS: i64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<PathBuf>,
    algorithms: Option<Vec<String>>,
    skew_seconds: Option<i64>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    require_registered: bool,
}

/// The validated `[auth.jwt]`.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtConfig {
    pub policy: JwtPolicy,
    /// PEM certificates (kid = file stem), JWKS files (`.json`), or folders of both;
    /// resolved against the configuration file's folder.
    pub keys: Vec<PathBuf>,
}

impl RawJwt {
    /// `Err((field, message))`; the caller adds the file.
    pub(super) fn validate(
        self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<JwtConfig, (&'static str, String)> {
        if self.issuer.is_empty() {
            return Err(("auth.jwt.issuer", "must not be empty".into()));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err((
                "auth.jwt.audiences",
                "needs at least one non-empty audience".into(),
            ));
        }
        if self.keys.is_empty() {
            return Err((
                "auth.jwt.keys",
                "needs at least one key file or folder".into(),
            ));
        }
        let names = self
            .algorithms
            .unwrap_or_else(|| DEFAULT_ALGORITHMS.map(String::from).to_vec());
        if names.is_empty() {
            return Err(("auth.jwt.algorithms", "needs at least one algorithm".into()));
        }
        let mut algorithms = Vec::with_capacity(names.len());
        for name in &names {
            // HMAC would make the issuer's public key a shared secret anyone can sign
            // with (key confusion); `none` is no signature at all.
            let alg = Algorithm::from_str(name)
                .ok()
                .filter(|a| a.family() != AlgorithmFamily::Hmac)
                .ok_or_else(|| {
                    (
                        "auth.jwt.algorithms",
                        format!(
                            "{name:?} is not allowed: use RS256, RS384, RS512, PS256, PS384, \
                             PS512, ES256, ES384 or EdDSA (never none or HS*)"
                        ),
                    )
                })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        let skew_seconds = self.skew_seconds.unwrap_or(DEFAULT_SKEW_SECONDS);
        if !(0..=MAX_SKEW_SECONDS).contains(&skew_seconds) {
            return Err((
                "auth.jwt.skew_seconds",
                format!("{skew_seconds} is outside 0..={MAX_SKEW_SECONDS}"),
            ));
        }
        let method_names = self
            .methods
            .unwrap_or_else(|| DEFAULT_METHODS.map(String::from).to_vec());
        if method_names.is_empty() {
            return Err(("auth.jwt.methods", "needs at least one method".into()));
        }
        let mut methods = Vec::new();
        for name in &method_names {
            let m = JwtMethod::from_name(name).ok_or_else(|| {
                (
                    "auth.jwt.methods",
                    format!("{name:?} is not \"CUSTOM-JWT\" or \"OAUTH2-JWT\""),
                )
            })?;
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        Ok(JwtConfig {
            policy: JwtPolicy {
                issuer: self.issuer,
                audiences: self.audiences,
                algorithms,
                skew_seconds,
                methods,
                require_registered: self.require_registered,
            },
            keys: self.keys.iter().map(|p| resolve(p)).collect(),
        })
    }
}
