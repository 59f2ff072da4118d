//! quictun-bench: benchmarks of direct TCP, the tunnel, a bare QUIC stream and (when installed)
//! ssh -L and stunnel, side by side in one run.
//!
//! Loopback suite: spawns the release `quictun-server` and `quictun-client`, `quinn-peer`
//! (a bare quinn stream between two processes with the product's transport settings), runs an
//! in-process target (sink, source and echo on one TCP port; the first byte of a connection
//! picks the mode) and measures throughput, time to first byte, 1 KiB echo round trips, CPU
//! seconds per GiB of each path's processes and the tunnel's memory with open idle tunnels
//! (the application side of those in a helper process, so each process stays within the
//! descriptor limit). Link suite (`--suite link`, needs root): goodput against loss on the
//! emulated 20 ms, 100 Mbit/s link (cc-bench's flows) and time to first byte over it.
//! Hostile suite (`--suite hostile`): the release server under floods of handshakes and
//! pending tokens, tunnels into stalled targets and stalled REST clients
//! (`quictun_bench::hostile`). Cluster suite (`--suite cluster`, needs nginx): instances
//! behind nginx's stream module, recovery after one dies, throughput and the cost of a client
//! (`quictun_bench::cluster`). UDP suite (`--suite udp`): UDP flows through the tunnel on
//! loopback and, unless `--no-link`, on the emulated link beside a bulk TCP tunnel
//! (`quictun_bench::udp`). Interactive suite (`--suite interactive`, needs root): 1 KiB echo
//! round trips through the tunnel and directly on the emulated link, alone and beside a bulk
//! upload, and the tunnel's share against one TCP bbr and one cubic flow
//! (`quictun_bench::interactive`). //! Veth suite (`--suite veth`, root): direct TCP, the tunnel and bare
//! quinn across a kernel veth pair at MTU 1500 and 9000 (`quictun_bench::veth`). Clients
//! suite (`--suite clients`): 50 clients uploading through one server at once, against one
//! alone (`quictun_bench::clients`). Prints a table and writes JSON.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use clap::{Parser, ValueEnum};
use quictun_bench::cc::{self, Scenario, Sender};
use quictun_bench::linkem::{Link, LinkConfig};
use quictun_bench::mode;
use quictun_bench::peer::{QuinnPeer, peer_binary};
use quictun_bench::process::{
    TempDir, cpu_seconds, free_port, machine_busy_seconds, status_kib, stop,
};
use quictun_bench::target::{self, BUF, serve_on};
use quictun_bench::{clients, cluster, hostile, interactive, udp, veth};

#[derive(Parser, Clone)]
#[command(about = "Loopback benchmarks: direct TCP and the tunnel side by side")]
struct Args {
    /// A short smoke run (small transfers, few samples).
    #[arg(long)]
    quick: bool,
    /// Directory holding quictun-server and quictun-client.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the JSON results go [default: bench/results/loopback.json, link.json,
    /// ceiling.json, hostile.json, udp.json, interactive.json, veth.json or clients.json
    /// after the suite].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which measurements: loopback, or the emulated link (needs root, `ip`, /dev/net/tun).
    #[arg(long, value_enum, default_value = "loopback")]
    suite: Suite,
    /// UDP suite: the loopback part only (the emulated-link part needs root).
    #[arg(long)]
    no_link: bool,
    /// Veth suite: the MTUs of the veth pair, each measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "1500,9000")]
    mtus: Vec<u32>,
    /// Clients suite: how many clients upload at once [default: 50, 5 with --quick].
    #[arg(long)]
    clients: Option<usize>,
    /// Internal: hold N idle tunnels through ADDR (the application side of the idle test).
    #[arg(long, hide = true, value_name = "ADDR")]
    idle_helper: Option<SocketAddr>,
    /// Internal: how many tunnels the idle helper opens.
    #[arg(long, hide = true, default_value_t = 0)]
    count: usize,
    /// Internal: run the plain TCP relay in front of ADDR (the two TCP hops without QUIC).
    #[arg(long, hide = true, value_name = "ADDR")]
    tcp_relay_helper: Option<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    Loopback,
    Link,
    /// Only the interleaved rounds of the loopback suite: one connection through the tunnel,
    /// a bare quinn stream and the plain TCP relay.
    Ceiling,
    /// The server under hostile traffic on loopback (about three minutes).
    Hostile,
    /// Several server instances behind nginx (needs nginx and its stream module).
    Cluster,
    /// UDP flows through the tunnel: loopback, then the emulated link (root; about two
    /// minutes in all).
    Udp,
    /// An interactive connection's echo round trips beside a bulk upload on the emulated
    /// link, and sharing the link with Linux TCP (root; about four minutes).
    Interactive,
    /// Direct TCP, the tunnel and bare quinn across a kernel veth pair at each of `--mtus`
    /// (root).
    Veth,
    /// Many clients of one server uploading at once, against one alone (about three
    /// minutes).
    Clients,
    /// Issue 22's measurements in one run, each suite writing its own results file:
    /// loopback, veth, clients, interactive (with the sharing runs) and link (root; about
    /// twenty minutes).
    Efficiency,
}

