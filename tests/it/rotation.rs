//! toolgate's own signing-key rotation (issue #15 part 2): `POST /v1/keys/rotate` publishes a new
//! key at once and signs with it only after the publish-ahead period; the old key stays
//! published until the last token it signed has expired (plus leeway), then is retired; states
//! survive a restart, keys kept in `--signing-key-file` rotate beside it, `key_rotation_days`
//! rotates on schedule, and a guard in front of a tool never refuses a token across rotations.
//! Time moves by the daemon's manual clock.

use super::harness::*;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use toolgate::clock::Clock;
use toolgate::credentials::Credential;
use toolgate::gateway::GatewayConfig;
use toolgate::guard::{Guard, GuardConfig};
use toolgate::verify::{DecisionRequest, Target};

const RESOURCE: &str = "https://mcp.example.com/srv/search";
const SERVER: &str = "https://mcp.example.com/srv";
const READER: &str = "read-only-token-0123456789";
const REPORTER: &str = "reporter-token-0123456789";
/// The defaults: 600 s publish-ahead; tokens live 300 s, plus 60 s leeway.
const AHEAD: i64 = 600;
const KEPT: i64 = 360;

async fn dev() -> Daemon {
    Daemon::with(|c| c.dev = true).await
}

async fn rotate(d: &Daemon, body: Option<Value>) -> (u16, Value) {
    d.call(Method::POST, "/v1/keys/rotate", body).await
}

