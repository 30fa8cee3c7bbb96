//! Findings of the review of issue #13 (TLS, certificate-bound tokens): each test failed
//! before its fix.

use super::harness::{Daemon, ADMIN};
use super::pki::{client_config, Ca, Https};
use http::Method;
use toolgate::credentials::Credential;
use toolgate::tls::{ClientAuth, TlsFiles};

const HEALTH: &str = "/v1/sys/health";

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

/// Finding: a resumed TLS session brought back the client certificate of the session's first
/// handshake without checking it again. The session cache and ticket key outlive a reload, so
/// a client CA removed from `--client-ca` (and `SIGHUP`) kept authenticating every client that
/// held a ticket, and each resumption handed out fresh tickets: for as long as the client
/// kept coming back.
#[tokio::test]
async fn a_resumed_session_does_not_keep_a_client_ca_removed_by_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let (old, new) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let server = ca.server(dir.path(), "server", false);
    let agent = old.client(dir.path(), "agent", Some("spiffe://dev.local/ns/demo/sa/a"));
    // The one client CA file the listener reads, first with the old CA in it.
    let client_cas = dir.path().join("client-cas.pem");
    std::fs::copy(&old.pem, &client_cas).unwrap();
    let d = tls_daemon(TlsFiles {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_cas: vec![client_cas.clone()],
        client_auth: ClientAuth::Required,
    })
    .await;
    let a = addr(&d);
    let config = client_config(&ca.pem, Some(&agent));
    let mut first = Https::connect(&a, config.clone()).await.unwrap();
    assert_eq!(first.kind, Some(rustls::HandshakeKind::Full));
    // TLS 1.3 tickets arrive after the handshake: read a response first.
    assert_eq!(
        first.send(Method::GET, HEALTH, &[], None).await.unwrap().0,
        200
    );

    // The old CA is no longer trusted.
    std::fs::copy(&new.pem, &client_cas).unwrap();
    d.reload_tls().unwrap();
    // A full handshake with its certificate is refused ...
    let fresh = client_config(&ca.pem, Some(&agent));
    let refused = match Https::connect(&a, fresh).await {
        Err(_) => true,
        Ok(mut c) => c.send(Method::GET, HEALTH, &[], None).await.is_err(),
    };
    assert!(
        refused,
        "a full handshake with the removed CA's certificate"
    );
    // ... and so is the resumption of a session made with it.
    let mut resumed = Https::connect(&a, config).await.unwrap();
    assert_eq!(resumed.kind, Some(rustls::HandshakeKind::Resumed));
    let answer = resumed.send(Method::GET, HEALTH, &[], None).await;
    assert!(
        answer.is_err(),
        "a resumed session kept the removed CA's certificate: {answer:?}"
    );
    d.stop().await;
}

/// Finding: the same, with time: a client certificate that expired after the first handshake
/// still came with every resumed session (a full handshake refuses it), so a certificate-bound
/// token could be minted for, and used with, an expired certificate.
#[tokio::test]
async fn a_resumed_session_does_not_keep_an_expired_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let clients = Ca::new(dir.path(), "clients");
    let server = ca.server(dir.path(), "server", false);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let short = clients.client_with(dir.path(), "short", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + now + std::time::Duration::from_secs(600);
    });
    let d = tls_daemon(TlsFiles {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_cas: vec![clients.pem.clone()],
        client_auth: ClientAuth::Optional,
    })
    .await;
    let a = addr(&d);
    let config = client_config(&ca.pem, Some(&short));
    let mut first = Https::connect(&a, config.clone()).await.unwrap();
    assert_eq!(
        first.send(Method::GET, HEALTH, &[], None).await.unwrap().0,
        200
    );

    // The daemon's clock, not the wall's, moves past the certificate's end.
    d.clock.advance(1200);
    let mut resumed = Https::connect(&a, config).await.unwrap();
    assert_eq!(resumed.kind, Some(rustls::HandshakeKind::Resumed));
    let answer = resumed.send(Method::GET, HEALTH, &[], None).await;
    assert!(
        answer.is_err(),
        "a resumed session kept an expired client certificate: {answer:?}"
    );
    d.stop().await;
}

/// Finding: on a dual-stack listener (`--listen [::]:8693`) an IPv4 proxy's connection comes
/// from `::ffff:a.b.c.d`, which is not the `--trusted-proxy a.b.c.d` it was compared with: the
/// proxy's header was refused, every request through it answered 400.
#[tokio::test]
async fn a_trusted_ipv4_proxy_is_trusted_on_a_dual_stack_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "clients");
    let agent = ca.client(dir.path(), "agent", None);
    let escaped = std::fs::read_to_string(&agent.cert)
        .unwrap()
        .replace('\n', "%0A")
        .replace(' ', "%20");
    let d = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.listen = "[::]:0".parse().unwrap();
        c.client_cert_header = Some(http::HeaderName::from_static("x-client-cert"));
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let port = d.url.rsplit(':').next().unwrap().to_string();
    let url = format!("http://127.0.0.1:{port}");
    let (status, body) =
        super::harness::get_with_headers(&url, HEALTH, &[("x-client-cert", &escaped)]).await;
    assert_eq!(status, 200, "{body}");
    d.stop().await;
}

/// Finding (fixed): `SIGHUP` re-read the `trusted_client_cas` files for the handshake (they are
/// among its roots) but not for the SPIFFE check at exchange, whose anchors were loaded at
/// start. After a CA rotation in such a file and a reload, the handshake accepted the new CA's
/// SVIDs and exchange refused them until a restart; the old CA's SVIDs, refused by the
/// handshake, still passed the exchange's check in a trusted proxy's header. A reload now
/// re-reads both, and swaps the anchors in only when the listener's files loaded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_spiffe_trust_anchors_with_the_handshake_roots() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let main = Ca::new(p, "main");
    let (old, new) = (Ca::new(p, "old-prod"), Ca::new(p, "new-prod"));
    let server = main.server(p, "server", false);
    let prod = p.join("prod-cas.pem");
    std::fs::copy(&old.pem, &prod).unwrap();
    let anchors = toolgate::config::TrustedClientCa::load(&prod, "prod.example").unwrap();
    let d = Daemon::with(|c| {
        c.dev = true;
        c.tls = Some(TlsFiles {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_cas: Vec::new(),
            client_auth: ClientAuth::Optional,
        });
        c.trusted_client_cas = vec![anchors];
    })
    .await;
    let a = addr(&d);
    let (status, resp) = Https::connect(&a, client_config(&main.pem, None))
        .await
        .unwrap()
        .send(
            Method::POST,
            "/v1/tools",
            &[],
            Some(serde_json::json!({"tool_id": "search", "resource_uri": "https://t.example/s"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{resp}");

    std::fs::copy(&new.pem, &prod).unwrap();
    d.reload_tls().unwrap();
    let agent = new.client(p, "agent", Some("spiffe://prod.example/ns/demo/sa/a"));
    let (status, resp) = Https::connect(&a, client_config(&main.pem, Some(&agent)))
        .await
        .unwrap()
        .send(
            Method::POST,
            "/v1/exchange/token",
            &[],
            Some(serde_json::json!({
                "grant_type": super::harness::GRANT,
                "subject_token_type": "urn:starfly:token-type:mtls",
                "audience": "https://t.example/s",
            })),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{resp}");
    d.stop().await;
}
