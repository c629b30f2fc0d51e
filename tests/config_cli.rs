//! Command-line interface and configuration validation: `check -c FILE`
//! accepts valid configs (printing "OK") and reports every error as
//! `FILE:LINE: ...` naming the offending key (unknown keys, TOML syntax
//! errors, bad values, missing required keys, dangling references), and
//! `run -c FILE` refuses to start with an invalid config (exit status 1,
//! nothing listening).

mod common;

use common::*;
use std::fs;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CLI_TIMEOUT: Duration = Duration::from_secs(10);

fn base_lines(port: u16) -> Vec<String> {
    [
        "[gateway]",
        "workers = 1",
        "pin = false",
        "",
        "[[listeners]]",
        "name = \"public\"",
        "address = \"127.0.0.1:PORT\"",
        "",
        "[[upstreams]]",
        "name = \"app\"",
        "targets = [\"127.0.0.1:9\"]",
        "",
        "[[apis]]",
        "name = \"demo\"",
        "",
        "[[apis.routes]]",
        "path = \"/\"",
        "upstream = \"app\"",
    ]
    .iter()
    .map(|l| l.replace("PORT", &port.to_string()))
    .collect()
}

/// 1-based line number of the first line starting with `prefix`.
fn line_of(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

fn replace_line(lines: &mut [String], prefix: &str, with: &str) {
    let i = line_of(lines, prefix) - 1;
    lines[i] = with.to_string();
}

fn check(lines: &[String]) -> (TempFile, CliOutput) {
    let file = TempFile::new(&(lines.join("\n") + "\n"), "toml");
    let out = run_cli(&["check", "-c", &file.path_str()], CLI_TIMEOUT);
    (file, out)
}

/// Asserts `check` failed with exit status 1 and stderr holding
/// `FILE:LINE:` and every string in `mentions`.
fn assert_check_error(file: &TempFile, out: &CliOutput, line: usize, mentions: &[&str]) {
    assert_eq!(
        out.code(),
        Some(1),
        "check must exit 1; stdout: {} stderr: {}",
        out.stdout,
        out.stderr
    );
    let needle = format!("{}:{line}:", file.path_str());
    assert!(
        out.stderr.contains(&needle),
        "stderr lacks {needle:?}: {}",
        out.stderr
    );
    for m in mentions {
        assert!(out.stderr.contains(m), "stderr lacks {m:?}: {}", out.stderr);
    }
}

#[test]
fn check_accepts_valid_config() {
    let (_f, out) = check(&base_lines(free_port()));
    assert_eq!(
        out.code(),
        Some(0),
        "stdout: {} stderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(out.combined().contains("OK"), "output: {}", out.combined());
}

#[test]
fn check_accepts_every_documented_key() {
    let port = free_port();
    let config = format!(
        r#"[gateway]
workers = 0
pin = false
drain_timeout = "5s"

[logging]
level = "info"
format = "json"

[limits]
max_head_bytes = 16384
max_headers = 100
max_uri_bytes = 8192
max_body_bytes = 10485760
head_timeout = "10s"
idle_timeout = "1m"
body_timeout = "250ms"
escaped_slashes = "decode"
merge_slashes = true

[[listeners]]
name = "public"
address = "127.0.0.1:{port}"

[[listeners]]
name = "internal"
address = "127.0.0.1:{port2}"
escaped_slashes = "keep"
merge_slashes = false

[[upstreams]]
name = "app"
targets = ["127.0.0.1:9", "127.0.0.1:10"]
balance = "least_outstanding"
keepalive = 64
keepalive_timeout = "60s"
connect_timeout = "2s"
response_timeout = "30s"
max_fails = 3
fail_timeout = "10s"

[upstreams.health_check]
path = "/healthz"
interval = "2s"
timeout = "500ms"
unhealthy_threshold = 2
healthy_threshold = 2

[[upstreams]]
name = "other"
targets = ["127.0.0.1:11"]
balance = "round_robin"

[[apis]]
name = "demo"

[[apis.routes]]
path = "/api"
path_match = "prefix"
hosts = ["example.com", "*.example.com"]
methods = ["GET", "POST"]
upstream = "app"
strip_prefix = true
max_body_bytes = 0

[[apis.routes]]
path = "/exact"
path_match = "exact"
upstream = "other"
max_body_bytes = 1048576

[[apis]]
name = "second"

[[apis.routes]]
path = "/"
upstream = "other"
"#,
        port2 = free_port()
    );
    let file = TempFile::new(&config, "toml");
    let out = run_cli(&["check", "-c", &file.path_str()], CLI_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "stdout: {} stderr: {}",
        out.stdout,
        out.stderr
    );
    assert!(out.combined().contains("OK"));
}

#[test]
fn check_reports_unknown_key_with_line() {
    let mut lines = base_lines(free_port());
    // Line 7 becomes an unknown key inside [[listeners]].
    lines.insert(6, "bogus_key = 1".to_string());
    assert_eq!(line_of(&lines, "bogus_key"), 7);
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, 7, &["bogus_key"]);
}

#[test]
fn check_reports_unknown_key_in_route() {
    let mut lines = base_lines(free_port());
    lines.push("no_such_option = true".to_string());
    let line = line_of(&lines, "no_such_option");
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &["no_such_option"]);
}

