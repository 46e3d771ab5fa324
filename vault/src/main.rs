//! The `vault` binary: parses the command line and hands it to the library.
use clap::Parser;

/// mimalloc: the request path and rewrap allocate a few small buffers per
/// value; it measured 5-8% faster than the system allocator on rewrap.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match vault::cli::Cli::try_parse() {
        Ok(cli) => vault::cli::run(cli),
        Err(e) => {
            // Help and version go to stdout with exit 0; a usage error is
            // 64 (EX_USAGE), as the command line promises, not clap's 2.
            let _ = e.print();
            if e.use_stderr() {
                std::process::ExitCode::from(vault::cli::EXIT_CONFIG)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
    }
}
