//! The client's UDP sockets: one QUIC endpoint per address family, opened on first use and
//! shared by every connection the client makes to its servers.
//!
//! When this host's network changes (a new Wi-Fi, a VPN coming up, a NAT that forgot the
//! mapping), the operator can move them to fresh sockets ([`Sockets::rebind`], SIGUSR1 in the
//! binary): the QUIC connection stays, and the server sees it arrive from a new address (QUIC
//! connection migration, RFC 9000 §9), so the tunnels on it go on.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use quinn::{Endpoint, TokioRuntime};

use crate::lock::lock;
use crate::quic;
use crate::quic::socket::WholeWrites;

/// The client's QUIC endpoints: IPv4 and IPv6, each opened on first use.
#[derive(Debug, Default)]
pub struct Sockets {
    endpoints: Mutex<[Option<Endpoint>; 2]>,
}

/// One endpoint moved to a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub from: SocketAddr,
    pub to: SocketAddr,
}

impl Sockets {
    /// The endpoint for talking to `server`, of its address family, opened on first use.
    pub fn endpoint_for(&self, server: SocketAddr) -> io::Result<Endpoint> {
        let slot = slot(server);
        let mut endpoints = lock(&self.endpoints);
        if let Some(endpoint) = &endpoints[slot] {
            return Ok(endpoint.clone());
        }
        let endpoint = quic::endpoint(unspecified(server), None)?;
        endpoints[slot] = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Moves every open endpoint to a new UDP socket on a port the kernel picks, of the same
    /// family; its connections carry on from there. What moved from where to where; nothing
    /// when no endpoint is open yet. A socket that cannot be opened leaves its endpoint as
    /// it was.
    pub fn rebind(&self) -> io::Result<Vec<Moved>> {
        let endpoints = lock(&self.endpoints).clone();
        let mut moved = Vec::new();
        for endpoint in endpoints.iter().flatten() {
            let from = endpoint.local_addr()?;
            let socket = quic::udp_socket(unspecified(from))?;
            endpoint.rebind_abstract(WholeWrites::wrap(socket, &TokioRuntime)?)?;
            moved.push(Moved {
                from,
                to: endpoint.local_addr()?,
            });
        }
        Ok(moved)
    }

    /// Waits up to `bound` for closed connections to finish closing, so the server hears of
    /// it before the process exits.
    pub async fn wait_idle(&self, bound: Duration) {
        let endpoints = lock(&self.endpoints).clone();
        let idle = async {
            for endpoint in endpoints.iter().flatten() {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(bound, idle).await;
    }
}

fn slot(addr: SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 0,
        SocketAddr::V6(_) => 1,
    }
}

/// The wildcard address of `addr`'s family, port 0.
fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rebinding_moves_each_open_endpoint_to_a_new_port_of_its_family() {
        let sockets = Sockets::default();
        assert_eq!(sockets.rebind().unwrap(), []);
        let endpoint = sockets
            .endpoint_for("127.0.0.1:7500".parse().unwrap())
            .unwrap();
        let before = endpoint.local_addr().unwrap();
        let moved = sockets.rebind().unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].from, before);
        assert!(moved[0].to.is_ipv4() && moved[0].to.ip().is_unspecified());
        assert_ne!(moved[0].to.port(), before.port());
        // The same endpoint, now on the new socket.
        let again = sockets
            .endpoint_for("127.0.0.1:7501".parse().unwrap())
            .unwrap();
        assert_eq!(again.local_addr().unwrap(), moved[0].to);
    }
}
