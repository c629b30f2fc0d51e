//! Streaming of large bodies in both directions: 256 MiB uploads and
//! downloads (Content-Length and chunked) pass through the gateway intact
//! while its resident memory stays below 64 MiB. The test upstream discards
//! uploads (counting bytes) and generates downloads on the fly; it pauses
//! before consuming an upload, and the client pauses before consuming a
//! download, so a gateway that buffered whole bodies would grow visibly.

mod common;

use common::*;
use std::io::Write;
use std::thread;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn upload_gateway() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start(Mode::Discard {
        initial_delay: Duration::from_secs(1),
    });
    let gw = ConfigBuilder::new(free_port(), &[up.port])
        .limit("max_body_bytes = 1048576")
        .route("/", "max_body_bytes = 0")
        .start();
    (up, gw)
}

fn assert_rss(max_kib: u64, what: &str) {
    eprintln!("gateway peak VmRSS during {what}: {max_kib} KiB");
    assert!(max_kib > 0, "could not read the gateway's VmRSS");
    assert!(
        max_kib < RSS_LIMIT_KIB,
        "gateway RSS reached {max_kib} KiB during {what} (limit {RSS_LIMIT_KIB} KiB)"
    );
}

#[test]
fn upload_256mib_content_length_streams() {
    let (up, gw) = upload_gateway();
    let total = 256 * MIB;
    let monitor = RssMonitor::start(gw.pid());
    let mut c = gw.client();
    c.send(
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    );
    let block = pattern_block(261);
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(block.len() as u64) as usize;
        c.stream
            .write_all(&block[..n])
            .unwrap_or_else(|e| panic!("upload failed after {sent} bytes: {e}"));
        sent += n as u64;
    }
    let resp = c.read_response();
    let max = monitor.stop();
    assert_eq!(resp.status, 200, "body: {}", resp.body_str());
    assert_eq!(resp.body_str(), format!("received={total}"));
    assert_eq!(up.body_bytes(), total);
    assert_eq!(up.requests(), 1);
    assert_rss(max, "a 256 MiB upload");
}

#[test]
fn upload_256mib_chunked_streams() {
    let (up, gw) = upload_gateway();
    let total = 256 * MIB;
    let monitor = RssMonitor::start(gw.pid());
    let mut c = gw.client();
    c.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = vec![b'u'; 64 * 1024];
    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
    framed.extend_from_slice(&chunk);
    framed.extend_from_slice(b"\r\n");
    let mut sent = 0u64;
    while sent < total {
        c.stream
            .write_all(&framed)
            .unwrap_or_else(|e| panic!("upload failed after {sent} bytes: {e}"));
        sent += chunk.len() as u64;
    }
    c.send(b"0\r\n\r\n");
    let resp = c.read_response();
    let max = monitor.stop();
    assert_eq!(resp.status, 200, "body: {}", resp.body_str());
    assert_eq!(resp.body_str(), format!("received={total}"));
    assert_eq!(up.body_bytes(), total);
    assert!(up.last_request().chunked, "upstream must receive chunked");
    assert_rss(max, "a 256 MiB chunked upload");
}

fn download(chunked: bool, total: u64) {
    let up = TestUpstream::start(Mode::Download {
        len: total,
        chunked,
    });
    let gw = ConfigBuilder::new(free_port(), &[up.port]).start();
    let monitor = RssMonitor::start(gw.pid());
    let mut c = gw.client();
    c.send(b"GET /download HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = c.read_head().expect("download response head");
    assert_eq!(head.status, 200);
    if chunked {
        assert!(head.is_chunked(), "chunked upstream body must stay chunked");
    } else {
        assert_eq!(head.content_length(), Some(total));
    }
    // Let the upstream push as much as the gateway is willing to buffer.
    thread::sleep(Duration::from_secs(1));
    let mut checker = PatternChecker::new();
    let was_chunked = c
        .read_body_with(&head, false, &mut |d| checker.feed(d))
        .unwrap_or_else(|e| panic!("download failed: {e}"));
    let max = monitor.stop();
    assert_eq!(was_chunked, chunked);
    assert_eq!(checker.offset, total, "downloaded byte count");
    assert!(
        checker.ok,
        "downloaded bytes differ from what the upstream sent"
    );
    assert_rss(max, "a large download");
    c.assert_no_pending_data(Duration::from_millis(200));
}

#[test]
fn download_256mib_content_length_streams() {
    download(false, 256 * MIB);
}

#[test]
fn download_256mib_chunked_streams() {
    download(true, 256 * MIB);
}
