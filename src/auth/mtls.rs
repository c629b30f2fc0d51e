//! Client certificates as credentials: the certificate the TLS listener verified maps to a
//! consumer by its SHA-256 fingerprint, or by its subject common name (`CN=…`) or one of its
//! subject alternative names (`DNS:…`, `URI:…`, `email:…`, `IP:…`).

use super::index::{Credential, CredentialIndex};
use crate::tls::certificate::ClientIdentity;
use std::sync::Arc;

/// Normalises a configured fingerprint: hex digits, lower case, colons removed.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// The credential a verified certificate maps to: by fingerprint first, then by name.
pub fn find<'i>(index: &'i CredentialIndex, cert: &ClientIdentity) -> Option<&'i Arc<Credential>> {
    if let Some(credential) = index.mtls_fingerprint(&cert.fingerprint_sha256) {
        return Some(credential);
    }
    if let Some(cn) = &cert.subject_cn {
        if let Some(credential) = index.mtls_name(&format!("CN={cn}")) {
            return Some(credential);
        }
    }
    cert.sans.iter().find_map(|san| index.mtls_name(san))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::index::{Consumer, CredentialKind, Handle, Secret};

    fn credential(id: &str) -> Arc<Credential> {
        Arc::new(Credential {
            id: id.into(),
            kind: CredentialKind::Mtls,
            consumer: Arc::new(Consumer {
                id: "partner".into(),
                tenant: "default".into(),
                groups: Box::new([]),
                metadata: Box::new([]),
            }),
            secret: Secret::None,
            scopes: Box::new([]),
            expires: None,
            revoked: false,
        })
    }

    #[test]
    fn certificates_map_by_fingerprint_then_name() {
        let mut index = CredentialIndex::default();
        let fp = "ab".repeat(32);
        index
            .add(Handle::MtlsFingerprint(fp.clone()), credential("by-fp"))
            .unwrap();
        index
            .add(
                Handle::MtlsName("DNS:client.test".into()),
                credential("by-san"),
            )
            .unwrap();
        let mut cert = ClientIdentity {
            fingerprint_sha256: fp,
            subject_cn: Some("client".into()),
            sans: vec!["DNS:client.test".into()],
        };
        assert_eq!(&*find(&index, &cert).unwrap().id, "by-fp");
        cert.fingerprint_sha256 = "cd".repeat(32);
        assert_eq!(&*find(&index, &cert).unwrap().id, "by-san");
        cert.sans.clear();
        assert!(find(&index, &cert).is_none());
    }

    #[test]
    fn fingerprints_are_normalised() {
        let colons = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
        assert_eq!(normalize_fingerprint(&colons), Some("ab".repeat(32)));
        assert!(normalize_fingerprint("abc").is_none());
    }
}
