//! The `audit_log` and `audit_head` tables: appends that extend the hash chain, queries, and
//! the chain check.

use super::StoreError;
use ring::digest::{digest, SHA256};
use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const SET_HEAD: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";
const COLUMNS: &str = "seq, ts_ms, kind, subject, target, decision, check_name, reason, request_id, jti, prev_hash, hash";

/// The hash of the empty chain: what the first row's `prev_hash` is.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A field that is usually one of a fixed set of names: no allocation for those.
pub type Name = std::borrow::Cow<'static, str>;

/// One audit row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub ts_ms: i64,
    pub kind: Name,
    pub subject: String,
    pub target: String,
    pub decision: Name,
    pub check: Name,
    pub reason: String,
    pub request_id: String,
    pub jti: String,
}

/// A stored row: the record, its place in the chain and its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: i64,
    pub record: Record,
    pub prev_hash: String,
    pub hash: String,
}

/// A row's SHA-256 chain hash.
pub type Hash = [u8; 32];

/// SHA-256 over the previous hash (lowercase hex) and every field, each length-prefixed so
/// that no two rows serialise alike: `len ":" bytes` for prev, seq, ts_ms (decimal) and the
/// text fields in column order.
pub fn chain_hash(prev: &str, seq: i64, r: &Record) -> Hash {
    chain_hash_with(&mut Vec::new(), prev, seq, r)
}

/// `chain_hash`, framing the row in `buf` (cleared first) and hashing it in one call: the
/// digest's per-call buffering of a dozen small pieces costs more than the hash itself.
pub fn chain_hash_with(buf: &mut Vec<u8>, prev: &str, seq: i64, r: &Record) -> Hash {
    buf.clear();
    let (mut seq_buf, mut ts_buf) = ([0u8; 20], [0u8; 20]);
    let seq = decimal(seq, &mut seq_buf);
    let ts = decimal(r.ts_ms, &mut ts_buf);
    for field in [
        prev.as_bytes(),
        seq,
        ts,
        r.kind.as_bytes(),
        r.subject.as_bytes(),
        r.target.as_bytes(),
        r.decision.as_bytes(),
        r.check.as_bytes(),
        r.reason.as_bytes(),
        r.request_id.as_bytes(),
        r.jti.as_bytes(),
    ] {
        let mut len_buf = [0u8; 20];
        buf.extend_from_slice(decimal(field.len() as i64, &mut len_buf));
        buf.push(b':');
        buf.extend_from_slice(field);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, buf).as_ref());
    out
}

/// `n` in decimal, as `to_string` writes it, without allocating (20 bytes hold `i64::MIN`).
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        start -= 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        start = start.saturating_sub(1);
        if let Some(sign) = buf.get_mut(start) {
            *sign = b'-';
        }
    }
    buf.get(start..).unwrap_or_default()
}

/// Lowercase hex of a hash, as the chain, the head record and the API show it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |nibble: u8| char::from(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'));
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(digit(b >> 4));
        out.push(digit(b & 0x0f));
    }
    out
}

/// The chain head: the last appended (seq, hash), or (0, GENESIS).
pub fn head(conn: &Connection) -> Result<(i64, String), StoreError> {
    Ok(conn
        .query_row(HEAD, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, GENESIS.to_string())))
}

/// Counts the writer's explicit syncs; every sync changes it.
const COUNT_SYNC: &str = "INSERT INTO meta (key, value) VALUES ('audit_syncs', '1') \
     ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)";

/// Commit a change that is never a no-op (the `audit_syncs` counter in `meta`): under
/// `synchronous = FULL` that commit fsyncs the WAL, and with it every earlier commit made
/// without one. (Rewriting the head with its own values changes no page; SQLite would then
/// skip both the write and the fsync.)
pub fn sync(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(COUNT_SYNC, [])?;
    Ok(())
}

/// Rows per multi-row INSERT: one statement step per group of rows, not per row.
const GROUP: usize = 16;
/// Bound parameters per row of `INSERT`.
const COLUMN_COUNT: usize = 12;

/// `INSERT` of `rows` rows.
fn insert_sql(rows: usize) -> String {
    let one = format!("({})", ["?"; COLUMN_COUNT].join(", "));
    format!(
        "INSERT INTO audit_log ({COLUMNS}) VALUES {}",
        vec![one.as_str(); rows].join(", ")
    )
}

