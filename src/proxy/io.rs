//! Owned-buffer socket helpers over monoio with deadlines: read more bytes onto the end of a
//! connection buffer, write a range of a buffer. A timed-out operation is cancelled and the
//! connection is expected to be closed by the caller.

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::ops::Range;
use std::time::{Duration, Instant};

/// Why a socket operation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum IoFail {
    #[error("timed out")]
    Timeout,
    #[error("peer closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Error(#[from] std::io::Error),
}

/// Reads at least one byte onto the end of `buf` (keeping `min_spare` bytes of room), before
/// `deadline`. Returns the number of bytes read.
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    min_spare: usize,
    deadline: Instant,
) -> Result<usize, IoFail> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let owned = std::mem::take(buf);
    let len = owned.len();
    let read = stream.read(owned.slice_mut(len..));
    let (result, slice) = monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), read)
        .await
        .map_err(|_| IoFail::Timeout)?;
    *buf = slice.into_inner();
    match result {
        Ok(0) => Err(IoFail::Closed),
        Ok(n) => Ok(n),
        Err(err) => Err(IoFail::Error(err)),
    }
}

/// Writes `buf[range]` completely within `timeout`.
pub async fn write_range(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    range: Range<usize>,
    timeout: Duration,
) -> Result<(), IoFail> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let write = stream.write_all(monoio::buf::IoBuf::slice(owned, range));
    let (result, slice) = monoio::time::timeout(timeout, write)
        .await
        .map_err(|_| IoFail::Timeout)?;
    *buf = slice.into_inner();
    result.map(|_| ()).map_err(IoFail::Error)
}

/// Writes all of `buf`.
pub async fn write_all(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), IoFail> {
    let len = buf.len();
    write_range(stream, buf, 0..len, timeout).await
}

/// How long a closing connection keeps reading (and discarding) what the client still sends.
const LINGER_TIME: Duration = Duration::from_millis(1000);
/// How much it discards at most.
const LINGER_BYTES: usize = 256 * 1024;

/// Closes a client connection after an error response without losing that response: the write
/// side is shut first, then unread request bytes are drained for a short while, so the kernel
/// does not answer them with a reset that could destroy the response in flight.
pub async fn linger_close(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown on a socket fd owned by `stream`.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR);
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    buf.clear();
    while discarded < LINGER_BYTES {
        match read_more(stream, buf, 16 * 1024, deadline).await {
            Ok(n) => {
                discarded += n;
                buf.clear();
            }
            Err(_) => break,
        }
    }
}
