//! The release quictun-server under test, its REST API and its memory.
//!
//! The server listens on 127.0.0.1 with its REST API on a port the OS picks
//! (`--httpd-listen-on 127.0.0.1:0`), read back from its log line `REST API ready listen=…`.
//! Its log goes to a file, so a flood of log lines can never block it on a full pipe.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::process::{TempDir, free_port, rss_kib, stop};

/// A running quictun-server, ended on drop.
pub struct ServerProcess {
    /// The QUIC port.
    pub addr: SocketAddr,
    /// The REST API.
    pub api: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl ServerProcess {
    /// Starts the server allowing `targets`, with `extra` flags, and waits until both its
    /// QUIC endpoint and its REST API are ready.
    pub fn start(bin_dir: &Path, targets: &[SocketAddr], extra: &[&str]) -> Result<Self, String> {
        let dir = TempDir::named("hostile-server")?;
        let addr = free_port(true)?;
        let log = dir.0.join("server.log");
        let log_file = fs::File::create(&log).map_err(|e| format!("cannot create log: {e}"))?;
        let path = bin_dir.join("quictun-server");
        let mut command = Command::new(&path);
        command
            .args(["--listen-on", &addr.to_string()])
            .args(["--httpd-listen-on", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.0.join("state"))
            .args(["--log-level", "info"]);
        for target in targets {
            command.args(["--allow-target", &target.to_string()]);
        }
        let child = command
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {} (cargo build --release): {e}", path.display()))?;
        let mut server = ServerProcess {
            addr,
            api: addr,
            child,
            dir,
        };
        server.api = server.wait_ready(&log)?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server without a word (SIGKILL), as a crashed machine would leave it.
    pub fn kill(&mut self) {
        stop([&mut self.child]);
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).unwrap_or(0)
    }

    /// `quictun_handshake_failures_total` by reason, from `GET /metrics`.
    pub fn handshake_failures(&self) -> Result<BTreeMap<String, u64>, String> {
        let (_, body) = http_get(self.api, "/metrics", Duration::from_secs(5))?;
        Ok(counters(
            &body,
            "quictun_handshake_failures_total",
            "reason",
        ))
    }

    /// How many tunnels the server lists for each client connection (`GET /tunnels`), most
    /// first.
    pub fn tunnels_by_connection(&self) -> Result<Vec<usize>, String> {
        let (_, body) = http_get(self.api, "/tunnels", Duration::from_secs(5))?;
        let mut by_remote: BTreeMap<&str, usize> = BTreeMap::new();
        for field in body.split("\"remoteEndpointAddr\":\"").skip(1) {
            let remote = field.split('"').next().unwrap_or_default();
            *by_remote.entry(remote).or_default() += 1;
        }
        let mut counts: Vec<usize> = by_remote.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        Ok(counts)
    }

    /// A counter without labels, or with one label, from `GET /metrics`.
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> Result<u64, String> {
        let (_, body) = http_get(self.api, "/metrics", Duration::from_secs(5))?;
        let wanted = match label {
            Some((key, value)) => format!("{name}{{{key}=\"{value}\"}} "),
            None => format!("{name} "),
        };
        Ok(body
            .lines()
            .find_map(|line| line.strip_prefix(&wanted)?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Waits for the log lines of a ready server; the REST API's bound address.
    fn wait_ready(&mut self, log: &Path) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            let api = text
                .lines()
                .filter(|line| line.contains("REST API ready"))
                .find_map(|line| line.split("listen=").nth(1)?.split_whitespace().next())
                .and_then(|addr| addr.parse().ok());
            if let (Some(api), true) = (api, text.contains("server ready")) {
                return Ok(api);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "quictun-server exited ({status}): {}",
                    last_line(&text)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("quictun-server not ready: {}", last_line(&text)));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's state directory's parent: a scratch directory for the phase.
    pub fn scratch(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        stop([&mut self.child]);
    }
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("no log")
}

/// `name{label="value"} count` lines of a Prometheus text body, by label value.
fn counters(body: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{name}{{{label}=\"");
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (value, count) = rest.split_once("\"}")?;
            Some((value.to_string(), count.trim().parse().ok()?))
        })
        .collect()
}

/// One `GET path` on a new connection: the status code and the body.
pub fn http_get(api: SocketAddr, path: &str, limit: Duration) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&api, limit).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {:?}", text.lines().next()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// A process's RSS sampled every 100 ms on a thread of its own.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<u64>>,
}

const SAMPLES_PER_SECOND: usize = 10;

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid).unwrap_or(0));
                let next =
                    Duration::from_secs(1) * samples.len() as u32 / SAMPLES_PER_SECOND as u32;
                thread::sleep(next.saturating_sub(start.elapsed()));
            }
            samples
        });
        RssSampler { stop, thread }
    }

    /// The highest RSS of each second, in KiB.
    pub fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default();
        samples
            .chunks(SAMPLES_PER_SECOND)
            .map(|second| second.iter().copied().max().unwrap_or(0))
            .collect()
    }
}

/// Server memory over a phase, in KiB.
#[derive(Debug, Clone, Default)]
pub struct Rss {
    pub before: u64,
    pub peak: u64,
    pub after: u64,
    /// The highest RSS of each second from the start of the attack to "after".
    pub per_second: Vec<u64>,
}

impl Rss {
    pub fn growth_mib(&self) -> f64 {
        self.peak.saturating_sub(self.before) as f64 / 1024.0
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"before_kib\":{},\"peak_kib\":{},\"after_kib\":{},\"growth_mib\":{:.1},\
             \"per_second_kib\":[{}]}}",
            self.before,
            self.peak,
            self.after,
            self.growth_mib(),
            self.per_second
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    pub fn text(&self) -> String {
        format!(
            "RSS {:.1} / {:.1} / {:.1} MiB (before / peak / after), growth {:.1} MiB",
            self.before as f64 / 1024.0,
            self.peak as f64 / 1024.0,
            self.after as f64 / 1024.0,
            self.growth_mib()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_label() {
        let body = "# TYPE quictun_handshake_failures_total counter\n\
                    quictun_handshake_failures_total{reason=\"timeout\"} 3\n\
                    quictun_handshake_failures_total{reason=\"too_many_handshakes\"} 1200\n\
                    quictun_connections_open 1\n";
        let map = counters(body, "quictun_handshake_failures_total", "reason");
        assert_eq!(map.len(), 2);
        assert_eq!(map["timeout"], 3);
        assert_eq!(map["too_many_handshakes"], 1200);
    }
}
