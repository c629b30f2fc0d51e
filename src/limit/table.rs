//! A bounded map from 64-bit key hashes to per-key limit state, for one core. When full, a new
//! key evicts one that has not been used since the clock hand last passed it (CLOCK, an
//! approximation of least recently used), so a flood of distinct keys (client addresses, header
//! values) costs a fixed amount of memory.

use rustc_hash::FxHashMap;

struct Slot<V> {
    key: u64,
    value: V,
    referenced: bool,
}

/// At most `capacity` entries; memory is `capacity × (size_of::<V>() + ~32 bytes)`.
pub struct BoundedMap<V> {
    index: FxHashMap<u64, u32>,
    slots: Vec<Slot<V>>,
    hand: usize,
    capacity: usize,
    /// Entries evicted to make room.
    pub evictions: u64,
}

impl<V> BoundedMap<V> {
    pub fn new(capacity: usize) -> BoundedMap<V> {
        BoundedMap {
            index: FxHashMap::default(),
            slots: Vec::new(),
            hand: 0,
            capacity: capacity.max(1),
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let slot = *self.index.get(&key)? as usize;
        let slot = &mut self.slots[slot];
        slot.referenced = true;
        Some(&mut slot.value)
    }

    /// The entry for `key`, made by `make` when absent (evicting another when full); the
    /// evicted key and value are passed to `evicted`.
    pub fn get_or_insert_with(
        &mut self,
        key: u64,
        make: impl FnOnce() -> V,
        evicted: impl FnOnce(u64, V),
    ) -> &mut V {
        if let Some(&slot) = self.index.get(&key) {
            let slot = &mut self.slots[slot as usize];
            slot.referenced = true;
            return &mut slot.value;
        }
        let slot = Slot {
            key,
            value: make(),
            referenced: true,
        };
        let at = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            let victim = self.next_victim();
            let old = std::mem::replace(&mut self.slots[victim], slot);
            self.index.remove(&old.key);
            self.evictions += 1;
            evicted(old.key, old.value);
            victim
        };
        self.index.insert(key, at as u32);
        &mut self.slots[at].value
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &mut V) -> bool) {
        let mut i = 0;
        while i < self.slots.len() {
            let slot = &mut self.slots[i];
            if keep(slot.key, &mut slot.value) {
                i += 1;
                continue;
            }
            let removed = self.slots.swap_remove(i);
            self.index.remove(&removed.key);
            if let Some(moved) = self.slots.get(i) {
                self.index.insert(moved.key, i as u32);
            }
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    /// Visits every entry.
    pub fn for_each(&mut self, mut visit: impl FnMut(u64, &mut V)) {
        for slot in &mut self.slots {
            visit(slot.key, &mut slot.value);
        }
    }

    fn next_victim(&mut self) -> usize {
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[at];
            if slot.referenced {
                slot.referenced = false;
            } else {
                return at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_evicts_the_unused() {
        let mut map = BoundedMap::new(3);
        for k in 0..3 {
            *map.get_or_insert_with(k, || k * 10, |_, _| panic!("room left")) += 1;
        }
        // Every entry was used once; the hand clears them and evicts the first.
        let mut evicted = None;
        map.get_or_insert_with(3, || 30, |k, v| evicted = Some((k, v)));
        assert_eq!(evicted, Some((0, 1)));
        // Key 1 is used again: the next eviction skips it.
        map.get_mut(1).unwrap();
        let mut evicted = None;
        map.get_or_insert_with(4, || 40, |k, v| evicted = Some((k, v)));
        assert_eq!(evicted, Some((2, 21)));
        assert_eq!(map.len(), 3);
        assert_eq!(map.evictions, 2);
        assert!(map.get_mut(0).is_none());
        assert_eq!(*map.get_mut(1).unwrap(), 11);
        for k in 100..10_000 {
            map.get_or_insert_with(k, || k, |_, _| {});
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.index.len(), 3);
    }

    #[test]
    fn retain_keeps_the_index_consistent() {
        let mut map = BoundedMap::new(10);
        for k in 0..10u64 {
            map.get_or_insert_with(k, || k, |_, _| {});
        }
        map.retain(|k, _| k % 3 == 0);
        assert_eq!(map.len(), 4);
        for k in 0..10u64 {
            assert_eq!(map.get_mut(k).copied(), (k % 3 == 0).then_some(k));
        }
    }
}
