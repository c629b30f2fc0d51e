//! The filter phase (DESIGN §2 phases 1 and 4): who the client really is and whether its request
//! may go further, decided before any credential work.
//!
//! - [`proxy_protocol`]: the PROXY protocol header (v1, v2) an L4 load balancer sends first.
//! - [`client_address`]: the client behind trusted proxies (`X-Forwarded-For`).
//! - [`ip_set`]: IP allow/deny lists (listener, API, route).
//! - [`connections`]: connection caps per listener and per client address.
//! - [`signatures`] and [`RequestFilters`]: method, body size, content type and request
//!   signature filters of a route.

pub mod client_address;
pub mod connections;
pub mod ip_set;
pub mod proxy_protocol;
pub mod signatures;

use crate::http::request::Request;
use crate::http::BodyFraming;
use signatures::SignatureSet;
use std::sync::Arc;

/// Whether a listener expects a PROXY protocol header before the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    /// Used when present (v1 or v2), plain connections accepted too.
    Optional,
    /// Every connection must start with one; others are closed.
    Required,
}

/// A route's (or API's) request filters, compiled. (`filters.max_body` becomes the route's body
/// limit, answered 413 like `limits.max_body_bytes`.)
#[derive(Debug, Clone, Default)]
pub struct RequestFilters {
    /// Allowed methods (empty: any).
    pub methods: Box<[Box<str>]>,
    /// Allowed media types of a request body, lowercase, without parameters (empty: any).
    pub content_types: Box<[Box<str>]>,
    /// Opt-in signatures (`None`: none enabled).
    pub signatures: Option<Arc<SignatureSet>>,
}

/// Why a request filter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// The method is not in `methods`.
    Method,
    /// The body's media type is not in `content_types`.
    ContentType,
    /// A signature matched; the rule id names it.
    Signature(&'static str),
}

impl Blocked {
    /// The rule id logged and shown in the refusal.
    pub fn rule(self) -> &'static str {
        match self {
            Blocked::Method => "methods",
            Blocked::ContentType => "content_types",
            Blocked::Signature(rule) => rule,
        }
    }
}

impl RequestFilters {
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty() && self.content_types.is_empty() && self.signatures.is_none()
    }

    /// Checks a request head; `scratch` is the core's buffer for the signature scan.
    pub fn check(&self, req: &Request<'_>, scratch: &mut Vec<u8>) -> Option<Blocked> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *req.method) {
            return Some(Blocked::Method);
        }
        if !self.content_types.is_empty() && req.framing != BodyFraming::None {
            let declared = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-type"))
                .map(|h| media_type(h.value));
            let allowed = declared.is_some_and(|declared| {
                self.content_types
                    .iter()
                    .any(|t| t.as_bytes().eq_ignore_ascii_case(declared))
            });
            if !allowed {
                return Some(Blocked::ContentType);
            }
        }
        if let Some(signatures) = &self.signatures {
            if let Some(found) = signatures.scan(req.target.as_bytes(), scratch) {
                return Some(Blocked::Signature(found.rule));
            }
        }
        None
    }
}

/// The media type of a `Content-Type` value: before any `;`, trimmed.
fn media_type(value: &[u8]) -> &[u8] {
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end].trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert_eq!(
            media_type(b"application/json; charset=utf-8"),
            b"application/json"
        );
        assert_eq!(media_type(b"  text/plain "), b"text/plain");
        assert_eq!(media_type(b""), b"");
    }
}
