//! Host patterns and injection kinds: the vocabulary grants and network
//! rules share with the proxy.

/// How a secret goes into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// A header, replacing any value the child sent.
    Header {
        /// Header name.
        name: String,
        /// Value template containing `{secret}`.
        format: String,
    },
    /// `Authorization: Basic base64(username:secret)`.
    Basic {
        /// The user name.
        username: String,
    },
    /// A query parameter.
    Query {
        /// Its name.
        param: String,
    },
}

/// A host pattern: exact, or `*.` for any subdomain (not the apex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    suffix: Option<String>,
    exact: Option<String>,
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.exact, &self.suffix) {
            (Some(host), _) => f.write_str(host),
            (None, Some(suffix)) => write!(f, "*{suffix}"),
            (None, None) => Ok(()),
        }
    }
}

impl HostPattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (wild, host) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "{text:?} is not a host pattern: expected a lowercase host name such as \
                 api.github.com, or *.example.com for its subdomains (no scheme, port or path)"
            ));
        }
        Ok(if wild {
            Self {
                suffix: Some(format!(".{host}")),
                exact: None,
            }
        } else {
            Self {
                suffix: None,
                exact: Some(host.to_owned()),
            }
        })
    }

    /// Whether `host` (any case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        match (&self.exact, &self.suffix) {
            (Some(exact), _) => host.eq_ignore_ascii_case(exact),
            (None, Some(suffix)) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            (None, None) => false,
        }
    }
}

/// Refuses a URL where a host (and port) is expected, saying what to
/// write instead: `https://api.example.com:8443/v1` is
/// `api.example.com:8443`, `https://x` is `x:443`.
fn not_a_url(text: &str) -> Result<(), String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let example = if authority.contains(':') || authority.is_empty() {
        authority.to_owned()
    } else {
        let port = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => 80,
            _ => 443,
        };
        format!("{authority}:{port}")
    };
    Err(format!(
        "{text:?} is a URL; expected a host or host:port, as in {example:?}"
    ))
}

/// A network allow rule: a host pattern with an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    host: HostPattern,
    port: Option<u16>,
}

impl AllowRule {
    /// Parses `host`, `*.example.com` or either with `:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        not_a_url(text)?;
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("{text:?}: {p:?} is not a port"))?,
                ),
            ),
            _ => (text, None),
        };
        Ok(Self {
            host: HostPattern::parse(host)?,
            port,
        })
    }

    /// Whether `host:port` is allowed by this rule.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.host.matches(host)
    }
}

/// A host a grant's secret may go to: a pattern and, optionally, the one
/// port it covers. Without a port a grant covers 443 over TLS, and 80 in
/// clear (which only a `plaintext` grant may use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantHost {
    pattern: HostPattern,
    port: Option<u16>,
}

impl std::fmt::Display for GrantHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.pattern),
            None => write!(f, "{}", self.pattern),
        }
    }
}

impl GrantHost {
    /// Parses `host`, `*.example.com` or either with `:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        not_a_url(text)?;
        let (host, port) = match text.rsplit_once(':').filter(|_| !text.contains('/')) {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        format!("{text:?}: {port:?} is not a port (expected 1-65535, as in api.example.com:8443)")
                    })?;
                (host, Some(port))
            }
            None => (text, None),
        };
        let pattern = HostPattern::parse(host).map_err(|e| {
            e.replace(
                "(no scheme, port or path)",
                "optionally with :port (no scheme or path)",
            )
        })?;
        Ok(Self { pattern, port })
    }

    /// Whether a request to `host:port`, over TLS or in clear, is covered.
    pub fn matches(&self, host: &str, port: u16, tls: bool) -> bool {
        let default_port = if tls { 443 } else { 80 };
        self.port.unwrap_or(default_port) == port && self.pattern.matches(host)
    }

    /// The public suffix (Mozilla's list, ICANN and private sections)
    /// this pattern names whole, if any: `com`, `*.co.uk`, `*.github.io`
    /// (each covers every site registered under it). Names the list does
    /// not know (`localhost`, `internal`) are not suffixes.
    pub fn public_suffix(&self) -> Option<String> {
        let text = self.pattern.to_string();
        let name = text.strip_prefix("*.").unwrap_or(&text);
        let suffix = psl::suffix(name.as_bytes())?;
        (suffix.is_known() && suffix.as_bytes() == name.as_bytes()).then(|| name.to_owned())
    }

    /// Whether `host` matches, whatever the port.
    pub fn matches_host(&self, host: &str) -> bool {
        self.pattern.matches(host)
    }

    /// The one destination this names over TLS (`host`, port or 443);
    /// `None` for a wildcard, which names no single host.
    pub fn tls_destination(&self) -> Option<(&str, u16)> {
        let host = self.pattern.exact.as_deref()?;
        Some((host, self.port.unwrap_or(443)))
    }
}

/// Names that are denied whatever a run allows: cloud metadata services
/// hand out credentials of their own.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata",
    "metadata.azure.internal",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
];

/// Metadata and host-agent addresses outside the link-local range (which
/// is denied whole: AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Hetzner,
/// Oracle, Tencent's 169.254.0.23 all live there).
const METADATA_V4: &[std::net::Ipv4Addr] = &[
    // Alibaba Cloud's metadata service.
    std::net::Ipv4Addr::new(100, 100, 100, 200),
    // Azure's WireServer (host agent; hands out VM extension settings).
    std::net::Ipv4Addr::new(168, 63, 129, 16),
    // Oracle Cloud's legacy metadata address.
    std::net::Ipv4Addr::new(192, 0, 0, 192),
];

