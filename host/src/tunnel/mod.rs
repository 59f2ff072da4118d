//! The live tunnels of one endpoint: what the REST API lists and what an operator can close.
//!
//! A tunnel is registered when its stream is open and removed when its relay ends (the
//! registration is a guard, so no path forgets it). Byte counts are atomics updated by the
//! relay; the protocol is set by the discriminators as soon as one affirms.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::lock::lock;
use crate::wire::Status;
use crate::wire::addr::Address;

pub mod app;
pub mod flow_queue;
pub mod relay;
pub mod sniff;
pub mod udp;

/// Bytes moved through one tunnel, by who sent them.
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// Bytes sent by the client application.
    pub client_to_server: AtomicU64,
    /// Bytes sent by the server application.
    pub server_to_client: AtomicU64,
    /// Datagrams sent by the client application (UDP flows).
    pub client_datagrams: AtomicU64,
    /// Datagrams sent by the server application (UDP flows).
    pub server_datagrams: AtomicU64,
    /// Datagrams of this flow dropped: a full queue, a send that failed.
    pub dropped_datagrams: AtomicU64,
}

impl ByteCounters {
    /// The counts now.
    pub fn snapshot(&self) -> Traffic {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Traffic {
            client_to_server: load(&self.client_to_server),
            server_to_client: load(&self.server_to_client),
            client_datagrams: load(&self.client_datagrams),
            server_datagrams: load(&self.server_datagrams),
            dropped_datagrams: load(&self.dropped_datagrams),
        }
    }
}

/// What [`ByteCounters`] counted, at one moment or summed over tunnels.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub client_datagrams: u64,
    pub server_datagrams: u64,
    pub dropped_datagrams: u64,
}

impl std::ops::AddAssign for Traffic {
    fn add_assign(&mut self, other: Traffic) {
        self.client_to_server += other.client_to_server;
        self.server_to_client += other.server_to_client;
        self.client_datagrams += other.client_datagrams;
        self.server_datagrams += other.server_datagrams;
        self.dropped_datagrams += other.dropped_datagrams;
    }
}

/// What the application side of a tunnel is: how the client application connected, or what
/// the server dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Unix,
}

impl Transport {
    /// The transport of an application address.
    pub fn of(address: &Address) -> Transport {
        match address {
            Address::Tcp(_) => Transport::Tcp,
            Address::Udp(_) => Transport::Udp,
            Address::Unix(_) => Transport::Unix,
        }
    }

    /// The name the REST API shows.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Unix => "unix",
        }
    }
}

/// Which endpoint runs the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// One application connection carried by one QUIC stream.
#[derive(Debug)]
pub struct Tunnel {
    pub uuid: Uuid,
    pub stream_id: u64,
    pub side: Side,
    /// The client application's address (client side only).
    pub client_app: Option<String>,
    /// The server application's address (server side only).
    pub server_app: Option<String>,
    /// The peer's address when the tunnel opened (its connection may have moved since).
    pub remote_endpoint: SocketAddr,
    /// quinn's stable id of the QUIC connection the tunnel rides.
    pub connection: usize,
    /// The client's service this tunnel came in on (client side only).
    pub service: Option<Arc<str>>,
    pub transport: Transport,
    pub created_at: SystemTime,
    pub counters: ByteCounters,
    protocol: Mutex<Option<AppProtocol>>,
    closed_by_operator: Notify,
}

/// What a discriminator found.
#[derive(Debug, Clone, PartialEq)]
pub struct AppProtocol {
    pub name: String,
    /// The discriminator's properties, a JSON object, once it has any.
    pub properties: Option<serde_json::Value>,
}

/// Which endpoint and peer a new tunnel belongs to.
#[derive(Debug, Clone)]
pub struct TunnelSpec {
    pub stream_id: u64,
    pub side: Side,
    pub client_app: Option<String>,
    pub server_app: Option<String>,
    pub remote_endpoint: SocketAddr,
    /// quinn's stable id of the QUIC connection.
    pub connection: usize,
    /// The client's service (client side only).
    pub service: Option<Arc<str>>,
    pub transport: Transport,
}

