//! An MCP server built with the official Rust SDK (rmcp), served over Streamable HTTP on an
//! axum router, with the toolgate guard in front of its endpoint as a tower layer
//! ([`GuardLayer::mcp`]): every JSON-RPC message is decided, a `tools/call` against the tool
//! it names. The tools are `code_search` and `sql_admin`; each needs a token minted for
//! exactly that tool, and `initialize` / `tools/list` a token for this server or any of its
//! tools.
//!
//! ```sh
//! cargo run -p toolgate-guard --features tower --example rmcp_tool -- \
//!     --toolgate http://127.0.0.1:8693 --resource https://mcp.example.com/servers/rmcp \
//!     --server-id rmcp-tools [--listen 127.0.0.1:0] [--public-url http://127.0.0.1:PORT]
//! ```
//!
//! Flags may also come from `TOOLGATE_URL`, `TOOLGATE_RESOURCE`, `TOOLGATE_SERVER_ID`,
//! `TOOL_LISTEN` and `TOOL_PUBLIC_URL`. Prints `listening on http://ADDR` on stdout once ready;
//! the MCP endpoint is `/mcp`.

use axum::routing::get;
use axum::Json;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use std::io::Write;
use std::sync::Arc;
use toolgate_guard::verify::Allowed;
use toolgate_guard::{Guard, GuardLayer};
use tower_layer::Layer;

/// The arguments of `code_search`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SearchRequest {
    /// What to look for.
    query: String,
}

/// The arguments of `sql_admin`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SqlRequest {
    /// The statement to run.
    statement: String,
}

/// The MCP server: two tools, and nothing about tokens (the guard in front did the checking).
#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Tools>,
}

/// The subject the guard verified for this request (the HTTP request's extensions).
fn subject(parts: &http::request::Parts) -> String {
    parts
        .extensions
        .get::<Allowed>()
        .map(|a| a.claims.sub.clone())
        .unwrap_or_default()
}

#[tool_router]
impl Tools {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Search the code base.")]
    async fn code_search(
        &self,
        Parameters(SearchRequest { query }): Parameters<SearchRequest>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> CallToolResult {
        let text = format!("3 matches for {query:?} (for {})", subject(&parts));
        CallToolResult::success(vec![ContentBlock::text(text)])
    }

    #[tool(description = "Run an administrative SQL statement (this example only pretends).")]
    async fn sql_admin(
        &self,
        Parameters(SqlRequest { statement }): Parameters<SqlRequest>,
    ) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::text(format!(
            "would execute {statement:?}"
        ))])
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("code_search searches the code base; sql_admin runs SQL.")
    }
}

/// `--name value`, else the environment variable, else the default.
fn setting(args: &[String], flag: &str, env: &str, default: Option<&str>) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .or_else(|| default.map(str::to_string))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let toolgate = setting(
        &args,
        "--toolgate",
        "TOOLGATE_URL",
        Some("http://127.0.0.1:8693"),
    );
    let resource = setting(&args, "--resource", "TOOLGATE_RESOURCE", None)
        .ok_or("--resource (or TOOLGATE_RESOURCE) is required")?;
    let listen = setting(&args, "--listen", "TOOL_LISTEN", Some("127.0.0.1:0"));
    let listener = tokio::net::TcpListener::bind(listen.unwrap_or_default()).await?;
    let addr = listener.local_addr()?;

    // The public URL is the address clients use: challenges name the metadata under it.
    let public_url = setting(&args, "--public-url", "TOOL_PUBLIC_URL", None)
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut builder = Guard::builder(toolgate.unwrap_or_default(), resource).public_url(public_url);
    if let Some(id) = setting(&args, "--server-id", "TOOLGATE_SERVER_ID", None) {
        builder = builder.server_id(id);
    }
    let guard: Arc<Guard> = builder.connect().await?;

    let mcp = StreamableHttpService::new(
        || Ok(Tools::new()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let metadata = guard.metadata();
    let router = axum::Router::new()
        // Every message to the MCP endpoint passes the guard first.
        .route_service("/mcp", GuardLayer::mcp(guard).layer(mcp))
        // RFC 9728 metadata, named in every challenge: open to anyone.
        .route(
            "/.well-known/oauth-protected-resource",
            get(move || std::future::ready(Json(metadata.clone()))),
        );

    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    axum::serve(listener, router).await?;
    Ok(())
}
