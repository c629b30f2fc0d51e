//! The data plane of one core: the per-core context and the request loop of one client
//! connection (read head → route → forward → relay response), following DESIGN §2.
//!
//! Everything here runs on the core's own monoio reactor; the only shared data is the immutable
//! snapshot behind an `Arc` (read, never cloned per request).

pub mod accept;
pub mod core;
pub mod io;
pub mod request_id;

use self::core::LentSlot;
pub use self::core::{Core, CoreTls, Generation};
use crate::filter::connections::Admitted;
use std::pin::Pin;
use std::task::Poll;

use crate::access;
use crate::auth::{self, Outcome, Presented, Source};
use crate::config::MAX_HEADERS_CEILING;
use crate::filter::client_address::client_address;
use crate::filter::ProxyProtocol;
use crate::http::chunked::ChunkedScanner;
use crate::http::headers::{copy_fields, is_hop_by_hop, push_escaped};
use crate::http::normalize::normalize;
use crate::http::problem::{write_problem, write_problem_with_reason};
use crate::http::request::{self, HeadLimits, Request};
use crate::http::response::{self, Response};
use crate::http::{header_slots, BodyFraming};
use crate::limit::limiter::{Applied, Shown, Throttle};
use crate::limit::{FailureThrottle, KeyFacts, Verdict};
use crate::observe::access::{micros, reason_for_status, AccessRecord, Decision};
use crate::observe::trace::{self, TraceMode};
use crate::router::{ParamRange, PathPattern, RouteMatch, MAX_PATH_PARAMS};
use crate::runtime::deadline::{sleep_until, timeout_at};
use crate::snapshot::Upstream;
use crate::tls::certificate::ClientIdentity;
use crate::upstream::Acquire;
use io::{linger_close, ByteStream, IoFail, UpstreamStream};
use monoio::net::TcpStream;
use request_id::RequestId;
use std::cell::OnceCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes kept free at the end of a buffer before each read.
const READ_CHUNK: usize = 4 * 1024;
/// Larger reads while a body streams through.
const BODY_CHUNK: usize = 64 * 1024;
/// Body bytes up to this many, read together with the upstream's response head, are copied
/// behind the client's response head and sent in the same write.
const COALESCE_BODY: usize = 16 * 1024;
/// Buffer capacity a connection keeps between requests; what a large body grew beyond this is
/// given back, so idle keep-alive connections stay small.
const RETAINED_BUFFER: usize = 16 * 1024;

/// Longest a request waits for its Basic password check.
const PASSWORD_CHECK_WAIT: Duration = Duration::from_secs(10);

/// What to do with the client connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// The request facts the exchange needs once the head's borrow of the buffer has ended.
struct Prepared {
    head_len: usize,
    framing: BodyFraming,
    client_keep_alive: bool,
    client_minor: u8,
    expect_continue: bool,
    is_head: bool,
    idempotent: bool,
    upstream: usize,
    max_body: u64,
    request_id: RequestId,
    /// `RateLimit-*` fields for the response (a limit with `headers = true`).
    rate_limit: Option<Shown>,
}

/// A request refused before anything was sent upstream.
struct Reject {
    status: u16,
    /// Header lines of the refusal (`Allow` for 405, `WWW-Authenticate` for 401).
    headers: RejectHeaders,
    /// The reason code for the problem body (authentication and authorization refusals).
    reason: Option<&'static str>,
    /// The rule that refused (authorization).
    rule: Option<Box<str>>,
    request_id: RequestId,
    /// The head's length when the request has no body and the client keeps the connection, so
    /// the next request can follow the refusal; `None` means close.
    reusable_head_len: Option<usize>,
    /// The request was HEAD: the refusal carries no body.
    head_only: bool,
}

/// Header lines a refusal carries.
enum RejectHeaders {
    None,
    /// Lines made for this refusal (`Allow: …` for a 405, a scope challenge for a 403).
    Line(String),
    /// The route's `WWW-Authenticate` challenges.
    Challenge(Rc<[u8]>),
}

impl RejectHeaders {
    fn as_bytes(&self) -> &[u8] {
        match self {
            RejectHeaders::None => b"",
            RejectHeaders::Line(line) => line.as_bytes(),
            RejectHeaders::Challenge(lines) => lines,
        }
    }
}

/// The outcome of preparing a request head.
// The refusal carries its request id inline; boxing it would allocate on every 404.
#[allow(clippy::large_enum_variant)]
enum Prepare {
    Ready(Prepared),
    Refused(Reject),
    /// Authentication must wait (a JWKS refetch, a password check), then run again.
    Wait(auth::Wait),
    /// The rate-limit phase asked another core for a lease of this key: wait for the answer,
    /// then run again.
    LeaseWait(u64),
}

/// Which waits the current head already had (each phase waits at most once per head).
#[derive(Debug, Clone, Copy, Default)]
struct Waited {
    auth: bool,
    /// Lease waits so far (a request with several limits may need one per owner core).
    leases: u8,
}

/// Longest a request waits for a lease from the key's owner core.
const LEASE_WAIT: Duration = Duration::from_secs(1);
/// Lease waits one request may have.
const MAX_LEASE_WAITS: u8 = 3;

/// How the upstream's response body reaches the client.
struct ResponsePlan {
    head_len: usize,
    framing: BodyFraming,
    /// Chunked upstream body forwarded de-chunked (HTTP/1.0 client).
    dechunk: bool,
    client_keep_alive: bool,
    upstream_keep_alive: bool,
}

/// Counts one outstanding request on a target for least-outstanding balancing.
struct Outstanding {
    generation: Rc<Generation>,
    upstream: usize,
    target: usize,
}

impl Outstanding {
    fn begin(generation: &Rc<Generation>, upstream: usize, target: usize) -> Outstanding {
        generation.pools.borrow_mut().begin(upstream, target);
        Outstanding {
            generation: generation.clone(),
            upstream,
            target,
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.generation
            .pools
            .borrow_mut()
            .end(self.upstream, self.target);
    }
}

/// Failure while talking to the upstream, before the response reached the client.
enum UpstreamFail {
    /// Status for the client (502/503/504).
    Status(u16),
    /// A reused keep-alive connection was closed before any response byte: safe to resend.
    Stale,
    /// The client's body broke framing or limits: answer this status, blame no target.
    Client(u16),
    /// The client went away or misbehaved; just close.
    ClientGone,
}

/// What the request path knows about the client side of a connection.
struct ClientInfo {
    /// Index into the snapshot's listeners (stable across reloads).
    listener: usize,
    /// The client's address as text, formatted once per connection.
    peer_ip: IpText,
    /// The connection's client address: the PROXY protocol source, else the TCP peer. A
    /// request's client address may differ behind trusted proxies (`X-Forwarded-For`).
    peer: IpAddr,
    /// The negotiated TLS version (`TLSv1.3`, `TLSv1.2`) on a TLS connection; `None` on a
    /// plain one.
    tls_version: Option<&'static str>,
    /// The verified client certificate (mTLS), for the authentication phase.
    certificate: Option<Box<ClientCertificate>>,
}

/// A connection's verified client certificate.
struct ClientCertificate {
    identity: Rc<ClientIdentity>,
    /// The identity as upstream request fields, formatted on first use and then reused for
    /// every request of the connection.
    fields: OnceCell<Vec<u8>>,
}

impl ClientInfo {
    /// The `X-Client-Cert-*` field lines for the verified client certificate (empty without
    /// one).
    fn identity_fields(&self) -> &[u8] {
        match &self.certificate {
            None => &[],
            Some(certificate) => certificate
                .fields
                .get_or_init(|| client_cert_fields(&certificate.identity)),
        }
    }

