//! TLS on the daemon's and the gateway's listeners (issue #13, part 1): certificates made at
//! test time, real handshakes from a rustls client and from curl.

use super::harness::{Daemon, Served, ADMIN};
use super::pki::{client_config, client_config_versions, Ca, Https};
use http::Method;
use std::process::Command;
use toolgate::credentials::Credential;
use toolgate::tls::{ClientAuth, TlsFiles};

const HEALTH: &str = "/v1/sys/health";

fn files(server: &super::pki::Issued, cas: &[&Ca], auth: ClientAuth) -> TlsFiles {
    TlsFiles {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_cas: cas.iter().map(|c| c.pem.clone()).collect(),
        client_auth: auth,
    }
}

async fn tls_daemon(tls: TlsFiles) -> Daemon {
    Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.tls = Some(tls);
    })
    .await
}

fn addr(d: &Daemon) -> String {
    d.url.strip_prefix("https://").unwrap().to_string()
}

/// Connect and ask for the health endpoint: the status, or why the connection failed.
async fn health(addr: &str, config: std::sync::Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let mut conn = Https::connect(addr, config).await?;
    conn.send(Method::GET, HEALTH, &[], None)
        .await
        .map(|(status, _)| status)
}

#[tokio::test]
async fn the_daemon_serves_https_over_tls_1_3_and_1_2_with_http_1_1_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let server = ca.server(dir.path(), "server", false);
    let d = tls_daemon(files(&server, &[], ClientAuth::Optional)).await;
    assert!(d.url.starts_with("https://"));

    let mut conn = Https::connect(&addr(&d), client_config(&ca.pem, None))
        .await
        .unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, body) = conn.send(Method::GET, HEALTH, &[], None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Keep-alive: a second request on the same connection.
    let (status, _) = conn.send(Method::GET, HEALTH, &[], None).await.unwrap();
    assert_eq!(status, 200);

    let tls12 = client_config_versions(&ca.pem, None, &[&rustls::version::TLS12]);
    let conn = Https::connect(&addr(&d), tls12).await.unwrap();
    assert_eq!(conn.version, Some(rustls::ProtocolVersion::TLSv1_2));

    // The issuer follows the scheme.
    let (status, meta) = Https::connect(&addr(&d), client_config(&ca.pem, None))
        .await
        .unwrap()
        .send(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(meta["issuer"], format!("https://{}", addr(&d)));

    // Plain HTTP on the TLS port gets no HTTP answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr(&d)).await.unwrap();
        tcp.write_all(b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
    // A client that trusts another CA refuses the certificate.
    let other = Ca::new(dir.path(), "other");
    let e = health(&addr(&d), client_config(&other.pem, None))
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    d.stop().await;
}

#[tokio::test]
async fn curl_speaks_tls_1_2_and_1_3_to_the_daemon_and_nothing_older() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let server = ca.server(dir.path(), "server", false);
    let d = tls_daemon(files(&server, &[], ClientAuth::Optional)).await;
    let port = d.url.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}{HEALTH}");
    // The daemon runs on this test's thread: curl runs on another.
    let curl = |extra: &[&str]| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca.pem)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .arg(&url);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    for version in [["--tlsv1.3"], ["--tlsv1.2"]] {
        let out = curl(&version).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{version:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = curl(&["--tlsv1.1", "--tls-max", "1.1"]).await;
    assert!(!out.status.success(), "TLS 1.1 must be refused");
    d.stop().await;
}

#[tokio::test]
async fn a_second_connection_resumes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let server = ca.server(dir.path(), "server", false);
    let d = tls_daemon(files(&server, &[], ClientAuth::Optional)).await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = client_config_versions(&ca.pem, None, versions);
        let mut first = Https::connect(&addr(&d), config.clone()).await.unwrap();
        assert_eq!(first.kind, Some(rustls::HandshakeKind::Full));
        // TLS 1.3 tickets arrive after the handshake: read a response first.
        first.send(Method::GET, HEALTH, &[], None).await.unwrap();
        let second = Https::connect(&addr(&d), config).await.unwrap();
        assert_eq!(
            second.kind,
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn client_certificates_are_asked_for_and_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let clients = Ca::new(dir.path(), "clients");
    let rogue = Ca::new(dir.path(), "rogue");
    let server = ca.server(dir.path(), "server", false);
    let agent = clients.client(dir.path(), "agent", Some("spiffe://dev.local/ns/demo/sa/a"));
    let forged = rogue.client(
        dir.path(),
        "forged",
        Some("spiffe://dev.local/ns/demo/sa/a"),
    );

    let required = tls_daemon(files(&server, &[&clients], ClientAuth::Required)).await;
    let a = addr(&required);
    assert_eq!(
        health(&a, client_config(&ca.pem, Some(&agent))).await,
        Ok(200)
    );
    assert!(health(&a, client_config(&ca.pem, None)).await.is_err());
    assert!(health(&a, client_config(&ca.pem, Some(&forged)))
        .await
        .is_err());
    required.stop().await;

    let optional = tls_daemon(files(&server, &[&clients], ClientAuth::Optional)).await;
    let a = addr(&optional);
    assert_eq!(
        health(&a, client_config(&ca.pem, Some(&agent))).await,
        Ok(200)
    );
    assert_eq!(health(&a, client_config(&ca.pem, None)).await, Ok(200));
    // A certificate that does not chain to a configured CA is refused even when optional.
    assert!(health(&a, client_config(&ca.pem, Some(&forged)))
        .await
        .is_err());
    optional.stop().await;
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let server = old_ca.server(dir.path(), "server", false);
    let d = tls_daemon(files(&server, &[], ClientAuth::Optional)).await;
    let a = addr(&d);
    let mut open = Https::connect(&a, client_config(&old_ca.pem, None))
        .await
        .unwrap();
    open.send(Method::GET, HEALTH, &[], None).await.unwrap();

    // New files in the same places, then the reload SIGHUP triggers.
    let renewed = new_ca.server(dir.path(), "renewed", false);
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    std::fs::copy(&renewed.key, &server.key).unwrap();
    d.reload_tls().unwrap();
    assert_eq!(health(&a, client_config(&new_ca.pem, None)).await, Ok(200));
    assert!(health(&a, client_config(&old_ca.pem, None)).await.is_err());
    // The connection opened before the reload goes on.
    let (status, _) = open.send(Method::GET, HEALTH, &[], None).await.unwrap();
    assert_eq!(status, 200);

    // A bad new file keeps the previous certificate, and says why.
    std::fs::write(&server.cert, "not a certificate").unwrap();
    let why = d.reload_tls().unwrap_err();
    assert!(why.contains("--tls-cert"), "{why}");
    assert_eq!(health(&a, client_config(&new_ca.pem, None)).await, Ok(200));
    // A key that does not fit the certificate is refused too.
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    std::fs::copy(old_ca_key_of(&dir, &old_ca), &server.key).unwrap();
    let why = d.reload_tls().unwrap_err();
    assert!(why.contains("does not fit"), "{why}");
    assert_eq!(health(&a, client_config(&new_ca.pem, None)).await, Ok(200));
    d.stop().await;
}

/// A key of another certificate (a server certificate the old CA issues).
fn old_ca_key_of(dir: &tempfile::TempDir, ca: &Ca) -> std::path::PathBuf {
    ca.server(dir.path(), "unrelated", false).key
}

#[tokio::test]
async fn sighup_reloads_the_certificates_of_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let server = old_ca.server(dir.path(), "server", false);
    let db = dir.path().join("t.db");
    let served = Served::start(
        &[
            "--dev".as_ref(),
            "--db".as_ref(),
            db.as_os_str(),
            "--tls-cert".as_ref(),
            server.cert.as_os_str(),
            "--tls-key".as_ref(),
            server.key.as_os_str(),
        ],
        None,
    );
    assert_eq!(
        health(&served.addr, client_config(&old_ca.pem, None)).await,
        Ok(200)
    );
    let renewed = new_ca.server(dir.path(), "renewed", false);
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    std::fs::copy(&renewed.key, &server.key).unwrap();
    let kill = Command::new("kill")
        .args(["-HUP", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    super::harness::eventually("the new certificate is served", || async {
        (health(&served.addr, client_config(&new_ca.pem, None)).await == Ok(200)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_tls_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let server = ca.server(dir.path(), "server", false);
    // A key others may read is refused like every other secret file.
    let loose = dir.path().join("loose.key");
    std::fs::copy(&server.key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("t.db"))
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&loose)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-key") && err.contains("chmod 600"),
        "{err}"
    );
    // Half a pair is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--dev", "--tls-cert"])
        .arg(&server.cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("go together"));
}

#[tokio::test]
async fn production_refuses_plain_http_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin");
    super::pki::write_private(&admin, ADMIN.as_bytes());
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["serve", "--listen", "0.0.0.0:0", "--admin-token-file"])
            .arg(&admin)
            .arg("--db")
            .arg(dir.path().join("t.db"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing plain HTTP") && err.contains("--insecure-plaintext"),
        "{err}"
    );
    // The gateway too.
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args([
            "gateway",
            "--listen",
            "0.0.0.0:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--server-id",
            "s",
            "--resource",
            "https://mcp.example.com/s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing plain HTTP"));
}

#[test]
fn insecure_plaintext_is_an_explicit_choice() {
    let flags = |insecure: bool| toolgate::config::TlsFlags {
        insecure_plaintext: insecure,
        ..Default::default()
    };
    let any: std::net::SocketAddr = "0.0.0.0:8693".parse().unwrap();
    let lo: std::net::SocketAddr = "127.0.0.1:8693".parse().unwrap();
    assert!(flags(false).validate(any, true).is_err());
    assert!(flags(true).validate(any, true).is_ok());
    assert!(flags(false).validate(lo, true).is_ok());
    // Dev mode is loopback-only anyway; the check is production's.
    assert!(flags(false).validate(any, false).is_ok());
}

#[tokio::test]
async fn the_client_certificate_header_is_read_only_from_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "clients");
    let agent = ca.client(dir.path(), "agent", Some("spiffe://dev.local/ns/demo/sa/a"));
    let pem = std::fs::read_to_string(&agent.cert).unwrap();
    let escaped = pem
        .replace('\n', "%0A")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let header = |d: &Daemon, value: &str| {
        let (url, value) = (d.url.clone(), value.to_string());
        async move { super::harness::get_with_headers(&url, HEALTH, &[("x-client-cert", &value)]).await }
    };

    // Trusted: only 10.9.9.9. A request from here with the header is refused, unread.
    let untrusted = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.client_cert_header = Some(http::HeaderName::from_static("x-client-cert"));
        c.trusted_proxies = vec!["10.9.9.9".parse().unwrap()];
    })
    .await;
    let (status, body) = header(&untrusted, &escaped).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("only from a trusted proxy"));
    let (status, _) = untrusted.call(Method::GET, HEALTH, None).await;
    assert_eq!(status, 200);
    untrusted.stop().await;

    // Trusted: this host. A well-formed header passes; a broken or repeated one is refused.
    let trusted = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.client_cert_header = Some(http::HeaderName::from_static("x-client-cert"));
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    assert_eq!(header(&trusted, &escaped).await.0, 200);
    let (status, body) = header(&trusted, "%ZZ").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("x-client-cert"));
    let (status, _) = super::harness::get_with_headers(
        &trusted.url,
        HEALTH,
        &[("x-client-cert", &escaped), ("x-client-cert", &escaped)],
    )
    .await;
    assert_eq!(status, 400);
    trusted.stop().await;
}

