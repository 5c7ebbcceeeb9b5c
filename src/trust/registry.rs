//! The client registry (SPEC §1 "Clients"): loads the JSON Azure uses for Event Grid
//! namespace client resources, enforces every rule at load, and finds a client by
//! authentication name ignoring case. It does not decide whether a certificate matches a
//! client (auth.rs) nor hold the CA certificates (anchors.rs).
//!
//! Accepted shapes, so Azure's output can be fed unchanged:
//! - the REST/ARM shape, fields under `properties`, as a top-level array or as
//!   `{"value": [...]}` (an ARM list response);
//! - the Azure CLI shape: `az eventgrid namespace client list` flattens `properties`
//!   into each entry, so `authenticationName`, `clientCertificateAuthentication`,
//!   `state`, `attributes` and `description` sit beside `name`.
//!
//! Anything Azure adds that mqttgate does not use (`id`, `type`, `systemData`,
//! `provisioningState`, …) is ignored. A JSON `null` counts as absent, as Azure writes
//! null for unset optional properties.

use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hashbrown::HashTable;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::trust::cert::{Thumbprint, ThumbprintError};

/// How a client's certificate is checked (Azure's `validationScheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    SubjectMatchesAuthenticationName,
    DnsMatchesAuthenticationName,
    UriMatchesAuthenticationName,
    IpMatchesAuthenticationName,
    EmailMatchesAuthenticationName,
    ThumbprintMatch,
}

impl Scheme {
    pub const ALL: [Scheme; 6] = [
        Scheme::SubjectMatchesAuthenticationName,
        Scheme::DnsMatchesAuthenticationName,
        Scheme::UriMatchesAuthenticationName,
        Scheme::IpMatchesAuthenticationName,
        Scheme::EmailMatchesAuthenticationName,
        Scheme::ThumbprintMatch,
    ];

    /// Azure's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::SubjectMatchesAuthenticationName => "SubjectMatchesAuthenticationName",
            Scheme::DnsMatchesAuthenticationName => "DnsMatchesAuthenticationName",
            Scheme::UriMatchesAuthenticationName => "UriMatchesAuthenticationName",
            Scheme::IpMatchesAuthenticationName => "IpMatchesAuthenticationName",
            Scheme::EmailMatchesAuthenticationName => "EmailMatchesAuthenticationName",
            Scheme::ThumbprintMatch => "ThumbprintMatch",
        }
    }

    /// Short metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Scheme::SubjectMatchesAuthenticationName => "subject",
            Scheme::DnsMatchesAuthenticationName => "dns",
            Scheme::UriMatchesAuthenticationName => "uri",
            Scheme::IpMatchesAuthenticationName => "ip",
            Scheme::EmailMatchesAuthenticationName => "email",
            Scheme::ThumbprintMatch => "thumbprint",
        }
    }

    /// The scheme with exactly this Azure spelling (case-sensitive, as Azure is).
    pub fn parse(s: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|scheme| scheme.as_str() == s)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Enabled,
    Disabled,
}

/// An attribute's value, decoded from the registry's storage when asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Int(i64),
    Bool(bool),
    String(String),
    Strings(Vec<String>),
}

/// One client, borrowed from the registry. The registry keeps no `Client` values: its
/// clients are fixed-size records pointing into one text arena, so 100,000 clients are a
/// handful of large allocations instead of ~10 small ones each (glibc's per-chunk overhead
/// and the holes between them were a third of the resident size).
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub name: &'a str,
    /// Original case: this is what goes upstream.
    pub authentication_name: &'a str,
    pub scheme: Scheme,
    /// Primary then secondary, for `ThumbprintMatch`; empty for the other schemes.
    pub thumbprints: &'a [Thumbprint],
    pub state: State,
    pub attributes: Attributes<'a>,
    pub description: Option<&'a str>,
}

/// A client's attributes, sorted by key, in the compact encoding `encode_attributes`
/// writes: for each, the key (length-prefixed), a tag byte and the value. Few clients have
/// more than a handful, and they are read only by `explain`, so a scan is enough.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Attributes<'a>(&'a [u8]);

