//! The SSRF guard: webhook targets may not reach internal addresses.
//!
//! # Model
//!
//! A URL is refused when its host is, or resolves to, an address that is
//! loopback, private, link-local (169.254.169.254, the cloud metadata
//! service, included), CGNAT, multicast, broadcast, unspecified or
//! otherwise reserved — in IPv4, in IPv6, or IPv4 embedded in IPv6
//! (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, translated
//! `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4); the local-use NAT64
//! prefix `64:ff9b:1::/48` is refused whatever it embeds. Numeric
//! host spellings (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) are IPv4
//! addresses too: the WHATWG URL parser normalises them, and
//! [`parse_ipv4_loose`] catches any that reach a resolver as names.
//!
//! Every address a name resolves to is checked, and the HTTP client
//! connects only to addresses that passed: the client's DNS resolver *is*
//! the guard ([`GuardedResolver`]), so there is no window between the check
//! and the connection for a rebinding DNS server to exploit. A name with no
//! passing address is refused. The check runs
//! at registration and on every attempt. Addresses inside a configured
//! allow-list ([`WebhookConfig::allow_cidrs`](crate::WebhookConfig)) pass
//! whatever their kind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;

use crate::error::{Result, WebhookError};

/// The host part of a URL, for logs (never the full URL: paths and queries
/// may carry tokens).
pub fn host_of(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "<invalid>".to_owned())
}

/// Why an IPv4 address is internal, or `None` when it is public.
///
/// std's stable predicates where they exist; the ranges std only has
/// unstable predicates for (shared/CGNAT, benchmarking, reserved, IETF
/// protocol assignments) by hand.
pub fn ipv4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip.is_unspecified() || o[0] == 0 {
        "unspecified/this-network"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if o[0] == 100 && (64..=127).contains(&o[1]) {
        "carrier-grade NAT"
    } else if matches!(o, [192, 0, 0, _]) {
        "IETF protocol assignments"
    } else if ip.is_documentation() {
        "documentation"
    } else if matches!(o, [198, 18 | 19, ..]) {
        "benchmarking"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if o[0] >= 240 {
        "reserved"
    } else {
        return None;
    })
}

/// Why an IPv6 address is internal, or `None` when it is public. IPv4
/// embedded in IPv6 (see [`embedded_ipv4`]) is judged as IPv4; the
/// local-use NAT64 prefix `64:ff9b:1::/48` is refused whatever it embeds.
pub fn ipv6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = embedded_ipv4(ip) {
        // An embedded IPv4 address is judged as itself.
        return ipv4_refusal(v4);
    }
    if is_local_use_nat64(ip) {
        // RFC 8215: a network-specific translator may place the IPv4
        // address at any of RFC 6052's offsets inside this prefix, so which
        // IPv4 it reaches cannot be read off the address with certainty; the
        // prefix is internal (not global) either way. The /96 reading names
        // an internal IPv4 when there is one.
        let tail = Ipv4Addr::from_bits((u32::from(s[6]) << 16) | u32::from(s[7]));
        return Some(ipv4_refusal(tail).unwrap_or("local-use NAT64"));
    }
    Some(if ip.is_unique_local() {
        "unique-local"
    } else if ip.is_unicast_link_local() {
        "link-local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else if matches!(s, [0x0100, 0, 0, 0, ..]) {
        "discard-only"
    } else {
        return None;
    })
}

/// Whether `ip` is in the local-use NAT64 prefix `64:ff9b:1::/48`
/// (RFC 8215).
pub fn is_local_use_nat64(ip: Ipv6Addr) -> bool {
    matches!(ip.segments(), [0x64, 0xff9b, 1, ..])
}

/// The IPv4 address inside an IPv6 address that carries one at a fixed
/// place:
///
/// * IPv4-mapped `::ffff:a.b.c.d` and IPv4-compatible `::a.b.c.d` (std's
///   [`Ipv6Addr::to_ipv4`]; a dual-stack socket connects to the IPv4
///   address itself),
/// * IPv4-translated `::ffff:0:a.b.c.d` (`::ffff:0:0/96`, RFC 2765 SIIT),
/// * the NAT64 well-known prefix `64:ff9b::a.b.c.d` (`64:ff9b::/96`,
///   RFC 6052),
/// * 6to4 `2002:aabb:ccdd::/48`.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::from_bits((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::from_bits((u32::from(a) << 16) | u32::from(b))),
        _ => None,
    }
}

