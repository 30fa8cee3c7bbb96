use super::harness::*;
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_has_a_stable_unit_id() {
    let d = Daemon::dev().await;
    let (status, h) = d.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(h["initialized"], true);
    assert_eq!(h["locked"], false);
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    let unit = h["unit_id"].as_str().unwrap().to_string();
    assert!(unit.len() >= 16);
    let d = d.restart().await;
    let (_, h) = d.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(h["unit_id"], unit.as_str());
    d.stop().await;

    let other = Daemon::dev().await;
    let (_, h) = other.call(Method::GET, "/v1/sys/health", None).await;
    assert_ne!(h["unit_id"], unit.as_str());
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_jwks_describe_the_issuer() {
    let d = Daemon::dev().await;
    let (status, m) = d
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(m["issuer"], d.url.as_str());
    assert_eq!(m["token_endpoint"], format!("{}/v1/exchange/token", d.url));
    assert_eq!(m["jwks_uri"], format!("{}/v1/identity/jwks", d.url));
    assert_eq!(m["grant_types_supported"][0], GRANT);
    let (status, jwks) = d.call(Method::GET, "/v1/identity/jwks", None).await;
    assert_eq!(status, 200);
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(
        key.get("d").is_none(),
        "private key material must never be published"
    );
    let jwk = toolgate::jose::Jwk::from_json(key).unwrap();
    assert_eq!(key["kid"], jwk.thumbprint().as_str());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_survives_restart_and_old_tokens_verify() {
    let d = Daemon::dev().await;
    d.register("code-search", "https://mcp.example.com/tools/code-search")
        .await;
    let token = d
        .token_for("agent-7", "https://mcp.example.com/tools/code-search")
        .await;
    let (_, before) = d.call(Method::GET, "/v1/identity/jwks", None).await;
    let d = d.restart().await;
    let (_, after) = d.call(Method::GET, "/v1/identity/jwks", None).await;
    assert_eq!(before, after);
    let (status, body) = d.verify(&token, "code-search").await;
    assert_eq!(status, 200, "{body}");
    d.stop().await;
}
