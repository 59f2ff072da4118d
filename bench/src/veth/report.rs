//! The veth suite's results: a table per MTU and the JSON of quictun-bench's other suites.

use super::{PATHS, Round, Sample, WAYS, expected_payload};
use crate::cc::report::quantile;

/// Everything the suite measured.
pub struct Report {
    pub quick: bool,
    /// Moved by each transfer.
    pub bytes: u64,
    pub rounds: usize,
    pub mtus: Vec<MtuReport>,
}

/// One MTU's rounds.
pub struct MtuReport {
    pub mtu: u32,
    /// Moved by each transfer.
    pub bytes: u64,
    pub rounds: Vec<Round>,
}

impl Report {
    /// The MTUs side by side (each one's own table is printed as it completes).
    pub fn table(&self) -> String {
        let mut out = format!(
            "veth summary: Gbit/s and the tunnel's CPU per GiB over bare quinn's, medians \
             ({} MiB each way, {} round(s)):\n\
             \x20 {:>5} {:>20} {:>20} {:>20} {:>24} {:>22}\n",
            self.bytes >> 20,
            self.rounds,
            "MTU",
            "direct TCP up/down",
            "tunnel up/down",
            "bare quinn up/down",
            "tunnel/quinn CPU up/down",
            "maxUdpPayload cl/srv"
        );
        for mtu in &self.mtus {
            let gbps = |p: usize| {
                let [up, down] = [0, 1].map(|w| mtu.median(|r| Some(r.samples[w][p].gbps)));
                format!("{} / {}", fixed(up), fixed(down))
            };
            let [cpu, _] = mtu.tunnel_of_quinn();
            let last = mtu.rounds.last().map(|r| r.payloads);
            out += &format!(
                "  {:>5} {:>20} {:>20} {:>20} {:>24} {:>22}\n",
                mtu.mtu,
                gbps(0),
                gbps(1),
                gbps(2),
                format!("{} / {} x", fixed(cpu[0]), fixed(cpu[1])),
                last.map_or("-".into(), |p| format!("{} / {}", p.client, p.server)),
            );
        }
        out
    }

    pub fn json(&self, context: &str) -> String {
        let mtus: Vec<String> = self.mtus.iter().map(MtuReport::json).collect();
        format!(
            "{{{context},\"quick\":{},\"bytes\":{},\"rounds\":{},\"mtus\":[{}]}}\n",
            self.quick,
            self.bytes,
            self.rounds,
            mtus.join(",")
        )
    }
}

impl MtuReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "veth MTU {}: {} round(s), {} MiB each way over one connection, medians\n\
             \x20 {:<11} {:>9} {:>11} {:>18} {:>25}\n",
            self.mtu,
            self.rounds.len(),
            self.bytes >> 20,
            "path",
            "up Gbit/s",
            "down Gbit/s",
            "CPU s/GiB up/down",
            "machine core-s/GiB up/down"
        );
        for (p, name) in PATHS.iter().enumerate() {
            let [up, down] = [0, 1].map(|w| self.median(|r| Some(r.samples[w][p].gbps)));
            let own = [0, 1].map(|w| self.median(|r| r.samples[w][p].own_s_per_gib));
            let machine = [0, 1].map(|w| self.median(|r| Some(r.samples[w][p].machine_s_per_gib)));
            out += &format!(
                "  {name:<11} {:>9} {:>11} {:>18} {:>25}\n",
                fixed(up),
                fixed(down),
                format!("{} / {}", fixed(own[0]), fixed(own[1])),
                format!("{} / {}", fixed(machine[0]), fixed(machine[1])),
            );
        }
        let [cpu, gbps] = self.tunnel_of_quinn();
        out += &format!(
            "  tunnel / bare quinn, medians of per-round ratios: CPU per GiB {} x up, {} x down; \
             Gbit/s {} % up, {} % down\n",
            fixed(cpu[0]),
            fixed(cpu[1]),
            percent(gbps[0]),
            percent(gbps[1]),
        );
        let sizes = |f: fn(&Round) -> u16| {
            let all: Vec<String> = self.rounds.iter().map(|r| f(r).to_string()).collect();
            all.join("/")
        };
        out + &format!(
            "  tunnel's maxUdpPayload after each round: client {}, server {} (MTU - 28 = {})\n",
            sizes(|r| r.payloads.client),
            sizes(|r| r.payloads.server),
            expected_payload(self.mtu)
        )
    }

    fn json(&self) -> String {
        let paths: Vec<String> = PATHS
            .iter()
            .enumerate()
            .map(|(p, name)| {
                let ways: Vec<String> = WAYS
                    .iter()
                    .enumerate()
                    .map(|(w, (way, _))| format!("\"{way}\":{}", self.way_json(w, p)))
                    .collect();
                format!("{{\"name\":\"{name}\",{}}}", ways.join(","))
            })
            .collect();
        let [cpu, gbps] = self.tunnel_of_quinn();
        let ratios: Vec<String> = WAYS
            .iter()
            .enumerate()
            .map(|(w, (way, _))| {
                format!(
                    "\"{way}\":{{\"cpu_s_per_gib\":{},\"gbps\":{}}}",
                    number(cpu[w]),
                    number(gbps[w])
                )
            })
            .collect();
        let payloads: Vec<String> = self
            .rounds
            .iter()
            .map(|r| {
                format!(
                    "{{\"client\":{},\"server\":{}}}",
                    r.payloads.client, r.payloads.server
                )
            })
            .collect();
        format!(
            "{{\"mtu\":{},\"expected_max_udp_payload\":{},\"max_udp_payload\":[{}],\
             \"paths\":[{}],\"tunnel_of_quinn\":{{{}}}}}",
            self.mtu,
            expected_payload(self.mtu),
            payloads.join(","),
            paths.join(","),
            ratios.join(",")
        )
    }

    /// Path `p`'s medians one way, and its rounds' Gbit/s.
    fn way_json(&self, w: usize, p: usize) -> String {
        let sample = |r: &Round| r.samples[w][p];
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|r| format!("{:.3}", sample(r).gbps))
            .collect();
        format!(
            "{{\"gbps\":{},\"cpu_s_per_gib\":{},\"machine_core_s_per_gib\":{},\"rounds_gbps\":[{}]}}",
            number(self.median(|r| Some(sample(r).gbps))),
            number(self.median(|r| sample(r).own_s_per_gib)),
            number(self.median(|r| Some(sample(r).machine_s_per_gib))),
            rounds.join(",")
        )
    }

    /// The tunnel's own CPU per GiB and its Gbit/s, each over bare quinn's: medians of the
    /// per-round ratios, up and down.
    fn tunnel_of_quinn(&self) -> [[Option<f64>; 2]; 2] {
        let ratio = |f: fn(&Sample) -> Option<f64>| {
            [0, 1].map(|w| self.median(|r| Some(f(&r.samples[w][1])? / f(&r.samples[w][2])?)))
        };
        [ratio(|s| s.own_s_per_gib), ratio(|s| Some(s.gbps))]
    }

    /// The median over the rounds of what `f` gives (`None` when it gives nothing).
    fn median(&self, f: impl Fn(&Round) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.rounds.iter().filter_map(f).collect();
        quantile(&values, 0.5)
    }
}

fn fixed(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:.0}", v * 100.0))
}

fn number(value: Option<f64>) -> String {
    value.map_or("null".into(), |v| format!("{v:.3}"))
}
