//! linkem: sets up an emulated link between two network namespaces, runs a command (or waits
//! for Ctrl-C), prints the link's counters as JSON and tears everything down.
//!
//! The command runs in the root namespace with LINKEM_NS_A, LINKEM_NS_B, LINKEM_ADDR_A and
//! LINKEM_ADDR_B set, so a script can start its parts with `ip netns exec "$LINKEM_NS_B" ...`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use clap::Parser;
use quictun_bench::linkem::parse::{format_rate, parse_duration, parse_percent, parse_rate};
use quictun_bench::linkem::{Error, Link, LinkConfig, netns};

#[derive(Parser, Debug)]
#[command(
    name = "linkem",
    about = "Emulates a delayed, rate-limited, lossy link between two network namespaces \
             (198.18.0.1 in A, 198.18.0.2 in B), runs a command, prints counters as JSON",
    after_help = "Example: linkem --rtt 20ms --rate 100mbit --loss 1% -- \
                  sh -c 'ip netns exec \"$LINKEM_NS_A\" ping -c 3 \"$LINKEM_ADDR_B\"'"
)]
struct Cli {
    /// Round-trip time added by the link (each direction delays by half): 20ms, 1.5s, 0
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    rtt: Duration,
    /// Rate of each direction: 100mbit, 1gbit, 512kbit; 0 or unlimited for no limit
    #[arg(long, default_value = "unlimited", value_parser = parse_rate_arg)]
    rate: Rate,
    /// Random loss per packet, in each direction: 1%, 0.1%, 0
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    loss: f64,
    /// Drop-tail queue in front of the rate limiter, as time at the link rate
    #[arg(long, default_value = "30ms", value_parser = parse_duration)]
    queue: Duration,
    /// Seed of the loss pattern
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MTU of both TUN devices
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Queue length of both TUN devices, in packets
    #[arg(long, default_value_t = 20_000)]
    txqueuelen: u32,
    /// Default TCP congestion control in both namespaces; only one listed in the host's
    /// net.ipv4.tcp_allowed_congestion_control is accepted
    #[arg(long)]
    cc: Option<String>,
    /// Write the JSON counters to this file instead of stdout
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Remove namespaces left by linkem processes that were killed, then exit
    #[arg(long, conflicts_with = "command")]
    cleanup: bool,
    /// Command to run while the link is up (after --); without one, runs until Ctrl-C
    #[arg(last = true)]
    command: Vec<OsString>,
}

/// A parsed `--rate` (clap needs a type of its own for an optional value with a default).
#[derive(Clone, Copy, Debug)]
struct Rate(Option<u64>);

fn parse_rate_arg(text: &str) -> Result<Rate, String> {
    parse_rate(text).map(Rate)
}

/// The signal that asked us to stop (0 while none has).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("linkem: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    if cli.cleanup {
        for name in netns::remove_stale()? {
            eprintln!("linkem: removed stale namespace {name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    install_signal_handlers();
    let link = Link::start(config(&cli))?;
    if let Some(cc) = &cli.cc {
        link.set_tcp_congestion(cc)?;
    }
    announce(&link);
    let code = match cli.command.split_first() {
        Some((program, args)) => run_command(&link, program, args)?,
        None => {
            wait_for_signal();
            ExitCode::SUCCESS
        }
    };
    let report = link.report_json();
    drop(link);
    write_report(&report, cli.stats_file.as_ref())?;
    Ok(code)
}

fn config(cli: &Cli) -> LinkConfig {
    LinkConfig {
        rtt: cli.rtt,
        rate_bps: cli.rate.0,
        loss: cli.loss,
        queue: cli.queue,
        seed: cli.seed,
        mtu: cli.mtu,
        txqueuelen: cli.txqueuelen,
    }
}

fn announce(link: &Link) {
    let c = link.config();
    eprintln!(
        "linkem: A={} ({}) B={} ({}) rtt={:?} rate={} loss={}% queue={:?}",
        link.ns_a(),
        link.addr_a(),
        link.ns_b(),
        link.addr_b(),
        c.rtt,
        format_rate(c.rate_bps),
        c.loss * 100.0,
        c.queue,
    );
}

/// Runs the command to completion (or until we are signalled, then ends it) and returns its
/// exit code, or 128 + signal if a signal ended it.
fn run_command(link: &Link, program: &OsString, args: &[OsString]) -> Result<ExitCode, Error> {
    let mut child = Command::new(program)
        .args(args)
        .env("LINKEM_NS_A", link.ns_a())
        .env("LINKEM_NS_B", link.ns_b())
        .env("LINKEM_ADDR_A", link.addr_a().to_string())
        .env("LINKEM_ADDR_B", link.addr_b().to_string())
        .spawn()
        .map_err(|e| Error(format!("starting {}: {e}", program.to_string_lossy())))?;
    let status = loop {
        if let Some(status) = try_wait(&mut child)? {
            break status;
        }
        if STOP_SIGNAL.load(Ordering::Relaxed) != 0 {
            end_child(&mut child);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn try_wait(child: &mut Child) -> Result<Option<std::process::ExitStatus>, Error> {
    child
        .try_wait()
        .map_err(|e| Error(format!("waiting for the command: {e}")))
}

/// Asks the child we started to stop (SIGTERM), once.
fn end_child(child: &mut Child) {
    static SENT: AtomicI32 = AtomicI32::new(0);
    if SENT.swap(1, Ordering::Relaxed) == 0 {
        // SAFETY: kill on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    }
}

fn wait_for_signal() {
    eprintln!("linkem: running until Ctrl-C");
    while STOP_SIGNAL.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_report(report: &str, file: Option<&PathBuf>) -> Result<(), Error> {
    match file {
        None => {
            println!("{report}");
            Ok(())
        }
        Some(path) => std::fs::write(path, format!("{report}\n"))
            .map_err(|e| Error(format!("writing {}: {e}", path.display()))),
    }
}

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP only record themselves, so the main loop can end the command
/// and remove the namespaces instead of dying with them left behind.
fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
