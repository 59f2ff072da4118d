//! The interactive suite (`quictun-bench --suite interactive`, root): does a bulk upload
//! through the tunnel hold up an interactive connection of the same client, and does the
//! tunnel's controller share a link fairly with Linux TCP?
//!
//! 1. Echo ([`case`]): on a fresh linkem link per case (the link suite's: 20 ms RTT,
//!    100 Mbit/s each way, 30 ms drop-tail queue, random loss both ways with seed 1), at 0 %
//!    and 1 % loss, an application in namespace A ([`echo`]) writes a 1 KiB message every
//!    20 ms on one TCP connection to the target in B ([`target`]) and times each echo. Four
//!    cases: through the tunnel (quictun-client in A, quictun-server in B, default
//!    controller) alone; through the tunnel beside a bulk upload through the same client, so
//!    the same QUIC connection, started 2 s before the echoes; direct TCP alone; direct TCP
//!    beside a direct bulk TCP connection (the namespace's default congestion control).
//!    Beside a bulk transfer, a UDP probe ([`crate::cc::probe`]) times the link's queue and
//!    linkem's counters give its drops.
//! 2. Sharing: [`crate::cc::run_share`], the tunnel against one Linux TCP bbr flow and
//!    against one cubic flow, started together on one link (20 ms, 0 % loss).
//!
//! [`report`] makes the table with the suite's targets, met or missed, and [`json`] the JSON.

pub mod case;
pub mod echo;
mod json;
mod report;
pub mod target;

use std::path::PathBuf;
use std::time::Duration;

use crate::cc::{self, Scenario, Sender, ShareResult};
pub use case::{Case, CaseResult, Path};
pub use report::Report;

/// What the suite needs.
pub struct Options {
    /// Where quictun-server and quictun-client are.
    pub bin_dir: PathBuf,
    /// Short phases and 0 % loss only, for a smoke run.
    pub quick: bool,
}

/// How long each measurement runs, and at which losses.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The echo messages of each case.
    pub echo: Duration,
    /// The bulk transfer's head start before the echo messages beside it.
    pub bulk_lead: Duration,
    /// Random loss of the link, each way.
    pub losses: Vec<f64>,
    /// Each sharing run.
    pub share: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        let s = Duration::from_secs;
        match quick {
            false => Plan {
                echo: s(15),
                bulk_lead: s(2),
                losses: vec![0.0, 0.01],
                share: s(30),
            },
            true => Plan {
                echo: s(3),
                bulk_lead: s(2),
                losses: vec![0.0],
                share: s(5),
            },
        }
    }
}

/// Runs every case at every loss, then the two sharing runs, printing a line as each ends.
pub fn run(options: &Options) -> Result<Report, String> {
    let plan = Plan::new(options.quick);
    let mut cases = Vec::new();
    println!("{}", report::header());
    for &loss in &plan.losses {
        for case in Case::ALL {
            let result = case::run(case, loss, &plan, &options.bin_dir)
                .map_err(|e| format!("{} at {} % loss: {e}", case.name(), loss * 100.0))?;
            println!("{}", report::case_line(&result));
            cases.push(result);
        }
    }
    let mut shares = Vec::new();
    for competitor in [Sender::TcpBbr, Sender::TcpCubic] {
        let share = share(competitor, &plan, options)?;
        println!("{}", crate::cc::report::share_line(&share));
        shares.push(share);
    }
    Ok(Report {
        quick: options.quick,
        plan,
        cases,
        shares,
    })
}

/// The tunnel (its default controller) against one direct TCP flow.
fn share(competitor: Sender, plan: &Plan, options: &Options) -> Result<ShareResult, String> {
    let scenario = Scenario {
        name: "20ms-0%".into(),
        rtt: Duration::from_millis(20),
        loss: 0.0,
        duration: plan.share,
    };
    cc::run_share(Sender::Adaptive, competitor, &scenario, 1, &options.bin_dir)
        .map_err(|e| format!("sharing with {}: {e}", competitor.name()))
}
