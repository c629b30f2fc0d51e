//! IP allow and deny lists: the address ranges an operator lists for a route or consumer
//! (`203.0.113.0/24`, `2001:db8::/32`, single addresses) are compiled once into sorted,
//! merged intervals, so each request's client address is checked with a binary search and
//! no allocation.
//!
//! IPv4 and IPv4-mapped IPv6 addresses are one and the same client: `::ffff:203.0.113.7`
//! is looked up as `203.0.113.7`, and a mapped range in a list (`::ffff:10.0.0.0/104`) is
//! stored as the IPv4 range it denotes (`10.0.0.0/8`).

use std::net::IpAddr;

/// A set of IPv4 and IPv6 ranges compiled from CIDR text, answering membership in O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Sorted, merged (neither overlapping nor adjacent), inclusive IPv4 intervals.
    v4: Box<[(u32, u32)]>,
    /// Sorted, merged (neither overlapping nor adjacent), inclusive IPv6 intervals.
    v6: Box<[(u128, u128)]>,
}

/// Why a range of an allow or deny list was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpSetError {
    /// The text is neither an IP address nor `address/prefix-length` (carries the trimmed text).
    #[error("`{0}` is not an IP address or CIDR range")]
    Invalid(String),
    /// The prefix length is larger than the address family allows (carries the trimmed text
    /// and the largest allowed length: 32 for IPv4, 128 for IPv6).
    #[error("`{0}`: prefix length must be 0-{1}")]
    PrefixLength(String, u32),
}

impl IpSet {
    /// Compiles ranges such as `203.0.113.0/24`, `2001:db8::/32` or one address (`192.0.2.1`, `::1`).
    /// Host bits below the prefix are ignored (`10.0.0.1/8` is `10.0.0.0/8`). Overlapping and adjacent ranges are merged.
    ///
    /// Whitespace around each entry is trimmed; nothing else is tolerated (no spaces around
    /// the `/`, no sign or empty prefix length, no brackets or zone ids). An IPv4-mapped IPv6
    /// range (`::ffff:10.0.0.0/104`) is stored as the IPv4 range it denotes, its prefix
    /// length minus 96 (`10.0.0.0/8`). A range written with a mapped address but a prefix
    /// shorter than 96 (`::ffff:0.0.0.0/80`) also spans addresses that are not mapped: it is
    /// kept as an IPv6 range as written and, because it holds every mapped address, it
    /// additionally covers all of IPv4. A range written with an address that is not mapped
    /// (`::/0`, `::/64`) is an IPv6 range only: since mapped addresses are always looked up
    /// as IPv4, it never matches an IPv4 client, even if it numerically spans `::ffff:0:0/96`.
    ///
    /// # Errors
    ///
    /// The first entry that is not an address or CIDR range fails the whole list:
    /// [`IpSetError::PrefixLength`] when the prefix length is digits but too large for the
    /// family, [`IpSetError::Invalid`] for anything else (including an empty entry).
    pub fn parse<S: AsRef<str>>(ranges: &[S]) -> Result<IpSet, IpSetError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for range in ranges {
            let text = range.as_ref().trim();
            let (addr, len) = match text.split_once('/') {
                Some((addr, len)) => (addr, Some(len)),
                None => (text, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| IpSetError::Invalid(text.to_owned()))?;
            let width = match ip {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            let len = match len {
                None => width,
                Some(len) => parse_prefix_length(text, len, width)?,
            };
            match ip {
                IpAddr::V4(addr) => v4.push(interval_v4(u32::from(addr), len)),
                IpAddr::V6(addr) => match addr.to_ipv4_mapped() {
                    Some(mapped) if len >= 96 => v4.push(interval_v4(u32::from(mapped), len - 96)),
                    Some(_) => {
                        v6.push(interval_v6(u128::from(addr), len));
                        v4.push((0, u32::MAX));
                    }
                    None => v6.push(interval_v6(u128::from(addr), len)),
                },
            }
        }
        Ok(IpSet {
            v4: merge(v4),
            v6: merge(v6),
        })
    }

    /// Whether the set holds no range at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in the set. An IPv4-mapped IPv6 address (`::ffff:203.0.113.7`) is looked up as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(addr) => lookup(&self.v4, u32::from(addr)),
            IpAddr::V6(addr) => match addr.to_ipv4_mapped() {
                Some(mapped) => lookup(&self.v4, u32::from(mapped)),
                None => lookup(&self.v6, u128::from(addr)),
            },
        }
    }
}

