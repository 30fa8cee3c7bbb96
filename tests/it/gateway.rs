//! The guard and `toolgate gateway` against a real toolgate and a recording upstream: the
//! resource server's answers header by header, MCP semantics (single and batch messages),
//! streaming, plain-HTTP routes, revocations at the next sync, and failing closed.

use super::harness::*;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use toolgate::clock::{Clock, ManualClock, SystemClock};
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig, GuardedBody, Protected};
use toolgate::verify::TokenClaims;

const SERVER: &str = "https://mcp.example.com/servers/a";
const SEARCH: &str = "https://mcp.example.com/servers/a/tools/search";
const ADMIN_TOOL: &str = "https://mcp.example.com/servers/a/tools/admin";
const BILLING: &str = "https://billing.example.com/mcp";
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
const UPSTREAM_SESSION: &str = "upstream-session-7";
const CAEP_SESSION_REVOKED: &str =
    "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

// ---------------------------------------------------------------------------------------------
// Bodies that yield frames over time.

/// A body fed by a channel: each `Bytes` sent is one frame, the body ends when the sender drops.
struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type UpBody = UnsyncBoxBody<Bytes, Infallible>;

fn full_body(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed_unsync()
}

// ---------------------------------------------------------------------------------------------
// The upstream: records every request, answers like a small MCP / HTTP tool server.

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    /// Path and query, as the upstream received them.
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Lets a stream's second event go: the test releases it once the first one arrived.
    release: Arc<Notify>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| upstream_answer(record.clone(), gate.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        url: format!("http://{addr}"),
        seen,
        release,
    }
}

/// An event stream: `first`, then `second` once `release` is notified.
fn sse(first: &'static str, second: Option<(&'static str, Arc<Notify>)>) -> UpBody {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from(first)).await;
        if let Some((second, release)) = second {
            release.notified().await;
            let _ = tx.send(Bytes::from(second)).await;
        }
    });
    ChanBody(rx).boxed_unsync()
}

fn echo(msg: &Value) -> Option<Value> {
    let id = msg.get("id")?;
    Some(json!({"jsonrpc": "2.0", "id": id, "result": {"method": msg["method"]}}))
}

async fn upstream_answer(
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let mut builder = Response::builder();
    if path == "/mcp" {
        builder = builder.header("mcp-session-id", UPSTREAM_SESSION);
    }
    let resp = match (&parts.method, path) {
        (&Method::POST, "/mcp") if body.windows(8).any(|w| w == b"\"stream\"") => builder
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(sse(
                "event: message\ndata: {\"first\":true}\n\n",
                Some(("event: message\ndata: {\"second\":true}\n\n", release)),
            )),
        (&Method::POST, "/mcp") => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answers: Option<Value> = match &v {
                Value::Array(batch) => {
                    let all: Vec<Value> = batch.iter().filter_map(echo).collect();
                    (!all.is_empty()).then_some(Value::Array(all))
                }
                one => echo(one),
            };
            match answers {
                Some(a) => builder
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(full_body(a.to_string())),
                None => builder.status(StatusCode::ACCEPTED).body(full_body("")),
            }
        }
        (&Method::GET, "/mcp") => builder
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(sse(
                "event: message\ndata: {\"server\":\"hello\"}\n\n",
                None,
            )),
        (&Method::DELETE, "/mcp") => builder.body(full_body("")),
        _ => builder.body(full_body(
            parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        )),
    };
    Ok(resp.unwrap())
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP client: one connection per request, status and headers as sent.

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    fn challenge(&self) -> String {
        self.header("www-authenticate")
            .unwrap_or_else(|| panic!("no WWW-Authenticate on a {} answer", self.status))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn authority(base: &str) -> &str {
    base.strip_prefix("http://").unwrap()
}

async fn try_open<B>(base: &str, req: Request<B>) -> Option<Response<Incoming>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(authority(base)).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.ok()
}

async fn open<B>(base: &str, req: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::time::timeout(Duration::from_secs(10), try_open(base, req))
        .await
        .expect("request timed out")
        .expect("request failed")
}

