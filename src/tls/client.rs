//! The TLS client config for an upstream with `[upstreams.tls]`: the CA bundle its targets'
//! certificates must chain to, the name sent as SNI and verified per target, and an optional
//! client certificate. Connections are pooled like plain ones.

use super::{config_path, pem, provider, LoadError, TlsError};
use crate::config::UpstreamTlsSection;
use rustls::pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;

/// An upstream's TLS settings, ready for the cores.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name verified for each target, indexed like the upstream's targets.
    pub server_names: Vec<ServerName<'static>>,
}

impl UpstreamTls {
    /// Loads the CA bundle and client certificate and fixes the name of each target
    /// (`server_name`, else the host part of the target).
    pub fn load(
        section: &UpstreamTlsSection,
        targets: &[&str],
        base: &Path,
    ) -> Result<UpstreamTls, LoadError> {
        let roots = pem::root_store(&config_path(base, section.ca.get_ref()))
            .map_err(|e| LoadError::at(&section.ca, e))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| LoadError {
                at: None,
                error: TlsError::Settings(err.to_string()),
            })?
            .with_root_certificates(roots);
        let mut config = match (&section.cert, &section.key) {
            (Some(cert), Some(key)) => {
                let chain = pem::certificates(&config_path(base, cert.get_ref()))
                    .map_err(|e| LoadError::at(cert, e))?;
                let key_der = pem::private_key(&config_path(base, key.get_ref()))
                    .map_err(|e| LoadError::at(key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|err| {
                        LoadError::at(
                            key,
                            TlsError::Key {
                                key: key.get_ref().clone(),
                                message: err.to_string(),
                            },
                        )
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(LoadError::at(
                    cert,
                    TlsError::Settings("cert needs key".to_string()),
                ))
            }
            (None, Some(key)) => {
                return Err(LoadError::at(
                    key,
                    TlsError::Settings("key needs cert".to_string()),
                ))
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut server_names = Vec::with_capacity(targets.len());
        for target in targets {
            let name = match &section.server_name {
                Some(name) => name.get_ref().clone(),
                None => host_of(target).to_string(),
            };
            let parsed = ServerName::try_from(name.clone()).map_err(|_| {
                let at = section.server_name.as_ref().map(|n| n.span().start);
                LoadError {
                    at,
                    error: TlsError::Settings(format!("`{name}` is not a valid server name")),
                }
            })?;
            server_names.push(parsed);
        }
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_names,
        })
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(target: &str) -> &str {
    if let Some(rest) = target.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    target.rsplit_once(':').map_or(target, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_target() {
        assert_eq!(super::host_of("api.internal:443"), "api.internal");
        assert_eq!(super::host_of("10.0.0.1:8443"), "10.0.0.1");
        assert_eq!(super::host_of("[::1]:8443"), "::1");
    }
}
