//! TLS on the daemon's and the gateway's listeners (rustls, ring provider): the certificate
//! and key from PEM files, optional client certificates verified against configured CAs,
//! TLS 1.2 and 1.3 only, session resumption on, and a reload that swaps in new files for new
//! connections (`SIGHUP`) while established ones go on, keeping the old files when the new
//! ones do not load.

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use toolgate_core::clock::Clock;
use toolgate_core::mtls::ClientCertificate;

/// TLS sessions a listener remembers for resumption by session id (TLS 1.2) or stateful
/// ticket; stateless tickets need no room.
const SESSION_CACHE: usize = 4096;

/// Whether a client certificate is asked for and whether it is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Asked for; a client without one still connects (its tokens just cannot be bound).
    #[default]
    Optional,
    /// The handshake fails without a certificate from a configured CA.
    Required,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "--client-auth {other:?}: expected \"optional\" or \"required\""
            )),
        }
    }
}

/// Where a listener's TLS material lives (re-read on every reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1 PEM); must be its owner's alone.
    pub key: PathBuf,
    /// CA certificates (PEM, each file one or more) that client certificates must chain to;
    /// empty: no client certificate is asked for.
    pub client_cas: Vec<PathBuf>,
    pub client_auth: ClientAuth,
}

/// A listener's TLS set-up: the current configuration, swapped whole by [`TlsServer::reload`].
pub struct TlsServer {
    files: TlsFiles,
    current: RwLock<Current>,
    /// Kept across reloads so that sessions survive a certificate change.
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
    clock: Arc<dyn Clock>,
}

/// One loaded set-up: the configuration and the client-certificate verifier inside it.
#[derive(Clone)]
struct Current {
    config: Arc<ServerConfig>,
    /// `None` when no client certificate is asked for.
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

/// The set-up one connection is accepted with.
pub struct Acceptor {
    tls: tokio_rustls::TlsAcceptor,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    clock: Arc<dyn Clock>,
}

impl Acceptor {
    /// The TLS handshake.
    pub fn accept<IO>(&self, stream: IO) -> tokio_rustls::Accept<IO>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.tls.accept(stream)
    }

    /// The client certificate of a finished handshake; `Err` closes the connection. A full
    /// handshake verified it just now. A resumed session brings back the certificate of the
    /// session's first handshake, which may have expired since, or come from a client CA a
    /// reload removed (sessions and ticket keys outlive reloads): it is verified again, at the
    /// current time against the current client CAs.
    pub fn client_certificate(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Result<Option<ClientCertificate>, rustls::Error> {
        let Some(chain) = conn.peer_certificates() else {
            return Ok(None);
        };
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            let no_longer = || rustls::Error::General("no client certificate is asked for".into());
            let verifier = self.clients.as_ref().ok_or_else(no_longer)?;
            let (leaf, intermediates) = chain.split_first().ok_or_else(no_longer)?;
            let now = std::time::Duration::from_secs(u64::try_from(self.clock.now()).unwrap_or(0));
            verifier.verify_client_cert(
                leaf,
                intermediates,
                rustls::pki_types::UnixTime::since_unix_epoch(now),
            )?;
        }
        Ok(ClientCertificate::new(
            chain.iter().map(|c| c.as_ref().to_vec()).collect(),
        ))
    }
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Load the files; `Err` is one sentence naming the file and the problem. `clock` is the
    /// time a resumed session's client certificate is checked at again.
    pub fn load(files: TlsFiles, clock: Arc<dyn Clock>) -> Result<Arc<Self>, String> {
        let tickets = provider::Ticketer::new()
            .map_err(|e| format!("TLS: cannot make a session-ticket key: {e}"))?;
        let sessions = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        let current = build(&files, sessions.clone(), tickets.clone())?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(current),
            sessions,
            tickets,
            clock,
        }))
    }

    /// Re-read the files for the connections accepted from now on. On any error the old set-up
    /// stays and the sentence says why.
    pub fn reload(&self) -> Result<(), String> {
        let config = build(&self.files, self.sessions.clone(), self.tickets.clone())?;
        let mut current = self
            .current
            .write()
            .map_err(|_| "TLS: the configuration lock is poisoned".to_string())?;
        *current = config;
        Ok(())
    }

    /// The configuration new connections get.
    pub fn acceptor(&self) -> Option<Acceptor> {
        let current = self.current.read().ok()?.clone();
        Some(Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(current.config),
            clients: current.clients,
            clock: self.clock.clone(),
        })
    }

    /// Whether client certificates are asked for.
    pub fn asks_for_client_certificates(&self) -> bool {
        !self.files.client_cas.is_empty()
    }
}

