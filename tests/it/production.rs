use super::harness::*;

use http::Method;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use toolgate::clock::Clock;
use toolgate::config::TrustedIssuer;
use toolgate::credentials::Credential;
use toolgate::issuers::IssuerKeys;
use toolgate::jose::{JwkSet, SigningKey};

const IDP: &str = "https://idp.example.com";
const TOOLGATE_AUD: &str = "https://toolgate.example.com";
const AGENT_MCP: &str = "urn:starfly:token-type:agent-mcp";
const TOOL_RESOURCE: &str = "https://mcp.example.com/tools/search";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A raw HTTP/1.1 response: status, lower-cased header lines, and the body parsed as JSON.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One hand-written HTTP/1.1 request (Connection: close), so response headers can be inspected.
async fn raw_request(
    daemon: &Daemon,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> RawResponse {
    let authority = daemon.url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(auth) = authorization {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body_text = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let body = if body_text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body_text).unwrap()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_error: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_error, "{body}");
    assert!(body["error_description"].is_string(), "{body}");
}

/// A production daemon that trusts subject tokens signed by `key` (issuer `IDP`).
async fn with_idp(key: &SigningKey) -> Daemon {
    let jwks = json!({"keys": [key.public_jwk().to_json()]}).to_string();
    Daemon::with(|c| {
        c.admin_token = Some(Credential::new(ADMIN).unwrap());
        let path = c.db_path.parent().unwrap().join("idp-jwks.json");
        std::fs::write(&path, jwks.as_bytes()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        c.trusted_issuers = vec![TrustedIssuer {
            issuer: IDP.into(),
            keys: IssuerKeys::fixed(IDP, JwkSet::from_json_bytes(&bytes).unwrap(), None),
            audience: TOOLGATE_AUD.into(),
            trust_domain: "example.com".into(),
        }];
    })
    .await
}

fn now(daemon: &Daemon) -> i64 {
    daemon.clock.now()
}

/// Standard subject claims (valid for 10 minutes) with `extra` merged over them.
fn subject_claims(daemon: &Daemon, extra: Value) -> Map<String, Value> {
    let now = now(daemon);
    let mut claims = json!({
        "iss": IDP,
        "sub": "workload-1",
        "aud": TOOLGATE_AUD,
        "iat": now,
        "exp": now + 600,
    })
    .as_object()
    .unwrap()
    .clone();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.remove(k);
        } else {
            claims.insert(k.clone(), v.clone());
        }
    }
    claims
}

fn sign(key: &SigningKey, claims: &Map<String, Value>) -> String {
    toolgate::jose::jws::encode_signed(key, toolgate::jose::TYP_JWT, claims).unwrap()
}

fn subject_jwt(daemon: &Daemon, key: &SigningKey, extra: Value) -> String {
    sign(key, &subject_claims(daemon, extra))
}

async fn issuer_of(daemon: &Daemon) -> String {
    let (status, meta) = daemon
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(status, 200, "{meta}");
    meta["issuer"].as_str().unwrap().to_string()
}

fn typed_exchange(subject: &str, subject_type: &str, audience: &str) -> Value {
    let mut body = exchange_body(subject, audience);
    body["subject_token_type"] = json!(subject_type);
    body
}

