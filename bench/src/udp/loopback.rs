//! The loopback part of the UDP suite: round trips of 64-byte datagrams to the echoing target,
//! directly and through the tunnel, and of DATAGRAM frames over a bare quinn connection (the
//! floor of any quinn tunnel), in alternating blocks; then one flow of each of
//! [`SIZES`] into the counting target, directly and through the tunnel, the sender keeping
//! [`WINDOW`] datagrams in flight: datagrams per second, loss, and the endpoints' CPU time per
//! million datagrams delivered.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use super::endpoints::Endpoints;
use super::ping::{self, Pings};
use super::senders::{self, Sent};
use super::snmp::UdpCounters;
use super::target::{Sunk, Target};
use super::{DRAIN, Options, PATIENCE, PING_SIZE, Plan};
use crate::peer::{QuinnPeer, peer_binary};
use crate::process::cpu_seconds;

/// Datagrams a sender keeps beyond the highest one the target has received.
pub const WINDOW: u64 = 64;
/// The flows' datagram sizes.
pub const SIZES: [usize; 2] = [64, 1200];

/// The loopback part's measurements.
pub struct Loopback {
    pub direct_rtt: Pings,
    pub tunnel_rtt: Pings,
    /// DATAGRAM frames echoed over a bare quinn connection (quinn-peer): the floor of any
    /// quinn tunnel's round trip.
    pub quinn_rtt: Pings,
    pub flows: Vec<Flow>,
}

/// One windowed flow into the counting target.
pub struct Flow {
    pub path: &'static str,
    pub payload: usize,
    pub sent: Sent,
    pub received: u64,
    /// The endpoints' CPU seconds over the flow (the tunnel only).
    pub cpu_s: Option<f64>,
    /// The kernel's UDP counters meanwhile (the whole machine's loopback traffic).
    pub sockets: UdpCounters,
}

impl Flow {
    pub fn per_second(&self) -> f64 {
        self.received as f64 / self.sent.seconds
    }

    pub fn loss(&self) -> f64 {
        1.0 - self.received as f64 / (self.sent.datagrams.max(1)) as f64
    }

    pub fn mbps(&self) -> f64 {
        self.per_second() * self.payload as f64 * 8.0 / 1e6
    }

    /// CPU seconds of both endpoints per million datagrams delivered.
    pub fn cpu_per_million(&self) -> Option<f64> {
        let cpu = self.cpu_s?;
        (self.received > 0).then(|| cpu / (self.received as f64 / 1e6))
    }
}

/// Runs the loopback part against the release endpoints in `options.bin_dir`.
pub fn run(options: &Options, plan: &Plan) -> Result<Loopback, String> {
    let bound = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind: {e}"))?;
    let target = Target::start(bound).map_err(|e| format!("cannot start the target: {e}"))?;
    let mut tunnel = Endpoints::loopback(&options.bin_dir, target.addr())?;
    let connected = |to: SocketAddr| {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(to)?;
        Ok::<_, std::io::Error>(socket)
    };
    let direct = connected(target.addr()).map_err(|e| format!("direct socket: {e}"))?;
    let through = connected(tunnel.udp).map_err(|e| format!("tunnel socket: {e}"))?;
    ping::wait_echo(&through, PATIENCE)
        .map_err(|e| format!("the tunnel: {e}; client log: {}", tunnel.log_tail("client")))?;
    let mut peer = QuinnPeer::start(&peer_binary())?;
    let [mut direct_rtt, mut tunnel_rtt, mut quinn_rtt] = <[Pings; 3]>::default();
    // Alternating blocks, so that a machine whose speed drifts affects all three alike.
    let block = plan.loopback_pings / 2;
    for _ in 0..2 {
        for (socket, pings) in [(&direct, &mut direct_rtt), (&through, &mut tunnel_rtt)] {
            let every = Duration::from_millis(1);
            let series = ping::ping(socket, block, every, PING_SIZE)
                .map_err(|e| format!("round trips: {e}"))?;
            pings.extend(series);
        }
        let rtt_ms = peer
            .ask(&format!("datagrams {block} {PING_SIZE}"))
            .map_err(|e| format!("bare quinn round trips: {e}"))?;
        quinn_rtt.extend(Pings {
            sent: block,
            rtt_ms,
            seqs: Vec::new(),
        });
    }
    drop(peer);
    tunnel.check_alive()?;
    let mut flows = Vec::new();
    for payload in SIZES {
        for (path, socket, pids) in [
            ("direct", &direct, None),
            ("tunnel", &through, Some(tunnel.pids())),
        ] {
            flows.push(windowed_flow(
                &target,
                socket,
                (path, payload),
                pids,
                plan.flow,
            ));
            tunnel.check_alive()?;
        }
    }
    Ok(Loopback {
        direct_rtt,
        tunnel_rtt,
        quinn_rtt,
        flows,
    })
}

