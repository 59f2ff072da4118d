//! A deterministic simulated bottleneck link for testing the adaptive controller (test-only).
//!
//! No sockets, sleeps or real time: simulated time is a [`Duration`] since the start of the run,
//! advanced by a discrete-event loop. The link is a single bottleneck of configurable rate with
//! a drop-tail queue (sized in time at the current rate), a propagation delay, and seeded
//! random loss (xorshift) on data packets (as they leave the bottleneck, so they waste link
//! capacity — the harsher placement) and on ACKs. Senders behave like quinn where it matters to
//! a controller: GSO-style batches of up to ten datagrams with one `on_sent` per batch, a
//! token-bucket pacer refilled at 1.25 × window / smoothed RTT, RFC 9002 loss detection
//! (packet and time thresholds, PTO probes) and RTT smoothing; the receiver ACKs every second
//! packet, on a gap at once, or after 25 ms. ACK frames are cumulative, so a lost ACK only
//! delays the information it carried, as with QUIC's ACK ranges.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use super::driver::AdaptiveCore;
use super::model::{State, bytes_over};
use super::sampler::DeliverySampler;

/// Datagram size used by the simulated senders.
pub(crate) const MTU: u64 = 1200;

/// Datagrams per transmit, like quinn's GSO batches.
const BATCH: usize = 10;

/// The receiver's ACK delay for a lone packet (QUIC's default `max_ack_delay`).
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

/// quinn's RTT before the first sample; the pacer uses it.
const INITIAL_RTT: Duration = Duration::from_millis(333);

/// RFC 9002 packet reordering threshold.
const PACKET_THRESHOLD: u64 = 3;

/// RFC 9002 timer granularity.
const GRANULARITY: Duration = Duration::from_millis(1);

/// The bottleneck link.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// Bottleneck rate in bits per second.
    pub rate_bps: u64,
    /// Propagation round-trip time (half each way).
    pub rtt: Duration,
    /// Drop-tail queue capacity, as time at the current rate.
    pub queue: Duration,
    /// Probability that a data packet is lost at random.
    pub data_loss: f64,
    /// Probability that an ACK is lost at random.
    pub ack_loss: f64,
    /// Seed of the loss generator.
    pub seed: u64,
    /// The receiver acknowledges every this many packets (QUIC's default is two; larger
    /// values stand in for receivers that process packets in batches).
    pub ack_every: u32,
    /// …or this long after the first unacknowledged packet (QUIC's `max_ack_delay`, 25 ms; a
    /// receiver draining batches flushes its ACK when the batch ends, much sooner).
    pub ack_flush: Duration,
    /// Each data packet's way to the receiver takes up to this much longer, at random and
    /// without reordering (a user-space emulator's scheduling): the smallest RTT is then a
    /// lucky sample that later ones rarely match.
    pub jitter: Duration,
}

impl Link {
    /// 100 Mbit/s, 20 ms RTT, 30 ms queue, no loss: the benchmark's link.
    pub fn benchmark() -> Self {
        Self {
            rate_bps: 100_000_000,
            rtt: Duration::from_millis(20),
            queue: Duration::from_millis(30),
            data_loss: 0.0,
            ack_loss: 0.0,
            seed: 0x1234_5678,
            ack_every: 2,
            ack_flush: MAX_ACK_DELAY,
            jitter: Duration::ZERO,
        }
    }

    /// The same link with random loss `p` in both directions.
    pub fn with_loss(mut self, p: f64) -> Self {
        self.data_loss = p;
        self.ack_loss = p;
        self
    }

    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.rate_bps / 8
    }

    /// Rate × propagation RTT, in bytes.
    pub fn bdp(&self) -> u64 {
        bytes_over(self.bytes_per_sec(), self.rtt)
    }
}

/// A change to the link during a run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Change {
    /// New bottleneck rate in bits per second.
    Rate(u64),
    /// New propagation RTT.
    Rtt(Duration),
    /// The link forwards nothing, either way, for this long (a user-space link emulator that
    /// is not scheduled): data waits in the bottleneck queue, acknowledgements at the link,
    /// and both leave together when it resumes.
    Stall(Duration),
}

/// What a flow's sender runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SenderKind {
    /// The adaptive controller with this seed.
    Adaptive(u64),
    /// A fixed window of this many bytes, blind to loss (a stand-in for a loss-based competitor
    /// that keeps a standing queue).
    FixedWindow(u64),
    /// A loss-blind sender that keeps this much queueing delay above the smallest RTT it has
    /// seen, like Linux TCP bbr does with its 2 × BDP window (a stand-in for a delay-insensitive
    /// competitor: it takes whatever room is left and gives way only to keep its queue target).
    StandingQueue(Duration),
    /// A loss-blind imitation of Linux TCP bbr (v1): paces at a gain cycle over its max-filtered
    /// delivery rate and caps its window at this multiple of its own bandwidth × min RTT (Linux
    /// uses 2 plus an ACK-aggregation allowance, which kept ~25 ms of queue on the 20 ms link).
    BbrLike(f64),
}

/// One flow: when it starts and what drives it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlowSpec {
    pub start: Duration,
    pub kind: SenderKind,
    /// The application supplies data at this many bits per second until the given time, and
    /// then has an unlimited amount; `None`: always unlimited.
    pub app_limit: Option<(u64, Duration)>,
}

impl FlowSpec {
    /// A flow that always has data to send.
    pub fn greedy(start: Duration, kind: SenderKind) -> Self {
        Self {
            start,
            kind,
            app_limit: None,
        }
    }
}

/// A whole run.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub link: Link,
    pub duration: Duration,
    pub changes: Vec<(Duration, Change)>,
    pub flows: Vec<FlowSpec>,
}

impl Scenario {
    /// One adaptive flow on `link` for `duration`.
    pub fn single(link: Link, duration: Duration) -> Self {
        Self {
            link,
            duration,
            changes: Vec::new(),
            flows: vec![FlowSpec::greedy(Duration::ZERO, SenderKind::Adaptive(1))],
        }
    }

    /// Runs the scenario to its end.
    pub fn run(&self) -> Report {
        Sim::new(self).run()
    }
}

/// Controller state after an ACK batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TracePoint {
    pub at: Duration,
    pub sent_total: u64,
    pub acked_total: u64,
    pub in_flight: u64,
    pub cwnd: u64,
    pub bandwidth: Option<u64>,
    pub max_bandwidth: Option<u64>,
    pub min_rtt: Option<Duration>,
    pub state: Option<State>,
    pub round: u64,
    pub extra_acked: u64,
}

/// Counters and traces of one flow.
#[derive(Clone, Debug, Default)]
pub(crate) struct FlowReport {
    /// Data packets sent.
    pub sent: u64,
    /// Data packets lost at random.
    pub random_drops: u64,
    /// ACK frames lost at random.
    pub ack_drops: u64,
    /// Data packets dropped because the bottleneck queue was full.
    pub queue_drops: u64,
    /// When each queue drop happened.
    pub queue_drop_times: Vec<Duration>,
    /// Data packets the sender declared lost.
    pub declared_lost: u64,
    /// Bytes acknowledged.
    pub acked_bytes: u64,
    /// (time, RTT) for every ACK that acknowledged a new largest packet.
    pub rtt_samples: Vec<(Duration, Duration)>,
    /// One point per ACK batch.
    pub trace: Vec<TracePoint>,
    /// When the controller first reached ProbeBw.
    pub startup_end: Option<Duration>,
    /// Largest in-flight data after `startup_end`.
    pub max_in_flight_after_startup: u64,
}

impl FlowReport {
    /// The last trace point at or before `at`.
    pub fn point_at(&self, at: Duration) -> Option<&TracePoint> {
        let index = self.trace.partition_point(|p| p.at <= at);
        index.checked_sub(1).map(|i| &self.trace[i])
    }

    /// Acknowledged bytes at time `at`.
    pub fn acked_at(&self, at: Duration) -> u64 {
        self.point_at(at).map_or(0, |p| p.acked_total)
    }

    /// Goodput between two times as a fraction of `rate_bps`.
    pub fn goodput(&self, from: Duration, to: Duration, rate_bps: u64) -> f64 {
        let bytes = self.acked_at(to).saturating_sub(self.acked_at(from));
        let secs = (to - from).as_secs_f64();
        bytes as f64 * 8.0 / secs / rate_bps as f64
    }