impl<'a> Attributes<'a> {
    pub fn get(&self, key: &str) -> Option<AttributeValue> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, AttributeValue)> {
        let mut bytes = Bytes(self.0);
        std::iter::from_fn(move || {
            if bytes.0.is_empty() {
                return None;
            }
            let key = bytes.str();
            let value = match bytes.byte() {
                TAG_INT => AttributeValue::Int(i64::from_le_bytes(
                    bytes.take(8).try_into().expect("8 bytes"),
                )),
                TAG_BOOL => AttributeValue::Bool(bytes.byte() != 0),
                TAG_STRING => AttributeValue::String(bytes.str().to_string()),
                _ => {
                    let n = bytes.varint();
                    AttributeValue::Strings((0..n).map(|_| bytes.str().to_string()).collect())
                }
            };
            Some((key, value))
        })
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const TAG_INT: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_STRING: u8 = 2;
const TAG_STRINGS: u8 = 3;

/// A reader over encoded attributes; the encoding is ours, so a short read is a bug.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn byte(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn varint(&mut self) -> usize {
        let mut n = 0;
        let mut shift = 0;
        loop {
            let b = self.byte();
            n |= usize::from(b & 0x7f) << shift;
            if b < 0x80 {
                return n;
            }
            shift += 7;
        }
    }

    fn str(&mut self) -> &'a str {
        let n = self.varint();
        std::str::from_utf8(self.take(n)).expect("attributes hold UTF-8 written from a str")
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A range of one of the registry's arenas. u32 keeps a record at 40 bytes; the arenas
/// are bounded by `registry.max_bytes` and checked against u32 while loading.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// One client as stored: positions in the arenas instead of owned strings.
#[derive(Clone, Copy, Debug)]
struct Record {
    name: Span,
    /// The same span as `name` when the authentication name defaulted to it.
    authentication_name: Span,
    description: Span,
    attributes: Span,
    /// First of `thumbprint_count` entries in `Registry::thumbprints`.
    thumbprints: u32,
    thumbprint_count: u8,
    has_description: bool,
    scheme: Scheme,
    state: State,
}

/// The loaded clients: records in one `Vec`, their strings in one text arena, attributes in
/// one byte arena, thumbprints in one `Vec`. The index holds positions in `records`, not
/// copies of the names: a name's key is computed again when a lookup lands on it, so each
/// name is stored once.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    records: Vec<Record>,
    text: String,
    attributes: Vec<u8>,
    thumbprints: Vec<Thumbprint>,
    index: HashTable<u32>,
    /// Positions in `thumbprints` of each distinct thumbprint, for `has_thumbprint`.
    pins: HashTable<u32>,
    hasher: std::hash::RandomState,
}

/// The clients of a registry, in file order.
#[derive(Clone, Copy, Debug)]
pub struct Clients<'a>(&'a Registry);

impl<'a> Clients<'a> {
    pub fn iter(&self) -> ClientsIter<'a> {
        ClientsIter {
            registry: self.0,
            records: self.0.records.iter(),
        }
    }

    pub fn get(&self, i: usize) -> Option<Client<'a>> {
        self.0.records.get(i).map(|r| self.0.view(r))
    }

    pub fn len(&self) -> usize {
        self.0.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.records.is_empty()
    }
}

impl<'a> IntoIterator for Clients<'a> {
    type Item = Client<'a>;
    type IntoIter = ClientsIter<'a>;

    fn into_iter(self) -> ClientsIter<'a> {
        self.iter()
    }
}

pub struct ClientsIter<'a> {
    registry: &'a Registry,
    records: std::slice::Iter<'a, Record>,
}

impl<'a> Iterator for ClientsIter<'a> {
    type Item = Client<'a>;

    fn next(&mut self) -> Option<Client<'a>> {
        self.records.next().map(|r| self.registry.view(r))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.records.size_hint()
    }
}

impl ExactSizeIterator for ClientsIter<'_> {}

/// Below this many clients freeing a registry returns too little to be worth a trim.
const TRIM_AFTER_CLIENTS: usize = 1_000;

