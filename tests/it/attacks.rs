//! The JWT attack suite, with RFC 8725 as the checklist. Every forged token is sent to
//! `POST /v1/mcp/verify`, to the guard (`Guard::check`, offline, same pipeline), and — for a
//! representative subset — to `POST /v1/exchange/token` as a subject token, in dev and in
//! production mode. Each must be refused by the check under test; every refusal is audited and
//! the daemon stays healthy.
//!
//! Forging: the test reads the daemon's active signing key from its SQLite database (WAL mode,
//! so a second connection may read while the daemon runs) and signs arbitrary headers and
//! claims with the daemon's real key and `kid`. A claim-level attack is therefore correctly
//! signed and reaches exactly the check it targets (an `aud: "*"` token fails `audience`, not
//! `signature`). Positive controls (a correctly forged token that must pass) prove that.

use super::harness::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use toolgate::clock::Clock;
use toolgate::guard::{Guard, GuardConfig};
use toolgate::jose::SigningKey;
use toolgate::verify::{DecisionRequest, Target};

const TOOL: &str = "code-search";
const RESOURCE: &str = "https://mcp.example.com/tools/code-search";
const OTHER_TOOL: &str = "billing";
const OTHER_RESOURCE: &str = "https://billing.example.com/mcp";
const AGENT_MCP: &str = "urn:starfly:token-type:agent-mcp";
/// The order `n` of the P-256 group: an ECDSA `r` or `s` must lie in `[1, n-1]`.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

// ---------------------------------------------------------------------------------------------
// The environment: a daemon, its own signing key, and a guard in front of it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A positive control: the forged token is correct and must pass.
    Allow,
    /// Refused with 403 `verification_failed` and this `check`.
    Deny(&'static str),
}

struct Case {
    name: String,
    token: String,
    expect: Expect,
    /// Also sent to the guard. Off only where the guard legitimately sees something else:
    /// leading/trailing whitespace is HTTP optional whitespace around a header value.
    guard: bool,
    /// One of the representative subset also sent to the exchange endpoint.
    subset: bool,
}

fn deny(name: impl Into<String>, token: String, check: &'static str) -> Case {
    Case {
        name: name.into(),
        token,
        expect: Expect::Deny(check),
        guard: true,
        subset: false,
    }
}

fn allow(name: impl Into<String>, token: String) -> Case {
    Case {
        name: name.into(),
        token,
        expect: Expect::Allow,
        guard: true,
        subset: false,
    }
}

impl Case {
    fn in_subset(mut self) -> Self {
        self.subset = true;
        self
    }

    fn no_guard(mut self) -> Self {
        self.guard = false;
        self
    }
}

struct Env {
    daemon: Daemon,
    key: SigningKey,
    issuer: String,
    guard: Arc<Guard>,
    now: i64,
    jti: AtomicU64,
    /// A local listener named by the `jku`/`x5u` headers: nothing may ever connect to it.
    trap: std::net::TcpListener,
}

impl Env {
    async fn start(production: bool) -> Env {
        let daemon = if production {
            Daemon::production().await
        } else {
            Daemon::dev().await
        };
        daemon.register(TOOL, RESOURCE).await;
        daemon.register(OTHER_TOOL, OTHER_RESOURCE).await;
        let key = daemon_key(&daemon);
        let (status, meta) = daemon
            .call(Method::GET, "/.well-known/oauth-authorization-server", None)
            .await;
        assert_eq!(status, 200, "{meta}");
        let issuer = meta["issuer"].as_str().unwrap().to_string();
        // The key read from the database is the one toolgate publishes.
        let (status, jwks) = daemon.call(Method::GET, "/v1/identity/jwks", None).await;
        assert_eq!(status, 200, "{jwks}");
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == json!(key.kid())),
            "{jwks}"
        );
        let clock: Arc<dyn Clock> = daemon.clock.clone();
        let guard = Guard::connect(
            GuardConfig {
                toolgate: daemon.url.clone(),
                toolgate_tls: Default::default(),
                admin_token: production.then(|| ADMIN.to_string()),
                resource: "https://mcp.example.com/tools".into(),
                server_id: None,
                public_url: "https://mcp.example.com".into(),
                max_staleness: Duration::from_secs(3600),
                poll_interval: Duration::from_millis(200),
                key_refresh: toolgate::guard::DEFAULT_KEY_REFRESH,
                leeway: 60,
                max_batch: 64,
                dpop_window: 60,
                dpop_nonce: false,
                allow_multi_audience: false,
            },
            clock,
        )
        .await
        .unwrap();
        let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        trap.set_nonblocking(true).unwrap();
        let now = daemon.clock.now();
        Env {
            daemon,
            key,
            issuer,
            guard,
            now,
            jti: AtomicU64::new(0),
            trap,
        }
    }

    fn trap_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.trap.local_addr().unwrap())
    }

    fn kid(&self) -> &str {
        self.key.kid()
    }

    /// The header toolgate itself writes on a tool's token.
    fn header(&self) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid()})
    }

    /// The header with `extra` merged over it (a `null` removes a member).
    fn header_with(&self, extra: Value) -> Value {
        merge(self.header(), extra)
    }

    /// Claims exactly like a minted tool token for `TOOL`, with `extra` merged over them.
    fn claims(&self, extra: Value) -> Value {
        let jti = self.jti.fetch_add(1, Ordering::Relaxed);
        let base = json!({
            "iss": self.issuer,
            "sub": "wimse://dev.local/ns/default/sa/mallory",
            "aud": RESOURCE,
            "iat": self.now,
            "nbf": self.now,
            "exp": self.now + 300,
            "jti": format!("attack-{jti}"),
            "td": "dev.local",
        });
        merge(base, extra)
    }

    /// The standard claims without `drop`, as JSON text, with raw `tail` members appended
    /// (for payloads `serde_json` would not write: duplicates, odd numbers, deep nesting).
    fn raw_claims(&self, drop: &[&str], tail: &str) -> String {
        let mut claims = self.claims(json!({}));
        let obj = claims.as_object_mut().unwrap();
        for name in drop {
            obj.remove(*name);
        }
        let text = claims.to_string();
        let open = text.strip_suffix('}').unwrap();
        if tail.is_empty() {
            text
        } else {
            format!("{open},{tail}}}")
        }
    }

    /// A compact JWS of these exact header and payload bytes, signed with the daemon's key.
    fn sign_raw(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let sig = self.key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&sig))
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        self.sign_raw(&header.to_string(), &claims.to_string())
    }

    /// A correctly signed token with the claims changed by `extra`.
    fn with_claims(&self, extra: Value) -> String {
        self.sign(&self.header(), &self.claims(extra))
    }

    /// A correctly signed token with the header changed by `extra`.
    fn with_header(&self, extra: Value) -> String {
        self.sign(&self.header_with(extra), &self.claims(json!({})))
    }

    /// A correct token whose signature segment is replaced by `sig`.
    fn with_signature(&self, sig: &[u8]) -> String {
        let token = self.with_claims(json!({}));
        let (input, _) = token.rsplit_once('.').unwrap();
        format!("{input}.{}", b64(sig))
    }

    /// A correct token and its raw 64-byte `r || s` signature.
    fn token_and_signature(&self) -> (String, Vec<u8>) {
        let token = self.with_claims(json!({}));
        let sig = toolgate::jose::b64::decode(token.rsplit_once('.').unwrap().1).unwrap();
        assert_eq!(sig.len(), 64);
        (token, sig)
    }

    fn guard_check(&self, token: &str) -> Result<(), toolgate::guard::Rejection> {
        self.guard
            .check(&DecisionRequest::new(token, Target::Tool(TOOL)))
            .map(|_| ())
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    let obj = base.as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    base
}

