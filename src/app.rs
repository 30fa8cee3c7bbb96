//! The daemon's shared state: configuration resolved against the bound address, the store,
//! the key ring, the registry index and the verifier — built once, shared by every request.

use crate::audit::{Audit, AuditError, Refusals};
use crate::clock::Clock;
use crate::config::{AuthorizationServer, Config, Transmitter, TrustedIssuer, DEV_TRUST_DOMAIN};
use crate::credentials::Credentials;
use crate::events::Hub;
use crate::keys::{KeyError, KeyPolicy, KeyRing};
use crate::metrics::{Gauges, Metrics};
use crate::registry::{Registry, ToolEntry};
use crate::revocations::Revocations;
use crate::store::audit::Record;
use crate::store::{self, Store, StoreError};
use crate::verify::{Verifier, VerifierConfig};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct App {
    pub dev: bool,
    pub issuer: String,
    pub trust_domain: String,
    pub token_ttl: i64,
    pub leeway: i64,
    /// The bearer credentials: admin, reporter, read-only.
    pub credentials: Credentials,
    /// Registry lists, `/metrics` and the revocation export need no token (`--open-reads`, dev).
    pub open_reads: bool,
    /// The names a request's `Host` may carry, and the origins allowed to change state.
    pub hosts: crate::hosts::Allowed,
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// CAs whose client certificates are SPIFFE credentials at exchange.
    /// Replaced whole by a reload (`SIGHUP`), together with the listener's client-CA roots.
    trusted_client_cas: std::sync::RwLock<Arc<Vec<crate::config::TrustedClientCa>>>,
    /// The daemon sees client certificates (a TLS listener asking for them, or a trusted
    /// proxy's header), so the token endpoint can bind tokens: RFC 8414 metadata says so and
    /// names it in `mtls_endpoint_aliases`.
    pub client_auth: bool,
    pub transmitters: Vec<Transmitter>,
    /// Authorization servers whose access tokens guards and gateways accept
    /// (`GET /v1/authorization-servers` hands them their keys). Never exchange's issuers.
    pub authorization_servers: Vec<AuthorizationServer>,
    /// Expiry given to revocations whose signal names none; `None` keeps them until lifted.
    pub revocation_ttl: Option<i64>,
    /// Rotate the signing key when it has signed for this many days (`key_rotation_days`).
    pub key_rotation_days: Option<u32>,
    pub unit_id: String,
    pub clock: Arc<dyn Clock>,
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub registry: Arc<RwLock<Registry>>,
    pub revocations: Arc<Revocations>,
    pub verifier: Verifier,
    /// How the token endpoint checks DPoP proofs: the `iat` window, its own nonces when
    /// `--dpop-nonce` is on, and the proofs it has seen (apart from the verifier's, whose
    /// proofs are the tool servers' and never carry this daemon's nonces).
    pub token_dpop: toolgate_core::dpop::DpopPolicy,
    pub audit: Arc<Audit>,
    /// Repeated refusals being counted into one row each.
    pub refusals: Refusals,
    pub events: Arc<Hub>,
    pub metrics: Metrics,
}

/// The DPoP horizon in the `meta` table. Written on the database thread and waited for, at
/// most once per [`toolgate_core::dpop::HORIZON_STEP`] seconds of proofs.
struct StoredHorizon(Store);

impl toolgate_core::dpop::Horizon for StoredHorizon {
    fn extend(&self, until: i64) -> bool {
        self.0
            .call_blocking(move |conn| {
                crate::store::meta::raise_i64(conn, crate::store::meta::DPOP_HORIZON, until)
            })
            .inspect_err(|e| crate::log_error!("store: cannot record the DPoP horizon: {e}"))
            .is_ok()
    }
}

/// What the live stream shows of an audit row.
struct LiveEvent {
    kind: &'static str,
    timestamp: String,
    subject: String,
    target: String,
    result: String,
    detail: String,
}

