//! Issue 12, findings 7 (scoped credentials), 10 (reach from a browser) and 11 (open reads): each
//! test is named after its finding and failed on the code before the fix.

use super::harness::{eventually, exchange_body, stub, Daemon, ADMIN};
use http::Method;
use serde_json::{json, Value};
use toolgate::credentials::Credential;

const RESOURCE: &str = "https://mcp.example.com/tools/search";
const REPORTER: &str = "reporter-token-0123456789";
const READER: &str = "read-only-token-0123456789";

/// One request over a fresh connection, with exactly the given headers (a `Host` among them or
/// not); the status and the JSON body (`Null` when the body is not JSON).
async fn send(
    d: &Daemon,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = d.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = match body {
        Some((ct, b)) => {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
            b
        }
        None => "",
    };
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await
    .expect("no answer within 10 s")
    .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn host(d: &Daemon) -> String {
    d.url.strip_prefix("http://").unwrap().to_string()
}

fn tool_json(id: &str) -> String {
    json!({"tool_id": id, "resource_uri": RESOURCE}).to_string()
}

async fn tool_count(d: &Daemon) -> u64 {
    let (status, body) = d.call(Method::GET, "/v1/tools", None).await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_json_endpoints_refuse_other_content_types() {
    let d = Daemon::dev().await;
    let h = host(&d);
    // A page can POST text/plain across sites without a preflight: never as JSON.
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let (status, body) = send(
            &d,
            "POST",
            "/v1/tools",
            &[("Host", &h)],
            Some((ct, &tool_json("search"))),
        )
        .await;
        assert_eq!(status, 415, "{ct}: {body}");
        assert_eq!(body["error"], "invalid_request");
    }
    assert_eq!(tool_count(&d).await, 0);

    // Exchange takes JSON or a real form, not an unlabelled body.
    let exchange = exchange_body(&stub(json!({"sub": "alice"})), RESOURCE).to_string();
    let (status, _) = send(
        &d,
        "POST",
        "/v1/exchange/token",
        &[("Host", &h)],
        Some(("", &exchange)),
    )
    .await;
    assert_eq!(status, 415);
    // Nor JSON labelled as a form.
    let (status, _) = send(
        &d,
        "POST",
        "/v1/exchange/token",
        &[("Host", &h)],
        Some(("application/x-www-form-urlencoded", &exchange)),
    )
    .await;
    assert_eq!(status, 400);

    // A dev SET without a content type revokes nothing.
    let set = json!({
        "iss": "https://transmitter.example.com", "jti": "set-1",
        "iat": d.clock_now(),
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked":
            {"subject": {"format": "opaque", "id": "alice"}}}
    })
    .to_string();
    let (status, _) = send(
        &d,
        "POST",
        "/v1/signals/events",
        &[("Host", &h)],
        Some(("", &set)),
    )
    .await;
    assert_eq!(status, 415);
    let (_, list) = d.call(Method::GET, "/v1/signals/revocations", None).await;
    assert_eq!(list["count"], 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_a_rebinding_host_is_refused() {
    let d = Daemon::dev().await;
    let port = d.url.rsplit(':').next().unwrap().to_string();
    for good in [host(&d), format!("localhost:{port}"), "localhost".into()] {
        let (status, body) = send(&d, "GET", "/v1/tools", &[("Host", &good)], None).await;
        assert_eq!(status, 200, "{good}: {body}");
    }
    // The attacker's name, resolved to 127.0.0.1 by DNS rebinding: no read, no mint.
    let evil = format!("rebind.attacker.example:{port}");
    let (status, body) = send(&d, "GET", "/v1/tools", &[("Host", &evil)], None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    let exchange = exchange_body(&stub(json!({"sub": "alice"})), RESOURCE).to_string();
    let (status, body) = send(
        &d,
        "POST",
        "/v1/exchange/token",
        &[("Host", &evil)],
        Some(("application/json", &exchange)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.get("access_token").is_none());

    // A configured name is accepted.
    let named = Daemon::with(|c| {
        c.dev = true;
        c.allowed_hosts = vec!["toolgate.internal".into()];
    })
    .await;
    let (status, _) = send(
        &named,
        "GET",
        "/v1/tools",
        &[("Host", "toolgate.internal:8693")],
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_a_foreign_origin_cannot_change_state() {
    let d = Daemon::dev().await;
    let h = host(&d);
    let (status, body) = send(
        &d,
        "POST",
        "/v1/tools",
        &[("Host", &h), ("Origin", "https://evil.example")],
        Some(("application/json", &tool_json("search"))),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = send(
        &d,
        "POST",
        "/v1/tools",
        &[("Host", &h), ("Origin", "null")],
        Some(("application/json", &tool_json("search"))),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(tool_count(&d).await, 0);
    // The dashboard's own origin may.
    let own = format!("http://{h}");
    let (status, body) = send(
        &d,
        "POST",
        "/v1/tools",
        &[("Host", &h), ("Origin", &own)],
        Some(("application/json", &tool_json("search"))),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // Reads are not state-changing; the same-origin policy keeps their answers from the page.
    let (status, _) = send(
        &d,
        "GET",
        "/dashboard",
        &[("Host", &h), ("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    // A configured origin may change state.
    let console = Daemon::with(|c| {
        c.dev = true;
        c.allowed_origins = vec!["https://console.example.com".into()];
    })
    .await;
    let (status, body) = send(
        &console,
        "DELETE",
        "/v1/tools/absent",
        &[
            ("Host", &host(&console)),
            ("Origin", "https://console.example.com"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_11_open_reads_need_a_token_unless_configured() {
    let d = Daemon::production().await;
    d.register("search", RESOURCE).await;
    let h = host(&d);
    for path in [
        "/v1/tools",
        "/v1/mcp/tools",
        "/v1/tools/search",
        "/metrics",
        "/v1/federation/revocation-export",
        "/v1/federation/revocation-hash",
    ] {
        let (status, body) = send(&d, "GET", path, &[("Host", &h)], None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    // Keys, discovery and health stay public.
    for path in [
        "/v1/identity/jwks",
        "/.well-known/oauth-authorization-server",
        "/v1/sys/health",
    ] {
        let (status, body) = send(&d, "GET", path, &[("Host", &h)], None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // --open-reads opens the registry, metrics and the export, and nothing else.
    let open = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.open_reads = true;
    })
    .await;
    let oh = host(&open);
    for path in ["/v1/tools", "/metrics", "/v1/federation/revocation-export"] {
        let (status, body) = send(&open, "GET", path, &[("Host", &oh)], None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for path in ["/v1/audit", "/v1/stats", "/v1/signals/revocations"] {
        let (status, _) = send(&open, "GET", path, &[("Host", &oh)], None).await;
        assert_eq!(status, 401, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_07_scoped_credentials_and_rotation_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let reporter_file = dir.path().join("reporter");
    toolgate::secret_file::create_private(&reporter_file, REPORTER.as_bytes()).unwrap();
    let d = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.reporter_token =
            Some(Credential::from_file(&reporter_file, "--reporter-token-file").unwrap());
        c.read_token = Some(Credential::new(READER).unwrap());
    })
    .await;
    d.register("search", RESOURCE).await;
    let h = host(&d);
    let bearer = |t: &str| format!("Bearer {t}");
    let decisions = json!({"source": "gw-1", "decisions": [{
        "tool_id": "search", "subject": "alice", "decision": "allow", "check": "", "reason": ""
    }]})
    .to_string();
    let register = tool_json("other");
    // (who, method, path, body, expected status)
    let reporter = bearer(REPORTER);
    let reader = bearer(READER);
    let cases: [(&str, &str, &str, Option<&str>, u16); 12] = [
        (&reporter, "GET", "/v1/tools", None, 200),
        (
            &reporter,
            "GET",
            "/v1/federation/revocation-export",
            None,
            200,
        ),
        (
            &reporter,
            "POST",
            "/v1/mcp/decisions",
            Some(&decisions),
            202,
        ),
        (&reporter, "POST", "/v1/tools", Some(&register), 403),
        (&reporter, "GET", "/v1/audit", None, 403),
        (&reporter, "DELETE", "/v1/tools/search", None, 403),
        (&reader, "GET", "/v1/tools", None, 200),
        (&reader, "GET", "/v1/audit", None, 200),
        (&reader, "GET", "/metrics", None, 200),
        (&reader, "GET", "/v1/signals/revocations", None, 200),
        (&reader, "POST", "/v1/mcp/decisions", Some(&decisions), 403),
        (&reader, "POST", "/v1/tools", Some(&register), 403),
    ];
    for (who, method, path, body, want) in cases {
        let (status, resp) = send(
            &d,
            method,
            path,
            &[("Host", &h), ("Authorization", who)],
            body.map(|b| ("application/json", b)),
        )
        .await;
        assert_eq!(status, want, "{method} {path}: {resp}");
        if want == 403 {
            assert_eq!(resp["error"], "insufficient_scope", "{resp}");
        }
    }
    assert_eq!(tool_count(&d).await, 1, "nothing was registered or removed");

    // The audit log names the role that made each authenticated call.
    eventually(
        "the audit log names the reporter and the reader",
        || async {
            let (_, audit) = d.call(Method::GET, "/v1/audit?kind=admin", None).await;
            let subjects: Vec<String> = audit["events"]
                .as_array()?
                .iter()
                .filter_map(|e| e["subject"].as_str().map(String::from))
                .collect();
            (subjects.iter().any(|s| s == "reporter") && subjects.iter().any(|s| s == "reader"))
                .then_some(())
        },
    )
    .await;

    // Rotation: rewrite the file; the old token stops working, the new one works, no restart.
    let rotated = "reporter-token-rotated-0123456789";
    std::fs::write(&reporter_file, rotated).unwrap();
    let (status, _) = send(
        &d,
        "GET",
        "/v1/tools",
        &[("Host", &h), ("Authorization", &bearer(REPORTER))],
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(
        &d,
        "GET",
        "/v1/tools",
        &[("Host", &h), ("Authorization", &bearer(rotated))],
        None,
    )
    .await;
    assert_eq!(status, 200);
    // A broken file matches nothing (fail closed) until it is fixed.
    std::fs::write(&reporter_file, "short").unwrap();
    let (status, _) = send(
        &d,
        "GET",
        "/v1/tools",
        &[("Host", &h), ("Authorization", &bearer("short"))],
        None,
    )
    .await;
    assert_eq!(status, 401);
}
