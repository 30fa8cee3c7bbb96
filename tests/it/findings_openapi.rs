//! Issue 12 finding 19: what Schemathesis found when it drove the daemon from the OpenAPI
//! document (scripts/schemathesis.sh), each pinned here.

use super::harness::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_path_parameters_are_percent_decoded() {
    let d = Daemon::dev().await;
    d.register("a:b", "https://mcp.example.com/tools/a-b").await;
    // A client that escapes the `:` of a tool_id reaches the same tool.
    let (status, tool) = d.call(Method::GET, "/v1/tools/a%3Ab", None).await;
    assert_eq!(status, 200, "{tool}");
    assert_eq!(tool["tool_id"], "a:b");
    let (status, rows) = d.call(Method::GET, "/v1/tools/a%3Ab/audit", None).await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows["tool_id"], "a:b");
    let (status, body) = d
        .call(
            Method::PUT,
            "/v1/tools/a%3ab",
            Some(json!({"resource_uri": "https://mcp.example.com/tools/a-b", "name": "A"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tool_id"], "a:b");
    // `+` is itself in a path, not a space.
    let (status, body) = d.call(Method::GET, "/v1/tools/a+b", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("tool_not_found"))
    );
    // A malformed escape is a 400 that changes nothing.
    for path in ["/v1/tools/a%3", "/v1/tools/a%zz", "/v1/tools/%FF"] {
        let (status, body) = d.call(Method::DELETE, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let (status, body) = d.call(Method::DELETE, "/v1/tools/a%3Ab", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tool_id"], "a:b");
    let (status, body) = d
        .call(Method::DELETE, "/v1/signals/revocations/%31", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "revocation_not_found");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_a_tool_audit_with_a_malformed_tool_id_is_refused() {
    let d = Daemon::dev().await;
    // It answered 200 with no rows, as if the tool existed and had none.
    for path in ["/v1/tools/null%2Cnull/audit", "/v1/tools/a%20b/audit"] {
        let (status, body) = d.call(Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    // A well-formed tool_id is answered, registered or not (a deregistered tool's rows stay).
    let (status, body) = d.call(Method::GET, "/v1/tools/gone/audit", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_a_reported_decision_with_a_mistyped_micros_is_refused() {
    let d = Daemon::dev().await;
    let report = |micros: serde_json::Value| {
        json!({"source": "gw", "decisions": [{"tool_id": "t", "subject": "s", "jti": "j",
               "decision": "allow", "check": "", "reason": "", "micros": micros}]})
    };
    // It was taken (as 0) whatever micros was.
    for bad in [json!({}), json!("12"), json!(-1), json!(1.5), json!([1])] {
        let (status, body) = d
            .call(Method::POST, "/v1/mcp/decisions", Some(report(bad.clone())))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    let (_, stats) = d.call(Method::GET, "/v1/stats", None).await;
    assert_eq!(
        stats["verifications"]["total"], 0,
        "a refused report counted"
    );
    for good in [json!(12), json!(12.0), json!(null)] {
        let (status, body) = d
            .call(
                Method::POST,
                "/v1/mcp/decisions",
                Some(report(good.clone())),
            )
            .await;
        assert_eq!(status, 202, "{good}: {body}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_a_revocation_takes_a_whole_expires_in_and_lapses_by_the_year_9999() {
    let d = Daemon::dev().await;
    // 3600.0 is the number 3600: it was refused as not an integer.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "token", "value": "jti-1", "expires_in": 3600.0})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The longest expiry was written as the year 292277026596, which is no RFC 3339 time: it
    // lapses at the last second RFC 3339 can write instead.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "token", "value": "jti-2", "expires_in": i64::MAX})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for bad in [
        json!(1.5),
        json!(0),
        json!(-3600),
        json!("3600"),
        json!(1e300),
    ] {
        let (status, body) = d
            .call(
                Method::POST,
                "/v1/signals/revocations",
                Some(json!({"kind": "token", "value": "jti-3", "expires_in": bad})),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (_, list) = d.call(Method::GET, "/v1/signals/revocations", None).await;
    let expiry = |jti: &str| {
        list["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["value"] == jti)
            .map(|r| (r["expires_at"].clone(), r["expires_at_unix"].clone()))
            .unwrap()
    };
    assert_eq!(expiry("jti-1").1, json!(d.clock_now() + 3600));
    assert_eq!(
        expiry("jti-2"),
        (json!("9999-12-31T23:59:59Z"), json!(253_402_300_799_i64))
    );
    assert_eq!(list["count"], 2);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_audit_text_filters_count_characters_not_bytes() {
    let d = Daemon::dev().await;
    // 1024 characters of two bytes each were refused as too long (the document's maxLength
    // counts characters). The decision filter is a closed list now (finding 18).
    let wide = "é".repeat(1024);
    let encoded: String = wide.bytes().map(|b| format!("%{b:02X}")).collect();
    let (status, body) = d
        .call(Method::GET, &format!("/v1/audit?subject={encoded}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = d
        .call(
            Method::GET,
            &format!("/v1/audit?subject={encoded}%C3%A9"),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_description"], "subject is too long");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_text_limits_count_characters_as_the_document_does() {
    let d = Daemon::dev().await;
    // The document's maxLength counts characters; the daemon counted bytes, so text of two-byte
    // characters was refused at half the documented length.
    let entry = |name: usize, description: usize| json!({"tool_id": "t", "name": "é".repeat(name), "description": "é".repeat(description)});
    let (status, body) = d.call(Method::POST, "/v1/tools", Some(entry(257, 0))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = d
        .call(Method::POST, "/v1/tools", Some(entry(0, 4097)))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = d
        .call(Method::POST, "/v1/tools", Some(entry(256, 4096)))
        .await;
    assert_eq!(status, 201, "{body}");
    let revoke = |n: usize| json!({"kind": "subject", "format": "opaque", "value": "é".repeat(n)});
    let (status, body) = d
        .call(Method::POST, "/v1/signals/revocations", Some(revoke(1025)))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = d
        .call(Method::POST, "/v1/signals/revocations", Some(revoke(1024)))
        .await;
    assert_eq!(status, 201, "{body}");
    let set = |n: usize| {
        json!({"iss": "https://siem.example.com", "jti": "é".repeat(n), "iat": d.clock_now(),
               "sub_id": {"format": "opaque", "id": "ü".repeat(n)},
               "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}})
    };
    let (status, body) = d
        .call(Method::POST, "/v1/signals/events", Some(set(1025)))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = d
        .call(Method::POST, "/v1/signals/events", Some(set(1024)))
        .await;
    assert_eq!(status, 202, "{body}");
    d.stop().await;
}
