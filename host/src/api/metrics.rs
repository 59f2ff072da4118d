//! `GET /metrics`: the endpoint's counters in the Prometheus text format, version 0.0.4.
//!
//! Rendered from the registries on each scrape; nothing is kept between scrapes. A server
//! given `--server-id` puts a `server_id` label on every sample (SPEC §12), first, so the
//! series of several instances scraped into one Prometheus stay apart whatever the scrape
//! configuration adds.

use std::fmt::{Display, Write};

use super::ApiState;
use crate::tunnel::{ServiceStats, Traffic};

/// A sample's labels, in order.
type Labels = Vec<(&'static str, String)>;

/// The content type Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric of the endpoint.
pub fn render(state: &ApiState) -> String {
    let mut out = Exposition::default();
    if let Some(id) = state.server_id {
        out.constant.push(("server_id", id.to_string()));
    }
    tunnels(&mut out, state);
    connections(&mut out, state);
    out.text
}

fn tunnels(out: &mut Exposition, state: &ApiState) {
    let services = state.tunnels.service_stats();
    if services.is_empty() {
        return tunnel_families(out, &[(Vec::new(), endpoint_stats(state))]);
    }
    // The client: every series of tunnels carries its service.
    let labelled: Vec<_> = services
        .into_iter()
        .map(|s| (vec![("service", s.name.to_string())], s))
        .collect();
    tunnel_families(out, &labelled);
}

/// The whole endpoint's tunnels, as one unnamed service (the server).
fn endpoint_stats(state: &ApiState) -> ServiceStats {
    let tunnels = &state.tunnels;
    ServiceStats {
        name: "".into(),
        open: tunnels.open_count(),
        opened: tunnels.opened_total(),
        traffic: tunnels.traffic_total(),
        refused: tunnels.refused_total(),
    }
}

/// The families of tunnels, one sample per group of labels.
fn tunnel_families(out: &mut Exposition, groups: &[(Labels, ServiceStats)]) {
    let with = |labels: &Labels, more: &[(&'static str, &'static str)]| -> Labels {
        let mut all = labels.clone();
        all.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
        all
    };
    out.family("quictun_tunnels_open", "gauge", "Tunnels open now.");
    for (labels, stats) in groups {
        out.sample_owned("quictun_tunnels_open", labels, stats.open);
    }
    out.family(
        "quictun_tunnels_total",
        "counter",
        "Tunnels opened since start.",
    );
    for (labels, stats) in groups {
        out.sample_owned("quictun_tunnels_total", labels, stats.opened);
    }
    out.family(
        "quictun_tunnels_refused_total",
        "counter",
        "Tunnels the server refused since start, by the status of its answer.",
    );
    for (labels, stats) in groups {
        for (status, count) in &stats.refused {
            let labels = with(labels, &[("status", status.label())]);
            out.sample_owned("quictun_tunnels_refused_total", &labels, count);
        }
    }
    let directions = [
        (
            "quictun_bytes_total",
            "Bytes relayed since start, by direction (client_to_server: sent by client applications).",
            (|t: &Traffic| (t.client_to_server, t.server_to_client)) as fn(&Traffic) -> (u64, u64),
        ),
        (
            "quictun_datagrams_total",
            "Datagrams of UDP flows relayed since start, by direction (client_to_server: sent by client applications).",
            |t: &Traffic| (t.client_datagrams, t.server_datagrams),
        ),
    ];
    for (name, help, counts) in directions {
        out.family(name, "counter", help);
        for (labels, stats) in groups {
            let (up, down) = counts(&stats.traffic);
            out.sample_owned(
                name,
                &with(labels, &[("direction", "client_to_server")]),
                up,
            );
            out.sample_owned(
                name,
                &with(labels, &[("direction", "server_to_client")]),
                down,
            );
        }
    }
    out.family(
        "quictun_datagrams_dropped_total",
        "counter",
        "Datagrams of UDP flows dropped since start: a full flow queue, a send that failed.",
    );
    for (labels, stats) in groups {
        let dropped = stats.traffic.dropped_datagrams;
        out.sample_owned("quictun_datagrams_dropped_total", labels, dropped);
    }
}

fn connections(out: &mut Exposition, state: &ApiState) {
    let registry = &state.connections;
    out.family(
        "quictun_handshake_failures_total",
        "counter",
        "QUIC handshakes that failed, by reason.",
    );
    for (reason, count) in registry.handshake_failures() {
        out.sample(
            "quictun_handshake_failures_total",
            &[("reason", reason)],
            count,
        );
    }
    out.family(
        "quictun_connections_open",
        "gauge",
        "QUIC connections open now.",
    );
    out.sample("quictun_connections_open", &[], registry.open_count());
    let live = registry.list();
    // The id keeps two connections from one address (a reconnect) apart.
    let labels: Vec<(String, String)> = live
        .iter()
        .map(|c| (c.remote.to_string(), c.id.to_string()))
        .collect();
    let name = "quictun_connection_rtt_seconds";
    out.family(
        name,
        "gauge",
        "Smoothed round-trip time of each QUIC connection.",
    );
    for (c, (remote, id)) in live.iter().zip(&labels) {
        out.sample(name, &[("remote", remote), ("id", id)], c.rtt.as_secs_f64());
    }
    let name = "quictun_connection_lost_packets_total";
    out.family(name, "counter", "Packets lost on each QUIC connection.");
    for (c, (remote, id)) in live.iter().zip(&labels) {
        out.sample(name, &[("remote", remote), ("id", id)], c.lost_packets);
    }
    let name = "quictun_connection_path_changes_total";
    out.family(
        name,
        "counter",
        "Path changes of each QUIC connection (the peer's address, or the client's own socket).",
    );
    for (c, (remote, id)) in live.iter().zip(&labels) {
        out.sample(name, &[("remote", remote), ("id", id)], c.path_changes);
    }
}

/// The text being built, and the labels every sample carries before its own.
#[derive(Default)]
struct Exposition {
    text: String,
    constant: Labels,
}

// Writing to a String cannot fail, so the results of `write!` are ignored.
impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        let constant = self.constant.iter().map(|(k, v)| (*k, v.as_str()));
        let labels: Vec<String> = constant
            .chain(labels.iter().copied())
            .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
            .collect();
        if !labels.is_empty() {
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn sample_owned(&mut self, name: &str, labels: &Labels, value: impl Display) {
        let borrowed: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.sample(name, &borrowed, value);
    }
}

/// Escapes a label value as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_families_follow_the_text_format() {
        let mut out = Exposition::default();
        out.family("quictun_x_total", "counter", "Some things.");
        out.sample("quictun_x_total", &[], 3);
        out.sample("quictun_x_total", &[("a", "1"), ("b", "q\"\\\n")], 0.25);
        assert_eq!(
            out.text,
            "# HELP quictun_x_total Some things.\n# TYPE quictun_x_total counter\n\
             quictun_x_total 3\nquictun_x_total{a=\"1\",b=\"q\\\"\\\\\\n\"} 0.25\n"
        );
    }

    #[test]
    fn constant_labels_come_first_on_every_sample() {
        let mut out = Exposition {
            constant: vec![("server_id", "7".into())],
            ..Exposition::default()
        };
        out.sample("quictun_a", &[], 1);
        out.sample("quictun_b", &[("reason", "tls")], 2);
        assert_eq!(
            out.text,
            "quictun_a{server_id=\"7\"} 1\nquictun_b{server_id=\"7\",reason=\"tls\"} 2\n"
        );
    }
}
