//! The access log, black-box: one JSON line per request with every field, for a forwarded
//! request and for refusals (401, 403, 404, 429) and an upstream failure (502); no credential
//! ever reaches the access log or the process log; `SIGUSR1` reopens the file after a
//! rotation; 2xx sampling. Real gateway, real upstream, loopback.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ISS: &str = "https://idp.example.test";
const AUD: &str = "orders-api";

/// Every field of a record, in order.
const FIELDS: [&str; 26] = [
    "ts",
    "request_id",
    "listener",
    "client_ip",
    "method",
    "path",
    "status",
    "route",
    "api",
    "tenant",
    "consumer",
    "credential_id",
    "auth_method",
    "decision",
    "reason",
    "rule",
    "shadow_rule",
    "upstream",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "duration_us",
    "upstream_connect_us",
    "upstream_ttfb_us",
    "tls_version",
    "traceparent",
];

/// A fresh access log path in a directory the gateway has to create.
fn log_path() -> PathBuf {
    unique_temp_path("d").join("logs").join("access.jsonl")
}

/// `[logging]` with the access log at `path` and `lines` added.
fn with_access_log(config: &str, path: &Path, lines: &str) -> String {
    config.replacen(
        "[logging]\n",
        &format!("[logging]\naccess_log = \"{}\"\n{lines}\n", path.display()),
        1,
    )
}

/// Waits (up to 5 s) until the file holds at least `n` records; returns them all.
fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(json).collect();
        if lines.len() >= n || Instant::now() >= deadline {
            assert_eq!(lines.len(), n, "records in {}:\n{text}", path.display());
            for record in &lines {
                let object = record.as_object().expect("an object");
                let names: Vec<&str> = object.keys().map(String::as_str).collect();
                let mut expected = FIELDS.to_vec();
                expected.sort_unstable();
                let mut names = names;
                names.sort_unstable();
                assert_eq!(names, expected, "{record}");
            }
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_ts(record: &Value) {
    let ts = record["ts"].as_str().unwrap();
    let b = ts.as_bytes();
    assert_eq!(b.len(), 27, "{ts}");
    assert!(ts.ends_with('Z') && b[10] == b'T' && b[19] == b'.', "{ts}");
    assert!(
        b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 26].contains(&i) || c.is_ascii_digit()),
        "{ts}"
    );
}

fn assert_null(record: &Value, fields: &[&str]) {
    for field in fields {
        assert!(record[field].is_null(), "{field} in {record}");
    }
}