impl Tunnel {
    pub fn new(spec: TunnelSpec) -> Tunnel {
        Tunnel {
            uuid: Uuid::new_v4(),
            stream_id: spec.stream_id,
            side: spec.side,
            client_app: spec.client_app,
            server_app: spec.server_app,
            remote_endpoint: spec.remote_endpoint,
            connection: spec.connection,
            service: spec.service,
            transport: spec.transport,
            created_at: SystemTime::now(),
            counters: ByteCounters::default(),
            protocol: Mutex::new(None),
            closed_by_operator: Notify::new(),
        }
    }

    pub fn protocol(&self) -> Option<AppProtocol> {
        lock(&self.protocol).clone()
    }

    /// Records an affirmation by `name`. The first protocol affirmed wins; later updates of
    /// the same protocol replace its properties.
    pub fn affirm(&self, name: &str, properties: Option<serde_json::Value>) {
        let mut protocol = lock(&self.protocol);
        match protocol.as_mut() {
            None => {
                *protocol = Some(AppProtocol {
                    name: name.to_owned(),
                    properties,
                });
            }
            Some(known) if known.name == name && properties.is_some() => {
                known.properties = properties;
            }
            Some(_) => {}
        }
    }

    /// Asks the relay to close this tunnel.
    pub fn close(&self) {
        self.closed_by_operator.notify_one();
    }

    /// Resolves when [`close`](Self::close) was called.
    pub async fn closed(&self) {
        self.closed_by_operator.notified().await;
    }

    pub fn client_to_server(&self) -> u64 {
        self.counters.client_to_server.load(Ordering::Relaxed)
    }

    pub fn server_to_client(&self) -> u64 {
        self.counters.server_to_client.load(Ordering::Relaxed)
    }
}

/// The registry of one endpoint's live tunnels.
#[derive(Debug, Default)]
pub struct TunnelRegistry {
    tunnels: Mutex<HashMap<Uuid, Arc<Tunnel>>>,
    opened: AtomicU64,
    /// The traffic of the tunnels that have ended, so the totals do not drop when one does.
    ended: Mutex<Traffic>,
    /// Tunnels the server refused, by status: 2 to 5 at 0 to 3.
    refused: [AtomicU64; 4],
    /// The client's services, each with the totals of its tunnels (empty on the server).
    services: Mutex<BTreeMap<Arc<str>, ServiceTotals>>,
}

/// The totals of one service's tunnels since start; only the client has services.
#[derive(Debug, Default, Clone)]
struct ServiceTotals {
    opened: u64,
    /// The traffic of its tunnels that have ended.
    ended: Traffic,
    refused: [u64; 4],
}

/// One service's tunnels, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStats {
    pub name: Arc<str>,
    pub open: usize,
    pub opened: u64,
    /// The traffic of its tunnels, ended ones included.
    pub traffic: Traffic,
    /// Tunnels the server refused, by status.
    pub refused: Vec<(Status, u64)>,
}

/// The statuses a refusal has, in the order of [`TunnelRegistry::refused_total`].
const REFUSALS: [Status; 4] = [
    Status::BadToken,
    Status::Unreachable,
    Status::NotAllowed,
    Status::PluginError,
];