fn windowed_flow(
    target: &Target,
    socket: &UdpSocket,
    (path, payload): (&'static str, usize),
    pids: Option<[u32; 2]>,
    duration: Duration,
) -> Flow {
    let (cpu_before, sockets_before) = (pids.map(|p| cpu_seconds(&p)), UdpCounters::read());
    let run = target.begin_run(false);
    let sent = senders::send_windowed(socket, target, (run, payload), WINDOW, duration);
    thread::sleep(DRAIN);
    let Sunk { received, .. } = target.end_run();
    let sockets = UdpCounters::read().since(&sockets_before);
    let cpu_s = pids
        .zip(cpu_before)
        .map(|(p, before)| cpu_seconds(&p) - before);
    Flow {
        path,
        payload,
        sent,
        received,
        cpu_s,
        sockets,
    }
}

impl Loopback {
    pub fn text(&self) -> String {
        let mut out = format!(
            "loopback round trips, 64 B: direct {}; tunnel {}; bare quinn {}\n",
            self.direct_rtt.text(),
            self.tunnel_rtt.text(),
            self.quinn_rtt.text()
        );
        for flow in &self.flows {
            out.push_str(&format!(
                "loopback flow, window {WINDOW}: {:<6} {:>5} B  {:>8.0} datagrams/s  {:>8.1} Mbit/s  \
                 loss {:>5.2} %  endpoints' CPU {} s per million datagrams\n",
                flow.path,
                flow.payload,
                flow.per_second(),
                flow.mbps(),
                flow.loss() * 100.0,
                flow.cpu_per_million()
                    .map_or("-".into(), |c| format!("{c:.2}"))
            ));
        }
        out
    }

    pub fn json(&self, plan: &Plan) -> String {
        let flows: Vec<String> = self.flows.iter().map(Flow::json).collect();
        format!(
            "{{\"round_trip\":{{\"size\":64,\"direct\":{},\"tunnel\":{},\"bare_quinn\":{}}},\
             \"window\":{WINDOW},\"flow_seconds\":{},\"flows\":[{}]}}",
            self.direct_rtt.json(),
            self.tunnel_rtt.json(),
            self.quinn_rtt.json(),
            plan.flow.as_secs_f64(),
            flows.join(",")
        )
    }
}

impl Flow {
    fn json(&self) -> String {
        format!(
            "{{\"path\":\"{}\",\"payload\":{},\"sent\":{},\"received\":{},\"seconds\":{:.3},\
             \"datagrams_per_s\":{:.0},\"mbit_s\":{:.2},\"loss\":{:.5},\"send_errors\":{},\
             \"stalls\":{},\"cpu_s\":{},\"cpu_s_per_million\":{},\"udp_counters\":{}}}",
            self.path,
            self.payload,
            self.sent.datagrams,
            self.received,
            self.sent.seconds,
            self.per_second(),
            self.mbps(),
            self.loss(),
            self.sent.errors,
            self.sent.stalls,
            self.cpu_s.map_or("null".into(), |c| format!("{c:.2}")),
            self.cpu_per_million()
                .map_or("null".into(), |c| format!("{c:.3}")),
            self.sockets.json()
        )
    }
}
