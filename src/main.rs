//! The `credentialflow` command: `run` the gateway, `check` a config, start the `demo`, and
//! the credential helpers (`key new`, `basic new`, `jwk new`, `token mint`), `admin token new`
//! and `audit verify`.

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
    /// API keys: `key new` issues one.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Basic credentials: `basic new` hashes a password read from stdin.
    Basic {
        #[command(subcommand)]
        command: BasicCommand,
    },
    /// JSON Web Keys: `jwk new` makes a signing key and its JWKS.
    Jwk {
        #[command(subcommand)]
        command: JwkCommand,
    },
    /// JWTs: `token mint` signs one (for tests and demos).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The admin API: `admin token new` makes an admin token.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The audit trail: `audit verify` checks its hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Admin tokens: `token new` prints a new token and its hash for `[[admin.tokens]]`.
    Token {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// Make an admin token: print it once, with the hash to configure.
    New {
        /// admin, operator (read + approve/reject) or auditor (read-only).
        #[arg(long)]
        role: String,
        /// Print `{"token": "cfadm_…", "hash": "…"}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit trail's hash chain in the store and its JSONL copy; exit 1 when a
    /// record was removed, edited or reordered.
    Verify {
        #[arg(short, long, default_value = "config/credentialflow.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Issue an API key: print it once, with the credential entry to add to the config.
    New {
        #[arg(short, long, default_value = "config/credentialflow.toml")]
        config: PathBuf,
        /// The consumer the key belongs to.
        #[arg(long)]
        consumer: String,
        /// Print `{"key": "cf_…", "credential": {"kind": "api_key", "id": "…", "hash": "…"}}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BasicCommand {
    /// Hash the password on the first line of stdin for a Basic credential.
    New {
        #[arg(long)]
        consumer: String,
        #[arg(long)]
        username: String,
        #[arg(long, default_value_t = credentialflow::auth::basic::DEFAULT_ITERATIONS)]
        iterations: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JwkCommand {
    /// Make a signing key (or read one with --key) and write it and its public JWKS.
    New {
        #[arg(long)]
        alg: String,
        #[arg(long, default_value = "key-1")]
        kid: String,
        /// An existing private key (PEM; required for RS*/PS*).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long)]
        out_private: PathBuf,
        #[arg(long)]
        out_jwks: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a JWT with a private key.
    Mint {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        alg: String,
        #[arg(long)]
        kid: Option<String>,
        /// Claims as a JSON object; `iat` and `exp` are added unless present.
        #[arg(long, default_value = "{}")]
        claims: String,
        /// Lifetime for `exp`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Print this many tokens, one per line, each with its own `jti`.
        #[arg(long, default_value_t = 1)]
        count: usize,
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
        Command::Key {
            command:
                KeyCommand::New {
                    config,
                    consumer,
                    json,
                },
        } => credentialflow::cli::key_new(&config, &consumer, json),
        Command::Basic {
            command:
                BasicCommand::New {
                    consumer,
                    username,
                    iterations,
                    json,
                },
        } => credentialflow::cli::basic_new(&consumer, &username, iterations, json),
        Command::Jwk {
            command:
                JwkCommand::New {
                    alg,
                    kid,
                    key,
                    out_private,
                    out_jwks,
                },
        } => credentialflow::cli::jwk_new(&alg, &kid, key.as_deref(), &out_private, &out_jwks),
        Command::Token {
            command:
                TokenCommand::Mint {
                    key,
                    alg,
                    kid,
                    claims,
                    ttl,
                    count,
                },
        } => credentialflow::cli::token_mint(&key, &alg, kid.as_deref(), &claims, &ttl, count),
        Command::Admin {
            command:
                AdminCommand::Token {
                    command: AdminTokenCommand::New { role, json },
                },
        } => credentialflow::cli::admin_token_new(&role, json),
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => credentialflow::cli::audit_verify(&config),
    };
    credentialflow::observe::flush_logs(std::time::Duration::from_secs(2));
    ExitCode::from(code as u8)
}
