//! `mqttgate explain --webhook-answer FILE`: what a webhook answer (SPEC §9) decides. It
//! calls no webhook and decides nothing itself: the answer is read as a live CONNECT's
//! would be (`Answer::parse`), the result is `Trust::decide`'s, with the same credentials
//! a client without a certificate would carry, and what the broker sees is
//! `upstream_connect`'s.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::UnixTime;

use super::jwt::attributes_line;
use super::{denied_after_connect, upstream_view, Explanation};
use crate::auth::webhook::Answer;
use crate::auth::Credentials;
use crate::cli::CliError;
use crate::config::Config;
use crate::mqtt::code;
use crate::trust::cert::format_time;
use crate::trust::{unix_now, Trust};

/// Loads the configuration and everything it names, reads the answer file (the JSON body
/// the webhook would send) and explains the decision as of now.
pub fn explain_webhook(config_file: &Path, answer_file: &Path) -> Result<Explanation, CliError> {
    let config = Config::load(config_file)?;
    let trust = Trust::load(&config, 0)?;
    let body = std::fs::read(answer_file).map_err(|e| format!("{}: {e}", answer_file.display()))?;
    let now = unix_now();
    Ok(explain_webhook_loaded(
        &config,
        &trust,
        &Answer::parse(&body, now),
        now,
    ))
}

/// Explains what `answer` decides against already-loaded state, at unix time `now`.
pub fn explain_webhook_loaded(
    config: &Config,
    trust: &Trust,
    answer: &Answer,
    now: i64,
) -> Explanation {
    let mut lines = Vec::new();
    let mut line = |s: String| lines.push(s);
    match &config.webhook {
        None => line("webhook: [auth.webhook] is not configured: no answer is accepted".into()),
        Some(w) => line(format!(
            "webhook: {} decides {} clients; timeout {} ms, at most {} in flight, cache {}",
            w.url.uri,
            w.decides.label(),
            w.timeout.as_millis(),
            w.max_concurrent,
            w.cache_entries
                .map_or("off".to_string(), |n| format!("{n} entries")),
        )),
    }
    line(match answer {
        Answer::Allow {
            name, expiration, ..
        } => format!(
            "answer: allow as {name:?}, expiration {}",
            expiration.map_or("none (an hour from receipt)".to_string(), format_time)
        ),
        Answer::Deny { reason } => format!(
            "answer: deny, errorReason {}",
            reason
                .as_deref()
                .map_or("(none)".to_string(), |r| format!("{r:?}"))
        ),
        Answer::Malformed(why) => format!("answer: MALFORMED: {why}"),
    });

    // The answer: the predicate a live connection gets.
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    let credentials = Credentials::Webhook {
        answer,
        chain: None,
    };
    let decision = match trust.decide(&credentials, at) {
        Ok((_, decision)) => decision,
        Err(_) => unreachable!("no certificate is admitted without a chain"),
    };
    let allowed = decision.is_ok();
    match &decision {
        Ok(id) => {
            line(format!(
                "result: ALLOWED as {:?} (method webhook, registry not consulted) until {}",
                id.authentication_name,
                format_time(id.valid_until)
            ));
            line(attributes_line(&id.attributes));
            line(upstream_view(config, id, None));
            line(format!(
                "connack: MQTT 3.1.1: 0x{:02X}; MQTT 5: 0x{:02X} (from the broker); the session ends after {}",
                code::V3_ACCEPTED,
                code::V5_SUCCESS,
                format_time(id.valid_until)
            ));
        }
        Err(d) => denied_after_connect(d).into_iter().for_each(&mut line),
    }
    Explanation { lines, allowed }
}

#[cfg(all(test, feature = "demo"))]
mod tests;
