//! TLS for the clients that talk to toolgate (the guard, the gateway, the CLI) and for the
//! gateway's upstream: rustls on ring, TLS 1.2 and 1.3 only, the server's chain checked
//! against given CA certificates (`--toolgate-ca`) or the system's roots, and optionally its
//! public key against a pin (`--toolgate-pin sha256//<base64>`, curl's `--pinnedpubkey` form).
//!
//! Every certificate error fails the connection; [`describe`] turns it into a sentence that
//! names the cause (`the server certificate has expired`).

use base64::Engine as _;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::PathBuf;
use std::sync::Arc;

/// The connector of every pooled client: plain TCP for `http://`, rustls for `https://`.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Where a client's trust in a server comes from. The default trusts the system's roots and
/// pins nothing; it is only used for `https://` URLs (an `http://` URL stays plain).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    ca: Option<CaSource>,
    pins: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
enum CaSource {
    File(PathBuf),
    Pem(Vec<u8>),
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ca = match &self.ca {
            None => "system roots".to_string(),
            Some(CaSource::File(p)) => p.display().to_string(),
            Some(CaSource::Pem(_)) => "PEM in memory".to_string(),
        };
        f.debug_struct("ClientTls")
            .field("ca", &ca)
            .field("pin", &self.pins)
            .finish()
    }
}

/// Why a client's TLS could not be set up (before any connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The CA file could not be read.
    CaFile {
        /// The file named.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The CA PEM holds no usable certificate (or a certificate the root store refuses).
    CaCertificates(String),
    /// No system root could be loaded (give a CA file instead).
    SystemRoots(String),
    /// The pin is not `sha256//<base64 of 32 bytes>` (several joined by `;`).
    Pin(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CaFile { path, reason } => write!(f, "cannot read the CA file {path}: {reason}"),
            Self::CaCertificates(why) => write!(f, "CA certificates: {why}"),
            Self::SystemRoots(why) => write!(f, "no system root certificates: {why}"),
            Self::Pin(why) => write!(
                f,
                "the pin must be sha256//<base64 of the SHA-256 of the server's SubjectPublicKeyInfo> (several joined by ';'): {why}"
            ),
        }
    }
}
impl std::error::Error for TlsError {}

impl ClientTls {
    /// Trust the system's roots, pin nothing (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust only the CA certificates in this PEM file (one or more), not the system's roots.
    /// The file is read when a client is built.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(CaSource::File(path.into()));
        self
    }

    /// Trust only these CA certificates (PEM, one or more), not the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(CaSource::Pem(pem.into()));
        self
    }

    /// Also require the server certificate's public key to match a pin:
    /// `sha256//<base64 of the SHA-256 of its DER SubjectPublicKeyInfo>` (curl's
    /// `--pinnedpubkey` form; `sha256/` is accepted too; several pins joined by `;` match if
    /// any does). Checked after, never instead of, the chain and name checks.
    pub fn pin(mut self, pin: impl Into<String>) -> Self {
        self.pins = Some(pin.into());
        self
    }

    /// Whether this is the default (system roots, no pin): anything else asks for TLS, and is
    /// refused with a plain `http://` URL rather than silently unused.
    pub fn is_default(&self) -> bool {
        self.ca.is_none() && self.pins.is_none()
    }

    /// The rustls configuration: TLS 1.2 and 1.3 on ring, the roots, the pin.
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(self.roots()?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::CaCertificates(e.to_string()))?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::CaCertificates(e.to_string()))?;
        let config = match &self.pins {
            None => builder.with_webpki_verifier(webpki).with_no_client_auth(),
            Some(pins) => builder
                .dangerous() // not less safe: the pin is checked after the webpki verifier
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    inner: webpki,
                    pins: parse_pins(pins)?,
                    provider,
                }))
                .with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// A connector for a base URL: `https` → TLS with this trust, anything else plain TCP
    /// (no roots are loaded then).
    pub fn connector(&self, https: bool) -> Result<Connector, TlsError> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        Ok(if https {
            builder
                .with_tls_config(Arc::unwrap_or_clone(self.config()?))
                .https_only()
                .enable_http1()
                .wrap_connector(tcp)
        } else {
            // Never used for TLS: the client builds only http:// URIs for a plain base.
            let empty = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::CaCertificates(e.to_string()))?
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
            builder
                .with_tls_config(empty)
                .https_or_http()
                .enable_http1()
                .wrap_connector(tcp)
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        let pem = match &self.ca {
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "the system has none".into());
                    return Err(TlsError::SystemRoots(format!("{why}; give a CA file")));
                }
                return Ok(store);
            }
            Some(CaSource::Pem(pem)) => pem.clone(),
            Some(CaSource::File(path)) => std::fs::read(path).map_err(|e| TlsError::CaFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
        };
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| TlsError::CaCertificates(format!("bad PEM: {e}")))?;
            store
                .add(cert)
                .map_err(|e| TlsError::CaCertificates(format!("not a CA certificate: {e}")))?;
        }
        if store.is_empty() {
            return Err(TlsError::CaCertificates(
                "no CERTIFICATE block in the PEM".into(),
            ));
        }
        Ok(store)
    }
}

