//! Loading a registry file: the JSON document streamed entry by entry (no tree of the whole
//! file), each entry checked against SPEC §1's rules and copied into the registry's arenas.

use std::path::{Path, PathBuf};

use hashbrown::HashTable;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::*;

/// The fields Azure keeps under `properties` and the CLI flattens.
const PROPERTY_FIELDS: [&str; 5] = [
    "authenticationName",
    "clientCertificateAuthentication",
    "state",
    "attributes",
    "description",
];

const MAX_AUTHENTICATION_NAME: usize = 128;

/// The default of `registry.max_bytes`: ~20 times a 100,000-client registry as Azure
/// writes it (~30 MiB with its extra fields would be 100k clients at ~300 bytes).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The registry being built while the document streams by.
pub(super) struct Loader<'a> {
    pub(super) file: &'a Path,
    /// Where the current file's entries start in `records` (a directory registry streams
    /// several files into one registry), and where each earlier file's did.
    pub(super) file_start: usize,
    pub(super) earlier_files: Vec<(usize, PathBuf)>,
    pub(super) registry: Registry,
    /// Client names seen so far, for their uniqueness; dropped after the load.
    pub(super) names: HashTable<u32>,
    /// The rule an entry broke; serde only carries a message, so the error waits here.
    pub(super) refused: Option<RegistryError>,
}

/// Appends `s` to the text arena.
fn push_text(text: &mut String, s: &str) -> Option<Span> {
    let start = u32::try_from(text.len()).ok()?;
    let len = u32::try_from(s.len()).ok()?;
    start.checked_add(len)?;
    text.push_str(s);
    Some(Span { start, len })
}