/// The daemon's active private key, read from its database while it runs.
fn daemon_key(daemon: &Daemon) -> SigningKey {
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let pkcs8: Vec<u8> = conn
        .query_row(
            "SELECT pkcs8 FROM signing_keys WHERE retired_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    SigningKey::from_pkcs8(&pkcs8).unwrap()
}

/// Replace segment `i` of a compact token.
fn with_segment(token: &str, i: usize, seg: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[i] = seg;
    parts.join(".")
}

fn segment(token: &str, i: usize) -> &str {
    token.split('.').nth(i).unwrap()
}

/// The same bytes written with non-zero "unused" trailing bits (a lax decoder ignores them,
/// so the segment would still decode to the original bytes).
fn non_canonical(seg: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert!(seg.len() % 4 >= 2, "segment has no trailing bits: {seg}");
    let last = *seg.as_bytes().last().unwrap();
    let v = ALPHABET.iter().position(|&c| c == last).unwrap();
    let mut out = seg[..seg.len() - 1].to_string();
    out.push(ALPHABET[v | 1] as char);
    out
}

/// An ASN.1 DER `ECDSA-Sig-Value` of a fixed-width `r || s` signature.
fn der(sig: &[u8]) -> Vec<u8> {
    fn int(b: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
        if v.first().is_none_or(|x| x & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let (r, s) = (int(&sig[..32]), int(&sig[32..]));
    let mut out = vec![0x30, (r.len() + s.len()) as u8];
    out.extend(r);
    out.extend(s);
    out
}

fn hs256(key: &[u8], input: &str) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, input.as_bytes()).as_ref().to_vec()
}

// ---------------------------------------------------------------------------------------------
// Running cases: verify, guard, audit, health.

async fn run(env: &Env, cases: &[Case]) {
    let mut expected: BTreeMap<&'static str, usize> = BTreeMap::new();
    for case in cases {
        let (status, body) = env.daemon.verify(&case.token, TOOL).await;
        match case.expect {
            Expect::Allow => {
                assert_eq!(status, 200, "{}: {body}", case.name);
                assert_eq!(body["verified"], json!(true), "{}: {body}", case.name);
            }
            Expect::Deny(check) => {
                assert_eq!(status, 403, "{}: {body}", case.name);
                assert_eq!(body["error"], "verification_failed", "{}", case.name);
                assert_eq!(body["check"], check, "{}: {body}", case.name);
                assert!(body["error_description"].is_string(), "{}", case.name);
                // Fixed sentences only: the attacker's bytes are never echoed.
                let text = body.to_string();
                assert!(
                    !text.contains("passwd") && !text.contains("1=1"),
                    "{}: {text}",
                    case.name
                );
                *expected.entry(check).or_default() += 1;
            }
        }
        if case.guard {
            match (env.guard_check(&case.token), case.expect) {
                (Ok(()), Expect::Allow) => {}
                (Err(r), Expect::Deny(check)) => {
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}: {r:?}", case.name);
                    assert_eq!(r.error, "invalid_token", "{}: {r:?}", case.name);
                    assert_eq!(r.check.map(|c| c.name()), Some(check), "{}", case.name);
                }
                (got, want) => panic!("{}: guard answered {got:?}, want {want:?}", case.name),
            }
        }
    }
    assert_audited(env, &expected).await;
    assert_no_fetch(&env.trap);
    assert_healthy(&env.daemon).await;
}

/// The verify denials in the audit log, by check, equal `expected` (rows are written by the
/// audit thread, so wait for them).
async fn assert_audited(env: &Env, expected: &BTreeMap<&'static str, usize>) {
    let total: usize = expected.values().sum();
    // Repeats of one refusal within a second are one row with their count, written once the
    // second is over.
    env.daemon.clock.advance(1);
    let got = eventually("every verify denial is audited", || async {
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        let (status, body) = env
            .daemon
            .call(
                Method::GET,
                "/v1/audit?decision=deny&kind=verify&limit=1000",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["events"].as_array().unwrap();
        for row in rows {
            assert_eq!(row["kind"], "verify", "{row}");
            assert_eq!(row["target"], TOOL, "{row}");
            // A count row leaves empty the reasons its repeats do not share.
            let count = row["count"].as_u64().unwrap() as usize;
            assert!(
                count > 1 || !row["reason"].as_str().unwrap().is_empty(),
                "{row}"
            );
            let text = row.to_string();
            assert!(!text.contains("passwd") && !text.contains("1=1"), "{text}");
            *got.entry(row["check"].as_str().unwrap().to_string())
                .or_default() += count;
        }
        (got.values().sum::<usize>() >= total).then_some(got)
    })
    .await;
    let want: BTreeMap<String, usize> = expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(got, want, "audited verify denials by check");
}

/// Nothing ever connected to the address the `jku` / `x5u` headers named.
fn assert_no_fetch(trap: &std::net::TcpListener) {
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something fetched a header URL: {other:?}"),
    }
}

/// POST the head of a JSON request (its true Content-Length, no body) and read the status.
async fn post_head_only(daemon: &Daemon, path: &str, body: &Value) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = daemon.url.strip_prefix("http://").unwrap();
    let len = body.to_string().len();
    assert!(len > 16 * 1024 * 1024);
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

async fn assert_healthy(daemon: &Daemon) {
    let (status, body) = daemon.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200, "{body}");
}

