//! Errors that stop a run before or while it starts: bad options, unreadable files, an
//! unreachable target, TLS setup problems and output files that cannot be written. Each one
//! renders as a single line.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A reason the load generator cannot run (or cannot finish writing its results).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option value that does not parse or does not make sense.
    #[error("invalid {option} '{value}': {reason}")]
    Option {
        option: &'static str,
        value: String,
        reason: String,
    },
    /// Options that cannot be combined, or a required one that is missing.
    #[error("{0}")]
    Usage(String),
    /// The target URL is malformed or unsupported.
    #[error("invalid URL '{url}': {reason}")]
    Url { url: String, reason: String },
    /// The target host name does not resolve.
    #[error("cannot resolve '{host}': {reason}")]
    Resolve { host: String, reason: String },
    /// An input file cannot be read or has bad content.
    #[error("cannot use {what} '{path}': {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The target does not accept connections.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The TLS handshake with the target fails.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    /// The target accepted the connection but did not answer the check request with HTTP.
    #[error("no HTTP response from {addr}: {reason}")]
    NoResponse { addr: SocketAddr, reason: String },
    /// The TLS client configuration cannot be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A worker thread cannot be started or crashed.
    #[error("worker thread: {0}")]
    Worker(String),
    /// A result file cannot be written.
    #[error("cannot write '{path}': {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// An `Error::File` for `path` with the given reason.
    pub fn file(what: &'static str, path: &std::path::Path, reason: impl ToString) -> Self {
        Error::File {
            what,
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