impl<'a> Loader<'a> {
    pub(super) fn new(first: &'a Path) -> Loader<'a> {
        Loader {
            file: first,
            file_start: 0,
            earlier_files: Vec::new(),
            registry: Registry::default(),
            names: HashTable::new(),
            refused: None,
        }
    }

    /// Entries from here on come from `file`.
    pub(super) fn next_file(&mut self, file: &'a Path) {
        let start = self.registry.records.len();
        if start > self.file_start {
            self.earlier_files
                .push((self.file_start, self.file.to_path_buf()));
        }
        self.file = file;
        self.file_start = start;
    }

    fn refuse<E: de::Error>(&mut self, error: RegistryError) -> E {
        self.refused = Some(error);
        E::custom("registry refused")
    }

    fn shape<E: de::Error>(&mut self) -> E {
        let file = self.file.to_path_buf();
        self.refuse(RegistryError::Shape { file })
    }

    fn add(&mut self, entry: &Value) -> Result<(), RegistryError> {
        let index = self.registry.records.len() - self.file_start;
        let file = self.file;
        let client = parse_entry(entry, index, file)?;
        let Registry {
            records,
            text,
            attributes,
            thumbprints,
            index: by_name,
            pins,
            hasher,
        } = &mut self.registry;
        let at = Ctx {
            file,
            entry: EntryRef {
                index,
                name: Some(client.name.to_string()),
                file: None,
            },
            prefix: "",
        };
        let name_of = |i: u32| &text[records[i as usize].name.range()];
        // A record's array position is its position in `records` less its file's start:
        // any error stops the load, so nothing is skipped.
        let (file_start, earlier) = (self.file_start, &self.earlier_files);
        let other = |i: u32| {
            let i = i as usize;
            let (start, file) = match earlier.iter().rev().find(|(s, _)| *s <= i) {
                Some((s, f)) if i < file_start => (*s, Some(f.clone())),
                _ => (file_start, None),
            };
            EntryRef {
                index: i - start,
                name: Some(name_of(i as u32).to_string()),
                file,
            }
        };
        // ARM resource names are case-insensitive, so "gw" and "GW" are one resource.
        let name = name_key(client.name);
        let name_hash = hasher.hash_one(&name);
        if let Some(&i) = self.names.find(name_hash, |&i| name.is_key_of(name_of(i))) {
            return Err(at.err(
                "name",
                Problem::Duplicate {
                    value: client.name.to_string(),
                    other: other(i),
                    compared: name.compared(),
                },
            ));
        }
        let authentication_name = client.authentication_name.unwrap_or(client.name);
        let key = name_key(authentication_name);
        let key_hash = hasher.hash_one(&key);
        if let Some(&i) = by_name.find(key_hash, |&i| {
            key.is_key_of(&text[records[i as usize].authentication_name.range()])
        }) {
            let field = if entry_is_flat(entry) {
                "authenticationName"
            } else {
                "properties.authenticationName"
            };
            return Err(at.err(
                field,
                Problem::Duplicate {
                    value: authentication_name.to_string(),
                    other: other(i),
                    compared: key.compared(),
                },
            ));
        }

        let too_large = || {
            at.err(
                "",
                Problem::Type {
                    expected: "at most 4294967295 entries and 4 GiB of text",
                    got: "more",
                },
            )
        };
        let position = u32::try_from(self.file_start + index).map_err(|_| too_large())?;
        let first_thumbprint = u32::try_from(thumbprints.len()).map_err(|_| too_large())?;
        let name_span = push_text(text, client.name).ok_or_else(too_large)?;
        let auth_span = match client.authentication_name {
            None => name_span,
            Some(given) => push_text(text, given).ok_or_else(too_large)?,
        };
        let description = match client.description {
            None => Span::default(),
            Some(d) => push_text(text, d).ok_or_else(too_large)?,
        };
        let attrs_start = u32::try_from(attributes.len()).map_err(|_| too_large())?;
        encode_attributes(attributes, &client.attributes);
        let attrs_len = u32::try_from(attributes.len())
            .ok()
            .and_then(|end| end.checked_sub(attrs_start))
            .ok_or_else(too_large)?;
        for t in &client.thumbprints {
            let hash = hasher.hash_one(t);
            if pins
                .find(hash, |&i| thumbprints[i as usize] == *t)
                .is_none()
            {
                let pos = u32::try_from(thumbprints.len()).map_err(|_| too_large())?;
                pins.insert_unique(hash, pos, |&i| hasher.hash_one(thumbprints[i as usize]));
            }
            thumbprints.push(*t);
        }
        records.push(Record {
            name: name_span,
            authentication_name: auth_span,
            description,
            attributes: Span {
                start: attrs_start,
                len: attrs_len,
            },
            thumbprints: first_thumbprint,
            // At most 2: checked by parse_certificate_authentication.
            thumbprint_count: client.thumbprints.len() as u8,
            has_description: client.description.is_some(),
            scheme: client.scheme,
            state: client.state,
        });
        self.names.insert_unique(name_hash, position, |&i| {
            hasher.hash_one(name_key(&text[records[i as usize].name.range()]))
        });
        by_name.insert_unique(key_hash, position, |&i| {
            hasher.hash_one(name_key(
                &text[records[i as usize].authentication_name.range()],
            ))
        });
        Ok(())
    }
}

/// Writes sorted, checked attributes in the encoding [`Attributes`] reads.
fn encode_attributes(out: &mut Vec<u8>, attrs: &[(&str, &Value)]) {
    for (key, value) in attrs {
        put_str(out, key);
        match value {
            Value::Number(n) => {
                out.push(TAG_INT);
                out.extend_from_slice(&n.as_i64().expect("checked").to_le_bytes());
            }
            Value::Bool(b) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*b));
            }
            Value::String(s) => {
                out.push(TAG_STRING);
                put_str(out, s);
            }
            Value::Array(items) => {
                out.push(TAG_STRINGS);
                put_varint(out, items.len());
                for item in items {
                    put_str(out, item.as_str().expect("checked"));
                }
            }
            _ => unreachable!("checked by is_attribute_value"),
        }
    }
}

