//! The verify pipeline: one ordered list of checks, first failure wins, shared by every entry
//! point (the REST endpoint, exchange's own-token path, and in-process callers).

use crate::blast;
use crate::claims::{self, Audience, Malformed};
use crate::clock::Clock;
use crate::dpop::{self, DpopPolicy, Nonces, Proof, ProofError, SpentProof};
use crate::jose::{self, Header, JoseError, Jwk, TokenType};
use crate::mtls::ClientCertificate;
use crate::registry::{Registry, ToolEntry};
use crate::resource;
use crate::revocation::{Identity, RevocationIndex};
use ring::digest::{digest, SHA256};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Longest clock skew any deployment may configure.
pub const MAX_LEEWAY: i64 = 60;
/// Tokens whose signatures are remembered; the cache is emptied when full.
const CACHE_CAPACITY: usize = 4096;

/// The name of the check that denied, as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// Check 1: not a compact JWS of JSON objects, a registered claim of the wrong type
    /// (`exp`, `sub` and `jti` are required), or a header `typ` naming another kind of token
    /// than the target takes (`at+jwt` for a tool or server, `toolgate-agent+jwt` at exchange).
    Malformed,
    /// Check 2: header `alg` not on the allow-list, a forbidden header parameter, or an `alg`
    /// other than the key's.
    Algorithm,
    /// Check 3: unknown `kid`, or the signature does not verify.
    Signature,
    /// Check 4: `now >= exp + leeway`.
    Expired,
    /// Check 4: `nbf` or `iat` later than `now + leeway`.
    NotYetValid,
    /// Check 5: `iss` is not this toolgate (nor, at a resource server, an authorization server
    /// it accepts).
    Issuer,
    /// Check 6: the tool is not in the registry (or the registry cannot be read).
    Registration,
    /// Check 7: the audience is missing, several, or not the target's RFC 8707 resource (for an
    /// authorization server's token: not the resource server's own resource).
    Audience,
    /// Check 8: the token's `caps` (an authorization server's token: its `scope`) lack a
    /// capability a reached tool requires.
    Capabilities,
    /// Check 9: a reached tool sets a maximum blast radius and the token's `blast_radius` is
    /// missing or wider.
    BlastRadius,
    /// Check 10: the token, its subject (or upstream subject) or a reached tool is revoked, or
    /// the revocation index cannot be read.
    Revocation,
    /// Check 11: proof of possession of a key (RFC 9449). The token is DPoP-bound
    /// (`cnf.jkt`) and the request carries no valid, fresh, unused proof by that key for this
    /// method, URL and token; or a reached tool requires DPoP (`sender_constraint: dpop`) and
    /// the token is not bound; or a proof comes with an unbound token; or `cnf` names a
    /// confirmation method toolgate does not know.
    Dpop,
    /// Check 12: certificate binding (RFC 8705 §3). A reached tool requires it
    /// (`sender_constraint: mtls`) and the token has no `cnf.x5t#S256`, or the token has one
    /// and the request came with no client certificate or another one.
    Mtls,
    /// Check 13: the tool requires execution binding and the token's `exec_act`, `target`,
    /// `inp_hash`, `htm` or `htu` does not match the request, or its single-use `nonce` was
    /// spent already.
    Execution,
}

impl Check {
    /// Every check, in pipeline order.
    pub const ALL: [Check; 14] = [
        Check::Malformed,
        Check::Algorithm,
        Check::Signature,
        Check::Expired,
        Check::NotYetValid,
        Check::Issuer,
        Check::Registration,
        Check::Audience,
        Check::Capabilities,
        Check::BlastRadius,
        Check::Revocation,
        Check::Dpop,
        Check::Mtls,
        Check::Execution,
    ];

    /// The wire name (`not_yet_valid`, `blast_radius`, ...) a denial is reported under.
    pub fn name(self) -> &'static str {
        match self {
            Check::Malformed => "malformed",
            Check::Algorithm => "algorithm",
            Check::Signature => "signature",
            Check::Expired => "expired",
            Check::NotYetValid => "not_yet_valid",
            Check::Issuer => "issuer",
            Check::Registration => "registration",
            Check::Audience => "audience",
            Check::Capabilities => "capabilities",
            Check::BlastRadius => "blast_radius",
            Check::Revocation => "revocation",
            Check::Dpop => "dpop",
            Check::Mtls => "mtls",
            Check::Execution => "execution",
        }
    }
}

/// Why a token was refused: the check, and a fixed sentence (never attacker text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// The first check that failed.
    pub check: Check,
    /// A fixed sentence for the client and the audit log.
    pub reason: &'static str,
    /// The answer could not be determined (a store failure): denied, and worth a retry.
    pub unavailable: bool,
}

/// A definite denial by `check` (not [`Denial::unavailable`]).
pub fn deny(check: Check, reason: &'static str) -> Denial {
    Denial {
        check,
        reason,
        unavailable: false,
    }
}

impl From<JoseError> for Denial {
    fn from(e: JoseError) -> Self {
        match e {
            JoseError::TooLarge => deny(Check::Malformed, "token is too large"),
            JoseError::Shape => deny(Check::Malformed, "token is not a compact JWS"),
            JoseError::Base64 => deny(Check::Malformed, "token is not strict base64url"),
            JoseError::Json => deny(
                Check::Malformed,
                "token header or claims are not a JSON object",
            ),
            JoseError::DuplicateName => {
                deny(Check::Malformed, "token has a duplicate JSON member name")
            }
            JoseError::UnsupportedAlgorithm => deny(Check::Algorithm, "algorithm is not allowed"),
            JoseError::ForbiddenHeader => {
                deny(Check::Algorithm, "header parameter is not accepted")
            }
            JoseError::AlgorithmMismatch => {
                deny(Check::Algorithm, "algorithm does not match the key")
            }
            JoseError::BadSignature | JoseError::InvalidKey | JoseError::KeyGeneration => {
                deny(Check::Signature, "signature is invalid")
            }
        }
    }
}

impl From<Malformed> for Denial {
    fn from(_: Malformed) -> Self {
        deny(
            Check::Malformed,
            "a registered claim has the wrong type or range",
        )
    }
}

/// Checks 1–3: shape, header, signature, with `key_for` choosing the key from the header.
pub fn verify_signature(
    token: &str,
    key_for: impl FnOnce(&Header) -> Option<Jwk>,
) -> Result<Map<String, Value>, Denial> {
    let compact = jose::decode(token)?;
    let key = key_for(&compact.header).ok_or(deny(Check::Signature, "signing key is not known"))?;
    compact.verify_with(&key)?;
    Ok(compact.claims)
}

/// The registered claims every JWT must get right, read once after the signature.
#[derive(Debug, Clone)]
pub struct TimeClaims {
    /// Expiration time (RFC 7519 §4.1.4); required.
    pub exp: i64,
    /// Not-before time (RFC 7519 §4.1.5).
    pub nbf: Option<i64>,
    /// Issued-at time (RFC 7519 §4.1.6); also dates an execution nonce.
    pub iat: Option<i64>,
}

impl TimeClaims {
    /// Read `exp`, `nbf` and `iat` strictly; a missing `exp` or a malformed date is
    /// [`Check::Malformed`].
    pub fn read(claims: &Map<String, Value>) -> Result<Self, Denial> {
        Ok(Self {
            exp: claims::numeric_date(claims, "exp")?
                .ok_or(deny(Check::Malformed, "exp is required"))?,
            nbf: claims::numeric_date(claims, "nbf")?,
            iat: claims::numeric_date(claims, "iat")?,
        })
    }

    /// Check 4: `now < exp + leeway`, `nbf <= now + leeway`, `iat <= now + leeway`.
    pub fn check(&self, now: i64, leeway: i64) -> Result<(), Denial> {
        let leeway = leeway.clamp(0, MAX_LEEWAY);
        if now >= self.exp.saturating_add(leeway) {
            return Err(deny(Check::Expired, "token has expired"));
        }
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(deny(Check::NotYetValid, "token is not valid yet"));
        }
        if self.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(deny(Check::NotYetValid, "token was issued in the future"));
        }
        Ok(())
    }
}

/// Who issued a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// toolgate itself: checked against its own keys, `typ` and issuer.
    Toolgate,
    /// One of the authorization servers a resource server accepts access tokens from
    /// ([`ResourcePolicy`]): checked against that server's keys, its `aud` against the
    /// resource server's own resource, its `scope` against the tools' capabilities.
    AuthorizationServer,
}

