//! The adaptive controller's path model: a bottleneck-bandwidth max filter, a minimum-RTT
//! filter, a per-round congestion assessment and the state machine Startup → Drain → ProbeBw
//! (Up / Down / Cruise) ⇄ ProbeRtt that turns them into a congestion window.
//!
//! Everything here is plain data driven by explicit inputs (time as a [`Duration`] since an
//! arbitrary epoch, byte counts, rate samples), so the same code runs inside quinn (through the
//! adapter in `lib.rs`) and on the deterministic simulated link in `sim.rs`.
//!
//! quinn paces at about 1.25 × window / smoothed RTT and has no pacing-rate hook, so the window
//! is the only real lever: it sits at about one bandwidth-delay product while cruising, and only
//! briefly above it while probing for more bandwidth. See docs/CONGESTION.md for the reasoning.

use std::time::Duration;

// ---- Filters -------------------------------------------------------------------------------

/// Rounds over which a delivery-rate sample counts towards the bandwidth estimate. Long enough
/// to remember the last up-probe (a ProbeBw cycle lasts at most 8 rounds), short enough to
/// follow a slower link within about ten round trips.
pub const BW_WINDOW_ROUNDS: usize = 10;

/// How long a minimum-RTT sample stays valid before ProbeRtt is entered to refresh it. Routes
/// rarely change faster; refreshing more often costs throughput.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);

/// The RTT the model sizes windows by and judges queueing delay against is at least this.
/// Below about a millisecond the measured RTT is host scheduling and batching (task wake-ups,
/// GSO/GRO batches, quinn's 1 ms timer granularity) rather than path, and a window of
/// bandwidth × such an RTT leaves the sender idle between batches: on loopback a 12 µs
/// minimum RTT gave a 17 kB window and half of Cubic's throughput. A millisecond of data in
/// flight costs at most a millisecond of queueing on a fast local path, and nothing on a WAN.
pub const MIN_PIPE_RTT: Duration = Duration::from_millis(1);

/// The window may exceed the bandwidth-delay product by the largest ACK aggregation seen over
/// this many rounds. A receiver that acknowledges many packets at once (batched receive
/// processing, ACK decimation on the return path) holds back ACKs that an evenly clocked
/// window would need; without this allowance the window under-fills the pipe by that amount
/// and the bandwidth estimate shrinks to match.
pub const ACK_AGGREGATION_ROUNDS: usize = BW_WINDOW_ROUNDS;

// ---- Start-up ------------------------------------------------------------------------------

/// Start-up caps the window at this multiple of the measured BDP (plus the ACK-aggregation
/// allowance). Slow start doubles the window every round trip, so a doubling is all the cap
/// has to allow; when the pipe fills, the queue we build is at most one BDP (BBRv1's 2.89
/// overflows shallow buffers).
pub const STARTUP_GAIN: f64 = 2.0;

/// Start-up assumes the pipe is full when the bandwidth estimate grew by less than this
/// factor…
pub const STARTUP_GROWTH: f64 = 1.25;

/// …over this many consecutive rounds in which the window, not the application or quinn's
/// pacer, limited sending.
pub const STARTUP_FULL_ROUNDS: u32 = 3;

// ---- ProbeBw -------------------------------------------------------------------------------

/// Largest window gain of the up-probe phase: one round at 25 % over the BDP shows whether
/// more bandwidth is available (the delivery rate rises) while adding only a quarter BDP of
/// queue. The probe shrinks when probes overflow the bottleneck queue (see
/// [`MIN_PROBE_HEADROOM`]).
pub const UP_GAIN: f64 = 1.25;

/// Window gain of the down phase that drains the up-probe's queue (until in-flight data is
/// back to one BDP, at most one round).
pub const DOWN_GAIN: f64 = 0.75;

/// Window gain while cruising: the BDP itself, so the bottleneck stays busy without a standing
/// queue (plus [`HEADROOM_PACKETS`] and the ACK-aggregation allowance).
pub const CRUISE_GAIN: f64 = 1.0;

/// Fewest cruise rounds between two up-probes.
pub const CRUISE_ROUNDS_MIN: u32 = 2;

/// Most cruise rounds between two up-probes. The count is drawn at random in between so that
/// flows sharing a bottleneck do not probe in lock-step.
pub const CRUISE_ROUNDS_MAX: u32 = 6;

/// Smallest up-probe, as a fraction of the BDP above it. A probe that overflows the queue (the
/// round carrying it loses clearly more than the random-loss baseline) halves the next probe;
/// each clean probe grows it by [`PROBE_HEADROOM_STEP`] again, up to [`UP_GAIN`]. A shallow
/// buffer thus gets probes that fit it instead of a quarter BDP of drops every cycle.
pub const MIN_PROBE_HEADROOM: f64 = 1.0 / 32.0;

/// Additive growth of the up-probe after a probe that lost nothing beyond random loss.
pub const PROBE_HEADROOM_STEP: f64 = 1.0 / 32.0;

/// An up-probe overflowed when its round lost more packets than the random-loss baseline
/// predicts by this many standard deviations (binomial) plus [`MIN_LOSS_PACKETS`]: with 5 %
/// random loss and 200 packets per round the bar is about 23 losses instead of the expected 10.
pub const PROBE_LOSS_SIGMAS: f64 = 3.0;

/// Weight of a new round in the random-loss baseline (an exponentially weighted average of the
/// loss rate of rounds that were neither probes nor congested).
pub const LOSS_BASELINE_WEIGHT: f64 = 1.0 / 8.0;

