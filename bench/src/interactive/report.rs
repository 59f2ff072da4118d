//! The interactive suite's figures: a row per case as it ends, and the whole table with the
//! base RTT, the sharing runs and the targets, met or missed (the JSON is in [`super::json`]).

use std::fmt::Write as _;

use super::Plan;
use super::case::{Case, CaseResult, Path};
use super::echo::{INTERVAL, MESSAGE};
use crate::cc::report::{quantile, share_line};
use crate::cc::{QUEUE, RATE_BPS, Sender, ShareResult};
use crate::udp::delay::ms;

/// The link's configured round trip.
pub(super) const BASE_RTT_MS: f64 = 20.0;
/// Interactive traffic beside a bulk transfer: p99 within this of the base RTT.
const ECHO_MARGIN_MS: f64 = 10.0;
/// The tunnel's share against one Linux TCP bbr flow.
const BBR_SHARE: f64 = 0.45;
/// A share of the link that is clearly not starvation: what "cubic keeps a measurable share"
/// is taken to mean.
const CUBIC_SHARE: f64 = 0.10;

/// Everything the suite measured.
pub struct Report {
    pub quick: bool,
    pub plan: Plan,
    pub cases: Vec<CaseResult>,
    /// Against TCP bbr, then TCP cubic.
    pub shares: Vec<ShareResult>,
}

/// One target: what it asks, what was measured, whether that meets it.
pub struct Aim {
    pub name: String,
    pub measured: String,
    pub met: bool,
}

impl Report {
    pub(super) fn find(&self, case: Case, loss: f64) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.case == case && c.loss == loss)
    }

    /// The base RTT at `loss`: the direct echo's median alone.
    pub(super) fn base_ms(&self, loss: f64) -> Option<f64> {
        let direct = Case {
            path: Path::Direct,
            bulk: false,
        };
        self.find(direct, loss)?.echoes.summary().p50
    }

    /// The suite's targets, each with what was measured.
    pub fn aims(&self) -> Vec<Aim> {
        let echo = self.plan.losses.iter().map(|&loss| self.echo_aim(loss));
        echo.chain(self.shares.iter().map(share_aim)).collect()
    }

    fn echo_aim(&self, loss: f64) -> Aim {
        let beside = Case {
            path: Path::Tunnel,
            bulk: true,
        };
        let found = self.find(beside, loss);
        let p99 = found.and_then(|c| c.echoes.summary().p99);
        // The link's queue at the same moments, without the tunnel.
        let probe = found.and_then(|c| quantile(&c.bulk.as_ref()?.probe_ms, 0.99));
        let base = self.base_ms(loss);
        let bound = base.map(|b| b + ECHO_MARGIN_MS);
        let over = p99.zip(bound).map(|(p, b)| p - b);
        Aim {
            name: format!(
                "{} % loss: tunnel echo p99 beside its bulk upload <= base RTT + {ECHO_MARGIN_MS:.0} ms",
                loss * 100.0
            ),
            measured: format!(
                "p99 {} ms, bound {} ms (direct echo alone p50 {} + {ECHO_MARGIN_MS:.0}){}; \
                 UDP probe p99 meanwhile {} ms",
                ms(p99),
                ms(bound),
                ms(base),
                over.filter(|o| *o > 0.0)
                    .map_or(String::new(), |o| format!(": {o:.1} ms over")),
                ms(probe)
            ),
            met: over.is_some_and(|o| o <= 0.0),
        }
    }

    /// Every case, the base RTT, the sharing runs and the targets.
    pub fn table(&self) -> String {
        let mut out = format!(
            "interactive echo: {MESSAGE} B every {} ms on one TCP connection, {} s per case; \
             link {BASE_RTT_MS:.0} ms RTT, {} Mbit/s each way, {} ms drop-tail queue, loss seed 1\n{}\n",
            INTERVAL.as_millis(),
            self.plan.echo.as_secs(),
            RATE_BPS / 1_000_000,
            QUEUE.as_millis(),
            header()
        );
        for case in &self.cases {
            let _ = writeln!(out, "{}", case_line(case));
        }
        let base: Vec<String> = self
            .plan
            .losses
            .iter()
            .map(|&l| format!("{} ms at {} % loss", ms(self.base_ms(l)), l * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "base RTT: {BASE_RTT_MS:.0} ms configured; the direct echo alone, p50: {}",
            base.join(", ")
        );
        for share in &self.shares {
            let _ = writeln!(out, "{}", share_line(share));
        }
        out.push_str("targets:\n");
        for aim in self.aims() {
            let met = if aim.met { "met" } else { "MISSED" };
            let _ = writeln!(out, "  {met:<6} {:<70} {}", aim.name, aim.measured);
        }
        out
    }
}

/// Against bbr: the tunnel's share; against cubic: cubic's.
fn share_aim(share: &ShareResult) -> Aim {
    let ours = share.ours_share();
    let (name, met) = match share.competitor {
        Sender::TcpBbr => (
            format!(
                "the tunnel's share against one TCP bbr flow >= {:.0} %",
                BBR_SHARE * 100.0
            ),
            ours >= BBR_SHARE,
        ),
        other => (
            format!(
                "one {} flow keeps a measurable share (>= {:.0} %) beside the tunnel",
                other.name(),
                CUBIC_SHARE * 100.0
            ),
            1.0 - ours >= CUBIC_SHARE,
        ),
    };
    let measured = format!(
        "tunnel {:.1} % ({:.1} Mbit/s), {} {:.1} % ({:.1} Mbit/s)",
        ours * 100.0,
        share.ours_mbps,
        share.competitor.name(),
        (1.0 - ours) * 100.0,
        share.theirs_mbps
    );
    Aim {
        name,
        measured,
        met,
    }
}

/// The column heads of [`case_line`].
pub fn header() -> String {
    format!(
        "{:<6}{:<30}{:>8}{:>8}{:>8}{:>8}{:>13}{:>18}{:>8}{:>22}",
        "loss",
        "case",
        "p50 ms",
        "p90",
        "p99",
        "max",
        "bulk Mbit/s",
        "queue drops A→B",
        "B→A",
        "UDP probe p50/p99 ms"
    )
}

/// One case as a row under [`header`].
pub fn case_line(result: &CaseResult) -> String {
    let s = result.echoes.summary();
    let mut name = result.case.name().to_string();
    if result.case.bulk && result.case.path == Path::Direct {
        name.push_str(&format!(" ({})", result.tcp_congestion));
    }
    let mut line = format!(
        "{:<6}{name:<30}{:>8}{:>8}{:>8}{:>8}",
        format!("{} %", result.loss * 100.0),
        ms1(s.p50),
        ms1(s.p90),
        ms1(s.p99),
        ms1(s.max)
    );
    if let Some(bulk) = &result.bulk {
        let drops = bulk.a_to_b.queue_dropped.packets;
        let share = drops as f64 * 100.0 / bulk.a_to_b.offered.packets.max(1) as f64;
        let probe = |q| ms1(quantile(&bulk.probe_ms, q));
        let _ = write!(
            line,
            "{:>13.1}{:>18}{:>8}{:>22}",
            bulk.mbps,
            format!("{drops} ({share:.2} %)"),
            bulk.b_to_a.queue_dropped.packets,
            format!("{} / {}", probe(0.5), probe(0.99))
        );
    }
    line
}

/// Milliseconds with one decimal, or `-`.
fn ms1(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.1}"))
}