/// A token whose signature has been verified, its claims read strictly: one toolgate minted,
/// or an access token of a configured authorization server ([`Origin`]).
#[derive(Debug, Clone)]
pub struct TokenClaims {
    /// The whole payload, for the claims not read below (`exec_act`, `nonce`, `src`, `cnf`).
    pub raw: Map<String, Value>,
    /// Who issued it (and so which rules it is checked by).
    pub origin: Origin,
    /// What the header `typ` says the token is: a tool's access token or an agent token.
    pub token_type: TokenType,
    /// `exp`, `nbf`, `iat`.
    pub times: TimeClaims,
    /// The issuer; must equal the verifier's (check 5).
    pub iss: Option<String>,
    /// The subject, non-empty: whom the token was issued to.
    pub sub: String,
    /// The token's ID, non-empty: what a single-token revocation names.
    pub jti: String,
    /// The audience: the RFC 8707 resource the token is bound to.
    pub aud: Audience,
    /// The capabilities granted: `caps` of a toolgate token, the space-separated `scope` of an
    /// authorization server's (RFC 9068 §2.2.3); empty when absent.
    pub caps: Vec<String>,
    /// How far the token's authority reaches, `level[:scope]` (see [`crate::blast`]).
    pub blast_radius: Option<String>,
    /// The names a revocation may use for this token, hashed once.
    pub revocation_keys: Vec<crate::revocation::Key>,
}

impl TokenClaims {
    /// The names revocations may use for this token: subject, issuer, `jti`, upstream source.
    pub fn identity(&self) -> Identity<'_> {
        Identity {
            subject: &self.sub,
            issuer: self.iss.as_deref().unwrap_or(""),
            jti: &self.jti,
            source: self.raw.get("src").and_then(Value::as_object),
        }
    }

    fn read(
        raw: Map<String, Value>,
        token_type: TokenType,
        origin: Origin,
    ) -> Result<Self, Denial> {
        let times = TimeClaims::read(&raw)?;
        let iss = claims::string(&raw, "iss")?.map(str::to_string);
        let sub = claims::string(&raw, "sub")?
            .filter(|s| !s.is_empty())
            .ok_or(deny(Check::Malformed, "sub is required"))?
            .to_string();
        let jti = claims::string(&raw, "jti")?
            .filter(|s| !s.is_empty())
            .ok_or(deny(Check::Malformed, "jti is required"))?
            .to_string();
        let aud = claims::audience(&raw);
        let caps = match origin {
            Origin::Toolgate => claims::string_list(&raw, "caps")?.unwrap_or_default(),
            Origin::AuthorizationServer => claims::string(&raw, "scope")?
                .map(|s| {
                    s.split(' ')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        };
        let blast_radius = claims::string(&raw, "blast_radius")?.map(str::to_string);
        let mut claims = Self {
            raw,
            origin,
            token_type,
            times,
            iss,
            sub,
            jti,
            aud,
            caps,
            blast_radius,
            revocation_keys: Vec::new(),
        };
        claims.revocation_keys = claims.identity().keys();
        Ok(claims)
    }
}

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One tool call, by `tool_id`.
    Tool(&'a str),
    /// A request to a server as a whole (`resources/read`, `prompts/get`, `GET`/`DELETE` on the
    /// MCP endpoint). The token's audience must be `resource` or the resource of a tool of
    /// `server_id` (every tool of the registry when `None`); each such tool must then pass the
    /// tool checks (capabilities, blast radius, revocation).
    Server {
        /// The server's own RFC 8707 resource indicator, which the token's audience may name
        /// directly.
        resource: &'a str,
        /// Only tools of this server count as the server's audiences.
        server_id: Option<&'a str>,
    },
    /// A token whose audience must be exactly this and is no tool's: toolgate's own agent
    /// tokens, presented at exchange.
    Audience(&'a str),
}

/// One decision's input, the same from every entry point: the REST endpoint, the guard, the
/// gateway and exchange's own-token path each only build this and map the verdict.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    /// The compact JWS, without the `Bearer ` prefix.
    pub token: &'a str,
    /// What the request is for: the token's audience is checked against it.
    pub target: Target<'a>,
    /// The request's method, as the resource server received it (`POST`).
    pub method: Option<&'a str>,
    /// The request's URL: the resource server's configured public URL plus the path, in the
    /// form of [`crate::resource::normalize_http_url`] (never built from the `Host` header).
    pub url: Option<&'a str>,
    /// base64url SHA-256 of the exact request body, when the resource server hashed it.
    pub body_hash: Option<&'a str>,
    /// The client certificate of the caller's mutual-TLS connection, as the listener that
    /// verified it (or, at the REST endpoint, the tool server) reports it.
    pub client_cert: Option<&'a ClientCertificate>,
    /// The request's DPoP proof (the `DPoP` header's value, RFC 9449 §7.1), when the token was
    /// presented with the `DPoP` scheme. `None` for a `Bearer` token: a DPoP-bound token
    /// presented as a bearer token is refused.
    pub dpop_proof: Option<&'a str>,
}

impl<'a> DecisionRequest<'a> {
    /// A request with only a token and a target; the optional parts are added with the
    /// struct-update syntax or the builder methods.
    pub fn new(token: &'a str, target: Target<'a>) -> Self {
        Self {
            token,
            target,
            method: None,
            url: None,
            body_hash: None,
            client_cert: None,
            dpop_proof: None,
        }
    }

    /// Add the request's DPoP proof, which a DPoP-bound token's `cnf.jkt` must name.
    pub fn with_dpop_proof(mut self, proof: Option<&'a str>) -> Self {
        self.dpop_proof = proof;
        self
    }

    /// Add the HTTP method and URL, which an execution-bound token's `htm`/`htu` must match.
    pub fn with_http(mut self, method: &'a str, url: Option<&'a str>) -> Self {
        self.method = Some(method);
        self.url = url;
        self
    }

    /// Add the caller's client certificate, which a certificate-bound token's `cnf.x5t#S256`
    /// must name.
    pub fn with_client_cert(mut self, cert: Option<&'a ClientCertificate>) -> Self {
        self.client_cert = cert;
        self
    }

    /// Add the request body's hash ([`body_hash`]), which `inp_hash` must match.
    pub fn with_body_hash(mut self, hash: Option<&'a str>) -> Self {
        self.body_hash = hash;
        self
    }
}

/// base64url (no padding) SHA-256 of a request body: what `inp_hash` and `request_body_hash`
/// carry.
pub fn body_hash(body: &[u8]) -> String {
    jose::b64::encode(digest(&SHA256, body).as_ref())
}

/// A decision with whatever is known of the token.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The token's claims once checks 1–5 passed, even if a later check denied, so the audit
    /// log can name the subject.
    pub claims: Option<Arc<TokenClaims>>,
    /// Allowed, or the first failing check.
    pub result: Result<Allowed, Denial>,
}

/// An allowed call: the token's claims and the tool they were checked against (`None` for a
/// server-level request no tool's resource matched, and for an agent token).
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The verified token's claims.
    pub claims: Arc<TokenClaims>,
    /// The tool called, for a [`Target::Tool`] request.
    pub tool: Option<Arc<ToolEntry>>,
}

impl Allowed {
    /// The `claims` object of the 200 response.
    pub fn to_json(&self) -> Value {
        let c = &self.claims;
        let mut out = json!({
            "sub": c.sub,
            "iss": c.iss,
            "aud": c.aud.single(),
            "exp": c.times.exp,
            "jti": c.jti,
        });
        if let Some(obj) = out.as_object_mut() {
            if let Some(tool) = &self.tool {
                obj.insert("tool_id".into(), json!(tool.tool_id));
                obj.insert("resource".into(), json!(tool.resource()));
            }
            if c.raw.contains_key("caps") {
                obj.insert("caps".into(), json!(c.caps));
            }
            if let Some(b) = &c.blast_radius {
                obj.insert("blast_radius".into(), json!(b));
            }
            if self.tool.as_ref().is_some_and(|t| t.requires_execution) {
                let pick = |k: &str| c.raw.get(k).cloned().unwrap_or(Value::Null);
                obj.insert(
                    "execution".into(),
                    json!({"exec_act": pick("exec_act"), "target": pick("target"), "inp_hash": pick("inp_hash"),
                           "htm": pick("htm"), "htu": pick("htu")}),
                );
            }
        }
        out
    }
}

