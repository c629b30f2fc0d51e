//! The rate-limit phase (DESIGN §2 phase 7): token buckets and calendar quotas, keyed as
//! configured, exact for the whole box although every core serves requests on its own.
//!
//! Every key has an owner core (`hash(key) mod cores`) that holds its authoritative bucket or
//! count. The owner spends from it directly; any other core spends from a *lease*: a few
//! tokens the owner took out of the bucket and sent over, so a hot key costs one cross-core
//! message per lease, not per request. Because leased tokens leave the owner's bucket, the box
//! never admits more than the bucket allows plus what the other cores hold in leases: a lease is
//! at most 1 % of the rate split over the other cores (at least one token), and a core asks for
//! the next lease when half of the current one is spent. The bound on the error over any window
//! is therefore `(cores − 1) × 1.5 × lease`, ≤ 1.5 % of the rate. A one-token lease (a slow
//! limit) is asked for only when a request needs it, so slow limits hold exactly, at the cost of
//! one round trip to the owner for such a request on another core. Leases a core stops using
//! are given back after half a second.
//!
//! A refusal takes nothing (all limits of a request are checked before any is spent). A core
//! whose lease request was answered with "empty" refuses locally until the time the owner named,
//! so a flood of refused requests costs no messages either.
//!
//! Memory: each core tracks at most `limits.rate_limit_keys` buckets and leases and
//! `limits.quota_keys` quota counts (≈ 100 bytes each); when full, the entry unused the longest
//! (CLOCK) is dropped. Idle full buckets are forgotten every second (they hold nothing).

pub mod bucket;
pub mod limiter;
pub mod quota_file;
pub mod rate;
pub mod table;

pub use limiter::{CoreLimits, LeaseMsg, LimitCounters, Verdict};
pub use rate::{Period, QuotaAmount, Rate};

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// What part of a request a limit is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Consumer,
    Credential,
    ClientIp,
    Route,
    Api,
    /// A request field (lowercase name); absent fields count as one shared empty value.
    Header(Box<[u8]>),
}

impl KeyPart {
    /// `consumer`, `credential`, `client_ip`, `route`, `api` or `header:<name>`.
    pub fn parse(text: &str) -> Option<KeyPart> {
        Some(match text {
            "consumer" => KeyPart::Consumer,
            "credential" => KeyPart::Credential,
            "client_ip" => KeyPart::ClientIp,
            "route" => KeyPart::Route,
            "api" => KeyPart::Api,
            _ => {
                let name = text.strip_prefix("header:")?;
                if name.is_empty() || !name.bytes().all(is_token_byte) {
                    return None;
                }
                KeyPart::Header(name.to_ascii_lowercase().into_bytes().into())
            }
        })
    }
}

/// A byte allowed in a field name (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a limit counts against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RuleKind {
    /// A token bucket: `per_sec` refill, `capacity` (the burst) at most.
    Rate {
        rate: Rate,
        capacity: u64,
    },
    Quota(QuotaAmount),
}

/// One configured limit, compiled.
#[derive(Debug, Clone)]
pub struct LimitRule {
    /// Stable text naming where it was configured (`api orders /orders rate_limits[0]`); part of
    /// every key, and of the saved quota keys.
    pub id: Box<str>,
    id_hash: u64,
    pub key: Box<[KeyPart]>,
    pub kind: RuleKind,
    /// Send `RateLimit-*` fields on allowed responses too.
    pub headers: bool,
}

impl LimitRule {
    pub fn new(id: String, key: Vec<KeyPart>, kind: RuleKind, headers: bool) -> LimitRule {
        let mut hasher = std::hash::DefaultHasher::new();
        id.hash(&mut hasher);
        LimitRule {
            id: id.into(),
            id_hash: hasher.finish(),
            key: key.into(),
            kind,
            headers,
        }
    }

    /// The number `RateLimit-Limit` shows: requests per period.
    pub fn shown_limit(&self) -> u64 {
        match self.kind {
            RuleKind::Rate { rate, .. } => rate.count,
            RuleKind::Quota(q) => q.limit,
        }
    }
}

/// The request facts a key is made of.
pub struct KeyFacts<'a> {
    pub consumer: Option<&'a str>,
    pub credential: Option<&'a str>,
    pub client_ip: IpAddr,
    /// The route's text id.
    pub route: &'a str,
    pub api: &'a str,
    pub headers: &'a [httparse::Header<'a>],
}

