//! The client certificate of a mutual-TLS connection, as the listener that verified it hands it
//! to the decision: certificate-bound access tokens (RFC 8705 §3) carry its thumbprint in
//! `cnf.x5t#S256`.

use std::sync::Arc;

use ring::digest::{digest, SHA256};

use crate::jose;

/// The certificate chain a client presented on a TLS connection, leaf first, as DER. A listener
/// puts one into each request's extensions after the TLS handshake verified it (or after it
/// read it from a trusted proxy's header); nothing else creates one from request data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    chain: Arc<[Vec<u8>]>,
}

impl ClientCertificate {
    /// A chain, leaf first; `None` when it is empty.
    pub fn new(chain: Vec<Vec<u8>>) -> Option<Self> {
        if chain.first().is_none_or(|leaf| leaf.is_empty()) {
            return None;
        }
        Some(Self {
            chain: chain.into(),
        })
    }

    /// The end-entity certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The certificates after the leaf, as the client sent them.
    pub fn intermediates(&self) -> &[Vec<u8>] {
        self.chain.get(1..).unwrap_or_default()
    }

    /// The leaf's RFC 8705 thumbprint: base64url SHA-256 of its DER.
    pub fn thumbprint(&self) -> String {
        x5t_s256(self.leaf())
    }
}

/// RFC 8705 §3.1 `x5t#S256`: base64url (no padding) of the SHA-256 of a DER certificate.
pub fn x5t_s256(der: &[u8]) -> String {
    jose::b64::encode(digest(&SHA256, der).as_ref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_thumbprint_is_base64url_sha256_of_the_leaf() {
        let cert = ClientCertificate::new(vec![b"leaf".to_vec(), b"ca".to_vec()]).unwrap();
        assert_eq!(cert.thumbprint(), x5t_s256(b"leaf"));
        assert_eq!(cert.thumbprint().len(), 43);
        assert_eq!(cert.intermediates(), &[b"ca".to_vec()]);
        assert!(ClientCertificate::new(vec![]).is_none());
        assert!(ClientCertificate::new(vec![vec![]]).is_none());
    }
}
