//! Boot a real toolgate in-process and talk HTTP to it.

use http::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use toolgate::client::Client;
use toolgate::clock::{Clock, ManualClock, SystemClock};
use toolgate::config::Config;
use toolgate::credentials::Credential;
use toolgate::server::{self, Running};

pub const ADMIN: &str = "test-admin-token-0123456789";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub struct Daemon {
    pub url: String,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    pub dir: Arc<tempfile::TempDir>,
    running: Option<Running>,
}

impl Daemon {
    /// A dev-mode daemon.
    pub async fn dev() -> Daemon {
        Self::with(|c| c.dev = true).await
    }

    /// A production-mode daemon (admin token `ADMIN`).
    pub async fn production() -> Daemon {
        Self::with(|c| c.admin_token = Some(Credential::new(ADMIN).unwrap())).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Daemon {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Config::for_test(&dir.path().join("toolgate.db"));
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        Self::boot(config, clock, dir).await
    }

    async fn boot(
        mut config: Config,
        clock: Arc<ManualClock>,
        dir: Arc<tempfile::TempDir>,
    ) -> Daemon {
        // The daemon's log goes to the captured output of the test that caused it.
        toolgate::log::capture_in_tests();
        let running =
            match server::start(config.clone(), clock.clone(), std::future::pending()).await {
                // A restart asks for its old port, which another test may have taken meanwhile:
                // then any free one (the issuer is kept, and the Host check ignores the port).
                Err(server::ServeError::Bind(e))
                    if e.kind() == std::io::ErrorKind::AddrInUse && config.listen.port() != 0 =>
                {
                    config.listen.set_port(0);
                    server::start(config.clone(), clock.clone(), std::future::pending())
                        .await
                        .unwrap()
                }
                other => other.unwrap(),
            };
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Daemon {
            url: format!("{scheme}://{}", running.addr),
            clock,
            config,
            dir,
            running: Some(running),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.db_path.clone()
    }

    /// Stop gracefully and start again on the same database (a new port, the same issuer).
    pub async fn restart(mut self) -> Daemon {
        let addr = self.running.as_ref().unwrap().addr;
        self.running.take().unwrap().stop().await.unwrap();
        let mut config = self.config.clone();
        // Keep the issuer of the first run so its tokens stay valid.
        config.issuer = Some(format!("http://{addr}"));
        config.listen = addr;
        Self::boot(config, self.clock.clone(), self.dir.clone()).await
    }

    /// Run the key ring's timer now (retirements, scheduled rotation), as it runs once a
    /// minute: after moving the clock, instead of waiting.
    pub async fn key_upkeep(&self) {
        self.running.as_ref().unwrap().key_upkeep().await;
    }

    /// Re-read the TLS files, as `SIGHUP` does.
    pub fn reload_tls(&self) -> Result<(), String> {
        self.running.as_ref().unwrap().reload_tls()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }

    pub fn client(&self) -> Client {
        let c = Client::new(&self.url).unwrap();
        if self.config.admin_token.is_some() {
            c.with_admin_token(ADMIN)
        } else {
            c
        }
    }

    /// A client without the admin token.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.url).unwrap()
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let (status, v) = self.client().send(method, path, body).await.unwrap();
        (status.as_u16(), v)
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> (u16, Value) {
        let (status, v) = self
            .client()
            .send(method, path, Some((content_type, bytes)))
            .await
            .unwrap();
        (status.as_u16(), v)
    }

    /// Send only the head of a request that declares a `len`-byte body, close the sending
    /// side, and read the answer: for limits enforced on the declared length. (Sending the whole body races the
    /// server's close and can end in a reset instead of the answer.)
    pub async fn declared_only(&self, path: &str, content_type: &str, len: usize) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let authority = self.url.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // No body follows: the server must not wait for one.
        stream.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let read = stream.read_to_end(&mut buf);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("no answer within 10 s")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        let status = text.split(' ').nth(1).unwrap().parse().unwrap();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    pub async fn register(&self, tool_id: &str, resource: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/mcp/tools",
                Some(json!({"tool_id": tool_id, "resource_uri": resource})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn exchange(&self, body: Value) -> (u16, Value) {
        self.call(Method::POST, "/v1/exchange/token", Some(body))
            .await
    }

    /// Exchange a dev stub for `audience`; the access token.
    pub async fn token_for(&self, sub: &str, audience: &str) -> String {
        let (status, body) = self
            .exchange(exchange_body(&stub(json!({"sub": sub})), audience))
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn verify(&self, token: &str, tool_id: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            "/v1/mcp/verify",
            Some(json!({"token": token, "tool_id": tool_id})),
        )
        .await
    }
}

/// Poll `check` until it yields a value: for effects that land in the background (audit rows,
/// reports). The 30 s bound only matters if the test is failing; between polls the task only
/// yields (each check is a round trip to the daemon), nothing waits for time to pass.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::task::yield_now().await;
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), poll).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting until {what}"),
    }
}

