//! Topic templates (Azure's topic spaces): MQTT topic filters with client variables,
//! checked at load, substituted once per client at CONNECT, and matched per packet. Pure;
//! matching allocates nothing, as it runs on every PUBLISH.
//!
//! A template is an MQTT filter in which `${client.authenticationName}` and
//! `${client.attributes.<key>}` may stand for a whole segment or part of one
//! (`devices/${client.authenticationName}/#`, `fleet-${client.attributes.fleet}/+`).
//! Substitution fails (the template grants that client nothing) when the value is missing,
//! is not a single string or integer, is empty, or would widen the filter: a value holding
//! `+`, `#`, `/` or NUL, or one starting with `$` at the very start of the filter (that
//! would reach the broker's `$`-topics, which MQTT keeps away from wildcards).
//!
//! Matching follows MQTT: `+` is one level, `#` the rest including the parent level, and a
//! filter starting with a wildcard does not match a topic starting with `$`. A requested
//! `$share/<group>/<filter>` subscription is judged by its `<filter>`.

use thiserror::Error;

use super::Facts;
use crate::trust::registry::AttributeValue;

/// Azure's limit of templates per topic space.
pub const MAX_TEMPLATES: usize = 10;

/// MQTT's limit on a topic filter's length in bytes.
const MAX_FILTER_BYTES: usize = 65_535;

/// One checked template.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    /// `+`
    Single,
    /// `#`, always last.
    Multi,
    /// Text and variables.
    Parts(Vec<Part>),
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    AuthenticationName,
    Attribute(String),
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template is empty")]
    Empty,
    #[error("template is {len} bytes, over MQTT's limit of {MAX_FILTER_BYTES}")]
    TooLong { len: usize },
    #[error("column {column}: {problem}")]
    At {
        column: usize,
        problem: &'static str,
    },
}

/// Why a topic space's template list is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TopicSpaceError {
    #[error("no topic templates")]
    NoTemplates,
    #[error("{count} topic templates, over Azure's limit of {MAX_TEMPLATES}")]
    TooMany { count: usize },
    #[error("topic template {index} ({text:?}): {error}")]
    Template {
        index: usize,
        text: String,
        error: TemplateError,
    },
}

/// A topic space's templates, each checked; errors name the template by position.
pub fn parse_topic_space<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Template>, TopicSpaceError> {
    if texts.is_empty() {
        return Err(TopicSpaceError::NoTemplates);
    }
    if texts.len() > MAX_TEMPLATES {
        return Err(TopicSpaceError::TooMany { count: texts.len() });
    }
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            Template::parse(text.as_ref()).map_err(|error| TopicSpaceError::Template {
                index,
                text: text.as_ref().to_string(),
                error,
            })
        })
        .collect()
}

const VARIABLE_PREFIX: &str = "${client.";
const UNKNOWN_VARIABLE: &str =
    "unknown variable: expected ${client.authenticationName} or ${client.attributes.<key>}";

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(TemplateError::TooLong { len: text.len() });
        }
        let at = |offset: usize, problem| TemplateError::At {
            column: text[..offset].chars().count() + 1,
            problem,
        };
        if let Some(nul) = text.find('\0') {
            return Err(at(nul, "NUL is not allowed in a topic filter"));
        }
        let mut segments = Vec::new();
        let mut offset = 0;
        let count = text.split('/').count();
        for (index, segment) in text.split('/').enumerate() {
            let parsed = match segment {
                "+" => Segment::Single,
                "#" if index + 1 == count => Segment::Multi,
                "#" => return Err(at(offset, "'#' must be the last segment")),
                _ => Segment::Parts(parse_parts(segment, offset, &at)?),
            };
            segments.push(parsed);
            offset += segment.len() + 1;
        }
        Ok(Template { segments })
    }

    /// The filter this template is for one client, or `None` when it grants the client
    /// nothing (the rules are in the module header).
    pub fn substitute(&self, facts: &Facts<'_>) -> Option<String> {
        let mut out = String::new();
        for (index, segment) in self.segments.iter().enumerate() {
            if index > 0 {
                out.push('/');
            }
            match segment {
                Segment::Single => out.push('+'),
                Segment::Multi => out.push('#'),
                Segment::Parts(parts) => {
                    for part in parts {
                        let value = match part {
                            Part::Text(text) => {
                                out.push_str(text);
                                continue;
                            }
                            Part::AuthenticationName => facts.authentication_name,
                            Part::Attribute(key) => match facts.attribute(key)? {
                                AttributeValue::String(s) => s.as_str(),
                                AttributeValue::Int(i) => {
                                    out.push_str(&i.to_string());
                                    continue;
                                }
                                AttributeValue::Bool(_) | AttributeValue::Strings(_) => {
                                    return None
                                }
                            },
                        };
                        if value.is_empty()
                            || value.contains(['+', '#', '/', '\0'])
                            || (out.is_empty() && value.starts_with('$'))
                        {
                            return None;
                        }
                        out.push_str(value);
                    }
                }
            }
        }
        Some(out)
    }
}

