//! Config sections of the limit and filter phases: `rate_limits` and `quotas` (on APIs,
//! routes and plans), `ip` allow/deny lists (listeners, APIs, routes), request `filters`
//! (APIs, routes), and the listener's client-address settings.

use super::{Problems, Spanned};
use crate::filter::ip_set::IpSet;
use crate::filter::signatures::Signature;
use crate::limit::{KeyPart, QuotaAmount, Rate};
use serde::Deserialize;

/// `[[…rate_limits]]`: a token bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// What the bucket is counted by: any of `consumer`, `credential`, `client_ip`, `route`,
    /// `api`, `header:<name>`.
    pub key: Spanned<Vec<Spanned<String>>>,
    /// `n/s`, `n/min` or `n/h`.
    pub rate: Spanned<String>,
    /// Requests allowed at once from a full bucket (default: `n`).
    pub burst: Option<Spanned<u64>>,
    /// Send `RateLimit-*` fields on allowed responses too.
    #[serde(default)]
    pub headers: bool,
}

/// `[[…quotas]]`: a count per calendar period (UTC).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSection {
    pub key: Spanned<Vec<Spanned<String>>>,
    /// `n/minute`, `n/hour`, `n/day` or `n/month`.
    pub limit: Spanned<String>,
    #[serde(default)]
    pub headers: bool,
}

/// `[…ip]`: CIDR allow and deny lists (deny wins; a non-empty allow list admits only its own).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpSection {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

/// A size: bytes as a number, or text with a unit (`"1MiB"`, `"512KiB"`, `"10MB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    pub fn bytes(&self) -> Option<u64> {
        match self {
            SizeValue::Bytes(n) => Some(*n),
            SizeValue::Text(text) => parse_size(text),
        }
    }
}

/// Bytes of `"1MiB"`, `"64KiB"`, `"2GiB"`, `"10MB"`, `"500kB"`, `"100B"` or `"100"`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let number: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// `[…filters]`: request filters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FiltersSection {
    /// Allowed methods (upper case).
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Largest request body.
    pub max_body: Option<Spanned<SizeValue>>,
    /// Allowed body media types (`application/json`).
    #[serde(default)]
    pub content_types: Vec<Spanned<String>>,
    /// Opt-in signatures: `path-traversal`, `sql-injection`, `xss`, `nul-byte`.
    #[serde(default)]
    pub signatures: Vec<Spanned<String>>,
}

/// `proxy_protocol = "…"` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolName {
    #[default]
    Off,
    Optional,
    Required,
}

/// Checks one `rate_limits` entry; `authenticated`: whether requests there carry an identity.
pub(super) fn check_rate_limit(
    p: &mut Problems<'_>,
    at: &str,
    limit: &RateLimitSection,
    authenticated: Option<bool>,
) {
    check_key(p, at, &limit.key, authenticated);
    if let Err(err) = Rate::parse(limit.rate.get_ref()) {
        p.on(&limit.rate, format!("{at}.rate: {err}"));
    }
    if let Some(burst) = &limit.burst {
        if *burst.get_ref() == 0 {
            p.on(burst, format!("{at}.burst must be at least 1"));
        }
    }
}

pub(super) fn check_quota(
    p: &mut Problems<'_>,
    at: &str,
    quota: &QuotaSection,
    authenticated: Option<bool>,
) {
    check_key(p, at, &quota.key, authenticated);
    if let Err(err) = QuotaAmount::parse(quota.limit.get_ref()) {
        p.on(&quota.limit, format!("{at}.limit: {err}"));
    }
}

fn check_key(
    p: &mut Problems<'_>,
    at: &str,
    key: &Spanned<Vec<Spanned<String>>>,
    authenticated: Option<bool>,
) {
    if key.get_ref().is_empty() {
        p.on(key, format!("{at}.key needs at least one part"));
    }
    for part in key.get_ref() {
        match KeyPart::parse(part.get_ref()) {
            None => p.on(
                part,
                format!(
                    "{at}.key `{}` must be consumer, credential, client_ip, route, api or header:<name>",
                    part.get_ref()
                ),
            ),
            Some(KeyPart::Consumer | KeyPart::Credential) if authenticated == Some(false) => p
                .warn_at(
                    part.span().start,
                    format!(
                        "{at}.key `{}` on a public route: every request there shares one bucket",
                        part.get_ref()
                    ),
                ),
            Some(_) => {}
        }
    }
}

/// Checks an `ip` table.
pub(super) fn check_ip(p: &mut Problems<'_>, at: &str, ip: &IpSection) {
    check_cidrs(p, &format!("{at}.allow"), &ip.allow);
    check_cidrs(p, &format!("{at}.deny"), &ip.deny);
}

/// Checks a list of addresses or CIDR ranges entry by entry (so each error names its line).
pub(super) fn check_cidrs(p: &mut Problems<'_>, at: &str, entries: &[Spanned<String>]) {
    for entry in entries {
        if let Err(err) = IpSet::parse(&[entry.get_ref()]) {
            p.on(entry, format!("{at}: {err}"));
        }
    }
}

pub(super) fn check_filters(p: &mut Problems<'_>, at: &str, filters: &FiltersSection) {
    for method in &filters.methods {
        let m = method.get_ref();
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            p.on(
                method,
                format!("{at}.methods `{m}` must be an upper-case method name such as GET"),
            );
        }
    }
    if let Some(size) = &filters.max_body {
        if size.get_ref().bytes().is_none() {
            p.on(
                size,
                format!("{at}.max_body must be bytes or a size such as \"1MiB\""),
            );
        }
    }
    for media in &filters.content_types {
        let m = media.get_ref();
        let valid = m
            .split_once('/')
            .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !m.contains([';', ' ', ',']));
        if !valid {
            p.on(
                media,
                format!("{at}.content_types `{m}` must be a media type such as application/json"),
            );
        }
    }
    for name in &filters.signatures {
        if Signature::parse(name.get_ref()).is_none() {
            p.on(
                name,
                format!(
                    "{at}.signatures `{}` must be path-traversal, sql-injection, xss or nul-byte",
                    name.get_ref()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("99999999999999GiB"), None);
    }
}
