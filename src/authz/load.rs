//! Reading the three lists into an [`Authz`]: the JSON shapes Azure writes, every rule
//! checked, and errors that name the file, the entry and, for queries, the column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use thiserror::Error;

use super::query::{Query, QueryError};
use super::topics::{parse_topic_space, TopicSpaceError};
use super::{Authz, Binding, ClientGroup, Files, Permission, TopicSpace, ALL_CLIENTS};

/// Largest list file read. Azure allows 10 client groups and topic spaces and a few
/// hundred bindings; a file a thousand times that is a mistake, not a configuration.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Which of the three lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ClientGroup,
    TopicSpace,
    PermissionBinding,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::ClientGroup => "client group",
            Kind::TopicSpace => "topic space",
            Kind::PermissionBinding => "permission binding",
        })
    }
}

/// An entry by its 0-based array position (as in `jq '.[3]'`) and, once read, its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryAt {
    pub index: usize,
    pub name: Option<String>,
}

impl fmt::Display for EntryAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name:?} (entry {})", self.index),
            None => write!(f, "entry {}", self.index),
        }
    }
}

#[derive(Debug, Error)]
pub enum AuthzError {
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: file is {size} bytes, over the limit of {max}", .file.display())]
    TooLarge { file: PathBuf, size: u64, max: u64 },
    #[error("{}: invalid JSON: {source}", .file.display())]
    Json {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: expected a JSON array of {kind}s or an object with a \"value\" array", .file.display())]
    Shape { file: PathBuf, kind: Kind },
    #[error("{}: the list is one page of several (nextLink is set); save the whole list", .file.display())]
    Paged { file: PathBuf },
    #[error("{}: {kind} {entry}: {problem}", .file.display())]
    Entry {
        file: PathBuf,
        kind: Kind,
        entry: EntryAt,
        problem: Problem,
    },
}

/// What is wrong with one entry.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Problem {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("{field} must be {expected}")]
    Type {
        field: &'static str,
        expected: &'static str,
    },
    #[error("{field} is given both at the top and under properties; use one shape")]
    BothShapes { field: &'static str },
    #[error("name must be 3 to 50 letters, digits and hyphens")]
    Name,
    #[error("the name is also used by entry {first} (names are compared ignoring case)")]
    Duplicate { first: usize },
    #[error("$all is built in and cannot have a query")]
    AllWithQuery,
    #[error("query: {0}")]
    Query(QueryError),
    #[error("{0}")]
    TopicSpace(TopicSpaceError),
    #[error("permission must be \"Publisher\" or \"Subscriber\", found {0:?}")]
    Permission(String),
    #[error("client group {0:?} is not in {1}")]
    UnknownClientGroup(String, String),
    #[error("topic space {0:?} is not in {1}")]
    UnknownTopicSpace(String, String),
}

/// The fields each list keeps under `properties` (ARM's shape) and `az` prints at the top.
const GROUP_FIELDS: &[&str] = &["query", "description"];
const SPACE_FIELDS: &[&str] = &["topicTemplates", "description"];
const BINDING_FIELDS: &[&str] = &[
    "clientGroupName",
    "topicSpaceName",
    "permission",
    "description",
];

/// One entry being read: where it is, for errors, and its fields, whichever shape.
struct Entry<'v> {
    file: &'v Path,
    kind: Kind,
    at: EntryAt,
    name: &'v str,
    props: &'v Map<String, Value>,
}

impl<'v> Entry<'v> {
    fn error(&self, problem: Problem) -> AuthzError {
        AuthzError::Entry {
            file: self.file.to_path_buf(),
            kind: self.kind,
            entry: self.at.clone(),
            problem,
        }
    }

