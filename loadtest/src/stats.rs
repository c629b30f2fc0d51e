//! Measurements: per-thread counters and latency histogram (microseconds, 3 significant
//! digits), merged into one set after the run, and the latency summary taken from it.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// The largest latency recorded (one hour, in microseconds); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Failed requests and connection attempts by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub parse: u64,
}

impl ErrorCounts {
    fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
        self.parse += other.parse;
    }

    /// All errors together.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.parse
    }
}

/// Kinds of errors, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Read,
    Write,
    Timeout,
    Parse,
}

/// What one thread (or, merged, the whole run) measured inside the measured window.
#[derive(Debug, Clone)]
pub struct Stats {
    pub histogram: Histogram<u64>,
    /// Open loop over plain TCP: latency to the kernel's receive timestamp of each response's
    /// last bytes instead of to the generator reading them (empty otherwise).
    pub rx_histogram: Histogram<u64>,
    /// Responses by status code (index = code, 0..=999).
    pub status: Box<[u64; 1000]>,
    pub errors: ErrorCounts,
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Open loop: sends that left more than `worker::LATE_SEND` after their intended time
    /// although the connection was idle (the generator itself fell behind).
    pub late_sends: u64,
    /// TLS handshakes completed inside the measured window ...
    pub tls_handshakes: u64,
    /// ... and how many of them resumed an earlier session.
    pub tls_resumed: u64,
    /// Responses each connection completed inside the measured window (one entry per
    /// connection, in no particular order).
    pub per_connection: Vec<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Empty measurements.
    pub fn new() -> Self {
        Stats {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            rx_histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            status: Box::new([0; 1000]),
            errors: ErrorCounts::default(),
            requests: 0,
            bytes_read: 0,
            bytes_written: 0,
            late_sends: 0,
            tls_handshakes: 0,
            tls_resumed: 0,
            per_connection: Vec::new(),
        }
    }

    /// Records one completed response.
    #[inline]
    pub fn record(&mut self, latency_us: u64, status: u16, bytes_read: u64, bytes_written: u64) {
        self.histogram.saturating_record(latency_us);
        self.status[usize::from(status).min(999)] += 1;
        self.requests += 1;
        self.bytes_read += bytes_read;
        self.bytes_written += bytes_written;
    }

    /// Records one completed response's latency to its kernel receive timestamp.
    #[inline]
    pub fn record_rx(&mut self, latency_us: u64) {
        self.rx_histogram.saturating_record(latency_us);
    }

    /// Counts one completed TLS handshake.
    pub fn handshake(&mut self, resumed: bool) {
        self.tls_handshakes += 1;
        self.tls_resumed += u64::from(resumed);
    }

    /// Counts one error.
    pub fn error(&mut self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Connect => &mut self.errors.connect,
            ErrorKind::Read => &mut self.errors.read,
            ErrorKind::Write => &mut self.errors.write,
            ErrorKind::Timeout => &mut self.errors.timeout,
            ErrorKind::Parse => &mut self.errors.parse,
        };
        *counter += 1;
    }

    /// Adds another thread's measurements.
    pub fn merge(&mut self, other: &Stats) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds");
        self.rx_histogram
            .add(&other.rx_histogram)
            .expect("histograms with the same bounds");
        for (mine, theirs) in self.status.iter_mut().zip(other.status.iter()) {
            *mine += theirs;
        }
        self.errors.add(&other.errors);
        self.requests += other.requests;
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.late_sends += other.late_sends;
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        self.per_connection.extend_from_slice(&other.per_connection);
    }

    /// Response counts by status code, as strings, for the report.
    pub fn status_map(&self) -> BTreeMap<String, u64> {
        self.status
            .iter()
            .enumerate()
            .filter(|(_, &count)| count > 0)
            .map(|(code, &count)| (code.to_string(), count))
            .collect()
    }
}

/// The latency figures reported, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    /// Summarises a histogram; all zero when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return LatencySummary {
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        LatencySummary {
            min: histogram.min(),
            mean: (histogram.mean() * 10.0).round() / 10.0,
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// How evenly the server shared its service among the connections: the distribution of the
/// responses each connection completed in the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConnectionShare {
    pub connections: usize,
    pub min: u64,
    pub p1: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// p99 ÷ p50: 1.0 when every connection was served alike; null when p50 is 0.
    pub fairness: Option<f64>,
}

