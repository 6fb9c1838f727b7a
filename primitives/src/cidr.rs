//! Addresses and prefixes as Istio's `ipBlocks` and `remoteIpBlocks` write them: `198.18.0.0/15`,
//! `2001:db8::/32`, or a bare address meaning that host alone.

use std::net::IpAddr;

pub use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid CIDR {0:?}: expected an IP address or address/prefix-length, e.g. \"198.18.0.0/15\"")]
    Syntax(String),
    #[error("invalid CIDR {0:?}: prefix length {1} is longer than the address ({2} bits)")]
    Length(String, u32, u8),
}

/// Parses a CIDR or a bare address (a host route: /32 or /128). The prefix length is plain decimal digits, so
/// `10.0.0.0/+8`, `10.0.0.0/ 8` and `10.0.0.0/08` are rejected everywhere alike.
pub fn parse(text: &str) -> Result<IpNet, CidrError> {
    let syntax = || CidrError::Syntax(text.to_string());
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| syntax())?;
    let len = match len {
        None => max_len(ip),
        // Plain decimal without leading zeros, as Go's netip.ParsePrefix (Istio's parser) requires.
        Some(l)
            if !l.is_empty()
                && l.len() <= 3
                && l.bytes().all(|b| b.is_ascii_digit())
                && (l == "0" || !l.starts_with('0')) =>
        {
            l.parse::<u8>().map_err(|_| syntax())?
        }
        Some(_) => return Err(syntax()),
    };
    from_parts(ip, u32::from(len))
        .map_err(|_| CidrError::Length(text.into(), len.into(), max_len(ip)))
}

/// A prefix from an address and a length as the protos carry them.
pub fn from_parts(ip: IpAddr, len: u32) -> Result<IpNet, CidrError> {
    let too_long = || CidrError::Length(ip.to_string(), len, max_len(ip));
    let len = u8::try_from(len).map_err(|_| too_long())?;
    IpNet::new(ip, len).map_err(|_| too_long())
}

fn max_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_prefixes_and_hosts() {
        let net = parse("198.18.0.0/15").unwrap();
        assert!(net.contains(&ip("198.19.255.255")));
        assert!(!net.contains(&ip("198.20.0.0")));
        let host = parse("198.18.0.7").unwrap();
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(&ip("198.18.0.7")) && !host.contains(&ip("198.18.0.8")));
        let v6 = parse("2001:db8::/32").unwrap();
        assert!(v6.contains(&ip("2001:db8:1::1")));
        assert!(!v6.contains(&ip("198.18.0.7")), "families never match");
        assert!(parse("0.0.0.0/0").unwrap().contains(&ip("203.0.113.1")));
        // Host bits are allowed, as in Istio; the prefix is what matches.
        assert!(parse("198.18.1.2/16")
            .unwrap()
            .contains(&ip("198.18.200.1")));
    }

    #[test]
    fn rejects_what_any_copy_used_to_disagree_on() {
        for bad in [
            "198.18.0.0/+8",
            "198.18.0.0/ 8",
            "198.18.0.0/",
            "198.18.0.0/33",
            "::/129",
            "198.18.0.0/0008",
            "198.18.0.0/08",
            "198.18.0.0/00",
            "not-an-ip",
            "",
            "198.18.0.0/8/8",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse("198.18.0.0/33"), Err(CidrError::Length(..))));
        assert!(from_parts(ip("198.18.0.0"), 33).is_err());
        assert!(from_parts(ip("198.18.0.0"), 300).is_err());
    }
}
