//! Micro-benchmarks of toolgate's hot paths, through the library's public API (criterion).
//!
//!   cargo bench --bench micro                      (every benchmark, criterion's defaults)
//!   cargo bench --bench micro -- --quick           (CI: each measured briefly, must run)
//!   cargo bench --bench micro -- revocation/       (a filter: names containing it)
//!
//! - `jose/es256_verify`: one ES256 signature check (`Jwk::verify`), the unit of
//!   `scripts/bench.sh`'s distinct-token aim.
//! - `pipeline/cached_token`: `Verifier::decide_at` on one tool call's `DecisionRequest`, one token over and over (its signature is
//!   remembered); `pipeline/fresh_token`: on 2 × 4096 distinct tokens in turn, so that every call
//!   misses the signature cache (4096 entries, emptied when full).
//! - `revocation/lookup_1m` and `revocation/lookup_empty`: `RevocationIndex::any_revoked` for
//!   a token that is not revoked (every name of it probed), with 1 000 000 revoked subjects
//!   and with none.
//! - `revocation/load_1m_at_start`: `Revocations::load` of 1 000 000 rows from a SQLite
//!   database, as the daemon does at start (the file is in the page cache after the first run).
//! - `audit/append_batch_{1,16,64,256}`: `store::audit::append` of one batch of verify records
//!   (one transaction) with `synchronous = NORMAL`, as the audit writer commits batches nobody
//!   waits for; throughput is in rows.
//!
//! - `dpop/bound_token_fresh_proof`: `Verifier::decide_at` on a DPoP-bound token (its signature
//!   remembered) with a new proof each call, as every DPoP request brings one: the proof's
//!   parse, ES256 check, comparisons and replay-cache entry. The issue's aim: at most 1.5 ×
//!   `jose/es256_verify`.
//! - `dpop/replay_spend_1m`: `ReplayCache::spend` of a new proof into a cache holding 1 000 000
//!   live proofs; the cache's memory at 1 000 000 entries (resident-set growth while filling
//!   it) is printed once (aim: under 100 MiB).
//!
//! Each pipeline benchmark is one small function, easy to follow the pipeline's API.

// Setup that fails cannot be measured: stop with the reason.
#![allow(clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Map};
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, RwLock};
use toolgate::clock::ManualClock;
use toolgate::jose::{self, Jwk, SigningKey};
use toolgate::registry::{Registry, ToolInput};
use toolgate::revocation::RevocationIndex;
use toolgate::revocation::{self, Format, Identity, Target};
use toolgate::revocations::Revocations;
use toolgate::store::revocations::{Action, NewRevocation};
use toolgate::store::{self, audit, Store};
use toolgate::verify::{DecisionRequest, KeySource, Target as Call, Verifier, VerifierConfig};

const ISSUER: &str = "https://toolgate.bench";
const TOOL_ID: &str = "code-search";
const RESOURCE: &str = "https://mcp.example.com/tools/code-search";
/// When the tokens are checked: a minute after they were minted.
const NOW: i64 = 1_767_225_600;
/// Twice the verifier's signature cache: cycling through them never hits it.
const FRESH_TOKENS: usize = 2 * 4096;
const REVOKED: usize = 1_000_000;

/// The daemon's key ring in small: one ES256 key, found by its `kid`.
struct OneKey(Jwk, String);

impl KeySource for OneKey {
    fn key(&self, kid: &str) -> Option<Jwk> {
        (kid == self.1).then(|| self.0.clone())
    }
}

/// A token as `exchange` mints it for `sub`, for the code-search tool.
fn mint(key: &SigningKey, sub: &str, n: usize) -> String {
    let mut claims = Map::new();
    for (name, value) in [
        ("iss", json!(ISSUER)),
        ("sub", json!(sub)),
        ("aud", json!(RESOURCE)),
        ("iat", json!(NOW - 60)),
        ("nbf", json!(NOW - 60)),
        ("exp", json!(NOW + 240)),
        ("jti", json!(format!("bench-{n:08}"))),
        ("td", json!("dev.local")),
    ] {
        claims.insert(name.into(), value);
    }
    jose::jws::encode_signed(key, jose::TYP_ACCESS_TOKEN, &claims).expect("sign a token")
}

