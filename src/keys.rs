//! The token-signing key ring: every key toolgate has had, each in one state at any moment.
//!
//! - `next`: published in the JWKS, not signing yet, until its `signs_from` — the publish-ahead
//!   period, so that every guard has fetched it before the first token it signs;
//! - `active`: the one key that signs now (chosen by the clock at signing time);
//! - `retiring`: published, no longer signing, until `not_after` — its last token's expiry plus
//!   the most leeway a verifier allows;
//! - `retired`: not published; its public half is kept, its private half overwritten.
//!
//! Private halves live in the database, or in files apart from it (`--signing-key-file PATH`:
//! the first key in `PATH`, each later one beside it in `PATH.<kid>`). The ring is an immutable
//! snapshot swapped whole on a change, so a signer or a key lookup never waits for one.

use crate::clock::Clock;
use crate::jose::{Algorithm, Jwk, SigningKey};
use crate::store::{keys, Store, StoreError};
use crate::verify::MAX_LEEWAY;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Default publish-ahead: longer than a guard's periodic JWKS refresh (60 s) and than the
/// JWKS's HTTP cache lifetime (300 s) together.
pub const DEFAULT_PUBLISH_AHEAD: i64 = 600;
/// Longest publish-ahead that can be configured: a week.
pub const MAX_PUBLISH_AHEAD: i64 = 7 * 86_400;
/// Longest rotation schedule that can be configured (about ten years).
pub const MAX_ROTATION_DAYS: u32 = 3650;
/// The algorithms a new key may have.
pub const ROTATION_ALGS: [Algorithm; 2] = [Algorithm::ES256, Algorithm::EdDSA];
/// The longest lifetime a token can be configured with (`token_ttl_seconds`, at most a day):
/// assumed for the tokens of a key that stops signing at start-up, whose lifetime when it
/// signed them is not known.
const LONGEST_TOKEN_LIFETIME: i64 = 24 * 3600;

/// Why the signing keys could not be loaded.
#[derive(Debug)]
pub enum KeyError {
    /// The database failed.
    Store(StoreError),
    /// A key file is unusable, or a key is missing: one sentence naming it, never its content.
    File(String),
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Why a rotation was not made. Nothing changed in any case.
#[derive(Debug)]
pub enum RotateError {
    /// A key is already waiting to sign: one rotation at a time.
    Pending { kid: String, signs_from: i64 },
    /// The new key could not be made or written beside the key file (one sentence, for the log).
    Key(String),
    /// The database failed.
    Store(StoreError),
}

/// A PKCS#8 document as PEM (RFC 7468 `PRIVATE KEY`), as `openssl genpkey` writes it.
pub fn to_pem(pkcs8: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut pem = format!("{PEM_BEGIN}\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// The PKCS#8 document of a PEM `PRIVATE KEY` (surrounding whitespace allowed, nothing else).
pub fn from_pem(text: &str) -> Option<Vec<u8>> {
    let body = text.trim().strip_prefix(PEM_BEGIN)?.strip_suffix(PEM_END)?;
    let b64: String = body.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Where the key `kid` is kept beside `--signing-key-file PATH` when it is not in `PATH`
/// itself: `PATH.<kid>` (a kid is base64url, safe in a file name).
pub fn file_beside(path: &Path, kid: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(kid);
    PathBuf::from(name)
}

/// How long keys wait before signing and stay after.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// A new key is published this long before it signs (seconds).
    pub publish_ahead: i64,
    /// The longest lifetime of any token a key signs (seconds).
    pub token_lifetime: i64,
}

impl KeyPolicy {
    /// How long a key stays published once it stops signing: the lifetime of its last token
    /// plus the most leeway any verifier (the daemon, a guard) allows on `exp`.
    pub fn published_after_signing(&self) -> i64 {
        self.token_lifetime.saturating_add(MAX_LEEWAY)
    }
}

/// Where a key is in its life, at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Active,
    Retiring,
    Retired,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }
}

/// One key of the ring: its public half always, its private half while it may sign.
#[derive(Clone)]
pub struct RingKey {
    pub kid: String,
    pub public: Jwk,
    signer: Option<Arc<SigningKey>>,
    /// The file its private half was read from or written to (file keys only).
    file: Option<PathBuf>,
    pub created_at: i64,
    pub signs_from: i64,
    /// When it stops signing (its successor's `signs_from`); `None` while it has none.
    pub signs_until: Option<i64>,
    /// When it leaves the JWKS.
    pub not_after: Option<i64>,
}

impl RingKey {
    pub fn algorithm(&self) -> Algorithm {
        self.public.alg
    }

    /// Published at `now`: not retired.
    pub fn published(&self, now: i64) -> bool {
        own_state(self, now) != KeyState::Retired
    }

    /// Where its private half is: `database`, `file`, or `removed` (retired, or never here).
    pub fn private_half(&self) -> &'static str {
        match (&self.signer, &self.file) {
            (None, _) => "removed",
            (Some(_), Some(_)) => "file",
            (Some(_), None) => "database",
        }
    }

    /// The key in `state` as `GET /v1/keys` lists it (never its private half).
    pub fn to_json(&self, state: KeyState) -> Value {
        let time = |t: Option<i64>| t.map(crate::clock::rfc3339);
        json!({
            "kid": self.kid,
            "alg": self.algorithm().name(),
            "state": state.name(),
            "created_at": crate::clock::rfc3339(self.created_at),
            "signs_from": crate::clock::rfc3339(self.signs_from),
            "signs_until": time(self.signs_until),
            "not_after": time(self.not_after),
            "private_key": self.private_half(),
            "jwk": self.public.to_json(),
        })
    }
}

