//! The `toolgate` binary: the command line (private to the binary) over the library.

macro_rules! log_info { ($($t:tt)*) => { toolgate::log::write(toolgate::log::Level::Info, format_args!($($t)*)) } }
macro_rules! log_warn { ($($t:tt)*) => { toolgate::log::write(toolgate::log::Level::Warn, format_args!($($t)*)) } }
macro_rules! log_error { ($($t:tt)*) => { toolgate::log::write(toolgate::log::Level::Error, format_args!($($t)*)) } }

mod cli;
mod table;

fn main() -> std::process::ExitCode {
    cli::main()
}