/// One entry, checked, borrowing its strings from the entry's JSON value until `add`
/// copies them into the arenas.
struct Parsed<'v> {
    name: &'v str,
    /// `None` when it defaults to `name`, which then is stored once.
    authentication_name: Option<&'v str>,
    scheme: Scheme,
    thumbprints: Vec<Thumbprint>,
    state: State,
    /// Sorted by key.
    attributes: Vec<(&'v str, &'v Value)>,
    description: Option<&'v str>,
}

/// The whole document: an array of entries, or an ARM list `{"value": [...]}`.
pub(super) struct Document<'l, 'a>(pub(super) &'l mut Loader<'a>);

/// The entries array.
struct Entries<'l, 'a>(&'l mut Loader<'a>);

impl<'de> Visitor<'de> for Document<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of clients or an object with a \"value\" array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        Entries(self.0).visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "value" if !seen => {
                    seen = true;
                    map.next_value_seed(Entries(&mut *self.0))?;
                }
                "nextLink" => {
                    if let Some(Value::String(next)) = map.next_value::<Option<Value>>()? {
                        if !next.is_empty() {
                            tracing::warn!(
                                file = %self.0.file.display(),
                                "registry is one page of a paged list (nextLink is set); \
                                 clients on later pages are unknown"
                            );
                        }
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if seen {
            Ok(())
        } else {
            Err(self.0.shape())
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.shape())
    }
}

impl<'de> DeserializeSeed<'de> for Entries<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Under "value" only an array will do.
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of clients")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<Value>()? {
            if let Err(e) = self.0.add(&entry) {
                return Err(self.0.refuse(e));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.0.shape())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.0.shape())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.0.shape())
    }
}

/// Where errors in the entry being parsed point.
struct Ctx<'a> {
    file: &'a Path,
    entry: EntryRef,
    /// `"properties."` for the ARM shape, `""` for the CLI shape.
    prefix: &'static str,
}

impl Ctx<'_> {
    fn err(&self, field: impl fmt::Display, problem: Problem) -> RegistryError {
        RegistryError::Entry(Box::new(EntryError {
            file: self.file.to_path_buf(),
            entry: self.entry.clone(),
            field: format!("{}{field}", self.prefix),
            problem,
        }))
    }

    fn type_err(
        &self,
        field: impl fmt::Display,
        expected: &'static str,
        got: &Value,
    ) -> RegistryError {
        self.err(
            field,
            Problem::Type {
                expected,
                got: kind(got),
            },
        )
    }

    fn string<'v>(
        &self,
        obj: &'v Map<String, Value>,
        key: &str,
    ) -> Result<Option<&'v str>, RegistryError> {
        match present(obj, key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.type_err(key, "a string", other)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value of `key`, treating null as absent.
fn present<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn entry_is_flat(entry: &Value) -> bool {
    entry
        .as_object()
        .is_some_and(|obj| present(obj, "properties").is_none())
}

fn parse_entry<'v>(
    entry: &'v Value,
    index: usize,
    file: &Path,
) -> Result<Parsed<'v>, RegistryError> {
    let mut at = Ctx {
        file,
        entry: EntryRef {
            index,
            name: None,
            file: None,
        },
        prefix: "",
    };
    let Some(obj) = entry.as_object() else {
        return Err(at.type_err("", "an object", entry));
    };
    let name = match at.string(obj, "name")? {
        None => return Err(at.err("name", Problem::Missing)),
        Some("") => return Err(at.err("name", Problem::Empty)),
        Some(name) => name,
    };
    at.entry.name = Some(name.to_string());

    let props = match present(obj, "properties") {
        None => obj,
        Some(Value::Object(props)) => {
            if let Some(key) = PROPERTY_FIELDS.iter().find(|k| present(obj, k).is_some()) {
                return Err(at.err(key, Problem::BothShapes));
            }
            at.prefix = "properties.";
            props
        }
        Some(other) => return Err(at.type_err("properties", "an object", other)),
    };

    let authentication_name = match at.string(props, "authenticationName")? {
        Some(given) => {
            check_length(given).map_err(|p| at.err("authenticationName", p))?;
            Some(given)
        }
        None => {
            check_length(name)
                .map_err(|p| at.err("authenticationName (defaulted from name)", p))?;
            None
        }
    };

    let (scheme, thumbprints) = parse_certificate_authentication(props, &at)?;

    let state = match at.string(props, "state")? {
        None | Some("Enabled") => State::Enabled,
        Some("Disabled") => State::Disabled,
        Some(other) => return Err(at.err("state", Problem::UnknownState(other.to_string()))),
    };

    let attributes = match present(props, "attributes") {
        None => Vec::new(),
        Some(Value::Object(attrs)) => {
            let mut checked = Vec::with_capacity(attrs.len());
            for (key, value) in attrs {
                let field = format!("attributes[{key:?}]");
                if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(at.err(&field, Problem::AttributeKey));
                }
                if !is_attribute_value(value) {
                    return Err(at.err(&field, Problem::AttributeValue));
                }
                checked.push((key.as_str(), value));
            }
            checked.sort_by(|a, b| a.0.cmp(b.0));
            checked
        }
        Some(other) => return Err(at.type_err("attributes", "an object", other)),
    };

    let description = at.string(props, "description")?;

    Ok(Parsed {
        name,
        authentication_name,
        scheme,
        thumbprints,
        state,
        attributes,
        description,
    })
}
fn check_length(name: &str) -> Result<(), Problem> {
    let chars = name.chars().count();
    if (1..=MAX_AUTHENTICATION_NAME).contains(&chars) {
        Ok(())
    } else {
        Err(Problem::Length(chars))
    }
}