impl ConnectionShare {
    /// Summarises per-connection response counts (nearest-rank percentiles).
    pub fn of(counts: &[u64]) -> Self {
        let mut sorted = counts.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| -> u64 {
            if sorted.is_empty() {
                return 0;
            }
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1]
        };
        let (p50, p99) = (at(0.50), at(0.99));
        ConnectionShare {
            connections: sorted.len(),
            min: sorted.first().copied().unwrap_or(0),
            p1: at(0.01),
            p50,
            p99,
            max: sorted.last().copied().unwrap_or(0),
            fairness: (p50 > 0).then(|| ((p99 as f64 / p50 as f64) * 100.0).round() / 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_share_percentiles() {
        let counts: Vec<u64> = (1..=100).collect();
        let share = ConnectionShare::of(&counts);
        assert_eq!(
            (
                share.connections,
                share.min,
                share.p1,
                share.p50,
                share.p99,
                share.max
            ),
            (100, 1, 1, 50, 99, 100)
        );
        assert_eq!(share.fairness, Some(1.98));
        let even = ConnectionShare::of(&[7; 10]);
        assert_eq!(even.fairness, Some(1.0));
        let empty = ConnectionShare::of(&[]);
        assert_eq!((empty.connections, empty.fairness), (0, None));
    }

    #[test]
    fn percentiles_of_known_values() {
        let mut stats = Stats::new();
        for value in 1..=1000 {
            stats.record(value, 200, 0, 0);
        }
        let summary = LatencySummary::of(&stats.histogram);
        assert_eq!(summary.min, 1);
        assert_eq!(summary.max, 1000);
        assert_eq!(summary.p50, 500);
        assert_eq!(summary.p90, 900);
        assert_eq!(summary.p99, 990);
        assert_eq!(summary.p999, 999);
        assert!((summary.mean - 500.5).abs() < 0.1, "{}", summary.mean);
    }

    #[test]
    fn percentiles_with_a_long_tail() {
        // 990 fast requests and 10 very slow ones: p99 is still fast, p99.9 is the tail.
        let mut stats = Stats::new();
        for _ in 0..990 {
            stats.record(100, 200, 0, 0);
        }
        for _ in 0..10 {
            stats.record(1_000_000, 200, 0, 0);
        }
        let summary = LatencySummary::of(&stats.histogram);
        assert_eq!(summary.p50, 100);
        assert_eq!(summary.p99, 100);
        // 3 significant digits: within 0.1 %.
        assert!(
            (999_000..=1_001_000).contains(&summary.p999),
            "{}",
            summary.p999
        );
        assert!((999_000..=1_001_000).contains(&summary.max));
    }

    #[test]
    fn merge_and_status() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.record(10, 200, 100, 50);
        b.record(20, 503, 10, 5);
        b.record(30, 200, 10, 5);
        b.error(ErrorKind::Timeout);
        a.handshake(false);
        b.handshake(true);
        b.handshake(true);
        a.merge(&b);
        assert_eq!((a.tls_handshakes, a.tls_resumed), (3, 2));
        assert_eq!(a.requests, 3);
        assert_eq!((a.bytes_read, a.bytes_written), (120, 60));
        assert_eq!(a.histogram.len(), 3);
        assert_eq!(a.errors.timeout, 1);
        assert_eq!(a.errors.total(), 1);
        let status = a.status_map();
        assert_eq!(status.get("200"), Some(&2));
        assert_eq!(status.get("503"), Some(&1));
        assert_eq!(status.len(), 2);
    }

    #[test]
    fn empty_summary_is_zero() {
        let summary = LatencySummary::of(&Stats::new().histogram);
        assert_eq!(summary.max, 0);
        assert_eq!(summary.p50, 0);
    }

    #[test]
    fn clamps_huge_values() {
        let mut stats = Stats::new();
        stats.record(u64::MAX, 200, 0, 0);
        assert!(stats.histogram.max() >= MAX_LATENCY_US);
    }
}
