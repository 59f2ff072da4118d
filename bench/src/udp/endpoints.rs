//! The real tunnel under the UDP suite: the release quictun-server and quictun-client, ended
//! on drop by their pids, their logs kept in a scratch directory and quoted when they fail.
//!
//! On loopback the client serves one UDP listener whose token names the target. On the
//! emulated link the client runs in namespace A with two services from a YAML `services:`
//! list — a UDP listener and a TCP listener for the bulk transfer — on its one QUIC connection
//! to the server in namespace B.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};

use crate::linkem::Link;
use crate::process::{TempDir, free_port, spawn_endpoint, stop};

/// Ports in namespace A (the client's listeners) and B (the server's QUIC endpoint).
const LINK_UDP_PORT: u16 = 6600;
const LINK_TCP_PORT: u16 = 6500;
const LINK_QUIC_PORT: u16 = 7500;

/// A server and a client, with where an application reaches the tunnel.
pub struct Endpoints {
    /// The client's UDP listener.
    pub udp: SocketAddr,
    /// The client's TCP listener, on the link.
    pub tcp: Option<SocketAddr>,
    server: Child,
    client: Child,
    dir: TempDir,
}

impl Endpoints {
    /// Server and client on 127.0.0.1, the client's UDP flows to `target`.
    pub fn loopback(bin_dir: &Path, target: SocketAddr) -> Result<Endpoints, String> {
        let dir = TempDir::named("udp-loopback")?;
        let quic = free_port(true)?;
        let udp = free_port(true)?;
        let mut server = Command::new(bin_dir.join("quictun-server"));
        server.args(["--listen-on", &quic.to_string()]);
        server.args(["--allow-target", &target.to_string()]);
        let server = spawn(server, &dir, "server")?;
        let mut client = Command::new(bin_dir.join("quictun-client"));
        client
            .args(["--listen-on", &format!("udp:{udp}")])
            .args(["--token-source", &format!("udp:{target}")])
            .args(["--server-endpoint", &quic.to_string()]);
        let client = spawn(client, &dir, "client");
        Endpoints::assemble(server, client, dir, udp, None)
    }

    /// Server in namespace B (targets on B's loopback: the UDP target on `udp_port`, the
    /// bulk sink on `tcp_port`), the client in A with a UDP and a TCP service.
    pub fn link(
        link: &Link,
        bin_dir: &Path,
        udp_port: u16,
        tcp_port: u16,
    ) -> Result<Endpoints, String> {
        let dir = TempDir::named("udp-link")?;
        let quic = format!("{}:{LINK_QUIC_PORT}", link.addr_b());
        let [udp_target, tcp_target] = [udp_port, tcp_port].map(|p| format!("127.0.0.1:{p}"));
        let program = |name: &str| bin_dir.join(name).to_string_lossy().into_owned();
        let mut server = link
            .command_in_b(&program("quictun-server"))
            .map_err(|e| e.to_string())?;
        server.args(["--listen-on", &quic]);
        server.args(["--allow-target", &udp_target, "--allow-target", &tcp_target]);
        let server = spawn(server, &dir, "server")?;
        let config = dir.0.join("client.yaml");
        let yaml = format!(
            "services:\n\
             - name: udp\n  listen-on: udp:127.0.0.1:{LINK_UDP_PORT}\n  token-source: udp:{udp_target}\n\
             - name: bulk\n  listen-on: tcp:127.0.0.1:{LINK_TCP_PORT}\n  token-source: tcp:{tcp_target}\n"
        );
        fs::write(&config, yaml).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let client = link
            .command_in_a(&program("quictun-client"))
            .map_err(|e| e.to_string())
            .map(|mut client| {
                client.arg("--config").arg(&config);
                client.args(["--server-endpoint", &quic]);
                client
            })
            .and_then(|client| spawn(client, &dir, "client"));
        let at = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Endpoints::assemble(
            server,
            client,
            dir,
            at(LINK_UDP_PORT),
            Some(at(LINK_TCP_PORT)),
        )
    }

    fn assemble(
        mut server: Child,
        client: Result<Child, String>,
        dir: TempDir,
        udp: SocketAddr,
        tcp: Option<SocketAddr>,
    ) -> Result<Endpoints, String> {
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                stop([&mut server]);
                return Err(e);
            }
        };
        Ok(Endpoints {
            udp,
            tcp,
            server,
            client,
            dir,
        })
    }

    /// Client first, then server.
    pub fn pids(&self) -> [u32; 2] {
        [self.client.id(), self.server.id()]
    }

    /// An error naming an endpoint that has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let exited = [("server", &mut self.server), ("client", &mut self.client)]
            .into_iter()
            .find_map(|(name, child)| Some((name, child.try_wait().ok()??)));
        match exited {
            Some((name, status)) => Err(format!(
                "quictun-{name} exited ({status}): {}",
                self.log_tail(name)
            )),
            None => Ok(()),
        }
    }

    /// The last lines of an endpoint's log (`server` or `client`).
    pub fn log_tail(&self, name: &str) -> String {
        let log = fs::read_to_string(self.dir.0.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        stop([&mut self.client, &mut self.server]);
    }
}

/// Starts an endpoint with the flags both share (REST off, its own state directory, warnings
/// only, the client trusting the server's self-signed certificate), its log in the scratch
/// directory.
fn spawn(mut command: Command, dir: &TempDir, name: &str) -> Result<Child, String> {
    command.args(["--httpd-listen-on", ""]);
    if name == "client" {
        command.arg("--insecure-skip-verify");
    }
    spawn_endpoint(command, dir, name)
}
