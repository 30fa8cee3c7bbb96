//! DPoP (RFC 9449): a proof, signed by the client's key, that the caller of one request holds
//! the key a token is bound to (`cnf.jkt`). This module reads and judges one proof, issues and
//! checks the server's nonces (§8, §9), and remembers the proofs already used (§11.1).
//!
//! Every failure is a [`ProofError`] with a fixed sentence: nothing of the proof is echoed.

use std::collections::HashMap;
use std::sync::Mutex;

use ring::digest::{digest, Context, SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Map, Value};

use crate::claims;
use crate::jose::{self, b64, Algorithm, Jwk};
use crate::resource;

/// The media type of a proof's header (`typ`, RFC 9449 §4.2).
pub const TYP_DPOP: &str = "dpop+jwt";
/// The algorithms a proof may be signed with, as `dpop_signing_alg_values_supported` lists them:
/// asymmetric only (no `none`, no HMAC).
pub const SIGNING_ALGS: [&str; 6] = ["ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"];
/// The default tolerance on a proof's `iat`, on both sides of now (seconds).
pub const DEFAULT_WINDOW: i64 = 60;
/// The widest `iat` window a deployment may configure.
pub const MAX_WINDOW: i64 = 300;
/// The longest proof accepted (an 8192-bit RSA key in its header fits with room to spare).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// The longest `jti` accepted: a proof's ID is a random value, not a document.
pub const MAX_JTI_BYTES: usize = 256;
/// How long one nonce slot lasts; a nonce is accepted in its slot and the next one.
pub const NONCE_PERIOD: i64 = 300;

/// Why a proof was refused. Each has a fixed description (see [`ProofError::description`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// No proof where one is needed.
    Missing,
    /// More than one `DPoP` header.
    Several,
    /// Not a compact JWS of JSON objects, or too long.
    Malformed,
    /// Header `typ` is not `dpop+jwt`.
    Type,
    /// `alg` not on the allow-list, or not the key's.
    Algorithm,
    /// No `jwk`, or one that is not a supported public key.
    Key,
    /// The `jwk` carries private key members.
    PrivateKey,
    /// The signature does not verify with the `jwk`.
    Signature,
    /// `jti`, `htm`, `htu` or `iat` missing or of the wrong type (or `ath`, `nonce` malformed).
    Claims,
    /// `htm` is not the request's method.
    Method,
    /// `htu` is not the request's URL.
    Url,
    /// `iat` is too far in the past.
    TooOld,
    /// `iat` is not after this server's horizon: a proof it may have seen before a restart.
    Predates,
    /// `iat` is too far in the future.
    Future,
    /// `ath` is missing or is not the hash of the presented access token.
    TokenHash,
    /// The proof's key is not the key the token is bound to.
    KeyMismatch,
    /// The server requires a nonce and the proof has none, or a stale one (`use_dpop_nonce`).
    UseNonce,
    /// The proof was used before.
    Replayed,
    /// The replay cache holds only live proofs and has no room (fail closed; retry later).
    Full,
}

/// Every proof error, for mapping a denial's reason back to its error.
pub const ALL_ERRORS: [ProofError; 19] = [
    ProofError::Missing,
    ProofError::Several,
    ProofError::Malformed,
    ProofError::Type,
    ProofError::Algorithm,
    ProofError::Key,
    ProofError::PrivateKey,
    ProofError::Signature,
    ProofError::Claims,
    ProofError::Method,
    ProofError::Url,
    ProofError::TooOld,
    ProofError::Predates,
    ProofError::Future,
    ProofError::TokenHash,
    ProofError::KeyMismatch,
    ProofError::UseNonce,
    ProofError::Replayed,
    ProofError::Full,
];

impl ProofError {
    /// The fixed `error_description`.
    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "DPoP proof is missing",
            Self::Several => "more than one DPoP proof",
            Self::Malformed => "DPoP proof is not a compact JWS",
            Self::Type => "DPoP proof typ must be dpop+jwt",
            Self::Algorithm => "DPoP proof algorithm is not allowed or does not match its key",
            Self::Key => "DPoP proof jwk is not a supported public key",
            Self::PrivateKey => "DPoP proof jwk must not contain a private key",
            Self::Signature => "DPoP proof signature is invalid",
            Self::Claims => "DPoP proof needs string jti, htm and htu and a numeric iat",
            Self::Method => "DPoP proof htm does not match the request method",
            Self::Url => "DPoP proof htu does not match the request URL",
            Self::TooOld => "DPoP proof iat is too old",
            Self::Predates => "DPoP proof is dated before this server restarted; make a new one",
            Self::Future => "DPoP proof iat is in the future",
            Self::TokenHash => "DPoP proof ath does not match the access token",
            Self::KeyMismatch => "DPoP proof key does not match the token binding",
            Self::UseNonce => "DPoP proof needs the server's current nonce",
            Self::Replayed => "DPoP proof was already used",
            Self::Full => "DPoP proofs cannot be recorded right now",
        }
    }

    /// The OAuth error code: `use_dpop_nonce` for a missing or stale nonce,
    /// `temporarily_unavailable` when the replay cache is full, `invalid_dpop_proof` else.
    pub fn code(self) -> &'static str {
        match self {
            Self::UseNonce => "use_dpop_nonce",
            Self::Full => "temporarily_unavailable",
            _ => "invalid_dpop_proof",
        }
    }
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for ProofError {}

