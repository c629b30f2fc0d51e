//! Incremental, strict scanner for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! The proxy forwards chunked bodies byte for byte (trailers included); the scanner only finds
//! where the body ends and refuses malformed framing. For peers that cannot take chunked framing
//! it also reports where the data bytes are, so the body can be forwarded de-chunked.

/// Longest chunk extension accepted on one chunk-size line.
pub const MAX_EXTENSION_BYTES: usize = 1024;
/// Largest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk extension too long or malformed")]
    BadExtension,
    #[error("missing CRLF")]
    MissingCrlf,
    #[error("malformed or oversized trailer section")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// Scanner state for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    digits: u8,
    extension_bytes: usize,
    trailer_bytes: usize,
    line_has_colon: bool,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::Size,
            size: 0,
            digits: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            line_has_colon: false,
        }
    }

    /// True once the terminating empty line after the last chunk and trailers was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `data`, returning how many bytes belong to the body (all of `data` unless the
    /// body ends inside it). `on_data` gets the offsets of chunk-data bytes within `data`.
    pub fn scan(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(usize, usize),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.digits += 1;
                        self.size = (self.size << 4) | u64::from(hex_value(b));
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = State::Extension;
                        self.extension_bytes = 1;
                    }
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err(ChunkError::BadSize),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.extension_bytes += 1;
                        if self.extension_bytes > MAX_EXTENSION_BYTES {
                            return Err(ChunkError::BadExtension);
                        }
                    }
                    _ => return Err(ChunkError::BadExtension),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(self.size)
                    };
                }
                State::Data(remaining) => {
                    let available = (data.len() - i) as u64;
                    let take = remaining.min(available) as usize;
                    on_data(i, i + take);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    i += take;
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Size;
                    self.size = 0;
                    self.digits = 0;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::FinalLf,
                    b' ' | b'\t' | b':' => return Err(ChunkError::BadTrailer),
                    _ => {
                        self.line_has_colon = false;
                        self.state = State::TrailerLine;
                        continue;
                    }
                },
                State::TrailerLine => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(ChunkError::BadTrailer);
                    }
                    match b {
                        b'\r' => {
                            if !self.line_has_colon {
                                return Err(ChunkError::BadTrailer);
                            }
                            self.state = State::TrailerLf;
                        }
                        b':' => self.line_has_colon = true,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(ChunkError::BadTrailer),
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns (consumed, data, done).
    fn run(body: &[u8], step: usize) -> Result<(usize, Vec<u8>, bool), ChunkError> {
        let mut scanner = ChunkedScanner::new();
        let mut data = Vec::new();
        let mut consumed = 0;
        for piece in body.chunks(step) {
            let n = scanner.scan(piece, |a, b| data.extend_from_slice(&piece[a..b]))?;
            consumed += n;
            if scanner.is_done() {
                break;
            }
        }
        Ok((consumed, data, scanner.is_done()))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (consumed, data, done) = run(body, step).unwrap();
            assert!(done);
            assert_eq!(consumed, body.len() - 4, "step {step}");
            assert_eq!(data, b"hello world");
        }
    }

    #[test]
    fn refuses_bad_framing() {
        let cases: [&[u8]; 8] = [
            b"zz\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"0\r\n: no-name\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"-1\r\n",
        ];
        for case in cases {
            assert!(
                run(case, case.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        let long_ext = format!(
            "1;{}\r\na\r\n0\r\n\r\n",
            "x".repeat(MAX_EXTENSION_BYTES + 1)
        );
        assert_eq!(
            run(long_ext.as_bytes(), 7).unwrap_err(),
            ChunkError::BadExtension
        );
    }

    #[test]
    fn incomplete_is_not_done() {
        let (_, _, done) = run(b"5\r\nhel", 100).unwrap();
        assert!(!done);
    }
}
