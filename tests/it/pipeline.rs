//! One pipeline behind every entry point: the REST verify endpoint, the guard and the gateway
//! give the same check for the same token and target; server-level requests are checked against
//! the tools they reach; execution-bound tokens work end to end and only once.

use super::harness::*;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use toolgate::clock::{Clock, SystemClock};
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig};
use toolgate::verify::{body_hash, Target};

const SERVER: &str = "https://tools.example.com/srv";
const FOREIGN: &str = "https://other.example.com/mcp";

fn resource(tool: &str) -> String {
    format!("{SERVER}/{tool}")
}

/// The tools of server `srv` (and one of another server), registered before any guard starts.
async fn register(daemon: &Daemon) {
    for tool in [
        json!({"tool_id": "plain", "resource_uri": resource("plain"), "server_id": "srv"}),
        json!({"tool_id": "capped", "resource_uri": resource("capped"), "server_id": "srv",
               "required_capabilities": ["admin"]}),
        json!({"tool_id": "narrow", "resource_uri": resource("narrow"), "server_id": "srv",
               "max_blast_radius": "function"}),
        json!({"tool_id": "doomed", "resource_uri": resource("doomed"), "server_id": "srv"}),
        json!({"tool_id": "exec", "resource_uri": resource("exec"), "server_id": "srv",
               "requires_execution": true, "allowed_operations": ["run"]}),
        json!({"tool_id": "foreign", "resource_uri": FOREIGN, "server_id": "other"}),
    ] {
        let (status, body) = daemon.call(Method::POST, "/v1/tools", Some(tool)).await;
        assert_eq!(status, 201, "{body}");
    }
}

async fn token(daemon: &Daemon, claims: Value, audience: &str) -> String {
    let (status, body) = daemon
        .exchange(exchange_body(&stub(claims), audience))
        .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn revoke(daemon: &Daemon, kind: &str, value: &str) {
    let (status, body) = daemon
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": kind, "value": value, "reason": "pipeline test"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// A small upstream MCP server: answers every POST with a JSON-RPC result, counting calls.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counted = counted.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        counted.fetch_add(1, Ordering::SeqCst);
                        let id = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v.get("id").cloned())
                            .unwrap_or(Value::Null);
                        let answer = json!({"jsonrpc": "2.0", "id": id, "result": {}});
                        let mut resp = Response::new(Full::new(Bytes::from(answer.to_string())));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, calls)
}

struct Gateway {
    url: String,
    _stop: oneshot::Sender<()>,
}

fn guard_config(daemon: &Daemon, public_url: &str) -> GuardConfig {
    GuardConfig::new(&daemon.url, SERVER)
        .server_id("srv")
        .public_url(public_url)
        .max_staleness(Duration::from_secs(3600))
}

async fn gateway(daemon: &Daemon, upstream: &str) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let cfg = GatewayConfig {
        listen: addr,
        upstream: upstream.to_string(),
        upstream_tls: Default::default(),
        guard: guard_config(daemon, &url),
        mcp_path: "/mcp".into(),
        routes: vec![("/exec-route".into(), "exec".into())],
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: Default::default(),
    };
    // The gateway decides on the daemon's (manual) clock, as one machine's gateway would.
    let clock: Arc<dyn Clock> = daemon.clock.clone();
    let guard = Guard::connect(cfg.guard.clone(), clock).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(toolgate::gateway::serve(listener, guard, cfg, async move {
        let _ = stopped.await;
    }));
    Gateway { url, _stop: stop }
}

/// POST a body to a URL with a bearer token: status and JSON body.
async fn post(url: &str, token: &str, body: &[u8]) -> (u16, Value) {
    let resp = raw_post(url, token, body).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn raw_post(url: &str, token: &str, body: &[u8]) -> Response<Incoming> {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri.path())
        .header("host", authority)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

fn tool_call(name: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": name, "arguments": {"q": "x"}}})
    .to_string()
    .into_bytes()
}

fn server_call() -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read",
           "params": {"uri": "file:///readme"}})
    .to_string()
    .into_bytes()
}