/// Parses the text after the `/`: ASCII digits only, at most `width`.
fn parse_prefix_length(text: &str, len: &str, width: u32) -> Result<u32, IpSetError> {
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IpSetError::Invalid(text.to_owned()));
    }
    // Only digits: a parse failure is an overflow, i.e. far too long a prefix.
    match len.parse::<u32>() {
        Ok(len) if len <= width => Ok(len),
        _ => Err(IpSetError::PrefixLength(text.to_owned(), width)),
    }
}

/// The inclusive interval of `addr/len` (`len` ≤ 32).
fn interval_v4(addr: u32, len: u32) -> (u32, u32) {
    let host = u32::MAX.checked_shr(len).unwrap_or(0);
    (addr & !host, addr | host)
}

/// The inclusive interval of `addr/len` (`len` ≤ 128).
fn interval_v6(addr: u128, len: u32) -> (u128, u128) {
    let host = u128::MAX.checked_shr(len).unwrap_or(0);
    (addr & !host, addr | host)
}

/// Sorts the intervals and merges those that overlap or touch.
fn merge<T: Copy + Ord + Successor>(mut intervals: Vec<(T, T)>) -> Box<[(T, T)]> {
    intervals.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(intervals.len());
    for (start, end) in intervals {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_next() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => merged.push((start, end)),
        }
    }
    merged.into_boxed_slice()
}

/// Binary search for the interval starting at or before `value`.
fn lookup<T: Copy + Ord>(intervals: &[(T, T)], value: T) -> bool {
    let after = intervals.partition_point(|&(start, _)| start <= value);
    after > 0 && intervals[after - 1].1 >= value
}

/// The successor of an address, saturating at the top of the family.
trait Successor {
    fn saturating_next(self) -> Self;
}

impl Successor for u32 {
    fn saturating_next(self) -> Self {
        self.saturating_add(1)
    }
}

impl Successor for u128 {
    fn saturating_next(self) -> Self {
        self.saturating_add(1)
    }
}

/// A compiled allow/deny pair: deny wins; a non-empty allow list admits only its members.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    /// When non-empty, only addresses in this set are admitted.
    pub allow: IpSet,
    /// Addresses in this set are refused, whatever `allow` says.
    pub deny: IpSet,
}

impl IpRules {
    /// Whether neither list holds a range, i.e. every address is admitted.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` may pass: it is not denied and, if there is an allow list, it is on it.
    /// IPv4-mapped IPv6 addresses are judged as their IPv4 address.
    pub fn admits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn set(ranges: &[&str]) -> IpSet {
        IpSet::parse(ranges).unwrap()
    }

    #[test]
    fn v4_range_edges() {
        let s = set(&["203.0.113.0/24"]);
        assert!(s.contains(ip("203.0.113.0")));
        assert!(s.contains(ip("203.0.113.255")));
        assert!(s.contains(ip("203.0.113.77")));
        assert!(!s.contains(ip("203.0.112.255")));
        assert!(!s.contains(ip("203.0.114.0")));
        assert!(!s.contains(ip("2001:db8::1")));
    }

    #[test]
    fn v6_range_edges() {
        let s = set(&["2001:db8::/32"]);
        assert!(s.contains(ip("2001:db8::")));
        assert!(s.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!s.contains(ip("2001:db9::")));
        assert!(!s.contains(ip("32.1.13.184")));
    }

    #[test]
    fn zero_prefix_covers_the_family() {
        let s = set(&["0.0.0.0/0"]);
        assert!(s.contains(ip("0.0.0.0")));
        assert!(s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("::ffff:198.51.100.1")));
        assert!(!s.contains(ip("::1")));
        assert_eq!(&*s.v4, &[(0, u32::MAX)]);

