//! The live QUIC connections of one endpoint, and its handshake failures, for the REST API
//! and the metrics.
//!
//! A connection is listed from the end of its handshake until it closes. Its RTT, congestion
//! window and losses are read from quinn when asked, never copied on the data path.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use quinn::{Connection, ConnectionError};

use crate::lock::lock;

/// One endpoint's connections.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    live: Mutex<HashMap<usize, Entry>>,
    /// The last id given out: ids are ours, counted from 1, never a memory address.
    last_id: AtomicUsize,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Debug)]
struct Entry {
    connection: Connection,
    created_at: SystemTime,
    receive_window: Option<u64>,
}

/// A snapshot of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub id: usize,
    pub remote: SocketAddr,
    pub created_at: SystemTime,
    pub rtt: Duration,
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
        };
        lock(&self.live).insert(id, entry);
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

    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut all: Vec<ConnectionInfo> = lock(&self.live)
            .iter()
            .map(|(&id, entry)| {
                let stats = entry.connection.stats();
                ConnectionInfo {
                    id,
                    remote: entry.connection.remote_address(),
                    created_at: entry.created_at,
                    rtt: stats.path.rtt,
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
