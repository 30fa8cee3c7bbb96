//! The audit writer: requests hand records to a bounded queue; one thread appends them in
//! batches (one transaction each) to the hash-chained log, and prunes rows older than the
//! retention behind a checkpoint row. A full queue or a failing log refuses the request instead
//! of losing its record; the writer keeps retrying, and audited requests are served again once
//! a write succeeds. Shutdown drains the queue. Repeats of one refusal are counted into one row
//! (`Refusals`).

use crate::store::audit::{self as log, HeadAuth, HeadKey, Name, Record};
use crate::store::{open_connection, StoreError};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
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
/// Longest pause between attempts to write a batch the log refused (a full disk): the first
/// write that succeeds after space returns ends the refusals.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Attempts at shutdown before a batch the log keeps refusing is given up (and logged).
const ATTEMPTS_WHEN_CLOSING: u32 = 5;
/// How often (in record time) the writer looks for rows older than the retention.
const PRUNE_EVERY_MS: i64 = 60_000;
/// Most rows one pruning pass removes (one transaction); the next batch continues.
const PRUNE_CHUNK: i64 = 50_000;

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
    closing: AtomicBool,
}

/// How the writer runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write the log at all (off only for benchmarks).
    pub enabled: bool,
    /// Rows older than this many milliseconds are pruned; `None` keeps everything.
    pub retention_ms: Option<i64>,
    /// Tests only: the page limit (`PRAGMA max_page_count`) of the writer's connection, read
    /// before every write; 0 is SQLite's own. A low one is a full disk.
    pub page_limit: Option<Arc<AtomicU64>>,
    /// The key that tags the chain head (required when enabled), and whether its file was made
    /// at this start (a new database alone is not enough: deleting the database file must not
    /// pass for a new log under the old key): then an empty log gets its tagged genesis head,
    /// and a head written before heads were tagged is tagged now. Otherwise a log without a
    /// head has been emptied, and is refused.
    pub key: Option<HeadKey>,
    pub key_created: bool,
    /// How old the last fsync may be before a batch nobody waits for is fsynced anyway
    /// (`None`: 100 ms). Tests set it long, to see the idle sync whatever the machine's load.
    pub sync_every: Option<Duration>,
}

/// Read the audit key file at `path`: `Ok(None)` if there is none. Its content is 64
/// lowercase hex digits (32 bytes), and a newline at most.
pub fn read_key_file(path: &Path) -> Result<Option<HeadKey>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the audit key {}: {e}", path.display())),
    };
    let bytes = log::unhex32(text.strip_suffix('\n').unwrap_or(&text)).ok_or_else(|| {
        format!(
            "the audit key {} is not 64 lowercase hex digits",
            path.display()
        )
    })?;
    Ok(Some(HeadKey::new(&bytes)))
}

