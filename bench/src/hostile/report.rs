//! The hostile suite's figures: one line per phase as it ends, the targets of the issue and
//! SPEC §7 as a table, and the JSON for bench/results/hostile.json.

use std::collections::BTreeMap;

use super::good::{aim_json, json_string, number};
use super::rest::StalledRest;
use super::{HandshakePhase, StallPhase, TokenPhase};
use crate::cc::report::quantile;

/// Everything the suite measured.
pub struct Report {
    pub quick: bool,
    pub flood: HandshakePhase,
    pub many_flood: HandshakePhase,
    pub tokens: TokenPhase,
    pub stall: StallPhase,
    pub rest: StalledRest,
}

/// One target: what it asks, what was measured, whether that meets it.
pub struct Target {
    pub name: &'static str,
    pub measured: String,
    pub met: bool,
}

const MIB: f64 = 1024.0;

impl Report {
    pub fn targets(&self) -> Vec<Target> {
        let good = &self.flood.good;
        let all_within = |s: &super::Samples, ms: f64| s.tries() > 0 && s.within(ms) == s.tries();
        let closed = &self.rest.closed_after_s;
        let slowest_close = closed.iter().copied().reduce(f64::max);
        vec![
            Target {
                name: "handshake flood: a good client connects within 2 s in >= 9 of 10 tries",
                measured: good.text(2000.0),
                met: good.tries() > 0 && good.within(2000.0) * 10 >= good.tries() * 9,
            },
            Target {
                name: "handshake flood (one socket): server RSS growth <= 64 MiB",
                measured: self.flood.rss.text(),
                met: self.flood.rss.growth_mib() <= 64.0,
            },
            Target {
                name: "handshake flood (1 016 addresses): server RSS growth <= 64 MiB",
                measured: self.many_flood.rss.text(),
                met: self.many_flood.rss.growth_mib() <= 64.0,
            },
            Target {
                name: "a half-open handshake costs <= 32 KiB (SPEC 7; 1 016 addresses)",
                measured: format!(
                    "{:.1} KiB (growth / {} held)",
                    self.many_flood.per_handshake_kib(),
                    self.many_flood.held_at_once
                ),
                met: self.many_flood.per_handshake_kib() <= 32.0,
            },
            Target {
                name: "pending-token flood: server RSS growth <= 64 MiB",
                measured: self.tokens.rss.text(),
                met: self.tokens.rss.growth_mib() <= 64.0,
            },
            Target {
                name: "pending-token flood: a good tunnel served within 1 s",
                measured: self.tokens.good.text(1000.0),
                met: all_within(&self.tokens.good, 1000.0),
            },
            Target {
                name: "32 tunnels into stalled targets, --max-buffered 64MiB: RSS growth <= 128 MiB",
                measured: self.stall.rss.text(),
                met: self.stall.rss.growth_mib() <= 128.0,
            },
            Target {
                name: "stalled targets: a new client's tunnels served within 1 s (SPEC 7)",
                measured: self.stall.good.text(1000.0),
                met: all_within(&self.stall.good, 1000.0),
            },
            Target {
                name: "300 stalled REST clients: /healthz within 1 s",
                measured: self.rest.healthz.text(1000.0),
                met: all_within(&self.rest.healthz, 1000.0),
            },
            Target {
                name: "300 stalled REST clients: closed within 20 s",
                measured: format!(
                    "{} of {} closed, the last after {}; {} still open after {:.0} s",
                    closed.len(),
                    self.rest.stalled,
                    slowest_close.map_or("-".into(), |s| format!("{s:.1} s")),
                    self.rest.still_open(),
                    self.rest.watched_s
                ),
                met: self.rest.stalled > 0
                    && self.rest.still_open() == 0
                    && slowest_close.is_some_and(|s| s <= 20.0),
            },
        ]
    }

    /// The targets as a text table.
    pub fn table(&self) -> String {
        let mut out = String::from("targets:\n");
        for target in self.targets() {
            let verdict = if target.met { "met" } else { "MISSED" };
            out.push_str(&format!(
                "  {verdict:<6} {:<80} {}\n",
                target.name, target.measured
            ));
        }
        out
    }

    /// The JSON document; `context` holds leading fields (time, load), without braces.
    pub fn json(&self, context: &str) -> String {
        let targets: Vec<String> = self
            .targets()
            .iter()
            .map(|t| aim_json(t.name, &t.measured, t.met))
            .collect();
        format!(
            "{{{context},\"quick\":{},\"handshake_flood\":{},\"handshake_flood_many\":{},\
             \"token_flood\":{},\"stalled_targets\":{},\"stalled_rest\":{},\"targets\":[{}]}}\n",
            self.quick,
            self.flood.json(),
            self.many_flood.json(),
            self.tokens.json(),
            self.stall.json(),
            rest_json(&self.rest),
            targets.join(",")
        )
    }
}

impl HandshakePhase {
    /// RSS growth per handshake the server held at once, in KiB: an upper bound, since the
    /// growth also holds whatever else the flood cost.
    pub fn per_handshake_kib(&self) -> f64 {
        self.rss.peak.saturating_sub(self.rss.before) as f64 / self.held_at_once.max(1) as f64
    }

    /// Whether the server refused handshakes for want of room, so that it held as many as its
    /// budget allows: per address for one source, in all for many.
    pub fn budget_full(&self) -> bool {
        let reason = match self.sources {
            1 => "too_many_handshakes_from_address",
            _ => "too_many_handshakes",
        };
        self.failures.get(reason).is_some_and(|&n| n > 0)
    }

