//! One client connection's byte stream, plain TCP or TLS, over monoio's owned-buffer I/O:
//! connect, write a whole buffer, append what arrives to a read buffer.

use crate::tls::TlsStream;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;

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
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Connects (and, for `https`, completes the TLS handshake with the endpoint's shared
    /// configuration, so that it may resume a session an earlier connection got).
    pub async fn connect(endpoint: &Endpoint) -> Result<Transport, IoFail> {
        let tcp = TcpStream::connect(endpoint.addr).await?;
        tcp.set_nodelay(true)?;
        match &endpoint.tls {
            None => Ok(Transport::Plain(tcp)),
            Some((config, name)) => Ok(Transport::Tls(Box::new(
                TlsStream::handshake(tcp, config.clone(), name.clone()).await?,
            ))),
        }
    }

    /// For TLS: whether the handshake resumed an earlier session; None for plain TCP.
    pub fn tls_resumed(&self) -> Option<bool> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => Some(tls.resumed()),
        }
    }

    /// Writes all of `buf` (the buffer is lent to the kernel and given back).
    pub async fn write_all(&mut self, buf: &mut Vec<u8>) -> Result<(), IoFail> {
        match self {
            Transport::Plain(tcp) => {
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
            Transport::Tls(tls) => tls.read_more(buf).await,
        }
    }
}
