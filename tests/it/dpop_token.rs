//! DPoP at the token endpoint (RFC 9449 §5, issue #14 part 1 and 2): a `DPoP` header on
//! `POST /v1/exchange/token` binds the minted token to the proof's key (`cnf.jkt`,
//! `token_type: DPoP`); every proof check refuses with 400 `invalid_dpop_proof`; with
//! `--dpop-nonce` the endpoint answers `use_dpop_nonce` and a `DPoP-Nonce` header.

use super::harness::*;
use http::Method;
use serde_json::{json, Value};
use toolgate::dpop::{sign_proof, ProofClaims};
use toolgate::jose::SigningKey;

const TOOL: &str = "https://mcp.example.com/tools/deploy";

/// A dev daemon.
async fn daemon(tweak: impl FnOnce(&mut toolgate::config::Config)) -> Daemon {
    Daemon::with(|c| {
        c.dev = true;
        tweak(c);
    })
    .await
}

fn proof(d: &Daemon, key: &SigningKey, url: &str, nonce: Option<&str>) -> String {
    sign_proof(
        key,
        &ProofClaims {
            htm: "POST",
            htu: url,
            access_token: None,
            nonce,
            iat: d.clock_now(),
        },
    )
    .unwrap()
}

/// POST an exchange of a plain stub for `TOOL` with these `DPoP` headers: status, headers, body.
async fn exchange_with(d: &Daemon, proofs: &[&str]) -> (u16, http::HeaderMap, Value) {
    exchange_as(d, &stub(json!({"sub": "agent-1"})), proofs).await
}

/// POST an exchange of `subject` for `TOOL` with these `DPoP` headers: status, headers, body.
async fn exchange_as(d: &Daemon, subject: &str, proofs: &[&str]) -> (u16, http::HeaderMap, Value) {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(proofs.iter().map(|p| ("dpop", *p)));
    let body = exchange_body(subject, TOOL).to_string();
    request_full(
        Method::POST,
        &d.url,
        "/v1/exchange/token",
        &headers,
        body.into_bytes(),
    )
    .await
}

fn token_endpoint(d: &Daemon) -> String {
    format!("{}/v1/exchange/token", d.url)
}

#[tokio::test]
async fn a_proof_binds_the_token_to_its_key() {
    let d = daemon(|_| {}).await;
    d.register("deploy", TOOL).await;
    let key = SigningKey::generate().unwrap();
    let (status, _, body) = exchange_with(&d, &[&proof(&d, &key, &token_endpoint(&d), None)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        claims_of(token)["cnf"],
        json!({"jkt": key.public_jwk().thumbprint()})
    );
    // Without a proof: a bearer token, unbound.
    let (status, _, body) = exchange_with(&d, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert!(claims_of(body["access_token"].as_str().unwrap())
        .get("cnf")
        .is_none());
    // The metadata says which algorithms a proof may use.
    let (_, meta) = d
        .call(Method::GET, "/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"])
    );
}

#[tokio::test]
async fn every_proof_fault_is_a_400_invalid_dpop_proof_and_nothing_is_minted() {
    let d = daemon(|_| {}).await;
    d.register("deploy", TOOL).await;
    let key = SigningKey::generate().unwrap();
    let url = token_endpoint(&d);
    let now = d.clock_now();
    let at = |iat: i64, htm: &str, htu: &str| {
        sign_proof(
            &key,
            &ProofClaims {
                htm,
                htu,
                access_token: None,
                nonce: None,
                iat,
            },
        )
        .unwrap()
    };
    let replayed = at(now, "POST", &url);
    assert_eq!(exchange_with(&d, &[&replayed]).await.0, 200);
    // The Host header names the daemon as well; the URL compared is the issuer's.
    let cases: Vec<(String, Vec<String>, &str)> = vec![
        (
            "replayed".into(),
            vec![replayed.clone()],
            "DPoP proof was already used",
        ),
        (
            "another method".into(),
            vec![at(now, "GET", &url)],
            "DPoP proof htm does not match the request method",
        ),
        (
            "another URL".into(),
            vec![at(now, "POST", &format!("{}/v1/mcp/verify", d.url))],
            "DPoP proof htu does not match the request URL",
        ),
        (
            "iat in the future".into(),
            vec![at(now + 61, "POST", &url)],
            "DPoP proof iat is in the future",
        ),
        (
            "iat too old".into(),
            vec![at(now - 61, "POST", &url)],
            "DPoP proof iat is too old",
        ),
        (
            "two headers".into(),
            vec![at(now, "POST", &url), at(now, "POST", &url)],
            "more than one DPoP proof",
        ),
        (
            "not a JWS".into(),
            vec!["not-a-proof".into()],
            "DPoP proof is not a compact JWS",
        ),
    ];
    for (what, proofs, description) in cases {
        let refs: Vec<&str> = proofs.iter().map(String::as_str).collect();
        let (status, _, body) = exchange_with(&d, &refs).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_dpop_proof", "{what}");
        assert_eq!(body["error_description"], description, "{what}");
        assert!(body.get("access_token").is_none());
    }
    // The refusals are audited as exchange denials naming the error and the tool (repeats
    // within a second are counted into one row).
    // The audit writer commits in the background: wait for the rows.
    let rows = eventually("the refusals are audited", || async {
        let (_, audit) = d
            .call(
                Method::GET,
                "/v1/audit?kind=exchange&check=invalid_dpop_proof&limit=50",
                None,
            )
            .await;
        audit["events"]
            .as_array()
            .filter(|r| !r.is_empty())
            .cloned()
    })
    .await;
    assert!(rows
        .iter()
        .all(|r| r["check"] == "invalid_dpop_proof" && r["target"] == TOOL));
}