#[test]
fn check_reports_unknown_top_level_table() {
    let mut lines = base_lines(free_port());
    lines.push(String::new());
    lines.push("[mystery]".to_string());
    lines.push("x = 1".to_string());
    let line = line_of(&lines, "[mystery]");
    let (f, out) = check(&lines);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("mystery"), "stderr: {}", out.stderr);
    let a = format!("{}:{line}:", f.path_str());
    let b = format!("{}:{}:", f.path_str(), line + 1);
    assert!(
        out.stderr.contains(&a) || out.stderr.contains(&b),
        "stderr names neither line {line} nor {}: {}",
        line + 1,
        out.stderr
    );
}

#[test]
fn check_reports_toml_syntax_error_line() {
    let mut lines = base_lines(free_port());
    replace_line(&mut lines, "pin", "pin = = false");
    let line = line_of(&lines, "pin");
    assert_eq!(line, 3);
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &[]);
}

#[test]
fn check_reports_invalid_duration() {
    let mut lines = base_lines(free_port());
    lines.insert(11, "connect_timeout = \"soon\"".to_string());
    let line = line_of(&lines, "connect_timeout");
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &["connect_timeout"]);
}

#[test]
fn check_reports_invalid_balance() {
    let mut lines = base_lines(free_port());
    lines.insert(11, "balance = \"random\"".to_string());
    let line = line_of(&lines, "balance");
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &["balance"]);
}

#[test]
fn check_reports_wrong_value_type() {
    let mut lines = base_lines(free_port());
    replace_line(&mut lines, "workers", "workers = \"many\"");
    let line = line_of(&lines, "workers");
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &["workers"]);
}

#[test]
fn check_reports_route_path_without_slash() {
    let mut lines = base_lines(free_port());
    replace_line(&mut lines, "path = ", "path = \"api\"");
    let line = line_of(&lines, "path = ");
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &["path"]);
}

#[test]
fn check_reports_invalid_target() {
    let mut lines = base_lines(free_port());
    replace_line(&mut lines, "targets", "targets = [\"no-port-here\"]");
    let line = line_of(&lines, "targets");
    let (f, out) = check(&lines);
    assert_check_error(&f, &out, line, &["targets"]);
}

#[test]
fn check_reports_health_check_timeout_above_its_interval() {
    let mut lines = base_lines(free_port());
    let at = line_of(&lines, "targets");
    lines.insert(
        at,
        "health_check = { interval = \"1s\", timeout = \"2s\" }".to_string(),
    );
    let line = line_of(&lines, "health_check");
    let (f, out) = check(&lines);
    assert_check_error(
        &f,
        &out,
        line,
        &["upstreams.health_check.timeout must be above zero and at most the interval"],
    );
}

#[test]
fn check_reports_unknown_upstream_reference() {
    let mut lines = base_lines(free_port());
    replace_line(&mut lines, "upstream = ", "upstream = \"nope\"");
    let key_line = line_of(&lines, "upstream = ");
    let table_line = line_of(&lines, "[[apis.routes]]");
    let (f, out) = check(&lines);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("upstream"), "stderr: {}", out.stderr);
    let a = format!("{}:{key_line}:", f.path_str());
    let b = format!("{}:{table_line}:", f.path_str());
    assert!(
        out.stderr.contains(&a) || out.stderr.contains(&b),
        "stderr names neither the key line {key_line} nor the table line {table_line}: {}",
        out.stderr
    );
}

