//! Facts read from X.509 certificates: the validity window and names of a server certificate
//! (checked at load, used for SNI), and the identity of a verified client certificate
//! (SHA-256 fingerprint, subject CN, subject alternative names) handed to the request context.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the gateway needs to know about a server certificate.
#[derive(Debug, Clone)]
pub struct CertificateFacts {
    /// Validity window, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// DNS names from the subject alternative names, lower-cased (`*.example.com` kept as is).
    pub dns_names: Vec<String>,
}

impl CertificateFacts {
    pub fn parse(der: &[u8]) -> Result<CertificateFacts, String> {
        let cert = parse(der)?;
        let validity = cert.validity();
        let dns_names = subject_alt_names(&cert)
            .into_iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        Ok(CertificateFacts {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            dns_names,
        })
    }
}

/// A verified client certificate as the request path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// SHA-256 of the certificate's DER encoding, lower-case hex.
    pub fingerprint_sha256: String,
    /// The subject's common name, if any.
    pub subject_cn: Option<String>,
    /// Subject alternative names as `DNS:…`, `URI:…`, `email:…`, `IP:…`.
    pub sans: Vec<String>,
}

impl ClientIdentity {
    /// Reads the identity of a certificate the TLS layer has already verified.
    pub fn from_der(der: &[u8]) -> Result<ClientIdentity, String> {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let fingerprint_sha256 = hex(digest.as_ref());
        let cert = parse(der)?;
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let sans = subject_alt_names(&cert)
            .into_iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(v) => Some(format!("DNS:{v}")),
                GeneralName::URI(v) => Some(format!("URI:{v}")),
                GeneralName::RFC822Name(v) => Some(format!("email:{v}")),
                GeneralName::IPAddress(bytes) => ip_text(bytes).map(|ip| format!("IP:{ip}")),
                _ => None,
            })
            .collect();
        Ok(ClientIdentity {
            fingerprint_sha256,
            subject_cn,
            sans,
        })
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(err) => Err(format!("not a valid X.509 certificate: {err}")),
    }
}

fn subject_alt_names<'a>(cert: &'a X509Certificate<'a>) -> Vec<GeneralName<'a>> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        _ => Vec::new(),
    }
}

fn ip_text(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(bytes).ok()?.into()),
        _ => None,
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(DIGITS[(b >> 4) as usize] as char);
        text.push(DIGITS[(b & 15) as usize] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(names: Vec<rcgen::SanType>, cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = names;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn client_identity_has_fingerprint_cn_and_sans() {
        let der = cert_with(
            vec![
                rcgen::SanType::DnsName("svc.example".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://corp/svc".try_into().unwrap()),
                rcgen::SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
                rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()),
            ],
            "billing-service",
        );
        let id = ClientIdentity::from_der(&der).unwrap();
        let expected = hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
        assert_eq!(id.fingerprint_sha256, expected);
        assert_eq!(id.fingerprint_sha256.len(), 64);
        assert_eq!(id.subject_cn.as_deref(), Some("billing-service"));
        assert_eq!(
            id.sans,
            [
                "DNS:svc.example",
                "URI:spiffe://corp/svc",
                "email:ops@example.com",
                "IP:10.1.2.3"
            ]
        );
    }

    #[test]
    fn server_facts_list_dns_names_lower_case() {
        let der = cert_with(
            vec![
                rcgen::SanType::DnsName("API.Example.com".try_into().unwrap()),
                rcgen::SanType::DnsName("*.example.net".try_into().unwrap()),
            ],
            "x",
        );
        let facts = CertificateFacts::parse(&der).unwrap();
        assert_eq!(facts.dns_names, ["api.example.com", "*.example.net"]);
        assert!(facts.not_after > facts.not_before);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(CertificateFacts::parse(b"\x30\x03abc").is_err());
        assert!(ClientIdentity::from_der(b"").is_err());
    }
}
