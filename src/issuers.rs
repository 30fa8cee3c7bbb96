//! The keys of the issuers toolgate trusts (subject-token issuers and signal transmitters): a
//! fixed JWKS file, or fetched from the provider — its `jwks_uri`, or found by OpenID Connect
//! Discovery / RFC 8414 metadata at the issuer's well-known path — and kept fresh.
//!
//! Fetching: HTTPS only (plain `http` only for a loopback host in dev mode), checked against the
//! system's roots or the issuer's `ca_file`; a response is at most [`MAX_DOCUMENT_BYTES`] and
//! [`FETCH_TIMEOUT`]; a redirect is followed only within the same origin. Freshness: the JWKS
//! response's `Cache-Control: max-age`, clamped to [`MIN_TTL`]…[`MAX_TTL`], refreshed in the
//! background before it runs out; a token naming an unknown `kid` refreshes at once, at most
//! every [`KID_REFRESH_INTERVAL`] seconds per issuer (random kids cannot make toolgate hammer
//! the provider). A provider that cannot be reached: the last good keys serve for the issuer's
//! grace after they expired, then the issuer fails closed until a fetch succeeds.
//!
//! Requests read keys from a snapshot ([`IssuerKeys::key`]); the asynchronous part
//! ([`IssuerKeys::prepare`]) runs before them, so the decisions themselves never wait on I/O
//! beyond it.

use crate::jose::{Jwk, JwkSet};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use toolgate_guard::tls::{ClientTls, Connector};

/// Shortest time fetched keys are kept before a refresh, whatever `max-age` says (seconds).
pub const MIN_TTL: i64 = 300;
/// Longest time fetched keys are kept before a refresh (seconds).
pub const MAX_TTL: i64 = 86_400;
/// How long the last good keys serve after they expired while the provider cannot be reached,
/// unless the issuer sets `grace_seconds`.
pub const DEFAULT_GRACE: i64 = 86_400;
/// An unknown `kid` refreshes the keys at most this often per issuer (seconds).
pub const KID_REFRESH_INTERVAL: i64 = 30;
/// A failed fetch is retried no sooner than this (seconds).
pub const RETRY_INTERVAL: i64 = 30;
/// The largest metadata or JWKS document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The longest one fetch (with its redirects) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 3;

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JWKS file read at start (air-gapped use).
    File(PathBuf),
    /// A JWKS URL.
    JwksUri(String),
    /// The issuer's metadata names the JWKS URL.
    Discovery,
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::File(_) => "jwks_file",
            Source::JwksUri(_) => "jwks_uri",
            Source::Discovery => "discovery",
        }
    }
}

/// How a fetched issuer is reached.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// The CA certificates to check the provider against (`ca_file`); the system's roots if
    /// `None`.
    pub ca_file: Option<PathBuf>,
    /// Seconds the last good keys serve after they expired (`grace_seconds`).
    pub grace: Option<i64>,
    /// Plain `http://` to a loopback host is allowed (dev mode only).
    pub allow_loopback_http: bool,
}

/// What a snapshot of the keys says, and why a lookup may find nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Keys are fresh (or fixed).
    Fresh,
    /// The keys expired and could not be refreshed; they serve within the grace.
    Stale,
    /// No usable keys: never fetched, or past the grace. Tokens of this issuer are refused.
    Unavailable,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Fresh => "fresh",
            Health::Stale => "stale",
            Health::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    keys: Arc<JwkSet>,
    /// When the keys in `keys` were fetched (`None`: never, for a fetched issuer).
    fetched_at: Option<i64>,
    /// When they should be refreshed.
    expires_at: i64,
    /// The JWKS URL used last (discovery finds it).
    jwks_uri: Option<String>,
    last_attempt: Option<i64>,
    /// The last attempt's error, `None` if it succeeded.
    last_error: Option<String>,
    last_kid_refresh: Option<i64>,
    /// Keys the provider published that toolgate cannot use, at the last fetch.
    skipped: usize,
    /// Attempts made so far (a refresh that waited for another sees it moved).
    attempts: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    fetch_ok: AtomicU64,
    fetch_failed: AtomicU64,
    kid_refresh: AtomicU64,
    kid_refresh_limited: AtomicU64,
}