async fn read(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

fn build(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority(base));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

async fn send(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    read(open(base, build(base, method, path, headers, body)).await).await
}

/// `POST /mcp` with a JSON-RPC body and an `Authorization` header, if any.
async fn mcp_auth(gw: &str, authorization: Option<&str>, body: &Value) -> Resp {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    send(gw, Method::POST, "/mcp", &headers, body.to_string()).await
}

async fn mcp(gw: &str, token: Option<&str>, body: &Value) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    mcp_auth(gw, auth.as_deref(), body).await
}

fn rpc(id: u64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}})
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "it", "version": "0"}}})
}

fn notification() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
}

fn call_tool(id: u64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": {"q": "x"}}})
}

// ---------------------------------------------------------------------------------------------
// The daemon, the tools, the gateway.

async fn register_tools(daemon: &Daemon) {
    for tool in [
        json!({"tool_id": "search", "resource_uri": SEARCH, "server_id": "server-a"}),
        json!({"tool_id": "admin", "resource_uri": ADMIN_TOOL, "server_id": "server-a",
               "required_capabilities": ["admin"]}),
        json!({"tool_id": "billing", "resource_uri": BILLING, "server_id": "server-b"}),
    ] {
        let (status, body) = daemon.call(Method::POST, "/v1/tools", Some(tool)).await;
        assert_eq!(status, 201, "{body}");
    }
}

fn guard_config(toolgate: &str, resource_metadata: &str) -> GuardConfig {
    GuardConfig {
        toolgate: toolgate.to_string(),
        toolgate_tls: Default::default(),
        admin_token: None,
        resource: SERVER.to_string(),
        server_id: Some("server-a".to_string()),
        public_url: resource_metadata
            .trim_end_matches(METADATA_PATH)
            .to_string(),
        max_staleness: Duration::from_secs(3),
        poll_interval: Duration::from_millis(100),
        key_refresh: toolgate::guard::DEFAULT_KEY_REFRESH,
        leeway: 60,
        max_batch: 64,
        dpop_window: 60,
        dpop_nonce: false,
        allow_multi_audience: false,
    }
}

/// Wait until `n` more rounds of the guard's refresher have finished; with n = 2, a whole
/// sync that began after this call. The bound only matters if the test is failing.
async fn synced(guard: &Guard, n: u64) {
    let mut rounds = guard.rounds();
    let target = *rounds.borrow_and_update() + n;
    tokio::time::timeout(Duration::from_secs(30), rounds.wait_for(|r| *r >= target))
        .await
        .expect("the guard's refresher stalled")
        .unwrap();
}

struct Env {
    daemon: Daemon,
    up: Upstream,
    /// The gateway's base URL.
    gw: String,
    /// Its metadata URL, as named in every challenge.
    meta: String,
    /// The gateway's guard, and the clock it judges staleness by.
    guard: Arc<Guard>,
    clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
}

impl Env {
    async fn new() -> Env {
        Self::with_routes(Vec::new()).await
    }

    async fn with_routes(routes: Vec<(String, String)>) -> Env {
        let daemon = Daemon::dev().await;
        register_tools(&daemon).await;
        let up = upstream().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let gw = format!("http://{listen}");
        let meta = format!("{gw}{METADATA_PATH}");
        let cfg = GatewayConfig {
            listen,
            upstream: up.url.clone(),
            upstream_tls: Default::default(),
            guard: guard_config(&daemon.url, &meta),
            mcp_path: "/mcp".into(),
            routes,
            max_connections: 64,
            max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
            allowed_origins: Vec::new(),
            metrics_path: None,
            tls: Default::default(),
        };
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let guard = Guard::connect(cfg.guard.clone(), clock.clone())
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // Bound already: connections wait in the backlog until the gateway accepts them.
        tokio::spawn(toolgate::gateway::serve(
            listener,
            guard.clone(),
            cfg,
            async move {
                let _ = stopped.await;
            },
        ));
        Env {
            daemon,
            up,
            gw,
            meta,
            guard,
            clock,
            stop: Some(stop),
        }
    }

    async fn token(&self, sub: &str, audience: &str) -> String {
        self.daemon.token_for(sub, audience).await
    }