/// A proof whose shape, header, key and signature checked out; its claims are not yet compared
/// with the request ([`Proof::check`]).
#[derive(Debug, Clone)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key: what `cnf.jkt` must be.
    pub jkt: String,
    /// The algorithm the proof was signed with.
    pub alg: Algorithm,
    /// The proof's unique ID.
    pub jti: String,
    /// The HTTP method the proof is for.
    pub htm: String,
    /// The URL the proof is for, as written in the proof.
    pub htu: String,
    /// When the proof was made.
    pub iat: i64,
    /// base64url SHA-256 of the access token the proof goes with.
    pub ath: Option<String>,
    /// The server nonce the proof carries.
    pub nonce: Option<String>,
}

/// What one request is, to compare a proof against.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request's method (`POST`).
    pub method: &'a str,
    /// The request's URL: the server's configured public URL plus the path, never built from
    /// the `Host` header. Normalised here (RFC 9449 §4.3) before the comparison.
    pub url: &'a str,
    /// The access token presented with the proof (whose hash `ath` must be); `None` at the
    /// token endpoint, where no token is presented.
    pub access_token: Option<&'a str>,
}

/// The values of the `DPoP` header(s) of one request: exactly one proof, or a refusal.
pub fn one_header<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Result<&'a str, ProofError> {
    let first = values.next().ok_or(ProofError::Missing)?;
    if values.next().is_some() {
        return Err(ProofError::Several);
    }
    std::str::from_utf8(first).map_err(|_| ProofError::Malformed)
}

/// RFC 9449 §4.2 `ath`: base64url SHA-256 of the ASCII access token.
pub fn token_hash(access_token: &str) -> String {
    b64::encode(digest(&SHA256, access_token.as_bytes()).as_ref())
}

impl Proof {
    /// Read a proof and verify its signature with the key it carries (RFC 9449 §4.3, steps 1–7
    /// but the claim comparisons): one compact JWS; `typ` `dpop+jwt`; `alg` on the allow-list
    /// and the key's; `jwk` a public key only; the signature; `jti`, `htm`, `htu`, `iat`.
    pub fn parse(proof: &str) -> Result<Proof, ProofError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed);
        }
        let compact = jose::jws::decode_with_embedded_key(proof).map_err(|e| match e {
            jose::JoseError::UnsupportedAlgorithm => ProofError::Algorithm,
            _ => ProofError::Malformed,
        })?;
        if compact.header.typ.as_deref() != Some(TYP_DPOP) {
            return Err(ProofError::Type);
        }
        let key = embedded_key(&compact.header.raw, compact.header.alg)?;
        compact.verify_with(&key).map_err(|e| match e {
            jose::JoseError::AlgorithmMismatch => ProofError::Algorithm,
            _ => ProofError::Signature,
        })?;
        let c = &compact.claims;
        let text = |name: &'static str| -> Result<Option<String>, ProofError> {
            Ok(claims::string(c, name)
                .map_err(|_| ProofError::Claims)?
                .map(str::to_string))
        };
        let jti = text("jti")?
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or(ProofError::Claims)?;
        let htm = text("htm")?
            .filter(|m| !m.is_empty())
            .ok_or(ProofError::Claims)?;
        let htu = text("htu")?.ok_or(ProofError::Claims)?;
        let iat = claims::numeric_date(c, "iat")
            .map_err(|_| ProofError::Claims)?
            .ok_or(ProofError::Claims)?;
        Ok(Proof {
            jkt: key.thumbprint(),
            alg: compact.header.alg,
            jti,
            htm,
            htu,
            iat,
            ath: text("ath")?,
            nonce: text("nonce")?,
        })
    }

    /// Compare the proof with the request (RFC 9449 §4.3 steps 8–12): `htm` is the method,
    /// `htu` the URL (both normalised), `iat` within `window` of `now` on both sides and not
    /// before `not_before`, and `ath` the hash of the access token when one is presented.
    pub fn check(
        &self,
        expected: &Expected<'_>,
        now: i64,
        window: i64,
        not_before: i64,
    ) -> Result<(), ProofError> {
        if self.htm != expected.method {
            return Err(ProofError::Method);
        }
        let presented = resource::normalize_http_url(expected.url).ok_or(ProofError::Url)?;
        if resource::normalize_http_url(&self.htu).as_deref() != Some(presented.as_str()) {
            return Err(ProofError::Url);
        }
        let window = window.clamp(0, MAX_WINDOW);
        if self.iat > now.saturating_add(window) {
            return Err(ProofError::Future);
        }
        if self.iat < now.saturating_sub(window) {
            return Err(ProofError::TooOld);
        }
        if self.iat < not_before {
            return Err(ProofError::Predates);
        }
        if let Some(token) = expected.access_token {
            let ath = self.ath.as_deref().ok_or(ProofError::TokenHash)?;
            if !constant_time_eq(ath.as_bytes(), token_hash(token).as_bytes()) {
                return Err(ProofError::TokenHash);
            }
        }
        Ok(())
    }

    /// Does the proof's key match a token's `cnf.jkt`?
    pub fn matches(&self, jkt: &str) -> bool {
        constant_time_eq(self.jkt.as_bytes(), jkt.as_bytes())
    }
}

