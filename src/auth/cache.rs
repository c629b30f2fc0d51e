//! The per-core verified-credential cache: a verified token, API key or Basic pair is kept on
//! its core under the SHA-256 of the exact bytes presented, bounded (CLOCK eviction), dropped
//! at its expiry and emptied wholesale when keys, credentials or consumers change (the auth
//! epoch moved). A hit costs one hash and one lookup, no signature or password check.

use super::{Identity, Reason};
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// A SHA-256 digest of what the client presented, with the method as a domain separator.
pub type CacheKey = [u8; 32];

/// The digest of `tag ‖ 0 ‖ bytes`.
pub fn cache_key(tag: &[u8], bytes: &[u8]) -> CacheKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(tag);
    ctx.update(&[0]);
    ctx.update(bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Keys are uniform digests already: their first eight bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(b);
    }
}

/// What a cache entry remembers.
#[derive(Clone)]
pub enum Cached {
    /// Verified: the identity to use.
    Verified(Rc<Identity>),
    /// Refused recently (Basic failures): answered without checking the password again.
    Refused(Reason),
}

struct Slot {
    key: CacheKey,
    value: Cached,
    /// Unix seconds after which the entry is not used.
    expires_at: i64,
    referenced: Cell<bool>,
}

/// Hit and miss counts of one cache.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// One bounded cache (one per API on each core).
pub struct VerifiedCache {
    capacity: usize,
    index: HashMap<CacheKey, usize, BuildHasherDefault<DigestHasher>>,
    slots: Vec<Slot>,
    hand: usize,
    epoch: u64,
    pub stats: CacheStats,
}

impl VerifiedCache {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            capacity,
            index: HashMap::default(),
            slots: Vec::new(),
            hand: 0,
            epoch: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Empties the cache when the auth state it was filled from is not the current one.
    pub fn sync_epoch(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.index.clear();
            self.slots.clear();
            self.hand = 0;
            self.epoch = epoch;
        }
    }

    /// The live entry for `key`, counting a hit or a miss.
    pub fn get(&mut self, key: &CacheKey, now: i64) -> Option<Cached> {
        if self.capacity == 0 {
            return None;
        }
        match self.index.get(key) {
            Some(&slot) if self.slots[slot].expires_at > now => {
                let slot = &self.slots[slot];
                slot.referenced.set(true);
                self.stats.hits += 1;
                Some(slot.value.clone())
            }
            Some(&slot) => {
                // Expired: forget it so it is verified (and refused) afresh.
                self.index.remove(key);
                self.slots[slot].expires_at = i64::MIN;
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Remembers `value` until `expires_at`, evicting with CLOCK when full.
    pub fn insert(&mut self, key: CacheKey, value: Cached, expires_at: i64) {
        if self.capacity == 0 {
            return;
        }
        let slot = Slot {
            key,
            value,
            expires_at,
            referenced: Cell::new(false),
        };
        if let Some(&at) = self.index.get(&key) {
            self.slots[at] = slot;
            return;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push(slot);
            return;
        }
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            let victim = &self.slots[at];
            if victim.referenced.get() && victim.expires_at != i64::MIN {
                victim.referenced.set(false);
                continue;
            }
            if self.index.get(&victim.key) == Some(&at) {
                self.index.remove(&victim.key);
            }
            self.index.insert(key, at);
            self.slots[at] = slot;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(reason: Reason) -> Cached {
        Cached::Refused(reason)
    }

    #[test]
    fn entries_expire_and_the_epoch_empties_the_cache() {
        let mut cache = VerifiedCache::new(4);
        let k = cache_key(b"jwt", b"token");
        cache.insert(k, refused(Reason::InvalidCredential), 100);
        assert!(cache.get(&k, 99).is_some());
        assert!(cache.get(&k, 100).is_none(), "expired at 100");
        cache.insert(k, refused(Reason::InvalidCredential), 200);
        cache.sync_epoch(0);
        assert!(cache.get(&k, 150).is_some(), "same epoch keeps entries");
        cache.sync_epoch(1);
        assert!(cache.get(&k, 150).is_none(), "new epoch empties");
        assert_eq!(cache.stats, CacheStats { hits: 2, misses: 2 });
    }

    #[test]
    fn clock_keeps_referenced_entries_and_stays_bounded() {
        let mut cache = VerifiedCache::new(3);
        let keys: Vec<CacheKey> = (0..5u8).map(|i| cache_key(b"t", &[i])).collect();
        for k in &keys[..3] {
            cache.insert(*k, refused(Reason::Expired), 1000);
        }
        assert!(cache.get(&keys[0], 1).is_some());
        cache.insert(keys[3], refused(Reason::Expired), 1000);
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(&keys[0], 1).is_some(),
            "referenced entry survived"
        );
        assert!(
            cache.get(&keys[1], 1).is_none(),
            "unreferenced entry evicted"
        );
        cache.insert(keys[4], refused(Reason::Expired), 1000);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn disabled_cache_remembers_nothing() {
        let mut cache = VerifiedCache::new(0);
        let k = cache_key(b"jwt", b"x");
        cache.insert(k, refused(Reason::Expired), 100);
        assert!(cache.get(&k, 1).is_none());
        assert!(!cache.enabled());
    }

    #[test]
    fn keys_separate_methods() {
        assert_ne!(cache_key(b"jwt", b"x"), cache_key(b"basic", b"x"));
    }
}
