//! cc-bench: direct TCP (cubic, bbr) and the tunnel (quinn cubic, quinn bbr, adaptive) side by
//! side on the emulated link — goodput at 0 / 1 / 5 % loss and at 200 ms with 1 %, drops at
//! the bottleneck queue, the RTT a flow causes, and how the tunnel shares the link with one
//! TCP flow. Prints a table and writes everything as JSON (bench/plot_cc.py draws it).
//!
//! Needs root, `ip` and /dev/net/tun (like linkem), and release builds of quictun-server,
//! quictun-client and their default plugins in --bin-dir.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use quictun_bench::cc::{self, Scenario, Sender};
use quictun_bench::linkem::parse::{parse_duration, parse_percent};

#[derive(Parser, Debug)]
#[command(
    name = "cc-bench",
    about = "Compares congestion controllers on the emulated link (100 Mbit/s, 30 ms queue)"
)]
struct Cli {
    /// Senders to measure, comma-separated: tcp-cubic, tcp-bbr, quinn-cubic, quinn-bbr, adaptive
    #[arg(long, value_delimiter = ',', value_parser = Sender::parse,
          default_value = "tcp-cubic,tcp-bbr,quinn-cubic,quinn-bbr,adaptive")]
    senders: Vec<Sender>,
    /// Scenarios to run, comma-separated (20ms-0%, 20ms-1%, 20ms-5%, 200ms-1%); default all
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Length of each 20 ms measurement
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Length of each 200 ms measurement (start-up takes longer there)
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    long_duration: Duration,
    /// Competing TCP flows for the sharing runs, comma-separated; "none" skips them
    #[arg(long, value_delimiter = ',', default_value = "tcp-bbr,tcp-cubic")]
    share_with: Vec<String>,
    /// Length of each sharing run
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    share_duration: Duration,
    /// Random loss during the sharing runs
    #[arg(long, default_value = "0", value_parser = parse_percent)]
    share_loss: f64,
    /// Seed of the link's loss pattern (the same for every sender)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory with quictun-server, quictun-client and the plugin libraries
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// JSON output file [default: bench/results/cc-<unix time>.json]
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let scenarios = chosen_scenarios(cli)?;
    let competitors = competitors(cli)?;
    for binary in ["quictun-server", "quictun-client"] {
        if !cli.bin_dir.join(binary).is_file() {
            return Err(format!(
                "{} not found: build with `cargo build --release -p quictun -p quictun-plugin-fixed \
                 -p quictun-plugin-cleartext -p quictun-plugin-spice` or pass --bin-dir",
                cli.bin_dir.join(binary).display()
            ));
        }
    }
    let load_before = loadavg();
    let mut flows = Vec::new();
    for scenario in &scenarios {
        for &sender in &cli.senders {
            eprint!("{:<10} {:<12} ", scenario.name, sender.name());
            let flow = cc::run_flow(sender, scenario, cli.seed, &cli.bin_dir)
                .map_err(|e| format!("{} on {}: {e}", sender.name(), scenario.name))?;
            eprintln!(
                "{:7.1} Mbit/s  queue drops {:5.2} %  median RTT {:.1} ms",
                flow.goodput_mbps,
                flow.queue_drop_share() * 100.0,
                cc::report::quantile(&flow.rtt_samples_ms, 0.5).unwrap_or(f64::NAN)
            );
            flows.push(flow);
        }
    }
    let share_scenario = Scenario {
        name: "sharing".to_string(),
        rtt: Duration::from_millis(20),
        loss: cli.share_loss,
        duration: cli.share_duration,
    };
    let mut shares = Vec::new();
    for competitor in competitors {
        eprintln!("sharing: adaptive vs {}", competitor.name());
        let share = cc::run_share(
            Sender::Adaptive,
            competitor,
            &share_scenario,
            cli.seed,
            &cli.bin_dir,
        )
        .map_err(|e| format!("sharing with {}: {e}", competitor.name()))?;
        shares.push(share);
    }
    let load_after = loadavg();
    print!("{}", cc::report::table(&flows, &shares));
    println!("load average before / after: {load_before} / {load_after}");
    let context = format!(
        "\"link\":{{\"rate_bps\":{},\"queue_ms\":{}}},\"seed\":{},\"unix_time\":{},\
         \"loadavg_before\":\"{load_before}\",\"loadavg_after\":\"{load_after}\"",
        cc::RATE_BPS,
        cc::QUEUE.as_millis(),
        cli.seed,
        unix_time()
    );
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bench/results/cc-{}.json", unix_time())));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&out, cc::report::json(&flows, &shares, &context))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

fn chosen_scenarios(cli: &Cli) -> Result<Vec<Scenario>, String> {
    let all = Scenario::standard(cli.duration, cli.long_duration);
    if cli.scenarios.is_empty() {
        return Ok(all);
    }
    cli.scenarios
        .iter()
        .map(|name| {
            all.iter()
                .find(|s| &s.name == name)
                .cloned()
                .ok_or_else(|| {
                    format!("unknown scenario {name:?} (20ms-0%, 20ms-1%, 20ms-5%, 200ms-1%)")
                })
        })
        .collect()
}

fn competitors(cli: &Cli) -> Result<Vec<Sender>, String> {
    if cli.share_with.iter().any(|s| s == "none") {
        return Ok(Vec::new());
    }
    let senders = cli
        .share_with
        .iter()
        .map(|s| Sender::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(s) = senders
        .iter()
        .find(|s| !matches!(s, Sender::TcpBbr | Sender::TcpCubic))
    {
        return Err(format!(
            "--share-with takes direct TCP senders, not {}",
            s.name()
        ));
    }
    Ok(senders)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
