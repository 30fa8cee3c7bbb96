//! The `tools` table: the durable copy of the registry.

use super::StoreError;
use crate::registry::{SenderConstraint, ToolEntry};
use rusqlite::{params, Connection, Row};

const INSERT: &str = "INSERT INTO tools (tool_id, name, description, resource_uri, server_id, \
     required_capabilities, max_blast_radius, requires_execution, allowed_operations, \
     allowed_targets, protocols, registered_at, updated_at, sender_constraint) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";
const SELECT_ALL: &str = "SELECT tool_id, name, description, resource_uri, server_id, \
     required_capabilities, max_blast_radius, requires_execution, allowed_operations, \
     allowed_targets, protocols, registered_at, updated_at, sender_constraint FROM tools \
     ORDER BY tool_id";
const DELETE: &str = "DELETE FROM tools WHERE tool_id = ?1";
const UPDATE: &str = "UPDATE tools SET name = ?2, description = ?3, resource_uri = ?4, \
     server_id = ?5, required_capabilities = ?6, max_blast_radius = ?7, requires_execution = ?8, \
     allowed_operations = ?9, allowed_targets = ?10, protocols = ?11, updated_at = ?12, \
     sender_constraint = ?13 WHERE tool_id = ?1 RETURNING registered_at";

/// The stored form of a tool's sender constraint: `''` for none.
fn constraint_text(t: &ToolEntry) -> &'static str {
    match t.sender_constraint {
        None => "",
        Some(SenderConstraint::Mtls) => "mtls",
        Some(SenderConstraint::Dpop) => "dpop",
    }
}

fn list_json(v: &[String]) -> String {
    serde_json::Value::from(v.to_vec()).to_string()
}

/// Insert a new tool; `StoreError::Conflict` if the `tool_id` exists.
pub fn insert(conn: &Connection, t: &ToolEntry) -> Result<(), StoreError> {
    conn.execute(
        INSERT,
        params![
            t.tool_id,
            t.name,
            t.description,
            t.resource_uri,
            t.server_id,
            list_json(&t.required_capabilities),
            t.max_blast_radius,
            t.requires_execution,
            list_json(&t.allowed_operations),
            list_json(&t.allowed_targets),
            list_json(&t.protocols),
            t.registered_at,
            t.updated_at,
            constraint_text(t),
        ],
    )?;
    Ok(())
}

/// Replace a tool's policy in place (its `registered_at` is kept); the stored `registered_at`,
/// or `None` if no such tool exists.
pub fn update(conn: &Connection, t: &ToolEntry) -> Result<Option<String>, StoreError> {
    let mut stmt = conn.prepare_cached(UPDATE)?;
    let mut rows = stmt.query(params![
        t.tool_id,
        t.name,
        t.description,
        t.resource_uri,
        t.server_id,
        list_json(&t.required_capabilities),
        t.max_blast_radius,
        t.requires_execution,
        list_json(&t.allowed_operations),
        list_json(&t.allowed_targets),
        list_json(&t.protocols),
        t.updated_at,
        constraint_text(t),
    ])?;
    match rows.next()? {
        Some(row) => Ok(Some(row.get(0)?)),
        None => Ok(None),
    }
}

/// Delete a tool; whether it existed.
pub fn delete(conn: &Connection, tool_id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(DELETE, params![tool_id])? > 0)
}

pub fn all(conn: &Connection) -> Result<Vec<ToolEntry>, StoreError> {
    let mut stmt = conn.prepare(SELECT_ALL)?;
    let rows = stmt.query_map([], raw)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(decode))
        .collect()
}

type RawRow = (ToolEntry, [String; 5]);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        ToolEntry {
            tool_id: r.get(0)?,
            name: r.get(1)?,
            description: r.get(2)?,
            resource_uri: r.get(3)?,
            server_id: r.get(4)?,
            required_capabilities: Vec::new(),
            max_blast_radius: r.get(6)?,
            requires_execution: r.get(7)?,
            allowed_operations: Vec::new(),
            allowed_targets: Vec::new(),
            protocols: Vec::new(),
            sender_constraint: None,
            registered_at: r.get(11)?,
            updated_at: r.get(12)?,
        },
        [r.get(5)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(13)?],
    ))
}

fn decode(
    (mut t, [caps, ops, targets, protocols, constraint]): RawRow,
) -> Result<ToolEntry, StoreError> {
    let list = |s: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(s).map_err(|_| StoreError::Corrupt("tool list"))
    };
    t.required_capabilities = list(&caps)?;
    t.allowed_operations = list(&ops)?;
    t.allowed_targets = list(&targets)?;
    t.protocols = list(&protocols)?;
    t.sender_constraint = SenderConstraint::parse(Some(&constraint))
        .map_err(|_| StoreError::Corrupt("tool sender_constraint"))?;
    Ok(t)
}
