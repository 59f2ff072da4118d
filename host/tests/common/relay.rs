//! A UDP relay on loopback between one QUIC client and a server, standing where a load
//! balancer stands: it forwards every datagram each way, keeps what the client sent, and can
//! be pointed at another server at any moment (as a balancer does once a server died), or
//! right after it passed a Retry on to the client. It sends to every server from one socket,
//! so each server sees the client at the same address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running relay; its tasks end when it is dropped.
pub struct Relay {
    /// Where the client sends: the relay's client-facing socket.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: [JoinHandle<()>; 2],
}

#[derive(Default)]
struct Shared {
    server: Mutex<Option<SocketAddr>>,
    after_retry: Mutex<Option<SocketAddr>>,
    client: Mutex<Option<SocketAddr>>,
    from_client: Mutex<Vec<Vec<u8>>>,
    retries: Mutex<usize>,
}

impl Relay {
    /// A relay to `server`.
    pub async fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let shared = Arc::new(Shared::default());
        *shared.server.lock().unwrap() = Some(server);
        let up = tokio::spawn(client_to_server(
            front.clone(),
            back.clone(),
            shared.clone(),
        ));
        let down = tokio::spawn(server_to_client(back, front.clone(), shared.clone()));
        Relay {
            addr: front.local_addr().unwrap(),
            shared,
            tasks: [up, down],
        }
    }

    /// Sends the client's datagrams to `server` from now on.
    pub fn redirect(&self, server: SocketAddr) {
        *self.shared.server.lock().unwrap() = Some(server);
    }

    /// Sends the client's datagrams to `server` once a Retry has come back, before the client
    /// can answer it.
    pub fn redirect_after_retry(&self, server: SocketAddr) {
        *self.shared.after_retry.lock().unwrap() = Some(server);
    }

    /// Every datagram the client sent so far, in order.
    pub fn sent_by_client(&self) -> Vec<Vec<u8>> {
        self.shared.from_client.lock().unwrap().clone()
    }

    /// Retry packets passed on to the client.
    pub fn retries(&self) -> usize {
        *self.shared.retries.lock().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether a datagram starts with a short-header (1-RTT) packet: the top bit is 0 (RFC 9000
/// §17.3), and its destination connection ID follows at byte 1.
pub fn is_short_header(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0x80 == 0)
}

/// Whether a datagram is a QUIC version 1 Retry: a long header (top bit 1) of type 0b11 (bits
/// 0x30), whatever the fixed bit (RFC 9000 §17.2.5, RFC 9287).
pub fn is_retry(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|b| b & 0x80 != 0 && b & 0x30 == 0x30)
}

async fn client_to_server(front: Arc<UdpSocket>, back: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, client)) = front.recv_from(&mut buf).await {
        *shared.client.lock().unwrap() = Some(client);
        shared.from_client.lock().unwrap().push(buf[..n].to_vec());
        let server = *shared.server.lock().unwrap();
        if let Some(server) = server {
            let _ = back.send_to(&buf[..n], server).await;
        }
    }
}

async fn server_to_client(back: Arc<UdpSocket>, front: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _server)) = back.recv_from(&mut buf).await {
        if is_retry(&buf[..n]) {
            *shared.retries.lock().unwrap() += 1;
            if let Some(next) = shared.after_retry.lock().unwrap().take() {
                *shared.server.lock().unwrap() = Some(next);
            }
        }
        let client = *shared.client.lock().unwrap();
        if let Some(client) = client {
            let _ = front.send_to(&buf[..n], client).await;
        }
    }
}
