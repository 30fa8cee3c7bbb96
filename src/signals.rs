//! Security Event Tokens (RFC 8417) pushed per RFC 8935: verification, subject identifiers
//! (RFC 9493) and the revocation each event asks for.

use crate::claims::{self, Audience};
use crate::config::Transmitter;
use crate::jose;
use crate::registry::valid_id;
use crate::revocation::{Format, Target};
use crate::store::revocations::{Action, NewRevocation, ADMIN_SOURCE};
use crate::verify;
use serde_json::{Map, Value};

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
pub const TOOL_COMPROMISED: &str = "https://starfly.dev/secevent/event-type/mcp-tool-compromised";
pub const TOKEN_REVOKED: &str = "https://starfly.dev/secevent/event-type/token-revoked";
/// Longest identifier accepted in a subject identifier member (and a SET's `jti`), in
/// characters.
const MAX_ID_LEN: usize = 1024;
/// Most events one SET may carry.
const MAX_EVENTS: usize = 32;

/// Why a SET was refused; `code` is the RFC 8935 §2.4 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalError {
    pub code: &'static str,
    pub description: &'static str,
}

fn bad(description: &'static str) -> SignalError {
    SignalError {
        code: "invalid_request",
        description,
    }
}

/// A SET ready to apply: who sent it, its id, and what it asks for.
#[derive(Debug, Clone)]
pub struct Signal {
    pub issuer: String,
    pub jti: String,
    pub event_types: Vec<String>,
    pub actions: Vec<Action>,
}

/// How a SET is checked.
pub struct Policy<'a> {
    /// toolgate's issuer: the `aud` a signed SET must name.
    pub audience: &'a str,
    pub transmitters: &'a [Transmitter],
    pub now: i64,
    pub leeway: i64,
    /// Oldest acceptable `iat`, in seconds before now.
    pub max_age: i64,
    /// Expiry given to revocations whose event names none (`None`: until lifted).
    pub default_ttl: Option<i64>,
}

/// When a revocation made at `now` for `seconds` lapses: at the latest 9999-12-31T23:59:59Z
/// (the last time RFC 3339 can write; the revocation holds until then), never past it.
pub fn expiry(now: i64, seconds: i64) -> i64 {
    now.saturating_add(seconds).min(claims::MAX_NUMERIC_DATE)
}

/// A compact-JWS SET from a configured transmitter: signature, `typ`, `iss`, `aud`, `iat`
/// and `jti` are all checked before any event is read.
pub fn verify_signed(token: &str, policy: &Policy<'_>) -> Result<Signal, SignalError> {
    let unverified =
        jose::decode(token).map_err(|_| bad("body is not a compact JWS Security Event Token"))?;
    if !matches!(
        unverified.header.typ.as_deref(),
        Some("secevent+jwt" | "application/secevent+jwt")
    ) {
        return Err(bad("SET header typ must be secevent+jwt"));
    }
    let iss = claims::string(&unverified.claims, "iss")
        .ok()
        .flatten()
        .ok_or(bad("SET has no iss"))?;
    let transmitter = policy
        .transmitters
        .iter()
        .find(|t| t.issuer == iss)
        .ok_or(SignalError {
            code: "invalid_issuer",
            description: "SET issuer is not a configured transmitter",
        })?;
    let invalid_key = SignalError {
        code: "invalid_key",
        description: "SET signature does not verify with the transmitter's keys",
    };
    if transmitter.keys.keys(policy.now).is_none() {
        return Err(SignalError {
            code: "invalid_key",
            description: "the transmitter's keys cannot be fetched; send the SET again later",
        });
    }
    let claims = verify::verify_signature(token, |h| {
        transmitter.keys.key(h.kid.as_deref(), policy.now)
    })
    .map_err(|_| invalid_key)?;
    let aud_ok = match claims::audience(&claims) {
        Audience::One(a) => a == policy.audience,
        Audience::Many(list) => list.iter().any(|a| a == policy.audience),
        _ => false,
    };
    if !aud_ok {
        return Err(SignalError {
            code: "invalid_audience",
            description: "SET audience does not name this toolgate",
        });
    }
    check_iat(&claims, policy)?;
    read_claims(&claims, iss, policy)
}

