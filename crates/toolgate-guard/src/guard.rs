//! The guard: the audience check done for a resource server, offline, with the same verify
//! pipeline the daemon uses. It keeps a copy of toolgate's JWKS, of the tools registered for
//! its server, and of the revocation set, refreshes them in the background, and denies while
//! it cannot confirm its copy is current (fail closed).

use crate::client::Client;
use crate::clock::{Clock, SystemClock};
use crate::dpop::{self, Nonces, ProofError, SpentProof};
use crate::jose::{Jwk, JwkSet};
use crate::mtls::ClientCertificate;
use crate::registry::{Registry, ToolEntry};
use crate::revocation::{Key, RevocationIndex};
use crate::tls::ClientTls;
use crate::verify::{
    Allowed, AuthorizationServerKeys, Check, DecisionRequest, Denial, KeySource, ResourcePolicy,
    Target, Verifier, VerifierConfig,
};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// How a guard is set up. Its `Debug` form never shows the admin token.
#[derive(Clone)]
pub struct GuardConfig {
    /// toolgate's base URL (`http://127.0.0.1:8693`, or `https://…`).
    pub toolgate: String,
    /// What an `https://` toolgate URL is checked against: its CA certificates (default: the
    /// system's roots) and an optional public-key pin.
    pub toolgate_tls: ClientTls,
    /// A token for toolgate when its reads are not open: the reporter token is enough.
    pub admin_token: Option<String>,
    /// This server's own RFC 8707 resource URI: tokens for it are accepted for every method.
    pub resource: String,
    /// Tools registered with this `server_id` belong to this server.
    pub server_id: Option<String>,
    /// This server's public base URL (`https://tools.example.com`): request URLs are this plus
    /// the path (never the `Host` header), and its RFC 9728 metadata is served under it.
    pub public_url: String,
    /// Deny everything when the last successful sync is older than this.
    pub max_staleness: Duration,
    /// How often the revocation digest is polled (and so how late a revocation can arrive).
    pub poll_interval: Duration,
    /// How often toolgate's keys (JWKS) are fetched at the least, besides at once (at most every
    /// 2 s) when a token names an unknown `kid`. toolgate publishes a new key this long and
    /// more before it signs with it (its `--publish-ahead`), so that no token is refused.
    pub key_refresh: Duration,
    /// Clock skew allowed on token times, in seconds (clamped to 0..=60).
    pub leeway: i64,
    /// The most JSON-RPC messages one MCP batch may carry ([`Routing::Mcp`]); a longer batch
    /// is refused whole with `400 invalid_request`.
    pub max_batch: usize,
    /// Tolerance on a DPoP proof's `iat`, both sides, in seconds (clamped to 0..=300).
    pub dpop_window: i64,
    /// Require this guard's own DPoP nonces in proofs (RFC 9449 §9): a proof without the
    /// current one is answered `use_dpop_nonce` with a `DPoP-Nonce` header. Each guard draws
    /// its own secret at connect.
    pub dpop_nonce: bool,
    /// Accept an authorization server's access token whose `aud` is a list naming this
    /// resource among others (never one naming `*`); off: exactly this resource, alone.
    pub allow_multi_audience: bool,
}

impl std::fmt::Debug for GuardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardConfig")
            .field("toolgate", &self.toolgate)
            .field("toolgate_tls", &self.toolgate_tls)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("resource", &self.resource)
            .field("server_id", &self.server_id)
            .field("public_url", &self.public_url)
            .field("max_staleness", &self.max_staleness)
            .field("poll_interval", &self.poll_interval)
            .field("key_refresh", &self.key_refresh)
            .field("leeway", &self.leeway)
            .field("max_batch", &self.max_batch)
            .field("dpop_window", &self.dpop_window)
            .field("dpop_nonce", &self.dpop_nonce)
            .field("allow_multi_audience", &self.allow_multi_audience)
            .finish()
    }
}

impl GuardConfig {
    /// A configuration with the defaults: no admin token, every registered tool, staleness
    /// 5 s, polling every 250 ms, keys every 60 s, 60 s leeway, public URL = the resource's
    /// origin, DPoP proofs within 60 s and no DPoP nonces.
    pub fn new(toolgate: impl Into<String>, resource: impl Into<String>) -> Self {
        let resource = resource.into();
        let public_url = origin(&resource);
        Self {
            toolgate: toolgate.into(),
            toolgate_tls: ClientTls::default(),
            admin_token: None,
            resource,
            server_id: None,
            public_url,
            max_staleness: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
            key_refresh: DEFAULT_KEY_REFRESH,
            leeway: crate::verify::MAX_LEEWAY,
            max_batch: crate::mcp::DEFAULT_MAX_BATCH,
            dpop_window: dpop::DEFAULT_WINDOW,
            dpop_nonce: false,
            allow_multi_audience: false,
        }
    }

    /// Protect only the tools registered with this `server_id` (every registered tool when
    /// unset), and accept tokens for any of them on server-level requests.
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }

    /// The admin token the guard sends to toolgate, when toolgate's reads are not open.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Trust only the CA certificates in this PEM file for an `https://` toolgate (instead of
    /// the system's roots); read at connect.
    pub fn toolgate_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.toolgate_tls = self.toolgate_tls.ca_file(path);
        self
    }

    /// Also require toolgate's certificate to carry this public key:
    /// `sha256//<base64 of the SHA-256 of its SubjectPublicKeyInfo>` (see [`ClientTls::pin`]).
    pub fn toolgate_pin(mut self, pin: impl Into<String>) -> Self {
        self.toolgate_tls = self.toolgate_tls.pin(pin);
        self
    }

    /// This server's base URL as clients see it: execution-bound tokens are checked against
    /// it plus the request path, and the `resource_metadata` of every challenge is under it.
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = url.into();
        self
    }

    /// Deny everything once the last successful sync with toolgate is older than `d`.
    pub fn max_staleness(mut self, d: Duration) -> Self {
        self.max_staleness = d;
        self
    }

    /// How often the revocation digest is polled: a revocation takes effect within `d`.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How often toolgate's keys are fetched at the least (see [`GuardConfig::key_refresh`]).
    pub fn key_refresh(mut self, d: Duration) -> Self {
        self.key_refresh = d;
        self
    }

    /// The clock skew allowed on token times, in seconds (clamped to 0..=60).
    pub fn leeway(mut self, seconds: i64) -> Self {
        self.leeway = seconds;
        self
    }

    /// The most messages one MCP batch may carry (default 64).
    pub fn max_batch(mut self, messages: usize) -> Self {
        self.max_batch = messages;
        self
    }

    /// The tolerance on a DPoP proof's `iat`, on both sides of now, in seconds (default 60,
    /// clamped to 0..=300).
    pub fn dpop_window(mut self, seconds: i64) -> Self {
        self.dpop_window = seconds;
        self
    }

    /// Require this guard's own DPoP nonces (RFC 9449 §9; default off).
    pub fn dpop_nonce(mut self, on: bool) -> Self {
        self.dpop_nonce = on;
        self
    }

    /// Accept authorization servers' tokens whose `aud` lists this resource among others
    /// (default off: the one audience must be this resource).
    pub fn allow_multi_audience(mut self, on: bool) -> Self {
        self.allow_multi_audience = on;
        self
    }

    /// The URL of this server's RFC 9728 metadata, named in every `WWW-Authenticate`.
    pub fn resource_metadata(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource",
            self.public_url.trim_end_matches('/')
        )
    }
}

