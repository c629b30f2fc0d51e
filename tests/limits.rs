//! The rate-limit phase, black-box: token buckets hold for the whole box whether a client's
//! requests arrive on one connection or on many spread over every core; bursts, `Retry-After`
//! and the `RateLimit-*` fields; refused requests take nothing; calendar quotas survive a
//! restart and a `kill -9`; plan limits come with a consumer's subscription; the
//! failed-authentication throttle; and a flood of distinct client addresses keeps the gateway's
//! memory bounded. Real gateway, real upstream, loopback.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// A gateway with `workers` cores serving route "/" with `route_lines` (limit tables), and
/// `extra` appended (top-level tables); `listener_lines` go into the listener table.
fn limited(
    workers: u32,
    up: &TestUpstream,
    route_lines: &str,
    listener_lines: &str,
    extra: &str,
) -> String {
    let port = free_port();
    let text = ConfigBuilder::new(port, &[up.port])
        .workers(workers)
        .route("/", route_lines)
        .build();
    let address = format!("address = \"127.0.0.1:{port}\"\n");
    let text = text.replacen(&address, &format!("{address}{listener_lines}\n"), 1);
    format!("{text}\n{extra}\n")
}

/// Sends `GET /` with extra header lines on a keep-alive client; returns the status.
fn status_of(client: &mut Client, headers: &str) -> u16 {
    client.send(format!("GET / HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes());
    client.read_response().status
}

#[test]
fn one_connection_gets_the_whole_limit() {
    let up = TestUpstream::start(Mode::Echo);
    let cfg = limited(
        2,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"client_ip\"]\nrate = \"20/min\"\nburst = 20",
        "",
        "",
    );
    let gw = Gateway::start(&cfg);
    let mut client = gw.client();
    let statuses: Vec<u16> = (0..40).map(|_| status_of(&mut client, "")).collect();
    let allowed = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    // One token flows back every 3 s; the run takes far less.
    assert_eq!(allowed, 20, "{statuses:?}");
    assert_eq!(refused, 20, "{statuses:?}");
    assert!(
        statuses[..20].iter().all(|&s| s == 200),
        "the first 20 pass: {statuses:?}"
    );
}

#[test]
fn many_connections_over_every_core_share_one_limit() {
    let up = TestUpstream::start(Mode::Echo);
    let cfg = limited(
        2,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"route\"]\nrate = \"30/min\"\nburst = 30",
        "",
        "",
    );
    let gw = Gateway::start(&cfg);
    let mut clients: Vec<Client> = (0..64).map(|_| gw.client()).collect();
    let mut allowed = 0;
    for round in 0..2 {
        for client in clients.iter_mut() {
            match status_of(client, "") {
                200 => allowed += 1,
                429 => {}
                other => panic!("round {round}: unexpected status {other}"),
            }
        }
    }
    // 128 requests over 64 connections (both cores) for a bucket of 30: the box admits 30, not
    // 30 per core (and not 30 / cores for a connection).
    assert_eq!(allowed, 30, "{}", gw.output());
    assert_eq!(up.requests(), 30);
}

#[test]
fn refusals_carry_retry_after_and_ratelimit_fields() {
    let up = TestUpstream::start(Mode::Echo);
    let cfg = limited(
        1,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"client_ip\"]\nrate = \"2/min\"\nburst = 3\nheaders = true",
        "",
        "",
    );
    let gw = Gateway::start(&cfg);
    let mut client = gw.client();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let resp = client.get("/");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("RateLimit-Limit"), Some("2"));
        remaining.push(resp.header("RateLimit-Remaining").unwrap().to_string());
        let reset: u64 = resp.header("RateLimit-Reset").unwrap().parse().unwrap();
        assert!(reset <= 90, "reset {reset}");
    }
    assert_eq!(remaining, ["2", "1", "0"], "a burst of 3");
    let refused = client.get("/");
    assert_refused(&refused, 429, "rate_limited");
    let retry: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    // One token every 30 s.
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("RateLimit-Remaining"), Some("0"));
    assert_eq!(refused.header("RateLimit-Limit"), Some("2"));
    assert!(
        refused
            .header("Content-Type")
            .unwrap()
            .contains("problem+json"),
        "{refused:?}"
    );
    // The connection stays usable.
    assert_eq!(client.get("/").status, 429);
    assert_eq!(up.requests(), 3);
}