impl std::fmt::Debug for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingKey")
            .field("kid", &self.kid)
            .field("alg", &self.algorithm().name())
            .field("signs_from", &self.signs_from)
            .field("signs_until", &self.signs_until)
            .field("not_after", &self.not_after)
            .field("private_key", &self.private_half())
            .finish()
    }
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub key: RingKey,
    /// The key it succeeds, now with its `signs_until` and `not_after`.
    pub previous: Option<RingKey>,
}

type Snapshot = Arc<Vec<RingKey>>;

/// The ring. Cheap to read from any thread; changes (rotation, retirement) are one at a time.
pub struct KeyRing {
    ring: RwLock<Snapshot>,
    /// `--signing-key-file`: private halves are kept there and beside it, never in the database.
    key_file: Option<PathBuf>,
    policy: KeyPolicy,
    clock: Arc<dyn Clock>,
    /// Held by a rotation or a retirement from start to swap.
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.snapshot())
            .field("key_file", &self.key_file)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl crate::verify::KeySource for KeyRing {
    fn key(&self, kid: &str) -> Option<Jwk> {
        let now = self.clock.now();
        self.snapshot()
            .iter()
            .find(|k| k.kid == kid && k.published(now))
            .map(|k| k.public.clone())
    }
}

impl KeyRing {
    /// Load every key, making the first one if there is none. With `key_file`
    /// (`--signing-key-file`), private halves are kept in files and the database keeps none:
    /// a key the database still holds moves out (the signing one into `key_file` if that is
    /// missing, a waiting one beside it), and a key found in `key_file` that the database does
    /// not know signs from now. Blocking: call at start-up, off the async workers.
    pub fn open(
        store: &Store,
        key_file: Option<&Path>,
        policy: KeyPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<KeyRing, KeyError> {
        let now = clock.now();
        let mut rows = store.call_blocking(|c| keys::all(c))?;
        // Rows from before version 10 carry no public half of their own.
        for row in rows.iter_mut().filter(|r| r.public_jwk.is_empty()) {
            let key = stored_signer(row)?.ok_or(StoreError::Corrupt("signing key"))?;
            row.public_jwk = key.public_jwk().to_json().to_string();
            let (kid, jwk) = (row.kid.clone(), row.public_jwk.clone());
            store.call_blocking(move |c| keys::set_public_jwk(c, &kid, &jwk))?;
        }
        let loaded = match key_file {
            None => Self::open_in_database(store, rows, now)?,
            Some(path) => Self::open_in_files(store, path, rows, now)?,
        };
        let loaded = Self::keep_published_for(store, loaded, &policy, now)?;
        let ring = KeyRing {
            ring: RwLock::new(Arc::new(loaded)),
            key_file: key_file.map(Path::to_path_buf),
            policy,
            clock,
            changing: tokio::sync::Mutex::new(()),
        };
        ring.withdraw_unusable(store, now)?;
        Ok(ring)
    }

    /// A key that stopped (or will stop) signing stays published while tokens it signed may
    /// be live under *this* start's token lifetime: a restart with a longer `token_ttl` than
    /// the rotation was made with moves its `not_after` later (never earlier).
    fn keep_published_for(
        store: &Store,
        mut loaded: Vec<RingKey>,
        policy: &KeyPolicy,
        now: i64,
    ) -> Result<Vec<RingKey>, KeyError> {
        for k in loaded.iter_mut() {
            let (Some(until), Some(not_after)) = (k.signs_until, k.not_after) else {
                continue;
            };
            let needed = until.saturating_add(policy.published_after_signing());
            if own_state(k, now) == KeyState::Retired || not_after >= needed || until == not_after {
                // Retired, long enough already, or withdrawn before it signed anything.
                continue;
            }
            let kid = k.kid.clone();
            store.call_blocking(move |c| keys::end(c, &kid, until, needed))?;
            k.not_after = Some(needed);
        }
        Ok(loaded)
    }

    /// Keys whose private halves are in the database. A database with no key, or whose signing
    /// key's private half is not there (it was kept in `--signing-key-file`), gets a new key
    /// that signs from now; the keys before it stop signing now and stay published for as long
    /// as tokens they signed may be live.
    fn open_in_database(
        store: &Store,
        mut rows: Vec<keys::StoredKey>,
        now: i64,
    ) -> Result<Vec<RingKey>, KeyError> {
        let signing = signing_index(&rows, now).and_then(|i| rows.get(i));
        // A key with its private half that has not retired can sign (see `signer`): a clock set
        // back behind a rotation makes the retired predecessor look like the signer, and
        // adopting a new key then would withdraw the live one.
        let usable = rows
            .iter()
            .any(|r| !r.pkcs8.is_empty() && own_state(r, now) != KeyState::Retired);
        if signing.is_none_or(|r| r.pkcs8.is_empty()) && !usable {
            if let Some(r) = signing {
                crate::log_warn!(
                    "signing key {} has no private half in the database (was it kept in \
                     --signing-key-file?): a new key signs from now",
                    r.kid
                );
            }
            let key = SigningKey::generate()
                .map_err(|_| KeyError::File("cannot generate a signing key".into()))?;
            rows = adopt(store, &key, true, now)?;
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let signer = match own_state(row, now) {
                KeyState::Retired => None,
                _ => stored_signer(row)?,
            };
            out.push(ring_key(row, signer.map(Arc::new), None)?);
        }
        // Retired while the daemon was down: their private halves go now.
        let retired: Vec<String> = rows
            .iter()
            .filter(|r| own_state(*r, now) == KeyState::Retired && !r.pkcs8.is_empty())
            .map(|r| r.kid.clone())
            .collect();
        if !retired.is_empty() {
            store.call_blocking(move |c| keys::forget_private(c, &retired))?;
        }
        Ok(out)
    }

    /// Keys whose private halves are in `path` and beside it (see [`KeyRing::open`]).
    fn open_in_files(
        store: &Store,
        path: &Path,
        mut rows: Vec<keys::StoredKey>,
        now: i64,
    ) -> Result<Vec<RingKey>, KeyError> {
        let mut in_path = read_key_file(path)?;
        // Private halves still in the database move out, for the keys that may still sign.
        let row_states = states(&rows, now);
        for (row, &state) in rows.iter().zip(&row_states) {
            if row.pkcs8.is_empty() {
                continue;
            }
            if !matches!(state, KeyState::Next | KeyState::Active) {
                continue;
            }
            let Some(key) = stored_signer(row)? else {
                continue;
            };
            if in_path.as_ref().is_some_and(|k| k.kid() == key.kid()) {
                continue;
            }
            let target = if in_path.is_none() && state == KeyState::Active {
                path.to_path_buf()
            } else {
                file_beside(path, key.kid())
            };
            write_key_file(&target, &key)?;
            crate::log_info!("signing key {} written to {}", key.kid(), target.display());
            if target == path {
                in_path = Some(key);
            }
        }
        // A key the database does not know, put there by the operator, signs from now.
        if let Some(key) = in_path
            .as_ref()
            .filter(|k| !rows.iter().any(|r| r.kid == k.kid()))
        {
            if rows.iter().any(|r| own_state(r, now) != KeyState::Retired) {
                crate::log_warn!(
                    "--signing-key-file {} holds a new key {}: it signs from now, and the keys \
                     before it stop signing",
                    path.display(),
                    key.kid()
                );
            }
            rows = adopt(store, key, false, now)?;
        }
        // No key signs now (a new deployment, or every key retired): a new one does.
        if signing_index(&rows, now).is_none() {
            let key = SigningKey::generate()
                .map_err(|_| KeyError::File("cannot generate a signing key".into()))?;
            let target = match in_path {
                None => path.to_path_buf(),
                Some(_) => file_beside(path, key.kid()),
            };
            write_key_file(&target, &key)?;
            crate::log_info!("signing key {} written to {}", key.kid(), target.display());
            rows = adopt(store, &key, false, now)?;
            // Beside the file, it is found by its kid like any later key.
            if target == path {
                in_path = Some(key);
            }
        }
        let in_path = in_path.map(Arc::new);
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let (signer, file) = match own_state(row, now) {
                KeyState::Retired => {
                    // Retired while the daemon was down: its file goes now.
                    let file = match &in_path {
                        Some(k) if k.kid() == row.kid => path.to_path_buf(),
                        _ => file_beside(path, &row.kid),
                    };
                    if file.exists() {
                        remove_key_file(&file);
                    }
                    (None, None)
                }
                _ => match &in_path {
                    Some(k) if k.kid() == row.kid => (Some(k.clone()), Some(path.to_path_buf())),
                    _ => {
                        let file = file_beside(path, &row.kid);
                        let key = read_key_file(&file)?.filter(|k| k.kid() == row.kid);
                        match key {
                            Some(k) => (Some(Arc::new(k)), Some(file)),
                            None => (None, None),
                        }
                    }
                },
            };
            out.push(ring_key(row, signer, file)?);
        }
        if let Some(k) = signing_index(&out, now)
            .and_then(|i| out.get(i))
            .filter(|k| k.signer.is_none())
        {
            return Err(KeyError::File(format!(
                "the signing key {kid} (signing since {since}) is in neither --signing-key-file \
                 {path} nor {beside}: put its file back, or put a new key in {path} (it then \
                 signs from now)",
                kid = k.kid,
                since = crate::clock::rfc3339(k.signs_from),
                path = path.display(),
                beside = file_beside(path, &k.kid).display(),
            )));
        }
        // Only once the files hold the keys (durably) does the database let go of them.
        store.call_blocking(keys::forget_all_private)?;
        Ok(out)
    }

