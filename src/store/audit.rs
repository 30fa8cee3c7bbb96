//! The `audit_log`, `audit_runs` and `audit_head` tables: appends that extend the hash chain,
//! pruning behind a checkpoint row, queries, and the chain check.

use super::StoreError;
use ring::digest::{digest, SHA256};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

const HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
const SET_HEAD: &str = "INSERT INTO audit_head (id, seq, hash, tag) VALUES (1, ?1, ?2, ?3) \
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, tag = excluded.tag";
const COLUMNS: &str =
    "seq, ts_ms, kind, subject, target, decision, check_name, reason, request_id, jti, hash, count";

/// The hash of the empty chain: what the first row's hash covers as its predecessor's.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A field that is usually one of a fixed set of names: no allocation for those.
pub type Name = std::borrow::Cow<'static, str>;

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How many events the row stands for: 1, or the repeats of one refusal aggregated into
    /// it. Hashed (when not 1) like every other field.
    pub count: i64,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            ts_ms: 0,
            kind: Name::Borrowed(""),
            subject: String::new(),
            target: String::new(),
            decision: Name::Borrowed(""),
            check: Name::Borrowed(""),
            reason: String::new(),
            request_id: String::new(),
            jti: String::new(),
            count: 1,
        }
    }
}

/// Every `kind` a row is written with: the entry point that wrote it.
pub const KINDS: &[&str] = &[
    "verify",
    "exchange",
    "gateway",
    "signal",
    "revocation",
    "registration",
    "admin",
    // the log's own upkeep: a pruning checkpoint
    "audit",
];

/// Every `decision` a row is written with.
pub const DECISIONS: &[&str] = &[
    // verify and gateway
    "allow",
    "deny",
    // exchange
    "issued",
    "denied",
    // admin calls
    "ok",
    "unauthorized",
    "refused",
    // registration
    "registered",
    "updated",
    "deregistered",
    // signal
    "applied",
    "replay",
    "unstored",
    // revocation: the action and its outcome
    "revoke:applied",
    "revoke:replay",
    "revoke:unstored",
    "lift:applied",
    "lift:replay",
    "lift:unstored",
    "lift:not_found",
    // audit: rows older than the retention removed
    "pruned",
    // admin: toolgate's signing key rotated, a retired key's private half removed
    "rotated",
    "retired",
];

/// The `check` of a refused exchange or signal (its error code), besides the verify checks.
pub const REFUSAL_CODES: &[&str] = &[
    "invalid_request",
    "invalid_target",
    "unsupported_grant_type",
    "invalid_client",
    "invalid_grant",
    "access_denied",
    "unavailable",
    "error",
    "invalid_issuer",
    "invalid_key",
    "invalid_audience",
    "temporarily_unavailable",
    "invalid_dpop_proof",
    "use_dpop_nonce",
];

/// Whether rows can carry `check`: a verify check name, a refusal code, or (admin calls) an
/// HTTP status.
pub fn known_check(check: &str) -> bool {
    crate::verify::Check::ALL.iter().any(|c| c.name() == check)
        || REFUSAL_CODES.contains(&check)
        || (check.len() == 3
            && check.bytes().all(|b| b.is_ascii_digit())
            && check.parse::<u16>().is_ok_and(|s| (100..600).contains(&s)))
}

/// The `check` values, for an error message naming them.
pub fn check_names() -> String {
    let mut names: Vec<&str> = crate::verify::Check::ALL.iter().map(|c| c.name()).collect();
    names.extend(REFUSAL_CODES);
    format!("{}, or an HTTP status (admin calls)", names.join(", "))
}

/// Whether a record uses only the vocabulary above (what the filters accept).
pub fn in_vocabulary(r: &Record) -> bool {
    KINDS.contains(&&*r.kind)
        && DECISIONS.contains(&&*r.decision)
        && (r.check.is_empty() || known_check(&r.check))
}

/// A stored row: the record, its place in the chain and its hash (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: i64,
    pub record: Record,
    pub hash: String,
}

/// A row's SHA-256 chain hash.
pub type Hash = [u8; 32];

/// SHA-256 over the previous hash (lowercase hex) and every field, each length-prefixed so
/// that no two rows serialise alike: `len ":" bytes` for prev, seq, ts_ms (decimal) and the
/// text fields in column order, then `count` (decimal) unless it is 1 — so rows written before
/// counts existed keep their hashes (the length prefixes keep the two framings apart).
pub fn chain_hash(prev: &str, seq: i64, r: &Record) -> Hash {
    chain_hash_with(&mut Vec::new(), prev.as_bytes(), seq, r)
}

