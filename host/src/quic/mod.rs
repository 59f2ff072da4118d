//! QUIC endpoints and transport settings shared by both binaries.
//!
//! UDP socket buffers are raised to several MiB (the 212 KB default drops packets at speed),
//! GSO stays on (quinn-udp's default), and flow-control windows cover a 100 Mbit/s link with a
//! 200 ms round trip, so a long fat link is not limited by the receiver.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::{
    AckFrequencyConfig, Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TokioRuntime,
    TransportConfig, VarInt,
};
use socket2::{Domain, Protocol, Socket, Type};

pub mod cid;
pub mod cluster_key;
pub mod connections;
pub mod keys;
pub mod path;
pub mod socket;

use cid::ServerCids;
use keys::EndpointKeys;
use path::PathPayload;

/// Requested UDP socket buffer size, each way.
const UDP_BUFFER: usize = 8 * 1024 * 1024;
// Flow-control windows. They are credit, not allocations: an idle tunnel holds none of them,
// and a busy one holds only what has arrived and not been read yet. Their cost is the worst
// case, an application that stops reading while the peer sends: a stream then pins up to
// STREAM_WINDOW at the receiver and a connection up to CONNECTION_WINDOW, whatever the number
// of tunnels on it (and the sender keeps up to SEND_WINDOW of unacknowledged data).
//
// Why several bandwidth-delay products: the receive window's left edge is the first byte not
// yet delivered in order. Under random loss it waits behind a hole for loss detection (about
// 9/8 RTT) plus the retransmission's round trip, and longer when the retransmission is lost
// too (at 1 % loss and ~2 000 packets per round trip, about once a second at 200 ms). The
// window must cover the data sent meanwhile. 100 Mbit/s × 200 ms is 2.5 MB: 4 MiB held the
// tunnel at ~60 Mbit/s with 1 % loss there, 16 MiB at ~86 (docs/BENCHMARKS.md).
//
// Why not larger: besides memory, quinn closes a connection whose stream buffer holds more
// than 1 024 separate pieces ("too many gaps in stream buffer"). The holes in flight are about
// the loss rate × the packets sent during a hole's lifetime, which the stream window bounds:
// fine for our controller up to several percent of random loss, but a sender that loses a
// large share at the bottleneck (quinn's bbr at 200 ms, ~40 %) reaches the limit.

/// Bytes of DATAGRAM frames a connection queues each way; beyond it quinn drops the oldest.
const DATAGRAM_BUFFER: usize = 1024 * 1024;

// Acknowledgements (the QUIC ACK frequency extension, which both our endpoints speak; a peer
// that does not, such as the original Go tunnel, keeps acknowledging every second packet).
// By default a receiver acknowledges every second packet: at 1,452-byte packets that is an ACK
// frame, a packet and its processing on both sides for every 2.9 KB. We ask the peer to
// acknowledge every ACK_ELICITING_THRESHOLD + 1 packets, and within MAX_ACK_DELAY when fewer
// arrive, while packets out of order are still acknowledged at once (reordering threshold 2,
// quinn's packet threshold less one), so loss is detected as early as before.
/// Packets a receiver may take in before it must acknowledge.
const ACK_ELICITING_THRESHOLD: u32 = 9;
/// How long a receiver may hold an acknowledgement when fewer packets came.
const MAX_ACK_DELAY: Duration = Duration::from_millis(2);

/// A connection's flow-control windows, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Receive window of one stream.
    pub stream: u64,
    /// Receive window of the whole connection.
    pub connection: u64,
    /// Unacknowledged data the connection may hold for sending.
    pub send: u64,
}

impl Windows {
    /// What a connection gets when memory allows (a server shares its `--max-buffered`):
    /// - stream: about 6.7 × (100 Mbit/s × 200 ms), enough for a hole that needs two
    ///   retransmissions at full rate;
    /// - connection: more, so a stream stalled behind a hole leaves room for others;
    /// - send: as much as the receive window (quinn keeps selectively acknowledged data behind
    ///   a hole too), so the peer's credit is what binds.
    pub const FULL: Windows = Windows {
        stream: 16 * 1024 * 1024,
        connection: 24 * 1024 * 1024,
        send: 24 * 1024 * 1024,
    };
}

/// The congestion controller, chosen with `--congestion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Congestion {
    Cubic,
    Newreno,
    Bbr,
    /// Our own model-based controller (docs/CONGESTION.md), the default: keeps the link full
    /// under random loss without flooding the bottleneck queue.
    #[default]
    Adaptive,
}