    /// A token minted from stub `claims` for `audience`.
    async fn token_from(&self, claims: Value, audience: &str) -> String {
        let (status, body) = self
            .daemon
            .exchange(exchange_body(&stub(claims), audience))
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    fn audience_mismatch(&self) -> String {
        format!(
            "Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"{}\"",
            self.meta
        )
    }

    fn no_token(&self) -> String {
        format!("Bearer resource_metadata=\"{}\"", self.meta)
    }

    /// Assert an `invalid_token` challenge whatever its description.
    fn assert_invalid_token(&self, r: &Resp) {
        assert_eq!(r.status, 401, "{}", r.text());
        let c = r.challenge();
        assert!(
            c.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{c}"
        );
        assert!(
            c.ends_with(&format!("\", resource_metadata=\"{}\"", self.meta)),
            "{c}"
        );
        assert_eq!(r.json()["error"], "invalid_token");
    }

    async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.daemon.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The guard's answers, header by header.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_answers_header_by_header() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let search = env.token("alice", SEARCH).await;
    let billing = env.token("alice", BILLING).await;

    // No Authorization at all: a bare challenge naming the metadata, no error parameter.
    for body in [call_tool(1, "search"), initialize(1)] {
        let r = mcp(gw, None, &body).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.challenge(), env.no_token());
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
    }