    /// A waiting key whose private half is nowhere can never sign: it is withdrawn (it signed
    /// nothing, so nothing is lost), the key before it signs on, and a rotation may make
    /// another.
    fn withdraw_unusable(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let snapshot = self.snapshot();
        let Some(lost) = snapshot
            .iter()
            .zip(states(&snapshot, now))
            .find(|(k, state)| *state == KeyState::Next && k.signer.is_none())
            .map(|(k, _)| k.clone())
        else {
            return Ok(());
        };
        crate::log_warn!(
            "signing key {} was to sign from {} but its private half is gone: withdrawn",
            lost.kid,
            crate::clock::rfc3339(lost.signs_from)
        );
        let before = snapshot
            .iter()
            .find(|k| k.signs_until == Some(lost.signs_from))
            .map(|k| k.kid.clone());
        let (kid, reopened) = (lost.kid.clone(), before.clone());
        store.call_blocking(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            keys::end(&tx, &kid, now, now)?;
            if let Some(before) = &reopened {
                keys::reopen(&tx, before)?;
            }
            tx.commit()?;
            Ok(())
        })?;
        let next = snapshot
            .iter()
            .map(|k| {
                let mut k = k.clone();
                if k.kid == lost.kid {
                    (k.signs_from, k.signs_until, k.not_after) = (now, Some(now), Some(now));
                } else if before.as_deref() == Some(k.kid.as_str()) {
                    (k.signs_until, k.not_after) = (None, None);
                }
                k
            })
            .collect();
        self.swap(next);
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        match self.ring.read() {
            Ok(ring) => ring.clone(),
            // Fail closed: no key to sign or verify with.
            Err(_) => Arc::new(Vec::new()),
        }
    }

    fn swap(&self, keys: Vec<RingKey>) {
        if let Ok(mut ring) = self.ring.write() {
            *ring = Arc::new(keys);
        }
    }

    /// The key that signs at `now`; `None` (refuse to issue) only if the ring is broken.
    pub fn signer(&self, now: i64) -> Option<Arc<SigningKey>> {
        let snapshot = self.snapshot();
        signing_index(&snapshot, now)
            .and_then(|i| snapshot.get(i))
            .and_then(|k| k.signer.clone())
            // The key the dates name has no private half any more (the clock was set back, or
            // ran ahead and retired it): the newest published key that has one signs, rather
            // than nothing.
            .or_else(|| {
                snapshot
                    .iter()
                    .filter(|k| k.signer.is_some() && own_state(*k, now) != KeyState::Retired)
                    .max_by_key(|k| k.signs_from)
                    .and_then(|k| k.signer.clone())
            })
    }

    /// Every key, oldest first, with its state at `now`.
    pub fn keys(&self, now: i64) -> Vec<(RingKey, KeyState)> {
        let snapshot = self.snapshot();
        snapshot
            .iter()
            .cloned()
            .zip(states(&snapshot, now))
            .collect()
    }

    /// The published key named `kid` at `now`, if any.
    pub fn find(&self, kid: &str, now: i64) -> Option<Jwk> {
        self.snapshot()
            .iter()
            .find(|k| k.kid == kid && k.published(now))
            .map(|k| k.public.clone())
    }

    /// The JWKS document served at `/v1/identity/jwks` at `now`: the active key, then the one
    /// waiting to sign, then those retiring, newest first.
    pub fn jwks(&self, now: i64) -> Value {
        let snapshot = self.snapshot();
        let rank = |s: KeyState| match s {
            KeyState::Active => 0,
            KeyState::Next => 1,
            _ => 2,
        };
        let mut published: Vec<(&RingKey, KeyState)> = snapshot
            .iter()
            .zip(states(&snapshot, now))
            .filter(|(_, state)| *state != KeyState::Retired)
            .collect();
        published.sort_by_key(|(k, state)| (rank(*state), std::cmp::Reverse(k.signs_from)));
        json!({"keys": published.iter().map(|(k, _)| k.public.to_json()).collect::<Vec<_>>()})
    }

    /// Keys per state at `now`: (next, active, retiring, retired).
    pub fn counts(&self, now: i64) -> [usize; 4] {
        let mut counts = [0; 4];
        for state in states(&self.snapshot(), now) {
            let i = match state {
                KeyState::Next => 0,
                KeyState::Active => 1,
                KeyState::Retiring => 2,
                KeyState::Retired => 3,
            };
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
        counts
    }

    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    /// Where private halves are kept: `database` or `file`.
    pub fn vault(&self) -> &'static str {
        if self.key_file.is_some() {
            "file"
        } else {
            "database"
        }
    }

    /// The algorithm of a scheduled rotation due at `now` (the signing key's), when the signing
    /// key has signed for `days` and no key is waiting already.
    pub fn rotation_due(&self, now: i64, days: u32) -> Option<Algorithm> {
        let snapshot = self.snapshot();
        if states(&snapshot, now).contains(&KeyState::Next) {
            return None;
        }
        let period = i64::from(days).saturating_mul(86_400);
        signing_index(&snapshot, now)
            .and_then(|i| snapshot.get(i))
            .filter(|k| now >= k.signs_from.saturating_add(period))
            .map(RingKey::algorithm)
    }

    /// Make a new `alg` key that is published at once and signs from `now` + publish-ahead; the
    /// key signing now stops then, and stays published for as long as its tokens may be live.
    /// Durable before it returns (the new key's file first, with `--signing-key-file`). Refused
    /// while a key is already waiting to sign.
    pub async fn rotate(
        &self,
        store: &Store,
        alg: Algorithm,
        now: i64,
    ) -> Result<Rotated, RotateError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let waiting = snapshot
            .iter()
            .zip(states(&snapshot, now))
            .find(|(_, state)| *state == KeyState::Next);
        if let Some((k, _)) = waiting {
            return Err(RotateError::Pending {
                kid: k.kid.clone(),
                signs_from: k.signs_from,
            });
        }
        let key = match alg {
            Algorithm::ES256 => SigningKey::generate(),
            Algorithm::EdDSA => SigningKey::generate_ed25519(),
            _ => return Err(RotateError::Key(format!("cannot make {} keys", alg.name()))),
        }
        .map_err(|_| RotateError::Key("cannot generate a signing key".into()))?;
        let key = Arc::new(key);
        let signs_from = now.saturating_add(self.policy.publish_ahead);
        let not_after = signs_from.saturating_add(self.policy.published_after_signing());
        let file = match &self.key_file {
            None => None,
            Some(path) => {
                let file = file_beside(path, key.kid());
                let (k, f) = (key.clone(), file.clone());
                tokio::task::spawn_blocking(move || write_key_file(&f, &k))
                    .await
                    .map_err(|_| RotateError::Key("the key writer failed".into()))?
                    .map_err(|e| match e {
                        KeyError::File(why) => RotateError::Key(why),
                        KeyError::Store(e) => RotateError::Store(e),
                    })?;
                Some(file)
            }
        };
        let row = keys::StoredKey {
            kid: key.kid().to_string(),
            alg: key.algorithm().name().to_string(),
            pkcs8: if file.is_some() {
                Vec::new()
            } else {
                key.pkcs8().to_vec()
            },
            public_jwk: key.public_jwk().to_json().to_string(),
            created_at: now,
            signs_from,
            retired_at: None,
            not_after: None,
        };
        let stored = store
            .call(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                keys::end_open(&tx, signs_from, not_after)?;
                keys::insert(&tx, &row)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            if let Some(f) = &file {
                remove_key_file(f);
            }
            return Err(RotateError::Store(e));
        }
        let mut next = Vec::with_capacity(snapshot.len() + 1);
        let mut previous = None;
        for k in snapshot.iter() {
            let mut k = k.clone();
            if k.signs_until.is_none() {
                k.signs_until = Some(signs_from);
                k.not_after = Some(not_after);
                previous = Some(k.clone());
            }
            next.push(k);
        }
        let added = RingKey {
            kid: key.kid().to_string(),
            public: key.public_jwk(),
            signer: Some(key),
            file,
            created_at: now,
            signs_from,
            signs_until: None,
            not_after: None,
        };
        next.push(added.clone());
        self.swap(next);
        Ok(Rotated {
            key: added,
            previous,
        })
    }

    /// Retire what has expired by `now`: the private halves of keys past their `not_after` are
    /// overwritten (in the database) or their files overwritten and removed. Their public halves
    /// stay. The kids retired.
    pub async fn retire_expired(&self, store: &Store, now: i64) -> Result<Vec<String>, StoreError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.snapshot();
        let expired: Vec<&RingKey> = snapshot
            .iter()
            .filter(|k| !k.published(now) && k.signer.is_some())
            .collect();
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let kids: Vec<String> = expired.iter().map(|k| k.kid.clone()).collect();
        let in_db: Vec<String> = expired
            .iter()
            .filter(|k| k.file.is_none())
            .map(|k| k.kid.clone())
            .collect();
        let files: Vec<PathBuf> = expired.iter().filter_map(|k| k.file.clone()).collect();
        if !in_db.is_empty() {
            store.call(move |c| keys::forget_private(c, &in_db)).await?;
        }
        if !files.is_empty() {
            tokio::task::spawn_blocking(move || files.iter().for_each(|f| remove_key_file(f)))
                .await
                .map_err(|_| StoreError::Unavailable)?;
        }
        let next = snapshot
            .iter()
            .map(|k| {
                let mut k = k.clone();
                if kids.contains(&k.kid) {
                    k.signer = None;
                    k.file = None;
                }
                k
            })
            .collect();
        self.swap(next);
        Ok(kids)
    }
}

