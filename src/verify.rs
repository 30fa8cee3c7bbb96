//! The verify pipeline: one ordered list of checks, first failure wins, shared by every entry
//! point (the REST endpoint, exchange's own-token path, and in-process callers).

use crate::blast;
use crate::claims::{self, Audience, Malformed};
use crate::jose::{self, Header, JoseError, Jwk};
use crate::registry::{Registry, ToolEntry};
use crate::revocation::{Identity, RevocationIndex};
use ring::digest::{digest, SHA256};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Longest clock skew any deployment may configure.
pub const MAX_LEEWAY: i64 = 60;
/// Tokens whose signatures are remembered; the cache is emptied when full.
const CACHE_CAPACITY: usize = 4096;

/// The name of the check that denied, as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Registration,
    Audience,
    Capabilities,
    BlastRadius,
    Revocation,
    Dpop,
    Execution,
}

impl Check {
    pub const ALL: [Check; 13] = [
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
        Check::Execution,
    ];

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
            Check::Execution => "execution",
        }
    }
}

/// Why a token was refused: the check, and a fixed sentence (never attacker text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub check: Check,
    pub reason: &'static str,
    /// The answer could not be determined (a store failure): denied, and worth a retry.
    pub unavailable: bool,
}

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
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
}

impl TimeClaims {
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

/// A toolgate-minted token whose signature has been verified, its claims read strictly.
#[derive(Debug, Clone)]
pub struct TokenClaims {
    pub raw: Map<String, Value>,
    pub times: TimeClaims,
    pub iss: Option<String>,
    pub sub: String,
    pub jti: String,
    pub aud: Audience,
    pub caps: Vec<String>,
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

    fn read(raw: Map<String, Value>) -> Result<Self, Denial> {
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
        let caps = claims::string_list(&raw, "caps")?.unwrap_or_default();
        let blast_radius = claims::string(&raw, "blast_radius")?.map(str::to_string);
        let mut claims = Self {
            raw,
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

/// One verify call's input.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyRequest<'a> {
    pub token: &'a str,
    pub tool_id: &'a str,
    pub request_body_hash: Option<&'a str>,
    pub dpop_proof: Option<&'a str>,
}

/// A decision with whatever is known of the token.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub claims: Option<Arc<TokenClaims>>,
    pub result: Result<Allowed, Denial>,
}

/// An allowed call: the token's claims and the tool they were checked against.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub claims: Arc<TokenClaims>,
    pub tool: Arc<ToolEntry>,
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
            "tool_id": self.tool.tool_id,
            "resource": self.tool.resource(),
        });
        if let Some(obj) = out.as_object_mut() {
            if c.raw.contains_key("caps") {
                obj.insert("caps".into(), json!(c.caps));
            }
            if let Some(b) = &c.blast_radius {
                obj.insert("blast_radius".into(), json!(b));
            }
            if self.tool.requires_execution {
                let pick = |k: &str| c.raw.get(k).cloned().unwrap_or(Value::Null);
                obj.insert(
                    "execution".into(),
                    json!({"exec_act": pick("exec_act"), "target": pick("target"), "inp_hash": pick("inp_hash")}),
                );
            }
        }
        out
    }
}

/// Where the pipeline finds the public key named by a token's `kid`: the daemon's own key
/// ring, or a guard's copy of toolgate's JWKS.
pub trait KeySource: Send + Sync {
    fn key(&self, kid: &str) -> Option<Jwk>;
}

