//! One core's limit state — the buckets and quota counts it owns, the leases it holds on other
//! cores' keys — and the lease protocol between cores (see the module above for the bounds).
//!
//! Single-threaded like the rest of a core: `RefCell`s, no atomics. Cores talk through their
//! peer channels ([`crate::runtime::channel::PeerSender`]); a message is sent per lease, never
//! per request.

use super::bucket::{Bucket, BucketSpec};
use super::quota_file::{QuotaRecord, QuotaSink, SavedQuotas};
use super::table::BoundedMap;
use super::{key_hash, key_text, KeyFacts, LimitRule, RuleKind};
use crate::runtime::channel::PeerSender;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Share of a rate one lease may hold, split over the cores that are not the owner.
const LEASE_FRACTION: f64 = 0.01;
/// A lease unused this long goes back to its owner.
const LEASE_IDLE: Duration = Duration::from_millis(500);
/// An empty lease entry unused this long is forgotten.
const LEASE_FORGET: Duration = Duration::from_secs(10);

/// What a limit needs from the owner, sent with each lease request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spec {
    Rate(BucketSpec),
    /// `limit` requests in the period numbered `period`, which ends at `ends` (Unix seconds).
    Quota {
        limit: u64,
        period: i64,
        ends: i64,
    },
}

/// Messages between cores.
#[derive(Debug)]
pub enum LeaseMsg {
    /// "Send me up to `want` tokens of `key`" (`text`: a quota's saved key).
    Take {
        from: usize,
        key: u64,
        spec: Spec,
        want: u64,
        text: Option<Box<str>>,
    },
    /// The owner's answer: `tokens` granted (maybe 0), what it has left, and — when it has
    /// nothing left — when to ask again (`retry_nanos`).
    Grant {
        key: u64,
        spec: Spec,
        tokens: u64,
        remaining: u64,
        reset_secs: u64,
        retry_nanos: u64,
    },
    /// Unused tokens going back to the owner.
    Return { key: u64, spec: Spec, tokens: u64 },
}

/// The `RateLimit-*` values of a limited response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub limit: u64,
    pub remaining: u64,
    pub reset: u64,
}

/// The phase's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted (and counted); the fields to show when a limit asks for them.
    Allow(Option<Shown>),
    /// Refused: a quota (else a rate) ran out; try again in `retry_after` seconds.
    Deny {
        quota: bool,
        retry_after: u64,
        shown: Shown,
    },
    /// A lease for `key` was asked for: wait for it, then check again.
    Wait(u64),
    /// The owner did not answer in time.
    Unavailable,
}

/// The failed-authentication throttle's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    Pass,
    /// Too many failures: refuse, retry after this many seconds.
    Refuse(u64),
    /// A lease for `key` was asked for: wait, then ask again.
    Wait(u64),
    /// The owner did not answer in time.
    Unavailable,
}

/// Counts of one core.
#[derive(Default)]
pub struct LimitCounters {
    pub allowed: Cell<u64>,
    pub rate_limited: Cell<u64>,
    pub quota_exceeded: Cell<u64>,
    pub throttled: Cell<u64>,
    pub lease_requests: Cell<u64>,
}

/// A request's limit resolved to its key.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'r> {
    pub rule: &'r LimitRule,
    pub key: u64,
    pub spec: Spec,
}

impl<'r> Applied<'r> {
    /// `rule` for the request described by `facts` at `unix` seconds.
    pub fn new(rule: &'r LimitRule, facts: &KeyFacts<'_>, unix: i64) -> Applied<'r> {
        match rule.kind {
            RuleKind::Rate { rate, capacity } => Applied {
                rule,
                key: key_hash(rule, facts, 0),
                spec: Spec::Rate(BucketSpec {
                    per_sec: rate.per_second(),
                    capacity: capacity as f64,
                }),
            },
            RuleKind::Quota(q) => {
                let period = q.period.index(unix);
                Applied {
                    rule,
                    key: key_hash(rule, facts, period),
                    spec: Spec::Quota {
                        limit: q.limit,
                        period,
                        ends: q.period.end(period),
                    },
                }
            }
        }
    }
}