#[test]
fn allowed_responses_carry_no_fields_unless_asked() {
    let up = TestUpstream::start(Mode::Echo);
    let cfg = limited(
        1,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"client_ip\"]\nrate = \"100/s\"",
        "",
        "",
    );
    let gw = Gateway::start(&cfg);
    let resp = get(gw.port(), "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("RateLimit-Limit"), None);
}

#[test]
fn refused_requests_take_nothing_from_other_limits() {
    let up = TestUpstream::start(Mode::Echo);
    // Per client (header) 2 a minute, and 5 a minute for the whole route.
    let cfg = limited(
        2,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"header:x-client\"]\nrate = \"2/min\"\nburst = 2\n\
         [[apis.routes.rate_limits]]\nkey = [\"route\"]\nrate = \"5/min\"\nburst = 5",
        "",
        "",
    );
    let gw = Gateway::start(&cfg);
    let mut a = gw.client();
    let a_statuses: Vec<u16> = (0..10)
        .map(|_| status_of(&mut a, "X-Client: a\r\n"))
        .collect();
    assert_eq!(
        a_statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{a_statuses:?}"
    );
    // A's eight refusals took nothing from the route's bucket: three are left for B (once the
    // core that served A has given back its unused lease).
    thread::sleep(Duration::from_millis(800));
    let mut others = gw.client();
    let statuses: Vec<u16> = ["b", "c", "d", "e"]
        .iter()
        .map(|c| status_of(&mut others, &format!("X-Client: {c}\r\n")))
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "the route's remaining three, then none"
    );
}

#[test]
fn tokens_come_back_at_the_configured_rate() {
    let up = TestUpstream::start(Mode::Echo);
    let cfg = limited(
        2,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"client_ip\"]\nrate = \"10/s\"\nburst = 1",
        "",
        "",
    );
    let gw = Gateway::start(&cfg);
    let mut client = gw.client();
    let start = Instant::now();
    let mut allowed = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        if status_of(&mut client, "") == 200 {
            allowed += 1;
        }
        thread::sleep(Duration::from_millis(5));
    }
    // 1 at once, then 10 a second.
    assert!((13..=17).contains(&allowed), "{allowed} in 1.5 s");
}

fn quota_config(up: &TestUpstream, data_dir: &std::path::Path) -> String {
    let cfg = limited(
        2,
        up,
        "[[apis.routes.quotas]]\nkey = [\"header:x-client\"]\nlimit = \"5/day\"",
        "",
        "",
    );
    cfg.replacen(
        "[gateway]\n",
        &format!("[gateway]\ndata_dir = \"{}\"\n", data_dir.display()),
        1,
    )
}

fn spend(port: u16, client: &str, n: usize) -> Vec<u16> {
    let mut c = Client::connect(port);
    (0..n)
        .map(|_| status_of(&mut c, &format!("X-Client: {client}\r\n")))
        .collect()
}

