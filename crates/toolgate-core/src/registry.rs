//! The tool registry: what a tool is (`ToolEntry`), how a registration is validated, and the
//! in-memory index every verify reads (the SQLite table is the durable copy).

use crate::{blast, resource};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Longest `tool_id` or `server_id`, in bytes.
pub const MAX_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 4096;
const MAX_LIST_LEN: usize = 256;
const MAX_ITEM_LEN: usize = 256;
/// The protocols a tool may be reached over; a registration naming none gets `mcp`.
pub const PROTOCOLS: [&str; 3] = ["mcp", "http", "a2a"];

/// A registered tool, as stored and as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolEntry {
    /// The registry key, matched against [`crate::verify::Target::Tool`]; see [`valid_id`].
    pub tool_id: String,
    /// The display name, which is also how an MCP `tools/call` may name the tool.
    pub name: String,
    /// Free text for operators; never consulted by a check.
    pub description: String,
    /// Canonical RFC 8707 resource indicator; empty means the `tool_id` is the resource.
    pub resource_uri: String,
    /// The MCP server the tool belongs to; scopes [`crate::verify::Target::Server`] requests.
    pub server_id: String,
    /// Capabilities the token's `caps` claim must all contain (check 8).
    pub required_capabilities: Vec<String>,
    /// The widest `level[:scope]` a token's `blast_radius` may claim (check 9); empty: no limit.
    pub max_blast_radius: String,
    /// Calls need an execution-bound token: `exec_act`, `inp_hash`, a single-use `nonce`
    /// (check 12).
    pub requires_execution: bool,
    /// The `exec_act` values an execution-bound token may carry; empty allows any.
    pub allowed_operations: Vec<String>,
    /// The `target` values an execution-bound token may carry; empty allows any.
    pub allowed_targets: Vec<String>,
    /// Protocols the tool is served over, a subset of [`PROTOCOLS`].
    pub protocols: Vec<String>,
    /// How a token for this tool must be bound to its sender (check `mtls`); `None`: a bearer
    /// token will do. Absent in a list from an older toolgate, which means `None`.
    #[serde(default)]
    pub sender_constraint: Option<SenderConstraint>,
    /// When the tool was first registered (RFC 3339, set by the server).
    pub registered_at: String,
    /// When the registration last changed (RFC 3339, set by the server).
    pub updated_at: String,
}

/// A proof-of-possession method a tool requires of the tokens presented to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderConstraint {
    /// RFC 8705 §3: the token's `cnf.x5t#S256` must be the thumbprint of the client
    /// certificate of the caller's mutual-TLS connection.
    Mtls,
    /// RFC 9449: the token's `cnf.jkt` must be the thumbprint of the key that signed the
    /// request's DPoP proof.
    Dpop,
}

impl SenderConstraint {
    /// The registration value: `"mtls"`, or `None` (a bearer token) for absent, `null` or
    /// empty; anything else is refused with a sentence naming the field.
    pub fn parse(value: Option<&str>) -> Result<Option<Self>, String> {
        match value {
            None | Some("") => Ok(None),
            Some("mtls") => Ok(Some(Self::Mtls)),
            Some("dpop") => Ok(Some(Self::Dpop)),
            Some(_) => Err("sender_constraint must be \"mtls\", \"dpop\" or null".into()),
        }
    }
}

impl ToolEntry {
    /// Does a token for this tool need to be bound to the caller's client certificate?
    pub fn requires_mtls(&self) -> bool {
        self.sender_constraint == Some(SenderConstraint::Mtls)
    }

    /// Does a token for this tool need to be DPoP-bound (RFC 9449)?
    pub fn requires_dpop(&self) -> bool {
        self.sender_constraint == Some(SenderConstraint::Dpop)
    }

    /// The audience a token for this tool must carry.
    pub fn resource(&self) -> &str {
        if self.resource_uri.is_empty() {
            &self.tool_id
        } else {
            &self.resource_uri
        }
    }
}

/// A registration request body. Unknown fields are refused; the server-set timestamps are
/// tolerated (so a listed entry can be posted back) and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolInput {
    /// Required; optional here only so that its absence gets a sentence, not a serde error.
    pub tool_id: Option<String>,
    /// See [`ToolEntry::name`].
    #[serde(default)]
    pub name: String,
    /// See [`ToolEntry::description`].
    #[serde(default)]
    pub description: String,
    /// Any RFC 8707 resource URI; stored canonicalized.
    #[serde(default)]
    pub resource_uri: String,
    /// See [`ToolEntry::server_id`].
    #[serde(default)]
    pub server_id: String,
    /// See [`ToolEntry::required_capabilities`]; duplicates are dropped.
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    /// See [`ToolEntry::max_blast_radius`]; must parse as `level[:scope]`.
    #[serde(default)]
    pub max_blast_radius: String,
    /// See [`ToolEntry::requires_execution`].
    #[serde(default)]
    pub requires_execution: bool,
    /// See [`ToolEntry::allowed_operations`]; duplicates are dropped.
    #[serde(default)]
    pub allowed_operations: Vec<String>,
    /// See [`ToolEntry::allowed_targets`]; duplicates are dropped.
    #[serde(default)]
    pub allowed_targets: Vec<String>,
    /// See [`ToolEntry::protocols`]; empty means `["mcp"]`.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// See [`ToolEntry::sender_constraint`]: `"mtls"`, or absent / `null` for none.
    #[serde(default)]
    pub sender_constraint: Option<String>,
    #[serde(default, rename = "registered_at")]
    _registered_at: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<serde::de::IgnoredAny>,
}

