//! `GET /v1/keys` and `POST /v1/keys/rotate`: toolgate's own signing keys.

use super::body;
use super::error::ApiError;
use super::{json_response, require_admin, require_observer, Response, Result};
use crate::app::{App, RotationError};
use crate::jose::Algorithm;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

/// `GET /v1/keys` (admin or read-only): every key toolgate has had, oldest first, with its
/// state now and its dates; never a private half.
pub(super) fn list<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_observer(app, req.headers())?;
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::invalid_request(
            "this endpoint takes no parameters",
        ));
    }
    let keys: Vec<Value> = app
        .keys
        .keys(app.now())
        .iter()
        .map(|(k, state)| k.to_json(*state))
        .collect();
    let policy = app.keys.policy();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "keys": keys,
            "count": keys.len(),
            "publish_ahead_seconds": policy.publish_ahead,
            "published_after_signing_seconds": policy.published_after_signing(),
            "rotation_days": app.key_rotation_days,
            "private_keys_in": app.keys.vault(),
        }),
    ))
}

/// `POST /v1/keys/rotate` (admin): a new key, published at once, signing after the
/// publish-ahead period. Body: none, or `{"alg": "ES256" | "EdDSA"}` (default ES256).
pub(super) async fn rotate(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    require_admin(app, req.headers())?;
    let (parts, incoming) = req.into_parts();
    let media = body::media_type(&parts.headers);
    let bytes = body::read(&parts.headers, incoming).await?;
    // No body (whatever its declared type) takes the defaults; a body must be JSON.
    let alg = match (media.as_str(), bytes.is_empty()) {
        (_, true) => Algorithm::ES256,
        ("application/json", false) => alg_of(&bytes)?,
        _ => {
            return Err(ApiError::unsupported_media_type(
                "Content-Type must be application/json (or send no body)",
            ))
        }
    };
    let who = super::caller(app, &parts.headers);
    let rotated = app
        .rotate_signing_key(alg, who, rid)
        .await
        .map_err(|e| match e {
            RotationError::Pending { kid, signs_from } => ApiError::new(
                StatusCode::CONFLICT,
                "rotation_pending",
                format!(
                    "key {kid} is already waiting to sign (from {}); rotate again once it signs",
                    crate::clock::rfc3339(signs_from)
                ),
            ),
            RotationError::Unavailable(why) => ApiError::unavailable(why),
            RotationError::Unaudited => super::signals::durable_audit_failed(),
        })?;
    // Each key as it is now (the clock may have moved since the rotation).
    let keys = app.keys.keys(app.now());
    let now_json = |kid: &str| {
        keys.iter()
            .find(|(k, _)| k.kid == kid)
            .map(|(k, state)| k.to_json(*state))
    };
    let mut body = json!({
        "status": "rotated",
        "key": now_json(&rotated.key.kid),
    });
    if let (Some(previous), Some(obj)) = (&rotated.previous, body.as_object_mut()) {
        obj.insert("previous".into(), json!(now_json(&previous.kid)));
    }
    Ok(json_response(StatusCode::CREATED, &body))
}

/// The `alg` of a rotation body: `{}` or `{"alg": "ES256" | "EdDSA"}`, nothing else.
fn alg_of(bytes: &[u8]) -> Result<Algorithm> {
    let obj = body::json_object(bytes)?;
    if obj.keys().any(|k| k != "alg") {
        return Err(ApiError::invalid_request(
            "the body takes one field, alg (ES256 or EdDSA)",
        ));
    }
    match obj.get("alg") {
        None => Ok(Algorithm::ES256),
        Some(Value::String(alg)) if alg == "ES256" => Ok(Algorithm::ES256),
        Some(Value::String(alg)) if alg == "EdDSA" => Ok(Algorithm::EdDSA),
        Some(_) => Err(ApiError::invalid_request("alg must be ES256 or EdDSA")),
    }
}