impl LiveEvent {
    fn of(kind: &'static str, r: &Record) -> Self {
        Self {
            kind,
            timestamp: crate::clock::rfc3339(r.ts_ms / 1000),
            subject: r.subject.clone(),
            target: r.target.clone(),
            result: r.decision.to_string(),
            detail: if r.check.is_empty() {
                r.reason.clone()
            } else {
                format!("{}: {}", r.check, r.reason)
            },
        }
    }

    fn publish(&self, hub: &Hub) {
        hub.publish(
            self.kind,
            &self.timestamp,
            &self.subject,
            &self.target,
            &self.result,
            &self.detail,
        );
    }
}

/// Why a rotation of the signing key was not made, or not audited.
#[derive(Debug)]
pub enum RotationError {
    /// Nothing changed: a key is already waiting to sign.
    Pending { kid: String, signs_from: i64 },
    /// Nothing changed: the audit log, the database or the key file failed.
    Unavailable(&'static str),
    /// The key was rotated, but its audit row could not be committed.
    Unaudited,
}

/// Why the daemon cannot start.
#[derive(Debug)]
pub enum OpenError {
    /// The database could not be opened, migrated or read.
    Store(StoreError),
    /// What is configured or stored cannot be served safely: one sentence for the operator.
    Refused(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => write!(f, "cannot open the database: {e}"),
            Self::Refused(why) => f.write_str(why),
        }
    }
}
impl std::error::Error for OpenError {}

