//! A TLS listener's rustls config, built from `[listeners.tls]`: certificate chains checked at
//! load (readable, key matches, currently valid) and chosen by SNI, TLS 1.3 and optionally 1.2
//! with the provider's modern AEAD suites, ALPN `http/1.1`, stateless session tickets shared by
//! every core, and client-certificate verification for mTLS.

use super::certificate::CertificateFacts;
use super::sni::SniResolver;
use super::tickets::Ticketer;
use super::{config_path, pem, provider, LoadError, TlsError};
use crate::config::{ClientAuth, ListenerTlsSection, TlsVersion};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A listener's TLS settings, ready for the cores.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
    pub client_auth: ClientAuth,
    /// The loaded chains, for the start-up log: (cert file, DNS names, expiry as Unix time).
    pub certificates: Vec<(String, Vec<String>, i64)>,
}

impl ServerTls {
    /// Loads and checks every file the section names and builds the rustls config.
    pub fn load(section: &ListenerTlsSection, base: &Path) -> Result<ServerTls, LoadError> {
        let provider = provider();
        if section.certificates.get_ref().is_empty() {
            return Err(LoadError::at(
                &section.certificates,
                TlsError::Settings("certificates needs at least one { cert, key }".to_string()),
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut chains = Vec::new();
        let mut summary = Vec::new();
        for entry in section.certificates.get_ref() {
            let cert_path = config_path(base, entry.cert.get_ref());
            let key_path = config_path(base, entry.key.get_ref());
            let chain = pem::certificates(&cert_path).map_err(|e| LoadError::at(&entry.cert, e))?;
            let key = pem::private_key(&key_path).map_err(|e| LoadError::at(&entry.key, e))?;
            let cert_error = |message: String| {
                LoadError::at(
                    &entry.cert,
                    TlsError::Certificate {
                        path: cert_path.display().to_string(),
                        message,
                    },
                )
            };
            let facts = CertificateFacts::parse(&chain[0]).map_err(cert_error)?;
            if facts.not_after < now {
                return Err(cert_error(format!(
                    "certificate expired ({} seconds ago)",
                    now - facts.not_after
                )));
            }
            if facts.not_before > now {
                return Err(cert_error(format!(
                    "certificate is not valid yet (for another {} seconds)",
                    facts.not_before - now
                )));
            }
            let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|err| {
                let key_name = key_path.display().to_string();
                match err {
                    rustls::Error::InconsistentKeys(_) => LoadError::at(
                        &entry.key,
                        TlsError::KeyMismatch {
                            cert: cert_path.display().to_string(),
                            key: key_name,
                        },
                    ),
                    other => LoadError::at(
                        &entry.key,
                        TlsError::Key {
                            key: key_name,
                            message: other.to_string(),
                        },
                    ),
                }
            })?;
            summary.push((
                cert_path.display().to_string(),
                facts.dns_names.clone(),
                facts.not_after,
            ));
            chains.push((Arc::new(certified), facts.dns_names));
        }

        let verifier = match section.client_auth {
            ClientAuth::None => {
                if let Some(ca) = &section.client_ca {
                    return Err(LoadError::at(
                        ca,
                        TlsError::Settings(
                            "client_ca is set but client_auth is \"none\"".to_string(),
                        ),
                    ));
                }
                WebPkiClientVerifier::no_client_auth()
            }
            ClientAuth::Optional | ClientAuth::Required => {
                let Some(ca) = &section.client_ca else {
                    return Err(LoadError::at(
                        &section.certificates,
                        TlsError::Settings(
                            "client_auth needs client_ca (the CA bundle client certificates chain to)"
                                .to_string(),
                        ),
                    ));
                };
                let roots = pem::root_store(&config_path(base, ca.get_ref()))
                    .map_err(|e| LoadError::at(ca, e))?;
                let mut crls = Vec::new();
                for crl in &section.client_crls {
                    crls.extend(
                        pem::revocation_lists(&config_path(base, crl.get_ref()))
                            .map_err(|e| LoadError::at(crl, e))?,
                    );
                }
                let mut builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if !crls.is_empty() {
                    builder = builder.with_crls(crls).only_check_end_entity_revocation();
                }
                if section.client_auth == ClientAuth::Optional {
                    builder = builder.allow_unauthenticated();
                }
                builder
                    .build()
                    .map_err(|err| LoadError::at(ca, TlsError::Verifier(err.to_string())))?
            }
        };

        let versions: &[&rustls::SupportedProtocolVersion] = match section.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|err| LoadError {
                at: None,
                error: TlsError::Settings(err.to_string()),
            })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SniResolver::new(chains)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Resumption is stateless (tickets) only: a session-id cache would be shared mutable
        // state between cores.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        if section.session_tickets {
            let lifetime = section.ticket_lifetime.0;
            let ticketer = match &section.ticket_key_file {
                Some(file) => Ticketer::from_file(&config_path(base, file.get_ref()), lifetime)
                    .map_err(|e| LoadError::at(file, e))?,
                None => Ticketer::process_default(lifetime),
            };
            config.ticketer = Arc::new(ticketer);
        } else {
            config.send_tls13_tickets = 0;
        }
        Ok(ServerTls {
            config: Arc::new(config),
            handshake_timeout: section.handshake_timeout.0,
            client_auth: section.client_auth,
            certificates: summary,
        })
    }
}
