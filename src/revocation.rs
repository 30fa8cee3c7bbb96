//! The revocation index: what is revoked (subjects, single tokens, tools), kept in memory for
//! O(1) checks on every verify and exchange, written through to SQLite before a signal is
//! acknowledged, and reloaded at start.

use crate::store::revocations::{self as rows, NewRevocation, Row};
use crate::store::{Store, StoreError};
use ring::digest::{digest, SHA256};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, RwLock};

/// How a revoked thing is named. Subjects follow RFC 9493 formats; `spiffe` IDs are kept as
/// `uri` (they are URIs) and also match the equivalent `wimse://` subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Uri,
    Email,
    IssSub,
    Opaque,
    Jti,
    Tool,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Uri => "uri",
            Format::Email => "email",
            Format::IssSub => "iss_sub",
            Format::Opaque => "opaque",
            Format::Jti => "jti",
            Format::Tool => "tool",
        }
    }

    pub fn from_name(s: &str) -> Option<Format> {
        Some(match s {
            "uri" => Format::Uri,
            "email" => Format::Email,
            "iss_sub" => Format::IssSub,
            "opaque" => Format::Opaque,
            "jti" => Format::Jti,
            "tool" => Format::Tool,
            _ => return None,
        })
    }

    /// `subject`, `token` or `tool`: what a revocation of this format cuts off.
    pub fn kind(self) -> &'static str {
        match self {
            Format::Jti => "token",
            Format::Tool => "tool",
            _ => "subject",
        }
    }
}

/// One revoked name: format, issuer (only for `iss_sub`), value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub format: Format,
    pub issuer: String,
    pub value: String,
}

impl Target {
    pub fn new(format: Format, issuer: &str, value: &str) -> Self {
        Self {
            format,
            issuer: issuer.to_string(),
            value: value.to_string(),
        }
    }

    pub fn key(&self) -> Key {
        key(self.format, &self.issuer, &self.value)
    }
}

/// 128 bits of SHA-256 over the name: what the index stores instead of the strings.
pub type Key = u128;

pub fn key(format: Format, issuer: &str, value: &str) -> Key {
    let mut buf = Vec::with_capacity(format.name().len() + issuer.len() + value.len() + 2);
    buf.extend_from_slice(format.name().as_bytes());
    buf.push(0);
    buf.extend_from_slice(issuer.as_bytes());
    buf.push(0);
    buf.extend_from_slice(value.as_bytes());
    let d = digest(&SHA256, &buf);
    let mut k = [0u8; 16];
    for (dst, src) in k.iter_mut().zip(d.as_ref()) {
        *dst = *src;
    }
    u128::from_be_bytes(k)
}

/// Keys are already uniform hashes: use their low bits directly.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, k: u128) {
        // Truncation is the point: the low 64 bits of a uniform hash.
        self.0 = k as u64;
    }
}

type Entries = HashMap<Key, i64, BuildHasherDefault<KeyHasher>>;

/// What a token or a subject token is known as, for the revocation check.
#[derive(Debug, Default, Clone)]
pub struct Identity<'a> {
    pub subject: &'a str,
    pub issuer: &'a str,
    pub jti: &'a str,
    /// The upstream identity the subject was exchanged from (the minted token's `src` claim).
    pub source: Option<&'a Map<String, Value>>,
}

impl Identity<'_> {
    pub fn keys(&self) -> Vec<Key> {
        let mut keys = vec![
            key(Format::Uri, "", self.subject),
            key(Format::IssSub, self.issuer, self.subject),
            key(Format::Opaque, "", self.subject),
        ];
        if let Some(rest) = self.subject.strip_prefix("wimse://") {
            keys.push(key(Format::Uri, "", &format!("spiffe://{rest}")));
        }
        if !self.jti.is_empty() {
            keys.push(key(Format::Jti, "", self.jti));
        }
        if let Some(src) = self.source {
            let field = |k: &str| src.get(k).and_then(Value::as_str);
            if let Some(sub) = field("sub") {
                keys.push(key(Format::Opaque, "", sub));
                keys.push(key(Format::Uri, "", sub));
                if let Some(iss) = field("iss") {
                    keys.push(key(Format::IssSub, iss, sub));
                }
            }
            if let Some(email) = field("email") {
                keys.push(key(Format::Email, "", &email.to_ascii_lowercase()));
            }
        }
        keys
    }
}

/// The in-memory index: what every check reads. The daemon fills it from its database
/// (`Revocations`); a guard fills it from toolgate's federation export.
#[derive(Default)]
pub struct RevocationIndex {
    entries: RwLock<Entries>,
}

impl std::fmt::Debug for RevocationIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationIndex").finish_non_exhaustive()
    }
}

impl RevocationIndex {
    /// Is anything about this token, subject or tool revoked at `now`? `Err` if the index
    /// cannot be read, which every caller treats as a denial.
    pub fn is_revoked(
        &self,
        who: &Identity<'_>,
        tool_id: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.any_revoked(&who.keys(), tool_id, now)
    }

    /// As `is_revoked`, with the identity's keys computed beforehand (a verified token keeps
    /// its own, so a repeated token hashes nothing here).
    pub fn any_revoked(
        &self,
        keys: &[Key],
        tool_id: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let entries = self.entries.read().map_err(|_| StoreError::Unavailable)?;
        let live = |k: &Key| entries.get(k).is_some_and(|exp| *exp > now);
        if tool_id.is_some_and(|t| live(&key(Format::Tool, "", t))) {
            return Ok(true);
        }
        Ok(keys.iter().any(live))
    }