/// The header's `jwk`, judged: an object, no private members, a supported public key whose
/// algorithm is the header's. An RSA key without its own `alg` takes the header's (RS256 or
/// PS256), since both sign with the same key type.
fn embedded_key(header: &Map<String, Value>, alg: Algorithm) -> Result<Jwk, ProofError> {
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(ProofError::Key)?;
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(ProofError::PrivateKey);
    }
    let mut jwk = jwk.clone();
    if jwk.get("kty").and_then(Value::as_str) == Some("RSA")
        && !jwk.contains_key("alg")
        && matches!(alg, Algorithm::RS256 | Algorithm::PS256)
    {
        jwk.insert("alg".into(), alg.name().into());
    }
    // A proof is checked before its sender is authenticated: an RSA key may cost at most what
    // a 4096-bit key with the usual exponent does (an 8192-bit one with a 33-bit exponent
    // costs eight ES256 checks).
    if jwk.get("kty").and_then(Value::as_str) == Some("RSA") {
        let n = jwk.get("n").and_then(Value::as_str).map_or(0, str::len);
        if n > 683 || jwk.get("e").and_then(Value::as_str) != Some("AQAB") {
            return Err(ProofError::Key);
        }
    }
    // The proof's `kid`, if any, names nothing here: the key is the one in the header.
    jwk.remove("kid");
    let key = Jwk::from_json(&Value::Object(jwk)).map_err(|_| ProofError::Key)?;
    if key.alg != alg {
        return Err(ProofError::Algorithm);
    }
    Ok(key)
}

/// What a client puts in a proof (RFC 9449 §4.2), for [`sign_proof`].
#[derive(Debug, Clone, Copy)]
pub struct ProofClaims<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URL (query and fragment are dropped).
    pub htu: &'a str,
    /// The access token sent with the request (its hash becomes `ath`); `None` at a token
    /// endpoint.
    pub access_token: Option<&'a str>,
    /// The server's nonce, when it asked for one.
    pub nonce: Option<&'a str>,
    /// When the proof is made.
    pub iat: i64,
}

/// Make a proof with `key` (the client side: the CLI, tests, benchmarks): header `typ`
/// `dpop+jwt`, the key's `alg` and public `jwk`; a random `jti`.
pub fn sign_proof(
    key: &crate::jose::SigningKey,
    claims: &ProofClaims<'_>,
) -> Result<String, crate::jose::JoseError> {
    let mut jti = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti)
        .map_err(|_| crate::jose::JoseError::KeyGeneration)?;
    let mut jwk = key.public_jwk().to_json();
    if let Some(obj) = jwk.as_object_mut() {
        // The key is in the proof; a `kid` or `use` would name nothing.
        obj.remove("kid");
        obj.remove("use");
    }
    let header = serde_json::json!({"typ": TYP_DPOP, "alg": key.algorithm().name(), "jwk": jwk});
    let htu = claims.htu.split(['?', '#']).next().unwrap_or_default();
    let mut payload = serde_json::json!({
        "jti": b64::encode(&jti),
        "htm": claims.htm,
        "htu": htu,
        "iat": claims.iat,
    });
    if let Some(obj) = payload.as_object_mut() {
        if let Some(token) = claims.access_token {
            obj.insert("ath".into(), token_hash(token).into());
        }
        if let Some(nonce) = claims.nonce {
            obj.insert("nonce".into(), nonce.into());
        }
    }
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(payload.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64::encode(&signature)))
}

/// Equality whose time does not depend on where two equally long values differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server-provided nonces (RFC 9449 §8, §9), stateless: a nonce names a time slot of
/// [`NONCE_PERIOD`] seconds and carries an HMAC of it under a secret this process drew at
/// start. The nonce of the current slot and of the one before are accepted. A restart draws a
/// new secret, so a proof made before it is refused with `use_dpop_nonce` and the client
/// retries with a fresh nonce (no replay window across a restart).
pub struct Nonces {
    key: hmac::Key,
    period: i64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// Bytes of HMAC kept in a nonce.
const NONCE_TAG: usize = 16;

impl Nonces {
    /// Nonces under a fresh random secret, rotating every [`NONCE_PERIOD`] seconds.
    pub fn generate() -> Result<Self, ProofError> {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| ProofError::Full)?;
        Ok(Self::with_secret(&secret, NONCE_PERIOD))
    }

    /// Nonces under `secret`, rotating every `period` seconds (tests pick both).
    pub fn with_secret(secret: &[u8], period: i64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            period: period.max(1),
        }
    }

    fn slot(&self, now: i64) -> u64 {
        u64::try_from(now.max(0) / self.period).unwrap_or(0)
    }

    fn for_slot(&self, slot: u64) -> String {
        let tag = hmac::sign(&self.key, &slot.to_be_bytes());
        let mut raw = slot.to_be_bytes().to_vec();
        raw.extend_from_slice(tag.as_ref().get(..NONCE_TAG).unwrap_or_default());
        b64::encode(&raw)
    }

    /// The nonce to hand out now (`DPoP-Nonce`).
    pub fn current(&self, now: i64) -> String {
        self.for_slot(self.slot(now))
    }

    /// Is `nonce` this server's, of the current slot or the one before?
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let Ok(raw) = b64::decode(nonce) else {
            return false;
        };
        if raw.len() != 8 + NONCE_TAG {
            return false;
        }
        let (slot, tag) = raw.split_at(8);
        let Ok(slot) = <[u8; 8]>::try_from(slot).map(u64::from_be_bytes) else {
            return false;
        };
        let current = self.slot(now);
        if slot != current && slot.saturating_add(1) != current {
            return false;
        }
        let expected = hmac::sign(&self.key, &slot.to_be_bytes());
        constant_time_eq(tag, expected.as_ref().get(..NONCE_TAG).unwrap_or_default())
    }
}

