pub mod harness;

mod attacks;
mod bad_input;
mod cli;
mod discovery;
mod exchange;
mod findings_gateway;
mod gateway;
mod interop;
mod layout;
mod observe;
mod pipeline;
mod production;
mod robustness;
mod signals;
mod tools;
mod verify;
