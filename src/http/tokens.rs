//! `POST /v1/exchange/token` and `POST /v1/mcp/verify`.

use super::body::{self, media_type, opt_string};
use super::clip;
use super::error::ApiError;
use super::{json_response, Response, Result};
use crate::app::App;
use crate::exchange::{self, ExchangeRequest, Exchanger, ExecutionScope};
use crate::mtls::ClientCertificate;
use crate::registry::valid_id;
use crate::store::audit::Record;
use crate::verify::{DecisionRequest, Target};
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use std::time::Instant;

pub(crate) async fn exchange(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    let started = Instant::now();
    let peer = super::peer_of(&req);
    let (parts, incoming) = req.into_parts();
    // Put there by the listener after the TLS handshake verified it; never from request data.
    let client_cert = parts.extensions.get::<ClientCertificate>().cloned();
    let media = media_type(&parts.headers);
    let bytes = body::read(&parts.headers, incoming).await?;
    // Read once the body is in: the exchange is judged at the time it is complete.
    let now = app.now();
    let dpop = token_endpoint_proof(app, &parts.headers, now);
    let parsed = match media.as_str() {
        "application/x-www-form-urlencoded" => from_form(&bytes),
        "application/json" => from_json(&bytes),
        _ => Err(ApiError::unsupported_media_type(
            "Content-Type must be application/json or application/x-www-form-urlencoded",
        )),
    }
    .map(|request| ExchangeRequest {
        client_cert,
        ..request
    });
    // Every exchange, even one refused while parsing, is counted and audited, except one
    // naming a target that is no audience at all: that is a 400 and no row.
    let (target, vouched) = match &parsed {
        Ok(r) => audit_target(app, r.audience.as_deref().or(r.resource.as_deref()))
            .inspect_err(|_| app.metrics.exchange("invalid_target", 0))?,
        Err(_) => (String::new(), true),
    };
    let parsed = parsed.and_then(|request| {
        Ok(ExchangeRequest {
            dpop: dpop?,
            ..request
        })
    });
    // A subject token of an issuer whose keys are fetched: those keys are made ready first
    // (a refresh for an unknown kid, rate-limited), so the exchange itself reads a snapshot.
    if let Some(token) = parsed
        .as_ref()
        .ok()
        .and_then(|r| r.subject_token.as_deref())
    {
        let keys = app.trusted_issuers.iter().map(|t| &t.keys);
        if let Some((keys, kid)) = crate::issuers::to_prepare(keys, token) {
            keys.prepare(kid.as_deref(), now).await;
        }
    }
    let trusted_client_cas = app.trusted_client_cas();
    // The key that signs at `now`: the clock, not a restart, moves signing to a new key.
    let signer = app.keys.signer(now);
    let outcome = parsed.and_then(|request| {
        let signing_key = signer.as_deref().ok_or_else(|| {
            crate::log_error!("exchange: no signing key is active");
            ApiError::unavailable("no signing key is active; the token was not issued")
        })?;
        let exchanger = Exchanger {
            issuer: &app.issuer,
            dev: app.dev,
            trust_domain: &app.trust_domain,
            token_ttl: app.token_ttl,
            leeway: app.leeway,
            trusted_issuers: &app.trusted_issuers,
            trusted_client_cas: &trusted_client_cas,
            verifier: &app.verifier,
            signing_key,
            dpop: &app.token_dpop,
        };
        exchange::exchange(&exchanger, &request, now).map_err(ApiError::from)
    });
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (row, result) = match &outcome {
        Ok(issued) => (
            Record {
                subject: issued.subject.clone(),
                target: issued.audience.clone(),
                decision: "issued".into(),
                jti: issued.jti.clone(),
                ..Default::default()
            },
            "issued",
        ),
        Err(api) => {
            let code = match api.status.as_u16() {
                503 => "unavailable",
                500 => "error",
                _ => api.code,
            };
            (
                Record {
                    target,
                    decision: "denied".into(),
                    check: code.into(),
                    reason: api.description.to_string(),
                    ..Default::default()
                },
                code,
            )
        }
    };
    let row = Record {
        ts_ms: app.now_ms(),
        kind: "exchange".into(),
        request_id: rid.into(),
        ..row
    };
    let audited = if outcome.is_ok() {
        app.record("exchange", row)
    } else {
        app.record_refusal("exchange", row, peer, vouched)
    };
    audited.map_err(|_| {
        ApiError::unavailable("the audit log is unavailable; the exchange was refused")
    })?;
    app.metrics.exchange(result, micros);
    let issued = outcome?;
    let mut body = json!({
        "access_token": issued.access_token,
        "issued_token_type": exchange::TYPE_JWT,
        // RFC 9449 §5: a DPoP-bound token is of type DPoP, presented as `Authorization: DPoP`.
        "token_type": if issued.dpop_bound { "DPoP" } else { "Bearer" },
        "expires_in": issued.expires_in,
    });
    if let (Some(scope), Some(obj)) = (&issued.scope, body.as_object_mut()) {
        obj.insert("scope".into(), json!(scope));
    }
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    // With nonces on, every DPoP answer carries the one to use next (RFC 9449 §8.2).
    if let Some(nonce) = issued
        .dpop_bound
        .then(|| app.token_dpop.nonce(now))
        .flatten()
        .and_then(|n| HeaderValue::from_str(&n).ok())
    {
        resp.headers_mut().insert("dpop-nonce", nonce);
    }
    Ok(resp)
}