impl Drop for Registry {
    fn drop(&mut self) {
        let large = self.records.len() >= TRIM_AFTER_CLIENTS;
        // Freed here rather than after `drop` returns, so that the trim below sees them.
        self.records = Vec::new();
        self.text = String::new();
        self.attributes = Vec::new();
        self.thumbprints = Vec::new();
        self.index = HashTable::new();
        self.pins = HashTable::new();
        if large {
            // The previous generation after a reload: give its pages back to the OS now
            // rather than keep them in this thread's arena (see memory.rs for the numbers).
            crate::trust::memory::release_free_memory();
        }
    }
}

/// The one key authentication names and client names are compared and indexed by
/// (SPEC §7 "Names"): a name that parses as an IP address is that address, so
/// `2001:0db8:0:0:0:0:0:7` and `2001:db8::7` are one name; any other name is its text with
/// ASCII letters lowercased and every other character compared exactly. No Unicode case
/// mapping: it would make `\u{212A}iosk` (Kelvin sign) and `kiosk` one name, and its
/// tables change between Unicode versions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NameKey<'a> {
    Ip(IpAddr),
    Text(Cow<'a, str>),
}

pub fn name_key(name: &str) -> NameKey<'_> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return NameKey::Ip(ip);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        NameKey::Text(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        NameKey::Text(Cow::Borrowed(name))
    }
}

impl NameKey<'_> {
    /// Whether `name` has this key, without building its key: a lookup compares a stored
    /// name this way, so the index needs no copy of it.
    fn is_key_of(&self, name: &str) -> bool {
        match self {
            NameKey::Ip(ip) => name.parse::<IpAddr>().is_ok_and(|a| a == *ip),
            // Changing the case of ASCII letters never makes a non-address an address.
            NameKey::Text(text) => name.eq_ignore_ascii_case(text),
        }
    }

    /// How two names with this key were found equal, for the duplicate error.
    fn compared(&self) -> &'static str {
        match self {
            NameKey::Ip(_) => "compared as IP addresses",
            NameKey::Text(_) => "compared ignoring case",
        }
    }
}

/// Which entry of the file an error is about. `index` is the 0-based array position
/// (as in `jq '.[3]'`); `name` is its `name` when it has a readable one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRef {
    pub index: usize,
    pub name: Option<String>,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "entry {} ({name:?})", self.index),
            None => write!(f, "entry {}", self.index),
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

impl Registry {
    /// Reads the file as `Trust::load` does. A file over `max_bytes` is refused from its
    /// metadata, before any of it is read, so a wrong file can't exhaust memory.
    pub fn load(path: &Path, max_bytes: u64) -> Result<Registry, RegistryError> {
        let read_err = |source| RegistryError::Read {
            file: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        if size > max_bytes {
            return Err(RegistryError::TooLarge {
                file: path.to_path_buf(),
                size,
                max: max_bytes,
            });
        }
        // `take`: a file that grows after the check is cut off (and fails as invalid JSON).
        let reader = BufReader::with_capacity(64 * 1024, file.take(max_bytes));
        Registry::from_reader(reader, path).map_err(|e| match e {
            RegistryError::Json { source, .. } if source.is_io() => RegistryError::Read {
                file: path.to_path_buf(),
                source: source.into(),
            },
            e => e,
        })
    }

    /// Parses and validates a whole document; the first problem refuses it, so a reload
    /// with a mistake keeps the previous registry. `source` only names the file in errors.
    pub fn from_json(json: &[u8], source: &Path) -> Result<Registry, RegistryError> {
        Registry::from_reader(json, source)
    }

    /// Streams the document: each entry is parsed into a small JSON value and turned into
    /// a `Client` at once, so the whole file is never in memory as a JSON tree (which
    /// took ~18 times the file's size).
    fn from_reader(mut reader: impl BufRead, source: &Path) -> Result<Registry, RegistryError> {
        let file = source.to_path_buf();
        let head = reader.fill_buf().map_err(|source| RegistryError::Read {
            file: file.clone(),
            source,
        })?;
        // Windows PowerShell 5 redirects `az` output as UTF-16; other editors add a BOM.
        if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
            return Err(RegistryError::Utf16 { file });
        }
        if head.starts_with(b"\xef\xbb\xbf") {
            reader.consume(3);
        }
        let mut loader = Loader {
            file: source,
            registry: Registry::default(),
            names: HashTable::new(),
            refused: None,
        };
        let mut de = serde_json::Deserializer::from_reader(reader);
        let parsed = de::Deserializer::deserialize_any(&mut de, Document(&mut loader))
            .and_then(|()| de.end());
        if let Some(refused) = loader.refused.take() {
            return Err(refused);
        }
        parsed.map_err(|source| RegistryError::Json { file, source })?;
        let mut registry = loader.registry;
        registry.records.shrink_to_fit();
        registry.text.shrink_to_fit();
        registry.attributes.shrink_to_fit();
        registry.thumbprints.shrink_to_fit();
        let Registry {
            records,
            text,
            thumbprints,
            index,
            pins,
            hasher,
            ..
        } = &mut registry;
        index.shrink_to_fit(|&i| {
            hasher.hash_one(name_key(
                &text[records[i as usize].authentication_name.range()],
            ))
        });
        pins.shrink_to_fit(|&i| hasher.hash_one(thumbprints[i as usize]));
        if registry.len() >= TRIM_AFTER_CLIENTS {
            // The per-entry JSON values were freed between the arenas' growth steps.
            crate::trust::memory::release_free_memory();
        }
        Ok(registry)
    }