/// One issuer's keys.
pub struct IssuerKeys {
    issuer: String,
    source: Source,
    grace: i64,
    fetcher: Option<Fetcher>,
    state: RwLock<State>,
    /// One refresh at a time per issuer; the others wait for its result.
    refreshing: tokio::sync::Mutex<()>,
    counters: Counters,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl IssuerKeys {
    /// Fixed keys (a JWKS file, or keys given by a test).
    pub fn fixed(issuer: &str, keys: JwkSet, file: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            issuer: issuer.to_string(),
            source: Source::File(file.unwrap_or_default()),
            grace: 0,
            fetcher: None,
            state: RwLock::new(State {
                keys: Arc::new(keys),
                ..State::default()
            }),
            refreshing: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
        })
    }

    /// Keys fetched from the provider (`Source::JwksUri` or `Source::Discovery`); nothing is
    /// fetched until [`IssuerKeys::prepare`] or [`IssuerKeys::refresh_if_due`] runs. The error
    /// is one sentence naming what is wrong with the configuration.
    pub fn fetched(issuer: &str, source: Source, opts: &FetchOptions) -> Result<Arc<Self>, String> {
        let grace = opts.grace.unwrap_or(DEFAULT_GRACE);
        if !(0..=30 * 86_400).contains(&grace) {
            return Err(format!(
                "{issuer}: grace_seconds must be between 0 and 2592000"
            ));
        }
        match &source {
            Source::File(_) => return Err(format!("{issuer}: a JWKS file is not fetched")),
            Source::JwksUri(uri) => check_url(uri, opts.allow_loopback_http)
                .map_err(|why| format!("{issuer}: jwks_uri {why}"))?,
            Source::Discovery => check_url(issuer, opts.allow_loopback_http)
                .map_err(|why| format!("{issuer}: discovery needs an issuer URL that {why}"))?,
        }
        let fetcher = Fetcher::new(opts).map_err(|why| format!("{issuer}: {why}"))?;
        Ok(Arc::new(Self {
            issuer: issuer.to_string(),
            source,
            grace,
            fetcher: Some(fetcher),
            state: RwLock::new(State::default()),
            refreshing: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether the keys are fetched (and so need [`IssuerKeys::prepare`] and a refresher).
    pub fn is_fetched(&self) -> bool {
        self.fetcher.is_some()
    }

    /// The state of the keys at `now`.
    pub fn health(&self, now: i64) -> Health {
        let Ok(s) = self.state.read() else {
            return Health::Unavailable;
        };
        self.health_of(&s, now)
    }

    fn health_of(&self, s: &State, now: i64) -> Health {
        if self.fetcher.is_none() {
            return Health::Fresh;
        }
        match s.fetched_at {
            None => Health::Unavailable,
            Some(_) if s.keys.keys.is_empty() => Health::Unavailable,
            Some(_) if now < s.expires_at => Health::Fresh,
            Some(_) if now < s.expires_at.saturating_add(self.grace) => Health::Stale,
            Some(_) => Health::Unavailable,
        }
    }

    /// The usable keys at `now`: `None` when the issuer is unavailable (fail closed).
    pub fn keys(&self, now: i64) -> Option<Arc<JwkSet>> {
        let s = self.state.read().ok()?;
        (self.health_of(&s, now) != Health::Unavailable).then(|| s.keys.clone())
    }

    /// The key a token's header names: by `kid`, or the only key when it names none.
    pub fn key(&self, kid: Option<&str>, now: i64) -> Option<Jwk> {
        let keys = self.keys(now)?;
        match kid {
            Some(kid) => keys.find(kid).cloned(),
            None if keys.keys.len() == 1 => keys.keys.first().cloned(),
            None => None,
        }
    }

    /// Before a token naming `kid` is checked: fetch the keys if they are missing or expired
    /// (failed attempts retried every [`RETRY_INTERVAL`] s at most), or if `kid` is unknown
    /// (at most every [`KID_REFRESH_INTERVAL`] s; further unknown kids are counted).
    ///
    /// The fetch runs in a task of its own, so a caller that goes away (a client hanging up)
    /// cannot cancel it and waste the rate-limited refresh. A caller waits (at most
    /// [`FETCH_TIMEOUT`]) only when its token needs the result: the keys are unusable, or its
    /// `kid` is unknown. Stale keys that still serve are refreshed behind the request.
    pub async fn prepare(self: &Arc<Self>, kid: Option<&str>, now: i64) {
        if self.fetcher.is_none() {
            return;
        }
        enum Plan {
            Fetch(u64),
            FetchBehind(u64),
            Wait,
        }
        let plan = {
            let Ok(mut s) = self.state.write() else {
                return;
            };
            let health = self.health_of(&s, now);
            let expired = s.fetched_at.is_none_or(|_| now >= s.expires_at);
            let retry = s
                .last_attempt
                .is_none_or(|t| now.saturating_sub(t) >= RETRY_INTERVAL);
            let unknown = s.fetched_at.is_some()
                && match kid {
                    Some(kid) => s.keys.find(kid).is_none(),
                    None => s.keys.keys.len() != 1,
                };
            let kid_allowed = s
                .last_kid_refresh
                .is_none_or(|t| now.saturating_sub(t) >= KID_REFRESH_INTERVAL);
            if unknown && kid_allowed {
                s.last_kid_refresh = Some(now);
                self.counters.kid_refresh.fetch_add(1, Ordering::Relaxed);
                Plan::Fetch(s.attempts)
            } else if expired && retry {
                if health == Health::Stale && !unknown {
                    Plan::FetchBehind(s.attempts)
                } else {
                    Plan::Fetch(s.attempts)
                }
            } else {
                if unknown {
                    self.counters
                        .kid_refresh_limited
                        .fetch_add(1, Ordering::Relaxed);
                }
                if health != Health::Unavailable && !unknown {
                    return;
                }
                Plan::Wait
            }
        };
        match plan {
            Plan::Fetch(attempts) => {
                let this = self.clone();
                let task = tokio::spawn(async move { this.refresh(attempts, now).await });
                let _ = task.await;
            }
            Plan::FetchBehind(attempts) => {
                let this = self.clone();
                drop(tokio::spawn(
                    async move { this.refresh(attempts, now).await },
                ));
            }
            // A fetch under way (the background one, or another request's) is waited for, so
            // that its keys serve this token too.
            Plan::Wait => {
                let _ = tokio::time::timeout(FETCH_TIMEOUT, self.refreshing.lock()).await;
            }
        }
    }

    /// For the background refresher: refresh when the keys are within a fifth of their
    /// lifetime of expiring (or missing, or failed and due for a retry).
    pub async fn refresh_if_due(&self, now: i64) {
        let attempts = {
            let Ok(s) = self.state.read() else { return };
            let early = match s.fetched_at {
                Some(at) => s.expires_at - (s.expires_at - at) / 5,
                None => i64::MIN,
            };
            let retry = s
                .last_attempt
                .is_none_or(|t| now.saturating_sub(t) >= RETRY_INTERVAL);
            if now < early || !retry {
                return;
            }
            s.attempts
        };
        self.refresh(attempts, now).await;
    }

    /// One fetch, unless another began while this one waited for its turn.
    async fn refresh(&self, attempts_seen: u64, now: i64) {
        let Some(fetcher) = &self.fetcher else { return };
        let _turn = self.refreshing.lock().await;
        {
            let Ok(mut s) = self.state.write() else {
                return;
            };
            if s.attempts != attempts_seen {
                return;
            }
            s.attempts += 1;
            s.last_attempt = Some(now);
        }
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.fetch(fetcher))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())))
            .map_err(|why| clip(&why));
        // The log line is written after the state is updated and its lock released.
        let message = {
            let Ok(mut s) = self.state.write() else {
                return;
            };
            match result {
                Ok(fetched) => {
                    self.counters.fetch_ok.fetch_add(1, Ordering::Relaxed);
                    let kids: Vec<&str> = fetched
                        .keys
                        .keys
                        .iter()
                        .filter_map(|k| k.kid.as_deref())
                        .take(5)
                        .collect();
                    let count = fetched.keys.keys.len();
                    // A document the provider served and toolgate read, but with no key toolgate
                    // can use, replaces the old keys: a provider that stops listing a key means
                    // it (fail closed, not the grace).
                    let empty = count == 0;
                    let line = if empty {
                        format!(
                            "issuer {}: its JWKS has no signature key toolgate can use; its tokens are refused until it has one",
                            self.issuer
                        )
                    } else {
                        format!(
                            "issuer {}: {count} key(s) fetched ({}{}), kept {} s",
                            self.issuer,
                            clip(&kids.join(", ")),
                            if count > kids.len() { ", …" } else { "" },
                            fetched.ttl
                        )
                    };
                    s.keys = Arc::new(fetched.keys);
                    s.fetched_at = Some(now);
                    s.expires_at = now.saturating_add(fetched.ttl);
                    s.skipped = fetched.skipped;
                    s.last_error = empty.then(|| {
                        format!(
                            "the JWKS at {} has no signature key toolgate can use",
                            clip(&fetched.jwks_uri)
                        )
                    });
                    s.jwks_uri = Some(fetched.jwks_uri);
                    (empty, line)
                }
                Err(why) => {
                    self.counters.fetch_failed.fetch_add(1, Ordering::Relaxed);
                    let health = self.health_of(&s, now);
                    let line = format!(
                        "issuer {}: cannot fetch its keys ({why}); its tokens are {}",
                        self.issuer,
                        if health == Health::Unavailable {
                            "refused until a fetch succeeds"
                        } else {
                            "checked with the last good keys for now"
                        }
                    );
                    s.last_error = Some(why);
                    (true, line)
                }
            }
        };
        match message {
            (false, line) => crate::log_info!("{line}"),
            (true, line) => crate::log_warn!("{line}"),
        }
    }

    async fn fetch(&self, fetcher: &Fetcher) -> Result<Fetched, String> {
        let jwks_uri = match &self.source {
            Source::JwksUri(uri) => uri.clone(),
            Source::Discovery => self.discover(fetcher).await?,
            Source::File(_) => return Err("a JWKS file is not fetched".into()),
        };
        let (headers, body) = fetcher.get(&jwks_uri).await?;
        let (keys, skipped) = JwkSet::from_provider_json_bytes(&body)
            .map_err(|e| format!("the JWKS at {jwks_uri} is refused: {e}"))?;
        Ok(Fetched {
            keys,
            skipped,
            ttl: max_age(&headers).unwrap_or(MIN_TTL).clamp(MIN_TTL, MAX_TTL),
            jwks_uri,
        })
    }

    /// The `jwks_uri` of the issuer's metadata: OpenID Connect Discovery first, then RFC 8414.
    /// The metadata's `issuer` must be the configured one exactly (OIDC Discovery §4.3, RFC 8414
    /// §3.3): otherwise another issuer's keys could be taken for this one's.
    async fn discover(&self, fetcher: &Fetcher) -> Result<String, String> {
        let base = self.issuer.trim_end_matches('/');
        let oidc = format!("{base}/.well-known/openid-configuration");
        let body = match fetcher.get(&oidc).await {
            Ok((_, body)) => body,
            Err(first) => {
                let rfc8414 = rfc8414_url(&self.issuer).ok_or(first.clone())?;
                fetcher
                    .get(&rfc8414)
                    .await
                    .map_err(|second| format!("{first}; {second}"))?
                    .1
            }
        };
        let meta: Value = serde_json::from_slice(&body)
            .map_err(|_| "the issuer's metadata is not JSON".to_string())?;
        let named = meta.get("issuer").and_then(Value::as_str);
        if named != Some(self.issuer.as_str()) {
            return Err(format!(
                "the metadata names issuer {}, not {}",
                named.map_or("(none)".to_string(), |n| clip(&format!("{n:?}"))),
                self.issuer
            ));
        }
        let uri = meta
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the issuer's metadata has no jwks_uri")?;
        check_url(uri, fetcher.allow_loopback_http)
            .map_err(|why| format!("the metadata's jwks_uri {why}"))?;
        Ok(uri.to_string())
    }

    /// What `GET /v1/issuers` shows of this issuer.
    pub fn status(&self, role: &str, now: i64) -> Value {
        let Ok(s) = self.state.read() else {
            return json!({"issuer": self.issuer, "role": role, "state": "unavailable"});
        };
        let time = |t: Option<i64>| t.map(crate::clock::rfc3339);
        let kids: Vec<Value> = s
            .keys
            .keys
            .iter()
            .map(|k| json!({"kid": k.kid, "alg": k.alg.name()}))
            .collect();
        let mut out = json!({
            "issuer": self.issuer,
            "role": role,
            "source": self.source.name(),
            "state": self.health_of(&s, now).name(),
            "keys": kids,
        });
        if let (Some(obj), Source::File(path)) = (out.as_object_mut(), &self.source) {
            if !path.as_os_str().is_empty() {
                obj.insert("jwks_file".into(), json!(path.display().to_string()));
            }
        }
        if let (Some(obj), true) = (out.as_object_mut(), self.fetcher.is_some()) {
            obj.insert(
                "jwks_uri".into(),
                json!(s.jwks_uri.clone().or(match &self.source {
                    Source::JwksUri(u) => Some(u.clone()),
                    _ => None,
                })),
            );
            obj.insert("fetched_at".into(), json!(time(s.fetched_at)));
            obj.insert(
                "refresh_at".into(),
                json!(s.fetched_at.map(|_| crate::clock::rfc3339(s.expires_at))),
            );
            obj.insert(
                "usable_until".into(),
                json!(s
                    .fetched_at
                    .map(|_| crate::clock::rfc3339(s.expires_at.saturating_add(self.grace)))),
            );
            obj.insert(
                "last_fetch".into(),
                json!(s.last_attempt.map(|at| json!({
                    "at": crate::clock::rfc3339(at),
                    "result": if s.last_error.is_some() { "error" } else { "ok" },
                    "error": s.last_error,
                }))),
            );
            obj.insert("skipped_keys".into(), json!(s.skipped));
            obj.insert("grace_seconds".into(), json!(self.grace));
        }
        out
    }

    /// Prometheus lines for this issuer (`role` is `subject`, `signals` or `resource`).
    pub fn render_metrics(&self, role: &str, now: i64, out: &mut String) {
        use std::fmt::Write;
        let issuer = crate::metrics::label_value(&self.issuer);
        let c = &self.counters;
        let health = self.health(now);
        for state in [Health::Fresh, Health::Stale, Health::Unavailable] {
            let _ = writeln!(
                out,
                "toolgate_issuer_keys_state{{issuer=\"{issuer}\",role=\"{role}\",state=\"{}\"}} {}",
                state.name(),
                u8::from(health == state)
            );
        }
        for (result, n) in [
            ("ok", c.fetch_ok.load(Ordering::Relaxed)),
            ("error", c.fetch_failed.load(Ordering::Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "toolgate_issuer_key_fetches_total{{issuer=\"{issuer}\",role=\"{role}\",result=\"{result}\"}} {n}"
            );
        }
        for (outcome, n) in [
            ("refreshed", c.kid_refresh.load(Ordering::Relaxed)),
            ("limited", c.kid_refresh_limited.load(Ordering::Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "toolgate_issuer_unknown_kid_total{{issuer=\"{issuer}\",role=\"{role}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
}

/// Provider-controlled text (an error naming a URL or an issuer) kept short for the log and
/// `/v1/issuers`.
fn clip(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_string(),
    }
}

struct Fetched {
    keys: JwkSet,
    skipped: usize,
    ttl: i64,
    jwks_uri: String,
}

/// `max-age` of a `Cache-Control` header (`no-store`/`no-cache` count as 0: the minimum).
fn max_age(headers: &http::HeaderMap) -> Option<i64> {
    let value = headers.get(header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            age = n.trim_matches('"').parse::<i64>().ok();
        }
    }
    age
}

/// RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path.
fn rfc8414_url(issuer: &str) -> Option<String> {
    let (scheme, rest) = issuer.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some(format!(
        "{scheme}://{authority}/.well-known/oauth-authorization-server{}",
        path.trim_end_matches('/')
    ))
}

/// A URL toolgate may fetch keys from: `https://` with a host and no user information, or
/// `http://` to a loopback host when `allow_loopback_http` (dev mode). The error completes
/// "`<url>` …".
pub fn check_url(url: &str, allow_loopback_http: bool) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "must be an absolute https:// URL".to_string())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || url.contains('#') {
        return Err(
            "must be an https:// URL with a host and no user information or fragment".into(),
        );
    }
    match scheme {
        "https" => Ok(()),
        "http" if allow_loopback_http && is_loopback(authority) => Ok(()),
        "http" if is_loopback(authority) => {
            Err("is plain http://, allowed only for a loopback host in dev mode".into())
        }
        _ => Err("must be https:// (plain http:// only for a loopback host in dev mode)".into()),
    }
}

