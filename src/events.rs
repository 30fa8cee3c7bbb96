//! The live event stream (`GET /v1/events`, Server-Sent Events): decisions are broadcast once;
//! each client has its own small buffer, and a client that falls behind is told how many
//! events it missed instead of slowing anyone down.

use hyper::body::{Bytes, Frame};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// Events kept for slow subscribers before they start missing some.
const BROADCAST_CAPACITY: usize = 1024;
/// Frames buffered per client.
const CLIENT_BUFFER: usize = 64;
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Event types a client may ask for with `?types=` (a prefix matches: `verify` = both).
pub const TYPES: [&str; 7] = [
    "exchange",
    "verify.allow",
    "verify.deny",
    "signal",
    "registration",
    "revocation",
    "admin",
];

/// One event, serialised once for every client.
#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    pub data: String,
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    closed: watch::Sender<bool>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
            closed: watch::channel(false).0,
            next_id: AtomicU64::new(1),
        }
    }

    /// Publish `{id, timestamp, type, subject, target, result, detail}`; free without clients.
    pub fn publish(
        &self,
        kind: &'static str,
        timestamp: &str,
        subject: &str,
        target: &str,
        result: &str,
        detail: &str,
    ) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = serde_json::json!({
            "id": id, "timestamp": timestamp, "type": kind, "subject": subject,
            "target": target, "result": result, "detail": detail,
        })
        .to_string();
        let _ = self.tx.send(Arc::new(Event { kind, data }));
    }

    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }

    /// End every stream (shutdown), so that no connection holds the daemon open.
    pub fn close(&self) {
        let _ = self.closed.send(true);
    }

    /// The event stream of one client, as a response body; `types` empty means every type.
    pub fn subscribe(&self, types: Vec<String>) -> EventStream {
        let mut events = self.tx.subscribe();
        let mut closed = self.closed.subscribe();
        let (out, rx) = mpsc::channel::<Bytes>(CLIENT_BUFFER);
        tokio::spawn(async move {
            let mut missed: u64 = 0;
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            if out
                .send(Bytes::from_static(b"retry: 3000\n: connected\n\n"))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let (frame, is_event) = tokio::select! {
                    _ = closed.changed() => return,
                    _ = beat.tick() => (Bytes::from_static(b": heartbeat\n\n"), false),
                    got = events.recv() => match got {
                        Ok(e) if types.is_empty() || types.iter().any(|t| e.kind.starts_with(t.as_str())) => {
                            (Bytes::from(format!("event: {}\ndata: {}\n\n", e.kind, e.data)), true)
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => { missed += n; continue }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if missed > 0 {
                    let note =
                        Bytes::from(format!("event: missed\ndata: {{\"missed\":{missed}}}\n\n"));
                    match out.try_send(note) {
                        Ok(()) => missed = 0,
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                match out.try_send(frame) {
                    Ok(()) => {}
                    // A slow reader loses events, never the daemon's time.
                    Err(mpsc::error::TrySendError::Full(_)) => missed += u64::from(is_event),
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        EventStream(rx)
    }
}

/// One client's Server-Sent Events, frame by frame.
pub struct EventStream(mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
