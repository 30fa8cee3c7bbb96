//! Counters and histograms for `/metrics` (Prometheus text format) and the dashboard. Labels
//! come only from bounded sets: registered tool ids, check names, result codes, event types.

use crate::verify::Check;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Histogram bucket upper bounds, in microseconds.
const BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

/// Exchange outcomes (the `result` label).
pub const EXCHANGE_RESULTS: [&str; 8] = [
    "issued",
    "invalid_request",
    "invalid_target",
    "unsupported_grant_type",
    "invalid_client",
    "access_denied",
    "unavailable",
    "error",
];

/// Signal event types (the `type` label); anything else counts as `other`.
pub const SIGNAL_TYPES: [&str; 8] = [
    "session-revoked",
    "credential-change",
    "account-disabled",
    "credential-compromise",
    "account-enabled",
    "mcp-tool-compromised",
    "token-revoked",
    "other",
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, micros: u64) {
        if let Some(i) = BUCKETS_US.iter().position(|b| micros <= *b) {
            if let Some(b) = self.buckets.get(i) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// The `q` quantile in milliseconds, interpolated within its bucket; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count.load(Ordering::Relaxed);
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        let mut lower = 0u64;
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.buckets) {
            let n = bucket.load(Ordering::Relaxed);
            if n > 0 && (seen + n) as f64 >= rank {
                let within = (rank - seen as f64) / n as f64;
                return Some((lower as f64 + within * (bound - lower) as f64) / 1000.0);
            }
            seen += n;
            lower = *bound;
        }
        Some(lower as f64 / 1000.0)
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Per-tool verify counts.
#[derive(Debug, Default)]
pub struct ToolStats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub last_seen_ms: AtomicI64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    tools: RwLock<HashMap<String, Arc<ToolStats>>>,
    unregistered: ToolStats,
    denials: [AtomicU64; 13],
    pub verify_latency: Histogram,
    pub exchange_latency: Histogram,
    exchanges: [AtomicU64; 8],
    signals: [AtomicU64; 8],
    signal_rejections: AtomicU64,
    audit_refusals: AtomicU64,
    key_rotations: AtomicU64,
}

/// Gauges read at scrape time from elsewhere in the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub tools_registered: usize,
    pub revocations_active: usize,
    pub audit_queue_depth: usize,
    pub audit_rows_written: u64,
    pub sse_clients: usize,
    /// Tokens whose verified signature the pipeline remembers (one entry per token).
    pub signature_cache_entries: usize,
    /// toolgate's own signing keys per state: next, active, retiring, retired.
    pub signing_keys: [usize; 4],
}

fn check_index(check: Check) -> usize {
    Check::ALL.iter().position(|c| *c == check).unwrap_or(0)
}

