//! DPoP at the resource servers (issue #14, parts 4 and 5): a token bound by the token endpoint
//! to the holder's key, then every refusal of the issue's list, one table, through REST verify,
//! the guard (in process, as the hyper service a tool author mounts) and `toolgate gateway`
//! alike; a batch spends its one proof once; nonces (`--dpop-nonce`, through the binary); both
//! challenges where bearer tokens are accepted; the gateway's RFC 9728 metadata.
//!
//! Time: the daemon, the guard and the gateway share one manual clock, moved past their start
//! plus the proof window (proofs older than that could have been seen before a restart).

use super::harness::*;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use toolgate::clock::{Clock, SystemClock};
use toolgate::dpop::{sign_proof, token_hash, ProofClaims};
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig, GuardedBody, Protected};
use toolgate::jose::SigningKey;

/// The MCP server the tools belong to (`server_id` "s").
const SERVER: &str = "https://mcp.example.com/servers/s";
/// Its tool that takes DPoP-bound tokens only.
const DEPLOY: &str = "https://mcp.example.com/servers/s/tools/deploy";
/// A server of plain tools (`server_id` "p"), where bearer tokens are accepted too.
const PLAIN_SERVER: &str = "https://mcp.example.com/servers/p";
const SEARCH: &str = "https://mcp.example.com/servers/p/tools/search";
/// The in-process guard's public URL: proofs name it plus the path.
const PUBLIC: &str = "https://tools.example.com";
const ALGS: &str = "ES256 ES384 EdDSA Ed25519 RS256 PS256";
const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// The public URL the gateway binary is told it has.
const GATEWAY_PUBLIC: &str = "http://gateway.test";

// ---------------------------------------------------------------------------------------------
// Proofs.

/// What a proof says; `made` signs it with `key` (the client side, as a real client does).
#[derive(Clone)]
struct ProofSpec<'a> {
    key: &'a SigningKey,
    htm: &'a str,
    htu: String,
    token: &'a str,
    iat: i64,
    nonce: Option<String>,
}

impl ProofSpec<'_> {
    fn made(&self) -> String {
        sign_proof(
            self.key,
            &ProofClaims {
                htm: self.htm,
                htu: &self.htu,
                access_token: Some(self.token),
                nonce: self.nonce.as_deref(),
                iat: self.iat,
            },
        )
        .unwrap()
    }

    /// The claims of this proof, with a `jti` of its own.
    fn claims(&self) -> Value {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        json!({"jti": format!("crafted-{n}"), "htm": self.htm, "htu": self.htu, "iat": self.iat,
               "ath": token_hash(self.token)})
    }
}

/// A compact JWS of `header` and `claims` with the signature `sig` makes of the signing input.
fn jws(header: &Value, claims: &Value, sig: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let s = sig(input.as_bytes());
    format!("{input}.{}", b64(&s))
}

/// A proof whose `jwk` carries the private key (`d`), properly signed by that key.
fn private_jwk_proof(spec: &ProofSpec<'_>) -> String {
    let mut jwk = spec.key.public_jwk().to_json();
    jwk.as_object_mut().unwrap().remove("kid");
    jwk["d"] = json!(b64(&[7u8; 32]));
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    jws(&header, &spec.claims(), |m| spec.key.sign(m).unwrap())
}

/// An unsigned proof (`alg` `none`, an empty signature).
fn alg_none_proof(spec: &ProofSpec<'_>) -> String {
    let mut jwk = spec.key.public_jwk().to_json();
    jwk.as_object_mut().unwrap().remove("kid");
    let header = json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk});
    jws(&header, &spec.claims(), |_| Vec::new())
}

/// A proof MACed with a symmetric key it carries (`alg` HS256, an `oct` jwk).
fn alg_hs256_proof(spec: &ProofSpec<'_>) -> String {
    let secret = [9u8; 32];
    let header = json!({"typ": "dpop+jwt", "alg": "HS256",
                        "jwk": {"kty": "oct", "k": b64(&secret)}});
    jws(&header, &spec.claims(), |m| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        ring::hmac::sign(&key, m).as_ref().to_vec()
    })
}

