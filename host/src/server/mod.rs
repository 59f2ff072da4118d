//! The server endpoint: accepts QUIC connections, and for each stream reads the token, asks the
//! token parser for the target, dials it and relays.
//!
//! Every stream is served by its own task: reading the token, the plugin call and dialing the
//! target never run in the accept loop, so a slow target or plugin stalls only its own tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::Endpoint;
use tracing::{Instrument, debug, info, info_span};

pub mod admission;
pub mod budget;
mod connection;
mod flow;
pub mod policy;
mod stream;

use crate::plugins::{Discriminator, TokenParser};
use crate::quic::connections::ConnectionRegistry;
use crate::quic::keys::{EndpointKeys, KeySource};
use crate::quic::path::PathTransports;
use crate::quic::{self, SetupError, TransportOptions, Windows};
use crate::shutdown::Drain;
use crate::tls::ClientAuth;
use crate::tls::{self, Identity};
use crate::tunnel::TunnelRegistry;
use crate::wire::ErrorCode;
use admission::{Admission, Verdict};
use budget::BufferBudget;
use policy::Policy;

/// Everything the server needs, already checked.
#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub parser: TokenParser,
    pub identity: Identity,
    pub transport: TransportOptions,
    /// Longest time for a QUIC handshake, and for a stream's token to arrive.
    pub handshake_timeout: Duration,
    /// Longest time to connect to a target.
    pub connect_timeout: Duration,
    pub max_connections: usize,
    /// Bounds on what clients may make the server hold.
    pub limits: Limits,
    /// Discriminators run on every tunnel.
    pub discriminators: Vec<Discriminator>,
    /// Which targets tokens may name.
    pub policy: Policy,
    /// Which client certificates are asked for (mutual TLS).
    pub client_auth: ClientAuth,
    /// Where the stateless-reset, connection-ID and Retry token keys come from.
    pub keys: KeySource,
    /// `--server-id`: carried by every connection ID this server issues (SPEC §12).
    pub server_id: Option<u8>,
}

/// Bounds on hostile traffic (SPEC §7).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Handshakes in progress from one source address (an IPv4 address, an IPv6 /64).
    pub max_handshakes_per_address: usize,
    /// Bytes of receive windows and send buffers committed to all connections together.
    pub max_buffered: u64,
    /// Handshakes in progress from which a new client must first prove its address (QUIC
    /// Retry): [`admission::RETRY_THRESHOLD`]; 0 asks it of every client.
    pub retry_threshold: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_handshakes_per_address: 32,
            max_buffered: 1024 * 1024 * 1024,
            retry_threshold: admission::RETRY_THRESHOLD,
        }
    }
}

/// A bound server endpoint.
pub struct Server {
    endpoint: Endpoint,
    core: Arc<ServerCore>,
}

/// Shuts a running server down.
#[derive(Clone)]
pub struct ServerHandle {
    endpoint: Endpoint,
    core: Arc<ServerCore>,
}

impl Drain for ServerHandle {
    fn stop_accepting(&self) {
        self.core.draining.store(true, Ordering::Relaxed);
        self.endpoint.set_server_config(None);
    }

    fn tunnels(&self) -> &TunnelRegistry {
        &self.core.registry
    }

