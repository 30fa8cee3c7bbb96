//! Issue 12, finding 8: connection slots an anonymous caller could exhaust. Peers are told apart
//! by their loopback source address (127.0.0.0/8 is all loopback on Linux).

use super::harness::{eventually, Daemon};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `d` from the loopback address `from`, with a small receive buffer.
async fn connect_from(d: &Daemon, from: [u8; 4]) -> TcpStream {
    let to: SocketAddr = d.url.strip_prefix("http://").unwrap().parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Everything the server sends until it closes (a reset counts as a close).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server never closed the connection");
    buf
}

/// A health check from `from`: `Some(status line)` if answered, `None` if the connection was
/// closed unanswered.
async fn probe(d: &Daemon, from: [u8; 4]) -> Option<String> {
    let mut s = connect_from(d, from).await;
    let req = b"GET /v1/sys/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return None;
    }
    let answer = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_08_slow_readers_and_tricklers_are_cut_off_while_others_are_served() {
    let d = Daemon::with(|c| {
        c.dev = true;
        c.max_connections = 16;
        c.max_connections_per_peer = 1;
        c.write_timeout = Duration::from_secs(1);
    })
    .await;

    // A body trickler from 127.0.0.4 holds its one connection (the body deadline is long) ...
    let mut trickler = connect_from(&d, [127, 0, 0, 4]).await;
    trickler
        .write_all(
            b"POST /v1/mcp/verify HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"tok",
        )
        .await
        .unwrap();
    // ... and every further connection it opens is closed unanswered, while its first still
    // waits (so the cap, not a timeout, closed them).
    eventually(
        "the trickler's first connection is being served",
        || async { probe(&d, [127, 0, 0, 4]).await.is_none().then_some(()) },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(probe(&d, [127, 0, 0, 4]).await, None);
    }
    // Others are served all along.
    assert_eq!(
        probe(&d, [127, 0, 0, 1]).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );

    // A slow reader from 127.0.0.3: many pipelined page loads, never read (a tiny window).
    let mut reader = connect_from(&d, [127, 0, 0, 3]).await;
    let one = b"GET /dashboard HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let last = b"GET /dashboard HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let loads = 400;
    let mut pipelined = one.repeat(loads - 1);
    pipelined.extend_from_slice(last);
    reader.write_all(&pipelined).await.unwrap();
    // Served all along, too.
    assert_eq!(
        probe(&d, [127, 0, 0, 1]).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    // Its write stalls, the watchdog drops it, and its slot is free again.
    eventually("the slow reader's slot is freed", || async {
        probe(&d, [127, 0, 0, 3]).await.map(|_| ())
    })
    .await;
    let got = read_until_closed(&mut reader).await;
    let page = 38_000;
    assert!(
        got.len() < loads * page,
        "the slow reader got all {} bytes: it was never cut off",
        got.len()
    );
    drop(trickler);
    d.stop().await;
}
