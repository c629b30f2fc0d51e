//! The TLS side of accepting a client connection and of opening an upstream one: handshake
//! under a deadline, the client certificate's identity, a plain-HTTP request on a TLS port
//! answered with a plain 400, and failures counted per core without touching other
//! connections.

use super::core::Core;
use super::io::{linger_close, tcp_write, ByteStream, IoFail, UpstreamStream};
use crate::http::problem::write_problem;
use crate::observe::metrics::TlsOutcome;
use crate::runtime::deadline::{sleep_until, timeout_at};
use crate::snapshot::Upstream;
use crate::tls::certificate::ClientIdentity;
use crate::tls::stream::TlsStream;
use monoio::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the plain-text 400 to an HTTP request on a TLS port may take to write.
const PLAIN_REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the server handshake on an accepted connection. `None` means the connection is done
/// (failed handshake, timeout, drain); the failure has been counted and logged at debug level.
pub async fn handshake(
    core: &Rc<Core>,
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    listener: usize,
) -> Option<(TlsStream, Option<Rc<ClientIdentity>>)> {
    let counters = &core.counters;
    let failed = || {
        counters.tls_failures.bump();
        core.metrics.tls_handshake(listener, TlsOutcome::Failed);
    };
    let mut tls = match TlsStream::server(tcp, config) {
        Ok(tls) => tls,
        Err(err) => {
            failed();
            tracing::warn!(core = core.id, error = %err, "cannot start a TLS session");
            return None;
        }
    };
    let deadline = Instant::now() + timeout;
    let result = monoio::select! {
        result = tls.handshake(deadline) => result,
        _ = core.drain.wait() => Err(IoFail::Closed),
    };
    match result {
        Ok(()) => {}
        Err(IoFail::NotTls { http: true }) => {
            failed();
            tracing::debug!(core = core.id, "plain HTTP request on a TLS listener");
            refuse_plain_http(tls.tcp()).await;
            return None;
        }
        Err(err) => {
            failed();
            tracing::debug!(core = core.id, error = %err, "TLS handshake failed");
            return None;
        }
    }
    let identity = match tls.session().peer_certificates().and_then(|c| c.first()) {
        None => None,
        Some(cert) => match ClientIdentity::from_der(cert) {
            Ok(identity) => Some(Rc::new(identity)),
            Err(err) => {
                failed();
                tracing::warn!(core = core.id, error = %err, "unreadable client certificate");
                return None;
            }
        },
    };
    counters.tls_handshakes.bump();
    if tls.session().handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        counters.tls_resumed.bump();
        core.metrics.tls_handshake(listener, TlsOutcome::Resumed);
    } else {
        core.metrics.tls_handshake(listener, TlsOutcome::Full);
    }
    Some((tls, identity))
}

/// Answers an HTTP request that arrived on a TLS port with a plain-text 400 and closes.
async fn refuse_plain_http(tcp: &mut TcpStream) {
    let mut out = Vec::with_capacity(256);
    write_problem(&mut out, 400, true, b"", b"");
    let len = out.len();
    if tcp_write(
        tcp,
        &mut out,
        0..len,
        Instant::now() + PLAIN_REFUSAL_TIMEOUT,
    )
    .await
    .is_ok()
    {
        linger_close(tcp, &mut out).await;
    }
}

