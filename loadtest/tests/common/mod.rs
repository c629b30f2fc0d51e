//! Test support: a small blocking HTTP/1.1 server (std threads, plain or TLS) that counts
//! and optionally records requests and answers by simple rules, and helpers that run the
//! `cflow-load` binary.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the server answers.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Answer 503 to every n-th request (by the server's global count); 0 = never.
    pub fail_every: u64,
    /// Record each request's arrival time.
    pub record_times: bool,
    /// Record the value of this request header.
    pub record_header: Option<String>,
    /// Never answer.
    pub hang: bool,
    /// Answer with `Connection: close` and close.
    pub close_each: bool,
    /// Answer with a chunked body.
    pub chunked: bool,
    /// Wait this long before answering each request.
    pub delay: Option<Duration>,
}

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub times: Mutex<Vec<Instant>>,
    pub header_values: Mutex<Vec<String>>,
    /// TLS: completed handshakes (counted when the connection ends) ...
    pub tls_handshakes: AtomicU64,
    /// ... and the ones that resumed a session from a ticket.
    pub tls_resumed: AtomicU64,
}

/// A running test server; its threads live until the test process ends.
pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl TestServer {
    /// A plain HTTP server.
    pub fn start(rules: Rules) -> TestServer {
        Self::start_with(rules, None)
    }

    /// An HTTPS server with the fixture certificate; `require_client_cert` turns on mTLS.
    pub fn start_tls(rules: Rules, require_client_cert: bool) -> TestServer {
        Self::start_with(rules, Some(tls_server_config(require_client_cert)))
    }

    fn start_with(rules: Rules, tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let server_seen = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                server_seen.connections.fetch_add(1, Ordering::Relaxed);
                let seen = server_seen.clone();
                let rules = rules.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve(stream, &rules, &seen),
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        let mut tls = rustls::StreamOwned::new(conn, stream);
                        serve(&mut tls, &rules, &seen);
                        if let Some(kind) = tls.conn.handshake_kind() {
                            if !tls.conn.is_handshaking() {
                                seen.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                                if kind == rustls::HandshakeKind::Resumed {
                                    seen.tls_resumed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
        });
        TestServer { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.seen.connections.load(Ordering::Relaxed)
    }

    pub fn tls_handshakes(&self) -> u64 {
        self.seen.tls_handshakes.load(Ordering::Relaxed)
    }

    pub fn tls_resumed(&self) -> u64 {
        self.seen.tls_resumed.load(Ordering::Relaxed)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn serve<S: Read + Write>(mut stream: S, rules: &Rules, seen: &Seen) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        // Answer every complete request in the buffer (pipelined ones together).
        let mut close = false;
        while let Some(head_end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut content_length = 0;
            let mut header_value = None;
            for line in head.lines().skip(1) {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap();
                }
                if rules
                    .record_header
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(name.trim()))
                {
                    header_value = Some(value.trim().to_string());
                }
            }
            let total = head_end + 4 + content_length;
            if buf.len() < total {
                break;
            }
            buf.drain(..total);
            let number = seen.requests.fetch_add(1, Ordering::Relaxed) + 1;
            if rules.record_times {
                seen.times.lock().unwrap().push(Instant::now());
            }
            if let Some(value) = header_value {
                seen.header_values.lock().unwrap().push(value);
            }
            if rules.hang {
                continue;
            }
            if let Some(delay) = rules.delay {
                std::thread::sleep(delay);
            }
            let status = if rules.fail_every > 0 && number % rules.fail_every == 0 {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let connection = if rules.close_each {
                "Connection: close\r\n"
            } else {
                ""
            };
            if rules.chunked {
                out.extend_from_slice(
                    format!("HTTP/1.1 {status}\r\n{connection}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3;x=1\r\n!!!\r\n0\r\n\r\n")
                        .as_bytes(),
                );
            } else {
                out.extend_from_slice(
                    format!("HTTP/1.1 {status}\r\n{connection}Content-Length: 2\r\n\r\nok")
                        .as_bytes(),
                );
            }
            if rules.close_each {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            if stream
                .write_all(&out)
                .and_then(|()| stream.flush())
                .is_err()
            {
                return;
            }
            out.clear();
        }
        if close {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tls_server_config(require_client_cert: bool) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    // Stateless session tickets, as the gateway issues them.
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    Arc::new(config)
}

/// Runs `cflow-load` with `args`.
pub fn cflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cflow-load"))
        .args(args)
        .output()
        .expect("cflow-load runs")
}

/// Runs `cflow-load --json` and returns the parsed result; panics unless it succeeds.
pub fn cflow_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = cflow(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cflow-load {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got:\n{stdout}");
    serde_json::from_str(lines[0]).expect("valid JSON")
}

pub fn u(value: &serde_json::Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not an integer: {value}"))
}

pub fn f(value: &serde_json::Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

/// A port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

/// A scratch directory unique to this test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cflow-load-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits briefly for server threads to finish counting requests that arrived at the end.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(100));
}

static TIMING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Taken by tests that only count: they may run side by side.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    TIMING
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Taken by tests that check timing: nothing else runs meanwhile on this small machine.
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    TIMING
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
