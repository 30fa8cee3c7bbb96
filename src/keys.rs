//! The token-signing key ring: one active key, generated once and kept in the database, plus
//! retired keys still published while tokens they signed may be live.

use crate::jose::{Jwk, JwkSet, SigningKey};
use crate::store::{keys, Store, StoreError};

pub struct KeyRing {
    active: SigningKey,
    published: JwkSet,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active_kid", &self.active.kid())
            .field("published", &self.published.keys.len())
            .finish()
    }
}

impl crate::verify::KeySource for KeyRing {
    fn key(&self, kid: &str) -> Option<Jwk> {
        self.find(kid).cloned()
    }
}

impl KeyRing {
    /// Load the live keys, generating and storing the first key if there is none.
    /// Blocking: call at start-up, off the async workers.
    pub fn load_or_create(store: &Store, now: i64) -> Result<KeyRing, StoreError> {
        store.call_blocking(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut stored = keys::live(&tx, now)?;
            if !stored.first().is_some_and(|k| k.active) {
                let key = SigningKey::generate()
                    .map_err(|_| StoreError::Database("cannot generate a signing key".into()))?;
                keys::insert(&tx, key.kid(), key.algorithm().name(), key.pkcs8(), now)?;
                stored = keys::live(&tx, now)?;
            }
            tx.commit()?;
            let mut loaded = Vec::with_capacity(stored.len());
            for k in &stored {
                let key = SigningKey::from_pkcs8(&k.pkcs8)
                    .map_err(|_| StoreError::Corrupt("signing key"))?;
                if key.kid() != k.kid || key.algorithm().name() != k.alg {
                    return Err(StoreError::Corrupt("signing key"));
                }
                loaded.push(key);
            }
            let published = JwkSet {
                keys: loaded.iter().map(SigningKey::public_jwk).collect(),
            };
            let active = loaded
                .into_iter()
                .next()
                .ok_or(StoreError::Corrupt("signing key"))?;
            Ok(KeyRing { active, published })
        })
    }

    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// The published key named `kid`, if any.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.published.find(kid)
    }

    /// The JWKS document served at `/v1/identity/jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        self.published.to_json()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let (store, t) = Store::open(&path).unwrap();
        let kid = KeyRing::load_or_create(&store, 1000)
            .unwrap()
            .active()
            .kid()
            .to_string();
        drop(store);
        t.join().unwrap();
        let (store, _t) = Store::open(&path).unwrap();
        let ring = KeyRing::load_or_create(&store, 2000).unwrap();
        assert_eq!(ring.active().kid(), kid);
        assert!(ring.find(&kid).is_some());
        assert!(!format!("{ring:?}").contains("pkcs8"));
    }
}
