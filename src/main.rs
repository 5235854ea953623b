//! The `afm` command line: one subcommand per pipeline stage.

mod cli;

/// mimalloc keeps the large tensors' pages mapped between ops; glibc returns every large block
/// to the kernel and pays page faults on each new one (half the run time in `sys` before).
#[global_allocator]
static GLOBAL: afm::alloc::MiMalloc = afm::alloc::MiMalloc;

use clap::Parser;

fn main() -> std::process::ExitCode {
    afm::alloc::keep_freed_pages();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
