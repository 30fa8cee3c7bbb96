//! The `audit_log` and `audit_head` tables: appends that extend the hash chain, queries, and
//! the chain check.

use super::StoreError;
use ring::digest::{Context, SHA256};
use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

const INSERT: &str = "INSERT INTO audit_log (seq, ts_ms, kind, subject, target, decision, check_name, \
     reason, request_id, jti, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const SET_HEAD: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";
const COLUMNS: &str = "seq, ts_ms, kind, subject, target, decision, check_name, reason, request_id, jti, prev_hash, hash";

/// The hash of the empty chain: what the first row's `prev_hash` is.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub ts_ms: i64,
    pub kind: String,
    pub subject: String,
    pub target: String,
    pub decision: String,
    pub check: String,
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

/// SHA-256 over the previous hash and every field, each length-prefixed so that no two rows
/// serialise alike.
pub fn chain_hash(prev: &str, seq: i64, r: &Record) -> String {
    let mut ctx = Context::new(&SHA256);
    let seq = seq.to_string();
    let ts = r.ts_ms.to_string();
    for field in [
        prev,
        &seq,
        &ts,
        &r.kind,
        &r.subject,
        &r.target,
        &r.decision,
        &r.check,
        &r.reason,
        &r.request_id,
        &r.jti,
    ] {
        ctx.update(field.len().to_string().as_bytes());
        ctx.update(b":");
        ctx.update(field.as_bytes());
    }
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
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

/// Append a batch in one transaction, extending the chain from `head`; the new head.
pub fn append(
    conn: &mut Connection,
    head: &(i64, String),
    batch: &[Record],
) -> Result<(i64, String), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (mut seq, mut prev) = head.clone();
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for r in batch {
            seq += 1;
            let hash = chain_hash(&prev, seq, r);
            stmt.execute(params![
                seq,
                r.ts_ms,
                r.kind,
                r.subject,
                r.target,
                r.decision,
                r.check,
                r.reason,
                r.request_id,
                r.jti,
                prev,
                hash
            ])?;
            prev = hash;
        }
    }
    tx.execute(SET_HEAD, params![seq, prev])?;
    tx.commit()?;
    Ok((seq, prev))
}

fn stored(r: &SqlRow<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        seq: r.get(0)?,
        record: Record {
            ts_ms: r.get(1)?,
            kind: r.get(2)?,
            subject: r.get(3)?,
            target: r.get(4)?,
            decision: r.get(5)?,
            check: r.get(6)?,
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
        if chain_hash(&prev, row.seq, &row.record) != row.hash {
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
