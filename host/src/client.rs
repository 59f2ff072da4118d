//! The client endpoint: accepts application connections, gets a token for each from the token
//! source, and opens one QUIC stream per connection on a shared connection to the server.
//!
//! The token is written and the application's bytes follow at once, without waiting for the
//! server's answer, so a new tunnel costs no round trip beyond the application's own.
//! The QUIC connection is made lazily, on the first application connection, and made again
//! when it has been lost.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::{Connection, Endpoint};
use tokio::sync::Mutex;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::addr::{Address, Host, HostPort};
use crate::app::{AppListener, AppStream};
use crate::connections::{ConnectionRegistry, handshake_failure_reason};
use crate::plugins::{Discriminator, TokenSource};
use crate::relay::{self, Preface, Side, log_end};
use crate::sniff::Sniffer;
use crate::tls::{self, Verification};
use crate::transport::{self, TransportOptions};
use crate::tunnel::{Tunnel, TunnelRegistry, TunnelSpec};
use crate::wire;

/// Everything the client needs, already checked.
#[derive(Debug)]
pub struct ClientConfig {
    pub listen: Address,
    pub server: HostPort,
    pub source: TokenSource,
    pub verification: Verification,
    pub transport: TransportOptions,
    /// Longest time for a QUIC handshake.
    pub handshake_timeout: Duration,
    /// How long an application connection waits for the QUIC connection or a free stream.
    pub outage_wait: Duration,
    /// Discriminators run on every tunnel.
    pub discriminators: Vec<Discriminator>,
}

/// A client with its application listener bound.
pub struct Client {
    listener: AppListener,
    shared: Arc<Shared>,
}

struct Shared {
    source: TokenSource,
    discriminators: Vec<Discriminator>,
    registry: Arc<TunnelRegistry>,
    outage_wait: Duration,
    connector: Connector,
}

impl Client {
    /// Binds the application listener. No QUIC connection is made yet.
    pub async fn bind(config: ClientConfig) -> anyhow::Result<Client> {
        let listener = AppListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let crypto = tls::client_crypto(&config.verification)?;
        let mut quic = quinn::ClientConfig::new(crypto);
        quic.transport_config(Arc::new(config.transport.build()?));
        let connector = Connector {
            endpoint: None.into(),
            server: config.server,
            config: quic,
            handshake_timeout: config.handshake_timeout,
            current: Mutex::new(None),
            registry: Arc::default(),
        };
        let shared = Arc::new(Shared {
            source: config.source,
            discriminators: config.discriminators,
            registry: Arc::default(),
            outage_wait: config.outage_wait,
            connector,
        });
        Ok(Client { listener, shared })
    }

    /// The live QUIC connection and handshake failures.
    pub fn connections(&self) -> Arc<ConnectionRegistry> {
        self.shared.connector.registry.clone()
    }

    /// The live tunnels.
    pub fn registry(&self) -> Arc<TunnelRegistry> {
        self.shared.registry.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<Address> {
        self.listener.local_addr()
    }

    /// Accepts application connections until the task is dropped.
    pub async fn run(self) {
        info!(listen = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
              server = %self.shared.connector.server, "client ready");
        loop {
            match self.listener.accept().await {
                Ok((app, client_app)) => {
                    let span = info_span!("tunnel", %client_app, stream_id = tracing::field::Empty);
                    tokio::spawn(serve_app(app, client_app, self.shared.clone()).instrument(span));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves one application connection.
async fn serve_app(app: AppStream, client_app: String, shared: Arc<Shared>) {
    let token = match shared.source.token(&client_app).await {
        Ok(token) => token,
        Err(error) => {
            warn!("connection refused: no token: {error}");
            return app.reset();
        }
    };
    let mut frame = Vec::with_capacity(wire::TOKEN_HEADER_LEN + token.len());
    if let Err(error) = wire::encode_token(&token, &mut frame) {
        warn!("connection refused: the token source gave an unusable token: {error}");
        return app.reset();
    }
    let wait = shared.outage_wait;
    let opened = tokio::time::timeout(wait, async {
        let connection = shared.connector.connection().await?;
        let streams = connection.open_bi().await.context("cannot open a stream")?;
        Ok::<_, anyhow::Error>((streams, connection.remote_address()))
    });
    let ((mut send, recv), remote_endpoint) = match opened.await {
        Ok(Ok(streams)) => streams,
        Ok(Err(error)) => {
            warn!("connection closed: {error:#}");
            return app.reset();
        }
        Err(_) => {
            warn!("connection closed: no connection or free stream to the server within {wait:?}");
            return app.reset();
        }
    };
    tracing::Span::current().record("stream_id", tracing::field::display(send.id()));
    if let Err(error) = send.write_all(&frame).await {
        warn!("connection closed: cannot send the token: {error}");
        return app.reset();
    }
    let registered = shared.registry.register(Tunnel::new(TunnelSpec {
        stream_id: u64::from(send.id()),
        side: Side::Client,
        client_app: Some(client_app),
        server_app: None,
        remote_endpoint,
    }));
    let tunnel = registered.tunnel();
    let sniffer = Sniffer::start(&shared.discriminators, tunnel.clone());
    log_end(
        relay::relay(app, send, recv, tunnel, Preface::Answer, sniffer.as_ref()).await,
        tunnel,
    );
}

/// Holds the one QUIC connection to the server, making it when needed.
struct Connector {
    endpoint: std::sync::Mutex<Option<Endpoint>>,
    server: HostPort,
    config: quinn::ClientConfig,
    handshake_timeout: Duration,
    current: Mutex<Option<Connection>>,
    registry: Arc<ConnectionRegistry>,
}

impl Connector {
    /// The live connection, or a new one.
    async fn connection(&self) -> anyhow::Result<Connection> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(connection.clone());
        }
        let connection = self.connect().await?;
        self.registry.watch(&connection);
        *current = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self) -> anyhow::Result<Connection> {
        let server = &self.server;
        let addr = *server
            .resolve()
            .await
            .with_context(|| format!("cannot resolve server {server}"))?
            .first()
            .with_context(|| format!("server {server} resolves to no address"))?;
        let endpoint = self.endpoint_for(addr)?;
        let name = match &server.host {
            Host::Name(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        };
        let connecting = endpoint
            .connect_with(self.config.clone(), addr, &name)
            .with_context(|| format!("cannot connect to server {server}"))?;
        let connection = match tokio::time::timeout(self.handshake_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                self.registry
                    .handshake_failed(handshake_failure_reason(&error));
                anyhow::bail!("cannot connect to server {server}: {error}");
            }
            Err(_) => {
                self.registry.handshake_failed("timeout");
                anyhow::bail!(
                    "no handshake with server {server} within {:?}",
                    self.handshake_timeout
                );
            }
        };
        info!(server = %server, remote_endpoint = %addr, "connected to server");
        debug!(rtt = ?connection.rtt(), "first round trip");
        Ok(connection)
    }

    /// The client's UDP endpoint, bound on first use to the server's address family.
    fn endpoint_for(&self, server: SocketAddr) -> anyhow::Result<Endpoint> {
        let mut endpoint = self.endpoint.lock().expect("endpoint lock");
        if let Some(endpoint) = endpoint.as_ref() {
            return Ok(endpoint.clone());
        }
        let local = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let created = transport::endpoint(local, None).context("cannot open a UDP socket")?;
        *endpoint = Some(created.clone());
        Ok(created)
    }
}
