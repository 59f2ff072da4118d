//! The many-clients suite (`quictun-bench --suite clients`): one release quictun-server on
//! loopback and N quictun-client processes (50 by default), each with its own listener, state
//! directory and REST API: first one of them uploads alone into the target's sink, as much as
//! all of them will together (at least 1 GiB, at most 4 GiB), then all upload at the same
//! moment. Once with the server's `--threads 1` and once with `--threads 2`. The lone upload
//! comes first so that it starts from a fresh connection: losses in the crowd can leave a
//! connection sending small packets for a minute afterwards ([`watch`]).
//!
//! Each upload is one connection made before a barrier and started when all are made, so the
//! tunnels' set-up is outside the timing. Measured: the aggregate throughput (all bytes over
//! the wall time from the common start to the last finish), each client's own, the CPU time
//! per GiB of the server and of all clients together, and how busy the whole machine was
//! ([`crate::process::MachineTimes`]), from which [`Phase::limit`] says what held it back, and
//! how many datagrams the kernel dropped at full UDP receive buffers.

mod report;
mod watch;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use crate::hostile::good::wait_tunnel;
use crate::hostile::server::ServerProcess;
use crate::hostile::stall::ClientProcess;
use crate::mode;
use crate::process::{MachineTimes, cpu_seconds, own_cpu_seconds};
use crate::target::{self, Target};
use crate::udp::snmp::UdpCounters;
pub use report::Report;
use watch::{PayloadWatch, payloads};

/// The server's worker threads, one setting after the other.
const THREADS: [u16; 2] = [1, 2];
/// The single client's upload: at least this much...
const ALONE_MIN: u64 = 1 << 30;
/// ...and at most this much, whatever the clients move together.
const ALONE_MAX: u64 = 4 << 30;

/// What the suite needs.
pub struct Options {
    /// Where quictun-server and quictun-client are.
    pub bin_dir: PathBuf,
    /// How many clients [default: 50, or 5 with `quick`].
    pub clients: Option<usize>,
    /// Fewer clients and smaller uploads, for a smoke run.
    pub quick: bool,
}

/// One server setting's two phases.
pub struct ThreadsRun {
    pub threads: u16,
    /// Every client at once.
    pub together: Phase,
    /// The first client alone.
    pub alone: Phase,
}

/// One phase's uploads.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Uploads at once.
    pub clients: usize,
    /// All clients' bytes together.
    pub bytes: u64,
    /// From the common start to the last finish.
    pub seconds: f64,
    /// Each client's own Gbit/s, from the common start to its finish.
    pub per_client_gbps: Vec<f64>,
    pub server_cpu_s: f64,
    /// All client processes together (also those idle in the phase).
    pub clients_cpu_s: f64,
    /// This tool: the applications' side of the uploads and the target.
    pub tool_cpu_s: f64,
    /// The whole machine's busy share over the phase, 0 to 1.
    pub busy_share: f64,
    /// The kernel's UDP counters over the phase (this namespace, so other processes' UDP
    /// too): the datagrams received, and those dropped at a full receive buffer.
    pub udp: UdpCounters,
    /// Each uploading client's `maxUdpPayload` at the end of the phase: how large its
    /// packets were by then.
    pub payloads: Vec<u16>,
    /// The smallest each had during the phase, read once a second (`None`: never read).
    pub smallest_payloads: Vec<Option<u16>>,
    /// The machine's cores.
    pub cores: usize,
    /// The server's `--threads`.
    pub threads: u16,
}

/// Runs both server settings.
pub fn run(options: &Options) -> Result<Report, String> {
    let clients = options
        .clients
        .unwrap_or(if options.quick { 5 } else { 50 });
    if clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let each: u64 = if options.quick { 16 << 20 } else { 256 << 20 };
    let total = each * clients as u64;
    let alone = match options.quick {
        true => total,
        false => total.clamp(ALONE_MIN, ALONE_MAX),
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("target: {e}"))?;
    let target = Target::serve(listener).map_err(|e| format!("target: {e}"))?;
    let mut runs = Vec::new();
    for threads in THREADS {
        let run = run_threads(options, &target, threads, clients, each, alone)?;
        print!("{}", run.table());
        runs.push(run);
    }
    Ok(Report {
        quick: options.quick,
        clients,
        each_bytes: each,
        alone_bytes: alone,
        runs,
    })
}

