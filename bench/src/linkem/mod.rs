//! linkem: a packet-level link emulator in user space.
//!
//! [`Link::start`] creates two network namespaces, A and B, each with a TUN device
//! (198.18.0.1/30 in A, 198.18.0.2/30 in B), and forwards IP packets between the two devices,
//! applying in each direction independently: a one-way delay of RTT/2, a rate limit (a
//! token-bucket serialiser) behind a drop-tail queue sized in time at the link rate, and
//! seeded random loss. Dropping the `Link` stops the forwarder and removes the namespaces.
//!
//! It exists because this kernel has no netem qdisc: delay and loss have to be applied by a
//! process. Benchmarks start processes in each namespace ([`Link::command_in_a`]) or create
//! sockets there from threads ([`Link::run_in_a`]).

pub mod model;
pub mod netns;
pub mod parse;
pub mod stats;
pub mod tcp;
pub mod tun;

mod forward;

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forward::{DirectionSetup, Forwarder};
use model::PathConfig;
use netns::NetNs;
use stats::DirCounters;
pub use stats::{Count, DirStats, LinkStats};
use tun::TunSetup;

/// Address of namespace A's end of the link.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Address of namespace B's end of the link.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Name of the TUN device inside each namespace.
pub const DEVICE: &str = "qtl0";

/// An error of the link emulator, as one line of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The emulated link's parameters; both directions get the same ones.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// Round-trip time added by the link; each direction delays by half.
    pub rtt: Duration,
    /// Bit rate of each direction; `None` for no limit.
    pub rate_bps: Option<u64>,
    /// Probability that a packet is lost, drawn independently per packet and direction.
    pub loss: f64,
    /// Size of the drop-tail queue in front of the rate limiter, as time at the link rate
    /// (30 ms at 100 Mbit/s is 375 000 bytes). Never less than one MTU. No effect without a
    /// rate limit, where nothing waits.
    pub queue: Duration,
    /// Seed of the loss pattern; the same seed and traffic give the same losses.
    pub seed: u64,
    pub mtu: u32,
    /// Queue length of the TUN devices, in packets: large enough for a whole flight of a fast
    /// long-RTT flow arriving at once, which would otherwise be dropped before the emulator
    /// sees it.
    pub txqueuelen: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            rtt: Duration::ZERO,
            rate_bps: None,
            loss: 0.0,
            queue: Duration::from_millis(30),
            seed: 1,
            mtu: 1500,
            txqueuelen: 20_000,
        }
    }
}

/// Bound on the packets held per direction (queue plus wire): 65 536 full packets are about
/// 100 MB, and more than a 1 Gbit/s link holds at 500 ms of delay.
const MAX_PACKETS: usize = 1 << 16;

impl LinkConfig {
    /// The drop-tail queue's size in bytes (unbounded without a rate limit).
    pub fn queue_bytes(&self) -> usize {
        let Some(rate) = self.rate_bps else {
            return usize::MAX;
        };
        let bytes = rate as u128 * self.queue.as_nanos() / 8 / 1_000_000_000;
        (bytes as usize).max(self.mtu as usize)
    }

    /// Checks the values make sense, with a message naming the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(Error(format!("loss {} is not a probability", self.loss)));
        }
        if !(576..=65_535).contains(&self.mtu) {
            return Err(Error(format!("mtu {} is outside 576..=65535", self.mtu)));
        }
        if self.txqueuelen == 0 {
            return Err(Error("txqueuelen must be at least 1".to_string()));
        }
        Ok(())
    }

    /// One direction's model parameters; each direction gets its own loss stream.
    fn path(&self, direction: u64) -> PathConfig {
        PathConfig {
            rate_bps: self.rate_bps,
            delay: (self.rtt / 2).as_nanos() as u64,
            queue_bytes: self.queue_bytes(),
            max_packets: MAX_PACKETS,
            loss: self.loss,
            seed: self
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(direction),
        }
    }
}

/// A running emulated link. Dropping it stops the forwarder and deletes both namespaces;
/// processes still running inside them should be ended first (a namespace lives on, unnamed,
/// while a process is in it).
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    started: Instant,
    counters: [Arc<DirCounters>; 2],
    forwarder: Forwarder,
    // Declared last so they are dropped after the forwarder let go of the devices.
    ns_a: NetNs,
    ns_b: NetNs,
}

