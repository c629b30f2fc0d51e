//! Strict HTTP/1.1 request framing and request-smuggling defences, plus the
//! request size limits.
//!
//! Every malformed request must be answered with a problem+json 400 and the
//! connection closed, and the upstream must never see it. For head-level
//! defects the upstream must not even receive a request head. For
//! chunked-body defects (bad chunk size, oversized chunk extension, missing
//! CRLF after chunk data) the gateway may already have forwarded the head
//! while streaming, so those tests only require that the upstream never
//! receives a *complete* request.
//!
//! Limits: oversized head and too many header fields give 431, an overlong
//! request-target gives 414, a body larger than the route limit gives 413.

mod common;

use common::*;
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq)]
enum Level {
    /// Rejected while parsing the head: the upstream sees nothing.
    Head,
    /// Rejected while parsing the body: the upstream sees no complete request.
    Body,
}

fn gateway_with(builder: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> (TestUpstream, Gateway) {
    let up = TestUpstream::start(Mode::Echo);
    let b = ConfigBuilder::new(free_port(), &[up.port]).limit("head_timeout = \"3s\"");
    let gw = builder(b).start();
    (up, gw)
}

/// Sends `raw`, expects `status` as problem+json followed by connection
/// close, and checks the upstream saw nothing (see [`Level`]).
fn expect_rejected(raw: &[u8], status: u16, level: Level) {
    let (up, gw) = gateway_with(|b| b);
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(5));
    // A write error is fine as long as the response can still be read.
    let _ = c.try_send(raw);
    let resp = c.try_read_response().unwrap_or_else(|e| {
        panic!(
            "no {status} response for {:?}: {e}",
            String::from_utf8_lossy(raw)
        )
    });
    assert_problem(&resp, status);
    let out = c.read_to_eof_or_timeout(Duration::from_secs(3));
    assert!(
        out.closed,
        "connection must be closed after a framing error (request {:?})",
        String::from_utf8_lossy(raw)
    );
    assert!(
        out.data.is_empty(),
        "nothing may follow the error response, got {:?}",
        String::from_utf8_lossy(&out.data)
    );
    thread::sleep(Duration::from_millis(200));
    assert_eq!(up.requests(), 0, "upstream received a complete request");
    if level == Level::Head {
        assert_eq!(up.heads(), 0, "upstream received the request head");
    }
    // The gateway keeps serving well-formed requests.
    assert_eq!(get(gw.port(), "/healthy").status, 200);
}

fn rejected_400(raw: &[u8]) {
    expect_rejected(raw, 400, Level::Head);
}

// ---------------------------------------------------------------------------
// Content-Length / Transfer-Encoding conflicts
// ---------------------------------------------------------------------------

#[test]
fn content_length_and_transfer_encoding_together() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
}

#[test]
fn transfer_encoding_gzip_only() {
    rejected_400(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n");
}

#[test]
fn transfer_encoding_chunked_not_last() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    );
}

#[test]
fn transfer_encoding_identity() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
    );
}

#[test]
fn transfer_encoding_identity_alone() {
    rejected_400(b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity\r\n\r\n");
}

#[test]
fn two_transfer_encoding_headers() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
}

#[test]
fn duplicate_equal_content_length() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    );
}

#[test]
fn duplicate_different_content_length() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    );
}

