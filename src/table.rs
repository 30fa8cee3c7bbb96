//! Aligned text tables for people (the CLI's lists); `--json` prints the API's JSON instead.

use serde_json::Value;

/// Longest cell shown; longer values end in `…` (the JSON has them whole).
const MAX_CELL: usize = 60;

/// A table: a header row and rows of cells, printed with columns padded to their widest cell.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| cell(&c)).collect());
    }

    /// The table as lines; the last column is not padded (no trailing spaces).
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                out.push_str(c);
                if i < last {
                    out.push_str(&" ".repeat(w - c.chars().count() + 2));
                }
            }
            out
        };
        let mut lines = vec![line(self.header.clone())];
        lines.extend(
            self.rows
                .iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        );
        lines.join("\n")
    }
}

/// A value made safe and short for one cell: control characters become spaces, and a long
/// value is cut (a request-supplied value must not move the terminal's cursor).
fn cell(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| {
            if toolgate_guard::log::is_disguising(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    if clean.chars().count() > MAX_CELL {
        let mut cut: String = clean.chars().take(MAX_CELL - 1).collect();
        cut.push('…');
        cut
    } else if clean.is_empty() {
        "-".to_string()
    } else {
        clean
    }
}

/// A JSON field as cell text: strings as they are, lists joined by commas, numbers written out.
pub(crate) fn field(v: &Value, name: &str) -> String {
    match v.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `GET /v1/tools` as a table.
pub(crate) fn tools(body: &Value) -> String {
    let mut t = Table::new(&[
        "TOOL_ID",
        "RESOURCE",
        "SERVER",
        "PROTOCOLS",
        "CAPABILITIES",
        "EXECUTION",
    ]);
    for tool in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let resource = match field(tool, "resource_uri") {
            r if r.is_empty() => field(tool, "tool_id"),
            r => r,
        };
        let execution = if tool.get("requires_execution") == Some(&Value::Bool(true)) {
            "required"
        } else {
            ""
        };
        t.row(vec![
            field(tool, "tool_id"),
            resource,
            field(tool, "server_id"),
            field(tool, "protocols"),
            field(tool, "required_capabilities"),
            execution.to_string(),
        ]);
    }
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(0);
    format!("{}\n{count} tool(s)", t.render())
}

/// `GET /v1/signals/revocations` as a table.
pub(crate) fn revocations(body: &Value) -> String {
    let mut t = Table::new(&[
        "ID", "KIND", "FORMAT", "VALUE", "SOURCE", "EXPIRES", "REASON",
    ]);
    let list = body.get("revocations").and_then(Value::as_array);
    for r in list.into_iter().flatten() {
        let expires = match field(r, "expires_at") {
            e if e.is_empty() => "never".to_string(),
            e => e,
        };
        t.row(vec![
            field(r, "id"),
            field(r, "kind"),
            field(r, "format"),
            field(r, "value"),
            field(r, "source"),
            expires,
            field(r, "reason"),
        ]);
    }
    let mut out = t.render();
    if let Some(next) = body.get("next_after").and_then(Value::as_i64) {
        out.push_str(&format!("\nmore: --after {next}"));
    }
    out
}

/// `toolgate issuers`: one row per trusted issuer and transmitter.
pub(crate) fn issuers(body: &Value) -> String {
    let mut t = Table::new(&[
        "ISSUER",
        "ROLE",
        "SOURCE",
        "STATE",
        "KIDS",
        "LAST FETCH",
        "RESULT",
    ]);
    let list = body.get("issuers").and_then(Value::as_array);
    for i in list.into_iter().flatten() {
        let kids: Vec<String> = i
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|k| match k.get("kid").and_then(Value::as_str) {
                Some(kid) => kid.to_string(),
                None => "(no kid)".to_string(),
            })
            .collect();
        let last = i.get("last_fetch").filter(|l| !l.is_null());
        let result = match last {
            None if i.get("jwks_file").is_some() || field(i, "source") == "jwks_file" => {
                "file".to_string()
            }
            None => "not yet".to_string(),
            Some(l) => match l.get("error").and_then(Value::as_str) {
                Some(e) => format!("error: {e}"),
                None => "ok".to_string(),
            },
        };
        t.row(vec![
            field(i, "issuer"),
            field(i, "role"),
            field(i, "source"),
            field(i, "state"),
            kids.join(","),
            last.map(|l| field(l, "at")).unwrap_or_default(),
            result,
        ]);
    }
    t.render()
}

/// `GET /v1/keys` (or the keys of a rotation) as a table: the kid is shown whole (43
/// characters), the dates as the API gives them.
pub(crate) fn keys(body: &Value) -> String {
    let mut t = Table::new(&[
        "KID",
        "ALG",
        "STATE",
        "CREATED",
        "SIGNS_FROM",
        "SIGNS_UNTIL",
        "PUBLISHED_UNTIL",
        "PRIVATE_KEY",
    ]);
    let list = body.get("keys").and_then(Value::as_array);
    for k in list.into_iter().flatten() {
        t.row(vec![
            field(k, "kid"),
            field(k, "alg"),
            field(k, "state"),
            field(k, "created_at"),
            field(k, "signs_from"),
            field(k, "signs_until"),
            field(k, "not_after"),
            field(k, "private_key"),
        ]);
    }
    t.render()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_and_cells_are_safe() {
        let body = json!({"count": 2, "tools": [
            {"tool_id": "code-search", "resource_uri": "https://mcp.example.com/tools/code-search",
             "server_id": "s1", "protocols": ["mcp"], "required_capabilities": [],
             "requires_execution": false},
            {"tool_id": "x", "resource_uri": "", "server_id": "",
             "protocols": ["mcp", "http"], "required_capabilities": ["admin", "write"],
             "requires_execution": true},
        ]});
        let text = tools(&body);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let col = lines[0].find("RESOURCE").unwrap_or(0);
        assert!(col > 0);
        assert_eq!(lines[1].find("https://").unwrap_or(0), col, "{text}");
        assert!(lines[2].starts_with("x "), "{text}");
        assert!(lines[2].contains("mcp,http"), "{text}");
        assert!(lines[2].contains("admin,write"), "{text}");
        assert!(lines[2].trim_end().ends_with("required"), "{text}");
        assert_eq!(lines[3], "2 tool(s)");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
        assert_eq!(cell("a\u{1b}[2Jb"), "a [2Jb");
        assert_eq!(cell(&"y".repeat(100)).chars().count(), MAX_CELL);
    }

    #[test]
    fn revocations_show_never_and_paging() {
        let body = json!({"revocations": [
            {"id": 7, "kind": "subject", "format": "uri", "value": "wimse://d/ns/a/sa/b",
             "expires_at": null, "reason": "laptop stolen"}], "next_after": 7});
        let text = revocations(&body);
        assert!(
            text.lines().nth(1).unwrap_or("").contains("never"),
            "{text}"
        );
        assert!(text.ends_with("more: --after 7"), "{text}");
    }

    #[test]
    fn keys_show_states_and_open_dates() {
        let kid = "b".repeat(43);
        let body = json!({"keys": [
            {"kid": kid, "alg": "EdDSA", "state": "next", "created_at": "2026-01-01T00:00:00Z",
             "signs_from": "2026-01-01T00:10:00Z", "signs_until": null, "not_after": null,
             "private_key": "file"}]});
        let text = keys(&body);
        let cells: Vec<&str> = text
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(
            cells,
            [
                kid.as_str(),
                "EdDSA",
                "next",
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:10:00Z",
                "-",
                "-",
                "file"
            ],
            "{text}"
        );
    }
}