impl Metrics {
    /// Count one verify decision; `registered` is whether `tool_id` is a registered tool
    /// (only those become label values).
    pub fn verify(
        &self,
        tool_id: &str,
        registered: bool,
        denial: Option<Check>,
        micros: u64,
        now_ms: i64,
    ) {
        self.verify_latency.observe(micros);
        let stats = if registered {
            let existing = self.tools.read().ok().and_then(|m| m.get(tool_id).cloned());
            match existing {
                Some(s) => Some(s),
                None => self
                    .tools
                    .write()
                    .ok()
                    .map(|mut m| m.entry(tool_id.to_string()).or_default().clone()),
            }
        } else {
            None
        };
        let stats: &ToolStats = stats.as_deref().unwrap_or(&self.unregistered);
        stats.last_seen_ms.store(now_ms, Ordering::Relaxed);
        match denial {
            None => stats.allowed.fetch_add(1, Ordering::Relaxed),
            Some(check) => {
                if let Some(c) = self.denials.get(check_index(check)) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                stats.denied.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    pub fn exchange(&self, result: &str, micros: u64) {
        self.exchange_latency.observe(micros);
        let i = EXCHANGE_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(EXCHANGE_RESULTS.len() - 1);
        if let Some(c) = self.exchanges.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn signal(&self, event_type: &str) {
        let short = event_type.rsplit('/').next().unwrap_or(event_type);
        let i = SIGNAL_TYPES
            .iter()
            .position(|t| *t == short)
            .unwrap_or(SIGNAL_TYPES.len() - 1);
        if let Some(c) = self.signals.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn signal_rejected(&self) {
        self.signal_rejections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_refused(&self) {
        self.audit_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one rotation of toolgate's signing key.
    pub fn key_rotated(&self) {
        self.key_rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// Per-tool rows (tool_id, allowed, denied, last seen ms), sorted by tool_id.
    pub fn tools(&self) -> Vec<(String, u64, u64, i64)> {
        let mut v: Vec<_> = self
            .tools
            .read()
            .map(|m| {
                m.iter()
                    .map(|(k, s)| {
                        (
                            k.clone(),
                            s.allowed.load(Ordering::Relaxed),
                            s.denied.load(Ordering::Relaxed),
                            s.last_seen_ms.load(Ordering::Relaxed),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Denials per check name.
    pub fn denials(&self) -> Vec<(&'static str, u64)> {
        Check::ALL
            .iter()
            .zip(&self.denials)
            .map(|(c, n)| (c.name(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// (allowed, denied) over every verify, registered tool or not.
    pub fn totals(&self) -> (u64, u64) {
        let mut allowed = self.unregistered.allowed.load(Ordering::Relaxed);
        let mut denied = self.unregistered.denied.load(Ordering::Relaxed);
        for (_, a, d, _) in self.tools() {
            allowed += a;
            denied += d;
        }
        (allowed, denied)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP toolgate_verify_total Verify decisions by tool and decision.\n# TYPE toolgate_verify_total counter\n");
        for (tool, allowed, denied, _) in self.tools() {
            let _ = writeln!(
                out,
                "toolgate_verify_total{{tool_id=\"{tool}\",decision=\"allow\"}} {allowed}"
            );
            let _ = writeln!(
                out,
                "toolgate_verify_total{{tool_id=\"{tool}\",decision=\"deny\"}} {denied}"
            );
        }
        let (ua, ud) = (
            self.unregistered.allowed.load(Ordering::Relaxed),
            self.unregistered.denied.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "toolgate_verify_total{{tool_id=\"_unregistered\",decision=\"allow\"}} {ua}"
        );
        let _ = writeln!(
            out,
            "toolgate_verify_total{{tool_id=\"_unregistered\",decision=\"deny\"}} {ud}"
        );
        out.push_str("# HELP toolgate_verify_denials_total Verify denials by the check that denied.\n# TYPE toolgate_verify_denials_total counter\n");
        for (check, n) in self.denials() {
            let _ = writeln!(
                out,
                "toolgate_verify_denials_total{{check=\"{check}\"}} {n}"
            );
        }
        out.push_str("# HELP toolgate_verify_duration_seconds Time to decide a verify call.\n# TYPE toolgate_verify_duration_seconds histogram\n");
        self.verify_latency
            .render(&mut out, "toolgate_verify_duration_seconds");
        out.push_str("# HELP toolgate_exchange_duration_seconds Time to answer a token exchange.\n# TYPE toolgate_exchange_duration_seconds histogram\n");
        self.exchange_latency
            .render(&mut out, "toolgate_exchange_duration_seconds");
        out.push_str("# HELP toolgate_exchanges_total Token exchanges by result.\n# TYPE toolgate_exchanges_total counter\n");
        for (r, n) in EXCHANGE_RESULTS.iter().zip(&self.exchanges) {
            let _ = writeln!(
                out,
                "toolgate_exchanges_total{{result=\"{r}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP toolgate_signals_total Security events applied, by event type.\n# TYPE toolgate_signals_total counter\n");
        for (t, n) in SIGNAL_TYPES.iter().zip(&self.signals) {
            let _ = writeln!(
                out,
                "toolgate_signals_total{{type=\"{t}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP toolgate_signing_keys toolgate's own signing keys by state.\n# TYPE toolgate_signing_keys gauge\n");
        for (state, n) in ["next", "active", "retiring", "retired"]
            .iter()
            .zip(g.signing_keys)
        {
            let _ = writeln!(out, "toolgate_signing_keys{{state=\"{state}\"}} {n}");
        }
        let gauges: [(&str, &str, &str, f64); 9] = [
            (
                "toolgate_key_rotations_total",
                "counter",
                "Rotations of toolgate's signing key since start (asked for or scheduled).",
                self.key_rotations.load(Ordering::Relaxed) as f64,
            ),
            (
                "toolgate_signals_rejected_total",
                "counter",
                "Security Event Tokens refused.",
                self.signal_rejections.load(Ordering::Relaxed) as f64,
            ),
            (
                "toolgate_audit_refusals_total",
                "counter",
                "Requests refused because their audit record could not be queued.",
                self.audit_refusals.load(Ordering::Relaxed) as f64,
            ),
            (
                "toolgate_tools_registered",
                "gauge",
                "Registered tools.",
                g.tools_registered as f64,
            ),
            (
                "toolgate_revocations_active",
                "gauge",
                "Unexpired revocations.",
                g.revocations_active as f64,
            ),
            (
                "toolgate_audit_queue_depth",
                "gauge",
                "Audit records waiting to be written.",
                g.audit_queue_depth as f64,
            ),
            (
                "toolgate_audit_rows_written_total",
                "counter",
                "Audit records written since start.",
                g.audit_rows_written as f64,
            ),
            (
                "toolgate_event_stream_clients",
                "gauge",
                "Connected /v1/events clients.",
                g.sse_clients as f64,
            ),
            (
                "toolgate_signature_cache_entries",
                "gauge",
                "Tokens whose verified signature is remembered (one entry per token).",
                g.signature_cache_entries as f64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for _ in 0..100 {
            h.observe(80);
        }
        let p50 = h.quantile_ms(0.5).unwrap_or(0.0);
        assert!(p50 > 0.05 && p50 <= 0.1, "{p50}");
    }

    #[test]
    fn unregistered_tools_do_not_become_labels() {
        let m = Metrics::default();
        m.verify(
            "attacker-chosen-name",
            false,
            Some(Check::Registration),
            10,
            1,
        );
        m.verify("code-search", true, None, 10, 1);
        let text = m.render(&Gauges::default());
        assert!(!text.contains("attacker-chosen-name"));
        assert!(
            text.contains("toolgate_verify_total{tool_id=\"code-search\",decision=\"allow\"} 1")
        );
        assert!(text.contains("toolgate_verify_denials_total{check=\"registration\"} 1"));
        assert_eq!(m.totals(), (1, 1));
    }
}
