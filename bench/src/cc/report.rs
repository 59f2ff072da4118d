//! cc-bench's output: a text table against the targets, and one JSON document with
//! every number (and the series the plot script draws).

use std::fmt::Write as _;

use super::{FlowResult, Sender, ShareResult};
use crate::linkem::LinkStats;

/// Goodput per sender and scenario, then queue drops and the 0 %-loss RTT.
pub fn table(flows: &[FlowResult], shares: &[ShareResult]) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for flow in flows {
        if !scenarios.contains(&flow.scenario.name.as_str()) {
            scenarios.push(&flow.scenario.name);
        }
    }
    let mut out = String::new();
    let _ = write!(out, "{:<12}", "Mbit/s");
    for s in &scenarios {
        let _ = write!(out, " {s:>10}");
    }
    let _ = writeln!(
        out,
        "   queue drops (share of sent) per scenario   median RTT @0%"
    );
    for sender in Sender::ALL {
        let mine: Vec<&FlowResult> = flows.iter().filter(|f| f.sender == sender).collect();
        if mine.is_empty() {
            continue;
        }
        let _ = write!(out, "{:<12}", sender.name());
        let find = |s: &str| mine.iter().find(|f| f.scenario.name == s);
        for s in &scenarios {
            match find(s) {
                Some(f) => {
                    let _ = write!(out, " {:>10.1}", f.goodput_mbps);
                }
                None => {
                    let _ = write!(out, " {:>10}", "-");
                }
            }
        }
        let _ = write!(out, "  ");
        for s in &scenarios {
            match find(s) {
                Some(f) => {
                    let _ = write!(out, " {:>6.2}%", f.queue_drop_share() * 100.0);
                }
                None => {
                    let _ = write!(out, " {:>7}", "-");
                }
            }
        }
        let zero = mine.iter().find(|f| f.scenario.loss == 0.0);
        if let Some(f) = zero {
            let median = median_ms(&f.rtt_samples_ms);
            let base = f.scenario.rtt.as_secs_f64() * 1e3;
            let _ = write!(out, "   {median:.1} ms ({:.2}× base)", median / base);
        }
        let _ = writeln!(out);
    }
    for share in shares {
        let _ = writeln!(out, "{}", share_line(share));
    }
    out
}

/// Everything as one JSON object.
/// One sharing run in a line.
pub fn share_line(share: &ShareResult) -> String {
    format!(
        "sharing {:.0} s ({}, {} % loss): {} {:.1} Mbit/s ({:.1} %) vs {} {:.1} Mbit/s \
         ({:.1} %); queue drops {:.2} %, median RTT {:.1} ms",
        share.duration.as_secs_f64(),
        format_ms(share.rtt.as_secs_f64() * 1e3),
        share.loss * 100.0,
        share.ours.name(),
        share.ours_mbps,
        share.ours_share() * 100.0,
        share.competitor.name(),
        share.theirs_mbps,
        (1.0 - share.ours_share()) * 100.0,
        share.queue_drop_share() * 100.0,
        median_ms(&share.rtt_samples_ms),
    )
}

pub fn json(flows: &[FlowResult], shares: &[ShareResult], context: &str) -> String {
    let flows: Vec<String> = flows.iter().map(flow_json).collect();
    let shares: Vec<String> = shares.iter().map(share_json).collect();
    format!(
        "{{{context},\n\"flows\":[\n{}\n],\n\"sharing\":[\n{}\n]}}\n",
        flows.join(",\n"),
        shares.join(",\n")
    )
}

fn flow_json(f: &FlowResult) -> String {
    format!(
        "{{\"sender\":\"{}\",\"scenario\":\"{}\",\"rtt_ms\":{},\"loss\":{},\"duration_s\":{},\
         \"goodput_mbps\":{:.2},\"queue_drop_share\":{:.5},\"random_drop_share\":{:.5},\
         {},\"series_mbps\":{},\"link\":{}}}",
        f.sender.name(),
        f.scenario.name,
        f.scenario.rtt.as_millis(),
        f.scenario.loss,
        f.scenario.duration.as_secs_f64(),
        f.goodput_mbps,
        f.queue_drop_share(),
        f.random_drop_share(),
        rtt_json(&f.rtt_samples_ms),
        list(&f.series_mbps),
        stats_json(&f.stats),
    )
}

pub fn share_json(s: &ShareResult) -> String {
    format!(
        "{{\"ours\":\"{}\",\"competitor\":\"{}\",\"rtt_ms\":{},\"loss\":{},\"duration_s\":{},\
         \"ours_mbps\":{:.2},\"theirs_mbps\":{:.2},\"ours_share\":{:.4},\"queue_drop_share\":{:.5},\
         {},\"ours_series_mbps\":{},\"theirs_series_mbps\":{},\"link\":{}}}",
        s.ours.name(),
        s.competitor.name(),
        s.rtt.as_millis(),
        s.loss,
        s.duration.as_secs_f64(),
        s.ours_mbps,
        s.theirs_mbps,
        s.ours_share(),
        s.queue_drop_share(),
        rtt_json(&s.rtt_samples_ms),
        list(&s.ours_series_mbps),
        list(&s.theirs_series_mbps),
        stats_json(&s.stats),
    )
}

fn rtt_json(samples: &[f64]) -> String {
    let q = |q: f64| quantile(samples, q).map_or("null".to_string(), |v| format!("{v:.2}"));
    format!(
        "\"rtt_samples\":{},\"rtt_p10_ms\":{},\"rtt_median_ms\":{},\"rtt_p90_ms\":{}",
        samples.len(),
        q(0.1),
        q(0.5),
        q(0.9)
    )
}

fn stats_json(stats: &LinkStats) -> String {
    format!(
        "{{\"a_to_b\":{},\"b_to_a\":{}}}",
        stats.a_to_b.to_json(),
        stats.b_to_a.to_json()
    )
}

fn list(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    format!("[{}]", items.join(","))
}

fn median_ms(samples: &[f64]) -> f64 {
    quantile(samples, 0.5).unwrap_or(f64::NAN)
}

/// The `q`-quantile (0.0–1.0) of `samples`, nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len().checked_sub(1)?) as f64 * q).round() as usize;
    sorted.get(index).copied()
}

fn format_ms(ms: f64) -> String {
    format!("{ms:.0} ms")
}