struct OwnedQuota {
    text: Box<str>,
    period: i64,
    ends: i64,
    used: u64,
    dirty: bool,
}

#[derive(Default)]
struct Lease {
    tokens: u64,
    /// Tokens owed (failures counted while the lease was empty).
    debt: u64,
    pending: bool,
    /// Refuse locally until then (the owner said it is empty).
    denied_until: u64,
    /// What the owner had left, and its reset, at the last grant.
    remaining: u64,
    reset_secs: u64,
    last_used: u64,
    /// A quota lease: the period it belongs to (a new period starts from nothing).
    spec: Option<Spec>,
}

enum Availability {
    Yes(Shown),
    No { retry_after: u64, shown: Shown },
    Pending,
}

/// The limit state of one core.
pub struct CoreLimits {
    core: usize,
    /// Every core's peer channel (this core's own included, unused); empty with one core.
    peers: Box<[PeerSender]>,
    origin: Instant,
    buckets: RefCell<BoundedMap<(BucketSpec, Bucket)>>,
    quotas: RefCell<BoundedMap<OwnedQuota>>,
    leases: RefCell<BoundedMap<Lease>>,
    waiters: RefCell<Vec<(u64, Waker)>>,
    saved: Arc<SavedQuotas>,
    sink: Option<QuotaSink>,
    pub counters: LimitCounters,
}

/// Per-core table sizes.
#[derive(Debug, Clone, Copy)]
pub struct TableSizes {
    pub keys: usize,
    pub quota_keys: usize,
}

impl CoreLimits {
    pub fn new(
        core: usize,
        peers: Vec<PeerSender>,
        sizes: TableSizes,
        saved: Arc<SavedQuotas>,
        sink: Option<QuotaSink>,
    ) -> CoreLimits {
        CoreLimits {
            core,
            peers: peers.into(),
            origin: Instant::now(),
            buckets: RefCell::new(BoundedMap::new(sizes.keys)),
            quotas: RefCell::new(BoundedMap::new(sizes.quota_keys)),
            leases: RefCell::new(BoundedMap::new(sizes.keys)),
            waiters: RefCell::new(Vec::new()),
            saved,
            sink,
            counters: LimitCounters::default(),
        }
    }

    fn cores(&self) -> usize {
        self.peers.len().max(1)
    }

    fn owner(&self, key: u64) -> usize {
        ((key >> 32) % self.cores() as u64) as usize
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Tokens per lease for a limit.
    fn lease_size(&self, spec: Spec) -> u64 {
        let others = (self.cores() - 1).max(1) as f64;
        match spec {
            Spec::Rate(b) => {
                let share = (b.per_sec * LEASE_FRACTION / others) as u64;
                let cap = (b.capacity / (2 * self.cores()) as f64) as u64;
                share.min(cap).max(1)
            }
            Spec::Quota { limit, .. } => ((limit as f64 * LEASE_FRACTION / others) as u64).max(1),
        }
    }

    /// Checks every limit of a request and, when all admit it, counts it against each (the
    /// limits are walked twice, so nothing is collected). `facts` makes a quota's saved key
    /// (only when a count is created or a lease asked for). `waited`: the request already
    /// waited for leases as often as it may.
    pub fn check<'r>(
        &self,
        applied: impl Iterator<Item = Applied<'r>> + Clone,
        facts: &KeyFacts<'_>,
        unix: i64,
        waited: bool,
    ) -> Verdict {
        let now = self.now();
        let mut shown: Option<Shown> = None;
        let mut pending = None;
        for a in applied.clone() {
            match self.availability(&a, facts, now, unix) {
                Availability::Yes(s) => {
                    if a.rule.headers && shown.is_none_or(|cur| s.remaining < cur.remaining) {
                        shown = Some(s);
                    }
                }
                Availability::No { retry_after, shown } => {
                    let quota = matches!(a.spec, Spec::Quota { .. });
                    let counter = if quota {
                        &self.counters.quota_exceeded
                    } else {
                        &self.counters.rate_limited
                    };
                    counter.set(counter.get() + 1);
                    return Verdict::Deny {
                        quota,
                        retry_after,
                        shown,
                    };
                }
                // Keep going: every missing lease is asked for at once.
                Availability::Pending => pending = pending.or(Some(a.key)),
            }
        }
        if let Some(key) = pending {
            return if waited {
                Verdict::Unavailable
            } else {
                Verdict::Wait(key)
            };
        }
        for a in applied {
            self.spend(&a, now);
        }
        self.counters.allowed.set(self.counters.allowed.get() + 1);
        Verdict::Allow(shown)
    }

