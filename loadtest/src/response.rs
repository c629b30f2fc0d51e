//! Incremental HTTP/1.1 response parsing for the load generator: the head with `httparse`,
//! then the body framed by Content-Length, chunked transfer coding, or the connection's close.
//! Body bytes are skipped, never copied or kept, so the read buffer stays small whatever the
//! response size.

/// The largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server closes the connection after this response.
    pub close: bool,
}

/// A response that does not follow HTTP/1.1 framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("bad Content-Length")]
    ContentLength,
    #[error("bad chunked body")]
    Chunked,
    #[error("unsupported status {0}")]
    Status(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { size: u64, digits: u32, ext: bool },
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

const CHUNK_START: Chunk = Chunk::Size {
    size: 0,
    digits: 0,
    ext: false,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Parses the responses on one connection, one after the other.
#[derive(Debug, Clone)]
pub struct ResponseParser {
    head_request: bool,
    state: State,
    status: u16,
    close: bool,
}

impl ResponseParser {
    /// A parser for responses to requests with the given method kind (HEAD responses have no
    /// body).
    pub fn new(head_request: bool) -> Self {
        ResponseParser {
            head_request,
            state: State::Head,
            status: 0,
            close: false,
        }
    }

    /// Forgets any partial response (after the connection was replaced).
    pub fn reset(&mut self) {
        self.state = State::Head;
    }

    /// Parses from `buf`, the unconsumed bytes of the connection. Returns how many bytes are
    /// consumed (the caller drops them) and the response if one completed. A partial head
    /// consumes nothing: the caller appends more bytes and calls again; body bytes are
    /// consumed as they arrive.
    pub fn parse(&mut self, buf: &[u8]) -> Result<(usize, Option<Response>), ParseError> {
        let mut used = 0;
        loop {
            match self.state {
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut head = httparse::Response::new(&mut headers);
                    let n = match head.parse(&buf[used..]) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => {
                            if buf.len() - used > MAX_HEAD {
                                return Err(ParseError::HeadTooLarge);
                            }
                            return Ok((used, None));
                        }
                        Err(err) => return Err(ParseError::Head(err)),
                    };
                    used += n;
                    let status = head.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        if status == 101 {
                            return Err(ParseError::Status(status));
                        }
                        continue; // interim response: the final one follows
                    }
                    let framing = Framing::of(&head)?;
                    self.status = status;
                    self.close = framing.close;
                    let no_body = self.head_request || status == 204 || status == 304;
                    self.state = if no_body {
                        State::Fixed(0)
                    } else if framing.chunked {
                        State::Chunked(CHUNK_START)
                    } else if let Some(length) = framing.length {
                        State::Fixed(length)
                    } else {
                        self.close = true;
                        State::UntilClose
                    };
                }
                State::Fixed(remaining) => {
                    let available = (buf.len() - used) as u64;
                    if available >= remaining {
                        used += remaining as usize;
                        return Ok((used, Some(self.finish())));
                    }
                    self.state = State::Fixed(remaining - available);
                    return Ok((buf.len(), None));
                }
                State::Chunked(mut chunk) => {
                    let (n, done) = scan_chunked(&mut chunk, &buf[used..])?;
                    used += n;
                    if done {
                        return Ok((used, Some(self.finish())));
                    }
                    self.state = State::Chunked(chunk);
                    return Ok((used, None));
                }
                State::UntilClose => return Ok((buf.len(), None)),
            }
        }
    }

    /// The connection reached end of file: completes a response delimited by the close.
    pub fn on_eof(&mut self) -> Option<Response> {
        (self.state == State::UntilClose).then(|| self.finish())
    }

    fn finish(&mut self) -> Response {
        self.state = State::Head;
        Response {
            status: self.status,
            close: self.close,
        }
    }
}

/// What the head says about the body and the connection.
struct Framing {
    chunked: bool,
    length: Option<u64>,
    close: bool,
}

impl Framing {
    fn of(head: &httparse::Response<'_, '_>) -> Result<Framing, ParseError> {
        let http10 = head.version == Some(0);
        let mut framing = Framing {
            chunked: false,
            length: None,
            close: http10,
        };
        let mut transfer_encoding = false;
        for header in head.headers.iter() {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                for part in header.value.split(|&b| b == b',') {
                    let part = part.trim_ascii();
                    if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                        return Err(ParseError::ContentLength);
                    }
                    let value = part
                        .iter()
                        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
                    if framing.length.is_some_and(|seen| seen != value) {
                        return Err(ParseError::ContentLength);
                    }
                    framing.length = Some(value);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                framing.chunked = header
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        framing.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        framing.close = false;
                    }
                }
            }
        }
        if transfer_encoding {
            // Transfer-Encoding overrides Content-Length; a final coding other than chunked
            // means the body runs until the connection closes.
            framing.length = None;
        }
        Ok(framing)
    }
}

