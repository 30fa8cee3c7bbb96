//! Entry points for the fuzz targets (`fuzz/`): each runs untrusted bytes through real code.

use crate::verify::{verify_signature, TimeClaims};

/// Arbitrary bytes as a token through checks 1–4 with a fixed key: must never panic, and a
/// decoded token must re-encode to exactly its input segments (round-trip oracle).
pub fn jws_decode(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(compact) = crate::jose::decode(token) {
        let (h, rest) = token.split_once('.').unwrap_or_default();
        let (p, _) = rest.split_once('.').unwrap_or_default();
        let header = crate::jose::b64::decode(h).ok();
        let payload = crate::jose::b64::decode(p).ok();
        assert_eq!(
            header.map(|b| crate::jose::b64::encode(&b)).as_deref(),
            Some(h)
        );
        assert_eq!(
            payload.map(|b| crate::jose::b64::encode(&b)).as_deref(),
            Some(p)
        );
        assert_eq!(compact.signing_input.len(), h.len() + 1 + p.len());
    }
    let key = fuzz_key();
    if let Ok(claims) = verify_signature(token, |_| key.clone()) {
        if let Ok(times) = TimeClaims::read(&claims) {
            let _ = times.check(1_700_000_000, 60);
        }
    }
}

fn fuzz_key() -> Option<crate::jose::Jwk> {
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    });
    crate::jose::Jwk::from_json(&jwk).ok()
}

/// Arbitrary bytes as a JWKS document: must never panic; whatever parses must serialise to
/// JSON that parses again to keys with the same thumbprints (round-trip oracle).
pub fn jwk_parse(data: &[u8]) {
    let Ok(set) = crate::jose::JwkSet::from_json_bytes(data) else {
        return;
    };
    let again = crate::jose::JwkSet::from_json_bytes(set.to_json().to_string().as_bytes());
    let prints = |s: &crate::jose::JwkSet| {
        s.keys
            .iter()
            .map(crate::jose::Jwk::thumbprint)
            .collect::<Vec<_>>()
    };
    assert_eq!(again.as_ref().map(prints).ok(), Some(prints(&set)));
}
