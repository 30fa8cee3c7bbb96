//! Issue 12, findings 12–17: token types, the issuer as a tool's resource, the signature cache,
//! secrets at rest and log injection.

use super::harness::*;

use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use toolgate::config::TrustedIssuer;
use toolgate::credentials::Credential;
use toolgate::issuers::IssuerKeys;
use toolgate::jose::{JwkSet, SigningKey, TYP_ACCESS_TOKEN, TYP_JWT};

const IDP: &str = "https://idp.example.com";
const TOOLGATE_AUD: &str = "https://toolgate.example.com";
const AGENT_MCP: &str = "urn:starfly:token-type:agent-mcp";
const RESOURCE: &str = "https://mcp.example.com/tools/search";

/// A production daemon that trusts subject tokens signed by `idp` (issuer `IDP`), with one tool.
async fn with_idp(idp: &SigningKey) -> Daemon {
    let jwks = json!({"keys": [idp.public_jwk().to_json()]}).to_string();
    let d = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.trusted_issuers = vec![TrustedIssuer {
            issuer: IDP.into(),
            keys: IssuerKeys::fixed(IDP, JwkSet::from_json_bytes(jwks.as_bytes()).unwrap(), None),
            audience: TOOLGATE_AUD.into(),
            trust_domain: "example.com".into(),
        }];
    })
    .await;
    d.register("search", RESOURCE).await;
    d
}

/// A compact JWS with exactly this header, signed by `key`.
fn sign_with_header(key: &SigningKey, header: &Value, claims: &Value) -> String {
    sign_jws(key, header, claims)
}

