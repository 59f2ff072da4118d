//! Two network namespaces joined by a kernel veth pair of a given MTU: a real Ethernet-sized
//! path between two hosts, with no emulator in between.
//!
//! Namespace A holds 10.201.0.1/24, namespace B 10.201.0.2/24, each on its end of the pair
//! (named `qtv0` in both), and each has its loopback up for the endpoints' own listeners.
//! Dropping the pair removes both namespaces, and with them the veth pair.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::linkem::Error;
use crate::linkem::netns::{self, NetNs, ip};

/// Namespace A's address: the applications' and clients' side.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// Namespace B's address: the targets' and servers' side.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const PREFIX_LEN: u8 = 24;
/// The name of each end, inside its own namespace.
const DEVICE: &str = "qtv0";

/// Namespaces A and B and the veth pair between them.
pub struct VethPair {
    mtu: u32,
    a: NetNs,
    b: NetNs,
}

impl VethPair {
    /// Creates both namespaces and the pair, both ends at `mtu`, addressed and up. Needs root
    /// and `ip`; what was created is removed again if a step fails.
    pub fn create(mtu: u32) -> Result<VethPair, String> {
        let a = NetNs::create_unique("veth-a").map_err(|e| e.to_string())?;
        let b = NetNs::create_unique("veth-b").map_err(|e| e.to_string())?;
        let pair = VethPair { mtu, a, b };
        pair.connect()
            .map_err(|e| format!("veth pair at MTU {mtu}: {e}"))?;
        Ok(pair)
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn ns_a(&self) -> &str {
        self.a.name()
    }

    pub fn ns_b(&self) -> &str {
        self.b.name()
    }

    /// Runs `f` on a thread inside namespace A (sockets it makes stay there).
    pub fn run_in_a<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, String> {
        netns::run_in(self.ns_a(), f).map_err(|e| e.to_string())
    }

    /// Runs `f` on a thread inside namespace B.
    pub fn run_in_b<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, String> {
        netns::run_in(self.ns_b(), f).map_err(|e| e.to_string())
    }

    /// A command that will run inside namespace A.
    pub fn command_in_a(&self, program: &str) -> Result<Command, String> {
        netns::command_in(self.ns_a(), program).map_err(|e| e.to_string())
    }

    /// A command that will run inside namespace B.
    pub fn command_in_b(&self, program: &str) -> Result<Command, String> {
        netns::command_in(self.ns_b(), program).map_err(|e| e.to_string())
    }

    /// The pair, created from inside A with its peer end moved to B, then both ends'
    /// addresses and both loopbacks.
    fn connect(&self) -> Result<(), Error> {
        let (a, b, mtu) = (self.ns_a(), self.ns_b(), self.mtu.to_string());
        ip(&[
            "-n", a, "link", "add", DEVICE, "mtu", &mtu, "type", "veth", "peer", "name", DEVICE,
            "netns", b, "mtu", &mtu,
        ])?;
        for (ns, addr) in [(a, ADDR_A), (b, ADDR_B)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN}"),
                "dev",
                DEVICE,
            ])?;
            ip(&["-n", ns, "link", "set", DEVICE, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }
}