/// `chain_hash` of `prev` given as hex bytes, framing the row in `buf` (cleared first) and
/// hashing it in one call: the digest's per-call buffering of a dozen small pieces costs more
/// than the hash itself.
fn chain_hash_with(buf: &mut Vec<u8>, prev: &[u8], seq: i64, r: &Record) -> Hash {
    buf.clear();
    let (mut seq_buf, mut ts_buf, mut count_buf) = ([0u8; 20], [0u8; 20], [0u8; 20]);
    let seq = decimal(seq, &mut seq_buf);
    let ts = decimal(r.ts_ms, &mut ts_buf);
    let count = (r.count != 1).then(|| decimal(r.count, &mut count_buf));
    for field in [
        prev,
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
    ]
    .into_iter()
    .chain(count)
    {
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
    bytes
        .iter()
        .flat_map(|b| [hex_digit(b >> 4), hex_digit(b & 0x0f)])
        .map(char::from)
        .collect()
}

fn hex_digit(nibble: u8) -> u8 {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0')
}

/// A hash in lowercase hex, on the stack: what the next row's hash covers.
type HexHash = [u8; 64];

fn hex_into(hash: &Hash) -> HexHash {
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(hash) {
        pair.copy_from_slice(&[hex_digit(b >> 4), hex_digit(b & 0x0f)]);
    }
    out
}

/// A hex hash (the head record, `GENESIS`) as the stack form; `None` if it is not 64 bytes.
fn hex_array(hex: &str) -> Option<HexHash> {
    hex.as_bytes().try_into().ok()
}

/// The secret that tags the chain head, kept outside the database (the audit key file): the
/// head names the last row and its hash, which covers every row before it, so a writer of the
/// database alone can neither rewrite, append nor truncate the log and produce a head that
/// verifies. (The token-signing key would not do: it is stored in the database itself.)
#[derive(Clone)]
pub struct HeadKey(ring::hmac::Key);

impl std::fmt::Debug for HeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadKey")
    }
}

impl HeadKey {
    /// The bytes of a secret are the HMAC-SHA256 key.
    pub fn new(secret: &[u8]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// The tag of head `(seq, hash)`: lowercase hex of HMAC-SHA256 over
    /// `toolgate-audit-head-v1:<seq>:<hash>`.
    pub fn tag(&self, seq: i64, hash: &str) -> String {
        hex(ring::hmac::sign(&self.0, &head_message(seq, hash)).as_ref())
    }

    /// Whether `tag` is the tag of `(seq, hash)` (`hmac::verify` compares in constant time).
    pub fn verifies(&self, seq: i64, hash: &str, tag: &str) -> bool {
        unhex32(tag)
            .is_some_and(|b| ring::hmac::verify(&self.0, &head_message(seq, hash), &b).is_ok())
    }
}

/// 32 bytes from exactly 64 lowercase hex digits.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        let (hi, lo) = match pair {
            [hi, lo] => (nibble(*hi)?, nibble(*lo)?),
            _ => return None,
        };
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

/// What a head's tag covers.
fn head_message(seq: i64, hash: &str) -> Vec<u8> {
    let mut buf = [0u8; 20];
    let mut msg = Vec::with_capacity(100);
    msg.extend_from_slice(b"toolgate-audit-head-v1:");
    msg.extend_from_slice(decimal(seq, &mut buf));
    msg.push(b':');
    msg.extend_from_slice(hash.as_bytes());
    msg
}

/// What the stored head says about itself under a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadAuth {
    /// No head yet (a new log).
    Empty,
    /// A head written before heads were tagged.
    Untagged,
    /// The tag is the key's.
    Valid,
    /// The tag is not the key's: the head was rewritten without the key, or the key is not the
    /// one the log was written with.
    Forged,
}

/// Check the stored head's tag against `key`.
pub fn head_auth(conn: &Connection, key: &HeadKey) -> Result<HeadAuth, StoreError> {
    let stored: Option<(i64, String, String)> = conn
        .query_row(
            "SELECT seq, hash, tag FROM audit_head WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match stored {
        None => HeadAuth::Empty,
        Some((_, _, tag)) if tag.is_empty() => HeadAuth::Untagged,
        Some((seq, hash, tag)) if key.verifies(seq, &hash, &tag) => HeadAuth::Valid,
        Some(_) => HeadAuth::Forged,
    })
}

/// Tag the stored head as it is (a log written before heads were tagged, on the first start
/// with a key).
pub fn tag_head(conn: &Connection, key: &HeadKey) -> Result<(), StoreError> {
    let (seq, hash) = stored_head(conn)?;
    conn.execute(
        "UPDATE audit_head SET tag = ?1 WHERE id = 1",
        params![key.tag(seq, &hash)],
    )?;
    Ok(())
}

/// Record the empty log's head `(0, GENESIS)`, tagged, when its key is made: from then on a
/// log with no head at all has been emptied, not just created.
pub fn tag_genesis(conn: &Connection, key: &HeadKey) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash, tag) VALUES (1, 0, ?1, ?2)",
        params![GENESIS, key.tag(0, GENESIS)],
    )?;
    Ok(())
}

