//! quictun-congestion: "adaptive", quic-tun's own model-based congestion controller for quinn,
//! in the spirit of BBR. The host (package `quictun`) installs it for `--congestion adaptive`,
//! its default.
//!
//! It depends on quinn-proto only (for the `Controller` trait it implements), never on the host,
//! so the controller, its model and its simulated link build and test on their own.
//!
//! The controller estimates the bottleneck bandwidth (max filter of delivery-rate samples over
//! ten round trips) and the path's minimum RTT (min filter over ten seconds, refreshed by a brief
//! ProbeRtt), and keeps the congestion window near their product — quinn paces from the window,
//! so the window is what keeps the bottleneck queue short. Isolated random loss is ignored;
//! a round with heavy loss *and* queueing delay, or a persistently large queue, lowers a
//! short-term bandwidth bound. docs/CONGESTION.md explains the design.
//!
//! Layout: [`model`] (state machine and filters, plain types), `sampler` (delivery-rate
//! samples from quinn's callbacks), `driver` ([`AdaptiveCore`], the two joined behind
//! quinn-shaped callbacks with plain time values), this file (the quinn adapter), and `sim`
//! (a deterministic simulated link, test-only).
//!
//! Use: `transport_config.congestion_controller_factory(Arc::new(AdaptiveConfig::default()))`.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};

mod driver;
pub mod model;
mod sampler;
#[cfg(test)]
mod sim;

pub use driver::AdaptiveCore;
pub use model::{Phase, State};

/// Datagram size quinn assumes before MTU discovery (RFC 9000's minimum).
const BASE_DATAGRAM_SIZE: u64 = 1200;

/// Builds [`AdaptiveController`]s; set it with `TransportConfig::congestion_controller_factory`.
#[derive(Clone, Debug)]
pub struct AdaptiveConfig {
    initial_window: u64,
}

impl AdaptiveConfig {
    /// Bytes allowed in flight before the first ACK (default: RFC 9002's
    /// `min(10 × 1200, max(2 × 1200, 14720))` = 12 000).
    pub fn initial_window(&mut self, bytes: u64) -> &mut Self {
        self.initial_window = bytes;
        self
    }
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            initial_window: 14_720u64.clamp(2 * BASE_DATAGRAM_SIZE, 10 * BASE_DATAGRAM_SIZE),
        }
    }
}

impl ControllerFactory for AdaptiveConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(AdaptiveController::new(&self, now, current_mtu))
    }
}

/// The quinn-facing controller: converts instants to durations since its creation and feeds
/// [`AdaptiveCore`]. quinn's `RttEstimator` is not used: RTT samples come from each ACK's
/// send time, which is what the model's filters need (quinn's smoothed RTT lags).
#[derive(Clone, Debug)]
pub struct AdaptiveController {
    epoch: Instant,
    core: AdaptiveCore,
}

impl AdaptiveController {
    /// A controller for a new path.
    pub fn new(config: &AdaptiveConfig, now: Instant, current_mtu: u16) -> Self {
        Self {
            epoch: now,
            core: AdaptiveCore::new(config.initial_window, current_mtu, random_seed()),
        }
    }

    /// The controller's model state (bandwidth and RTT estimates, state machine).
    pub fn core(&self) -> &AdaptiveCore {
        &self.core
    }

    fn since(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.epoch)
    }
}

impl Controller for AdaptiveController {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        self.core.on_sent(self.since(now), bytes);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        self.core
            .on_ack(self.since(now), self.since(sent), bytes, app_limited);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.core
            .on_end_acks(self.since(now), in_flight, app_limited);
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.core
            .on_congestion_event(lost_bytes, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.core.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.core.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window();
        metrics.pacing_rate = self
            .core
            .model()
            .pacing_rate()
            .map(|bytes_per_sec| bytes_per_sec.saturating_mul(8));
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.core.model().initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A per-connection seed for the cruise-length randomisation (std's hasher keys are random).
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_builds_a_controller_with_the_initial_window() {
        let config = Arc::new(AdaptiveConfig::default());
        let controller = config.build(Instant::now(), 1200);
        assert_eq!(controller.window(), 12_000);
        assert_eq!(controller.initial_window(), 12_000);
        let mut custom = AdaptiveConfig::default();
        custom.initial_window(30_000);
        let controller = Arc::new(custom).build(Instant::now(), 1200);
        assert_eq!(controller.window(), 30_000);
    }

    #[test]
    fn persistent_congestion_restarts_from_the_minimum_window() {
        let now = Instant::now();
        let mut controller = Arc::new(AdaptiveConfig::default()).build(now, 1200);
        controller.on_sent(now, 12_000, 9);
        controller.on_end_acks(now, 12_000, false, None);
        controller.on_congestion_event(now, now, true, 12_000);
        assert_eq!(controller.window(), model::MIN_WINDOW_PACKETS * 1200);
        assert_eq!(controller.metrics().congestion_window, controller.window());
        // A larger MTU raises the floor with it.
        controller.on_mtu_update(1452);
        assert_eq!(controller.window(), model::MIN_WINDOW_PACKETS * 1452);
    }

    #[test]
    fn isolated_loss_leaves_the_window_alone() {
        let now = Instant::now();
        let mut controller = Arc::new(AdaptiveConfig::default()).build(now, 1200);
        controller.on_sent(now, 12_000, 9);
        controller.on_congestion_event(now, now, false, 1200);
        assert_eq!(controller.window(), 12_000);
    }

    #[test]
    fn controller_can_be_cloned_and_downcast() {
        let controller = Arc::new(AdaptiveConfig::default()).build(Instant::now(), 1200);
        let copy = controller.clone_box();
        assert!(copy.into_any().downcast::<AdaptiveController>().is_ok());
    }
}