/// A tool identifier (also used for `server_id`): 1–128 chars of `[A-Za-z0-9._:-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn valid_list(items: &[String]) -> bool {
    items.len() <= MAX_LIST_LEN
        && items.iter().all(|s| {
            !s.is_empty() && s.len() <= MAX_ITEM_LEN && s.bytes().all(|b| b.is_ascii_graphic())
        })
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items.retain(|s| seen.insert(s.clone()));
    items
}

impl ToolInput {
    /// Validate into a `ToolEntry` stamped with `now` (RFC 3339). The error is one sentence
    /// naming the field, safe to return to the client.
    pub fn validate(self, now: &str) -> Result<ToolEntry, String> {
        let tool_id = self.tool_id.unwrap_or_default();
        if !valid_id(&tool_id) {
            return Err("tool_id must be 1-128 characters of A-Z a-z 0-9 . _ : -".into());
        }
        let resource_uri = if self.resource_uri.is_empty() {
            String::new()
        } else {
            resource::canonicalize(&self.resource_uri).map_err(|e| e.to_string())?
        };
        if !self.server_id.is_empty() && !valid_id(&self.server_id) {
            return Err("server_id must be 1-128 characters of A-Z a-z 0-9 . _ : -".into());
        }
        // Characters, not bytes: the limits a client reads in the API's document.
        if self.name.chars().count() > MAX_ITEM_LEN
            || self.description.chars().count() > MAX_TEXT_LEN
        {
            return Err("name or description is too long".into());
        }
        if !valid_list(&self.required_capabilities) {
            return Err(
                "required_capabilities must be a list of non-empty printable strings".into(),
            );
        }
        if !valid_list(&self.allowed_operations) || !valid_list(&self.allowed_targets) {
            return Err(
                "allowed_operations and allowed_targets must be lists of non-empty printable strings"
                    .into(),
            );
        }
        if !self.max_blast_radius.is_empty() && blast::parse(&self.max_blast_radius).is_none() {
            return Err("max_blast_radius must be level[:scope] with level one of function, service, namespace, cluster, workspace, trust_domain, fabric".into());
        }
        let mut protocols = dedup(self.protocols);
        if protocols.is_empty() {
            protocols.push("mcp".into());
        }
        if !protocols.iter().all(|p| PROTOCOLS.contains(&p.as_str())) {
            return Err("protocols may only contain mcp, http, a2a".into());
        }
        let sender_constraint = SenderConstraint::parse(self.sender_constraint.as_deref())?;
        Ok(ToolEntry {
            tool_id,
            name: self.name,
            description: self.description,
            resource_uri,
            server_id: self.server_id,
            required_capabilities: dedup(self.required_capabilities),
            max_blast_radius: self.max_blast_radius,
            requires_execution: self.requires_execution,
            allowed_operations: dedup(self.allowed_operations),
            allowed_targets: dedup(self.allowed_targets),
            protocols,
            sender_constraint,
            registered_at: now.to_string(),
            updated_at: now.to_string(),
        })
    }
}

/// The in-memory index: tools by id, and the tools naming each resource.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: HashMap<String, Arc<ToolEntry>>,
    by_resource: HashMap<String, Vec<Arc<ToolEntry>>>,
}

impl Registry {
    /// An index of `entries` (the daemon's load from SQLite); a later duplicate `tool_id`
    /// replaces an earlier one.
    pub fn from_entries(entries: Vec<ToolEntry>) -> Self {
        let mut r = Self::default();
        for e in entries {
            r.insert(e);
        }
        r
    }

    /// The tool registered under `tool_id`.
    pub fn get(&self, tool_id: &str) -> Option<Arc<ToolEntry>> {
        self.by_id.get(tool_id).cloned()
    }

    /// A tool by its MCP name: its `tool_id`, or else the one tool whose display `name` it is
    /// (`None` when no tool, or more than one, has that name: an ambiguous name never picks).
    pub fn find(&self, name: &str) -> Option<Arc<ToolEntry>> {
        if let Some(t) = self.get(name) {
            return Some(t);
        }
        let mut named = self.by_id.values().filter(|t| t.name == name);
        match (named.next(), named.next()) {
            (Some(t), None) => Some(t.clone()),
            _ => None,
        }
    }

    /// How many tools are registered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Is no tool registered?
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Is `resource` (canonical) the audience of at least one registered tool?
    pub fn has_resource(&self, resource: &str) -> bool {
        self.by_resource.contains_key(resource)
    }

    /// Every tool whose audience is `resource` (several tools may share one).
    pub fn with_resource(&self, resource: &str) -> Vec<Arc<ToolEntry>> {
        self.by_resource.get(resource).cloned().unwrap_or_default()
    }