    /// How many revocations count at `now`.
    pub fn active(&self, now: i64) -> Result<usize, StoreError> {
        let entries = self.entries.read().map_err(|_| StoreError::Unavailable)?;
        Ok(entries.values().filter(|exp| **exp > now).count())
    }

    /// The federation digest of the unexpired set: XOR of every entry's key, hex. Any peer
    /// can recompute it from `/v1/federation/revocation-export`.
    pub fn digest(&self, now: i64) -> Result<(String, usize), StoreError> {
        let entries = self.entries.read().map_err(|_| StoreError::Unavailable)?;
        let mut acc = 0u128;
        let mut n = 0;
        for (k, exp) in entries.iter() {
            if *exp > now {
                acc ^= k;
                n += 1;
            }
        }
        Ok((format!("{acc:032x}"), n))
    }

    /// Replace the whole set (a guard's sync): `(key, expires_at or i64::MAX)`.
    pub fn replace(&self, all: impl IntoIterator<Item = (Key, i64)>) -> Result<(), StoreError> {
        let fresh: Entries = all.into_iter().collect();
        let mut entries = self.entries.write().map_err(|_| StoreError::Unavailable)?;
        *entries = fresh;
        Ok(())
    }
}

/// The daemon's revocations: the index plus the store it writes through to.
pub struct Revocations {
    index: Arc<RevocationIndex>,
    store: Store,
    unstored: Arc<Mutex<HashMap<Key, NewRevocation>>>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").finish_non_exhaustive()
    }
}

/// What a signal or an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Revoke(NewRevocation),
    Lift(Target),
}

/// The outcome of applying a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The SET's `jti` was seen before: acknowledged, not applied again.
    Replay,
}

impl Revocations {
    /// Load every unexpired revocation. Blocking: call at start-up.
    pub fn load(store: &Store, now: i64) -> Result<Self, StoreError> {
        let entries = store.call_blocking(move |c| {
            // Sized once: growing a million-entry table doubles its peak memory.
            let n = rows::count_live(c, now)?;
            let mut map = Entries::with_capacity_and_hasher(n, Default::default());
            rows::for_each_live(c, now, |format, issuer, value, expires| {
                map.insert(key(format, issuer, value), expires.unwrap_or(i64::MAX));
            })?;
            Ok(map)
        })?;
        Ok(Self {
            index: Arc::new(RevocationIndex {
                entries: RwLock::new(entries),
            }),
            store: store.clone(),
            unstored: Arc::default(),
        })
    }

    /// The index every check reads.
    pub fn index(&self) -> &Arc<RevocationIndex> {
        &self.index
    }

    pub fn active(&self, now: i64) -> Result<usize, StoreError> {
        self.index.active(now)
    }

    pub fn digest(&self, now: i64) -> Result<(String, usize), StoreError> {
        self.index.digest(now)
    }

    /// Apply a batch durably, then in memory, in commit order (the database thread does both,
    /// so two racing batches cannot land in memory in the other order). `event` is the SET's
    /// (issuer, jti) for replay detection. If the write fails, revocations still take effect in
    /// memory — fail closed — while lifts do not; the caller reports the failure.
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
                let mut map = index.entries.write().map_err(|_| StoreError::Unavailable)?;
                let mut pending = unstored.lock().map_err(|_| StoreError::Unavailable)?;
                let durable = matches!(result, Ok(Applied::Applied));
                for action in &actions {
                    match action {
                        Action::Revoke(r) if result.is_err() || durable => {
                            map.insert(r.target.key(), r.expires_at.unwrap_or(i64::MAX));
                            if durable {
                                pending.remove(&r.target.key());
                            } else {
                                pending.insert(r.target.key(), r.clone());
                            }
                        }
                        Action::Lift(t) if durable => {
                            map.remove(&t.key());
                            pending.remove(&t.key());
                        }
                        _ => {}
                    }
                }
                result
            })
            .await
    }

    /// Revocations enforced in memory whose write failed (until a retry stores them or a
    /// restart forgets them), that the database does not already hold: the export lists them
    /// so that the digest can be recomputed from it and guards enforce them too.
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
                    if !rows::holds(c, &r.target, now)? {
                        out.push(r);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Lift one stored revocation by id; the lifted row, `None` if there was none.
    pub async fn lift_by_id(&self, id: i64) -> Result<Option<Row>, StoreError> {
        let index = self.index.clone();
        let unstored = self.unstored.clone();
        self.store
            .call(move |c| {
                let row = rows::delete(c, id)?;
                if let Some(r) = &row {
                    let mut map = index.entries.write().map_err(|_| StoreError::Unavailable)?;
                    // An unstored (failed) re-revocation of the same target still holds.
                    if !unstored
                        .lock()
                        .map(|p| p.contains_key(&r.target.key()))
                        .unwrap_or(true)
                    {
                        map.remove(&r.target.key());
                    }
                }
                Ok(row)
            })
            .await
    }

    /// Forget expired entries, in the database and in memory.
    pub async fn prune(&self, now: i64, event_horizon: i64) -> Result<usize, StoreError> {
        let index = self.index.clone();
        self.store
            .call(move |c| {
                let n = rows::prune(c, now, event_horizon)?;
                let mut map = index.entries.write().map_err(|_| StoreError::Unavailable)?;
                map.retain(|_, exp| *exp > now);
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
        for (name, val) in [
            ("event_type", &r.event_type),
            ("event_jti", &r.event_jti),
            ("source", &r.source),
        ] {
            if !val.is_empty() {
                obj.insert(name.into(), json!(val));
            }
        }
    }
    v
}
