//! Connection caps: how many client connections a listener, and one client address on it, may
//! hold open across all cores. Counted when a connection is accepted (or, behind a PROXY
//! protocol header, once its real address is known) and released when it closes — per
//! connection, never per request.
//!
//! Per-address counts live in a fixed table of counters indexed by a keyed hash of the address
//! (65 536 slots, 256 KiB): memory does not grow with the number of clients. Two addresses that
//! share a slot share its count, which can only make a cap bite early for them, never late.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const ADDRESS_SLOTS: usize = 1 << 16;

/// The open-connection counts of every listener (shared by all cores).
pub struct ConnectionCounts {
    listeners: Box<[AtomicU32]>,
    addresses: Box<[AtomicU32]>,
    hasher: std::hash::RandomState,
}

/// Caps of one listener (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Listener,
    Address,
}

/// One admitted connection; releases its counts when dropped.
pub struct Admitted {
    counts: Arc<ConnectionCounts>,
    listener: usize,
    slot: Option<usize>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.counts.listeners[self.listener].fetch_sub(1, Ordering::Relaxed);
        if let Some(slot) = self.slot {
            self.counts.addresses[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ConnectionCounts {
    pub fn new(listeners: usize) -> Arc<ConnectionCounts> {
        Arc::new(ConnectionCounts {
            listeners: (0..listeners).map(|_| AtomicU32::new(0)).collect(),
            addresses: (0..ADDRESS_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
        })
    }

    fn slot(&self, ip: IpAddr) -> usize {
        let mut hasher = self.hasher.build_hasher();
        ip.to_canonical().hash(&mut hasher);
        (std::hash::Hasher::finish(&hasher) as usize) % ADDRESS_SLOTS
    }

    /// Counts a new connection from `ip` on `listener`, or refuses it when a cap is reached.
    pub fn admit(
        self: &Arc<Self>,
        listener: usize,
        ip: IpAddr,
        caps: ConnectionCaps,
    ) -> Result<Admitted, OverCap> {
        let Some(total) = self.listeners.get(listener) else {
            return Err(OverCap::Listener);
        };
        let before = total.fetch_add(1, Ordering::Relaxed);
        if caps.max_connections > 0 && before >= caps.max_connections {
            total.fetch_sub(1, Ordering::Relaxed);
            return Err(OverCap::Listener);
        }
        let mut admitted = Admitted {
            counts: self.clone(),
            listener,
            slot: None,
        };
        if caps.max_connections_per_ip > 0 {
            let slot = self.slot(ip);
            let before = self.addresses[slot].fetch_add(1, Ordering::Relaxed);
            admitted.slot = Some(slot);
            if before >= caps.max_connections_per_ip {
                // Dropping releases both counts.
                return Err(OverCap::Address);
            }
        }
        Ok(admitted)
    }

    /// Open connections on `listener`.
    pub fn open(&self, listener: usize) -> u32 {
        self.listeners
            .get(listener)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_release() {
        let counts = ConnectionCounts::new(1);
        let caps = ConnectionCaps {
            max_connections: 3,
            max_connections_per_ip: 2,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = counts.admit(0, a, caps).unwrap();
        let _a2 = counts.admit(0, a, caps).unwrap();
        assert_eq!(counts.admit(0, a, caps).err(), Some(OverCap::Address));
        let _b1 = counts.admit(0, b, caps).unwrap();
        assert_eq!(counts.admit(0, b, caps).err(), Some(OverCap::Listener));
        assert_eq!(counts.open(0), 3);
        drop(a1);
        assert_eq!(counts.open(0), 2);
        assert!(counts.admit(0, a, caps).is_ok());
        assert_eq!(counts.open(0), 2, "the admitted guard was dropped at once");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(counts.slot(mapped), counts.slot(a));
        let none = ConnectionCaps::default();
        let many: Vec<_> = (0..100)
            .map(|_| counts.admit(0, a, none).unwrap())
            .collect();
        assert_eq!(counts.open(0), 102);
        drop(many);
    }
}