/// The audit key at `path`, made (32 random bytes, owner-only) if there is none; and whether it
/// was made now.
pub fn load_or_create_key(path: &Path) -> Result<(HeadKey, bool), StoreError> {
    if let Some(key) = read_key_file(path).map_err(StoreError::Database)? {
        return Ok((key, false));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| StoreError::Database("cannot generate the audit key".into()))?;
    let text = format!("{}\n", log::hex(&secret));
    let written = crate::secret_file::create_private(path, text.as_bytes());
    written.map_err(|e| {
        StoreError::Database(format!(
            "cannot create the audit key {}: {e}",
            path.display()
        ))
    })?;
    Ok((HeadKey::new(&secret), true))
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
        options: Options,
    ) -> Result<(Audit, Option<JoinHandle<()>>), StoreError> {
        let shared = Arc::new(Shared::default());
        let enabled = options.enabled;
        if !enabled {
            let audit = Audit {
                sender: RwLock::new(None),
                shared,
                enabled,
            };
            return Ok((audit, None));
        }
        let key = options
            .key
            .ok_or(StoreError::Database("the audit log needs its key".into()))?;
        let conn = open_connection(path)?;
        let head = log::head(&conn)?;
        match log::head_auth(&conn, &key)? {
            HeadAuth::Valid => {}
            HeadAuth::Empty if options.key_created => log::tag_genesis(&conn, &key)?,
            HeadAuth::Empty => {
                crate::log_error!(
                    "audit log: it has no head although its audit key exists: the log was emptied together with its head (or the database was deleted without its key); run `toolgate audit verify`. Only if this database is meant to start a new log, move the old audit key file away first"
                );
                return Err(StoreError::Corrupt("audit head missing"));
            }
            HeadAuth::Untagged if options.key_created => {
                log::tag_head(&conn, &key)?;
                crate::log_warn!(
                    "audit log: its head (row {}) is now tagged with the new audit key; from here on a writer of the database alone cannot rewrite the rows up to it undetected",
                    head.0
                );
            }
            HeadAuth::Untagged | HeadAuth::Forged => {
                crate::log_error!(
                    "audit log: its head (row {}) is not tagged with the audit key: the log was rewritten by someone without the key, or the key file is not this database's; run `toolgate audit verify`",
                    head.0
                );
                return Err(StoreError::Corrupt("audit head tag"));
            }
        }
        let default_pages: u64 = conn.query_row("PRAGMA max_page_count", [], |r| r.get(0))?;
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let mut writer = Writer {
            conn,
            key,
            head,
            shared: shared.clone(),
            retention_ms: options.retention_ms,
            next_prune_ms: i64::MIN,
            prune_more: false,
            page_limit: options.page_limit,
            default_pages,
            applied_pages: default_pages,
            full: true,
            sync_every: options.sync_every.unwrap_or(SYNC_EVERY),
        };
        let thread = std::thread::Builder::new()
            .name("toolgate-audit".into())
            .spawn(move || writer.run(&rx))
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
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Ok(mut s) = self.sender.write() {
            s.take();
        }
    }
}

/// Repeats of one refusal within this long of the first repeat are counted into one row.
pub const REFUSAL_WINDOW_MS: i64 = 1000;
/// Most refusals counted at once; beyond it, refusals are written one row each.
const MAX_OPEN_WINDOWS: usize = 16_384;

/// What makes refusals "the same": kind, check, target and peer. A target the caller could
/// not vouch for (an unregistered tool, any audience) is keyed as empty, so that varying it
/// does not escape the count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    kind: Name,
    check: Name,
    target: String,
    peer: IpAddr,
}

/// Refusals of one key since its last row.
#[derive(Debug)]
struct Window {
    /// Record time until which repeats are counted.
    until_ms: i64,
    /// The repeats so far, as one row: the first repeat's time and request id, the fields all
    /// repeats share (one that differs is left empty), and their count.
    repeats: Option<Record>,
}

/// Counting repeated refusals: the first refusal of a key is written at once; repeats from the
/// same peer within `REFUSAL_WINDOW_MS` become one row with their `count`, written when the
/// window closes (the next refusal after it, the periodic flush, or shutdown). A flood from
/// one address thus writes at most two rows a second per key.
#[derive(Debug, Default)]
pub struct Refusals {
    open: Mutex<HashMap<RefusalKey, Window>>,
}

impl Refusals {
    /// The rows to write for `record`, refused at `record.ts_ms` from `peer`: itself (the first
    /// of a window) and the row of the window it closes; nothing when counted as a repeat.
    /// `vouched`: whether its target names something toolgate knows.
    pub fn admit(&self, record: Record, peer: IpAddr, vouched: bool) -> Vec<Record> {
        let key = RefusalKey {
            kind: record.kind.clone(),
            check: record.check.clone(),
            target: if vouched {
                record.target.clone()
            } else {
                String::new()
            },
            peer: network_of(peer),
        };
        let now = record.ts_ms;
        let Ok(mut open) = self.open.lock() else {
            return vec![record];
        };
        match open.get_mut(&key) {
            Some(w) if now < w.until_ms => {
                match &mut w.repeats {
                    None => w.repeats = Some(record),
                    Some(agg) => merge(agg, &record),
                }
                Vec::new()
            }
            Some(w) => {
                let closed = w.repeats.take();
                w.until_ms = now.saturating_add(REFUSAL_WINDOW_MS);
                closed.into_iter().chain([record]).collect()
            }
            None => {
                let mut rows = if open.len() >= MAX_OPEN_WINDOWS {
                    take_closed(&mut open, Some(now))
                } else {
                    Vec::new()
                };
                // Still full: this refusal is not counted with its repeats, only written.
                if open.len() < MAX_OPEN_WINDOWS {
                    let until_ms = now.saturating_add(REFUSAL_WINDOW_MS);
                    open.insert(
                        key,
                        Window {
                            until_ms,
                            repeats: None,
                        },
                    );
                }
                rows.push(record);
                rows
            }
        }
    }