/// The proofs already used, each remembered while its `iat` is inside the window, so that a
/// proof is accepted once. Only proofs that passed every other check are recorded (nobody fills
/// it with proofs from throw-away keys), keyed by a salted hash of the key thumbprint and the
/// `jti` (16 bytes an entry). Bounded: full of live entries, it refuses new proofs
/// ([`ProofError::Full`]) rather than forget one.
#[derive(Debug)]
pub struct ReplayCache {
    seen: Mutex<Seen>,
    capacity: usize,
    salt: [u8; 16],
    /// Hashes a proof's key thumbprint for the per-key count.
    keys: std::collections::hash_map::RandomState,
}

#[derive(Debug, Default)]
struct Seen {
    /// Each live proof: until when, and (hashed) the key that signed it.
    entries: HashMap<[u8; 16], (i64, u64)>,
    /// Live proofs per key: one key may hold at most an eighth of the cache, so one token
    /// holder sending as fast as it can does not lock every other client out.
    per_key: HashMap<u64, u32>,
    /// When expired entries were last swept out (a full cache sweeps at most once a second).
    swept_at: i64,
    /// The latest `now` any spend was made at: a sweep at that time may have forgotten proofs
    /// that expired before it, so a spend whose proof expires earlier is refused (a request
    /// that read an earlier clock must not replay a proof swept out meanwhile).
    latest: i64,
}

impl ReplayCache {
    /// Room for a million live proofs.
    pub const DEFAULT_CAPACITY: usize = 1 << 20;