/// Scans chunked framing; returns the bytes consumed and whether the body (with trailers)
/// ended.
fn scan_chunked(state: &mut Chunk, buf: &[u8]) -> Result<(usize, bool), ParseError> {
    let mut i = 0;
    while i < buf.len() {
        if let Chunk::Data(remaining) = *state {
            let take = remaining.min((buf.len() - i) as u64);
            i += take as usize;
            *state = if take == remaining {
                Chunk::DataCr
            } else {
                Chunk::Data(remaining - take)
            };
            continue;
        }
        let b = buf[i];
        i += 1;
        *state = match *state {
            Chunk::Size { size, digits, ext } => {
                if ext {
                    match b {
                        b'\r' => Chunk::SizeLf(size),
                        b'\n' => return Err(ParseError::Chunked),
                        _ => *state,
                    }
                } else if let Some(digit) = (b as char).to_digit(16) {
                    if digits >= 15 {
                        return Err(ParseError::Chunked);
                    }
                    Chunk::Size {
                        size: size * 16 + u64::from(digit),
                        digits: digits + 1,
                        ext: false,
                    }
                } else if digits == 0 {
                    return Err(ParseError::Chunked);
                } else {
                    match b {
                        b'\r' => Chunk::SizeLf(size),
                        b';' | b' ' | b'\t' => Chunk::Size {
                            size,
                            digits,
                            ext: true,
                        },
                        _ => return Err(ParseError::Chunked),
                    }
                }
            }
            Chunk::SizeLf(size) => match (b, size) {
                (b'\n', 0) => Chunk::TrailerStart,
                (b'\n', size) => Chunk::Data(size),
                _ => return Err(ParseError::Chunked),
            },
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => CHUNK_START,
            Chunk::TrailerStart if b == b'\r' => Chunk::EndLf,
            Chunk::TrailerStart | Chunk::TrailerLine if b != b'\r' && b != b'\n' => {
                Chunk::TrailerLine
            }
            Chunk::TrailerLine if b == b'\r' => Chunk::TrailerLf,
            Chunk::TrailerLf if b == b'\n' => Chunk::TrailerStart,
            Chunk::EndLf if b == b'\n' => return Ok((i, true)),
            _ => return Err(ParseError::Chunked),
        };
    }
    Ok((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes the way a connection does (unconsumed bytes
    /// stay in the buffer) and returns the responses, plus the one completed by EOF.
    fn run(input: &[u8], step: usize, head: bool) -> Result<Vec<Response>, ParseError> {
        let mut parser = ResponseParser::new(head);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                let (used, done) = parser.parse(&buf)?;
                buf.drain(..used);
                match done {
                    Some(response) => out.push(response),
                    None => break,
                }
            }
        }
        out.extend(parser.on_eof());
        Ok(out)
    }

    fn ok(status: u16) -> Response {
        Response {
            status,
            close: false,
        }
    }

    #[test]
    fn content_length_and_pipelined_responses() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        for step in [1, 2, 7, input.len()] {
            assert_eq!(
                run(input, step, false).unwrap(),
                vec![ok(200), ok(503), ok(204)],
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        for step in [1, 3, input.len()] {
            assert_eq!(
                run(input, step, false).unwrap(),
                vec![ok(200), ok(200)],
                "step {step}"
            );
        }
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(run(bad, 4, false), Err(ParseError::Chunked));
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n";
        assert_eq!(run(bad, 100, false), Err(ParseError::Chunked));
    }

    #[test]
    fn connection_close_and_http10() {
        let closing = Response {
            status: 200,
            close: true,
        };
        let input = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(run(input, 5, false).unwrap(), vec![closing]);
        let input = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(run(input, 5, false).unwrap(), vec![closing]);
        let input = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(run(input, 5, false).unwrap(), vec![ok(200)]);
        // No framing: the body runs to the end of the connection.
        let input = b"HTTP/1.1 200 OK\r\n\r\nsome body bytes";
        assert_eq!(run(input, 4, false).unwrap(), vec![closing]);
    }

    #[test]
    fn interim_head_and_errors() {
        let input =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(run(input, 3, false).unwrap(), vec![ok(201)]);
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(run(input, 9, true).unwrap(), vec![ok(200), ok(200)]);
        assert_eq!(
            run(b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", 50, false),
            Err(ParseError::ContentLength)
        );
        assert_eq!(
            run(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                80,
                false
            ),
            Err(ParseError::ContentLength)
        );
        assert!(matches!(
            run(b"garbage\r\n\r\n", 20, false),
            Err(ParseError::Head(_))
        ));
        assert_eq!(
            run(b"HTTP/1.1 101 Switching\r\n\r\n", 50, false),
            Err(ParseError::Status(101))
        );
        let huge = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; MAX_HEAD + 10]].concat();
        assert_eq!(run(&huge, 4096, false), Err(ParseError::HeadTooLarge));
    }

    #[test]
    fn large_body_is_consumed_without_buffering() {
        let mut parser = ResponseParser::new(false);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        assert_eq!(parser.parse(head).unwrap(), (head.len(), None));
        let chunk = [0u8; 4096];
        let mut seen = 0;
        loop {
            let (used, done) = parser.parse(&chunk).unwrap();
            seen += used;
            if done.is_some() {
                break;
            }
            assert_eq!(used, chunk.len());
        }
        assert_eq!(seen, 1_000_000);
    }
}
