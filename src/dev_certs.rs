//! `toolgate dev-certs DIR`: a throw-away CA, a server certificate for `localhost` and
//! `127.0.0.1`, and a client SPIFFE X.509-SVID (`spiffe://dev.local/ns/demo/sa/agent-1`), all
//! signed by that CA, for trying TLS and mutual TLS on one machine. Never for production.

use crate::secret_file;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// The client certificate's SPIFFE ID (its one URI SAN).
pub const CLIENT_SPIFFE_ID: &str = "spiffe://dev.local/ns/demo/sa/agent-1";

/// The files written, in order: certificate then key, for the CA, the server, the client.
pub const FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

/// Why the certificates were not written.
#[derive(Debug)]
pub enum DevCertsError {
    /// These files are there already (and `force` was not given): nothing was written.
    Exists(Vec<PathBuf>),
    /// A certificate could not be made.
    Generate(String),
    /// A file could not be written.
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for DevCertsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exists(paths) => {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "{} already exist{}; nothing written (--force replaces them)",
                    names.join(", "),
                    if names.len() == 1 { "s" } else { "" }
                )
            }
            Self::Generate(e) => write!(f, "cannot make the certificates: {e}"),
            Self::Io(p, e) => write!(f, "cannot write {}: {e}", p.display()),
        }
    }
}
impl std::error::Error for DevCertsError {}

/// Write the six files into `dir` (created if missing), valid from a day before `now_unix` to a
/// year after it. Keys are created mode 0600. Existing files are refused unless `force`, which
/// replaces them. Returns the paths written.
pub fn write(dir: &Path, force: bool, now_unix: i64) -> Result<Vec<PathBuf>, DevCertsError> {
    let paths: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    let existing: Vec<PathBuf> = paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .cloned()
        .collect();
    if !existing.is_empty() && !force {
        return Err(DevCertsError::Exists(existing));
    }
    let contents = generate(now_unix).map_err(|e| DevCertsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| DevCertsError::Io(dir.to_path_buf(), e))?;
    for (path, (bytes, secret)) in paths.iter().zip(contents) {
        let io = |e| DevCertsError::Io(path.clone(), e);
        if force {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            }
        }
        if secret {
            secret_file::create_private(path, bytes.as_bytes()).map_err(io)?;
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, bytes.as_bytes()))
                .map_err(io)?;
        }
    }
    Ok(paths)
}

/// The PEM texts in the order of [`FILES`], each with whether it is a private key.
fn generate(now_unix: i64) -> Result<Vec<(String, bool)>, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("toolgate dev CA (throw-away)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, now_unix);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    server.distinguished_name = name("localhost");
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server, now_unix);
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    // An X.509-SVID: exactly one URI SAN, the SPIFFE ID; the subject carries nothing else.
    client.subject_alt_names = vec![SanType::URI(CLIENT_SPIFFE_ID.try_into()?)];
    client.distinguished_name = name("agent-1");
    client.is_ca = IsCa::ExplicitNoCa;
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut client, now_unix);
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

    Ok(vec![
        (ca_cert.pem(), false),
        (ca_key.serialize_pem(), true),
        (server_cert.pem(), false),
        (server_key.serialize_pem(), true),
        (client_cert.pem(), false),
        (client_key.serialize_pem(), true),
    ])
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from the UTC midnight a day before `now_unix` to that of a year after it.
fn validity(params: &mut CertificateParams, now_unix: i64) {
    let day = |unix: i64| {
        let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = day(now_unix - 86_400);
    params.not_after = day(now_unix + 365 * 86_400);
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
