//! One case of the echo measurement on a fresh link of its own (so linkem's counters belong to
//! it): the target in namespace B, the tunnel when the case goes through it, the echo
//! connection from A, and, for a case beside bulk, a bulk upload on the same path — through
//! the same quictun-client, or a second direct TCP connection — with a UDP probe of the
//! link's queue while the echoes are timed.

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::thread;
use std::time::{Duration, Instant};

use super::Plan;
use super::echo::{self, Echoes};
use super::target::Target;
use crate::cc::flow::{Source, Tunnel};
use crate::cc::probe::RttProbe;
use crate::cc::{self, QUEUE, RATE_BPS};
use crate::linkem::{DirStats, Link, LinkConfig, netns};
use crate::udp::link::difference;

/// How long the endpoints get to connect, and a bulk transfer to deliver its first byte.
const PATIENCE: Duration = Duration::from_secs(15);
/// The controller the tunnel runs: the endpoints' default.
const CONGESTION: &str = "adaptive";

/// How the echo connection crosses the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// quictun-client in A, quictun-server in B.
    Tunnel,
    /// A TCP connection from A to B.
    Direct,
}

/// One of the four cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub path: Path,
    /// A bulk upload on the same path runs beside the echoes.
    pub bulk: bool,
}

impl Case {
    pub const ALL: [Case; 4] = [
        Case::new(Path::Tunnel, false),
        Case::new(Path::Tunnel, true),
        Case::new(Path::Direct, false),
        Case::new(Path::Direct, true),
    ];

    const fn new(path: Path, bulk: bool) -> Case {
        Case { path, bulk }
    }

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match (self.path, self.bulk) {
            (Path::Tunnel, false) => "tunnel alone",
            (Path::Tunnel, true) => "tunnel beside bulk",
            (Path::Direct, false) => "direct alone",
            (Path::Direct, true) => "direct beside bulk",
        }
    }
}

/// What one case measured.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: Case,
    pub loss: f64,
    pub echoes: Echoes,
    /// The default TCP congestion control of namespace A (the direct connections use it).
    pub tcp_congestion: String,
    /// `None` when the case has no bulk transfer.
    pub bulk: Option<Bulk>,
}

/// The bulk transfer while the echoes were timed.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// What reached the target, Mbit/s.
    pub mbps: f64,
    /// linkem's counters over the echoes: the bulk's direction, and the replies' and ACKs'.
    pub a_to_b: DirStats,
    pub b_to_a: DirStats,
    /// Round trips of the UDP probe through the link's queues meanwhile, ms.
    pub probe_ms: Vec<f64>,
}

/// Runs `case` on a fresh link with `loss` each way.
pub fn run(case: Case, loss: f64, plan: &Plan, bin_dir: &FsPath) -> Result<CaseResult, String> {
    let link = cc::start_link(LinkConfig {
        rtt: Duration::from_millis(20),
        rate_bps: Some(RATE_BPS),
        loss,
        queue: QUEUE,
        seed: 1,
        ..LinkConfig::default()
    })?;
    let tcp_congestion = netns::get_sysctl(link.ns_a(), "net.ipv4.tcp_congestion_control")
        .map_err(|e| e.to_string())?;
    let target = Target::start(&link)?;
    let mut tunnel = match case.path {
        Path::Tunnel => Some(Tunnel::start(&link, bin_dir, CONGESTION, target.port())?),
        Path::Direct => None,
    };
    let to = tunnel.as_ref().map_or_else(
        || SocketAddr::from((link.addr_b(), target.port())),
        Tunnel::app_addr,
    );
    let stream = echo::connect(&link, to, PATIENCE)?;
    let timed = || echo::run(&stream, plan.echo);
    let (echoes, bulk) = match case.bulk {
        false => (timed()?, None),
        true => {
            let (echoes, bulk) = beside_bulk(&link, &target, to, tunnel.as_mut(), plan, timed)?;
            (echoes, Some(bulk))
        }
    };
    if let Some(tunnel) = tunnel.as_mut() {
        tunnel.check_alive()?;
    }
    Ok(CaseResult {
        case,
        loss,
        echoes,
        tcp_congestion,
        bulk,
    })
}

/// Starts a bulk upload to the target through `to` (the same client's listener, or B
/// directly), gives it [`Plan::bulk_lead`], and runs `timed` beside it with the UDP probe.
fn beside_bulk(
    link: &Link,
    target: &Target,
    to: SocketAddr,
    mut tunnel: Option<&mut Tunnel>,
    plan: &Plan,
    timed: impl FnOnce() -> Result<Echoes, String>,
) -> Result<(Echoes, Bulk), String> {
    let source = Source::start(link, to, None, PATIENCE)?;
    let waited = Instant::now();
    while target.bulk_received() == 0 {
        if let Some(tunnel) = tunnel.as_deref_mut() {
            tunnel.check_alive()?;
        }
        if waited.elapsed() > PATIENCE {
            return Err(format!(
                "the bulk transfer delivered nothing in {PATIENCE:?}"
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(plan.bulk_lead);
    let probe = RttProbe::start(link)?;
    let (bytes, before, start) = (target.bulk_received(), link.stats(), Instant::now());
    let echoes = timed();
    let mbps = (target.bulk_received() - bytes) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6;
    let after = link.stats();
    let probe_ms: Vec<f64> = probe
        .finish()
        .iter()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    drop(source);
    Ok((
        echoes?,
        Bulk {
            mbps,
            a_to_b: difference(&after.a_to_b, &before.a_to_b),
            b_to_a: difference(&after.b_to_a, &before.b_to_a),
            probe_ms,
        },
    ))
}
