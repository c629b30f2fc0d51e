//! The `credentialflow` command: `run` the gateway, `check` a config, or start the `demo`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "credentialflow",
    version,
    about = "Edge API gateway on an io_uring thread-per-core data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "config/credentialflow.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if valid, else print every error (file:line) and exit 1.
    Check {
        #[arg(short, long, default_value = "config/credentialflow.toml")]
        config: PathBuf,
    },
    /// Run the gateway on the demo config with a built-in echo upstream.
    Demo {
        #[arg(short, long, default_value = "config/demo.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config } => match credentialflow::control::load_config(&config) {
            Some(loaded) => credentialflow::control::serve(loaded, |_| {}),
            None => 1,
        },
        Command::Check { config } => match credentialflow::control::load_config(&config) {
            Some(_) => {
                println!("{}: OK", config.display());
                0
            }
            None => 1,
        },
        Command::Demo { config } => credentialflow::demo::run(&config),
    };
    ExitCode::from(code as u8)
}
