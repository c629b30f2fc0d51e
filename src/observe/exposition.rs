//! `/metrics`: the cores' [`MetricsReport`]s added up and written in the Prometheus text format
//! (0.0.4), with what the control side knows itself (connections, snapshot versions per core,
//! JWKS refreshes, dropped log records). Histograms are written with fixed buckets read off the
//! merged HDR histograms, plus p50/p90/p99/p999 gauges.

use super::metrics::{histogram, MetricsReport, Refusal, RefusalKey, RouteLabels};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Bucket bounds of the duration histograms, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One issuer's JWKS refresh counts.
#[derive(Debug, Clone, Default)]
pub struct JwksStat {
    pub issuer: String,
    pub ok: u64,
    pub failed: u64,
    /// Seconds since its keys were last loaded (`None`: never).
    pub keys_age_s: Option<f64>,
}

/// What the control side adds to the cores' reports.
#[derive(Debug, Clone, Default)]
pub struct ControlFacts {
    /// Per listener: its name and open connections.
    pub connections: Vec<(String, u64)>,
    /// Per core: the credential-state version it last confirmed.
    pub core_versions: Vec<u64>,
    pub jwks: Vec<JwksStat>,
    /// Active health checks: each checked target's verdict.
    pub health: Vec<crate::upstream::health::TargetHealth>,
    /// Process log lines dropped because stderr did not keep up.
    pub process_log_dropped: u64,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The text format: Prometheus 0.0.4, or OpenMetrics 1.0 (counter families named without
/// `_total`, `# EOF` at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// OpenMetrics when the `Accept` field asks for it.
    pub fn from_accept(accept: Option<&[u8]>) -> Format {
        const OPENMETRICS: &[u8] = b"application/openmetrics-text";
        let wants = accept.is_some_and(|a| {
            a.windows(OPENMETRICS.len())
                .any(|w| w.eq_ignore_ascii_case(OPENMETRICS))
        });
        if wants {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// The Prometheus text as OpenMetrics: a counter family is named without its `_total` suffix in
/// its `# HELP` and `# TYPE` lines (its samples keep it), and the text ends with `# EOF`.
fn to_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (family, tail) = rest.split_once(' ')?;
            let base = family.strip_suffix("_total")?;
            Some(format!("{prefix}{base} {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram_series(out: &mut String, name: &str, label: (&str, &str), h: &Histogram<u64>) {
    let mut cumulative = 0;
    let mut last = 0u64;
    for bound in BUCKETS {
        let bound_us = (bound * 1e6) as u64;
        if !h.is_empty() {
            cumulative += h.count_between(last, bound_us);
            // `count_between` is inclusive: the next bucket starts just above this bound.
            last = h.highest_equivalent(bound_us) + 1;
        }
        let l = labels(&[label, ("le", &format!("{bound}"))]);
        let _ = writeln!(out, "{name}_bucket{l} {cumulative}");
    }
    let l = labels(&[label, ("le", "+Inf")]);
    let _ = writeln!(out, "{name}_bucket{l} {}", h.len());
    let sum = if !h.is_empty() {
        h.mean() * h.len() as f64 / 1e6
    } else {
        0.0
    };
    let l = labels(&[label]);
    let _ = writeln!(out, "{name}_sum{l} {sum}");
    let _ = writeln!(out, "{name}_count{l} {}", h.len());
}

fn quantiles(out: &mut String, name: &str, label: (&str, &str), h: &Histogram<u64>) {
    for (q, text) in [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")] {
        let value = if !h.is_empty() {
            h.value_at_quantile(q) as f64 / 1e6
        } else {
            0.0
        };
        let l = labels(&[label, ("quantile", text)]);
        let _ = writeln!(out, "{name}{l} {value}");
    }
}

/// `<base>_seconds` as a histogram and `<base>_quantile_seconds` as p50/p90/p99/p999 gauges,
/// one series per `(label value, histogram)`.
fn durations<'h>(
    out: &mut String,
    (base, label): (&str, &str),
    help: &str,
    series: impl Iterator<Item = (&'h str, &'h Histogram<u64>)> + Clone,
) {
    let name = format!("{base}_seconds");
    header(out, &name, "histogram", &format!("{help}."));
    for (value, h) in series.clone() {
        histogram_series(out, &name, (label, value), h);
    }
    let name = format!("{base}_quantile_seconds");
    header(
        out,
        &name,
        "gauge",
        &format!("{help}: percentiles since start."),
    );
    for (value, h) in series {
        quantiles(out, &name, (label, value), h);
    }
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both have the same bounds, so adding never fails.
    let _ = into.add(from);
}

/// Writes every metric in `format`.
pub fn render(reports: &[MetricsReport], facts: &ControlFacts, format: Format) -> String {
    let text = render_prometheus(reports, facts);
    match format {
        Format::Prometheus => text,
        Format::OpenMetrics => to_openmetrics(&text),
    }
}

fn render_prometheus(reports: &[MetricsReport], facts: &ControlFacts) -> String {
    let mut routes: BTreeMap<RouteLabels, ([u64; 5], Histogram<u64>)> = BTreeMap::new();
    let mut upstreams: BTreeMap<Box<str>, Histogram<u64>> = BTreeMap::new();
    let mut refusals: BTreeMap<RefusalKey, u64> = BTreeMap::new();
    let mut shadow: BTreeMap<Box<str>, u64> = BTreeMap::new();
    let mut upstream_errors: BTreeMap<(Box<str>, &'static str), u64> = BTreeMap::new();
    let (mut hits, mut misses, mut dropped) = (0, 0, facts.process_log_dropped);
    let mut tls: BTreeMap<Box<str>, [u64; 3]> = BTreeMap::new();
    for report in reports {
        for series in &report.routes {
            let entry = routes
                .entry(series.labels.clone())
                .or_insert_with(|| ([0; 5], histogram()));
            for (sum, n) in entry.0.iter_mut().zip(series.by_class) {
                *sum += n;
            }
            add(&mut entry.1, &series.duration_us);
        }
        for series in &report.upstreams {
            add(
                upstreams
                    .entry(series.name.clone())
                    .or_insert_with(histogram),
                &series.duration_us,
            );
        }
        for (key, n) in &report.refusals {
            *refusals.entry(key.clone()).or_default() += n;
        }
        for (rule, n) in &report.shadow_denials {
            *shadow.entry(rule.clone()).or_default() += n;
        }
        for (key, n) in &report.upstream_errors {
            *upstream_errors.entry(key.clone()).or_default() += n;
        }
        hits += report.token_cache_hits;
        misses += report.token_cache_misses;
        dropped += report.log_records_dropped;
        for (listener, counts) in &report.tls {
            let sum = tls.entry(listener.clone()).or_default();
            for (total, n) in sum.iter_mut().zip(counts) {
                *total += n;
            }
        }
    }

    let mut out = String::with_capacity(16 * 1024);
    let name = "credentialflow_requests_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests answered, by route and status class.",
    );
    for (l, (classes, _)) in &routes {
        for (at, n) in classes.iter().enumerate() {
            let class = format!("{}xx", at + 1);
            let pairs = [
                ("route", &*l.route),
                ("api", &*l.api),
                ("tenant", &*l.tenant),
                ("status_class", class.as_str()),
            ];
            let _ = writeln!(out, "{name}{} {n}", labels(&pairs));
        }
    }
    durations(
        &mut out,
        ("credentialflow_request_duration", "route"),
        "Time from the request head to the end of the response",
        routes.iter().map(|(l, (_, h))| (&*l.route, h)),
    );
    durations(
        &mut out,
        ("credentialflow_upstream_duration", "upstream"),
        "Time from sending the request upstream to its response head",
        upstreams.iter().map(|(u, h)| (&**u, h)),
    );
    for (kind, name, help) in [
        (
            Refusal::Auth,
            "credentialflow_auth_failures_total",
            "Requests refused by authentication, by reason.",
        ),
        (
            Refusal::Access,
            "credentialflow_access_denied_total",
            "Requests refused by authorization, by reason.",
        ),
    ] {
        header(&mut out, name, "counter", help);
        for ((k, api, reason), n) in &refusals {
            if *k == kind {
                let _ = writeln!(
                    out,
                    "{name}{} {n}",
                    labels(&[("api", api), ("reason", reason)])
                );
            }
        }
    }
    let name = "credentialflow_rate_limited_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests refused by a rate limit or quota.",
    );
    let mut limited: BTreeMap<&str, u64> = BTreeMap::new();
    for ((k, api, _), n) in &refusals {
        if *k == Refusal::Limited {
            *limited.entry(api).or_default() += n;
        }
    }
    for (api, n) in limited {
        let _ = writeln!(out, "{name}{} {n}", labels(&[("api", api)]));
    }
    let name = "credentialflow_shadow_denials_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests a shadow rule would have refused.",
    );
    for (rule, n) in &shadow {
        let _ = writeln!(out, "{name}{} {n}", labels(&[("rule", rule)]));
    }
    let name = "credentialflow_upstream_errors_total";
    header(
        &mut out,
        name,
        "counter",
        "Requests failed by the upstream, by kind.",
    );
    for ((upstream, kind), n) in &upstream_errors {
        let _ = writeln!(
            out,
            "{name}{} {n}",
            labels(&[("upstream", upstream), ("kind", kind)])
        );
    }
    let name = "credentialflow_connections";
    header(&mut out, name, "gauge", "Open client connections.");
    for (listener, n) in &facts.connections {
        let _ = writeln!(out, "{name}{} {n}", labels(&[("listener", listener)]));
    }
    let name = "credentialflow_tls_handshakes_total";
    header(
        &mut out,
        name,
        "counter",
        "TLS handshakes on the listeners.",
    );
    for (listener, [full, resumed, failed]) in &tls {
        for (result, resumed_label, n) in [
            ("ok", "false", full),
            ("ok", "true", resumed),
            ("failed", "false", failed),
        ] {
            let pairs = [
                ("listener", &**listener),
                ("result", result),
                ("resumed", resumed_label),
            ];
            let _ = writeln!(out, "{name}{} {n}", labels(&pairs));
        }
    }
    let name = "credentialflow_token_cache_total";
    header(
        &mut out,
        name,
        "counter",
        "Verified-credential cache lookups (current configuration).",
    );
    let _ = writeln!(out, "{name}{} {hits}", labels(&[("result", "hit")]));
    let _ = writeln!(out, "{name}{} {misses}", labels(&[("result", "miss")]));
    let name = "credentialflow_jwks_refresh_total";
    header(
        &mut out,
        name,
        "counter",
        "JWKS fetches, by issuer and result.",
    );
    for stat in &facts.jwks {
        for (result, n) in [("ok", stat.ok), ("failed", stat.failed)] {
            let _ = writeln!(
                out,
                "{name}{} {n}",
                labels(&[("issuer", &stat.issuer), ("result", result)])
            );
        }
    }
    let name = "credentialflow_jwks_keys_age_seconds";
    header(
        &mut out,
        name,
        "gauge",
        "Seconds since the issuer's keys were last loaded.",
    );
    for stat in &facts.jwks {
        if let Some(age) = stat.keys_age_s {
            let _ = writeln!(
                out,
                "{name}{} {age:.3}",
                labels(&[("issuer", &stat.issuer)])
            );
        }
    }
    let name = "credentialflow_upstream_health_check_up";
    header(
        &mut out,
        name,
        "gauge",
        "Active health check verdict per target: 1 up, 0 down (absent until the first verdict).",
    );
    // An address listed twice under one upstream (two server names on one IP) is one series:
    // down when either entry is.
    let mut verdicts: Vec<(&str, std::net::SocketAddr, bool)> = Vec::new();
    for target in &facts.health {
        let Some(up) = target.up else { continue };
        match verdicts
            .iter_mut()
            .find(|(u, t, _)| *u == target.upstream && *t == target.target)
        {
            Some(seen) => seen.2 &= up,
            None => verdicts.push((&target.upstream, target.target, up)),
        }
    }
    for (upstream, target, up) in verdicts {
        let address = target.to_string();
        let pairs = [("upstream", upstream), ("target", &address)];
        let _ = writeln!(out, "{name}{} {}", labels(&pairs), u8::from(up));
    }
    let name = "credentialflow_snapshot_version";
    header(
        &mut out,
        name,
        "gauge",
        "The credential-state version each core last confirmed.",
    );
    for (core, version) in facts.core_versions.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{} {version}",
            labels(&[("core", &core.to_string())])
        );
    }
    let name = "credentialflow_log_records_dropped_total";
    header(
        &mut out,
        name,
        "counter",
        "Access and process log records dropped instead of blocking.",
    );
    let _ = writeln!(out, "{name} {dropped}");
    out
}

