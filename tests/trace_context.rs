//! W3C trace context at the edge, black-box: a valid `traceparent` is continued upstream (same
//! trace id and flags, the gateway's span id as parent) with its `tracestate`; an absent or
//! invalid one is replaced by a new sampled trace (and an orphaned `tracestate` dropped); the
//! access log names what went upstream; `trace_context = "forward"` passes the client's fields
//! through untouched; the client's `X-Request-Id` is kept.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Setup {
    gw: Gateway,
    up: TestUpstream,
    log: PathBuf,
}

fn start(mode: &str) -> Setup {
    let up = TestUpstream::start(Mode::Echo);
    let log = unique_temp_path("d").join("access.jsonl");
    let text = ConfigBuilder::new(free_port(), &[up.port])
        .route("/api", "")
        .build()
        .replacen(
            "[logging]\n",
            &format!(
                "[logging]\naccess_log = \"{}\"\ntrace_context = \"{mode}\"\n",
                log.display()
            ),
            1,
        );
    Setup {
        gw: Gateway::start(&text),
        up,
        log,
    }
}

/// Sends `GET /api` with `headers`; returns what the upstream received.
fn through(s: &Setup, headers: &[(&str, &str)]) -> RecordedRequest {
    let before = s.up.requests();
    let response = get_with(s.gw.port(), "/api", headers);
    assert_passed(&response, &s.up, before)
}

/// The access log's records, once it holds `n`.
fn records(s: &Setup, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(json).collect();
        if lines.len() >= n || Instant::now() >= deadline {
            assert_eq!(lines.len(), n, "{text}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn only(seen: &RecordedRequest, name: &str) -> Option<String> {
    let values = seen.headers_all(name);
    assert!(values.len() <= 1, "{name} sent twice: {values:?}");
    values.first().map(|v| v.to_string())
}

fn assert_well_formed(traceparent: &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert!(parts[1..].iter().all(|p| p
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));
}

#[test]
fn a_valid_trace_is_continued_under_the_gateways_span_with_its_state() {
    let s = start("start");
    let seen = through(
        &s,
        &[
            ("traceparent", VALID),
            ("tracestate", "vendor=abc"),
            ("X-Request-Id", "req-42"),
        ],
    );
    let sent = only(&seen, "traceparent").expect("traceparent upstream");
    assert_well_formed(&sent);
    assert_eq!(&sent[..36], &VALID[..36], "same version and trace id");
    assert_eq!(&sent[52..], "-01", "same flags");
    assert_ne!(&sent[36..52], &VALID[36..52], "the gateway's own span id");
    assert_eq!(only(&seen, "tracestate").as_deref(), Some("vendor=abc"));
    assert_eq!(only(&seen, "x-request-id").as_deref(), Some("req-42"));
    let r = records(&s, 1);
    assert_eq!(r[0]["traceparent"], sent.as_str());
    assert_eq!(r[0]["request_id"], "req-42");
}

#[test]
fn an_absent_or_invalid_trace_is_replaced_by_a_new_one() {
    let s = start("start");
    let first = only(&through(&s, &[]), "traceparent").expect("started");
    assert_well_formed(&first);
    assert!(first.ends_with("-01"), "sampled: {first}");
    let second = only(&through(&s, &[]), "traceparent").expect("started");
    assert_ne!(&first[3..35], &second[3..35], "each request its own trace");

    let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let seen = through(
        &s,
        &[("traceparent", invalid), ("tracestate", "vendor=abc")],
    );
    let sent = only(&seen, "traceparent").expect("replaced");
    assert_well_formed(&sent);
    assert_ne!(&sent[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        only(&seen, "tracestate"),
        None,
        "state without a valid parent is dropped"
    );
    let r = records(&s, 3);
    assert_eq!(r[2]["traceparent"], sent.as_str());
}

#[test]
fn forward_mode_passes_the_clients_fields_through_untouched() {
    let s = start("forward");
    let seen = through(&s, &[("traceparent", VALID), ("tracestate", "vendor=abc")]);
    assert_eq!(only(&seen, "traceparent").as_deref(), Some(VALID));
    assert_eq!(only(&seen, "tracestate").as_deref(), Some("vendor=abc"));
    let seen = through(&s, &[]);
    assert_eq!(only(&seen, "traceparent"), None, "none started");
    let r = records(&s, 2);
    assert_eq!(r[0]["traceparent"], VALID);
    assert!(r[1]["traceparent"].is_null());
}

#[test]
fn check_refuses_an_unknown_trace_mode() {
    let text = ConfigBuilder::new(free_port(), &[free_port()])
        .build()
        .replacen(
            "[logging]\n",
            "[logging]\ntrace_context = \"sometimes\"\n",
            1,
        );
    let (_file, out) = check(&text);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.combined().contains("trace_context"),
        "{}",
        out.combined()
    );
}
