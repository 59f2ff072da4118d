//! Connecting to the server, one attempt at a time: the [`Dialer`] the connector's supervisor
//! and `--check` share, and why an attempt failed ([`ConnectError`]), with what retrying can
//! and cannot fix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError};
use tracing::{debug, info};

use super::sockets::Sockets;
use crate::quic::connections::{ConnectionRegistry, HandshakeFailure};
use crate::quic::path::PathTransports;
use crate::tls;
use crate::wire::addr::{Host, HostPort};
use crate::wire::handshake::Protocol;

/// Why an attempt to connect to the server failed: one line naming the server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve server {server}: {source}")]
    Resolve {
        server: HostPort,
        source: std::io::Error,
    },
    #[error("server {server} resolves to no address")]
    NoAddress { server: HostPort },
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot connect to server {server}: {source}")]
    Start {
        server: HostPort,
        source: quinn::ConnectError,
    },
    /// Not a `source`: the message already says what failed, and a refusal of the server's
    /// certificate would be said twice.
    #[error("cannot connect to server {server}: {}", handshake_failure(.failure))]
    Handshake {
        server: HostPort,
        failure: ConnectionError,
    },
    #[error("no handshake with server {server} within {limit:?}")]
    Timeout { server: HostPort, limit: Duration },
    /// One address of several failed.
    #[error("{attempt}: {source}")]
    Address {
        attempt: Box<Attempt>,
        source: Box<ConnectError>,
    },
    /// `--check` tried every address.
    #[error("no address of server {server} answered: {}", list(.failures))]
    NoneAnswered {
        server: HostPort,
        failures: Vec<(SocketAddr, ConnectError)>,
    },
}

impl ConnectError {
    /// Whether retrying cannot fix it: the handshake ended with a TLS alert, sent by us (the
    /// server's certificate refused: pin, known host, CA) or by the server (our certificate
    /// refused, no common protocol). Both sides' configuration must change first.
    pub fn is_permanent(&self) -> bool {
        self.tls_alert().is_some()
    }

    /// What to do about a failure retrying cannot fix, unless its message says it already
    /// (our own refusal of a pinned or remembered certificate does).
    pub fn fix(&self) -> Option<&'static str> {
        let (failure, alert) = (self.handshake()?, self.tls_alert()?);
        match failure {
            ConnectionError::ConnectionClosed(_) => Some(match alert {
                // no_application_protocol
                120 => {
                    "the server speaks neither quic-tun/2 nor quic-tun: check that \
                     --server-endpoint names a quic-tun server"
                }
                // certificate_required, bad_certificate, unknown_ca: our certificate
                116 | 42 | 48 => {
                    "the server requires a client certificate signed by its --ca-file: give \
                     one with --cert-file/--key-file"
                }
                _ => "the server refused the handshake: its log says why",
            }),
            ConnectionError::TransportError(error) if tls::refusal_in(&error.reason).is_some() => {
                None
            }
            _ => Some(
                "check that --ca-file holds the CA that signed the server's certificate and that \
                 --server-endpoint names a host the certificate is for",
            ),
        }
    }

    /// The failed handshake's error, if the attempt got that far.
    fn handshake(&self) -> Option<&ConnectionError> {
        match self {
            ConnectError::Handshake { failure, .. } => Some(failure),
            ConnectError::Address { source, .. } => source.handshake(),
            _ => None,
        }
    }

    /// The TLS alert that ended the handshake, if one did.
    fn tls_alert(&self) -> Option<u8> {
        let code = match self.handshake()? {
            ConnectionError::TransportError(error) => u64::from(error.code),
            ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
            _ => return None,
        };
        // QUIC carries a TLS alert as the transport error 0x100 + alert (RFC 9001 §4.8).
        match code {
            0x100..=0x1ff => Some((code - 0x100) as u8),
            _ => None,
        }
    }
}

/// Which of the server's addresses an attempt tried, and which the next one tries.
#[derive(Debug)]
pub struct Attempt {
    server: HostPort,
    addr: SocketAddr,
    position: usize,
    count: usize,
    next: SocketAddr,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Attempt {
            server,
            addr,
            position,
            count,
            next,
        } = self;
        write!(
            f,
            "{server} at {addr} ({position} of {count} addresses; the next attempt tries {next})"
        )
    }
}

