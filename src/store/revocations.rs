//! The `revocations` and `signal_events` tables.

use super::StoreError;
use crate::revocation::{Format, Target};
use rusqlite::{params, Connection, OptionalExtension, Row as SqlRow};

/// The source of the revocations made through the admin API. No SET may carry it as its
/// issuer, so no transmitter can lift (or shorten) an operator's revocation.
pub const ADMIN_SOURCE: &str = "admin";

/// What a signal or an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Revoke(NewRevocation),
    /// Remove the record of `target` that `source` made (and no other source's).
    Lift {
        target: Target,
        source: String,
    },
}

impl Action {
    /// The name the action is about.
    pub fn target(&self) -> &Target {
        match self {
            Action::Revoke(r) => &r.target,
            Action::Lift { target, .. } => target,
        }
    }
}

/// The outcome of applying a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored. For each action in order, whether it found its record: always for a revocation;
    /// for a lift, whether the source had a record of that name to remove.
    Applied(Vec<bool>),
    /// The SET's `jti` was seen before: acknowledged, not applied again.
    Replay,
}

/// One record per revoked name and source. A repeated revocation never shortens an unexpired
/// record (the later expiry wins, NULL being forever) unless `?10` says the admin sets it; an
/// expired record is started afresh.
const UPSERT: &str =
    "INSERT INTO revocations (format, issuer, value, reason, event_type, event_jti, \
     source, revoked_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (format, issuer, value, source) DO UPDATE SET reason = excluded.reason, \
     event_type = excluded.event_type, event_jti = excluded.event_jti, \
     revoked_at = excluded.revoked_at, expires_at = CASE \
       WHEN ?10 THEN excluded.expires_at \
       WHEN revocations.expires_at IS NOT NULL AND revocations.expires_at <= excluded.revoked_at \
         THEN excluded.expires_at \
       WHEN revocations.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL \
       ELSE max(revocations.expires_at, excluded.expires_at) END";
const DELETE_TARGET: &str =
    "DELETE FROM revocations WHERE format = ?1 AND issuer = ?2 AND value = ?3 AND source = ?4";
const DELETE_ID: &str =
    "DELETE FROM revocations WHERE id = ?1 RETURNING id, format, issuer, value, \
     reason, event_type, event_jti, source, revoked_at, expires_at";
const SELECT_LIVE_KEYS: &str = "SELECT format, issuer, value, expires_at FROM revocations \
     WHERE expires_at IS NULL OR expires_at > ?1";
const COUNT_LIVE: &str =
    "SELECT count(*) FROM revocations WHERE expires_at IS NULL OR expires_at > ?1";
const SELECT_PAGE: &str = "SELECT id, format, issuer, value, reason, event_type, event_jti, source, \
     revoked_at, expires_at FROM revocations WHERE (expires_at IS NULL OR expires_at > ?1) AND id > ?2 \
     ORDER BY id LIMIT ?3";
/// Does the source's record last at least until `?5` (NULL: forever)?
const HOLDS: &str = "SELECT 1 FROM revocations WHERE format = ?1 AND issuer = ?2 AND value = ?3 \
     AND source = ?4 AND (expires_at IS NULL OR (?5 IS NOT NULL AND expires_at >= ?5))";
/// The latest expiry over every source's unexpired record of a name (i64::MAX: forever).
const LATEST: &str = "SELECT max(coalesce(expires_at, 9223372036854775807)) FROM revocations \
     WHERE format = ?1 AND issuer = ?2 AND value = ?3 AND (expires_at IS NULL OR expires_at > ?4)";
const INSERT_EVENT: &str =
    "INSERT INTO signal_events (issuer, jti, received_at) VALUES (?1, ?2, ?3)";
const SEEN_EVENT: &str = "SELECT 1 FROM signal_events WHERE issuer = ?1 AND jti = ?2";
const PRUNE: &str = "DELETE FROM revocations WHERE expires_at IS NOT NULL AND expires_at <= ?1";
const PRUNE_EVENTS: &str = "DELETE FROM signal_events WHERE received_at < ?1";

/// A revocation to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevocation {
    pub target: Target,
    pub reason: String,
    pub event_type: String,
    pub event_jti: String,
    /// Who asked: a transmitter's issuer (`dev` for a dev-mode SET without one), or
    /// [`ADMIN_SOURCE`]. One record per name and source.
    pub source: String,
    pub expires_at: Option<i64>,
}