/// Each subset token, as a subject token of both types, is refused with 401 `invalid_client`;
/// a correctly forged agent token (the control) is exchanged; every refusal is audited.
async fn exchange_refuses(env: &Env, cases: &[Case]) {
    let mut refused = 0;
    for case in cases.iter().filter(|c| c.subset) {
        for ty in [AGENT_MCP, JWT] {
            let mut body = exchange_body(&case.token, RESOURCE);
            body["subject_token_type"] = json!(ty);
            let (status, resp) = env.daemon.exchange(body).await;
            assert_eq!(status, 401, "{} as {ty}: {resp}", case.name);
            assert_eq!(resp["error"], "invalid_client", "{} as {ty}", case.name);
            assert!(resp.get("access_token").is_none(), "{}", case.name);
            refused += 1;
        }
    }
    // A plain, valid token for a tool is no subject token either (the confused deputy: a tool
    // trading the token it received for a token to another tool).
    let tool_token = env.with_claims(json!({}));
    for ty in [AGENT_MCP, JWT] {
        let mut body = exchange_body(&tool_token, OTHER_RESOURCE);
        body["subject_token_type"] = json!(ty);
        let (status, resp) = env.daemon.exchange(body).await;
        assert_eq!(status, 401, "a tool token as {ty}: {resp}");
        assert_eq!(resp["error"], "invalid_client", "{resp}");
    }
    assert!(refused >= 18, "the subset shrank: {refused}");
    // Control: the same forging with `aud` = toolgate and the agent type is a valid agent
    // token.
    let agent = env.sign(
        &env.header_with(json!({"typ": "toolgate-agent+jwt"})),
        &env.claims(json!({"aud": env.issuer})),
    );
    for ty in [AGENT_MCP, JWT] {
        let mut body = exchange_body(&agent, RESOURCE);
        body["subject_token_type"] = json!(ty);
        let (status, resp) = env.daemon.exchange(body).await;
        assert_eq!(status, 200, "control as {ty}: {resp}");
        assert_eq!(
            claims_of(resp["access_token"].as_str().unwrap())["aud"],
            RESOURCE
        );
    }
    env.daemon.clock.advance(1);
    let rows = eventually("every exchange refusal is audited", || async {
        let (status, body) = env
            .daemon
            .call(
                Method::GET,
                "/v1/audit?decision=denied&kind=exchange&limit=1000",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap();
        for row in events {
            assert_eq!(row["check"], "invalid_client", "{row}");
            assert!(
                row["target"] == RESOURCE || row["target"] == OTHER_RESOURCE,
                "{row}"
            );
        }
        // Repeats within a second are one row with their count.
        let refusals: usize = events
            .iter()
            .map(|e| e["count"].as_u64().unwrap() as usize)
            .sum();
        (refusals >= refused + 2).then_some(refusals)
    })
    .await;
    assert_eq!(rows, refused + 2, "every exchange refusal is audited");
}

// ---------------------------------------------------------------------------------------------
// The cases, by RFC 8725 section.

/// §2.1, §3.1: algorithm confusion, `none`, algorithms other than the key's.
fn algorithm_cases(env: &Env) -> Vec<Case> {
    let claims = env.claims(json!({}));
    let payload = b64(claims.to_string().as_bytes());
    let real_sig = segment(&env.with_claims(json!({})), 2).to_string();
    let mut cases = Vec::new();
    // `none` in any spelling is not in the allow-list → algorithm. With an empty signature
    // (a true unsecured JWT) the header is judged first, so it is `algorithm`, not `malformed`.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({"alg": alg, "typ": "JWT", "kid": env.kid()})
            .to_string()
            .as_bytes());
        let case = deny(
            format!("alg {alg}, empty signature"),
            format!("{h}.{payload}."),
            "algorithm",
        );
        cases.push(if alg == "none" {
            case.in_subset()
        } else {
            case
        });
        cases.push(deny(
            format!("alg {alg}, a real signature"),
            format!("{h}.{payload}.{real_sig}"),
            "algorithm",
        ));
    }
    // The dev-mode stub shape is never a token toolgate accepts at verify.
    cases.push(deny("dev stub", stub(claims.clone()), "algorithm"));
    // HS256 keyed with toolgate's public key (the classic RS/HS confusion): HMAC is never
    // allowed → algorithm, whatever bytes of the public key were used as the secret.
    let jwk = env.key.public_jwk().to_json();
    let x = toolgate::jose::b64::decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = toolgate::jose::b64::decode(jwk["y"].as_str().unwrap()).unwrap();
    let point = [&[4u8][..], &x, &y].concat();
    let jwks = json!({"keys": [jwk.clone()]}).to_string();
    let secrets: [(&str, Vec<u8>); 4] = [
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("JWKS JSON", jwks.into_bytes()),
        ("uncompressed point", point),
        ("kid", env.kid().as_bytes().to_vec()),
    ];
    for (i, (what, secret)) in secrets.iter().enumerate() {
        let h = b64(json!({"alg": "HS256", "typ": "JWT", "kid": env.kid()})
            .to_string()
            .as_bytes());
        let input = format!("{h}.{payload}");
        let mac = hs256(secret, &input);
        let case = deny(
            format!("HS256 keyed with the {what}"),
            format!("{input}.{}", b64(&mac)),
            "algorithm",
        );
        cases.push(if i == 0 { case.in_subset() } else { case });
    }
    // The HMAC under an ES256 header: the header passes, the 32-byte MAC is no signature.
    let mac = hs256(
        &secrets[0].1,
        &format!("{}.{payload}", segment(&env.with_claims(json!({})), 0)),
    );
    cases.push(deny(
        "ES256 header, HMAC signature",
        env.with_signature(&mac),
        "signature",
    ));
    for alg in ["HS384", "HS512", "es256", "ES256 ", "ES512", "RS512", ""] {
        cases.push(deny(
            format!("alg {alg:?}"),
            env.with_header(json!({ "alg": alg })),
            "algorithm",
        ));
    }
    // Allowed algorithms that are not the key's: pinned to the key → algorithm.
    for alg in ["ES384", "EdDSA", "RS256", "PS256"] {
        cases.push(deny(
            format!("alg {alg} with toolgate's ES256 kid"),
            env.with_header(json!({ "alg": alg })),
            "algorithm",
        ));
    }
    for (name, alg) in [
        ("alg missing", Value::Null),
        ("alg 256", json!(256)),
        ("alg list", json!(["ES256"])),
    ] {
        let mut h = env.header();
        match alg {
            Value::Null => {
                h.as_object_mut().unwrap().remove("alg");
            }
            v => h["alg"] = v,
        }
        cases.push(deny(name, env.sign(&h, &claims), "algorithm"));
    }
    cases.push(allow(
        "control: a correctly forged token",
        env.with_claims(json!({})),
    ));
    cases
}