#[test]
fn content_length_list() {
    rejected_400(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 6\r\n\r\nhello!");
}

#[test]
fn content_length_negative() {
    rejected_400(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n");
}

#[test]
fn content_length_plus_sign() {
    rejected_400(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello");
}

#[test]
fn content_length_hex() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0x10\r\n\r\n0123456789abcdef",
    );
}

#[test]
fn content_length_overflow() {
    rejected_400(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    );
}

#[test]
fn http10_with_transfer_encoding() {
    rejected_400(
        b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

// ---------------------------------------------------------------------------
// Chunked body defects (may be detected after the head was forwarded)
// ---------------------------------------------------------------------------

#[test]
fn bad_chunk_size_line() {
    expect_rejected(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        Level::Body,
    );
}

#[test]
fn chunk_extension_longer_than_1k() {
    let mut raw =
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 2048));
    raw.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    expect_rejected(&raw, 400, Level::Body);
}

#[test]
fn missing_crlf_after_chunk_data() {
    expect_rejected(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        400,
        Level::Body,
    );
}

#[test]
fn short_chunk_extension_is_accepted() {
    let (up, gw) = gateway_with(|b| b);
    let resp = request(
        gw.port(),
        b"POST /ext HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_request().body, b"hello");
}

// ---------------------------------------------------------------------------
// Header syntax
// ---------------------------------------------------------------------------

#[test]
fn obs_fold_header_continuation() {
    rejected_400(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n  continued\r\n\r\n");
}

#[test]
fn whitespace_before_colon_in_host() {
    rejected_400(b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n");
}

#[test]
fn whitespace_before_colon_in_other_header() {
    rejected_400(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Foo : bar\r\n\r\n");
}

#[test]
fn invalid_header_name_characters() {
    rejected_400(b"GET / HTTP/1.1\r\nHost: localhost\r\nBad[Name]: x\r\n\r\n");
}

#[test]
fn nul_byte_in_header_value() {
    rejected_400(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Nul: a\0b\r\n\r\n");
}

#[test]
fn bare_cr_in_header_value() {
    rejected_400(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Cr: a\rb\r\n\r\n");
}

#[test]
fn bare_lf_line_endings() {
    rejected_400(b"GET / HTTP/1.1\nHost: localhost\n\n");
}

#[test]
fn http11_without_host() {
    rejected_400(b"GET / HTTP/1.1\r\nX-Nothing: here\r\n\r\n");
}

#[test]
fn two_host_headers() {
    rejected_400(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n");
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[test]
fn oversized_head_is_431() {
    let (up, gw) = gateway_with(|b| b.limit("max_head_bytes = 4096"));
    // Just under the limit passes.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    assert_eq!(request(gw.port(), ok.as_bytes()).status, 200);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(6000)
    );
    let mut c = gw.client();
    let _ = c.try_send(big.as_bytes());
    let resp = c.try_read_response().expect("431 response");
    assert_problem(&resp, 431);
    assert_eq!(up.heads(), 1);
}

#[test]
fn too_many_headers_is_431() {
    let (up, gw) = gateway_with(|b| b.limit("max_headers = 20"));
    let with_headers = |n: usize| {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
        for i in 0..n {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s.push_str("\r\n");
        s
    };
    assert_eq!(request(gw.port(), with_headers(10).as_bytes()).status, 200);
    let mut c = gw.client();
    let _ = c.try_send(with_headers(30).as_bytes());
    let resp = c.try_read_response().expect("431 response");
    assert_problem(&resp, 431);
    assert_eq!(up.heads(), 1);
}

#[test]
fn overlong_uri_is_414() {
    let (up, gw) = gateway_with(|b| b.limit("max_uri_bytes = 1024"));
    let ok = format!("/{}", "a".repeat(900));
    assert_eq!(get(gw.port(), &ok).status, 200);
    assert_eq!(up.last_request().target, ok);
    let long = format!("/{}", "a".repeat(1500));
    let resp = get(gw.port(), &long);
    assert_problem(&resp, 414);
    assert_eq!(up.heads(), 1);
}

#[test]
fn content_length_over_route_limit_is_413() {
    let (up, gw) = gateway_with(|b| b.route("/", "max_body_bytes = 100"));
    // Exactly at the limit passes.
    let mut raw = b"POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 100));
    assert_eq!(request(gw.port(), &raw).status, 200);
    assert_eq!(up.last_request().body_len, 100);
    // One byte more is rejected from the head alone, before any body is sent.
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(3));
    c.send(b"POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 101\r\n\r\n");
    let resp = c.read_response();
    assert_problem(&resp, 413);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(up.heads(), 1);
}

#[test]
fn chunked_body_over_route_limit_is_413() {
    let (up, gw) = gateway_with(|b| b.route("/", "max_body_bytes = 100"));
    let mut raw =
        b"POST /b HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"40\r\n");
        raw.extend(std::iter::repeat_n(b'y', 64));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = gw.client();
    let _ = c.try_send(&raw);
    let resp = c.try_read_response().expect("413 response");
    assert_problem(&resp, 413);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        up.requests(),
        0,
        "upstream received the oversized body completely"
    );
}

#[test]
fn route_limit_overrides_global_limit() {
    let (up, gw) = gateway_with(|b| {
        b.limit("max_body_bytes = 100")
            .route("/small", "")
            .route("/big", "max_body_bytes = 1000")
    });
    let body = "z".repeat(200);
    let post = |path: &str| {
        request(
            gw.port(),
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    assert_problem(&post("/small"), 413);
    let resp = post("/big");
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_request().body_len, 200);
}