/// Bind one row's values at parameter `at` (1-based) onwards.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    seq: i64,
    r: &Record,
    prev: &str,
    hash: &str,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at, seq)?;
    stmt.raw_bind_parameter(at + 1, r.ts_ms)?;
    for (i, text) in [
        &*r.kind,
        &r.subject,
        &r.target,
        &r.decision,
        &r.check,
        &r.reason,
        &r.request_id,
        &r.jti,
    ]
    .into_iter()
    .enumerate()
    {
        stmt.raw_bind_parameter(at + 2 + i, text)?;
    }
    stmt.raw_bind_parameter(at + 10, prev)?;
    stmt.raw_bind_parameter(at + 11, hash)
}

/// Append a batch in one transaction, extending the chain from `head`; the new head.
pub fn append(
    conn: &mut Connection,
    head: &(i64, String),
    batch: &[Record],
) -> Result<(i64, String), StoreError> {
    let Some(first_seq) = head.0.checked_add(1) else {
        return Err(StoreError::Corrupt("audit sequence"));
    };
    // Each row's hash covers the one before it.
    let mut hashes: Vec<String> = Vec::with_capacity(batch.len());
    let mut seq = head.0;
    let mut framed = Vec::with_capacity(512);
    for r in batch {
        seq += 1;
        let prev = hashes.last().unwrap_or(&head.1);
        hashes.push(hex(&chain_hash_with(&mut framed, prev, seq, r)));
    }
    let prevs = std::iter::once(&head.1).chain(hashes.iter());
    let mut rows = batch.iter().zip(prevs.zip(hashes.iter())).zip(first_seq..);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let full_groups = batch.len() / GROUP;
        if full_groups > 0 {
            let mut stmt = tx.prepare_cached(&insert_sql(GROUP))?;
            for _ in 0..full_groups {
                for (i, ((r, (prev, hash)), seq)) in rows.by_ref().take(GROUP).enumerate() {
                    bind_row(&mut stmt, 1 + i * COLUMN_COUNT, seq, r, prev, hash)?;
                }
                stmt.raw_execute()?;
            }
        }
        let mut stmt = tx.prepare_cached(&insert_sql(1))?;
        for ((r, (prev, hash)), seq) in rows {
            bind_row(&mut stmt, 1, seq, r, prev, hash)?;
            stmt.raw_execute()?;
        }
    }
    let new_head = (seq, hashes.pop().unwrap_or_else(|| head.1.clone()));
    tx.execute(SET_HEAD, params![new_head.0, new_head.1])?;
    tx.commit()?;
    Ok(new_head)
}

fn stored(r: &SqlRow<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        seq: r.get(0)?,
        record: Record {
            ts_ms: r.get(1)?,
            kind: Name::Owned(r.get(2)?),
            subject: r.get(3)?,
            target: r.get(4)?,
            decision: Name::Owned(r.get(5)?),
            check: Name::Owned(r.get(6)?),
            reason: r.get(7)?,
            request_id: r.get(8)?,
            jti: r.get(9)?,
        },
        prev_hash: r.get(10)?,
        hash: r.get(11)?,
    })
}

/// Filters of an audit query; empty strings mean "any".
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub decision: String,
    pub target: String,
    pub subject: String,
    pub check: String,
    pub kind: String,
    pub since_ms: i64,
    /// Only rows with `seq < before` (paging backwards); 0 means from the newest.
    pub before: i64,
    pub limit: i64,
}

/// Matching rows, newest first.
pub fn query(conn: &Connection, q: &Query) -> Result<Vec<Stored>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE (?1 = '' OR decision = ?1) AND (?2 = '' OR target = ?2) \
         AND (?3 = '' OR subject = ?3) AND (?4 = '' OR check_name = ?4) AND (?5 = '' OR kind = ?5) \
         AND ts_ms >= ?6 AND (?7 = 0 OR seq < ?7) ORDER BY seq DESC LIMIT ?8"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![q.decision, q.target, q.subject, q.check, q.kind, q.since_ms, q.before, q.limit],
        stored,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Where the chain first fails, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Row `seq` does not hash to its stored hash (edited).
    Edited(i64),
    /// Rows are missing before `seq` (deleted from the middle or the start).
    Gap { expected: i64, found: i64 },
    /// Row `seq` does not link to the row before it.
    Unlinked(i64),
    /// The head says `head`, the last row is `last < head`: rows deleted from the tail.
    Truncated { last: i64, head: i64 },
    /// The head record does not match the last row `last` (the row or the head was edited,
    /// rows were appended behind the writer's back, or the head was deleted).
    HeadMismatch { last: i64, head: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Edited(s) => write!(f, "row {s} was modified: its hash does not match its contents"),
            Self::Gap { expected, found } => write!(f, "row {expected} is missing (the next row is {found}): rows were deleted"),
            Self::Unlinked(s) => write!(f, "row {s} does not link to the row before it"),
            Self::Truncated { last, head } => write!(
                f,
                "the log ends at row {last} but its head records row {head}: rows {}..={head} were deleted",
                last + 1
            ),
            Self::HeadMismatch { last, head: 0 } => {
                write!(f, "the chain head record is missing (the log ends at row {last})")
            }
            Self::HeadMismatch { last, head } => write!(
                f,
                "row {last} does not match the chain head (which records row {head}): the row or the head was modified"
            ),
        }
    }
}

