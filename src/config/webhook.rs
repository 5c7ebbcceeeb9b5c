//! `[auth.webhook]` (SPEC §9): the TOML as written and its validation into a
//! [`WebhookConfig`]. The files it names (the webhook's CA, the bearer token, the client
//! certificate) are read with the other trust files (`trust::webhook`), so they reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Cached answers kept when `cache = true`: a few MiB at most (a key is a 32-byte hash).
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// A wait past a minute is a connect timeout in disguise (the connect deadline still
/// bounds the whole CONNECT phase).
pub const MAX_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: String,
    ca_certificates: PathBuf,
    bearer_token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    timeout_ms: Option<u64>,
    max_concurrent: Option<usize>,
    cache: Option<RawCache>,
    decides: Option<String>,
}

/// `cache = true | false | <max entries>`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCache {
    On(bool),
    Entries(i64),
}

/// Which clients the webhook decides (SPEC §9, last paragraph). A CONNECT with an
/// Authentication Method is JWT's when JWT is configured, whatever this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decides {
    /// Clients that presented no certificate; the registry decides all the others.
    NoCertificate,
    /// Also certificate clients the registry does not know (no authentication name, or
    /// no client of that name); a registry client, enabled or not, never waits on it.
    Unregistered,
    /// Every client: the registry is not consulted.
    All,
}

impl Decides {
    pub fn label(self) -> &'static str {
        match self {
            Decides::NoCertificate => "no-certificate",
            Decides::Unregistered => "unregistered",
            Decides::All => "all",
        }
    }
}

/// Where the webhook is. Only https: the request carries passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The whole URL as configured, for the request line and logs (no credentials in it:
    /// userinfo is refused).
    pub uri: hyper::Uri,
    /// The host name the webhook's certificate must be valid for.
    pub host: String,
}

/// The validated `[auth.webhook]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: WebhookUrl,
    /// PEM file of the CA certificates the webhook's server certificate must chain to.
    pub ca_certificates: PathBuf,
    /// A file holding the bearer token sent as `Authorization: Bearer …`; re-read on
    /// every reload. Never logged.
    pub bearer_token_file: Option<PathBuf>,
    /// mqttgate's own certificate and key for mutual TLS with the webhook.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// A hard deadline on one request, connection included.
    pub timeout: Duration,
    /// Requests in flight at once; one more is answered Server unavailable at once.
    pub max_concurrent: usize,
    /// Cached answers at most; None: no cache.
    pub cache_entries: Option<usize>,
    pub decides: Decides,
}

impl WebhookConfig {
    /// The files the trust state reads for the webhook, for the change watcher.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.ca_certificates.clone()];
        files.extend(self.bearer_token_file.iter().cloned());
        if let Some((cert, key)) = &self.client_identity {
            files.extend([cert.clone(), key.clone()]);
        }
        files
    }
}

impl RawWebhook {
    /// `Err((field, message))`; the caller adds the file.
    pub(super) fn validate(
        self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<WebhookConfig, (&'static str, String)> {
        let url = parse_url(&self.url).map_err(|m| ("auth.webhook.url", m))?;
        let client_identity = match (self.client_certificate, self.client_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((resolve(&c), resolve(&k))),
            (Some(_), None) => {
                return Err((
                    "auth.webhook.client_key",
                    "required with client_certificate".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "auth.webhook.client_certificate",
                    "required with client_key".into(),
                ))
            }
        };
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err((
                "auth.webhook.timeout_ms",
                format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}"),
            ));
        }
        let max_concurrent = match self.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT) {
            0 => {
                return Err((
                    "auth.webhook.max_concurrent",
                    "must be greater than 0".into(),
                ))
            }
            n => n,
        };
        let cache_entries = match self.cache {
            None | Some(RawCache::On(true)) => Some(DEFAULT_CACHE_ENTRIES),
            Some(RawCache::On(false)) | Some(RawCache::Entries(0)) => None,
            Some(RawCache::Entries(n)) if n > 0 => Some(n as usize),
            Some(RawCache::Entries(n)) => {
                return Err((
                    "auth.webhook.cache",
                    format!("{n} is not true, false or a number of entries"),
                ))
            }
        };
        let decides = match self.decides.as_deref() {
            None | Some("no-certificate") => Decides::NoCertificate,
            Some("unregistered") => Decides::Unregistered,
            Some("all") => Decides::All,
            Some(other) => {
                return Err((
                    "auth.webhook.decides",
                    format!("{other:?} is not \"no-certificate\", \"unregistered\" or \"all\""),
                ))
            }
        };
        Ok(WebhookConfig {
            url,
            ca_certificates: resolve(&self.ca_certificates),
            bearer_token_file: self.bearer_token_file.as_deref().map(&resolve),
            client_identity,
            timeout: Duration::from_millis(timeout_ms),
            max_concurrent,
            cache_entries,
            decides,
        })
    }
}