/// §3.2 (signature checks), key selection by `kid`, ECDSA encodings.
fn signature_cases(env: &Env) -> Vec<Case> {
    let mut cases = Vec::new();
    let (token, sig) = env.token_and_signature();
    // DER (ASN.1) instead of the fixed 64-byte `r || s` of JWS: refused by the verifier.
    cases.push(deny(
        "ES256 signature in DER form",
        env.with_signature(&der(&sig)),
        "signature",
    ));
    // Zero-valued r and/or s (CVE-2022-21449 "psychic signatures"), and r/s = n.
    let zero = [0u8; 32];
    for (name, r, s) in [
        ("r = s = 0", &zero[..], &zero[..]),
        ("r = 0", &zero[..], &sig[32..]),
        ("s = 0", &sig[..32], &zero[..]),
        ("r = s = n", &P256_ORDER[..], &P256_ORDER[..]),
        ("r = n", &P256_ORDER[..], &sig[32..]),
    ] {
        cases.push(deny(
            format!("ECDSA {name}"),
            env.with_signature(&[r, s].concat()),
            "signature",
        ));
    }
    cases.push(deny(
        "signature truncated to 63 bytes",
        env.with_signature(&sig[..63]),
        "signature",
    ));
    cases.push(deny(
        "signature with a 65th byte",
        env.with_signature(&[&sig[..], &[0]].concat()),
        "signature",
    ));
    let mut flipped = sig.clone();
    flipped[10] ^= 1;
    cases.push(deny(
        "one bit flipped",
        env.with_signature(&flipped),
        "signature",
    ));
    // A valid signature of other claims, spliced onto these claims.
    let other = env.with_claims(json!({"sub": "wimse://dev.local/ns/default/sa/admin"}));
    cases.push(deny(
        "payload swapped under a valid signature",
        with_segment(&token, 1, segment(&other, 1)),
        "signature",
    ));
    // An attacker's key: with toolgate's kid, with its own kid, with no kid.
    let attacker = SigningKey::generate().unwrap();
    let claims = env.claims(json!({}));
    let sign_as = |header: Value| {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(&attacker.sign(input.as_bytes()).unwrap()))
    };
    cases.push(deny(
        "attacker key under toolgate's kid",
        sign_as(env.header()),
        "signature",
    ));
    cases.push(
        deny(
            "unknown kid (the attacker's own)",
            sign_as(json!({"alg": "ES256", "typ": "JWT", "kid": attacker.kid()})),
            "signature",
        )
        .in_subset(),
    );
    // Unknown kids, correctly signed by toolgate's key: the key is looked up by exact kid
    // only, so these never name a file or a row → signature ("signing key is not known").
    for kid in [
        "../../etc/passwd",
        "/etc/passwd",
        "' OR 1=1 --",
        "\" OR \"1\"=\"1",
        "x'; DROP TABLE signing_keys; --",
        "%00",
        "\u{0}",
        "",
        "*",
    ] {
        cases.push(deny(
            format!("kid {kid:?}"),
            env.with_header(json!({ "kid": kid })),
            "signature",
        ));
    }
    let upper = env.kid().to_ascii_uppercase();
    cases.push(deny(
        "kid in another case",
        env.with_header(json!({ "kid": upper })),
        "signature",
    ));
    cases.push(deny(
        "kid with a trailing space",
        env.with_header(json!({ "kid": format!("{} ", env.kid()) })),
        "signature",
    ));
    cases.push(deny(
        "kid missing",
        env.with_header(json!({ "kid": null })),
        "signature",
    ));
    // kid of the wrong JSON type is a malformed header.
    cases.push(deny(
        "kid 1",
        env.with_header(json!({ "kid": 1 })),
        "malformed",
    ));
    cases.push(deny(
        "kid list",
        env.with_header(json!({ "kid": [env.kid()] })),
        "malformed",
    ));
    // An empty signature segment under a good header is not a compact JWS.
    cases.push(deny(
        "empty signature",
        format!("{}.", token.rsplit_once('.').unwrap().0),
        "malformed",
    ));
    cases
}

/// §3.10/§3.11-adjacent header parameters that must never be honoured: all correctly signed
/// with toolgate's own key and kid, all refused → algorithm ("header parameter is not
/// accepted"), and nothing named by them is ever fetched.
fn header_cases(env: &Env) -> Vec<Case> {
    let own_jwk = env.key.public_jwk().to_json();
    let attacker = SigningKey::generate().unwrap();
    let mut cases = vec![
        deny(
            "jwk: toolgate's own key embedded",
            env.with_header(json!({"jwk": own_jwk})),
            "algorithm",
        ),
        deny(
            "jku",
            env.with_header(json!({"jku": env.trap_url("/jwks.json")})),
            "algorithm",
        )
        .in_subset(),
        deny(
            "x5u",
            env.with_header(json!({"x5u": env.trap_url("/cert.pem")})),
            "algorithm",
        ),
        deny(
            "x5c",
            env.with_header(json!({"x5c": ["MIIBszCCAVmgAwIBAgIUZ2F0ZQ=="]})),
            "algorithm",
        ),
        deny(
            "x5c empty",
            env.with_header(json!({"x5c": []})),
            "algorithm",
        ),
        deny(
            "crit [exp]",
            env.with_header(json!({"crit": ["exp"], "exp": 1})),
            "algorithm",
        ),
        deny("crit []", env.with_header(json!({"crit": []})), "algorithm"),
        deny(
            "crit a string",
            env.with_header(json!({"crit": "exp"})),
            "algorithm",
        ),
        deny(
            "b64 false",
            env.with_header(json!({"b64": false, "crit": ["b64"]})),
            "algorithm",
        ),
        deny(
            "b64 false without crit",
            env.with_header(json!({"b64": false})),
            "algorithm",
        ),
        deny(
            "b64 true",
            env.with_header(json!({"b64": true})),
            "algorithm",
        ),
    ];
    // An attacker's key and signature, with the attacker's JWK embedded (the CVE-2018-0114
    // pattern): refused for the header before any key is chosen.
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": attacker.kid(),
                        "jwk": attacker.public_jwk().to_json()});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(env.claims(json!({})).to_string().as_bytes())
    );
    cases.push(deny(
        "jwk: the attacker's key embedded and used",
        format!("{input}.{}", b64(&attacker.sign(input.as_bytes()).unwrap())),
        "algorithm",
    ));
    // cty: JWT nesting — the payload is itself a (valid) JWT. Refused for `cty`.
    let inner = env.with_claims(json!({}));
    cases.push(deny(
        "cty JWT with a nested JWT payload",
        env.sign_raw(&env.header_with(json!({"cty": "JWT"})).to_string(), &inner),
        "algorithm",
    ));
    cases.push(deny(
        "cty JWT with an ordinary payload",
        env.with_header(json!({"cty": "JWT"})),
        "algorithm",
    ));
    // Unknown, harmless members are ignored (the token is otherwise correct).
    cases.push(allow(
        "control: an unknown header member",
        env.with_header(json!({"x-note": "hi"})),
    ));
    cases
}