/// A key's dates: when it signs from and until, and when it leaves the JWKS.
trait Dated {
    fn dates(&self) -> (i64, Option<i64>, Option<i64>);
}

impl Dated for keys::StoredKey {
    fn dates(&self) -> (i64, Option<i64>, Option<i64>) {
        (self.signs_from, self.retired_at, self.not_after)
    }
}

impl Dated for RingKey {
    fn dates(&self) -> (i64, Option<i64>, Option<i64>) {
        (self.signs_from, self.signs_until, self.not_after)
    }
}

/// A key's state at `now` by its own dates alone (see [`states`] for the ring's).
fn own_state(key: &impl Dated, now: i64) -> KeyState {
    let (signs_from, signs_until, not_after) = key.dates();
    if not_after.is_some_and(|t| now >= t) {
        KeyState::Retired
    } else if signs_until.is_some_and(|t| now >= t) {
        KeyState::Retiring
    } else if now < signs_from {
        KeyState::Next
    } else {
        KeyState::Active
    }
}

/// The key that signs at `now`: of the keys that have not stopped signing, the last to start by
/// `now`; when the clock is behind every start (a clock set back), the first to start, so that
/// a clock moved back never leaves toolgate without a signer or signs with a newer key early.
fn signing_index(keys: &[impl Dated], now: i64) -> Option<usize> {
    let open: Vec<(usize, i64)> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| matches!(own_state(*k, now), KeyState::Next | KeyState::Active))
        .map(|(i, k)| (i, k.dates().0))
        .collect();
    open.iter()
        .filter(|(_, from)| *from <= now)
        .max_by_key(|(_, from)| *from)
        .or_else(|| open.iter().min_by_key(|(_, from)| *from))
        .map(|(i, _)| *i)
}

