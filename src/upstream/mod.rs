//! Per-core upstream state: the keep-alive pool of idle connections per target, the balancer
//! cursor, outstanding-request counts, connect pacing, and passive health (ejection after
//! consecutive failures, re-admission after `fail_timeout`, and — when every target is ejected
//! — one probe request per second, so a returning target serves again within a second), and
//! the verdicts of the active health checks ([`health`]) the control side pushes. Owned by one
//! core; never shared.
//!
//! Connect pacing: at most [`MAX_CONNECTING`] connects to one target are in progress on a core.
//! A request that finds no idle connection and no free connect slot waits for whichever comes
//! first — a connection coming back to the pool, or a slot — bounded by the connect timeout,
//! after which it connects anyway. A burst of new clients then reuses the connections that come
//! back within milliseconds instead of opening one upstream connection each, which would make
//! the upstream accept thousands of connections at once and slow every one of them.

pub mod health;

use crate::config::Balance;
use crate::proxy::io::UpstreamStream;
use crate::snapshot::Upstream;
use std::task::Waker;
use std::time::Instant;

/// Least time between two probe requests to an ejected target from one core.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Connects to one target in progress at once on one core (see the module's notes).
pub const MAX_CONNECTING: u32 = 8;

/// What [`UpstreamPools::acquire`] gives a request.
pub enum Acquire {
    /// A pooled connection.
    Idle(UpstreamStream),
    /// Connect; `slot`: a connect slot was taken (give it back with
    /// [`UpstreamPools::end_connect`]).
    Connect { slot: bool },
    /// Neither is free yet.
    Wait,
}

/// One target's core-local state.
#[derive(Default)]
struct TargetState {
    /// Idle keep-alive connections, newest last, each with the time it became idle.
    idle: Vec<(UpstreamStream, Instant)>,
    consecutive_fails: u32,
    ejected_until: Option<Instant>,
    /// While ejected: when this core may send it the next probe request.
    next_probe: Option<Instant>,
    /// The active health check found it down: no request, not even a probe, goes to it until
    /// a check finds it up again.
    checked_down: bool,
    outstanding: u32,
    /// Connects in progress.
    connecting: u32,
    /// Requests waiting for an idle connection or a connect slot, first come first served,
    /// by ticket.
    waiters: std::collections::VecDeque<(u64, Waker)>,
    /// The next waiter's ticket.
    next_ticket: u64,
}

impl TargetState {
    /// Wakes the longest-waiting request: a connection came back or a connect slot freed.
    fn wake_one(&mut self) {
        if let Some((_, waker)) = self.waiters.pop_front() {
            waker.wake();
        }
    }

    /// Wakes every waiting request (the state is being replaced: they look again).
    fn wake_all(&mut self) {
        for (_, waker) in self.waiters.drain(..) {
            waker.wake();
        }
    }

    /// Forgets past failures: no count, no ejection, no probe pending.
    fn clear_failures(&mut self) {
        self.consecutive_fails = 0;
        self.ejected_until = None;
        self.next_probe = None;
    }

    fn healthy(&self, now: Instant) -> bool {
        !self.checked_down && self.ejected_until.is_none_or(|until| now >= until)
    }
}

/// One upstream's core-local state.
#[derive(Default)]
struct UpstreamState {
    targets: Vec<TargetState>,
    cursor: usize,
}

/// All upstreams' core-local state, indexed like [`crate::snapshot::Snapshot::upstreams`].
pub struct UpstreamPools {
    upstreams: Vec<UpstreamState>,
}

impl UpstreamPools {
    pub fn new(upstreams: &[Upstream]) -> UpstreamPools {
        UpstreamPools {
            upstreams: upstreams
                .iter()
                .map(|u| UpstreamState {
                    targets: u.targets.iter().map(|_| TargetState::default()).collect(),
                    cursor: 0,
                })
                .collect(),
        }
    }

