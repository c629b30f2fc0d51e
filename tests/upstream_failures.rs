//! Upstream failure handling: unreachable targets (502), response timeouts
//! (504), malformed or truncated upstream responses (502 / closed client
//! connection), passive health checks with ejection (503) and re-admission
//! after `fail_timeout`, and retrying idempotent requests on another target
//! after a connect failure.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn upstream_down_is_502() {
    let dead = free_port();
    let gw = ConfigBuilder::new(free_port(), &[dead])
        .upstream_opt("connect_timeout = \"1s\"")
        .start();
    let start = Instant::now();
    let resp = get(gw.port(), "/down");
    assert_problem(&resp, 502);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(resp.header("x-request-id").is_some());
}

#[test]
fn upstream_never_answering_is_504() {
    let up = TestUpstream::start(Mode::NeverAnswer);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .upstream_opt("response_timeout = \"500ms\"")
        .start();
    let start = Instant::now();
    let resp = get(gw.port(), "/slow");
    let elapsed = start.elapsed();
    assert_problem(&resp, 504);
    assert!(
        elapsed >= Duration::from_millis(400),
        "504 after only {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "504 only after {elapsed:?}"
    );
    assert_eq!(up.heads(), 1);
}

#[test]
fn upstream_response_with_cl_and_te_is_502() {
    let up = TestUpstream::start(Mode::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
    ));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let resp = get(gw.port(), "/bad");
    assert_problem(&resp, 502);
}

#[test]
fn upstream_garbage_status_line_is_502() {
    let up = TestUpstream::start(Mode::Raw(b"THIS IS NOT HTTP\r\n\r\n".to_vec()));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let resp = get(gw.port(), "/garbage");
    assert_problem(&resp, 502);
}

#[test]
fn upstream_closing_without_response_is_502() {
    let up = TestUpstream::start(Mode::RawThenClose(Vec::new()));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let resp = get(gw.port(), "/hangup");
    assert_problem(&resp, 502);
    assert!(up.heads() >= 1);
}

#[test]
fn truncated_upstream_body_closes_client_connection() {
    let up = TestUpstream::start(Mode::RawThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
    ));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let mut c = gw.client();
    c.send(b"GET /trunc HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    let out = c.read_to_eof_or_timeout(Duration::from_secs(5));
    assert!(
        out.closed,
        "client connection must be closed when the upstream body is truncated"
    );
    assert!(out.data.len() < 100);
}

#[test]
fn gateway_keeps_serving_after_upstream_errors() {
    let up = TestUpstream::start(Mode::Raw(b"garbage\r\n\r\n".to_vec()));
    let good = TestUpstream::start(Mode::Echo);
    let listen = free_port();
    let config = format!(
        r#"[gateway]
workers = 1
pin = false

[[listeners]]
name = "public"
address = "127.0.0.1:{listen}"

[[upstreams]]
name = "bad"
targets = ["127.0.0.1:{bad}"]

[[upstreams]]
name = "good"
targets = ["127.0.0.1:{good}"]

[[apis]]
name = "demo"

[[apis.routes]]
path = "/bad"
upstream = "bad"

[[apis.routes]]
path = "/good"
upstream = "good"
"#,
        bad = up.port,
        good = good.port
    );
    let gw = Gateway::start(&config);
    let mut c = gw.client();
    for _ in 0..3 {
        assert_problem(&get(gw.port(), "/bad/x"), 502);
        let resp = c.get("/good/x");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-echo-target"), Some("/good/x"));
    }
    assert_eq!(good.requests(), 3);
}

#[test]
fn all_targets_ejected_gives_503_then_recovers() {
    let port = free_port();
    let gw = ConfigBuilder::new(free_port(), &[port])
        .upstream_opt("max_fails = 1")
        .upstream_opt("fail_timeout = \"1s\"")
        .upstream_opt("connect_timeout = \"500ms\"")
        .start();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let resp = get(gw.port(), "/x");
        statuses.push(resp.status);
        assert!(
            resp.status == 502 || resp.status == 503,
            "unexpected status {} while the target is down",
            resp.status
        );
        assert_problem(&resp, resp.status);
        if resp.status == 503 {
            break;
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&503),
        "the only target was never ejected: {statuses:?}"
    );

    // Bring the target up; once fail_timeout has elapsed it is re-admitted.
    let up = TestUpstream::start_on(port, Mode::Echo);
    thread::sleep(Duration::from_millis(1200));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = 0;
    while Instant::now() < deadline {
        last = get(gw.port(), "/x").status;
        if last == 200 {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last, 200, "target not re-admitted after fail_timeout");
    for _ in 0..3 {
        assert_eq!(get(gw.port(), "/x").status, 200);
    }
    assert!(up.requests() >= 4);
}

#[test]
fn a_returning_target_serves_again_within_a_second_of_coming_back() {
    // fail_timeout is long: without probing, the target would stay out for 30 s.
    let port = free_port();
    let gw = ConfigBuilder::new(free_port(), &[port])
        .upstream_opt("max_fails = 1")
        .upstream_opt("fail_timeout = \"30s\"")
        .start();
    let first = get(gw.port(), "/x");
    assert_problem(&first, 502);
    let ejected = get(gw.port(), "/x");
    assert_problem(&ejected, 503);
    let up = TestUpstream::start_on(port, Mode::Echo);
    let back = Instant::now();
    let mut statuses = Vec::new();
    while Instant::now() < back + Duration::from_secs(3) {
        let status = get(gw.port(), "/x").status;
        statuses.push(status);
        if status == 200 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(
        back.elapsed() <= Duration::from_millis(1500),
        "served again only after {:?}: {statuses:?}",
        back.elapsed()
    );
    for _ in 0..3 {
        assert_eq!(get(gw.port(), "/x").status, 200, "the probe re-admitted it");
    }
    assert!(up.requests() >= 4);
}

#[test]
fn ejected_target_is_skipped_while_healthy_one_serves() {
    let dead = free_port();
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[dead, up.port])
        .upstream_opt("balance = \"round_robin\"")
        .upstream_opt("max_fails = 1")
        .upstream_opt("fail_timeout = \"30s\"")
        .start();
    for i in 0..10 {
        let resp = get(gw.port(), &format!("/e/{i}"));
        assert_eq!(resp.status, 200, "request {i} failed: {}", resp.body_str());
    }
    assert_eq!(up.requests(), 10);
}

#[test]
fn idempotent_request_is_retried_on_other_target() {
    let dead = free_port();
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[dead, up.port])
        .upstream_opt("balance = \"round_robin\"")
        .upstream_opt("max_fails = 100")
        .start();
    let mut c = gw.client();
    for i in 0..10 {
        let resp = c.get(&format!("/retry/{i}"));
        assert_eq!(resp.status, 200, "request {i} failed: {}", resp.body_str());
        assert_eq!(
            resp.header("x-upstream-port"),
            Some(up.port.to_string().as_str())
        );
    }
    for i in 0..4 {
        let resp = get(gw.port(), &format!("/retry-new/{i}"));
        assert_eq!(resp.status, 200);
    }
    assert_eq!(up.requests(), 14);
}
