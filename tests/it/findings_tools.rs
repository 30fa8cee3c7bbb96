//! Issue 12, finding 20: a tool's policy changes in place, with no window in which the tool is
//! missing or its revocation is lost.

use super::harness::{eventually, exchange_body, stub, Daemon, ADMIN};
use http::Method;
use serde_json::json;

const RESOURCE: &str = "https://ops.example.com/deploy";
const BIN: &str = env!("CARGO_BIN_EXE_toolgate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_20_a_tool_policy_changes_in_place() {
    let d = Daemon::dev().await;
    let (s, _) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "deploy", "resource_uri": RESOURCE, "name": "Deploy"})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, before) = d.call(Method::GET, "/v1/tools/deploy", None).await;
    let (s, r) = d
        .exchange(exchange_body(&stub(json!({"sub": "alice"})), RESOURCE))
        .await;
    assert_eq!(s, 200, "{r}");
    let token = r["access_token"].as_str().unwrap().to_string();
    assert_eq!(d.verify(&token, "deploy").await.0, 200);

    // Tighten the policy in place: the same token now lacks the capability.
    d.clock.advance(2);
    let (s, updated) = d
        .call(
            Method::PUT,
            "/v1/tools/deploy",
            Some(json!({"resource_uri": RESOURCE, "name": "Deploy",
                        "required_capabilities": ["deploy"]})),
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["required_capabilities"], json!(["deploy"]));
    assert_eq!(updated["registered_at"], before["registered_at"]);
    assert_ne!(updated["updated_at"], before["updated_at"]);
    let (s, v) = d.verify(&token, "deploy").await;
    assert_eq!((s, v["check"].as_str()), (403, Some("capabilities")));

    // A revocation of the tool survives a policy change (no deregistration in between).
    let (s, rev) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "tool", "value": "deploy", "reason": "incident"})),
        )
        .await;
    assert_eq!(s, 201, "{rev}");
    let (s, _) = d
        .call(
            Method::PUT,
            "/v1/tools/deploy",
            Some(json!({"tool_id": "deploy", "resource_uri": RESOURCE})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = d.verify(&token, "deploy").await;
    assert_eq!((s, v["check"].as_str()), (403, Some("revocation")));

    // Refusals change nothing.
    let cases = [
        ("/v1/tools/absent", json!({"resource_uri": RESOURCE}), 404),
        (
            "/v1/tools/deploy",
            json!({"tool_id": "other", "resource_uri": RESOURCE}),
            400,
        ),
        (
            "/v1/tools/deploy",
            json!({"resource_uri": RESOURCE, "bogus": 1}),
            400,
        ),
        (
            "/v1/tools/deploy",
            json!({"resource_uri": "not a uri"}),
            400,
        ),
        ("/v1/tools/bad%20id", json!({"resource_uri": RESOURCE}), 400),
    ];
    for (path, body, want) in cases {
        let (s, b) = d.call(Method::PUT, path, Some(body)).await;
        assert_eq!(s, want, "{path}: {b}");
    }
    let (s, b) = d
        .raw(
            Method::PUT,
            "/v1/tools/deploy",
            "text/plain",
            json!({"resource_uri": RESOURCE}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(s, 415, "{b}");
    let (_, now) = d.call(Method::GET, "/v1/tools/deploy", None).await;
    assert_eq!(now["resource_uri"], RESOURCE);
    assert_eq!(now["required_capabilities"], json!([]));

    // The change is audited.
    eventually("the update is in the audit log", || async {
        let (_, audit) = d
            .call(Method::GET, "/v1/audit?kind=registration", None)
            .await;
        audit["events"]
            .as_array()?
            .iter()
            .any(|e| e["decision"] == "updated" && e["target"] == "deploy")
            .then_some(())
    })
    .await;

    // And the CLI does the same.
    let url = d.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args([
                "tool",
                "update",
                "deploy",
                "--resource",
                RESOURCE,
                "--require-cap",
                "ops",
                "--url",
                &url,
            ])
            .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (_, now) = d.call(Method::GET, "/v1/tools/deploy", None).await;
    assert_eq!(now["required_capabilities"], json!(["ops"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_20_only_the_admin_updates_a_tool() {
    let d = Daemon::production().await;
    d.register("deploy", RESOURCE).await;
    let body = json!({"resource_uri": "https://ops.example.com/other"})
        .to_string()
        .into_bytes();
    let (s, _) = d
        .anonymous()
        .send(
            Method::PUT,
            "/v1/tools/deploy",
            Some(("application/json", body.clone())),
        )
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 401);
    let (s, b) = d
        .anonymous()
        .with_admin_token(ADMIN)
        .send(
            Method::PUT,
            "/v1/tools/deploy",
            Some(("application/json", body)),
        )
        .await
        .unwrap();
    assert_eq!(s.as_u16(), 200, "{b}");
    assert_eq!(b["resource_uri"], "https://ops.example.com/other");
}
