//! Graceful shutdown: on SIGTERM/SIGINT the gateway stops accepting (new
//! connections are refused, both while draining and after exit), lets
//! in-flight requests finish, closes idle keep-alive connections, and exits
//! with status 0 within `drain_timeout`; requests that outlive the drain
//! deadline do not keep the process alive.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = TestUpstream::start(Mode::Delay(Duration::from_millis(800)));
    let mut gw = ConfigBuilder::new(free_port(), &[up.port])
        .drain_timeout("5s")
        .start();
    let port = gw.port();
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let done = done.clone();
            thread::spawn(move || {
                let mut c = Client::connect(port);
                let path = format!("/inflight/{i}");
                let resp = c.try_get(&path);
                done.fetch_add(1, Ordering::SeqCst);
                resp.map(|r| (r.status, r.header("x-echo-target").map(str::to_string)))
            })
        })
        .collect();
    assert!(
        up.wait_heads(20, Duration::from_secs(5)),
        "only {} of 20 requests reached the upstream",
        up.heads()
    );
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "requests finished before SIGTERM; the upstream delay is too short"
    );
    let signalled = Instant::now();
    gw.signal("TERM");
    // While the in-flight requests drain, the listener is already closed.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "requests finished too early to observe the drain phase"
    );
    assert!(
        Client::try_connect(port).is_err(),
        "gateway accepted a new connection while draining"
    );
    for (i, h) in clients.into_iter().enumerate() {
        let result = h.join().expect("client thread");
        match result {
            Ok((status, target)) => {
                assert_eq!(status, 200, "in-flight request {i}");
                assert_eq!(target, Some(format!("/inflight/{i}")));
            }
            Err(e) => panic!("in-flight request {i} failed during drain: {e}"),
        }
    }
    let status = gw
        .wait_exit(Duration::from_secs(7))
        .expect("gateway did not exit after SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} with drain_timeout = 5s"
    );
    assert!(
        Client::try_connect(port).is_err(),
        "gateway still accepts connections after exiting"
    );
}

#[test]
fn sigint_exits_zero() {
    let up = TestUpstream::start(Mode::Echo);
    let mut gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    assert_eq!(get(gw.port(), "/before").status, 200);
    gw.signal("INT");
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway did not exit after SIGINT");
    assert_eq!(status.code(), Some(0), "exit status after SIGINT: {status}");
    assert!(Client::try_connect(gw.port()).is_err());
}

#[test]
fn idle_keepalive_connections_do_not_delay_shutdown() {
    let up = TestUpstream::start(Mode::Echo);
    let mut gw = ConfigBuilder::new(free_port(), &[up.port])
        .drain_timeout("10s")
        .start();
    let mut idle = gw.client();
    assert_eq!(idle.get("/warm").status, 200);
    let signalled = Instant::now();
    gw.signal("TERM");
    let out = idle.read_to_eof_or_timeout(Duration::from_secs(5));
    assert!(
        out.closed,
        "idle keep-alive connection not closed on shutdown"
    );
    let status = gw
        .wait_exit(Duration::from_secs(8))
        .expect("gateway did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "idle connections held shutdown for {:?}",
        signalled.elapsed()
    );
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let up = TestUpstream::start(Mode::NeverAnswer);
    let mut gw = ConfigBuilder::new(free_port(), &[up.port])
        .drain_timeout("1s")
        .upstream_opt("response_timeout = \"60s\"")
        .start();
    let port = gw.port();
    let stuck = thread::spawn(move || {
        let mut c = Client::connect(port);
        c.send(b"GET /stuck HTTP/1.1\r\nHost: localhost\r\n\r\n");
        c.read_to_eof_or_timeout(Duration::from_secs(8)).closed
    });
    assert!(up.wait_heads(1, Duration::from_secs(5)));
    let signalled = Instant::now();
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(6));
    let took = signalled.elapsed();
    assert!(status.is_some(), "gateway ignored drain_timeout = 1s");
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} with drain_timeout = 1s"
    );
    assert!(
        stuck.join().expect("client thread"),
        "stuck client connection not closed"
    );
}