fn is_loopback(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The scheme and authority of an absolute URL (what must not change across a redirect).
fn origin(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    Some((scheme, rest.split(['/', '?', '#']).next()?))
}

/// GETs for one issuer: a pooled client per scheme, its trust, the caps.
struct Fetcher {
    https: Pool<Connector, Empty<Bytes>>,
    plain: Option<Pool<Connector, Empty<Bytes>>>,
    allow_loopback_http: bool,
}

impl Fetcher {
    fn new(opts: &FetchOptions) -> Result<Self, String> {
        let mut tls = ClientTls::new();
        if let Some(ca) = &opts.ca_file {
            tls = tls.ca_file(ca.clone());
        }
        let pool = |https: bool| {
            tls.connector(https)
                .map(|c| {
                    Pool::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(30))
                        .pool_max_idle_per_host(1)
                        .build(c)
                })
                .map_err(|e| e.to_string())
        };
        // The trust is checked now: a bad CA file stops the start, not the first fetch.
        tls.config().map_err(|e| e.to_string())?;
        Ok(Self {
            https: pool(true)?,
            plain: if opts.allow_loopback_http {
                Some(pool(false)?)
            } else {
                None
            },
            allow_loopback_http: opts.allow_loopback_http,
        })
    }

    /// GET `url` → 200 and at most [`MAX_DOCUMENT_BYTES`]; redirects only within its origin.
    async fn get(&self, url: &str) -> Result<(http::HeaderMap, Bytes), String> {
        let first = origin(url).ok_or_else(|| format!("{url} is not an absolute URL"))?;
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            check_url(&current, self.allow_loopback_http)
                .map_err(|why| format!("{current} {why}"))?;
            let pool = if current.starts_with("https://") {
                &self.https
            } else {
                self.plain.as_ref().ok_or("plain http is not allowed")?
            };
            let req = Request::get(&current)
                .header(header::ACCEPT, "application/json")
                .header(
                    header::USER_AGENT,
                    concat!("toolgate/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::new())
                .map_err(|_| format!("{current} is not a valid URL"))?;
            let resp = pool.request(req).await.map_err(|e| {
                let why = toolgate_guard::tls::describe(&e).unwrap_or_else(|| {
                    let mut root: &dyn std::error::Error = &e;
                    while let Some(next) = root.source() {
                        root = next;
                    }
                    root.to_string()
                });
                format!("cannot fetch {current}: {why}")
            })?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| format!("{current} redirected without a location"))?;
                let next = if location.starts_with('/') && !location.starts_with("//") {
                    format!("{}://{}{location}", first.0, first.1)
                } else {
                    location.to_string()
                };
                if origin(&next) != Some(first) {
                    return Err(format!("{current} redirected to another origin; refused"));
                }
                current = next;
                continue;
            }
            if status != StatusCode::OK {
                return Err(format!("{current} answered {status}"));
            }
            if resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
            {
                return Err(format!(
                    "{current} sent more than {} KiB; refused",
                    MAX_DOCUMENT_BYTES / 1024
                ));
            }
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!(
                            "{current} sent more than {} KiB; refused",
                            MAX_DOCUMENT_BYTES / 1024
                        )
                    } else {
                        format!("cannot read {current}: {e}")
                    }
                })?
                .to_bytes();
            return Ok((headers, body));
        }
        Err(format!("{url}: too many redirects"))
    }
}