/// Subject claims from the IdP, valid for ten minutes, with `extra` merged over them (a `null`
/// removes a claim).
fn idp_claims(d: &Daemon, extra: Value) -> Value {
    let now = d.clock_now();
    let mut claims =
        json!({"iss": IDP, "sub": "workload-1", "aud": TOOLGATE_AUD, "iat": now, "exp": now + 600});
    for (k, v) in extra.as_object().unwrap() {
        let obj = claims.as_object_mut().unwrap();
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    claims
}

fn idp_token(d: &Daemon, idp: &SigningKey, typ: Option<&str>, extra: Value) -> String {
    let mut header = json!({"alg": "ES256", "kid": idp.kid()});
    if let Some(t) = typ {
        header["typ"] = json!(t);
    }
    sign_with_header(idp, &header, &idp_claims(d, extra))
}

async fn issuer_of(d: &Daemon) -> String {
    let (status, meta) = d
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(status, 200, "{meta}");
    meta["issuer"].as_str().unwrap().to_string()
}

/// The daemon's active private key, read from its database.
fn daemon_key(d: &Daemon) -> SigningKey {
    let conn = rusqlite::Connection::open(d.db_path()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let pkcs8: Vec<u8> = conn
        .query_row(
            "SELECT pkcs8 FROM signing_keys WHERE retired_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    SigningKey::from_pkcs8(&pkcs8).unwrap()
}

fn assert_invalid_client(status: u16, body: &Value, description: &str) {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(body["error_description"], description, "{body}");
}

/// Subject tokens whose `typ` names another kind of token are refused, in production and in
/// dev mode alike; `JWT`, `at+jwt` and none are taken. toolgate's tool tokens are RFC 9068
/// access tokens (`at+jwt`, `client_id`), its agent tokens `toolgate-agent+jwt`, and the
/// verify pipeline takes each only where it belongs. A verified subject token that names
/// nobody is refused rather than mapped to `dev-workload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_12_typ_is_checked_and_minted_tokens_are_typed() {
    let idp = SigningKey::generate().unwrap();
    let d = with_idp(&idp).await;
    let issuer = issuer_of(&d).await;

    // 1. External subject tokens: another kind of token is no subject token.
    for typ in [
        "secevent+jwt",
        "application/secevent+jwt",
        "dpop+jwt",
        "logout+jwt",
        "toolgate-agent+jwt",
        "JOSE",
    ] {
        let token = idp_token(&d, &idp, Some(typ), json!({}));
        let (status, body) = d.exchange(exchange_body(&token, RESOURCE)).await;
        assert_invalid_client(
            status,
            &body,
            "subject token typ names another kind of token",
        );
    }
    for typ in [
        None,
        Some("JWT"),
        Some("jwt"),
        Some("at+jwt"),
        Some("application/at+jwt"),
    ] {
        let token = idp_token(&d, &idp, typ, json!({}));
        let (status, body) = d.exchange(exchange_body(&token, RESOURCE)).await;
        assert_eq!(status, 200, "{typ:?}: {body}");
    }

    // 2. A tool's token: `at+jwt`, RFC 9068's claims, `client_id` the subject.
    let subject = idp_token(&d, &idp, Some(TYP_JWT), json!({}));
    let (status, body) = d.exchange(exchange_body(&subject, RESOURCE)).await;
    assert_eq!(status, 200, "{body}");
    let tool_token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(header_of(&tool_token)["typ"], "at+jwt");
    let claims = claims_of(&tool_token);
    for name in ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"] {
        assert!(claims.get(name).is_some(), "{name} missing: {claims}");
    }
    assert_eq!(claims["client_id"], claims["sub"]);
    assert_eq!(
        claims["client_id"],
        "wimse://example.com/ns/default/sa/workload-1"
    );
    let (status, body) = d.verify(&tool_token, "search").await;
    assert_eq!(status, 200, "{body}");

    // 3. An agent token: its own type, no client_id.
    let (status, body) = d.exchange(exchange_body(&subject, &issuer)).await;
    assert_eq!(status, 200, "{body}");
    let agent_token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(header_of(&agent_token)["typ"], "toolgate-agent+jwt");
    assert!(claims_of(&agent_token).get("client_id").is_none());

    // The agent token is no access token: not even for a server-level request naming the
    // issuer (its audience), which the audience check alone let through.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/mcp/verify",
            Some(json!({"token": agent_token, "resource": issuer})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["check"], "malformed", "{body}");
    assert_eq!(
        body["error_description"],
        "token is not a toolgate access token (typ)"
    );
    // It is taken where it belongs: exchanged for a tool's token.
    let mut agent_body = exchange_body(&agent_token, RESOURCE);
    agent_body["subject_token_type"] = json!(AGENT_MCP);
    let (status, body) = d.exchange(agent_body).await;
    assert_eq!(status, 200, "{body}");
    // A tool's token is no agent token.
    let mut tool_as_agent = exchange_body(&tool_token, RESOURCE);
    tool_as_agent["subject_token_type"] = json!(AGENT_MCP);
    let (status, body) = d.exchange(tool_as_agent).await;
    assert_invalid_client(status, &body, "subject token failed verification");

    // 4. A token signed by toolgate's own key for the tool, but not typed `at+jwt` (as an ID
    // token or a SET it signed would be): refused at verify.
    let key = daemon_key(&d);
    let now = d.clock_now();
    let claims = json!({"iss": issuer, "sub": "wimse://example.com/ns/default/sa/x",
                        "aud": RESOURCE, "iat": now, "exp": now + 60, "jti": "typ-test"});
    for typ in [
        Some("JWT"),
        None,
        Some("secevent+jwt"),
        Some("toolgate-agent+jwt"),
    ] {
        let mut header = json!({"alg": "ES256", "kid": key.kid()});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        let token = sign_with_header(&key, &header, &claims);
        let (status, body) = d.verify(&token, "search").await;
        assert_eq!(status, 403, "{typ:?}: {body}");
        assert_eq!(body["check"], "malformed", "{typ:?}: {body}");
    }
    let header = json!({"alg": "ES256", "kid": key.kid(), "typ": TYP_ACCESS_TOKEN});
    let (status, body) = d
        .verify(&sign_with_header(&key, &header, &claims), "search")
        .await;
    assert_eq!(status, 200, "{body}");

    // 5. A verified subject token naming nobody is refused, not mapped to dev-workload.
    let nobody = idp_token(&d, &idp, Some(TYP_JWT), json!({"sub": null}));
    let (status, body) = d.exchange(exchange_body(&nobody, RESOURCE)).await;
    assert_invalid_client(
        status,
        &body,
        "subject token names no subject (sub or a service account)",
    );
    // A service account is a subject.
    let sa = idp_token(
        &d,
        &idp,
        Some(TYP_JWT),
        json!({"sub": null, "namespace": "ops", "serviceaccount": "deployer"}),
    );
    let (status, body) = d.exchange(exchange_body(&sa, RESOURCE)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["sub"],
        "wimse://example.com/ns/ops/sa/deployer"
    );
    d.stop().await;

    // 6. Dev mode relaxes the signature, not the type: a stub SET is refused; a stub naming
    // nobody is still the dev workload.
    let dev = Daemon::dev().await;
    let claims = json!({"sub": "agent-1", "exp": dev.clock_now() + 600});
    let stub_set = format!(
        "{}.{}.stub",
        b64(br#"{"alg":"none","typ":"secevent+jwt"}"#),
        b64(claims.to_string().as_bytes())
    );
    let (status, body) = dev.exchange(exchange_body(&stub_set, RESOURCE)).await;
    assert_invalid_client(
        status,
        &body,
        "subject token typ names another kind of token",
    );
    let (status, body) = dev
        .exchange(exchange_body(&stub(json!({})), RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["sub"],
        "wimse://dev.local/ns/default/sa/dev-workload"
    );
    dev.stop().await;
}

/// Registration refuses a tool whose resource is toolgate's issuer, but the default issuer
/// follows `--listen`: a tool registered under one issuer can hold the issuer of the next start.
/// That start is refused, with a sentence naming the tool; the old issuer serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_13_a_tool_holding_the_issuer_refuses_the_start() {
    use toolgate::server::{self, ServeError};
    let d = Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        c.issuer = Some(TOOLGATE_AUD.into());
    })
    .await;
    // The URL of this very listener: not the issuer now, so registration takes it.
    let own_url = d.url.clone();
    d.register("squatter", &own_url).await;
    let addr: std::net::SocketAddr = own_url.strip_prefix("http://").unwrap().parse().unwrap();
    let mut config = d.config.clone();
    let clock = d.clock.clone();
    let dir = d.dir.clone();
    d.stop().await;

    // The same database, listening where the tool's resource points, with the default issuer.
    config.listen = addr;
    config.issuer = None;
    match server::start(config.clone(), clock.clone(), std::future::pending()).await {
        Err(ServeError::Refused(why)) => {
            assert!(why.contains("tool squatter"), "{why}");
            assert!(why.contains(&format!("issuer {own_url} ")), "{why}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(running) => {
            running.stop().await.unwrap();
            panic!("started with a tool whose resource is its own issuer");
        }
    }
    // An explicit issuer equal to the tool's resource is refused alike.
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.issuer = Some(own_url.clone());
    assert!(matches!(
        server::start(config.clone(), clock.clone(), std::future::pending()).await,
        Err(ServeError::Refused(_))
    ));
    // Under the issuer it was registered with, the daemon starts and the tool is there.
    config.issuer = Some(TOOLGATE_AUD.into());
    let running = server::start(config, clock, std::future::pending())
        .await
        .unwrap();
    running.stop().await.unwrap();
    drop(dir);
}

/// `n - s` for a big-endian P-256 scalar `s` below the group order `n`.
fn p256_negate(s: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (mut out, mut borrow) = (vec![0u8; 32], 0i16);
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

/// The same token with its ECDSA signature's other form: `(r, n - s)`, as valid as `(r, s)`.
fn signature_twin(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = toolgate::jose::b64::decode(sig).unwrap();
    let (r, s) = sig.split_at(32);
    format!("{input}.{}", b64(&[r, &p256_negate(s)].concat()))
}

async fn signature_cache_entries(d: &Daemon) -> u64 {
    let (status, text) = d
        .client()
        .send(Method::GET, "/metrics", None)
        .await
        .map(|(s, v)| (s.as_u16(), v))
        .unwrap();
    assert_eq!(status, 200, "{text}");
    // The client wraps a body that is not JSON as {"raw": text}.
    let text = text["raw"].as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("toolgate_signature_cache_entries "))
        .unwrap_or_else(|| panic!("no signature cache gauge in:\n{text}"))
        .parse()
        .unwrap()
}

/// One token, one cache entry: the signature cache is keyed by the canonical (low-S) form of
/// the signature, so a token and its high-S twin share an entry. Neither form is refused — other
/// issuers' ES256 signatures are high-S half of the time — and a twin of an invalid signature
/// stays invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_14_one_token_one_cache_entry_whatever_its_s() {
    let d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    assert_eq!(signature_cache_entries(&d).await, 0);

    let token = d.token_for("agent-1", RESOURCE).await;
    let twin = signature_twin(&token);
    assert_ne!(token, twin);
    for t in [&token, &twin, &token, &twin] {
        let (status, body) = d.verify(t, "search").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(signature_cache_entries(&d).await, 1);
    // Either form may come first.
    let second = d.token_for("agent-2", RESOURCE).await;
    let (status, body) = d.verify(&signature_twin(&second), "search").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = d.verify(&second, "search").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(signature_cache_entries(&d).await, 2);

    // A subject token from an identity provider whose signature is high-S is taken as well.
    d.stop().await;
    let idp = SigningKey::generate().unwrap();
    let p = with_idp(&idp).await;
    let subject = idp_token(&p, &idp, Some(TYP_JWT), json!({}));
    for t in [subject.clone(), signature_twin(&subject)] {
        let (status, body) = p.exchange(exchange_body(&t, RESOURCE)).await;
        assert_eq!(status, 200, "{body}");
    }

    // A signature that does not verify has twins that do not either, and no entry.
    let token = p
        .exchange(exchange_body(&subject, RESOURCE))
        .await
        .1
        .get("access_token")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    let before = signature_cache_entries(&p).await;
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut bad = toolgate::jose::b64::decode(sig).unwrap();
    bad[0] ^= 1;
    let bad = format!("{input}.{}", b64(&bad));
    for t in [bad.clone(), signature_twin(&bad)] {
        let (status, body) = p.verify(&t, "search").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["check"], "signature", "{body}");
    }
    assert_eq!(signature_cache_entries(&p).await, before);
    p.stop().await;
}