/// Connects to one target of an upstream (with the TLS handshake for `[upstreams.tls]`), within
/// the upstream's connect timeout. The error is the status for the client: 502, or 504 on
/// timeout.
pub async fn connect_upstream(
    core: &Core,
    upstream: &Upstream,
    target: usize,
) -> Result<UpstreamStream, u16> {
    let address = upstream.targets[target];
    let deadline = Instant::now() + upstream.connect_timeout;
    let connect = TcpStream::connect_addr(address);
    let tcp = match timeout_at(deadline, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            if let Some(suppressed) = core.warnings.connect.allow(Instant::now()) {
                tracing::warn!(core = core.id, upstream = %upstream.name, target = %address, error = %err, suppressed, "upstream connect failed");
            }
            return Err(502);
        }
        Err(_) => {
            if let Some(suppressed) = core.warnings.connect.allow(Instant::now()) {
                tracing::warn!(core = core.id, upstream = %upstream.name, target = %address, suppressed, "upstream connect timed out");
            }
            return Err(504);
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &upstream.tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let name = tls.server_names[target].clone();
    let mut stream = match TlsStream::client(tcp, tls.config.clone(), name) {
        Ok(stream) => stream,
        Err(err) => {
            if let Some(suppressed) = core.warnings.connect.allow(Instant::now()) {
                tracing::warn!(core = core.id, upstream = %upstream.name, error = %err, suppressed, "cannot start upstream TLS");
            }
            return Err(502);
        }
    };
    match stream.handshake(deadline).await {
        Ok(()) => Ok(UpstreamStream::Tls(Box::new(stream))),
        Err(IoFail::Timeout) => {
            if let Some(suppressed) = core.warnings.connect.allow(Instant::now()) {
                tracing::warn!(core = core.id, upstream = %upstream.name, target = %address, suppressed, "upstream TLS handshake timed out");
            }
            Err(504)
        }
        Err(err) => {
            if let Some(suppressed) = core.warnings.connect.allow(Instant::now()) {
                tracing::warn!(core = core.id, upstream = %upstream.name, target = %address, error = %err, suppressed, "upstream TLS handshake failed");
            }
            Err(502)
        }
    }
}

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(#[from] crate::filter::proxy_protocol::ProxyError),
    #[error("no PROXY protocol header on a listener that requires one")]
    Missing,
    #[error("PROXY protocol header not complete in time")]
    Timeout,
    #[error("connection closed before the PROXY protocol header")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::Error),
}

/// Reads the PROXY protocol header at the start of an accepted connection, taking exactly its
/// bytes off the socket (what follows — TLS or HTTP — stays there for the next reader). The
/// header is looked at with `MSG_PEEK` until it is complete. Returns the client address it
/// names (`None`: none named, or no header on an `optional` listener).
pub async fn read_proxy_header(
    tcp: &TcpStream,
    mode: crate::filter::ProxyProtocol,
    deadline: Instant,
) -> Result<Option<std::net::SocketAddr>, ProxyHeaderError> {
    use crate::filter::proxy_protocol::{self, Parsed, MAX_HEADER_BYTES};
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let mut buf = [0u8; MAX_HEADER_BYTES];
    let mut seen = 0;
    loop {
        let ready = timeout_at(deadline, tcp.readable(false)).await;
        ready
            .map_err(|_| ProxyHeaderError::Timeout)?
            .map_err(ProxyHeaderError::Io)?;
        // SAFETY: `buf` is a live local buffer of the given length; MSG_DONTWAIT keeps the call
        // from blocking the core.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(ProxyHeaderError::Io(err)),
            }
        }
        let peeked = &buf[..n as usize];
        if mode == crate::filter::ProxyProtocol::Optional
            && proxy_protocol::looks_like_proxy(peeked) == Some(false)
        {
            return Ok(None);
        }
        match proxy_protocol::parse(peeked) {
            Ok(Parsed::Header { len, source }) => {
                // SAFETY: as above; the `len` bytes were just peeked, so they are there.
                let taken =
                    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
                if taken != len as isize {
                    return Err(ProxyHeaderError::Io(std::io::Error::last_os_error()));
                }
                return Ok(source);
            }
            Ok(Parsed::Incomplete) => {
                if Instant::now() >= deadline {
                    return Err(ProxyHeaderError::Timeout);
                }
                if n as usize == seen {
                    // Readable but nothing new: the rest is still on its way.
                    sleep_until(Instant::now() + Duration::from_millis(1)).await;
                }
                seen = n as usize;
            }
            Err(proxy_protocol::ProxyError::NotProxy) => return Err(ProxyHeaderError::Missing),
            Err(err) => return Err(err.into()),
        }
    }
}