#[cfg(test)]
mod tests {
    use super::super::metrics::RouteSeries;
    use super::*;

    fn report(us: &[u64]) -> MetricsReport {
        let mut h = histogram();
        for &v in us {
            h.record(v).unwrap();
        }
        MetricsReport {
            routes: vec![RouteSeries {
                labels: RouteLabels {
                    route: "orders /orders GET".into(),
                    api: "orders".into(),
                    tenant: "acme".into(),
                },
                by_class: [0, us.len() as u64, 0, 0, 0],
                duration_us: h,
            }],
            ..MetricsReport::default()
        }
    }

    #[test]
    fn cores_add_up_and_buckets_are_cumulative() {
        let text = render(
            &[report(&[400, 800]), report(&[3000])],
            &ControlFacts::default(),
            Format::Prometheus,
        );
        assert!(text.contains(
            "credentialflow_requests_total{route=\"orders /orders GET\",api=\"orders\",tenant=\"acme\",status_class=\"2xx\"} 3"
        ));
        let bucket = |le: &str| -> u64 {
            let prefix = format!(
                "credentialflow_request_duration_seconds_bucket{{route=\"orders /orders GET\",le=\"{le}\"}} "
            );
            let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(bucket("0.0005"), 1);
        assert_eq!(bucket("0.001"), 2);
        assert_eq!(bucket("0.0025"), 2);
        assert_eq!(bucket("0.005"), 3);
        assert_eq!(bucket("+Inf"), 3);
        assert!(text.contains(
            "credentialflow_request_duration_seconds_count{route=\"orders /orders GET\"} 3"
        ));
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = render(
            &[report(&[400])],
            &ControlFacts::default(),
            Format::OpenMetrics,
        );
        assert!(text.contains("# TYPE credentialflow_requests counter\n"));
        assert!(text.contains("# HELP credentialflow_requests Requests"));
        assert!(text.contains("\ncredentialflow_requests_total{"));
        assert!(text.contains("# TYPE credentialflow_request_duration_seconds histogram\n"));
        assert!(text.ends_with("\n# EOF\n"));
        assert_eq!(
            Format::from_accept(Some(
                b"application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some(b"text/plain")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            labels(&[("rule", "a\"b\\c\nd")]),
            "{rule=\"a\\\"b\\\\c\\nd\"}"
        );
    }

