//! Per-direction counters of the link emulator: what was offered to the link, what it
//! forwarded, and what it dropped and why.
//!
//! The forwarder thread updates them with relaxed atomics (they are independent tallies, read
//! only as a snapshot), so `Link::stats()` can be called at any time from any thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// A number of packets and the number of bytes in them (whole IP packets, headers included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// A snapshot of one direction's counters.
///
/// Every offered packet ends up in exactly one of `forwarded`, `random_dropped`,
/// `queue_dropped` or `write_failed`, or is still in flight inside the emulator
/// (see [`DirStats::in_flight`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets read from the sending side's TUN device.
    pub offered: Count,
    /// Packets written to the receiving side's TUN device.
    pub forwarded: Count,
    /// Packets lost to the configured random loss (decided as they leave the rate limiter, so
    /// a lost packet still used its share of the link's capacity, as on a real lossy link).
    pub random_dropped: Count,
    /// Packets refused because the drop-tail queue in front of the rate limiter was full: this
    /// is how overdriving the link shows.
    pub queue_dropped: Count,
    /// Packets the receiving TUN device refused (should stay 0).
    pub write_failed: Count,
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// From namespace A (198.18.0.1) to namespace B (198.18.0.2).
    pub a_to_b: DirStats,
    /// From namespace B to namespace A.
    pub b_to_a: DirStats,
}

impl DirStats {
    /// Packets offered but not yet forwarded or dropped: waiting in the queue or on the wire.
    pub fn in_flight(&self) -> Count {
        let done = [
            self.forwarded,
            self.random_dropped,
            self.queue_dropped,
            self.write_failed,
        ];
        Count {
            packets: self.offered.packets - done.iter().map(|c| c.packets).sum::<u64>(),
            bytes: self.offered.bytes - done.iter().map(|c| c.bytes).sum::<u64>(),
        }
    }

    /// Renders the counters as one JSON object.
    pub fn to_json(&self) -> String {
        let field = |name: &str, c: Count| {
            format!(
                "\"{name}\":{{\"packets\":{},\"bytes\":{}}}",
                c.packets, c.bytes
            )
        };
        format!(
            "{{{},{},{},{},{}}}",
            field("offered", self.offered),
            field("forwarded", self.forwarded),
            field("random_dropped", self.random_dropped),
            field("queue_dropped", self.queue_dropped),
            field("write_failed", self.write_failed),
        )
    }
}

impl LinkStats {
    /// Renders both directions as one JSON object: `{"a_to_b":{...},"b_to_a":{...}}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"a_to_b\":{},\"b_to_a\":{}}}",
            self.a_to_b.to_json(),
            self.b_to_a.to_json()
        )
    }
}

/// The live counters of one direction, shared between its forwarder thread and `Link`.
#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    offered: AtomicCount,
    forwarded: AtomicCount,
    random_dropped: AtomicCount,
    queue_dropped: AtomicCount,
    write_failed: AtomicCount,
}

/// Which tally a packet is added to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Offered,
    Forwarded,
    RandomDropped,
    QueueDropped,
    WriteFailed,
}

impl DirCounters {
    /// Adds one packet of `bytes` bytes to the tally of `outcome`.
    pub(crate) fn add(&self, outcome: Outcome, bytes: usize) {
        let tally = match outcome {
            Outcome::Offered => &self.offered,
            Outcome::Forwarded => &self.forwarded,
            Outcome::RandomDropped => &self.random_dropped,
            Outcome::QueueDropped => &self.queue_dropped,
            Outcome::WriteFailed => &self.write_failed,
        };
        tally.add(bytes);
    }

    pub(crate) fn snapshot(&self) -> DirStats {
        // Read the outcomes before `offered`, so a packet counted in an outcome is always
        // counted as offered too and `in_flight` never underflows.
        let forwarded = self.forwarded.get();
        let random_dropped = self.random_dropped.get();
        let queue_dropped = self.queue_dropped.get();
        let write_failed = self.write_failed.get();
        DirStats {
            offered: self.offered.get(),
            forwarded,
            random_dropped,
            queue_dropped,
            write_failed,
        }
    }
}

#[derive(Debug, Default)]
struct AtomicCount {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl AtomicCount {
    fn add(&self, bytes: usize) {
        // Bytes first, packets second: with `get` reading packets first, a snapshot's bytes
        // are never behind its packets for the same tally.
        self.bytes.fetch_add(bytes as u64, Ordering::Release);
        self.packets.fetch_add(1, Ordering::Release);
    }

    fn get(&self) -> Count {
        let packets = self.packets.load(Ordering::Acquire);
        let bytes = self.bytes.load(Ordering::Acquire);
        Count { packets, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_packet_is_accounted_for() {
        let counters = DirCounters::default();
        for _ in 0..10 {
            counters.add(Outcome::Offered, 100);
        }
        for _ in 0..6 {
            counters.add(Outcome::Forwarded, 100);
        }
        counters.add(Outcome::RandomDropped, 100);
        counters.add(Outcome::QueueDropped, 100);
        let stats = counters.snapshot();
        assert_eq!(
            stats.in_flight(),
            Count {
                packets: 2,
                bytes: 200
            }
        );
    }

    #[test]
    fn json_names_every_counter() {
        let mut stats = LinkStats::default();
        stats.a_to_b.offered = Count {
            packets: 3,
            bytes: 4500,
        };
        let json = stats.to_json();
        assert!(json.starts_with("{\"a_to_b\":{\"offered\":{\"packets\":3,\"bytes\":4500},"));
        for name in [
            "forwarded",
            "random_dropped",
            "queue_dropped",
            "write_failed",
            "b_to_a",
        ] {
            assert!(
                json.contains(&format!("\"{name}\":")),
                "{name} missing in {json}"
            );
        }
    }
}