    /// Register `entry`, replacing any tool with the same `tool_id` (and moving it to its
    /// new resource).
    pub fn insert(&mut self, entry: ToolEntry) {
        self.remove(&entry.tool_id.clone());
        let entry = Arc::new(entry);
        self.by_resource
            .entry(entry.resource().to_string())
            .or_default()
            .push(entry.clone());
        self.by_id.insert(entry.tool_id.clone(), entry);
    }

    /// Unregister a tool, returning it if it was there.
    pub fn remove(&mut self, tool_id: &str) -> Option<Arc<ToolEntry>> {
        let old = self.by_id.remove(tool_id)?;
        if let Some(list) = self.by_resource.get_mut(old.resource()) {
            list.retain(|t| t.tool_id != tool_id);
            if list.is_empty() {
                self.by_resource.remove(old.resource());
            }
        }
        Some(old)
    }

    /// Every tool, sorted by `tool_id`, optionally only those speaking `protocol`.
    pub fn list(&self, protocol: Option<&str>) -> Vec<Arc<ToolEntry>> {
        let mut v: Vec<_> = self
            .by_id
            .values()
            .filter(|t| protocol.is_none_or(|p| t.protocols.iter().any(|x| x == p)))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.tool_id.cmp(&b.tool_id));
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn input(json: &str) -> Result<ToolEntry, String> {
        serde_json::from_str::<ToolInput>(json)
            .map_err(|e| e.to_string())?
            .validate("2026-01-01T00:00:00Z")
    }

    #[test]
    fn validates_and_canonicalises() {
        let t = input(r#"{"tool_id":"code-search","resource_uri":"HTTPS://MCP.Example.com/tools/code-search"}"#).unwrap();
        assert_eq!(t.resource_uri, "https://mcp.example.com/tools/code-search");
        assert_eq!(t.protocols, vec!["mcp"]);
        let t = input(r#"{"tool_id":"bare"}"#).unwrap();
        assert_eq!(t.resource(), "bare");
    }

    #[test]
    fn rejects_bad_fields() {
        assert!(input(r#"{"resource_uri":"https://a/"}"#).is_err());
        assert!(input(r#"{"tool_id":"a b"}"#).is_err());
        assert!(input(&format!(r#"{{"tool_id":"{}"}}"#, "a".repeat(129))).is_err());
        assert!(input(r#"{"tool_id":"a","resource_uri":"not a uri"}"#).is_err());
        assert!(input(r#"{"tool_id":"a","max_blast_radius":"galaxy"}"#).is_err());
        assert!(input(r#"{"tool_id":"a","protocols":["smtp"]}"#).is_err());
        assert!(input(r#"{"tool_id":"a","required_capabilities":[""]}"#).is_err());
        assert!(input(r#"{"tool_id":"a","surprise":1}"#).is_err());
        assert!(input(r#"{"tool_id":7}"#).is_err());
    }

    #[test]
    fn sender_constraint_is_mtls_or_nothing() {
        let t = input(r#"{"tool_id":"a","sender_constraint":"mtls"}"#).unwrap();
        assert!(t.requires_mtls());
        assert_eq!(
            serde_json::to_value(&t).unwrap().get("sender_constraint"),
            Some(&serde_json::json!("mtls"))
        );
        for none in [
            r#"{"tool_id":"a"}"#,
            r#"{"tool_id":"a","sender_constraint":null}"#,
        ] {
            let t = input(none).unwrap();
            assert_eq!(t.sender_constraint, None);
            assert!(!t.requires_mtls());
        }
        let dpop = input(r#"{"tool_id":"a","sender_constraint":"dpop"}"#).unwrap();
        assert!(dpop.requires_dpop() && !dpop.requires_mtls());
        assert_eq!(
            input(r#"{"tool_id":"a","sender_constraint":"MTLS"}"#).unwrap_err(),
            "sender_constraint must be \"mtls\", \"dpop\" or null"
        );
        assert!(input(r#"{"tool_id":"a","sender_constraint":1}"#).is_err());
        // A list from an older toolgate has no such member: no constraint.
        let old: ToolEntry = serde_json::from_value(serde_json::json!({
            "tool_id": "a", "name": "", "description": "", "resource_uri": "", "server_id": "",
            "required_capabilities": [], "max_blast_radius": "", "requires_execution": false,
            "allowed_operations": [], "allowed_targets": [], "protocols": ["mcp"],
            "registered_at": "", "updated_at": ""}))
        .unwrap();
        assert_eq!(old.sender_constraint, None);
    }

    #[test]
    fn index_tracks_shared_resources() {
        let mut r = Registry::default();
        let a = input(r#"{"tool_id":"a","resource_uri":"https://s/mcp"}"#).unwrap();
        let b = input(r#"{"tool_id":"b","resource_uri":"https://s/mcp"}"#).unwrap();
        r.insert(a);
        r.insert(b);
        assert!(r.has_resource("https://s/mcp"));
        r.remove("a");
        assert!(r.has_resource("https://s/mcp"));
        r.remove("b");
        assert!(!r.has_resource("https://s/mcp"));
        assert!(r.is_empty());
    }
}
