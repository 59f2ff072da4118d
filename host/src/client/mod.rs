//! The client endpoint: accepts application connections on each service's listener, gets a
//! token for each from that service's token source, and opens one QUIC stream per connection
//! on the one connection to the server all services share.
//!
//! The token is written and the application's bytes follow at once, without waiting for the
//! server's answer, so a new tunnel costs no round trip beyond the application's own.
//! The QUIC connection is made lazily, on the first application connection, and made again
//! when it has been lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tracing::{Instrument, debug, info, info_span, warn};

pub mod check;
pub mod connector;
pub mod dialer;
mod flow;
pub mod service;
mod sockets;

use crate::plugins::{Discriminator, TokenSource};
use crate::quic::connections::ConnectionRegistry;
use crate::quic::path::PathTransports;
use crate::quic::{SetupError, TransportOptions};
use crate::shutdown::Drain;
use crate::tls::{self, Identity, Verification};
use crate::tunnel::app::{AppListener, AppStream};
use crate::tunnel::relay::{self, End, Opening, log_end};
use crate::tunnel::sniff::Sniffer;
use crate::tunnel::{Registered, Side, Transport, Tunnel, TunnelRegistry, TunnelSpec};
use crate::wire::ErrorCode;
use crate::wire::addr::Address;
use crate::wire::handshake::Protocol;
use connector::{Connector, ConnectorConfig};
pub use dialer::ServerEndpoint;
use dialer::ServerSettings;
use service::Service;

/// Everything the client needs, already checked.
#[derive(Debug)]
pub struct ClientConfig {
    /// The listeners, each with its token source: at least one (see [`service::check_unique`]).
    pub services: Vec<Service>,
    /// The servers, tried in turn (SPEC §9): at least one.
    pub servers: Vec<ServerEndpoint>,
    pub verification: Verification,
    /// The client's certificate, for servers that require one.
    pub identity: Option<Identity>,
    pub transport: TransportOptions,
    /// Longest time for a QUIC handshake.
    pub handshake_timeout: Duration,
    /// How long an application connection waits for the QUIC connection or a free stream.
    pub outage_wait: Duration,
    /// Longest pause between reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Discriminators run on every tunnel.
    pub discriminators: Vec<Discriminator>,
}

/// A client with its application listeners bound.
pub struct Client {
    listeners: Vec<ServiceListener>,
    servers: Vec<ServerEndpoint>,
    core: Arc<ClientCore>,
}

/// One service's listener and what its connections need.
struct ServiceListener {
    listener: Listener,
    service: Arc<ServiceCore>,
}

/// What serving one application connection of a service needs besides the client's core.
struct ServiceCore {
    name: Arc<str>,
    source: TokenSource,
    transport: Transport,
}

impl ServiceCore {
    /// Lists a tunnel (or UDP flow) of this service, from `client_app`, on `connection`.
    fn register(
        &self,
        registry: &Arc<TunnelRegistry>,
        stream_id: u64,
        client_app: String,
        connection: &Connection,
    ) -> Registered {
        registry.register(Tunnel::new(TunnelSpec {
            stream_id,
            side: Side::Client,
            client_app: Some(client_app),
            server_app: None,
            remote_endpoint: connection.remote_address(),
            connection: connection.stable_id(),
            service: Some(self.name.clone()),
            transport: self.transport,
        }))
    }
}

/// Shuts a client down.
#[derive(Clone)]
pub struct ClientHandle {
    core: Arc<ClientCore>,
}

impl ClientHandle {
    /// Retries the connection to the server now, after a failure retrying alone cannot fix
    /// (the binary does it on SIGHUP).
    pub fn retry_now(&self) {
        self.core.connector.retry_now();
    }

    /// Moves the connection to the server to a new local UDP socket, for when this host's
    /// network changed (the binary does it on SIGUSR1): the connection and its tunnels stay.
    pub fn rebind(&self) -> std::io::Result<()> {
        self.core.connector.rebind()
    }
}

impl Drain for ClientHandle {
    /// Nothing to do: the listeners close when the `run` future is dropped.
    fn stop_accepting(&self) {}

    fn tunnels(&self) -> &TunnelRegistry {
        &self.core.registry
    }

    async fn close(&self) {
        if let Some(connection) = self.core.connector.current() {
            connection.close(ErrorCode::Shutdown.varint(), b"client shutting down");
        }
    }
}

/// Where applications reach the client.
enum Listener {
    Stream(AppListener),
    /// Each source address of a UDP application is a flow.
    Udp(Arc<tokio::net::UdpSocket>),
}

