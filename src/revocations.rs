//! The daemon's revocations: the in-memory index every check reads, written through to SQLite
//! before a signal is acknowledged, and reloaded at start. The database holds one record per
//! revoked name and source; the index holds, per name, the latest expiry of its records.

use crate::revocation::{key, revoke_until, Entries, Key, RevocationIndex, Target};
use crate::store::revocations::{self as rows, Action, Applied, NewRevocation, Row};
use crate::store::{Store, StoreError};
use rusqlite::Connection;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Revocations enforced in memory whose write failed, by name and source.
type Unstored = HashMap<(Key, String), NewRevocation>;

/// The daemon's revocations: the index plus the store it writes through to.
pub struct Revocations {
    index: Arc<RevocationIndex>,
    store: Store,
    unstored: Arc<Mutex<Unstored>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

/// `i64::MAX` for a revocation without an expiry, as the index stores it.
fn until(expires_at: Option<i64>) -> i64 {
    expires_at.unwrap_or(i64::MAX)
}

/// Set the index entry of `target` from its stored records and the unstored ones: the latest
/// expiry of any source, or no entry. If the database cannot say, the entry only grows by
/// `at_least` (fail closed: nothing is lifted on a guess).
fn refresh(
    conn: &Connection,
    map: &mut Entries,
    pending: &Unstored,
    target: &Target,
    at_least: Option<i64>,
    now: i64,
) {
    let k = target.key();
    let unstored = pending
        .iter()
        .filter(|((pk, _), r)| *pk == k && r.expires_at.is_none_or(|e| e > now))
        .map(|(_, r)| until(r.expires_at))
        .max();
    match rows::latest_expiry(conn, target, now) {
        Ok(stored) => match stored.max(unstored) {
            Some(exp) => {
                map.insert(k, exp);
            }
            None => {
                map.remove(&k);
            }
        },
        Err(e) => {
            crate::log_error!("cannot read back a revocation; the index keeps the longer one: {e}");
            if let Some(exp) = at_least.max(unstored) {
                revoke_until(map, k, exp);
            }
        }
    }
}

impl Revocations {
    /// Load every unexpired revocation. Blocking: call at start-up.
    pub fn load(store: &Store, now: i64) -> Result<Self, StoreError> {
        let entries = store.call_blocking(move |c| {
            // Sized once: growing a million-entry table doubles its peak memory.
            let n = rows::count_live(c, now)?;
            let mut map = Entries::with_capacity_and_hasher(n, Default::default());
            rows::for_each_live(c, now, |format, issuer, value, expires| {
                revoke_until(&mut map, key(format, issuer, value), until(expires));
            })?;
            Ok(map)
        })?;
        Ok(Self {
            index: Arc::new(RevocationIndex::from_entries(entries)),
            store: store.clone(),
            unstored: Arc::default(),
        })
    }

    /// The index every check reads.
    pub fn index(&self) -> &Arc<RevocationIndex> {
        &self.index
    }

    pub fn active(&self, now: i64) -> Result<usize, StoreError> {
        self.index.active(now).map_err(|_| StoreError::Unavailable)
    }

    pub fn digest(&self, now: i64) -> Result<(String, usize), StoreError> {
        self.index.digest(now).map_err(|_| StoreError::Unavailable)
    }

    /// Apply a batch durably, then in memory, in commit order (the database thread does both,
    /// so two racing batches cannot land in memory in the other order). `event` is the SET's
    /// (issuer, jti) for replay detection. If the write fails, revocations still take effect in
    /// memory — fail closed, and never shorter than what is enforced — while lifts do not; the
    /// caller reports the failure.
    pub async fn apply(
        &self,
        event: Option<(String, String)>,
        actions: Vec<Action>,
        now: i64,
    ) -> Result<Applied, StoreError> {
        let index = self.index.clone();
        let unstored = self.unstored.clone();
        self.store
            .call(move |c| {
                let result = rows::apply(c, event.as_ref(), &actions, now);
                let mut map = index.write().map_err(|_| StoreError::Unavailable)?;
                let mut pending = unstored.lock().map_err(|_| StoreError::Unavailable)?;
                match &result {
                    Ok(Applied::Applied(_)) => {
                        for action in &actions {
                            let (target, source, at_least) = match action {
                                Action::Revoke(r) => {
                                    (&r.target, &r.source, Some(until(r.expires_at)))
                                }
                                Action::Lift { target, source } => (target, source, None),
                            };
                            pending.remove(&(target.key(), source.clone()));
                            refresh(c, &mut map, &pending, target, at_least, now);
                        }
                    }
                    Ok(Applied::Replay) => {}
                    Err(_) => {
                        for action in &actions {
                            if let Action::Revoke(r) = action {
                                revoke_until(&mut map, r.target.key(), until(r.expires_at));
                                let slot = pending
                                    .entry((r.target.key(), r.source.clone()))
                                    .or_insert_with(|| r.clone());
                                if until(r.expires_at) >= until(slot.expires_at) {
                                    *slot = r.clone();
                                }
                            }
                        }
                    }
                }
                result
            })
            .await
    }

