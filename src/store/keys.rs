//! The `signing_keys` table: every token-signing key toolgate has had, with its public half,
//! the dates of its life, and its private half while the database keeps it.
//!
//! A key signs from `signs_from` until `retired_at` (open-ended while NULL), is published from
//! its creation until `not_after`, and is retired after that: its private half is overwritten
//! (an empty `pkcs8`), its public half stays. A key kept in `--signing-key-file` has an empty
//! `pkcs8` from the start.

use super::StoreError;
use rusqlite::{params, Connection, OptionalExtension};

const COLUMNS: &str = "kid, alg, pkcs8, public_jwk, created_at, signs_from, retired_at, not_after";

/// A stored key. `pkcs8` is empty when the private half is not in the database (kept in a
/// file, or overwritten at retirement).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub pkcs8: Vec<u8>,
    /// The public JWK as JSON; empty in rows written before version 10 (derived at load).
    pub public_jwk: String,
    pub created_at: i64,
    /// When it starts signing (`created_at` for rows written before version 10).
    pub signs_from: i64,
    /// When it stops signing: its successor's `signs_from`; `None` while it has none.
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS: the last token it signed has expired (plus leeway).
    pub not_after: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_half_stored", &!self.pkcs8.is_empty())
            .field("signs_from", &self.signs_from)
            .field("retired_at", &self.retired_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let created_at: i64 = r.get(4)?;
    Ok(StoredKey {
        kid: r.get(0)?,
        alg: r.get(1)?,
        pkcs8: r.get(2)?,
        public_jwk: r.get(3)?,
        created_at,
        signs_from: r.get::<_, Option<i64>>(5)?.unwrap_or(created_at),
        retired_at: r.get(6)?,
        not_after: r.get(7)?,
    })
}

/// Every key, oldest first (by when it signs, then when it was made).
pub fn all(conn: &Connection) -> Result<Vec<StoredKey>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM signing_keys ORDER BY coalesce(signs_from, created_at), created_at, kid"
    ))?;
    let rows = stmt.query_map([], read_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One key by kid.
pub fn get(conn: &Connection, kid: &str) -> Result<Option<StoredKey>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM signing_keys WHERE kid = ?1"),
            [kid],
            read_row,
        )
        .optional()?)
}

pub fn insert(conn: &Connection, key: &StoredKey) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO signing_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            key.kid,
            key.alg,
            key.pkcs8,
            key.public_jwk,
            key.created_at,
            key.signs_from,
            key.retired_at,
            key.not_after
        ],
    )?;
    Ok(())
}

/// Record the public half of a key written before version 10.
pub fn set_public_jwk(conn: &Connection, kid: &str, jwk: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE signing_keys SET public_jwk = ?2 WHERE kid = ?1",
        params![kid, jwk],
    )?;
    Ok(())
}

/// The key with no successor yet stops signing at `at` and leaves the JWKS at `not_after`.
/// The number of keys changed (one, unless the table was empty).
pub fn end_open(conn: &Connection, at: i64, not_after: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE signing_keys SET retired_at = ?1, not_after = ?2 WHERE retired_at IS NULL",
        params![at, not_after],
    )?)
}

/// Key `kid` stops signing at `at` (if it signs later than that: never) and leaves the JWKS at
/// `not_after`.
pub fn end(conn: &Connection, kid: &str, at: i64, not_after: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE signing_keys SET retired_at = ?2, not_after = ?3, \
         signs_from = min(coalesce(signs_from, created_at), ?2) WHERE kid = ?1",
        params![kid, at, not_after],
    )?;
    Ok(())
}

/// Key `kid` has no successor any more (the one it had was withdrawn): it signs on.
pub fn reopen(conn: &Connection, kid: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE signing_keys SET retired_at = NULL, not_after = NULL WHERE kid = ?1",
        params![kid],
    )?;
    Ok(())
}

/// Overwrite the private halves of `kids` held in the database (`secure_delete`: the bytes are
/// zeroed, not only unlinked). Their public halves stay.
pub fn forget_private(conn: &mut Connection, kids: &[String]) -> Result<(), StoreError> {
    if kids.is_empty() {
        return Ok(());
    }
    conn.pragma_update(None, "secure_delete", true)?;
    let done = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for kid in kids {
            tx.execute(
                "UPDATE signing_keys SET pkcs8 = x'' WHERE kid = ?1",
                params![kid],
            )?;
        }
        tx.commit()?;
        Ok::<_, StoreError>(())
    })();
    conn.pragma_update(None, "secure_delete", false)?;
    done?;
    // The zeroed pages reach the database file now; the log's older frames are overwritten as
    // it is reused. PASSIVE: never waits for the audit writer, which may have a batch open.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
    Ok(())
}

/// Overwrite every private half held in the database and empty the write-ahead log, so that the
/// database file keeps no copy: for keys kept in their own files. `Err` if the log could not be
/// emptied (a reader kept it: its old pages may still hold a key).
pub fn forget_all_private(conn: &mut Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "secure_delete", true)?;
    let done = conn
        .execute(
            "UPDATE signing_keys SET pkcs8 = x'' WHERE length(pkcs8) > 0",
            [],
        )
        .map_err(StoreError::from);
    // Always, so that a start after one whose checkpoint failed still empties the log.
    let busy = done.as_ref().ok().map(|_| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    conn.pragma_update(None, "secure_delete", false)?;
    done?;
    match busy {
        Some(Ok(0)) | None => Ok(()),
        Some(Ok(_)) => Err(StoreError::Database(
            "the write-ahead log could not be emptied after removing the signing key".into(),
        )),
        Some(Err(e)) => Err(e.into()),
    }
}
