//! The "bare server" ceiling for `scripts/bench.sh`: a hyper 1 HTTP/1.1 server that answers
//! every request with 200 `{"hello":"world"}`, built the same way as `src/server.rs`
//! (multi-thread tokio runtime, `http1::Builder`, keep-alive on, `TCP_NODELAY`).
//!
//! `cargo run --release --example bare_hello -- --listen 127.0.0.1:8080`

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;

const BODY: &[u8] = br#"{"hello":"world"}"#;

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read and discard the body, as a real handler would.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn parse_listen() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            s if s.starts_with("--listen=") => {
                listen = s.strip_prefix("--listen=").map(str::to_owned)
            }
            "-h" | "--help" => return Err("usage: bare_hello --listen 127.0.0.1:PORT".to_owned()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: bare_hello --listen ADDR"
                ))
            }
        }
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    listen
        .parse()
        .map_err(|e| format!("bad --listen {listen:?}: {e}"))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("bare_hello: listening on http://{}", listener.local_addr()?);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("bare_hello: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), service_fn(hello));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn main() -> ExitCode {
    let addr = match parse_listen() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_hello: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bare_hello: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_hello: {e}");
            ExitCode::FAILURE
        }
    }
}
