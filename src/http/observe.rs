//! What operators look at: `/metrics`, `/v1/stats`, `/v1/events`, the audit log reads and the
//! embedded dashboard.

use super::body::{self, form_pairs};
use super::error::ApiError;
use super::{full, json_response, require_observer, require_reader, Response, Result};
use crate::app::App;
use crate::store::audit::{self as log, Query, Stored};
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::OnceLock;

const DASHBOARD: &str = include_str!("../dashboard.html");
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// The audit read's query parameters (the per-tool read takes all but the first).
const AUDIT_PARAMETERS: [&str; 8] = [
    "tool_id", "decision", "subject", "check", "kind", "since", "before", "limit",
];
/// Longest subject or tool a filter names: no row holds a longer one (they are clipped to
/// 256 characters, 4 bytes each at most).
const MAX_FILTER_LEN: usize = 1024;

pub(super) fn redirect_to_dashboard() -> Response {
    let mut resp = http::Response::new(full(""));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    resp
}

/// The CSP allows exactly the page's own inline script and style, by hash.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash_of = |open: &str, close: &str| {
            let start = DASHBOARD.find(open).map(|i| i + open.len());
            let body = start.and_then(|s| DASHBOARD.get(s..).and_then(|rest| rest.find(close).and_then(|e| rest.get(..e))));
            let digest = ring::digest::digest(&ring::digest::SHA256, body.unwrap_or("").as_bytes());
            use base64::Engine;
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash_of("<script>", "</script>"),
            hash_of("<style>", "</style>")
        )
    })
}

pub(super) fn dashboard(app: &App) -> Response {
    let page = DASHBOARD.replace(
        "__TOOLGATE_MODE__",
        if app.dev { "dev" } else { "production" },
    );
    let mut resp = http::Response::new(full(page));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

pub(super) fn metrics<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_reader(app, req.headers())?;
    let mut text = app.metrics.render(&app.gauges());
    let now = app.now();
    if app.issuer_keys().any(|(_, k)| k.is_fetched()) {
        text.push_str(ISSUER_METRICS_HELP);
        for (role, keys) in app.issuer_keys().filter(|(_, k)| k.is_fetched()) {
            keys.render_metrics(role, now, &mut text);
        }
    }
    let mut resp = http::Response::new(full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

const ISSUER_METRICS_HELP: &str = "\
# HELP toolgate_issuer_keys_state Whether a fetched issuer's keys are fresh, stale (in their grace) or unavailable (its tokens refused).
# TYPE toolgate_issuer_keys_state gauge
# HELP toolgate_issuer_key_fetches_total Fetches of an issuer's keys, by result.
# TYPE toolgate_issuer_key_fetches_total counter
# HELP toolgate_issuer_unknown_kid_total Tokens naming a kid the issuer's keys lack: refreshed at once, or limited (one refresh per 30 s).
# TYPE toolgate_issuer_unknown_kid_total counter
";

/// `GET /v1/issuers`: each trusted issuer and transmitter, where its keys come from, their
/// kids, the last fetch and its result.
pub(super) fn issuers<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_reader(app, req.headers())?;
    let now = app.now();
    let list: Vec<Value> = app
        .issuer_keys()
        .map(|(role, keys)| keys.status(role, now))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "issuers": list })))
}

