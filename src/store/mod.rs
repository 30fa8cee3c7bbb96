//! The SQLite store: one connection owned by one thread, so blocking database work never runs
//! on the async workers. Callers send closures and await the answer.

pub mod audit;
pub mod keys;
pub mod meta;
pub mod revocations;
pub mod tools;

use rusqlite::Connection;
use std::fmt;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The schema, applied to a new database.
pub const SCHEMA: &str = include_str!("../../schema.sql");
/// `PRAGMA user_version` after `SCHEMA` is applied; bump with every migration step.
/// 1: meta, signing_keys, tools. 2: revocations, signal_events. 3: audit_log, audit_head.
/// 4: revocations_by_expiry. 5: audit_log hashes as bytes without prev_hash, audit_runs in
/// place of its two indexes. 6: revocations unique per (format, issuer, value, source).
/// 7: audit_log.count. 8: audit_head.tag. 9: tools.sender_constraint.
/// 10: signing_keys.public_jwk and signs_from (key rotation).
pub const SCHEMA_VERSION: i64 = 10;
/// Jobs queued for the database thread before callers wait for room.
const QUEUE_DEPTH: usize = 4096;

/// A storage failure. Details are logged where they happen; the wire sees only the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The row to insert already exists (unique key).
    Conflict,
    /// SQLite failed; the detail is for the log only.
    Database(String),
    /// The database thread is gone (shutting down or crashed).
    Unavailable,
    /// The database was written by a newer toolgate.
    TooNew(i64),
    /// Stored data could not be decoded.
    Corrupt(&'static str),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict => f.write_str("row already exists"),
            Self::Database(e) => write!(f, "database error: {e}"),
            Self::Unavailable => f.write_str("database thread unavailable"),
            Self::TooNew(v) => write!(
                f,
                "database schema version {v} is newer than this toolgate ({SCHEMA_VERSION})"
            ),
            Self::Corrupt(what) => write!(f, "stored {what} could not be decoded"),
        }
    }
}
impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if f.code == rusqlite::ErrorCode::ConstraintViolation {
                return Self::Conflict;
            }
        }
        Self::Database(e.to_string())
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A cheap handle to the database thread.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::SyncSender<Job>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Open (creating if needed) the database at `path`, apply the schema, and start the
    /// database thread. The returned handle ends once every `Store` clone is dropped.
    pub fn open(path: &Path) -> Result<(Store, JoinHandle<()>), StoreError> {
        let mut conn = open_connection(path)?;
        migrate(&mut conn)?;
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("toolgate-db".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Database(format!("cannot start database thread: {e}")))?;
        Ok((Store { jobs }, thread))
    }

    /// Run `f` on the database thread and await its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        // A full queue blocks briefly; do the wait off the async workers.
        let jobs = self.jobs.clone();
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| StoreError::Unavailable)?
                    .map_err(|_| StoreError::Unavailable)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Unavailable),
        }
        rx.await.map_err(|_| StoreError::Unavailable)?
    }

    /// Run `f` on the database thread from synchronous code (start-up, tools).
    pub fn call_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.jobs.send(job).map_err(|_| StoreError::Unavailable)?;
        rx.recv().map_err(|_| StoreError::Unavailable)?
    }
}

/// Open a connection with the daemon's pragmas (WAL, synchronous=FULL), creating the file
/// owner-only if needed.
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "journal_mode is {mode}, WAL required"
        )));
    }
    // FULL: a write is on disk before its transaction returns, so an acknowledged write is durable.
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(conn)
}

/// The database holds the private signing key: create it readable by its owner only.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
        .map(drop)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))
}

