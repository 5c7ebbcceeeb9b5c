//! Azure Event Grid's authorization model (SPEC §11): which topics a client may publish
//! to and subscribe to, decided from its authentication name and attributes. Pure: the
//! relay, `explain` and the reload watcher call in; nothing here does I/O except
//! [`Authz::load`] reading its three files.
//!
//! - A **client group** is a query over a client's facts ([`query`]); `$all` is built in.
//! - A **topic space** is up to 10 topic templates, MQTT filters with client variables
//!   ([`topics`]).
//! - A **permission binding** lets one client group publish to, or subscribe to, one
//!   topic space.
//!
//! A client may do what any binding of any of its groups allows; nothing else. At CONNECT
//! the caller computes the client's [`ClientPermissions`] once (queries evaluated,
//! templates substituted), and every PUBLISH and SUBSCRIBE is checked against that
//! without allocating. After a reload, a session whose [`ClientPermissions::fingerprint`]
//! changed is the one to disconnect, as Azure does.
//!
//! # The three files
//!
//! Each is what `az eventgrid namespace client-group list`, `topic-space list` and
//! `permission-binding list` print: a JSON array, fields at the top. ARM's shape is read
//! too: `{"value": [...]}` around the array, and each entry's fields under `properties`.
//! Other fields (`id`, `type`, `provisioningState`, `systemData`, …) are ignored.
//!
//! `client-groups.json`:
//! ```json
//! [
//!   {
//!     "name": "$all",
//!     "description": "Built in: every client"
//!   },
//!   {
//!     "name": "vehicles",
//!     "query": "attributes.type = 'vehicle' and attributes.year >= 2020",
//!     "provisioningState": "Succeeded",
//!     "type": "Microsoft.EventGrid/namespaces/clientGroups"
//!   },
//!   {
//!     "name": "dispatchers",
//!     "properties": {
//!       "query": "authenticationName IN ['dispatch-1', 'dispatch-2'] or attributes.roles = 'dispatch'"
//!     }
//!   }
//! ]
//! ```
//!
//! `topic-spaces.json`:
//! ```json
//! {
//!   "value": [
//!     {
//!       "name": "vehicle-telemetry",
//!       "topicTemplates": [
//!         "vehicles/${client.authenticationName}/telemetry/#",
//!         "fleets/${client.attributes.fleet}/vehicles/${client.authenticationName}/status"
//!       ]
//!     },
//!     {
//!       "name": "all-telemetry",
//!       "topicTemplates": ["vehicles/+/telemetry/#", "fleets/#"]
//!     },
//!     {
//!       "name": "broadcasts",
//!       "topicTemplates": ["broadcast/#"]
//!     }
//!   ]
//! }
//! ```
//!
//! `permission-bindings.json`:
//! ```json
//! [
//!   {
//!     "name": "vehicles-publish-telemetry",
//!     "clientGroupName": "vehicles",
//!     "topicSpaceName": "vehicle-telemetry",
//!     "permission": "Publisher"
//!   },
//!   {
//!     "name": "dispatchers-read-telemetry",
//!     "clientGroupName": "dispatchers",
//!     "topicSpaceName": "all-telemetry",
//!     "permission": "Subscriber"
//!   },
//!   {
//!     "name": "everyone-hears-broadcasts",
//!     "clientGroupName": "$all",
//!     "topicSpaceName": "broadcasts",
//!     "permission": "Subscriber"
//!   }
//! ]
//! ```
//!
//! Here vehicle `truck-7` (attributes `type: "vehicle"`, `year: 2022`, `fleet: "north"`)
//! may publish to `vehicles/truck-7/telemetry/engine` and `fleets/north/vehicles/truck-7/status`
//! but not to `vehicles/truck-8/telemetry`, and may subscribe to `broadcast/#`;
//! `dispatch-1` may subscribe to `vehicles/+/telemetry/#` and publish nowhere.
//!
//! Load rules: names are Azure's (3–50 letters, digits, hyphens), unique ignoring case;
//! a binding naming a client group or topic space that is not in its file is an error, as
//! is a bad query (with its column), a bad template, or more than 10 templates in a space.
//! `$all` may be listed (Azure lists it) but not given a query.

pub mod query;
pub mod topics;

mod load;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

pub use load::{AuthzError, EntryAt, Kind, Problem, MAX_FILE_BYTES};

use crate::trust::registry::AttributeValue;
use query::Query;
use topics::{publish_allowed, subscribe_allowed, topic_in, valid_topic, Template};

/// The built-in client group every client is in.
pub const ALL_CLIENTS: &str = "$all";

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

/// What a client asks to do; a closed set, so it can be a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Publish, Action::Subscribe];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// A binding's permission, in Azure's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    Publisher,
    Subscriber,
}

impl Permission {
    fn allows(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Permission::Publisher, Action::Publish) | (Permission::Subscriber, Action::Subscribe)
        )
    }
}

/// Where the three lists are.
#[derive(Clone, Copy, Debug)]
pub struct Files<'a> {
    pub client_groups: &'a Path,
    pub topic_spaces: &'a Path,
    pub permission_bindings: &'a Path,
}

/// The loaded model. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct Authz {
    /// `$all` first, then the file's groups.
    groups: Vec<ClientGroup>,
    spaces: Vec<TopicSpace>,
    /// Sorted by name.
    bindings: Vec<Binding>,
}