/// A plain-HTTP GET with the given headers (repeats allowed): the status and the JSON body.
pub async fn get_with_headers(url: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    request_with_headers(Method::GET, url, path, headers, Vec::new()).await
}

/// A plain-HTTP POST of `{}` with the given headers.
pub async fn post_with_headers(url: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    request_with_headers(Method::POST, url, path, &headers, b"{}".to_vec()).await
}

async fn request_with_headers(
    method: Method,
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let (status, _, value) = request_full(method, url, path, headers, body).await;
    (status, value)
}

/// A plain-HTTP request with the given headers (repeats allowed): the status, the response
/// headers and the JSON body (`null` if it is not JSON).
pub async fn request_full(
    method: Method,
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Value) {
    use http_body_util::BodyExt;
    let authority = url.strip_prefix("http://").unwrap();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(driver);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A compact JWS with exactly this header and these claims, signed by `key`.
pub fn sign_jws(key: &toolgate::jose::SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&signature))
}

pub fn b64(bytes: &[u8]) -> String {
    toolgate::jose::b64::encode(bytes)
}

/// A dev-mode stub subject token carrying `claims`.
pub fn stub(claims: Value) -> String {
    format!(
        "{}.{}.stub",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

pub fn exchange_body(subject_token: &str, audience: &str) -> Value {
    json!({
        "grant_type": GRANT,
        "subject_token": subject_token,
        "subject_token_type": JWT,
        "audience": audience,
    })
}

/// The claims of a compact JWS, decoded without verification (for assertions).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&toolgate::jose::b64::decode(payload).unwrap()).unwrap()
}

pub fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&toolgate::jose::b64::decode(header).unwrap()).unwrap()
}

impl Daemon {
    pub fn clock_now(&self) -> i64 {
        self.clock.now()
    }
}

/// A `toolgate serve` child process listening on `127.0.0.1:0`; SIGKILLed when dropped.
pub struct Served {
    pub child: std::process::Child,
    /// `127.0.0.1:port`, as the child reported it.
    pub addr: String,
}

impl Served {
    /// Start `toolgate serve --listen 127.0.0.1:0 <args>` and read the bound address from its
    /// "listening on" log line. The rest of its log is appended to `log`, or goes to the
    /// test's captured output.
    pub fn start(args: &[&std::ffi::OsStr], log: Option<&std::path::Path>) -> Served {
        use std::io::{BufRead, Write};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TOOLGATE_URL")
            .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
            .stdin(std::process::Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut sink: Box<dyn Write + Send> = match log {
            Some(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Box::new(CapturedStderr),
        };
        let (ready, addr) = std::sync::mpsc::channel();
        // Reads until the child's stderr closes, so that the child never blocks on its log.
        std::thread::spawn(move || {
            let mut ready = Some(ready);
            let mut seen = String::new();
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(sink, "{line}");
                if let Some(tx) = &ready {
                    seen.push_str(&line);
                    seen.push('\n');
                    let rest = line
                        .split_once(" listening on http://")
                        .or_else(|| line.split_once(" listening on https://"))
                        .map(|(_, r)| r);
                    if let Some(rest) = rest {
                        let addr = rest.split(' ').next().unwrap_or_default().to_string();
                        let _ = tx.send(Ok(addr));
                        ready = None;
                    }
                }
            }
            if let Some(tx) = ready {
                let _ = tx.send(Err(seen));
            }
        });
        // The bound only matters if the child hangs before it listens.
        match addr.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(addr)) => Served { child, addr },
            Ok(Err(log)) => {
                let status = child.wait().unwrap();
                panic!("toolgate serve exited ({status}) before listening:\n{log}");
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("toolgate serve did not report its address within 60 s");
            }
        }
    }

    /// SIGKILL (std's `Child::kill` on Unix): no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `eprint!`, which libtest captures (the thread that writes inherits the test's capture).
struct CapturedStderr;

impl std::io::Write for CapturedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