    pub fn text(&self, label: &str) -> String {
        let f = &self.flood;
        format!(
            "{label}: {} Initials in {:.0} s ({:.0}/s, aimed at {}/s); back: {} datagrams, {} \
             connections answered, {} taken on (Handshake packet), {} Retry ({} answered) | good \
             client: {} | server {}, {:.1} KiB per half-open handshake ({} held{}) | failures {}",
            f.sent,
            f.seconds,
            f.sent as f64 / f.seconds.max(0.001),
            self.rate,
            f.datagrams_back,
            f.answered,
            f.taken_on,
            f.retries,
            f.retries_answered,
            self.good.text(2000.0),
            self.rss.text(),
            self.per_handshake_kib(),
            self.held_at_once,
            if self.budget_full() {
                ", budget full"
            } else {
                ", budget NOT full"
            },
            failures_text(&self.failures)
        )
    }

    pub fn json(&self) -> String {
        let f = &self.flood;
        format!(
            "{{\"sources\":{},\"answer_retries\":{},\"rate_per_s\":{},\"seconds\":{:.1},\
             \"initials_sent\":{},\"achieved_per_s\":{:.0},\"send_errors\":{},\"datagrams_back\":{},\"answered\":{},\
             \"taken_on\":{},\"retries\":{},\"retries_answered\":{},\"good_client\":{},\
             \"rss\":{},\"held_at_once\":{},\"budget_full\":{},\"per_handshake_kib\":{:.1},\
             \"handshake_failures\":{}}}",
            self.sources,
            self.answer_retries,
            self.rate,
            f.seconds,
            f.sent,
            f.sent as f64 / f.seconds.max(0.001),
            f.send_errors,
            f.datagrams_back,
            f.answered,
            f.taken_on,
            f.retries,
            f.retries_answered,
            self.good.json(2000.0),
            self.rss.json(),
            self.held_at_once,
            self.budget_full(),
            self.per_handshake_kib(),
            failures_json(&self.failures)
        )
    }
}

impl TokenPhase {
    pub fn text(&self) -> String {
        let f = &self.flood;
        format!(
            "pending tokens, {} connections from 127.0.0.2: {} streams opened in {:.0} s, at most {} \
             open at once, {} answered bad token (2), {} ended otherwise | good tunnel: {} | server {}",
            f.connections,
            f.opened,
            f.seconds,
            f.most_open,
            f.bad_token,
            f.other_ends,
            self.good.text(1000.0),
            self.rss.text()
        )
    }

    pub fn json(&self) -> String {
        let f = &self.flood;
        format!(
            "{{\"connections\":{},\"streams_per_connection_tried\":10000,\"seconds\":{:.1},\
             \"opened\":{},\"most_open\":{},\"bad_token\":{},\"other_ends\":{},\
             \"good_tunnel\":{},\"rss\":{}}}",
            f.connections,
            f.seconds,
            f.opened,
            f.most_open,
            f.bad_token,
            f.other_ends,
            self.good.json(1000.0),
            self.rss.json()
        )
    }
}

impl StallPhase {
    pub fn text(&self) -> String {
        format!(
            "stalled targets, {} tunnels ({} clients), --max-buffered 64MiB: applications wrote \
             {:.1} MiB, server relayed {:.1} MiB, target accepted {} (server's tunnels per \
             connection {:?}) | a new client's tunnels (the first with its handshake): {} | server {}",
            self.tunnels,
            self.clients,
            self.written as f64 / MIB / MIB,
            self.relayed as f64 / MIB / MIB,
            self.accepted_by_target,
            self.per_connection,
            self.good.text(1000.0),
            self.rss.text()
        )
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"clients\":{},\"tunnels\":{},\"max_buffered_mib\":64,\"target_accepted\":{},\
             \"server_tunnels_per_connection\":{:?},\
             \"app_written_bytes\":{},\"server_relayed_bytes\":{},\"new_client_tunnels\":{},\"rss\":{}}}",
            self.clients,
            self.tunnels,
            self.accepted_by_target,
            self.per_connection,
            self.written,
            self.relayed,
            self.good.json(1000.0),
            self.rss.json()
        )
    }
}

pub fn rest_text(rest: &StalledRest) -> String {
    let closed = &rest.closed_after_s;
    format!(
        "stalled REST: {} connections sent half a request line ({} could not connect); {} closed \
         by the server ({} with an answer first; after {} median, {} at the latest), {} still open \
         after {:.0} s | /healthz meanwhile: {}",
        rest.stalled,
        rest.connect_failures,
        closed.len(),
        rest.answered,
        seconds(quantile(closed, 0.5)),
        seconds(closed.iter().copied().reduce(f64::max)),
        rest.still_open(),
        rest.watched_s,
        rest.healthz.text(1000.0)
    )
}

fn rest_json(rest: &StalledRest) -> String {
    let closed = &rest.closed_after_s;
    format!(
        "{{\"stalled\":{},\"connect_failures\":{},\"closed\":{},\"answered_first\":{},\
         \"closed_median_s\":{},\
         \"closed_last_s\":{},\"still_open\":{},\"watched_s\":{:.1},\"healthz\":{}}}",
        rest.stalled,
        rest.connect_failures,
        closed.len(),
        rest.answered,
        number(quantile(closed, 0.5)),
        number(closed.iter().copied().reduce(f64::max)),
        rest.still_open(),
        rest.watched_s,
        rest.healthz.json(1000.0)
    )
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("-".into(), |s| format!("{s:.1} s"))
}

fn failures_text(failures: &BTreeMap<String, u64>) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    failures
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failures_json(failures: &BTreeMap<String, u64>) -> String {
    let items: Vec<String> = failures
        .iter()
        .map(|(reason, n)| format!("{}:{n}", json_string(reason)))
        .collect();
    format!("{{{}}}", items.join(","))
}
