//! The token-signing key ring: one active key, generated once and kept in the database (or in
//! its own file, `--signing-key-file`), plus retired keys still published while tokens they
//! signed may be live.

use crate::jose::{Jwk, JwkSet, SigningKey};
use crate::store::{keys, Store, StoreError};
use base64::Engine;
use std::path::Path;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why the signing key could not be loaded.
#[derive(Debug)]
pub enum KeyError {
    /// The database failed.
    Store(StoreError),
    /// The key file is unusable: one sentence naming it, never its content.
    File(String),
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A PKCS#8 document as PEM (RFC 7468 `PRIVATE KEY`), as `openssl genpkey` writes it.
pub fn to_pem(pkcs8: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut pem = format!("{PEM_BEGIN}\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

/// The PKCS#8 document of a PEM `PRIVATE KEY` (surrounding whitespace allowed, nothing else).
pub fn from_pem(text: &str) -> Option<Vec<u8>> {
    let body = text.trim().strip_prefix(PEM_BEGIN)?.strip_suffix(PEM_END)?;
    let b64: String = body.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

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

    /// The key kept in `path` (PKCS#8 PEM, its owner's alone), apart from the database. A
    /// missing file is created `0600` with the database's active key — moved out — or a new
    /// one; then the database keeps no private key (overwritten, its log emptied). Blocking:
    /// call at start-up, off the async workers.
    pub fn from_file(store: &Store, path: &Path, now: i64) -> Result<KeyRing, KeyError> {
        let flag = "--signing-key-file";
        let shown = path.display();
        crate::secret_file::ensure_private(path, flag).map_err(KeyError::File)?;
        let key = match std::fs::read_to_string(path) {
            Ok(text) => from_pem(&text)
                .and_then(|der| SigningKey::from_pkcs8(&der).ok())
                .ok_or_else(|| {
                    KeyError::File(format!(
                        "{flag} {shown} is not a PKCS#8 PEM private key (P-256 or Ed25519)"
                    ))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let stored = store.call_blocking(move |c| keys::live(c, now))?;
                let key = match stored.into_iter().find(|k| k.active) {
                    Some(k) => SigningKey::from_pkcs8(&k.pkcs8)
                        .map_err(|_| StoreError::Corrupt("signing key"))?,
                    None => SigningKey::generate()
                        .map_err(|_| KeyError::File("cannot generate a signing key".to_string()))?,
                };
                crate::secret_file::create_private(path, to_pem(key.pkcs8()).as_bytes())
                    .map_err(|e| KeyError::File(format!("cannot create {flag} {shown}: {e}")))?;
                crate::log_info!("signing key {} written to {shown}", key.kid());
                key
            }
            Err(e) => return Err(KeyError::File(format!("cannot read {flag} {shown}: {e}"))),
        };
        // Only once the file holds the key (durably) does the database let go of it.
        let removed = store.call_blocking(keys::remove_all)?;
        for kid in removed.iter().filter(|k| k.as_str() != key.kid()) {
            crate::log_warn!(
                "signing key {kid} removed from the database: {flag} holds another key, and \
                 tokens {kid} signed no longer verify"
            );
        }
        let published = JwkSet {
            keys: vec![key.public_jwk()],
        };
        Ok(KeyRing {
            active: key,
            published,
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

    /// A P-256 key as `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes
    /// it (a throwaway, for this test only).
    const OPENSSL_P256: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMl2lEB0y0+xdzIKR
T5q3yf4wXAXRfVxnc0XxUqJffK+hRANCAASkFSm/SHeC7m8wFKhUlpuM7fgEoU7y
GnwDzM8Pssn8Fbpqa+KYEI9lfFXPLBGOLsucWET744MDL1bW3OtrSYaq
-----END PRIVATE KEY-----
";

    #[test]
    fn pem_round_trips_and_reads_openssl_keys() {
        let key = SigningKey::generate().unwrap();
        let pem = to_pem(key.pkcs8());
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(from_pem(&pem).unwrap(), key.pkcs8());
        let openssl = SigningKey::from_pkcs8(&from_pem(OPENSSL_P256).unwrap()).unwrap();
        assert_eq!(openssl.algorithm().name(), "ES256");
        assert_eq!(
            from_pem("-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----"),
            None
        );
        assert_eq!(from_pem("not a key"), None);
        assert_eq!(
            from_pem(&pem.replace("PRIVATE KEY", "EC PRIVATE KEY")),
            None
        );
    }
}
