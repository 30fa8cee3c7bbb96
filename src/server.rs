//! The accept loop: a cap on concurrent connections and on those of one peer address, a
//! deadline on request heads, a progress timeout on every write, and graceful shutdown that
//! lets in-flight requests finish.

use crate::app::{App, OpenError, Threads};
use crate::clock::Clock;
use crate::config::Config;
use crate::store::StoreError;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

/// Largest request head (request line + headers); beyond it hyper answers 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub enum ServeError {
    Bind(std::io::Error),
    Store(StoreError),
    /// The configuration or the stored state cannot be served safely (the sentence says why).
    Refused(String),
    Join,
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bind(e) => write!(f, "cannot listen: {e}"),
            Self::Store(e) => write!(f, "cannot open the database: {e}"),
            Self::Refused(why) => f.write_str(why),
            Self::Join => f.write_str("a server task failed"),
        }
    }
}
impl std::error::Error for ServeError {}

/// A server started in this process (the binary and the integration tests use it alike).
pub struct Running {
    pub addr: SocketAddr,
    /// The app, for the timers' work on demand (see [`Running::key_upkeep`]).
    app: std::sync::Weak<App>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    reload: Option<Reload>,
}

/// What `SIGHUP` re-reads: the listener's TLS files and, with them, the CAs trusted for SPIFFE
/// credentials (which are roots of the handshake too, so both change at once or neither does).
pub type Reload = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl Running {
    /// Ask for a graceful shutdown and wait until the database is closed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(|_| ServeError::Join)?
    }

    /// Re-read the TLS files now, as `SIGHUP` does; `Err` says why the old ones stay.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.reload {
            Some(reload) => reload(),
            None => Err("the listener has no TLS".into()),
        }
    }

    /// Run the key ring's timer now, as it runs once a minute (retirements, scheduled
    /// rotation): for tests that move a manual clock instead of waiting.
    #[doc(hidden)]
    pub async fn key_upkeep(&self) {
        if let Some(app) = self.app.upgrade() {
            app.key_upkeep().await;
        }
    }

    /// Wait for the server to end by itself (a shutdown signal).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await.map_err(|_| ServeError::Join)?
    }
}