/// Sets up a [`Guard`] step by step: [`Guard::builder`], the knobs that differ from the
/// defaults of [`GuardConfig::new`], then [`GuardBuilder::connect`]. The clock is the system
/// clock unless [`GuardBuilder::clock`] gives another (a manual clock in tests).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct GuardBuilder {
    cfg: GuardConfig,
    clock: Option<Arc<dyn Clock>>,
}

impl GuardBuilder {
    /// Protect only the tools registered with this `server_id` (see [`GuardConfig::server_id`]).
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.cfg = self.cfg.server_id(id);
        self
    }

    /// This server's base URL as clients see it (see [`GuardConfig::public_url`]).
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.cfg = self.cfg.public_url(url);
        self
    }

    /// The admin token sent to toolgate when its reads are not open.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.cfg = self.cfg.admin_token(token);
        self
    }

    /// Trust only the CA certificates in this PEM file for an `https://` toolgate (see
    /// [`GuardConfig::toolgate_ca`]); without it, the system's roots.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), toolgate_guard::guard::GuardError> {
    /// let guard = toolgate_guard::Guard::builder("https://toolgate.internal:8693", "https://tools.example.com/search")
    ///     .toolgate_ca("/etc/toolgate/ca.pem")
    ///     .toolgate_pin("sha256//YhKJKSzoTt2b5FP18fvpHo7fJYqQCjAa3HWY3tvRMwE=")
    ///     .connect()
    ///     .await?;
    /// # drop(guard); Ok(()) }
    /// ```
    pub fn toolgate_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.cfg = self.cfg.toolgate_ca(path);
        self
    }

    /// Also require toolgate's certificate to carry this public key (see
    /// [`GuardConfig::toolgate_pin`]): a certificate that chains to a trusted CA but has
    /// another key is refused.
    pub fn toolgate_pin(mut self, pin: impl Into<String>) -> Self {
        self.cfg = self.cfg.toolgate_pin(pin);
        self
    }

    /// The whole TLS trust for an `https://` toolgate at once (e.g. CA certificates held in
    /// memory: [`ClientTls::ca_pem`]).
    pub fn toolgate_tls(mut self, tls: ClientTls) -> Self {
        self.cfg.toolgate_tls = tls;
        self
    }

    /// Deny everything once the last successful sync is older than `d` (default 5 s).
    pub fn max_staleness(mut self, d: Duration) -> Self {
        self.cfg = self.cfg.max_staleness(d);
        self
    }

    /// How often the revocation digest is polled (default 250 ms).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.cfg = self.cfg.poll_interval(d);
        self
    }

    /// How often toolgate's keys (JWKS) are fetched at the least (default 60 s; at once, at
    /// most every 2 s, on an unknown `kid`). Keep it below toolgate's `--publish-ahead`.
    pub fn key_refresh(mut self, d: Duration) -> Self {
        self.cfg = self.cfg.key_refresh(d);
        self
    }

    /// The clock skew allowed on token times, in seconds (default and maximum 60).
    pub fn leeway(mut self, seconds: i64) -> Self {
        self.cfg = self.cfg.leeway(seconds);
        self
    }

    /// The most messages one MCP batch may carry (default 64).
    pub fn max_batch(mut self, messages: usize) -> Self {
        self.cfg = self.cfg.max_batch(messages);
        self
    }

    /// The tolerance on a DPoP proof's `iat`, in seconds (default 60, at most 300). Without
    /// nonces, proofs dated before the guard's start plus this window are refused: the replay
    /// cache of a restarted guard is empty.
    pub fn dpop_window(mut self, seconds: i64) -> Self {
        self.cfg = self.cfg.dpop_window(seconds);
        self
    }

    /// Require this guard's own DPoP nonces in proofs (default off): a proof without the
    /// current one is answered `401 use_dpop_nonce` with a `DPoP-Nonce` header, and every
    /// answer to a DPoP request carries a fresh nonce. The secret is drawn at connect.
    pub fn dpop_nonce(mut self, on: bool) -> Self {
        self.cfg = self.cfg.dpop_nonce(on);
        self
    }

    /// Accept an access token of one of toolgate's `authorization_servers` whose `aud` is a
    /// list naming this resource among others (default off: `aud` must be exactly this
    /// resource — a string, or a list of one). A list naming `*` is refused either way.
    pub fn allow_multi_audience(mut self, on: bool) -> Self {
        self.cfg = self.cfg.allow_multi_audience(on);
        self
    }

    /// The clock token times are checked against (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The configuration as built so far.
    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// Connect to toolgate and start keeping the guard's copies current
    /// (see [`Guard::connect`]).
    pub async fn connect(self) -> Result<Arc<Guard>, GuardError> {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        Guard::connect(self.cfg, clock).await
    }
}

/// `scheme://authority` of a URL (the whole string when it has no path).
fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            format!("{scheme}://{}", rest.get(..end).unwrap_or(rest))
        }
        None => url.to_string(),
    }
}

/// Why the guard could not start: toolgate unreachable or answering garbage, or a bad URL.
#[derive(Debug)]
pub struct GuardError(pub String);

impl std::fmt::Display for GuardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for GuardError {}

/// How a request presented its access token (`Authorization: <scheme> <token>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (RFC 6750): the token alone.
    Bearer,
    /// `DPoP` (RFC 9449 §7.1): the token, and in the `DPoP` header a proof that the caller
    /// holds the key the token is bound to.
    Dpop,
}

/// The `DPoP-Nonce` response header (RFC 9449 §8): the nonce the next proof must carry.
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// A refusal, as a resource server answers it (RFC 6750 §3, RFC 9449 §7.1, MCP
/// authorization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `401`, `403`, or `503` while the guard cannot confirm its copies are current (or cannot
    /// record a DPoP proof).
    pub status: StatusCode,
    /// `invalid_token`, `insufficient_scope`, `invalid_dpop_proof`, `use_dpop_nonce`,
    /// `temporarily_unavailable`, or empty for a request with no token at all.
    pub error: &'static str,
    /// The `error_description`: why, in a few words (never attacker-controlled text).
    pub description: &'static str,
    /// The pipeline check that failed, if one did.
    pub check: Option<Check>,
    /// How the refused request presented its token (`None`: it had none). The challenge of
    /// that scheme carries the error; a fault of the DPoP proof is always the `DPoP` one's.
    pub scheme: Option<Scheme>,
    /// Bearer tokens are accepted here as well as DPoP-bound ones: the answer offers both
    /// challenges, `Bearer` first. `false` where a tool of this server requires DPoP.
    pub bearer_accepted: bool,
    /// The current DPoP nonce, sent as `DPoP-Nonce` (nonces on, and the request used the DPoP
    /// scheme).
    pub dpop_nonce: Option<String>,
}

