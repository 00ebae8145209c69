//! CONNECT authorities and the host rules they meet: the authority a
//! child sends (parsed as the proxy parses it), grant hosts and network
//! allow rules (parsed as the config and `--allow` are), and the metadata
//! address check. A rule matches only its own host or, for `*.`, its
//! subdomains, whatever the case or trailing dot; every IPv6 form that
//! carries an IPv4 address is judged as that address.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hyper::http::uri::Authority;
use keyward_fuzz::Input;
use keyward_proxy::{AllowRule, GrantHost, is_denied_address, is_metadata};
use libfuzzer_sys::fuzz_target;

/// What a rule's text says: its host (wildcard or not) and port.
fn spelled(rule: &str) -> (bool, String, Option<u16>) {
    let (host, port) = match rule.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().expect("a parsed rule shows its port"))),
        None => (rule, None),
    };
    match host.strip_prefix("*.") {
        Some(suffix) => (true, suffix.to_owned(), port),
        None => (false, host.to_owned(), port),
    }
}

/// Whether `host` is the rule's host, or a subdomain of it for `*.`.
fn names(wild: bool, pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if wild {
        host.len() > pattern.len() + 1 && host.ends_with(&format!(".{pattern}"))
    } else {
        host == pattern
    }
}

/// Link-local, or a metadata service outside that range (Alibaba, Azure's
/// WireServer, Oracle's legacy address).
fn denied_v4(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == [169, 254]
        || [[100, 100, 100, 200], [168, 63, 129, 16], [192, 0, 0, 192]].contains(&ip.octets())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let rule_len = usize::from(input.byte());
    let rule = String::from_utf8_lossy(input.bytes(rule_len)).into_owned();
    let ip_bytes: [u8; 16] = std::array::from_fn(|_| input.byte());
    let authority_bytes = input.0;

    // Addresses: each IPv6 form carrying an IPv4 address is judged as it,
    // and the text check agrees with the address check.
    let v4 = Ipv4Addr::new(ip_bytes[0], ip_bytes[1], ip_bytes[2], ip_bytes[3]);
    let v6 = Ipv6Addr::from(ip_bytes);
    let [a, b] = [
        u16::from_be_bytes([ip_bytes[0], ip_bytes[1]]),
        u16::from_be_bytes([ip_bytes[2], ip_bytes[3]]),
    ];
    assert_eq!(is_denied_address(IpAddr::V4(v4)), denied_v4(v4));
    for carrier in [
        v4.to_ipv6_mapped(),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, a, b),
        Ipv6Addr::new(0x64, 0xff9b, 1, ip_bytes[4].into(), 0, 0, a, b),
    ] {
        assert_eq!(
            is_denied_address(IpAddr::V6(carrier)),
            denied_v4(v4),
            "{carrier} carries {v4}"
        );
    }
    if v6.segments()[0] & 0xffc0 == 0xfe80 {
        assert!(is_denied_address(IpAddr::V6(v6)), "{v6} is link-local");
    }
    for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
        let denied = is_denied_address(ip);
        let text = ip.to_string();
        assert_eq!(is_metadata(&text), denied, "{text}");
        assert_eq!(is_metadata(&format!("[{text}]")), denied, "[{text}]");
    }

    // The authority of a CONNECT, as the proxy reads it.
    let Ok(authority) = Authority::try_from(authority_bytes) else {
        return;
    };
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(443);
    let _ = is_metadata(host);

    if let Ok(grant) = GrantHost::parse(&rule) {
        let shown = grant.to_string();
        assert_eq!(GrantHost::parse(&shown).as_ref(), Ok(&grant), "{shown}");
        let (wild, pattern, rule_port) = spelled(&shown);
        for tls in [true, false] {
            let default_port = if tls { 443 } else { 80 };
            let expected = rule_port.unwrap_or(default_port) == port && names(wild, &pattern, host);
            assert_eq!(
                grant.matches(host, port, tls),
                expected,
                "{shown} vs {host}:{port}"
            );
        }
        assert_eq!(grant.matches_host(host), names(wild, &pattern, host));
    }
    if let Ok(allow) = AllowRule::parse(&rule) {
        let (wild, pattern, rule_port) = spelled(&rule);
        let expected = rule_port.is_none_or(|p| p == port) && names(wild, &pattern, host);
        assert_eq!(
            allow.matches(host, port),
            expected,
            "{rule} vs {host}:{port}"
        );
    }
});
