//! The emulated-link part of the UDP suite (linkem: 20 ms RTT, 100 Mbit/s each way, 30 ms
//! drop-tail queue, 1 % random loss each way; needs root). The client runs in namespace A
//! with two services on its one QUIC connection, a UDP listener and a TCP listener; the
//! server, the UDP target and the bulk transfer's sink in B. Round trips of small datagrams,
//! 20 a second: directly, through the tunnel alone (the base), and through the tunnel while a
//! bulk TCP transfer through the same client fills the link (with direct ones at the same
//! time, which show the link's queue alone); and the paced stream ([`super::paced`]) through
//! the tunnel, then directly.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use super::endpoints::Endpoints;
use super::paced::{self, Paced};
use super::ping::{self, Pings};
use super::target::Target;
use super::{Options, PATIENCE, PING_SIZE, Plan};
use crate::cc::flow::{Sink, Source};
use crate::cc::{QUEUE, RATE_BPS};
use crate::linkem::{Count, DirStats, Link, LinkConfig};

/// The link's random loss, each way.
pub const LOSS: f64 = 0.01;
/// One small datagram every 50 ms.
const PING_INTERVAL: Duration = Duration::from_millis(50);

/// The link part's measurements.
pub struct OverLink {
    /// Round trips from namespace A to the target in B without the tunnel.
    pub direct_rtt: Pings,
    /// Through the tunnel, nothing else on the link.
    pub base_rtt: Pings,
    /// Through the tunnel beside the bulk transfer.
    pub bulk_rtt: Pings,
    /// Directly at the same time: the link's queue without the tunnel.
    pub bulk_direct_rtt: Pings,
    /// The bulk transfer's goodput while `bulk_rtt` was timed.
    pub bulk_mbps: f64,
    /// The bulk phase's data direction on the link.
    pub bulk_link: DirStats,
    pub paced: Paced,
    /// The same stream sent directly: what the link and this machine do to it.
    pub paced_direct: Paced,
}

