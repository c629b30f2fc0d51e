//! Basic reverse-proxy behaviour: routing (prefix/exact matching, hosts,
//! methods, strip_prefix), problem+json 404/405 errors, forwarding headers
//! (X-Forwarded-*, X-Request-Id), hop-by-hop header removal, keep-alive and
//! upstream connection pooling, pipelining, request/response body framing
//! (Content-Length, chunked, close-delimited), HEAD/204/304 without bodies,
//! `Expect: 100-continue`, load balancing and multiple workers/listeners.

mod common;

use common::*;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn echo_gateway() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    (up, gw)
}

#[test]
fn get_is_proxied_to_upstream() {
    let (up, gw) = echo_gateway();
    let resp = get(gw.port(), "/hello/world?x=1&y=2");
    assert_eq!(resp.status, 200, "body: {}", resp.body_str());
    assert_eq!(resp.header("x-echo-method"), Some("GET"));
    assert_eq!(resp.header("x-echo-target"), Some("/hello/world?x=1&y=2"));
    assert_eq!(
        resp.header("x-upstream-port"),
        Some(up.port.to_string().as_str())
    );
    assert!(resp.body_str().contains("target=/hello/world?x=1&y=2"));
    let req = up.last_request();
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/hello/world?x=1&y=2");
    assert_eq!(req.version, "HTTP/1.1");
    assert_eq!(up.requests(), 1);
}

#[test]
fn unmatched_path_is_404_problem_json() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/api", "")
        .start();
    let resp = get(gw.port(), "/other");
    assert_problem(&resp, 404);
    assert_eq!(up.heads(), 0, "upstream must not see unrouted requests");
}

#[test]
fn wrong_method_is_405_with_allow_header() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/items", "methods = [\"GET\", \"POST\"]")
        .start();
    let mut c = gw.client();
    let resp = c.request(b"DELETE /items HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_problem(&resp, 405);
    let allow = resp.header("allow").expect("405 must carry Allow");
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow}"
    );
    assert!(!allow.contains("DELETE"), "Allow: {allow}");
    assert_eq!(up.heads(), 0);

    // Allowed methods go through.
    let resp = c.get("/items");
    assert_eq!(resp.status, 200);
    let resp = c.request(b"POST /items HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(resp.status, 200);
    assert_eq!(up.requests(), 2);
}

#[test]
fn prefix_match_is_segment_aware() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/api", "path_match = \"prefix\"")
        .start();
    let mut c = gw.client();
    assert_eq!(c.get("/api").status, 200);
    assert_eq!(c.get("/api/").status, 200);
    assert_eq!(c.get("/api/x/y").status, 200);
    assert_eq!(c.get("/api?q=1").status, 200);
    assert_problem(&c.get("/apix"), 404);
    assert_problem(&c.get("/ap"), 404);
    assert_problem(&c.get("/"), 404);
    let targets: Vec<String> = up.recorded().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/api", "/api/", "/api/x/y", "/api?q=1"]);
}

#[test]
fn exact_match_only_matches_exact_path() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/exact", "path_match = \"exact\"")
        .start();
    let mut c = gw.client();
    assert_eq!(c.get("/exact").status, 200);
    assert_eq!(c.get("/exact?q=1").status, 200);
    assert_problem(&c.get("/exact/more"), 404);
    assert_problem(&c.get("/exactly"), 404);
    assert_eq!(up.requests(), 2);
}

#[test]
fn strip_prefix_removes_matched_prefix() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/api", "strip_prefix = true")
        .start();
    let mut c = gw.client();
    assert_eq!(c.get("/api/x").status, 200);
    assert_eq!(up.last_request().target, "/x");
    assert_eq!(c.get("/api").status, 200);
    assert_eq!(up.last_request().target, "/");
    assert_eq!(c.get("/api/a/b?q=1").status, 200);
    assert_eq!(up.last_request().target, "/a/b?q=1");
}

#[test]
fn host_matching_with_wildcards() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/", "hosts = [\"example.com\", \"*.example.com\"]")
        .route("/wild", "hosts = [\"*.wild.test\"]")
        .start();
    let mut c = gw.client();
    let host_get = |c: &mut Client, host: &str, path: &str| -> u16 {
        c.request(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .status
    };
    assert_eq!(host_get(&mut c, "example.com", "/"), 200);
    assert_eq!(host_get(&mut c, "a.example.com", "/x"), 200);
    assert_eq!(host_get(&mut c, "other.com", "/"), 404);
    assert_eq!(host_get(&mut c, "badexample.com", "/"), 404);
    assert_eq!(host_get(&mut c, "a.wild.test", "/wild"), 200);
    // A wildcard matches subdomains only, never the bare domain.
    assert_eq!(host_get(&mut c, "wild.test", "/wild"), 404);
    assert_eq!(up.requests(), 3);
}

