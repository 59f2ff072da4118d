//! The interactive suite's JSON (bench/results/interactive.json): the configuration, every
//! case with its round trips in sending order and, beside a bulk transfer, the bulk's goodput,
//! linkem's counters and the UDP probe's round trips; the base RTT, cc-bench's sharing runs
//! and the targets.

use super::case::{CaseResult, Path};
use super::echo::{INTERVAL, MESSAGE};
use super::report::{BASE_RTT_MS, Report};
use crate::cc::report::{quantile, share_json};
use crate::cc::{QUEUE, RATE_BPS};
use crate::hostile::good::aim_json;
use crate::udp::delay::json_ms;
use crate::udp::link::dir_json;

impl Report {
    /// The JSON document; `context` holds the caller's fields (time, load).
    pub fn json(&self, context: &str) -> String {
        let cases: Vec<String> = self.cases.iter().map(case_json).collect();
        let base: Vec<String> = self
            .plan
            .losses
            .iter()
            .map(|&l| {
                format!(
                    "{{\"loss\":{l},\"direct_alone_p50_ms\":{}}}",
                    json_ms(self.base_ms(l))
                )
            })
            .collect();
        let shares: Vec<String> = self.shares.iter().map(share_json).collect();
        let aims: Vec<String> = self
            .aims()
            .iter()
            .map(|a| aim_json(&a.name, &a.measured, a.met))
            .collect();
        format!(
            "{{{context},\"quick\":{},\"config\":{{\"rtt_ms\":{BASE_RTT_MS},\"rate_bps\":{RATE_BPS},\
             \"queue_ms\":{},\"seed\":1,\"message_bytes\":{MESSAGE},\"interval_ms\":{},\
             \"echo_s\":{},\"bulk_lead_s\":{},\"share_s\":{},\"tunnel_congestion\":\"adaptive\"}},\
             \"cases\":[\n{}\n],\"base_rtt\":[{}],\"sharing\":[\n{}\n],\"targets\":[{}]}}\n",
            self.quick,
            QUEUE.as_millis(),
            INTERVAL.as_millis(),
            self.plan.echo.as_secs_f64(),
            self.plan.bulk_lead.as_secs_f64(),
            self.plan.share.as_secs_f64(),
            cases.join(",\n"),
            base.join(","),
            shares.join(",\n"),
            aims.join(",")
        )
    }
}

fn case_json(result: &CaseResult) -> String {
    let s = result.echoes.summary();
    let echoes = &result.echoes;
    let mean = (!echoes.rtt_ms.is_empty())
        .then(|| echoes.rtt_ms.iter().sum::<f64>() / echoes.rtt_ms.len() as f64);
    let bulk = result.bulk.as_ref().map_or("null".into(), |b| {
        let q = |q| json_ms(quantile(&b.probe_ms, q));
        format!(
            "{{\"mbit_s\":{:.2},\"link_a_to_b\":{},\"link_b_to_a\":{},\"probe\":{{\"samples\":{},\
             \"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"series_ms\":{}}}}}",
            b.mbps,
            dir_json(&b.a_to_b),
            dir_json(&b.b_to_a),
            b.probe_ms.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            series(&b.probe_ms)
        )
    });
    format!(
        "{{\"case\":\"{}\",\"path\":\"{}\",\"bulk_beside\":{},\"loss\":{},\"tcp_congestion\":\"{}\",\
         \"sent\":{},\"received\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"max_ms\":{},\
         \"mean_ms\":{},\"series_ms\":{},\"bulk\":{bulk}}}",
        result.case.name(),
        match result.case.path {
            Path::Tunnel => "tunnel",
            Path::Direct => "direct",
        },
        result.case.bulk,
        result.loss,
        result.tcp_congestion,
        echoes.sent,
        echoes.rtt_ms.len(),
        json_ms(s.p50),
        json_ms(s.p90),
        json_ms(s.p99),
        json_ms(s.max),
        json_ms(mean),
        series(&echoes.rtt_ms)
    )
}

fn series(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    format!("[{}]", items.join(","))
}
