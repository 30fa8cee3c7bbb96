//! Compact JWS (RFC 7515 §7.1): strict decoding, algorithm allow-list, signing.

use serde_json::{Map, Value};

use super::{b64, json, JoseError, Jwk, SigningKey};

/// Upper bound on the length of a compact token, checked before anything else.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Header parameters we never honour; their presence rejects the token.
const FORBIDDEN_HEADERS: [&str; 7] = ["crit", "jku", "x5u", "jwk", "x5c", "b64", "cty"];

/// The only signature algorithms accepted (no `none`, no HMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256; the signature is the 64-byte `r || s` (RFC 7518 §3.4).
    ES256,
    /// ECDSA on P-384 with SHA-384; the signature is the 96-byte `r || s`.
    ES384,
    /// Ed25519 (RFC 8037 §3.1); toolgate never accepts Ed448 under this name.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256 and MGF1-SHA-256.
    PS256,
}

impl Algorithm {
    /// The JWA name, e.g. `"ES256"`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// Exact, case-sensitive lookup of a JWA name. `Ed25519`, RFC 9864's fully-specified name,
    /// is the same algorithm as toolgate's `EdDSA` (which is Ed25519 only): panva's DPoP
    /// client signs with it.
    pub fn from_name(s: &str) -> Option<Algorithm> {
        match s {
            "ES256" => Some(Algorithm::ES256),
            "ES384" => Some(Algorithm::ES384),
            "EdDSA" | "Ed25519" => Some(Algorithm::EdDSA),
            "RS256" => Some(Algorithm::RS256),
            "PS256" => Some(Algorithm::PS256),
            _ => None,
        }
    }
}

/// Header `typ` of a JWT of no particular kind (what most identity providers send).
pub const TYP_JWT: &str = "JWT";
/// Header `typ` of an OAuth 2.0 access token (RFC 9068 §2.1): the tool tokens toolgate mints.
pub const TYP_ACCESS_TOKEN: &str = "at+jwt";
/// Header `typ` of toolgate's agent tokens, so that neither kind passes as the other.
pub const TYP_AGENT: &str = "toolgate-agent+jwt";

/// What a header `typ` says a token is. Compared as RFC 7515 §4.1.9 says: case-insensitively,
/// with `application/` implied when the value has no `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// No `typ`.
    Unspecified,
    /// `JWT`: a JWT of no particular kind.
    Jwt,
    /// `at+jwt`: an OAuth 2.0 access token (RFC 9068).
    AccessToken,
    /// `toolgate-agent+jwt`: a toolgate agent token.
    Agent,
    /// Any other media type (`secevent+jwt`, `dpop+jwt`, `logout+jwt`, …): another kind of
    /// token, never a subject or tool token.
    Other,
}

impl TokenType {
    /// Classify a `typ` value (`None` when the header has none).
    pub fn of(typ: Option<&str>) -> TokenType {
        let Some(typ) = typ else {
            return TokenType::Unspecified;
        };
        let lower = typ.to_ascii_lowercase();
        let name = lower.strip_prefix("application/").unwrap_or(&lower);
        match name {
            "jwt" => TokenType::Jwt,
            "at+jwt" => TokenType::AccessToken,
            "toolgate-agent+jwt" => TokenType::Agent,
            _ => TokenType::Other,
        }
    }
}

/// A validated JOSE header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The signature algorithm, already on the allow-list.
    pub alg: Algorithm,
    /// The key ID (RFC 7515 §4.1.4) that selects the verification key.
    pub kid: Option<String>,
    /// The media type (RFC 7515 §4.1.9): present, absent, or (not a string) a malformed header.
    /// [`Header::token_type`] classifies it.
    pub typ: Option<String>,
    /// All header members, as parsed.
    pub raw: Map<String, Value>,
}

impl Header {
    /// The kind of token the `typ` names.
    pub fn token_type(&self) -> TokenType {
        TokenType::of(self.typ.as_deref())
    }
}

/// A decoded (not yet verified) compact JWS whose payload is a JSON object.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    /// The protected header.
    pub header: Header,
    /// The payload, a JSON object without duplicate member names; untrusted until
    /// [`Compact::verify_with`] succeeds.
    pub claims: Map<String, Value>,
    /// `"<b64 header>.<b64 payload>"`, borrowed from the token.
    pub signing_input: &'a str,
    /// The decoded signature octets (RFC 7515 §5.2 step 3).
    pub signature: Vec<u8>,
}

