//! Public JSON Web Keys (RFC 7517) with pinned algorithms, thumbprints and ring verification.

use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::{b64, json, Algorithm, JoseError};

/// Members that only appear in private (or symmetric) keys; never accepted.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// Supported elliptic curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    /// NIST P-256 (`crv: "P-256"`), verified as ES256.
    P256,
    /// NIST P-384 (`crv: "P-384"`), verified as ES384.
    P384,
}

impl EcCurve {
    fn name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            EcCurve::P256 => Algorithm::ES256,
            EcCurve::P384 => Algorithm::ES384,
        }
    }
}

/// Raw public key material (big-endian / fixed-length octets as in the JWK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// `kty: "EC"` (RFC 7518 §6.2.1): an uncompressed curve point.
    Ec {
        /// The curve, which also fixes the algorithm.
        crv: EcCurve,
        /// The x coordinate, exactly the curve's coordinate length.
        x: Vec<u8>,
        /// The y coordinate, exactly the curve's coordinate length.
        y: Vec<u8>,
    },
    /// `kty: "OKP"`, `crv: "Ed25519"` (RFC 8037 §2).
    Okp {
        /// The 32-byte Ed25519 public key.
        x: Vec<u8>,
    },
    /// `kty: "RSA"` (RFC 7518 §6.3.1), 2048 to 8192 bits.
    Rsa {
        /// The modulus, minimal big-endian.
        n: Vec<u8>,
        /// The public exponent, minimal big-endian.
        e: Vec<u8>,
    },
}

/// A public verification key with its algorithm pinned at parse time.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// The key ID a token's header names to select this key; toolgate's own keys use their
    /// RFC 7638 thumbprint.
    pub kid: Option<String>,
    /// The only algorithm this key verifies: a token whose header `alg` differs is refused
    /// before any signature math (no algorithm confusion).
    pub alg: Algorithm,
    /// The public key itself.
    pub material: KeyMaterial,
}

fn str_member<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, JoseError> {
    obj.get(name)
        .and_then(Value::as_str)
        .ok_or(JoseError::InvalidKey)
}

fn bytes_member(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JoseError> {
    b64::decode(str_member(obj, name)?).map_err(|_| JoseError::InvalidKey)
}

fn fixed_member(obj: &Map<String, Value>, name: &str, len: usize) -> Result<Vec<u8>, JoseError> {
    let bytes = bytes_member(obj, name)?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(JoseError::InvalidKey)
    }
}

/// The `y` coordinates (little-endian, sign bit clear) of the Ed25519 points of small order:
/// 0, 1, p - 1 and the two of order 8 (as libsodium lists them). A public key among them (in
/// either sign) verifies signatures nobody made — `R` = the identity, `S` = 0 verifies over
/// any message — so it is no key at all.
const ED25519_SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// An Ed25519 public key that is a canonical encoding (`y` < p) of a point not of small
/// order. ring checks neither.
fn ed25519_point_is_sound(x: &[u8]) -> bool {
    let Ok(mut y) = <[u8; 32]>::try_from(x) else {
        return false;
    };
    if let Some(last) = y.last_mut() {
        *last &= 0x7f;
    }
    // p = 2^255 - 19: y >= p is `ed ff … ff 7f` or above, little-endian.
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let at_least_p = y.iter().rev().cmp(p.iter().rev()) != std::cmp::Ordering::Less;
    !at_least_p && !ED25519_SMALL_ORDER_Y.contains(&y)
}

/// RFC 7518 §6.3.1: minimal big-endian unsigned integers, 2048..=8192-bit modulus,
/// odd exponent in 3..2^33 (ring's bounds).
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), JoseError> {
    let (&n0, _) = n.split_first().ok_or(JoseError::InvalidKey)?;
    let (&e0, _) = e.split_first().ok_or(JoseError::InvalidKey)?;
    if n0 == 0 || e0 == 0 || e.len() > 5 {
        return Err(JoseError::InvalidKey);
    }
    let bits = (n.len() - 1) * 8 + (8 - n0.leading_zeros() as usize);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(JoseError::InvalidKey);
    }
    let e_val = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if e_val < 3 || e_val % 2 == 0 || e_val >= (1 << 33) {
        return Err(JoseError::InvalidKey);
    }
    Ok(())
}

