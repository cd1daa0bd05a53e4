//! Who the client is and what it may ask for: trusted reverse proxies,
//! per-IP grouping, and the `Host` names a port answers (SPEC §9).
//!
//! Used by both ports' accept paths and by the code that reads request
//! heads. Pure functions over addresses and header values: no I/O, no
//! thread of its own.
//!
//! A peer listed in `LIVE_TRUSTED_PROXIES` is a proxy we run: it is exempt
//! from per-IP limits, and the client it speaks for is the right-most
//! `X-Forwarded-For` entry that is not itself trusted (entries to the left
//! of it could have been written by the client, so they prove nothing).
//! Any other peer's `X-Forwarded-For` is ignored.
//!
//! [`HostRule`] is the DNS-rebinding guard: a page of a domain that an
//! attacker re-points at 127.0.0.1 reaches a loopback listener with the
//! attacker's name in `Host`, which the rule refuses (`421`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// One address or CIDR block of `LIVE_TRUSTED_PROXIES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    network: IpAddr,
    prefix: u8,
}

impl Block {
    /// `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`, `[::1]`.
    fn parse(text: &str) -> Option<Block> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address =
            address.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(address);
        let network: IpAddr = address.parse().ok()?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
        };
        Some(Block { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `LIVE_TRUSTED_PROXIES`: the peers whose `X-Forwarded-For` we believe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Block>,
}

impl TrustedProxies {
    /// A comma list of addresses or CIDRs; every bad entry is named in one
    /// message (the value is not secret).
    ///
    /// # Errors
    /// A message naming the entries that are neither an address nor a CIDR.
    pub fn parse(value: &str) -> Result<TrustedProxies, String> {
        let mut blocks = Vec::new();
        let mut bad = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match Block::parse(entry) {
                Some(block) => blocks.push(block),
                None => bad.push(format!("{entry:?}")),
            }
        }
        if bad.is_empty() {
            Ok(TrustedProxies { blocks })
        } else {
            Err(format!(
                "expected IP addresses or CIDR blocks (10.0.0.0/8, fd00::/8), got {}",
                bad.join(", ")
            ))
        }
    }

    /// Whether no proxy is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(ip))
    }

    /// The client a request speaks for: `peer` itself unless `peer` is
    /// trusted, else the right-most entry of the `X-Forwarded-For` values
    /// (all such headers in order, each a comma list) that is not trusted.
    /// When every entry is trusted, the left-most one; when there is no
    /// usable entry, `peer`. An entry that is not an address (`unknown`, an
    /// obfuscated identifier) stops the walk: what is left of it cannot be
    /// checked, so the trusted peer is the best we know.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded_entry(entry) else { return client };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for block in &self.blocks {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{block}")?;
        }
        Ok(())
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]:5678`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (address, _) = rest.split_once(']')?;
        return address.parse::<Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (address, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Which `Host` names a port answers (SPEC §9 "Host"); others get `421`.
///
/// - on a port bound to a loopback address: loopback addresses and
///   `localhost`, with any port, and the names of `LIVE_PUBLIC_HOSTS`;
/// - on any other port: the names of `LIVE_PUBLIC_HOSTS` when set, else
///   any name.
///
/// Loopback names stay allowed on a loopback port when the list is set
/// (where the SPEC lists only the names): local probes and scrapes
/// (`curl 127.0.0.1:9090/healthz`, Prometheus on the host) keep working
/// behind a proxy, and no rebinding page can send a loopback `Host` (its
/// `Host` is its own domain).
///
/// A request without `Host` (only HTTP/1.0 may omit it) passes: browsers,
/// the only clients DNS rebinding can steer, always send one. The rule
/// follows the listener's address, not its exposure: behind a proxy that
/// passes the public name on, that name must be listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostRule {
    /// Lowercased names without brackets or port.
    names: Vec<String>,
    /// The port is bound to a loopback address.
    loopback: bool,
}

impl HostRule {
    /// The rule of a port bound to `bound`, given `LIVE_PUBLIC_HOSTS`
    /// (lowercased, without brackets, as the configuration stores them).
    pub(crate) fn new(public_hosts: &[String], bound: IpAddr) -> HostRule {
        HostRule { names: public_hosts.to_vec(), loopback: bound.to_canonical().is_loopback() }
    }

    /// Whether a request with this `Host` header value may be answered.
    pub(crate) fn allows(&self, host: Option<&str>) -> bool {
        host_allowed(&self.names, self.loopback, host)
    }
}

/// [`HostRule::allows`] without building the rule: for a port that checks
/// rarely enough to read its settings each time (the WebSocket upgrade).
/// `names` as in `LIVE_PUBLIC_HOSTS`, `bound` the listener's address.
pub(crate) fn host_allowed_on(names: &[String], bound: IpAddr, host: Option<&str>) -> bool {
    host_allowed(names, bound.to_canonical().is_loopback(), host)
}

/// The rule itself: listed names pass; then loopback names on a loopback
/// listener, any name elsewhere when nothing is listed.
fn host_allowed(names: &[String], loopback: bool, host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = host_name(host);
    if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        return true;
    }
    if loopback { is_loopback_name(name) } else { names.is_empty() }
}

/// The name part of a `Host` value: `[::1]:8080` → `::1`, `a.b:80` → `a.b`,
/// a trailing dot dropped (`localhost.` is `localhost`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// `localhost` or a loopback address literal (`127.0.0.0/8`, `::1`,
/// `::ffff:127.x.y.z`).
fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The values of every `X-Forwarded-For` field of a request head, in order,
/// for [`TrustedProxies::client_ip`].
pub(crate) fn forwarded_for(headers: &[(String, String)]) -> impl Iterator<Item = &str> {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
        .map(|(_, value)| value.as_str())
}

/// The key per-IP limits count by: the address itself for IPv4 (and IPv4
/// mapped into IPv6), its /64 for IPv6, since one host or home network
/// usually holds a whole /64 and could otherwise pick a fresh address per
/// connection.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_blocks_and_names_bad_entries() {
        let t = TrustedProxies::parse(" 127.0.0.1, 10.0.0.0/8 ,fd00::/8,[::1],").unwrap();
        assert_eq!(t.to_string(), "127.0.0.1/32,10.0.0.0/8,fd00::/8,::1/128");
        let err = TrustedProxies::parse("10.0.0.0/33, nginx, 1.2.3.4/, ::1/129").unwrap_err();
        assert!(err.contains("\"10.0.0.0/33\"") && err.contains("\"nginx\""), "{err}");
        assert!(err.contains("\"1.2.3.4/\"") && err.contains("\"::1/129\""), "{err}");
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }

    #[test]
    fn blocks_match_by_prefix() {
        let t = TrustedProxies::parse("10.1.0.0/16,fd00::/8,0.0.0.0/0").unwrap();
        assert!(t.is_trusted(ip("10.1.2.3")) && t.is_trusted(ip("8.8.8.8")));
        let t = TrustedProxies::parse("10.1.0.0/16,fd00::/8").unwrap();
        assert!(t.is_trusted(ip("10.1.255.255")) && !t.is_trusted(ip("10.2.0.1")));
        assert!(t.is_trusted(ip("fd12::1")) && !t.is_trusted(ip("fe80::1")));
        let mapped = TrustedProxies::parse("127.0.0.1").unwrap();
        assert!(mapped.is_trusted(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_entry_of_a_trusted_peer() {
        let t = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let peer = ip("127.0.0.1");
        // The client can write anything left of what our proxy appended.
        assert_eq!(t.client_ip(peer, ["6.6.6.6, 203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(t.client_ip(peer, ["203.0.113.7, 10.0.0.2"]), ip("203.0.113.7"));
        assert_eq!(t.client_ip(peer, ["6.6.6.6", "203.0.113.7:4444"]), ip("203.0.113.7"));
        assert_eq!(t.client_ip(peer, ["[2001:db8::1]:80"]), ip("2001:db8::1"));
        assert_eq!(t.client_ip(peer, ["10.0.0.3, 10.0.0.2"]), ip("10.0.0.3"));
        assert_eq!(t.client_ip(peer, ["203.0.113.7, unknown"]), peer);
        assert_eq!(t.client_ip(peer, []), peer);
        // An untrusted peer's header is ignored.
        assert_eq!(t.client_ip(ip("192.0.2.1"), ["203.0.113.7"]), ip("192.0.2.1"));
        assert_eq!(TrustedProxies::default().client_ip(peer, ["203.0.113.7"]), peer);
    }

    #[test]
    fn the_host_rule_follows_the_list_then_the_listener() {
        let loopback = HostRule::new(&[], ip("127.0.0.1"));
        for ok in
            ["127.0.0.1:8080", "localhost", "LOCALHOST:9090", "[::1]:80", "127.1.2.3", "localhost."]
        {
            assert!(loopback.allows(Some(ok)), "{ok}");
        }
        for refused in
            ["rebind.attacker.example", "rebind.attacker.example:8080", "", "[::2]", "10.0.0.1"]
        {
            assert!(!loopback.allows(Some(refused)), "{refused}");
        }
        assert!(loopback.allows(None), "no Host: not a browser");
        let anywhere = HostRule::new(&[], ip("0.0.0.0"));
        assert!(anywhere.allows(Some("rebind.attacker.example")));
        let listed =
            HostRule::new(&["live.example.org".to_owned(), "::1".to_owned()], ip("127.0.0.1"));
        assert!(listed.allows(Some("Live.Example.org:443")) && listed.allows(Some("[::1]:8080")));
        assert!(listed.allows(Some("127.0.0.1:8080")) && !listed.allows(Some("evil.example")));
        let public = HostRule::new(&["live.example.org".to_owned()], ip("0.0.0.0"));
        assert!(public.allows(Some("live.example.org")));
        assert!(!public.allows(Some("127.0.0.1")) && !public.allows(Some("evil.example")));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("127.0.0.2")), ip("127.0.0.2"));
        assert_eq!(limit_key(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
    }
}
