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
        c.token_ttl = 3600;
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
            admin_token: None,
            resource: SEARCH.into(),
            server_id: None,
            public_url: "https://mcp.example.com".into(),
            max_staleness: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(50),
            leeway: 60,
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