/// Walk the whole chain; `Ok(rows checked)` or the first break.
pub fn verify_chain(conn: &Connection) -> Result<Result<i64, ChainBreak>, StoreError> {
    let (head_seq, head_hash) = head(conn)?;
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let (mut expected, mut prev) = (1i64, GENESIS.to_string());
    let mut framed = Vec::with_capacity(512);
    while let Some(r) = rows.next()? {
        let row = stored(r)?;
        if row.seq != expected {
            return Ok(Err(ChainBreak::Gap {
                expected,
                found: row.seq,
            }));
        }
        if row.prev_hash != prev {
            return Ok(Err(ChainBreak::Unlinked(row.seq)));
        }
        if hex(&chain_hash_with(&mut framed, &prev, row.seq, &row.record)) != row.hash {
            return Ok(Err(ChainBreak::Edited(row.seq)));
        }
        prev = row.hash;
        expected += 1;
    }
    let last = expected - 1;
    if last < head_seq {
        return Ok(Err(ChainBreak::Truncated {
            last,
            head: head_seq,
        }));
    }
    if last != head_seq || prev != head_hash {
        return Ok(Err(ChainBreak::HeadMismatch {
            last,
            head: head_seq,
        }));
    }
    Ok(Ok(last))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decimal_matches_to_string() {
        for n in [0, 7, -7, 10, 1_764_000_000_123, -1, i64::MAX, i64::MIN] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    /// The chain's definition is fixed: logs written by earlier versions must keep verifying.
    /// The expected value was computed independently (Python hashlib over the same framing).
    #[test]
    fn chain_hash_is_the_documented_framing() {
        let r = Record {
            ts_ms: -1_764_000_000_123,
            kind: "verify".into(),
            subject: "wimse://dev.local/ns/a/sa/b".into(),
            target: "code-search".into(),
            decision: "deny".into(),
            check: "audience".into(),
            reason: "aud is sql".into(),
            request_id: "req-1".into(),
            jti: "jti-1".into(),
        };
        assert_eq!(
            hex(&chain_hash(GENESIS, 7, &r)),
            "d60407fbae8ea11b75512c34d88a97da0ec3f85a8ae9038a53f9da293365bc40"
        );
    }

    /// Batches of every shape around the multi-row group size chain exactly like one row at
    /// a time, and the head follows the last row.
    #[test]
    fn batches_of_any_size_extend_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(crate::store::Store::open(&path).unwrap());
        let mut conn = crate::store::open_connection(&path).unwrap();
        let mut head = head(&conn).unwrap();
        let mut expected = (0i64, GENESIS.to_string());
        let mut n = 0i64;
        for size in [0, 1, GROUP - 1, GROUP, GROUP + 1, 2 * GROUP, 3 * GROUP + 5] {
            let batch: Vec<Record> = (0..size)
                .map(|_| {
                    n += 1;
                    Record {
                        ts_ms: n,
                        kind: "verify".into(),
                        target: format!("t{n}"),
                        decision: "allow".into(),
                        ..Default::default()
                    }
                })
                .collect();
            for r in &batch {
                expected.0 += 1;
                expected.1 = hex(&chain_hash(&expected.1, expected.0, r));
            }
            head = append(&mut conn, &head, &batch).unwrap();
            assert_eq!(head, expected, "after a batch of {size}");
        }
        assert_eq!(verify_chain(&conn).unwrap(), Ok(n));
        let rows = query(
            &conn,
            &Query {
                target: "t20".into(),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows.first().unwrap().record.ts_ms, 20);
    }
}
