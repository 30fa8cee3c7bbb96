//! MCP over Streamable HTTP: every JSON-RPC message reaches one endpoint, so the tool a request
//! calls is in its body, not its path. This module reads the body strictly and names, for each
//! message, the tool a `tools/call` calls (`params.name`), or none for every other message.

use crate::jose::{json::parse_object, JoseError};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Why a request body is not a JSON-RPC message (or batch) the guard can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidMessage {
    /// Not JSON, or not UTF-8, or nested too deeply.
    NotJson,
    /// An object repeats a member name: two readers could see two different calls.
    DuplicateName,
    /// A batch (`[...]`) with no message in it.
    EmptyBatch,
    /// A message that is not a JSON object.
    NotAnObject,
    /// A `method` that is not a string.
    MethodNotString,
    /// A `tools/call` without a string `params.name`.
    ToolNameMissing,
    /// A batch with more messages than the configured cap.
    BatchTooLong,
}

/// The default cap on the messages of one batch: a client that needs more sends more requests.
pub const DEFAULT_MAX_BATCH: usize = 64;

impl InvalidMessage {
    /// The `error_description` of the `400 invalid_request` answer.
    pub fn description(self) -> &'static str {
        match self {
            Self::NotJson => "body is not JSON",
            Self::DuplicateName => "duplicate member name in the JSON-RPC message",
            Self::EmptyBatch => "an empty batch is not a JSON-RPC request",
            Self::NotAnObject => "each JSON-RPC message must be an object",
            Self::MethodNotString => "method must be a string",
            Self::ToolNameMissing => "tools/call needs a string params.name",
            Self::BatchTooLong => "the batch carries more messages than this server accepts",
        }
    }
}

impl std::fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}
impl std::error::Error for InvalidMessage {}

/// The tool names a body calls, one entry per JSON-RPC message (single or batch): `Some(name)`
/// for a `tools/call`, `None` for every other message (requests, notifications, and the
/// responses a client sends back to the server). Duplicate member names anywhere are refused,
/// and so is a batch of more than `max_batch` messages (before any message of it is read).
pub fn jsonrpc_targets(
    body: &[u8],
    max_batch: usize,
) -> Result<Vec<Option<String>>, InvalidMessage> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let batch: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|_| InvalidMessage::NotJson)?;
        if batch.is_empty() {
            return Err(InvalidMessage::EmptyBatch);
        }
        if batch.len() > max_batch {
            return Err(InvalidMessage::BatchTooLong);
        }
        batch
            .iter()
            .map(|m| message_target(&message(m.get().as_bytes())?))
            .collect()
    } else {
        Ok(vec![message_target(&message(body)?)?])
    }
}

/// One message, parsed strictly.
fn message(bytes: &[u8]) -> Result<Map<String, Value>, InvalidMessage> {
    match parse_object(bytes) {
        Ok(obj) => Ok(obj),
        Err(JoseError::DuplicateName) => Err(InvalidMessage::DuplicateName),
        // Valid JSON that is not an object, or not JSON at all.
        Err(_) if serde_json::from_slice::<&RawValue>(bytes).is_ok() => {
            Err(InvalidMessage::NotAnObject)
        }
        Err(_) => Err(InvalidMessage::NotJson),
    }
}

/// The tool one message calls, if it is a `tools/call`.
fn message_target(msg: &Map<String, Value>) -> Result<Option<String>, InvalidMessage> {
    match msg.get("method") {
        Some(Value::String(m)) if m == "tools/call" => msg
            .get("params")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .map(|name| Some(name.to_string()))
            .ok_or(InvalidMessage::ToolNameMissing),
        Some(Value::String(_)) => Ok(None),
        Some(_) => Err(InvalidMessage::MethodNotString),
        // A response or an error sent by the client (to a server request): no tool involved.
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn call(name: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#
        )
    }

    #[test]
    fn names_the_tool_of_each_message() {
        assert_eq!(
            jsonrpc_targets(call("search").as_bytes(), 64).unwrap(),
            vec![Some("search".to_string())]
        );
        let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
        assert_eq!(jsonrpc_targets(init.as_bytes(), 64).unwrap(), vec![None]);
        let response = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        assert_eq!(
            jsonrpc_targets(response.as_bytes(), 64).unwrap(),
            vec![None]
        );
        let batch = format!(" [{}, {init}, {}]", call("a"), call("b"));
        assert_eq!(
            jsonrpc_targets(batch.as_bytes(), 64).unwrap(),
            vec![Some("a".into()), None, Some("b".into())]
        );
    }

    #[test]
    fn refuses_what_two_readers_could_read_differently() {
        let cases: &[(&str, InvalidMessage)] = &[
            ("", InvalidMessage::NotJson),
            ("{", InvalidMessage::NotJson),
            ("[]", InvalidMessage::EmptyBatch),
            ("[1]", InvalidMessage::NotAnObject),
            ("\"tools/call\"", InvalidMessage::NotAnObject),
            (r#"{"method":7}"#, InvalidMessage::MethodNotString),
            (
                r#"{"method":"tools/call"}"#,
                InvalidMessage::ToolNameMissing,
            ),
            (
                r#"{"method":"tools/call","params":{"name":["a"]}}"#,
                InvalidMessage::ToolNameMissing,
            ),
            (
                r#"{"method":"ping","method":"tools/call","params":{"name":"a"}}"#,
                InvalidMessage::DuplicateName,
            ),
            (
                r#"{"method":"tools/call","params":{"name":"a","name":"b"}}"#,
                InvalidMessage::DuplicateName,
            ),
            (
                r#"[{"method":"ping"},{"method":"tools/call","params":{"name":"a","name":"b"}}]"#,
                InvalidMessage::DuplicateName,
            ),
            (r#"{"method":"ping"} {}"#, InvalidMessage::NotJson),
        ];
        for (body, want) in cases {
            assert_eq!(jsonrpc_targets(body.as_bytes(), 64), Err(*want), "{body}");
        }
    }

    #[test]
    fn a_batch_over_the_cap_is_refused_whole() {
        let two = r#"[{"method":"ping"},{"method":"ping"}]"#;
        assert_eq!(jsonrpc_targets(two.as_bytes(), 2).unwrap().len(), 2);
        assert_eq!(
            jsonrpc_targets(two.as_bytes(), 1),
            Err(InvalidMessage::BatchTooLong)
        );
        // A single message is not a batch: the cap does not apply.
        assert!(jsonrpc_targets(br#"{"method":"ping"}"#, 0).is_ok());
    }
}