impl Rejection {
    /// The answer to a request that carries no token at all: the bare challenge.
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "",
            "a bearer token is required",
            None,
        )
    }

    fn new(
        status: StatusCode,
        error: &'static str,
        description: &'static str,
        check: Option<Check>,
    ) -> Self {
        Self {
            status,
            error,
            description,
            check,
            scheme: None,
            bearer_accepted: true,
            dpop_nonce: None,
        }
    }

    /// Is this the fault of the request's DPoP proof (RFC 9449 §7.1), not of its token?
    fn proof_fault(&self) -> bool {
        self.error == ProofError::Malformed.code() || self.error == ProofError::UseNonce.code()
    }

    /// The `WWW-Authenticate` challenges, each naming this server's metadata: `Bearer` (where
    /// bearer tokens are accepted), then `DPoP` with the proof algorithms accepted. The error
    /// goes in the challenge of the scheme the token came with (in both when it came with
    /// none); a proof's fault in the `DPoP` one.
    pub fn challenges(&self, resource_metadata: &str) -> Vec<String> {
        let error = if self.error.is_empty() {
            String::new()
        } else {
            format!(
                "error=\"{}\", error_description=\"{}\", ",
                self.error, self.description
            )
        };
        let proof_fault = self.proof_fault();
        let on_bearer = !proof_fault && self.scheme != Some(Scheme::Dpop);
        let on_dpop = proof_fault || self.scheme != Some(Scheme::Bearer) || !self.bearer_accepted;
        let pick = |on: bool| if on { error.as_str() } else { "" };
        let mut out = Vec::with_capacity(2);
        if self.bearer_accepted {
            out.push(format!(
                "Bearer {}resource_metadata=\"{resource_metadata}\"",
                pick(on_bearer)
            ));
        }
        out.push(format!(
            "DPoP {}algs=\"{}\", resource_metadata=\"{resource_metadata}\"",
            pick(on_dpop),
            dpop::SIGNING_ALGS.join(" ")
        ));
        out
    }

    /// The JSON body `{"error","error_description","check"?}`.
    pub fn body(&self) -> Value {
        let mut v = serde_json::json!({
            "error": if self.error.is_empty() { "invalid_token" } else { self.error },
            "error_description": self.description,
        });
        if let (Some(check), Some(obj)) = (self.check, v.as_object_mut()) {
            obj.insert("check".into(), Value::from(check.name()));
        }
        v
    }
}

/// Map a pipeline denial to the resource server's answer (RFC 6750 §3, RFC 9449 §7.1): a
/// fault of the DPoP proof is [`proof_rejection`]'s; a token's own (a DPoP-bound token
/// without a proof, an unbound one where DPoP is required) is `invalid_token`.
pub fn reject(d: Denial) -> Rejection {
    use Check::*;
    if let Some(e) = d.dpop_error() {
        return proof_rejection(e);
    }
    let status = |s| {
        if d.unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            s
        }
    };
    match d.check {
        Audience => Rejection::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "audience mismatch",
            Some(Audience),
        ),
        // One sentence for every binding failure: which certificate was expected stays unsaid.
        Mtls => Rejection::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "certificate binding mismatch",
            Some(Mtls),
        ),
        Capabilities | BlastRadius | Execution => Rejection::new(
            status(StatusCode::FORBIDDEN),
            "insufficient_scope",
            d.reason,
            Some(d.check),
        ),
        Registration => Rejection::new(
            status(StatusCode::FORBIDDEN),
            "insufficient_scope",
            "tool is not served here",
            Some(Registration),
        ),
        _ => Rejection::new(
            status(StatusCode::UNAUTHORIZED),
            "invalid_token",
            d.reason,
            Some(d.check),
        ),
    }
}

/// A refused DPoP proof (RFC 9449 §7.1, §9): `401 invalid_dpop_proof` with the error's fixed
/// description, `401 use_dpop_nonce`, or `503 temporarily_unavailable` when the replay cache
/// has no room (retry later).
pub fn proof_rejection(e: ProofError) -> Rejection {
    let status = if e == ProofError::Full {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNAUTHORIZED
    };
    Rejection::new(status, e.code(), e.description(), Some(Check::Dpop))
}

/// toolgate's public keys as last fetched; an unknown `kid` asks for a refresh.
#[derive(Default)]
struct RemoteKeys {
    set: RwLock<JwkSet>,
    wanted: AtomicBool,
}

impl KeySource for RemoteKeys {
    fn key(&self, kid: &str) -> Option<Jwk> {
        let found = self.set.read().ok().and_then(|s| s.find(kid).cloned());
        if found.is_none() {
            self.wanted.store(true, Ordering::Relaxed);
        }
        found
    }
}

/// The authorization servers toolgate hands out (`GET /v1/authorization-servers`), with their
/// keys as last fetched; a token naming an unknown `kid` asks for a refresh of that issuer.
#[derive(Default)]
struct RemoteAuthorizationServers {
    servers: RwLock<HashMap<String, JwkSet>>,
    /// The issuer and `kid` of the last token whose key was missing.
    wanted: Mutex<Option<(String, Option<String>)>>,
}

impl AuthorizationServerKeys for RemoteAuthorizationServers {
    fn is_authorization_server(&self, issuer: &str) -> bool {
        self.servers.read().is_ok_and(|s| s.contains_key(issuer))
    }