/// The client certificate a TLS-terminating proxy forwarded in a header: URL-encoded PEM (as
/// nginx's `$ssl_client_escaped_cert` and most load balancers send it), leaf first. `Err` is the
/// end of a sentence ("is not ...").
pub fn certificate_from_header(value: &[u8]) -> Result<ClientCertificate, &'static str> {
    const MAX: usize = 32 * 1024;
    if value.len() > MAX {
        return Err("is too large");
    }
    let pem = percent_decode(value).ok_or("is not URL-encoded PEM")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "is not URL-encoded PEM")?;
    ClientCertificate::new(chain).ok_or("holds no certificate")
}

/// `%XX` escapes decoded (`+` stays: base64 uses it); `None` on a broken escape.
fn percent_decode(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = (*bytes.next()? as char).to_digit(16)?;
            let lo = (*bytes.next()? as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn build(
    files: &TlsFiles,
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn ProducesTickets>,
) -> Result<Current, String> {
    let chain = load_certs(&files.cert, "--tls-cert")?;
    crate::secret_file::ensure_private(&files.key, "--tls-key").map_err(|e| format!("TLS: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "TLS: --tls-key {} holds no usable private key: {e}",
            files.key.display()
        )
    })?;
    let provider = Arc::new(provider::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let mut clients = None;
    let builder = if files.client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for path in &files.client_cas {
            for cert in load_certs(path, "client CA")? {
                roots.add(cert).map_err(|e| {
                    format!("TLS: client CA {} is not a usable CA: {e}", path.display())
                })?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = match files.client_auth {
            ClientAuth::Optional => verifier.allow_unauthenticated(),
            ClientAuth::Required => verifier,
        };
        let verifier = verifier.build().map_err(|e| format!("TLS: {e}"))?;
        clients = Some(verifier.clone());
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "TLS: --tls-key {} does not fit --tls-cert {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    // hyper serves HTTP/1.1 here; a client that offers only h2 fails the handshake cleanly.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = sessions;
    config.ticketer = tickets;
    config.send_tls13_tickets = 2;
    Ok(Current {
        config: Arc::new(config),
        clients,
    })
}

/// Every certificate of a PEM file; at least one.
fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS: cannot read {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS: {what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_parses_its_two_words() {
        assert_eq!("optional".parse::<ClientAuth>(), Ok(ClientAuth::Optional));
        assert_eq!("required".parse::<ClientAuth>(), Ok(ClientAuth::Required));
        assert!("yes".parse::<ClientAuth>().is_err());
    }

    #[test]
    fn a_header_certificate_is_url_encoded_pem() {
        let pem = "-----BEGIN CERTIFICATE-----\nAQID+w==\n-----END CERTIFICATE-----\n";
        let escaped = pem
            .replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B");
        let cert = certificate_from_header(escaped.as_bytes()).unwrap();
        assert_eq!(cert.leaf(), &[1, 2, 3, 0xfb]);
        // A literal `+` is base64, not a space.
        let cert = certificate_from_header(pem.replace('\n', "%0A").as_bytes()).unwrap();
        assert_eq!(cert.leaf(), &[1, 2, 3, 0xfb]);
        assert!(certificate_from_header(b"%0").is_err());
        assert!(certificate_from_header(b"%zz").is_err());
        assert!(certificate_from_header(b"not pem").is_err());
        assert!(certificate_from_header(&vec![b'A'; 40_000]).is_err());
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = |cert: &Path| TlsFiles {
            cert: cert.to_path_buf(),
            key: dir.path().join("key.pem"),
            client_cas: Vec::new(),
            client_auth: ClientAuth::Optional,
        };
        let e = TlsServer::load(
            files(&dir.path().join("nope.pem")),
            Arc::new(toolgate_core::clock::SystemClock),
        )
        .unwrap_err();
        assert!(e.contains("--tls-cert") && e.contains("nope.pem"), "{e}");
        let e = TlsServer::load(files(&empty), Arc::new(toolgate_core::clock::SystemClock))
            .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
