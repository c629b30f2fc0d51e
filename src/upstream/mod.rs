//! Per-core upstream state: the keep-alive pool of idle connections per target, the balancer
//! cursor, outstanding-request counts and passive health (ejection after consecutive failures,
//! re-admission after `fail_timeout`, and — when every target is ejected — one probe request
//! per second, so a returning target serves again within a second). Owned by one core; never
//! shared.

use crate::config::Balance;
use crate::proxy::io::UpstreamStream;
use crate::snapshot::Upstream;
use std::time::Instant;

/// Least time between two probe requests to an ejected target from one core.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One target's core-local state.
#[derive(Default)]
struct TargetState {
    /// Idle keep-alive connections, newest last, each with the time it became idle.
    idle: Vec<(UpstreamStream, Instant)>,
    consecutive_fails: u32,
    ejected_until: Option<Instant>,
    /// While ejected: when this core may send it the next probe request.
    next_probe: Option<Instant>,
    outstanding: u32,
}

impl TargetState {
    fn healthy(&self, now: Instant) -> bool {
        self.ejected_until.is_none_or(|until| now >= until)
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
                }
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
                .filter(|&t| Some(t) != exclude)
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
        let idle = &mut self.upstreams[index].targets[target].idle;
        if idle.len() < upstream.keepalive {
            idle.push((stream, now));
        }
    }

    pub fn begin(&mut self, index: usize, target: usize) {
        self.upstreams[index].targets[target].outstanding += 1;
    }

    pub fn end(&mut self, index: usize, target: usize) {
        let t = &mut self.upstreams[index].targets[target];
        t.outstanding = t.outstanding.saturating_sub(1);
    }

    pub fn record_success(&mut self, index: usize, target: usize) {
        let t = &mut self.upstreams[index].targets[target];
        t.consecutive_fails = 0;
        t.ejected_until = None;
        t.next_probe = None;
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
        }
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
}