    /// An empty cache for `capacity` live proofs.
    pub fn new(capacity: usize) -> Self {
        let mut salt = [0u8; 16];
        // A failed draw leaves a zero salt: the keys are still SHA-256 of distinct inputs.
        let _ = SystemRandom::new().fill(&mut salt);
        Self {
            seen: Mutex::new(Seen::default()),
            capacity: capacity.max(1),
            salt,
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The most live proofs one key may hold.
    fn per_key_limit(&self) -> u32 {
        u32::try_from((self.capacity / 8).max(1)).unwrap_or(u32::MAX)
    }

    /// How many proofs are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.entries.len()).unwrap_or(0)
    }

    /// Is nothing remembered?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(&self, jkt: &str, jti: &str) -> [u8; 16] {
        let mut h = Context::new(&SHA256);
        h.update(&self.salt);
        h.update(&(jkt.len() as u64).to_be_bytes());
        h.update(jkt.as_bytes());
        h.update(jti.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(h.finish().as_ref().get(..16).unwrap_or(&[0u8; 16]));
        out
    }

    /// Record the proof `(jkt, jti)` until `until`; [`ProofError::Replayed`] if it is
    /// remembered and live, [`ProofError::Full`] if there is no room.
    pub fn spend(&self, jkt: &str, jti: &str, until: i64, now: i64) -> Result<(), ProofError> {
        self.spend_with_receipt(jkt, jti, until, now).map(|_| ())
    }

    /// [`ReplayCache::spend`], handing back the receipt of the spend.
    fn spend_with_receipt(
        &self,
        jkt: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> Result<SpentProof, ProofError> {
        use std::hash::BuildHasher;
        let key = self.key(jkt, jti);
        let signer = self.keys.hash_one(jkt);
        let mut seen = self.seen.lock().map_err(|_| ProofError::Full)?;
        seen.latest = seen.latest.max(now);
        if until < seen.latest {
            return Err(ProofError::TooOld);
        }
        if seen.entries.get(&key).is_some_and(|(exp, _)| *exp >= now) {
            return Err(ProofError::Replayed);
        }
        let known = seen.entries.contains_key(&key);
        let crowded = |seen: &Seen| {
            (seen.entries.len() >= self.capacity && !known)
                || seen.per_key.get(&signer).copied().unwrap_or(0) >= self.per_key_limit()
        };
        if crowded(&seen) {
            if seen.swept_at == now {
                return Err(ProofError::Full);
            }
            seen.swept_at = now;
            seen.sweep(now);
            if crowded(&seen) {
                return Err(ProofError::Full);
            }
        }
        if seen.entries.insert(key, (until, signer)).is_none() {
            *seen.per_key.entry(signer).or_insert(0) += 1;
        }
        Ok(SpentProof { key })
    }
}

impl Seen {
    /// Forget the proofs whose time is over.
    fn sweep(&mut self, now: i64) {
        let per_key = &mut self.per_key;
        self.entries.retain(|_, (exp, signer)| {
            let live = *exp >= now;
            if !live {
                if let Some(n) = per_key.get_mut(signer) {
                    *n = n.saturating_sub(1);
                }
            }
            live
        });
        per_key.retain(|_, n| *n > 0);
    }
}

/// The receipt of a proof this server spent: proof that one request's proof went through the
/// replay cache already, so that the other decisions of that same HTTP request (the targets of
/// one MCP batch) do not refuse it as a replay. Only a spend makes one; it names one proof
/// (its key and `jti`) in one cache (its salt), and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpentProof {
    key: [u8; 16],
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

/// How far ahead a server records its horizon at a time: one durable write per this many
/// seconds of proofs, at most.
pub const HORIZON_STEP: i64 = 10;

/// Where a server with durable storage keeps its horizon: the latest `iat` a proof it accepted
/// may have. After a restart, proofs dated up to it could be replays of ones it saw; proofs
/// dated after it cannot. A server that never accepted a proof has none, so a fresh start
/// refuses nothing.
pub trait Horizon: Send + Sync {
    /// Durably record that proofs up to `until` may have been accepted (never lowering what is
    /// stored); `false` if it could not be written, and the proof is then refused.
    fn extend(&self, until: i64) -> bool;
}

/// How a server checks proofs: the `iat` window, nonces or none, and its replay cache.
pub struct DpopPolicy {
    /// Tolerance on `iat`, both sides, clamped to `0..=MAX_WINDOW`.
    pub window: i64,
    /// Server nonces, when required (`--dpop-nonce`).
    pub nonces: Option<Nonces>,
    /// Proofs dated before this are refused: without nonces, proofs used before a restart
    /// are not in the (fresh) replay cache, so a proof must post-date the start plus the
    /// window. With nonces, a restart changes the secret and this is not needed.
    pub not_before: i64,
    /// The proofs used.
    pub replay: ReplayCache,
    /// The durable horizon, and the value last written to it.
    horizon: Option<(Box<dyn Horizon>, std::sync::atomic::AtomicI64)>,
}

impl std::fmt::Debug for DpopPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopPolicy")
            .field("window", &self.window)
            .field("nonces", &self.nonces.is_some())
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

impl DpopPolicy {
    /// The policy of a server started at `started_at`: `window` seconds of tolerance, nonces
    /// if `nonces` is given.
    pub fn new(window: i64, nonces: Option<Nonces>, started_at: i64) -> Self {
        let window = window.clamp(0, MAX_WINDOW);
        let not_before = if nonces.is_some() {
            0
        } else {
            started_at.saturating_add(window).saturating_add(1)
        };
        Self {
            window,
            nonces,
            not_before,
            replay: ReplayCache::default(),
            horizon: None,
        }
    }

    /// Keep the horizon in durable storage instead of refusing every proof dated before the
    /// start plus the window: proofs up to `stored` (what storage held at start; `None` if
    /// this server never accepted a proof) are refused, later ones are not. Without nonces
    /// only; with them a restart changes the secret and neither rule is needed.
    pub fn with_horizon(mut self, stored: Option<i64>, horizon: Box<dyn Horizon>) -> Self {
        if self.nonces.is_none() {
            // Proofs accepted before the start are dated at most the start plus the window,
            // so that bound stands whatever was stored (a proof dated ahead, or a clock that
            // jumped, cannot push the refusal further).
            self.not_before = stored.map_or(0, |h| h.saturating_add(1).min(self.not_before));
            let last = std::sync::atomic::AtomicI64::new(stored.unwrap_or(i64::MIN));
            self.horizon = Some((horizon, last));
        }
        self
    }

    /// Judge `proof` for the request `expected` at `now`: parse and signature, the
    /// comparisons, the nonce. Does not record it: [`DpopPolicy::spend`] does, once every
    /// other check of the request passed.
    pub fn check(
        &self,
        proof: &str,
        expected: &Expected<'_>,
        now: i64,
    ) -> Result<Proof, ProofError> {
        let proof = Proof::parse(proof)?;
        proof.check(expected, now, self.window, self.not_before)?;
        if let Some(nonces) = &self.nonces {
            if !proof
                .nonce
                .as_deref()
                .is_some_and(|n| nonces.accepts(n, now))
            {
                return Err(ProofError::UseNonce);
            }
        }
        Ok(proof)
    }

    /// Record a proof that passed everything: remembered until its `iat` leaves the window
    /// (and, with a durable horizon, known to a restart before it is accepted).
    pub fn spend(&self, proof: &Proof, now: i64) -> Result<(), ProofError> {
        self.spend_once(proof, now, None).map(|_| ())
    }

    /// Record a proof once per HTTP request: a proof this request already spent (`spent`, the
    /// receipt of that spend, names this very proof in this cache) is not spent again; any
    /// other proof is spent as [`DpopPolicy::spend`] says. The receipt for the proof.
    pub fn spend_once(
        &self,
        proof: &Proof,
        now: i64,
        spent: Option<&SpentProof>,
    ) -> Result<SpentProof, ProofError> {
        use std::sync::atomic::Ordering;
        let receipt = SpentProof {
            key: self.replay.key(&proof.jkt, &proof.jti),
        };
        if spent == Some(&receipt) {
            return Ok(receipt);
        }
        if let Some((store, last)) = &self.horizon {
            if proof.iat > last.load(Ordering::Acquire) {
                let until = proof.iat.saturating_add(HORIZON_STEP);
                if !store.extend(until) {
                    return Err(ProofError::Full);
                }
                last.fetch_max(until, Ordering::AcqRel);
            }
        }
        let until = proof.iat.saturating_add(self.window);
        self.replay
            .spend_with_receipt(&proof.jkt, &proof.jti, until, now)
    }

    /// The nonce to send in `DPoP-Nonce`, when nonces are on.
    pub fn nonce(&self, now: i64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(now))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// RFC 9449 §4.1 Figure 4 (as in Appendix A's key): a proof for the token request.
    const RFC_TOKEN_REQUEST_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
    /// RFC 9449 §7.1 Figure 12: a proof for a protected resource request, with `ath`.
    const RFC_RESOURCE_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
    /// RFC 9449 §7.1 Figure 12's access token.
    const RFC_ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    /// RFC 9449 §6.1: the `jkt` of the examples' key.
    const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

    #[test]
    fn the_rfc_9449_token_request_proof() {
        let p = Proof::parse(RFC_TOKEN_REQUEST_PROOF).unwrap();
        assert_eq!(p.jkt, RFC_JKT);
        assert_eq!(p.alg, Algorithm::ES256);
        assert_eq!(
            (p.jti.as_str(), p.htm.as_str(), p.iat),
            ("-BwC3ESc6acc2lTc", "POST", 1_562_262_616)
        );
        let req = Expected {
            method: "POST",
            url: "https://server.example.com/token",
            access_token: None,
        };
        assert_eq!(p.check(&req, 1_562_262_616, 60, 0), Ok(()));
        // §4.3: the URL is compared after normalisation (case, default port).
        let same = Expected {
            url: "HTTPS://Server.Example.COM:443/token?query#frag",
            ..req
        };
        assert_eq!(p.check(&same, 1_562_262_616, 60, 0), Ok(()));
        for (wrong, err) in [
            (
                Expected {
                    method: "GET",
                    ..req
                },
                ProofError::Method,
            ),
            (
                Expected {
                    url: "https://server.example.com/token2",
                    ..req
                },
                ProofError::Url,
            ),
            (
                Expected {
                    url: "http://server.example.com/token",
                    ..req
                },
                ProofError::Url,
            ),
        ] {
            assert_eq!(p.check(&wrong, 1_562_262_616, 60, 0), Err(err));
        }
        assert_eq!(
            p.check(&req, 1_562_262_616 + 61, 60, 0),
            Err(ProofError::TooOld)
        );
        assert_eq!(
            p.check(&req, 1_562_262_616 - 61, 60, 0),
            Err(ProofError::Future)
        );
        assert_eq!(
            p.check(&req, 1_562_262_616, 60, 1_562_262_617),
            Err(ProofError::Predates)
        );
    }

    #[test]
    fn the_rfc_9449_resource_request_proof_and_its_ath() {
        assert_eq!(
            token_hash(RFC_ACCESS_TOKEN),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        let p = Proof::parse(RFC_RESOURCE_PROOF).unwrap();
        assert!(p.matches(RFC_JKT));
        assert!(!p.matches("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4J"));
        let req = Expected {
            method: "GET",
            url: "https://resource.example.org/protectedresource",
            access_token: Some(RFC_ACCESS_TOKEN),
        };
        assert_eq!(p.check(&req, 1_562_262_618, 60, 0), Ok(()));
        let other = Expected {
            access_token: Some("another token"),
            ..req
        };
        assert_eq!(
            p.check(&other, 1_562_262_618, 60, 0),
            Err(ProofError::TokenHash)
        );
        // A proof without ath goes with no token.
        let no_ath = Proof::parse(RFC_TOKEN_REQUEST_PROOF).unwrap();
        let with_token = Expected {
            method: "POST",
            url: "https://server.example.com/token",
            access_token: Some(RFC_ACCESS_TOKEN),
        };
        assert_eq!(
            no_ath.check(&with_token, 1_562_262_616, 60, 0),
            Err(ProofError::TokenHash)
        );
    }

    fn sign(header: Value, claims: Value, key: &crate::jose::SigningKey) -> String {
        let h = b64::encode(header.to_string().as_bytes());
        let c = b64::encode(claims.to_string().as_bytes());
        let input = format!("{h}.{c}");
        let sig = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64::encode(&sig))
    }

    fn claims() -> Value {
        serde_json::json!({"jti": "j1", "htm": "POST", "htu": "https://t/x", "iat": 100})
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let key = crate::jose::SigningKey::generate().unwrap();
        let jwk = key.public_jwk().to_json();
        let header = |typ: &str, alg: &str, jwk: Value| serde_json::json!({"typ": typ, "alg": alg, "jwk": jwk});
        let ok = sign(header(TYP_DPOP, "ES256", jwk.clone()), claims(), &key);
        assert!(Proof::parse(&ok).is_ok());
        let mut private = jwk.clone();
        private["d"] = Value::String(b64::encode(&[1u8; 32]));
        let other = crate::jose::SigningKey::generate().unwrap();
        let cases = [
            (
                sign(header("JWT", "ES256", jwk.clone()), claims(), &key),
                ProofError::Type,
            ),
            (
                sign(header(TYP_DPOP, "ES256", private), claims(), &key),
                ProofError::PrivateKey,
            ),
            (
                sign(header(TYP_DPOP, "ES256", jwk.clone()), claims(), &other),
                ProofError::Signature,
            ),
            (
                sign(header(TYP_DPOP, "HS256", jwk.clone()), claims(), &key),
                ProofError::Algorithm,
            ),
            (
                sign(header(TYP_DPOP, "none", jwk.clone()), claims(), &key),
                ProofError::Algorithm,
            ),
            (
                sign(header(TYP_DPOP, "ES384", jwk.clone()), claims(), &key),
                ProofError::Algorithm,
            ),
            (
                sign(
                    serde_json::json!({"typ": TYP_DPOP, "alg": "ES256"}),
                    claims(),
                    &key,
                ),
                ProofError::Key,
            ),
            (
                sign(
                    header(TYP_DPOP, "ES256", jwk.clone()),
                    serde_json::json!({"jti": "j", "htm": "POST", "htu": "https://t/x"}),
                    &key,
                ),
                ProofError::Claims,
            ),
            (
                sign(
                    header(TYP_DPOP, "ES256", jwk.clone()),
                    serde_json::json!({"jti": "", "htm": "POST", "htu": "https://t/x", "iat": 1}),
                    &key,
                ),
                ProofError::Claims,
            ),
            ("not.a.proof".to_string(), ProofError::Malformed),
            ("x".repeat(MAX_PROOF_BYTES + 1), ProofError::Malformed),
        ];
        for (proof, err) in cases {
            assert_eq!(Proof::parse(&proof).err(), Some(err), "{err:?}");
        }
        // alg none with an empty signature is refused for its algorithm, not its shape.
        let unsigned = format!(
            "{}.{}.",
            b64::encode(header(TYP_DPOP, "none", jwk).to_string().as_bytes()),
            b64::encode(claims().to_string().as_bytes())
        );
        assert_eq!(Proof::parse(&unsigned).err(), Some(ProofError::Algorithm));
    }

    #[test]
    fn a_signed_proof_reads_back_and_checks_out() {
        for key in [
            crate::jose::SigningKey::generate().unwrap(),
            crate::jose::SigningKey::generate_ed25519().unwrap(),
        ] {
            let made = sign_proof(
                &key,
                &ProofClaims {
                    htm: "POST",
                    htu: "https://t/x?q=1",
                    access_token: Some("tok"),
                    nonce: Some("n"),
                    iat: 100,
                },
            )
            .unwrap();
            let p = Proof::parse(&made).unwrap();
            assert_eq!(p.jkt, key.public_jwk().thumbprint());
            assert_eq!(
                (p.htu.as_str(), p.nonce.as_deref()),
                ("https://t/x", Some("n"))
            );
            let req = Expected {
                method: "POST",
                url: "https://t/x",
                access_token: Some("tok"),
            };
            assert_eq!(p.check(&req, 100, 60, 0), Ok(()));
        }
    }

    #[test]
    fn a_durable_horizon_replaces_the_start_rule() {
        use std::sync::{Arc, Mutex};
        struct Stored(Arc<Mutex<Vec<i64>>>, bool);
        impl Horizon for Stored {
            fn extend(&self, until: i64) -> bool {
                self.0.lock().unwrap().push(until);
                self.1
            }
        }
        let key = crate::jose::SigningKey::generate().unwrap();
        let at = |iat| {
            let made = sign_proof(
                &key,
                &ProofClaims {
                    htm: "POST",
                    htu: "https://t/x",
                    access_token: None,
                    nonce: None,
                    iat,
                },
            )
            .unwrap();
            Proof::parse(&made).unwrap()
        };
        let req = Expected {
            method: "POST",
            url: "https://t/x",
            access_token: None,
        };
        let writes = Arc::new(Mutex::new(Vec::new()));
        // Never accepted a proof: nothing is refused right after the start.
        let fresh = DpopPolicy::new(60, None, 100)
            .with_horizon(None, Box::new(Stored(writes.clone(), true)));
        let p = at(100);
        assert_eq!(p.check(&req, 100, fresh.window, fresh.not_before), Ok(()));
        assert_eq!(fresh.spend(&p, 100), Ok(()));
        assert_eq!(fresh.spend(&at(105), 105), Ok(()));
        assert_eq!(fresh.spend(&at(111), 111), Ok(()));
        // One write per step of proofs.
        assert_eq!(*writes.lock().unwrap(), vec![110, 121]);
        // Restarted with 121 stored: proofs up to it could be replays.
        let restarted = DpopPolicy::new(60, None, 112)
            .with_horizon(Some(121), Box::new(Stored(writes.clone(), true)));
        assert_eq!(restarted.not_before, 122);
        // A horizon that cannot be written refuses the proof.
        let broken =
            DpopPolicy::new(60, None, 0).with_horizon(None, Box::new(Stored(writes, false)));
        assert_eq!(broken.spend(&at(10), 10), Err(ProofError::Full));
        assert!(broken.replay.is_empty());
        // The pipeline's spend (once per HTTP request) writes the horizon as well; a proof
        // its request already spent does not spend again.
        let writes = Arc::new(Mutex::new(Vec::new()));
        let policy =
            DpopPolicy::new(60, None, 0).with_horizon(None, Box::new(Stored(writes.clone(), true)));
        let p = at(200);
        let receipt = policy.spend_once(&p, 200, None).unwrap();
        assert_eq!(*writes.lock().unwrap(), vec![210]);
        assert_eq!(policy.spend_once(&p, 200, Some(&receipt)), Ok(receipt));
        assert_eq!(policy.spend_once(&p, 200, None), Err(ProofError::Replayed));
        assert_eq!(policy.replay.len(), 1);
    }

    /// Intruder review: the Ed25519 identity as the proof's key, with R = identity and S = 0,
    /// "verified" over any message: a bound token anyone could use. And an RSA key dearer
    /// than 4096 bits with e = 65537 is refused before its signature is checked.
    #[test]
    fn keyless_and_costly_proof_keys_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let header = serde_json::json!({"typ": TYP_DPOP, "alg": "EdDSA",
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64::encode(&identity)}});
        let mut sig = identity.to_vec();
        sig.extend_from_slice(&[0u8; 32]);
        let proof = format!(
            "{}.{}.{}",
            b64::encode(header.to_string().as_bytes()),
            b64::encode(claims().to_string().as_bytes()),
            b64::encode(&sig)
        );
        assert_eq!(Proof::parse(&proof).err(), Some(ProofError::Key));
        let rsa = |n_bytes: usize, e: &str| {
            let mut n = vec![0xffu8; n_bytes];
            n[n_bytes - 1] = 0xfd;
            let header = serde_json::json!({"typ": TYP_DPOP, "alg": "RS256",
                "jwk": {"kty": "RSA", "n": b64::encode(&n), "e": e}});
            let proof = format!(
                "{}.{}.{}",
                b64::encode(header.to_string().as_bytes()),
                b64::encode(claims().to_string().as_bytes()),
                b64::encode(&vec![1u8; n_bytes])
            );
            Proof::parse(&proof).err()
        };
        assert_eq!(rsa(1024, "AQAB"), Some(ProofError::Key));
        assert_eq!(rsa(512, "AQAD"), Some(ProofError::Key));
        // A 4096-bit key with e = 65537 is a key: only its (made-up) signature fails.
        assert_eq!(rsa(512, "AQAB"), Some(ProofError::Signature));
    }

