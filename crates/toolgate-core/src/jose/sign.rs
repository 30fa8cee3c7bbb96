//! The daemon's own signing key (ES256 by default, Ed25519 optional), persisted as PKCS#8.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::jwk::{EcCurve, KeyMaterial};
use super::{Algorithm, JoseError, Jwk};

enum Inner {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private signing key. Its `Debug` output shows only the algorithm and kid.
pub struct SigningKey {
    inner: Inner,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
    public: Jwk,
    kid: String,
}

impl SigningKey {
    /// Generate a fresh ES256 (P-256) key.
    pub fn generate() -> Result<SigningKey, JoseError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JoseError::KeyGeneration)?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    /// Generate a fresh Ed25519 (EdDSA) key.
    pub fn generate_ed25519() -> Result<SigningKey, JoseError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| JoseError::KeyGeneration)?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    /// Load a PKCS#8 key: P-256 ECDSA, or Ed25519 (PKCS#8 v2, as generated here).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, JoseError> {
        let rng = SystemRandom::new();
        let (inner, material, alg) = if let Ok(pair) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
        {
            let point = pair.public_key().as_ref();
            let x = point.get(1..33).ok_or(JoseError::KeyGeneration)?.to_vec();
            let y = point.get(33..65).ok_or(JoseError::KeyGeneration)?.to_vec();
            let material = KeyMaterial::Ec {
                crv: EcCurve::P256,
                x,
                y,
            };
            (Inner::Es256(pair), material, Algorithm::ES256)
        } else {
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| JoseError::KeyGeneration)?;
            let x = pair.public_key().as_ref().to_vec();
            (
                Inner::Ed25519(pair),
                KeyMaterial::Okp { x },
                Algorithm::EdDSA,
            )
        };
        let mut public = Jwk {
            kid: None,
            alg,
            material,
        };
        let kid = public.thumbprint();
        public.kid = Some(kid.clone());
        Ok(SigningKey {
            inner,
            pkcs8: pkcs8.to_vec(),
            rng,
            public,
            kid,
        })
    }

    /// The PKCS#8 document, for persistence. Secret: handle with care.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The JWS algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.public.alg
    }

    /// RFC 7638 thumbprint of the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK, with `kid` set.
    pub fn public_jwk(&self) -> Jwk {
        self.public.clone()
    }

    /// Sign `message`: 64-byte `r || s` for ES256, 64-byte signature for EdDSA.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        match &self.inner {
            Inner::Es256(pair) => pair
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JoseError::KeyGeneration),
            Inner::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm().name())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
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
    use crate::jose::jws::{decode, encode_signed};
    use serde_json::json;

    #[test]
    fn es256_generate_sign_verify_and_reload() {
        let key = SigningKey::generate().unwrap();
        assert_eq!(key.algorithm(), Algorithm::ES256);
        let jwk = key.public_jwk();
        assert_eq!(jwk.alg, Algorithm::ES256);
        assert_eq!(jwk.kid.as_deref(), Some(key.kid()));
        assert_eq!(jwk.thumbprint(), key.kid());
        assert_eq!(key.kid().len(), 43);
        let s = key.sign(b"hello").unwrap();
        assert_eq!(s.len(), 64);
        jwk.verify(b"hello", &s).unwrap();
        assert_eq!(jwk.verify(b"hellO", &s), Err(JoseError::BadSignature));

        let reloaded = SigningKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(reloaded.kid(), key.kid());
        assert_eq!(reloaded.pkcs8(), key.pkcs8());
        jwk.verify(b"x", &reloaded.sign(b"x").unwrap()).unwrap();
        assert_ne!(SigningKey::generate().unwrap().kid(), key.kid());
    }

    #[test]
    fn ed25519_generate_sign_verify_and_reload() {
        let key = SigningKey::generate_ed25519().unwrap();
        assert_eq!(key.algorithm(), Algorithm::EdDSA);
        let reloaded = SigningKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(reloaded.kid(), key.kid());
        assert_eq!(reloaded.algorithm(), Algorithm::EdDSA);
        let claims = json!({"sub":"bob"}).as_object().unwrap().clone();
        let token = encode_signed(&key, crate::jose::TYP_JWT, &claims).unwrap();
        let c = decode(&token).unwrap();
        assert_eq!(c.header.alg, Algorithm::EdDSA);
        c.verify_with(&reloaded.public_jwk()).unwrap();
        // An ES256 key cannot verify an EdDSA token.
        let es = SigningKey::generate().unwrap().public_jwk();
        assert_eq!(c.verify_with(&es), Err(JoseError::AlgorithmMismatch));
    }

    #[test]
    fn bad_pkcs8_is_rejected() {
        assert_eq!(
            SigningKey::from_pkcs8(b"").err(),
            Some(JoseError::KeyGeneration)
        );
        assert_eq!(
            SigningKey::from_pkcs8(&[0x30; 40]).err(),
            Some(JoseError::KeyGeneration)
        );
        let mut doc = SigningKey::generate().unwrap().pkcs8().to_vec();
        let last = doc.len() - 1;
        doc[last] ^= 0xff; // corrupt the embedded public key
        assert!(SigningKey::from_pkcs8(&doc).is_err());
    }

    #[test]
    fn debug_does_not_leak_key_material() {
        let key = SigningKey::generate().unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("ES256") && dbg.contains(key.kid()), "{dbg}");
        assert!(!dbg.contains("pkcs8") && !dbg.contains("inner"), "{dbg}");
        assert!(dbg.len() < 120, "{dbg}");
    }
}