/// Runs the link part (root: namespaces and TUN devices) against the release endpoints in
/// `options.bin_dir`.
pub fn run(options: &Options, plan: &Plan) -> Result<OverLink, String> {
    let link = Link::start(LinkConfig {
        rtt: Duration::from_millis(20),
        rate_bps: Some(RATE_BPS),
        loss: LOSS,
        queue: QUEUE,
        seed: 1,
        ..LinkConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let any = || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0));
    let bound = link.run_in_b(any).map_err(|e| e.to_string())?;
    let bound = bound.map_err(|e| format!("cannot bind the target in namespace B: {e}"))?;
    let target = Target::start(bound).map_err(|e| format!("cannot start the target: {e}"))?;
    let sink = Sink::start(&link)?;
    let port = target.addr().port();
    let mut tunnel = Endpoints::link(&link, &options.bin_dir, port, sink.port())?;
    let connect_in_a = |to: SocketAddr| {
        link.run_in_a(|| {
            let socket = any()?;
            socket.connect(to)?;
            Ok::<_, std::io::Error>(socket)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot make a socket in namespace A: {e}"))
    };
    let direct = connect_in_a(SocketAddr::from((link.addr_b(), port)))?;
    let through = connect_in_a(tunnel.udp)?;
    ping::wait_echo(&through, PATIENCE)
        .map_err(|e| format!("the tunnel: {e}; client log: {}", tunnel.log_tail("client")))?;
    let pings = plan.link_pings.as_millis() as u64 / PING_INTERVAL.as_millis() as u64;
    let ping = |socket: &UdpSocket| {
        ping::ping(socket, pings, PING_INTERVAL, PING_SIZE).map_err(|e| format!("round trips: {e}"))
    };
    let direct_rtt = ping(&direct)?;
    let base_rtt = ping(&through)?;
    tunnel.check_alive()?;
    let paced = paced::run(&link, &target, ("tunnel", &through), plan.paced);
    let paced_direct = paced::run(&link, &target, ("direct", &direct), plan.paced);
    tunnel.check_alive()?;
    // Beside the bulk transfer, direct round trips at the same time show what the link's
    // queue alone adds.
    let both = || {
        thread::scope(|scope| {
            let direct = scope.spawn(|| ping(&direct));
            let through = ping(&through);
            let direct = direct.join().map_err(|_| "the ping thread panicked")?;
            Ok::<_, String>((through?, direct?))
        })
    };
    let ((bulk_rtt, bulk_direct_rtt), bulk_mbps, bulk_link) =
        beside_bulk(&link, &sink, &mut tunnel, plan, both)?;
    tunnel.check_alive()?;
    drop(tunnel);
    Ok(OverLink {
        direct_rtt,
        base_rtt,
        bulk_rtt,
        bulk_direct_rtt,
        bulk_mbps,
        bulk_link,
        paced,
        paced_direct,
    })
}

/// Starts the bulk transfer through the client's TCP service, lets it fill the link, runs
/// `measure` beside it: its result, the bulk goodput meanwhile and the link's data direction.
fn beside_bulk<T>(
    link: &Link,
    sink: &Sink,
    tunnel: &mut Endpoints,
    plan: &Plan,
    measure: impl FnOnce() -> Result<T, String>,
) -> Result<(T, f64, DirStats), String> {
    let app = tunnel.tcp.ok_or("no TCP service")?;
    let source = Source::start(link, app, None, PATIENCE)?;
    let waited = Instant::now();
    while sink.received() == 0 {
        tunnel.check_alive()?;
        if waited.elapsed() > PATIENCE {
            return Err(format!(
                "the bulk transfer delivered nothing in {PATIENCE:?}"
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(plan.bulk_warm_up);
    let (bytes, stats, start) = (sink.received(), link.stats().a_to_b, Instant::now());
    let measured = measure();
    let mbps = (sink.received() - bytes) as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6;
    let during = difference(&link.stats().a_to_b, &stats);
    drop(source);
    Ok((measured?, mbps, during))
}

/// The counters of what happened between two snapshots.
pub fn difference(after: &DirStats, before: &DirStats) -> DirStats {
    let minus = |a: Count, b: Count| Count {
        packets: a.packets - b.packets,
        bytes: a.bytes - b.bytes,
    };
    DirStats {
        offered: minus(after.offered, before.offered),
        forwarded: minus(after.forwarded, before.forwarded),
        random_dropped: minus(after.random_dropped, before.random_dropped),
        queue_dropped: minus(after.queue_dropped, before.queue_dropped),
        write_failed: minus(after.write_failed, before.write_failed),
    }
}

impl OverLink {
    pub fn text(&self) -> String {
        format!(
            "link round trips, 64 B every 50 ms: direct {}\n  through the tunnel alone (base) {}\n\
             {}link round trips beside the bulk TCP tunnel ({:.1} Mbit/s): through the tunnel {}\n  \
             direct at the same time {}\n  link A to B meanwhile: {}\n",
            self.direct_rtt.text(),
            self.base_rtt.text(),
            self.paced.text() + &self.paced_direct.text(),
            self.bulk_mbps,
            self.bulk_rtt.text(),
            self.bulk_direct_rtt.text(),
            dir_text(&self.bulk_link)
        )
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"config\":{{\"rtt_ms\":20,\"rate_bps\":{RATE_BPS},\"queue_ms\":{},\"loss\":{LOSS},\
             \"seed\":1}},\"round_trip\":{{\"size\":64,\"interval_ms\":50,\"direct\":{},\"base\":{},\
             \"beside_bulk\":{},\"direct_beside_bulk\":{},\"series_ms\":{{\"base\":{},\
             \"beside_bulk\":{},\"direct_beside_bulk\":{}}}}},\"bulk_mbit_s\":{:.2},\"bulk_link_a_to_b\":{},\"paced\":{},\"paced_direct\":{}}}",
            QUEUE.as_millis(),
            self.direct_rtt.json(),
            self.base_rtt.json(),
            self.bulk_rtt.json(),
            self.bulk_direct_rtt.json(),
            self.base_rtt.series_json(),
            self.bulk_rtt.series_json(),
            self.bulk_direct_rtt.series_json(),
            self.bulk_mbps,
            dir_json(&self.bulk_link),
            self.paced.json(),
            self.paced_direct.json()
        )
    }
}

/// One direction of the link: packets offered and the shares dropped.
pub fn dir_text(dir: &DirStats) -> String {
    let share = |n: u64| n as f64 * 100.0 / dir.offered.packets.max(1) as f64;
    format!(
        "{} packets offered, {:.2} % dropped at random, {:.2} % at the queue",
        dir.offered.packets,
        share(dir.random_dropped.packets),
        share(dir.queue_dropped.packets)
    )
}

pub fn dir_json(dir: &DirStats) -> String {
    format!(
        "{{\"offered\":{},\"forwarded\":{},\"random_dropped\":{},\"queue_dropped\":{}}}",
        dir.offered.packets,
        dir.forwarded.packets,
        dir.random_dropped.packets,
        dir.queue_dropped.packets
    )
}