/// A verifier with one key, one registered tool and `revocations`.
fn verifier(key: &SigningKey, revocations: Arc<RevocationIndex>) -> Verifier {
    let tool: ToolInput =
        serde_json::from_value(json!({"tool_id": TOOL_ID, "resource_uri": RESOURCE}))
            .expect("tool input");
    let tool = tool.validate("2026-01-01T00:00:00Z").expect("valid tool");
    let config = VerifierConfig {
        issuer: ISSUER.into(),
        leeway: 60,
        keys: Arc::new(OneKey(key.public_jwk(), key.kid().into())),
        clock: Arc::new(ManualClock::new(NOW)),
    };
    Verifier::new(
        config,
        Arc::new(RwLock::new(Registry::from_entries(vec![tool]))),
        revocations,
    )
}

/// One call of the code-search tool.
fn request(token: &str) -> DecisionRequest<'_> {
    DecisionRequest::new(token, Call::Tool(TOOL_ID))
}

fn es256_verify(c: &mut Criterion) {
    let key = SigningKey::generate().expect("ES256 key");
    let token = mint(&key, "wimse://dev.local/ns/bench/sa/agent", 0);
    let (input, sig) = token.rsplit_once('.').expect("three segments");
    let sig = jose::b64::decode(sig).expect("base64url signature");
    let jwk = key.public_jwk();
    c.bench_function("jose/es256_verify", |b| {
        b.iter(|| jwk.verify(black_box(input.as_bytes()), black_box(&sig)))
    });
}

/// The whole pipeline on a token whose signature the verifier remembers.
fn pipeline_cached_token(c: &mut Criterion) {
    let key = SigningKey::generate().expect("ES256 key");
    let v = verifier(&key, Arc::default());
    let token = mint(&key, "wimse://dev.local/ns/bench/sa/agent", 0);
    assert!(
        v.decide_at(&request(&token), NOW).result.is_ok(),
        "the token must pass"
    );
    c.bench_function("pipeline/cached_token", |b| {
        b.iter(|| v.decide_at(black_box(&request(&token)), NOW))
    });
}

/// The whole pipeline on a token it has not seen (or has forgotten): one ES256 check each.
fn pipeline_fresh_token(c: &mut Criterion) {
    let key = SigningKey::generate().expect("ES256 key");
    let v = verifier(&key, Arc::default());
    let tokens: Vec<String> = (0..FRESH_TOKENS)
        .map(|n| mint(&key, &format!("wimse://dev.local/ns/bench/sa/agent-{n}"), n))
        .collect();
    assert!(tokens
        .iter()
        .all(|t| v.decide_at(&request(t), NOW).result.is_ok()));
    let mut next = tokens.iter().cycle();
    c.bench_function("pipeline/fresh_token", |b| {
        b.iter(|| {
            let token = next.next().map(String::as_str).unwrap_or_default();
            v.decide_at(black_box(&request(token)), NOW)
        })
    });
}

fn revoked_subject(i: usize) -> String {
    format!("wimse://dev.local/ns/bench/sa/revoked-{i}")
}

