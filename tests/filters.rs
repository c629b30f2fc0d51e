//! The filter phase, black-box: who the client is (the PROXY protocol v1 and v2 header on
//! `proxy_protocol = "required"` and `"optional"` listeners, `X-Forwarded-For` believed only from
//! `trusted_proxies`), IP allow/deny lists on listeners, APIs and routes (IPv4 and IPv6, deny
//! wins, 403 `ip_denied`), request filters of APIs and routes (methods, content types, body size,
//! and the opt-in path-traversal, SQL-injection, XSS and NUL-byte signatures, 403
//! `blocked_by_filter` naming the rule), connection caps per listener and per client address,
//! and `check`'s refusals of bad filter settings. A refused request never reaches the upstream;
//! a refused connection is closed without any response.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// All four signatures, as a route's `[apis.routes.filters]` table.
const ALL_SIGNATURES: &str = "[apis.routes.filters]\n\
     signatures = [\"path-traversal\", \"sql-injection\", \"xss\", \"nul-byte\"]";

/// The v2 signature every binary PROXY header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// `text` (a [`ConfigBuilder`] config) with `lines` added to the listener on `port`.
fn with_listener(text: &str, port: u16, lines: &str) -> String {
    let address = format!("address = \"127.0.0.1:{port}\"\n");
    assert!(text.contains(&address), "no listener on {port} in {text}");
    text.replacen(&address, &format!("{address}{lines}\n"), 1)
}

/// `text` (a [`ConfigBuilder`] config) with `lines` added to api "demo", before its routes.
fn with_api(text: &str, lines: &str) -> String {
    let demo = "[[apis]]\nname = \"demo\"\n";
    assert!(text.contains(demo), "no api demo in {text}");
    text.replacen(demo, &format!("{demo}{lines}\n"), 1)
}

/// A gateway in front of a recording upstream.
struct Env {
    up: TestUpstream,
    gw: Gateway,
}

impl Env {
    /// The usual config with `listener` lines on the listener, `api` lines on api "demo" and
    /// the given routes (a catch-all "/" when none), served by `workers` cores.
    fn start_with(workers: u32, listener: &str, api: &str, routes: &[(&str, &str)]) -> Env {
        let up = TestUpstream::start(Mode::Echo);
        let port = free_port();
        let mut b = ConfigBuilder::new(port, &[up.port]).workers(workers);
        for (path, lines) in routes {
            b = b.route(path, lines);
        }
        let text = with_api(&with_listener(&b.build(), port, listener), api);
        let gw = Gateway::start(&text);
        Env { up, gw }
    }

    fn start(listener: &str, api: &str, routes: &[(&str, &str)]) -> Env {
        Env::start_with(1, listener, api, routes)
    }

    fn port(&self) -> u16 {
        self.gw.port()
    }

    /// Sends raw bytes on a fresh connection; the response must be a 200 that reached the
    /// upstream. Returns what the upstream saw.
    fn pass_raw(&self, raw: &[u8]) -> RecordedRequest {
        let before = self.up.requests();
        let resp = request(self.port(), raw);
        let what = String::from_utf8_lossy(raw).into_owned();
        assert_eq!(
            resp.status,
            200,
            "{what:?} should pass; got {} {}",
            resp.status,
            resp.body_str()
        );
        assert_passed(&resp, &self.up, before)
    }