/// The chain head to extend: the last appended (seq, hash), or (0, GENESIS). A head whose
/// hash is not 64 lowercase hex digits (as the writer records it) is corrupt: the writer
/// cannot extend it.
pub fn head(conn: &Connection) -> Result<(i64, String), StoreError> {
    let head = stored_head(conn)?;
    let lower_hex = head.1.len() == 64
        && head
            .1
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex {
        return Err(StoreError::Corrupt("audit head"));
    }
    Ok(head)
}

/// The head record as stored (the chain check compares it, whatever it holds).
fn stored_head(conn: &Connection) -> Result<(i64, String), StoreError> {
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
/// Bound parameters per row of `audit_log`.
const COLUMN_COUNT: usize = 12;
const RUN_COLUMNS: &str = "field, value, first_seq, last_seq";

/// `INSERT` of `rows` rows of `columns` (`count` of them) into `table`.
fn insert_sql(table: &str, columns: &str, count: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; count].join(", "));
    format!(
        "INSERT INTO {table} ({columns}) VALUES {}",
        vec![one.as_str(); rows].join(", ")
    )
}

/// Insert `items` into `table`, `GROUP` rows per statement and the remainder one by one;
/// `bind(stmt, at, item)` binds one row's `count` values from parameter `at` (1-based).
fn insert_grouped<T>(
    tx: &Connection,
    (table, columns, count): (&str, &str, usize),
    items: impl IntoIterator<Item = T, IntoIter: ExactSizeIterator>,
    mut bind: impl FnMut(&mut rusqlite::Statement<'_>, usize, T) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    let mut items = items.into_iter();
    let full_groups = items.len() / GROUP;
    if full_groups > 0 {
        let mut stmt = tx.prepare_cached(&insert_sql(table, columns, count, GROUP))?;
        for _ in 0..full_groups {
            for (i, item) in items.by_ref().take(GROUP).enumerate() {
                bind(&mut stmt, 1 + i * count, item)?;
            }
            stmt.raw_execute()?;
        }
    }
    let mut stmt = tx.prepare_cached(&insert_sql(table, columns, count, 1))?;
    for item in items {
        bind(&mut stmt, 1, item)?;
        stmt.raw_execute()?;
    }
    Ok(())
}

/// Bind one row's values at parameter `at` (1-based) onwards.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    seq: i64,
    r: &Record,
    hash: &Hash,
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
    stmt.raw_bind_parameter(at + 10, &hash[..])?;
    stmt.raw_bind_parameter(at + 11, r.count)
}

/// Rows of one subject (or tool) at most this far apart share one run; a query scans at
/// most this many other rows per match.
const RUN_GAP: i64 = 16;

/// The runs a batch adds to `audit_runs`: for each subject and each target, the spans of
/// `seq` that hold its rows (apart by at most `RUN_GAP`), in place of one index entry per row.
fn runs<'a>(first_seq: i64, batch: &'a [Record]) -> Vec<(&'static str, &'a str, i64, i64)> {
    use std::collections::HashMap;
    let mut open: [HashMap<&'a str, (i64, i64)>; 2] = [HashMap::new(), HashMap::new()];
    let mut done = Vec::new();
    for (r, seq) in batch.iter().zip(first_seq..) {
        for ((field, value), spans) in [("subject", &r.subject), ("target", &r.target)]
            .into_iter()
            .zip(open.iter_mut())
        {
            if value.is_empty() {
                continue;
            }
            match spans.get_mut(value.as_str()) {
                Some(span) if seq - span.1 <= RUN_GAP => span.1 = seq,
                Some(span) => {
                    done.push((field, value.as_str(), span.0, span.1));
                    *span = (seq, seq);
                }
                None => {
                    spans.insert(value, (seq, seq));
                }
            }
        }
    }
    for (field, spans) in ["subject", "target"].into_iter().zip(open) {
        done.extend(spans.into_iter().map(|(v, (a, b))| (field, v, a, b)));
    }
    done
}

/// `n` sequence numbers from `first`, as an exact-size iterator.
fn seqs(first: i64, n: usize) -> impl ExactSizeIterator<Item = i64> {
    (0..n).map(move |i| first + i as i64)
}

/// Append a batch in one transaction, extending the chain from `head`; the new head.
pub fn append(
    conn: &mut Connection,
    key: &HeadKey,
    head: &(i64, String),
    batch: &[Record],
) -> Result<(i64, String), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let new_head = append_rows(&tx, key, head, batch)?;
    tx.commit()?;
    Ok(new_head)
}

