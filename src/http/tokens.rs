//! `POST /v1/exchange/token` and `POST /v1/mcp/verify`.

use super::body::{self, opt_string};
use super::error::ApiError;
use super::{json_response, Response, Result};
use crate::app::App;
use crate::exchange::{self, ExchangeRequest};
use crate::verify::VerifyRequest;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

const FIELDS: [&str; 8] = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "audience",
    "resource",
    "scope",
    "actor_token",
    "actor_token_type",
];

pub(super) fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

pub async fn exchange(app: &App, req: Request<Incoming>) -> Result<Response> {
    let (parts, incoming) = req.into_parts();
    let media = media_type(&parts.headers);
    let bytes = body::read(&parts.headers, incoming).await?;
    let request = match media.as_str() {
        // curl -d sends JSON labelled as a form; a form body never starts with '{'.
        "application/x-www-form-urlencoded" if !bytes.trim_ascii_start().starts_with(b"{") => {
            from_form(&bytes)?
        }
        "application/x-www-form-urlencoded" => from_json(&bytes)?,
        "application/json" | "" => from_json(&bytes)?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "Content-Type must be application/json or application/x-www-form-urlencoded",
            ))
        }
    };
    let issued = exchange::exchange(app, &request, app.now())?;
    crate::info!(
        "exchange: issued jti {} to {} for {}",
        issued.jti,
        issued.subject,
        issued.audience
    );
    let mut body = json!({
        "access_token": issued.access_token,
        "issued_token_type": exchange::TYPE_JWT,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    });
    if let (Some(scope), Some(obj)) = (&issued.scope, body.as_object_mut()) {
        obj.insert("scope".into(), json!(scope));
    }
    let mut resp = json_response(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

fn from_json(bytes: &[u8]) -> Result<ExchangeRequest> {
    let obj = body::json_object(bytes)?;
    for target in ["audience", "resource"] {
        if matches!(obj.get(target), Some(Value::Array(_))) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "exactly one audience is required",
            ));
        }
    }
    let mut fields = FIELDS.iter().map(|name| opt_string(&obj, name));
    let mut next = || fields.next().unwrap_or(Ok(None));
    Ok(ExchangeRequest {
        grant_type: next()?,
        subject_token: next()?,
        subject_token_type: next()?,
        audience: next()?,
        resource: next()?,
        scope: next()?,
        actor_token: next()?,
        actor_token_type: next()?,
    })
}

fn from_form(bytes: &[u8]) -> Result<ExchangeRequest> {
    let pairs = body::form_pairs(bytes)?;
    let mut fields = FIELDS.iter().map(|name| {
        body::single(&pairs, name)
            .map(|v| v.map(str::to_string))
            .map_err(|_| {
                if matches!(*name, "audience" | "resource") {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_target",
                        "exactly one audience is required",
                    )
                } else {
                    ApiError::invalid_request(format!("{name} is repeated"))
                }
            })
    });
    let mut next = || fields.next().unwrap_or(Ok(None));
    Ok(ExchangeRequest {
        grant_type: next()?,
        subject_token: next()?,
        subject_token_type: next()?,
        audience: next()?,
        resource: next()?,
        scope: next()?,
        actor_token: next()?,
        actor_token_type: next()?,
    })
}

fn required(obj: &Map<String, Value>, name: &'static str) -> Result<String> {
    opt_string(obj, name)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_request(format!("{name} is required")))
}

pub async fn verify(app: &App, req: Request<Incoming>) -> Result<Response> {
    let (parts, incoming) = req.into_parts();
    let bytes = body::read(&parts.headers, incoming).await?;
    let obj = body::json_object(&bytes)?;
    let token = required(&obj, "token")?;
    let tool_id = required(&obj, "tool_id")?;
    let request_body_hash = opt_string(&obj, "request_body_hash")?;
    let dpop_header = parts
        .headers
        .get("dpop")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::invalid_request("DPoP header is not visible ASCII"))?;
    let dpop_proof = match dpop_header {
        Some(h) => Some(h),
        None => opt_string(&obj, "dpop_proof")?,
    };
    opt_string(&obj, "htm")?;
    opt_string(&obj, "htu")?;
    let request = VerifyRequest {
        token: &token,
        tool_id: &tool_id,
        request_body_hash: request_body_hash.as_deref(),
        dpop_proof: dpop_proof.as_deref(),
    };
    match app.verifier.verify(&request, app.now()) {
        Ok(allowed) => Ok(json_response(
            StatusCode::OK,
            &json!({"verified": true, "claims": allowed.to_json()}),
        )),
        Err(denial) => Err(denial.into()),
    }
}