/// A fresh server with `--threads threads` and `clients` clients: the first uploading `alone`
/// by itself, then all uploading `each` at once.
fn run_threads(
    options: &Options,
    target: &Target,
    threads: u16,
    clients: usize,
    each: u64,
    alone: u64,
) -> Result<ThreadsRun, String> {
    let fleet = Fleet::start(options, target, threads, clients)?;
    let alone = fleet
        .measure(1, alone)
        .map_err(|e| format!("--threads {threads}, one client alone: {e}"))?;
    let together = fleet
        .measure(clients, each)
        .map_err(|e| format!("--threads {threads}, {clients} clients together: {e}"))?;
    Ok(ThreadsRun {
        threads,
        together,
        alone,
    })
}

/// One server and its clients, each client connected.
struct Fleet {
    server: ServerProcess,
    clients: Vec<ClientProcess>,
    threads: u16,
}

impl Fleet {
    /// Starts the server, then the clients one at a time, each waited for with an echo.
    fn start(
        options: &Options,
        target: &Target,
        threads: u16,
        clients: usize,
    ) -> Result<Fleet, String> {
        let threads_arg = threads.to_string();
        let extra = ["--threads", threads_arg.as_str()];
        let server = ServerProcess::start(&options.bin_dir, &[target.addr()], &extra)?;
        let mut started = Vec::with_capacity(clients);
        for n in 0..clients {
            let name = format!("clients-{n}");
            let client =
                ClientProcess::start_with_api(&options.bin_dir, server.addr, target.addr(), &name)?;
            wait_tunnel(client.app).map_err(|e| format!("client {n}: {e}"))?;
            started.push(client);
        }
        Ok(Fleet {
            server,
            clients: started,
            threads,
        })
    }

    /// The first `movers` clients each upload `each` at once; CPU time of the server and of
    /// every client.
    fn measure(&self, movers: usize, each: u64) -> Result<Phase, String> {
        let movers = &self.clients[..movers.min(self.clients.len())];
        let barrier = Arc::new(Barrier::new(movers.len() + 1));
        let uploads: Vec<_> = movers
            .iter()
            .map(|client| {
                let (app, barrier) = (client.app, barrier.clone());
                thread::spawn(move || {
                    // Every thread reaches the barrier, also one that could not connect.
                    let stream = target::connect(app, mode::SINK, each);
                    barrier.wait();
                    target::transfer_on(stream?, each, mode::SINK)?;
                    Ok::<_, std::io::Error>(Instant::now())
                })
            })
            .collect();
        let server_pid = [self.server.pid()];
        let client_pids: Vec<u32> = self.clients.iter().map(ClientProcess::pid).collect();
        let (server, clients) = (cpu_seconds(&server_pid), cpu_seconds(&client_pids));
        let (tool, machine, udp) = (own_cpu_seconds(), MachineTimes::now(), UdpCounters::read());
        let watch = PayloadWatch::start(movers);
        barrier.wait();
        let start = Instant::now();
        let mut finishes = Vec::with_capacity(uploads.len());
        for upload in uploads {
            let finish = upload.join().map_err(|_| "an upload thread panicked")?;
            finishes.push(finish.map_err(|e| e.to_string())?);
        }
        let last = finishes.iter().max().copied().unwrap_or(start);
        // Fields are evaluated in the order written: the readings at the end come first, then
        // the watch (which may be mid-round) is stopped.
        Ok(Phase {
            clients: movers.len(),
            bytes: each * movers.len() as u64,
            seconds: (last - start).as_secs_f64(),
            per_client_gbps: finishes
                .iter()
                .map(|f| each as f64 * 8.0 / (*f - start).as_secs_f64() / 1e9)
                .collect(),
            server_cpu_s: cpu_seconds(&server_pid) - server,
            clients_cpu_s: cpu_seconds(&client_pids) - clients,
            tool_cpu_s: own_cpu_seconds() - tool,
            busy_share: MachineTimes::now().busy_share_since(&machine),
            udp: UdpCounters::read().since(&udp),
            smallest_payloads: watch.finish(),
            payloads: payloads(movers)?,
            cores: thread::available_parallelism().map_or(1, |n| n.get()),
            threads: self.threads,
        })
    }
}
