//! HTTP: the router, response helpers, and security headers. Handlers only parse, call the
//! core, and render; errors become responses in `error.rs` alone.

pub mod body;
mod discovery;
pub mod error;
mod keys;
mod observe;
pub mod openapi;
mod signals;
pub(crate) mod tokens;
mod tools;

pub use signals::MAX_SET_AGE;

use crate::app::App;
use crate::credentials::Role;
use crate::store::audit::Record;
use error::ApiError;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use std::convert::Infallible;
use std::sync::Arc;

/// The address a request came from, put in its extensions by the accept loop: refusals are
/// counted per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::IpAddr);

/// The peer of a request, if the accept loop recorded one.
pub(crate) fn peer_of<B>(req: &Request<B>) -> Option<std::net::IpAddr> {
    req.extensions().get::<Peer>().map(|p| p.0)
}

pub type Body = BoxBody<Bytes, Infallible>;
pub type Response = http::Response<Body>;
type Result<T> = std::result::Result<T, ApiError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut resp = http::Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Serve one request: route, run, and add the headers every response carries.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response {
    let rid = request_id();
    let peer = peer_of(&req);
    let admin = admin_route(req.method(), req.uri().path());
    let who = admin.map(|_| caller(&app, req.headers()));
    let outcome = match at_the_door(&app, &req) {
        Ok(()) => route(&app, req, &rid).await,
        Err(e) => Err(e),
    };
    let mut resp = match outcome {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // The dashboard polls its numbers every two seconds: those reads are audited only when
    // refused, so the log stays about decisions and changes.
    let routine_read = admin == Some("GET /v1/stats") && resp.status().is_success();
    if let Some(what) = admin.filter(|_| !routine_read) {
        let status = resp.status();
        let decision = match status.as_u16() {
            401 => "unauthorized",
            s if s < 400 => "ok",
            _ => "refused",
        };
        let row = Record {
            ts_ms: app.now_ms(),
            kind: "admin".into(),
            subject: who.unwrap_or("anonymous").into(),
            target: what.into(),
            decision: decision.into(),
            check: status.as_u16().to_string().into(),
            request_id: rid.clone(),
            ..Default::default()
        };
        // Refused calls repeat cheaply: counted per peer (the target is a route name).
        let audited = if status.is_success() {
            app.record("admin", row)
        } else {
            app.record_refusal("admin", row, peer, true)
        };
        if audited.is_err() && status.is_success() {
            resp = ApiError::unavailable("the audit log is unavailable; the call was refused")
                .into_response();
        }
    }
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert("x-request-id", v);
    }
    resp
}

/// A random name for this process, unlikely to repeat across restarts.
pub(crate) fn process_nonce() -> &'static str {
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        crate::ids::random_id()
            .map(|id| id.chars().take(8).collect())
            .unwrap_or_else(|| "tg".into())
    })
}

/// A request id unique within this process and unlikely to repeat across restarts.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        process_nonce(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Calls that need the admin token (API.md §0), named for the audit log.
fn admin_route(method: &Method, path: &str) -> Option<&'static str> {
    let write = matches!(
        *method,
        Method::POST | Method::DELETE | Method::PUT | Method::PATCH
    );
    let p = path.trim_end_matches('/');
    if p == "/v1/mcp/tools" || p == "/v1/tools" || p.starts_with("/v1/tools/") {
        // `/v1/tools/{tool_id}/audit` by its segments: a tool named `audit` is a tool.
        if p.split('/').count() == 5 && p.ends_with("/audit") {
            return Some("GET /v1/tools/{tool_id}/audit");
        }
        return write.then_some("write /v1/tools");
    }
    if p == "/v1/signals/revocations" || p.starts_with("/v1/signals/revocations/") {
        return Some(if write {
            "write /v1/signals/revocations"
        } else {
            "GET /v1/signals/revocations"
        });
    }
    match p {
        "/v1/keys" => Some("GET /v1/keys"),
        "/v1/keys/rotate" => Some("POST /v1/keys/rotate"),
        "/v1/audit" => Some("GET /v1/audit"),
        "/v1/events" => Some("GET /v1/events"),
        "/v1/stats" => Some("GET /v1/stats"),
        "/v1/mcp/decisions" => Some("POST /v1/mcp/decisions"),
        _ => None,
    }
}

