//! Issue 15, part 1: trusted issuers whose keys are fetched — by OpenID Connect discovery or a
//! `jwks_uri` — from an identity provider this test controls (HTTPS, its own CA), kept fresh,
//! refreshed on an unknown `kid` (rate-limited), refused when the provider misbehaves, and
//! served within a grace when it is down.

use super::harness::*;
use super::tls_clients::{server_config, Ca};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use toolgate::config::TrustedIssuer;
use toolgate::credentials::Credential;
use toolgate::issuers::{FetchOptions, IssuerKeys, Source};
use toolgate::jose::SigningKey;

const TOOLGATE_AUD: &str = "https://toolgate.example.com";
const RESOURCE: &str = "https://mcp.example.com/tools/search";

/// What the provider serves; the test changes it between requests.
pub(super) struct Behaviour {
    /// Published keys; the first one signs.
    pub(super) keys: Vec<SigningKey>,
    /// The `issuer` its metadata names (`None`: its own URL).
    metadata_issuer: Option<String>,
    /// Answer every request with 503.
    down: bool,
    /// `/moved/jwks` answers with a redirect to this URL.
    redirect_jwks_to: Option<String>,
    /// `/jwks` sends this many bytes of padding inside the document.
    padding: usize,
    max_age: i64,
    jwks_hits: usize,
    metadata_hits: usize,
    /// `/jwks` answers only once this lets it (a permit per answer); `held` counts the
    /// requests that reached it.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    held: usize,
}

/// An identity provider on `https://localhost:<port>`: OpenID Connect discovery and a JWKS.
/// Also the authorization server of `resource_server.rs`.
pub(super) struct Provider {
    pub(super) url: String,
    ca_file: std::path::PathBuf,
    state: Arc<Mutex<Behaviour>>,
    accept: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Provider {
    pub(super) async fn start() -> Provider {
        let ca = Ca::new();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let acceptor = server_config(&ca.localhost());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("https://localhost:{}", addr.port());
        let state = Arc::new(Mutex::new(Behaviour {
            keys: vec![SigningKey::generate().unwrap()],
            metadata_issuer: None,
            down: false,
            redirect_jwks_to: None,
            padding: 0,
            max_age: 3600,
            jwks_hits: 0,
            metadata_hits: 0,
            gate: None,
            held: 0,
        }));
        let (shared, base) = (state.clone(), url.clone());
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, shared, base) = (acceptor.clone(), shared.clone(), base.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (shared, base) = (shared.clone(), base.clone());
                        async move {
                            let gate = shared.lock().unwrap().gate.clone();
                            if let (Some(gate), "/jwks") = (gate, req.uri().path()) {
                                shared.lock().unwrap().held += 1;
                                let _ = gate.acquire().await.map(|p| p.forget());
                            }
                            Ok::<_, std::convert::Infallible>(serve(&shared, &base, &req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Provider {
            url,
            ca_file,
            state,
            accept,
            _dir: dir,
        }
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Behaviour) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Keys found by discovery, checked against this provider's CA.
    pub(super) fn discovered(&self, grace: Option<i64>) -> Arc<IssuerKeys> {
        IssuerKeys::fetched(
            &self.url,
            Source::Discovery,
            &FetchOptions {
                ca_file: Some(self.ca_file.clone()),
                grace,
                allow_loopback_http: false,
            },
        )
        .unwrap()
    }

    /// A subject token for `sub`, signed by the provider's current signing key (or `kid`
    /// replaced by another value).
    fn token(&self, now: i64, sub: &str, kid: Option<&str>) -> String {
        let claims = json!({"iss": self.url, "sub": sub, "aud": TOOLGATE_AUD,
                            "iat": now, "exp": now + 600, "client_id": sub});
        self.sign(kid, &claims)
    }

    /// `claims` signed by the provider's current signing key, header `typ` `at+jwt`, its
    /// `kid` (or `kid` instead).
    pub(super) fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        self.with(|b| {
            let key = &b.keys[0];
            let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid.unwrap_or(key.kid())});
            sign_jws(key, &header, claims)
        })
    }
}

fn serve(state: &Mutex<Behaviour>, base: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut b = state.lock().unwrap();
    let max_age = b.max_age;
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("cache-control", format!("public, max-age={max_age}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if b.down {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            b.metadata_hits += 1;
            let issuer = b
                .metadata_issuer
                .clone()
                .unwrap_or_else(|| base.to_string());
            reply(
                StatusCode::OK,
                json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks"),
                       "token_endpoint": format!("{base}/token")})
                .to_string(),
            )
        }
        "/jwks" | "/moved/jwks" => {
            b.jwks_hits += 1;
            if let (Some(to), "/moved/jwks") = (b.redirect_jwks_to.clone(), req.uri().path()) {
                return Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", to)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            let keys: Vec<Value> = b.keys.iter().map(|k| k.public_jwk().to_json()).collect();
            let mut doc = json!({ "keys": keys });
            if b.padding > 0 {
                doc["padding"] = json!("x".repeat(b.padding));
            }
            reply(StatusCode::OK, doc.to_string())
        }
        _ => reply(StatusCode::NOT_FOUND, "{}".into()),
    }
}

