//! The gateway under pressure: a core never blocks on a log line (stderr a pipe nobody reads),
//! and running out of file descriptors under a connection flood degrades and recovers.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A gateway (one worker) whose stderr is a pipe nobody reads, started by `program args…`
/// (the config file's path is appended), with `CREDENTIALFLOW_LOG=level`; returns once it
/// listens.
struct UnreadGateway {
    child: std::process::Child,
    _stderr: Option<std::process::ChildStderr>,
    _config: TempFile,
    _up: TestUpstream,
    port: u16,
}

impl UnreadGateway {
    fn start(program: &str, args: &[&str], level: &str, upstream: &[&str]) -> UnreadGateway {
        let up = TestUpstream::start(Mode::Echo);
        let port = free_port();
        let mut builder = ConfigBuilder::new(port, &[up.port]).workers(1);
        for line in upstream {
            builder = builder.upstream_opt(line);
        }
        let config = TempFile::new(&builder.build(), "toml");
        let mut child = Command::new(program)
            .args(args)
            .arg(config.path_str())
            .env("CREDENTIALFLOW_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn credentialflow");
        let stderr = child.stderr.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::try_connect(port).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        UnreadGateway {
            child,
            _stderr: stderr,
            _config: config,
            _up: up,
            port,
        }
    }
}

impl Drop for UnreadGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stalled_stderr_does_not_stop_the_gateway() {
    // Once the pipe's buffer is full, a blocking write would stall the writer forever.
    let gw = UnreadGateway::start(bin(), &["run", "-c"], "debug", &[]);
    let port = gw.port;
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
}

#[test]
fn a_connection_flood_past_the_descriptor_limit_degrades_and_recovers() {
    // 256 descriptors, soft and hard, so the gateway cannot raise the limit.
    let script = "ulimit -n 256 && exec \"$0\" run -c \"$1\"";
    // No upstream keep-alive: every request needs a new upstream descriptor, which the
    // connection budget keeps in reserve while clients flood in.
    let gw = UnreadGateway::start("sh", &["-c", script, bin()], "info", &["keepalive = 0"]);
    let port = gw.port;
    let mut established = Client::connect(port);
    assert_eq!(established.get("/before").status, 200);

    let mut flood = Vec::new();
    for _ in 0..1000 {
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            flood.push(stream);
        }
    }
    assert!(
        flood.len() > 300,
        "the flood did not get past the limit: {}",
        flood.len()
    );
    // The established connection is served throughout.
    for i in 0..5 {
        assert_eq!(established.get(&format!("/during/{i}")).status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(flood);

    let started = Instant::now();
    let resp = loop {
        match Client::try_connect(port).and_then(|mut c| c.try_get("/after")) {
            Ok(resp) => break resp,
            Err(err) => {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "no recovery within 2 s: {err}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(resp.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(established.get("/after").status, 200);
    let mut gw = gw;
    assert!(
        gw.child.try_wait().expect("status").is_none(),
        "the gateway exited"
    );
}

/// Connect pacing: 200 new clients send their first request at once to a one-worker gateway
/// whose upstream keeps 4 idle connections and answers after 20 ms. At most 8 connects run at
/// a time; the other requests wait for a connect slot or a returning connection. Every one
/// must be answered well within the connect timeout (5 s): a lost wake-up would leave requests
/// waiting that long.
#[test]
fn a_burst_of_new_clients_is_served_through_paced_upstream_connects() {
    let up = TestUpstream::start(Mode::Delay(Duration::from_millis(20)));
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .workers(1)
        .upstream_opt("keepalive = 4")
        .upstream_opt("connect_timeout = \"5s\"")
        .start();
    let port = gw.port();
    let clients = 200;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                barrier.wait();
                let resp = client.get(&format!("/burst/{i}"));
                (
                    resp.status,
                    resp.header("x-echo-target").map(str::to_string),
                )
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (status, target) = handle.join().expect("client thread");
        assert_eq!(status, 200, "client {i}");
        assert_eq!(target.as_deref(), Some(format!("/burst/{i}").as_str()));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "the burst took {took:?}");
    assert_eq!(up.requests(), clients);
    assert!(
        up.connections() <= clients,
        "{} upstream connections",
        up.connections()
    );
}