/// The RTT used for the window may exceed the minimum RTT by this factor at most. A queue that
/// our own down phase could not drain (another flow's) is paid for by a larger window, so a
/// competing flow's standing queue does not starve us; the cap bounds what a stale bandwidth
/// estimate can do with it. Linux TCP bbr keeps 2 × its BDP in flight plus an ACK-aggregation
/// allowance (2.2–2.5 × on the benchmark link); a cap at or below that lets it starve us,
/// because whichever flow may pay for less queue than the RTT both see delivers less than its
/// estimate every round.
pub const MAX_RTT_INFLATION: f64 = 2.5;

/// The last ProbeBw cycle's RTT floor — measured while our own down phase had drained our
/// queue — at least this fraction above the pipe RTT means the queue is someone else's (a
/// *foreign queue*). Alone, the floor stays within a few percent of the minimum RTT.
pub const FOREIGN_QUEUE_FRACTION: f64 = 0.25;

/// With a foreign queue, a round is congestive only if its loss rate exceeds [`LOSS_THRESH`]
/// plus this multiple of the loss baseline: when another flow keeps a drop-tail buffer full,
/// every round loses about the same share, and answering that steady share by shrinking hands
/// the link to the flow that ignores it.
pub const FOREIGN_LOSS_BASELINE_FACTOR: f64 = 2.0;

// ---- ProbeRtt ------------------------------------------------------------------------------

/// How long ProbeRtt holds the small window once in-flight data is down to it: long enough
/// for a queue built by us (or a synchronised competitor) to drain and be measured.
pub const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);

/// Window during ProbeRtt as a fraction of the BDP. Half a BDP empties a queue we built while
/// losing at most half the throughput for [`PROBE_RTT_DURATION`] (BBRv2 made the same choice
/// over BBRv1's four packets).
pub const PROBE_RTT_GAIN: f64 = 0.5;

// ---- Window bounds -------------------------------------------------------------------------

/// Hard cap on the window after start-up, as a multiple of the max-filtered bandwidth × the
/// minimum RTT (plus [`HEADROOM_PACKETS`]); equal to [`MAX_RTT_INFLATION`] so that paying for a
/// foreign queue is not cut short by it.
pub const INFLIGHT_CAP_GAIN: f64 = MAX_RTT_INFLATION;

/// Packets added to every window after start-up. Delayed ACKs (one per two packets) and the
/// pacer's bursts make the ACK clock lumpy; a few packets of slack keep the bottleneck busy.
pub const HEADROOM_PACKETS: u64 = 4;

/// The window never drops below this many packets (RFC 9002's minimum is two; four keeps the
/// ACK clock ticking with one-per-two delayed ACKs).
pub const MIN_WINDOW_PACKETS: u64 = 4;

/// In-flight data within this many packets of the window (or 1/16 of it) counts as
/// window-limited: quinn stops one datagram short of the window, a GSO batch a little earlier.
pub const WINDOW_LIMITED_SLACK_PACKETS: u64 = 3;

// ---- Congestion signals --------------------------------------------------------------------

/// A round whose loss rate reaches this fraction may be congestive. Random loss of 1–5 % stays
/// well below it (5 % random loss over a 200-packet round reaches 15 % with a probability of
/// about 1e-7), while a drop-tail overflow typically loses a quarter or more of what exceeds
/// the queue.
pub const LOSS_THRESH: f64 = 0.15;

/// A congestive round must also have lost at least this many packets.
pub const MIN_LOSS_PACKETS: u64 = 3;

/// A loss rate is only judged over at least this many packets (delivered plus lost): over
/// fewer, a couple of random losses already look like a high rate (5 % random loss puts 3 of
/// 20 packets lost in 7.5 % of rounds — hence also the queue-evidence condition).
pub const LOSS_RATE_MIN_PACKETS: u64 = 20;

/// Queue evidence required with a high loss rate: the round's largest RTT must exceed the
/// minimum RTT by this fraction of the pipe RTT (so by at least 125 µs). A drop-tail queue
/// drops only when full, so overflow comes with a raised RTT; random loss does not.
pub const QUEUE_EVIDENCE_FRACTION: f64 = 0.125;

/// A round whose *smallest* RTT is this multiple of the minimum RTT saw a standing queue
/// larger than we pay for: the bandwidth estimate is likely stale. Not applied while the queue
/// is foreign (see [`FOREIGN_QUEUE_FRACTION`]): delay that survives our own drain is not ours
/// to remove, and backing off for it only hands the link to the flow that keeps it.
pub const HIGH_DELAY_FACTOR: f64 = 2.5;

/// Consecutive high-delay rounds that count as congestion.
pub const HIGH_DELAY_ROUNDS: u32 = 3;

/// Multiplicative decrease on congestion (as in BBRv2 and CUBIC): a lossy round caps the data
/// in flight at this fraction of the round's peak, and the short-term bandwidth bound drops to
/// what the round delivered but by at most this factor.
pub const BETA: f64 = 0.7;

/// Where the state machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Exponential growth until the bandwidth estimate stops growing.
    Startup,
    /// Empty the queue start-up built.
    Drain,
    /// Steady state, cycling through up-probe, drain and cruise.
    ProbeBw(Phase),
    /// Briefly shrink the window to measure the path's minimum RTT again.
    ProbeRtt,
}

/// The phases of one ProbeBw cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// One round at [`UP_GAIN`].
    Up,
    /// At [`DOWN_GAIN`] until in-flight data is back to one BDP.
    Down,
    /// At [`CRUISE_GAIN`] for a few rounds.
    Cruise,
}

