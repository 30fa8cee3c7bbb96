use super::harness::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_toolgate");
const RESOURCE: &str = "https://mcp.example.com/tools/code-search";

fn toolgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TOOLGATE_URL")
        .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn toolgate_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TOOLGATE_URL")
        .env_remove("TOOLGATE_ADMIN_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Run the binary off the async runtime.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        toolgate(&args)
    })
    .await
    .unwrap()
}

async fn run_stdin(args: Vec<String>, input: String) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        toolgate_stdin(&args, &input)
    })
    .await
    .unwrap()
}

fn args(list: &[&str], url: &str) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.push("--url".into());
    v.push(url.into());
    v
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

// ---------------------------------------------------------------- serve refuses

#[test]
fn dev_mode_refuses_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let o = toolgate(&[
        "serve",
        "--dev",
        "--listen",
        "0.0.0.0:0",
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "dev on 0.0.0.0 started");
    assert!(o.status.code().is_some(), "killed by a signal");
    let out = format!("{}{}", stderr(&o), stdout(&o));
    assert!(out.contains("loopback"), "{out}");
}

#[test]
fn production_mode_needs_an_admin_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let o = toolgate(&[
        "serve",
        "--db",
        db.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !o.status.success(),
        "production without an admin token started"
    );
    assert!(o.status.code().is_some(), "killed by a signal");
    let out = format!("{}{}", stderr(&o), stdout(&o));
    assert!(out.contains("admin-token-file"), "{out}");
}

// ---------------------------------------------------------------- help

#[test]
fn help_texts_name_their_options() {
    let cases: [(&[&str], &[&str]); 9] = [
        (&["--help"], &["serve", "tool", "token", "verify"]),
        (
            &["serve", "--help"],
            &[
                "--listen",
                "--db",
                "--issuer",
                "--dev",
                "--admin-token-file",
                "--config",
            ],
        ),
        (&["tool", "--help"], &["add", "list", "rm"]),
        (
            &["tool", "add", "--help"],
            &["--resource", "--url", "--require-cap", "--admin-token-file"],
        ),
        (&["tool", "list", "--help"], &["--url", "--protocol"]),
        (&["tool", "rm", "--help"], &["--url"]),
        (&["token", "--help"], &["exchange"]),
        (
            &["token", "exchange", "--help"],
            &[
                "--audience",
                "--subject-token",
                "--subject-token-type",
                "--scope",
                "--url",
            ],
        ),
        (&["verify", "--help"], &["--tool-id", "--token", "--url"]),
    ];
    for (argv, words) in cases {
        let o = toolgate(argv);
        assert_exit(&o, 0);
        let text = stdout(&o);
        for w in words {
            assert!(text.contains(w), "{argv:?} help lacks {w}: {text}");
        }
    }
}

#[test]
fn bad_usage_is_not_a_success() {
    for argv in [
        &["nope"][..],
        &["tool", "add"],
        &["tool", "add", "x"],
        &["verify", "--tool-id", "x"],
        &["token", "exchange", "--audience", "https://a.example/x"],
    ] {
        let o = toolgate(argv);
        assert!(!o.status.success(), "{argv:?} succeeded: {}", stdout(&o));
    }
}

