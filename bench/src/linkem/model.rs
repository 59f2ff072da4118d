//! The link model of one direction, free of I/O so it can be tested with made-up clocks:
//! a drop-tail queue in front of a token-bucket serialiser, seeded random loss, then a
//! constant propagation delay.
//!
//! A packet's whole fate is computed when it arrives: the serialiser is a virtual clock (the
//! time the link becomes free), so the departure and arrival times are known at once, and
//! because the delay is constant per direction every queue here is a FIFO ordered by time.
//! The forwarder only has to sleep until the head of the line is due.

use std::collections::VecDeque;
use std::sync::Arc;

use super::stats::{DirCounters, Outcome};

/// Nanoseconds since an arbitrary, fixed epoch (the link's start).
pub type Nanos = u64;

/// Anything with a size on the wire (an IP packet: its length, headers included).
pub trait WireLen {
    fn wire_len(&self) -> usize;
}

/// The rate limiter: a token bucket whose depth is one packet, i.e. a serialiser. A packet
/// starts when the link is free and occupies it for `size / rate`; it never lets the long-run
/// rate exceed the configured one, and never sends a burst faster than the rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_bps: Option<u64>,
    /// When the packet being transmitted (the last one scheduled) has been fully sent.
    free_at: Nanos,
}

impl TokenBucket {
    /// A bucket filling at `rate_bps` bits per second; `None` means no limit.
    pub fn new(rate_bps: Option<u64>) -> Self {
        TokenBucket {
            rate_bps,
            free_at: 0,
        }
    }

    /// How long `bytes` occupy the link, rounded up so rounding can only slow the link down.
    pub fn transmission_time(&self, bytes: usize) -> Nanos {
        match self.rate_bps {
            None => 0,
            Some(rate) => (bytes as u128 * 8 * 1_000_000_000).div_ceil(rate as u128) as Nanos,
        }
    }

    /// Schedules a packet of `bytes` arriving at `now`; returns when its transmission starts
    /// and when it ends (the moment its last bit is on the wire).
    pub fn schedule(&mut self, now: Nanos, bytes: usize) -> (Nanos, Nanos) {
        let start = now.max(self.free_at);
        let end = start + self.transmission_time(bytes);
        self.free_at = end;
        (start, end)
    }
}

/// The bottleneck buffer: packets wait here until the serialiser starts sending them. It
/// holds at most `limit_bytes` (drop-tail: a packet that does not fit is refused) and at most
/// `limit_packets`.
#[derive(Debug)]
pub struct DropTailQueue<T> {
    items: VecDeque<(Nanos, T)>,
    bytes: usize,
    limit_bytes: usize,
    limit_packets: usize,
}

impl<T: WireLen> DropTailQueue<T> {
    pub fn new(limit_bytes: usize, limit_packets: usize) -> Self {
        DropTailQueue {
            items: VecDeque::new(),
            bytes: 0,
            limit_bytes,
            limit_packets,
        }
    }

    /// Whether a packet of `bytes` fits now.
    pub fn fits(&self, bytes: usize) -> bool {
        self.bytes.saturating_add(bytes) <= self.limit_bytes
            && self.items.len() < self.limit_packets
    }

    /// Appends `item`, which leaves the queue at `leaves_at` (not earlier than the tail's).
    /// Refuses it (handing it back) when it does not fit.
    pub fn push(&mut self, leaves_at: Nanos, item: T) -> Result<(), T> {
        if !self.fits(item.wire_len()) {
            return Err(item);
        }
        self.bytes += item.wire_len();
        self.items.push_back((leaves_at, item));
        Ok(())
    }

