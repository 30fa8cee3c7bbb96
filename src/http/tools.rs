//! `/v1/mcp/tools` and `/v1/tools…`: one registry behind both.

use super::body::{self, form_pairs};
use super::error::ApiError;
use super::{json_response, require_admin, require_reader, Response, Result};
use crate::app::App;
use crate::clock::rfc3339;
use crate::registry::{valid_id, ToolInput, PROTOCOLS};
use crate::store::audit::Record;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

fn query_pairs<B>(req: &Request<B>) -> Result<Vec<(String, String)>> {
    form_pairs(req.uri().query().unwrap_or("").as_bytes())
}

fn query_value<B>(req: &Request<B>, name: &str) -> Result<Option<String>> {
    let pairs = query_pairs(req)?;
    body::single(&pairs, name)
        .map(|v| v.map(str::to_string))
        .map_err(|_| ApiError::invalid_request(format!("query parameter {name} is repeated")))
}

pub(super) fn list<B>(app: &App, req: &Request<B>) -> Result<Response> {
    require_reader(app, req.headers())?;
    body::known_parameters(&query_pairs(req)?, &["protocol"])?;
    let protocol = query_value(req, "protocol")?;
    if let Some(p) = &protocol {
        if !PROTOCOLS.contains(&p.as_str()) {
            return Err(ApiError::invalid_request(
                "protocol must be one of mcp, http, a2a",
            ));
        }
    }
    let registry = app
        .registry
        .read()
        .map_err(|_| ApiError::unavailable("tool registry is unavailable"))?;
    let tools = registry.list(protocol.as_deref());
    Ok(json_response(
        StatusCode::OK,
        &json!({"tools": tools, "count": tools.len()}),
    ))
}

pub(super) fn get<B>(app: &App, req: &Request<B>, tool_id: &str) -> Result<Response> {
    require_reader(app, req.headers())?;
    body::known_parameters(&query_pairs(req)?, &[])?;
    let tool = app
        .registry
        .read()
        .map_err(|_| ApiError::unavailable("tool registry is unavailable"))?
        .get(tool_id)
        .ok_or_else(tool_not_found)?;
    Ok(json_response(StatusCode::OK, &json!(tool)))
}

pub(super) async fn register(app: &App, req: Request<Incoming>, rid: &str) -> Result<Response> {
    require_admin(app, req.headers())?;
    app.audit_ready().map_err(|_| audit_unavailable())?;
    let entry = read_entry(app, req, None).await?;
    let tool_id = entry.tool_id.clone();
    match app.register_tool(entry).await {
        Ok(stored) => {
            crate::log_info!("registered tool {tool_id} for {}", stored.resource());
            record(app, rid, &tool_id, "registered", stored.resource()).await?;
            Ok(json_response(StatusCode::CREATED, &json!(stored)))
        }
        Err(crate::store::StoreError::Conflict) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tool_exists",
            "a tool with this tool_id is already registered",
        )),
        Err(e) => Err(e.into()),
    }
}

/// `PUT /v1/tools/{tool_id}` (admin): replace a registered tool's entry in place. The body is a
/// whole entry, as for registration (its `tool_id`, if given, must be the path's); fields left
/// out take their defaults. `registered_at` is kept, `updated_at` set.
pub(super) async fn update(
    app: &App,
    req: Request<Incoming>,
    tool_id: &str,
    rid: &str,
) -> Result<Response> {
    require_admin(app, req.headers())?;
    app.audit_ready().map_err(|_| audit_unavailable())?;
    if !valid_id(tool_id) {
        return Err(invalid_tool_id());
    }
    let entry = read_entry(app, req, Some(tool_id)).await?;
    let stored = app.update_tool(entry).await?.ok_or_else(tool_not_found)?;
    crate::log_info!("updated tool {tool_id} for {}", stored.resource());
    record(app, rid, tool_id, "updated", stored.resource()).await?;
    Ok(json_response(StatusCode::OK, &json!(stored)))
}

