//! Client request heads: zero-copy parse with `httparse` and the strict framing rules that stop
//! request smuggling (RFC 9112 §6), plus the head-size, header-count and URI-length limits.

use super::headers::ConnectionOptions;
use super::{
    check_head_bytes, parse_content_length, trim_ows, BodyFraming, HeadError, HeaderSlots,
};

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_uri_bytes: usize,
}

/// A parsed, validated request head borrowing the connection's read buffer.
pub struct Request<'b> {
    /// Bytes of the head including the final CRLF CRLF.
    pub head_len: usize,
    /// The head's bytes (request line to the final empty line).
    pub head: &'b [u8],
    pub method: &'b str,
    /// The request target as sent (origin-form: path and optional query).
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub host: &'b [u8],
    pub framing: BodyFraming,
    pub connection: ConnectionOptions<'b>,
    pub expect_continue: bool,
    /// The client's `X-Request-Id`, when present and well-formed.
    pub request_id: Option<&'b [u8]>,
    pub headers: &'b [httparse::Header<'b>],
    /// The host came from an absolute-form target and the request has no `Host` field: the
    /// upstream request must be given one.
    pub host_from_target: bool,
}

impl Request<'_> {
    /// The path part of the target (without the query).
    pub fn path(&self) -> &str {
        match self.target.find('?') {
            Some(q) => &self.target[..q],
            None => self.target,
        }
    }

    /// Whether the client allows the connection to stay open after this exchange.
    pub fn client_keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.connection.keep_alive && !self.connection.close
        } else {
            !self.connection.close
        }
    }

    /// Methods that may be retried on another target (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses one request head from `buf`. `Ok(None)` means more bytes are needed.
pub fn parse<'b>(
    buf: &'b [u8],
    headers: &'b mut HeaderSlots<'b>,
    limits: HeadLimits,
) -> Result<Option<Request<'b>>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_head_bytes {
                return Err(HeadError::HeadTooLarge);
            }
            // A request line longer than the URI limit can be refused before it completes.
            if !buf[..buf.len().min(limits.max_uri_bytes + 32)].contains(&b'\n')
                && buf.len() > limits.max_uri_bytes + 32
            {
                return Err(HeadError::UriTooLong);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("unparsable request head")),
    };
    if head_len > limits.max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    check_head_bytes(&buf[..head_len])?;
    let method = req.method.ok_or(HeadError::Malformed("no method"))?;
    let target = req.path.ok_or(HeadError::Malformed("no target"))?;
    let minor_version = req.version.ok_or(HeadError::Malformed("no version"))?;
    if target.len() > limits.max_uri_bytes {
        return Err(HeadError::UriTooLong);
    }
    // Origin-form, or absolute-form (RFC 9112 §3.2.2): its authority is the Host.
    let (target, authority) = if target.starts_with('/') {
        (target, None)
    } else {
        let (target, authority) = absolute_form(target)?;
        (target, Some(authority))
    };

    let headers: &'b [httparse::Header<'b>] = req.headers;
    let mut host: Option<&[u8]> = None;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encodings = 0;
    let mut connection = ConnectionOptions::default();
    let mut expect_continue = false;
    let mut request_id = None;
    for header in headers {
        let name = header.name.as_bytes();
        let value = header.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host.is_some() {
                    return Err(HeadError::Malformed("more than one Host"));
                }
                let value = trim_ows(value);
                if value.is_empty() || !value.iter().all(|&b| is_host_byte(b)) {
                    return Err(HeadError::Malformed("invalid Host"));
                }
                host = Some(value);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return Err(HeadError::Malformed("more than one Content-Length"));
                }
                content_length = Some(parse_content_length(trim_ows(value))?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encodings += 1;
                if transfer_encodings > 1 {
                    return Err(HeadError::Malformed("more than one Transfer-Encoding"));
                }
                if !trim_ows(value).eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => connection.add(value),
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HeadError::ExpectationFailed);
                }
            }
            12 if name.eq_ignore_ascii_case(b"x-request-id") => {
                let value = trim_ows(value);
                if is_valid_request_id(value) {
                    request_id = Some(value);
                }
            }
            _ => {}
        }
    }

    if chunked && content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && minor_version == 0 {
        return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    let host_from_target = authority.is_some() && host.is_none();
    let host = match (host, authority) {
        (Some(host), Some(authority)) if !host.eq_ignore_ascii_case(authority) => {
            return Err(HeadError::Malformed(
                "Host differs from the request target's authority",
            ))
        }
        (_, Some(authority)) => authority,
        (Some(host), None) => host,
        (None, None) if minor_version == 0 => b"",
        (None, None) => return Err(HeadError::Malformed("HTTP/1.1 request without Host")),
    };
    let framing = if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        }
    };
    Ok(Some(Request {
        head_len,
        head: &buf[..head_len],
        method,
        target,
        minor_version,
        host,
        framing,
        connection,
        expect_continue,
        request_id,
        headers,
        host_from_target,
    }))
}

