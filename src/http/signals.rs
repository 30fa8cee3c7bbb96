//! `/v1/signals/*` (SET push and the operator's revocation list) and `/v1/federation/*`.

use super::body::{self, form_pairs, opt_string};
use super::clip;
use super::error::ApiError;
use super::{json_response, require_admin, require_reader, Response, Result};
use crate::app::App;
use crate::registry::valid_id;
use crate::revocation::{Format, Target};
use crate::revocations::{row_json, unstored_json};
use crate::signals::{self, Policy, SignalError};
use crate::store::audit::Record;
use crate::store::revocations::{self as rows, NewRevocation};
use crate::store::revocations::{Action, Applied, ADMIN_SOURCE};
use http::{header, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

/// Oldest `iat` a pushed SET may carry, and how long its `jti` is remembered.
pub const MAX_SET_AGE: i64 = 3600;
const DEFAULT_PAGE: i64 = 1000;
const MAX_PAGE: i64 = 10_000;

fn policy(app: &App, now: i64) -> Policy<'_> {
    Policy {
        audience: &app.issuer,
        transmitters: &app.transmitters,
        now,
        leeway: app.leeway,
        max_age: MAX_SET_AGE,
        default_ttl: app.revocation_ttl,
    }
}

impl From<SignalError> for ApiError {
    fn from(e: SignalError) -> Self {
        ApiError {
            rfc8935: true,
            ..ApiError::new(StatusCode::BAD_REQUEST, e.code, e.description)
        }
    }
}

/// `POST /v1/signals/events`: a SET pushed per RFC 8935. 202 once applied durably (or
/// recognised as a replay); nothing is applied when any part is refused.
pub(super) async fn receive(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    let peer = super::peer_of(&req);
    let outcome = receive_inner(app, req, rid).await;
    if let Err(e) = &outcome {
        app.metrics.signal_rejected();
        let row = Record {
            ts_ms: app.now_ms(),
            kind: "signal".into(),
            decision: "refused".into(),
            check: e.code.into(),
            reason: e.description.to_string(),
            request_id: rid.into(),
            ..Default::default()
        };
        // Refused SETs need no credential to send: counted per peer.
        let _ = app.record_refusal("signal", row, peer, true);
    }
    outcome
}

