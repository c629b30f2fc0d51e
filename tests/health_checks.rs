//! Active health checks (`[upstreams.health_check]`): a target whose check fails gets no
//! requests (not even half-open probes) until a check passes again; when every target fails
//! its check the answer is 503; the checks use the configured path; a reload that drops the
//! checks brings a checked-down target back. (Config validation: tests/config_cli.rs.)

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A test upstream whose `/healthz` answers 200 while `healthy` holds and 503 otherwise; any
/// other path answers 200 with `X-Upstream-Port`.
fn checked_upstream(healthy: Arc<AtomicBool>) -> TestUpstream {
    let port = free_port();
    let handler: Handler = Arc::new(move |req: &RecordedRequest| {
        let (status, body) = if req.target == "/healthz" {
            if healthy.load(Ordering::SeqCst) {
                ("200 OK", "ok")
            } else {
                ("503 Service Unavailable", "down")
            }
        } else {
            ("200 OK", "served")
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Upstream-Port: {port}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    TestUpstream::start_on(port, Mode::Func(handler))
}

/// Requests the upstream received other than health checks.
fn served(up: &TestUpstream) -> usize {
    up.recorded()
        .iter()
        .filter(|r| r.target != "/healthz")
        .count()
}

fn checks(up: &TestUpstream) -> Vec<RecordedRequest> {
    up.recorded()
        .into_iter()
        .filter(|r| r.target == "/healthz")
        .collect()
}

const FAST_CHECKS: &str = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 1, healthy_threshold = 1 }";

/// Sends requests until `done` says yes about a response (or 5 s pass); returns whether it did.
fn until(port: u16, mut done: impl FnMut(&Response) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if done(&get(port, "/work")) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_target_failing_its_check_gets_no_requests_until_it_passes_again() {
    let (a_ok, b_ok) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let a = checked_upstream(a_ok.clone());
    let b = checked_upstream(b_ok.clone());
    let gw = ConfigBuilder::new(free_port(), &[a.port, b.port])
        .upstream_opt("balance = \"round_robin\"")
        .upstream_opt(FAST_CHECKS)
        .start();
    for _ in 0..4 {
        assert_eq!(get(gw.port(), "/work").status, 200);
    }
    assert!(
        served(&a) >= 1 && served(&b) >= 1,
        "both serve while both pass"
    );

    // A fails its check: within a few intervals every request goes to B.
    a_ok.store(false, Ordering::SeqCst);
    let mut from_b_in_a_row = 0;
    assert!(
        until(gw.port(), |resp| {
            assert_eq!(resp.status, 200, "B keeps serving: {}", resp.body_str());
            if resp.header("x-upstream-port") == Some(&b.port.to_string()) {
                from_b_in_a_row += 1;
            } else {
                from_b_in_a_row = 0;
            }
            from_b_in_a_row >= 10
        }),
        "A still got requests after failing its checks"
    );
    let a_served = served(&a);
    for _ in 0..10 {
        let resp = get(gw.port(), "/work");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("x-upstream-port"),
            Some(b.port.to_string().as_str())
        );
    }
    assert_eq!(served(&a), a_served, "A got requests while down");

    // A passes again: it serves again.
    a_ok.store(true, Ordering::SeqCst);
    assert!(
        until(gw.port(), |resp| {
            resp.header("x-upstream-port") == Some(&a.port.to_string())
        }),
        "A never served again after passing its check"
    );

    // The checks ask for the configured path, with a Host header, and close.
    let seen = checks(&a);
    assert!(seen.len() >= 3, "checks seen: {}", seen.len());
    let check = &seen[0];
    assert_eq!(check.method, "GET");
    assert_eq!(
        check.header("host"),
        Some(format!("127.0.0.1:{}", a.port).as_str())
    );
    assert_eq!(check.header("connection"), Some("close"));
}

#[test]
fn every_target_failing_its_check_is_503_with_no_probe_until_one_passes() {
    let ok = Arc::new(AtomicBool::new(true));
    let up = checked_upstream(ok.clone());
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .upstream_opt(FAST_CHECKS)
        .start();
    assert_eq!(get(gw.port(), "/work").status, 200);

    ok.store(false, Ordering::SeqCst);
    assert!(
        until(gw.port(), |resp| resp.status == 503),
        "still served after the only target failed its check"
    );
    let resp = get(gw.port(), "/work");
    assert_problem(&resp, 503);
    // Past the one-second half-open probe interval: still no request reaches it, because the
    // check, not a passive ejection, took it out.
    let before = served(&up);
    let quiet_until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < quiet_until {
        assert_eq!(get(gw.port(), "/work").status, 503);
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        served(&up),
        before,
        "a request reached a target that fails its check"
    );

    ok.store(true, Ordering::SeqCst);
    let back = Instant::now();
    assert!(
        until(gw.port(), |resp| resp.status == 200),
        "never served again"
    );
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "served again only after {:?}",
        back.elapsed()
    );
}

#[test]
fn a_reload_that_drops_the_checks_brings_a_checked_down_target_back() {
    let ok = Arc::new(AtomicBool::new(false));
    let up = checked_upstream(ok.clone());
    let builder = ConfigBuilder::new(free_port(), &[up.port]);
    let gw = builder.clone().upstream_opt(FAST_CHECKS).start();
    assert!(
        until(gw.port(), |resp| resp.status == 503),
        "a target failing its check from the start was served"
    );
    std::fs::write(gw.config_path(), builder.build()).unwrap();
    gw.signal("HUP");
    assert!(
        until(gw.port(), |resp| resp.status == 200),
        "still 503 after a reload without health checks"
    );
    assert!(!checks(&up).is_empty());
}
