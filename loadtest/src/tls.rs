//! TLS for `https` targets with rustls (ring provider): the client configuration from PEM
//! files (CA bundle, optional client certificate and key for mTLS, session resumption on or
//! off), a blocking handshake used to check the target before the run, and a TLS stream over a
//! monoio TCP stream that moves owned buffers between rustls and the socket.
//!
//! One configuration is shared by every connection of every thread, and with it one session
//! store: a new connection, also one opened after a `Connection: close` response, resumes with
//! a ticket (or TLS 1.2 session) an earlier connection received, unless resumption is off.

use crate::error::Error;
use crate::transport::IoFail;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, NamedGroup, ProtocolVersion, RootCertStore,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Ciphertext read size.
const TLS_READ: usize = 32 * 1024;
/// Plaintext staging size.
const PLAIN_CHUNK: usize = 16 * 1024;

/// Builds the client configuration: trust only the CAs in `ca`; present `cert`/`key` when
/// given; resume sessions as `resumption` says (see [`resumption`]).
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    resumption: Resumption,
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    let certs = read_certs("CA bundle (--ca)", ca)?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| Error::file("CA bundle (--ca)", ca, err))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::Tls(err.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("client certificate (--cert)", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|err| Error::file("client key (--key)", key, pem_reason(err)))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| Error::Tls(format!("client certificate and key: {err}")))?
        }
    };
    config.resumption = resumption;
    Ok(Arc::new(config))
}

/// Session resumption for a run with `connections` connections: off
/// (`Resumption::disabled()`, every handshake a full one), or one [`SessionStore`] shared by
/// all of them that keeps `2 × connections` TLS 1.3 tickets (at least 8).
pub fn resumption(resume: bool, connections: usize) -> Resumption {
    if resume {
        Resumption::store(Arc::new(SessionStore::new((2 * connections).max(8))))
    } else {
        Resumption::disabled()
    }
}

/// Client sessions by server name: the key-exchange hint, the last TLS 1.2 session and up to
/// `tickets` TLS 1.3 tickets (single-use; the newest is used first, the oldest dropped when
/// full).
///
/// rustls' own `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server. That
/// suits one client, not a load generator: when dozens of connections reconnect in the same
/// event-loop turn (`Connection: close` at saturation), all but 8 would find no ticket and do
/// a full handshake although every earlier connection brought back fresh tickets. Keeping two
/// per connection covers every connection reconnecting at once.
pub struct SessionStore {
    tickets: usize,
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
}

