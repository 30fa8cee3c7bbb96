//! Issue 15, part 3: the gateway (and its guard) as the resource server of an existing
//! authorization server. One authorization server (the test's `Provider`, found by discovery
//! over HTTPS), two MCP servers behind two gateways: a token for server A is good at A and
//! refused at B with `401 invalid_token` "audience mismatch" — the confused-deputy page's
//! scenario — and that refusal is audited. The authorization server is no trusted issuer of
//! exchange, and a trusted issuer is no authorization server of the gateways.

use super::harness::*;
use super::issuers::Provider;

use http::{header, Method};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use toolgate::config::{AuthorizationServer, TrustedIssuer};
use toolgate::credentials::Credential;
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig};
use toolgate::jose::SigningKey;

const SERVER_A: &str = "https://mcp.example.com/servers/a";
const SERVER_B: &str = "https://mcp.example.com/servers/b";
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// An MCP server that answers every request 200 with the subject and issuer the gateway
/// vouched for.
async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<_>| {
                    let seen = |h: &str| {
                        req.headers()
                            .get(h)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let body = json!({"jsonrpc": "2.0", "id": 1, "result": {
                        "subject": seen("x-toolgate-subject"), "issuer": seen("x-toolgate-issuer"),
                        "authorization": seen("authorization")}});
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from(
                                    body.to_string(),
                                )))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    url
}

/// A gateway in front of `upstream` for `resource` (server `server_id`); its URL and guard.
struct Gateway {
    url: String,
    guard: Arc<Guard>,
    _stop: oneshot::Sender<()>,
}

async fn gateway(
    d: &Daemon,
    upstream: &str,
    resource: &str,
    server_id: &str,
    multi: bool,
) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let url = format!("http://{listen}");
    let guard_cfg = GuardConfig::new(d.url.clone(), resource)
        .server_id(server_id)
        .admin_token(ADMIN)
        .public_url(url.clone())
        .poll_interval(Duration::from_millis(100))
        .allow_multi_audience(multi);
    let guard = Guard::connect(
        guard_cfg.clone(),
        d.clock.clone() as Arc<dyn toolgate::clock::Clock>,
    )
    .await
    .unwrap();
    let cfg = GatewayConfig {
        listen,
        upstream: upstream.to_string(),
        upstream_tls: Default::default(),
        guard: guard_cfg,
        mcp_path: "/mcp".into(),
        routes: Vec::new(),
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: Default::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(toolgate::gateway::serve(
        listener,
        guard.clone(),
        cfg,
        async move {
            let _ = stopped.await;
        },
    ));
    Gateway {
        url,
        guard,
        _stop: stop,
    }
}

/// `tools/call` of `tool` through a gateway with `token`: status, headers, body.
async fn call(gw: &Gateway, token: &str, tool: &str) -> (u16, http::HeaderMap, Value) {
    let auth = format!("Bearer {token}");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": {}}});
    request_full(
        Method::POST,
        &gw.url,
        "/mcp",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        body.to_string().into_bytes(),
    )
    .await
}

/// The first `WWW-Authenticate` challenge of an answer.
fn challenge(headers: &http::HeaderMap) -> String {
    headers
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A production daemon whose gateways accept `authorization_server`'s tokens and whose exchange
/// trusts `trusted` only; tools `search` (server a, needs `search`) and `billing` (server b).
async fn daemon(authorization_server: &Provider, trusted: &Provider) -> Daemon {
    let (as_url, as_keys) = (
        authorization_server.url.clone(),
        authorization_server.discovered(None),
    );
    let (trusted_url, trusted_keys) = (trusted.url.clone(), trusted.discovered(None));
    let d = Daemon::with(move |c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.authorization_servers = vec![AuthorizationServer {
            issuer: as_url,
            keys: as_keys,
        }];
        c.trusted_issuers = vec![TrustedIssuer {
            issuer: trusted_url,
            keys: trusted_keys,
            audience: "https://toolgate.example.com".into(),
            trust_domain: "example.com".into(),
        }];
    })
    .await;
    for tool in [
        json!({"tool_id": "search", "resource_uri": SERVER_A, "server_id": "a",
               "required_capabilities": ["search"]}),
        json!({"tool_id": "billing", "resource_uri": SERVER_B, "server_id": "b"}),
    ] {
        let (status, body) = d.call(Method::POST, "/v1/tools", Some(tool)).await;
        assert_eq!(status, 201, "{body}");
    }
    d
}

