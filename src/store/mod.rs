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
/// 4: revocations_by_expiry.
pub const SCHEMA_VERSION: i64 = 4;
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

/// Bring the schema up to `SCHEMA_VERSION`. Every change so far only adds tables, and
/// `schema.sql` creates only what is missing, so each rung re-applies it; a rung that alters
/// a table will add its own statements here.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version));
    }
    if version < SCHEMA_VERSION {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