/// Every key's state at `now` in the ring: the signing key is `active`, the others by their own
/// dates.
fn states(keys: &[impl Dated], now: i64) -> Vec<KeyState> {
    let signing = signing_index(keys, now);
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            if Some(i) == signing {
                KeyState::Active
            } else {
                own_state(k, now)
            }
        })
        .collect()
}

/// The private half a row holds, checked against its kid and algorithm; `None` if it holds none.
fn stored_signer(row: &keys::StoredKey) -> Result<Option<SigningKey>, StoreError> {
    if row.pkcs8.is_empty() {
        return Ok(None);
    }
    let key = SigningKey::from_pkcs8(&row.pkcs8).map_err(|_| StoreError::Corrupt("signing key"))?;
    if key.kid() != row.kid || key.algorithm().name() != row.alg {
        return Err(StoreError::Corrupt("signing key"));
    }
    Ok(Some(key))
}

/// A ring key from its row: the public half must be the kid's.
fn ring_key(
    row: &keys::StoredKey,
    signer: Option<Arc<SigningKey>>,
    file: Option<PathBuf>,
) -> Result<RingKey, StoreError> {
    let corrupt = StoreError::Corrupt("signing key");
    let value: Value = serde_json::from_str(&row.public_jwk).map_err(|_| corrupt.clone())?;
    let public = Jwk::from_json(&value).map_err(|_| corrupt.clone())?;
    if public.kid.as_deref() != Some(row.kid.as_str())
        || public.thumbprint() != row.kid
        || public.alg.name() != row.alg
    {
        return Err(corrupt);
    }
    Ok(RingKey {
        kid: row.kid.clone(),
        public,
        signer,
        file,
        created_at: row.created_at,
        signs_from: row.signs_from,
        signs_until: row.retired_at,
        not_after: row.not_after,
    })
}