/// One delivery-rate sample, taken when an ACK batch is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes delivered per second over the sample's interval.
    pub bytes_per_sec: u64,
    /// The sender was not using the whole window, so the sample may be below the path's rate.
    pub app_limited: bool,
}

/// What one batch of ACKs told us, summarised by the delivery sampler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckBatch {
    /// When the batch was processed.
    pub now: Duration,
    /// Bytes newly acknowledged.
    pub acked: u64,
    /// The smallest RTT measured in the batch.
    pub rtt: Option<Duration>,
    /// The delivery rate measured by the batch's newest acknowledged packet.
    pub sample: Option<RateSample>,
    /// The batch acknowledged data sent after the previous round started: a new round begins.
    pub round_start: bool,
    /// Bytes in flight after the batch.
    pub in_flight: u64,
    /// The sender was application-limited.
    pub app_limited: bool,
    /// Sends since the previous batch filled the window (rather than being held back by the
    /// pacer or the application).
    pub window_limited: bool,
    /// The most data in flight since the previous batch.
    pub peak_in_flight: u64,
}

/// The adaptive controller's model of the path.
#[derive(Clone, Debug)]
pub struct Model {
    state: State,
    mtu: u64,
    initial_window: u64,
    cwnd: u64,
    in_flight: u64,
    bw: MaxFilter<BW_WINDOW_ROUNDS>,
    bw_lo: Option<u64>,
    inflight_hi: Option<u64>,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Duration,
    rtt_floor: Option<Duration>,
    cycle_floor: Option<Duration>,
    recent_rtt: Option<Duration>,
    round: u64,
    stats: RoundStats,
    filled_pipe: bool,
    full_bw: u64,
    full_bw_rounds: u32,
    phase_rounds: u32,
    cruise_rounds: u32,
    high_delay_rounds: u32,
    probe_rtt: Option<ProbeRttHold>,
    probe_headroom: f64,
    judge_next_round: bool,
    loss_baseline: f64,
    prev_window_limited: bool,
    aggregation: AckAggregation,
    rng: u64,
}

