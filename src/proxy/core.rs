//! The per-core context every connection of a core shares (single-threaded), and the
//! generation — one snapshot with the core's own state for it — that requests are served from.
//!
//! A reload hands the core a new snapshot: it becomes the current generation at once, each
//! connection picks it up before its next request, and a request in flight finishes on the
//! generation it started with. Upstream pools of unchanged upstreams move to the new generation.

use crate::auth::cache::VerifiedCache;
use crate::auth::{AuthLinks, AuthState, CoreAuth};
use crate::filter::connections::ConnectionCounts;
use crate::limit::CoreLimits;
use crate::observe::access::{AccessRecord, CoreAccessLog};
use crate::runtime::drain::DrainSignal;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamPools;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use super::request_id::RequestIds;

/// One snapshot as this core serves it.
pub struct Generation {
    pub snapshot: Arc<Snapshot>,
    pub pools: RefCell<UpstreamPools>,
    /// Per listener (`None`: plain), what its TLS handshakes need on this core.
    pub server_tls: Vec<Option<CoreTls>>,
    /// Per API: this core's verified-credential cache.
    pub token_caches: Vec<RefCell<VerifiedCache>>,
}

/// A TLS listener's settings as one core uses them.
#[derive(Clone)]
pub struct CoreTls {
    /// This core's own copy of the rustls config, so per-connection reference counting stays
    /// on the core.
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: std::time::Duration,
}

impl Generation {
    fn new(snapshot: Arc<Snapshot>, pools: UpstreamPools) -> Generation {
        let server_tls = snapshot
            .listeners
            .iter()
            .map(|l| {
                l.tls.as_ref().map(|tls| CoreTls {
                    config: Arc::new((*tls.config).clone()),
                    handshake_timeout: tls.handshake_timeout,
                })
            })
            .collect();
        let token_caches = snapshot
            .token_cache_entries
            .iter()
            .map(|&entries| RefCell::new(VerifiedCache::new(entries)))
            .collect();
        Generation {
            snapshot,
            pools: RefCell::new(pools),
            server_tls,
            token_caches,
        }
    }
}

/// A core-local event count.
#[derive(Default)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn bump(&self) {
        self.0.set(self.0.get() + 1);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Lets one warning of a kind through per interval and counts the ones held back, so a flood of
/// identical failures cannot flood the log.
#[derive(Default)]
pub struct LogLimiter {
    next: Cell<Option<std::time::Instant>>,
    suppressed: Cell<u64>,
}