/// Before a JWT is checked against `issuers`: if it names (by `iss`) one whose keys are
/// fetched, that issuer and the token's `kid`, to [`IssuerKeys::prepare`] them. Tokens of
/// fixed-key issuers, and anything that is not a JWT, cost nothing here.
pub fn to_prepare<'a>(
    issuers: impl Iterator<Item = &'a Arc<IssuerKeys>>,
    token: &str,
) -> Option<(Arc<IssuerKeys>, Option<String>)> {
    let mut fetched = issuers.filter(|i| i.is_fetched()).peekable();
    fetched.peek()?;
    let unverified = crate::jose::decode(token).ok()?;
    let Some(Value::String(iss)) = unverified.claims.get("iss") else {
        return None;
    };
    let keys = fetched.find(|i| i.issuer() == iss)?;
    Some((keys.clone(), unverified.header.kid))
}

/// Every issuer whose keys are fetched, refreshed in the background (every `period`, on
/// `clock`), until the returned task is aborted or the issuers are gone.
pub fn spawn_refresher(
    issuers: Vec<std::sync::Weak<IssuerKeys>>,
    clock: Arc<dyn crate::clock::Clock>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let live: Vec<Arc<IssuerKeys>> = issuers
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect();
            if live.is_empty() {
                return;
            }
            // Each issuer in a task of its own: a provider that hangs delays only itself.
            let now = clock.now();
            for issuer in live {
                drop(tokio::spawn(
                    async move { issuer.refresh_if_due(now).await },
                ));
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://idp.example.com/jwks", false).is_ok());
        assert!(check_url("http://idp.example.com/jwks", true).is_err());
        assert!(check_url("http://127.0.0.1:8080/jwks", false).is_err());
        assert!(check_url("http://127.0.0.1:8080/jwks", true).is_ok());
        assert!(check_url("http://[::1]:8080/jwks", true).is_ok());
        assert!(check_url("http://localhost/jwks", true).is_ok());
        assert!(check_url("https://user@idp.example.com/jwks", false).is_err());
        assert!(check_url("https:///jwks", false).is_err());
        assert!(check_url("ftp://idp.example.com/jwks", false).is_err());
        assert!(check_url("idp.example.com/jwks", false).is_err());
    }

    #[test]
    fn well_known_paths() {
        assert_eq!(
            rfc8414_url("https://as.example.com/tenant/1").unwrap(),
            "https://as.example.com/.well-known/oauth-authorization-server/tenant/1"
        );
        assert_eq!(
            rfc8414_url("https://as.example.com").unwrap(),
            "https://as.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn cache_control() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(header::CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(max_age(&h("public, max-age=3600")), Some(3600));
        assert_eq!(max_age(&h("no-store")), Some(0));
        assert_eq!(max_age(&h("public")), None);
        assert_eq!(max_age(&http::HeaderMap::new()), None);
    }
}
