//! HTTP/1.1 wire handling: strict head parsing for requests and upstream responses, chunked
//! framing, hop-by-hop header rules and the gateway's own error responses.

pub mod chunked;
pub mod headers;
pub mod normalize;
pub mod problem;
pub mod request;
pub mod response;

/// Uninitialised header slots for one parse (no per-parse initialisation cost).
pub type HeaderSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>];

/// A stack array of `N` uninitialised header slots.
pub fn header_slots<'b, const N: usize>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; N] {
    [const { std::mem::MaybeUninit::uninit() }; N]
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a head (request or response) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("head larger than the limit")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("unsupported expectation")]
    ExpectationFailed,
}

impl HeadError {
    /// The status the gateway answers a client with for this error.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UriTooLong => 414,
            HeadError::ExpectationFailed => 417,
        }
    }
}

/// Checks the raw bytes of a complete head (request line or status line, field lines and the
/// final empty line) for what `httparse` tolerates but RFC 9112 strictness forbids: bare LF,
/// bare CR, obs-fold continuation lines, and control characters (NUL, DEL, …) anywhere.
///
/// The common case (a clean head) is one branch-free pass over byte pairs that the compiler
/// vectorises; only a failing head is walked again to name the problem.
pub fn check_head_bytes(head: &[u8]) -> Result<(), HeadError> {
    let (Some(&first), Some(&last)) = (head.first(), head.last()) else {
        return Ok(());
    };
    let mut bad = is_forbidden_control(first) | (first == b'\n') | (last == b'\r');
    for (&a, &b) in head.iter().zip(&head[1..]) {
        // LF exactly where CR precedes it: no bare CR, no bare LF.
        bad |= (a == b'\r') != (b == b'\n');
        // A line starting with SP or HTAB continues the previous one (obs-fold).
        bad |= (a == b'\n') & ((b == b' ') | (b == b'\t'));
        bad |= is_forbidden_control(b);
    }
    if bad {
        Err(describe_bad_head(head))
    } else {
        Ok(())
    }
}

/// Control bytes that may not appear in a head (CR and LF only as line ends, HTAB allowed).
#[inline(always)]
fn is_forbidden_control(b: u8) -> bool {
    ((b < 0x20) & (b != b'\t') & (b != b'\r') & (b != b'\n')) | (b == 0x7f)
}

/// Names the first violation in a head that [`check_head_bytes`] refused.
fn describe_bad_head(head: &[u8]) -> HeadError {
    let len = head.len();
    let mut i = 0;
    while i < len {
        let b = head[i];
        if b == b'\r' {
            if i + 1 >= len || head[i + 1] != b'\n' {
                return HeadError::Malformed("bare CR in head");
            }
            if i + 2 < len && (head[i + 2] == b' ' || head[i + 2] == b'\t') {
                return HeadError::Malformed("obsolete line folding");
            }
            i += 2;
            continue;
        }
        if b == b'\n' {
            return HeadError::Malformed("bare LF in head");
        }
        if is_forbidden_control(b) {
            return HeadError::Malformed("control character in head");
        }
        i += 1;
    }
    HeadError::Malformed("malformed head")
}

/// Parses a Content-Length value strictly: 1 to 19 ASCII digits, nothing else.
pub fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for &d in value {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(HeadError::Malformed("Content-Length overflows"))?;
    }
    Ok(n)
}

/// Trims optional whitespace (SP, HTAB) around a field value.
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |p| p + 1);
    &value[start..end]
}

/// Calls `f` with each comma-separated, trimmed, non-empty token of a list-valued field.
pub fn for_each_token(value: &[u8], mut f: impl FnMut(&[u8])) {
    for part in value.split(|&b| b == b',') {
        let token = trim_ows(part);
        if !token.is_empty() {
            f(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"0").unwrap(), 0);
        assert_eq!(parse_content_length(b"1234").unwrap(), 1234);
        assert_eq!(
            parse_content_length(b"9999999999999999999").unwrap(),
            9_999_999_999_999_999_999
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+5",
            b"0x10",
            b"5, 6",
            b"1 2",
            b"99999999999999999999",
            b"18446744073709551616",
        ] {
            assert!(parse_content_length(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn head_bytes_checks() {
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(check_head_bytes(b"GET / HTTP/1.1\nHost: a\r\n\r\n").is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n").is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n").is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n").is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nX: \tb\r\n\r\n").is_ok());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n").is_err());
        assert!(check_head_bytes(b"\nGET / HTTP/1.1\r\n\r\n").is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\n\r\n\r").is_err());
        assert!(check_head_bytes(b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n").is_err());
        assert_eq!(
            check_head_bytes(b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
            Err(HeadError::Malformed("bare LF in head"))
        );
    }

    #[test]
    fn tokens_are_trimmed() {
        let mut seen = Vec::new();
        for_each_token(b" close ,, Foo\t", |t| seen.push(t.to_vec()));
        assert_eq!(seen, vec![b"close".to_vec(), b"Foo".to_vec()]);
    }
}
