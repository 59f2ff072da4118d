//! The server endpoint: accepts QUIC connections, and for each stream reads the token, asks the
//! token parser for the target, dials it and relays.
//!
//! Every stream is served by its own task: reading the token, the plugin call and dialing the
//! target never run in the accept loop, so a slow target or plugin stalls only its own tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use tracing::{Instrument, debug, info, info_span, warn};

pub mod policy;

use crate::plugins::{Discriminator, TokenParser};
use crate::quic::connections::ConnectionRegistry;
use crate::quic::{self, SetupError, TransportOptions};
use crate::shutdown::Drain;
use crate::tls::{self, Identity};
use crate::tunnel::app::{AppStream, within};
use crate::tunnel::relay::{self, Abort, log_end};
use crate::tunnel::sniff::Sniffer;
use crate::tunnel::{Side, Tunnel, TunnelRegistry, TunnelSpec};
use crate::wire::addr::Address;
use crate::wire::handshake::{self, HandshakeError, Protocol};
use crate::wire::{Answer, ErrorCode, Status};
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
    /// Discriminators run on every tunnel.
    pub discriminators: Vec<Discriminator>,
    /// Which targets tokens may name.
    pub policy: Policy,
    /// With roots, clients must present a certificate signed by one of them.
    pub client_roots: Option<rustls::RootCertStore>,
    /// The stateless-reset key, kept across restarts; a random one when `None`.
    pub reset_key: Option<Vec<u8>>,
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
    draining: AtomicBool,
    parser: TokenParser,
    policy: Policy,
    discriminators: Vec<Discriminator>,
    registry: Arc<TunnelRegistry>,
    connections_registry: Arc<ConnectionRegistry>,
    handshake_timeout: Duration,
    connect_timeout: Duration,
    max_connections: usize,
    connections: AtomicUsize,
}

impl Server {
    /// Binds the UDP socket. The certificate's fingerprint is logged.
    pub fn bind(config: ServerConfig) -> Result<Server, SetupError> {
        if let Some(fingerprint) = config.identity.fingerprint() {
            info!(%fingerprint, "server certificate");
        }
        let crypto = tls::server_crypto(config.identity, config.client_roots)?;
        let mut server_config = quinn::ServerConfig::with_crypto(crypto);
        server_config.transport_config(Arc::new(config.transport.build()?));
        let endpoint = match &config.reset_key {
            Some(key) => quic::server_endpoint(config.listen, server_config, key),
            None => quic::endpoint(config.listen, Some(server_config)),
        }
        .map_err(|source| SetupError::Listen {
            what: format!("udp {}", config.listen),
            source,
        })?;
        let core = Arc::new(ServerCore {
            draining: AtomicBool::new(false),
            parser: config.parser,
            policy: config.policy,
            discriminators: config.discriminators,
            registry: Arc::default(),
            connections_registry: Arc::default(),
            handshake_timeout: config.handshake_timeout,
            connect_timeout: config.connect_timeout,
            max_connections: config.max_connections,
            connections: AtomicUsize::new(0),
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
            if core.connections.load(Ordering::Relaxed) >= core.max_connections {
                warn!(remote = %incoming.remote_address(), limit = core.max_connections, "connection refused: too many connections");
                core.connections_registry
                    .handshake_failed("too_many_connections");
                incoming.refuse();
                continue;
            }
            let span = info_span!("connection", remote_endpoint = %incoming.remote_address());
            tokio::spawn(serve_connection(incoming, core).instrument(span));
        }
    }
}

async fn serve_connection(incoming: Incoming, core: Arc<ServerCore>) {
    core.connections.fetch_add(1, Ordering::Relaxed);
    let _count = scopeguard(|| {
        core.connections.fetch_sub(1, Ordering::Relaxed);
    });
    let registry = &core.connections_registry;
    let connection = match registry.handshake(incoming, core.handshake_timeout).await {
        Ok(connection) => connection,
        Err(failure) => return warn!("handshake failed: {failure}"),
    };
    let _listed = core.connections_registry.register(&connection);
    info!("connection established");
    loop {
        match connection.accept_bi().await {
            Ok((mut send, mut recv)) if core.draining.load(Ordering::Relaxed) => {
                // Shutting down: open tunnels may finish, new ones are turned away.
                let _ = recv.stop(ErrorCode::Shutdown.varint());
                let _ = send.reset(ErrorCode::Shutdown.varint());
            }
            Ok((send, recv)) => {
                let span = info_span!("tunnel", stream_id = %send.id(), server_app = tracing::field::Empty);
                let stream = serve_stream(send, recv, connection.clone(), core.clone());
                tokio::spawn(stream.instrument(span));
            }
            Err(error) => return info!("connection closed: {error}"),
        }
    }
}

/// Serves one tunnel.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    connection: Connection,
    core: Arc<ServerCore>,
) {
    let remote_endpoint = connection.remote_address();
    let protocol = Protocol::of(&connection);
    let limit = core.handshake_timeout;
    let token = match handshake::read_token(&mut recv, &connection, protocol, limit).await {
        Some(Ok(token)) => token,
        Some(Err(HandshakeError::Wire(error))) => {
            warn!("bad token frame: {error}");
            let answer = Answer::refuse(Status::BadToken, &error.to_string());
            return handshake::refuse(send, recv, protocol, answer).await;
        }
        Some(Err(error)) => {
            return debug!("stream ended before its token: {}", Abort::from(error));
        }
        None => {
            warn!("no token within {:?}", core.handshake_timeout);
            let _ = recv.stop(ErrorCode::ProtocolViolation.varint());
            let _ = send.reset(ErrorCode::ProtocolViolation.varint());
            return;
        }
    };
    let target = match target_of(&core.parser, token).await {
        Ok(target) => target,
        Err(answer) => {
            warn!(status = %answer.status, "tunnel refused: {}", answer.reason);
            return handshake::refuse(send, recv, protocol, answer).await;
        }
    };
    tracing::Span::current().record("server_app", tracing::field::display(&target));
    let app = match dial(&target, &core.policy, core.connect_timeout).await {
        Ok(app) => app,
        Err(answer) => {
            warn!(status = %answer.status, "tunnel refused: {}", answer.reason);
            return handshake::refuse(send, recv, protocol, answer).await;
        }
    };
    if let Err(error) = handshake::accept(&mut send, protocol).await {
        return debug!("peer went away before the answer: {error}");
    }
    debug!("tunnel open");
    let registered = core.registry.register(Tunnel::new(TunnelSpec {
        stream_id: u64::from(send.id()),
        side: Side::Server,
        client_app: None,
        server_app: Some(target.to_string()),
        remote_endpoint,
    }));
    let tunnel = registered.tunnel();
    let sniffer = Sniffer::start(&core.discriminators, tunnel.clone());
    log_end(
        relay::relay(app, send, recv, tunnel, None, sniffer.as_ref()).await,
        tunnel,
    );
}

