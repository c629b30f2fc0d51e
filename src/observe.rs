//! Process logging through `tracing`: level from the config or `CREDENTIALFLOW_LOG`, human or
//! JSON lines on stderr.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber (once per process).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env("CREDENTIALFLOW_LOG")
        .unwrap_or_else(|_| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