/// `key` becomes the signing key from `now` (its private half stored with it when `in_db`);
/// every other key that has not retired stops signing now (one waiting to sign is withdrawn)
/// and stays published while its tokens may be live. Every row after the change.
fn adopt(
    store: &Store,
    key: &SigningKey,
    in_db: bool,
    now: i64,
) -> Result<Vec<keys::StoredKey>, StoreError> {
    let row = keys::StoredKey {
        kid: key.kid().to_string(),
        alg: key.algorithm().name().to_string(),
        pkcs8: if in_db {
            key.pkcs8().to_vec()
        } else {
            Vec::new()
        },
        public_jwk: key.public_jwk().to_json().to_string(),
        created_at: now,
        signs_from: now,
        retired_at: None,
        not_after: None,
    };
    let kept = now
        .saturating_add(LONGEST_TOKEN_LIFETIME)
        .saturating_add(MAX_LEEWAY);
    store.call_blocking(move |c| {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let others = keys::all(&tx)?;
        for (other, state) in others.iter().zip(states(&others, now)) {
            match state {
                KeyState::Retired => {}
                KeyState::Next => keys::end(&tx, &other.kid, now, now)?,
                KeyState::Active | KeyState::Retiring => {
                    let until = other.retired_at.map_or(now, |t| t.min(now));
                    let not_after = other.not_after.map_or(kept, |t| t.max(kept));
                    keys::end(&tx, &other.kid, until, not_after)?;
                }
            }
        }
        keys::insert(&tx, &row)?;
        tx.commit()?;
        keys::all(c)
    })
}