    #[test]
    fn health_check_verdicts_are_gauges_once_reached() {
        use crate::upstream::health::TargetHealth;
        let facts = ControlFacts {
            health: vec![
                TargetHealth {
                    upstream: "api".into(),
                    target: "127.0.0.1:9001".parse().unwrap(),
                    up: Some(true),
                },
                TargetHealth {
                    upstream: "api".into(),
                    target: "127.0.0.1:9002".parse().unwrap(),
                    up: Some(false),
                },
                TargetHealth {
                    upstream: "api".into(),
                    target: "127.0.0.1:9003".parse().unwrap(),
                    up: None,
                },
                // The same address again (another server name): one series, down.
                TargetHealth {
                    upstream: "api".into(),
                    target: "127.0.0.1:9001".parse().unwrap(),
                    up: Some(false),
                },
                TargetHealth {
                    upstream: "other".into(),
                    target: "127.0.0.1:9001".parse().unwrap(),
                    up: Some(true),
                },
            ],
            ..ControlFacts::default()
        };
        let text = render(&[report(&[400])], &facts, Format::Prometheus);
        let name = "credentialflow_upstream_health_check_up";
        assert!(text.contains(&format!("# TYPE {name} gauge\n")));
        assert!(text.contains(&format!(
            "\n{name}{{upstream=\"api\",target=\"127.0.0.1:9001\"}} 0\n"
        )));
        assert_eq!(
            text.matches("upstream=\"api\",target=\"127.0.0.1:9001\"")
                .count(),
            1
        );
        assert!(text.contains(&format!(
            "\n{name}{{upstream=\"other\",target=\"127.0.0.1:9001\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "\n{name}{{upstream=\"api\",target=\"127.0.0.1:9002\"}} 0\n"
        )));
        assert!(
            !text.contains("127.0.0.1:9003"),
            "no verdict yet: no series"
        );
    }
}
