//! Issue 12, findings 18 (filters refuse unknown values), 9 (audit floods) and 16 (a chain head
//! only the daemon can write): each test is named after its finding and failed on the code
//! before the fix.

use super::harness::{eventually, exchange_body, stub, Daemon};
use http::Method;
use serde_json::{json, Value};

const RESOURCE: &str = "https://mcp.example.com/tools/search";

/// The rows of `/v1/audit?<query>` once at least `n` are there.
async fn rows_when(d: &Daemon, query: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} audit rows for {query}"), || async {
        let (status, body) = d
            .call(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().cloned().unwrap_or_default();
        (events.len() >= n).then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_18_unknown_filter_values_are_refused() {
    let d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    let token = d.token_for("alice", RESOURCE).await;
    assert_eq!(d.verify(&token, "search").await.0, 200);
    assert_eq!(d.verify("not-a-token", "search").await.0, 403);
    let mut two_audiences = exchange_body(&stub(json!({"sub": "bob"})), RESOURCE);
    two_audiences["audience"] = json!([RESOURCE, "https://other.example.com"]);
    let (s, _) = d.exchange(two_audiences).await;
    assert_eq!(s, 400);
    let (s, _) = d
        .call(
            Method::POST,
            "/v1/signals/revocations",
            Some(json!({"kind": "token", "value": "jti-1"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = d
        .call(
            Method::POST,
            "/v1/mcp/decisions",
            Some(json!({"decisions": [
                {"tool_id": "search", "decision": "deny", "check": "made-up"},
                {"tool_id": "search", "decision": "allow", "check": "audience"}]})),
        )
        .await;
    assert_eq!(s, 202);
    let rows = rows_when(&d, "limit=1000", 9).await;

    // A value no row can carry is a 400 naming the allowed values, not an empty page.
    for (query, names) in [
        (
            "decision=denyed",
            "decision must be one of allow, deny, issued, denied",
        ),
        (
            "kind=verfy",
            "kind must be one of verify, exchange, gateway",
        ),
        (
            "check=audiense",
            "check must be one of malformed, algorithm",
        ),
        ("check=1000", "check must be one of"),
        (
            "decisoin=deny",
            "this endpoint takes tool_id, decision, subject",
        ),
    ] {
        let (status, body) = d
            .call(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "invalid_request", "{query}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(names), "{query}: {description}");
    }
    let long = format!("/v1/audit?subject={}", "x".repeat(2000));
    let (status, body) = d.call(Method::GET, &long, None).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("subject is too long"))
    );
    // The per-tool read takes its tool from the path only.
    let (status, body) = d
        .call(Method::GET, "/v1/tools/search/audit?tool_id=other", None)
        .await;
    assert_eq!(status, 400, "{body}");
    // The lists refuse a misspelt filter too.
    for path in [
        "/v1/tools?protocl=mcp",
        "/v1/tools?protocol=ftp",
        "/v1/mcp/tools?protocol=mcp&x=1",
        "/v1/tools/search?verbose=1",
        "/v1/signals/revocations?aftr=1",
        "/v1/federation/revocation-export?limit=5&page=2",
        "/v1/events?type=verify.deny",
    ] {
        let (status, body) = d.call(Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }

    // Every row written above is found by its own kind, decision and check.
    assert!(rows.len() >= 9, "{rows:#?}");
    for row in &rows {
        let mut query = format!(
            "limit=1000&kind={}&decision={}",
            row["kind"].as_str().unwrap(),
            row["decision"].as_str().unwrap().replace(':', "%3A")
        );
        if let Some(check) = row["check"].as_str().filter(|c| !c.is_empty()) {
            query.push_str(&format!("&check={check}"));
        }
        let (status, body) = d
            .call(Method::GET, &format!("/v1/audit?{query}"), None)
            .await;
        assert_eq!(status, 200, "{query}: {body}");
        assert!(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["seq"] == row["seq"]),
            "{query}: {body}"
        );
    }
    // A known value still filters: the exchange refusal is found as `denied`.
    let denied = rows_when(&d, "decision=denied&kind=exchange", 1).await;
    assert_eq!(denied[0]["check"], "invalid_target");
    // The gateway's made-up check is recorded as `malformed`, its name kept in the reason;
    // an allow carries no check.
    let gateway = rows_when(&d, "kind=gateway", 2).await;
    assert!(
        gateway.iter().any(|e| e["decision"] == "deny"
            && e["check"] == "malformed"
            && e["reason"].as_str().unwrap().contains("made-up")),
        "{gateway:#?}"
    );
    assert!(
        gateway
            .iter()
            .any(|e| e["decision"] == "allow" && e["check"] == ""),
        "{gateway:#?}"
    );
    d.stop().await;
}

/// Every row of `/v1/audit?<query>` (paged), newest first.
async fn all_rows(d: &Daemon, query: &str) -> Vec<Value> {
    let (status, body) = d
        .call(Method::GET, &format!("/v1/audit?limit=1000&{query}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

/// The events the rows stand for: the sum of their counts.
fn events(rows: &[Value]) -> i64 {
    rows.iter().map(|r| r["count"].as_i64().unwrap()).sum()
}

/// One request from `source` (a loopback address other than the harness's own), so that the
/// daemon sees another peer; the status.
async fn from_peer(d: &Daemon, source: [u8; 4], method: &str, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = d.url.strip_prefix("http://").unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .unwrap();
    let mut stream = socket.connect(authority.parse().unwrap()).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await
    .expect("no answer within 10 s")
    .unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// `toolgate audit verify --db PATH`: whether it passed, and what it said.
fn audit_verify(db: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["audit", "verify", "--db"])
        .arg(db)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_invalid_targets_are_refused_before_auditing() {
    let d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    let token = d.token_for("alice", RESOURCE).await;

    // verify: a tool_id no tool can have is a 400 and no row.
    for bad in ["bad tool!", &"x".repeat(200), "a\u{0}b", "../../etc"] {
        let (status, body) = d.verify(&token, bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
    // exchange: an audience that could never be one is a 400 and no row.
    for bad in ["not a uri", "*", "relative/path", "https://a.example/#frag"] {
        let (status, body) = d
            .exchange(exchange_body(&stub(json!({"sub": "bob"})), bad))
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"], "invalid_target", "{body}");
    }
    // A gateway's batch keeps its valid decisions (a tool id, or a server's resource) and
    // skips the others, saying so.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/mcp/decisions",
            Some(json!({"source": "gw", "decisions": [
                {"tool_id": "search", "decision": "allow", "subject": "alice"},
                {"tool_id": "bad tool!", "decision": "deny", "check": "registration"},
                {"tool_id": "", "decision": "deny", "check": "registration"},
                {"tool_id": RESOURCE, "decision": "deny", "check": "audience"},
                {"decision": "allow"}]})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"status": "recorded", "recorded": 2, "skipped": 3})
    );

    // Sentinels written after the refusals: once they are in the log, so would the refused
    // requests' rows be (the writer is first in, first out).
    assert_eq!(d.verify(&token, "ghost").await.0, 403);
    d.token_for("bob", "https://other.example.com/api").await;
    let verifies = rows_when(&d, "kind=verify", 1).await;
    assert_eq!(verifies.len(), 1, "{verifies:#?}");
    assert_eq!(verifies[0]["target"], "ghost");
    let exchanges = rows_when(&d, "kind=exchange", 2).await;
    assert_eq!(exchanges.len(), 2, "{exchanges:#?}");
    assert!(exchanges.iter().all(|e| e["decision"] == "issued"));
    let reported = rows_when(&d, "kind=gateway", 2).await;
    let targets: Vec<&str> = reported
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, [RESOURCE, "search"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_repeated_refusals_are_one_row_with_a_count() {
    let d = Daemon::production().await;
    d.register("search", RESOURCE).await;
    let anonymous = d.anonymous();
    // One peer: 40 forged tokens for one tool, 30 probes of tools that do not exist, 20 admin
    // calls without a token. Another peer: 5 forged tokens.
    for _ in 0..40 {
        assert_eq!(d.verify("forged.token.x", "search").await.0, 403);
    }
    for i in 0..30 {
        assert_eq!(
            d.verify("forged.token.x", &format!("ghost-{i}")).await.0,
            403
        );
    }
    for _ in 0..20 {
        let (status, _) = anonymous
            .send(Method::GET, "/v1/audit", None)
            .await
            .unwrap();
        assert_eq!(status.as_u16(), 401);
    }
    let forged = json!({"token": "forged.token.x", "tool_id": "search"}).to_string();
    for _ in 0..5 {
        let status = from_peer(&d, [127, 0, 0, 2], "POST", "/v1/mcp/verify", &forged).await;
        assert_eq!(status, 403);
    }
    // The windows close a second later (by the daemon's clock).
    d.clock.advance(1);
    let count = |query: &'static str, n: i64| {
        let d = &d;
        async move {
            eventually(&format!("{n} events in {query}"), || async {
                let rows = all_rows(d, query).await;
                (events(&rows) >= n).then_some(rows)
            })
            .await
        }
    };
    let search = count("kind=verify&tool_id=search", 45).await;
    assert_eq!(events(&search), 45, "{search:#?}");
    // Per peer: the first refusal at once, its repeats in one row.
    let mut counts: Vec<i64> = search
        .iter()
        .map(|r| r["count"].as_i64().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 1, 4, 39], "{search:#?}");
    // Probes of unknown tools are one key whatever the tool: the first row names it, the
    // count row names none (its repeats differ in target).
    let verifies = count("kind=verify", 75).await;
    assert_eq!(events(&verifies), 75, "{verifies:#?}");
    let probes: Vec<Value> = verifies
        .into_iter()
        .filter(|r| r["target"] != "search")
        .collect();
    assert_eq!(events(&probes), 30, "{probes:#?}");
    assert_eq!(probes.len(), 2, "{probes:#?}");
    assert!(probes
        .iter()
        .any(|r| r["count"] == 1 && r["target"] == "ghost-0"));
    assert!(probes.iter().any(|r| r["count"] == 29 && r["target"] == ""));
    let unauthorized = count("kind=admin&decision=unauthorized", 20).await;
    assert_eq!(events(&unauthorized), 20, "{unauthorized:#?}");
    assert_eq!(unauthorized.len(), 2, "{unauthorized:#?}");

    // The count is part of the hashed row.
    let (db, _dir) = (d.db_path(), d.dir.clone());
    d.stop().await;
    let (ok, said) = audit_verify(&db);
    assert!(ok, "{said}");
    let seq = search.iter().find(|r| r["count"] == 39).unwrap()["seq"]
        .as_i64()
        .unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE audit_log SET count = 1 WHERE seq = ?1", [seq])
        .unwrap();
    let (ok, said) = audit_verify(&db);
    assert!(!ok, "{said}");
    assert!(said.contains(&format!("row {seq} was modified")), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_old_rows_are_pruned_and_the_chain_still_verifies() {
    // The option is read from the config file, bounded.
    let dir = tempfile::tempdir().unwrap();
    for (value, ok) in [("0", false), ("36501", false), ("-1", false), ("30", true)] {
        let path = dir.path().join("c.json");
        std::fs::write(&path, format!(r#"{{"audit_retention_days": {value}}}"#)).unwrap();
        let flags = toolgate::config::ServeFlags {
            dev: true,
            config: Some(path),
            ..Default::default()
        };
        let parsed = toolgate::config::Config::from_flags(&flags);
        assert_eq!(parsed.is_ok(), ok, "{value}");
        if ok {
            assert_eq!(parsed.unwrap().audit_retention_days, Some(30));
        }
    }

    let d = Daemon::with(|c| {
        c.dev = true;
        c.audit_retention_days = Some(7);
    })
    .await;
    d.register("search", RESOURCE).await;
    let token = d.token_for("alice", RESOURCE).await;
    for _ in 0..20 {
        assert_eq!(d.verify(&token, "search").await.0, 200);
    }
    let old = rows_when(&d, "kind=verify", 20).await;
    let newest_old = old[0]["seq"].as_i64().unwrap();
    // Eight days on, the next row written finds the old ones beyond the retention.
    d.clock.advance(8 * 86_400);
    let fresh = d.token_for("bob", RESOURCE).await;
    let checkpoint = rows_when(&d, "kind=audit", 1).await;
    assert_eq!(checkpoint.len(), 1);
    assert_eq!(checkpoint[0]["decision"], "pruned");
    let reason = checkpoint[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("checkpoint "), "{reason}");
    let rest = all_rows(&d, "").await;
    let oldest = rest
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .min()
        .unwrap();
    assert!(oldest > newest_old, "{rest:#?}");
    assert!(all_rows(&d, "kind=verify").await.is_empty());
    assert!(all_rows(&d, "tool_id=search&kind=verify").await.is_empty());
    assert_eq!(d.verify(&fresh, "search").await.0, 200);
    rows_when(&d, "kind=verify", 1).await;

    // What remains verifies from the checkpoint, offline and after a restart.
    let (ok, said) = audit_verify(&d.db_path());
    assert!(ok, "{said}");
    let d = d.restart().await;
    assert_eq!(d.verify(&fresh, "search").await.0, 200);
    rows_when(&d, "kind=verify", 2).await;
    let (db, _dir) = (d.db_path(), d.dir.clone());
    d.stop().await;
    let (ok, said) = audit_verify(&db);
    assert!(ok, "{said}");
    // Deleting the checkpoint row shows.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM audit_log WHERE kind = 'audit'", [])
        .unwrap();
    let (ok, said) = audit_verify(&db);
    assert!(!ok, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_a_full_disk_answers_503_and_recovers() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let pages = std::sync::Arc::new(AtomicU64::new(0));
    let hook = pages.clone();
    let d = Daemon::with(move |c| {
        c.dev = true;
        c.audit_page_limit = Some(hook);
    })
    .await;
    d.register("search", RESOURCE).await;
    let token = d.token_for("alice", RESOURCE).await;
    assert_eq!(d.verify(&token, "search").await.0, 200);
    rows_when(&d, "kind=verify", 1).await;

    // No room to grow (the limit cannot go below the file's size): soon a batch cannot be
    // written, and from then on verify fails closed.
    pages.store(1, Ordering::Relaxed);
    let allowed = std::sync::atomic::AtomicUsize::new(1);
    let refused = eventually("a verify is refused for want of space", || async {
        let (status, body) = d.verify(&token, "search").await;
        match status {
            200 => {
                allowed.fetch_add(1, Ordering::Relaxed);
                None
            }
            503 => Some(body),
            other => panic!("verify answered {other}: {body}"),
        }
    })
    .await;
    let mut allowed = allowed.into_inner();
    assert_eq!(refused["error"], "temporarily_unavailable", "{refused}");
    for _ in 0..3 {
        assert_eq!(d.verify(&token, "search").await.0, 503);
    }
    // A state change is refused too, and changes nothing.
    let (status, body) = d
        .call(
            Method::POST,
            "/v1/tools",
            Some(json!({"tool_id": "other", "resource_uri": "https://other.example.com/x"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(d.call(Method::GET, "/v1/tools/other", None).await.0, 404);

    // Space returns: the held rows are written and verify is served again.
    pages.store(0, Ordering::Relaxed);
    eventually("verify is served again", || async {
        let (status, _) = d.verify(&token, "search").await;
        (status == 200).then_some(())
    })
    .await;
    allowed += 1;
    // Every allow that was answered has its row; refused calls have none.
    let rows = rows_when(&d, "kind=verify&decision=allow", allowed).await;
    assert_eq!(rows.len(), allowed, "{rows:#?}");
    let (db, _dir) = (d.db_path(), d.dir.clone());
    d.stop().await;
    let (ok, said) = audit_verify(&db);
    assert!(ok, "{said}");
}

/// `toolgate audit verify --db PATH --key-file KEY`: exit code and output.
fn audit_verify_with(db: &std::path::Path, key: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["audit", "verify", "--db"])
        .arg(db)
        .arg("--key-file")
        .arg(key)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Rewrite the log from row `from` on as its writer would (each row's hash over the one before,
/// the head to the last), changing row `from`'s decision: everything a writer of the database
/// alone can do.
fn rewrite_history(db: &std::path::Path, from: i64) {
    use toolgate::store::audit::{chain_hash, hex};
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut prev: String = conn
        .query_row(
            "SELECT hash FROM audit_log WHERE seq = ?1",
            [from - 1],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .map(|h| hex(&h))
        .unwrap();
    let rows: Vec<(i64, toolgate::store::audit::Record)> = conn
        .prepare(
            "SELECT seq, ts_ms, kind, subject, target, decision, check_name, reason, request_id, \
             jti, count FROM audit_log WHERE seq >= ?1 ORDER BY seq",
        )
        .unwrap()
        .query_map([from], |r| {
            Ok((
                r.get(0)?,
                toolgate::store::audit::Record {
                    ts_ms: r.get(1)?,
                    kind: r.get::<_, String>(2)?.into(),
                    subject: r.get(3)?,
                    target: r.get(4)?,
                    decision: r.get::<_, String>(5)?.into(),
                    check: r.get::<_, String>(6)?.into(),
                    reason: r.get(7)?,
                    request_id: r.get(8)?,
                    jti: r.get(9)?,
                    count: r.get(10)?,
                },
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (seq, mut record) in rows {
        if seq == from {
            record.decision = if record.decision == "deny" {
                "allow"
            } else {
                "deny"
            }
            .into();
        }
        let hash = chain_hash(&prev, seq, &record);
        conn.execute(
            "UPDATE audit_log SET decision = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![&*record.decision, &hash[..], seq],
        )
        .unwrap();
        prev = hex(&hash);
    }
    conn.execute("UPDATE audit_head SET hash = ?1", [&prev])
        .unwrap();
}

/// Copy a stopped daemon's database to `name` beside it (no WAL is left after a clean stop).
fn copy_of(db: &std::path::Path, name: &str) -> std::path::PathBuf {
    let to = db.with_file_name(name);
    std::fs::copy(db, &to).unwrap();
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_16_a_writer_of_the_database_alone_cannot_rewrite_the_log() {
    let d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    let token = d.token_for("alice", RESOURCE).await;
    for _ in 0..3 {
        assert_eq!(d.verify(&token, "search").await.0, 200);
    }
    rows_when(&d, "kind=verify", 3).await;
    let (db, dir, config) = (d.db_path(), d.dir.clone(), d.config.clone());
    d.stop().await;

    // The key lives beside the database, not in it, readable by its owner only.
    let key = toolgate::config::default_audit_key_path(&db);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (ok, said) = audit_verify(&db);
    assert!(ok, "{said}");
    assert!(said.contains("tagged with the audit key"), "{said}");

    // Row 2 rewritten with every hash after it and the head: the chain walks, but the head's
    // tag is not the key's.
    let rewritten = copy_of(&db, "rewritten.db");
    rewrite_history(&rewritten, 2);
    let (code, said) = audit_verify_with(&rewritten, &key);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("is not tagged with the audit key"), "{said}");
    // Without the key nothing is called intact.
    let (code, said) = audit_verify_with(&rewritten, &dir.path().join("no-such-key"));
    assert_eq!(code, 2, "{said}");
    assert!(!said.contains("intact"), "{said}");
    // A tag removed is no better.
    let untagged = copy_of(&db, "untagged.db");
    rusqlite::Connection::open(&untagged)
        .unwrap()
        .execute("UPDATE audit_head SET tag = ''", [])
        .unwrap();
    let (code, said) = audit_verify_with(&untagged, &key);
    assert_eq!(code, 1, "{said}");
    // The untouched copy verifies with the key given explicitly.
    let (code, said) = audit_verify_with(&copy_of(&db, "copy.db"), &key);
    assert_eq!(code, 0, "{said}");

    // The daemon refuses to extend a rewritten log, or to start on a tagged log without its
    // key (and leaves no new key behind).
    let clock = {
        use toolgate::clock::Clock;
        std::sync::Arc::new(toolgate::clock::ManualClock::new(
            toolgate::clock::SystemClock.now(),
        ))
    };
    rewrite_history(&db, 2);
    let refused =
        toolgate::server::start(config.clone(), clock.clone(), std::future::pending()).await;
    assert!(refused.is_err(), "a rewritten log was accepted");
    let moved = dir.path().join("key-elsewhere");
    std::fs::rename(&key, &moved).unwrap();
    let mut clean = config.clone();
    clean.db_path = dir.path().join("copy.db");
    let refused =
        toolgate::server::start(clean.clone(), clock.clone(), std::future::pending()).await;
    assert!(
        refused.is_err(),
        "a tagged log was accepted without its key"
    );
    assert!(!toolgate::config::default_audit_key_path(&clean.db_path).exists());
    // With its key, the copy starts and goes on being tagged.
    clean.audit_key_file = Some(moved.clone());
    let running = toolgate::server::start(clean.clone(), clock, std::future::pending())
        .await
        .unwrap();
    running.stop().await.unwrap();
    let (code, said) = audit_verify_with(&clean.db_path, &moved);
    assert_eq!(code, 0, "{said}");
}

/// Review follow-up: the audit log names an admin call by its route's segments, so that a
/// change to a tool named `audit` is not recorded as a read of some tool's audit rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_9_a_tool_named_audit_is_audited_as_a_tool() {
    let d = Daemon::dev().await;
    d.register("audit", RESOURCE).await;
    let (s, body) = d.call(Method::DELETE, "/v1/tools/audit", None).await;
    assert_eq!(s, 200, "{body}");
    let rows = rows_when(&d, "kind=admin&limit=1000", 1).await;
    let targets: Vec<&str> = rows.iter().filter_map(|r| r["target"].as_str()).collect();
    assert!(targets.contains(&"write /v1/tools"), "{targets:?}");
    assert!(
        !targets.contains(&"GET /v1/tools/{tool_id}/audit"),
        "{targets:?}"
    );
    d.stop().await;
}

/// Review follow-up (finding 16): deleting the database file does not make a new log under the
/// old audit key; the start is refused until the key is moved away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_16_a_deleted_database_beside_its_key_does_not_start_a_new_log() {
    let d = Daemon::dev().await;
    d.register("search", RESOURCE).await;
    let mut config = d.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let clock = d.clock.clone();
    let db = d.db_path();
    let _dir = d.dir.clone();
    d.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut f = db.clone().into_os_string();
        f.push(suffix);
        let _ = std::fs::remove_file(f);
    }
    match toolgate::server::start(config, clock, std::future::pending()).await {
        Err(e) => assert!(e.to_string().contains("audit"), "{e}"),
        Ok(running) => {
            running.stop().await.unwrap();
            panic!("a deleted database started a new log under the old audit key");
        }
    }
}
