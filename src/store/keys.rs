//! The `signing_keys` table: the active token-signing key and retired ones still published.

use super::StoreError;
use rusqlite::{params, Connection};

const INSERT: &str =
    "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES (?1, ?2, ?3, ?4)";
const SELECT_LIVE: &str = "SELECT kid, alg, pkcs8, retired_at FROM signing_keys \
     WHERE retired_at IS NULL OR not_after > ?1 ORDER BY created_at DESC";

/// A stored key: PKCS#8 private key bytes and whether it is still the active one.
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub pkcs8: Vec<u8>,
    pub active: bool,
}

/// Keys whose tokens may still be live at `now`: the active one first.
pub fn live(conn: &Connection, now: i64) -> Result<Vec<StoredKey>, StoreError> {
    let mut stmt = conn.prepare(SELECT_LIVE)?;
    let rows = stmt.query_map(params![now], |r| {
        Ok(StoredKey {
            kid: r.get(0)?,
            alg: r.get(1)?,
            pkcs8: r.get(2)?,
            active: r.get::<_, Option<i64>>(3)?.is_none(),
        })
    })?;
    let mut keys: Vec<StoredKey> = rows.collect::<Result<_, _>>()?;
    keys.sort_by_key(|k| !k.active);
    Ok(keys)
}

pub fn insert(
    conn: &Connection,
    kid: &str,
    alg: &str,
    pkcs8: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(INSERT, params![kid, alg, pkcs8, now])?;
    Ok(())
}
