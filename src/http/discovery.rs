//! Health, the JWKS, and RFC 8414 authorization-server metadata.

use super::{json_response, Response};
use crate::app::{App, VERSION};
use http::StatusCode;
use serde_json::json;

/// `GET /v1/sys/health`: `status` is `degraded` while an issuer's fetched keys are stale
/// (serving within their grace) or unavailable (its tokens refused); `issuers` names them.
pub(super) fn health(app: &App) -> Response {
    let now = app.now();
    let troubled: Vec<_> = app
        .issuer_keys()
        .filter_map(|(role, keys)| {
            let health = keys.health(now);
            (health != crate::issuers::Health::Fresh)
                .then(|| json!({"issuer": keys.issuer(), "role": role, "state": health.name()}))
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "initialized": true,
            "locked": false,
            "version": VERSION,
            "unit_id": app.unit_id,
            "dev_mode": app.dev,
            "status": if troubled.is_empty() { "ok" } else { "degraded" },
            "issuers": troubled,
        }),
    )
}

pub(super) fn jwks(app: &App) -> Response {
    let mut resp = json_response(StatusCode::OK, &app.keys.jwks(app.now()));
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

pub(super) fn metadata(app: &App) -> Response {
    let base = app.issuer.trim_end_matches('/');
    let token_endpoint = app.token_endpoint();
    let mut body = json!({
            "issuer": app.issuer,
            "token_endpoint": token_endpoint,
            "jwks_uri": format!("{base}/v1/identity/jwks"),
            "grant_types_supported": [crate::exchange::GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": [],
            "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
            "authorization_response_iss_parameter_supported": false,
            // RFC 8705 §3.3: tokens for a tool with sender_constraint mtls are certificate-bound,
            // which takes a listener that sees client certificates (or a proxy's header).
            "tls_client_certificate_bound_access_tokens": app.client_auth,
            // RFC 9449 §5.1: a DPoP header on the token request binds the token to its key.
            "dpop_signing_alg_values_supported": toolgate_core::dpop::SIGNING_ALGS,
    });
    // RFC 8705 §5: the endpoint that sees client certificates, only where one is asked for:
    // the same URL, since one TLS listener serves both.
    if let (true, true, Some(obj)) = (
        app.client_auth,
        base.starts_with("https://"),
        body.as_object_mut(),
    ) {
        obj.insert(
            "mtls_endpoint_aliases".into(),
            json!({ "token_endpoint": token_endpoint }),
        );
    }
    json_response(StatusCode::OK, &body)
}