impl Jwk {
    /// Parse one public JWK object, pinning its algorithm (see module docs).
    ///
    /// EC P-256 -> ES256, P-384 -> ES384, OKP Ed25519 -> EdDSA, RSA -> `alg`
    /// (RS256 or PS256, default RS256). A present `alg` must agree, `use` must
    /// be `"sig"`, `kid` must be a string, and private members are refused.
    pub fn from_json(v: &Value) -> Result<Jwk, JoseError> {
        let obj = v.as_object().ok_or(JoseError::InvalidKey)?;
        if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
            return Err(JoseError::InvalidKey);
        }
        if obj.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
            return Err(JoseError::InvalidKey);
        }
        let kid = match obj.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(JoseError::InvalidKey),
        };
        let declared = match obj.get("alg") {
            None => None,
            Some(Value::String(s)) => Some(Algorithm::from_name(s).ok_or(JoseError::InvalidKey)?),
            Some(_) => return Err(JoseError::InvalidKey),
        };
        let (material, alg) = match str_member(obj, "kty")? {
            "EC" => {
                let crv = match str_member(obj, "crv")? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    _ => return Err(JoseError::InvalidKey),
                };
                let x = fixed_member(obj, "x", crv.coordinate_len())?;
                let y = fixed_member(obj, "y", crv.coordinate_len())?;
                (KeyMaterial::Ec { crv, x, y }, crv.algorithm())
            }
            "OKP" => {
                if str_member(obj, "crv")? != "Ed25519" {
                    return Err(JoseError::InvalidKey);
                }
                let x = fixed_member(obj, "x", 32)?;
                if !ed25519_point_is_sound(&x) {
                    return Err(JoseError::InvalidKey);
                }
                (KeyMaterial::Okp { x }, Algorithm::EdDSA)
            }
            "RSA" => {
                let n = bytes_member(obj, "n")?;
                let e = bytes_member(obj, "e")?;
                check_rsa(&n, &e)?;
                let alg = match declared {
                    None | Some(Algorithm::RS256) => Algorithm::RS256,
                    Some(Algorithm::PS256) => Algorithm::PS256,
                    Some(_) => return Err(JoseError::InvalidKey),
                };
                (KeyMaterial::Rsa { n, e }, alg)
            }
            _ => return Err(JoseError::InvalidKey),
        };
        if declared.is_some_and(|d| d != alg) {
            return Err(JoseError::InvalidKey);
        }
        Ok(Jwk { kid, alg, material })
    }

    /// Serialize as a public JWK: `{kty, crv?, x?, y?, n?, e?, kid?, alg, use:"sig"}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        match &self.material {
            KeyMaterial::Ec { crv, x, y } => {
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), crv.name().into());
                m.insert("x".into(), b64::encode(x).into());
                m.insert("y".into(), b64::encode(y).into());
            }
            KeyMaterial::Okp { x } => {
                m.insert("kty".into(), "OKP".into());
                m.insert("crv".into(), "Ed25519".into());
                m.insert("x".into(), b64::encode(x).into());
            }
            KeyMaterial::Rsa { n, e } => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64::encode(n).into());
                m.insert("e".into(), b64::encode(e).into());
            }
        }
        if let Some(kid) = &self.kid {
            m.insert("kid".into(), kid.as_str().into());
        }
        m.insert("alg".into(), self.alg.name().into());
        m.insert("use".into(), "sig".into());
        Value::Object(m)
    }

    /// RFC 7638 thumbprint: base64url(SHA-256(required members, sorted, no whitespace)).
    pub fn thumbprint(&self) -> String {
        // Every value is base64url or a fixed name, so no JSON escaping is needed.
        let canonical = match &self.material {
            KeyMaterial::Ec { crv, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                crv.name(),
                b64::encode(x),
                b64::encode(y)
            ),
            KeyMaterial::Okp { x } => {
                format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    b64::encode(x)
                )
            }
            KeyMaterial::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                b64::encode(e),
                b64::encode(n)
            ),
        };
        b64::encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// Verify `signature` over `message` with this key's pinned algorithm.
    ///
    /// ECDSA signatures must be fixed-width `r || s` (JWS form); DER is rejected.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), JoseError> {
        let ok = match (&self.material, self.alg) {
            (KeyMaterial::Ec { crv, x, y }, alg) if alg == crv.algorithm() => {
                let len = crv.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(JoseError::InvalidKey);
                }
                if signature.len() != 2 * len {
                    return Err(JoseError::BadSignature);
                }
                let point = [&[0x04][..], x, y].concat();
                let ring_alg = match crv {
                    EcCurve::P256 => &sig::ECDSA_P256_SHA256_FIXED,
                    EcCurve::P384 => &sig::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(ring_alg, point).verify(message, signature)
            }
            (KeyMaterial::Okp { x }, Algorithm::EdDSA) => {
                UnparsedPublicKey::new(&sig::ED25519, x).verify(message, signature)
            }
            (KeyMaterial::Rsa { n, e }, Algorithm::RS256 | Algorithm::PS256) => {
                let params = if self.alg == Algorithm::RS256 {
                    &sig::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &sig::RSA_PSS_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            _ => return Err(JoseError::InvalidKey),
        };
        ok.map_err(|_| JoseError::BadSignature)
    }
}