fn revocation_lookup(c: &mut Criterion) {
    // The names of a token that is not revoked: all of them are probed.
    let keys = Identity {
        subject: "wimse://dev.local/ns/bench/sa/agent",
        issuer: ISSUER,
        jti: "bench-00000000",
        source: None,
    }
    .keys();
    let empty = RevocationIndex::default();
    let full = RevocationIndex::default();
    full.replace((0..REVOKED).map(|i| {
        (
            revocation::key(Format::Uri, "", &revoked_subject(i)),
            i64::MAX,
        )
    }))
    .expect("fill the index");
    assert_eq!(full.active(NOW).ok(), Some(REVOKED));
    for (name, index) in [
        ("revocation/lookup_empty", &empty),
        ("revocation/lookup_1m", &full),
    ] {
        assert_eq!(
            index.any_revoked(&keys, Some(TOOL_ID), NOW).ok(),
            Some(false)
        );
        c.bench_function(name, |b| {
            b.iter(|| index.any_revoked(black_box(&keys), Some(TOOL_ID), NOW))
        });
    }
}

/// A database holding `REVOKED` subject revocations, written as signals write them.
fn revoked_database(path: &Path) -> Store {
    let (store, _thread) = Store::open(path).expect("open the database");
    let actions: Vec<Action> = (0..REVOKED)
        .map(|i| {
            Action::Revoke(NewRevocation {
                target: Target::new(Format::Uri, "", &revoked_subject(i)),
                reason: "bench".into(),
                event_type: "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
                    .into(),
                event_jti: String::new(),
                source: "dev".into(),
                expires_at: None,
            })
        })
        .collect();
    store
        .call_blocking(move |conn| store::revocations::apply(conn, None, &actions, NOW))
        .expect("insert the revocations");
    store
}

fn revocation_load(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = revoked_database(&dir.path().join("revoked.db"));
    let mut group = c.benchmark_group("revocation");
    // About a second and a half each: the fewest samples criterion takes.
    group.sample_size(10);
    let loaded = Revocations::load(&store, NOW).expect("load");
    assert_eq!(loaded.active(NOW).ok(), Some(REVOKED));
    drop(loaded);
    group.bench_function("load_1m_at_start", |b| {
        // The index is freed outside the measured time: the daemon keeps it.
        b.iter_with_large_drop(|| Revocations::load(&store, NOW).expect("load"))
    });
    group.finish();
}

/// A new database's audit writer connection, committing as the writer does for batches nobody
/// waits for.
fn audit_connection(path: &Path) -> rusqlite::Connection {
    drop(Store::open(path).expect("create the database"));
    let conn = store::open_connection(path).expect("open the database");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("synchronous = NORMAL");
    conn
}

fn audit_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut group = c.benchmark_group("audit");
    // Each append tags the new head, as the daemon's writer does.
    let key = audit::HeadKey::new(b"bench-audit-key");
    for size in [1usize, 16, 64, 256] {
        // Each size on a new database, so that none pays for the log the others wrote.
        let mut conn = audit_connection(&dir.path().join(format!("audit-{size}.db")));
        let mut head = audit::head(&conn).expect("audit head");
        // Verify rows of a few agents, as a busy daemon writes them.
        let batch: Vec<audit::Record> = (0..size)
            .map(|i| audit::Record {
                ts_ms: NOW * 1000 + i as i64,
                kind: "verify".into(),
                subject: format!("wimse://dev.local/ns/bench/sa/agent-{}", i % 8),
                target: TOOL_ID.into(),
                decision: "allow".into(),
                request_id: format!("req-{i:016x}"),
                jti: format!("bench-{i:08}"),
                ..Default::default()
            })
            .collect();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("append_batch_{size}"), |b| {
            b.iter(|| {
                head = audit::append(&mut conn, &key, &head, black_box(&batch)).expect("append");
            })
        });
    }
    group.finish();
}

/// A verifier whose tool takes DPoP-bound tokens; proofs dated `NOW` post-date its start.
fn dpop_verifier(key: &SigningKey) -> Verifier {
    let v = verifier(key, Arc::default());
    v.with_dpop_policy(toolgate::dpop::DpopPolicy::new(60, None, 0))
}

