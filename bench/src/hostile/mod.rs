//! The hostile-traffic suite (`quictun-bench --suite hostile`): the release server on
//! loopback under the attacks of SPEC §7, each phase against a freshly started server, with
//! the figures docs/SECURITY.md quotes.
//!
//! 1. Handshake flood: fresh QUIC Initials from one socket on 127.0.0.2 ([`initials`]), while
//!    a good client on 127.0.0.1 makes a new connection every second ([`good`]); then the
//!    same flood from 1 016 addresses (127.0.1.1–127.0.4.254), answering the server's Retries,
//!    which fills the server's whole handshake budget.
//! 2. Pending tokens: 3 connections × 10 000 streams that send only a token header claiming
//!    4 096 bytes ([`tokens`]), while a real tunnel through quictun-client is timed.
//! 3. Stalled targets: 32 tunnels (8 quictun-clients × 4) into a target that never reads,
//!    server `--max-buffered 64MiB` ([`stall`]).
//! 4. Stalled REST clients: 300 connections that send half a request line ([`rest`]), while
//!    `/healthz` is timed.
//!
//! Server memory is its VmRSS, sampled every 100 ms ([`server::RssSampler`]): before (just
//! before the attack), peak (during it and the settling after), after (once the attack has
//! stopped and the handshake time-out has passed). Every process is ended on drop, by pid.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use quictun::server::Limits;
use quictun::server::admission::{MAX_HANDSHAKES, RETRY_THRESHOLD};

pub mod good;
pub mod initials;
mod report;
pub mod rest;
pub mod server;
pub mod stall;
pub mod tokens;

pub use report::Report;

use good::{Prober, Samples};
use initials::{Flood, FloodConfig, FloodReport};
use rest::StalledRest;
use server::{Rss, RssSampler, ServerProcess};
use stall::{ClientProcess, NeverReads, Writers};
use tokens::{TokenFlood, TokenFloodConfig, TokenFloodReport};

/// What the suite needs.
pub struct Options {
    /// Where quictun-server and quictun-client are.
    pub bin_dir: PathBuf,
    /// A target on 127.0.0.1 that echoes after quictun-bench's echo header.
    pub echo_target: SocketAddr,
    /// Short phases, for a smoke run.
    pub quick: bool,
}

/// How long each phase runs.
#[derive(Debug, Clone)]
struct Plan {
    flood: Duration,
    many_flood: Duration,
    tokens: Duration,
    stall: Duration,
    rest_watch: Duration,
    /// After an attack, before "after": the default handshake time-out (10 s) and a second.
    settle: Duration,
    /// Initials per second: ten times the 1 100 every 10 s.
    rate: u32,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let s = Duration::from_secs;
        match quick {
            false => Plan {
                flood: s(30),
                many_flood: s(15),
                tokens: s(20),
                stall: s(20),
                rest_watch: s(30),
                settle: s(11),
                rate: 1100,
            },
            true => Plan {
                flood: s(3),
                many_flood: s(3),
                tokens: s(3),
                stall: s(3),
                rest_watch: s(2),
                settle: s(1),
                rate: 1100,
            },
        }
    }
}

/// Runs the four phases.
pub fn run(options: &Options) -> Result<Report, String> {
    let plan = Plan::new(options.quick);
    let one = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    let flood = handshake_flood(options, &plan, one, false, plan.flood)?;
    println!("{}", flood.text("handshake flood, one socket on 127.0.0.2"));
    let many: Vec<IpAddr> = (1..=4)
        .flat_map(|b| (1..=254).map(move |d| IpAddr::V4(Ipv4Addr::new(127, 0, b, d))))
        .collect();
    let many_flood = handshake_flood(options, &plan, many, true, plan.many_flood)?;
    println!(
        "{}",
        many_flood.text("handshake flood, 1 016 addresses answering Retries")
    );
    let tokens = token_flood(options, &plan)?;
    println!("{}", tokens.text());
    let stall = stalled_targets(options, &plan)?;
    println!("{}", stall.text());
    let rest = stalled_rest(options, &plan)?;
    println!("{}", report::rest_text(&rest));
    Ok(Report {
        quick: options.quick,
        flood,
        many_flood,
        tokens,
        stall,
        rest,
    })
}