impl Link {
    /// Creates the namespaces and devices and starts forwarding. Needs root, `/dev/net/tun`
    /// and the `ip` command; everything created is removed again if a step fails.
    pub fn start(config: LinkConfig) -> Result<Link, Error> {
        config.validate()?;
        preflight()?;
        let ns_a = NetNs::create_unique("a")?;
        let ns_b = NetNs::create_unique("b")?;
        let dev_a = open_device(&ns_a, ADDR_A, &config)?;
        let dev_b = open_device(&ns_b, ADDR_B, &config)?;
        let counters = [
            Arc::new(DirCounters::default()),
            Arc::new(DirCounters::default()),
        ];
        let directions = vec![
            direction("a2b", &dev_a, &dev_b, &config, &counters[0], 0),
            direction("b2a", &dev_b, &dev_a, &config, &counters[1], 1),
        ];
        let started = Instant::now();
        let forwarder = Forwarder::start(directions, started)?;
        Ok(Link {
            config,
            started,
            counters,
            forwarder,
            ns_a,
            ns_b,
        })
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Name of namespace A (for `ip netns exec`).
    pub fn ns_a(&self) -> &str {
        self.ns_a.name()
    }

    /// Name of namespace B.
    pub fn ns_b(&self) -> &str {
        self.ns_b.name()
    }

    /// A's address, 198.18.0.1.
    pub fn addr_a(&self) -> Ipv4Addr {
        ADDR_A
    }

    /// B's address, 198.18.0.2.
    pub fn addr_b(&self) -> Ipv4Addr {
        ADDR_B
    }

    /// Time since forwarding started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counters of both directions at this moment.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            a_to_b: self.counters[0].snapshot(),
            b_to_a: self.counters[1].snapshot(),
        }
    }

    /// Runs `f` on a thread inside namespace A; sockets it creates live in A.
    pub fn run_in_a<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R, Error> {
        netns::run_in(self.ns_a(), f)
    }

    /// Runs `f` on a thread inside namespace B.
    pub fn run_in_b<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R, Error> {
        netns::run_in(self.ns_b(), f)
    }

    /// A `Command` that runs `program` inside namespace A.
    pub fn command_in_a(&self, program: &str) -> Result<Command, Error> {
        netns::command_in(self.ns_a(), program)
    }

    /// A `Command` that runs `program` inside namespace B.
    pub fn command_in_b(&self, program: &str) -> Result<Command, Error> {
        netns::command_in(self.ns_b(), program)
    }

    /// Sets a per-namespace sysctl in both namespaces, e.g. `net.ipv4.tcp_rmem`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        netns::set_sysctl(self.ns_a(), key, value)?;
        netns::set_sysctl(self.ns_b(), key, value)
    }

    /// Makes `name` the default TCP congestion control in both namespaces; see [`tcp`] for
    /// which ones a namespace may choose (cubic must be set per socket here).
    pub fn set_tcp_congestion(&self, name: &str) -> Result<(), Error> {
        tcp::set_default(self.ns_a(), name)?;
        tcp::set_default(self.ns_b(), name)
    }

    /// The configuration, elapsed time and counters as one JSON object.
    pub fn report_json(&self) -> String {
        let c = &self.config;
        let stats = self.stats();
        format!(
            "{{\"config\":{{\"rtt_ms\":{},\"rate_bps\":{},\"loss\":{},\"queue_ms\":{},\
             \"queue_bytes\":{},\"seed\":{}}},\"elapsed_s\":{:.3},\"a_to_b\":{},\"b_to_a\":{}}}",
            c.rtt.as_secs_f64() * 1e3,
            c.rate_bps.map_or("null".to_string(), |r| r.to_string()),
            c.loss,
            c.queue.as_secs_f64() * 1e3,
            c.rate_bps
                .map_or("null".to_string(), |_| c.queue_bytes().to_string()),
            c.seed,
            self.elapsed().as_secs_f64(),
            stats.a_to_b.to_json(),
            stats.b_to_a.to_json(),
        )
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Threads first: they hold the devices. The namespaces go when the fields drop.
        self.forwarder.stop();
    }
}

/// Says what is missing, in one line, instead of failing later with a cryptic error.
fn preflight() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error(
            "linkem needs root (it creates network namespaces and TUN devices)".to_string(),
        ));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(Error(
            "linkem needs /dev/net/tun, which this system does not have".to_string(),
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(Error(
            "linkem needs the ip command (package iproute2)".to_string(),
        )),
    }
}

/// Creates and configures the TUN device of one namespace; the device is created from a
/// thread inside it, so it never exists in (or collides by name in) the root namespace.
fn open_device(ns: &NetNs, addr: Ipv4Addr, config: &LinkConfig) -> Result<Arc<File>, Error> {
    let device = netns::run_in(ns.name(), || tun::open_tun(DEVICE))??;
    tun::configure(&TunSetup {
        ns: ns.name(),
        dev: DEVICE,
        cidr: &format!("{addr}/30"),
        mtu: config.mtu,
        txqueuelen: config.txqueuelen,
    })?;
    Ok(Arc::new(device))
}

fn direction(
    name: &'static str,
    input: &Arc<File>,
    output: &Arc<File>,
    config: &LinkConfig,
    counters: &Arc<DirCounters>,
    index: u64,
) -> DirectionSetup {
    DirectionSetup {
        name,
        input: Arc::clone(input),
        output: Arc::clone(output),
        path: config.path(index),
        counters: Arc::clone(counters),
        mtu: config.mtu as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_sized_in_time_at_the_link_rate() {
        let config = LinkConfig {
            rate_bps: Some(100_000_000),
            ..LinkConfig::default()
        };
        assert_eq!(config.queue_bytes(), 375_000);
        let tiny = LinkConfig {
            rate_bps: Some(64_000),
            queue: Duration::from_millis(1),
            ..LinkConfig::default()
        };
        assert_eq!(tiny.queue_bytes(), 1500);
        assert_eq!(LinkConfig::default().queue_bytes(), usize::MAX);
    }

    #[test]
    fn directions_get_half_the_rtt_and_their_own_loss_seed() {
        let config = LinkConfig {
            rtt: Duration::from_millis(20),
            ..LinkConfig::default()
        };
        let (a, b) = (config.path(0), config.path(1));
        assert_eq!(a.delay, 10_000_000);
        assert_ne!(a.seed, b.seed);
    }

    #[test]
    fn validation_names_the_bad_value() {
        let bad = LinkConfig {
            loss: 1.5,
            ..LinkConfig::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("loss"));
        let bad = LinkConfig {
            mtu: 100,
            ..LinkConfig::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("mtu"));
    }
}