    fn availability(
        &self,
        a: &Applied<'_>,
        facts: &KeyFacts<'_>,
        now: u64,
        unix: i64,
    ) -> Availability {
        let limit = a.rule.shown_limit();
        if self.owner(a.key) == self.core {
            return match a.spec {
                Spec::Rate(spec) => {
                    let mut buckets = self.buckets.borrow_mut();
                    let (stored, bucket) = buckets.get_or_insert_with(
                        a.key,
                        || (spec, Bucket::full(spec, now)),
                        |_, _| {},
                    );
                    *stored = spec;
                    bucket.refill(spec, now);
                    let whole = bucket.whole();
                    if whole >= 1 {
                        let mut after = *bucket;
                        after.take(1);
                        Availability::Yes(Shown {
                            limit,
                            remaining: whole - 1,
                            reset: after.secs_to_full(spec),
                        })
                    } else {
                        let retry_after = secs_ceil(bucket.nanos_to_one(spec));
                        Availability::No {
                            retry_after,
                            shown: Shown {
                                limit,
                                remaining: 0,
                                reset: retry_after,
                            },
                        }
                    }
                }
                Spec::Quota {
                    limit: max,
                    period,
                    ends,
                } => {
                    let mut quotas = self.quotas.borrow_mut();
                    let q = self.owned_quota(&mut quotas, a.key, period, ends, || {
                        key_text(a.rule, facts).into()
                    });
                    let reset = (ends - unix).max(1) as u64;
                    if q.used < max {
                        Availability::Yes(Shown {
                            limit,
                            remaining: max - q.used - 1,
                            reset,
                        })
                    } else {
                        Availability::No {
                            retry_after: reset,
                            shown: Shown {
                                limit,
                                remaining: 0,
                                reset,
                            },
                        }
                    }
                }
            };
        }
        let mut leases = self.leases.borrow_mut();
        let lease = leases.get_or_insert_with(a.key, Lease::default, |key, mut old| {
            self.give_back(key, &mut old)
        });
        if let (Some(Spec::Quota { period: held, .. }), Spec::Quota { period, .. }) =
            (lease.spec, a.spec)
        {
            if held != period {
                *lease = Lease::default();
            }
        }
        lease.spec = Some(a.spec);
        if lease.tokens >= 1 {
            return Availability::Yes(Shown {
                limit,
                remaining: lease.tokens - 1 + lease.remaining,
                reset: lease.reset_secs,
            });
        }
        if lease.denied_until > now {
            let retry_after = secs_ceil(lease.denied_until - now);
            return Availability::No {
                retry_after,
                shown: Shown {
                    limit,
                    remaining: 0,
                    reset: retry_after,
                },
            };
        }
        if !lease.pending {
            lease.pending = true;
            let text = matches!(a.spec, Spec::Quota { .. }).then(|| key_text(a.rule, facts).into());
            self.ask(a.key, a.spec, text);
        }
        Availability::Pending
    }