/// Asks the parser for the target; a refusal becomes the answer to send.
async fn target_of(parser: &TokenParser, token: Vec<u8>) -> Result<Address, Answer> {
    use quictun_plugin_api::FailureKind;
    let text = parser.target(token).await.map_err(|error| {
        let status = match error.kind {
            FailureKind::Refused => Status::BadToken,
            FailureKind::Failed | FailureKind::Panicked => Status::PluginError,
        };
        Answer::refuse(status, &error.message)
    })?;
    text.parse::<Address>().map_err(|error| {
        Answer::refuse(
            Status::BadToken,
            &format!("token names no valid target: {error}"),
        )
    })
}

/// Dials the target if the policy allows it. CIDR rules are checked against each resolved
/// address, so only allowed addresses are ever dialed.
async fn dial(target: &Address, policy: &Policy, timeout: Duration) -> Result<AppStream, Answer> {
    let unreachable = |error: std::io::Error| {
        Answer::refuse(
            Status::Unreachable,
            &format!("cannot reach {target}: {error}"),
        )
    };
    let not_allowed = || {
        Answer::refuse(
            Status::NotAllowed,
            &format!("target {target} is not allowed by --allow-target"),
        )
    };
    match target {
        Address::Unix(path) if !policy.allows_unix(path) => Err(not_allowed()),
        Address::Unix(path) => AppStream::connect_unix(path, timeout)
            .await
            .map_err(unreachable),
        Address::Tcp(host_port) => {
            let resolved = within(timeout, host_port.resolve())
                .await
                .map_err(unreachable)?;
            let allowed: Vec<SocketAddr> = if policy.allows_name(host_port) {
                resolved.clone()
            } else {
                resolved
                    .iter()
                    .copied()
                    .filter(|&addr| policy.allows_addr(addr))
                    .collect()
            };
            // The reason names the target as the token gave it, never what it resolved to:
            // a refusal must not answer DNS questions about the server's network.
            if allowed.is_empty() && !resolved.is_empty() {
                return Err(not_allowed());
            }
            AppStream::connect_tcp(&allowed, timeout)
                .await
                .map_err(unreachable)
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