// ---------------------------------------------------------------------------------------------
// The upstream behind the gateway: records what reaches it.

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Upstream {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn upstream() -> (Upstream, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let up = Upstream::default();
    let record = up.seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    record.lock().unwrap().push(req.headers().clone());
                    async move {
                        let _ = req.into_body().collect().await;
                        let mut resp = Response::new(Full::new(Bytes::from(
                            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                        )));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (up, url)
}

// ---------------------------------------------------------------------------------------------
// The three resource-server sides.

/// An answer as a client sees it.
struct Answer {
    status: u16,
    /// Every `WWW-Authenticate` value, in order.
    challenges: Vec<String>,
    nonce: Option<String>,
    body: Value,
    text: String,
}

fn answer(status: StatusCode, headers: &HeaderMap, bytes: &[u8]) -> Answer {
    Answer {
        status: status.as_u16(),
        challenges: headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect(),
        nonce: headers
            .get("dpop-nonce")
            .map(|v| v.to_str().unwrap().to_string()),
        body: serde_json::from_slice(bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// One request to a resource server: how the token is presented, with which `DPoP` headers.
struct Call<'a> {
    scheme: &'a str,
    token: &'a str,
    proofs: Vec<String>,
    body: Value,
}

fn headers_of(call: &Call<'_>) -> Vec<(String, String)> {
    let mut h = vec![
        ("content-type".to_string(), "application/json".to_string()),
        (
            "accept".to_string(),
            "application/json, text/event-stream".to_string(),
        ),
        (
            "authorization".to_string(),
            format!("{} {}", call.scheme, call.token),
        ),
    ];
    h.extend(call.proofs.iter().map(|p| ("dpop".to_string(), p.clone())));
    h
}

/// The guard in process, in front of a handler, as `Protected::mcp` mounts it.
async fn through_guard(guard: &Arc<Guard>, call: &Call<'_>) -> Answer {
    use hyper::service::Service;
    let handler = hyper::service::service_fn(|_req: Request<GuardedBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let svc = Protected::mcp(guard.clone(), handler);
    let mut req = Request::builder().method(Method::POST).uri("/mcp");
    for (k, v) in headers_of(call) {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(call.body.to_string())))
        .unwrap();
    let resp = svc.call(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    answer(parts.status, &parts.headers, &bytes)
}

/// HTTP through the gateway at `gw` (`http://addr`).
async fn through_gateway(gw: &str, call: &Call<'_>) -> Answer {
    let headers = headers_of(call);
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, headers, bytes) = raw_request(
        gw,
        Method::POST,
        "/mcp",
        &refs,
        call.body.to_string().into_bytes(),
    )
    .await;
    answer(status, &headers, &bytes)
}

/// One HTTP/1.1 request on its own connection: status, headers (repeats kept), body.
async fn raw_request(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let authority = base.strip_prefix("http://").unwrap();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(driver);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()),
    )
    .await
    .expect("no answer")
    .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn call_tool(name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": name, "arguments": {}}})
}

fn guard_config(d: &Daemon, resource: &str, server_id: &str, public_url: &str) -> GuardConfig {
    GuardConfig::new(&d.url, resource)
        .server_id(server_id)
        .public_url(public_url)
        // The shared manual clock moves by minutes: no staleness from it.
        .max_staleness(Duration::from_secs(3600))
        .poll_interval(Duration::from_millis(100))
}

/// Start the gateway in process (the code `toolgate gateway` runs) with `guard` on `listener`.
async fn gateway(
    d: &Daemon,
    listener: TcpListener,
    cfg: GuardConfig,
    upstream: &str,
) -> (String, Arc<Guard>) {
    let listen = listener.local_addr().unwrap();
    let guard = Guard::connect(cfg.clone(), d.clock.clone()).await.unwrap();
    let gw = GatewayConfig {
        listen,
        upstream: upstream.to_string(),
        upstream_tls: Default::default(),
        guard: cfg,
        mcp_path: "/mcp".into(),
        routes: Vec::new(),
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: Default::default(),
    };
    tokio::spawn(toolgate::gateway::serve(
        listener,
        guard.clone(),
        gw,
        std::future::pending(),
    ));
    (format!("http://{listen}"), guard)
}

/// A token for `audience` bound to `key` by the token endpoint (a proof on the exchange).
async fn bound_token(d: &Daemon, key: &SigningKey, audience: &str) -> String {
    let proof = sign_proof(
        key,
        &ProofClaims {
            htm: "POST",
            htu: &format!("{}/v1/exchange/token", d.url),
            access_token: None,
            nonce: None,
            iat: d.clock_now(),
        },
    )
    .unwrap();
    let body = exchange_body(&stub(json!({"sub": "agent-1"})), audience).to_string();
    let (status, _, resp) = request_full(
        Method::POST,
        &d.url,
        "/v1/exchange/token",
        &[("content-type", "application/json"), ("dpop", &proof)],
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["token_type"], "DPoP");
    let token = resp["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        claims_of(&token)["cnf"]["jkt"],
        json!(key.public_jwk().thumbprint())
    );
    token
}

async fn register(d: &Daemon, tool: Value) {
    let (status, body) = d.call(Method::POST, "/v1/tools", Some(tool)).await;
    assert_eq!(status, 201, "{body}");
}

/// The daemon with `deploy` (DPoP required) on server "s" and `search` (plain) on server "p",
/// and a bearer token for `deploy` minted before it required DPoP (what an attacker might
/// still hold).
async fn daemon() -> (Daemon, String) {
    let d = Daemon::dev().await;
    register(
        &d,
        json!({"tool_id": "deploy", "resource_uri": DEPLOY, "server_id": "s"}),
    )
    .await;
    register(
        &d,
        json!({"tool_id": "search", "resource_uri": SEARCH, "server_id": "p"}),
    )
    .await;
    let unbound = d.token_for("agent-1", DEPLOY).await;
    let (status, body) = d
        .call(
            Method::PUT,
            "/v1/tools/deploy",
            Some(
                json!({"tool_id": "deploy", "resource_uri": DEPLOY, "server_id": "s",
                        "sender_constraint": "dpop"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (d, unbound)
}

// ---------------------------------------------------------------------------------------------
// The table.

/// What a row sends: a scheme, a token, and the proofs of its `DPoP` header(s).
#[derive(Clone, Copy, Debug)]
enum Attempt {
    NoProof,
    ForeignKey,
    Replayed,
    OtherMethod,
    OtherUrl,
    IatFuture,
    IatTooOld,
    WrongAth,
    PrivateJwk,
    AlgNone,
    AlgHs256,
    TwoHeaders,
    BearerWithBoundToken,
    UnboundTokenAtDpopTool,
    Fresh,
}

/// The expected answer: `Ok` for allowed, else the wire error code and the fixed description
/// (the same sentence at REST verify, where it is a 403 `verification_failed` of check `dpop`).
struct Expect {
    code: Option<&'static str>,
    description: &'static str,
    /// REST verify's reason where it differs (a missing `DPoP` header is the guard's own
    /// refusal; REST verify has no header, only a missing `dpop_proof`). `None`: no REST row.
    rest: Option<&'static str>,
}

const BOUND_WITHOUT_PROOF: &str = "token is DPoP-bound and was presented without a DPoP proof";

fn expect(a: Attempt) -> Expect {
    use Attempt::*;
    let proof = |description| Expect {
        code: Some("invalid_dpop_proof"),
        description,
        rest: Some(description),
    };
    match a {
        NoProof => Expect {
            code: Some("invalid_dpop_proof"),
            description: "DPoP proof is missing",
            rest: Some(BOUND_WITHOUT_PROOF),
        },
        ForeignKey => proof("DPoP proof key does not match the token binding"),
        Replayed => proof("DPoP proof was already used"),
        OtherMethod => proof("DPoP proof htm does not match the request method"),
        OtherUrl => proof("DPoP proof htu does not match the request URL"),
        IatFuture => proof("DPoP proof iat is in the future"),
        IatTooOld => proof("DPoP proof iat is too old"),
        WrongAth => proof("DPoP proof ath does not match the access token"),
        PrivateJwk => proof("DPoP proof jwk must not contain a private key"),
        AlgNone | AlgHs256 => {
            proof("DPoP proof algorithm is not allowed or does not match its key")
        }
        TwoHeaders => Expect {
            code: Some("invalid_dpop_proof"),
            description: "more than one DPoP proof",
            rest: None,
        },
        BearerWithBoundToken => Expect {
            code: Some("invalid_token"),
            description: BOUND_WITHOUT_PROOF,
            rest: Some(BOUND_WITHOUT_PROOF),
        },
        UnboundTokenAtDpopTool => Expect {
            code: Some("invalid_token"),
            description: "tool requires a DPoP-bound token",
            rest: Some("tool requires a DPoP-bound token"),
        },
        Fresh => Expect {
            code: None,
            description: "",
            rest: Some(""),
        },
    }
}

/// The tokens and keys of the table.
struct Keys<'a> {
    holder: &'a SigningKey,
    thief: &'a SigningKey,
    bound: &'a str,
    unbound: &'a str,
}

/// The scheme, token and proofs an attempt sends to a server whose request URL is `url`.
fn attempt<'a>(
    a: Attempt,
    k: &Keys<'a>,
    url: &str,
    now: i64,
) -> (&'static str, &'a str, Vec<String>) {
    use Attempt::*;
    let spec = ProofSpec {
        key: k.holder,
        htm: "POST",
        htu: url.to_string(),
        token: k.bound,
        iat: now,
        nonce: None,
    };
    let one = |s: ProofSpec<'_>| vec![s.made()];
    let proofs = match a {
        NoProof | BearerWithBoundToken | UnboundTokenAtDpopTool => Vec::new(),
        ForeignKey => one(ProofSpec {
            key: k.thief,
            ..spec.clone()
        }),
        Replayed | Fresh => one(spec.clone()),
        OtherMethod => one(ProofSpec {
            htm: "GET",
            ..spec.clone()
        }),
        OtherUrl => one(ProofSpec {
            htu: format!("{url}/other"),
            ..spec.clone()
        }),
        IatFuture => one(ProofSpec {
            iat: now + 61,
            ..spec.clone()
        }),
        IatTooOld => one(ProofSpec {
            iat: now - 61,
            ..spec.clone()
        }),
        WrongAth => one(ProofSpec {
            token: k.unbound,
            ..spec.clone()
        }),
        PrivateJwk => vec![private_jwk_proof(&spec)],
        AlgNone => vec![alg_none_proof(&spec)],
        AlgHs256 => vec![alg_hs256_proof(&spec)],
        TwoHeaders => vec![spec.made(), spec.made()],
    };
    match a {
        BearerWithBoundToken => ("Bearer", k.bound, proofs),
        UnboundTokenAtDpopTool => ("Bearer", k.unbound, proofs),
        _ => ("DPoP", k.bound, proofs),
    }
}

/// Check a resource server's answer against the row: status, the one `DPoP` challenge (this
/// server requires DPoP, so it offers no `Bearer` one), the JSON error, and that nothing of
/// the token, the proof or the key's thumbprint is echoed.
fn check_refusal(side: &str, a: Attempt, r: &Answer, meta: &str, secrets: &[&str]) {
    let e = expect(a);
    let Some(code) = e.code else {
        assert_eq!(r.status, 200, "{side} {a:?}: {}", r.text);
        return;
    };
    assert_eq!(r.status, 401, "{side} {a:?}: {}", r.text);
    assert_eq!(
        r.challenges,
        vec![format!(
            "DPoP error=\"{code}\", error_description=\"{}\", algs=\"{ALGS}\", resource_metadata=\"{meta}\"",
            e.description
        )],
        "{side} {a:?}"
    );
    assert_eq!(r.body["error"], code, "{side} {a:?}");
    assert_eq!(r.body["error_description"], e.description, "{side} {a:?}");
    assert_eq!(r.body["check"], "dpop", "{side} {a:?}");
    assert_eq!(r.nonce, None, "{side} {a:?}: nonces are off");
    for s in secrets {
        assert!(!r.text.contains(s), "{side} {a:?} echoed a secret");
        assert!(
            r.challenges.iter().all(|c| !c.contains(s)),
            "{side} {a:?} echoed a secret in its challenge"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_of_a_stolen_bound_token_alike_at_verify_the_guard_and_the_gateway() {
    let (d, unbound) = daemon().await;
    let (up, up_url) = upstream().await;
    let guard = Guard::connect(guard_config(&d, SERVER, "s", PUBLIC), d.clock.clone())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_url = format!("http://{}", listener.local_addr().unwrap());
    let (gw, _gw_guard) = gateway(
        &d,
        listener,
        guard_config(&d, SERVER, "s", &gw_url),
        &up_url,
    )
    .await;
    // Past every side's start plus the window: proofs dated now are fresh everywhere.
    d.clock.advance(61);
    let holder = SigningKey::generate().unwrap();
    let thief = SigningKey::generate().unwrap();
    let bound = bound_token(&d, &holder, DEPLOY).await;
    let keys = Keys {
        holder: &holder,
        thief: &thief,
        bound: &bound,
        unbound: &unbound,
    };
    let jkt = holder.public_jwk().thumbprint();
    let guard_url = format!("{PUBLIC}/mcp");
    let gw_mcp = format!("{gw}/mcp");
    let rest_url = "https://tools.example.com/mcp";

    use Attempt::*;
    let table = [
        NoProof,
        ForeignKey,
        Replayed,
        OtherMethod,
        OtherUrl,
        IatFuture,
        IatTooOld,
        WrongAth,
        PrivateJwk,
        AlgNone,
        AlgHs256,
        TwoHeaders,
        BearerWithBoundToken,
        UnboundTokenAtDpopTool,
        Fresh,
    ];
    let mut allowed_upstream = 0;
    for a in table {
        let now = d.clock_now();
        let e = expect(a);

        // REST verify: the tool server reports the proof, its method and URL.
        if let Some(reason) = e.rest {
            let (_, token, proofs) = attempt(a, &keys, rest_url, now);
            let verify = |proof: Option<String>| {
                let mut body = json!({"token": token, "tool_id": "deploy",
                                      "htm": "POST", "htu": rest_url});
                if let Some(p) = proof {
                    body["dpop_proof"] = json!(p);
                }
                d.call(Method::POST, "/v1/mcp/verify", Some(body))
            };
            if matches!(a, Replayed) {
                let (status, body) = verify(proofs.first().cloned()).await;
                assert_eq!(status, 200, "verify {a:?} first use: {body}");
            }
            let (status, body) = verify(proofs.first().cloned()).await;
            if e.code.is_none() {
                assert_eq!(status, 200, "verify {a:?}: {body}");
                assert_eq!(body["verified"], true);
            } else {
                assert_eq!(status, 403, "verify {a:?}: {body}");
                assert_eq!(body["error"], "verification_failed", "verify {a:?}");
                assert_eq!(body["check"], "dpop", "verify {a:?}");
                assert_eq!(body["error_description"], reason, "verify {a:?}");
                let text = body.to_string();
                assert!(
                    !text.contains(&jkt) && !text.contains(token),
                    "verify {a:?}"
                );
            }
        }

        // The guard, in process.
        let (scheme, token, proofs) = attempt(a, &keys, &guard_url, now);
        let call = Call {
            scheme,
            token,
            proofs: proofs.clone(),
            body: call_tool("deploy"),
        };
        if matches!(a, Replayed) {
            assert_eq!(through_guard(&guard, &call).await.status, 200);
        }
        let r = through_guard(&guard, &call).await;
        let mut secrets: Vec<&str> = vec![token, &jkt];
        secrets.extend(proofs.iter().map(String::as_str));
        check_refusal(
            "guard",
            a,
            &r,
            &format!("{PUBLIC}{METADATA_PATH}"),
            &secrets,
        );

        // The gateway, over HTTP, to the upstream.
        let (scheme, token, proofs) = attempt(a, &keys, &gw_mcp, now);
        let call = Call {
            scheme,
            token,
            proofs: proofs.clone(),
            body: call_tool("deploy"),
        };
        if matches!(a, Replayed) {
            assert_eq!(through_gateway(&gw, &call).await.status, 200);
            allowed_upstream += 1;
        }
        let r = through_gateway(&gw, &call).await;
        let mut secrets: Vec<&str> = vec![token, &jkt];
        secrets.extend(proofs.iter().map(String::as_str));
        check_refusal("gateway", a, &r, &format!("{gw}{METADATA_PATH}"), &secrets);
        if e.code.is_none() {
            allowed_upstream += 1;
        }
        assert_eq!(
            up.count(),
            allowed_upstream,
            "gateway {a:?}: what reached the upstream"
        );
    }
    // The upstream never sees the caller's token or proof.
    for headers in up.seen.lock().unwrap().iter() {
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("dpop").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_spends_its_one_proof_once() {
    let (d, _) = daemon().await;
    let (up, up_url) = upstream().await;
    let guard = Guard::connect(guard_config(&d, SERVER, "s", PUBLIC), d.clock.clone())
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_url = format!("http://{}", listener.local_addr().unwrap());
    let (gw, _) = gateway(
        &d,
        listener,
        guard_config(&d, SERVER, "s", &gw_url),
        &up_url,
    )
    .await;
    d.clock.advance(61);
    let holder = SigningKey::generate().unwrap();
    let bound = bound_token(&d, &holder, DEPLOY).await;
    // Two targets, two decisions (the server, then the tool), one HTTP request, one proof.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {}},
        call_tool("deploy"),
    ]);
    for (side, url) in [
        ("guard", format!("{PUBLIC}/mcp")),
        ("gateway", format!("{gw}/mcp")),
    ] {
        let proof = ProofSpec {
            key: &holder,
            htm: "POST",
            htu: url,
            token: &bound,
            iat: d.clock_now(),
            nonce: None,
        }
        .made();
        let call = Call {
            scheme: "DPoP",
            token: &bound,
            proofs: vec![proof],
            body: batch.clone(),
        };
        let send = || async {
            match side {
                "guard" => through_guard(&guard, &call).await,
                _ => through_gateway(&gw, &call).await,
            }
        };
        let r = send().await;
        assert_eq!(r.status, 200, "{side}: {}", r.text);
        // The same request again is a replay, refused before anything is forwarded.
        let r = send().await;
        assert_eq!(r.status, 401, "{side}");
        assert_eq!(r.body["error_description"], "DPoP proof was already used");
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_bearer_tokens_are_accepted_both_challenges_are_offered() {
    let (d, _) = daemon().await;
    let guard = Guard::connect(guard_config(&d, PLAIN_SERVER, "p", PUBLIC), d.clock.clone())
        .await
        .unwrap();
    d.clock.advance(61);
    let meta = format!("{PUBLIC}{METADATA_PATH}");
    let bare_bearer = format!("Bearer resource_metadata=\"{meta}\"");
    let bare_dpop = format!("DPoP algs=\"{ALGS}\", resource_metadata=\"{meta}\"");
    let holder = SigningKey::generate().unwrap();
    let bound = bound_token(&d, &holder, SEARCH).await;
    let bearer = d.token_for("agent-1", SEARCH).await;
    let url = format!("{PUBLIC}/mcp");
    let proof = |token: &str| {
        ProofSpec {
            key: &holder,
            htm: "POST",
            htu: url.clone(),
            token,
            iat: d.clock_now(),
            nonce: None,
        }
        .made()
    };
    let send = |scheme: &'static str, token: String, proofs: Vec<String>| {
        let guard = guard.clone();
        async move {
            let call = Call {
                scheme,
                token: &token,
                proofs,
                body: call_tool("search"),
            };
            through_guard(&guard, &call).await
        }
    };

    // No token: both bare challenges, Bearer first.
    let r = send("Bearer", String::new(), Vec::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.challenges, vec![bare_bearer.clone(), bare_dpop.clone()]);
    // Both schemes work here (the scheme's name in any case).
    let r = send("Bearer", bearer.clone(), Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send("dpop", bound.clone(), vec![proof(&bound)]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A token fault goes in the challenge of the scheme the token came with.
    let r = send("Bearer", bound.clone(), Vec::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.challenges,
        vec![
            format!("Bearer error=\"invalid_token\", error_description=\"{BOUND_WITHOUT_PROOF}\", resource_metadata=\"{meta}\""),
            bare_dpop.clone(),
        ]
    );
    // A proof with an unbound token is the token's fault, in the DPoP challenge.
    let r = send("DPoP", bearer.clone(), vec![proof(&bearer)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.challenges,
        vec![
            bare_bearer.clone(),
            format!("DPoP error=\"invalid_token\", error_description=\"a DPoP proof was presented with a token that is not DPoP-bound\", algs=\"{ALGS}\", resource_metadata=\"{meta}\""),
        ]
    );
    // A proof's fault: the DPoP challenge only carries it.
    let r = send("DPoP", bound.clone(), Vec::new()).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.challenges,
        vec![
            bare_bearer.clone(),
            format!("DPoP error=\"invalid_dpop_proof\", error_description=\"DPoP proof is missing\", algs=\"{ALGS}\", resource_metadata=\"{meta}\""),
        ]
    );
    // The metadata says DPoP is accepted and not required here; required where a tool needs it.
    let m = guard.metadata();
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        json!(ALGS.split(' ').collect::<Vec<_>>())
    );
    assert_eq!(m["dpop_bound_access_tokens_required"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_metadata_states_dpop() {
    let (d, _) = daemon().await;
    let (_, up_url) = upstream().await;
    for (resource, server_id, required) in [(SERVER, "s", true), (PLAIN_SERVER, "p", false)] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_url = format!("http://{}", listener.local_addr().unwrap());
        let (gw, _) = gateway(
            &d,
            listener,
            guard_config(&d, resource, server_id, &gw_url),
            &up_url,
        )
        .await;
        let (status, _, body) = raw_request(&gw, Method::GET, METADATA_PATH, &[], Vec::new()).await;
        assert_eq!(status, 200);
        let m: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(m["resource"], resource);
        assert_eq!(
            m["dpop_signing_alg_values_supported"],
            json!(["ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"])
        );
        assert_eq!(
            m["dpop_bound_access_tokens_required"], required,
            "{resource}"
        );
        assert_eq!(m["tls_client_certificate_bound_access_tokens"], false);
    }
}

// ---------------------------------------------------------------------------------------------
// Nonces, through the binary: `toolgate gateway --dpop-nonce` (its own clock is the system's).

/// A `toolgate gateway` child process on `127.0.0.1:0`; killed when dropped.
struct GatewayProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(args: &[&str]) -> GatewayProcess {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("gateway")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut seen = String::new();
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if let Some(t) = &tx {
                seen.push_str(&line);
                seen.push('\n');
                if let Some((_, rest)) = line.split_once("toolgate gateway on http://") {
                    let addr = rest.split(' ').next().unwrap_or_default().to_string();
                    let _ = t.send(Ok(addr));
                    tx = None;
                }
            }
        }
        if let Some(t) = tx {
            let _ = t.send(Err(seen));
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(addr)) => GatewayProcess {
            child,
            url: format!("http://{addr}"),
        },
        Ok(Err(log)) => panic!("toolgate gateway exited before listening:\n{log}"),
        Err(_) => {
            let _ = child.kill();
            panic!("toolgate gateway did not report its address within 60 s");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dpop_nonce_the_gateway_asks_for_its_nonce_and_takes_it() {
    // The daemon asks for its own nonces too (no restart rule, as for the gateway).
    let d = Daemon::with(|c| {
        c.dev = true;
        c.dpop_nonce = true;
    })
    .await;
    register(
        &d,
        json!({"tool_id": "deploy", "resource_uri": DEPLOY, "server_id": "s",
               "sender_constraint": "dpop"}),
    )
    .await;
    let holder = SigningKey::generate().unwrap();
    // The token endpoint's nonce dance, then a bound token.
    let exchange = |nonce: Option<String>| {
        let proof = sign_proof(
            &holder,
            &ProofClaims {
                htm: "POST",
                htu: &format!("{}/v1/exchange/token", d.url),
                access_token: None,
                nonce: nonce.as_deref(),
                iat: d.clock_now(),
            },
        )
        .unwrap();
        let body = exchange_body(&stub(json!({"sub": "agent-1"})), DEPLOY).to_string();
        let url = d.url.clone();
        async move {
            request_full(
                Method::POST,
                &url,
                "/v1/exchange/token",
                &[("content-type", "application/json"), ("dpop", &proof)],
                body.into_bytes(),
            )
            .await
        }
    };
    let (status, headers, body) = exchange(None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_string();
    let (status, _, body) = exchange(Some(nonce)).await;
    assert_eq!(status, 200, "{body}");
    let bound = body["access_token"].as_str().unwrap().to_string();

    let (up, up_url) = upstream().await;
    // A window or a flag out of range stops the gateway before it listens.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--upstream", &up_url])
        .args([
            "--server-id",
            "s",
            "--resource",
            SERVER,
            "--dpop-window",
            "301",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--dpop-window"));

    let gw = spawn_gateway(&[
        "--toolgate",
        &d.url,
        "--upstream",
        &up_url,
        "--server-id",
        "s",
        "--resource",
        SERVER,
        "--public-url",
        GATEWAY_PUBLIC,
        "--dpop-nonce",
    ]);
    // Proofs name the gateway's configured public URL, whatever the connection's address.
    let mcp = format!("{GATEWAY_PUBLIC}/mcp");
    // The gateway judges by the system clock; the proofs are dated by it.
    let proof = |nonce: Option<String>| {
        ProofSpec {
            key: &holder,
            htm: "POST",
            htu: mcp.clone(),
            token: &bound,
            iat: SystemClock.now(),
            nonce,
        }
        .made()
    };
    let call = |proof: String| Call {
        scheme: "DPoP",
        token: &bound,
        proofs: vec![proof],
        body: call_tool("deploy"),
    };
    // No nonce: 401 use_dpop_nonce, and the nonce to use.
    let r = through_gateway(&gw.url, &call(proof(None))).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"], "use_dpop_nonce");
    assert_eq!(
        r.challenges,
        vec![format!(
            "DPoP error=\"use_dpop_nonce\", error_description=\"DPoP proof needs the server's current nonce\", algs=\"{ALGS}\", resource_metadata=\"{GATEWAY_PUBLIC}{METADATA_PATH}\""
        )]
    );
    let nonce = r.nonce.expect("a DPoP-Nonce header");
    // A nonce of another server (the daemon's) is no nonce here.
    let (_, headers, _) = exchange(None).await;
    let daemons = headers["dpop-nonce"].to_str().unwrap().to_string();
    let r = through_gateway(&gw.url, &call(proof(Some(daemons)))).await;
    assert_eq!(r.body["error"], "use_dpop_nonce", "{}", r.text);
    assert_eq!(up.count(), 0);
    // With the gateway's nonce: through, and the answer carries a fresh nonce.
    let r = through_gateway(&gw.url, &call(proof(Some(nonce)))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.nonce.is_some());
    assert_eq!(up.count(), 1);
}