    /// A string field; null counts as absent, as Azure writes absent fields as null.
    fn string(&self, field: &'static str) -> Result<Option<&'v str>, AuthzError> {
        match self.props.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.error(Problem::Type {
                field,
                expected: "a string",
            })),
        }
    }

    fn required(&self, field: &'static str) -> Result<&'v str, AuthzError> {
        match self.string(field)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.error(Problem::Missing { field })),
        }
    }
}

/// The entries of one list: a bare array (what `az … list` prints) or ARM's
/// `{"value": [...]}`.
fn entries<'v>(file: &Path, kind: Kind, doc: &'v Value) -> Result<&'v [Value], AuthzError> {
    let list = match doc {
        Value::Array(list) => list,
        Value::Object(obj) => {
            if obj
                .get("nextLink")
                .is_some_and(|next| next.as_str().is_some_and(|s| !s.is_empty()))
            {
                return Err(AuthzError::Paged {
                    file: file.to_path_buf(),
                });
            }
            match obj.get("value") {
                Some(Value::Array(list)) => list,
                _ => {
                    return Err(AuthzError::Shape {
                        file: file.to_path_buf(),
                        kind,
                    })
                }
            }
        }
        _ => {
            return Err(AuthzError::Shape {
                file: file.to_path_buf(),
                kind,
            })
        }
    };
    Ok(list)
}

/// Reads one list's entries, checking each entry's name and its uniqueness.
fn read_list<'v>(
    file: &'v Path,
    kind: Kind,
    doc: &'v Value,
    fields: &[&'static str],
) -> Result<Vec<Entry<'v>>, AuthzError> {
    let mut out: Vec<Entry<'v>> = Vec::new();
    for (index, value) in entries(file, kind, doc)?.iter().enumerate() {
        let at = EntryAt { index, name: None };
        let Value::Object(obj) = value else {
            return Err(AuthzError::Entry {
                file: file.to_path_buf(),
                kind,
                entry: at,
                problem: Problem::NotAnObject,
            });
        };
        let mut entry = Entry {
            file,
            kind,
            at,
            name: "",
            props: obj,
        };
        let name = entry.required("name")?;
        entry.at.name = Some(name.to_string());
        entry.name = name;
        let built_in = kind == Kind::ClientGroup && name == ALL_CLIENTS;
        if !built_in && !valid_name(name) {
            return Err(entry.error(Problem::Name));
        }
        entry.props = match obj.get("properties") {
            None | Some(Value::Null) => obj,
            Some(Value::Object(props)) => {
                if let Some(field) = fields
                    .iter()
                    .find(|f| obj.get(**f).is_some_and(|v| !v.is_null()))
                {
                    return Err(entry.error(Problem::BothShapes { field }));
                }
                props
            }
            Some(_) => {
                return Err(entry.error(Problem::Type {
                    field: "properties",
                    expected: "an object",
                }))
            }
        };
        if let Some(first) = out.iter().find(|e| e.name.eq_ignore_ascii_case(name)) {
            return Err(entry.error(Problem::Duplicate {
                first: first.at.index,
            }));
        }
        out.push(entry);
    }
    Ok(out)
}