/// A production daemon trusting `keys` for subject tokens, with one tool registered.
async fn trusting(keys: Arc<IssuerKeys>) -> Daemon {
    let issuer = keys.issuer().to_string();
    let d = Daemon::with(move |c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.trusted_issuers = vec![TrustedIssuer {
            issuer,
            keys,
            audience: TOOLGATE_AUD.into(),
            trust_domain: "example.com".into(),
        }];
    })
    .await;
    d.register("search", RESOURCE).await;
    d
}

async fn exchange_as(d: &Daemon, token: &str) -> (u16, Value) {
    d.exchange(exchange_body(token, RESOURCE)).await
}

async fn issuer_status(d: &Daemon) -> Value {
    let (status, body) = d.call(Method::GET, "/v1/issuers", None).await;
    assert_eq!(status, 200, "{body}");
    body["issuers"][0].clone()
}

async fn health(d: &Daemon) -> Value {
    d.call(Method::GET, "/v1/sys/health", None).await.1
}

async fn metric(d: &Daemon, line_start: &str) -> u64 {
    let text = d
        .client()
        .send(Method::GET, "/metrics", None)
        .await
        .map(|(_, v)| v)
        .unwrap();
    let text = text["raw"].as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in\n{text}"))
}

/// The provider rotates: a token signed by its new key names a kid toolgate has not seen, and
/// is exchanged at once (one refresh), with no restart. The old key keeps working while it is
/// published; discovery's metadata and the JWKS are fetched over HTTPS against the CA file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_fetches_the_keys_and_a_rotation_at_the_provider_needs_no_restart() {
    let idp = Provider::start().await;
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();

    let (status, body) = exchange_as(&d, &idp.token(now, "workload-1", None)).await;
    assert_eq!(status, 200, "{body}");
    let first = issuer_status(&d).await;
    assert_eq!(first["source"], "discovery", "{first}");
    assert_eq!(first["state"], "fresh", "{first}");
    assert_eq!(first["jwks_uri"], format!("{}/jwks", idp.url), "{first}");
    assert_eq!(first["last_fetch"]["result"], "ok", "{first}");
    assert_eq!(health(&d).await["status"], "ok");

    // Rotation at the provider: a new key in front, the old one still published.
    let old_kid = idp.with(|b| {
        b.keys.insert(0, SigningKey::generate().unwrap());
        b.keys[1].kid().to_string()
    });
    let hits = idp.with(|b| b.jwks_hits);
    let (status, body) = exchange_as(&d, &idp.token(now, "workload-1", None)).await;
    assert_eq!(status, 200, "a new kid is fetched at once: {body}");
    assert_eq!(idp.with(|b| b.jwks_hits), hits + 1);
    let kids: Vec<String> = issuer_status(&d).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&old_kid));
    // The old key's tokens still pass, without another fetch.
    idp.with(|b| b.keys.swap(0, 1));
    let (status, body) = exchange_as(&d, &idp.token(now, "workload-1", None)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.with(|b| b.jwks_hits), hits + 1);
}