/// Bring the schema up to `SCHEMA_VERSION`. `schema.sql` creates only what is missing, so
/// each rung re-applies it; a rung that alters a table adds its own statements around it.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version));
    }
    if version < SCHEMA_VERSION {
        // Versions 3 and 4 have the audit log with hex hashes, prev_hash and two indexes.
        let audit_v4 = (3..5).contains(&version);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Versions 2 to 5 have revocations unique per name only.
        let revocations_v5 = (2..6).contains(&version)
            && tx.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'revocations'",
                [],
                |r| r.get::<_, i64>(0),
            )? > 0;
        if audit_v4 {
            // The move drops prev_hash; say now if the old chain was already broken.
            match audit::verify_chain(&tx, None) {
                Ok(Ok(_)) => {}
                Ok(Err(broken)) => {
                    crate::log_warn!("the audit chain was broken before migrating it: {broken}")
                }
                Err(e) => {
                    crate::log_warn!(
                        "the audit chain could not be checked before migrating it: {e}"
                    )
                }
            }
            tx.execute_batch(AUDIT_V4_ASIDE)?;
        }
        if revocations_v5 {
            tx.execute_batch(REVOCATIONS_V5_ASIDE)?;
        }
        tx.execute_batch(SCHEMA)?;
        if audit_v4 {
            tx.execute_batch(AUDIT_V4_MOVE)?;
        }
        if revocations_v5 {
            tx.execute_batch(REVOCATIONS_V5_MOVE)?;
        }
        // Version 7: an audit log created before it has no count column (every row was one
        // event, which the column's default says).
        let has_count = has_column(&tx, "audit_log", "count")?;
        if !has_count {
            tx.execute_batch(AUDIT_V7_COUNT)?;
        }
        // Version 8: a head written before it has no tag; the audit writer tags it at start
        // (the first start with an audit key).
        let has_tag = has_column(&tx, "audit_head", "tag")?;
        if !has_tag {
            tx.execute_batch(AUDIT_V8_TAG)?;
        }
        // Version 9: tools registered before it have no sender constraint (bearer tokens).
        if !has_column(&tx, "tools", "sender_constraint")? {
            tx.execute_batch(TOOLS_V9_SENDER_CONSTRAINT)?;
        }
        // Version 10: keys stored before it have no public half of their own (derived from the
        // private half at load) and sign from their creation.
        if !has_column(&tx, "signing_keys", "public_jwk")? {
            tx.execute_batch(KEYS_V10_ROTATION)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(())
}

/// Whether `table` has a column named `column` (a layout told by its columns, not by
/// `user_version`, which an editor of the file could change).
pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?)
}

/// Version 7: the count of events an audit row stands for.
const AUDIT_V7_COUNT: &str = "ALTER TABLE audit_log ADD COLUMN count INTEGER NOT NULL DEFAULT 1;";

/// Version 9: the sender constraint of a tool's tokens.
const TOOLS_V9_SENDER_CONSTRAINT: &str =
    "ALTER TABLE tools ADD COLUMN sender_constraint TEXT NOT NULL DEFAULT '';";
/// Version 10: a key's public half and when it starts signing.
const KEYS_V10_ROTATION: &str = "
    ALTER TABLE signing_keys ADD COLUMN public_jwk TEXT NOT NULL DEFAULT '';
    ALTER TABLE signing_keys ADD COLUMN signs_from INTEGER;
";
/// Version 8: the audit head's tag under the audit key.
const AUDIT_V8_TAG: &str = "ALTER TABLE audit_head ADD COLUMN tag TEXT NOT NULL DEFAULT '';";

/// Version 5: the v4 audit log is set aside while `SCHEMA` creates the new one...
const AUDIT_V4_ASIDE: &str = "ALTER TABLE audit_log RENAME TO audit_log_v4;";
/// ...then its rows move over with their hashes as bytes (the chain's definition is unchanged:
/// each hash covers the previous one as hex, which `prev_hash` only repeated; a hash that is not
/// hex becomes empty, so the chain check still names that row), and each row gets a run of its
/// own.
const AUDIT_V4_MOVE: &str = "
    INSERT INTO audit_log (seq, ts_ms, kind, subject, target, decision, check_name, reason,
                           request_id, jti, hash)
        SELECT seq, ts_ms, kind, subject, target, decision, check_name, reason, request_id,
               jti, coalesce(unhex(hash), x'') FROM audit_log_v4 ORDER BY seq;
    DROP TABLE audit_log_v4;
    INSERT INTO audit_runs (field, value, first_seq, last_seq)
        SELECT 'subject', subject, seq, seq FROM audit_log WHERE subject != '';
    INSERT INTO audit_runs (field, value, first_seq, last_seq)
        SELECT 'target', target, seq, seq FROM audit_log WHERE target != '';
";

/// Version 6: SQLite cannot change a table's unique key, so the revocations are set aside
/// (their expiry index too, which would otherwise keep its name on the old table)...
const REVOCATIONS_V5_ASIDE: &str = "
    ALTER TABLE revocations RENAME TO revocations_v5;
    DROP INDEX IF EXISTS revocations_by_expiry;
";
/// ...and move, ids and sources kept, into the table `SCHEMA` created: each old row was already
/// the only one of its name, so it is the only one of its name and source.
const REVOCATIONS_V5_MOVE: &str = "
    INSERT INTO revocations (id, format, issuer, value, reason, event_type, event_jti, source,
                             revoked_at, expires_at)
        SELECT id, format, issuer, value, reason, event_type, event_jti, source, revoked_at,
               expires_at FROM revocations_v5 ORDER BY id;
    DROP TABLE revocations_v5;