/// A failed handshake as the user reads it: when this client refused the server's
/// certificate, only the refusal, which says what to do, not the TLS error around it.
fn handshake_failure(error: &ConnectionError) -> String {
    match error {
        ConnectionError::TransportError(transport) => {
            tls::refusal_in(&transport.reason).map_or_else(|| error.to_string(), str::to_owned)
        }
        _ => error.to_string(),
    }
}

fn list(failures: &[(SocketAddr, ConnectError)]) -> String {
    let each: Vec<String> = failures.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    each.join("; ")
}

/// A server the client may use, as written: known hosts are keyed by this text (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEndpoint {
    /// The text as the user wrote it.
    pub given: String,
    pub address: HostPort,
}

impl From<HostPort> for ServerEndpoint {
    fn from(address: HostPort) -> Self {
        ServerEndpoint {
            given: address.to_string(),
            address,
        }
    }
}

impl From<SocketAddr> for ServerEndpoint {
    fn from(addr: SocketAddr) -> Self {
        HostPort::from(addr).into()
    }
}

/// The address, as errors and log lines name the server.
impl std::fmt::Display for ServerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.address.fmt(f)
    }
}

/// One server and how to connect to it: its own QUIC settings, since each is checked
/// against its own known host.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub endpoint: ServerEndpoint,
    pub quic: quinn::ClientConfig,
    /// The transport for each path (shared by all servers).
    pub transports: Arc<PathTransports>,
}

/// Settings of the connector.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// The servers in the order given; at least one.
    pub servers: Vec<ServerSettings>,
    pub handshake_timeout: Duration,
    pub max_backoff: Duration,
}

/// Makes connections to the servers one attempt at a time, from the client's [`Sockets`]: the
/// supervisor's reconnections and the client's one-shot check (`--check`) alike.
///
/// Each attempt goes to one server, the current one; after a failure the current one is the
/// next in the list (SPEC §9, §12), so the next attempt never goes back to the server that
/// just failed while there is another, and a server that answers stays current.
///
/// A server name may resolve to several addresses (an AAAA and an A record, say), not all of
/// them reachable from here. Each attempt to a server uses one: the one that worked last, or
/// after a failure the next one in the list, so a dead first address costs one attempt, not all.
pub struct Dialer {
    servers: Vec<Target>,
    /// Index of the server the next attempt goes to.
    current: usize,
    handshake_timeout: Duration,
    sockets: Arc<Sockets>,
    registry: Arc<ConnectionRegistry>,
}

/// A server and where its next attempt starts.
struct Target {
    settings: ServerSettings,
    /// Index into the server's addresses for its next attempt.
    next: usize,
}

impl Dialer {
    /// A dialer counting handshake failures in `registry`. No socket is opened yet.
    pub fn new(config: ConnectorConfig, registry: Arc<ConnectionRegistry>) -> Dialer {
        let servers = config
            .servers
            .into_iter()
            .map(|settings| Target { settings, next: 0 })
            .collect();
        Dialer {
            servers,
            current: 0,
            handshake_timeout: config.handshake_timeout,
            sockets: Arc::default(),
            registry,
        }
    }

    /// The client's UDP sockets, to move them when the network changes.
    pub fn sockets(&self) -> Arc<Sockets> {
        self.sockets.clone()
    }

    /// How many servers there are to choose from.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// The server the next attempt goes to.
    pub fn current(&self) -> &ServerEndpoint {
        &self.servers[self.current].settings.endpoint
    }

    /// Its place in the list, from 0.
    pub fn current_index(&self) -> usize {
        self.current
    }

    /// Where the connections made are counted.
    pub fn registry(&self) -> &Arc<ConnectionRegistry> {
        &self.registry
    }

    /// The next attempt goes to the next server: after a failure, or when the connection
    /// made to the current one was lost.
    pub fn switch(&mut self) {
        self.current = (self.current + 1) % self.servers.len();
    }

