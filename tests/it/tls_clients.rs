//! Issue 13, the clients' side of TLS: the guard, the gateway (to toolgate and to an https://
//! upstream) and the CLI over `https://`, and `toolgate dev-certs`. Until the daemon's own
//! listener speaks TLS, a terminator written here (tokio-rustls, certificates made at test time
//! with rcgen) fronts the real daemon and forwards the bytes to it.

use super::harness::*;

use http::Method;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use toolgate::clock::Clock;
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig};
use toolgate::verify::{DecisionRequest, Target};
use toolgate_guard::tls::ClientTls;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const SEARCH: &str = "https://mcp.example.com/tools/search";

/// A certificate authority made for one test.
pub(super) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate chain and its key, as rustls serves them.
pub(super) struct Leaf {
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Ca {
    pub(super) fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Each its own name: a CA of the same name would be found as the issuer, and the
        // refusal would be a bad signature rather than an unknown issuer.
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("test CA {n}"));
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub(super) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names`, valid over `validity` (rcgen's default: 1975-4096).
    fn issue(&self, names: &[&str], validity: Option<(i32, i32)>) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A certificate for `localhost` and `127.0.0.1`, valid now.
    pub(super) fn localhost(&self) -> Leaf {
        self.issue(&["localhost", "127.0.0.1"], None)
    }
}

pub(super) fn server_config(leaf: &Leaf) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

struct Serving {
    acceptor: TlsAcceptor,
    conns: JoinSet<()>,
}

/// TLS on 127.0.0.1:0 in front of a plain HTTP server: every connection's bytes are forwarded.
struct Terminator {
    addr: SocketAddr,
    state: Arc<Mutex<Serving>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Terminator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Terminator {
    async fn start(to: SocketAddr, leaf: &Leaf) -> Terminator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Serving {
            acceptor: server_config(leaf),
            conns: JoinSet::new(),
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // One lock for the acceptor and the set: a swap cannot miss a connection.
                let mut s = shared.lock().unwrap();
                let acceptor = s.acceptor.clone();
                s.conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
                while s.conns.try_join_next().is_some() {}
            }
        });
        Terminator {
            addr,
            state,
            accept,
        }
    }

    /// `https://localhost:<port>`: the name the certificates are checked against.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Serve another certificate from now on, and drop every open connection (so that no
    /// client keeps using a session made with the old one).
    fn serve(&self, leaf: &Leaf) {
        let mut s = self.state.lock().unwrap();
        s.acceptor = server_config(leaf);
        s.conns.abort_all();
    }
}

fn daemon_addr(d: &Daemon) -> SocketAddr {
    d.url.strip_prefix("http://").unwrap().parse().unwrap()
}

async fn dev_daemon() -> Daemon {
    let d = Daemon::dev().await;
    d.register("search", SEARCH).await;
    d
}

