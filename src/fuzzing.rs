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
    // The provider reader (fetched JWKS) skips what the strict one refuses, never the reverse:
    // a document the strict reader takes, it takes whole.
    let provider = crate::jose::JwkSet::from_provider_json_bytes(data);
    let Ok(set) = crate::jose::JwkSet::from_json_bytes(data) else {
        return;
    };
    let whole = provider.as_ref().map(|(p, skipped)| {
        (
            *skipped,
            p.keys
                .iter()
                .map(crate::jose::Jwk::thumbprint)
                .collect::<Vec<_>>(),
        )
    });
    assert_eq!(
        whole.ok(),
        Some((
            0,
            set.keys.iter().map(crate::jose::Jwk::thumbprint).collect()
        ))
    );
    let again = crate::jose::JwkSet::from_json_bytes(set.to_json().to_string().as_bytes());
    let prints = |s: &crate::jose::JwkSet| {
        s.keys
            .iter()
            .map(crate::jose::Jwk::thumbprint)
            .collect::<Vec<_>>()
    };
    assert_eq!(again.as_ref().map(prints).ok(), Some(prints(&set)));
}

/// Arbitrary bytes as a pushed Security Event Token, signed (compact JWS) and dev JSON: never
/// panics; a refusal always names an RFC 8935 error code.
pub fn set_parse(data: &[u8]) {
    let Some(key) = fuzz_key() else { return };
    let transmitters = [crate::config::Transmitter {
        issuer: "https://siem.example.com".into(),
        keys: crate::issuers::IssuerKeys::fixed(
            "https://siem.example.com",
            crate::jose::JwkSet { keys: vec![key] },
            None,
        ),
    }];
    let policy = crate::signals::Policy {
        audience: "https://toolgate.example.com",
        transmitters: &transmitters,
        now: 1_700_000_000,
        leeway: 60,
        max_age: 3600,
        default_ttl: Some(60),
    };
    const CODES: [&str; 4] = [
        "invalid_request",
        "invalid_issuer",
        "invalid_audience",
        "invalid_key",
    ];
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = crate::signals::verify_signed(text, &policy) {
            assert!(CODES.contains(&e.code));
        }
    }
    if let Ok(claims) = crate::jose::json::parse_object(data) {
        match crate::signals::read_unsigned(&claims, &policy) {
            Ok(signal) => assert!(!signal.actions.is_empty() && !signal.jti.is_empty()),
            Err(e) => assert!(CODES.contains(&e.code)),
        }
    }
}

/// Arbitrary bytes as an exchange request body, in both encodings: never panics.
pub fn exchange_request(data: &[u8]) {
    let _ = crate::http::tokens::from_json(data);
    let _ = crate::http::tokens::from_form(data);
}

/// Arbitrary bytes as a gateway request body: never panics, and whatever is accepted has at
/// least one message, each of which got a decision target (no message is skipped).
pub fn jsonrpc(data: &[u8]) {
    if let Ok(targets) = crate::gateway::jsonrpc_targets(data, usize::MAX) {
        // Counted with `IgnoredAny`, not `serde_json::Value`: with serde_json's `raw_value`
        // feature on (the guard uses it), `Value` reads an object whose only member is named
        // `$serde_json::private::RawValue` as the JSON text of its string, so it is not an
        // independent reader of the bytes (found by this target in CI).
        let messages = match serde_json::from_slice::<serde::de::IgnoredAny>(data) {
            Ok(_) if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') => {
                serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(data).map_or(0, |b| b.len())
            }
            Ok(_) => 1,
            Err(_) => 0,
        };
        assert!(!targets.is_empty());
        assert_eq!(targets.len(), messages);
    }
}

