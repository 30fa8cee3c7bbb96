//! Robustness: crash safety under SIGKILL (the real binary, restarted on the same database)
//! and hostile HTTP clients (slow headers, connection floods, oversized heads and bodies,
//! clients vanishing mid-body, HTTP/1.0, odd bytes in paths), none of which may stall the
//! others.

use super::harness::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RESOURCE: &str = "https://mcp.example.com/tools/robust";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

// ---------------------------------------------------------------------------------------
// Raw HTTP: the tests below need to send what no well-behaved client would.
// ---------------------------------------------------------------------------------------

/// A response as read off the wire.
#[derive(Debug, Default)]
struct Raw {
    /// The status of the first response, if one arrived.
    status: Option<u16>,
    /// The status line, e.g. `HTTP/1.0 200 OK`.
    status_line: String,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The server closed the connection (EOF or reset) before the read deadline.
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?} {}",
                self.status_line,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether a complete response (head and, with Content-Length, the whole body) arrived.
    fn complete(&self) -> bool {
        self.status.is_some()
            && self
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .is_none_or(|n| self.body.len() == n)
    }
}

/// Parse the first response in `bytes` (the body is everything after the head, or exactly
/// Content-Length bytes of it).
fn parse(bytes: &[u8]) -> Raw {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Raw::default();
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(n);
    }
    Raw {
        status,
        status_line,
        headers,
        body,
        closed: false,
    }
}

/// Read until the peer closes (or resets) the connection or `limit` passes; whether it closed.
async fn read_until_close(r: &mut (impl AsyncRead + Unpin), limit: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0) | Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Send `request` while reading the answer (so a response sent before the request is fully
/// written is still seen), until the server closes or `limit` passes. Never half-closes.
async fn roundtrip(addr: &str, request: &[u8], limit: Duration) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.split();
    let write = async {
        // The server may stop reading (and close) before all of it is written.
        let _ = tokio::time::timeout(limit, w.write_all(request)).await;
    };
    let ((), (bytes, closed)) = tokio::join!(write, read_until_close(&mut r, limit));
    Raw {
        closed,
        ..parse(&bytes)
    }
}

fn host(d: &Daemon) -> String {
    d.url.trim_start_matches("http://").to_string()
}

