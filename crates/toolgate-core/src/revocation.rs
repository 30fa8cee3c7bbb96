//! The revocation index: what is revoked (subjects, single tokens, tools), kept in memory for
//! O(1) checks on every verify and exchange. The daemon fills it from its database
//! (`crate::revocations`); a guard fills it from toolgate's federation export.

use ring::digest::{digest, SHA256};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockWriteGuard};

/// How a revoked thing is named. Subjects follow RFC 9493 formats; `spiffe` IDs are kept as
/// `uri` (they are URIs) and also match the equivalent `wimse://` subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// A subject that is a URI (`spiffe://`, `wimse://`, `https://`).
    Uri,
    /// A subject's e-mail address (an upstream identity's `email`), compared lower-cased.
    Email,
    /// A subject as the pair issuer and `sub`, unique across issuers.
    IssSub,
    /// A subject as an opaque `sub` string, from any issuer.
    Opaque,
    /// One token, by its `jti`.
    Jti,
    /// A tool, by its `tool_id`: every call to it is refused.
    Tool,
}

impl Format {
    /// The format's wire name (`iss_sub`, ...), as stored and as exported.
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

    /// Exact lookup of a wire name; `None` for anything else.
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
    /// How `value` names the thing.
    pub format: Format,
    /// The issuer of an `iss_sub` subject; empty for every other format.
    pub issuer: String,
    /// The subject, `jti` or `tool_id`.
    pub value: String,
}

impl Target {
    /// A target from borrowed parts.
    pub fn new(format: Format, issuer: &str, value: &str) -> Self {
        Self {
            format,
            issuer: issuer.to_string(),
            value: value.to_string(),
        }
    }

    /// The index key this name is stored under.
    pub fn key(&self) -> Key {
        key(self.format, &self.issuer, &self.value)
    }
}

/// 128 bits of SHA-256 over the name: what the index stores instead of the strings.
pub type Key = u128;

/// The key of one name: SHA-256 over `format NUL issuer NUL value`, first 16 bytes. The NULs
/// keep `("a", "bc")` and `("ab", "c")` apart.
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

/// The name of the federation digest's algorithm, as `/v1/federation/revocation-hash` reports it.
pub const DIGEST_ALGORITHM: &str = "xor-sha256-128-key-expiry";

/// One entry's share of the federation digest: SHA-256 over the key (16 bytes, big-endian) and
/// the expiry (8 bytes, big-endian two's complement; `i64::MAX` for none), first 16 bytes.
/// Covering the expiry is the point: re-revoking with another expiry must change the digest.
pub fn entry_digest(key: Key, expires_at: i64) -> u128 {
    let mut buf = [0u8; 24];
    for (dst, src) in buf.iter_mut().zip(
        key.to_be_bytes()
            .into_iter()
            .chain(expires_at.to_be_bytes()),
    ) {
        *dst = src;
    }
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

/// Revoked keys and when each revocation ends (`i64::MAX`: never).
pub type Entries = HashMap<Key, i64, BuildHasherDefault<KeyHasher>>;

/// Record that `key` is revoked until at least `expires_at`: an entry already there for
/// longer keeps its expiry (the later one wins).
pub fn revoke_until(entries: &mut Entries, key: Key, expires_at: i64) {
    let slot = entries.entry(key).or_insert(expires_at);
    *slot = (*slot).max(expires_at);
}

/// The index's lock was poisoned by a panic elsewhere: every check that meets it denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexUnavailable;

impl std::fmt::Display for IndexUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the revocation index is unavailable")
    }
}

impl std::error::Error for IndexUnavailable {}

/// What a token or a subject token is known as, for the revocation check.
#[derive(Debug, Default, Clone)]
pub struct Identity<'a> {
    /// The `sub` claim.
    pub subject: &'a str,
    /// The `iss` claim; empty when absent.
    pub issuer: &'a str,
    /// The `jti` claim; empty when the token has none.
    pub jti: &'a str,
    /// The upstream identity the subject was exchanged from (the minted token's `src` claim).
    pub source: Option<&'a Map<String, Value>>,
}

impl Identity<'_> {
    /// Every key a revocation of this token or its subject may be stored under: the subject in
    /// each subject format (a `wimse://` subject also as its `spiffe://` twin), the `jti`, and
    /// the upstream subject and e-mail of `source`.
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
    /// Counts the writes: a change the digest cannot show (two changes whose digests cancel)
    /// still moves it.
    generation: AtomicU64,
}

/// Exclusive access to the entries; the generation moves when it is dropped, after the
/// changes made through it, before the lock is released.
pub struct IndexWrite<'a> {
    entries: RwLockWriteGuard<'a, Entries>,
    generation: &'a AtomicU64,
}

impl std::ops::Deref for IndexWrite<'_> {
    type Target = Entries;
    fn deref(&self) -> &Entries {
        &self.entries
    }
}

impl std::ops::DerefMut for IndexWrite<'_> {
    fn deref_mut(&mut self) -> &mut Entries {
        &mut self.entries
    }
}