/// IPv6 metadata addresses.
const METADATA_V6: &[std::net::Ipv6Addr] = &[
    // AWS's instance metadata service.
    std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    // Google Compute Engine's metadata server.
    std::net::Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
];

/// The one check every IP literal and every resolved address goes
/// through: IPv6 forms that carry an IPv4 address (IPv4-mapped
/// `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96` and the
/// local-use `64:ff9b:1::/48`) are judged as that IPv4 address; link-local
/// addresses (where most metadata services live, 169.254.169.254 among
/// them) and the metadata addresses of [`METADATA_V4`] and [`METADATA_V6`]
/// are denied.
pub fn is_denied_address(ip: std::net::IpAddr) -> bool {
    let v4_denied = |v4: std::net::Ipv4Addr| v4.is_link_local() || METADATA_V4.contains(&v4);
    match embedded_v4(ip) {
        Some(v4) => v4_denied(v4),
        None => match ip {
            std::net::IpAddr::V4(v4) => v4_denied(v4),
            std::net::IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80 || METADATA_V6.contains(&v6)
            }
        },
    }
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms
/// that carry one.
fn embedded_v4(ip: std::net::IpAddr) -> Option<std::net::Ipv4Addr> {
    let std::net::IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let low = std::net::Ipv4Addr::from(u128::from(v6) as u32);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    // ::/96 less :: and ::1, which are not IPv4 addresses.
    let compatible = s[..6] == [0; 6] && u32::from(low) > 1;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let nat64_local = s[..3] == [0x64, 0xff9b, 1];
    (mapped || compatible || nat64 || nat64_local).then_some(low)
}

/// Whether `host` names a metadata service or is an IP literal that
/// [`is_denied_address`] refuses.
pub fn is_metadata(host: &str) -> bool {
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    METADATA_NAMES.iter().any(|m| bare.eq_ignore_ascii_case(m))
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(is_denied_address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_exactly_or_subdomains() {
        let exact = HostPattern::parse("api.github.com").unwrap();
        assert!(exact.matches("api.github.com") && exact.matches("API.GitHub.com"));
        assert!(!exact.matches("xapi.github.com") && !exact.matches("api.github.com.evil.io"));
        let wild = HostPattern::parse("*.githubusercontent.com").unwrap();
        assert!(
            wild.matches("raw.githubusercontent.com") && wild.matches("a.b.githubusercontent.com")
        );
        assert!(
            !wild.matches("githubusercontent.com") && !wild.matches("evilgithubusercontent.com")
        );
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.com",
            "A.com",
            "a.com:443",
            "http://a.com",
            "a/b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_rules_take_ports_and_metadata_is_recognised() {
        let r = AllowRule::parse("localhost:8443").unwrap();
        assert!(r.matches("localhost", 8443) && !r.matches("localhost", 443));
        assert!(
            AllowRule::parse("*.example.com")
                .unwrap()
                .matches("a.example.com", 1)
        );
        assert!(AllowRule::parse("x.com:http").is_err());
    }

    #[test]
    fn grant_hosts_cover_443_or_their_port_and_80_only_in_clear() {
        let plain = GrantHost::parse("api.example.com").unwrap();
        assert!(plain.matches("api.example.com", 443, true));
        assert!(!plain.matches("api.example.com", 8444, true));
        assert!(!plain.matches("api.example.com", 80, true));
        assert!(plain.matches("api.example.com", 80, false));
        assert!(!plain.matches("api.example.com", 443, false));
        let ported = GrantHost::parse("*.example.com:8443").unwrap();
        assert!(ported.matches("a.example.com", 8443, true));
        assert!(ported.matches("a.example.com", 8443, false));
        assert!(!ported.matches("a.example.com", 443, true));
        assert_eq!(ported.to_string(), "*.example.com:8443");
        for bad in [
            "a.com:",
            "a.com:0",
            "a.com:99999",
            "a.com:x",
            "[::1]:443",
            "a.com:443/x",
        ] {
            assert!(GrantHost::parse(bad).is_err(), "{bad}");
        }
        assert!(
            GrantHost::parse("a.com:x")
                .unwrap_err()
                .contains("not a port")
        );
        for m in [
            "169.254.169.254",
            "metadata.google.internal",
            "METADATA.google.internal.",
            "[fe80::1]",
            "169.254.1.2",
            "fd00:ec2::254",
            "fd20:ce::254",
            "100.100.100.200",
            "168.63.129.16",
            "192.0.0.192",
            "[::ffff:100.100.100.200]",
            "[64:ff9b::a83f:8110]",
            "metadata",
            "instance-data.ec2.internal",
            "metadata.tencentyun.com",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]",
            "[::169.254.169.254]",
            "[64:ff9b::a9fe:a9fe]",
            "[64:ff9b::169.254.169.254]",
            "[64:ff9b:1::a9fe:a9fe]",
            "[0:0:0:0:0:ffff:a9fe:1]",
        ] {
            assert!(is_metadata(m), "{m}");
        }
        for fine in [
            "127.0.0.1",
            "example.com",
            "[::1]",
            "[::]",
            "[::ffff:127.0.0.1]",
            "[64:ff9b::808:808]",
            "[2001:db8::a9fe:a9fe]",
        ] {
            assert!(!is_metadata(fine), "{fine}");
        }
    }
}
