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

/// A network allow rule: a host pattern with an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    host: HostPattern,
    port: Option<u16>,
}

impl AllowRule {
    /// Parses `host`, `*.example.com` or either with `:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
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

/// Names and addresses that are denied whatever a run allows: cloud
/// metadata services hand out credentials of their own.
const METADATA_HOSTS: &[&str] = &[
    "169.254.169.254",
    "fd00:ec2::254",
    "metadata.google.internal",
    "metadata.azure.internal",
];

/// Whether an address is link-local (where metadata services live).
pub fn is_link_local(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            let aws = std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == aws
        }
    }
}

/// Whether `host` names a metadata service or a link-local address.
pub fn is_metadata(host: &str) -> bool {
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    METADATA_HOSTS.iter().any(|m| bare.eq_ignore_ascii_case(m))
        || bare.parse::<std::net::IpAddr>().is_ok_and(is_link_local)
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
        for m in [
            "169.254.169.254",
            "metadata.google.internal",
            "[fe80::1]",
            "169.254.1.2",
            "fd00:ec2::254",
        ] {
            assert!(is_metadata(m), "{m}");
        }
        assert!(!is_metadata("127.0.0.1") && !is_metadata("example.com"));
    }
}
