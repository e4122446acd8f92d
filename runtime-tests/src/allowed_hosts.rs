//! A component's `allowed_outbound_hosts`, parsed and checked as Spin 4.1 does it
//! (outbound-networking-config/src/allowed_hosts.rs; the load-time check is loader/src/local.rs,
//! the log line on a refusal runtime-factors/src/lib.rs). Outbound Redis and outbound HTTP
//! both ask `check_url`.
//!
//! An entry is `<scheme>://<host>[:<port>]`: the scheme may be `*`; the host an exact name or
//! address, `*`, `*.domain` or a CIDR; the port a number, `*` or a range `a..b` (`b`
//! excluded), or absent for the scheme's well-known port. A literal entry that does not parse
//! stops the app at load; so does a template whose variables' *defaults* give a bad entry. A
//! template that resolves empty (or to a bare `http://` / `https://`) is skipped: an optional
//! endpoint. A template whose resolved value is bad does not stop the app: every check then
//! refuses (Spin resolves templates per instance and logs the error).

use anyhow::{Context, bail, ensure};
use std::collections::HashMap;
use std::net::IpAddr;
use url::Host;

/// What a component may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    Hosts(Vec<AllowedHost>),
    /// A resolved template did not parse: nothing is allowed.
    Invalid(String),
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `None` for `*://`.
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.domain`, kept as `.domain`.
    AnySubdomain(String),
    /// `self` / `self.alt`: relative ("self") requests only.
    ToSelf,
    Literal(Host),
    Cidr(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Port(u16),
    /// `start..end`, `end` excluded (a Rust `Range`, as Spin parses it).
    Range(u16, u16),
}

impl AllowedHosts {
    /// The component's entries as the manifest writes them. `defaults` holds the variables'
    /// manifest defaults only (what Spin's loader validates templates with), `values` their
    /// values for this run.
    pub fn load(
        entries: &[String],
        defaults: &HashMap<String, String>,
        values: &HashMap<String, String>,
    ) -> anyhow::Result<AllowedHosts> {
        if entries.len() == 1 && entries[0] == "insecure:allow-all" {
            bail!(
                "'insecure:allow-all' is not allowed - use '*://*:*' instead if you really want to allow all outbound traffic'"
            );
        }
        let mut hosts = Vec::new();
        let mut invalid = None;
        for entry in entries {
            if !entry.contains("{{") {
                hosts.push(AllowedHost::parse(entry).context("`allowed_outbound_hosts` is malformed")?);
                continue;
            }
            // A variable without a default cannot be validated at load.
            if let Ok(resolved) = crate::manifest::resolve(entry, defaults) {
                parse_or_skip(&resolved).with_context(|| {
                    format!(
                        "using default variable value(s) with template {entry:?} results in invalid config {resolved:?}"
                    )
                })?;
            }
            let resolved = crate::manifest::resolve(entry, values)?;
            match parse_or_skip(&resolved) {
                Ok(host) => hosts.extend(host),
                Err(e) => invalid = Some(format!("{resolved:?}: {e:#}")),
            }
        }
        Ok(match invalid {
            Some(error) => AllowedHosts::Invalid(error),
            None => AllowedHosts::Hosts(hosts),
        })
    }

    /// Whether `url` may be reached; `default_scheme` is assumed when `url` has none. Logs a
    /// refusal as `spin up` does.
    pub fn check_url(&self, url: &str, default_scheme: &str) -> bool {
        let hosts = match self {
            AllowedHosts::Hosts(hosts) => hosts,
            AllowedHosts::Invalid(error) => {
                tracing::error!(%error, "error.type" = "invalid_allowed_hosts", "Error parsing allowed outbound hosts");
                return false;
            }
        };
        let Some(url) = OutboundUrl::parse(url, default_scheme) else {
            tracing::warn!("A component tried to make a request to a url that could not be parsed: {url}");
            return false;
        };
        let allowed = hosts.iter().any(|h| h.allows(&url));
        if !allowed {
            let pattern = match url.port {
                Some(port) => format!("{}://{}:{port}", url.scheme, url.host),
                None => format!("{}://{}", url.scheme, url.host),
            };
            tracing::error!("Outbound network destination not allowed: {pattern}");
            eprintln!(
                "Warning: A component tried to make an outbound network connection to disallowed destination '{pattern}'."
            );
            eprintln!(
                "To allow this request, add 'allowed_outbound_hosts = [\"{pattern}\"]' to the manifest component section."
            );
        }
        allowed
    }

    /// Whether relative ("self") requests to one of `schemes` are allowed (no log: the caller
    /// words it).
    pub fn allows_relative(&self, schemes: &[&str]) -> bool {
        match self {
            AllowedHosts::Hosts(hosts) => hosts.iter().any(|h| {
                matches!(h.host, HostPattern::Any | HostPattern::ToSelf) && schemes.iter().any(|s| h.allows_scheme(s))
            }),
            AllowedHosts::Invalid(_) => false,
        }
    }
}

/// An empty variable may leave an empty entry: skipped (only for templates; an empty literal
/// is an error).
fn parse_or_skip(resolved: &str) -> anyhow::Result<Option<AllowedHost>> {
    if resolved.is_empty() || resolved == "http://" || resolved == "https://" {
        Ok(None)
    } else {
        AllowedHost::parse(resolved).map(Some)
    }
}

impl AllowedHost {
    pub fn parse(entry: &str) -> anyhow::Result<AllowedHost> {
        let url = entry.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("{url:?} does not contain a scheme (e.g., 'http://' or '*://')");
        };
        let (host, port) = match rest.rsplit_once(':') {
            None => (rest, ""),
            Some((h, "")) => (h, ""),
            // An IPv6 address or network has colons of its own.
            Some(_) if HostPattern::parse(rest).is_ok() => (rest, ""),
            Some((h, tail)) => match tail.split_once('/') {
                Some((_, path)) if !path.is_empty() => bail!("{url:?} has a path but is not allowed to"),
                Some((port, _)) => (h, port),
                None => (h, tail),
            },
        };
        let port = PortPattern::parse(port, scheme).with_context(|| format!("Invalid allowed host port {port:?}"))?;
        let scheme = match scheme {
            "*" => None,
            s if s.starts_with('{') => bail!("Invalid allowed host scheme {s:?}: scheme lists are not supported"),
            s if !s.chars().all(char::is_alphabetic) => {
                bail!("Invalid allowed host scheme {s:?}: only alphabetic characters are allowed")
            }
            s => Some(s.to_string()),
        };
        let host = HostPattern::parse(host).with_context(|| format!("Invalid allowed host {host:?}"))?;
        Ok(AllowedHost { scheme, host, port })
    }

    fn allows_scheme(&self, scheme: &str) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
    }

    fn allows(&self, url: &OutboundUrl) -> bool {
        self.allows_scheme(&url.scheme) && self.host.allows(&url.host) && self.port.allows(url.port, &url.scheme)
    }
}

impl HostPattern {
    fn parse(host: &str) -> anyhow::Result<HostPattern> {
        let host = host.trim();
        if host == "*" {
            return Ok(HostPattern::Any);
        }
        if host == "self" || host == "self.alt" {
            return Ok(HostPattern::ToSelf);
        }
        if host.starts_with('{') {
            ensure!(host.ends_with('}'));
            bail!("host lists are not yet supported");
        }
        if let Some(cidr) = parse_cidr(host) {
            return Ok(cidr);
        }
        let host = host.strip_suffix('/').unwrap_or(host);
        ensure!(!host.contains('/'), "must not include a path");
        if let Some(domain) = host.strip_prefix("*.") {
            ensure!(!domain.contains('*'), "wildcards are allowed only as prefixes");
            let Host::Domain(domain) =
                Host::parse(domain).with_context(|| format!("invalid wildcard host \"*.{domain}\""))?
            else {
                bail!("wildcard suffix must be a domain");
            };
            return Ok(HostPattern::AnySubdomain(format!(".{domain}")));
        }
        ensure!(!host.contains('*'), "wildcards are allowed only as subdomains");
        Ok(HostPattern::Literal(Host::parse(host)?))
    }

    fn allows(&self, host: &str) -> bool {
        let Ok(host) = Host::parse(host) else { return false };
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::AnySubdomain(suffix), Host::Domain(domain)) => domain.ends_with(suffix.as_str()),
            (HostPattern::Literal(literal), host) => host == *literal,
            (HostPattern::Cidr(network, bits), Host::Ipv4(ip)) => in_network(*network, *bits, IpAddr::V4(ip)),
            (HostPattern::Cidr(network, bits), Host::Ipv6(ip)) => in_network(*network, *bits, IpAddr::V6(ip)),
            _ => false,
        }
    }
}

/// `address` or `address/bits`, host bits dropped (ip_network's `from_str_truncate`).
fn parse_cidr(text: &str) -> Option<HostPattern> {
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address.parse::<IpAddr>().ok()?, bits.parse::<u8>().ok()?),
        None => {
            let address = text.parse::<IpAddr>().ok()?;
            (address, if address.is_ipv4() { 32 } else { 128 })
        }
    };
    let width = if address.is_ipv4() { 32 } else { 128 };
    (bits <= width).then(|| HostPattern::Cidr(truncate(address, bits), bits))
}

fn truncate(address: IpAddr, bits: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) & u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)).into()),
    }
}

fn in_network(network: IpAddr, bits: u8, ip: IpAddr) -> bool {
    network.is_ipv4() == ip.is_ipv4() && truncate(ip, bits) == network
}

impl PortPattern {
    fn parse(port: &str, scheme: &str) -> anyhow::Result<PortPattern> {
        if port.is_empty() {
            return well_known_port(scheme).map(PortPattern::Port).with_context(|| {
                format!("no port was provided and the scheme {scheme:?} does not have a known default port number")
            });
        }
        if port == "*" {
            return Ok(PortPattern::Any);
        }
        ensure!(!port.starts_with('{'), "port lists are not yet supported");
        if let Some((start, end)) = port.split_once("..") {
            let number = |p: &str| p.parse().with_context(|| format!("port range {port:?} contains non-number"));
            return Ok(PortPattern::Range(number(start)?, number(end)?));
        }
        Ok(PortPattern::Port(port.parse().with_context(|| format!("port {port:?} is not a number"))?))
    }

    fn allows(&self, port: Option<u16>, scheme: &str) -> bool {
        let Some(port) = port.or_else(|| well_known_port(scheme)) else {
            return matches!(self, PortPattern::Any);
        };
        match self {
            PortPattern::Any => true,
            PortPattern::Port(p) => *p == port,
            PortPattern::Range(start, end) => (*start..*end).contains(&port),
        }
    }
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "redis" => Some(6379),
        "mqtt" => Some(1883),
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The scheme, host and explicit port of a URL (`None` for a special scheme's default port,
/// as the `url` crate reports it).
struct OutboundUrl {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl OutboundUrl {
    /// Without a scheme (or a host), tries again with `default_scheme://` in front.
    fn parse(url: &str, default_scheme: &str) -> Option<OutboundUrl> {
        // Only the host and port matter: drop any user info, whatever its characters.
        let without_userinfo = |url: &str| match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find('/').unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                    None => url.to_string(),
                }
            }
            None => url.to_string(),
        };
        let parsed = match url::Url::parse(&without_userinfo(url)) {
            Ok(parsed) if parsed.has_host() => parsed,
            _ => url::Url::parse(&without_userinfo(&format!("{default_scheme}://{url}"))).ok()?,
        };
        Some(OutboundUrl {
            scheme: parsed.scheme().to_string(),
            host: parsed.host_str()?.to_string(),
            port: parsed.port(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        let entries = entries.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        AllowedHosts::load(&entries, &HashMap::new(), &HashMap::new()).expect("valid entries")
    }

    #[test]
    fn redis_addresses_match_scheme_host_and_port() {
        let allowed = hosts(&["redis://127.0.0.1:6379", "redis://*:7000"]);
        assert!(allowed.check_url("redis://127.0.0.1:6379", "redis"));
        assert!(allowed.check_url("redis://127.0.0.1", "redis"));
        assert!(allowed.check_url("redis://127.0.0.1:6379/0", "redis"));
        assert!(allowed.check_url("redis://:secret@127.0.0.1:6379", "redis"));
        assert!(allowed.check_url("redis://example.com:7000", "redis"));
        assert!(!allowed.check_url("redis://127.0.0.1:6380", "redis"));
        assert!(!allowed.check_url("rediss://127.0.0.1:6379", "redis"));
        assert!(!allowed.check_url("not a url", "redis"));
    }

    #[test]
    fn http_urls_match_exact_hosts_with_default_ports() {
        let allowed = hosts(&["http://localhost:3000", "https://api.example.com"]);
        assert!(allowed.check_url("http://localhost:3000/hook?x=1", "https"));
        assert!(!allowed.check_url("http://localhost:3001/hook", "https"));
        assert!(!allowed.check_url("https://localhost:3000/hook", "https"));
        assert!(allowed.check_url("https://api.example.com/v1", "https"));
        assert!(allowed.check_url("https://API.example.com:443/v1", "https"));
        assert!(!allowed.check_url("http://api.example.com/v1", "https"));
        assert!(!allowed.check_url("https://api.example.com:8443/v1", "https"));
        assert!(!allowed.check_url("https://evil.com/api.example.com", "https"));
    }

    #[test]
    fn wildcards_cidrs_and_port_ranges() {
        let allowed =
            hosts(&["https://*.example.com", "http://10.0.0.0/8:*", "*://127.0.0.1:8000..8100", "http://[::1]:*"]);
        assert!(allowed.check_url("https://a.b.example.com/", "https"));
        assert!(!allowed.check_url("https://example.com/", "https"));
        assert!(!allowed.check_url("https://10.1.2.3/", "https"));
        assert!(allowed.check_url("http://10.1.2.3:9999/", "https"));
        assert!(!allowed.check_url("http://11.1.2.3/", "https"));
        assert!(allowed.check_url("http://127.0.0.1:8000/", "https"));
        assert!(allowed.check_url("redis://127.0.0.1:8099", "redis"));
        assert!(!allowed.check_url("http://127.0.0.1:8100/", "https"));
        assert!(allowed.check_url("http://[::1]:5/", "https"));
        assert!(hosts(&["*://*:*"]).check_url("http://anything:1/", "https"));
    }

    #[test]
    fn malformed_literals_are_refused() {
        for bad in [
            "example.com",
            "*",
            "http://{a,b}.com",
            "http://a.*.com",
            "http://example.com/path",
            "*://example.com",
            "http://x:port",
            "{http,https}://x",
        ] {
            let entries = vec![bad.to_string()];
            assert!(AllowedHosts::load(&entries, &HashMap::new(), &HashMap::new()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn templates_resolve_and_empty_ones_are_skipped() {
        let entries = vec!["{{ redis_address }}".to_string(), "{{ delivery_hosts }}".to_string()];
        let defaults = HashMap::from([
            ("redis_address".to_string(), "redis://127.0.0.1:6379".to_string()),
            ("delivery_hosts".to_string(), String::new()),
        ]);
        let allowed = AllowedHosts::load(&entries, &defaults, &defaults).expect("an empty template is skipped");
        assert!(allowed.check_url("redis://127.0.0.1:6379", "redis"));
        assert!(!allowed.check_url("http://127.0.0.1:3000/", "https"));

        let mut values = defaults.clone();
        values.insert("delivery_hosts".into(), "http://127.0.0.1:3000".into());
        let allowed = AllowedHosts::load(&entries, &defaults, &values).expect("valid");
        assert!(allowed.check_url("http://127.0.0.1:3000/", "https"));

        // A bad value from an override: the app runs, and nothing is allowed.
        values.insert("delivery_hosts".into(), "not a host".into());
        let allowed = AllowedHosts::load(&entries, &defaults, &values).expect("checked at use, not at load");
        assert!(matches!(allowed, AllowedHosts::Invalid(_)));
        assert!(!allowed.check_url("redis://127.0.0.1:6379", "redis"));

        // A bad default stops the app at load.
        let mut bad_defaults = defaults.clone();
        bad_defaults.insert("delivery_hosts".into(), "not a host".into());
        assert!(AllowedHosts::load(&entries, &bad_defaults, &values).is_err());
    }

    #[test]
    fn relative_requests_need_self_or_any() {
        assert!(hosts(&["http://self"]).allows_relative(&["http", "https"]));
        assert!(!hosts(&["http://localhost:3000"]).allows_relative(&["http", "https"]));
    }
}