/// Phase 1: a flood of Initials while a good client connects every second.
pub struct HandshakePhase {
    pub sources: usize,
    pub answer_retries: bool,
    pub rate: u32,
    pub flood: FloodReport,
    pub good: Samples,
    pub rss: Rss,
    pub failures: std::collections::BTreeMap<String, u64>,
    /// The most handshakes the server holds for this flood, by its budgets.
    pub held_at_once: usize,
}

fn handshake_flood(
    options: &Options,
    plan: &Plan,
    sources: Vec<IpAddr>,
    answer_retries: bool,
    length: Duration,
) -> Result<HandshakePhase, String> {
    let server = ServerProcess::start(&options.bin_dir, &[options.echo_target], &[])?;
    // One good connection first, so that the first handshake's one-off costs are in "before".
    let warm = Prober::connections(server.addr, Duration::from_secs(1))?.finish();
    if warm.ok().is_empty() {
        return Err(format!(
            "no good connection before the flood: {:?}",
            warm.failures()
        ));
    }
    let (rss, sampler) = start_memory(&server);
    let held_at_once = held_at_once(sources.len(), answer_retries);
    let config = FloodConfig {
        server: server.addr,
        sources,
        rate: plan.rate,
        answer_retries,
    };
    let sources = config.sources.len();
    let flood = Flood::start(config);
    thread::sleep(Duration::from_millis(500));
    let prober = Prober::connections(server.addr, Duration::from_secs(1))?;
    thread::sleep(length);
    let good = prober.finish();
    let flood = flood.finish()?;
    let rss = end_memory(&server, rss, sampler, plan.settle);
    Ok(HandshakePhase {
        sources,
        answer_retries,
        rate: plan.rate,
        flood,
        good,
        rss,
        failures: server.handshake_failures()?,
        held_at_once,
    })
}

/// The most handshakes the server holds for a flood from `sources` addresses, by its budgets
/// (the default `--max-handshakes-per-address`): past the Retry threshold it takes on only
/// clients that proved their address, and never more than its maximum.
fn held_at_once(sources: usize, answer_retries: bool) -> usize {
    let per_address = Limits::default().max_handshakes_per_address * sources;
    match answer_retries {
        false => per_address.min(RETRY_THRESHOLD),
        true => per_address.min(MAX_HANDSHAKES),
    }
}

/// Phase 2: streams that never send their token, while a real tunnel is timed.
pub struct TokenPhase {
    pub flood: TokenFloodReport,
    pub good: Samples,
    pub rss: Rss,
}

fn token_flood(options: &Options, plan: &Plan) -> Result<TokenPhase, String> {
    let server = ServerProcess::start(&options.bin_dir, &[options.echo_target], &[])?;
    let client = ClientProcess::start(
        &options.bin_dir,
        server.addr,
        options.echo_target,
        "hostile-good",
    )?;
    good::wait_tunnel(client.app)?;
    let (rss, sampler) = start_memory(&server);
    let flood = TokenFlood::start(TokenFloodConfig {
        server: server.addr,
        source: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        connections: 3,
        streams_per_connection: 10_000,
    })?;
    let prober = Prober::tunnels(client.app, Duration::from_millis(500));
    thread::sleep(plan.tokens);
    let good = prober.finish();
    let flood = flood.finish()?;
    let rss = end_memory(&server, rss, sampler, plan.settle);
    Ok(TokenPhase { flood, good, rss })
}

