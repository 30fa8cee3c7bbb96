//! Registered JWT claims read strictly: each is present, absent, or malformed — a string
//! `exp` is an error, never "no exp".

use serde_json::{Map, Value};

/// Latest accepted NumericDate (9999-12-31T23:59:59Z): later is not a real time.
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// A claim that is present but of the wrong type or out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(
    /// The claim's name.
    pub &'static str,
);

/// A NumericDate claim: a non-negative integer number of seconds.
pub fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, Malformed> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (0..=MAX_NUMERIC_DATE).contains(&v) => Ok(Some(v)),
            _ => Err(Malformed(name)),
        },
        Some(_) => Err(Malformed(name)),
    }
}

/// A string claim; present but not a string is malformed.
pub fn string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, Malformed> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Malformed(name)),
    }
}

/// A list-of-strings claim (`caps`).
pub fn string_list(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<Vec<String>>, Malformed> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(Malformed(name)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(Malformed(name)),
    }
}

/// The `aud` claim as RFC 7519 allows it: one string, or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// No `aud` claim: the token is bound to nothing, and no check accepts it.
    Missing,
    /// Exactly one audience (a string, or an array of one).
    One(String),
    /// Several audiences: a token valid at more than one resource, which toolgate refuses.
    Many(Vec<String>),
    /// Neither a string nor an array of strings.
    Malformed,
}

/// Read the `aud` claim (RFC 7519 §4.1.3) without judging it; a one-element array counts as
/// [`Audience::One`].
pub fn audience(claims: &Map<String, Value>) -> Audience {
    match claims.get("aud") {
        None => Audience::Missing,
        Some(Value::String(s)) => Audience::One(s.clone()),
        Some(Value::Array(items)) => {
            let list: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect();
            match list {
                Some(mut l) if l.len() == 1 => Audience::One(l.remove(0)),
                Some(l) => Audience::Many(l),
                None => Audience::Malformed,
            }
        }
        Some(_) => Audience::Malformed,
    }
}

impl Audience {
    /// The single audience, if there is exactly one.
    pub fn single(&self) -> Option<&str> {
        match self {
            Audience::One(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn numeric_dates_are_tri_state() {
        let c = obj(
            json!({"exp": 10, "nbf": "10", "iat": 1.5, "neg": -1, "huge": 1e300, "big": 253402300800_i64}),
        );
        assert_eq!(numeric_date(&c, "exp"), Ok(Some(10)));
        assert_eq!(numeric_date(&c, "missing"), Ok(None));
        assert!(numeric_date(&c, "nbf").is_err());
        assert!(numeric_date(&c, "iat").is_err());
        assert!(numeric_date(&c, "neg").is_err());
        assert!(numeric_date(&c, "huge").is_err());
        assert!(numeric_date(&c, "big").is_err());
    }

    #[test]
    fn audiences() {
        assert_eq!(audience(&obj(json!({}))), Audience::Missing);
        assert_eq!(audience(&obj(json!({"aud": ["a"]}))).single(), Some("a"));
        assert_eq!(
            audience(&obj(json!({"aud": ["a", "b"]}))),
            Audience::Many(vec!["a".into(), "b".into()])
        );
        assert_eq!(audience(&obj(json!({"aud": 5}))), Audience::Malformed);
        assert_eq!(audience(&obj(json!({"aud": [5]}))), Audience::Malformed);
    }
}
