//! Which header fields a proxy must not forward: the hop-by-hop set of RFC 9110 §7.6.1 plus any
//! field the sender nominated in its `Connection` header.

use super::for_each_token;

/// Connection-specific fields that never cross the proxy in either direction.
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
];

/// True for fields that are specific to one connection (re-framed or dropped by the proxy).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The values of a message's `Connection` headers, kept to test nominated fields.
#[derive(Default)]
pub struct ConnectionOptions<'a> {
    values: [&'a [u8]; 4],
    count: usize,
    /// More `Connection` headers than we keep: treat every unknown field as nominated.
    overflow: bool,
    pub close: bool,
    pub keep_alive: bool,
}

impl<'a> ConnectionOptions<'a> {
    /// Records one `Connection` header value.
    pub fn add(&mut self, value: &'a [u8]) {
        for_each_token(value, |token| {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            }
        });
        if self.count < self.values.len() {
            self.values[self.count] = value;
            self.count += 1;
        } else {
            self.overflow = true;
        }
    }

    /// True when `name` was listed in a `Connection` header (and so must not be forwarded).
    pub fn nominates(&self, name: &[u8]) -> bool {
        if self.overflow {
            return true;
        }
        let mut found = false;
        for value in &self.values[..self.count] {
            for_each_token(value, |token| {
                if token.eq_ignore_ascii_case(name) {
                    found = true;
                }
            });
        }
        found
    }

    /// True when there is at least one `Connection` header.
    pub fn any(&self) -> bool {
        self.count > 0 || self.overflow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_is_case_insensitive() {
        assert!(is_hop_by_hop(b"Keep-Alive"));
        assert!(is_hop_by_hop(b"TRANSFER-ENCODING"));
        assert!(!is_hop_by_hop(b"Content-Length"));
    }

    #[test]
    fn nominated_fields() {
        let mut options = ConnectionOptions::default();
        options.add(b"close, X-Secret");
        assert!(options.close);
        assert!(options.nominates(b"x-secret"));
        assert!(!options.nominates(b"x-other"));
    }
}
