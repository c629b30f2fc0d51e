//! `[admin]` (the admin API's listener, tokens and propagation timeout) and `[store]` (the
//! embedded durable store), with their validation.

use super::{ConfigDuration, Problems};
use crate::admin::tokens::{Role, TokenHash};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where the admin API listens (loopback by default; any other address needs TLS).
    #[serde(default = "default_admin_address")]
    pub address: Spanned<String>,
    #[serde(default)]
    pub tokens: Vec<AdminTokenSection>,
    /// How long a change waits for every core before the API answers 503
    /// `propagation_timeout`.
    #[serde(default = "default_propagation_timeout")]
    pub propagation_timeout: ConfigDuration,
    /// Largest request body the admin API reads.
    #[serde(default = "default_admin_body")]
    pub max_body_bytes: usize,
    /// Certificate chain and key (PEM) for TLS on the admin listener.
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
}

fn default_admin_address() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_string())
}

fn default_propagation_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}

fn default_admin_body() -> usize {
    64 * 1024
}

/// `[[admin.tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenSection {
    /// The actor recorded in the audit trail.
    pub name: Spanned<String>,
    pub role: Spanned<String>,
    /// SHA-256 of the token (hex), printed by `credentialflow admin token new`.
    pub hash: Spanned<String>,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite file (relative to the config file's directory); default
    /// `<gateway.data_dir>/credentialflow.db`.
    pub path: Option<String>,
}

/// One admin token as validated.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub role: Role,
    pub hash: TokenHash,
}

/// The admin API as validated.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub address: SocketAddr,
    pub tokens: Arc<[AdminToken]>,
    pub propagation_timeout: Duration,
    pub max_body_bytes: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl super::Config {
    /// Where the store lives.
    pub fn store_path(&self) -> PathBuf {
        let base = self
            .source_path
            .parent()
            .unwrap_or(std::path::Path::new(""));
        match &self.store.as_ref().and_then(|s| s.path.clone()) {
            Some(path) if std::path::Path::new(path).is_absolute() => PathBuf::from(path),
            Some(path) => base.join(path),
            None => self.data_dir().join("credentialflow.db"),
        }
    }

    /// Whether the store is opened: when the admin API is on or `[store]` is set.
    pub fn uses_store(&self) -> bool {
        self.admin.is_some() || self.store.is_some()
    }

    pub(super) fn validate_admin(&mut self, p: &mut Problems<'_>) {
        let Some(admin) = &self.admin else { return };
        let address = match admin.address.get_ref().parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                p.on(
                    &admin.address,
                    format!(
                        "admin.address `{}` must be an IP address and port such as 127.0.0.1:9901",
                        admin.address.get_ref()
                    ),
                );
                None
            }
        };
        let base = self
            .source_path
            .parent()
            .unwrap_or(std::path::Path::new(""))
            .to_path_buf();
        let tls = match (&admin.tls_cert, &admin.tls_key) {
            (Some(cert), Some(key)) => match admin_tls(&base, cert.get_ref(), key.get_ref()) {
                Ok(config) => Some(Arc::new(config)),
                Err(message) => {
                    p.on(cert, format!("admin.tls_cert: {message}"));
                    None
                }
            },
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                p.on(one, "admin.tls_cert and admin.tls_key go together".into());
                None
            }
        };
        if let Some(address) = address {
            if !address.ip().is_loopback() && admin.tls_cert.is_none() {
                p.on(
                    &admin.address,
                    format!("admin.address {address} is not loopback: set admin.tls_cert and admin.tls_key"),
                );
            }
        }
        let mut tokens = Vec::new();
        for token in &admin.tokens {
            let name = token.name.get_ref();
            if name.is_empty() || tokens.iter().any(|t: &AdminToken| t.name == *name) {
                p.on(
                    &token.name,
                    format!("admin.tokens.name `{name}` must be set and unique"),
                );
            }
            let role = Role::from_name(token.role.get_ref());
            if role.is_none() {
                p.on(
                    &token.role,
                    format!(
                        "admin.tokens.role `{}` must be admin, operator or auditor",
                        token.role.get_ref()
                    ),
                );
            }
            let hash = TokenHash::parse(token.hash.get_ref());
            if hash.is_none() {
                p.on(
                    &token.hash,
                    "admin.tokens.hash must be 64 hex digits (printed by `credentialflow admin token new`)".into(),
                );
            }
            if let (Some(role), Some(hash)) = (role, hash) {
                tokens.push(AdminToken {
                    name: name.clone(),
                    role,
                    hash,
                });
            }
        }
        if admin.tokens.is_empty() {
            p.warn_at(
                p.source.find("[admin]").unwrap_or(0),
                "admin: no [[admin.tokens]]: every admin request is refused".to_string(),
            );
        }
        if admin.propagation_timeout.0.is_zero() {
            let offset = p.source.find("propagation_timeout").unwrap_or(0);
            p.at(offset, "admin.propagation_timeout must be above 0".into());
        }
        if admin.max_body_bytes < 1024 {
            let offset = p.source.find("max_body_bytes").unwrap_or(0);
            p.at(offset, "admin.max_body_bytes must be at least 1024".into());
        }
        if let Some(address) = address {
            self.resolved.admin = Some(AdminSettings {
                address,
                tokens: tokens.into(),
                propagation_timeout: admin.propagation_timeout.0,
                max_body_bytes: admin.max_body_bytes,
                tls,
            });
        }
    }
}

fn admin_tls(
    base: &std::path::Path,
    cert: &str,
    key: &str,
) -> Result<rustls::ServerConfig, String> {
    let chain = crate::tls::pem::certificates(&base.join(cert)).map_err(|e| e.to_string())?;
    let key = crate::tls::pem::private_key(&base.join(key)).map_err(|e| e.to_string())?;
    rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())
}
