//! The `vault` binary: parses the command line and hands it to the library.
use clap::Parser;

fn main() -> std::process::ExitCode {
    vault::cli::run(vault::cli::Cli::parse())
}