    /// The rows of windows closed by `now_ms` (of every window when `None`: shutdown), which
    /// are forgotten.
    pub fn closed(&self, now_ms: Option<i64>) -> Vec<Record> {
        match self.open.lock() {
            Ok(mut open) => take_closed(&mut open, now_ms),
            Err(_) => Vec::new(),
        }
    }
}

fn take_closed(open: &mut HashMap<RefusalKey, Window>, now_ms: Option<i64>) -> Vec<Record> {
    let mut rows = Vec::new();
    open.retain(|_, w| {
        if now_ms.is_some_and(|now| now < w.until_ms) {
            return true;
        }
        rows.extend(w.repeats.take());
        false
    });
    rows.sort_by_key(|r| r.ts_ms);
    rows
}

/// Count `repeat` into `agg`; a field the two do not share is left empty.
fn merge(agg: &mut Record, repeat: &Record) {
    agg.count = agg.count.saturating_add(repeat.count);
    for (kept, other) in [
        (&mut agg.subject, &repeat.subject),
        (&mut agg.target, &repeat.target),
        (&mut agg.reason, &repeat.reason),
        (&mut agg.jti, &repeat.jti),
    ] {
        if kept != other {
            kept.clear();
        }
    }
}

/// The address refusals are counted by: an IPv4 address, or an IPv6 /64 (one host's share).
fn network_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                for s in segments.iter_mut().skip(4) {
                    *s = 0;
                }
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The writer thread's state.
struct Writer {
    conn: rusqlite::Connection,
    key: HeadKey,
    head: (i64, String),
    shared: Arc<Shared>,
    retention_ms: Option<i64>,
    /// Record time at which to look for rows to prune next.
    next_prune_ms: i64,
    /// The last pass stopped at its cap: continue with the next batch.
    prune_more: bool,
    page_limit: Option<Arc<AtomicU64>>,
    default_pages: u64,
    applied_pages: u64,
    /// Whether the connection is at `synchronous = FULL`.
    full: bool,
    /// See [`Options::sync_every`].
    sync_every: Duration,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Queued>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut waiters = Vec::new();
        let mut synced_at = std::time::Instant::now();
        // Whether the last commit went without an fsync.
        let mut unsynced = false;
        loop {
            let first = if unsynced {
                match rx.recv_timeout(SYNC_EVERY) {
                    Ok(queued) => queued,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Idle with commits not yet on disk: an fsynced commit takes them there.
                        match set_synchronous(&self.conn, &mut self.full, true)
                            .and_then(|()| log::sync(&self.conn))
                        {
                            Ok(()) => {
                                unsynced = false;
                                synced_at = std::time::Instant::now();
                            }
                            Err(e) => {
                                crate::log_warn!("audit log: sync failed, will retry: {e}")
                            }
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
            let durable = !waiters.is_empty() || synced_at.elapsed() >= self.sync_every;
            let committed = self.commit(&batch, durable, &mut waiters);
            if committed {
                unsynced = !durable;
                if durable {
                    synced_at = std::time::Instant::now();
                }
            }
            self.shared.depth.fetch_sub(batch.len(), Ordering::Relaxed);
            for w in waiters.drain(..) {
                let _ = w.send(committed);
            }
            if committed {
                let newest = batch.iter().map(|r| r.ts_ms).max().unwrap_or(i64::MIN);
                self.prune_if_due(newest);
            }
            batch.clear();
        }
        // Shutting down: whatever was committed without an fsync goes to disk now.
        if unsynced {
            if let Err(e) = set_synchronous(&self.conn, &mut self.full, true)
                .and_then(|()| log::sync(&self.conn))
            {
                crate::log_error!("audit log: final sync failed: {e}");
            }
        }
    }

    /// Write `batch` in one transaction, retrying until it is written: while the log refuses
    /// it (a full disk), every audited request is refused and those waiting on this batch are
    /// told so at once. Gives up only at shutdown.
    fn commit(
        &mut self,
        batch: &[Record],
        durable: bool,
        waiters: &mut Vec<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
        let mut attempt: u32 = 0;
        loop {
            self.apply_page_limit();
            let written = set_synchronous(&self.conn, &mut self.full, durable)
                .and_then(|()| log::append(&mut self.conn, &self.key, &self.head, batch));
            match written {
                Ok(head) => {
                    self.head = head;
                    self.shared
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if self.shared.failed.swap(false, Ordering::Relaxed) {
                        crate::log_info!(
                            "audit log writable again after {attempt} failed attempts; serving audited requests"
                        );
                    }
                    return true;
                }
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 {
                        // Refuse every audited request until a write succeeds, rather than
                        // pretend; a state change waiting on this batch hears it now.
                        self.shared.failed.store(true, Ordering::Relaxed);
                        crate::log_error!(
                            "audit log is failing; refusing audited requests until it recovers ({} records held): {e}",
                            batch.len()
                        );
                        for w in waiters.drain(..) {
                            let _ = w.send(false);
                        }
                    }
                    if self.shared.closing.load(Ordering::Relaxed)
                        && attempt >= ATTEMPTS_WHEN_CLOSING
                    {
                        crate::log_error!(
                            "audit log: shutting down with {} records not written: {e}",
                            batch.len()
                        );
                        return false;
                    }
                    // Old rows may make room.
                    if let Some(newest) = batch.iter().map(|r| r.ts_ms).max() {
                        self.next_prune_ms = i64::MIN;
                        self.prune_if_due(newest);
                    }
                    let pause = Duration::from_millis(50)
                        .saturating_mul(attempt)
                        .min(RETRY_MAX);
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// Remove rows older than the retention, at most once a minute of record time (at once
    /// again while a backlog remains).
    fn prune_if_due(&mut self, now_ms: i64) {
        let Some(retention) = self.retention_ms else {
            return;
        };
        if !self.prune_more && now_ms < self.next_prune_ms {
            return;
        }
        self.next_prune_ms = now_ms.saturating_add(PRUNE_EVERY_MS);
        let cutoff = now_ms.saturating_sub(retention);
        match log::prune(
            &mut self.conn,
            &self.key,
            &self.head,
            cutoff,
            now_ms,
            PRUNE_CHUNK,
        ) {
            Ok(Some(pruned)) => {
                self.head = pruned.head;
                self.prune_more = pruned.more;
                self.shared.written.fetch_add(1, Ordering::Relaxed);
                crate::log_info!(
                    "audit log: rows {}..={} were older than the retention and were removed (checkpoint row {})",
                    pruned.first,
                    pruned.last,
                    self.head.0
                );
            }
            Ok(None) => self.prune_more = false,
            Err(e) => crate::log_warn!("audit log: pruning failed, will retry: {e}"),
        }
    }

    /// Apply the test hook's page limit if it changed.
    fn apply_page_limit(&mut self) {
        let Some(limit) = &self.page_limit else {
            return;
        };
        let wanted = match limit.load(Ordering::Relaxed) {
            0 => self.default_pages,
            n => n,
        };
        if wanted != self.applied_pages
            && self
                .conn
                .pragma_update(None, "max_page_count", wanted)
                .is_ok()
        {
            self.applied_pages = wanted;
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
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
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

    fn key() -> HeadKey {
        HeadKey::new(b"unit-test-audit-key")
    }

    /// A restart: the key was there before.
    fn enabled() -> Options {
        Options {
            enabled: true,
            key: Some(key()),
            ..Default::default()
        }
    }

    /// A first start: the key file is made now.
    fn fresh() -> Options {
        Options {
            key_created: true,
            ..enabled()
        }
    }

    /// A log emptied together with its head is not a new log: the empty log's head was tagged
    /// when its key was made, so a restart with that key, and the chain check, refuse it.
    #[test]
    fn a_log_emptied_with_its_head_is_refused() {
        let (_dir, path, a, thread) = started();
        a.close();
        thread.unwrap().join().unwrap();
        let conn = open_connection(&path).unwrap();
        // The empty log verifies, and so does a restart with its key.
        assert_eq!(audit::verify_chain(&conn, Some(&key())).unwrap(), Ok(0));
        let (a, thread) = Audit::start(&path, enabled()).unwrap();
        for i in 0..10 {
            a.record(rec(i)).unwrap();
        }
        a.close();
        thread.unwrap().join().unwrap();
        conn.execute_batch(
            "DELETE FROM audit_log; DELETE FROM audit_runs; DELETE FROM audit_head;",
        )
        .unwrap();
        let refused = Audit::start(&path, enabled()).map(|_| ()).unwrap_err();
        assert_eq!(refused, StoreError::Corrupt("audit head missing"));
        assert_eq!(
            audit::verify_chain(&conn, Some(&key())).unwrap(),
            Err(audit::ChainBreak::HeadTag { head: 0 })
        );
    }

    /// Deleting the database file (the log with it) does not make a new log under the old key:
    /// a fresh database beside an existing key is refused until the key is moved away.
    #[test]
    fn a_deleted_database_beside_its_key_is_refused() {
        let (dir, path, a, thread) = started();
        a.record(rec(1)).unwrap();
        a.close();
        thread.unwrap().join().unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("a.db{suffix}")));
        }
        drop(Store::open(&path).unwrap());
        let refused = Audit::start(&path, enabled()).map(|_| ()).unwrap_err();
        assert_eq!(refused, StoreError::Corrupt("audit head missing"));
        // With a new key (the old one moved away) it is a new log.
        let (a, thread) = Audit::start(&path, fresh()).unwrap();
        a.close();
        thread.unwrap().join().unwrap();
    }

    /// The head is tagged with the key outside the database: a log rewritten consistently by
    /// a writer of the database alone (every hash recomputed, the head too) still walks, but
    /// neither the writer nor the chain check with the key accepts it. A head never tagged is
    /// tagged only when its key is new (an upgrade), never when a key was already there.
    #[test]
    fn a_head_rewritten_without_the_key_is_refused() {
        let (_dir, path, a, thread) = started();
        for i in 0..10 {
            a.record(rec(i)).unwrap();
        }
        a.close();
        thread.unwrap().join().unwrap();
        let conn = open_connection(&path).unwrap();
        assert_eq!(audit::verify_chain(&conn, Some(&key())).unwrap(), Ok(10));
        // Rewrite row 4 and everything after it, as the writer would, head included.
        let rows = audit::query(
            &conn,
            &audit::Query {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
        let mut prev = rows.iter().find(|r| r.seq == 3).unwrap().hash.clone();
        for seq in 4..=10 {
            let mut r = rows.iter().find(|r| r.seq == seq).unwrap().record.clone();
            if seq == 4 {
                r.decision = "deny".into();
            }
            let hash = audit::chain_hash(&prev, seq, &r);
            conn.execute(
                "UPDATE audit_log SET decision = ?1, hash = ?2 WHERE seq = ?3",
                rusqlite::params![&*r.decision, &hash[..], seq],
            )
            .unwrap();
            prev = audit::hex(&hash);
        }
        conn.execute("UPDATE audit_head SET hash = ?1", [&prev])
            .unwrap();
        assert_eq!(audit::verify_chain(&conn, None).unwrap(), Ok(10));
        assert_eq!(
            audit::verify_chain(&conn, Some(&key())).unwrap(),
            Err(audit::ChainBreak::HeadTag { head: 10 })
        );
        let refused = Audit::start(&path, enabled()).map(|_| ()).unwrap_err();
        assert_eq!(refused, StoreError::Corrupt("audit head tag"));
        // A tag removed is no better than a wrong one, unless the key is new (an upgrade).
        conn.execute("UPDATE audit_head SET tag = ''", []).unwrap();
        let refused = Audit::start(&path, enabled()).map(|_| ()).unwrap_err();
        assert_eq!(refused, StoreError::Corrupt("audit head tag"));
        let upgrade = Options {
            key_created: true,
            ..enabled()
        };
        let (a, thread) = Audit::start(&path, upgrade).unwrap();
        a.close();
        thread.unwrap().join().unwrap();
        assert_eq!(audit::verify_chain(&conn, Some(&key())).unwrap(), Ok(10));
    }

    /// The key file: made once, owner-only, read back; anything but 64 lowercase hex digits
    /// is refused.
    #[test]
    fn the_audit_key_file_is_made_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(read_key_file(&path).unwrap().is_none());
        let (made, created) = load_or_create_key(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create_key(&path).unwrap();
        assert!(!created);
        assert_eq!(made.tag(1, "ab"), again.tag(1, "ab"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        for bad in ["", "00", &"A".repeat(64), &"0".repeat(65), &"g".repeat(64)] {
            std::fs::write(&path, bad).unwrap();
            assert!(read_key_file(&path).is_err(), "{bad:?}");
            assert!(load_or_create_key(&path).is_err(), "{bad:?}");
        }
    }

    /// The first refusal of a key is written at once; its repeats within the window become one
    /// row with their count (fields they do not share left empty), written when the window
    /// closes; other peers, checks and vouched targets are other keys; unvouched targets share
    /// one.
    #[test]
    fn repeated_refusals_become_one_row_with_a_count() {
        let refusals = Refusals::default();
        let deny = |ts_ms: i64, target: &str, subject: &str| Record {
            ts_ms,
            kind: "verify".into(),
            decision: "deny".into(),
            check: "signature".into(),
            target: target.into(),
            subject: subject.into(),
            ..Default::default()
        };
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert_eq!(refusals.admit(deny(1000, "t", "s"), a, true).len(), 1);
        for i in 0..9 {
            assert!(refusals.admit(deny(1000 + i, "t", "s"), a, true).is_empty());
        }
        // Another peer and another vouched target are counted apart.
        assert_eq!(refusals.admit(deny(1001, "t", "s"), b, true).len(), 1);
        assert_eq!(refusals.admit(deny(1001, "u", "s"), a, true).len(), 1);
        // Unvouched targets share one key; differing fields are left empty.
        assert_eq!(refusals.admit(deny(1001, "x1", "s"), a, false).len(), 1);
        assert!(refusals.admit(deny(1002, "x2", "s"), a, false).is_empty());
        assert!(refusals.admit(deny(1003, "x3", "s2"), a, false).is_empty());
        // IPv6 peers are counted by /64.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert_eq!(refusals.admit(deny(1001, "t", "s"), v6(1), true).len(), 1);
        assert!(refusals.admit(deny(1001, "t", "s"), v6(2), true).is_empty());
        assert!(refusals.closed(Some(1999)).is_empty());
        // The next refusal after the window writes the closed window's row and itself.
        let rows = refusals.admit(deny(2000, "t", "s"), a, true);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].count, rows[0].ts_ms, rows[1].count), (9, 1000, 1));
        let rows = refusals.closed(Some(2001));
        assert_eq!(rows.len(), 2, "{rows:?}");
        let mixed = rows.iter().find(|r| r.count == 2).unwrap();
        assert_eq!((mixed.target.as_str(), mixed.subject.as_str()), ("", ""));
        assert!(rows.iter().any(|r| r.count == 1 && r.target == "t"));
        // The window reopened at 2000 has no repeats yet; shutdown closes it with no row.
        assert!(refusals.closed(None).is_empty());
    }

    /// A new database in a temporary directory (kept alive by the guard) and its writer.
    fn started() -> (tempfile::TempDir, PathBuf, Audit, Option<JoinHandle<()>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(Store::open(&path).unwrap());
        let (a, thread) = Audit::start(&path, fresh()).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(Store::open(&path).unwrap());
        // No batch is old enough to be fsynced for its age: each commits without one.
        let options = Options {
            sync_every: Some(Duration::from_secs(3600)),
            ..fresh()
        };
        let (a, thread) = Audit::start(&path, options).unwrap();
        for i in 0..10 {
            a.record(rec(i)).unwrap();
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
            let refused = Audit::start(&path, enabled()).map(|_| ()).unwrap_err();
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
        assert_eq!(audit::verify_chain(&conn, Some(&key())).unwrap(), Ok(5000));
        conn.execute("UPDATE audit_log SET reason = 'x' WHERE seq = 42", [])
            .unwrap();
        assert_eq!(
            audit::verify_chain(&conn, Some(&key())).unwrap(),
            Err(audit::ChainBreak::Edited(42))
        );
    }
}
