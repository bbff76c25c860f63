//! The `lensing-diffusion` command: one binary, one subcommand per job. Each subcommand parses
//! its flags and prints; the work is done by the library (`lensing_diffusion::*`).

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    lensing_diffusion::alloc::tune_allocator();
    let cli = cli::Cli::parse();
    match cli.command.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
