//! The result of a run: the JSON object printed with `--json` and the human-readable table
//! with the same facts.

use crate::stats::{ConnectionShare, ErrorCounts, LatencySummary};
use crate::tls::Negotiated;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The result of a run, serialised as the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub url: String,
    /// "closed" or "open".
    pub mode: &'static str,
    pub connections: usize,
    pub threads: usize,
    /// Length of the measured window.
    pub duration_s: f64,
    /// Responses completed inside the measured window.
    pub requests: u64,
    pub rps: f64,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    pub errors: ErrorCounts,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub latency_us: LatencySummary,
    /// Open loop over plain TCP: the same latencies measured to the kernel's receive timestamp
    /// of each response's last bytes (`SO_TIMESTAMPNS`) instead of to the generator reading
    /// them, so a stall of the generator after a response arrived is not in them. Null in
    /// closed loop and over TLS.
    pub rx_latency_us: Option<LatencySummary>,
    /// How many responses each connection completed: how evenly they were served.
    pub per_connection: ConnectionShare,
    /// Open loop: the requested rate; null in closed loop.
    pub target_rate: Option<f64>,
    /// Open loop: requests that left more than `LATE_SEND` (2 ms) after their scheduled time on
    /// an idle connection. The generator itself was held up then (its CPU, or the machine), and
    /// the same stalls can delay the responses it reads, so a run with many of them has a tail
    /// that is partly the machine's. Null in closed loop.
    pub late_sends: Option<u64>,
    /// User plus system CPU seconds of the generator during the measured window.
    pub loadgen_cpu_s: f64,
    /// For https: what was negotiated and how many handshakes resumed; null for http.
    pub tls: Option<TlsReport>,
}

/// The TLS part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// Protocol version, cipher suite and key-exchange group of the check connection made
    /// before the run (every connection uses the same configuration).
    #[serde(flatten)]
    pub negotiated: Negotiated,
    /// Whether session resumption was on (off with `--no-resume`).
    pub resumption: bool,
    /// TLS handshakes completed inside the measured window.
    pub handshakes: u64,
    /// Of those, the ones that resumed an earlier session.
    pub resumed: u64,
}

impl Report {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the report serialises")
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "{}  {mode}, {} connections, {} thread{}, {:.2} s measured",
            self.url,
            self.connections,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.duration_s
        );
        let _ = writeln!(
            out,
            "  requests     {:>12}   {:.1} req/s",
            self.requests, self.rps
        );
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "  latency µs   min {}  mean {:.1}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(l) = &self.rx_latency_us {
            let _ = writeln!(
                out,
                "  kernel rx µs min {}  mean {:.1}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        let c = &self.per_connection;
        let _ = writeln!(
            out,
            "  per conn     min {}  p1 {}  p50 {}  p99 {}  max {} responses  (p99/p50 {})",
            c.min,
            c.p1,
            c.p50,
            c.p99,
            c.max,
            c.fairness.map_or("n/a".to_string(), |f| format!("{f:.2}"))
        );
        let status = if self.status.is_empty() {
            "none".to_string()
        } else {
            self.status
                .iter()
                .map(|(code, count)| format!("{code}: {count}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(out, "  status       {status}");
        let e = &self.errors;
        let _ = writeln!(
            out,
            "  errors       connect {}  read {}  write {}  timeout {}  parse {}",
            e.connect, e.read, e.write, e.timeout, e.parse
        );
        let _ = writeln!(
            out,
            "  transfer     read {}  written {}",
            human_bytes(self.bytes_read),
            human_bytes(self.bytes_written)
        );
        if let Some(tls) = &self.tls {
            let n = &tls.negotiated;
            let resumed = if !tls.resumption {
                "resumption off".to_string()
            } else if tls.handshakes > 0 {
                format!(
                    "{} resumed ({:.1} %)",
                    tls.resumed,
                    100.0 * tls.resumed as f64 / tls.handshakes as f64
                )
            } else {
                "0 resumed".to_string()
            };
            let _ = writeln!(
                out,
                "  tls          {} {} {}  handshakes {}, {resumed}",
                n.version, n.cipher, n.group, tls.handshakes
            );
        }
        let per_cpu = if self.loadgen_cpu_s > 0.0 {
            format!(
                "{:.0} requests per CPU-second",
                self.requests as f64 / self.loadgen_cpu_s
            )
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "  loadgen cpu  {:.2} s  ({per_cpu})",
            self.loadgen_cpu_s
        );
        out
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            url: "http://127.0.0.1:1/".into(),
            mode: "closed",
            connections: 2,
            threads: 1,
            duration_s: 2.0,
            requests: 10,
            rps: 5.0,
            status: [("200".to_string(), 9), ("503".to_string(), 1)].into(),
            errors: ErrorCounts {
                timeout: 1,
                ..ErrorCounts::default()
            },
            bytes_read: 2048,
            bytes_written: 100,
            latency_us: LatencySummary {
                min: 1,
                mean: 2.5,
                p50: 2,
                p90: 3,
                p99: 4,
                p999: 5,
                max: 6,
            },
            rx_latency_us: None,
            per_connection: ConnectionShare::of(&[4, 6]),
            target_rate: None,
            late_sends: None,
            loadgen_cpu_s: 0.5,
            tls: None,
        }
    }

    fn tls_report() -> Report {
        Report {
            url: "https://127.0.0.1:1/".into(),
            tls: Some(TlsReport {
                negotiated: Negotiated {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_256_GCM_SHA384".into(),
                    group: "X25519".into(),
                },
                resumption: true,
                handshakes: 8,
                resumed: 6,
            }),
            ..report()
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value: serde_json::Value = serde_json::from_str(&report().to_json()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "url",
            "mode",
            "connections",
            "threads",
            "duration_s",
            "requests",
            "rps",
            "status",
            "errors",
            "bytes_read",
            "bytes_written",
            "latency_us",
            "rx_latency_us",
            "per_connection",
            "target_rate",
            "late_sends",
            "loadgen_cpu_s",
            "tls",
        ] {
            assert!(keys.contains(&key), "missing {key}");
        }
        assert_eq!(value["status"]["503"], 1);
        assert_eq!(value["errors"]["timeout"], 1);
        assert_eq!(value["errors"]["connect"], 0);
        assert_eq!(value["latency_us"]["p999"], 5);
        assert!(value["target_rate"].is_null());
        assert!(value["late_sends"].is_null());
        assert!(value["tls"].is_null());

        let value: serde_json::Value = serde_json::from_str(&tls_report().to_json()).unwrap();
        let tls = &value["tls"];
        assert_eq!(tls["version"], "TLSv1.3");
        assert_eq!(tls["cipher"], "TLS13_AES_256_GCM_SHA384");
        assert_eq!(tls["group"], "X25519");
        assert_eq!(tls["resumption"], true);
        assert_eq!(
            (tls["handshakes"].as_u64(), tls["resumed"].as_u64()),
            (Some(8), Some(6))
        );
    }

    #[test]
    fn table_mentions_everything() {
        let table = report().to_table();
        for needle in [
            "closed loop",
            "10",
            "5.0 req/s",
            "p99.9 5",
            "503: 1",
            "timeout 1",
            "2.0 KiB",
            "20 requests per CPU-second",
            "p99/p50 1.50",
        ] {
            assert!(table.contains(needle), "{needle} missing in\n{table}");
        }
        assert!(!table.contains("tls "));
        let table = tls_report().to_table();
        assert!(
            table.contains("tls          TLSv1.3 TLS13_AES_256_GCM_SHA384 X25519  handshakes 8, 6 resumed (75.0 %)"),
            "{table}"
        );
    }
}
