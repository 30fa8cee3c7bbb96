use super::harness::*;

use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rusqlite::{params, Connection, OpenFlags};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use toolgate::store::audit::{chain_hash, hex, verify_chain, ChainBreak, Record, GENESIS};

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const CODE: &str = "https://mcp.example.com/tools/code-search";
const SQL: &str = "https://mcp.example.com/tools/sql-admin";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

// ---------------------------------------------------------------------------------------------
// Helpers: raw HTTP with headers, bulk load, SSE, the audit table, Prometheus text, the CLI
// ---------------------------------------------------------------------------------------------

fn authority(d: &Daemon) -> String {
    d.url.trim_start_matches("http://").to_string()
}

/// The dev-mode WIMSE subject a stub `{"sub": name}` becomes.
fn wimse(name: &str) -> String {
    format!("wimse://dev.local/ns/default/sa/{name}")
}

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn request_id(&self) -> String {
        self.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("every response carries x-request-id")
            .to_string()
    }
}

/// One keep-alive HTTP/1.1 connection to the daemon.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Conn {
    async fn open(d: &Daemon) -> Conn {
        Conn::connect(&authority(d)).await
    }

    async fn connect(authority: &str) -> Conn {
        let authority = authority.to_string();
        let stream = TcpStream::connect(&authority).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn { sender, authority }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let bytes = match body {
            Some((ct, bytes)) => {
                b = b.header(header::CONTENT_TYPE, ct);
                bytes
            }
            None => Vec::new(),
        };
        b.body(Full::new(Bytes::from(bytes))).unwrap()
    }

    /// Send a request and read the whole response.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Resp {
        let req = self.request(method, path, headers, body);
        self.sender.ready().await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.sender.send_request(req))
            .await
            .expect("response within 10 s")
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn verify(&mut self, token: &str, tool_id: &str) -> Resp {
        let body = json!({"token": token, "tool_id": tool_id}).to_string();
        self.send(
            Method::POST,
            "/v1/mcp/verify",
            &[],
            Some(("application/json", body.into_bytes())),
        )
        .await
    }
}