impl From<StoreError> for OpenError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The threads behind an `App`, joined at shutdown once the app is gone.
pub struct Threads {
    pub db: JoinHandle<()>,
    pub audit: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("issuer", &self.issuer)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The CAs trusted for SPIFFE credentials now (none, failing closed, if the lock is
    /// poisoned).
    pub fn trusted_client_cas(&self) -> Arc<Vec<crate::config::TrustedClientCa>> {
        self.trusted_client_cas
            .read()
            .map(|cas| cas.clone())
            .unwrap_or_default()
    }

    /// Swap in reloaded trust anchors (see `server::reload_daemon`).
    pub(crate) fn set_trusted_client_cas(&self, cas: Vec<crate::config::TrustedClientCa>) {
        if let Ok(mut current) = self.trusted_client_cas.write() {
            *current = Arc::new(cas);
        }
    }

    /// Open the database and load everything a request needs. Blocking: run off the async
    /// workers. The returned thread handle is the database thread.
    pub fn open(
        config: &Config,
        bound: SocketAddr,
        clock: Arc<dyn Clock>,
    ) -> Result<(App, Threads), OpenError> {
        // The database holds the signing key (or its old copies) and the audit log: its
        // owner's alone, with its write-ahead log and index.
        for suffix in ["", "-wal", "-shm"] {
            let mut file = config.db_path.clone().into_os_string();
            file.push(suffix);
            crate::secret_file::ensure_private(std::path::Path::new(&file), "database file")
                .map_err(OpenError::Refused)?;
        }
        let (store, db_thread) = Store::open(&config.db_path)?;
        let now = clock.now();
        let issuer = config.issuer.clone().unwrap_or_else(|| {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{bound}")
        });
        let tools = store.call_blocking(|c| store::tools::all(c))?;
        // Registration refuses it, but the default issuer follows `--listen`: a tool registered
        // under one address can hold the issuer of another. Its tokens would be agent tokens.
        if let Some(tool) = tools.iter().find(|t| t.resource() == issuer) {
            return Err(OpenError::Refused(format!(
                "tool {} has toolgate's own issuer {issuer} as its resource_uri (tokens for that \
                 audience are agent tokens); start with the --issuer (or --listen) it was \
                 registered under and update or deregister the tool",
                tool.tool_id
            )));
        }
        // Before the audit writer opens its connection: moving the key out of the database
        // empties the write-ahead log, which no reader may hold.
        let policy = KeyPolicy {
            publish_ahead: config.key_publish_ahead,
            // Execution-bound tokens live shorter; agent and tool tokens this long at most.
            token_lifetime: config.token_ttl,
        };
        let keys = KeyRing::open(
            &store,
            config.signing_key_file.as_deref(),
            policy,
            clock.clone(),
        )
        .map_err(|e| match e {
            KeyError::Store(e) => OpenError::Store(e),
            KeyError::File(why) => OpenError::Refused(why),
        })?;
        let keys = Arc::new(keys);
        let key_path = config.audit_key_path();
        crate::secret_file::ensure_private(&key_path, "audit key file")
            .map_err(OpenError::Refused)?;
        let (key, key_created) = if config.audit {
            let (key, created) = crate::audit::load_or_create_key(&key_path)?;
            (Some(key), created)
        } else {
            (None, false)
        };
        let started = Audit::start(
            &config.db_path,
            crate::audit::Options {
                enabled: config.audit,
                retention_ms: config
                    .audit_retention_days
                    .map(|d| i64::from(d).saturating_mul(86_400_000)),
                page_limit: config.audit_page_limit.clone(),
                key,
                key_created,
                sync_every: None,
            },
        );
        if started.is_err() && key_created {
            // A key made for a log it does not fit would stand in the way of the right one.
            let _ = std::fs::remove_file(&key_path);
        }
        let (audit, audit_thread) = started?;
        let trust_domain = match (&config.trust_domain, config.dev) {
            (Some(td), _) => td.clone(),
            (None, true) => DEV_TRUST_DOMAIN.to_string(),
            (None, false) => issuer_host(&issuer),
        };
        let unit_id = store.call_blocking(|c| {
            store::meta::get_or_insert(c, "unit_id", || {
                crate::ids::random_id().unwrap_or_else(|| "unknown".into())
            })
        })?;
        let registry = Arc::new(RwLock::new(Registry::from_entries(tools)));
        let revocations = Arc::new(Revocations::load(&store, now)?);
        let verifier = Verifier::new(
            VerifierConfig {
                issuer: issuer.clone(),
                leeway: config.leeway,
                keys: keys.clone(),
                clock: clock.clone(),
            },
            registry.clone(),
            revocations.index().clone(),
        );
        // Both DPoP policies keep their horizon in the database, so a restart refuses only
        // proofs that could have been seen before it.
        let horizon = store.call_blocking(|conn| {
            crate::store::meta::get_i64(conn, crate::store::meta::DPOP_HORIZON)
        })?;
        let verifier = verifier.with_dpop_policy(
            toolgate_core::dpop::DpopPolicy::new(config.dpop_window, None, now)
                .with_horizon(horizon, Box::new(StoredHorizon(store.clone()))),
        );
        let nonces = if config.dpop_nonce {
            Some(
                toolgate_core::dpop::Nonces::generate()
                    .map_err(|_| OpenError::Refused("cannot draw the DPoP nonce secret".into()))?,
            )
        } else {
            None
        };
        let token_dpop = toolgate_core::dpop::DpopPolicy::new(config.dpop_window, nonces, now)
            .with_horizon(horizon, Box::new(StoredHorizon(store.clone())));
        let hosts = crate::hosts::Allowed::new(
            bound,
            &issuer,
            &config.allowed_hosts,
            &config.allowed_origins,
        );
        let app = App {
            dev: config.dev,
            issuer,
            trust_domain,
            token_ttl: config.token_ttl,
            leeway: config.leeway,
            credentials: Credentials {
                admin: config.admin_token.clone(),
                reporter: config.reporter_token.clone(),
                reader: config.read_token.clone(),
            },
            open_reads: config.dev || config.open_reads,
            hosts,
            trusted_issuers: config.trusted_issuers.clone(),
            trusted_client_cas: std::sync::RwLock::new(Arc::new(config.trusted_client_cas.clone())),
            // Trusted client CAs are among the listener's client-auth roots.
            client_auth: !config.trusted_client_cas.is_empty()
                || config.client_cert_header.is_some()
                || config
                    .tls
                    .as_ref()
                    .is_some_and(|t| !t.client_cas.is_empty()),
            transmitters: config.transmitters.clone(),
            authorization_servers: config.authorization_servers.clone(),
            revocation_ttl: config.revocation_ttl,
            key_rotation_days: config.key_rotation_days,
            unit_id,
            clock,
            store,
            keys,
            registry,
            revocations,
            verifier,
            token_dpop,
            audit: Arc::new(audit),
            refusals: Refusals::default(),
            events: Arc::new(Hub::new()),
            metrics: Metrics::default(),
        };
        Ok((
            app,
            Threads {
                db: db_thread,
                audit: audit_thread,
            },
        ))
    }

    /// Every trusted issuer's keys (role `subject`), every transmitter's (role `signals`) and
    /// every authorization server's (role `resource`).
    pub fn issuer_keys(
        &self,
    ) -> impl Iterator<Item = (&'static str, &Arc<crate::issuers::IssuerKeys>)> {
        self.trusted_issuers
            .iter()
            .map(|t| ("subject", &t.keys))
            .chain(self.transmitters.iter().map(|t| ("signals", &t.keys)))
            .chain(
                self.authorization_servers
                    .iter()
                    .map(|a| ("resource", &a.keys)),
            )
    }

    /// The token endpoint's URL, from the issuer: what metadata names and DPoP proofs' `htu`
    /// must be.
    pub fn token_endpoint(&self) -> String {
        format!("{}/v1/exchange/token", self.issuer.trim_end_matches('/'))
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Wall-clock milliseconds for audit rows (the decision clock stays in seconds).
    pub fn now_ms(&self) -> i64 {
        self.clock.now().saturating_mul(1000)
    }

    /// Append an audit row and publish the live event. `Err` means the row could not be
    /// queued: the caller refuses the request (shed load, never drop the record).
    pub fn record(&self, event: &'static str, record: Record) -> Result<(), AuditError> {
        // The audit filters accept only this vocabulary: a row outside it could not be found.
        debug_assert_in_vocabulary(&record);
        // Nobody watching the stream: no copies to make.
        let live = (self.events.clients() > 0).then(|| LiveEvent::of(event, &record));
        self.audit
            .record(record)
            .inspect_err(|e| self.audit_refused(e))?;
        if let Some(live) = live {
            live.publish(&self.events);
        }
        Ok(())
    }

    /// Audit a refusal: like `record`, but repeats of it (same kind, check and target) from
    /// `peer` within a second are counted into one row (see `audit::Refusals`). `vouched`:
    /// whether its target names something toolgate knows (otherwise it is not part of what
    /// makes refusals the same). `Err`: the log cannot take it; refuse the request (503).
    pub fn record_refusal(
        &self,
        event: &'static str,
        record: Record,
        peer: Option<std::net::IpAddr>,
        vouched: bool,
    ) -> Result<(), AuditError> {
        let Some(peer) = peer else {
            return self.record(event, record);
        };
        debug_assert_in_vocabulary(&record);
        // A counted repeat writes nothing now, but is refused like any audited request when
        // the log cannot be written.
        if self.audit.failed() {
            self.audit_refused(&AuditError::Unavailable);
            return Err(AuditError::Unavailable);
        }
        let live = (self.events.clients() > 0).then(|| LiveEvent::of(event, &record));
        for row in self.refusals.admit(record, peer, vouched) {
            self.audit
                .record(row)
                .inspect_err(|e| self.audit_refused(e))?;
        }
        if let Some(live) = live {
            live.publish(&self.events);
        }
        Ok(())
    }

    /// Write the rows of refusal windows closed by now (every window at shutdown: `all`).
    pub fn flush_refusals(&self, all: bool) {
        let now = (!all).then(|| self.now_ms());
        for row in self.refusals.closed(now) {
            if let Err(e) = self.audit.record(row) {
                self.audit_refused(&e);
            }
        }
    }

    /// Like `record`, but waits until the row is committed: for state changes, so that their
    /// acknowledgement implies their audit row survives a crash.
    pub async fn record_durable(
        &self,
        event: &'static str,
        record: Record,
    ) -> Result<(), AuditError> {
        debug_assert_in_vocabulary(&record);
        let live = LiveEvent::of(event, &record);
        self.audit
            .record_durable(record)
            .await
            .inspect_err(|e| self.audit_refused(e))?;
        live.publish(&self.events);
        Ok(())
    }

    fn audit_refused(&self, e: &AuditError) {
        self.metrics.audit_refused();
        crate::log_warn!("audit record refused ({e:?}); refusing the request");
    }

    /// Can a state change be audited right now? Checked before changing anything.
    pub fn audit_ready(&self) -> Result<(), AuditError> {
        if self.audit.failed() {
            Err(AuditError::Unavailable)
        } else if self.audit.depth() >= crate::audit::QUEUE_CAPACITY - 4096 {
            Err(AuditError::Overloaded)
        } else {
            Ok(())
        }
    }

    /// The gauges `/metrics` and the dashboard read.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            tools_registered: self.registry.read().map(|r| r.len()).unwrap_or(0),
            revocations_active: self.revocations.active(self.now()).unwrap_or(0),
            audit_queue_depth: self.audit.depth(),
            audit_rows_written: self.audit.written(),
            sse_clients: self.events.clients(),
            signature_cache_entries: self.verifier.cached_signatures(),
            signing_keys: self.keys.counts(self.now()),
        }
    }

