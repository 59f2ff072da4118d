//! quinn-peer driven from another process: a bare QUIC connection between two quinn-peer
//! processes (bench/src/bin/quinn-peer.rs), the ceiling and floor of any QUIC tunnel, for the
//! measuring tools to compare the tunnel with.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::linkem::netns;
use crate::process::stop;

/// Where quinn-peer is: next to this binary (both are built by `cargo build -p quictun-bench`).
pub fn peer_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("quinn-peer")))
        .unwrap_or_else(|| PathBuf::from("quinn-peer"))
}

/// A bare quinn stream: `quinn-peer server` and `quinn-peer client` (one connection, made
/// once), driven through the client's standard input.
pub struct QuinnPeer {
    server: Child,
    client: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl QuinnPeer {
    /// Both processes on loopback.
    pub fn start(binary: &Path) -> Result<QuinnPeer, String> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        QuinnPeer::start_in(binary, loopback, None, None)
    }

    /// The server listening on `listen` inside network namespace `server_ns`, the client
    /// inside `client_ns` (`None`: this process's namespace).
    pub fn start_in(
        binary: &Path,
        listen: SocketAddr,
        server_ns: Option<&str>,
        client_ns: Option<&str>,
    ) -> Result<QuinnPeer, String> {
        let spawn = |ns: Option<&str>, args: &[&str]| {
            let mut command = match ns {
                Some(ns) => netns::command_in(ns, binary).map_err(|e| e.to_string())?,
                None => Command::new(binary),
            };
            command
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    format!(
                        "cannot run {} (cargo build --release -p quictun-bench): {e}",
                        binary.display()
                    )
                })
        };
        let mut server = spawn(server_ns, &["server", "--listen", &listen.to_string()])?;
        let mut first = String::new();
        if let Some(out) = server.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut first);
        }
        let Some(addr) = first.trim().strip_prefix("listening ").map(str::to_string) else {
            stop([&mut server]);
            return Err(format!("quinn-peer server did not start: {first:?}"));
        };
        let mut client = match spawn(client_ns, &["client", "--server", &addr]) {
            Ok(client) => client,
            Err(e) => {
                stop([&mut server]);
                return Err(e);
            }
        };
        let commands = client.stdin.take().ok_or("no stdin")?;
        let answers = BufReader::new(client.stdout.take().ok_or("no stdout")?);
        let mut peer = QuinnPeer {
            server,
            client,
            commands,
            answers,
        };
        let mut line = String::new();
        peer.answers
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "connected" {
            return Err(format!("quinn-peer client did not connect: {line:?}"));
        }
        Ok(peer)
    }

    /// Sends one command; the numbers of its `ok` answer.
    pub fn ask(&mut self, command: &str) -> io::Result<Vec<f64>> {
        writeln!(self.commands, "{command}")?;
        self.commands.flush()?;
        let mut line = String::new();
        self.answers.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ok") {
            return Err(io::Error::other(format!(
                "quinn-peer: {command}: {:?}",
                line.trim()
            )));
        }
        words
            .map(|w| {
                w.parse()
                    .map_err(|_| io::Error::other(format!("bad number {w:?}")))
            })
            .collect()
    }

    pub fn gbps(&mut self, way: &str, bytes: u64, streams: u64) -> io::Result<f64> {
        let seconds = self.ask(&format!("transfer {way} {bytes} {streams}"))?;
        let seconds = seconds.first().copied().unwrap_or(f64::NAN);
        Ok((bytes / streams * streams) as f64 * 8.0 / seconds / 1e9)
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.client.id(), self.server.id()]
    }
}

impl Drop for QuinnPeer {
    fn drop(&mut self) {
        stop([&mut self.client, &mut self.server]);
    }
}
