//! Framing round trip, as a property: any request the gateway accepts reaches the upstream with
//! the same method, target, end-to-end fields (same values, same order) and body — checked by a
//! second strict parser (`httparse` plus the RFC 9112 rules the gateway itself enforces: one
//! Host, at most one Content-Length and never with Transfer-Encoding, `chunked` last, sizes
//! in hex without signs) at the upstream. Requests are generated (method, path, query, fields,
//! no body / Content-Length / chunked with extensions and trailers) and sent to the real gateway
//! over one keep-alive connection.

mod common;

use common::*;
use proptest::prelude::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A request as the test writes it.
#[derive(Debug, Clone)]
struct Generated {
    method: &'static str,
    target: String,
    fields: Vec<(String, String)>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Length(Vec<u8>),
    /// Chunks (each non-empty), an extension on each size line, trailer fields.
    Chunked(Vec<Vec<u8>>, bool, Vec<(String, String)>),
}

impl Generated {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: props.test\r\n",
            self.method, self.target
        )
        .into_bytes();
        for (name, value) in &self.fields {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        match &self.body {
            Body::None => out.extend_from_slice(b"\r\n"),
            Body::Length(body) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            Body::Chunked(chunks, extension, trailers) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for chunk in chunks {
                    let ext = if *extension { ";name=value" } else { "" };
                    out.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    fn body_data(&self) -> Vec<u8> {
        match &self.body {
            Body::None => Vec::new(),
            Body::Length(body) => body.clone(),
            Body::Chunked(chunks, _, _) => chunks.concat(),
        }
    }
}

/// What the second parser found at the upstream.
#[derive(Debug, Clone, PartialEq)]
struct Parsed {
    method: String,
    target: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Fields the gateway owns or removes on the way (hop-by-hop, its own `X-Forwarded-*` and
/// `X-Request-Id`, trace context, framing) — everything else must arrive unchanged.
fn end_to_end(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("x-client-cert-") || lower.starts_with("x-forwarded-") {
        return false;
    }
    ![
        "host",
        "expect",
        "x-consumer-id",
        "x-credential-id",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "transfer-encoding",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "traceparent",
        "tracestate",
    ]
    .contains(&lower.as_str())
}

/// Reads and strictly parses one request from `stream`, leaving the rest in `buf`.
fn parse_strict(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Parsed, String> {
    let mut tmp = [0u8; 16 * 1024];
    let (head_len, method, target, fields) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                if req.version != Some(1) {
                    return Err("not HTTP/1.1".into());
                }
                let fields: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        let value = std::str::from_utf8(h.value)
                            .map_err(|_| format!("field {} is not UTF-8", h.name))?;
                        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                            return Err(format!("control byte in {}", h.name));
                        }
                        Ok((h.name.to_string(), value.to_string()))
                    })
                    .collect::<Result<_, String>>()?;
                break (
                    len,
                    req.method.unwrap().to_string(),
                    req.path.unwrap().to_string(),
                    fields,
                );
            }
            Ok(httparse::Status::Partial) => {}
            Err(err) => return Err(format!("upstream parser: {err}")),
        }
        let n = stream.read(&mut tmp).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a complete head".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    buf.drain(..head_len);
    let named = |name: &str| -> Vec<&str> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    if named("host").len() != 1 {
        return Err("not exactly one Host".into());
    }
    let lengths = named("content-length");
    let codings = named("transfer-encoding");
    if lengths.len() > 1 || (!lengths.is_empty() && !codings.is_empty()) {
        return Err(format!("ambiguous framing: {lengths:?} {codings:?}"));
    }
    let mut fill = |buf: &mut Vec<u8>, want: usize| -> Result<(), String> {
        while buf.len() < want {
            let n = stream.read(&mut tmp).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed inside the body".into());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        Ok(())
    };
    let mut body = Vec::new();
    if let Some(length) = lengths.first() {
        if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad Content-Length {length:?}"));
        }
        let n: usize = length.parse().map_err(|_| "Content-Length overflow")?;
        fill(buf, n)?;
        body.extend(buf.drain(..n));
    } else if let Some(coding) = codings.first() {
        if codings.len() != 1 || !coding.eq_ignore_ascii_case("chunked") {
            return Err(format!("unexpected Transfer-Encoding {codings:?}"));
        }
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let len = buf.len() + 1;
                fill(buf, len)?;
            };
            let line = String::from_utf8(buf[..line_end].to_vec()).map_err(|_| "size line")?;
            buf.drain(..line_end + 2);
            let size_text = line.split(';').next().unwrap_or("");
            if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad chunk size line {line:?}"));
            }
            let size = usize::from_str_radix(size_text, 16).map_err(|_| "chunk size")?;
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        let len = buf.len() + 1;
                        fill(buf, len)?;
                    };
                    buf.drain(..end + 2);
                    if end == 0 {
                        break;
                    }
                }
                break;
            }
            fill(buf, size + 2)?;
            body.extend(buf.drain(..size));
            if buf.drain(..2).as_slice() != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
        }
    }
    Ok(Parsed {
        method,
        target,
        fields: fields.into_iter().filter(|(n, _)| end_to_end(n)).collect(),
        body,
    })
}

