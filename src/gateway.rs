//! `toolgate gateway`: a reverse proxy in front of an MCP server (Streamable HTTP) or plain
//! HTTP / A2A tool servers. Every request gets a tool or resource decision from the guard
//! before anything reaches the upstream; responses, event streams included, are streamed
//! through untouched. Decisions are reported to toolgate, audited and counted like verifies.

use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::dpop::SpentProof;
use crate::guard::{rejection_response, Guard, GuardConfig, Rejection};
use crate::http::body::BodyError;
use crate::verify::{Allowed, Target};
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use toolgate_guard::mcp::InvalidMessage;
use toolgate_guard::tls::{ClientTls, Connector};

pub mod paths;

/// Largest request body the gateway reads to find the JSON-RPC messages in it.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Decisions waiting to be reported before requests are refused (shed load, never lose one).
const REPORT_QUEUE: usize = 10_000;
const REPORT_BATCH: usize = 500;
/// Longest target name a report carries (toolgate keeps no more of it), so that no caller can
/// make a report too large for toolgate to take.
const REPORT_LABEL_CHARS: usize = 256;
/// Default for `--max-batch`: most JSON-RPC messages one request may carry.
pub const DEFAULT_MAX_BATCH: usize = 64;

type Body = BoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub upstream: String,
    /// What an `https://` upstream is checked against (`--upstream-ca`; default: the system's
    /// roots). Trust in toolgate itself is `guard.toolgate_tls`.
    pub upstream_tls: ClientTls,
    pub guard: GuardConfig,
    /// The MCP endpoint's path on this gateway (and upstream), e.g. `/mcp`.
    pub mcp_path: String,
    /// Plain HTTP and A2A tools: path prefix → `tool_id`.
    pub routes: Vec<(String, String)>,
    pub max_connections: usize,
    /// Most JSON-RPC messages in one batch; a larger one is a 400 ([`DEFAULT_MAX_BATCH`]).
    pub max_batch: usize,
    /// Browser origins allowed besides the gateway's own (that of `guard.public_url`), e.g.
    /// `https://app.example.com`; a request with any other `Origin` is a 403.
    pub allowed_origins: Vec<String>,
    /// Where the gateway answers its own Prometheus metrics (never forwarded); `None`: nowhere.
    pub metrics_path: Option<String>,
    /// TLS on the gateway's listener, and the proxy header a client certificate may come in.
    pub tls: crate::config::ListenerTls,
}

/// The gateway's own counters (its decisions are counted by toolgate, from its reports).
#[derive(Debug, Default)]
struct Counters {
    /// Decisions toolgate accepted.
    reports_sent: AtomicU64,
    /// Decisions in a report toolgate refused (4xx): never reported.
    reports_refused: AtomicU64,
    /// Decisions that found the report queue full: never reported, their request got a 503.
    reports_queue_full: AtomicU64,
}