/// The token request's DPoP proof (RFC 9449 §5): none, or exactly one `DPoP` header whose
/// proof checks out for `POST` at this endpoint's URL, built from the issuer (never from the
/// `Host` header), with this daemon's nonce when `--dpop-nonce` is on. Spent by the exchange
/// once everything else passed.
fn token_endpoint_proof(
    app: &App,
    headers: &http::HeaderMap,
    now: i64,
) -> Result<Option<toolgate_core::dpop::Proof>> {
    let mut values = headers
        .get_all("dpop")
        .iter()
        .map(HeaderValue::as_bytes)
        .peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let refuse = |e| ApiError::dpop(e, app.token_dpop.nonce(now));
    let proof = toolgate_core::dpop::one_header(values).map_err(refuse)?;
    let url = app.token_endpoint();
    let expected = toolgate_core::dpop::Expected {
        method: "POST",
        url: &url,
        access_token: None,
    };
    app.token_dpop
        .check(proof, &expected, now)
        .map(Some)
        .map_err(refuse)
}

/// The target an exchange's audit row names, and whether toolgate vouches for it (toolgate
/// itself or a registered resource; any audience in dev mode). An audience that could never be
/// one (not an absolute URI, nor a tool's own id) is refused here, before anything is audited.
fn audit_target(app: &App, raw: Option<&str>) -> Result<(String, bool)> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok((String::new(), true));
    };
    let registered = |r: &str| {
        app.registry
            .read()
            .map(|reg| reg.has_resource(r))
            .unwrap_or(false)
    };
    if registered(raw) {
        return Ok((clip(raw), true));
    }
    let canonical = crate::resource::canonicalize(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "audience must be an absolute URI",
        )
    })?;
    let vouched = app.dev || canonical == app.issuer || registered(&canonical);
    Ok((clip(&canonical), vouched))
}

fn one_target() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_target",
        "exactly one audience is required",
    )
}

/// The request from its fields, whichever encoding they came in.
fn request_from(
    mut field: impl FnMut(&'static str) -> Result<Option<String>>,
    execution_scope: Option<ExecutionScope>,
) -> Result<ExchangeRequest> {
    Ok(ExchangeRequest {
        execution_scope,
        grant_type: field("grant_type")?,
        subject_token: field("subject_token")?,
        subject_token_type: field("subject_token_type")?,
        audience: field("audience")?,
        resource: field("resource")?,
        scope: field("scope")?,
        actor_token: field("actor_token")?,
        actor_token_type: field("actor_token_type")?,
        client_cert: None,
        dpop: None,
    })
}

pub(crate) fn from_json(bytes: &[u8]) -> Result<ExchangeRequest> {
    let obj = body::json_object(bytes)?;
    if ["audience", "resource"]
        .iter()
        .any(|t| matches!(obj.get(*t), Some(Value::Array(_))))
    {
        return Err(one_target());
    }
    let scope = match obj.get("execution_scope") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(ExecutionScope::from_json(o)?),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "execution_scope must be a JSON object",
            ))
        }
    };
    request_from(|name| opt_string(&obj, name), scope)
}

pub(crate) fn from_form(bytes: &[u8]) -> Result<ExchangeRequest> {
    let pairs = body::form_pairs(bytes)?;
    // In a form, the scope is its JSON object as text.
    let scope = match body::single(&pairs, "execution_scope")
        .map_err(|_| ApiError::invalid_request("execution_scope is repeated"))?
    {
        None => None,
        Some(text) => {
            let obj = crate::jose::json::parse_object(text.as_bytes())
                .map_err(|_| ApiError::invalid_request("execution_scope must be a JSON object"))?;
            Some(ExecutionScope::from_json(&obj)?)
        }
    };
    request_from(
        |name| {
            body::single(&pairs, name)
                .map(|v| v.map(str::to_string))
                .map_err(|_| {
                    if matches!(name, "audience" | "resource") {
                        one_target()
                    } else {
                        ApiError::invalid_request(format!("{name} is repeated"))
                    }
                })
        },
        scope,
    )
}

fn required(obj: &Map<String, Value>, name: &'static str) -> Result<String> {
    opt_string(obj, name)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_request(format!("{name} is required")))
}