/// A SET's `iat` must be present and within `max_age` before now (plus the leeway after it):
/// its `jti` is remembered as long as that, so an older SET could be a replay whose `jti` was
/// forgotten.
fn check_iat(claims: &Map<String, Value>, policy: &Policy<'_>) -> Result<(), SignalError> {
    let iat = claims::numeric_date(claims, "iat")
        .map_err(|_| bad("SET iat is malformed"))?
        .ok_or(bad("SET has no iat"))?;
    if iat > policy.now.saturating_add(policy.leeway) {
        return Err(bad("SET was issued in the future"));
    }
    if iat < policy.now.saturating_sub(policy.max_age) {
        return Err(bad("SET is too old"));
    }
    Ok(())
}

/// The SET claims as plain JSON (dev mode only): `iss` and `aud` are recorded, not enforced;
/// `iat` is, as for a signed SET, so that a replay cannot outlive the memory of its `jti`.
pub fn read_unsigned(
    claims: &Map<String, Value>,
    policy: &Policy<'_>,
) -> Result<Signal, SignalError> {
    let iss = match claims.get("iss") {
        None => "dev",
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(_) => return Err(bad("SET iss must be a non-empty string")),
    };
    check_iat(claims, policy)?;
    read_claims(claims, iss, policy)
}

fn read_claims(
    claims: &Map<String, Value>,
    iss: &str,
    policy: &Policy<'_>,
) -> Result<Signal, SignalError> {
    if iss == ADMIN_SOURCE {
        return Err(SignalError {
            code: "invalid_issuer",
            description: "SET issuer admin is reserved for the admin API",
        });
    }
    let jti = match claims.get("jti") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_LEN => s.clone(),
        _ => return Err(bad("SET needs a jti string")),
    };
    let events = match claims.get("events") {
        Some(Value::Object(e)) if !e.is_empty() => e,
        Some(Value::Object(_)) => return Err(bad("SET has no events")),
        _ => return Err(bad("SET events must be an object")),
    };
    if events.len() > MAX_EVENTS {
        return Err(bad("SET carries too many events"));
    }
    let top_subject = match claims.get("sub_id") {
        Some(v) => Some(subject_id(v)?),
        None => None,
    };
    let mut actions = Vec::new();
    let mut event_types = Vec::new();
    for (event_type, payload) in events {
        let payload = payload
            .as_object()
            .ok_or(bad("each event must be a JSON object"))?;
        let expires_at = match claims::numeric_date(payload, "expires_at") {
            // A revocation that ends before it is applied would only cancel another.
            Ok(Some(t)) if t <= policy.now => return Err(bad("event expires_at is in the past")),
            Ok(Some(t)) => Some(t),
            Ok(None) => policy.default_ttl.map(|ttl| expiry(policy.now, ttl)),
            Err(_) => return Err(bad("event expires_at is malformed")),
        };
        let reason = match payload
            .get("reason_admin")
            .or_else(|| payload.get("reason"))
        {
            None => short_type(event_type).to_string(),
            Some(Value::String(s)) => s.chars().take(256).collect(),
            Some(Value::Object(o)) => o
                .get("en")
                .and_then(Value::as_str)
                .unwrap_or(short_type(event_type))
                .chars()
                .take(256)
                .collect(),
            Some(_) => return Err(bad("event reason must be a string or a language map")),
        };
        let event_subject = match payload.get("subject").or_else(|| payload.get("sub_id")) {
            Some(v) => Some(subject_id(v)?),
            None => None,
        };
        let subject = event_subject.or_else(|| top_subject.clone());
        let revoke = |target: Target| {
            Action::Revoke(NewRevocation {
                target,
                reason: reason.clone(),
                event_type: event_type.clone(),
                event_jti: jti.clone(),
                source: iss.to_string(),
                expires_at,
            })
        };
        let action = match event_type.as_str() {
            t if is_subject_revocation(t) || t == TOKEN_REVOKED => {
                let target = match (t, payload.get("jti"), subject) {
                    (TOKEN_REVOKED, Some(Value::String(j)), _)
                        if !j.is_empty() && j.chars().count() <= MAX_ID_LEN =>
                    {
                        Target::new(Format::Jti, "", j)
                    }
                    (TOKEN_REVOKED, Some(_), _) => {
                        return Err(bad("token-revoked jti must be a string"))
                    }
                    (TOKEN_REVOKED, None, Some(s)) if s.format == Format::Jti => s,
                    (TOKEN_REVOKED, None, _) => {
                        return Err(bad("token-revoked needs a jti or a jwt_id subject"))
                    }
                    (_, _, Some(s)) => s,
                    (_, _, None) => return Err(bad("event has no subject identifier")),
                };
                revoke(target)
            }
            t if t == format!("{RISC}account-enabled") => {
                let s = subject.ok_or(bad("event has no subject identifier"))?;
                // Only what this transmitter revoked: another's revocation stands.
                Action::Lift {
                    target: s,
                    source: iss.to_string(),
                }
            }
            TOOL_COMPROMISED => {
                let tool_id = payload
                    .get("tool_id")
                    .and_then(Value::as_str)
                    .filter(|t| valid_id(t))
                    .ok_or(bad("mcp-tool-compromised needs a valid tool_id"))?;
                revoke(Target::new(Format::Tool, "", tool_id))
            }
            _ => return Err(bad("unsupported event type")),
        };
        event_types.push(event_type.clone());
        actions.push(action);
    }
    Ok(Signal {
        issuer: iss.to_string(),
        jti,
        event_types,
        actions,
    })
}