#[test]
fn forwarding_headers_are_added() {
    let (up, gw) = echo_gateway();
    let resp = request(
        gw.port(),
        b"GET /fwd HTTP/1.1\r\nHost: front.example:8080\r\nX-Forwarded-For: 10.9.9.9\r\nX-Other: kept\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let req = up.last_request();
    assert_eq!(
        req.headers_all("x-forwarded-for"),
        ["127.0.0.1"],
        "client-sent X-Forwarded-For must be replaced"
    );
    assert_eq!(req.header("x-forwarded-proto"), Some("http"));
    assert_eq!(req.header("x-forwarded-host"), Some("front.example:8080"));
    assert_eq!(req.header("x-other"), Some("kept"));
    let id = req.header("x-request-id").expect("X-Request-Id generated");
    assert!(!id.trim().is_empty());
    assert_eq!(
        resp.header("x-request-id"),
        Some(id),
        "response must carry the same request id"
    );
}

#[test]
fn generated_request_ids_are_unique() {
    let (up, gw) = echo_gateway();
    let mut c = gw.client();
    let a = c.get("/a");
    let b = c.get("/b");
    let ida = a.header("x-request-id").expect("id a").to_string();
    let idb = b.header("x-request-id").expect("id b").to_string();
    assert_ne!(ida, idb);
    let rec = up.recorded();
    assert_eq!(rec[0].header("x-request-id"), Some(ida.as_str()));
    assert_eq!(rec[1].header("x-request-id"), Some(idb.as_str()));
}

#[test]
fn client_request_id_is_kept() {
    let (up, gw) = echo_gateway();
    let resp = request(
        gw.port(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: abc-123\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_request().headers_all("x-request-id"), ["abc-123"]);
    assert_eq!(resp.header("x-request-id"), Some("abc-123"));
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let (up, gw) = echo_gateway();
    let resp = request(
        gw.port(),
        b"GET /hop HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, X-Custom-Hop\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: foo/1\r\nX-Custom-Hop: secret\r\nX-End-To-End: yes\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let req = up.last_request();
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "x-custom-hop",
    ] {
        // The gateway may manage its own upstream `Connection` header, but
        // must not copy the client's value.
        if h == "connection" {
            for v in req.headers_all(h) {
                assert!(
                    !v.to_ascii_lowercase().contains("x-custom-hop"),
                    "client Connection header forwarded: {v}"
                );
            }
            continue;
        }
        assert!(
            req.header(h).is_none(),
            "hop-by-hop header {h} forwarded: {:?}",
            req.header(h)
        );
    }
    assert_eq!(req.header("x-end-to-end"), Some("yes"));
    // Chunked bodies pass through with their trailer section, so the field announcing the
    // trailers travels with them.
    assert_eq!(req.header("trailer"), Some("X-T"));
}

#[test]
fn sequential_requests_reuse_one_upstream_connection() {
    let (up, gw) = echo_gateway();
    let mut c = gw.client();
    for i in 0..10 {
        let resp = c.get(&format!("/seq/{i}"));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("x-echo-target"),
            Some(format!("/seq/{i}").as_str())
        );
    }
    assert_eq!(up.requests(), 10);
    assert_eq!(
        up.connections(),
        1,
        "10 sequential requests through one worker must share one upstream connection"
    );
}

#[test]
fn upstream_connection_reused_across_client_connections() {
    let (up, gw) = echo_gateway();
    for i in 0..5 {
        let mut c = gw.client();
        assert_eq!(c.get(&format!("/c/{i}")).status, 200);
    }
    assert_eq!(up.requests(), 5);
    assert_eq!(up.connections(), 1, "pooled upstream connection not reused");
}

#[test]
fn keepalive_zero_disables_upstream_pooling() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .upstream_opt("keepalive = 0")
        .start();
    let mut c = gw.client();
    for _ in 0..3 {
        assert_eq!(c.get("/nopool").status, 200);
    }
    assert_eq!(up.connections(), 3);
}

#[test]
fn upstream_connection_close_is_honoured() {
    let up = TestUpstream::start(Mode::CloseAfterResponse);
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let mut c = gw.client();
    for i in 0..4 {
        let resp = c.get(&format!("/close/{i}"));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("x-echo-target"),
            Some(format!("/close/{i}").as_str())
        );
    }
    assert_eq!(up.requests(), 4);
    assert_eq!(up.connections(), 4);
}

