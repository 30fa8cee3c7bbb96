//! The OpenAPI document (`src/openapi.json`) against the router it describes: every route of
//! `route()` in src/http/mod.rs documented with every method it serves, every documented
//! operation served, the README's API table naming each, and the daemon serving the file.

use super::harness::*;
use http::Method;
use serde_json::Value;
use std::collections::BTreeSet;

const ROUTER: &str = include_str!("../../src/http/mod.rs");
const DOCUMENT: &str = include_str!("../../src/openapi.json");
const README: &str = include_str!("../../README.md");
const METHODS: [&str; 8] = [
    "get", "head", "post", "put", "delete", "patch", "options", "trace",
];

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("src/openapi.json is JSON")
}

/// `(path template, METHOD)` for every arm of `route()`: `["v1", "tools", tool_id]` is
/// `/v1/tools/{tool_id}`; `get_only` serves GET and HEAD, otherwise the arm's `Method::X`s.
fn routed() -> BTreeSet<(String, String)> {
    let start = ROUTER
        .find("async fn route(")
        .expect("route() in src/http/mod.rs");
    let body = &ROUTER[start..];
    let end = body.find("\n}\n").expect("the end of route()");
    let body = &body[..end];
    // Each arm starts on its own line with a slice pattern; the `_ =>` arms add no method.
    let mut arms: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        let t = line.trim_start();
        if t.starts_with('[') && t.contains("] =>") {
            let pattern = &t[1..t.find("] =>").unwrap()];
            let segments: Vec<String> = pattern
                .split(',')
                .map(str::trim)
                .map(
                    |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                        Some(literal) => literal.to_string(),
                        None => format!("{{{s}}}"),
                    },
                )
                .collect();
            arms.push((format!("/{}", segments.join("/")), String::new()));
        }
        if let Some(last) = arms.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    assert!(arms.len() > 10, "route() arms were not found: {arms:?}");
    let mut out = BTreeSet::new();
    for (path, code) in arms {
        let mut methods = BTreeSet::new();
        if code.contains("get_only(") {
            methods.extend(["GET", "HEAD"]);
        }
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
        ] {
            if code.contains(&format!("Method::{m} ")) || code.contains(&format!("Method::{m}=")) {
                methods.insert(m);
            }
        }
        assert!(!methods.is_empty(), "no method found for {path}:\n{code}");
        for m in methods {
            out.insert((path.clone(), m.to_string()));
        }
    }
    out
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((path.clone(), m.to_ascii_uppercase()));
            }
        }
    }
    out
}

#[test]
fn finding_19_every_route_is_documented_and_every_documented_route_served() {
    let routed = routed();
    let documented = documented(&document());
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in src/openapi.json: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in src/openapi.json but not served: {unserved:?}"
    );
}

#[test]
fn finding_19_the_readme_api_table_names_every_documented_operation() {
    // HEAD goes with GET; the table writes `METHOD path` at the start of a cell.
    let table: String = README
        .lines()
        .filter(|l| l.starts_with("| `"))
        .collect::<Vec<_>>()
        .join("\n");
    for (path, method) in documented(&document()) {
        if method == "HEAD" {
            continue;
        }
        let named = format!("`{method} {path}");
        let ends = |rest: &str| rest.starts_with(['`', '[', '?']);
        assert!(
            table
                .match_indices(&named)
                .any(|(i, _)| ends(&table[i + named.len()..])),
            "README's API table does not name {method} {path}"
        );
    }
}

/// Every `$ref` names something in this document.
/// The `enum` of a component schema, as strings.
fn enum_of(doc: &Value, schema: &str) -> Vec<String> {
    let node = &doc["components"]["schemas"][schema];
    let list = node.get("enum").or_else(|| node["anyOf"][0].get("enum"));
    list.and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{schema} has no enum"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The audit filters' closed lists (finding 18) are the daemon's own: a value the document
/// offers is one the daemon takes, and the other way round.
#[test]
fn finding_19_the_audit_vocabulary_is_the_daemons() {
    use toolgate::store::audit::{DECISIONS, KINDS, REFUSAL_CODES};
    let doc = document();
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(enum_of(&doc, "AuditKind"), strings(KINDS));
    assert_eq!(enum_of(&doc, "AuditDecision"), strings(DECISIONS));
    let mut checks: Vec<String> = toolgate::verify::Check::ALL
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    checks.extend(strings(REFUSAL_CODES));
    assert_eq!(enum_of(&doc, "AuditCheck"), checks);
}

fn refs_resolve(doc: &Value, node: &Value, at: &str) {
    match node {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    let target = v.as_str().unwrap();
                    let pointer = target
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("{at}: external $ref {target}"));
                    assert!(
                        doc.pointer(pointer).is_some(),
                        "{at}: $ref {target} does not resolve"
                    );
                } else {
                    refs_resolve(doc, v, &format!("{at}/{k}"));
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs_resolve(doc, v, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

#[test]
fn finding_19_the_document_is_openapi_3_1() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(doc["info"]["title"], "toolgate");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    refs_resolve(&doc, &doc, "#");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'), "{path}");
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            assert!(METHODS.contains(&method.as_str()), "{path}: {method}");
            let at = format!("{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{at}"));
            assert!(ids.insert(id.to_string()), "{at}: operationId {id} twice");
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{at}: no responses");
            // Every request may be refused at the door (Host, Origin).
            assert!(responses.contains_key("403"), "{at}: no 403");
            let security = op["security"].as_array().unwrap_or_else(|| panic!("{at}"));
            for requirement in security {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{at}: scheme {name}");
                }
            }
            if !security.is_empty() {
                assert!(responses.contains_key("401"), "{at}: no 401");
            }
            let params: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(params, templated, "{at}: path parameters");
            if op.get("requestBody").is_some() {
                for code in ["400", "413", "415"] {
                    assert!(responses.contains_key(code), "{at}: no {code}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_19_the_daemon_serves_the_document() {
    // A production daemon serves the file as it is, to anyone.
    let d = Daemon::production().await;
    let (status, served) = d
        .anonymous()
        .send(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(served, document());
    d.stop().await;

    // A dev daemon's copy makes every credential optional, and only that differs.
    let d = Daemon::dev().await;
    let (status, served) = d.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&toolgate::http::openapi::served(true, true)).unwrap()
    );
    let mut relaxed = 0;
    let mut expected = document();
    for item in expected["paths"].as_object_mut().unwrap().values_mut() {
        for op in item.as_object_mut().unwrap().values_mut() {
            let security = op["security"].as_array_mut().unwrap();
            if !security.is_empty() {
                security.push(serde_json::json!({}));
                relaxed += 1;
            }
        }
    }
    assert!(relaxed > 10);
    assert_eq!(served, expected);
    d.stop().await;
}
