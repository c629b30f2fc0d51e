//! Reading PEM files: certificate chains, private keys (PKCS#8, PKCS#1 RSA, SEC1 EC), CA
//! bundles and certificate revocation lists, each failure naming the file.

use super::TlsError;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::Path;

fn pem_error(path: &Path, err: pem::Error) -> TlsError {
    let path = path.display().to_string();
    match err {
        pem::Error::Io(source) => TlsError::Read { path, source },
        other => TlsError::Pem {
            path,
            message: format!("not valid PEM: {other}"),
        },
    }
}

/// All certificates in a PEM file, in file order (leaf first for a chain).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, err))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        pem::Error::NoItemsFound => TlsError::Empty {
            path: path.display().to_string(),
            what: "PRIVATE KEY block (PKCS#8, RSA or EC)",
        },
        other => pem_error(path, other),
    })
}

/// All CRLs in a PEM file.
pub fn revocation_lists(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, err))?;
    if crls.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "X509 CRL block",
        });
    }
    Ok(crls)
}

/// A root store from a CA bundle; every certificate in it must be a usable trust anchor.
pub fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|err| TlsError::Certificate {
            path: path.display().to_string(),
            message: format!("not a usable CA certificate: {err}"),
        })?;
    }
    Ok(roots)
}