fn is_subject_revocation(t: &str) -> bool {
    [
        (CAEP, "session-revoked"),
        (CAEP, "credential-change"),
        (RISC, "account-disabled"),
        (RISC, "credential-compromise"),
    ]
    .iter()
    .any(|(base, name)| t.strip_prefix(base) == Some(name))
}

fn short_type(t: &str) -> &str {
    t.rsplit('/').next().unwrap_or(t)
}

fn member<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, SignalError> {
    match obj.get(name) {
        Some(Value::String(s))
            if !s.is_empty()
                && s.chars().count() <= MAX_ID_LEN
                && !s.chars().any(char::is_control) =>
        {
            Ok(s)
        }
        _ => Err(bad("subject identifier is missing a required member")),
    }
}

/// An RFC 9493 subject identifier as a revocation target; unknown formats are refused.
pub fn subject_id(v: &Value) -> Result<Target, SignalError> {
    let obj = v.as_object().ok_or(bad("sub_id must be an object"))?;
    let format = match obj.get("format") {
        Some(Value::String(f)) => f.as_str(),
        _ => return Err(bad("sub_id needs a format")),
    };
    Ok(match format {
        "uri" => Target::new(Format::Uri, "", member(obj, "uri")?),
        "spiffe" => {
            let id = member(obj, "uri").or_else(|_| member(obj, "spiffe_id"))?;
            if !id.starts_with("spiffe://") {
                return Err(bad("a spiffe subject identifier must be a spiffe:// URI"));
            }
            Target::new(Format::Uri, "", id)
        }
        "email" => Target::new(
            Format::Email,
            "",
            &member(obj, "email")?.to_ascii_lowercase(),
        ),
        "iss_sub" => Target::new(Format::IssSub, member(obj, "iss")?, member(obj, "sub")?),
        "opaque" => Target::new(Format::Opaque, "", member(obj, "id")?),
        "jwt_id" => Target::new(Format::Jti, "", member(obj, "jti")?),
        _ => return Err(bad("unsupported subject identifier format")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy<'static> {
        Policy {
            audience: "https://tg.example",
            transmitters: &[],
            now: 1_000_000,
            leeway: 60,
            max_age: 3600,
            default_ttl: None,
        }
    }

    /// A dev SET, issued now unless it says otherwise.
    fn read(mut v: Value) -> Result<Signal, SignalError> {
        let claims = v.as_object_mut().unwrap();
        claims.entry("iat").or_insert(json!(1_000_000));
        read_unsigned(claims, &policy())
    }

    #[test]
    fn dev_sets_have_the_signed_iat_window() {
        let ev = json!({TOOL_COMPROMISED: {"tool_id": "t"}});
        let at = |iat: Value| read(json!({"jti": "1", "iat": iat, "events": ev.clone()}));
        assert!(at(json!(1_000_000)).is_ok());
        assert!(at(json!(1_000_060)).is_ok());
        assert!(at(json!(1_000_000 - 3600)).is_ok());
        assert_eq!(
            at(json!(1_000_061)).unwrap_err().description,
            "SET was issued in the future"
        );
        assert_eq!(
            at(json!(1_000_000 - 3601)).unwrap_err().description,
            "SET is too old"
        );
        assert_eq!(
            at(json!(null)).unwrap_err().description,
            "SET iat is malformed"
        );
        assert_eq!(
            at(json!("now")).unwrap_err().description,
            "SET iat is malformed"
        );
        let mut no_iat = json!({"jti": "1", "events": ev.clone()});
        let claims = no_iat.as_object_mut().unwrap();
        assert_eq!(
            read_unsigned(claims, &policy()).unwrap_err().description,
            "SET has no iat"
        );
    }

    #[test]
    fn subject_formats() {
        let t = |v| subject_id(&v).map(|t| (t.format, t.issuer, t.value));
        assert_eq!(
            t(json!({"format":"uri","uri":"wimse://a/b"})).unwrap().2,
            "wimse://a/b"
        );
        assert_eq!(
            t(json!({"format":"email","email":"A@X.org"})).unwrap().2,
            "a@x.org"
        );
        assert_eq!(
            t(json!({"format":"iss_sub","iss":"i","sub":"s"})).unwrap(),
            (Format::IssSub, "i".into(), "s".into())
        );
        assert_eq!(
            t(json!({"format":"opaque","id":"x"})).unwrap().0,
            Format::Opaque
        );
        assert_eq!(
            t(json!({"format":"spiffe","spiffe_id":"spiffe://td/x"}))
                .unwrap()
                .2,
            "spiffe://td/x"
        );
        assert_eq!(
            t(json!({"format":"spiffe","uri":"spiffe://td/x"}))
                .unwrap()
                .0,
            Format::Uri
        );
        assert_eq!(
            t(json!({"format":"jwt_id","iss":"i","jti":"j"})).unwrap(),
            (Format::Jti, "".into(), "j".into())
        );
        assert!(t(json!({"format":"phone_number","phone_number":"+1"})).is_err());
        assert!(t(json!({"format":"uri"})).is_err());
        assert!(t(json!({"format":"spiffe","uri":"https://x"})).is_err());
        assert!(t(json!("uri")).is_err());
    }

    #[test]
    fn events_map_to_actions() {
        let s = read(
            json!({"jti":"1","sub_id":{"format":"uri","uri":"wimse://a"},
            "events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{}}}),
        )
        .unwrap();
        assert!(matches!(&s.actions[0], Action::Revoke(r) if r.target.value == "wimse://a"));
        let s = read(
            json!({"jti":"2","sub_id":{"format":"uri","uri":"wimse://a"},
            "events":{"https://schemas.openid.net/secevent/risc/event-type/account-enabled":{}}}),
        )
        .unwrap();
        assert!(
            matches!(&s.actions[0], Action::Lift { target, source } if target.value == "wimse://a" && source == "dev")
        );
        let s =
            read(json!({"jti":"3","events":{TOOL_COMPROMISED:{"tool_id":"sql-admin"}}})).unwrap();
        assert!(matches!(&s.actions[0], Action::Revoke(r) if r.target.format == Format::Tool));
        let s = read(json!({"jti":"4","events":{TOKEN_REVOKED:{"jti":"abc"}}})).unwrap();
        assert!(matches!(&s.actions[0], Action::Revoke(r) if r.target.format == Format::Jti));
        let s = read(json!({"jti":"5","sub_id":{"format":"jwt_id","iss":"x","jti":"abc"},"events":{TOKEN_REVOKED:{}}})).unwrap();
        assert!(matches!(&s.actions[0], Action::Revoke(r) if r.target.value == "abc"));
    }

    #[test]
    fn bad_sets_are_refused() {
        let e = |v| read(v).unwrap_err().description;
        assert_eq!(e(json!({"events":{}})), "SET needs a jti string");
        assert_eq!(e(json!({"jti":"1","events":{}})), "SET has no events");
        assert_eq!(
            e(json!({"jti":"1","events":[]})),
            "SET events must be an object"
        );
        assert_eq!(
            e(json!({"jti":"1","events":{"urn:x":{}}})),
            "unsupported event type"
        );
        assert_eq!(
            e(
                json!({"jti":"1","sub_id":{"format":"uri","uri":"u"},"events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":5}})
            ),
            "each event must be a JSON object"
        );
        assert_eq!(
            e(
                json!({"jti":"1","events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{}}})
            ),
            "event has no subject identifier"
        );
        assert_eq!(
            e(json!({"jti":"1","events":{TOOL_COMPROMISED:{}}})),
            "mcp-tool-compromised needs a valid tool_id"
        );
    }
}
