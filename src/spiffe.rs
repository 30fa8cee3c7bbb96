//! The client certificate as a credential: a SPIFFE X.509-SVID presented on the exchange's
//! mutual-TLS connection names the workload, trusted only when its chain verifies to a CA
//! configured for the SPIFFE ID's trust domain (`trusted_client_cas`).

use crate::config::TrustedClientCa;
use crate::mtls::ClientCertificate;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;

/// Longest SPIFFE ID accepted (the SPIFFE standard's 2048 bytes).
const MAX_SPIFFE_ID: usize = 2048;
/// Longest trust domain name (SPIFFE-ID §2.1).
const MAX_TRUST_DOMAIN: usize = 255;

/// Why a client certificate names no trusted workload. Variants carry no certificate text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidError {
    /// The certificate is not DER toolgate can read (after webpki accepted it, or never).
    Malformed,
    /// No URI SAN is a SPIFFE ID.
    NoSpiffeId,
    /// More than one SPIFFE URI SAN: which workload is meant is not clear (X509-SVID §2).
    SeveralSpiffeIds,
    /// The SPIFFE ID breaks the SPIFFE-ID grammar, or names a trust domain and no workload.
    BadSpiffeId,
    /// No CA is configured for the SPIFFE ID's trust domain.
    UnknownTrustDomain,
    /// The chain does not verify to the CA of that trust domain (another CA, expired, no
    /// client-auth usage, a bad signature).
    Untrusted,
}

impl SvidError {
    /// A fixed sentence for the client and the audit log.
    pub fn description(self) -> &'static str {
        match self {
            Self::Malformed => "client certificate could not be read",
            Self::NoSpiffeId => "client certificate has no SPIFFE ID (URI SAN)",
            Self::SeveralSpiffeIds => "client certificate has more than one SPIFFE ID",
            Self::BadSpiffeId => "client certificate's SPIFFE ID is malformed",
            Self::UnknownTrustDomain => {
                "client certificate's trust domain has no trusted client CA"
            }
            Self::Untrusted => {
                "client certificate does not verify to the CA trusted for its trust domain"
            }
        }
    }
}

