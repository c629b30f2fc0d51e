//! The access log record: what one request was, who made it, what the gateway decided and what
//! the client got, as one JSON line.
//!
//! Each client connection owns one [`AccessRecord`] and reuses it for every request: its text
//! fields are cleared and refilled, so once their capacity has grown to the connection's usual
//! values a request allocates nothing. The request path fills it phase by phase; when the
//! request is answered (forwarded, refused or failed) the core formats it into its batch
//! ([`CoreAccessLog`]) — unless 2xx sampling leaves it out — and clears it. Batches go to the
//! `cflow-access` writer thread (see [`super::access_writer`]) without ever blocking the core.
//!
//! The record holds no header other than `traceparent` and a path without its query, so no
//! credential (API key, token, password, cookie) can reach the log.

use super::access_writer::AccessSink;
use crate::auth::Identity;
use crate::proxy::request_id::RequestId;
use crate::snapshot::Snapshot;
use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A core hands its batch to the writer once it holds more than this many bytes (and from the
/// core's upkeep every 100 ms).
pub const BATCH_BYTES: usize = 128 * 1024;

/// Whether the gateway let the request through to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One request's access record, reused for every request of a connection.
#[derive(Default)]
pub struct AccessRecord {
    /// When the first byte of the request's head was seen.
    pub start: Option<Instant>,
    pub request_id: RequestId,
    /// The listener's index in the snapshot (names are looked up when the line is written, so
    /// an idle connection keeps no copies of them).
    pub listener: Option<usize>,
    pub client_ip: Option<IpAddr>,
    /// The method, then the path as the client sent it (without the query).
    pub target: Vec<u8>,
    /// Bytes of `target` that are the method.
    pub method_len: usize,
    /// What the client got (0 until a response started).
    pub status: u16,
    /// The route's index in the snapshot (its id text and API come from there).
    pub route: Option<usize>,
    /// Who the request was (tenant, consumer, credential and method come from here).
    pub identity: Option<Rc<Identity>>,
    pub decision: Option<Decision>,
    pub reason: Option<&'static str>,
    pub rule: String,
    pub shadow_rule: String,
    pub upstream: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_connect_us: Option<u64>,
    pub upstream_ttfb_us: Option<u64>,
    pub tls_version: Option<&'static str>,
    pub traceparent: Vec<u8>,
}

impl AccessRecord {
    /// Clears what the request phases fill (`prepare` may run more than once for one head:
    /// after a wait it starts again); the start time and byte counts stay.
    pub fn clear_phases(&mut self) {
        self.listener = None;
        self.client_ip = None;
        self.target.clear();
        self.method_len = 0;
        self.route = None;
        self.identity = None;
        self.rule.clear();
        self.shadow_rule.clear();
        self.traceparent.clear();
    }

    /// Makes the record ready for the next request of the connection (capacity is kept).
    pub fn clear(&mut self) {
        self.clear_phases();
        self.start = None;
        self.request_id = RequestId::default();
        self.status = 0;
        self.decision = None;
        self.reason = None;
        self.upstream = None;
        self.upstream_status = None;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.upstream_connect_us = None;
        self.upstream_ttfb_us = None;
    }

    /// Notes the start of the request's head (the first call per request counts).
    pub fn started(&mut self, now: Instant) {
        if self.start.is_none() {
            self.start = Some(now);
        }
    }

    /// Appends the record as one JSON line (`ts` is when the request ended, `now` the same
    /// moment as an `Instant`).
    /// Sets the method and path (the query is left out).
    pub fn set_target(&mut self, method: &str, path: &str) {
        self.target.clear();
        self.target.extend_from_slice(method.as_bytes());
        self.method_len = method.len();
        self.target.extend_from_slice(path.as_bytes());
    }

    /// `snapshot`: the one the request was served from, for the listener, route and API names.
    pub fn write_json(
        &self,
        snapshot: Option<&Snapshot>,
        ts: SystemTime,
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        let listener = snapshot
            .zip(self.listener)
            .and_then(|(s, i)| s.listeners.get(i))
            .map_or("", |l| l.name.as_str());
        let route = snapshot.zip(self.route).and_then(|(s, i)| s.routes.get(i));
        let identity = self.identity.as_deref();
        out.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(out, ts);
        out.extend_from_slice(b"\",\"request_id\":");
        push_opt_str(out, self.request_id.as_bytes());
        out.extend_from_slice(b",\"listener\":");
        push_opt_str(out, listener.as_bytes());
        out.extend_from_slice(b",\"client_ip\":");
        match self.client_ip {
            Some(ip) => {
                out.push(b'"');
                push_ip(out, ip);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        let method_len = self.method_len.min(self.target.len());
        push_opt_str(out, &self.target[..method_len]);
        out.extend_from_slice(b",\"path\":");
        push_opt_str(out, &self.target[method_len..]);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        for (name, value) in [
            (&b",\"route\":"[..], route.map_or("", |r| &*r.id)),
            (b",\"api\":", route.map_or("", |r| r.api.as_str())),
            (b",\"tenant\":", identity.map_or("", |i| i.tenant())),
            (b",\"consumer\":", identity.map_or("", |i| &*i.consumer.id)),
            (
                b",\"credential_id\":",
                identity.map_or("", |i| &*i.credential_id),
            ),
            (
                b",\"auth_method\":",
                identity.map_or("", |i| i.method.name()),
            ),
        ] {
            out.extend_from_slice(name);
            push_opt_str(out, value.as_bytes());
        }
        out.extend_from_slice(b",\"decision\":");
        push_opt_str(out, self.decision.map_or("", Decision::name).as_bytes());
        out.extend_from_slice(b",\"reason\":");
        push_opt_str(out, self.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b",\"rule\":");
        push_opt_str(out, self.rule.as_bytes());
        out.extend_from_slice(b",\"shadow_rule\":");
        push_opt_str(out, self.shadow_rule.as_bytes());
        out.extend_from_slice(b",\"upstream\":");
        match self.upstream {
            Some(address) => {
                out.extend_from_slice(if address.is_ipv6() { b"\"[" } else { b"\"" });
                push_ip(out, address.ip());
                out.extend_from_slice(if address.is_ipv6() { b"]:" } else { b":" });
                push_u64(out, u64::from(address.port()));
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"upstream_status\":");
        push_opt_u64(out, self.upstream_status.map(u64::from));
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_us\":");
        let duration = self
            .start
            .map_or(0, |start| micros(now.duration_since(start)));
        push_u64(out, duration);
        out.extend_from_slice(b",\"upstream_connect_us\":");
        push_opt_u64(out, self.upstream_connect_us);
        out.extend_from_slice(b",\"upstream_ttfb_us\":");
        push_opt_u64(out, self.upstream_ttfb_us);
        out.extend_from_slice(b",\"tls_version\":");
        push_opt_str(out, self.tls_version.unwrap_or("").as_bytes());
        out.extend_from_slice(b",\"traceparent\":");
        push_opt_str(out, &self.traceparent);
        out.extend_from_slice(b"}\n");
    }
}

/// A duration in whole microseconds.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The short code for a status the gateway answered without a more specific reason.
pub fn reason_for_status(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "bad_request",
        404 => "no_route",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "body_too_large",
        414 => "uri_too_long",
        431 => "headers_too_large",
        502 => "upstream_error",
        503 => "upstream_unavailable",
        504 => "upstream_timeout",
        _ => return None,
    })
}

/// Keeps a fraction of the 2xx records, deterministically: the fraction accumulates per
/// record and a record is kept each time the sum reaches 1 (0.5 keeps every other one). The sum
/// is kept in millionths, so decimal fractions add up exactly.
pub struct Sampler {
    step: u32,
    sum: Cell<u32>,
}

/// What the sampler's sum counts in: millionths.
const SAMPLE_ONE: u32 = 1_000_000;

impl Sampler {
    pub fn new(fraction: f64) -> Sampler {
        Sampler {
            step: (fraction.clamp(0.0, 1.0) * f64::from(SAMPLE_ONE)).round() as u32,
            sum: Cell::new(0),
        }
    }

    /// Whether to keep a record with `status` (every non-2xx is kept).
    pub fn keep(&self, status: u16) -> bool {
        if !(200..300).contains(&status) || self.step >= SAMPLE_ONE {
            return true;
        }
        let sum = self.sum.get() + self.step;
        if sum >= SAMPLE_ONE {
            self.sum.set(sum - SAMPLE_ONE);
            true
        } else {
            self.sum.set(sum);
            false
        }
    }
}

/// One core's side of the access log: its batch of formatted lines, its sampler, and the
/// count of lines dropped because the writer's queue was full.
pub struct CoreAccessLog {
    sink: AccessSink,
    sampler: Sampler,
    batch: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    dropped: Cell<u64>,
}

impl CoreAccessLog {
    pub fn new(sink: AccessSink, sample_2xx: f64) -> CoreAccessLog {
        CoreAccessLog {
            sink,
            sampler: Sampler::new(sample_2xx),
            batch: RefCell::new(Vec::with_capacity(2 * BATCH_BYTES)),
            lines: Cell::new(0),
            dropped: Cell::new(0),
        }
    }

    /// Formats a finished request into the batch (unless sampled out); hands the batch over
    /// when it is large enough.
    /// `now`: when the request ended (its duration is measured to it).
    pub fn record(&self, record: &AccessRecord, snapshot: &Snapshot, now: Instant) {
        if !self.sampler.keep(record.status) {
            return;
        }
        let full = {
            let mut batch = self.batch.borrow_mut();
            record.write_json(Some(snapshot), SystemTime::now(), now, &mut batch);
            self.lines.set(self.lines.get() + 1);
            batch.len() > BATCH_BYTES
        };
        if full {
            self.flush();
        }
    }

    /// Hands the batch to the writer (never waits): a full queue drops it and counts its lines.
    pub fn flush(&self) {
        let mut batch = self.batch.borrow_mut();
        if batch.is_empty() {
            return;
        }
        let full = std::mem::replace(&mut *batch, self.sink.spare(2 * BATCH_BYTES));
        let lines = self.lines.replace(0);
        if !self.sink.offer(full) {
            self.dropped.set(self.dropped.get() + lines);
        }
    }

    /// Lines dropped so far because the writer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// Appends a JSON string, or `null` for an empty value.
/// Appends an address as text: IPv4 dotted decimal without going through `Display`, IPv6 in
/// its canonical form.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (at, octet) in v4.octets().into_iter().enumerate() {
                if at > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_opt_str(out: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        push_json_str(out, value);
    }
}

fn push_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(n) => push_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `value` as a JSON string: quotes, backslashes and control bytes escaped, bytes that
/// are not UTF-8 replaced by U+FFFD.
pub fn push_json_str(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    // The common case (ids, names, paths): printable ASCII with nothing to escape goes as is.
    if value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(value);
        out.push(b'"');
        return;
    }
    for chunk in value.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xf)]);
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
    out.push(b'"');
}