/// Azure's rule for client group, topic space and permission binding names.
fn valid_name(name: &str) -> bool {
    (3..=50).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn json(file: &Path, text: &str) -> Result<Value, AuthzError> {
    serde_json::from_str(text).map_err(|source| AuthzError::Json {
        file: file.to_path_buf(),
        source,
    })
}

/// Builds the model from the three files' text. Pure; [`read`] does the reading.
pub(super) fn parse(
    files: &Files<'_>,
    client_groups: &str,
    topic_spaces: &str,
    permission_bindings: &str,
) -> Result<Authz, AuthzError> {
    let groups_doc = json(files.client_groups, client_groups)?;
    let spaces_doc = json(files.topic_spaces, topic_spaces)?;
    let bindings_doc = json(files.permission_bindings, permission_bindings)?;

    let mut groups = vec![ClientGroup {
        name: ALL_CLIENTS.to_string(),
        query: None,
    }];
    for entry in read_list(
        files.client_groups,
        Kind::ClientGroup,
        &groups_doc,
        GROUP_FIELDS,
    )? {
        let query = entry.string("query")?;
        if entry.name == ALL_CLIENTS {
            // `az … client-group list` includes the built-in group; it is already here.
            if query.is_some_and(|q| !q.trim().is_empty()) {
                return Err(entry.error(Problem::AllWithQuery));
            }
            continue;
        }
        let query =
            Query::parse(entry.required("query")?).map_err(|e| entry.error(Problem::Query(e)))?;
        groups.push(ClientGroup {
            name: entry.name.to_string(),
            query: Some(query),
        });
    }

    let mut spaces = Vec::new();
    for entry in read_list(
        files.topic_spaces,
        Kind::TopicSpace,
        &spaces_doc,
        SPACE_FIELDS,
    )? {
        let texts = match entry.props.get("topicTemplates") {
            None | Some(Value::Null) => {
                return Err(entry.error(Problem::Missing {
                    field: "topicTemplates",
                }))
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str())
                .collect::<Option<Vec<&str>>>(),
            Some(_) => None,
        };
        let Some(texts) = texts else {
            return Err(entry.error(Problem::Type {
                field: "topicTemplates",
                expected: "an array of strings",
            }));
        };
        let templates =
            parse_topic_space(&texts).map_err(|e| entry.error(Problem::TopicSpace(e)))?;
        spaces.push((entry.name, TopicSpace { templates }));
    }

    let mut bindings = Vec::new();
    for entry in read_list(
        files.permission_bindings,
        Kind::PermissionBinding,
        &bindings_doc,
        BINDING_FIELDS,
    )? {
        let group_name = entry.required("clientGroupName")?;
        let space_name = entry.required("topicSpaceName")?;
        let permission = match entry.required("permission")? {
            "Publisher" => Permission::Publisher,
            "Subscriber" => Permission::Subscriber,
            other => return Err(entry.error(Problem::Permission(other.to_string()))),
        };
        // ARM resource names are case-insensitive, so references are too.
        let Some(group) = groups
            .iter()
            .position(|g| g.name.eq_ignore_ascii_case(group_name))
        else {
            return Err(entry.error(Problem::UnknownClientGroup(
                group_name.to_string(),
                files.client_groups.display().to_string(),
            )));
        };
        let Some(space) = spaces
            .iter()
            .position(|(name, _)| name.eq_ignore_ascii_case(space_name))
        else {
            return Err(entry.error(Problem::UnknownTopicSpace(
                space_name.to_string(),
                files.topic_spaces.display().to_string(),
            )));
        };
        bindings.push(Binding {
            name: Arc::from(entry.name),
            group,
            space,
            permission,
        });
    }
    // Bindings are tried in name order, so which binding `explain` and the logs name for
    // an allowed action does not depend on the order of the file.
    bindings.sort_by(|a, b| a.name.cmp(&b.name));

    Ok(Authz {
        groups,
        spaces: spaces.into_iter().map(|(_, space)| space).collect(),
        bindings,
    })
}

/// Reads the three files (each bounded by [`MAX_FILE_BYTES`]) and builds the model.
pub(super) fn read(files: &Files<'_>) -> Result<Authz, AuthzError> {
    let read_one = |file: &Path| -> Result<String, AuthzError> {
        let err = |source| AuthzError::Read {
            file: file.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(file).map_err(err)?.len();
        if size > MAX_FILE_BYTES {
            return Err(AuthzError::TooLarge {
                file: file.to_path_buf(),
                size,
                max: MAX_FILE_BYTES,
            });
        }
        std::fs::read_to_string(file).map_err(err)
    };
    let groups = read_one(files.client_groups)?;
    let spaces = read_one(files.topic_spaces)?;
    let bindings = read_one(files.permission_bindings)?;
    parse(files, &groups, &spaces, &bindings)
}