/// Arbitrary bytes as a request path (first line) and a route table (one prefix a line): never
/// panics; a path accepted as canonical decodes and re-encodes to itself (one spelling per
/// path: round-trip oracle) and has no `;`, dot or empty segment; the route chosen is the
/// longest prefix the path is under.
pub fn gateway_path(data: &[u8]) {
    use crate::gateway::paths;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or_default();
    let routes: Vec<(String, String)> = lines
        .enumerate()
        .map(|(i, p)| (p.to_string(), i.to_string()))
        .collect();
    if paths::canonical(path).is_ok() {
        assert!(!path.contains(';') && !path.contains('\\'));
        assert!(path.split('/').skip(1).all(|s| s != "." && s != ".."));
        assert!(!path.contains("//"));
        let decoded = percent_decode(path);
        assert_eq!(percent_encode(&decoded), path);
    }
    let chosen = paths::route(&routes, path);
    let longest = routes
        .iter()
        .filter(|(p, _)| paths::under(path, p))
        .map(|(p, _)| p.trim_end_matches('/').len())
        .max();
    match chosen {
        Some(tool) => {
            let prefix = routes
                .iter()
                .find(|(_, t)| t == tool)
                .map(|(p, _)| p.as_str())
                .unwrap_or_default();
            assert!(paths::under(path, prefix));
            assert_eq!(Some(prefix.trim_end_matches('/').len()), longest);
        }
        None => assert_eq!(longest, None),
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b == b'/' || crate::gateway::paths::raw_path_byte(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Arbitrary bytes as a client certificate's DER through the SAN reader, the notAfter reader
/// and the SPIFFE ID grammar: must never panic; every URI read is a slice of the input, and a SPIFFE ID that
/// parses writes back as exactly its input (round-trip oracle).
pub fn x509_san(data: &[u8]) {
    if let Ok(uris) = crate::spiffe::uri_sans(data) {
        for uri in uris {
            assert!(data
                .windows(uri.len().max(1))
                .any(|w| uri.is_empty() || w == uri.as_bytes()));
            if let Ok(id) = crate::spiffe::SpiffeId::parse(uri) {
                assert_eq!(id.uri(), uri);
                assert!(id.wimse_subject().starts_with("wimse://"));
            }
        }
    }
    let _ = crate::spiffe::spiffe_id(data);
    // The validity walk beside it (a minted token's cap) never panics either.
    let _ = crate::spiffe::not_after(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = crate::spiffe::SpiffeId::parse(text) {
            assert_eq!(id.uri(), text);
        }
    }
}

/// Arbitrary bytes as a server certificate whose SubjectPublicKeyInfo a pin is checked
/// against: the DER walk never panics, what it finds is a SEQUENCE inside the input, and the
/// pin exists exactly when it does.
pub fn spki(data: &[u8]) {
    let found = toolgate_guard::tls::spki_of(data);
    if let Some(spki) = found {
        assert_eq!(spki.first(), Some(&0x30));
        let start = spki.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + spki.len() <= data.len());
    }
    assert_eq!(toolgate_guard::tls::pin_of(data).is_some(), found.is_some());
}

/// Arbitrary bytes as a DPoP proof (first byte even), or as the claims of a proof signed by a
/// fixed Ed25519 key (first byte odd, so that the claim checks are reached past the
/// signature): parsing never panics; a proof that parses has a 43-character thumbprint, and it
/// checks out against its own method and URL at its own time exactly when its URL is an
/// `http(s)` URL; the nonce reader takes any text.
pub fn dpop_proof(data: &[u8]) {
    use crate::dpop::{Expected, Nonces, Proof, ProofError};
    use std::sync::OnceLock;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let proof = if mode % 2 == 0 {
        text.to_string()
    } else {
        static KEY: OnceLock<Option<crate::jose::SigningKey>> = OnceLock::new();
        let Some(key) = KEY
            .get_or_init(|| crate::jose::SigningKey::generate_ed25519().ok())
            .as_ref()
        else {
            return;
        };
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA",
                                        "jwk": key.public_jwk().to_json()});
        let input = format!(
            "{}.{}",
            crate::jose::b64::encode(header.to_string().as_bytes()),
            crate::jose::b64::encode(text.as_bytes())
        );
        let Ok(sig) = key.sign(input.as_bytes()) else {
            return;
        };
        format!("{input}.{}", crate::jose::b64::encode(&sig))
    };
    if let Ok(p) = Proof::parse(&proof) {
        assert_eq!(p.jkt.len(), 43);
        let own = Expected {
            method: &p.htm,
            url: &p.htu,
            access_token: None,
        };
        let verdict = p.check(&own, p.iat, 60, 0);
        if crate::resource::normalize_http_url(&p.htu).is_some() {
            assert_eq!(verdict, Ok(()));
        } else {
            assert_eq!(verdict, Err(ProofError::Url));
        }
        // One second past the window on either side is refused.
        assert!(p.check(&own, p.iat.saturating_add(61), 60, 0).is_err());
    }
    let nonces = Nonces::with_secret(b"fuzz", 300);
    assert!(
        !nonces.accepts(text, 1_700_000_000)
            || text == nonces.current(1_700_000_000)
            || text == nonces.current(1_700_000_000 - 300)
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// CI's finding: a member named like serde_json's raw-value marker is an ordinary name to
    /// the strict reader (the tool is read from `params.name`, never from the marker's string),
    /// and the oracle counts the message.
    #[test]
    fn the_raw_value_marker_is_an_ordinary_member_name() {
        let crash = br#"[{"$serde_json::private::RawValue":"4.0","id":1,"melt":{}}]"#;
        jsonrpc(crash);
        assert_eq!(
            crate::gateway::jsonrpc_targets(crash, 64).unwrap(),
            vec![None]
        );
        let smuggled = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"$serde_json::private::RawValue":"{\"name\":\"search\"}"}}"#;
        jsonrpc(smuggled);
        assert!(crate::gateway::jsonrpc_targets(smuggled, 64).is_err());
    }

    /// The proof oracle holds on the seeds (the RFC 9449 examples, and claims to sign).
    #[test]
    fn the_dpop_oracle_holds_on_the_seed_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/dpop_proof");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            dpop_proof(&data);
            for n in 0..data.len() {
                dpop_proof(&data[..n]);
            }
            seeds += 1;
        }
        assert!(seeds >= 3);
    }

    /// The seeds are certificates made by OpenSSL (not rcgen, which the integration tests use).
    #[test]
    fn the_fuzz_oracle_holds_on_the_seed_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/x509_san");
        let seed = |n: &str| std::fs::read(format!("{dir}/{n}")).unwrap();
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            x509_san(&std::fs::read(entry.unwrap().path()).unwrap());
            seeds += 1;
        }
        assert!(seeds >= 4);
        let one = seed("seed-0");
        assert_eq!(
            crate::spiffe::uri_sans(&one).unwrap(),
            vec!["spiffe://dev.local/ns/demo/sa/agent-1"]
        );
        assert_eq!(
            crate::spiffe::spiffe_id(&one).unwrap().wimse_subject(),
            "wimse://dev.local/ns/demo/sa/agent-1"
        );
        assert_eq!(
            crate::spiffe::spiffe_id(&seed("seed-1")),
            Err(crate::spiffe::SvidError::SeveralSpiffeIds)
        );
        assert_eq!(
            crate::spiffe::spiffe_id(&seed("seed-2")),
            Err(crate::spiffe::SvidError::NoSpiffeId)
        );
        // Cut anywhere, a certificate is no longer one.
        for cut in 0..one.len() {
            assert!(
                crate::spiffe::uri_sans(one.get(..cut).unwrap()).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// Every seed certificate has an SPKI, and every prefix and one-byte change of it runs
    /// through the oracle.
    #[test]
    fn the_spki_oracle_holds_on_the_seed_corpus_and_its_mutations() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/spki");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let der = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(toolgate_guard::tls::spki_of(&der).is_some());
            for n in 0..der.len() {
                super::spki(&der[..n]);
                let mut changed = der.clone();
                changed[n] ^= 0xff;
                super::spki(&changed);
            }
            seeds += 1;
        }
        assert!(seeds >= 3);
    }
}
