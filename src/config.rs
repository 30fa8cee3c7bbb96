//! The daemon's validated configuration: command-line flags over an optional JSON file.

use crate::credentials::Credential;
use crate::issuers::{FetchOptions, IssuerKeys, Source};
use crate::jose::JwkSet;
use crate::resource;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8693";
pub const DEFAULT_DB: &str = "./toolgate.db";
pub const DEFAULT_TOKEN_TTL: i64 = 300;
pub const DEV_TRUST_DOMAIN: &str = "dev.local";
/// Longest accepted token lifetime: short-lived is the point.
pub const MAX_TOKEN_TTL: i64 = 24 * 3600;
/// Default cap on the connections of one peer address: far above a benchmark's 64 loopback
/// connections, far below the daemon's 1024 slots.
pub const DEFAULT_MAX_PER_PEER: usize = 256;
/// Default time a response may make no progress (a reader that stopped reading) before its
/// connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest audit retention that can be configured (about a century; more is "keep everything",
/// which is the default).
pub const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;

/// The audit key's default place: `<db>.audit-key`, beside the database.
pub fn default_audit_key_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".audit-key");
    PathBuf::from(name)
}

/// A configuration problem, reported at start-up in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// An issuer whose JWTs are accepted as subject tokens for exchange.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    /// Its keys: a JWKS file, or fetched (`jwks_uri`, discovery) and kept fresh.
    pub keys: Arc<IssuerKeys>,
    /// The `aud` the subject token must carry (names toolgate).
    pub audience: String,
    pub trust_domain: String,
}

/// A CA whose client certificates name workloads of one SPIFFE trust domain: an exchange with
/// `subject_token_type` `urn:starfly:token-type:mtls` trusts a SPIFFE ID of `trust_domain`
/// only when the client's chain verifies to one of these certificates. The listener's TLS
/// handshake trusts them too ([`TrustedClientCa::certificates`]).
#[derive(Debug, Clone)]
pub struct TrustedClientCa {
    /// The PEM file the certificates came from (for messages).
    pub ca_file: PathBuf,
    /// The SPIFFE trust domain this CA may vouch for.
    pub trust_domain: String,
    /// The CA certificates of the file, as DER.
    pub certificates: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The same as webpki trust anchors.
    pub anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
}

impl TrustedClientCa {
    /// Load every certificate of a PEM file as a trust anchor for `trust_domain`.
    pub fn load(ca_file: &Path, trust_domain: &str) -> Result<Self, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        validate_trust_domain(trust_domain)?;
        let bad = |why: String| err(format!("trusted_client_cas {}: {why}", ca_file.display()));
        let certificates = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| bad(format!("cannot read it: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        if certificates.is_empty() {
            return Err(bad("has no certificate".into()));
        }
        let anchors = certificates
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        Ok(Self {
            ca_file: ca_file.to_path_buf(),
            trust_domain: trust_domain.to_string(),
            certificates,
            anchors,
        })
    }
}

/// An authorization server (Keycloak, Auth0, Okta, Entra, …) whose access tokens the guards
/// and gateways accept for their own resource, besides toolgate's (`authorization_servers`).
/// Apart from `trusted_issuers` on purpose: trusting an identity provider for exchange does
/// not make its tokens good at tools, nor the other way round.
#[derive(Debug, Clone)]
pub struct AuthorizationServer {
    pub issuer: String,
    /// Its keys: a JWKS file, or fetched (`jwks_uri`, discovery) and kept fresh; handed to the
    /// guards by `GET /v1/authorization-servers`.
    pub keys: Arc<IssuerKeys>,
}