fn parse_certificate_authentication(
    props: &Map<String, Value>,
    at: &Ctx<'_>,
) -> Result<(Scheme, Vec<Thumbprint>), RegistryError> {
    const CCA: &str = "clientCertificateAuthentication";
    let empty = Map::new();
    let cca = match present(props, CCA) {
        None => &empty,
        Some(Value::Object(cca)) => cca,
        Some(other) => return Err(at.type_err(CCA, "an object", other)),
    };
    let scheme = match present(cca, "validationScheme") {
        None => Scheme::SubjectMatchesAuthenticationName,
        Some(Value::String(s)) => Scheme::parse(s).ok_or_else(|| {
            at.err(
                format_args!("{CCA}.validationScheme"),
                Problem::UnknownScheme(s.clone()),
            )
        })?,
        Some(other) => {
            return Err(at.type_err(format_args!("{CCA}.validationScheme"), "a string", other))
        }
    };

    let field = format!("{CCA}.allowedThumbprints");
    let listed = match present(cca, "allowedThumbprints") {
        None => None,
        Some(Value::Array(list)) => Some(list),
        Some(other) => return Err(at.type_err(&field, "an array", other)),
    };
    if scheme != Scheme::ThumbprintMatch {
        // An empty list grants nothing, so it is tolerated like an absent one.
        return match listed {
            Some(list) if !list.is_empty() => {
                Err(at.err(&field, Problem::ThumbprintsForbidden(scheme)))
            }
            _ => Ok((scheme, Vec::new())),
        };
    }
    let list = listed.ok_or_else(|| at.err(&field, Problem::ThumbprintsMissing))?;
    if !(1..=2).contains(&list.len()) {
        return Err(at.err(&field, Problem::ThumbprintCount(list.len())));
    }
    let mut thumbprints: Vec<Thumbprint> = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        let item = format!("{field}[{i}]");
        let Value::String(text) = value else {
            return Err(at.type_err(&item, "a string", value));
        };
        let thumbprint: Thumbprint = text
            .parse()
            .map_err(|e| at.err(&item, Problem::Thumbprint(e)))?;
        if let Some(first) = thumbprints.iter().position(|t| *t == thumbprint) {
            return Err(at.err(&item, Problem::RepeatedThumbprint(first)));
        }
        thumbprints.push(thumbprint);
    }
    Ok((scheme, thumbprints))
}

fn is_attribute_value(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_i64().is_some(),
        Value::Bool(_) | Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}