    /// Median RTT of the samples taken at or after `from`.
    pub fn median_rtt(&self, from: Duration) -> Option<Duration> {
        let mut samples: Vec<Duration> = self
            .rtt_samples
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, rtt)| *rtt)
            .collect();
        samples.sort();
        samples.get(samples.len() / 2).copied()
    }

    /// Trace points at or after `from`.
    pub fn trace_from(&self, from: Duration) -> impl Iterator<Item = &TracePoint> {
        self.trace.iter().filter(move |p| p.at >= from)
    }

    /// Queue drops as a fraction of packets sent.
    pub fn queue_drop_fraction(&self) -> f64 {
        self.queue_drops as f64 / self.sent.max(1) as f64
    }
}

/// The result of a run.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub flows: Vec<FlowReport>,
}

/// What a simulated sender needs from its congestion controller (the shape of quinn's).
trait SimController {
    fn on_sent(&mut self, now: Duration, bytes: u64);
    fn on_ack(&mut self, now: Duration, sent: Duration, bytes: u64, app_limited: bool);
    fn on_end_acks(&mut self, now: Duration, in_flight: u64, app_limited: bool);
    fn on_loss(&mut self, lost_bytes: u64);
    fn window(&self) -> u64;
    fn core(&self) -> Option<&AdaptiveCore>;
    /// Bytes per second to pace at, for senders that pace by rate rather than by window.
    fn pacing_rate(&self) -> Option<f64> {
        None
    }
}

impl SimController for AdaptiveCore {
    fn on_sent(&mut self, now: Duration, bytes: u64) {
        AdaptiveCore::on_sent(self, now, bytes);
    }
    fn on_ack(&mut self, now: Duration, sent: Duration, bytes: u64, app_limited: bool) {
        AdaptiveCore::on_ack(self, now, sent, bytes, app_limited);
    }
    fn on_end_acks(&mut self, now: Duration, in_flight: u64, app_limited: bool) {
        AdaptiveCore::on_end_acks(self, now, in_flight, app_limited);
    }
    fn on_loss(&mut self, lost_bytes: u64) {
        self.on_congestion_event(lost_bytes, false);
    }
    fn window(&self) -> u64 {
        AdaptiveCore::window(self)
    }
    fn core(&self) -> Option<&AdaptiveCore> {
        Some(self)
    }
}

/// A window that never changes.
struct FixedWindow(u64);

impl SimController for FixedWindow {
    fn on_sent(&mut self, _: Duration, _: u64) {}
    fn on_ack(&mut self, _: Duration, _: Duration, _: u64, _: bool) {}
    fn on_end_acks(&mut self, _: Duration, _: u64, _: bool) {}
    fn on_loss(&mut self, _: u64) {}
    fn window(&self) -> u64 {
        self.0
    }
    fn core(&self) -> Option<&AdaptiveCore> {
        None
    }
}

/// Keeps the RTT at its smallest sample plus `target`: once per ACK batch the window moves by
/// the batch's bytes × (target RTT / measured RTT − 1), so within about a round trip it grows
/// into room others leave and shrinks when others' data raises the queue. Loss is ignored.
struct StandingQueue {
    target: Duration,
    window: u64,
    min_rtt: Option<Duration>,
    batch_rtt: Option<Duration>,
    batch_acked: u64,
}

impl StandingQueue {
    fn new(target: Duration) -> Self {
        Self {
            target,
            window: 10 * MTU,
            min_rtt: None,
            batch_rtt: None,
            batch_acked: 0,
        }
    }
}

impl SimController for StandingQueue {
    fn on_sent(&mut self, _: Duration, _: u64) {}
    fn on_ack(&mut self, now: Duration, sent: Duration, bytes: u64, _: bool) {
        let rtt = now - sent;
        self.batch_rtt = Some(self.batch_rtt.map_or(rtt, |r| r.min(rtt)));
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |r| r.min(rtt)));
        self.batch_acked += bytes;
    }
    fn on_end_acks(&mut self, _: Duration, _: u64, _: bool) {
        let (Some(rtt), Some(min_rtt)) = (self.batch_rtt.take(), self.min_rtt) else {
            return;
        };
        let acked = std::mem::take(&mut self.batch_acked) as f64;
        let ratio = (min_rtt + self.target).as_secs_f64() / rtt.as_secs_f64().max(1e-9);
        let window = self.window as f64 + acked * (ratio - 1.0).clamp(-0.5, 1.0);
        self.window = (window as u64).max(4 * MTU);
    }
    fn on_loss(&mut self, _: u64) {}
    fn window(&self) -> u64 {
        self.window
    }
    fn core(&self) -> Option<&AdaptiveCore> {
        None
    }
}

/// Pacing gains of [`BbrLike`]'s bandwidth-probing cycle, one round each.
const BBR_LIKE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];

/// A compact model of Linux TCP bbr v1 as a competitor: start-up at a pacing gain of 2.89 until
/// the delivery rate stops growing by 25 % for three rounds, then a pacing-gain cycle of 1.25,
/// 0.75 and six rounds of 1.0 over the maximum delivery rate of the last ten rounds, a window
/// of `cwnd_gain` × that rate × the minimum RTT, and every 10 s a ProbeRtt of four packets for
/// 200 ms. Loss changes nothing. Its rate samples come from the same delivery sampler as ours.
struct BbrLike {
    cwnd_gain: f64,
    sampler: DeliverySampler,
    bw: VecDeque<(u64, u64)>,
    round: u64,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Duration,
    full_bw: u64,
    full_rounds: u32,
    startup: bool,
    cycle: usize,
    probe_rtt_until: Option<Duration>,
    cwnd: u64,
}

impl BbrLike {
    fn new(cwnd_gain: f64) -> Self {
        Self {
            cwnd_gain,
            sampler: DeliverySampler::default(),
            bw: VecDeque::new(),
            round: 0,
            min_rtt: None,
            min_rtt_stamp: Duration::ZERO,
            full_bw: 0,
            full_rounds: 0,
            startup: true,
            cycle: 0,
            probe_rtt_until: None,
            cwnd: 10 * MTU,
        }
    }

    fn bandwidth(&self) -> Option<u64> {
        self.bw.iter().map(|(_, bw)| *bw).max()
    }

    fn gain(&self) -> f64 {
        if self.startup {
            2.89
        } else {
            BBR_LIKE_GAINS[self.cycle]
        }
    }
}

impl SimController for BbrLike {
    fn on_sent(&mut self, now: Duration, bytes: u64) {
        self.sampler.on_sent(now, bytes, self.min_rtt);
    }
    fn on_ack(&mut self, now: Duration, sent: Duration, bytes: u64, app_limited: bool) {
        self.sampler.on_ack(now, sent, bytes, app_limited);
    }
    fn on_end_acks(&mut self, now: Duration, in_flight: u64, app_limited: bool) {
        let batch =
            self.sampler
                .finish_batch(now, in_flight, app_limited, self.min_rtt, self.cwnd, MTU);
        if batch.acked == 0 {
            return;
        }
        if let Some(rtt) = batch.rtt {
            let expired = now.saturating_sub(self.min_rtt_stamp) > Duration::from_secs(10);
            if self.min_rtt.is_none_or(|min| rtt <= min) || expired {
                if expired && self.probe_rtt_until.is_none() && !self.startup {
                    self.probe_rtt_until = Some(now + Duration::from_millis(200));
                }
                self.min_rtt = Some(rtt);
                self.min_rtt_stamp = now;
            }
        }
        if batch.round_start {
            self.round += 1;
            while self.bw.front().is_some_and(|(r, _)| self.round - r >= 10) {
                self.bw.pop_front();
            }
            if self.startup {
                let bw = self.bandwidth().unwrap_or(0);
                if bw as f64 >= 1.25 * self.full_bw as f64 {
                    self.full_bw = bw;
                    self.full_rounds = 0;
                } else {
                    self.full_rounds += 1;
                    self.startup = self.full_rounds < 3;
                }
            } else {
                self.cycle = (self.cycle + 1) % BBR_LIKE_GAINS.len();
            }
        }
        if let Some(sample) = batch.sample {
            self.bw.push_back((self.round, sample.bytes_per_sec));
        }
        if self.probe_rtt_until.is_some_and(|until| now >= until) {
            self.probe_rtt_until = None;
        }
        let (Some(bw), Some(min_rtt)) = (self.bandwidth(), self.min_rtt) else {
            self.cwnd += batch.acked;
            return;
        };
        let gain = if self.startup { 2.89 } else { self.cwnd_gain };
        let target = bytes_over(bw, min_rtt.mul_f64(gain));
        self.cwnd = (self.cwnd + batch.acked).min(target).max(4 * MTU);
    }
    fn on_loss(&mut self, lost_bytes: u64) {
        self.sampler.on_lost(lost_bytes);
    }
    fn window(&self) -> u64 {
        if self.probe_rtt_until.is_some() {
            4 * MTU
        } else {
            self.cwnd
        }
    }
    fn core(&self) -> Option<&AdaptiveCore> {
        None
    }
    fn pacing_rate(&self) -> Option<f64> {
        self.bandwidth().map(|bw| bw as f64 * self.gain())
    }
}

