//! The client's UDP sockets: one QUIC endpoint per address family, opened on first use and
//! shared by every connection the client makes to its servers.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use quinn::Endpoint;

use crate::lock::lock;
use crate::quic;

/// The client's QUIC endpoints: IPv4 and IPv6, each opened on first use.
#[derive(Debug, Default)]
pub struct Sockets {
    endpoints: Mutex<[Option<Endpoint>; 2]>,
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