    /// The connection arrived over TLS.
    fn tls(&self) -> bool {
        self.tls_version.is_some()
    }
}

/// One client connection over a plain or TLS stream.
struct Connection<C> {
    core: Rc<Core>,
    /// The snapshot (and upstream pools) the current request is served from; refreshed before
    /// each request, so a reload applies from the next request on.
    generation: Rc<Generation>,
    client: C,
    info: ClientInfo,
    inbuf: Vec<u8>,
    pos: usize,
    /// The access record and the output and upstream buffers, lent by the core while the
    /// connection is not idle.
    lent: LentSlot,
}

/// Serves one accepted client connection until it closes. The set-up — the PROXY protocol
/// header when the listener expects one (phase 1), the connection caps, the TLS handshake when
/// the listener terminates TLS — runs in a future of its own, boxed and freed once it is done;
/// the request loop then runs in the task's own state. That state is all an idle keep-alive
/// connection keeps, so nothing else lives in it.
pub fn serve_connection(
    core: Rc<Core>,
    listener: usize,
    tcp: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    core.active_connections
        .set(core.active_connections.get() + 1);
    let setup = Box::pin(accept_connection(core.clone(), listener, tcp, peer));
    serve_accepted(core, setup)
}

/// A connect slot of [`crate::upstream`]'s connect pacing, given back when dropped (also when
/// the connect's future is).
struct ConnectSlot<'a> {
    generation: &'a Generation,
    upstream: usize,
    target: usize,
}

impl Drop for ConnectSlot<'_> {
    fn drop(&mut self) {
        self.generation
            .pools
            .borrow_mut()
            .end_connect(self.upstream, self.target);
    }
}

/// A request's place in the queue of a target's connect pacing: ready once woken (a
/// connection came back or a connect slot freed). Leaving the queue unwoken (timed out, or
/// dropped) takes the place out; leaving after a wake-up it did not see passes the wake-up on.
struct PoolWait<'a> {
    generation: &'a Generation,
    upstream: usize,
    target: usize,
    ticket: Option<u64>,
}

impl std::future::Future for PoolWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut pools = self.generation.pools.borrow_mut();
        match self.ticket {
            None => {
                let ticket = pools.wait_for(self.upstream, self.target, cx.waker());
                drop(pools);
                self.ticket = Some(ticket);
                Poll::Pending
            }
            Some(ticket) if pools.is_waiting(self.upstream, self.target, ticket) => Poll::Pending,
            Some(_) => {
                drop(pools);
                self.ticket = None;
                Poll::Ready(())
            }
        }
    }
}

impl Drop for PoolWait<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            if let Ok(mut pools) = self.generation.pools.try_borrow_mut() {
                pools.leave(self.upstream, self.target, ticket, true);
            }
        }
    }
}

/// A connection past its set-up.
#[allow(clippy::large_enum_variant)] // the plain connection stays in the task's own state
enum Accepted {
    Plain {
        conn: Connection<TcpStream>,
        /// The connection's place under the listener's caps, held while it is open.
        _admitted: Admitted,
    },
    /// On a TLS listener: the handshake has not run yet.
    Tls(Box<TlsAccepted>),
}

/// What the TLS handshake and the TLS connection start from.
struct TlsAccepted {
    conn: Connection<TcpStream>,
    tls: CoreTls,
    _admitted: Admitted,
}

async fn serve_accepted(
    core: Rc<Core>,
    setup: Pin<Box<impl std::future::Future<Output = Option<Accepted>>>>,
) {
    // Bound once and served by reference: a connection moved into the request loop's future
    // would also keep the room of the value it was moved from.
    let mut accepted = setup.await;
    if let Some(Accepted::Plain { conn, .. }) = &mut accepted {
        conn.run().await;
    } else if let Some(tls) = tls_connection(&mut accepted) {
        tls.await;
    }
    drop(accepted);
    core.active_connections
        .set(core.active_connections.get() - 1);
}

/// The boxed future of an accepted TLS connection (boxed: its state is large, and the plain
/// path's task should not carry room for it). Not an `async fn`'s local: the taken value would
/// keep its room in the task for as long as the connection lasts.
fn tls_connection(
    accepted: &mut Option<Accepted>,
) -> Option<Pin<Box<impl std::future::Future<Output = ()>>>> {
    match accepted.take() {
        Some(Accepted::Tls(tls)) => Some(Box::pin(serve_tls(*tls))),
        _ => None,
    }
}

async fn accept_connection(
    core: Rc<Core>,
    listener: usize,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Accepted> {
    let generation = core.current();
    let settings = &generation.snapshot.listeners[listener];
    let mut client_ip = peer.ip();
    if settings.proxy_protocol != ProxyProtocol::Off {
        let deadline = Instant::now() + generation.snapshot.limits.head_timeout;
        match accept::read_proxy_header(&tcp, settings.proxy_protocol, deadline).await {
            Ok(source) => client_ip = source.map_or(client_ip, |s| s.ip()),
            Err(err) => {
                core.counters.proxy_refused.bump();
                if let Some(suppressed) = core.warnings.proxy_protocol.allow(Instant::now()) {
                    tracing::warn!(core = core.id, %peer, error = %err, suppressed, "connection closed");
                }
                return None;
            }
        }
    }
    let client_ip = client_ip.to_canonical();
    let admitted = match core.connections.admit(listener, client_ip, settings.caps) {
        Ok(admitted) => admitted,
        Err(cap) => {
            core.counters.over_cap.bump();
            if let Some(suppressed) = core.warnings.over_cap.allow(Instant::now()) {
                tracing::warn!(core = core.id, listener = %settings.name, client_ip = %client_ip, cap = ?cap, suppressed, "connection cap reached: connection closed");
            }
            return None;
        }
    };
    let info = ClientInfo {
        listener,
        peer_ip: IpText::new(client_ip),
        peer: client_ip,
        tls_version: None,
        certificate: None,
    };
    let tls = generation.server_tls[listener].clone();
    let conn = Connection::new(core, generation, tcp, info);
    Some(match tls {
        None => Accepted::Plain {
            conn,
            _admitted: admitted,
        },
        Some(tls) => Accepted::Tls(Box::new(TlsAccepted {
            conn,
            tls,
            _admitted: admitted,
        })),
    })
}

/// The TLS part of [`serve_connection`]: handshake, then the request loop over the session.
async fn serve_tls(accepted: TlsAccepted) {
    let TlsAccepted {
        conn:
            Connection {
                core,
                generation,
                client: tcp,
                info,
                ..
            },
        tls,
        _admitted,
    } = accepted;
    let handshake = accept::handshake(&core, tcp, tls.config, tls.handshake_timeout, info.listener);
    if let Some((stream, identity)) = handshake.await {
        let tls_version = match stream.session().protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => Some("TLS"),
        };
        let info = ClientInfo {
            tls_version,
            certificate: identity.map(|identity| {
                Box::new(ClientCertificate {
                    identity,
                    fields: OnceCell::new(),
                })
            }),
            ..info
        };
        let mut conn = Connection::new(core, generation, stream, info);
        conn.run().await;
    }
}

impl<C: ByteStream> Connection<C> {
    fn new(core: Rc<Core>, generation: Rc<Generation>, client: C, info: ClientInfo) -> Self {
        Connection {
            core,
            generation,
            client,
            info,
            // Buffers are taken from the core's pool when bytes arrive, given back when the
            // exchange ends: an idle connection holds none.
            inbuf: Vec::new(),
            pos: 0,
            lent: LentSlot::default(),
        }
    }

