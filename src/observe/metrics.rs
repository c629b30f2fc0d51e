//! Request metrics kept by each core: counters and latency histograms fed from the finished
//! access record (one call per request, no shared state), read at scrape time.
//!
//! A core counts into its own [`CoreMetrics`]; nothing is shared or atomic. Series are keyed by
//! label values that come from the config only (route ids, API, tenant and upstream names,
//! reason codes and rule names), never from the request, so their number is bounded. Route and
//! upstream indices of the snapshot a request was served from are mapped to series once per
//! snapshot, so a request costs an index lookup, not a string hash. When `/metrics` is scraped,
//! the control side asks every core for a [`MetricsReport`] (a copy) and adds them up
//! ([`super::exposition`]).

use super::access::AccessRecord;
use crate::snapshot::Snapshot;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::HashMap;

/// Longest duration a histogram records (longer ones are clamped to it), in microseconds.
const MAX_US: u64 = 3_600_000_000;
/// Histogram precision: two significant digits (1 % error), a few KiB per series.
const SIGNIFICANT_DIGITS: u8 = 2;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, SIGNIFICANT_DIGITS).expect("valid histogram bounds")
}

/// The labels of one route series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteLabels {
    pub route: Box<str>,
    pub api: Box<str>,
    pub tenant: Box<str>,
}

/// Requests of one route: by status class (1xx … 5xx) and their durations.
#[derive(Debug, Clone)]
pub struct RouteSeries {
    pub labels: RouteLabels,
    pub by_class: [u64; 5],
    pub duration_us: Histogram<u64>,
}

/// Responses of one upstream: time to the response head.
#[derive(Debug, Clone)]
pub struct UpstreamSeries {
    pub name: Box<str>,
    pub duration_us: Histogram<u64>,
}

/// What refused requests are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// 401 (and the 503s of unavailable authentication).
    Auth,
    /// 403 by the authorization phase.
    Access,
    /// 429 by a rate limit or quota.
    Limited,
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    Full,
    Resumed,
    Failed,
}