/// A JWK Set (RFC 7517 §5) of public verification keys.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    /// The keys, each with a distinct `kid` when parsed by [`JwkSet::from_json_bytes`].
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parse `{"keys":[...]}` strictly. Any unusable key, or two keys with the
    /// same `kid`, fails the whole set with `InvalidKey`.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<JwkSet, JoseError> {
        let obj = json::parse_object(bytes)?;
        let arr = keys_member(&obj)?;
        let mut keys: Vec<Jwk> = Vec::with_capacity(arr.len());
        for v in arr {
            let key = Jwk::from_json(v).map_err(|_| JoseError::InvalidKey)?;
            if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
                return Err(JoseError::InvalidKey);
            }
            keys.push(key);
        }
        Ok(JwkSet { keys })
    }

    /// A JWKS published by an identity provider (RFC 7517 §5): its signature keys toolgate
    /// can use, and how many others it skipped (encryption keys, curves or sizes toolgate does
    /// not verify with). Stricter where it matters: a private or symmetric member in any key,
    /// or two keys with one `kid`, refuse the whole document.
    pub fn from_provider_json_bytes(bytes: &[u8]) -> Result<(JwkSet, usize), JoseError> {
        let obj = json::parse_object(bytes)?;
        let arr = keys_member(&obj)?;
        let mut keys: Vec<Jwk> = Vec::with_capacity(arr.len());
        let mut skipped = 0;
        for v in arr {
            let o = v.as_object().ok_or(JoseError::InvalidKey)?;
            if PRIVATE_MEMBERS.iter().any(|m| o.contains_key(*m)) {
                return Err(JoseError::InvalidKey);
            }
            let Ok(key) = Jwk::from_json(v) else {
                skipped += 1;
                continue;
            };
            if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
                return Err(JoseError::InvalidKey);
            }
            keys.push(key);
        }
        Ok((JwkSet { keys }, skipped))
    }

    /// Serialize as `{"keys":[...]}`.
    pub fn to_json(&self) -> Value {
        let keys = self.keys.iter().map(Jwk::to_json).collect();
        let mut m = Map::new();
        m.insert("keys".into(), Value::Array(keys));
        Value::Object(m)
    }

    /// The first key whose `kid` equals `kid` exactly.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The `keys` array of a JWKS document.