/// Insert a batch's rows, their runs and the new (tagged) head inside the caller's
/// transaction.
fn append_rows(
    tx: &Connection,
    key: &HeadKey,
    head: &(i64, String),
    batch: &[Record],
) -> Result<(i64, String), StoreError> {
    let (Some(first_seq), Some(head_hex)) = (head.0.checked_add(1), hex_array(&head.1)) else {
        return Err(StoreError::Corrupt("audit head"));
    };
    // Each row's hash covers the one before it.
    let mut hashes: Vec<Hash> = Vec::with_capacity(batch.len());
    let (mut seq, mut prev) = (head.0, head_hex);
    let mut framed = Vec::with_capacity(512);
    for r in batch {
        seq += 1;
        let hash = chain_hash_with(&mut framed, &prev, seq, r);
        prev = hex_into(&hash);
        hashes.push(hash);
    }
    insert_grouped(
        tx,
        ("audit_log", COLUMNS, COLUMN_COUNT),
        batch.iter().zip(&hashes).zip(seqs(first_seq, batch.len())),
        |stmt, at, ((r, hash), seq)| bind_row(stmt, at, seq, r, hash),
    )?;
    insert_grouped(
        tx,
        ("audit_runs", RUN_COLUMNS, 4),
        runs(first_seq, batch),
        |stmt, at, (field, value, first, last)| {
            stmt.raw_bind_parameter(at, field)?;
            stmt.raw_bind_parameter(at + 1, value)?;
            stmt.raw_bind_parameter(at + 2, first)?;
            stmt.raw_bind_parameter(at + 3, last)
        },
    )?;
    let new_head = match hashes.last() {
        Some(last) => (seq, hex(last)),
        None => head.clone(),
    };
    let tag = key.tag(new_head.0, &new_head.1);
    tx.execute(SET_HEAD, params![new_head.0, new_head.1, tag])?;
    Ok(new_head)
}

/// What a pruning pass removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The first and last `seq` removed.
    pub first: i64,
    pub last: i64,
    /// The chain head after the checkpoint row.
    pub head: (i64, String),
    /// Whether older rows remain for another pass.
    pub more: bool,
}

/// The checkpoint row's reason: where the remaining chain starts, which `audit verify` reads
/// back. The row is hashed like any other, so the checkpoint is part of the chain it anchors.
const CHECKPOINT_PREFIX: &str = "checkpoint ";

/// Remove the oldest rows written before `cutoff_ms` (at most `max_rows`, and only a prefix of
/// the chain, so that what remains is one unbroken chain) with their runs, and append a
/// checkpoint row (kind `audit`, decision `pruned`) naming the last removed row's seq and hash:
/// the remaining chain verifies from there. One transaction; `None` if nothing was old enough.
pub fn prune(
    conn: &mut Connection,
    key: &HeadKey,
    head: &(i64, String),
    cutoff_ms: i64,
    now_ms: i64,
    max_rows: i64,
) -> Result<Option<Pruned>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // The prefix older than the cutoff, read in seq order and no further than `max_rows` (no
    // index on time is needed: the walk stops at the first newer row).
    let (mut first, mut last): (Option<i64>, Option<(i64, Hash)>) = (None, None);
    let mut stopped = false;
    {
        let mut stmt =
            tx.prepare_cached("SELECT seq, ts_ms, hash FROM audit_log ORDER BY seq LIMIT ?1")?;
        let mut rows = stmt.query([max_rows.saturating_add(1)])?;
        let mut seen = 0i64;
        while let Some(r) = rows.next()? {
            let (seq, ts): (i64, i64) = (r.get(0)?, r.get(1)?);
            if ts >= cutoff_ms || seen == max_rows {
                stopped = ts >= cutoff_ms;
                break;
            }
            let hash: Hash = r
                .get_ref(2)?
                .as_blob()
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or(StoreError::Corrupt("audit row hash"))?;
            first.get_or_insert(seq);
            last = Some((seq, hash));
            seen += 1;
        }
    }
    let (Some(first), Some((last_seq, last_hash))) = (first, last) else {
        return Ok(None);
    };
    let more = !stopped && {
        let next: Option<i64> = tx
            .query_row(
                "SELECT ts_ms FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT 1",
                [last_seq],
                |r| r.get(0),
            )
            .optional()?;
        next.is_some_and(|ts| ts < cutoff_ms)
    };
    tx.execute("DELETE FROM audit_log WHERE seq <= ?1", [last_seq])?;
    tx.execute("DELETE FROM audit_runs WHERE last_seq <= ?1", [last_seq])?;
    let checkpoint = Record {
        ts_ms: now_ms,
        kind: "audit".into(),
        decision: "pruned".into(),
        reason: format!(
            "{CHECKPOINT_PREFIX}{last_seq} {}: rows {first}..={last_seq} were older than the retention",
            hex(&last_hash)
        ),
        ..Default::default()
    };
    let head = append_rows(&tx, key, head, std::slice::from_ref(&checkpoint))?;
    tx.commit()?;
    Ok(Some(Pruned {
        first,
        last: last_seq,
        head,
        more,
    }))
}

