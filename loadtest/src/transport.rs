//! One client connection's byte stream, plain TCP or TLS, over monoio's owned-buffer I/O:
//! connect, write a whole buffer, append what arrives to a read buffer. A plain stream can
//! also be read with the kernel's receive timestamps ([`Transport::last_rx`]).

use crate::tls::TlsStream;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a socket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IoFail {
    #[error("connection closed by the server")]
    Closed,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How to reach the target.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// TLS client configuration and server name for `https`.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// A connected stream.
pub enum Transport {
    Plain(TcpStream),
    /// Plain TCP read with `recvmsg` after a readiness wait, keeping the kernel's receive
    /// timestamp (`SO_TIMESTAMPNS`) of the last bytes read.
    Stamped {
        tcp: TcpStream,
        last_rx: Option<Instant>,
    },
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Connects (and, for `https`, completes the TLS handshake with the endpoint's shared
    /// configuration, so that it may resume a session an earlier connection got).
    /// `stamped`: a plain stream keeps the kernel's receive timestamps.
    pub async fn connect(endpoint: &Endpoint, stamped: bool) -> Result<Transport, IoFail> {
        let tcp = TcpStream::connect(endpoint.addr).await?;
        tcp.set_nodelay(true)?;
        match &endpoint.tls {
            None if stamped => {
                enable_rx_timestamps(tcp.as_raw_fd())?;
                Ok(Transport::Stamped { tcp, last_rx: None })
            }
            None => Ok(Transport::Plain(tcp)),
            Some((config, name)) => Ok(Transport::Tls(Box::new(
                TlsStream::handshake(tcp, config.clone(), name.clone()).await?,
            ))),
        }
    }

    /// For TLS: whether the handshake resumed an earlier session; None for plain TCP.
    pub fn tls_resumed(&self) -> Option<bool> {
        match self {
            Transport::Plain(_) | Transport::Stamped { .. } => None,
            Transport::Tls(tls) => Some(tls.resumed()),
        }
    }

    /// For a stamped stream: when the kernel received the bytes of the last read, as an
    /// `Instant` (the generator's own delay in reading them is not in it).
    pub fn last_rx(&self) -> Option<Instant> {
        match self {
            Transport::Stamped { last_rx, .. } => *last_rx,
            _ => None,
        }
    }

    /// Writes all of `buf` (the buffer is lent to the kernel and given back).
    pub async fn write_all(&mut self, buf: &mut Vec<u8>) -> Result<(), IoFail> {
        match self {
            Transport::Plain(tcp) | Transport::Stamped { tcp, .. } => {
                let owned = std::mem::take(buf);
                let (result, owned) = tcp.write_all(owned).await;
                *buf = owned;
                result?;
                Ok(())
            }
            Transport::Tls(tls) => tls.write_all(buf).await,
        }
    }

    /// Appends at least one byte to `buf`, keeping at least `min_spare` bytes of room for the
    /// read; returns 0 at the end of the stream.
    pub async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
    ) -> Result<usize, IoFail> {
        match self {
            Transport::Plain(tcp) => {
                if buf.capacity() - buf.len() < min_spare {
                    buf.reserve(min_spare);
                }
                let owned = std::mem::take(buf);
                let len = owned.len();
                let (result, slice) = tcp.read(owned.slice_mut(len..)).await;
                *buf = slice.into_inner();
                Ok(result?)
            }
            Transport::Stamped { tcp, last_rx } => {
                if buf.capacity() - buf.len() < min_spare {
                    buf.reserve(min_spare);
                }
                loop {
                    tcp.readable(false).await?;
                    match recv_stamped(tcp.as_raw_fd(), buf.spare_capacity_mut()) {
                        Ok((n, stamp)) => {
                            // SAFETY: recvmsg initialised the first n bytes of the spare room.
                            unsafe { buf.set_len(buf.len() + n) };
                            // End of stream carries no stamp: keep the last bytes' one.
                            if n > 0 {
                                *last_rx = stamp.and_then(stamp_instant);
                            }
                            return Ok(n);
                        }
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Transport::Tls(tls) => tls.read_more(buf).await,
        }
    }
}

/// Asks the kernel to timestamp what this socket receives (`SO_TIMESTAMPNS`, wall clock).
fn enable_rx_timestamps(fd: RawFd) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option value on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One non-blocking `recvmsg` into `spare`: the bytes read and the receive timestamp of the
/// last of them, when the kernel attached one.
fn recv_stamped(
    fd: RawFd,
    spare: &mut [MaybeUninit<u8>],
) -> std::io::Result<(usize, Option<libc::timespec>)> {
    let mut iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // Room for one SCM_TIMESTAMPNS message, 8-byte aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is an open socket; msg points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let room = libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize;
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                && (*cmsg).cmsg_len as usize >= room
            {
                stamp = Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg) as *const libc::timespec
                ));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// A wall-clock receive timestamp as an `Instant`: now, less the timestamp's age. None for an
/// empty timestamp.
fn stamp_instant(stamp: libc::timespec) -> Option<Instant> {
    if stamp.tv_sec == 0 && stamp.tv_nsec == 0 {
        return None;
    }
    let mut wall = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut wall) };
    let now = Instant::now();
    let age_ns = (wall.tv_sec - stamp.tv_sec) as i128 * 1_000_000_000
        + (wall.tv_nsec - stamp.tv_nsec) as i128;
    now.checked_sub(Duration::from_nanos(age_ns.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream as StdStream};

    #[test]
    fn a_receive_timestamp_is_when_the_kernel_got_the_bytes_not_when_they_were_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let reader = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut writer, _) = listener.accept().unwrap();
        enable_rx_timestamps(reader.as_raw_fd()).unwrap();
        let mut room = vec![MaybeUninit::<u8>::uninit(); 64];
        // The kernel switches timestamping on for the machine a moment after the first socket
        // asks (deferred work): until then packets arrive unstamped.
        let started = Instant::now();
        loop {
            writer.write_all(b".").unwrap();
            std::thread::sleep(Duration::from_millis(1));
            let (_, stamp) = recv_stamped(reader.as_raw_fd(), &mut room).unwrap();
            if stamp.is_some() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "never stamped");
        }

        let sent = Instant::now();
        writer.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        // The reader is late by 50 ms: the timestamp must not be.
        std::thread::sleep(Duration::from_millis(50));
        let (n, stamp) = recv_stamped(reader.as_raw_fd(), &mut room).unwrap();
        let read_at = Instant::now();
        assert_eq!(n, 17);
        let rx = stamp_instant(stamp.expect("a timestamp")).unwrap();
        assert!(
            rx + Duration::from_millis(40) < read_at,
            "{rx:?} vs {read_at:?}"
        );
        // The clock conversion is good to well under a millisecond.
        assert!(rx + Duration::from_millis(2) > sent, "{rx:?} vs {sent:?}");

        // Nothing left: the non-blocking receive says so instead of waiting.
        let err = recv_stamped(reader.as_raw_fd(), &mut room).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn an_empty_timestamp_converts_to_none() {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert!(stamp_instant(zero).is_none());
    }
}
