//! Certificate-bound tokens (RFC 8705 §3) and the client certificate as a credential (SPIFFE
//! X.509-SVIDs), issue #13 parts 2 and 3. Certificates are made here with rcgen. The listener
//! that would put a verified client certificate into a request's extensions is not part of these
//! tests (see `over_tls` at the end): the daemon's verify endpoint is driven with `client_cert`,
//! exchange through its function with a `ClientCertificate`, and the real server for what
//! needs no TLS.

use super::harness::*;
use http::Method;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use serde_json::{json, Map, Value};
use std::sync::{Arc, RwLock};
use toolgate::clock::ManualClock;
use toolgate::config::TrustedClientCa;
use toolgate::exchange::{self, ExchangeError, ExchangeRequest, Exchanger, TYPE_MTLS};
use toolgate::jose::{jws, SigningKey};
use toolgate::mtls::ClientCertificate;
use toolgate::registry::{Registry, ToolInput};
use toolgate::revocation::RevocationIndex;
use toolgate::spiffe::{self, SvidError};
use toolgate::verify::{Check, DecisionRequest, KeySource, Target, Verifier, VerifierConfig};

const BOUND: &str = "https://mcp.example.com/tools/deploy";
const PLAIN: &str = "https://mcp.example.com/tools/search";
const AGENT: &str = "spiffe://prod.example/ns/demo/sa/agent-1";
const AGENT_PROD: &str = AGENT;

/// A throw-away CA.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A client certificate with these URI SANs, for client authentication.
    fn client(&self, uris: &[&str]) -> ClientCertificate {
        self.issue(uris, |_| {})
    }

    fn issue(
        &self,
        uris: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> ClientCertificate {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "workload");
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        tweak(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        ClientCertificate::new(vec![cert.der().to_vec()]).unwrap()
    }

    /// This CA as a `trusted_client_cas` entry for `trust_domain`, loaded from a PEM file.
    fn trusted_for(&self, dir: &std::path::Path, trust_domain: &str) -> TrustedClientCa {
        let file = dir.join(format!("{trust_domain}-{}.pem", rand_suffix()));
        std::fs::write(&file, self.cert.pem()).unwrap();
        TrustedClientCa::load(&file, trust_domain).unwrap()
    }
}

fn rand_suffix() -> String {
    toolgate::ids::random_id().unwrap()
}

fn b64_der(cert: &ClientCertificate) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(cert.leaf())
}