async fn rotated(d: &Daemon, alg: &str) -> Value {
    let (status, body) = rotate(d, Some(json!({ "alg": alg }))).await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn jwks_kids(d: &Daemon) -> Vec<String> {
    let (status, jwks) = d.call(Method::GET, "/v1/identity/jwks", None).await;
    assert_eq!(status, 200, "{jwks}");
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// `GET /v1/keys`: kid → state.
async fn states(d: &Daemon) -> Vec<(String, String)> {
    let (status, body) = d.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200, "{body}");
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn kid_of(token: &str) -> String {
    header_of(token)["kid"].as_str().unwrap().to_string()
}

async fn token(d: &Daemon) -> String {
    d.token_for("agent-1", RESOURCE).await
}

async fn assert_verifies(d: &Daemon, token: &str) {
    let (status, body) = d.verify(token, "search").await;
    assert_eq!(status, 200, "{body}");
}

fn rfc3339(t: i64) -> String {
    toolgate::clock::rfc3339(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_published_at_once_and_signs_after_the_publish_ahead() {
    let d = dev().await;
    d.register("search", RESOURCE).await;
    let t0 = d.clock_now();
    let first = token(&d).await;
    let old = kid_of(&first);
    assert_eq!(jwks_kids(&d).await, [old.as_str()]);

    let body = rotated(&d, "ES256").await;
    let new = body["key"]["kid"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(body["status"], "rotated");
    assert_eq!(body["key"]["alg"], "ES256");
    assert_eq!(body["key"]["state"], "next");
    assert_eq!(body["key"]["signs_from"], rfc3339(t0 + AHEAD));
    assert_eq!(body["key"]["private_key"], "database");
    assert!(body["key"]["jwk"].get("d").is_none(), "{body}");
    assert_eq!(body["previous"]["kid"], old.as_str());
    assert_eq!(body["previous"]["state"], "active");
    assert_eq!(body["previous"]["signs_until"], rfc3339(t0 + AHEAD));
    assert_eq!(body["previous"]["not_after"], rfc3339(t0 + AHEAD + KEPT));
    // Published at once, the signing key first; tokens are still signed by the old key.
    assert_eq!(jwks_kids(&d).await, [old.as_str(), new.as_str()]);
    assert_eq!(kid_of(&token(&d).await), old);
    assert_eq!(
        states(&d).await,
        [(old.clone(), "active".into()), (new.clone(), "next".into())]
    );

    // One rotation at a time: a second is refused while the new key waits, nothing changes.
    let (status, body) = rotate(&d, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "rotation_pending");
    assert!(
        body["error_description"].as_str().unwrap().contains(&new),
        "{body}"
    );
    assert_eq!(jwks_kids(&d).await.len(), 2);

    // The clock, not a restart, moves signing to the new key.
    d.clock.advance(AHEAD - 1);
    let last_of_old = token(&d).await;
    assert_eq!(kid_of(&last_of_old), old);
    d.clock.advance(1);
    let first_of_new = token(&d).await;
    assert_eq!(kid_of(&first_of_new), new);
    assert_eq!(jwks_kids(&d).await, [new.as_str(), old.as_str()]);
    assert_eq!(
        states(&d).await,
        [
            (old.clone(), "retiring".into()),
            (new.clone(), "active".into())
        ]
    );
    assert_verifies(&d, &last_of_old).await;
    assert_verifies(&d, &first_of_new).await;

    // The old key's last token (signed a second before the switch) verifies until its expiry
    // plus leeway; the old key is published a second longer, then leaves the JWKS.
    d.clock.set(t0 + AHEAD + KEPT - 2);
    assert_verifies(&d, &last_of_old).await;
    d.clock.advance(1);
    let (status, body) = d.verify(&last_of_old, "search").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["check"], "expired");
    assert!(jwks_kids(&d).await.contains(&old));
    d.clock.advance(1);
    assert_eq!(jwks_kids(&d).await, [new.as_str()]);
    assert_eq!(
        states(&d).await,
        [
            (old.clone(), "retired".into()),
            (new.clone(), "active".into())
        ]
    );

    // The timer retires it: its private half is overwritten, its public half is kept.
    let private_len = |kid: &str| -> i64 {
        let conn = rusqlite::Connection::open(d.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(
            "SELECT length(pkcs8) FROM signing_keys WHERE kid = ?1",
            [kid],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(private_len(&old) > 0);
    d.key_upkeep().await;
    assert_eq!(private_len(&old), 0);
    assert!(private_len(&new) > 0);
    let (_, listed) = d.call(Method::GET, "/v1/keys", None).await;
    let retired = &listed["keys"][0];
    assert_eq!(retired["kid"], old.as_str());
    assert_eq!(retired["private_key"], "removed");
    assert_eq!(retired["jwk"]["kid"], old.as_str());
    assert_eq!(listed["publish_ahead_seconds"], AHEAD);
    assert_eq!(listed["published_after_signing_seconds"], KEPT);

    // Audited: the rotation (committed before the answer) and the retirement; counted.
    let (status, audit) = d
        .call(Method::GET, "/v1/audit?kind=admin&decision=rotated", None)
        .await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["count"], 1, "{audit}");
    assert_eq!(audit["events"][0]["target"], new.as_str());
    assert_eq!(audit["events"][0]["subject"], "dev");
    assert!(
        audit["events"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("ES256 key, published now, signs from"),
        "{audit}"
    );
    let (_, audit) = d
        .call(Method::GET, "/v1/audit?decision=retired", None)
        .await;
    assert_eq!(audit["events"][0]["target"], old.as_str(), "{audit}");
    let text = metrics_text(&d).await;
    assert!(text.contains("toolgate_key_rotations_total 1"), "{text}");
    assert!(
        text.contains("toolgate_signing_keys{state=\"active\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("toolgate_signing_keys{state=\"retired\"} 1"),
        "{text}"
    );
    d.stop().await;
}

async fn metrics_text(d: &Daemon) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = d.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eddsa_key_can_be_chosen() {
    let d = dev().await;
    d.register("search", RESOURCE).await;
    let body = rotated(&d, "EdDSA").await;
    assert_eq!(body["key"]["alg"], "EdDSA");
    assert_eq!(body["key"]["jwk"]["kty"], "OKP");
    assert_eq!(body["key"]["jwk"]["crv"], "Ed25519");
    d.clock.advance(AHEAD);
    let t = token(&d).await;
    assert_eq!(header_of(&t)["alg"], "EdDSA");
    assert_eq!(kid_of(&t), body["key"]["kid"].as_str().unwrap());
    assert_verifies(&d, &t).await;
    // And back to ES256 with a body-less rotation.
    let (status, body) = rotate(&d, None).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["key"]["alg"], "ES256");
    assert_eq!(body["previous"]["alg"], "EdDSA");
    d.stop().await;
}

/// Admin only; bad input is a 4xx that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_for_the_admin_and_bad_input_changes_nothing() {
    let d = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.read_token = Some(Credential::new(READER).unwrap());
        c.reporter_token = Some(Credential::new(REPORTER).unwrap());
    })
    .await;
    let post = |auth: Option<&'static str>, ctype: Option<&'static str>, body: &'static str| {
        let url = d.url.clone();
        async move {
            let mut headers = Vec::new();
            let bearer = auth.map(|a| format!("Bearer {a}"));
            if let Some(b) = &bearer {
                headers.push(("authorization", b.as_str()));
            }
            if let Some(t) = ctype {
                headers.push(("content-type", t));
            }
            let (status, _, body) = request_full(
                Method::POST,
                &url,
                "/v1/keys/rotate",
                &headers,
                body.as_bytes().to_vec(),
            )
            .await;
            (status, body)
        }
    };
    let get = |auth: Option<&'static str>, path: &'static str| {
        let url = d.url.clone();
        async move {
            let bearer = auth.map(|a| format!("Bearer {a}"));
            let headers: Vec<(&str, &str)> = bearer
                .iter()
                .map(|b| ("authorization", b.as_str()))
                .collect();
            get_with_headers(&url, path, &headers).await
        }
    };
    let json = Some("application/json");
    for (auth, status, error) in [
        (None, 401, "unauthorized"),
        (Some("wrong-token-0123456789"), 401, "unauthorized"),
        (Some(READER), 403, "insufficient_scope"),
        (Some(REPORTER), 403, "insufficient_scope"),
    ] {
        let (s, body) = post(auth, json, "{}").await;
        assert_eq!((s, body["error"].as_str()), (status, Some(error)), "{body}");
    }
    for (ctype, body, status, needle) in [
        (
            json,
            r#"{"alg":"RS256"}"#,
            400,
            "alg must be ES256 or EdDSA",
        ),
        (
            json,
            r#"{"alg":"es256"}"#,
            400,
            "alg must be ES256 or EdDSA",
        ),
        (json, r#"{"alg":7}"#, 400, "alg must be ES256 or EdDSA"),
        (json, r#"{"alg":null}"#, 400, "alg must be ES256 or EdDSA"),
        (json, r#"{"alg":"ES256","kid":"x"}"#, 400, "one field, alg"),
        (
            json,
            r#"{"alg":"ES256","alg":"EdDSA"}"#,
            400,
            "no duplicate names",
        ),
        (json, "[]", 400, "JSON object"),
        (json, "{", 400, "JSON object"),
        (Some("text/plain"), "{}", 415, "application/json"),
        (None, r#"{"alg":"ES256"}"#, 415, "application/json"),
    ] {
        let (s, answer) = post(Some(ADMIN), ctype, body).await;
        assert_eq!(s, status, "{body}: {answer}");
        assert!(
            answer["error_description"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {answer}"
        );
    }
    let (status, _) = get(Some(ADMIN), "/v1/keys/rotate").await;
    assert_eq!(status, 405);
    // Nothing changed.
    assert_eq!(jwks_kids(&d).await.len(), 1);

    // The list: admin or read-only.
    for (auth, status) in [
        (None, 401),
        (Some(REPORTER), 403),
        (Some(READER), 200),
        (Some(ADMIN), 200),
    ] {
        let (s, body) = get(auth, "/v1/keys").await;
        assert_eq!(s, status, "{body}");
    }
    let (status, body) = get(Some(ADMIN), "/v1/keys?state=active").await;
    assert_eq!(status, 400, "{body}");

    // The admin's rotation, without a body: 201, audited with its caller.
    let (status, body) = post(Some(ADMIN), None, "").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(jwks_kids(&d).await.len(), 2);
    let (_, audit) = d
        .call(Method::GET, "/v1/audit?decision=rotated", None)
        .await;
    assert_eq!(audit["events"][0]["subject"], "admin", "{audit}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_state() {
    let d = dev().await;
    d.register("search", RESOURCE).await;
    let before = token(&d).await;
    let old = kid_of(&before);
    let new = rotated(&d, "EdDSA").await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = states(&d).await;
    let d = d.restart().await;
    assert_eq!(states(&d).await, listed);
    assert_eq!(jwks_kids(&d).await, [old.as_str(), new.as_str()]);
    // Still waiting: the old key signs, and a second rotation is still refused.
    assert_eq!(kid_of(&token(&d).await), old);
    assert_eq!(rotate(&d, None).await.0, 409);
    assert_verifies(&d, &before).await;
    d.clock.advance(AHEAD);
    let after = token(&d).await;
    assert_eq!(kid_of(&after), new);
    let d = d.restart().await;
    assert_verifies(&d, &after).await;
    assert_eq!(
        states(&d).await,
        [
            (old.clone(), "retiring".into()),
            (new.clone(), "active".into())
        ]
    );
    // Retired while stopped: gone from the JWKS, private half overwritten at start.
    let d = {
        d.clock.advance(KEPT);
        d.restart().await
    };
    assert_eq!(jwks_kids(&d).await, [new.as_str()]);
    let (_, listed) = d.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(listed["keys"][0]["state"], "retired");
    assert_eq!(listed["keys"][0]["private_key"], "removed");
    d.stop().await;
}

/// The schedule: `key_rotation_days` rotates a key that has signed that long, by the app's
/// clock, when the timer runs (called here instead of waiting for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_days_rotates_on_schedule() {
    let d = Daemon::with(|c| {
        c.dev = true;
        c.key_rotation_days = Some(2);
    })
    .await;
    let old = jwks_kids(&d).await;
    d.key_upkeep().await;
    d.clock.advance(2 * 86_400 - 1);
    d.key_upkeep().await;
    assert_eq!(jwks_kids(&d).await, old);
    d.clock.advance(1);
    d.key_upkeep().await;
    let kids = jwks_kids(&d).await;
    assert_eq!(kids.len(), 2, "{kids:?}");
    // Once: the waiting key is not rotated again.
    d.key_upkeep().await;
    assert_eq!(jwks_kids(&d).await, kids);
    let (_, audit) = d
        .call(Method::GET, "/v1/audit?decision=rotated", None)
        .await;
    assert_eq!(audit["count"], 1, "{audit}");
    assert_eq!(audit["events"][0]["subject"], "schedule", "{audit}");
    // The new key signs from the publish-ahead on, and is due itself two days after that.
    d.clock.advance(AHEAD);
    d.key_upkeep().await;
    assert_eq!(
        jwks_kids(&d).await,
        kids[1..]
            .iter()
            .chain(&kids[..1])
            .cloned()
            .collect::<Vec<_>>()
    );
    d.clock.advance(2 * 86_400);
    d.key_upkeep().await;
    let (_, audit) = d
        .call(Method::GET, "/v1/audit?decision=rotated", None)
        .await;
    assert_eq!(audit["count"], 2, "{audit}");
    d.stop().await;
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn private_halves_in(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM signing_keys WHERE length(pkcs8) > 0",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// `--signing-key-file PATH`: the new key is written beside the old one, `PATH.<kid>` (0600),
/// never into the database; a restart finds every key in its state; a retired key's file is
/// overwritten and removed.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_kept_in_files_rotate_beside_the_file() {
    let d = Daemon::with(|c| {
        c.dev = true;
        c.signing_key_file = Some(c.db_path.parent().unwrap().join("signing.pem"));
    })
    .await;
    let file = d.config.signing_key_file.clone().unwrap();
    d.register("search", RESOURCE).await;
    let before = token(&d).await;
    let old = kid_of(&before);
    let body = rotated(&d, "EdDSA").await;
    let new = body["key"]["kid"].as_str().unwrap().to_string();
    assert_eq!(body["key"]["private_key"], "file");
    let beside = toolgate::keys::file_beside(&file, &new);
    assert_eq!(mode_of(&beside), 0o600);
    let pem = std::fs::read_to_string(&beside).unwrap();
    let key =
        toolgate::jose::SigningKey::from_pkcs8(&toolgate::keys::from_pem(&pem).unwrap()).unwrap();
    assert_eq!(key.kid(), new);
    assert_eq!(private_halves_in(&d.db_path()), 0);

    let d = d.restart().await;
    assert_eq!(
        states(&d).await,
        [(old.clone(), "active".into()), (new.clone(), "next".into())]
    );
    assert_verifies(&d, &before).await;
    d.clock.advance(AHEAD - 1);
    let last_old = token(&d).await;
    assert_eq!(kid_of(&last_old), old);
    d.clock.advance(1);
    let after = token(&d).await;
    assert_eq!(kid_of(&after), new);
    assert_eq!(header_of(&after)["alg"], "EdDSA");
    assert_verifies(&d, &last_old).await;
    assert_eq!(private_halves_in(&d.db_path()), 0);

    // The old key retires: its file (PATH itself) is removed; the new one's stays.
    d.clock.advance(KEPT);
    d.key_upkeep().await;
    assert!(!file.exists());
    assert!(beside.exists());
    let d = d.restart().await;
    let fresh = token(&d).await;
    assert_eq!(kid_of(&fresh), new);
    assert_verifies(&d, &fresh).await;
    assert_eq!(jwks_kids(&d).await, [new.as_str()]);
    // The next rotation goes beside the file again, though the file itself is gone.
    let third = rotated(&d, "ES256").await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(toolgate::keys::file_beside(&file, &third).exists());
    assert!(!file.exists());
    d.stop().await;
}

/// The key file of the signing key lost: the daemon refuses to start rather than sign with a
/// key nobody can verify later, naming the file to put back.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_file_refuses_the_start() {
    let d = Daemon::with(|c| {
        c.dev = true;
        c.signing_key_file = Some(c.db_path.parent().unwrap().join("signing.pem"));
    })
    .await;
    let file = d.config.signing_key_file.clone().unwrap();
    let new = rotated(&d, "ES256").await["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    d.clock.advance(AHEAD);
    let config = d.config.clone();
    let clock = d.clock.clone();
    // The temporary directory lives as long as its last holder.
    let _dir = d.dir.clone();
    d.stop().await;
    let beside = toolgate::keys::file_beside(&file, &new);
    let saved = std::fs::read(&beside).unwrap();
    std::fs::remove_file(&beside).unwrap();
    let refused = toolgate::server::start(config.clone(), clock.clone(), std::future::pending())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains(&format!("the signing key {new}")),
        "{refused}"
    );
    assert!(refused.contains(&beside.display().to_string()), "{refused}");
    // Put back, it starts and signs with it.
    toolgate::secret_file::create_private(&beside, &saved).unwrap();
    let running = toolgate::server::start(config, clock, std::future::pending())
        .await
        .unwrap();
    running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// A guard, and a gateway made of it, in front of a tool never refuses across rotations.

/// An upstream that answers every request 200.
async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {}}).to_string();
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(answer)));
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

/// A tools/call through the gateway with `token`: its status.
async fn call_through(gateway: &str, token: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "search", "arguments": {}}});
    let (status, _, answer) = request_full(
        Method::POST,
        gateway,
        "/mcp",
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        body.to_string().into_bytes(),
    )
    .await;
    (status, answer)
}

/// Every decision of a guard over time: each token presented is allowed, at the guard and
/// through the gateway, the first sight of a new kid included.
async fn assert_allowed(guard: &Guard, gateway: &str, tokens: &[&String]) {
    for t in tokens {
        let decision = guard.check(&DecisionRequest::new(t, Target::Tool("search")));
        assert!(decision.is_ok(), "kid {}: {decision:?}", kid_of(t));
        let (status, answer) = call_through(gateway, t).await;
        assert_eq!(status, 200, "kid {}: {answer}", kid_of(t));
    }
}

/// Wait until the guard has finished a refresh round begun after now (its keys are fetched
/// every round here): a round that ends two counts on began after now.
async fn guard_synced(guard: &Guard) {
    let mut rounds = guard.rounds();
    let start = *rounds.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(30), async {
        while *rounds.borrow_and_update() < start + 2 {
            rounds.changed().await.unwrap();
        }
    })
    .await
    .expect("the guard did not sync within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_and_its_gateway_never_refuse_across_rotations() {
    let d = dev().await;
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "search", "resource_uri": RESOURCE, "server_id": "srv"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let cfg = GatewayConfig {
        listen: listener.local_addr().unwrap(),
        upstream: upstream().await,
        upstream_tls: Default::default(),
        // Keys every round (its default is a minute, far below the 10-minute publish-ahead):
        // the test then waits for rounds, not for time.
        guard: GuardConfig::new(&d.url, SERVER)
            .server_id("srv")
            .public_url(&gateway)
            .poll_interval(Duration::from_millis(50))
            .key_refresh(Duration::ZERO)
            .max_staleness(Duration::from_secs(3600)),
        mcp_path: "/mcp".into(),
        routes: Vec::new(),
        max_connections: 64,
        max_batch: toolgate::gateway::DEFAULT_MAX_BATCH,
        allowed_origins: Vec::new(),
        metrics_path: None,
        tls: Default::default(),
    };
    // The guard decides on the daemon's manual clock, as one machine's guard would.
    let clock: Arc<dyn Clock> = d.clock.clone();
    let guard = Guard::connect(cfg.guard.clone(), clock).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(toolgate::gateway::serve(
        listener,
        guard.clone(),
        cfg,
        async move {
            let _ = stopped.await;
        },
    ));

    for alg in ["EdDSA", "ES256"] {
        // A token of the signing key, minted right before the rotation.
        let before = token(&d).await;
        let body = rotated(&d, alg).await;
        let new = body["key"]["kid"].as_str().unwrap().to_string();
        assert_allowed(&guard, &gateway, &[&before]).await;
        guard_synced(&guard).await;
        assert_allowed(&guard, &gateway, &[&before]).await;
        // The last token of the old key, then the first of the new one: the guard has never
        // seen the new kid in a token, and allows it.
        d.clock.advance(AHEAD - 1);
        let last_old = token(&d).await;
        d.clock.advance(1);
        let first_new = token(&d).await;
        assert_ne!(kid_of(&last_old), new);
        assert_eq!(kid_of(&first_new), new);
        assert_allowed(&guard, &gateway, &[&last_old, &first_new]).await;
        // Until the old key's last token expires (plus leeway), both keep passing.
        d.clock.advance(KEPT - 2);
        guard_synced(&guard).await;
        assert_allowed(&guard, &gateway, &[&last_old, &first_new]).await;
        // Then the old key leaves the JWKS and the guard's copy; the new key's go on passing.
        d.clock.advance(2);
        guard_synced(&guard).await;
        let fresh = token(&d).await;
        assert_eq!(kid_of(&fresh), new);
        assert_allowed(&guard, &gateway, &[&fresh]).await;
    }
    let _ = stop.send(());
    d.stop().await;
}