    /// `method target` with `headers` passes and reaches the upstream.
    fn pass(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> RecordedRequest {
        let before = self.up.requests();
        let resp = call_with(self.port(), method, target, headers);
        assert_eq!(
            resp.status,
            200,
            "{method} {target} {headers:?} should pass; got {} {}",
            resp.status,
            resp.body_str()
        );
        assert_passed(&resp, &self.up, before)
    }

    /// Sends raw bytes on a fresh connection; the answer must be the refusal `status` with
    /// `reason` (no reason check when `None`), and nothing may reach the upstream.
    fn refused_raw(&self, raw: &[u8], status: u16, reason: Option<&str>) -> Response {
        let before = self.up.requests();
        let resp = request(self.port(), raw);
        self.assert_refusal(&String::from_utf8_lossy(raw), before, resp, status, reason)
    }

    /// `method target` with `headers` is refused with `status` and `reason`, upstream untouched.
    fn refused(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        status: u16,
        reason: &str,
    ) -> Response {
        let before = self.up.requests();
        let resp = call_with(self.port(), method, target, headers);
        let what = format!("{method} {target} {headers:?}");
        self.assert_refusal(&what, before, resp, status, Some(reason))
    }

    fn assert_refusal(
        &self,
        what: &str,
        before: usize,
        resp: Response,
        status: u16,
        reason: Option<&str>,
    ) -> Response {
        assert_eq!(
            resp.status,
            status,
            "{what:?}: expected {status} {reason:?}, got {} {}",
            resp.status,
            resp.body_str()
        );
        match reason {
            Some(reason) => assert_refused(&resp, status, reason),
            None => assert_problem(&resp, status),
        }
        assert_eq!(
            self.up.requests(),
            before,
            "{what:?} was refused with {status} but still reached the upstream"
        );
        resp
    }

    /// `GET target` as seen coming from `client` (via `X-Forwarded-For` from the trusted
    /// loopback peer) passes; the upstream is told `client`.
    fn admits(&self, client: &str, target: &str) {
        let seen = self.pass("GET", target, &[("X-Forwarded-For", client)]);
        assert_eq!(
            seen.headers_all("x-forwarded-for"),
            [client],
            "the upstream should be told the client address {client}"
        );
    }

    /// `GET target` as seen coming from `client` is refused with 403 `ip_denied`.
    fn denies(&self, client: &str, target: &str) {
        self.refused(
            "GET",
            target,
            &[("X-Forwarded-For", client)],
            403,
            "ip_denied",
        );
    }

    /// Raw bytes are refused with 403 `blocked_by_filter` naming `rule`, upstream untouched.
    fn blocked_raw(&self, raw: &[u8], rule: &str) {
        let what = String::from_utf8_lossy(raw).into_owned();
        let resp = self.refused_raw(raw, 403, Some("blocked_by_filter"));
        let body = json(&resp.body_str());
        assert_eq!(
            body["rule"], rule,
            "{what:?}: expected rule {rule}, got body {body}"
        );
    }

    /// `method target` (no body) is blocked by the filter rule `rule`.
    fn blocked(&self, method: &str, target: &str, rule: &str) {
        self.blocked_raw(
            format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
            rule,
        );
    }
}

/// A `POST target` with a body of `content_type` (no Content-Type field when `None`).
fn post(target: &str, content_type: Option<&str>, body: &str) -> Vec<u8> {
    let mut raw = format!("POST {target} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(ct) = content_type {
        raw.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw.into_bytes()
}

/// A v2 PROXY header: `ver_cmd` (0x21 PROXY, 0x20 LOCAL), `family` (0x11 TCP4, 0x21 TCP6),
/// the address block and the TLVs; the length field counts both.
fn proxy_v2(ver_cmd: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut v = V2_SIGNATURE.to_vec();
    v.push(ver_cmd);
    v.push(family);
    let len = (addresses.len() + tlvs.len()) as u16;
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(addresses);
    v.extend_from_slice(tlvs);
    v
}

/// The TCP4 address block: source and destination address, source and destination port.
fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = src.to_vec();
    v.extend_from_slice(&dst);
    v.extend_from_slice(&sport.to_be_bytes());
    v.extend_from_slice(&dport.to_be_bytes());
    v
}

/// `header` followed by a plain `GET path`.
fn with_get(header: &[u8], path: &str) -> Vec<u8> {
    let mut v = header.to_vec();
    v.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    v
}

/// Sends `bytes` on a fresh connection and asserts that the gateway closes it (EOF or reset)
/// without sending a single byte.
fn assert_closed_without_response(port: u16, bytes: &[u8], what: &str) {
    let mut c = Client::connect(port);
    // The gateway may close (even reset) before the write completes.
    let _ = c.try_send(bytes);
    let out = c.read_to_eof_or_timeout(Duration::from_secs(3));
    assert!(
        out.data.is_empty(),
        "{what}: the gateway answered {:?}",
        String::from_utf8_lossy(&out.data)
    );
    assert!(out.closed, "{what}: the gateway kept the connection open");
}

/// A connection on which one request already got its 200 (so the gateway holds it open).
/// Retries for up to 5 s: the gateway releases the count of a connection that just closed (a
/// freed one, or its own readiness probe) only once it has seen the close.
fn open_used(port: u16, what: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect(port);
        c.set_read_timeout(Duration::from_secs(2));
        match c.try_get("/held") {
            Ok(resp) => {
                assert_eq!(resp.status, 200, "{what}: {}", resp.body_str());
                c.set_read_timeout(IO_TIMEOUT);
                return c;
            }
            Err(e) if Instant::now() >= deadline => panic!("{what}: no response: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Asserts that a new connection is closed at once, without a response to its request.
fn assert_connection_refused(port: u16, what: &str) {
    assert_closed_without_response(port, b"GET /over HTTP/1.1\r\nHost: localhost\r\n\r\n", what);
}

/// The trusted loopback peer, so requests choose their client address with `X-Forwarded-For`.
const TRUST_LOOPBACK: &str = "trusted_proxies = [\"127.0.0.1/32\"]";

// ---------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------

#[test]
fn proxy_v1_header_sets_the_client_address_for_the_whole_connection() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    let mut c = Client::connect(env.port());
    c.send(b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 80\r\n");
    for (i, path) in ["/first", "/second"].iter().enumerate() {
        let before = env.up.requests();
        let resp = c.get(path);
        let seen = assert_passed(&resp, &env.up, before);
        assert_eq!(
            seen.headers_all("x-forwarded-for"),
            ["203.0.113.9"],
            "request {} on the connection: the PROXY source is the client",
            i + 1
        );
        assert_eq!(seen.target, *path);
    }
}

#[test]
fn proxy_v1_tcp6_header_sets_an_ipv6_client_address() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    let seen = env.pass_raw(&with_get(b"PROXY TCP6 2001:db8::5 ::1 4711 80\r\n", "/v6"));
    assert_eq!(seen.headers_all("x-forwarded-for"), ["2001:db8::5"]);
}

#[test]
fn proxy_v2_header_sets_the_client_address() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    let header = proxy_v2(
        0x21,
        0x11,
        &tcp4([198, 51, 100, 23], [127, 0, 0, 1], 4711, 80),
        &[],
    );
    let seen = env.pass_raw(&with_get(&header, "/v2"));
    assert_eq!(seen.headers_all("x-forwarded-for"), ["198.51.100.23"]);
    assert_eq!(seen.target, "/v2");
}

#[test]
fn proxy_v2_tlvs_inside_the_length_are_skipped() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    // An ALPN TLV ("h2") and an authority TLV ("example.test") after the address block.
    let mut tlvs = vec![0x01, 0x00, 0x02];
    tlvs.extend_from_slice(b"h2");
    tlvs.extend_from_slice(&[0x02, 0x00, 0x0c]);
    tlvs.extend_from_slice(b"example.test");
    let header = proxy_v2(
        0x21,
        0x11,
        &tcp4([198, 51, 100, 24], [127, 0, 0, 1], 4711, 80),
        &tlvs,
    );
    let seen = env.pass_raw(&with_get(&header, "/tlv"));
    assert_eq!(seen.headers_all("x-forwarded-for"), ["198.51.100.24"]);
    assert_eq!(
        seen.target, "/tlv",
        "the TLV bytes must not leak into the request"
    );
}

#[test]
fn proxy_v2_local_command_uses_the_tcp_peer() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    // A LOCAL header (a balancer's health check) may carry an address block; it is ignored.
    let header = proxy_v2(
        0x20,
        0x11,
        &tcp4([198, 51, 100, 25], [127, 0, 0, 1], 4711, 80),
        &[],
    );
    let seen = env.pass_raw(&with_get(&header, "/local"));
    assert_eq!(seen.headers_all("x-forwarded-for"), ["127.0.0.1"]);
    let empty_local = proxy_v2(0x20, 0x00, &[], &[]);
    let seen = env.pass_raw(&with_get(&empty_local, "/local"));
    assert_eq!(seen.headers_all("x-forwarded-for"), ["127.0.0.1"]);
}

