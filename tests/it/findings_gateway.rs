//! Issue 12, the gateway's findings: one test per finding, each through a real toolgate, a real
//! `toolgate gateway` and a recording upstream.

use super::harness::*;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use toolgate::clock::{Clock, ManualClock, SystemClock};
use toolgate::credentials::Credential;
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig};

const SERVER: &str = "https://mcp.example.com/servers/a";
const SEARCH: &str = "https://mcp.example.com/servers/a/tools/search";
const ADMIN_TOOL: &str = "https://mcp.example.com/servers/a/tools/admin";

/// An upstream that answers 200 with the path it saw, and records every path and body.
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let uri = req.uri().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            record.lock().unwrap().push((uri.clone(), body));
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(uri))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { url, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last_path(&self) -> String {
        self.seen.lock().unwrap().last().unwrap().0.clone()
    }
}

async fn register_tools(daemon: &Daemon) {
    for tool in [
        json!({"tool_id": "search", "resource_uri": SEARCH, "server_id": "server-a"}),
        json!({"tool_id": "admin", "resource_uri": ADMIN_TOOL, "server_id": "server-a"}),
    ] {
        let (status, body) = daemon.call(Method::POST, "/v1/tools", Some(tool)).await;
        assert_eq!(status, 201, "{body}");
    }
}

/// A gateway's configuration for `daemon` and `upstream` on a listener bound to port 0.
async fn config(
    daemon: &Daemon,
    upstream: &Upstream,
    admin_token: Option<&str>,
) -> (TcpListener, GatewayConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let cfg = GatewayConfig {
        listen,
        upstream: upstream.url.clone(),
        upstream_tls: Default::default(),
        guard: GuardConfig {
            toolgate: daemon.url.clone(),
            toolgate_tls: Default::default(),
            admin_token: admin_token.map(str::to_string),
            resource: SERVER.to_string(),
            server_id: Some("server-a".to_string()),
            public_url: format!("http://{listen}"),
            max_staleness: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(100),
            key_refresh: toolgate::guard::DEFAULT_KEY_REFRESH,
            leeway: 60,
            max_batch: 64,
            dpop_window: 60,
            dpop_nonce: false,
            allow_multi_audience: false,
        },
        mcp_path: "/mcp".into(),
        routes: Vec::new(),
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: Some("/gateway-metrics".into()),
        tls: Default::default(),
    };
    (listener, cfg)
}

/// A running gateway: its base URL; it stops when dropped.
struct Gw {
    addr: String,
    _stop: oneshot::Sender<()>,
}

/// Start the gateway, which must come up (its start-up checks pass).
async fn start(listener: TcpListener, cfg: GatewayConfig) -> Gw {
    let addr = listener.local_addr().unwrap().to_string();
    let guard = Guard::connect(
        cfg.guard.clone(),
        Arc::new(ManualClock::new(SystemClock.now())),
    )
    .await
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (failed, failure) = oneshot::channel();
    tokio::spawn(async move {
        let r = toolgate::gateway::serve(listener, guard, cfg, async move {
            let _ = stopped.await;
        })
        .await;
        let _ = failed.send(r);
    });
    let gw = Gw { addr, _stop: stop };
    // Up once it answers (a refused start ends the task first).
    let answered = send(
        &gw.addr,
        "GET /.well-known/oauth-protected-resource",
        &[],
        "",
    );
    tokio::select! {
        r = answered => assert_eq!(r.status, 200, "{}", r.text()),
        r = failure => panic!("the gateway did not start: {r:?}"),
    }
    gw
}

async fn gateway(
    daemon: &Daemon,
    upstream: &Upstream,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> Gw {
    let (listener, mut cfg) = config(daemon, upstream, None).await;
    tweak(&mut cfg);
    start(listener, cfg).await
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, self.body))
    }

    fn text(&self) -> String {
        format!("{}\n\n{}", self.head, self.body)
    }
}

/// One request written byte for byte (`request_line` is e.g. `GET /a;b`), so that paths reach
/// the gateway exactly as spelled; the connection closes after the answer.
async fn send(addr: &str, request_line: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut req = format!("{request_line} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || request_line.starts_with("POST") {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("no answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

async fn post_mcp(gw: &Gw, token: Option<&str>, body: &str) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    send(&gw.addr, "POST /mcp", &headers, body).await
}

fn call(id: u64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}})
}

/// The gateway's own metrics, one sample by its exact name and labels.
async fn metric(gw: &Gw, sample: &str) -> Option<u64> {
    let r = send(&gw.addr, "GET /gateway-metrics", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.body.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    })
}