    /// RFC 9864's `Ed25519` names the same algorithm as `EdDSA` (panva's client uses it).
    #[test]
    fn the_fully_specified_ed25519_name_is_accepted() {
        let key = crate::jose::SigningKey::generate_ed25519().unwrap();
        let header = serde_json::json!({"typ": TYP_DPOP, "alg": "Ed25519",
                                        "jwk": key.public_jwk().to_json()});
        let proof = sign(header, claims(), &key);
        assert_eq!(Proof::parse(&proof).unwrap().alg, Algorithm::EdDSA);
    }

    #[test]
    fn one_header_exactly() {
        let one: [&[u8]; 1] = [b"a.b.c"];
        assert_eq!(one_header(one.into_iter()), Ok("a.b.c"));
        let two: [&[u8]; 2] = [b"a.b.c", b"d.e.f"];
        assert_eq!(one_header(two.into_iter()), Err(ProofError::Several));
        assert_eq!(one_header(std::iter::empty()), Err(ProofError::Missing));
    }

    #[test]
    fn nonces_rotate_and_the_previous_one_is_kept() {
        let n = Nonces::with_secret(b"secret", 300);
        let first = n.current(1000);
        assert!(n.accepts(&first, 1000));
        assert!(n.accepts(&first, 1199)); // same slot
        assert!(n.accepts(&first, 1200)); // the next slot keeps the previous nonce
        assert!(!n.accepts(&first, 1500)); // two slots on: stale
        assert_ne!(n.current(1200), first);
        let other = Nonces::with_secret(b"another server", 300);
        assert!(!other.accepts(&first, 1000));
        assert!(!n.accepts("", 1000));
        assert!(!n.accepts("not base64!", 1000));
        let mut forged = b64::decode(&first).unwrap();
        forged[20] ^= 1;
        assert!(!n.accepts(&b64::encode(&forged), 1000));
    }