impl Listener {
    async fn bind(addr: &Address) -> std::io::Result<Listener> {
        match addr {
            Address::Udp(host_port) => {
                // The QUIC sockets' large buffers: one socket takes every flow's datagrams,
                // and a burst must wait in it, not be dropped by the kernel.
                let addrs = host_port.resolve().await?;
                let mut last = None;
                for addr in addrs {
                    match crate::quic::udp_socket(addr) {
                        Ok(socket) => {
                            socket.set_nonblocking(true)?;
                            let socket = tokio::net::UdpSocket::from_std(socket)?;
                            return Ok(Listener::Udp(Arc::new(socket)));
                        }
                        Err(error) => last = Some(error),
                    }
                }
                Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
            }
            _ => AppListener::bind(addr).await.map(Listener::Stream),
        }
    }

    fn local_addr(&self) -> std::io::Result<Address> {
        match self {
            Listener::Stream(listener) => listener.local_addr(),
            Listener::Udp(socket) => Ok(Address::Udp(socket.local_addr()?.into())),
        }
    }
}

struct ClientCore {
    discriminators: Vec<Discriminator>,
    registry: Arc<TunnelRegistry>,
    outage_wait: Duration,
    udp_idle_timeout: Duration,
    /// The UDP flows of the live connection, for all services.
    flow_tables: flow::Tables,
    connector: Connector,
}

impl Client {
    /// Binds every service's listener and starts connecting to the server.
    pub async fn bind(config: ClientConfig) -> Result<Client, SetupError> {
        let registry = Arc::new(TunnelRegistry::default());
        let mut listeners = Vec::with_capacity(config.services.len());
        for service in config.services {
            let listener = bind_service(&service).await?;
            let name = service.name.shared();
            registry.add_service(&name);
            listeners.push(ServiceListener {
                listener,
                service: Arc::new(ServiceCore {
                    name,
                    source: service.source,
                    transport: Transport::of(&service.listen),
                }),
            });
        }
        let servers = server_settings(
            &config.servers,
            &config.verification,
            config.identity,
            &config.transport,
        )?;
        let connector = Connector::start(ConnectorConfig {
            servers,
            handshake_timeout: config.handshake_timeout,
            max_backoff: config.reconnect_max_backoff,
        });
        let core = Arc::new(ClientCore {
            discriminators: config.discriminators,
            registry,
            outage_wait: config.outage_wait,
            udp_idle_timeout: config.transport.udp_idle_timeout,
            flow_tables: flow::Tables::default(),
            connector,
        });
        Ok(Client {
            listeners,
            servers: config.servers,
            core,
        })
    }

    /// The live QUIC connection and handshake failures.
    pub fn connections(&self) -> Arc<ConnectionRegistry> {
        self.core.connector.registry()
    }

    /// A handle to shut the client down once [`run`](Self::run) has been stopped.
    pub fn handle(&self) -> ClientHandle {
        ClientHandle {
            core: self.core.clone(),
        }
    }

    /// The live tunnels.
    pub fn registry(&self) -> Arc<TunnelRegistry> {
        self.core.registry.clone()
    }

    /// The address of the first service's listener.
    pub fn local_addr(&self) -> std::io::Result<Address> {
        self.listeners.first().map_or_else(
            || Err(std::io::ErrorKind::NotFound.into()),
            |l| l.listener.local_addr(),
        )
    }

    /// Each service's name and the address its listener is bound to.
    pub fn service_addrs(&self) -> std::io::Result<Vec<(String, Address)>> {
        self.listeners
            .iter()
            .map(|l| Ok((l.service.name.to_string(), l.listener.local_addr()?)))
            .collect()
    }

    /// Accepts application connections on every listener until the task is dropped.
    pub async fn run(self) {
        let addrs = self.service_addrs().unwrap_or_default();
        for (service, listen) in &addrs {
            info!(%service, %listen, "service ready");
        }
        let listen: Vec<String> = addrs.iter().map(|(_, a)| a.to_string()).collect();
        let servers: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        info!(listen = %listen.join(","), server = %servers.join(","), "client ready");
        // Polled in place, not spawned: dropping `run` drops the listeners at once. The
        // loops never end, so each is polled whenever any is woken.
        let mut accepting: Vec<_> = self
            .listeners
            .into_iter()
            .map(|listener| Box::pin(accept_loop(listener, self.core.clone())))
            .collect();
        std::future::poll_fn(|cx| {
            for accept in &mut accepting {
                let _ = accept.as_mut().poll(cx);
            }
            std::task::Poll::<()>::Pending
        })
        .await;
    }
}