// ---------------------------------------------------------------------------------------------

/// 4. The gateway decides on what the upstream will run: a body two JSON readers could read as
/// two different calls, or a `method` / `params.name` that is not a string, is a 400 and never
/// reaches the upstream. (Already fixed on main by b68c976; this pins it through the gateway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_04_duplicate_names_and_non_string_method_or_name_are_refused() {
    let daemon = Daemon::dev().await;
    register_tools(&daemon).await;
    let up = Upstream::start().await;
    let gw = gateway(&daemon, &up, |_| {}).await;
    let token = daemon.token_for("alice", SEARCH).await;

    let ok = call(1, "search").to_string();
    let r = post_mcp(&gw, Some(&token), &ok).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);

    let bad = [
        // The issue's example: authorised as the last name, run as the first.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin","name":"search"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"admin"}}"#.to_string(),
        // A duplicate method: a tools/call read as a server-level ping, or the other way.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping","params":{"name":"admin"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"admin"}}"#.to_string(),
        // Duplicates anywhere else: params, deep in the arguments, the id.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"},"params":{"name":"admin"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"a":[{"b":1,"b":2}]}}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#.to_string(),
        // In a batch, beside a good message.
        format!(r#"[{ok},{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"admin","name":"search"}}}}]"#),
        // A method or params.name that is not a string.
        r#"{"jsonrpc":"2.0","id":1,"method":7}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":null}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":["tools/call"],"params":{"name":"admin"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":{"name":"tools/call"},"params":{"name":"admin"}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["admin"]}}"#.to_string(),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"name":"admin"}}}"#.to_string(),
        format!(r#"[{ok},{{"jsonrpc":"2.0","id":2,"method":7}}]"#),
    ];
    for body in &bad {
        let r = post_mcp(&gw, Some(&token), body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request", "{body}");
    }
    assert_eq!(up.count(), 1, "a refused body reached the upstream");
    daemon.stop().await;
}

/// 5. Only canonical paths are decided (`;` path parameters, dot segments, `//`, backslashes
/// and needless or dangerous percent escapes are a 400, never forwarded), and `--route` picks
/// the longest matching prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_05_non_canonical_paths_are_refused_and_the_longest_route_wins() {
    let daemon = Daemon::dev().await;
    register_tools(&daemon).await;
    let up = Upstream::start().await;
    // The shorter prefix first: a first-match table would send /api/admin/… to `search`.
    let gw = gateway(&daemon, &up, |c| {
        c.routes = vec![
            ("/api".into(), "search".into()),
            ("/api/admin".into(), "admin".into()),
        ]
    })
    .await;
    let search = format!("Bearer {}", daemon.token_for("alice", SEARCH).await);
    let admin = format!("Bearer {}", daemon.token_for("alice", ADMIN_TOOL).await);

    for (path, token) in [
        ("/api/q", &search),
        ("/api/admin", &admin),
        ("/api/admin/users?x=1", &admin),
        ("/api/administrator", &search),
        ("/api/caf%C3%A9", &search),
    ] {
        let r = send(
            &gw.addr,
            &format!("GET {path}"),
            &[("authorization", token)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.last_path(), path);
    }
    let forwarded = up.count();

    // The longest prefix decides: `search`'s token opens nothing under /api/admin.
    for path in ["/api/admin", "/api/admin/users"] {
        let r = send(
            &gw.addr,
            &format!("GET {path}"),
            &[("authorization", &search)],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.json()["check"], "audience", "{path}");
    }

    // Paths an upstream may read as another one.
    for path in [
        "/api/search/..;/admin",
        "/api/x/..;/admin/users",
        "/api;/admin",
        "/api;jsessionid=1/q",
        "/api/%3B",
        "/api/../api/admin",
        "/api/./q",
        "/api/x/%2e%2e/admin",
        "/api/x/%2E%2E/admin",
        "/api/%61dmin",
        "/api/x%2Fadmin",
        "/api/x%2fadmin",
        "/api/x%5Cadmin",
        "/api/x%252e%252e",
        "/api/x%00",
        "/api/caf%c3%a9",
        "/api/x%",
        "/api//admin",
        "//api/q",
        "/mcp;x",
    ] {
        for token in [&search, &admin] {
            let r = send(
                &gw.addr,
                &format!("GET {path}"),
                &[("authorization", token)],
                "",
            )
            .await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            assert_eq!(r.json()["error"], "invalid_request", "{path}");
        }
    }
    // A raw backslash: refused (by the HTTP parser or the gateway), never forwarded.
    let r = send(
        &gw.addr,
        "GET /api/x\\..\\admin",
        &[("authorization", &search)],
        "",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.count(), forwarded, "a refused path reached the upstream");
    daemon.stop().await;
}

/// 6. A batch is capped (`--max-batch`, default 64: beyond it a 400 with a JSON-RPC error), and
/// a request is reported once per distinct target, however many messages name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_06_batches_are_capped_and_reported_once_per_target() {
    let daemon = Daemon::dev().await;
    register_tools(&daemon).await;
    let up = Upstream::start().await;
    let gw = gateway(&daemon, &up, |_| {}).await;
    let token = daemon.token_for("alice", SEARCH).await;
    let ping = |id: usize| json!({"jsonrpc": "2.0", "id": id, "method": "ping"});

    let over: Vec<Value> = (0..65).map(ping).collect();
    let r = post_mcp(&gw, Some(&token), &Value::Array(over).to_string()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let err = r.json();
    assert_eq!(err["jsonrpc"], "2.0");
    assert_eq!(err["id"], Value::Null);
    assert_eq!(err["error"]["code"], -32600);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("64"),
        "{err}"
    );
    // The issue's flood: ~30 000 pings in one 1 MiB body.
    let flood: Vec<Value> = (0..30_000)
        .map(|_| json!({"jsonrpc": "2.0", "method": "ping"}))
        .collect();
    let flood = Value::Array(flood).to_string();
    assert!(flood.len() <= toolgate::gateway::MAX_BODY_BYTES);
    let r = post_mcp(&gw, Some(&token), &flood).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32600);
    assert_eq!(up.count(), 0);

    // Exactly at the cap: 40 pings and 24 calls of one tool are two decisions, two reports.
    let mut batch: Vec<Value> = (0..40).map(ping).collect();
    batch.extend((40..64).map(|id| call(id as u64, "search")));
    let r = post_mcp(&gw, Some(&token), &Value::Array(batch).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    // Reports go out in order: once this later refusal is audited, so are the batch's.
    let r = post_mcp(&gw, None, &ping(99).to_string()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let rows = eventually("the gateway's reports reach the audit log", || async {
        let (status, body) = daemon
            .call(Method::GET, "/v1/audit?kind=gateway&limit=100", None)
            .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["events"].as_array().cloned().unwrap_or_default();
        rows.iter()
            .any(|e| e["decision"] == "deny" && e["target"] == SERVER)
            .then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let allowed: Vec<&Value> = rows.iter().filter(|e| e["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 2, "{rows:#?}");
    assert!(allowed.iter().any(|e| e["target"] == SERVER), "{rows:#?}");
    assert!(allowed.iter().any(|e| e["target"] == "search"), "{rows:#?}");
    drop(gw);

    // The cap is configurable.
    let gw = gateway(&daemon, &up, |c| c.max_batch = 2).await;
    let three = json!([ping(1), ping(2), ping(3)]).to_string();
    let r = post_mcp(&gw, Some(&token), &three).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], -32600);
    let two = json!([ping(1), call(2, "search")]).to_string();
    let r = post_mcp(&gw, Some(&token), &two).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 2);
    daemon.stop().await;
}

/// 7. A gateway that cannot report does not start (in-process and from the command line), and
/// reports toolgate refuses later are counted in the gateway's own metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_07_a_gateway_that_cannot_report_does_not_start_and_counts_dropped_reports() {
    let daemon = Daemon::production().await;
    register_tools(&daemon).await;
    let up = Upstream::start().await;

    for token in [None, Some("not-the-admin-token-0123456789")] {
        let (listener, cfg) = config(&daemon, &up, token).await;
        let guard = Guard::connect(
            cfg.guard.clone(),
            Arc::new(ManualClock::new(SystemClock.now())),
        )
        .await;
        // Refused either while connecting (a toolgate that closes its reads) or at the report
        // check: never serving.
        if let Ok(guard) = guard {
            let run = toolgate::gateway::serve(listener, guard, cfg, std::future::pending());
            let refused = tokio::time::timeout(Duration::from_secs(30), run)
                .await
                .expect("the gateway started although toolgate refuses its reports");
            let why = refused.unwrap_err();
            assert!(why.contains("401"), "{why}");
            assert!(why.contains("decision reports"), "{why}");
        }
    }

    // The command line: exits with the reason instead of running.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args([
            "gateway",
            "--toolgate",
            &daemon.url,
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--upstream",
            &up.url,
            "--server-id",
            "server-a",
            "--resource",
            SERVER,
        ])
        .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let waited = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        (child.wait(), log)
    });
    let (status, log) = match tokio::time::timeout(Duration::from_secs(30), waited).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("toolgate gateway kept running although toolgate refuses its reports"),
    };
    assert!(!status.unwrap().success(), "{log}");
    assert!(log.contains("toolgate gateway:"), "{log}");

    // With the token it starts, and its reports are taken.
    let (listener, cfg) = config(&daemon, &up, Some(ADMIN)).await;
    let listen = cfg.guard.toolgate.clone();
    let gw = start(listener, cfg).await;
    let r = post_mcp(&gw, None, &call(1, "search").to_string()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let sent = "toolgate_gateway_reports_sent_total";
    let refused = "toolgate_gateway_reports_dropped_total{reason=\"refused\"}";
    eventually("the report is sent", || async {
        (metric(&gw, sent).await == Some(1)).then_some(())
    })
    .await;
    assert_eq!(metric(&gw, refused).await, Some(0));
    assert_eq!(
        metric(
            &gw,
            "toolgate_gateway_reports_dropped_total{reason=\"queue_full\"}"
        )
        .await,
        Some(0)
    );

    // toolgate comes back on the same address with another admin token: the gateway's reports
    // are refused from now on, and counted as dropped.
    let addr: std::net::SocketAddr = listen.strip_prefix("http://").unwrap().parse().unwrap();
    daemon.stop().await;
    let daemon = Daemon::with(|c| {
        c.listen = addr;
        c.admin_token = Some(Credential::new("a-rotated-admin-token-0123456789").unwrap());
    })
    .await;
    for id in 2..4 {
        let r = post_mcp(&gw, None, &call(id, "search").to_string()).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    eventually("the refused reports are counted", || async {
        (metric(&gw, refused).await == Some(2)).then_some(())
    })
    .await;
    assert_eq!(metric(&gw, sent).await, Some(1));
    drop(gw);
    daemon.stop().await;
}

/// 10 (the gateway's part). A request with an `Origin` that is not the gateway's own (nor a
/// configured `--allowed-origin`) is a 403, as MCP's Streamable HTTP transport requires; no
/// Origin (a client that is not a browser) passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_the_gateway_refuses_a_foreign_origin() {
    let daemon = Daemon::dev().await;
    register_tools(&daemon).await;
    let up = Upstream::start().await;
    let gw = gateway(&daemon, &up, |c| {
        c.routes = vec![("/api".into(), "search".into())];
        c.allowed_origins = vec!["https://App.Example.com:443/".into()];
    })
    .await;
    let token = daemon.token_for("alice", SEARCH).await;
    let auth = format!("Bearer {token}");
    let body = call(1, "search").to_string();
    let own = format!("http://{}", gw.addr);

    let mut forwarded = 0;
    for origin in [None, Some(own.as_str()), Some("https://app.example.com")] {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let r = send(&gw.addr, "POST /mcp", &headers, &body).await;
        assert_eq!(r.status, 200, "{origin:?}: {}", r.text());
        let r = send(&gw.addr, "GET /api/q", &headers, "").await;
        assert_eq!(r.status, 200, "{origin:?}: {}", r.text());
        forwarded += 2;
        assert_eq!(up.count(), forwarded);
    }

    let rebound = format!("http://localhost:{}", gw.addr.rsplit(':').next().unwrap());
    for origin in [
        "https://evil.example",
        "null",
        "http://app.example.com",
        "https://app.example.com/page",
        "https://app.example.com:8443",
        own.replace("http://", "https://").as_str(),
        rebound.as_str(),
    ] {
        let headers = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
            ("origin", origin),
        ];
        for (line, body) in [
            ("POST /mcp", body.as_str()),
            ("GET /mcp", ""),
            ("GET /api/q", ""),
        ] {
            let r = send(&gw.addr, line, &headers, body).await;
            assert_eq!(r.status, 403, "{origin} {line}: {}", r.text());
            assert_eq!(r.json()["error"], "access_denied");
        }
    }
    // Two Origin headers, even if one is allowed.
    let r = send(
        &gw.addr,
        "POST /mcp",
        &[
            ("authorization", &auth),
            ("origin", &own),
            ("origin", "https://evil.example"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        up.count(),
        forwarded,
        "a foreign origin reached the upstream"
    );
    daemon.stop().await;
}