    fn key(&self, issuer: &str, kid: Option<&str>) -> Option<Jwk> {
        let found = self.servers.read().ok().and_then(|s| {
            let set = s.get(issuer)?;
            match kid {
                Some(kid) => set.find(kid).cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        });
        if found.is_none() {
            if let Ok(mut w) = self.wanted.lock() {
                *w = Some((issuer.to_string(), kid.map(str::to_string)));
            }
        }
        found
    }
}

/// A query-string value, percent-encoded (everything but unreserved characters and `:`/`/`).
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The guard. Cheap to share (`Arc<Guard>`).
pub struct Guard {
    cfg: GuardConfig,
    resource_metadata: String,
    /// `public_url` in the form request URLs are compared in, without a trailing slash.
    base_url: String,
    client: Client,
    clock: Arc<dyn Clock>,
    keys: Arc<RemoteKeys>,
    /// The authorization servers whose access tokens are accepted for this resource.
    authorization_servers: Arc<RemoteAuthorizationServers>,
    registry: Arc<RwLock<Registry>>,
    revocations: Arc<RevocationIndex>,
    verifier: Verifier,
    /// Unix seconds of the last successful sync of the revocation set.
    synced_at: AtomicI64,
    digest: RwLock<String>,
    /// Rounds the background refresher has finished, successful or not.
    rounds: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("resource", &self.cfg.resource)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Start setting up a guard for the resource server `resource` (its RFC 8707 resource
    /// URI), kept current from the toolgate daemon at `toolgate` (`http://host:port`).
    pub fn builder(toolgate: impl Into<String>, resource: impl Into<String>) -> GuardBuilder {
        GuardBuilder {
            cfg: GuardConfig::new(toolgate, resource),
            clock: None,
        }
    }

    /// Learn toolgate's issuer, keys, this server's tools and the revocations, then keep them
    /// current in the background for as long as the guard lives.
    pub async fn connect(
        cfg: GuardConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Guard>, GuardError> {
        let mut client = Client::with_tls(&cfg.toolgate, &cfg.toolgate_tls)
            .map_err(|e| GuardError(e.to_string()))?;
        if let Some(t) = &cfg.admin_token {
            client = client.with_admin_token(t.clone());
        }
        let meta = client
            .send(
                http::Method::GET,
                "/.well-known/oauth-authorization-server",
                None,
            )
            .await
            .map_err(|e| GuardError(format!("cannot reach toolgate: {e}")))?
            .1;
        let issuer = meta
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| GuardError("toolgate's metadata names no issuer".into()))?
            .to_string();
        let resource = crate::resource::canonicalize(&cfg.resource)
            .map_err(|e| GuardError(format!("--resource: {e}")))?;
        let keys = Arc::new(RemoteKeys::default());
        let registry = Arc::new(RwLock::new(Registry::default()));
        let revocations = Arc::new(RevocationIndex::default());
        let base_url = crate::resource::normalize_http_url(&cfg.public_url)
            .ok_or_else(|| GuardError("--public-url must be an http(s) URL".into()))?
            .trim_end_matches('/')
            .to_string();
        let nonces = if cfg.dpop_nonce {
            Some(
                Nonces::generate()
                    .map_err(|_| GuardError("cannot draw a DPoP nonce secret".into()))?,
            )
        } else {
            None
        };
        let verifier = Verifier::new(
            VerifierConfig {
                issuer,
                leeway: cfg.leeway,
                keys: keys.clone(),
                clock: clock.clone(),
            },
            registry.clone(),
            revocations.clone(),
        )
        .with_dpop(cfg.dpop_window, nonces);
        let authorization_servers = Arc::new(RemoteAuthorizationServers::default());
        let verifier = verifier.with_authorization_servers(ResourcePolicy {
            resource: resource.clone(),
            allow_multi_audience: cfg.allow_multi_audience,
            servers: authorization_servers.clone(),
        });
        let resource_metadata = cfg.resource_metadata();
        let guard = Arc::new(Guard {
            cfg: GuardConfig { resource, ..cfg },
            resource_metadata,
            base_url,
            client,
            clock,
            keys,
            authorization_servers,
            registry,
            revocations,
            verifier,
            synced_at: AtomicI64::new(i64::MIN),
            digest: RwLock::new(String::new()),
            rounds: tokio::sync::watch::Sender::new(0),
        });
        guard.refresh_keys().await?;
        guard.refresh_authorization_servers(None).await?;
        guard.refresh_tools().await?;
        guard.refresh_revocations().await?;
        tokio::spawn(refresher(Arc::downgrade(&guard)));
        Ok(guard)
    }

    /// The count of finished refresher rounds (revocations, then tools and keys when due), to
    /// wait for a sync instead of sleeping: a round that ends two counts on began after now.
    pub fn rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// The resource URI this guard protects.
    pub fn resource(&self) -> &str {
        &self.cfg.resource
    }

    /// The URL of this server's RFC 9728 metadata, named in every `WWW-Authenticate`.
    pub fn resource_metadata(&self) -> &str {
        &self.resource_metadata
    }

    /// The target of a request to this server as a whole.
    pub fn server_target(&self) -> Target<'_> {
        Target::Server {
            resource: &self.cfg.resource,
            server_id: self.cfg.server_id.as_deref(),
        }
    }

    /// The URL a request to `path` has, as execution-bound tokens and DPoP proofs name it:
    /// the configured public URL plus the path.
    pub fn request_url(&self, path: &str) -> Option<String> {
        crate::resource::normalize_http_url(&format!("{}{path}", self.base_url))
    }

    /// toolgate's issuer, the authorization server of this resource.
    pub fn issuer(&self) -> &str {
        &self.verifier.issuer
    }

    /// The authorization servers of this resource, as its RFC 9728 metadata lists them:
    /// toolgate's issuer, then toolgate's `authorization_servers` (sorted), whose access
    /// tokens for exactly this resource are accepted too.
    pub fn authorization_servers(&self) -> Vec<String> {
        let mut others: Vec<String> = self
            .authorization_servers
            .servers
            .read()
            .map(|s| s.keys().filter(|i| *i != self.issuer()).cloned().collect())
            .unwrap_or_default();
        others.sort();
        let mut all = vec![self.issuer().to_string()];
        all.extend(others);
        all
    }

    /// This server's RFC 9728 protected resource metadata: its resource URI and toolgate as
    /// its authorization server. [`Protected`] and the tower layer answer `GET` on the
    /// [`resource_metadata`](Self::resource_metadata) path with it, without a token.
    pub fn metadata(&self) -> Value {
        serde_json::json!({
            "resource": self.resource(),
            "authorization_servers": self.authorization_servers(),
            "bearer_methods_supported": ["header"],
            "resource_documentation": "https://www.rfc-editor.org/rfc/rfc9728",
            "tls_client_certificate_bound_access_tokens": self.requires_mtls(),
            "dpop_signing_alg_values_supported": dpop::SIGNING_ALGS,
            "dpop_bound_access_tokens_required": self.requires_dpop(),
        })
    }

    /// Does a tool of this server take only DPoP-bound tokens (RFC 9449)? What its RFC 9728
    /// metadata says as `dpop_bound_access_tokens_required`; refusals then offer only the
    /// `DPoP` challenge.
    pub fn requires_dpop(&self) -> bool {
        self.registry
            .read()
            .map(|r| r.list(None).iter().any(|t| t.requires_dpop()))
            .unwrap_or(false)
    }

    /// The nonce DPoP proofs must carry now, when this guard requires nonces.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.verifier.dpop().nonce(self.clock.now())
    }

    /// The `DPoP-Nonce` to send with the answer to a request: a fresh nonce when nonces are on
    /// and the request presented its token with the DPoP scheme.
    pub fn nonce_header(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        match access_token(headers) {
            Some((Scheme::Dpop, _)) => self
                .dpop_nonce()
                .and_then(|n| HeaderValue::from_str(&n).ok()),
            _ => None,
        }
    }

    /// A refusal as this server words it: which challenges it offers, and the nonce to send.
    fn answer(&self, mut r: Rejection, scheme: Option<Scheme>) -> Rejection {
        r.scheme = scheme;
        r.bearer_accepted = !self.requires_dpop();
        if scheme == Some(Scheme::Dpop) || r.error == ProofError::UseNonce.code() {
            r.dpop_nonce = self.dpop_nonce();
        }
        r
    }

    /// Does a tool of this server take only certificate-bound tokens (RFC 8705 §3)? What its
    /// RFC 9728 metadata says as `tls_client_certificate_bound_access_tokens`.
    pub fn requires_mtls(&self) -> bool {
        self.registry
            .read()
            .map(|r| r.list(None).iter().any(|t| t.requires_mtls()))
            .unwrap_or(false)
    }

    /// The path part of [`resource_metadata`](Self::resource_metadata), as requests name it.
    fn metadata_path(&self) -> &str {
        let rest = self
            .resource_metadata
            .split_once("://")
            .map_or("", |(_, rest)| rest);
        rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/")
    }

    /// A tool of this server by MCP tool name (its `tool_id`, or its display `name`).
    pub fn tool(&self, name: &str) -> Option<Arc<ToolEntry>> {
        self.registry.read().ok()?.find(name)
    }

