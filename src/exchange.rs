//! RFC 8693 token exchange: a subject token in, a short-lived token bound to exactly one
//! audience out.

use crate::claims::{self, Audience};
use crate::config::{TrustedClientCa, TrustedIssuer};
use crate::ids::random_id;
use crate::jose::{self, b64, json, SigningKey, TokenType};
use crate::mtls::ClientCertificate;
use crate::registry::ToolEntry;
use crate::resource;
use crate::revocation::Identity;
use crate::verify::{self, Check, DecisionRequest, Target, TimeClaims, Verifier};
use serde_json::{json, Map, Value};

pub use crate::oauth::{
    GRANT_TYPE, TYPE_ACCESS_TOKEN, TYPE_AGENT_A2A, TYPE_AGENT_MCP, TYPE_JWT, TYPE_MTLS, TYPE_OIDC,
};
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 128;
const MAX_SUBJECT_PART: usize = 256;

/// The request fields, whichever encoding they arrived in. `None` means absent.
#[derive(Debug, Default, Clone)]
pub struct ExchangeRequest {
    pub grant_type: Option<String>,
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    /// Bind the token to one execution: one request body, method and URL, used once.
    pub execution_scope: Option<ExecutionScope>,
    /// The client certificate the listener verified on this exchange's connection (never
    /// read from the request's fields): what a certificate-bound token is bound to, and the
    /// credential of [`TYPE_MTLS`].
    pub client_cert: Option<ClientCertificate>,
    /// The request's DPoP proof (RFC 9449 §5), already checked against the token endpoint's
    /// URL by the HTTP layer: the minted token is bound to its key (`cnf.jkt`), and the proof
    /// is spent once everything else passed.
    pub dpop: Option<toolgate_core::dpop::Proof>,
}

/// Lifetime of an execution-bound token, in seconds.
pub const EXECUTION_TOKEN_TTL: i64 = 30;
const MAX_EXEC_FIELD: usize = 256;

/// The `execution_scope` of an exchange: the one call the minted token may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionScope {
    /// HTTP method of the call (`POST`).
    pub htm: String,
    /// URL of the call, normalised as RFC 9449 §4.3 compares it.
    pub htu: String,
    /// The operation (`exec_act`), matched against the tool's `allowed_operations`.
    pub exec_act: String,
    /// base64url SHA-256 of the exact request body the call will send.
    pub inp_hash: String,
    /// What the operation acts on, matched against the tool's `allowed_targets`.
    pub target: Option<String>,
    /// Single-use value; generated when the client gives none.
    pub nonce: Option<String>,
}

impl ExecutionScope {
    /// Validate the JSON object of the request field; the error names the field.
    pub fn from_json(obj: &Map<String, Value>) -> Result<Self, ExchangeError> {
        use ExchangeError::InvalidRequest;
        const FIELDS: [&str; 6] = ["htm", "htu", "exec_act", "inp_hash", "target", "nonce"];
        if obj.keys().any(|k| !FIELDS.contains(&k.as_str())) {
            return Err(InvalidRequest(
                "execution_scope takes only htm, htu, exec_act, inp_hash, target and nonce",
            ));
        }
        let field = |name: &str, why: &'static str| -> Result<Option<String>, ExchangeError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s))
                    if !s.is_empty()
                        && s.len() <= MAX_EXEC_FIELD
                        && s.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Ok(Some(s.clone()))
                }
                Some(_) => Err(InvalidRequest(why)),
            }
        };
        let required = |name: &str, why: &'static str| {
            field(name, why).and_then(|v| v.ok_or(InvalidRequest(why)))
        };
        let htm = required("htm", "execution_scope.htm must be an HTTP method")?;
        if !htm.bytes().all(|b| b.is_ascii_uppercase()) || htm.len() > 16 {
            return Err(InvalidRequest("execution_scope.htm must be an HTTP method"));
        }
        let htu = required("htu", "execution_scope.htu must be an http(s) URL")?;
        let htu = resource::normalize_http_url(&htu)
            .ok_or(InvalidRequest("execution_scope.htu must be an http(s) URL"))?;
        let exec_act = required(
            "exec_act",
            "execution_scope.exec_act must be a non-empty string",
        )?;
        let inp_hash = required(
            "inp_hash",
            "execution_scope.inp_hash must be the base64url SHA-256 of the request body",
        )?;
        if b64::decode(&inp_hash).map(|d| d.len()) != Ok(32) {
            return Err(InvalidRequest(
                "execution_scope.inp_hash must be the base64url SHA-256 of the request body",
            ));
        }
        let target = field(
            "target",
            "execution_scope.target must be a non-empty string",
        )?;
        let nonce = field(
            "nonce",
            "execution_scope.nonce must be 16-256 characters of A-Z a-z 0-9 - _",
        )?;
        if nonce.as_ref().is_some_and(|n| {
            n.len() < 16
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            return Err(InvalidRequest(
                "execution_scope.nonce must be 16-256 characters of A-Z a-z 0-9 - _",
            ));
        }
        Ok(Self {
            htm,
            htu,
            exec_act,
            inp_hash,
            target,
            nonce,
        })
    }
}