/// Something that happens at a simulated time.
#[derive(Clone, Copy, Debug)]
enum Event {
    Start(usize),
    Wake(usize),
    LinkFree,
    DataArrive {
        flow: usize,
        pn: u64,
    },
    AckTimer {
        flow: usize,
        generation: u64,
    },
    AckArrive {
        flow: usize,
        upto: usize,
        ack_delay: Duration,
    },
    LossTimer {
        flow: usize,
        generation: u64,
    },
    Change(usize),
}

/// An event in the queue, ordered by time and then by insertion (so runs are deterministic).
#[derive(Debug)]
struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest event must come out first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A data packet on the link.
#[derive(Clone, Copy, Debug)]
struct Packet {
    flow: usize,
    pn: u64,
    size: u64,
}

/// xorshift64*: deterministic random numbers for loss.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.unit() < p
    }
}

/// quinn-like RTT estimation (RFC 9002 §5).
#[derive(Clone, Copy, Debug)]
struct RttState {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
}

impl RttState {
    fn new() -> Self {
        Self {
            latest: INITIAL_RTT,
            smoothed: None,
            var: INITIAL_RTT / 2,
            min: INITIAL_RTT,
        }
    }

    fn get(&self) -> Duration {
        self.smoothed.unwrap_or(self.latest)
    }

    fn update(&mut self, rtt: Duration, ack_delay: Duration) {
        self.latest = rtt;
        let Some(smoothed) = self.smoothed else {
            self.smoothed = Some(rtt);
            self.var = rtt / 2;
            self.min = rtt;
            return;
        };
        self.min = self.min.min(rtt);
        let adjusted = if self.min + ack_delay <= rtt {
            rtt - ack_delay
        } else {
            rtt
        };
        self.var = (3 * self.var + smoothed.abs_diff(adjusted)) / 4;
        self.smoothed = Some((7 * smoothed + adjusted) / 8);
    }

    fn pto(&self) -> Duration {
        self.get() + (4 * self.var).max(GRANULARITY) + MAX_ACK_DELAY
    }
}

/// A token bucket with quinn's behaviour: refilled at 1.25 × window / smoothed RTT, holding
/// about 2 ms of data (10 to 256 datagrams), and waking the sender when it is mostly full.
#[derive(Clone, Copy, Debug)]
struct Pacer {
    tokens: u64,
    capacity: u64,
    window: u64,
    last: Duration,
}

impl Pacer {
    fn new(window: u64) -> Self {
        let capacity = Self::capacity(INITIAL_RTT, window);
        Self {
            tokens: capacity,
            capacity,
            window,
            last: Duration::ZERO,
        }
    }

    fn capacity(rtt: Duration, window: u64) -> u64 {
        let burst = u128::from(window) * 2_000_000 / rtt.as_nanos().max(1);
        (burst as u64).clamp(10 * MTU, 256 * MTU)
    }

    /// `None` if a datagram may leave now, else when to try again.
    /// `rate`: the sender's own pacing rate in bytes per second, if it sets one (else quinn's
    /// 1.25 × window / RTT).
    fn delay(
        &mut self,
        now: Duration,
        rtt: Duration,
        window: u64,
        rate: Option<f64>,
    ) -> Option<Duration> {
        if window != self.window {
            self.capacity = Self::capacity(rtt, window);
            self.tokens = self.tokens.min(self.capacity);
            self.window = window;
        }
        if self.tokens >= MTU {
            return None;
        }
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        let rate = rate.unwrap_or(window as f64 * 1.25 / rtt.as_secs_f64().max(1e-9));
        let refill = rate * elapsed;
        self.tokens = (self.tokens + refill as u64).min(self.capacity);
        self.last = now;
        if self.tokens >= MTU {
            return None;
        }
        let missing = (self.capacity - self.tokens) as f64;
        let wait = missing / rate.max(1.0);
        Some(now + Duration::from_secs_f64(wait))
    }
}

/// Data the application has handed over but not yet sent, refilled at a fixed rate until a
/// deadline (after which the application is unlimited).
#[derive(Clone, Copy, Debug)]
struct AppSource {
    bytes_per_sec: f64,
    until: Duration,
    buffered: f64,
    last: Duration,
}

impl AppSource {
    /// Whether a datagram's worth of data is available at `now`; if not, when it will be.
    fn ready(&mut self, now: Duration) -> Result<(), Duration> {
        if now >= self.until {
            return Ok(());
        }
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.buffered += elapsed * self.bytes_per_sec;
        self.last = now;
        if self.buffered >= MTU as f64 {
            return Ok(());
        }
        let wait = (MTU as f64 - self.buffered) / self.bytes_per_sec;
        // At least a microsecond, or rounding could wake the sender at `now` for ever.
        let wait = Duration::from_secs_f64(wait).max(Duration::from_micros(1));
        Err((now + wait).min(self.until))
    }

    fn take(&mut self) {
        self.buffered = (self.buffered - MTU as f64).max(0.0);
    }
}

/// The sending end of a flow.
struct Sender {
    cc: Box<dyn SimController>,
    app: Option<AppSource>,
    app_limited: bool,
    started: bool,
    next_pn: u64,
    sent: BTreeMap<u64, (Duration, u64)>,
    in_flight: u64,
    processed: usize,
    largest_acked: Option<u64>,
    rtt: RttState,
    pacer: Pacer,
    wake_at: Option<Duration>,
    timer_generation: u64,
    pto_count: u32,
    last_sent: Duration,
}

/// The receiving end of a flow.
#[derive(Default)]
struct Receiver {
    log: Vec<u64>,
    unacked: u32,
    expected: u64,
    largest_at: Duration,
    timer_generation: u64,
    timer_armed: bool,
}

/// The bottleneck: one packet in service, a drop-tail queue behind it.
struct Bottleneck {
    rate_bps: u64,
    queue_time: Duration,
    in_service: Option<Packet>,
    queue: VecDeque<Packet>,
    queued_bytes: u64,
}

impl Bottleneck {
    fn limit(&self) -> u64 {
        bytes_over(self.rate_bps / 8, self.queue_time)
    }

    fn transmit_time(&self, size: u64) -> Duration {
        Duration::from_nanos(size * 8 * 1_000_000_000 / self.rate_bps.max(1))
    }
}

/// The discrete-event simulation.
struct Sim {
    now: Duration,
    end: Duration,
    seq: u64,
    events: BinaryHeap<Scheduled>,
    link: Link,
    changes: Vec<(Duration, Change)>,
    stalled_until: Duration,
    rng: Rng,
    jitter_rng: Rng,
    last_arrival: Duration,
    bottleneck: Bottleneck,
    senders: Vec<Sender>,
    receivers: Vec<Receiver>,
    reports: Vec<FlowReport>,
}