async fn receive_inner(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    app.audit_ready().map_err(|_| {
        ApiError::unavailable("the audit log is unavailable; the signal was not applied")
    })?;
    let (parts, incoming) = req.into_parts();
    let media = body::media_type(&parts.headers);
    let bytes = body::read(&parts.headers, incoming).await?;
    let now = app.now();
    let policy = policy(app, now);
    let signal = match media.as_str() {
        "application/secevent+jwt" => {
            let text = std::str::from_utf8(&bytes).map_err(|_| SignalError {
                code: "invalid_request",
                description: "SET is not UTF-8",
            })?;
            let keys = app.transmitters.iter().map(|t| &t.keys);
            if let Some((keys, kid)) = crate::issuers::to_prepare(keys, text.trim()) {
                keys.prepare(kid.as_deref(), now).await;
                // Keys that cannot be fetched now, or that do not hold the SET's key yet (a
                // refresh for it was made less than 30 s ago): nothing is applied, and the
                // transmitter is told to send it again (RFC 8935 §2.4 leaves 5xx to retry).
                if keys.key(kid.as_deref(), now).is_none() {
                    return Err(ApiError {
                        rfc8935: true,
                        ..ApiError::unavailable(
                            "the transmitter's keys cannot be fetched now, or do not hold this SET's key yet; send the SET again later",
                        )
                    });
                }
            }
            signals::verify_signed(text.trim(), &policy)?
        }
        "application/json" if app.dev => {
            signals::read_unsigned(&body::json_object(&bytes)?, &policy)?
        }
        _ => {
            return Err(ApiError::unsupported_media_type(if app.dev {
                "Content-Type must be application/secevent+jwt or application/json"
            } else {
                "Content-Type must be application/secevent+jwt"
            }))
        }
    };
    let event = Some((signal.issuer.clone(), signal.jti.clone()));
    let outcome = app
        .revocations
        .apply(event, signal.actions.clone(), now)
        .await;
    let decision = match &outcome {
        Ok(Applied::Applied(_)) => "applied",
        Ok(Applied::Replay) => "replay",
        Err(_) => "unstored",
    };
    for t in &signal.event_types {
        if decision == "applied" {
            app.metrics.signal(t);
        }
    }
    let row = Record {
        ts_ms: app.now_ms(),
        kind: "signal".into(),
        subject: clip(&signal.issuer),
        target: clip(&signal.event_types.join(" ")),
        decision: decision.into(),
        request_id: rid.into(),
        jti: clip(&signal.jti),
        ..Default::default()
    };
    let found = match &outcome {
        Ok(Applied::Applied(found)) => found.as_slice(),
        _ => &[],
    };
    for (i, action) in signal.actions.iter().enumerate() {
        // A lift that found no record of this transmitter's changes nothing.
        let outcome = match found.get(i) {
            Some(false) => "not_found",
            _ => decision,
        };
        record_action(app, rid, action, outcome, &signal.jti, &signal.issuer);
    }
    // The queue is first in, first out: once the summary row is committed, so are the rows
    // before it. A signal is acknowledged only with its audit rows on disk.
    let audited = app.record_durable("signal", row).await;
    match outcome {
        Ok(Applied::Applied(_)) => {
            crate::log_info!(
                "signal {} from {} applied: {}",
                signal.jti,
                signal.issuer,
                signal.event_types.join(", ")
            );
        }
        Ok(Applied::Replay) => {
            crate::log_info!(
                "signal {} from {} is a replay: acknowledged, not applied",
                signal.jti,
                signal.issuer
            );
        }
        Err(e) => {
            crate::log_error!(
                "signal {} from {} not stored: {e}",
                signal.jti,
                signal.issuer
            );
            return Err(ApiError::unavailable(
                "the signal could not be stored; revocations in it are enforced, retry to make them durable",
            ));
        }
    }
    audited.map_err(|_| durable_audit_failed())?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "accepted"}),
    ))
}

/// The change is stored but its audit row is not: say so rather than acknowledge.
pub(super) fn durable_audit_failed() -> ApiError {
    ApiError::unavailable("the change was stored but its audit record could not be written; audited requests are refused until the audit log recovers")
}

/// One audit row (and live event) per revocation or lift, queued.
fn record_action(
    app: &App,
    rid: &str,
    action: &Action,
    outcome: &str,
    event_jti: &str,
    source: &str,
) {
    let _ = app.record(
        "revocation",
        action_row(app, rid, action, outcome, event_jti, source),
    );
}

/// The audit row of a revocation or a lift by `actor` (a transmitter's issuer or `admin`). A
/// revocation's `reason` is its source; a lift's names who lifted whose record.
fn action_row(
    app: &App,
    rid: &str,
    action: &Action,
    outcome: &str,
    event_jti: &str,
    actor: &str,
) -> Record {
    let (verb, target, reason) = match action {
        Action::Revoke(r) => ("revoke", &r.target, r.source.clone()),
        Action::Lift { target, source } => (
            "lift",
            target,
            format!("lifted by {actor}: the revocation by {source}"),
        ),
    };
    Record {
        ts_ms: app.now_ms(),
        kind: "revocation".into(),
        subject: clip(&target.value),
        target: format!("{}:{}", target.format.kind(), target.format.name()),
        decision: format!("{verb}:{outcome}").into(),
        reason: clip(&reason),
        request_id: rid.into(),
        jti: clip(event_jti),
        ..Default::default()
    }
}

fn query_i64(req: &Request<Incoming>, name: &str, default: i64) -> Result<i64> {
    let pairs = form_pairs(req.uri().query().unwrap_or("").as_bytes())?;
    match body::single(&pairs, name) {
        Ok(None) => Ok(default),
        Ok(Some(v)) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid_request(format!("{name} must be a non-negative integer"))
        }),
        Err(_) => Err(ApiError::invalid_request(format!(
            "query parameter {name} is repeated"
        ))),
    }
}

