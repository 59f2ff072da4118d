//! Connecting to the server, one attempt at a time: the [`Dialer`] the connector's supervisor
//! and `--check` share, and why an attempt failed ([`ConnectError`]), with what retrying can
//! and cannot fix.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint};
use tracing::info;

use crate::quic;
use crate::quic::connections::{ConnectionRegistry, HandshakeFailure};
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

/// Settings of the connector.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub server: HostPort,
    pub quic: quinn::ClientConfig,
    pub handshake_timeout: Duration,
    pub max_backoff: Duration,
}

/// Makes connections to the server one attempt at a time, from one UDP endpoint per address
/// family: the supervisor's reconnections and the client's one-shot check (`--check`) alike.
///
/// A server name may resolve to several addresses (an AAAA and an A record, say), not all of
/// them reachable from here. Each attempt uses one: the one that worked last, or after a
/// failure the next one in the list, so a dead first address costs one attempt, not all.
pub struct Dialer {
    pub(super) config: ConnectorConfig,
    /// IPv4, IPv6; each opened on first use.
    endpoints: [Option<Endpoint>; 2],
    /// Index into the server's addresses for the next attempt.
    next: usize,
    pub(super) registry: Arc<ConnectionRegistry>,
}

impl Dialer {
    /// A dialer counting handshake failures in `registry`. No socket is opened yet.
    pub fn new(config: ConnectorConfig, registry: Arc<ConnectionRegistry>) -> Dialer {
        Dialer {
            config,
            endpoints: [None, None],
            next: 0,
            registry,
        }
    }

    /// One attempt: resolves the server and completes the handshake within the time-out.
    pub async fn connect(&mut self) -> Result<Connection, ConnectError> {
        let addrs = self.resolve().await?;
        self.connect_among(&addrs).await
    }

    /// Tries each of the server's addresses in turn until one completes a handshake: for the
    /// one-shot check, which has no next attempt.
    pub async fn connect_any(&mut self) -> Result<Connection, ConnectError> {
        let addrs = self.resolve().await?;
        self.try_each(&addrs).await
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, ConnectError> {
        let server = &self.config.server;
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
            server: self.config.server.clone(),
            failures,
        })
    }

    /// One attempt to one of `addrs`, the server's addresses (see [`Dialer`]).
    async fn connect_among(&mut self, addrs: &[SocketAddr]) -> Result<Connection, ConnectError> {
        let server = self.config.server.clone();
        if addrs.is_empty() {
            return Err(ConnectError::NoAddress { server });
        }
        let index = self.next % addrs.len();
        match self.connect_to(addrs[index]).await {
            Ok(connection) => {
                self.next = index;
                Ok(connection)
            }
            Err(error) if addrs.len() > 1 => {
                self.next = index + 1;
                Err(ConnectError::Address {
                    attempt: Box::new(Attempt {
                        server,
                        addr: addrs[index],
                        position: index + 1,
                        count: addrs.len(),
                        next: addrs[self.next % addrs.len()],
                    }),
                    source: Box::new(error),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Completes a handshake with the server at `addr` within the time-out.
    async fn connect_to(&mut self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        let server = self.config.server.clone();
        let name = match &server.host {
            Host::Name(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        };
        let connecting = self
            .endpoint_for(addr)?
            .connect_with(self.config.quic.clone(), addr, &name)
            .map_err(|source| ConnectError::Start {
                server: server.clone(),
                source,
            })?;
        let limit = self.config.handshake_timeout;
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
        let idle = async {
            for endpoint in self.endpoints.iter().flatten() {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(bound, idle).await;
    }

    /// The client's UDP endpoint for the server address's family, opened on first use.
    fn endpoint_for(&mut self, server: SocketAddr) -> Result<Endpoint, ConnectError> {
        let (slot, local) = match server {
            SocketAddr::V4(_) => (0, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
            SocketAddr::V6(_) => (1, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))),
        };
        if let Some(endpoint) = &self.endpoints[slot] {
            return Ok(endpoint.clone());
        }
        let endpoint = quic::endpoint(local, None).map_err(ConnectError::Socket)?;
        self.endpoints[slot] = Some(endpoint.clone());
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Identity;
    use crate::tls::{self, Verification};

    /// A server whose name resolves to two addresses, the first with nothing behind it (here
    /// IPv6, as when a host has an AAAA record but no IPv6 route): the first attempt fails on
    /// it and says what the next one tries, the next attempt connects to the second address
    /// from an endpoint of the other family, and later attempts stay with it.
    #[tokio::test]
    async fn a_dead_first_address_costs_one_attempt() {
        let identity = Identity::self_signed(&["localhost"]).unwrap();
        let crypto = tls::server_crypto(identity, tls::ClientAuth::Off).unwrap();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server =
            quic::endpoint(listen, Some(quinn::ServerConfig::with_crypto(crypto))).unwrap();
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
        let dead = SocketAddr::from((Ipv6Addr::LOCALHOST, live.port()));
        let config = ConnectorConfig {
            server: HostPort {
                host: Host::Name("tunnel.test".into()),
                port: live.port(),
            },
            quic: crate::client::quic_config(
                &Verification::Insecure,
                None,
                &quic::TransportOptions::default(),
            )
            .unwrap(),
            handshake_timeout: Duration::from_millis(300),
            max_backoff: Duration::from_secs(1),
        };
        let mut dialer = Dialer::new(config, Arc::default());
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
        let mut check = Dialer::new(dialer.config.clone(), Arc::default());
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