/// Intruder review: an identity provider's DPoP-bound access token (`cnf.jkt`), stolen, was
/// exchanged without its key — for a bearer token, or one bound to the thief's key.
#[tokio::test]
async fn a_bound_subject_token_is_exchanged_only_by_its_holder() {
    let d = daemon(|_| {}).await;
    d.register("deploy", TOOL).await;
    let holder = SigningKey::generate().unwrap();
    let thief = SigningKey::generate().unwrap();
    let url = token_endpoint(&d);
    let bound = stub(json!({"sub": "agent-1", "cnf": {"jkt": holder.public_jwk().thumbprint()}}));
    let exchange = |proof: Option<String>| {
        let bound = &bound;
        let d = &d;
        async move {
            let proofs: Vec<&str> = proof.iter().map(String::as_str).collect();
            exchange_as(d, bound, &proofs).await
        }
    };
    let (status, _, body) = exchange(None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof")),
        "{body}"
    );
    let (status, _, body) = exchange(Some(proof(&d, &thief, &url, None))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error_description"],
        "DPoP proof key does not match the token binding"
    );
    let (status, _, body) = exchange(Some(proof(&d, &holder, &url, None))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["cnf"],
        json!({"jkt": holder.public_jwk().thumbprint()})
    );
    // A confirmation method toolgate cannot check is refused, never dropped; so is a
    // certificate binding without the certificate.
    for cnf in [
        json!({"kid": "k"}),
        json!({}),
        json!("jkt"),
        json!({"x5t#S256": "abc"}),
    ] {
        let token = stub(json!({"sub": "agent-1", "cnf": cnf}));
        let (status, body) = d.exchange(exchange_body(&token, TOOL)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{cnf}"
        );
    }
}

#[tokio::test]
async fn a_tool_that_requires_dpop_gets_no_token_without_a_proof() {
    let d = daemon(|_| {}).await;
    let (status, _) = d
        .call(
            Method::POST,
            "/v1/mcp/tools",
            Some(json!({"tool_id": "deploy", "resource_uri": TOOL, "sender_constraint": "dpop"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _, body) = exchange_with(&d, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof"))
    );
    assert_eq!(body["error_description"], "DPoP proof is missing");
    let key = SigningKey::generate().unwrap();
    let (status, _, body) = exchange_with(&d, &[&proof(&d, &key, &token_endpoint(&d), None)]).await;
    assert_eq!((status, body["token_type"].as_str()), (200, Some("DPoP")));
}

#[tokio::test]
async fn a_restart_refuses_only_proofs_that_could_have_been_seen_before_it() {
    // A daemon that never accepted a proof refuses none right after its start.
    let d = Daemon::dev().await;
    d.register("deploy", TOOL).await;
    let key = SigningKey::generate().unwrap();
    let first = proof(&d, &key, &token_endpoint(&d), None);
    let (status, _, _) = exchange_with(&d, &[&first]).await;
    assert_eq!(status, 200);
    // Restarted (the replay cache is gone): the proof used before, and any proof dated up to
    // the horizon the database kept, could be replays and are refused.
    let d = d.restart().await;
    let (status, _, body) = exchange_with(&d, &[&first]).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (
            400,
            Some(toolgate::dpop::ProofError::Predates.description())
        )
    );
    let (status, _, _) = exchange_with(&d, &[&proof(&d, &key, &token_endpoint(&d), None)]).await;
    assert_eq!(status, 400);
    // Proofs dated after it are not.
    d.clock.advance(toolgate::dpop::HORIZON_STEP + 1);
    let (status, _, body) = exchange_with(&d, &[&proof(&d, &key, &token_endpoint(&d), None)]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn with_nonces_the_endpoint_hands_one_out_and_accepts_it() {
    // Nonces: no start rule (a restart draws a new secret), so no clock move is needed.
    let d = Daemon::with(|c| {
        c.dev = true;
        c.dpop_nonce = true;
    })
    .await;
    d.register("deploy", TOOL).await;
    let key = SigningKey::generate().unwrap();
    let url = token_endpoint(&d);
    let (status, headers, body) = exchange_with(&d, &[&proof(&d, &key, &url, None)]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "use_dpop_nonce");
    let nonce = headers["dpop-nonce"].to_str().unwrap().to_string();
    let (status, headers, body) = exchange_with(&d, &[&proof(&d, &key, &url, Some(&nonce))]).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("dpop-nonce"));
    // A nonce of another server (or a stale one) is refused the same way.
    let (status, _, body) = exchange_with(
        &d,
        &[&proof(
            &d,
            &key,
            &url,
            Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        )],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
    // Ten minutes on, the nonce is stale.
    d.clock.advance(600);
    let (status, _, body) = exchange_with(&d, &[&proof(&d, &key, &url, Some(&nonce))]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
}