/// Random kids: the first makes one refresh, the next ones within 30 s make none (counted as
/// limited) and are refused; after 30 s one refresh is allowed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refresh_at_most_once_per_30_seconds() {
    let idp = Provider::start().await;
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200);
    let hits = idp.with(|b| b.jwks_hits);

    for i in 0..5 {
        let (status, body) =
            exchange_as(&d, &idp.token(now, "w", Some(&format!("random-{i}")))).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            body["error_description"],
            "subject token signature is invalid"
        );
    }
    assert_eq!(
        idp.with(|b| b.jwks_hits),
        hits + 1,
        "one refresh for five random kids"
    );
    let issuer = idp.url.clone();
    let refreshed = format!(
        "toolgate_issuer_unknown_kid_total{{issuer=\"{issuer}\",role=\"subject\",outcome=\"refreshed\"}}"
    );
    let limited = format!(
        "toolgate_issuer_unknown_kid_total{{issuer=\"{issuer}\",role=\"subject\",outcome=\"limited\"}}"
    );
    assert_eq!(metric(&d, &refreshed).await, 1);
    assert_eq!(metric(&d, &limited).await, 4);

    d.clock.advance(31);
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", Some("random-late"))).await;
    assert_eq!(status, 401);
    assert_eq!(idp.with(|b| b.jwks_hits), hits + 2);
    assert_eq!(metric(&d, &refreshed).await, 2);
}

/// Metadata naming another issuer, a JWKS redirected to another origin, a JWKS over the size
/// cap: each is refused, the issuer's tokens are refused with a clear error, and
/// `/v1/issuers` and health say why. A redirect within the origin is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_misbehaves_is_refused() {
    // Metadata naming another issuer.
    let idp = Provider::start().await;
    idp.with(|b| b.metadata_issuer = Some("https://evil.example.com".into()));
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error_description"],
        "the subject token issuer's keys cannot be fetched; try again later"
    );
    let s = issuer_status(&d).await;
    assert_eq!(s["state"], "unavailable", "{s}");
    assert!(
        s["last_fetch"]["error"]
            .as_str()
            .unwrap()
            .contains("the metadata names issuer \"https://evil.example.com\""),
        "{s}"
    );
    assert_eq!(
        idp.with(|b| b.jwks_hits),
        0,
        "no key of another issuer is fetched"
    );
    let h = health(&d).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["issuers"][0]["state"], "unavailable", "{h}");
    d.stop().await;

    // A JWKS redirected to another origin (another port is another origin), then within it.
    let idp = Provider::start().await;
    let elsewhere = Provider::start().await;
    idp.with(|b| b.redirect_jwks_to = Some(format!("{}/jwks", elsewhere.url)));
    let keys = IssuerKeys::fetched(
        &idp.url,
        Source::JwksUri(format!("{}/moved/jwks", idp.url)),
        &FetchOptions {
            ca_file: Some(idp.ca_file.clone()),
            ..FetchOptions::default()
        },
    )
    .unwrap();
    let d = trusting(keys).await;
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 503);
    let s = issuer_status(&d).await;
    assert!(
        s["last_fetch"]["error"]
            .as_str()
            .unwrap()
            .contains("redirected to another origin; refused"),
        "{s}"
    );
    assert_eq!(elsewhere.with(|b| b.jwks_hits), 0);
    idp.with(|b| b.redirect_jwks_to = Some("/jwks".into()));
    d.clock.advance(30);
    let now = d.clock_now();
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(
        status, 200,
        "a redirect within the origin is followed: {body}"
    );
    d.stop().await;

    // A 5 MiB JWKS.
    let idp = Provider::start().await;
    idp.with(|b| b.padding = 5 * 1024 * 1024);
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 503);
    let s = issuer_status(&d).await;
    assert!(
        s["last_fetch"]["error"]
            .as_str()
            .unwrap()
            .contains("sent more than 256 KiB; refused"),
        "{s}"
    );
}

/// The provider goes down: its last good keys serve until they expire plus the grace (health
/// degraded, state stale), then its tokens are refused with a clear error; back up, a retry
/// after 30 s recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_past_the_grace_fails_closed_and_recovers() {
    let idp = Provider::start().await;
    idp.with(|b| b.max_age = 600);
    let d = trusting(idp.discovered(Some(3600))).await;
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200);

    idp.with(|b| b.down = true);
    // Past the keys' max-age: a refresh fails, the last good keys serve (stale).
    d.clock.advance(601);
    let now = d.clock_now();
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200, "within the grace: {body}");
    // The refresh runs behind the request.
    let s = eventually("the failed refresh is recorded", || async {
        let s = issuer_status(&d).await;
        s["last_fetch"]["error"].is_string().then_some(s)
    })
    .await;
    assert_eq!(s["state"], "stale", "{s}");
    assert!(
        s["last_fetch"]["error"]
            .as_str()
            .unwrap()
            .contains("answered 503"),
        "{s}"
    );
    assert_eq!(health(&d).await["status"], "degraded");

    // Past the grace: refused, and said so.
    d.clock.advance(3600);
    let now = d.clock_now();
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(issuer_status(&d).await["state"], "unavailable");
    let h = health(&d).await;
    assert_eq!(h["issuers"][0]["state"], "unavailable", "{h}");

    // Back up: the next attempt (30 s after the last) recovers.
    idp.with(|b| b.down = false);
    d.clock.advance(30);
    let now = d.clock_now();
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issuer_status(&d).await["state"], "fresh");
    assert_eq!(health(&d).await["status"], "ok");
}

