//! TLS for both sides of the proxy, on rustls with the ring provider: listener configs (SNI
//! certificate choice, client-certificate verification, session tickets shared by all cores),
//! upstream client configs, the client identity taken from a verified certificate, and the
//! stream that runs a rustls session over a monoio socket.
//!
//! Everything here except [`stream`] is built on the control side when a config is loaded; the
//! cores only run sessions from the immutable configs.

pub mod certificate;
pub mod client;
pub mod pem;
pub mod server;
pub mod sni;
pub mod stream;
pub mod tickets;

use std::sync::Arc;

/// Why TLS material or settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}`: {message}")]
    Pem { path: String, message: String },
    #[error("`{path}` holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("`{path}`: {message}")]
    Certificate { path: String, message: String },
    #[error("the key in `{key}` does not belong to the certificate in `{cert}`")]
    KeyMismatch { cert: String, key: String },
    #[error("`{key}`: unusable private key: {message}")]
    Key { key: String, message: String },
    #[error("client certificate verification: {0}")]
    Verifier(String),
    #[error("{0}")]
    Settings(String),
}

/// The crypto provider every TLS config uses (ring; one provider, one rustls version).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A [`TlsError`] with the config-file offset of the setting that caused it (when known).
#[derive(Debug)]
pub struct LoadError {
    pub at: Option<usize>,
    pub error: TlsError,
}

impl LoadError {
    fn at<T>(spanned: &toml::Spanned<T>, error: TlsError) -> LoadError {
        LoadError {
            at: Some(spanned.span().start),
            error,
        }
    }
}

/// Resolves a path from the config against the config file's directory.
fn config_path(base: &std::path::Path, path: &str) -> std::path::PathBuf {
    base.join(path)
}