    /// Rotate toolgate's signing key (see [`KeyRing::rotate`]): the new key is published now
    /// and signs after the publish-ahead period. Its audit row (kind `admin`, decision
    /// `rotated`, target the new kid) is committed before this returns. `who` names the caller:
    /// a role, `dev`, or `schedule`. The rotation and its row are one task, finished even if
    /// the caller goes away, so that the ring in memory, the database and the log agree.
    pub async fn rotate_signing_key(
        &self,
        alg: crate::jose::Algorithm,
        who: &'static str,
        rid: &str,
    ) -> Result<crate::keys::Rotated, RotationError> {
        use crate::keys::RotateError;
        self.audit_ready().map_err(|_| {
            RotationError::Unavailable("the audit log is unavailable; nothing was changed")
        })?;
        let now = self.now();
        let (keys, store, audit) = (self.keys.clone(), self.store.clone(), self.audit.clone());
        let (ts_ms, rid) = (self.now_ms(), rid.to_string());
        let task = tokio::spawn(async move {
            let rotated = keys.rotate(&store, alg, now).await?;
            let row = rotation_row(&rotated, who, rid, ts_ms);
            debug_assert_in_vocabulary(&row);
            let audited = audit.record_durable(row.clone()).await;
            Ok::<_, RotateError>((rotated, row, audited))
        });
        let outcome = task
            .await
            .map_err(|_| RotationError::Unavailable("the rotation failed; nothing was changed"))?;
        let (rotated, row, audited) = outcome.map_err(|e| match e {
            RotateError::Pending { kid, signs_from } => RotationError::Pending { kid, signs_from },
            RotateError::Key(why) => {
                crate::log_error!("key rotation: {why}");
                RotationError::Unavailable(
                    "the new signing key could not be made or written; nothing was changed",
                )
            }
            RotateError::Store(e) => {
                crate::log_error!("key rotation: {e}");
                RotationError::Unavailable("storage is unavailable; nothing was changed")
            }
        })?;
        self.metrics.key_rotated();
        crate::log_info!(
            "signing key {} made by {who}: {}",
            rotated.key.kid,
            row.reason
        );
        match audited {
            Ok(()) => LiveEvent::of("admin", &row).publish(&self.events),
            Err(e) => {
                self.audit_refused(&e);
                return Err(RotationError::Unaudited);
            }
        }
        Ok(rotated)
    }