/// A refusal counter's key: what refused, the API's name and the reason code.
pub type RefusalKey = (Refusal, Box<str>, &'static str);

/// One core's metrics at one moment (sent to the control side on a scrape).
#[derive(Debug, Clone, Default)]
pub struct MetricsReport {
    pub routes: Vec<RouteSeries>,
    pub upstreams: Vec<UpstreamSeries>,
    /// `(refusal, api, reason)` → count.
    pub refusals: Vec<(RefusalKey, u64)>,
    pub shadow_denials: Vec<(Box<str>, u64)>,
    /// `(upstream, kind)` → count.
    pub upstream_errors: Vec<((Box<str>, &'static str), u64)>,
    pub token_cache_hits: u64,
    pub token_cache_misses: u64,
    /// Per listener name: full handshakes, resumed ones, failures.
    pub tls: Vec<(Box<str>, [u64; 3])>,
    pub log_records_dropped: u64,
}

#[derive(Default)]
struct State {
    /// Serial of the snapshot the slot maps below were built for (0: none yet).
    snapshot: u64,
    /// Per route index of that snapshot: its slot in `routes`.
    route_slots: Vec<usize>,
    /// Per upstream index of that snapshot: its slot in `upstreams`.
    upstream_slots: Vec<usize>,
    /// Per API index of that snapshot: its slot in `apis`.
    api_slots: Vec<usize>,
    /// API names by slot (refusals are counted by slot, so a reload that reorders the APIs
    /// keeps each count with its name).
    apis: Vec<Box<str>>,
    routes: Vec<RouteSeries>,
    route_keys: HashMap<RouteLabels, usize>,
    upstreams: Vec<UpstreamSeries>,
    upstream_keys: HashMap<Box<str>, usize>,
    refusals: HashMap<(Refusal, usize, &'static str), u64>,
    shadow_denials: HashMap<Box<str>, u64>,
    upstream_errors: HashMap<(usize, &'static str), u64>,
    /// Per listener index (listeners keep their order across reloads): full, resumed, failed.
    tls: Vec<[u64; 3]>,
}

/// The slot of the series for requests that matched no route.
const UNROUTED: usize = 0;

impl State {
    fn route_slot(&mut self, labels: RouteLabels) -> usize {
        if let Some(&slot) = self.route_keys.get(&labels) {
            return slot;
        }
        let slot = self.routes.len();
        self.routes.push(RouteSeries {
            labels: labels.clone(),
            by_class: [0; 5],
            duration_us: histogram(),
        });
        self.route_keys.insert(labels, slot);
        slot
    }

    fn upstream_slot(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.upstream_keys.get(name) {
            return slot;
        }
        let slot = self.upstreams.len();
        self.upstreams.push(UpstreamSeries {
            name: name.into(),
            duration_us: histogram(),
        });
        self.upstream_keys.insert(name.into(), slot);
        slot
    }

    /// Maps the indices of `snapshot` to series (once per snapshot).
    fn follow(&mut self, snapshot: &Snapshot) {
        if self.snapshot == snapshot.serial && !self.routes.is_empty() {
            return;
        }
        self.snapshot = snapshot.serial;
        self.api_slots = snapshot
            .apis
            .iter()
            .map(|api| match self.apis.iter().position(|n| *n == api.name) {
                Some(slot) => slot,
                None => {
                    self.apis.push(api.name.clone());
                    self.apis.len() - 1
                }
            })
            .collect();
        let unrouted = self.route_slot(RouteLabels {
            route: "".into(),
            api: "".into(),
            tenant: "".into(),
        });
        debug_assert_eq!(unrouted, UNROUTED);
        self.route_slots = snapshot
            .routes
            .iter()
            .map(|route| {
                let tenant = snapshot
                    .apis
                    .iter()
                    .find(|a| *a.name == *route.api)
                    .map_or("", |a| &a.tenant);
                self.route_slot(RouteLabels {
                    route: route.id.clone(),
                    api: route.api.as_str().into(),
                    tenant: tenant.into(),
                })
            })
            .collect();
        self.upstream_slots = snapshot
            .upstreams
            .iter()
            .map(|u| self.upstream_slot(&u.name))
            .collect();
    }
}

/// One core's metrics.
#[derive(Default)]
pub struct CoreMetrics {
    state: RefCell<State>,
}

/// Which refusal a status and reason code are, if any.
fn refusal(status: u16, reason: &str) -> Option<Refusal> {
    match (status, reason) {
        (401, _) | (503, "keys_unavailable" | "busy") => Some(Refusal::Auth),
        (429, "rate_limited" | "quota_exceeded") => Some(Refusal::Limited),
        (403, "ip_denied" | "blocked_by_filter") => None,
        (403, _) => Some(Refusal::Access),
        _ => None,
    }
}

impl CoreMetrics {
    /// Counts one TLS handshake on `listener`.
    pub fn tls_handshake(&self, listener: usize, outcome: TlsOutcome) {
        let mut state = self.state.borrow_mut();
        if state.tls.len() <= listener {
            state.tls.resize(listener + 1, [0; 3]);
        }
        state.tls[listener][outcome as usize] += 1;
    }

    /// Counts one finished request.
    pub fn observe(&self, record: &AccessRecord, snapshot: &Snapshot, duration_us: u64) {
        let mut state = self.state.borrow_mut();
        state.follow(snapshot);
        let route = record
            .route
            .and_then(|r| Some((r, *state.route_slots.get(r)?)));
        let slot = route.map_or(UNROUTED, |(_, slot)| slot);
        let class = (record.status / 100).clamp(1, 5) as usize - 1;
        let series = &mut state.routes[slot];
        series.by_class[class] += 1;
        let _ = series.duration_us.record(duration_us.clamp(1, MAX_US));
        let Some((route, _)) = route else { return };
        let route = &snapshot.routes[route];
        let upstream = state.upstream_slots.get(route.upstream).copied();
        if let (Some(upstream), Some(ttfb)) = (upstream, record.upstream_ttfb_us) {
            let _ = state.upstreams[upstream]
                .duration_us
                .record(ttfb.clamp(1, MAX_US));
        }
        if let Some(reason) = record.reason {
            if let Some(kind) = refusal(record.status, reason) {
                let api = snapshot
                    .apis
                    .iter()
                    .position(|a| *a.name == *route.api)
                    .and_then(|at| state.api_slots.get(at).copied())
                    .unwrap_or(usize::MAX);
                *state.refusals.entry((kind, api, reason)).or_default() += 1;
            } else if matches!(record.status, 502..=504) {
                if let Some(upstream) = upstream {
                    *state.upstream_errors.entry((upstream, reason)).or_default() += 1;
                }
            }
        }
        if !record.shadow_rule.is_empty() {
            match state.shadow_denials.get_mut(record.shadow_rule.as_str()) {
                Some(count) => *count += 1,
                None => {
                    state
                        .shadow_denials
                        .insert(record.shadow_rule.as_str().into(), 1);
                }
            }
        }
    }

    /// A copy of everything counted so far; `snapshot` names the listeners.
    pub fn report(&self, snapshot: &Snapshot) -> MetricsReport {
        let state = self.state.borrow();
        let api_name = |slot: usize| -> Box<str> {
            state.apis.get(slot).cloned().unwrap_or_else(|| "".into())
        };
        MetricsReport {
            routes: state.routes.clone(),
            upstreams: state.upstreams.clone(),
            refusals: state
                .refusals
                .iter()
                .map(|(&(kind, api, reason), &n)| ((kind, api_name(api), reason), n))
                .collect(),
            shadow_denials: state
                .shadow_denials
                .iter()
                .map(|(rule, &n)| (rule.clone(), n))
                .collect(),
            upstream_errors: state
                .upstream_errors
                .iter()
                .map(|(&(upstream, kind), &n)| ((state.upstreams[upstream].name.clone(), kind), n))
                .collect(),
            tls: state
                .tls
                .iter()
                .enumerate()
                .map(|(at, counts)| {
                    let name = snapshot
                        .listeners
                        .get(at)
                        .map_or_else(|| at.to_string(), |l| l.name.clone());
                    (name.into_boxed_str(), *counts)
                })
                .collect(),
            ..MetricsReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_by_status_and_reason() {
        assert_eq!(refusal(401, "expired"), Some(Refusal::Auth));
        assert_eq!(refusal(503, "keys_unavailable"), Some(Refusal::Auth));
        assert_eq!(refusal(403, "insufficient_scope"), Some(Refusal::Access));
        assert_eq!(refusal(403, "blocked_by_filter"), None);
        assert_eq!(refusal(429, "rate_limited"), Some(Refusal::Limited));
        assert_eq!(refusal(429, "too_many_failures"), None);
        assert_eq!(refusal(502, "upstream_error"), None);
    }

    #[test]
    fn tls_handshakes_are_counted_per_listener_by_name() {
        let config = crate::config::Config::parse(
            "t.toml",
            "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:1\"\n\
             [[listeners]]\nname = \"partners\"\naddress = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let snapshot = Snapshot::compile(&config);
        let metrics = CoreMetrics::default();
        metrics.tls_handshake(1, TlsOutcome::Full);
        metrics.tls_handshake(1, TlsOutcome::Resumed);
        metrics.tls_handshake(1, TlsOutcome::Resumed);
        metrics.tls_handshake(0, TlsOutcome::Failed);
        let report = metrics.report(&snapshot);
        assert_eq!(
            report.tls,
            vec![("public".into(), [0, 0, 1]), ("partners".into(), [1, 2, 0])]
        );
    }

    #[test]
    fn histograms_keep_one_percent() {
        let mut h = histogram();
        for us in [100, 200, 300, 400, 10_000] {
            h.record(us).unwrap();
        }
        assert_eq!(h.len(), 5);
        let p50 = h.value_at_quantile(0.5);
        assert!((297..=303).contains(&p50), "{p50}");
    }
}