/// `GET /v1/authorization-servers[?issuer=&kid=]`: what guards and gateways need to accept
/// the access tokens of the configured authorization servers — each one's issuer and usable
/// keys (none while its keys are unavailable: its tokens are then refused). A guard that saw
/// a token naming a `kid` it lacks names the issuer and the kid: the daemon refreshes that
/// issuer's keys first (at once, at most every 30 s per issuer, as for exchange).
/// The longest `GET /v1/authorization-servers` waits for key fetches it starts.
const PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn authorization_servers<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_reader(app, req.headers())?;
    let pairs = form_pairs(req.uri().query().unwrap_or("").as_bytes())?;
    body::known_parameters(&pairs, &["issuer", "kid"])?;
    let one = |name| {
        body::single(&pairs, name).map_err(|_| {
            ApiError::invalid_request("a query parameter is repeated; give each at most once")
        })
    };
    let (issuer, kid) = (one("issuer")?, one("kid")?);
    let now = app.now();
    // The issuer a guard names (a token of it named an unknown kid) gets its keys refreshed
    // first; an issuer that is no authorization server (any more), or a kid without an
    // issuer, is ignored: these are hints, and the whole
    // list answers either way, so a guard drops what was removed. Keys not fetched yet (a
    // daemon just started) or past their grace get one attempt. The fetches run on their own:
    // this answer waits for them at most PREPARE_WAIT, so a provider that hangs never holds up
    // a guard's refresh round (and with it its revocation polling).
    let prepare = async {
        if let (Some(iss), kid) = (issuer, kid) {
            if let Some(a) = app.authorization_servers.iter().find(|a| a.issuer == iss) {
                a.keys.prepare(kid, now).await;
            }
        }
        for a in &app.authorization_servers {
            if a.keys.health(now) == crate::issuers::Health::Unavailable {
                a.keys.prepare(None, now).await;
            }
        }
    };
    let _ = tokio::time::timeout(PREPARE_WAIT, prepare).await;
    let list: Vec<Value> = app
        .authorization_servers
        .iter()
        .map(|a| {
            let keys = a
                .keys
                .keys(now)
                .map(|set| set.to_json())
                .unwrap_or_else(|| json!({"keys": []}));
            json!({"issuer": a.issuer, "state": a.keys.health(now).name(), "keys": keys})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "authorization_servers": list }),
    ))
}

/// The dashboard's numbers in one document.
pub(super) fn stats<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_observer(app, req.headers())?;
    let g = app.gauges();
    let (allowed, denied) = app.metrics.totals();
    let total = allowed + denied;
    let tools: Vec<Value> = app
        .metrics
        .tools()
        .into_iter()
        .map(|(tool_id, a, d, last)| {
            json!({"tool_id": tool_id, "calls": a + d, "allowed": a, "denied": d,
                   "last_seen": (last > 0).then(|| crate::clock::rfc3339(last / 1000))})
        })
        .collect();
    let denials: serde_json::Map<String, Value> = app
        .metrics
        .denials()
        .into_iter()
        .map(|(c, n)| (c.to_string(), json!(n)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "mode": if app.dev { "dev" } else { "production" },
            "unit_id": app.unit_id,
            "tools_registered": g.tools_registered,
            "verifications": {"total": total, "allowed": allowed, "denied": denied,
                              "pass_rate": if total == 0 { Value::Null } else { json!(allowed as f64 / total as f64) }},
            "verify_latency_ms": {"p50": app.metrics.verify_latency.quantile_ms(0.5),
                                  "p99": app.metrics.verify_latency.quantile_ms(0.99)},
            "denials_by_check": denials,
            "tools": tools,
            "revocations_active": g.revocations_active,
            "audit": {"queue_depth": g.audit_queue_depth, "rows_written": g.audit_rows_written},
            "event_stream_clients": g.sse_clients,
        }),
    ))
}

