//! Why a registry file was refused: the file, the entry (position and name) and the field,
//! in words an operator can act on.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use super::Scheme;
use crate::trust::cert::ThumbprintError;

/// Which entry of the file an error is about. `index` is the 0-based array position
/// (as in `jq '.[3]'`); `name` is its `name` when it has a readable one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRef {
    pub index: usize,
    pub name: Option<String>,
    /// The file it is in, when that is not the file the error is about (a registry
    /// directory's other file).
    pub file: Option<PathBuf>,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "entry {} ({name:?})", self.index)?,
            None => write!(f, "entry {}", self.index)?,
        }
        match &self.file {
            Some(file) => write!(f, " of {}", file.display()),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: file is UTF-16; save it as UTF-8", .file.display())]
    Utf16 { file: PathBuf },
    #[error("{}: invalid JSON: {source}", .file.display())]
    Json {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: expected a JSON array of clients or an object with a \"value\" array", .file.display())]
    Shape { file: PathBuf },
    #[error("{}: file is {size} bytes, over registry.max_bytes ({max}); raise it in the configuration if the registry is really this large", .file.display())]
    TooLarge { file: PathBuf, size: u64, max: u64 },
    #[error(transparent)]
    Entry(Box<EntryError>),
}

/// A rule broken by one entry. `field` is a path like
/// `properties.clientCertificateAuthentication.allowedThumbprints[1]`; empty when the
/// problem is the entry itself.
#[derive(Debug, Error)]
#[error("{}: {entry}: {}{problem}", .file.display(), field_prefix(.field))]
pub struct EntryError {
    pub file: PathBuf,
    pub entry: EntryRef,
    pub field: String,
    pub problem: Problem,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// What is wrong with one field of one entry.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Problem {
    #[error("required")]
    Missing,
    #[error("expected {expected}, got {got}")]
    Type {
        expected: &'static str,
        got: &'static str,
    },
    #[error("must not be empty")]
    Empty,
    #[error("must be 1 to 128 characters, got {0}")]
    Length(usize),
    #[error("{value:?} is already used by {other} ({compared})")]
    Duplicate {
        value: String,
        other: EntryRef,
        compared: &'static str,
    },
    #[error("unknown validation scheme {0:?}; expected one of {list}", list = scheme_list())]
    UnknownScheme(String),
    #[error("required with ThumbprintMatch")]
    ThumbprintsMissing,
    #[error("must hold 1 or 2 thumbprints (primary, secondary), got {0}")]
    ThumbprintCount(usize),
    #[error("not allowed with {0}; only ThumbprintMatch uses thumbprints")]
    ThumbprintsForbidden(Scheme),
    #[error(transparent)]
    Thumbprint(ThumbprintError),
    #[error("repeats allowedThumbprints[{0}]")]
    RepeatedThumbprint(usize),
    #[error("expected \"Enabled\" or \"Disabled\", got {0:?}")]
    UnknownState(String),
    #[error("key must match [A-Za-z0-9_]+")]
    AttributeKey,
    #[error("value must be an integer, a boolean, a string or an array of strings")]
    AttributeValue,
    // Reading one and ignoring the other could silently change a client's scheme.
    #[error("given both at the top level and under properties; use one shape")]
    BothShapes,
}

fn scheme_list() -> String {
    Scheme::ALL.map(Scheme::as_str).join(", ")
}
