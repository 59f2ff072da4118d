//! The server's target policy: which targets tokens may name (`--allow-target`, SPEC §7).
//!
//! Rules are `CIDR`, `CIDR:PORT`, `CIDR:LOW-HIGH` (an IPv6 block with a port is bracketed:
//! `[2001:db8::/32]:22`), `HOST:PORT` and `unix:/dir/`. A target is allowed when any rule
//! matches. CIDR rules match the address actually dialed, after name resolution, so a name
//! cannot smuggle a connection to a denied address; `HOST:PORT` matches the name as the token
//! gives it; `unix:/dir/` matches socket paths under that directory once symlinks and `..`
//! are resolved. `any` stands alone and allows every target: an open relay, which the server
//! binary accepts only when asked by name (fail closed, SPEC §7). Without any rule nothing is
//! allowed.
//!
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) means its IPv4 address, in rules and in
//! targets, and an unspecified target address (`0.0.0.0`, `::`) is never allowed: it would
//! reach this machine.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::wire::addr::{Host, HostPort};

/// The set of `--allow-target` rules.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `any`: every target.
    Any,
    Block {
        network: IpAddr,
        prefix: u8,
        ports: Option<(u16, u16)>,
    },
    Name {
        host: String,
        port: u16,
    },
    UnixDir(PathBuf),
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --allow-target {value:?}: {reason} (expected CIDR, CIDR:PORT, CIDR:LOW-HIGH, HOST:PORT, unix:/dir/ or any)"
)]
pub struct RuleError {
    pub value: String,
    pub reason: String,
}

impl Policy {
    /// Parses every rule; the first bad one is the error. `any` must stand alone.
    pub fn new<S: AsRef<str>>(rules: &[S]) -> Result<Policy, RuleError> {
        let rules: Vec<Rule> = rules
            .iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<_, _>>()?;
        if rules.len() > 1 && rules.contains(&Rule::Any) {
            return Err(RuleError {
                value: "any".into(),
                reason: "any allows every target and stands alone, without other rules".into(),
            });
        }
        Ok(Policy { rules })
    }

    /// An open relay: every target allowed (but never an unspecified address).
    pub fn any() -> Policy {
        Policy {
            rules: vec![Rule::Any],
        }
    }

    /// Whether this is `any`, an open relay.
    pub fn is_open(&self) -> bool {
        self.rules == [Rule::Any]
    }

    /// Whether no rule was given: nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a `HOST:PORT` rule allows this target by its name (then every address the
    /// name resolves to may be dialed).
    pub fn allows_name(&self, target: &HostPort) -> bool {
        let Host::Name(name) = &target.host else {
            return false;
        };
        let name = name.trim_end_matches('.');
        self.rules.iter().any(|rule| match rule {
            Rule::Name { host, port } => *port == target.port && host.eq_ignore_ascii_case(name),
            _ => false,
        })
    }

    /// Whether an address about to be dialed is allowed.
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        let ip = canonical_ip(addr.ip());
        if ip.is_unspecified() {
            return false;
        }
        self.rules.iter().any(|rule| match *rule {
            Rule::Any => true,
            Rule::Block {
                network,
                prefix,
                ports,
            } => {
                network.is_ipv4() == ip.is_ipv4()
                    && mask(ip, prefix) == network
                    && ports.is_none_or(|(low, high)| (low..=high).contains(&addr.port()))
            }
            Rule::Name { .. } | Rule::UnixDir(_) => false,
        })
    }

    /// Whether a UNIX socket path is allowed, judged on its real location.
    pub fn allows_unix(&self, path: &Path) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(real) = real_path(path) else {
            return false;
        };
        self.rules.iter().any(|rule| match rule {
            Rule::UnixDir(dir) => real.starts_with(real_path(dir).unwrap_or_else(|| dir.clone())),
            _ => false,
        })
    }
}

/// The path with symlinks and `..` resolved; the socket itself need not exist, its directory
/// must.
fn real_path(path: &Path) -> Option<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Some(real);
    }
    let parent = std::fs::canonicalize(path.parent()?).ok()?;
    let name = path.file_name()?;
    (name != "..").then(|| parent.join(name))
}