    fn view(&self, r: &Record) -> Client<'_> {
        let first = r.thumbprints as usize;
        Client {
            name: &self.text[r.name.range()],
            authentication_name: &self.text[r.authentication_name.range()],
            scheme: r.scheme,
            thumbprints: &self.thumbprints[first..first + usize::from(r.thumbprint_count)],
            state: r.state,
            attributes: Attributes(&self.attributes[r.attributes.range()]),
            description: r.has_description.then(|| &self.text[r.description.range()]),
        }
    }

    /// The client with this authentication name, compared by [`name_key`].
    pub fn get(&self, authentication_name: &str) -> Option<Client<'_>> {
        let key = name_key(authentication_name);
        self.index
            .find(self.hasher.hash_one(&key), |&i| {
                key.is_key_of(&self.text[self.records[i as usize].authentication_name.range()])
            })
            .map(|&i| self.view(&self.records[i as usize]))
    }

    /// Whether any client lists this thumbprint; the TLS handshake admits such a
    /// certificate without a chain, and the client check after CONNECT decides the rest.
    pub fn has_thumbprint(&self, t: &Thumbprint) -> bool {
        self.pins
            .find(self.hasher.hash_one(t), |&i| {
                self.thumbprints[i as usize] == *t
            })
            .is_some()
    }

    pub fn clients(&self) -> Clients<'_> {
        Clients(self)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The registry being built while the document streams by.
struct Loader<'a> {
    file: &'a Path,
    registry: Registry,
    /// Client names seen so far, for their uniqueness; dropped after the load.
    names: HashTable<u32>,
    /// The rule an entry broke; serde only carries a message, so the error waits here.
    refused: Option<RegistryError>,
}

/// Appends `s` to the text arena.
fn push_text(text: &mut String, s: &str) -> Option<Span> {
    let start = u32::try_from(text.len()).ok()?;
    let len = u32::try_from(s.len()).ok()?;
    start.checked_add(len)?;
    text.push_str(s);
    Some(Span { start, len })
}

impl Loader<'_> {
    fn refuse<E: de::Error>(&mut self, error: RegistryError) -> E {
        self.refused = Some(error);
        E::custom("registry refused")
    }

    fn shape<E: de::Error>(&mut self) -> E {
        let file = self.file.to_path_buf();
        self.refuse(RegistryError::Shape { file })
    }

    fn add(&mut self, entry: &Value) -> Result<(), RegistryError> {
        let index = self.registry.records.len();
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
            },
            prefix: "",
        };
        let name_of = |i: u32| &text[records[i as usize].name.range()];
        // Array position equals position in `records`: any error stops the load.
        let other = |i: u32| EntryRef {
            index: i as usize,
            name: Some(name_of(i).to_string()),
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
        let position = u32::try_from(index).map_err(|_| too_large())?;
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
struct Document<'l, 'a>(&'l mut Loader<'a>);

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
        entry: EntryRef { index, name: None },
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
#[cfg(test)]
mod tests;
