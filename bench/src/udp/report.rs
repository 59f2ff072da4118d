//! The UDP suite's figures: lines as each part ends, the targets of issue #19 as a table, and
//! the JSON for bench/results/udp.json.

use super::Plan;
use super::delay::ms;
use super::link::OverLink;
use super::loopback::Loopback;
use crate::hostile::good::aim_json;

/// Everything the suite measured.
pub struct Report {
    pub quick: bool,
    pub plan: Plan,
    pub loopback: Loopback,
    /// `None` when the link part was not run.
    pub link: Option<OverLink>,
}

/// One aim of the issue: what it asks, what was measured, whether that meets it.
pub struct Aim {
    pub name: &'static str,
    pub measured: String,
    pub met: bool,
}

impl Report {
    /// The aims of issue #19, each with what was measured.
    pub fn aims(&self) -> Vec<Aim> {
        let direct = self.loopback.direct_rtt.spread();
        let tunnel = self.loopback.tunnel_rtt.spread();
        let added = tunnel.p50.zip(direct.p50).map(|(t, d)| t - d);
        let mut targets = vec![Aim {
            name: "loopback: round trip p50 through the tunnel <= direct + 0.2 ms",
            measured: format!(
                "tunnel {} ms, direct {} ms: +{} ms (bare quinn's DATAGRAM frames {} ms)",
                ms(tunnel.p50),
                ms(direct.p50),
                ms(added),
                ms(self.loopback.quinn_rtt.spread().p50)
            ),
            met: added.is_some_and(|a| a <= 0.2),
        }];
        let Some(link) = &self.link else {
            return targets;
        };
        let delivered = link.paced.delivered();
        targets.push(Aim {
            name: "link, 1 % loss: a paced 50 Mbit/s stream delivered >= 98.5 %",
            measured: format!(
                "{:.2} % ({} of {})",
                delivered * 100.0,
                link.paced.sunk.received,
                link.paced.sent.datagrams
            ),
            met: delivered >= 0.985,
        });
        let base = link.base_rtt.spread();
        let beside = link.bulk_rtt.spread();
        let bound = base.p50.map(|b| b + 10.0);
        targets.push(Aim {
            name: "link: round trip p99 beside a bulk tunnel <= base RTT (p50 alone) + 10 ms",
            measured: format!(
                "{} beside the bulk transfer; base p50 {} ms",
                beside.text(),
                ms(base.p50)
            ),
            met: beside.p99.zip(bound).is_some_and(|(p, b)| p <= b),
        });
        targets
    }

    /// The aims as a table.
    pub fn table(&self) -> String {
        let mut out = String::from("targets:\n");
        for aim in self.aims() {
            let met = if aim.met { "met" } else { "MISSED" };
            out.push_str(&format!("  {met:<6} {:<76} {}\n", aim.name, aim.measured));
        }
        out
    }

    /// The JSON document; `context` holds the caller's fields (time, load).
    pub fn json(&self, context: &str) -> String {
        let targets: Vec<String> = self
            .aims()
            .iter()
            .map(|t| aim_json(t.name, &t.measured, t.met))
            .collect();
        let link = self.link.as_ref().map_or("null".into(), OverLink::json);
        format!(
            "{{{context},\"quick\":{},\"loopback\":{},\"link\":{link},\"targets\":[{}]}}\n",
            self.quick,
            self.loopback.json(&self.plan),
            targets.join(",")
        )
    }
}