/// One segment that is neither `+` nor `#`: text and variables, no wildcard characters.
fn parse_parts(
    segment: &str,
    offset: usize,
    at: &impl Fn(usize, &'static str) -> TemplateError,
) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = segment;
    let mut pos = offset;
    while !rest.is_empty() {
        let Some(start) = rest.find("${") else {
            check_text(rest, pos, at)?;
            parts.push(Part::Text(rest.to_string()));
            break;
        };
        if start > 0 {
            check_text(&rest[..start], pos, at)?;
            parts.push(Part::Text(rest[..start].to_string()));
        }
        let var_at = pos + start;
        let Some(len) = rest[start..].find('}') else {
            return Err(at(var_at, "'${' without a closing '}' in its segment"));
        };
        let variable = &rest[start..start + len + 1];
        let part = match variable.strip_prefix(VARIABLE_PREFIX) {
            Some("authenticationName}") => Part::AuthenticationName,
            Some(other) => match other
                .strip_prefix("attributes.")
                .and_then(|k| k.strip_suffix('}'))
            {
                Some(key)
                    if !key.is_empty()
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Part::Attribute(key.to_string())
                }
                Some(_) => {
                    return Err(at(
                        var_at,
                        "an attribute key is letters, digits and underscores",
                    ))
                }
                None => return Err(at(var_at, UNKNOWN_VARIABLE)),
            },
            None => return Err(at(var_at, UNKNOWN_VARIABLE)),
        };
        parts.push(part);
        rest = &rest[start + len + 1..];
        pos = var_at + len + 1;
    }
    Ok(parts)
}

fn check_text(
    text: &str,
    offset: usize,
    at: &impl Fn(usize, &'static str) -> TemplateError,
) -> Result<(), TemplateError> {
    match text.find(['+', '#']) {
        Some(i) => Err(at(offset + i, "a wildcard must be a whole segment")),
        None => Ok(()),
    }
}

/// Whether a PUBLISH to `topic` is inside `filter` (a substituted template). A topic name
/// with wildcards, NUL or no characters is never allowed.
pub fn publish_allowed(filter: &str, topic: &str) -> bool {
    valid_topic(topic) && topic_in(filter, topic)
}

/// Whether `topic` can be published to at all: not empty, no wildcards, no NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// [`publish_allowed`] for a topic already known to be valid: per packet, the topic is
/// checked once and then matched against each grant. Walks bytes (`/` is ASCII, so a level
/// boundary is never inside a character): this runs for every grant of every PUBLISH.
pub fn topic_in(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    let dollar = t.first() == Some(&b'$');
    let level_end = |s: &[u8], from: usize| {
        s[from..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(s.len(), |p| from + p)
    };
    // The start of the current level in each; `j` past the end: the topic has no more.
    let (mut i, mut j, mut index) = (0, 0, 0);
    loop {
        let fe = level_end(f, i);
        let level = &f[i..fe];
        if level == b"#" {
            return !(index == 0 && dollar);
        }
        if j > t.len() {
            return false;
        }
        let te = level_end(t, j);
        match level {
            b"+" if index == 0 && dollar => return false,
            b"+" => {}
            literal if literal == &t[j..te] => {}
            _ => return false,
        }
        if fe == f.len() {
            return te == t.len();
        }
        (i, j, index) = (fe + 1, te + 1, index + 1);
    }
}

/// Whether every topic the requested subscription filter can match is inside `filter` (a
/// substituted template): the requested filter is a subset of the template's, wildcards
/// included. An invalid requested filter is never allowed.
pub fn subscribe_allowed(filter: &str, requested: &str) -> bool {
    let Some(requested) = shared_subscription_filter(requested) else {
        return false;
    };
    if !valid_filter(requested) {
        return false;
    }
    // `#` matches every topic and so does `+/#` (a topic has at least one level); the
    // segment walk below cannot see that `+` then `#` covers a requested `#`.
    if requested == "#" && filter == "+/#" {
        return true;
    }
    let dollar = requested.starts_with('$');
    let mut wanted = requested.split('/');
    for (index, level) in filter.split('/').enumerate() {
        match (level, wanted.next()) {
            // A literal `$…` first level is a `$`-topic that a leading wildcard excludes;
            // a requested leading wildcard excludes them itself.
            ("#", _) => return !(index == 0 && dollar),
            ("+", Some("#")) => return false,
            ("+", Some(_)) if index == 0 && dollar => return false,
            ("+", Some(_)) => {}
            (_, Some("+" | "#")) => return false,
            (literal, Some(w)) if literal == w => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

/// The filter of a `$share/<group>/<filter>` subscription, or the request itself; `None`
/// for a malformed shared subscription.
fn shared_subscription_filter(requested: &str) -> Option<&str> {
    let Some(rest) = requested.strip_prefix("$share/") else {
        return Some(requested);
    };
    let (group, filter) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return None;
    }
    Some(filter)
}

/// MQTT's rules for a subscription filter: non-empty, no NUL, wildcards as whole levels
/// and `#` last.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_FILTER_BYTES || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let ok = match level {
            "+" => true,
            "#" => levels.peek().is_none(),
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
