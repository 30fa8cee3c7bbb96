//! The `meta` table: facts about this database, such as its stable `unit_id`.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

/// The `meta` key of the DPoP horizon: the latest `iat` of a proof this database's daemon may
/// have accepted (see `toolgate_core::dpop::Horizon`).
pub const DPOP_HORIZON: &str = "dpop_horizon";

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

/// The integer stored under `key`, if any (a value that is not one is corrupt).
pub fn get_i64(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    let value: Option<String> = conn
        .query_row(SELECT, params![key], |r| r.get(0))
        .optional()?;
    value
        .map(|v| v.parse().map_err(|_| StoreError::Corrupt("meta integer")))
        .transpose()
}

/// Store `value` under `key` unless a larger integer is there already (never lowers it).
pub fn raise_i64(conn: &Connection, key: &str, value: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET \
         value = CAST(max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)",
        params![key, value.to_string()],
    )?;
    Ok(())
}