/// Why an address is internal, or `None` when it is public.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => ipv4_refusal(v4),
        IpAddr::V6(v6) => ipv6_refusal(v6),
    }
}

/// Parses the numeric IPv4 spellings `inet_aton` accepts: one to four parts,
/// each decimal, octal (`0` prefix) or hex (`0x` prefix), the last part
/// filling the remaining bytes (`127.1`, `2130706433`, `0x7f.0.0.1`).
pub fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let n = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        nums.push(n);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let tail_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << tail_bits {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    v |= last;
    Some(Ipv4Addr::from(u32::try_from(v).ok()?))
}

/// Decides which addresses webhook requests may reach.
#[derive(Debug, Clone, Default)]
pub struct SsrfGuard {
    allow: Arc<Vec<IpNet>>,
}

impl SsrfGuard {
    /// A guard that lets `allow` through in addition to public addresses.
    pub fn new(allow: Vec<IpNet>) -> Self {
        SsrfGuard {
            allow: Arc::new(allow),
        }
    }

    fn allowed_explicitly(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || v4.is_some_and(|v4| net.contains(&v4)))
    }

    /// Checks one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<()> {
        if self.allowed_explicitly(ip) {
            return Ok(());
        }
        match refusal(ip) {
            Some(why) => Err(WebhookError::Refused(format!("{why} address {ip}"))),
            None => Ok(()),
        }
    }

    /// Checks a URL's scheme and literal host (no DNS). Returns the parsed
    /// URL and, for a name, the name to resolve.
    pub fn check_literal(&self, url: &str) -> Result<(Url, Option<String>)> {
        let parsed = Url::parse(url).map_err(|e| WebhookError::invalid("url", e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(WebhookError::invalid("url", "scheme must be http or https"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(WebhookError::invalid(
                "url",
                "credentials in the URL are not allowed",
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| WebhookError::invalid("url", "a host is required"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_ip(ip)?;
            None
        } else if let Some(ip) = parse_ipv4_loose(bare) {
            self.check_ip(IpAddr::V4(ip))?;
            None
        } else {
            Some(bare.to_owned())
        };
        Ok((parsed, name))
    }

    /// Resolves `host`, checks every address and returns those that pass
    /// (refused when none does).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ip) = parse_ipv4_loose(host) {
            self.check_ip(IpAddr::V4(ip))?;
            return Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| WebhookError::Refused(format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(WebhookError::Refused(format!("{host} has no addresses")));
        }
        // Only addresses that pass are returned, so only they are ever
        // connected to; a name none of whose addresses passes is refused.
        let mut first_refusal = None;
        let passed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.check_ip(a.ip()) {
                Ok(()) => true,
                Err(e) => {
                    first_refusal.get_or_insert(e);
                    false
                }
            })
            .collect();
        match (passed.is_empty(), first_refusal) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(WebhookError::Refused(format!("{host} has no addresses"))),
            (false, _) => Ok(passed),
        }
    }

    /// The full check of a URL: scheme, literal host, and every address its
    /// name resolves to.
    pub async fn check_url(&self, url: &str) -> Result<()> {
        let (parsed, name) = self.check_literal(url)?;
        if let Some(name) = name {
            let port = parsed.port_or_known_default().unwrap_or(80);
            self.resolve(&name, port).await?;
        }
        Ok(())
    }
}

/// The HTTP client's DNS resolver: resolves through the [`SsrfGuard`], so
/// the client connects only to addresses that passed.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: SsrfGuard,
}

impl GuardedResolver {
    /// A resolver checking with `guard`.
    pub fn new(guard: SsrfGuard) -> Self {
        GuardedResolver { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = guard.resolve(&host, 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_ipv4_spellings() {
        let lo = Some(Ipv4Addr::new(127, 0, 0, 1));
        for s in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "017700000001",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.1",
            "127.0.1",
            "0x7F.1",
        ] {
            assert_eq!(parse_ipv4_loose(s), lo, "{s}");
        }
        assert_eq!(parse_ipv4_loose("example.com"), None);
        assert_eq!(parse_ipv4_loose("256.0.0.1"), None);
        assert_eq!(parse_ipv4_loose("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4_loose("08.0.0.1"), None, "8 is not octal");
    }

    #[test]
    fn classification() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.1.1.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            // IPv4-translated ::ffff:0:0/96
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "::ffff:0:0.0.0.0",
            // NAT64: well-known prefix with an internal IPv4, and the
            // local-use prefix whatever it embeds
            "64:ff9b::10.1.2.3",
            "64:ff9b::169.254.169.254",
            "64:ff9b::192.168.0.1",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            "2002:a9fe:a9fe::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refusal(ip).is_some(), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refusal(ip), None, "{ip} is public");
        }
    }

    /// IPv4 carried inside IPv6: each form, with what the guard says.
    #[test]
    fn ipv4_inside_ipv6_is_judged_as_ipv4() {
        let table: &[(&str, Option<&str>)] = &[
            // IPv4-mapped (std's to_ipv4_mapped / to_canonical)
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:192.168.1.1", Some("private")),
            ("::ffff:8.8.8.8", None),
            // IPv4-compatible
            ("::10.0.0.1", Some("private")),
            // IPv4-translated ::ffff:0:0/96
            ("::ffff:0:127.0.0.1", Some("loopback")),
            ("::ffff:0:7f00:1", Some("loopback")),
            ("::ffff:0:172.16.0.1", Some("private")),
            ("::ffff:0:169.254.169.254", Some("link-local")),
            ("::ffff:0:100.64.0.1", Some("carrier-grade NAT")),
            ("::ffff:0:1.1.1.1", None),
            // NAT64 well-known prefix 64:ff9b::/96
            ("64:ff9b::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("64:ff9b::224.0.0.1", Some("multicast")),
            ("64:ff9b::8.8.8.8", None),
            // NAT64 local-use prefix 64:ff9b:1::/48: refused whatever it
            // embeds (an internal IPv4 is named as such)
            ("64:ff9b:1::127.0.0.1", Some("loopback")),
            ("64:ff9b:1::8.8.8.8", Some("local-use NAT64")),
            ("64:ff9b:1:abcd::808:808", Some("local-use NAT64")),
            // 6to4
            ("2002:c0a8:101::1", Some("private")),
            ("2002:808:808::1", None),
        ];
        for (ip, want) in table {
            let v6: Ipv6Addr = ip.parse().unwrap();
            assert_eq!(ipv6_refusal(v6), *want, "{ip}");
            let guard = SsrfGuard::default();
            assert_eq!(
                guard.check_ip(IpAddr::V6(v6)).is_ok(),
                want.is_none(),
                "{ip}"
            );
            let url = format!("http://[{ip}]:8080/hook");
            assert_eq!(guard.check_literal(&url).is_ok(), want.is_none(), "{url}");
        }
        assert!(is_local_use_nat64("64:ff9b:1::1".parse().unwrap()));
        assert!(!is_local_use_nat64("64:ff9b::1".parse().unwrap()));
    }

    #[test]
    fn allow_list_opens_only_its_networks() {
        let g = SsrfGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        g.check_ip("127.0.0.1".parse().unwrap()).unwrap();
        g.check_ip("::ffff:127.0.0.1".parse().unwrap()).unwrap();
        assert!(g.check_ip("10.0.0.1".parse().unwrap()).is_err());
        assert!(g.check_ip("::1".parse().unwrap()).is_err());
        assert!(
            SsrfGuard::default()
                .check_ip("127.0.0.1".parse().unwrap())
                .is_err()
        );
    }

    #[tokio::test]
    async fn resolver_returns_only_passing_addresses() {
        let g = SsrfGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let addrs = g.resolve("localhost", 80).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()),
            "{addrs:?}"
        );
        assert!(SsrfGuard::default().resolve("localhost", 80).await.is_err());
        assert!(g.resolve("[::1]", 80).await.is_err());
        assert!(g.resolve("0x7f.1", 80).await.is_ok());
        assert!(SsrfGuard::default().resolve("0x7f.1", 80).await.is_err());
    }
}
