//! The veth suite (`quictun-bench --suite veth`, root): direct TCP, the tunnel and a bare quinn
//! connection across a kernel veth pair at Ethernet MTUs (1500 and 9000 by default), where
//! loopback's 64 KiB MTU would let QUIC send packets no real network carries.
//!
//! For each MTU, a fresh [`VethPair`]: the target ([`crate::target`]) in namespace B; the
//! release quictun-server in B and quictun-client in A ([`tunnel`]); quinn-peer's server in B
//! and client in A ([`crate::peer`]). In interleaved rounds, each path moves `bytes` up (to the
//! target's sink) and then down (from its source) over one connection, with the applications'
//! side in namespace A: Gbit/s, the CPU time of the path's own two processes per GiB (none
//! for direct TCP) and the whole machine's. After each round the tunnel's endpoints say how
//! large their packets have grown (`maxUdpPayload` of `GET /connections`): at MTU 1500 it must
//! be the whole Ethernet payload less the IPv4 and UDP headers, 1,472 bytes.

pub mod pair;
mod report;
pub mod tunnel;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Instant;

use crate::hostile::good::wait_tunnel;
use crate::linkem::netns;
use crate::mode;
use crate::peer::{QuinnPeer, peer_binary};
use crate::process::{MachineTimes, cpu_seconds};
use crate::target::{self, Target};
pub use pair::VethPair;
pub use report::{MtuReport, Report};
use tunnel::{Payloads, Tunnel};

/// The MTU at which the tunnel's packets must fill the path.
const CHECKED_MTU: u32 = 1500;
/// IPv4 and UDP headers: an MTU's packet carries this much less UDP payload.
const HEADERS: u32 = 28;
/// The target's port on B's end of the pair, and quinn-peer server's.
const TARGET_PORT: u16 = 5001;
const PEER_PORT: u16 = 7600;

/// What the suite needs.
pub struct Options {
    /// Where quictun-server and quictun-client are.
    pub bin_dir: PathBuf,
    /// The MTUs to measure at, each with a fresh pair.
    pub mtus: Vec<u32>,
    /// One round of smaller transfers, for a smoke run.
    pub quick: bool,
}

/// The paths, in the order of each round and of the tables.
pub const PATHS: [&str; 3] = ["direct TCP", "tunnel", "bare quinn"];
/// Upload (to the target's sink), then download (from its source).
pub const WAYS: [(&str, u8); 2] = [("up", mode::SINK), ("down", mode::SOURCE)];

/// One transfer's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub gbps: f64,
    /// The path's own processes' CPU seconds per GiB; `None` for direct TCP.
    pub own_s_per_gib: Option<f64>,
    /// The whole machine's busy core-seconds per GiB.
    pub machine_s_per_gib: f64,
}

/// One round at one MTU: `samples[way][path]` ([`WAYS`], [`PATHS`]), and the tunnel's packet
/// sizes after it.
#[derive(Debug, Clone)]
pub struct Round {
    pub samples: [[Sample; 3]; 2],
    pub payloads: Payloads,
}

/// Runs every MTU in turn; each MTU's table is printed as it completes.
pub fn run(options: &Options) -> Result<Report, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the veth suite needs root (network namespaces and a veth pair)".into());
    }
    netns::remove_stale().map_err(|e| e.to_string())?;
    let (bytes, rounds) = match options.quick {
        true => (256 << 20, 1),
        false => (1 << 30, 3),
    };
    let mut mtus = Vec::new();
    for &mtu in &options.mtus {
        let measured = measure_mtu(options, mtu, bytes, rounds)?;
        print!("{}", measured.table());
        check_payloads(&measured)?;
        mtus.push(measured);
    }
    Ok(Report {
        quick: options.quick,
        bytes,
        rounds,
        mtus,
    })
}

/// The packet size the tunnel's endpoints reach at an MTU if they fill the path.
pub fn expected_payload(mtu: u32) -> u32 {
    mtu.saturating_sub(HEADERS)
}

/// At [`CHECKED_MTU`], every round's packets must fill the path.
fn check_payloads(measured: &MtuReport) -> Result<(), String> {
    if measured.mtu != CHECKED_MTU {
        return Ok(());
    }
    let expected = expected_payload(measured.mtu);
    let wrong = measured
        .rounds
        .iter()
        .map(|r| r.payloads)
        .find(|p| u32::from(p.client) != expected || u32::from(p.server) != expected);
    match wrong {
        Some(p) => Err(format!(
            "MTU {}: maxUdpPayload client {}, server {}, expected {expected} (MTU - {HEADERS})",
            measured.mtu, p.client, p.server
        )),
        None => Ok(()),
    }
}

