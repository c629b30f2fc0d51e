//! Rule conditions: a small declarative list, compiled once per snapshot and evaluated without
//! allocation against the request's facts.
//!
//! ```text
//! claims.<name> == 'literal' | claims.<name> == header.<name> | … (any two operands;
//!   nested claims by dotted path: claims.org.id)
//! claims.<name> == path.<param>              (a parameter of the route's path)
//! claims.<name> in ['a', 'b']
//! client_ip in 10.0.0.0/8, 2001:db8::/32      (or a bracketed list)
//! header.<name> == '…'
//! consumer.metadata.<key> in ['gold', 'silver']
//! consumer.id / consumer.tenant
//! time in Mon-Fri 08:00-18:00 Europe/Paris
//! ```

use super::cidr::Cidr;
use super::time_window::TimeWindow;
use crate::auth::Identity;
use std::net::IpAddr;

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// A top-level scalar claim of the JWT.
    Claim(Box<str>),
    /// A request field (name lower case).
    Header(Box<[u8]>),
    /// `consumer.metadata.<key>`.
    Metadata(Box<str>),
    ConsumerId,
    ConsumerTenant,
    /// `path.<param>`: a parameter of the route's path.
    PathParam(Box<str>),
    Literal(Box<str>),
}

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Eq(Operand, Operand),
    In(Operand, Box<[Box<str>]>),
    IpIn(Box<[Cidr]>),
    /// `time in Mon-Fri 08:00-18:00 Europe/Paris`.
    Time(TimeWindow),
}

/// What a condition can look at.
pub struct Facts<'a> {
    pub identity: &'a Identity,
    pub headers: &'a [httparse::Header<'a>],
    pub client_ip: IpAddr,
    /// The route's path parameters: (name, value).
    pub path_params: &'a [(&'a str, &'a str)],
    /// Unix seconds.
    pub now: i64,
}

