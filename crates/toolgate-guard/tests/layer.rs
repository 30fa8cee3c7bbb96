//! The tower layer against a stand-in toolgate (its issuer, one signing key, three tools, no
//! revocations): each JSON-RPC message of an MCP request is decided, refusals never reach the
//! service, and the decision travels to it as request extensions.
#![cfg(feature = "tower")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use toolgate_guard::clock::{Clock, SystemClock};
use toolgate_guard::jose::{jws, SigningKey};
use toolgate_guard::mtls::ClientCertificate;
use toolgate_guard::verify::Allowed;
use toolgate_guard::{Guard, GuardLayer, GuardedBody};
use tower_layer::Layer;
use tower_service::Service;

const ISSUER: &str = "http://toolgate.test";
const SERVER: &str = "https://tools.example.com/servers/search";
const PUBLIC: &str = "http://tools.test";
const METADATA: &str = "http://tools.test/.well-known/oauth-protected-resource";

fn tool(id: &str, server_id: &str, resource: &str) -> Value {
    json!({
        "tool_id": id, "name": id, "description": "", "resource_uri": resource,
        "server_id": server_id, "required_capabilities": [], "max_blast_radius": "",
        "requires_execution": false, "allowed_operations": [], "allowed_targets": [],
        "protocols": ["mcp"], "registered_at": "", "updated_at": "",
    })
}

/// toolgate as the guard reads it: metadata, keys, tools, an unchanging revocation digest.
async fn stand_in_toolgate(key: &SigningKey) -> String {
    let jwks = json!({"keys": [key.public_jwk().to_json()]}).to_string();
    let mut bound_tool = tool("bound", "search", &format!("{SERVER}/tools/bound"));
    bound_tool["sender_constraint"] = json!("mtls");
    let tools = json!({"tools": [
        tool("search", "search", &format!("{SERVER}/tools/search")),
        tool("admin", "search", &format!("{SERVER}/tools/admin")),
        tool("billing", "billing", "https://billing.example.com/mcp"),
        bound_tool,
    ]})
    .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (jwks, tools) = (jwks.clone(), tools.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = match req.uri().path() {
                    "/.well-known/oauth-authorization-server" => {
                        json!({"issuer": ISSUER}).to_string()
                    }
                    "/v1/identity/jwks" => jwks.clone(),
                    "/v1/tools" => tools.clone(),
                    "/v1/authorization-servers" => json!({"authorization_servers": []}).to_string(),
                    "/v1/federation/revocation-hash" => json!({"hash": ""}).to_string(),
                    _ => json!({"revocations": []}).to_string(),
                };
                std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                    body,
                )))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    url
}

fn token_for(key: &SigningKey, audience: &str) -> String {
    token_with(key, audience, None)
}

/// A token whose `cnf` is `cnf` (a certificate-bound one: `{"x5t#S256": ...}`).
fn token_with(key: &SigningKey, audience: &str, cnf: Option<Value>) -> String {
    let now = SystemClock.now();
    let mut claims = Map::new();
    for (name, value) in [
        ("iss", json!(ISSUER)),
        ("sub", json!("wimse://test/agent")),
        ("aud", json!(audience)),
        ("iat", json!(now)),
        ("exp", json!(now + 300)),
        ("jti", json!(format!("jti-{audience}"))),
    ] {
        claims.insert(name.into(), value);
    }
    if let Some(cnf) = cnf {
        claims.insert("cnf".into(), cnf);
    }
    jws::encode_signed(key, jws::TYP_ACCESS_TOKEN, &claims).unwrap()
}

/// The protected service: counts the requests it sees and answers the verified subject.
#[derive(Clone, Default)]
struct Handler {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Service<Request<GuardedBody<Full<Bytes>>>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GuardedBody<Full<Bytes>>>) -> Self::Future {
        let sub = req
            .extensions()
            .get::<Allowed>()
            .map(|a| a.claims.sub.clone())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(sub.clone());
        Box::pin(async move { Ok(Response::new(Full::new(Bytes::from(sub)))) })
    }
}

struct Answer {
    status: StatusCode,
    challenge: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn send<S>(svc: &mut S, method: Method, path: &str, token: Option<&str>, body: &str) -> Answer
where
    S: Service<
        Request<Full<Bytes>>,
        Response = Response<http_body_util::Either<Full<Bytes>, Full<Bytes>>>,
        Error = Infallible,
    >,
{
    send_over(svc, method, path, token, body, None).await
}

/// [`send`] on a connection whose TLS handshake verified `cert` (the listener's extension).
async fn send_over<S>(
    svc: &mut S,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
    cert: Option<&ClientCertificate>,
) -> Answer
where
    S: Service<
        Request<Full<Bytes>>,
        Response = Response<http_body_util::Either<Full<Bytes>, Full<Bytes>>>,
        Error = Infallible,
    >,
{
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    if let Some(cert) = cert {
        req.extensions_mut().insert(cert.clone());
    }
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let resp = svc.call(req).await.unwrap();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        challenge,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn guard(key: &SigningKey) -> Arc<Guard> {
    let toolgate = stand_in_toolgate(key).await;
    Guard::builder(toolgate, SERVER)
        .server_id("search")
        .public_url(PUBLIC)
        .connect()
        .await
        .unwrap()
}

fn call(name: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}}).to_string()
}

