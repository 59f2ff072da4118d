//! The client's one QUIC connection to the server: made on first demand, watched, and made
//! again with capped exponential back-off (with jitter) whenever it is lost, while the client's
//! listener stays up.
//!
//! A supervisor task owns the connection and publishes its state; application connections
//! wait on that state (bounded by `--outage-wait` at the caller) instead of each trying to
//! connect on their own.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::{Connection, Endpoint};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::addr::{Host, HostPort};
use crate::connections::{ConnectionRegistry, handshake_failure_reason};
use crate::transport;

/// First pause after a failed attempt; it doubles up to the configured maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Where the connection stands.
#[derive(Debug, Clone)]
enum State {
    /// Nobody has asked for a connection yet.
    Idle,
    Connecting,
    Up(Connection),
    /// The last attempt failed, or the connection was lost; why.
    Down(String),
}

/// Settings of the connector.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub server: HostPort,
    pub quic: quinn::ClientConfig,
    pub handshake_timeout: Duration,
    pub max_backoff: Duration,
}

/// Hands out the live connection; owns the supervisor task.
pub struct Connector {
    state: watch::Receiver<State>,
    wanted: Arc<Notify>,
    registry: Arc<ConnectionRegistry>,
    supervisor: JoinHandle<()>,
}

impl Connector {
    /// Starts the supervisor; no connection is made until one is asked for.
    pub fn start(config: ConnectorConfig) -> Connector {
        let (state_tx, state) = watch::channel(State::Idle);
        let wanted = Arc::new(Notify::new());
        let registry = Arc::new(ConnectionRegistry::default());
        let supervisor = Supervisor {
            dialer: Dialer::new(config, registry.clone()),
            state: state_tx,
        };
        let supervisor = tokio::spawn(supervisor.run(wanted.clone()));
        Connector {
            state,
            wanted,
            registry,
            supervisor,
        }
    }

    /// The live connection, waiting for one if there is none (the caller bounds the wait).
    pub async fn connection(&self) -> Connection {
        let mut state = self.state.clone();
        loop {
            if let State::Up(connection) = &*state.borrow_and_update()
                && connection.close_reason().is_none()
            {
                return connection.clone();
            }
            self.wanted.notify_one();
            if state.changed().await.is_err() {
                // The supervisor is gone: only at shutdown. Wait for the caller's bound.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Why there is no connection, for the message when an application gives up waiting.
    pub fn last_error(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Down(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    pub fn registry(&self) -> Arc<ConnectionRegistry> {
        self.registry.clone()
    }

    /// The current connection, if it is up.
    pub fn current(&self) -> Option<Connection> {
        match &*self.state.borrow() {
            State::Up(connection) => Some(connection.clone()),
            _ => None,
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

struct Supervisor {
    dialer: Dialer,
    state: watch::Sender<State>,
}

impl Supervisor {
    async fn run(mut self, wanted: Arc<Notify>) {
        wanted.notified().await;
        let mut backoff = FIRST_BACKOFF;
        let max_backoff = self.dialer.config.max_backoff.max(FIRST_BACKOFF);
        loop {
            self.state.send_replace(State::Connecting);
            match self.dialer.connect().await {
                Ok(connection) => {
                    backoff = FIRST_BACKOFF;
                    self.dialer.registry.watch(&connection);
                    self.state.send_replace(State::Up(connection.clone()));
                    let reason = connection.closed().await;
                    warn!(server = %self.dialer.config.server, "connection to the server lost: {reason}; reconnecting");
                    self.state
                        .send_replace(State::Down(format!("connection lost: {reason}")));
                }
                Err(error) => {
                    let pause = jitter(backoff);
                    warn!("{error:#}; next attempt in {pause:?}");
                    self.state.send_replace(State::Down(format!("{error:#}")));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }
}

/// Makes connections to the server one attempt at a time, all from one UDP endpoint: the
/// supervisor's reconnections and the client's one-shot check (`--check`) alike.
pub struct Dialer {
    config: ConnectorConfig,
    endpoint: Option<Endpoint>,
    registry: Arc<ConnectionRegistry>,
}

impl Dialer {
    /// A dialer counting handshake failures in `registry`. No socket is opened yet.
    pub fn new(config: ConnectorConfig, registry: Arc<ConnectionRegistry>) -> Dialer {
        Dialer {
            config,
            endpoint: None,
            registry,
        }
    }

    /// One attempt: resolves the server and completes the handshake within the time-out.
    pub async fn connect(&mut self) -> anyhow::Result<Connection> {
        let server = self.config.server.clone();
        let addr = *server
            .resolve()
            .await
            .with_context(|| format!("cannot resolve server {server}"))?
            .first()
            .with_context(|| format!("server {server} resolves to no address"))?;
        let name = match &server.host {
            Host::Name(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        };
        let connecting = self
            .endpoint_for(addr)?
            .connect_with(self.config.quic.clone(), addr, &name)
            .with_context(|| format!("cannot connect to server {server}"))?;
        let connection = match tokio::time::timeout(self.config.handshake_timeout, connecting).await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                self.registry
                    .handshake_failed(handshake_failure_reason(&error));
                anyhow::bail!("cannot connect to server {server}: {error}");
            }
            Err(_) => {
                self.registry.handshake_failed("timeout");
                let limit = self.config.handshake_timeout;
                anyhow::bail!("no handshake with server {server} within {limit:?}");
            }
        };
        info!(server = %server, remote_endpoint = %addr, "connected to server");
        debug!(rtt = ?connection.rtt(), "first round trip");
        Ok(connection)
    }

    /// Waits up to `bound` for closed connections to finish closing, so the server hears of
    /// it before the process exits.
    pub async fn wait_idle(&self, bound: Duration) {
        if let Some(endpoint) = &self.endpoint {
            let _ = tokio::time::timeout(bound, endpoint.wait_idle()).await;
        }
    }

    /// The client's UDP endpoint, bound on first use to the server's address family.
    fn endpoint_for(&mut self, server: SocketAddr) -> anyhow::Result<Endpoint> {
        if let Some(endpoint) = &self.endpoint {
            return Ok(endpoint.clone());
        }
        let local = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let endpoint = transport::endpoint(local, None).context("cannot open a UDP socket")?;
        self.endpoint = Some(endpoint.clone());
        Ok(endpoint)
    }
}

/// `pause` ± 20 %, so many clients cut off together do not come back in lockstep.
fn jitter(pause: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::time::Instant::now());
    let factor = 0.8 + (random % 1000) as f64 / 2500.0;
    pause.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let pause = jitter(Duration::from_secs(10));
            assert!(
                pause >= Duration::from_secs(8) && pause <= Duration::from_secs(12),
                "{pause:?}"
            );
        }
    }
}
