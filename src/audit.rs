//! The audit writer: requests hand records to a bounded queue; one thread appends them in
//! batches (one transaction each) to the hash-chained log. A full queue or a failing log
//! refuses the request instead of losing its record; shutdown drains the queue.

use crate::store::audit::{self as log, Record};
use crate::store::{open_connection, StoreError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Records waiting to be written before requests are refused.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Most records in one transaction.
const BATCH: usize = 2048;
/// How long the writer gathers records after the first before committing when a state change
/// waits for its row (group commit).
const GATHER: Duration = Duration::from_millis(2);
/// How long it may keep gathering when nobody waits (verify and exchange rows): larger
/// batches cost less per row (fewer pages rewritten, one fsync). This bounds what a crash can
/// lose of those rows.
const GATHER_MAX: Duration = Duration::from_millis(10);
/// Batches nobody waits for are committed without an fsync (still written to the WAL, so a
/// crash of the process loses none of them) unless the last fsync is this old: a power loss
/// can lose at most this much of verify and exchange rows. Batches with a waiting state change
/// are always fsynced before the change is acknowledged.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// Why a record could not be queued: the request is refused (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditError {
    /// The queue is full: the writer is behind; shed load.
    Overloaded,
    /// The writer failed or is shut down.
    Unavailable,
}

/// A record, and who waits for its commit.
type Queued = (Record, Option<tokio::sync::oneshot::Sender<bool>>);

#[derive(Debug, Default)]
struct Shared {
    depth: AtomicUsize,
    written: AtomicU64,
    failed: AtomicBool,
}

/// The request side of the audit log.
pub struct Audit {
    sender: RwLock<Option<SyncSender<Queued>>>,
    shared: Arc<Shared>,
    enabled: bool,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Start the writer on its own connection to `path`. With `enabled` false (benchmarks
    /// only) records are discarded.
    pub fn start(
        path: &Path,
        enabled: bool,
    ) -> Result<(Audit, Option<JoinHandle<()>>), StoreError> {
        let shared = Arc::new(Shared::default());
        if !enabled {
            let audit = Audit {
                sender: RwLock::new(None),
                shared,
                enabled,
            };
            return Ok((audit, None));
        }
        let mut conn = open_connection(path)?;
        let head = log::head(&conn)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let writer_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("toolgate-audit".into())
            .spawn(move || write_loop(&mut conn, head, &rx, &writer_shared))
            .map_err(|e| StoreError::Database(format!("cannot start the audit thread: {e}")))?;
        let audit = Audit {
            sender: RwLock::new(Some(tx)),
            shared,
            enabled,
        };
        Ok((audit, Some(thread)))
    }

    /// Queue a record; the caller refuses its request on error.
    pub fn record(&self, record: Record) -> Result<(), AuditError> {
        self.enqueue(record, None)
    }

    /// Queue a record and wait until it is committed (group commit: it shares its batch's
    /// transaction). For state changes, whose acknowledgement must imply their audit row.
    pub async fn record_durable(&self, record: Record) -> Result<(), AuditError> {
        if !self.enabled {
            return self.enqueue(record, None);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(record, Some(tx))?;
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(AuditError::Unavailable),
        }
    }

    fn enqueue(
        &self,
        record: Record,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> Result<(), AuditError> {
        if !self.enabled {
            return Ok(());
        }
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(AuditError::Unavailable);
        }
        let guard = self.sender.read().map_err(|_| AuditError::Unavailable)?;
        let sender = guard.as_ref().ok_or(AuditError::Unavailable)?;
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        match sender.try_send((record, done)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => AuditError::Overloaded,
                    TrySendError::Disconnected(_) => AuditError::Unavailable,
                })
            }
        }
    }

    /// Records queued and not yet written.
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }

    /// Records written since start.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Whether the writer has given up (every audited request is refused).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Stop accepting records; the writer drains what is queued and ends.
    pub fn close(&self) {
        if let Ok(mut s) = self.sender.write() {
            s.take();
        }
    }
}