/// The check an answer names: `allow` for a success.
fn check_of(status: u16, body: &Value) -> String {
    if status == 200 {
        "allow".into()
    } else {
        body["check"].as_str().unwrap_or("none").to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_guard_and_gateway_give_the_same_check() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let plain = token(&daemon, json!({"sub": "alice"}), &resource("plain")).await;
    let lacks_admin = token(
        &daemon,
        json!({"sub": "alice", "caps": ["read"]}),
        &resource("capped"),
    )
    .await;
    let wide = token(
        &daemon,
        json!({"sub": "alice", "blast_radius": "namespace"}),
        &resource("narrow"),
    )
    .await;
    let doomed = token(&daemon, json!({"sub": "alice"}), &resource("doomed")).await;
    let mallory = token(&daemon, json!({"sub": "mallory"}), &resource("plain")).await;
    let foreign = token(&daemon, json!({"sub": "alice"}), FOREIGN).await;
    let server = token(&daemon, json!({"sub": "alice"}), SERVER).await;
    revoke(&daemon, "tool", "doomed").await;
    revoke(
        &daemon,
        "subject",
        "wimse://dev.local/ns/default/sa/mallory",
    )
    .await;

    let (up, _) = upstream().await;
    let gw = gateway(&daemon, &up).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let guard = Guard::connect(guard_config(&daemon, &gw.url), clock)
        .await
        .unwrap();

    // (token, tool or None for a server-level request, the check every entry point names)
    let cases: Vec<(&str, &str, Option<&str>, &str)> = vec![
        ("own tool", &plain, Some("plain"), "allow"),
        ("another tool's token", &plain, Some("capped"), "audience"),
        ("unregistered tool", &plain, Some("ghost"), "registration"),
        (
            "missing capability",
            &lacks_admin,
            Some("capped"),
            "capabilities",
        ),
        (
            "blast radius too wide",
            &wide,
            Some("narrow"),
            "blast_radius",
        ),
        ("revoked tool", &doomed, Some("doomed"), "revocation"),
        ("revoked subject", &mallory, Some("plain"), "revocation"),
        ("not a JWS", "not-a-token", Some("plain"), "malformed"),
        ("server level, a tool's token", &plain, None, "allow"),
        ("server level, the server's token", &server, None, "allow"),
        (
            "server level, missing capability",
            &lacks_admin,
            None,
            "capabilities",
        ),
        ("server level, blast radius", &wide, None, "blast_radius"),
        ("server level, revoked tool", &doomed, None, "revocation"),
        (
            "server level, revoked subject",
            &mallory,
            None,
            "revocation",
        ),
        (
            "server level, another server's token",
            &foreign,
            None,
            "audience",
        ),
    ];
    for (name, token, tool, expect) in cases {
        let rest_body = match tool {
            Some(t) => json!({"token": token, "tool_id": t}),
            None => json!({"token": token, "resource": SERVER, "server_id": "srv"}),
        };
        let (status, body) = daemon
            .call(Method::POST, "/v1/mcp/verify", Some(rest_body))
            .await;
        let rest = check_of(status, &body);

        let target = match tool {
            Some(t) => Target::Tool(t),
            None => guard.server_target(),
        };
        let parts = Request::builder()
            .method(Method::POST)
            .uri("/mcp")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let guarded = match guard.check_http(&parts, target, None) {
            Ok(_) => "allow".to_string(),
            Err(r) => r.check.map(|c| c.name()).unwrap_or("none").to_string(),
        };

        let msg = match tool {
            Some(t) => tool_call(t),
            None => server_call(),
        };
        let (status, body) = post(&format!("{}/mcp", gw.url), token, &msg).await;
        let gatewayed = check_of(status, &body);

        assert_eq!(
            (rest.as_str(), guarded.as_str(), gatewayed.as_str()),
            (expect, expect, expect),
            "{name}: REST, guard and gateway disagree"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_leeway_comes_from_configuration() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let plain = token(&daemon, json!({"sub": "alice"}), &resource("plain")).await;
    let exp = claims_of(&plain)["exp"].as_i64().unwrap();
    // A guard whose clock is 10 s past the token's expiry: allowed with a 60 s leeway only.
    let late: Arc<dyn Clock> = Arc::new(toolgate::clock::ManualClock::new(exp + 10));
    for (leeway, expect) in [(60, "allow"), (0, "expired")] {
        // The guard's own staleness is measured on its clock too: it syncs at start.
        let guard = Guard::connect(
            guard_config(&daemon, "https://tools.example.com").leeway(leeway),
            late.clone(),
        )
        .await
        .unwrap();
        let got = match guard.check(&toolgate::verify::DecisionRequest::new(
            &plain,
            Target::Tool("plain"),
        )) {
            Ok(_) => "allow".to_string(),
            Err(r) => r.check.unwrap().name().to_string(),
        };
        assert_eq!(got, expect, "leeway {leeway}");
    }
}

/// Exchange for a token bound to one execution of `exec`.
async fn exec_token(daemon: &Daemon, htu: &str, body: &[u8]) -> (u16, Value) {
    let mut req = exchange_body(&stub(json!({"sub": "alice"})), &resource("exec"));
    req["execution_scope"] = json!({
        "htm": "POST", "htu": htu, "exec_act": "run", "inp_hash": body_hash(body),
        "target": "repo:demo",
    });
    daemon.exchange(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_binding_through_rest_verify() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let htu = "https://tools.example.com/srv/exec";
    let body = br#"{"op":"run","args":[1,2]}"#;
    let (status, issued) = exec_token(&daemon, htu, body).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(
        issued["expires_in"], 30,
        "an execution-bound token lives 30 s"
    );
    let tok = issued["access_token"].as_str().unwrap().to_string();
    let claims = claims_of(&tok);
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], htu);
    assert_eq!(claims["exec_act"], "run");
    assert_eq!(claims["inp_hash"], body_hash(body));
    assert!(claims["nonce"].as_str().unwrap().len() >= 16, "{claims}");

    let verify = |extra: Value| {
        let mut b = json!({"token": tok, "tool_id": "exec"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let denied = |status: u16, body: &Value, why: &str| {
        assert_eq!(status, 403, "{why}: {body}");
        assert_eq!(body["check"], "execution", "{why}: {body}");
    };
    // Without the request's method and URL, nothing binds: denied (and the nonce is not spent).
    let (s, b) = daemon
        .call(
            Method::POST,
            "/v1/mcp/verify",
            Some(verify(json!({"request_body_hash": body_hash(body)}))),
        )
        .await;
    denied(s, &b, "no htm/htu");
    // Another body, method or URL: denied.
    for (extra, why) in [
        (
            json!({"request_body_hash": body_hash(b"{}"), "htm": "POST", "htu": htu}),
            "changed body",
        ),
        (
            json!({"request_body_hash": body_hash(body), "htm": "PUT", "htu": htu}),
            "other method",
        ),
        (
            json!({"request_body_hash": body_hash(body), "htm": "POST",
                   "htu": "https://tools.example.com/srv/other"}),
            "other URL",
        ),
    ] {
        let (s, b) = daemon
            .call(Method::POST, "/v1/mcp/verify", Some(verify(extra)))
            .await;
        denied(s, &b, why);
    }
    // The exact call, with the URL written differently but equal after RFC 9449 normalisation.
    let exact = verify(json!({"request_body_hash": body_hash(body), "htm": "POST",
                              "htu": "HTTPS://Tools.Example.com:443/srv/./exec?x=1"}));
    let (s, b) = daemon
        .call(Method::POST, "/v1/mcp/verify", Some(exact.clone()))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["claims"]["execution"]["exec_act"], "run", "{b}");
    // Once only: the same call again is a replay.
    let (s, b) = daemon
        .call(Method::POST, "/v1/mcp/verify", Some(exact))
        .await;
    denied(s, &b, "replay");
    assert_eq!(b["error_description"], "execution nonce was already used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_scope_is_validated_at_exchange() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let hash = body_hash(b"x");
    for (scope, why) in [
        (json!("text"), "not an object"),
        (
            json!({"htu": "https://a/x", "exec_act": "run", "inp_hash": hash}),
            "no htm",
        ),
        (
            json!({"htm": "post", "htu": "https://a/x", "exec_act": "run", "inp_hash": hash}),
            "lower-case htm",
        ),
        (
            json!({"htm": "POST", "htu": "ftp://a/x", "exec_act": "run", "inp_hash": hash}),
            "not http",
        ),
        (
            json!({"htm": "POST", "htu": "https://a/x", "exec_act": "run"}),
            "no inp_hash",
        ),
        (
            json!({"htm": "POST", "htu": "https://a/x", "exec_act": "run", "inp_hash": "abc"}),
            "short hash",
        ),
        (
            json!({"htm": "POST", "htu": "https://a/x", "inp_hash": hash}),
            "no exec_act",
        ),
        (
            json!({"htm": "POST", "htu": "https://a/x", "exec_act": "run", "inp_hash": hash,
                "nonce": "short"}),
            "short nonce",
        ),
        (
            json!({"htm": "POST", "htu": "https://a/x", "exec_act": "run", "inp_hash": hash,
                "extra": 1}),
            "unknown field",
        ),
    ] {
        let mut req = exchange_body(&stub(json!({"sub": "alice"})), &resource("exec"));
        req["execution_scope"] = scope;
        let (status, body) = daemon.exchange(req).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"], "invalid_request", "{why}: {body}");
    }
    // A client-chosen nonce is used once across tokens: a second token with it is a replay.
    let scope = json!({"htm": "POST", "htu": "https://a/x", "exec_act": "run",
                       "inp_hash": hash, "nonce": "client-nonce-0123456789"});
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let mut req = exchange_body(&stub(json!({"sub": "alice"})), &resource("exec"));
        req["execution_scope"] = scope.clone();
        let (status, body) = daemon.exchange(req).await;
        assert_eq!(status, 200, "{body}");
        tokens.push(body["access_token"].as_str().unwrap().to_string());
    }
    let outcomes: Vec<u16> = {
        let mut v = Vec::new();
        for t in &tokens {
            let (s, _) = daemon
                .call(
                    Method::POST,
                    "/v1/mcp/verify",
                    Some(
                        json!({"token": t, "tool_id": "exec", "request_body_hash": hash,
                                "htm": "POST", "htu": "https://a/x"}),
                    ),
                )
                .await;
            v.push(s);
        }
        v
    };
    assert_eq!(outcomes, vec![200, 403]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_binding_through_the_gateway() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let (up, calls) = upstream().await;
    let gw = gateway(&daemon, &up).await;
    let mcp = format!("{}/mcp", gw.url);

    // The whole JSON-RPC message as sent is what the token is bound to.
    let msg = tool_call("exec");
    let (status, issued) = exec_token(&daemon, &mcp, &msg).await;
    assert_eq!(status, 200, "{issued}");
    let tok = issued["access_token"].as_str().unwrap().to_string();
    let (s, b) = post(&mcp, &tok, &msg).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Replayed: refused, the upstream never sees it.
    let (s, b) = post(&mcp, &tok, &msg).await;
    assert_eq!(s, StatusCode::FORBIDDEN.as_u16(), "{b}");
    assert_eq!(b["check"], "execution", "{b}");
    // A changed body under a fresh token for the original body: refused.
    let (_, issued) = exec_token(&daemon, &mcp, &msg).await;
    let tok = issued["access_token"].as_str().unwrap().to_string();
    let mut changed = msg.clone();
    changed.extend_from_slice(b" ");
    let (s, b) = post(&mcp, &tok, &changed).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["check"], "execution", "{b}");
    // A token bound to another URL of the gateway: refused.
    let (_, issued) = exec_token(&daemon, &format!("{}/elsewhere", gw.url), &msg).await;
    let tok = issued["access_token"].as_str().unwrap().to_string();
    let (s, b) = post(&mcp, &tok, &msg).await;
    assert_eq!((s, b["check"].as_str()), (403, Some("execution")), "{b}");
    // A plain HTTP route to the same tool: the gateway reads and hashes the body there too.
    let route = format!("{}/exec-route/run", gw.url);
    let body = br#"{"plain":"http"}"#;
    let (_, issued) = exec_token(&daemon, &route, body).await;
    let tok = issued["access_token"].as_str().unwrap().to_string();
    let (s, b) = post(&route, &tok, body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // An unbound token for the tool: refused.
    let unbound = token(&daemon, json!({"sub": "alice"}), &resource("exec")).await;
    let (s, b) = post(&mcp, &unbound, &msg).await;
    assert_eq!((s, b["check"].as_str()), (403, Some("execution")), "{b}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_level_without_a_server_id_accepts_only_that_resource() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let plain = token(&daemon, json!({"sub": "alice"}), &resource("plain")).await;
    let verify = |body: Value| daemon.call(Method::POST, "/v1/mcp/verify", Some(body));
    // A tool's token at another server's resource, no server named: refused.
    let (s, b) = verify(json!({"token": plain, "resource": FOREIGN})).await;
    assert_eq!((s, b["check"].as_str()), (403, Some("audience")), "{b}");
    // At exactly its resource: allowed (the tools sharing it are checked).
    let (s, b) = verify(json!({"token": plain, "resource": resource("plain")})).await;
    assert_eq!(s, 200, "{b}");
    // Named server: the tool's resource counts only for its own server.
    let (s, b) = verify(json!({"token": plain, "resource": FOREIGN, "server_id": "other"})).await;
    assert_eq!((s, b["check"].as_str()), (403, Some("audience")), "{b}");
    // The resource is compared in canonical form; a non-URI is a 400.
    let (s, _) =
        verify(json!({"token": plain, "resource": "HTTPS://TOOLS.example.com/srv/plain"})).await;
    assert_eq!(s, 200);
    let (s, b) = verify(json!({"token": plain, "resource": "not a uri"})).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_bound_token_is_no_pass_for_the_server_or_a_second_reader() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    let (up, calls) = upstream().await;
    let gw = gateway(&daemon, &up).await;
    let mcp = format!("{}/mcp", gw.url);
    let msg = tool_call("exec");
    let (_, issued) = exec_token(&daemon, &mcp, &msg).await;
    let tok = issued["access_token"].as_str().unwrap().to_string();
    // The same token on a server-level message: refused, check execution.
    let (s, b) = post(&mcp, &tok, &server_call()).await;
    assert_eq!((s, b["check"].as_str()), (403, Some("execution")), "{b}");
    // A body whose duplicate member names two readers would see differently: 400, never
    // decided, never forwarded.
    let dup = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"exec"},"method":"ping"}"#;
    let (s, b) = post(&mcp, &tok, dup).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The exact call still goes through once.
    let (s, b) = post(&mcp, &tok, &msg).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_display_name_picks_no_tool() {
    let daemon = Daemon::dev().await;
    register(&daemon).await;
    for (id, name) in [("s1.search", "search"), ("s2.search", "search")] {
        let (status, body) = daemon
            .call(
                Method::POST,
                "/v1/tools",
                Some(json!({"tool_id": id, "name": name, "server_id": "srv",
                            "resource_uri": resource(id)})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (up, calls) = upstream().await;
    let gw = gateway(&daemon, &up).await;
    let s1 = token(&daemon, json!({"sub": "alice"}), &resource("s1.search")).await;
    let (s, b) = post(&format!("{}/mcp", gw.url), &s1, &tool_call("search")).await;
    assert_eq!((s, b["check"].as_str()), (403, Some("registration")), "{b}");
    // By its id it is found, and decided against exactly that tool.
    let (s, b) = post(&format!("{}/mcp", gw.url), &s1, &tool_call("s1.search")).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