    /// Second intruder review: a request that read its clock before a sweep (made by a later
    /// request) must not spend a proof that sweep may have forgotten.
    #[test]
    fn a_proof_expired_by_a_later_clock_is_not_spent() {
        let cache = ReplayCache::new(16);
        assert_eq!(cache.spend("k", "1", 160, 100), Ok(()));
        // A later request sweeps at 161: the entry (until 160) may be gone.
        assert_eq!(cache.spend("k2", "1", 220, 161), Ok(()));
        // The earlier request, still at 160, replays the first proof: refused.
        assert_eq!(cache.spend("k", "1", 160, 160), Err(ProofError::TooOld));
    }

    /// Intruder review: one key may not fill the cache for everyone.
    #[test]
    fn one_key_holds_at_most_an_eighth_of_the_cache() {
        let cache = ReplayCache::new(16);
        assert_eq!(cache.spend("greedy", "1", 160, 100), Ok(()));
        assert_eq!(cache.spend("greedy", "2", 160, 100), Ok(()));
        assert_eq!(cache.spend("greedy", "3", 160, 100), Err(ProofError::Full));
        assert_eq!(cache.spend("other", "1", 160, 100), Ok(()));
        // Once its proofs leave the window, the key has room again.
        assert_eq!(cache.spend("greedy", "3", 230, 170), Ok(()));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_proof_is_accepted_once_and_a_full_cache_refuses() {
        let cache = ReplayCache::new(2);
        assert_eq!(cache.spend("k", "1", 160, 100), Ok(()));
        assert_eq!(cache.spend("k", "1", 160, 101), Err(ProofError::Replayed));
        // The same jti under another key is another proof.
        assert_eq!(cache.spend("k2", "1", 160, 101), Ok(()));
        assert_eq!(cache.spend("k3", "1", 160, 102), Err(ProofError::Full));
        // Once the first two leave the window there is room again.
        assert_eq!(cache.spend("k3", "1", 230, 170), Ok(()));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.spend("k", "1", 240, 171), Ok(()));
    }