    /// The refusal while the guard cannot confirm its copies are current (fail closed).
    fn stale(&self, now: i64) -> Option<Rejection> {
        let age = now.saturating_sub(self.synced_at.load(Ordering::Relaxed));
        (age > i64::try_from(self.cfg.max_staleness.as_secs()).unwrap_or(i64::MAX)).then(|| {
            Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the guard cannot confirm its revocation list is current",
                Some(Check::Revocation),
            )
        })
    }

    /// Decide one request with the shared pipeline, after confirming the guard's copies are
    /// current: `Ok` with the token's claims and the tool, or the refusal. A request with a
    /// DPoP proof is answered as one that used the DPoP scheme.
    pub fn check(&self, req: &DecisionRequest<'_>) -> Result<Allowed, Rejection> {
        self.check_in_request(req, &mut None)
    }

    /// [`Guard::check`] for one of several decisions of the same HTTP request (the targets of
    /// one MCP batch, sharing its DPoP proof): the first allowed decision spends the proof and
    /// leaves its receipt in `spent`, the others check the proof in full but do not spend it
    /// again (see [`Verifier::decide_in_request`]). Start each HTTP request with `None`.
    pub fn check_in_request(
        &self,
        req: &DecisionRequest<'_>,
        spent: &mut Option<SpentProof>,
    ) -> Result<Allowed, Rejection> {
        let scheme = match req.dpop_proof {
            Some(_) => Scheme::Dpop,
            None => Scheme::Bearer,
        };
        self.decide(req, scheme, spent)
    }

    fn decide(
        &self,
        req: &DecisionRequest<'_>,
        scheme: Scheme,
        spent: &mut Option<SpentProof>,
    ) -> Result<Allowed, Rejection> {
        let now = self.clock.now();
        if let Some(r) = self.stale(now) {
            return Err(self.answer(r, Some(scheme)));
        }
        self.verifier
            .decide_in_request(req, now, spent)
            .result
            .map_err(|d| self.answer(reject(d), Some(scheme)))
    }

    /// Decide an HTTP request: the access token of its headers (`Bearer`, or `DPoP` with the
    /// one proof of its `DPoP` header), its method, its URL (public URL plus path), and the
    /// hash of its body when the caller read it.
    pub fn check_http(
        &self,
        parts: &http::request::Parts,
        target: Target<'_>,
        body_hash: Option<&str>,
    ) -> Result<Allowed, Rejection> {
        self.check_http_in_request(parts, target, body_hash, &mut None)
    }

    /// [`Guard::check_http`] for one of several decisions of the same HTTP request (each
    /// target of one MCP batch): its one DPoP proof is spent once, by the first allowed
    /// decision, whose receipt `spent` carries to the others (see
    /// [`Guard::check_in_request`]). Start each HTTP request with `None`.
    pub fn check_http_in_request(
        &self,
        parts: &http::request::Parts,
        target: Target<'_>,
        body_hash: Option<&str>,
        spent: &mut Option<SpentProof>,
    ) -> Result<Allowed, Rejection> {
        let Some((scheme, token)) = access_token(&parts.headers) else {
            let r = self
                .stale(self.clock.now())
                .unwrap_or_else(Rejection::missing_token);
            return Err(self.answer(r, None));
        };
        // The DPoP scheme takes exactly one proof; a bearer token goes without one, so that a
        // DPoP-bound token presented as a bearer token is refused by the pipeline.
        let proof = match scheme {
            Scheme::Bearer => None,
            Scheme::Dpop => match dpop_header(&parts.headers) {
                Ok(proof) => Some(proof),
                Err(e) => {
                    let r = self
                        .stale(self.clock.now())
                        .unwrap_or_else(|| proof_rejection(e));
                    return Err(self.answer(r, Some(scheme)));
                }
            },
        };
        let url = self.request_url(parts.uri.path());
        // The listener puts the client certificate its TLS handshake verified in the request's
        // extensions; nothing in the request itself can name one.
        let req = DecisionRequest::new(token, target)
            .with_http(parts.method.as_str(), url.as_deref())
            .with_body_hash(body_hash)
            .with_client_cert(parts.extensions.get::<ClientCertificate>())
            .with_dpop_proof(proof);
        self.decide(&req, scheme, spent)
    }

    /// The `tool_id` an MCP tool name refers to (its id, or a tool's display name); an
    /// unknown name is passed on as it is, for the pipeline to refuse.
    pub fn tool_id(&self, name: &str) -> String {
        self.tool(name)
            .map(|t| t.tool_id.clone())
            .unwrap_or_else(|| name.to_string())
    }

    /// Does a request for `target` need its body hashed (a tool bound to each execution)?
    pub fn needs_body(&self, target: Target<'_>) -> bool {
        match target {
            Target::Tool(id) => self
                .registry
                .read()
                .ok()
                .and_then(|r| r.get(id))
                .is_some_and(|t| t.requires_execution),
            _ => false,
        }
    }

    async fn get(&self, path: &str) -> Result<Value, GuardError> {
        let (status, body) = self
            .client
            .send(http::Method::GET, path, None)
            .await
            .map_err(|e| GuardError(e.to_string()))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(GuardError(format!("toolgate answered {status} for {path}")))
        }
    }

    async fn refresh_keys(&self) -> Result<(), GuardError> {
        let body = self.get("/v1/identity/jwks").await?;
        let set = JwkSet::from_json_bytes(body.to_string().as_bytes())
            .map_err(|e| GuardError(format!("JWKS: {e}")))?;
        let mut current = self
            .keys
            .set
            .write()
            .map_err(|_| GuardError("key set lock poisoned".into()))?;
        let removed = current
            .keys
            .iter()
            .any(|k| k.kid.as_ref().is_some_and(|kid| set.find(kid).is_none()));
        *current = set;
        drop(current);
        if removed {
            self.verifier.clear_cache();
        }
        Ok(())
    }

    /// Fetch the authorization servers and their keys; `wanted` (an issuer and the `kid` a
    /// token named) asks toolgate to refresh that issuer's keys first. A toolgate without the
    /// endpoint (404) has none.
    async fn refresh_authorization_servers(
        &self,
        wanted: Option<(String, Option<String>)>,
    ) -> Result<(), GuardError> {
        let path = match &wanted {
            None => "/v1/authorization-servers".to_string(),
            Some((iss, None)) => format!("/v1/authorization-servers?issuer={}", query_value(iss)),
            Some((iss, Some(kid))) => format!(
                "/v1/authorization-servers?issuer={}&kid={}",
                query_value(iss),
                query_value(kid)
            ),
        };
        let (status, body) = self
            .client
            .send(http::Method::GET, &path, None)
            .await
            .map_err(|e| GuardError(e.to_string()))?;
        let mut fresh = HashMap::new();
        if status == StatusCode::NOT_FOUND {
            // An older toolgate: no authorization servers.
        } else if !status.is_success() {
            return Err(GuardError(format!(
                "toolgate answered {status} for /v1/authorization-servers"
            )));
        } else {
            let malformed =
                || GuardError("toolgate's authorization server list is malformed".into());
            for entry in body
                .get("authorization_servers")
                .and_then(Value::as_array)
                .ok_or_else(malformed)?
            {
                let issuer = entry
                    .get("issuer")
                    .and_then(Value::as_str)
                    .ok_or_else(malformed)?;
                let keys = entry.get("keys").ok_or_else(malformed)?;
                let set = JwkSet::from_json_bytes(keys.to_string().as_bytes())
                    .map_err(|e| GuardError(format!("{issuer}: JWKS: {e}")))?;
                fresh.insert(issuer.to_string(), set);
            }
        }
        let mut current = self
            .authorization_servers
            .servers
            .write()
            .map_err(|_| GuardError("authorization server lock poisoned".into()))?;
        // A key or a server gone: tokens it verified must not be served from the cache.
        let removed = current.iter().any(|(iss, set)| {
            set.keys.iter().any(|k| {
                k.kid.as_ref().is_none_or(|kid| {
                    fresh
                        .get(iss)
                        .is_none_or(|f: &JwkSet| f.find(kid).is_none())
                })
            })
        });
        *current = fresh;
        drop(current);
        if removed {
            self.verifier.clear_cache();
        }
        Ok(())
    }

    async fn refresh_tools(&self) -> Result<(), GuardError> {
        let body = self.get("/v1/tools").await?;
        let tools: Vec<ToolEntry> =
            serde_json::from_value(body.get("tools").cloned().unwrap_or(Value::Null))
                .map_err(|_| GuardError("toolgate's tool list is malformed".into()))?;
        let mine: Vec<ToolEntry> = tools
            .into_iter()
            .filter(|t| {
                self.cfg
                    .server_id
                    .as_ref()
                    .is_none_or(|s| &t.server_id == s)
            })
            .collect();
        let mut registry = self
            .registry
            .write()
            .map_err(|_| GuardError("tool registry lock poisoned".into()))?;
        *registry = Registry::from_entries(mine);
        Ok(())
    }

    /// Poll the digest; fetch the export only when it changed. A success marks the copy current.
    async fn refresh_revocations(&self) -> Result<(), GuardError> {
        let digest = self.get("/v1/federation/revocation-hash").await?;
        // The digest and the write counter: digests of chosen changes can cancel (the digest
        // is a XOR), the counter moves on every write.
        let field = |name: &str| digest.get(name).and_then(Value::as_str).unwrap_or_default();
        let hash = format!("{} {}", field("hash"), field("generation"));
        let known = self.digest.read().map(|d| d.clone()).unwrap_or_default();
        if hash != known {
            let mut entries: Vec<(Key, i64)> = Vec::new();
            let mut after = 0i64;
            loop {
                let page = self
                    .get(&format!(
                        "/v1/federation/revocation-export?after={after}&limit=10000"
                    ))
                    .await?;
                for r in page
                    .get("revocations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let key = r
                        .get("key")
                        .and_then(Value::as_str)
                        .and_then(|k| u128::from_str_radix(k, 16).ok())
                        .ok_or_else(|| {
                            GuardError("revocation export entry without a key".into())
                        })?;
                    let exp = r
                        .get("expires_at_unix")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MAX);
                    entries.push((key, exp));
                }
                match page.get("next_after").and_then(Value::as_i64) {
                    Some(n) => after = n,
                    None => break,
                }
            }
            self.revocations
                .replace(entries)
                .map_err(|e| GuardError(e.to_string()))?;
            if let Ok(mut d) = self.digest.write() {
                *d = hash;
            }
        }
        self.synced_at.store(self.clock.now(), Ordering::Relaxed);
        Ok(())
    }
}