/// The key in a PKCS#8 PEM file (its owner's alone); `None` if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<SigningKey>, KeyError> {
    let flag = "--signing-key-file";
    let shown = path.display();
    crate::secret_file::ensure_private(path, flag).map_err(KeyError::File)?;
    match std::fs::read_to_string(path) {
        Ok(text) => from_pem(&text)
            .and_then(|der| SigningKey::from_pkcs8(&der).ok())
            .map(Some)
            .ok_or_else(|| {
                KeyError::File(format!(
                    "{flag} {shown} is not a PKCS#8 PEM private key (P-256 or Ed25519)"
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyError::File(format!("cannot read {flag} {shown}: {e}"))),
    }
}

/// Write `key` to a new file `path` (`0600`, durable). A file already there must hold that key.
fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    if let Some(existing) = read_key_file(path)? {
        return if existing.kid() == key.kid() {
            Ok(())
        } else {
            Err(KeyError::File(format!(
                "{} already holds another key; it is not replaced",
                path.display()
            )))
        };
    }
    crate::secret_file::create_private(path, to_pem(key.pkcs8()).as_bytes()).map_err(|e| {
        KeyError::File(format!(
            "cannot write the signing key to {}: {e}",
            path.display()
        ))
    })
}

/// Overwrite a retired key's file with zeros, then remove it. Best effort: a failure is logged
/// (the key no longer signs or verifies either way).
fn remove_key_file(path: &Path) {
    use std::io::Write;
    let overwritten = std::fs::metadata(path).and_then(|m| {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(&vec![0u8; usize::try_from(m.len()).unwrap_or(0)])?;
        f.sync_all()
    });
    let removed = overwritten.and_then(|()| std::fs::remove_file(path));
    match removed {
        Ok(()) => crate::log_info!("retired signing key file {} removed", path.display()),
        Err(e) => crate::log_warn!(
            "cannot remove the retired signing key file {}: {e}",
            path.display()
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const POLICY: KeyPolicy = KeyPolicy {
        publish_ahead: 600,
        token_lifetime: 300,
    };

    fn open(store: &Store, file: Option<&Path>, clock: &Arc<ManualClock>) -> KeyRing {
        KeyRing::open(store, file, POLICY, clock.clone()).unwrap()
    }

    /// Review finding: a restart with a longer token lifetime while a rotation waits keeps
    /// the old key published until the longer-lived tokens it still signs have expired.
    #[tokio::test]
    async fn a_longer_token_lifetime_after_a_restart_keeps_the_old_key_published() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _t) = Store::open(&dir.path().join("k.db")).unwrap();
        let clock = Arc::new(ManualClock::new(10_000));
        let ring = open(&store, None, &clock); // token lifetime 300
        let old = ring.signer(10_000).unwrap().kid().to_string();
        ring.rotate(&store, Algorithm::ES256, 10_000).await.unwrap();
        clock.set(10_100);
        let longer = KeyPolicy {
            publish_ahead: 600,
            token_lifetime: 3600,
        };
        let ring = KeyRing::open(&store, None, longer, clock.clone()).unwrap();
        assert_eq!(ring.signer(10_599).unwrap().kid(), old);
        // Its last token (signed at 10 599) lives until 14 199, plus the leeway.
        assert!(
            ring.find(&old, 14_250).is_some(),
            "old key unpublished while its tokens live"
        );
        assert!(ring.find(&old, 10_600 + 3600 + MAX_LEEWAY).is_none());
    }

    /// Review finding: a restart with the clock set back behind a rotation does not withdraw
    /// the live key (the retired one, without its private half, looks like the signer then).
    #[tokio::test]
    async fn a_clock_set_back_at_restart_keeps_the_live_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _t) = Store::open(&dir.path().join("k.db")).unwrap();
        let clock = Arc::new(ManualClock::new(10_000));
        let ring = open(&store, None, &clock);
        let live = ring
            .rotate(&store, Algorithm::ES256, 10_000)
            .await
            .unwrap()
            .key
            .kid;
        clock.set(11_000);
        ring.retire_expired(&store, 11_000).await.unwrap();
        drop(ring);
        clock.set(9_000);
        let ring = open(&store, None, &clock);
        assert_eq!(
            ring.signer(9_000).unwrap().kid(),
            live,
            "the live key signs"
        );
        drop(ring);
        clock.set(11_100);
        let ring = open(&store, None, &clock);
        assert!(
            ring.find(&live, 11_100).is_some(),
            "live key withdrawn by a clock set back"
        );
        assert_eq!(ring.signer(11_100).unwrap().kid(), live);
    }

    #[test]
    fn key_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let clock = Arc::new(ManualClock::new(1000));
        let (store, t) = Store::open(&path).unwrap();
        let kid = open(&store, None, &clock)
            .signer(1000)
            .unwrap()
            .kid()
            .to_string();
        drop(store);
        t.join().unwrap();
        let (store, _t) = Store::open(&path).unwrap();
        clock.set(2000);
        let ring = open(&store, None, &clock);
        assert_eq!(ring.signer(2000).unwrap().kid(), kid);
        assert!(ring.find(&kid, 2000).is_some());
        assert!(!format!("{ring:?}").contains("pkcs8"));
    }

    /// The states follow the clock: published at once, signing after the publish-ahead, the old
    /// key published until its last token expired plus leeway, then retired (private half gone,
    /// public half kept).
    #[tokio::test]
    async fn rotation_moves_through_the_states_by_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _t) = Store::open(&dir.path().join("k.db")).unwrap();
        let clock = Arc::new(ManualClock::new(10_000));
        let ring = open(&store, None, &clock);
        let old = ring.signer(10_000).unwrap().kid().to_string();
        let rotated = ring.rotate(&store, Algorithm::EdDSA, 10_000).await.unwrap();
        let new = rotated.key.kid.clone();
        assert_eq!(rotated.key.signs_from, 10_600);
        assert_eq!(rotated.previous.as_ref().unwrap().kid, old);
        assert_eq!(rotated.previous.as_ref().unwrap().not_after, Some(10_960));
        assert_eq!(ring.keys(10_000)[1].1, KeyState::Next);
        assert_eq!(ring.keys(9_000)[0].1, KeyState::Active, "a clock set back");
        assert_eq!(ring.signer(9_000).unwrap().kid(), old);
        // A second rotation waits for the first.
        assert!(matches!(
            ring.rotate(&store, Algorithm::ES256, 10_001).await,
            Err(RotateError::Pending {
                signs_from: 10_600,
                ..
            })
        ));
        assert_eq!(ring.signer(10_599).unwrap().kid(), old);
        assert_eq!(ring.signer(10_600).unwrap().kid(), new);
        assert_eq!(ring.signer(10_600).unwrap().algorithm(), Algorithm::EdDSA);
        let kids = |now| {
            ring.jwks(now)["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(10_000), [old.clone(), new.clone()]);
        assert_eq!(kids(10_600), [new.clone(), old.clone()]);
        assert_eq!(kids(10_959), [new.clone(), old.clone()]);
        assert_eq!(kids(10_960), [new.as_str()]);
        assert_eq!(ring.counts(10_700), [0, 1, 1, 0]);
        assert!(ring
            .retire_expired(&store, 10_959)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ring.retire_expired(&store, 10_960).await.unwrap(),
            [old.as_str()]
        );
        let stored = store.call(|c| keys::all(c)).await.unwrap();
        let old_row = stored.iter().find(|r| r.kid == old).unwrap();
        assert!(old_row.pkcs8.is_empty());
        assert!(!old_row.public_jwk.is_empty());
        assert_eq!(ring.keys(10_960)[0].1, KeyState::Retired);
        assert_eq!(ring.keys(10_960)[0].0.private_half(), "removed");
    }

    /// `--signing-key-file`: a rotation writes the new key beside the file, the database keeps
    /// no private half, and a reopen finds both keys in their states.
    #[tokio::test]
    async fn file_keys_rotate_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _t) = Store::open(&dir.path().join("k.db")).unwrap();
        let file = dir.path().join("signing.pem");
        let clock = Arc::new(ManualClock::new(50_000));
        let ring = open(&store, Some(&file), &clock);
        let old = ring.signer(50_000).unwrap().kid().to_string();
        let rotated = ring.rotate(&store, Algorithm::ES256, 50_000).await.unwrap();
        let beside = file_beside(&file, &rotated.key.kid);
        assert!(beside.exists());
        let rows = store.call(|c| keys::all(c)).await.unwrap();
        assert!(rows.iter().all(|r| r.pkcs8.is_empty()));
        clock.set(50_700);
        let reopened = open(&store, Some(&file), &clock);
        assert_eq!(reopened.signer(50_700).unwrap().kid(), rotated.key.kid);
        assert!(reopened.find(&old, 50_700).is_some());
        assert_eq!(reopened.keys(50_700)[0].0.private_half(), "file");
        // Retired: its file goes, the key file the new one's is kept.
        clock.set(51_060);
        assert_eq!(
            reopened.retire_expired(&store, 51_060).await.unwrap(),
            [old.as_str()]
        );
        assert!(!file.exists());
        assert!(beside.exists());
        let again = open(&store, Some(&file), &clock);
        assert_eq!(again.signer(51_060).unwrap().kid(), rotated.key.kid);
        assert!(again.find(&old, 51_060).is_none());
    }

    /// A database from before version 10: its key has no public half of its own and no
    /// `signs_from`. It keeps signing, with the same kid, and gets its public half.
    #[test]
    fn a_version_9_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v9.db");
        let key = SigningKey::generate().unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE signing_keys (kid TEXT PRIMARY KEY NOT NULL, alg TEXT NOT NULL,
                 pkcs8 BLOB NOT NULL, created_at INTEGER NOT NULL, retired_at INTEGER,
                 not_after INTEGER) STRICT;
             PRAGMA user_version = 9;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES (?1, 'ES256', ?2, 100)",
            rusqlite::params![key.kid(), key.pkcs8()],
        )
        .unwrap();
        drop(conn);
        let (store, _t) = Store::open(&path).unwrap();
        let clock = Arc::new(ManualClock::new(1000));
        let ring = open(&store, None, &clock);
        assert_eq!(ring.signer(1000).unwrap().kid(), key.kid());
        assert_eq!(ring.keys(1000)[0].0.signs_from, 100);
        let rows = store.call_blocking(|c| keys::all(c)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].public_jwk, key.public_jwk().to_json().to_string());
        // A clock set back before the key's creation still signs with it.
        assert_eq!(ring.signer(50).unwrap().kid(), key.kid());
    }

    /// A waiting key whose file is gone is withdrawn at start: the key before it signs on, and
    /// another rotation may be made.
    #[tokio::test]
    async fn a_waiting_key_without_its_file_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _t) = Store::open(&dir.path().join("k.db")).unwrap();
        let file = dir.path().join("signing.pem");
        let clock = Arc::new(ManualClock::new(70_000));
        let ring = open(&store, Some(&file), &clock);
        let old = ring.signer(70_000).unwrap().kid().to_string();
        let rotated = ring.rotate(&store, Algorithm::EdDSA, 70_000).await.unwrap();
        std::fs::remove_file(file_beside(&file, &rotated.key.kid)).unwrap();
        clock.set(70_100);
        let reopened = open(&store, Some(&file), &clock);
        let states: Vec<KeyState> = reopened.keys(70_100).iter().map(|k| k.1).collect();
        assert_eq!(states, [KeyState::Active, KeyState::Retired]);
        assert_eq!(reopened.signer(80_000).unwrap().kid(), old);
        assert!(reopened.find(&rotated.key.kid, 70_100).is_none());
        let again = reopened
            .rotate(&store, Algorithm::ES256, 70_100)
            .await
            .unwrap();
        assert_eq!(again.previous.unwrap().kid, old);
        // The database agrees with the ring after a reopen.
        let third = open(&store, Some(&file), &clock);
        assert_eq!(third.signer(70_100 + 600).unwrap().kid(), again.key.kid);
    }

    /// A P-256 key as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes
    /// it (a throwaway, for this test only).
    const OPENSSL_P256: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMl2lEB0y0+xdzIKR
T5q3yf4wXAXRfVxnc0XxUqJffK+hRANCAASkFSm/SHeC7m8wFKhUlpuM7fgEoU7y
GnwDzM8Pssn8Fbpqa+KYEI9lfFXPLBGOLsucWET744MDL1bW3OtrSYaq
-----END PRIVATE KEY-----
";

    #[test]
    fn pem_round_trips_and_reads_openssl_keys() {
        let key = SigningKey::generate().unwrap();
        let pem = to_pem(key.pkcs8());
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(from_pem(&pem).unwrap(), key.pkcs8());
        let openssl = SigningKey::from_pkcs8(&from_pem(OPENSSL_P256).unwrap()).unwrap();
        assert_eq!(openssl.algorithm().name(), "ES256");
        assert_eq!(
            from_pem("-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----"),
            None
        );
        assert_eq!(from_pem("not a key"), None);
        assert_eq!(
            from_pem(&pem.replace("PRIVATE KEY", "EC PRIVATE KEY")),
            None
        );
    }
}
