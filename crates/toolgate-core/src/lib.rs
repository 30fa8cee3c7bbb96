//! toolgate's decision core: everything a verdict needs and nothing that does I/O.
//!
//! JOSE hand-written on `ring` ([`jose`]), registered claims read strictly ([`claims`]),
//! RFC 8707 resource indicators ([`resource`]), the one ordered check pipeline ([`verify`]), the
//! in-memory revocation index ([`revocation`]) and the tool registry ([`registry`]). The daemon,
//! the guard and the fuzz targets all link this crate; it has no tokio, hyper or SQLite.

#![forbid(unsafe_code)]

pub mod blast;
pub mod claims;
pub mod clock;
pub mod ids;
pub mod jose;
pub mod oauth;
pub mod registry;
pub mod resource;
pub mod revocation;
pub mod verify;