/// An exchange refusal; each maps to one RFC 6749 / 8693 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeError {
    InvalidRequest(&'static str),
    /// The credential (a client certificate) is not one toolgate accepts (RFC 6749 §5.2).
    InvalidGrant(&'static str),
    InvalidTarget(&'static str),
    UnsupportedGrantType,
    InvalidClient(&'static str),
    AccessDenied(&'static str),
    /// The answer depends on state that cannot be read now (fail closed).
    Unavailable(&'static str),
    /// The DPoP proof is missing where the tool requires one, or was used before
    /// (RFC 9449 §5: `invalid_dpop_proof`).
    Dpop(toolgate_core::dpop::ProofError),
    /// Signing failed.
    Internal,
}

/// A minted token and what the audit and the response need to know about it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: Option<String>,
    pub subject: String,
    pub audience: String,
    pub jti: String,
    /// Bound to a DPoP key (`token_type` `DPoP`).
    pub dpop_bound: bool,
}

/// Who the subject token says the caller is, and what it may be granted.
struct Subject {
    id: String,
    /// Capabilities the subject holds; `None` when the subject token says nothing (dev stubs).
    caps: Option<Vec<String>>,
    blast_radius: Option<String>,
    exp: Option<i64>,
    jti: Option<String>,
    /// The upstream identity (`iss`, `sub`, `email`), carried into minted tokens as `src` so
    /// that a revocation naming it reaches tokens already minted.
    source: Map<String, Value>,
    /// A toolgate agent token: may be exchanged for tool tokens only.
    is_agent_token: bool,
    /// The subject token was bound to this exchange's client certificate (`cnf.x5t#S256`): the
    /// minted token is bound to it as well.
    certificate_bound: bool,
}

/// What an exchange consults: the daemon's settings, its verifier (for its own tokens, the
/// registry and the revocations) and its active signing key.
pub struct Exchanger<'a> {
    pub issuer: &'a str,
    pub dev: bool,
    pub trust_domain: &'a str,
    pub token_ttl: i64,
    pub leeway: i64,
    pub trusted_issuers: &'a [TrustedIssuer],
    pub trusted_client_cas: &'a [TrustedClientCa],
    pub verifier: &'a Verifier,
    pub signing_key: &'a SigningKey,
    /// The token endpoint's DPoP policy, whose replay cache the proof is spent in.
    pub dpop: &'a toolgate_core::dpop::DpopPolicy,
}

pub fn exchange(
    app: &Exchanger<'_>,
    req: &ExchangeRequest,
    now: i64,
) -> Result<Issued, ExchangeError> {
    use ExchangeError::*;
    if req.grant_type.as_deref() != Some(GRANT_TYPE) {
        return Err(UnsupportedGrantType);
    }
    let token_type = req
        .subject_token_type
        .as_deref()
        .ok_or(InvalidRequest("subject_token_type is required"))?;
    // The certificate is the whole credential: a token beside it would be a second, unread one.
    let token = match (token_type, req.subject_token.as_deref()) {
        (TYPE_MTLS, None | Some("")) => "",
        (TYPE_MTLS, Some(_)) => {
            return Err(InvalidRequest(
                "subject_token must not be sent with urn:starfly:token-type:mtls: the client certificate is the credential",
            ))
        }
        (_, token) => token
            .filter(|t| !t.is_empty())
            .ok_or(InvalidRequest("subject_token is required"))?,
    };
    if token.len() > jose::MAX_TOKEN_BYTES {
        return Err(InvalidClient("subject token is too large"));
    }
    if req.actor_token.is_some() || req.actor_token_type.is_some() {
        return Err(InvalidRequest("delegation (actor_token) is not supported"));
    }
    let audience = target(app, req)?;
    let requested = requested_scopes(req.scope.as_deref())?;
    // A tool that takes only certificate-bound tokens gets them only over mutual TLS.
    let bind_to = if requires_mtls(app, &audience)? {
        Some(req.client_cert.as_ref().ok_or(InvalidRequest(
            "this tool requires a certificate-bound token: exchange over mutual TLS with a client certificate",
        ))?)
    } else {
        None
    };
    // A tool that takes only DPoP-bound tokens gets them only with a proof.
    if req.dpop.is_none() && requires_dpop(app, &audience)? {
        return Err(Dpop(toolgate_core::dpop::ProofError::Missing));
    }

    let subject = match token_type {
        TYPE_JWT | TYPE_ACCESS_TOKEN | TYPE_OIDC => external_subject(app, req, token, now)?,
        TYPE_AGENT_MCP | TYPE_AGENT_A2A => agent_subject(app, req, token, now)?,
        TYPE_MTLS => certificate_subject(app, req.client_cert.as_ref(), now)?,
        _ => return Err(InvalidRequest("unsupported subject_token_type")),
    };
    // A certificate-bound subject token's holder gets a token bound to the same certificate.
    let bind_to = bind_to.or(req
        .client_cert
        .as_ref()
        .filter(|_| subject.certificate_bound));
    let is_agent_audience = audience == app.issuer;
    if is_agent_audience && subject.is_agent_token {
        return Err(AccessDenied(
            "an agent token cannot be exchanged for another agent token",
        ));
    }
    let identity = Identity {
        subject: &subject.id,
        issuer: app.issuer,
        jti: subject.jti.as_deref().unwrap_or(""),
        source: Some(&subject.source),
    };
    match app.verifier.revocations.is_revoked(&identity, None, now) {
        Ok(false) => {}
        Ok(true) => return Err(AccessDenied("subject is revoked")),
        Err(_) => return Err(Unavailable("revocation status is unavailable")),
    }
    // A revoked tool gets no new tokens (every tool of a shared resource must be live).
    let tools = app
        .verifier
        .registry
        .read()
        .map_err(|_| Unavailable("tool registry is unavailable"))?
        .with_resource(&audience);
    for tool in &tools {
        match app
            .verifier
            .revocations
            .any_revoked(&[], Some(&tool.tool_id), now)
        {
            Ok(false) => {}
            Ok(true) => return Err(AccessDenied("tool is revoked")),
            Err(_) => return Err(Unavailable("revocation status is unavailable")),
        }
    }

    let granted: Vec<String> = match (&requested, &subject.caps) {
        (Some(req), Some(held)) => req.iter().filter(|s| held.contains(s)).cloned().collect(),
        (Some(req), None) => req.clone(),
        (None, Some(held)) => held.clone(),
        (None, None) => Vec::new(),
    };
    if requested.as_ref().is_some_and(|r| !r.is_empty()) && granted.is_empty() {
        return Err(AccessDenied(
            "none of the requested scopes may be granted to this subject",
        ));
    }

    let ttl = match &req.execution_scope {
        Some(_) => app.token_ttl.min(EXECUTION_TOKEN_TTL),
        None => app.token_ttl,
    };
    let mut exp = now.saturating_add(ttl);
    if let Some(subject_exp) = subject.exp {
        exp = exp.min(subject_exp);
    }
    if exp <= now {
        return Err(InvalidClient("subject token has expired"));
    }
    let jti = random_id().ok_or(Internal)?;
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(app.issuer));
    claims.insert("sub".into(), json!(subject.id));
    claims.insert("aud".into(), json!(audience));
    // A tool's token is an RFC 9068 access token; its client is the subject it was exchanged for.
    let typ = if is_agent_audience {
        jose::TYP_AGENT
    } else {
        claims.insert("client_id".into(), json!(subject.id));
        jose::TYP_ACCESS_TOKEN
    };
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(exp));
    claims.insert("jti".into(), json!(jti));
    claims.insert("td".into(), json!(app.trust_domain));
    let scope = (!granted.is_empty()).then(|| granted.join(" "));
    if let Some(s) = &scope {
        claims.insert("caps".into(), json!(granted));
        claims.insert("scope".into(), json!(s));
    }
    if let Some(b) = &subject.blast_radius {
        claims.insert("blast_radius".into(), json!(b));
    }
    if !subject.source.is_empty() {
        claims.insert("src".into(), Value::Object(subject.source.clone()));
    }
    if let Some(exec) = &req.execution_scope {
        let nonce = match &exec.nonce {
            Some(n) => n.clone(),
            None => random_id().ok_or(Internal)?,
        };
        claims.insert("htm".into(), json!(exec.htm));
        claims.insert("htu".into(), json!(exec.htu));
        claims.insert("exec_act".into(), json!(exec.exec_act));
        claims.insert("inp_hash".into(), json!(exec.inp_hash));
        if let Some(t) = &exec.target {
            claims.insert("target".into(), json!(t));
        }
        claims.insert("nonce".into(), json!(nonce));
    }
    let mut cnf = Map::new();
    if let Some(cert) = bind_to {
        cnf.insert(verify::X5T_S256.into(), json!(cert.thumbprint()));
    }
    if let Some(proof) = &req.dpop {
        cnf.insert(verify::JKT.into(), json!(proof.jkt));
    }
    if !cnf.is_empty() {
        claims.insert("cnf".into(), Value::Object(cnf));
    }
    // The proof is spent last, by an exchange that passed everything else (RFC 9449 §11.1).
    if let Some(proof) = &req.dpop {
        app.dpop.spend(proof, now).map_err(|e| match e {
            toolgate_core::dpop::ProofError::Full => {
                Unavailable("DPoP proofs cannot be recorded right now")
            }
            other => Dpop(other),
        })?;
    }
    let access_token =
        jose::jws::encode_signed(app.signing_key, typ, &claims).map_err(|_| Internal)?;
    Ok(Issued {
        access_token,
        expires_in: exp - now,
        scope,
        subject: subject.id,
        audience,
        jti,
        dpop_bound: req.dpop.is_some(),
    })
}

/// Does any tool of `audience` require DPoP-bound tokens (`sender_constraint: dpop`)?
fn requires_dpop(app: &Exchanger<'_>, audience: &str) -> Result<bool, ExchangeError> {
    any_tool_of(app, audience, ToolEntry::requires_dpop)
}

/// Does any tool of `audience` require certificate-bound tokens (`sender_constraint: mtls`)?
fn requires_mtls(app: &Exchanger<'_>, audience: &str) -> Result<bool, ExchangeError> {
    any_tool_of(app, audience, ToolEntry::requires_mtls)
}

/// Does any tool of `audience` satisfy `rule`?
fn any_tool_of(
    app: &Exchanger<'_>,
    audience: &str,
    rule: fn(&ToolEntry) -> bool,
) -> Result<bool, ExchangeError> {
    Ok(app
        .verifier
        .registry
        .read()
        .map_err(|_| ExchangeError::Unavailable("tool registry is unavailable"))?
        .with_resource(audience)
        .iter()
        .any(|t| rule(t)))
}

/// The workload a SPIFFE X.509-SVID names: its SPIFFE ID as a `wimse://` subject, once the
/// chain verifies to a CA configured for the ID's trust domain (see [`crate::spiffe`]).
fn certificate_subject(
    app: &Exchanger<'_>,
    cert: Option<&ClientCertificate>,
    now: i64,
) -> Result<Subject, ExchangeError> {
    // The certificate is the client's authentication here: without one, none was included
    // (RFC 6749 §5.2 invalid_client).
    let cert = cert.ok_or(ExchangeError::InvalidClient(
        "urn:starfly:token-type:mtls authenticates with the client certificate of a mutual-TLS connection, and none was presented",
    ))?;
    let id = crate::spiffe::workload(cert, app.trusted_client_cas, now)
        .map_err(|e| ExchangeError::InvalidGrant(e.description()))?;
    // The token may not outlive the certificate that vouched for it.
    let not_after = crate::spiffe::not_after(cert.leaf()).map_err(|_| {
        ExchangeError::InvalidGrant(crate::spiffe::SvidError::Malformed.description())
    })?;
    let mut source = Map::new();
    source.insert("sub".into(), json!(id.uri()));
    Ok(Subject {
        id: id.wimse_subject(),
        // A certificate says who, not what it may do: no capabilities beyond those requested.
        caps: Some(Vec::new()),
        blast_radius: None,
        exp: Some(not_after),
        jti: None,
        source,
        is_agent_token: false,
        certificate_bound: false,
    })
}

/// The single canonical audience: `audience` or its RFC 8707 synonym `resource`.
fn target(app: &Exchanger<'_>, req: &ExchangeRequest) -> Result<String, ExchangeError> {
    use ExchangeError::*;
    let raw = match (req.audience.as_deref(), req.resource.as_deref()) {
        (Some(a), Some(r)) if a != r => {
            return Err(InvalidTarget(
                "audience and resource name different targets",
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(InvalidRequest("audience (or resource) is required")),
    };
    if raw == "*" || raw.split_ascii_whitespace().count() > 1 {
        return Err(InvalidTarget("exactly one audience is required"));
    }
    let registry = app
        .verifier
        .registry
        .read()
        .map_err(|_| Unavailable("tool registry is unavailable"))?;
    // A tool registered without a resource_uri is its own audience (its tool_id).
    if registry.has_resource(raw) {
        return Ok(raw.to_string());
    }
    let canonical = resource::canonicalize(raw)
        .map_err(|_| InvalidTarget("audience must be an absolute URI"))?;
    if canonical == app.issuer || registry.has_resource(&canonical) || app.dev {
        Ok(canonical)
    } else {
        Err(InvalidTarget(
            "audience is not the resource of a registered tool",
        ))
    }
}

fn requested_scopes(scope: Option<&str>) -> Result<Option<Vec<String>>, ExchangeError> {
    let Some(scope) = scope else { return Ok(None) };
    let mut out: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if s.len() > MAX_SCOPE_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(ExchangeError::InvalidRequest(
                "scope has an invalid scope token",
            ));
        }
        if !out.iter().any(|x| x == s) {
            out.push(s.to_string());
        }
    }
    if out.len() > MAX_SCOPES {
        return Err(ExchangeError::InvalidRequest("scope names too many scopes"));
    }
    Ok(Some(out))
}

/// A JWT from a configured trusted issuer, a dev stub, or (by `iss`) toolgate's own agent token.
fn external_subject(
    app: &Exchanger<'_>,
    req: &ExchangeRequest,
    token: &str,
    now: i64,
) -> Result<Subject, ExchangeError> {
    use ExchangeError::*;
    if app.dev {
        if let Some(claims) = stub_claims(token)? {
            // Stubs are unsigned, but a stub that says it has expired is still refused.
            let bad = |_| InvalidClient("stub subject token claims are malformed");
            let exp = claims::numeric_date(&claims, "exp").map_err(bad)?;
            let nbf = claims::numeric_date(&claims, "nbf").map_err(bad)?;
            if exp.is_some_and(|e| now >= e.saturating_add(app.leeway))
                || nbf.is_some_and(|n| n > now.saturating_add(app.leeway))
            {
                return Err(InvalidClient("subject token is expired or not yet valid"));
            }
            let mut subject = subject_from(&claims, app.trust_domain, true)?;
            subject.exp = exp;
            subject.certificate_bound = holder_binding(&claims, req)?;
            return Ok(subject);
        }
    }
    let unverified =
        jose::decode(token).map_err(|_| InvalidClient("subject token is not a valid JWT"))?;
    let iss = claims::string(&unverified.claims, "iss")
        .ok()
        .flatten()
        .ok_or(InvalidClient("subject token has no issuer"))?;
    if iss == app.issuer {
        return agent_subject(app, req, token, now);
    }
    subject_token_type(unverified.header.token_type())?;
    let trusted: &TrustedIssuer = app
        .trusted_issuers
        .iter()
        .find(|t| t.issuer == iss)
        .ok_or(InvalidClient("subject token issuer is not trusted"))?;
    // Fetched keys that could not be refreshed within their grace: fail closed, and say so.
    if trusted.keys.keys(now).is_none() {
        return Err(Unavailable(
            "the subject token issuer's keys cannot be fetched; try again later",
        ));
    }
    let raw = verify::verify_signature(token, |h| trusted.keys.key(h.kid.as_deref(), now))
        .map_err(|_| InvalidClient("subject token signature is invalid"))?;
    let times =
        TimeClaims::read(&raw).map_err(|_| InvalidClient("subject token claims are malformed"))?;
    times
        .check(now, app.leeway)
        .map_err(|_| InvalidClient("subject token is expired or not yet valid"))?;
    let aud_ok = match claims::audience(&raw) {
        Audience::One(a) => a == trusted.audience,
        Audience::Many(list) => list.contains(&trusted.audience),
        _ => false,
    };
    if !aud_ok {
        return Err(InvalidClient(
            "subject token audience does not name toolgate",
        ));
    }
    let mut subject = subject_from(&raw, &trusted.trust_domain, false)?;
    subject.exp = Some(times.exp);
    subject.certificate_bound = holder_binding(&raw, req)?;
    Ok(subject)
}

/// A subject token bound to its holder (RFC 7800 `cnf`: identity providers issue DPoP- and
/// certificate-bound access tokens) is exchanged only by that holder: the request's DPoP proof
/// must be by the key `cnf.jkt` names (the minted token is then bound to the same key), its
/// client certificate the one `cnf.x5t#S256` names (`true`: the minted token is bound to it
/// too). Any other confirmation method is refused: a binding toolgate cannot check is never
/// dropped.
fn holder_binding(
    claims: &Map<String, Value>,
    req: &ExchangeRequest,
) -> Result<bool, ExchangeError> {
    use ExchangeError::*;
    let Some(cnf) = claims.get("cnf") else {
        return Ok(false);
    };
    let cnf = cnf
        .as_object()
        .filter(|c| !c.is_empty() && c.keys().all(|k| k == verify::JKT || k == verify::X5T_S256))
        .ok_or(InvalidClient(
            "subject token's confirmation method is not supported",
        ))?;
    let member = |name| {
        cnf.get(name)
            .map(|v| {
                v.as_str()
                    .ok_or(InvalidClient("subject token's confirmation is malformed"))
            })
            .transpose()
    };
    if let Some(jkt) = member(verify::JKT)? {
        let proof = req
            .dpop
            .as_ref()
            .ok_or(Dpop(toolgate_core::dpop::ProofError::Missing))?;
        if !proof.matches(jkt) {
            return Err(Dpop(toolgate_core::dpop::ProofError::KeyMismatch));
        }
    }
    let Some(x5t) = member(verify::X5T_S256)? else {
        return Ok(false);
    };
    let cert = req.client_cert.as_ref().ok_or(InvalidClient(
        "subject token is certificate-bound and no client certificate was presented",
    ))?;
    if x5t.as_bytes() != cert.thumbprint().as_bytes() {
        return Err(InvalidClient("subject token certificate binding mismatch"));
    }
    Ok(true)
}

/// The header `typ` of a subject token from an identity provider: none, `JWT` (Keycloak, Entra)
/// or `at+jwt`. Anything else names another kind of token (`secevent+jwt`, `dpop+jwt`,
/// `logout+jwt`, toolgate's own agent type from another issuer, …), which is no subject token.
fn subject_token_type(typ: TokenType) -> Result<(), ExchangeError> {
    match typ {
        TokenType::Unspecified | TokenType::Jwt | TokenType::AccessToken => Ok(()),
        TokenType::Agent | TokenType::Other => Err(ExchangeError::InvalidClient(
            "subject token typ names another kind of token",
        )),
    }
}

/// A toolgate agent identity token: the verify pipeline with toolgate itself as the audience —
/// never a tool (a tool's token traded for another tool's is the confused deputy again).
fn agent_subject(
    app: &Exchanger<'_>,
    req: &ExchangeRequest,
    token: &str,
    now: i64,
) -> Result<Subject, ExchangeError> {
    use ExchangeError::*;
    let verdict = app.verifier.decide_at(
        &DecisionRequest::new(token, Target::Audience(app.issuer))
            .with_client_cert(req.client_cert.as_ref()),
        now,
    );
    let claims = match verdict.result {
        Ok(allowed) => allowed.claims,
        Err(d) if d.unavailable => return Err(Unavailable("revocation status is unavailable")),
        Err(d) if d.check == Check::Revocation => return Err(AccessDenied("subject is revoked")),
        Err(d) if d.check == Check::Audience => {
            return Err(InvalidClient(
                "subject token is not an agent token for this toolgate",
            ))
        }
        Err(_) => return Err(InvalidClient("subject token failed verification")),
    };
    Ok(Subject {
        id: claims.sub.clone(),
        // An agent holds exactly the caps written into its token: none if none were.
        caps: Some(claims.caps.clone()),
        blast_radius: claims.blast_radius.clone(),
        exp: Some(claims.times.exp),
        jti: Some(claims.jti.clone()),
        source: claims
            .raw
            .get("src")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        is_agent_token: true,
        certificate_bound: false,
    })
}

/// The claims of a dev-mode stub, `<b64url header>.<b64url claims>.stub`, read unverified;
/// `None` if the token is not a stub.
fn stub_claims(token: &str) -> Result<Option<Map<String, Value>>, ExchangeError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some("stub"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let bad = || ExchangeError::InvalidClient("stub subject token is malformed");
    let header = b64::decode(h)
        .ok()
        .and_then(|b| json::parse_object(&b).ok())
        .ok_or_else(bad)?;
    // Dev mode relaxes the signature, not the kind of token: a stub SET is still a SET.
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(bad()),
    };
    subject_token_type(TokenType::of(typ))?;
    let claims = b64::decode(c)
        .ok()
        .and_then(|b| json::parse_object(&b).ok())
        .ok_or_else(bad)?;
    Ok(Some(claims))
}

/// `text` as one path segment of a WIMSE identifier: the characters allowed in a subject part
/// as they are, every other byte (`%` included) as `%XX`.
fn percent_encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@' | b'+')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn nested_str<'a>(claims: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, init) = path.split_last()?;
    let mut obj = claims;
    for key in init {
        obj = obj.get(*key)?.as_object()?;
    }
    obj.get(*last)?.as_str()
}