impl Model {
    /// A model in Startup with `initial_window` bytes allowed in flight. `seed` drives the
    /// random cruise length; any value works.
    pub fn new(initial_window: u64, mtu: u16, seed: u64) -> Self {
        let mtu = u64::from(mtu).max(1);
        let initial_window = initial_window.max(MIN_WINDOW_PACKETS * mtu);
        Self {
            state: State::Startup,
            mtu,
            initial_window,
            cwnd: initial_window,
            in_flight: 0,
            bw: MaxFilter::default(),
            bw_lo: None,
            inflight_hi: None,
            min_rtt: None,
            min_rtt_stamp: Duration::ZERO,
            rtt_floor: None,
            cycle_floor: None,
            recent_rtt: None,
            round: 0,
            stats: RoundStats::default(),
            filled_pipe: false,
            full_bw: 0,
            full_bw_rounds: 0,
            phase_rounds: 0,
            cruise_rounds: CRUISE_ROUNDS_MIN,
            high_delay_rounds: 0,
            probe_rtt: None,
            probe_headroom: UP_GAIN - 1.0,
            judge_next_round: false,
            loss_baseline: 0.0,
            prev_window_limited: false,
            aggregation: AckAggregation::default(),
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.cwnd
    }

    /// The initial window this model started with.
    pub fn initial_window(&self) -> u64 {
        self.initial_window
    }

    /// The state machine's current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bottleneck bandwidth estimate in bytes per second (max filter, before short-term bounds).
    pub fn max_bandwidth(&self) -> Option<u64> {
        self.bw.get(self.round)
    }

    /// Bandwidth the window is computed from: the max filter bounded by the short-term bound
    /// set on congestion.
    pub fn bandwidth(&self) -> Option<u64> {
        let max = self.max_bandwidth()?;
        Some(self.bw_lo.map_or(max, |lo| lo.min(max)))
    }

    /// The path's minimum RTT estimate.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Rounds (round trips) counted so far.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// The minimum RTT, but at least [`MIN_PIPE_RTT`]: what windows are sized by.
    pub fn pipe_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|rtt| rtt.max(MIN_PIPE_RTT))
    }

    /// Bandwidth × [`Model::pipe_rtt`] in bytes.
    pub fn bdp(&self) -> Option<u64> {
        Some(bytes_over(self.bandwidth()?, self.pipe_rtt()?))
    }

    /// The rate the model would pace at if it could, in bytes per second (for metrics only:
    /// quinn derives its pacing from the window).
    pub fn pacing_rate(&self) -> Option<u64> {
        let gain = match self.state {
            State::Startup => STARTUP_GAIN,
            State::Drain | State::ProbeRtt => 1.0,
            State::ProbeBw(phase) => self.phase_gain(phase),
        };
        Some(scale(self.bandwidth()?, gain))
    }

    /// Absorbs one batch of ACKs and updates the window.
    pub fn on_ack(&mut self, ack: &AckBatch) {
        self.in_flight = ack.in_flight;
        self.stats.absorb(ack);
        if let Some(rtt) = ack.rtt {
            self.on_rtt_sample(ack.now, rtt);
        }
        if let Some(sample) = ack.sample {
            self.on_rate_sample(sample);
        }
        if let Some(bw) = self.max_bandwidth() {
            self.aggregation
                .on_ack(ack.now, ack.acked, bw, self.round, self.cwnd);
        }
        if ack.round_start {
            self.end_round();
        }
        self.advance(ack.now);
        self.update_window(ack.acked, ack.app_limited);
    }

    /// The cap on data in flight learnt from lossy rounds, if any.
    pub fn inflight_hi(&self) -> Option<u64> {
        self.inflight_hi
    }

    /// Bytes of ACK aggregation the window currently allows for.
    pub fn extra_acked(&self) -> u64 {
        self.aggregation.extra(self.round)
    }

    /// The up-probe's current size above the BDP, as a fraction of it.
    pub fn probe_headroom(&self) -> f64 {
        self.probe_headroom
    }

    /// The loss rate this model attributes to random (non-congestive) loss.
    pub fn loss_baseline(&self) -> f64 {
        self.loss_baseline
    }

    /// Records lost bytes. Loss alone changes little at once: the round's loss rate is judged
    /// when the round ends, so isolated random losses do not shrink the window. Two exceptions:
    /// start-up ends as soon as the round's losses show an overflowing queue (each further
    /// round of doubling would lose a BDP more), and persistent congestion (everything lost for
    /// several PTOs) means the path changed or went away, so the model starts over.
    pub fn on_loss(&mut self, lost_bytes: u64, persistent: bool) {
        self.stats.lost = self.stats.lost.saturating_add(lost_bytes);
        if persistent {
            self.restart();
            return;
        }
        if self.state == State::Startup && self.lossy(&self.stats) {
            let stats = self.stats;
            self.on_congestion(&stats, true);
            self.stats.responded = true;
        }
    }

    /// In-flight data within this many bytes of the window counts as window-limited: quinn
    /// stops one datagram short of the window, and a GSO batch may stop a little earlier.
    pub fn window_limited_slack(&self) -> u64 {
        (WINDOW_LIMITED_SLACK_PACKETS * self.mtu).max(self.cwnd / 16)
    }

    /// The path's MTU changed.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu).max(1);
        self.cwnd = self.cwnd.max(self.min_window());
    }

    fn restart(&mut self) {
        self.state = State::Startup;
        self.bw = MaxFilter::default();
        self.aggregation = AckAggregation::default();
        self.bw_lo = None;
        self.inflight_hi = None;
        self.filled_pipe = false;
        self.full_bw = 0;
        self.full_bw_rounds = 0;
        self.probe_rtt = None;
        self.cwnd = self.min_window();
    }

    fn on_rtt_sample(&mut self, now: Duration, rtt: Duration) {
        self.cycle_floor = Some(self.cycle_floor.map_or(rtt, |f| f.min(rtt)));
        let expired = now.saturating_sub(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        let lower = self.min_rtt.is_none_or(|min| rtt <= min);
        if lower || expired {
            self.min_rtt = Some(rtt);
            self.min_rtt_stamp = now;
        }
        // A flow the application keeps below the path's rate (a paced stream, an interactive
        // session) builds no queue of its own: its samples already show the path's RTT, and
        // the expired minimum was just replaced by one. Cutting its window to refresh the
        // minimum would only delay its packets (a 50 Mbit/s stream on a 100 Mbit/s path was
        // halved for 200 ms every 10 s).
        let builds_queue = !self.stats.app_limited;
        if expired && !lower && builds_queue && self.state != State::ProbeRtt {
            self.enter_probe_rtt();
        }
    }

    fn on_rate_sample(&mut self, sample: RateSample) {
        self.stats.bw_latest = self.stats.bw_latest.max(sample.bytes_per_sec);
        let current = self.bw.get(self.round).unwrap_or(0);
        // An application-limited sample only shows a lower bound of the path's rate.
        if !sample.app_limited || sample.bytes_per_sec >= current {
            self.bw.update(self.round, sample.bytes_per_sec);
        }
    }

    fn end_round(&mut self) {
        let stats = std::mem::take(&mut self.stats);
        self.round += 1;
        if !stats.app_limited && stats.rtt_min.is_some() {
            self.recent_rtt = stats.rtt_min;
        }
        self.prev_window_limited = stats.window_limited;
        let lossy = self.lossy(&stats);
        let congested = self.congested(&stats, lossy);
        if congested && !stats.responded {
            self.on_congestion(&stats, lossy);
        }
        if std::mem::take(&mut self.judge_next_round) {
            self.judge_probe(&stats, congested);
        } else if !congested {
            self.update_loss_baseline(&stats);
        }
        match self.state {
            State::Startup => self.check_full_pipe(&stats),
            State::ProbeBw(phase) => self.next_phase(phase),
            State::Drain | State::ProbeRtt => {}
        }
        if let Some(hold) = &mut self.probe_rtt {
            hold.rounds += 1;
        }
    }

    /// Judges the round that just ended: a loss rate well above random loss together with
    /// queueing delay, or a standing queue too large to be anything but our own overshoot.
    fn congested(&mut self, stats: &RoundStats, lossy: bool) -> bool {
        let Some(pipe_rtt) = self.pipe_rtt() else {
            return false;
        };
        let delayed = !stats.app_limited
            && !self.foreign_queue()
            && stats
                .rtt_min
                .is_some_and(|rtt| rtt.as_secs_f64() >= pipe_rtt.as_secs_f64() * HIGH_DELAY_FACTOR);
        self.high_delay_rounds = if delayed {
            self.high_delay_rounds + 1
        } else {
            0
        };
        lossy || self.high_delay_rounds >= HIGH_DELAY_ROUNDS
    }

    /// A loss rate well above random loss, with the RTT raised as a full queue raises it.
    fn lossy(&self, stats: &RoundStats) -> bool {
        let (Some(min_rtt), Some(pipe_rtt)) = (self.min_rtt, self.pipe_rtt()) else {
            return false;
        };
        let total = stats.lost + stats.delivered;
        if total < LOSS_RATE_MIN_PACKETS * self.mtu || stats.lost < MIN_LOSS_PACKETS * self.mtu {
            return false;
        }
        let rate = stats.lost as f64 / total as f64;
        let evidence = pipe_rtt.mul_f64(QUEUE_EVIDENCE_FRACTION);
        let threshold = if self.foreign_queue() {
            LOSS_THRESH + FOREIGN_LOSS_BASELINE_FACTOR * self.loss_baseline
        } else {
            LOSS_THRESH
        };
        rate >= threshold && stats.rtt_max.is_some_and(|rtt| rtt >= min_rtt + evidence)
    }

    /// Lowers the short-term bandwidth bound to what the congested round delivered, by at most
    /// [`BETA`]; after loss, also caps the data in flight at [`BETA`] times the round's peak
    /// (the window is the lever quinn gives us, and a rate sample can stay high while a queue
    /// overflows — e.g. a receiver's socket buffer). A congested start-up ends.
    fn on_congestion(&mut self, stats: &RoundStats, lossy: bool) {
        if let Some(current) = self.bandwidth() {
            self.bw_lo = Some(stats.bw_latest.max(scale(current, BETA)));
        }
        if lossy {
            let peak = stats.peak_in_flight.min(self.cwnd);
            let cap = self.inflight_hi.map_or(peak, |hi| hi.min(peak));
            self.inflight_hi = Some(scale(cap, BETA).max(self.min_window()));
        }
        self.high_delay_rounds = 0;
        if self.state == State::Startup {
            self.enter_drain();
        }
    }

    /// The round that just ended carried the up-probe's packets: resize the next probe, and
    /// let a clean probe raise the short-term bounds by what it tested.
    fn judge_probe(&mut self, stats: &RoundStats, congested: bool) {
        let packets = (stats.delivered + stats.lost) as f64 / self.mtu as f64;
        let lost = stats.lost as f64 / self.mtu as f64;
        let expected = self.loss_baseline * packets;
        let bar = expected + PROBE_LOSS_SIGMAS * expected.sqrt() + MIN_LOSS_PACKETS as f64;
        if lost > bar || congested {
            self.probe_headroom = (self.probe_headroom / 2.0).max(MIN_PROBE_HEADROOM);
            return;
        }
        let max = self.max_bandwidth().unwrap_or(0);
        let growth = 1.0 + self.probe_headroom;
        self.bw_lo = self
            .bw_lo
            .map(|lo| scale(lo, growth))
            .filter(|lo| *lo < max);
        let cap = self.inflight_cap();
        self.inflight_hi = self
            .inflight_hi
            .map(|hi| scale(hi, growth))
            .filter(|hi| cap.is_some_and(|cap| *hi < cap));
        self.probe_headroom = (self.probe_headroom + PROBE_HEADROOM_STEP).min(UP_GAIN - 1.0);
    }

    fn update_loss_baseline(&mut self, stats: &RoundStats) {
        let total = stats.delivered + stats.lost;
        if total == 0 {
            return;
        }
        let rate = stats.lost as f64 / total as f64;
        self.loss_baseline += (rate - self.loss_baseline) * LOSS_BASELINE_WEIGHT;
    }

    /// Start-up ends when the bandwidth estimate stopped growing although the window was
    /// used: a round held back by the application or by quinn's pacer (which follows the
    /// smoothed RTT, possibly still inflated by early delayed ACKs) says nothing about the pipe.
    fn check_full_pipe(&mut self, stats: &RoundStats) {
        if stats.app_limited || !stats.window_limited {
            return;
        }
        let bw = self.max_bandwidth().unwrap_or(0);
        if bw as f64 >= self.full_bw as f64 * STARTUP_GROWTH {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= STARTUP_FULL_ROUNDS {
            self.enter_drain();
        }
    }

    fn next_phase(&mut self, phase: Phase) {
        self.phase_rounds += 1;
        match phase {
            Phase::Up => {
                // The next round acknowledges what the probe sent.
                self.judge_next_round = true;
                self.enter_phase(Phase::Down);
            }
            // A down phase that has not drained its queue after a round gives up anyway: a
            // competitor's queue is not ours to drain.
            Phase::Down => self.enter_phase(Phase::Cruise),
            Phase::Cruise if self.phase_rounds >= self.cruise_rounds => self.start_cycle(),
            Phase::Cruise => {}
        }
    }

    /// A new ProbeBw cycle: the RTT floor of the cycle that ended becomes the RTT the window is
    /// computed from. A short-term bound stays: the up-probe tests above it, and only a clean
    /// probe raises it (jumping back to a stale maximum would overflow the queue again).
    fn start_cycle(&mut self) {
        if let Some(floor) = self.cycle_floor.take() {
            self.rtt_floor = Some(floor);
        }
        self.cruise_rounds = self.random_cruise_rounds();
        self.enter_phase(Phase::Up);
    }

    fn enter_phase(&mut self, phase: Phase) {
        self.state = State::ProbeBw(phase);
        self.phase_rounds = 0;
    }

    fn enter_drain(&mut self) {
        self.filled_pipe = true;
        self.state = State::Drain;
    }

    fn enter_probe_bw(&mut self) {
        self.rtt_floor = self.min_rtt;
        self.cycle_floor = None;
        self.cruise_rounds = self.random_cruise_rounds();
        self.enter_phase(Phase::Cruise);
    }

    fn enter_probe_rtt(&mut self) {
        self.state = State::ProbeRtt;
        self.probe_rtt = None;
    }

    /// Transitions that depend on in-flight data or time rather than on round ends.
    fn advance(&mut self, now: Duration) {
        let Some(bdp) = self.bdp() else {
            return;
        };
        match self.state {
            State::Drain if self.in_flight <= bdp.saturating_add(self.headroom()) => {
                self.enter_probe_bw()
            }
            State::ProbeBw(Phase::Down) if self.in_flight <= bdp => self.enter_phase(Phase::Cruise),
            State::ProbeRtt => self.advance_probe_rtt(now, bdp),
            _ => {}
        }
    }

    fn advance_probe_rtt(&mut self, now: Duration, bdp: u64) {
        match self.probe_rtt {
            None if self.in_flight <= self.probe_rtt_window(bdp) => {
                self.probe_rtt = Some(ProbeRttHold {
                    until: now + PROBE_RTT_DURATION,
                    rounds: 0,
                });
            }
            Some(hold) if hold.rounds >= 1 && now >= hold.until => {
                self.probe_rtt = None;
                self.min_rtt_stamp = now;
                if self.filled_pipe {
                    self.enter_probe_bw();
                } else {
                    self.state = State::Startup;
                }
            }
            _ => {}
        }
    }

    fn update_window(&mut self, acked: u64, app_limited: bool) {
        let target = self.target_window();
        // Grow by at most what was just acknowledged (an ACK-clocked increase, never a burst of
        // more than the ACKs released) and not while the application leaves the window unused
        // (an idle connection must not collect a window it never tested); shrink at once.
        self.cwnd = if target <= self.cwnd {
            target
        } else if app_limited {
            self.cwnd
        } else {
            self.cwnd.saturating_add(acked).min(target)
        };
        self.cwnd = self.cwnd.max(self.min_window());
    }

    fn target_window(&self) -> u64 {
        let (Some(bw), Some(min_rtt)) = (self.bandwidth(), self.pipe_rtt()) else {
            // No estimate yet: plain slow start from the initial window.
            return u64::MAX;
        };
        let bdp = bytes_over(bw, min_rtt);
        match self.state {
            // The cap only binds once the window is what limits sending; before that, growth
            // of the window is what lets quinn's pacer speed up.
            State::Startup if self.stats.window_limited || self.prev_window_limited => {
                scale(bdp, STARTUP_GAIN)
                    .saturating_add(self.extra_acked())
                    .max(2 * self.initial_window)
            }
            State::Startup => u64::MAX,
            State::Drain => self.bounded(bdp).saturating_add(self.headroom()),
            State::ProbeRtt => self.probe_rtt_window(bdp),
            State::ProbeBw(phase) => {
                let rtt = self.effective_rtt(min_rtt);
                // A foreign queue keeps the bottleneck busy through lumpy ACKs and pacer
                // bursts, so the allowances for them are left out: added on top of a window
                // that already pays for the RTT seen, they would raise the queue by a little
                // every round.
                let foreign = self.foreign_queue();
                let extra = if foreign { 0 } else { self.extra_acked() };
                let wanted =
                    scale(bytes_over(bw, rtt), self.phase_gain(phase)).saturating_add(extra);
                let cap = self.inflight_cap().unwrap_or(wanted);
                let headroom = if foreign { 0 } else { self.headroom() };
                self.bounded(wanted.min(cap)).saturating_add(headroom)
            }
        }
    }

    /// [`INFLIGHT_CAP_GAIN`] × max-filtered bandwidth × pipe RTT.
    fn inflight_cap(&self) -> Option<u64> {
        let bdp = bytes_over(self.max_bandwidth()?, self.pipe_rtt()?);
        Some(scale(bdp, INFLIGHT_CAP_GAIN))
    }

    /// `window` limited by the in-flight cap learnt from loss.
    fn bounded(&self, window: u64) -> u64 {
        self.inflight_hi.map_or(window, |hi| window.min(hi))
    }

    /// The RTT the window pays for, between the pipe RTT and [`MAX_RTT_INFLATION`] times it:
    /// the floor of the last ProbeBw cycle; with a foreign queue, the smallest RTT of the
    /// latest round if that is higher. A window of bandwidth × an RTT below the one the
    /// packets actually see delivers less than the estimate, round after round, until the
    /// estimate has decayed; paying for the RTT of the latest round keeps the delivery rate at
    /// the estimate, as pacing at the estimate keeps BBR's, so the competitor's queue does not
    /// starve it.
    fn effective_rtt(&self, min_rtt: Duration) -> Duration {
        let floor = self.rtt_floor.unwrap_or(min_rtt);
        let rtt = if self.foreign_queue() {
            floor.max(self.recent_rtt.unwrap_or(floor))
        } else {
            floor
        };
        rtt.clamp(min_rtt, min_rtt.mul_f64(MAX_RTT_INFLATION))
    }

    /// Whether the last cycle's RTT floor, measured with our own queue drained, still shows a
    /// queue: then it belongs to someone else.
    fn foreign_queue(&self) -> bool {
        match (self.rtt_floor, self.pipe_rtt()) {
            (Some(floor), Some(pipe)) => floor >= pipe.mul_f64(1.0 + FOREIGN_QUEUE_FRACTION),
            _ => false,
        }
    }

    fn phase_gain(&self, phase: Phase) -> f64 {
        match phase {
            Phase::Up => 1.0 + self.probe_headroom,
            Phase::Down => DOWN_GAIN,
            Phase::Cruise => CRUISE_GAIN,
        }
    }

    fn probe_rtt_window(&self, bdp: u64) -> u64 {
        scale(bdp, PROBE_RTT_GAIN).max(self.min_window())
    }

    fn headroom(&self) -> u64 {
        HEADROOM_PACKETS * self.mtu
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_PACKETS * self.mtu
    }

    fn random_cruise_rounds(&mut self) -> u32 {
        // xorshift64: deterministic for a given seed, good enough to de-synchronise flows.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = u64::from(CRUISE_ROUNDS_MAX - CRUISE_ROUNDS_MIN + 1);
        CRUISE_ROUNDS_MIN + (self.rng % span) as u32
    }
}

/// Bytes carried at `bytes_per_sec` during `time`.
pub fn bytes_over(bytes_per_sec: u64, time: Duration) -> u64 {
    (u128::from(bytes_per_sec) * time.as_nanos() / 1_000_000_000).min(u128::from(u64::MAX)) as u64
}

fn scale(value: u64, gain: f64) -> u64 {
    (value as f64 * gain) as u64
}

/// Measures ACK aggregation: within an epoch in which ACKs arrive faster than the bandwidth
/// estimate explains, the bytes acknowledged beyond bandwidth × elapsed time; max-filtered
/// over [`ACK_AGGREGATION_ROUNDS`]. An epoch ends as soon as ACKs have fallen back to (or
/// below) the expected pace.
#[derive(Clone, Debug, Default)]
struct AckAggregation {
    epoch_start: Duration,
    epoch_acked: u64,
    filter: MaxFilter<ACK_AGGREGATION_ROUNDS>,
}

impl AckAggregation {
    fn on_ack(&mut self, now: Duration, acked: u64, bw: u64, round: u64, cwnd: u64) {
        let mut expected = bytes_over(bw, now.saturating_sub(self.epoch_start));
        if self.epoch_acked <= expected {
            self.epoch_start = now;
            self.epoch_acked = 0;
            expected = 0;
        }
        self.epoch_acked = self.epoch_acked.saturating_add(acked);
        // More than a window of aggregation would be a measurement artefact (an ACK after an
        // idle period), not something the window can usefully cover.
        let extra = self.epoch_acked.saturating_sub(expected).min(cwnd);
        self.filter.update(round, extra);
    }

    fn extra(&self, round: u64) -> u64 {
        self.filter.get(round).unwrap_or(0)
    }
}

/// ProbeRtt's hold: until when, and how many rounds have ended since it began.
#[derive(Clone, Copy, Debug)]
struct ProbeRttHold {
    until: Duration,
    rounds: u32,
}

/// What one round delivered, lost and measured.
#[derive(Clone, Copy, Debug, Default)]
struct RoundStats {
    delivered: u64,
    lost: u64,
    rtt_min: Option<Duration>,
    rtt_max: Option<Duration>,
    bw_latest: u64,
    peak_in_flight: u64,
    app_limited: bool,
    window_limited: bool,
    responded: bool,
}

impl RoundStats {
    fn absorb(&mut self, ack: &AckBatch) {
        self.delivered = self.delivered.saturating_add(ack.acked);
        self.app_limited |= ack.app_limited;
        self.window_limited |= ack.window_limited;
        self.peak_in_flight = self.peak_in_flight.max(ack.peak_in_flight);
        if let Some(rtt) = ack.rtt {
            self.rtt_min = Some(self.rtt_min.map_or(rtt, |r| r.min(rtt)));
            self.rtt_max = Some(self.rtt_max.map_or(rtt, |r| r.max(rtt)));
        }
    }
}

/// Windowed maximum over the last `N` rounds: one slot per round, so a sample leaves the window
/// exactly `N` rounds after it was taken, whatever the sample rate.
#[derive(Clone, Debug)]
struct MaxFilter<const N: usize> {
    slots: [Option<(u64, u64)>; N],
}

impl<const N: usize> Default for MaxFilter<N> {
    fn default() -> Self {
        Self { slots: [None; N] }
    }
}

impl<const N: usize> MaxFilter<N> {
    fn update(&mut self, round: u64, value: u64) {
        let slot = &mut self.slots[(round % N as u64) as usize];
        *slot = match *slot {
            Some((r, v)) if r == round => Some((round, v.max(value))),
            _ => Some((round, value)),
        };
    }

    fn get(&self, round: u64) -> Option<u64> {
        self.slots
            .iter()
            .flatten()
            .filter(|(r, _)| round.saturating_sub(*r) < N as u64)
            .map(|(_, v)| *v)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;

    fn ack(now_ms: u64, acked: u64, rtt_ms: u64, rate: u64, round_start: bool) -> AckBatch {
        AckBatch {
            now: Duration::from_millis(now_ms),
            acked,
            rtt: Some(Duration::from_millis(rtt_ms)),
            sample: Some(RateSample {
                bytes_per_sec: rate,
                app_limited: false,
            }),
            round_start,
            in_flight: 0,
            app_limited: false,
            window_limited: true,
            peak_in_flight: 0,
        }
    }

    #[test]
    fn max_filter_forgets_after_window() {
        let mut filter = MaxFilter::<BW_WINDOW_ROUNDS>::default();
        filter.update(0, 100);
        filter.update(1, 50);
        assert_eq!(filter.get(5), Some(100));
        let n = BW_WINDOW_ROUNDS as u64;
        assert_eq!(filter.get(n), Some(50));
        assert_eq!(filter.get(n + 1), None);
    }

    #[test]
    fn max_filter_keeps_round_maximum() {
        let mut filter = MaxFilter::<BW_WINDOW_ROUNDS>::default();
        filter.update(3, 10);
        filter.update(3, 30);
        filter.update(3, 20);
        assert_eq!(filter.get(3), Some(30));
        let later = 3 + BW_WINDOW_ROUNDS as u64;
        filter.update(later, 5);
        assert_eq!(filter.get(later), Some(5));
    }

    #[test]
    fn min_rtt_follows_lower_samples_and_expires() {
        let mut model = Model::new(12_000, MTU, 1);
        model.on_ack(&ack(0, 1200, 30, 1_000_000, true));
        model.on_ack(&ack(10, 1200, 20, 1_000_000, false));
        model.on_ack(&ack(20, 1200, 25, 1_000_000, false));
        assert_eq!(model.min_rtt(), Some(Duration::from_millis(20)));
        // Past the window, a higher sample replaces it and ProbeRtt begins.
        model.on_ack(&ack(10_100, 1200, 40, 1_000_000, false));
        assert_eq!(model.min_rtt(), Some(Duration::from_millis(40)));
        assert_eq!(model.state(), State::ProbeRtt);
    }

    #[test]
    fn random_loss_alone_is_not_congestion() {
        let mut model = Model::new(12_000, MTU, 1);
        model.on_ack(&ack(0, 1_200, 20, 12_500_000, true));
        let round = |delivered: u64, lost: u64, rtt_max_ms: u64| RoundStats {
            delivered,
            lost,
            rtt_min: Some(Duration::from_millis(20)),
            rtt_max: Some(Duration::from_millis(rtt_max_ms)),
            ..RoundStats::default()
        };
        // 5 % loss, no queueing delay.
        assert!(!model.lossy(&round(114_000, 6_000, 21)));
        // 30 % loss without queueing delay: random, not congestion.
        assert!(!model.lossy(&round(140_000, 60_000, 21)));
        // 30 % loss with the RTT raised by a full queue: congestion.
        assert!(model.lossy(&round(140_000, 60_000, 40)));
        // 3 of 15 packets: too few to judge a rate.
        assert!(!model.lossy(&round(14_400, 3_600, 40)));
    }

    #[test]
    fn lossy_round_caps_the_data_in_flight() {
        let mut model = Model::new(12_000, MTU, 1);
        model.on_ack(&ack(0, 1_200, 20, 12_500_000, true));
        let stats = RoundStats {
            delivered: 140_000,
            lost: 60_000,
            rtt_max: Some(Duration::from_millis(40)),
            peak_in_flight: 10_000_000,
            ..RoundStats::default()
        };
        model.cwnd = 200_000;
        model.on_congestion(&stats, true);
        assert_eq!(model.inflight_hi(), Some(140_000));
        assert_eq!(model.state(), State::Drain);
    }

    #[test]
    fn startup_doubles_the_window_per_round() {
        let mut model = Model::new(12_000, MTU, 1);
        model.on_ack(&ack(20, 12_000, 20, 600_000, true));
        assert_eq!(model.window(), 24_000);
        model.on_ack(&ack(40, 24_000, 20, 1_200_000, true));
        assert_eq!(model.window(), 48_000);
    }

    #[test]
    fn startup_caps_at_twice_bdp_with_smooth_acks() {
        // 1 MB/s and 20 ms: a 20 kB BDP, acknowledged 2 kB every 2 ms.
        // The rate stays flat, so start-up ends after three rounds without growth.
        let mut model = Model::new(12_000, MTU, 1);
        let mut startup_max = 0;
        for step in 1..=100u64 {
            model.on_ack(&ack(2 * step, 2_000, 20, 1_000_000, step % 10 == 1));
            if model.state() == State::Startup {
                startup_max = startup_max.max(model.window());
                assert_eq!(model.extra_acked(), 2_000);
            }
        }
        assert_eq!(startup_max, 2 * 20_000 + 2_000);
        assert!(matches!(model.state(), State::ProbeBw(_)));
    }

    #[test]
    fn ack_aggregation_is_measured() {
        let mut aggregation = AckAggregation::default();
        // 1 MB/s expected: ACKs on pace, then 10 kB at once 2 ms later.
        aggregation.on_ack(Duration::from_millis(10), 1_000, 1_000_000, 0, 100_000);
        aggregation.on_ack(Duration::from_millis(12), 10_000, 1_000_000, 0, 100_000);
        assert_eq!(aggregation.extra(0), 10_000);
        // A further 1 kB 1 ms later: the epoch goes on (11 kB acknowledged, 1 kB expected).
        aggregation.on_ack(Duration::from_millis(13), 1_000, 1_000_000, 0, 100_000);
        assert_eq!(aggregation.extra(0), 10_000);
        // Capped at the window.
        aggregation.on_ack(Duration::from_millis(12), 50_000, 1_000_000, 1, 20_000);
        assert_eq!(aggregation.extra(1), 20_000);
        // Forgotten after the filter window.
        assert_eq!(aggregation.extra(1 + ACK_AGGREGATION_ROUNDS as u64), 0);
    }

    #[test]
    fn cruise_rounds_stay_in_range() {
        let mut model = Model::new(12_000, MTU, 7);
        for _ in 0..1000 {
            let n = model.random_cruise_rounds();
            assert!((CRUISE_ROUNDS_MIN..=CRUISE_ROUNDS_MAX).contains(&n));
        }
    }
}
