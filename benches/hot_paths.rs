//! Micro-benchmarks of the per-request hot paths: request-head parsing, route lookup, chunked
//! framing, and the observability work every request pays (access-log line, metrics, trace id). `cargo bench --bench hot_paths [FILTER]` prints one table row per case.
//!
//! Each case is calibrated to batches of about 20 ms, run in several batches, and reported as
//! the fastest batch (least disturbed by the rest of the machine) and the median batch, in
//! nanoseconds per operation. Inputs go through `black_box` so nothing is computed at compile
//! time, and every result is consumed by `black_box`.

use credentialflow::config::{PathMatch, MAX_HEADERS_CEILING};
use credentialflow::http::chunked::ChunkedScanner;
use credentialflow::http::header_slots;
use credentialflow::http::request::{self, HeadLimits};
use credentialflow::observe::access::AccessRecord;
use credentialflow::observe::metrics::CoreMetrics;
use credentialflow::observe::trace::{self, TraceIds};
use credentialflow::router::{RouteKey, RouteMatch, Router};
use credentialflow::snapshot::Snapshot;
use std::hint::black_box;
use std::time::{Duration, Instant};

const BATCH_TARGET: Duration = Duration::from_millis(20);
const BATCHES: usize = 15;

/// The defaults of `[limits]` (docs/CONFIG.md).
const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 16384,
    max_uri_bytes: 8192,
};
const MAX_HEADERS: usize = 100;

struct Row {
    name: &'static str,
    min_ns: f64,
    median_ns: f64,
    bytes: usize,
}

/// Times `op`, returning ns/op for the fastest and the median batch.
fn bench(name: &'static str, bytes: usize, mut op: impl FnMut()) -> Row {
    // Warm up and calibrate: double the iteration count until one batch takes long enough.
    let mut iters: u64 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            op();
        }
        let elapsed = start.elapsed();
        if elapsed >= BATCH_TARGET / 4 {
            let per_op = elapsed.as_secs_f64() / iters as f64;
            iters = ((BATCH_TARGET.as_secs_f64() / per_op) as u64).max(1);
            break;
        }
        iters *= 2;
    }
    let mut per_op: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    Row {
        name,
        min_ns: per_op[0],
        median_ns: per_op[BATCHES / 2],
        bytes,
    }
}

// --------------------------------------------------------------------------- request heads

fn typical_head() -> Vec<u8> {
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl\r\n\
Connection: keep-alive\r\n\
X-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\
\r\n"
        .to_vec()
}

