use super::harness::*;

use http::Method;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

const RESOURCE: &str = "https://mcp.example.com/tools/search";

/// A dev daemon with one tool, a token minted for it, the issuer, and the JWKS as JSON.
async fn minted() -> (Daemon, String, String, Value) {
    let daemon = Daemon::dev().await;
    daemon.register("search", RESOURCE).await;
    let token = daemon.token_for("alice", RESOURCE).await;
    let (status, meta) = daemon
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(status, 200, "{meta}");
    let issuer = meta["issuer"].as_str().unwrap().to_string();
    let (status, jwks) = daemon.call(Method::GET, "/v1/identity/jwks", None).await;
    assert_eq!(status, 200, "{jwks}");
    (daemon, token, issuer, jwks)
}

/// The JWKS key named by the token's `kid`, as a jsonwebtoken decoding key.
fn decoding_key(token: &str, jwks: &Value) -> DecodingKey {
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let kid = decode_header(token).unwrap().kid.unwrap();
    let jwk = set.find(&kid).expect("token kid is in the JWKS");
    DecodingKey::from_jwk(jwk).unwrap()
}

fn validation(audience: &str, issuer: &str) -> Validation {
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    v.validate_nbf = true;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonwebtoken_verifies_a_minted_token() {
    let (_daemon, token, issuer, jwks) = minted().await;
    let key = decoding_key(&token, &jwks);

    let data = decode::<Value>(&token, &key, &validation(RESOURCE, &issuer)).unwrap();
    assert_eq!(data.header.alg, Algorithm::ES256);
    assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
    let claims = data.claims;
    assert_eq!(claims, claims_of(&token));
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["sub"], "wimse://dev.local/ns/default/sa/alice");
    assert_eq!(claims["td"], "dev.local");
    assert!(claims["jti"].is_string());
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["nbf"].as_i64().unwrap(), iat);
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonwebtoken_rejects_another_audience() {
    let (_daemon, token, issuer, jwks) = minted().await;
    let key = decoding_key(&token, &jwks);
    let err = decode::<Value>(
        &token,
        &key,
        &validation("https://mcp.example.com/tools/other", &issuer),
    )
    .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::InvalidAudience, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonwebtoken_rejects_anotherissuer_and_a_tampered_token() {
    let (_daemon, token, issuer, jwks) = minted().await;
    let key = decoding_key(&token, &jwks);
    let err = decode::<Value>(
        &token,
        &key,
        &validation(RESOURCE, "https://someone-else.example.com"),
    )
    .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::InvalidIssuer, "{err:?}");

    // Swap the payload for one naming another audience: the signature no longer holds.
    let mut claims = claims_of(&token);
    claims["aud"] = Value::from("https://mcp.example.com/tools/other");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    let err = decode::<Value>(
        &forged,
        &key,
        &validation("https://mcp.example.com/tools/other", &issuer),
    )
    .unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::InvalidSignature, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kid_is_the_rfc7638_thumbprint_of_the_jwks_key() {
    let (_daemon, token, _issuer, jwks) = minted().await;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty(), "{jwks}");
    let header = header_of(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().unwrap();

    let key_json = keys
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the token's kid names a JWKS key");
    assert_eq!(key_json["kty"], "EC");
    assert_eq!(key_json["crv"], "P-256");
    assert_eq!(key_json["alg"], "ES256");
    assert_eq!(key_json["use"], "sig");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(key_json.get(private).is_none(), "{key_json}");
    }
    let thumbprint = toolgate::jose::Jwk::from_json(key_json)
        .unwrap()
        .thumbprint();
    assert_eq!(kid, thumbprint);

    // The same value computed independently of toolgate's JOSE code (RFC 7638 §3.2).
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        key_json["x"].as_str().unwrap(),
        key_json["y"].as_str().unwrap()
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    assert_eq!(kid, b64(digest.as_ref()));
}