// ---------------------------------------------------------------- against a daemon

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_token_verify_round_trip() {
    let d = Daemon::dev().await;
    let url = d.url.clone();

    // tool add
    let o = run(args(
        &["tool", "add", "code-search", "--resource", RESOURCE],
        &url,
    ))
    .await;
    assert_exit(&o, 0);
    let added = json_out(&o);
    assert_eq!(added["tool_id"], json!("code-search"), "{added}");
    assert_eq!(added["resource_uri"], json!(RESOURCE), "{added}");
    // A second tool whose tokens must be certificate-bound.
    let o = run(args(
        &[
            "tool",
            "add",
            "deploy",
            "--resource",
            "https://mcp.example.com/tools/deploy",
            "--sender-constraint",
            "mtls",
        ],
        &url,
    ))
    .await;
    assert_exit(&o, 0);
    assert_eq!(json_out(&o)["sender_constraint"], json!("mtls"));
    let o = run(args(&["tool", "rm", "deploy"], &url)).await;
    assert_exit(&o, 0);

    // tool list
    let o = run(args(&["tool", "list", "--json"], &url)).await;
    assert_exit(&o, 0);
    let listed = json_out(&o);
    assert_eq!(listed["count"], json!(1), "{listed}");
    assert_eq!(
        listed["tools"][0]["tool_id"],
        json!("code-search"),
        "{listed}"
    );
    // For people: an aligned table.
    let o = run(args(&["tool", "list"], &url)).await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("TOOL_ID") && lines[0].contains("RESOURCE"),
        "{text}"
    );
    assert!(lines[1].starts_with("code-search "), "{text}");
    assert_eq!(lines[1].find(RESOURCE), lines[0].find("RESOURCE"), "{text}");
    assert_eq!(lines.last().copied(), Some("1 tool(s)"), "{text}");

    // token exchange prints a bare JWT
    let subject = stub(json!({"sub": "alice"}));
    let o = run(args(
        &[
            "token",
            "exchange",
            "--audience",
            RESOURCE,
            "--subject-token",
            &subject,
        ],
        &url,
    ))
    .await;
    assert_exit(&o, 0);
    let jwt = stdout(&o).trim().to_string();
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    assert!(!jwt.contains(char::is_whitespace), "{jwt:?}");
    assert_eq!(claims_of(&jwt)["aud"], json!(RESOURCE));
    assert_eq!(header_of(&jwt)["alg"], json!("ES256"));

    // --subject-token - reads stdin
    let o = run_stdin(
        args(
            &[
                "token",
                "exchange",
                "--audience",
                RESOURCE,
                "--subject-token",
                "-",
                "--json",
            ],
            &url,
        ),
        format!("{subject}\n"),
    )
    .await;
    assert_exit(&o, 0);
    let resp = json_out(&o);
    assert_eq!(resp["token_type"], json!("Bearer"), "{resp}");
    assert_eq!(resp["access_token"].as_str().unwrap().split('.').count(), 3);

    // verify: allowed
    let o = run(args(
        &["verify", "--tool-id", "code-search", "--token", &jwt],
        &url,
    ))
    .await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("\"verified\": true"), "{}", stdout(&o));
    assert_eq!(json_out(&o)["claims"]["tool_id"], json!("code-search"));

    // verify: token from stdin
    let o = run_stdin(
        args(
            &["verify", "--tool-id", "code-search", "--token", "-"],
            &url,
        ),
        format!("{jwt}\n"),
    )
    .await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("\"verified\": true"), "{}", stdout(&o));

    // verify: the same token for another tool is an audience denial, exit 1
    let o = run(args(
        &[
            "tool",
            "add",
            "sql-admin",
            "--resource",
            "https://mcp.example.com/tools/sql-admin",
        ],
        &url,
    ))
    .await;
    assert_exit(&o, 0);
    let o = run(args(
        &["verify", "--tool-id", "sql-admin", "--token", &jwt],
        &url,
    ))
    .await;
    assert_exit(&o, 1);
    assert!(
        stdout(&o).contains("\"check\": \"audience\""),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("\"verified\": true"), "{}", stdout(&o));

    // the same through stdin
    let o = run_stdin(
        args(&["verify", "--tool-id", "sql-admin", "--token", "-"], &url),
        jwt.clone(),
    )
    .await;
    assert_exit(&o, 1);
    assert!(
        stdout(&o).contains("\"check\": \"audience\""),
        "{}",
        stdout(&o)
    );

    // a duplicate add is an API error: exit 1
    let o = run(args(
        &["tool", "add", "code-search", "--resource", RESOURCE],
        &url,
    ))
    .await;
    assert_exit(&o, 1);
    assert!(stdout(&o).contains("tool_exists"), "{}", stdout(&o));

    // tool rm, then again: 404, exit 1
    let o = run(args(&["tool", "rm", "code-search"], &url)).await;
    assert_exit(&o, 0);
    assert_eq!(json_out(&o)["status"], json!("deregistered"));
    let o = run(args(&["tool", "rm", "code-search"], &url)).await;
    assert_exit(&o, 1);
    assert!(stdout(&o).contains("tool_not_found"), "{}", stdout(&o));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    let o = run(args(&["tool", "list", "--json"], &url)).await;
    assert_exit(&o, 0);
    assert_eq!(json_out(&o)["count"], json!(1));

    // a token for a removed tool: registration
    let o = run(args(
        &["verify", "--tool-id", "code-search", "--token", &jwt],
        &url,
    ))
    .await;
    assert_exit(&o, 1);
    assert!(
        stdout(&o).contains("\"check\": \"registration\""),
        "{}",
        stdout(&o)
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_daemon_is_exit_2() {
    // A port nobody listens on: bound (so no one else takes it) but not listening.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", socket.local_addr().unwrap());
    let o = run(args(&["tool", "list", "--json"], &url)).await;
    assert_exit(&o, 2);
    let o = run(args(
        &["verify", "--tool-id", "x", "--token", "a.b.c"],
        &url,
    ))
    .await;
    assert_exit(&o, 2);
}

// ---------------------------------------------------------------- graceful shutdown

fn health_ok(addr: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let req = format!("GET /v1/sys/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

#[test]
fn serve_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let mut served = Served::start(&["--dev".as_ref(), "--db".as_ref(), db.as_os_str()], None);
    assert!(
        health_ok(&served.addr),
        "serve does not answer /v1/sys/health"
    );
    assert!(db.exists(), "database not created");

    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(served.child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    // A watchdog SIGKILLs a child that hangs instead of exiting (then the status is no code).
    let (exited, watch) = std::sync::mpsc::channel::<()>();
    let pid = served.child.id().to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            watch.recv_timeout(Duration::from_secs(30))
        {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let status = served.child.wait().unwrap();
    drop(exited);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status} (no code: hung, killed after 30 s)"
    );
    assert!(!health_ok(&served.addr), "still answering after exit");
}

/// `toolgate keys rotate` and `toolgate keys list` against a running daemon: a table by
/// default, the API's JSON with `--json`; a second rotation while one waits is the API's 409
/// (exit 1), a bad `--alg` a usage error (exit 2) that sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_list() {
    let d = Daemon::dev().await;
    let o = run(args(&["keys", "list"], &d.url)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.starts_with("KID "), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.contains(" ES256 ") && table.contains(" active "),
        "{table}"
    );

    let o = run(args(&["keys", "rotate", "--alg", "RS256"], &d.url)).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--alg must be ES256 or EdDSA"));

    let o = run(args(&["keys", "rotate", "--alg", "EdDSA"], &d.url)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[1].contains(" active "), "the previous key: {table}");
    assert!(
        rows[2].contains(" EdDSA ") && rows[2].contains(" next "),
        "{table}"
    );

    let o = run(args(&["keys", "rotate", "--json"], &d.url)).await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("HTTP 409"), "{}", stderr(&o));
    assert_eq!(json_out(&o)["error"], "rotation_pending");

    let o = run(args(&["keys", "list", "--json"], &d.url)).await;
    let listed = json_out(&o);
    assert_eq!(listed["count"], 2, "{listed}");
    assert_eq!(listed["keys"][1]["state"], "next");
    assert_eq!(listed["keys"][1]["alg"], "EdDSA");
    assert_eq!(listed["publish_ahead_seconds"], 600);
    d.stop().await;
}