    /// Removes the head if it has left by `now`.
    pub fn pop_left(&mut self, now: Nanos) -> Option<T> {
        if self.items.front()?.0 > now {
            return None;
        }
        let (_, item) = self.items.pop_front()?;
        self.bytes -= item.wire_len();
        Some(item)
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front().map(|(_, item)| item)
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Seeded Bernoulli loss: each call to `lose` is an independent draw with probability `p`.
/// A SplitMix64 generator: tiny, fast and statistically good enough for loss patterns, and the
/// same seed replays the same pattern.
#[derive(Clone, Debug)]
pub struct LossRng {
    state: u64,
    /// A draw below this loses the packet; `u64::MAX` with `always` covers p = 1.
    threshold: u64,
    always: bool,
}

impl LossRng {
    pub fn new(probability: f64, seed: u64) -> Self {
        let p = probability.clamp(0.0, 1.0);
        LossRng {
            state: seed,
            // 2^64 * p, saturating: exact enough (2^-64 granularity) for any useful p.
            threshold: (p * 18_446_744_073_709_551_616.0) as u64,
            always: p >= 1.0,
        }
    }

    /// Draws whether the next packet is lost.
    pub fn lose(&mut self) -> bool {
        self.always || self.next_u64() < self.threshold
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The parameters of one direction.
#[derive(Clone, Debug)]
pub struct PathConfig {
    pub rate_bps: Option<u64>,
    /// One-way propagation delay.
    pub delay: Nanos,
    /// Bottleneck buffer size in bytes (`usize::MAX` without a rate limit: nothing queues).
    pub queue_bytes: usize,
    /// Bound on packets held in total (queue plus wire): keeps memory bounded when there is no
    /// rate limit, where the byte bound of the queue does not apply.
    pub max_packets: usize,
    pub loss: f64,
    pub seed: u64,
}

/// A packet with the time its last bit reaches the far end.
#[derive(Debug)]
struct Scheduled<P> {
    arrives_at: Nanos,
    packet: P,
}

impl<P: WireLen> WireLen for Scheduled<P> {
    fn wire_len(&self) -> usize {
        self.packet.wire_len()
    }
}

/// One direction of the link: queue, serialiser, loss and delay, with its counters.
#[derive(Debug)]
pub struct Path<P> {
    bucket: TokenBucket,
    queue: DropTailQueue<Scheduled<P>>,
    loss: LossRng,
    delay: Nanos,
    /// Packets sent by the serialiser and not yet delivered, in arrival order.
    wire: VecDeque<Scheduled<P>>,
    max_packets: usize,
    counters: Arc<DirCounters>,
}

impl<P: WireLen> Path<P> {
    pub(crate) fn new(config: &PathConfig, counters: Arc<DirCounters>) -> Self {
        Path {
            bucket: TokenBucket::new(config.rate_bps),
            queue: DropTailQueue::new(config.queue_bytes, config.max_packets),
            loss: LossRng::new(config.loss, config.seed),
            delay: config.delay,
            wire: VecDeque::new(),
            max_packets: config.max_packets,
            counters,
        }
    }

    /// A packet arrives at `now`. Returns it back if the queue was full (it is counted as a
    /// queue drop; the caller can reuse its buffer).
    pub fn offer(&mut self, now: Nanos, packet: P, lost: &mut Vec<P>) -> Option<P> {
        let size = packet.wire_len();
        self.counters.add(Outcome::Offered, size);
        // The queue must reflect `now`, not the last time we looked, before judging the fit.
        self.advance(now, lost);
        if !self.queue.fits(size) || self.queue.len() + self.wire.len() >= self.max_packets {
            self.counters.add(Outcome::QueueDropped, size);
            return Some(packet);
        }
        let (start, end) = self.bucket.schedule(now, size);
        let item = Scheduled {
            arrives_at: end + self.delay,
            packet,
        };
        match self.queue.push(start, item) {
            Ok(()) => None,
            // Unreachable after `fits`, but handled rather than assumed.
            Err(item) => {
                self.counters.add(Outcome::QueueDropped, size);
                Some(item.packet)
            }
        }
    }

    /// Moves the packets whose transmission has started by `now` from the queue onto the wire,
    /// drawing random loss for each; lost packets are pushed to `lost`.
    pub fn advance(&mut self, now: Nanos, lost: &mut Vec<P>) {
        while let Some(item) = self.queue.pop_left(now) {
            if self.loss.lose() {
                self.counters
                    .add(Outcome::RandomDropped, item.packet.wire_len());
                lost.push(item.packet);
            } else {
                self.wire.push_back(item);
            }
        }
    }

    /// Takes the next packet due at the far end by `now`, if any. Call `advance` first.
    pub fn pop_due(&mut self, now: Nanos) -> Option<P> {
        if self.wire.front()?.arrives_at > now {
            return None;
        }
        self.wire.pop_front().map(|item| item.packet)
    }

    /// When something next happens: the earliest arrival, on the wire or still queued (a
    /// queued packet's arrival time is already known). `None` when the link is empty.
    pub fn next_event(&self) -> Option<Nanos> {
        self.wire
            .front()
            .or_else(|| self.queue.front())
            .map(|item| item.arrives_at)
    }

    /// Bytes waiting in the bottleneck queue (as of the last `offer` or `advance`).
    pub fn queued_bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// Packets held in total (queue and wire).
    pub fn held_packets(&self) -> usize {
        self.queue.len() + self.wire.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const US: Nanos = 1_000;

    /// A packet made of nothing but its size.
    #[derive(Debug, PartialEq)]
    struct Pkt(usize);

    impl WireLen for Pkt {
        fn wire_len(&self) -> usize {
            self.0
        }
    }

    fn path(rate_bps: Option<u64>, delay: Nanos, queue_bytes: usize, loss: f64) -> Path<Pkt> {
        let config = PathConfig {
            rate_bps,
            delay,
            queue_bytes,
            max_packets: 1 << 16,
            loss,
            seed: 7,
        };
        Path::new(&config, Arc::new(DirCounters::default()))
    }

    #[test]
    fn bucket_spaces_packets_at_the_rate() {
        // 1500 B at 100 Mbit/s take 120 µs.
        let mut bucket = TokenBucket::new(Some(100_000_000));
        assert_eq!(bucket.transmission_time(1500), 120 * US);
        assert_eq!(bucket.schedule(0, 1500), (0, 120 * US));
        // Arriving while busy: waits for the link.
        assert_eq!(bucket.schedule(10 * US, 1500), (120 * US, 240 * US));
        // Arriving after an idle gap: starts at once, no credit saved from the gap.
        assert_eq!(bucket.schedule(1000 * US, 1500), (1000 * US, 1120 * US));
        assert_eq!(bucket.schedule(1000 * US, 1500), (1120 * US, 1240 * US));
    }

    #[test]
    fn bucket_never_exceeds_the_rate_over_a_long_run() {
        let rate = 33_333_333; // not a round number, so every cost is rounded
        let mut bucket = TokenBucket::new(Some(rate));
        let mut end = 0;
        let packets = 100_000u64;
        for _ in 0..packets {
            end = bucket.schedule(0, 1234).1;
        }
        let bits = (packets * 1234 * 8) as f64;
        let achieved = bits / (end as f64 / 1e9);
        assert!(achieved <= rate as f64, "{achieved} > {rate}");
        assert!(
            achieved > rate as f64 * 0.9999,
            "{achieved} far below {rate}"
        );
    }

    #[test]
    fn unlimited_bucket_sends_at_once() {
        let mut bucket = TokenBucket::new(None);
        assert_eq!(bucket.schedule(5, 1500), (5, 5));
        assert_eq!(bucket.schedule(5, 1500), (5, 5));
    }

    #[test]
    fn queue_counts_bytes_in_and_out() {
        let mut queue = DropTailQueue::new(3000, 100);
        assert!(queue.push(10, Pkt(1000)).is_ok());
        assert!(queue.push(20, Pkt(1500)).is_ok());
        assert_eq!((queue.bytes(), queue.len()), (2500, 2));
        // 600 more would exceed 3000: refused, and the accounting is unchanged.
        assert_eq!(queue.push(30, Pkt(600)), Err(Pkt(600)));
        assert_eq!(queue.bytes(), 2500);
        assert!(queue.push(30, Pkt(500)).is_ok());
        assert_eq!(queue.bytes(), 3000);
        // Nothing has left before its time; then heads leave in order.
        assert_eq!(queue.pop_left(9), None);
        assert_eq!(queue.pop_left(20), Some(Pkt(1000)));
        assert_eq!(queue.pop_left(20), Some(Pkt(1500)));
        assert_eq!(queue.pop_left(20), None);
        assert_eq!((queue.bytes(), queue.len()), (500, 1));
    }

    #[test]
    fn queue_bounds_packets_too() {
        let mut queue = DropTailQueue::new(1 << 20, 2);
        assert!(queue.push(0, Pkt(1)).is_ok());
        assert!(queue.push(0, Pkt(1)).is_ok());
        assert!(queue.push(0, Pkt(1)).is_err());
    }

    #[test]
    fn loss_hits_its_probability() {
        for (p, seed) in [(0.01, 1), (0.05, 2), (0.3, 3)] {
            let mut rng = LossRng::new(p, seed);
            let draws = 200_000;
            let lost = (0..draws).filter(|_| rng.lose()).count();
            let rate = lost as f64 / draws as f64;
            // 200k draws: the standard error is at most 0.1 %, so 0.5 % is a safe margin.
            assert!((rate - p).abs() < 0.005, "p={p}: measured {rate}");
        }
    }

    #[test]
    fn loss_extremes_and_replay() {
        let mut never = LossRng::new(0.0, 9);
        assert!((0..10_000).all(|_| !never.lose()));
        let mut always = LossRng::new(1.0, 9);
        assert!((0..10_000).all(|_| always.lose()));
        let mut a = LossRng::new(0.5, 42);
        let mut b = LossRng::new(0.5, 42);
        assert!((0..1000).all(|_| a.lose() == b.lose()));
    }

    #[test]
    fn path_delays_by_serialisation_plus_propagation() {
        let mut p = path(Some(100_000_000), 10 * MS, 1 << 20, 0.0);
        let mut lost = Vec::new();
        assert!(p.offer(0, Pkt(1500), &mut lost).is_none());
        assert!(p.offer(0, Pkt(1500), &mut lost).is_none());
        assert_eq!(p.next_event(), Some(10 * MS + 120 * US));
        p.advance(10 * MS + 119 * US, &mut lost);
        assert_eq!(p.pop_due(10 * MS + 119 * US), None);
        p.advance(10 * MS + 120 * US, &mut lost);
        assert_eq!(p.pop_due(10 * MS + 120 * US), Some(Pkt(1500)));
        assert_eq!(p.next_event(), Some(10 * MS + 240 * US));
        p.advance(11 * MS, &mut lost);
        assert_eq!(p.pop_due(11 * MS), Some(Pkt(1500)));
        assert_eq!(p.next_event(), None);
    }

    #[test]
    fn path_drops_at_the_tail_when_overdriven() {
        // 100 Mbit/s with a 30 ms queue (375 000 B); offer 200 Mbit/s for one second.
        let mut p = path(Some(100_000_000), 0, 375_000, 0.0);
        let mut lost = Vec::new();
        let (mut dropped, mut delivered) = (0u64, 0u64);
        let gap = 60 * US; // one 1500 B packet per 60 µs = 200 Mbit/s
        for i in 0..(1_000_000 / 60) {
            let now = i * gap;
            dropped += p.offer(now, Pkt(1500), &mut lost).is_some() as u64;
            assert!(p.queued_bytes() <= 375_000);
            p.advance(now, &mut lost);
            while p.pop_due(now).is_some() {
                delivered += 1;
            }
        }
        let offered = 1_000_000 / 60;
        let drop_share = dropped as f64 / offered as f64;
        // The queue absorbs 250 packets before dropping starts, then half are dropped.
        assert!((0.48..0.50).contains(&drop_share), "dropped {drop_share}");
        // Delivered in one second: at most the link's 8333 packets.
        assert!((8200..=8334).contains(&delivered), "delivered {delivered}");
        let stats = p.counters.snapshot();
        assert_eq!(stats.queue_dropped.packets, dropped);
        assert_eq!(stats.offered.packets, offered);
        // The path does not count forwarding (the forwarder does, after writing).
        assert_eq!(stats.in_flight().packets, offered - dropped);
    }

    #[test]
    fn path_counts_random_loss_after_the_queue() {
        let mut p = path(None, MS, 1 << 20, 0.05);
        let mut lost = Vec::new();
        let mut delivered = 0u64;
        for i in 0..100_000u64 {
            assert!(p.offer(i * US, Pkt(100), &mut lost).is_none());
            p.advance(i * US, &mut lost);
            while p.pop_due(i * US).is_some() {
                delivered += 1;
            }
        }
        p.advance(u64::MAX, &mut lost);
        while p.pop_due(u64::MAX).is_some() {
            delivered += 1;
        }
        let stats = p.counters.snapshot();
        assert_eq!(stats.random_dropped.packets, lost.len() as u64);
        assert_eq!(delivered + lost.len() as u64, 100_000);
        let share = lost.len() as f64 / 100_000.0;
        assert!((0.045..0.055).contains(&share), "lost {share}");
    }

    #[test]
    fn path_bounds_packets_without_a_rate_limit() {
        let config = PathConfig {
            rate_bps: None,
            delay: 10 * MS,
            queue_bytes: usize::MAX,
            max_packets: 100,
            loss: 0.0,
            seed: 0,
        };
        let mut p = Path::new(&config, Arc::new(DirCounters::default()));
        let mut lost = Vec::new();
        let refused = (0..150)
            .filter(|_| p.offer(0, Pkt(1500), &mut lost).is_some())
            .count();
        assert_eq!(refused, 50);
        assert_eq!(p.held_packets(), 100);
    }
}