/// A `Connection: close` request with a JSON body.
fn request(method: &str, path: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The daemon answers a health check, within `limit`.
async fn healthy_within(d: &Daemon, limit: Duration) -> Duration {
    let started = Instant::now();
    let health = tokio::time::timeout(limit, d.client().health())
        .await
        .unwrap_or_else(|_| panic!("no health answer within {limit:?}"))
        .unwrap();
    assert_eq!(health["initialized"], true, "{health}");
    started.elapsed()
}

async fn tool_count(d: &Daemon) -> u64 {
    let (status, list) = d.call(http::Method::GET, "/v1/tools", None).await;
    assert_eq!(status, 200, "{list}");
    list["count"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------
// Bad clients, each a reusable function so that they can also run all at once (test 9).
// ---------------------------------------------------------------------------------------

/// Send a request line one byte every 300 ms; the server must give up on it (close, or 408)
/// within about the header timeout. How long it took.
async fn slow_header_client(addr: &str, header_timeout: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let line = b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut got = Vec::new();
    let mut i = 0usize;
    loop {
        // Keep dribbling (filler after the line) until the server ends it.
        let byte = line.get(i).copied().unwrap_or(b'a');
        i += 1;
        if s.write_all(&[byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        // A hang guard, not a measure: generous beyond the header timeout.
        assert!(
            started.elapsed() < header_timeout + Duration::from_secs(30),
            "a client dribbling its headers was never cut off ({i} bytes sent)"
        );
    }
    let took = started.elapsed();
    if !got.is_empty() {
        assert_eq!(
            parse(&got).status,
            Some(408),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    took
}

/// A request head of `kib` KiB (one huge header): 431, and the connection ends.
async fn oversized_header_client(addr: &str, kib: usize) {
    let mut req = b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', kib * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let r = roundtrip(addr, &req, Duration::from_secs(10)).await;
    assert_eq!(
        r.status,
        Some(431),
        "a {kib} KiB request head (the limit is 64 KiB): {} {}",
        r.status_line,
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.closed, "the connection stays open after a 431");
}

/// A chunked registration of 2 MiB in 64 KiB chunks: 413 once past the 1 MiB limit.
async fn chunked_over_limit_client(addr: &str) {
    let mut req =
        b"POST /v1/tools HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..32 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = roundtrip(addr, &req, Duration::from_secs(10)).await;
    assert_eq!(r.status, Some(413), "{r:?}");
    assert_eq!(r.json()["error"], "invalid_request", "{r:?}");
    assert!(r.closed, "the connection stays open after a 413 mid-body");
}

/// Announce 100 000 bytes of a registration, send 1 000, vanish.
async fn vanishing_client(addr: &str, n: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body =
        json!({"tool_id": format!("vanished-{n}"), "resource_uri": "https://vanished.example/t",
                      "description": "x".repeat(2000)})
        .to_string();
    let mut req =
        b"POST /v1/tools HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
        Content-Length: 100000\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&body.as_bytes()[..1000]);
    s.write_all(&req).await.unwrap();
    // Let the server start on the body before the client disappears.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(s);
}

/// HTTP/1.0: a GET and a POST with Content-Length; both answered, the connection closed.
async fn http10_client(addr: &str, token: &str, tool_id: &str) {
    let r = roundtrip(
        addr,
        b"GET /v1/sys/health HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(r.closed, "an HTTP/1.0 connection stays open: {r:?}");
    assert_eq!(r.json()["initialized"], true);

    let body = json!({"token": token, "tool_id": tool_id}).to_string();
    let req = format!(
        "POST /v1/mcp/verify HTTP/1.0\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = roundtrip(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(r.closed, "an HTTP/1.0 connection stays open: {r:?}");
    assert_eq!(r.json()["verified"], true, "{r:?}");
}

/// Invalid UTF-8, raw non-ASCII bytes and traversal attempts in paths: refused, never 5xx.
async fn odd_path_client(addr: &str) {
    for path in [
        "/v1/tools/%FF%FE",
        "/v1/tools/..%2F..%2Fetc%2Fpasswd",
        "/v1/tools/%00",
        "/v1/tools/%",
        "/v1/tools?protocol=%FF",
        "/v1/../../etc/passwd",
    ] {
        let r = roundtrip(addr, &request("GET", path, None), Duration::from_secs(5)).await;
        let status = r
            .status
            .unwrap_or_else(|| panic!("{path}: no answer {r:?}"));
        assert!(
            status == 400 || status == 404,
            "{path}: expected 400 or 404, got {r:?}"
        );
        let body = r.json();
        assert!(body["error"].is_string(), "{path}: {body}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{path}: {r:?}"
        );
    }
    // Raw bytes above 0x7F in the request target: the parser refuses the request line.
    for target in [
        &b"/v1/tools/\xff\xfe"[..],
        b"/v1/sys/health\xc3\x28",
        b"/\x80",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = roundtrip(addr, &req, Duration::from_secs(5)).await;
        assert_eq!(
            r.status,
            Some(400),
            "{}: {r:?}",
            String::from_utf8_lossy(target)
        );
        assert!(r.closed, "{r:?}");
    }
}

/// Hold `n` connections open without sending a byte.
async fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// Wait until the server has closed every one of `conns` (each read ends in EOF or an
/// error) without the client sending a byte; panics after `limit`.
async fn all_closed_within(conns: &mut [TcpStream], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for (i, c) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("idle connection {i} got {n} bytes"),
            Err(_) => panic!("idle connection {i} was still open after {limit:?}"),
        }
    }
}

async fn registered_token(d: &Daemon, tool_id: &str) -> String {
    d.register(tool_id, RESOURCE).await;
    d.token_for("robust-agent", RESOURCE).await
}

// ---------------------------------------------------------------------------------------
// 2-8: one hostile client kind at a time.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_without_stalling_others() {
    let timeout = Duration::from_secs(1);
    let d = Daemon::with(|c| {
        c.dev = true;
        c.header_read_timeout = timeout;
    })
    .await;
    let addr = host(&d);
    let slow = {
        let addr = addr.clone();
        tokio::spawn(async move { slow_header_client(&addr, timeout).await })
    };
    // Meanwhile, other clients are answered (how fast is a benchmark's question).
    let mut answered = 0;
    while !slow.is_finished() || answered == 0 {
        healthy_within(&d, Duration::from_secs(30)).await;
        answered += 1;
    }
    let took = slow.await.unwrap();
    // Not before the header timeout (a lower bound the server's timer guarantees).
    assert!(
        took >= timeout - Duration::from_millis(100),
        "the slow client was cut off after {took:?} (header timeout {timeout:?})"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_capped_and_the_daemon_keeps_answering() {
    let timeout = Duration::from_secs(1);
    let cap = 32;
    let d = Daemon::with(|c| {
        c.dev = true;
        c.max_connections = cap;
        c.header_read_timeout = timeout;
    })
    .await;
    let addr = host(&d);

    // Exactly `cap` idle connections hold every slot: one more waits for an idle one to time
    // out (the cap holds), then is answered (idle connections cannot hold a slot forever).
    let mut held = idle_connections(&addr, cap).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let blocked = tokio::time::timeout(Duration::from_millis(400), d.client().health()).await;
    assert!(
        blocked.is_err(),
        "a client beyond max_connections={cap} was served while {cap} idle connections held every slot"
    );
    let waited = started.elapsed() + healthy_within(&d, Duration::from_secs(30)).await;
    eprintln!("robustness: the client beyond the cap was answered after {waited:?}");
    all_closed_within(&mut held, Duration::from_secs(30)).await;
    drop(held);

    // A flood of 200 idle connections, 6+ times the cap: they are accepted `cap` at a time
    // and each batch is cut off after the header timeout, so a client queued behind all of
    // them is answered after about ceil(200 / cap) header timeouts, never stuck.
    let flood = 200;
    let mut conns = idle_connections(&addr, flood).await;
    let rounds = u32::try_from(flood.div_ceil(cap)).unwrap();
    // A hang guard, not a measure: generous beyond the expected rounds of header timeouts.
    let bound = timeout * (rounds + 1) + Duration::from_secs(30);
    let waited = healthy_within(&d, bound).await;
    eprintln!(
        "robustness: health answered {waited:?} after a flood of {flood} idle connections \
         (max_connections {cap}, header timeout {timeout:?})"
    );
    // Every flood connection is served in turn: cut off after the header timeout.
    all_closed_within(&mut conns, bound).await;
    drop(conns);

    // Once the flood is gone, answers are prompt again, and the daemon is intact.
    for _ in 0..5 {
        healthy_within(&d, Duration::from_secs(30)).await;
    }
    let token = registered_token(&d, "flooded").await;
    assert_eq!(d.verify(&token, "flooded").await.0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_the_daemon_keeps_serving() {
    let d = Daemon::dev().await;
    let addr = host(&d);
    // 256 KiB, then 100 KiB: both over the documented 64 KiB limit on the request head.
    for kib in [256, 100, 100] {
        oversized_header_client(&addr, kib).await;
        healthy_within(&d, Duration::from_secs(2)).await;
    }
    // Just under the limit is still served.
    let mut req =
        b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 60 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let r = roundtrip(&addr, &req, Duration::from_secs(5)).await;
    assert_eq!(r.status, Some(200), "{r:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_gets_413() {
    let d = Daemon::dev().await;
    let addr = host(&d);
    chunked_over_limit_client(&addr).await;
    assert_eq!(tool_count(&d).await, 0);
    healthy_within(&d, Duration::from_secs(2)).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_body_store_nothing_and_free_their_slots() {
    // A small cap: a connection whose client vanished must give its slot back.
    let d = Daemon::with(|c| {
        c.dev = true;
        c.max_connections = 16;
    })
    .await;
    let addr = host(&d);
    let before = tool_count(&d).await;
    let mut set = tokio::task::JoinSet::new();
    for n in 0..50 {
        let addr = addr.clone();
        set.spawn(async move { vanishing_client(&addr, n).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    // More requests than the cap, one after another, each prompt: no slot was leaked.
    for _ in 0..40 {
        let t = healthy_within(&d, Duration::from_secs(3)).await;
        assert!(t < Duration::from_secs(1), "{t:?}");
    }
    assert_eq!(
        tool_count(&d).await,
        before,
        "a half-sent registration was stored"
    );
    for n in 0..50 {
        let (status, _) = d
            .call(http::Method::GET, &format!("/v1/tools/vanished-{n}"), None)
            .await;
        assert_eq!(status, 404);
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_requests_are_answered_and_closed() {
    let d = Daemon::dev().await;
    let token = registered_token(&d, "robust-tool").await;
    http10_client(&host(&d), &token, "robust-tool").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_bytes_in_paths_are_refused_cleanly() {
    let d = Daemon::dev().await;
    d.register("robust-tool", RESOURCE).await;
    odd_path_client(&host(&d)).await;
    healthy_within(&d, Duration::from_secs(2)).await;
    assert_eq!(tool_count(&d).await, 1);
    d.stop().await;
}

// ---------------------------------------------------------------------------------------
// 9: all of them at once, beside a stream of good verify calls.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bad_client_stalls_the_good_ones() {
    let timeout = Duration::from_secs(1);
    let d = Daemon::with(|c| {
        c.dev = true;
        c.header_read_timeout = timeout;
    })
    .await;
    let addr = host(&d);
    let token = registered_token(&d, "robust-tool").await;
    let before = tool_count(&d).await;

    let mut bad = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let a = addr.clone();
        bad.spawn(async move {
            slow_header_client(&a, timeout).await;
        });
    }
    {
        let a = addr.clone();
        bad.spawn(async move {
            let conns = idle_connections(&a, 200).await;
            tokio::time::sleep(timeout * 2).await;
            drop(conns);
        });
    }
    for _ in 0..5 {
        let a = addr.clone();
        // 256 KiB: refused even with the head-limit bug the 100 KiB case of
        // `oversized_headers_get_431_and_the_daemon_keeps_serving` shows; only stalls count here.
        bad.spawn(async move { oversized_header_client(&a, 256).await });
    }
    for _ in 0..3 {
        let a = addr.clone();
        bad.spawn(async move { chunked_over_limit_client(&a).await });
    }
    for n in 0..50 {
        let a = addr.clone();
        bad.spawn(async move { vanishing_client(&a, n).await });
    }
    for _ in 0..3 {
        let (a, t) = (addr.clone(), token.clone());
        bad.spawn(async move { http10_client(&a, &t, "robust-tool").await });
    }
    for _ in 0..3 {
        let a = addr.clone();
        bad.spawn(async move { odd_path_client(&a).await });
    }

    let mut latencies = Vec::new();
    let client = d.client();
    // Good calls while the bad clients run, and at least 10 of them however slow the machine;
    // the pause between calls only paces them.
    while !bad.is_empty() || latencies.len() < 10 {
        let started = Instant::now();
        let v = tokio::time::timeout(
            Duration::from_secs(30),
            client.verify(&token, "robust-tool"),
        )
        .await
        .expect("a good verify call stalled for 30 s")
        .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(v["verified"], true, "{v}");
        while let Some(done) = bad.try_join_next() {
            done.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "robustness: {} good verify calls beside the bad clients, worst {worst:?}",
        latencies.len()
    );
    assert!(latencies.len() >= 10, "{latencies:?}");
    assert_eq!(tool_count(&d).await, before, "a bad client stored a tool");
    d.stop().await;
}

// ---------------------------------------------------------------------------------------
// 1: crash safety. The real binary, killed with SIGKILL at random moments while clients
// stream writes, restarted on the same database every time.
// ---------------------------------------------------------------------------------------

const CYCLES: usize = 20;

/// xorshift64, seeded from the clock (or `TOOLGATE_CRASH_SEED` to replay a run).
struct XorShift(u64);

impl XorShift {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("TOOLGATE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| {
                let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                (t.as_nanos() as u64) ^ u64::from(std::process::id())
            });
        (Self(seed | 1), seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// One blocking `Connection: close` exchange. An error unless a complete response arrived.
fn http_sync(addr: &str, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Raw> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&request(method, path, body))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let raw = parse(&out);
    if raw.complete() {
        Ok(raw)
    } else {
        Err(std::io::Error::other("incomplete response"))
    }
}

/// A `toolgate serve --dev` child on port 0, its log appended to `log`; SIGKILLed when dropped.
fn spawn_daemon(db: &Path, log: &Path) -> Served {
    Served::start(
        &["--dev".as_ref(), "--db".as_ref(), db.as_os_str()],
        Some(log),
    )
}

/// Writes the daemon acknowledged (answered 2xx), with the request ids of their answers.
#[derive(Debug, Default, Clone)]
struct Acks {
    tools: Vec<String>,
    /// Revoked subject URIs: by the operator API or by a dev-JSON signal.
    revoked: Vec<String>,
    /// (kind of call, x-request-id) of every acknowledged call, for the audit rows.
    requests: Vec<(&'static str, String)>,
    /// Answers that are neither 2xx nor a dead connection.
    unexpected: Vec<String>,
    /// The slowest acknowledged call of each kind.
    slowest: HashMap<&'static str, Duration>,
}

impl Acks {
    fn merge(&mut self, other: Acks) {
        self.tools.extend(other.tools);
        self.revoked.extend(other.revoked);
        self.requests.extend(other.requests);
        self.unexpected.extend(other.unexpected);
        for (kind, took) in other.slowest {
            let slowest = self.slowest.entry(kind).or_default();
            *slowest = (*slowest).max(took);
        }
    }
}

/// Run one write; `Some(rid)` if acknowledged, `None` once the daemon is gone.
fn write(
    acks: &Mutex<Acks>,
    addr: &str,
    kind: &'static str,
    path: &str,
    body: &Value,
    want: u16,
) -> Option<String> {
    let started = Instant::now();
    let r = http_sync(addr, "POST", path, Some(body)).ok()?;
    let took = started.elapsed();
    let mut acks = acks.lock().unwrap();
    if r.status != Some(want) {
        acks.unexpected.push(format!(
            "{kind} {path}: {} {}",
            r.status_line,
            String::from_utf8_lossy(&r.body)
        ));
        return None;
    }
    let rid = r.header("x-request-id").unwrap_or_default().to_string();
    assert!(!rid.is_empty(), "{kind}: no x-request-id");
    acks.requests.push((kind, rid.clone()));
    let slowest = acks.slowest.entry(kind).or_default();
    *slowest = (*slowest).max(took);
    Some(rid)
}

/// Spawn a client thread running `step(i)` for i = 0, 1, ... until it returns false (the
/// daemon is gone) or `stop` is set.
fn client_thread(
    stop: &Arc<AtomicBool>,
    mut step: impl FnMut(u64) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        for i in 0.. {
            if stop.load(Ordering::Relaxed) || !step(i) {
                break;
            }
        }
    })
}

/// Stream writes at `addr` until the daemon dies or `stop` is set: two clients registering
/// tools, one revoking subjects through the operator API, one pushing dev-JSON signals, and
/// one calling verify (each call appends an audit row).
fn stream_writes(
    addr: &str,
    tag: &str,
    token: &str,
    stop: &Arc<AtomicBool>,
) -> (Arc<Mutex<Acks>>, Vec<std::thread::JoinHandle<()>>) {
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut threads = Vec::new();
    for client in 0..2 {
        let (acks, addr, tag) = (acks.clone(), addr.to_string(), tag.to_string());
        threads.push(client_thread(stop, move |i| {
            let id = format!("crash-{tag}-{client}-{i}");
            let body =
                json!({"tool_id": id, "resource_uri": format!("https://crash.example/{id}")});
            let done = write(&acks, &addr, "registration", "/v1/tools", &body, 201);
            done.inspect(|_| acks.lock().unwrap().tools.push(id))
                .is_some()
        }));
    }
    {
        let (acks, addr, tag) = (acks.clone(), addr.to_string(), tag.to_string());
        threads.push(client_thread(stop, move |i| {
            let uri = format!("wimse://dev.local/ns/crash/sa/r-{tag}-{i}");
            let body = json!({"kind": "subject", "value": uri});
            let done = write(
                &acks,
                &addr,
                "revocation",
                "/v1/signals/revocations",
                &body,
                201,
            );
            done.inspect(|_| acks.lock().unwrap().revoked.push(uri))
                .is_some()
        }));
    }
    {
        let (acks, addr, tag) = (acks.clone(), addr.to_string(), tag.to_string());
        threads.push(client_thread(stop, move |i| {
            let uri = format!("wimse://dev.local/ns/crash/sa/s-{tag}-{i}");
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let set = json!({
                "iss": "https://sandbox.crash.example",
                "jti": format!("crash-{tag}-{i}"),
                "iat": now,
                "aud": "toolgate",
                "sub_id": {"format": "uri", "uri": uri},
                "events": {SESSION_REVOKED: {}},
            });
            let done = write(&acks, &addr, "signal", "/v1/signals/events", &set, 202);
            done.inspect(|_| acks.lock().unwrap().revoked.push(uri))
                .is_some()
        }));
    }
    {
        let (acks, addr) = (acks.clone(), addr.to_string());
        let body = json!({"token": token, "tool_id": "crash-base"});
        threads.push(client_thread(stop, move |_| {
            // Paced: unpaced, verify calls keep the audit writer holding SQLite's write lock
            // and the state changes above crawl (see the report).
            std::thread::sleep(Duration::from_millis(1));
            write(&acks, &addr, "verify", "/v1/mcp/verify", &body, 200).is_some()
        }));
    }
    (acks, threads)
}

/// Every acknowledged tool and revocation is there after a restart.
fn check_durable(addr: &str, all: &Acks, last_cycle: &Acks) {
    // The last cycle's tools, one by one.
    for id in &last_cycle.tools {
        let r = http_sync(addr, "GET", &format!("/v1/tools/{id}"), None).unwrap();
        assert_eq!(
            r.status,
            Some(200),
            "acknowledged tool {id} was lost: {r:?}"
        );
        assert_eq!(r.json()["tool_id"], id.as_str());
    }
    // Every cycle's tools, in one listing.
    let r = http_sync(addr, "GET", "/v1/tools", None).unwrap();
    assert_eq!(r.status, Some(200), "{r:?}");
    let listed: HashSet<String> = r.json()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool_id"].as_str().unwrap().to_string())
        .collect();
    for id in &all.tools {
        assert!(listed.contains(id), "acknowledged tool {id} was lost");
    }
    // Every revocation, paging through the list.
    let mut revoked = HashSet::new();
    let mut after = 0;
    loop {
        let r = http_sync(
            addr,
            "GET",
            &format!("/v1/signals/revocations?after={after}&limit=500"),
            None,
        )
        .unwrap();
        assert_eq!(r.status, Some(200), "{r:?}");
        let page = r.json();
        for row in page["revocations"].as_array().unwrap() {
            assert_eq!(row["stored"], Value::Null, "an unstored revocation: {row}");
            revoked.insert(row["value"].as_str().unwrap().to_string());
        }
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    for uri in &all.revoked {
        assert!(
            revoked.contains(uri),
            "acknowledged revocation of {uri} was lost"
        );
    }
}

/// The stub-token exchange for `crash-base` (registered in the first cycle).
fn crash_token(addr: &str, acks: &mut Acks) -> String {
    let body = exchange_body(
        &stub(json!({"sub": "crash-agent"})),
        "https://crash.example/base",
    );
    let r = http_sync(addr, "POST", "/v1/exchange/token", Some(&body)).unwrap();
    assert_eq!(r.status, Some(200), "{r:?}");
    acks.requests
        .push(("exchange", r.header("x-request-id").unwrap().to_string()));
    r.json()["access_token"].as_str().unwrap().to_string()
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let log = dir.path().join("daemon.log");
    let (mut rng, seed) = XorShift::seeded();
    eprintln!("robustness: crash test seed {seed} (TOOLGATE_CRASH_SEED={seed} replays it)");
    let started = Instant::now();

    let mut all = Acks::default();
    let mut last = Acks::default();
    // Per cycle: (acknowledged writes, kill delay in ms).
    let mut cycles: Vec<(usize, u64)> = Vec::new();
    for cycle in 0..CYCLES {
        let mut d = spawn_daemon(&db, &log);
        check_durable(&d.addr, &all, &last);
        let mut setup = Acks::default();
        if cycle == 0 {
            let body =
                json!({"tool_id": "crash-base", "resource_uri": "https://crash.example/base"});
            let r = http_sync(&d.addr, "POST", "/v1/tools", Some(&body)).unwrap();
            assert_eq!(r.status, Some(201), "{r:?}");
            setup.tools.push("crash-base".into());
            setup.requests.push((
                "registration",
                r.header("x-request-id").unwrap().to_string(),
            ));
        }
        let token = crash_token(&d.addr, &mut setup);

        let stop = Arc::new(AtomicBool::new(false));
        let (acks, threads) = stream_writes(&d.addr, &format!("{seed}-{cycle}"), &token, &stop);
        let delay = rng.between(50, 400);
        std::thread::sleep(Duration::from_millis(delay));
        d.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let mut acks = std::mem::take(&mut *acks.lock().unwrap());
        assert!(
            acks.unexpected.is_empty(),
            "unexpected answers: {:?}",
            acks.unexpected
        );
        acks.merge(setup);
        cycles.push((acks.requests.len(), delay));
        all.merge(acks.clone());
        last = acks;
    }
    // One more start: the last cycle's writes survived too.
    {
        let mut d = spawn_daemon(&db, &log);
        check_durable(&d.addr, &all, &last);
        d.kill();
    }
    assert!(
        all.tools.len() > CYCLES && all.revoked.len() > CYCLES,
        "too few writes to mean anything: {} tools, {} revocations",
        all.tools.len(),
        all.revoked.len()
    );

    // The file itself: intact, and the audit chain verifies across every crash.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let key = toolgate::audit::read_key_file(&toolgate::config::default_audit_key_path(&db))
        .unwrap()
        .expect("the audit key beside the database");
    let rows = match toolgate::store::audit::verify_chain(&conn, Some(&key)).unwrap() {
        Ok(n) => n,
        Err(brk) => panic!("the audit chain is broken after SIGKILLs: {brk}"),
    };
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM tools", [], |r| r.get(0))
        .unwrap();
    assert!(stored >= i64::try_from(all.tools.len()).unwrap());

    // Audit rows of acknowledged calls. State changes (registrations, revocations, signals)
    // are acknowledged only once their own rows are committed: asserted. Decisions (verify,
    // exchange) and the admin-access row of each admin call are queued and written in
    // batches after the answer, so a SIGKILL can lose them: measured and reported.
    let mut rows_present = HashSet::new();
    {
        let mut stmt = conn
            .prepare("SELECT kind, request_id FROM audit_log")
            .unwrap();
        let found = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .unwrap();
        for row in found {
            rows_present.insert(row.unwrap());
        }
    }
    // (call, row kind) -> (acknowledged calls, calls missing that row)
    let mut tally: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    for (call, rid) in &all.requests {
        let row_kinds: &[&str] = match *call {
            "registration" => &["registration", "admin"],
            "revocation" => &["revocation", "admin"],
            "signal" => &["signal", "revocation"],
            other => &[other],
        };
        for kind in row_kinds {
            let e = tally.entry((call, kind)).or_default();
            e.0 += 1;
            if !rows_present.contains(&(kind.to_string(), rid.clone())) {
                e.1 += 1;
            }
        }
    }
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    eprintln!(
        "robustness: {CYCLES} SIGKILL cycles in {:?}: {} tools and {} revocations acknowledged, \
         all durable; {rows} audit rows, chain intact, integrity ok",
        started.elapsed(),
        all.tools.len(),
        all.revoked.len()
    );
    for ((call, kind), (acked, missing)) in &tally {
        eprintln!(
            "robustness:   {missing} of {acked} acknowledged {call} calls lack their {kind} audit row"
        );
    }
    let mut slowest: Vec<_> = all.slowest.iter().collect();
    slowest.sort();
    eprintln!("robustness: slowest acknowledged call of each kind: {slowest:?}");
    eprintln!("robustness: per cycle (acknowledged calls, kill delay ms): {cycles:?}");
    for durable in [
        ("registration", "registration"),
        ("revocation", "revocation"),
        ("signal", "signal"),
        ("signal", "revocation"),
    ] {
        let missing = tally
            .iter()
            .find(|(k, _)| *k == durable)
            .map_or(0, |(_, (_, m))| *m);
        assert_eq!(
            missing, 0,
            "acknowledged {} calls lost their {} audit row in a SIGKILL",
            durable.0, durable.1
        );
    }
}
