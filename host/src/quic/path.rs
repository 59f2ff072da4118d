//! How large a QUIC packet the path to a peer can carry (SPEC §10: fewer, larger packets where
//! the path allows).
//!
//! quinn starts every connection at 1,200-byte packets and probes upwards (path MTU discovery,
//! RFC 8899) to an upper bound, 1,452 bytes unless told otherwise. On loopback (64 KiB MTU)
//! and on jumbo-frame networks that leaves most of the per-packet work (header protection,
//! acknowledgements, one `sendmsg` segment, one receive) to be paid 10–45 times too often. So
//! each connection's bound is the MTU of the interface its route to the peer leaves by, as the
//! kernel reports it for a socket connected to the peer; what lies beyond that interface (a
//! smaller MTU on a router, a tunnel) is what the probing finds. The peer's own bound, sent in
//! its transport parameters, caps the probes as well.
//!
//! Where the peer is on a loopback address the path is that interface alone, so the
//! connection starts at the bound instead of probing up to it.
//!
//! A hostile peer gains nothing here: the bound is read from our own routing table, and
//! probing only ever sends our own packets, under congestion control, on a validated path.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::TransportConfig;
use socket2::{Domain, Socket, Type};

use super::{SetupError, TransportOptions};

/// The smallest payload QUIC allows, where every connection starts without a better bound.
pub const MIN_PAYLOAD: u16 = 1200;
/// The largest UDP payload: 65,535 minus the UDP header (quinn's limit too).
pub const MAX_PAYLOAD: u16 = 65_527;
/// quinn's default upper bound: a 1,500-byte Ethernet MTU less IPv6 and UDP headers. Used
/// when the route cannot be asked.
pub const DEFAULT_PAYLOAD: u16 = 1452;

/// The UDP payload sizes one connection starts with and may grow to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathPayload {
    /// Where the connection starts (before and without probing).
    pub initial: u16,
    /// How far path MTU discovery may go.
    pub max: u16,
}

impl PathPayload {
    /// Without anything known of the path: quinn's defaults.
    pub const DEFAULT: PathPayload = PathPayload {
        initial: MIN_PAYLOAD,
        max: DEFAULT_PAYLOAD,
    };

    /// The bounds for a connection to `peer`, from the interface its route leaves by.
    pub fn towards(peer: SocketAddr) -> PathPayload {
        let Ok(mtu) = route_mtu(peer) else {
            return PathPayload::DEFAULT;
        };
        let max = payload_of(mtu, peer);
        let initial = if peer.ip().is_loopback() || mapped_loopback(peer) {
            max
        } else {
            MIN_PAYLOAD
        };
        PathPayload { initial, max }
    }
}

impl PathPayload {
    /// How long a connection stays at 1,200-byte packets after quinn judged that its large ones
    /// vanish in a black hole (several bursts of them lost). On a path known whole (loopback:
    /// the bound is the interface itself) such losses can only be congestion — a receive
    /// buffer overflowing under load — and 1,200-byte packets there cost fifty times the
    /// per-packet work, which deepens the overload; so the connection probes back up after a
    /// second instead of quinn's minute.
    pub fn black_hole_cooldown(&self) -> Duration {
        if self.initial == self.max {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(60)
        }
    }
}

/// The UDP payload an IP packet of `mtu` bytes carries to `peer`.
fn payload_of(mtu: u32, peer: SocketAddr) -> u16 {
    let headers = if peer.is_ipv4() || mapped_loopback(peer) {
        20 + 8
    } else {
        40 + 8
    };
    // An IP packet's length field has 16 bits, whatever the interface allows.
    let payload = mtu.min(65_535).saturating_sub(headers);
    u16::try_from(payload)
        .unwrap_or(MAX_PAYLOAD)
        .clamp(MIN_PAYLOAD, MAX_PAYLOAD)
}

fn mapped_loopback(peer: SocketAddr) -> bool {
    match peer {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some_and(|ip| ip.is_loopback()),
        SocketAddr::V4(_) => false,
    }
}

/// The MTU of the interface the kernel routes `peer` through (no packet is sent).
fn route_mtu(peer: SocketAddr) -> io::Result<u32> {
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, None)?;
    socket.connect(&peer.into())?;
    let (level, name) = match peer {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is the open socket above; `mtu` and `len` are valid for writes of
    // the int the option returns, and `len` says its size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(mtu).map_err(|_| io::Error::other("negative MTU"))
}