/// An access token of `idp` for `aud` with `scope`.
fn access_token(idp: &Provider, now: i64, aud: Value, scope: &str, jti: &str) -> String {
    idp.sign(
        None,
        &json!({"iss": idp.url, "sub": "user-1", "aud": aud, "scope": scope, "jti": jti,
                "client_id": "mcp-client", "iat": now, "exp": now + 300}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_server_a_is_refused_at_server_b_with_audience_mismatch() {
    let idp = Provider::start().await;
    let other = Provider::start().await;
    let d = daemon(&idp, &other).await;
    let up = upstream().await;
    let a = gateway(&d, &up, SERVER_A, "a", false).await;
    let b = gateway(&d, &up, SERVER_B, "b", false).await;
    let now = d.clock_now();

    // The daemon fetched the authorization server's keys and hands them out.
    let (status, list) = d.call(Method::GET, "/v1/authorization-servers", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["authorization_servers"][0]["issuer"], idp.url);
    assert_eq!(list["authorization_servers"][0]["state"], "fresh");
    // A guard's hint naming an issuer that is no authorization server (any more) is ignored:
    // the whole list answers, so the guard drops what was removed.
    let (status, hinted) = d
        .call(
            Method::GET,
            "/v1/authorization-servers?issuer=https%3A%2F%2Fremoved.example&kid=x",
            None,
        )
        .await;
    assert_eq!(status, 200, "{hinted}");
    assert_eq!(hinted, list);
    let (_, issuers) = d.call(Method::GET, "/v1/issuers", None).await;
    assert!(issuers["issuers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["issuer"] == idp.url.as_str() && i["role"] == "resource"));

    // RFC 9728: each gateway names toolgate and the authorization server.
    let (status, meta) = get_with_headers(&a.url, METADATA_PATH, &[]).await;
    assert_eq!(status, 200);
    let toolgate_issuer = a.guard.issuer().to_string();
    assert_eq!(
        meta["authorization_servers"],
        json!([toolgate_issuer, idp.url])
    );
    assert_eq!(meta["resource"], SERVER_A);

    // Server A's token: allowed at A, the upstream told whose subject it is (never the token).
    let token = access_token(&idp, now, json!(SERVER_A), "openid search", "t-1");
    let (status, _, body) = call(&a, &token, "search").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["subject"], "user-1");
    assert_eq!(body["result"]["issuer"], idp.url);
    assert_eq!(body["result"]["authorization"], Value::Null);

    // Replayed at server B: 401 invalid_token, "audience mismatch".
    let (status, headers, body) = call(&b, &token, "billing").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        challenge(&headers),
        format!(
            "Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"{}{METADATA_PATH}\"",
            b.url
        )
    );
    assert_eq!(body["check"], "audience");
    // ... and audited, through the gateway's decision reports.
    eventually("the audience denial is audited", || async {
        let (_, rows) = d
            .call(
                Method::GET,
                "/v1/audit?kind=gateway&decision=deny&check=audience",
                None,
            )
            .await;
        rows["events"]
            .as_array()
            .and_then(|e| e.iter().find(|r| r["target"] == "billing").cloned())
    })
    .await;
    let (_, rows) = d
        .call(Method::GET, "/v1/audit?kind=gateway&decision=allow", None)
        .await;
    assert!(rows["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["target"] == "search" && r["subject"] == "user-1"));

    // The authorization server is no trusted issuer: its token is no subject token.
    let (status, body) = d.exchange(exchange_body(&token, SERVER_A)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");

    // A trusted issuer of exchange is no authorization server of the gateways.
    let trusted_only = access_token(&other, now, json!(SERVER_A), "search", "t-2");
    let (status, headers, body) = call(&a, &trusted_only, "search").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        challenge(&headers).starts_with("Bearer error=\"invalid_token\""),
        "{headers:?}"
    );

    // Scopes against the tool's required capabilities.
    let narrow = access_token(&idp, now, json!(SERVER_A), "openid read", "t-3");
    let (status, headers, body) = call(&a, &narrow, "search").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["check"], "capabilities");
    assert!(challenge(&headers).contains("insufficient_scope"));

    // Several audiences: refused unless the gateway allows them.
    let multi = access_token(&idp, now, json!([SERVER_A, SERVER_B]), "search", "t-4");
    let (status, headers, _) = call(&a, &multi, "search").await;
    assert_eq!(status, 401);
    assert!(challenge(&headers).contains("error_description=\"audience mismatch\""));
    let lenient = gateway(&d, &up, SERVER_A, "a", true).await;
    let (status, _, body) = call(&lenient, &multi, "search").await;
    assert_eq!(status, 200, "{body}");
    let star = access_token(&idp, now, json!([SERVER_A, "*"]), "search", "t-5");
    let (status, _, _) = call(&lenient, &star, "search").await;
    assert_eq!(status, 401);

    // Expired (beyond the leeway) is refused.
    let (status, _, _) = call(
        &a,
        &idp.sign(
            None,
            &json!({"iss": idp.url, "sub": "user-1", "aud": SERVER_A, "scope": "search",
                    "jti": "t-6", "iat": now - 1000, "exp": now - 100}),
        ),
        "search",
    )
    .await;
    assert_eq!(status, 401);

    // A revoked subject (named with its issuer) is refused at the next sync.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(
                json!({"kind": "subject", "format": "iss_sub", "issuer": idp.url,
                        "value": "user-1", "reason": "test"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    eventually("the revocation reaches gateway A", || async {
        let (status, _, body) = call(&a, &token, "search").await;
        (status == 401 && body["check"] == "revocation").then_some(())
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_at_the_authorization_server_needs_no_restart() {
    let idp = Provider::start().await;
    let other = Provider::start().await;
    let d = daemon(&idp, &other).await;
    let up = upstream().await;
    let a = gateway(&d, &up, SERVER_A, "a", false).await;
    let now = d.clock_now();
    let before = access_token(&idp, now, json!(SERVER_A), "search", "r-1");
    let (status, _, body) = call(&a, &before, "search").await;
    assert_eq!(status, 200, "{body}");

    // The provider signs with a new key (the old one still published): a kid nobody has seen.
    idp.with(|b| b.keys.insert(0, SigningKey::generate().unwrap()));
    let after = access_token(&idp, now, json!(SERVER_A), "search", "r-2");
    assert_ne!(header_of(&after)["kid"], header_of(&before)["kid"]);
    // Its first sighting asks the guard, and through it the daemon, for the keys; after some
    // round of the guard's refresher the token passes, without a restart of either.
    let (status, headers, _) = call(&a, &after, "search").await;
    assert_eq!(status, 401);
    assert!(challenge(&headers).starts_with("Bearer error=\"invalid_token\""));
    let mut rounds = a.guard.rounds();
    let passed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            rounds.changed().await.unwrap();
            let (status, _, _) = call(&a, &after, "search").await;
            if status == 200 {
                return;
            }
        }
    })
    .await;
    assert!(
        passed.is_ok(),
        "a token signed with the new key is still refused"
    );
    // The old key, still published, still works.
    let (status, _, _) = call(&a, &before, "search").await;
    assert_eq!(status, 200);
    d.stop().await;
}
