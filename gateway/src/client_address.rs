//! Who is calling: one client address per request, the same for every per-address limit and
//! every audit record.
//!
//! The address is the direct peer's, unless that peer is a configured trusted proxy (a load
//! balancer or ingress controller): then it is the first address, reading `Forwarded`
//! (RFC 7239) or else `X-Forwarded-For` from right to left, that is not itself a trusted
//! proxy. Entries a client wrote itself sit to the left of what the trusted proxies appended,
//! so a client cannot choose its address by sending these headers; from an untrusted peer they
//! are ignored altogether. The gateway attests the result to the gRPC front in
//! [`CLIENT_ADDRESS_METADATA`].

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// gRPC metadata carrying the attested client address (the gRPC front believes it only from a
/// service identity such as the gateway).
pub const CLIENT_ADDRESS_METADATA: &str = "x-zen-client-address";

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// Parses a comma-separated list of addresses and CIDR blocks (`10.0.0.0/8, ::1`).
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{item}` is neither an IP address nor a CIDR block"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_for(headers);
        // Right to left: the nearest hop first. The first untrusted one is the client; an
        // unparsable entry ends the walk (nothing left of it can be believed).
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(address) => {
                    client = *address;
                    if !self.contains(*address) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The hops of `Forwarded` (every `for=`), or else of `X-Forwarded-For`, left to right, across
/// repeated header lines; `None` for an entry that is not an address (`unknown`, an obfuscated
/// identifier, garbage).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(parse_node)
        .collect()
}

/// One node: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let node = raw.trim().trim_matches('"');
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside.parse::<IpAddr>().ok().map(canonical);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<IpAddr>().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            trusted.client_address(ip("198.51.100.7"), &h),
            ip("198.51.100.7")
        );
        let none = TrustedProxies::default();
        assert_eq!(none.client_address(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        // The client wrote "6.6.6.6" itself; the proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 192.168.1.1")]);
        assert_eq!(
            trusted.client_address(ip("10.1.2.3"), &h),
            ip("203.0.113.9")
        );
        // Repeated lines count as one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            trusted.client_address(ip("10.1.2.3"), &h),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the last believable hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, bogus, 10.0.0.5")]);
        assert_eq!(trusted.client_address(ip("10.1.2.3"), &h), ip("10.0.0.5"));
        // No header: the proxy itself.
        assert_eq!(
            trusted.client_address(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_takes_precedence_and_ports_brackets_and_mapped_addresses_parse() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.2",
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            trusted.client_address(ip("10.0.0.1"), &h),
            ip("2001:db8:cafe::17")
        );
        let h = headers(&[("x-forwarded-for", "203.0.113.9:5555")]);
        assert_eq!(
            trusted.client_address(ip("::ffff:10.0.0.1"), &h),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn lists_parse_or_say_what_is_wrong() {
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("127.0.0.1, ::1, 10.0.0.0/8").is_ok());
        let error = TrustedProxies::parse("10.0.0.0/8, nope").unwrap_err();
        assert!(error.contains("nope"), "{error}");
    }
}