fn write_loop(
    conn: &mut rusqlite::Connection,
    mut head: (i64, String),
    rx: &Receiver<Queued>,
    shared: &Shared,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    let mut synced_at = std::time::Instant::now();
    let mut full = true;
    // Whether the last commit went without an fsync.
    let mut unsynced = false;
    loop {
        let first = if unsynced {
            match rx.recv_timeout(SYNC_EVERY) {
                Ok(queued) => queued,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Idle with commits not yet on disk: an fsynced commit takes them there.
                    match set_synchronous(conn, &mut full, true).and_then(|()| log::sync(conn)) {
                        Ok(()) => {
                            unsynced = false;
                            synced_at = std::time::Instant::now();
                        }
                        Err(e) => crate::log_warn!("audit log: sync failed, will retry: {e}"),
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(queued) => queued,
                Err(_) => break,
            }
        };
        let (record, done) = first;
        batch.push(record);
        waiters.extend(done);
        // Gather: one commit (one fsync) per batch, not per record. Sleeping rather than
        // waiting on the channel spares every sender a wake-up of this thread.
        let started = std::time::Instant::now();
        loop {
            std::thread::sleep(GATHER);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok((record, done)) => {
                        batch.push(record);
                        waiters.extend(done);
                    }
                    Err(_) => break,
                }
            }
            if !waiters.is_empty() || batch.len() >= BATCH || started.elapsed() >= GATHER_MAX {
                break;
            }
        }
        let durable = !waiters.is_empty() || synced_at.elapsed() >= SYNC_EVERY;
        let mut attempt = 0;
        let mut committed = false;
        loop {
            match set_synchronous(conn, &mut full, durable)
                .and_then(|()| log::append(conn, &head, &batch))
            {
                Ok(new_head) => {
                    head = new_head;
                    committed = true;
                    unsynced = !durable;
                    if durable {
                        synced_at = std::time::Instant::now();
                    }
                    shared
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    shared.depth.fetch_sub(batch.len(), Ordering::Relaxed);
                    break;
                }
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    crate::log_warn!("audit append failed (attempt {attempt}), retrying: {e}");
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                Err(e) => {
                    // Refuse every audited request from now on rather than pretend.
                    shared.failed.store(true, Ordering::Relaxed);
                    crate::log_error!("audit log is failing; {} records not written, refusing audited requests: {e}", batch.len());
                    break;
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(committed);
        }
        batch.clear();
    }
    // Shutting down: whatever was committed without an fsync goes to disk now.
    if unsynced {
        if let Err(e) = set_synchronous(conn, &mut full, true).and_then(|()| log::sync(conn)) {
            crate::log_error!("audit log: final sync failed: {e}");
        }
    }
}

/// Switch the connection between `synchronous = FULL` (each commit fsyncs the WAL) and
/// `NORMAL` (commits are written, fsynced by a later FULL commit or checkpoint).
fn set_synchronous(
    conn: &rusqlite::Connection,
    full: &mut bool,
    want_full: bool,
) -> Result<(), StoreError> {
    if *full != want_full {
        let mode = if want_full { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", mode)?;
        *full = want_full;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{audit, Store};
    use std::path::PathBuf;

    fn rec(i: i64) -> Record {
        Record {
            ts_ms: i,
            kind: "verify".into(),
            decision: "allow".into(),
            target: format!("t{i}"),
            ..Default::default()
        }
    }

    /// A new database in a temporary directory (kept alive by the guard) and its writer.
    fn started() -> (tempfile::TempDir, PathBuf, Audit, Option<JoinHandle<()>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(Store::open(&path).unwrap());
        let (a, thread) = Audit::start(&path, true).unwrap();
        (dir, path, a, thread)
    }

    fn syncs(path: &Path) -> Option<i64> {
        let conn = open_connection(path).unwrap();
        conn.query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'audit_syncs'",
            [],
            |r| r.get(0),
        )
        .ok()
    }

    /// Batches committed without an fsync are followed, once the writer is idle, by a commit
    /// that really writes (and so fsyncs under FULL); and again at shutdown.
    #[test]
    fn unsynced_batches_get_a_real_sync_when_idle() {
        let (_dir, path, a, thread) = started();
        // Batches 20 ms apart: after the first (fsynced), the next ones within 100 ms are not.
        for i in 0..10 {
            a.record(rec(i)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // Wait for the idle sync itself; the bound only matters if it never comes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let idle = loop {
            match syncs(&path) {
                Some(n) if n >= 1 => break n,
                _ => assert!(
                    std::time::Instant::now() < deadline,
                    "no sync after the writer went idle"
                ),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        a.close();
        thread.unwrap().join().unwrap();
        assert_eq!(a.written(), 10);
        assert!(syncs(&path).unwrap() >= idle);
    }

    /// A head the writer could not extend refuses the start instead of failing every audited
    /// request later.
    #[test]
    fn a_corrupt_head_refuses_to_start() {
        // Not hex at all, and hex the writer never records (uppercase).
        for hash in ["not hex".to_string(), "AB".repeat(32)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.db");
            drop(Store::open(&path).unwrap());
            open_connection(&path)
                .unwrap()
                .execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 3, ?1)",
                    [&hash],
                )
                .unwrap();
            let refused = Audit::start(&path, true).map(|_| ()).unwrap_err();
            assert_eq!(refused, StoreError::Corrupt("audit head"), "{hash}");
        }
    }

    #[test]
    fn writes_flush_on_close_and_chain_verifies() {
        let (_dir, path, a, thread) = started();
        for i in 0..5000 {
            a.record(rec(i)).unwrap();
        }
        a.close();
        assert_eq!(a.record(rec(0)), Err(AuditError::Unavailable));
        thread.unwrap().join().unwrap();
        assert_eq!(a.written(), 5000);
        assert_eq!(a.depth(), 0);
        let conn = open_connection(&path).unwrap();
        assert_eq!(audit::verify_chain(&conn).unwrap(), Ok(5000));
        conn.execute("UPDATE audit_log SET reason = 'x' WHERE seq = 42", [])
            .unwrap();
        assert_eq!(
            audit::verify_chain(&conn).unwrap(),
            Err(audit::ChainBreak::Edited(42))
        );
    }
}
