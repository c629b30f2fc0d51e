//! Black-box tests of the `cflow-load` binary against a local counting HTTP server.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn closed_loop_count_matches_the_server() {
    let _guard = shared();
    let server = TestServer::start(Rules::default());
    let url = server.url("/");
    let result = cflow_json(&["-c", "4", "-d", "1s", "--warmup", "0s", &url]);
    settle();
    let requests = u(&result["requests"]);
    let seen = server.requests();
    assert!(requests > 500, "too few requests: {requests}");
    // Every counted response was a request the server saw; at most one request per
    // connection was still in flight when the window closed.
    assert!(requests <= seen, "counted {requests} > server saw {seen}");
    // The server also saw the one check request sent before the run.
    assert!(
        seen - requests <= 4 + 1,
        "counted {requests}, server saw {seen}"
    );
    assert_eq!(server.connections(), 4 + 1, "4 connections plus the check");
    assert!(result["rx_latency_us"].is_null(), "closed loop: {result}");
}

#[test]
fn warm_up_is_excluded() {
    let _guard = exclusive();
    let server = TestServer::start(Rules::default());
    let url = server.url("/");
    let result = cflow_json(&["-c", "2", "-d", "500ms", "--warmup", "500ms", &url]);
    settle();
    let requests = u(&result["requests"]) as f64;
    let seen = server.requests() as f64;
    // Half of the traffic happened during the warm-up.
    let share = requests / seen;
    assert!((0.3..0.7).contains(&share), "measured {requests} of {seen}");
}

#[test]
fn pipelined_requests_are_all_counted() {
    let _guard = shared();
    let server = TestServer::start(Rules::default());
    let url = server.url("/");
    let result = cflow_json(&[
        "-c",
        "2",
        "--pipeline",
        "8",
        "-d",
        "700ms",
        "--warmup",
        "0s",
        &url,
    ]);
    settle();
    let requests = u(&result["requests"]);
    let seen = server.requests();
    assert!(
        requests > 500 && requests <= seen,
        "counted {requests}, server saw {seen}"
    );
    assert!(
        seen - requests <= 16 + 1,
        "counted {requests}, server saw {seen}"
    );
    assert_eq!(result["errors"]["read"], 0);
}

#[test]
fn status_codes_are_counted_not_errors() {
    let _guard = shared();
    let server = TestServer::start(Rules {
        fail_every: 4,
        ..Rules::default()
    });
    let url = server.url("/");
    let result = cflow_json(&["-c", "4", "-d", "700ms", "--warmup", "0s", &url]);
    let requests = u(&result["requests"]);
    let ok = u(&result["status"]["200"]);
    let unavailable = u(&result["status"]["503"]);
    assert_eq!(ok + unavailable, requests);
    assert_eq!(result["status"].as_object().unwrap().len(), 2);
    let share = unavailable as f64 / requests as f64;
    assert!((0.22..0.28).contains(&share), "503 share {share}");
    for kind in ["connect", "read", "write", "timeout", "parse"] {
        assert_eq!(result["errors"][kind], 0, "{kind}");
    }
}