#[tokio::test]
async fn the_gateway_listens_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let server = ca.server(dir.path(), "gateway", false);
    let daemon = Daemon::dev().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let cfg = toolgate::gateway::GatewayConfig {
        listen,
        upstream: "http://127.0.0.1:9".into(),
        upstream_tls: Default::default(),
        guard: toolgate::guard::GuardConfig {
            toolgate: daemon.url.clone(),
            toolgate_tls: Default::default(),
            admin_token: None,
            resource: "https://mcp.example.com/s".into(),
            server_id: Some("s".into()),
            public_url: format!("https://localhost:{}", listen.port()),
            max_staleness: std::time::Duration::from_secs(3600),
            poll_interval: std::time::Duration::from_millis(100),
            key_refresh: toolgate::guard::DEFAULT_KEY_REFRESH,
            leeway: 60,
            max_batch: 64,
            dpop_window: 60,
            dpop_nonce: false,
            allow_multi_audience: false,
        },
        mcp_path: "/mcp".into(),
        routes: Vec::new(),
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: toolgate::config::ListenerTls {
            tls: Some(files(&server, &[], ClientAuth::Optional)),
            ..Default::default()
        },
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(toolgate::gateway::run_on(listener, cfg, async move {
        let _ = stopped.await;
    }));
    let a = listen.to_string();
    let (status, meta) = super::harness::eventually("the gateway answers over TLS", || async {
        let mut conn = Https::connect(&a, client_config(&ca.pem, None))
            .await
            .ok()?;
        conn.send(
            Method::GET,
            "/.well-known/oauth-protected-resource",
            &[],
            None,
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["resource"], "https://mcp.example.com/s");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    daemon.stop().await;
}

/// Issue 13, done means, against the daemon's own TLS listener: a guard facing toolgate with
/// an expired server certificate refuses to start, naming the cause; after a reload to a good
/// certificate, it syncs over https and decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_refuses_a_toolgate_whose_certificate_has_expired() {
    use toolgate::verify::{DecisionRequest, Target};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let expired = ca.server(dir.path(), "server", true);
    let d = Daemon::with(|c| {
        c.dev = true;
        c.tls = Some(files(&expired, &[], ClientAuth::Optional));
    })
    .await;
    let guard = |url: String| {
        let (clock, ca) = (d.clock.clone(), ca.pem.clone());
        async move {
            let clock: std::sync::Arc<dyn toolgate::clock::Clock> = clock;
            toolgate::guard::Guard::builder(url, "https://mcp.example.com/tools/search")
                .toolgate_ca(ca)
                .public_url("https://mcp.example.com")
                .clock(clock)
                .connect()
                .await
        }
    };
    let url = format!("https://localhost:{}", d.url.rsplit(':').next().unwrap());
    let err = guard(url.clone()).await.unwrap_err().to_string();
    assert!(err.contains("the server certificate has expired"), "{err}");

    let good = ca.server(dir.path(), "good", false);
    std::fs::copy(&good.cert, &expired.cert).unwrap();
    std::fs::copy(&good.key, &expired.key).unwrap();
    d.reload_tls().unwrap();
    let (status, _) = Https::connect(&addr(&d), client_config(&ca.pem, None))
        .await
        .unwrap()
        .send(
            Method::POST,
            "/v1/tools",
            &[],
            Some(serde_json::json!({"tool_id": "search", "resource_uri": "https://mcp.example.com/tools/search"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let g = guard(url).await.unwrap();
    let token = {
        let mut c = Https::connect(&addr(&d), client_config(&ca.pem, None))
            .await
            .unwrap();
        let body = super::harness::exchange_body(
            &super::harness::stub(serde_json::json!({"sub": "alice", "namespace": "n"})),
            "https://mcp.example.com/tools/search",
        );
        let (status, resp) = c
            .send(Method::POST, "/v1/exchange/token", &[], Some(body))
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
        resp["access_token"].as_str().unwrap().to_string()
    };
    let verdict = g.check(&DecisionRequest::new(&token, Target::Tool("search")));
    assert!(verdict.is_ok(), "{:?}", verdict.err());
    d.stop().await;
}