#[derive(Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl SessionStore {
    /// A store that keeps up to `tickets` TLS 1.3 tickets per server (at least one).
    pub fn new(tickets: usize) -> SessionStore {
        SessionStore {
            tickets: tickets.max(1),
            servers: Mutex::new(HashMap::new()),
        }
    }

    /// TLS 1.3 tickets held for `name`.
    pub fn tickets(&self, name: &ServerName<'_>) -> usize {
        self.with(|servers| servers.get(name).map_or(0, |s| s.tls13.len()))
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ServerName<'static>, ServerSessions>) -> T) -> T {
        let mut servers = self
            .servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut servers)
    }
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("tickets", &self.tickets)
            .finish_non_exhaustive()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(|servers| servers.entry(name).or_default().kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|servers| servers.get(name).and_then(|s| s.kx_hint))
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(|servers| servers.entry(name).or_default().tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(|servers| servers.get(name).and_then(|s| s.tls12.clone()))
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(|servers| {
            if let Some(s) = servers.get_mut(name) {
                s.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(|servers| {
            let tickets = &mut servers.entry(name).or_default().tls13;
            if tickets.len() >= self.tickets {
                tickets.pop_front();
            }
            tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(|servers| servers.get_mut(name).and_then(|s| s.tls13.pop_back()))
    }
}

/// What a handshake negotiated, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Negotiated {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// The cipher suite, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The key-exchange group, e.g. "X25519".
    pub group: String,
}

impl Negotiated {
    /// The parameters of a connection whose handshake is complete.
    pub fn of(conn: &ClientConnection) -> Negotiated {
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".to_string(), |s| format!("{:?}", s.suite()));
        let group = conn
            .negotiated_key_exchange_group()
            .map_or_else(|| "unknown".to_string(), |g| format!("{:?}", g.name()));
        Negotiated {
            version,
            cipher,
            group,
        }
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| Error::file(what, path, pem_reason(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Error::file(what, path, pem_reason(err)))?;
    if certs.is_empty() {
        return Err(Error::file(what, path, "no PEM certificates"));
    }
    Ok(certs)
}

fn pem_reason(err: rustls::pki_types::pem::Error) -> String {
    match err {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM items found".into(),
        other => format!("{other:?}"),
    }
}

/// The name to verify the server certificate against (and send as SNI).
pub fn server_name(name: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(name.to_string()).map_err(|_| Error::Option {
        option: "server name",
        value: name.to_string(),
        reason: "not a DNS name or IP address".into(),
    })
}

/// Completes a TLS handshake over a connected blocking socket (whose read and write
/// timeouts bound it), to report a bad CA, name or client certificate before the run starts.
pub fn handshake_blocking(
    tcp: std::net::TcpStream,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> Result<rustls::StreamOwned<ClientConnection, std::net::TcpStream>, String> {
    let conn =
        ClientConnection::new(config.clone(), name.clone()).map_err(|err| err.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|err| err.to_string())?;
    }
    Ok(stream)
}

/// A client TLS session over a monoio TCP stream.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ClientConnection,
    /// Ciphertext read from the socket; `rpos..` not yet given to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext waiting to be written.
    wbuf: Vec<u8>,
    plain: Box<[u8; PLAIN_CHUNK]>,
    eof: bool,
}

impl TlsStream {
    /// Runs the handshake over a connected socket.
    pub async fn handshake(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsStream, IoFail> {
        let tls = ClientConnection::new(config, name).map_err(tls_error)?;
        let mut stream = TlsStream {
            tcp,
            tls,
            rbuf: Vec::with_capacity(TLS_READ),
            rpos: 0,
            wbuf: Vec::with_capacity(PLAIN_CHUNK + 1024),
            plain: Box::new([0; PLAIN_CHUNK]),
            eof: false,
        };
        loop {
            stream.flush().await?;
            if !stream.tls.is_handshaking() {
                return Ok(stream);
            }
            if !stream.feed().await? {
                return Err(IoFail::Closed);
            }
        }
    }

    /// Whether the handshake resumed an earlier session (TLS 1.3 PSK from a ticket, or a TLS 1.2
    /// ticket or session ID).
    pub fn resumed(&self) -> bool {
        self.tls.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// Encrypts and sends all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), IoFail> {
        while !data.is_empty() {
            let n = self.tls.writer().write(data)?;
            self.flush().await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Appends at least one byte of plaintext to `out`; returns 0 at the end of the stream.
    pub async fn read_more(&mut self, out: &mut Vec<u8>) -> Result<usize, IoFail> {
        loop {
            match self.tls.reader().read(&mut self.plain[..]) {
                Ok(0) => return Ok(0),
                Ok(n) => {
                    out.extend_from_slice(&self.plain[..n]);
                    return Ok(n);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) => return Err(err.into()),
            }
            if !self.feed().await? {
                return Ok(0);
            }
            // Key updates and alerts may need an answer.
            self.flush().await?;
        }
    }

    /// Gives rustls more ciphertext, reading from the socket when none is buffered. Returns
    /// false at the end of the stream.
    async fn feed(&mut self) -> Result<bool, IoFail> {
        if self.rpos >= self.rbuf.len() {
            if self.eof {
                return Ok(false);
            }
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            let (result, buf) = self.tcp.read(buf).await;
            self.rbuf = buf;
            self.rpos = 0;
            if result? == 0 {
                self.eof = true;
                // Tells rustls about the end of the stream.
                let _ = self.tls.read_tls(&mut std::io::empty());
                self.tls.process_new_packets().map_err(tls_error)?;
                return Ok(true);
            }
        }
        let mut slice = &self.rbuf[self.rpos..];
        let used = self.tls.read_tls(&mut slice)?;
        if used == 0 {
            // close_notify already received: nothing more will be accepted.
            self.rpos = self.rbuf.len();
            self.eof = true;
            return Ok(true);
        }
        self.rpos += used;
        self.tls.process_new_packets().map_err(tls_error)?;
        Ok(true)
    }

    /// Writes out whatever rustls has queued.
    async fn flush(&mut self) -> Result<(), IoFail> {
        if !self.tls.wants_write() {
            return Ok(());
        }
        self.wbuf.clear();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.wbuf)?;
        }
        let buf = std::mem::take(&mut self.wbuf);
        let (result, buf) = self.tcp.write_all(buf).await;
        self.wbuf = buf;
        result?;
        Ok(())
    }
}

fn tls_error(err: rustls::Error) -> IoFail {
    IoFail::Tls(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{Connection, ServerConfig, ServerConnection};
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A server with the fixture certificate that issues stateless tickets, like the gateway.
    fn server_config() -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs("server certificate", &fixture("server.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
        Arc::new(config)
    }

    /// Moves everything `from` has to send into `to`; false when there was nothing.
    fn pump(from: &mut Connection, to: &mut Connection) -> bool {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
        !wire.is_empty()
    }

    /// One connection in memory, run until both sides are quiet (so that the client has the
    /// server's tickets); returns how the client saw the handshake and what it negotiated.
    fn connect(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (bool, Negotiated) {
        let name = server_name("localhost").unwrap();
        let mut c = Connection::Client(ClientConnection::new(client.clone(), name).unwrap());
        let mut s = Connection::Server(ServerConnection::new(server.clone()).unwrap());
        while pump(&mut c, &mut s) | pump(&mut s, &mut c) {}
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let Connection::Client(c) = c else {
            unreachable!()
        };
        assert_eq!(c.handshake_kind(), s.handshake_kind());
        (
            c.handshake_kind() == Some(HandshakeKind::Resumed),
            Negotiated::of(&c),
        )
    }

    #[test]
    fn resumes_by_default() {
        let server = server_config();
        let client = client_config(&fixture("ca.pem"), None, resumption(true, 4)).unwrap();
        let (resumed, negotiated) = connect(&client, &server);
        assert!(!resumed, "the first connection has nothing to resume");
        assert_eq!(negotiated.version, "TLSv1.3");
        assert!(negotiated.cipher.starts_with("TLS13_"), "{negotiated:?}");
        assert_eq!(negotiated.group, "X25519");
        // Every later connection made with the same shared configuration resumes.
        for _ in 0..20 {
            assert!(connect(&client, &server).0);
        }
    }

    #[test]
    fn no_resume_always_does_a_full_handshake() {
        let server = server_config();
        let client = client_config(&fixture("ca.pem"), None, resumption(false, 4)).unwrap();
        for _ in 0..5 {
            assert!(!connect(&client, &server).0);
        }
    }

    #[test]
    fn the_store_keeps_tickets_for_every_connection() {
        // 20 connections reconnecting at the same moment: each finds a ticket, where rustls'
        // default cache (8 per server) would leave 12 of them with a full handshake.
        let server = server_config();
        let store = Arc::new(SessionStore::new(2 * 20));
        let client =
            client_config(&fixture("ca.pem"), None, Resumption::store(store.clone())).unwrap();
        let name = server_name("localhost").unwrap();
        // A rustls server sends two tickets per handshake and a resumption uses one: one
        // connection after another, the store gains one ticket per connection, up to 40.
        for _ in 0..50 {
            connect(&client, &server);
        }
        assert_eq!(store.tickets(&name), 40);
        let mut pending = Vec::new();
        for _ in 0..20 {
            // Each ClientHello takes its ticket when the connection is created.
            pending.push(ClientConnection::new(client.clone(), name.clone()).unwrap());
        }
        assert_eq!(store.tickets(&name), 20);
        for conn in pending {
            let mut c = Connection::Client(conn);
            let mut s = Connection::Server(ServerConnection::new(server.clone()).unwrap());
            while pump(&mut c, &mut s) | pump(&mut s, &mut c) {}
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
        }
    }

    #[test]
    fn the_store_drops_the_oldest_ticket_when_full() {
        let server = server_config();
        let store = Arc::new(SessionStore::new(3));
        let client =
            client_config(&fixture("ca.pem"), None, Resumption::store(store.clone())).unwrap();
        for _ in 0..5 {
            connect(&client, &server);
        }
        assert_eq!(store.tickets(&server_name("localhost").unwrap()), 3);
        assert_eq!(store.tickets(&server_name("other.test").unwrap()), 0);
        assert!(store.kx_hint(&server_name("localhost").unwrap()).is_some());
    }
}
