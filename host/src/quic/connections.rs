//! The live QUIC connections of one endpoint, and its handshake failures, for the REST API
//! and the metrics.
//!
//! A connection is listed from the end of its handshake until it closes. Its RTT, congestion
//! window and losses are read from quinn when asked, never copied on the data path.
//!
//! Its path is watched too: a peer whose address changes (a NAT rebinding, a client that moved
//! to another network or socket) keeps its connection (QUIC connection migration), and quinn
//! follows it. quinn says so through no event, so the registry compares each connection's
//! remote address with the last one seen, every [`PATH_SAMPLE`] and whenever the connections
//! are listed, and logs each change once, `path changed from A to B`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use quinn::{Connection, ConnectionError};
use tracing::info;

use crate::lock::lock;

/// How often the connections' remote addresses are compared with the last ones seen.
pub const PATH_SAMPLE: Duration = Duration::from_secs(1);

/// One endpoint's connections.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    live: Mutex<HashMap<usize, Entry>>,
    /// The last id given out: ids are ours, counted from 1, never a memory address.
    last_id: AtomicUsize,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Whether the task that watches paths runs.
    sampling: AtomicBool,
}

#[derive(Debug)]
struct Entry {
    connection: Connection,
    created_at: SystemTime,
    receive_window: Option<u64>,
    path: Path,
}

/// Where a connection's packets go, and how often that changed.
#[derive(Debug, Clone, Copy)]
struct Path {
    remote: SocketAddr,
    changes: u64,
    last_change: Option<SystemTime>,
}

impl Path {
    fn new(remote: SocketAddr) -> Path {
        Path {
            remote,
            changes: 0,
            last_change: None,
        }
    }

    fn changed(&mut self) {
        self.changes += 1;
        self.last_change = Some(SystemTime::now());
    }
}

/// A snapshot of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub id: usize,
    /// quinn's id of the connection, which tunnels name ([`crate::tunnel::Tunnel::connection`]).
    pub stable_id: usize,
    /// Where its packets go now.
    pub remote: SocketAddr,
    /// How often its path changed: the peer's address (a NAT rebinding, a migration), or on
    /// the client, its own socket ([`ConnectionRegistry::moved_locally`]).
    pub path_changes: u64,
    pub last_path_change: Option<SystemTime>,
    pub created_at: SystemTime,
    pub rtt: Duration,
    /// The largest UDP payload the connection sends now: its path MTU less the IP and UDP
    /// headers, as path MTU discovery found it ([`crate::quic::path`]).
    pub max_udp_payload: u16,
    pub congestion_window: u64,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
    /// The receive window this endpoint gave the connection (a server's share of
    /// `--max-buffered`), when it set one.
    pub receive_window: Option<u64>,
}

