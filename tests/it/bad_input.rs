use super::harness::*;
use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;
const RESOURCE: &str = "https://mcp.example.com/tools/code-search";

// ---------------------------------------------------------------- helpers

async fn tool_count(d: &Daemon) -> u64 {
    let (status, body) = d.call(Method::GET, "/v1/mcp/tools", None).await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().unwrap()
}

async fn tool_ids(d: &Daemon) -> Vec<String> {
    let (status, body) = d.call(Method::GET, "/v1/mcp/tools", None).await;
    assert_eq!(status, 200, "{body}");
    body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool_id"].as_str().unwrap().to_string())
        .collect()
}

async fn assert_healthy(d: &Daemon) {
    let (status, body) = d.call(Method::GET, "/v1/sys/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["initialized"], json!(true), "{body}");
}

/// The RFC 6749-style error body: `error`, a one-sentence `error_description`.
#[track_caller]
fn assert_error(got: (u16, &Value), status: u16, code: &str, ctx: &str) {
    assert_eq!(got.0, status, "{ctx}: {}", got.1);
    assert_eq!(got.1["error"], json!(code), "{ctx}: {}", got.1);
    assert!(
        got.1["error_description"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{ctx}: {}",
        got.1
    );
}

#[track_caller]
fn assert_denied(got: (u16, &Value), check: &str, ctx: &str) {
    assert_error(got, 403, "verification_failed", ctx);
    assert_eq!(got.1["check"], json!(check), "{ctx}: {}", got.1);
}

/// Everything is as it was: no tool stored, the daemon still answers.
async fn assert_unchanged(d: &Daemon, before: &[String]) {
    assert_eq!(tool_ids(d).await, before);
    assert_eq!(tool_count(d).await, before.len() as u64);
    assert_healthy(d).await;
}

async fn post(
    d: &Daemon,
    path: &str,
    content_type: &str,
    bytes: impl Into<Vec<u8>>,
) -> (u16, Value) {
    d.raw(Method::POST, path, content_type, bytes.into()).await
}

/// A real token from toolgate: code-search registered, a token minted for it.
async fn minted(d: &Daemon) -> String {
    d.register("code-search", RESOURCE).await;
    d.token_for("alice", RESOURCE).await
}

/// A response read off a raw HTTP/1.1 connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn addr_of(d: &Daemon) -> String {
    d.url.strip_prefix("http://").unwrap().to_string()
}

/// Send raw bytes (written concurrently, write errors ignored: the server may answer and
/// close before it has read everything) and parse the status line, headers and JSON body.
async fn raw_http(addr: &str, request: Vec<u8>) -> RawResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in request.chunks(64 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        // Keep the write half open until the response is in (the task is aborted then).
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let parsed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(r) = parse_response(&buf) {
                return Some(r);
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse_response(&buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    match parsed {
        Ok(Some(r)) => r,
        _ => panic!(
            "no complete HTTP response; got {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
}

fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())?;
    let body = buf.get(end + 4..end + 4 + len)?;
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn request_head(method: &str, path: &str, addr: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n")
}

// ---------------------------------------------------------------- tools

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_registrations_are_refused_and_store_nothing() {
    let d = Daemon::dev().await;
    d.register("existing", "https://mcp.example.com/tools/existing")
        .await;
    let before = tool_ids(&d).await;
    assert_eq!(before, vec!["existing".to_string()]);

    let long = "a".repeat(129);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", br#"{"tool_id": "x", "resource_uri": "#.to_vec()),
        ("truncated", br#"{"tool_id""#.to_vec()),
        ("empty body", Vec::new()),
        (
            "array",
            br#"[{"tool_id":"x","resource_uri":"https://a.example/x"}]"#.to_vec(),
        ),
        ("tool_id missing", br#"{"resource_uri":"https://a.example/x"}"#.to_vec()),
        (
            "tool_id empty",
            br#"{"tool_id":"","resource_uri":"https://a.example/x"}"#.to_vec(),
        ),
        (
            "tool_id 129 chars",
            json!({"tool_id": long, "resource_uri": "https://a.example/x"})
                .to_string()
                .into_bytes(),
        ),
        (
            "tool_id with space",
            br#"{"tool_id":"code search","resource_uri":"https://a.example/x"}"#.to_vec(),
        ),
        (
            "tool_id with slash",
            br#"{"tool_id":"code/search","resource_uri":"https://a.example/x"}"#.to_vec(),
        ),
        (
            "tool_id a number",
            br#"{"tool_id":42,"resource_uri":"https://a.example/x"}"#.to_vec(),
        ),
        (
            "resource_uri not absolute",
            br#"{"tool_id":"x","resource_uri":"code-search"}"#.to_vec(),
        ),
        (
            "resource_uri with fragment",
            br#"{"tool_id":"x","resource_uri":"https://a.example/x#frag"}"#.to_vec(),
        ),
        (
            "resource_uri with whitespace",
            br#"{"tool_id":"x","resource_uri":"https://a.example/x y"}"#.to_vec(),
        ),
        (
            "resource_uri with leading whitespace",
            br#"{"tool_id":"x","resource_uri":" https://a.example/x"}"#.to_vec(),
        ),
        (
            "required_capabilities a string",
            br#"{"tool_id":"x","resource_uri":"https://a.example/x","required_capabilities":"read"}"#
                .to_vec(),
        ),
        (
            "unknown field",
            br#"{"tool_id":"x","resource_uri":"https://a.example/x","colour":"red"}"#.to_vec(),
        ),
        (
            "duplicate member names",
            br#"{"tool_id":"a","tool_id":"b","resource_uri":"https://a.example/x"}"#.to_vec(),
        ),
        ("duplicate tool_id only", br#"{"tool_id":"a","tool_id":"b"}"#.to_vec()),
        ("non-UTF-8", b"{\"tool_id\":\"\xff\xfe\"}".to_vec()),
    ];
    for (ctx, bytes) in cases {
        for path in ["/v1/mcp/tools", "/v1/tools"] {
            let (status, body) = post(&d, path, "application/json", bytes.clone()).await;
            assert_error(
                (status, &body),
                400,
                "invalid_request",
                &format!("{path} {ctx}"),
            );
            assert!(
                !body.to_string().contains("\"tool_id\":\"x\""),
                "{ctx}: error echoes input: {body}"
            );
        }
        assert_unchanged(&d, &before).await;
    }

    // Duplicate registration: 409 tool_exists and the first entry untouched.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/mcp/tools",
            Some(json!({"tool_id": "existing", "resource_uri": "https://evil.example/other"})),
        )
        .await;
    assert_error((status, &body), 409, "tool_exists", "duplicate");
    let (status, body) = d.call(Method::GET, "/v1/tools/existing", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resource_uri"],
        json!("https://mcp.example.com/tools/existing")
    );
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deregistrations_and_lookups() {
    let d = Daemon::dev().await;
    d.register("existing", "https://mcp.example.com/tools/existing")
        .await;
    let before = tool_ids(&d).await;

    let (s, b) = d.call(Method::DELETE, "/v1/mcp/tools", None).await;
    assert_error((s, &b), 400, "invalid_request", "DELETE without tool_id");
    let (s, b) = d.call(Method::DELETE, "/v1/mcp/tools?tool_id=", None).await;
    assert_error((s, &b), 400, "invalid_request", "DELETE with empty tool_id");
    let (s, b) = d
        .call(
            Method::DELETE,
            "/v1/mcp/tools?tool_id=existing&tool_id=existing",
            None,
        )
        .await;
    assert_error(
        (s, &b),
        400,
        "invalid_request",
        "DELETE with repeated tool_id",
    );
    let (s, b) = d
        .call(Method::DELETE, "/v1/mcp/tools?tool_id=nope", None)
        .await;
    assert_error((s, &b), 404, "tool_not_found", "DELETE unknown");
    let (s, b) = d.call(Method::DELETE, "/v1/tools/nope", None).await;
    assert_error((s, &b), 404, "tool_not_found", "DELETE /v1/tools unknown");
    let (s, b) = d.call(Method::GET, "/v1/tools/nope", None).await;
    assert_error((s, &b), 404, "tool_not_found", "GET unknown");
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

// ---------------------------------------------------------------- body limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let d = Daemon::dev().await;
    d.register("existing", "https://mcp.example.com/tools/existing")
        .await;
    let before = tool_ids(&d).await;

    // A JSON-looking body of exactly 1 MiB + 1 byte.
    let mut big =
        br#"{"tool_id":"big","resource_uri":"https://a.example/x","description":""#.to_vec();
    let tail = br#""}"#;
    big.resize(MIB + 1 - tail.len(), b'a');
    big.extend_from_slice(tail);
    assert_eq!(big.len(), MIB + 1);

    // Refused on its declared length (the client sends the head only and closes its side).
    for path in ["/v1/mcp/tools", "/v1/exchange/token", "/v1/mcp/verify"] {
        let (status, body) = d.declared_only(path, "application/json", big.len()).await;
        assert_error((status, &body), 413, "invalid_request", path);
        assert_eq!(
            body["error_description"],
            json!("request body too large"),
            "{path}"
        );
        assert_unchanged(&d, &before).await;
    }

    // The same body sent in full: it is read and discarded, and the client, still sending,
    // gets the 413 (not a reset).
    for path in ["/v1/mcp/tools", "/v1/mcp/verify"] {
        let (status, body) = post(&d, path, "application/json", big.clone()).await;
        assert_error((status, &body), 413, "invalid_request", path);
        assert_unchanged(&d, &before).await;
    }

    // Exactly 1 MiB is not refused for its size.
    let mut at_limit = big.clone();
    at_limit.remove(100);
    assert_eq!(at_limit.len(), MIB);
    let (status, body) = post(&d, "/v1/mcp/verify", "application/json", at_limit).await;
    assert_ne!(status, 413, "{body}");
    assert_healthy(&d).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_bodies_get_413() {
    let d = Daemon::dev().await;
    let addr = addr_of(&d);
    let before = tool_ids(&d).await;

    for path in ["/v1/mcp/tools", "/v1/exchange/token", "/v1/mcp/verify"] {
        let mut req = request_head(
            "POST",
            path,
            &addr,
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        )
        .into_bytes();
        // 17 chunks of 64 KiB: 1 MiB + 64 KiB, no Content-Length to refuse up front.
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..17 {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(&chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let resp = raw_http(&addr, req).await;
        assert_eq!(resp.status, 413, "{path}: {resp:?}");
        assert_eq!(
            resp.body["error"],
            json!("invalid_request"),
            "{path}: {resp:?}"
        );
        assert_eq!(
            resp.body["error_description"],
            json!("request body too large"),
            "{path}: {resp:?}"
        );
        assert_unchanged(&d, &before).await;
    }

    // A client that waits for `100 Continue` before sending an over-limit body gets the 413
    // straight away, never an invitation to upload it.
    let req = request_head(
        "POST",
        "/v1/mcp/tools",
        &addr,
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n",
            MIB + 1
        ),
    );
    let resp = raw_http(&addr, req.into_bytes()).await;
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.body["error"], json!("invalid_request"), "{resp:?}");
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

// ---------------------------------------------------------------- exchange

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_exchanges_are_refused_with_the_right_code() {
    let d = Daemon::dev().await;
    d.register("code-search", RESOURCE).await;
    let before = tool_ids(&d).await;
    let subject = stub(json!({"sub": "alice"}));
    let good = exchange_body(&subject, RESOURCE);
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };

    // The baseline is good: every case below differs from it in one thing.
    let (status, body) = d.exchange(good.clone()).await;
    assert_eq!(status, 200, "{body}");

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown grant_type",
            with("grant_type", json!("client_credentials")),
            400,
            "unsupported_grant_type",
        ),
        (
            "missing grant_type",
            without("grant_type"),
            400,
            "unsupported_grant_type",
        ),
        (
            "unknown subject_token_type",
            with("subject_token_type", json!("urn:x:y")),
            400,
            "invalid_request",
        ),
        (
            "saml2 subject_token_type",
            with(
                "subject_token_type",
                json!("urn:ietf:params:oauth:token-type:saml2"),
            ),
            400,
            "invalid_request",
        ),
        (
            "missing subject_token_type",
            without("subject_token_type"),
            400,
            "invalid_request",
        ),
        (
            "missing subject_token",
            without("subject_token"),
            400,
            "invalid_request",
        ),
        (
            "empty subject_token",
            with("subject_token", json!("")),
            400,
            "invalid_request",
        ),
        (
            "missing audience",
            without("audience"),
            400,
            "invalid_request",
        ),
        (
            "audience *",
            with("audience", json!("*")),
            400,
            "invalid_target",
        ),
        (
            "audience array",
            with("audience", json!([RESOURCE])),
            400,
            "invalid_target",
        ),
        (
            "audience array of two",
            with("audience", json!([RESOURCE, "https://b.example/x"])),
            400,
            "invalid_target",
        ),
        (
            "audience two space-separated",
            with("audience", json!(format!("{RESOURCE} https://b.example/x"))),
            400,
            "invalid_target",
        ),
        (
            "audience not absolute",
            with("audience", json!("code-search-not-a-tool")),
            400,
            "invalid_target",
        ),
        (
            "audience with fragment",
            with("audience", json!("https://b.example/x#f")),
            400,
            "invalid_target",
        ),
        (
            "audience and resource differ",
            with("resource", json!("https://b.example/x")),
            400,
            "invalid_target",
        ),
        (
            "resource array",
            with("resource", json!([RESOURCE])),
            400,
            "invalid_target",
        ),
        (
            "subject_token a number",
            with("subject_token", json!(5)),
            400,
            "invalid_request",
        ),
        (
            "audience a number",
            with("audience", json!(5)),
            400,
            "invalid_request",
        ),
        (
            "scope a list",
            with("scope", json!(["read"])),
            400,
            "invalid_request",
        ),
        (
            "stub with malformed base64",
            with("subject_token", json!("e30.!!!not-base64!!!.stub")),
            401,
            "invalid_client",
        ),
        (
            "stub whose claims are not JSON",
            with(
                "subject_token",
                json!(format!("{}.{}.stub", b64(b"{}"), b64(b"not json"))),
            ),
            401,
            "invalid_client",
        ),
        (
            "subject token garbage",
            with("subject_token", json!("garbage")),
            401,
            "invalid_client",
        ),
    ];
    for (ctx, body, want_status, want_code) in cases {
        let (status, resp) = d.exchange(body).await;
        assert_error((status, &resp), want_status, want_code, ctx);
        assert!(resp.get("access_token").is_none(), "{ctx}: {resp}");
        assert_unchanged(&d, &before).await;
    }

    let raw_cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"grant_type\":".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "JSON array",
            "application/json",
            json!([good.clone()]).to_string().into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "duplicate member names",
            "application/json",
            format!(
                r#"{{"grant_type":"{GRANT}","subject_token":"{subject}","subject_token_type":"{JWT}","audience":"{RESOURCE}","audience":"https://b.example/x"}}"#
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        (
            "form with repeated audience",
            "application/x-www-form-urlencoded",
            format!(
                "grant_type={}&subject_token={subject}&subject_token_type={}&audience={}&audience={}",
                enc(GRANT),
                enc(JWT),
                enc(RESOURCE),
                enc("https://b.example/x")
            )
            .into_bytes(),
            400,
            "invalid_target",
        ),
        (
            "form with repeated resource",
            "application/x-www-form-urlencoded",
            format!(
                "grant_type={}&subject_token={subject}&subject_token_type={}&resource={}&resource={}",
                enc(GRANT),
                enc(JWT),
                enc(RESOURCE),
                enc(RESOURCE)
            )
            .into_bytes(),
            400,
            "invalid_target",
        ),
        (
            "form with bad percent-encoding",
            "application/x-www-form-urlencoded",
            b"grant_type=%zz".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "text/plain",
            "text/plain",
            good.to_string().into_bytes(),
            415,
            "invalid_request",
        ),
        (
            "non-UTF-8 JSON",
            "application/json",
            b"{\"grant_type\":\"\xff\"}".to_vec(),
            400,
            "invalid_request",
        ),
    ];
    for (ctx, ct, bytes, want_status, want_code) in raw_cases {
        let (status, resp) = post(&d, "/v1/exchange/token", ct, bytes).await;
        assert_eq!(status, want_status, "{ctx}: {resp}");
        if want_status != 415 {
            assert_error((status, &resp), want_status, want_code, ctx);
        } else {
            assert!(resp["error"].is_string(), "{ctx}: {resp}");
        }
        assert_unchanged(&d, &before).await;
    }
    d.stop().await;
}

/// Percent-encode for a form body.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_subject_tokens_are_refused_not_crashed_on() {
    let d = Daemon::dev().await;
    d.register("code-search", RESOURCE).await;
    let before = tool_ids(&d).await;

    // A plain 1 MB string: not a JWT.
    let plain = "a".repeat(1_000_000);
    // A 1 MB three-segment JWS-looking token.
    let jws = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"ES256"}"#),
        "A".repeat(999_000),
        "B".repeat(86)
    );
    for (ctx, token) in [("plain", plain), ("jws", jws)] {
        let body = exchange_body(&token, RESOURCE);
        let bytes = body.to_string().into_bytes();
        assert!(bytes.len() < MIB, "{ctx}: body must stay under 1 MiB");
        let (status, resp) = post(&d, "/v1/exchange/token", "application/json", bytes).await;
        assert_error((status, &resp), 401, "invalid_client", ctx);
        assert_unchanged(&d, &before).await;
    }
    d.stop().await;
}

/// API.md §0 caps tokens at 16 KiB; a dev stub is a token too. A well-formed 1 MB stub must be
/// refused (401 invalid_client), not exchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_stub_subject_token_is_refused() {
    let d = Daemon::dev().await;
    d.register("code-search", RESOURCE).await;
    let before = tool_ids(&d).await;
    let pad = "p".repeat(750_000 - 100);
    let big_stub = stub(json!({"sub": "alice", "pad": pad}));
    assert!(big_stub.len() > 16 * 1024 && big_stub.len() <= 1_000_000);
    let bytes = exchange_body(&big_stub, RESOURCE).to_string().into_bytes();
    assert!(bytes.len() < MIB, "body must stay under 1 MiB");
    let (status, resp) = post(&d, "/v1/exchange/token", "application/json", bytes).await;
    assert_error((status, &resp), 401, "invalid_client", "1 MB stub");
    assert!(resp.get("access_token").is_none(), "{resp}");
    assert_unchanged(&d, &before).await;

    // Just over the cap (16 KiB + a little) is refused as well.
    let pad = "p".repeat(13_000);
    let over = stub(json!({"sub": "alice", "pad": pad}));
    assert!(over.len() > 16 * 1024, "{}", over.len());
    let (status, resp) = d.exchange(exchange_body(&over, RESOURCE)).await;
    assert_error((status, &resp), 401, "invalid_client", "stub over 16 KiB");
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

// ---------------------------------------------------------------- verify

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_verify_requests_are_400() {
    let d = Daemon::dev().await;
    let token = minted(&d).await;
    let before = tool_ids(&d).await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "missing token",
            json!({"tool_id": "code-search"}).to_string().into_bytes(),
        ),
        (
            "empty token",
            json!({"token": "", "tool_id": "code-search"})
                .to_string()
                .into_bytes(),
        ),
        (
            "missing tool_id",
            json!({"token": token}).to_string().into_bytes(),
        ),
        (
            "empty tool_id",
            json!({"token": token, "tool_id": ""})
                .to_string()
                .into_bytes(),
        ),
        (
            "tool_id a number",
            json!({"token": token, "tool_id": 7})
                .to_string()
                .into_bytes(),
        ),
        (
            "token a number",
            json!({"token": 5, "tool_id": "code-search"})
                .to_string()
                .into_bytes(),
        ),
        (
            "token an object",
            json!({"token": {"a": 1}, "tool_id": "code-search"})
                .to_string()
                .into_bytes(),
        ),
        ("malformed JSON", b"{\"token\": ".to_vec()),
        (
            "JSON array",
            json!([{"token": token, "tool_id": "code-search"}])
                .to_string()
                .into_bytes(),
        ),
        ("empty body", Vec::new()),
        (
            "duplicate tool_id member",
            format!(r#"{{"token":"{token}","tool_id":"code-search","tool_id":"other"}}"#)
                .into_bytes(),
        ),
        (
            "non-UTF-8",
            b"{\"token\":\"\xff\xfe\xfd\",\"tool_id\":\"code-search\"}".to_vec(),
        ),
        ("non-UTF-8 raw", vec![0xff, 0xfe, 0x00, 0x80, 0xc3]),
    ];
    for (ctx, bytes) in cases {
        let (status, resp) = post(&d, "/v1/mcp/verify", "application/json", bytes).await;
        assert_error((status, &resp), 400, "invalid_request", ctx);
        assert!(resp.get("verified").is_none(), "{ctx}: {resp}");
        assert_unchanged(&d, &before).await;
    }
    d.stop().await;
}

/// Replace the last segment of a compact JWS.
fn with_signature(token: &str, sig: &str) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_denied_with_the_right_check() {
    let d = Daemon::dev().await;
    let token = minted(&d).await;
    let before = tool_ids(&d).await;
    let claims = claims_of(&token);
    let header = header_of(&token);
    let claims_b64 = b64(claims.to_string().as_bytes());
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // Sanity: the real token verifies.
    let (status, body) = d.verify(&token, "code-search").await;
    assert_eq!(status, 200, "{body}");

    let mut flipped_sig = parts[2].to_string();
    let last = flipped_sig.pop().unwrap();
    // Flip the first character instead of the last (the last one may carry padding bits).
    let first = flipped_sig.remove(0);
    let first = if first == 'A' { 'B' } else { 'A' };
    flipped_sig.insert(0, first);
    flipped_sig.push(last);
    // A structurally valid ES256 signature (64 bytes) that is wrong.
    let zero_sig = b64(&[0u8; 64]);
    let garbage_sig = b64(&[0x5a; 64]);

    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    let hs256 = format!(
        "{}.{claims_b64}.{}",
        b64(hs_header.to_string().as_bytes()),
        b64(b"any-hmac-signature-at-all-32-byt")
    );
    let none_b64 = b64(br#"{"alg":"none"}"#);

    let cases: Vec<(&str, String, &str)> = vec![
        ("1 MB token", "a".repeat(1_000_000), "malformed"),
        (
            "1 MB three segments",
            format!("{}.{}.{}", parts[0], "A".repeat(1_000_000), parts[2]),
            "malformed",
        ),
        (
            "2 segments",
            format!("{}.{}", parts[0], parts[1]),
            "malformed",
        ),
        ("4 segments", format!("{token}.{}", parts[2]), "malformed"),
        ("garbage", "not-a-jwt".to_string(), "malformed"),
        (
            "whitespace inside",
            format!("{} .{}.{}", parts[0], parts[1], parts[2]),
            "malformed",
        ),
        (
            "padded base64",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            "malformed",
        ),
        (
            "alg none, with signature",
            format!("{none_b64}.{claims_b64}.{}", parts[2]),
            "algorithm",
        ),
        ("alg HS256", hs256, "algorithm"),
        (
            "flipped signature",
            with_signature(&token, &flipped_sig),
            "signature",
        ),
        (
            "zero signature",
            with_signature(&token, &zero_sig),
            "signature",
        ),
        (
            "garbage signature",
            with_signature(&token, &garbage_sig),
            "signature",
        ),
        (
            "short signature",
            with_signature(&token, &b64(b"short")),
            "signature",
        ),
    ];
    for (ctx, bad, check) in cases {
        let (status, resp) = d.verify(&bad, "code-search").await;
        assert_denied((status, &resp), check, ctx);
        assert!(resp.get("verified").is_none(), "{ctx}: {resp}");
        let text = resp.to_string();
        assert!(!text.contains(&token), "{ctx}: the token is echoed: {resp}");
        assert_unchanged(&d, &before).await;
    }

    // A real token, for a tool that is not registered.
    let (status, resp) = d.verify(&token, "not-registered").await;
    assert_denied((status, &resp), "registration", "unregistered tool");
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

/// An unsecured JWT (`alg: none`, empty third segment) is denied by the algorithm check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_with_an_empty_signature_is_an_algorithm_denial() {
    let d = Daemon::dev().await;
    let token = minted(&d).await;
    let before = tool_ids(&d).await;
    let claims_b64 = b64(claims_of(&token).to_string().as_bytes());
    let unsecured = format!("{}.{claims_b64}.", b64(br#"{"alg":"none"}"#));
    let (status, resp) = d.verify(&unsecured, "code-search").await;
    assert_denied((status, &resp), "algorithm", "alg none, empty signature");
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

// ---------------------------------------------------------------- routing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods() {
    let d = Daemon::dev().await;
    let addr = addr_of(&d);
    let before = tool_ids(&d).await;

    for path in [
        "/nope",
        "/v1",
        "/v1/mcp",
        "/v1/mcp/verify/extra",
        "/v1/tools/a/b/c",
        "/v1/tools/a/audit/x",
    ] {
        let (status, body) = d.call(Method::GET, path, None).await;
        assert_error((status, &body), 404, "not_found", path);
    }
    let (status, body) = d.call(Method::POST, "/v1/nope", Some(json!({}))).await;
    assert_error((status, &body), 404, "not_found", "POST /v1/nope");

    let cases: [(&str, &str, &str); 5] = [
        ("PUT", "/v1/mcp/verify", "POST"),
        ("GET", "/v1/mcp/verify", "POST"),
        ("GET", "/v1/exchange/token", "POST"),
        ("DELETE", "/v1/sys/health", "GET"),
        ("PATCH", "/v1/mcp/tools", "POST"),
    ];
    for (method, path, must_allow) in cases {
        let req = request_head(
            method,
            path,
            &addr,
            "Content-Type: application/json\r\nContent-Length: 2\r\n",
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(b"{}");
        let resp = raw_http(&addr, bytes).await;
        assert_eq!(resp.status, 405, "{method} {path}: {resp:?}");
        assert_eq!(
            resp.body["error"],
            json!("method_not_allowed"),
            "{method} {path}: {resp:?}"
        );
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header: {resp:?}"));
        assert!(
            allow.split(',').any(|m| m.trim() == must_allow),
            "{method} {path}: Allow {allow}"
        );
        assert!(
            !allow.split(',').any(|m| m.trim() == method),
            "{method} {path}: Allow {allow} lists the refused method"
        );
    }
    assert_unchanged(&d, &before).await;
    d.stop().await;
}

// ---------------------------------------------------------------- burst

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_requests_leaves_the_daemon_serving() {
    let d = Daemon::dev().await;
    let token = minted(&d).await;
    let before = tool_ids(&d).await;
    let client = d.client();

    let mut tasks = Vec::new();
    for i in 0..200usize {
        let client = client.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let (method, path, ct, bytes, want): (Method, &str, &str, Vec<u8>, u16) = match i % 8 {
                0 => (Method::POST, "/v1/mcp/tools", "application/json", b"{\"tool_id\":".to_vec(), 400),
                1 => (
                    Method::POST,
                    "/v1/mcp/tools",
                    "application/json",
                    json!({"tool_id": "bad id", "resource_uri": RESOURCE}).to_string().into_bytes(),
                    400,
                ),
                2 => (
                    Method::POST,
                    "/v1/exchange/token",
                    "application/json",
                    json!({"grant_type": "password"}).to_string().into_bytes(),
                    400,
                ),
                3 => (Method::POST, "/v1/exchange/token", "text/plain", b"hello".to_vec(), 415),
                4 => (
                    Method::POST,
                    "/v1/mcp/verify",
                    "application/json",
                    json!({"token": with_signature(&token, &b64(&[1u8; 64])), "tool_id": "code-search"})
                        .to_string()
                        .into_bytes(),
                    403,
                ),
                5 => (
                    Method::POST,
                    "/v1/mcp/verify",
                    "application/json",
                    vec![0xff; 64],
                    400,
                ),
                6 => (Method::GET, "/v1/does-not-exist", "", Vec::new(), 404),
                _ => (
                    Method::POST,
                    "/v1/mcp/tools",
                    "application/json",
                    vec![b'x'; MIB + 1],
                    413,
                ),
            };
            let body = (!ct.is_empty()).then_some((ct, bytes));
            let (status, value) = client.send(method, path, body).await.unwrap();
            assert_eq!(status.as_u16(), want, "request {i}: {value}");
            assert!(value["error"].is_string(), "request {i}: {value}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_unchanged(&d, &before).await;
    // And good requests still work.
    let (status, body) = d.verify(&token, "code-search").await;
    assert_eq!(status, 200, "{body}");
    d.stop().await;
}
