pub mod harness;

mod bad_input;
mod cli;
mod discovery;
mod exchange;
mod gateway;
mod interop;
mod observe;
mod production;
mod signals;
mod tools;
mod verify;