/// One page of unexpired revocations, `?after=<id>&limit=<n>`.
async fn page(app: &App, req: &Request<Incoming>) -> Result<(Vec<Value>, Option<i64>)> {
    body::known_parameters(
        &form_pairs(req.uri().query().unwrap_or("").as_bytes())?,
        &["after", "limit"],
    )?;
    let after = query_i64(req, "after", 0)?;
    let limit = query_i64(req, "limit", DEFAULT_PAGE)?.clamp(1, MAX_PAGE);
    let now = app.now();
    let mut found = app
        .store
        .call(move |c| rows::page(c, now, after, limit + 1))
        .await?;
    let more = found.len() as i64 > limit;
    found.truncate(usize::try_from(limit).unwrap_or(0));
    let next = if more {
        found.last().map(|r| r.id)
    } else {
        None
    };
    let mut entries: Vec<Value> = found.iter().map(row_json).collect();
    if next.is_none() {
        // Enforced but not yet stored (a failed write): listed last, so that the digest over
        // the export matches and guards enforce them too.
        let unstored = app.revocations.unstored(now).await?;
        entries.extend(unstored.iter().map(|r| unstored_json(r, now)));
    }
    Ok((entries, next))
}

/// `GET /v1/signals/revocations` (admin).
pub(super) async fn list(app: &App, req: Request<Incoming>) -> Result<Response> {
    super::require_observer(app, req.headers())?;
    let (entries, next) = page(app, &req).await?;
    let active = app.revocations.active(app.now())?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"revocations": entries, "count": entries.len(), "active": active, "next_after": next}),
    ))
}

/// `POST /v1/signals/revocations` (admin): an operator's revocation, the same as a signal's.
pub(super) async fn create(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    require_admin(app, req.headers())?;
    let (parts, incoming) = req.into_parts();
    let bytes = body::read_json(&parts.headers, incoming).await?;
    let obj = body::json_object(&bytes)?;
    let kind = opt_string(&obj, "kind")?.unwrap_or_default();
    let value = opt_string(&obj, "value")?.filter(|v| !v.is_empty() && v.chars().count() <= 1024);
    let value = value
        .ok_or_else(|| ApiError::invalid_request("value is required (at most 1024 characters)"))?;
    let format = match (kind.as_str(), opt_string(&obj, "format")?.as_deref()) {
        ("subject", None | Some("uri")) => Format::Uri,
        ("subject", Some("email")) => Format::Email,
        ("subject", Some("iss_sub")) => Format::IssSub,
        ("subject", Some("opaque")) => Format::Opaque,
        ("token", None | Some("jti")) => Format::Jti,
        ("tool", None | Some("tool")) => Format::Tool,
        _ => {
            return Err(ApiError::invalid_request(
                "kind must be subject (format uri, email, iss_sub or opaque), token or tool",
            ))
        }
    };
    if format == Format::Tool && !valid_id(&value) {
        return Err(ApiError::invalid_request("value must be a valid tool_id"));
    }
    let issuer = opt_string(&obj, "issuer")?.unwrap_or_default();
    if (format == Format::IssSub) == issuer.is_empty() {
        return Err(ApiError::invalid_request(
            "issuer is required for iss_sub and only for it",
        ));
    }
    let expires_at = match obj.get("expires_in") {
        None | Some(Value::Null) => app.revocation_ttl.map(|t| signals::expiry(app.now(), t)),
        Some(v) => match body::whole_number(v).filter(|n| *n > 0) {
            Some(n) => Some(signals::expiry(app.now(), n)),
            None => {
                return Err(ApiError::invalid_request(
                    "expires_in must be a positive integer",
                ))
            }
        },
    };
    let value = if format == Format::Email {
        value.to_ascii_lowercase()
    } else {
        value
    };
    let reason = opt_string(&obj, "reason")?.unwrap_or_else(|| "operator".into());
    let target = Target::new(format, &issuer, &value);
    let action = Action::Revoke(NewRevocation {
        target: target.clone(),
        reason: reason.chars().take(256).collect(),
        event_type: String::new(),
        event_jti: String::new(),
        source: ADMIN_SOURCE.into(),
        expires_at,
    });
    app.audit_ready()
        .map_err(|_| ApiError::unavailable("the audit log is unavailable; nothing was changed"))?;
    let outcome = app
        .revocations
        .apply(None, vec![action.clone()], app.now())
        .await;
    let verdict = if outcome.is_ok() {
        "applied"
    } else {
        "unstored"
    };
    let audited = app
        .record_durable(
            "revocation",
            action_row(app, rid, &action, verdict, "", ADMIN_SOURCE),
        )
        .await;
    outcome.map_err(|e| {
        crate::log_error!("operator revocation not stored: {e}");
        ApiError::unavailable("the revocation could not be stored; it is enforced until restart, retry to make it durable")
    })?;
    audited.map_err(|_| durable_audit_failed())?;
    crate::log_info!("operator revoked {} {}", format.kind(), format.name());
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"status": "revoked", "kind": format.kind(), "format": format.name(), "value": value,
                "source": ADMIN_SOURCE, "key": format!("{:032x}", target.key())}),
    ))
}