fn large_head() -> Vec<u8> {
    let mut head = b"POST /api/v1/orders/12345/items?expand=product&limit=50 HTTP/1.1\r\n\
Host: api.example.com\r\n\
Content-Type: application/json\r\n\
Content-Length: 1024\r\n"
        .to_vec();
    let fields = [
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        ("Accept", "application/json, text/plain, */*"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Accept-Language", "en-US,en;q=0.9,de;q=0.8"),
        ("Authorization", "Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiYXVkIjoiYXBpIn0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"),
        ("Connection", "keep-alive"),
        ("Cookie", "session=4c1f1a2b3c4d5e6f; theme=dark; consent=1; ab=variant-b"),
        ("Origin", "https://app.example.com"),
        ("Referer", "https://app.example.com/orders/12345"),
        ("Cache-Control", "no-cache"),
        ("Pragma", "no-cache"),
        ("X-Request-Id", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("X-Forwarded-For", "203.0.113.7, 198.51.100.23"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "203.0.113.7"),
        ("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("Tracestate", "vendor=opaque-value"),
        ("Sec-Fetch-Dest", "empty"),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Site", "same-site"),
        ("Sec-Ch-Ua", "\"Chromium\";v=\"128\", \"Not;A=Brand\";v=\"24\""),
        ("Sec-Ch-Ua-Mobile", "?0"),
        ("Sec-Ch-Ua-Platform", "\"Linux\""),
        ("DNT", "1"),
        ("If-None-Match", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
        ("X-Api-Version", "2024-06-01"),
        ("X-Client-Id", "mobile-app-ios-7.12.0"),
    ];
    for (name, value) in fields {
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn count_fields(head: &[u8]) -> usize {
    head.windows(2).filter(|w| w == b"\r\n").count() - 2
}

fn parse_case(name: &'static str, head: &[u8]) -> Row {
    // Make sure the input is a valid, complete head before timing it.
    {
        let mut headers = header_slots::<MAX_HEADERS_CEILING>();
        let parsed = request::parse(head, &mut headers[..MAX_HEADERS], LIMITS)
            .expect("valid head")
            .expect("complete head");
        assert_eq!(parsed.head_len, head.len());
    }
    bench(name, head.len(), || {
        // As on a connection: fresh header slots per request, limited to max_headers.
        let mut headers = header_slots::<MAX_HEADERS_CEILING>();
        let parsed = request::parse(black_box(head), &mut headers[..MAX_HEADERS], LIMITS);
        black_box(
            parsed
                .map(|r| r.map(|r| (r.head_len, r.host.len(), r.framing)))
                .ok(),
        );
    })
}

// --------------------------------------------------------------------------- routes

fn key(hosts: &[&str], path: &str, path_match: PathMatch, methods: &[&str]) -> RouteKey {
    RouteKey {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path: path.to_string(),
        path_match,
        methods: methods.iter().map(|m| m.to_string()).collect(),
    }
}

/// About 50 routes across exact hosts, wildcard hosts and any host, exact and prefix paths.
fn route_keys() -> Vec<RouteKey> {
    use PathMatch::{Exact, Prefix};
    let mut keys = Vec::new();
    let api = ["api.example.com"];
    for resource in [
        "orders",
        "customers",
        "products",
        "invoices",
        "payments",
        "shipments",
    ] {
        keys.push(key(
            &api,
            &format!("/api/v1/{resource}"),
            Prefix,
            &["GET", "POST"],
        ));
        keys.push(key(
            &api,
            &format!("/api/v1/{resource}/search"),
            Exact,
            &["GET"],
        ));
        keys.push(key(&api, &format!("/api/v2/{resource}"), Prefix, &[]));
        keys.push(key(
            &api,
            &format!("/api/v1/{resource}/admin"),
            Prefix,
            &["DELETE"],
        ));
    }
    keys.push(key(&api, "/api/v1/orders/items/archive", Prefix, &[]));
    keys.push(key(&api, "/healthz", Exact, &["GET"]));
    keys.push(key(&api, "/", Prefix, &[]));
    for tenant in ["*.tenants.example.com", "*.example.com", "*.eu.example.net"] {
        keys.push(key(&[tenant], "/", Prefix, &[]));
        keys.push(key(&[tenant], "/api", Prefix, &["GET", "POST", "PUT"]));
        keys.push(key(&[tenant], "/api/reports", Prefix, &["GET"]));
        keys.push(key(&[tenant], "/status", Exact, &["GET"]));
    }
    for host in [
        "admin.example.com",
        "billing.example.com",
        "static.example.org",
    ] {
        keys.push(key(&[host], "/", Prefix, &[]));
        keys.push(key(&[host], "/login", Exact, &["GET", "POST"]));
    }
    keys.push(key(&[], "/metrics", Exact, &["GET"]));
    keys.push(key(&[], "/public", Prefix, &["GET", "HEAD"]));
    keys.push(key(&[], "/.well-known/jwks.json", Exact, &["GET"]));
    keys.push(key(&[], "/webhooks/github", Exact, &["POST"]));
    keys
}

fn lookup_case(
    name: &'static str,
    router: &Router,
    host: &str,
    path: &str,
    method: &str,
    expect: impl Fn(&RouteMatch) -> bool,
) -> Row {
    let outcome = router.lookup(host.as_bytes(), path, method);
    assert!(expect(&outcome), "{name}: unexpected {outcome:?}");
    bench(name, 0, || {
        black_box(router.lookup(
            black_box(host.as_bytes()),
            black_box(path),
            black_box(method),
        ));
    })
}

/// The same routes' paths in a `matchit` radix tree (path only: no host, no method), as the
/// reference the hash-per-segment router is measured against. A prefix route becomes its path
/// plus a catch-all below it; routes that `matchit` refuses as conflicts are left out.
fn matchit_router(keys: &[RouteKey]) -> matchit::Router<usize> {
    let mut router = matchit::Router::new();
    for (index, key) in keys.iter().enumerate() {
        let path = key.path.trim_end_matches('/');
        let _ = router.insert(if path.is_empty() { "/" } else { path }, index);
        if key.path_match == PathMatch::Prefix {
            let _ = router.insert(format!("{path}/{{*rest}}"), index);
        }
    }
    router
}

fn matchit_case(name: &'static str, router: &matchit::Router<usize>, path: &str) -> Row {
    assert!(router.at(path).is_ok(), "{name}: no match for {path}");
    bench(name, 0, || {
        black_box(router.at(black_box(path)).map(|m| *m.value).ok());
    })
}

// --------------------------------------------------------------------------- chunked bodies

/// A 64 KiB body in chunks of `chunk` bytes, with the terminating chunk.
fn chunked_body(chunk: usize) -> Vec<u8> {
    let total = 64 * 1024;
    let mut body = Vec::with_capacity(total + total / chunk * 10 + 8);
    let data = vec![b'x'; chunk];
    for _ in 0..total / chunk {
        body.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn chunked_case(name: &'static str, body: &[u8]) -> Row {
    {
        let mut scanner = ChunkedScanner::new();
        let used = scanner.scan(body, |_, _| {}).expect("valid chunked body");
        assert_eq!(used, body.len());
        assert!(scanner.is_done());
    }
    bench(name, body.len(), || {
        let mut scanner = ChunkedScanner::new();
        let mut data_bytes = 0usize;
        let used = scanner.scan(black_box(body), |start, end| data_bytes += end - start);
        black_box((used.ok(), data_bytes, scanner.is_done()));
    })
}

// --------------------------------------------------------------------------- main

// --------------------------------------------------------------------------- observability

/// A snapshot with one route, and a finished, allowed request's access record on it.
fn observed_request() -> (Snapshot, AccessRecord) {
    let config = credentialflow::config::Config::parse(
        "bench.toml",
        "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:1\"\n\
         [[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:2\"]\n\
         [[apis]]\nname = \"orders\"\n[[apis.routes]]\npath = \"/orders\"\nupstream = \"app\"\n",
    )
    .expect("bench config");
    let snapshot = Snapshot::compile(&config);
    let mut record = AccessRecord {
        start: Some(Instant::now()),
        listener: Some(0),
        client_ip: Some("203.0.113.7".parse().unwrap()),
        status: 200,
        route: Some(0),
        upstream: Some("10.0.0.12:8080".parse().unwrap()),
        upstream_status: Some(200),
        bytes_in: 120,
        bytes_out: 240,
        upstream_connect_us: Some(0),
        upstream_ttfb_us: Some(180),
        ..AccessRecord::default()
    };
    record.set_target("GET", "/orders/12345");
    (snapshot, record)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with '-' filters case names.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));

    let typical = typical_head();
    let large = large_head();
    let keys = route_keys();
    let router = Router::new(keys.iter().enumerate());
    let radix = matchit_router(&keys);
    let chunked_4k = chunked_body(4096);
    let chunked_64 = chunked_body(64);
    let (snapshot, record) = observed_request();
    let metrics = CoreMetrics::default();
    let trace_ids = TraceIds::new(0x1234_5678);
    let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    type Case<'a> = (&'static str, Box<dyn Fn(&'static str) -> Row + 'a>);
    let found = |m: &RouteMatch| matches!(m, RouteMatch::Found(_));
    let cases: Vec<Case> = vec![
        (
            "request::parse typical head",
            Box::new(|n| parse_case(n, &typical)),
        ),
        (
            "request::parse large head",
            Box::new(|n| parse_case(n, &large)),
        ),
        (
            "Router::lookup deep prefix hit",
            Box::new(|n| {
                let path = "/api/v1/orders/items/archive/2024/06/12345";
                lookup_case(n, &router, "api.example.com:443", path, "GET", found)
            }),
        ),
        (
            "Router::lookup exact hit",
            Box::new(|n| {
                lookup_case(
                    n,
                    &router,
                    "api.example.com",
                    "/api/v1/products/search",
                    "GET",
                    found,
                )
            }),
        ),
        (
            "Router::lookup wildcard host hit",
            Box::new(|n| {
                let host = "acme.tenants.example.com";
                lookup_case(n, &router, host, "/api/reports/monthly", "GET", found)
            }),
        ),
        (
            "Router::lookup miss",
            Box::new(|n| {
                let (host, path) = ("unknown.example.org", "/nothing/here/at/all");
                lookup_case(n, &router, host, path, "GET", |m| {
                    *m == RouteMatch::NotFound
                })
            }),
        ),
        (
            "matchit::Router::at deep prefix hit (path only)",
            Box::new(|n| matchit_case(n, &radix, "/api/v1/orders/items/archive/2024/06/12345")),
        ),
        (
            "matchit::Router::at exact hit (path only)",
            Box::new(|n| matchit_case(n, &radix, "/api/v1/products/search")),
        ),
        (
            "ChunkedScanner::scan 64 KiB, 4 KiB chunks",
            Box::new(|n| chunked_case(n, &chunked_4k)),
        ),
        (
            "ChunkedScanner::scan 64 KiB, 64 B chunks",
            Box::new(|n| chunked_case(n, &chunked_64)),
        ),
        (
            "AccessRecord::write_json (allowed request)",
            Box::new(|n| {
                let mut out = Vec::with_capacity(1024);
                bench(n, 0, || {
                    out.clear();
                    black_box(&record).write_json(
                        Some(&snapshot),
                        std::time::SystemTime::now(),
                        Instant::now(),
                        &mut out,
                    );
                    black_box(&out);
                })
            }),
        ),
        (
            "CoreMetrics::observe (allowed request)",
            Box::new(|n| bench(n, 0, || metrics.observe(black_box(&record), &snapshot, 250))),
        ),
        (
            "TraceIds::upstream (continue a traceparent)",
            Box::new(|n| {
                bench(n, 0, || {
                    black_box(trace_ids.upstream(trace::parse(black_box(incoming))));
                })
            }),
        ),
    ];

    println!(
        "routes: {}; typical head: {} bytes, {} fields; large head: {} bytes, {} fields",
        keys.len(),
        typical.len(),
        count_fields(&typical),
        large.len(),
        count_fields(&large)
    );
    println!(
        "{BATCHES} batches of ~{} ms each; ns/op of the fastest and the median batch\n",
        BATCH_TARGET.as_millis()
    );
    println!("| case | ns/op (min) | ns/op (median) | throughput (min) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, run) in &cases {
        if !wanted(name) {
            continue;
        }
        let row = run(name);
        let throughput = if row.bytes > 0 {
            format!("{:.2} GB/s of input", row.bytes as f64 / row.min_ns)
        } else {
            format!("{:.1} M/s", 1e3 / row.min_ns)
        };
        println!(
            "| {} | {:.1} | {:.1} | {} |",
            row.name, row.min_ns, row.median_ns, throughput
        );
    }
}
