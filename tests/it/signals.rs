use super::harness::*;

use http::Method;
use serde_json::{json, Map, Value};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use toolgate::config::{Transmitter, TrustedIssuer};
use toolgate::credentials::Credential;
use toolgate::issuers::IssuerKeys;
use toolgate::jose::{JwkSet, SigningKey};

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const TOOL_COMPROMISED: &str = "https://starfly.dev/secevent/event-type/mcp-tool-compromised";
const TOKEN_REVOKED: &str = "https://starfly.dev/secevent/event-type/token-revoked";
const SANDBOX: &str = "https://sandbox.starfly.dev";
const SIEM: &str = "https://siem.example.com";
const IDP: &str = "https://idp.example.com";
const TOOLGATE_AUD: &str = "https://toolgate.example.com";
const SEARCH: &str = "https://mcp.example.com/tools/search";
const FILES: &str = "https://mcp.example.com/tools/files";
const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const ZERO_HASH: &str = "00000000000000000000000000000000";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn caep(name: &str) -> String {
    format!("{CAEP}{name}")
}

fn risc(name: &str) -> String {
    format!("{RISC}{name}")
}

fn session_revoked() -> String {
    caep("session-revoked")
}

fn account_enabled() -> String {
    risc("account-enabled")
}

/// The dev-mode WIMSE subject a stub `{"sub": name}` becomes.
fn wimse(name: &str) -> String {
    format!("wimse://dev.local/ns/default/sa/{name}")
}

fn uri_id(uri: &str) -> Value {
    json!({"format": "uri", "uri": uri})
}

/// A SET `jti` never used before in this test binary.
fn next_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "set-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// SET claims as the upstream sandbox sends them (dev JSON): `aud` is "starfly".
fn dev_set(daemon: &Daemon, sub_id: Option<Value>, event_type: &str, payload: Value) -> Value {
    let mut set = json!({
        "iss": SANDBOX,
        "jti": next_jti(),
        "iat": daemon.clock_now(),
        "aud": "starfly",
        "events": {event_type: payload},
    });
    if let Some(s) = sub_id {
        set["sub_id"] = s;
    }
    set
}

async fn post_json(daemon: &Daemon, set: &Value) -> (u16, Value) {
    daemon
        .raw(
            Method::POST,
            "/v1/signals/events",
            "application/json",
            set.to_string().into_bytes(),
        )
        .await
}

async fn post_jwt(daemon: &Daemon, set: &str) -> (u16, Value) {
    daemon
        .raw(
            Method::POST,
            "/v1/signals/events",
            "application/secevent+jwt",
            set.as_bytes().to_vec(),
        )
        .await
}

#[track_caller]
fn assert_accepted(status: u16, body: &Value) {
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, &json!({"status": "accepted"}));
}

/// A refused SET: the status, the code in `error`, and RFC 8935's `err` carrying the same code.
#[track_caller]
fn assert_set_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["err"], code, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    assert!(body["description"].is_string(), "{body}");
}

/// Post a dev-JSON SET and expect 202.
async fn signal(daemon: &Daemon, sub_id: Option<Value>, event_type: &str, payload: Value) -> Value {
    let set = dev_set(daemon, sub_id, event_type, payload);
    let (status, body) = post_json(daemon, &set).await;
    assert_accepted(status, &body);
    set
}

async fn revoke_uri(daemon: &Daemon, uri: &str) -> Value {
    signal(daemon, Some(uri_id(uri)), &session_revoked(), json!({})).await
}

#[track_caller]
fn assert_denied_by_revocation(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "verification_failed", "{body}");
    assert_eq!(body["check"], "revocation", "{body}");
}

async fn assert_revoked(daemon: &Daemon, token: &str, tool_id: &str) {
    let (status, body) = daemon.verify(token, tool_id).await;
    assert_denied_by_revocation(status, &body);
}