/// A guard for `search` on the daemon's clock, syncing from `url` with `tls`.
async fn guard(d: &Daemon, url: &str, tls: ClientTls) -> Result<Arc<Guard>, String> {
    let clock: Arc<dyn Clock> = d.clock.clone();
    Guard::builder(url, SEARCH)
        .toolgate_tls(tls)
        .public_url("https://mcp.example.com")
        .max_staleness(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .clock(clock)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Wait for a whole refresher round that began after this call.
async fn synced(guard: &Guard) {
    let mut rounds = guard.rounds();
    let target = *rounds.borrow_and_update() + 2;
    tokio::time::timeout(Duration::from_secs(30), rounds.wait_for(|r| *r >= target))
        .await
        .expect("the guard's refresher stalled")
        .unwrap();
}

/// The guard's answer: `allow`, or the status and error of the refusal.
fn guard_check(guard: &Guard, token: &str) -> String {
    match guard.check(&DecisionRequest::new(token, Target::Tool("search"))) {
        Ok(_) => "allow".into(),
        Err(r) => format!("{} {}", r.status.as_u16(), r.error),
    }
}

fn trusting(ca: &Ca) -> ClientTls {
    ClientTls::new().ca_pem(ca.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_syncs_over_https_with_the_right_ca() {
    let d = dev_daemon().await;
    let ca = Ca::new();
    let tls = Terminator::start(daemon_addr(&d), &ca.localhost()).await;
    let alice = d.token_for("alice", SEARCH).await;

    let g = guard(&d, &tls.url(), trusting(&ca)).await.unwrap();
    assert_eq!(guard_check(&g, &alice), "allow");
    // Revocations arrive over the same TLS connection.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "subject", "value": "wimse://dev.local/ns/default/sa/alice"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    synced(&g).await;
    assert_eq!(guard_check(&g, &alice), "401 invalid_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_a_server_it_cannot_trust_and_says_why() {
    let d = dev_daemon().await;
    let ca = Ca::new();
    let tls = Terminator::start(daemon_addr(&d), &ca.localhost()).await;

    // Another CA: no guard, so nothing it could allow.
    let err = guard(&d, &tls.url(), trusting(&Ca::new()))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "cannot reach toolgate: TLS: the server certificate is not signed by a CA this client trusts"
    );

    // The right CA, the wrong name.
    tls.serve(&ca.issue(&["toolgate.example.com"], None));
    let err = guard(&d, &tls.url(), trusting(&ca)).await.unwrap_err();
    assert_eq!(
        err,
        "cannot reach toolgate: TLS: the server certificate is not valid for the name localhost"
    );

    // A CA file that is not there is named.
    let err = guard(
        &d,
        &tls.url(),
        ClientTls::new().ca_file("/nonexistent/ca.pem"),
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("TLS: cannot read the CA file /nonexistent/ca.pem"),
        "{err}"
    );

    // Plain http:// is untouched by TLS, but a CA given with it is a mistake, not plain text.
    assert!(guard(&d, &d.url, ClientTls::new()).await.is_ok());
    let err = guard(&d, &d.url, trusting(&ca)).await.unwrap_err();
    assert_eq!(
        err,
        format!(
            "TLS: CA certificates or a pin are given, but {} is plain http://: use https://",
            d.url
        )
    );
}

/// Issue 13, done means: an expired server certificate on toolgate → the guard refuses to sync
/// and fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_stops_the_guard_syncing_and_it_fails_closed() {
    let d = dev_daemon().await;
    let ca = Ca::new();
    let expired = ca.issue(&["localhost"], Some((2020, 2021)));
    let tls = Terminator::start(daemon_addr(&d), &expired).await;
    let alice = d.token_for("alice", SEARCH).await;

    // At start: no guard.
    let err = guard(&d, &tls.url(), trusting(&ca)).await.unwrap_err();
    assert_eq!(
        err,
        "cannot reach toolgate: TLS: the server certificate has expired"
    );

    // Running: the certificate is replaced by an expired one. Every sync fails from then on,
    // and once the last good one is older than max_staleness, every call is refused.
    tls.serve(&ca.localhost());
    let g = guard(&d, &tls.url(), trusting(&ca)).await.unwrap();
    assert_eq!(guard_check(&g, &alice), "allow");
    tls.serve(&expired);
    synced(&g).await;
    synced(&g).await;
    d.clock.advance(6);
    assert_eq!(
        guard_check(&g, &alice),
        "503 temporarily_unavailable",
        "a guard that cannot sync must deny"
    );
    // And a good certificate again brings it back.
    tls.serve(&ca.localhost());
    synced(&g).await;
    assert_eq!(guard_check(&g, &alice), "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_checked_beside_the_chain() {
    let d = dev_daemon().await;
    let ca = Ca::new();
    let leaf = ca.localhost();
    let tls = Terminator::start(daemon_addr(&d), &leaf).await;

    let pin = toolgate_guard::tls::pin_of(leaf.der.as_ref()).unwrap();
    // The pin is the SHA-256 of the key's SubjectPublicKeyInfo, as rcgen encodes it alone.
    let spki = KeyPair::try_from(leaf.key_der.as_slice())
        .unwrap()
        .public_key_der();
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    assert_eq!(
        pin,
        format!(
            "sha256//{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
        )
    );
    assert!(guard(&d, &tls.url(), trusting(&ca).pin(&pin)).await.is_ok());
    // The same through the builder's own methods, the CA from a file.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let clock: Arc<dyn Clock> = d.clock.clone();
    let g = Guard::builder(tls.url(), SEARCH)
        .toolgate_ca(&ca_file)
        .toolgate_pin(&pin)
        .clock(clock)
        .connect()
        .await
        .unwrap();
    let alice = d.token_for("alice", SEARCH).await;
    assert_eq!(guard_check(&g, &alice), "allow");
    // Several pins, one of them right (a key rotation in progress).
    let other = toolgate_guard::tls::pin_of(ca.localhost().der.as_ref()).unwrap();
    assert!(
        guard(&d, &tls.url(), trusting(&ca).pin(format!("{other};{pin}")))
            .await
            .is_ok()
    );

    // A certificate of the trusted CA with another key: refused.
    let err = guard(&d, &tls.url(), trusting(&ca).pin(&other))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "cannot reach toolgate: TLS: the server's public key does not match --toolgate-pin"
    );
    // The pin does not replace the chain: the right key from an untrusted CA is still refused.
    let err = guard(&d, &tls.url(), trusting(&Ca::new()).pin(&pin))
        .await
        .unwrap_err();
    assert!(
        err.contains("not signed by a CA this client trusts"),
        "{err}"
    );
    // A malformed pin is an error before any connection.
    let err = guard(&d, &tls.url(), trusting(&ca).pin("sha256//short"))
        .await
        .unwrap_err();
    assert!(err.starts_with("TLS: the pin must be sha256//"), "{err}");
}

/// A plain HTTP upstream answering `{"upstream": "ok", "path": …}` to anything.
async fn upstream() -> SocketAddr {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let body = json!({"upstream": "ok", "path": req.uri().path()});
                    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gateway for `search` under `/api`, talking to toolgate and to the upstream over TLS.
async fn gateway_config(
    toolgate: &str,
    toolgate_tls: ClientTls,
    upstream: &str,
    upstream_tls: ClientTls,
) -> (TcpListener, GatewayConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let cfg = GatewayConfig {
        listen,
        upstream: upstream.to_string(),
        upstream_tls,
        guard: GuardConfig {
            toolgate_tls,
            public_url: format!("http://{listen}"),
            ..GuardConfig::new(toolgate, "https://mcp.example.com/tools")
        },
        mcp_path: "/mcp".into(),
        routes: vec![("/api".into(), "search".into())],
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: Default::default(),
    };
    (listener, cfg)
}

/// That gateway, started: its URL, or why it did not start.
async fn gateway(
    toolgate: &str,
    toolgate_tls: ClientTls,
    upstream: &str,
    upstream_tls: ClientTls,
) -> Result<(String, tokio::sync::oneshot::Sender<()>), String> {
    let (listener, cfg) = gateway_config(toolgate, toolgate_tls, upstream, upstream_tls).await;
    let listen = cfg.listen;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, ready) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // run_on connects the guard first: its error is the gateway's refusal to start.
        let clock: Arc<dyn Clock> = Arc::new(toolgate::clock::SystemClock);
        let guard = match Guard::connect(cfg.guard.clone(), clock).await {
            Ok(g) => g,
            Err(e) => {
                let _ = started.send(Err(e.to_string()));
                return;
            }
        };
        let _ = started.send(Ok(()));
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = toolgate::gateway::serve(listener, guard, cfg, shutdown).await;
    });
    ready.await.unwrap()?;
    Ok((format!("http://{listen}"), stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_talks_tls_to_toolgate_and_to_an_https_upstream() {
    let d = dev_daemon().await;
    let toolgate_ca = Ca::new();
    let front = Terminator::start(daemon_addr(&d), &toolgate_ca.localhost()).await;
    let upstream_ca = Ca::new();
    let up = Terminator::start(upstream().await, &upstream_ca.localhost()).await;
    let alice = d.token_for("alice", SEARCH).await;

    let (gw, _stop) = gateway(
        &front.url(),
        trusting(&toolgate_ca),
        &up.url(),
        trusting(&upstream_ca),
    )
    .await
    .unwrap();
    let call = |gw: String| {
        let alice = alice.clone();
        async move {
            toolgate::client::Client::new(&gw)
                .unwrap()
                .with_admin_token(alice)
                .send(Method::GET, "/api/x", None)
                .await
                .unwrap()
        }
    };
    let (status, body) = call(gw.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"upstream": "ok", "path": "/api/x"}));

    // The upstream's certificate is checked against --upstream-ca, not toolgate's CA.
    let (gw2, _stop2) = gateway(
        &front.url(),
        trusting(&toolgate_ca),
        &up.url(),
        trusting(&toolgate_ca),
    )
    .await
    .unwrap();
    let (status, body) = call(gw2).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_unavailable");

    // An untrusted toolgate: the gateway does not start.
    let err = gateway(
        &front.url(),
        trusting(&upstream_ca),
        &up.url(),
        trusting(&upstream_ca),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        "cannot reach toolgate: TLS: the server certificate is not signed by a CA this client trusts"
    );

    // --upstream-ca with a plain http:// upstream is a mistake: the gateway does not start.
    let plain = format!("http://{}", upstream().await);
    let (listener, cfg) = gateway_config(
        &front.url(),
        trusting(&toolgate_ca),
        &plain,
        trusting(&upstream_ca),
    )
    .await;
    let g = guard(&d, &front.url(), trusting(&toolgate_ca))
        .await
        .unwrap();
    let err = toolgate::gateway::serve(listener, g, cfg, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!("--upstream-ca is given, but --upstream {plain} is plain http://: use https://")
    );
}

/// Run the binary off the async runtime, with no TOOLGATE_* environment.
async fn toolgate_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_remove("TOOLGATE_URL")
            .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
            .env_remove("TOOLGATE_CA")
            .env_remove("TOOLGATE_PIN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_tools_over_https_with_toolgate_ca() {
    let d = dev_daemon().await;
    let ca = Ca::new();
    let tls = Terminator::start(daemon_addr(&d), &ca.localhost()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_arg = ca_file.display().to_string();
    let url = tls.url();

    let out = toolgate_cli(strings(&[
        "tool",
        "list",
        "--json",
        "--url",
        &url,
        "--toolgate-ca",
        &ca_arg,
    ]))
    .await;
    assert!(out.status.success(), "{out:?}");
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["tools"][0]["tool_id"], "search", "{body}");

    // With the system's roots the test CA is unknown: exit 2, the cause on stderr.
    let out = toolgate_cli(strings(&["tool", "list", "--url", &url])).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("toolgate: TLS: "), "{stderr}");

    tls.serve(&ca.issue(&["localhost"], Some((2020, 2021))));
    let out = toolgate_cli(strings(&[
        "tool",
        "list",
        "--url",
        &url,
        "--toolgate-ca",
        &ca_arg,
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "toolgate: TLS: the server certificate has expired\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_certs_writes_a_ca_a_server_and_a_spiffe_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.display().to_string();
    let out = toolgate_cli(strings(&["dev-certs", &certs_arg])).await;
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = toolgate::dev_certs::FILES
        .iter()
        .map(|f| certs.join(f).display().to_string())
        .collect();
    assert_eq!(listed, expected);

    #[cfg(unix)]
    for key in ["ca.key", "server.key", "client.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    let read = |f: &str| std::fs::read(certs.join(f)).unwrap();
    let cert = |f: &str| CertificateDer::from_pem_slice(&read(f)).unwrap();
    let key = |f: &str| PrivateKeyDer::from_pem_slice(&read(f)).unwrap();
    let ca_pem = read("ca.pem");

    // The server certificate and key serve TLS that a client trusting ca.pem accepts for
    // localhost.
    let d = dev_daemon().await;
    let leaf = Leaf {
        der: cert("server.pem"),
        key_der: key("server.key").secret_der().to_vec(),
    };
    let tls = Terminator::start(daemon_addr(&d), &leaf).await;
    let client =
        toolgate::client::Client::with_tls(&tls.url(), &ClientTls::new().ca_pem(ca_pem.clone()))
            .unwrap();
    assert_eq!(client.health().await.unwrap()["dev_mode"], true);

    // The client certificate is an X.509-SVID for client authentication under that CA.
    let client_cert = cert("client.pem");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert("ca.pem")).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&client_cert, &[], rustls::pki_types::UnixTime::now())
        .unwrap();
    let uri = toolgate::dev_certs::CLIENT_SPIFFE_ID.as_bytes();
    let mut san = vec![0x86, u8::try_from(uri.len()).unwrap()]; // [6] IMPLICIT IA5String
    san.extend_from_slice(uri);
    assert!(
        client_cert.windows(san.len()).any(|w| w == san.as_slice()),
        "no URI SAN {}",
        toolgate::dev_certs::CLIENT_SPIFFE_ID
    );
    assert!(KeyPair::try_from(&key("client.key")).is_ok());
    assert!(KeyPair::try_from(&key("ca.key")).is_ok());

    // Again: refused, nothing changed.
    let out = toolgate_cli(strings(&["dev-certs", &certs_arg])).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exist; nothing written"),
        "{stderr}"
    );
    assert_eq!(read("ca.pem"), ca_pem);
    // One file is enough to refuse the whole run.
    for f in toolgate::dev_certs::FILES.iter().skip(1) {
        std::fs::remove_file(certs.join(f)).unwrap();
    }
    let out = toolgate_cli(strings(&["dev-certs", &certs_arg])).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!certs.join("server.pem").exists());

    // --force replaces them.
    let out = toolgate_cli(strings(&["dev-certs", "--force", &certs_arg])).await;
    assert!(out.status.success(), "{out:?}");
    assert_ne!(read("ca.pem"), ca_pem);
    assert!(certs.join("client.key").exists());
}
