//! The several-servers suite (`quictun-bench --suite cluster`, SPEC §12): the figures of
//! docs/SCALING.md, with the release binaries on loopback and a real nginx (stream module) in
//! front of the instances, as the reference deployment runs them.
//!
//! 1. Recovery: three instances behind nginx, one client; the instance holding the client is
//!    killed (`kill -9`), and the time until the client's next tunnel echoes is measured, in
//!    fresh clusters, with the instances sharing a cluster key (a stateless reset from the
//!    instance nginx picks next) and without (the client waits for its idle time-out). The
//!    client runs with `--keep-alive 1s --idle-timeout 5s`.
//! 2. Throughput: one tunnel's upload straight to an instance and through nginx; the
//!    endpoints' and nginx's own CPU per GiB.
//! 3. Cost of a client: the instance's memory and CPU for N clients, each holding 10 idle
//!    tunnels, from which docs/SCALING.md sizes a cluster.
//!
//! Every process started here is ended on drop, by its pid.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cc::report::quantile;
use crate::hostile::good::{tunnel_ttfb, wait_tunnel};
use crate::hostile::server::{ServerProcess, http_get};
use crate::hostile::stall::ClientProcess;
use crate::mode;
use crate::process::{TempDir, free_port, rss_kib, stop};

const NGINX: &str = "/usr/sbin/nginx";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// The client's settings in the recovery rounds.
const CLIENT_TIMERS: [&str; 4] = ["--keep-alive", "1s", "--idle-timeout", "5s"];
/// Idle tunnels each client holds in the cost phase.
const TUNNELS_PER_CLIENT: usize = 10;

/// What the suite needs.
pub struct Options {
    /// Where quictun-server and quictun-client are.
    pub bin_dir: PathBuf,
    /// A target on 127.0.0.1 that echoes after quictun-bench's echo header.
    pub echo_target: SocketAddr,
    /// Few rounds and small transfers, for a smoke run.
    pub quick: bool,
}

/// Everything the suite measured.
pub struct Report {
    /// Milliseconds from the kill to the next echo, with a shared cluster key.
    pub recovery_shared_ms: Vec<f64>,
    /// The same without one.
    pub recovery_separate_ms: Vec<f64>,
    pub direct: Throughput,
    pub balanced: Throughput,
    pub cost: ClientCost,
}

/// One tunnel's upload.
pub struct Throughput {
    pub gbit_s: f64,
    /// quictun-client and quictun-server together.
    pub endpoints_cpu_s_per_gib: f64,
    /// nginx's master and worker (none straight to the instance).
    pub balancer_cpu_s_per_gib: Option<f64>,
}

/// What clients cost one instance.
pub struct ClientCost {
    pub clients: usize,
    pub tunnels: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// The instance's CPU while the clients connected and opened their tunnels.
    pub cpu_s: f64,
}

pub fn run(options: &Options) -> Result<Report, String> {
    for needed in [NGINX, STREAM_MODULE] {
        if !Path::new(needed).exists() {
            return Err(format!(
                "{needed} missing (Debian: apt-get install nginx-light libnginx-mod-stream)"
            ));
        }
    }
    let secrets = Secrets::new()?;
    let rounds = if options.quick { 2 } else { 10 };
    let mut recovery_shared_ms = Vec::new();
    let mut recovery_separate_ms = Vec::new();
    for round in 0..rounds {
        let shared = recovery(options, &secrets, true)?;
        let separate = recovery(options, &secrets, false)?;
        println!(
            "recovery round {}: shared key {shared:.0} ms, own keys {separate:.0} ms",
            round + 1
        );
        recovery_shared_ms.push(shared);
        recovery_separate_ms.push(separate);
    }
    let bytes: u64 = if options.quick { 64 << 20 } else { 2 << 30 };
    let (direct, balanced) = throughput(options, &secrets, bytes)?;
    let clients = if options.quick { 4 } else { 50 };
    let cost = client_cost(options, &secrets, clients)?;
    Ok(Report {
        recovery_shared_ms,
        recovery_separate_ms,
        direct,
        balanced,
        cost,
    })
}