#[test]
fn spiffe_credentials_are_trusted_only_by_their_trust_domains_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Ca::new("CA A"), Ca::new("CA B"));
    let cas = [
        a.trusted_for(dir.path(), "prod.example"),
        b.trusted_for(dir.path(), "staging.example"),
    ];
    let now = toolgate::clock::Clock::now(&toolgate::clock::SystemClock);
    let id = spiffe::workload(&a.client(&[AGENT]), &cas, now).unwrap();
    assert_eq!(
        id.wimse_subject(),
        "wimse://prod.example/ns/demo/sa/agent-1"
    );
    // Other URI SANs beside the one SPIFFE ID are fine.
    let id = spiffe::workload(&a.client(&["https://x.example/", AGENT]), &cas, now).unwrap();
    assert_eq!(id.trust_domain(), "prod.example");

    let refused = |cert: &ClientCertificate| spiffe::workload(cert, &cas, now).unwrap_err();
    // CA B vouches for staging.example only: its certificate claiming prod.example is refused.
    assert_eq!(refused(&b.client(&[AGENT])), SvidError::Untrusted);
    // An untrusted CA, for a configured trust domain.
    assert_eq!(
        refused(&Ca::new("rogue").client(&[AGENT])),
        SvidError::Untrusted
    );
    // A trust domain no CA is configured for.
    assert_eq!(
        refused(&a.client(&["spiffe://other.example/w"])),
        SvidError::UnknownTrustDomain
    );
    assert_eq!(refused(&a.client(&[])), SvidError::NoSpiffeId);
    assert_eq!(
        refused(&a.client(&["https://x.example/"])),
        SvidError::NoSpiffeId
    );
    assert_eq!(
        refused(&a.client(&[AGENT, "spiffe://prod.example/other"])),
        SvidError::SeveralSpiffeIds
    );
    for bad in [
        "spiffe://prod.example",
        "spiffe://Prod.example/w",
        "spiffe://prod.example/a/../b",
    ] {
        assert_eq!(refused(&a.client(&[bad])), SvidError::BadSpiffeId, "{bad}");
    }
    // Expired, and only for server authentication: the chain does not verify.
    let expired = a.issue(&[AGENT], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    assert_eq!(refused(&expired), SvidError::Untrusted);
    let server_only = a.issue(&[AGENT], |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert_eq!(refused(&server_only), SvidError::Untrusted);
    // Garbage is no certificate.
    let junk = ClientCertificate::new(vec![b"not DER".to_vec()]).unwrap();
    assert_eq!(refused(&junk), SvidError::Malformed);
    // The CA file must hold a certificate.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(TrustedClientCa::load(&empty, "prod.example").is_err());
    assert!(TrustedClientCa::load(&dir.path().join("missing.pem"), "prod.example").is_err());
}

struct OneKey(toolgate::jose::Jwk);
impl KeySource for OneKey {
    fn key(&self, kid: &str) -> Option<toolgate::jose::Jwk> {
        (self.0.kid.as_deref() == Some(kid)).then(|| self.0.clone())
    }
}

const ISS: &str = "https://toolgate.test";

/// A verifier with a tool that takes only certificate-bound tokens and one that does not.
fn verifier(key: &SigningKey, now: i64) -> Verifier {
    let tools = [
        json!({"tool_id": "deploy", "resource_uri": BOUND, "sender_constraint": "mtls"}),
        json!({"tool_id": "search", "resource_uri": PLAIN}),
    ]
    .into_iter()
    .map(|t| {
        serde_json::from_value::<ToolInput>(t)
            .unwrap()
            .validate("2027-01-01T00:00:00Z")
            .unwrap()
    })
    .collect();
    Verifier::new(
        VerifierConfig {
            issuer: ISS.into(),
            leeway: 0,
            keys: Arc::new(OneKey(key.public_jwk())),
            clock: Arc::new(ManualClock::new(now)),
        },
        Arc::new(RwLock::new(Registry::from_entries(tools))),
        Arc::new(RevocationIndex::default()),
    )
}

#[test]
fn exchange_binds_tokens_for_mtls_tools_and_takes_spiffe_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let now = toolgate::clock::Clock::now(&toolgate::clock::SystemClock);
    let key = SigningKey::generate().unwrap();
    let verifier = verifier(&key, now);
    let (ca, other_ca) = (Ca::new("prod CA"), Ca::new("other CA"));
    let cas = [ca.trusted_for(dir.path(), "prod.example")];
    let dpop_policy = toolgate::dpop::DpopPolicy::new(60, None, 0);
    let app = Exchanger {
        issuer: ISS,
        dev: true,
        trust_domain: "dev.local",
        token_ttl: 300,
        leeway: 0,
        trusted_issuers: &[],
        trusted_client_cas: &cas,
        verifier: &verifier,
        signing_key: &key,
        dpop: &dpop_policy,
    };
    let mine = ca.client(&[AGENT]);
    let theirs = other_ca.client(&["spiffe://prod.example/ns/demo/sa/thief"]);
    let request =
        |token_type: &str, subject: Option<String>, aud: &str, cert: Option<&ClientCertificate>| {
            ExchangeRequest {
                grant_type: Some(GRANT.into()),
                subject_token: subject,
                subject_token_type: Some(token_type.into()),
                audience: Some(aud.into()),
                client_cert: cert.cloned(),
                ..Default::default()
            }
        };
    let stub_token = Some(stub(json!({"sub": "agent-1"})));

    // A stub subject over mutual TLS, for the tool that requires binding: bound to the cert.
    let issued = exchange::exchange(
        &app,
        &request(JWT, stub_token.clone(), BOUND, Some(&mine)),
        now,
    )
    .unwrap();
    let claims = claims_of(&issued.access_token);
    assert_eq!(claims["cnf"], json!({"x5t#S256": mine.thumbprint()}));
    let decide = |token: &str, tool: &str, cert: Option<&ClientCertificate>| {
        verifier
            .decide_at(
                &DecisionRequest::new(token, Target::Tool(tool)).with_client_cert(cert),
                now,
            )
            .result
            .err()
            .map(|d| d.check)
    };
    assert_eq!(decide(&issued.access_token, "deploy", Some(&mine)), None);
    assert_eq!(
        decide(&issued.access_token, "deploy", Some(&theirs)),
        Some(Check::Mtls)
    );
    assert_eq!(
        decide(&issued.access_token, "deploy", None),
        Some(Check::Mtls)
    );

    // The same without a client certificate: refused, invalid_request.
    assert!(matches!(
        exchange::exchange(&app, &request(JWT, stub_token.clone(), BOUND, None), now),
        Err(ExchangeError::InvalidRequest(_))
    ));
    // Tokens for other tools are not bound, certificate or not.
    let plain = exchange::exchange(
        &app,
        &request(JWT, stub_token.clone(), PLAIN, Some(&mine)),
        now,
    )
    .unwrap();
    assert_eq!(claims_of(&plain.access_token).get("cnf"), None);
    assert_eq!(decide(&plain.access_token, "search", None), None);

    // The certificate as the credential: its SPIFFE ID is the subject, and the token is bound.
    let svid =
        exchange::exchange(&app, &request(TYPE_MTLS, None, BOUND, Some(&mine)), now).unwrap();
    assert_eq!(svid.subject, "wimse://prod.example/ns/demo/sa/agent-1");
    let c = claims_of(&svid.access_token);
    assert_eq!(c["sub"], "wimse://prod.example/ns/demo/sa/agent-1");
    assert_eq!(c["src"]["sub"], AGENT);
    assert_eq!(c["cnf"]["x5t#S256"], mine.thumbprint());
    assert_eq!(decide(&svid.access_token, "deploy", Some(&mine)), None);
    let plain_svid =
        exchange::exchange(&app, &request(TYPE_MTLS, None, PLAIN, Some(&mine)), now).unwrap();
    assert_eq!(claims_of(&plain_svid.access_token).get("cnf"), None);
    // ... and no capability comes with a certificate.
    let mut scoped = request(TYPE_MTLS, None, PLAIN, Some(&mine));
    scoped.scope = Some("deploy".into());
    assert!(matches!(
        exchange::exchange(&app, &scoped, now),
        Err(ExchangeError::AccessDenied(_))
    ));

    // Refusals of the certificate credential.
    let refused = |req: ExchangeRequest| exchange::exchange(&app, &req, now).unwrap_err();
    assert_eq!(
        refused(request(TYPE_MTLS, None, PLAIN, None)),
        ExchangeError::InvalidClient(
            "urn:starfly:token-type:mtls authenticates with the client certificate of a mutual-TLS connection, and none was presented"
        )
    );
    assert!(matches!(
        refused(request(TYPE_MTLS, stub_token.clone(), PLAIN, Some(&mine))),
        ExchangeError::InvalidRequest(_)
    ));
    for (cert, why) in [
        (&theirs, SvidError::Untrusted),
        (
            &other_ca.client(&["spiffe://elsewhere.example/w"]),
            SvidError::UnknownTrustDomain,
        ),
        (
            &ca.client(&["spiffe://elsewhere.example/w"]),
            SvidError::UnknownTrustDomain,
        ),
        (&ca.client(&[]), SvidError::NoSpiffeId),
        (
            &ca.client(&[AGENT, "spiffe://prod.example/b"]),
            SvidError::SeveralSpiffeIds,
        ),
        (
            &ca.client(&["spiffe://prod.example/a//b"]),
            SvidError::BadSpiffeId,
        ),
    ] {
        assert_eq!(
            refused(request(TYPE_MTLS, None, PLAIN, Some(cert))),
            ExchangeError::InvalidGrant(why.description())
        );
    }
}

