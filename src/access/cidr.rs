//! IPv4 and IPv6 address ranges (`203.0.113.0/24`, `2001:db8::/32`, or one address) and
//! membership tests, without allocation.

use std::net::IpAddr;

/// One address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
    v4: bool,
}

fn bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128, true),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u32::from(v4) as u128, true),
            None => (u128::from(v6), false),
        },
    }
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or CIDR range"))?;
        let (value, v4) = bits(ip);
        let width = if v4 { 32 } else { 128 };
        let len = match len {
            None => width,
            Some(len) => len
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&l| l <= width)
                .ok_or_else(|| format!("`{text}`: prefix length must be 0-{width}"))?,
        };
        let mask = if len == 0 {
            0
        } else {
            (!0u128 << (width - len)) & if v4 { 0xffff_ffff } else { !0 }
        };
        Ok(Cidr {
            network: value & mask,
            mask,
            v4,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (value, v4) = bits(ip);
        v4 == self.v4 && value & self.mask == self.network
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_their_addresses_only() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains("203.0.113.7".parse().unwrap()));
        assert!(net.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(!net.contains("203.0.114.1".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("203.0.113.7".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1")
            .unwrap()
            .contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten").is_err());
    }
}
