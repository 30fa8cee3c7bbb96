//! toolgate: binds every MCP tool call to a token minted for exactly that tool.
//!
//! Register a tool's resource URI, exchange an agent credential for a token whose `aud` is that
//! resource (RFC 8693 + RFC 8707), and verify each call against the tool it reaches.

#![forbid(unsafe_code)]

macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
macro_rules! log_error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
pub(crate) use {log_error, log_info, log_warn};

// The core and the guard, under the paths the daemon has always had.
pub use toolgate_core::{
    blast, claims, clock, dpop, ids, jose, mtls, oauth, registry, resource, revocation, verify,
};
pub use toolgate_guard::{client, guard, log};

pub mod app;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod dev_certs;
pub mod events;
pub mod exchange;
pub mod gateway;
pub mod hosts;
pub mod http;
pub mod issuers;
pub mod keys;
pub mod metrics;
pub mod revocations;
pub mod secret_file;
pub mod server;
pub mod signals;
pub mod spiffe;
pub mod store;
pub mod tls;

#[doc(hidden)]
pub mod fuzzing;