/// `sha256//b64[;sha256//b64...]` → the SHA-256 digests.
fn parse_pins(pins: &str) -> Result<Vec<[u8; 32]>, TlsError> {
    let mut out = Vec::new();
    for pin in pins.split(';').map(str::trim) {
        let b64 = pin
            .strip_prefix("sha256//")
            .or_else(|| pin.strip_prefix("sha256/"))
            .ok_or_else(|| TlsError::Pin("it does not start with sha256//".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| TlsError::Pin("not base64".into()))?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TlsError::Pin("not 32 bytes".into()))?;
        out.push(digest);
    }
    Ok(out)
}

/// The pin of a certificate: `sha256//` + base64 of the SHA-256 of its SubjectPublicKeyInfo
/// (what `--toolgate-pin` takes), or `None` when the DER is not a certificate.
pub fn pin_of(cert_der: &[u8]) -> Option<String> {
    let spki = spki_of(cert_der)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    Some(format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    ))
}

/// The error a pin mismatch is reported as (inside `CertificateError::Other`).
#[derive(Debug)]
struct PinMismatch;
impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server's public key does not match the pin")
    }
}
impl std::error::Error for PinMismatch {}

/// The webpki verifier, then the pin.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let spki = spki_of(end_entity.as_ref()).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        // A digest of public data: no secret to protect with a constant-time compare.
        if self.pins.iter().any(|p| p.as_slice() == digest.as_ref()) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A sentence naming why a TLS connection failed, if `err` (or an error under it) is a TLS
/// error: `the server certificate has expired`. Never any key material.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(sentence(r));
        }
        // io::Error::source() skips the error it wraps: look inside it too.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = describe(inner) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

fn sentence(e: &rustls::Error) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "the server certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the server certificate is not valid yet".into()
            }
            C::UnknownIssuer => {
                "the server certificate is not signed by a CA this client trusts".into()
            }
            C::NotValidForName => {
                "the server certificate is not valid for the server's name".into()
            }
            C::NotValidForNameContext { expected, .. } => format!(
                "the server certificate is not valid for the name {}",
                expected.to_str()
            ),
            C::Revoked => "the server certificate has been revoked".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server certificate is not for server authentication".into()
            }
            C::BadSignature
            | C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "the server certificate's signature does not verify against the trusted CAs".into()
            }
            C::BadEncoding => "the server certificate is malformed".into(),
            C::Other(o) if o.0.downcast_ref::<PinMismatch>().is_some() => {
                "the server's public key does not match --toolgate-pin".into()
            }
            other => format!("the server certificate is refused ({other:?})"),
        },
        rustls::Error::AlertReceived(a) => format!("the server refused the handshake ({a:?})"),
        rustls::Error::PeerIncompatible(p) => {
            format!("the server offers no TLS 1.2/1.3 setting this client accepts ({p:?})")
        }
        other => format!("the handshake failed ({other})"),
    }
}

/// A bounded DER reader: one TLV at a time, never reading past its input.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next TLV: (tag, whole encoding, contents).
    fn next(&mut self) -> Option<(u8, &'a [u8], &'a [u8])> {
        let input = self.0;
        let (&tag, rest) = input.split_first()?;
        // Only low tag numbers occur in the certificate fields walked here.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            // No indefinite form in DER; four length bytes are more than any certificate.
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, after) = rest.split_at_checked(n)?;
            rest = after;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            // DER: the long form only past 127, and with no leading zero byte.
            if len < 0x80 || bytes.first() == Some(&0) {
                return None;
            }
            len
        };
        let (contents, after) = rest.split_at_checked(len)?;
        let header = input.len() - rest.len();
        let whole = input.get(..header + len)?;
        self.0 = after;
        Some((tag, whole, contents))
    }

    /// The next TLV's contents if its tag is `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, _, contents) if t == tag => Some(contents),
            _ => None,
        }
    }
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT

