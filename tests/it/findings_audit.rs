//! Issue 12, findings 18 (filters refuse unknown values), 9 (audit floods) and 16 (a chain head
//! only the daemon can write): each test is named after its finding and failed on the code
//! before the fix.

use super::harness::{eventually, exchange_body, stub, Daemon};
use http::Method;
use serde_json::{json, Value};

const RESOURCE: &str = "https://mcp.example.com/tools/search";

/// The rows of `/v1/audit?<query>` once at least `n` are there.
async fn rows_when(d: &Daemon, query: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} audit rows for {query}"), || async {
        let (status, body) = d
            .call(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (events.len() >= n).then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_18_unknown_filter_values_are_refused() {
    let d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    let token = d.token_for("alice", RESOURCE).await;
    assert_eq!(d.verify(&token, "search").await.0, 200);
    assert_eq!(d.verify("not-a-token", "search").await.0, 403);
    let mut two_audiences = exchange_body(&stub(json!({"sub": "bob"})), RESOURCE);
    two_audiences["audience"] = json!([RESOURCE, "https://other.example.com"]);
    let (s, _) = d.exchange(two_audiences).await;
    assert_eq!(s, 400);
    let (s, _) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "token", "value": "jti-1"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = d
        .call(
            Method::POST,
            "/v1/mcp/decisions",
            Some(json!({"decisions": [
                {"tool_id": "search", "decision": "deny", "check": "made-up"},
                {"tool_id": "search", "decision": "allow", "check": "audience"}]})),
        )
        .await;
    assert_eq!(s, 202);
    let rows = rows_when(&d, "limit=1000", 9).await;

    // A value no row can carry is a 400 naming the allowed values, not an empty page.
    for (query, names) in [
        (
            "decision=denyed",
            "decision must be one of allow, deny, issued, denied",
        ),
        (
            "kind=verfy",
            "kind must be one of verify, exchange, gateway",
        ),
        (
            "check=audiense",
            "check must be one of malformed, algorithm",
        ),
        ("check=1000", "check must be one of"),
        (
            "decisoin=deny",
            "this endpoint takes tool_id, decision, subject",
        ),
    ] {
        let (status, body) = d
            .call(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_request", "{query}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(names), "{query}: {description}");
    }
    let long = format!("/v1/audit?subject={}", "x".repeat(2000));
    let (status, body) = d.call(Method::GET, &long, None).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("subject is too long"))
    );
    // The per-tool read takes its tool from the path only.
    let (status, body) = d
        .call(Method::GET, "/v1/tools/search/audit?tool_id=other", None)
        .await;
    assert_eq!(status, 400, "{body}");
    // The lists refuse a misspelt filter too.
    for path in [
        "/v1/tools?protocl=mcp",
        "/v1/tools?protocol=ftp",
        "/v1/mcp/tools?protocol=mcp&x=1",
        "/v1/tools/search?verbose=1",
        "/v1/signals/revocations?aftr=1",
        "/v1/federation/revocation-export?limit=5&page=2",
        "/v1/events?type=verify.deny",
    ] {
        let (status, body) = d.call(Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }

    // Every row written above is found by its own kind, decision and check.
    assert!(rows.len() >= 9, "{rows:#?}");
    for row in &rows {
        let mut query = format!(
            "limit=1000&kind={}&decision={}",
            row["kind"].as_str().unwrap(),
            row["decision"].as_str().unwrap().replace(':', "%3A")
        );
        if let Some(check) = row["check"].as_str().filter(|c| !c.is_empty()) {
            query.push_str(&format!("&check={check}"));
        }
        let (status, body) = d
            .call(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        assert!(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["seq"] == row["seq"]),
            "{query}: {body}"
        );
    }
    // A known value still filters: the exchange refusal is found as `denied`.
    let denied = rows_when(&d, "decision=denied&kind=exchange", 1).await;
    assert_eq!(denied[0]["check"], "invalid_target");
    // The gateway's made-up check is recorded as `malformed`, its name kept in the reason;
    // an allow carries no check.
    let gateway = rows_when(&d, "kind=gateway", 2).await;
    assert!(
        gateway.iter().any(|e| e["decision"] == "deny"
            && e["check"] == "malformed"
            && e["reason"].as_str().unwrap().contains("made-up")),
        "{gateway:#?}"
    );
    assert!(
        gateway
            .iter()
            .any(|e| e["decision"] == "allow" && e["check"] == ""),
        "{gateway:#?}"
    );
    d.stop().await;
}
