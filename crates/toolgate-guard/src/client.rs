//! A small typed client for toolgate's REST API (HTTP/1.1, plain or over TLS), used by the CLI,
//! the guard and the gateway, and by Rust agents that want to exchange and verify in two calls.
//! Its connections are pooled and kept alive: a guard polling four times a second reuses one.
//! An `https://` base is checked against [`ClientTls`] (the system's roots by default); a
//! certificate error fails the call with [`ClientError::Tls`], which names the cause.

use crate::tls::{ClientTls, Connector};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to toolgate failed.
#[derive(Debug)]
pub enum ClientError {
    /// The base URL is not `http(s)://host:port[/prefix]`.
    Url(String),
    /// TLS could not be set up (a CA file, a pin), or the server's certificate was refused:
    /// a sentence naming the cause (`the server certificate has expired`).
    Tls(String),
    /// Could not connect or the exchange failed on the wire.
    Transport(String),
    /// The daemon answered with an error status; its JSON body is kept.
    Api {
        /// The HTTP status toolgate answered.
        status: StatusCode,
        /// Its JSON body (`{"error", "error_description", ...}`).
        body: Value,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(u) => write!(f, "invalid toolgate URL: {u}"),
            Self::Tls(why) => write!(f, "TLS: {why}"),
            Self::Transport(e) => write!(f, "cannot reach toolgate: {e}"),
            Self::Api { status, body } => write!(f, "toolgate answered {status}: {body}"),
        }
    }
}
impl std::error::Error for ClientError {}

/// A client bound to one toolgate daemon. Clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    scheme: &'static str,
    authority: String,
    prefix: String,
    admin_token: Option<String>,
    pool: Pool<Connector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// An RFC 8693 token-exchange request body.
fn exchange_body(
    subject_token: &str,
    subject_token_type: &str,
    audience: &str,
    scope: Option<&str>,
) -> Value {
    let mut body = json!({
        "grant_type": crate::oauth::GRANT_TYPE,
        "subject_token": subject_token,
        "subject_token_type": subject_token_type,
        "audience": audience,
    });
    if let (Some(scope), Some(obj)) = (scope, body.as_object_mut()) {
        obj.insert("scope".into(), json!(scope));
    }
    body
}