#[test]
fn required_proxy_protocol_closes_connections_without_a_header() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    assert_closed_without_response(
        env.port(),
        b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "plain HTTP on a required listener",
    );
    // The listener still serves a well-formed connection, and only that request arrived.
    env.pass_raw(&with_get(
        b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 80\r\n",
        "/good",
    ));
    assert_eq!(
        env.up.requests(),
        1,
        "the plain request reached the upstream"
    );
    assert_eq!(env.up.last_request().target, "/good");
}

#[test]
fn malformed_proxy_headers_close_the_connection_silently() {
    let env = Env::start("proxy_protocol = \"required\"", "", &[]);
    let addresses = tcp4([198, 51, 100, 26], [127, 0, 0, 1], 4711, 80);
    // A TLV announcing 16 bytes of value with only its 3-byte head inside the length.
    let overrun = proxy_v2(0x21, 0x11, &addresses, &[0x04, 0x00, 0x10]);
    // Version nibble 3 instead of 2.
    let bad_version = proxy_v2(0x31, 0x11, &addresses, &[]);
    // TCP4 with a length too short for its address block.
    let mut short = proxy_v2(0x21, 0x11, &addresses, &[]);
    short[14..16].copy_from_slice(&6u16.to_be_bytes());
    let cases: &[(&str, Vec<u8>)] = &[
        (
            "v1 with an invalid IPv4 source",
            b"PROXY TCP4 999.1.1.1 127.0.0.1 4711 80\r\n".to_vec(),
        ),
        (
            "v1 with an IPv6 source under TCP4",
            b"PROXY TCP4 2001:db8::1 127.0.0.1 4711 80\r\n".to_vec(),
        ),
        (
            "v1 with a port above 65535",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 70000 80\r\n".to_vec(),
        ),
        (
            "v1 with an unknown protocol",
            b"PROXY SCTP 203.0.113.9 127.0.0.1 4711 80\r\n".to_vec(),
        ),
        ("v2 with version 3", bad_version),
        ("v2 with a TLV overrunning the length", overrun),
        ("v2 with a length too short for TCP4", short),
    ];
    for (what, header) in cases {
        assert_closed_without_response(env.port(), &with_get(header, "/bad"), what);
    }
    assert_eq!(
        env.up.requests(),
        0,
        "a request behind a malformed PROXY header reached the upstream"
    );
    env.pass_raw(&with_get(
        b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 80\r\n",
        "/good",
    ));
}