/// The access token of the `Authorization` header and its scheme, `Bearer` or `DPoP` (scheme
/// case-insensitive); `None` for no token, or one of another scheme.
pub fn access_token(headers: &HeaderMap) -> Option<(Scheme, &str)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((Scheme::Bearer, token))
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Some((Scheme::Dpop, token))
    } else {
        None
    }
}

/// The Bearer token of the `Authorization` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    match access_token(headers)? {
        (Scheme::Bearer, token) => Some(token),
        (Scheme::Dpop, _) => None,
    }
}

/// The one DPoP proof of a request (its `DPoP` header): none, or several, is refused.
pub fn dpop_header(headers: &HeaderMap) -> Result<&str, ProofError> {
    dpop::one_header(headers.get_all("dpop").iter().map(HeaderValue::as_bytes))
}

/// Keys are fetched at least this often by default: far below toolgate's default publish-ahead
/// (600 s), so a new key is known here long before it signs.
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(60);

/// Keep the guard's copies current: revocations every poll, tools every second, keys when an
/// unknown `kid` was seen (at most every 2 s) and every `key_refresh`.
/// The longest one refresh of the authorization servers may hold up the refresher's round.
const AS_REFRESH_WAIT: Duration = Duration::from_secs(3);

async fn refresher(guard: Weak<Guard>) {
    let mut ticks: u64 = 0;
    let mut last_keys = std::time::Instant::now();
    let mut last_as_hint = std::time::Instant::now();
    let mut last_as_plain = std::time::Instant::now();
    let (interval, key_refresh) = match guard.upgrade() {
        Some(g) => (g.cfg.poll_interval, g.cfg.key_refresh),
        None => return,
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        ticks += 1;
        let Some(g) = guard.upgrade() else { return };
        if let Err(e) = g.refresh_revocations().await {
            crate::log_warn!("guard: revocation sync failed: {e}");
        }
        let per_second = (1000 / interval.as_millis().max(1)).max(1) as u64;
        if ticks % per_second == 0 {
            if let Err(e) = g.refresh_tools().await {
                crate::log_warn!("guard: tool sync failed: {e}");
            }
        }
        // An unknown kid asks for new keys: honoured at once, at most every two seconds.
        let wanted = last_keys.elapsed() >= Duration::from_secs(2)
            && g.keys.wanted.swap(false, Ordering::Relaxed);
        if wanted || last_keys.elapsed() >= key_refresh {
            last_keys = std::time::Instant::now();
            if let Err(e) = g.refresh_keys().await {
                crate::log_warn!("guard: key refresh failed: {e}");
            }
        }
        // An authorization server's token naming a kid the guard lacks: toolgate is asked to
        // refresh that issuer (it limits itself to once per 30 s per issuer), at most every two
        // seconds from here. Apart from that, the whole list every `key_refresh`, on a timer
        // of its own: a stream of tokens with unknown kids (anyone can send them) never puts
        // off the plain refresh that drops an authorization server toolgate no longer lists.
        // Each refresh may take AS_REFRESH_WAIT at most, so revocation polling goes on.
        let hinted = if last_as_hint.elapsed() >= Duration::from_secs(2) {
            g.authorization_servers
                .wanted
                .lock()
                .ok()
                .and_then(|mut w| w.take())
        } else {
            None
        };
        if let Some(hint) = hinted {
            last_as_hint = std::time::Instant::now();
            match tokio::time::timeout(AS_REFRESH_WAIT, g.refresh_authorization_servers(Some(hint)))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => crate::log_warn!("guard: authorization server refresh failed: {e}"),
                Err(_) => crate::log_warn!("guard: authorization server refresh timed out"),
            }
        }
        if last_as_plain.elapsed() >= key_refresh {
            last_as_plain = std::time::Instant::now();
            match tokio::time::timeout(AS_REFRESH_WAIT, g.refresh_authorization_servers(None)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => crate::log_warn!("guard: authorization server refresh failed: {e}"),
                Err(_) => crate::log_warn!("guard: authorization server refresh timed out"),
            }
        }
        g.rounds.send_modify(|n| *n += 1);
    }
}

