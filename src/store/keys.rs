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

/// Remove every stored private key, overwriting their bytes (`secure_delete`) and emptying the
/// write-ahead log, so that the database file keeps no copy: for a key kept in its own file.
/// The kids removed.
pub fn remove_all(conn: &mut Connection) -> Result<Vec<String>, StoreError> {
    conn.pragma_update(None, "secure_delete", true)?;
    let removed = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let kids = {
            let mut stmt = tx.prepare("SELECT kid FROM signing_keys ORDER BY created_at")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.execute("DELETE FROM signing_keys", [])?;
        tx.commit()?;
        Ok::<_, StoreError>(kids)
    })();
    // Always, so that a start after one whose checkpoint failed still empties the log.
    let busy = removed.as_ref().ok().map(|_| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    conn.pragma_update(None, "secure_delete", false)?;
    match busy {
        Some(Ok(0)) | None => removed,
        // A reader kept the log: its old pages may still hold the key.
        Some(Ok(_)) => Err(StoreError::Database(
            "the write-ahead log could not be emptied after removing the signing key".into(),
        )),
        Some(Err(e)) => Err(e.into()),
    }
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
