//! Path normalization, black-box: the gateway routes, authorizes and forwards the normalized
//! path, and refuses the paths it cannot normalize safely (400). Absolute-form targets.

mod common;

use common::*;

/// A gateway with `/echo` (prefix stripped), `/public`, `/admin` and `/t/{tenant}` routes in
/// front of a recording upstream, with `limits` lines.
fn gateway(limits: &[&str]) -> (TestUpstream, Gateway) {
    let up = TestUpstream::start(Mode::Echo);
    let mut b = ConfigBuilder::new(free_port(), &[up.port])
        .route("/echo", "strip_prefix = true")
        .route("/public", "")
        .route("/admin", "methods = [\"GET\"]\nmax_body_bytes = 7")
        .route("/t/{tenant}/x", "");
    for line in limits {
        b = b.limit(line);
    }
    let gw = b.start();
    (up, gw)
}

/// Sends `GET target` and returns the status and, when forwarded, the target the upstream saw.
fn forwarded(up: &TestUpstream, gw: &Gateway, target: &str) -> (u16, Option<String>) {
    let before = up.requests();
    let resp = request(
        gw.port(),
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    );
    if resp.status == 200 {
        assert!(up.wait_requests(before + 1, std::time::Duration::from_secs(5)));
        return (200, Some(up.last_request().target));
    }
    assert_eq!(
        up.requests(),
        before,
        "{target}: a refused request reached the upstream"
    );
    (resp.status, None)
}

#[test]
fn the_issue_table_with_the_default_reject() {
    let (up, gw) = gateway(&[]);
    let cases: &[(&str, u16, Option<&str>)] = &[
        // Decoded dot segments climb out of /echo: the upstream gets what the gateway routed.
        ("/echo/%2e%2e/admin", 200, Some("/admin")),
        ("/echo/.%2e/admin", 200, Some("/admin")),
        ("/echo/%2E%2E%2Fadmin", 400, None),
        ("/echo/..%2fadmin", 400, None),
        ("/echo/%252e%252e/admin", 200, Some("/%252e%252e/admin")),
        ("/echo/%00x", 400, None),
        ("/echo/%5Cadmin", 400, None),
        ("/echo/%2e", 200, Some("/")),
        ("/echo/a/%2e./b", 200, Some("/b")),
        ("/echo/%41%62?q=%2e%2e/x", 200, Some("/Ab?q=%2e%2e/x")),
        ("/echo/a%3ab", 200, Some("/a%3Ab")),
        ("/..", 400, None),
        ("/echo/../../x", 400, None),
        ("/echo/%zz", 400, None),
        ("/echo/%C0%AE%C0%AE/admin", 400, None),
        ("/echo/caf%c3%a9", 200, Some("/caf%C3%A9")),
        ("/echo//a", 200, Some("//a")),
    ];
    for (target, status, upstream) in cases {
        let (got, seen) = forwarded(&up, &gw, target);
        assert_eq!(got, *status, "{target}");
        assert_eq!(seen.as_deref(), *upstream, "{target}");
    }
}

#[test]
fn escaped_slashes_decode_and_keep() {
    let (up, gw) = gateway(&["escaped_slashes = \"decode\""]);
    // /public/..%2fadmin is /admin once decoded: it is routed (and forwarded) as /admin.
    assert_eq!(
        forwarded(&up, &gw, "/public/..%2fadmin"),
        (200, Some("/admin".into()))
    );
    assert_eq!(
        forwarded(&up, &gw, "/echo/a%5Cb"),
        (200, Some("/a/b".into()))
    );
    // /admin's route allows GET only: a 405 shows the decoded path was routed, not the raw one.
    let resp = request(
        gw.port(),
        b"POST /public/..%2fadmin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(
        resp.status,
        405,
        "/admin's route (GET only) took it, not /public's: {}",
        resp.body_str()
    );
    drop(gw);

    let (up, gw) = gateway(&["escaped_slashes = \"keep\""]);
    // Kept escapes are never separators: the path stays under /public.
    assert_eq!(
        forwarded(&up, &gw, "/public/..%2fadmin"),
        (200, Some("/public/..%2Fadmin".into()))
    );
    assert_eq!(
        forwarded(&up, &gw, "/echo/a%5cb"),
        (200, Some("/a%5Cb".into()))
    );
}

#[test]
fn merge_slashes_is_an_option() {
    let (up, gw) = gateway(&["merge_slashes = true"]);
    assert_eq!(
        forwarded(&up, &gw, "/echo//a///b"),
        (200, Some("/a/b".into()))
    );
    assert_eq!(
        forwarded(&up, &gw, "//public"),
        (200, Some("/public".into()))
    );
}

#[test]
fn path_parameters_see_the_normalized_path() {
    let (up, gw) = gateway(&[]);
    assert_eq!(
        forwarded(&up, &gw, "/t/%61cme/x"),
        (200, Some("/t/acme/x".into()))
    );
    assert_eq!(
        forwarded(&up, &gw, "/t/acme/y/../x"),
        (200, Some("/t/acme/x".into()))
    );
}

#[test]
fn absolute_form_targets_take_their_authority_as_host() {
    let (up, gw) = gateway(&[]);
    let send = |raw: &str| request(gw.port(), raw.as_bytes());
    let resp = send("GET http://api.test/echo/a?b=1 HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let seen = up.last_request();
    assert_eq!(seen.target, "/a?b=1");
    assert_eq!(seen.headers_all("host"), ["api.test"]);
    // Without Host, the authority becomes the Host the upstream gets.
    let resp = send("GET http://api.test:8080/public HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(up.last_request().headers_all("host"), ["api.test:8080"]);
    assert_eq!(up.last_request().target, "/public");
    // A Host that differs from the authority is refused, and so is an unknown scheme.
    let before = up.requests();
    assert_eq!(
        send("GET http://api.test/public HTTP/1.1\r\nHost: other.test\r\n\r\n").status,
        400
    );
    assert_eq!(
        send("GET ftp://api.test/public HTTP/1.1\r\nHost: api.test\r\n\r\n").status,
        400
    );
    assert_eq!(up.requests(), before);
}