/// The DER SubjectPublicKeyInfo (tag and length included) of an X.509 certificate: certificate
/// → tbsCertificate → past version, serial, signature algorithm, issuer, validity, subject.
/// `None` when the input is not shaped like a certificate (or has bytes after it).
pub fn spki_of(cert_der: &[u8]) -> Option<&[u8]> {
    let mut outer = Der(cert_der);
    let cert = outer.expect(SEQUENCE)?;
    if !outer.0.is_empty() {
        return None;
    }
    let mut cert = Der(cert);
    let mut tbs = Der(cert.expect(SEQUENCE)?);
    let (mut tag, mut whole, _) = tbs.next()?;
    if tag == VERSION {
        (tag, whole, _) = tbs.next()?;
    }
    let _ = whole;
    if tag != INTEGER {
        return None;
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    tbs.expect(SEQUENCE)?; // subject
    match tbs.next()? {
        (SEQUENCE, spki, _) => Some(spki),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_curls_form() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(
            parse_pins(&format!("sha256//{b64}")).unwrap(),
            vec![[7u8; 32]]
        );
        assert_eq!(
            parse_pins(&format!("sha256/{b64}")).unwrap(),
            vec![[7u8; 32]]
        );
        assert_eq!(
            parse_pins(&format!("sha256//{b64};sha256//{b64}"))
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(parse_pins(&b64), Err(TlsError::Pin(_))));
        assert!(matches!(parse_pins("sha256//AAAA"), Err(TlsError::Pin(_))));
        assert!(matches!(parse_pins("sha256//!!"), Err(TlsError::Pin(_))));
        assert!(matches!(parse_pins(""), Err(TlsError::Pin(_))));
    }

    #[test]
    fn der_lengths_are_bounded_and_minimal() {
        assert!(Der(&[0x30, 0x02, 0x01]).next().is_none(), "short contents");
        assert!(
            Der(&[0x30, 0x80, 0x00, 0x00]).next().is_none(),
            "indefinite"
        );
        assert!(
            Der(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).next().is_none(),
            "long form < 128"
        );
        assert!(
            Der(&[0x30, 0x85, 1, 0, 0, 0, 0]).next().is_none(),
            "5 length bytes"
        );
        assert!(
            Der(&[0x30, 0x82, 0x00, 0x80]).next().is_none(),
            "leading zero"
        );
        assert!(Der(&[0x1f, 0x00]).next().is_none(), "high tag number");
        assert!(Der(&[]).next().is_none());
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([9u8; 128]);
        let (tag, whole, contents) = Der(&long).next().unwrap();
        assert_eq!((tag, whole.len(), contents.len()), (0x04, 131, 128));
    }

    #[test]
    fn spki_of_rejects_what_is_not_a_certificate() {
        assert_eq!(spki_of(&[]), None);
        assert_eq!(spki_of(&[0x30, 0x00]), None);
        // A certificate-shaped value with trailing bytes.
        assert_eq!(spki_of(&[0x30, 0x00, 0x00]), None);
        // Every prefix of a minimal shape fails cleanly.
        let shape = [
            0x30, 0x11, 0x30, 0x0f, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00,
            0x30, 0x00, 0x30, 0x00, 0x30, 0x00,
        ];
        for n in 0..shape.len() {
            assert_eq!(spki_of(&shape[..n]), None);
        }
    }

    #[test]
    fn spki_of_a_minimal_certificate_shape() {
        // tbs: version, serial, alg, issuer, validity, subject, spki {1 byte}
        let tbs_body = [
            0xa0, 0x03, 0x02, 0x01, 0x02, // version v3
            0x02, 0x01, 0x01, // serial
            0x30, 0x00, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00, // alg, issuer, validity, subject
            0x30, 0x01, 0x05, // spki
        ];
        let mut tbs = vec![0x30, tbs_body.len() as u8];
        tbs.extend(tbs_body);
        let mut cert = vec![0x30, tbs.len() as u8];
        cert.extend(&tbs);
        assert_eq!(spki_of(&cert), Some(&[0x30, 0x01, 0x05][..]));
        // Without the optional version (v1).
        let v1_body = &tbs_body[5..];
        let mut tbs = vec![0x30, v1_body.len() as u8];
        tbs.extend(v1_body);
        let mut cert = vec![0x30, tbs.len() as u8];
        cert.extend(&tbs);
        assert_eq!(spki_of(&cert), Some(&[0x30, 0x01, 0x05][..]));
    }

    #[test]
    fn a_default_config_is_plain_for_http() {
        assert!(ClientTls::new().connector(false).is_ok());
        assert!(matches!(
            ClientTls::new().ca_pem(b"nothing".to_vec()).config(),
            Err(TlsError::CaCertificates(_))
        ));
        assert!(matches!(
            ClientTls::new().ca_file("/nonexistent/ca.pem").config(),
            Err(TlsError::CaFile { .. })
        ));
    }
}
