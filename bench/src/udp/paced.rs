//! The paced stream over the link: 50 Mbit/s of 1,200-byte datagrams from namespace A through
//! the tunnel into the target in B, and what became of them — the share delivered, the
//! one-way delay (all of it, and after the first second), RFC 3550 jitter, the link's drops
//! and the kernel's socket-buffer drops on each side.
//!
//! The first second is reported apart because a stream that starts at full rate on a
//! connection that carried almost nothing before finds a small congestion window: its first
//! datagrams wait in the client for the window to open (docs/BENCHMARKS.md, "UDP flows").

use std::net::UdpSocket;
use std::thread;
use std::time::Duration;

use super::DRAIN;
use super::delay::{Spread, jitter, json_ms, ms};
use super::link::{difference, dir_json, dir_text};
use super::senders::{self, Sent};
use super::snmp::UdpCounters;
use super::target::{Arrival, Sunk, Target};
use crate::linkem::{DirStats, Link};

/// Payload bits per second and datagram size.
pub const RATE_BPS: u64 = 50_000_000;
pub const PAYLOAD: usize = 1200;

/// The stream, through the tunnel or directly.
pub struct Paced {
    /// `tunnel` or `direct`.
    pub path: &'static str,
    pub sent: Sent,
    pub sunk: Sunk,
    /// Its data direction (A to B) on the link.
    pub link: DirStats,
    /// The kernel's UDP counters meanwhile in namespace A (the application's socket and the
    /// client's listener) and B (the server's flow socket and the target).
    pub sockets: [UdpCounters; 2],
}

/// Sends the stream through `socket` (in A, connected to the client's UDP listener, or to the
/// target for `direct`) for `duration`, into `target`.
pub fn run(
    link: &Link,
    target: &Target,
    (path, socket): (&'static str, &UdpSocket),
    duration: Duration,
) -> Paced {
    let counters = || {
        [
            link.run_in_a(UdpCounters::read),
            link.run_in_b(UdpCounters::read),
        ]
        .map(Result::unwrap_or_default)
    };
    let (link_before, sockets_before) = (link.stats().a_to_b, counters());
    let run = target.begin_run(true);
    let sent = senders::send_paced(socket, (run, PAYLOAD), RATE_BPS, duration);
    thread::sleep(DRAIN);
    let sunk = target.end_run();
    let sockets_after = counters();
    Paced {
        path,
        sent,
        sunk,
        link: difference(&link.stats().a_to_b, &link_before),
        sockets: [0, 1].map(|i| sockets_after[i].since(&sockets_before[i])),
    }
}

/// Datagrams the stream sends per second.
fn per_second() -> f64 {
    RATE_BPS as f64 / (PAYLOAD as f64 * 8.0)
}

impl Paced {
    /// Share of the datagrams sent that the target received.
    pub fn delivered(&self) -> f64 {
        self.sunk.received as f64 / self.sent.datagrams.max(1) as f64
    }

    /// Payload delivered per second, Mbit/s.
    pub fn delivered_mbps(&self) -> f64 {
        self.sunk.received as f64 * PAYLOAD as f64 * 8.0 / self.sent.seconds / 1e6
    }

    pub fn delays(&self) -> Delays {
        Delays::of(&self.sunk.arrivals, per_second())
    }

    pub fn text(&self) -> String {
        let d = self.delays();
        format!(
            "link paced stream {}, {} Mbit/s of {PAYLOAD}-byte datagrams for {:.1} s: delivered \
             {:.2} % ({:.1} Mbit/s), {} reordered\n  one-way delay {}, jitter (RFC 3550) {:.3} ms; \
             after the first second {}, p99 - p50 {} ms, jitter {:.3} ms; first second's worst \
             {} ms\n  link A to B: {}; socket buffer drops in A {}, in B {}\n",
            self.path,
            RATE_BPS / 1_000_000,
            self.sent.seconds,
            self.delivered() * 100.0,
            self.delivered_mbps(),
            d.reordered,
            d.all.text(),
            d.jitter_ms,
            d.steady.text(),
            ms(d.steady.p99.zip(d.steady.p50).map(|(h, l)| h - l)),
            d.steady_jitter_ms,
            ms(d.first_second_max_ms),
            dir_text(&self.link),
            self.sockets[0].rcvbuf_errors,
            self.sockets[1].rcvbuf_errors
        )
    }

    pub fn json(&self) -> String {
        let d = self.delays();
        let seconds: Vec<String> = d
            .by_second
            .iter()
            .map(|second| {
                format!(
                    "{{\"received\":{},{},\"max_ms\":{}}}",
                    second.len(),
                    Spread::of(second).json_fields(),
                    json_ms(second.iter().copied().reduce(f64::max))
                )
            })
            .collect();
        format!(
            "{{\"rate_bps\":{RATE_BPS},\"payload\":{PAYLOAD},\"seconds\":{:.3},\"sent\":{},\
             \"received\":{},\"delivered\":{:.5},\"delivered_mbit_s\":{:.2},\"send_errors\":{},\
             \"reordered\":{},\"one_way\":{{{},\"jitter_rfc3550_ms\":{:.4}}},\
             \"one_way_after_first_second\":{{{},\"jitter_rfc3550_ms\":{:.4}}},\
             \"first_second_max_ms\":{},\"link_a_to_b\":{},\"udp_counters_a\":{},\
             \"udp_counters_b\":{},\"one_way_by_second\":[{}]}}",
            self.sent.seconds,
            self.sent.datagrams,
            self.sunk.received,
            self.delivered(),
            self.delivered_mbps(),
            self.sent.errors,
            d.reordered,
            d.all.json_fields(),
            d.jitter_ms,
            d.steady.json_fields(),
            d.steady_jitter_ms,
            json_ms(d.first_second_max_ms),
            dir_json(&self.link),
            self.sockets[0].json(),
            self.sockets[1].json(),
            seconds.join(",")
        )
    }
}

/// The one-way delays of a stream, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Delays {
    pub all: Spread,
    pub jitter_ms: f64,
    /// Datagrams sent after the first second.
    pub steady: Spread,
    pub steady_jitter_ms: f64,
    pub first_second_max_ms: Option<f64>,
    /// By the second in which the datagrams were sent.
    pub by_second: Vec<Vec<f64>>,
    /// Datagrams that arrived after one with a higher sequence number.
    pub reordered: usize,
}

