//! Token-bucket arithmetic: a bucket holds up to `capacity` tokens, refills at `per_sec`, and a
//! request takes one.

/// A bucket's parameters; sent along with lease requests so the owner core needs no lookup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    pub per_sec: f64,
    pub capacity: f64,
}

/// Tokens and the time (nanoseconds on the core's clock) they were last counted.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: u64,
}

const NANOS: f64 = 1e9;

impl Bucket {
    /// A bucket that has been idle: full.
    pub fn full(spec: BucketSpec, now: u64) -> Bucket {
        Bucket {
            tokens: spec.capacity,
            at: now,
        }
    }

    /// Adds what flowed in since the last count.
    pub fn refill(&mut self, spec: BucketSpec, now: u64) {
        if now > self.at {
            let elapsed = (now - self.at) as f64 / NANOS;
            self.tokens = (self.tokens + elapsed * spec.per_sec).min(spec.capacity);
            self.at = now;
        } else {
            self.tokens = self.tokens.min(spec.capacity);
        }
    }

    /// Whole tokens available.
    pub fn whole(&self) -> u64 {
        self.tokens.max(0.0) as u64
    }

    /// Takes up to `want` whole tokens; returns how many were taken.
    pub fn take(&mut self, want: u64) -> u64 {
        let taken = want.min(self.whole());
        self.tokens -= taken as f64;
        taken
    }

    /// Puts back unused tokens (never above capacity).
    pub fn give_back(&mut self, spec: BucketSpec, tokens: u64) {
        self.tokens = (self.tokens + tokens as f64).min(spec.capacity);
    }

    /// Nanoseconds until one whole token is available (0 when one is).
    pub fn nanos_to_one(&self, spec: BucketSpec) -> u64 {
        if self.tokens >= 1.0 {
            return 0;
        }
        ((1.0 - self.tokens) / spec.per_sec * NANOS).ceil() as u64
    }

    /// Seconds (rounded up) until the bucket is full again.
    pub fn secs_to_full(&self, spec: BucketSpec) -> u64 {
        ((spec.capacity - self.tokens).max(0.0) / spec.per_sec).ceil() as u64
    }

    /// True when refilling would make it full by `now`: it holds nothing a fresh bucket would
    /// not, so it can be forgotten.
    pub fn is_idle_full(&self, spec: BucketSpec, now: u64) -> bool {
        let mut copy = *self;
        copy.refill(spec, now);
        copy.tokens >= spec.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let spec = BucketSpec {
            per_sec: 100.0,
            capacity: 20.0,
        };
        let mut b = Bucket::full(spec, 0);
        assert_eq!(b.take(25), 20);
        assert_eq!(b.take(1), 0);
        assert_eq!(b.nanos_to_one(spec), SEC / 100);
        b.refill(spec, SEC / 10);
        assert_eq!(b.whole(), 10);
        b.refill(spec, 10 * SEC);
        assert_eq!(b.whole(), 20, "never above capacity");
        assert!(b.is_idle_full(spec, 10 * SEC));
        b.take(5);
        assert_eq!(b.secs_to_full(spec), 1);
        b.give_back(spec, 10);
        assert_eq!(b.whole(), 20);
    }
}