/// Largest body the guard buffers to hash it, for a tool bound to each execution.
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;
/// How long a body being buffered may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The body a protected handler receives: the client's stream, or the bytes the guard had to
/// read to hash them (a tool with `requires_execution`).
pub type GuardedBody<B> = Either<B, Full<Bytes>>;

/// How a protected server's requests name the tool they call.
#[derive(Clone, Copy)]
pub enum Routing {
    /// Plain HTTP and A2A tool servers: the function names the tool of a request from its
    /// method, path and headers; `None` makes it a server-level request, which needs a token
    /// for this server's resource or for one of its tools.
    Path(fn(&http::request::Parts) -> Option<String>),
    /// MCP over Streamable HTTP, one endpoint for every JSON-RPC message: a `POST` body is read
    /// (up to [`MAX_BUFFERED_BODY`]) and every message in it is decided, a `tools/call` against
    /// the tool in `params.name` and any other message against the server; `GET`, `DELETE`
    /// and other methods are server-level requests. A body that is not strict JSON-RPC
    /// (see [`crate::mcp::jsonrpc_targets`]), or a batch over [`GuardConfig::max_batch`], is
    /// refused with `400 invalid_request`.
    Mcp,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Path(_) => "Routing::Path",
            Self::Mcp => "Routing::Mcp",
        })
    }
}

/// A hyper service wrapper: the guard in front of any handler. Every request is decided
/// before the handler sees it (see [`Routing`]); a refusal is answered as RFC 6750 says, and
/// an allowed request carries its decision as request extensions ([`Allowed`], and its
/// `Arc<TokenClaims>`). `GET` on the metadata path is answered with [`Guard::metadata`].
#[derive(Clone)]
pub struct Protected<S> {
    guard: Arc<Guard>,
    inner: S,
    routing: Routing,
}

impl<S> std::fmt::Debug for Protected<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protected")
            .field("guard", &self.guard)
            .field("routing", &self.routing)
            .finish_non_exhaustive()
    }
}

impl<S> Protected<S> {
    /// Protect `inner`, a plain HTTP tool server: `tool_for` names the tool a request calls
    /// (`None`: a request to the server as a whole).
    pub fn new(
        guard: Arc<Guard>,
        inner: S,
        tool_for: fn(&http::request::Parts) -> Option<String>,
    ) -> Self {
        Self::with_routing(guard, inner, Routing::Path(tool_for))
    }

    /// Protect `inner`, an MCP server over Streamable HTTP: each JSON-RPC message is decided
    /// (see [`Routing::Mcp`]).
    pub fn mcp(guard: Arc<Guard>, inner: S) -> Self {
        Self::with_routing(guard, inner, Routing::Mcp)
    }

    /// Protect `inner`, with requests mapped to tools by `routing`.
    pub fn with_routing(guard: Arc<Guard>, inner: S, routing: Routing) -> Self {
        Self {
            guard,
            inner,
            routing,
        }
    }
}

/// A rejection as an HTTP response: its status, its challenges (one `WWW-Authenticate` value
/// each), its `DPoP-Nonce` if any, and the JSON body. The one place a refusal meets the wire.
pub fn rejection_response(r: &Rejection, resource_metadata: &str) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(r.body().to_string())));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for challenge in r.challenges(resource_metadata) {
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            h.append(header::WWW_AUTHENTICATE, v);
        }
    }
    if let Some(v) = r
        .dpop_nonce
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        h.insert(DPOP_NONCE, v);
    }
    resp
}

/// An answer with the `DPoP-Nonce` the guard gives it (see [`Guard::nonce_header`]).
pub(crate) fn with_nonce<R>(
    mut resp: http::Response<R>,
    nonce: Option<HeaderValue>,
) -> http::Response<R> {
    if let Some(v) = nonce {
        resp.headers_mut().insert(DPOP_NONCE, v);
    }
    resp
}

/// A body the guard could not buffer: too large, too slow, or broken.
fn body_refusal(status: StatusCode, description: &'static str) -> http::Response<Full<Bytes>> {
    let body = serde_json::json!({"error": "invalid_request", "error_description": description});
    let mut resp = json_response(status, &body);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Read a whole body within `MAX_BUFFERED_BODY` and `BODY_TIMEOUT`.
async fn buffer<B>(body: B) -> Result<Bytes, http::Response<Full<Bytes>>>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(body, MAX_BUFFERED_BODY).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(body_refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Ok(Err(_)) => Err(body_refusal(
            StatusCode::BAD_REQUEST,
            "request body could not be read",
        )),
        Err(_) => Err(body_refusal(
            StatusCode::REQUEST_TIMEOUT,
            "request body did not arrive in time",
        )),
    }
}

pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The answer to a request the handler must not see: a refusal, or the guard's own metadata.
pub(crate) type Refusal = http::Response<Full<Bytes>>;

/// A JSON answer with no challenge.
fn json_response(status: StatusCode, body: &Value) -> Refusal {
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Decide one request, the one decision [`Protected`] and the tower layer share: read the
/// body when a decision needs it (an execution-bound tool, or the JSON-RPC messages of an MCP
/// request), check every target with [`Guard::check_http`], and on success put the decision
/// in `parts.extensions` and hand back the body the handler gets. Otherwise the answer to send.
pub(crate) async fn admit<B>(
    guard: &Guard,
    routing: Routing,
    parts: &mut http::request::Parts,
    body: B,
) -> Result<GuardedBody<B>, Refusal>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if parts.method == http::Method::GET && parts.uri.path() == guard.metadata_path() {
        return Err(json_response(StatusCode::OK, &guard.metadata()));
    }
    let name = match routing {
        Routing::Mcp if parts.method == http::Method::POST => {
            let bytes = buffer(body).await?;
            admit_jsonrpc(guard, parts, &bytes)?;
            return Ok(Either::Right(Full::new(bytes)));
        }
        Routing::Mcp => None,
        Routing::Path(tool_for) => tool_for(parts),
    };
    let tool_id = name.map(|name| guard.tool_id(&name));
    let target = tool_id
        .as_deref()
        .map_or(guard.server_target(), Target::Tool);
    let (body, hash) = if guard.needs_body(target) {
        let bytes = buffer(body).await?;
        let hash = crate::verify::body_hash(&bytes);
        (Either::Right(Full::new(bytes)), Some(hash))
    } else {
        (Either::Left(body), None)
    };
    let allowed = guard
        .check_http(parts, target, hash.as_deref())
        .map_err(|r| rejection_response(&r, guard.resource_metadata()))?;
    parts.extensions.insert(allowed.claims.clone());
    parts.extensions.insert(allowed);
    Ok(body)
}