impl Compact<'_> {
    /// Check the header `alg` against the key's pinned algorithm, then the signature.
    pub fn verify_with(&self, key: &Jwk) -> Result<(), JoseError> {
        if self.header.alg != key.alg {
            return Err(JoseError::AlgorithmMismatch);
        }
        key.verify(self.signing_input.as_bytes(), &self.signature)
    }

    /// The signature in one form per token, to name it (never to judge it: a high-S signature
    /// is valid, and other issuers make them). ECDSA signatures are malleable — `(r, s)` and
    /// `(r, n - s)` verify alike — so for ES256 and ES384 an `s` above `n / 2` becomes `n - s`.
    /// Only an `s` in `1..n` is mapped, onto another `s` in `1..n`, so a signature that does not
    /// verify never takes the form of one that does. Other algorithms' signatures are unique
    /// (Ed25519 and RSA verification refuse every other encoding) and kept as they are.
    pub fn canonical_signature(&self) -> Vec<u8> {
        canonical(self.header.alg, &self.signature)
    }
}

/// A signature of `alg` in its one form (see [`Compact::canonical_signature`]).
fn canonical(alg: Algorithm, signature: &[u8]) -> Vec<u8> {
    let order: &[u8] = match alg {
        Algorithm::ES256 => &P256_ORDER,
        Algorithm::ES384 => &P384_ORDER,
        Algorithm::EdDSA | Algorithm::RS256 | Algorithm::PS256 => &[],
    };
    low_s(signature, order).unwrap_or_else(|| signature.to_vec())
}

/// The order `n` of P-256's base point, big-endian (SEC 2 §2.4.2).
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The order `n` of P-384's base point, big-endian (SEC 2 §2.5.1).
const P384_ORDER: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// `r || (n - s)` when the fixed-size signature `r || s` has `n / 2 < s < n`; `None` when it is
/// already low, out of range, or not `2 * len(n)` bytes.
fn low_s(signature: &[u8], order: &[u8]) -> Option<Vec<u8>> {
    if order.is_empty() || signature.len() != 2 * order.len() {
        return None;
    }
    let (r, s) = signature.split_at(order.len());
    // Equal-length big-endian byte strings compare as the numbers they are.
    if s >= order {
        return None;
    }
    let mut negated = vec![0u8; s.len()];
    let mut borrow = 0u16;
    for ((out, n), s) in negated.iter_mut().zip(order).zip(s).rev() {
        let d = u16::from(*n)
            .wrapping_sub(u16::from(*s))
            .wrapping_sub(borrow);
        *out = d.to_be_bytes()[1];
        borrow = u16::from(d > 0xff);
    }
    if s <= negated.as_slice() {
        return None;
    }
    let mut out = r.to_vec();
    out.extend_from_slice(&negated);
    Some(out)
}

/// Parse a compact JWS. Does NOT verify the signature.
///
/// Order: length cap, character set (ASCII, no whitespace), exactly three
/// segments, the header (strict base64url, JSON, `alg`, forbidden parameters,
/// `kid`/`typ` types), a non-empty signature, then the payload JSON object.
pub fn decode(token: &str) -> Result<Compact<'_>, JoseError> {
    decode_segments(segments(token)?)
}

/// The rest of [`decode`] once the header is judged: the signature and the payload.
fn decode_segments(s: Segments<'_>) -> Result<Compact<'_>, JoseError> {
    let payload_bytes = b64::decode(s.payload_b64)?;
    let signature = b64::decode(s.sig_b64)?;
    let claims = json::parse_object(&payload_bytes)?;
    Ok(Compact {
        header: s.header,
        claims,
        signing_input: s.signing_input,
        signature,
    })
}

/// A name for a token that is the same for every form of its signature (see
/// [`Compact::canonical_signature`]), read without decoding the payload: SHA-256 over the
/// signing input's length, the signing input and the canonical signature. The shape and the
/// header are judged as [`decode`] judges them. A name, never a verdict: the token it names
/// is as unverified as before.
pub fn fingerprint(token: &str) -> Result<[u8; 32], JoseError> {
    let s = segments(token)?;
    let signature = b64::decode(s.sig_b64)?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let input = s.signing_input.as_bytes();
    hash.update(&(input.len() as u64).to_be_bytes());
    hash.update(input);
    hash.update(&canonical(s.header.alg, &signature));
    hash.finish()
        .as_ref()
        .try_into()
        .map_err(|_| JoseError::Shape)
}

/// Parse a compact JWS whose header carries its own public key in `jwk`, as a DPoP proof does
/// (RFC 9449 §4.2); every other forbidden header parameter stays forbidden. Does NOT verify
/// the signature, and the key in `header.raw["jwk"]` is still unjudged.
pub fn decode_with_embedded_key(token: &str) -> Result<Compact<'_>, JoseError> {
    decode_segments(segments_allowing(token, Some("jwk"))?)
}

