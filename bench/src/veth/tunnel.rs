//! The tunnel across the veth pair: the release quictun-server in namespace B and
//! quictun-client in namespace A (their plugins found next to the binaries), each with its
//! REST API on its own namespace's loopback, its log in a scratch directory; both ended on
//! drop by their pids.

use std::fmt::Display;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Child;

use super::pair::{ADDR_B, VethPair};
use crate::hostile::good::wait_tunnel;
use crate::process::{TempDir, spawn_endpoint as spawn, stop};
use crate::rest;

/// The server's QUIC port on B's end of the pair.
const QUIC_PORT: u16 = 7500;
/// The client's listener, on A's loopback.
const APP_PORT: u16 = 6500;
/// The REST APIs, each on its own namespace's loopback.
const SERVER_API_PORT: u16 = 8086;
const CLIENT_API_PORT: u16 = 8087;

/// A running server and client.
pub struct Tunnel {
    server: Child,
    client: Child,
    dir: TempDir,
}

/// The largest UDP payload each endpoint's connection uses, from its `GET /connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payloads {
    pub client: u16,
    pub server: u16,
}

impl Tunnel {
    /// Starts both endpoints, the client's tokens naming `target` (in B), and waits until a
    /// tunnel echoes a byte.
    pub fn start(pair: &VethPair, bin_dir: &Path, target: SocketAddr) -> Result<Tunnel, String> {
        let dir = TempDir::named("veth-tunnel")?;
        let quic = SocketAddr::from((ADDR_B, QUIC_PORT)).to_string();
        let program = |name: &str| bin_dir.join(name).to_string_lossy().into_owned();
        let mut server = pair.command_in_b(&program("quictun-server"))?;
        server
            .args(["--listen-on", &quic])
            .args(["--allow-target", &target.to_string()])
            .args(["--httpd-listen-on", &loopback(SERVER_API_PORT).to_string()]);
        let mut server = spawn(server, &dir, "server")?;
        let client = pair
            .command_in_a(&program("quictun-client"))
            .and_then(|mut client| {
                client
                    .args(["--listen-on", &format!("tcp:{}", loopback(APP_PORT))])
                    .args(["--server-endpoint", &quic])
                    .args(["--token-source", &format!("tcp:{target}")])
                    .args(["--httpd-listen-on", &loopback(CLIENT_API_PORT).to_string()])
                    .arg("--insecure-skip-verify");
                spawn(client, &dir, "client")
            });
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                stop([&mut server]);
                return Err(e);
            }
        };
        let tunnel = Tunnel {
            server,
            client,
            dir,
        };
        let app = tunnel.app();
        pair.run_in_a(move || wait_tunnel(app))?
            .map_err(|e| tunnel.failure(e))?;
        Ok(tunnel)
    }

    /// Where an application in namespace A connects.
    pub fn app(&self) -> SocketAddr {
        loopback(APP_PORT)
    }

    /// Client first, then server.
    pub fn pids(&self) -> [u32; 2] {
        [self.client.id(), self.server.id()]
    }

    /// `maxUdpPayload` of the one connection each endpoint lists.
    pub fn payloads(&self, pair: &VethPair) -> Result<Payloads, String> {
        let read = |name: &str, port: u16, ns_b: bool| {
            let get = move || rest::max_udp_payloads(loopback(port));
            let payloads = match ns_b {
                true => pair.run_in_b(get)?,
                false => pair.run_in_a(get)?,
            }
            .map_err(|e| format!("quictun-{name}: {e}"))?;
            match payloads.as_slice() {
                [one] => Ok(*one),
                all => Err(format!(
                    "quictun-{name} lists {} connections, not one",
                    all.len()
                )),
            }
        };
        Ok(Payloads {
            client: read("client", CLIENT_API_PORT, false)?,
            server: read("server", SERVER_API_PORT, true)?,
        })
    }

    /// `what` went wrong, with the end of both endpoints' logs.
    pub fn failure(&self, what: impl Display) -> String {
        let tail = |name: &str| {
            let log =
                fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(3)..].join(" | ")
        };
        format!(
            "{what} (server log: {}; client log: {})",
            tail("server"),
            tail("client")
        )
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        stop([&mut self.client, &mut self.server]);
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
