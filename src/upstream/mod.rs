//! Per-core upstream state: the keep-alive pool of idle connections per target, the balancer
//! cursor, outstanding-request counts and passive health (ejection after consecutive failures,
//! re-admission after `fail_timeout`). Owned by one core; never shared.

use crate::config::Balance;
use crate::snapshot::Upstream;
use monoio::net::TcpStream;
use std::time::Instant;

/// One target's core-local state.
#[derive(Default)]
struct TargetState {
    /// Idle keep-alive connections, newest last, each with the time it became idle.
    idle: Vec<(TcpStream, Instant)>,
    consecutive_fails: u32,
    ejected_until: Option<Instant>,
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

    /// Picks a healthy target other than `exclude`, or `None` when every candidate is ejected.
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
        match upstream.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            Balance::LeastOutstanding => candidates.min_by_key(|&t| state.targets[t].outstanding),
        }
    }

    /// Takes the most recently idled connection to `target` that is younger than the
    /// keep-alive timeout; older ones are closed.
    pub fn take_idle(
        &mut self,
        index: usize,
        target: usize,
        upstream: &Upstream,
        now: Instant,
    ) -> Option<TcpStream> {
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
        stream: TcpStream,
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
}