/// Where the stored chain starts: `(seq, hash)` of the last row removed, as the newest
/// checkpoint row states it, or `(0, GENESIS)`. `Err(seq)` names a checkpoint row that does not
/// state one.
fn chain_start(conn: &Connection) -> Result<Result<(i64, HexHash), i64>, StoreError> {
    let newest: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, reason FROM audit_log WHERE kind = 'audit' AND decision = 'pruned' \
             ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((row, reason)) = newest else {
        // GENESIS: 64 zeros.
        return Ok(Ok((0, [b'0'; 64])));
    };
    let stated = reason
        .strip_prefix(CHECKPOINT_PREFIX)
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(seq, rest)| {
            let seq: i64 = seq.parse().ok()?;
            let hash = rest.get(..64)?;
            let lower_hex = hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            (seq > 0 && seq < row && lower_hex)
                .then(|| hex_array(hash).map(|h| (seq, h)))
                .flatten()
        });
    Ok(stated.ok_or(row))
}

/// The record of a row selected as `COLUMNS`.
fn record(r: &SqlRow<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        ts_ms: r.get(1)?,
        kind: Name::Owned(r.get(2)?),
        subject: r.get(3)?,
        target: r.get(4)?,
        decision: Name::Owned(r.get(5)?),
        check: Name::Owned(r.get(6)?),
        reason: r.get(7)?,
        request_id: r.get(8)?,
        jti: r.get(9)?,
        count: r.get(11)?,
    })
}

