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
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Ask for a graceful shutdown and wait until the database is closed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.map_err(|_| ServeError::Join)?
    }

    /// Wait for the server to end by itself (a shutdown signal).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task.await.map_err(|_| ServeError::Join)?
    }
}

/// Bind `config.listen`, open the store, and serve until `shutdown` resolves or `stop` is called.
pub async fn start(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, ServeError> {
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
    let counter = tokio::spawn(flush_refusals(Arc::downgrade(&app)));
    // Held until the last counted refusals are written at shutdown.
    let last_flush = app.clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let signal = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = stop_rx => {}
            }
        };
        let (audit, events) = (app.audit.clone(), app.events.clone());
        let finished = serve(listener, app, &config, signal, &events).await;
        pruner.abort();
        let _ = pruner.await;
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
        stop: Some(stop_tx),
        task,
    })
}

/// Serve until `shutdown`; whether every connection finished within the grace period.
async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    config: &Config,
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
    accept_loop(listener, &limits, shutdown, handler, || events.close()).await
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

/// Accept HTTP/1.1 connections until `shutdown`, each served by `handler`: at most
/// `max_connections` at once (the rest wait in the kernel's backlog) and `max_per_peer` from
/// one address (more are closed at once), heads capped and timed, writes watched for progress.
/// Then `on_shutdown`, and a graceful wait; whether every connection finished in time.
pub async fn accept_loop<H, F, B>(
    listener: TcpListener,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
    handler: H,
    on_shutdown: impl FnOnce(),
) -> bool
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<http::Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
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
        let io = TokioIo::new(WriteWatchdog::new(stream, limits.write_timeout));
        let handler = handler.clone();
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(crate::http::Peer(peer.ip()));
            handler(req)
        });
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            let _ = conn.await;
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
