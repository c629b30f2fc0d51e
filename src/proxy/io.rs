//! Byte streams the proxy reads and writes with owned buffers and deadlines: plain TCP and TLS
//! (see [`crate::tls::stream`]) behind one [`ByteStream`] trait, the upstream side's
//! [`UpstreamStream`] (plain or TLS, decided per upstream), and the lingering close of a client
//! connection. A timed-out operation is cancelled and the connection is expected to be closed by
//! the caller.

use crate::runtime::deadline::{timeout_at, Elapsed};
use crate::tls::stream::TlsStream;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::ops::Range;
use std::os::fd::AsRawFd;
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
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The first bytes on a TLS listener were not a TLS handshake (`http`: they look like an
    /// HTTP request line).
    #[error("not a TLS handshake")]
    NotTls { http: bool },
}

/// A connection the proxy reads requests or responses from and writes them to.
#[allow(async_fn_in_trait)] // single-threaded reactor: these futures are never sent.
pub trait ByteStream {
    /// Reads at least one byte onto the end of `buf` (keeping about `min_spare` bytes of room),
    /// before `deadline`. Returns the number of bytes added.
    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        deadline: Instant,
    ) -> Result<usize, IoFail>;

    /// Writes `buf[range]` completely within `timeout`.
    async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> Result<(), IoFail>;

    /// Waits until reading would not block, before `deadline`, without holding a buffer
    /// (an idle connection then needs none). Streams with their own buffering (TLS) return
    /// at once. Not an `async fn`: the idle connection keeps this future, so it is the timed
    /// poll itself and nothing around it.
    fn wait_readable(
        &mut self,
        _deadline: Instant,
    ) -> impl std::future::Future<Output = Result<std::io::Result<()>, Elapsed>> {
        std::future::ready(Ok(Ok(())))
    }

    /// Ends the stream's own framing before the socket is closed (TLS: a close_notify alert).
    async fn finish(&mut self);

    /// The socket underneath.
    fn tcp(&mut self) -> &mut TcpStream;

    /// Writes all of `buf`.
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        let len = buf.len();
        self.write_range(buf, 0..len, timeout).await
    }
}

impl ByteStream for TcpStream {
    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        deadline: Instant,
    ) -> Result<usize, IoFail> {
        tcp_read(self, buf, min_spare, deadline).await
    }

    async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        tcp_write(self, buf, range, Instant::now() + timeout).await
    }

    fn wait_readable(
        &mut self,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<std::io::Result<()>, Elapsed>> {
        timeout_at(deadline, self.readable(false))
    }

    async fn finish(&mut self) {}

    fn tcp(&mut self) -> &mut TcpStream {
        self
    }
}

/// A connection to an upstream target: plain, or TLS for `[upstreams.tls]`.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl ByteStream for UpstreamStream {
    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        deadline: Instant,
    ) -> Result<usize, IoFail> {
        match self {
            UpstreamStream::Plain(tcp) => tcp_read(tcp, buf, min_spare, deadline).await,
            UpstreamStream::Tls(tls) => tls.read_more(buf, min_spare, deadline).await,
        }
    }

    async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        match self {
            UpstreamStream::Plain(tcp) => {
                tcp_write(tcp, buf, range, Instant::now() + timeout).await
            }
            UpstreamStream::Tls(tls) => tls.write_range(buf, range, timeout).await,
        }
    }

    async fn finish(&mut self) {
        if let UpstreamStream::Tls(tls) = self {
            tls.finish().await;
        }
    }

    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            UpstreamStream::Plain(tcp) => tcp,
            UpstreamStream::Tls(tls) => tls.tcp(),
        }
    }
}

/// Reads at least one byte from a socket onto the end of `buf` (keeping `min_spare` bytes of
/// room), before `deadline`. End of stream is [`IoFail::Closed`].
pub async fn tcp_read(
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
    let (result, slice) = timeout_at(deadline, read)
        .await
        .map_err(|Elapsed| IoFail::Timeout)?;
    *buf = slice.into_inner();
    match result {
        Ok(0) => Err(IoFail::Closed),
        Ok(n) => Ok(n),
        Err(err) => Err(IoFail::Error(err)),
    }
}

/// Writes `buf[range]` to a socket completely before `deadline`.
pub async fn tcp_write(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    range: Range<usize>,
    deadline: Instant,
) -> Result<(), IoFail> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let write = AsyncWriteRentExt::write_all(stream, monoio::buf::IoBuf::slice(owned, range));
    let (result, slice) = timeout_at(deadline, write)
        .await
        .map_err(|Elapsed| IoFail::Timeout)?;
    *buf = slice.into_inner();
    result.map(|_| ()).map_err(IoFail::Error)
}

/// How long a closing connection keeps reading (and discarding) what the client still sends.
const LINGER_TIME: Duration = Duration::from_millis(1000);
/// How much it discards at most.
const LINGER_BYTES: usize = 256 * 1024;

/// Closes a client connection after an error response without losing that response: the
/// stream's framing is ended and the write side shut first, then unread request bytes are
/// drained for a short while, so the kernel does not answer them with a reset that could destroy
/// the response in flight.
pub async fn linger_close<S: ByteStream>(stream: &mut S, buf: &mut Vec<u8>) {
    stream.finish().await;
    let tcp = stream.tcp();
    // SAFETY: shutdown on a socket fd owned by `tcp`.
    unsafe {
        libc::shutdown(tcp.as_raw_fd(), libc::SHUT_WR);
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    buf.clear();
    while discarded < LINGER_BYTES {
        match tcp_read(tcp, buf, 16 * 1024, deadline).await {
            Ok(n) => {
                discarded += n;
                buf.clear();
            }
            Err(_) => break,
        }
    }
}