/// Splits an absolute-form target (`http://host[:port]/path?query`) into its origin-form part
/// and its authority.
fn absolute_form(target: &str) -> Result<(&str, &[u8]), HeadError> {
    let bad = HeadError::Malformed("request target must be origin-form or absolute-form");
    let scheme_end = target.find("://").ok_or(bad)?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad);
    }
    let rest = &target[scheme_end + 3..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || !authority.bytes().all(is_host_byte) {
        return Err(HeadError::Malformed(
            "invalid authority in the request target",
        ));
    }
    let origin = match &rest[end..] {
        "" => "/",
        path if path.starts_with('/') => path,
        _ => return Err(bad),
    };
    Ok((origin, authority.as_bytes()))
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
}

/// A client-chosen request id is kept only when short and made of safe characters.
fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 16384,
        max_uri_bytes: 8192,
    };

    fn check(raw: &[u8]) -> Result<Option<(BodyFraming, bool)>, HeadError> {
        let mut headers = super::super::header_slots::<32>();
        parse(raw, &mut headers, LIMITS).map(|r| r.map(|r| (r.framing, r.client_keep_alive())))
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let mut headers = super::super::header_slots::<8>();
        let req = parse(raw, &mut headers, LIMITS).unwrap().unwrap();
        assert_eq!(req.head_len, raw.len());
        assert_eq!(req.path(), "/a");
        assert_eq!(req.host, b"example.com");
        assert_eq!(req.framing, BodyFraming::None);
        assert!(req.client_keep_alive());
    }

    #[test]
    fn partial_head_wants_more() {
        assert_eq!(check(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
    }

    #[test]
    fn framing_variants() {
        assert_eq!(
            check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap(),
            Some((BodyFraming::Length(5), true))
        );
        assert_eq!(
            check(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap(),
            Some((BodyFraming::Chunked, true))
        );
        assert_eq!(
            check(b"GET / HTTP/1.0\r\n\r\n").unwrap(),
            Some((BodyFraming::None, false))
        );
        assert_eq!(
            check(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap(),
            Some((BodyFraming::None, true))
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases: [&[u8]; 17] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad[Name]: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ];
        for raw in cases {
            let result = check(raw);
            assert!(
                matches!(result, Err(HeadError::Malformed(_))),
                "{:?} gave {result:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(check(long.as_bytes()), Err(HeadError::UriTooLong));
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(check(raw.as_bytes()), Err(HeadError::TooManyHeaders));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "v".repeat(17000));
        assert_eq!(check(big.as_bytes()), Err(HeadError::HeadTooLarge));
    }

    #[test]
    fn absolute_form_targets_give_their_authority() {
        assert_eq!(
            absolute_form("http://api.test/a?b").unwrap(),
            ("/a?b", &b"api.test"[..])
        );
        assert_eq!(
            absolute_form("HTTPS://api.test:8443").unwrap(),
            ("/", &b"api.test:8443"[..])
        );
        for bad in [
            "ftp://x/",
            "http:///a",
            "http://u@h/",
            "http://h?x",
            "*",
            "x",
        ] {
            assert!(absolute_form(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expectations() {
        let raw = b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        let mut headers = super::super::header_slots::<8>();
        assert!(
            parse(raw, &mut headers, LIMITS)
                .unwrap()
                .unwrap()
                .expect_continue
        );
        assert_eq!(
            check(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n"),
            Err(HeadError::ExpectationFailed)
        );
    }
}