/// Where the pipeline finds the public key named by a token's `kid`: the daemon's own key
/// ring, or a guard's copy of toolgate's JWKS.
pub trait KeySource: Send + Sync {
    /// The public key whose `kid` is `kid`; `None` denies at [`Check::Signature`].
    fn key(&self, kid: &str) -> Option<Jwk>;
}

/// The keys of the authorization servers (Keycloak, Auth0, Okta, Entra, …) whose access tokens
/// a resource server accepts besides toolgate's own: a guard's copy of what the daemon fetched.
pub trait AuthorizationServerKeys: Send + Sync {
    /// Is `issuer` one of them (exactly, byte for byte)?
    fn is_authorization_server(&self, issuer: &str) -> bool;
    /// The key of `issuer` a token's header names: by `kid`, or its only key when the header
    /// names none. `None` denies at [`Check::Signature`].
    fn key(&self, issuer: &str, kid: Option<&str>) -> Option<Jwk>;
}

/// What a resource server (a guard, a gateway) accepts from authorization servers: their
/// access tokens for exactly its own resource.
#[derive(Clone)]
pub struct ResourcePolicy {
    /// The resource server's RFC 8707 resource URI (canonical): the one audience accepted.
    pub resource: String,
    /// Accept an `aud` list that contains `resource` among others (not a `*` in it).
    pub allow_multi_audience: bool,
    /// The authorization servers and their keys.
    pub servers: Arc<dyn AuthorizationServerKeys>,
}

impl std::fmt::Debug for ResourcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourcePolicy")
            .field("resource", &self.resource)
            .field("allow_multi_audience", &self.allow_multi_audience)
            .finish_non_exhaustive()
    }
}

impl ResourcePolicy {
    /// Check 7 for an authorization server's token: its audience is exactly this resource (a
    /// string, or a list of one); a longer list containing it only with
    /// `allow_multi_audience`, and never one naming `*`.
    fn check_audience(&self, aud: &Audience) -> Result<(), Denial> {
        match aud {
            Audience::One(a) if *a == self.resource => Ok(()),
            Audience::Missing => Err(deny(Check::Audience, "token has no audience")),
            Audience::Many(list)
                if self.allow_multi_audience
                    && list.contains(&self.resource)
                    && !list.iter().any(|a| a == "*") =>
            {
                Ok(())
            }
            Audience::Many(_) => Err(deny(Check::Audience, "token names several audiences")),
            _ => Err(deny(Check::Audience, "token audience is not this server")),
        }
    }
}

/// The tools a request reaches (every one is checked), and the one tool it calls, if any.
type Reached = (Vec<Arc<ToolEntry>>, Option<Arc<ToolEntry>>);

/// Execution nonces already used, each remembered until its token expires (plus leeway), so
/// an execution-bound token is accepted once. Bounded: when full of live nonces it refuses new
/// ones (fail closed) rather than forgetting old ones.
#[derive(Debug)]
pub(crate) struct NonceCache {
    seen: Mutex<HashMap<String, i64>>,
    capacity: usize,
    /// Tokens issued before this instant may have been used before a restart: refused.
    not_before: i64,
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceError {
    /// The nonce was used before and its token has not expired: a replay.
    Replayed,
    /// Every slot holds a live nonce; refused rather than forget one.
    Full,
    /// The cache's lock was poisoned.
    Unavailable,
}

impl NonceCache {
    /// Room for about a million live nonces.
    pub(crate) const DEFAULT_CAPACITY: usize = 1 << 20;

    /// A cache that refuses tokens issued before `started_at` (nonces used before it are not
    /// known here).
    pub(crate) fn new(capacity: usize, started_at: i64) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            not_before: started_at,
        }
    }

    /// Remember `nonce` until `until`; `Err(Replayed)` if it was seen and has not expired.
    pub(crate) fn consume(&self, nonce: &str, until: i64, now: i64) -> Result<(), NonceError> {
        let mut seen = self.seen.lock().map_err(|_| NonceError::Unavailable)?;
        if seen.get(nonce).is_some_and(|exp| *exp > now) {
            return Err(NonceError::Replayed);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, exp| *exp > now);
            if seen.len() >= self.capacity {
                return Err(NonceError::Full);
            }
        }
        seen.insert(nonce.to_string(), until);
        Ok(())
    }
}

/// How a verifier is set up: what it trusts and how it reads time.
#[derive(Clone)]
pub struct VerifierConfig {
    /// The issuer whose tokens are accepted (toolgate's own).
    pub issuer: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, clamped to `0..=MAX_LEEWAY`.
    pub leeway: i64,
    /// Where the public keys named by `kid` come from.
    pub keys: Arc<dyn KeySource>,
    /// The time every decision is taken at.
    pub clock: Arc<dyn Clock>,
}