#[derive(Debug)]
struct ClientGroup {
    name: String,
    /// `None` for `$all`.
    query: Option<Query>,
}

#[derive(Debug)]
struct TopicSpace {
    templates: Vec<Template>,
}

#[derive(Debug)]
struct Binding {
    /// Shared with every client's [`ClientPermissions`], which outlive a reload.
    name: Arc<str>,
    group: usize,
    space: usize,
    permission: Permission,
}

impl ClientGroup {
    fn contains(&self, facts: &Facts<'_>) -> bool {
        self.query.as_ref().is_none_or(|q| q.matches(facts))
    }
}

impl Authz {
    /// Reads and checks the three files.
    pub fn load(files: &Files<'_>) -> Result<Authz, AuthzError> {
        load::read(files)
    }

    /// Builds the model from the three files' text; `files` names them in errors.
    pub fn parse(
        files: &Files<'_>,
        client_groups: &str,
        topic_spaces: &str,
        permission_bindings: &str,
    ) -> Result<Authz, AuthzError> {
        load::parse(files, client_groups, topic_spaces, permission_bindings)
    }

    /// How many client groups (`$all` included), topic spaces and permission bindings
    /// were loaded, for `check`.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.groups.len(), self.spaces.len(), self.bindings.len())
    }

    /// The names of the client groups the client is in, `$all` first, in file order.
    pub fn client_groups(&self, facts: &Facts<'_>) -> Vec<&str> {
        self.groups
            .iter()
            .filter(|g| g.contains(facts))
            .map(|g| g.name.as_str())
            .collect()
    }

    /// The name of the first binding (by name) that allows the action, or `None`: denied.
    /// Evaluates the queries and templates afresh; per packet, use the client's
    /// [`ClientPermissions`] instead. The two always agree.
    pub fn decide(&self, facts: &Facts<'_>, action: Action, topic: &str) -> Option<&str> {
        let allowed = match action {
            Action::Publish => publish_allowed,
            Action::Subscribe => subscribe_allowed,
        };
        self.bindings
            .iter()
            .filter(|b| b.permission.allows(action))
            .filter(|b| self.groups[b.group].contains(facts))
            .find(|b| {
                self.spaces[b.space]
                    .templates
                    .iter()
                    .filter_map(|t| t.substitute(facts))
                    .any(|filter| allowed(&filter, topic))
            })
            .map(|b| &*b.name)
    }

    /// Everything the client may do, computed once at CONNECT.
    pub fn permissions(&self, facts: &Facts<'_>) -> ClientPermissions {
        let groups: Vec<bool> = self.groups.iter().map(|g| g.contains(facts)).collect();
        let mut publish = Vec::new();
        let mut subscribe = Vec::new();
        for binding in self.bindings.iter().filter(|b| groups[b.group]) {
            let grants = match binding.permission {
                Permission::Publisher => &mut publish,
                Permission::Subscriber => &mut subscribe,
            };
            for template in &self.spaces[binding.space].templates {
                if let Some(filter) = template.substitute(facts) {
                    grants.push(Grant {
                        binding: Arc::clone(&binding.name),
                        filter: filter.into_boxed_str(),
                    });
                }
            }
        }
        let fingerprint = fingerprint(&publish, &subscribe);
        ClientPermissions {
            publish,
            subscribe,
            fingerprint,
        }
    }
}

/// A hash of what the client may do: the set of filters per action. Binding names and
/// the order or repetition of templates do not count, so renaming a binding or moving a
/// template between spaces does not disconnect anyone; a changed filter, a group joined
/// or left, or a changed attribute value does.
fn fingerprint(publish: &[Grant], subscribe: &[Grant]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for grants in [publish, subscribe] {
        let mut filters: Vec<&str> = grants.iter().map(|g| &*g.filter).collect();
        filters.sort_unstable();
        filters.dedup();
        filters.hash(&mut hasher);
    }
    hasher.finish()
}

/// One client's permissions: each allowed filter with the binding that grants it, in
/// binding-name order. Owns its data, so it outlives the [`Authz`] it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPermissions {
    publish: Vec<Grant>,
    subscribe: Vec<Grant>,
    fingerprint: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    binding: Arc<str>,
    filter: Box<str>,
}

impl ClientPermissions {
    /// The binding that allows the action, or `None`: denied. Allocates nothing.
    pub fn decide(&self, action: Action, topic: &str) -> Option<&str> {
        let (grants, allowed): (_, fn(&str, &str) -> bool) = match action {
            // Per packet: the topic is checked once, not once per grant.
            Action::Publish if !valid_topic(topic) => return None,
            Action::Publish => (&self.publish, topic_in),
            Action::Subscribe => (&self.subscribe, subscribe_allowed),
        };
        grants
            .iter()
            .find(|g| allowed(&g.filter, topic))
            .map(|g| &*g.binding)
    }

    /// Equal for two clients (or one client before and after a reload) when they may
    /// publish and subscribe to the same filters, and different otherwise but for a 64-bit
    /// hash collision. Comparable within one process only.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The substituted filters with their bindings, for `explain`.
    pub fn grants(&self, action: Action) -> impl Iterator<Item = (&str, &str)> {
        let grants = match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
        };
        grants.iter().map(|g| (&*g.binding, &*g.filter))
    }

    /// Whether the client may do nothing at all.
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty()
    }
}

#[cfg(test)]
mod tests;
