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
use serde::de;

use crate::trust::cert::Thumbprint;

mod error;
mod load;

pub use self::error::{EntryError, EntryRef, Problem, RegistryError};
pub use self::load::DEFAULT_MAX_BYTES;
use self::load::{Document, Loader};

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
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl Registry {
    /// Reads the file as `Trust::load` does. A file over `max_bytes` is refused from its
    /// metadata, before any of it is read, so a wrong file can't exhaust memory.
    pub fn load(path: &Path, max_bytes: u64) -> Result<Registry, RegistryError> {
        let read_err = |file: &Path| {
            let file = file.to_path_buf();
            move |source| RegistryError::Read { file, source }
        };
        // A directory: every `*.json` in it, in name order, is one list (SPEC §13: several
        // ConfigMaps projected into one folder); the size cap counts them together.
        let files = registry_files(path).map_err(read_err(path))?;
        let mut total = 0u64;
        for f in &files {
            total += std::fs::metadata(f).map_err(read_err(f))?.len();
        }
        if total > max_bytes {
            return Err(RegistryError::TooLarge {
                file: path.to_path_buf(),
                size: total,
                max: max_bytes,
            });
        }
        let mut loader = Loader::new(path);
        for f in &files {
            let file = std::fs::File::open(f).map_err(read_err(f))?;
            // `take`: a file that grows after the check is cut off (and fails as invalid JSON).
            let reader = BufReader::with_capacity(64 * 1024, file.take(max_bytes));
            loader.next_file(f);
            stream(&mut loader, reader, f).map_err(|e| match e {
                RegistryError::Json { source, .. } if source.is_io() => RegistryError::Read {
                    file: f.to_path_buf(),
                    source: source.into(),
                },
                e => e,
            })?;
        }
        Ok(loader.finish())
    }

    /// Parses and validates a whole document; the first problem refuses it, so a reload
    /// with a mistake keeps the previous registry. `source` only names the file in errors.
    pub fn from_json(json: &[u8], source: &Path) -> Result<Registry, RegistryError> {
        let mut loader = Loader::new(source);
        stream(&mut loader, json, source)?;
        Ok(loader.finish())
    }
}

/// The files a registry path names: itself, or a directory's `*.json` files in name order
/// (names starting with `.` left out: Kubernetes keeps its `..data` links there).
pub fn registry_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json") && !name.starts_with('.') && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Streams one document into the registry being built: each entry is parsed into a small
/// JSON value and turned into a client at once, so no file is ever in memory as a JSON
/// tree (which took ~18 times the file's size).
fn stream(
    loader: &mut Loader<'_>,
    mut reader: impl BufRead,
    source: &Path,
) -> Result<(), RegistryError> {
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
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed =
        de::Deserializer::deserialize_any(&mut de, Document(loader)).and_then(|()| de.end());
    if let Some(refused) = loader.refused.take() {
        return Err(refused);
    }
    parsed.map_err(|source| RegistryError::Json { file, source })
}

impl Loader<'_> {
    /// The registry as loaded: arenas trimmed, tables shrunk.
    fn finish(self) -> Registry {
        let mut registry = self.registry;
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
        registry
    }
}

impl Registry {
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

#[cfg(test)]
mod tests;