impl Counters {
    fn prometheus(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP toolgate_gateway_reports_sent_total Decisions reported to toolgate.\n\
             # TYPE toolgate_gateway_reports_sent_total counter\n\
             toolgate_gateway_reports_sent_total {}\n\
             # HELP toolgate_gateway_reports_dropped_total Decisions never reported: toolgate refused the report, or the queue was full (and the request was refused).\n\
             # TYPE toolgate_gateway_reports_dropped_total counter\n\
             toolgate_gateway_reports_dropped_total{{reason=\"refused\"}} {}\n\
             toolgate_gateway_reports_dropped_total{{reason=\"queue_full\"}} {}\n",
            get(&self.reports_sent),
            get(&self.reports_refused),
            get(&self.reports_queue_full),
        )
    }
}

/// The serialised origin (`scheme://host[:port]`, lower-case, without a default port) of an
/// absolute http(s) URL, or `None` for anything else (`null`, userinfo, a relative URL).
pub fn origin_of(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// An origin and nothing more (no path, query or userinfo), serialised as [`origin_of`] does.
fn exact_origin(s: &str) -> Option<String> {
    let bare = s.strip_suffix('/').unwrap_or(s);
    let uri: Uri = bare.parse().ok()?;
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return None;
    }
    origin_of(bare)
}

/// A label toolgate keeps whole ([`REPORT_LABEL_CHARS`]).
fn clipped(label: &str) -> &str {
    match label.char_indices().nth(REPORT_LABEL_CHARS) {
        Some((end, _)) => label.get(..end).unwrap_or_default(),
        None => label,
    }
}

/// The tool names called in a body: one entry per message, `None` for non-tool messages. The
/// guard's strict reader (duplicate member names anywhere, a non-string `method` or
/// `params.name` are refused), so the gateway decides on what any upstream would run.
/// A batch over `max_batch` is refused before its messages are read. Exposed for the fuzz
/// target.
pub fn jsonrpc_targets(
    body: &[u8],
    max_batch: usize,
) -> Result<Vec<Option<String>>, InvalidMessage> {
    toolgate_guard::mcp::jsonrpc_targets(body, max_batch)
}

struct Gateway {
    guard: Arc<Guard>,
    upstream: Uri,
    client: HttpClient<Connector, Body>,
    cfg: GatewayConfig,
    reports: mpsc::Sender<Value>,
    /// The origins a browser may call from: the gateway's own and `--allowed-origin`.
    origins: Vec<String>,
    counters: Arc<Counters>,
}

/// The verified subject and its issuer, as the upstream is told them.
fn who(allowed: &Allowed) -> (&str, &str) {
    (
        &allowed.claims.sub,
        allowed.claims.iss.as_deref().unwrap_or_default(),
    )
}

/// A decision to report: tool (or the server's resource), subject, outcome.
fn decision(tool_id: &str, outcome: &Result<Allowed, Rejection>, micros: u64) -> Value {
    match outcome {
        Ok(Allowed { claims: c, .. }) => {
            json!({"tool_id": clipped(tool_id), "subject": c.sub, "jti": c.jti, "decision": "allow", "micros": micros})
        }
        Err(r) => {
            json!({"tool_id": clipped(tool_id), "decision": "deny", "check": r.check.map(|c| c.name()).unwrap_or("malformed"),
                         "reason": r.description, "micros": micros})
        }
    }
}

impl Gateway {
    fn error(status: StatusCode, code: &str, description: &str) -> http::Response<Body> {
        let mut resp = http::Response::new(full(
            json!({"error": code, "error_description": description}).to_string(),
        ));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// No `Origin` header, or exactly one naming an allowed origin.
    fn origin_allowed(&self, headers: &http::HeaderMap) -> bool {
        let mut sent = headers.get_all(header::ORIGIN).iter();
        match (sent.next(), sent.next()) {
            (None, _) => true,
            (Some(v), None) => v
                .to_str()
                .ok()
                .and_then(exact_origin)
                .is_some_and(|o| self.origins.contains(&o)),
            (Some(_), Some(_)) => false,
        }
    }

    fn metrics(&self, method: &Method) -> http::Response<Body> {
        if method != Method::GET {
            let mut resp = Self::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return resp;
        }
        let mut resp = http::Response::new(full(self.counters.prometheus()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    }

    /// The answer to a batch over `--max-batch`: a JSON-RPC error (the request is invalid as a
    /// whole, so it has no id), with HTTP 400.
    fn batch_too_large(&self) -> http::Response<Body> {
        let body = json!({"jsonrpc": "2.0", "id": null, "error": {
            "code": -32600,
            "message": format!("Invalid Request: a batch may carry at most {} messages", self.cfg.max_batch),
        }});
        let mut resp = http::Response::new(full(body.to_string()));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    fn metadata(&self) -> http::Response<Body> {
        let body = self.guard.metadata();
        let mut resp = http::Response::new(full(body.to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// Decide one target with the guard and queue its report; the decision or the refusal
    /// response. `spent` is the request's: its DPoP proof is spent by the first allowed
    /// decision only (see [`Guard::check_http_in_request`]).
    #[allow(clippy::result_large_err)] // the refusal is the response: built once, returned once
    fn decide(
        &self,
        parts: &http::request::Parts,
        target: Target<'_>,
        body_hash: Option<&str>,
        spent: &mut Option<SpentProof>,
    ) -> Result<Allowed, http::Response<Body>> {
        let started = Instant::now();
        let outcome = self
            .guard
            .check_http_in_request(parts, target, body_hash, spent);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let label = match target {
            Target::Tool(t) => t,
            Target::Server { resource, .. } | Target::Audience(resource) => resource,
        };
        if self
            .reports
            .try_send(decision(label, &outcome, micros))
            .is_err()
        {
            self.counters
                .reports_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(Self::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "decisions cannot be reported to toolgate right now",
            ));
        }
        outcome.map_err(|r| {
            rejection_response(&r, self.guard.resource_metadata())
                .map(|b| b.map_err(|never| match never {}).boxed())
        })
    }

    /// Read a whole request body within the gateway's limit, or the refusal.
    #[allow(clippy::result_large_err)]
    async fn read_body(
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, http::Response<Body>> {
        match crate::http::body::read_limited(headers, body, MAX_BODY_BYTES).await {
            Ok(b) => Ok(b),
            Err(BodyError::TooLarge) => Err(Self::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body too large",
            )),
            Err(BodyError::TimedOut) => Err(Self::error(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "request body did not arrive in time",
            )),
            Err(BodyError::Unreadable) => Err(Self::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "request body could not be read",
            )),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> http::Response<Body> {
        let path = req.uri().path().to_string();
        // A path the upstream might read as another one is never decided.
        if let Err(why) = paths::canonical(&path) {
            return Self::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                why.description(),
            );
        }
        if path == "/.well-known/oauth-protected-resource" {
            return self.metadata();
        }
        // A browser page of another origin (or a rebound DNS name) reaches nothing behind the
        // gateway; clients that are not browsers send no Origin.
        if !self.origin_allowed(req.headers()) {
            return Self::error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "requests from this Origin are not accepted",
            );
        }
        if self.cfg.metrics_path.as_deref() == Some(path.as_str()) {
            return self.metrics(req.method());
        }
        if path == self.cfg.mcp_path {
            return self.mcp(req).await;
        }
        let routed = paths::route(&self.cfg.routes, &path);
        let Some(tool_id) = routed else {
            return Self::error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "no tool or resource is mapped to this path",
            );
        };
        let target = Target::Tool(tool_id);
        let (parts, body) = req.into_parts();
        // A tool bound to each execution: the body is read (within the limit) and hashed.
        if self.guard.needs_body(target) {
            let bytes = match Self::read_body(&parts.headers, body).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let hash = crate::verify::body_hash(&bytes);
            return match self.decide(&parts, target, Some(&hash), &mut None) {
                Ok(allowed) => self.forward(parts, full(bytes), who(&allowed)).await,
                Err(resp) => resp,
            };
        }
        match self.decide(&parts, target, None, &mut None) {
            Ok(allowed) => self.forward(parts, body.boxed(), who(&allowed)).await,
            Err(resp) => resp,
        }
    }

    async fn mcp(&self, req: Request<Incoming>) -> http::Response<Body> {
        match *req.method() {
            Method::POST => {}
            Method::GET | Method::DELETE => {
                let (parts, body) = req.into_parts();
                return match self.decide(&parts, self.guard.server_target(), None, &mut None) {
                    Ok(allowed) => self.forward(parts, body.boxed(), who(&allowed)).await,
                    Err(resp) => resp,
                };
            }
            _ => {
                let mut resp = Self::error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "use POST, GET or DELETE",
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST, GET, DELETE"));
                return resp;
            }
        }
        let (parts, body) = req.into_parts();
        let bytes = match Self::read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        // A batch is bounded before anything is decided or reported for it.
        let targets = match jsonrpc_targets(&bytes, self.cfg.max_batch) {
            Ok(t) => t,
            Err(InvalidMessage::BatchTooLong) => return self.batch_too_large(),
            Err(why) => {
                return Self::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    why.description(),
                )
            }
        };
        // No token at all: the 401 challenge, before anything about the tools is revealed.
        if crate::guard::access_token(&parts.headers).is_none() {
            if let Err(resp) = self.decide(&parts, self.guard.server_target(), None, &mut None) {
                return resp;
            }
        }
        // Each distinct target once, as the guard's MCP mode does.
        let tool_ids = toolgate_guard::guard::distinct_targets(&self.guard, &targets);
        // The whole JSON-RPC message (or batch) as sent is what an execution binding covers.
        let hash = tool_ids
            .iter()
            .flatten()
            .any(|id| self.guard.needs_body(Target::Tool(id)))
            .then(|| crate::verify::body_hash(&bytes));
        // Every message must pass; the first refusal refuses the whole request. The request's
        // one DPoP proof is spent once, not once per message.
        let mut spent = None;
        let mut who = (String::new(), String::new());
        for tool_id in &tool_ids {
            let target = match tool_id {
                Some(id) => Target::Tool(id),
                None => self.guard.server_target(),
            };
            match self.decide(&parts, target, hash.as_deref(), &mut spent) {
                Ok(allowed) => {
                    who.0.clone_from(&allowed.claims.sub);
                    who.1 = allowed.claims.iss.clone().unwrap_or_default();
                }
                Err(resp) => return resp,
            }
        }
        self.forward(parts, full(bytes), (&who.0, &who.1)).await
    }

    /// Send to the upstream without the caller's token or DPoP proof (no token passthrough),
    /// and stream the answer back (with a fresh `DPoP-Nonce` for a DPoP request, when nonces
    /// are on).
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        (subject, issuer): (&str, &str),
    ) -> http::Response<Body> {
        let nonce = self.guard.nonce_header(&parts.headers);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let base = self.upstream.to_string();
        let uri: Uri = match format!("{}{}", base.trim_end_matches('/'), path_and_query).parse() {
            Ok(u) => u,
            Err(_) => {
                return Self::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "request path is not a valid URI",
                )
            }
        };
        for h in [
            header::AUTHORIZATION,
            header::HOST,
            header::CONNECTION,
            header::TE,
            header::TRAILER,
            header::UPGRADE,
            header::PROXY_AUTHORIZATION,
            HeaderName::from_static("dpop"),
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ] {
            parts.headers.remove(h);
        }
        // Only the gateway speaks for the subject: whatever the client sent is dropped. The
        // issuer says whose subject it is (toolgate's, or an authorization server's).
        parts.headers.remove("x-toolgate-subject");
        parts.headers.remove("x-toolgate-issuer");
        if let Ok(v) = HeaderValue::from_str(subject) {
            parts.headers.insert("x-toolgate-subject", v);
        }
        if let Ok(v) = HeaderValue::from_str(issuer) {
            parts.headers.insert("x-toolgate-issuer", v);
        }
        parts.uri = uri;
        let req = Request::from_parts(parts, body);
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                for h in [
                    header::CONNECTION,
                    header::TRAILER,
                    header::UPGRADE,
                    HeaderName::from_static("keep-alive"),
                ] {
                    parts.headers.remove(h);
                }
                // Only this gateway's nonce is the one its proofs must carry.
                parts.headers.remove(crate::guard::DPOP_NONCE);
                if let Some(n) = nonce {
                    parts.headers.insert(crate::guard::DPOP_NONCE, n);
                }
                http::Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                match toolgate_guard::tls::describe(&e) {
                    Some(why) => crate::log_warn!("gateway: upstream refused: TLS: {why}"),
                    None => crate::log_warn!("gateway: upstream failed: {e}"),
                }
                Self::error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "the upstream server did not answer",
                )
            }
        }
    }
}