    /// The request loop: serves requests until the connection closes, then ends the stream's
    /// framing. Between requests the connection waits holding no buffer and no access record,
    /// in this future's small idle state; everything a request needs lives in a boxed future
    /// for as long as the request does.
    async fn run(&mut self) {
        let mut first_deadline =
            Some(Instant::now() + self.generation.snapshot.limits.head_timeout);
        loop {
            let core = &self.core;
            if self.pos >= self.inbuf.len() {
                // Nothing pipelined: wait for the next request without a buffer.
                core.buffers.give(&mut self.inbuf);
                self.pos = 0;
            } else if self.pos > 0 {
                self.inbuf.drain(..self.pos);
                self.pos = 0;
            }
            if self.inbuf.capacity() > RETAINED_BUFFER {
                self.inbuf.shrink_to(RETAINED_BUFFER);
            }
            if let Some(lent) = self.lent.get_mut() {
                core.buffers.give(&mut lent.out);
                core.buffers.give(&mut lent.ubuf);
            }
            if self.inbuf.capacity() == 0 {
                core.lent.give(&mut self.lent);
                let limits = &self.generation.snapshot.limits;
                let deadline =
                    first_deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
                let ready = self.client.wait_readable(deadline);
                let ready = if first_deadline.is_some() {
                    // A connection accepted just before a drain still gets its first request
                    // served.
                    matches!(ready.await, Ok(Ok(())))
                } else {
                    monoio::select! {
                        ready = ready => matches!(ready, Ok(Ok(()))),
                        _ = core.drain.wait() => false,
                    }
                };
                if !ready {
                    break;
                }
                self.inbuf = core.buffers.take();
            }
            self.core.lent.lend(&mut self.lent);
            let next = Box::pin(self.serve_next(first_deadline.take())).await;
            if std::mem::take(&mut self.lent.linger) {
                Box::pin(linger_close(&mut self.client, &mut self.inbuf)).await;
                break;
            }
            if next == Next::Close {
                break;
            }
        }
        Box::pin(self.client.finish()).await;
    }

    /// Reads the next request and answers it: refused, or forwarded and its response relayed.
    /// `head_deadline` is the first request's, which counts from the accept.
    async fn serve_next(&mut self, head_deadline: Option<Instant>) -> Next {
        let prepared = match self.read_request(head_deadline).await {
            Some(Ok(prepared)) => prepared,
            Some(Err(reject)) => {
                let next = self.reject(reject).await;
                self.finish_record();
                return next;
            }
            None => return Next::Close,
        };
        self.lent.record.decision = Some(Decision::Allow);
        let next = self.exchange(prepared).await;
        self.finish_record();
        next
    }

    /// Logs the request that just ended (access log) and clears its record.
    fn finish_record(&mut self) {
        let record = &mut self.lent.record;
        if record.status == 0 {
            // The client went away before any response reached it.
            record.status = 499;
            record.reason = record.reason.or(Some("client_closed"));
        }
        if record.listener.is_none() {
            // Refused before the phases ran (a bad head): the connection's facts.
            record.listener = Some(self.info.listener);
            record.client_ip = Some(self.info.peer);
        }
        record.tls_version = self.info.tls_version;
        self.core.log_access(record, &self.generation.snapshot);
    }

