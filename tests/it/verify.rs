use super::harness::*;
use http::Method;
use serde_json::json;

const CODE: &str = "https://mcp.example.com/tools/code-search";
const SQL: &str = "https://mcp.example.com/tools/sql-admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confused_deputy_is_refused() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let token = d.token_for("agent-1", CODE).await;
    let (status, allow) = d.verify(&token, "code-search").await;
    assert_eq!(status, 200, "{allow}");
    assert_eq!(allow["verified"], true);
    let c = &allow["claims"];
    assert_eq!(c["tool_id"], "code-search");
    assert_eq!(c["resource"], CODE);
    assert_eq!(c["aud"], CODE);
    assert_eq!(c["iss"], d.url.as_str());
    assert_eq!(c["sub"], "wimse://dev.local/ns/default/sa/agent-1");
    assert!(c["exp"].is_i64() && c["jti"].is_string());

    let (status, deny) = d.verify(&token, "sql-admin").await;
    assert_eq!(status, 403);
    assert_eq!(deny["error"], "verification_failed");
    assert_eq!(deny["check"], "audience");
    assert!(
        !deny.to_string().contains(&token),
        "a denial never echoes the token"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_tool_fails_registration() {
    let d = Daemon::dev().await;
    let token = d.token_for("agent", CODE).await;
    let (status, deny) = d.verify(&token, "code-search").await;
    assert_eq!(
        (status, deny["check"].as_str()),
        (403, Some("registration"))
    );
    d.register("code-search", CODE).await;
    assert_eq!(d.verify(&token, "code-search").await.0, 200);
    d.call(Method::DELETE, "/v1/tools/code-search", None).await;
    let (status, deny) = d.verify(&token, "code-search").await;
    assert_eq!(
        (status, deny["check"].as_str()),
        (403, Some("registration"))
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_sharing_a_resource_accept_the_same_token() {
    let d = Daemon::dev().await;
    let server = "https://mcp.example.com/servers/git";
    d.register("git-log", server).await;
    d.register("git-diff", server).await;
    let token = d.token_for("agent", server).await;
    assert_eq!(d.verify(&token, "git-log").await.0, 200);
    assert_eq!(d.verify(&token, "git-diff").await.0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_must_match_byte_for_byte() {
    let d = Daemon::dev().await;
    // Canonicalisation lower-cases scheme and host; nothing else.
    for (tool, resource, audience) in [
        (
            "slash",
            "https://mcp.example.com/tools/x",
            "https://mcp.example.com/tools/x/",
        ),
        (
            "case",
            "https://mcp.example.com/tools/x",
            "https://mcp.example.com/Tools/x",
        ),
        (
            "pct",
            "https://mcp.example.com/tools/x",
            "https://mcp.example.com/tools/%78",
        ),
    ] {
        d.register(tool, resource).await;
        let token = d.token_for("agent", audience).await;
        let (status, deny) = d.verify(&token, tool).await;
        assert_eq!(
            (status, deny["check"].as_str()),
            (403, Some("audience")),
            "{audience}"
        );
    }
    d.register("upper", "https://mcp.example.com/tools/up")
        .await;
    let token = d
        .token_for("agent", "HTTPS://MCP.EXAMPLE.COM/tools/up")
        .await;
    assert_eq!(d.verify(&token, "upper").await.0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_blast_radius() {
    let d = Daemon::dev().await;
    let (s, b) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(
                json!({"tool_id": "deploy", "resource_uri": "https://ops.example.com/deploy",
                        "required_capabilities": ["deploy"], "max_blast_radius": "namespace:prod"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let mint = |claims: serde_json::Value| {
        let d = &d;
        async move {
            let (s, r) = d
                .exchange(exchange_body(
                    &stub(claims),
                    "https://ops.example.com/deploy",
                ))
                .await;
            assert_eq!(s, 200, "{r}");
            r["access_token"].as_str().unwrap().to_string()
        }
    };
    let no_caps = mint(json!({"sub": "a", "blast_radius": "service:prod"})).await;
    assert_eq!(
        d.verify(&no_caps, "deploy").await.1["check"],
        "capabilities"
    );
    let no_radius = mint(json!({"sub": "a", "caps": ["deploy"]})).await;
    assert_eq!(
        d.verify(&no_radius, "deploy").await.1["check"],
        "blast_radius"
    );
    let too_wide =
        mint(json!({"sub": "a", "caps": ["deploy"], "blast_radius": "cluster:prod"})).await;
    assert_eq!(
        d.verify(&too_wide, "deploy").await.1["check"],
        "blast_radius"
    );
    let other_scope =
        mint(json!({"sub": "a", "caps": ["deploy"], "blast_radius": "service:staging"})).await;
    assert_eq!(
        d.verify(&other_scope, "deploy").await.1["check"],
        "blast_radius"
    );
    let fine = mint(json!({"sub": "a", "caps": ["deploy"], "blast_radius": "service:prod"})).await;
    let (status, ok) = d.verify(&fine, "deploy").await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["claims"]["caps"], json!(["deploy"]));
    assert_eq!(ok["claims"]["blast_radius"], "service:prod");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_leeway_follow_the_clock() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    let token = d.token_for("agent", CODE).await;
    d.clock.advance(300 + 59);
    assert_eq!(
        d.verify(&token, "code-search").await.0,
        200,
        "within leeway"
    );
    d.clock.advance(1);
    let (status, deny) = d.verify(&token, "code-search").await;
    assert_eq!((status, deny["check"].as_str()), (403, Some("expired")));
    // A token minted "in the future" (clock moved back) is not valid yet.
    d.clock.advance(-1000);
    let (status, deny) = d.verify(&token, "code-search").await;
    assert_eq!(
        (status, deny["check"].as_str()),
        (403, Some("not_yet_valid"))
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_must_be_this_toolgate() {
    // Two daemons: the second has its own key, so the first one's token fails on signature;
    // sharing the database (same key) but not the issuer fails on issuer.
    let a = Daemon::dev().await;
    a.register("code-search", CODE).await;
    let token = a.token_for("agent", CODE).await;
    let b = Daemon::dev().await;
    b.register("code-search", CODE).await;
    assert_eq!(
        b.verify(&token, "code-search").await.1["check"],
        "signature"
    );
    b.stop().await;
    let db = a.db_path();
    let _keep_dir = a.dir.clone();
    a.stop().await;
    let c = Daemon::with(|cfg| {
        cfg.dev = true;
        cfg.db_path = db;
        cfg.issuer = Some("https://other-issuer.example.com".into());
    })
    .await;
    assert_eq!(c.verify(&token, "code-search").await.1["check"], "issuer");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_binding_when_the_tool_asks() {
    let d = Daemon::dev().await;
    let (s, b) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(
                json!({"tool_id": "runner", "resource_uri": "https://ops.example.com/run",
                        "requires_execution": true, "allowed_operations": ["run"]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let token = d.token_for("agent", "https://ops.example.com/run").await;
    let (status, deny) = d.verify(&token, "runner").await;
    assert_eq!((status, deny["check"].as_str()), (403, Some("execution")));
    d.stop().await;
}