impl TunnelRegistry {
    /// Adds a tunnel; it stays listed until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, tunnel: Tunnel) -> Registered {
        let tunnel = Arc::new(tunnel);
        lock(&self.tunnels).insert(tunnel.uuid, tunnel.clone());
        self.opened.fetch_add(1, Ordering::Relaxed);
        if let Some(service) = &tunnel.service {
            self.with_service(service, |totals| totals.opened += 1);
        }
        Registered {
            registry: self.clone(),
            tunnel,
        }
    }

    /// The live tunnels, oldest first.
    pub fn list(&self) -> Vec<Arc<Tunnel>> {
        let mut all: Vec<_> = lock(&self.tunnels).values().cloned().collect();
        all.sort_by_key(|t| (t.created_at, t.stream_id));
        all
    }

    pub fn get(&self, uuid: &Uuid) -> Option<Arc<Tunnel>> {
        lock(&self.tunnels).get(uuid).cloned()
    }

    pub fn open_count(&self) -> usize {
        lock(&self.tunnels).len()
    }

    /// Waits until no tunnel is open, or `limit` has passed; returns how many are still open.
    pub async fn wait_empty(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let open = self.open_count();
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            // Only at shutdown: polling keeps the data path free of any notification.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Counts a tunnel the server refused (the server when it answers, the client when it
    /// reads the answer, then with the tunnel's service).
    pub fn count_refused(&self, status: Status, service: Option<&Arc<str>>) {
        let Some(at) = REFUSALS.iter().position(|s| *s == status) else {
            return;
        };
        self.refused[at].fetch_add(1, Ordering::Relaxed);
        if let Some(service) = service {
            self.with_service(service, |totals| totals.refused[at] += 1);
        }
    }

    /// Counts datagrams dropped where no live tunnel counts them: a new source beyond the
    /// flow limit or held after a refusal, a flow's queue before its relay began.
    pub fn count_dropped_datagrams(&self, service: Option<&Arc<str>>, dropped: u64) {
        if dropped == 0 {
            return;
        }
        lock(&self.ended).dropped_datagrams += dropped;
        if let Some(service) = service {
            self.with_service(service, |totals| totals.ended.dropped_datagrams += dropped);
        }
    }

    /// Names a service, so its metrics are shown before its first tunnel.
    pub fn add_service(&self, name: &Arc<str>) {
        self.with_service(name, |_| {});
    }

    /// Each service's tunnels, by name.
    pub fn service_stats(&self) -> Vec<ServiceStats> {
        // The tunnels' lock first, as `end` takes them, so an ending tunnel is counted once.
        let live = lock(&self.tunnels);
        let services = lock(&self.services);
        let mut stats: Vec<ServiceStats> = services
            .iter()
            .map(|(name, totals)| ServiceStats {
                name: name.clone(),
                open: 0,
                opened: totals.opened,
                traffic: totals.ended,
                refused: REFUSALS.iter().copied().zip(totals.refused).collect(),
            })
            .collect();
        for tunnel in live.values() {
            let Some(service) = &tunnel.service else {
                continue;
            };
            if let Some(s) = stats.iter_mut().find(|s| &s.name == service) {
                s.open += 1;
                s.traffic += tunnel.counters.snapshot();
            }
        }
        stats
    }

    fn with_service(&self, name: &Arc<str>, change: impl FnOnce(&mut ServiceTotals)) {
        change(lock(&self.services).entry(name.clone()).or_default());
    }

    /// Tunnels refused since start, by status.
    pub fn refused_total(&self) -> Vec<(Status, u64)> {
        REFUSALS
            .iter()
            .zip(&self.refused)
            .map(|(status, count)| (*status, count.load(Ordering::Relaxed)))
            .collect()
    }

    /// Tunnels opened since start.
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Bytes moved since start by all tunnels, ended ones included: (sent by client
    /// applications, sent by server applications).
    pub fn bytes_total(&self) -> (u64, u64) {
        let total = self.traffic_total();
        (total.client_to_server, total.server_to_client)
    }

    /// The traffic of all tunnels since start, ended ones included.
    pub fn traffic_total(&self) -> Traffic {
        // Under the lock, so a tunnel ending meanwhile is counted once: live or ended.
        let live = lock(&self.tunnels);
        let mut total = *lock(&self.ended);
        for tunnel in live.values() {
            total += tunnel.counters.snapshot();
        }
        total
    }

    /// Removes a tunnel whose relay has ended and keeps its byte counts in the totals.
    fn end(&self, tunnel: &Tunnel) {
        let mut live = lock(&self.tunnels);
        live.remove(&tunnel.uuid);
        let traffic = tunnel.counters.snapshot();
        *lock(&self.ended) += traffic;
        if let Some(service) = &tunnel.service {
            self.with_service(service, |totals| totals.ended += traffic);
        }
    }
}

/// A tunnel's place in the registry, given up on drop.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<TunnelRegistry>,
    tunnel: Arc<Tunnel>,
}