impl Drop for IndexWrite<'_> {
    fn drop(&mut self) {
        self.generation.fetch_add(1, Ordering::Release);
    }
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
    ) -> Result<bool, IndexUnavailable> {
        self.any_revoked(&who.keys(), tool_id, now)
    }

    /// As `is_revoked`, with the identity's keys computed beforehand (a verified token keeps
    /// its own, so a repeated token hashes nothing here).
    pub fn any_revoked(
        &self,
        keys: &[Key],
        tool_id: Option<&str>,
        now: i64,
    ) -> Result<bool, IndexUnavailable> {
        let entries = self.entries.read().map_err(|_| IndexUnavailable)?;
        let live = |k: &Key| entries.get(k).is_some_and(|exp| *exp > now);
        if tool_id.is_some_and(|t| live(&key(Format::Tool, "", t))) {
            return Ok(true);
        }
        Ok(keys.iter().any(live))
    }

    /// How many revocations count at `now`.
    pub fn active(&self, now: i64) -> Result<usize, IndexUnavailable> {
        let entries = self.entries.read().map_err(|_| IndexUnavailable)?;
        Ok(entries.values().filter(|exp| **exp > now).count())
    }

    /// The federation digest of the unexpired set: XOR of every entry's [`entry_digest`] (its
    /// key and its expiry), hex. Any peer can recompute it from
    /// `/v1/federation/revocation-export`; a changed expiry changes it, so a guard that
    /// re-downloads only on a new digest never keeps an old expiry.
    pub fn digest(&self, now: i64) -> Result<(String, usize), IndexUnavailable> {
        let entries = self.entries.read().map_err(|_| IndexUnavailable)?;
        let mut acc = 0u128;
        let mut n = 0;
        for (k, exp) in entries.iter() {
            if *exp > now {
                acc ^= entry_digest(*k, *exp);
                n += 1;
            }
        }
        Ok((format!("{acc:032x}"), n))
    }

    /// An index holding `entries` (a daemon's load at start).
    pub fn from_entries(entries: Entries) -> Self {
        Self {
            entries: RwLock::new(entries),
            generation: AtomicU64::new(0),
        }
    }

    /// Exclusive access for a batch of changes that must land together; the
    /// [`generation`](Self::generation) moves once they have.
    pub fn write(&self) -> Result<IndexWrite<'_>, IndexUnavailable> {
        let entries = self.entries.write().map_err(|_| IndexUnavailable)?;
        Ok(IndexWrite {
            entries,
            generation: &self.generation,
        })
    }

    /// How many times the set was written since this index was made. The digest is a XOR, so
    /// changes can be chosen to cancel in it (a transmitter revoking names of its own to hide
    /// another's revocation from guards); a guard that also compares this number downloads
    /// the export after every write.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replace the whole set (a guard's sync): `(key, expires_at or i64::MAX)`. A name revoked
    /// by several sources comes once per source; it stays revoked until the latest expiry.
    pub fn replace(
        &self,
        all: impl IntoIterator<Item = (Key, i64)>,
    ) -> Result<(), IndexUnavailable> {
        let mut fresh = Entries::default();
        for (k, exp) in all {
            revoke_until(&mut fresh, k, exp);
        }
        let mut entries = self.write()?;
        *entries = fresh;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn index(entries: &[(Key, i64)]) -> RevocationIndex {
        let index = RevocationIndex::default();
        index.replace(entries.iter().copied()).unwrap();
        index
    }

    /// Names can be chosen so that their digests cancel: 129 of them always hold a subset whose
    /// XOR is zero (found here by elimination over GF(2)), so revoking that subset leaves the
    /// digest as it was. The generation moves all the same, and a guard compares both.
    #[test]
    fn the_generation_moves_where_the_digest_cancels() {
        let names: Vec<Key> = (0..129)
            .map(|i| key(Format::Opaque, "", &format!("attacker-{i}")))
            .collect();
        // Each basis vector with the set of names (a bit mask over 129) that makes it.
        let mut basis: Vec<(u128, Vec<bool>)> = Vec::new();
        let mut subset = None;
        for (i, k) in names.iter().enumerate() {
            let mut v = entry_digest(*k, i64::MAX);
            let mut used: Vec<bool> = (0..names.len()).map(|j| j == i).collect();
            for (b, b_used) in &basis {
                if v ^ b < v {
                    v ^= b;
                    for (u, x) in used.iter_mut().zip(b_used) {
                        *u ^= x;
                    }
                }
            }
            if v == 0 {
                subset = Some(used);
                break;
            }
            basis.push((v, used));
            basis.sort_by_key(|b| std::cmp::Reverse(b.0));
        }
        let subset = subset.unwrap();
        let index = RevocationIndex::default();
        let (before, g0) = (index.digest(0).unwrap(), index.generation());
        index
            .replace(
                names
                    .iter()
                    .zip(&subset)
                    .filter(|(_, used)| **used)
                    .map(|(k, _)| (*k, i64::MAX)),
            )
            .unwrap();
        let after = index.digest(0).unwrap();
        assert_eq!(after.0, before.0, "the chosen names cancel in the digest");
        assert!(after.1 > 0);
        assert_ne!(index.generation(), g0);
        let g1 = index.generation();
        drop(index.write().unwrap());
        assert_eq!(index.generation(), g1 + 1);
    }

    #[test]
    fn the_digest_covers_the_expiry() {
        let k = key(Format::Uri, "", "wimse://d/ns/a/sa/alice");
        let short = index(&[(k, 1_000_600)]).digest(1_000_000).unwrap();
        let forever = index(&[(k, i64::MAX)]).digest(1_000_000).unwrap();
        assert_eq!(short.1, 1);
        assert_eq!(forever.1, 1);
        assert_ne!(
            short.0, forever.0,
            "a changed expiry must change the digest"
        );
        assert_eq!(forever.0, format!("{:032x}", entry_digest(k, i64::MAX)));
        // A name exported once per source counts once, until its latest expiry.
        let both = index(&[(k, 1_000_600), (k, i64::MAX), (k, 1_000_300)]);
        assert_eq!(both.digest(1_000_000).unwrap(), forever);
        // Expired entries leave it.
        assert_eq!(
            index(&[(k, 1_000_600)]).digest(1_000_600).unwrap(),
            (format!("{:032x}", 0u128), 0)
        );
    }
}