    /// Pools for a new snapshot's upstreams that keep the idle connections and health of every
    /// upstream whose name, targets and transport did not change (a reload then costs no
    /// reconnects); the rest start empty.
    pub fn carry_over(
        mut old: UpstreamPools,
        old_upstreams: &[Upstream],
        new_upstreams: &[Upstream],
    ) -> UpstreamPools {
        let mut pools = UpstreamPools::new(new_upstreams);
        for (state, new) in pools.upstreams.iter_mut().zip(new_upstreams) {
            let same = old_upstreams.iter().position(|o| {
                o.name == new.name
                    && o.targets == new.targets
                    && o.tls.is_none()
                    && new.tls.is_none()
            });
            if let Some(index) = same {
                *state = std::mem::take(&mut old.upstreams[index]);
                for target in &mut state.targets {
                    target.idle.truncate(new.keepalive);
                    // Without health checks nothing would ever bring a checked-down target back.
                    target.checked_down &= new.health_check.is_some();
                    // Connects in flight give their slots back to the generation they started
                    // in, and waiters wait on theirs: start the count afresh, let them look.
                    target.connecting = 0;
                    target.wake_all();
                }
            }
        }
        for state in &mut old.upstreams {
            for target in &mut state.targets {
                target.wake_all();
            }
        }
        pools
    }