/// Settings both endpoints apply to their QUIC connections.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    pub congestion: Congestion,
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// Bidirectional streams the peer may have open at once (each is one tunnel).
    pub max_streams: u32,
    pub windows: Windows,
    /// How long a UDP flow may be idle before it ends (SPEC §11).
    pub udp_idle_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            congestion: Congestion::Adaptive,
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_streams: 10_000,
            windows: Windows::FULL,
            udp_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why an endpoint could not be set up: one line naming what.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("invalid certificate or key: {0}")]
    Tls(#[from] rustls::Error),
    #[error("--idle-timeout {0:?} is too long")]
    IdleTimeout(Duration),
    #[error("cannot draw random bytes for the server's keys from the operating system")]
    Random,
    // Not `source`: the message already says it, and a chain would say it twice.
    #[error("cannot listen on {what}: {error}")]
    Listen { what: String, error: io::Error },
    #[error("no server endpoint given")]
    NoServer,
}

impl TransportOptions {
    /// The transport for a connection over a path of `path`'s packet sizes ([`path`]).
    pub fn build(&self, path: PathPayload) -> Result<TransportConfig, SetupError> {
        let mut config = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| SetupError::IdleTimeout(self.idle_timeout))?;
        config
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(varint(self.windows.stream))
            .receive_window(varint(self.windows.connection))
            .send_window(self.windows.send)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            // UDP flows' DATAGRAM frames (RFC 9221), bounded each way.
            .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
            .datagram_send_buffer_size(DATAGRAM_BUFFER)
            .initial_mtu(path.initial)
            .mtu_discovery_config(Some({
                let mut discovery = MtuDiscoveryConfig::default();
                discovery
                    .upper_bound(path.max)
                    .black_hole_cooldown(path.black_hole_cooldown());
                discovery
            }))
            .ack_frequency_config(Some({
                let mut acks = AckFrequencyConfig::default();
                acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD))
                    .max_ack_delay(Some(MAX_ACK_DELAY));
                acks
            }));
        // quinn's controllers start at a fixed 14,720 bytes, less than one packet where packets
        // start larger (loopback): RFC 9002's rule, in packets of the path's initial size.
        let packet = u64::from(path.initial);
        let window = (10 * packet).min((2 * packet).max(14_720));
        let factory: Arc<dyn ControllerFactory + Send + Sync> = match self.congestion {
            Congestion::Cubic => Arc::new(CubicConfig::default().initial_window(window).clone()),
            Congestion::Newreno => {
                Arc::new(NewRenoConfig::default().initial_window(window).clone())
            }
            Congestion::Bbr => Arc::new(BbrConfig::default().initial_window(window).clone()),
            Congestion::Adaptive => Arc::new(quictun_congestion::AdaptiveConfig::default()),
        };
        config.congestion_controller_factory(factory);
        Ok(config)
    }
}

/// A window as QUIC writes it (at most 2^62 − 1).
fn varint(bytes: u64) -> VarInt {
    VarInt::from_u64(bytes).unwrap_or(VarInt::MAX)
}

/// A UDP socket with large buffers (as large as the OS allows).
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack for [::], so an IPv6 wildcard also serves IPv4 clients.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A QUIC endpoint on `addr`, serving when `server` is given.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> io::Result<Endpoint> {
    endpoint_with(addr, server, EndpointConfig::default())
}

/// Sets what `config`'s endpoint accepts: datagrams as large as any local interface carries
/// (what its peers' path MTU discovery may grow to, [`path`]).
fn accept_large_datagrams(config: &mut EndpointConfig) {
    // Within quinn's bounds by construction.
    let _ = config.max_udp_payload_size(path::largest_local_payload());
}

/// A serving QUIC endpoint with `keys` ([`keys`]), issuing connection IDs that carry
/// `server_id` ([`cid`]). The server's [`quinn::ServerConfig`] must seal Retry tokens with
/// `keys.retry`.
///
/// A stateless-reset key and CID key that outlive the process (a state directory's, a
/// cluster's) let it reset the stale connections of its predecessor or of another instance
/// at once, so their clients reconnect without waiting for an idle time-out.
pub fn server_endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    keys: EndpointKeys,
    server_id: Option<u8>,
) -> io::Result<Endpoint> {
    let mut config = EndpointConfig::new(Arc::new(keys.reset));
    let cid_key = keys.cid;
    config.cid_generator(move || Box::new(ServerCids::new(cid_key.clone(), server_id)));
    endpoint_with(addr, Some(server), config)
}

fn endpoint_with(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    mut config: EndpointConfig,
) -> io::Result<Endpoint> {
    accept_large_datagrams(&mut config);
    let socket = socket::WholeWrites::wrap(udp_socket(addr)?, &TokioRuntime)?;
    Endpoint::new_with_abstract_socket(config, server, socket, Arc::new(TokioRuntime))
}

/// A serving endpoint on 127.0.0.1 with a fresh self-signed certificate for `localhost`.
#[cfg(test)]
pub(crate) fn loopback_server() -> Endpoint {
    use crate::tls::{self, Identity};
    let identity = Identity::self_signed(&["localhost"]).unwrap();
    let crypto = tls::server_crypto(identity, tls::ClientAuth::Off).unwrap();
    let listen = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    endpoint(listen, Some(quinn::ServerConfig::with_crypto(crypto))).unwrap()
}