/// Appends `time` as RFC 3339 UTC with microseconds: `2026-11-29T01:02:03.123456Z`.
pub fn push_rfc3339(out: &mut Vec<u8>, time: SystemTime) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = crate::limit::rate::civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    let fields = [
        (year as u64, 4, b'-'),
        (month as u64, 2, b'-'),
        (day as u64, 2, b'T'),
        (rest / 3600, 2, b':'),
        (rest / 60 % 60, 2, b':'),
        (rest % 60, 2, b'.'),
        (u64::from(since.subsec_micros()), 6, b'Z'),
    ];
    for (value, width, separator) in fields {
        push_padded(out, value, width);
        out.push(separator);
    }
}

fn push_padded(out: &mut Vec<u8>, value: u64, width: u32) {
    let mut divisor = 10u64.pow(width - 1);
    while divisor > 0 {
        out.push(b'0' + (value / divisor % 10) as u8);
        divisor /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::access_writer::access_channel;

    fn json_str(value: &[u8]) -> String {
        let mut out = Vec::new();
        push_json_str(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    fn rfc3339(secs: u64, micros: u32) -> String {
        let mut out = Vec::new();
        let time = UNIX_EPOCH + Duration::new(secs, micros * 1000);
        push_rfc3339(&mut out, time);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn addresses_are_written_as_display_would() {
        for text in [
            "0.0.0.0",
            "203.0.113.7",
            "255.255.255.255",
            "::1",
            "2001:db8::12",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
        let mut record = AccessRecord::default();
        for address in ["10.0.0.12:8080", "[2001:db8::12]:443"] {
            record.upstream = Some(address.parse().unwrap());
            let mut out = Vec::new();
            record.write_json(None, UNIX_EPOCH, Instant::now(), &mut out);
            let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(line["upstream"], address);
        }
    }

    #[test]
    fn strings_are_escaped_for_json() {
        assert_eq!(json_str(b"plain /path"), "\"plain /path\"");
        assert_eq!(json_str(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(json_str(b"\n\r\t"), r#""\n\r\t""#);
        assert_eq!(json_str(b"\x00\x1b\x7f"), r#""\u0000\u001b\u007f""#);
        assert_eq!(json_str("é€".as_bytes()), "\"é€\"");
        assert_eq!(json_str(b"a\xffb\xc3"), r#""a\ufffdb\ufffd""#);
        let parsed: String = serde_json::from_str(&json_str(b"x\x01\"\xfe")).unwrap();
        assert_eq!(parsed, "x\u{1}\"\u{fffd}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_914_123, 123_456),
            "2026-11-29T01:02:03.123456Z"
        );
        // 2024 is a leap year: the day after 28 February is 29 February, then 1 March.
        assert_eq!(rfc3339(1_709_164_800, 0), "2024-02-29T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_709_251_199, 999_999),
            "2024-02-29T23:59:59.999999Z"
        );
        assert_eq!(rfc3339(1_709_251_200, 1), "2024-03-01T00:00:00.000001Z");
        // 2100 is not.
        assert_eq!(rfc3339(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn sampling_keeps_the_fraction_of_2xx_and_every_other_status() {
        let half = Sampler::new(0.5);
        let kept: Vec<bool> = (0..6).map(|_| half.keep(200)).collect();
        assert_eq!(kept, [false, true, false, true, false, true]);
        assert!((0..10).all(|_| half.keep(404)));
        assert!((0..10).all(|_| half.keep(502)));
        let none = Sampler::new(0.0);
        assert!((0..100).all(|_| !none.keep(204)));
        assert!(none.keep(401));
        let all = Sampler::new(1.0);
        assert!((0..100).all(|_| all.keep(200)));
        let tenth = Sampler::new(0.1);
        assert_eq!((0..1000).filter(|_| tenth.keep(201)).count(), 100);
    }

    #[test]
    fn a_record_is_one_json_object_with_every_field() {
        let mut record = AccessRecord::default();
        let start = Instant::now();
        record.started(start);
        record.client_ip = Some("192.0.2.7".parse().unwrap());
        record.set_target("GET", "/orders/1");
        record.status = 200;
        record.decision = Some(Decision::Allow);
        record.upstream = Some("127.0.0.1:9000".parse().unwrap());
        record.upstream_status = Some(200);
        record.upstream_connect_us = Some(0);
        record.bytes_in = 10;
        record.bytes_out = 20;
        let mut out = Vec::new();
        let ts = UNIX_EPOCH + Duration::from_secs(1_795_914_123);
        record.write_json(None, ts, start + Duration::from_micros(1500), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 26, "{value}");
        assert_eq!(value["ts"], "2026-11-29T01:02:03.000000Z");
        assert_eq!(value["client_ip"], "192.0.2.7");
        assert_eq!(value["duration_us"], 1500);
        assert_eq!(value["upstream"], "127.0.0.1:9000");
        assert_eq!(value["decision"], "allow");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["path"], "/orders/1");
        assert!(value["consumer"].is_null());
        assert!(value["traceparent"].is_null());
        assert!(value["upstream_ttfb_us"].is_null());
        record.clear();
        assert!(record.start.is_none() && record.target.is_empty() && record.status == 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let config = crate::config::Config::parse(
            "test.toml",
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let snapshot = Snapshot::compile(&config);
        let (sink, queue) = access_channel(1);
        let log = CoreAccessLog::new(sink, 1.0);
        let record = AccessRecord {
            status: 404,
            ..Default::default()
        };
        for _ in 0..3 {
            log.record(&record, &snapshot, Instant::now());
        }
        log.flush();
        assert_eq!(log.dropped(), 0);
        for _ in 0..2 {
            log.record(&record, &snapshot, Instant::now());
        }
        // The queue holds one batch and nobody reads it: this one is dropped, not waited for.
        log.flush();
        assert_eq!(log.dropped(), 2);
        assert_eq!(queue.len(), 1);
        // Big batches are handed over without a flush call.
        let big = AccessRecord {
            status: 500,
            target: vec![b'a'; BATCH_BYTES],
            ..Default::default()
        };
        log.record(&big, &snapshot, Instant::now());
        assert_eq!(log.dropped(), 3);
    }
}
