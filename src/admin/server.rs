//! The admin listener: a plain-thread HTTP/1.1 server on the control side (never on a data-plane
//! core). Heads are parsed by the gateway's own strict parser ([`crate::http::request`]);
//! bodies need `Content-Length` and are capped. Each connection has its own thread, at most
//! [`MAX_CONNECTIONS`] at a time, with read and write timeouts.

use super::api::{AdminRequest, AdminResponse, Api};
use crate::http::request::{parse, HeadLimits};
use crate::http::{header_slots, BodyFraming};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Admin connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest time one request may take to arrive (and an idle connection may wait), and the write
/// timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16 * 1024,
    max_uri_bytes: 4096,
};

/// The running admin listener.
pub struct AdminServer {
    pub address: SocketAddr,
}

/// A plain or TLS admin connection whose reads can be bounded.
trait Connection: Read + Write + Send {
    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()>;
}

impl Connection for TcpStream {
    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, Some(timeout))
    }
}

impl Connection for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.sock.set_read_timeout(Some(timeout))
    }
}

/// Binds `address` and serves `api` from a background thread.
pub fn start(
    address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    api: Arc<Api>,
) -> std::io::Result<AdminServer> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("cflow-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::AcqRel);
                    let mut stream = stream;
                    let _ = stream.write_all(&AdminResponse::busy().bytes(false));
                    continue;
                }
                let api = api.clone();
                let tls = tls.clone();
                let slot = open.clone();
                let spawned = std::thread::Builder::new()
                    .name("cflow-admin-conn".into())
                    .spawn(move || {
                        serve_connection(stream, tls, &api);
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("admin: cannot start a connection thread");
                }
            }
        })?;
    Ok(AdminServer { address: bound })
}

fn serve_connection(stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, api: &Api) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let mut connection: Box<dyn Connection> = match tls {
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(session) => Box::new(rustls::StreamOwned::new(session, stream)),
            Err(_) => return,
        },
        None => Box::new(stream),
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        match exchange(&mut *connection, &mut buf, api, peer) {
            Ok(true) => continue,
            Ok(false) | Err(_) => return,
        }
    }
}

/// Reads at most `cap` more bytes into `buf` before `deadline`; `false` on a clean end of
/// stream.
fn fill(
    connection: &mut dyn Connection,
    buf: &mut Vec<u8>,
    cap: usize,
    deadline: Instant,
) -> std::io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    connection.set_read_timeout(left)?;
    let mut chunk = [0u8; 4096];
    let n = connection.read(&mut chunk[..cap.clamp(1, 4096)])?;
    if n == 0 {
        return Ok(false);
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(true)
}

/// A parsed head, copied out of the read buffer.
struct Head {
    request: AdminRequest,
    head_len: usize,
    framing: BodyFraming,
    expect_continue: bool,
}

fn parse_head(
    buf: &[u8],
    peer: Option<SocketAddr>,
) -> Result<Option<Head>, crate::http::HeadError> {
    let mut slots = header_slots::<64>();
    Ok(parse(buf, &mut slots, LIMITS)?.map(|head| Head {
        request: AdminRequest::from_head(&head, peer),
        head_len: head.head_len,
        framing: head.framing,
        expect_continue: head.expect_continue,
    }))
}

fn refuse(
    connection: &mut dyn Connection,
    status: u16,
    reason: &str,
    detail: &str,
) -> std::io::Result<bool> {
    let response = AdminResponse::problem(status, reason, detail);
    connection.write_all(&response.bytes(false))?;
    Ok(false)
}

/// Serves one request; `Ok(true)` when the connection stays open.
fn exchange(
    connection: &mut dyn Connection,
    buf: &mut Vec<u8>,
    api: &Api,
    peer: Option<SocketAddr>,
) -> std::io::Result<bool> {
    // One deadline for the whole request, from the first byte awaited (an idle keep-alive
    // connection included): a client trickling bytes cannot hold a connection slot for long.
    let deadline = Instant::now() + IO_TIMEOUT;
    let head = loop {
        match parse_head(buf, peer) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                let room = LIMITS.max_head_bytes.saturating_sub(buf.len()).max(1);
                if !fill(connection, buf, room, deadline)? {
                    return Ok(false);
                }
            }
            Err(error) => {
                return refuse(
                    connection,
                    error.status(),
                    "invalid_request",
                    &error.to_string(),
                )
            }
        }
    };
    let length = match head.framing {
        BodyFraming::None => 0,
        BodyFraming::Length(n) => n,
        BodyFraming::Chunked | BodyFraming::UntilClose => {
            return refuse(
                connection,
                411,
                "length_required",
                "send the body with Content-Length",
            )
        }
    };
    if length > api.max_body_bytes() as u64 {
        let detail = format!("bodies are limited to {} bytes", api.max_body_bytes());
        return refuse(connection, 413, "body_too_large", &detail);
    }
    let (head_len, length) = (head.head_len, length as usize);
    if head.expect_continue && buf.len() < head_len + length {
        connection.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    while buf.len() < head_len + length {
        if !fill(connection, buf, head_len + length - buf.len(), deadline)? {
            return Ok(false);
        }
    }
    let mut request = head.request;
    request.body = buf[head_len..head_len + length].to_vec();
    buf.drain(..head_len + length);
    let keep_alive = request.keep_alive;
    let response = api.handle(&request);
    connection.write_all(&response.bytes(keep_alive))?;
    connection.flush()?;
    Ok(keep_alive)
}
