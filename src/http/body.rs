//! Reading request bodies within limits, and decoding JSON and form encodings strictly.

use super::error::ApiError;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::body::Incoming;
use serde_json::{Map, Value};
use std::time::Duration;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A body that has not arrived by then is abandoned.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// An over-limit body declared at most this long is read and discarded before the 413, so
/// that the client, still sending, sees the answer rather than a reset of the connection.
/// Longer ones are answered at once and the connection is closed.
const MAX_DRAINED_BYTES: u64 = 4 * 1024 * 1024;
/// How long such a body may take to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit, declared or sent (413).
    TooLarge,
    /// Did not arrive within `BODY_TIMEOUT` (408).
    TimedOut,
    /// The connection failed mid-body (400).
    Unreadable,
}

/// Read a whole body of at most `max` bytes, never buffering more. Over the limit, the rest is
/// read and discarded (up to `MAX_DRAINED_BYTES` in all, for `DRAIN_TIMEOUT`; not at all when
/// the client sent `Expect: 100-continue`) so that a client still sending gets the 413 rather
/// than a reset. Shared by the API and the gateway.
pub async fn read_limited(
    headers: &http::HeaderMap,
    mut body: Incoming,
    max: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        // A client waiting for `100 Continue` has sent nothing yet: reading would invite the
        // whole body; answering now spares it the upload.
        let waits_to_send = headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if n <= MAX_DRAINED_BYTES && !waits_to_send {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(&mut body, MAX_DRAINED_BYTES)).await;
        }
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let collected = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Unreadable)?;
            if let Ok(data) = frame.into_data() {
                if buf.len().saturating_add(data.len()) > max {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    })
    .await;
    match collected {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Err(BodyError::TooLarge)) => {
            let budget = MAX_DRAINED_BYTES.saturating_sub(buf.len() as u64);
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain(&mut body, budget)).await;
            Err(BodyError::TooLarge)
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => Ok(Bytes::from(buf)),
    }
}

/// Read and discard at most `budget` more bytes of a body, or to its end.
async fn drain(body: &mut Incoming, mut budget: u64) {
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            match budget.checked_sub(data.len() as u64) {
                Some(left) => budget = left,
                None => return,
            }
        }
    }
}

/// Read an API request body (at most `MAX_BODY_BYTES`).
pub async fn read(headers: &http::HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    read_limited(headers, body, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => ApiError::too_large(),
            BodyError::TimedOut => ApiError::new(
                http::StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "request body did not arrive in time",
            ),
            BodyError::Unreadable => ApiError::invalid_request("request body could not be read"),
        })
}

/// The media type of a request (`Content-Type` without parameters, lower-case; empty if absent).
pub fn media_type(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Read the body of an endpoint that takes JSON. Anything but `Content-Type: application/json`
/// is a 415 before a byte is read: a browser page cannot send that type across sites without a
/// CORS preflight, which this daemon never grants.
pub async fn read_json(headers: &http::HeaderMap, body: Incoming) -> Result<Bytes, ApiError> {
    if media_type(headers) != "application/json" {
        return Err(ApiError::unsupported_media_type(
            "Content-Type must be application/json",
        ));
    }
    read(headers, body).await
}

/// A JSON object body: strict UTF-8 JSON, no duplicate member names.
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    crate::jose::json::parse_object(bytes)
        .map_err(|_| ApiError::invalid_request("body must be a JSON object (no duplicate names)"))
}

/// An optional string member; any other type is a 400 naming the field.
pub fn opt_string(
    obj: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_request(format!(
            "{name} must be a string"
        ))),
    }
}

/// A JSON number that is a whole number within `i64`: `3600`, and also `3600.0` (JSON has one
/// number type; some encoders write every number with a fraction). `None` for anything else.
pub fn whole_number(value: &Value) -> Option<i64> {
    // 2^63 as f64: the first whole number past i64::MAX.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (-LIMIT..LIMIT).contains(f))
            .map(|f| f as i64)
    })
}

