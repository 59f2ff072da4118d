//! Per-tunnel send rates for the REST API, sampled from the tunnels' byte counters.
//!
//! A background task reads every live tunnel's totals once an interval and keeps, per tunnel,
//! the totals it saw and the bytes per second since the sample before. The data path is not
//! involved, and the state is one entry per live tunnel: entries of ended tunnels are dropped
//! at the next sample.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::lock::lock;
use crate::tunnel::{Tunnel, TunnelRegistry};

/// One tunnel's send rates, in bytes per second, by who sent the bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    pub client_to_server: f64,
    pub server_to_client: f64,
}

/// The send rates of one endpoint's live tunnels.
#[derive(Debug, Default)]
pub struct Rates {
    by_tunnel: Mutex<HashMap<Uuid, Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The tunnel's totals when sampled: (client_to_server, server_to_client).
    seen: (u64, u64),
    rate: Rate,
}

impl Rates {
    /// Samples `tunnels` every `interval` in a background task, which ends once the returned
    /// `Rates` is dropped.
    pub fn start(tunnels: Arc<TunnelRegistry>, interval: Duration) -> Arc<Rates> {
        let rates = Arc::new(Rates::default());
        let weak = Arc::downgrade(&rates);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last = ticks.tick().await;
            loop {
                let now = ticks.tick().await;
                let Some(rates) = weak.upgrade() else { return };
                rates.sample(&tunnels.list(), now - last);
                last = now;
            }
        });
        rates
    }

    /// The rates of a tunnel over the last interval; zero before its first sample.
    pub fn of(&self, uuid: &Uuid) -> Rate {
        lock(&self.by_tunnel)
            .get(uuid)
            .map(|s| s.rate)
            .unwrap_or_default()
    }

    /// Records the totals of the live `tunnels`, `elapsed` after the previous sample, and
    /// forgets the tunnels no longer live. A tunnel first seen started from zero within the
    /// interval, so its first rate counts all its bytes.
    pub fn sample(&self, tunnels: &[Arc<Tunnel>], elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let mut by_tunnel = lock(&self.by_tunnel);
        let next = tunnels
            .iter()
            .map(|tunnel| {
                let now = (tunnel.client_to_server(), tunnel.server_to_client());
                let before = by_tunnel.get(&tunnel.uuid).map_or((0, 0), |s| s.seen);
                let per_second =
                    |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
                let rate = Rate {
                    client_to_server: per_second(now.0, before.0),
                    server_to_client: per_second(now.1, before.1),
                };
                (tunnel.uuid, Sample { seen: now, rate })
            })
            .collect();
        *by_tunnel = next;
    }

    /// How many tunnels have an entry.
    pub fn len(&self) -> usize {
        lock(&self.by_tunnel).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::tunnel::Side;
    use crate::tunnel::TunnelSpec;

    fn tunnel() -> Arc<Tunnel> {
        Arc::new(Tunnel::new(TunnelSpec {
            stream_id: 0,
            side: Side::Client,
            client_app: Some("127.0.0.1:40000".into()),
            server_app: None,
            remote_endpoint: "127.0.0.1:7500".parse().unwrap(),
            connection: 0,
            service: Some("default".into()),
            transport: crate::tunnel::Transport::Tcp,
        }))
    }

    fn send(tunnel: &Tunnel, up: u64, down: u64) {
        let counters = &tunnel.counters;
        counters.client_to_server.fetch_add(up, Ordering::Relaxed);
        counters.server_to_client.fetch_add(down, Ordering::Relaxed);
    }

    #[test]
    fn a_rate_is_the_bytes_since_the_last_sample_per_second() {
        let rates = Rates::default();
        let t = tunnel();
        assert_eq!(rates.of(&t.uuid), Rate::default());
        send(&t, 2048, 512);
        rates.sample(std::slice::from_ref(&t), Duration::from_millis(500));
        assert_eq!(
            rates.of(&t.uuid),
            Rate {
                client_to_server: 4096.0,
                server_to_client: 1024.0
            }
        );
        send(&t, 1000, 0);
        rates.sample(std::slice::from_ref(&t), Duration::from_secs(2));
        assert_eq!(
            rates.of(&t.uuid),
            Rate {
                client_to_server: 500.0,
                server_to_client: 0.0
            }
        );
        // Idle: both fall to zero.
        rates.sample(std::slice::from_ref(&t), Duration::from_secs(1));
        assert_eq!(rates.of(&t.uuid), Rate::default());
    }

    #[test]
    fn ended_tunnels_are_forgotten() {
        let rates = Rates::default();
        let (a, b) = (tunnel(), tunnel());
        send(&a, 10, 10);
        rates.sample(&[a.clone(), b.clone()], Duration::from_secs(1));
        assert_eq!(rates.len(), 2);
        rates.sample(std::slice::from_ref(&b), Duration::from_secs(1));
        assert_eq!(rates.len(), 1);
        assert_eq!(rates.of(&a.uuid), Rate::default());
        rates.sample(&[], Duration::from_secs(1));
        assert!(rates.is_empty());
    }

    #[test]
    fn an_empty_interval_changes_nothing() {
        let rates = Rates::default();
        let t = tunnel();
        send(&t, 100, 0);
        rates.sample(std::slice::from_ref(&t), Duration::ZERO);
        assert!(rates.is_empty());
    }
}