#[tokio::test]
async fn the_mcp_layer_decides_every_message() {
    let key = SigningKey::generate().unwrap();
    let guard = guard(&key).await;
    let handler = Handler::default();
    let mut svc = GuardLayer::mcp(guard).layer(handler.clone());
    let search = token_for(&key, &format!("{SERVER}/tools/search"));
    let admin = token_for(&key, &format!("{SERVER}/tools/admin"));
    let billing = token_for(&key, "https://billing.example.com/mcp");
    let mismatch = format!(
        "Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"{METADATA}\""
    );
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;

    // Server-level messages: a token for any tool of this server.
    let r = send(&mut svc, Method::POST, "/mcp", Some(&admin), init).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "wimse://test/agent");
    let r = send(&mut svc, Method::GET, "/mcp", Some(&search), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A tools/call: a token for exactly that tool.
    let r = send(
        &mut svc,
        Method::POST,
        "/mcp",
        Some(&search),
        &call("search"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(handler.seen.lock().unwrap().len(), 3);

    let r = send(
        &mut svc,
        Method::POST,
        "/mcp",
        Some(&admin),
        &call("search"),
    )
    .await;
    assert_eq!(
        (r.status, r.challenge.as_str()),
        (StatusCode::UNAUTHORIZED, mismatch.as_str())
    );
    assert_eq!(r.json()["check"], "audience");
    // One refused message refuses the whole batch.
    let batch = format!("[{}, {}]", call("search"), call("admin"));
    let r = send(&mut svc, Method::POST, "/mcp", Some(&search), &batch).await;
    assert_eq!(
        (r.status, r.challenge.as_str()),
        (StatusCode::UNAUTHORIZED, mismatch.as_str())
    );
    // Another server's token opens nothing here, not even initialize.
    let r = send(&mut svc, Method::POST, "/mcp", Some(&billing), init).await;
    assert_eq!(r.status, 401, "{}", r.body);
    // No token: the bare challenge.
    let r = send(&mut svc, Method::POST, "/mcp", None, &call("search")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.challenge,
        format!("Bearer resource_metadata=\"{METADATA}\"")
    );
    // What two JSON readers could read differently is refused before any decision.
    for (body, description) in [
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin","name":"search"}}"#,
            "duplicate member name in the JSON-RPC message",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":["tools/call"]}"#,
            "method must be a string",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            "tools/call needs a string params.name",
        ),
        ("[]", "an empty batch is not a JSON-RPC request"),
        (
            &format!("[{}]", vec![init; 65].join(",")),
            "the batch carries more messages than this server accepts",
        ),
    ] {
        let r = send(&mut svc, Method::POST, "/mcp", Some(&search), body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(
            r.json(),
            json!({"error": "invalid_request", "error_description": description})
        );
    }
    assert_eq!(
        handler.seen.lock().unwrap().len(),
        3,
        "a refused request reached the service"
    );

    // The guard answers its RFC 9728 metadata itself, without a token.
    let r = send(
        &mut svc,
        Method::GET,
        "/.well-known/oauth-protected-resource",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["resource"], SERVER);
    assert_eq!(r.json()["authorization_servers"], json!([ISSUER]));
}

fn tool_for(parts: &http::request::Parts) -> Option<String> {
    parts.uri.path().strip_prefix("/tools/").map(str::to_string)
}

#[tokio::test]
async fn the_path_layer_names_the_tool_from_the_path() {
    let key = SigningKey::generate().unwrap();
    let guard = guard(&key).await;
    let mut svc = GuardLayer::new(guard, tool_for).layer(Handler::default());
    let search = token_for(&key, &format!("{SERVER}/tools/search"));
    let r = send(&mut svc, Method::POST, "/tools/search", Some(&search), "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&mut svc, Method::POST, "/tools/admin", Some(&search), "{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["check"], "audience");
    let r = send(&mut svc, Method::GET, "/status", Some(&search), "").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_builder_starts_from_the_defaults() {
    let b = Guard::builder("http://127.0.0.1:8693", SERVER).server_id("search");
    let cfg = b.config();
    assert_eq!(cfg.public_url, "https://tools.example.com");
    assert_eq!(cfg.server_id.as_deref(), Some("search"));
    assert_eq!(cfg.max_staleness, std::time::Duration::from_secs(5));
    assert_eq!(cfg.poll_interval, std::time::Duration::from_millis(250));
    assert_eq!(cfg.leeway, 60);
    assert_eq!(cfg.max_batch, 64);
    assert_eq!((cfg.dpop_window, cfg.dpop_nonce), (60, false));
}

#[tokio::test]
async fn a_certificate_bound_token_needs_the_connections_certificate() {
    let key = SigningKey::generate().unwrap();
    let guard = guard(&key).await;
    let handler = Handler::default();
    let mut svc = GuardLayer::mcp(guard).layer(handler.clone());
    let mine = ClientCertificate::new(vec![b"the agent's certificate".to_vec()]).unwrap();
    let other = ClientCertificate::new(vec![b"another certificate".to_vec()]).unwrap();
    let bound_aud = format!("{SERVER}/tools/bound");
    let bound = token_with(
        &key,
        &bound_aud,
        Some(json!({"x5t#S256": mine.thumbprint()})),
    );
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"certificate binding mismatch\", resource_metadata=\"{METADATA}\""
    );
    let r = send_over(
        &mut svc,
        Method::POST,
        "/mcp",
        Some(&bound),
        &call("bound"),
        Some(&mine),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for cert in [Some(&other), None] {
        let r = send_over(
            &mut svc,
            Method::POST,
            "/mcp",
            Some(&bound),
            &call("bound"),
            cert,
        )
        .await;
        assert_eq!(
            (r.status, r.challenge.as_str()),
            (StatusCode::UNAUTHORIZED, challenge.as_str())
        );
        assert_eq!(r.json()["check"], "mtls");
        assert!(!r.body.contains(&mine.thumbprint()) && !r.challenge.contains(&mine.thumbprint()));
    }
    // An unbound token for the tool that requires binding, even over the right connection.
    let unbound = token_for(&key, &bound_aud);
    let r = send_over(
        &mut svc,
        Method::POST,
        "/mcp",
        Some(&unbound),
        &call("bound"),
        Some(&mine),
    )
    .await;
    assert_eq!(
        (r.status, r.challenge.as_str()),
        (StatusCode::UNAUTHORIZED, challenge.as_str())
    );
    // A bound token at server level (initialize) still needs its certificate.
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
    let r = send_over(&mut svc, Method::POST, "/mcp", Some(&bound), init, None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = send_over(
        &mut svc,
        Method::POST,
        "/mcp",
        Some(&bound),
        init,
        Some(&mine),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(handler.seen.lock().unwrap().len(), 2);
    // The metadata says this server takes certificate-bound tokens.
    let r = send(
        &mut svc,
        Method::GET,
        "/.well-known/oauth-protected-resource",
        None,
        "",
    )
    .await;
    assert_eq!(r.json()["tls_client_certificate_bound_access_tokens"], true);
}

#[tokio::test]
async fn a_dpop_request_through_the_layer_gets_the_guards_nonce() {
    use toolgate_guard::dpop::{sign_proof, ProofClaims};
    let key = SigningKey::generate().unwrap();
    let toolgate = stand_in_toolgate(&key).await;
    let guard = Guard::builder(toolgate, SERVER)
        .server_id("search")
        .public_url(PUBLIC)
        .dpop_nonce(true)
        .dpop_window(30)
        .connect()
        .await
        .unwrap();
    let mut svc = GuardLayer::mcp(guard.clone()).layer(Handler::default());
    let holder = SigningKey::generate().unwrap();
    let token = token_with(
        &key,
        &format!("{SERVER}/tools/search"),
        Some(json!({"jkt": holder.public_jwk().thumbprint()})),
    );
    let proof = |nonce: Option<&str>| {
        sign_proof(
            &holder,
            &ProofClaims {
                htm: "POST",
                htu: &format!("{PUBLIC}/mcp"),
                access_token: Some(&token),
                nonce,
                iat: SystemClock.now(),
            },
        )
        .unwrap()
    };
    let send = |proof: String| {
        Request::builder()
            .method(Method::POST)
            .uri("/mcp")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .body(Full::new(Bytes::from(call("search"))))
            .unwrap()
    };
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let resp = svc.call(send(proof(None))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let nonce = resp.headers()["dpop-nonce"].to_str().unwrap().to_string();
    assert_eq!(guard.dpop_nonce().as_deref(), Some(nonce.as_str()));
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let resp = svc.call(send(proof(Some(&nonce)))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("dpop-nonce"));
    // The metadata: DPoP accepted, not required on this server.
    let meta = guard.metadata();
    assert_eq!(meta["dpop_bound_access_tokens_required"], false);
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"])
    );
}
