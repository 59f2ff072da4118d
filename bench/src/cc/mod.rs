//! cc-bench: congestion controllers side by side on the emulated link (issue 11).
//!
//! Each measurement gets a fresh [`Link`] (so its counters belong to one flow): a sink in
//! namespace B, a bulk source in A, either directly over TCP with a named Linux congestion
//! control, or through the real tunnel (quictun-client in A, quictun-server in B) with a
//! `--congestion` choice. Alongside, a UDP ping measures the RTT through the bottleneck.
//! Sharing runs put the tunnel and one direct TCP flow on the same link at once.

pub mod flow;
pub mod probe;
pub mod report;

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::linkem::{Link, LinkConfig, LinkStats};
use flow::{Sink, Source, Tunnel};
use probe::RttProbe;

/// The benchmark link's fixed parts: 100 Mbit/s each way behind a 30 ms drop-tail queue.
pub const RATE_BPS: u64 = 100_000_000;
pub const QUEUE: Duration = Duration::from_millis(30);
/// Throughput series resolution.
pub const SERIES_STEP: Duration = Duration::from_millis(500);
/// How long a flow may take to deliver its first byte (handshakes, process start-up).
const FIRST_BYTE_PATIENCE: Duration = Duration::from_secs(15);

/// Who sends: Linux TCP with a named congestion control, or the tunnel with a `--congestion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    TcpCubic,
    TcpBbr,
    QuinnCubic,
    QuinnBbr,
    Adaptive,
}

impl Sender {
    pub const ALL: [Sender; 5] = [
        Sender::TcpCubic,
        Sender::TcpBbr,
        Sender::QuinnCubic,
        Sender::QuinnBbr,
        Sender::Adaptive,
    ];

    /// The name used on the command line, in tables and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Sender::TcpCubic => "tcp-cubic",
            Sender::TcpBbr => "tcp-bbr",
            Sender::QuinnCubic => "quinn-cubic",
            Sender::QuinnBbr => "quinn-bbr",
            Sender::Adaptive => "adaptive",
        }
    }

    pub fn parse(text: &str) -> Result<Sender, String> {
        Sender::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                format!(
                    "unknown sender {text:?} (tcp-cubic, tcp-bbr, quinn-cubic, quinn-bbr, adaptive)"
                )
            })
    }

    /// The Linux congestion control of a direct TCP sender.
    fn tcp_cc(self) -> Option<&'static str> {
        match self {
            Sender::TcpCubic => Some("cubic"),
            Sender::TcpBbr => Some("bbr"),
            _ => None,
        }
    }

    /// The tunnel's `--congestion` value of a QUIC sender.
    fn tunnel_cc(self) -> Option<&'static str> {
        match self {
            Sender::QuinnCubic => Some("cubic"),
            Sender::QuinnBbr => Some("bbr"),
            Sender::Adaptive => Some("adaptive"),
            _ => None,
        }
    }
}

/// One link condition of the goodput table.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub rtt: Duration,
    pub loss: f64,
    pub duration: Duration,
}

impl Scenario {
    /// The four conditions: 20 ms at 0 / 1 / 5 % loss, and 200 ms at 1 %.
    pub fn standard(short: Duration, long: Duration) -> Vec<Scenario> {
        let ms = Duration::from_millis;
        vec![
            Scenario::new("20ms-0%", ms(20), 0.0, short),
            Scenario::new("20ms-1%", ms(20), 0.01, short),
            Scenario::new("20ms-5%", ms(20), 0.05, short),
            Scenario::new("200ms-1%", ms(200), 0.01, long),
        ]
    }

    fn new(name: &str, rtt: Duration, loss: f64, duration: Duration) -> Scenario {
        Scenario {
            name: name.to_string(),
            rtt,
            loss,
            duration,
        }
    }

    fn link_config(&self, seed: u64) -> LinkConfig {
        LinkConfig {
            rtt: self.rtt,
            rate_bps: Some(RATE_BPS),
            loss: self.loss,
            queue: QUEUE,
            seed,
            ..LinkConfig::default()
        }
    }
}