/// An upstream that parses every request strictly and reports it, answering 204.
fn strict_upstream() -> (u16, mpsc::Receiver<Result<Parsed, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                loop {
                    let parsed = parse_strict(&mut stream, &mut buf);
                    let failed = parsed.is_err();
                    if tx.send(parsed).is_err() || failed {
                        return;
                    }
                    let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,15}"
}

fn field_value() -> impl Strategy<Value = String> {
    // Visible ASCII and inner spaces/tabs (outer whitespace is not part of a value).
    "[!-~]([ \t!-~]{0,30}[!-~])?"
}

fn generated() -> impl Strategy<Value = Generated> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
    // Paths already in normal form (no dot segments, no escapes), so the target is unchanged.
    let segment = "[A-Za-z0-9_~-][A-Za-z0-9_.~-]{0,11}";
    let path = prop::collection::vec(segment, 0..5).prop_map(|s| format!("/props/{}", s.join("/")));
    let query = prop::option::of("[A-Za-z0-9=&_.~%-]{0,24}");
    let fields = prop::collection::vec(
        (token(), field_value()).prop_filter("end-to-end fields only", |(n, _)| end_to_end(n)),
        0..8,
    );
    let chunk = prop::collection::vec(any::<u8>(), 1..300);
    let body = prop_oneof![
        Just(Body::None),
        prop::collection::vec(any::<u8>(), 0..2000).prop_map(Body::Length),
        (
            prop::collection::vec(chunk, 0..6),
            any::<bool>(),
            prop::collection::vec(
                (token(), field_value()).prop_filter("not framing", |(n, _)| end_to_end(n)),
                0..3
            ),
        )
            .prop_map(|(chunks, ext, trailers)| Body::Chunked(chunks, ext, trailers)),
    ];
    (method, path, query, fields, body).prop_map(|(method, path, query, fields, body)| {
        let target = match query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        Generated {
            method,
            target,
            fields,
            body,
        }
    })
}

#[test]
fn accepted_requests_reach_the_upstream_with_the_same_framing() {
    let (upstream, parsed) = strict_upstream();
    let gw = ConfigBuilder::new(free_port(), &[upstream])
        .route("/props", "")
        .start();
    let client = std::cell::RefCell::new(gw.client());
    client.borrow().set_read_timeout(Duration::from_secs(5));
    let config = ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(request in generated())| {
        let mut client = client.borrow_mut();
        client.send(&request.bytes());
        let response = client.read_response();
        prop_assert_eq!(response.status, 204, "{:?}: {}", request, response.body_str());
        let seen = parsed
            .recv_timeout(Duration::from_secs(5))
            .expect("the upstream saw the request")
            .map_err(|e| TestCaseError::fail(format!("{request:?}: {e}")))?;
        prop_assert_eq!(&seen.method, request.method);
        prop_assert_eq!(&seen.target, &request.target);
        prop_assert_eq!(&seen.fields, &request.fields);
        prop_assert_eq!(seen.body, request.body_data());
    });
}