    fn owned_quota<'m>(
        &self,
        quotas: &'m mut BoundedMap<OwnedQuota>,
        key: u64,
        period: i64,
        ends: i64,
        text: impl FnOnce() -> Box<str>,
    ) -> &'m mut OwnedQuota {
        quotas.get_or_insert_with(
            key,
            || {
                let text = text();
                let used = self.saved.used(&text, period);
                OwnedQuota {
                    text,
                    period,
                    ends,
                    used,
                    dirty: false,
                }
            },
            |_, _| {},
        )
    }

    fn spend(&self, a: &Applied<'_>, now: u64) {
        if self.owner(a.key) == self.core {
            match a.spec {
                Spec::Rate(_) => {
                    if let Some((_, bucket)) = self.buckets.borrow_mut().get_mut(a.key) {
                        bucket.take(1);
                    }
                }
                Spec::Quota { .. } => {
                    if let Some(q) = self.quotas.borrow_mut().get_mut(a.key) {
                        q.used += 1;
                        q.dirty = true;
                    }
                }
            }
            return;
        }
        let mut leases = self.leases.borrow_mut();
        let Some(lease) = leases.get_mut(a.key) else {
            return;
        };
        lease.tokens = lease.tokens.saturating_sub(1);
        lease.last_used = now;
        // Ask ahead when half the lease is spent — except for one-token leases (slow limits):
        // a token held ahead on one core would be missing on the others, so those are asked
        // for when needed and the limit stays exact.
        let size = self.lease_size(a.spec);
        if size > 1 && lease.tokens <= size / 2 && !lease.pending {
            lease.pending = true;
            // A quota's owner already has its count (the first lease made it).
            self.ask(a.key, a.spec, None);
        }
    }

    fn ask(&self, key: u64, spec: Spec, text: Option<Box<str>>) {
        let want = self.lease_size(spec);
        self.counters
            .lease_requests
            .set(self.counters.lease_requests.get() + 1);
        self.send(
            self.owner(key),
            LeaseMsg::Take {
                from: self.core,
                key,
                spec,
                want,
                text,
            },
        );
    }

    fn send(&self, to: usize, message: LeaseMsg) {
        if let Some(peer) = self.peers.get(to) {
            peer.send(message);
        }
    }

    /// Returns an evicted or idle lease's tokens to the owner.
    fn give_back(&self, key: u64, lease: &mut Lease) {
        let tokens = std::mem::take(&mut lease.tokens);
        if let (true, Some(spec)) = (tokens > 0, lease.spec) {
            self.send(self.owner(key), LeaseMsg::Return { key, spec, tokens });
        }
    }

    /// Whether lease requests for `key` are still unanswered.
    pub fn is_pending(&self, key: u64) -> bool {
        self.leases
            .borrow_mut()
            .get_mut(key)
            .is_some_and(|l| l.pending)
    }

    /// Waits until the lease for `key` is answered, at most `timeout`.
    pub async fn wait_for_lease(&self, key: u64, timeout: Duration) {
        let answered = std::future::poll_fn(|cx| {
            if !self.is_pending(key) {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push((key, cx.waker().clone()));
            Poll::Pending
        });
        let _ = crate::runtime::deadline::timeout_at(Instant::now() + timeout, answered).await;
    }

    /// Handles a message from another core.
    pub fn on_message(&self, message: LeaseMsg) {
        let now = self.now();
        match message {
            LeaseMsg::Take {
                from,
                key,
                spec,
                want,
                text,
            } => {
                let grant = self.grant(key, spec, want, text, now);
                self.send(from, grant);
            }
            LeaseMsg::Return { key, spec, tokens } => match spec {
                Spec::Rate(spec) => {
                    if let Some((_, bucket)) = self.buckets.borrow_mut().get_mut(key) {
                        bucket.refill(spec, now);
                        bucket.give_back(spec, tokens);
                    }
                }
                Spec::Quota { .. } => {
                    if let Some(q) = self.quotas.borrow_mut().get_mut(key) {
                        q.used = q.used.saturating_sub(tokens);
                        q.dirty = true;
                    }
                }
            },
            LeaseMsg::Grant {
                key,
                spec,
                tokens,
                remaining,
                reset_secs,
                retry_nanos,
            } => {
                let mut leases = self.leases.borrow_mut();
                match leases.get_mut(key) {
                    Some(lease) => {
                        lease.pending = false;
                        lease.tokens += tokens;
                        let paid = lease.debt.min(lease.tokens);
                        lease.debt -= paid;
                        lease.tokens -= paid;
                        lease.remaining = remaining;
                        lease.reset_secs = reset_secs;
                        lease.last_used = now;
                        lease.denied_until = if lease.tokens == 0 && retry_nanos > 0 {
                            now + retry_nanos
                        } else {
                            0
                        };
                    }
                    None if tokens > 0 => {
                        // The lease was dropped meanwhile: nothing to spend them on.
                        drop(leases);
                        self.send(self.owner(key), LeaseMsg::Return { key, spec, tokens });
                    }
                    None => {}
                }
                self.wake(key);
            }
        }
    }

    fn wake(&self, key: u64) {
        let mut waiters = self.waiters.borrow_mut();
        let mut i = 0;
        while i < waiters.len() {
            if waiters[i].0 == key {
                waiters.swap_remove(i).1.wake();
            } else {
                i += 1;
            }
        }
    }

    /// The owner's side of a lease request.
    fn grant(&self, key: u64, spec: Spec, want: u64, text: Option<Box<str>>, now: u64) -> LeaseMsg {
        match spec {
            Spec::Rate(spec) => {
                let mut buckets = self.buckets.borrow_mut();
                let (stored, bucket) =
                    buckets.get_or_insert_with(key, || (spec, Bucket::full(spec, now)), |_, _| {});
                *stored = spec;
                bucket.refill(spec, now);
                let tokens = bucket.take(want);
                LeaseMsg::Grant {
                    key,
                    spec: Spec::Rate(spec),
                    tokens,
                    remaining: bucket.whole(),
                    reset_secs: bucket.secs_to_full(spec),
                    // When the bucket is empty now, say when it has a token again: a core left
                    // with nothing refuses locally until then.
                    retry_nanos: if bucket.whole() == 0 {
                        bucket.nanos_to_one(spec).max(1)
                    } else {
                        0
                    },
                }
            }
            Spec::Quota {
                limit,
                period,
                ends,
            } => {
                let mut quotas = self.quotas.borrow_mut();
                let q = self.owned_quota(&mut quotas, key, period, ends, || {
                    text.unwrap_or_else(|| format!("#{key:016x}").into())
                });
                let tokens = want.min(limit.saturating_sub(q.used));
                q.used += tokens;
                q.dirty |= tokens > 0;
                let unix = crate::auth::unix_now();
                let reset = (ends - unix).max(1) as u64;
                LeaseMsg::Grant {
                    key,
                    spec,
                    tokens,
                    remaining: limit.saturating_sub(q.used),
                    reset_secs: reset,
                    retry_nanos: if q.used >= limit {
                        reset * 1_000_000_000
                    } else {
                        0
                    },
                }
            }
        }
    }

    /// Failed-authentication throttle: whether the client address behind `key` may still try
    /// a credential. On a core that does not own the key this needs a lease (one token of the
    /// address's failure budget, held while it is used) like any other limit; successful
    /// requests take nothing from it. `waited`: the request already waited for leases as often
    /// as it may.
    pub fn throttle(&self, key: u64, spec: BucketSpec, waited: bool) -> Throttle {
        let now = self.now();
        let verdict = if self.owner(key) == self.core {
            let mut buckets = self.buckets.borrow_mut();
            match buckets.get_mut(key) {
                None => Throttle::Pass,
                Some((_, bucket)) => {
                    bucket.refill(spec, now);
                    if bucket.whole() == 0 {
                        Throttle::Refuse(secs_ceil(bucket.nanos_to_one(spec)))
                    } else {
                        Throttle::Pass
                    }
                }
            }
        } else {
            let mut leases = self.leases.borrow_mut();
            let lease = leases.get_or_insert_with(key, Lease::default, |key, mut old| {
                self.give_back(key, &mut old)
            });
            lease.spec = Some(Spec::Rate(spec));
            if lease.tokens > 0 {
                lease.last_used = now;
                Throttle::Pass
            } else if lease.denied_until > now {
                Throttle::Refuse(secs_ceil(lease.denied_until - now))
            } else if waited {
                Throttle::Unavailable
            } else {
                if !lease.pending {
                    lease.pending = true;
                    self.ask(key, Spec::Rate(spec), None);
                }
                Throttle::Wait(key)
            }
        };
        if let Throttle::Refuse(_) = verdict {
            self.counters
                .throttled
                .set(self.counters.throttled.get() + 1);
        }
        verdict
    }

    /// Counts one failed authentication against the client address behind `key`.
    pub fn record_failure(&self, key: u64, spec: BucketSpec) {
        let now = self.now();
        if self.owner(key) == self.core {
            let mut buckets = self.buckets.borrow_mut();
            let (_, bucket) =
                buckets.get_or_insert_with(key, || (spec, Bucket::full(spec, now)), |_, _| {});
            bucket.refill(spec, now);
            bucket.take(1);
            return;
        }
        let mut leases = self.leases.borrow_mut();
        let lease = leases.get_or_insert_with(key, Lease::default, |key, mut old| {
            self.give_back(key, &mut old)
        });
        lease.spec = Some(Spec::Rate(spec));
        lease.last_used = now;
        // No asking ahead: the next request from this address on this core asks when it needs
        // a token (failures are the slow path), so no core sits on budget it may never use.
        if lease.tokens > 0 {
            lease.tokens -= 1;
        } else {
            lease.debt += 1;
            if !lease.pending {
                lease.pending = true;
                self.ask(key, Spec::Rate(spec), None);
            }
        }
    }

    /// Periodic upkeep: gives back idle leases, forgets idle full buckets and ended quota
    /// periods, and sends changed quota counts to the writer.
    pub fn upkeep(&self) {
        let now = self.now();
        let idle = LEASE_IDLE.as_nanos() as u64;
        let forget = LEASE_FORGET.as_nanos() as u64;
        self.leases.borrow_mut().retain(|key, lease| {
            let unused = now.saturating_sub(lease.last_used);
            if unused >= idle && !lease.pending {
                self.give_back(key, lease);
            }
            lease.pending || lease.tokens > 0 || lease.debt > 0 || unused < forget
        });
        self.buckets
            .borrow_mut()
            .retain(|_, (spec, bucket)| !bucket.is_idle_full(*spec, now));
        self.flush_quotas();
    }

    /// Gives every unused lease back to its owner (at shutdown).
    pub fn return_leases(&self) {
        self.leases
            .borrow_mut()
            .for_each(|key, lease| self.give_back(key, lease));
    }

    /// Sends every changed quota count to the writer and drops ended periods.
    pub fn flush_quotas(&self) {
        let unix = crate::auth::unix_now();
        let mut batch = Vec::new();
        let mut quotas = self.quotas.borrow_mut();
        quotas.for_each(|_, q| {
            if q.dirty {
                batch.push(QuotaRecord {
                    key: q.text.clone(),
                    period: q.period,
                    ends: q.ends,
                    used: q.used,
                });
            }
        });
        let sent = batch.is_empty() || self.sink.as_ref().is_none_or(|sink| sink.offer(batch));
        quotas.retain(|_, q| {
            if sent {
                q.dirty = false;
            }
            q.ends > unix || q.dirty
        });
    }

    /// Entries this core tracks: (buckets, quota counts, leases).
    pub fn tracked(&self) -> (usize, usize, usize) {
        (
            self.buckets.borrow().len(),
            self.quotas.borrow().len(),
            self.leases.borrow().len(),
        )
    }
}

/// Whole seconds, rounded up, at least 1.
fn secs_ceil(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000).max(1)
}