impl KeyFacts<'_> {
    fn part(&self, part: &KeyPart) -> PartValue<'_> {
        match part {
            KeyPart::Consumer => PartValue::Bytes(self.consumer.unwrap_or("").as_bytes()),
            KeyPart::Credential => PartValue::Bytes(self.credential.unwrap_or("").as_bytes()),
            KeyPart::ClientIp => PartValue::Ip(self.client_ip),
            KeyPart::Route => PartValue::Bytes(self.route.as_bytes()),
            KeyPart::Api => PartValue::Bytes(self.api.as_bytes()),
            KeyPart::Header(name) => PartValue::Bytes(
                self.headers
                    .iter()
                    .find(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
                    .map_or(&b""[..], |h| h.value),
            ),
        }
    }
}

enum PartValue<'a> {
    Bytes(&'a [u8]),
    Ip(IpAddr),
}

/// The hash of `rule`'s key for this request (and `period` for a quota): the identity of its
/// bucket or count on every core.
pub fn key_hash(rule: &LimitRule, facts: &KeyFacts<'_>, period: i64) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write_u64(rule.id_hash);
    hasher.write_i64(period);
    for part in rule.key.iter() {
        match facts.part(part) {
            PartValue::Bytes(bytes) => {
                hasher.write_usize(bytes.len());
                hasher.write(bytes);
            }
            PartValue::Ip(ip) => ip.hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// The key as text (saved quota counts are keyed by it): the rule's id and each value.
pub fn key_text(rule: &LimitRule, facts: &KeyFacts<'_>) -> String {
    let mut text = String::from(&*rule.id);
    for part in rule.key.iter() {
        text.push('|');
        match facts.part(part) {
            PartValue::Bytes(bytes) => text.push_str(&String::from_utf8_lossy(bytes)),
            PartValue::Ip(ip) => text.push_str(&ip.to_string()),
        }
    }
    text
}

/// How many failed authentications one client address may have per window before its
/// requests are refused before any credential work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureThrottle {
    pub spec: bucket::BucketSpec,
}

impl FailureThrottle {
    pub fn new(failures: u64, window: std::time::Duration) -> Option<FailureThrottle> {
        (failures > 0 && !window.is_zero()).then(|| FailureThrottle {
            spec: bucket::BucketSpec {
                per_sec: failures as f64 / window.as_secs_f64(),
                capacity: failures as f64,
            },
        })
    }

    /// The key of one client address's failure count.
    pub fn key(ip: IpAddr) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(b"failed authentications");
        ip.hash(&mut hasher);
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_rules_values_and_periods() {
        let rule = |id: &str| {
            LimitRule::new(
                id.into(),
                vec![
                    KeyPart::Consumer,
                    KeyPart::Header(b"x-tenant".to_vec().into()),
                ],
                RuleKind::Rate {
                    rate: Rate::parse("10/s").unwrap(),
                    capacity: 10,
                },
                false,
            )
        };
        let headers = [httparse::Header {
            name: "X-Tenant",
            value: b"acme",
        }];
        let facts = |consumer| KeyFacts {
            consumer,
            credential: None,
            client_ip: "192.0.2.1".parse().unwrap(),
            route: "r",
            api: "a",
            headers: &headers,
        };
        let (a, b) = (rule("a"), rule("b"));
        let alice = key_hash(&a, &facts(Some("alice")), 0);
        assert_eq!(alice, key_hash(&a, &facts(Some("alice")), 0));
        assert_ne!(alice, key_hash(&b, &facts(Some("alice")), 0));
        assert_ne!(alice, key_hash(&a, &facts(Some("bob")), 0));
        assert_ne!(alice, key_hash(&a, &facts(Some("alice")), 1));
        assert_ne!(alice, key_hash(&a, &facts(None), 0));
        assert_eq!(key_text(&a, &facts(Some("alice"))), "a|alice|acme");
        assert_eq!(
            KeyPart::parse("header:X-Api"),
            Some(KeyPart::Header(b"x-api".to_vec().into()))
        );
        assert_eq!(KeyPart::parse("header:"), None);
        assert_eq!(KeyPart::parse("ip"), None);
    }
}