    /// One attempt to the current server: resolves it and completes the handshake within the
    /// time-out. After a failure the next attempt goes to the next server.
    pub async fn connect(&mut self) -> Result<Connection, ConnectError> {
        debug!(server = %self.current(), "connecting to server");
        let attempt = async {
            let addrs = self.resolve(self.current).await?;
            self.connect_among(&addrs).await
        };
        let result = attempt.await;
        if result.is_err() {
            self.switch();
        }
        result
    }

    /// Tries each address of the server at `index` in turn until one completes a handshake:
    /// for the one-shot check, which has no next attempt.
    pub async fn connect_any(&mut self, index: usize) -> Result<Connection, ConnectError> {
        self.current = index;
        let addrs = self.resolve(index).await?;
        self.try_each(&addrs).await
    }

    fn server(&self) -> &HostPort {
        &self.current().address
    }

    async fn resolve(&self, index: usize) -> Result<Vec<SocketAddr>, ConnectError> {
        let server = &self.servers[index].settings.endpoint.address;
        server
            .resolve()
            .await
            .map_err(|source| ConnectError::Resolve {
                server: server.clone(),
                source,
            })
    }

    async fn try_each(&mut self, addrs: &[SocketAddr]) -> Result<Connection, ConnectError> {
        if addrs.len() <= 1 {
            return self.connect_among(addrs).await;
        }
        let mut failures = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            match self.connect_to(addr).await {
                Ok(connection) => return Ok(connection),
                Err(error) => failures.push((addr, error)),
            }
        }
        Err(ConnectError::NoneAnswered {
            server: self.server().clone(),
            failures,
        })
    }

    /// One attempt to one of `addrs`, the current server's addresses (see [`Dialer`]).
    async fn connect_among(&mut self, addrs: &[SocketAddr]) -> Result<Connection, ConnectError> {
        let server = self.server().clone();
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress { server });
        }
        let index = self.servers[self.current].next % addrs.len();
        match self.connect_to(addrs[index]).await {
            Ok(connection) => {
                self.servers[self.current].next = index;
                Ok(connection)
            }
            Err(error) if addrs.len() > 1 => {
                let next = index + 1;
                self.servers[self.current].next = next;
                Err(ConnectError::Address {
                    attempt: Box::new(Attempt {
                        server,
                        addr: addrs[index],
                        position: index + 1,
                        count: addrs.len(),
                        next: addrs[next % addrs.len()],
                    }),
                    source: Box::new(error),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Completes a handshake with the current server at `addr` within the time-out.
    async fn connect_to(&mut self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        let settings = &self.servers[self.current].settings;
        let server = settings.endpoint.address.clone();
        let name = match &server.host {
            Host::Name(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        };
        let mut quic = settings.quic.clone();
        quic.transport_config(settings.transports.towards(addr));
        let connecting = self
            .sockets
            .endpoint_for(addr)
            .map_err(ConnectError::Socket)?
            .connect_with(quic, addr, &name)
            .map_err(|source| ConnectError::Start {
                server: server.clone(),
                source,
            })?;
        let limit = self.handshake_timeout;
        let connection = match self.registry.handshake(connecting, limit).await {
            Ok(connection) => connection,
            Err(HandshakeFailure::Failed(source)) => {
                return Err(ConnectError::Handshake {
                    server,
                    failure: source,
                });
            }
            Err(HandshakeFailure::TimedOut(limit)) => {
                return Err(ConnectError::Timeout { server, limit });
            }
        };
        info!(
            server = %server,
            remote_endpoint = %addr,
            fingerprint = %tls::peer_fingerprint(&connection).map_or_else(|| "-".into(), |f| f.to_string()),
            protocol = %Protocol::of(&connection).describe(),
            rtt = ?connection.rtt(),
            "connected to server"
        );
        Ok(connection)
    }

    /// Waits up to `bound` for closed connections to finish closing, so the server hears of
    /// it before the process exits.
    pub async fn wait_idle(&self, bound: Duration) {
        self.sockets.wait_idle(bound).await;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::quic;
    use crate::tls::Verification;

    /// A server whose name resolves to two addresses, the first with nothing behind it (here
    /// IPv6, as when a host has an AAAA record but no IPv6 route): the first attempt fails on
    /// it and says what the next one tries, the next attempt connects to the second address
    /// from an endpoint of the other family, and later attempts stay with it.
    /// A QUIC server on loopback that accepts every connection and holds it until closed.
    fn live_server() -> SocketAddr {
        let server = quic::loopback_server();
        let live = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(connection) = incoming.await {
                        connection.closed().await;
                    }
                });
            }
        });
        live
    }

    /// A connector's settings for `servers`, without a certificate check, with a short
    /// handshake time-out.
    fn config(servers: &[ServerEndpoint]) -> ConnectorConfig {
        let quic = crate::client::quic_config(&Verification::Insecure, None).unwrap();
        let transports = Arc::new(PathTransports::new(quic::TransportOptions::default()).unwrap());
        let servers = servers
            .iter()
            .map(|endpoint| ServerSettings {
                endpoint: endpoint.clone(),
                quic: quic.clone(),
                transports: transports.clone(),
            })
            .collect();
        ConnectorConfig {
            servers,
            handshake_timeout: Duration::from_millis(300),
            max_backoff: Duration::from_secs(1),
        }
    }

    /// Two servers, the first with nothing answering behind it (a bound socket that reads
    /// nothing): the first attempt fails there, the next goes to the second server and
    /// connects, later attempts stay with it, and after it is lost the next goes back to the
    /// first.
    #[tokio::test]
    async fn after_a_failure_the_next_attempt_goes_to_the_next_server() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = ServerEndpoint::from(silent.local_addr().unwrap());
        let live = ServerEndpoint::from(live_server());
        let mut dialer = Dialer::new(config(&[dead.clone(), live.clone()]), Arc::default());
        assert_eq!(dialer.current(), &dead);
        let error = dialer.connect().await.unwrap_err();
        assert!(error.to_string().contains(&dead.given), "{error}");
        assert_eq!(dialer.current(), &live);
        for _ in 0..2 {
            let connection = dialer.connect().await.unwrap();
            assert_eq!(connection.remote_address().to_string(), live.given);
            assert_eq!(dialer.current(), &live);
            connection.close(0u32.into(), b"");
        }
        dialer.switch();
        assert_eq!(dialer.current(), &dead);
    }

    /// A server whose name resolves to two addresses, the first with nothing behind it (here
    /// IPv6, as when a host has an AAAA record but no IPv6 route): the first attempt fails on
    /// it and says what the next one tries, the next attempt connects to the second address
    /// from an endpoint of the other family, and later attempts stay with it.
    #[tokio::test]
    async fn a_dead_first_address_costs_one_attempt() {
        let live = live_server();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let dead = SocketAddr::from((Ipv6Addr::LOCALHOST, live.port()));
        let server = ServerEndpoint::from(HostPort {
            host: Host::Name("tunnel.test".into()),
            port: live.port(),
        });
        let mut dialer = Dialer::new(config(std::slice::from_ref(&server)), Arc::default());
        let addrs = [dead, live];

        let error = dialer.connect_among(&addrs).await.unwrap_err();
        let message = error.to_string();
        let expected = format!(
            "tunnel.test:{} at {dead} (1 of 2 addresses; the next attempt tries {live}): ",
            live.port()
        );
        assert!(message.starts_with(&expected), "{message}");

        let connection = dialer.connect_among(&addrs).await.unwrap();
        assert_eq!(connection.remote_address(), live);
        connection.close(0u32.into(), b"");
        let connection = dialer.connect_among(&addrs).await.unwrap();
        assert_eq!(connection.remote_address(), live);
        connection.close(0u32.into(), b"");

        // The one-shot check tries both addresses in one call, and names each when none
        // answers.
        let mut check = Dialer::new(config(&[server]), Arc::default());
        let connection = check.try_each(&addrs).await.unwrap();
        assert_eq!(connection.remote_address(), live);
        connection.close(0u32.into(), b"");
        let also_dead = std::net::UdpSocket::bind(listen)
            .and_then(|socket| socket.local_addr())
            .unwrap(); // closed again: nothing answers there
        let error = check.try_each(&[dead, also_dead]).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "no address of server tunnel.test:{} answered: {dead}: ",
                live.port()
            )) && message.contains(&format!("; {also_dead}: ")),
            "{message}"
        );
    }
}
