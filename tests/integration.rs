#![allow(unreachable_pub)] // the test harness is one crate: its pub items are for its modules
//! One integration-test binary: every test boots the real server on 127.0.0.1:0 with a
//! temporary database and speaks HTTP to it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod it;