/// The cluster's shared secrets: the certificate and key of the test fixtures, and a cluster
/// key file readable by its owner only.
struct Secrets {
    cert: PathBuf,
    key: PathBuf,
    cluster_key: PathBuf,
    _dir: TempDir,
}

impl Secrets {
    fn new() -> Result<Secrets, String> {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures/keys");
        let dir = TempDir::named("cluster-secrets")?;
        let cluster_key = dir.0.join("cluster.key");
        let mut seed = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| format!("no random bytes: {e}"))?;
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        fs::write(&cluster_key, hex + "\n").map_err(|e| format!("cluster key: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&cluster_key, fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cluster key: {e}"))?;
        Ok(Secrets {
            cert: keys.join("ec-sec1.pem"),
            key: keys.join("ec-sec1.key"),
            cluster_key,
            _dir: dir,
        })
    }

    /// Instance `id`, sharing the certificate, and the cluster key when `shared`.
    fn instance(&self, options: &Options, id: u8, shared: bool) -> Result<ServerProcess, String> {
        let id = id.to_string();
        let (cert, key) = (
            self.cert.display().to_string(),
            self.key.display().to_string(),
        );
        let cluster_key = self.cluster_key.display().to_string();
        let mut extra = vec!["--server-id", &id, "--cert-file", &cert, "--key-file", &key];
        if shared {
            extra.extend(["--cluster-key-file", &cluster_key]);
        }
        ServerProcess::start(&options.bin_dir, &[options.echo_target], &extra)
    }
}