impl LogLimiter {
    /// Interval between two warnings of one kind on one core.
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// `Some(held back since the last one)` when a warning may be logged now.
    pub fn allow(&self, now: std::time::Instant) -> Option<u64> {
        match self.next.get() {
            Some(next) if now < next => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.next.set(Some(now + Self::INTERVAL));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

/// Counters of one core (read when the core stops).
#[derive(Default)]
pub struct CoreCounters {
    pub tls_handshakes: Counter,
    pub tls_resumed: Counter,
    pub tls_failures: Counter,
    /// Client connections closed at once because the core was at its connection budget.
    pub over_budget: Counter,
    /// Client connections closed at once at a listener's or a client address's cap.
    pub over_cap: Counter,
    /// Connections closed for a missing or malformed PROXY protocol header.
    pub proxy_refused: Counter,
    /// Requests refused by IP rules, request filters, and the failed-authentication throttle.
    pub ip_denied: Counter,
    pub filtered: Counter,
}

/// Per-kind limits on repeated warnings of one core.
#[derive(Default)]
pub struct CoreWarnings {
    pub accept: LogLimiter,
    pub over_budget: LogLimiter,
    pub over_cap: LogLimiter,
    pub proxy_protocol: LogLimiter,
    /// Upstream connect and TLS handshake failures.
    pub connect: LogLimiter,
    /// Upstream failures answered to a client (502/503/504).
    pub upstream: LogLimiter,
}

/// Per-core state shared by all connections of one core.
pub struct Core {
    pub id: usize,
    current: RefCell<Rc<Generation>>,
    pub drain: DrainSignal,
    pub active_connections: Cell<usize>,
    /// Client connections this core keeps open at most (its share of the descriptor limit).
    pub connection_budget: usize,
    pub request_ids: RequestIds,
    /// Span and trace ids for `traceparent`.
    pub trace_ids: crate::observe::trace::TraceIds,
    pub counters: CoreCounters,
    pub warnings: CoreWarnings,
    /// Credentials and keys this core authenticates from, with its scratch buffers.
    pub auth: CoreAuth,
    /// Authorization counters and the scratch for subscription lookups.
    pub access: crate::access::AccessCounters,
    pub access_scratch: RefCell<String>,
    /// The normalized path of the request being prepared, and working space for it.
    pub path_buffers: RefCell<(Vec<u8>, Vec<u8>)>,
    /// Buckets, quota counts and leases this core holds.
    pub limits: CoreLimits,
    /// Open connections per listener and client address (shared by all cores).
    pub connections: Arc<ConnectionCounts>,
    /// Scratch for the request-signature scan.
    pub filter_scratch: RefCell<Vec<u8>>,
    /// This core's access-log batch (`None`: the access log is off).
    pub access_log: Option<CoreAccessLog>,
    /// Request counters and latency histograms (read at scrape time).
    pub metrics: crate::observe::metrics::CoreMetrics,
    /// Buffers connections take when bytes arrive and give back when an exchange ends.
    pub buffers: BufferPool,
    /// Spare request states, lent to connections while they serve requests.
    pub lent: LentPool,
}

/// A core's spare connection buffers: an idle keep-alive connection holds none, so its memory
/// is its socket and its task alone.
#[derive(Default)]
pub struct BufferPool {
    spare: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// Buffers kept for reuse at most (beyond that they are freed).
    const KEEP: usize = 1024;
    /// Capacity a pooled buffer is made with, and the most it may keep.
    pub const SIZE: usize = 4 * 1024;
    const MAX_KEPT_CAPACITY: usize = 16 * 1024;

    /// An empty buffer with room for at least [`Self::SIZE`] bytes.
    pub fn take(&self) -> Vec<u8> {
        self.spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(Self::SIZE))
    }

    /// Gives `buf` back (emptied), leaving an unallocated vector in its place.
    pub fn give(&self, buf: &mut Vec<u8>) {
        let mut buf = std::mem::take(buf);
        if buf.capacity() < Self::SIZE || buf.capacity() > Self::MAX_KEPT_CAPACITY {
            return;
        }
        let mut spare = self.spare.borrow_mut();
        if spare.len() < Self::KEEP {
            buf.clear();
            spare.push(buf);
        }
    }
}

/// What a connection borrows from its core while it serves requests: the access record (with
/// the capacity of its text fields) and the places of the response and upstream buffers. Lent
/// when a request's bytes arrive, given back when the connection goes idle, so an idle
/// connection holds none of it.
#[derive(Default)]
pub struct Lent {
    pub record: AccessRecord,
    /// What goes to the client (and the request head upstream).
    pub out: Vec<u8>,
    /// What comes from the upstream.
    pub ubuf: Vec<u8>,
    /// An error response was written and the connection closes lingering, after the request's
    /// record is logged.
    pub linger: bool,
}

/// A core's spare [`Lent`] states.
#[derive(Default)]
pub struct LentPool {
    // Boxed: a connection holds the box, so lending and giving back move a pointer.
    #[allow(clippy::vec_box)]
    spare: RefCell<Vec<Box<Lent>>>,
}

impl LentPool {
    /// States kept for reuse at most (beyond that they are freed).
    const KEEP: usize = 1024;

    /// Lends a state to `slot` unless it holds one.
    pub fn lend(&self, slot: &mut LentSlot) {
        if slot.0.is_none() {
            slot.0 = Some(self.spare.borrow_mut().pop().unwrap_or_default());
        }
    }

    /// Takes the state back from `slot`: its record must have been logged and cleared, its
    /// buffers given back to the [`BufferPool`].
    pub fn give(&self, slot: &mut LentSlot) {
        if let Some(lent) = slot.0.take() {
            let mut spare = self.spare.borrow_mut();
            if spare.len() < Self::KEEP {
                spare.push(lent);
            }
        }
    }
}

/// The [`Lent`] state a connection holds while it serves requests. Using it while it is not
/// lent is a bug in the request loop, which lends it before a request's first phase and
/// takes it back only when the connection goes idle.
#[derive(Default)]
pub struct LentSlot(Option<Box<Lent>>);

impl LentSlot {
    /// The state, when lent.
    pub fn get_mut(&mut self) -> Option<&mut Lent> {
        self.0.as_deref_mut()
    }
}

impl std::ops::Deref for LentSlot {
    type Target = Lent;

    fn deref(&self) -> &Lent {
        self.0
            .as_deref()
            .expect("the request loop lends its state before using it")
    }
}

impl std::ops::DerefMut for LentSlot {
    fn deref_mut(&mut self) -> &mut Lent {
        self.0
            .as_deref_mut()
            .expect("the request loop lends its state before using it")
    }
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        snapshot: Arc<Snapshot>,
        auth: Arc<AuthState>,
        links: Option<AuthLinks>,
        limits: CoreLimits,
        connections: Arc<ConnectionCounts>,
        seed: u64,
        connection_budget: usize,
        access_log: Option<CoreAccessLog>,
    ) -> Core {
        let pools = UpstreamPools::new(&snapshot.upstreams);
        Core {
            id,
            current: RefCell::new(Rc::new(Generation::new(snapshot, pools))),
            drain: DrainSignal::default(),
            active_connections: Cell::new(0),
            connection_budget,
            request_ids: RequestIds::new(seed, id),
            trace_ids: crate::observe::trace::TraceIds::new(
                seed.rotate_left(29) ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            counters: CoreCounters::default(),
            warnings: CoreWarnings::default(),
            auth: CoreAuth::new(auth, links),
            access: crate::access::AccessCounters::default(),
            access_scratch: RefCell::new(String::with_capacity(64)),
            path_buffers: RefCell::new((Vec::new(), Vec::new())),
            limits,
            connections,
            filter_scratch: RefCell::new(Vec::new()),
            access_log,
            metrics: Default::default(),
            buffers: BufferPool::default(),
            lent: LentPool::default(),
        }
    }

    /// Logs a finished request (when the access log is on) and clears the record for the
    /// connection's next request.
    pub fn log_access(&self, record: &mut AccessRecord, snapshot: &Snapshot) {
        // One clock read serves the metrics and the access line.
        let now = std::time::Instant::now();
        let duration_us = record.start.map_or(0, |start| {
            crate::observe::access::micros(now.saturating_duration_since(start))
        });
        self.metrics.observe(record, snapshot, duration_us);
        if let Some(log) = &self.access_log {
            log.record(record, snapshot, now);
        }
        record.clear();
    }

    /// This core's metrics now (for a scrape).
    pub fn metrics_report(&self) -> crate::observe::metrics::MetricsReport {
        let generation = self.current();
        let mut report = self.metrics.report(&generation.snapshot);
        for cache in &generation.token_caches {
            let cache = cache.borrow();
            report.token_cache_hits += cache.stats.hits;
            report.token_cache_misses += cache.stats.misses;
        }
        report.log_records_dropped = self.access_log.as_ref().map_or(0, |log| log.dropped());
        report
    }

    /// The generation new requests are served from.
    pub fn current(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    /// Makes `snapshot` and `auth` current, carrying over the pools of unchanged upstreams.
    pub fn adopt(&self, snapshot: Arc<Snapshot>, auth: Arc<AuthState>) {
        self.auth.adopt(auth);
        let old = self.current();
        // Requests still in flight on the old generation index its pools, so it keeps pools of
        // the same shape (empty) while its idle connections move on.
        let old_pools = std::mem::replace(
            &mut *old.pools.borrow_mut(),
            UpstreamPools::new(&old.snapshot.upstreams),
        );
        let pools =
            UpstreamPools::carry_over(old_pools, &old.snapshot.upstreams, &snapshot.upstreams);
        *self.current.borrow_mut() = Rc::new(Generation::new(snapshot, pools));
    }

    /// Applies an active health check's verdict to the current generation's pools.
    pub fn apply_health(&self, upstream: &str, target: std::net::SocketAddr, up: bool) {
        let current = self.current();
        let known = current.pools.borrow_mut().apply_health(
            &current.snapshot.upstreams,
            upstream,
            target,
            up,
        );
        if !known {
            tracing::debug!(core = self.id, %upstream, %target, "health verdict for a target this snapshot does not have");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn one_warning_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_millis(500)), None);
        assert_eq!(limiter.allow(t0 + LogLimiter::INTERVAL), Some(2));
        assert_eq!(limiter.allow(t0 + LogLimiter::INTERVAL * 3), Some(0));
    }
}
