//! toolgate: binds every MCP tool call to a token minted for exactly that tool.
//!
//! Register a tool's resource URI, exchange an agent credential for a token whose `aud` is that
//! resource (RFC 8693 + RFC 8707), and verify each call against the tool it reaches.

#![forbid(unsafe_code)]

pub mod log;

pub mod app;
pub mod audit;
pub mod blast;
pub mod claims;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod events;
pub mod exchange;
pub mod gateway;
pub mod guard;
pub mod http;
pub mod ids;
pub mod jose;
pub mod keys;
pub mod metrics;
pub mod registry;
pub mod resource;
pub mod revocation;
pub mod revocations;
pub mod server;
pub mod signals;
pub mod store;
pub mod verify;

#[doc(hidden)]
pub mod fuzzing;