/// One recovery round in a fresh cluster: milliseconds from the kill to the next echo.
fn recovery(options: &Options, secrets: &Secrets, shared: bool) -> Result<f64, String> {
    let mut instances = (1..=3)
        .map(|id| secrets.instance(options, id, shared))
        .collect::<Result<Vec<_>, _>>()?;
    let upstreams: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let nginx = Nginx::start(&upstreams)?;
    let client = ClientProcess::start_with(
        &options.bin_dir,
        nginx.addr,
        options.echo_target,
        "cluster-client",
        &CLIENT_TIMERS,
    )?;
    wait_tunnel(client.app)?;
    let serving = instances
        .iter()
        .position(|i| gauge(i.api, "quictun_connections_open") == Some(1))
        .ok_or("no instance holds the client's connection")?;
    instances[serving].kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    loop {
        match tunnel_ttfb(client.app) {
            Ok(_) => return Ok(killed.elapsed().as_secs_f64() * 1000.0),
            Err(error) if Instant::now() > deadline => {
                return Err(format!("no tunnel 60 s after the kill: {error}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One tunnel's upload of `bytes`, straight to an instance, then through nginx.
fn throughput(
    options: &Options,
    secrets: &Secrets,
    bytes: u64,
) -> Result<(Throughput, Throughput), String> {
    let instance = secrets.instance(options, 1, true)?;
    let nginx = Nginx::start(&[instance.addr])?;
    let mut measured = Vec::new();
    for (server, balancer) in [(instance.addr, None), (nginx.addr, Some(&nginx))] {
        let client = ClientProcess::start(
            &options.bin_dir,
            server,
            options.echo_target,
            "cluster-bulk",
        )?;
        wait_tunnel(client.app)?;
        let endpoints = [client.pid(), instance.pid()];
        let balancer_pids = balancer.map(Nginx::pids).unwrap_or_default();
        let (cpu_before, lb_before) = (cpu_seconds(&endpoints), cpu_seconds(&balancer_pids));
        let started = Instant::now();
        upload(client.app, bytes).map_err(|e| format!("upload: {e}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let gib = bytes as f64 / f64::from(1u32 << 30);
        measured.push(Throughput {
            gbit_s: bytes as f64 * 8.0 / seconds / 1e9,
            endpoints_cpu_s_per_gib: (cpu_seconds(&endpoints) - cpu_before) / gib,
            balancer_cpu_s_per_gib: balancer
                .map(|_| (cpu_seconds(&balancer_pids) - lb_before) / gib),
        });
    }
    let balanced = measured.pop().ok_or("no measurement")?;
    let direct = measured.pop().ok_or("no measurement")?;
    Ok((direct, balanced))
}

/// The instance's memory and CPU for `clients` clients with [`TUNNELS_PER_CLIENT`] idle
/// tunnels each.
fn client_cost(options: &Options, secrets: &Secrets, clients: usize) -> Result<ClientCost, String> {
    let instance = secrets.instance(options, 1, true)?;
    thread::sleep(Duration::from_millis(500));
    let rss_before_kib = rss_kib(instance.pid()).unwrap_or(0);
    let cpu_before = cpu_seconds(&[instance.pid()]);
    let mut processes = Vec::new();
    let mut held = Vec::new();
    for n in 0..clients {
        let name = format!("cluster-cost-{n}");
        let client =
            ClientProcess::start(&options.bin_dir, instance.addr, options.echo_target, &name)?;
        wait_tunnel(client.app)?;
        for _ in 0..TUNNELS_PER_CLIENT {
            held.push(idle_tunnel(client.app).map_err(|e| format!("idle tunnel: {e}"))?);
        }
        processes.push(client);
    }
    let tunnels = held.len();
    let listed = wait_for(Duration::from_secs(20), || {
        gauge(instance.api, "quictun_tunnels_open") == Some(tunnels as u64)
    });
    if !listed {
        return Err(format!("the instance does not list {tunnels} tunnels"));
    }
    let cpu_s = cpu_seconds(&[instance.pid()]) - cpu_before;
    thread::sleep(Duration::from_millis(500));
    let rss_after_kib = rss_kib(instance.pid()).unwrap_or(0);
    drop((held, processes));
    Ok(ClientCost {
        clients,
        tunnels,
        rss_before_kib,
        rss_after_kib,
        cpu_s,
    })
}

/// A tunnel that has echoed one byte and then stays open, idle.
fn idle_tunnel(app: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(app)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&[mode::ECHO, 0, 0, 0, 0, 0, 0, 0, 0, b'x'])?;
    stream.read_exact(&mut [0u8; 1])?;
    Ok(stream)
}

/// Sends `bytes` to the target's sink through `app` and waits for its end.
fn upload(app: SocketAddr, bytes: u64) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(app)?;
    let mut header = [0u8; 9];
    header[0] = mode::SINK;
    header[1..].copy_from_slice(&bytes.to_be_bytes());
    stream.write_all(&header)?;
    let buf = vec![0u8; 256 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    // The sink closes once it has read everything.
    stream.read_to_end(&mut Vec::new())?;
    Ok(())
}

/// A gauge or counter of the instance's `/metrics`, whatever its labels (one series).
fn gauge(api: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = http_get(api, "/metrics", Duration::from_secs(5)).ok()?;
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.trim().parse().ok()
    })
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// User and system CPU seconds of processes (clock ticks at 100 Hz).
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name, which ends with the last ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

/// nginx in the foreground balancing UDP over the instances by each client's address and
/// port, with the reference configuration of docs/SCALING.md; ended on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Nginx {
    fn start(upstreams: &[SocketAddr]) -> Result<Nginx, String> {
        let dir = TempDir::named("cluster-nginx")?;
        let addr = free_port(true)?;
        let servers: String = upstreams
            .iter()
            .map(|u| format!("        server {u} max_fails=1 fail_timeout=30s;\n"))
            .collect();
        let conf = format!(
            "load_module {STREAM_MODULE};\n\
             worker_processes 1;\n\
             pid {pid};\n\
             events {{ worker_connections 4096; }}\n\
             stream {{\n\
             \x20   upstream quictun {{\n\
             \x20       hash $remote_addr$remote_port consistent;\n\
             {servers}\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen {addr} udp;\n\
             \x20       proxy_pass quictun;\n\
             \x20       proxy_timeout 60s;\n\
             \x20   }}\n\
             }}\n",
            pid = dir.0.join("nginx.pid").display(),
        );
        let conf_path = dir.0.join("nginx.conf");
        fs::write(&conf_path, conf).map_err(|e| format!("nginx.conf: {e}"))?;
        let child = Command::new(NGINX)
            // A process group of its own, so its workers can be stopped with it.
            .process_group(0)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {NGINX}: {e}"))?;
        let nginx = Nginx {
            addr,
            child,
            _dir: dir,
        };
        // Ready once its worker runs.
        if !wait_for(Duration::from_secs(10), || nginx.pids().len() > 1) {
            return Err("nginx did not start its worker".into());
        }
        Ok(nginx)
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let children = fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM: the master stops its workers), then SIGKILL to the whole
    /// group in case the master could not.
    fn drop(&mut self) {
        let group = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &group]).status();
        let stopped = wait_for(Duration::from_secs(2), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
        stop([&mut self.child]);
    }
}

impl Report {
    pub fn table(&self) -> String {
        let stats = |v: &[f64]| {
            format!(
                "median {:.0} ms, min {:.0}, max {:.0} ({} rounds)",
                quantile(v, 0.5).unwrap_or(f64::NAN),
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(0.0, f64::max),
                v.len()
            )
        };
        let row = |name: &str, t: &Throughput| {
            format!(
                "{name:<22} {:>6.2} Gbit/s  endpoints {:.2} CPU s/GiB{}\n",
                t.gbit_s,
                t.endpoints_cpu_s_per_gib,
                t.balancer_cpu_s_per_gib
                    .map(|b| format!("  nginx {b:.2} CPU s/GiB"))
                    .unwrap_or_default()
            )
        };
        let cost = &self.cost;
        let grown = cost.rss_after_kib.saturating_sub(cost.rss_before_kib);
        format!(
            "recovery after kill -9 of the client's instance (client {}):\n\
             \x20 shared cluster key: {}\n\
             \x20 own keys:           {}\n\
             one tunnel's upload:\n{}{}\
             {} clients x {} idle tunnels on one instance: RSS {} -> {} KiB \
             (+{:.1} KiB per client), CPU {:.2} s ({:.1} ms per client)\n",
            CLIENT_TIMERS.join(" "),
            stats(&self.recovery_shared_ms),
            stats(&self.recovery_separate_ms),
            row("  straight", &self.direct),
            row("  through nginx", &self.balanced),
            cost.clients,
            TUNNELS_PER_CLIENT,
            cost.rss_before_kib,
            cost.rss_after_kib,
            grown as f64 / cost.clients as f64,
            cost.cpu_s,
            cost.cpu_s * 1000.0 / cost.clients as f64,
        )
    }

    pub fn json(&self, context: &str) -> String {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let throughput = |t: &Throughput| {
            format!(
                "{{\"gbit_s\":{:.3},\"endpoints_cpu_s_per_gib\":{:.3},\"balancer_cpu_s_per_gib\":{}}}",
                t.gbit_s,
                t.endpoints_cpu_s_per_gib,
                t.balancer_cpu_s_per_gib
                    .map_or("null".into(), |b| format!("{b:.3}"))
            )
        };
        let cost = &self.cost;
        format!(
            "{{{context},\"client_timers\":\"{}\",\"recovery_shared_ms\":[{}],\
             \"recovery_separate_ms\":[{}],\"direct\":{},\"through_nginx\":{},\
             \"cost\":{{\"clients\":{},\"tunnels\":{},\"rss_before_kib\":{},\
             \"rss_after_kib\":{},\"cpu_s\":{:.2}}}}}\n",
            CLIENT_TIMERS.join(" "),
            list(&self.recovery_shared_ms),
            list(&self.recovery_separate_ms),
            throughput(&self.direct),
            throughput(&self.balanced),
            cost.clients,
            cost.tunnels,
            cost.rss_before_kib,
            cost.rss_after_kib,
            cost.cpu_s
        )
    }
}