/// Bind `config.listen`, open the store, and serve until `shutdown` resolves or `stop` is called.
/// How often fetched issuer keys are looked at by the background refresher.
const ISSUER_REFRESH_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn start(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, ServeError> {
    // TLS files are read before anything else: a bad one stops the start, and nothing binds.
    // The CAs trusted for SPIFFE credentials are roots of the handshake too.
    let tls = match &config.tls {
        Some(files) => {
            let mut files = files.clone();
            for ca in &config.trusted_client_cas {
                if !files.client_cas.contains(&ca.ca_file) {
                    files.client_cas.push(ca.ca_file.clone());
                }
            }
            Some(crate::tls::TlsServer::load(files, clock.clone()).map_err(ServeError::Refused)?)
        }
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(ServeError::Bind)?;
    let addr = listener.local_addr().map_err(ServeError::Bind)?;
    let cfg = config.clone();
    let (app, threads) = tokio::task::spawn_blocking(move || App::open(&cfg, addr, clock))
        .await
        .map_err(|_| ServeError::Join)?
        .map_err(|e| match e {
            OpenError::Store(e) => ServeError::Store(e),
            OpenError::Refused(why) => ServeError::Refused(why),
        })?;
    let app = Arc::new(app);
    let pruner = tokio::spawn(prune_revocations(Arc::downgrade(&app)));
    // Fetched issuer keys: the first fetch now, then refreshed before they expire.
    let fetched: Vec<_> = app
        .issuer_keys()
        .map(|(_, keys)| keys)
        .filter(|k| k.is_fetched())
        .map(Arc::downgrade)
        .collect();
    let key_refresher = (!fetched.is_empty()).then(|| {
        crate::issuers::spawn_refresher(fetched, app.clock.clone(), ISSUER_REFRESH_PERIOD)
    });
    let key_timer = tokio::spawn(key_upkeep(Arc::downgrade(&app)));
    let weak_app = Arc::downgrade(&app);
    let reload = tls.clone().map(|tls| {
        let app = Arc::downgrade(&app);
        Arc::new(move || reload_daemon(&tls, &app)) as Reload
    });
    let reloader = reload.clone().map(|r| tokio::spawn(reload_on_hangup(r)));
    let counter = tokio::spawn(flush_refusals(Arc::downgrade(&app)));
    // Held until the last counted refusals are written at shutdown.
    let last_flush = app.clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let listener_tls = tls.clone();
    let task = tokio::spawn(async move {
        let signal = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
        };
        let (audit, events) = (app.audit.clone(), app.events.clone());
        let transport = Transport {
            tls: listener_tls,
            client_cert_header: config.client_cert_header.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
        };
        let finished = serve(listener, app, &config, &transport, signal, &events).await;
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        pruner.abort();
        let _ = pruner.await;
        if let Some(refresher) = key_refresher {
            refresher.abort();
        }
        key_timer.abort();
        let _ = key_timer.await;
        counter.abort();
        let _ = counter.await;
        // Counted refusals not written yet are written before the writer drains.
        last_flush.flush_refusals(true);
        drop(last_flush);
        // No new records: the audit writer drains its queue and ends, even if a straggling
        // connection still holds the app.
        audit.close();
        let Threads {
            db,
            audit: audit_thread,
        } = threads;
        tokio::task::spawn_blocking(move || {
            if let Some(t) = audit_thread {
                t.join().map_err(|_| ServeError::Join)?;
            }
            // Stragglers still hold the database handle; committed writes are already durable.
            if finished {
                db.join().map_err(|_| ServeError::Join)?;
            }
            Ok(())
        })
        .await
        .map_err(|_| ServeError::Join)?
    });
    Ok(Running {
        addr,
        app: weak_app,
        stop: Some(stop_tx),
        task,
        reload,
    })
}

/// The daemon's reload: the SPIFFE trust anchors are read first (nothing changes if one does
/// not load), then the listener's files; the anchors are swapped in only once those loaded.
fn reload_daemon(tls: &crate::tls::TlsServer, app: &std::sync::Weak<App>) -> Result<(), String> {
    let Some(app) = app.upgrade() else {
        return Err("the daemon is stopping".into());
    };
    let anchors = app
        .trusted_client_cas()
        .iter()
        .map(|ca| crate::config::TrustedClientCa::load(&ca.ca_file, &ca.trust_domain))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.0)?;
    tls.reload()?;
    app.set_trusted_client_cas(anchors);
    Ok(())
}

/// Reload on every `SIGHUP`, for as long as the listener lives. A file that does not load
/// leaves the old set-up in place, and the log says why.
pub async fn reload_on_hangup(reload: Reload) {
    #[cfg(unix)]
    {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let Ok(mut hangup) = hangup else {
            crate::log_warn!("TLS: cannot watch for SIGHUP; certificates reload only on restart");
            return;
        };
        while hangup.recv().await.is_some() {
            match reload() {
                Ok(()) => crate::log_info!("TLS: certificates reloaded"),
                Err(why) => {
                    crate::log_warn!("TLS: reload failed, the previous certificates stay: {why}")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}

/// Serve until `shutdown`; whether every connection finished within the grace period.
async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    config: &Config,
    transport: &Transport,
    shutdown: impl Future<Output = ()>,
    events: &crate::events::Hub,
) -> bool {
    let limits = Limits {
        max_connections: config.max_connections,
        max_per_peer: config.max_connections_per_peer,
        header_read_timeout: config.header_read_timeout,
        write_timeout: config.write_timeout,
        grace: config.shutdown_grace,
    };
    let handler = move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(crate::http::handle(app, req).await) }
    };
    // Event streams never end by themselves: end them so their connections can finish.
    accept_loop(listener, &limits, transport, shutdown, handler, || {
        events.close()
    })
    .await
}

/// Connection limits shared by the daemon and the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one peer address may hold at once; more are closed as they arrive.
    pub max_per_peer: usize,
    /// A request head (and an idle keep-alive connection's next one) must arrive within this.
    pub header_read_timeout: Duration,
    /// A write that makes no progress for this long ends its connection. Long-lived streams
    /// (`/v1/events`, MCP streams through the gateway) have no total deadline, but this one.
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub grace: Duration,
}

