use super::harness::*;
use http::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_list_get_delete_over_both_paths() {
    let d = Daemon::dev().await;
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/mcp/tools",
            Some(json!({
                "tool_id": "code-search",
                "name": "Code Search",
                "resource_uri": "HTTPS://MCP.Example.com/tools/code-search",
                "server_id": "my-mcp-server",
                "required_capabilities": ["search", "search"],
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["resource_uri"],
        "https://mcp.example.com/tools/code-search"
    );
    assert_eq!(body["required_capabilities"], json!(["search"]));
    assert_eq!(body["protocols"], json!(["mcp"]));
    assert!(body["registered_at"].as_str().unwrap().ends_with('Z'));

    // The universal registry is the same store.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "agent-b", "protocols": ["a2a"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, list) = d.call(Method::GET, "/v1/mcp/tools", None).await;
    assert_eq!(list["count"], 2);
    assert_eq!(list["tools"][0]["tool_id"], "agent-b");
    assert_eq!(list["tools"][1]["tool_id"], "code-search");
    let (_, a2a) = d.call(Method::GET, "/v1/tools?protocol=a2a", None).await;
    assert_eq!(a2a["count"], 1);
    assert_eq!(a2a["tools"][0]["tool_id"], "agent-b");
    let (status, one) = d.call(Method::GET, "/v1/tools/code-search", None).await;
    assert_eq!(status, 200);
    assert_eq!(one["server_id"], "my-mcp-server");

    let (status, again) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "code-search"})),
        )
        .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (409, Some("tool_exists"))
    );

    let (status, gone) = d
        .call(Method::DELETE, "/v1/mcp/tools?tool_id=code-search", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        gone,
        json!({"status": "deregistered", "tool_id": "code-search"})
    );
    let (status, _) = d.call(Method::DELETE, "/v1/tools/agent-b", None).await;
    assert_eq!(status, 200);
    let (status, missing) = d.call(Method::GET, "/v1/tools/code-search", None).await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("tool_not_found"))
    );
    let (_, list) = d.call(Method::GET, "/v1/tools", None).await;
    assert_eq!(list, json!({"tools": [], "count": 0}));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_survive_restart_and_deletes_stick() {
    let d = Daemon::dev().await;
    d.register("code-search", "https://mcp.example.com/tools/code-search")
        .await;
    d.register("sql-admin", "https://mcp.example.com/tools/sql-admin")
        .await;
    d.register("scratch", "https://mcp.example.com/tools/scratch")
        .await;
    let (status, _) = d.call(Method::DELETE, "/v1/tools/scratch", None).await;
    assert_eq!(status, 200);
    let d = d.restart().await;
    let (_, list) = d.call(Method::GET, "/v1/mcp/tools", None).await;
    let ids: Vec<&str> = list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["code-search", "sql-admin"]);
    assert_eq!(
        list["tools"][0]["resource_uri"],
        "https://mcp.example.com/tools/code-search"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_resource_means_tool_id_is_the_audience() {
    let d = Daemon::dev().await;
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "legacy-tool"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["resource_uri"], "");
    let token = d.token_for("agent", "legacy-tool").await;
    assert_eq!(claims_of(&token)["aud"], "legacy-tool");
    let (status, body) = d.verify(&token, "legacy-tool").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["claims"]["resource"], "legacy-tool");
    d.stop().await;
}