/// A Security Event Token transmitter (RFC 8935 push), for the revocation signals.
#[derive(Debug, Clone)]
pub struct Transmitter {
    pub issuer: String,
    pub keys: Arc<IssuerKeys>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db_path: PathBuf,
    /// The token-signing key as a PKCS#8 PEM file, apart from the database (generated there
    /// if missing); `None` keeps it in the database.
    pub signing_key_file: Option<PathBuf>,
    /// `iss` of every minted token; `None` means `http://<bound address>`.
    pub issuer: Option<String>,
    pub trust_domain: Option<String>,
    pub dev: bool,
    /// The admin bearer secret (`--admin-token-file`; required outside dev mode).
    pub admin_token: Option<Credential>,
    /// A token that may read tools, keys and revocations and post decisions (gateways, guards).
    pub reporter_token: Option<Credential>,
    /// A token that may read everything and change nothing.
    pub read_token: Option<Credential>,
    /// Registry lists, `/metrics` and the revocation export need no token (`--open-reads`;
    /// dev mode implies it).
    pub open_reads: bool,
    /// Host names, besides the listen address, `localhost` and the issuer's host, that requests
    /// may name in `Host` (DNS-rebinding defence).
    pub allowed_hosts: Vec<String>,
    /// Origins, besides the daemon's own, whose browsers may make state-changing calls.
    pub allowed_origins: Vec<String>,
    pub token_ttl: i64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (at most 60).
    pub leeway: i64,
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// CAs whose client certificates are SPIFFE credentials at exchange, each for one trust
    /// domain (`trusted_client_cas`); the listener's client-auth roots include them.
    pub trusted_client_cas: Vec<TrustedClientCa>,
    pub transmitters: Vec<Transmitter>,
    /// Authorization servers whose access tokens guards and gateways accept.
    pub authorization_servers: Vec<AuthorizationServer>,
    /// Expiry for revocations whose signal names none (`None`: until lifted).
    pub revocation_ttl: Option<i64>,
    /// Write the audit log (off only for benchmarks measuring its cost).
    pub audit: bool,
    /// Audit rows older than this many days are removed behind a checkpoint row
    /// (`audit_retention_days`; `None`, the default, keeps everything).
    pub audit_retention_days: Option<u32>,
    /// The file holding the key that tags the audit chain's head (`audit_key_file`; default
    /// `<db>.audit-key`, made at first start). Kept outside the database on purpose.
    pub audit_key_file: Option<PathBuf>,
    /// Tests only: the audit writer's database page limit, changeable while running (a low
    /// one is a full disk); see `audit::Options::page_limit`.
    #[doc(hidden)]
    pub audit_page_limit: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    pub max_connections: usize,
    /// Connections one peer address may hold at once (`max_connections_per_peer`).
    pub max_connections_per_peer: usize,
    pub header_read_timeout: Duration,
    /// A response that makes no progress for this long is dropped (`write_timeout_seconds`).
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// TLS on the listener (`--tls-cert`, `--tls-key`, `--client-ca`, `--client-auth`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// `--client-cert-header`: the header a TLS-terminating proxy forwards the client
    /// certificate in, read only from `trusted_proxies`.
    pub client_cert_header: Option<http::HeaderName>,
    /// `--trusted-proxy` addresses.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Tolerance on a DPoP proof's `iat`, both sides (`--dpop-window`, `dpop_window_seconds`).
    pub dpop_window: i64,
    /// The token endpoint requires this daemon's DPoP nonces (`--dpop-nonce`, `dpop_nonce`).
    pub dpop_nonce: bool,
    /// A new signing key is published this long before it signs, in seconds
    /// (`--publish-ahead`, `key_publish_ahead_seconds`).
    pub key_publish_ahead: i64,
    /// Rotate the signing key when it has signed for this many days (`key_rotation_days`;
    /// `None`, the default: only when asked).
    pub key_rotation_days: Option<u32>,
}

/// The flags of `toolgate serve`, before validation.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    pub listen: Option<String>,
    pub db: Option<PathBuf>,
    pub signing_key_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub trust_domain: Option<String>,
    pub dev: bool,
    pub admin_token_file: Option<PathBuf>,
    pub reporter_token_file: Option<PathBuf>,
    pub read_token_file: Option<PathBuf>,
    pub open_reads: bool,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub config: Option<PathBuf>,
    pub tls: TlsFlags,
    /// `--dpop-window`: seconds of tolerance on a DPoP proof's `iat`.
    pub dpop_window: Option<i64>,
    /// `--dpop-nonce`: require server nonces in DPoP proofs at the token endpoint.
    pub dpop_nonce: bool,
    /// `--publish-ahead`: seconds a new signing key is published before it signs.
    pub publish_ahead: Option<i64>,
}