impl Registered {
    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tunnel
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.end(&self.tunnel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stream_id: u64) -> TunnelSpec {
        TunnelSpec {
            stream_id,
            side: Side::Server,
            client_app: None,
            server_app: Some("tcp:127.0.0.1:22".into()),
            remote_endpoint: "127.0.0.1:5000".parse().unwrap(),
            connection: 0,
            service: None,
            transport: Transport::Tcp,
        }
    }

    #[test]
    fn registration_lasts_as_long_as_the_guard() {
        let registry = Arc::new(TunnelRegistry::default());
        let first = registry.register(Tunnel::new(spec(0)));
        let second = registry.register(Tunnel::new(spec(4)));
        assert_eq!(registry.open_count(), 2);
        assert!(registry.get(&first.tunnel().uuid).is_some());
        drop(first);
        assert_eq!(registry.list().len(), 1);
        assert_eq!(registry.list()[0].stream_id, 4);
        drop(second);
        assert_eq!(registry.open_count(), 0);
        assert_eq!(registry.opened_total(), 2);
    }

    #[test]
    fn byte_totals_keep_the_tunnels_that_ended() {
        let registry = Arc::new(TunnelRegistry::default());
        let first = registry.register(Tunnel::new(spec(0)));
        let second = registry.register(Tunnel::new(spec(4)));
        let add = |r: &Registered, up: u64, down: u64| {
            let counters = &r.tunnel().counters;
            counters.client_to_server.fetch_add(up, Ordering::Relaxed);
            counters.server_to_client.fetch_add(down, Ordering::Relaxed);
        };
        add(&first, 10, 100);
        add(&second, 1, 2);
        assert_eq!(registry.bytes_total(), (11, 102));
        drop(first);
        assert_eq!(registry.bytes_total(), (11, 102));
        add(&second, 1, 1);
        drop(second);
        assert_eq!(registry.bytes_total(), (12, 103));
    }

    #[test]
    fn the_first_affirmed_protocol_wins() {
        let tunnel = Tunnel::new(spec(0));
        assert_eq!(tunnel.protocol(), None);
        tunnel.affirm("spice", None);
        tunnel.affirm("other", Some(serde_json::json!({"x": 1})));
        tunnel.affirm("spice", Some(serde_json::json!({"version": "2.2"})));
        let protocol = tunnel.protocol().unwrap();
        assert_eq!(protocol.name, "spice");
        assert_eq!(
            protocol.properties,
            Some(serde_json::json!({"version": "2.2"}))
        );
    }

    #[test]
    fn each_service_keeps_its_own_totals() {
        let registry = Arc::new(TunnelRegistry::default());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        registry.add_service(&a);
        registry.add_service(&b);
        let of = |service: &Arc<str>| {
            Tunnel::new(TunnelSpec {
                service: Some(service.clone()),
                side: Side::Client,
                ..spec(0)
            })
        };
        let first = registry.register(of(&a));
        let _second = registry.register(of(&a));
        first
            .tunnel()
            .counters
            .client_to_server
            .fetch_add(7, Ordering::Relaxed);
        drop(first);
        registry.count_refused(Status::NotAllowed, Some(&b));
        let stats = registry.service_stats();
        assert_eq!(stats.len(), 2);
        assert_eq!((stats[0].open, stats[0].opened), (1, 2));
        assert_eq!(stats[0].traffic.client_to_server, 7);
        assert_eq!((stats[1].open, stats[1].opened), (0, 0));
        assert!(stats[1].refused.contains(&(Status::NotAllowed, 1)));
        assert_eq!(registry.refused_total()[2], (Status::NotAllowed, 1));
    }
}