/// `toolgate issuers` prints each issuer, where its keys come from, their state, kids and the
/// last fetch; `--json` prints the API's document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_the_issuers_and_their_keys() {
    let idp = Provider::start().await;
    let keys = idp.discovered(None);
    let issuer = idp.url.clone();
    let d = Daemon::with(move |c| {
        c.dev = true;
        c.trusted_issuers = vec![TrustedIssuer {
            issuer,
            keys,
            audience: TOOLGATE_AUD.into(),
            trust_domain: "example.com".into(),
        }];
    })
    .await;
    // The first fetch runs when the daemon starts.
    eventually("the keys are fetched at start", || async {
        (issuer_status(&d).await["state"] == "fresh").then_some(())
    })
    .await;
    let kid = idp.with(|b| b.keys[0].kid().to_string());
    let url = d.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let table = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["issuers", "--url", &url])
            .output()
            .unwrap();
        let json = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["issuers", "--json", "--url", &url])
            .output()
            .unwrap();
        (table, json)
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.0.stdout).to_string();
    assert!(out.0.status.success(), "{table}");
    let row = table.lines().nth(1).unwrap_or_default();
    for cell in [
        idp.url.as_str(),
        "subject",
        "discovery",
        "fresh",
        kid.as_str(),
        " ok",
    ] {
        assert!(row.contains(cell), "{cell} in\n{table}");
    }
    let doc: Value = serde_json::from_slice(&out.1.stdout).unwrap();
    assert_eq!(doc["issuers"][0]["keys"][0]["kid"], kid.as_str(), "{doc}");
}

/// A signal transmitter by `jwks_uri`: its SETs verify with the fetched keys, a SET signed by
/// its new key after a rotation is accepted at once, and once its keys are past the grace its
/// SETs are refused with 503 (send again later), nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmitter_by_jwks_uri_rotates_and_fails_closed() {
    let siem = Provider::start().await;
    siem.with(|b| b.max_age = 300);
    let keys = IssuerKeys::fetched(
        &siem.url,
        Source::JwksUri(format!("{}/jwks", siem.url)),
        &FetchOptions {
            ca_file: Some(siem.ca_file.clone()),
            grace: Some(0),
            allow_loopback_http: false,
        },
    )
    .unwrap();
    let d = Daemon::with(move |c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.transmitters = vec![toolgate::config::Transmitter {
            issuer: keys.issuer().to_string(),
            keys,
        }];
    })
    .await;
    let post = |n: u32| {
        let (d, siem) = (&d, &siem);
        async move {
            let claims = json!({
                "iss": siem.url, "jti": format!("set-{n}"), "iat": d.clock_now(), "aud": d.url,
                "sub_id": {"format": "email", "email": format!("user{n}@example.com")},
                "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
            });
            let set = siem.with(|b| {
                let key = &b.keys[0];
                let header = json!({"alg": "ES256", "kid": key.kid(), "typ": "secevent+jwt"});
                sign_jws(key, &header, &claims)
            });
            d.raw(
                Method::POST,
                "/v1/signals/events",
                "application/secevent+jwt",
                set.into_bytes(),
            )
            .await
        }
    };
    let (status, body) = post(1).await;
    assert_eq!(status, 202, "{body}");
    siem.with(|b| b.keys.insert(0, SigningKey::generate().unwrap()));
    let (status, body) = post(2).await;
    assert_eq!(status, 202, "the rotated key is fetched at once: {body}");

    siem.with(|b| b.down = true);
    d.clock.advance(301);
    let (status, body) = post(3).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["err"], "temporarily_unavailable", "{body}");
    assert_eq!(
        body["description"],
        "the transmitter's keys cannot be fetched now, or do not hold this SET's key yet; send the SET again later"
    );
}