/// An absolute https URL with a host, no userinfo (it would end up in logs).
fn parse_url(s: &str) -> Result<WebhookUrl, String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "{s:?} is not an https URL (the request carries passwords)"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are refused: use bearer_token_file".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(WebhookUrl {
        host: host.to_string(),
        uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<WebhookConfig, (&'static str, String)> {
        let text = format!("url = \"https://auth.example.com:8443/mqtt/auth\"\nca_certificates = \"webhook-ca.pem\"\n{extra}");
        let raw: RawWebhook = toml::from_str(&text).map_err(|e| ("toml", e.to_string()))?;
        raw.validate(|p| Path::new("/etc/mqttgate").join(p))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = raw("").unwrap();
        assert_eq!(c.url.host, "auth.example.com");
        assert_eq!(c.url.uri.port_u16(), Some(8443));
        assert_eq!(c.ca_certificates, Path::new("/etc/mqttgate/webhook-ca.pem"));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.max_concurrent, 64);
        assert_eq!(c.cache_entries, Some(DEFAULT_CACHE_ENTRIES));
        assert_eq!(c.decides, Decides::NoCertificate);
        assert_eq!(c.bearer_token_file, None);
        assert_eq!(c.client_identity, None);
    }

    #[test]
    fn cache_takes_a_bool_or_a_size() {
        assert_eq!(raw("cache = false").unwrap().cache_entries, None);
        assert_eq!(raw("cache = 0").unwrap().cache_entries, None);
        assert_eq!(raw("cache = 50").unwrap().cache_entries, Some(50));
        assert_eq!(raw("cache = -1").unwrap_err().0, "auth.webhook.cache");
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let cases = [
            ("decides = \"everyone\"", "auth.webhook.decides"),
            ("timeout_ms = 0", "auth.webhook.timeout_ms"),
            ("timeout_ms = 600000", "auth.webhook.timeout_ms"),
            ("max_concurrent = 0", "auth.webhook.max_concurrent"),
            ("client_certificate = \"c.pem\"", "auth.webhook.client_key"),
            ("client_key = \"c.key\"", "auth.webhook.client_certificate"),
        ];
        for (extra, field) in cases {
            assert_eq!(raw(extra).unwrap_err().0, field, "{extra}");
        }
    }

    #[test]
    fn only_https_urls_with_a_host_and_no_credentials() {
        for bad in [
            "http://auth.example.com/x",
            "auth.example.com/x",
            "/x",
            "https://user:pw@auth.example.com/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let ok = parse_url("https://[::1]:9443/a?b=c").unwrap();
        assert_eq!(ok.host, "::1");
        assert_eq!(ok.uri.path_and_query().unwrap().as_str(), "/a?b=c");
    }

    #[test]
    fn decides_and_client_identity_parse() {
        let c =
            raw("decides = \"unregistered\"\nclient_certificate = \"c.pem\"\nclient_key = \"c.key\"\nbearer_token_file = \"token\"")
                .unwrap();
        assert_eq!(c.decides, Decides::Unregistered);
        assert_eq!(
            c.client_identity,
            Some((
                PathBuf::from("/etc/mqttgate/c.pem"),
                PathBuf::from("/etc/mqttgate/c.key")
            ))
        );
        assert_eq!(c.files().len(), 4);
        assert_eq!(raw("decides = \"all\"").unwrap().decides, Decides::All);
    }
}