/// Everything the pipeline consults. Cheap to share; every entry point holds the same one.
pub struct Verifier {
    /// The only `iss` accepted (check 5).
    pub issuer: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, already clamped to `0..=MAX_LEEWAY`.
    pub leeway: i64,
    /// The public keys signatures are checked with (check 3).
    pub keys: Arc<dyn KeySource>,
    /// The time decisions are taken at.
    pub clock: Arc<dyn Clock>,
    /// The registered tools, shared with whoever registers them (checks 6–9, 12 and 13).
    pub registry: Arc<RwLock<Registry>>,
    /// The revocations, shared with whoever fills the index (check 10).
    pub revocations: Arc<RevocationIndex>,
    /// Access tokens of authorization servers accepted for this resource (a guard's); `None`
    /// accepts toolgate's tokens only (the daemon).
    resource_server: Option<ResourcePolicy>,
    nonces: NonceCache,
    dpop: DpopPolicy,
    cache: RwLock<HashMap<[u8; 32], Arc<TokenClaims>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn unavailable(check: Check, reason: &'static str) -> Denial {
    Denial {
        check,
        reason,
        unavailable: true,
    }
}

impl Verifier {
    /// A verifier over shared `registry` and `revocations`. Execution-bound tokens issued
    /// before this moment are refused: nonces they may have spent are not known to it.
    pub fn new(
        config: VerifierConfig,
        registry: Arc<RwLock<Registry>>,
        revocations: Arc<RevocationIndex>,
    ) -> Self {
        let started = config.clock.now();
        Self {
            issuer: config.issuer,
            leeway: config.leeway.clamp(0, MAX_LEEWAY),
            keys: config.keys,
            clock: config.clock,
            registry,
            revocations,
            resource_server: None,
            nonces: NonceCache::new(NonceCache::DEFAULT_CAPACITY, started),
            dpop: DpopPolicy::new(dpop::DEFAULT_WINDOW, None, started),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Check DPoP proofs with `window` seconds of tolerance on `iat`, and require this
    /// server's nonces when `nonces` is given (RFC 9449 §9). The default: 60 s, no nonces.
    pub fn with_dpop(mut self, window: i64, nonces: Option<Nonces>) -> Self {
        self.dpop = DpopPolicy::new(window, nonces, self.dpop_started());
        self
    }

    /// Check DPoP proofs with this policy (a server with durable storage gives one with a
    /// horizon, see [`DpopPolicy::with_horizon`]).
    pub fn with_dpop_policy(mut self, policy: DpopPolicy) -> Self {
        self.dpop = policy;
        self
    }

    /// Also accept access tokens of these authorization servers for `policy.resource`, with
    /// every check of the pipeline that applies (see [`Origin::AuthorizationServer`]).
    pub fn with_authorization_servers(mut self, policy: ResourcePolicy) -> Self {
        self.resource_server = Some(policy);
        self
    }

    /// The authorization servers accepted besides toolgate, if any.
    pub fn resource_policy(&self) -> Option<&ResourcePolicy> {
        self.resource_server.as_ref()
    }

    fn dpop_started(&self) -> i64 {
        self.nonces.not_before
    }

    /// How this verifier checks DPoP proofs (the token endpoint checks its proofs with the
    /// same policy and replay cache).
    pub fn dpop(&self) -> &DpopPolicy {
        &self.dpop
    }

    /// The current time, from the configured clock (read once per decision).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// How many verified signatures are remembered (one per token, whatever form of its
    /// signature was presented).
    pub fn cached_signatures(&self) -> usize {
        self.cache.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Forget remembered signatures (after the key set changed).
    pub fn clear_cache(&self) {
        if let Ok(mut map) = self.cache.write() {
            map.clear();
        }
    }

    /// The authorization server a decoded, not yet verified token names as its `iss`, when it
    /// is one this verifier accepts (and not toolgate itself).
    fn authorization_server<'t>(
        &self,
        claims: &'t Map<String, Value>,
    ) -> Option<(&ResourcePolicy, &'t str)> {
        let policy = self.resource_server.as_ref()?;
        let iss = claims.get("iss")?.as_str()?;
        (iss != self.issuer && policy.servers.is_authorization_server(iss)).then_some((policy, iss))
    }

    /// Checks 1–5: shape, header, signature (remembered per token, so a repeated token costs
    /// its header and one hash), then its `typ` (`expected` for toolgate's own), time and
    /// issuer on every call. A token whose `iss` is an accepted authorization server is
    /// checked with that server's keys and takes an access token's `typ` (none, `JWT` or
    /// `at+jwt`).
    fn check_token(
        &self,
        token: &str,
        expected: TokenType,
        now: i64,
    ) -> Result<Arc<TokenClaims>, Denial> {
        // Keyed by the signing input and the canonical signature: a high-S twin of a token is
        // the same token (and verifies alike), not a second entry. A repeated token costs the
        // header's decoding and one hash; its payload is read once, on the miss.
        let fingerprint = jose::jws::fingerprint(token)?;
        let cached = match self.cache.read() {
            Ok(map) => map.get(&fingerprint).cloned(),
            Err(_) => None,
        };
        let claims = match cached {
            Some(c) => c,
            None => {
                let compact = jose::decode(token)?;
                let (key, origin) = match self.authorization_server(&compact.claims) {
                    Some((policy, iss)) => (
                        policy.servers.key(iss, compact.header.kid.as_deref()),
                        Origin::AuthorizationServer,
                    ),
                    None => (
                        compact.header.kid.as_deref().and_then(|k| self.keys.key(k)),
                        Origin::Toolgate,
                    ),
                };
                let key = key.ok_or(deny(Check::Signature, "signing key is not known"))?;
                compact.verify_with(&key)?;
                let token_type = compact.header.token_type();
                let claims = Arc::new(TokenClaims::read(compact.claims, token_type, origin)?);
                if let Ok(mut map) = self.cache.write() {
                    if map.len() >= CACHE_CAPACITY {
                        map.clear();
                    }
                    map.insert(fingerprint, claims.clone());
                }
                claims
            }
        };
        match claims.origin {
            Origin::Toolgate => {
                // A tool's token is no agent token and the other way round; an ID token, a SET
                // or a DPoP proof signed by the same key is neither.
                if claims.token_type != expected {
                    return Err(deny(
                        Check::Malformed,
                        match expected {
                            TokenType::Agent => "token is not a toolgate agent token (typ)",
                            _ => "token is not a toolgate access token (typ)",
                        },
                    ));
                }
                claims.times.check(now, self.leeway)?;
                if claims.iss.as_deref() != Some(self.issuer.as_str()) {
                    return Err(deny(Check::Issuer, "issuer is not this toolgate"));
                }
            }
            Origin::AuthorizationServer => {
                // Another server's token is never an agent token, and a `typ` naming another
                // kind of token (`secevent+jwt`, `dpop+jwt`, toolgate's agent type) is no
                // access token.
                if expected != TokenType::AccessToken {
                    return Err(deny(
                        Check::Malformed,
                        "token is not a toolgate agent token (typ)",
                    ));
                }
                if !matches!(
                    claims.token_type,
                    TokenType::Unspecified | TokenType::Jwt | TokenType::AccessToken
                ) {
                    return Err(deny(Check::Malformed, "token is not an access token (typ)"));
                }
                claims.times.check(now, self.leeway)?;
                // Still one of them (a guard's list can shrink; the cache may hold its tokens).
                let accepted = self.resource_server.as_ref().is_some_and(|p| {
                    claims
                        .iss
                        .as_deref()
                        .is_some_and(|iss| p.servers.is_authorization_server(iss))
                });
                if !accepted {
                    return Err(deny(
                        Check::Issuer,
                        "issuer is not an accepted authorization server",
                    ));
                }
            }
        }
        Ok(claims)
    }

    /// The whole pipeline at the configured clock's time.
    pub fn verify(&self, req: &DecisionRequest<'_>) -> Result<Allowed, Denial> {
        self.decide(req).result
    }

    /// The pipeline's answer at the configured clock's time.
    pub fn decide(&self, req: &DecisionRequest<'_>) -> Verdict {
        self.decide_at(req, self.clock.now())
    }

    /// The one pipeline, checks 1–13 in order for every target; the first failure wins. The
    /// verdict carries the token's claims whenever its signature checked out, so that a denial
    /// can still be attributed to a subject in the audit log.
    pub fn decide_at(&self, req: &DecisionRequest<'_>, now: i64) -> Verdict {
        self.decide_in_request(req, now, &mut None)
    }

    /// The pipeline for one of several decisions taken for the same HTTP request (the targets
    /// of one MCP batch, which share its one DPoP proof). Each decision checks the proof in
    /// full; the first allowed one spends it and leaves its receipt in `spent`, and a later
    /// one whose proof is the one that receipt names does not spend it again (so the request's
    /// own proof is no replay of itself). Any other proof is spent as usual: start every HTTP
    /// request with `None`, and never carry a receipt over to another request.
    pub fn decide_in_request(
        &self,
        req: &DecisionRequest<'_>,
        now: i64,
        spent: &mut Option<SpentProof>,
    ) -> Verdict {
        let expected = match req.target {
            Target::Audience(_) => TokenType::Agent,
            Target::Tool(_) | Target::Server { .. } => TokenType::AccessToken,
        };
        match self.check_token(req.token, expected, now) {
            Err(denial) => Verdict {
                claims: None,
                result: Err(denial),
            },
            Ok(claims) => Verdict {
                result: self
                    .check_target(&claims, req, now, spent)
                    .map(|tool| Allowed {
                        claims: claims.clone(),
                        tool,
                    }),
                claims: Some(claims),
            },
        }
    }

    /// Check 6, registration, and 7, audience: the tools this request reaches.
    fn resolve(&self, claims: &TokenClaims, target: Target<'_>) -> Result<Reached, Denial> {
        let registry = self
            .registry
            .read()
            .map_err(|_| unavailable(Check::Registration, "tool registry is unavailable"))?;
        if claims.origin == Origin::AuthorizationServer {
            // An authorization server's token names this resource server, never one of its
            // tools: every target checks `aud` against the server's own resource.
            let policy = self.resource_server.as_ref().ok_or(deny(
                Check::Issuer,
                "issuer is not an accepted authorization server",
            ))?;
            return match target {
                Target::Tool(tool_id) => {
                    let tool = registry
                        .get(tool_id)
                        .ok_or(deny(Check::Registration, "tool is not registered"))?;
                    policy.check_audience(&claims.aud)?;
                    Ok((vec![tool.clone()], Some(tool)))
                }
                Target::Server { server_id, .. } => {
                    policy.check_audience(&claims.aud)?;
                    let tools = registry
                        .with_resource(&policy.resource)
                        .into_iter()
                        .filter(|t| server_id.is_none_or(|id| t.server_id == id))
                        .collect();
                    Ok((tools, None))
                }
                Target::Audience(_) => {
                    Err(deny(Check::Audience, "token audience is not this tool"))
                }
            };
        }
        let aud = claims.aud.single();
        let audience_denial = || match &claims.aud {
            Audience::Missing => deny(Check::Audience, "token has no audience"),
            Audience::Many(_) => deny(Check::Audience, "token names several audiences"),
            _ => deny(Check::Audience, "token audience is not this tool"),
        };
        match target {
            Target::Tool(tool_id) => {
                let tool = registry
                    .get(tool_id)
                    .ok_or(deny(Check::Registration, "tool is not registered"))?;
                if aud != Some(tool.resource()) {
                    return Err(audience_denial());
                }
                Ok((vec![tool.clone()], Some(tool)))
            }
            Target::Server {
                resource,
                server_id,
            } => {
                let aud = aud.ok_or_else(audience_denial)?;
                // A tool's resource counts for its server only when the server is named: without
                // a server id, only the server's own resource does (with every tool sharing it).
                let tools: Vec<Arc<ToolEntry>> = match server_id {
                    Some(id) => registry
                        .with_resource(aud)
                        .into_iter()
                        .filter(|t| t.server_id == id)
                        .collect(),
                    None if aud == resource => registry.with_resource(aud),
                    None => Vec::new(),
                };
                if aud != resource && tools.is_empty() {
                    return Err(deny(Check::Audience, "token audience is not this server"));
                }
                Ok((tools, None))
            }
            Target::Audience(expected) => {
                if aud != Some(expected) || registry.has_resource(expected) {
                    return Err(audience_denial());
                }
                Ok((Vec::new(), None))
            }
        }
    }

    /// Checks 6–13 for a token that passed 1–5, in one order for every target.
    fn check_target(
        &self,
        claims: &Arc<TokenClaims>,
        req: &DecisionRequest<'_>,
        now: i64,
        spent: &mut Option<SpentProof>,
    ) -> Result<Option<Arc<ToolEntry>>, Denial> {
        // 6. registration, 7. audience
        let (tools, tool) = self.resolve(claims, req.target)?;
        // 8. capabilities
        for t in &tools {
            if !t
                .required_capabilities
                .iter()
                .all(|need| claims.caps.iter().any(|c| c == need))
            {
                return Err(deny(
                    Check::Capabilities,
                    "token lacks a required capability",
                ));
            }
        }
        // 9. blast radius
        for t in tools.iter().filter(|t| !t.max_blast_radius.is_empty()) {
            match &claims.blast_radius {
                Some(b) if blast::within(b, &t.max_blast_radius) => {}
                Some(_) => {
                    return Err(deny(
                        Check::BlastRadius,
                        "token blast radius exceeds the tool's maximum",
                    ))
                }
                None => {
                    return Err(deny(
                        Check::BlastRadius,
                        "tool limits blast radius and the token has none",
                    ))
                }
            }
        }
        // 10. revocation of the token, its subject, and every tool reached; fail closed
        let revoked = if tools.is_empty() {
            self.revocations
                .any_revoked(&claims.revocation_keys, None, now)
        } else {
            tools.iter().try_fold(false, |hit, t| {
                Ok(hit
                    || self.revocations.any_revoked(
                        &claims.revocation_keys,
                        Some(&t.tool_id),
                        now,
                    )?)
            })
        };
        match revoked {
            Ok(false) => {}
            Ok(true) => return Err(deny(Check::Revocation, "token, subject or tool is revoked")),
            Err(_) => {
                return Err(unavailable(
                    Check::Revocation,
                    "revocation status is unavailable",
                ))
            }
        }
        // 11. proof of possession of a key (DPoP): for every target once the token is bound,
        // for every reached tool that requires it, and whenever a proof is presented
        let (jkt, bound_to) = confirmation(claims)?;
        let proof =
            if jkt.is_some() || req.dpop_proof.is_some() || tools.iter().any(|t| t.requires_dpop())
            {
                Some(self.check_dpop(jkt, req, now)?)
            } else {
                None
            };
        // 12. certificate binding, for every target once the token is bound (a stolen bound
        // token is no bearer token anywhere), and for every reached tool that requires it
        if bound_to.is_some() || tools.iter().any(|t| t.requires_mtls()) {
            check_certificate_binding(bound_to, req.client_cert)?;
        }
        // 13. execution binding; the proof and then the nonce are spent last (only by a
        // request that passed all else)
        let mut spend_proof = |now| -> Result<(), Denial> {
            match &proof {
                Some(p) => {
                    let receipt = self
                        .dpop
                        .spend_once(p, now, spent.as_ref())
                        .map_err(dpop_denial)?;
                    *spent = Some(receipt);
                    Ok(())
                }
                None => Ok(()),
            }
        };
        match &tool {
            Some(t) if t.requires_execution => {
                check_execution(claims, t, req)?;
                spend_proof(now)?;
                self.spend_nonce(claims, now)?;
            }
            // A token bound to one tool call is never a pass for the server as a whole.
            None if ["exec_act", "inp_hash", "nonce"]
                .iter()
                .any(|k| claims.raw.contains_key(*k)) =>
            {
                return Err(deny(
                    Check::Execution,
                    "an execution-bound token is good for its one tool call only",
                ));
            }
            _ => spend_proof(now)?,
        }
        Ok(tool)
    }

    /// Check 11 for a request that needs a proof: the token bound by `cnf.jkt`, a proof for
    /// this method, URL and token, fresh, with this server's nonce if required, by that key.
    fn check_dpop(
        &self,
        jkt: Option<&str>,
        req: &DecisionRequest<'_>,
        now: i64,
    ) -> Result<Proof, Denial> {
        let jkt = jkt.ok_or(match req.dpop_proof {
            Some(_) => deny(Check::Dpop, NOT_DPOP_BOUND),
            None => deny(Check::Dpop, "tool requires a DPoP-bound token"),
        })?;
        let proof = req.dpop_proof.ok_or(deny(
            Check::Dpop,
            "token is DPoP-bound and was presented without a DPoP proof",
        ))?;
        let (Some(method), Some(url)) = (req.method, req.url) else {
            return Err(deny(
                Check::Dpop,
                "the request's method and URL are needed to check its DPoP proof",
            ));
        };
        let expected = dpop::Expected {
            method,
            url,
            access_token: Some(req.token),
        };
        let proof = self
            .dpop
            .check(proof, &expected, now)
            .map_err(dpop_denial)?;
        if !proof.matches(jkt) {
            return Err(dpop_denial(ProofError::KeyMismatch));
        }
        Ok(proof)
    }

    fn spend_nonce(&self, claims: &TokenClaims, now: i64) -> Result<(), Denial> {
        let nonce = claims::string(&claims.raw, "nonce")
            .ok()
            .flatten()
            .filter(|n| !n.is_empty())
            .ok_or(deny(Check::Execution, "token has no execution nonce"))?;
        if claims
            .times
            .iat
            .is_none_or(|iat| iat < self.nonces.not_before)
        {
            return Err(deny(
                Check::Execution,
                "execution-bound token predates this verifier; exchange a new one",
            ));
        }
        let until = claims.times.exp.saturating_add(self.leeway);
        match self.nonces.consume(nonce, until, now) {
            Ok(()) => Ok(()),
            Err(NonceError::Replayed) => {
                Err(deny(Check::Execution, "execution nonce was already used"))
            }
            Err(NonceError::Full | NonceError::Unavailable) => Err(unavailable(
                Check::Execution,
                "execution nonces cannot be recorded right now",
            )),
        }
    }
}

/// The `cnf` member of a certificate-bound token (RFC 8705 §3.1).
pub const X5T_S256: &str = "x5t#S256";
/// The `cnf` member of a DPoP-bound token (RFC 9449 §6.1).
pub const JKT: &str = "jkt";

/// The reason a proof presented with an unbound token is refused.
const NOT_DPOP_BOUND: &str = "a DPoP proof was presented with a token that is not DPoP-bound";

/// A token's confirmation (`cnf`, RFC 7800): the DPoP key thumbprint and the certificate
/// thumbprint it names. Any other member, or a `jkt` that is not a thumbprint, is refused at
/// check 11: a binding toolgate cannot check is never ignored.
fn confirmation(claims: &TokenClaims) -> Result<(Option<&str>, Option<&Value>), Denial> {
    let Some(cnf) = claims.raw.get("cnf") else {
        return Ok((None, None));
    };
    let unknown = || deny(Check::Dpop, "token's confirmation method is not supported");
    let cnf = cnf.as_object().ok_or_else(unknown)?;
    if cnf.is_empty() || cnf.keys().any(|k| k != JKT && k != X5T_S256) {
        return Err(unknown());
    }
    let jkt = match cnf.get(JKT) {
        None => None,
        Some(Value::String(s)) if s.len() == 43 => Some(s.as_str()),
        Some(_) => return Err(deny(Check::Dpop, "token's DPoP binding is malformed")),
    };
    Ok((jkt, cnf.get(X5T_S256)))
}

/// A proof's refusal as a check-11 denial; a full replay cache is a retryable one.
fn dpop_denial(e: ProofError) -> Denial {
    Denial {
        check: Check::Dpop,
        reason: e.description(),
        unavailable: e == ProofError::Full,
    }
}

impl Denial {
    /// The proof's fault when this denial is one (`invalid_dpop_proof`, `use_dpop_nonce`, or a
    /// full replay cache): the resource server then answers with a `DPoP` challenge naming
    /// it. `None` for every other denial, the token's own faults included (`invalid_token`).
    pub fn dpop_error(&self) -> Option<ProofError> {
        if self.check != Check::Dpop {
            return None;
        }
        dpop::ALL_ERRORS
            .iter()
            .copied()
            .find(|e| e.description() == self.reason)
    }
}

/// Check 12: the token's `cnf.x5t#S256` against the presented certificate. The reasons never
/// carry either thumbprint.
fn check_certificate_binding(
    bound_to: Option<&Value>,
    presented: Option<&ClientCertificate>,
) -> Result<(), Denial> {
    let expected = match bound_to {
        None => return Err(deny(Check::Mtls, "tool requires a certificate-bound token")),
        Some(Value::String(s)) if s.len() == 43 => s,
        Some(_) => {
            return Err(deny(
                Check::Mtls,
                "token's certificate binding is malformed",
            ))
        }
    };
    let cert = presented.ok_or(deny(
        Check::Mtls,
        "token is certificate-bound and no client certificate was presented",
    ))?;
    if !constant_time_eq(expected.as_bytes(), cert.thumbprint().as_bytes()) {
        return Err(deny(Check::Mtls, "certificate binding mismatch"));
    }
    Ok(())
}

/// Equality whose time does not depend on where two equally long values differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_execution(
    claims: &TokenClaims,
    tool: &ToolEntry,
    req: &DecisionRequest<'_>,
) -> Result<(), Denial> {
    let exec = |name| claims::string(&claims.raw, name).ok().flatten();
    let act = exec("exec_act").ok_or(deny(Check::Execution, "token has no exec_act"))?;
    if !tool.allowed_operations.is_empty() && !tool.allowed_operations.iter().any(|o| o == act) {
        return Err(deny(
            Check::Execution,
            "operation is not allowed for this tool",
        ));
    }
    let inp_hash = exec("inp_hash").ok_or(deny(Check::Execution, "token has no inp_hash"))?;
    if req.body_hash != Some(inp_hash) {
        return Err(deny(
            Check::Execution,
            "request body hash does not match the token",
        ));
    }
    if !tool.allowed_targets.is_empty() {
        let target = exec("target").ok_or(deny(Check::Execution, "token has no target"))?;
        if !tool.allowed_targets.iter().any(|t| t == target) {
            return Err(deny(
                Check::Execution,
                "target is not allowed for this tool",
            ));
        }
    }
    let htm = exec("htm").ok_or(deny(Check::Execution, "token has no htm"))?;
    if req.method != Some(htm) {
        return Err(deny(
            Check::Execution,
            "request method does not match the token",
        ));
    }
    let htu = exec("htu").ok_or(deny(Check::Execution, "token has no htu"))?;
    let presented = req.url.and_then(resource::normalize_http_url);
    if presented.is_none() || presented != resource::normalize_http_url(htu) {
        return Err(deny(
            Check::Execution,
            "request URL does not match the token",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::jose::{jws::encode_signed, SigningKey, TYP_ACCESS_TOKEN};
    use crate::mtls::{x5t_s256, ClientCertificate};
    use crate::registry::ToolInput;

    const NOW: i64 = 1_800_000_000;
    const ISS: &str = "https://toolgate.test";

    struct OneKey(Jwk);
    impl KeySource for OneKey {
        fn key(&self, kid: &str) -> Option<Jwk> {
            (self.0.kid.as_deref() == Some(kid)).then(|| self.0.clone())
        }
    }

    fn setup() -> (Verifier, SigningKey) {
        let key = SigningKey::generate().unwrap();
        let tools = [
            json!({"tool_id": "bound", "resource_uri": "https://t/bound", "server_id": "s",
                   "sender_constraint": "mtls"}),
            json!({"tool_id": "plain", "resource_uri": "https://t/plain", "server_id": "s"}),
        ];
        let entries = tools
            .into_iter()
            .map(|t| {
                serde_json::from_value::<ToolInput>(t)
                    .unwrap()
                    .validate("2027-01-01T00:00:00Z")
                    .unwrap()
            })
            .collect();
        let verifier = Verifier::new(
            VerifierConfig {
                issuer: ISS.into(),
                leeway: 0,
                keys: Arc::new(OneKey(key.public_jwk())),
                clock: Arc::new(ManualClock::new(NOW)),
            },
            Arc::new(RwLock::new(Registry::from_entries(entries))),
            Arc::new(RevocationIndex::default()),
        );
        (verifier, key)
    }

    fn mint(key: &SigningKey, aud: &str, cnf: Option<Value>) -> String {
        let mut claims = json!({"iss": ISS, "sub": "agent", "aud": aud, "jti": aud,
                                "iat": NOW, "exp": NOW + 300});
        if let (Some(cnf), Some(obj)) = (cnf, claims.as_object_mut()) {
            obj.insert("cnf".into(), cnf);
        }
        encode_signed(key, TYP_ACCESS_TOKEN, claims.as_object().unwrap()).unwrap()
    }

    fn check(
        v: &Verifier,
        token: &str,
        target: Target<'_>,
        cert: Option<&ClientCertificate>,
    ) -> Option<(Check, &'static str)> {
        v.verify(&DecisionRequest::new(token, target).with_client_cert(cert))
            .err()
            .map(|d| (d.check, d.reason))
    }

    #[test]
    fn a_certificate_bound_token_needs_its_certificate() {
        let (v, key) = setup();
        let mine = ClientCertificate::new(vec![b"my cert".to_vec()]).unwrap();
        let other = ClientCertificate::new(vec![b"other cert".to_vec()]).unwrap();
        let cnf = json!({"x5t#S256": x5t_s256(b"my cert")});
        let bound = mint(&key, "https://t/bound", Some(cnf.clone()));
        let tool = Target::Tool("bound");
        assert_eq!(check(&v, &bound, tool, Some(&mine)), None);
        assert_eq!(
            check(&v, &bound, tool, Some(&other)),
            Some((Check::Mtls, "certificate binding mismatch"))
        );
        assert_eq!(
            check(&v, &bound, tool, None),
            Some((
                Check::Mtls,
                "token is certificate-bound and no client certificate was presented"
            ))
        );
        // Unbound token for a tool that requires binding, with or without a certificate.
        let unbound = mint(&key, "https://t/bound", None);
        for cert in [None, Some(&mine)] {
            assert_eq!(
                check(&v, &unbound, tool, cert),
                Some((Check::Mtls, "tool requires a certificate-bound token"))
            );
        }
        // A bound token for a tool that does not require binding is still checked.
        let bound_plain = mint(&key, "https://t/plain", Some(cnf));
        assert_eq!(
            check(&v, &bound_plain, Target::Tool("plain"), Some(&mine)),
            None
        );
        assert_eq!(
            check(&v, &bound_plain, Target::Tool("plain"), None).map(|d| d.0),
            Some(Check::Mtls)
        );
        // An unbound token for a plain tool needs no certificate.
        let plain = mint(&key, "https://t/plain", None);
        assert_eq!(check(&v, &plain, Target::Tool("plain"), None), None);
    }

    #[test]
    fn server_targets_bind_when_a_reached_tool_requires_it() {
        let (v, key) = setup();
        let server = Target::Server {
            resource: "https://t/bound",
            server_id: Some("s"),
        };
        let unbound = mint(&key, "https://t/bound", None);
        assert_eq!(
            check(&v, &unbound, server, None).map(|d| d.0),
            Some(Check::Mtls)
        );
        let mine = ClientCertificate::new(vec![b"my cert".to_vec()]).unwrap();
        let bound = mint(
            &key,
            "https://t/bound",
            Some(json!({"x5t#S256": mine.thumbprint()})),
        );
        assert_eq!(check(&v, &bound, server, Some(&mine)), None);
    }

    #[test]
    fn unknown_or_malformed_confirmations_are_refused_by_dpop() {
        let (v, key) = setup();
        let mine = ClientCertificate::new(vec![b"my cert".to_vec()]).unwrap();
        for cnf in [
            json!({"jkt": "abc"}),
            json!({"x5t#S256": mine.thumbprint(), "jkt": "abc"}),
            json!({}),
            json!("x5t#S256"),
        ] {
            let t = mint(&key, "https://t/plain", Some(cnf));
            assert_eq!(
                check(&v, &t, Target::Tool("plain"), Some(&mine)).map(|d| d.0),
                Some(Check::Dpop)
            );
        }
        for bad in [json!(7), json!("short"), json!(null)] {
            let t = mint(&key, "https://t/plain", Some(json!({"x5t#S256": bad})));
            assert_eq!(
                check(&v, &t, Target::Tool("plain"), Some(&mine)),
                Some((Check::Mtls, "token's certificate binding is malformed"))
            );
        }
    }

    /// A proof by `key` for `POST https://t/dpop` going with `token`, made at `iat`.
    fn proof(key: &SigningKey, token: &str, jti: &str, iat: i64) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk().to_json()});
        let claims = json!({"jti": jti, "htm": "POST", "htu": "https://t/dpop", "iat": iat,
                            "ath": dpop::token_hash(token)});
        let input = format!(
            "{}.{}",
            jose::b64::encode(header.to_string().as_bytes()),
            jose::b64::encode(claims.to_string().as_bytes())
        );
        let sig = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", jose::b64::encode(&sig))
    }

    #[test]
    fn a_dpop_bound_token_needs_a_fresh_proof_by_its_key() {
        let (v, key) = setup();
        let v = {
            let tool = serde_json::from_value::<ToolInput>(json!({"tool_id": "dpop",
                "resource_uri": "https://t/dpop", "sender_constraint": "dpop"}))
            .unwrap()
            .validate("2027-01-01T00:00:00Z")
            .unwrap();
            v.registry.write().unwrap().insert(tool);
            // Started at NOW: proofs must post-date the start plus the window.
            v.with_dpop(60, None)
        };
        let holder = SigningKey::generate().unwrap();
        let thief = SigningKey::generate().unwrap();
        let jkt = holder.public_jwk().thumbprint();
        let bound = mint(&key, "https://t/dpop", Some(json!({"jkt": jkt})));
        let unbound = mint(&key, "https://t/dpop", None);
        let at = NOW + 100;
        let decide = |token: &str, proof: Option<&str>, method: &str| {
            v.decide_at(
                &DecisionRequest::new(token, Target::Tool("dpop"))
                    .with_http(method, Some("https://t/dpop"))
                    .with_dpop_proof(proof),
                at,
            )
            .result
            .err()
            .map(|d| (d.check, d.reason))
        };
        assert_eq!(
            decide(
                &bound,
                Some(&proof(&holder, &bound, "p0", NOW + 60)),
                "POST"
            ),
            Some((Check::Dpop, ProofError::Predates.description()))
        );
        let fresh = proof(&holder, &bound, "p1", at);
        assert_eq!(decide(&bound, Some(&fresh), "POST"), None);
        let denied = |reason| Some((Check::Dpop, reason));
        assert_eq!(
            decide(&bound, Some(&fresh), "POST"),
            denied("DPoP proof was already used")
        );
        assert_eq!(
            decide(&bound, None, "POST"),
            denied("token is DPoP-bound and was presented without a DPoP proof")
        );
        assert_eq!(
            decide(&bound, Some(&proof(&thief, &bound, "p2", at)), "POST"),
            denied("DPoP proof key does not match the token binding")
        );
        assert_eq!(
            decide(&bound, Some(&proof(&holder, &bound, "p3", at)), "GET"),
            denied("DPoP proof htm does not match the request method")
        );
        assert_eq!(
            decide(&bound, Some(&proof(&holder, &unbound, "p4", at)), "POST"),
            denied("DPoP proof ath does not match the access token")
        );
        assert_eq!(
            decide(&bound, Some(&proof(&holder, &bound, "p5", at - 61)), "POST"),
            denied("DPoP proof iat is too old")
        );
        assert_eq!(
            decide(&unbound, None, "POST"),
            denied("tool requires a DPoP-bound token")
        );
        assert_eq!(
            decide(&unbound, Some(&proof(&holder, &unbound, "p6", at)), "POST"),
            denied(NOT_DPOP_BOUND)
        );
        // The replay cache holds only proofs that passed everything: the refused ones above
        // are still good once.
        assert_eq!(
            decide(&bound, Some(&proof(&holder, &bound, "p2", at)), "POST"),
            None
        );
        assert_eq!(v.dpop().replay.len(), 2);
        let no_url = v.decide_at(
            &DecisionRequest::new(&bound, Target::Tool("dpop"))
                .with_dpop_proof(Some(&proof(&holder, &bound, "p7", at))),
            at,
        );
        assert_eq!(no_url.result.err().map(|d| d.check), Some(Check::Dpop));
        let d = v
            .decide_at(&DecisionRequest::new(&bound, Target::Tool("dpop")), at)
            .result
            .unwrap_err();
        assert_eq!(d.dpop_error(), None);
        let d = v
            .decide_at(
                &DecisionRequest::new(&bound, Target::Tool("dpop"))
                    .with_http("POST", Some("https://t/dpop"))
                    .with_dpop_proof(Some("x.y.z")),
                at,
            )
            .result
            .unwrap_err();
        assert_eq!(d.dpop_error(), Some(ProofError::Malformed));
    }

    #[test]
    fn one_http_request_spends_its_proof_once_across_its_decisions() {
        let (v, key) = setup();
        let v = {
            for (id, server) in [("dpop", "s"), ("dpop2", "s")] {
                let tool = serde_json::from_value::<ToolInput>(json!({"tool_id": id,
                    "resource_uri": "https://t/dpop", "server_id": server,
                    "sender_constraint": "dpop"}))
                .unwrap()
                .validate("2027-01-01T00:00:00Z")
                .unwrap();
                v.registry.write().unwrap().insert(tool);
            }
            v.with_dpop(60, None)
        };
        let holder = SigningKey::generate().unwrap();
        let bound = mint(
            &key,
            "https://t/dpop",
            Some(json!({"jkt": holder.public_jwk().thumbprint()})),
        );
        let at = NOW + 100;
        let fresh = proof(&holder, &bound, "b1", at);
        let req = |tool| {
            DecisionRequest::new(&bound, Target::Tool(tool))
                .with_http("POST", Some("https://t/dpop"))
                .with_dpop_proof(Some(&fresh))
        };
        // One HTTP request, two decisions (a batch calling two tools): one spend.
        let mut spent = None;
        assert!(v
            .decide_in_request(&req("dpop"), at, &mut spent)
            .result
            .is_ok());
        assert!(spent.is_some());
        assert!(v
            .decide_in_request(&req("dpop2"), at, &mut spent)
            .result
            .is_ok());
        assert_eq!(v.dpop().replay.len(), 1);
        // The receipt still checks everything else: another method is refused.
        let other = DecisionRequest::new(&bound, Target::Tool("dpop"))
            .with_http("GET", Some("https://t/dpop"))
            .with_dpop_proof(Some(&fresh));
        assert_eq!(
            v.decide_in_request(&other, at, &mut spent)
                .result
                .unwrap_err()
                .dpop_error(),
            Some(ProofError::Method)
        );
        // Another HTTP request (no receipt) with the same proof: a replay.
        let d = v.decide_in_request(&req("dpop"), at, &mut None).result;
        assert_eq!(d.unwrap_err().dpop_error(), Some(ProofError::Replayed));
        // A receipt names one proof: with it, another proof is still spent, and once only.
        let second = proof(&holder, &bound, "b2", at);
        let req2 = DecisionRequest::new(&bound, Target::Tool("dpop"))
            .with_http("POST", Some("https://t/dpop"))
            .with_dpop_proof(Some(&second));
        let mut old = spent;
        assert!(v.decide_in_request(&req2, at, &mut old).result.is_ok());
        assert_ne!(old, spent);
        assert_eq!(v.dpop().replay.len(), 2);
        let mut stale = spent;
        let d = v.decide_in_request(&req2, at, &mut stale).result;
        assert_eq!(d.unwrap_err().dpop_error(), Some(ProofError::Replayed));
        // A receipt of another verifier's cache is no receipt here.
        let (w, _) = setup();
        let w = w.with_dpop(60, None);
        let other_cache_receipt = w.dpop().spend_once(
            &dpop::Proof::parse(&proof(&holder, &bound, "b3", at)).unwrap(),
            at,
            None,
        );
        let mut foreign = other_cache_receipt.ok();
        let third = proof(&holder, &bound, "b3", at);
        let req3 = DecisionRequest::new(&bound, Target::Tool("dpop"))
            .with_http("POST", Some("https://t/dpop"))
            .with_dpop_proof(Some(&third));
        assert!(v.decide_in_request(&req3, at, &mut foreign).result.is_ok());
        assert_eq!(v.dpop().replay.len(), 3);
    }

    const AS: &str = "https://as.example";
    const SERVER: &str = "https://t/server";

    struct OneServer(Jwk);
    impl AuthorizationServerKeys for OneServer {
        fn is_authorization_server(&self, issuer: &str) -> bool {
            issuer == AS
        }
        fn key(&self, issuer: &str, kid: Option<&str>) -> Option<Jwk> {
            (issuer == AS && (kid.is_none() || kid == self.0.kid.as_deref()))
                .then(|| self.0.clone())
        }
    }

    /// A verifier for resource `SERVER` that also accepts `AS`'s tokens (multi-audience
    /// lists when `multi`), with a tool "scoped" needing capability `read`.
    fn resource_server(multi: bool) -> (Verifier, SigningKey, SigningKey) {
        let (v, own) = setup();
        let scoped = serde_json::from_value::<ToolInput>(json!({"tool_id": "scoped",
            "resource_uri": SERVER, "server_id": "s", "required_capabilities": ["read"]}))
        .unwrap()
        .validate("2027-01-01T00:00:00Z")
        .unwrap();
        let plain = serde_json::from_value::<ToolInput>(
            json!({"tool_id": "plain", "resource_uri": "https://t/plain", "server_id": "s"}),
        )
        .unwrap()
        .validate("2027-01-01T00:00:00Z")
        .unwrap();
        *v.registry.write().unwrap() = Registry::from_entries(vec![scoped, plain]);
        let as_key = SigningKey::generate().unwrap();
        let v = v.with_authorization_servers(ResourcePolicy {
            resource: SERVER.into(),
            allow_multi_audience: multi,
            servers: Arc::new(OneServer(as_key.public_jwk())),
        });
        (v, own, as_key)
    }

    fn as_token(key: &SigningKey, typ: &str, claims: Value) -> String {
        let mut base = json!({"iss": AS, "sub": "user-1", "aud": SERVER, "jti": "j1",
                              "iat": NOW, "exp": NOW + 300, "scope": "read write"});
        for (k, v) in claims.as_object().unwrap() {
            match v {
                Value::Null => base.as_object_mut().unwrap().remove(k),
                v => base.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        encode_signed(key, typ, base.as_object().unwrap()).unwrap()
    }

    #[test]
    fn an_authorization_servers_token_is_checked_for_this_resource() {
        let (v, own, as_key) = resource_server(false);
        let server = Target::Server {
            resource: SERVER,
            server_id: Some("s"),
        };
        let ok = as_token(&as_key, "at+jwt", json!({}));
        assert_eq!(check(&v, &ok, Target::Tool("scoped"), None), None);
        assert_eq!(check(&v, &ok, server, None), None);
        let claims = v.verify(&DecisionRequest::new(&ok, server)).unwrap().claims;
        assert_eq!(claims.origin, Origin::AuthorizationServer);
        assert_eq!(claims.caps, ["read", "write"]);
        // A tool of the server takes the server's audience (never the tool's own resource).
        assert_eq!(check(&v, &ok, Target::Tool("plain"), None), None);
        for typ in ["JWT", "application/at+jwt"] {
            let t = as_token(&as_key, typ, json!({}));
            assert_eq!(check(&v, &t, server, None), None, "{typ}");
        }
        let mismatch = Some((Check::Audience, "token audience is not this server"));
        let other = as_token(&as_key, "at+jwt", json!({"aud": "https://t/other"}));
        assert_eq!(check(&v, &other, server, None), mismatch);
        assert_eq!(check(&v, &other, Target::Tool("scoped"), None), mismatch);
        let tools_own = as_token(&as_key, "at+jwt", json!({"aud": "https://t/plain"}));
        assert_eq!(check(&v, &tools_own, Target::Tool("plain"), None), mismatch);
        let many = as_token(
            &as_key,
            "at+jwt",
            json!({"aud": [SERVER, "https://t/other"]}),
        );
        assert_eq!(
            check(&v, &many, server, None),
            Some((Check::Audience, "token names several audiences"))
        );
        let one = as_token(&as_key, "at+jwt", json!({"aud": [SERVER]}));
        assert_eq!(check(&v, &one, server, None), None);
        let none = as_token(&as_key, "at+jwt", json!({"aud": null}));
        assert_eq!(
            check(&v, &none, server, None),
            Some((Check::Audience, "token has no audience"))
        );
        // Scope against the tool's required capabilities.
        let narrow = as_token(&as_key, "at+jwt", json!({"scope": "write"}));
        assert_eq!(
            check(&v, &narrow, Target::Tool("scoped"), None),
            Some((Check::Capabilities, "token lacks a required capability"))
        );
        // `caps` is toolgate's claim, not an authorization server's.
        let caps = as_token(&as_key, "at+jwt", json!({"scope": null, "caps": ["read"]}));
        assert_eq!(
            check(&v, &caps, Target::Tool("scoped"), None).map(|d| d.0),
            Some(Check::Capabilities)
        );
        let bad_scope = as_token(&as_key, "at+jwt", json!({"scope": ["read"]}));
        assert_eq!(
            check(&v, &bad_scope, server, None).map(|d| d.0),
            Some(Check::Malformed)
        );
        // typ naming another kind of token, time, required claims, signature.
        for typ in ["secevent+jwt", "dpop+jwt", "toolgate-agent+jwt"] {
            let t = as_token(&as_key, typ, json!({}));
            assert_eq!(
                check(&v, &t, server, None),
                Some((Check::Malformed, "token is not an access token (typ)")),
                "{typ}"
            );
        }
        let expired = as_token(&as_key, "at+jwt", json!({"exp": NOW}));
        assert_eq!(
            check(&v, &expired, server, None).map(|d| d.0),
            Some(Check::Expired)
        );
        let early = as_token(&as_key, "at+jwt", json!({"nbf": NOW + 10}));
        assert_eq!(
            check(&v, &early, server, None).map(|d| d.0),
            Some(Check::NotYetValid)
        );
        for missing in ["exp", "sub", "jti"] {
            let t = as_token(&as_key, "at+jwt", json!({missing: null}));
            assert_eq!(
                check(&v, &t, server, None).map(|d| d.0),
                Some(Check::Malformed)
            );
        }
        let forged = as_token(&own, "at+jwt", json!({}));
        assert_eq!(
            check(&v, &forged, server, None),
            Some((Check::Signature, "signing key is not known"))
        );
        // Never an agent token at exchange.
        assert_eq!(
            check(&v, &ok, Target::Audience(SERVER), None).map(|d| d.0),
            Some(Check::Malformed)
        );
        // Revocation of the subject (with its issuer) and of the jti.
        let key = crate::revocation::key(crate::revocation::Format::IssSub, AS, "user-1");
        v.revocations.replace([(key, i64::MAX)]).unwrap();
        assert_eq!(
            check(&v, &ok, server, None).map(|d| d.0),
            Some(Check::Revocation)
        );
        let key = crate::revocation::key(crate::revocation::Format::Jti, "", "j1");
        v.revocations.replace([(key, i64::MAX)]).unwrap();
        assert_eq!(
            check(&v, &ok, server, None).map(|d| d.0),
            Some(Check::Revocation)
        );
        // A foreign issuer that only looks like it is checked as toolgate's (and fails).
        let foreign = as_token(&as_key, "at+jwt", json!({"iss": "https://other.example"}));
        assert_eq!(
            check(&v, &foreign, server, None).map(|d| d.0),
            Some(Check::Signature)
        );
    }

    #[test]
    fn several_audiences_only_when_allowed_and_never_a_star() {
        let (v, _, as_key) = resource_server(true);
        let server = Target::Server {
            resource: SERVER,
            server_id: Some("s"),
        };
        let many = as_token(
            &as_key,
            "at+jwt",
            json!({"aud": [SERVER, "https://t/other"]}),
        );
        assert_eq!(check(&v, &many, server, None), None);
        let star = as_token(&as_key, "at+jwt", json!({"aud": [SERVER, "*"]}));
        assert_eq!(
            check(&v, &star, server, None).map(|d| d.0),
            Some(Check::Audience)
        );
        let without = as_token(
            &as_key,
            "at+jwt",
            json!({"aud": ["https://t/a", "https://t/b"]}),
        );
        assert_eq!(
            check(&v, &without, server, None).map(|d| d.0),
            Some(Check::Audience)
        );
        let star_alone = as_token(&as_key, "at+jwt", json!({"aud": "*"}));
        assert_eq!(
            check(&v, &star_alone, server, None).map(|d| d.0),
            Some(Check::Audience)
        );
    }

    #[test]
    fn without_a_policy_an_authorization_servers_token_is_not_toolgates() {
        let (v, _) = setup();
        let as_key = SigningKey::generate().unwrap();
        let t = as_token(&as_key, "at+jwt", json!({"aud": "https://t/plain"}));
        assert_eq!(
            check(&v, &t, Target::Tool("plain"), None).map(|d| d.0),
            Some(Check::Signature)
        );
    }

    #[test]
    fn every_check_has_a_distinct_name_in_order() {
        let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
        let dpop = names.iter().position(|n| *n == "dpop").unwrap();
        assert_eq!(names.get(dpop + 1), Some(&"mtls"));
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