    /// The key ring's timer (once a minute, by the app's clock): keys whose last token has
    /// expired are retired (private half overwritten, audited `retired`), and with
    /// `key_rotation_days` the signing key is rotated once it has signed that long.
    pub async fn key_upkeep(&self) {
        let now = self.now();
        match self.keys.retire_expired(&self.store, now).await {
            Ok(kids) => {
                for kid in kids {
                    crate::log_info!("signing key {kid} retired: its private half is removed");
                    let row = Record {
                        ts_ms: self.now_ms(),
                        kind: "admin".into(),
                        subject: "schedule".into(),
                        target: kid,
                        decision: "retired".into(),
                        reason: "no token it signed is live any more; its private half is                                  removed, its public half kept"
                            .into(),
                        ..Default::default()
                    };
                    if let Err(e) = self.record_durable("admin", row).await {
                        crate::log_warn!("the retirement of a signing key is not audited: {e:?}");
                    }
                }
            }
            Err(e) => crate::log_warn!("retiring signing keys failed: {e}"),
        }
        let Some(days) = self.key_rotation_days else {
            return;
        };
        if let Some(alg) = self.keys.rotation_due(now, days) {
            match self.rotate_signing_key(alg, "schedule", "").await {
                Ok(_) => {}
                Err(e) => crate::log_warn!("the scheduled key rotation failed: {e:?}"),
            }
        }
    }

