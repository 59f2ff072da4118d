//! Delivery-rate sampling through quinn's narrow controller interface.
//!
//! quinn tells a controller only `on_sent(now, bytes, last_packet_number)` per transmit (one call
//! for a whole GSO batch) and `on_ack(now, sent_time, bytes)` per acknowledged packet — no packet
//! number on the ACK side. So the per-packet state that delivery-rate estimation needs (how much
//! had been delivered, and when, at the moment a packet left) is kept per *send time*: a small
//! time-ordered list of snapshots, looked up by the acknowledged packet's send time. Packets sent
//! within a short spacing share the older snapshot, which only makes that sample's interval a
//! little longer (still a valid measurement); the list is bounded and pruned as ACKs advance.

use std::collections::VecDeque;
use std::time::Duration;

use super::model::{AckBatch, RateSample};

/// At most this many send snapshots are kept (oldest dropped first); with the spacing below a
/// round trip needs about [`RECORD_SPACING_DIVISOR`] of them, so this bounds memory to a few KiB
/// while leaving room for several round trips of data in flight.
pub const MAX_RECORDS: usize = 256;

/// A new snapshot is taken at most every min RTT / this divisor; packets in between share the
/// previous one.
pub const RECORD_SPACING_DIVISOR: u32 = 64;

/// Turns sends and ACKs into per-batch [`AckBatch`] summaries with delivery-rate samples.
#[derive(Clone, Debug, Default)]
pub struct DeliverySampler {
    delivered: u64,
    delivered_time: Duration,
    first_sent_time: Duration,
    in_flight: u64,
    peak_in_flight: u64,
    app_limited: bool,
    next_round_delivered: u64,
    records: VecDeque<SendRecord>,
    batch: Batch,
}

impl DeliverySampler {
    /// `bytes` were sent at `now`. `min_rtt` (if known) sets the snapshot spacing.
    pub fn on_sent(&mut self, now: Duration, bytes: u64, min_rtt: Option<Duration>) {
        if self.in_flight == 0 {
            // Sending after an idle period: the idle time must not dilute the next samples.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        self.in_flight += bytes;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
        let spacing = min_rtt.map_or(Duration::ZERO, |rtt| rtt / RECORD_SPACING_DIVISOR);
        let due = self
            .records
            .back()
            .is_none_or(|last| now > last.sent && now - last.sent >= spacing);
        if due {
            self.records.push_back(SendRecord {
                sent: now,
                delivered: self.delivered,
                delivered_time: self.delivered_time,
                first_sent_time: self.first_sent_time,
                app_limited: self.app_limited,
            });
            if self.records.len() > MAX_RECORDS {
                self.records.pop_front();
            }
        }
    }

    /// One packet sent at `sent` and carrying `bytes` was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Duration, sent: Duration, bytes: u64, app_limited: bool) {
        self.delivered += bytes;
        self.delivered_time = now;
        self.in_flight = self.in_flight.saturating_sub(bytes);
        self.app_limited = app_limited;
        let batch = &mut self.batch;
        batch.acked += bytes;
        batch.app_limited |= app_limited;
        let rtt = now.saturating_sub(sent);
        batch.rtt = Some(batch.rtt.map_or(rtt, |r| r.min(rtt)));
        let index = self.records.partition_point(|r| r.sent <= sent);
        let Some(record) = index.checked_sub(1).and_then(|i| self.records.get(i)) else {
            return;
        };
        let newer = batch
            .newest
            .is_none_or(|(r, s)| (record.delivered, sent) > (r.delivered, s));
        if newer {
            batch.newest = Some((*record, sent));
        }
    }

    /// `lost_bytes` left the flight without being delivered.
    pub fn on_lost(&mut self, lost_bytes: u64) {
        self.in_flight = self.in_flight.saturating_sub(lost_bytes);
    }