#[test]
fn client_keepalive_connection_stays_open() {
    let (_up, gw) = echo_gateway();
    let mut c = gw.client();
    assert_eq!(c.get("/one").status, 200);
    c.assert_no_pending_data(Duration::from_millis(300));
    assert_eq!(c.get("/two").status, 200);
}

#[test]
fn client_connection_close_is_honoured() {
    let (_up, gw) = echo_gateway();
    let mut c = gw.client();
    let resp = c.request(b"GET /bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200);
    let out = c.read_to_eof_or_timeout(Duration::from_secs(3));
    assert!(
        out.closed,
        "gateway kept the connection open after Connection: close"
    );
    assert!(out.data.is_empty());
}

#[test]
fn http10_request_is_served_and_closed() {
    let (up, gw) = echo_gateway();
    let mut c = gw.client();
    let resp = c.request(b"GET /old HTTP/1.0\r\nHost: localhost\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_request().target, "/old");
    let out = c.read_to_eof_or_timeout(Duration::from_secs(3));
    assert!(
        out.closed,
        "HTTP/1.0 connection without keep-alive must close"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (up, gw) = echo_gateway();
    let mut c = gw.client();
    c.send(
        b"GET /p1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
POST /p2 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello\
GET /p3 HTTP/1.1\r\nHost: localhost\r\n\r\n\
POST /p4 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /p5 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    for p in ["/p1", "/p2", "/p3", "/p4", "/p5"] {
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-echo-target"), Some(p));
    }
    let rec = up.recorded();
    assert_eq!(rec.len(), 5);
    assert_eq!(rec[1].body, b"hello");
    assert_eq!(rec[3].body, b"abc");
}

#[test]
fn content_length_request_body_is_forwarded() {
    let (up, gw) = echo_gateway();
    let resp = request(
        gw.port(),
        b"POST /cl HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(resp.status, 200);
    let req = up.last_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.body, b"hello world");
    assert!(!req.chunked);
    assert_eq!(req.header("content-length"), Some("11"));
}

#[test]
fn chunked_request_body_is_forwarded_chunked() {
    let (up, gw) = echo_gateway();
    let resp = request(
        gw.port(),
        b"POST /ch HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n1;ext=ok\r\n!\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let req = up.last_request();
    assert!(req.chunked, "upstream must receive a chunked body");
    assert!(req.header("content-length").is_none());
    assert_eq!(req.body_str(), "hello world!");
}

#[test]
fn chunked_upstream_response_reaches_client_chunked() {
    let handler: Handler = Arc::new(|_req: &RecordedRequest| {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n"
            .to_vec()
    });
    let up = TestUpstream::start(Mode::Func(handler));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let mut c = gw.client();
    for _ in 0..2 {
        let resp = c.get("/chunked");
        assert_eq!(resp.status, 200);
        assert!(resp.chunked, "client must receive a chunked response");
        assert_eq!(resp.body_str(), "Wikipedia in\r\n\r\nchunks.");
        assert_eq!(resp.header("content-type"), Some("text/plain"));
    }
}

#[test]
fn close_delimited_upstream_response_is_relayed() {
    let up = TestUpstream::start(Mode::RawThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
    ));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let mut c = gw.client();
    let resp = c.get("/eof");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "until the end");
}

#[test]
fn head_response_has_no_body() {
    let (up, gw) = echo_gateway();
    let mut c = gw.client();
    c.send(b"HEAD /h HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let resp = c.read_head_response();
    assert_eq!(resp.status, 200);
    assert_eq!(up.last_request().method, "HEAD");
    c.assert_no_pending_data(Duration::from_millis(300));
    // The connection is still usable and in sync.
    let resp = c.get("/after-head");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-echo-target"), Some("/after-head"));
}

#[test]
fn responses_204_and_304_have_no_body() {
    let handler: Handler = Arc::new(|req: &RecordedRequest| match req.target.as_str() {
        "/204" => b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec(),
        "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    });
    let up = TestUpstream::start(Mode::Func(handler));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let mut c = gw.client();

    let resp = c.get("/204");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("x-a"), Some("1"));
    assert!(resp.header("transfer-encoding").is_none());
    c.assert_no_pending_data(Duration::from_millis(300));

    let resp = c.get("/304");
    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert!(resp.header("transfer-encoding").is_none());
    c.assert_no_pending_data(Duration::from_millis(300));

    let resp = c.get("/ok");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "ok");
}

#[test]
fn expect_100_continue_is_answered_by_gateway() {
    let (up, gw) = echo_gateway();
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(3));
    c.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_response();
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before sending the body"
    );
    c.send(b"hello");
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    let req = up.last_request();
    assert_eq!(req.body, b"hello");
}

#[test]
fn expect_100_continue_over_limit_gets_413() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .route("/", "max_body_bytes = 10")
        .start();
    let mut c = gw.client();
    c.set_read_timeout(Duration::from_secs(3));
    c.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n");
    let resp = c.read_response();
    assert_problem(&resp, 413);
    assert_eq!(up.heads(), 0);
}

#[test]
fn round_robin_uses_all_targets() {
    let a = TestUpstream::start(Mode::Echo);
    let b = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[a.port, b.port])
        .upstream_opt("balance = \"round_robin\"")
        .start();
    for i in 0..8 {
        assert_eq!(get(gw.port(), &format!("/rr/{i}")).status, 200);
    }
    assert_eq!(a.requests() + b.requests(), 8);
    assert_eq!(a.requests(), 4, "round robin over two targets");
    assert_eq!(b.requests(), 4, "round robin over two targets");
}