impl Sim {
    fn new(scenario: &Scenario) -> Self {
        let link = scenario.link.clone();
        let senders = scenario.flows.iter().map(new_sender).collect();
        let mut sim = Self {
            now: Duration::ZERO,
            end: scenario.duration,
            seq: 0,
            events: BinaryHeap::new(),
            rng: Rng(link.seed | 1),
            jitter_rng: Rng(link.seed.rotate_left(17) | 1),
            bottleneck: Bottleneck {
                rate_bps: link.rate_bps,
                queue_time: link.queue,
                in_service: None,
                queue: VecDeque::new(),
                queued_bytes: 0,
            },
            link,
            changes: scenario.changes.clone(),
            stalled_until: Duration::ZERO,
            last_arrival: Duration::ZERO,
            senders,
            receivers: scenario.flows.iter().map(|_| Receiver::default()).collect(),
            reports: vec![FlowReport::default(); scenario.flows.len()],
        };
        for (flow, spec) in scenario.flows.iter().enumerate() {
            sim.schedule(spec.start, Event::Start(flow));
        }
        for (index, (at, _)) in scenario.changes.iter().enumerate() {
            sim.schedule(*at, Event::Change(index));
        }
        sim
    }

    fn run(mut self) -> Report {
        while let Some(next) = self.events.pop() {
            if next.at > self.end {
                break;
            }
            self.now = next.at;
            self.handle(next.event);
        }
        Report {
            flows: self.reports,
        }
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.events.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Start(flow) => {
                self.senders[flow].started = true;
                self.try_send(flow);
            }
            Event::Wake(flow) => {
                if self.senders[flow].wake_at == Some(self.now) {
                    self.senders[flow].wake_at = None;
                    self.try_send(flow);
                }
            }
            Event::LinkFree => self.link_free(),
            Event::DataArrive { flow, pn } => self.data_arrive(flow, pn),
            Event::AckTimer { flow, generation } => {
                let receiver = &self.receivers[flow];
                if receiver.timer_armed && receiver.timer_generation == generation {
                    self.send_ack(flow);
                }
            }
            Event::AckArrive {
                flow,
                upto,
                ack_delay,
            } => self.ack_arrive(flow, upto, ack_delay),
            Event::LossTimer { flow, generation } => {
                if self.senders[flow].timer_generation == generation {
                    self.loss_timer(flow);
                }
            }
            Event::Change(index) => self.apply_change(index),
        }
    }

    fn apply_change(&mut self, index: usize) {
        match self.changes[index].1 {
            Change::Rate(rate) => self.bottleneck.rate_bps = rate,
            Change::Rtt(rtt) => self.link.rtt = rtt,
            Change::Stall(pause) => self.stalled_until = self.now + pause,
        }
    }

    // ---- sender ----

    fn try_send(&mut self, flow: usize) {
        let mut batch = 0;
        let mut blocked = false;
        let mut starved = false;
        while batch < BATCH {
            let now = self.now;
            let sender = &mut self.senders[flow];
            if let Some(Err(at)) = sender.app.as_mut().map(|app| app.ready(now)) {
                self.wake(flow, at);
                starved = true;
                break;
            }
            let window = sender.cc.window();
            if sender.in_flight + MTU >= window {
                blocked = true;
                break;
            }
            let rate = sender.cc.pacing_rate();
            if let Some(at) = sender.pacer.delay(now, sender.rtt.get(), window, rate) {
                self.wake(flow, at);
                blocked = true;
                break;
            }
            if let Some(app) = sender.app.as_mut() {
                app.take();
            }
            self.send_packet(flow);
            batch += 1;
        }
        // quinn's definition: the last poll produced nothing without being held back by the
        // window or the pacer (quinn polls again after a partial batch, and that poll is empty).
        self.senders[flow].app_limited = starved;
        self.finish_transmit(flow, batch);
        if !blocked && !starved {
            // The batch was full: quinn would call poll_transmit again straight away.
            self.wake(flow, self.now);
        }
    }

    fn send_packet(&mut self, flow: usize) {
        let sender = &mut self.senders[flow];
        let pn = sender.next_pn;
        sender.next_pn += 1;
        sender.sent.insert(pn, (self.now, MTU));
        sender.in_flight += MTU;
        sender.pacer.tokens = sender.pacer.tokens.saturating_sub(MTU);
        sender.last_sent = self.now;
        let in_flight = sender.in_flight;
        let past_startup = sender
            .cc
            .core()
            .is_some_and(|core| matches!(core.state(), State::ProbeBw(_) | State::ProbeRtt));
        let report = &mut self.reports[flow];
        report.sent += 1;
        if past_startup {
            report.startup_end.get_or_insert(self.now);
            report.max_in_flight_after_startup = report.max_in_flight_after_startup.max(in_flight);
        }
        self.enqueue(Packet {
            flow,
            pn,
            size: MTU,
        });
    }

    fn finish_transmit(&mut self, flow: usize, datagrams: usize) {
        if datagrams == 0 {
            return;
        }
        let now = self.now;
        self.senders[flow].cc.on_sent(now, datagrams as u64 * MTU);
        if self.senders[flow].sent.len() == datagrams {
            // The flight was empty: arm the probe timer for the new one.
            self.arm_timer(flow);
        }
    }

    fn wake(&mut self, flow: usize, at: Duration) {
        let sender = &mut self.senders[flow];
        if sender.wake_at.is_some_and(|pending| pending <= at) {
            return;
        }
        sender.wake_at = Some(at);
        self.schedule(at, Event::Wake(flow));
    }

    fn ack_arrive(&mut self, flow: usize, upto: usize, ack_delay: Duration) {
        let now = self.now;
        let start = self.senders[flow].processed;
        if upto <= start {
            return;
        }
        self.senders[flow].processed = upto;
        let mut newest: Option<(u64, Duration)> = None;
        let mut acked = 0;
        for index in start..upto {
            let pn = self.receivers[flow].log[index];
            let sender = &mut self.senders[flow];
            let Some((sent, size)) = sender.sent.remove(&pn) else {
                continue;
            };
            sender.in_flight -= size;
            let app_limited = sender.app_limited;
            sender.cc.on_ack(now, sent, size, app_limited);
            acked += size;
            if newest.is_none_or(|(n, _)| pn > n) {
                newest = Some((pn, sent));
            }
        }
        let Some((largest, sent)) = newest else {
            return;
        };
        let sender = &mut self.senders[flow];
        sender
            .cc
            .on_end_acks(now, sender.in_flight, sender.app_limited);
        if sender.largest_acked.is_none_or(|l| largest > l) {
            sender.largest_acked = Some(largest);
            let rtt = now - sent;
            sender.rtt.update(rtt, ack_delay);
            self.reports[flow].rtt_samples.push((now, rtt));
        }
        self.senders[flow].pto_count = 0;
        self.reports[flow].acked_bytes += acked;
        self.detect_losses(flow);
        self.trace(flow);
        self.try_send(flow);
    }

    fn detect_losses(&mut self, flow: usize) {
        let now = self.now;
        let sender = &mut self.senders[flow];
        let Some(largest) = sender.largest_acked else {
            return;
        };
        let loss_delay = sender
            .rtt
            .get()
            .max(sender.rtt.latest)
            .mul_f64(9.0 / 8.0)
            .max(GRANULARITY);
        let lost: Vec<u64> = sender
            .sent
            .range(..largest)
            .filter(|(pn, (sent, _))| {
                largest - **pn >= PACKET_THRESHOLD || *sent + loss_delay <= now
            })
            .map(|(pn, _)| *pn)
            .collect();
        let mut lost_bytes = 0;
        for pn in &lost {
            if let Some((_, size)) = sender.sent.remove(pn) {
                lost_bytes += size;
            }
        }
        if lost_bytes > 0 {
            sender.in_flight -= lost_bytes;
            sender.cc.on_loss(lost_bytes);
            self.reports[flow].declared_lost += lost.len() as u64;
        }
        self.arm_timer(flow);
    }

    /// Arms the loss timer for the earliest packet that may still be declared lost by time,
    /// or the PTO if none is.
    fn arm_timer(&mut self, flow: usize) {
        let sender = &mut self.senders[flow];
        sender.timer_generation += 1;
        if sender.sent.is_empty() {
            return;
        }
        let loss_delay = sender.rtt.get().max(sender.rtt.latest).mul_f64(9.0 / 8.0);
        let pending = sender
            .largest_acked
            .and_then(|largest| sender.sent.range(..largest).next())
            .map(|(_, (sent, _))| *sent + loss_delay);
        let at = pending.unwrap_or_else(|| {
            sender.last_sent + sender.rtt.pto() * 2u32.pow(sender.pto_count.min(10))
        });
        let generation = sender.timer_generation;
        let at = at.max(self.now);
        self.schedule(at, Event::LossTimer { flow, generation });
    }

    fn loss_timer(&mut self, flow: usize) {
        let sender = &self.senders[flow];
        let time_loss_pending = sender
            .largest_acked
            .is_some_and(|largest| sender.sent.range(..largest).next().is_some());
        if time_loss_pending {
            self.detect_losses(flow);
            self.try_send(flow);
            return;
        }
        // PTO: two probes regardless of the window, as RFC 9002 allows.
        self.senders[flow].pto_count += 1;
        self.send_packet(flow);
        self.send_packet(flow);
        self.finish_transmit(flow, 2);
        self.arm_timer(flow);
    }

    fn trace(&mut self, flow: usize) {
        let sender = &self.senders[flow];
        let core = sender.cc.core();
        let point = TracePoint {
            at: self.now,
            sent_total: self.reports[flow].sent,
            acked_total: self.reports[flow].acked_bytes,
            in_flight: sender.in_flight,
            cwnd: sender.cc.window(),
            bandwidth: core.and_then(|c| c.model().bandwidth()),
            max_bandwidth: core.and_then(|c| c.model().max_bandwidth()),
            min_rtt: core.and_then(|c| c.model().min_rtt()),
            state: core.map(AdaptiveCore::state),
            round: core.map_or(0, |c| c.model().round()),
            extra_acked: core.map_or(0, |c| c.model().extra_acked()),
        };
        self.reports[flow].trace.push(point);
    }

    // ---- link ----

    fn enqueue(&mut self, packet: Packet) {
        if self.bottleneck.in_service.is_none() {
            self.start_service(packet);
            return;
        }
        if self.bottleneck.queued_bytes + packet.size > self.bottleneck.limit() {
            self.reports[packet.flow].queue_drops += 1;
            self.reports[packet.flow].queue_drop_times.push(self.now);
            return;
        }
        self.bottleneck.queued_bytes += packet.size;
        self.bottleneck.queue.push_back(packet);
    }

    fn start_service(&mut self, packet: Packet) {
        let done = self.now + self.bottleneck.transmit_time(packet.size);
        self.bottleneck.in_service = Some(packet);
        self.schedule(done, Event::LinkFree);
    }

    fn link_free(&mut self) {
        if self.now < self.stalled_until {
            self.schedule(self.stalled_until, Event::LinkFree);
            return;
        }
        if let Some(packet) = self.bottleneck.in_service.take() {
            if self.rng.chance(self.link.data_loss) {
                self.reports[packet.flow].random_drops += 1;
            } else {
                let extra = self.link.jitter.mul_f64(self.jitter_rng.unit());
                let at = (self.now + self.link.rtt / 2 + extra).max(self.last_arrival);
                self.last_arrival = at;
                self.schedule(
                    at,
                    Event::DataArrive {
                        flow: packet.flow,
                        pn: packet.pn,
                    },
                );
            }
        }
        if let Some(next) = self.bottleneck.queue.pop_front() {
            self.bottleneck.queued_bytes -= next.size;
            self.start_service(next);
        }
    }

    // ---- receiver ----

    fn data_arrive(&mut self, flow: usize, pn: u64) {
        let now = self.now;
        let receiver = &mut self.receivers[flow];
        receiver.log.push(pn);
        receiver.unacked += 1;
        let gap = pn != receiver.expected;
        if pn >= receiver.expected {
            receiver.expected = pn + 1;
            receiver.largest_at = now;
        }
        if receiver.unacked >= self.link.ack_every || gap {
            self.send_ack(flow);
        } else if !receiver.timer_armed {
            receiver.timer_armed = true;
            receiver.timer_generation += 1;
            let generation = receiver.timer_generation;
            let at = now + self.link.ack_flush;
            self.schedule(at, Event::AckTimer { flow, generation });
        }
    }

    fn send_ack(&mut self, flow: usize) {
        let receiver = &mut self.receivers[flow];
        receiver.unacked = 0;
        receiver.timer_armed = false;
        let upto = receiver.log.len();
        let ack_delay = self.now - receiver.largest_at;
        if self.rng.chance(self.link.ack_loss) {
            self.reports[flow].ack_drops += 1;
            return;
        }
        let at = self.now.max(self.stalled_until) + self.link.rtt / 2;
        self.schedule(
            at,
            Event::AckArrive {
                flow,
                upto,
                ack_delay,
            },
        );
    }
}

