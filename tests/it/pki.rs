//! Certificates made at test time (rcgen, ring): a CA, server and client certificates it
//! signs, written as PEM files, and an HTTPS client that presents them.

use http::Method;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate authority that signs test certificates.
pub struct Ca {
    pub name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
    /// Its certificate as a PEM file.
    pub pem: PathBuf,
}

/// A certificate and key written as PEM files (the key owner-only).
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's DER (its RFC 8705 thumbprint is taken of this).
    #[allow(dead_code)]
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            name: name.into(),
            cert,
            key,
            pem,
        }
    }

    fn issue(&self, dir: &Path, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, key.serialize_pem().as_bytes());
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`; `expired` puts its validity in
    /// the past.
    pub fn server(&self, dir: &Path, file: &str, expired: bool) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{file} ({})", self.name));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(dir, file, params)
    }

    /// A client certificate (an X.509-SVID when `spiffe_id` is given, as its URI SAN).
    pub fn client(&self, dir: &Path, file: &str, spiffe_id: Option<&str>) -> Issued {
        self.client_with(dir, file, |p| {
            if let Some(id) = spiffe_id {
                p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
            }
        })
    }

    /// A client certificate, for client authentication, changed by `tweak`.
    pub fn client_with(
        &self,
        dir: &Path,
        file: &str,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, file.to_string());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        tweak(&mut params);
        self.issue(dir, file, params)
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// A TLS client configuration trusting `ca` and presenting `client`, TLS 1.2 and 1.3.
pub fn client_config(ca: &Path, client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    client_config_versions(
        ca,
        client,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

pub fn client_config_versions(
    ca: &Path,
    client: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_file_iter(&c.cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(&c.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTPS connection: its handshake's kind and a sender for requests on it.
pub struct Https {
    pub kind: Option<rustls::HandshakeKind>,
    pub version: Option<rustls::ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    authority: String,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
}

impl Https {
    /// Connect to `addr` (`127.0.0.1:port`, verified as `localhost`); `Err` is the handshake's
    /// error in words.
    pub async fn connect(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Https, String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (kind, version, alpn) = {
            let conn = tls.get_ref().1;
            (
                conn.handshake_kind(),
                conn.protocol_version(),
                conn.alpn_protocol().map(<[u8]>::to_vec),
            )
        };
        let (sender, driver) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        Ok(Https {
            kind,
            version,
            alpn,
            authority: addr.to_string(),
            sender,
        })
    }

    /// Send a request; `Err` when the connection failed (a TLS 1.3 server that refuses a
    /// client certificate says so after the handshake).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        use http_body_util::BodyExt;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let req = req
            .body(http_body_util::Full::new(hyper::body::Bytes::from(bytes)))
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }
}