/// An IPv4-mapped IPv6 address is the IPv4 address it carries.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A rule's block with an IPv4-mapped network as the IPv4 block it means: `::ffff:a.b.c.d/P`
/// is a.b.c.d/(P−96). A mapped block shorter than /96 reaches beyond the mapped range.
fn canonical_block(network: IpAddr, prefix: u8) -> Result<(IpAddr, u8), &'static str> {
    match network {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(_) if prefix < 96 => Err("a mapped IPv6 block needs a prefix of 96 or more"),
            Some(v4) => Ok((IpAddr::V4(v4), prefix - 96)),
            None => Ok((network, prefix)),
        },
        IpAddr::V4(_) => Ok((network, prefix)),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| RuleError {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if value.eq_ignore_ascii_case("any") {
            return Ok(Rule::Any);
        }
        if let Some(dir) = value
            .strip_prefix("unix:")
            .or_else(|| value.strip_prefix("UNIX:"))
        {
            if !dir.starts_with('/') {
                return Err(error("a unix rule needs an absolute directory"));
            }
            return Ok(Rule::UnixDir(PathBuf::from(dir)));
        }
        let (block, ports) = split_ports(value).map_err(error)?;
        let block_of = |network: IpAddr, prefix: u8| {
            let (network, prefix) = canonical_block(network, prefix).map_err(error)?;
            Ok(Rule::Block {
                network: mask(network, prefix),
                prefix,
                ports,
            })
        };
        if let Some((addr, prefix)) = block.split_once('/') {
            let network: IpAddr = addr.parse().map_err(|_| error("not an IP block"))?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix = prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| error("bad prefix length"))?;
            return block_of(network, prefix);
        }
        if let Ok(ip) = block.parse::<IpAddr>() {
            return block_of(ip, if ip.is_ipv4() { 32 } else { 128 });
        }
        match ports {
            Some((low, high)) if low == high => {
                let host: Host = block.parse().map_err(error)?;
                Ok(Rule::Name {
                    host: host.to_string().trim_end_matches('.').into(),
                    port: low,
                })
            }
            Some(_) => Err(error("a host name takes one port, not a range")),
            None => Err(error("a host name needs a port")),
        }
    }
}

/// An inclusive port range.
type Ports = (u16, u16);