/// Everything the pipeline consults. Cheap to share; every entry point holds the same one.
pub struct Verifier {
    pub issuer: String,
    pub leeway: i64,
    pub keys: Arc<dyn KeySource>,
    pub registry: Arc<RwLock<Registry>>,
    pub revocations: Arc<RevocationIndex>,
    cache: RwLock<HashMap<[u8; 32], Arc<TokenClaims>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(
        issuer: String,
        leeway: i64,
        keys: Arc<dyn KeySource>,
        registry: Arc<RwLock<Registry>>,
        revocations: Arc<RevocationIndex>,
    ) -> Self {
        Self {
            issuer,
            leeway: leeway.clamp(0, MAX_LEEWAY),
            keys,
            registry,
            revocations,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Forget remembered signatures (after the key set changed).
    pub fn clear_cache(&self) {
        if let Ok(mut map) = self.cache.write() {
            map.clear();
        }
    }

    /// Checks 1–5 for a token toolgate minted: shape, header, signature (remembered per token,
    /// so a repeated token costs one hash), then time and issuer on every call.
    pub fn check_own_token(&self, token: &str, now: i64) -> Result<Arc<TokenClaims>, Denial> {
        if token.len() > jose::MAX_TOKEN_BYTES {
            return Err(JoseError::TooLarge.into());
        }
        let fingerprint: [u8; 32] = digest(&SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| deny(Check::Malformed, "token could not be hashed"))?;
        let cached = match self.cache.read() {
            Ok(map) => map.get(&fingerprint).cloned(),
            Err(_) => None,
        };
        let claims = match cached {
            Some(c) => c,
            None => {
                let raw =
                    verify_signature(token, |h| h.kid.as_deref().and_then(|k| self.keys.key(k)))?;
                let claims = Arc::new(TokenClaims::read(raw)?);
                if let Ok(mut map) = self.cache.write() {
                    if map.len() >= CACHE_CAPACITY {
                        map.clear();
                    }
                    map.insert(fingerprint, claims.clone());
                }
                claims
            }
        };
        claims.times.check(now, self.leeway)?;
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(deny(Check::Issuer, "issuer is not this toolgate"));
        }
        Ok(claims)
    }

    /// The whole pipeline, checks 1–12 in order; the first failure wins.
    pub fn verify(&self, req: &VerifyRequest<'_>, now: i64) -> Result<Allowed, Denial> {
        self.decide(req, now).result
    }

    /// The pipeline's answer, with the token's claims whenever its signature checked out (so
    /// that a denial can still be attributed to a subject in the audit log).
    pub fn decide(&self, req: &VerifyRequest<'_>, now: i64) -> Verdict {
        match self.check_own_token(req.token, now) {
            Err(denial) => Verdict {
                claims: None,
                result: Err(denial),
            },
            Ok(claims) => Verdict {
                result: self.check_for_tool(&claims, req, now).map(|tool| Allowed {
                    claims: claims.clone(),
                    tool,
                }),
                claims: Some(claims),
            },
        }
    }

    /// Checks 6–12 for a token that passed 1–5.
    fn check_for_tool(
        &self,
        claims: &Arc<TokenClaims>,
        req: &VerifyRequest<'_>,
        now: i64,
    ) -> Result<Arc<ToolEntry>, Denial> {
        // 6. registration
        let tool = match self.registry.read() {
            Ok(r) => r.get(req.tool_id),
            Err(_) => {
                return Err(Denial {
                    check: Check::Registration,
                    reason: "tool registry is unavailable",
                    unavailable: true,
                })
            }
        }
        .ok_or(deny(Check::Registration, "tool is not registered"))?;
        // 7. audience: exactly one, byte for byte the tool's canonical resource
        match &claims.aud {
            Audience::One(aud) if aud == tool.resource() => {}
            Audience::Missing => return Err(deny(Check::Audience, "token has no audience")),
            Audience::Many(_) => {
                return Err(deny(Check::Audience, "token names several audiences"))
            }
            _ => return Err(deny(Check::Audience, "token audience is not this tool")),
        }
        // 8. capabilities
        if !tool
            .required_capabilities
            .iter()
            .all(|need| claims.caps.iter().any(|c| c == need))
        {
            return Err(deny(
                Check::Capabilities,
                "token lacks a required capability",
            ));
        }
        // 9. blast radius
        if !tool.max_blast_radius.is_empty() {
            match &claims.blast_radius {
                Some(b) if blast::within(b, &tool.max_blast_radius) => {}
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
        // 10. revocation, fail closed
        match self
            .revocations
            .any_revoked(&claims.revocation_keys, Some(&tool.tool_id), now)
        {
            Ok(false) => {}
            Ok(true) => return Err(deny(Check::Revocation, "token, subject or tool is revoked")),
            Err(_) => {
                return Err(Denial {
                    check: Check::Revocation,
                    reason: "revocation status is unavailable",
                    unavailable: true,
                })
            }
        }
        // 11. proof-of-possession: toolgate does not bind tokens yet, so a bound one cannot pass
        if claims.raw.contains_key("cnf") {
            return Err(deny(
                Check::Dpop,
                "token is key-bound and proof-of-possession is not supported",
            ));
        }
        // 12. execution binding
        if tool.requires_execution {
            check_execution(claims, &tool, req.request_body_hash)?;
        }
        Ok(tool)
    }
}

fn check_execution(
    claims: &TokenClaims,
    tool: &ToolEntry,
    body_hash: Option<&str>,
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
    if body_hash != Some(inp_hash) {
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
    Ok(())
}
