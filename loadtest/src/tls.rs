//! TLS for `https` targets with rustls (ring provider): the client configuration from PEM
//! files (CA bundle, optional client certificate and key for mTLS), a blocking handshake
//! used to check the target before the run, and a TLS stream over a monoio TCP stream that
//! moves owned buffers between rustls and the socket.

use crate::error::Error;
use crate::transport::IoFail;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Ciphertext read size.
const TLS_READ: usize = 32 * 1024;
/// Plaintext staging size.
const PLAIN_CHUNK: usize = 16 * 1024;

/// Builds the client configuration: trust only the CAs in `ca`; present `cert`/`key` when
/// given.
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
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
    let config = match client {
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
    Ok(Arc::new(config))
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
