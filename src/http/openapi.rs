//! `GET /openapi.json`: the REST contract, `src/openapi.json`, as this daemon serves it.
//!
//! The file describes a production daemon. A dev daemon needs no credential at all, and
//! `--open-reads` none for the reads marked `x-toolgate-open-read`: the copy served then lists
//! the empty requirement `{}` beside their schemes, so that it says what this daemon does.

use super::{full, Response};
use crate::app::App;
use http::{header, HeaderValue};
use serde_json::Value;
use std::sync::OnceLock;

/// The document in the repository, for a production daemon.
pub const DOCUMENT: &str = include_str!("../openapi.json");

pub(super) fn document(app: &App) -> Response {
    static DEV: OnceLock<String> = OnceLock::new();
    static OPEN_READS: OnceLock<String> = OnceLock::new();
    let text: &str = if app.dev {
        DEV.get_or_init(|| served(true, true))
    } else if app.open_reads {
        OPEN_READS.get_or_init(|| served(false, true))
    } else {
        DOCUMENT
    };
    let mut resp = http::Response::new(full(text.to_owned()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// The document for a daemon in dev mode (every credential optional) or with open reads (the
/// marked reads' credentials optional). Unchanged if it cannot be read, which a unit test rules
/// out.
pub fn served(dev: bool, open_reads: bool) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(DOCUMENT) else {
        return DOCUMENT.to_owned();
    };
    let operations = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for op in operations {
        let open_read = op.get("x-toolgate-open-read") == Some(&Value::Bool(true));
        if !(dev || open_reads && open_read) {
            continue;
        }
        if let Some(security) = op.get_mut("security").and_then(Value::as_array_mut) {
            let optional = Value::Object(Default::default());
            if !security.is_empty() && !security.contains(&optional) {
                security.push(optional);
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| DOCUMENT.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_document_parses_and_each_mode_relaxes_only_what_it_opens() {
        let strict: Value = serde_json::from_str(DOCUMENT).unwrap();
        let open: Value = serde_json::from_str(&served(false, true)).unwrap();
        let dev: Value = serde_json::from_str(&served(true, true)).unwrap();
        let security = |doc: &Value, path: &str, method: &str| {
            doc["paths"][path][method]["security"]
                .as_array()
                .unwrap()
                .clone()
        };
        let optional = Value::Object(Default::default());
        assert!(!security(&strict, "/v1/tools", "get").contains(&optional));
        assert!(security(&open, "/v1/tools", "get").contains(&optional));
        assert!(!security(&open, "/v1/tools", "post").contains(&optional));
        assert!(security(&dev, "/v1/tools", "post").contains(&optional));
        // Public operations stay without requirements.
        assert!(security(&dev, "/v1/identity/jwks", "get").is_empty());
    }
}
