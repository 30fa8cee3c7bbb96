//! Hand-rolled, strict, I/O-free JOSE: compact JWS decoding/signing and public JWKs.

pub mod b64;
pub mod json;
pub mod jwk;
pub mod jws;
pub mod sign;

pub use jwk::{Jwk, JwkSet};
pub use jws::{
    decode, Algorithm, Compact, Header, TokenType, MAX_TOKEN_BYTES, TYP_ACCESS_TOKEN, TYP_AGENT,
    TYP_JWT,
};
pub use sign::SigningKey;

/// Typed error; variants carry no attacker-controlled text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoseError {
    /// Input over [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// Not exactly 3 segments, empty segment, whitespace or non-ASCII.
    Shape,
    /// Not strict base64url without padding, or non-canonical trailing bits.
    Base64,
    /// Not valid UTF-8 JSON, not an object, too deep, or a member of the wrong type.
    Json,
    /// A JSON object (at any depth) has a repeated member name.
    DuplicateName,
    /// `alg` missing, not a string, or not one of ES256, ES384, EdDSA, RS256, PS256.
    UnsupportedAlgorithm,
    /// Header carries `crit`, `jku`, `x5u`, `jwk`, `x5c`, `b64` or `cty`.
    ForbiddenHeader,
    /// Header `alg` differs from the key's pinned algorithm.
    AlgorithmMismatch,
    /// Signature invalid (wrong length, DER-encoded ECDSA, zero r/s, ...).
    BadSignature,
    /// JWK malformed or unsupported.
    InvalidKey,
    /// ring failed to generate or load a private key.
    KeyGeneration,
}

impl std::fmt::Display for JoseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JoseError::TooLarge => "token too large",
            JoseError::Shape => "malformed compact serialization",
            JoseError::Base64 => "invalid base64url",
            JoseError::Json => "invalid JSON",
            JoseError::DuplicateName => "duplicate JSON member name",
            JoseError::UnsupportedAlgorithm => "unsupported algorithm",
            JoseError::ForbiddenHeader => "forbidden header parameter",
            JoseError::AlgorithmMismatch => "algorithm does not match key",
            JoseError::BadSignature => "invalid signature",
            JoseError::InvalidKey => "invalid key",
            JoseError::KeyGeneration => "key generation failed",
        })
    }
}

impl std::error::Error for JoseError {}