/// How many connections each peer address holds.
#[derive(Default)]
struct PerPeer(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection counted against its peer; uncounted when dropped.
struct PeerSlot {
    peers: Arc<PerPeer>,
    ip: std::net::IpAddr,
}

impl PerPeer {
    /// Count a new connection from `ip`, unless it already holds `max`.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.peers.0.lock() {
            if let Some(n) = map.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}

/// A stream whose writes must make progress: a write (or flush) that stays pending for the
/// timeout fails with `TimedOut`, and hyper drops the connection. Reads are untouched (heads
/// have their own deadline, bodies theirs).
struct WriteWatchdog<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteWatchdog<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After the inner write returned `polled`: progress resets the watch, a stall starts it
    /// (or fails once it has run out).
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteWatchdog<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteWatchdog<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// How a listener's connections are secured, and where a request's client certificate comes
/// from: the TLS handshake, or (from a trusted proxy only) a header.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// TLS on every connection; `None` is plain HTTP.
    pub tls: Option<Arc<crate::tls::TlsServer>>,
    /// `--client-cert-header`: where a TLS-terminating proxy puts the client's certificate
    /// (URL-encoded PEM). Read only on connections from `trusted_proxies`; anyone else sending
    /// it is refused.
    pub client_cert_header: Option<http::HeaderName>,
    /// `--trusted-proxy` addresses.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Transport {
    /// The request's client certificate: from the header on a trusted proxy's connection (the
    /// proxy's own certificate is not the client's), else the handshake's; `Err` refuses the
    /// request.
    fn client_certificate<B>(
        &self,
        req: &http::Request<B>,
        peer: std::net::IpAddr,
        handshake: Option<&toolgate_core::mtls::ClientCertificate>,
    ) -> Result<Option<toolgate_core::mtls::ClientCertificate>, String> {
        let Some(name) = &self.client_cert_header else {
            return Ok(handshake.cloned());
        };
        let mut values = req.headers().get_all(name).iter();
        let (first, second) = (values.next(), values.next());
        // On a dual-stack listener an IPv4 peer is `::ffff:a.b.c.d`: compare canonical forms.
        let trusted = self
            .trusted_proxies
            .iter()
            .any(|p| p.to_canonical() == peer.to_canonical());
        if !trusted {
            return match first {
                Some(_) => Err(format!(
                    "the {name} header is accepted only from a trusted proxy"
                )),
                None => Ok(handshake.cloned()),
            };
        }
        match (first, second) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(format!("the {name} header is repeated")),
            (Some(value), None) => crate::tls::certificate_from_header(value.as_bytes())
                .map(Some)
                .map_err(|why| format!("the {name} header {why}")),
        }
    }
}

/// A 400 for a request the transport refuses, in the REST error form.
fn transport_refusal<B>(
    why: &str,
) -> http::Response<http_body_util::Either<B, http_body_util::Full<hyper::body::Bytes>>> {
    let body = serde_json::json!({"error": "invalid_request", "error_description": why});
    let mut resp = http::Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        hyper::body::Bytes::from(body.to_string()),
    )));
    *resp.status_mut() = http::StatusCode::BAD_REQUEST;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Accept HTTP/1.1 connections until `shutdown`, each served by `handler`: at most