        let s = set(&["::/0"]);
        assert!(s.contains(ip("::")));
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(s.contains(ip("2001:db8::1")));
        // Mapped addresses are IPv4 clients: an IPv6-only range does not hold them.
        assert!(!s.contains(ip("::ffff:198.51.100.1")));
        assert!(!s.contains(ip("198.51.100.1")));
        assert_eq!(&*s.v6, &[(0, u128::MAX)]);
    }

    #[test]
    fn single_addresses() {
        let s = set(&["192.0.2.1/32", "2001:db8::1/128", " 192.0.2.9 ", "::1"]);
        assert!(s.contains(ip("192.0.2.1")));
        assert!(!s.contains(ip("192.0.2.0")));
        assert!(!s.contains(ip("192.0.2.2")));
        assert!(s.contains(ip("192.0.2.9")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(!s.contains(ip("192.0.2.10")));
        assert!(s.contains(ip("2001:db8::1")));
        assert!(!s.contains(ip("2001:db8::")));
        assert!(!s.contains(ip("2001:db8::2")));
        assert!(s.contains(ip("::1")));
        assert!(!s.contains(ip("::2")));
        assert!(!s.contains(ip("::")));
    }

    #[test]
    fn host_bits_are_ignored() {
        assert_eq!(set(&["10.0.0.1/8"]), set(&["10.0.0.0/8"]));
        assert_eq!(set(&["2001:db8::1/32"]), set(&["2001:db8::/32"]));
        assert!(set(&["10.9.9.9/8"]).contains(ip("10.0.0.0")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        // Overlapping, contained, adjacent (10.1.0.0/16 ends where 10.2.0.0/16 starts).
        let s = set(&[
            "10.2.0.0/16",
            "10.0.0.0/15",
            "10.1.2.0/24",
            "10.3.0.0/16",
            "192.168.0.0/24",
            "192.168.2.0/24",
        ]);
        assert_eq!(
            &*s.v4,
            &[
                (
                    u32::from(Ipv4Addr::new(10, 0, 0, 0)),
                    u32::from(Ipv4Addr::new(10, 3, 255, 255))
                ),
                (
                    u32::from(Ipv4Addr::new(192, 168, 0, 0)),
                    u32::from(Ipv4Addr::new(192, 168, 0, 255))
                ),
                (
                    u32::from(Ipv4Addr::new(192, 168, 2, 0)),
                    u32::from(Ipv4Addr::new(192, 168, 2, 255))
                ),
            ]
        );
        assert!(!s.contains(ip("192.168.1.0")));
        assert!(s.contains(ip("10.2.255.255")));

        let s = set(&[
            "2001:db8::/33",
            "2001:db8:8000::/33",
            "2001:db8::/48",
            "2001:db8::5",
        ]);
        assert_eq!(s.v6.len(), 1);
        assert!(s.contains(ip("2001:db8:ffff::1")));

        let s = set(&["255.255.255.255", "255.255.255.254", "0.0.0.0", "0.0.0.1"]);
        assert_eq!(s.v4.len(), 2);
        let s = set(&["::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]);
        assert_eq!(s.v6.len(), 2);

        // Duplicates.
        let s = set(&["198.51.100.0/24", "198.51.100.0/24"]);
        assert_eq!(s.v4.len(), 1);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.0.0.0")));
        // IPv4-compatible (deprecated) addresses are plain IPv6.
        assert!(!s.contains(ip("::10.1.2.3")));

        let s = set(&["::ffff:10.0.0.0/104"]);
        assert_eq!(s, set(&["10.0.0.0/8"]));
        assert!(s.contains(ip("10.255.255.255")));
        assert!(s.contains(ip("::ffff:10.0.0.0")));
        assert!(!s.contains(ip("11.0.0.0")));

        assert_eq!(set(&["::ffff:192.0.2.1"]), set(&["192.0.2.1"]));
        assert_eq!(set(&["::ffff:0.0.0.0/96"]), set(&["0.0.0.0/0"]));

        // A mapped address with a prefix shorter than 96: IPv6 as written, plus all of IPv4.
        let s = set(&["::ffff:10.0.0.0/80"]);
        assert_eq!(&*s.v4, &[(0, u32::MAX)]);
        assert_eq!(&*s.v6, &[(0, (1u128 << 48) - 1)]);
        assert!(s.contains(ip("203.0.113.7")));
        assert!(s.contains(ip("::1")));
        assert!(s.contains(ip("::fffe:0:0")));
        assert!(!s.contains(ip("0:0:0:0:1::")));
    }

    #[test]
    fn invalid_inputs() {
        let err = |text: &str| IpSet::parse(&[text]).unwrap_err();
        assert_eq!(
            err("10.0.0.0/33"),
            IpSetError::PrefixLength("10.0.0.0/33".into(), 32)
        );
        assert_eq!(
            err("::/129"),
            IpSetError::PrefixLength("::/129".into(), 128)
        );
        assert_eq!(
            err("::ffff:10.0.0.0/129"),
            IpSetError::PrefixLength("::ffff:10.0.0.0/129".into(), 128)
        );
        assert_eq!(
            err(" 10.0.0.0/99999999999999999999 "),
            IpSetError::PrefixLength("10.0.0.0/99999999999999999999".into(), 32)
        );
        for text in [
            "abc",
            "10.0.0.0/",
            "/8",
            "",
            "   ",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0 /8",
            "10.0.0.0/ 8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "010.0.0.0/8",
            "[::1]",
            "fe80::1%eth0",
            "10.0.0.0/8,",
            "10.0.0.0/٨",
        ] {
            assert_eq!(
                err(text),
                IpSetError::Invalid(text.trim().to_owned()),
                "{text:?}"
            );
        }
        assert_eq!(
            err("10.0.0.0/33").to_string(),
            "`10.0.0.0/33`: prefix length must be 0-32"
        );
        assert_eq!(
            err("abc").to_string(),
            "`abc` is not an IP address or CIDR range"
        );
        // One bad entry fails the whole list.
        assert!(IpSet::parse(&["10.0.0.0/8", "nope"]).is_err());
    }

    #[test]
    fn empty_set() {
        let s = IpSet::parse::<&str>(&[]).unwrap();
        assert!(s.is_empty());
        assert_eq!(s, IpSet::default());
        assert!(!s.contains(ip("0.0.0.0")));
        assert!(!s.contains(ip("::")));
        assert!(!set(&["::1"]).is_empty());
        assert!(!set(&["127.0.0.1"]).is_empty());
        // Owned strings are accepted too.
        let owned = vec![String::from("10.0.0.0/8")];
        assert!(!IpSet::parse(&owned).unwrap().is_empty());
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = IpRules {
            allow: set(&["203.0.113.0/24"]),
            deny: set(&["203.0.113.7/32"]),
        };
        assert!(!rules.is_empty());
        assert!(rules.admits(ip("203.0.113.6")));
        assert!(rules.admits(ip("203.0.113.8")));
        assert!(!rules.admits(ip("203.0.113.7")));
        assert!(!rules.admits(ip("::ffff:203.0.113.7")));
        assert!(rules.admits(ip("::ffff:203.0.113.8")));
        assert!(!rules.admits(ip("198.51.100.1")));
        assert!(!rules.admits(ip("2001:db8::1")));
    }

    #[test]
    fn empty_allow_admits_everything_not_denied() {
        let rules = IpRules {
            allow: IpSet::default(),
            deny: set(&["198.51.100.0/24", "2001:db8::/32"]),
        };
        assert!(!rules.is_empty());
        assert!(rules.admits(ip("203.0.113.7")));
        assert!(rules.admits(ip("2001:db9::1")));
        assert!(!rules.admits(ip("198.51.100.200")));
        assert!(!rules.admits(ip("2001:db8::1")));

        let open = IpRules::default();
        assert!(open.is_empty());
        assert!(open.admits(ip("0.0.0.0")));
        assert!(open.admits(ip("::")));
    }

    /// xorshift64: deterministic, no extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn u128(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    /// The naive model: a linear scan over the original prefixes, mapped addresses as IPv4.
    fn naive(v4: &[(u32, u32)], v6: &[(u128, u32)], ip: IpAddr) -> bool {
        let in4 = |a: u32| {
            v4.iter()
                .any(|&(net, len)| len == 0 || (a ^ net) >> (32 - len) == 0)
        };
        match ip {
            IpAddr::V4(a) => in4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(m) => in4(u32::from(m)),
                None => {
                    let a = u128::from(a);
                    v6.iter()
                        .any(|&(net, len)| len == 0 || (a ^ net) >> (128 - len) == 0)
                }
            },
        }
    }

    #[test]
    fn randomized_against_linear_scan() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut hits, mut misses, mut merged) = (0, 0, 0);
        for round in 0..8 {
            // Prefixes crowded into a few /8 (IPv4) and /16 (IPv6) blocks so they overlap and touch.
            let v4: Vec<(u32, u32)> = (0..50)
                .map(|_| {
                    let top = [10u32, 192, 203][rng.below(3) as usize] << 24;
                    let addr = top | (rng.next() as u32 & 0x00ff_ffff);
                    let len = if rng.below(50) == 0 {
                        rng.below(9)
                    } else {
                        8 + rng.below(25)
                    } as u32;
                    (addr, len)
                })
                .collect();
            let v6: Vec<(u128, u32)> = (0..50)
                .map(|_| {
                    let top = u128::from([0x2001u16, 0x2a00, 0xfd00][rng.below(3) as usize]) << 112;
                    let addr = top | (rng.u128() >> 16);
                    let len = if rng.below(50) == 0 {
                        rng.below(17)
                    } else {
                        16 + rng.below(113)
                    } as u32;
                    (addr, len)
                })
                .collect();
            let mut text: Vec<String> = v4
                .iter()
                .map(|&(a, l)| format!("{}/{l}", Ipv4Addr::from(a)))
                .chain(
                    v6.iter()
                        .map(|&(a, l)| format!("{}/{l}", Ipv6Addr::from(a))),
                )
                .collect();
            if round % 2 == 1 {
                // The same ranges written as mapped IPv6 give the same answers.
                for t in text.iter_mut().take(50) {
                    let (a, l) = t.split_once('/').unwrap();
                    *t = format!("::ffff:{a}/{}", l.parse::<u32>().unwrap() + 96);
                }
            }
            let s = IpSet::parse(&text).unwrap();
            merged += 100 - s.v4.len() - s.v6.len();
            assert!(s
                .v4
                .windows(2)
                .all(|w| w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0));
            assert!(s
                .v6
                .windows(2)
                .all(|w| w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0));

            for _ in 0..1250 {
                let (net, len) = v4[rng.below(50) as usize];
                let (start, end) = interval_v4(net, len);
                let a = match rng.below(6) {
                    0 => start.wrapping_sub(1),
                    1 => start,
                    2 => end,
                    3 => end.wrapping_add(1),
                    4 => start | (rng.next() as u32 & (end - start)),
                    _ => rng.next() as u32,
                };
                let v4ip = IpAddr::V4(Ipv4Addr::from(a));
                assert_eq!(s.contains(v4ip), naive(&v4, &v6, v4ip), "{v4ip}");
                let mapped = IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped());
                assert_eq!(s.contains(mapped), naive(&v4, &v6, mapped), "{mapped}");

                let (net, len) = v6[rng.below(50) as usize];
                let (start, end) = interval_v6(net, len);
                let a = match rng.below(6) {
                    0 => start.wrapping_sub(1),
                    1 => start,
                    2 => end,
                    3 => end.wrapping_add(1),
                    4 => start | (rng.u128() & (end - start)),
                    _ => rng.u128(),
                };
                let v6ip = IpAddr::V6(Ipv6Addr::from(a));
                assert_eq!(s.contains(v6ip), naive(&v4, &v6, v6ip), "{v6ip}");
                for hit in [s.contains(v4ip), s.contains(v6ip)] {
                    if hit {
                        hits += 1;
                    } else {
                        misses += 1;
                    }
                }
            }
        }
        // The sample exercises both answers and the merging.
        assert!(hits > 5000 && misses > 5000, "{hits} hits, {misses} misses");
        assert!(merged > 100, "{merged} ranges merged away");
    }
}