    /// Revocations enforced in memory whose write failed (until a retry stores them or a
    /// restart forgets them), that the database does not already hold as long: the export
    /// lists them so that the digest can be recomputed from it and guards enforce them too.
    pub async fn unstored(&self, now: i64) -> Result<Vec<NewRevocation>, StoreError> {
        let pending: Vec<NewRevocation> = {
            let p = self.unstored.lock().map_err(|_| StoreError::Unavailable)?;
            p.values()
                .filter(|r| r.expires_at.is_none_or(|e| e > now))
                .cloned()
                .collect()
        };
        if pending.is_empty() {
            return Ok(pending);
        }
        self.store
            .call(move |c| {
                let mut out = Vec::new();
                for r in pending {
                    if !rows::holds(c, &r.target, &r.source, r.expires_at)? {
                        out.push(r);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Lift one stored revocation by id (whatever its source); the lifted row, `None` if there
    /// was none. The name stays revoked while another source's record of it holds.
    pub async fn lift_by_id(&self, id: i64, now: i64) -> Result<Option<Row>, StoreError> {
        let index = self.index.clone();
        let unstored = self.unstored.clone();
        self.store
            .call(move |c| {
                let row = rows::delete(c, id)?;
                if let Some(r) = &row {
                    let mut map = index.write().map_err(|_| StoreError::Unavailable)?;
                    // An unstored (failed) re-revocation of the same name still holds.
                    let pending = unstored.lock().map_err(|_| StoreError::Unavailable)?;
                    refresh(c, &mut map, &pending, &r.target, None, now);
                }
                Ok(row)
            })
            .await
    }

    /// Forget expired entries, in the database and in memory.
    pub async fn prune(&self, now: i64, event_horizon: i64) -> Result<usize, StoreError> {
        let index = self.index.clone();
        let unstored = self.unstored.clone();
        self.store
            .call(move |c| {
                let n = rows::prune(c, now, event_horizon)?;
                let mut map = index.write().map_err(|_| StoreError::Unavailable)?;
                map.retain(|_, exp| *exp > now);
                if let Ok(mut pending) = unstored.lock() {
                    pending.retain(|_, r| r.expires_at.is_none_or(|e| e > now));
                }
                Ok(n)
            })
            .await
    }
}

/// An enforced revocation that could not be stored, as the API shows it.
pub fn unstored_json(r: &NewRevocation, now: i64) -> Value {
    json!({
        "id": null,
        "stored": false,
        "kind": r.target.format.kind(),
        "format": r.target.format.name(),
        "value": r.target.value,
        "issuer": r.target.issuer,
        "source": r.source,
        "reason": r.reason,
        "revoked_at": crate::clock::rfc3339(now),
        "expires_at": r.expires_at.map(crate::clock::rfc3339),
        "expires_at_unix": r.expires_at,
        "key": format!("{:032x}", r.target.key()),
    })
}

/// A stored revocation as the API shows it.
pub fn row_json(r: &Row) -> Value {
    let mut v = json!({
        "id": r.id,
        "kind": r.target.format.kind(),
        "format": r.target.format.name(),
        "value": r.target.value,
        "source": r.source,
        "reason": r.reason,
        "revoked_at": crate::clock::rfc3339(r.revoked_at),
        "expires_at": r.expires_at.map(crate::clock::rfc3339),
        "expires_at_unix": r.expires_at,
        "key": format!("{:032x}", r.target.key()),
    });
    if let Some(obj) = v.as_object_mut() {
        if !r.target.issuer.is_empty() {
            obj.insert("issuer".into(), json!(r.target.issuer));
        }
        for (name, val) in [("event_type", &r.event_type), ("event_jti", &r.event_jti)] {
            if !val.is_empty() {
                obj.insert(name.into(), json!(val));
            }
        }
    }
    v
}