/// A tool entry from a JSON body, validated; for an update, `path_id` is the tool it replaces.
async fn read_entry(
    app: &App,
    req: Request<Incoming>,
    path_id: Option<&str>,
) -> Result<crate::registry::ToolEntry> {
    let (parts, incoming) = req.into_parts();
    let bytes = body::read_json(&parts.headers, incoming).await?;
    let mut object = body::json_object(&bytes)?;
    check_field_types(&object)?;
    object.retain(|_, v| !v.is_null());
    if let Some(id) = path_id {
        match object.get("tool_id") {
            None => {
                object.insert("tool_id".into(), json!(id));
            }
            Some(v) if v.as_str() == Some(id) => {}
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "tool_id in the body must be the one in the path",
                ))
            }
        }
    }
    let input: ToolInput = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|_| ApiError::invalid_request("invalid tool entry"))?;
    let entry = input
        .validate(&rfc3339(app.now()))
        .map_err(ApiError::invalid_request)?;
    if entry.resource() == app.issuer {
        // Tokens for toolgate's own audience are agent tokens; no tool may receive them.
        return Err(ApiError::invalid_request(
            "resource_uri must not be toolgate's own issuer",
        ));
    }
    Ok(entry)
}

fn invalid_tool_id() -> ApiError {
    ApiError::invalid_request("tool_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
}

pub(super) async fn deregister_by_query<B>(
    app: &App,
    req: &Request<B>,
    rid: &str,
) -> Result<Response> {
    require_admin(app, req.headers())?;
    let tool_id = query_value(req, "tool_id")?
        .ok_or_else(|| ApiError::invalid_request("tool_id query parameter is required"))?;
    remove(app, &tool_id, rid).await
}

pub(super) async fn deregister<B>(
    app: &App,
    req: &Request<B>,
    tool_id: &str,
    rid: &str,
) -> Result<Response> {
    require_admin(app, req.headers())?;
    remove(app, tool_id, rid).await
}

fn audit_unavailable() -> ApiError {
    ApiError::unavailable("the audit log is unavailable; nothing was changed")
}

/// The registration's audit row and live event, committed before the change is acknowledged.
async fn record(
    app: &App,
    rid: &str,
    tool_id: &str,
    decision: &'static str,
    resource: &str,
) -> Result<()> {
    let row = Record {
        ts_ms: app.now_ms(),
        kind: "registration".into(),
        subject: if app.dev {
            "dev".into()
        } else {
            "admin".into()
        },
        target: tool_id.into(),
        decision: decision.into(),
        reason: resource.into(),
        request_id: rid.into(),
        ..Default::default()
    };
    app.record_durable("registration", row)
        .await
        .map_err(|_| super::signals::durable_audit_failed())
}

async fn remove(app: &App, tool_id: &str, rid: &str) -> Result<Response> {
    app.audit_ready().map_err(|_| audit_unavailable())?;
    if !valid_id(tool_id) {
        return Err(invalid_tool_id());
    }
    let removed = app
        .deregister_tool(tool_id)
        .await?
        .ok_or_else(tool_not_found)?;
    crate::log_info!("deregistered tool {tool_id}");
    record(app, rid, tool_id, "deregistered", removed.resource()).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "deregistered", "tool_id": tool_id}),
    ))
}

fn tool_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "tool_not_found",
        "no tool with this tool_id is registered",
    )
}

/// Name the first unknown or mistyped field, without echoing any value.
fn check_field_types(object: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use serde_json::Value;
    for (name, value) in object {
        let ok = match name.as_str() {
            "tool_id" | "name" | "description" | "resource_uri" | "server_id"
            | "max_blast_radius" | "sender_constraint" | "registered_at" | "updated_at" => {
                matches!(value, Value::String(_) | Value::Null)
            }
            "requires_execution" => matches!(value, Value::Bool(_) | Value::Null),
            "required_capabilities" | "allowed_operations" | "allowed_targets" | "protocols" => {
                match value {
                    Value::Array(items) => items.iter().all(Value::is_string),
                    Value::Null => true,
                    _ => false,
                }
            }
            _ => return Err(ApiError::invalid_request("tool entry has an unknown field")),
        };
        if !ok {
            return Err(ApiError::invalid_request(format!(
                "{name} has the wrong type"
            )));
        }
    }
    Ok(())
}
