//! PROXY protocol header parsing for listeners that sit behind an L4 load balancer.
//!
//! A load balancer that only forwards TCP hides the client: every connection seems to come from
//! the balancer itself. With the PROXY protocol on, the balancer first sends a short header that
//! names the original client. The gateway reads that header, uses the client address for access
//! rules, rate limits and logs, then passes the remaining bytes on to TLS or HTTP. Both the v1
//! text form and the v2 binary form are accepted, as defined in
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! [`parse`] works on the bytes received so far. It returns [`Parsed::Incomplete`] until it can
//! decide. Then it returns the header length (the bytes to drop before TLS or HTTP) and the
//! client address, or a [`ProxyError`]. It never panics, never reads past the buffer and never
//! allocates. Once the buffer holds [`MAX_HEADER_BYTES`] bytes, the answer is never
//! `Incomplete`, so a fixed read buffer of that size is always enough. A malformed prefix is
//! refused as soon as it arrives, without waiting for the rest of the header.
//!
//! [`looks_like_proxy`] is for listeners where the header is optional. It tells whether a
//! connection starts like a PROXY header or like something else, such as a TLS `ClientHello` or an
//! HTTP request line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest header accepted: the 16-byte v2 preamble plus at most 1024 bytes of address block and
/// TLVs. A v2 header that announces more is refused with [`ProxyError::TooLong`]. A v1 line is
/// always far shorter (at most 107 bytes).
pub const MAX_HEADER_BYTES: usize = 16 + 1024;

/// Longest v1 line, CRLF included (the spec's worst case).
const V1_MAX_BYTES: usize = 107;
/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// What every v2 header starts with.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2 fixed part: signature, version/command, family/transport, 2-byte length.
const V2_PREAMBLE_BYTES: usize = 16;
/// v2 TLV type of the TLS information block, which holds nested sub-TLVs.
const PP2_TYPE_SSL: u8 = 0x20;
/// Fixed bytes at the start of a `PP2_TYPE_SSL` value (client flags, verify result).
const PP2_SSL_FIXED_BYTES: usize = 5;

/// Result of a successful [`parse`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to decide. Read more and call [`parse`] again on the whole buffer.
    Incomplete,
    /// A complete header of `len` bytes. The connection's own data starts at `buf[len..]`.
    /// `source` is the original client address. It is `None` for v1 `UNKNOWN`, v2 `LOCAL`, and
    /// v2 `UNSPEC` or `AF_UNIX` families. Use the connection's own peer address in those cases.
    Header {
        /// Header length in bytes: always at most the length of the buffer given to [`parse`].
        len: usize,
        /// Client address (v1: source address and source port; v2: the same, from the address
        /// block), or `None` when the header does not name one.
        source: Option<SocketAddr>,
    },
}

