//! Path normalization: the one path the gateway routes, authorizes and forwards, so that
//! gateway and upstream act on the same resource.
//!
//! In order: percent-decoding of unreserved characters (RFC 3986 §6.2.2.2: `%41` → `A`,
//! `%2E` → `.`), the configured action for escaped slashes and backslashes (`%2F`, `%5C`),
//! upper-case hex in the escapes that stay, dot-segment removal after that decoding (a `..`
//! above the root is an error), and optionally merging duplicate slashes. Encoded control bytes,
//! invalid escapes and overlong UTF-8 are errors. A decoded byte is never decoded again (`%252e`
//! stays the literal segment `%252e`).

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request (400).
    Reject,
    /// Treat as `/`, then normalize.
    Decode,
    /// Forward as-is, never a separator for matching.
    Keep,
}

/// Why a path was refused (always 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid percent escape")]
    InvalidEscape,
    #[error("encoded control byte")]
    ControlByte,
    #[error("overlong or invalid UTF-8 escape")]
    BadUtf8,
    #[error("escaped slash or backslash")]
    EscapedSlash,
    #[error("`..` above the root")]
    AboveRoot,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` may need work: escapes, dot segments, or (when merging) empty segments.
fn needs_work(path: &[u8], merge_slashes: bool) -> bool {
    if path.contains(&b'%') {
        return true;
    }
    (merge_slashes && path.windows(2).any(|w| w == b"//"))
        || path
            .split(|&b| b == b'/')
            .any(|segment| segment == b"." || segment == b"..")
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Normalizes `path` (no query). `Ok(false)`: the path is already normal and `out` is not used;
/// `Ok(true)`: the normal form is in `out` (`scratch` is working space).
pub fn normalize(
    path: &str,
    slashes: EscapedSlashes,
    merge_slashes: bool,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<bool, PathError> {
    let path = path.as_bytes();
    if !needs_work(path, merge_slashes) {
        return Ok(false);
    }
    // Pass 1: escapes. Real separators are the only `/` left in `scratch`.
    scratch.clear();
    let mut i = 0;
    let mut utf8_continuations = 0u8;
    let mut utf8_min_second: u8 = 0x80;
    let mut utf8_max_second: u8 = 0xBF;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            if utf8_continuations > 0 {
                return Err(PathError::BadUtf8);
            }
            scratch.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::InvalidEscape);
        };
        let v = hi << 4 | lo;
        i += 3;
        if utf8_continuations > 0 {
            if !(utf8_min_second..=utf8_max_second).contains(&v) {
                return Err(PathError::BadUtf8);
            }
            utf8_continuations -= 1;
            utf8_min_second = 0x80;
            utf8_max_second = 0xBF;
            scratch.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
            continue;
        }
        match v {
            _ if unreserved(v) => scratch.push(v),
            b'/' | b'\\' => match slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => scratch.push(b'/'),
                EscapedSlashes::Keep => {
                    scratch.extend_from_slice(if v == b'/' { b"%2F" } else { b"%5C" })
                }
            },
            0x00..=0x1f | 0x7f => return Err(PathError::ControlByte),
            0x80..=0xBF | 0xC0 | 0xC1 | 0xF5..=0xFF => return Err(PathError::BadUtf8),
            _ => {
                if v >= 0xC2 {
                    // A UTF-8 lead byte: its continuations must follow, escaped, and not encode
                    // a shorter form (overlong) or a surrogate.
                    (utf8_continuations, utf8_min_second, utf8_max_second) = match v {
                        0xC2..=0xDF => (1, 0x80, 0xBF),
                        0xE0 => (2, 0xA0, 0xBF),
                        0xED => (2, 0x80, 0x9F),
                        0xE1..=0xEF => (2, 0x80, 0xBF),
                        0xF0 => (3, 0x90, 0xBF),
                        0xF4 => (3, 0x80, 0x8F),
                        _ => (3, 0x80, 0xBF),
                    };
                }
                scratch.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
            }
        }
    }
    if utf8_continuations > 0 {
        return Err(PathError::BadUtf8);
    }
    // Pass 2: dot segments (RFC 3986 §5.2.4) and, optionally, empty segments.
    out.clear();
    let mut rest = &scratch[..];
    if rest.first() == Some(&b'/') {
        rest = &rest[1..];
    }
    let mut trailing_slash = false;
    let mut pieces = rest.split(|&b| b == b'/').peekable();
    while let Some(segment) = pieces.next() {
        let last = pieces.peek().is_none();
        match segment {
            b"." => trailing_slash = last,
            b".." => {
                if out.is_empty() {
                    return Err(PathError::AboveRoot);
                }
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
                trailing_slash = last;
            }
            b"" if merge_slashes && !last => {}
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str, slashes: EscapedSlashes, merge: bool) -> Result<String, PathError> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        match normalize(path, slashes, merge, &mut out, &mut scratch)? {
            false => Ok(path.to_string()),
            true => Ok(String::from_utf8(out).unwrap()),
        }
    }

    fn n(path: &str) -> Result<String, PathError> {
        norm(path, EscapedSlashes::Reject, false)
    }

    #[test]
    fn the_issue_table() {
        assert_eq!(n("/echo/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/echo/.%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/echo/%2E%2E%2Fadmin"), Err(PathError::EscapedSlash));
        assert_eq!(n("/echo/..%2fadmin"), Err(PathError::EscapedSlash));
        assert_eq!(
            n("/echo/%252e%252e/admin").unwrap(),
            "/echo/%252e%252e/admin"
        );
        assert_eq!(n("/echo/%00x"), Err(PathError::ControlByte));
        assert_eq!(
            norm("/public/..%2fadmin", EscapedSlashes::Decode, false).unwrap(),
            "/admin"
        );
        assert_eq!(
            norm("/public/..%2fadmin", EscapedSlashes::Keep, false).unwrap(),
            "/public/..%2Fadmin"
        );
    }

    #[test]
    fn unreserved_characters_are_decoded_and_the_rest_upper_cased() {
        assert_eq!(n("/%41%62c").unwrap(), "/Abc");
        assert_eq!(n("/a%20b%3a").unwrap(), "/a%20b%3A");
        assert_eq!(n("/%7e%2D%5f").unwrap(), "/~-_");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/plain/path").unwrap(), "/plain/path");
    }

    #[test]
    fn dot_segments() {
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/%2e").unwrap(), "/a/");
        assert_eq!(n("/a/%2e./b").unwrap(), "/b");
        assert_eq!(n("/a/..."), Ok("/a/...".into()));
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/.."), Ok("/".into()));
    }

    #[test]
    fn slashes() {
        assert_eq!(n("/a%5cb"), Err(PathError::EscapedSlash));
        assert_eq!(
            norm("/a%5Cb", EscapedSlashes::Decode, false).unwrap(),
            "/a/b"
        );
        assert_eq!(
            norm("/a%5cb", EscapedSlashes::Keep, false).unwrap(),
            "/a%5Cb"
        );
        assert_eq!(n("/a//b").unwrap(), "/a//b");
        assert_eq!(
            norm("/a//b///c", EscapedSlashes::Reject, true).unwrap(),
            "/a/b/c"
        );
        assert_eq!(norm("/a//", EscapedSlashes::Reject, true).unwrap(), "/a/");
        assert_eq!(norm("//a", EscapedSlashes::Reject, true).unwrap(), "/a");
    }

    #[test]
    fn bad_escapes_and_utf8() {
        for bad in [
            "/%",
            "/%2",
            "/%zz",
            "/%C0%AE",
            "/%C1%81",
            "/%E0%80%AE",
            "/%ED%A0%80",
            "/%80",
            "/%C3",
            "/%C3x",
            "/%F8%80%80%80%80",
            "/%7F",
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
        assert!(n("/%E2%82%AC").is_ok(), "€");
        assert!(n("/%F0%9F%98%80").is_ok(), "😀");
    }
}