/// `max_connections` at once (the rest wait in the kernel's backlog) and `max_per_peer` from
/// one address (more are closed at once), TLS handshakes and heads timed, heads capped, writes
/// watched for progress. Every request carries its peer's address and, when there is one, its
/// client certificate ([`Transport`]) in its extensions. Then `on_shutdown`, and a graceful
/// wait; whether every connection finished in time.
pub async fn accept_loop<H, F, B>(
    listener: TcpListener,
    limits: &Limits,
    transport: &Transport,
    shutdown: impl Future<Output = ()>,
    handler: H,
    on_shutdown: impl FnOnce(),
) -> bool
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let peers = Arc::new(PerPeer::default());
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    let transport = Arc::new(transport.clone());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    crate::log_warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over its share: closed at once (the slot goes back to the pool).
        let Some(peer_slot) = peers.admit(peer.ip(), limits.max_per_peer) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            handler: handler.clone(),
            transport: transport.clone(),
            http: http.clone(),
            watcher: graceful.watcher(),
            peer: peer.ip(),
            limits: *limits,
        };
        tokio::spawn(async move {
            conn.serve(stream).await;
            drop(peer_slot);
            drop(permit);
        });
    }
    drop(listener);
    drop(handler);
    on_shutdown();
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(limits.grace) => {
            crate::log_warn!("shutdown: some connections did not finish in time");
            false
        }
    }
}

/// One accepted connection and what serving it needs.
struct Connection<H> {
    handler: H,
    transport: Arc<Transport>,
    http: http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::IpAddr,
    limits: Limits,
}

impl<H> Connection<H> {
    /// The TLS handshake when the listener has TLS (timed like a request head; a failure
    /// closes the connection), then HTTP until either side ends it.
    async fn serve<F, B>(self, stream: tokio::net::TcpStream)
    where
        H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
        B: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(tls) = &self.transport.tls else {
            return self.http(stream, None).await;
        };
        let Some(acceptor) = tls.acceptor() else {
            return;
        };
        let handshake =
            tokio::time::timeout(self.limits.header_read_timeout, acceptor.accept(stream));
        // A failed or slow handshake just closes the connection: the client's TLS stack names
        // the cause, and a scanner cannot fill the log.
        if let Ok(Ok(stream)) = handshake.await {
            // A resumed session's certificate that no longer verifies closes the connection,
            // as a full handshake with it would have failed.
            if let Ok(cert) = acceptor.client_certificate(stream.get_ref().1) {
                self.http(stream, cert).await;
            }
        }
    }

    async fn http<S, F, B>(self, stream: S, cert: Option<toolgate_core::mtls::ClientCertificate>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
        B: hyper::body::Body<Data = hyper::body::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = TokioIo::new(WriteWatchdog::new(stream, self.limits.write_timeout));
        let (handler, transport, peer) = (self.handler, self.transport, self.peer);
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let verdict = transport.client_certificate(&req, peer, cert.as_ref());
            let handler = handler.clone();
            async move {
                match verdict {
                    Err(why) => Ok(transport_refusal(&why)),
                    Ok(cert) => {
                        req.extensions_mut().insert(crate::http::Peer(peer));
                        if let Some(cert) = cert {
                            req.extensions_mut().insert(cert);
                        }
                        handler(req)
                            .await
                            .map(|resp| resp.map(http_body_util::Either::Left))
                    }
                }
            }
        });
        let _ = self
            .watcher
            .watch(self.http.serve_connection(io, service))
            .await;
    }
}

/// Write the rows of closed refusal windows (see `audit::Refusals`) a few times a second, for
/// as long as the app lives.
async fn flush_refusals(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.flush_refusals(false);
    }
}

/// Forget expired revocations (and old SET ids) once a minute, for as long as the app lives.
async fn prune_revocations(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; start-up already skipped expired entries.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        let now = app.now();
        let horizon = now - crate::http::MAX_SET_AGE - app.leeway;
        match app.revocations.prune(now, horizon).await {
            Ok(0) => {}
            Ok(n) => crate::log_info!("pruned {n} expired revocations"),
            Err(e) => crate::log_warn!("pruning revocations failed: {e}"),
        }
    }
}

/// The key ring's upkeep once a minute, for as long as the app lives: retire keys whose tokens
/// have all expired, rotate on schedule (`key_rotation_days`). Both go by the app's clock.
async fn key_upkeep(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        app.key_upkeep().await;
    }
}

/// Resolves on SIGINT or SIGTERM. SIGTERM is caught from this call on, not from the first poll:
/// a SIGTERM sent as soon as the daemon says it listens is a graceful stop, not a kill.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        {
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
