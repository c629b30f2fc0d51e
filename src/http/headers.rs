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

/// Copies the field lines of a parsed `head` into `out` verbatim, leaving out the fields `drop`
/// names. Consecutive kept lines go over as one copy, so a head with nothing to remove costs a
/// single copy of its field block.
pub fn copy_fields(
    out: &mut Vec<u8>,
    head: &[u8],
    fields: &[httparse::Header<'_>],
    mut drop: impl FnMut(&[u8]) -> bool,
) {
    let base = head.as_ptr() as usize;
    let mut run: Option<(usize, usize)> = None;
    for field in fields {
        let name = field.name.as_bytes();
        let start = name.as_ptr() as usize - base;
        debug_assert!(start < head.len(), "field outside its head");
        let name_end = start + name.len();
        // Field lines end in CRLF (checked before parsing), and values hold no LF.
        let end = head[name_end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |p| name_end + p + 1);
        if drop(name) {
            if let Some((a, b)) = run.take() {
                out.extend_from_slice(&head[a..b]);
            }
            continue;
        }
        run = match run {
            Some((a, b)) if b == start => Some((a, end)),
            Some((a, b)) => {
                out.extend_from_slice(&head[a..b]);
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((a, b)) = run {
        out.extend_from_slice(&head[a..b]);
    }
}

/// Appends the field line `name: value`, with bytes of `value` outside visible ASCII (and `%`)
/// percent-encoded, so a value taken from a credential or a certificate cannot inject fields.
pub fn push_field_escaped(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    push_escaped(out, value, b"%");
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` with bytes outside visible ASCII and those in `also` percent-encoded.
pub fn push_escaped(out: &mut Vec<u8>, value: &[u8], also: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if (0x20..0x7f).contains(&b) && !also.contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
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
    fn copy_fields_keeps_lines_verbatim_and_drops_named_ones() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-A:1\r\nTE: x\r\nX-B:  2\r\nX-C: 3\r\n\r\n";
        let mut slots = crate::http::header_slots::<8>();
        let mut req = httparse::Request::new(&mut []);
        req.parse_with_uninit_headers(head, &mut slots).unwrap();
        let mut out = Vec::new();
        copy_fields(&mut out, head, req.headers, |n| {
            n.eq_ignore_ascii_case(b"te")
        });
        assert_eq!(out, b"Host: a\r\nX-A:1\r\nX-B:  2\r\nX-C: 3\r\n");
        out.clear();
        copy_fields(&mut out, head, req.headers, |n| n.starts_with(b"X"));
        assert_eq!(out, b"Host: a\r\nTE: x\r\n");
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
