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

use crate::addr::Address;
use crate::app::{AppStream, within};
use crate::connections::{ConnectionRegistry, handshake_failure_reason};
use crate::plugins::{Discriminator, TokenParser};
use crate::policy::Policy;
use crate::relay::{self, Abort, Preface, Side, log_end};
use crate::sniff::Sniffer;
use crate::tls::{self, Identity};
use crate::transport::{self, TransportOptions};
use crate::tunnel::{Tunnel, TunnelRegistry, TunnelSpec};
use crate::wire::{self, Answer, ErrorCode, Status, TOKEN_HEADER_LEN, WireError};

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
    shared: Arc<Shared>,
}

/// Shuts a running server down.
#[derive(Clone)]
pub struct ServerHandle {
    endpoint: Endpoint,
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Stops accepting connections and tunnels, lets open tunnels finish for up to `drain`,
    /// then closes every connection. Returns how many tunnels were cut off.
    pub async fn shutdown(&self, drain: Duration) -> usize {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.endpoint.set_server_config(None);
        let open = self.shared.registry.open_count();
        if open > 0 {
            info!(
                tunnels = open,
                "waiting up to {drain:?} for open tunnels to finish"
            );
        }
        let cut = self.shared.registry.wait_empty(drain).await;
        self.endpoint
            .close(ErrorCode::Shutdown.varint(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        cut
    }
}

struct Shared {
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
    pub fn bind(config: ServerConfig) -> anyhow::Result<Server> {
        use anyhow::Context;
        if let Some(fingerprint) = config.identity.fingerprint() {
            info!(%fingerprint, "server certificate");
        }
        let crypto = tls::server_crypto(config.identity, config.client_roots)
            .context("invalid certificate or key")?;
        let mut server_config = quinn::ServerConfig::with_crypto(crypto);
        server_config.transport_config(Arc::new(config.transport.build()?));
        let endpoint = match &config.reset_key {
            Some(key) => transport::server_endpoint(config.listen, server_config, key),
            None => transport::endpoint(config.listen, Some(server_config)),
        }
        .with_context(|| format!("cannot listen on udp {}", config.listen))?;
        let shared = Arc::new(Shared {
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
        Ok(Server { endpoint, shared })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The live tunnels.
    pub fn registry(&self) -> Arc<TunnelRegistry> {
        self.shared.registry.clone()
    }

    /// The live QUIC connections and handshake failures.
    pub fn connections(&self) -> Arc<ConnectionRegistry> {
        self.shared.connections_registry.clone()
    }

    /// A handle to shut the server down from elsewhere.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            endpoint: self.endpoint.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Accepts connections until the endpoint is closed.
    pub async fn run(self) {
        info!(listen = %self.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "server ready");
        while let Some(incoming) = self.endpoint.accept().await {
            let shared = self.shared.clone();
            if shared.connections.load(Ordering::Relaxed) >= shared.max_connections {
                warn!(remote = %incoming.remote_address(), limit = shared.max_connections, "connection refused: too many connections");
                shared
                    .connections_registry
                    .handshake_failed("too_many_connections");
                incoming.refuse();
                continue;
            }
            let span = info_span!("connection", remote_endpoint = %incoming.remote_address());
            tokio::spawn(serve_connection(incoming, shared).instrument(span));
        }
    }
}

async fn serve_connection(incoming: Incoming, shared: Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let _count = scopeguard(|| {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    });
    let connection = match tokio::time::timeout(shared.handshake_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            shared
                .connections_registry
                .handshake_failed(handshake_failure_reason(&error));
            return warn!("handshake failed: {error}");
        }
        Err(_) => {
            shared.connections_registry.handshake_failed("timeout");
            return warn!("handshake timed out after {:?}", shared.handshake_timeout);
        }
    };
    let _listed = shared.connections_registry.register(&connection);
    info!("connection established");
    loop {
        match connection.accept_bi().await {
            Ok((mut send, mut recv)) if shared.draining.load(Ordering::Relaxed) => {
                // Shutting down: open tunnels may finish, new ones are turned away.
                let _ = recv.stop(ErrorCode::Shutdown.varint());
                let _ = send.reset(ErrorCode::Shutdown.varint());
            }
            Ok((send, recv)) => {
                let span = info_span!("tunnel", stream_id = %send.id(), server_app = tracing::field::Empty);
                let stream = serve_stream(send, recv, connection.clone(), shared.clone());
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
    shared: Arc<Shared>,
) {
    let remote_endpoint = connection.remote_address();
    let protocol = Protocol::of(&connection);
    let token = match token_within(&mut recv, &connection, protocol, shared.handshake_timeout).await
    {
        Some(Ok(token)) => token,
        Some(Err(TokenError::Wire(error))) => {
            warn!("bad token frame: {error}");
            let answer = Answer::refuse(Status::BadToken, &error.to_string());
            return refuse(send, recv, protocol, answer).await;
        }
        Some(Err(TokenError::Stream(abort))) => {
            return debug!("stream ended before its token: {abort}");
        }
        None => {
            warn!("no token within {:?}", shared.handshake_timeout);
            let _ = recv.stop(ErrorCode::ProtocolViolation.varint());
            let _ = send.reset(ErrorCode::ProtocolViolation.varint());
            return;
        }
    };
    let target = match target_of(&shared.parser, token).await {
        Ok(target) => target,
        Err(answer) => {
            warn!(status = %answer.status, "tunnel refused: {}", answer.reason);
            return refuse(send, recv, protocol, answer).await;
        }
    };
    tracing::Span::current().record("server_app", tracing::field::display(&target));
    let app = match dial(&target, &shared.policy, shared.connect_timeout).await {
        Ok(app) => app,
        Err(answer) => {
            warn!(status = %answer.status, "tunnel refused: {}", answer.reason);
            return refuse(send, recv, protocol, answer).await;
        }
    };
    if let Err(error) = send.write_all(&protocol.encode(&Answer::ok())).await {
        return debug!("peer went away before the answer: {error}");
    }
    debug!("tunnel open");
    let registered = shared.registry.register(Tunnel::new(TunnelSpec {
        stream_id: u64::from(send.id()),
        side: Side::Server,
        client_app: None,
        server_app: Some(target.to_string()),
        remote_endpoint,
    }));
    let tunnel = registered.tunnel();
    let sniffer = Sniffer::start(&shared.discriminators, tunnel.clone());
    log_end(
        relay::relay(app, send, recv, tunnel, Preface::None, sniffer.as_ref()).await,
        tunnel,
    );
}

/// The wire protocol a connection negotiated (by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `quic-tun/2`: length-prefixed token, status and reason.
    V2,
    /// `quic-tun`, the original's: a 512-byte NUL-padded token, a one-byte answer.
    Legacy,
}

impl Protocol {
    fn of(connection: &Connection) -> Protocol {
        match transport::negotiated_alpn(connection).as_deref() {
            Some(wire::ALPN_LEGACY) => Protocol::Legacy,
            _ => Protocol::V2,
        }
    }

    /// The answer's bytes in this protocol.
    fn encode(self, answer: &Answer) -> Vec<u8> {
        match self {
            // Never 0x00: the original's client crashes on it.
            Protocol::Legacy => vec![answer.status.legacy_byte()],
            Protocol::V2 => {
                let mut bytes = Vec::with_capacity(wire::ANSWER_HEADER_LEN + answer.reason.len());
                answer
                    .encode(&mut bytes)
                    .expect("reasons are cut to the limit");
                bytes
            }
        }
    }
}

enum TokenError {
    Wire(WireError),
    Stream(Abort),
}

/// How many handshake time-outs a token may wait while its connection is busy.
const MAX_TOKEN_WAITS: u32 = 6;

/// Reads the token within the handshake time-out. On a connection busy with other tunnels a
/// token can queue behind their data (send buffers, flow control), so a time-out during which
/// other stream data arrived extends the wait, up to [`MAX_TOKEN_WAITS`] time-outs; a silent
/// stream on an otherwise quiet connection is closed at the first. `None` when time ran out.
async fn token_within(
    recv: &mut RecvStream,
    connection: &Connection,
    protocol: Protocol,
    limit: Duration,
) -> Option<Result<Vec<u8>, TokenError>> {
    let read = async {
        match protocol {
            Protocol::V2 => read_token(recv).await,
            Protocol::Legacy => read_legacy_token(recv).await,
        }
    };
    tokio::pin!(read);
    let mut seen = connection.stats().frame_rx.stream;
    for _ in 0..MAX_TOKEN_WAITS {
        if let Ok(result) = tokio::time::timeout(limit, &mut read).await {
            return Some(result);
        }
        let now = connection.stats().frame_rx.stream;
        if now == seen {
            return None;
        }
        seen = now;
    }
    None
}

/// Reads a legacy token block (it may arrive in several pieces) and strips its padding.
async fn read_legacy_token(recv: &mut RecvStream) -> Result<Vec<u8>, TokenError> {
    let mut block = [0u8; wire::LEGACY_TOKEN_LEN];
    relay::read_exact(recv, &mut block)
        .await
        .map_err(TokenError::Stream)?;
    Ok(wire::decode_legacy_token(&block).to_vec())
}

/// Reads a `quic-tun/2` token. A bad length is refused before any token byte is read.
async fn read_token(recv: &mut RecvStream) -> Result<Vec<u8>, TokenError> {
    let mut header = [0u8; TOKEN_HEADER_LEN];
    relay::read_exact(recv, &mut header)
        .await
        .map_err(TokenError::Stream)?;
    let len = wire::decode_token_header(header).map_err(TokenError::Wire)?;
    let mut token = vec![0u8; len];
    relay::read_exact(recv, &mut token)
        .await
        .map_err(TokenError::Stream)?;
    Ok(token)
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
    let not_allowed = |detail: String| {
        Answer::refuse(
            Status::NotAllowed,
            &format!("target {target}{detail} is not allowed by --allow-target"),
        )
    };
    match target {
        Address::Unix(path) if !policy.allows_unix(path) => Err(not_allowed(String::new())),
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
            if allowed.is_empty() && !resolved.is_empty() {
                let addrs: Vec<String> = resolved.iter().map(ToString::to_string).collect();
                let detail = match &host_port.host {
                    crate::addr::Host::Name(_) => format!(" ({})", addrs.join(", ")),
                    crate::addr::Host::Ip(_) => String::new(),
                };
                return Err(not_allowed(detail));
            }
            AppStream::connect_tcp(&allowed, timeout)
                .await
                .map_err(unreachable)
        }
    }
}

/// Sends a refusal, finishes our side and stops reading theirs.
async fn refuse(mut send: SendStream, mut recv: RecvStream, protocol: Protocol, answer: Answer) {
    let _ = recv.stop(ErrorCode::Done.varint());
    if send.write_all(&protocol.encode(&answer)).await.is_ok() {
        let _ = send.finish();
        // Keep the stream until the peer has the answer.
        let _ = send.stopped().await;
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
