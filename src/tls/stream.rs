//! A rustls session over a monoio TCP socket, with owned buffers and deadlines: the handshake,
//! reading plaintext onto the end of a connection buffer, writing plaintext, close_notify.
//!
//! Ciphertext moves through two per-connection buffers (`rx` from the socket, `tx` to it); the
//! session itself lives on one core and is never shared.

use crate::proxy::io::{tcp_read, tcp_write, ByteStream, IoFail};
use crate::runtime::deadline::{timeout_at, Elapsed};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use std::io::{BufRead, Write};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ciphertext read per socket read (one full TLS record and a bit).
const RX_CHUNK: usize = 17 * 1024;
/// Content type of a TLS handshake record: the first byte a TLS client sends.
const HANDSHAKE_RECORD: u8 = 0x16;
/// How long a closing session waits to get its close_notify out.
const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_millis(200);

/// One TLS connection, server or client side.
pub struct TlsStream {
    tcp: TcpStream,
    session: rustls::Connection,
    /// Ciphertext from the socket not yet given to the session: `rx[rx_pos..]`.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Ciphertext on its way to the socket.
    tx: Vec<u8>,
}

impl TlsStream {
    /// The server side of an accepted connection; run [`TlsStream::handshake`] next.
    pub fn server(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> Result<TlsStream, IoFail> {
        let session = rustls::ServerConnection::new(config)?;
        Ok(TlsStream::new(tcp, session.into()))
    }

    /// The client side of a connection to an upstream; run [`TlsStream::handshake`] next.
    pub fn client(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsStream, IoFail> {
        let session = rustls::ClientConnection::new(config, name)?;
        Ok(TlsStream::new(tcp, session.into()))
    }

    fn new(tcp: TcpStream, session: rustls::Connection) -> TlsStream {
        TlsStream {
            tcp,
            session,
            rx: Vec::new(),
            rx_pos: 0,
            tx: Vec::new(),
        }
    }

    /// The session (negotiated version, peer certificates, resumption).
    pub fn session(&self) -> &rustls::Connection {
        &self.session
    }

    /// Runs the handshake to completion before `deadline`. On the server side, a first byte
    /// that cannot start a TLS handshake fails at once with [`IoFail::NotTls`].
    pub async fn handshake(&mut self, deadline: Instant) -> Result<(), IoFail> {
        let is_server = matches!(self.session, rustls::Connection::Server(_));
        let mut first = is_server;
        while self.session.is_handshaking() {
            if self.session.wants_write() {
                self.flush(deadline).await?;
                continue;
            }
            if first && self.rx_pos == self.rx.len() {
                self.rx.clear();
                self.rx_pos = 0;
                tcp_read(&mut self.tcp, &mut self.rx, RX_CHUNK, deadline).await?;
                if self.rx[0] != HANDSHAKE_RECORD {
                    let http = self.rx[0].is_ascii_uppercase();
                    return Err(IoFail::NotTls { http });
                }
                first = false;
            }
            self.receive(deadline).await?;
        }
        self.flush(deadline).await?;
        self.rx.shrink_to(RX_CHUNK);
        Ok(())
    }

    /// Gives the session more ciphertext (reading the socket when none is buffered), processes
    /// it, and sends whatever the session wants to send in reply (handshake flights, tickets,
    /// alerts).
    async fn receive(&mut self, deadline: Instant) -> Result<(), IoFail> {
        if self.rx_pos >= self.rx.len() {
            self.rx.clear();
            self.rx_pos = 0;
            tcp_read(&mut self.tcp, &mut self.rx, RX_CHUNK, deadline).await?;
        }
        let mut pending = &self.rx[self.rx_pos..];
        let taken = self.session.read_tls(&mut pending)?;
        self.rx_pos += taken;
        if let Err(err) = self.session.process_new_packets() {
            // The session has queued an alert describing the failure: try to send it.
            let _ = self
                .flush(deadline.min(Instant::now() + CLOSE_NOTIFY_TIMEOUT))
                .await;
            return Err(IoFail::Tls(err));
        }
        if self.session.wants_write() {
            self.flush(deadline).await?;
        }
        Ok(())
    }

    /// Writes out everything the session has queued.
    async fn flush(&mut self, deadline: Instant) -> Result<(), IoFail> {
        while self.session.wants_write() {
            self.tx.clear();
            while self.session.wants_write() {
                self.session.write_tls(&mut self.tx)?;
            }
            let len = self.tx.len();
            tcp_write(&mut self.tcp, &mut self.tx, 0..len, deadline).await?;
        }
        Ok(())
    }
}

impl ByteStream for TlsStream {
    /// Reads plaintext onto the end of `buf` before `deadline`; returns how many bytes came.
    /// A close_notify from the peer ends the stream ([`IoFail::Closed`]).
    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        min_spare: usize,
        deadline: Instant,
    ) -> Result<usize, IoFail> {
        loop {
            let mut reader = self.session.reader();
            match reader.fill_buf() {
                Ok([]) => return Err(IoFail::Closed),
                Ok(data) => {
                    let n = data.len();
                    if buf.capacity() - buf.len() < n.max(min_spare) {
                        buf.reserve(n.max(min_spare));
                    }
                    buf.extend_from_slice(data);
                    reader.consume(n);
                    return Ok(n);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(IoFail::Closed),
            }
            self.receive(deadline).await?;
        }
    }

    /// Encrypts and writes `buf[range]` completely within `timeout`.
    async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        let deadline = Instant::now() + timeout;
        let mut data = &buf[range];
        while !data.is_empty() {
            let n = self.session.writer().write(data)?;
            data = &data[n..];
            self.flush(deadline).await?;
        }
        Ok(())
    }

    /// Ready at once while ciphertext or plaintext is buffered; otherwise the socket's wait,
    /// with the ciphertext buffers given up first, so an idle TLS connection holds none of
    /// ours (rustls keeps its own).
    fn wait_readable(
        &mut self,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<std::io::Result<()>, Elapsed>> {
        // Plaintext, the end of the stream (close_notify) or an error: not a wait.
        let buffered = self.rx_pos < self.rx.len()
            || !matches!(self.session.reader().fill_buf(), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock);
        let tcp = if buffered {
            None
        } else {
            // `tx` holds what the last flush wrote, nothing unsent.
            self.rx = Vec::new();
            self.rx_pos = 0;
            self.tx = Vec::new();
            Some(&mut self.tcp)
        };
        async move {
            match tcp {
                Some(tcp) => timeout_at(deadline, tcp.readable(false)).await,
                None => Ok(Ok(())),
            }
        }
    }

    /// Sends close_notify (best effort, briefly).
    async fn finish(&mut self) {
        self.session.send_close_notify();
        let _ = self.flush(Instant::now() + CLOSE_NOTIFY_TIMEOUT).await;
    }

    fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }
}