/// A stored revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub target: Target,
    pub reason: String,
    pub event_type: String,
    pub event_jti: String,
    pub source: String,
    pub revoked_at: i64,
    pub expires_at: Option<i64>,
}

fn format_of(s: &str) -> rusqlite::Result<Format> {
    Format::from_name(s).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(1, "format".into(), rusqlite::types::Type::Text)
    })
}

fn row(r: &SqlRow<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        target: Target {
            format: format_of(&r.get::<_, String>(1)?)?,
            issuer: r.get(2)?,
            value: r.get(3)?,
        },
        reason: r.get(4)?,
        event_type: r.get(5)?,
        event_jti: r.get(6)?,
        source: r.get(7)?,
        revoked_at: r.get(8)?,
        expires_at: r.get(9)?,
    })
}

/// How many revocations are unexpired at `now`.
pub fn count_live(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(COUNT_LIVE, params![now], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Visit every unexpired revocation's name (start-up load).
pub fn for_each_live(
    conn: &Connection,
    now: i64,
    mut f: impl FnMut(Format, &str, &str, Option<i64>),
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(SELECT_LIVE_KEYS)?;
    let mut rows = stmt.query(params![now])?;
    while let Some(r) = rows.next()? {
        let format = format_of(r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?)?;
        let issuer = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let value = r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
        f(format, issuer, value, r.get(3)?);
    }
    Ok(())
}

/// Apply a batch in one transaction: nothing is half-applied.
pub fn apply(
    conn: &mut Connection,
    event: Option<&(String, String)>,
    actions: &[Action],
    now: i64,
) -> Result<Applied, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some((issuer, jti)) = event {
        if tx
            .query_row(SEEN_EVENT, params![issuer, jti], |_| Ok(()))
            .optional()?
            .is_some()
        {
            return Ok(Applied::Replay);
        }
        tx.execute(INSERT_EVENT, params![issuer, jti, now])?;
    }
    let mut found = Vec::with_capacity(actions.len());
    for action in actions {
        match action {
            Action::Revoke(r) => {
                tx.execute(
                    UPSERT,
                    params![
                        r.target.format.name(),
                        r.target.issuer,
                        r.target.value,
                        r.reason,
                        r.event_type,
                        r.event_jti,
                        r.source,
                        now,
                        r.expires_at,
                        r.source == ADMIN_SOURCE,
                    ],
                )?;
                found.push(true);
            }
            Action::Lift { target, source } => {
                let n = tx.execute(
                    DELETE_TARGET,
                    params![target.format.name(), target.issuer, target.value, source],
                )?;
                found.push(n > 0);
            }
        }
    }
    tx.commit()?;
    Ok(Applied::Applied(found))
}

/// Does the database hold `source`'s revocation of `target` until at least `expires_at`
/// (`None`: forever)?
pub fn holds(
    conn: &Connection,
    target: &Target,
    source: &str,
    expires_at: Option<i64>,
) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            HOLDS,
            params![
                target.format.name(),
                target.issuer,
                target.value,
                source,
                expires_at
            ],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Until when `target` is revoked by any source's stored record (`i64::MAX`: forever);
/// `None` if no record of it is unexpired at `now`.
pub fn latest_expiry(
    conn: &Connection,
    target: &Target,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row(
        LATEST,
        params![target.format.name(), target.issuer, target.value, now],
        |r| r.get(0),
    )?)
}

pub fn delete(conn: &Connection, id: i64) -> Result<Option<Row>, StoreError> {
    Ok(conn.query_row(DELETE_ID, params![id], row).optional()?)
}

/// Unexpired revocations with `id > after`, in id order, at most `limit`.
pub fn page(conn: &Connection, now: i64, after: i64, limit: i64) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(SELECT_PAGE)?;
    let rows = stmt.query_map(params![now, after, limit], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Delete expired revocations and SET ids older than `event_horizon`.
pub fn prune(conn: &mut Connection, now: i64, event_horizon: i64) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = tx.execute(PRUNE, params![now])?;
    tx.execute(PRUNE_EVENTS, params![event_horizon])?;
    tx.commit()?;
    Ok(n)
}