/// The TLS flags `toolgate serve` and `toolgate gateway` share, before validation.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Vec<PathBuf>,
    pub client_auth: Option<String>,
    pub client_cert_header: Option<String>,
    pub trusted_proxies: Vec<String>,
    pub insecure_plaintext: bool,
}

/// A listener's validated TLS and proxy settings.
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    pub tls: Option<crate::tls::TlsFiles>,
    pub client_cert_header: Option<http::HeaderName>,
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl TlsFlags {
    /// Check the flags for a listener on `listen`; `production` refuses plain HTTP on a
    /// non-loopback address unless `--insecure-plaintext` says so.
    pub fn validate(
        &self,
        listen: SocketAddr,
        production: bool,
    ) -> Result<ListenerTls, ConfigError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_cas: self.client_ca.clone(),
                client_auth: match &self.client_auth {
                    Some(word) => word.parse().map_err(ConfigError)?,
                    None => crate::tls::ClientAuth::Optional,
                },
            }),
            (None, None) => None,
            _ => return Err(err("--tls-cert and --tls-key go together")),
        };
        if tls.is_none() && (!self.client_ca.is_empty() || self.client_auth.is_some()) {
            return Err(err(
                "--client-ca and --client-auth need TLS on the listener (--tls-cert, --tls-key)",
            ));
        }
        if self.client_auth.is_some() && self.client_ca.is_empty() {
            return Err(err(
                "--client-auth needs --client-ca: the CAs client certificates must chain to",
            ));
        }
        if tls.is_some() && self.insecure_plaintext {
            return Err(err(
                "--insecure-plaintext and --tls-cert contradict each other",
            ));
        }
        if production && tls.is_none() && !listen.ip().is_loopback() && !self.insecure_plaintext {
            return Err(err(format!(
                "refusing plain HTTP on the non-loopback address {listen}: bearer tokens, the \
                 admin secret and the JWKS would cross the network in clear text, readable and \
                 replaceable by anyone on the path. Give --tls-cert and --tls-key; only behind \
                 a TLS-terminating proxy on a network you trust, --insecure-plaintext"
            )));
        }
        let client_cert_header = match &self.client_cert_header {
            None => None,
            Some(name) => Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                err(format!(
                    "--client-cert-header {name:?} is not a header name"
                ))
            })?),
        };
        let mut trusted_proxies = Vec::new();
        for p in &self.trusted_proxies {
            trusted_proxies.push(
                p.parse()
                    .map_err(|_| err(format!("--trusted-proxy {p:?} is not an IP address")))?,
            );
        }
        match (&client_cert_header, trusted_proxies.is_empty()) {
            (Some(_), true) => {
                return Err(err(
                    "--client-cert-header needs --trusted-proxy: the header is read only from the proxies named",
                ))
            }
            (None, false) => {
                return Err(err("--trusted-proxy is only for --client-cert-header"))
            }
            _ => {}
        }
        Ok(ListenerTls {
            tls,
            client_cert_header,
            trusted_proxies,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    issuer: Option<String>,
    signing_key_file: Option<PathBuf>,
    trust_domain: Option<String>,
    token_ttl_seconds: Option<i64>,
    revocation_ttl_seconds: Option<i64>,
    leeway_seconds: Option<i64>,
    dpop_window_seconds: Option<i64>,
    dpop_nonce: Option<bool>,
    audit: Option<bool>,
    audit_retention_days: Option<u32>,
    audit_key_file: Option<PathBuf>,
    open_reads: Option<bool>,
    max_connections_per_peer: Option<usize>,
    write_timeout_seconds: Option<u64>,
    key_publish_ahead_seconds: Option<i64>,
    key_rotation_days: Option<u32>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    trusted_issuers: Vec<FileTrustedIssuer>,
    #[serde(default)]
    transmitters: Vec<FileTransmitter>,
    #[serde(default)]
    authorization_servers: Vec<FileTransmitter>,
    #[serde(default)]
    trusted_client_cas: Vec<FileTrustedClientCa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTrustedClientCa {
    ca_file: PathBuf,
    trust_domain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTrustedIssuer {
    issuer: String,
    jwks_file: Option<PathBuf>,
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    ca_file: Option<PathBuf>,
    grace_seconds: Option<i64>,
    audience: String,
    trust_domain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTransmitter {
    issuer: String,
    jwks_file: Option<PathBuf>,
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    ca_file: Option<PathBuf>,
    grace_seconds: Option<i64>,
}

/// Where an issuer's keys come from: exactly one of `jwks_file`, `jwks_uri`, `discovery`;
/// `ca_file` and `grace_seconds` for fetched keys.
struct FileKeySource<'a> {
    jwks_file: &'a Option<PathBuf>,
    jwks_uri: &'a Option<String>,
    discovery: bool,
    ca_file: &'a Option<PathBuf>,
    grace_seconds: Option<i64>,
}

macro_rules! key_source {
    ($t:expr) => {
        FileKeySource {
            jwks_file: &$t.jwks_file,
            jwks_uri: &$t.jwks_uri,
            discovery: $t.discovery,
            ca_file: &$t.ca_file,
            grace_seconds: $t.grace_seconds,
        }
    };
}

impl Config {
    /// Defaults for tests: dev mode off, loopback on an ephemeral port, the given database.
    pub fn for_test(db_path: &Path) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            db_path: db_path.to_path_buf(),
            signing_key_file: None,
            issuer: None,
            trust_domain: None,
            dev: false,
            admin_token: None,
            reporter_token: None,
            read_token: None,
            open_reads: false,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            token_ttl: DEFAULT_TOKEN_TTL,
            leeway: 60,
            trusted_issuers: Vec::new(),
            trusted_client_cas: Vec::new(),
            transmitters: Vec::new(),
            authorization_servers: Vec::new(),
            revocation_ttl: None,
            audit: true,
            audit_retention_days: None,
            audit_key_file: None,
            audit_page_limit: None,
            max_connections: 1024,
            max_connections_per_peer: DEFAULT_MAX_PER_PEER,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            client_cert_header: None,
            trusted_proxies: Vec::new(),
            dpop_window: toolgate_core::dpop::DEFAULT_WINDOW,
            dpop_nonce: false,
            key_publish_ahead: crate::keys::DEFAULT_PUBLISH_AHEAD,
            key_rotation_days: None,
        }
    }

    /// Where the audit key is: `audit_key_file`, or beside the database.
    pub fn audit_key_path(&self) -> PathBuf {
        self.audit_key_file
            .clone()
            .unwrap_or_else(|| default_audit_key_path(&self.db_path))
    }

    /// Validate flags and the optional config file into a `Config`. Flags win over the file.
    pub fn from_flags(flags: &ServeFlags) -> Result<Self, ConfigError> {
        let listen_text = flags.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            err(format!(
                "--listen {listen_text:?} is not an IP:port address"
            ))
        })?;
        if flags.dev && !listen.ip().is_loopback() {
            return Err(err(
                "--dev refuses a non-loopback --listen address: dev mode accepts unsigned tokens",
            ));
        }
        let listener = flags.tls.validate(listen, !flags.dev)?;
        let mut cfg = Self::for_test(flags.db.as_deref().unwrap_or(Path::new(DEFAULT_DB)));
        cfg.listen = listen;
        cfg.tls = listener.tls;
        cfg.client_cert_header = listener.client_cert_header;
        cfg.trusted_proxies = listener.trusted_proxies;
        cfg.dev = flags.dev;

        if let Some(path) = &flags.config {
            cfg.apply_file(path)?;
        }
        if flags.issuer.is_some() {
            cfg.issuer.clone_from(&flags.issuer);
        }
        if flags.signing_key_file.is_some() {
            cfg.signing_key_file.clone_from(&flags.signing_key_file);
        }
        if flags.trust_domain.is_some() {
            cfg.trust_domain.clone_from(&flags.trust_domain);
        }
        if let Some(issuer) = &cfg.issuer {
            resource::canonicalize(issuer)
                .map_err(|e| err(format!("issuer: {e}")))
                .and_then(|c| {
                    if &c == issuer {
                        Ok(())
                    } else {
                        Err(err(format!("issuer must be written canonically: {c}")))
                    }
                })?;
        }
        if let Some(td) = &cfg.trust_domain {
            validate_trust_domain(td)?;
        }
        match &flags.admin_token_file {
            Some(path) => {
                cfg.admin_token =
                    Some(Credential::from_file(path, "--admin-token-file").map_err(err)?);
            }
            None if !cfg.dev => {
                return Err(err(
                    "production mode needs --admin-token-file (or run with --dev on loopback)",
                ))
            }
            None => {}
        }
        if let Some(path) = &flags.reporter_token_file {
            cfg.reporter_token =
                Some(Credential::from_file(path, "--reporter-token-file").map_err(err)?);
        }
        if let Some(path) = &flags.read_token_file {
            cfg.read_token = Some(Credential::from_file(path, "--read-token-file").map_err(err)?);
        }
        cfg.open_reads |= flags.open_reads || cfg.dev;
        if let Some(window) = flags.dpop_window {
            cfg.dpop_window = dpop_window(window, "--dpop-window")?;
        }
        cfg.dpop_nonce |= flags.dpop_nonce;
        if let Some(seconds) = flags.publish_ahead {
            cfg.key_publish_ahead = publish_ahead(seconds, "--publish-ahead")?;
        }
        for host in &flags.allowed_hosts {
            cfg.allowed_hosts.push(validate_host_name(host)?);
        }
        for origin in &flags.allowed_origins {
            cfg.allowed_origins.push(validate_origin(origin)?);
        }
        Ok(cfg)
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read --config {}: {e}", path.display())))?;
        let file: FileConfig = serde_json::from_str(&text)
            .map_err(|e| err(format!("--config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        self.issuer = file.issuer;
        self.trust_domain = file.trust_domain;
        self.signing_key_file = file.signing_key_file.map(|f| base.join(f));
        if let Some(ttl) = file.token_ttl_seconds {
            if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
                return Err(err(format!(
                    "token_ttl_seconds must be between 1 and {MAX_TOKEN_TTL}"
                )));
            }
            self.token_ttl = ttl;
        }
        if let Some(leeway) = file.leeway_seconds {
            if !(0..=crate::verify::MAX_LEEWAY).contains(&leeway) {
                return Err(err(format!(
                    "leeway_seconds must be between 0 and {}",
                    crate::verify::MAX_LEEWAY
                )));
            }
            self.leeway = leeway;
        }
        if let Some(window) = file.dpop_window_seconds {
            self.dpop_window = dpop_window(window, "dpop_window_seconds")?;
        }
        if let Some(nonce) = file.dpop_nonce {
            self.dpop_nonce = nonce;
        }
        if let Some(audit) = file.audit {
            self.audit = audit;
        }
        if let Some(days) = file.audit_retention_days {
            if !(1..=MAX_AUDIT_RETENTION_DAYS).contains(&days) {
                return Err(err(format!(
                    "audit_retention_days must be between 1 and {MAX_AUDIT_RETENTION_DAYS}"
                )));
            }
            self.audit_retention_days = Some(days);
        }
        if let Some(key) = file.audit_key_file {
            self.audit_key_file = Some(base.join(key));
        }
        if let Some(open) = file.open_reads {
            self.open_reads = open;
        }
        if let Some(n) = file.max_connections_per_peer {
            if n < 1 {
                return Err(err("max_connections_per_peer must be at least 1"));
            }
            self.max_connections_per_peer = n;
        }
        if let Some(secs) = file.write_timeout_seconds {
            if !(1..=3600).contains(&secs) {
                return Err(err("write_timeout_seconds must be between 1 and 3600"));
            }
            self.write_timeout = Duration::from_secs(secs);
        }
        if let Some(seconds) = file.key_publish_ahead_seconds {
            self.key_publish_ahead = publish_ahead(seconds, "key_publish_ahead_seconds")?;
        }
        if let Some(days) = file.key_rotation_days {
            if !(1..=crate::keys::MAX_ROTATION_DAYS).contains(&days) {
                return Err(err(format!(
                    "key_rotation_days must be between 1 and {}",
                    crate::keys::MAX_ROTATION_DAYS
                )));
            }
            self.key_rotation_days = Some(days);
        }
        for host in &file.allowed_hosts {
            self.allowed_hosts.push(validate_host_name(host)?);
        }
        for origin in &file.allowed_origins {
            self.allowed_origins.push(validate_origin(origin)?);
        }
        if let Some(ttl) = file.revocation_ttl_seconds {
            if ttl < 1 {
                return Err(err("revocation_ttl_seconds must be positive"));
            }
            self.revocation_ttl = Some(ttl);
        }
        for t in file.trusted_issuers {
            validate_trust_domain(&t.trust_domain)?;
            if t.issuer.is_empty() || t.audience.is_empty() {
                return Err(err(
                    "trusted_issuers entries need an issuer and an audience",
                ));
            }
            self.trusted_issuers.push(TrustedIssuer {
                keys: issuer_keys(base, &t.issuer, &key_source!(t), self.dev)?,
                issuer: t.issuer,
                audience: t.audience,
                trust_domain: t.trust_domain,
            });
        }
        for ca in file.trusted_client_cas {
            self.trusted_client_cas.push(TrustedClientCa::load(
                &base.join(ca.ca_file),
                &ca.trust_domain,
            )?);
        }
        for t in file.transmitters {
            if t.issuer.is_empty() {
                return Err(err("transmitters entries need an issuer"));
            }
            if t.issuer == crate::store::revocations::ADMIN_SOURCE {
                return Err(err(
                    "a transmitter's issuer may not be \"admin\": it names the admin API's revocations",
                ));
            }
            self.transmitters.push(Transmitter {
                keys: issuer_keys(base, &t.issuer, &key_source!(t), self.dev)?,
                issuer: t.issuer,
            });
        }
        // The same entry shape as a transmitter's: an issuer and where its keys come from.
        for a in file.authorization_servers {
            if a.issuer.is_empty() {
                return Err(err("authorization_servers entries need an issuer"));
            }
            if self
                .authorization_servers
                .iter()
                .any(|s| s.issuer == a.issuer)
            {
                return Err(err(format!(
                    "{}: listed twice in authorization_servers",
                    a.issuer
                )));
            }
            self.authorization_servers.push(AuthorizationServer {
                keys: issuer_keys(base, &a.issuer, &key_source!(a), self.dev)?,
                issuer: a.issuer,
            });
        }
        Ok(())
    }
}

/// An issuer's keys as its entry configures them.
fn issuer_keys(
    base: &Path,
    issuer: &str,
    source: &FileKeySource<'_>,
    dev: bool,
) -> Result<Arc<IssuerKeys>, ConfigError> {
    let fetch = FetchOptions {
        ca_file: source.ca_file.as_ref().map(|f| base.join(f)),
        grace: source.grace_seconds,
        allow_loopback_http: dev,
    };
    let fetched = |s: Source| IssuerKeys::fetched(issuer, s, &fetch).map_err(err);
    match (source.jwks_file, source.jwks_uri, source.discovery) {
        (Some(file), None, false) => {
            if source.ca_file.is_some() || source.grace_seconds.is_some() {
                return Err(err(format!(
                    "{issuer}: ca_file and grace_seconds are for fetched keys (jwks_uri, discovery), not a jwks_file"
                )));
            }
            Ok(IssuerKeys::fixed(
                issuer,
                load_jwks(base, file)?,
                Some(base.join(file)),
            ))
        }
        (None, Some(uri), false) => fetched(Source::JwksUri(uri.clone())),
        (None, None, true) => fetched(Source::Discovery),
        _ => Err(err(format!(
            "{issuer}: give exactly one of jwks_file, jwks_uri or \"discovery\": true"
        ))),
    }
}

/// A publish-ahead period in seconds: 1 to a week.
fn publish_ahead(seconds: i64, name: &str) -> Result<i64, ConfigError> {
    if (1..=crate::keys::MAX_PUBLISH_AHEAD).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(err(format!(
            "{name} must be between 1 and {} seconds",
            crate::keys::MAX_PUBLISH_AHEAD
        )))
    }
}