/// The distinct targets of a request's messages, in the order first named (`None`: the server
/// as a whole), each tool name resolved once.
pub fn distinct_targets(guard: &Guard, names: &[Option<String>]) -> Vec<Option<String>> {
    use std::collections::HashSet;
    let mut seen_names: HashSet<Option<&str>> = HashSet::new();
    let mut seen_ids: HashSet<Option<String>> = HashSet::new();
    let mut out = Vec::new();
    for name in names {
        if seen_names.insert(name.as_deref()) {
            let id = name.as_deref().map(|n| guard.tool_id(n));
            if seen_ids.insert(id.clone()) {
                out.push(id);
            }
        }
    }
    out
}

/// Decide every JSON-RPC message of an MCP request body (see [`Routing::Mcp`]), as the
/// gateway does; on success the decision goes in `parts.extensions`.
#[allow(clippy::result_large_err)] // the refusal is the response: built once, returned once
fn admit_jsonrpc(
    guard: &Guard,
    parts: &mut http::request::Parts,
    bytes: &[u8],
) -> Result<(), Refusal> {
    let refuse = |r: Rejection| rejection_response(&r, guard.resource_metadata());
    let names = crate::mcp::jsonrpc_targets(bytes, guard.cfg.max_batch).map_err(|e| {
        let body =
            serde_json::json!({"error": "invalid_request", "error_description": e.description()});
        json_response(StatusCode::BAD_REQUEST, &body)
    })?;
    // No token at all: the bare challenge, before anything about the tools is revealed.
    if access_token(&parts.headers).is_none() {
        guard
            .check_http(parts, guard.server_target(), None)
            .map_err(refuse)?;
    }
    // Each distinct target once, in the order first named (`None`: the server). Every one
    // must pass: the first refusal refuses the whole request.
    let tool_ids = distinct_targets(guard, &names);
    // The whole message (or batch) as sent is what an execution binding covers.
    let hash = tool_ids
        .iter()
        .flatten()
        .any(|id| guard.needs_body(Target::Tool(id)))
        .then(|| crate::verify::body_hash(bytes));
    // One HTTP request, one DPoP proof: spent by the first decision, not again by the others.
    let mut spent = None;
    let mut last = None;
    for id in &tool_ids {
        let target = id.as_deref().map_or(guard.server_target(), Target::Tool);
        last = Some(
            guard
                .check_http_in_request(parts, target, hash.as_deref(), &mut spent)
                .map_err(refuse)?,
        );
    }
    if let Some(allowed) = last {
        parts.extensions.insert(allowed.claims.clone());
        parts.extensions.insert(allowed);
    }
    Ok(())
}

impl<S, B, R> hyper::service::Service<http::Request<B>> for Protected<S>
where
    S: hyper::service::Service<http::Request<GuardedBody<B>>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R: Send + 'static,
{
    type Response = http::Response<Either<R, Full<Bytes>>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, req: http::Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let guard = self.guard.clone();
        let inner = self.inner.clone();
        let routing = self.routing;
        Box::pin(async move {
            match admit(&guard, routing, &mut parts, body).await {
                Ok(body) => {
                    let nonce = guard.nonce_header(&parts.headers);
                    let resp = inner.call(http::Request::from_parts(parts, body)).await?;
                    Ok(with_nonce(resp.map(Either::Left), nonce))
                }
                Err(answer) => Ok(answer.map(Either::Right)),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_token_comes_as_bearer_or_dpop_in_any_case() {
        for (value, want) in [
            ("Bearer abc", Some((Scheme::Bearer, "abc"))),
            ("bearer  abc ", Some((Scheme::Bearer, "abc"))),
            ("DPoP abc", Some((Scheme::Dpop, "abc"))),
            ("dpop abc", Some((Scheme::Dpop, "abc"))),
            ("DPOP abc", Some((Scheme::Dpop, "abc"))),
            ("Basic abc", None),
            ("DPoP ", None),
            ("DPoPabc", None),
        ] {
            let h = headers(&[("authorization", value)]);
            assert_eq!(access_token(&h), want, "{value}");
        }
        // `bearer` stays the Bearer token only.
        assert_eq!(bearer(&headers(&[("authorization", "DPoP abc")])), None);
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
    }

    #[test]
    fn a_dpop_request_carries_exactly_one_proof() {
        assert_eq!(dpop_header(&headers(&[])), Err(ProofError::Missing));
        assert_eq!(dpop_header(&headers(&[("dpop", "a.b.c")])), Ok("a.b.c"));
        assert_eq!(
            dpop_header(&headers(&[("dpop", "a.b.c"), ("DPoP", "d.e.f")])),
            Err(ProofError::Several)
        );
    }

    #[test]
    fn challenges_put_the_error_on_the_scheme_it_concerns() {
        let meta = "https://t/.well-known/oauth-protected-resource";
        let algs = "algs=\"ES256 ES384 EdDSA Ed25519 RS256 PS256\"";
        let bare_bearer = format!("Bearer resource_metadata=\"{meta}\"");
        let bare_dpop = format!("DPoP {algs}, resource_metadata=\"{meta}\"");
        // No token: both, bare, Bearer first.
        assert_eq!(
            Rejection::missing_token().challenges(meta),
            vec![bare_bearer.clone(), bare_dpop.clone()]
        );
        // A proof's fault: on DPoP only, whatever else is offered.
        let mut r = proof_rejection(ProofError::Replayed);
        r.scheme = Some(Scheme::Dpop);
        assert_eq!(
            r.challenges(meta),
            vec![
                bare_bearer.clone(),
                format!("DPoP error=\"invalid_dpop_proof\", error_description=\"DPoP proof was already used\", {algs}, resource_metadata=\"{meta}\"")
            ]
        );
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // A token's fault presented as Bearer: on Bearer; where only DPoP is accepted, on DPoP.
        let mut r = reject(crate::verify::deny(
            Check::Dpop,
            "tool requires a DPoP-bound token",
        ));
        r.scheme = Some(Scheme::Bearer);
        assert_eq!(r.error, "invalid_token");
        assert_eq!(
            r.challenges(meta),
            vec![
                format!("Bearer error=\"invalid_token\", error_description=\"tool requires a DPoP-bound token\", resource_metadata=\"{meta}\""),
                bare_dpop.clone()
            ]
        );
        r.bearer_accepted = false;
        assert_eq!(
            r.challenges(meta),
            vec![format!("DPoP error=\"invalid_token\", error_description=\"tool requires a DPoP-bound token\", {algs}, resource_metadata=\"{meta}\"")]
        );
        // A full replay cache: 503, retry later.
        let r = proof_rejection(ProofError::Full);
        assert_eq!(
            (r.status, r.error),
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        );
        assert_eq!(
            proof_rejection(ProofError::UseNonce).error,
            "use_dpop_nonce"
        );
    }

    #[test]
    fn the_response_carries_every_challenge_and_the_nonce() {
        let mut r = proof_rejection(ProofError::UseNonce);
        r.scheme = Some(Scheme::Dpop);
        r.dpop_nonce = Some("n0nce".into());
        let resp = rejection_response(&r, "https://t/m");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .count(),
            2
        );
        assert_eq!(resp.headers().get(DPOP_NONCE).unwrap(), "n0nce");
    }
}
