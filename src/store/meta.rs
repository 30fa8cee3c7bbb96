//! The `meta` table: facts about this database, such as its stable `unit_id`.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

const SELECT: &str = "SELECT value FROM meta WHERE key = ?1";
const INSERT: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)";

/// The value stored under `key`, or `make()` stored and returned if there is none yet.
pub fn get_or_insert(
    conn: &mut Connection,
    key: &str,
    make: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing: Option<String> = tx
        .query_row(SELECT, params![key], |r| r.get(0))
        .optional()?;
    let value = match existing {
        Some(v) => v,
        None => {
            let v = make();
            tx.execute(INSERT, params![key, v])?;
            v
        }
    };
    tx.commit()?;
    Ok(value)
}