/// Report decisions to toolgate in batches; on failure keep them and retry.
async fn reporter(
    client: Client,
    mut rx: mpsc::Receiver<Value>,
    source: String,
    counters: Arc<Counters>,
) {
    let mut pending: Vec<Value> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(v) => pending.push(v),
                None => return,
            }
        }
        while pending.len() < REPORT_BATCH {
            match rx.try_recv() {
                Ok(v) => pending.push(v),
                Err(_) => break,
            }
        }
        let body = json!({"source": source, "decisions": pending});
        let sent = client
            .send(
                Method::POST,
                "/v1/mcp/decisions",
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await;
        match sent {
            Ok((status, _)) if status.is_success() => {
                counters
                    .reports_sent
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                pending.clear();
            }
            Ok((status, _)) if status.is_client_error() => {
                counters
                    .reports_refused
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                crate::log_error!(
                    "gateway: toolgate refused a decision report ({status}); dropping {} decisions",
                    pending.len()
                );
                pending.clear();
            }
            other => {
                let why = match other {
                    Ok((s, _)) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                crate::log_warn!("gateway: cannot report decisions yet ({why}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Prove at start that toolgate takes this gateway's decision reports: an empty report must be
/// accepted. A gateway whose every report would be refused (no token, or a wrong one, against a
/// production toolgate) would decide without an audit trail, so it does not run.
async fn check_reporting(client: &Client, source: &str) -> Result<(), String> {
    let body = json!({"source": source, "decisions": []});
    let sent = client
        .send(
            Method::POST,
            "/v1/mcp/decisions",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await;
    match sent {
        Ok((status, _)) if status.is_success() => Ok(()),
        Ok((status, _)) if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
            Err(format!(
                "toolgate refuses this gateway's decision reports ({status}): give it a token toolgate accepts for POST /v1/mcp/decisions (--admin-token-file)"
            ))
        }
        Ok((status, _)) => Err(format!(
            "toolgate answered {status} to an empty decision report; not starting"
        )),
        Err(e) => Err(format!("cannot report decisions to toolgate: {e}")),
    }
}

/// Run the gateway on `cfg.listen` until `shutdown`.
pub async fn run(mut cfg: GatewayConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    // A public URL left to its default names the listen address; on port 0 that is the port
    // bound, which DPoP proofs (htu) and the metadata must name.
    let scheme = if cfg.tls.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if cfg.listen.port() == 0 && cfg.guard.public_url == format!("{scheme}://{}", cfg.listen) {
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        cfg.guard.public_url = format!("{scheme}://{bound}");
    }
    run_on(listener, cfg, shutdown).await
}

/// Run the gateway on a listener already bound (`cfg.listen` is not used) until `shutdown`.
pub async fn run_on(
    listener: TcpListener,
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let guard = Guard::connect(cfg.guard.clone(), clock)
        .await
        .map_err(|e| e.to_string())?;
    serve(listener, guard, cfg, shutdown).await
}

/// Run the gateway on a bound `listener` with a connected `guard` until `shutdown` (tests bind
/// port 0 and keep the guard, to move its clock and wait for its syncs).
pub async fn serve(
    listener: TcpListener,
    guard: Arc<Guard>,
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let tls = match &cfg.tls.tls {
        Some(files) => Some(crate::tls::TlsServer::load(
            files.clone(),
            Arc::new(SystemClock),
        )?),
        None => None,
    };
    let upstream: Uri = cfg
        .upstream
        .parse()
        .map_err(|_| format!("--upstream {} is not a URI", cfg.upstream))?;
    let upstream_https = match upstream.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("--upstream must be an http:// or https:// URL".into()),
    };
    if !upstream_https && !cfg.upstream_tls.is_default() {
        return Err(format!(
            "--upstream-ca is given, but --upstream {} is plain http://: use https://",
            cfg.upstream
        ));
    }
    paths::canonical(&cfg.mcp_path).map_err(|e| format!("--mcp-path {}: {e}", cfg.mcp_path))?;
    paths::check_routes(&cfg.routes)?;
    if let Some(p) = &cfg.metrics_path {
        paths::canonical(p).map_err(|e| format!("--metrics-path {p}: {e}"))?;
    }
    if cfg.max_batch == 0 {
        return Err("--max-batch must be at least 1".into());
    }
    let mut origins = vec![origin_of(&cfg.guard.public_url).ok_or_else(|| {
        format!(
            "--public-url {} is not an http(s) URL",
            cfg.guard.public_url
        )
    })?];
    for o in &cfg.allowed_origins {
        origins.push(exact_origin(o).ok_or_else(|| {
            format!("--allowed-origin {o} is not an origin (scheme://host[:port])")
        })?);
    }
    let mut report_client = Client::with_tls(&cfg.guard.toolgate, &cfg.guard.toolgate_tls)
        .map_err(|e| e.to_string())?;
    if let Some(t) = &cfg.guard.admin_token {
        report_client = report_client.with_admin_token(t.clone());
    }
    let source = format!(
        "gateway {}",
        cfg.guard
            .server_id
            .clone()
            .unwrap_or_else(|| cfg.listen.to_string())
    );
    check_reporting(&report_client, &source).await?;
    let (reports, rx) = mpsc::channel(REPORT_QUEUE);
    let counters = Arc::new(Counters::default());
    let reporter_task = tokio::spawn(reporter(report_client, rx, source, counters.clone()));
    let connector = cfg
        .upstream_tls
        .connector(upstream_https)
        .map_err(|e| format!("--upstream-ca: {e}"))?;
    let client = HttpClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    crate::log_info!(
        "toolgate gateway on {}://{} -> {} (resource {}, mcp path {})",
        if cfg.tls.tls.is_some() {
            "https"
        } else {
            "http"
        },
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        cfg.upstream,
        guard.resource(),
        cfg.mcp_path
    );
    let gateway = Arc::new(Gateway {
        guard,
        upstream,
        client,
        cfg: cfg.clone(),
        reports,
        origins,
        counters,
    });
    let limits = crate::server::Limits {
        max_connections: cfg.max_connections,
        max_per_peer: crate::config::DEFAULT_MAX_PER_PEER,
        header_read_timeout: Duration::from_secs(10),
        write_timeout: crate::config::DEFAULT_WRITE_TIMEOUT,
        grace: Duration::from_secs(10),
    };
    let handler = move |req| {
        let gw = gateway.clone();
        async move { Ok::<_, std::convert::Infallible>(gw.handle(req).await) }
    };
    let reloader = tls.clone().map(|tls| {
        let reload: crate::server::Reload = Arc::new(move || tls.reload());
        tokio::spawn(crate::server::reload_on_hangup(reload))
    });
    let transport = crate::server::Transport {
        tls,
        client_cert_header: cfg.tls.client_cert_header.clone(),
        trusted_proxies: cfg.tls.trusted_proxies.clone(),
    };
    crate::server::accept_loop(listener, &limits, &transport, shutdown, handler, || {}).await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    // Give the reporter a moment to deliver what is queued.
    let _ = tokio::time::timeout(Duration::from_secs(5), reporter_task).await;
    Ok(())
}