/// A fresh pair at `mtu`, the three paths across it, `rounds` interleaved rounds.
fn measure_mtu(
    options: &Options,
    mtu: u32,
    bytes: u64,
    rounds: usize,
) -> Result<MtuReport, String> {
    let pair = VethPair::create(mtu)?;
    let target_addr = SocketAddr::from((pair::ADDR_B, TARGET_PORT));
    let listener = pair
        .run_in_b(|| TcpListener::bind(target_addr))?
        .map_err(|e| format!("cannot bind the target in namespace B: {e}"))?;
    let target = Target::serve(listener).map_err(|e| format!("target: {e}"))?;
    let direct = target.addr();
    pair.run_in_a(move || wait_tunnel(direct))?
        .map_err(|e| format!("MTU {mtu}: direct TCP: {e}"))?;
    let tunnel = Tunnel::start(&pair, &options.bin_dir, direct)?;
    let peer_addr = SocketAddr::from((pair::ADDR_B, PEER_PORT));
    let mut peer = QuinnPeer::start_in(
        &peer_binary(),
        peer_addr,
        Some(pair.ns_b()),
        Some(pair.ns_a()),
    )?;
    let paths = Paths {
        pair: &pair,
        direct,
        tunnel: &tunnel,
    };
    let mut measured = Vec::new();
    for _ in 0..rounds {
        let [(up, up_mode), (down, down_mode)] = WAYS;
        measured.push(Round {
            samples: [
                paths.one_way(&mut peer, up, up_mode, bytes)?,
                paths.one_way(&mut peer, down, down_mode, bytes)?,
            ],
            payloads: tunnel.payloads(&pair)?,
        });
    }
    Ok(MtuReport {
        mtu,
        bytes,
        rounds: measured,
    })
}

/// The paths across one pair whose application side is this process (in namespace A).
struct Paths<'a> {
    pair: &'a VethPair,
    direct: SocketAddr,
    tunnel: &'a Tunnel,
}

impl Paths<'_> {
    /// One transfer of `bytes` each way `way` through each path, in [`PATHS`] order.
    fn one_way(
        &self,
        peer: &mut QuinnPeer,
        way: &str,
        mode: u8,
        bytes: u64,
    ) -> Result<[Sample; 3], String> {
        let mtu = self.pair.mtu();
        let in_a = |addr: SocketAddr| {
            let run = move || timed(bytes, || target::transfer(addr, bytes, mode));
            self.pair.run_in_a(run)?.map_err(|e| e.to_string())
        };
        let direct = sampled(bytes, &[], || in_a(self.direct))
            .map_err(|e| format!("MTU {mtu}: direct TCP {way}: {e}"))?;
        let tunnel = sampled(bytes, &self.tunnel.pids(), || in_a(self.tunnel.app()))
            .map_err(|e| self.tunnel.failure(format!("MTU {mtu}: tunnel {way}: {e}")))?;
        let quinn = sampled(bytes, &peer.pids(), || {
            peer.gbps(way, bytes, 1).map_err(|e| e.to_string())
        })
        .map_err(|e| format!("MTU {mtu}: bare quinn {way}: {e}"))?;
        Ok([direct, tunnel, quinn])
    }
}

/// Runs `transfer` of `bytes`: Gbit/s.
fn timed(bytes: u64, transfer: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<f64> {
    let start = Instant::now();
    transfer()?;
    Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Runs one transfer (returning Gbit/s) and measures meanwhile the CPU time of the path's
/// processes `pids` (none: not measured) and of the whole machine.
fn sampled(
    bytes: u64,
    pids: &[u32],
    run: impl FnOnce() -> Result<f64, String>,
) -> Result<Sample, String> {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let (machine, own) = (MachineTimes::now(), cpu_seconds(pids));
    let gbps = run()?;
    Ok(Sample {
        gbps,
        own_s_per_gib: (!pids.is_empty()).then(|| (cpu_seconds(pids) - own) / gib),
        machine_s_per_gib: (MachineTimes::now().busy - machine.busy) / gib,
    })
}