/// Clip attacker-supplied text before it reaches the audit log.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(256) {
        Some((end, _)) => s.get(..end).unwrap_or_default().to_string(),
        None => s.to_string(),
    }
}

async fn route(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        [""] => get_only(&method).map(|()| observe::redirect_to_dashboard()),
        ["dashboard"] => get_only(&method).map(|()| observe::dashboard(app)),
        ["metrics"] => {
            get_only(&method)?;
            observe::metrics(app, &req)
        }
        ["v1", "stats"] => {
            get_only(&method)?;
            observe::stats(app, &req)
        }
        ["v1", "events"] => {
            get_only(&method)?;
            observe::events(app, &req)
        }
        ["v1", "audit"] => {
            get_only(&method)?;
            observe::audit(app, &req, None).await
        }
        ["v1", "tools", tool_id, "audit"] => {
            get_only(&method)?;
            let tool_id = body::path_segment(tool_id)?;
            observe::audit(app, &req, Some(&tool_id)).await
        }
        ["v1", "issuers"] => {
            get_only(&method)?;
            observe::issuers(app, &req)
        }
        ["v1", "authorization-servers"] => {
            get_only(&method)?;
            observe::authorization_servers(app, &req).await
        }
        ["v1", "sys", "health"] => get_only(&method).map(|()| discovery::health(app)),
        [".well-known", "oauth-authorization-server"] => {
            get_only(&method).map(|()| discovery::metadata(app))
        }
        ["v1", "identity", "jwks"] => get_only(&method).map(|()| discovery::jwks(app)),
        ["v1", "keys"] => {
            get_only(&method)?;
            keys::list(app, &req)
        }
        ["v1", "keys", "rotate"] => match method {
            Method::POST => keys::rotate(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["openapi.json"] => get_only(&method).map(|()| openapi::document(app)),
        ["v1", "exchange", "token"] => match method {
            Method::POST => tokens::exchange(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["v1", "mcp", "decisions"] => match method {
            Method::POST => tokens::decisions(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["v1", "mcp", "verify"] => match method {
            Method::POST => tokens::verify(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["v1", "mcp", "tools"] => match method {
            Method::GET | Method::HEAD => tools::list(app, &req),
            Method::POST => tools::register(app, req, rid).await,
            Method::DELETE => tools::deregister_by_query(app, &req, rid).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, POST, DELETE")),
        },
        ["v1", "tools"] => match method {
            Method::GET | Method::HEAD => tools::list(app, &req),
            Method::POST => tools::register(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, POST")),
        },
        ["v1", "tools", tool_id] => {
            let tool_id = &body::path_segment(tool_id)?;
            match method {
                Method::GET | Method::HEAD => tools::get(app, &req, tool_id),
                Method::PUT => tools::update(app, req, tool_id, rid).await,
                Method::DELETE => tools::deregister(app, &req, tool_id, rid).await,
                _ => Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE")),
            }
        }
        ["v1", "signals", "events"] => match method {
            Method::POST => signals::receive(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["v1", "signals", "revocations"] => match method {
            Method::GET | Method::HEAD => signals::list(app, req).await,
            Method::POST => signals::create(app, req, rid).await,
            _ => Err(ApiError::method_not_allowed("GET, HEAD, POST")),
        },
        ["v1", "signals", "revocations", id] => match method {
            Method::DELETE => signals::lift(app, &req, &body::path_segment(id)?, rid).await,
            _ => Err(ApiError::method_not_allowed("DELETE")),
        },
        ["v1", "federation", "revocation-hash"] => {
            get_only(&method)?;
            signals::hash(app, &req)
        }
        ["v1", "federation", "revocation-export"] => {
            get_only(&method)?;
            signals::export(app, req).await
        }
        _ => Err(ApiError::not_found()),
    }
}

fn get_only(method: &Method) -> Result<()> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed("GET, HEAD"))
    }
}

/// The bearer secret presented in `Authorization` (the scheme is case-insensitive, RFC 7235).
fn presented(headers: &http::HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let (scheme, rest) = (v.get(..7)?, v.get(7..)?);
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
    })
}

/// The role of the credential a request presents, if any.
fn role(app: &App, headers: &http::HeaderMap) -> Option<Role> {
    presented(headers).and_then(|p| app.credentials.role_of(p))
}

/// Who made an authenticated call, for the audit log.
fn caller(app: &App, headers: &http::HeaderMap) -> &'static str {
    match role(app, headers) {
        Some(r) => r.name(),
        None if app.dev => "dev",
        None => "anonymous",
    }
}

/// Outside dev mode, a call needs a credential whose role is one of `roles`: no credential (or
/// an unknown one) is a 401, a known one of another role a 403.
fn require(app: &App, headers: &http::HeaderMap, roles: &[Role]) -> Result<()> {
    if app.dev {
        return Ok(());
    }
    match role(app, headers) {
        Some(r) if roles.contains(&r) => Ok(()),
        Some(_) => Err(ApiError::insufficient_scope()),
        None => Err(ApiError::unauthorized()),
    }
}

/// Changes to tools and revocations: the admin token.
pub(crate) fn require_admin(app: &App, headers: &http::HeaderMap) -> Result<()> {
    require(app, headers, &[Role::Admin])
}

/// Decisions reported by a gateway or guard: admin or reporter.
pub(crate) fn require_reporter(app: &App, headers: &http::HeaderMap) -> Result<()> {
    require(app, headers, &[Role::Admin, Role::Reporter])
}

/// The audit log, stats, the event stream and the revocation list: admin or read-only.
pub(crate) fn require_observer(app: &App, headers: &http::HeaderMap) -> Result<()> {
    require(app, headers, &[Role::Admin, Role::Reader])
}

/// The registry, `/metrics` and the revocation export: open with `--open-reads` (and in dev);
/// otherwise any of the three credentials.
pub(crate) fn require_reader(app: &App, headers: &http::HeaderMap) -> Result<()> {
    if app.open_reads {
        Ok(())
    } else {
        require(app, headers, &[Role::Admin, Role::Reporter, Role::Reader])
    }
}

/// Refuse, before routing, what a browser could be tricked into sending: a `Host` that does not
/// name this daemon (DNS rebinding) and a foreign `Origin` on a state-changing call.
fn at_the_door<B>(app: &App, req: &Request<B>) -> Result<()> {
    // A browser always sends `Host`; a request without one (HTTP/1.0) cannot be a rebinding
    // page's, and is answered.
    let host = match req.headers().get(header::HOST) {
        Some(h) => Some(h.to_str().unwrap_or_default()),
        None => req.uri().authority().map(|a| a.as_str()),
    };
    if host.is_some_and(|h| !app.hosts.host_ok(h)) {
        return Err(ApiError::forbidden(
            "the Host header does not name this daemon (see --allowed-host)",
        ));
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let mut origins = req.headers().get_all(header::ORIGIN).iter();
        let origin_ok = match (origins.next(), origins.next()) {
            (None, _) => true,
            (Some(o), None) => o
                .to_str()
                .is_ok_and(|o| host.is_some_and(|h| app.hosts.origin_ok(o, h))),
            (Some(_), Some(_)) => false,
        };
        if !origin_ok {
            return Err(ApiError::forbidden(
                "cross-origin requests may not change state (see --allowed-origin)",
            ));
        }
    }
    Ok(())
}
