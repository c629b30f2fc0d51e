//! Logging never blocks a core: with stderr a pipe that nobody reads, a flood of logged events
//! fills the pipe, and the gateway keeps serving.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_stalled_stderr_does_not_stop_the_gateway() {
    let up = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let config = TempFile::new(
        &ConfigBuilder::new(port, &[up.port]).workers(1).build(),
        "toml",
    );
    // stderr is a pipe that is never read: once its buffer is full, a blocking write would
    // stall the writer forever.
    let mut child = Command::new(bin())
        .args(["run", "-c", &config.path_str()])
        .env("CREDENTIALFLOW_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn credentialflow");
    let _stderr = child.stderr.take();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::try_connect(port).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each refused path is logged at debug: far more than a pipe buffer holds.
    let mut keep_alive = Client::connect(port);
    assert_eq!(keep_alive.get("/before").status, 200);
    for i in 0..3000 {
        let resp = request(
            port,
            format!(
                "GET /bad/%zz/{i}/{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
                "x".repeat(200)
            )
            .as_bytes(),
        );
        assert_eq!(resp.status, 400, "request {i}");
    }
    let started = Instant::now();
    assert_eq!(get(port, "/after").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        keep_alive.get("/still").status,
        200,
        "an established connection is served"
    );
    let _ = child.kill();
    let _ = child.wait();
}
