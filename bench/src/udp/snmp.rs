//! The kernel's UDP counters of a network namespace (`Udp:` in /proc/net/snmp): where a
//! datagram the tunnel lost went missing when it was a socket buffer that overflowed — the
//! client's listener, the server's flow socket or the target.

use std::fs;

/// The counters of one namespace at one moment (or the difference of two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    pub in_datagrams: u64,
    /// Datagrams dropped because a receiving socket's buffer was full.
    pub rcvbuf_errors: u64,
    /// Sends refused because the sending socket's buffer was full.
    pub sndbuf_errors: u64,
}

impl UdpCounters {
    /// The counters of the calling thread's network namespace (zeros if unreadable).
    pub fn read() -> UdpCounters {
        let text = fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
        UdpCounters::parse(&text).unwrap_or_default()
    }

    /// Reads the `Udp:` header and value lines of /proc/net/snmp.
    pub fn parse(snmp: &str) -> Option<UdpCounters> {
        let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = lines.next()?.split_whitespace().collect();
        let values: Vec<&str> = lines.next()?.split_whitespace().collect();
        let field = |name: &str| {
            let at = names.iter().position(|n| *n == name)?;
            values.get(at)?.parse().ok()
        };
        Some(UdpCounters {
            in_datagrams: field("InDatagrams")?,
            rcvbuf_errors: field("RcvbufErrors")?,
            sndbuf_errors: field("SndbufErrors")?,
        })
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"in_datagrams\":{},\"rcvbuf_errors\":{},\"sndbuf_errors\":{}}}",
            self.in_datagrams, self.rcvbuf_errors, self.sndbuf_errors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
        Udp: 11668415 34770 6269 11727287 6269 3 0\n\
        UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";

    #[test]
    fn the_udp_lines_are_read_by_name_and_differences_taken() {
        let now = UdpCounters::parse(SNMP).unwrap();
        assert_eq!(
            now,
            UdpCounters {
                in_datagrams: 11_668_415,
                rcvbuf_errors: 6269,
                sndbuf_errors: 3,
            }
        );
        let before = UdpCounters {
            in_datagrams: 11_668_400,
            rcvbuf_errors: 6000,
            sndbuf_errors: 3,
        };
        assert_eq!(now.since(&before).rcvbuf_errors, 269);
        assert_eq!(now.since(&before).in_datagrams, 15);
    }

    #[test]
    fn missing_or_cut_lines_give_nothing() {
        assert_eq!(UdpCounters::parse(""), None);
        assert_eq!(UdpCounters::parse("Udp: InDatagrams RcvbufErrors\n"), None);
        assert_eq!(
            UdpCounters::parse("Udp: InDatagrams RcvbufErrors\nUdp: 1 2\n"),
            None,
            "no SndbufErrors"
        );
    }

    #[test]
    fn this_namespace_has_counters() {
        // Every Linux kernel with IPv4 has the Udp lines.
        let counters = fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        assert!(UdpCounters::parse(&counters).is_some(), "{counters}");
    }
}