/// `n` proofs by `holder` for one call of the tool with `token`, each with its own `jti`.
fn proofs(holder: &SigningKey, token: &str, n: u64) -> Vec<String> {
    (0..n)
        .map(|_| {
            toolgate::dpop::sign_proof(
                holder,
                &toolgate::dpop::ProofClaims {
                    htm: "POST",
                    htu: RESOURCE,
                    access_token: Some(token),
                    nonce: None,
                    iat: NOW,
                },
            )
            .expect("sign a proof")
        })
        .collect()
}

/// A DPoP-bound token with a fresh proof each call (proofs made outside the timing).
fn dpop_bound_token(c: &mut Criterion) {
    let key = SigningKey::generate().expect("ES256 key");
    let holder = SigningKey::generate().expect("ES256 key");
    let mut claims = Map::new();
    for (name, value) in [
        ("iss", json!(ISSUER)),
        ("sub", json!("wimse://dev.local/ns/bench/sa/agent")),
        ("aud", json!(RESOURCE)),
        ("iat", json!(NOW - 60)),
        ("exp", json!(NOW + 240)),
        ("jti", json!("bench-dpop")),
        ("cnf", json!({"jkt": holder.public_jwk().thumbprint()})),
    ] {
        claims.insert(name.into(), value);
    }
    let token = jose::jws::encode_signed(&key, jose::TYP_ACCESS_TOKEN, &claims).expect("sign");
    let call = |v: &Verifier, proof: &str| {
        v.decide_at(
            &request(&token)
                .with_http("POST", Some(RESOURCE))
                .with_dpop_proof(Some(proof)),
            NOW,
        )
    };
    let check = dpop_verifier(&key);
    let first = proofs(&holder, &token, 1).concat();
    assert!(call(&check, &first).result.is_ok(), "the proof must pass");
    assert!(call(&check, &first).result.is_err(), "and only once");
    c.bench_function("dpop/bound_token_fresh_proof", |b| {
        b.iter_custom(|iters| {
            let v = dpop_verifier(&key);
            let batch = proofs(&holder, &token, iters);
            let started = std::time::Instant::now();
            for proof in &batch {
                black_box(call(&v, black_box(proof)));
            }
            started.elapsed()
        })
    });
}

/// The process's resident set, in bytes (Linux), to see what a structure costs.
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn dpop_replay_cache(c: &mut Criterion) {
    const LIVE: usize = 1_000_000;
    // Room for the live million and for every spend the measurement makes (its time is bounded
    // below); the proofs come from 64 keys, each under its share of the cache.
    let before = resident_bytes();
    let cache = toolgate::dpop::ReplayCache::new(8 * LIVE);
    let jkts: Vec<String> = (0..64)
        .map(|_| {
            SigningKey::generate()
                .expect("ES256 key")
                .public_jwk()
                .thumbprint()
        })
        .collect();
    let jkt = |n: usize| {
        jkts.get(n % jkts.len())
            .map(String::as_str)
            .unwrap_or_default()
    };
    for n in 0..LIVE {
        cache
            .spend(jkt(n), &format!("jti-{n}"), NOW + 60, NOW)
            .expect("room for a million");
    }
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "dpop/replay_cache: {} live proofs take {:.1} MiB ({} bytes each)",
        cache.len(),
        grown as f64 / (1024.0 * 1024.0),
        grown / LIVE
    );
    let mut n = LIVE;
    let mut group = c.benchmark_group("dpop");
    group
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(10);
    group.bench_function("replay_spend_1m", |b| {
        b.iter(|| {
            n += 1;
            let spent = cache.spend(jkt(n), &format!("jti-{n}"), NOW + 60, NOW);
            assert!(spent.is_ok(), "a new proof has room");
            black_box(spent)
        })
    });
    group.finish();
}

criterion_group!(
    micro,
    es256_verify,
    dpop_bound_token,
    dpop_replay_cache,
    pipeline_cached_token,
    pipeline_fresh_token,
    revocation_lookup,
    revocation_load,
    audit_append
);
criterion_main!(micro);
