//! Azure Event Grid's authorization model: client groups, topic spaces, permission bindings.

pub mod query;
pub mod topics;

use crate::trust::registry::AttributeValue;

/// What authorization knows about a client: its authentication name (original case) and
/// its attributes, sorted by key, as the registry or a token gave them.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub authentication_name: &'a str,
    pub attributes: &'a [(String, AttributeValue)],
}

impl<'a> Facts<'a> {
    pub fn new(authentication_name: &'a str, attributes: &'a [(String, AttributeValue)]) -> Self {
        Facts {
            authentication_name,
            attributes,
        }
    }

    /// The attribute named exactly `key`. A scan rather than a binary search, so a caller
    /// that forgot to sort cannot make an attribute silently disappear; clients have few.
    pub fn attribute(&self, key: &str) -> Option<&'a AttributeValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}