/// A `sub` is any string (RFC 9068): an Auth0 user (`auth0|abc123`) or a URL client id becomes
/// one percent-encoded path segment of the WIMSE subject, so distinct subjects stay distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_sub_becomes_one_percent_encoded_segment() {
    let idp = Provider::start().await;
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();
    for (sub, want) in [
        ("auth0|abc123", "auth0%7Cabc123"),
        (
            "https://agent.example/client.json",
            "https:%2F%2Fagent.example%2Fclient.json",
        ),
        ("100%", "100%25"),
        ("svc@clients", "svc@clients"),
    ] {
        let (status, body) = exchange_as(&d, &idp.token(now, sub, None)).await;
        assert_eq!(status, 200, "{sub}: {body}");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(
            claims_of(token)["sub"],
            format!("wimse://example.com/ns/default/sa/{want}"),
            "{sub}"
        );
    }
}

/// Review finding: a client that names an unknown kid and hangs up while toolgate fetches must
/// not cancel that fetch (it would spend the issuer's one refresh per 30 s for nothing, and a
/// rotation at the provider would go unseen): the fetch runs in a task of its own and lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_does_not_cancel_the_unknown_kid_refresh() {
    use tokio::io::AsyncWriteExt;
    let idp = Provider::start().await;
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200);
    let hits = idp.with(|b| b.jwks_hits);

    // The provider rotates, and holds its next JWKS answer.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let new_kid = idp.with(|b| {
        b.keys.insert(0, SigningKey::generate().unwrap());
        b.gate = Some(gate.clone());
        b.keys[0].kid().to_string()
    });
    // A client sends a token naming an unknown kid, and hangs up once the fetch is under way.
    let body = exchange_body(&idp.token(now, "x", Some("random")), RESOURCE).to_string();
    let addr = d.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /v1/exchange/token HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    eventually("the fetch reaches the provider", || async {
        (idp.with(|b| b.held) == 1).then_some(())
    })
    .await;
    drop(conn);
    gate.add_permits(1);
    idp.with(|b| b.gate = None);
    eventually("the fetch lands anyway", || async {
        let s = issuer_status(&d).await;
        s["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == new_kid.as_str())
            .then_some(())
    })
    .await;
    // The new key's tokens pass, with no further fetch.
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.with(|b| b.jwks_hits), hits + 1);
}

/// Stale keys that still serve are refreshed behind the request: a provider that hangs does
/// not hold up the exchanges its last good keys can check. A JWKS the provider serves with no
/// key toolgate can use replaces the old keys (a key the provider stops listing is gone), and
/// the issuer is unavailable until it publishes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_refresh_behind_the_request_and_a_key_the_provider_drops_is_gone() {
    let idp = Provider::start().await;
    idp.with(|b| b.max_age = 300);
    let d = trusting(idp.discovered(None)).await;
    let now = d.clock_now();
    let (status, _) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(status, 200);

    // The keys expire; the provider holds its answer. The exchange does not wait for it.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    idp.with(|b| b.gate = Some(gate.clone()));
    d.clock.advance(301);
    let now = d.clock_now();
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        exchange_as(&d, &idp.token(now, "w", None)),
    )
    .await
    .expect("the exchange did not wait for the provider");
    assert_eq!(status, 200, "{body}");
    eventually("the refresh reaches the provider", || async {
        (idp.with(|b| b.held) == 1).then_some(())
    })
    .await;

    // The provider answers with only a key toolgate cannot use (its old key withdrawn).
    let pad = idp.with(|b| {
        b.keys.clear();
        b.gate = None;
        b.padding
    });
    assert_eq!(pad, 0);
    gate.add_permits(1);
    eventually("the empty key set is taken", || async {
        (issuer_status(&d).await["state"] == "unavailable").then_some(())
    })
    .await;
    let s = issuer_status(&d).await;
    assert!(
        s["last_fetch"]["error"]
            .as_str()
            .unwrap()
            .contains("has no signature key toolgate can use"),
        "{s}"
    );
    idp.with(|b| b.keys.push(SigningKey::generate().unwrap()));
    let (status, body) = exchange_as(&d, &idp.token(now, "w", None)).await;
    assert_eq!(
        status, 200,
        "a key published again is fetched for the token naming it: {body}"
    );
    assert_eq!(issuer_status(&d).await["state"], "fresh");
}