fn main() {
    let args = Args::parse();
    let result = match (args.idle_helper, args.tcp_relay_helper, args.suite) {
        (Some(addr), _, _) => idle_helper(addr, args.count),
        (None, Some(target), _) => tcp_relay_helper(target),
        (None, None, Suite::Loopback) => run(args),
        (None, None, Suite::Link) => link_suite(args),
        (None, None, Suite::Ceiling) => ceiling_suite(args),
        (None, None, Suite::Hostile) => hostile_suite(args),
        (None, None, Suite::Cluster) => cluster_suite(args),
        (None, None, Suite::Udp) => udp_suite(args),
        (None, None, Suite::Interactive) => interactive_suite(args),
        (None, None, Suite::Veth) => veth_suite(args),
        (None, None, Suite::Clients) => clients_suite(args),
        (None, None, Suite::Efficiency) => efficiency_suite(args),
    };
    if let Err(error) = result {
        eprintln!("quictun-bench: {error}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    raise_nofile();
    let load_before = loadavg();
    let (bytes, samples, rounds, idle_levels): (u64, usize, usize, &[usize]) = if args.quick {
        (64 << 20, 50, 1, &[1, 100])
    } else {
        (1 << 30, 300, 5, &[1, 1000, 10_000])
    };
    let target = start_target().map_err(|e| format!("cannot start the target: {e}"))?;
    let tunnel = Tunnel::start(&args.bin_dir, target)?;
    let mut peer = QuinnPeer::start(&peer_binary())?;
    let relay = TcpRelay::start(target)?;
    let ssh = Ssh::start(target)
        .inspect_err(|e| println!("ssh -L skipped: {e}"))
        .ok();
    let stunnel = Stunnel::start(target)
        .inspect_err(|e| println!("stunnel skipped: {e}"))
        .ok();
    let mut rows = Vec::new();
    let mut record = |row: Row| {
        print_row(&row);
        rows.push(row);
    };
    record(
        measure("direct TCP", target, &[], bytes, samples)
            .map_err(|e| format!("direct TCP: {e}"))?,
    );
    record(
        measure("tunnel", tunnel.addr, &tunnel.pids(), bytes, samples)
            .map_err(|e| format!("tunnel: {e}"))?,
    );
    record(measure_peer(&mut peer, bytes, samples).map_err(|e| format!("bare quinn: {e}"))?);
    record(
        measure("tcp relay", relay.addr, &relay.pids(), bytes, samples)
            .map_err(|e| format!("tcp relay: {e}"))?,
    );
    if let Some(ssh) = &ssh {
        record(
            measure("ssh -L", ssh.addr, &ssh.pids(), bytes, samples)
                .map_err(|e| format!("ssh -L: {e}"))?,
        );
    }
    if let Some(stunnel) = &stunnel {
        record(
            measure("stunnel", stunnel.addr, &stunnel.pids(), bytes, samples)
                .map_err(|e| format!("stunnel: {e}"))?,
        );
    }
    drop((ssh, stunnel));
    let ceiling = Ceiling::measure(&tunnel, &mut peer, &relay, bytes, rounds)
        .map_err(|e| format!("interleaved rounds: {e}"))?;
    ceiling.print();
    drop((peer, relay));
    let mut idle = Vec::new();
    for &n in idle_levels {
        let (client_kib, server_kib) =
            idle_rss(tunnel.addr, &tunnel.pids(), n).map_err(|e| format!("idle tunnels: {e}"))?;
        println!(
            "idle tunnels {n:>6}: client RSS {client_kib} KiB, server RSS {server_kib} KiB, together {:.1} MiB",
            (client_kib + server_kib) as f64 / 1024.0
        );
        idle.push(format!(
            "{{\"tunnels\":{n},\"client_rss_kib\":{client_kib},\"server_rss_kib\":{server_kib}}}"
        ));
    }
    let load_after = loadavg();
    println!("load average before / after: {load_before} / {load_after}");
    let json = format!(
        "{{\"bytes\":{bytes},\"unix_time\":{},\"loadavg_before\":\"{load_before}\",\
         \"loadavg_after\":\"{load_after}\",\"paths\":[{}],\"interleaved\":{},\"idle\":[{}]}}\n",
        unix_time(),
        rows.iter().map(Row::json).collect::<Vec<_>>().join(","),
        ceiling.json(),
        idle.join(",")
    );
    let out = args
        .out
        .unwrap_or_else(|| "bench/results/loopback.json".into());
    write_results(&out, &json)
}

/// The loopback suite's interleaved rounds alone (about two minutes): for trying a change to
/// the data path against the bound.
fn ceiling_suite(args: Args) -> Result<(), String> {
    let (bytes, rounds) = if args.quick {
        (64 << 20, 1)
    } else {
        (1 << 30, 5)
    };
    let load_before = loadavg();
    let target = start_target().map_err(|e| format!("cannot start the target: {e}"))?;
    let tunnel = Tunnel::start(&args.bin_dir, target)?;
    let mut peer = QuinnPeer::start(&peer_binary())?;
    let relay = TcpRelay::start(target)?;
    let ceiling = Ceiling::measure(&tunnel, &mut peer, &relay, bytes, rounds)
        .map_err(|e| format!("interleaved rounds: {e}"))?;
    ceiling.print();
    let load_after = loadavg();
    println!("load average before / after: {load_before} / {load_after}");
    let json = format!(
        "{{\"bytes\":{bytes},\"unix_time\":{},\"loadavg_before\":\"{load_before}\",\
         \"loadavg_after\":\"{load_after}\",\"interleaved\":{}}}\n",
        unix_time(),
        ceiling.json()
    );
    let out = args
        .out
        .unwrap_or_else(|| "bench/results/ceiling.json".into());
    write_results(&out, &json)
}

/// The server under hostile traffic (SPEC §7; figures for docs/SECURITY.md).
fn hostile_suite(args: Args) -> Result<(), String> {
    raise_nofile();
    let echo_target = start_target().map_err(|e| format!("cannot start the target: {e}"))?;
    let options = hostile::Options {
        bin_dir: args.bin_dir.clone(),
        echo_target,
        quick: args.quick,
    };
    report_suite(args.out, "bench/results/hostile.json", || {
        let report = hostile::run(&options)?;
        Ok((report.table(), move |context: &str| report.json(context)))
    })
}

/// Several instances behind nginx (SPEC §12; figures for docs/SCALING.md).
fn cluster_suite(args: Args) -> Result<(), String> {
    raise_nofile();
    let echo_target = start_target().map_err(|e| format!("cannot start the target: {e}"))?;
    let options = cluster::Options {
        bin_dir: args.bin_dir.clone(),
        echo_target,
        quick: args.quick,
    };
    report_suite(args.out, "bench/results/cluster.json", || {
        let report = cluster::run(&options)?;
        Ok((report.table(), move |context: &str| report.json(context)))
    })
}

/// UDP flows through the tunnel (SPEC §11, issue #19).
fn udp_suite(args: Args) -> Result<(), String> {
    let options = udp::Options {
        bin_dir: args.bin_dir.clone(),
        quick: args.quick,
        link: !args.no_link,
    };
    report_suite(args.out, "bench/results/udp.json", || {
        let report = udp::run(&options)?;
        Ok((report.table(), move |context: &str| report.json(context)))
    })
}

/// Interactive traffic beside a bulk upload through the same client, and sharing the link.
fn interactive_suite(args: Args) -> Result<(), String> {
    raise_nofile();
    let options = interactive::Options {
        bin_dir: args.bin_dir.clone(),
        quick: args.quick,
    };
    report_suite(args.out, "bench/results/interactive.json", || {
        let report = interactive::run(&options)?;
        Ok((report.table(), move |context: &str| report.json(context)))
    })
}

/// Direct TCP, the tunnel and bare quinn across a veth pair at Ethernet MTUs.
fn veth_suite(args: Args) -> Result<(), String> {
    let options = veth::Options {
        bin_dir: args.bin_dir.clone(),
        mtus: args.mtus.clone(),
        quick: args.quick,
    };
    report_suite(args.out, "bench/results/veth.json", || {
        let report = veth::run(&options)?;
        Ok((report.table(), move |context: &str| report.json(context)))
    })
}

/// Many clients of one server at once (`--clients`), with the server's `--threads 1` and 2.
fn clients_suite(args: Args) -> Result<(), String> {
    raise_nofile();
    let options = clients::Options {
        bin_dir: args.bin_dir.clone(),
        clients: args.clients,
        quick: args.quick,
    };
    report_suite(args.out, "bench/results/clients.json", || {
        let report = clients::run(&options)?;
        Ok((report.table(), move |context: &str| report.json(context)))
    })
}

/// The suites that measure the data path's efficiency, one after the other on the same
/// binaries; the first failure stops the run.
fn efficiency_suite(args: Args) -> Result<(), String> {
    if args.out.is_some() {
        return Err("--suite efficiency writes each suite's own results file; no --out".into());
    }
    let suites = [
        (Suite::Loopback, "loopback"),
        (Suite::Veth, "veth"),
        (Suite::Clients, "clients"),
        (Suite::Interactive, "interactive"),
        (Suite::Link, "link"),
    ];
    for (suite, name) in suites {
        println!("== suite {name}");
        let args = Args {
            suite,
            ..args.clone()
        };
        let result = match suite {
            Suite::Loopback => run(args),
            Suite::Veth => veth_suite(args),
            Suite::Clients => clients_suite(args),
            Suite::Interactive => interactive_suite(args),
            _ => link_suite(args),
        };
        result.map_err(|error| format!("suite {name}: {error}"))?;
    }
    Ok(())
}

/// Runs a suite of the library: prints its table and the machine's load around it, and
/// writes its JSON (given the time and load as context) to `out` or `default_out`.
fn report_suite<J: FnOnce(&str) -> String>(
    out: Option<PathBuf>,
    default_out: &str,
    run: impl FnOnce() -> Result<(String, J), String>,
) -> Result<(), String> {
    let load_before = loadavg();
    let (table, json) = run()?;
    print!("{table}");
    let load_after = loadavg();
    println!("load average before / after: {load_before} / {load_after}");
    let context = format!(
        "\"unix_time\":{},\"loadavg_before\":\"{load_before}\",\"loadavg_after\":\"{load_after}\"",
        unix_time()
    );
    let out = out.unwrap_or_else(|| default_out.into());
    write_results(&out, &json(&context))
}

fn write_results(out: &Path, json: &str) -> Result<(), String> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    fs::write(out, json).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One path's results.
struct Row {
    name: String,
    /// Gbit/s: upload 1, download 1, upload 8, download 8.
    gbps: [f64; 4],
    ttfb_ms: (f64, f64),
    echo_ms: (f64, f64),
    cpu_s_per_gib: Option<f64>,
}

impl Row {
    fn json(&self) -> String {
        format!(
            "{{\"name\":\"{}\",\"up1_gbps\":{:.3},\"down1_gbps\":{:.3},\"up8_gbps\":{:.3},\
             \"down8_gbps\":{:.3},\"ttfb_p50_ms\":{:.3},\"ttfb_p99_ms\":{:.3},\
             \"echo_p50_ms\":{:.3},\"echo_p99_ms\":{:.3},\"cpu_s_per_gib\":{}}}",
            self.name,
            self.gbps[0],
            self.gbps[1],
            self.gbps[2],
            self.gbps[3],
            self.ttfb_ms.0,
            self.ttfb_ms.1,
            self.echo_ms.0,
            self.echo_ms.1,
            self.cpu_s_per_gib
                .map_or("null".into(), |c| format!("{c:.2}"))
        )
    }
}

fn print_row(row: &Row) {
    println!(
        "{:<11} up1 {:6.2} down1 {:6.2} up8 {:6.2} down8 {:6.2} Gbit/s | TTFB p50 {:.3} p99 {:.3} ms | \
         echo 1 KiB p50 {:.3} p99 {:.3} ms | CPU {} s/GiB",
        row.name,
        row.gbps[0],
        row.gbps[1],
        row.gbps[2],
        row.gbps[3],
        row.ttfb_ms.0,
        row.ttfb_ms.1,
        row.echo_ms.0,
        row.echo_ms.1,
        row.cpu_s_per_gib.map_or("-".into(), |c| format!("{c:.2}"))
    );
}

fn measure(
    name: &str,
    addr: SocketAddr,
    pids: &[u32],
    bytes: u64,
    samples: usize,
) -> io::Result<Row> {
    let cpu_before = cpu_seconds(pids);
    let up1 = transfer(addr, bytes, 1, mode::SINK)?;
    let cpu_after = cpu_seconds(pids);
    let down1 = transfer(addr, bytes, 1, mode::SOURCE)?;
    let up8 = transfer(addr, bytes, 8, mode::SINK)?;
    let down8 = transfer(addr, bytes, 8, mode::SOURCE)?;
    let gib = bytes as f64 / f64::from(1u32 << 30);
    Ok(Row {
        name: name.to_string(),
        gbps: [up1, down1, up8, down8],
        ttfb_ms: percentiles(ttfb(addr, samples)?),
        echo_ms: percentiles(echo(addr, samples * 5)?),
        cpu_s_per_gib: (!pids.is_empty()).then(|| (cpu_after - cpu_before) / gib),
    })
}

/// Moves `bytes` over `conns` connections; returns Gbit/s.
fn transfer(addr: SocketAddr, bytes: u64, conns: u64, mode: u8) -> io::Result<f64> {
    let each = bytes / conns;
    let start = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| thread::spawn(move || target::transfer(addr, each, mode)))
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| io::Error::other("transfer thread panicked"))??;
    }
    Ok((each * conns) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Connect, send one byte, wait for its echo: milliseconds per new connection.
fn ttfb(addr: SocketAddr, samples: usize) -> io::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.write_all(&[mode::ECHO, 0, 0, 0, 0, 0, 0, 0, 0, b'x'])?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        out.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// 1 KiB echo round trips on one connection, in milliseconds.
fn echo(addr: SocketAddr, samples: usize) -> io::Result<Vec<f64>> {
    let mut stream = echo_connection(addr)?;
    let mut buf = [7u8; 1024];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        out.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

fn echo_connection(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.write_all(&[mode::ECHO, 0, 0, 0, 0, 0, 0, 0, 0])?;
    Ok(stream)
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Has a helper process (this binary again) open `n` tunnels, each checked with a one-byte
/// echo, and reads the endpoints' RSS while they are open. The helper holds the application
/// ends, this process the target ends: each stays within the descriptor limit.
fn idle_rss(addr: SocketAddr, pids: &[u32], n: usize) -> io::Result<(u64, u64)> {
    let mut helper = Command::new(std::env::current_exe()?)
        .arg("--idle-helper")
        .arg(addr.to_string())
        .arg("--count")
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(stdout) = helper.stdout.take() {
        BufReader::new(stdout).read_line(&mut line)?;
    }
    let ready = line.trim() == "ready";
    let result = if ready {
        thread::sleep(Duration::from_millis(500));
        let rss = |pid: u32| status_kib(pid, "VmRSS:").unwrap_or(0);
        Ok((rss(pids[0]), rss(pids[1])))
    } else {
        Err(io::Error::other(format!(
            "the idle helper failed: {:?}",
            line.trim()
        )))
    };
    drop(helper.stdin.take()); // EOF: the helper closes its tunnels and exits
    helper.wait()?;
    thread::sleep(Duration::from_secs(1));
    result
}

/// The helper's side of [`idle_rss`]: opens `count` tunnels, says "ready", holds them until
/// standard input ends.
fn idle_helper(addr: SocketAddr, count: usize) -> Result<(), String> {
    raise_nofile();
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = echo_connection(addr).map_err(|e| format!("tunnel {i}: {e}"))?;
        stream
            .write_all(b"x")
            .and_then(|()| stream.read_exact(&mut [0u8; 1]))
            .map_err(|e| format!("tunnel {i}: {e}"))?;
        open.push(stream);
    }
    println!("ready");
    io::stdout().flush().map_err(|e| e.to_string())?;
    let _ = io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The target: one port, the first byte picks sink, source or echo.
fn start_target() -> io::Result<SocketAddr> {
    serve_on(TcpListener::bind("127.0.0.1:0")?)
}

/// A plain user-space TCP relay in front of the target, in a helper process (this binary
/// again): the two loopback TCP hops that any tunnel adds, with nothing between them.
struct TcpRelay {
    addr: SocketAddr,
    child: Child,
}

impl TcpRelay {
    fn start(target: SocketAddr) -> Result<TcpRelay, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--tcp-relay-helper")
            .arg(target.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the tcp relay: {e}"))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            stop([&mut child]);
            return Err(format!("the tcp relay did not start: {line:?}"));
        };
        Ok(TcpRelay { addr, child })
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        stop([&mut self.child]);
    }
}

/// The helper's side of [`TcpRelay`]: relays each connection to `target` with one thread a
/// direction and [`BUF`]-sized copies, half-close kept; exits when standard input ends.
fn tcp_relay_helper(target: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {addr}");
    io::stdout().flush().map_err(|e| e.to_string())?;
    thread::spawn(|| {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    for app in listener.incoming().flatten() {
        thread::spawn(move || relay_one(app, target));
    }
    Ok(())
}

fn relay_one(app: TcpStream, target: SocketAddr) -> io::Result<()> {
    let upstream = TcpStream::connect(target)?;
    app.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (app_out, upstream_in) = (app.try_clone()?, upstream.try_clone()?);
    let back = thread::spawn(move || copy_until_eof(upstream_in, app_out));
    copy_until_eof(app, upstream)?;
    back.join()
        .map_err(|_| io::Error::other("relay thread panicked"))?
}

/// Copies until EOF, then shuts down the other side's write half.
fn copy_until_eof(mut from: TcpStream, mut to: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        match from.read(&mut buf)? {
            0 => return to.shutdown(Shutdown::Write),
            n => to.write_all(&buf[..n])?,
        }
    }
}

/// One connection's bulk throughput through the tunnel, a bare quinn stream and the plain TCP
/// relay, in alternating rounds, so that a machine whose speed drifts (a shared host) affects
/// all three alike; each transfer also records the whole machine's busy CPU time per GiB.
///
/// What it shows: the tunnel does bare quinn's work plus that of two loopback TCP hops (the
/// relay's), so with every core busy no tunnel built on quinn can move more than
/// 1 / (1/quinn + 1/relay): the bound printed next to the ratio to bare quinn.
struct Ceiling {
    rounds: usize,
    /// Upload, then download.
    ways: [PathSamples; 2],
}

/// Per round: tunnel, bare quinn, tcp relay.
#[derive(Default)]
struct PathSamples(Vec<[Sample; 3]>);

#[derive(Clone, Copy)]
struct Sample {
    gbps: f64,
    /// The whole machine's busy time per GiB.
    core_s_per_gib: f64,
    /// The path's own processes' CPU time per GiB (the two endpoints; the relay process).
    own_s_per_gib: f64,
}

const WAYS: [(&str, u8); 2] = [("up", mode::SINK), ("down", mode::SOURCE)];

impl Ceiling {
    fn measure(
        tunnel: &Tunnel,
        peer: &mut QuinnPeer,
        relay: &TcpRelay,
        bytes: u64,
        rounds: usize,
    ) -> io::Result<Ceiling> {
        let mut ways: [PathSamples; 2] = Default::default();
        let pids = [tunnel.pids(), peer.pids(), relay.pids()];
        for _ in 0..rounds {
            for ((way, mode), samples) in WAYS.into_iter().zip(ways.iter_mut()) {
                samples.0.push([
                    sampled(bytes, &pids[0], || transfer(tunnel.addr, bytes, 1, mode))?,
                    sampled(bytes, &pids[1], || peer.gbps(way, bytes, 1))?,
                    sampled(bytes, &pids[2], || transfer(relay.addr, bytes, 1, mode))?,
                ]);
            }
        }
        Ok(Ceiling { rounds, ways })
    }

    fn print(&self) {
        println!(
            "one connection, {} interleaved round(s), medians (per-round ratios):",
            self.rounds
        );
        for ((way, _), samples) in WAYS.iter().zip(&self.ways) {
            let s = samples.summary();
            println!(
                "  {way:<4} tunnel {:.2}, bare quinn {:.2}, tcp relay {:.2} Gbit/s | tunnel/bare quinn {:.0} % \
                 (target 90 %) | bound 1/(1/quinn + 1/relay) {:.2} Gbit/s, tunnel {:.0} % of it | \
                 machine CPU per GiB: tunnel {:.2}, bare quinn {:.2} + tcp relay {:.2} = {:.2} core-s | \
                 endpoints' CPU per GiB: tunnel {:.2}, bare quinn {:.2} s ({:.2} ×)",
                s.gbps[0],
                s.gbps[1],
                s.gbps[2],
                s.of_quinn * 100.0,
                s.bound,
                s.of_bound * 100.0,
                s.work[0],
                s.work[1],
                s.work[2],
                s.work[1] + s.work[2],
                s.own[0],
                s.own[1],
                s.own_of_quinn,
            );
        }
    }

    fn json(&self) -> String {
        let ways: Vec<String> = WAYS
            .iter()
            .zip(&self.ways)
            .map(|((way, _), samples)| {
                let s = samples.summary();
                let rounds: Vec<String> = samples
                    .0
                    .iter()
                    .map(|r| {
                        format!(
                            "[{:.3},{:.3},{:.3}]",
                            r[0].gbps, r[1].gbps, r[2].gbps
                        )
                    })
                    .collect();
                format!(
                    "\"{way}\":{{\"tunnel_gbps\":{:.3},\"quinn_gbps\":{:.3},\"tcp_relay_gbps\":{:.3},\
                     \"tunnel_of_quinn\":{:.3},\"bound_gbps\":{:.3},\"tunnel_of_bound\":{:.3},\
                     \"tunnel_core_s_per_gib\":{:.2},\"quinn_core_s_per_gib\":{:.2},\
                     \"tcp_relay_core_s_per_gib\":{:.2},\"tunnel_endpoints_s_per_gib\":{:.2},\
                     \"quinn_endpoints_s_per_gib\":{:.2},\"tunnel_endpoints_of_quinn\":{:.3},\
                     \"rounds_gbps\":[{}]}}",
                    s.gbps[0],
                    s.gbps[1],
                    s.gbps[2],
                    s.of_quinn,
                    s.bound,
                    s.of_bound,
                    s.work[0],
                    s.work[1],
                    s.work[2],
                    s.own[0],
                    s.own[1],
                    s.own_of_quinn,
                    rounds.join(",")
                )
            })
            .collect();
        format!("{{\"rounds\":{},{}}}", self.rounds, ways.join(","))
    }
}

struct Summary {
    /// Median Gbit/s: tunnel, bare quinn, tcp relay.
    gbps: [f64; 3],
    /// Median machine core-seconds per GiB, same order.
    work: [f64; 3],
    /// Median CPU seconds per GiB of each path's own processes, same order.
    own: [f64; 3],
    /// Median of the per-round ratios of the tunnel's endpoints' CPU to bare quinn's.
    own_of_quinn: f64,
    /// Medians of the per-round ratios.
    of_quinn: f64,
    bound: f64,
    of_bound: f64,
}

impl PathSamples {
    fn summary(&self) -> Summary {
        let column = |f: &dyn Fn(&[Sample; 3]) -> f64| median(self.0.iter().map(f).collect());
        let bound = |r: &[Sample; 3]| 1.0 / (1.0 / r[1].gbps + 1.0 / r[2].gbps);
        Summary {
            gbps: [0, 1, 2].map(|i| column(&|r| r[i].gbps)),
            work: [0, 1, 2].map(|i| column(&|r| r[i].core_s_per_gib)),
            own: [0, 1, 2].map(|i| column(&|r| r[i].own_s_per_gib)),
            own_of_quinn: column(&|r| r[0].own_s_per_gib / r[1].own_s_per_gib),
            of_quinn: column(&|r| r[0].gbps / r[1].gbps),
            bound: column(&bound),
            of_bound: column(&|r| r[0].gbps / bound(r)),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Runs one transfer (returning Gbit/s) and measures meanwhile the machine's busy time and
/// the CPU time of the path's processes `pids`.
fn sampled(bytes: u64, pids: &[u32], run: impl FnOnce() -> io::Result<f64>) -> io::Result<Sample> {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    let (machine, own) = (machine_busy_seconds(), cpu_seconds(pids));
    let gbps = run()?;
    Ok(Sample {
        gbps,
        core_s_per_gib: (machine_busy_seconds() - machine) / gib,
        own_s_per_gib: (cpu_seconds(pids) - own) / gib,
    })
}

/// The release server and client on loopback, the client's tokens naming the target.
struct Tunnel {
    addr: SocketAddr,
    server: Child,
    client: Child,
    _dir: TempDir,
}

impl Tunnel {
    fn start(bin_dir: &Path, target: SocketAddr) -> Result<Tunnel, String> {
        let dir = TempDir::new()?;
        let quic = free_port(true)?;
        let listen = free_port(false)?;
        let spawn = |name: &str, args: Vec<String>| {
            let path = bin_dir.join(name);
            Command::new(&path)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "cannot run {} (cargo build --release --workspace): {e}",
                        path.display()
                    )
                })
        };
        let state = |sub: &str| dir.0.join(sub).display().to_string();
        let server = spawn(
            "quictun-server",
            [
                "--listen-on",
                &quic.to_string(),
                "--httpd-listen-on",
                "",
                "--state-dir",
                &state("server"),
                "--allow-target",
                &target.to_string(),
                "--max-streams-per-connection",
                "20000",
                "--log-level",
                "warn",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        let client = spawn(
            "quictun-client",
            [
                "--listen-on",
                &format!("tcp:{listen}"),
                "--server-endpoint",
                &quic.to_string(),
                "--token-source",
                &format!("tcp:{target}"),
                "--insecure-skip-verify",
                "--httpd-listen-on",
                "",
                "--state-dir",
                &state("client"),
                "--log-level",
                "error",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        let tunnel = Tunnel {
            addr: listen,
            server,
            client,
            _dir: dir,
        };
        tunnel.wait_ready()?;
        Ok(tunnel)
    }

    /// Waits until a tunnel echoes a byte: both endpoints up and connected.
    fn wait_ready(&self) -> Result<(), String> {
        wait_echo(self.addr).map_err(|e| format!("tunnel {e}"))
    }

    /// Client first, then server.
    fn pids(&self) -> Vec<u32> {
        vec![self.client.id(), self.server.id()]
    }
}

/// Waits until a path echoes a byte: its processes up and connected.
fn wait_echo(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = echo_connection(addr).and_then(|mut s| {
            s.write_all(b"x")?;
            s.read_exact(&mut [0u8; 1])
        });
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("not ready: {e}")),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        stop([&mut self.client, &mut self.server]);
    }
}

/// `ssh -L` to a throwaway sshd on loopback (aes128-gcm), when OpenSSH is installed.
struct Ssh {
    addr: SocketAddr,
    sshd: Child,
    ssh: Child,
    _dir: TempDir,
}

impl Ssh {
    fn start(target: SocketAddr) -> Result<Ssh, String> {
        let sshd_path = Path::new("/usr/sbin/sshd");
        if !sshd_path.exists() {
            return Err("no /usr/sbin/sshd (apt-get install openssh-server)".into());
        }
        let dir = TempDir::named("ssh")?;
        let d = dir.0.display().to_string();
        for key in ["host", "user"] {
            run_quiet(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(format!("{d}/{key}")),
            )?;
        }
        fs::copy(format!("{d}/user.pub"), format!("{d}/authorized_keys"))
            .map_err(|e| e.to_string())?;
        let port = free_port(false)?.port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             AllowTcpForwarding yes\nCiphers aes128-gcm@openssh.com\nPidFile none\n"
        );
        fs::write(format!("{d}/sshd_config"), config).map_err(|e| e.to_string())?;
        let _ = fs::create_dir_all("/run/sshd");
        let sshd = Command::new(sshd_path)
            .args(["-D", "-e", "-f", &format!("{d}/sshd_config")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sshd: {e}"))?;
        thread::sleep(Duration::from_millis(300));
        let local = free_port(false)?;
        let ssh = Command::new("ssh")
            .args([
                "-N",
                "-p",
                &port.to_string(),
                "-i",
                &format!("{d}/user"),
                "-L",
            ])
            .arg(format!("{}:{}:{}", local, target.ip(), target.port()))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"])
            .args(["-o", "Ciphers=aes128-gcm@openssh.com", "root@127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        let ssh = Ssh {
            addr: local,
            sshd,
            ssh,
            _dir: dir,
        };
        wait_echo(ssh.addr)?;
        Ok(ssh)
    }

    /// The ssh client, then sshd (whose session child does the work).
    fn pids(&self) -> Vec<u32> {
        vec![self.ssh.id(), self.sshd.id()]
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        stop([&mut self.ssh, &mut self.sshd]);
    }
}

fn run_quiet(command: &mut Command) -> Result<(), String> {
    match command.stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{command:?} failed: {s}")),
        Err(e) => Err(format!("cannot run {command:?}: {e}")),
    }
}

/// The same measurements as [`measure`], over a bare quinn connection's streams instead of
/// TCP connections.
fn measure_peer(peer: &mut QuinnPeer, bytes: u64, samples: usize) -> io::Result<Row> {
    let pids = peer.pids();
    let cpu_before = cpu_seconds(&pids);
    let up1 = peer.gbps("up", bytes, 1)?;
    let cpu_after = cpu_seconds(&pids);
    let down1 = peer.gbps("down", bytes, 1)?;
    let up8 = peer.gbps("up", bytes, 8)?;
    let down8 = peer.gbps("down", bytes, 8)?;
    let gib = bytes as f64 / f64::from(1u32 << 30);
    Ok(Row {
        name: "bare quinn".to_string(),
        gbps: [up1, down1, up8, down8],
        ttfb_ms: percentiles(peer.ask(&format!("ttfb {samples}"))?),
        echo_ms: percentiles(peer.ask(&format!("echo {}", samples * 5))?),
        cpu_s_per_gib: Some((cpu_after - cpu_before) / gib),
    })
}

/// stunnel in client mode in front of stunnel in server mode (TLS 1.3, AES-128-GCM, an
/// ECDSA P-256 certificate), when stunnel is installed.
struct Stunnel {
    addr: SocketAddr,
    server: Child,
    client: Child,
    _dir: TempDir,
}

impl Stunnel {
    fn start(target: SocketAddr) -> Result<Stunnel, String> {
        let binary = ["/usr/bin/stunnel4", "/usr/bin/stunnel"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or("no stunnel (apt-get install stunnel4)")?;
        let dir = TempDir::named("stunnel")?;
        let d = dir.0.display().to_string();
        run_quiet(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                .args(["-subj", "/CN=localhost", "-keyout"])
                .arg(format!("{d}/key.pem"))
                .arg("-out")
                .arg(format!("{d}/cert.pem")),
        )?;
        let inner = free_port(false)?;
        let outer = free_port(false)?;
        let common = "foreground = yes\npid =\nsyslog = no\ndebug = 3\n\
                      sslVersion = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\n";
        let server_conf = format!(
            "{common}[server]\naccept = {inner}\nconnect = {target}\ncert = {d}/cert.pem\nkey = {d}/key.pem\n"
        );
        let client_conf =
            format!("{common}[client]\nclient = yes\naccept = {outer}\nconnect = {inner}\n");
        let spawn = |name: &str, conf: String| {
            let path = format!("{d}/{name}.conf");
            fs::write(&path, conf).map_err(|e| e.to_string())?;
            Command::new(binary)
                .arg(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", binary.display()))
        };
        let server = spawn("server", server_conf)?;
        let client = spawn("client", client_conf)?;
        let stunnel = Stunnel {
            addr: outer,
            server,
            client,
            _dir: dir,
        };
        wait_echo(stunnel.addr)?;
        Ok(stunnel)
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.client.id(), self.server.id()]
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        stop([&mut self.client, &mut self.server]);
    }
}

/// The emulated-link suite: goodput against loss for direct TCP cubic and bbr and the tunnel
/// (default congestion controller) on cc-bench's link, and time to first byte over a 20 ms
/// link, direct TCP against the tunnel.
fn link_suite(args: Args) -> Result<(), String> {
    raise_nofile();
    let load_before = loadavg();
    let (duration, ttfb_samples) = if args.quick {
        (Duration::from_secs(3), 20)
    } else {
        (Duration::from_secs(15), 200)
    };
    let senders = [Sender::TcpCubic, Sender::TcpBbr, Sender::Adaptive];
    let mut goodput = Vec::new();
    for loss in [0.0, 0.001, 0.01, 0.05] {
        let scenario = Scenario {
            name: format!("20ms-{}%", loss * 100.0),
            rtt: Duration::from_millis(20),
            loss,
            duration,
        };
        for sender in senders {
            let flow = cc::run_flow(sender, &scenario, 1, &args.bin_dir)
                .map_err(|e| format!("{} on {}: {e}", sender.name(), scenario.name))?;
            println!(
                "20 ms, {:>4} % loss  {:<10} {:6.1} Mbit/s  queue drops {:.2} %",
                loss * 100.0,
                sender.name(),
                flow.goodput_mbps,
                flow.queue_drop_share() * 100.0
            );
            goodput.push(format!(
                "{{\"sender\":\"{}\",\"loss\":{loss},\"goodput_mbps\":{:.2},\
                 \"queue_drop_share\":{:.5},\"random_drop_share\":{:.5}}}",
                sender.name(),
                flow.goodput_mbps,
                flow.queue_drop_share(),
                flow.random_drop_share()
            ));
        }
    }
    let ttfb = link_ttfb(&args.bin_dir, ttfb_samples)?;
    let load_after = loadavg();
    println!("load average before / after: {load_before} / {load_after}");
    let json = format!(
        "{{\"link\":{{\"rtt_ms\":20,\"rate_bps\":{},\"queue_ms\":{}}},\"seconds\":{},\
         \"unix_time\":{},\"loadavg_before\":\"{load_before}\",\"loadavg_after\":\"{load_after}\",\
         \"goodput\":[{}],\"ttfb\":[{}]}}\n",
        cc::RATE_BPS,
        cc::QUEUE.as_millis(),
        duration.as_secs(),
        unix_time(),
        goodput.join(","),
        ttfb.join(",")
    );
    let out = args.out.unwrap_or_else(|| "bench/results/link.json".into());
    write_results(&out, &json)
}

/// Time to first byte of a new connection over the 20 ms link (no loss): connect from
/// namespace A, send one byte, wait for its echo from the target in namespace B — directly,
/// and through the tunnel (client in A, server in B, its QUIC connection already up).
fn link_ttfb(bin_dir: &Path, samples: usize) -> Result<Vec<String>, String> {
    let link = Link::start(LinkConfig {
        rtt: Duration::from_millis(20),
        rate_bps: Some(cc::RATE_BPS),
        loss: 0.0,
        queue: cc::QUEUE,
        ..LinkConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let listener = link
        .run_in_b(|| TcpListener::bind("0.0.0.0:0"))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot bind the target in namespace B: {e}"))?;
    let port = serve_on(listener).map_err(|e| e.to_string())?.port();
    let direct = SocketAddr::from((link.addr_b(), port));
    let mut rows = Vec::new();
    let sample = |addr: SocketAddr| {
        link.run_in_a(move || {
            wait_echo(addr)?;
            ttfb(addr, samples).map_err(|e| e.to_string())
        })
        .map_err(|e| e.to_string())?
    };
    let direct_ms = sample(direct)?;
    let tunnel = cc::flow::Tunnel::start(&link, bin_dir, "adaptive", port)?;
    let tunnel_ms = sample(tunnel.app_addr());
    drop(tunnel);
    for (name, ms) in [("direct TCP", Ok(direct_ms)), ("tunnel", tunnel_ms)] {
        let ms = ms.map_err(|e| format!("{name}: {e}"))?;
        let (p50, p99) = percentiles(ms);
        println!("TTFB over 20 ms RTT  {name:<10} p50 {p50:.2} ms  p99 {p99:.2} ms");
        rows.push(format!(
            "{{\"name\":\"{name}\",\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"samples\":{samples}}}"
        ));
    }
    Ok(rows)
}