/// Phase 3: tunnels into a target that never reads, the server's buffers budgeted.
pub struct StallPhase {
    pub clients: usize,
    pub tunnels: usize,
    pub accepted_by_target: usize,
    /// Tunnels the server had open at the end, per client connection, most first.
    pub per_connection: Vec<usize>,
    /// Bytes the applications wrote, and the server relayed to the target, by the end.
    pub written: u64,
    pub relayed: u64,
    pub good: Samples,
    pub rss: Rss,
}

const STALL_CLIENTS: usize = 8;
const STALL_TUNNELS_EACH: usize = 4;

fn stalled_targets(options: &Options, plan: &Plan) -> Result<StallPhase, String> {
    let sink = NeverReads::start()?;
    let server = ServerProcess::start(
        &options.bin_dir,
        &[sink.addr, options.echo_target],
        &["--max-buffered", "64MiB"],
    )?;
    let stalled = (0..STALL_CLIENTS)
        .map(|i| {
            let name = format!("hostile-stall-{i}");
            ClientProcess::start(&options.bin_dir, server.addr, sink.addr, &name)
        })
        .collect::<Result<Vec<_>, String>>()?;
    // The good client connects (on its first tunnel) only once the stalled tunnels have taken
    // what the budget gives: it must not be starved by them.
    let good_client = ClientProcess::start(
        &options.bin_dir,
        server.addr,
        options.echo_target,
        "hostile-good",
    )?;
    let (rss, sampler) = start_memory(&server);
    let apps: Vec<SocketAddr> = stalled.iter().map(|c| c.app).collect();
    let writers = Writers::start(&apps, STALL_TUNNELS_EACH)?;
    let head_start = plan.stall / 4;
    thread::sleep(head_start);
    let prober = Prober::tunnels(good_client.app, Duration::from_secs(1));
    thread::sleep(plan.stall - head_start);
    let good = prober.finish();
    let relayed = server
        .metric(
            "quictun_bytes_total",
            Some(("direction", "client_to_server")),
        )
        .unwrap_or(0);
    let accepted_by_target = sink.accepted();
    let mut per_connection = server.tunnels_by_connection().unwrap_or_default();
    // The good client's connection holds only the tunnels it has open (none between tries).
    per_connection.resize(per_connection.len().max(STALL_CLIENTS), 0);
    let written = writers.finish();
    drop(stalled);
    drop(sink);
    let rss = end_memory(
        &server,
        rss,
        sampler,
        plan.settle.min(Duration::from_secs(3)),
    );
    Ok(StallPhase {
        clients: STALL_CLIENTS,
        tunnels: STALL_CLIENTS * STALL_TUNNELS_EACH,
        accepted_by_target,
        per_connection,
        written,
        relayed,
        good,
        rss,
    })
}

/// Phase 4: stalled REST clients against the server's API.
fn stalled_rest(options: &Options, plan: &Plan) -> Result<StalledRest, String> {
    let server = ServerProcess::start(&options.bin_dir, &[options.echo_target], &[])?;
    server::http_get(server.api, "/healthz", good::TRY_LIMIT)?;
    Ok(rest::run(server.api, 300, plan.rest_watch))
}

/// "Before" after a short rest, and the sampler for the peak.
fn start_memory(server: &ServerProcess) -> (Rss, RssSampler) {
    thread::sleep(Duration::from_millis(500));
    let rss = Rss {
        before: server.rss_kib(),
        ..Rss::default()
    };
    (rss, RssSampler::start(server.pid()))
}

/// "After" once `settle` has passed, and the peak over the whole attack.
fn end_memory(server: &ServerProcess, mut rss: Rss, sampler: RssSampler, settle: Duration) -> Rss {
    thread::sleep(settle);
    rss.after = server.rss_kib();
    rss.per_second = sampler.finish();
    let peak = rss.per_second.iter().copied().max().unwrap_or(0);
    rss.peak = peak.max(rss.before).max(rss.after);
    rss
}
