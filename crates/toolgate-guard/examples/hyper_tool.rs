//! A small plain-HTTP tool server protected by the toolgate guard ([`Protected`]).
//!
//! Two tools, one path each: `POST /tools/echo` answers the request body, `GET /tools/whoami`
//! the verified subject. Each needs a token minted for exactly that tool; any other path is a
//! server-level request (a token for this server or one of its tools). The guard answers
//! `GET /.well-known/oauth-protected-resource` itself.
//!
//! ```sh
//! cargo run -p toolgate-guard --example hyper_tool -- \
//!     --toolgate http://127.0.0.1:8693 --resource https://tools.example.com/servers/hyper \
//!     --server-id hyper-tools [--listen 127.0.0.1:0] [--public-url http://127.0.0.1:PORT]
//! ```
//!
//! Flags may also come from `TOOLGATE_URL`, `TOOLGATE_RESOURCE`, `TOOLGATE_SERVER_ID`,
//! `TOOL_LISTEN` and `TOOL_PUBLIC_URL`. Prints `listening on http://ADDR` on stdout once ready.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use toolgate_guard::verify::Allowed;
use toolgate_guard::{Guard, GuardedBody, Protected};

/// The tool a request calls: `/tools/<name>`.
fn tool_for(parts: &http::request::Parts) -> Option<String> {
    parts.uri.path().strip_prefix("/tools/").map(str::to_string)
}

/// The tool server itself: it only ever sees requests the guard allowed.
async fn tools(req: Request<GuardedBody<Incoming>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let subject = req
        .extensions()
        .get::<Allowed>()
        .map(|a| a.claims.sub.clone())
        .unwrap_or_default();
    let reply = |status: StatusCode, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        Ok(resp)
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/tools/echo") => {
            match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(body) => reply(StatusCode::OK, body.to_bytes()),
                Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::from("unreadable body")),
            }
        }
        (&Method::GET, "/tools/whoami") => reply(StatusCode::OK, Bytes::from(subject)),
        _ => reply(StatusCode::NOT_FOUND, Bytes::from("no such tool")),
    }
}

/// `--name value`, else the environment variable, else the default.
fn setting(args: &[String], flag: &str, env: &str, default: Option<&str>) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .or_else(|| default.map(str::to_string))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let toolgate = setting(
        &args,
        "--toolgate",
        "TOOLGATE_URL",
        Some("http://127.0.0.1:8693"),
    );
    let resource = setting(&args, "--resource", "TOOLGATE_RESOURCE", None)
        .ok_or("--resource (or TOOLGATE_RESOURCE) is required")?;
    let listen = setting(&args, "--listen", "TOOL_LISTEN", Some("127.0.0.1:0"));
    let listener = tokio::net::TcpListener::bind(listen.unwrap_or_default()).await?;
    let addr = listener.local_addr()?;

    // The public URL is the address clients use: challenges name the metadata under it.
    let public_url = setting(&args, "--public-url", "TOOL_PUBLIC_URL", None)
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut builder = Guard::builder(toolgate.unwrap_or_default(), resource).public_url(public_url);
    if let Some(id) = setting(&args, "--server-id", "TOOLGATE_SERVER_ID", None) {
        builder = builder.server_id(id);
    }
    let guard: Arc<Guard> = builder.connect().await?;
    let service = Protected::new(guard, service_fn(tools), tool_for);

    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