    /// Reads and prepares the next request head. `None` means close the connection quietly
    /// (or after an error response already written).
    async fn read_request(
        &mut self,
        head_deadline: Option<Instant>,
    ) -> Option<Result<Prepared, Reject>> {
        let core = self.core.clone();
        self.generation = core.current();
        let generation = self.generation.clone();
        let limits = &generation.snapshot.limits;
        let head_limits = HeadLimits {
            max_head_bytes: limits.max_head_bytes,
            max_uri_bytes: limits.max_uri_bytes,
        };
        let mut head_deadline = head_deadline;
        let mut waited = Waited::default();
        loop {
            let mut wait = None;
            let mut lease_wait = None;
            let mut refused = None;
            // No await while the header array is in scope: it would then live in this task's
            // state for as long as the connection does.
            if self.inbuf.len() > self.pos {
                let now = Instant::now();
                self.lent.record.started(now);
                if head_deadline.is_none() {
                    head_deadline = Some(now + limits.head_timeout);
                }
                if self.lent.out.capacity() == 0 {
                    self.lent.out = core.buffers.take();
                }
                let mut headers = header_slots::<MAX_HEADERS_CEILING>();
                let parsed = request::parse(
                    &self.inbuf[self.pos..],
                    &mut headers[..limits.max_headers],
                    head_limits,
                );
                match parsed {
                    Ok(Some(req)) => {
                        let lent = &mut *self.lent;
                        lent.record.bytes_in = req.head_len as u64;
                        match prepare(
                            &core,
                            &generation,
                            &self.info,
                            &req,
                            &mut lent.out,
                            &mut lent.record,
                            waited,
                        ) {
                            Prepare::Ready(prepared) => return Some(Ok(prepared)),
                            Prepare::Refused(reject) => return Some(Err(reject)),
                            Prepare::Wait(w) => wait = Some(w),
                            Prepare::LeaseWait(key) => lease_wait = Some(key),
                        }
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(core = core.id, error = %err, "refused request head");
                        self.lent.record.bytes_in = (self.inbuf.len() - self.pos) as u64;
                        refused = Some(err.status());
                    }
                }
            }
            if let Some(status) = refused {
                Box::pin(self.respond_error(status, RequestId::default())).await;
                self.finish_record();
                return None;
            }
            // The head's parse (and its header array) is gone here: the wait does not hold it.
            if let Some(wait) = wait {
                let limit = match wait {
                    auth::Wait::Keys { .. } => generation.snapshot.auth.jwks_wait,
                    auth::Wait::Password(_) => PASSWORD_CHECK_WAIT,
                };
                let deadline = Instant::now() + limit;
                while !wait.ready(&core.auth) && Instant::now() < deadline {
                    sleep_until(Instant::now() + Duration::from_millis(1)).await;
                }
                waited.auth = true;
                continue;
            }
            if let Some(key) = lease_wait {
                core.limits.wait_for_lease(key, LEASE_WAIT).await;
                waited.leases += 1;
                continue;
            }
            let waiting_idle = head_deadline.is_none();
            let deadline = head_deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
            // `run` gave the connection its read buffer before this request.
            let read = self.client.read_more(&mut self.inbuf, READ_CHUNK, deadline);
            let result = if waiting_idle {
                monoio::select! {
                    result = read => result,
                    _ = core.drain.wait() => return None,
                }
            } else {
                read.await
            };
            match result {
                Ok(_) => {}
                Err(IoFail::Timeout) if !waiting_idle && self.inbuf.len() > self.pos => {
                    self.lent.record.bytes_in = (self.inbuf.len() - self.pos) as u64;
                    Box::pin(self.respond_error(408, RequestId::default())).await;
                    self.finish_record();
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Answers a request refused before forwarding; keeps the connection when possible.
    async fn reject(&mut self, reject: Reject) -> Next {
        let record = &mut self.lent.record;
        record.status = reject.status;
        record.decision = Some(Decision::Deny);
        record.reason = reject.reason.or_else(|| reason_for_status(reject.status));
        if let Some(rule) = &reject.rule {
            record.rule.clear();
            record.rule.push_str(rule);
        }
        let head_len = reject.reusable_head_len;
        let close = head_len.is_none() || self.core.drain.is_draining();
        if let Some(len) = head_len {
            self.pos += len;
        }
        self.lent.out.clear();
        write_problem_with_reason(
            &mut self.lent.out,
            reject.status,
            reject.reason,
            reject.rule.as_deref(),
            close,
            reject.request_id.as_bytes(),
            reject.headers.as_bytes(),
        );
        if reject.head_only {
            // A response to HEAD has the fields of the GET response but no body.
            if let Some(end) = self.lent.out.windows(4).position(|w| w == b"\r\n\r\n") {
                self.lent.out.truncate(end + 4);
            }
        }
        let timeout = self.generation.snapshot.limits.body_timeout;
        if !self.send_out(timeout).await {
            return Next::Close;
        }
        if close {
            return Next::Close;
        }
        Next::KeepAlive
    }

    /// Writes a problem response; the connection then closes, lingering (see [`linger_close`])
    /// once the request's record is logged, so the record's duration ends with the response.
    async fn respond_error(&mut self, status: u16, request_id: RequestId) {
        let record = &mut self.lent.record;
        record.status = status;
        record.reason = reason_for_status(status);
        if status < 500 {
            // The gateway refused the request itself (a bad head or body).
            record.decision = Some(Decision::Deny);
        }
        self.lent.out.clear();
        write_problem(&mut self.lent.out, status, true, request_id.as_bytes(), b"");
        let timeout = self.generation.snapshot.limits.body_timeout;
        self.lent.linger = self.send_out(timeout).await;
    }

    /// Writes the output buffer to the client and counts its bytes in the access record;
    /// false when the client is gone.
    async fn send_out(&mut self, timeout: Duration) -> bool {
        let len = self.lent.out.len() as u64;
        if self
            .client
            .write_all(&mut self.lent.out, timeout)
            .await
            .is_err()
        {
            return false;
        }
        self.lent.record.bytes_out += len;
        true
    }

    /// Forwards one prepared request and relays the response.
    async fn exchange(&mut self, prepared: Prepared) -> Next {
        let core = self.core.clone();
        let generation = self.generation.clone();
        let snapshot = &generation.snapshot;
        let upstream = &snapshot.upstreams[prepared.upstream];
        let body_timeout = snapshot.limits.body_timeout;
        self.pos += prepared.head_len;

        // The part of the body already read travels with the head in one write.
        let mut remaining: u64 = 0;
        let mut scanner = ChunkedScanner::new();
        let mut body_seen: u64 = 0;
        let prefix_len = match prepared.framing {
            BodyFraming::None | BodyFraming::UntilClose => 0,
            BodyFraming::Length(n) => {
                let available = (self.inbuf.len() - self.pos) as u64;
                let take = available.min(n);
                remaining = n - take;
                take as usize
            }
            BodyFraming::Chunked => {
                let mut data = 0u64;
                match scanner.scan(&self.inbuf[self.pos..], |a, b| data += (b - a) as u64) {
                    Ok(consumed) => {
                        body_seen += data;
                        consumed
                    }
                    Err(err) => {
                        tracing::debug!(core = core.id, error = %err, "refused chunked body");
                        self.respond_error(400, prepared.request_id).await;
                        return Next::Close;
                    }
                }
            }
        };
        if prepared.max_body > 0 && body_seen > prepared.max_body {
            self.respond_error(413, prepared.request_id).await;
            return Next::Close;
        }
        self.lent
            .out
            .extend_from_slice(&self.inbuf[self.pos..self.pos + prefix_len]);
        self.pos += prefix_len;
        self.lent.record.bytes_in += prefix_len as u64;
        let body_buffered = match prepared.framing {
            BodyFraming::Chunked => scanner.is_done(),
            _ => remaining == 0,
        };

        let mut force_fresh = false;
        // The outstanding count leaves the loop with the connection and lasts through the body.
        let (mut up, target, plan, _outstanding) = loop {
            let (mut up, target, reused) =
                match self.open_upstream(&prepared, upstream, force_fresh).await {
                    Ok(opened) => opened,
                    Err(status) => {
                        self.respond_error(status, prepared.request_id).await;
                        return Next::Close;
                    }
                };
            let outstanding = Outstanding::begin(&generation, prepared.upstream, target);
            let sent = self
                .send_request(&prepared, &mut up, &mut scanner, remaining, body_seen)
                .await;
            let result = match sent {
                Ok(()) => self.read_response_head(&prepared, &mut up, upstream).await,
                Err(fail) => Err(fail),
            };
            match result {
                Ok(plan) => break (up, target, plan, outstanding),
                Err(UpstreamFail::Stale) if reused && body_buffered && !force_fresh => {
                    tracing::debug!(
                        core = core.id,
                        "stale pooled upstream connection, resending"
                    );
                    force_fresh = true;
                }
                Err(UpstreamFail::Stale) | Err(UpstreamFail::Status(_)) => {
                    let status = match result {
                        Err(UpstreamFail::Status(status)) => status,
                        _ => 502,
                    };
                    let now = Instant::now();
                    let ejected = generation.pools.borrow_mut().record_failure(
                        prepared.upstream,
                        target,
                        upstream,
                        now,
                    );
                    if let Some(suppressed) = core.warnings.upstream.allow(now) {
                        tracing::warn!(
                            core = core.id,
                            upstream = %upstream.name,
                            target = %upstream.targets[target],
                            status,
                            ejected,
                            suppressed,
                            "upstream failure"
                        );
                    }
                    self.respond_error(status, prepared.request_id).await;
                    return Next::Close;
                }
                Err(UpstreamFail::Client(status)) => {
                    self.respond_error(status, prepared.request_id).await;
                    return Next::Close;
                }
                Err(UpstreamFail::ClientGone) => return Next::Close,
            }
        };

        // The response head is in `out`; the body relay sends it with the first body bytes.
        let complete = match self.relay_response_body(&plan, &mut up, body_timeout).await {
            Ok(complete) => complete,
            Err(()) => return Next::Close,
        };
        generation
            .pools
            .borrow_mut()
            .record_success(prepared.upstream, target);
        if complete && plan.upstream_keep_alive && upstream.keepalive > 0 {
            generation.pools.borrow_mut().put_idle(
                prepared.upstream,
                target,
                upstream,
                up,
                Instant::now(),
            );
        }
        if plan.client_keep_alive && !core.drain.is_draining() {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Picks a target and gets a connection: pooled, or new (retrying an idempotent request
    /// once on another target when the connect fails).
    async fn open_upstream(
        &mut self,
        prepared: &Prepared,
        upstream: &Upstream,
        force_fresh: bool,
    ) -> Result<(UpstreamStream, usize, bool), u16> {
        let core = self.core.clone();
        let generation = self.generation.clone();
        let mut excluded = None;
        loop {
            let now = Instant::now();
            let picked =
                generation
                    .pools
                    .borrow_mut()
                    .pick(prepared.upstream, upstream, excluded, now);
            let Some(target) = picked else {
                return Err(if excluded.is_some() { 502 } else { 503 });
            };
            self.lent.record.upstream = Some(upstream.targets[target]);
            self.lent.record.upstream_connect_us = None;
            let connecting = Instant::now();
            // An idle connection, else a connect slot; while neither is free, wait for the
            // first of them (at most the connect timeout, then connect anyway). See "connect
            // pacing" in `crate::upstream`.
            let pace_until = connecting + upstream.connect_timeout;
            let mut paced = false;
            let slot = loop {
                let step = generation.pools.borrow_mut().acquire(
                    prepared.upstream,
                    target,
                    upstream,
                    force_fresh,
                    pace_until,
                );
                match step {
                    Acquire::Idle(stream) => {
                        let waited = if paced {
                            micros(connecting.elapsed())
                        } else {
                            0
                        };
                        self.lent.record.upstream_connect_us = Some(waited);
                        return Ok((stream, target, true));
                    }
                    Acquire::Connect { slot } => break slot,
                    Acquire::Wait => {}
                }
                // Woken or timed out: either way the loop looks again.
                let wait = PoolWait {
                    generation: &generation,
                    upstream: prepared.upstream,
                    target,
                    ticket: None,
                };
                let _ = timeout_at(pace_until, wait).await;
                paced = true;
            };
            let slot = slot.then(|| ConnectSlot {
                generation: &generation,
                upstream: prepared.upstream,
                target,
            });
            let result = accept::connect_upstream(&core, upstream, target).await;
            drop(slot);
            let status = match result {
                Ok(stream) => {
                    self.lent.record.upstream_connect_us = Some(micros(connecting.elapsed()));
                    return Ok((stream, target, false));
                }
                Err(status) => status,
            };
            generation
                .pools
                .borrow_mut()
                .record_failure(prepared.upstream, target, upstream, now);
            if prepared.idempotent && excluded.is_none() && upstream.targets.len() > 1 {
                excluded = Some(target);
                continue;
            }
            return Err(status);
        }
    }

    /// Sends the head (with the buffered body prefix, in `out`) and streams the rest of the
    /// request body from the client.
    async fn send_request(
        &mut self,
        prepared: &Prepared,
        up: &mut UpstreamStream,
        scanner: &mut ChunkedScanner,
        mut remaining: u64,
        mut body_seen: u64,
    ) -> Result<(), UpstreamFail> {
        let timeout = self.generation.snapshot.limits.body_timeout;
        if up.write_all(&mut self.lent.out, timeout).await.is_err() {
            return Err(UpstreamFail::Stale);
        }
        let chunked = prepared.framing == BodyFraming::Chunked;
        let mut done = if chunked {
            scanner.is_done()
        } else {
            remaining == 0
        };
        if done {
            return Ok(());
        }
        if prepared.expect_continue && prepared.client_minor == 1 {
            self.lent.out.clear();
            self.lent
                .out
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if !self.send_out(timeout).await {
                return Err(UpstreamFail::ClientGone);
            }
        }
        while !done {
            if self.pos >= self.inbuf.len() {
                self.inbuf.clear();
                self.pos = 0;
            }
            if self.pos == self.inbuf.len() {
                let deadline = Instant::now() + timeout;
                if self
                    .client
                    .read_more(&mut self.inbuf, BODY_CHUNK, deadline)
                    .await
                    .is_err()
                {
                    return Err(UpstreamFail::ClientGone);
                }
            }
            let start = self.pos;
            let take = if chunked {
                let mut data = 0u64;
                let consumed = scanner
                    .scan(&self.inbuf[start..], |a, b| data += (b - a) as u64)
                    .map_err(|_| UpstreamFail::Client(400))?;
                body_seen += data;
                if prepared.max_body > 0 && body_seen > prepared.max_body {
                    return Err(UpstreamFail::Client(413));
                }
                done = scanner.is_done();
                consumed
            } else {
                let take = ((self.inbuf.len() - start) as u64).min(remaining);
                remaining -= take;
                done = remaining == 0;
                take as usize
            };
            self.pos += take;
            self.lent.record.bytes_in += take as u64;
            if up
                .write_range(&mut self.inbuf, start..start + take, timeout)
                .await
                .is_err()
            {
                return Err(UpstreamFail::Status(502));
            }
        }
        Ok(())
    }

    /// Reads the upstream's final response head (relaying interim 1xx ones), builds the
    /// client's response head in `out` with any body bytes read along.
    async fn read_response_head(
        &mut self,
        prepared: &Prepared,
        up: &mut UpstreamStream,
        upstream: &Upstream,
    ) -> Result<ResponsePlan, UpstreamFail> {
        let core = self.core.clone();
        let limits = &self.generation.snapshot.limits;
        let max_head = limits.max_head_bytes;
        let max_headers = limits.max_headers;
        let body_timeout = limits.body_timeout;
        let sent = Instant::now();
        let deadline = sent + upstream.response_timeout;
        if self.lent.ubuf.capacity() == 0 {
            self.lent.ubuf = self.core.buffers.take();
        }
        self.lent.ubuf.clear();
        let mut received_any = false;
        self.lent.record.upstream_ttfb_us = None;
        loop {
            // (head length, relay it) of an interim response; no await while the header
            // array is in scope (see `read_request`).
            let mut interim = None;
            let lent = &mut *self.lent;
            if !lent.ubuf.is_empty() {
                let mut headers = header_slots::<MAX_HEADERS_CEILING>();
                let parsed = response::parse(
                    &lent.ubuf,
                    &mut headers[..max_headers],
                    max_head,
                    prepared.is_head,
                );
                match parsed {
                    Ok(Some(resp)) if resp.is_interim() => {
                        if resp.code == 101 {
                            return Err(UpstreamFail::Status(502));
                        }
                        interim = Some((resp.head_len, resp.code != 100));
                    }
                    Ok(Some(resp)) => {
                        lent.record.upstream_status = Some(resp.code);
                        lent.record.status = resp.code;
                        let draining = core.drain.is_draining();
                        return Ok(plan_response(
                            prepared,
                            &resp,
                            &lent.ubuf,
                            draining,
                            &mut lent.out,
                        ));
                    }
                    Ok(None) => {}
                    Err(err) => {
                        if let Some(suppressed) = core.warnings.upstream.allow(Instant::now()) {
                            tracing::warn!(core = core.id, upstream = %upstream.name, error = %err, suppressed, "bad upstream response head");
                        }
                        return Err(UpstreamFail::Status(502));
                    }
                }
            }
            if let Some((head_len, relay)) = interim {
                if relay && prepared.client_minor == 1 {
                    let lent = &mut *self.lent;
                    lent.out.clear();
                    lent.out.extend_from_slice(&lent.ubuf[..head_len]);
                    if !self.send_out(body_timeout).await {
                        return Err(UpstreamFail::ClientGone);
                    }
                }
                self.lent.ubuf.drain(..head_len);
                continue;
            }
            match up
                .read_more(&mut self.lent.ubuf, READ_CHUNK, deadline)
                .await
            {
                Ok(_) => {
                    if !received_any {
                        self.lent.record.upstream_ttfb_us = Some(micros(sent.elapsed()));
                    }
                    received_any = true;
                }
                Err(IoFail::Timeout) => return Err(UpstreamFail::Status(504)),
                Err(_) if !received_any => return Err(UpstreamFail::Stale),
                Err(_) => return Err(UpstreamFail::Status(502)),
            }
        }
    }

    /// Sends the response head (in `out`) and body: first what was read with the head (already
    /// after the head in `ubuf`), then the rest as it arrives. Body bytes that came with the head
    /// go out in the head's write when they are few (up to [`COALESCE_BODY`]): one send instead
    /// of two, which on a small response is most of the kernel's work. Returns whether the
    /// upstream connection ended exactly at the end of the response (and so may be reused).
    async fn relay_response_body(
        &mut self,
        plan: &ResponsePlan,
        up: &mut UpstreamStream,
        timeout: Duration,
    ) -> Result<bool, ()> {
        let mut scanner = ChunkedScanner::new();
        let mut remaining = match plan.framing {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        let mut start = plan.head_len;
        let mut head_pending = true;
        loop {
            let available = self.lent.ubuf.len() - start;
            let (mut take, done) = match plan.framing {
                BodyFraming::None => (0, true),
                BodyFraming::Length(_) => {
                    let take = (available as u64).min(remaining);
                    remaining -= take;
                    (take as usize, remaining == 0)
                }
                BodyFraming::UntilClose => (available, false),
                BodyFraming::Chunked => {
                    if plan.dechunk {
                        let lent = &mut *self.lent;
                        let ubuf = &lent.ubuf;
                        let out = &mut lent.out;
                        if !std::mem::take(&mut head_pending) {
                            out.clear();
                        }
                        let consumed = scanner
                            .scan(&ubuf[start..], |a, b| {
                                out.extend_from_slice(&ubuf[start + a..start + b])
                            })
                            .map_err(|_| ())?;
                        if !self.send_out(timeout).await {
                            return Err(());
                        }
                        start += consumed;
                        if scanner.is_done() {
                            return Ok(start == self.lent.ubuf.len());
                        }
                        self.refill_upstream(up, timeout).await.map_err(|_| ())?;
                        start = 0;
                        continue;
                    }
                    let consumed = scanner
                        .scan(&self.lent.ubuf[start..], |_, _| {})
                        .map_err(|_| ())?;
                    (consumed, scanner.is_done())
                }
            };
            if std::mem::take(&mut head_pending) {
                let lent = &mut *self.lent;
                let coalesced = if take <= COALESCE_BODY { take } else { 0 };
                lent.out
                    .extend_from_slice(&lent.ubuf[start..start + coalesced]);
                if !self.send_out(timeout).await {
                    return Err(());
                }
                start += coalesced;
                take -= coalesced;
            }
            if take > 0
                && self
                    .client
                    .write_range(&mut self.lent.ubuf, start..start + take, timeout)
                    .await
                    .is_err()
            {
                return Err(());
            }
            self.lent.record.bytes_out += take as u64;
            start += take;
            if done {
                return Ok(start == self.lent.ubuf.len());
            }
            match self.refill_upstream(up, timeout).await {
                Ok(()) => start = 0,
                Err(IoFail::Closed) if plan.framing == BodyFraming::UntilClose => return Ok(false),
                Err(_) => return Err(()),
            }
        }
    }

    /// Empties `ubuf` and reads the next piece of the response body into it.
    async fn refill_upstream(
        &mut self,
        up: &mut UpstreamStream,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        self.lent.ubuf.clear();
        up.read_more(&mut self.lent.ubuf, BODY_CHUNK, Instant::now() + timeout)
            .await
            .map(|_| ())
    }
}

/// Builds the client's response head into `out` for a final upstream response.
fn plan_response(
    prepared: &Prepared,
    resp: &Response<'_>,
    ubuf: &[u8],
    draining: bool,
    out: &mut Vec<u8>,
) -> ResponsePlan {
    let chunked = resp.framing == BodyFraming::Chunked;
    let dechunk = chunked && prepared.client_minor == 0;
    let client_keep_alive = prepared.client_keep_alive
        && resp.framing != BodyFraming::UntilClose
        && !dechunk
        && !draining;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status_code(out, resp.code);
    out.push(b' ');
    out.extend_from_slice(reason_of(ubuf, resp.head_len).as_bytes());
    out.extend_from_slice(b"\r\n");
    copy_fields(out, &ubuf[..resp.head_len], resp.headers, |name| {
        is_hop_by_hop(name) || nominated(&resp.connection, name)
    });
    if chunked && !dechunk {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !resp.has_request_id {
        push_header(out, b"X-Request-Id", prepared.request_id.as_bytes());
    }
    if let Some(shown) = prepared.rate_limit {
        let _ = write!(out, "{}", RateLimitFields(shown));
    }
    if !client_keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if prepared.client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ResponsePlan {
        head_len: resp.head_len,
        framing: resp.framing,
        dechunk,
        client_keep_alive,
        upstream_keep_alive: resp.upstream_keep_alive(),
    }
}

/// The request path of one head, in DESIGN phase order: route, filter, authenticate, then the
/// upstream request head (identity in, credentials and spoofed identity fields out) into
/// `out`. `waited`: authentication already waited once for this head. Each phase notes what it
/// learned in the access `record`.
#[allow(clippy::too_many_arguments)]
fn prepare(
    core: &Core,
    generation: &Generation,
    client: &ClientInfo,
    req: &Request<'_>,
    out: &mut Vec<u8>,
    record: &mut AccessRecord,
    waited: Waited,
) -> Prepare {
    let snapshot = &generation.snapshot;
    let router = &snapshot.listeners[client.listener].router;
    let mut request_id = RequestId::default();
    match req.request_id {
        Some(id) => request_id.set(id),
        None => core.request_ids.next(&mut request_id),
    }
    record.clear_phases();
    record.request_id = request_id;
    record.listener = Some(client.listener);
    record.set_target(req.method, req.path());
    let client_trace = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("traceparent"))
        .map(|h| h.value);
    record
        .traceparent
        .extend_from_slice(client_trace.unwrap_or(b""));
    let reusable_head_len =
        (req.framing == BodyFraming::None && req.client_keep_alive()).then_some(req.head_len);
    let reject = |status, headers, reason| {
        Prepare::Refused(Reject {
            status,
            headers,
            reason,
            rule: None,
            request_id,
            reusable_head_len,
            head_only: req.is_head(),
        })
    };

    // 1. The request's client address (behind trusted proxies, from `X-Forwarded-For`), and
    // the listener's IP lists.
    let listener = &snapshot.listeners[client.listener];
    let client_ip = if listener.trusted_proxies.is_empty() {
        client.peer
    } else {
        let forwarded = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value);
        client_address(client.peer, forwarded, &listener.trusted_proxies).to_canonical()
    };
    record.client_ip = Some(client_ip);
    if !listener.ip.is_empty() && !listener.ip.admits(client_ip) {
        core.counters.ip_denied.bump();
        return reject(403, RejectHeaders::None, Some("ip_denied"));
    }

    // 3. Route, on the normalized path (the one the upstream will receive).
    let mut path_buffers = core.path_buffers.borrow_mut();
    let (normal, working) = &mut *path_buffers;
    let normalized = normalize(
        req.path(),
        listener.escaped_slashes,
        listener.merge_slashes,
        normal,
        working,
    );
    let path: &str = match normalized {
        Ok(false) => req.path(),
        Ok(true) => match std::str::from_utf8(normal) {
            Ok(path) => {
                tracing::debug!(
                    core = core.id,
                    original = req.path(),
                    normalized = path,
                    "path normalized"
                );
                path
            }
            Err(_) => return reject(400, RejectHeaders::None, None),
        },
        Err(err) => {
            tracing::debug!(core = core.id, error = %err, "refused request path");
            return reject(400, RejectHeaders::None, None);
        }
    };
    let query = req.target.split_once('?').map(|(_, q)| q);
    let route_index = match router.lookup(req.host, path, req.method) {
        RouteMatch::Found(index) => index,
        RouteMatch::MethodNotAllowed => {
            let allow = format!(
                "Allow: {}\r\n",
                router.allowed_methods(req.host, path).join(", ")
            );
            return reject(405, RejectHeaders::Line(allow), None);
        }
        RouteMatch::NotFound => return reject(404, RejectHeaders::None, None),
    };
    let route = &snapshot.routes[route_index];
    record.route = Some(route_index);
    let mut params = [(0, 0); MAX_PATH_PARAMS];
    let matched_len = route
        .pattern
        .as_ref()
        .and_then(|pattern| pattern.capture(path, &mut params));

    // 4. Filter: the API's and route's IP lists and request filters, then the body limit.
    if route.ip.iter().any(|rules| !rules.admits(client_ip)) {
        core.counters.ip_denied.bump();
        return reject(403, RejectHeaders::None, Some("ip_denied"));
    }
    if !route.filters.is_empty() {
        let mut scratch = core.filter_scratch.borrow_mut();
        if let Some(blocked) = route
            .filters
            .iter()
            .find_map(|f| f.check(req, &mut scratch))
        {
            core.counters.filtered.bump();
            tracing::info!(core = core.id, rule = blocked.rule(), route = %route.id, client_ip = %client_ip, "request blocked by filter");
            return Prepare::Refused(Reject {
                status: 403,
                headers: RejectHeaders::None,
                reason: Some("blocked_by_filter"),
                rule: Some(blocked.rule().into()),
                request_id,
                reusable_head_len,
                head_only: req.is_head(),
            });
        }
    }
    if let BodyFraming::Length(n) = req.framing {
        if route.max_body_bytes > 0 && n > route.max_body_bytes {
            return reject(413, RejectHeaders::None, None);
        }
    }

    // 5. Authenticate (after the failed-authentication throttle: a client address with too
    // many failures gets no credential work).
    let throttle = snapshot.failed_auth.filter(|_| route.auth.is_some());
    let waited_enough = waited.leases >= MAX_LEASE_WAITS;
    if let Some(throttle) = throttle {
        let key = FailureThrottle::key(client_ip);
        match core.limits.throttle(key, throttle.spec, waited_enough) {
            Throttle::Pass => {}
            Throttle::Refuse(retry) => {
                let line = format!("Retry-After: {retry}\r\n");
                return reject(429, RejectHeaders::Line(line), Some("too_many_failures"));
            }
            Throttle::Wait(key) => return Prepare::LeaseWait(key),
            Throttle::Unavailable => {
                let line = "Retry-After: 1\r\n".to_string();
                return reject(503, RejectHeaders::Line(line), Some("limit_unavailable"));
            }
        }
    }
    let identity = match &route.auth {
        None => None,
        Some(route_auth) => {
            let presented = Presented {
                headers: req.headers,
                query: req.target.split_once('?').map(|(_, q)| q),
                certificate: client.certificate.as_ref().map(|c| &*c.identity),
            };
            let mut cache = generation.token_caches[route_auth.cache].borrow_mut();
            let outcome = auth::authenticate(
                &core.auth,
                &snapshot.auth,
                route_auth,
                &mut cache,
                &presented,
            );
            match outcome {
                Outcome::Pass(identity, source) => Some((identity, source)),
                Outcome::Wait(wait) if !waited.auth => return Prepare::Wait(wait),
                Outcome::Wait(wait) => {
                    let reason = match wait {
                        auth::Wait::Keys { .. } => auth::Reason::UnknownKey,
                        auth::Wait::Password(_) => auth::Reason::Busy,
                    };
                    return refuse_auth(reject, route_auth, reason);
                }
                Outcome::Refuse(reason) => {
                    if let Some(throttle) = throttle {
                        if reason.status() == 401 && reason != auth::Reason::MissingCredential {
                            core.limits
                                .record_failure(FailureThrottle::key(client_ip), throttle.spec);
                        }
                    }
                    return refuse_auth(reject, route_auth, reason);
                }
            }
        }
    };

    if let Some((identity, _)) = &identity {
        record.identity = Some(identity.clone());
    }

    // 6. Authorize.
    if let (Some((identity, _)), Some(policy)) = (&identity, &route.access) {
        let path_params = (route.pattern.as_ref(), path, &params);
        if let Some(refusal) = authorize(
            core,
            snapshot,
            policy,
            identity,
            client_ip,
            req,
            path_params,
            record,
        ) {
            return Prepare::Refused(Reject {
                request_id,
                reusable_head_len,
                head_only: req.is_head(),
                ..refusal
            });
        }
    }

    // 7. Rate limit: the route's and API's limits, and those of the consumer's plan.
    let mut rate_limit = None;
    let plan_limits = identity.as_ref().map_or(&[][..], |(identity, _)| {
        plan_limits(core, snapshot, identity, &route.api)
    });
    if !route.limits.is_empty() || !plan_limits.is_empty() {
        let facts = KeyFacts {
            consumer: identity.as_ref().map(|(i, _)| &*i.consumer.id),
            credential: identity.as_ref().map(|(i, _)| &*i.credential_id),
            client_ip,
            route: &route.id,
            api: &route.api,
            headers: req.headers,
        };
        let unix = auth::unix_now();
        let applied = route
            .limits
            .iter()
            .chain(plan_limits)
            .map(|rule| Applied::new(rule, &facts, unix));
        match core.limits.check(applied, &facts, unix, waited_enough) {
            Verdict::Allow(shown) => rate_limit = shown,
            Verdict::Wait(key) => return Prepare::LeaseWait(key),
            Verdict::Deny {
                quota,
                retry_after,
                shown,
            } => {
                let lines = format!("Retry-After: {retry_after}\r\n{}", RateLimitFields(shown));
                let reason = if quota {
                    "quota_exceeded"
                } else {
                    "rate_limited"
                };
                return reject(429, RejectHeaders::Line(lines), Some(reason));
            }
            Verdict::Unavailable => {
                let line = "Retry-After: 1\r\n".to_string();
                return reject(503, RejectHeaders::Line(line), Some("limit_unavailable"));
            }
        }
    }

    // 8. Transform the request: the upstream head. Trace context: the upstream's `traceparent`
    // continues the client's valid one or starts a trace (and a `tracestate` without a valid
    // parent is dropped); in `forward` mode the client's fields pass through.
    let trace = match snapshot.trace_context {
        TraceMode::Forward => None,
        TraceMode::Start => {
            let incoming = client_trace.and_then(trace::parse);
            let traceparent = core.trace_ids.upstream(incoming);
            record.traceparent.clear();
            record.traceparent.extend_from_slice(&traceparent);
            Some((traceparent, incoming.is_none()))
        }
    };
    let strip_credential = route.auth.as_ref().is_some_and(|a| !a.forward_credential);
    let auth_config = &snapshot.auth;
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    let query_key = match (&identity, &route.auth) {
        (Some((_, Source::Query)), Some(a)) if strip_credential => a.api_key_query.as_deref(),
        _ => None,
    };
    let strip_len = route
        .strip_prefix
        .then(|| matched_len.unwrap_or_else(|| route.key.path.trim_end_matches('/').len()));
    push_target(out, path, query, strip_len, query_key);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    copy_fields(out, req.head, req.headers, |name| {
        is_hop_by_hop(name)
            || is_replaced_request_header(name)
            || nominated(&req.connection, name)
            || auth_config
                .identity_fields
                .iter()
                .any(|f| f.eq_ignore_ascii_case(name))
            || (strip_credential
                && (name.eq_ignore_ascii_case(b"authorization")
                    || name.eq_ignore_ascii_case(&auth_config.api_key_header)))
            || trace.is_some_and(|(_, orphaned)| {
                name.eq_ignore_ascii_case(b"traceparent")
                    || (orphaned && name.eq_ignore_ascii_case(b"tracestate"))
            })
    });
    let upstream = &snapshot.upstreams[route.upstream];
    if req.host.is_empty() {
        let _ = write!(out, "Host: {}\r\n", upstream.targets[0]);
    } else if req.host_from_target {
        push_header(out, b"Host", req.host);
    }
    if req.framing == BodyFraming::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if client_ip == client.peer {
        push_header(out, b"X-Forwarded-For", client.peer_ip.as_bytes());
    } else {
        push_header(out, b"X-Forwarded-For", IpText::new(client_ip).as_bytes());
    }
    out.extend_from_slice(if client.tls() {
        b"X-Forwarded-Proto: https\r\n"
    } else {
        b"X-Forwarded-Proto: http\r\n"
    });
    if route.client_cert_headers {
        out.extend_from_slice(client.identity_fields());
    }
    if let Some((identity, _)) = &identity {
        out.extend_from_slice(&identity.upstream_fields);
    }
    if !req.host.is_empty() {
        push_header(out, b"X-Forwarded-Host", req.host);
    }
    push_header(out, b"X-Request-Id", request_id.as_bytes());
    if let Some((traceparent, _)) = &trace {
        push_header(out, b"traceparent", traceparent);
    }
    if upstream.keepalive == 0 {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    Prepare::Ready(Prepared {
        head_len: req.head_len,
        framing: req.framing,
        client_keep_alive: req.client_keep_alive(),
        client_minor: req.minor_version,
        expect_continue: req.expect_continue,
        is_head: req.is_head(),
        idempotent: req.is_idempotent(),
        upstream: route.upstream,
        max_body: route.max_body_bytes,
        request_id,
        rate_limit,
    })
}

/// The limits of the plan the consumer's subscription to `api` names (none without one).
fn plan_limits<'s>(
    core: &Core,
    snapshot: &'s crate::snapshot::Snapshot,
    identity: &auth::Identity,
    api: &str,
) -> &'s [crate::limit::LimitRule] {
    if snapshot.plans.iter().all(|p| p.limits.is_empty()) {
        return &[];
    }
    let state = core.auth.state();
    let mut scratch = core.access_scratch.borrow_mut();
    let plan = state
        .credentials
        .subscription(&identity.consumer.id, api, &mut scratch)
        .and_then(|s| s.plan.as_deref())
        .and_then(|name| snapshot.plans.iter().find(|p| *p.name == *name));
    plan.map_or(&[], |p| &p.limits)
}

/// The `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` lines of a limited
/// response (refused or allowed).
struct RateLimitFields(Shown);

impl std::fmt::Display for RateLimitFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0;
        write!(
            f,
            "RateLimit-Limit: {}\r\nRateLimit-Remaining: {}\r\nRateLimit-Reset: {}\r\n",
            shown.limit, shown.remaining, shown.reset
        )
    }
}

/// The access decision for an authenticated request; a refusal (403) when denied. A shadow
/// rule's would-be denial is logged and counted, never enforced.
#[allow(clippy::too_many_arguments)]
fn authorize(
    core: &Core,
    snapshot: &crate::snapshot::Snapshot,
    policy: &access::RoutePolicy,
    identity: &auth::Identity,
    client_ip: IpAddr,
    req: &Request<'_>,
    (pattern, path, ranges): (Option<&PathPattern>, &str, &[ParamRange; MAX_PATH_PARAMS]),
    record: &mut AccessRecord,
) -> Option<Reject> {
    let api = &snapshot.apis[policy.api];
    let state = core.auth.state();
    let mut path_params = [("", ""); MAX_PATH_PARAMS];
    let count = pattern.map_or(0, |p| p.names.len());
    if let Some(pattern) = pattern {
        for (i, name) in pattern.names.iter().enumerate() {
            let (start, end) = ranges[i];
            path_params[i] = (name, path.get(start as usize..end as usize).unwrap_or(""));
        }
    }
    let request = access::Request {
        method: req.method,
        headers: req.headers,
        client_ip,
        path_params: &path_params[..count],
        now: auth::unix_now(),
    };
    let mut scratch = core.access_scratch.borrow_mut();
    let decision = access::decide(
        api,
        policy,
        identity,
        &state.credentials,
        &request,
        &mut scratch,
    );
    let counters = &core.access;
    match decision {
        access::Decision::Allow { shadow_rule } => {
            counters.allowed.set(counters.allowed.get() + 1);
            if let Some(rule) = shadow_rule {
                counters
                    .shadow_denials
                    .set(counters.shadow_denials.get() + 1);
                record.shadow_rule.push_str(rule);
                tracing::info!(core = core.id, rule, api = %api.name, consumer = %identity.consumer.id, "shadow rule would deny");
            }
            None
        }
        access::Decision::Deny {
            reason,
            rule,
            scopes,
        } => {
            counters.denied.set(counters.denied.get() + 1);
            let headers = if reason == access::Reason::InsufficientScope {
                let wanted: Vec<&str> = scopes.iter().map(|s| &**s).collect();
                RejectHeaders::Line(format!(
                    "WWW-Authenticate: Bearer error=\"insufficient_scope\", scope=\"{}\"\r\n",
                    wanted.join(" ")
                ))
            } else {
                RejectHeaders::None
            };
            Some(Reject {
                status: 403,
                headers,
                reason: Some(reason.code()),
                rule: rule.map(Into::into),
                request_id: RequestId::default(),
                reusable_head_len: None,
                head_only: false,
            })
        }
    }
}

/// A 401 (or 503) for an authentication refusal, with the route's challenges.
fn refuse_auth(
    reject: impl FnOnce(u16, RejectHeaders, Option<&'static str>) -> Prepare,
    route: &auth::RouteAuth,
    reason: auth::Reason,
) -> Prepare {
    let status = reason.status();
    let headers = match (status, reason) {
        (401, auth::Reason::MissingCredential) => {
            RejectHeaders::Challenge(Rc::from(&route.challenge_missing[..]))
        }
        (401, _) => RejectHeaders::Challenge(Rc::from(&route.challenge_invalid[..])),
        _ => RejectHeaders::Line("Retry-After: 1\r\n".into()),
    };
    reject(status, headers, Some(reason.code()))
}

/// Writes the request target for the upstream: the normalized path with its first
/// `strip_len` bytes (the matched prefix) removed when the route strips it, then the query as
/// the client sent it, without the parameter `drop_param` (an API key).
fn push_target(
    out: &mut Vec<u8>,
    path: &str,
    query: Option<&str>,
    strip_len: Option<usize>,
    drop_param: Option<&str>,
) {
    let path = if let Some(strip_len) = strip_len {
        let rest = &path[strip_len.min(path.len())..];
        if !rest.starts_with('/') {
            out.push(b'/');
        }
        rest
    } else {
        path
    };
    out.extend_from_slice(path.as_bytes());
    let Some(query) = query else {
        return;
    };
    let Some(param) = drop_param else {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
        return;
    };
    let mut first = true;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pair.split_once('=').map_or(pair, |(k, _)| k) == param {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        first = false;
        out.extend_from_slice(pair.as_bytes());
    }
}

/// Request fields the gateway sets itself (client values are dropped, never trusted), including
/// every `X-Client-Cert-*` field whether or not the route forwards a client certificate.
fn is_replaced_request_header(name: &[u8]) -> bool {
    const CLIENT_CERT_PREFIX: &[u8] = b"x-client-cert-";
    [
        &b"x-forwarded-for"[..],
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"expect",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
        || (name.len() > CLIENT_CERT_PREFIX.len()
            && name[..CLIENT_CERT_PREFIX.len()].eq_ignore_ascii_case(CLIENT_CERT_PREFIX))
}

/// The verified client certificate's identity as request field lines. Values are
/// percent-encoded outside visible ASCII (and `%`, `,` inside SAN entries), so a certificate
/// cannot inject fields.
fn client_cert_fields(identity: &ClientIdentity) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    push_header(
        &mut out,
        b"X-Client-Cert-Fingerprint",
        identity.fingerprint_sha256.as_bytes(),
    );
    if let Some(cn) = &identity.subject_cn {
        out.extend_from_slice(b"X-Client-Cert-Subject-CN: ");
        push_escaped(&mut out, cn.as_bytes(), b"%");
        out.extend_from_slice(b"\r\n");
    }
    if !identity.sans.is_empty() {
        out.extend_from_slice(b"X-Client-Cert-SAN: ");
        for (i, san) in identity.sans.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_escaped(&mut out, san.as_bytes(), b"%,");
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A field named in `Connection` is dropped, except those that frame or address the message:
/// letting a client nominate them would change how the upstream reads the stream.
fn nominated(connection: &crate::http::headers::ConnectionOptions<'_>, name: &[u8]) -> bool {
    connection.any()
        && !name.eq_ignore_ascii_case(b"content-length")
        && !name.eq_ignore_ascii_case(b"host")
        && connection.nominates(name)
}

/// An IP address as text, held inline.
struct IpText {
    bytes: [u8; IpText::MAX],
    len: u8,
}

impl IpText {
    /// The longest address text (an IPv6 address with an embedded IPv4 one).
    const MAX: usize = 45;

    fn new(ip: IpAddr) -> IpText {
        let mut bytes = [0u8; IpText::MAX];
        let len = {
            let mut cursor = &mut bytes[..];
            let _ = write!(cursor, "{ip}");
            IpText::MAX - cursor.len()
        };
        IpText {
            bytes,
            len: len as u8,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Appends a three-digit status code (100–999, checked by the response parser).
fn push_status_code(out: &mut Vec<u8>, code: u16) {
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase of the status line at the start of `buf`.
fn reason_of(buf: &[u8], head_len: usize) -> &str {
    let line_end = buf[..head_len]
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(0);
    let line = &buf[..line_end];
    // "HTTP/1.1 200 OK": the reason starts after the second space.
    let reason = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or(b"");
    std::str::from_utf8(reason).unwrap_or("")
}