fn keys_member(obj: &Map<String, Value>) -> Result<&Vec<Value>, JoseError> {
    obj.get("keys")
        .and_then(Value::as_array)
        .ok_or(JoseError::Json)
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

    #[test]
    fn provider_sets_skip_what_toolgate_cannot_use_and_refuse_private_members() {
        let ec = r#"{"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let enc = r#"{"kty":"RSA","use":"enc","kid":"e","n":"AQAB","e":"AQAB"}"#;
        let okp_x448 = r#"{"kty":"OKP","crv":"X25519","kid":"x","x":"AAAA"}"#;
        let doc = format!(r#"{{"keys":[{ec},{enc},{okp_x448}]}}"#);
        let (set, skipped) = JwkSet::from_provider_json_bytes(doc.as_bytes()).unwrap();
        assert_eq!((set.keys.len(), skipped), (1, 2));
        assert!(set.find("a").is_some());
        // The strict reader refuses the document whole.
        assert!(JwkSet::from_json_bytes(doc.as_bytes()).is_err());
        let private = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#;
        assert_eq!(
            JwkSet::from_provider_json_bytes(private.as_bytes()).unwrap_err(),
            JoseError::InvalidKey
        );
        let twice = format!(r#"{{"keys":[{ec},{ec}]}}"#);
        assert!(JwkSet::from_provider_json_bytes(twice.as_bytes()).is_err());
        assert!(JwkSet::from_provider_json_bytes(b"{\"keys\":{}}").is_err());
    }
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const RFC7515_A3: &str = include_str!("../../testdata/rfc7515_a3_es256.json");
    const RFC7515_A2: &str = include_str!("../../testdata/rfc7515_a2_rs256.json");
    const RFC8037: &str = include_str!("../../testdata/rfc8037_a_ed25519.json");
    const RFC7638: &str = include_str!("../../testdata/rfc7638_rsa.json");

    fn doc(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// Split a compact token into (signing input, decoded signature).
    fn split(token: &str) -> (&str, Vec<u8>) {
        let (input, s) = token.rsplit_once('.').unwrap();
        (input, b64::decode(s).unwrap())
    }

    fn der_integer(bytes: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
        if v.first().is_none_or(|&b| b & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }

    fn to_der(fixed: &[u8]) -> Vec<u8> {
        let (r, s) = fixed.split_at(fixed.len() / 2);
        let body = [der_integer(r), der_integer(s)].concat();
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    fn with(v: &Value, name: &str, value: Value) -> Value {
        let mut v = v.clone();
        v.as_object_mut().unwrap().insert(name.into(), value);
        v
    }

    fn without(v: &Value, name: &str) -> Value {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove(name);
        v
    }

    #[test]
    fn rfc7515_a3_es256_verify_der_and_zero_rejected() {
        let d = doc(RFC7515_A3);
        let jwk = Jwk::from_json(&d["jwk"]).unwrap();
        assert_eq!(jwk.alg, Algorithm::ES256);
        let (input, signature) = split(d["token"].as_str().unwrap());
        jwk.verify(input.as_bytes(), &signature).unwrap();

        let der = to_der(&signature);
        assert_ne!(der.len(), 64);
        assert_eq!(
            jwk.verify(input.as_bytes(), &der),
            Err(JoseError::BadSignature)
        );

        let mut r_zero = signature.clone();
        r_zero[..32].fill(0);
        assert_eq!(
            jwk.verify(input.as_bytes(), &r_zero),
            Err(JoseError::BadSignature)
        );
        let mut s_zero = signature.clone();
        s_zero[32..].fill(0);
        assert_eq!(
            jwk.verify(input.as_bytes(), &s_zero),
            Err(JoseError::BadSignature)
        );
        assert_eq!(
            jwk.verify(input.as_bytes(), &[0; 64]),
            Err(JoseError::BadSignature)
        );
        assert_eq!(
            jwk.verify(input.as_bytes(), &signature[..63]),
            Err(JoseError::BadSignature)
        );
        assert_eq!(
            jwk.verify(b"other", &signature),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn rfc7515_a3_sign_with_published_private_key() {
        let d = doc(RFC7515_A3);
        let jwk = Jwk::from_json(&d["jwk"]).unwrap();
        let KeyMaterial::Ec { x, y, .. } = &jwk.material else {
            panic!("not EC")
        };
        let public = [&[0x04][..], x, y].concat();
        let private = b64::decode(d["d"].as_str().unwrap()).unwrap();
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            &private,
            &public,
            &rng,
        )
        .unwrap();
        let (input, published) = split(d["token"].as_str().unwrap());
        let fresh = pair.sign(&rng, input.as_bytes()).unwrap();
        assert_eq!(fresh.as_ref().len(), 64);
        assert_ne!(fresh.as_ref(), &published[..]); // randomized nonce
        jwk.verify(input.as_bytes(), fresh.as_ref()).unwrap();
        // The private JWK itself is refused.
        let private_jwk = with(&d["jwk"], "d", d["d"].clone());
        assert_eq!(
            Jwk::from_json(&private_jwk).err(),
            Some(JoseError::InvalidKey)
        );
    }

    #[test]
    fn rfc7515_a2_rs256_verify_resign_and_ps256() {
        let d = doc(RFC7515_A2);
        let jwk = Jwk::from_json(&d["jwk"]).unwrap();
        assert_eq!(jwk.alg, Algorithm::RS256);
        let (input, published) = split(d["token"].as_str().unwrap());
        jwk.verify(input.as_bytes(), &published).unwrap();

        // PKCS#1 v1.5 is deterministic: the published private key reproduces it.
        let p = &d["private"];
        let get = |v: &Value, k: &str| b64::decode(v[k].as_str().unwrap()).unwrap();
        let KeyMaterial::Rsa { n, e } = &jwk.material else {
            panic!("not RSA")
        };
        let pair = sig::RsaKeyPair::from_components(&ring::rsa::KeyPairComponents {
            public_key: RsaPublicKeyComponents {
                n: n.clone(),
                e: e.clone(),
            },
            d: get(p, "d"),
            p: get(p, "p"),
            q: get(p, "q"),
            dP: get(p, "dp"),
            dQ: get(p, "dq"),
            qInv: get(p, "qi"),
        })
        .unwrap();
        let rng = SystemRandom::new();
        let mut out = vec![0; pair.public().modulus_len()];
        pair.sign(&sig::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut out)
            .unwrap();
        assert_eq!(out, published);

        // PS256 round trip with the same key material, pinned via `alg`.
        let ps = Jwk::from_json(&with(&d["jwk"], "alg", json!("PS256"))).unwrap();
        assert_eq!(ps.alg, Algorithm::PS256);
        pair.sign(&sig::RSA_PSS_SHA256, &rng, b"hello", &mut out)
            .unwrap();
        ps.verify(b"hello", &out).unwrap();
        assert_eq!(ps.verify(b"hellO", &out), Err(JoseError::BadSignature));
        // A PKCS#1 signature does not verify under the PSS-pinned key and vice versa.
        assert_eq!(
            ps.verify(input.as_bytes(), &published),
            Err(JoseError::BadSignature)
        );
        assert_eq!(jwk.verify(b"hello", &out), Err(JoseError::BadSignature));
    }

    #[test]
    fn rfc8037_ed25519_verify_and_thumbprint() {
        let d = doc(RFC8037);
        let jwk = Jwk::from_json(&d["jwk"]).unwrap();
        assert_eq!(jwk.alg, Algorithm::EdDSA);
        assert_eq!(jwk.thumbprint(), d["thumbprint"].as_str().unwrap());
        let token = d["token"].as_str().unwrap();
        let (input, signature) = split(token);
        let payload = input.split_once('.').unwrap().1;
        assert_eq!(
            b64::decode(payload).unwrap(),
            d["payload"].as_str().unwrap().as_bytes()
        );
        jwk.verify(input.as_bytes(), &signature).unwrap();
        let mut bad = signature.clone();
        bad[0] ^= 1;
        assert_eq!(
            jwk.verify(input.as_bytes(), &bad),
            Err(JoseError::BadSignature)
        );
        // The payload is not a JSON object, so the JWT decoder refuses it.
        assert_eq!(crate::jose::decode(token).err(), Some(JoseError::Json));
        let private_jwk = with(&d["jwk"], "d", d["d"].clone());
        assert_eq!(
            Jwk::from_json(&private_jwk).err(),
            Some(JoseError::InvalidKey)
        );
    }

    #[test]
    fn rfc7638_thumbprint() {
        let d = doc(RFC7638);
        let jwk = Jwk::from_json(&d["jwk"]).unwrap();
        assert_eq!(jwk.kid.as_deref(), Some("2011-04-29"));
        assert_eq!(jwk.thumbprint(), d["thumbprint"].as_str().unwrap());
        // Optional members do not affect the thumbprint.
        let bare = Jwk::from_json(&without(&without(&d["jwk"], "kid"), "alg")).unwrap();
        assert_eq!(bare.thumbprint(), jwk.thumbprint());
    }

    #[test]
    fn to_json_round_trips() {
        for s in [RFC7515_A3, RFC7515_A2, RFC8037, RFC7638] {
            let jwk = Jwk::from_json(&doc(s)["jwk"]).unwrap();
            let v = jwk.to_json();
            assert_eq!(v["use"], json!("sig"));
            assert_eq!(v["alg"], json!(jwk.alg.name()));
            let back = Jwk::from_json(&v).unwrap();
            assert_eq!(back.material, jwk.material);
            assert_eq!(back.alg, jwk.alg);
            assert_eq!(back.kid, jwk.kid);
            assert_eq!(back.thumbprint(), jwk.thumbprint());
        }
    }

    #[test]
    fn es384_round_trip() {
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P384_SHA384_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let v = json!({"kty":"EC","crv":"P-384",
            "x": b64::encode(&point[1..49]), "y": b64::encode(&point[49..])});
        let jwk = Jwk::from_json(&v).unwrap();
        assert_eq!(jwk.alg, Algorithm::ES384);
        let signature = pair.sign(&rng, b"msg").unwrap();
        assert_eq!(signature.as_ref().len(), 96);
        jwk.verify(b"msg", signature.as_ref()).unwrap();
        assert_eq!(
            jwk.verify(b"msg", &to_der(signature.as_ref())),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn invalid_keys() {
        let ec = doc(RFC7515_A3)["jwk"].clone();
        let okp = doc(RFC8037)["jwk"].clone();
        let rsa = doc(RFC7515_A2)["jwk"].clone();
        let short = json!(b64::encode(&[7; 31]));
        let cases = [
            json!(null),
            json!([]),
            json!("EC"),
            without(&ec, "kty"),
            with(&ec, "kty", json!("oct")),
            with(&ec, "kty", json!("ec")),
            with(&ec, "crv", json!("P-521")),
            with(&ec, "crv", json!("secp256k1")),
            with(&ec, "crv", json!("P-384")), // 32-byte coordinates on P-384
            without(&ec, "y"),
            with(&ec, "x", short.clone()),
            with(&ec, "y", json!(b64::encode(&[7; 33]))),
            with(
                &ec,
                "x",
                json!("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU="),
            ),
            with(&ec, "x", json!(7)),
            with(&ec, "alg", json!("ES384")),
            with(&ec, "alg", json!("RS256")),
            with(&ec, "alg", json!("none")),
            with(&ec, "alg", json!(1)),
            with(&ec, "use", json!("enc")),
            with(&ec, "use", json!(null)),
            with(&ec, "kid", json!(1)),
            with(&ec, "d", json!("AA")),
            with(&okp, "crv", json!("Ed448")),
            with(&okp, "crv", json!("X25519")),
            with(&okp, "x", short),
            with(&okp, "alg", json!("ES256")),
            with(&rsa, "alg", json!("ES256")),
            with(&rsa, "alg", json!("RS384")),
            with(&rsa, "p", json!("AQAB")),
            with(&rsa, "oth", json!([])),
            without(&rsa, "e"),
            with(&rsa, "e", json!("")),
            with(&rsa, "e", json!("AAEAAQ")), // leading zero
            with(&rsa, "e", json!("AQ")),     // e = 1
            with(&rsa, "e", json!("Ag")),     // even
            with(&rsa, "n", json!(b64::encode(&[0xc5; 128]))), // 1024-bit
            with(&rsa, "n", json!(b64::encode(&[0x01; 256]))), // 2041-bit
            with(&rsa, "n", json!(b64::encode(&[0xc5; 1025]))), // > 8192-bit
            with(
                &rsa,
                "n",
                json!(b64::encode(&[&[0][..], &[0xc5; 256]].concat())),
            ), // leading zero
            json!({"kty":"oct","k":"AAAA"}),
        ];
        for (i, v) in cases.iter().enumerate() {
            assert_eq!(
                Jwk::from_json(v).err(),
                Some(JoseError::InvalidKey),
                "case {i}: {v}"
            );
        }
        // Boundaries that are fine: exactly 2048 bits, e = 3, unknown public members.
        assert!(Jwk::from_json(&with(&rsa, "n", json!(b64::encode(&[0x80; 256])))).is_ok());
        assert!(Jwk::from_json(&with(&rsa, "e", json!("Aw"))).is_ok());
        assert!(Jwk::from_json(&with(&ec, "x5t", json!("abc"))).is_ok());
        assert!(Jwk::from_json(&with(&ec, "use", json!("sig"))).is_ok());
    }

    #[test]
    fn inconsistent_struct_is_rejected_at_verify() {
        let rsa = Jwk::from_json(&doc(RFC7515_A2)["jwk"]).unwrap();
        let forged = Jwk {
            alg: Algorithm::ES256,
            ..rsa
        };
        assert_eq!(forged.verify(b"m", &[0; 64]), Err(JoseError::InvalidKey));
    }

    #[test]
    fn off_curve_point_never_verifies() {
        let d = doc(RFC7515_A3);
        let (input, signature) = split(d["token"].as_str().unwrap());
        let mut v = d["jwk"].clone();
        let mut y = b64::decode(v["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        v["y"] = json!(b64::encode(&y));
        let jwk = Jwk::from_json(&v).unwrap();
        assert_eq!(
            jwk.verify(input.as_bytes(), &signature),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn jwk_set() {
        let mut es = doc(RFC7515_A3)["jwk"].clone();
        es["kid"] = json!("es");
        let rsa = doc(RFC7638)["jwk"].clone();
        let ed = doc(RFC8037)["jwk"].clone();
        let set_json = json!({"keys":[es.clone(), rsa, ed]}).to_string();
        let set = JwkSet::from_json_bytes(set_json.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 3);
        assert_eq!(set.find("es").unwrap().alg, Algorithm::ES256);
        assert_eq!(set.find("2011-04-29").unwrap().alg, Algorithm::RS256);
        assert!(set.find("ES").is_none());
        assert!(set.find("").is_none());

        let again = JwkSet::from_json_bytes(set.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(again.keys.len(), 3);
        assert_eq!(again.find("es").unwrap().material, set.keys[0].material);

        assert_eq!(
            JwkSet::from_json_bytes(br#"{"keys":[]}"#)
                .unwrap()
                .keys
                .len(),
            0
        );
        let bad_key = json!({"keys":[es.clone(), {"kty":"EC"}]}).to_string();
        assert_eq!(
            JwkSet::from_json_bytes(bad_key.as_bytes()).err(),
            Some(JoseError::InvalidKey)
        );
        let dup_kid = json!({"keys":[es.clone(), es]}).to_string();
        assert_eq!(
            JwkSet::from_json_bytes(dup_kid.as_bytes()).err(),
            Some(JoseError::InvalidKey)
        );
        assert_eq!(
            JwkSet::from_json_bytes(br#"{"keys":[],"keys":[]}"#).err(),
            Some(JoseError::DuplicateName)
        );
        let nested_dup = br#"{"keys":[{"kty":"OKP","kty":"OKP"}]}"#;
        assert_eq!(
            JwkSet::from_json_bytes(nested_dup).err(),
            Some(JoseError::DuplicateName)
        );
        for bad in [&b"{}"[..], br#"{"keys":{}}"#, b"[]", b"not json"] {
            assert_eq!(JwkSet::from_json_bytes(bad).err(), Some(JoseError::Json));
        }
    }

    /// Found by an intruder review: the identity point with R = identity, S = 0 verified
    /// a "proof" over any message. Small-order and non-canonical keys are no keys.
    #[test]
    fn small_order_and_non_canonical_ed25519_keys_are_refused() {
        let okp = |x: &[u8]| {
            Jwk::from_json(&serde_json::json!({"kty": "OKP", "crv": "Ed25519",
                                               "x": b64::encode(x)}))
        };
        let mut keys: Vec<[u8; 32]> = ED25519_SMALL_ORDER_Y.to_vec();
        for y in ED25519_SMALL_ORDER_Y {
            let mut signed = y;
            signed[31] |= 0x80;
            keys.push(signed);
        }
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        keys.push(p);
        let mut p1 = p;
        p1[0] = 0xee;
        keys.push(p1);
        for x in keys {
            assert_eq!(okp(&x).err(), Some(JoseError::InvalidKey), "{x:02x?}");
        }
        let identity = okp(&ED25519_SMALL_ORDER_Y[1]);
        assert!(identity.is_err());
        // A real key is still one (RFC 8037 A.2).
        let real = b64::decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        assert!(okp(&real).is_ok());
    }
}
