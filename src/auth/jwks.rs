//! JWK Sets: reading a JWKS document (file or HTTP body) into an issuer's verification keys,
//! choosing a key for a token (by `kid`, or the only key), and fetching a JWKS URL over HTTP or
//! HTTPS on the control side (never on a core), with the `Cache-Control: max-age` the IdP sent.

use super::keys::{AlgorithmSet, JwkFields, KeyError, VerifyKey};
use crate::runtime::deadline_socket::DeadlineSocket;
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An issuer's current keys.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// Why a JWKS document was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWK Set: {0}")]
    Syntax(String),
    #[error("key {index} ({kid}): {error}")]
    Key {
        index: usize,
        kid: String,
        error: KeyError,
    },
    #[error("the JWK Set has no usable keys")]
    Empty,
    #[error("two keys share kid `{0}`")]
    DuplicateKid(String),
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

impl KeySet {
    /// Reads a JWKS document. Keys of types the gateway does not verify (e.g. `enc` keys or
    /// unknown curves) are skipped when `lenient`; otherwise they are errors.
    pub fn parse(
        document: &[u8],
        allowed: AlgorithmSet,
        lenient: bool,
    ) -> Result<KeySet, JwksError> {
        let mut bytes = document.to_vec();
        let doc: Document = simd_json::serde::from_slice(&mut bytes)
            .map_err(|err| JwksError::Syntax(err.to_string()))?;
        let mut keys: Vec<VerifyKey> = Vec::with_capacity(doc.keys.len());
        for (index, raw) in doc.keys.into_iter().enumerate() {
            let fields = JwkFields {
                kty: raw.kty,
                kid: raw.kid,
                alg: raw.alg,
                use_: raw.use_,
                crv: raw.crv,
                n: raw.n,
                e: raw.e,
                x: raw.x,
                y: raw.y,
                k: raw.k,
            };
            match VerifyKey::from_jwk(&fields, allowed) {
                Ok(key) => {
                    if let Some(kid) = &key.kid {
                        if keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                            return Err(JwksError::DuplicateKid(kid.to_string()));
                        }
                    }
                    if !key.algorithms.is_empty() {
                        keys.push(key);
                    }
                }
                Err(_) if lenient => {}
                Err(error) => {
                    return Err(JwksError::Key {
                        index,
                        kid: fields.kid.unwrap_or_else(|| "no kid".into()),
                        error,
                    })
                }
            }
        }
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(KeySet { keys })
    }

    /// The key for a token: the one with its `kid`, or — when the token names none — the only
    /// key of the set.
    pub fn find(&self, kid: Option<&[u8]>) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref().map(str::as_bytes) == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// The key ids, for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect()
    }
}

/// A parsed `http(s)://host[:port]/path` JWKS address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub text: String,
    /// `https://`: fetched over TLS, the IdP's certificate verified for `host`.
    pub tls: bool,
}

impl JwksUrl {
    pub fn parse(text: &str) -> Result<JwksUrl, String> {
        let (rest, tls) = if let Some(rest) = text.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (rest, false)
        } else {
            return Err(format!("`{text}` must be an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("`{text}`: invalid port"))?,
            ),
            _ => (authority, default_port),
        };
        if host.is_empty() || authority.contains('@') {
            return Err(format!("`{text}`: no host"));
        }
        Ok(JwksUrl {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            path: path.into(),
            text: text.into(),
            tls,
        })
    }
}

/// A fetched JWKS body and how long the IdP lets it be cached.
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

