//! Application addresses: `tcp:HOST:PORT`, `udp:HOST:PORT` and `unix:/path/to/socket`
//! (SPEC §3, §11).
//!
//! Used for the client's `--listen-on`, for tokens and for targets. The scheme is
//! case-insensitive; `tcp4:` and `tcp6:` (written by the original's clients) are aliases of
//! `tcp:`. HOST is an IPv4 address, a bracketed IPv6 address or a DNS name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// Where an application listens or can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(HostPort),
    /// A UDP application: each source address is a flow (SPEC §11).
    Udp(HostPort),
    Unix(PathBuf),
}

/// A host and a port, the host not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// A value that is not an address, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid address {value:?}: {reason} (expected tcp:HOST:PORT, udp:HOST:PORT or unix:/path/to/socket)"
)]
pub struct AddressError {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = |reason| AddressError {
            value: value.to_owned(),
            reason,
        };
        let (scheme, rest) = value.split_once(':').ok_or_else(|| error("no scheme"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "tcp4" | "tcp6" => rest.parse().map(Address::Tcp).map_err(error),
            "udp" => rest.parse().map(Address::Udp).map_err(error),
            "unix" if rest.is_empty() => Err(error("empty socket path")),
            "unix" if rest.contains('\0') => Err(error("NUL byte in socket path")),
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            _ => Err(error("unknown scheme")),
        }
    }
}

impl FromStr for HostPort {
    type Err = &'static str;

    /// Parses `HOST:PORT`, `[IPv6]:PORT`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = value.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or("unclosed '[' in host")?;
            let port = after.strip_prefix(':').ok_or("missing port")?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| "invalid IPv6 address in brackets")?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = value.rsplit_once(':').ok_or("missing port")?;
            if host.contains(':') {
                return Err("an IPv6 address must be in brackets, as [::1]:22");
            }
            (host.parse()?, port)
        };
        let port = port
            .parse()
            .map_err(|_| "port is not a number from 0 to 65535")?;
        Ok(HostPort { host, port })
    }
}

impl FromStr for Host {
    type Err = &'static str;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = value.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        if value.is_empty() {
            return Err("empty host");
        }
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        };
        let name = value.strip_suffix('.').unwrap_or(value);
        if name.len() > 253 || !name.split('.').all(valid_label) {
            return Err("host is neither an IP address nor a DNS name");
        }
        Ok(Host::Name(value.to_owned()))
    }
}