#[test]
fn quotas_survive_a_restart() {
    let up = TestUpstream::start(Mode::Echo);
    let data = unique_temp_path("data");
    let cfg = quota_config(&up, &data);
    let mut gw = Gateway::start(&cfg);
    assert_eq!(spend(gw.port(), "a", 3), [200, 200, 200]);
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let saved = std::fs::read_to_string(data.join("quotas.jsonl")).expect("quota file");
    assert!(saved.contains("\"used\":3"), "{saved}");

    let gw = Gateway::start(&cfg);
    let statuses = spend(gw.port(), "a", 4);
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "2 of 5 left after the restart"
    );
    let refused = get_with(gw.port(), "/", &[("X-Client", "a")]);
    assert_refused(&refused, 429, "quota_exceeded");
    let retry: i64 = refused.header("Retry-After").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let midnight = (now / 86_400 + 1) * 86_400;
    assert!(
        (retry - (midnight - now)).abs() <= 2,
        "Retry-After {retry} is not the time to 00:00 UTC"
    );
    // Another key has its own count.
    assert_eq!(spend(gw.port(), "b", 1), [200]);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_crash_loses_at_most_the_last_seconds_of_quota_counting() {
    let up = TestUpstream::start(Mode::Echo);
    let data = unique_temp_path("data");
    let cfg = quota_config(&up, &data);
    let mut gw = Gateway::start(&cfg);
    assert_eq!(spend(gw.port(), "a", 4), [200; 4]);
    // Counts reach the file within two seconds (the documented bound).
    thread::sleep(Duration::from_millis(2500));
    gw.signal("KILL");
    assert!(gw.wait_exit(Duration::from_secs(5)).is_some());
    // The same data directory on a fresh port: after a `kill -9` the kernel may keep the old
    // listening socket (with io_uring accepts pending) a moment after the process is gone.
    let gw = Gateway::start(&quota_config(&up, &data));
    assert_eq!(spend(gw.port(), "a", 2), [200, 429]);
    let _ = std::fs::remove_dir_all(&data);
}

/// `GET /` on a new connection that starts with a PROXY v1 header naming `ip`; returns the
/// status. The connection is reset when dropped (`SO_LINGER` 0), so a flood of short
/// connections leaves nothing in TIME_WAIT.
fn via_proxy(port: u16, ip: &str) -> u16 {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a properly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let request =
        format!("PROXY TCP4 {ip} 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    // The whole response is read before the reset, so the gateway keeps its upstream
    // connection for the next request.
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("length"));
            if response.len() >= end + 4 + length {
                break;
            }
        }
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before a complete response");
        response.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&response[9..12])
        .parse()
        .expect("status")
}

/// Consumers `alice` (plan gold) and `bob` (no subscription plan) with API keys.
fn plan_env(up: &TestUpstream, pepper: &TempFile) -> (String, String, String) {
    let alice = issue_key(pepper, "alice");
    let bob = issue_key(pepper, "bob");
    let mut cfg = limited(2, up, "", "", "");
    cfg = cfg.replacen(
        "[[apis]]\nname = \"demo\"\n",
        "[[apis]]\nname = \"demo\"\nauth = [\"api_key\"]\n",
        1,
    );
    for (id, key) in [("alice", &alice), ("bob", &bob)] {
        cfg.push_str(&format!(
            "[[consumers]]\nid = \"{id}\"\n[[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n\n",
            key.id, key.hash
        ));
    }
    cfg.push_str(&format!(
        "[auth]\nkey_pepper_file = \"{}\"\n\n\
         [[plans]]\nname = \"gold\"\nrate = \"3/min\"\n\n\
         [[subscriptions]]\nconsumer = \"alice\"\napi = \"demo\"\nstate = \"approved\"\nplan = \"gold\"\n",
        file_name(pepper)
    ));
    (cfg, alice.key, bob.key)
}

#[test]
fn a_plan_limits_its_subscribers() {
    let up = TestUpstream::start(Mode::Echo);
    let pepper = pepper_file();
    let (cfg, alice, bob) = plan_env(&up, &pepper);
    let gw = Gateway::start(&cfg);
    let mut c = gw.client();
    let alice_statuses: Vec<u16> = (0..5)
        .map(|_| status_of(&mut c, &format!("X-API-Key: {alice}\r\n")))
        .collect();
    assert_eq!(alice_statuses, [200, 200, 200, 429, 429]);
    let bob_statuses: Vec<u16> = (0..5)
        .map(|_| status_of(&mut c, &format!("X-API-Key: {bob}\r\n")))
        .collect();
    assert_eq!(bob_statuses, [200; 5], "bob's subscription has no plan");
}