#[test]
fn optional_proxy_protocol_accepts_connections_with_and_without_a_header() {
    let env = Env::start("proxy_protocol = \"optional\"", "", &[]);
    let plain = env.pass("GET", "/plain", &[]);
    assert_eq!(plain.headers_all("x-forwarded-for"), ["127.0.0.1"]);
    let v1 = env.pass_raw(&with_get(
        b"PROXY TCP4 203.0.113.10 127.0.0.1 4711 80\r\n",
        "/v1",
    ));
    assert_eq!(v1.headers_all("x-forwarded-for"), ["203.0.113.10"]);
    let header = proxy_v2(
        0x21,
        0x11,
        &tcp4([198, 51, 100, 27], [127, 0, 0, 1], 4711, 80),
        &[],
    );
    let v2 = env.pass_raw(&with_get(&header, "/v2"));
    assert_eq!(v2.headers_all("x-forwarded-for"), ["198.51.100.27"]);
}

#[test]
fn a_proxy_header_is_not_accepted_on_a_listener_with_proxy_protocol_off() {
    let env = Env::start("", "", &[]);
    // Without the PROXY protocol the header is just garbage in front of HTTP: never a client
    // address the gateway believes.
    let mut c = Client::connect(env.port());
    let _ = c.try_send(&with_get(
        b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 80\r\n",
        "/off",
    ));
    let out = c.read_to_eof_or_timeout(Duration::from_secs(3));
    let text = String::from_utf8_lossy(&out.data).into_owned();
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "a PROXY header was accepted on an `off` listener: {text}"
    );
    assert_eq!(env.up.requests(), 0, "the request reached the upstream");
}

#[test]
fn the_proxy_source_address_is_what_ip_rules_see() {
    let env = Env::start(
        "proxy_protocol = \"required\"\n[listeners.ip]\ndeny = [\"203.0.113.7/32\"]",
        "",
        &[],
    );
    env.refused_raw(
        &with_get(b"PROXY TCP4 203.0.113.7 127.0.0.1 4711 80\r\n", "/x"),
        403,
        Some("ip_denied"),
    );
    let header = proxy_v2(
        0x21,
        0x11,
        &tcp4([203, 0, 113, 7], [127, 0, 0, 1], 4711, 80),
        &[],
    );
    env.refused_raw(&with_get(&header, "/x"), 403, Some("ip_denied"));
    env.pass_raw(&with_get(
        b"PROXY TCP4 203.0.113.8 127.0.0.1 4711 80\r\n",
        "/x",
    ));
}

// ---------------------------------------------------------------------------
// X-Forwarded-For from trusted proxies
// ---------------------------------------------------------------------------

#[test]
fn forwarded_for_from_a_trusted_peer_names_the_rightmost_untrusted_hop() {
    let env = Env::start(TRUST_LOOPBACK, "", &[]);
    let seen = env.pass(
        "GET",
        "/xff",
        &[("X-Forwarded-For", "198.51.100.1, 203.0.113.5")],
    );
    assert_eq!(
        seen.headers_all("x-forwarded-for"),
        ["203.0.113.5"],
        "only the client address is passed on, not the client's own list"
    );
}

#[test]
fn forwarded_for_skips_every_trusted_hop() {
    let env = Env::start(
        "trusted_proxies = [\"127.0.0.1/32\", \"203.0.113.0/24\"]",
        "",
        &[],
    );
    let seen = env.pass(
        "GET",
        "/xff",
        &[("X-Forwarded-For", "198.51.100.1, 203.0.113.5")],
    );
    assert_eq!(seen.headers_all("x-forwarded-for"), ["198.51.100.1"]);
}

#[test]
fn forwarded_for_fields_are_read_as_one_list() {
    let env = Env::start(TRUST_LOOPBACK, "", &[]);
    // A client-written field first, then the one its (trusted) proxy appended.
    let seen = env.pass(
        "GET",
        "/xff",
        &[
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-For", "203.0.113.6"),
        ],
    );
    assert_eq!(seen.headers_all("x-forwarded-for"), ["203.0.113.6"]);
}

