//! The client a request is attributed to, for IP allow/deny rules, rate limits and logs.
//!
//! Behind a load balancer or CDN the connection comes from the proxy, and the client's own
//! address travels in `X-Forwarded-For`. Anyone can write that header, so it is believed only
//! as far as a chain of proxies the operator trusts vouches for it: the walk starts at the
//! connection's peer and moves leftwards through the header only while the current hop is a
//! trusted proxy.

use super::ip_set::IpSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The client address a request is attributed to: the connection's peer (or the PROXY protocol source)
/// unless that peer is a trusted proxy, in which case `X-Forwarded-For` is walked from the right,
/// skipping trusted hops; the first untrusted hop is the client. If every hop is trusted, the leftmost
/// hop is the client. An empty or unparseable hop stops the walk: the last hop examined that parsed
/// (a trusted one, or the peer) is used — a forged or broken header never yields an arbitrary address.
///
/// `forwarded_for` yields the value of every `X-Forwarded-For` field, in the order the fields
/// appear in the request; each value is a comma-separated list of hops, with optional spaces
/// or tabs around each hop. Passing only some of the fields (the first one, say) lets a client
/// choose its own address. A hop is an IPv4 address (`192.0.2.1`), an IPv6 address
/// (`2001:db8::1`), either with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`), or an IPv6
/// address in brackets (`[2001:db8::1]`); anything else (`unknown`, obfuscated identifiers,
/// zone ids, bytes that are not UTF-8) is unparseable. An unbracketed IPv6 address is never
/// read as having a port.
///
/// When `trusted` is empty, `peer` is returned without reading the header. Trust is judged
/// by [`IpSet::contains`], so IPv4-mapped IPv6 hops count as their IPv4 address; the address
/// returned is the hop as written (a mapped hop stays mapped; use [`IpAddr::to_canonical`]
/// where one key per client matters). The walk does not allocate; its cost is linear in the
/// header's length.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &IpSet,
) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut last = peer;
    for field in forwarded_for.rev() {
        for hop in field.rsplit(|&b| b == b',') {
            match parse_hop(hop) {
                None => return last,
                Some(ip) if !trusted.contains(ip) => return ip,
                Some(ip) => last = ip,
            }
        }
    }
    last
}

/// One hop of `X-Forwarded-For`: an address, a bracketed IPv6 address, or either with a port.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(trim(hop)).ok()?;
    if let Some(rest) = hop.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let addr: Ipv6Addr = addr.parse().ok()?;
        return match after {
            "" => Some(IpAddr::V6(addr)),
            _ => after
                .strip_prefix(':')
                .filter(|port| is_port(port))
                .map(|_| IpAddr::V6(addr)),
        };
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    let (addr, port) = hop.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A decimal port number, 0-65535, with no sign.
fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok()
}