#[test]
fn every_field_for_allowed_refused_and_failed_requests() {
    let up = TestUpstream::start(Mode::Echo);
    let dead = free_port();
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let path = log_path();
    let port = free_port();
    let text = ConfigBuilder::new(port, &[up.port])
        .route("/orders", "auth = [\"api_key\"]")
        .route(
            "/admin",
            "auth = [\"api_key\"]\nscopes = { GET = [\"orders:admin\"] }",
        )
        .route(
            "/limited",
            "auth = [\"api_key\"]\n[[apis.routes.rate_limits]]\nkey = [\"consumer\"]\nrate = \"1/min\"\nburst = 1",
        )
        .build();
    let text = format!(
        "{}\n[auth]\nkey_pepper_file = \"{}\"\n\n\
         [[consumers]]\nid = \"alice\"\ntenant = \"default\"\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\nscopes = [\"orders:read\"]\n\n\
         [[upstreams]]\nname = \"down\"\ntargets = [\"127.0.0.1:{dead}\"]\n\n\
         [[apis]]\nname = \"broken\"\n[[apis.routes]]\npath = \"/down\"\nupstream = \"down\"\n",
        with_access_log(&text, &path, ""),
        file_name(&pepper),
        key.id,
        key.hash,
    );
    let gw = Gateway::start(&text);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let allowed = format!(
        "GET /orders/1?color=blue HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {}\r\ntraceparent: {traceparent}\r\n\r\n",
        key.key
    );
    let mut client = gw.client();
    let first = client.request(allowed.as_bytes());
    assert_eq!(first.status, 200);
    let second = client.request(allowed.as_bytes());
    assert_eq!(second.status, 200);
    let key_header = [("X-API-Key", key.key.as_str())];
    assert_eq!(get_with(gw.port(), "/orders/1", &[]).status, 401);
    assert_eq!(get_with(gw.port(), "/admin/x", &key_header).status, 403);
    assert_eq!(get_with(gw.port(), "/limited", &key_header).status, 200);
    assert_eq!(get_with(gw.port(), "/limited", &key_header).status, 429);
    assert_eq!(get_with(gw.port(), "/down", &[]).status, 502);
    assert_eq!(get_with(gw.port(), "/nowhere", &[]).status, 404);

    let r = records(&path, 8);
    // The allowed request.
    let a = &r[0];
    assert_ts(a);
    assert_eq!(a["request_id"], first.header("X-Request-Id").unwrap());
    assert_eq!(a["listener"], "public");
    assert_eq!(a["client_ip"], "127.0.0.1");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/orders/1");
    assert_eq!(a["status"], 200);
    let route = a["route"].as_str().unwrap();
    assert!(route.contains("demo") && route.contains("/orders"), "{a}");
    assert_eq!(a["api"], "demo");
    assert_eq!(a["tenant"], "default");
    assert_eq!(a["consumer"], "alice");
    assert_eq!(a["credential_id"], key.id.as_str());
    assert_eq!(a["auth_method"], "api_key");
    assert_eq!(a["decision"], "allow");
    assert_null(a, &["reason", "rule", "shadow_rule", "tls_version"]);
    assert_eq!(a["upstream"], format!("127.0.0.1:{}", up.port));
    assert_eq!(a["upstream_status"], 200);
    assert_eq!(a["bytes_in"], allowed.len());
    let body = first.body.len() as u64;
    assert!(a["bytes_out"].as_u64().unwrap() > body + 20, "{a}");
    for field in ["duration_us", "upstream_connect_us", "upstream_ttfb_us"] {
        assert!(a[field].is_u64(), "{field}: {a}");
    }
    assert!(
        a["duration_us"].as_u64() >= a["upstream_ttfb_us"].as_u64(),
        "{a}"
    );
    // The trace continues upstream under the gateway's own span id.
    let logged = a["traceparent"].as_str().expect("traceparent");
    assert_eq!(logged.len(), 55, "{logged}");
    assert_eq!(&logged[..36], &traceparent[..36]);
    assert_eq!(&logged[52..], &traceparent[52..]);
    assert_ne!(logged, traceparent);
    // The second one went over the pooled connection.
    assert_eq!(r[1]["upstream_connect_us"], 0, "{}", r[1]);
    assert_eq!(r[1]["bytes_out"], a["bytes_out"]);
    assert_ne!(r[1]["request_id"], a["request_id"]);

    // 401: nobody was identified.
    let m = &r[2];
    assert_eq!(m["status"], 401);
    assert_eq!(m["decision"], "deny");
    assert_eq!(m["reason"], "missing_credential");
    assert_eq!(m["route"], a["route"]);
    assert_null(
        m,
        &[
            "tenant",
            "consumer",
            "credential_id",
            "auth_method",
            "rule",
            "upstream",
            "upstream_status",
            "upstream_connect_us",
            "upstream_ttfb_us",
            "traceparent",
        ],
    );
    assert!(m["bytes_out"].as_u64().unwrap() > 0);
    // 403: identified, refused by the scope.
    let s = &r[3];
    assert_eq!(s["status"], 403);
    assert_eq!(s["decision"], "deny");
    assert_eq!(s["reason"], "insufficient_scope");
    assert_eq!(s["consumer"], "alice");
    assert_eq!(s["auth_method"], "api_key");
    assert_eq!(s["path"], "/admin/x");
    assert_null(s, &["upstream", "upstream_status"]);
    // 429 after one allowed.
    assert_eq!(r[4]["status"], 200);
    let l = &r[5];
    assert_eq!(l["status"], 429);
    assert_eq!(l["decision"], "deny");
    assert_eq!(l["reason"], "rate_limited");
    assert_eq!(l["consumer"], "alice");
    assert_null(l, &["upstream"]);
    // 502: allowed, the upstream failed.
    let d = &r[6];
    assert_eq!(d["status"], 502);
    assert_eq!(d["decision"], "allow");
    assert_eq!(d["reason"], "upstream_error");
    assert_eq!(d["api"], "broken");
    assert_eq!(d["upstream"], format!("127.0.0.1:{dead}"));
    assert_null(
        d,
        &[
            "upstream_status",
            "upstream_connect_us",
            "upstream_ttfb_us",
            "consumer",
        ],
    );
    // 404: no route.
    let n = &r[7];
    assert_eq!(n["status"], 404);
    assert_eq!(n["reason"], "no_route");
    assert_eq!(n["decision"], "deny");
    assert_null(n, &["route", "api", "upstream"]);
}