    async fn close(&self) {
        self.endpoint
            .close(ErrorCode::Shutdown.varint(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

struct ServerCore {
    /// What every connection is accepted with, but for its transport, which is its path's.
    quic: quinn::ServerConfig,
    transports: PathTransports,
    draining: AtomicBool,
    parser: TokenParser,
    policy: Policy,
    discriminators: Vec<Discriminator>,
    registry: Arc<TunnelRegistry>,
    connections_registry: Arc<ConnectionRegistry>,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    /// `--max-streams-per-connection`.
    max_streams: u32,
    /// `--udp-idle-timeout`.
    udp_idle_timeout: Duration,
    admission: Arc<Admission>,
    budget: Arc<BufferBudget>,
}

impl Server {
    /// Binds the UDP socket. The certificate's fingerprint is logged.
    pub fn bind(config: ServerConfig) -> Result<Server, SetupError> {
        if let Some(fingerprint) = config.identity.fingerprint() {
            info!(%fingerprint, "server certificate");
        }
        let crypto = tls::server_crypto(config.identity, config.client_auth)?;
        let keys = EndpointKeys::new(&config.keys).map_err(|_| SetupError::Random)?;
        let mut server_config = quinn::ServerConfig::new(crypto, keys.retry.clone());
        // Each connection gets the transport for its path ([`quic::path`]); this one is for
        // a peer whose path is not known.
        let transports = PathTransports::new(handshake_transport(&config.transport))?;
        server_config.transport_config(transports.unknown());
        // A client whose address changes (a NAT rebinding, a new network) keeps its connection
        // and its tunnels (SPEC §12). quinn's default; said here so it stays so.
        server_config.migration(true);
        let endpoint =
            quic::server_endpoint(config.listen, server_config.clone(), keys, config.server_id)
                .map_err(|source| SetupError::Listen {
                    what: format!("udp {}", config.listen),
                    error: source,
                })?;
        let core = Arc::new(ServerCore {
            quic: server_config.clone(),
            transports,
            draining: AtomicBool::new(false),
            parser: config.parser,
            policy: config.policy,
            discriminators: config.discriminators,
            registry: Arc::default(),
            connections_registry: Arc::default(),
            handshake_timeout: config.handshake_timeout,
            connect_timeout: config.connect_timeout,
            max_streams: config.transport.max_streams,
            udp_idle_timeout: config.transport.udp_idle_timeout,
            admission: Arc::new(
                Admission::new(
                    config.limits.max_handshakes_per_address,
                    config.max_connections,
                )
                .retry_from(config.limits.retry_threshold),
            ),
            budget: Arc::new(BufferBudget::new(config.limits.max_buffered)),
        });
        Ok(Server { endpoint, core })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The live tunnels.
    pub fn registry(&self) -> Arc<TunnelRegistry> {
        self.core.registry.clone()
    }

    /// The live QUIC connections and handshake failures.
    pub fn connections(&self) -> Arc<ConnectionRegistry> {
        self.core.connections_registry.clone()
    }

    /// A handle to shut the server down from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            endpoint: self.endpoint.clone(),
            core: self.core.clone(),
        }
    }

    /// Accepts connections until the endpoint is closed.
    pub async fn run(self) {
        info!(listen = %self.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "server ready");
        while let Some(incoming) = self.endpoint.accept().await {
            let core = self.core.clone();
            let remote = incoming.remote_address();
            let failed = |reason| core.connections_registry.handshake_failed(reason);
            match core
                .admission
                .judge(remote, incoming.remote_address_validated())
            {
                Verdict::Accept(slot) => {
                    let span = info_span!("connection", remote_endpoint = %remote);
                    let serve = connection::serve_connection(incoming, slot, core.clone());
                    // In the accept loop's span too: where a filter turns the connection's
                    // span off, its events still carry the server's (its server_id).
                    tokio::spawn(serve.instrument(span).in_current_span());
                }
                Verdict::Retry if incoming.may_retry() => {
                    let _ = incoming.retry();
                }
                Verdict::Retry => {
                    failed("retry_unavailable");
                    incoming.ignore();
                }
                Verdict::Refuse(reason) => {
                    debug!(%remote, "connection refused: {}", reason.replace('_', " "));
                    failed(reason);
                    incoming.refuse();
                }
                Verdict::Ignore(reason) => {
                    failed(reason);
                    incoming.ignore();
                }
            }
        }
    }
}

/// The transport a connection starts with, during its handshake: few streams and small
/// windows, so a half-open handshake costs little; an established connection gets its share of
/// `--max-buffered` and more streams as it uses them ([`connection`]). The stream window is
/// final here (QUIC announces it in the handshake); the connection window bounds it.
fn handshake_transport(transport: &TransportOptions) -> TransportOptions {
    TransportOptions {
        max_streams: connection::HANDSHAKE_STREAM_LIMIT.min(transport.max_streams),
        windows: Windows {
            stream: Windows::FULL.stream,
            connection: budget::FLOOR,
            send: budget::FLOOR,
        },
        ..transport.clone()
    }
}