/// What one flow on its own link achieved.
#[derive(Clone, Debug)]
pub struct FlowResult {
    pub sender: Sender,
    pub scenario: Scenario,
    /// Application bytes delivered per second, from the first byte on, in Mbit/s.
    pub goodput_mbps: f64,
    /// Goodput per [`SERIES_STEP`], Mbit/s.
    pub series_mbps: Vec<f64>,
    pub rtt_samples_ms: Vec<f64>,
    /// Counters of the whole run (the data direction is A→B).
    pub stats: LinkStats,
}

impl FlowResult {
    /// Packets dropped at the bottleneck queue as a share of those the sender offered.
    pub fn queue_drop_share(&self) -> f64 {
        share(
            self.stats.a_to_b.queue_dropped.packets,
            self.stats.a_to_b.offered.packets,
        )
    }

    pub fn random_drop_share(&self) -> f64 {
        share(
            self.stats.a_to_b.random_dropped.packets,
            self.stats.a_to_b.offered.packets,
        )
    }
}

/// Our tunnel and one direct TCP flow on the same link.
#[derive(Clone, Debug)]
pub struct ShareResult {
    pub competitor: Sender,
    pub ours: Sender,
    pub rtt: Duration,
    pub loss: f64,
    pub duration: Duration,
    pub ours_mbps: f64,
    pub theirs_mbps: f64,
    pub ours_series_mbps: Vec<f64>,
    pub theirs_series_mbps: Vec<f64>,
    pub rtt_samples_ms: Vec<f64>,
    pub stats: LinkStats,
}

impl ShareResult {
    pub fn ours_share(&self) -> f64 {
        self.ours_mbps / (self.ours_mbps + self.theirs_mbps).max(f64::MIN_POSITIVE)
    }