/// Decode `application/x-www-form-urlencoded` (also query strings) into ordered pairs.
pub fn form_pairs(input: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (
                pair.get(..i).unwrap_or_default(),
                pair.get(i + 1..).unwrap_or_default(),
            ),
            None => (pair, &[][..]),
        };
        let bad = || ApiError::invalid_request("form encoding is malformed");
        out.push((
            percent_decode(k, true).ok_or_else(bad)?,
            percent_decode(v, true).ok_or_else(bad)?,
        ));
    }
    Ok(out)
}

/// A path segment with its percent-escapes decoded (`+` is itself in a path): `a%3Ab` is the
/// tool `a:b`. A malformed escape or bytes that are not UTF-8 are a 400.
pub fn path_segment(segment: &str) -> Result<String, ApiError> {
    percent_decode(segment.as_bytes(), false)
        .ok_or_else(|| ApiError::invalid_request("the path has a malformed percent-escape"))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode percent-escapes (and `+` as a space in a form); `None` if malformed or not UTF-8.
fn percent_decode(input: &[u8], plus_is_space: bool) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut it = input.iter();
    while let Some(&b) = it.next() {
        match b {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hi = it.next().copied().and_then(hex)?;
                let lo = it.next().copied().and_then(hex)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `name` in `pairs`: `Ok(None)` if absent, an error if repeated.
pub fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, usize> {
    let mut found = pairs.iter().filter(|(k, _)| k == name);
    let first = found.next().map(|(_, v)| v.as_str());
    let extra = found.count();
    if extra > 0 {
        Err(extra + 1)
    } else {
        Ok(first)
    }
}

/// Refuse a query that names a parameter the endpoint does not take: a misspelt filter would
/// otherwise filter nothing and answer as if it had.
pub fn known_parameters(pairs: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    if pairs.iter().all(|(k, _)| allowed.contains(&k.as_str())) {
        return Ok(());
    }
    Err(ApiError::invalid_request(if allowed.is_empty() {
        "this endpoint takes no query parameters".to_string()
    } else {
        format!(
            "unknown query parameter; this endpoint takes {}",
            allowed.join(", ")
        )
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let p = form_pairs(b"a=1&b=x+y%2Fz&c&&d=%E2%9C%93").unwrap();
        assert_eq!(
            p,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y/z".into()),
                ("c".into(), "".into()),
                ("d".into(), "✓".into())
            ]
        );
        assert!(form_pairs(b"a=%4").is_err());
        assert!(form_pairs(b"a=%zz").is_err());
        assert!(form_pairs(b"a=%FF").is_err());
        assert_eq!(single(&p, "a"), Ok(Some("1")));
        assert_eq!(single(&p, "zz"), Ok(None));
        let dup = form_pairs(b"a=1&a=2").unwrap();
        assert_eq!(single(&dup, "a"), Err(2));
    }

    #[test]
    fn whole_numbers() {
        use serde_json::json;
        assert_eq!(whole_number(&json!(3600)), Some(3600));
        assert_eq!(whole_number(&json!(3600.0)), Some(3600));
        assert_eq!(whole_number(&json!(-2.0)), Some(-2));
        assert_eq!(whole_number(&json!(i64::MAX)), Some(i64::MAX));
        assert_eq!(whole_number(&json!(u64::MAX)), None);
        assert_eq!(whole_number(&json!(1e19)), None);
        assert_eq!(whole_number(&json!(1.5)), None);
        assert_eq!(whole_number(&json!("1")), None);
        assert_eq!(whole_number(&json!(null)), None);
    }

    #[test]
    fn decodes_path_segments() {
        assert_eq!(path_segment("a%3Ab").unwrap(), "a:b");
        assert_eq!(path_segment("a+b").unwrap(), "a+b");
        assert_eq!(path_segment("plain").unwrap(), "plain");
        assert!(path_segment("a%3").is_err());
        assert!(path_segment("a%zz").is_err());
        assert!(path_segment("%FF").is_err());
    }
}