impl Delays {
    /// From the arrivals (in arrival order) of a stream sending `per_second` datagrams a
    /// second, numbered from 0.
    pub fn of(arrivals: &[Arrival], per_second: f64) -> Delays {
        let millis = |a: &Arrival| a.delay_ns as f64 / 1e6;
        let second_of = |a: &Arrival| (a.seq as f64 / per_second) as usize;
        let all: Vec<f64> = arrivals.iter().map(millis).collect();
        let steady: Vec<f64> = arrivals
            .iter()
            .filter(|a| second_of(a) > 0)
            .map(millis)
            .collect();
        let mut by_second: Vec<Vec<f64>> = Vec::new();
        for arrival in arrivals {
            let second = second_of(arrival);
            if by_second.len() <= second {
                by_second.resize(second + 1, Vec::new());
            }
            by_second[second].push(millis(arrival));
        }
        let first_second_max_ms = by_second
            .first()
            .and_then(|first| first.iter().copied().reduce(f64::max));
        Delays {
            all: Spread::of(&all),
            jitter_ms: jitter(&all),
            steady: Spread::of(&steady),
            steady_jitter_ms: jitter(&steady),
            first_second_max_ms,
            by_second,
            reordered: reordered(arrivals),
        }
    }
}

fn reordered(arrivals: &[Arrival]) -> usize {
    let mut highest = None;
    let mut late = 0;
    for arrival in arrivals {
        match highest {
            Some(h) if arrival.seq < h => late += 1,
            _ => highest = Some(arrival.seq),
        }
    }
    late
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(seq: u64, delay_ms: u64) -> Arrival {
        Arrival {
            seq,
            delay_ns: delay_ms * 1_000_000,
        }
    }

    #[test]
    fn the_first_second_is_kept_apart_from_the_steady_state() {
        // 10 a second: a start-up queue of 60 ms in the first second, 10 ms after it.
        let arrivals: Vec<Arrival> = (0..30)
            .map(|seq| arrival(seq, if seq < 5 { 60 } else { 10 }))
            .collect();
        let delays = Delays::of(&arrivals, 10.0);
        assert_eq!(delays.first_second_max_ms, Some(60.0));
        assert_eq!(delays.steady.p99, Some(10.0));
        assert_eq!(delays.steady_jitter_ms, 0.0);
        assert!(delays.jitter_ms > 0.0);
        assert_eq!(delays.all.p99, Some(60.0));
        let counts: Vec<usize> = delays.by_second.iter().map(Vec::len).collect();
        assert_eq!(counts, [10, 10, 10]);
        assert_eq!(delays.reordered, 0);
    }

    #[test]
    fn late_arrivals_count_as_reordered_and_gaps_leave_empty_seconds() {
        let arrivals = [arrival(0, 1), arrival(2, 1), arrival(1, 1), arrival(25, 1)];
        let delays = Delays::of(&arrivals, 10.0);
        assert_eq!(delays.reordered, 1);
        let counts: Vec<usize> = delays.by_second.iter().map(Vec::len).collect();
        assert_eq!(counts, [3, 0, 1]);
        let none = Delays::of(&[], 10.0);
        assert_eq!((none.first_second_max_ms, none.all.p50), (None, None));
    }
}