/// `n` denials reported by a gateway for `tool_id`, each with a fat subject and reason (about
/// 2 KB a live event), in reports of 100 over `conns` keep-alive connections; how many reports
/// got each status.
async fn report_blast(
    authority: String,
    tool_id: &str,
    fat: &str,
    n: usize,
    conns: usize,
) -> BTreeMap<u16, usize> {
    const PER_REPORT: usize = 100;
    let decision = json!({"tool_id": tool_id, "subject": fat, "decision": "deny",
                          "check": "signature", "reason": fat});
    let reports = n.div_ceil(PER_REPORT);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let share = reports / conns + usize::from(i < reports % conns);
        let mut conn = Conn::connect(&authority).await;
        let body =
            json!({"source": "load", "decisions": vec![decision.clone(); PER_REPORT]}).to_string();
        tasks.push(tokio::spawn(async move {
            let mut seen = BTreeMap::new();
            for _ in 0..share {
                let r = conn
                    .send(
                        Method::POST,
                        "/v1/mcp/decisions",
                        &[],
                        Some(("application/json", body.clone().into_bytes())),
                    )
                    .await;
                *seen.entry(r.status).or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (status, count) in t.await.unwrap() {
            *all.entry(status).or_insert(0) += count;
        }
    }
    all
}

/// One request on a fresh connection.
async fn request(d: &Daemon, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    Conn::open(d).await.send(method, path, headers, None).await
}

async fn post_json(d: &Daemon, path: &str, body: &Value) -> Resp {
    Conn::open(d)
        .await
        .send(
            Method::POST,
            path,
            &[],
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
}

/// `n` verify calls of `token` against `tool_id`, spread over `conns` keep-alive connections
/// to `authority`; how many got each status.
async fn blast(
    authority: String,
    token: String,
    tool_id: String,
    n: usize,
    conns: usize,
) -> BTreeMap<u16, usize> {
    let mut tasks = Vec::new();
    for i in 0..conns {
        let share = n / conns + usize::from(i < n % conns);
        let mut conn = Conn::connect(&authority).await;
        let (token, tool_id) = (token.clone(), tool_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = BTreeMap::new();
            for _ in 0..share {
                *seen
                    .entry(conn.verify(&token, &tool_id).await.status)
                    .or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (status, count) in t.await.unwrap() {
            *all.entry(status).or_insert(0) += count;
        }
    }
    all
}

/// A dev-JSON SET revoking the session of `uri`; expects 202.
async fn dev_signal(d: &Daemon, uri: &str) {
    static N: AtomicU64 = AtomicU64::new(0);
    let set = json!({
        "iss": "https://sandbox.starfly.dev",
        "jti": format!("observe-set-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)),
        "iat": d.clock_now(),
        "aud": "starfly",
        "sub_id": {"format": "uri", "uri": uri},
        "events": {SESSION_REVOKED: {}},
    });
    let r = post_json(d, "/v1/signals/events", &set).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

/// Wait until every queued audit record is written (the queue depth gauge reads 0).
async fn drain(d: &Daemon) {
    eventually("the audit queue drains", || async {
        let m = Metrics::scrape(d).await;
        (m.get("toolgate_audit_queue_depth", &[]) == Some(0.0)).then_some(())
    })
    .await;
}

/// One `audit_log` row as stored.
#[derive(Debug, Clone)]
struct Row {
    seq: i64,
    ts_ms: i64,
    kind: String,
    subject: String,
    target: String,
    decision: String,
    check: String,
    reason: String,
    request_id: String,
    jti: String,
    /// Lowercase hex (stored as 32 bytes).
    hash: String,
    count: i64,
}

impl Row {
    fn text_columns(&self) -> [(&'static str, &str); 9] {
        [
            ("kind", &self.kind),
            ("subject", &self.subject),
            ("target", &self.target),
            ("decision", &self.decision),
            ("check_name", &self.check),
            ("reason", &self.reason),
            ("request_id", &self.request_id),
            ("jti", &self.jti),
            ("hash", &self.hash),
        ]
    }

    /// The row's value of an `audit_runs` field: its subject or its tool.
    fn key(&self, field: &str) -> &str {
        if field == "subject" {
            &self.subject
        } else {
            &self.target
        }
    }

    fn record(&self) -> Record {
        Record {
            ts_ms: self.ts_ms,
            kind: self.kind.clone().into(),
            subject: self.subject.clone(),
            target: self.target.clone(),
            decision: self.decision.clone().into(),
            check: self.check.clone().into(),
            reason: self.reason.clone(),
            request_id: self.request_id.clone(),
            jti: self.jti.clone(),
            count: self.count,
        }
    }
}

fn read_rows(conn: &Connection) -> Vec<Row> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, ts_ms, kind, subject, target, decision, check_name, reason, request_id, \
             jti, hash, count FROM audit_log ORDER BY seq",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                seq: r.get(0)?,
                ts_ms: r.get(1)?,
                kind: r.get(2)?,
                subject: r.get(3)?,
                target: r.get(4)?,
                decision: r.get(5)?,
                check: r.get(6)?,
                reason: r.get(7)?,
                request_id: r.get(8)?,
                jti: r.get(9)?,
                hash: hex(&r.get::<_, Vec<u8>>(10)?),
                count: r.get(11)?,
            })
        })
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn audit_rows(db: &Path) -> Vec<Row> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    read_rows(&conn)
}

/// Copy the database (and its WAL files, if any are left) to `name` in the same directory.
fn copy_db(db: &Path, name: &str) -> PathBuf {
    let dir = db.parent().unwrap();
    let to = dir.join(name);
    std::fs::copy(db, &to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", to.display())).unwrap();
        }
    }
    to
}

/// A copy of `db` changed by `tamper`.
fn tampered(db: &Path, name: &str, tamper: impl FnOnce(&Connection)) -> PathBuf {
    let path = copy_db(db, name);
    let conn = Connection::open(&path).unwrap();
    tamper(&conn);
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(conn);
    path
}

/// `toolgate audit verify --db PATH`: exit code and stdout + stderr.
fn cli_verify(db: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--db"])
        .arg(db)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The chain's structure (copies have no audit key beside them: the head's tag is checked by
/// `cli_verify` on the original).
fn chain_of(db: &Path) -> Result<i64, ChainBreak> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    verify_chain(&conn, None).unwrap()
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` exposition.
struct Metrics {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
    text: String,
}

fn parse_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s
            .parse()
            .unwrap_or_else(|_| panic!("not a sample value: {s:?}")),
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

/// Parse `name{label="value",...} value [timestamp]`, with the format's escapes.
fn parse_sample(line: &str) -> Sample {
    let bad = |why: &str| -> ! { panic!("malformed sample line ({why}): {line:?}") };
    let mut chars = line.char_indices().peekable();
    let mut name = String::new();
    while let Some(&(_, c)) = chars.peek() {
        if is_name_char(c, name.is_empty()) {
            name.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if name.is_empty() {
        bad("no metric name");
    }
    let mut labels = BTreeMap::new();
    if let Some(&(_, '{')) = chars.peek() {
        chars.next();
        loop {
            match chars.peek() {
                Some(&(_, '}')) => {
                    chars.next();
                    break;
                }
                Some(_) => {}
                None => bad("unterminated label set"),
            }
            let mut label = String::new();
            while let Some(&(_, c)) = chars.peek() {
                if is_name_char(c, label.is_empty()) {
                    label.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if label.is_empty() {
                bad("empty label name");
            }
            if chars.next().map(|(_, c)| c) != Some('=') {
                bad("label without =");
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad("label value not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => bad("bad escape"),
                    },
                    Some(c) => value.push(c),
                    None => bad("unterminated label value"),
                }
            }
            if labels.insert(label, value).is_some() {
                bad("repeated label");
            }
            match chars.next().map(|(_, c)| c) {
                Some(',') => {}
                Some('}') => break,
                _ => bad("expected , or }"),
            }
        }
    }
    let rest: String = chars.map(|(_, c)| c).collect();
    if !rest.starts_with(' ') {
        bad("no space before the value");
    }
    let mut parts = rest.split_whitespace();
    let value = parse_value(parts.next().unwrap_or_else(|| bad("no value")));
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .unwrap_or_else(|_| bad("timestamp is not an integer"));
    }
    if parts.next().is_some() {
        bad("trailing text");
    }
    Sample {
        name,
        labels,
        value,
    }
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    let name = words.next().expect("TYPE names a metric").to_string();
                    let kind = words.next().expect("TYPE gives a kind").to_string();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&kind.as_str()),
                        "{line}"
                    );
                    assert!(
                        types.insert(name, kind).is_none(),
                        "TYPE given twice: {line}"
                    );
                }
                continue;
            }
            samples.push(parse_sample(line));
        }
        // Every sample belongs to a declared family.
        for s in &samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    s.name
                        .strip_suffix(suffix)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&s.name);
            assert!(types.contains_key(family), "no TYPE for {}", s.name);
            assert!(
                s.name.starts_with("toolgate_"),
                "{} lacks the prefix",
                s.name
            );
        }
        Metrics {
            samples,
            types,
            text: text.to_string(),
        }
    }

    async fn scrape(d: &Daemon) -> Metrics {
        let bearer = format!("Bearer {ADMIN}");
        let r = request(d, Method::GET, "/metrics", &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let ct = r
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        Metrics::parse(&r.text())
    }

    /// The sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want);
        let first = found.next().map(|s| s.value);
        assert!(found.next().is_none(), "{name} {labels:?} is repeated");
        first
    }

    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }

    /// A histogram's buckets `(le, cumulative count)` in order, its count and sum; checks the
    /// exposition's rules on the way.
    #[track_caller]
    fn histogram(&self, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
        let bucket = format!("{name}_bucket");
        let buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == bucket)
            .map(|s| {
                assert_eq!(s.labels.len(), 1, "{s:?}");
                (parse_value(&s.labels["le"]), s.value)
            })
            .collect();
        assert!(buckets.len() >= 2, "{name} has too few buckets");
        for w in buckets.windows(2) {
            assert!(w[0].0 < w[1].0, "{name}: le bounds not increasing: {w:?}");
            assert!(w[0].1 <= w[1].1, "{name}: buckets not cumulative: {w:?}");
        }
        let (last_le, last_n) = *buckets.last().unwrap();
        assert_eq!(last_le, f64::INFINITY, "{name}: the last bucket is +Inf");
        let count = self.value(&format!("{name}_count"), &[]);
        let sum = self.value(&format!("{name}_sum"), &[]);
        assert_eq!(last_n, count, "{name}: +Inf bucket == _count");
        assert!(sum >= 0.0);
        (buckets, count, sum)
    }
}

/// One Server-Sent Events frame.
#[derive(Debug, Clone, Default)]
struct Frame {
    event: Option<String>,
    data: Option<String>,
    comments: Vec<String>,
    retry: Option<String>,
}

impl Frame {
    fn parse(block: &str) -> Frame {
        let mut f = Frame::default();
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                f.comments.push(c.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                f.event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                let v = v.strip_prefix(' ').unwrap_or(v);
                f.data = Some(match f.data.take() {
                    Some(prev) => format!("{prev}\n{v}"),
                    None => v.to_string(),
                });
            } else if let Some(v) = line.strip_prefix("retry:") {
                f.retry = Some(v.trim().to_string());
            }
        }
        f
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("")).unwrap()
    }
}

/// A streaming `/v1/events` reader.
struct Sse {
    body: Incoming,
    /// Bytes received and not yet framed (a read may end inside a character).
    buf: Vec<u8>,
    _conn: Conn,
}

impl Sse {
    /// Open the stream; on a non-200 answer, the response instead.
    async fn open(d: &Daemon, query: &str) -> Result<Sse, Resp> {
        let mut conn = Conn::open(d).await;
        let req = conn.request(
            Method::GET,
            &format!("/v1/events{query}"),
            &[
                ("accept", "text/event-stream"),
                ("connection", "keep-alive"),
            ],
            None,
        );
        conn.sender.ready().await.unwrap();
        let resp = conn.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if status != 200 {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            return Err(Resp {
                status,
                headers,
                body,
            });
        }
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Ok(Sse {
            body: resp.into_body(),
            buf: Vec::new(),
            _conn: conn,
        })
    }

    /// The next frame, or `None` if none arrives within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(Frame::parse(std::str::from_utf8(&block).unwrap()));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()?;
            let frame = frame.expect("the event stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next frame carrying an event (skipping comments and heartbeats).
    async fn next_event(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            let f = self.next(wait).await?;
            if f.event.is_some() {
                return Some(f);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The hash chain and `toolgate audit verify`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_detects_edit_delete_truncate_and_relinking() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let token = d.token_for("agent-chain", CODE).await;
    assert_eq!(d.verify(&token, "code-search").await.0, 200);
    assert_eq!(d.verify(&token, "sql-admin").await.0, 403);
    dev_signal(&d, &wimse("someone-else")).await;
    let (db, _dir) = (d.db_path(), d.dir.clone());
    d.stop().await;

    let rows = audit_rows(&db);
    let n = rows.len() as i64;
    assert!(n >= 6, "{rows:?}");
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    for kind in ["registration", "admin", "exchange", "verify", "revocation"] {
        assert!(kinds.contains(&kind), "no {kind} row: {kinds:?}");
    }
    // Sequence numbers are 1..=n and every row's hash covers its predecessor's.
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        let prev = if i > 0 {
            rows[i - 1].hash.as_str()
        } else {
            GENESIS
        };
        assert_eq!(r.hash, hex(&chain_hash(prev, r.seq, &r.record())));
    }

    let (code, out) = cli_verify(&db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("intact: {n} rows")), "{out}");

    // (a) One field of one row edited.
    let edited = tampered(&db, "edited.db", |c| {
        c.execute(
            "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 3",
            [],
        )
        .unwrap();
    });
    let (code, out) = cli_verify(&edited);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("row 3 was modified"), "{out}");
    assert_eq!(chain_of(&edited), Err(ChainBreak::Edited(3)));

    // A row edited in a column that is not text: its time.
    let retimed = tampered(&db, "retimed.db", |c| {
        c.execute(
            "UPDATE audit_log SET ts_ms = ts_ms - 1000 WHERE seq = 2",
            [],
        )
        .unwrap();
    });
    assert_eq!(chain_of(&retimed), Err(ChainBreak::Edited(2)));

    // (b) A middle row deleted.
    let gap = tampered(&db, "gap.db", |c| {
        c.execute("DELETE FROM audit_log WHERE seq = 4", [])
            .unwrap();
    });
    let (code, out) = cli_verify(&gap);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("row 4 is missing (the next row is 5)"),
        "{out}"
    );
    assert_eq!(
        chain_of(&gap),
        Err(ChainBreak::Gap {
            expected: 4,
            found: 5
        })
    );

    // The first row deleted.
    let headless = tampered(&db, "headless.db", |c| {
        c.execute("DELETE FROM audit_log WHERE seq = 1", [])
            .unwrap();
    });
    assert_eq!(
        chain_of(&headless),
        Err(ChainBreak::Gap {
            expected: 1,
            found: 2
        })
    );

    // (c) The last two rows deleted: only the recorded head shows it.
    let truncated = tampered(&db, "truncated.db", |c| {
        c.execute("DELETE FROM audit_log WHERE seq > ?1", params![n - 2])
            .unwrap();
    });
    let (code, out) = cli_verify(&truncated);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "the log ends at row {} but its head records row {n}",
            n - 2
        )),
        "{out}"
    );
    assert_eq!(
        chain_of(&truncated),
        Err(ChainBreak::Truncated {
            last: n - 2,
            head: n
        })
    );

    // Everything deleted but the head kept.
    let emptied = tampered(&db, "emptied.db", |c| {
        c.execute("DELETE FROM audit_log", []).unwrap();
    });
    let (code, out) = cli_verify(&emptied);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        chain_of(&emptied),
        Err(ChainBreak::Truncated { last: 0, head: n })
    );

    // (d) An attacker who edits a row and recomputes its hash: the next row's hash, which
    // covers the original, no longer matches.
    let victim = rows[2].clone();
    let relinked = tampered(&db, "relinked.db", |c| {
        let mut record = victim.record();
        record.reason = "rewritten".into();
        let hash = chain_hash(&rows[1].hash, victim.seq, &record).to_vec();
        c.execute(
            "UPDATE audit_log SET reason = ?1, hash = ?2 WHERE seq = ?3",
            params![record.reason, hash, victim.seq],
        )
        .unwrap();
    });
    let (code, out) = cli_verify(&relinked);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "row {} was modified: its hash does not match its contents and the row before it \
             (or row {} was modified and its hash recomputed)",
            victim.seq + 1,
            victim.seq
        )),
        "{out}"
    );
    assert_eq!(chain_of(&relinked), Err(ChainBreak::Edited(victim.seq + 1)));

    // (e) The chain intact but a subject's lookup runs deleted: its rows would vanish from
    // queries by subject, and `audit verify` says so. Likewise a tool's runs.
    for (field, column) in [("subject", "subject"), ("target", "tool")] {
        let victim = rows
            .iter()
            .find(|r| !r.key(field).is_empty())
            .unwrap()
            .clone();
        let value = victim.key(field).to_string();
        let hidden = tampered(&db, &format!("no-runs-{field}.db"), |c| {
            c.execute(
                "DELETE FROM audit_runs WHERE field = ?1 AND value = ?2",
                params![field, value],
            )
            .unwrap();
        });
        let (code, out) = cli_verify(&hidden);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!(
                "row {} is missing from audit_runs: a query by its {column} would not show it",
                victim.seq
            )),
            "{out}"
        );
        assert_eq!(
            chain_of(&hidden),
            Err(ChainBreak::Unfindable {
                seq: victim.seq,
                field
            })
        );
    }

    // The runs table dropped altogether: the first row with a subject or a tool is reported.
    let dropped = tampered(&db, "runs-dropped.db", |c| {
        c.execute_batch("DROP TABLE audit_runs").unwrap();
    });
    let first_keyed = |field: &'static str| {
        rows.iter()
            .find(|r| !r.key(field).is_empty())
            .map(|r| (r.seq, field))
    };
    let (seq, field) = [first_keyed("subject"), first_keyed("target")]
        .into_iter()
        .flatten()
        .min_by_key(|(seq, _)| *seq)
        .unwrap();
    let (code, out) = cli_verify(&dropped);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        chain_of(&dropped),
        Err(ChainBreak::Unfindable { seq, field })
    );

    // (f) The head record overwritten with something that is not a hash: a broken chain
    // (exit 1), not an unreadable log.
    let bad_head = tampered(&db, "bad-head.db", |c| {
        c.execute("UPDATE audit_head SET hash = 'x'", []).unwrap();
    });
    let (code, out) = cli_verify(&bad_head);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("row {n} does not match the chain head")),
        "{out}"
    );

    // The original is untouched by all this.
    assert_eq!(chain_of(&db), Ok(n));
}

/// When the recorded head disagrees with the last row without any row missing, `audit verify`
/// must still name the broken row, not report a deletion of an empty range of rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_row_when_only_the_head_disagrees() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    let token = d.token_for("agent-head", CODE).await;
    assert_eq!(d.verify(&token, "code-search").await.0, 200);
    let (db, _dir) = (d.db_path(), d.dir.clone());
    d.stop().await;
    let rows = audit_rows(&db);
    let n = rows.len() as i64;
    let last = rows.last().unwrap().clone();

    // The last row edited and its hash recomputed: no next row can fail to link; only the head
    // shows it. Detected, but the report must name row n, not "rows n+1..=n were deleted".
    let rehashed = tampered(&db, "rehashed-last.db", |c| {
        let mut record = last.record();
        record.decision = "deny".into();
        let hash = chain_hash(&rows[rows.len() - 2].hash, last.seq, &record).to_vec();
        c.execute(
            "UPDATE audit_log SET decision = ?1, hash = ?2 WHERE seq = ?3",
            params![record.decision, hash, last.seq],
        )
        .unwrap();
    });
    let (code, out) = cli_verify(&rehashed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("row {n}")), "{out}");
    assert!(
        !out.contains(&format!("rows {}..={n} were deleted", n + 1)),
        "an edit of row {n} is reported as the deletion of an empty range: {out}"
    );

    // The head row itself deleted: every row is present, yet the report claims rows
    // "{n+1}..=0" were deleted.
    let headless = tampered(&db, "no-head.db", |c| {
        c.execute("DELETE FROM audit_head", []).unwrap();
    });
    let (code, out) = cli_verify(&headless);
    assert_eq!(code, 1, "{out}");
    assert!(
        !out.contains(&format!("rows {}..=0 were deleted", n + 1)),
        "a missing head is reported as the deletion of an empty range: {out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. What the rows hold: no tokens, the right fields, the response's request id
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_hold_jti_and_request_ids_never_tokens() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let subject_token = stub(json!({"sub": "agent-audit", "nonce": "SUBJECT-SECRET-7f3a9c"}));
    let ex = post_json(
        &d,
        "/v1/exchange/token",
        &exchange_body(&subject_token, CODE),
    )
    .await;
    assert_eq!(ex.status, 200, "{}", ex.text());
    let access = ex.json()["access_token"].as_str().unwrap().to_string();
    let claims = claims_of(&access);
    let (sub, jti) = (
        claims["sub"].as_str().unwrap(),
        claims["jti"].as_str().unwrap(),
    );
    assert_eq!(sub, wimse("agent-audit"));

    let mut conn = Conn::open(&d).await;
    let allow = conn.verify(&access, "code-search").await;
    assert_eq!(allow.status, 200, "{}", allow.text());
    let deny = conn.verify(&access, "sql-admin").await;
    assert_eq!(deny.status, 403, "{}", deny.text());
    assert_eq!(deny.json()["check"], "audience");
    // A token that does not even parse: its text is not stored either.
    let garbage = "GARBAGE-TOKEN-SECRET-41d2.not-base64.at-all";
    let malformed = conn.verify(garbage, "code-search").await;
    assert_eq!(malformed.status, 403, "{}", malformed.text());
    // A failed exchange with a subject token that carries a secret-looking claim (two
    // audiences: an audience that is no URI at all would be refused before the audit log).
    let mut two_audiences = exchange_body(&subject_token, CODE);
    two_audiences["audience"] = json!([CODE, SQL]);
    let failed = post_json(&d, "/v1/exchange/token", &two_audiences).await;
    assert_eq!(failed.status, 400, "{}", failed.text());
    drain(&d).await;

    let rows = audit_rows(&d.db_path());
    let signature = access.rsplit('.').next().unwrap();
    let payload = access.split('.').nth(1).unwrap();
    for r in &rows {
        for (column, value) in r.text_columns() {
            for (what, secret) in [
                ("the access token", access.as_str()),
                ("the access token's signature", signature),
                ("the access token's payload", payload),
                ("the subject token", subject_token.as_str()),
                ("the subject token's claims", "SUBJECT-SECRET-7f3a9c"),
                ("an unparseable token", "GARBAGE-TOKEN-SECRET"),
            ] {
                assert!(
                    !value.contains(secret),
                    "audit row {} column {column} holds {what}: {value:?}",
                    r.seq
                );
            }
        }
    }

    let by_rid = |rid: &str| -> Row {
        let found: Vec<&Row> = rows.iter().filter(|r| r.request_id == rid).collect();
        assert_eq!(found.len(), 1, "rows for request {rid}: {found:?}");
        found[0].clone()
    };

    let e = by_rid(&ex.request_id());
    assert_eq!(
        (e.kind.as_str(), e.subject.as_str(), e.target.as_str()),
        ("exchange", sub, CODE)
    );
    assert_eq!((e.decision.as_str(), e.jti.as_str()), ("issued", jti));

    let a = by_rid(&allow.request_id());
    assert_eq!(a.kind, "verify");
    assert_eq!(a.subject, sub);
    assert_eq!(a.target, "code-search");
    assert_eq!(a.decision, "allow");
    assert_eq!(a.check, "");
    assert_eq!(a.jti, jti);

    let n = by_rid(&deny.request_id());
    assert_eq!(n.kind, "verify");
    assert_eq!(n.subject, sub);
    assert_eq!(n.target, "sql-admin");
    assert_eq!(n.decision, "deny");
    assert_eq!(n.check, "audience");
    assert!(!n.reason.is_empty());
    assert_eq!(n.jti, jti);

    let m = by_rid(&malformed.request_id());
    assert_eq!((m.kind.as_str(), m.decision.as_str()), ("verify", "deny"));
    assert_eq!(m.check, malformed.json()["check"].as_str().unwrap());
    assert_eq!(m.subject, "");
    assert_eq!(m.jti, "");

    let f = by_rid(&failed.request_id());
    assert_eq!(f.kind, "exchange");
    assert_eq!(f.decision, "denied");
    assert_eq!(f.check, "invalid_target");
    assert_eq!(f.jti, "");

    // Every row names its request; a request is one decision (a registration and its admin
    // row share theirs).
    assert!(rows.iter().all(|r| !r.request_id.is_empty()), "{rows:?}");
    let mut ids: Vec<&str> = rows
        .iter()
        .filter(|r| r.kind == "verify" || r.kind == "exchange")
        .map(|r| r.request_id.as_str())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "request ids repeat");
    d.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Audit queries
// ---------------------------------------------------------------------------------------------

fn seqs(body: &Value) -> Vec<i64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

#[track_caller]
fn assert_newest_first(body: &Value) {
    let s = seqs(body);
    assert!(s.windows(2).all(|w| w[0] > w[1]), "not newest first: {s:?}");
    assert_eq!(body["count"].as_u64(), Some(s.len() as u64), "{body}");
}

/// The expected answer: matching rows of the snapshot, newest first.
fn expect(rows: &[Row], keep: impl Fn(&Row) -> bool) -> Vec<i64> {
    rows.iter()
        .rev()
        .filter(|r| keep(r))
        .map(|r| r.seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_filter_and_page() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let a = d.token_for("agent-a", CODE).await;
    let b = d.token_for("agent-b", SQL).await;
    let t0 = d.clock_now();
    for _ in 0..3 {
        assert_eq!(d.verify(&a, "code-search").await.0, 200);
    }
    for i in 0..2 {
        // A second apart: repeats within a second would be counted into one row.
        d.clock.advance(i);
        assert_eq!(d.verify(&a, "sql-admin").await.0, 403);
    }
    d.clock.advance(100);
    let t1 = d.clock_now();
    assert_eq!(d.verify(&b, "sql-admin").await.0, 200);
    assert_eq!(d.verify(&b, "code-search").await.0, 403);
    assert_eq!(d.verify(&a, "not-registered").await.0, 403);
    drain(&d).await;
    // The oracle: the log as stored, before any query adds its own admin row.
    let rows = audit_rows(&d.db_path());
    let verifies = expect(&rows, |r| r.kind == "verify");
    assert_eq!(verifies.len(), 8);

    let get = |path: String| {
        let d = &d;
        async move {
            let (status, body) = d.call(Method::GET, &path, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_newest_first(&body);
            body
        }
    };

    let denies = get("/v1/audit?decision=deny".into()).await;
    assert!(denies["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["decision"] == "deny"));
    assert_eq!(seqs(&denies), expect(&rows, |r| r.decision == "deny"));
    assert_eq!(seqs(&denies).len(), 4);
    let newest = &denies["events"][0];
    assert_eq!(newest["kind"], "verify");
    assert_eq!(newest["target"], "not-registered");
    assert_eq!(newest["check"], "registration");
    for field in [
        "seq",
        "time",
        "kind",
        "subject",
        "target",
        "decision",
        "check",
        "reason",
        "request_id",
        "jti",
        "hash",
    ] {
        assert!(newest.get(field).is_some(), "no {field} in {newest}");
    }
    assert_eq!(newest["time"], toolgate::clock::rfc3339(t1));

    let tool = get("/v1/audit?tool_id=code-search".into()).await;
    assert_eq!(seqs(&tool), expect(&rows, |r| r.target == "code-search"));
    // Its registration, three allows and one denial.
    assert_eq!(seqs(&tool).len(), 5);

    let subject = wimse("agent-b");
    let by_subject = get(format!("/v1/audit?subject={}", pct(&subject))).await;
    assert_eq!(seqs(&by_subject), expect(&rows, |r| r.subject == subject));
    assert_eq!(seqs(&by_subject).len(), 3, "{by_subject}");

    let audience = get("/v1/audit?check=audience".into()).await;
    assert_eq!(seqs(&audience), expect(&rows, |r| r.check == "audience"));
    assert_eq!(seqs(&audience).len(), 3);

    let kind = get("/v1/audit?kind=verify".into()).await;
    assert_eq!(seqs(&kind), verifies);

    let combined = get("/v1/audit?kind=verify&decision=allow&tool_id=sql-admin".into()).await;
    assert_eq!(seqs(&combined).len(), 1);
    assert_eq!(combined["events"][0]["subject"], subject.as_str());

    let since = get(format!("/v1/audit?kind=verify&since={}", t0 + 50)).await;
    assert_eq!(
        seqs(&since),
        expect(&rows, |r| r.kind == "verify" && r.ts_ms >= (t0 + 50) * 1000)
    );
    assert_eq!(seqs(&since).len(), 3);
    let since_all = get(format!("/v1/audit?kind=verify&since={t0}")).await;
    assert_eq!(seqs(&since_all), verifies);

    let limited = get("/v1/audit?kind=verify&limit=3".into()).await;
    assert_eq!(seqs(&limited), verifies[..3].to_vec());
    assert_eq!(limited["next_before"], verifies[2]);

    // Page through with `before` = `next_before`.
    let mut paged = Vec::new();
    let mut before: Option<i64> = None;
    for _ in 0..10 {
        let path = match before {
            Some(b) => format!("/v1/audit?kind=verify&limit=3&before={b}"),
            None => "/v1/audit?kind=verify&limit=3".into(),
        };
        let page = get(path).await;
        paged.extend(seqs(&page));
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => {
                assert!(page["next_before"].is_null(), "{page}");
                break;
            }
        }
    }
    assert_eq!(paged, verifies);

    // Bad parameters are refused.
    for bad in [
        "limit=-1",
        "limit=abc",
        "since=yesterday",
        "before=-5",
        "kind=verify&kind=admin",
    ] {
        let (status, body) = d.call(Method::GET, &format!("/v1/audit?{bad}"), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "{bad}: {body}");
    }

    // The per-tool view.
    let (status, per_tool) = d
        .call(Method::GET, "/v1/tools/code-search/audit", None)
        .await;
    assert_eq!(status, 200, "{per_tool}");
    assert_eq!(per_tool["tool_id"], "code-search");
    assert_newest_first(&per_tool);
    assert!(per_tool["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["target"] == "code-search"));
    assert_eq!(
        seqs(&per_tool),
        expect(&rows, |r| r.target == "code-search")
    );
    let (status, other) = d
        .call(Method::GET, "/v1/tools/sql-admin/audit?decision=deny", None)
        .await;
    assert_eq!(status, 200, "{other}");
    assert_eq!(
        seqs(&other),
        expect(&rows, |r| r.target == "sql-admin" && r.decision == "deny")
    );

    // Audit reads are themselves admin calls in the log.
    drain(&d).await;
    let (_, admin) = d
        .call(
            Method::GET,
            "/v1/audit?kind=admin&tool_id=GET%20/v1/audit",
            None,
        )
        .await;
    assert!(seqs(&admin).len() >= 10, "{admin}");
    assert!(admin["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["kind"] == "admin" && e["subject"] == "dev"));
    d.stop().await;
}

/// Percent-encode a query value.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reads_need_the_admin_token_and_refusals_are_audited() {
    let d = Daemon::production().await;
    let anon = d.anonymous();
    for path in ["/v1/audit", "/v1/tools/code-search/audit", "/v1/events"] {
        let (status, body) = anon.send(Method::GET, path, None).await.unwrap();
        assert_eq!(status.as_u16(), 401, "{path}: {body}");
    }
    // A second later: a repeat within the second would be counted into one row.
    d.clock.advance(1);
    let wrong = request(
        &d,
        Method::GET,
        "/v1/audit",
        &[("authorization", "Bearer not-the-admin-token")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    drain(&d).await;

    let (status, body) = d
        .call(
            Method::GET,
            "/v1/audit?kind=admin&decision=unauthorized",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{body}");
    let targets: Vec<&str> = events
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "GET /v1/audit",
            "GET /v1/events",
            "GET /v1/tools/{tool_id}/audit",
            "GET /v1/audit"
        ]
    );
    assert!(events.iter().all(|e| e["check"] == "401"), "{body}");
    assert_eq!(events[0]["request_id"], wrong.request_id().as_str());
    // The presented (wrong) credential is not stored.
    let rows = audit_rows(&d.db_path());
    for r in &rows {
        for (_, v) in r.text_columns() {
            assert!(!v.contains("not-the-admin-token") && !v.contains(ADMIN));
        }
    }
    // With the token, the read is allowed and audited as ok.
    drain(&d).await;
    let (_, ok) = d
        .call(Method::GET, "/v1/audit?kind=admin&decision=ok", None)
        .await;
    assert!(!ok["events"].as_array().unwrap().is_empty(), "{ok}");
    assert!(ok["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["subject"] == "admin"));
    d.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. /metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_with_bounded_labels() {
    let d = Daemon::dev().await;
    let before = Metrics::scrape(&d).await;
    assert_eq!(before.value("toolgate_tools_registered", &[]), 0.0);
    let (_, count, _) = before.histogram("toolgate_verify_duration_seconds");
    assert_eq!(count, 0.0);

    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let token = d.token_for("agent-m", CODE).await;
    for _ in 0..3 {
        assert_eq!(d.verify(&token, "code-search").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(d.verify(&token, "sql-admin").await.0, 403);
    }
    let (status, _) = d.verify(&token, "attacker-chosen-xyz").await;
    assert_eq!(status, 403);
    let (status, body) = d
        .exchange(exchange_body(
            &stub(json!({"sub": "agent-m"})),
            "relative/path",
        ))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "subject", "value": wimse("revoked-by-operator")})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    dev_signal(&d, &wimse("revoked-by-signal")).await;

    let m = Metrics::scrape(&d).await;
    let verify = |tool: &str, decision: &str| {
        m.value(
            "toolgate_verify_total",
            &[("tool_id", tool), ("decision", decision)],
        )
    };
    assert_eq!(m.types["toolgate_verify_total"], "counter");
    assert_eq!(verify("code-search", "allow"), 3.0);
    assert_eq!(verify("code-search", "deny"), 0.0);
    assert_eq!(verify("sql-admin", "allow"), 0.0);
    assert_eq!(verify("sql-admin", "deny"), 2.0);
    assert_eq!(verify("_unregistered", "deny"), 1.0);
    assert_eq!(verify("_unregistered", "allow"), 0.0);
    assert_eq!(
        m.value("toolgate_verify_denials_total", &[("check", "audience")]),
        2.0
    );
    assert_eq!(
        m.value(
            "toolgate_verify_denials_total",
            &[("check", "registration")]
        ),
        1.0
    );
    let denials: f64 = m
        .samples
        .iter()
        .filter(|s| s.name == "toolgate_verify_denials_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(denials, 3.0);

    let (buckets, count, sum) = m.histogram("toolgate_verify_duration_seconds");
    assert_eq!(count, 6.0);
    assert!(sum > 0.0 && sum < 60.0, "{sum}");
    assert!(
        buckets.iter().any(|(le, n)| *le < 1.0 && *n > 0.0),
        "{buckets:?}"
    );
    let (_, exchanges, _) = m.histogram("toolgate_exchange_duration_seconds");
    assert_eq!(exchanges, 2.0);

    assert_eq!(m.types["toolgate_exchanges_total"], "counter");
    assert_eq!(
        m.value("toolgate_exchanges_total", &[("result", "issued")]),
        1.0
    );
    assert_eq!(
        m.value("toolgate_exchanges_total", &[("result", "invalid_target")]),
        1.0
    );
    assert_eq!(
        m.value("toolgate_exchanges_total", &[("result", "invalid_request")]),
        0.0
    );
    assert_eq!(m.types["toolgate_tools_registered"], "gauge");
    assert_eq!(m.value("toolgate_tools_registered", &[]), 2.0);
    assert_eq!(m.types["toolgate_revocations_active"], "gauge");
    assert_eq!(m.value("toolgate_revocations_active", &[]), 2.0);
    assert_eq!(
        m.value("toolgate_signals_total", &[("type", "session-revoked")]),
        1.0
    );
    assert_eq!(
        m.value("toolgate_signals_total", &[("type", "credential-change")]),
        0.0
    );
    assert_eq!(m.types["toolgate_audit_queue_depth"], "gauge");
    let depth = m.value("toolgate_audit_queue_depth", &[]);
    assert!(depth >= 0.0 && depth.fract() == 0.0, "{depth}");

    // /v1/stats tells the same story.
    let (status, stats) = d.call(Method::GET, "/v1/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["verifications"]["total"], 6);
    assert_eq!(stats["verifications"]["allowed"], 3);
    assert_eq!(stats["verifications"]["denied"], 3);
    assert_eq!(stats["denials_by_check"]["audience"], 2);
    assert_eq!(stats["tools_registered"], 2);
    assert_eq!(stats["revocations_active"], 2);

    // Labels only from bounded sets: the attacker's tool id never becomes a label value.
    assert!(!m.text.contains("attacker-chosen-xyz"), "{}", m.text);
    assert!(!m.text.contains("relative/path"), "{}", m.text);
    let tool_labels: std::collections::BTreeSet<&str> = m
        .samples
        .iter()
        .filter_map(|s| s.labels.get("tool_id").map(String::as_str))
        .collect();
    assert_eq!(
        tool_labels.into_iter().collect::<Vec<_>>(),
        ["_unregistered", "code-search", "sql-admin"]
    );

    // Many distinct unregistered names still make no new series.
    let series = m.samples.len();
    for i in 0..20 {
        d.verify(&token, &format!("probe-{i}")).await;
    }
    let m2 = Metrics::scrape(&d).await;
    assert_eq!(m2.samples.len(), series);
    assert!(!m2.text.contains("probe-"));
    assert_eq!(
        m2.value(
            "toolgate_verify_total",
            &[("tool_id", "_unregistered"), ("decision", "deny")]
        ),
        21.0
    );
    let (_, count, _) = m2.histogram("toolgate_verify_duration_seconds");
    assert_eq!(count, 26.0);
    d.stop().await;
}

/// An exchange refused for naming several audiences is as much an exchange decision as one
/// refused for a relative audience: both are `invalid_target`, both must be counted and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_refused_while_parsing_are_counted_and_audited() {
    let d = Daemon::dev().await;
    let subject = stub(json!({"sub": "agent-multi"}));
    let mut body = exchange_body(&subject, CODE);
    body["audience"] = json!([CODE, SQL]);
    let json_refusal = post_json(&d, "/v1/exchange/token", &body).await;
    assert_eq!(json_refusal.status, 400, "{}", json_refusal.text());
    assert_eq!(json_refusal.json()["error"], "invalid_target");
    // A second later: the same refusal within the second would be counted into one row.
    d.clock.advance(1);
    let form = format!(
        "grant_type={}&subject_token={}&subject_token_type={}&audience={}&audience={}",
        pct(GRANT),
        pct(&subject),
        pct(JWT),
        pct(CODE),
        pct(SQL)
    );
    let form_refusal = Conn::open(&d)
        .await
        .send(
            Method::POST,
            "/v1/exchange/token",
            &[],
            Some(("application/x-www-form-urlencoded", form.into_bytes())),
        )
        .await;
    assert_eq!(form_refusal.status, 400, "{}", form_refusal.text());
    assert_eq!(form_refusal.json()["error"], "invalid_target");

    let m = Metrics::scrape(&d).await;
    assert_eq!(
        m.value("toolgate_exchanges_total", &[("result", "invalid_target")]),
        2.0,
        "refused exchanges are not counted"
    );
    drain(&d).await;
    let rows = audit_rows(&d.db_path());
    for (what, r) in [("JSON", &json_refusal), ("form", &form_refusal)] {
        let rid = r.request_id();
        let row = rows.iter().find(|row| row.request_id == rid);
        let row = row.unwrap_or_else(|| panic!("no audit row for the {what} exchange refusal"));
        assert_eq!(row.kind, "exchange");
        assert_eq!(row.decision, "denied");
        assert_eq!(row.check, "invalid_target");
    }
    d.stop().await;
}

#[test]
fn prometheus_parser_handles_the_format() {
    let m = Metrics::parse(
        "# HELP toolgate_x a thing\n# TYPE toolgate_x counter\ntoolgate_x{a=\"q\\\"u\\\\o\\nte\",b=\"2\"} 3 1700000000\n\
         # TYPE toolgate_h histogram\ntoolgate_h_bucket{le=\"0.5\"} 1\ntoolgate_h_bucket{le=\"+Inf\"} 2\ntoolgate_h_sum 0.7\ntoolgate_h_count 2\n",
    );
    assert_eq!(
        m.value("toolgate_x", &[("a", "q\"u\\o\nte"), ("b", "2")]),
        3.0
    );
    let (buckets, count, _) = m.histogram("toolgate_h");
    assert_eq!((buckets.len(), count), (2, 2.0));
}

// ---------------------------------------------------------------------------------------------
// 5. Server-Sent Events
// ---------------------------------------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(5);
const MISSED: &str = "event: missed\ndata: ";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Verify calls made while one event client is stalled.
const LOAD: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_delivers_and_filters() {
    let d = Daemon::dev().await;
    let mut all = Sse::open(&d, "").await.ok().unwrap();
    let first = all.next(WAIT).await.expect("a first frame");
    assert!(first.comments.iter().any(|c| c == "connected"), "{first:?}");
    assert!(first.event.is_none());
    let mut denies = Sse::open(&d, "?types=verify.deny").await.ok().unwrap();
    denies.next(WAIT).await.expect("connected");
    let mut verifies = Sse::open(&d, "?types=verify").await.ok().unwrap();
    verifies.next(WAIT).await.expect("connected");
    let mut two = Sse::open(&d, "?types=registration,%20exchange")
        .await
        .ok()
        .unwrap();
    two.next(WAIT).await.expect("connected");

    for bad in [
        "?types=bogus",
        "?types=verify.deny,bogus",
        "?types=a&types=b",
    ] {
        match Sse::open(&d, bad).await {
            Ok(_) => panic!("{bad} was accepted"),
            Err(r) => {
                assert_eq!(r.status, 400, "{bad}: {}", r.text());
                assert_eq!(r.json()["error"], "invalid_request");
            }
        }
    }

    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let token = d.token_for("agent-sse", CODE).await;
    let sub = wimse("agent-sse");
    assert_eq!(d.verify(&token, "code-search").await.0, 200);
    assert_eq!(d.verify(&token, "sql-admin").await.0, 403);
    dev_signal(&d, &wimse("agent-revoked")).await;

    // The unfiltered stream: each kind, in order, with the documented fields.
    let mut seen: Vec<(String, Value)> = Vec::new();
    while !seen.iter().any(|(k, _)| k == "revocation") {
        let f = all
            .next_event(WAIT)
            .await
            .unwrap_or_else(|| panic!("stalled after {seen:?}"));
        let data = f.json();
        let kind = f.event.clone().unwrap();
        assert_eq!(data["type"], kind.as_str(), "{data}");
        for field in [
            "id",
            "timestamp",
            "type",
            "subject",
            "target",
            "result",
            "detail",
        ] {
            assert!(data.get(field).is_some(), "no {field} in {data}");
        }
        assert!(data["id"].as_u64().is_some(), "{data}");
        assert_eq!(data["timestamp"], toolgate::clock::rfc3339(d.clock_now()));
        seen.push((kind, data));
    }
    let ids: Vec<u64> = seen
        .iter()
        .map(|(_, v)| v["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let of = |kind: &str| -> Vec<&Value> {
        seen.iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v)
            .collect()
    };
    let regs = of("registration");
    assert_eq!(regs.len(), 2, "{seen:?}");
    assert_eq!(regs[0]["target"], "code-search");
    assert_eq!(regs[0]["result"], "registered");
    let ex = of("exchange");
    assert_eq!(ex.len(), 1, "{seen:?}");
    assert_eq!(
        (&ex[0]["subject"], &ex[0]["target"]),
        (&json!(sub), &json!(CODE))
    );
    assert_eq!(ex[0]["result"], "issued");
    let allows = of("verify.allow");
    assert_eq!(allows.len(), 1, "{seen:?}");
    assert_eq!(allows[0]["target"], "code-search");
    assert_eq!(allows[0]["result"], "allow");
    assert_eq!(allows[0]["subject"], sub.as_str());
    let deny = of("verify.deny");
    assert_eq!(deny.len(), 1, "{seen:?}");
    assert_eq!(deny[0]["target"], "sql-admin");
    assert_eq!(deny[0]["result"], "deny");
    assert!(
        deny[0]["detail"].as_str().unwrap().starts_with("audience"),
        "{}",
        deny[0]
    );
    let rev = of("revocation");
    assert_eq!(rev[0]["subject"], wimse("agent-revoked"));
    // No token text travels on the stream.
    for (_, v) in &seen {
        assert!(!v.to_string().contains(&token));
    }
    let order: Vec<&str> = seen
        .iter()
        .map(|(k, _)| k.as_str())
        // The signal's own summary event follows its commit; the reader may stop before it.
        .filter(|k| *k != "admin" && *k != "signal")
        .collect();
    assert_eq!(
        order,
        [
            "registration",
            "registration",
            "exchange",
            "verify.allow",
            "verify.deny",
            "revocation"
        ]
    );

    // ?types=verify.deny: only the denial. A second denial is the sentinel: nothing else may
    // come before it.
    assert_eq!(d.verify(&token, "no-such-tool").await.0, 403);
    for expected_target in ["sql-admin", "no-such-tool"] {
        let f = denies.next_event(WAIT).await.expect("a denial");
        assert_eq!(f.event.as_deref(), Some("verify.deny"), "{f:?}");
        assert_eq!(f.json()["target"], expected_target);
    }
    // ?types=verify (a prefix): allows and denials, nothing else.
    let kinds: Vec<String> = {
        let mut k = Vec::new();
        for _ in 0..3 {
            k.push(
                verifies
                    .next_event(WAIT)
                    .await
                    .expect("a verify")
                    .event
                    .unwrap(),
            );
        }
        k
    };
    assert_eq!(kinds, ["verify.allow", "verify.deny", "verify.deny"]);
    // A list: registrations and exchanges only.
    d.register("sentinel", "https://mcp.example.com/tools/sentinel")
        .await;
    let mut k = Vec::new();
    for _ in 0..4 {
        k.push(two.next_event(WAIT).await.expect("an event").event.unwrap());
    }
    assert_eq!(
        k,
        ["registration", "registration", "exchange", "registration"]
    );

    // Connected clients are counted.
    let m = Metrics::scrape(&d).await;
    assert_eq!(m.value("toolgate_event_stream_clients", &[]), 4.0);
    // The heartbeat keeps idle streams (and proxies) alive; 15 s is too long to wait for here.
    assert_eq!(toolgate::events::HEARTBEAT, Duration::from_secs(15));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_event_client_cannot_slow_the_daemon_and_is_told_it_missed_events() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    let token = d.token_for("agent-slow", CODE).await;

    // Fat events: a reported decision's subject and reason (clipped to 256 characters each)
    // are echoed in its event, and 4-byte characters make each event about 2 KB, so a stalled
    // client's kernel buffers (the daemon's send buffer grows to a few MB) fill within a few
    // thousand events. (A tool id cannot be fat: it is refused before it is audited.)
    let fat = "\u{1F600}".repeat(256);
    let fat_tool = "fat-load".to_string();
    // A client that asks for the stream, then reads nothing: a tiny receive window.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket
        .connect(authority(&d).parse().unwrap())
        .await
        .unwrap();
    slow.write_all(
        format!(
            "GET /v1/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nConnection: keep-alive\r\n\r\n",
            authority(&d)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // A client that reads alongside it (on a busy machine it may fall behind too; then it is
    // told how many it missed): until the sentinel, count the load's events and the misses.
    let mut fast = Sse::open(&d, "?types=verify.deny").await.ok().unwrap();
    let fast_fat = fat_tool.clone();
    let fast_reader = tokio::spawn(async move {
        let (mut delivered, mut missed) = (0u64, 0u64);
        while let Some(f) = fast.next(Duration::from_secs(30)).await {
            match f.event.as_deref() {
                Some("missed") => missed += f.json()["missed"].as_u64().unwrap(),
                Some("verify.deny") => {
                    let target = f.json()["target"].clone();
                    if target == "sentinel-end" {
                        return Some((delivered, missed));
                    }
                    delivered += u64::from(target == fast_fat.as_str());
                }
                _ => {}
            }
        }
        None
    });

    let (load_authority, load_fat, load_tool) = (authority(&d), fat.clone(), fat_tool.clone());
    let load =
        tokio::spawn(
            async move { report_blast(load_authority, &load_tool, &load_fat, LOAD, 8).await },
        );
    // While the load runs and the slow client is stalled, other requests are answered (the
    // bound only catches a daemon the stalled client blocks).
    let mut answered = 0;
    while !load.is_finished() || answered == 0 {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            request(&d, Method::GET, "/v1/sys/health", &[]),
        )
        .await
        .expect("health is answered while a client is stalled");
        assert_eq!(r.status, 200);
        answered += 1;
    }
    let statuses = load.await.unwrap();
    assert_eq!(statuses, BTreeMap::from([(202, LOAD / 100)]));

    // Now read the slow stream; new events make the daemon tell it what it missed.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut scanned = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return seen,
                Ok(Ok(n)) => {
                    seen.extend_from_slice(&buf[..n]);
                    let from = scanned.saturating_sub(MISSED.len() + 64);
                    if let Some(i) = find(&seen[from..], MISSED.as_bytes()) {
                        if find(&seen[from + i..], b"}\n\n").is_some() {
                            return seen;
                        }
                    }
                    scanned = seen.len();
                }
            }
        }
    });
    let mut conn = Conn::open(&d).await;
    while !reader.is_finished() {
        conn.verify(&token, "sql-admin").await;
    }
    let seen = reader.await.unwrap();
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen[..seen.len().min(300)])
    );
    assert!(find(&seen, b": connected").is_some());
    let i = find(&seen, MISSED.as_bytes())
        .unwrap_or_else(|| panic!("no missed frame after {} bytes", seen.len()));
    let data = &seen[i + MISSED.len()..];
    let data = std::str::from_utf8(&data[..find(data, b"\n").unwrap()]).unwrap();
    let missed: Value = serde_json::from_str(data).unwrap();
    let count = missed["missed"].as_u64().unwrap();
    assert!(count > 0 && count <= LOAD as u64, "{missed}");

    // The reading client: every event of the load either arrived or was reported missed.
    while !fast_reader.is_finished() {
        conn.verify(&token, "sentinel-end").await;
    }
    let (delivered, missed) = fast_reader
        .await
        .unwrap()
        .expect("the reading client saw the sentinel");
    assert!(delivered > 0, "the reading client got nothing");
    assert!(
        delivered + missed >= LOAD as u64,
        "{delivered} delivered + {missed} reported missed < {LOAD}"
    );
    d.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Shutdown flushes the queue
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_every_queued_audit_row() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    let token = d.token_for("agent-flush", CODE).await;
    let statuses = blast(authority(&d), token.clone(), "code-search".into(), 500, 8).await;
    assert_eq!(statuses, BTreeMap::from([(200, 500)]));
    let (db, _dir) = (d.db_path(), d.dir.clone());
    d.stop().await;

    let rows = audit_rows(&db);
    let verifies: Vec<&Row> = rows.iter().filter(|r| r.kind == "verify").collect();
    assert_eq!(verifies.len(), 500);
    assert!(verifies
        .iter()
        .all(|r| r.decision == "allow" && r.target == "code-search"));
    assert_eq!(chain_of(&db), Ok(rows.len() as i64));
    let (code, out) = cli_verify(&db);
    assert_eq!(code, 0, "{out}");

    // A restart continues the same chain.
    let d = Daemon::with(|c| {
        c.dev = true;
        c.db_path = db.clone();
    })
    .await;
    d.register("after-restart", "https://mcp.example.com/tools/after")
        .await;
    d.stop().await;
    // Its registration row and its admin row.
    assert_eq!(chain_of(&db), Ok(rows.len() as i64 + 2));
}

// ---------------------------------------------------------------------------------------------
// 7. `toolgate audit tail`
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_prints_the_newest_rows() {
    let d = Daemon::dev().await;
    d.register("code-search", CODE).await;
    d.register("sql-admin", SQL).await;
    let token = d.token_for("agent-tail", CODE).await;
    for _ in 0..3 {
        assert_eq!(d.verify(&token, "code-search").await.0, 200);
    }
    assert_eq!(d.verify(&token, "sql-admin").await.0, 403);
    drain(&d).await;
    let url = d.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["audit", "tail", "--url", &url, "--limit", "5"])
            .env_remove("TOOLGATE_URL")
            .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    // Oldest first: the newest row, the denial, is last.
    let last = lines[4];
    for part in [
        "verify",
        "deny",
        "audience",
        "sql-admin",
        &wimse("agent-tail"),
    ] {
        assert!(last.contains(part), "{part} not in {last:?}");
    }
    let seq_of = |line: &str| -> i64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix('#'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no #seq in {line:?}"))
    };
    let s: Vec<i64> = lines.iter().map(|l| seq_of(l)).collect();
    assert!(s.windows(2).all(|w| w[0] + 1 == w[1]), "{s:?}");
    let rows = audit_rows(&d.db_path());
    assert_eq!(
        *s.last().unwrap(),
        rows.iter().rev().find(|r| r.kind == "verify").unwrap().seq
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" allow ")).count(),
        3,
        "{stdout}"
    );
    d.stop().await;
}