/// Serialization: JWE, segment counts, strict base64url, whitespace, sizes, JSON.
fn encoding_cases(env: &Env) -> Vec<Case> {
    let mut cases = Vec::new();
    let token = loop {
        // A signature segment with both URL-safe characters, for the `+` / `/` cases.
        let t = env.with_claims(json!({}));
        if segment(&t, 2).contains('-') && segment(&t, 2).contains('_') {
            break t;
        }
    };
    let (h, p, s) = (segment(&token, 0), segment(&token, 1), segment(&token, 2));
    // A five-segment JWE (RFC 7516 compact): never a JWS → malformed.
    let jwe_header = b64(
        json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": env.kid()})
            .to_string()
            .as_bytes(),
    );
    cases.push(
        deny(
            "five-segment JWE",
            format!(
                "{jwe_header}.{}.{}.{}.{}",
                b64(&[7; 256]),
                b64(&[1; 12]),
                b64(b"ciphertext"),
                b64(&[2; 16])
            ),
            "malformed",
        )
        .in_subset(),
    );
    let dir = b64(br#"{"alg":"dir","enc":"A128CBC-HS256"}"#);
    cases.push(deny(
        "five-segment JWE, alg dir, empty key",
        format!("{dir}..{}.{}.{}", b64(&[1; 16]), b64(b"ct"), b64(&[2; 16])),
        "malformed",
    ));
    cases.push(deny(
        "a valid JWS with two more segments",
        format!("{token}.{p}.{s}"),
        "malformed",
    ));
    cases.push(deny("four segments", format!("{token}.{s}"), "malformed"));
    cases.push(deny("two segments", format!("{h}.{p}"), "malformed"));
    cases.push(deny("one segment", h.to_string(), "malformed"));
    cases.push(deny("dots only", "..".to_string(), "malformed"));
    cases.push(deny("empty header", format!(".{p}.{s}"), "malformed"));
    cases.push(deny("empty payload", format!("{h}..{s}"), "malformed"));
    // base64url with padding, in each segment.
    for (i, name) in [(0, "header"), (1, "payload"), (2, "signature")] {
        let seg = segment(&token, i);
        cases.push(deny(
            format!("{name} padded with ="),
            with_segment(&token, i, &format!("{seg}=")),
            "malformed",
        ));
        cases.push(deny(
            format!("{name} padded with =="),
            with_segment(&token, i, &format!("{seg}==")),
            "malformed",
        ));
    }
    // The standard alphabet: `+` and `/` instead of `-` and `_`.
    cases.push(deny(
        "signature with + for -",
        with_segment(&token, 2, &s.replace('-', "+")),
        "malformed",
    ));
    cases.push(deny(
        "signature with / for _",
        with_segment(&token, 2, &s.replace('_', "/")),
        "malformed",
    ));
    cases.push(deny(
        "signature in standard base64",
        with_segment(&token, 2, &s.replace('-', "+").replace('_', "/")),
        "malformed",
    ));
    // Non-canonical trailing bits: a lax decoder yields the very same bytes (so a lax verifier
    // would accept the token); strict decoding refuses it.
    cases.push(deny(
        "signature with non-canonical trailing bits",
        with_segment(&token, 2, &non_canonical(s)),
        "malformed",
    ));
    let padded = (0..4)
        .map(|n| env.with_claims(json!({"pad": "x".repeat(n)})))
        .find(|t| segment(t, 1).len() % 4 >= 2)
        .unwrap();
    cases.push(deny(
        "payload with non-canonical trailing bits (re-signed)",
        {
            let p2 = non_canonical(segment(&padded, 1));
            let input = format!("{}.{p2}", segment(&padded, 0));
            format!("{input}.{}", b64(&env.key.sign(input.as_bytes()).unwrap()))
        },
        "malformed",
    ));
    let padded_h = (0..4)
        .map(|n| env.header_with(json!({"x": "y".repeat(n)})))
        .find(|hv| b64(hv.to_string().as_bytes()).len() % 4 >= 2)
        .unwrap();
    let hs = non_canonical(&b64(padded_h.to_string().as_bytes()));
    cases.push(deny(
        "header with non-canonical trailing bits (re-signed)",
        {
            let input = format!("{hs}.{p}");
            format!("{input}.{}", b64(&env.key.sign(input.as_bytes()).unwrap()))
        },
        "malformed",
    ));
    cases.push(deny(
        "a ! in the payload",
        with_segment(&token, 1, &format!("{}!", &p[..p.len() - 1])),
        "malformed",
    ));
    // Not valid in (or not visible ASCII in) an Authorization header: verify-only.
    cases.push(
        deny(
            "a NUL in the signature",
            format!("{h}.{p}.{s}\u{0}"),
            "malformed",
        )
        .no_guard(),
    );
    cases.push(
        deny(
            "non-ASCII in the signature",
            format!("{h}.{p}.{s}é"),
            "malformed",
        )
        .no_guard(),
    );
    // Whitespace anywhere is refused by verify. Inside the token the guard refuses it too;
    // around the token it is HTTP optional whitespace of the Authorization header (trimmed
    // before the guard sees it), so those cases are verify-only.
    for (name, t) in [
        (
            "a space inside the signature",
            format!("{h}.{p}.{} {}", &s[..10], &s[10..]),
        ),
        ("a space after a dot", format!("{h}. {p}.{s}")),
        ("a tab before a dot", format!("{h}\t.{p}.{s}")),
    ] {
        cases.push(deny(name, t, "malformed"));
    }
    for (name, t) in [
        ("a newline between segments", format!("{h}.\n{p}.{s}")),
        (
            "a CRLF inside the payload",
            format!("{h}.{}\r\n{}.{s}", &p[..8], &p[8..]),
        ),
        ("a leading space", format!(" {token}")),
        ("a trailing newline", format!("{token}\n")),
        ("a trailing CRLF", format!("{token}\r\n")),
        ("a trailing NBSP", format!("{token}\u{a0}")),
    ] {
        cases.push(deny(name, t, "malformed").no_guard());
    }
    // Header or payload that is not one JSON object.
    for (name, payload) in [
        ("payload an array", "[]".to_string()),
        ("payload a string", "\"claims\"".to_string()),
        (
            "payload two objects",
            format!("{}{{}}", env.claims(json!({}))),
        ),
        (
            "payload with a UTF-8 BOM",
            format!("\u{feff}{}", env.claims(json!({}))),
        ),
        (
            "payload with a lone surrogate",
            env.raw_claims(&[], r#""x":"\ud800""#),
        ),
        ("payload unterminated", "{\"sub\":\"x\"".to_string()),
    ] {
        cases.push(deny(
            name,
            env.sign_raw(&env.header().to_string(), &payload),
            "malformed",
        ));
    }
    let bad_utf8 = {
        let input = format!("{h}.{}", b64(b"{\"sub\":\"\xff\"}"));
        format!("{input}.{}", b64(&env.key.sign(input.as_bytes()).unwrap()))
    };
    cases.push(deny(
        "payload with invalid UTF-8 bytes (signed)",
        bad_utf8,
        "malformed",
    ));
    // Duplicate member names, correctly signed → malformed, whichever copy is "right".
    let hdr = env.header().to_string();
    for (name, tail, drop) in [
        (
            "duplicate aud, right one last",
            format!(r#""aud":"https://evil.example","aud":"{RESOURCE}""#),
            vec!["aud"],
        ),
        (
            "duplicate aud, right one first",
            format!(r#""aud":"{RESOURCE}","aud":"https://evil.example""#),
            vec!["aud"],
        ),
        (
            "duplicate aud, identical",
            format!(r#""aud":"{RESOURCE}","aud":"{RESOURCE}""#),
            vec!["aud"],
        ),
        (
            "duplicate aud, escaped name",
            format!(r#""aud":"{RESOURCE}","\u0061ud":"{RESOURCE}""#),
            vec!["aud"],
        ),
        (
            "duplicate exp",
            format!(r#""exp":{},"exp":{}"#, env.now - 3600, env.now + 300),
            vec!["exp"],
        ),
        (
            "duplicate iss",
            format!(r#""iss":"https://evil.example","iss":"{}""#, env.issuer),
            vec!["iss"],
        ),
        (
            "duplicate sub",
            r#""sub":"a","sub":"b""#.to_string(),
            vec!["sub"],
        ),
        (
            "duplicate name in a nested object",
            r#""act":{"sub":"x","sub":"y"}"#.to_string(),
            vec![],
        ),
    ] {
        cases.push(deny(
            name,
            env.sign_raw(&hdr, &env.raw_claims(&drop, &tail)),
            "malformed",
        ));
    }
    let claims = env.claims(json!({})).to_string();
    let dup_alg = format!(
        r#"{{"alg":"none","alg":"ES256","typ":"JWT","kid":"{}"}}"#,
        env.kid()
    );
    cases.push(deny(
        "duplicate alg in the header",
        env.sign_raw(&dup_alg, &claims),
        "malformed",
    ));
    let dup_kid = format!(
        r#"{{"alg":"ES256","typ":"JWT","kid":"nope","kid":"{}"}}"#,
        env.kid()
    );
    cases.push(deny(
        "duplicate kid in the header",
        env.sign_raw(&dup_kid, &claims),
        "malformed",
    ));
    // JSON nested 10 000 deep. Balanced, it cannot fit under the 16 KiB token cap (the cap
    // refuses it first); unbalanced it fits and the parser's depth limit refuses it; 5 000
    // balanced levels fit and are refused for depth too. Never a stack overflow.
    let deep = |open: usize, close: usize| {
        env.raw_claims(
            &[],
            &format!(r#""deep":{}1{}"#, "[".repeat(open), "]".repeat(close)),
        )
    };
    cases.push(deny(
        "a claim nested 10 000 deep (balanced, signed)",
        env.sign_raw(&hdr, &deep(10_000, 10_000)),
        "malformed",
    ));
    cases.push(deny(
        "a claim nested 10 000 deep (unclosed, signed)",
        env.sign_raw(&hdr, &deep(10_000, 0)),
        "malformed",
    ));
    cases.push(deny(
        "a claim nested 5 000 deep (balanced, signed)",
        env.sign_raw(&hdr, &deep(5_000, 5_000)),
        "malformed",
    ));
    let objects = env.raw_claims(
        &[],
        &format!(
            r#""deep":{}1{}"#,
            r#"{"a":"#.repeat(1_500),
            "}".repeat(1_500)
        ),
    );
    cases.push(deny(
        "a claim of 1 500 nested objects (signed)",
        env.sign_raw(&hdr, &objects),
        "malformed",
    ));
    let deep_header = format!(
        r#"{{"alg":"ES256","kid":"{}","x":{}1{}}}"#,
        env.kid(),
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    cases.push(deny(
        "a header nested 5 000 deep (signed)",
        env.sign_raw(&deep_header, &claims),
        "malformed",
    ));
    cases.push(allow(
        "control: a claim nested 100 deep",
        env.sign_raw(&hdr, &deep(100, 100)),
    ));
    // Size: a correctly signed 20 KB token is over the 16 KiB token cap → malformed.
    let big = env.sign_raw(
        &hdr,
        &env.raw_claims(&[], &format!(r#""pad":"{}""#, "x".repeat(15_000))),
    );
    assert!(big.len() > 20_000 && big.len() < 1024 * 1024);
    cases.push(deny("a 20 KB token", big, "malformed"));
    cases
}

/// §3.10-adjacent: registered claims read strictly; time; issuer.
fn claim_cases(env: &Env) -> Vec<Case> {
    let now = env.now;
    let hdr = env.header().to_string();
    let mut cases = Vec::new();
    // exp of the wrong type or out of range → malformed (never "no exp", never "expired").
    for (name, raw) in [
        ("exp \"123\"", "\"123\"".to_string()),
        (
            "exp a string of a future time",
            format!("\"{}\"", now + 300),
        ),
        ("exp 1.5", "1.5".to_string()),
        ("exp a float of a future time", format!("{}.0", now + 300)),
        ("exp -1", "-1".to_string()),
        ("exp 1e20", "1e20".to_string()),
        ("exp 1e400", "1e400".to_string()),
        ("exp one past 9999-12-31", "253402300800".to_string()),
        ("exp i64::MAX", i64::MAX.to_string()),
        ("exp u64::MAX + 1", "18446744073709551616".to_string()),
        ("exp null", "null".to_string()),
        ("exp true", "true".to_string()),
        ("exp a list", format!("[{}]", now + 300)),
        ("exp an object", "{}".to_string()),
    ] {
        cases.push(deny(
            name,
            env.sign_raw(&hdr, &env.raw_claims(&["exp"], &format!(r#""exp":{raw}"#))),
            "malformed",
        ));
    }
    cases.push(deny(
        "exp missing",
        env.with_claims(json!({"exp": null})),
        "malformed",
    ));
    for (name, claim, raw) in [
        ("nbf \"0\"", "nbf", "\"0\""),
        ("nbf -1", "nbf", "-1"),
        ("iat 1.5", "iat", "1.5"),
        ("iat 1e20", "iat", "1e20"),
    ] {
        cases.push(deny(
            name,
            env.sign_raw(
                &hdr,
                &env.raw_claims(&[claim], &format!(r#""{claim}":{raw}"#)),
            ),
            "malformed",
        ));
    }
    // Expiry (leeway 60 s: valid while now < exp + 60).
    cases.push(deny("exp 0", env.with_claims(json!({"exp": 0})), "expired"));
    cases.push(
        deny(
            "expired an hour ago",
            env.with_claims(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})),
            "expired",
        )
        .in_subset(),
    );
    cases.push(deny(
        "expired exactly at the leeway",
        env.with_claims(json!({"exp": now - 60})),
        "expired",
    ));
    cases.push(allow(
        "control: expired within the leeway",
        env.with_claims(json!({"exp": now - 59})),
    ));
    // Future nbf / iat → not_yet_valid.
    cases.push(deny(
        "nbf an hour ahead",
        env.with_claims(json!({"nbf": now + 3600})),
        "not_yet_valid",
    ));
    cases.push(deny(
        "iat an hour ahead",
        env.with_claims(json!({"iat": now + 3600})),
        "not_yet_valid",
    ));
    cases.push(deny(
        "nbf and iat an hour ahead",
        env.with_claims(json!({"nbf": now + 3600, "iat": now + 3600, "exp": now + 3900})),
        "not_yet_valid",
    ));
    cases.push(deny(
        "nbf just past the leeway",
        env.with_claims(json!({"nbf": now + 61})),
        "not_yet_valid",
    ));
    cases.push(allow(
        "control: nbf at the leeway",
        env.with_claims(json!({"nbf": now + 60})),
    ));
    // Issuer: exactly toolgate's.
    cases.push(
        deny(
            "iss wrong",
            env.with_claims(json!({"iss": "https://evil.example"})),
            "issuer",
        )
        .in_subset(),
    );
    cases.push(deny(
        "iss missing",
        env.with_claims(json!({"iss": null})),
        "issuer",
    ));
    cases.push(deny(
        "iss with a trailing slash",
        env.with_claims(json!({"iss": format!("{}/", env.issuer)})),
        "issuer",
    ));
    cases.push(deny(
        "iss upper case",
        env.with_claims(json!({"iss": env.issuer.to_ascii_uppercase()})),
        "issuer",
    ));
    cases.push(deny(
        "iss empty",
        env.with_claims(json!({"iss": ""})),
        "issuer",
    ));
    cases.push(deny(
        "iss a list",
        env.with_claims(json!({"iss": [env.issuer]})),
        "malformed",
    ));
    cases.push(deny(
        "sub missing",
        env.with_claims(json!({"sub": null})),
        "malformed",
    ));
    cases.push(deny(
        "jti missing",
        env.with_claims(json!({"jti": null})),
        "malformed",
    ));
    cases
}

/// The audience check: one string (or a one-element array), byte for byte the tool's
/// canonical resource.
fn audience_cases(env: &Env) -> Vec<Case> {
    let mut cases = Vec::new();
    cases.push(deny(
        "aud missing",
        env.with_claims(json!({"aud": null})),
        "audience",
    ));
    cases.push(
        deny(
            "aud \"*\"",
            env.with_claims(json!({"aud": "*"})),
            "audience",
        )
        .in_subset(),
    );
    cases.push(deny(
        "aud [\"*\"]",
        env.with_claims(json!({"aud": ["*"]})),
        "audience",
    ));
    cases.push(
        deny(
            "aud an array of two (this tool first)",
            env.with_claims(json!({"aud": [RESOURCE, OTHER_RESOURCE]})),
            "audience",
        )
        .in_subset(),
    );
    cases.push(deny(
        "aud an array of two (this tool last)",
        env.with_claims(json!({"aud": [OTHER_RESOURCE, RESOURCE]})),
        "audience",
    ));
    cases.push(deny(
        "aud this tool twice",
        env.with_claims(json!({"aud": [RESOURCE, RESOURCE]})),
        "audience",
    ));
    cases.push(deny(
        "aud []",
        env.with_claims(json!({"aud": []})),
        "audience",
    ));
    cases.push(deny(
        "aud 5",
        env.with_claims(json!({"aud": 5})),
        "audience",
    ));
    cases.push(deny(
        "aud [5]",
        env.with_claims(json!({"aud": [5]})),
        "audience",
    ));
    cases.push(deny(
        "aud {}",
        env.with_claims(json!({"aud": {}})),
        "audience",
    ));
    cases.push(deny(
        "aud empty",
        env.with_claims(json!({"aud": ""})),
        "audience",
    ));
    let raw = env.sign_raw(
        &env.header().to_string(),
        &env.raw_claims(&["aud"], r#""aud":null"#),
    );
    cases.push(deny("aud null", raw, "audience"));
    for (name, aud) in [
        ("aud in upper case", RESOURCE.to_ascii_uppercase()),
        (
            "aud host in upper case",
            RESOURCE.replace("mcp.example.com", "MCP.Example.COM"),
        ),
        (
            "aud path in another case",
            RESOURCE.replace("code-search", "Code-Search"),
        ),
        ("aud with a trailing slash", format!("{RESOURCE}/")),
        (
            "aud percent-encoded (%63)",
            RESOURCE.replace("/code-search", "/%63ode-search"),
        ),
        (
            "aud percent-encoded (%2D)",
            RESOURCE.replace("code-search", "code%2Dsearch"),
        ),
        (
            "aud percent-encoded slash",
            RESOURCE.replace("tools/", "tools%2F"),
        ),
        (
            "aud with a Cyrillic с",
            RESOURCE.replace("code", "\u{441}ode"),
        ),
        (
            "aud host with a Cyrillic е",
            RESOURCE.replace("example", "\u{435}xample"),
        ),
        (
            "aud with a fullwidth letter",
            RESOURCE.replace("search", "\u{ff53}earch"),
        ),
        (
            "aud with a zero-width space",
            RESOURCE.replace("code", "co\u{200b}de"),
        ),
        ("aud with a trailing NUL", format!("{RESOURCE}\u{0}")),
        ("aud with a trailing space", format!("{RESOURCE} ")),
        ("aud with a query", format!("{RESOURCE}?x=1")),
        ("aud with a fragment", format!("{RESOURCE}#")),
        (
            "aud with the default port",
            RESOURCE.replace(".com/", ".com:443/"),
        ),
        ("aud over http", RESOURCE.replace("https:", "http:")),
        (
            "aud with a dot segment",
            RESOURCE.replace("tools/", "tools/./"),
        ),
        (
            "aud a prefix of the resource",
            "https://mcp.example.com/tools".to_string(),
        ),
        ("aud the tool_id", TOOL.to_string()),
        ("aud another tool's resource", OTHER_RESOURCE.to_string()),
        ("aud toolgate itself (an agent token)", env.issuer.clone()),
    ] {
        cases.push(deny(
            name,
            env.with_claims(json!({ "aud": aud })),
            "audience",
        ));
    }
    cases.push(allow(
        "control: aud a one-element array",
        env.with_claims(json!({"aud": [RESOURCE]})),
    ));
    cases
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_attacks_are_refused() {
    let env = Env::start(false).await;
    let cases = algorithm_cases(&env);
    run(&env, &cases).await;
    env.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_and_kid_attacks_are_refused() {
    let env = Env::start(false).await;
    let cases = signature_cases(&env);
    run(&env, &cases).await;
    env.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_header_parameters_are_refused_and_never_fetched() {
    let env = Env::start(false).await;
    let cases = header_cases(&env);
    run(&env, &cases).await;
    // Look again once every connection the daemon served has finished.
    env.daemon.stop().await;
    assert_no_fetch(&env.trap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_attacks_are_refused() {
    let env = Env::start(false).await;
    let cases = encoding_cases(&env);
    run(&env, &cases).await;
    env.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_attacks_are_refused() {
    let env = Env::start(false).await;
    let cases = claim_cases(&env);
    run(&env, &cases).await;
    env.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_attacks_are_refused() {
    let env = Env::start(false).await;
    let cases = audience_cases(&env);
    run(&env, &cases).await;
    env.daemon.stop().await;
}

/// The representative subset, in both modes: verify + guard, then exchange as a subject
/// token of both types.
fn subset(env: &Env) -> Vec<Case> {
    let mut all = algorithm_cases(env);
    all.extend(signature_cases(env));
    all.extend(header_cases(env));
    all.extend(encoding_cases(env));
    all.extend(claim_cases(env));
    all.extend(audience_cases(env));
    all.into_iter().filter(|c| c.subset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_is_refused_as_a_subject_token_in_dev() {
    let env = Env::start(false).await;
    let cases = subset(&env);
    assert_eq!(
        cases.len(),
        9,
        "{:?}",
        cases.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    run(&env, &cases).await;
    exchange_refuses(&env, &cases).await;
    assert_no_fetch(&env.trap);
    assert_healthy(&env.daemon).await;
    env.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_is_refused_as_a_subject_token_in_production() {
    let env = Env::start(true).await;
    let mut cases = subset(&env);
    // In production the dev stub is no subject token either.
    let mut stub_case = deny(
        "dev stub",
        stub(env.claims(json!({"aud": env.issuer}))),
        "algorithm",
    );
    stub_case.subset = true;
    cases.push(stub_case);
    run(&env, &cases).await;
    exchange_refuses(&env, &cases).await;
    assert_no_fetch(&env.trap);
    assert_healthy(&env.daemon).await;
    env.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_missing_tokens() {
    let env = Env::start(false).await;
    // 16 MiB: over the 1 MiB body limit → 413 before any token handling. The request is
    // announced with its true Content-Length and the daemon answers from the head alone (it
    // never reads the body), so the test reads the answer before streaming 16 MiB into a
    // connection the daemon is closing.
    let huge = "a".repeat(16 * 1024 * 1024);
    let status = post_head_only(
        &env.daemon,
        "/v1/mcp/verify",
        &json!({"token": huge, "tool_id": TOOL}),
    )
    .await;
    assert_eq!(status, 413);
    for ty in [AGENT_MCP, JWT] {
        let mut req = exchange_body(&huge, RESOURCE);
        req["subject_token_type"] = json!(ty);
        let status = post_head_only(&env.daemon, "/v1/exchange/token", &req).await;
        assert_eq!(status, 413);
    }
    // The guard has no body limit of its own: the token cap refuses it.
    let r = env.guard_check(&huge).unwrap_err();
    assert_eq!(r.check.map(|c| c.name()), Some("malformed"), "{r:?}");
    // A correctly signed 20 KB token (over the 16 KiB cap, under the body limit): 403 at
    // verify, 401 at exchange.
    let hdr = env.header().to_string();
    let big = env.sign_raw(
        &hdr,
        &env.raw_claims(
            &["aud"],
            &format!(r#""aud":"{}","pad":"{}""#, env.issuer, "x".repeat(15_000)),
        ),
    );
    let (status, body) = env.daemon.verify(&big, TOOL).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["check"], "malformed", "{body}");
    for ty in [AGENT_MCP, JWT] {
        let mut req = exchange_body(&big, RESOURCE);
        req["subject_token_type"] = json!(ty);
        let (status, body) = env.daemon.exchange(req).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
    }
    // A missing token is a bad request (400), not a verification decision.
    for body in [
        json!({"tool_id": TOOL}),
        json!({"token": "", "tool_id": TOOL}),
        json!({"token": null, "tool_id": TOOL}),
        json!({"token": 5, "tool_id": TOOL}),
        json!({"token": [env.with_claims(json!({}))], "tool_id": TOOL}),
    ] {
        let (status, resp) = env
            .daemon
            .call(Method::POST, "/v1/mcp/verify", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"], "invalid_request", "{body}: {resp}");
    }
    // An empty tool_id never skips the tool checks.
    let (status, resp) = env
        .daemon
        .call(
            Method::POST,
            "/v1/mcp/verify",
            Some(json!({"token": env.with_claims(json!({"aud": "*"})), "tool_id": ""})),
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    // Only the 20 KB token was a verification decision.
    assert_audited(&env, &BTreeMap::from([("malformed", 1)])).await;
    assert_healthy(&env.daemon).await;
    env.daemon.stop().await;
}