/// A compact JWS split in three, its header judged; the payload and signature still encoded.
struct Segments<'a> {
    header: Header,
    signing_input: &'a str,
    payload_b64: &'a str,
    sig_b64: &'a str,
}

/// The first stage of [`decode`]: length, characters, three segments, the header.
fn segments(token: &str) -> Result<Segments<'_>, JoseError> {
    segments_allowing(token, None)
}

/// [`segments`], with one otherwise forbidden header parameter admitted.
fn segments_allowing<'a>(
    token: &'a str,
    admitted: Option<&str>,
) -> Result<Segments<'a>, JoseError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JoseError::TooLarge);
    }
    if !token.is_ascii() || token.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(JoseError::Shape);
    }
    let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(JoseError::Shape)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(JoseError::Shape)?;
    if payload_b64.contains('.') || header_b64.is_empty() || payload_b64.is_empty() {
        return Err(JoseError::Shape);
    }
    // The header is judged before the signature segment, so an unsecured JWT (`alg: none`,
    // empty signature) is refused for its algorithm.
    let header = parse_header(json::parse_object(&b64::decode(header_b64)?)?, admitted)?;
    if sig_b64.is_empty() {
        return Err(JoseError::Shape);
    }
    Ok(Segments {
        header,
        signing_input,
        payload_b64,
        sig_b64,
    })
}

fn parse_header(raw: Map<String, Value>, admitted: Option<&str>) -> Result<Header, JoseError> {
    let alg = raw
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Algorithm::from_name)
        .ok_or(JoseError::UnsupportedAlgorithm)?;
    if FORBIDDEN_HEADERS
        .iter()
        .any(|name| Some(*name) != admitted && raw.contains_key(*name))
    {
        return Err(JoseError::ForbiddenHeader);
    }
    let kid = optional_string(&raw, "kid")?;
    let typ = optional_string(&raw, "typ")?;
    Ok(Header { alg, kid, typ, raw })
}

fn optional_string(raw: &Map<String, Value>, name: &str) -> Result<Option<String>, JoseError> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JoseError::Json),
    }
}