fn load_jwks(base: &Path, file: &Path) -> Result<JwkSet, ConfigError> {
    let path = base.join(file);
    let bytes = std::fs::read(&path)
        .map_err(|e| err(format!("cannot read JWKS file {}: {e}", path.display())))?;
    let set = JwkSet::from_json_bytes(&bytes)
        .map_err(|e| err(format!("JWKS file {}: {e}", path.display())))?;
    if set.keys.is_empty() {
        return Err(err(format!("JWKS file {} has no keys", path.display())));
    }
    Ok(set)
}

/// A name for `--allowed-host`: a DNS name or IP literal, without port, stored lower-case.
fn validate_host_name(host: &str) -> Result<String, ConfigError> {
    let h = host.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
        && !h.starts_with(':');
    if ok {
        Ok(h)
    } else {
        Err(err(format!(
            "allowed host {host:?} must be a host name or IP address without a port"
        )))
    }
}

/// An origin for `--allowed-origin`: `scheme://host[:port]`, no path, stored lower-case.
fn validate_origin(origin: &str) -> Result<String, ConfigError> {
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .unwrap_or_default();
    if !rest.is_empty() && !rest.contains(['/', '?', '#', '@']) {
        Ok(o)
    } else {
        Err(err(format!(
            "allowed origin {origin:?} must be scheme://host[:port]"
        )))
    }
}