impl ConnectionRegistry {
    /// Lists `connection` until the returned guard is dropped; `receive_window` is what this
    /// endpoint gave it, if it chose.
    pub fn register(
        self: &Arc<Self>,
        connection: &Connection,
        receive_window: Option<u64>,
    ) -> ListedConnection {
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            connection: connection.clone(),
            created_at: SystemTime::now(),
            receive_window,
            path: Path::new(connection.remote_address()),
        };
        lock(&self.live).insert(id, entry);
        self.watch_paths();
        ListedConnection {
            registry: self.clone(),
            id,
        }
    }

    /// Lists `connection` until it closes.
    pub fn watch(self: &Arc<Self>, connection: &Connection) {
        let listed = self.register(connection, None);
        let connection = connection.clone();
        tokio::spawn(async move {
            connection.closed().await;
            drop(listed);
        });
    }

    /// Counts a change of this endpoint's own side of `connection`'s path: the client moved
    /// it to a new local socket. The peer's side is watched by the registry itself.
    pub fn moved_locally(&self, connection: &Connection) {
        let mut live = lock(&self.live);
        let stable_id = connection.stable_id();
        let entry = live
            .values_mut()
            .find(|e| e.connection.stable_id() == stable_id);
        if let Some(entry) = entry {
            entry.path.changed();
        }
    }

    /// Notices every connection whose peer's address changed since last seen.
    pub fn sample_paths(&self) {
        for (&id, entry) in lock(&self.live).iter_mut() {
            sample_path(id, entry);
        }
    }

    /// Starts the task that samples paths every [`PATH_SAMPLE`], once, if there is a
    /// runtime to run it; it ends when the registry is dropped.
    fn watch_paths(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sampling.swap(true, Ordering::Relaxed) {
            return;
        }
        runtime.spawn(watch_paths(Arc::downgrade(self)));
    }

    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut all: Vec<ConnectionInfo> = lock(&self.live)
            .iter_mut()
            .map(|(&id, entry)| {
                sample_path(id, entry);
                let stats = entry.connection.stats();
                ConnectionInfo {
                    id,
                    stable_id: entry.connection.stable_id(),
                    remote: entry.path.remote,
                    path_changes: entry.path.changes,
                    last_path_change: entry.path.last_change,
                    created_at: entry.created_at,
                    rtt: stats.path.rtt,
                    max_udp_payload: stats.path.current_mtu,
                    congestion_window: stats.path.cwnd,
                    sent_packets: stats.path.sent_packets,
                    lost_packets: stats.path.lost_packets,
                    lost_bytes: stats.path.lost_bytes,
                    congestion_events: stats.path.congestion_events,
                    receive_window: entry.receive_window,
                }
            })
            .collect();
        all.sort_by_key(|c| (c.created_at, c.id));
        all
    }

    pub fn open_count(&self) -> usize {
        lock(&self.live).len()
    }

    /// Waits up to `limit` for a handshake to complete; a failure is counted under its
    /// reason.
    pub async fn handshake(
        &self,
        connecting: impl IntoFuture<Output = Result<Connection, ConnectionError>>,
        limit: Duration,
    ) -> Result<Connection, HandshakeFailure> {
        let failure = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => HandshakeFailure::Failed(error),
            Err(_) => HandshakeFailure::TimedOut(limit),
        };
        self.handshake_failed(failure.reason());
        Err(failure)
    }

    /// Counts a failed handshake under a short reason.
    pub fn handshake_failed(&self, reason: &'static str) {
        *lock(&self.handshake_failures).entry(reason).or_default() += 1;
    }

    /// Failed handshakes by reason.
    pub fn handshake_failures(&self) -> Vec<(&'static str, u64)> {
        lock(&self.handshake_failures)
            .iter()
            .map(|(&k, &v)| (k, v))
            .collect()
    }
}

/// Samples the paths of `registry` until it is dropped.
async fn watch_paths(registry: Weak<ConnectionRegistry>) {
    let mut tick = tokio::time::interval(PATH_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.sample_paths();
    }
}

/// Notices whether the peer of the connection listed as `id` is at a new address, and logs
/// each change once.
fn sample_path(id: usize, entry: &mut Entry) {
    let remote = entry.connection.remote_address();
    if remote == entry.path.remote {
        return;
    }
    let from = std::mem::replace(&mut entry.path.remote, remote);
    entry.path.changed();
    info!(connection = id, remote_endpoint = %remote, "path changed from {from} to {remote}");
}

/// Why a handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("{0}")]
    Failed(ConnectionError),
    #[error("no handshake within {0:?}")]
    TimedOut(Duration),
}

impl HandshakeFailure {
    /// The short reason the metrics count it under.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeFailure::Failed(error) => failure_reason(error),
            HandshakeFailure::TimedOut(_) => "timeout",
        }
    }
}

fn failure_reason(error: &ConnectionError) -> &'static str {
    match error {
        ConnectionError::TimedOut => "timeout",
        // TLS alerts travel as CRYPTO_ERROR codes 0x0100-0x01ff (RFC 9000 §20.1).
        ConnectionError::TransportError(e) if (0x100..0x200).contains(&u64::from(e.code)) => "tls",
        ConnectionError::TransportError(_) => "transport",
        ConnectionError::ConnectionClosed(_) => "closed_by_peer",
        ConnectionError::ApplicationClosed(_) => "closed_by_peer",
        ConnectionError::Reset => "reset",
        ConnectionError::VersionMismatch => "version",
        ConnectionError::LocallyClosed | ConnectionError::CidsExhausted => "local",
    }
}

/// A connection's place in the registry, given up on drop.
#[derive(Debug)]
pub struct ListedConnection {
    registry: Arc<ConnectionRegistry>,
    id: usize,
}

impl Drop for ListedConnection {
    fn drop(&mut self) {
        lock(&self.registry.live).remove(&self.id);
    }
}
