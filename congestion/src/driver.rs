//! [`AdaptiveCore`]: the delivery sampler and the model joined behind callbacks shaped like
//! quinn's `Controller`, but with plain time values, so the simulated link and the quinn adapter
//! drive exactly the same code.

use std::time::Duration;

use super::model::{Model, State};
use super::sampler::DeliverySampler;

/// The whole controller without any quinn type. Times are durations since an epoch the caller
/// chooses (the quinn adapter uses the instant the controller was built).
#[derive(Clone, Debug)]
pub struct AdaptiveCore {
    sampler: DeliverySampler,
    model: Model,
}

impl AdaptiveCore {
    /// A controller starting with `initial_window` bytes; `seed` de-synchronises flows.
    pub fn new(initial_window: u64, mtu: u16, seed: u64) -> Self {
        Self {
            sampler: DeliverySampler::default(),
            model: Model::new(initial_window, mtu, seed),
        }
    }

    /// `bytes` (possibly several datagrams) were sent at `now`.
    pub fn on_sent(&mut self, now: Duration, bytes: u64) {
        self.sampler.on_sent(now, bytes, self.model.min_rtt());
    }

    /// One packet sent at `sent` with `bytes` was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Duration, sent: Duration, bytes: u64, app_limited: bool) {
        self.sampler.on_ack(now, sent, bytes, app_limited);
    }

    /// The current batch of ACKs is complete; `in_flight` is what the sender still counts.
    pub fn on_end_acks(&mut self, now: Duration, in_flight: u64, app_limited: bool) {
        let batch = self.sampler.finish_batch(
            now,
            in_flight,
            app_limited,
            self.model.min_rtt(),
            self.model.window(),
            self.model.window_limited_slack(),
        );
        if batch.acked > 0 {
            self.model.on_ack(&batch);
        }
    }

    /// `lost_bytes` were declared lost.
    pub fn on_congestion_event(&mut self, lost_bytes: u64, persistent: bool) {
        self.sampler.on_lost(lost_bytes);
        self.model.on_loss(lost_bytes, persistent);
    }

    /// The path MTU changed.
    pub fn on_mtu_update(&mut self, mtu: u16) {
        self.model.set_mtu(mtu);
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.model.window()
    }

    /// The model, for metrics and tests.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The state machine's state.
    pub fn state(&self) -> State {
        self.model.state()
    }
}