/// Finding (review of #13): a token minted from a SPIFFE X.509-SVID outlived the certificate.
/// Every other credential caps the token's `exp` (a subject token's own `exp`); the
/// certificate's notAfter did not, so an SVID a minute from expiry (SVIDs live an hour or less)
/// became an unbound bearer token for a plain tool good for the full token lifetime.
#[test]
fn a_token_from_an_svid_expires_with_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let now = toolgate::clock::Clock::now(&toolgate::clock::SystemClock);
    let key = SigningKey::generate().unwrap();
    let verifier = verifier(&key, now);
    let ca = Ca::new("prod CA");
    let cas = [ca.trusted_for(dir.path(), "prod.example")];
    let dpop_policy = toolgate::dpop::DpopPolicy::new(60, None, 0);
    let app = Exchanger {
        issuer: ISS,
        dev: false,
        trust_domain: "dev.local",
        token_ttl: 3600,
        leeway: 0,
        trusted_issuers: &[],
        trusted_client_cas: &cas,
        verifier: &verifier,
        signing_key: &key,
        dpop: &dpop_policy,
    };
    let not_after = now + 60;
    let short = ca.issue(&[AGENT], |p| {
        p.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(u64::try_from(not_after).unwrap());
    });
    for aud in [PLAIN, BOUND] {
        let issued = exchange::exchange(
            &app,
            &ExchangeRequest {
                grant_type: Some(GRANT.into()),
                subject_token_type: Some(TYPE_MTLS.into()),
                audience: Some(aud.into()),
                client_cert: Some(short.clone()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        let exp = claims_of(&issued.access_token)["exp"].as_i64().unwrap();
        assert_eq!(exp, not_after, "{aud}");
    }
    // A certificate of the far future does not lengthen the token.
    let long = ca.client(&[AGENT]);
    let issued = exchange::exchange(
        &app,
        &ExchangeRequest {
            grant_type: Some(GRANT.into()),
            subject_token_type: Some(TYPE_MTLS.into()),
            audience: Some(PLAIN.into()),
            client_cert: Some(long),
            ..Default::default()
        },
        now,
    )
    .unwrap();
    let exp = claims_of(&issued.access_token)["exp"].as_i64().unwrap();
    assert_eq!(exp, now + 3600);
}

/// A production daemon whose signing key the test also holds, with a tool that takes only
/// certificate-bound tokens (`deploy`) and one that does not (`search`).
async fn daemon_with_key() -> (Daemon, SigningKey) {
    let d = Daemon::with(|c| {
        c.admin_token = Some(toolgate::credentials::Credential::new(ADMIN).unwrap());
        c.signing_key_file = Some(c.db_path.parent().unwrap().join("signing.pem"));
    })
    .await;
    let file = d.config.signing_key_file.clone().unwrap();
    let pem = std::fs::read_to_string(file).unwrap();
    let key = SigningKey::from_pkcs8(&toolgate::keys::from_pem(&pem).unwrap()).unwrap();
    for body in [
        json!({"tool_id": "deploy", "resource_uri": BOUND, "sender_constraint": "mtls"}),
        json!({"tool_id": "search", "resource_uri": PLAIN, "sender_constraint": null}),
    ] {
        let (status, resp) = d.call(Method::POST, "/v1/tools", Some(body)).await;
        assert_eq!(status, 201, "{resp}");
    }
    (d, key)
}

fn mint(d: &Daemon, key: &SigningKey, aud: &str, cnf: Option<Value>) -> String {
    let now = d.clock_now();
    let mut claims = Map::new();
    for (k, v) in [
        ("iss", json!(d.url)),
        ("sub", json!("wimse://prod.example/ns/demo/sa/agent-1")),
        ("aud", json!(aud)),
        ("jti", json!(rand_suffix())),
        ("iat", json!(now)),
        ("exp", json!(now + 300)),
    ] {
        claims.insert(k.into(), v);
    }
    if let Some(cnf) = cnf {
        claims.insert("cnf".into(), cnf);
    }
    jws::encode_signed(key, jws::TYP_ACCESS_TOKEN, &claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_carry_their_sender_constraint() {
    let (d, _) = daemon_with_key().await;
    let (_, deploy) = d.call(Method::GET, "/v1/tools/deploy", None).await;
    assert_eq!(deploy["sender_constraint"], "mtls");
    let (_, search) = d.call(Method::GET, "/v1/tools/search", None).await;
    assert_eq!(search["sender_constraint"], Value::Null);
    for (value, description) in [
        (
            json!("bearer"),
            "sender_constraint must be \"mtls\", \"dpop\" or null",
        ),
        (json!(true), "sender_constraint has the wrong type"),
    ] {
        let body = json!({"tool_id": "x", "resource_uri": "https://x.example/", "sender_constraint": value});
        let (status, resp) = d.call(Method::POST, "/v1/tools", Some(body)).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["error_description"], description);
    }
    let body = json!({"tool_id": "pop", "resource_uri": "https://x.example/pop", "sender_constraint": "dpop"});
    assert_eq!(d.call(Method::POST, "/v1/tools", Some(body)).await.0, 201);
    // A restart reads them back from the database; a PUT can lift one.
    let d = d.restart().await;
    let (_, deploy) = d.call(Method::GET, "/v1/tools/deploy", None).await;
    assert_eq!(deploy["sender_constraint"], "mtls");
    let (_, pop) = d.call(Method::GET, "/v1/tools/pop", None).await;
    assert_eq!(pop["sender_constraint"], "dpop");
    let (status, resp) = d
        .call(
            Method::PUT,
            "/v1/tools/deploy",
            Some(json!({"tool_id": "deploy", "resource_uri": BOUND})),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["sender_constraint"], Value::Null);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_compares_the_reported_client_certificate() {
    let (d, key) = daemon_with_key().await;
    let ca = Ca::new("prod CA");
    let (mine, other) = (ca.client(&[AGENT]), ca.client(&[AGENT]));
    let bound = mint(
        &d,
        &key,
        BOUND,
        Some(json!({"x5t#S256": mine.thumbprint()})),
    );
    let verify = |token: String, tool: &'static str, cert: Option<String>| {
        let mut body = json!({"token": token, "tool_id": tool});
        if let Some(c) = cert {
            body["client_cert"] = json!(c);
        }
        let d = &d;
        async move { d.call(Method::POST, "/v1/mcp/verify", Some(body)).await }
    };
    let (status, resp) = verify(bound.clone(), "deploy", Some(b64_der(&mine))).await;
    assert_eq!(status, 200, "{resp}");
    // Padding is optional.
    let unpadded = b64_der(&mine).trim_end_matches('=').to_string();
    assert_eq!(verify(bound.clone(), "deploy", Some(unpadded)).await.0, 200);
    for (cert, reason) in [
        (Some(b64_der(&other)), "certificate binding mismatch"),
        (
            None,
            "token is certificate-bound and no client certificate was presented",
        ),
    ] {
        let (status, resp) = verify(bound.clone(), "deploy", cert).await;
        assert_eq!(status, 403, "{resp}");
        assert_eq!(resp["check"], "mtls");
        assert_eq!(resp["error_description"], reason);
        assert!(!resp.to_string().contains(&mine.thumbprint()));
    }
    // An unbound token for the tool that requires binding, with the right certificate too.
    let unbound = mint(&d, &key, BOUND, None);
    let (status, resp) = verify(unbound, "deploy", Some(b64_der(&mine))).await;
    assert_eq!(
        (status, resp["check"].as_str()),
        (403, Some("mtls")),
        "{resp}"
    );
    // A bound token for a tool that does not require binding is checked all the same.
    let bound_plain = mint(
        &d,
        &key,
        PLAIN,
        Some(json!({"x5t#S256": mine.thumbprint()})),
    );
    assert_eq!(
        verify(bound_plain.clone(), "search", Some(b64_der(&mine)))
            .await
            .0,
        200
    );
    let (status, resp) = verify(bound_plain, "search", None).await;
    assert_eq!(
        (status, resp["check"].as_str()),
        (403, Some("mtls")),
        "{resp}"
    );
    // A key-bound (DPoP) token stays refused by dpop.
    let jkt = mint(
        &d,
        &key,
        PLAIN,
        Some(json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})),
    );
    let (_, resp) = verify(jkt, "search", Some(b64_der(&mine))).await;
    assert_eq!(resp["check"], "dpop");
    // client_cert that is no base64, or too large: 400, not a decision.
    for bad in ["not base64!", &"A".repeat(30_000)] {
        let (status, resp) = verify(bound.clone(), "deploy", Some(bad.to_string())).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["error"], "invalid_request");
    }
    // The audit rows name the check, and never a thumbprint.
    // Repeats within a second are counted into one row, written once the second is over.
    d.clock.advance(2);
    let rows = eventually("the mtls denials are audited", || async {
        let (_, page) = d
            .call(Method::GET, "/v1/audit?check=mtls&limit=100", None)
            .await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let count: i64 = events
            .iter()
            .map(|e| e["count"].as_i64().unwrap_or(0))
            .sum();
        (count >= 4).then_some(events)
    })
    .await;
    for row in rows {
        assert!(!row.to_string().contains(&mine.thumbprint()), "{row}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_without_a_client_certificate_is_refused_for_mtls() {
    let d = Daemon::dev().await;
    let (status, resp) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "deploy", "resource_uri": BOUND, "sender_constraint": "mtls"})),
        )
        .await;
    assert_eq!(status, 201, "{resp}");
    // Plain HTTP has no client certificate: a tool that requires binding gets no token.
    let (status, resp) = d
        .exchange(exchange_body(&stub(json!({"sub": "a"})), BOUND))
        .await;
    assert_eq!(status, 400, "{resp}");
    assert_eq!(resp["error"], "invalid_request");
    // Nor is there a certificate to be the credential: no client authentication, 401 (for a
    // tool that does not require binding; for one that does, the 400 above comes first).
    let body = json!({"grant_type": GRANT, "subject_token_type": TYPE_MTLS, "audience": PLAIN});
    let (status, resp) = d.exchange(body).await;
    assert_eq!(status, 401, "{resp}");
    assert_eq!(resp["error"], "invalid_client");
    let body = json!({"grant_type": GRANT, "subject_token_type": TYPE_MTLS, "audience": BOUND,
                      "subject_token": stub(json!({"sub": "a"}))});
    let (status, resp) = d.exchange(body).await;
    assert_eq!(status, 400, "{resp}");
    // The refusals are audited as exchange refusals are.
    d.clock.advance(2);
    for (check, refusals) in [("invalid_request", 2), ("invalid_client", 1)] {
        eventually("the refused exchanges are audited", || async {
            let (_, page) = d
                .call(
                    Method::GET,
                    &format!("/v1/audit?kind=exchange&check={check}"),
                    None,
                )
                .await;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            let count: i64 = events
                .iter()
                .map(|e| e["count"].as_i64().unwrap_or(0))
                .sum();
            (count >= refusals).then_some(())
        })
        .await;
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_advertises_certificate_bound_tokens() {
    let d = Daemon::dev().await;
    let (_, meta) = d
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    // Plain HTTP sees no client certificate: it cannot bind tokens, and has no mTLS alias.
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], false);
    assert_eq!(meta.get("mtls_endpoint_aliases"), None);
    d.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("prod CA").trusted_for(dir.path(), "prod.example");
    let d = Daemon::with(|c| {
        c.dev = true;
        c.issuer = Some("https://toolgate.example.com".into());
        c.trusted_client_cas = vec![ca];
    })
    .await;
    let (_, meta) = d
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(
        meta["mtls_endpoint_aliases"],
        json!({"token_endpoint": "https://toolgate.example.com/v1/exchange/token"})
    );
    d.stop().await;
}