/// Splits `BLOCK[:PORTS]`; an IPv6 block with ports is bracketed.
fn split_ports(value: &str) -> Result<(&str, Option<Ports>), &'static str> {
    let (block, ports) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("unclosed '['")?;
        let ports = after
            .strip_prefix(':')
            .ok_or("a bracketed block needs :PORT")?;
        (inside, Some(ports))
    } else if value.matches(':').count() == 1 {
        let (block, ports) = value.split_once(':').ok_or("missing port")?;
        (block, Some(ports))
    } else {
        (value, None)
    };
    let Some(ports) = ports else {
        return Ok((block, None));
    };
    let parse = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| "port is not a number from 0 to 65535")
    };
    let range = match ports.split_once('-') {
        Some((low, high)) => (parse(low)?, parse(high)?),
        None => (parse(ports)?, parse(ports)?),
    };
    if range.0 > range.1 {
        return Err("port range is backwards");
    }
    Ok((block, Some(range)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> Policy {
        Policy::new(rules).unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_rules_with_and_without_ports() {
        let p = policy(&[
            "10.0.0.0/8",
            "192.168.1.0/24:22",
            "172.16.0.0/12:5900-5999",
            "[2001:db8::/32]:443",
        ]);
        assert!(p.allows_addr(addr("10.1.2.3:1")));
        assert!(p.allows_addr(addr("192.168.1.9:22")));
        assert!(!p.allows_addr(addr("192.168.1.9:23")));
        assert!(p.allows_addr(addr("172.20.0.1:5901")));
        assert!(!p.allows_addr(addr("172.20.0.1:6000")));
        assert!(p.allows_addr(addr("[2001:db8::5]:443")));
        assert!(!p.allows_addr(addr("[2001:db8::5]:80")));
        assert!(!p.allows_addr(addr("127.0.0.1:22")));
        assert!(p.allows_addr(addr("[::ffff:10.0.0.1]:9")));
    }

    #[test]
    fn bare_addresses_and_ipv6_blocks() {
        let p = policy(&["127.0.0.1", "::1", "fd00::/8"]);
        assert!(p.allows_addr(addr("127.0.0.1:80")));
        assert!(!p.allows_addr(addr("127.0.0.2:80")));
        assert!(p.allows_addr(addr("[::1]:80")));
        assert!(p.allows_addr(addr("[fd12::1]:80")));
    }

    #[test]
    fn host_port_rules_match_the_name_as_given() {
        let p = policy(&["db.internal:5432", "127.0.0.1:22"]);
        let name: HostPort = "DB.internal:5432".parse().unwrap();
        assert!(p.allows_name(&name));
        assert!(!p.allows_name(&"db.internal:5433".parse().unwrap()));
        assert!(!p.allows_name(&"other.internal:5432".parse().unwrap()));
        assert!(p.allows_addr(addr("127.0.0.1:22")));
        assert!(!p.allows_addr(addr("127.0.0.1:23")));
    }

    #[test]
    fn unix_rules_resolve_symlinks_and_dot_dot() {
        let base = std::env::temp_dir().join(format!("quictun-policy-{}", std::process::id()));
        let allowed = base.join("allowed");
        let other = base.join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let link = allowed.join("escape");
        let _ = std::os::unix::fs::symlink(other.join("app.sock"), &link);
        let p = Policy::new(&[format!("unix:{}/", allowed.display())]).unwrap();
        assert!(p.allows_unix(&allowed.join("app.sock")));
        assert!(!p.allows_unix(&allowed.join("../other/app.sock")));
        assert!(!p.allows_unix(&other.join("app.sock")));
        // A symlink inside the directory pointing outside is judged by where it points.
        std::fs::write(other.join("app.sock"), b"").unwrap();
        assert!(!p.allows_unix(&link));
        assert!(!p.allows_unix(Path::new("/nonexistent/dir/app.sock")));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn any_allows_everything_but_an_unspecified_address() {
        let p = policy(&["any"]);
        assert!(p.is_open());
        assert!(p.allows_addr(addr("203.0.113.1:1")));
        assert!(p.allows_addr(addr("[2001:db8::1]:1")));
        assert!(p.allows_unix(Path::new("/anything")));
        for unspecified in ["0.0.0.0:22", "[::]:22", "[::ffff:0.0.0.0]:22"] {
            assert!(!p.allows_addr(addr(unspecified)), "{unspecified}");
        }
        let error = Policy::new(&["any", "127.0.0.1:22"]).unwrap_err();
        assert!(error.to_string().contains("stands alone"), "{error}");
    }

    #[test]
    fn no_rule_allows_nothing() {
        let p = policy(&[]);
        assert!(p.is_empty() && !p.is_open());
        assert!(!p.allows_addr(addr("127.0.0.1:22")));
        assert!(!p.allows_unix(Path::new("/tmp/app.sock")));
        assert!(!p.allows_name(&"localhost:22".parse().unwrap()));
    }

    #[test]
    fn mapped_rules_mean_their_ipv4_block() {
        // Not every IPv4 address on every port: the address 0.0.0.0, which is never dialed.
        let p = policy(&["::ffff:0.0.0.0"]);
        assert!(!p.allows_addr(addr("127.0.0.1:22")));
        assert!(!p.allows_addr(addr("0.0.0.0:22")));
        let p = policy(&["::ffff:127.0.0.1", "[::ffff:10.0.0.0/104]:22"]);
        assert!(p.allows_addr(addr("127.0.0.1:80")));
        assert!(p.allows_addr(addr("[::ffff:127.0.0.1]:80")));
        assert!(!p.allows_addr(addr("127.0.0.2:80")));
        assert!(p.allows_addr(addr("10.200.0.1:22")));
        assert!(!p.allows_addr(addr("10.200.0.1:23")));
        assert!(!p.allows_addr(addr("11.0.0.1:22")));
        // IPv6 rules never match IPv4 targets.
        assert!(!policy(&["::/0"]).allows_addr(addr("127.0.0.1:22")));
        let error = Policy::new(&["::ffff:0.0.0.0/95"]).unwrap_err();
        assert!(error.to_string().contains("96"), "{error}");
    }

    #[test]
    fn bad_rules_are_explained() {
        for (rule, reason) in [
            ("10.0.0.0/33", "bad prefix length"),
            ("10.0.0.0/8:99999", "port is not a number"),
            ("10.0.0.0/8:30-20", "backwards"),
            ("db.internal", "needs a port"),
            ("db.internal:1-2", "one port"),
            ("[2001:db8::/32", "unclosed"),
            ("unix:relative/", "absolute"),
            ("bad host:22", "neither an IP"),
        ] {
            let error = Policy::new(&[rule]).unwrap_err();
            assert!(error.to_string().contains(reason), "{rule}: {error}");
            assert!(error.to_string().contains(&format!("{rule:?}")), "{error}");
        }
    }
}