/// Largest JWKS body accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Connects to the first address of `url`'s host that answers, before `deadline`. Each address
/// gets an equal share of the time left, so one that never answers (an unreachable IPv6
/// route) leaves time for the next.
fn connect(url: &JwksUrl, deadline: Instant) -> Result<DeadlineSocket, String> {
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last = format!("{} resolved to no address", url.host);
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / (addrs.len() - i) as u32;
        match DeadlineSocket::connect(addr, Instant::now() + share) {
            Ok(mut stream) => {
                stream.extend_to(deadline);
                return Ok(stream);
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

/// Fetches a JWKS URL (blocking; control side only). `tls` is required for `https://`. The
/// whole fetch — connect, handshake, request and body — ends within `timeout` (name resolution
/// aside), however slowly the server sends.
pub fn fetch(
    url: &JwksUrl,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Fetched, String> {
    let stream = connect(url, Instant::now() + timeout)?;
    let default_port = if url.tls { 443 } else { 80 };
    let host = if url.port == default_port {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: credentialflow\r\nConnection: close\r\n\r\n",
        url.path
    );
    let limit = MAX_JWKS_BYTES as u64 + 16 * 1024;
    let mut raw = Vec::new();
    if url.tls {
        let config = tls.ok_or("https needs a CA bundle (issuers.jwks_ca)")?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("{}: {e}", url.host))?;
        let session =
            rustls::ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS: {e}"))?;
        let mut tls_stream = rustls::StreamOwned::new(session, stream);
        tls_stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        // An IdP may close without close_notify; the framing check below catches truncation.
        if let Err(e) = read_response(&mut tls_stream, limit, &mut raw) {
            if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
                return Err(format!("read: {e}"));
            }
        }
    } else {
        let mut stream = stream;
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        read_response(&mut stream, limit, &mut raw).map_err(|e| format!("read: {e}"))?;
    }
    parse_response(&raw)
}

/// Reads the response into `raw` (at most `limit` bytes) until the server closes, or until
/// nothing more is needed: a 200 response's body is complete by its own framing
/// (`Content-Length` or chunked), or the head of any other status is in. An IdP that keeps the
/// connection open despite `Connection: close` is not waited out.
fn read_response(mut stream: impl Read, limit: u64, raw: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    while (raw.len() as u64) < limit {
        let room = (limit - raw.len() as u64).min(chunk.len() as u64) as usize;
        let n = stream.read(&mut chunk[..room])?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if body_complete(raw) {
            break;
        }
    }
    Ok(())
}

/// A JWKS response's head: what framing and caching need.
struct Head {
    code: u16,
    len: usize,
    chunked: bool,
    length: Option<usize>,
    max_age: Option<Duration>,
}

/// The head at the start of `raw`; `None` while it is incomplete or when it is malformed.
fn parse_head(raw: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = response.parse(raw) else {
        return None;
    };
    let mut head = Head {
        code: response.code.unwrap_or(0),
        len,
        chunked: false,
        length: None,
        max_age: None,
    };
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            head.length = value.parse::<usize>().ok();
        } else if h.name.eq_ignore_ascii_case("cache-control") {
            head.max_age = cache_max_age(value);
        }
    }
    Some(head)
}

/// Whether `raw` holds all the fetch needs: a whole 200 response framed by `Content-Length` or
/// chunked encoding (a malformed chunk counts: reading on would not mend it), or the complete
/// head of another status (refused whatever its body).
fn body_complete(raw: &[u8]) -> bool {
    let Some(head) = parse_head(raw) else {
        return false;
    };
    if head.code != 200 {
        return true;
    }
    let rest = &raw[head.len..];
    if head.chunked {
        let mut scanner = crate::http::chunked::ChunkedScanner::new();
        return scanner.scan(rest, |_, _| {}).is_err() || scanner.is_done();
    }
    head.length.is_some_and(|n| rest.len() >= n)
}

fn parse_response(raw: &[u8]) -> Result<Fetched, String> {
    let head = parse_head(raw).ok_or("malformed HTTP response")?;
    if head.code != 200 {
        return Err(format!("HTTP status {}", head.code));
    }
    let rest = &raw[head.len..];
    let body = if head.chunked {
        let mut body = Vec::new();
        let mut scanner = crate::http::chunked::ChunkedScanner::new();
        scanner
            .scan(rest, |a, b| body.extend_from_slice(&rest[a..b]))
            .map_err(|e| format!("chunked body: {e}"))?;
        if !scanner.is_done() {
            return Err("truncated chunked body".into());
        }
        body
    } else {
        match head.length {
            Some(n) if rest.len() < n => return Err("truncated body".into()),
            Some(n) => rest[..n].to_vec(),
            None => rest.to_vec(),
        }
    };
    if body.len() > MAX_JWKS_BYTES {
        return Err("JWKS body larger than 1 MiB".into());
    }
    Ok(Fetched {
        body,
        max_age: head.max_age,
    })
}

