//! Minimal structured logging to stderr. Callers never pass tokens, keys or the admin secret.

use crate::clock::{rfc3339, Clock, SystemClock};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// How much a log line matters.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// What happened, for the record.
    Info,
    /// Something failed and was retried or worked around (a sync that will be tried again).
    Warn,
    /// Something failed that needs an operator.
    Error,
}

static TEST_CAPTURE: AtomicBool = AtomicBool::new(cfg!(test));

/// For test harnesses: write through `eprint!`, which libtest captures per test (threads the
/// test spawns inherit its capture), so a passing test's daemon log is shown only if it fails.
/// Not for the daemon itself: `eprint!` panics when stderr cannot be written.
pub fn capture_in_tests() {
    TEST_CAPTURE.store(true, Ordering::Relaxed);
}

/// Write one line to stderr: the time (RFC 3339), the level, the message.
pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    let tag = match level {
        Level::Info => "INFO ",
        Level::Warn => "WARN ",
        Level::Error => "ERROR",
    };
    let line = format!("{} {tag} {message}\n", rfc3339(SystemClock.now()));
    if TEST_CAPTURE.load(Ordering::Relaxed) {
        eprint!("{line}");
    } else {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}