#[test]
fn forwarded_for_carries_ipv6_clients() {
    let env = Env::start(TRUST_LOOPBACK, "", &[]);
    let seen = env.pass("GET", "/xff", &[("X-Forwarded-For", "2001:db8::1")]);
    assert_eq!(seen.headers_all("x-forwarded-for"), ["2001:db8::1"]);
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let env = Env::start(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[listeners.ip]\nallow = [\"127.0.0.1/32\", \"198.51.100.0/24\"]\ndeny = [\"203.0.113.0/24\"]",
        "",
        &[],
    );
    // A denied address in the field does not get the loopback client refused...
    let seen = env.pass("GET", "/xff", &[("X-Forwarded-For", "203.0.113.5")]);
    assert_eq!(
        seen.headers_all("x-forwarded-for"),
        ["127.0.0.1"],
        "the field of an untrusted peer must be replaced by the peer address"
    );
    // ...and the client is 127.0.0.1 whatever it claims.
    let seen = env.pass("GET", "/xff", &[("X-Forwarded-For", "198.51.100.1")]);
    assert_eq!(seen.headers_all("x-forwarded-for"), ["127.0.0.1"]);
}

#[test]
fn forwarded_for_cannot_spoof_an_allow_list_from_an_untrusted_peer() {
    let env = Env::start(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[listeners.ip]\nallow = [\"198.51.100.0/24\"]",
        "",
        &[],
    );
    env.refused(
        "GET",
        "/spoof",
        &[("X-Forwarded-For", "198.51.100.1")],
        403,
        "ip_denied",
    );
}

// ---------------------------------------------------------------------------
// IP allow and deny lists
// ---------------------------------------------------------------------------

#[test]
fn listener_deny_list_refuses_with_403_ip_denied() {
    let env = Env::start(
        &format!("{TRUST_LOOPBACK}\n[listeners.ip]\ndeny = [\"203.0.113.7/32\"]"),
        "",
        &[],
    );
    env.denies("203.0.113.7", "/x");
    // The same address written as IPv4-mapped IPv6 is the same client.
    env.denies("::ffff:203.0.113.7", "/x");
    env.admits("203.0.113.8", "/x");
    env.admits("198.51.100.1", "/x");
}

#[test]
fn deny_wins_over_allow_and_a_non_empty_allow_list_admits_only_its_members() {
    let env = Env::start(
        &format!(
            "{TRUST_LOOPBACK}\n[listeners.ip]\nallow = [\"203.0.113.0/24\"]\ndeny = [\"203.0.113.7/32\"]"
        ),
        "",
        &[],
    );
    env.admits("203.0.113.8", "/x");
    env.admits("203.0.113.255", "/x");
    env.denies("203.0.113.7", "/x");
    env.denies("198.51.100.1", "/x");
    env.denies("203.0.114.1", "/x");
    env.denies("2001:db8::1", "/x");
}

#[test]
fn ipv6_allow_and_deny_lists() {
    let env = Env::start(
        &format!(
            "{TRUST_LOOPBACK}\n[listeners.ip]\nallow = [\"2001:db8::/32\"]\ndeny = [\"2001:db8:bad::/48\"]"
        ),
        "",
        &[],
    );
    env.admits("2001:db8::1", "/x");
    env.admits("2001:db8:ffff::1", "/x");
    env.denies("2001:db8:bad::1", "/x");
    env.denies("2001:db8:bad:1::2", "/x");
    env.denies("2001:db9::1", "/x");
    env.denies("203.0.113.8", "/x");
}

#[test]
fn listener_lists_apply_to_the_direct_peer_without_trusted_proxies() {
    let denied = Env::start("[listeners.ip]\ndeny = [\"127.0.0.0/8\"]", "", &[]);
    denied.refused("GET", "/x", &[], 403, "ip_denied");
    let allowed = Env::start("[listeners.ip]\nallow = [\"127.0.0.1/32\"]", "", &[]);
    allowed.pass("GET", "/x", &[]);
    let elsewhere = Env::start("[listeners.ip]\nallow = [\"10.0.0.0/8\"]", "", &[]);
    elsewhere.refused("GET", "/x", &[], 403, "ip_denied");
}

#[test]
fn api_level_ip_lists_apply_to_every_route_of_the_api() {
    let env = Env::start(
        TRUST_LOOPBACK,
        "[apis.ip]\ndeny = [\"198.51.100.0/24\"]",
        &[("/a", ""), ("/b", "")],
    );
    env.denies("198.51.100.9", "/a");
    env.denies("198.51.100.9", "/b");
    env.admits("203.0.113.9", "/a");
    env.admits("203.0.113.9", "/b");
}

#[test]
fn route_level_ip_lists_apply_to_their_route_only() {
    let env = Env::start(
        TRUST_LOOPBACK,
        "",
        &[
            ("/admin", "[apis.routes.ip]\nallow = [\"10.0.0.0/8\"]"),
            ("/public", ""),
        ],
    );
    env.denies("203.0.113.9", "/admin");
    env.admits("10.1.2.3", "/admin");
    env.admits("203.0.113.9", "/public");
}

#[test]
fn listener_api_and_route_lists_all_apply() {
    let env = Env::start(
        &format!("{TRUST_LOOPBACK}\n[listeners.ip]\ndeny = [\"203.0.113.1/32\"]"),
        "[apis.ip]\ndeny = [\"203.0.113.2/32\"]",
        &[("/r", "[apis.routes.ip]\ndeny = [\"203.0.113.3/32\"]")],
    );
    env.denies("203.0.113.1", "/r");
    env.denies("203.0.113.2", "/r");
    env.denies("203.0.113.3", "/r");
    env.admits("203.0.113.4", "/r");
}

// ---------------------------------------------------------------------------
// Request filters: methods, content types, body size
// ---------------------------------------------------------------------------

#[test]
fn methods_filter_blocks_other_methods() {
    let env = Env::start(
        "",
        "",
        &[("/m", "[apis.routes.filters]\nmethods = [\"GET\", \"POST\"]")],
    );
    env.pass("GET", "/m", &[]);
    env.pass_raw(&post("/m", Some("application/json"), "{}"));
    env.blocked("DELETE", "/m", "methods");
    env.blocked("PUT", "/m/x", "methods");
}

#[test]
fn content_types_filter_checks_the_media_type_of_bodies_only() {
    let env = Env::start(
        "",
        "",
        &[(
            "/ct",
            "[apis.routes.filters]\ncontent_types = [\"application/json\"]",
        )],
    );
    env.pass_raw(&post("/ct", Some("application/json"), "{\"a\":1}"));
    env.pass_raw(&post("/ct", Some("application/json; charset=utf-8"), "{}"));
    env.pass_raw(&post("/ct", Some("Application/JSON"), "{}"));
    env.blocked_raw(&post("/ct", Some("text/plain"), "hello"), "content_types");
    env.blocked_raw(&post("/ct", None, "{}"), "content_types");
    env.blocked_raw(
        b"POST /ct HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n<a>\r\n0\r\n\r\n",
        "content_types",
    );
    // Without a body, the content type does not matter.
    env.pass("GET", "/ct", &[]);
    env.pass("GET", "/ct", &[("Content-Type", "text/plain")]);
}

#[test]
fn max_body_filter_answers_413_above_the_limit() {
    let env = Env::start(
        "",
        "",
        &[
            ("/size", "[apis.routes.filters]\nmax_body = \"1KiB\""),
            ("/bytes", "[apis.routes.filters]\nmax_body = 10"),
        ],
    );
    let at_limit = "x".repeat(1024);
    let seen = env.pass_raw(&post("/size", Some("text/plain"), &at_limit));
    assert_eq!(seen.body_len, 1024);
    env.refused_raw(
        &post("/size", Some("text/plain"), &"x".repeat(1025)),
        413,
        None,
    );
    env.pass_raw(&post("/bytes", Some("text/plain"), "0123456789"));
    env.refused_raw(
        &post("/bytes", Some("text/plain"), "0123456789a"),
        413,
        None,
    );
}

#[test]
fn api_level_filters_apply_together_with_route_filters() {
    let env = Env::start(
        "",
        "[apis.filters]\nmethods = [\"GET\"]",
        &[
            ("/scan", "[apis.routes.filters]\nsignatures = [\"xss\"]"),
            ("/plain", ""),
        ],
    );
    env.pass("GET", "/scan?q=hello", &[]);
    env.pass("GET", "/plain", &[]);
    env.blocked("DELETE", "/plain", "methods");
    env.blocked("DELETE", "/scan", "methods");
    env.blocked("GET", "/scan?q=%3Cscript%3E", "xss/script-tag");
}

// ---------------------------------------------------------------------------
// Request signatures
// ---------------------------------------------------------------------------

/// Routes `/files`, `/search`, `/users`, `/go` with every signature, `/comments` with xss only
/// and `/plain` with none.
fn signature_env() -> Env {
    Env::start(
        "",
        "",
        &[
            ("/files", ALL_SIGNATURES),
            ("/search", ALL_SIGNATURES),
            ("/users", ALL_SIGNATURES),
            ("/go", ALL_SIGNATURES),
            ("/comments", "[apis.routes.filters]\nsignatures = [\"xss\"]"),
            ("/plain", ""),
        ],
    )
}

#[test]
fn path_traversal_in_the_query_is_blocked() {
    let env = signature_env();
    for target in [
        "/files?name=..%2F..%2Fetc%2Fpasswd",
        "/files?name=../secret",
        "/files?name=%252e%252e%252fsecret",
        "/files?name=%25252e%25252e%25252fsecret",
        "/files?name=..%5C..%5Csecret",
        "/files?dir=x&up=..",
    ] {
        env.blocked("GET", target, "path-traversal/dot-dot-segment");
    }
}

#[test]
fn path_traversal_in_the_path_is_blocked_by_the_filter() {
    let env = signature_env();
    for target in [
        // Resolves to /files/secret: routed to /files, whose filter sees the target as sent.
        "/files/%2e%2e/files/secret",
        "/files/a/%2E%2E/b",
        "/files/..;/secret",
        // Double-encoded: the path keeps `%252e`, the filter decodes it to `../`.
        "/files/%252e%252e%252fsecret",
    ] {
        env.blocked("GET", target, "path-traversal/dot-dot-segment");
    }
}

#[test]
fn dot_segments_climbing_above_the_root_are_refused_before_routing() {
    // Such a path names no route at all: path normalization refuses it (400) before any route's
    // filters could run, and nothing is forwarded.
    let env = signature_env();
    for target in ["/files/%2e%2e/%2e%2e/secret", "/files/../../secret"] {
        let before = env.up.requests();
        let resp = get(env.port(), target);
        assert_problem(&resp, 400);
        assert_eq!(env.up.requests(), before, "{target} reached the upstream");
    }
}

#[test]
fn escaped_slash_traversal_in_the_path_is_refused_and_never_forwarded() {
    let env = signature_env();
    // An escaped slash or backslash in a path is refused by path normalization
    // (escaped_slashes = "reject", 400) or by the filter (403); either way it is never forwarded.
    for target in [
        "/files/..%2f..%2fetc/passwd",
        "/files/%2e%2e%2f%2e%2e%2fsecret",
        "/files/..%5csecret",
    ] {
        let before = env.up.requests();
        let resp = get(env.port(), target);
        assert!(
            resp.status == 400 || resp.status == 403,
            "{target}: expected 400 or 403, got {} {}",
            resp.status,
            resp.body_str()
        );
        assert_problem(&resp, resp.status);
        if resp.status == 403 {
            assert_refused(&resp, 403, "blocked_by_filter");
        }
        assert_eq!(env.up.requests(), before, "{target} reached the upstream");
    }
}

#[test]
fn sensitive_files_are_blocked() {
    let env = signature_env();
    for target in [
        "/files?name=%2Fetc%2Fpasswd",
        "/files?name=/etc/shadow",
        "/files?name=C:%5CWindows%5Csystem32",
        "/files?name=win.ini",
        "/files/proc/self/environ",
    ] {
        env.blocked("GET", target, "path-traversal/sensitive-file");
    }
}

#[test]
fn sql_injection_is_blocked() {
    let env = signature_env();
    let cases = [
        (
            "/search?q=1+UNION+SELECT+password+FROM+users",
            "sql-injection/union-select",
        ),
        (
            "/search?q=1%20union/**/select%201",
            "sql-injection/union-select",
        ),
        (
            "/search?q=1+union+all+select+2",
            "sql-injection/union-select",
        ),
        (
            "/search?q=%2555nion%2520select",
            "sql-injection/union-select",
        ),
        (
            "/users?name=%27+or+%271%27%3D%271",
            "sql-injection/tautology",
        ),
        ("/users?id=1+or+1=1", "sql-injection/tautology"),
        (
            "/users?id=1%3B+DROP+TABLE+users",
            "sql-injection/stacked-query",
        ),
        ("/users?id=1+and+sleep(5)", "sql-injection/time-delay"),
    ];
    for (target, rule) in cases {
        env.blocked("GET", target, rule);
    }
}

#[test]
fn cross_site_scripting_is_blocked() {
    let env = signature_env();
    let cases = [
        (
            "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "xss/script-tag",
        ),
        ("/search?q=%253CScRiPt%253E", "xss/script-tag"),
        ("/go?next=javascript:alert(1)", "xss/script-url"),
        ("/go?next=JaVaScRiPt%3Avoid(0)", "xss/script-url"),
        ("/search?q=%3Cx+onerror%3Dalert(1)%3E", "xss/event-handler"),
        (
            "/search?q=%3Csvg%2Fonload%3Dalert(1)%3E",
            "xss/embedded-element",
        ),
    ];
    for (target, rule) in cases {
        env.blocked("GET", target, rule);
    }
}

#[test]
fn nul_bytes_are_blocked() {
    let env = signature_env();
    for target in [
        "/files?name=secret.txt%00.pdf",
        "/files?name=a%2500b",
        "/search?q=%00",
    ] {
        env.blocked("GET", target, "nul-byte/nul");
    }
}

#[test]
fn benign_requests_pass_the_signatures_unchanged() {
    let env = signature_env();
    for target in [
        "/files/report..v2.txt",
        "/files?name=notes..txt",
        "/files/passwd",
        "/search?q=select+a+union+member",
        "/search?q=union+selection",
        "/search?q=description+of+scripts",
        "/search?q=rock+%26+roll",
        "/users/O%27Brien",
        "/users?name=O%27Brien",
        "/go?next=%2Fhome",
    ] {
        let seen = env.pass("GET", target, &[]);
        assert_eq!(
            seen.target, target,
            "the upstream should see the target as sent"
        );
    }
}

#[test]
fn signatures_block_only_on_routes_that_enable_them() {
    let env = signature_env();
    for target in [
        "/plain?q=1+union+select+2",
        "/plain?name=..%2F..%2Fetc%2Fpasswd",
        "/plain?q=%3Cscript%3E",
        "/plain?name=a%00b",
        "/comments?q=1+union+select+2",
        "/comments?name=..%2F..%2Fetc%2Fpasswd",
    ] {
        env.pass("GET", target, &[]);
    }
    env.blocked("GET", "/comments?q=%3Cscript%3E", "xss/script-tag");
}

#[test]
fn filters_refuse_before_authentication() {
    let pepper = pepper_file();
    let up = TestUpstream::start(Mode::Echo);
    let port = free_port();
    let text = ConfigBuilder::new(port, &[up.port])
        .route("/search", ALL_SIGNATURES)
        .build();
    let text = format!(
        "{}\n[auth]\nkey_pepper_file = \"{}\"\n",
        with_api(&text, "auth = [\"api_key\"]"),
        file_name(&pepper)
    );
    let gw = Gateway::start(&text);
    let env = Env { up, gw };
    // Without a credential a plain request is 401; an attack is refused by the filter first.
    let resp = get(env.port(), "/search?q=hello");
    assert_eq!(resp.status, 401, "{}", resp.body_str());
    env.blocked("GET", "/search?q=%3Cscript%3E", "xss/script-tag");
    assert_eq!(env.up.requests(), 0);
}

// ---------------------------------------------------------------------------
// Connection caps
// ---------------------------------------------------------------------------

#[test]
fn connections_per_client_address_are_capped() {
    let env = Env::start("max_connections_per_ip = 2", "", &[]);
    let port = env.port();
    let mut first = open_used(port, "first connection");
    let second = open_used(port, "second connection");
    assert_connection_refused(port, "third connection from 127.0.0.1");
    // The admitted connections keep working.
    assert_eq!(first.get("/still").status, 200);
    drop(second);
    let _third = open_used(port, "after closing the second connection");
    assert_eq!(first.get("/still").status, 200);
}

#[test]
fn listener_connection_cap_holds_across_cores() {
    let env = Env::start_with(2, "max_connections = 3", "", &[]);
    let port = env.port();
    let held: Vec<Client> = (1..=3)
        .map(|i| open_used(port, &format!("connection {i}")))
        .collect();
    for i in 0..3 {
        assert_connection_refused(port, &format!("connection over the cap, attempt {}", i + 1));
    }
    let mut held = held;
    for c in &mut held {
        assert_eq!(c.get("/still").status, 200);
    }
    drop(held.pop());
    let _again = open_used(port, "after closing one of three");
    assert_connection_refused(port, "at the cap again");
}

#[test]
fn connection_caps_count_the_proxy_source_address() {
    let env = Env::start(
        "proxy_protocol = \"required\"\nmax_connections_per_ip = 1",
        "",
        &[],
    );
    let port = env.port();
    let mut held = Client::connect(port);
    let resp = held.request(&with_get(
        b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 80\r\n",
        "/held",
    ));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_closed_without_response(
        port,
        &with_get(b"PROXY TCP4 203.0.113.9 127.0.0.1 4712 80\r\n", "/over"),
        "a second connection from 203.0.113.9",
    );
    // Another client behind the same balancer (same TCP peer) is not affected.
    let mut other = Client::connect(port);
    let resp = other.request(&with_get(
        b"PROXY TCP4 203.0.113.10 127.0.0.1 4713 80\r\n",
        "/other",
    ));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(held.get("/still").status, 200);
}

// ---------------------------------------------------------------------------
// `check`
// ---------------------------------------------------------------------------

/// A valid config using every key of the filter phase.
fn full_config() -> String {
    let port = free_port();
    let b = ConfigBuilder::new(port, &[free_port()]).route(
        "/files",
        "[apis.routes.ip]\nallow = [\"10.0.0.0/8\"]\n\
         [apis.routes.filters]\nmethods = [\"GET\", \"POST\"]\nmax_body = \"1MiB\"\n\
         content_types = [\"application/json\"]\n\
         signatures = [\"path-traversal\", \"sql-injection\", \"xss\", \"nul-byte\"]",
    );
    let text = with_listener(
        &b.build(),
        port,
        "proxy_protocol = \"optional\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         max_connections = 100000\nmax_connections_per_ip = 256\n\
         [listeners.ip]\nallow = [\"203.0.113.0/24\", \"2001:db8::/32\"]\ndeny = [\"203.0.113.7/32\"]",
    );
    with_api(
        &text,
        "[apis.ip]\ndeny = [\"198.51.100.0/24\"]\n[apis.filters]\nmax_body = 65536",
    )
}

#[test]
fn check_accepts_every_filter_setting() {
    let (_file, out) = check(&full_config());
    assert_eq!(out.code(), Some(0), "{}", out.combined());
}

#[test]
fn check_refuses_a_bad_cidr_in_an_ip_list() {
    let text = full_config().replacen(
        "allow = [\"203.0.113.0/24\", \"2001:db8::/32\"]",
        "allow = [\"203.0.113.0/33\", \"2001:db8::/32\"]",
        1,
    );
    assert_refused_at(&text, "203.0.113.0/33");
    let text = full_config().replacen(
        "deny = [\"198.51.100.0/24\"]",
        "deny = [\"198.51.100.x\"]",
        1,
    );
    assert_refused_at(&text, "198.51.100.x");
    let text = full_config().replacen(
        "allow = [\"10.0.0.0/8\"]",
        "allow = [\"2001:db8::/129\"]",
        1,
    );
    assert_refused_at(&text, "2001:db8::/129");
}

#[test]
fn check_refuses_a_bad_trusted_proxy() {
    let text = full_config().replacen(
        "trusted_proxies = [\"10.0.0.0/8\"]",
        "trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300/8\"]",
        1,
    );
    assert_refused_at(&text, "10.0.0.300/8");
}

#[test]
fn check_refuses_an_unknown_signature() {
    let text = full_config().replacen(
        "signatures = [\"path-traversal\", \"sql-injection\", \"xss\", \"nul-byte\"]",
        "signatures = [\"path-traversal\", \"sqli\"]",
        1,
    );
    let out = assert_refused_at(&text, "\"sqli\"");
    assert!(out.stderr.contains("sqli"), "{}", out.stderr);
}

#[test]
fn check_refuses_a_bad_proxy_protocol_value() {
    let text = full_config().replacen(
        "proxy_protocol = \"optional\"",
        "proxy_protocol = \"sometimes\"",
        1,
    );
    assert_refused_at(&text, "sometimes");
}

#[test]
fn check_refuses_a_bad_max_body() {
    let text = full_config().replacen("max_body = \"1MiB\"", "max_body = \"lots\"", 1);
    assert_refused_at(&text, "\"lots\"");
    let text = full_config().replacen("max_body = 65536", "max_body = -1", 1);
    assert_refused_at(&text, "max_body = -1");
}
