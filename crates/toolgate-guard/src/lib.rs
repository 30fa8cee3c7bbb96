//! The toolgate guard: audience binding checked inside an MCP tool server, with the same
//! decision pipeline as the toolgate daemon.
//!
//! toolgate mints every token for exactly one tool (its RFC 8707 resource URI is the token's
//! audience). A [`Guard`] keeps a copy of toolgate's signing keys, of the tools registered for
//! its server and of the revocation set, refreshes them in the background through one pooled
//! [`client::Client`], decides each call offline, and denies while it cannot confirm its copy
//! is current (fail closed).
//!
//! Put it in front of a tool server in one of three ways:
//!
//! - [`Protected`] wraps any hyper service; a function names the tool of a request from its
//!   path, or [`Protected::mcp`] reads the tool of each JSON-RPC message of an MCP request;
//! - `GuardLayer` (cargo feature `tower`) does the same as a tower layer, for axum or rmcp;
//! - [`Guard::check_http`] (or [`Guard::check`]) decides one request in your own code.
//!
//! A refused request never reaches the handler: it is answered as a resource server answers
//! (RFC 6750), e.g. `401` with `WWW-Authenticate: Bearer error="invalid_token",
//! error_description="audience mismatch", resource_metadata="…"`. An allowed one carries the
//! decision as request extensions: [`verify::Allowed`] and its `Arc<TokenClaims>`.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http_body_util::Full;
//! use hyper::body::{Bytes, Incoming};
//! use toolgate_guard::verify::Allowed;
//! use toolgate_guard::{Guard, GuardedBody, Protected};
//!
//! /// `/tools/<name>` calls the tool `<name>`; any other path is a request to the server.
//! fn tool_for(parts: &http::request::Parts) -> Option<String> {
//!     parts.uri.path().strip_prefix("/tools/").map(str::to_string)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = Guard::builder("http://127.0.0.1:8693", "https://tools.example.com/servers/search")
//!     .server_id("search")
//!     .public_url("https://tools.example.com")
//!     .connect()
//!     .await?;
//! let handler = hyper::service::service_fn(|req: http::Request<GuardedBody<Incoming>>| async move {
//!     // Only allowed requests get here; the verified subject comes with them.
//!     let subject = req.extensions().get::<Allowed>().map(|a| a.claims.sub.clone());
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(subject.unwrap_or_default()))))
//! });
//! let service = Protected::new(guard, handler, tool_for);
//! // Serve `service` with hyper's `http1::Builder::serve_connection`, as examples/hyper_tool.rs does.
//! # drop(service);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/hyper_tool.rs` is a complete hyper tool server; `examples/rmcp_tool.rs` an MCP
//! server built with the official Rust SDK (rmcp) behind `GuardLayer::mcp`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Log a line at INFO (never a token, a key or a secret).
#[allow(unused_macros)]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
/// Log a line at WARN.
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
#[allow(unused_imports, unused_macros)]
pub(crate) use {log_info, log_warn};

pub mod client;
pub mod guard;
#[cfg(feature = "tower")]
pub mod layer;
pub mod log;
pub mod mcp;
pub mod tls;

pub use guard::{Guard, GuardBuilder, GuardConfig, GuardedBody, Protected, Routing};
#[cfg(feature = "tower")]
pub use layer::{GuardLayer, GuardService};
pub use tls::ClientTls;
pub use toolgate_core::{clock, dpop, jose, mtls, oauth, registry, resource, revocation, verify};