/// `max-age` from a `Cache-Control` value (`no-store`/`no-cache` count as 0).
pub fn cache_max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, v)) = directive.split_once('=') {
            if name.trim().eq_ignore_ascii_case("max-age") {
                age = v.trim().trim_matches('"').parse::<u64>().ok();
            }
        }
    }
    age.map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_KEYS: &str = r#"{"keys":[
        {"kty":"oct","kid":"a","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"},
        {"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty":"EC","crv":"P-521","kid":"c","x":"AA","y":"AA"}
    ]}"#;

    #[test]
    fn keys_are_found_by_kid_and_unusable_ones_skipped_when_lenient() {
        let set = KeySet::parse(TWO_KEYS.as_bytes(), AlgorithmSet::ANY, true).unwrap();
        assert_eq!(set.kids(), vec!["a", "b"]);
        assert!(set.find(Some(b"b")).is_some());
        assert!(set.find(Some(b"z")).is_none());
        assert!(set.find(None).is_none(), "two keys and no kid: ambiguous");
        assert!(KeySet::parse(TWO_KEYS.as_bytes(), AlgorithmSet::ANY, false).is_err());
    }

    #[test]
    fn garbage_and_empty_sets_are_refused() {
        assert!(KeySet::parse(b"{", AlgorithmSet::ANY, true).is_err());
        assert!(matches!(
            KeySet::parse(br#"{"keys":[]}"#, AlgorithmSet::ANY, true),
            Err(JwksError::Empty)
        ));
    }

    #[test]
    fn urls_and_cache_control() {
        let url = JwksUrl::parse("http://127.0.0.1:9300/jwks").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("127.0.0.1", 9300, "/jwks")
        );
        assert_eq!(JwksUrl::parse("http://idp").unwrap().port, 80);
        let https = JwksUrl::parse("https://idp.example.com/.well-known/jwks.json").unwrap();
        assert_eq!((https.port, https.tls), (443, true));
        assert!(JwksUrl::parse("ftp://x").is_err());
        assert!(JwksUrl::parse("http://user@idp/").is_err());
        assert_eq!(
            cache_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
    }

    #[test]
    fn responses_with_length_and_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(r.body, b"{}");
        assert_eq!(r.max_age, Some(Duration::from_secs(60)));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"{}");
        assert!(parse_response(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n").is_err());
    }

    /// Serves one connection: reads the request, then writes `head`, trickles `body` a byte
    /// every `gap`, and keeps the connection open for `hold` before closing it.
    fn serve_slowly(
        head: &'static [u8],
        body: &'static [u8],
        gap: Duration,
        hold: Duration,
    ) -> (JwksUrl, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url =
            JwksUrl::parse(&format!("http://{}/jwks", listener.local_addr().unwrap())).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            if s.write_all(head).is_err() {
                return;
            }
            for byte in body {
                if s.write_all(std::slice::from_ref(byte)).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
            std::thread::sleep(hold);
        });
        (url, server)
    }

    #[test]
    fn a_fetch_reads_the_body() {
        let (url, server) = serve_slowly(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            b"{}",
            Duration::ZERO,
            Duration::ZERO,
        );
        let fetched = fetch(&url, Duration::from_secs(5), None).unwrap();
        assert_eq!(fetched.body, b"{}");
        server.join().unwrap();
    }

    #[test]
    fn a_server_trickling_its_body_fails_at_the_timeout() {
        // A byte every 50 ms: every read succeeds, the fetch as a whole must not outlast 300 ms.
        let (url, server) = serve_slowly(
            b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n",
            b"{\"keys\": []                            }",
            Duration::from_millis(50),
            Duration::ZERO,
        );
        let started = Instant::now();
        let err = fetch(&url, Duration::from_millis(300), None)
            .err()
            .expect("a trickled body cannot be fetched in time");
        let took = started.elapsed();
        assert!(err.starts_with("read:"), "{err}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_server_keeping_the_connection_open_after_the_body_is_not_waited_out() {
        // The server ignores `Connection: close`: the body is complete by its length, and the
        // socket stays open past the fetch's timeout.
        let (url, server) = serve_slowly(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
            b"{}",
            Duration::ZERO,
            Duration::from_millis(1500),
        );
        let started = Instant::now();
        let fetched = fetch(&url, Duration::from_secs(1), None).unwrap();
        assert_eq!(fetched.body, b"{}");
        assert!(started.elapsed() < Duration::from_millis(500));
        server.join().unwrap();
    }

    #[test]
    fn a_body_is_complete_by_its_framing_only() {
        assert!(body_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        ));
        assert!(!body_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}"
        ));
        assert!(body_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        ));
        assert!(!body_complete(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        ));
        // Delimited by the close, or the head still arriving: read on.
        assert!(!body_complete(b"HTTP/1.1 200 OK\r\n\r\n{}"));
        assert!(!body_complete(b"HTTP/1.1 200 OK\r\nContent-Le"));
        // Another status is refused as soon as its head is in.
        assert!(body_complete(
            b"HTTP/1.1 500 Oops\r\nContent-Length: 9\r\n\r\n"
        ));
    }
}