#[test]
fn check_reports_every_error() {
    let mut lines = base_lines(free_port());
    replace_line(&mut lines, "upstream = ", "upstream = \"nope_one\"");
    lines.extend(
        [
            "",
            "[[apis.routes]]",
            "path = \"/second\"",
            "upstream = \"nope_two\"",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let (_f, out) = check(&lines);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("nope_one"), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("nope_two"), "stderr: {}", out.stderr);
}

#[test]
fn check_reports_missing_required_key() {
    let mut lines = base_lines(free_port());
    lines.retain(|l| !l.starts_with("address"));
    let (_f, out) = check(&lines);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("address"), "stderr: {}", out.stderr);
}

#[test]
fn check_rejects_config_without_listeners() {
    let lines: Vec<String> = base_lines(free_port())
        .into_iter()
        .filter(|l| {
            !l.starts_with("[[listeners]]") && !l.starts_with("address") && l != "name = \"public\""
        })
        .collect();
    let (_f, out) = check(&lines);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("listeners"), "stderr: {}", out.stderr);
}

#[test]
fn check_rejects_missing_file() {
    let path = unique_temp_path("toml");
    let out = run_cli(&["check", "-c", &path.to_string_lossy()], CLI_TIMEOUT);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(!out.stderr.trim().is_empty());
}

#[test]
fn run_with_bad_config_exits_1_without_listening() {
    let port = free_port();
    let mut lines = base_lines(port);
    lines.insert(6, "bogus_key = 1".to_string());
    let file = TempFile::new(&(lines.join("\n") + "\n"), "toml");
    let out = run_cli(&["run", "-c", &file.path_str()], CLI_TIMEOUT);
    assert!(
        out.status.is_some(),
        "run kept running with an invalid config"
    );
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("bogus_key"), "stderr: {}", out.stderr);
    assert!(TcpStream::connect(local(port)).is_err());
}

#[test]
fn run_with_syntax_error_exits_1() {
    let mut lines = base_lines(free_port());
    lines.push("[[apis.routes".to_string());
    let file = TempFile::new(&(lines.join("\n") + "\n"), "toml");
    let out = run_cli(&["run", "-c", &file.path_str()], CLI_TIMEOUT);
    assert!(
        out.status.is_some(),
        "run kept running with a broken config"
    );
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
}

#[test]
fn run_with_valid_config_serves_requests() {
    let up = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let mut lines = base_lines(port);
    replace_line(
        &mut lines,
        "targets",
        &format!("targets = [\"127.0.0.1:{}\"]", up.port),
    );
    let gw = Gateway::start(&(lines.join("\n") + "\n"));
    assert_eq!(get(gw.port(), "/cli").status, 200);
    assert_eq!(up.requests(), 1);
}

#[test]
fn sighup_reload_applies_a_valid_config_to_open_connections_and_refuses_a_broken_one() {
    let first = TestUpstream::start(Mode::Echo);
    let second = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let builder = ConfigBuilder::new(port, &[first.port]).workers(2);
    let gw = builder.start();
    let mut kept = gw.client();
    let resp = kept.get("/x");
    assert_eq!(
        resp.header("x-upstream-port"),
        Some(first.port.to_string().as_str())
    );

    // A broken file is refused; the old config keeps serving.
    fs::write(gw.config_path(), "[[listeners]\nbroken").expect("rewrite config");
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let resp = kept.get("/y");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-upstream-port"),
        Some(first.port.to_string().as_str())
    );

    // The same listener with another upstream: open connections move on their next request.
    let mut changed = builder.clone();
    changed.targets = vec![second.port];
    fs::write(gw.config_path(), changed.build()).expect("rewrite config");
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = kept.get("/z");
        assert_eq!(resp.status, 200);
        if resp.header("x-upstream-port") == Some(second.port.to_string().as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied after 5 s:\n{}",
            gw.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get(port, "/new").header("x-upstream-port"),
        Some(second.port.to_string().as_str())
    );

    // Changing a listener address needs a restart: refused, still serving.
    let mut moved = changed.clone();
    moved.listen = free_port();
    fs::write(gw.config_path(), moved.build()).expect("rewrite config");
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(kept.get("/still").status, 200);
    assert!(
        gw.output().contains("listener addresses changed"),
        "{}",
        gw.output()
    );
}

#[test]
fn a_second_gateway_on_a_port_in_use_exits_1() {
    let up = TestUpstream::start(Mode::Echo);
    let config = ConfigBuilder::new(free_port(), &[up.port]).build();
    let first = Gateway::start(&config);
    let file = TempFile::new(&config, "toml");
    let out = run_cli(&["run", "-c", &file.path_str()], Duration::from_secs(10));
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.combined().contains("cannot listen"),
        "{}",
        out.combined()
    );
    // The first gateway still serves.
    assert_eq!(first.client().get("/x").status, 200);
}
