//! Stopping an endpoint, the same way for both (SPEC §9): on SIGINT or SIGTERM it stops
//! taking new tunnels, lets open ones finish for up to the drain time-out, then closes what
//! is left.
//!
//! [`Shutdown`] owns the signal and the drain; each endpoint says, through [`Drain`], how it
//! stops accepting and how it closes.

use std::future::Future;
use std::time::Duration;

use tracing::info;

use crate::tunnel::TunnelRegistry;

/// How one endpoint is drained.
pub trait Drain {
    /// Stops taking new tunnels; open ones go on.
    fn stop_accepting(&self);
    /// The tunnels to wait for.
    fn tunnels(&self) -> &TunnelRegistry;
    /// Closes the endpoint's QUIC connections once the tunnels are done or cut off.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// Runs an endpoint until a signal, then drains it.
#[derive(Debug, Clone, Copy)]
pub struct Shutdown {
    drain: Duration,
}

impl Shutdown {
    /// Open tunnels get up to `drain` to finish.
    pub fn new(drain: Duration) -> Shutdown {
        Shutdown { drain }
    }

    /// Runs `serving` until SIGINT or SIGTERM (or until it ends by itself), drops it, and
    /// drains `endpoint`. Returns how many tunnels were cut off.
    pub async fn run(self, serving: impl Future<Output = ()>, endpoint: impl Drain) -> usize {
        tokio::select! {
            () = serving => {}
            () = signal() => info!("shutting down"),
        }
        self.drain(&endpoint).await
    }

    /// Stops `endpoint` taking tunnels, waits for the open ones up to the drain time-out,
    /// then closes it. Returns how many tunnels were cut off.
    pub async fn drain(self, endpoint: &impl Drain) -> usize {
        endpoint.stop_accepting();
        let tunnels = endpoint.tunnels();
        let open = tunnels.open_count();
        if open > 0 {
            info!(
                tunnels = open,
                "waiting up to {:?} for open tunnels to finish", self.drain
            );
        }
        let cut = tunnels.wait_empty(self.drain).await;
        endpoint.close().await;
        info!(tunnels_cut = cut, "stopped");
        cut
    }
}

/// Resolves when SIGINT or SIGTERM arrives (never, if the handlers cannot be installed).
async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
