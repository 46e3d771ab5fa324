//! The `vault` binary: parses the command line and hands it to the library.
use clap::Parser;

/// mimalloc: the request path and rewrap allocate a few small buffers per
/// value; it measured 5-8% faster than the system allocator on rewrap.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vault::cli::run(vault::cli::Cli::parse())
}
