//! Issue 12, findings 1–3: revocations. The federation digest covers each revoked name's
//! expiry; no transmitter shortens or lifts another source's revocation; dev-mode SETs have
//! the same `iat` window as signed ones.

use super::harness::*;

use http::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use toolgate::clock::Clock;
use toolgate::guard::{Guard, GuardConfig};
use toolgate::verify::{DecisionRequest, Target};

const SEARCH: &str = "https://mcp.example.com/tools/search";

/// The dev-mode WIMSE subject a stub `{"sub": name}` becomes.
fn wimse(name: &str) -> String {
    format!("wimse://dev.local/ns/default/sa/{name}")
}

/// A dev daemon with the `search` tool, minting tokens that outlive the clock moves below.
async fn dev_daemon() -> Daemon {
    let d = Daemon::with(|c| {
        c.dev = true;
        c.token_ttl = 7200;
    })
    .await;
    d.register("search", SEARCH).await;
    d
}

async fn operator_revoke(d: &Daemon, body: Value) -> Value {
    let (status, body) = d
        .call(Method::POST, "/v1/signals/revocations", Some(body))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn federation_hash(d: &Daemon) -> String {
    let (status, body) = d
        .call(Method::GET, "/v1/federation/revocation-hash", None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["hash"].as_str().unwrap().to_string()
}

/// A guard for `search` on the daemon's clock.
async fn guard(d: &Daemon) -> Arc<Guard> {
    let clock: Arc<dyn Clock> = d.clock.clone();
    Guard::connect(
        GuardConfig {
            toolgate: d.url.clone(),
            toolgate_tls: Default::default(),
            admin_token: None,
            resource: SEARCH.into(),
            server_id: None,
            public_url: "https://mcp.example.com".into(),
            max_staleness: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(50),
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
    .unwrap()
}

/// Wait for a whole refresher round that began after this call. The bound only matters if the
/// test is failing.
async fn synced(guard: &Guard) {
    let mut rounds = guard.rounds();
    let target = *rounds.borrow_and_update() + 2;
    tokio::time::timeout(Duration::from_secs(30), rounds.wait_for(|r| *r >= target))
        .await
        .expect("the guard's refresher stalled")
        .unwrap();
}

/// The guard's answer: `allow`, or the check that denied.
fn guard_check(guard: &Guard, token: &str) -> String {
    match guard.check(&DecisionRequest::new(token, Target::Tool("search"))) {
        Ok(_) => "allow".into(),
        Err(r) => r.check.map_or("none", |c| c.name()).into(),
    }
}

async fn daemon_check(d: &Daemon, token: &str) -> String {
    let (status, body) = d.verify(token, "search").await;
    match status {
        200 => "allow".into(),
        _ => body["check"].as_str().unwrap_or("none").into(),
    }
}

/// Re-revoking a subject that had `expires_in: 600` with no expiry moves its expiry to never:
/// the digest changes, so a guard re-downloads and still denies ten minutes later, as the
/// daemon does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_1_digest_covers_expiry() {
    let d = dev_daemon().await;
    let alice = d.token_for("alice", SEARCH).await;
    let g = guard(&d).await;
    assert_eq!(guard_check(&g, &alice), "allow");

    operator_revoke(
        &d,
        json!({"kind": "subject", "value": wimse("alice"), "expires_in": 600}),
    )
    .await;
    synced(&g).await;
    assert_eq!(guard_check(&g, &alice), "revocation");
    let ten_minutes = federation_hash(&d).await;

    operator_revoke(&d, json!({"kind": "subject", "value": wimse("alice")})).await;
    let forever = federation_hash(&d).await;
    assert_ne!(forever, ten_minutes, "a new expiry must change the digest");
    synced(&g).await;

    d.clock.advance(601);
    synced(&g).await;
    assert_eq!(daemon_check(&d, &alice).await, "revocation");
    assert_eq!(guard_check(&g, &alice), "revocation");
    assert_eq!(federation_hash(&d).await, forever);
}

const SIEM: &str = "https://siem.example.com";
const IDP: &str = "https://idp.example.com";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";

/// A SET `jti` never used before in this test binary.
fn next_jti() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "revoke-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A dev-mode SET from `iss` about `uri`: one event, with `payload`.
fn dev_set(d: &Daemon, iss: &str, uri: &str, event: &str, payload: Value) -> Value {
    json!({
        "iss": iss, "jti": next_jti(), "iat": d.clock_now(), "aud": "starfly",
        "sub_id": {"format": "uri", "uri": uri},
        "events": {event: payload},
    })
}

async fn post_set(d: &Daemon, set: &Value) -> (u16, Value) {
    d.raw(
        Method::POST,
        "/v1/signals/events",
        "application/json",
        set.to_string().into_bytes(),
    )
    .await
}

async fn signal(d: &Daemon, iss: &str, uri: &str, event: &str, payload: Value) {
    let (status, body) = post_set(d, &dev_set(d, iss, uri, event, payload)).await;
    assert_eq!(status, 202, "{body}");
}

/// Every stored record of `value` as `(source, expires_at_unix)`, sorted.
async fn records(d: &Daemon, value: &str) -> Vec<(String, Option<i64>)> {
    let (status, body) = d
        .call(Method::GET, "/v1/federation/revocation-export", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut out: Vec<(String, Option<i64>)> = body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["value"] == value)
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_string(),
                r["expires_at_unix"].as_i64(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The id of `source`'s stored record of `value`.
async fn record_id(d: &Daemon, value: &str, source: &str) -> i64 {
    let (status, body) = d.call(Method::GET, "/v1/signals/revocations", None).await;
    assert_eq!(status, 200, "{body}");
    body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["value"] == value && r["source"] == source)
        .unwrap_or_else(|| panic!("no record of {value} by {source}: {body}"))["id"]
        .as_i64()
        .unwrap()
}

async fn lift_id(d: &Daemon, id: i64) {
    let (status, body) = d
        .call(
            Method::DELETE,
            &format!("/v1/signals/revocations/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A later signal from the same transmitter never shortens its active revocation: the later
/// expiry wins, and none is forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_a_signal_never_shortens_an_active_revocation() {
    let d = dev_daemon().await;
    let alice = d.token_for("alice", SEARCH).await;
    let bob = d.token_for("bob", SEARCH).await;
    let now = d.clock_now();

    // Forever, then "for a minute": still forever.
    signal(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({})).await;
    signal(
        &d,
        SIEM,
        &wimse("alice"),
        SESSION_REVOKED,
        json!({"expires_at": now + 60}),
    )
    .await;
    assert_eq!(records(&d, &wimse("alice")).await, [(SIEM.into(), None)]);

    // Ten minutes, then one: still ten; then an hour: an hour.
    signal(
        &d,
        SIEM,
        &wimse("bob"),
        SESSION_REVOKED,
        json!({"expires_at": now + 600}),
    )
    .await;
    signal(
        &d,
        SIEM,
        &wimse("bob"),
        SESSION_REVOKED,
        json!({"expires_at": now + 60}),
    )
    .await;
    assert_eq!(
        records(&d, &wimse("bob")).await,
        [(SIEM.into(), Some(now + 600))]
    );
    d.clock.advance(61);
    assert_eq!(daemon_check(&d, &alice).await, "revocation");
    assert_eq!(daemon_check(&d, &bob).await, "revocation");
    signal(
        &d,
        SIEM,
        &wimse("bob"),
        SESSION_REVOKED,
        json!({"expires_at": now + 1800}),
    )
    .await;
    d.clock.advance(600);
    assert_eq!(daemon_check(&d, &bob).await, "revocation");
    d.clock.advance(1200);
    assert_eq!(daemon_check(&d, &bob).await, "allow");
    assert_eq!(daemon_check(&d, &alice).await, "revocation");

    // Once expired, a new revocation starts afresh with its own expiry.
    let now = d.clock_now();
    signal(
        &d,
        SIEM,
        &wimse("bob"),
        SESSION_REVOKED,
        json!({"expires_at": now + 30}),
    )
    .await;
    assert_eq!(
        records(&d, &wimse("bob")).await,
        [(SIEM.into(), Some(now + 30))]
    );
    assert_eq!(daemon_check(&d, &bob).await, "revocation");
}

/// An `expires_at` in the past is a 400 and applies nothing of the SET: it cannot cancel a
/// revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_an_expires_at_in_the_past_is_400_and_applies_nothing() {
    let d = dev_daemon().await;
    let alice = d.token_for("alice", SEARCH).await;
    let bob = d.token_for("bob", SEARCH).await;
    signal(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({})).await;
    let before = federation_hash(&d).await;
    for past in [d.clock_now(), d.clock_now() - 1, 0] {
        let mut set = dev_set(
            &d,
            SIEM,
            &wimse("alice"),
            SESSION_REVOKED,
            json!({"expires_at": past}),
        );
        // A second, valid event in the same SET is not applied either.
        set["events"]["https://starfly.dev/secevent/event-type/token-revoked"] =
            json!({"jti": "some-token"});
        let (status, body) = post_set(&d, &set).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert_eq!(
            body["error_description"], "event expires_at is in the past",
            "{body}"
        );
        let (status, body) = post_set(
            &d,
            &dev_set(
                &d,
                SIEM,
                &wimse("bob"),
                SESSION_REVOKED,
                json!({"expires_at": past}),
            ),
        )
        .await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(federation_hash(&d).await, before);
    assert_eq!(records(&d, &wimse("alice")).await, [(SIEM.into(), None)]);
    assert!(records(&d, "some-token").await.is_empty());
    assert!(records(&d, &wimse("bob")).await.is_empty());
    d.clock.advance(3600);
    assert_eq!(daemon_check(&d, &alice).await, "revocation");
    assert_eq!(daemon_check(&d, &bob).await, "allow");
}

/// `account-enabled` lifts only the record the same transmitter made: a name revoked by two
/// sources is two records and stays revoked until both are gone; only the admin API lifts an
/// operator's revocation (by id, whatever its source); the audit names who lifted what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_a_lift_by_signal_removes_only_what_that_transmitter_revoked() {
    let d = dev_daemon().await;
    let alice = d.token_for("alice", SEARCH).await;
    let bob = d.token_for("bob", SEARCH).await;

    // The operator revokes alice; a transmitter's account-enabled does not lift it.
    let created = operator_revoke(&d, json!({"kind": "subject", "value": wimse("alice")})).await;
    assert_eq!(created["source"], "admin", "{created}");
    signal(&d, SIEM, &wimse("alice"), ACCOUNT_ENABLED, json!({})).await;
    assert_eq!(daemon_check(&d, &alice).await, "revocation");
    assert_eq!(records(&d, &wimse("alice")).await, [("admin".into(), None)]);
    // Nor can a SET pose as the admin API.
    let (status, body) = post_set(
        &d,
        &dev_set(&d, "admin", &wimse("alice"), ACCOUNT_ENABLED, json!({})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_issuer", "{body}");
    assert_eq!(daemon_check(&d, &alice).await, "revocation");

    // Two transmitters revoke bob: two records, one name in the digest.
    signal(&d, SIEM, &wimse("bob"), SESSION_REVOKED, json!({})).await;
    let one_source = federation_hash(&d).await;
    let later = d.clock_now() + 600;
    signal(
        &d,
        IDP,
        &wimse("bob"),
        SESSION_REVOKED,
        json!({"expires_at": later}),
    )
    .await;
    assert_eq!(
        records(&d, &wimse("bob")).await,
        [(IDP.into(), Some(later)), (SIEM.into(), None)]
    );
    // Bob stays revoked until his latest expiry, forever: the digest did not move.
    assert_eq!(federation_hash(&d).await, one_source);
    let (_, hash) = d
        .call(Method::GET, "/v1/federation/revocation-hash", None)
        .await;
    assert_eq!(hash["count"], 2, "{hash}");

    // SIEM lifts its own: IDP's still holds, and the digest now carries IDP's expiry.
    signal(&d, SIEM, &wimse("bob"), ACCOUNT_ENABLED, json!({})).await;
    assert_eq!(daemon_check(&d, &bob).await, "revocation");
    assert_eq!(
        records(&d, &wimse("bob")).await,
        [(IDP.into(), Some(later))]
    );
    assert_ne!(federation_hash(&d).await, one_source);
    // SIEM again: nothing of its own is left, nothing changes.
    signal(&d, SIEM, &wimse("bob"), ACCOUNT_ENABLED, json!({})).await;
    assert_eq!(daemon_check(&d, &bob).await, "revocation");
    // IDP lifts its own: bob is allowed.
    signal(&d, IDP, &wimse("bob"), ACCOUNT_ENABLED, json!({})).await;
    assert_eq!(daemon_check(&d, &bob).await, "allow");

    // The admin lifts any record by id; the name is free once every record is gone.
    signal(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({})).await;
    lift_id(&d, record_id(&d, &wimse("alice"), "admin").await).await;
    assert_eq!(daemon_check(&d, &alice).await, "revocation");
    lift_id(&d, record_id(&d, &wimse("alice"), SIEM).await).await;
    assert_eq!(daemon_check(&d, &alice).await, "allow");

    // Each lift's audit row names who lifted whose revocation.
    let lifts = eventually("the lifts are audited", || async {
        let (_, audit) = d
            .call(Method::GET, "/v1/audit?kind=revocation&limit=100", None)
            .await;
        let lifts: Vec<(String, String, String)> = audit["events"]
            .as_array()?
            .iter()
            .filter(|e| e["decision"].as_str().unwrap_or("").starts_with("lift:"))
            .map(|e| {
                (
                    e["subject"].as_str().unwrap().to_string(),
                    e["decision"].as_str().unwrap().to_string(),
                    e["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (lifts.len() == 6).then_some(lifts)
    })
    .await;
    let (alice, bob) = (wimse("alice"), wimse("bob"));
    let by = |who: &str, whose: &str| format!("lifted by {who}: the revocation by {whose}");
    // Newest first.
    let want: [(String, String, String); 4] = [
        (bob.clone(), "lift:applied".into(), by(IDP, IDP)),
        (bob.clone(), "lift:not_found".into(), by(SIEM, SIEM)),
        (bob.clone(), "lift:applied".into(), by(SIEM, SIEM)),
        (alice.clone(), "lift:not_found".into(), by(SIEM, SIEM)),
    ];
    let admin_lifts: Vec<_> = lifts.iter().take(2).cloned().collect();
    assert_eq!(&lifts[2..6], &want[..], "{lifts:?}");
    assert_eq!(admin_lifts[0].0, alice);
    assert!(
        admin_lifts[0].2.starts_with("lifted by admin: revocation ")
            && admin_lifts[0].2.ends_with(&format!(" by {SIEM}")),
        "{admin_lifts:?}"
    );
    assert!(admin_lifts[1].2.ends_with(" by admin"), "{admin_lifts:?}");
}

/// The admin may set any expiry on its own record, shorter too; a transmitter's record of the
/// same name is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_the_admin_sets_any_expiry_on_its_own_record() {
    let d = dev_daemon().await;
    let alice = d.token_for("alice", SEARCH).await;
    let bob = d.token_for("bob", SEARCH).await;
    let now = d.clock_now();
    operator_revoke(&d, json!({"kind": "subject", "value": wimse("alice")})).await;
    operator_revoke(
        &d,
        json!({"kind": "subject", "value": wimse("alice"), "expires_in": 60}),
    )
    .await;
    assert_eq!(
        records(&d, &wimse("alice")).await,
        [("admin".into(), Some(now + 60))]
    );
    operator_revoke(&d, json!({"kind": "subject", "value": wimse("bob")})).await;
    signal(
        &d,
        SIEM,
        &wimse("bob"),
        SESSION_REVOKED,
        json!({"expires_at": now + 600}),
    )
    .await;
    operator_revoke(
        &d,
        json!({"kind": "subject", "value": wimse("bob"), "expires_in": 60}),
    )
    .await;
    assert_eq!(
        records(&d, &wimse("bob")).await,
        [
            ("admin".into(), Some(now + 60)),
            (SIEM.into(), Some(now + 600))
        ]
    );
    d.clock.advance(61);
    assert_eq!(daemon_check(&d, &alice).await, "allow");
    assert_eq!(daemon_check(&d, &bob).await, "revocation");
    d.clock.advance(540);
    assert_eq!(daemon_check(&d, &bob).await, "allow");
}

/// A version-5 database (revocations unique per name) upgrades at start: its revocations hold
/// and keep their ids and sources, and a second source can then revoke the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_2_a_version_5_database_upgrades() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    let v5 = toolgate::store::SCHEMA.replace(
        "UNIQUE (format, issuer, value, source)",
        "UNIQUE (format, issuer, value)",
    );
    assert_ne!(v5, toolgate::store::SCHEMA);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&v5).unwrap();
        conn.execute(
            "INSERT INTO revocations (id, format, issuer, value, reason, source, revoked_at) \
             VALUES (41, 'uri', '', ?1, 'stolen', 'admin', 1)",
            [wimse("alice")],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
    }
    // The daemon refuses a database others may read (finding 15).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let db = path.clone();
    let d = Daemon::with(move |c| {
        c.dev = true;
        c.db_path = db;
    })
    .await;
    d.register("search", SEARCH).await;
    // The migrated revocation holds: alice cannot get a token, bob can.
    let (status, body) = d
        .exchange(exchange_body(&stub(json!({"sub": "alice"})), SEARCH))
        .await;
    assert_eq!(status, 403, "{body}");
    let bob = d.token_for("bob", SEARCH).await;
    assert_eq!(daemon_check(&d, &bob).await, "allow");
    assert_eq!(record_id(&d, &wimse("alice"), "admin").await, 41);
    signal(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({})).await;
    assert_eq!(
        records(&d, &wimse("alice")).await,
        [("admin".into(), None), (SIEM.into(), None)]
    );
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, toolgate::store::SCHEMA_VERSION);
}

/// A dev-mode SET has the signed SETs' `iat` window: once its `jti` is pruned (an hour and the
/// leeway after it arrived) a replay is too old, not applied again. A dev SET without `iat`,
/// or from the future, is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_3_a_replayed_dev_set_whose_jti_was_pruned_is_refused() {
    let d = dev_daemon().await;
    let alice = d.token_for("alice", SEARCH).await;
    let set = dev_set(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({}));
    let (status, body) = post_set(&d, &set).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(daemon_check(&d, &alice).await, "revocation");
    lift_id(&d, record_id(&d, &wimse("alice"), SIEM).await).await;
    assert_eq!(daemon_check(&d, &alice).await, "allow");

    // Within the window a replay is recognised by its jti.
    let (status, body) = post_set(&d, &set).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(daemon_check(&d, &alice).await, "allow");

    // Past it, the pruner forgets the jti (as it does once a minute: SET ids received before
    // now - 3600 - leeway); the replay is then refused for its age.
    d.clock.advance(3600 + 61);
    let horizon = d.clock_now() - 3600 - 60;
    let conn = rusqlite::Connection::open(d.db_path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let pruned = conn
        .execute(
            "DELETE FROM signal_events WHERE received_at < ?1",
            [horizon],
        )
        .unwrap();
    assert_eq!(pruned, 1);
    let (status, body) = post_set(&d, &set).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert_eq!(body["error_description"], "SET is too old", "{body}");
    assert_eq!(daemon_check(&d, &alice).await, "allow");

    // No iat, or one from the future: refused, nothing applied.
    let mut no_iat = dev_set(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({}));
    no_iat.as_object_mut().unwrap().remove("iat");
    let mut future = dev_set(&d, SIEM, &wimse("alice"), SESSION_REVOKED, json!({}));
    future["iat"] = json!(d.clock_now() + 61);
    for (set, why) in [
        (no_iat, "SET has no iat"),
        (future, "SET was issued in the future"),
    ] {
        let (status, body) = post_set(&d, &set).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error_description"], why, "{body}");
    }
    assert_eq!(daemon_check(&d, &alice).await, "allow");
    assert!(records(&d, &wimse("alice")).await.is_empty());
}
