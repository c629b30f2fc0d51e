//! Request ids: the client's own `X-Request-Id` when well-formed, otherwise a 32-hex-digit id
//! made of a random per-core prefix and a core-local counter (unique without coordination).

use std::cell::Cell;

/// Core-local id generator.
pub struct RequestIds {
    prefix: u64,
    counter: Cell<u64>,
}

impl RequestIds {
    /// `seed` should be random; `core` keeps cores apart even with equal seeds.
    pub fn new(seed: u64, core: usize) -> RequestIds {
        RequestIds {
            prefix: seed ^ ((core as u64) << 56),
            counter: Cell::new(0),
        }
    }

    /// Writes the next id into `out`.
    pub fn next(&self, out: &mut RequestId) {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, value) in [self.prefix, n].into_iter().enumerate() {
            for j in 0..16 {
                out.bytes[i * 16 + j] = HEX[((value >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        out.len = 32;
    }
}

/// A request id held inline (no allocation).
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; 128],
    len: usize,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            bytes: [0; 128],
            len: 0,
        }
    }
}

impl RequestId {
    /// Copies a client-supplied id (already validated, at most 128 bytes).
    pub fn set(&mut self, id: &[u8]) {
        let len = id.len().min(self.bytes.len());
        self.bytes[..len].copy_from_slice(&id[..len]);
        self.len = len;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A random seed from the kernel (falls back to the clock if `getrandom` fails).
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: `seed` is a valid, writable 8-byte buffer.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(seed)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex() {
        let ids = RequestIds::new(0xabcdef, 1);
        let mut a = RequestId::default();
        let mut b = RequestId::default();
        ids.next(&mut a);
        ids.next(&mut b);
        assert_eq!(a.as_bytes().len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a.as_bytes(), b.as_bytes());
    }
}