#[test]
fn repeated_authentication_failures_are_throttled_before_any_credential_work() {
    let up = TestUpstream::start(Mode::Echo);
    let pepper = pepper_file();
    let (cfg, alice, _) = plan_env(&up, &pepper);
    let cfg = cfg.replacen(
        "[auth]\n",
        "[auth]\nfailed_auth_limit = 3\nfailed_auth_window = \"1m\"\n",
        1,
    );
    // Requests from 198.51.100.1 arrive through a trusted proxy on 127.0.0.1.
    let cfg = cfg.replacen(
        "name = \"public\"\n",
        "name = \"public\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let gw = Gateway::start(&cfg);
    let from = |ip: &str, key: &str| {
        get_with(
            gw.port(),
            "/",
            &[("X-Forwarded-For", ip), ("X-API-Key", key)],
        )
    };
    let bad = "cf_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    // Three failures are allowed box-wide; a core holding one in a lease it has not used can
    // make the refusal come one failure early, never late.
    let mut failures = 0;
    let mut refused = from("198.51.100.1", bad);
    while refused.status == 401 && failures < 10 {
        failures += 1;
        refused = from("198.51.100.1", bad);
    }
    assert!(
        (2..=3).contains(&failures),
        "{failures} failures before the throttle"
    );
    assert_refused(&refused, 429, "too_many_failures");
    let retry: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry),
        "one failure flows back every 20 s: {retry}"
    );
    assert_eq!(from("198.51.100.1", &alice).status, 429);
    // Another address is not affected; a missing credential is not a failure.
    assert_eq!(from("198.51.100.2", &alice).status, 200);
    for _ in 0..5 {
        assert_eq!(
            get_with(gw.port(), "/", &[("X-Forwarded-For", "198.51.100.3")]).status,
            401
        );
    }
    assert_eq!(from("198.51.100.3", &alice).status, 200);
}

#[test]
fn a_flood_of_distinct_client_addresses_keeps_memory_bounded() {
    let up = TestUpstream::start(Mode::Echo);
    let cfg = limited(
        2,
        &up,
        "[[apis.routes.rate_limits]]\nkey = [\"client_ip\"]\nrate = \"1/min\"\nburst = 1",
        "proxy_protocol = \"required\"",
        "",
    )
    .replacen("[limits]\n", "[limits]\nrate_limit_keys = 2000\n", 1);
    let mut gw = Gateway::start_with_log(&cfg, "info");
    let (pid, port) = (gw.pid(), gw.port());
    let address = |n: u32| format!("10.{}.{}.{}", n >> 16 & 0xff, n >> 8 & 0xff, n & 0xff);
    // Warm up, then measure the growth over 100 000 distinct addresses, each on its own
    // connection behind a PROXY header and admitted once.
    for n in 200_000..202_000 {
        via_proxy(port, &address(n));
    }
    let before = rss_kib(pid).expect("rss");
    let workers: Vec<_> = (0..4u32)
        .map(|w| {
            thread::spawn(move || {
                (0..25_000u32)
                    .filter(|i| via_proxy(port, &address(w * 25_000 + i)) != 200)
                    .count()
            })
        })
        .collect();
    let refused: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(refused, 0, "every new address has its own full bucket");
    let after = rss_kib(pid).expect("rss");
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew {} KiB over 100 000 addresses",
        after.saturating_sub(before)
    );
    // Limits still hold after the flood: a fresh address gets its one request, then 429.
    assert_eq!(via_proxy(port, "192.0.2.77"), 200);
    assert_eq!(via_proxy(port, "192.0.2.77"), 429);
    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let out = gw.output();
    let tracked: usize = out
        .lines()
        .filter(|l| l.contains("limit totals"))
        .filter_map(|l| l.split("buckets=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert!(tracked <= 2 * 2000, "tracked buckets {tracked}:\n{out}");
}
