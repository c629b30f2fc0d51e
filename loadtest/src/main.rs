//! The `cflow-load` binary: parses the command line and runs the load test. Errors print
//! one line on stderr and exit with status 1 (usage errors found by clap exit with 2).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = loadtest::Cli::parse();
    match loadtest::run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cflow-load: error: {err}");
            ExitCode::from(1)
        }
    }
}
