//! Benchmarks for quic-tun: `linkem`, a user-space link emulator that puts direct TCP and the
//! QUIC tunnel over the same emulated lossy, rate-limited, delayed link.
pub mod cc;
pub mod linkem;