/// A SPIFFE ID `spiffe://<trust domain><path>`, checked against the SPIFFE-ID grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// Parse `spiffe://td/path`: a lower-case trust domain of `a-z 0-9 . - _`, and a non-empty
    /// path of segments of `A-Z a-z 0-9 . - _`, none empty, `.` or `..`; no port, user info,
    /// query or fragment.
    pub fn parse(uri: &str) -> Result<Self, SvidError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .filter(|_| uri.len() <= MAX_SPIFFE_ID)
            .ok_or(SvidError::BadSpiffeId)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let td_ok = !td.is_empty()
            && td.len() <= MAX_TRUST_DOMAIN
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        // A workload is named by a path; the bare trust domain ID names no one.
        let path_ok = !path.is_empty()
            && path.split('/').skip(1).all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
        if !td_ok || !path_ok {
            return Err(SvidError::BadSpiffeId);
        }
        Ok(Self {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    /// The trust domain, which must be a trusted client CA's.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The subject of minted tokens: `wimse://<td><path>`, the twin revocation also matches
    /// as `spiffe://<td><path>` (see [`crate::revocation::Identity::keys`]).
    pub fn wimse_subject(&self) -> String {
        format!("wimse://{}{}", self.trust_domain, self.path)
    }

    /// The ID as written, `spiffe://<td><path>`.
    pub fn uri(&self) -> String {
        format!("spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// The workload a verified client certificate names: its one SPIFFE ID, once the chain the
/// client sent verifies, at `now`, for client authentication, to a CA configured for that
/// ID's trust domain — never to another trust domain's CA.
pub fn workload(
    cert: &ClientCertificate,
    cas: &[TrustedClientCa],
    now: i64,
) -> Result<SpiffeId, SvidError> {
    let id = spiffe_id(cert.leaf())?;
    // Every CA configured for this trust domain (two during a rotation), and no other.
    let anchors: Vec<_> = cas
        .iter()
        .filter(|ca| ca.trust_domain == id.trust_domain())
        .flat_map(|ca| ca.anchors.iter().cloned())
        .collect();
    if anchors.is_empty() {
        return Err(SvidError::UnknownTrustDomain);
    }
    let leaf = CertificateDer::from(cert.leaf());
    let end_entity = webpki::EndEntityCert::try_from(&leaf).map_err(|_| SvidError::Malformed)?;
    let intermediates: Vec<CertificateDer<'_>> = cert
        .intermediates()
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let time =
        UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or_default()));
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|_| SvidError::Untrusted)?;
    Ok(id)
}

/// The notAfter of a DER certificate, in Unix seconds: what a token minted from it may not
/// outlive. `Err` for DER this reader cannot walk.
pub fn not_after(der: &[u8]) -> Result<i64, DerError> {
    const INTEGER: u8 = 0x02;
    const VERSION: u8 = 0xa0;
    let cert = Der::new(der).only(SEQUENCE)?;
    let mut tbs = Der::new(Der::new(cert).expect(SEQUENCE)?);
    let (mut tag, _) = tbs.tlv()?;
    if tag == VERSION {
        (tag, _) = tbs.tlv()?;
    }
    if tag != INTEGER {
        return Err(DerError);
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    let mut validity = Der::new(tbs.expect(SEQUENCE)?);
    validity.tlv()?; // notBefore
    let (tag, time) = validity.tlv()?;
    if !validity.is_empty() {
        return Err(DerError);
    }
    x509_time(tag, time)
}

/// An X.509 `Time` (RFC 5280 §4.1.2.5): UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or
/// GeneralizedTime `YYYYMMDDHHMMSSZ`, as Unix seconds.
fn x509_time(tag: u8, text: &[u8]) -> Result<i64, DerError> {
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    let number = |from: usize, len: usize| -> Result<i64, DerError> {
        let digits = text.get(from..from + len).ok_or(DerError)?;
        digits.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit()
                .then(|| acc * 10 + i64::from(d - b'0'))
                .ok_or(DerError)
        })
    };
    let (year, at) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let yy = number(0, 2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (GENERALIZED_TIME, 15) => (number(0, 4)?, 4),
        _ => return Err(DerError),
    };
    if text.last() != Some(&b'Z') {
        return Err(DerError);
    }
    let (month, day) = (number(at, 2)?, number(at + 2, 2)?);
    let (hour, minute, second) = (number(at + 4, 2)?, number(at + 6, 2)?, number(at + 8, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(DerError);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The one SPIFFE ID among the URI SANs of a DER certificate.
pub fn spiffe_id(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let uris = uri_sans(der).map_err(|_| SvidError::Malformed)?;
    let mut spiffe = uris.iter().filter(|u| {
        u.get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
    });
    match (spiffe.next(), spiffe.next()) {
        (None, _) => Err(SvidError::NoSpiffeId),
        (Some(_), Some(_)) => Err(SvidError::SeveralSpiffeIds),
        (Some(one), None) => SpiffeId::parse(one),
    }
}

/// The DER could not be read as an X.509 certificate (as far as this reader goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerError;

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `uniformResourceIdentifier [6] IMPLICIT IA5String` in a GeneralName.
const URI_NAME: u8 = 0x86;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// A bounded DER reader (rustls' `codec::Reader` in spirit): every read checks the length
/// left, nothing indexes, and a caller can insist that nothing trails.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DerError> {
        if n > self.rest.len() {
            return Err(DerError);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DerError> {
        self.take(1)?.first().copied().ok_or(DerError)
    }

    /// One tag-length-value: single-byte tags only, definite minimal lengths below 16 MiB.
    fn tlv(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(DerError);
        }
        let first = self.byte()?;
        let len = match first {
            0..=0x7f => usize::from(first),
            0x81..=0x83 => {
                let n = usize::from(first & 0x7f);
                let bytes = self.take(n)?;
                if bytes.first() == Some(&0) {
                    return Err(DerError);
                }
                let len = bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                if len < 0x80 {
                    return Err(DerError);
                }
                len
            }
            _ => return Err(DerError),
        };
        Ok((tag, self.take(len)?))
    }

    /// The contents of one TLV that must have `tag`.
    fn expect(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        match self.tlv()? {
            (t, value) if t == tag => Ok(value),
            _ => Err(DerError),
        }
    }

    /// The contents of a TLV that must be the whole of what is left.
    fn only(mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let value = self.expect(tag)?;
        if self.is_empty() {
            Ok(value)
        } else {
            Err(DerError)
        }
    }
}

/// Every `uniformResourceIdentifier` of a certificate's subjectAltName extension, in order.
/// `Err` for DER this reader cannot walk (trailing bytes, long tags, indefinite lengths, two
/// subjectAltName extensions, a URI that is not ASCII).
pub fn uri_sans(der: &[u8]) -> Result<Vec<&str>, DerError> {
    let cert = Der::new(der).only(SEQUENCE)?;
    let tbs = Der::new(cert).expect(SEQUENCE)?;
    let mut fields = Der::new(tbs);
    let mut extensions = None;
    while !fields.is_empty() {
        let (tag, value) = fields.tlv()?;
        if tag == EXTENSIONS {
            extensions = Some(Der::new(value).only(SEQUENCE)?);
        }
    }
    let mut uris = Vec::new();
    let mut seen_san = false;
    let mut list = Der::new(extensions.unwrap_or_default());
    while !list.is_empty() {
        let mut ext = Der::new(list.expect(SEQUENCE)?);
        let oid = ext.expect(OID)?;
        let (mut tag, mut value) = ext.tlv()?;
        if tag == BOOLEAN {
            (tag, value) = ext.tlv()?;
        }
        if tag != OCTET_STRING || !ext.is_empty() {
            return Err(DerError);
        }
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if std::mem::replace(&mut seen_san, true) {
            return Err(DerError);
        }
        let mut names = Der::new(Der::new(value).only(SEQUENCE)?);
        while !names.is_empty() {
            let (tag, name) = names.tlv()?;
            if tag == URI_NAME {
                let uri = std::str::from_utf8(name).map_err(|_| DerError)?;
                if !uri.is_ascii() {
                    return Err(DerError);
                }
                uris.push(uri);
            }
        }
    }
    Ok(uris)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_follow_the_grammar() {
        let id = SpiffeId::parse("spiffe://dev.local/ns/demo/sa/agent-1").unwrap();
        assert_eq!(id.trust_domain(), "dev.local");
        assert_eq!(id.wimse_subject(), "wimse://dev.local/ns/demo/sa/agent-1");
        assert_eq!(id.uri(), "spiffe://dev.local/ns/demo/sa/agent-1");
        for bad in [
            "spiffe://dev.local",
            "spiffe://dev.local/",
            "spiffe://Dev.local/a",
            "spiffe://dev.local:8443/a",
            "spiffe://user@dev.local/a",
            "spiffe://dev.local/a//b",
            "spiffe://dev.local/a/../b",
            "spiffe://dev.local/a/./b",
            "spiffe://dev.local/a?q",
            "spiffe://dev.local/a#f",
            "spiffe://dev.local/a%20b",
            "spiffe:///a",
            "https://dev.local/a",
        ] {
            assert_eq!(SpiffeId::parse(bad), Err(SvidError::BadSpiffeId), "{bad}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID));
        assert_eq!(SpiffeId::parse(&long), Err(SvidError::BadSpiffeId));
    }

    #[test]
    fn x509_times_become_unix_seconds() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(x509_time(0x17, b"700101000000Z"), Ok(0));
        assert_eq!(x509_time(0x17, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(x509_time(0x17, b"500101000000Z"), Ok(-631_152_000));
        assert_eq!(x509_time(0x18, b"20500101000000Z"), Ok(2_524_608_000));
        for bad in [
            &b"700101000000"[..],
            b"701301000000Z",
            b"70010100000aZ",
            b"700101240000Z",
            b"7001010000000Z",
        ] {
            assert_eq!(x509_time(0x17, bad), Err(DerError), "{bad:?}");
        }
        assert_eq!(x509_time(0x04, b"700101000000Z"), Err(DerError));
    }

    #[test]
    fn the_der_reader_refuses_what_it_cannot_walk() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x81, 0x05, 0, 0, 0, 0, 0],
            &[0x30, 0x00, 0x00],
            &[0x1f, 0x00],
            &[0x30, 0x84, 0, 0, 0, 1, 0],
        ] {
            assert_eq!(uri_sans(bad), Err(DerError), "{bad:?}");
        }
        // A certificate with no extensions has no URI SANs.
        let no_ext = [0x30, 0x04, 0x30, 0x02, 0x02, 0x00];
        assert_eq!(uri_sans(&no_ext), Ok(vec![]));
    }
}