    /// Picks a healthy target other than `exclude`. When every candidate is ejected, one of
    /// them gets a probe request (half-open), at most one per target per second on this core;
    /// `None` when none may be probed yet.
    pub fn pick(
        &mut self,
        index: usize,
        upstream: &Upstream,
        exclude: Option<usize>,
        now: Instant,
    ) -> Option<usize> {
        let state = &mut self.upstreams[index];
        let count = state.targets.len();
        let start = state.cursor;
        state.cursor = (state.cursor + 1) % count.max(1);
        let candidates = (0..count)
            .map(|offset| (start + offset) % count)
            .filter(|&t| Some(t) != exclude && state.targets[t].healthy(now));
        let healthy = match upstream.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            Balance::LeastOutstanding => candidates.min_by_key(|&t| state.targets[t].outstanding),
        };
        healthy.or_else(|| {
            let probe = (0..count)
                .map(|offset| (start + offset) % count)
                .filter(|&t| Some(t) != exclude && !state.targets[t].checked_down)
                .find(|&t| state.targets[t].next_probe.is_none_or(|at| now >= at))?;
            state.targets[probe].next_probe = Some(now + PROBE_INTERVAL);
            Some(probe)
        })
    }

    /// Takes the most recently idled connection to `target` that is younger than the
    /// keep-alive timeout; older ones are closed.
    pub fn take_idle(
        &mut self,
        index: usize,
        target: usize,
        upstream: &Upstream,
        now: Instant,
    ) -> Option<UpstreamStream> {
        let idle = &mut self.upstreams[index].targets[target].idle;
        while let Some((stream, since)) = idle.pop() {
            if now.duration_since(since) < upstream.keepalive_timeout {
                return Some(stream);
            }
        }
        None
    }

    /// Returns a reusable connection to the pool (closes it when the pool is full).
    pub fn put_idle(
        &mut self,
        index: usize,
        target: usize,
        upstream: &Upstream,
        stream: UpstreamStream,
        now: Instant,
    ) {
        let state = &mut self.upstreams[index].targets[target];
        if state.idle.len() < upstream.keepalive || !state.waiters.is_empty() {
            state.idle.push((stream, now));
            state.wake_one();
        }
    }

    /// What a request gets for `target`: an idle connection (unless `force_fresh`), else a
    /// connect slot, else — until `pace_until` — nothing yet ([`Acquire::Wait`]: register with
    /// [`UpstreamPools::wait_for`] and ask again when woken). Past `pace_until`, and always
    /// when the upstream keeps no idle connections, it may connect without a slot.
    pub fn acquire(
        &mut self,
        index: usize,
        target: usize,
        upstream: &Upstream,
        force_fresh: bool,
        pace_until: Instant,
    ) -> Acquire {
        let now = Instant::now();
        if !force_fresh {
            if let Some(stream) = self.take_idle(index, target, upstream, now) {
                return Acquire::Idle(stream);
            }
        }
        if upstream.keepalive == 0 || force_fresh {
            // Nothing comes back to wait for (or a pooled connection will not do): connect.
            return Acquire::Connect { slot: false };
        }
        if self.start_connect(index, target) {
            return Acquire::Connect { slot: true };
        }
        if now >= pace_until {
            return Acquire::Connect { slot: false };
        }
        Acquire::Wait
    }

    /// Takes a connect slot for `target` when one is free.
    pub fn start_connect(&mut self, index: usize, target: usize) -> bool {
        let state = &mut self.upstreams[index].targets[target];
        if state.connecting >= MAX_CONNECTING {
            return false;
        }
        state.connecting += 1;
        true
    }

    /// Gives a connect slot back (the connect ended either way).
    pub fn end_connect(&mut self, index: usize, target: usize) {
        let state = &mut self.upstreams[index].targets[target];
        state.connecting = state.connecting.saturating_sub(1);
        state.wake_one();
    }

    /// Queues a request waiting for `target` (see [`UpstreamPools::acquire`]); returns its
    /// ticket.
    pub fn wait_for(&mut self, index: usize, target: usize, waker: &Waker) -> u64 {
        let state = &mut self.upstreams[index].targets[target];
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiters.push_back((ticket, waker.clone()));
        ticket
    }

    /// Whether `ticket` still waits (false: it was woken).
    pub fn is_waiting(&self, index: usize, target: usize, ticket: u64) -> bool {
        self.upstreams[index].targets[target]
            .waiters
            .iter()
            .any(|(t, _)| *t == ticket)
    }

    /// Takes `ticket` out of the queue. When it had been woken already (and its waiter leaves
    /// without using what came free), the wake-up passes to the next waiter.
    pub fn leave(&mut self, index: usize, target: usize, ticket: u64, pass_on: bool) {
        let state = &mut self.upstreams[index].targets[target];
        match state.waiters.iter().position(|(t, _)| *t == ticket) {
            Some(at) => {
                state.waiters.remove(at);
            }
            None if pass_on => state.wake_one(),
            None => {}
        }
    }

    pub fn begin(&mut self, index: usize, target: usize) {
        self.upstreams[index].targets[target].outstanding += 1;
    }

    pub fn end(&mut self, index: usize, target: usize) {
        let t = &mut self.upstreams[index].targets[target];
        t.outstanding = t.outstanding.saturating_sub(1);
    }

    /// Applies an active health check's verdict on `target` of the upstream named `name`
    /// (names and addresses, not indices: the verdict may come from a check started under an
    /// earlier snapshot). Down: no request goes to it and its idle connections are closed. Up:
    /// it serves again at once, a passive ejection included. False when no such target exists.
    pub fn apply_health(
        &mut self,
        upstreams: &[Upstream],
        name: &str,
        target: std::net::SocketAddr,
        up: bool,
    ) -> bool {
        let Some(index) = upstreams.iter().position(|u| u.name == name) else {
            return false;
        };
        let mut known = false;
        // The same address may be listed twice: every entry of it gets the verdict.
        let states = self.upstreams[index].targets.iter_mut();
        for (state, _) in states
            .zip(&upstreams[index].targets)
            .filter(|(_, &t)| t == target)
        {
            known = true;
            state.checked_down = !up;
            if up {
                state.clear_failures();
                state.wake_all();
            } else {
                state.idle.clear();
            }
        }
        known
    }

    pub fn record_success(&mut self, index: usize, target: usize) {
        self.upstreams[index].targets[target].clear_failures();
    }

    /// Counts a failure; at `max_fails` in a row the target is ejected for `fail_timeout` and
    /// its idle connections are closed. Returns true when this failure ejected it.
    pub fn record_failure(
        &mut self,
        index: usize,
        target: usize,
        upstream: &Upstream,
        now: Instant,
    ) -> bool {
        let t = &mut self.upstreams[index].targets[target];
        t.consecutive_fails += 1;
        if t.consecutive_fails >= upstream.max_fails {
            t.consecutive_fails = 0;
            t.ejected_until = Some(now + upstream.fail_timeout);
            t.next_probe = Some(now + PROBE_INTERVAL);
            t.idle.clear();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstream(balance: Balance, targets: usize) -> Upstream {
        Upstream {
            name: "u".into(),
            targets: (0..targets)
                .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
                .collect(),
            balance,
            keepalive: 4,
            keepalive_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            max_fails: 2,
            fail_timeout: Duration::from_secs(10),
            tls: None,
            health_check: None,
        }
    }

    #[test]
    fn a_checked_down_target_gets_nothing_until_checked_up() {
        let u = upstream(Balance::RoundRobin, 2);
        let ups = std::slice::from_ref(&u);
        let mut pools = UpstreamPools::new(ups);
        let now = Instant::now();
        assert!(pools.apply_health(ups, "u", u.targets[1], false));
        assert!((0..4).all(|_| pools.pick(0, &u, None, now) == Some(0)));
        // Both down: no probe either, whatever the time.
        assert!(pools.apply_health(ups, "u", u.targets[0], false));
        assert_eq!(pools.pick(0, &u, None, now + Duration::from_secs(60)), None);
        // Up again: serves at once, and clears a passive ejection.
        assert!(pools.record_failure(0, 1, &u, now) || pools.record_failure(0, 1, &u, now));
        assert!(pools.apply_health(ups, "u", u.targets[1], true));
        assert_eq!(pools.pick(0, &u, None, now), Some(1));
        // Unknown names and addresses are ignored.
        assert!(!pools.apply_health(ups, "other", u.targets[0], true));
        assert!(!pools.apply_health(ups, "u", "127.0.0.1:1".parse().unwrap(), true));
    }

    #[test]
    fn a_verdict_reaches_every_entry_of_an_address_listed_twice() {
        let mut u = upstream(Balance::RoundRobin, 2);
        u.targets[1] = u.targets[0];
        let ups = std::slice::from_ref(&u);
        let mut pools = UpstreamPools::new(ups);
        assert!(pools.apply_health(ups, "u", u.targets[0], false));
        assert_eq!(pools.pick(0, &u, None, Instant::now()), None);
    }

    #[test]
    fn a_reload_without_health_checks_brings_checked_down_targets_back() {
        let mut checked = upstream(Balance::RoundRobin, 1);
        checked.health_check = Some(health::HealthCheck::default());
        let mut pools = UpstreamPools::new(std::slice::from_ref(&checked));
        pools.apply_health(
            std::slice::from_ref(&checked),
            "u",
            checked.targets[0],
            false,
        );
        let now = Instant::now();
        let kept = UpstreamPools::carry_over(
            pools,
            std::slice::from_ref(&checked),
            std::slice::from_ref(&checked),
        );
        let mut kept_pools = kept;
        assert_eq!(kept_pools.pick(0, &checked, None, now), None);
        let unchecked = upstream(Balance::RoundRobin, 1);
        let mut freed = UpstreamPools::carry_over(
            kept_pools,
            std::slice::from_ref(&checked),
            std::slice::from_ref(&unchecked),
        );
        assert_eq!(freed.pick(0, &unchecked, None, now), Some(0));
    }

    #[test]
    fn round_robin_cycles_and_skips_excluded() {
        let u = upstream(Balance::RoundRobin, 3);
        let mut pools = UpstreamPools::new(std::slice::from_ref(&u));
        let now = Instant::now();
        let picks: Vec<_> = (0..6)
            .map(|_| pools.pick(0, &u, None, now).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        assert_ne!(pools.pick(0, &u, Some(0), now), Some(0));
    }

    #[test]
    fn least_outstanding_prefers_idle_target() {
        let u = upstream(Balance::LeastOutstanding, 3);
        let mut pools = UpstreamPools::new(std::slice::from_ref(&u));
        let now = Instant::now();
        pools.begin(0, 0);
        pools.begin(0, 1);
        assert_eq!(pools.pick(0, &u, None, now), Some(2));
        pools.end(0, 0);
        assert_eq!(pools.pick(0, &u, Some(2), now), Some(0));
    }

    #[test]
    fn ejection_and_readmission() {
        let u = upstream(Balance::RoundRobin, 1);
        let mut pools = UpstreamPools::new(std::slice::from_ref(&u));
        let now = Instant::now();
        assert!(!pools.record_failure(0, 0, &u, now));
        assert!(pools.record_failure(0, 0, &u, now));
        assert_eq!(pools.pick(0, &u, None, now), None);
        assert_eq!(
            pools.pick(0, &u, None, now + Duration::from_secs(11)),
            Some(0)
        );
        pools.record_success(0, 0);
        assert_eq!(pools.pick(0, &u, None, now), Some(0));
    }

    #[test]
    fn an_ejected_upstream_gets_one_probe_per_second() {
        let u = upstream(Balance::RoundRobin, 2);
        let mut pools = UpstreamPools::new(std::slice::from_ref(&u));
        let now = Instant::now();
        for target in 0..2 {
            pools.record_failure(0, target, &u, now);
            assert!(pools.record_failure(0, target, &u, now));
        }
        let ms = Duration::from_millis;
        assert_eq!(pools.pick(0, &u, None, now + ms(500)), None);
        // A second after the ejection one target may be probed, then the other, then neither.
        let first = pools.pick(0, &u, None, now + ms(1000)).expect("a probe");
        let second = pools.pick(0, &u, None, now + ms(1001)).expect("a probe");
        assert_ne!(first, second);
        assert_eq!(pools.pick(0, &u, None, now + ms(1500)), None);
        // The probe failed: still ejected, next probe a second later.
        pools.record_failure(0, first, &u, now + ms(1010));
        assert_eq!(pools.pick(0, &u, Some(second), now + ms(1900)), None);
        assert_eq!(pools.pick(0, &u, Some(second), now + ms(2000)), Some(first));
        // A probe succeeded: the target is back for every request.
        pools.record_success(0, first);
        for _ in 0..3 {
            assert_eq!(pools.pick(0, &u, Some(second), now + ms(2001)), Some(first));
        }
    }

    /// Counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn connects_are_paced_and_waiters_get_returning_connections() {
        use std::sync::atomic::Ordering;
        let upstream = upstream(Balance::RoundRobin, 1);
        let mut pools = UpstreamPools::new(std::slice::from_ref(&upstream));
        for _ in 0..MAX_CONNECTING {
            assert!(pools.start_connect(0, 0));
        }
        assert!(!pools.start_connect(0, 0), "no slot beyond the cap");
        let counter = std::sync::Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        pools.wait_for(0, 0, &waker);
        pools.wait_for(0, 0, &waker);
        pools.end_connect(0, 0);
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            1,
            "a freed slot wakes one waiter"
        );
        assert!(pools.start_connect(0, 0));
        pools.end_connect(0, 0);
        assert_eq!(counter.0.load(Ordering::Relaxed), 2);
        pools.end_connect(0, 0);
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            2,
            "no waiter left to wake"
        );
    }

    #[test]
    fn carry_over_keeps_unchanged_upstreams_only() {
        let a = upstream(Balance::RoundRobin, 1);
        let mut b = upstream(Balance::RoundRobin, 2);
        b.name = "b".into();
        let mut pools = UpstreamPools::new(&[a.clone(), b.clone()]);
        let now = Instant::now();
        pools.record_failure(0, 0, &a, now);
        pools.record_failure(0, 0, &a, now);
        // b's targets change in the new snapshot; a stays as it was.
        let mut b2 = b.clone();
        b2.targets.pop();
        let carried = UpstreamPools::carry_over(pools, &[a.clone(), b], &[b2.clone(), a.clone()]);
        let mut carried = carried;
        assert_eq!(
            carried.pick(1, &a, None, now),
            None,
            "a's ejection carried over"
        );
        assert_eq!(carried.pick(0, &b2, None, now), Some(0));
    }

    #[test]
    fn a_reload_frees_connect_slots_and_wakes_waiters() {
        use std::sync::atomic::Ordering;
        let a = upstream(Balance::RoundRobin, 1);
        let mut pools = UpstreamPools::new(std::slice::from_ref(&a));
        while pools.start_connect(0, 0) {}
        let counter = std::sync::Arc::new(CountingWaker(Default::default()));
        pools.wait_for(0, 0, &Waker::from(counter.clone()));
        let mut carried =
            UpstreamPools::carry_over(pools, std::slice::from_ref(&a), std::slice::from_ref(&a));
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            1,
            "the waiter looks again"
        );
        // The connects in flight give their slots back to the old pools: the new ones start
        // with every slot free.
        for _ in 0..MAX_CONNECTING {
            assert!(carried.start_connect(0, 0));
        }
    }
}