/// The largest UDP payload any of this host's interfaces carries: what an endpoint accepts
/// from its peers (its receive buffers are sized from it; the memory is touched only as
/// datagrams of that size arrive).
pub fn largest_local_payload() -> u16 {
    let largest = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("mtu")).ok())
        .filter_map(|text| text.trim().parse::<u32>().ok())
        .max();
    match largest {
        // The IPv4 headers: the smaller of the two, so the larger payload.
        Some(mtu) => u16::try_from(mtu.min(65_535).saturating_sub(28))
            .unwrap_or(MAX_PAYLOAD)
            .clamp(DEFAULT_PAYLOAD, MAX_PAYLOAD),
        None => DEFAULT_PAYLOAD,
    }
}

/// Transport configurations by path: one per distinct [`PathPayload`], built on first use.
/// A host has few distinct interface MTUs, so few are ever built; past [`MAX_VARIANTS`] a
/// peer gets the default bounds rather than a new entry.
#[derive(Debug)]
pub struct PathTransports {
    options: TransportOptions,
    built: Mutex<HashMap<PathPayload, Arc<TransportConfig>>>,
}

/// Distinct path sizes kept.
const MAX_VARIANTS: usize = 16;

impl PathTransports {
    /// Checks `options` once, so building a variant later cannot fail.
    pub fn new(options: TransportOptions) -> Result<PathTransports, SetupError> {
        let default = Arc::new(options.build(PathPayload::DEFAULT)?);
        let built = HashMap::from([(PathPayload::DEFAULT, default)]);
        Ok(PathTransports {
            options,
            built: Mutex::new(built),
        })
    }

    /// The transport for a path not known yet: quinn's packet sizes.
    pub fn unknown(&self) -> Arc<TransportConfig> {
        self.for_path(PathPayload::DEFAULT)
    }

    /// The transport for a connection to `peer`.
    pub fn towards(&self, peer: SocketAddr) -> Arc<TransportConfig> {
        self.for_path(PathPayload::towards(peer))
    }

    fn for_path(&self, path: PathPayload) -> Arc<TransportConfig> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = built.get(&path) {
            return config.clone();
        }
        let default = built[&PathPayload::DEFAULT].clone();
        if built.len() >= MAX_VARIANTS {
            return default;
        }
        // The options were built once in `new`; only the sizes differ now.
        match self.options.build(path) {
            Ok(config) => built.entry(path).or_insert(Arc::new(config)).clone(),
            Err(_) => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_paths_start_at_the_interface_size() {
        let v4 = PathPayload::towards("127.0.0.1:4433".parse().unwrap());
        let lo_mtu = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap();
        let lo_mtu: u32 = lo_mtu.trim().parse::<u32>().unwrap().min(65_535);
        let expected = u16::try_from(lo_mtu - 28).unwrap();
        assert_eq!(
            v4,
            PathPayload {
                initial: expected,
                max: expected
            }
        );
        assert_eq!(v4.black_hole_cooldown(), Duration::from_secs(1));
        assert_eq!(
            PathPayload::DEFAULT.black_hole_cooldown(),
            Duration::from_secs(60)
        );
        let v6 = PathPayload::towards("[::1]:4433".parse().unwrap());
        if v6 != PathPayload::DEFAULT {
            // IPv6 is configured here: 40 bytes of header instead of 20.
            let expected = u16::try_from(lo_mtu - 48).unwrap();
            assert_eq!(v6.max, expected);
            assert_eq!(v6.initial, expected);
        }
    }

    #[test]
    fn payload_sizes_stay_within_what_quic_allows() {
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(payload_of(1500, v4), 1472);
        assert_eq!(payload_of(1500, v6), 1452);
        assert_eq!(payload_of(9000, v4), 8972);
        assert_eq!(payload_of(65_536, v4), 65_507);
        assert_eq!(payload_of(65_536, v6), 65_487);
        assert_eq!(payload_of(u32::MAX, v4), 65_507);
        assert_eq!(payload_of(576, v4), MIN_PAYLOAD);
    }

    #[test]
    fn largest_local_payload_covers_loopback() {
        let lo_mtu = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap();
        let lo_mtu: u32 = lo_mtu.trim().parse().unwrap();
        assert!(u32::from(largest_local_payload()) >= lo_mtu.min(65_535) - 28);
    }

    #[test]
    fn variants_are_built_once_each() {
        let transports = PathTransports::new(TransportOptions::default()).unwrap();
        let a = transports.towards("127.0.0.1:1".parse().unwrap());
        let b = transports.towards("127.0.0.2:2".parse().unwrap());
        assert!(Arc::ptr_eq(&a, &b));
    }
}
