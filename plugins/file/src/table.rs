//! The token table: parsing the file's lines and choosing the line for a client address.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The parsed file, in line order.
#[derive(Debug, Default)]
pub struct Table {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    client: Client,
    token: String,
}

/// The left column of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Client {
    Exact(IpAddr),
    Block { network: IpAddr, prefix: u8 },
    Unix(String),
}

/// A line that does not parse, with its number (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl FromStr for Table {
    type Err = TableError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let error = |reason: String| TableError {
                line: index + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(client), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(error(format!("expected `CLIENT TOKEN`, found {line:?}")));
            };
            let client = client.parse().map_err(error)?;
            entries.push(Entry {
                client,
                token: token.to_owned(),
            });
        }
        Ok(Table { entries })
    }
}

impl FromStr for Client {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text
            .get(..5)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("unix:"))
        {
            return Ok(Client::Unix(text[5..].to_owned()));
        }
        let Some((addr, prefix)) = text.split_once('/') else {
            let ip = text
                .parse()
                .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
            return Ok(Client::Exact(ip));
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?;
        Ok(Client::Block {
            network: mask(network, prefix),
            prefix,
        })
    }
}

impl Table {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The token for a client address (`IP:PORT`, `[IPv6]:PORT`, a bare IP, or `unix:/path`).
    pub fn lookup(&self, client_addr: &str) -> Option<&str> {
        if client_addr
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("unix:"))
        {
            let path = &client_addr[5..];
            return self.entries.iter().find_map(|e| match &e.client {
                Client::Unix(p) if p == path => Some(e.token.as_str()),
                _ => None,
            });
        }
        let ip = client_ip(client_addr)?;
        // Rank: an exact address first, then the longest prefix; `max_by_key` keeps the last
        // of equals, so walk the lines backwards to let the first line win.
        self.entries
            .iter()
            .rev()
            .filter_map(|e| rank(&e.client, ip).map(|r| (r, e.token.as_str())))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, token)| token)
    }
}

/// How well a line's client matches `ip`: exact addresses rank above every block.
fn rank(client: &Client, ip: IpAddr) -> Option<u16> {
    match *client {
        Client::Exact(exact) if exact == ip => Some(u16::MAX),
        Client::Block { network, prefix }
            if same_family(network, ip) && mask(ip, prefix) == network =>
        {
            Some(prefix as u16)
        }
        _ => None,
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The client's IP; an IPv4-mapped IPv6 address (from a dual-stack listener) counts as IPv4.
fn client_ip(client_addr: &str) -> Option<IpAddr> {
    let ip = client_addr
        .parse::<SocketAddr>()
        .map(|addr| addr.ip())
        .or_else(|_| client_addr.parse::<IpAddr>())
        .ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().unwrap()
    }

    #[test]
    fn exact_match_only_not_prefix() {
        // The original matched by string prefix: 10.0.0.1 also matched 10.0.0.12.
        let t = table("10.0.0.1 tcp:a:1\n");
        assert_eq!(t.lookup("10.0.0.1:5"), Some("tcp:a:1"));
        assert_eq!(t.lookup("10.0.0.12:5"), None);
    }

    #[test]
    fn exact_beats_cidr_longest_prefix_wins_then_first_line() {
        let t = table(
            "10.0.0.0/8 wide\n10.1.0.0/16 narrow\n10.1.2.3 exact\n10.1.0.0/16 second-narrow\n0.0.0.0/0 any\n",
        );
        assert_eq!(t.lookup("10.1.2.3:1"), Some("exact"));
        assert_eq!(t.lookup("10.1.9.9:1"), Some("narrow"));
        assert_eq!(t.lookup("10.200.0.1:1"), Some("wide"));
        assert_eq!(t.lookup("192.0.2.1:1"), Some("any"));
        let exact_after_block = table("10.1.2.3/32 block\n10.1.2.3 exact\n");
        assert_eq!(exact_after_block.lookup("10.1.2.3:1"), Some("exact"));
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let t = table("2001:db8::/32 v6net\n::1 loop6\n192.0.2.7 v4\n");
        assert_eq!(t.lookup("[2001:db8:1::5]:80"), Some("v6net"));
        assert_eq!(t.lookup("[::1]:80"), Some("loop6"));
        assert_eq!(t.lookup("[::ffff:192.0.2.7]:80"), Some("v4"));
        assert_eq!(t.lookup("[2001:db9::1]:80"), None);
        // A v4 block never matches a v6 address of the same bits.
        let zero = table("0.0.0.0/0 v4-any\n");
        assert_eq!(zero.lookup("[2001:db8::1]:1"), None);
    }

    #[test]
    fn unix_listener_lines() {
        let t = table("unix:/run/app.sock tcp:10.0.0.5:22\n");
        assert_eq!(t.lookup("unix:/run/app.sock"), Some("tcp:10.0.0.5:22"));
        assert_eq!(t.lookup("unix:/run/other.sock"), None);
    }

    #[test]
    fn comments_blank_lines_and_errors() {
        let t = table("# header\n\n   \n10.0.0.1 tok # trailing comment\n");
        assert_eq!(t.len(), 1);
        let cases = [
            ("10.0.0.1\n", "expected `CLIENT TOKEN`"),
            ("10.0.0.1 a b\n", "expected `CLIENT TOKEN`"),
            ("host.example tok\n", "not an IP address"),
            ("10.0.0.0/33 tok\n", "prefix length must be 0 to 32"),
            ("::/129 tok\n", "prefix length must be 0 to 128"),
            ("10.0.0.0/x tok\n", "prefix length"),
            ("nope/8 tok\n", "not an IP address"),
        ];
        for (text, reason) in cases {
            let error = text.parse::<Table>().unwrap_err();
            assert_eq!(error.line, 1);
            assert!(error.reason.contains(reason), "{text:?}: {}", error.reason);
        }
    }

    #[test]
    fn cidr_network_bits_are_normalised() {
        let t = table("10.1.2.3/16 tok\n");
        assert_eq!(t.lookup("10.1.200.200:1"), Some("tok"));
    }
}
