//! The clients' packet sizes while they upload: each client's `maxUdpPayload`, read from its
//! REST API once a second on a thread of its own, keeping the smallest seen.
//!
//! quinn takes a few losses of full-sized packets in a row for a path that stopped carrying
//! them (black-hole detection) and then sends 1,200-byte packets until it probes again a
//! minute later; a client that fell there and climbed back shows it only while it is down.

use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::hostile::stall::ClientProcess;
use crate::rest;

/// How often each client is asked.
const EVERY: Duration = Duration::from_secs(1);

/// A running watch over some clients.
pub struct PayloadWatch {
    stop: Sender<()>,
    thread: JoinHandle<Vec<Option<u16>>>,
}

impl PayloadWatch {
    pub fn start(clients: &[ClientProcess]) -> PayloadWatch {
        let apis: Vec<Option<SocketAddr>> = clients.iter().map(|c| c.api).collect();
        let (stop, stopped) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut smallest = vec![None; apis.len()];
            loop {
                for (seen, api) in smallest.iter_mut().zip(&apis) {
                    if let Some(now) = api.and_then(|a| current(a).ok()) {
                        *seen = Some(seen.map_or(now, |s: u16| s.min(now)));
                    }
                }
                if stopped.recv_timeout(EVERY) != Err(RecvTimeoutError::Timeout) {
                    return smallest;
                }
            }
        });
        PayloadWatch { stop, thread }
    }

    /// Stops watching: the smallest size each client had at a reading (`None`: never read).
    pub fn finish(self) -> Vec<Option<u16>> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

/// Each client's packet size now.
pub fn payloads(clients: &[ClientProcess]) -> Result<Vec<u16>, String> {
    clients
        .iter()
        .enumerate()
        .map(|(n, client)| {
            let api = client.api.ok_or("a client without its REST API")?;
            current(api).map_err(|e| format!("client {n}: {e}"))
        })
        .collect()
}

/// The packet size of the one connection of the client whose REST API is at `api`.
fn current(api: SocketAddr) -> Result<u16, String> {
    let payloads = rest::max_udp_payloads(api)?;
    payloads
        .first()
        .copied()
        .ok_or_else(|| "no connection listed".to_string())
}