/// Encode and sign: header `{"alg","typ","kid"}` + claims -> compact string. `typ` says what
/// kind of token it is: [`TYP_ACCESS_TOKEN`], [`TYP_AGENT`], [`TYP_JWT`], ….
///
/// Fails with `TooLarge` rather than mint a token that [`decode`] would refuse.
pub fn encode_signed(
    key: &SigningKey,
    typ: &str,
    claims: &Map<String, Value>,
) -> Result<String, JoseError> {
    let mut header = Map::new();
    header.insert("alg".into(), Value::from(key.algorithm().name()));
    header.insert("typ".into(), Value::from(typ));
    header.insert("kid".into(), Value::from(key.kid()));
    let header_json = serde_json::to_vec(&header).map_err(|_| JoseError::Json)?;
    let claims_json = serde_json::to_vec(claims).map_err(|_| JoseError::Json)?;
    let mut token = b64::encode(&header_json);
    token.push('.');
    token.push_str(&b64::encode(&claims_json));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&b64::encode(&signature));
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JoseError::TooLarge);
    }
    Ok(token)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use serde_json::json;

    const RFC7515_A3: &str = include_str!("../../testdata/rfc7515_a3_es256.json");
    const RFC7515_A2: &str = include_str!("../../testdata/rfc7515_a2_rs256.json");

    fn vector(doc: &str) -> (Jwk, String) {
        let v: Value = serde_json::from_str(doc).unwrap();
        let jwk = Jwk::from_json(&v["jwk"]).unwrap();
        (jwk, v["token"].as_str().unwrap().to_owned())
    }

    fn seg(v: &Value) -> String {
        b64::encode(&serde_json::to_vec(v).unwrap())
    }

    fn raw_seg(s: &str) -> String {
        b64::encode(s.as_bytes())
    }

    /// A syntactically valid token with the given raw header/payload JSON text.
    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.{}",
            raw_seg(header),
            raw_seg(payload),
            b64::encode(&[1; 64])
        )
    }

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::PS256,
        ] {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        for bad in [
            "es256", "none", "None", "NONE", "HS256", "EDDSA", "ES512", "",
        ] {
            assert_eq!(Algorithm::from_name(bad), None);
        }
    }

    #[test]
    fn rfc7515_a3_es256_decodes_and_verifies() {
        let (jwk, tok) = vector(RFC7515_A3);
        let c = decode(&tok).unwrap();
        assert_eq!(c.header.alg, Algorithm::ES256);
        assert_eq!(c.header.kid, None);
        assert_eq!(c.claims["iss"], json!("joe"));
        assert_eq!(c.claims["exp"], json!(1300819380));
        assert_eq!(c.signature.len(), 64);
        assert!(tok.starts_with(c.signing_input));
        c.verify_with(&jwk).unwrap();
    }

    #[test]
    fn rfc7515_a2_rs256_decodes_and_verifies() {
        let (jwk, tok) = vector(RFC7515_A2);
        let c = decode(&tok).unwrap();
        assert_eq!(c.header.alg, Algorithm::RS256);
        assert_eq!(jwk.alg, Algorithm::RS256);
        c.verify_with(&jwk).unwrap();
        // ES256 header against the RSA key: mismatch before any crypto.
        let (_, es_tok) = vector(RFC7515_A3);
        assert_eq!(
            decode(&es_tok).unwrap().verify_with(&jwk),
            Err(JoseError::AlgorithmMismatch)
        );
        // RS256 token against a PS256-pinned copy of the same key.
        let mut ps = jwk.clone();
        ps.alg = Algorithm::PS256;
        assert_eq!(c.verify_with(&ps), Err(JoseError::AlgorithmMismatch));
    }

    #[test]
    fn tampered_vectors_fail() {
        let (jwk, tok) = vector(RFC7515_A3);
        // Flip the last signature character: Q -> A changes the final s byte.
        let bad = format!("{}A", &tok[..tok.len() - 1]);
        assert_eq!(
            decode(&bad).unwrap().verify_with(&jwk),
            Err(JoseError::BadSignature)
        );
        // Different payload, same signature.
        let (h, rest) = tok.split_once('.').unwrap();
        let (_, s) = rest.rsplit_once('.').unwrap();
        let forged = format!("{h}.{}.{s}", seg(&json!({"iss":"joe","admin":true})));
        assert_eq!(
            decode(&forged).unwrap().verify_with(&jwk),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn segment_count_and_emptiness() {
        let (_, tok) = vector(RFC7515_A3);
        let parts: Vec<&str> = tok.split('.').collect();
        let two = format!("{}.{}", parts[0], parts[1]);
        let four = format!("{tok}.{}", parts[2]);
        let five = format!("{tok}.{}.{}", parts[1], parts[2]);
        for bad in [
            "",
            ".",
            "..",
            "...",
            "abc",
            two.as_str(),
            four.as_str(),
            five.as_str(),
            &format!("{two}."),
            &format!(".{}.{}", parts[1], parts[2]),
            &format!("{}..{}", parts[0], parts[2]),
        ] {
            assert_eq!(decode(bad).err(), Some(JoseError::Shape), "{bad:?}");
        }
    }

    #[test]
    fn whitespace_and_non_ascii_are_shape_errors() {
        let (_, tok) = vector(RFC7515_A3);
        for bad in [
            format!(" {tok}"),
            format!("{tok}\n"),
            format!("{tok}\r\n"),
            tok.replacen('.', ". ", 1),
            tok.replacen('.', "\t.", 1),
            format!("{tok}\u{a0}"),
            tok.replacen('e', "é", 1),
        ] {
            assert_eq!(decode(&bad).err(), Some(JoseError::Shape), "{bad:?}");
        }
    }

    #[test]
    fn base64_strictness() {
        let (_, tok) = vector(RFC7515_A3);
        let (h, rest) = tok.split_once('.').unwrap();
        for bad in [
            format!("{h}=.{rest}"),
            format!("{tok}=="),
            tok.replace('-', "+"),
            tok.replacen('D', "/", 1),
            format!("{h}.{rest}").replacen("eyJ", "ey!", 1),
        ] {
            assert_eq!(decode(&bad).err(), Some(JoseError::Base64), "{bad:?}");
        }
    }

    #[test]
    fn length_cap_comes_first() {
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(decode(&big).err(), Some(JoseError::TooLarge));
        let big_ws = " ".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(decode(&big_ws).err(), Some(JoseError::TooLarge));
        // Just at the cap is parsed normally.
        let header = r#"{"alg":"ES256"}"#;
        let mut n = MAX_TOKEN_BYTES;
        let at_cap = loop {
            let t = token(header, &format!(r#"{{"f":"{}"}}"#, "x".repeat(n)));
            if t.len() <= MAX_TOKEN_BYTES {
                break t;
            }
            n -= 1;
        };
        assert!(at_cap.len() > MAX_TOKEN_BYTES - 4);
        assert!(decode(&at_cap).is_ok());
    }

    #[test]
    fn unsupported_algorithms() {
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"nOnE"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"es256"}"#,
            r#"{"alg":"ES512"}"#,
            r#"{"alg":"ES256 "}"#,
            r#"{"alg":""}"#,
            r#"{"alg":null}"#,
            r#"{"alg":256}"#,
            r#"{"alg":["ES256"]}"#,
            r#"{"typ":"JWT"}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                decode(&token(header, "{}")).err(),
                Some(JoseError::UnsupportedAlgorithm),
                "{header}"
            );
        }
    }

    #[test]
    fn forbidden_headers() {
        for name in FORBIDDEN_HEADERS {
            let header = format!(r#"{{"alg":"ES256","{name}":"x"}}"#);
            assert_eq!(
                decode(&token(&header, "{}")).err(),
                Some(JoseError::ForbiddenHeader),
                "{name}"
            );
        }
        let crit = r#"{"alg":"ES256","crit":["exp"],"exp":1}"#;
        assert_eq!(
            decode(&token(crit, "{}")).err(),
            Some(JoseError::ForbiddenHeader)
        );
    }

    #[test]
    fn header_member_types() {
        assert_eq!(
            decode(&token(r#"{"alg":"ES256","kid":1}"#, "{}")).err(),
            Some(JoseError::Json)
        );
        assert_eq!(
            decode(&token(r#"{"alg":"ES256","typ":null}"#, "{}")).err(),
            Some(JoseError::Json)
        );
        let tok = token(r#"{"alg":"PS256","kid":"k1","typ":"JWT","x":1}"#, "{}");
        let c = decode(&tok).unwrap();
        assert_eq!(c.header.alg, Algorithm::PS256);
        assert_eq!(c.header.kid.as_deref(), Some("k1"));
        assert_eq!(c.header.typ.as_deref(), Some("JWT"));
        assert_eq!(c.header.raw["x"], json!(1));
    }

    #[test]
    fn duplicates_rejected() {
        let dup_header = r#"{"alg":"ES256","alg":"ES256"}"#;
        assert_eq!(
            decode(&token(dup_header, "{}")).err(),
            Some(JoseError::DuplicateName)
        );
        // Classic confusion attempt: a second alg that some parsers keep.
        let dup_alg = r#"{"alg":"ES256","alg":"none"}"#;
        assert_eq!(
            decode(&token(dup_alg, "{}")).err(),
            Some(JoseError::DuplicateName)
        );
        let ok_header = r#"{"alg":"ES256"}"#;
        let dup_claim = r#"{"sub":"a","sub":"b"}"#;
        assert_eq!(
            decode(&token(ok_header, dup_claim)).err(),
            Some(JoseError::DuplicateName)
        );
        let nested = r#"{"sub":"a","act":{"sub":"x","sub":"y"}}"#;
        assert_eq!(
            decode(&token(ok_header, nested)).err(),
            Some(JoseError::DuplicateName)
        );
    }

    #[test]
    fn payload_must_be_json_object() {
        let h = r#"{"alg":"ES256"}"#;
        for payload in [
            "[]",
            "\"claims\"",
            "1",
            "null",
            "not json",
            "{\"a\":1",
            "{} {}",
        ] {
            assert_eq!(
                decode(&token(h, payload)).err(),
                Some(JoseError::Json),
                "{payload}"
            );
        }
        assert_eq!(decode(&token("[1]", "{}")).err(), Some(JoseError::Json));
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000));
        assert_eq!(decode(&token(h, &deep)).err(), Some(JoseError::Json));
    }

    #[test]
    fn empty_signature_is_shape() {
        let h = raw_seg(r#"{"alg":"ES256"}"#);
        let p = raw_seg("{}");
        assert_eq!(decode(&format!("{h}.{p}.")).err(), Some(JoseError::Shape));
    }

    #[test]
    fn mutations_never_panic_and_never_verify() {
        let (jwk, tok) = vector(RFC7515_A3);
        let mut checked = 0;
        for i in 0..=tok.len() {
            let truncated = &tok[..i];
            if let (true, Ok(c)) = (i < tok.len(), decode(truncated)) {
                assert!(c.verify_with(&jwk).is_err());
            }
            for ch in ['.', 'A', '_', '=', ' ', '\0', 'é'] {
                let mut m = tok.clone();
                if i < tok.len() {
                    m.replace_range(i..i + 1, ch.encode_utf8(&mut [0; 4]));
                } else {
                    m.push(ch);
                }
                if m != tok {
                    if let Ok(c) = decode(&m) {
                        assert!(c.verify_with(&jwk).is_err(), "{m}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000);
    }

    #[test]
    fn sign_decode_verify_round_trip() {
        let key = SigningKey::generate().unwrap();
        let jwk = key.public_jwk();
        let claims = json!({"iss":"toolgate","sub":"alice","aud":["a","b"],"exp":4102444800u64});
        let claims = claims.as_object().unwrap().clone();
        let tok = encode_signed(&key, TYP_ACCESS_TOKEN, &claims).unwrap();
        let c = decode(&tok).unwrap();
        assert_eq!(c.header.alg, Algorithm::ES256);
        assert_eq!(c.header.kid.as_deref(), Some(key.kid()));
        assert_eq!(c.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(c.header.token_type(), TokenType::AccessToken);
        assert_eq!(c.claims, claims);
        c.verify_with(&jwk).unwrap();

        // Tampered payload with the original signature.
        let (h, rest) = tok.split_once('.').unwrap();
        let (_, s) = rest.rsplit_once('.').unwrap();
        let forged = format!("{h}.{}.{s}", seg(&json!({"sub":"mallory"})));
        assert_eq!(
            decode(&forged).unwrap().verify_with(&jwk),
            Err(JoseError::BadSignature)
        );

        // Another key's JWK with the same alg does not verify.
        let other = SigningKey::generate().unwrap().public_jwk();
        assert_eq!(c.verify_with(&other), Err(JoseError::BadSignature));
    }

    #[test]
    fn encode_refuses_oversized_tokens() {
        let key = SigningKey::generate().unwrap();
        let mut claims = Map::new();
        claims.insert("f".into(), Value::from("x".repeat(MAX_TOKEN_BYTES)));
        assert_eq!(
            encode_signed(&key, TYP_JWT, &claims),
            Err(JoseError::TooLarge)
        );
    }

    /// `n - s` for a big-endian `s` below `n`, for the tests.
    fn negate(order: &[u8], s: &[u8]) -> Vec<u8> {
        let (mut out, mut borrow) = (vec![0u8; s.len()], 0i16);
        for i in (0..s.len()).rev() {
            let d = i16::from(order[i]) - i16::from(s[i]) - borrow;
            borrow = i16::from(d < 0);
            out[i] = d.rem_euclid(256) as u8;
        }
        out
    }

    /// The cache's name for a token: one per token whatever its ECDSA `s`, computed without
    /// the payload; an Ed25519 signature is never bent into another (it has one valid form).
    #[test]
    fn fingerprint_is_one_per_token() {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let key = SigningKey::generate().unwrap();
        let tok = encode_signed(&key, TYP_ACCESS_TOKEN, &claims).unwrap();
        let (input, sig) = tok.rsplit_once('.').unwrap();
        let sig = b64::decode(sig).unwrap();
        let (r, s) = sig.split_at(32);
        let twin = format!(
            "{input}.{}",
            b64::encode(&[r, &negate(&P256_ORDER, s)].concat())
        );
        assert_eq!(fingerprint(&tok).unwrap(), fingerprint(&twin).unwrap());
        let other = encode_signed(&key, TYP_ACCESS_TOKEN, &claims).unwrap();
        assert_ne!(fingerprint(&tok).unwrap(), fingerprint(&other).unwrap());
        // A payload that is not even JSON is read later, on a miss; the header is judged here.
        assert!(fingerprint(&format!(
            "{}.bm90IGpzb24.AAAA",
            input.split('.').next().unwrap()
        ))
        .is_ok());
        assert_eq!(
            fingerprint("eyJhbGciOiJub25lIn0.e30."),
            Err(JoseError::UnsupportedAlgorithm)
        );

        let ed = SigningKey::generate_ed25519().unwrap();
        let tok = encode_signed(&ed, TYP_ACCESS_TOKEN, &claims).unwrap();
        let (input, sig) = tok.rsplit_once('.').unwrap();
        let sig = b64::decode(sig).unwrap();
        let (r, s) = sig.split_at(32);
        let bent = format!(
            "{input}.{}",
            b64::encode(&[r, &negate(&P256_ORDER, s)].concat())
        );
        assert_ne!(fingerprint(&tok).unwrap(), fingerprint(&bent).unwrap());
    }

    #[test]
    fn high_s_verifies_and_has_the_low_s_form() {
        let key = SigningKey::generate().unwrap();
        let jwk = key.public_jwk();
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("alice"));
        let mut seen_high = false;
        for _ in 0..16 {
            let tok = encode_signed(&key, TYP_ACCESS_TOKEN, &claims).unwrap();
            let c = decode(&tok).unwrap();
            let (r, s) = c.signature.split_at(32);
            let flipped = [r, &negate(&P256_ORDER, s)].concat();
            let (input, _) = tok.rsplit_once('.').unwrap();
            let other = format!("{input}.{}", b64::encode(&flipped));
            let o = decode(&other).unwrap();
            // Both verify; both have one canonical form, the low one.
            c.verify_with(&jwk).unwrap();
            o.verify_with(&jwk).unwrap();
            assert_eq!(c.canonical_signature(), o.canonical_signature());
            let canonical = c.canonical_signature();
            let low = canonical[32..].to_vec();
            assert!(low <= negate(&P256_ORDER, &low));
            seen_high |= c.signature != canonical;
        }
        // ring signs with either half; sixteen signatures all low is 2^-16.
        assert!(seen_high);
    }

    #[test]
    fn out_of_range_s_keeps_its_own_form() {
        let r = [1u8; 32];
        // s = n, s = n + 1 (0xff.. high bytes), s = 0, s = all ones: not mapped.
        let mut n_plus_1 = P256_ORDER;
        n_plus_1[31] += 1;
        for s in [P256_ORDER, n_plus_1, [0u8; 32], [0xff; 32]] {
            let sig = [r.as_slice(), &s].concat();
            assert_eq!(low_s(&sig, &P256_ORDER), None);
        }
        // s = n - 1 is high: it becomes 1. s = 1 is low already.
        let mut n_minus_1 = P256_ORDER;
        n_minus_1[31] -= 1;
        let mut one = [0u8; 32];
        one[31] = 1;
        let sig = [r.as_slice(), &n_minus_1].concat();
        assert_eq!(
            low_s(&sig, &P256_ORDER),
            Some([r.as_slice(), &one].concat())
        );
        assert_eq!(low_s(&[r.as_slice(), &one].concat(), &P256_ORDER), None);
        // Wrong length, and P-384's order at P-384's length.
        assert_eq!(low_s(&[0u8; 63], &P256_ORDER), None);
        let mut n384_minus_1 = P384_ORDER;
        n384_minus_1[47] -= 1;
        let sig = [[2u8; 48].as_slice(), &n384_minus_1].concat();
        let mut one48 = [0u8; 48];
        one48[47] = 1;
        assert_eq!(
            low_s(&sig, &P384_ORDER),
            Some([[2u8; 48].as_slice(), &one48].concat())
        );
    }

    #[test]
    fn token_types_compare_as_media_types() {
        for (typ, want) in [
            (None, TokenType::Unspecified),
            (Some("JWT"), TokenType::Jwt),
            (Some("jwt"), TokenType::Jwt),
            (Some("application/jwt"), TokenType::Jwt),
            (Some("at+jwt"), TokenType::AccessToken),
            (Some("Application/AT+JWT"), TokenType::AccessToken),
            (Some("toolgate-agent+jwt"), TokenType::Agent),
            (Some("secevent+jwt"), TokenType::Other),
            (Some("dpop+jwt"), TokenType::Other),
            (Some("logout+jwt"), TokenType::Other),
            (Some("JWT; x=1"), TokenType::Other),
            (Some("text/jwt"), TokenType::Other),
            (Some(""), TokenType::Other),
        ] {
            assert_eq!(TokenType::of(typ), want, "{typ:?}");
        }
    }
}