/// `DELETE /v1/signals/revocations/{id}` (admin): lift one revocation.
pub(super) async fn lift(
    app: &App,
    req: &Request<Incoming>,
    id: &str,
    rid: &str,
) -> Result<Response> {
    require_admin(app, req.headers())?;
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid_request("revocation id must be a positive integer"))?;
    app.audit_ready()
        .map_err(|_| ApiError::unavailable("the audit log is unavailable; nothing was changed"))?;
    let row = app
        .revocations
        .lift_by_id(id, app.now())
        .await
        .map_err(|e| {
            crate::log_error!("lift not stored: {e}");
            ApiError::unavailable("the lift could not be stored; nothing was changed")
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "revocation_not_found",
                "no revocation with this id",
            )
        })?;
    crate::log_info!("operator lifted revocation {id}");
    let lifted = Action::Lift {
        target: row.target.clone(),
        source: row.source.clone(),
    };
    let mut audit = action_row(app, rid, &lifted, "applied", "", ADMIN_SOURCE);
    audit.reason = clip(&format!(
        "lifted by {ADMIN_SOURCE}: revocation {id} by {}",
        row.source
    ));
    app.record_durable("revocation", audit)
        .await
        .map_err(|_| durable_audit_failed())?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "lifted", "revocation": row_json(&row)}),
    ))
}

/// `GET /v1/federation/revocation-hash`: the digest of the unexpired set.
pub(super) fn hash(app: &App, req: &Request<Incoming>) -> Result<Response> {
    require_reader(app, req.headers())?;
    let now = app.now();
    let (digest, count) = app.revocations.digest(now)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"hash": digest, "algorithm": crate::revocation::DIGEST_ALGORITHM, "count": count,
                "generation": generation(app), "generated_at": crate::clock::rfc3339(now),
                "unit_id": app.unit_id}),
    ))
}

/// This process's name and how many times its revocation set was written: it moves on every
/// change, even one whose digest cancels another's.
fn generation(app: &App) -> String {
    format!(
        "{}-{}",
        super::process_nonce(),
        app.revocations.index().generation()
    )
}

/// `GET /v1/federation/revocation-export`: the unexpired set, paged, with the digest of all.
pub(super) async fn export(app: &App, req: Request<Incoming>) -> Result<Response> {
    require_reader(app, req.headers())?;
    let now = app.now();
    let (digest, count) = app.revocations.digest(now)?;
    let (entries, next) = page(app, &req).await?;
    let mut resp = json_response(
        StatusCode::OK,
        &json!({"revocations": entries, "hash": digest, "algorithm": crate::revocation::DIGEST_ALGORITHM,
                "count": count, "generated_at": crate::clock::rfc3339(now), "next_after": next}),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