    pub fn queue_drop_share(&self) -> f64 {
        share(
            self.stats.a_to_b.queue_dropped.packets,
            self.stats.a_to_b.offered.packets,
        )
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Runs one sender alone on a fresh link under `scenario`.
pub fn run_flow(
    sender: Sender,
    scenario: &Scenario,
    seed: u64,
    bin_dir: &Path,
) -> Result<FlowResult, String> {
    let link = start_link(scenario.link_config(seed))?;
    let sink = Sink::start(&link)?;
    let (source, mut tunnel) = start_sender(&link, sender, &sink, bin_dir)?;
    let probe = RttProbe::start(&link)?;
    let measured = measure(&[&sink], scenario.duration, tunnel.as_mut());
    drop(source);
    drop(tunnel);
    let rtt = probe.finish();
    let stats = link.stats();
    drop(link);
    let (goodput, mut series) = measured?;
    Ok(FlowResult {
        sender,
        scenario: scenario.clone(),
        goodput_mbps: goodput[0],
        series_mbps: series.remove(0),
        rtt_samples_ms: millis(&rtt),
        stats,
    })
}

/// Runs `ours` (through the tunnel) against one direct TCP `competitor` on one link.
pub fn run_share(
    ours: Sender,
    competitor: Sender,
    scenario: &Scenario,
    seed: u64,
    bin_dir: &Path,
) -> Result<ShareResult, String> {
    let link = start_link(scenario.link_config(seed))?;
    let ours_sink = Sink::start(&link)?;
    let theirs_sink = Sink::start(&link)?;
    let (ours_source, mut tunnel) = start_sender(&link, ours, &ours_sink, bin_dir)?;
    // Both flows start together: the tunnel's handshake is over once its first byte arrived.
    wait_first_byte(&ours_sink, tunnel.as_mut())?;
    let (theirs_source, _) = start_sender(&link, competitor, &theirs_sink, bin_dir)?;
    let probe = RttProbe::start(&link)?;
    let measured = measure(
        &[&ours_sink, &theirs_sink],
        scenario.duration,
        tunnel.as_mut(),
    );
    drop((ours_source, theirs_source));
    drop(tunnel);
    let rtt = probe.finish();
    let stats = link.stats();
    drop(link);
    let (goodput, mut series) = measured?;
    Ok(ShareResult {
        competitor,
        ours,
        rtt: scenario.rtt,
        loss: scenario.loss,
        duration: scenario.duration,
        ours_mbps: goodput[0],
        theirs_mbps: goodput[1],
        theirs_series_mbps: series.remove(1),
        ours_series_mbps: series.remove(0),
        rtt_samples_ms: millis(&rtt),
        stats,
    })
}

/// A fresh link with TCP's buffer limits raised in both namespaces.
pub(crate) fn start_link(config: LinkConfig) -> Result<Link, String> {
    let link = Link::start(config).map_err(|e| e.to_string())?;
    // Linux's default buffer limits (4 / 6 MB) are below 2 × BDP at 200 ms: let TCP grow.
    for key in ["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"] {
        link.set_sysctl(key, "4096 131072 67108864")
            .map_err(|e| e.to_string())?;
    }
    Ok(link)
}

/// Starts `sender` towards `sink`: a direct TCP connection, or the tunnel and a connection
/// into it.
fn start_sender(
    link: &Link,
    sender: Sender,
    sink: &Sink,
    bin_dir: &Path,
) -> Result<(Source, Option<Tunnel>), String> {
    if let Some(cc) = sender.tcp_cc() {
        let to = SocketAddr::from((link.addr_b(), sink.port()));
        return Ok((
            Source::start(link, to, Some(cc), FIRST_BYTE_PATIENCE)?,
            None,
        ));
    }
    let congestion = sender.tunnel_cc().unwrap_or("cubic");
    let tunnel = Tunnel::start(link, bin_dir, congestion, sink.port())?;
    let source = Source::start(link, tunnel.app_addr(), None, FIRST_BYTE_PATIENCE)?;
    Ok((source, Some(tunnel)))
}

fn wait_first_byte(sink: &Sink, mut tunnel: Option<&mut Tunnel>) -> Result<(), String> {
    let deadline = Instant::now() + FIRST_BYTE_PATIENCE;
    while sink.received() == 0 {
        if let Some(tunnel) = tunnel.as_deref_mut() {
            tunnel.check_alive()?;
        }
        if Instant::now() >= deadline {
            return Err("no data arrived within 15 s".to_string());
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Counts what each sink receives for `duration` from the first sink's first byte: the
/// average Mbit/s of each, and a series per [`SERIES_STEP`].
#[allow(clippy::type_complexity)]
fn measure(
    sinks: &[&Sink],
    duration: Duration,
    mut tunnel: Option<&mut Tunnel>,
) -> Result<(Vec<f64>, Vec<Vec<f64>>), String> {
    wait_first_byte(sinks[0], tunnel.as_deref_mut())?;
    let start = Instant::now();
    let first: Vec<u64> = sinks.iter().map(|s| s.received()).collect();
    let mut last = first.clone();
    let mut series = vec![Vec::new(); sinks.len()];
    let steps = (duration.as_nanos() / SERIES_STEP.as_nanos()).max(1) as u32;
    for step in 1..=steps {
        let due = start + SERIES_STEP * step;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        for (i, sink) in sinks.iter().enumerate() {
            let now = sink.received();
            series[i].push(mbps(now - last[i], SERIES_STEP));
            last[i] = now;
        }
        if let Some(tunnel) = tunnel.as_deref_mut() {
            tunnel.check_alive()?;
        }
    }
    let elapsed = start.elapsed();
    let averages = last
        .iter()
        .zip(&first)
        .map(|(l, f)| mbps(l - f, elapsed))
        .collect();
    Ok((averages, series))
}

fn mbps(bytes: u64, over: Duration) -> f64 {
    bytes as f64 * 8.0 / over.as_secs_f64() / 1e6
}

fn millis(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}