fn stored(r: &SqlRow<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        seq: r.get(0)?,
        record: record(r)?,
        hash: hex(r.get_ref(10)?.as_blob().unwrap_or_default()),
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

/// Matching rows, newest first. A subject or tool filter reads that key's runs
/// (`audit_runs`, newest first) and only the rows inside them.
pub fn query(conn: &Connection, q: &Query) -> Result<Vec<Stored>, StoreError> {
    let key = match (q.subject.as_str(), q.target.as_str()) {
        ("", "") => None,
        ("", target) => Some(("target", target)),
        (subject, _) => Some(("subject", subject)),
    };
    let base =
        params![q.decision, q.target, q.subject, q.check, q.kind, q.since_ms, q.before, q.limit];
    let rows = match key {
        None => {
            let mut stmt = conn.prepare_cached(&query_sql(false))?;
            let rows = stmt.query_map(base, stored)?;
            rows.collect::<Result<Vec<_>, _>>()?
        }
        Some((field, value)) => {
            let mut stmt = conn.prepare_cached(&query_sql(true))?;
            let all: Vec<&dyn rusqlite::ToSql> = base
                .iter()
                .copied()
                .chain([&field as &dyn rusqlite::ToSql, &value])
                .collect();
            let rows = stmt.query_map(all.as_slice(), stored)?;
            rows.collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(rows)
}

/// The audit query: ?1..?5 decision, target, subject, check, kind ('' for any), ?6 since,
/// ?7 before (0 for none), ?8 limit; through the runs of (?9 field, ?10 value) if `by_runs`.
fn query_sql(by_runs: bool) -> String {
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("a.{c}")).collect();
    let columns = columns.join(", ");
    let filters = "(?1 = '' OR a.decision = ?1) AND (?2 = '' OR a.target = ?2) \
         AND (?3 = '' OR a.subject = ?3) AND (?4 = '' OR a.check_name = ?4) \
         AND (?5 = '' OR a.kind = ?5) AND a.ts_ms >= ?6 AND (?7 = 0 OR a.seq < ?7)";
    if by_runs {
        // CROSS JOIN keeps the runs as the outer loop: newest run first, then its rows
        // newest first, which is newest first overall (runs of one key never overlap).
        format!(
            "SELECT {columns} FROM audit_runs r CROSS JOIN audit_log a \
             ON a.seq BETWEEN r.first_seq AND r.last_seq \
             WHERE r.field = ?9 AND r.value = ?10 AND (?7 = 0 OR r.first_seq < ?7) \
             AND {filters} ORDER BY r.first_seq DESC, a.seq DESC LIMIT ?8"
        )
    } else {
        format!("SELECT {columns} FROM audit_log a WHERE {filters} ORDER BY a.seq DESC LIMIT ?8")
    }
}

/// Where the chain first fails, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// Row `seq` does not hash to its stored hash: it was edited, or the row before it was
    /// edited and its hash recomputed (each hash covers the one before it).
    Edited(i64),
    /// Rows are missing before `seq` (deleted from the middle or the start).
    Gap { expected: i64, found: i64 },
    /// The head says `head`, the last row is `last < head`: rows deleted from the tail.
    Truncated { last: i64, head: i64 },
    /// The head record does not match the last row `last` (the row or the head was edited,
    /// rows were appended behind the writer's back, or the head was deleted).
    HeadMismatch { last: i64, head: i64 },
    /// The chain is intact but row `seq` lies in no run of its subject or tool (`field`):
    /// queries by that field would not show it (runs were deleted or edited).
    Unfindable { seq: i64, field: &'static str },
    /// Row `seq` is a pruning checkpoint that names no earlier row as where the chain starts.
    Checkpoint(i64),
    /// The chain and its head agree, but the head's tag is not the audit key's: the log was
    /// rewritten by someone without the key (or the key is not this log's).
    HeadTag { head: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Edited(1) => write!(f, "row 1 was modified: its hash does not match its contents"),
            Self::Edited(s) => write!(
                f,
                "row {s} was modified: its hash does not match its contents and the row before it \
                 (or row {} was modified and its hash recomputed)",
                s - 1
            ),
            Self::Gap { expected, found } => write!(f, "row {expected} is missing (the next row is {found}): rows were deleted"),
            Self::Truncated { last, head } => write!(
                f,
                "the log ends at row {last} but its head records row {head}: rows {}..={head} were deleted",
                last + 1
            ),
            Self::HeadMismatch { last, head: 0 } => {
                write!(f, "the chain head record is missing (the log ends at row {last})")
            }
            Self::Unfindable { seq, field } => write!(
                f,
                "row {seq} is missing from audit_runs: a query by its {} would not show it \
                 (lookup rows were deleted or modified)",
                if *field == "target" { "tool" } else { field }
            ),
            Self::HeadTag { head } => write!(
                f,
                "the chain head (row {head}) is not tagged with the audit key: the log was rewritten \
                 by someone without the key, or the key file is not this database's"
            ),
            Self::Checkpoint(seq) => write!(
                f,
                "row {seq} is a pruning checkpoint but does not name the last pruned row and its hash"
            ),
            Self::HeadMismatch { last, head } => write!(
                f,
                "row {last} does not match the chain head (which records row {head}): the row or the head was modified"
            ),
        }
    }
}

/// Walk the whole chain (from its checkpoint, if rows were pruned); `Ok(rows checked)` or the
/// first break.
///
/// With `key`, the head's tag must be the key's too: without it, a writer of the database
/// alone can rewrite the log and every hash after the change, and it still verifies.
pub fn verify_chain(
    conn: &Connection,
    key: Option<&HeadKey>,
) -> Result<Result<i64, ChainBreak>, StoreError> {
    // One snapshot for every read below (the daemon may be writing): outside a transaction,
    // each statement would see the log as of its own start.
    let _snapshot = if conn.is_autocommit() {
        Some(conn.unchecked_transaction()?)
    } else {
        None
    };
    let (head_seq, head_hash) = stored_head(conn)?;
    // A log not migrated yet (`audit verify` opens it read-only) has no counts: all were 1.
    let has_count = super::has_column(conn, "audit_log", "count")?;
    let columns = if has_count {
        COLUMNS.to_string()
    } else {
        COLUMNS.replace(", count", ", 1")
    };
    // Rows older than the retention are gone; the newest checkpoint row says where the rest
    // starts.
    let (start, start_hash) = match chain_start(conn)? {
        Ok(start) => start,
        Err(row) => return Ok(Err(ChainBreak::Checkpoint(row))),
    };
    let mut stmt = conn.prepare(&format!("SELECT {columns} FROM audit_log ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let (mut expected, mut prev) = (start + 1, start_hash);
    let mut framed = Vec::with_capacity(512);
    while let Some(r) = rows.next()? {
        let (seq, record) = (r.get(0)?, record(r)?);
        if seq != expected {
            return Ok(Err(ChainBreak::Gap {
                expected,
                found: seq,
            }));
        }
        let hash = chain_hash_with(&mut framed, &prev, seq, &record);
        let hash_hex = hex_into(&hash);
        // Version 5 stores the hash as bytes; a log not yet migrated (the daemon migrates at
        // start, `audit verify` opens read-only) has it as lowercase hex.
        let matches = match r.get_ref(10)? {
            ValueRef::Blob(stored) => stored == hash,
            ValueRef::Text(stored) => stored == hash_hex,
            _ => false,
        };
        if !matches {
            return Ok(Err(ChainBreak::Edited(seq)));
        }
        prev = hash_hex;
        expected += 1;
    }
    let last = expected - 1;
    let checked = last - start;
    if last < head_seq {
        return Ok(Err(ChainBreak::Truncated {
            last,
            head: head_seq,
        }));
    }
    if last != head_seq || prev[..] != *head_hash.as_bytes() {
        return Ok(Err(ChainBreak::HeadMismatch {
            last,
            head: head_seq,
        }));
    }
    if let Some(key) = key {
        // A log never tagged (no column: not migrated) has no tag to match either.
        let has_tag = super::has_column(conn, "audit_head", "tag")?;
        let tag: String = if has_tag {
            conn.query_row("SELECT tag FROM audit_head WHERE id = 1", [], |r| r.get(0))
                .optional()?
                .unwrap_or_default()
        } else {
            String::new()
        };
        // Even an empty log has a tagged head (its genesis) once its key exists: no head at
        // all is a log emptied together with its head.
        if !key.verifies(head_seq, &head_hash, &tag) {
            return Ok(Err(ChainBreak::HeadTag { head: head_seq }));
        }
    }
    if let Some(broken) = unfindable(conn)? {
        return Ok(Err(broken));
    }
    Ok(Ok(checked))
}

/// The first row that the runs of its subject or tool do not cover: for each row, the run of
/// that key starting at or before it must reach it (one index seek per row and field).
fn unfindable(conn: &Connection) -> Result<Option<ChainBreak>, StoreError> {
    // A log in the version 4 layout (not migrated yet) has indexes, not runs. Told by its
    // columns rather than by user_version, which an editor could lower to skip this check.
    let v4_layout = super::has_column(conn, "audit_log", "prev_hash")?;
    if v4_layout {
        return Ok(None);
    }
    // Dropped runs cover nothing (a view in their place is checked like the table).
    let runs_exist: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'audit_runs'",
        [],
        |r| r.get(0),
    )?;
    let mut first: Option<(i64, &'static str)> = None;
    for field in ["subject", "target"] {
        let seq: Option<i64> = if runs_exist {
            let sql = format!(
                "SELECT min(a.seq) FROM audit_log a WHERE a.{field} != '' AND coalesce(( \
                    SELECT r.last_seq FROM audit_runs r WHERE r.field = ?1 \
                    AND r.value = a.{field} AND r.first_seq <= a.seq \
                    ORDER BY r.first_seq DESC LIMIT 1), 0) < a.seq"
            );
            conn.query_row(&sql, [field], |r| r.get(0))?
        } else {
            let sql = format!("SELECT min(seq) FROM audit_log WHERE {field} != ''");
            conn.query_row(&sql, [], |r| r.get(0))?
        };
        if let Some(seq) = seq {
            if first.is_none_or(|(s, _)| seq < s) {
                first = Some((seq, field));
            }
        }
    }
    Ok(first.map(|(seq, field)| ChainBreak::Unfindable { seq, field }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn key() -> HeadKey {
        HeadKey::new(b"unit-test-audit-key")
    }

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
            count: 1,
        };
        assert_eq!(
            hex(&chain_hash(GENESIS, 7, &r)),
            "d60407fbae8ea11b75512c34d88a97da0ec3f85a8ae9038a53f9da293365bc40"
        );
        // A count other than 1 is one more framed field (same independent computation).
        let counted = Record { count: 42, ..r };
        assert_eq!(
            hex(&chain_hash(GENESIS, 7, &counted)),
            "4623ffe59fb004518d885d4370e4e434b102df04152e693058b28dec68177b43"
        );
    }

    /// Pruning removes the oldest rows (a prefix, however the later rows' times go) and their
    /// runs behind a checkpoint row; the rest verifies from the checkpoint, which is itself in
    /// the chain: editing it or deleting it shows.
    #[test]
    fn pruning_keeps_the_rest_of_the_chain_verifiable() {
        let (_dir, mut conn) = fresh();
        let mut head = head(&conn).unwrap();
        let rec = |ts_ms: i64, target: &str| Record {
            ts_ms,
            kind: "verify".into(),
            decision: "allow".into(),
            target: target.into(),
            count: if ts_ms % 7 == 0 { 3 } else { 1 },
            ..Default::default()
        };
        // Rows 1..=50 at t = 1..=50, row 51 newer, then rows older again.
        let batch: Vec<Record> = (1..=50)
            .map(|t| rec(t, "old"))
            .chain([rec(1000, "new")])
            .chain((52..=60).map(|t| rec(t, "late")))
            .collect();
        head = append(&mut conn, &key(), &head, &batch).unwrap();
        assert_eq!(prune(&mut conn, &key(), &head, 1, 2000, 100).unwrap(), None);
        // At most 20 rows a pass: more remain.
        let first = prune(&mut conn, &key(), &head, 500, 2000, 20)
            .unwrap()
            .unwrap();
        assert_eq!((first.first, first.last, first.more), (1, 20, true));
        assert_eq!(first.head.0, 61);
        head = first.head;
        let second = prune(&mut conn, &key(), &head, 500, 2000, 100)
            .unwrap()
            .unwrap();
        // Stops at the first row not older than the cutoff (51), even with older ones after.
        assert_eq!((second.first, second.last, second.more), (21, 50, false));
        head = second.head;
        assert_eq!(head.0, 62);
        // 51..=62 remain: 10 rows, 2 checkpoint rows.
        assert_eq!(verify_chain(&conn, Some(&key())).unwrap(), Ok(12));
        let runs: i64 = conn
            .query_row(
                "SELECT count(*) FROM audit_runs WHERE value = 'old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(runs, 0);
        let rows = query(
            &conn,
            &Query {
                kind: "audit".into(),
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(
            rows[0].record.reason.starts_with("checkpoint 50 "),
            "{rows:?}"
        );

        // An edited checkpoint (another start) or a deleted one shows.
        let path = conn.path().unwrap().to_string();
        drop(conn);
        for tamper in [
            "UPDATE audit_log SET reason = replace(reason, 'checkpoint 50 ', 'checkpoint 49 ') WHERE seq = 62",
            "UPDATE audit_log SET reason = 'checkpoint' WHERE seq = 62",
            "DELETE FROM audit_log WHERE seq = 62",
            "DELETE FROM audit_log WHERE seq IN (61, 62)",
        ] {
            let copy = tempfile::tempdir().unwrap();
            let to = copy.path().join("t.db");
            let c = Connection::open(&path).unwrap();
            c.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
            let c = Connection::open(&to).unwrap();
            c.execute_batch(tamper).unwrap();
            assert!(verify_chain(&c, Some(&key())).unwrap().is_err(), "{tamper}");
        }
    }

    /// A connection to a new database with the schema (the directory lives as long as the
    /// guard).
    fn fresh() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(crate::store::Store::open(&path).unwrap());
        let conn = crate::store::open_connection(&path).unwrap();
        (dir, conn)
    }

    /// Queries by subject or tool read runs: they return exactly the matching rows, newest
    /// first, across batches, runs split by gaps, and pages, as a scan of every row would.
    #[test]
    fn subject_and_tool_queries_through_runs_match_a_full_scan() {
        let (_dir, mut conn) = fresh();
        let mut head = head(&conn).unwrap();
        let mut all: Vec<(i64, Record)> = Vec::new();
        let mut n = 0i64;
        // Rare subjects (every 37th row) leave gaps wider than RUN_GAP inside one batch.
        for size in [1usize, 5, 90, 16, 200, 3] {
            let batch: Vec<Record> = (0..size)
                .map(|_| {
                    n += 1;
                    let subject = match n {
                        // One run per row here: more runs in a batch than GROUP.
                        250..290 => format!("solo-{n}"),
                        n if n % 37 == 0 => "rare".to_string(),
                        n if n % 11 == 0 => String::new(),
                        n => format!("agent-{}", n % 3),
                    };
                    Record {
                        ts_ms: n,
                        kind: "verify".into(),
                        subject,
                        target: format!("tool-{}", n % 4),
                        decision: if n % 5 == 0 { "deny" } else { "allow" }.into(),
                        ..Default::default()
                    }
                })
                .collect();
            all.extend((head.0 + 1..).zip(batch.iter().cloned()));
            head = append(&mut conn, &key(), &head, &batch).unwrap();
        }
        // Every row lies in a run of its subject and of its tool.
        assert_eq!(verify_chain(&conn, Some(&key())).unwrap(), Ok(n));
        let keys = [
            "rare", "agent-0", "agent-2", "nobody", "solo-260", "solo-289",
        ];
        let queries = keys
            .iter()
            .map(|k| Query {
                subject: (*k).into(),
                ..Default::default()
            })
            .chain((0..5).map(|t| Query {
                target: format!("tool-{t}"),
                ..Default::default()
            }))
            .chain([Query {
                subject: "agent-1".into(),
                target: "tool-1".into(),
                ..Default::default()
            }])
            .chain([Query {
                target: "tool-2".into(),
                decision: "deny".into(),
                ..Default::default()
            }]);
        for q in queries {
            let expected: Vec<i64> = all
                .iter()
                .rev()
                .filter(|(_, r)| {
                    (q.subject.is_empty() || r.subject == q.subject)
                        && (q.target.is_empty() || r.target == q.target)
                        && (q.decision.is_empty() || r.decision == q.decision)
                })
                .map(|(seq, _)| *seq)
                .collect();
            // Page through with a small limit.
            let mut got = Vec::new();
            let mut before = 0;
            loop {
                let page = query(
                    &conn,
                    &Query {
                        limit: 7,
                        before,
                        ..q.clone()
                    },
                )
                .unwrap();
                got.extend(page.iter().map(|s| s.seq));
                match page.last() {
                    Some(last) if page.len() == 7 => before = last.seq,
                    _ => break,
                }
            }
            assert_eq!(got, expected, "{q:?}");
        }
        // The runs deliver rows in order: no sort of every match before the limit applies.
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", query_sql(true)))
            .unwrap()
            .query_map(
                params!["", "", "rare", "", "", 0, 0, 5, "subject", "rare"],
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("SEARCH r USING PRIMARY KEY")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    /// Batches of every shape around the multi-row group size chain exactly like one row at
    /// a time, and the head follows the last row.
    #[test]
    fn batches_of_any_size_extend_one_chain() {
        let (_dir, mut conn) = fresh();
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
            head = append(&mut conn, &key(), &head, &batch).unwrap();
            assert_eq!(head, expected, "after a batch of {size}");
        }
        assert_eq!(verify_chain(&conn, Some(&key())).unwrap(), Ok(n));
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
