//! The TLS side of accepting a client connection and of opening an upstream one: handshake
//! under a deadline, the client certificate's identity, a plain-HTTP request on a TLS port
//! answered with a plain 400, and failures counted per core without touching other
//! connections.

use super::core::Core;
use super::io::{linger_close, tcp_write, ByteStream, IoFail, UpstreamStream};
use crate::http::problem::write_problem;
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
) -> Option<(TlsStream, Option<Rc<ClientIdentity>>)> {
    let counters = &core.counters;
    let mut tls = match TlsStream::server(tcp, config) {
        Ok(tls) => tls,
        Err(err) => {
            counters.tls_failures.bump();
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
            counters.tls_failures.bump();
            tracing::debug!(core = core.id, "plain HTTP request on a TLS listener");
            refuse_plain_http(tls.tcp()).await;
            return None;
        }
        Err(err) => {
            counters.tls_failures.bump();
            tracing::debug!(core = core.id, error = %err, "TLS handshake failed");
            return None;
        }
    }
    let identity = match tls.session().peer_certificates().and_then(|c| c.first()) {
        None => None,
        Some(cert) => match ClientIdentity::from_der(cert) {
            Ok(identity) => Some(Rc::new(identity)),
            Err(err) => {
                counters.tls_failures.bump();
                tracing::warn!(core = core.id, error = %err, "unreadable client certificate");
                return None;
            }
        },
    };
    counters.tls_handshakes.bump();
    if tls.session().handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        counters.tls_resumed.bump();
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
    let tcp = match monoio::time::timeout_at(monoio::time::Instant::from_std(deadline), connect)
        .await
    {
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