fn access_token(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. Admin authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_without_token_is_401_with_www_authenticate() {
    let daemon = Daemon::production().await;
    let entry = json!({"tool_id": "search", "resource_uri": TOOL_RESOURCE});

    let resp = raw_request(&daemon, "POST", "/v1/mcp/tools", None, Some(&entry)).await;
    assert_error(resp.status, &resp.body, 401, "unauthorized");
    let challenge = resp
        .header("www-authenticate")
        .expect("WWW-Authenticate on 401");
    assert!(challenge.starts_with("Bearer"), "{challenge}");

    // The typed client without the token sees the same.
    let (status, body) = daemon
        .anonymous()
        .send(
            Method::POST,
            "/v1/mcp/tools",
            Some(("application/json", entry.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_error(status.as_u16(), &body, 401, "unauthorized");

    // Nothing was registered.
    let (status, list) = daemon.call(Method::GET, "/v1/mcp/tools", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_wrong_token_is_401() {
    let daemon = Daemon::production().await;
    let entry = json!({"tool_id": "search", "resource_uri": TOOL_RESOURCE});
    for auth in [
        "Bearer wrong-admin-token-0123456789".to_string(),
        format!("Bearer {ADMIN}x"),
        format!("Bearer {}", &ADMIN[..ADMIN.len() - 1]),
        format!("Basic {ADMIN}"),
        ADMIN.to_string(),
        "Bearer ".to_string(),
    ] {
        let resp = raw_request(&daemon, "POST", "/v1/mcp/tools", Some(&auth), Some(&entry)).await;
        assert_error(resp.status, &resp.body, 401, "unauthorized");
        assert!(resp.header("www-authenticate").is_some(), "{auth}");
        // The secret is never echoed back.
        assert!(!resp.body.to_string().contains(ADMIN), "{}", resp.body);
    }
    let (status, list) = daemon.call(Method::GET, "/v1/mcp/tools", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_admin_token_is_201() {
    let daemon = Daemon::production().await;
    let entry = json!({"tool_id": "search", "resource_uri": TOOL_RESOURCE});
    let (status, body) = daemon
        .client()
        .send(
            Method::POST,
            "/v1/mcp/tools",
            Some(("application/json", entry.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 201, "{body}");
    assert_eq!(body["tool_id"], "search");
    assert_eq!(body["resource_uri"], TOOL_RESOURCE);

    // The raw path with the header written by hand agrees.
    let entry2 = json!({"tool_id": "search2", "resource_uri": TOOL_RESOURCE});
    let resp = raw_request(
        &daemon,
        "POST",
        "/v1/mcp/tools",
        Some(&format!("Bearer {ADMIN}")),
        Some(&entry2),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_needs_the_admin_token() {
    let daemon = Daemon::production().await;
    daemon.register("search", TOOL_RESOURCE).await;

    let resp = raw_request(
        &daemon,
        "DELETE",
        "/v1/mcp/tools?tool_id=search",
        None,
        None,
    )
    .await;
    assert_error(resp.status, &resp.body, 401, "unauthorized");
    assert!(resp.header("www-authenticate").is_some());

    let resp = raw_request(
        &daemon,
        "DELETE",
        "/v1/mcp/tools?tool_id=search",
        Some("Bearer not-the-admin-token-at-all"),
        None,
    )
    .await;
    assert_error(resp.status, &resp.body, 401, "unauthorized");

    let (status, body) = daemon
        .anonymous()
        .send(Method::DELETE, "/v1/mcp/tools?tool_id=search", None)
        .await
        .unwrap();
    assert_error(status.as_u16(), &body, 401, "unauthorized");

    // The universal registry's DELETE is an admin call too.
    let (status, body) = daemon
        .anonymous()
        .send(Method::DELETE, "/v1/tools/search", None)
        .await
        .unwrap();
    assert_error(status.as_u16(), &body, 401, "unauthorized");

    // Still registered.
    let (status, list) = daemon.call(Method::GET, "/v1/mcp/tools", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 1, "{list}");

    let (status, body) = daemon
        .call(Method::DELETE, "/v1/mcp/tools?tool_id=search", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "deregistered", "tool_id": "search"}));
}

// ---------------------------------------------------------------------------------------------
// 2. Stubs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_subject_tokens_are_refused() {
    let daemon = Daemon::production().await;
    daemon.register("search", TOOL_RESOURCE).await;
    for claims in [
        json!({"sub": "alice"}),
        json!({"sub": "alice", "iss": "https://idp.example.com", "aud": TOOLGATE_AUD}),
        json!({"sub": "wimse://example.com/ns/a/sa/b"}),
    ] {
        let (status, body) = daemon
            .exchange(exchange_body(&stub(claims), TOOL_RESOURCE))
            .await;
        assert_error(status, &body, 401, "invalid_client");
        assert!(body.get("access_token").is_none());
    }
    // A stub is not an agent token either.
    let (status, body) = daemon
        .exchange(typed_exchange(
            &stub(json!({"sub": "alice"})),
            AGENT_MCP,
            TOOL_RESOURCE,
        ))
        .await;
    assert_error(status, &body, 401, "invalid_client");
}

// ---------------------------------------------------------------------------------------------
// 3. Trusted issuers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_issuer_jwt_is_exchanged_for_a_tool_token() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let issuer = issuer_of(&daemon).await;

    let subject = subject_jwt(
        &daemon,
        &key,
        json!({"namespace": "payments", "serviceaccount": "billing"}),
    );
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], JWT);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);

    let token = access_token(&body);
    let header = header_of(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].is_string());

    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "wimse://example.com/ns/payments/sa/billing");
    assert_eq!(claims["aud"], TOOL_RESOURCE);
    assert_eq!(claims["iss"], issuer.as_str());
    for name in ["jti", "iat", "nbf", "exp", "td"] {
        assert!(claims.get(name).is_some(), "missing {name}: {claims}");
    }
    assert!(
        claims["jti"].as_str().is_some_and(|j| j.len() >= 22),
        "{claims}"
    );
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 300);
    assert_eq!(claims["nbf"].as_i64().unwrap(), iat);
    assert_eq!(iat, now(&daemon));

    // And the minted token verifies for the tool.
    let (status, body) = daemon.verify(&token, "search").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verified"], true);
    assert_eq!(
        body["claims"]["sub"],
        "wimse://example.com/ns/payments/sa/billing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sub_becomes_the_service_account_in_the_default_namespace() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(&daemon, &key, json!({"sub": "runner"}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(&access_token(&body))["sub"],
        "wimse://example.com/ns/default/sa/runner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_exp_caps_the_minted_lifetime() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(&daemon, &key, json!({"exp": now(&daemon) + 100}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 100, "{body}");
    let claims = claims_of(&access_token(&body));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_with_a_wrong_signature_is_refused() {
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let claims = subject_claims(&daemon, json!({}));

    // Signed by an unknown key (its own kid).
    let forged = sign(&other, &claims);
    let (status, body) = daemon.exchange(exchange_body(&forged, TOOL_RESOURCE)).await;
    assert_error(status, &body, 401, "invalid_client");

    // Signed by an unknown key under the trusted key's kid.
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes())
    );
    let sig = other.sign(signing_input.as_bytes()).unwrap();
    let forged = format!("{signing_input}.{}", b64(&sig));
    let (status, body) = daemon.exchange(exchange_body(&forged, TOOL_RESOURCE)).await;
    assert_error(status, &body, 401, "invalid_client");

    // A genuine token whose claims were altered after signing.
    let genuine = sign(&key, &claims);
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let mut altered = claims.clone();
    altered.insert("sub".into(), json!("root"));
    let altered_payload = b64(Value::Object(altered).to_string().as_bytes());
    parts[1] = &altered_payload;
    let (status, body) = daemon
        .exchange(exchange_body(&parts.join("."), TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");

    // The genuine one still works (the refusals were about the signature).
    let (status, body) = daemon
        .exchange(exchange_body(&genuine, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_from_an_unknown_issuer_is_refused() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    for iss in [
        json!("https://evil.example.com"),
        json!("https://idp.example.com/"),
        json!(null),
    ] {
        let subject = subject_jwt(&daemon, &key, json!({"iss": iss}));
        let (status, body) = daemon
            .exchange(exchange_body(&subject, TOOL_RESOURCE))
            .await;
        assert_error(status, &body, 401, "invalid_client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_with_the_wrong_audience_is_refused() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    for aud in [
        json!("https://other.example.com"),
        json!(TOOL_RESOURCE),
        json!(["https://other.example.com"]),
        json!(null),
    ] {
        let subject = subject_jwt(&daemon, &key, json!({"aud": aud}));
        let (status, body) = daemon
            .exchange(exchange_body(&subject, TOOL_RESOURCE))
            .await;
        assert_error(status, &body, 401, "invalid_client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_subject_is_refused() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;

    // exp in the past beyond the 60 s leeway.
    let t = now(&daemon);
    let subject = subject_jwt(&daemon, &key, json!({"iat": t - 600, "exp": t - 61}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");

    // No exp at all.
    let subject = subject_jwt(&daemon, &key, json!({"exp": null}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");

    // Valid now, expired once the clock moves.
    let subject = subject_jwt(&daemon, &key, json!({}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    daemon.clock.advance(600 + 61);
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_issued_in_the_future_is_refused() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let t = now(&daemon);
    let subject = subject_jwt(&daemon, &key, json!({"nbf": t + 3600, "exp": t + 7200}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");
    let subject = subject_jwt(&daemon, &key, json!({"iat": t + 3600, "exp": t + 7200}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_nested_claims_name_the_subject() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(
        &daemon,
        &key,
        json!({
            "sub": "system:serviceaccount:ns1:sa1",
            "kubernetes.io": {"namespace": "ns1", "serviceaccount": {"name": "sa1", "uid": "u-1"}},
        }),
    );
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(&access_token(&body))["sub"],
        "wimse://example.com/ns/ns1/sa/sa1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wimse_sub_in_the_trust_domain_is_kept() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let sub = "wimse://example.com/ns/prod/sa/indexer";
    let subject = subject_jwt(&daemon, &key, json!({"sub": sub}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims_of(&access_token(&body))["sub"], sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wimse_sub_in_another_trust_domain_is_refused() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    for sub in [
        "wimse://other.org/ns/prod/sa/indexer",
        // A prefix trick: example.com.evil.org is not example.com.
        "wimse://example.com.evil.org/ns/prod/sa/indexer",
    ] {
        let subject = subject_jwt(&daemon, &key, json!({"sub": sub}));
        let (status, body) = daemon
            .exchange(exchange_body(&subject, TOOL_RESOURCE))
            .await;
        assert_error(status, &body, 401, "invalid_client");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Audience must be a registered resource
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_must_be_a_registered_resource() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(&daemon, &key, json!({}));

    // Unregistered absolute URI.
    let (status, body) = daemon
        .exchange(exchange_body(
            &subject,
            "https://mcp.example.com/tools/unregistered",
        ))
        .await;
    assert_error(status, &body, 400, "invalid_target");

    // Registered.
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");

    // `resource` (RFC 8707) is a synonym.
    let mut by_resource = exchange_body(&subject, TOOL_RESOURCE);
    let obj = by_resource.as_object_mut().unwrap();
    obj.remove("audience");
    obj.insert("resource".into(), json!(TOOL_RESOURCE));
    let (status, body) = daemon.exchange(by_resource).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims_of(&access_token(&body))["aud"], TOOL_RESOURCE);

    // A wildcard.
    let (status, body) = daemon.exchange(exchange_body(&subject, "*")).await;
    assert_error(status, &body, 400, "invalid_target");

    // A JSON array, even of one registered resource.
    for list in [
        json!([TOOL_RESOURCE]),
        json!([TOOL_RESOURCE, "https://other.example.com"]),
    ] {
        let mut body = exchange_body(&subject, TOOL_RESOURCE);
        body["audience"] = list;
        let (status, body) = daemon.exchange(body).await;
        assert_error(status, &body, 400, "invalid_target");
    }

    // Two space-separated targets.
    let (status, body) = daemon
        .exchange(exchange_body(
            &subject,
            &format!("{TOOL_RESOURCE} https://other.example.com"),
        ))
        .await;
    assert_error(status, &body, 400, "invalid_target");
}

// ---------------------------------------------------------------------------------------------
// 5. Agent tokens
// ---------------------------------------------------------------------------------------------

/// An agent token (aud = toolgate's issuer) for a trusted-issuer subject.
async fn agent_token(daemon: &Daemon, key: &SigningKey, extra: Value) -> String {
    let issuer = issuer_of(daemon).await;
    let subject = subject_jwt(daemon, key, extra);
    let (status, body) = daemon.exchange(exchange_body(&subject, &issuer)).await;
    assert_eq!(status, 200, "{body}");
    let token = access_token(&body);
    assert_eq!(claims_of(&token)["aud"], issuer.as_str());
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_is_exchanged_for_a_tool_token() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let issuer = issuer_of(&daemon).await;

    let agent = agent_token(
        &daemon,
        &key,
        json!({"namespace": "agents", "serviceaccount": "planner"}),
    )
    .await;
    let agent_claims = claims_of(&agent);
    assert_eq!(
        agent_claims["sub"],
        "wimse://example.com/ns/agents/sa/planner"
    );
    assert_eq!(agent_claims["iss"], issuer.as_str());

    let (status, body) = daemon
        .exchange(typed_exchange(&agent, AGENT_MCP, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    let tool_token = access_token(&body);
    let claims = claims_of(&tool_token);
    assert_eq!(claims["sub"], agent_claims["sub"]);
    assert_eq!(claims["aud"], TOOL_RESOURCE);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_ne!(claims["jti"], agent_claims["jti"]);
    // Never outlives the agent token.
    assert!(claims["exp"].as_i64().unwrap() <= agent_claims["exp"].as_i64().unwrap());

    let (status, body) = daemon.verify(&tool_token, "search").await;
    assert_eq!(status, 200, "{body}");

    // The agent token itself is not a tool token: its type says so before its audience does.
    let (status, body) = daemon.verify(&agent, "search").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["check"], "malformed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_token_is_never_a_subject_token() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    daemon
        .register("mailer", "https://mcp.example.com/tools/mailer")
        .await;
    let issuer = issuer_of(&daemon).await;

    // A tool token minted straight from the trusted subject, and one via an agent token.
    let subject = subject_jwt(&daemon, &key, json!({}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    let direct = access_token(&body);
    let agent = agent_token(&daemon, &key, json!({})).await;
    let (status, body) = daemon
        .exchange(typed_exchange(&agent, AGENT_MCP, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    let via_agent = access_token(&body);

    for tool_token in [&direct, &via_agent] {
        for subject_type in [AGENT_MCP, "urn:starfly:token-type:agent-a2a", JWT] {
            for audience in [
                "https://mcp.example.com/tools/mailer",
                TOOL_RESOURCE,
                issuer.as_str(),
            ] {
                let (status, body) = daemon
                    .exchange(typed_exchange(tool_token, subject_type, audience))
                    .await;
                assert_error(status, &body, 401, "invalid_client");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_cannot_become_another_agent_token() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    let issuer = issuer_of(&daemon).await;
    let agent = agent_token(&daemon, &key, json!({})).await;
    for subject_type in [AGENT_MCP, JWT] {
        let (status, body) = daemon
            .exchange(typed_exchange(&agent, subject_type, &issuer))
            .await;
        assert_error(status, &body, 403, "access_denied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_jwt_is_not_an_agent_token() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(&daemon, &key, json!({}));
    let (status, body) = daemon
        .exchange(typed_exchange(&subject, AGENT_MCP, TOOL_RESOURCE))
        .await;
    assert_error(status, &body, 401, "invalid_client");
}

// ---------------------------------------------------------------------------------------------
// 6. Scope narrowing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_narrowed_to_the_subject_caps() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(&daemon, &key, json!({"caps": ["read"]}));

    let mut req = exchange_body(&subject, TOOL_RESOURCE);
    req["scope"] = json!("read write");
    let (status, body) = daemon.exchange(req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read");
    let claims = claims_of(&access_token(&body));
    assert_eq!(claims["caps"], json!(["read"]));
    assert_eq!(claims["scope"], "read");

    let mut req = exchange_body(&subject, TOOL_RESOURCE);
    req["scope"] = json!("write");
    let (status, body) = daemon.exchange(req).await;
    assert_error(status, &body, 403, "access_denied");
    assert!(body.get("access_token").is_none());

    // No scope requested: the subject's caps are carried over.
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims_of(&access_token(&body))["caps"], json!(["read"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_caps_bound_the_tool_token() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let agent = agent_token(&daemon, &key, json!({"caps": ["read"]})).await;
    assert_eq!(claims_of(&agent)["caps"], json!(["read"]));

    let mut req = typed_exchange(&agent, AGENT_MCP, TOOL_RESOURCE);
    req["scope"] = json!("read admin");
    let (status, body) = daemon.exchange(req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(claims_of(&access_token(&body))["caps"], json!(["read"]));

    let mut req = typed_exchange(&agent, AGENT_MCP, TOOL_RESOURCE);
    req["scope"] = json!("admin");
    let (status, body) = daemon.exchange(req).await;
    assert_error(status, &body, 403, "access_denied");
}

// ---------------------------------------------------------------------------------------------
// 7. Expiry on the manual clock
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_token_expires_on_the_manual_clock() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let subject = subject_jwt(&daemon, &key, json!({"exp": now(&daemon) + 3600}));
    let (status, body) = daemon
        .exchange(exchange_body(&subject, TOOL_RESOURCE))
        .await;
    assert_eq!(status, 200, "{body}");
    let token = access_token(&body);

    let (status, body) = daemon.verify(&token, "search").await;
    assert_eq!(status, 200, "{body}");

    // Inside the leeway: still accepted.
    daemon.clock.advance(300 + 59);
    let (status, body) = daemon.verify(&token, "search").await;
    assert_eq!(status, 200, "{body}");

    daemon.clock.advance(2);
    let (status, body) = daemon.verify(&token, "search").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "verification_failed");
    assert_eq!(body["check"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_without_caps_cannot_gain_scopes() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;

    // The subject holds no capabilities: asking for one directly is denied.
    let subject = subject_jwt(&daemon, &key, json!({}));
    let mut req = exchange_body(&subject, TOOL_RESOURCE);
    req["scope"] = json!("admin");
    let (status, body) = daemon.exchange(req).await;
    assert_error(status, &body, 403, "access_denied");

    // Going through an agent token must not change that.
    let agent = agent_token(&daemon, &key, json!({})).await;
    let mut req = typed_exchange(&agent, AGENT_MCP, TOOL_RESOURCE);
    req["scope"] = json!("admin");
    let (status, body) = daemon.exchange(req).await;
    assert_error(status, &body, 403, "access_denied");
}

/// A tool whose resource is toolgate's own issuer would make its tool tokens agent tokens:
/// either such a registration is refused, or its tokens are still never subject tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_cannot_share_the_issuer_as_its_audience() {
    let key = SigningKey::generate().unwrap();
    let daemon = with_idp(&key).await;
    daemon.register("search", TOOL_RESOURCE).await;
    let issuer = issuer_of(&daemon).await;
    let (status, body) = daemon
        .call(
            Method::POST,
            "/v1/mcp/tools",
            Some(json!({"tool_id": "shadow", "resource_uri": issuer})),
        )
        .await;
    if status == 400 {
        assert_eq!(body["error"], "invalid_request", "{body}");
        return;
    }
    assert_eq!(status, 201, "{body}");
    let subject = subject_jwt(&daemon, &key, json!({}));
    let (status, body) = daemon.exchange(exchange_body(&subject, &issuer)).await;
    assert_eq!(status, 200, "{body}");
    let shadow_token = access_token(&body);
    let (status, body) = daemon.verify(&shadow_token, "shadow").await;
    if status == 200 {
        // It is a tool token for `shadow`: a compromised `shadow` must not trade it for
        // a token to another tool.
        let (status, body) = daemon
            .exchange(typed_exchange(&shadow_token, AGENT_MCP, TOOL_RESOURCE))
            .await;
        assert_error(status, &body, 401, "invalid_client");
    } else {
        assert_eq!(status, 403, "{body}");
    }
}