/// A trust domain is a DNS-like name: lower-case letters, digits, `.`, `-`, `_`.
fn validate_trust_domain(td: &str) -> Result<(), ConfigError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(err(format!(
            "trust domain {td:?} must be lower-case letters, digits, '.', '-' or '_'"
        )))
    }
}

/// A DPoP `iat` window from `name`: 1 to 300 seconds.
pub fn dpop_window(seconds: i64, name: &str) -> Result<i64, ConfigError> {
    let max = toolgate_core::dpop::MAX_WINDOW;
    if (1..=max).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(err(format!("{name} must be between 1 and {max} seconds")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn dev_refuses_non_loopback() {
        let flags = ServeFlags {
            listen: Some("0.0.0.0:8693".into()),
            dev: true,
            ..Default::default()
        };
        assert!(Config::from_flags(&flags)
            .unwrap_err()
            .0
            .contains("loopback"));
    }

    #[test]
    fn production_needs_admin_token() {
        let flags = ServeFlags::default();
        assert!(Config::from_flags(&flags)
            .unwrap_err()
            .0
            .contains("admin-token-file"));
    }

    #[test]
    fn allowed_hosts_and_origins_are_checked() {
        assert_eq!(
            validate_host_name("Tools.Example.com").unwrap(),
            "tools.example.com"
        );
        assert!(validate_host_name("a.example:8080x/").is_err());
        assert!(validate_host_name("").is_err());
        assert_eq!(
            validate_origin("https://App.example.com/").unwrap(),
            "https://app.example.com"
        );
        assert!(validate_origin("https://app.example.com/path").is_err());
        assert!(validate_origin("null").is_err());
        assert!(validate_origin("ftp://x").is_err());
    }

    #[test]
    fn signing_key_file_is_relative_to_the_config_file_and_the_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"signing_key_file":"keys/signing.pem"}"#).unwrap();
        let mut flags = ServeFlags {
            dev: true,
            config: Some(path),
            ..Default::default()
        };
        let cfg = Config::from_flags(&flags).unwrap();
        assert_eq!(
            cfg.signing_key_file,
            Some(dir.path().join("keys/signing.pem"))
        );
        flags.signing_key_file = Some(PathBuf::from("/run/secrets/k.pem"));
        let cfg = Config::from_flags(&flags).unwrap();
        assert_eq!(
            cfg.signing_key_file,
            Some(PathBuf::from("/run/secrets/k.pem"))
        );
        assert_eq!(Config::for_test(Path::new("x.db")).signing_key_file, None);
    }

    #[test]
    fn config_file_rejects_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"issuer":"https://t.example","bogus":1}"#).unwrap();
        let flags = ServeFlags {
            dev: true,
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::from_flags(&flags).unwrap_err().0.contains("bogus"));
    }

    #[test]
    fn authorization_servers_are_apart_from_trusted_issuers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let flags = ServeFlags {
                dev: true,
                config: Some(path.clone()),
                ..Default::default()
            };
            Config::from_flags(&flags)
        };
        let c = load(
            r#"{"authorization_servers":[{"issuer":"https://as.example.com","discovery":true}]}"#,
        )
        .unwrap();
        assert!(c.trusted_issuers.is_empty());
        assert_eq!(c.authorization_servers[0].issuer, "https://as.example.com");
        assert!(c.authorization_servers[0].keys.is_fetched());
        let twice = r#"{"authorization_servers":[{"issuer":"https://a","jwks_uri":"https://a/k"},{"issuer":"https://a","discovery":true}]}"#;
        assert!(load(twice).unwrap_err().0.contains("listed twice"));
        let no_source = r#"{"authorization_servers":[{"issuer":"https://a"}]}"#;
        assert!(load(no_source).unwrap_err().0.contains("exactly one of"));
        let audience =
            r#"{"authorization_servers":[{"issuer":"https://a","discovery":true,"audience":"x"}]}"#;
        assert!(load(audience).is_err());
    }

    #[test]
    fn an_issuer_gives_exactly_one_key_source_and_fetches_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let load = |dev: bool, entry: &str| {
            let entry = format!(
                r#"{{"trusted_issuers":[{{"issuer":"https://idp.example.com","audience":"https://t.example","trust_domain":"example.com",{entry}}}]}}"#
            );
            std::fs::write(&path, entry).unwrap();
            let flags = ServeFlags {
                dev,
                config: Some(path.clone()),
                ..Default::default()
            };
            Config::from_flags(&flags).map(|c| c.trusted_issuers.first().unwrap().keys.clone())
        };
        let discovered = load(true, r#""discovery":true"#).unwrap();
        assert!(discovered.is_fetched());
        assert!(load(
            true,
            r#""jwks_uri":"https://idp.example.com/jwks","grace_seconds":60"#
        )
        .unwrap()
        .is_fetched());
        let one_of = "give exactly one of jwks_file, jwks_uri or \"discovery\": true";
        for both in [
            r#""discovery":true,"jwks_uri":"https://idp.example.com/jwks""#,
            r#""jwks_file":"k.json","discovery":true"#,
            r#""ca_file":"ca.pem""#,
        ] {
            assert!(load(true, both).unwrap_err().0.contains(one_of), "{both}");
        }
        // Plain http only to a loopback host, and only in dev mode.
        assert!(load(true, r#""jwks_uri":"http://127.0.0.1:9/jwks""#).is_ok());
        let refused = load(true, r#""jwks_uri":"http://idp.example.com/jwks""#).unwrap_err();
        assert!(refused.0.contains("must be https://"), "{}", refused.0);
        assert!(load(
            true,
            r#""jwks_uri":"https://idp.example.com/jwks","grace_seconds":-1"#
        )
        .is_err());
        assert!(load(
            true,
            r#""jwks_uri":"https://idp.example.com/jwks","ca_file":"missing.pem""#
        )
        .unwrap_err()
        .0
        .contains("missing.pem"));
    }
}