/// Run `toolgate serve --listen 127.0.0.1:0 <args>` to its end: its exit code and log. Should it
/// start listening instead, it is stopped and the test fails.
fn serve_refused(args: &[&std::ffi::OsStr]) -> (i32, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("TOOLGATE_URL")
        .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains(" listening on http://") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("toolgate serve started:\n{log}");
        }
    }
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), log)
}

#[cfg(unix)]
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The database, its write-ahead log, the admin-token file and the signing key file hold
/// secrets: when any group or other permission bit is set, `toolgate serve` refuses to start
/// with a sentence naming the file and who may read it, and changes nothing.
#[cfg(unix)]
#[test]
fn finding_15_refuses_secrets_others_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("toolgate.db");
    let os = |p: &std::path::Path| p.as_os_str().to_owned();

    // A database readable by group and others (an empty file is an empty SQLite database).
    std::fs::write(&db, b"").unwrap();
    chmod(&db, 0o644);
    let (code, log) = serve_refused(&["--dev".as_ref(), "--db".as_ref(), &os(&db)]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "database file {} is readable by group and others (mode 0644)",
            db.display()
        )),
        "{log}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing written");

    // Its write-ahead log, readable by group only.
    chmod(&db, 0o600);
    let wal = dir.path().join("toolgate.db-wal");
    std::fs::write(&wal, b"").unwrap();
    chmod(&wal, 0o640);
    let (code, log) = serve_refused(&["--dev".as_ref(), "--db".as_ref(), &os(&db)]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "database file {} is readable by group (mode 0640)",
            wal.display()
        )),
        "{log}"
    );
    std::fs::remove_file(&wal).unwrap();

    // The admin-token file, readable by group: refused before the database is touched.
    let fresh_db = dir.path().join("fresh.db");
    let admin = dir.path().join("admin-token");
    std::fs::write(&admin, ADMIN).unwrap();
    chmod(&admin, 0o640);
    let (code, log) = serve_refused(&[
        "--db".as_ref(),
        &os(&fresh_db),
        "--admin-token-file".as_ref(),
        &os(&admin),
    ]);
    assert_eq!(code, 2, "{log}");
    assert!(
        log.contains(&format!(
            "--admin-token-file {} is readable by group (mode 0640)",
            admin.display()
        )),
        "{log}"
    );
    assert!(!log.contains(ADMIN), "the secret is never printed: {log}");
    assert!(!fresh_db.exists());
    // The reporter-token file alike (writable by others is as bad).
    chmod(&admin, 0o600);
    let reporter = dir.path().join("reporter-token");
    std::fs::write(&reporter, "reporter-secret-0123456789").unwrap();
    chmod(&reporter, 0o602);
    let (code, log) = serve_refused(&[
        "--db".as_ref(),
        &os(&fresh_db),
        "--admin-token-file".as_ref(),
        &os(&admin),
        "--reporter-token-file".as_ref(),
        &os(&reporter),
    ]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("is writable by others (mode 0602)"), "{log}");

    // The signing key file, readable by group and others.
    let key_file = dir.path().join("signing.pem");
    std::fs::write(
        &key_file,
        toolgate::keys::to_pem(SigningKey::generate().unwrap().pkcs8()),
    )
    .unwrap();
    chmod(&key_file, 0o644);
    let (code, log) = serve_refused(&[
        "--dev".as_ref(),
        "--db".as_ref(),
        &os(&db),
        "--signing-key-file".as_ref(),
        &os(&key_file),
    ]);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains(&format!(
            "--signing-key-file {} is readable by group and others (mode 0644)",
            key_file.display()
        )),
        "{log}"
    );
}

