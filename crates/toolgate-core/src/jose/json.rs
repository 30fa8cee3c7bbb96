//! Strict JSON object parsing: UTF-8, top-level object, no duplicate names, bounded depth.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::JoseError;

/// Message used for the duplicate-name error. Only our visitor raises custom
/// ("data") errors, so together with `is_data()` this identifies duplicates.
const DUPLICATE: &str = "toolgate-jose: duplicate member name";

/// A `serde_json::Value` whose deserialization rejects repeated member names.
///
/// Recursion goes back through serde_json's `deserialize_any`, so its built-in
/// nesting limit (128) still applies and deep input errors instead of overflowing.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parse `bytes` as one strict JSON object (trailing data is an error).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JoseError> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(map))) => Ok(map),
        Ok(_) => Err(JoseError::Json),
        Err(e) if e.is_data() && e.to_string().starts_with(DUPLICATE) => {
            Err(JoseError::DuplicateName)
        }
        Err(_) => Err(JoseError::Json),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    #[test]
    fn parses_objects() {
        let m = parse_object(br#" {"a":1,"b":[true,null,-2,1.5,"x"],"c":{"d":{}}} "#).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["a"], Value::from(1));
        assert_eq!(m["b"][3], Value::from(1.5));
        assert!(m["c"]["d"].as_object().unwrap().is_empty());
        assert_eq!(parse_object(b"{}").unwrap().len(), 0);
    }

    #[test]
    fn rejects_non_objects_and_garbage() {
        for bad in [
            &b"[]"[..],
            b"1",
            b"\"s\"",
            b"null",
            b"",
            b"{",
            b"{\"a\":1,}",
            b"{'a':1}",
            b"{\"a\":1} x",
            b"{\"a\":1}{}",
            b"{\"a\":NaN}",
            b"{\"a\":1e999}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
        ] {
            assert_eq!(parse_object(bad), Err(JoseError::Json), "{bad:?}");
        }
    }

    #[test]
    fn rejects_duplicates_at_any_depth() {
        for bad in [
            &br#"{"a":1,"a":1}"#[..],
            br#"{"a":1,"\u0061":2}"#,
            br#"{"x":{"a":1,"a":2}}"#,
            br#"{"x":[1,{"y":[{"a":1,"b":2,"a":3}]}]}"#,
        ] {
            assert_eq!(parse_object(bad), Err(JoseError::DuplicateName), "{bad:?}");
        }
        // Same name in different objects is fine.
        assert!(parse_object(br#"{"a":{"a":{"a":1}}}"#).is_ok());
    }

    #[test]
    fn a_string_equal_to_the_sentinel_is_not_a_duplicate() {
        let doc = format!(r#"{{"k":"{DUPLICATE}"}}"#);
        assert!(parse_object(doc.as_bytes()).is_ok());
    }

    #[test]
    fn deep_nesting_errors_without_overflow() {
        let mut deep = b"{\"a\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', 10_000));
        assert_eq!(parse_object(&deep), Err(JoseError::Json));
        let mut deep_obj = Vec::new();
        for _ in 0..10_000 {
            deep_obj.extend_from_slice(b"{\"a\":");
        }
        assert_eq!(parse_object(&deep_obj), Err(JoseError::Json));
        // Moderate nesting is fine.
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(parse_object(ok.as_bytes()).is_ok());
    }
}