impl Client {
    /// `base` is `http://host:port` or `https://host:port` (then the server is checked against
    /// the system's roots; see [`Client::with_tls`]).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_tls(base, &ClientTls::default())
    }

    /// A client whose `https://` connections trust `tls` (its CA certificates, its pin). An
    /// `http://` base takes only the default `tls` (CA certificates or a pin with it are an
    /// error, not a silent fall back to plain text).
    pub fn with_tls(base: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        let (scheme, rest) = if let Some(rest) = base.strip_prefix("https://") {
            ("https", rest)
        } else if let Some(rest) = base.strip_prefix("http://") {
            ("http", rest)
        } else {
            return Err(ClientError::Url(format!(
                "{base} (only http:// and https:// are supported)"
            )));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(ClientError::Url(base.to_string()));
        }
        if scheme == "http" && !tls.is_default() {
            // CA certificates or a pin say TLS was meant: plain text would be a silent downgrade.
            return Err(ClientError::Tls(format!(
                "CA certificates or a pin are given, but {base} is plain http://: use https://"
            )));
        }
        let connector = tls
            .connector(scheme == "https")
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let pool = Pool::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        Ok(Self {
            scheme,
            authority: authority.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            admin_token: None,
            pool,
        })
    }

    /// Send the admin token as a Bearer credential on every call.
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// One request; the status and the JSON body (or `null` for an empty body).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.send_with(method, path, body, &[])
            .await
            .map(|(status, _, value)| (status, value))
    }

    /// One request with extra headers; the status, the response headers and the JSON body.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, http::HeaderMap, Value), ClientError> {
        tokio::time::timeout(TIMEOUT, self.send_inner(method, path, body, headers))
            .await
            .map_err(|_| ClientError::Transport("timed out".into()))?
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, http::HeaderMap, Value), ClientError> {
        let t = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let mut builder = Request::builder()
            .method(method)
            .uri(format!(
                "{}://{}{}{path}",
                self.scheme, self.authority, self.prefix
            ))
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.admin_token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (content_type, bytes) = body.unwrap_or(("", Vec::new()));
        if !content_type.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let req = builder
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| t(&e))?;
        let resp = self.pool.request(req).await.map_err(|e| {
            if let Some(why) = crate::tls::describe(&e) {
                return ClientError::Tls(why);
            }
            // The pool's error hides its cause (a refused connection, a reset): name the root.
            let mut root: &dyn std::error::Error = &e;
            while let Some(next) = root.source() {
                root = next;
            }
            t(&root.to_string())
        })?;
        let status = resp.status();
        let response_headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| t(&e))?
            .to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}))
        };
        Ok((status, response_headers, value))
    }

    async fn json_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let (status, value) = self.send(method, path, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Api {
                status,
                body: value,
            })
        }
    }

    /// Register a tool (`POST /v1/tools`, admin): `entry` is its registration
    /// (`tool_id`, `resource_uri`, `server_id`, ...); the stored entry.
    pub async fn register_tool(&self, entry: &Value) -> Result<Value, ClientError> {
        self.json_call(Method::POST, "/v1/tools", Some(entry)).await
    }

    /// Every registered tool (`GET /v1/tools`): `{"tools": [...]}`.
    pub async fn list_tools(&self) -> Result<Value, ClientError> {
        self.json_call(Method::GET, "/v1/tools", None).await
    }

    /// Remove a tool by `tool_id` (`DELETE /v1/tools/{id}`, admin): tokens for it stop working.
    pub async fn deregister_tool(&self, tool_id: &str) -> Result<Value, ClientError> {
        self.json_call(Method::DELETE, &format!("/v1/tools/{tool_id}"), None)
            .await
    }

    /// RFC 8693 exchange; the whole token response.
    pub async fn exchange(
        &self,
        subject_token: &str,
        subject_token_type: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> Result<Value, ClientError> {
        let body = exchange_body(subject_token, subject_token_type, audience, scope);
        self.json_call(Method::POST, "/v1/exchange/token", Some(&body))
            .await
    }

    /// [`Client::exchange`] with a DPoP proof (RFC 9449 §5): `proof(nonce)` makes one for
    /// `POST` at the token endpoint. A `use_dpop_nonce` answer is retried once with the nonce
    /// it carries. The 200 body has `token_type` `DPoP` and the token is bound to the key.
    pub async fn exchange_dpop(
        &self,
        subject_token: &str,
        subject_token_type: &str,
        audience: &str,
        scope: Option<&str>,
        proof: impl Fn(Option<&str>) -> Result<String, ClientError>,
    ) -> Result<Value, ClientError> {
        let bytes = exchange_body(subject_token, subject_token_type, audience, scope)
            .to_string()
            .into_bytes();
        let mut nonce: Option<String> = None;
        for _ in 0..2 {
            let dpop = proof(nonce.as_deref())?;
            let (status, headers, value) = self
                .send_with(
                    Method::POST,
                    "/v1/exchange/token",
                    Some(("application/json", bytes.clone())),
                    &[("dpop", &dpop)],
                )
                .await?;
            if status.is_success() {
                return Ok(value);
            }
            let fresh = headers
                .get("dpop-nonce")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match fresh {
                Some(n)
                    if value.get("error").and_then(Value::as_str) == Some("use_dpop_nonce")
                        && nonce.is_none() =>
                {
                    nonce = Some(n)
                }
                _ => {
                    return Err(ClientError::Api {
                        status,
                        body: value,
                    })
                }
            }
        }
        Err(ClientError::Transport(
            "the token endpoint kept asking for a new DPoP nonce".into(),
        ))
    }

    /// The token endpoint this toolgate names in its RFC 8414 metadata (what a DPoP proof's
    /// `htu` must be), or its URL under the base URL when the metadata does not say.
    pub async fn token_endpoint(&self) -> Result<String, ClientError> {
        let meta = self
            .json_call(Method::GET, "/.well-known/oauth-authorization-server", None)
            .await?;
        Ok(meta
            .get("token_endpoint")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{}://{}{}/v1/exchange/token",
                    self.scheme, self.authority, self.prefix
                )
            }))
    }

    /// Verify a token for a tool: `Ok` with the 200 body, `Err(Api)` with the denial.
    pub async fn verify(&self, token: &str, tool_id: &str) -> Result<Value, ClientError> {
        let body = json!({"token": token, "tool_id": tool_id});
        self.json_call(Method::POST, "/v1/mcp/verify", Some(&body))
            .await
    }

    /// An operator revocation (`POST /v1/signals/revocations`): `kind` is subject, token or tool.
    pub async fn revoke(&self, revocation: &Value) -> Result<Value, ClientError> {
        self.json_call(Method::POST, "/v1/signals/revocations", Some(revocation))
            .await
    }

    /// One page of active revocations.
    pub async fn revocations(&self, after: i64, limit: i64) -> Result<Value, ClientError> {
        let path = format!("/v1/signals/revocations?after={after}&limit={limit}");
        self.json_call(Method::GET, &path, None).await
    }

    /// The trusted issuers and transmitters and the state of their keys (`GET /v1/issuers`).
    pub async fn issuers(&self) -> Result<Value, ClientError> {
        self.json_call(Method::GET, "/v1/issuers", None).await
    }

    /// Lift an operator revocation by its id (`DELETE /v1/signals/revocations/{id}`).
    pub async fn lift_revocation(&self, id: i64) -> Result<Value, ClientError> {
        self.json_call(
            Method::DELETE,
            &format!("/v1/signals/revocations/{id}"),
            None,
        )
        .await
    }

    /// toolgate's health (`GET /v1/sys/health`).
    pub async fn health(&self) -> Result<Value, ClientError> {
        self.json_call(Method::GET, "/v1/sys/health", None).await
    }
}
