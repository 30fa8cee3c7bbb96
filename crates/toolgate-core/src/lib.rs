//! toolgate's decision core: everything a verdict needs and nothing that does I/O.
//!
//! JOSE hand-written on `ring` ([`jose`]), registered claims read strictly ([`claims`]),
//! RFC 8707 resource indicators ([`resource`]), the one ordered check pipeline ([`verify`]), the
//! in-memory revocation index ([`revocation`]) and the tool registry ([`registry`]). The daemon,
//! the guard and the fuzz targets all link this crate; it has no tokio, hyper or SQLite.
//!
//! # Example
//!
//! Mint an audience-bound token with a fresh ES256 key and decide a call to the tool it names:
//!
//! ```
//! use std::sync::{Arc, RwLock};
//!
//! use serde_json::json;
//! use toolgate_core::clock::ManualClock;
//! use toolgate_core::jose::{jws::encode_signed, Jwk, SigningKey, TYP_ACCESS_TOKEN};
//! use toolgate_core::registry::{Registry, ToolInput};
//! use toolgate_core::revocation::RevocationIndex;
//! use toolgate_core::verify::{
//!     Check, DecisionRequest, KeySource, Target, Verifier, VerifierConfig,
//! };
//!
//! // The public half of toolgate's signing key, found by the `kid` of a token's header.
//! struct OneKey(Jwk);
//! impl KeySource for OneKey {
//!     fn key(&self, kid: &str) -> Option<Jwk> {
//!         (self.0.kid.as_deref() == Some(kid)).then(|| self.0.clone())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = 1_800_000_000;
//! let key = SigningKey::generate()?;
//!
//! // One tool, whose RFC 8707 resource indicator is the audience its tokens must carry.
//! let tool: ToolInput = serde_json::from_value(json!({
//!     "tool_id": "code-search",
//!     "resource_uri": "https://mcp.example.com/tools/code-search",
//!     "required_capabilities": ["search"],
//! }))?;
//! let registry = Registry::from_entries(vec![tool.validate("2027-01-15T08:00:00Z")?]);
//!
//! let verifier = Verifier::new(
//!     VerifierConfig {
//!         issuer: "https://toolgate.example.com".into(),
//!         leeway: 0,
//!         keys: Arc::new(OneKey(key.public_jwk())),
//!         clock: Arc::new(ManualClock::new(now)),
//!     },
//!     Arc::new(RwLock::new(registry)),
//!     Arc::new(RevocationIndex::default()),
//! );
//!
//! // A tool token: an RFC 9068 access token (header `typ` `at+jwt`).
//! let mint = |aud: &str| {
//!     let claims = json!({
//!         "iss": "https://toolgate.example.com",
//!         "sub": "spiffe://example.com/agent/triage",
//!         "aud": aud,
//!         "jti": "tok-1",
//!         "iat": now,
//!         "exp": now + 300,
//!         "client_id": "spiffe://example.com/agent/triage",
//!         "caps": ["search"],
//!     });
//!     encode_signed(&key, TYP_ACCESS_TOKEN, claims.as_object().ok_or("claims are an object")?)
//!         .map_err(Box::<dyn std::error::Error>::from)
//! };
//!
//! // Bound to the tool's resource: allowed.
//! let token = mint("https://mcp.example.com/tools/code-search")?;
//! let verdict = verifier.decide(&DecisionRequest::new(&token, Target::Tool("code-search")));
//! let allowed = verdict.result.map_err(|d| d.reason)?;
//! assert_eq!(allowed.claims.sub, "spiffe://example.com/agent/triage");
//!
//! // The same key and subject, but bound to another resource: refused at the audience check.
//! let token = mint("https://mcp.example.com/tools/deploy")?;
//! let verdict = verifier.decide(&DecisionRequest::new(&token, Target::Tool("code-search")));
//! assert_eq!(verdict.result.err().map(|d| d.check), Some(Check::Audience));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blast;
pub mod claims;
pub mod clock;
pub mod dpop;
pub mod ids;
pub mod jose;
pub mod mtls;
pub mod oauth;
pub mod registry;
pub mod resource;
pub mod revocation;
pub mod verify;
