//! Certificate choice by SNI: exact names first, then one-label wildcards (`*.example.com`
//! matches `api.example.com`, not `example.com` nor `a.b.example.com`), else the default
//! certificate (the listener's first). Names come from the certificates' DNS SANs.

use rustc_hash::FxHashMap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// A listener's certificates indexed by the names they are valid for.
#[derive(Debug)]
pub struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: FxHashMap<String, usize>,
    /// Keyed by the part after `*.`.
    wildcard: FxHashMap<String, usize>,
}

impl SniResolver {
    /// `certs` pairs each key with its DNS names; the first is the default. When two
    /// certificates claim a name, the earlier one keeps it.
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>) -> SniResolver {
        let mut resolver = SniResolver {
            keys: Vec::with_capacity(certs.len()),
            exact: FxHashMap::default(),
            wildcard: FxHashMap::default(),
        };
        for (index, (key, names)) in certs.into_iter().enumerate() {
            resolver.keys.push(key);
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(suffix) => resolver.wildcard.entry(suffix.to_string()),
                    None => resolver.exact.entry(name),
                }
                .or_insert(index);
            }
        }
        resolver
    }

    /// Index of the certificate served for `server_name` (`None`: no SNI sent).
    pub fn choose(&self, server_name: Option<&str>) -> usize {
        let Some(name) = server_name else { return 0 };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&index) = self.exact.get(name) {
            return index;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&index) = self.wildcard.get(parent) {
                return index;
            }
        }
        0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.choose(hello.server_name())).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(names: &[&[&str]]) -> SniResolver {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signing = rustls::crypto::ring::sign::any_supported_type(
            &rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        SniResolver::new(
            names
                .iter()
                .map(|n| (certified.clone(), n.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let r = resolver(&[
            &["default.test"],
            &["api.example.com"],
            &["*.example.com", "example.com"],
        ]);
        assert_eq!(r.choose(Some("api.example.com")), 1);
        assert_eq!(r.choose(Some("API.Example.COM")), 1);
        assert_eq!(r.choose(Some("www.example.com")), 2);
        assert_eq!(r.choose(Some("example.com")), 2);
        assert_eq!(r.choose(Some("a.b.example.com")), 0);
        assert_eq!(r.choose(Some("other.test")), 0);
        assert_eq!(r.choose(None), 0);
    }

    #[test]
    fn first_certificate_keeps_a_shared_name() {
        let r = resolver(&[&["a.test"], &["b.test", "a.test"]]);
        assert_eq!(r.choose(Some("a.test")), 0);
        assert_eq!(r.choose(Some("b.test")), 1);
    }
}