/// Does `haystack` contain `needle` anywhere?
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database file and its write-ahead log, as bytes.
fn database_bytes(db: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    let wal = std::path::PathBuf::from(format!("{}-wal", db.display()));
    if let Ok(more) = std::fs::read(wal) {
        bytes.extend(more);
    }
    bytes
}

/// Private halves the database holds (it keeps every key's public half and dates).
fn stored_keys(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM signing_keys WHERE length(pkcs8) > 0",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// `--signing-key-file`: the signing key lives in its own file (PKCS#8 PEM, created `0600`), and
/// the database an auditor is given holds no private key. An existing database's key moves
/// out — same `kid`, so tokens it signed still verify — and its bytes are overwritten, not only
/// unlinked. New databases are created `0600`.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_15_signing_key_file_keeps_the_key_out_of_the_database() {
    // A daemon with its key in the database, as before.
    let mut d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    let db = d.db_path();
    assert_eq!(mode_of(&db), 0o600);
    let before = daemon_key(&d);
    let token = d.token_for("agent-1", RESOURCE).await;
    assert_eq!(header_of(&token)["kid"], before.kid());
    assert!(contains_bytes(&database_bytes(&db), before.pkcs8()));

    // Restarted with --signing-key-file: the key moves to the file.
    let key_file = d.dir.path().join("signing.pem");
    d.config.signing_key_file = Some(key_file.clone());
    let d = d.restart().await;
    assert_eq!(mode_of(&key_file), 0o600);
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PEM");
    let moved = SigningKey::from_pkcs8(&toolgate::keys::from_pem(&text).unwrap()).unwrap();
    assert_eq!(moved.kid(), before.kid());
    assert_eq!(moved.pkcs8(), before.pkcs8());
    assert_eq!(stored_keys(&db), 0);
    assert!(
        !contains_bytes(&database_bytes(&db), before.pkcs8()),
        "the database file still holds the private key's bytes"
    );
    // Tokens minted before the move still verify; new ones are signed with the same key.
    let (status, body) = d.verify(&token, "search").await;
    assert_eq!(status, 200, "{body}");
    let (_, jwks) = d.call(Method::GET, "/v1/identity/jwks", None).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_eq!(jwks["keys"][0]["kid"], before.kid());
    let fresh = d.token_for("agent-2", RESOURCE).await;
    assert_eq!(header_of(&fresh)["kid"], before.kid());

    // And it stays there across restarts, the database still keyless.
    let d = d.restart().await;
    let (status, body) = d.verify(&fresh, "search").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored_keys(&db), 0);
    d.stop().await;

    // A new deployment with the option: the key is generated into the file, never the database.
    let n = Daemon::with(|c| {
        c.dev = true;
        c.signing_key_file = Some(c.db_path.parent().unwrap().join("new.pem"));
    })
    .await;
    let file = n.config.signing_key_file.clone().unwrap();
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(mode_of(&n.db_path()), 0o600);
    let generated = SigningKey::from_pkcs8(
        &toolgate::keys::from_pem(&std::fs::read_to_string(&file).unwrap()).unwrap(),
    )
    .unwrap();
    n.register("search", RESOURCE).await;
    let token = n.token_for("agent-1", RESOURCE).await;
    assert_eq!(header_of(&token)["kid"], generated.kid());
    assert_eq!(stored_keys(&n.db_path()), 0);
    n.stop().await;
}

