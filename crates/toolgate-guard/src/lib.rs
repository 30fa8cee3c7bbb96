//! The toolgate guard: audience binding checked inside an MCP tool server, with the same
//! decision pipeline as the toolgate daemon.
//!
//! A [`guard::Guard`] keeps a copy of toolgate's signing keys, of the tools registered for its
//! server and of the revocation set, refreshes them in the background through one pooled
//! [`client::Client`], and denies while it cannot confirm its copy is current.

#![forbid(unsafe_code)]

/// Log a line at INFO (never a token, a key or a secret).
#[allow(unused_macros)]
macro_rules! log_info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
/// Log a line at WARN.
macro_rules! log_warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
#[allow(unused_imports, unused_macros)]
pub(crate) use {log_info, log_warn};

pub mod client;
pub mod guard;
pub mod log;

pub use toolgate_core::{clock, jose, oauth, registry, resource, revocation, verify};
