//! The UDP suite (`quictun-bench --suite udp`, issue #19): UDP flows through the release
//! endpoints (SPEC §11), against the same traffic sent directly.
//!
//! 1. Loopback ([`loopback`]): round trips of 64-byte datagrams to an echoing target, directly
//!    and through the tunnel; one flow of 64-byte and one of 1,200-byte datagrams into a
//!    counting target, the sender keeping a bounded window in flight: datagrams per second,
//!    loss, and the endpoints' CPU time per million datagrams delivered.
//! 2. The emulated link ([`link`]; root): round trips of small datagrams through the tunnel
//!    alone and beside a bulk TCP tunnel of the same client, which fills the link; a 50 Mbit/s
//!    paced stream of 1,200-byte datagrams at 1 % loss ([`paced`]): the share delivered,
//!    one-way delay and RFC 3550 jitter.
//!
//! The application side is this process: the target ([`target`]), the senders ([`senders`])
//! and the pinger ([`ping`]); the endpoints are the real binaries ([`endpoints`]), ended on
//! drop by their pids.

pub mod delay;
pub mod endpoints;
pub mod link;
pub mod loopback;
pub mod paced;
pub mod ping;
mod report;
pub mod senders;
pub mod snmp;
pub mod target;

use std::path::PathBuf;
use std::time::Duration;

pub use report::Report;

/// The size of the datagrams whose round trips are timed.
const PING_SIZE: usize = 64;
/// How long the endpoints get to connect (and the bulk transfer to start).
const PATIENCE: Duration = Duration::from_secs(30);
/// After a sender stops, before the target's count is read: datagrams still in the tunnel.
const DRAIN: Duration = Duration::from_millis(500);

/// What the suite needs.
pub struct Options {
    /// Where quictun-server and quictun-client are.
    pub bin_dir: PathBuf,
    /// Short phases, for a smoke run.
    pub quick: bool,
    /// Run the emulated-link part too (root).
    pub link: bool,
}

/// How long each measurement runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Loopback round trips per path, one every millisecond, in two blocks per path.
    pub loopback_pings: u64,
    /// Each loopback flow.
    pub flow: Duration,
    /// Each series of round trips on the link.
    pub link_pings: Duration,
    pub paced: Duration,
    /// The bulk transfer's start, before round trips beside it are timed.
    pub bulk_warm_up: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        let s = Duration::from_secs;
        match quick {
            false => Plan {
                loopback_pings: 2000,
                flow: s(5),
                link_pings: s(20),
                paced: s(20),
                bulk_warm_up: s(3),
            },
            true => Plan {
                loopback_pings: 200,
                flow: s(1),
                link_pings: s(3),
                paced: s(3),
                bulk_warm_up: s(1),
            },
        }
    }
}

/// Runs the loopback part, then the link part when asked.
pub fn run(options: &Options) -> Result<Report, String> {
    let plan = Plan::new(options.quick);
    let loopback = loopback::run(options, &plan)?;
    print!("{}", loopback.text());
    let link = match options.link {
        true => {
            let link = link::run(options, &plan)?;
            print!("{}", link.text());
            Some(link)
        }
        false => None,
    };
    Ok(Report {
        quick: options.quick,
        plan,
        loopback,
        link,
    })
}