#[test]
fn json_fields_are_consistent() {
    let _guard = shared();
    let server = TestServer::start(Rules::default());
    let url = server.url("/x?y=1");
    let result = cflow_json(&[
        "-c", "3", "-t", "2", "-d", "600ms", "--warmup", "100ms", &url,
    ]);
    assert_eq!(result["url"], url.as_str());
    assert_eq!(result["mode"], "closed");
    assert_eq!(u(&result["connections"]), 3);
    assert_eq!(u(&result["threads"]), 2);
    assert!((f(&result["duration_s"]) - 0.6).abs() < 1e-9);
    assert!(result["target_rate"].is_null());
    let requests = u(&result["requests"]);
    let rps = f(&result["rps"]);
    assert!((rps - requests as f64 / 0.6).abs() < 1e-6 * rps.max(1.0));
    let latency = &result["latency_us"];
    let order = ["min", "p50", "p90", "p99", "p999", "max"].map(|k| u(&latency[k]));
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{latency}");
    let mean = f(&latency["mean"]);
    assert!(mean >= order[0] as f64 && mean <= order[5] as f64);
    // Each response is "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" (40 bytes).
    assert_eq!(u(&result["bytes_read"]), requests * 40);
    let request_len = format!("GET /x?y=1 HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).len() as u64;
    assert_eq!(u(&result["bytes_written"]), requests * request_len);
    let cpu = f(&result["loadgen_cpu_s"]);
    assert!(cpu > 0.0 && cpu < 2.0 * 0.6 + 0.2, "cpu {cpu}");
}

#[test]
fn human_table_by_default() {
    let _guard = shared();
    let server = TestServer::start(Rules::default());
    let output = cflow(&["-c", "1", "-d", "200ms", "--warmup", "0s", &server.url("/")]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "closed loop",
        "requests",
        "latency µs",
        "p99.9",
        "status       200: ",
        "errors",
        "loadgen cpu",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }
    // No progress line when stderr is not a terminal.
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn open_loop_keeps_the_schedule() {
    let _guard = exclusive();
    let server = TestServer::start(Rules {
        record_times: true,
        ..Rules::default()
    });
    let url = server.url("/");
    let result = cflow_json(&[
        "--rate", "2000", "-c", "16", "-d", "1s", "--warmup", "0s", &url,
    ]);
    settle();
    assert_eq!(result["mode"], "open");
    assert_eq!(f(&result["target_rate"]), 2000.0);
    let requests = u(&result["requests"]);
    assert!((1800..=2200).contains(&requests), "counted {requests}");
    let times = server.seen.times.lock().unwrap().clone();
    assert!(
        (1800..=2200).contains(&times.len()),
        "server saw {}",
        times.len()
    );
    // The first request is the check before the run.
    let first = *times.iter().skip(1).min().unwrap();
    let mut buckets = [0u32; 10];
    for t in times.iter().skip(1) {
        let index = (t.duration_since(first).as_millis() / 100) as usize;
        if index < 10 {
            buckets[index] += 1;
        }
    }
    // 200 requests per 100 ms, evenly spread.
    for (i, &count) in buckets.iter().enumerate() {
        assert!(
            (150..=250).contains(&count),
            "bucket {i}: {count} ({buckets:?})"
        );
    }
}

#[test]
fn open_loop_counts_stalls_from_the_intended_time() {
    let _guard = exclusive();
    // The server takes 30 ms per request. At 20 requests/s one connection keeps up: latency
    // is the service time.
    let server = TestServer::start(Rules {
        delay: Some(Duration::from_millis(30)),
        ..Rules::default()
    });
    let url = server.url("/");
    let result = cflow_json(&[
        "--rate", "20", "-c", "1", "-d", "1s", "--warmup", "0s", &url,
    ]);
    let latency = &result["latency_us"];
    assert!((18..=21).contains(&u(&result["requests"])), "{result}");
    assert!(
        u(&latency["p50"]) >= 30_000 && u(&latency["p50"]) < 45_000,
        "{latency}"
    );
    // The same latencies to the kernel's receive timestamps: the service time too, never
    // after the generator read the response.
    let rx = &result["rx_latency_us"];
    assert!(
        u(&rx["p50"]) >= 30_000 && u(&rx["p50"]) <= u(&latency["p50"]),
        "{rx} vs {latency}"
    );
    assert!(u(&rx["max"]) <= u(&latency["max"]), "{rx} vs {latency}");

    // At 100 requests/s it cannot (one request every 10 ms, each taking 30): the queue
    // grows and latency, counted from each request's intended send time, grows with it
    // (about 20 ms more per request) instead of staying at the 30 ms service time.
    let result = cflow_json(&[
        "--rate", "100", "-c", "1", "-d", "1s", "--warmup", "0s", &url,
    ]);
    let latency = &result["latency_us"];
    let requests = u(&result["requests"]);
    assert!((20..=34).contains(&requests), "{result}");
    assert!(u(&latency["p50"]) > 200_000, "{latency}");
    assert!(u(&latency["max"]) > 400_000, "{latency}");
    assert!(u(&result["rx_latency_us"]["p50"]) > 200_000, "{result}");
}

#[test]
fn open_loop_timeouts_are_counted() {
    let _guard = exclusive();
    let server = TestServer::start(Rules {
        hang: true,
        ..Rules::default()
    });
    let url = server.url("/");
    let result = cflow_json(&[
        "--rate",
        "20",
        "-c",
        "1",
        "-d",
        "1s",
        "--warmup",
        "0s",
        "--timeout",
        "100ms",
        &url,
    ]);
    // One scheduled request every 50 ms; each times out after 100 ms and the next one
    // follows at once on a new connection.
    let timeouts = u(&result["errors"]["timeout"]);
    assert!((8..=11).contains(&timeouts), "timeouts {timeouts}");
    assert_eq!(u(&result["requests"]), 0);
}

#[test]
fn header_file_rotates_per_request() {
    let _guard = shared();
    let server = TestServer::start(Rules {
        record_header: Some("X-Key".into()),
        ..Rules::default()
    });
    let dir = scratch("rotation");
    let file = dir.join("headers");
    std::fs::write(&file, "X-Key: alpha\nX-Key: beta\n\nX-Key: gamma\n").unwrap();
    let url = server.url("/");
    cflow_json(&[
        "-c",
        "4",
        "-t",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "0s",
        "--header-file",
        file.to_str().unwrap(),
        &url,
    ]);
    settle();
    let values = server.seen.header_values.lock().unwrap().clone();
    assert!(values.len() > 300, "{} requests", values.len());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for value in &values {
        *counts.entry(value.as_str()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for key in ["alpha", "beta", "gamma"] {
        let share = counts[key] as f64 / values.len() as f64;
        assert!((0.31..0.36).contains(&share), "{key}: {share} ({counts:?})");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn extra_headers_method_and_body_are_sent() {
    let _guard = shared();
    let server = TestServer::start(Rules {
        record_header: Some("X-Extra".into()),
        ..Rules::default()
    });
    let dir = scratch("body");
    let body = dir.join("body");
    std::fs::write(&body, b"{\"hello\":\"world\"}").unwrap();
    let url = server.url("/post");
    let result = cflow_json(&[
        "-c",
        "1",
        "-d",
        "200ms",
        "--warmup",
        "0s",
        "-m",
        "POST",
        "-H",
        "X-Extra: yes",
        "--body-file",
        body.to_str().unwrap(),
        &url,
    ]);
    settle();
    let requests = u(&result["requests"]);
    assert!(requests > 10);
    let values = server.seen.header_values.lock().unwrap().clone();
    assert!(values.iter().all(|v| v == "yes") && values.len() as u64 >= requests);
    // The server parsed every body by its Content-Length: no framing errors, every
    // response counted.
    assert_eq!(u(&result["status"]["200"]), requests);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hgrm_and_plot_files_are_written() {
    let _guard = shared();
    let server = TestServer::start(Rules::default());
    let dir = scratch("files");
    let hgrm = dir.join("latency.hgrm");
    let plot = dir.join("latency.svg");
    let result = cflow_json(&[
        "-c",
        "2",
        "-d",
        "300ms",
        "--warmup",
        "0s",
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        &server.url("/"),
    ]);
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.split_whitespace().eq([
        "Value",
        "Percentile",
        "TotalCount",
        "1/(1-Percentile)"
    ]));
    assert_eq!(lines.next(), Some(""));
    let rows: Vec<Vec<f64>> = lines
        .clone()
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() > 10);
    for pair in rows.windows(2) {
        assert!(pair[0][0] <= pair[1][0] && pair[0][1] <= pair[1][1] && pair[0][2] <= pair[1][2]);
    }
    let last = rows.last().unwrap();
    assert_eq!(last[1], 1.0);
    assert_eq!(last[2] as u64, u(&result["requests"]));
    assert_eq!(last[0] as u64, u(&result["latency_us"]["max"]));
    assert!(text.contains(&format!("Total count    = {:>12}]", u(&result["requests"]))));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn timeouts_are_counted_and_connections_reopened() {
    let _guard = exclusive();
    let server = TestServer::start(Rules {
        hang: true,
        ..Rules::default()
    });
    let result = cflow_json(&[
        "-c",
        "2",
        "-d",
        "1s",
        "--warmup",
        "0s",
        "--timeout",
        "200ms",
        &server.url("/"),
    ]);
    let timeouts = u(&result["errors"]["timeout"]);
    // Each connection times out every 200 ms; the last wait is cut by the end of the run.
    assert!((6..=10).contains(&timeouts), "timeouts {timeouts}");
    assert!(
        server.connections() > 1 + 2 + 4,
        "connections {}",
        server.connections()
    );
    assert_eq!(u(&result["requests"]), 0);
    assert_eq!(u(&result["latency_us"]["max"]), 0);
}

#[test]
fn connection_close_responses_reconnect() {
    let _guard = shared();
    let server = TestServer::start(Rules {
        close_each: true,
        ..Rules::default()
    });
    let result = cflow_json(&["-c", "2", "-d", "500ms", "--warmup", "0s", &server.url("/")]);
    settle();
    let requests = u(&result["requests"]);
    assert!(requests > 50, "requests {requests}");
    assert_eq!(result["errors"]["read"], 0);
    assert_eq!(result["errors"]["connect"], 0);
    // One connection per request.
    assert!(
        server.connections() >= requests,
        "{} connections",
        server.connections()
    );
}

#[test]
fn chunked_responses() {
    let _guard = shared();
    let server = TestServer::start(Rules {
        chunked: true,
        ..Rules::default()
    });
    let result = cflow_json(&[
        "-c",
        "2",
        "--pipeline",
        "3",
        "-d",
        "300ms",
        "--warmup",
        "0s",
        &server.url("/"),
    ]);
    assert!(u(&result["requests"]) > 50);
    assert_eq!(result["errors"]["parse"], 0);
    assert_eq!(result["errors"]["read"], 0);
}

#[test]
fn https_and_mutual_tls() {
    let _guard = shared();
    let server = TestServer::start_tls(Rules::default(), false);
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    let ca = fixture("ca.pem");
    let ca = ca.to_str().unwrap();
    let result = cflow_json(&["-c", "2", "-d", "300ms", "--warmup", "0s", "--ca", ca, &url]);
    assert!(u(&result["requests"]) > 50);
    assert_eq!(result["errors"]["read"], 0);
    assert_eq!(u(&result["bytes_read"]), u(&result["requests"]) * 40);

    // SNI override: the certificate also names gateway.test.
    let result = cflow_json(&[
        "-c",
        "1",
        "-d",
        "200ms",
        "--warmup",
        "0s",
        "--ca",
        ca,
        "--sni",
        "gateway.test",
        &url,
    ]);
    assert!(u(&result["requests"]) > 10);

    // A name the certificate does not have fails before the run.
    let output = cflow(&[
        "-c",
        "1",
        "-d",
        "200ms",
        "--ca",
        ca,
        "--sni",
        "other.test",
        &url,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("TLS handshake"));

    let mtls = TestServer::start_tls(Rules::default(), true);
    let url = format!("https://localhost:{}/", mtls.addr.port());
    let (cert, key) = (fixture("client.pem"), fixture("client.key"));
    let result = cflow_json(&[
        "-c",
        "2",
        "-d",
        "300ms",
        "--warmup",
        "0s",
        "--ca",
        ca,
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &url,
    ]);
    assert!(u(&result["requests"]) > 50);
    // Without the client certificate the server refuses the handshake.
    let output = cflow(&["-c", "1", "-d", "200ms", "--ca", ca, &url]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn tls_sessions_resume_unless_no_resume() {
    let _guard = shared();
    let ca = fixture("ca.pem");
    let ca = ca.to_str().unwrap();
    let close_each = Rules {
        close_each: true,
        ..Rules::default()
    };

    // A new connection per request (the server closes each one): with the shared client
    // configuration every connection after the first few resumes a session from a ticket.
    let server = TestServer::start_tls(close_each.clone(), false);
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    let result = cflow_json(&["-c", "2", "-d", "500ms", "--warmup", "0s", "--ca", ca, &url]);
    settle();
    let requests = u(&result["requests"]);
    assert!(requests > 50, "requests {requests}");
    let tls = &result["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{tls}");
    assert_eq!(tls["resumption"], true);
    let (handshakes, resumed) = (u(&tls["handshakes"]), u(&tls["resumed"]));
    // One handshake per request; at the end each connection may have one without a response.
    assert!(
        (requests..=requests + 2).contains(&handshakes),
        "{handshakes} handshakes for {requests} requests"
    );
    assert!(
        resumed + 2 >= handshakes,
        "{resumed} of {handshakes} resumed"
    );
    assert!(
        server.tls_resumed() >= resumed,
        "server saw {}",
        server.tls_resumed()
    );
    let table = cflow(&["-c", "1", "-d", "200ms", "--warmup", "0s", "--ca", ca, &url]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("tls          TLSv1.3 "), "{table}");
    assert!(table.contains(" resumed ("), "{table}");

    // --no-resume: every connection does a full handshake, the check connection's too.
    let server = TestServer::start_tls(close_each, false);
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    let result = cflow_json(&[
        "-c",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "0s",
        "--no-resume",
        "--ca",
        ca,
        &url,
    ]);
    settle();
    let requests = u(&result["requests"]);
    assert!(requests > 50, "requests {requests}");
    let tls = &result["tls"];
    assert_eq!(tls["resumption"], false);
    assert!(u(&tls["handshakes"]) >= requests, "{tls}");
    assert_eq!(u(&tls["resumed"]), 0, "{tls}");
    assert!(server.tls_handshakes() > requests);
    assert_eq!(server.tls_resumed(), 0);

    // Plain http has no TLS figures.
    let plain = TestServer::start(Rules::default());
    let result = cflow_json(&["-c", "1", "-d", "100ms", "--warmup", "0s", &plain.url("/")]);
    assert!(result["tls"].is_null());
}

/// Runs with `args` and checks for exit status 1 and a single error line.
fn fails_with_one_line(args: &[&str], expected: &str) {
    let output = cflow(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?} printed a result");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].starts_with("cflow-load: error: "), "{}", lines[0]);
    assert!(
        lines[0].contains(expected),
        "{args:?}: '{}' lacks '{expected}'",
        lines[0]
    );
}

#[test]
fn bad_input_fails_with_one_line() {
    let _guard = shared();
    let port = closed_port();
    let unreachable = format!("http://127.0.0.1:{port}/");
    fails_with_one_line(&["-d", "1s", &unreachable], "cannot connect");
    fails_with_one_line(&["ftp://127.0.0.1/"], "invalid URL");
    fails_with_one_line(&["http://"], "invalid URL");
    fails_with_one_line(&["http://127.0.0.1:99999/"], "invalid URL");
    fails_with_one_line(&["-d", "10x", &unreachable], "--duration");
    fails_with_one_line(&["--warmup", "soon", &unreachable], "--warmup");
    fails_with_one_line(
        &["--header-file", "/nonexistent/headers", &unreachable],
        "header file",
    );
    fails_with_one_line(
        &["--body-file", "/nonexistent/body", &unreachable],
        "body file",
    );
    fails_with_one_line(&["-H", "no colon", &unreachable], "--header");
    fails_with_one_line(
        &["--rate", "100", "--pipeline", "2", &unreachable],
        "--pipeline",
    );
    fails_with_one_line(&["https://127.0.0.1:1/"], "--ca");
    fails_with_one_line(
        &["--ca", "/nonexistent/ca.pem", "https://127.0.0.1:1/"],
        "CA bundle",
    );
    fails_with_one_line(&["http://no-such-host.invalid/"], "resolve");
    // Usage errors found by clap exit with 2.
    let output = cflow(&["--no-such-flag", &unreachable]);
    assert_eq!(output.status.code(), Some(2));
    let output = cflow(&[]);
    assert_eq!(output.status.code(), Some(2));
}