    /// Store a new tool (durable before this returns), then publish it to the index.
    pub async fn register_tool(&self, entry: ToolEntry) -> Result<Arc<ToolEntry>, StoreError> {
        let row = entry.clone();
        self.store
            .call(move |c| store::tools::insert(c, &row))
            .await?;
        let mut registry = self.registry.write().map_err(|_| StoreError::Unavailable)?;
        registry.insert(entry.clone());
        registry.get(&entry.tool_id).ok_or(StoreError::Unavailable)
    }

    /// Replace a registered tool's policy in place: durable first, then one swap in the index
    /// (no moment without the tool, and its revocations stay). `None` if there is no such tool.
    pub async fn update_tool(
        &self,
        mut entry: ToolEntry,
    ) -> Result<Option<Arc<ToolEntry>>, StoreError> {
        let row = entry.clone();
        let Some(registered_at) = self
            .store
            .call(move |c| store::tools::update(c, &row))
            .await?
        else {
            return Ok(None);
        };
        entry.registered_at = registered_at;
        let mut registry = self.registry.write().map_err(|_| StoreError::Unavailable)?;
        registry.remove(&entry.tool_id);
        registry.insert(entry.clone());
        Ok(registry.get(&entry.tool_id))
    }

    /// Delete a tool; `None` if there was none.
    pub async fn deregister_tool(
        &self,
        tool_id: &str,
    ) -> Result<Option<Arc<ToolEntry>>, StoreError> {
        let id = tool_id.to_string();
        let existed = self
            .store
            .call(move |c| store::tools::delete(c, &id))
            .await?;
        let mut registry = self.registry.write().map_err(|_| StoreError::Unavailable)?;
        let removed = registry.remove(tool_id);
        Ok(if existed { removed } else { None })
    }
}

/// The audit row of a rotation: kind `admin`, decision `rotated`, target the new kid, and in
/// its reason the dates that matter.
fn rotation_row(
    rotated: &crate::keys::Rotated,
    who: &'static str,
    request_id: String,
    ts_ms: i64,
) -> Record {
    let key = &rotated.key;
    let time = crate::clock::rfc3339;
    let mut reason = format!(
        "{} key, published now, signs from {}",
        key.algorithm().name(),
        time(key.signs_from)
    );
    if let Some(p) = &rotated.previous {
        reason.push_str(&format!(
            "; {} signs until then, published until {}",
            p.kid,
            p.not_after.map_or_else(String::new, time)
        ));
    }
    Record {
        ts_ms,
        kind: "admin".into(),
        subject: who.into(),
        target: key.kid.clone(),
        decision: "rotated".into(),
        reason,
        request_id,
        ..Default::default()
    }
}

/// The host of an issuer URL, for the default production trust domain.
fn issuer_host(issuer: &str) -> String {
    let rest = issuer.split_once("://").map_or(issuer, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    if host.is_empty() || host.contains(':') {
        "toolgate.local".to_string()
    } else {
        host
    }
}

/// Debug builds: every audit row uses the filters' vocabulary (what `/v1/audit` can select).
fn debug_assert_in_vocabulary(record: &Record) {
    debug_assert!(
        store::audit::in_vocabulary(record),
        "audit row outside the vocabulary: {} {} {}",
        record.kind,
        record.decision,
        record.check
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn issuer_host_defaults() {
        assert_eq!(
            super::issuer_host("https://TG.example.com:8443/x"),
            "tg.example.com"
        );
        assert_eq!(super::issuer_host("http://127.0.0.1:8693"), "127.0.0.1");
        assert_eq!(super::issuer_host("http://[::1]:8693"), "toolgate.local");
    }
}
