//! Every error the API returns, and the one place they become HTTP responses.

use super::{json_response, Response};
use crate::exchange::ExchangeError;
use crate::store::StoreError;
use crate::verify::Denial;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;
use std::borrow::Cow;

/// An API error: status, RFC 6749-style code, one sentence, and for verify the check name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: Cow<'static, str>,
    pub check: Option<&'static str>,
    pub allow: Option<&'static str>,
    /// Also carry RFC 8935's `err` / `description` members (SET push responses).
    pub rfc8935: bool,
    /// A fresh DPoP nonce for the `DPoP-Nonce` header (RFC 9449 §8), with `use_dpop_nonce`.
    pub dpop_nonce: Option<String>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            check: None,
            allow: None,
            rfc8935: false,
            dpop_nonce: None,
        }
    }

    /// A refused DPoP proof at the token endpoint (RFC 9449 §5): 400 `invalid_dpop_proof`,
    /// or `use_dpop_nonce` with the nonce to use; 503 when proofs cannot be recorded.
    pub fn dpop(e: toolgate_core::dpop::ProofError, nonce: Option<String>) -> Self {
        use toolgate_core::dpop::ProofError;
        let status = match e {
            ProofError::Full => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            dpop_nonce: nonce.filter(|_| e == ProofError::UseNonce),
            ..Self::new(status, e.code(), e.description())
        }
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this endpoint",
            )
        }
    }

    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "request body too large",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this call needs a Bearer credential (the admin token, or a reporter or read-only token where its role allows)",
        )
    }

    /// A request whose `Content-Type` the endpoint does not take (415).
    pub fn unsupported_media_type(description: &'static str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            description,
        )
    }

    /// A valid credential whose role does not cover this call (RFC 6750 §3.1).
    pub fn insufficient_scope() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "this credential's role does not allow this call",
        )
    }

    /// A request refused at the door: a `Host` that does not name this daemon, or a browser
    /// `Origin` that may not change its state.
    pub fn forbidden(description: &'static str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", description)
    }

    pub fn unavailable(description: &'static str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        )
    }

    pub fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "error_description": self.description});
        if let Some(obj) = body.as_object_mut() {
            if let Some(check) = self.check {
                obj.insert("check".into(), json!(check));
            }
            if self.rfc8935 {
                obj.insert("err".into(), json!(self.code));
                obj.insert("description".into(), json!(self.description));
            }
        }
        let mut resp = json_response(self.status, &body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(nonce) = self.dpop_nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
            resp.headers_mut().insert("dpop-nonce", nonce);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"toolgate\""),
            );
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // What is left of an over-limit body is not read: the connection ends here.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                "the resource already exists",
            ),
            other => {
                crate::log_error!("store: {other}");
                Self::unavailable("storage is unavailable; nothing was changed")
            }
        }
    }
}

impl From<ExchangeError> for ApiError {
    fn from(e: ExchangeError) -> Self {
        use ExchangeError::*;
        match e {
            InvalidRequest(d) => Self::invalid_request(d),
            InvalidTarget(d) => Self::new(StatusCode::BAD_REQUEST, "invalid_target", d),
            InvalidGrant(d) => Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d),
            UnsupportedGrantType => Self::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            InvalidClient(d) => Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d),
            AccessDenied(d) => Self::new(StatusCode::FORBIDDEN, "access_denied", d),
            Unavailable(d) => Self::unavailable(d),
            Dpop(e) => Self::dpop(e, None),
            Internal => {
                crate::log_error!("exchange: signing failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the token could not be issued",
                )
            }
        }
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        let status = if d.unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::FORBIDDEN
        };
        Self {
            check: Some(d.check.name()),
            ..Self::new(status, "verification_failed", d.reason)
        }
    }
}
