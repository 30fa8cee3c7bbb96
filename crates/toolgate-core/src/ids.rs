//! Random identifiers: token `jti`s, request ids, the database's unit id, nonces.

use crate::jose::b64;
use ring::rand::{SecureRandom, SystemRandom};

/// 128 random bits, base64url; `None` only if the system's random source fails.
pub fn random_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(b64::encode(&bytes))
}