    #[test]
    fn the_policy_checks_nonces_and_the_start() {
        let key = crate::jose::SigningKey::generate().unwrap();
        let jwk = key.public_jwk().to_json();
        let with_nonce = |nonce: Option<String>| {
            let mut c = claims();
            if let Some(n) = nonce {
                c["nonce"] = Value::String(n);
            }
            sign(
                serde_json::json!({"typ": TYP_DPOP, "alg": "ES256", "jwk": jwk}),
                c,
                &key,
            )
        };
        let req = Expected {
            method: "POST",
            url: "https://t/x",
            access_token: None,
        };
        // Without nonces, a proof dated within the window after the start is refused.
        let plain = DpopPolicy::new(60, None, 40);
        assert_eq!(
            plain.check(&with_nonce(None), &req, 100).err(),
            Some(ProofError::Predates)
        );
        let plain = DpopPolicy::new(60, None, 0);
        let proof = plain.check(&with_nonce(None), &req, 100).unwrap();
        assert_eq!(plain.spend(&proof, 100), Ok(()));
        assert_eq!(plain.spend(&proof, 101), Err(ProofError::Replayed));
        // With nonces, the start does not matter, the nonce does.
        let nonced = DpopPolicy::new(60, Some(Nonces::with_secret(b"s", 300)), 40);
        assert_eq!(
            nonced.check(&with_nonce(None), &req, 100).err(),
            Some(ProofError::UseNonce)
        );
        let current = nonced.nonce(100).unwrap();
        assert!(nonced.check(&with_nonce(Some(current)), &req, 100).is_ok());
        assert_eq!(ProofError::UseNonce.code(), "use_dpop_nonce");
    }
}