async fn assert_allowed(daemon: &Daemon, token: &str, tool_id: &str) {
    let (status, body) = daemon.verify(token, tool_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verified"], true, "{body}");
}

/// Exchange a dev stub carrying `claims` for the search tool.
async fn exchange_stub(daemon: &Daemon, claims: Value) -> (u16, Value) {
    daemon.exchange(exchange_body(&stub(claims), SEARCH)).await
}

async fn token_from_stub(daemon: &Daemon, claims: Value, audience: &str) -> String {
    let (status, body) = daemon
        .exchange(exchange_body(&stub(claims), audience))
        .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

#[track_caller]
fn assert_exchange_denied(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "access_denied", "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
}

/// A dev daemon with two tools: `search` and `files`.
async fn dev_daemon() -> Daemon {
    let daemon = Daemon::dev().await;
    daemon.register("search", SEARCH).await;
    daemon.register("files", FILES).await;
    daemon
}

async fn list(daemon: &Daemon) -> Value {
    let (status, body) = daemon
        .call(Method::GET, "/v1/signals/revocations", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn stored_count(daemon: &Daemon) -> u64 {
    list(daemon).await["count"].as_u64().unwrap()
}

/// The stored revocation naming `value`, if any.
async fn find(daemon: &Daemon, value: &str) -> Option<Value> {
    list(daemon).await["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"] == value)
        .cloned()
}

async fn lift_id(daemon: &Daemon, id: &Value) -> (u16, Value) {
    daemon
        .call(
            Method::DELETE,
            &format!("/v1/signals/revocations/{id}"),
            None,
        )
        .await
}

async fn operator_revoke(daemon: &Daemon, body: Value) -> (u16, Value) {
    daemon
        .call(Method::POST, "/v1/signals/revocations", Some(body))
        .await
}

async fn issuer_of(daemon: &Daemon) -> String {
    let (status, meta) = daemon
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(status, 200, "{meta}");
    meta["issuer"].as_str().unwrap().to_string()
}

fn jti_of(token: &str) -> String {
    claims_of(token)["jti"].as_str().unwrap().to_string()
}

fn jwks(key: &SigningKey) -> JwkSet {
    let text = json!({"keys": [key.public_jwk().to_json()]}).to_string();
    JwkSet::from_json_bytes(text.as_bytes()).unwrap()
}

/// A compact JWS SET: header `{"alg":"ES256","kid","typ"}`, signed by `key`.
fn signed_set(key: &SigningKey, kid: &str, typ: &str, claims: &Value) -> String {
    sign_jws(
        key,
        &json!({"alg": "ES256", "kid": kid, "typ": typ}),
        claims,
    )
}

/// A production daemon: admin token, `SIEM` as transmitter (`siem`), `IDP` as trusted issuer.
async fn production_daemon(siem: &SigningKey, idp: &SigningKey) -> Daemon {
    let (siem_keys, idp_keys) = (jwks(siem), jwks(idp));
    Daemon::with(move |c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.transmitters = vec![Transmitter {
            issuer: SIEM.into(),
            keys: IssuerKeys::fixed(SIEM, siem_keys, None),
        }];
        c.trusted_issuers = vec![TrustedIssuer {
            issuer: IDP.into(),
            keys: IssuerKeys::fixed(IDP, idp_keys, None),
            audience: TOOLGATE_AUD.into(),
            trust_domain: "example.com".into(),
        }];
    })
    .await
}

/// A subject token signed by the trusted IdP for upstream `sub`.
fn idp_token(daemon: &Daemon, idp: &SigningKey, sub: &str) -> String {
    let now = daemon.clock_now();
    let claims = json!({"iss": IDP, "sub": sub, "aud": TOOLGATE_AUD, "iat": now, "exp": now + 600});
    let claims: Map<String, Value> = claims.as_object().unwrap().clone();
    toolgate::jose::jws::encode_signed(idp, toolgate::jose::TYP_JWT, &claims).unwrap()
}

async fn production_exchange(daemon: &Daemon, subject_token: &str) -> (u16, Value) {
    daemon.exchange(exchange_body(subject_token, SEARCH)).await
}

async fn production_token(daemon: &Daemon, idp: &SigningKey, sub: &str) -> String {
    let (status, body) = production_exchange(daemon, &idp_token(daemon, idp, sub)).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

fn db(daemon: &Daemon) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(daemon.db_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn
}

// ---------------------------------------------------------------------------------------------
// 1. Dev JSON: the very next verify and exchange
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_json_signal_denies_the_very_next_verify_and_exchange() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob = daemon.token_for("bob", SEARCH).await;
    assert_allowed(&daemon, &alice, "search").await;

    // Exactly what the upstream sandbox sends.
    let set = json!({
        "iss": SANDBOX,
        "jti": next_jti(),
        "iat": daemon.clock_now(),
        "aud": "starfly",
        "sub_id": {"format": "uri", "uri": claims_of(&alice)["sub"]},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
    });
    let (status, body) = post_json(&daemon, &set).await;
    assert_accepted(status, &body);

    // No pause between the 202 and the next calls.
    assert_revoked(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_exchange_denied(status, &body);

    // Other subjects are unaffected.
    assert_allowed(&daemon, &bob, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "bob"})).await;
    assert_eq!(status, 200, "{body}");

    // The stored entry records where it came from.
    let row = find(&daemon, &wimse("alice")).await.unwrap();
    assert_eq!(row["kind"], "subject", "{row}");
    assert_eq!(row["format"], "uri", "{row}");
    assert_eq!(row["event_type"], session_revoked(), "{row}");
    assert_eq!(row["event_jti"], set["jti"], "{row}");
    assert_eq!(row["source"], SANDBOX, "{row}");
    assert!(row["expires_at"].is_null(), "{row}");

    // Without a Content-Type the dev body is still read as JSON.
    let set = dev_set(
        &daemon,
        Some(uri_id(&wimse("bob"))),
        &session_revoked(),
        json!({}),
    );
    let (status, body) = daemon
        .client()
        .send(
            Method::POST,
            "/v1/signals/events",
            Some(("application/json", set.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_accepted(status.as_u16(), &body);
    assert_revoked(&daemon, &bob, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 2. Event types
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subject_event_type_revokes_and_account_enabled_lifts() {
    let daemon = dev_daemon().await;
    let bystander = daemon.token_for("bystander", SEARCH).await;
    let types = [
        caep("session-revoked"),
        caep("credential-change"),
        risc("account-disabled"),
        risc("credential-compromise"),
    ];
    for (i, event_type) in types.iter().enumerate() {
        let name = format!("subject-{i}");
        let token = daemon.token_for(&name, SEARCH).await;
        let other_tool = daemon.token_for(&name, FILES).await;
        assert_allowed(&daemon, &token, "search").await;

        signal(&daemon, Some(uri_id(&wimse(&name))), event_type, json!({})).await;
        assert_revoked(&daemon, &token, "search").await;
        assert_revoked(&daemon, &other_tool, "files").await;
        let (status, body) = exchange_stub(&daemon, json!({"sub": name})).await;
        assert_exchange_denied(status, &body);
        let row = find(&daemon, &wimse(&name)).await.unwrap();
        assert_eq!(&row["event_type"], event_type, "{row}");

        // RISC account-enabled lifts it again.
        signal(
            &daemon,
            Some(uri_id(&wimse(&name))),
            &account_enabled(),
            json!({}),
        )
        .await;
        assert_allowed(&daemon, &token, "search").await;
        assert_allowed(&daemon, &other_tool, "files").await;
        let (status, body) = exchange_stub(&daemon, json!({"sub": name})).await;
        assert_eq!(status, 200, "{event_type}: {body}");
        assert!(find(&daemon, &wimse(&name)).await.is_none());
    }
    assert_allowed(&daemon, &bystander, "search").await;
    assert_eq!(stored_count(&daemon).await, 0);

    // The subject may also sit inside the event (`subject`), as CAEP puts it.
    let token = daemon.token_for("inner", SEARCH).await;
    signal(
        &daemon,
        None,
        &caep("session-revoked"),
        json!({"subject": uri_id(&wimse("inner")), "reason_admin": {"en": "stolen laptop"}}),
    )
    .await;
    assert_revoked(&daemon, &token, "search").await;
    let row = find(&daemon, &wimse("inner")).await.unwrap();
    assert_eq!(row["reason"], "stolen laptop", "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_compromised_denies_every_token_for_that_tool_only() {
    let daemon = dev_daemon().await;
    let alice_search = daemon.token_for("alice", SEARCH).await;
    let bob_search = daemon.token_for("bob", SEARCH).await;
    let alice_files = daemon.token_for("alice", FILES).await;

    signal(
        &daemon,
        None,
        TOOL_COMPROMISED,
        json!({"tool_id": "search"}),
    )
    .await;
    assert_revoked(&daemon, &alice_search, "search").await;
    assert_revoked(&daemon, &bob_search, "search").await;
    // No new token is minted for a revoked tool.
    let (status, body) = daemon
        .exchange(exchange_body(&stub(json!({"sub": "carol"})), SEARCH))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "access_denied", "{body}");
    assert_eq!(body["error_description"], "tool is revoked", "{body}");
    // Other tools are fine.
    assert_allowed(&daemon, &alice_files, "files").await;

    let row = find(&daemon, "search").await.unwrap();
    assert_eq!(row["kind"], "tool", "{row}");
    assert_eq!(row["format"], "tool", "{row}");

    // A tool_id missing or invalid is refused, and nothing is stored.
    let before = stored_count(&daemon).await;
    for payload in [
        json!({}),
        json!({"tool_id": "bad tool id"}),
        json!({"tool_id": 7}),
    ] {
        let set = dev_set(&daemon, None, TOOL_COMPROMISED, payload);
        let (status, body) = post_json(&daemon, &set).await;
        assert_set_error(status, &body, 400, "invalid_request");
    }
    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &alice_files, "files").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revoked_kills_only_that_token() {
    let daemon = dev_daemon().await;
    let first = daemon.token_for("alice", SEARCH).await;
    let second = daemon.token_for("alice", SEARCH).await;
    let third = daemon.token_for("alice", SEARCH).await;

    // By `jti` in the event.
    signal(&daemon, None, TOKEN_REVOKED, json!({"jti": jti_of(&first)})).await;
    assert_revoked(&daemon, &first, "search").await;
    assert_allowed(&daemon, &second, "search").await;
    assert_allowed(&daemon, &third, "search").await;
    // The subject itself may still exchange.
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    let row = find(&daemon, &jti_of(&first)).await.unwrap();
    assert_eq!(row["kind"], "token", "{row}");

    // By a `jwt_id` subject identifier.
    let issuer = issuer_of(&daemon).await;
    signal(
        &daemon,
        Some(json!({"format": "jwt_id", "iss": issuer, "jti": jti_of(&third)})),
        TOKEN_REVOKED,
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &third, "search").await;
    assert_allowed(&daemon, &second, "search").await;

    // A jwt_id subject under a subject event revokes that token too.
    signal(
        &daemon,
        Some(json!({"format": "jwt_id", "iss": issuer, "jti": jti_of(&second)})),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &second, "search").await;

    // token-revoked with neither a jti nor a jwt_id subject, or a jti that is not a string.
    let before = stored_count(&daemon).await;
    let fourth = daemon.token_for("alice", SEARCH).await;
    for (sub_id, payload) in [
        (None, json!({})),
        (Some(uri_id(&wimse("alice"))), json!({})),
        (None, json!({"jti": 5})),
        (None, json!({"jti": ""})),
    ] {
        let set = dev_set(&daemon, sub_id, TOKEN_REVOKED, payload);
        let (status, body) = post_json(&daemon, &set).await;
        assert_set_error(status, &body, 400, "invalid_request");
    }
    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &fourth, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_type_is_400_and_nothing_is_half_applied() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let before = stored_count(&daemon).await;

    let set = dev_set(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        "https://schemas.openid.net/secevent/caep/event-type/token-claims-change",
        json!({}),
    );
    let (status, body) = post_json(&daemon, &set).await;
    assert_set_error(status, &body, 400, "invalid_request");
    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &alice, "search").await;

    // A valid event beside an unknown one: the whole SET is refused, the valid part included.
    let set = json!({
        "iss": SANDBOX, "jti": next_jti(), "iat": daemon.clock_now(), "aud": "starfly",
        "sub_id": uri_id(&wimse("alice")),
        "events": {
            session_revoked(): {},
            "urn:example:unknown": {},
        },
    });
    let (status, body) = post_json(&daemon, &set).await;
    assert_set_error(status, &body, 400, "invalid_request");
    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &alice, "search").await;

    // The refused SET's jti was not remembered: sent again fixed, it applies.
    let mut fixed = set.clone();
    fixed["events"] = json!({session_revoked(): {}});
    let (status, body) = post_json(&daemon, &fixed).await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &alice, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 3. Subject identifier formats
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_subject_matches_case_insensitively() {
    let daemon = dev_daemon().await;
    let bob = token_from_stub(
        &daemon,
        json!({"sub": "bob", "email": "Bob@Example.com"}),
        SEARCH,
    )
    .await;
    let other = token_from_stub(
        &daemon,
        json!({"sub": "bob2", "email": "bob2@example.com"}),
        SEARCH,
    )
    .await;
    assert_eq!(claims_of(&bob)["src"]["email"], "Bob@Example.com");

    signal(
        &daemon,
        Some(json!({"format": "email", "email": "BOB@example.COM"})),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &bob, "search").await;
    assert_allowed(&daemon, &other, "search").await;
    let (status, body) =
        exchange_stub(&daemon, json!({"sub": "bob", "email": "bob@EXAMPLE.com"})).await;
    assert_exchange_denied(status, &body);
    let row = find(&daemon, "bob@example.com").await.unwrap();
    assert_eq!(row["format"], "email", "{row}");

    // Lifted by the same identifier in another case.
    signal(
        &daemon,
        Some(json!({"format": "email", "email": "bob@example.com"})),
        &account_enabled(),
        json!({}),
    )
    .await;
    assert_allowed(&daemon, &bob, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iss_sub_subject_for_toolgate_and_upstream_issuers() {
    let daemon = dev_daemon().await;
    let issuer = issuer_of(&daemon).await;

    // toolgate's own (issuer, wimse sub).
    let dave = daemon.token_for("dave", SEARCH).await;
    let (status, body) = daemon
        .exchange(json!({
            "grant_type": GRANT, "subject_token": stub(json!({"sub": "dave"})),
            "subject_token_type": JWT, "audience": issuer,
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let dave_agent = body["access_token"].as_str().unwrap().to_string();
    // An iss_sub with another issuer does nothing.
    signal(
        &daemon,
        Some(
            json!({"format": "iss_sub", "iss": "https://elsewhere.example", "sub": wimse("dave")}),
        ),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_allowed(&daemon, &dave, "search").await;
    signal(
        &daemon,
        Some(json!({"format": "iss_sub", "iss": issuer, "sub": wimse("dave")})),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &dave, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "dave"})).await;
    assert_exchange_denied(status, &body);
    // Dave's agent token cannot be traded for a tool token either.
    let (status, body) = daemon
        .exchange(json!({
            "grant_type": GRANT, "subject_token": dave_agent,
            "subject_token_type": "urn:starfly:token-type:agent-mcp", "audience": SEARCH,
        }))
        .await;
    assert_exchange_denied(status, &body);
    let rows = list(&daemon).await["revocations"].clone();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"] == wimse("dave") && r["issuer"] == issuer)
        .unwrap();
    assert_eq!(row["format"], "iss_sub", "{row}");

    // The upstream (iss, sub) carried in `src`.
    let erin = token_from_stub(
        &daemon,
        json!({"iss": "https://idp.dev.example", "sub": "erin"}),
        SEARCH,
    )
    .await;
    let erin_elsewhere = token_from_stub(
        &daemon,
        json!({"iss": "https://other-idp.example", "sub": "erin"}),
        FILES,
    )
    .await;
    assert_eq!(claims_of(&erin)["src"]["iss"], "https://idp.dev.example");
    signal(
        &daemon,
        Some(json!({"format": "iss_sub", "iss": "https://idp.dev.example", "sub": "erin"})),
        &risc("account-disabled"),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &erin, "search").await;
    // Same upstream sub from another issuer: not the same subject.
    assert_allowed(&daemon, &erin_elsewhere, "files").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_subject_is_the_upstream_sub() {
    let daemon = dev_daemon().await;
    let carol = token_from_stub(
        &daemon,
        json!({"sub": "carol-123", "namespace": "team"}),
        SEARCH,
    )
    .await;
    let other = daemon.token_for("carol-1234", SEARCH).await;
    assert_eq!(
        claims_of(&carol)["sub"],
        "wimse://dev.local/ns/team/sa/carol-123"
    );
    signal(
        &daemon,
        Some(json!({"format": "opaque", "id": "carol-123"})),
        &risc("credential-compromise"),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &carol, "search").await;
    assert_allowed(&daemon, &other, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "carol-123"})).await;
    assert_exchange_denied(status, &body);
    let row = find(&daemon, "carol-123").await.unwrap();
    assert_eq!(row["format"], "opaque", "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_subject_revokes_the_equivalent_wimse_subject() {
    let daemon = dev_daemon().await;
    let xy = token_from_stub(
        &daemon,
        json!({"sub": "ignored", "namespace": "x", "serviceaccount": "y"}),
        SEARCH,
    )
    .await;
    let xz = token_from_stub(
        &daemon,
        json!({"namespace": "x", "serviceaccount": "z"}),
        SEARCH,
    )
    .await;
    let xw = token_from_stub(
        &daemon,
        json!({"namespace": "x", "serviceaccount": "w"}),
        SEARCH,
    )
    .await;
    assert_eq!(claims_of(&xy)["sub"], "wimse://dev.local/ns/x/sa/y");

    signal(
        &daemon,
        Some(json!({"format": "spiffe", "uri": "spiffe://dev.local/ns/x/sa/y"})),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &xy, "search").await;
    assert_allowed(&daemon, &xz, "search").await;
    let (status, body) =
        exchange_stub(&daemon, json!({"namespace": "x", "serviceaccount": "y"})).await;
    assert_exchange_denied(status, &body);

    // The upstream member name `spiffe_id`.
    signal(
        &daemon,
        Some(json!({"format": "spiffe", "spiffe_id": "spiffe://dev.local/ns/x/sa/z"})),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &xz, "search").await;

    // A `uri` subject naming the spiffe:// form works the same way.
    signal(
        &daemon,
        Some(uri_id("spiffe://dev.local/ns/x/sa/w")),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_revoked(&daemon, &xw, "search").await;

    // Another trust domain is another subject.
    let xv = token_from_stub(
        &daemon,
        json!({"namespace": "x", "serviceaccount": "v"}),
        SEARCH,
    )
    .await;
    signal(
        &daemon,
        Some(json!({"format": "spiffe", "uri": "spiffe://other.td/ns/x/sa/v"})),
        &session_revoked(),
        json!({}),
    )
    .await;
    assert_allowed(&daemon, &xv, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subject_identifiers_are_400_and_store_nothing() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let before = stored_count(&daemon).await;
    let cases = [
        json!({"format": "phone_number", "phone_number": "+12065550100"}),
        json!({"format": "did", "url": "did:example:123"}),
        json!({"format": "uri"}),
        json!({"format": "uri", "uri": ""}),
        json!({"format": "uri", "uri": 42}),
        json!({"format": "email"}),
        json!({"format": "iss_sub", "iss": "https://idp.example"}),
        json!({"format": "iss_sub", "sub": "alice"}),
        json!({"format": "opaque"}),
        json!({"format": "jwt_id", "iss": "x"}),
        json!({"format": "spiffe"}),
        json!({"format": "spiffe", "uri": "https://not-spiffe.example/x"}),
        json!({"uri": wimse("alice")}),
        json!("uri"),
        json!(["uri", wimse("alice")]),
        json!({"format": "uri", "uri": format!("{}\n", wimse("alice"))}),
    ];
    for sub_id in cases {
        let set = dev_set(&daemon, Some(sub_id.clone()), &session_revoked(), json!({}));
        let (status, body) = post_json(&daemon, &set).await;
        assert_set_error(status, &body, 400, "invalid_request");
        assert!(!body.to_string().contains("panick"), "{sub_id}: {body}");
    }
    // A subject event with no subject identifier at all.
    let set = dev_set(&daemon, None, &session_revoked(), json!({}));
    let (status, body) = post_json(&daemon, &set).await;
    assert_set_error(status, &body, 400, "invalid_request");
    // account-enabled without a subject.
    let set = dev_set(&daemon, None, &account_enabled(), json!({}));
    let (status, body) = post_json(&daemon, &set).await;
    assert_set_error(status, &body, 400, "invalid_request");

    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &alice, "search").await;
    let (status, _) = daemon.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_dev_sets_are_400_and_store_nothing() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let before = stored_count(&daemon).await;
    let sub = uri_id(&wimse("alice"));
    let ev = session_revoked();
    let cases = [
        // no jti / bad jti
        json!({"iss": SANDBOX, "sub_id": sub, "events": {ev.clone(): {}}}),
        json!({"iss": SANDBOX, "jti": "", "sub_id": sub, "events": {ev.clone(): {}}}),
        json!({"iss": SANDBOX, "jti": 7, "sub_id": sub, "events": {ev.clone(): {}}}),
        // no events, empty events, events not an object, an event that is not an object
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": {}}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": []}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": "x"}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): 5}}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): [1]}}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): null}}),
        // bad iss, iat, expires_at, reason
        json!({"iss": "", "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): {}}}),
        json!({"iss": 1, "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): {}}}),
        json!({"iss": SANDBOX, "jti": next_jti(), "iat": "now", "sub_id": sub, "events": {ev.clone(): {}}}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): {"expires_at": "soon"}}}),
        json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": {ev.clone(): {"reason_admin": 5}}}),
    ];
    for set in cases {
        let (status, body) = post_json(&daemon, &set).await;
        assert_set_error(status, &body, 400, "invalid_request");
    }
    // Too many events in one SET.
    let mut events = Map::new();
    for i in 0..33 {
        events.insert(format!("urn:example:event:{i}"), json!({}));
    }
    let set = json!({"iss": SANDBOX, "jti": next_jti(), "sub_id": sub, "events": events});
    let (status, body) = post_json(&daemon, &set).await;
    assert_set_error(status, &body, 400, "invalid_request");

    // Not JSON, or not an object.
    for raw in [&b"{not json"[..], b"[]", b"\"x\"", b""] {
        let (status, body) = daemon
            .raw(
                Method::POST,
                "/v1/signals/events",
                "application/json",
                raw.to_vec(),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }

    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &alice, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 4. Replay
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_set_is_acknowledged_but_not_applied_again() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let e1 = revoke_uri(&daemon, &wimse("alice")).await;
    assert_revoked(&daemon, &alice, "search").await;

    let row = find(&daemon, &wimse("alice")).await.unwrap();
    let (status, body) = lift_id(&daemon, &row["id"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "lifted", "{body}");
    assert_allowed(&daemon, &alice, "search").await;

    // The same (iss, jti) again: 202, and nothing happens.
    let (status, body) = post_json(&daemon, &e1).await;
    assert_accepted(status, &body);
    assert_allowed(&daemon, &alice, "search").await;
    assert!(find(&daemon, &wimse("alice")).await.is_none());
    // Even with a different body under the same (iss, jti).
    let mut tampered = e1.clone();
    tampered["sub_id"] = uri_id(&wimse("bob"));
    let bob = daemon.token_for("bob", SEARCH).await;
    let (status, body) = post_json(&daemon, &tampered).await;
    assert_accepted(status, &body);
    assert_allowed(&daemon, &bob, "search").await;

    // The same jti from another issuer is another event.
    let mut other_issuer = e1.clone();
    other_issuer["iss"] = json!("https://other-transmitter.example");
    let (status, body) = post_json(&daemon, &other_issuer).await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &alice, "search").await;

    // A replayed lift does not lift a later revocation.
    let lift = signal(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        &account_enabled(),
        json!({}),
    )
    .await;
    // The other transmitter's revocation stands until it lifts its own.
    assert_revoked(&daemon, &alice, "search").await;
    let mut other_lift = dev_set(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        &account_enabled(),
        json!({}),
    );
    other_lift["iss"] = json!("https://other-transmitter.example");
    let (status, body) = post_json(&daemon, &other_lift).await;
    assert_accepted(status, &body);
    assert_allowed(&daemon, &alice, "search").await;
    revoke_uri(&daemon, &wimse("alice")).await;
    assert_revoked(&daemon, &alice, "search").await;
    let (status, body) = post_json(&daemon, &lift).await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &alice, "search").await;

    // Replays are remembered across a restart.
    let daemon = daemon.restart().await;
    let (status, body) = post_json(&daemon, &lift).await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &alice, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replays_apply_once() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let e1 = revoke_uri(&daemon, &wimse("alice")).await;
    let row = find(&daemon, &wimse("alice")).await.unwrap();
    let (status, body) = lift_id(&daemon, &row["id"]).await;
    assert_eq!(status, 200, "{body}");

    // The same SET 16 times at once, plus a first-time SET 16 times at once.
    let fresh = dev_set(
        &daemon,
        Some(uri_id(&wimse("bob"))),
        &session_revoked(),
        json!({}),
    );
    let mut tasks = Vec::new();
    for i in 0..32 {
        let client = daemon.client();
        let set = if i % 2 == 0 {
            e1.clone()
        } else {
            fresh.clone()
        };
        tasks.push(tokio::spawn(async move {
            client
                .send(
                    Method::POST,
                    "/v1/signals/events",
                    Some(("application/json", set.to_string().into_bytes())),
                )
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_accepted(status.as_u16(), &body);
    }
    assert_allowed(&daemon, &alice, "search").await;
    let listed = list(&daemon).await;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["revocations"][0]["value"], wimse("bob"), "{listed}");
    assert_federation_consistent(&daemon, 1).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_lifts_survive_a_restart() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob = daemon.token_for("bob", SEARCH).await;
    let carol = daemon.token_for("carol", SEARCH).await;
    let dave = daemon.token_for("dave", FILES).await;
    let erin_1 = daemon.token_for("erin", SEARCH).await;
    let erin_2 = daemon.token_for("erin", SEARCH).await;

    revoke_uri(&daemon, &wimse("alice")).await;
    revoke_uri(&daemon, &wimse("bob")).await;
    signal(
        &daemon,
        Some(uri_id(&wimse("bob"))),
        &account_enabled(),
        json!({}),
    )
    .await;
    revoke_uri(&daemon, &wimse("carol")).await;
    let row = find(&daemon, &wimse("carol")).await.unwrap();
    let (status, body) = lift_id(&daemon, &row["id"]).await;
    assert_eq!(status, 200, "{body}");
    signal(&daemon, None, TOOL_COMPROMISED, json!({"tool_id": "files"})).await;
    signal(
        &daemon,
        None,
        TOKEN_REVOKED,
        json!({"jti": jti_of(&erin_1)}),
    )
    .await;
    let (hash_before, _) = federation_hash(&daemon).await;

    let daemon = daemon.restart().await;
    assert_revoked(&daemon, &alice, "search").await;
    assert_allowed(&daemon, &bob, "search").await;
    assert_allowed(&daemon, &carol, "search").await;
    assert_revoked(&daemon, &dave, "files").await;
    assert_revoked(&daemon, &erin_1, "search").await;
    assert_allowed(&daemon, &erin_2, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_exchange_denied(status, &body);
    let (status, body) = exchange_stub(&daemon, json!({"sub": "bob"})).await;
    assert_eq!(status, 200, "{body}");

    let listed = list(&daemon).await;
    assert_eq!(listed["count"], 3, "{listed}");
    assert_eq!(listed["active"], 3, "{listed}");
    let (hash_after, count) = federation_hash(&daemon).await;
    assert_eq!(hash_after, hash_before);
    assert_eq!(count, 3);

    // A second restart changes nothing.
    let daemon = daemon.restart().await;
    assert_revoked(&daemon, &alice, "search").await;
    assert_allowed(&daemon, &carol, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Operator revocations and lifting
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_revocations_take_effect_immediately_and_lift_by_id() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob_1 = daemon.token_for("bob", SEARCH).await;
    let bob_2 = daemon.token_for("bob", SEARCH).await;
    let carol_files = daemon.token_for("carol", FILES).await;
    let carol_search = daemon.token_for("carol", SEARCH).await;

    let (status, body) = operator_revoke(
        &daemon,
        json!({"kind": "subject", "value": wimse("alice"), "reason": "left the company"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "revoked", "{body}");
    assert_eq!(body["kind"], "subject", "{body}");
    assert_eq!(body["format"], "uri", "{body}");
    assert_eq!(body["value"], wimse("alice"), "{body}");
    assert_eq!(body["key"].as_str().unwrap().len(), 32, "{body}");
    assert_revoked(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_exchange_denied(status, &body);

    let (status, body) =
        operator_revoke(&daemon, json!({"kind": "token", "value": jti_of(&bob_1)})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["kind"], "token", "{body}");
    assert_revoked(&daemon, &bob_1, "search").await;
    assert_allowed(&daemon, &bob_2, "search").await;

    let (status, body) = operator_revoke(&daemon, json!({"kind": "tool", "value": "files"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["kind"], "tool", "{body}");
    assert_revoked(&daemon, &carol_files, "files").await;
    assert_allowed(&daemon, &carol_search, "search").await;

    // Bad operator requests.
    for bad in [
        json!({"kind": "subject"}),
        json!({"kind": "subject", "value": ""}),
        json!({"kind": "thing", "value": "x"}),
        json!({"kind": "tool", "value": "not a tool id"}),
        json!({"kind": "subject", "format": "iss_sub", "value": "x"}),
        json!({"kind": "subject", "value": "x", "issuer": "https://i.example"}),
        json!({"kind": "subject", "value": "x", "expires_in": 0}),
        json!({"kind": "subject", "value": "x", "expires_in": "1h"}),
    ] {
        let (status, body) = operator_revoke(&daemon, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }

    let listed = list(&daemon).await;
    assert_eq!(listed["count"], 3, "{listed}");
    let rows = listed["revocations"].as_array().unwrap().clone();
    for row in &rows {
        assert_eq!(row["source"], "admin", "{row}");
    }
    let alice_row = rows.iter().find(|r| r["value"] == wimse("alice")).unwrap();
    assert_eq!(alice_row["reason"], "left the company");

    // Lift each; the next verify passes.
    let (status, body) = lift_id(&daemon, &alice_row["id"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "lifted", "{body}");
    assert_eq!(body["revocation"]["value"], wimse("alice"), "{body}");
    assert_allowed(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    // Lifting it again: 404.
    let (status, body) = lift_id(&daemon, &alice_row["id"]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "revocation_not_found", "{body}");
    for row in rows.iter().filter(|r| r["value"] != wimse("alice")) {
        let (status, body) = lift_id(&daemon, &row["id"]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_allowed(&daemon, &bob_1, "search").await;
    assert_allowed(&daemon, &carol_files, "files").await;
    assert_eq!(stored_count(&daemon).await, 0);

    // Unknown and bad ids.
    let (status, body) = daemon
        .call(Method::DELETE, "/v1/signals/revocations/999999", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "revocation_not_found", "{body}");
    for bad in ["abc", "0", "-1", "1.5", "99999999999999999999999"] {
        let (status, body) = daemon
            .call(
                Method::DELETE,
                &format!("/v1/signals/revocations/{bad}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_subject_formats() {
    let daemon = dev_daemon().await;
    let issuer = issuer_of(&daemon).await;
    let bob = token_from_stub(
        &daemon,
        json!({"sub": "bob", "email": "bob@example.com"}),
        SEARCH,
    )
    .await;
    let carol = daemon.token_for("carol", SEARCH).await;
    let dave = daemon.token_for("dave", SEARCH).await;

    let (status, body) = operator_revoke(
        &daemon,
        json!({"kind": "subject", "format": "email", "value": "Bob@EXAMPLE.com"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["value"], "bob@example.com", "{body}");
    assert_revoked(&daemon, &bob, "search").await;

    let (status, body) = operator_revoke(
        &daemon,
        json!({"kind": "subject", "format": "opaque", "value": "carol"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_revoked(&daemon, &carol, "search").await;

    let (status, body) = operator_revoke(
        &daemon,
        json!({"kind": "subject", "format": "iss_sub", "issuer": issuer, "value": wimse("dave")}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_revoked(&daemon, &dave, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_operator_calls_need_the_admin_token() {
    let (siem, idp) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let daemon = production_daemon(&siem, &idp).await;
    daemon.register("search", SEARCH).await;
    let token = production_token(&daemon, &idp, "workload-1").await;
    let subject = claims_of(&token)["sub"].as_str().unwrap().to_string();
    let anonymous = daemon.anonymous();
    let body = json!({"kind": "subject", "value": subject});

    let (status, resp) = anonymous
        .send(
            Method::POST,
            "/v1/signals/revocations",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 401, "{resp}");
    assert_eq!(resp["error"], "unauthorized", "{resp}");
    assert_allowed(&daemon, &token, "search").await;
    let (status, resp) = anonymous
        .send(Method::GET, "/v1/signals/revocations", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 401, "{resp}");
    let wrong = toolgate::client::Client::new(&daemon.url)
        .unwrap()
        .with_admin_token("not-the-admin-token-0123456789");
    let (status, _) = wrong
        .send(
            Method::POST,
            "/v1/signals/revocations",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 401);
    assert_allowed(&daemon, &token, "search").await;

    // With the token: 201 and effective.
    let (status, resp) = operator_revoke(&daemon, body).await;
    assert_eq!(status, 201, "{resp}");
    assert_revoked(&daemon, &token, "search").await;
    let (status, resp) =
        production_exchange(&daemon, &idp_token(&daemon, &idp, "workload-1")).await;
    assert_exchange_denied(status, &resp);

    // Lifting needs it too.
    let row = find(&daemon, &subject).await.unwrap();
    let path = format!("/v1/signals/revocations/{}", row["id"]);
    let (status, resp) = anonymous.send(Method::DELETE, &path, None).await.unwrap();
    assert_eq!(status.as_u16(), 401, "{resp}");
    assert_revoked(&daemon, &token, "search").await;
    let (status, resp) = daemon.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{resp}");
    assert_allowed(&daemon, &token, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 7. Expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_expires_at_stops_denying_once_past() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob = daemon.token_for("bob", SEARCH).await;
    let now = daemon.clock_now();
    signal(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        &session_revoked(),
        json!({"expires_at": now + 100}),
    )
    .await;
    revoke_uri(&daemon, &wimse("bob")).await;
    assert_revoked(&daemon, &alice, "search").await;
    let row = find(&daemon, &wimse("alice")).await.unwrap();
    assert!(row["expires_at"].is_string(), "{row}");
    let (_, count) = federation_hash(&daemon).await;
    assert_eq!(count, 2);

    daemon.clock.advance(99);
    assert_revoked(&daemon, &alice, "search").await;
    // At `expires_at` itself the revocation is over.
    daemon.clock.advance(1);
    assert_allowed(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    // The unexpired one still denies.
    assert_revoked(&daemon, &bob, "search").await;

    let listed = list(&daemon).await;
    assert!(find(&daemon, &wimse("alice")).await.is_none(), "{listed}");
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["active"], 1, "{listed}");
    let (_, count) = federation_hash(&daemon).await;
    assert_eq!(count, 1);

    // An expiry already past is refused and revokes nothing.
    let carol = daemon.token_for("carol", SEARCH).await;
    let set = dev_set(
        &daemon,
        Some(uri_id(&wimse("carol"))),
        &session_revoked(),
        json!({"expires_at": daemon.clock_now() - 1}),
    );
    let (status, body) = post_json(&daemon, &set).await;
    assert_set_error(status, &body, 400, "invalid_request");
    assert_allowed(&daemon, &carol, "search").await;

    // Expired entries stay expired across a restart.
    let daemon = daemon.restart().await;
    assert_allowed(&daemon, &alice, "search").await;
    assert_revoked(&daemon, &bob, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ttl_gives_every_revocation_a_default_expiry() {
    let daemon = Daemon::with(|c| {
        c.dev = true;
        c.revocation_ttl = Some(50);
    })
    .await;
    daemon.register("search", SEARCH).await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob = daemon.token_for("bob", SEARCH).await;
    let carol = daemon.token_for("carol", SEARCH).await;
    revoke_uri(&daemon, &wimse("alice")).await;
    let (status, body) =
        operator_revoke(&daemon, json!({"kind": "subject", "value": wimse("bob")})).await;
    assert_eq!(status, 201, "{body}");
    // An explicit expiry wins over the default.
    signal(
        &daemon,
        Some(uri_id(&wimse("carol"))),
        &session_revoked(),
        json!({"expires_at": daemon.clock_now() + 200}),
    )
    .await;
    for name in ["alice", "bob", "carol"] {
        let row = find(&daemon, &wimse(name)).await.unwrap();
        assert!(row["expires_at"].is_string(), "{row}");
    }
    assert_revoked(&daemon, &alice, "search").await;
    assert_revoked(&daemon, &bob, "search").await;

    daemon.clock.advance(51);
    assert_allowed(&daemon, &alice, "search").await;
    assert_allowed(&daemon, &bob, "search").await;
    assert_revoked(&daemon, &carol, "search").await;
    assert_eq!(stored_count(&daemon).await, 1);
}

// ---------------------------------------------------------------------------------------------
// 8. Production: signed SETs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_signed_sets() {
    let (siem, idp) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let rogue = SigningKey::generate().unwrap();
    let daemon = production_daemon(&siem, &idp).await;
    daemon.register("search", SEARCH).await;
    let issuer = issuer_of(&daemon).await;
    assert_eq!(issuer, daemon.url);

    let w1 = production_token(&daemon, &idp, "workload-1").await;
    let w2 = production_token(&daemon, &idp, "workload-2").await;
    let w3 = production_token(&daemon, &idp, "workload-3").await;
    let w3_sub = claims_of(&w3)["sub"].as_str().unwrap().to_string();
    assert_eq!(w3_sub, "wimse://example.com/ns/default/sa/workload-3");

    let claims = |sub: &str, extra: Value| {
        let mut c = json!({
            "iss": SIEM,
            "jti": next_jti(),
            "iat": daemon.clock_now(),
            "aud": issuer,
            "sub_id": {"format": "iss_sub", "iss": IDP, "sub": sub},
            "events": {session_revoked(): {}},
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let good = |c: &Value| signed_set(&siem, siem.kid(), "secevent+jwt", c);

    // Accepted: an upstream (iss, sub) revokes the tokens exchanged from it.
    let (status, body) = post_jwt(&daemon, &good(&claims("workload-1", json!({})))).await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &w1, "search").await;
    let (status, body) =
        production_exchange(&daemon, &idp_token(&daemon, &idp, "workload-1")).await;
    assert_exchange_denied(status, &body);
    assert_allowed(&daemon, &w2, "search").await;
    let row = find(&daemon, "workload-1").await.unwrap();
    assert_eq!(row["issuer"], IDP, "{row}");
    assert_eq!(row["source"], SIEM, "{row}");

    // toolgate's own (issuer, wimse sub), `aud` as a list naming toolgate, typ in full.
    let c = claims(
        "",
        json!({"aud": ["https://other.example", issuer],
               "sub_id": {"format": "iss_sub", "iss": issuer,
                          "sub": "wimse://example.com/ns/default/sa/workload-2"}}),
    );
    let (status, body) = post_jwt(
        &daemon,
        &signed_set(&siem, siem.kid(), "application/secevent+jwt", &c),
    )
    .await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &w2, "search").await;

    // Refusals: each with its code, nothing stored, workload-3 untouched.
    let before = stored_count(&daemon).await;
    let w3c = |extra: Value| claims("workload-3", extra);
    let mut cases: Vec<(String, &str, String, u16, &str)> = vec![
        // (what, content type, body, status, code)
        (
            "signed by an unknown key".into(),
            "application/secevent+jwt",
            signed_set(&rogue, rogue.kid(), "secevent+jwt", &w3c(json!({}))),
            400,
            "invalid_key",
        ),
        (
            "bad signature under the transmitter's kid".into(),
            "application/secevent+jwt",
            signed_set(&rogue, siem.kid(), "secevent+jwt", &w3c(json!({}))),
            400,
            "invalid_key",
        ),
        (
            "unknown issuer".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"iss": "https://rogue-siem.example.com"}))),
            400,
            "invalid_issuer",
        ),
        (
            "no issuer".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"iss": null}))),
            400,
            "invalid_request",
        ),
        (
            "wrong audience (upstream's starfly)".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"aud": "starfly"}))),
            400,
            "invalid_audience",
        ),
        (
            "no audience".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"aud": null}))),
            400,
            "invalid_audience",
        ),
        (
            "typ JWT".into(),
            "application/secevent+jwt",
            signed_set(&siem, siem.kid(), "JWT", &w3c(json!({}))),
            400,
            "invalid_request",
        ),
        (
            "iat two hours old".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"iat": daemon.clock_now() - 7200}))),
            400,
            "invalid_request",
        ),
        (
            "iat in the future".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"iat": daemon.clock_now() + 600}))),
            400,
            "invalid_request",
        ),
        (
            "no iat".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"iat": null}))),
            400,
            "invalid_request",
        ),
        (
            "no events".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"events": null}))),
            400,
            "invalid_request",
        ),
        (
            "empty events".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"events": {}}))),
            400,
            "invalid_request",
        ),
        (
            "events not an object".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"events": [session_revoked()]}))),
            400,
            "invalid_request",
        ),
        (
            "event value not an object".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"events": {session_revoked(): true}}))),
            400,
            "invalid_request",
        ),
        (
            "sub_id missing sub".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"sub_id": {"format": "iss_sub", "iss": IDP}}))),
            400,
            "invalid_request",
        ),
        (
            "unknown event type".into(),
            "application/secevent+jwt",
            good(&w3c(json!({"events": {"urn:example:whatever": {}}}))),
            400,
            "invalid_request",
        ),
        (
            "not a JWS".into(),
            "application/secevent+jwt",
            "not-a-jws".into(),
            400,
            "invalid_request",
        ),
    ];
    // alg none: refused before any key is looked at.
    let none_header = b64(json!({"alg": "none", "typ": "secevent+jwt"})
        .to_string()
        .as_bytes());
    let payload = b64(w3c(json!({})).to_string().as_bytes());
    cases.push((
        "alg none".into(),
        "application/secevent+jwt",
        format!("{none_header}.{payload}."),
        400,
        "invalid_request",
    ));
    for (what, content_type, body, want_status, code) in cases {
        let (status, resp) = daemon
            .raw(
                Method::POST,
                "/v1/signals/events",
                content_type,
                body.into_bytes(),
            )
            .await;
        assert_eq!(status, want_status, "{what}: {resp}");
        assert_set_error(status, &resp, want_status, code);
    }

    // Wrong media types: 415.
    let dev_json = json!({
        "iss": SIEM, "jti": next_jti(), "iat": daemon.clock_now(), "aud": issuer,
        "sub_id": {"format": "iss_sub", "iss": IDP, "sub": "workload-3"},
        "events": {session_revoked(): {}},
    });
    for (content_type, bytes) in [
        ("application/json", dev_json.to_string().into_bytes()),
        ("", dev_json.to_string().into_bytes()),
        ("text/plain", good(&w3c(json!({}))).into_bytes()),
        ("application/jwt", good(&w3c(json!({}))).into_bytes()),
    ] {
        let (status, resp) = daemon
            .raw(Method::POST, "/v1/signals/events", content_type, bytes)
            .await;
        assert_eq!(status, 415, "{content_type}: {resp}");
        assert_eq!(resp["error"], "invalid_request", "{resp}");
    }

    assert_eq!(stored_count(&daemon).await, before);
    assert_allowed(&daemon, &w3, "search").await;

    // A valid SET with a media type parameter and surrounding whitespace still works.
    let set = format!("\n{}\n", good(&w3c(json!({}))));
    let (status, body) = daemon
        .raw(
            Method::POST,
            "/v1/signals/events",
            "application/secevent+jwt; charset=utf-8",
            set.into_bytes(),
        )
        .await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &w3, "search").await;
    let (status, _) = daemon.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_signed_set_event_types_and_replay() {
    let (siem, idp) = (
        SigningKey::generate().unwrap(),
        SigningKey::generate().unwrap(),
    );
    let daemon = production_daemon(&siem, &idp).await;
    daemon.register("search", SEARCH).await;
    daemon.register("files", FILES).await;
    let issuer = issuer_of(&daemon).await;
    let w1 = production_token(&daemon, &idp, "workload-1").await;
    let w1_again = production_token(&daemon, &idp, "workload-1").await;
    let set = |events: Value, sub_id: Option<Value>| {
        let mut c = json!({
            "iss": SIEM, "jti": next_jti(), "iat": daemon.clock_now(), "aud": issuer,
            "events": events,
        });
        if let Some(s) = sub_id {
            c["sub_id"] = s;
        }
        signed_set(&siem, siem.kid(), "secevent+jwt", &c)
    };

    // token-revoked
    let t = set(json!({TOKEN_REVOKED: {"jti": jti_of(&w1)}}), None);
    let (status, body) = post_jwt(&daemon, &t).await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &w1, "search").await;
    assert_allowed(&daemon, &w1_again, "search").await;
    // Replayed: 202 again.
    let (status, body) = post_jwt(&daemon, &t).await;
    assert_accepted(status, &body);

    // opaque upstream sub, then lifted by account-enabled
    let opaque = json!({"format": "opaque", "id": "workload-1"});
    let (status, body) = post_jwt(
        &daemon,
        &set(json!({risc("account-disabled"): {}}), Some(opaque.clone())),
    )
    .await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &w1_again, "search").await;
    let (status, body) =
        post_jwt(&daemon, &set(json!({account_enabled(): {}}), Some(opaque))).await;
    assert_accepted(status, &body);
    assert_allowed(&daemon, &w1_again, "search").await;

    // Tool compromised
    let w1_files = {
        let (status, body) = daemon
            .exchange(exchange_body(
                &idp_token(&daemon, &idp, "workload-1"),
                FILES,
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    };
    let (status, body) = post_jwt(
        &daemon,
        &set(json!({TOOL_COMPROMISED: {"tool_id": "files"}}), None),
    )
    .await;
    assert_accepted(status, &body);
    assert_revoked(&daemon, &w1_files, "files").await;
    assert_allowed(&daemon, &w1_again, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 9. Size and burst
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_one_mib_is_413() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let mut set = dev_set(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        &session_revoked(),
        json!({}),
    );
    set["padding"] = json!("x".repeat(1024 * 1024));
    let len = set.to_string().len();
    let (status, body) = daemon
        .declared_only("/v1/signals/events", "application/json", len)
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    // Same for a signed-SET media type.
    let (status, body) = daemon
        .declared_only(
            "/v1/signals/events",
            "application/secevent+jwt",
            1024 * 1024 + 1,
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(stored_count(&daemon).await, 0);
    assert_allowed(&daemon, &alice, "search").await;
    let (status, _) = daemon.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200);
}

/// A client that keeps one HTTP/1.1 connection open (the harness client opens one per call).
struct KeepAlive {
    authority: String,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
}

impl KeepAlive {
    async fn connect(authority: &str) -> KeepAlive {
        let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        KeepAlive {
            authority: authority.to_string(),
            sender,
        }
    }

    async fn post_json(&mut self, path: &str, body: &Value) -> (u16, Value) {
        use http_body_util::BodyExt;
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_signals_in_a_burst() {
    const SIGNALS: usize = 10_000;
    const BAD: usize = 100;
    const CLIENTS: usize = 64;
    let daemon = Daemon::dev().await;
    daemon.register("search", SEARCH).await;
    let survivor = daemon.token_for("survivor", SEARCH).await;
    let burst_7 = daemon.token_for("burst-7", SEARCH).await;
    let now = daemon.clock_now();

    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let authority = daemon.url.strip_prefix("http://").unwrap().to_string();
        tasks.push(tokio::spawn(async move {
            // One kept-alive HTTP/1.1 connection per client.
            let mut conn = KeepAlive::connect(&authority).await;
            let mut out = Vec::new();
            // Valid signals i with i % CLIENTS == c, then a share of invalid ones.
            for i in (c..SIGNALS + BAD).step_by(CLIENTS) {
                let sub_id = if i < SIGNALS {
                    json!({"format": "uri", "uri": wimse(&format!("burst-{i}"))})
                } else {
                    json!({"format": "uri"})
                };
                let set = json!({
                    "iss": SANDBOX, "jti": format!("burst-{i}"), "iat": now, "aud": "starfly",
                    "sub_id": sub_id,
                    "events": {CAEP.to_string() + "session-revoked": {}},
                });
                let (status, body) = conn.post_json("/v1/signals/events", &set).await;
                out.push((i, status, body));
            }
            out
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        for (i, status, body) in t.await.unwrap() {
            if i < SIGNALS {
                assert_eq!(status, 202, "signal {i}: {body}");
                assert_eq!(body, json!({"status": "accepted"}));
                accepted += 1;
            } else {
                assert_eq!(status, 400, "signal {i}: {body}");
                assert_eq!(body["err"], "invalid_request", "{body}");
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (SIGNALS, BAD));
    eprintln!(
        "burst of {} signals took {:?}",
        SIGNALS + BAD,
        started.elapsed()
    );

    let (status, page) = daemon
        .call(Method::GET, "/v1/signals/revocations?limit=1", None)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["active"], SIGNALS, "{page}");
    assert_eq!(page["count"], 1, "{page}");
    assert!(page["next_after"].is_i64(), "{page}");
    let (hash, count) = federation_hash(&daemon).await;
    assert_eq!(count, SIGNALS as u64);
    assert_ne!(hash, ZERO_HASH);

    let (status, health) = daemon.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200, "{health}");
    assert_allowed(&daemon, &survivor, "search").await;
    assert_revoked(&daemon, &burst_7, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 10. Forced store failure: fail closed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_is_503_yet_the_revocation_is_enforced() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob = daemon.token_for("bob", SEARCH).await;
    let carol = daemon.token_for("carol", SEARCH).await;
    let conn = db(&daemon);
    conn.execute_batch(
        "CREATE TRIGGER fail_revocations BEFORE INSERT ON revocations \
         BEGIN SELECT RAISE(ABORT, 'forced failure'); END;",
    )
    .unwrap();

    // Revoke under a failing insert: not acknowledged, yet enforced (fail closed).
    let alice_set = dev_set(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        &session_revoked(),
        json!({}),
    );
    let (status, body) = post_json(&daemon, &alice_set).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_revoked(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_exchange_denied(status, &body);
    assert_allowed(&daemon, &carol, "search").await;
    // Not stored: listed as enforced-but-unstored, without an id.
    let listed = find(&daemon, &wimse("alice")).await.unwrap();
    assert_eq!(listed["stored"], false, "{listed}");
    assert!(listed["id"].is_null(), "{listed}");

    conn.execute_batch("DROP TRIGGER fail_revocations;")
        .unwrap();
    revoke_uri(&daemon, &wimse("bob")).await;
    assert_revoked(&daemon, &bob, "search").await;

    // Lift under a failing delete: 503 and the subject stays denied.
    conn.execute_batch(
        "CREATE TRIGGER fail_lifts BEFORE DELETE ON revocations \
         BEGIN SELECT RAISE(ABORT, 'forced failure'); END;",
    )
    .unwrap();
    let bob_lift = dev_set(
        &daemon,
        Some(uri_id(&wimse("bob"))),
        &account_enabled(),
        json!({}),
    );
    let (status, body) = post_json(&daemon, &bob_lift).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_revoked(&daemon, &bob, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "bob"})).await;
    assert_exchange_denied(status, &body);
    assert!(find(&daemon, &wimse("bob")).await.is_some());
    conn.execute_batch("DROP TRIGGER fail_lifts;").unwrap();

    // Retries of the same SETs (same jti) now apply and are acknowledged.
    let (status, body) = post_json(&daemon, &alice_set).await;
    assert_accepted(status, &body);
    assert!(find(&daemon, &wimse("alice")).await.is_some());
    assert_revoked(&daemon, &alice, "search").await;
    let (status, body) = post_json(&daemon, &bob_lift).await;
    assert_accepted(status, &body);
    assert_allowed(&daemon, &bob, "search").await;

    // Durable now: survives a restart.
    drop(conn);
    let daemon = daemon.restart().await;
    assert_revoked(&daemon, &alice, "search").await;
    assert_allowed(&daemon, &bob, "search").await;
    assert_allowed(&daemon, &carol, "search").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_on_operator_calls_is_503() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob = daemon.token_for("bob", SEARCH).await;
    let (status, body) =
        operator_revoke(&daemon, json!({"kind": "subject", "value": wimse("bob")})).await;
    assert_eq!(status, 201, "{body}");
    let bob_row = find(&daemon, &wimse("bob")).await.unwrap();
    let conn = db(&daemon);
    conn.execute_batch(
        "CREATE TRIGGER fail_revocations BEFORE INSERT ON revocations \
         BEGIN SELECT RAISE(ABORT, 'forced failure'); END; \
         CREATE TRIGGER fail_lifts BEFORE DELETE ON revocations \
         BEGIN SELECT RAISE(ABORT, 'forced failure'); END;",
    )
    .unwrap();

    // An operator revocation that cannot be stored: enforced, but not reported as done.
    let (status, body) =
        operator_revoke(&daemon, json!({"kind": "subject", "value": wimse("alice")})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_revoked(&daemon, &alice, "search").await;

    // A lift that cannot be stored: refused, and the subject stays denied.
    let (status, body) = lift_id(&daemon, &bob_row["id"]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_revoked(&daemon, &bob, "search").await;
}

// ---------------------------------------------------------------------------------------------
// 11. Federation digest
// ---------------------------------------------------------------------------------------------

async fn federation_hash(daemon: &Daemon) -> (String, u64) {
    let (status, body) = daemon
        .call(Method::GET, "/v1/federation/revocation-hash", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["algorithm"], "xor-sha256-128-key-expiry", "{body}");
    (
        body["hash"].as_str().unwrap().to_string(),
        body["count"].as_u64().unwrap(),
    )
}

/// Every exported entry (following `next_after`), and the export's hash and count.
async fn federation_export(daemon: &Daemon, limit: u32) -> (Vec<Value>, String, u64) {
    let mut entries = Vec::new();
    let mut after = 0i64;
    let mut seen: Option<(String, u64)> = None;
    loop {
        let (status, body) = daemon
            .call(
                Method::GET,
                &format!("/v1/federation/revocation-export?after={after}&limit={limit}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let here = (
            body["hash"].as_str().unwrap().to_string(),
            body["count"].as_u64().unwrap(),
        );
        if let Some(prev) = &seen {
            assert_eq!(prev, &here, "the digest changed between pages");
        }
        seen = Some(here);
        entries.extend(body["revocations"].as_array().unwrap().iter().cloned());
        match body["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let (hash, count) = seen.unwrap();
    (entries, hash, count)
}

/// One revoked name's share of the digest, recomputed here from the README's definition:
/// SHA-256 over the 16-byte key and the 8-byte expiry (`i64::MAX` for none), first 16 bytes.
fn entry_digest(key: &str, expires_at_unix: Option<i64>) -> u128 {
    assert_eq!(key.len(), 32, "{key}");
    let mut buf = u128::from_str_radix(key, 16)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    buf.extend_from_slice(&expires_at_unix.unwrap_or(i64::MAX).to_be_bytes());
    let d = ring::digest::digest(&ring::digest::SHA256, &buf);
    u128::from_be_bytes(d.as_ref()[..16].try_into().unwrap())
}

/// The digest over exported entries: per key the latest expiry of its records, then the XOR.
fn xor_of(entries: &[Value]) -> String {
    let mut latest: std::collections::HashMap<String, i64> = Default::default();
    for e in entries {
        let exp = e["expires_at_unix"].as_i64().unwrap_or(i64::MAX);
        let slot = latest
            .entry(e["key"].as_str().unwrap().to_string())
            .or_insert(exp);
        *slot = (*slot).max(exp);
    }
    let acc = latest
        .iter()
        .fold(0u128, |acc, (k, exp)| acc ^ entry_digest(k, Some(*exp)));
    format!("{acc:032x}")
}

async fn assert_federation_consistent(daemon: &Daemon, want_count: u64) -> String {
    let (hash, count) = federation_hash(daemon).await;
    for limit in [1000, 2] {
        let (entries, export_hash, export_count) = federation_export(daemon, limit).await;
        assert_eq!(export_hash, hash);
        assert_eq!(export_count, count);
        assert_eq!(entries.len() as u64, count);
        assert_eq!(xor_of(&entries), hash, "{entries:?}");
    }
    assert_eq!(count, want_count);
    hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_hash_and_export_agree() {
    let daemon = dev_daemon().await;
    let empty = assert_federation_consistent(&daemon, 0).await;
    assert_eq!(empty, ZERO_HASH);

    let (status, subject) =
        operator_revoke(&daemon, json!({"kind": "subject", "value": wimse("alice")})).await;
    assert_eq!(status, 201, "{subject}");
    let one = assert_federation_consistent(&daemon, 1).await;
    // One entry: the digest is that entry's share (its key, no expiry).
    assert_eq!(
        one,
        format!(
            "{:032x}",
            entry_digest(subject["key"].as_str().unwrap(), None)
        )
    );

    let (status, token) =
        operator_revoke(&daemon, json!({"kind": "token", "value": "jti-1"})).await;
    assert_eq!(status, 201, "{token}");
    let (status, tool) = operator_revoke(&daemon, json!({"kind": "tool", "value": "files"})).await;
    assert_eq!(status, 201, "{tool}");
    signal(
        &daemon,
        Some(json!({"format": "email", "email": "X@Example.org"})),
        &session_revoked(),
        json!({}),
    )
    .await;
    signal(
        &daemon,
        Some(json!({"format": "iss_sub", "iss": "https://idp.example", "sub": "s"})),
        &session_revoked(),
        json!({}),
    )
    .await;
    let five = assert_federation_consistent(&daemon, 5).await;

    // Revoking the same thing again changes nothing.
    let (status, again) = operator_revoke(&daemon, json!({"kind": "tool", "value": "files"})).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(assert_federation_consistent(&daemon, 5).await, five);

    // Lifting moves both, consistently.
    let row = find(&daemon, "jti-1").await.unwrap();
    let (status, body) = lift_id(&daemon, &row["id"]).await;
    assert_eq!(status, 200, "{body}");
    let four = assert_federation_consistent(&daemon, 4).await;
    assert_ne!(four, five);
    let expected = u128::from_str_radix(&five, 16).unwrap()
        ^ entry_digest(token["key"].as_str().unwrap(), None);
    assert_eq!(four, format!("{expected:032x}"));

    // A lift by signal too.
    signal(
        &daemon,
        Some(json!({"format": "email", "email": "x@example.org"})),
        &account_enabled(),
        json!({}),
    )
    .await;
    assert_federation_consistent(&daemon, 3).await;

    // Expiry drops entries from both.
    signal(
        &daemon,
        Some(uri_id(&wimse("short"))),
        &session_revoked(),
        json!({"expires_at": daemon.clock_now() + 10}),
    )
    .await;
    assert_federation_consistent(&daemon, 4).await;
    daemon.clock.advance(11);
    assert_federation_consistent(&daemon, 3).await;

    // Lift everything: back to zero.
    for row in list(&daemon).await["revocations"].as_array().unwrap() {
        let (status, body) = lift_id(&daemon, &row["id"]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(assert_federation_consistent(&daemon, 0).await, ZERO_HASH);
}

/// §4: "the hash and the export computed over the same (unexpired) entries" — also while a
/// revocation is enforced but could not be stored (fail closed). A peer that recomputes the
/// digest from the export, or a guard that syncs from it, must see one consistent set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_stays_consistent_during_a_store_failure() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    revoke_uri(&daemon, &wimse("bob")).await;
    let conn = db(&daemon);
    conn.execute_batch(
        "CREATE TRIGGER fail_revocations BEFORE INSERT ON revocations \
         BEGIN SELECT RAISE(ABORT, 'forced failure'); END;",
    )
    .unwrap();
    let set = dev_set(
        &daemon,
        Some(uri_id(&wimse("alice"))),
        &session_revoked(),
        json!({}),
    );
    let (status, body) = post_json(&daemon, &set).await;
    assert_eq!(status, 503, "{body}");
    assert_revoked(&daemon, &alice, "search").await;

    let (hash, count) = federation_hash(&daemon).await;
    let (entries, export_hash, export_count) = federation_export(&daemon, 1000).await;
    assert_eq!(export_hash, hash);
    assert_eq!(export_count, count);
    assert_eq!(
        entries.len() as u64,
        count,
        "the digest counts {count} entries, the export lists {entries:?}"
    );
    assert_eq!(
        xor_of(&entries),
        hash,
        "the digest is not the XOR of the export"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. CLI
// ---------------------------------------------------------------------------------------------

async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_remove("TOOLGATE_URL")
            .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn cli_args(list: &[&str], url: &str) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.push("--url".into());
    v.push(url.into());
    v
}

#[track_caller]
fn cli_json(o: &Output, code: i32) -> Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "stdout: {out}\nstderr: {err}");
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}\nstderr: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revoke_list_and_lift() {
    let daemon = dev_daemon().await;
    let alice = daemon.token_for("alice", SEARCH).await;
    let bob_1 = daemon.token_for("bob", SEARCH).await;
    let bob_2 = daemon.token_for("bob", SEARCH).await;
    let carol_files = daemon.token_for("carol", FILES).await;
    let carol_search = daemon.token_for("carol", SEARCH).await;
    let url = daemon.url.clone();

    let out = cli_json(
        &cli(cli_args(
            &[
                "revoke",
                "subject",
                &wimse("alice"),
                "--reason",
                "offboarded",
            ],
            &url,
        ))
        .await,
        0,
    );
    assert_eq!(out["status"], "revoked", "{out}");
    assert_eq!(out["kind"], "subject", "{out}");
    assert_revoked(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_exchange_denied(status, &body);

    // A jti is base64url and may start with '-' (one in 64): it goes after `--`.
    let args = ["revoke", "token", "--url", &url, "--", &jti_of(&bob_1)];
    let out = cli_json(&cli(args.iter().map(|a| a.to_string()).collect()).await, 0);
    assert_eq!(out["kind"], "token", "{out}");
    assert_revoked(&daemon, &bob_1, "search").await;
    assert_allowed(&daemon, &bob_2, "search").await;
    let args = [
        "revoke",
        "token",
        "--url",
        &url,
        "--",
        "-starts-with-a-dash",
    ];
    let out = cli_json(&cli(args.iter().map(|a| a.to_string()).collect()).await, 0);
    assert_eq!(out["value"], "-starts-with-a-dash", "{out}");

    let out = cli_json(&cli(cli_args(&["revoke", "tool", "files"], &url)).await, 0);
    assert_eq!(out["kind"], "tool", "{out}");
    assert_revoked(&daemon, &carol_files, "files").await;
    assert_allowed(&daemon, &carol_search, "search").await;

    // For people: an aligned table, one row per revocation.
    let table = cli(cli_args(&["revocations"], &url)).await;
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("VALUE"),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
    let value_col = lines[0].find("VALUE").unwrap();
    let alice_line = lines.iter().find(|l| l.contains(&wimse("alice"))).unwrap();
    assert_eq!(alice_line.find("wimse://"), Some(value_col), "{text}");
    assert!(
        alice_line.contains("offboarded") && alice_line.contains("never"),
        "{text}"
    );

    let listed = cli_json(&cli(cli_args(&["revocations", "--json"], &url)).await, 0);
    assert_eq!(listed["count"], 4, "{listed}");
    let rows = listed["revocations"].as_array().unwrap();
    let values: Vec<&str> = rows.iter().map(|r| r["value"].as_str().unwrap()).collect();
    let bob_jti = jti_of(&bob_1);
    assert!(values.contains(&wimse("alice").as_str()), "{listed}");
    assert!(values.contains(&bob_jti.as_str()), "{listed}");
    assert!(values.contains(&"files"), "{listed}");
    assert!(values.contains(&"-starts-with-a-dash"), "{listed}");
    let alice_row = rows.iter().find(|r| r["value"] == wimse("alice")).unwrap();
    assert_eq!(alice_row["reason"], "offboarded", "{alice_row}");
    let id = alice_row["id"].to_string();

    let out = cli_json(
        &cli(cli_args(&["revocations", "--lift", &id], &url)).await,
        0,
    );
    assert_eq!(out["status"], "lifted", "{out}");
    assert_allowed(&daemon, &alice, "search").await;
    let (status, body) = exchange_stub(&daemon, json!({"sub": "alice"})).await;
    assert_eq!(status, 200, "{body}");

    // Lifting it again: the API's 404, exit 1.
    let out = cli_json(
        &cli(cli_args(&["revocations", "--lift", &id], &url)).await,
        1,
    );
    assert_eq!(out["error"], "revocation_not_found", "{out}");

    let listed = cli_json(
        &cli(cli_args(&["revocations", "--json", "--limit", "1"], &url)).await,
        0,
    );
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["active"], 3, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revoke_in_production_needs_the_admin_token_file() {
    let daemon = Daemon::production().await;
    let url = daemon.url.clone();
    let out = cli(cli_args(&["revoke", "tool", "files"], &url)).await;
    let body = cli_json(&out, 1);
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert_eq!(stored_count(&daemon).await, 0);

    let token_file = daemon.dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let file = token_file.to_str().unwrap();
    let out = cli(cli_args(
        &["revoke", "tool", "files", "--admin-token-file", file],
        &url,
    ))
    .await;
    assert_eq!(cli_json(&out, 0)["status"], "revoked");
    let listed = cli_json(
        &cli(cli_args(
            &["revocations", "--json", "--admin-token-file", file],
            &url,
        ))
        .await,
        0,
    );
    assert_eq!(listed["count"], 1, "{listed}");
}
