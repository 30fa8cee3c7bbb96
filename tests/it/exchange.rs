use super::harness::*;
use http::Method;
use serde_json::json;

const CODE: &str = "https://mcp.example.com/tools/code-search";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_token_carries_every_claim() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    let subject = stub(
        json!({"sub": "agent-1", "namespace": "team-a", "caps": ["search", "read"], "blast_radius": "service:search"}),
    );
    let mut body = exchange_body(&subject, CODE);
    body["scope"] = json!("search admin");
    let (status, resp) = d.exchange(body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["issued_token_type"], JWT);
    assert_eq!(resp["token_type"], "Bearer");
    assert_eq!(resp["expires_in"], 300);
    assert_eq!(resp["scope"], "search");
    let token = resp["access_token"].as_str().unwrap();
    let header = header_of(token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    let (_, jwks) = d.call(Method::GET, "/v1/identity/jwks", None).await;
    assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
    let c = claims_of(token);
    assert_eq!(c["iss"], d.url.as_str());
    assert_eq!(c["sub"], "wimse://dev.local/ns/team-a/sa/agent-1");
    assert_eq!(c["aud"], CODE, "aud is one string, not a list");
    assert_eq!(c["td"], "dev.local");
    assert_eq!(c["caps"], json!(["search"]));
    assert_eq!(c["blast_radius"], "service:search");
    let iat = c["iat"].as_i64().unwrap();
    assert_eq!(c["nbf"].as_i64().unwrap(), iat);
    assert_eq!(c["exp"].as_i64().unwrap(), iat + 300);
    let jti = c["jti"].as_str().unwrap();
    assert_eq!(
        toolgate::jose::b64::decode(jti).unwrap().len(),
        16,
        "128-bit jti"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jtis_are_unique() {
    let d = Daemon::dev().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let t = d.token_for("agent", CODE).await;
        assert!(seen.insert(claims_of(&t)["jti"].as_str().unwrap().to_string()));
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_encoding_and_resource_synonym() {
    let d = Daemon::dev().await;
    let form = format!(
        "grant_type={}&subject_token={}&subject_token_type={}&resource={}",
        GRANT.replace(':', "%3A"),
        stub(json!({"sub": "agent-f"})),
        JWT,
        "https%3A%2F%2Fmcp.example.com%2Ftools%2Fcode-search"
    );
    let (status, resp) = d
        .raw(
            Method::POST,
            "/v1/exchange/token",
            "application/x-www-form-urlencoded",
            form.into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        claims_of(resp["access_token"].as_str().unwrap())["aud"],
        CODE
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_naming_rules() {
    let d = Daemon::dev().await;
    let cases = [
        (
            json!({"sub": "wimse://dev.local/ns/x/sa/y"}),
            "wimse://dev.local/ns/x/sa/y",
        ),
        (
            json!({"serviceaccount": "builder", "namespace": "ci"}),
            "wimse://dev.local/ns/ci/sa/builder",
        ),
        (
            json!({"kubernetes.io.namespace": "k", "kubernetes.io.serviceaccount.name": "s"}),
            "wimse://dev.local/ns/k/sa/s",
        ),
        (json!({}), "wimse://dev.local/ns/default/sa/dev-workload"),
        // A `sub` stays one segment: no path traversal out of it.
        (
            json!({"sub": "a/../b"}),
            "wimse://dev.local/ns/default/sa/a%2F..%2Fb",
        ),
    ];
    for (claims, want) in cases {
        let (status, resp) = d.exchange(exchange_body(&stub(claims.clone()), CODE)).await;
        assert_eq!(status, 200, "{claims} {resp}");
        assert_eq!(
            claims_of(resp["access_token"].as_str().unwrap())["sub"],
            want,
            "{claims}"
        );
    }
    let (status, resp) = d
        .exchange(exchange_body(
            &stub(json!({"namespace": "a/../b", "serviceaccount": "s"})),
            CODE,
        ))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (401, Some("invalid_client"))
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_stub_is_refused() {
    let d = Daemon::dev().await;
    let past = d.clock_now() - 3600;
    let (status, resp) = d
        .exchange(exchange_body(&stub(json!({"sub": "a", "exp": past})), CODE))
        .await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (401, Some("invalid_client"))
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_token_is_never_a_subject_token() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    d.register("sql-admin", "https://mcp.example.com/tools/sql-admin")
        .await;
    let tool_token = d.token_for("agent", CODE).await;
    for kind in [
        JWT,
        "urn:starfly:token-type:agent-mcp",
        "urn:starfly:token-type:agent-a2a",
    ] {
        let mut body = exchange_body(&tool_token, "https://mcp.example.com/tools/sql-admin");
        body["subject_token_type"] = json!(kind);
        let (status, resp) = d.exchange(body).await;
        assert_eq!(
            (status, resp["error"].as_str()),
            (401, Some("invalid_client")),
            "{kind}: {resp}"
        );
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_round_trip() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    let agent = d.token_for("planner", &d.url).await;
    assert_eq!(claims_of(&agent)["aud"], d.url.as_str());
    let mut body = exchange_body(&agent, CODE);
    body["subject_token_type"] = json!("urn:starfly:token-type:agent-mcp");
    let (status, resp) = d.exchange(body).await;
    assert_eq!(status, 200, "{resp}");
    let tool_token = resp["access_token"].as_str().unwrap();
    assert_eq!(
        claims_of(tool_token)["sub"],
        "wimse://dev.local/ns/default/sa/planner"
    );
    assert!(claims_of(tool_token)["exp"].as_i64() <= claims_of(&agent)["exp"].as_i64());
    let (status, _) = d.verify(tool_token, "code-search").await;
    assert_eq!(status, 200);
    d.stop().await;
}