    /// Closes the current ACK batch. `in_flight` is the sender's own count (authoritative);
    /// samples over an interval shorter than `min_rtt` are discarded, as ACK compression makes
    /// them overestimate. The batch is window-limited if sends since the previous batch filled
    /// the flight to within `slack` of `window`.
    pub fn finish_batch(
        &mut self,
        now: Duration,
        in_flight: u64,
        app_limited: bool,
        min_rtt: Option<Duration>,
        window: u64,
        slack: u64,
    ) -> AckBatch {
        let peak_in_flight = self.peak_in_flight;
        let window_limited = peak_in_flight + slack >= window;
        self.peak_in_flight = in_flight;
        self.in_flight = in_flight;
        self.app_limited = app_limited;
        let batch = std::mem::take(&mut self.batch);
        let mut summary = AckBatch {
            now,
            acked: batch.acked,
            rtt: batch.rtt,
            sample: None,
            round_start: false,
            in_flight,
            app_limited: app_limited || batch.app_limited,
            window_limited,
            peak_in_flight,
        };
        let Some((record, sent)) = batch.newest else {
            return summary;
        };
        self.first_sent_time = sent;
        if record.delivered >= self.next_round_delivered {
            summary.round_start = true;
            self.next_round_delivered = self.delivered;
        }
        summary.sample = self.rate_sample(&record, sent, min_rtt, summary.app_limited);
        // Older snapshots can only serve late ACKs of reordered packets; drop them.
        while self.records.front().is_some_and(|r| r.sent < record.sent) {
            self.records.pop_front();
        }
        summary
    }

    fn rate_sample(
        &self,
        record: &SendRecord,
        sent: Duration,
        min_rtt: Option<Duration>,
        app_limited: bool,
    ) -> Option<RateSample> {
        let send_elapsed = sent.saturating_sub(record.first_sent_time);
        let ack_elapsed = self.delivered_time.saturating_sub(record.delivered_time);
        // The slower of the two rates: ACKs arriving faster than data was sent (compression)
        // or data sent faster than it was acknowledged (a queue) must not inflate the sample.
        let interval = send_elapsed.max(ack_elapsed);
        if interval.is_zero() || min_rtt.is_some_and(|rtt| interval < rtt) {
            return None;
        }
        let bytes = self.delivered - record.delivered;
        let rate = u128::from(bytes) * 1_000_000_000 / interval.as_nanos();
        Some(RateSample {
            bytes_per_sec: rate.min(u128::from(u64::MAX)) as u64,
            app_limited: app_limited || record.app_limited,
        })
    }
}

/// The delivery state when a packet (or a group of packets sent close together) left.
#[derive(Clone, Copy, Debug)]
struct SendRecord {
    sent: Duration,
    delivered: u64,
    delivered_time: Duration,
    first_sent_time: Duration,
    app_limited: bool,
}

/// The ACK batch being accumulated between two `finish_batch` calls.
#[derive(Clone, Copy, Debug, Default)]
struct Batch {
    acked: u64,
    rtt: Option<Duration>,
    app_limited: bool,
    newest: Option<(SendRecord, Duration)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn steady_flow_measures_its_rate() {
        // 1200-byte packets every millisecond, 20 ms RTT: 1.2 MB/s.
        let mut sampler = DeliverySampler::default();
        let mut last = None;
        for t in 0..200u64 {
            sampler.on_sent(ms(t), 1200, Some(ms(20)));
            if t >= 20 {
                sampler.on_ack(ms(t), ms(t - 20), 1200, false);
                let batch =
                    sampler.finish_batch(ms(t), 20 * 1200, false, Some(ms(20)), 24_000, 3_600);
                assert_eq!(batch.rtt, Some(ms(20)));
                last = batch.sample;
            }
        }
        let rate = last.map(|s| s.bytes_per_sec).unwrap_or(0);
        assert!((1_140_000..=1_260_000).contains(&rate), "rate {rate}");
    }

    #[test]
    fn rounds_start_once_per_round_trip() {
        let mut sampler = DeliverySampler::default();
        let mut starts = 0;
        for t in 0..100u64 {
            sampler.on_sent(ms(t), 1200, Some(ms(10)));
            if t >= 10 {
                sampler.on_ack(ms(t), ms(t - 10), 1200, false);
                if sampler
                    .finish_batch(ms(t), 12_000, false, Some(ms(10)), 12_000, 3_600)
                    .round_start
                {
                    starts += 1;
                }
            }
        }
        // 90 ms of ACKs at a 10 ms RTT: about 9 rounds.
        assert!((8..=10).contains(&starts), "{starts} rounds");
    }

    #[test]
    fn records_stay_bounded() {
        let mut sampler = DeliverySampler::default();
        for t in 0..10_000u64 {
            sampler.on_sent(Duration::from_micros(t), 1200, None);
        }
        assert!(sampler.records.len() <= MAX_RECORDS);
    }

    #[test]
    fn unknown_send_time_gives_no_sample() {
        let mut sampler = DeliverySampler::default();
        sampler.on_sent(ms(10), 1200, None);
        sampler.on_ack(ms(30), ms(5), 1200, false);
        let batch = sampler.finish_batch(ms(30), 1200, false, None, 12_000, 3_600);
        assert_eq!(batch.acked, 1200);
        assert!(batch.sample.is_none());
    }
}