pub(super) fn events<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_observer(app, req.headers())?;
    let pairs = form_pairs(req.uri().query().unwrap_or("").as_bytes())?;
    body::known_parameters(&pairs, &["types"])?;
    let types: Vec<String> = match body::single(&pairs, "types") {
        Ok(Some(t)) => t
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(ApiError::invalid_request("types is repeated")),
    };
    if let Some(bad) = types.iter().find(|t| {
        !crate::events::TYPES
            .iter()
            .any(|k| k.starts_with(t.as_str()))
    }) {
        let _ = bad;
        return Err(ApiError::invalid_request(format!(
            "types must be a comma-separated list of {}",
            crate::events::TYPES.join(", ")
        )));
    }
    let mut resp = http::Response::new(app.events.subscribe(types).boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn row_json(r: &Stored) -> Value {
    let rec = &r.record;
    json!({
        "seq": r.seq,
        "time": crate::clock::rfc3339(rec.ts_ms / 1000),
        "kind": rec.kind,
        "subject": rec.subject,
        "target": rec.target,
        "decision": rec.decision,
        "check": rec.check,
        "reason": rec.reason,
        "request_id": rec.request_id,
        "jti": rec.jti,
        "count": rec.count,
        "hash": r.hash,
    })
}

/// `GET /v1/audit?decision=&tool_id=&subject=&check=&kind=&since=&before=&limit=` and
/// `GET /v1/tools/{tool_id}/audit`: newest first, paged with `before` (a `seq`).
pub(super) async fn audit<B>(
    app: &App,
    req: &Request<B>,
    tool_id: Option<&str>,
) -> Result<Response> {
    require_observer(app, req.headers())?;
    if tool_id.is_some_and(|id| !crate::registry::valid_id(id)) {
        return Err(ApiError::invalid_request(
            "tool_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let pairs = form_pairs(req.uri().query().unwrap_or("").as_bytes())?;
    let allowed: &[&str] = if tool_id.is_some() {
        &AUDIT_PARAMETERS[1..]
    } else {
        &AUDIT_PARAMETERS
    };
    body::known_parameters(&pairs, allowed)?;
    let get = |name: &str| -> Result<String> {
        body::single(&pairs, name)
            .map(|v| v.unwrap_or("").to_string())
            .map_err(|_| ApiError::invalid_request(format!("query parameter {name} is repeated")))
    };
    let number = |name: &str, default: i64| -> Result<i64> {
        let v = get(name)?;
        if v.is_empty() {
            return Ok(default);
        }
        v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid_request(format!("{name} must be a non-negative integer"))
        })
    };
    // A value no row can carry would answer an empty page as if nothing had happened.
    let one_of = |name: &str, values: &[&str]| -> Result<String> {
        let v = get(name)?;
        if v.is_empty() || values.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(ApiError::invalid_request(format!(
                "{name} must be one of {}",
                values.join(", ")
            )))
        }
    };
    let bounded = |name: &str| -> Result<String> {
        let v = get(name)?;
        if v.chars().count() <= MAX_FILTER_LEN {
            Ok(v)
        } else {
            Err(ApiError::invalid_request(format!("{name} is too long")))
        }
    };
    let since = get("since")?;
    let since_ms = if since.is_empty() {
        0
    } else if let Ok(secs) = since.parse::<i64>() {
        secs.saturating_mul(1000)
    } else {
        return Err(ApiError::invalid_request(
            "since must be a Unix time in seconds",
        ));
    };
    let check = get("check")?;
    if !check.is_empty() && !log::known_check(&check) {
        return Err(ApiError::invalid_request(format!(
            "check must be one of {}",
            log::check_names()
        )));
    }
    let query = Query {
        decision: one_of("decision", log::DECISIONS)?,
        target: match tool_id {
            Some(id) => id.to_string(),
            None => bounded("tool_id")?,
        },
        subject: bounded("subject")?,
        check,
        kind: one_of("kind", log::KINDS)?,
        since_ms,
        before: number("before", 0)?,
        limit: number("limit", DEFAULT_LIMIT)?.clamp(1, MAX_LIMIT),
    };
    let limit = query.limit;
    let rows = app.store.call(move |c| log::query(c, &query)).await?;
    let events: Vec<Value> = rows.iter().map(row_json).collect();
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let mut body = json!({"events": events, "count": events.len(), "next_before": next_before});
    if let (Some(id), Some(obj)) = (tool_id, body.as_object_mut()) {
        obj.insert("tool_id".into(), json!(id));
    }
    Ok(json_response(StatusCode::OK, &body))
}