fn new_sender(spec: &FlowSpec) -> Sender {
    let cc: Box<dyn SimController> = match spec.kind {
        SenderKind::Adaptive(seed) => Box::new(AdaptiveCore::new(12_000, MTU as u16, seed)),
        SenderKind::FixedWindow(bytes) => Box::new(FixedWindow(bytes)),
        SenderKind::StandingQueue(target) => Box::new(StandingQueue::new(target)),
        SenderKind::BbrLike(cwnd_gain) => Box::new(BbrLike::new(cwnd_gain)),
    };
    let window = cc.window();
    let app = spec.app_limit.map(|(bps, until)| AppSource {
        bytes_per_sec: bps as f64 / 8.0,
        until,
        buffered: 0.0,
        last: spec.start,
    });
    Sender {
        cc,
        app,
        app_limited: false,
        started: false,
        next_pn: 0,
        sent: BTreeMap::new(),
        in_flight: 0,
        processed: 0,
        largest_acked: None,
        rtt: RttState::new(),
        pacer: Pacer::new(window),
        wake_at: None,
        timer_generation: 0,
        pto_count: 0,
        last_sent: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Prints the numbers a test is judged on (`cargo test -- --nocapture` shows them).
    fn summary(name: &str, link: &Link, flow: &FlowReport, from: Duration, to: Duration) {
        let median = flow.median_rtt(from).unwrap_or_default();
        eprintln!(
            "{name}: goodput {:.1} % of link over {from:?}..{to:?} ({:.1} % from t=0), \
             queue drops {:.2} % of sent, random drops {:.2} %, max in-flight/BDP {:.2}, \
             median RTT/base {:.2}, start-up ended at {:?}",
            100.0 * flow.goodput(from, to, link.rate_bps),
            100.0 * flow.goodput(Duration::ZERO, to, link.rate_bps),
            100.0 * flow.queue_drop_fraction(),
            100.0 * flow.random_drops as f64 / flow.sent.max(1) as f64,
            flow.max_in_flight_after_startup as f64 / link.bdp() as f64,
            median.as_secs_f64() / link.rtt.as_secs_f64(),
            flow.startup_end,
        );
    }

    /// Smallest window after `from`, as a fraction of `bdp`.
    fn min_window_fraction(flow: &FlowReport, from: Duration, bdp: u64) -> f64 {
        let min = flow.trace_from(from).map(|p| p.cwnd).min().unwrap_or(0);
        min as f64 / bdp as f64
    }

    /// First time after `from` from which `ok` holds for every later trace point.
    fn settled_at(
        flow: &FlowReport,
        from: Duration,
        ok: impl Fn(&TracePoint) -> bool,
    ) -> Option<Duration> {
        let points: Vec<&TracePoint> = flow.trace_from(from).collect();
        match points.iter().rposition(|p| !ok(p)) {
            None => points.first().map(|p| p.at),
            Some(i) => points.get(i + 1).map(|p| p.at),
        }
    }

    /// Goodput of each flow between two times, as fractions of `rate_bps`.
    fn shares(report: &Report, from: Duration, to: Duration, rate_bps: u64) -> Vec<f64> {
        report
            .flows
            .iter()
            .map(|f| f.goodput(from, to, rate_bps))
            .collect()
    }

    /// The benchmark link without loss, shared by the tests that only read its report.
    fn clean_run() -> &'static (Link, Report) {
        static RUN: OnceLock<(Link, Report)> = OnceLock::new();
        RUN.get_or_init(|| {
            let link = Link::benchmark();
            let report = Scenario::single(link.clone(), secs(8.0)).run();
            (link, report)
        })
    }

    #[test]
    fn bandwidth_estimate_converges_to_link_rate() {
        let (link, report) = clean_run();
        let flow = &report.flows[0];
        summary("converges", link, flow, secs(1.0), secs(8.0));
        let Some(startup_end) = flow.startup_end else {
            panic!("start-up never ended");
        };
        assert!(startup_end < secs(1.0), "start-up took {startup_end:?}");
        let rate = link.bytes_per_sec() as f64;
        let estimates: Vec<f64> = flow
            .trace_from(startup_end)
            .filter_map(|p| p.max_bandwidth)
            .map(|bw| bw as f64 / rate)
            .collect();
        let lo = estimates.iter().copied().fold(f64::MAX, f64::min);
        let hi = estimates.iter().copied().fold(0.0, f64::max);
        eprintln!("estimate after start-up: {lo:.3}..{hi:.3} × link");
        assert!(lo >= 0.9 && hi <= 1.1);
        let min_rtt = flow
            .trace
            .last()
            .and_then(|p| p.min_rtt)
            .unwrap_or_default();
        assert!(min_rtt >= link.rtt && min_rtt <= link.rtt + Duration::from_millis(2));
    }

    #[test]
    fn bottleneck_queue_is_not_flooded() {
        let (link, report) = clean_run();
        let flow = &report.flows[0];
        summary("queue", link, flow, secs(1.0), secs(8.0));
        let ratio = flow.max_in_flight_after_startup as f64 / link.bdp() as f64;
        assert!(ratio <= 2.5, "in flight reached {ratio:.2} × BDP");
        assert!(
            flow.trace_from(secs(1.0))
                .all(|p| p.in_flight as f64 <= 2.5 * link.bdp() as f64)
        );
        assert!(flow.queue_drop_fraction() <= 0.05);
        assert!(flow.goodput(secs(1.0), secs(8.0), link.rate_bps) >= 0.93);
    }

    #[test]
    fn median_rtt_stays_near_base() {
        let (link, report) = clean_run();
        let flow = &report.flows[0];
        let median = flow.median_rtt(secs(1.0)).unwrap_or_default();
        let ratio = median.as_secs_f64() / link.rtt.as_secs_f64();
        eprintln!("median RTT {median:?} = {ratio:.2} × base");
        assert!(ratio <= 1.5);
    }

    fn lossy_run(name: &str, loss: f64, min_goodput: f64) {
        let link = Link::benchmark().with_loss(loss);
        let report = Scenario::single(link.clone(), secs(8.0)).run();
        let flow = &report.flows[0];
        summary(name, &link, flow, secs(2.0), secs(8.0));
        let goodput = flow.goodput(secs(2.0), secs(8.0), link.rate_bps);
        assert!(goodput >= min_goodput, "goodput {goodput:.3}");
        assert!(flow.goodput(Duration::ZERO, secs(8.0), link.rate_bps) >= min_goodput);
        let window = min_window_fraction(flow, secs(2.0), link.bdp());
        eprintln!("{name}: smallest window after 2 s: {window:.2} × BDP");
        // The down phase and ProbeRtt may go to 0.75 and 0.5 BDP briefly; nothing else lower.
        assert!(window >= 0.45, "window collapsed to {window:.2} × BDP");
        assert!(flow.queue_drop_fraction() <= 0.05);
    }

    #[test]
    fn one_percent_random_loss_keeps_goodput() {
        lossy_run("1 % loss", 0.01, 0.85);
    }

    #[test]
    fn five_percent_random_loss_keeps_goodput() {
        lossy_run("5 % loss", 0.05, 0.70);
    }

    #[test]
    fn long_rtt_with_loss_uses_the_link() {
        let link = Link {
            rtt: Duration::from_millis(200),
            ..Link::benchmark().with_loss(0.01)
        };
        let report = Scenario::single(link.clone(), secs(12.0)).run();
        let flow = &report.flows[0];
        summary("200 ms, 1 % loss", &link, flow, secs(4.0), secs(12.0));
        assert!(flow.goodput(secs(4.0), secs(12.0), link.rate_bps) >= 0.70);
        assert!(flow.goodput(Duration::ZERO, secs(12.0), link.rate_bps) >= 0.70);
        assert!(flow.queue_drop_fraction() <= 0.05);
    }

    /// How a flow followed a rate change at `change`.
    struct Followed {
        bandwidth: Option<Duration>,
        max_filter: Option<Duration>,
        window: Option<Duration>,
        rounds: u64,
        drops_after: f64,
    }

    fn follow(flow: &FlowReport, change: Duration, new_rate: u64, new_bdp: u64) -> Followed {
        let close = |bw: Option<u64>| bw.is_some_and(|bw| bw as f64 <= 1.1 * new_rate as f64);
        let bandwidth = settled_at(flow, change, |p| close(p.bandwidth));
        let max_filter = settled_at(flow, change, |p| close(p.max_bandwidth));
        let window = settled_at(flow, change, |p| p.cwnd as f64 <= 2.0 * new_bdp as f64);
        let round_at = |t: Option<Duration>| {
            t.and_then(|t| flow.point_at(t))
                .map_or(u64::MAX, |p| p.round)
        };
        let last = [bandwidth, window].into_iter().max().flatten();
        let rounds = round_at(last).saturating_sub(round_at(Some(change)));
        let sent_before = flow.point_at(change).map_or(0, |p| p.sent_total);
        let sent_after = flow.sent - sent_before;
        let dropped_after = flow
            .queue_drop_times
            .iter()
            .filter(|t| **t >= change)
            .count();
        Followed {
            bandwidth: bandwidth.map(|t| t - change),
            max_filter: max_filter.map(|t| t - change),
            window: window.map(|t| t - change),
            rounds,
            drops_after: dropped_after as f64 / sent_after.max(1) as f64,
        }
    }

    fn halving_run(name: &str, queue: Duration) -> Followed {
        let link = Link {
            queue,
            ..Link::benchmark()
        };
        let change = secs(3.0);
        let mut scenario = Scenario::single(link.clone(), secs(7.0));
        scenario
            .changes
            .push((change, Change::Rate(link.rate_bps / 2)));
        let report = scenario.run();
        let flow = &report.flows[0];
        let slow = Link {
            rate_bps: link.rate_bps / 2,
            ..link.clone()
        };
        let followed = follow(flow, change, slow.bytes_per_sec(), slow.bdp());
        let goodput = flow.goodput(change + secs(1.0), secs(7.0), slow.rate_bps);
        let rtt = flow.median_rtt(change + secs(1.0)).unwrap_or_default();
        eprintln!(
            "{name}: bandwidth used ≤ 1.1 × new rate after {:?}, max filter after {:?}, window \
             ≤ 2 × new BDP after {:?} ({} rounds); queue drops after the change {:.2} % of \
             sent; goodput from +1 s {:.1} % of the new rate; median RTT from +1 s {rtt:?}",
            followed.bandwidth,
            followed.max_filter,
            followed.window,
            followed.rounds,
            100.0 * followed.drops_after,
            100.0 * goodput,
        );
        assert!(goodput >= 0.9);
        assert!(rtt.as_secs_f64() <= 1.5 * link.rtt.as_secs_f64());
        followed
    }

    #[test]
    fn follows_a_halved_link_rate() {
        let followed = halving_run("halved, 30 ms queue", Duration::from_millis(30));
        let within = |t: Option<Duration>| t.is_some_and(|t| t <= secs(1.0));
        assert!(within(followed.bandwidth) && within(followed.max_filter));
        assert!(within(followed.window));
        assert!(followed.rounds <= 15);
        assert!(followed.drops_after <= 0.05);
    }

    #[test]
    fn follows_a_halved_link_rate_through_loss_in_a_shallow_buffer() {
        let followed = halving_run("halved, 5 ms queue", Duration::from_millis(5));
        let within = |t: Option<Duration>| t.is_some_and(|t| t <= secs(1.0));
        assert!(within(followed.bandwidth) && within(followed.window));
        assert!(followed.drops_after <= 0.05);
    }

    #[test]
    fn finds_a_doubled_link_rate() {
        let link = Link {
            rate_bps: 50_000_000,
            ..Link::benchmark()
        };
        let change = secs(2.0);
        let mut scenario = Scenario::single(link.clone(), secs(5.0));
        scenario
            .changes
            .push((change, Change::Rate(2 * link.rate_bps)));
        let report = scenario.run();
        let flow = &report.flows[0];
        let target = 0.9 * 2.0 * link.bytes_per_sec() as f64;
        let found = settled_at(flow, change, |p| {
            p.max_bandwidth.is_some_and(|bw| bw as f64 >= target)
        });
        let rounds = found
            .and_then(|t| flow.point_at(t))
            .zip(flow.point_at(change))
            .map_or(u64::MAX, |(a, b)| a.round - b.round);
        let goodput = flow.goodput(change + secs(1.0), secs(5.0), 2 * link.rate_bps);
        eprintln!(
            "doubled: estimate ≥ 90 % of the new rate after {:?} ({rounds} rounds); goodput from \
             +1 s {:.1} %",
            found.map(|t| t - change),
            100.0 * goodput
        );
        assert!(found.is_some_and(|t| t - change <= secs(1.0)));
        assert!(goodput >= 0.9);
    }

    #[test]
    fn longer_route_is_learned_through_probe_rtt() {
        let link = Link {
            rate_bps: 20_000_000,
            ..Link::benchmark()
        };
        let change = secs(2.0);
        let mut scenario = Scenario::single(link.clone(), secs(15.0));
        scenario
            .changes
            .push((change, Change::Rtt(Duration::from_millis(40))));
        let report = scenario.run();
        let flow = &report.flows[0];
        let learned = settled_at(flow, change, |p| {
            p.min_rtt
                .is_some_and(|rtt| rtt >= Duration::from_millis(40))
        });
        let probe_rtt = flow
            .trace_from(change)
            .any(|p| p.state == Some(State::ProbeRtt));
        let goodput = flow.goodput(secs(13.0), secs(15.0), link.rate_bps);
        eprintln!(
            "RTT 20 → 40 ms: min RTT learned after {:?} (ProbeRtt seen: {probe_rtt}); goodput \
             over the last 2 s {:.1} %",
            learned.map(|t| t - change),
            100.0 * goodput
        );
        assert!(probe_rtt);
        assert!(learned.is_some_and(|t| t - change <= secs(12.0)));
        assert!(goodput >= 0.9);
    }

    #[test]
    fn holds_its_share_against_a_standing_queue() {
        let link = Link::benchmark();
        let scenario = Scenario {
            link: link.clone(),
            duration: secs(10.0),
            changes: Vec::new(),
            flows: vec![
                FlowSpec::greedy(Duration::ZERO, SenderKind::FixedWindow(link.bdp())),
                FlowSpec::greedy(secs(1.0), SenderKind::Adaptive(3)),
            ],
        };
        let report = scenario.run();
        let share = shares(&report, secs(4.0), secs(10.0), link.rate_bps);
        eprintln!(
            "vs a fixed 1-BDP window: fixed {:.1} %, adaptive {:.1} %, adaptive queue drops \
             {:.2} %",
            100.0 * share[0],
            100.0 * share[1],
            100.0 * report.flows[1].queue_drop_fraction()
        );
        let total: f64 = share.iter().sum();
        assert!(share[1] >= total / 3.0);
        assert!(total >= 0.9);
    }

    /// Our flow against a delay-insensitive competitor that keeps a standing queue: each flow's
    /// share of the link from 4 s to `seconds`, the competitor starting first by `head_start`,
    /// and our median RTT.
    fn against(
        competitor: SenderKind,
        head_start: Duration,
        seconds: f64,
    ) -> (f64, f64, FlowReport) {
        let link = Link::benchmark();
        let scenario = Scenario {
            link: link.clone(),
            duration: secs(seconds),
            changes: Vec::new(),
            flows: vec![
                FlowSpec::greedy(Duration::ZERO, competitor),
                FlowSpec::greedy(head_start, SenderKind::Adaptive(5)),
            ],
        };
        let mut report = scenario.run();
        let share = shares(&report, secs(4.0), secs(seconds), link.rate_bps);
        (share[0], share[1], report.flows.remove(1))
    }

    /// Linux TCP bbr kept about 25 ms of standing queue on the 20 ms benchmark link (45 ms of
    /// RTT in cc-bench; it keeps 2 × its BDP in flight plus an ACK-aggregation allowance), and
    /// a controller that paid for at most 2 × the minimum RTT got a quarter of the link against
    /// it. `BbrLike(2.25)` reproduces that RTT; `StandingQueue` holds 25 ms whatever we do.
    #[test]
    fn holds_a_third_against_a_flow_that_keeps_a_standing_queue() {
        let competitors = [
            ("bbr-like, 2.25 × BDP", SenderKind::BbrLike(2.25)),
            ("bbr-like, 2 × BDP", SenderKind::BbrLike(2.0)),
            (
                "25 ms standing queue",
                SenderKind::StandingQueue(Duration::from_millis(25)),
            ),
        ];
        for (name, competitor) in competitors {
            for head_start in [Duration::ZERO, secs(1.0)] {
                let (theirs, ours, flow) = against(competitor, head_start, 20.0);
                let total = theirs + ours;
                let median = flow.median_rtt(secs(4.0)).unwrap_or_default();
                eprintln!(
                    "vs {name}, {head_start:?} head start: competitor {:.1} %, adaptive {:.1} %, \
                     adaptive queue drops {:.2} %, median RTT {median:?}",
                    100.0 * theirs,
                    100.0 * ours,
                    100.0 * flow.queue_drop_fraction(),
                );
                assert!(
                    ours >= total / 3.0,
                    "{name}: adaptive got {ours:.3} of {total:.3}"
                );
                assert!(theirs >= total / 3.0, "{name}: competitor got {theirs:.3}");
                assert!(total >= 0.9);
            }
        }
    }

    #[test]
    fn two_adaptive_flows_share_the_link() {
        let link = Link::benchmark();
        let scenario = Scenario {
            link: link.clone(),
            duration: secs(10.0),
            changes: Vec::new(),
            flows: vec![
                FlowSpec::greedy(Duration::ZERO, SenderKind::Adaptive(11)),
                FlowSpec::greedy(secs(2.0), SenderKind::Adaptive(12)),
            ],
        };
        let report = scenario.run();
        let share = shares(&report, secs(4.0), secs(10.0), link.rate_bps);
        let drops: Vec<f64> = report
            .flows
            .iter()
            .map(FlowReport::queue_drop_fraction)
            .collect();
        let median = report.flows[0].median_rtt(secs(4.0)).unwrap_or_default();
        eprintln!(
            "two adaptive flows: {:.1} % / {:.1} %, queue drops {:.2} % / {:.2} %, median RTT \
             {:.2} × base",
            100.0 * share[0],
            100.0 * share[1],
            100.0 * drops[0],
            100.0 * drops[1],
            median.as_secs_f64() / link.rtt.as_secs_f64(),
        );
        let total: f64 = share.iter().sum();
        assert!(share.iter().all(|s| *s >= total / 3.0));
        assert!(total >= 0.9);
        assert!(drops.iter().all(|d| *d <= 0.05));
    }

    #[test]
    fn application_limited_flow_keeps_a_sane_window_and_speeds_up_later() {
        let link = Link::benchmark();
        let greedy_from = secs(3.0);
        let app_rate = 20_000_000;
        let mut scenario = Scenario::single(link.clone(), secs(5.0));
        scenario.flows[0].app_limit = Some((app_rate, greedy_from));
        let report = scenario.run();
        let flow = &report.flows[0];
        let app_bdp = bytes_over(app_rate / 8, link.rtt);
        let max_window = flow
            .trace
            .iter()
            .filter(|p| p.at < greedy_from)
            .map(|p| p.cwnd)
            .max()
            .unwrap_or(0);
        let app_goodput = flow.goodput(secs(1.0), greedy_from, app_rate);
        let reached = settled_at(flow, greedy_from, |p| {
            p.max_bandwidth
                .is_some_and(|bw| bw as f64 >= 0.9 * link.bytes_per_sec() as f64)
        });
        let goodput = flow.goodput(secs(4.0), secs(5.0), link.rate_bps);
        eprintln!(
            "app-limited at 20 Mbit/s: largest window {:.2} × app BDP, app goodput {:.1} % of \
             its rate; estimate ≥ 90 % of link {:?} after data became unlimited; goodput {:.1} \
             % over the last second",
            max_window as f64 / app_bdp as f64,
            100.0 * app_goodput,
            reached.map(|t| t - greedy_from),
            100.0 * goodput,
        );
        assert!(app_goodput >= 0.97);
        assert!(max_window <= 3 * app_bdp);
        assert!(reached.is_some_and(|t| t - greedy_from <= secs(1.0)));
        assert!(goodput >= 0.9);
        assert_eq!(flow.queue_drops, 0);
    }

    #[test]
    fn an_application_limited_flow_is_not_cut_to_refresh_its_minimum_rtt() {
        // A 50 Mbit/s stream on the 100 Mbit/s link, whose route grows 5 ms longer after 2 s,
        // so the minimum RTT expires 10 s later. The stream builds no queue: ProbeRtt would
        // only delay it (it once halved such a stream for 200 ms every 10 s, and its packets
        // waited up to ~190 ms); its own samples give the new minimum.
        let link = Link::benchmark();
        let app_rate = 50_000_000;
        let duration = secs(16.0);
        let longer = link.rtt + Duration::from_millis(5);
        let mut scenario = Scenario::single(link.clone(), duration);
        scenario.flows[0].app_limit = Some((app_rate, duration + secs(1.0)));
        scenario.changes.push((secs(2.0), Change::Rtt(longer)));
        let report = scenario.run();
        let flow = &report.flows[0];
        let probe_rtt = flow.trace.iter().any(|p| p.state == Some(State::ProbeRtt));
        let min_rtt = flow.trace.last().and_then(|p| p.min_rtt);
        let worst = flow
            .rtt_samples
            .iter()
            .filter(|(at, _)| *at >= secs(3.0))
            .map(|(_, rtt)| *rtt)
            .max()
            .unwrap_or_default();
        let app_goodput = flow.goodput(secs(3.0), duration, app_rate);
        eprintln!(
            "app-limited at 50 Mbit/s, route 20 → 25 ms: ProbeRtt seen: {probe_rtt}, min RTT \
             at the end {min_rtt:?}, worst RTT {worst:?}, goodput {:.1} % of its rate",
            100.0 * app_goodput
        );
        assert!(!probe_rtt);
        assert!(min_rtt.is_some_and(|rtt| rtt >= longer));
        assert!(
            worst <= longer + Duration::from_millis(5),
            "worst RTT {worst:?}"
        );
        assert!(app_goodput >= 0.97);
    }

    /// The emulated link's user-space emulator is not always scheduled: it stalls now and then
    /// (a 107 ms stall was seen at load 5) and delays packets by a varying amount, and the
    /// tunnel's receivers acknowledge every tenth packet within 2 ms. Alone on the link, our
    /// flow twice kept the 30 ms queue full for about half a second there. Through the same
    /// disturbances here — stalls of 20, 50 and 107 ms, up to 1 ms of jitter (so the minimum
    /// RTT expires and ProbeRtt runs), those ACKs — it keeps its queue short: no queue drops
    /// after start-up, and the RTT's 99th percentile outside the stalls' own half-seconds
    /// within base + 10 ms.
    #[test]
    fn a_lone_flow_keeps_its_queue_short_through_stalls_and_jitter() {
        let link = Link {
            jitter: Duration::from_millis(1),
            ack_every: 10,
            ack_flush: Duration::from_millis(2),
            ..Link::benchmark()
        };
        let stalls = [(3.5, 20), (8.0, 107), (13.7, 50), (19.0, 107)];
        let mut scenario = Scenario::single(link.clone(), secs(25.0));
        for (at, ms) in stalls {
            let change = Change::Stall(Duration::from_millis(ms));
            scenario.changes.push((secs(at), change));
        }
        let report = scenario.run();
        let flow = &report.flows[0];
        let disturbed = |t: Duration| {
            stalls
                .iter()
                .any(|(at, _)| t >= secs(*at) && t < secs(at + 0.5))
        };
        let mut rtts: Vec<Duration> = flow
            .rtt_samples
            .iter()
            .filter(|(at, _)| *at >= secs(1.0) && !disturbed(*at))
            .map(|(_, rtt)| *rtt)
            .collect();
        rtts.sort();
        let p99 = rtts[rtts.len() * 99 / 100];
        let drops = flow
            .queue_drop_times
            .iter()
            .filter(|t| **t >= secs(1.0))
            .count();
        let probe_rtt = flow.trace.iter().any(|p| p.state == Some(State::ProbeRtt));
        summary("stalls and jitter", &link, flow, secs(1.0), secs(25.0));
        eprintln!(
            "stalls and jitter: RTT p99 outside the stalls {p99:?}, queue drops after 1 s \
             {drops}, ProbeRtt seen: {probe_rtt}"
        );
        assert!(probe_rtt);
        assert_eq!(drops, 0);
        assert!(
            p99 <= link.rtt + Duration::from_millis(10),
            "RTT p99 {p99:?}"
        );
        assert!(flow.goodput(secs(1.0), secs(25.0), link.rate_bps) >= 0.9);
    }

    #[test]
    fn sparse_acks_still_fill_the_pipe() {
        for ack_every in [16, 32] {
            let link = Link {
                ack_every,
                ..Link::benchmark()
            };
            let report = Scenario::single(link.clone(), secs(4.0)).run();
            let flow = &report.flows[0];
            let goodput = flow.goodput(secs(1.0), secs(4.0), link.rate_bps);
            let extra = flow.trace.last().map_or(0, |p| p.extra_acked);
            let median = flow.median_rtt(secs(1.0)).unwrap_or_default();
            eprintln!(
                "ACK every {ack_every} packets: goodput {:.1} %, ACK-aggregation allowance \
                 {:.2} × BDP, median RTT {:.2} × base",
                100.0 * goodput,
                extra as f64 / link.bdp() as f64,
                median.as_secs_f64() / link.rtt.as_secs_f64(),
            );
            assert!(goodput >= 0.93);
            assert!(median.as_secs_f64() <= 1.5 * link.rtt.as_secs_f64());
        }
    }

    #[test]
    fn sub_millisecond_path_queues_at_most_about_a_millisecond() {
        let link = Link {
            rate_bps: 200_000_000,
            rtt: Duration::from_micros(200),
            queue: Duration::from_millis(3),
            ..Link::benchmark()
        };
        let report = Scenario::single(link.clone(), secs(2.0)).run();
        let flow = &report.flows[0];
        summary("LAN, 0.2 ms", &link, flow, secs(0.5), secs(2.0));
        let median = flow.median_rtt(secs(0.5)).unwrap_or_default();
        // MIN_PIPE_RTT sizes the window for 1 ms: the queue holds what exceeds the real BDP.
        assert!(
            median <= link.rtt + Duration::from_micros(1500),
            "median RTT {median:?}"
        );
        assert!(flow.goodput(secs(0.5), secs(2.0), link.rate_bps) >= 0.9);
        assert_eq!(flow.queue_drops, 0);
    }

    #[test]
    fn simulation_is_deterministic() {
        let link = Link::benchmark().with_loss(0.02);
        let a = Scenario::single(link.clone(), secs(1.5)).run();
        let b = Scenario::single(link, secs(1.5)).run();
        let key = |r: &Report| {
            let f = &r.flows[0];
            let last = f.trace.last().map(|p| (p.cwnd, p.bandwidth, p.round));
            (
                f.sent,
                f.random_drops,
                f.ack_drops,
                f.queue_drops,
                f.acked_bytes,
                last,
            )
        };
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn random_loss_matches_the_configured_rate() {
        let link = Link::benchmark().with_loss(0.05);
        let report = Scenario::single(link, secs(1.5)).run();
        let flow = &report.flows[0];
        let rate = flow.random_drops as f64 / flow.sent as f64;
        assert!((0.04..=0.06).contains(&rate), "random loss {rate:.3}");
        // Packets still in flight at the end are not declared yet; nothing is declared lost
        // that was not lost.
        assert!(flow.ack_drops > 0);
        assert!(flow.declared_lost as f64 >= 0.95 * flow.random_drops as f64);
        assert!(flow.declared_lost <= flow.random_drops + flow.queue_drops);
    }
}