fn literal(text: &str) -> Option<&str> {
    let t = text.trim();
    if t.len() >= 2
        && ((t.starts_with('\'') && t.ends_with('\'')) || (t.starts_with('"') && t.ends_with('"')))
    {
        Some(&t[1..t.len() - 1])
    } else {
        None
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
}

fn operand(text: &str) -> Result<Operand, String> {
    let t = text.trim();
    if let Some(value) = literal(t) {
        return Ok(Operand::Literal(value.into()));
    }
    let named = |prefix: &str| -> Option<Result<&str, String>> {
        t.strip_prefix(prefix).map(|name| {
            if name_ok(name) {
                Ok(name)
            } else {
                Err(format!(
                    "`{t}`: `{name}` is not a plain name (nested claims are not supported)"
                ))
            }
        })
    };
    if let Some(path) = t.strip_prefix("claims.") {
        // Nested claims by dotted path (`claims.org.id`).
        if path.split('.').all(name_ok) {
            return Ok(Operand::Claim(path.into()));
        }
        return Err(format!(
            "`{t}`: `{path}` is not a claim name or dotted path"
        ));
    }
    if let Some(name) = named("header.") {
        return Ok(Operand::Header(
            name?.to_ascii_lowercase().into_bytes().into(),
        ));
    }
    if let Some(name) = named("consumer.metadata.") {
        return Ok(Operand::Metadata(name?.into()));
    }
    if let Some(name) = named("path.") {
        return Ok(Operand::PathParam(name?.into()));
    }
    match t {
        "consumer.id" => Ok(Operand::ConsumerId),
        "consumer.tenant" => Ok(Operand::ConsumerTenant),
        _ => Err(format!(
            "`{t}`: expected 'literal', claims.<name>, path.<param>, header.<name>, consumer.metadata.<key>, consumer.id or consumer.tenant"
        )),
    }
}

fn list(text: &str) -> Vec<&str> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    t.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl Condition {
    /// The path parameters the condition reads.
    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        let operands: [Option<&Operand>; 2] = match self {
            Condition::Eq(a, b) => [Some(a), Some(b)],
            Condition::In(a, _) => [Some(a), None],
            Condition::IpIn(_) | Condition::Time(_) => [None, None],
        };
        operands.into_iter().flatten().filter_map(|o| match o {
            Operand::PathParam(name) => Some(&**name),
            _ => None,
        })
    }

    pub fn parse(text: &str) -> Result<Condition, String> {
        let t = text.trim();
        if let Some(window) = t.strip_prefix("time in ") {
            return TimeWindow::parse(window).map(Condition::Time);
        }
        if let Some(rest) = t.strip_prefix("client_ip in ") {
            let ranges = list(rest)
                .into_iter()
                .map(|r| Cidr::parse(literal(r).unwrap_or(r)))
                .collect::<Result<Vec<_>, _>>()?;
            if ranges.is_empty() {
                return Err(format!("`{t}`: no address ranges"));
            }
            return Ok(Condition::IpIn(ranges.into()));
        }
        if let Some((lhs, rhs)) = t.split_once(" == ") {
            return Ok(Condition::Eq(operand(lhs)?, operand(rhs)?));
        }
        if let Some((lhs, rhs)) = t.split_once(" in ") {
            let values = list(rhs)
                .into_iter()
                .map(|v| {
                    literal(v)
                        .map(Into::into)
                        .ok_or_else(|| format!("`{t}`: list items must be quoted, e.g. ['a', 'b']"))
                })
                .collect::<Result<Vec<Box<str>>, _>>()?;
            return Ok(Condition::In(operand(lhs)?, values.into()));
        }
        Err(format!(
            "`{t}`: a condition is `<a> == <b>`, `<a> in ['x', 'y']` or `client_ip in <CIDR list>`"
        ))
    }

    /// Whether the condition holds; a missing value never equals anything.
    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        match self {
            Condition::Eq(a, b) => match (a.resolve(facts), b.resolve(facts)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
            Condition::In(a, values) => a
                .resolve(facts)
                .is_some_and(|a| values.iter().any(|v| &**v == a)),
            Condition::IpIn(ranges) => ranges.iter().any(|r| r.contains(facts.client_ip)),
            Condition::Time(window) => window.contains(facts.now),
        }
    }
}

impl Operand {
    fn resolve<'f>(&'f self, facts: &'f Facts<'_>) -> Option<&'f str> {
        match self {
            Operand::Claim(name) => facts.identity.claim(name),
            Operand::Header(name) => facts
                .headers
                .iter()
                .find(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::trim),
            Operand::Metadata(key) => facts.identity.consumer.metadata(key),
            Operand::ConsumerId => Some(&facts.identity.consumer.id),
            Operand::ConsumerTenant => Some(&facts.identity.consumer.tenant),
            Operand::PathParam(name) => facts
                .path_params
                .iter()
                .find(|(n, _)| *n == &**name)
                .map(|(_, v)| *v),
            Operand::Literal(value) => Some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        assert_eq!(
            Condition::parse("claims.tenant_id == 'acme'").unwrap(),
            Condition::Eq(
                Operand::Claim("tenant_id".into()),
                Operand::Literal("acme".into())
            )
        );
        assert!(
            matches!(Condition::parse("consumer.metadata.tier in ['gold', \"silver\"]").unwrap(), Condition::In(Operand::Metadata(_), v) if v.len() == 2)
        );
        assert!(
            matches!(Condition::parse("client_ip in 10.0.0.0/8, 192.168.0.0/16").unwrap(), Condition::IpIn(r) if r.len() == 2)
        );
        assert!(
            matches!(Condition::parse("header.X-Env == 'prod'").unwrap(), Condition::Eq(Operand::Header(h), _) if &*h == b"x-env")
        );
        for bad in [
            "claims.a..b == 'x'",
            "time in Mon-Fri 08:00-18:00",
            "claims.a in [x]",
            "claims.a != 'x'",
            "client_ip in nowhere",
            "bogus == 'x'",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad}");
        }
    }
}