/// Over the listener's TLS, once the coordinator's harness can start one: kept out of the build
/// until `harness::start_tls` exists (see the report of branch `tls-bind`).
/// Over real TLS connections: the daemon's listener hands the verified certificate to
/// exchange, and the gateway's listener (or a trusted proxy's header) to the guard.
mod over_tls {
    use super::super::pki::{self, client_config, Https};
    use super::*;
    use toolgate::tls::{ClientAuth, TlsFiles};

    fn tls_files(server: &pki::Issued, cas: &[&pki::Ca]) -> TlsFiles {
        TlsFiles {
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_cas: cas.iter().map(|c| c.pem.clone()).collect(),
            client_auth: ClientAuth::Optional,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exchange_over_mutual_tls_binds_the_token_and_checks_the_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let (main, prod, staging) = (
            pki::Ca::new(p, "main"),
            pki::Ca::new(p, "prod"),
            pki::Ca::new(p, "staging"),
        );
        let server = main.server(p, "server", false);
        let (prod_ca, staging_ca) = (
            TrustedClientCa::load(&prod.pem, "prod.example").unwrap(),
            TrustedClientCa::load(&staging.pem, "staging.example").unwrap(),
        );
        let d = Daemon::with(|c| {
            c.dev = true;
            // No --client-ca: the trusted_client_cas are the handshake's roots.
            c.tls = Some(tls_files(&server, &[]));
            c.trusted_client_cas = vec![prod_ca, staging_ca];
        })
        .await;
        let addr = d.url.strip_prefix("https://").unwrap().to_string();
        let conn = |client: Option<&pki::Issued>| {
            let (addr, config) = (addr.clone(), client_config(&main.pem, client));
            async move { Https::connect(&addr, config).await.unwrap() }
        };
        for body in [
            json!({"tool_id": "deploy", "resource_uri": BOUND, "sender_constraint": "mtls"}),
            json!({"tool_id": "search", "resource_uri": PLAIN}),
        ] {
            let (status, resp) = conn(None)
                .await
                .send(Method::POST, "/v1/tools", &[], Some(body))
                .await
                .unwrap();
            assert_eq!(status, 201, "{resp}");
        }
        let agent = prod.client(p, "agent", Some(AGENT_PROD));
        let mtls_body =
            json!({"grant_type": GRANT, "subject_token_type": TYPE_MTLS, "audience": BOUND});

        // The SVID is the credential, and the token is bound to it.
        let (status, resp) = conn(Some(&agent))
            .await
            .send(
                Method::POST,
                "/v1/exchange/token",
                &[],
                Some(mtls_body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
        let claims = claims_of(resp["access_token"].as_str().unwrap());
        assert_eq!(claims["sub"], "wimse://prod.example/ns/demo/sa/agent-1");
        assert_eq!(
            claims["cnf"]["x5t#S256"],
            toolgate::mtls::x5t_s256(&agent.der)
        );

        // A stub subject: bound when the connection has a certificate, refused when it has none.
        let stub_body = exchange_body(&stub(json!({"sub": "a", "namespace": "n"})), BOUND);
        let (status, resp) = conn(Some(&agent))
            .await
            .send(
                Method::POST,
                "/v1/exchange/token",
                &[],
                Some(stub_body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
        let claims = claims_of(resp["access_token"].as_str().unwrap());
        assert_eq!(
            claims["cnf"]["x5t#S256"],
            toolgate::mtls::x5t_s256(&agent.der)
        );
        let (status, resp) = conn(None)
            .await
            .send(Method::POST, "/v1/exchange/token", &[], Some(stub_body))
            .await
            .unwrap();
        assert_eq!(
            (status, resp["error"].as_str()),
            (400, Some("invalid_request"))
        );
        // A token for a tool without the constraint is not bound, certificate or not.
        let (status, resp) = conn(Some(&agent))
            .await
            .send(
                Method::POST,
                "/v1/exchange/token",
                &[],
                Some(exchange_body(
                    &stub(json!({"sub": "a", "namespace": "n"})),
                    PLAIN,
                )),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{resp}");
        assert!(claims_of(resp["access_token"].as_str().unwrap())
            .get("cnf")
            .is_none());

        // The staging CA is trusted by the handshake, but not for prod.example.
        let impostor = staging.client(p, "impostor", Some(AGENT_PROD));
        let (status, resp) = conn(Some(&impostor))
            .await
            .send(
                Method::POST,
                "/v1/exchange/token",
                &[],
                Some(mtls_body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(
            (status, resp["error"].as_str()),
            (400, Some("invalid_grant")),
            "{resp}"
        );
        // A CA nobody configured fails the handshake itself.
        let rogue = pki::Ca::new(p, "rogue").client(p, "rogue", Some(AGENT_PROD));
        let refused = Https::connect(&addr, client_config(&main.pem, Some(&rogue))).await;
        if let Ok(mut c) = refused {
            assert!(c
                .send(Method::POST, "/v1/exchange/token", &[], Some(mtls_body))
                .await
                .is_err());
        }

        // RFC 8414: the token endpoint binds tokens on this listener.
        let (_, meta) = conn(None)
            .await
            .send(
                Method::GET,
                "/.well-known/oauth-authorization-server",
                &[],
                None,
            )
            .await
            .unwrap();
        assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
        assert_eq!(
            meta["mtls_endpoint_aliases"]["token_endpoint"],
            format!("{}/v1/exchange/token", d.url)
        );
        d.stop().await;
    }

    /// An upstream that answers 200 "upstream".
    async fn upstream() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(hyper::body::Bytes::from("upstream")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        url
    }

    /// A gateway in front of `upstream` for the daemon's tools, on `listener`, with `tls`.
    async fn gateway(
        d: &Daemon,
        listener: tokio::net::TcpListener,
        tls: toolgate::config::ListenerTls,
    ) -> tokio::sync::oneshot::Sender<()> {
        use std::time::Duration;
        use toolgate::gateway::GatewayConfig;
        use toolgate::guard::{Guard, GuardConfig};
        let listen = listener.local_addr().unwrap();
        let cfg = GatewayConfig {
            listen,
            upstream: upstream().await,
            upstream_tls: Default::default(),
            guard: GuardConfig {
                toolgate: d.url.clone(),
                toolgate_tls: Default::default(),
                admin_token: Some(ADMIN.into()),
                resource: "https://mcp.example.com/tools".into(),
                server_id: None,
                public_url: format!("https://localhost:{}", listen.port()),
                max_staleness: Duration::from_secs(30),
                poll_interval: Duration::from_secs(5),
                key_refresh: toolgate::guard::DEFAULT_KEY_REFRESH,
                leeway: 60,
                max_batch: 64,
                dpop_window: 60,
                dpop_nonce: false,
                allow_multi_audience: false,
            },
            mcp_path: "/mcp".into(),
            routes: vec![("/api/deploy".into(), "deploy".into())],
            max_connections: 16,
            max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
            allowed_origins: Vec::new(),
            metrics_path: None,
            tls,
        };
        let guard = Guard::connect(cfg.guard.clone(), d.clock.clone())
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(toolgate::gateway::serve(listener, guard, cfg, async move {
            let _ = stopped.await;
        }));
        stop
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gateway_checks_the_certificate_of_its_own_tls_connection() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let (main, prod) = (pki::Ca::new(p, "main"), pki::Ca::new(p, "prod"));
        let server = main.server(p, "gateway", false);
        let (mine, other) = (
            prod.client(p, "mine", Some(AGENT_PROD)),
            prod.client(p, "other", Some(AGENT_PROD)),
        );
        let (d, key) = daemon_with_key().await;
        let token = mint(
            &d,
            &key,
            BOUND,
            Some(json!({"x5t#S256": toolgate::mtls::x5t_s256(&mine.der)})),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tls = toolgate::config::ListenerTls {
            tls: Some(tls_files(&server, &[&prod])),
            ..Default::default()
        };
        let _stop = gateway(&d, listener, tls).await;
        let bearer = format!("Bearer {token}");
        let call = |client: Option<&pki::Issued>| {
            let (addr, config, bearer) = (
                addr.clone(),
                client_config(&main.pem, client),
                bearer.clone(),
            );
            async move {
                let mut c = Https::connect(&addr, config).await.unwrap();
                c.send(
                    Method::POST,
                    "/api/deploy",
                    &[("authorization", &bearer)],
                    Some(json!({})),
                )
                .await
                .unwrap()
            }
        };
        assert_eq!(call(Some(&mine)).await.0, 200);
        assert_eq!(call(Some(&other)).await.0, 401);
        assert_eq!(call(None).await.0, 401);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn behind_a_trusted_proxy_the_gateway_takes_the_certificate_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let prod = pki::Ca::new(p, "prod");
        let (mine, other) = (
            prod.client(p, "mine", Some(AGENT_PROD)),
            prod.client(p, "other", Some(AGENT_PROD)),
        );
        let (d, key) = daemon_with_key().await;
        let token = mint(
            &d,
            &key,
            BOUND,
            Some(json!({"x5t#S256": toolgate::mtls::x5t_s256(&mine.der)})),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tls = toolgate::config::ListenerTls {
            tls: None,
            client_cert_header: Some(http::HeaderName::from_static("x-ssl-client-cert")),
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        };
        let _stop = gateway(&d, listener, tls).await;
        let escaped = |c: &pki::Issued| {
            std::fs::read_to_string(&c.cert)
                .unwrap()
                .replace('\n', "%0A")
                .replace(' ', "%20")
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        };
        let bearer = format!("Bearer {token}");
        let call = |cert: Option<String>| {
            let (url, bearer) = (url.clone(), bearer.clone());
            async move {
                let mut headers = vec![("authorization", bearer.as_str())];
                if let Some(c) = &cert {
                    headers.push(("x-ssl-client-cert", c.as_str()));
                }
                super::super::harness::post_with_headers(&url, "/api/deploy", &headers)
                    .await
                    .0
            }
        };
        assert_eq!(call(Some(escaped(&mine))).await, 200);
        assert_eq!(call(Some(escaped(&other))).await, 401);
        assert_eq!(call(None).await, 401);
    }
}

/// A stolen certificate-bound token is no bearer token: through the gateway (plain HTTP, so no
/// client certificate on the connection) it is refused with the RFC 6750 challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_is_refused_as_a_plain_bearer_token_through_the_gateway() {
    use std::time::Duration;
    use toolgate::gateway::GatewayConfig;
    use toolgate::guard::{Guard, GuardConfig};
    let (d, key) = daemon_with_key().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let gw = format!("http://{listen}");
    let cfg = GatewayConfig {
        listen,
        // Never reached: every request here is refused.
        upstream: d.url.clone(),
        upstream_tls: Default::default(),
        guard: GuardConfig {
            toolgate: d.url.clone(),
            toolgate_tls: Default::default(),
            admin_token: Some(ADMIN.into()),
            resource: "https://mcp.example.com/tools".into(),
            server_id: None,
            public_url: gw.clone(),
            max_staleness: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            key_refresh: toolgate::guard::DEFAULT_KEY_REFRESH,
            leeway: 60,
            max_batch: 64,
            dpop_window: 60,
            dpop_nonce: false,
            allow_multi_audience: false,
        },
        mcp_path: "/mcp".into(),
        routes: vec![
            ("/api/deploy".into(), "deploy".into()),
            ("/api/search".into(), "search".into()),
        ],
        max_connections: 16,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: Default::default(),
    };
    let guard = Guard::connect(cfg.guard.clone(), d.clock.clone())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(toolgate::gateway::serve(listener, guard, cfg, async move {
        let _ = stopped.await;
    }));
    let ca = Ca::new("prod CA");
    let mine = ca.client(&[AGENT]);
    let authority = listen.to_string();
    // One raw HTTP/1.1 request: the status, the challenge and the JSON body.
    let call = |token: String, path: &'static str| {
        let authority = authority.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf).to_string();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let challenge = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("www-authenticate")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            (
                status,
                challenge,
                serde_json::from_str::<Value>(body).unwrap_or(Value::Null),
            )
        }
    };
    for (token, path) in [
        (
            mint(
                &d,
                &key,
                BOUND,
                Some(json!({"x5t#S256": mine.thumbprint()})),
            ),
            "/api/deploy",
        ),
        (
            mint(
                &d,
                &key,
                PLAIN,
                Some(json!({"x5t#S256": mine.thumbprint()})),
            ),
            "/api/search",
        ),
        (mint(&d, &key, BOUND, None), "/api/deploy"),
    ] {
        let (status, challenge, body) = call(token, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["check"], "mtls");
        assert_eq!(body["error_description"], "certificate binding mismatch");
        assert!(
            challenge.starts_with(
                "Bearer error=\"invalid_token\", error_description=\"certificate binding mismatch\""
            ),
            "{challenge}"
        );
        assert!(
            !challenge.contains(&mine.thumbprint())
                && !body.to_string().contains(&mine.thumbprint())
        );
    }
    let _ = stop.send(());
    d.stop().await;
}

/// Review of #13, found sound: intermediate-CA tricks in the chain a client presents for a
/// SPIFFE credential. A valid intermediate is accepted; an end-entity certificate used as an
/// issuer, a path-length constraint broken, and a CA certificate as the SVID itself are not.
#[test]
fn svid_chains_with_intermediate_tricks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new("root");
    let cas = [root.trusted_for(dir.path(), "prod.example")];
    let now = toolgate::clock::Clock::now(&toolgate::clock::SystemClock);
    // A certificate signed by `issuer` with `tweak`, and its key (to sign with it in turn).
    let sub = |issuer: &Ca, name: &str, tweak: &dyn Fn(&mut CertificateParams)| -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        tweak(&mut p);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
        Ca { cert, key }
    };
    let chain = |leaf: &ClientCertificate, above: &[&Ca]| {
        let mut c = vec![leaf.leaf().to_vec()];
        c.extend(above.iter().map(|ca| ca.cert.der().to_vec()));
        ClientCertificate::new(c).unwrap()
    };
    let svid = |c: &ClientCertificate| spiffe::workload(c, &cas, now);

    let good = sub(&root, "intermediate", &|p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert!(svid(&chain(&good.client(&[AGENT]), &[&good])).is_ok());

    // An end-entity certificate of the trusted CA, used as an issuer.
    let leaf_as_ca = sub(&root, "not a CA", &|p| {
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    assert_eq!(
        svid(&chain(&leaf_as_ca.client(&[AGENT]), &[&leaf_as_ca])),
        Err(SvidError::Untrusted)
    );
    // An issuer without basicConstraints at all.
    let no_bc = sub(&root, "no basic constraints", &|_| {});
    assert_eq!(
        svid(&chain(&no_bc.client(&[AGENT]), &[&no_bc])),
        Err(SvidError::Untrusted)
    );
    // pathLenConstraint 0, and an intermediate under it.
    let capped = sub(&root, "capped", &|p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0))
    });
    let below = sub(&capped, "below", &|p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert!(svid(&chain(&capped.client(&[AGENT]), &[&capped])).is_ok());
    assert_eq!(
        svid(&chain(&below.client(&[AGENT]), &[&below, &capped])),
        Err(SvidError::Untrusted)
    );
    // A CA certificate as the SVID.
    let ca_svid = root.issue(&[AGENT], |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert_eq!(svid(&ca_svid), Err(SvidError::Untrusted));
    // Not yet valid at the exchange's clock.
    let future = root.issue(&[AGENT], |p| {
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    });
    assert_eq!(svid(&future), Err(SvidError::Untrusted));
}
