//! W3C trace context (`traceparent`, `tracestate`) at the edge: a valid incoming `traceparent`
//! is continued (same trace id and flags, the gateway's own span id as the upstream's parent),
//! an absent or invalid one is replaced by a new trace (and an orphaned `tracestate` dropped),
//! unless `[logging] trace_context = "forward"` passes the client's fields through untouched.
//! Ids come from a per-core generator: no allocation, no shared state.

use std::cell::Cell;

/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const LEN: usize = 55;

/// What the gateway does with trace context (`[logging] trace_context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceMode {
    /// Continue a valid trace, start one otherwise.
    #[default]
    Start,
    /// Pass the client's fields through unchanged; start none.
    Forward,
}

/// The parts of a valid incoming `traceparent` the gateway keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'v> {
    pub trace_id: &'v [u8],
    pub flags: &'v [u8],
}

fn lower_hex(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a `traceparent` value (W3C Trace Context level 1): version `00` exactly 55
/// characters; a later version at least that, read as version 00; `ff` and all-zero ids are
/// invalid.
pub fn parse(value: &[u8]) -> Option<Incoming<'_>> {
    if value.len() < LEN {
        return None;
    }
    let version = &value[..2];
    if !lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && value.len() != LEN {
        return None;
    }
    if value.len() > LEN && value[LEN] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    let ok = lower_hex(trace_id) && lower_hex(parent_id) && lower_hex(flags);
    let zero = |id: &[u8]| id.iter().all(|&b| b == b'0');
    (ok && !zero(trace_id) && !zero(parent_id)).then_some(Incoming { trace_id, flags })
}

/// A core's id generator (xorshift64*, seeded at random per core).
pub struct TraceIds {
    state: Cell<u64>,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TraceIds {
    pub fn new(seed: u64) -> TraceIds {
        TraceIds {
            state: Cell::new(seed | 1),
        }
    }

    fn next(&self) -> u64 {
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn hex(&self, out: &mut [u8]) {
        for chunk in out.chunks_mut(16) {
            let value = self.next();
            for (j, byte) in chunk.iter_mut().enumerate() {
                *byte = HEX[((value >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
    }

    /// The `traceparent` for the upstream: `incoming`'s trace continued with a new span id, or
    /// a new sampled trace.
    pub fn upstream(&self, incoming: Option<Incoming<'_>>) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        out[..2].copy_from_slice(b"00");
        match incoming {
            Some(incoming) => {
                out[3..35].copy_from_slice(incoming.trace_id);
                out[53..55].copy_from_slice(incoming.flags);
            }
            None => {
                self.hex(&mut out[3..35]);
                out[53..55].copy_from_slice(b"01");
            }
        }
        self.hex(&mut out[36..52]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparents_are_continued_with_a_new_span() {
        let incoming = parse(VALID).unwrap();
        assert_eq!(incoming.trace_id, b"4bf92f3577b34da6a3ce929d0e0e4736");
        let ids = TraceIds::new(42);
        let out = ids.upstream(Some(incoming));
        assert_eq!(&out[..36], &VALID[..36]);
        assert_eq!(&out[52..], &VALID[52..]);
        assert_ne!(&out[36..52], &VALID[36..52]);
        assert_eq!(parse(&out).map(|i| i.trace_id), Some(incoming.trace_id));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A later version may carry more after the known fields.
        assert!(parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn new_traces_are_valid_sampled_and_distinct() {
        let ids = TraceIds::new(7);
        let a = ids.upstream(None);
        let b = ids.upstream(None);
        assert!(parse(&a).is_some() && parse(&b).is_some());
        assert_eq!(&a[53..], b"01");
        assert_ne!(&a[3..35], &b[3..35]);
    }
}
