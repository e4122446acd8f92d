//! One entry of Spin's `allowed_outbound_hosts`, as the `delivery_hosts` variable writes it,
//! so that a kind's target the entry does not allow is refused at load instead of failing
//! every attempt. Spin's rules (its `outbound-networking-config` crate, `allowed_hosts.rs`):
//!
//! - An entry is `<scheme>://<host>[:<port>]`, with an optional `/` at the end and no path.
//!   The scheme is a word or `*` (any); scheme lists (`{http,https}`) are refused.
//! - The host is an exact name or address, `*` (any), `*.domain` (any name under `domain`, not
//!   `domain` itself), or a network (`10.0.0.0/8`, `::1/128`; an address alone is its own
//!   network). `self` is Spin's word for the app's own routes: no absolute URL matches it.
//!   Host lists (`{a,b}`) are refused.
//! - The port is a number, `*` (any) or a range `a..b` that excludes `b` (a Rust range, as
//!   Spin parses it: `8000..8100` is 8000 to 8099). Without one, the scheme's well-known port
//!   (80 for `http`, 443 for `https`); a scheme without one (and `*`) must write a port.
//! - An empty entry (or a bare `http://` / `https://`) is skipped by Spin: it allows nothing.
//!
//! Hosts are compared as ASCII, case-insensitively; a name outside ASCII must be written in
//! its `xn--` form, in the entry and in the target alike.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One `allowed_outbound_hosts` entry (or none: allows nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts {
    /// The entry as written, for messages.
    written: String,
    pattern: Option<Pattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    /// `None` for `*`.
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.domain`, kept as `.domain`.
    Subdomain(String),
    Name(String),
    Network(IpAddr, u8),
    /// `self` / `self.alt`: the app's own routes, never an absolute URL.
    ToSelf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortPattern {
    Any,
    Port(u16),
    /// `start..end`, `end` excluded.
    Range(u16, u16),
}

impl AllowedHosts {
    /// One entry as written; errors say what is wrong with it.
    pub fn parse(entry: &str) -> Result<AllowedHosts, String> {
        let written = entry.trim();
        let pattern = match written {
            "" | "http://" | "https://" => None,
            _ => Some(Pattern::parse(written)?),
        };
        Ok(AllowedHosts { written: written.to_string(), pattern })
    }

    /// Whether the entry allows nothing (it is empty).
    pub fn is_empty(&self) -> bool {
        self.pattern.is_none()
    }

    /// Whether `url` (an absolute URL) may be reached; a URL that is not one never may.
    pub fn allows(&self, url: &str) -> bool {
        match (&self.pattern, Destination::parse(url)) {
            (Some(pattern), Ok(to)) => pattern.allows(&to),
            _ => false,
        }
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Pattern {
    fn parse(entry: &str) -> Result<Pattern, String> {
        let (scheme, rest) =
            entry.split_once("://").ok_or("no scheme: write it like http://127.0.0.1:8080 or https://*.internal")?;
        let scheme = match scheme {
            "*" => None,
            s if s.starts_with('{') => {
                return Err("scheme lists ({a,b}) are not supported: one entry, one scheme".into());
            }
            s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic()) => Some(s.to_ascii_lowercase()),
            s => return Err(format!("the scheme {s:?} must be letters or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.starts_with('{') {
            return Err("host lists ({a,b}) are not supported: one entry, one host pattern".into());
        }
        let (host, port) = split_host_port(rest, |whole| HostPattern::parse(whole).is_ok())?;
        if port.is_some_and(|p| p.contains('/')) {
            return Err(format!("{rest:?}: an entry has no path"));
        }
        let host = HostPattern::parse(host)?;
        let port = match port {
            None => PortPattern::Port(well_known_port(scheme.as_deref().unwrap_or("*")).ok_or_else(|| {
                format!(
                    "no port, and the scheme {} has no well-known one: write :<port> or :*",
                    scheme.as_deref().unwrap_or("*")
                )
            })?),
            Some(port) => PortPattern::parse(port)?,
        };
        Ok(Pattern { scheme, host, port })
    }

    fn allows(&self, to: &Destination) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == to.scheme) && self.host.allows(&to.host) && self.port.allows(to.port)
    }
}

impl HostPattern {
    fn parse(host: &str) -> Result<HostPattern, String> {
        match host {
            "*" => return Ok(HostPattern::Any),
            "self" | "self.alt" => return Ok(HostPattern::ToSelf),
            _ => {}
        }
        if host.starts_with('{') {
            return Err("host lists ({a,b}) are not supported: one entry, one host pattern".into());
        }
        if let Some(network) = parse_network(host) {
            return network;
        }
        if host.contains('/') {
            return Err(format!("{host:?}: an entry has no path"));
        }
        if let Some(domain) = host.strip_prefix("*.") {
            return match parse_host(domain)? {
                Host::Name(domain) => Ok(HostPattern::Subdomain(format!(".{domain}"))),
                Host::Ip(_) => Err(format!("{host:?}: after *. comes a domain name, not an address")),
            };
        }
        if host.contains('*') {
            return Err(format!("{host:?}: a wildcard is allowed only as the whole host or as *.domain"));
        }
        Ok(match parse_host(host)? {
            Host::Name(name) => HostPattern::Name(name),
            Host::Ip(ip) => HostPattern::Network(ip, if ip.is_ipv4() { 32 } else { 128 }),
        })
    }

    fn allows(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Subdomain(suffix), Host::Name(name)) => name.ends_with(suffix.as_str()),
            (HostPattern::Name(pattern), Host::Name(name)) => pattern == name,
            (HostPattern::Network(network, bits), Host::Ip(ip)) => {
                network.is_ipv4() == ip.is_ipv4() && truncate(*ip, *bits) == *network
            }
            _ => false,
        }
    }
}

/// `address/bits` (host bits dropped, as Spin does) or a bare address in brackets;
/// `None` when `text` is neither.
fn parse_network(text: &str) -> Option<Result<HostPattern, String>> {
    let (address, bits) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    Some(match bits.parse::<u8>() {
        Ok(bits) if bits <= width => Ok(HostPattern::Network(truncate(address, bits), bits)),
        _ => Err(format!("{text:?}: a network's prefix length is 0 to {width}")),
    })
}

fn truncate(address: IpAddr, bits: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) & u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)).into()),
    }
}

impl PortPattern {
    fn parse(port: &str) -> Result<PortPattern, String> {
        if port == "*" {
            return Ok(PortPattern::Any);
        }
        if port.starts_with('{') {
            return Err("port lists ({a,b}) are not supported: use a range a..b".into());
        }
        if let Some((start, end)) = port.split_once("..") {
            return Ok(PortPattern::Range(number(start)?, number(end)?));
        }
        Ok(PortPattern::Port(number(port)?))
    }

    fn allows(self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Port(p) => p == port,
            PortPattern::Range(start, end) => (start..end).contains(&port),
        }
    }
}

fn number(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(n) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("the port {port:?} must be a number from 0 to 65535, * or a range a..b")),
    }
}

/// The ports Spin assumes for an entry that writes none.
fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "mqtt" => Some(1883),
        _ => None,
    }
}

/// Where an absolute `http` or `https` URL goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    /// Lower case.
    scheme: String,
    host: Host,
    /// As written, or the scheme's.
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// Lower case.
    Name(String),
    Ip(IpAddr),
}

impl Destination {
    /// An absolute `http` or `https` URL with a host, without user info or a fragment.
    pub(crate) fn parse(url: &str) -> Result<Destination, String> {
        if url.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err("a URL has no spaces or control characters".into());
        }
        let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL (http://... or https://...)")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("the scheme must be http or https, not {scheme:?}"));
        }
        if url.contains('#') {
            return Err("a target has no fragment (#...)".into());
        }
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        if authority.contains('@') {
            return Err("a target has no user info (user@ or user:password@): credentials do not belong in it".into());
        }
        if authority.is_empty() {
            return Err("the URL has no host".into());
        }
        let (host, port) = split_host_port(authority, |_| false)?;
        let host = parse_host(host)?;
        let port = match port {
            None => well_known_port(&scheme).unwrap_or(0),
            Some(port) => match number(port)? {
                0 => return Err("the port must be from 1 to 65535".into()),
                n => n,
            },
        };
        Ok(Destination { scheme, host, port })
    }
}

/// `host[:port]`, where an IPv6 host is in brackets; `whole` says whether the text is a host
/// pattern with colons of its own (an IPv6 network written without brackets).
fn split_host_port(text: &str, whole: impl Fn(&str) -> bool) -> Result<(&str, Option<&str>), String> {
    if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("an IPv6 address opened with [ is closed with ]")?;
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("{after:?} after the IPv6 address: only :<port> may follow it")),
            },
        };
    }
    if text.matches(':').count() > 1 && whole(text) {
        return Ok((text, None));
    }
    Ok(match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    })
}

/// A host name (letters, digits, `-`, in `.`-separated labels) or an address.
fn parse_host(host: &str) -> Result<Host, String> {
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(Host::Ip(IpAddr::V4(ip))),
            Err(_) => Err(format!("{host:?} is not an IPv4 address (a.b.c.d)")),
        };
    }
    if !host.is_ascii() {
        return Err(format!("{host:?}: write a name outside ASCII in its xn-- form"));
    }
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok(Host::Name(host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> AllowedHosts {
        AllowedHosts::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn check(text: &str, allowed: &[&str], refused: &[&str]) {
        let hosts = entry(text);
        for url in allowed {
            assert!(hosts.allows(url), "{text} refused {url}");
        }
        for url in refused {
            assert!(!hosts.allows(url), "{text} allowed {url}");
        }
    }

    #[test]
    fn an_exact_host_takes_the_schemes_port_when_none_is_written() {
        check(
            "http://mailer.internal",
            &["http://mailer.internal/send", "http://MAILER.internal:80/x?y=1", "http://mailer.internal"],
            &["https://mailer.internal/", "http://mailer.internal:8080/", "http://a.mailer.internal/"],
        );
        check("https://api.example.com/", &["https://api.example.com/v1"], &["http://api.example.com/v1"]);
        check(
            "http://127.0.0.1:8080",
            &["http://127.0.0.1:8080/hook"],
            &["http://127.0.0.1/hook", "http://127.0.0.2:8080/", "http://localhost:8080/"],
        );
        check("http://[::1]:9000", &["http://[::1]:9000/x"], &["http://[::2]:9000/x", "http://127.0.0.1:9000/"]);
    }

    #[test]
    fn wildcards_for_scheme_host_and_port() {
        check("*://*:*", &["http://a.b:1/", "https://10.0.0.1/", "http://[::1]:5/"], &["not a url"]);
        check(
            "https://*.internal",
            &["https://mailer.internal/", "https://a.b.internal/x"],
            &["https://internal/", "https://mailerinternal/", "http://mailer.internal/", "https://x.internal:8443/"],
        );
        check("*://svc:8080", &["http://svc:8080/", "https://svc:8080/"], &["http://svc/"]);
        check("http://svc:*", &["http://svc/", "http://svc:1/"], &["https://svc/"]);
    }

    #[test]
    fn port_ranges_exclude_their_end_as_spin_does() {
        check(
            "http://127.0.0.1:8000..8100",
            &["http://127.0.0.1:8000/", "http://127.0.0.1:8099/"],
            &["http://127.0.0.1:8100/", "http://127.0.0.1:7999/", "http://127.0.0.1/"],
        );
    }

    #[test]
    fn networks_match_addresses_only() {
        check(
            "http://10.0.0.0/8:*",
            &["http://10.1.2.3:8080/", "http://10.255.255.255/"],
            &["http://11.0.0.1/", "http://ten.internal/", "http://[::1]/"],
        );
        // Host bits are dropped, as Spin does.
        check("http://192.168.1.77/24", &["http://192.168.1.5/"], &["http://192.168.2.5/"]);
        check("http://fd00::/8:*", &["http://[fd12::1]:81/"], &["http://[fe80::1]/", "http://10.0.0.1/"]);
    }

    #[test]
    fn empty_entries_allow_nothing() {
        for text in ["", "  ", "http://", "https://"] {
            let hosts = entry(text);
            assert!(hosts.is_empty(), "{text:?}");
            assert!(!hosts.allows("http://127.0.0.1/"), "{text:?}");
        }
        assert!(!entry("http://127.0.0.1").is_empty());
        // `self` names the app's own routes: never an absolute URL.
        check("http://self", &[], &["http://self/", "http://self.alt/"]);
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (text, expected) in [
            ("127.0.0.1:8080", "no scheme"),
            ("{http,https}://a", "scheme lists"),
            ("ht-tp://a", "must be letters"),
            ("http://{a,b}", "host lists"),
            ("http://{a,b}:80", "host lists"),
            ("http://a:{80,81}", "port lists"),
            ("http://a:eighty", "must be a number"),
            ("http://a:70000", "must be a number"),
            ("http://a:1..x", "must be a number"),
            ("http://a:+80", "must be a number"),
            ("*://a", "no well-known one"),
            ("ftp://a", "no well-known one"),
            ("http://a/send", "no path"),
            ("http://a:80/send", "no path"),
            ("http://a*.b", "wildcard"),
            ("http://*.*.b", "not a host name"),
            ("http://*.10.0.0.1", "not an address"),
            ("http://10.0.0.0/33", "prefix length"),
            ("http://1.2.3", "not an IPv4 address"),
            ("http://bad host", "not a host name"),
            ("http://[::1", "closed with ]"),
        ] {
            match AllowedHosts::parse(text) {
                Err(e) => assert!(e.contains(expected), "{text}: {e}"),
                Ok(hosts) => panic!("{text} was accepted: {hosts:?}"),
            }
        }
    }

    #[test]
    fn targets_are_absolute_http_urls_with_a_host_and_nothing_secret() {
        for (url, expected) in [
            ("mailer.internal/send", "not an absolute URL"),
            ("ftp://mailer/x", "http or https"),
            ("http:///send", "no host"),
            ("http://user:pw@mailer/x", "no user info"),
            ("http://mailer/x#frag", "no fragment"),
            ("http://mailer:0/x", "from 1 to 65535"),
            ("http://mailer:/x", "must be a number"),
            ("http://mai ler/x", "no spaces"),
            ("http://mailé.fr/x", "xn--"),
            ("http://[::1/x", "closed with ]"),
        ] {
            match Destination::parse(url) {
                Err(e) => assert!(e.contains(expected), "{url}: {e}"),
                Ok(to) => panic!("{url} was accepted: {to:?}"),
            }
        }
        let to = Destination::parse("HTTPS://Mailer.Internal?x=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(to, Destination { scheme: "https".into(), host: Host::Name("mailer.internal".into()), port: 443 });
    }
}