/// Why the start of a connection was refused as a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes are not a PROXY header (neither the v1 `PROXY ` prefix nor the v2 signature).
    #[error("connection does not start with a PROXY protocol header")]
    NotProxy,
    /// A v1 line with an unknown protocol, wrong spacing, a wrong field count, a byte that
    /// cannot appear in the line, or a CR not followed by LF.
    #[error("malformed PROXY v1 header line")]
    BadV1,
    /// A v1 address that is not a valid address of the family announced (`TCP4` or `TCP6`).
    #[error("PROXY v1 address is not a valid address of the announced family")]
    BadAddress,
    /// A v1 port that is not 1 to 5 decimal digits with a value of at most 65535.
    #[error("PROXY v1 port is not a decimal number in 0..=65535")]
    BadPort,
    /// The v2 version nibble is not 2.
    #[error("unsupported PROXY v2 version")]
    BadV2Version,
    /// The v2 command nibble is neither `LOCAL` (0) nor `PROXY` (1).
    #[error("unknown PROXY v2 command")]
    BadCommand,
    /// A v2 `PROXY` command with an unknown address family or transport byte.
    #[error("unsupported PROXY v2 address family or transport")]
    BadFamily,
    /// A v2 `PROXY` command announcing a UDP connection, which a TCP listener cannot take.
    #[error("PROXY v2 header announces a UDP connection on a TCP listener")]
    Datagram,
    /// A v2 length too small to hold the address block of the family announced.
    #[error("PROXY v2 length too small for the announced address family")]
    BadLength,
    /// A v2 TLV (or a sub-TLV of the TLS information block) that runs past the header end, a
    /// trailing fragment shorter than a TLV head, or a TLS block shorter than its fixed part.
    #[error("malformed PROXY v2 TLV")]
    BadTlv,
    /// A header longer than allowed: a v1 line with no CRLF within 107 bytes, or a v2 header
    /// longer than [`MAX_HEADER_BYTES`].
    #[error("PROXY header longer than the accepted maximum")]
    TooLong,
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`, the bytes received so far.
///
/// Returns [`Parsed::Incomplete`] while more bytes are needed to decide (only ever for
/// `buf.len() < MAX_HEADER_BYTES`). Returns [`Parsed::Header`] once a complete, valid header is
/// present, whatever bytes follow it. An empty `buf` is `Incomplete`.
///
/// # Errors
///
/// Returns a [`ProxyError`] as soon as the bytes cannot be a valid header:
/// [`ProxyError::NotProxy`] when they start with neither the v1 prefix nor the v2 signature,
/// another variant when a header starts but is malformed. More bytes cannot turn an error into a
/// header, so the connection should be closed.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match looks_like_proxy(buf) {
        None => Ok(Parsed::Incomplete),
        Some(false) => Err(ProxyError::NotProxy),
        Some(true) if buf.starts_with(V1_PREFIX) => parse_v1(buf),
        Some(true) => parse_v2(buf),
    }
}

/// For listeners where the header is optional: tells whether `buf` starts like a PROXY header.
///
/// `Some(true)` when `buf` starts with the full v1 prefix `PROXY ` or the full 12-byte v2
/// signature (the header itself may still be malformed: [`parse`] decides that). `Some(false)`
/// when the bytes so far already differ from both prefixes. `None` when `buf` is a strict prefix
/// of one of them, empty included, and more bytes are needed.
#[must_use]
pub fn looks_like_proxy(buf: &[u8]) -> Option<bool> {
    match (
        prefix_match(buf, V1_PREFIX),
        prefix_match(buf, V2_SIGNATURE),
    ) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    }
}

/// `Some(true)` when `buf` starts with `sig`, `Some(false)` when it differs from `sig` within
/// its own length, `None` when it is a strict prefix of `sig`.
fn prefix_match(buf: &[u8], sig: &[u8]) -> Option<bool> {
    if !buf.iter().zip(sig).all(|(a, b)| a == b) {
        Some(false)
    } else if buf.len() >= sig.len() {
        Some(true)
    } else {
        None
    }
}

/// Protocol token of a v1 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V1Proto {
    Tcp4,
    Tcp6,
    Unknown,
}

/// v1 protocol tokens, with the separator that must follow for the TCP forms. None of them is a
/// prefix of another.
const V1_PROTOCOLS: [(&[u8], V1Proto); 3] = [
    (b"TCP4 ", V1Proto::Tcp4),
    (b"TCP6 ", V1Proto::Tcp6),
    (b"UNKNOWN", V1Proto::Unknown),
];

/// Parses a v1 line; `buf` starts with `PROXY `.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // Only the first 107 bytes can belong to the line.
    let window = buf.get(..V1_MAX_BYTES).unwrap_or(buf);
    let after_prefix = window.get(V1_PREFIX.len()..).unwrap_or_default();

    let mut known = None;
    let mut pending = false;
    for (token, proto) in V1_PROTOCOLS {
        match prefix_match(after_prefix, token) {
            Some(true) => known = Some((token.len(), proto)),
            None => pending = true,
            Some(false) => {}
        }
    }
    let Some((token_len, proto)) = known else {
        return if pending {
            Ok(Parsed::Incomplete)
        } else {
            Err(ProxyError::BadV1)
        };
    };

    // Find the CR that ends the line. On TCP lines, refuse any byte that cannot appear in
    // addresses, ports or their single-space separators as soon as it arrives.
    let start = V1_PREFIX.len() + token_len;
    let tail = window.get(start..).unwrap_or_default();
    let mut cr = None;
    for (i, &b) in tail.iter().enumerate() {
        if b == b'\r' {
            cr = Some(start + i);
            break;
        }
        if proto != V1Proto::Unknown && !is_v1_field_byte(b) {
            return Err(ProxyError::BadV1);
        }
    }
    let Some(cr) = cr else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let len = cr + 2;
    if len > V1_MAX_BYTES {
        return Err(ProxyError::TooLong);
    }
    match buf.get(cr + 1) {
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::BadV1),
    }

    let fields = window.get(start..cr).unwrap_or_default();
    let source = match proto {
        V1Proto::Unknown => None,
        V1Proto::Tcp4 => Some(parse_v1_fields(fields, false)?),
        V1Proto::Tcp6 => Some(parse_v1_fields(fields, true)?),
    };
    Ok(Parsed::Header { len, source })
}

/// Bytes that may appear after `TCP4 ` / `TCP6 ` and before the CR.
fn is_v1_field_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b' ')
}

/// Parses `<src> <dst> <sport> <dport>` (exactly single spaces, nothing else) and returns the
/// source address.
fn parse_v1_fields(fields: &[u8], v6: bool) -> Result<SocketAddr, ProxyError> {
    let mut parts = fields.split(|&b| b == b' ');
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ProxyError::BadV1);
    };
    if [src, dst, sport, dport].iter().any(|f| f.is_empty()) {
        return Err(ProxyError::BadV1);
    }
    let src = parse_v1_ip(src, v6)?;
    parse_v1_ip(dst, v6)?;
    let sport = parse_v1_port(sport)?;
    parse_v1_port(dport)?;
    Ok(SocketAddr::new(src, sport))
}

/// Parses a v1 address of the announced family.
fn parse_v1_ip(field: &[u8], v6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::BadAddress)?;
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| ProxyError::BadAddress)
}

/// Parses a v1 port: 1 to 5 decimal digits, no sign, at most 65535.
fn parse_v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    if field.is_empty() || field.len() > 5 {
        return Err(ProxyError::BadPort);
    }
    let mut value: u32 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(ProxyError::BadPort);
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).map_err(|_| ProxyError::BadPort)
}

/// How a v2 `PROXY` command's address block is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V2Block {
    /// `UNSPEC`: no usable address; the whole payload is skipped.
    Unspec,
    /// TCP over IPv4: 12-byte address block.
    Inet4,
    /// TCP over IPv6: 36-byte address block.
    Inet6,
    /// `AF_UNIX`: 216-byte address block, no usable client address.
    Unix,
}

impl V2Block {
    /// Reads the family/transport byte of a `PROXY` command.
    fn from_family(family: u8) -> Result<Self, ProxyError> {
        match family {
            0x00 => Ok(Self::Unspec),
            0x11 => Ok(Self::Inet4),
            0x21 => Ok(Self::Inet6),
            0x31 | 0x32 => Ok(Self::Unix),
            0x12 | 0x22 => Err(ProxyError::Datagram),
            _ => Err(ProxyError::BadFamily),
        }
    }

    /// Bytes of address block the payload must hold at least.
    fn min_len(self) -> usize {
        match self {
            Self::Unspec => 0,
            Self::Inet4 => 12,
            Self::Inet6 => 36,
            Self::Unix => 216,
        }
    }
}

/// Parses a v2 header; `buf` starts with the 12-byte signature. Each fixed field is checked as
/// soon as it arrives.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&version_command) = buf.get(V2_SIGNATURE.len()) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(ProxyError::BadV2Version);
    }
    let proxy = match version_command & 0x0f {
        0x0 => false,
        0x1 => true,
        _ => return Err(ProxyError::BadCommand),
    };

    let Some(&family) = buf.get(V2_SIGNATURE.len() + 1) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL: the family byte and the whole payload are ignored.
    let block = if proxy {
        Some(V2Block::from_family(family)?)
    } else {
        None
    };

    let Some(&[hi, lo]) = buf.get(V2_SIGNATURE.len() + 2..V2_PREAMBLE_BYTES) else {
        return Ok(Parsed::Incomplete);
    };
    let payload_len = usize::from(u16::from_be_bytes([hi, lo]));
    let len = V2_PREAMBLE_BYTES + payload_len;
    if len > MAX_HEADER_BYTES {
        return Err(ProxyError::TooLong);
    }
    if block.is_some_and(|b| payload_len < b.min_len()) {
        return Err(ProxyError::BadLength);
    }
    let Some(payload) = buf.get(V2_PREAMBLE_BYTES..len) else {
        return Ok(Parsed::Incomplete);
    };

    let source = match block {
        None | Some(V2Block::Unspec) => None,
        Some(block) => {
            let (addr, tlvs) = payload
                .split_at_checked(block.min_len())
                .ok_or(ProxyError::BadLength)?;
            walk_tlvs(tlvs, true)?;
            match block {
                V2Block::Inet4 => Some(v2_inet4_source(addr).ok_or(ProxyError::BadLength)?),
                V2Block::Inet6 => Some(v2_inet6_source(addr).ok_or(ProxyError::BadLength)?),
                V2Block::Unspec | V2Block::Unix => None,
            }
        }
    };
    Ok(Parsed::Header { len, source })
}

/// Source of a TCP-over-IPv4 address block: src (4), dst (4), sport (2), dport (2).
fn v2_inet4_source(addr: &[u8]) -> Option<SocketAddr> {
    let (src, rest) = addr.split_first_chunk::<4>()?;
    let (_dst, rest) = rest.split_first_chunk::<4>()?;
    let (sport, _dport) = rest.split_first_chunk::<2>()?;
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(*src)),
        u16::from_be_bytes(*sport),
    ))
}

/// Source of a TCP-over-IPv6 address block: src (16), dst (16), sport (2), dport (2).
fn v2_inet6_source(addr: &[u8]) -> Option<SocketAddr> {
    let (src, rest) = addr.split_first_chunk::<16>()?;
    let (_dst, rest) = rest.split_first_chunk::<16>()?;
    let (sport, _dport) = rest.split_first_chunk::<2>()?;
    Some(SocketAddr::new(
        IpAddr::V6(Ipv6Addr::from(*src)),
        u16::from_be_bytes(*sport),
    ))
}

/// Walks a TLV sequence (type 1 byte, length 2 bytes big-endian, value) with bounds checks.
/// With `top_level`, a `PP2_TYPE_SSL` value's sub-TLVs are walked too (one level deep only).
fn walk_tlvs(mut tlvs: &[u8], top_level: bool) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let Some((&[kind, hi, lo], rest)) = tlvs.split_first_chunk::<3>() else {
            return Err(ProxyError::BadTlv);
        };
        let value_len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some((value, next)) = rest.split_at_checked(value_len) else {
            return Err(ProxyError::BadTlv);
        };
        if top_level && kind == PP2_TYPE_SSL {
            let Some(sub_tlvs) = value.get(PP2_SSL_FIXED_BYTES..) else {
                return Err(ProxyError::BadTlv);
            };
            walk_tlvs(sub_tlvs, false)?;
        }
        tlvs = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_TCP4: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::1 2001:db8::2 51234 443\r\n";

    fn header(buf: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(buf) {
            Ok(Parsed::Header { len, source }) => (len, source),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn v2(version_command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family);
        let len = u16::try_from(payload.len()).expect("payload fits a u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        let len = u16::try_from(value.len()).expect("value fits a u16");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    fn inet4_block() -> Vec<u8> {
        let mut out = vec![192, 0, 2, 1, 198, 51, 100, 2];
        out.extend_from_slice(&51234u16.to_be_bytes());
        out.extend_from_slice(&443u16.to_be_bytes());
        out
    }

    fn ssl_tlv(sub_tlvs: &[u8]) -> Vec<u8> {
        let mut value = vec![0x07, 0, 0, 0, 0];
        value.extend_from_slice(sub_tlvs);
        tlv(PP2_TYPE_SSL, &value)
    }

    /// A good v2 TCP4 header with an ALPN TLV, an empty NOOP and a TLS block with sub-TLVs.
    fn good_v2_tcp4() -> Vec<u8> {
        let mut payload = inet4_block();
        payload.extend(tlv(0x01, b"h2"));
        payload.extend(tlv(0x04, b""));
        let mut subs = tlv(0x21, b"TLSv1.3");
        subs.extend(tlv(0x22, b"client"));
        payload.extend(ssl_tlv(&subs));
        v2(0x21, 0x11, &payload)
    }

    fn v4(a: [u8; 4], port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
    }

    fn v6(text: &str, port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(IpAddr::V6(text.parse().unwrap()), port))
    }

    #[test]
    fn v1_tcp4() {
        assert_eq!(header(V1_TCP4), (V1_TCP4.len(), v4([192, 0, 2, 1], 51234)));
    }

    #[test]
    fn v1_tcp6() {
        assert_eq!(header(V1_TCP6), (V1_TCP6.len(), v6("2001:db8::1", 51234)));
        let longest: &[u8] = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let expected = v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
        assert_eq!(header(longest), (longest.len(), expected));
    }

    #[test]
    fn v1_unknown() {
        assert_eq!(header(b"PROXY UNKNOWN\r\n"), (15, None));
        let line = b"PROXY UNKNOWN ffff:f::1 ::1 1 2\r\n";
        assert_eq!(header(line), (line.len(), None));
        // Exactly 107 bytes is accepted, 108 is not.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_BYTES - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(header(&line), (V1_MAX_BYTES, None));
        line.insert(20, b'x');
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_followed_by_data() {
        let mut buf = V1_TCP4.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(header(&buf).0, V1_TCP4.len());
    }

    #[test]
    fn v1_incomplete_at_every_prefix() {
        for good in [V1_TCP4, V1_TCP6, b"PROXY UNKNOWN\r\n"] {
            for n in 0..good.len() {
                assert_eq!(parse(&good[..n]), Ok(Parsed::Incomplete), "prefix {n}");
            }
        }
    }

    #[test]
    fn v1_malformed() {
        let cases: &[(&[u8], ProxyError)] = &[
            (
                b"PROXY TCP4 192.0.2.1  198.51.100.2 51234 443\r\n",
                ProxyError::BadV1,
            ),
            (
                b"PROXY  TCP4 192.0.2.1 198.51.100.2 51234 443\r\n",
                ProxyError::BadV1,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443 \r\n",
                ProxyError::BadV1,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443 80\r\n",
                ProxyError::BadV1,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234\r\n",
                ProxyError::BadV1,
            ),
            (
                b"PROXY TCP4 256.0.2.1 198.51.100.2 51234 443\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 192.0.2 198.51.100.2 51234 443\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 2001:db8::1 2001:db8::2 51234 443\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP6 192.0.2.1 198.51.100.2 51234 443\r\n",
                ProxyError::BadAddress,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 123456\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 4a3\r\n",
                ProxyError::BadPort,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 +51234 443\r\n",
                ProxyError::BadV1,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\rX",
                ProxyError::BadV1,
            ),
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\n",
                ProxyError::BadV1,
            ),
            (b"PROXY UNKNOWN\r\r\n", ProxyError::BadV1),
            (b"PROXY TCP4\r\n", ProxyError::BadV1),
            (b"PROXY TCP5 ", ProxyError::BadV1),
            (b"PROXY UDP4", ProxyError::BadV1),
            (
                b"proxy TCP4 192.0.2.1 198.51.100.2 51234 443\r\n",
                ProxyError::NotProxy,
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse(line),
                Err(*expected),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v1_without_crlf_in_107_bytes() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_BYTES - 1, b'a');
        assert_eq!(parse(&line), Ok(Parsed::Incomplete));
        line.push(b'a');
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
        // A CR in the 107th byte would need a 108th for the LF.
        line[V1_MAX_BYTES - 1] = b'\r';
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
        line.push(b'\n');
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
    }

    #[test]
    fn v1_rejects_garbage_early() {
        // No need to wait for the CRLF once a byte cannot belong to a TCP line.
        assert_eq!(parse(b"PROXY TCP4 192.0.2.1 x"), Err(ProxyError::BadV1));
        assert_eq!(parse(b"PROXY TCX"), Err(ProxyError::BadV1));
    }

    #[test]
    fn v2_tcp4_with_tlvs() {
        let h = good_v2_tcp4();
        assert_eq!(header(&h), (h.len(), v4([192, 0, 2, 1], 51234)));
        let mut with_data = h.clone();
        with_data.extend_from_slice(&[0x16, 0x03, 0x01, 0x00]);
        assert_eq!(header(&with_data), (h.len(), v4([192, 0, 2, 1], 51234)));
    }

    #[test]
    fn v2_tcp6() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        payload.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        payload.extend_from_slice(&8080u16.to_be_bytes());
        payload.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(0x21, 0x21, &payload);
        assert_eq!(header(&h), (h.len(), v6("2001:db8::1", 8080)));
    }

    #[test]
    fn v2_local() {
        assert_eq!(header(&v2(0x20, 0x00, &[])), (16, None));
        // The address block (and anything else) of a LOCAL header is skipped, family unchecked.
        let h = v2(0x20, 0x11, &inet4_block());
        assert_eq!(header(&h), (h.len(), None));
        let h = v2(0x20, 0xff, &[1, 2, 3]);
        assert_eq!(header(&h), (h.len(), None));
    }

    #[test]
    fn v2_unspec() {
        let h = v2(0x21, 0x00, &[]);
        assert_eq!(header(&h), (16, None));
        let h = v2(0x21, 0x00, &[9, 9, 9, 9, 9]);
        assert_eq!(header(&h), (h.len(), None));
    }

    #[test]
    fn v2_unix() {
        let mut payload = vec![0u8; 216];
        payload[..5].copy_from_slice(b"/tmp/");
        payload.extend(tlv(0x01, b"http/1.1"));
        for family in [0x31, 0x32] {
            let h = v2(0x21, family, &payload);
            assert_eq!(header(&h), (h.len(), None));
        }
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0u8; 215])),
            Err(ProxyError::BadLength)
        );
    }

    #[test]
    fn v2_incomplete_at_every_prefix() {
        for good in [good_v2_tcp4(), v2(0x20, 0x00, &[]), v2(0x21, 0x00, &[])] {
            for n in 0..good.len() {
                assert_eq!(parse(&good[..n]), Ok(Parsed::Incomplete), "prefix {n}");
            }
        }
    }

    #[test]
    fn v2_bad_version_and_command() {
        for version_command in [0x11, 0x31, 0x01, 0xf1] {
            assert_eq!(
                parse(&v2(version_command, 0x11, &inet4_block())),
                Err(ProxyError::BadV2Version)
            );
        }
        for version_command in [0x22, 0x2f] {
            assert_eq!(
                parse(&v2(version_command, 0x11, &inet4_block())),
                Err(ProxyError::BadCommand)
            );
        }
        // Decided from the 13th byte alone.
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x12);
        assert_eq!(parse(&h), Err(ProxyError::BadV2Version));
    }

    #[test]
    fn v2_bad_family() {
        for family in [0x12, 0x22] {
            assert_eq!(
                parse(&v2(0x21, family, &inet4_block())),
                Err(ProxyError::Datagram)
            );
        }
        for family in [0x01, 0x10, 0x13, 0x41, 0xff] {
            assert_eq!(
                parse(&v2(0x21, family, &inet4_block())),
                Err(ProxyError::BadFamily)
            );
        }
    }

    #[test]
    fn v2_address_block_too_short() {
        let block = inet4_block();
        assert_eq!(
            parse(&v2(0x21, 0x11, &block[..11])),
            Err(ProxyError::BadLength)
        );
        assert_eq!(parse(&v2(0x21, 0x21, &[0; 35])), Err(ProxyError::BadLength));
        // Decided from the preamble alone.
        let h = v2(0x21, 0x11, &block[..11]);
        assert_eq!(parse(&h[..16]), Err(ProxyError::BadLength));
    }

    #[test]
    fn v2_bad_tlvs() {
        // A TLV announcing more bytes than the header holds.
        let mut payload = inet4_block();
        payload.extend_from_slice(&[0x01, 0x00, 0x0a, b'h', b'2']);
        assert_eq!(parse(&v2(0x21, 0x11, &payload)), Err(ProxyError::BadTlv));

        // Trailing 1- and 2-byte fragments after good TLVs.
        for fragment in [&[0x01][..], &[0x01, 0x00]] {
            let mut payload = inet4_block();
            payload.extend(tlv(0x01, b"h2"));
            payload.extend_from_slice(fragment);
            assert_eq!(parse(&v2(0x21, 0x11, &payload)), Err(ProxyError::BadTlv));
        }

        // A TLS sub-TLV overrunning its TLS block (though still inside the header).
        let mut payload = inet4_block();
        let mut subs = tlv(0x21, b"TLSv1.3");
        subs.extend_from_slice(&[0x22, 0x00, 0x10, b'c']);
        payload.extend(ssl_tlv(&subs));
        payload.extend(tlv(0x04, &[0; 32]));
        assert_eq!(parse(&v2(0x21, 0x11, &payload)), Err(ProxyError::BadTlv));

        // A TLS block shorter than its client and verify fields.
        let mut payload = inet4_block();
        payload.extend(tlv(PP2_TYPE_SSL, &[0x01, 0, 0, 0]));
        assert_eq!(parse(&v2(0x21, 0x11, &payload)), Err(ProxyError::BadTlv));

        // A TLS block with no sub-TLVs is fine.
        let mut payload = inet4_block();
        payload.extend(ssl_tlv(&[]));
        let h = v2(0x21, 0x11, &payload);
        assert_eq!(header(&h).0, h.len());
    }

    #[test]
    fn v2_length_limit() {
        // Largest accepted payload: 12-byte block plus one 1012-byte TLV.
        let mut payload = inet4_block();
        payload.extend(tlv(0x04, &[0; 1009]));
        let h = v2(0x21, 0x11, &payload);
        assert_eq!(h.len(), MAX_HEADER_BYTES);
        assert_eq!(parse(&h[..MAX_HEADER_BYTES - 1]), Ok(Parsed::Incomplete));
        assert_eq!(header(&h).0, MAX_HEADER_BYTES);

        // One byte more is refused as soon as the length field is in.
        payload.push(0x04);
        let h = v2(0x21, 0x11, &payload);
        assert_eq!(parse(&h[..16]), Err(ProxyError::TooLong));
        assert_eq!(parse(&h), Err(ProxyError::TooLong));
        let h = v2(0x20, 0x00, &[0; 0xffff]);
        assert_eq!(parse(&h[..16]), Err(ProxyError::TooLong));
    }

    #[test]
    fn looks_like() {
        assert_eq!(looks_like_proxy(b""), None);
        assert_eq!(looks_like_proxy(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(looks_like_proxy(b"G"), Some(false));
        assert_eq!(looks_like_proxy(&[0x16, 0x03, 0x01]), Some(false));
        assert_eq!(looks_like_proxy(&[0x16]), Some(false));
        assert_eq!(looks_like_proxy(V1_TCP4), Some(true));
        assert_eq!(looks_like_proxy(b"PROXY "), Some(true));
        assert_eq!(looks_like_proxy(b"PROXY garbage"), Some(true));
        assert_eq!(looks_like_proxy(V2_SIGNATURE), Some(true));
        assert_eq!(looks_like_proxy(&good_v2_tcp4()), Some(true));
        for n in 1..V1_PREFIX.len() {
            assert_eq!(looks_like_proxy(&V1_PREFIX[..n]), None, "v1 prefix {n}");
        }
        for n in 1..V2_SIGNATURE.len() {
            assert_eq!(looks_like_proxy(&V2_SIGNATURE[..n]), None, "v2 prefix {n}");
        }
        assert_eq!(looks_like_proxy(b"PROXX"), Some(false));
        assert_eq!(looks_like_proxy(b"\r\n\r\n\0\r\nQUIX"), Some(false));
        // An HTTP request that happens to start with a CRLF is not a v2 signature.
        assert_eq!(looks_like_proxy(b"\r\nGET"), Some(false));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(ProxyError::NotProxy));
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    }

    /// Every 1-byte mutation of a good header, at every prefix length: no panic, a reported
    /// length within the input, `Incomplete` only below the size cap, and a header found in the
    /// full input is found the same way in exactly its own bytes.
    fn mutate_all(good: &[u8]) {
        let mut buf = good.to_vec();
        for pos in 0..good.len() {
            for byte in 0..=u8::MAX {
                buf[pos] = byte;
                for n in 0..=buf.len() {
                    match parse(&buf[..n]) {
                        Ok(Parsed::Header { len, .. }) => assert!(len <= n && len > 0),
                        Ok(Parsed::Incomplete) => assert!(n < MAX_HEADER_BYTES),
                        Err(_) => {}
                    }
                }
                if let Ok(found @ Parsed::Header { len, .. }) = parse(&buf) {
                    assert_eq!(parse(&buf[..len]), Ok(found));
                }
                let _ = looks_like_proxy(&buf);
            }
            buf[pos] = good[pos];
        }
    }

    #[test]
    fn mutations_v1() {
        mutate_all(V1_TCP4);
        mutate_all(V1_TCP6);
    }

    #[test]
    fn mutations_v2() {
        mutate_all(&good_v2_tcp4());
    }
}