async fn bind_service(service: &Service) -> Result<Listener, SetupError> {
    Listener::bind(&service.listen)
        .await
        .map_err(|source| SetupError::Listen {
            what: format!("{} (service {:?})", service.listen, service.name.as_str()),
            error: source,
        })
}

/// Accepts one service's application connections (or datagrams), forever.
async fn accept_loop(service: ServiceListener, core: Arc<ClientCore>) {
    let listener = match service.listener {
        Listener::Stream(listener) => listener,
        Listener::Udp(socket) => return flow::run(socket, service.service, core).await,
    };
    loop {
        match listener.accept().await {
            Ok((app, client_app)) => {
                let span = info_span!("tunnel", service = %service.service.name, %client_app,
                                      stream_id = tracing::field::Empty);
                let serving = serve_app(app, client_app, service.service.clone(), core.clone());
                tokio::spawn(serving.instrument(span));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(service = %service.service.name, "accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Each server's QUIC settings: its own verification (trust on first use keys each by its
/// endpoint as written), our own certificate if any, and the transport options.
pub(crate) fn server_settings(
    servers: &[ServerEndpoint],
    verification: &Verification,
    identity: Option<Identity>,
    transport: &TransportOptions,
) -> Result<Vec<ServerSettings>, SetupError> {
    if servers.is_empty() {
        return Err(SetupError::NoServer);
    }
    let transports = Arc::new(PathTransports::new(transport.clone())?);
    servers
        .iter()
        .map(|endpoint| {
            let verification = verification.for_endpoint(&endpoint.given);
            Ok(ServerSettings {
                endpoint: endpoint.clone(),
                quic: quic_config(&verification, identity.clone())?,
                transports: transports.clone(),
            })
        })
        .collect()
}

/// The QUIC client settings: the server's verification and our own certificate if any. Each
/// connection gets the transport of its path ([`PathTransports`]).
pub(crate) fn quic_config(
    verification: &Verification,
    identity: Option<Identity>,
) -> Result<quinn::ClientConfig, SetupError> {
    let crypto = tls::client_crypto(verification, identity)?;
    Ok(quinn::ClientConfig::new(crypto))
}

/// Serves one application connection.
async fn serve_app(
    app: AppStream,
    client_app: String,
    service: Arc<ServiceCore>,
    core: Arc<ClientCore>,
) {
    let token = match service.source.token(&client_app).await {
        Ok(token) => token,
        Err(error) => {
            warn!("connection refused: no token: {error}");
            return app.reset();
        }
    };
    let wait = core.outage_wait;
    let ((mut send, recv), connection) = match tokio::time::timeout(
        wait,
        open_stream(&core.connector),
    )
    .await
    {
        Ok(Ok(opened)) => opened,
        Ok(Err(refused)) => {
            debug!("connection refused: {refused}");
            return app.reset();
        }
        Err(_) => {
            let why = core
                .connector
                .last_error()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default();
            warn!(
                "connection closed: no connection or free stream to the server within {wait:?}{why}"
            );
            return app.reset();
        }
    };
    tracing::Span::current().record("stream_id", tracing::field::display(send.id()));
    let protocol = Protocol::of(&connection);
    let frame = match protocol.token_frame(&token) {
        Ok(framed) => framed,
        Err(error) => {
            warn!("connection refused: the token source gave an unusable token: {error}");
            let _ = send.reset(ErrorCode::Done.varint());
            return app.reset();
        }
    };
    if let Err(error) = send.write_all(&frame).await {
        warn!("connection closed: cannot send the token: {error}");
        return app.reset();
    }
    let stream_id = u64::from(send.id());
    let registered = service.register(&core.registry, stream_id, client_app, &connection);
    let tunnel = registered.tunnel();
    let sniffer = Sniffer::start(&core.discriminators, tunnel.clone());
    let opening = Some(Opening::ReadAnswer(protocol));
    let end = relay::relay(app, send, recv, tunnel, opening, sniffer.as_ref()).await;
    if let End::Refused(answer) = &end {
        core.registry
            .count_refused(answer.status, tunnel.service.as_ref());
    }
    log_end(end, tunnel);
}

/// Opens a stream on the live connection, waiting out outages and the stream limit (the
/// caller bounds the wait); a connection lost under our feet is replaced. At once the reason
/// when the server cannot be connected to until something changes.
async fn open_stream(
    connector: &Connector,
) -> Result<((SendStream, RecvStream), Connection), String> {
    loop {
        let connection = connector.connection().await?;
        match connection.open_bi().await {
            Ok(streams) => return Ok((streams, connection)),
            Err(error) => debug!("stream not opened, retrying: {error}"),
        }
    }
}
