//! Minimal structured logging to stderr. Callers never pass tokens, keys or the admin secret.
//! Many values come from requests (a SET's `jti` and `iss`, an error an upstream sent): every
//! line is written with its control characters escaped, so no value can end the line and forge
//! another, or drive the terminal that shows it.

use crate::clock::{rfc3339, Clock, SystemClock};
use std::borrow::Cow;
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

/// Write one line to stderr: the time (RFC 3339), the level, the message with its control
/// characters escaped ([`escape_controls`]).
pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    let tag = match level {
        Level::Info => "INFO ",
        Level::Warn => "WARN ",
        Level::Error => "ERROR",
    };
    let text = message.to_string();
    let line = format!(
        "{} {tag} {}\n",
        rfc3339(SystemClock.now()),
        escape_controls(&text)
    );
    if TEST_CAPTURE.load(Ordering::Relaxed) {
        eprint!("{line}");
    } else {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Does `c` change what a log line looks like rather than print? Control characters (C0 — line
/// feed, carriage return, escape, … — DEL and C1), the Unicode line and paragraph separators,
/// and the bidirectional controls that reorder what a terminal or an editor shows.
pub fn is_disguising(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with each control character (C0, DEL, C1), line or paragraph separator and
/// bidirectional control written as its Rust escape (`\n`, `\r`, `\t`, `\u{1b}`, `\u{2028}`);
/// unchanged (and not copied) when there is none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_disguising) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_disguising(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(
            escape_controls("plain text, é and ✓"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("jti-1\n2026-01-01T00:00:00Z INFO  forged"),
            "jti-1\\n2026-01-01T00:00:00Z INFO  forged"
        );
        assert_eq!(escape_controls("a\rb\tc\0d"), "a\\rb\\tc\\u{0}d");
        assert_eq!(escape_controls("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape_controls("x\u{7f}\u{85}y"), "x\\u{7f}\\u{85}y");
        assert_eq!(
            escape_controls("a\u{2028}b\u{202e}c\u{2066}d"),
            "a\\u{2028}b\\u{202e}c\\u{2066}d"
        );
        // Backslashes and quotes are printable: left alone.
        assert_eq!(escape_controls(r#"C:\x "q""#), r#"C:\x "q""#);
    }
}