";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A version-4 log (hex hashes, prev_hash, two indexes) moves to version 5 with every row,
    /// still verifies, and its rows are found by subject and tool.
    #[test]
    fn a_version_4_audit_log_migrates_and_still_verifies() {
        use audit::{chain_hash, hex, Query, Record, GENESIS};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL, subject TEXT NOT NULL DEFAULT '',
                 target TEXT NOT NULL DEFAULT '', decision TEXT NOT NULL,
                 check_name TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
                 request_id TEXT NOT NULL DEFAULT '', jti TEXT NOT NULL DEFAULT '',
                 prev_hash TEXT NOT NULL, hash TEXT NOT NULL) STRICT;
             CREATE INDEX audit_by_target ON audit_log (target, seq);
             CREATE INDEX audit_by_subject ON audit_log (subject, seq);
             CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL, hash TEXT NOT NULL) STRICT;
             PRAGMA user_version = 4;",
        )
        .unwrap();
        let mut prev = GENESIS.to_string();
        for seq in 1..=3i64 {
            let r = Record {
                ts_ms: 1_764_000_000_000 + seq,
                kind: "verify".into(),
                subject: format!("agent-{}", seq % 2),
                target: "code-search".into(),
                decision: "allow".into(),
                jti: format!("jti-{seq}"),
                ..Default::default()
            };
            let hash = hex(&chain_hash(&prev, seq, &r));
            conn.execute(
                "INSERT INTO audit_log VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', '', '', ?7, ?8, ?9)",
                rusqlite::params![
                    seq, r.ts_ms, r.kind, r.subject, r.target, r.decision, r.jti, prev, hash
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)",
                rusqlite::params![seq, hash],
            )
            .unwrap();
            prev = hash;
        }
        // `audit verify` reads a log not migrated yet (it opens the database read-only).
        assert_eq!(audit::verify_chain(&conn, None).unwrap(), Ok(3));
        drop(conn);

        let (store, thread) = Store::open(&path).unwrap();
        drop(store);
        thread.join().unwrap();
        let conn = open_connection(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(audit::verify_chain(&conn, None).unwrap(), Ok(3));
        assert_eq!(audit::head(&conn).unwrap(), (3, prev.clone()));
        let by_subject = audit::query(
            &conn,
            &Query {
                subject: "agent-1".into(),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let seqs: Vec<i64> = by_subject.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [3, 1]);
        assert_eq!(by_subject.first().unwrap().hash, prev);
        let by_tool = audit::query(
            &conn,
            &Query {
                target: "code-search".into(),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_tool.len(), 3);
        let leftovers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'audit_log_v4%' \
                 OR name IN ('audit_by_target', 'audit_by_subject')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0);
    }

    /// A version-5 database (revocations unique per name) moves to version 6 with every row,
    /// id and source; two sources may then each hold a record of the same name.
    #[test]
    fn version_5_revocations_migrate_to_one_record_per_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE revocations (id INTEGER PRIMARY KEY, format TEXT NOT NULL,
                 issuer TEXT NOT NULL DEFAULT '', value TEXT NOT NULL, reason TEXT NOT NULL,
                 event_type TEXT NOT NULL DEFAULT '', event_jti TEXT NOT NULL DEFAULT '',
                 source TEXT NOT NULL DEFAULT '', revoked_at INTEGER NOT NULL,
                 expires_at INTEGER, UNIQUE (format, issuer, value)) STRICT;
             CREATE INDEX revocations_by_expiry ON revocations (expires_at)
                 WHERE expires_at IS NOT NULL;
             INSERT INTO revocations VALUES (7, 'uri', '', 'wimse://a', 'stolen', '', '',
                 'admin', 100, NULL);
             INSERT INTO revocations VALUES (9, 'tool', '', 'files', 'x', 'e', 'j',
                 'https://siem.example', 100, 500);
             PRAGMA user_version = 5;",
        )
        .unwrap();
        drop(conn);

        let (store, thread) = Store::open(&path).unwrap();
        drop(store);
        thread.join().unwrap();
        let conn = open_connection(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let rows: Vec<(i64, String, String, Option<i64>)> = conn
            .prepare("SELECT id, value, source, expires_at FROM revocations ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (7, "wimse://a".into(), "admin".into(), None),
                (9, "files".into(), "https://siem.example".into(), Some(500)),
            ]
        );
        // The expiry index is on the new table, the old table is gone.
        let on: String = conn
            .query_row(
                "SELECT tbl_name FROM sqlite_schema WHERE name = 'revocations_by_expiry'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(on, "revocations");
        let leftovers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'revocations_v5'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leftovers, 0);
        // A second source's record of the same name is a row of its own.
        conn.execute(
            "INSERT INTO revocations (format, issuer, value, reason, source, revoked_at)
             VALUES ('uri', '', 'wimse://a', 'r', 'https://siem.example', 200)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn open_applies_schema_and_refuses_newer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (store, thread) = Store::open(&path).unwrap();
        let v: i64 = store
            .call_blocking(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        store
            .call_blocking(|c| Ok(c.pragma_update(None, "user_version", 99)?))
            .unwrap();
        drop(store);
        thread.join().unwrap();
        assert_eq!(Store::open(&path).unwrap_err(), StoreError::TooNew(99));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