/// `wimse://<td>/ns/<namespace>/sa/<serviceaccount>` from the subject's claims.
fn subject_from(
    claims: &Map<String, Value>,
    trust_domain: &str,
    dev_stub: bool,
) -> Result<Subject, ExchangeError> {
    use ExchangeError::InvalidClient;
    let sub = claims::string(claims, "sub")
        .map_err(|_| InvalidClient("subject token sub is not a string"))?;
    let prefix = format!("wimse://{trust_domain}/");
    let id = match sub {
        Some(s) if s.starts_with("wimse://") => {
            if !s.starts_with(&prefix) || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(InvalidClient(
                    "subject is outside this issuer's trust domain",
                ));
            }
            s.to_string()
        }
        _ => {
            let ns = claims::string(claims, "namespace")
                .ok()
                .flatten()
                .or_else(|| nested_str(claims, &["kubernetes.io.namespace"]))
                .or_else(|| nested_str(claims, &["kubernetes.io", "namespace"]))
                .unwrap_or("default");
            let named = claims::string(claims, "serviceaccount")
                .ok()
                .flatten()
                .or_else(|| nested_str(claims, &["kubernetes.io.serviceaccount.name"]))
                .or_else(|| nested_str(claims, &["kubernetes.io", "serviceaccount", "name"]));
            // A service account name is a Kubernetes name; a `sub` is any string (RFC 9068:
            // `auth0|abc123`, a URL client id): percent-encoded into one path segment, so that
            // two subjects never map to one identifier.
            let encoded = sub.map(percent_encode_segment);
            // Only a dev stub may name nobody; a verified token must say whom it is for.
            let sa = match named.or(encoded.as_deref()) {
                Some(sa) => sa,
                None if dev_stub => "dev-workload",
                None => {
                    return Err(InvalidClient(
                        "subject token names no subject (sub or a service account)",
                    ))
                }
            };
            // The encoded `sub` has only allowed characters and `%XX` by construction.
            let percent_ok = named.is_none();
            for (part, percent) in [(ns, false), (sa, percent_ok)] {
                let ok = !part.is_empty()
                    && part.len() <= MAX_SUBJECT_PART
                    && part.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@' | b'+')
                            || (percent && b == b'%')
                    });
                if !ok {
                    return Err(InvalidClient(
                        "subject has characters not allowed in a WIMSE identifier",
                    ));
                }
            }
            format!("{prefix}ns/{ns}/sa/{sa}")
        }
    };
    let caps = match claims::string_list(claims, "caps") {
        Ok(Some(c)) => Some(c),
        Ok(None) => match claims::string(claims, "scope") {
            Ok(Some(s)) => Some(
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            Ok(None) if dev_stub => None,
            Ok(None) => Some(Vec::new()),
            Err(_) => return Err(InvalidClient("subject token scope is not a string")),
        },
        Err(_) => return Err(InvalidClient("subject token caps is not a list of strings")),
    };
    let blast_radius = claims::string(claims, "blast_radius")
        .ok()
        .flatten()
        .filter(|b| crate::blast::parse(b).is_some())
        .map(str::to_string);
    Ok(Subject {
        id,
        caps,
        blast_radius,
        exp: None,
        jti: claims::string(claims, "jti")
            .ok()
            .flatten()
            .map(str::to_string),
        source: ["iss", "sub", "email"]
            .iter()
            .filter_map(|k| {
                let v = claims::string(claims, k).ok().flatten()?;
                (!v.is_empty() && v.len() <= MAX_SUBJECT_PART).then(|| (k.to_string(), json!(v)))
            })
            .collect(),
        is_agent_token: false,
        certificate_bound: false,
    })
}