/// Base64 (standard alphabet, padded).
fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

/// A request target, its header fields and the status it gets.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16);

#[test]
fn no_credential_reaches_the_access_log_or_the_process_log() {
    let up = TestUpstream::start(Mode::Echo);
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let jwk = jwk_new("k1");
    let token = jwk.mint(&serde_json::json!({"iss": ISS, "aud": AUD, "sub": "alice"}));
    let password = "correct-horse-battery-staple-7391";
    let basic = run_with_stdin(
        &[
            "basic",
            "new",
            "--consumer",
            "ops",
            "--username",
            "ops",
            "--iterations",
            "10000",
            "--json",
        ],
        &format!("{password}\n"),
    );
    assert_eq!(basic.code(), Some(0), "{}", basic.combined());
    let hash = json(&basic.stdout)["credential"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let path = log_path();
    let text = ConfigBuilder::new(free_port(), &[up.port])
        .route("/k", "auth = [\"api_key\"]\napi_key_query = \"api_key\"")
        .route("/j", "auth = [\"jwt:corp\"]")
        .route("/b", "auth = [\"basic\"]")
        .route("/open", "")
        .build();
    let text = format!(
        "{}\n[auth]\nkey_pepper_file = \"{}\"\n\n\
         [[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_file = \"{}\"\n\n\
         [[consumers]]\nid = \"alice\"\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n\n\
         [[consumers]]\nid = \"ops\"\n\
         [[consumers.credentials]]\nkind = \"basic\"\nid = \"ops-login\"\nusername = \"ops\"\nhash = \"{hash}\"\n",
        with_access_log(&text, &path, ""),
        file_name(&pepper),
        jwk.jwks.path_str(),
        key.id,
        key.hash,
    );
    // The process log at its most talkative.
    let gw = Gateway::start_with_log(&text, "debug");
    let port = gw.port();
    let cookie = "session=s3cr3t-cookie-value-55501";
    let basic_value = format!("Basic {}", b64(&format!("ops:{password}")));
    let bearer = format!("Bearer {token}");
    let wrong_password = format!("Basic {}", b64("ops:wrong-password-88231"));
    let cases: Vec<Case> = vec![
        (
            "/k".into(),
            vec![("X-API-Key", &key.key), ("Cookie", cookie)],
            200,
        ),
        (format!("/k?api_key={}&x=1", key.key), vec![], 200),
        (format!("/k?api_key={}x", key.key), vec![], 401),
        ("/j".into(), vec![("Authorization", &bearer)], 200),
        (
            "/j".into(),
            vec![("Authorization", "Bearer not.a-valid.token-4471")],
            401,
        ),
        ("/b".into(), vec![("Authorization", &basic_value)], 200),
        ("/b".into(), vec![("Authorization", &wrong_password)], 401),
        (
            "/open?api_key=query-secret-90210".into(),
            vec![("Cookie", cookie)],
            200,
        ),
    ];
    for (target, headers, status) in &cases {
        let resp = get_with(port, target, headers);
        assert_eq!(resp.status, *status, "{target}: {}", resp.body_str());
    }
    let r = records(&path, cases.len());
    assert_eq!(r[1]["path"], "/k");
    assert_eq!(r[3]["auth_method"], "jwt");
    assert_eq!(r[5]["auth_method"], "basic");
    assert_eq!(r[5]["credential_id"], "ops-login");
    assert_eq!(r[7]["path"], "/open");
    let secrets = [
        key.key.as_str(),
        &key.key[3 + key.id.len() + 1..],
        token.as_str(),
        token.split('.').nth(2).unwrap(),
        password,
        "wrong-password-88231",
        &b64(&format!("ops:{password}")),
        "not.a-valid.token-4471",
        "s3cr3t-cookie-value-55501",
        "query-secret-90210",
        "api_key=",
        "Authorization",
        "Cookie",
    ];
    let access = std::fs::read_to_string(&path).unwrap();
    let process = gw.output();
    assert!(process.contains("credentialflow ready"), "{process}");
    for secret in secrets {
        assert!(
            !access.contains(secret),
            "{secret} in the access log:\n{access}"
        );
        assert!(
            !process.contains(secret),
            "{secret} in the process log:\n{process}"
        );
    }
}

#[test]
fn sigusr1_reopens_the_file_after_a_rotation() {
    let up = TestUpstream::start(Mode::Echo);
    let path = log_path();
    let text = with_access_log(
        &ConfigBuilder::new(free_port(), &[up.port]).build(),
        &path,
        "",
    );
    let gw = Gateway::start(&text);
    for _ in 0..2 {
        assert_eq!(gw.client().get("/before").status, 200);
    }
    records(&path, 2);
    let rotated = path.with_extension("jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    gw.signal("USR1");
    // The reopen is asked for before these requests' records are written.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(path.exists(), "no new file: {}", gw.output());
    for _ in 0..3 {
        assert_eq!(gw.client().get("/after").status, 200);
    }
    let new = records(&path, 3);
    assert!(new.iter().all(|r| r["path"] == "/after"), "{new:?}");
    let old = records(&rotated, 2);
    assert!(old.iter().all(|r| r["path"] == "/before"), "{old:?}");
    // A USR1 is not a shutdown.
    assert_eq!(gw.client().get("/x").status, 200);
}

#[test]
fn sampling_zero_keeps_only_non_2xx() {
    let up = TestUpstream::start(Mode::Echo);
    let path = log_path();
    let text = ConfigBuilder::new(free_port(), &[up.port])
        .route("/ok", "")
        .build();
    let text = with_access_log(&text, &path, "access_log_sample_2xx = 0.0");
    let mut gw = Gateway::start(&text);
    let mut client = gw.client();
    for _ in 0..5 {
        assert_eq!(client.get("/ok").status, 200);
    }
    assert_eq!(client.get("/missing").status, 404);
    for _ in 0..5 {
        assert_eq!(client.get("/ok").status, 200);
    }
    drop(client);
    // At shutdown every core hands over what it holds.
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let r = records(&path, 1);
    assert_eq!(r[0]["status"], 404);
    assert_eq!(r[0]["path"], "/missing");
}

#[test]
fn an_error_response_is_logged_when_sent_not_after_the_lingering_close() {
    // After an error response the gateway lingers (drains the client for up to 1 s before
    // closing). The record is logged before that: its duration ends with the response, and it
    // is in the log while the client still holds the connection open.
    let dead = free_port();
    let path = log_path();
    let text = ConfigBuilder::new(free_port(), &[dead]).build();
    let gw = Gateway::start(&with_access_log(&text, &path, ""));
    let mut client = gw.client();
    let resp = client.request(b"GET /down HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(resp.status, 502);
    let r = records(&path, 1);
    assert_eq!(r[0]["status"], 502);
    let duration = r[0]["duration_us"].as_u64().unwrap();
    assert!(
        duration < 500_000,
        "duration_us {duration} includes the linger"
    );
    // The connection is still closed by the gateway after the lingering drain.
    let close = client.read_to_eof_or_timeout(Duration::from_secs(3));
    assert!(
        close.closed,
        "the gateway did not close after the error response"
    );
}