impl HostPort {
    /// Parses a QUIC endpoint's UDP address, the client's `--server-endpoint` or the server's
    /// `--listen-on`: `HOST:PORT` or `[IPv6]:PORT`, where a `tcp:` or `udp:` prefix (any case),
    /// natural after writing application addresses, is accepted and ignored (SPEC §3). A
    /// host named `tcp` or `udp` keeps its name: `udp:7500` is that host's port 7500.
    pub fn parse_endpoint(value: &str) -> Result<HostPort, &'static str> {
        let unprefixed = value
            .split_once(':')
            .filter(|(scheme, rest)| {
                ["tcp", "udp"]
                    .iter()
                    .any(|s| scheme.eq_ignore_ascii_case(s))
                    && rest.contains(':')
            })
            .map_or(value, |(_, rest)| rest);
        unprefixed.parse()
    }

    /// All socket addresses this host and port stand for (DNS for a name).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), self.port))
                .await?
                .collect()),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        HostPort {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(host_port) => write!(f, "tcp:{host_port}"),
            Address::Udp(host_port) => write!(f, "udp:{host_port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Address, AddressError> {
        value.parse()
    }

    #[test]
    fn tcp_forms() {
        let v4 = parse("tcp:127.0.0.1:22").unwrap();
        assert_eq!(v4, Address::Tcp("127.0.0.1:22".parse().unwrap()));
        assert_eq!(v4.to_string(), "tcp:127.0.0.1:22");

        let v6 = parse("TCP:[::1]:8080").unwrap();
        assert_eq!(v6.to_string(), "tcp:[::1]:8080");

        let name = parse("tcp:db.example.internal:5432").unwrap();
        let Address::Tcp(hp) = &name else {
            panic!("{name:?}")
        };
        assert_eq!(hp.host, Host::Name("db.example.internal".into()));
        assert_eq!(hp.port, 5432);
    }

    #[test]
    fn udp_forms() {
        let v4 = parse("UDP:127.0.0.1:53").unwrap();
        assert_eq!(v4, Address::Udp("127.0.0.1:53".parse().unwrap()));
        assert_eq!(v4.to_string(), "udp:127.0.0.1:53");
        assert_eq!(parse("udp:[::1]:53").unwrap().to_string(), "udp:[::1]:53");
        assert_ne!(parse("udp:h:1").unwrap(), parse("tcp:h:1").unwrap());
    }

    #[test]
    fn legacy_tcp4_and_tcp6_are_aliases() {
        assert_eq!(
            parse("tcp4:10.0.0.1:22").unwrap().to_string(),
            "tcp:10.0.0.1:22"
        );
        assert_eq!(
            parse("tcp6:[fe80::1]:22").unwrap().to_string(),
            "tcp:[fe80::1]:22"
        );
    }

    #[test]
    fn unix_forms() {
        assert_eq!(
            parse("unix:/run/app.sock").unwrap(),
            Address::Unix("/run/app.sock".into())
        );
        assert_eq!(parse("Unix:/tmp/x").unwrap().to_string(), "unix:/tmp/x");
    }

    #[test]
    fn errors_name_the_value_and_the_reason() {
        let cases = [
            ("", "no scheme"),
            ("127.0.0.1:22", "unknown scheme"),
            ("udp4:1.2.3.4:5", "unknown scheme"),
            ("udp:1.2.3.4", "missing port"),
            ("tcp:1.2.3.4", "missing port"),
            ("tcp:1.2.3.4:99999", "port is not a number"),
            ("tcp:1.2.3.4:", "port is not a number"),
            ("tcp:::1:22", "brackets"),
            ("tcp:[::1:22", "unclosed"),
            ("tcp:[nope]:22", "invalid IPv6"),
            ("tcp:[::1]22", "missing port"),
            ("tcp::22", "empty host"),
            ("tcp:bad host:22", "neither an IP"),
            ("unix:", "empty socket path"),
        ];
        for (value, reason) in cases {
            let error = parse(value).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(reason), "{value:?} gave {text}");
            assert!(text.contains(&format!("{value:?}")), "{text}");
            assert!(
                text.contains("tcp:HOST:PORT, udp:HOST:PORT or unix:"),
                "{text}"
            );
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        for value in [
            "tcp:[",
            "tcp:]",
            "tcp:[]:1",
            "tcp:.:1",
            "tcp:-a:1",
            "unix:\0",
            "tcp:a..b:1",
        ] {
            let _ = parse(value);
        }
        assert!(parse("tcp:a..b:1").is_err());
        assert!(parse(&format!("tcp:{}:1", "a".repeat(300))).is_err());
    }

    #[test]
    fn endpoints_take_an_ignored_tcp_or_udp_prefix() {
        let endpoint = |value| HostPort::parse_endpoint(value).map(|hp| hp.to_string());
        assert_eq!(endpoint("127.0.0.1:7500"), Ok("127.0.0.1:7500".into()));
        assert_eq!(endpoint("tcp:127.0.0.1:7500"), Ok("127.0.0.1:7500".into()));
        assert_eq!(endpoint("UDP:[::1]:7500"), Ok("[::1]:7500".into()));
        assert_eq!(
            endpoint("udp:tunnel.example:1"),
            Ok("tunnel.example:1".into())
        );
        // A host of that name.
        assert_eq!(endpoint("udp:7500"), Ok("udp:7500".into()));
        let not_a_port = Err("port is not a number from 0 to 65535");
        assert_eq!(endpoint("unix:/run/x.sock"), not_a_port);
        assert_eq!(
            endpoint("tcp:::1:7500"),
            Err("an IPv6 address must be in brackets, as [::1]:22")
        );
        assert_eq!(endpoint("tcp:"), not_a_port);
    }

    #[tokio::test]
    async fn resolves_ip_without_dns() {
        let hp: HostPort = "[::1]:9".parse().unwrap();
        assert_eq!(
            hp.resolve().await.unwrap(),
            vec!["[::1]:9".parse().unwrap()]
        );
    }
}