/// Log injection: a value from a request that carries a line feed, a carriage return or a
/// terminal escape is logged with them escaped — one request, one line, no forged entry — and
/// `toolgate audit tail` shows the audit row alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_17_logged_request_values_cannot_forge_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("toolgate.db");
    let log = dir.path().join("daemon.log");
    let served = Served::start(
        &["--dev".as_ref(), "--db".as_ref(), db.as_os_str()],
        Some(&log),
    );
    let url = format!("http://{}", served.addr);
    let forged = "2026-01-01T00:00:00Z ERROR forged entry";
    let jti = format!("sig-1\n{forged}\r\u{1b}[2K\u{2028}x");
    let iss = format!("https://siem.example.com\n{forged}\u{1b}[31m");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let set = json!({
        "iss": iss, "jti": jti, "iat": now, "aud": "starfly",
        "sub_id": {"format": "uri", "uri": "wimse://dev.local/ns/demo/sa/agent-1"},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}}
    });
    let client = toolgate::client::Client::new(&url).unwrap();
    let (status, body) = client
        .send(
            Method::POST,
            "/v1/signals/events",
            Some(("application/json", set.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 202, "{body}");

    let text = eventually("the signal is logged", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains(" applied: ").then_some(text)
        }
    })
    .await;
    let line = text
        .lines()
        .find(|l| l.contains(" applied: "))
        .unwrap()
        .to_string();
    assert!(
        line.contains(r"signal sig-1\n2026-01-01T00:00:00Z ERROR forged entry\r\u{1b}[2K\u{2028}x from https://siem.example.com\n2026-01-01T00:00:00Z ERROR forged entry\u{1b}[31m applied"),
        "{line}"
    );
    for l in text.lines() {
        assert!(!l.starts_with(forged), "a forged line: {text}");
    }
    assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{2028}'));

    // The operator's view of the audit log: one row, one line, no escape sequence.
    let args = vec![
        "audit".to_string(),
        "tail".into(),
        "--url".into(),
        url.clone(),
        "--limit".into(),
        "5".into(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(&args)
            .env_remove("TOOLGATE_URL")
            .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            r"https://siem.example.com\n2026-01-01T00:00:00Z ERROR forged entry\u{1b}[31m"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(!stdout.lines().any(|l| l.starts_with(forged)), "{stdout}");
    drop(served);
}
