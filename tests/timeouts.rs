//! Client-side timeouts: `head_timeout` (slowloris drip-fed heads),
//! `idle_timeout` (keep-alive connections idle between requests) and
//! `body_timeout` (stalled request bodies and stalled upstream response
//! bodies).

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

#[test]
fn slowloris_head_is_cut_off() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("head_timeout = \"1s\"")
        .start();
    let start = Instant::now();
    let mut c = gw.client();
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
    c.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut received = Vec::new();
    let mut tmp = [0u8; 4096];
    let closed_after = 'outer: loop {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "drip-fed connection still open after 8 s"
        );
        // Wait up to 200 ms for a response or the close.
        loop {
            match c.stream.read(&mut tmp) {
                Ok(0) => break 'outer start.elapsed(),
                Ok(n) => received.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(_) => break 'outer start.elapsed(),
            }
        }
        if c.stream.write_all(b"a").is_err() {
            break start.elapsed();
        }
    };
    assert!(
        closed_after < Duration::from_millis(3500),
        "slowloris connection closed only after {closed_after:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(800),
        "connection closed after {closed_after:?}, before head_timeout could elapse"
    );
    if !received.is_empty() {
        let text = String::from_utf8_lossy(&received);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "only a 408 may be written, got {text:?}"
        );
    }
    assert_eq!(up.heads(), 0);
}

#[test]
fn quick_requests_are_not_affected_by_head_timeout() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("head_timeout = \"1s\"")
        .start();
    let mut c = gw.client();
    for i in 0..3 {
        assert_eq!(c.get(&format!("/q/{i}")).status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn idle_keepalive_connection_is_closed_silently() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("idle_timeout = \"1s\"")
        .start();
    let mut c = gw.client();
    assert_eq!(c.get("/idle").status, 200);
    let out = c.read_to_eof_or_timeout(Duration::from_secs(5));
    assert!(out.closed, "idle connection not closed within 5 s");
    assert!(
        out.elapsed < Duration::from_secs(3),
        "idle connection closed only after {:?}",
        out.elapsed
    );
    assert!(
        out.elapsed >= Duration::from_millis(700),
        "connection closed after {:?}, too early for idle_timeout = 1s",
        out.elapsed
    );
    assert!(
        out.data.is_empty(),
        "idle close must be silent, got {:?}",
        String::from_utf8_lossy(&out.data)
    );
}

#[test]
fn active_keepalive_connection_survives_idle_timeout() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("idle_timeout = \"1s\"")
        .start();
    let mut c = gw.client();
    for i in 0..6 {
        let resp = c.get(&format!("/active/{i}"));
        assert_eq!(resp.status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(up.requests(), 6);
}

#[test]
fn stalled_request_body_times_out() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("body_timeout = \"1s\"")
        .start();
    let mut c = gw.client();
    c.send(b"POST /stall HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nhello");
    let out = c.read_to_eof_or_timeout(Duration::from_secs(6));
    assert!(out.closed, "stalled request body did not time out");
    assert!(
        out.elapsed < Duration::from_millis(3500),
        "stalled body connection closed only after {:?}",
        out.elapsed
    );
    if !out.data.is_empty() {
        let text = String::from_utf8_lossy(&out.data);
        assert!(
            text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 400"),
            "unexpected response to a stalled body: {text:?}"
        );
    }
    assert_eq!(up.requests(), 0);
}

#[test]
fn stalled_upstream_response_body_times_out() {
    // Promises 100 bytes, sends 10, then stalls with the connection open.
    let up = TestUpstream::start(Mode::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
    ));
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("body_timeout = \"1s\"")
        .start();
    let mut c = gw.client();
    c.send(b"GET /stall HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    let out = c.read_to_eof_or_timeout(Duration::from_secs(6));
    assert!(
        out.closed,
        "client connection not closed after the upstream body stalled"
    );
    assert!(
        out.elapsed < Duration::from_millis(3500),
        "closed only after {:?}",
        out.elapsed
    );
    assert!(
        out.data.len() < 100,
        "a truncated body must not look complete"
    );
}