#[test]
fn least_outstanding_avoids_busy_target() {
    let slow = TestUpstream::start(Mode::Delay(Duration::from_secs(2)));
    let fast = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[slow.port, fast.port])
        .upstream_opt("balance = \"least_outstanding\"")
        .start();
    let port = gw.port();
    // Fire background requests until one is outstanding on the slow target.
    let mut background = Vec::new();
    for _ in 0..6 {
        background.push(thread::spawn(move || get(port, "/bg").status));
        thread::sleep(Duration::from_millis(150));
        if slow.heads() >= 1 {
            break;
        }
    }
    assert_eq!(slow.heads(), 1, "no request reached the slow target");
    let fast_before = fast.requests();
    for i in 0..4 {
        assert_eq!(get(port, &format!("/lo/{i}")).status, 200);
    }
    assert_eq!(
        slow.heads(),
        1,
        "least_outstanding sent a request to the target that is still busy"
    );
    assert_eq!(fast.requests(), fast_before + 4);
    for h in background {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn two_workers_serve_concurrent_clients() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .workers(2)
        .start();
    let port = gw.port();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..5 {
                    let path = format!("/w/{t}/{i}");
                    let resp = c.get(&path);
                    assert_eq!(resp.status, 200);
                    assert_eq!(resp.header("x-echo-target"), Some(path.as_str()));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    assert_eq!(up.requests(), 40);
}

#[test]
fn multiple_listeners_all_serve() {
    let up = TestUpstream::start(Mode::Echo);
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .extra_listener(free_port())
        .start();
    assert_eq!(gw.ports.len(), 2);
    for &p in &gw.ports {
        assert_eq!(get(p, "/multi").status, 200);
    }
    assert_eq!(up.requests(), 2);
}

#[test]
fn upstream_response_headers_and_status_are_relayed() {
    let handler: Handler = Arc::new(|_req: &RecordedRequest| {
        b"HTTP/1.1 201 Created\r\nLocation: /things/1\r\nX-Custom: abc\r\nContent-Length: 7\r\n\r\ncreated"
            .to_vec()
    });
    let up = TestUpstream::start(Mode::Func(handler));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let resp = request(
        gw.port(),
        b"POST /things HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("location"), Some("/things/1"));
    assert_eq!(resp.header("x-custom"), Some("abc"));
    assert_eq!(resp.body_str(), "created");
    assert!(resp.header("x-request-id").is_some());
}

/// Data-carrying TCP segments a connection has received (`tcp_info.tcpi_data_segs_in`, Linux
/// 4.6+; at byte 152 of the kernel's `struct tcp_info`, beyond what `libc::tcp_info` declares).
fn data_segments_in(stream: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(TCP_INFO)");
    assert!(
        len >= 156,
        "tcp_info too short for tcpi_data_segs_in: {len}"
    );
    u32::from_ne_bytes(info[152..156].try_into().unwrap())
}

#[test]
fn small_response_reaches_the_client_in_one_segment() {
    // The upstream writes head and body at once; the gateway sends its rewritten head and the
    // body together, not as two packets.
    let handler: Handler = Arc::new(|req: &RecordedRequest| {
        if req.target == "/chunked" {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nhello from upstream\n".to_vec()
        }
    });
    let up = TestUpstream::start(Mode::Func(handler));
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let mut c = gw.client();
    let resp = c.get("/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "hello from upstream\n");
    assert_eq!(
        data_segments_in(&c.stream),
        1,
        "head and body in one segment"
    );
    let resp = c.get("/chunked");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "hello");
    assert_eq!(
        data_segments_in(&c.stream),
        2,
        "chunked head and body in one segment"
    );
}
