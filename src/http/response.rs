//! Upstream response heads: parse with `httparse` and apply the same framing strictness as for
//! requests. Any violation is an upstream protocol error (the client gets 502).

use super::headers::ConnectionOptions;
use super::{
    check_head_bytes, parse_content_length, trim_ows, BodyFraming, HeadError, HeaderSlots,
};

/// A parsed, validated upstream response head borrowing the upstream read buffer.
pub struct Response<'b> {
    pub head_len: usize,
    pub code: u16,
    pub minor_version: u8,
    pub framing: BodyFraming,
    pub connection: ConnectionOptions<'b>,
    pub has_request_id: bool,
    pub headers: &'b [httparse::Header<'b>],
}

impl Response<'_> {
    /// Whether the upstream connection may carry another request after this response.
    pub fn upstream_keep_alive(&self) -> bool {
        let open = if self.minor_version == 0 {
            self.connection.keep_alive && !self.connection.close
        } else {
            !self.connection.close
        };
        open && self.framing != BodyFraming::UntilClose
    }

    /// 1xx responses are interim: the final response follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.code)
    }
}

/// Parses an upstream response head. `request_was_head` drops the body for HEAD requests.
pub fn parse<'b>(
    buf: &'b [u8],
    headers: &'b mut HeaderSlots<'b>,
    max_head_bytes: usize,
    request_was_head: bool,
) -> Result<Option<Response<'b>>, HeadError> {
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let head_len = match config.parse_response_with_uninit_headers(&mut resp, buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head_bytes {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("unparsable response head")),
    };
    if head_len > max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    check_head_bytes(&buf[..head_len])?;
    let code = resp.code.ok_or(HeadError::Malformed("no status"))?;
    let minor_version = resp.version.ok_or(HeadError::Malformed("no version"))?;
    if !(100..=999).contains(&code) {
        return Err(HeadError::Malformed("status out of range"));
    }
    let headers: &'b [httparse::Header<'b>] = resp.headers;
    let mut content_length = None;
    let mut chunked = false;
    let mut transfer_encodings = 0;
    let mut connection = ConnectionOptions::default();
    let mut has_request_id = false;
    for header in headers {
        let name = header.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return Err(HeadError::Malformed("more than one Content-Length"));
                }
                content_length = Some(parse_content_length(trim_ows(header.value))?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encodings += 1;
                if transfer_encodings > 1
                    || !trim_ows(header.value).eq_ignore_ascii_case(b"chunked")
                {
                    return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => connection.add(header.value),
            12 if name.eq_ignore_ascii_case(b"x-request-id") => has_request_id = true,
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
    let bodiless = request_was_head || code < 200 || code == 204 || code == 304;
    let framing = if bodiless {
        BodyFraming::None
    } else if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    Ok(Some(Response {
        head_len,
        code,
        minor_version,
        framing,
        connection,
        has_request_id,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(raw: &[u8], head: bool) -> Result<BodyFraming, HeadError> {
        let mut headers = super::super::header_slots::<16>();
        parse(raw, &mut headers, 16384, head).map(|r| r.unwrap().framing)
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok(BodyFraming::Length(3))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(BodyFraming::UntilClose)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn bad_upstream_framing_is_refused() {
        assert!(framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
        assert!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n", false).is_err());
        assert!(framing(b"garbage\r\n\r\n", false).is_err());
    }
}