    // A token minted for another resource.
    let r = mcp(gw, Some(&billing), &call_tool(2, "search")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), env.audience_mismatch());
    assert_eq!(
        r.json(),
        json!({"error": "invalid_token", "error_description": "audience mismatch", "check": "audience"})
    );

    // Expired: minted by a daemon whose clock was an hour behind.
    env.daemon.clock.advance(-3600);
    let expired = env.token("alice", SEARCH).await;
    env.daemon.clock.advance(3600);
    for body in [call_tool(3, "search"), initialize(3)] {
        let r = mcp(gw, Some(&expired), &body).await;
        env.assert_invalid_token(&r);
        assert_eq!(r.json()["check"], "expired", "{}", r.text());
    }

    // Bad signatures: the last character flipped, and one in the middle of the signature.
    let flip = |c: char| if c == 'A' { 'B' } else { 'A' };
    let mut last = search.clone();
    let l = last.pop().unwrap();
    last.push(flip(l));
    let sig_start = search.rfind('.').unwrap() + 1;
    let mid = sig_start + (search.len() - sig_start) / 2;
    let mut middle: Vec<char> = search.chars().collect();
    middle[mid] = flip(middle[mid]);
    let middle: String = middle.into_iter().collect();
    for bad in [&last, &middle] {
        assert_ne!(bad, &search);
        for body in [call_tool(4, "search"), initialize(4)] {
            let r = mcp(gw, Some(bad), &body).await;
            env.assert_invalid_token(&r);
        }
    }
    assert_eq!(env.up.count(), 0, "nothing refused reached the upstream");

    // The scheme is case-insensitive.
    let r = mcp_auth(
        gw,
        Some(&format!("bearer {search}")),
        &call_tool(5, "search"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.up.count(), 1);

    // Another scheme is no bearer token at all.
    let r = mcp_auth(gw, Some("Basic YWxpY2U6c2VjcmV0"), &call_tool(6, "search")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), env.no_token());

    // A token for `search` calling `admin` (another resource of the same server).
    let r = mcp(gw, Some(&search), &call_tool(7, "admin")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), env.audience_mismatch());

    // A token for admin's resource without the `admin` capability: insufficient_scope.
    let no_caps = env.token("alice", ADMIN_TOOL).await;
    let r = mcp(gw, Some(&no_caps), &call_tool(8, "admin")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let c = r.challenge();
    assert!(
        c.starts_with("Bearer error=\"insufficient_scope\", error_description=\""),
        "{c}"
    );
    assert!(
        c.ends_with(&format!("\", resource_metadata=\"{}\"", env.meta)),
        "{c}"
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(r.json()["check"], "capabilities");
    assert_eq!(env.up.count(), 1);

    // With the capability, the same call goes through.
    let with_caps = env
        .token_from(json!({"sub": "alice", "caps": ["admin"]}), ADMIN_TOOL)
        .await;
    let r = mcp(gw, Some(&with_caps), &call_tool(9, "admin")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], 9);
    assert_eq!(env.up.count(), 2);
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 2. MCP semantics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_methods_need_a_token_for_a_resource_of_this_server() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let search = env.token("alice", SEARCH).await;
    let own = env.token("alice", SERVER).await;
    let billing = env.token("alice", BILLING).await;

    let messages = [
        initialize(1),
        rpc(2, "tools/list"),
        rpc(3, "ping"),
        notification(),
    ];
    let mut forwarded = 0;
    for token in [&search, &own] {
        for msg in &messages {
            let r = mcp(gw, Some(token), msg).await;
            forwarded += 1;
            if msg.get("id").is_some() {
                assert_eq!(r.status, 200, "{msg}: {}", r.text());
                assert_eq!(r.json()["id"], msg["id"]);
                assert_eq!(r.json()["result"]["method"], msg["method"]);
            } else {
                assert_eq!(r.status, 202, "{msg}: {}", r.text());
            }
            assert_eq!(env.up.count(), forwarded, "{msg} was not forwarded");
            let seen = env.up.last();
            assert_eq!(seen.method, Method::POST);
            assert_eq!(seen.uri, "/mcp");
            let got: Value = serde_json::from_slice(&seen.body).unwrap();
            assert_eq!(&got, msg, "the body reaches the upstream unchanged");
        }
    }

    // A token for another MCP server is refused at initialize already.
    for msg in &messages {
        let r = mcp(gw, Some(&billing), msg).await;
        assert_eq!(r.status, 401, "{msg}: {}", r.text());
        assert_eq!(r.challenge(), env.audience_mismatch());
    }
    assert_eq!(env.up.count(), forwarded);

    // The server's own token is not a token for any one tool.
    let r = mcp(gw, Some(&own), &call_tool(4, "search")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), env.audience_mismatch());
    assert_eq!(env.up.count(), forwarded);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_call_is_forwarded_without_the_callers_token() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let search = env.token("alice", SEARCH).await;
    let billing = env.token("alice", BILLING).await;

    let body = call_tool(1, "search").to_string();
    let auth = format!("Bearer {search}");
    let r = send(
        gw,
        Method::POST,
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
            // A client cannot name its own subject.
            ("x-toolgate-subject", "wimse://dev.local/ns/default/sa/root"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"jsonrpc": "2.0", "id": 1, "result": {"method": "tools/call"}})
    );
    let seen = env.up.last();
    assert!(
        seen.headers.get(header::AUTHORIZATION).is_none(),
        "the caller's token reached the upstream: {:?}",
        seen.headers
    );
    let subjects: Vec<_> = seen.headers.get_all("x-toolgate-subject").iter().collect();
    assert_eq!(
        subjects,
        vec!["wimse://dev.local/ns/default/sa/alice"],
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.body, body.as_bytes());

    // Tools that are not this server's: refused, never forwarded, whatever the token.
    for (token, tool) in [
        (&search, "billing"),
        (&billing, "billing"),
        (&search, "nope"),
    ] {
        let r = mcp(gw, Some(token), &call_tool(2, tool)).await;
        assert_eq!(r.status, 403, "{tool}: {}", r.text());
        let c = r.challenge();
        assert!(c.starts_with("Bearer error=\"insufficient_scope\""), "{c}");
        assert_eq!(r.json()["check"], "registration");
    }
    assert_eq!(env.up.count(), 1);

    // tools/call without a name is not a request.
    let r = mcp(
        gw,
        Some(&search),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {}}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(env.up.count(), 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_decided_message_by_message() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let search = env.token("alice", SEARCH).await;

    // Every message allowed: forwarded once, as one batch.
    let batch = json!([initialize(1), call_tool(2, "search"), notification()]);
    let r = mcp(gw, Some(&search), &batch).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ids: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(1), json!(2)]);
    assert_eq!(env.up.count(), 1);
    let got: Value = serde_json::from_slice(&env.up.last().body).unwrap();
    assert_eq!(got, batch);

    // One message refused refuses the whole batch, wherever it stands.
    for batch in [
        json!([initialize(1), call_tool(2, "admin")]),
        json!([call_tool(1, "admin"), call_tool(2, "search")]),
        json!([call_tool(1, "search"), call_tool(2, "nope")]),
    ] {
        let r = mcp(gw, Some(&search), &batch).await;
        assert!(r.status == 401 || r.status == 403, "{batch}: {}", r.text());
        assert!(r.header("www-authenticate").is_some());
    }
    assert_eq!(env.up.count(), 1, "a refused batch reached the upstream");

    // Not JSON-RPC at all.
    let auth = format!("Bearer {search}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];
    for bad in [
        "[]",
        "not json",
        "{\"jsonrpc\":",
        "[1, 2]",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":7}",
    ] {
        let r = send(gw, Method::POST, "/mcp", &headers, bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request");
    }

    // Too large, by Content-Length...
    let huge = vec![b' '; toolgate::gateway::MAX_BODY_BYTES + 1];
    let r = send(gw, Method::POST, "/mcp", &headers, huge).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // ...and chunked, without one.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..20 {
            if tx.send(Bytes::from(vec![b' '; 64 * 1024])).await.is_err() {
                return;
            }
        }
    });
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/mcp")
        .header(header::HOST, authority(gw));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = read(open(gw, req.body(ChanBody(rx)).unwrap()).await).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(env.up.count(), 1);

    // Exactly at the limit is fine: the whole body is read and forwarded.
    let mut at_limit = call_tool(3, "search").to_string().into_bytes();
    at_limit.resize(toolgate::gateway::MAX_BODY_BYTES, b' ');
    let r = send(gw, Method::POST, "/mcp", &headers, at_limit).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.up.count(), 2);
    assert_eq!(env.up.last().body.len(), toolgate::gateway::MAX_BODY_BYTES);
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Streaming, GET and DELETE, sessions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_streamed_not_buffered() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let search = env.token("alice", SEARCH).await;
    let auth = format!("Bearer {search}");

    let mut body = call_tool(1, "search");
    body["params"]["arguments"] = json!({"mode": "stream"});
    let resp = open(
        gw,
        build(
            gw,
            Method::POST,
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("authorization", &auth),
                ("mcp-session-id", "client-session-1"),
            ],
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        resp.headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some(UPSTREAM_SESSION)
    );
    // The upstream holds the second event back until the first reached the client: a
    // gateway that buffers the response never delivers the first, and the wait runs out.
    let mut body = resp.into_body();
    let mut received = String::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the stream stalled: the response was buffered")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            if received.is_empty() && !data.is_empty() {
                assert!(
                    !String::from_utf8_lossy(&data).contains("second"),
                    "the second event arrived before it was released"
                );
                env.up.release.notify_one();
            }
            received.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert_eq!(
        received,
        "event: message\ndata: {\"first\":true}\n\nevent: message\ndata: {\"second\":true}\n\n"
    );
    let seen = env.up.last();
    assert_eq!(
        seen.headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some("client-session-1")
    );

    // GET on the MCP endpoint: the server's event stream, after the token check.
    let r = send(
        gw,
        Method::GET,
        "/mcp",
        &[
            ("accept", "text/event-stream"),
            ("authorization", &auth),
            ("mcp-session-id", "client-session-1"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(r.text(), "event: message\ndata: {\"server\":\"hello\"}\n\n");
    assert_eq!(
        r.header("mcp-session-id").as_deref(),
        Some(UPSTREAM_SESSION)
    );
    let seen = env.up.last();
    assert_eq!(seen.method, Method::GET);
    assert!(seen.headers.get(header::AUTHORIZATION).is_none());
    assert_eq!(
        seen.headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some("client-session-1")
    );
    assert_eq!(
        seen.headers
            .get("x-toolgate-subject")
            .and_then(|v| v.to_str().ok()),
        Some("wimse://dev.local/ns/default/sa/alice")
    );

    // DELETE ends the session upstream.
    let r = send(
        gw,
        Method::DELETE,
        "/mcp",
        &[
            ("authorization", &auth),
            ("mcp-session-id", "client-session-1"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.up.last();
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(
        seen.headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some("client-session-1")
    );
    let forwarded = env.up.count();
    assert_eq!(forwarded, 3);

    // GET and DELETE without a token, or with another server's: refused, not forwarded.
    let billing = format!("Bearer {}", env.token("alice", BILLING).await);
    for method in [Method::GET, Method::DELETE] {
        let r = send(gw, method.clone(), "/mcp", &[], "").await;
        assert_eq!(r.status, 401, "{method}");
        assert_eq!(r.challenge(), env.no_token());
        let r = send(
            gw,
            method.clone(),
            "/mcp",
            &[("authorization", &billing)],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{method}");
        assert_eq!(r.challenge(), env.audience_mismatch());
    }
    // Other methods on the MCP endpoint.
    let r = send(gw, Method::PUT, "/mcp", &[("authorization", &auth)], "{}").await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow").as_deref(), Some("POST, GET, DELETE"));
    assert_eq!(env.up.count(), forwarded);
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Plain HTTP routes; unmapped paths.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_map_paths_to_tools_and_unmapped_paths_are_denied() {
    let env = Env::with_routes(vec![("/api/search".into(), "search".into())]).await;
    let gw = env.gw.as_str();
    let search = format!("Bearer {}", env.token("alice", SEARCH).await);
    let billing = format!("Bearer {}", env.token("alice", BILLING).await);

    for path in ["/api/search/q?x=1&y=%20z", "/api/search", "/api/search?x=1"] {
        let r = send(gw, Method::GET, path, &[("authorization", &search)], "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), path);
        let seen = env.up.last();
        assert_eq!(seen.uri, path);
        assert!(seen.headers.get(header::AUTHORIZATION).is_none());
        assert_eq!(
            seen.headers
                .get("x-toolgate-subject")
                .and_then(|v| v.to_str().ok()),
            Some("wimse://dev.local/ns/default/sa/alice")
        );
    }
    // POST bodies on a route are streamed to the upstream as sent.
    let r = send(
        gw,
        Method::POST,
        "/api/search/run",
        &[("authorization", &search)],
        "a2a payload",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.up.last().body, "a2a payload".as_bytes());
    let forwarded = env.up.count();
    assert_eq!(forwarded, 4);

    // A token for another resource, and no token.
    let r = send(
        gw,
        Method::GET,
        "/api/search/q",
        &[("authorization", &billing)],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), env.audience_mismatch());
    let r = send(gw, Method::GET, "/api/search/q", &[], "").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), env.no_token());

    // Paths no tool is mapped to, even with a good token.
    for path in [
        "/other",
        "/",
        "/api/searchx",
        "/api",
        "/mcp/",
        "/api/other/search",
    ] {
        let r = send(gw, Method::GET, path, &[("authorization", &search)], "").await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "access_denied");
    }
    assert_eq!(
        env.up.count(),
        forwarded,
        "an unmapped path reached the upstream"
    );
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 5. RFC 9728 metadata.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_resource_metadata_names_toolgate() {
    let env = Env::new().await;
    let (status, meta) = env
        .daemon
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(status, 200);
    let issuer = meta["issuer"].as_str().unwrap().to_string();

    let r = send(&env.gw, Method::GET, METADATA_PATH, &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = r.json();
    assert_eq!(body["resource"], SERVER);
    assert_eq!(body["authorization_servers"], json!([issuer]));
    assert_eq!(body["bearer_methods_supported"], json!(["header"]));
    assert_eq!(env.up.count(), 0);
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Revocations reach the gateway at its next sync (polled every 100 ms here).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_enforced_at_the_next_sync() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let token = env.token("mallory", SEARCH).await;
    let bystander = env.token("bob", SEARCH).await;
    let r = mcp(gw, Some(&token), &call_tool(1, "search")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = mcp(gw, Some(&token), &initialize(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let set = json!({
        "iss": "https://siem.example.com",
        "jti": "gateway-revocation-1",
        "iat": env.daemon.clock_now(),
        "sub_id": {"format": "uri", "uri": claims_of(&token)["sub"]},
        "events": {CAEP_SESSION_REVOKED: {}},
    });
    let (status, body) = env
        .daemon
        .raw(
            Method::POST,
            "/v1/signals/events",
            "application/json",
            set.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // A sync that began after the signal was accepted.
    synced(&env.guard, 2).await;
    let refused = mcp(gw, Some(&token), &call_tool(2, "search")).await;
    env.assert_invalid_token(&refused);
    assert_eq!(refused.json()["check"], "revocation");

    // Revoked for the server's own methods too; others are unaffected.
    let r = mcp(gw, Some(&token), &initialize(3)).await;
    env.assert_invalid_token(&r);
    let r = mcp(gw, Some(&bystander), &call_tool(4, "search")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Fail closed when toolgate cannot be reached.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_guard_fails_closed() {
    let mut env = Env::new().await;
    let token = env.token("alice", SEARCH).await;
    let r = mcp(&env.gw, Some(&token), &call_tool(1, "search")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Stop toolgate; keep the gateway. Once a sync has failed, no answer can refresh the copy.
    let daemon = std::mem::replace(&mut env.daemon, Daemon::dev().await);
    daemon.stop().await;
    synced(&env.guard, 2).await;
    // Just within max_staleness (3 s) of the last sync, the copy still counts as current...
    env.clock.advance(3);
    let r = mcp(&env.gw, Some(&token), &call_tool(2, "search")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let forwarded = env.up.count();
    // ...past it, the guard fails closed.
    env.clock.advance(1);
    for body in [call_tool(2, "search"), initialize(2)] {
        let r = mcp(&env.gw, Some(&token), &body).await;
        assert_eq!(r.status, 503, "{body}: {}", r.text());
    }
    let r = send(
        &env.gw,
        Method::GET,
        "/mcp",
        &[("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(env.up.count(), forwarded);
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Decisions are audited and counted by toolgate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_audited_and_counted() {
    let env = Env::new().await;
    let gw = env.gw.as_str();
    let search = env.token("carol", SEARCH).await;
    let billing = env.token("carol", BILLING).await;
    let sub = claims_of(&search)["sub"].as_str().unwrap().to_string();

    for id in 0..2 {
        let r = mcp(gw, Some(&search), &call_tool(id, "search")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = mcp(gw, Some(&billing), &call_tool(3, "search")).await;
    assert_eq!(r.status, 401);
    let r = mcp(gw, Some(&search), &call_tool(4, "nope")).await;
    assert_eq!(r.status, 403);
    let r = mcp(gw, None, &initialize(5)).await;
    assert_eq!(r.status, 401);
    let r = mcp(gw, Some(&search), &initialize(6)).await;
    assert_eq!(r.status, 200);

    // Reported in the background: wait for all six rows, however slow the machine.
    let events = eventually("the gateway's decisions reach the audit log", || async {
        let (status, body) = env
            .daemon
            .call(Method::GET, "/v1/audit?kind=gateway&limit=100", None)
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (events.len() >= 6).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 6, "{events:#?}");
    let has = |decision: &str, target: &str, check: &str, subject: Option<&str>| {
        events.iter().any(|e| {
            e["kind"] == "gateway"
                && e["decision"] == decision
                && e["target"] == target
                && (check.is_empty() || e["check"] == check)
                && subject.is_none_or(|s| e["subject"] == s)
        })
    };
    let allows = events
        .iter()
        .filter(|e| e["decision"] == "allow" && e["target"] == "search")
        .count();
    assert_eq!(allows, 2, "{events:#?}");
    assert!(has("allow", "search", "", Some(&sub)), "{events:#?}");
    assert!(has("deny", "search", "audience", None), "{events:#?}");
    assert!(has("deny", "nope", "registration", None), "{events:#?}");
    assert!(has("deny", SERVER, "", None), "{events:#?}");
    assert!(has("allow", SERVER, "", Some(&sub)), "{events:#?}");

    let metrics = send(&env.daemon.url, Method::GET, "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.lines()
            .any(|l| l == "toolgate_verify_total{tool_id=\"search\",decision=\"allow\"} 2"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "toolgate_verify_total{tool_id=\"search\",decision=\"deny\"} 1"),
        "{text}"
    );
    env.finish().await;
}

// ---------------------------------------------------------------------------------------------
// 9. The `Protected` wrapper in front of a plain hyper handler.

fn tool_for(parts: &http::request::Parts) -> Option<String> {
    parts.uri.path().strip_prefix("/tools/").map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_wraps_any_hyper_handler() {
    let daemon = Daemon::dev().await;
    register_tools(&daemon).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let meta = format!("{base}{METADATA_PATH}");
    let guard = Guard::connect(guard_config(&daemon.url, &meta), Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(guard.resource(), SERVER);
    let calls = Arc::new(Mutex::new(0usize));
    let counted = calls.clone();
    let handler = service_fn(move |req: Request<GuardedBody<Incoming>>| {
        let counted = counted.clone();
        async move {
            *counted.lock().unwrap() += 1;
            let sub = req
                .extensions()
                .get::<Arc<TokenClaims>>()
                .map(|c| c.sub.clone())
                .unwrap_or_else(|| "no claims".into());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(sub))))
        }
    });
    let protected = Protected::new(guard, handler, tool_for);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = protected.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let search = format!("Bearer {}", daemon.token_for("dave", SEARCH).await);
    let billing = format!("Bearer {}", daemon.token_for("dave", BILLING).await);
    let sub = "wimse://dev.local/ns/default/sa/dave";

    let r = send(
        &base,
        Method::GET,
        "/tools/search",
        &[("authorization", &search)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), sub);
    // Not a tool path: any token for a resource of this server.
    let r = send(
        &base,
        Method::GET,
        "/status",
        &[("authorization", &search)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), sub);
    assert_eq!(*calls.lock().unwrap(), 2);

    let mismatch = format!(
        "Bearer error=\"invalid_token\", error_description=\"audience mismatch\", resource_metadata=\"{meta}\""
    );
    for path in ["/tools/search", "/status"] {
        let r = send(&base, Method::GET, path, &[("authorization", &billing)], "").await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.challenge(), mismatch);
        assert_eq!(r.json()["check"], "audience");
        let r = send(&base, Method::GET, path, &[], "").await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(
            r.challenge(),
            format!("Bearer resource_metadata=\"{meta}\"")
        );
    }
    // The search token for another tool of the server.
    let r = send(
        &base,
        Method::GET,
        "/tools/admin",
        &[("authorization", &search)],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.challenge(), mismatch);
    // A tool that is not this server's.
    let r = send(
        &base,
        Method::GET,
        "/tools/billing",
        &[("authorization", &billing)],
        "",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r
        .challenge()
        .starts_with("Bearer error=\"insufficient_scope\""));
    assert_eq!(
        *calls.lock().unwrap(),
        2,
        "a refused request reached the handler"
    );
    daemon.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The guard refreshes toolgate's keys when a token names an unknown `kid`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refreshes_the_keys() {
    let mut env = Env::new().await;
    let (_, meta) = env
        .daemon
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    let issuer = meta["issuer"].as_str().unwrap().to_string();
    let listen: std::net::SocketAddr = authority(&env.daemon.url).parse().unwrap();
    let old = env.token("erin", SEARCH).await;
    let r = mcp(&env.gw, Some(&old), &call_tool(1, "search")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A new toolgate on the same address with the same issuer but a fresh key (a new database).
    let first = std::mem::replace(&mut env.daemon, Daemon::dev().await);
    first.stop().await;
    let placeholder = std::mem::replace(
        &mut env.daemon,
        Daemon::with(|c| {
            c.dev = true;
            c.listen = listen;
            c.issuer = Some(issuer.clone());
        })
        .await,
    );
    placeholder.stop().await;
    register_tools(&env.daemon).await;
    let new = env.token("erin", SEARCH).await;
    assert_ne!(header_of(&new)["kid"], header_of(&old)["kid"]);

    // The first sighting of the new kid cannot be verified yet; it asks for the keys.
    let r = mcp(&env.gw, Some(&new), &call_tool(2, "search")).await;
    env.assert_invalid_token(&r);
    // Keys are refreshed on demand (at most every 2 s) and tools once a second: after some
    // round of the guard's refresher, the new token passes.
    let mut rounds = env.guard.rounds();
    let passed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            rounds.changed().await.unwrap();
            let r = mcp(&env.gw, Some(&new), &call_tool(3, "search")).await;
            if r.status == 200 {
                return;
            }
            env.assert_invalid_token(&r);
        }
    })
    .await;
    assert!(
        passed.is_ok(),
        "a token signed with toolgate's new key is still refused"
    );
    env.finish().await;
}