/// Strips spaces and tabs from both ends.
fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted(ranges: &[&str]) -> IpSet {
        IpSet::parse(ranges).unwrap()
    }

    /// The client for `peer` with these `X-Forwarded-For` field values.
    fn client(peer: &str, fields: &[&str], trusted: &IpSet) -> IpAddr {
        client_address(ip(peer), fields.iter().map(|f| f.as_bytes()), trusted)
    }

    fn proxies() -> IpSet {
        trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"])
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = proxies();
        assert_eq!(
            client("198.51.100.9", &["203.0.113.7"], &t),
            ip("198.51.100.9")
        );
        assert_eq!(
            client("2001:db8::9", &["203.0.113.7"], &t),
            ip("2001:db8::9")
        );
    }

    #[test]
    fn empty_trusted_set_never_reads_the_header() {
        let t = IpSet::default();
        assert_eq!(client("10.0.0.1", &["203.0.113.7"], &t), ip("10.0.0.1"));
        let never = [()]
            .into_iter()
            .map(|()| -> &[u8] { panic!("header read") });
        assert_eq!(client_address(ip("10.0.0.1"), never, &t), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_peer_with_one_hop() {
        let t = proxies();
        assert_eq!(client("10.0.0.1", &["203.0.113.7"], &t), ip("203.0.113.7"));
    }

    #[test]
    fn chain_of_trusted_proxies() {
        let t = proxies();
        assert_eq!(
            client("10.0.0.3", &["203.0.113.7, 10.0.0.1, 10.0.0.2"], &t),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn spoofed_prefix_is_ignored() {
        let t = proxies();
        // The client sent `X-Forwarded-For: 1.2.3.4`; the trusted proxy appended the real peer.
        assert_eq!(
            client("10.0.0.1", &["1.2.3.4, 203.0.113.7"], &t),
            ip("203.0.113.7")
        );
        // Even a spoofed trusted-looking hop does not move the walk past the real client.
        assert_eq!(
            client("10.0.0.1", &["10.9.9.9, 203.0.113.7"], &t),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn several_fields_are_one_list() {
        let t = proxies();
        assert_eq!(
            client(
                "10.0.0.3",
                &["1.2.3.4, 203.0.113.7", "10.0.0.1", "10.0.0.2"],
                &t
            ),
            ip("203.0.113.7")
        );
        assert_eq!(
            client("10.0.0.3", &["203.0.113.7", "10.0.0.1, 198.51.100.1"], &t),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn all_trusted_gives_the_leftmost_hop() {
        let t = proxies();
        assert_eq!(
            client("10.0.0.3", &["10.0.0.1, 10.0.0.2", "10.0.0.4"], &t),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn unparseable_hop_stops_at_the_last_parsed_one() {
        let t = proxies();
        assert_eq!(
            client("10.0.0.3", &["203.0.113.7, garbage, 10.0.0.2"], &t),
            ip("10.0.0.2")
        );
        assert_eq!(
            client("10.0.0.3", &["203.0.113.7, 10.0.0.2, unknown"], &t),
            ip("10.0.0.3")
        );
        assert_eq!(
            client("10.0.0.3", &["203.0.113.7, , 10.0.0.2"], &t),
            ip("10.0.0.2")
        );
        assert_eq!(client("10.0.0.3", &["203.0.113.7,"], &t), ip("10.0.0.3"));
        let fields: [&[u8]; 2] = [b"203.0.113.7", b"10.0.0.2, 10.0.\xff.1"];
        assert_eq!(
            client_address(ip("10.0.0.3"), fields.into_iter(), &t),
            ip("10.0.0.3")
        );
        let fields: [&[u8]; 2] = [b"203.0.113.7, \xc3\xa9", b"10.0.0.2"];
        assert_eq!(
            client_address(ip("10.0.0.3"), fields.into_iter(), &t),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn empty_header() {
        let t = proxies();
        assert_eq!(client("10.0.0.3", &[], &t), ip("10.0.0.3"));
        assert_eq!(client("10.0.0.3", &[""], &t), ip("10.0.0.3"));
        assert_eq!(client("10.0.0.3", &[" \t "], &t), ip("10.0.0.3"));
        assert_eq!(client("10.0.0.3", &["203.0.113.7", ""], &t), ip("10.0.0.3"));
    }

    #[test]
    fn ipv6_brackets_and_ports() {
        let t = proxies();
        assert_eq!(
            client("2001:db8:ffff::1", &["[2001:db8::7]:4711"], &t),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("2001:db8:ffff::1", &["[2001:db8::7]"], &t),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("10.0.0.1", &["2001:db8::7, [2001:db8:ffff::2]:443"], &t),
            ip("2001:db8::7")
        );
        assert_eq!(
            client("10.0.0.1", &["192.0.2.1:4711, 10.0.0.2:80"], &t),
            ip("192.0.2.1")
        );
        // An unbracketed IPv6 address is an address, never address-and-port.
        assert_eq!(
            client("10.0.0.1", &["2001:db8::7:4711"], &t),
            ip("2001:db8::7:4711")
        );
        // Malformed forms are unparseable.
        for bad in [
            "[2001:db8::7",
            "2001:db8::7]",
            "[2001:db8::7]:",
            "[2001:db8::7]:65536",
            "[2001:db8::7]:+80",
            "[2001:db8::7]x",
            "[192.0.2.1]",
            "[192.0.2.1]:80",
            "192.0.2.1:",
            "192.0.2.1:99999",
            "192.0.2.1:123456",
            "192.0.2.1:80:80",
            ":80",
            "[]",
            "fe80::1%eth0",
            "192.0.2.1 :80",
            "192.0.2.1\r",
        ] {
            assert_eq!(
                client("10.0.0.1", &["203.0.113.7", bad, "10.0.0.2"], &t),
                ip("10.0.0.2"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mapped_addresses() {
        let t = proxies();
        // A mapped peer and mapped hops are judged as IPv4; the result is the hop as written.
        assert_eq!(
            client(
                "::ffff:10.0.0.3",
                &["::ffff:203.0.113.7, ::ffff:10.0.0.2"],
                &t
            ),
            ip("::ffff:203.0.113.7")
        );
        assert_eq!(
            client("::ffff:198.51.100.1", &["203.0.113.7"], &t),
            ip("::ffff:198.51.100.1")
        );
        assert_eq!(
            client(
                "10.0.0.3",
                &["[::ffff:10.0.0.2]:443, 203.0.113.7, [::ffff:10.0.0.1]"],
                &t
            ),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn spaces_and_tabs_around_hops() {
        let t = proxies();
        assert_eq!(
            client(
                "10.0.0.3",
                &["\t203.0.113.7 ,\t 10.0.0.1\t,  10.0.0.2  "],
                &t
            ),
            ip("203.0.113.7")
        );
        assert_eq!(
            client("10.0.0.3", &[" [2001:db8::7]:80\t, 10.0.0.1 "], &t),
            ip("2001:db8::7")
        );
        // Spaces inside a hop are not tolerated.
        assert_eq!(
            client("10.0.0.3", &["203.0.113.7, 10.0.0. 1"], &t),
            ip("10.0.0.3")
        );
    }
}
