//! Benchmarks for quic-tun: `linkem`, a user-space link emulator that puts direct TCP and the
//! QUIC tunnel over the same emulated lossy, rate-limited, delayed link; `cc`, congestion
//! controllers on it; `hostile`, the server under hostile traffic on loopback; `cluster`,
//! several server instances behind nginx; `clients`, many clients of one server at once;
//! `udp`, UDP flows through the tunnel on loopback and on the link; `interactive`, an
//! interactive TCP connection through the tunnel beside a bulk upload of the same client on
//! the link; `veth`, direct TCP, the tunnel and bare quinn across a kernel veth pair at
//! Ethernet MTUs; `peer`, the bare quinn connection to compare with; `target`, the TCP target
//! (sink, source, echo) and the application's side of a transfer; `process`, what the tools
//! need from the processes they start; `rest`, what they read from the endpoints' REST APIs.
pub mod cc;
pub mod clients;
pub mod cluster;
pub mod hostile;
pub mod interactive;
pub mod linkem;
pub mod peer;
pub mod process;
pub mod rest;
pub mod target;
pub mod udp;
pub mod veth;

/// The first byte of a benchmark connection or stream picks what the far end does, for
/// quictun-bench's target and quinn-peer's server alike; a sink or source byte is followed
/// by an 8-byte big-endian length.
pub mod mode {
    /// Echo everything back.
    pub const ECHO: u8 = b'e';
    /// Read to the end, then close.
    pub const SINK: u8 = b's';
    /// Send the given number of bytes.
    pub const SOURCE: u8 = b'g';
}