pub(crate) async fn verify(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    let started = Instant::now();
    let peer = super::peer_of(&req);
    let (parts, incoming) = req.into_parts();
    let bytes = body::read_json(&parts.headers, incoming).await?;
    let obj = body::json_object(&bytes)?;
    let token = required(&obj, "token")?;
    let tool_id = opt_string(&obj, "tool_id")?.filter(|s| !s.is_empty());
    // No tool can have an invalid id: refused before it reaches the audit log.
    if tool_id.as_deref().is_some_and(|id| !valid_id(id)) {
        return Err(ApiError::invalid_request(
            "tool_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let resource = match opt_string(&obj, "resource")?.filter(|s| !s.is_empty()) {
        Some(r) => Some(
            crate::resource::canonicalize(&r)
                .map_err(|e| ApiError::invalid_request(format!("resource: {e}")))?,
        ),
        None => None,
    };
    let server_id = opt_string(&obj, "server_id")?.filter(|s| !s.is_empty());
    let request_body_hash = opt_string(&obj, "request_body_hash")?;
    // The DPoP proof the tool server received with the token (its `DPoP` header), with the
    // method and URL of that request (`htm`, `htu`): the pipeline's check 11.
    let dpop_proof = opt_string(&obj, "dpop_proof")?.filter(|s| !s.is_empty());
    let htm = opt_string(&obj, "htm")?;
    let htu = opt_string(&obj, "htu")?;
    let client_cert = reported_client_cert(opt_string(&obj, "client_cert")?.as_deref())?;
    let target = match (&tool_id, &resource) {
        (Some(t), None) if server_id.is_none() => Target::Tool(t),
        (None, Some(r)) => Target::Server {
            resource: r,
            server_id: server_id.as_deref(),
        },
        (None, None) => return Err(ApiError::invalid_request("tool_id is required")),
        _ => {
            return Err(ApiError::invalid_request(
                "give either tool_id, or resource (with server_id optional)",
            ))
        }
    };
    let label = tool_id.as_deref().or(resource.as_deref()).unwrap_or("");
    let request = DecisionRequest {
        token: &token,
        target,
        method: htm.as_deref(),
        url: htu.as_deref(),
        body_hash: request_body_hash.as_deref(),
        client_cert: client_cert.as_ref(),
        dpop_proof: dpop_proof.as_deref(),
    };
    let verdict = app.verifier.decide(&request);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let registered = tool_id.as_ref().is_some_and(|id| {
        app.registry
            .read()
            .map(|r| r.get(id).is_some())
            .unwrap_or(false)
    });
    let known_resource = resource.as_ref().is_some_and(|r| {
        app.registry
            .read()
            .map(|reg| reg.has_resource(r))
            .unwrap_or(false)
    });
    let denial = verdict.result.as_ref().err().copied();
    let claims = verdict.claims.as_deref();
    let row = Record {
        ts_ms: app.now_ms(),
        kind: "verify".into(),
        subject: claims.map(|c| clip(&c.sub)).unwrap_or_default(),
        target: clip(label),
        decision: if denial.is_some() { "deny" } else { "allow" }.into(),
        check: denial.map(|d| d.check.name().into()).unwrap_or_default(),
        reason: denial.map(|d| d.reason.to_string()).unwrap_or_default(),
        request_id: rid.into(),
        jti: claims.map(|c| clip(&c.jti)).unwrap_or_default(),
        count: 1,
    };
    // An allow that cannot be audited is not an allow.
    let audited = if denial.is_some() {
        app.record_refusal("verify.deny", row, peer, registered || known_resource)
    } else {
        app.record("verify.allow", row)
    };
    audited
        .map_err(|_| ApiError::unavailable("the audit log is unavailable; the call is refused"))?;
    app.metrics.verify(
        label,
        registered,
        denial.map(|d| d.check),
        micros,
        app.now_ms(),
    );
    match verdict.result {
        Ok(allowed) => Ok(json_response(
            StatusCode::OK,
            &json!({"verified": true, "claims": allowed.to_json()}),
        )),
        Err(denial) => Err(denial.into()),
    }
}

/// Largest `client_cert` a tool server may report, in bytes of DER (a certificate with a long
/// chain of extensions stays far below it).
/// Longest `client_cert`: the base64 of 16 KiB of DER (a chain's leaf is far smaller).
const MAX_CLIENT_CERT_B64: usize = 16 * 1024 / 3 * 4 + 4;

/// The `client_cert` of a verify request: the DER certificate the tool server's TLS handshake
/// verified, as standard base64 (padding optional, no line breaks). Empty means absent.
fn reported_client_cert(b64: Option<&str>) -> Result<Option<ClientCertificate>> {
    use base64::Engine;
    let Some(text) = b64.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::invalid_request(
            "client_cert must be the standard base64 of one DER certificate (at most 21848 characters)",
        )
    };
    if text.len() > MAX_CLIENT_CERT_B64 {
        return Err(invalid());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .map_err(|_| invalid())?;
    ClientCertificate::new(vec![der])
        .map(Some)
        .ok_or_else(invalid)
}

/// Most decisions one gateway report may carry.
const MAX_REPORTED: usize = 1000;

/// `POST /v1/mcp/decisions` (admin or reporter): decisions a gateway or guard made locally, audited and
/// counted exactly like verify calls. `{"source", "decisions":[{tool_id, subject, jti,
/// decision: "allow"|"deny", check, reason, micros}]}`.
pub(crate) async fn decisions(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    super::require_reporter(app, req.headers())?;
    let (parts, incoming) = req.into_parts();
    let bytes = body::read_json(&parts.headers, incoming).await?;
    let obj = body::json_object(&bytes)?;
    let source = opt_string(&obj, "source")?.unwrap_or_else(|| "gateway".into());
    let list = match obj.get("decisions") {
        Some(Value::Array(a)) if a.len() <= MAX_REPORTED => a,
        _ => {
            return Err(ApiError::invalid_request(
                "decisions must be a list of at most 1000 decisions",
            ))
        }
    };
    let mut rows = Vec::with_capacity(list.len());
    // A decision naming no possible target is skipped, not the whole report: one bad entry
    // must not cost a gateway every other decision in its batch.
    let mut skipped = 0usize;
    for d in list {
        let d = d
            .as_object()
            .ok_or_else(|| ApiError::invalid_request("each decision must be an object"))?;
        let field = |k: &'static str| opt_string(d, k).map(|v| clip(&v.unwrap_or_default()));
        let tool_id = field("tool_id")?;
        let decision = field("decision")?;
        let check = field("check")?;
        let denial = match decision.as_str() {
            "allow" => None,
            "deny" => Some(
                crate::verify::Check::ALL
                    .iter()
                    .copied()
                    .find(|c| c.name() == check),
            ),
            _ => return Err(ApiError::invalid_request("decision must be allow or deny")),
        };
        let micros = match d.get("micros") {
            None | Some(Value::Null) => 0,
            Some(v) => body::whole_number(v)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid_request("micros must be a non-negative integer")
                })?,
        };
        let (subject, jti, reason) = (field("subject")?, field("jti")?, field("reason")?);
        // What the gateway itself says is judged above (a malformed report is refused whole);
        // the tool name came from its client, and is skipped alone.
        if !reportable_target(&tool_id) {
            skipped += 1;
            continue;
        }
        rows.push((
            tool_id, subject, jti, decision, check, reason, denial, micros,
        ));
    }
    app.audit_ready()
        .map_err(|_| ApiError::unavailable("the audit log is unavailable; report again"))?;
    let now_ms = app.now_ms();
    let recorded = rows.len();
    for (tool_id, subject, jti, decision, check, reason, denial, micros) in rows {
        let registered = app
            .registry
            .read()
            .map(|r| r.get(&tool_id).is_some())
            .unwrap_or(false);
        // An unknown check name on a denial still counts as a denial (under `malformed`).
        let check_kind = denial.map(|c| c.unwrap_or(crate::verify::Check::Malformed));
        app.metrics
            .verify(&tool_id, registered, check_kind, micros, now_ms);
        let event = if denial.is_some() {
            "verify.deny"
        } else {
            "verify.allow"
        };
        // The row names a check toolgate knows (what the audit filter accepts); a name the
        // reporter made up stays in the reason.
        let (check, reason) = match check_kind {
            None => (String::new(), reason),
            Some(c) if c.name() == check => (check, reason),
            Some(c) if check.is_empty() => (c.name().to_string(), reason),
            Some(c) => (
                c.name().to_string(),
                clip(&format!("reported check {check:?}; {reason}")),
            ),
        };
        let row = Record {
            ts_ms: now_ms,
            kind: "gateway".into(),
            subject,
            target: tool_id,
            decision: decision.into(),
            check: check.into(),
            reason: if reason.is_empty() {
                clip(&source)
            } else {
                format!("{}: {reason}", clip(&source))
            },
            request_id: rid.into(),
            jti,
            count: 1,
        };
        app.record(event, row)
            .map_err(|_| ApiError::unavailable("the audit log is unavailable; report again"))?;
    }
    if skipped > 0 {
        crate::log_warn!("decision report {rid}: {skipped} decisions name no valid tool_id or resource and were skipped");
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "recorded", "recorded": recorded, "skipped": skipped}),
    ))
}

/// A reported decision's target: a tool id, or (a server-level decision) a canonical resource.
fn reportable_target(target: &str) -> bool {
    valid_id(target) || crate::resource::canonicalize(target).is_ok_and(|c| c == target)
}
