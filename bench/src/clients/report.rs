//! The many-clients suite's results: what each phase moved and spent, what held it back, and
//! the JSON of quictun-bench's other suites.

use quictun::quic::path::MIN_PAYLOAD;

use super::{Phase, ThreadsRun};
use crate::cc::report::quantile;
use crate::udp::snmp::UdpCounters;

/// The server's share of its worker threads' cores from which it counts as the limit.
const SATURATED: f64 = 0.85;
/// The machine's busy share from which its cores count as the limit.
const MACHINE_FULL: f64 = 0.9;

/// Everything the suite measured.
pub struct Report {
    pub quick: bool,
    pub clients: usize,
    /// Each client's upload in the together phase.
    pub each_bytes: u64,
    /// The single client's upload.
    pub alone_bytes: u64,
    pub runs: Vec<ThreadsRun>,
}

impl Report {
    /// Together against alone, per server setting (each run's own table is printed as it
    /// completes).
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} clients x {} MiB at once against one client alone with {} MiB:\n",
            self.clients,
            self.each_bytes >> 20,
            self.alone_bytes >> 20
        );
        for run in &self.runs {
            let (t, a) = (&run.together, &run.alone);
            out += &format!(
                "  --threads {}: {:.2} against {:.2} Gbit/s ({:.0} %); server {:.2} against \
                 {:.2} CPU s/GiB, clients {:.2} against {:.2}\n",
                run.threads,
                t.gbps(),
                a.gbps(),
                t.gbps() / a.gbps() * 100.0,
                t.server_s_per_gib(),
                a.server_s_per_gib(),
                t.clients_s_per_gib(),
                a.clients_s_per_gib(),
            );
        }
        out
    }

    pub fn json(&self, context: &str) -> String {
        let runs: Vec<String> = self
            .runs
            .iter()
            .map(|r| {
                format!(
                    "{{\"threads\":{},\"together\":{},\"alone\":{}}}",
                    r.threads,
                    r.together.json(),
                    r.alone.json()
                )
            })
            .collect();
        format!(
            "{{{context},\"quick\":{},\"clients\":{},\"each_bytes\":{},\"alone_bytes\":{},\
             \"runs\":[{}]}}\n",
            self.quick,
            self.clients,
            self.each_bytes,
            self.alone_bytes,
            runs.join(",")
        )
    }
}

impl ThreadsRun {
    pub fn table(&self) -> String {
        let header = format!(
            "one quictun-server --threads {} on loopback, uploads into a sink:\n\
             \x20 {:<26} {:>7} {:>26} {:>22} {:>23} {:>7}\n",
            self.threads,
            "phase",
            "Gbit/s",
            "per client min/med/max",
            "server CPU s/GiB (core %)",
            "clients CPU s/GiB (core %)",
            "machine"
        );
        let together = format!(
            "{} clients x {} MiB",
            self.together.clients,
            (self.together.bytes / self.together.clients as u64) >> 20
        );
        let alone = format!("1 client alone, {} MiB", self.alone.bytes >> 20);
        header
            + &self.together.row(&together)
            + &self.alone.row(&alone)
            + &format!("  limit together: {}\n", self.together.limit())
            + &format!("  limit alone:    {}\n", self.alone.limit())
            + &format!(
                "  UDP datagrams dropped at full receive buffers: together {}, alone {}\n",
                self.together.drops(),
                self.alone.drops()
            )
            + &format!("  packets together: {}\n", self.together.packets())
            + &format!("  packets alone:    {}\n", self.alone.packets())
    }
}

impl Phase {
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }

    pub fn server_s_per_gib(&self) -> f64 {
        self.server_cpu_s / self.gib()
    }

    pub fn clients_s_per_gib(&self) -> f64 {
        self.clients_cpu_s / self.gib()
    }

    /// The server's CPU time over the wall time: 1.0 is one core all the time.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu_s / self.seconds
    }

    pub fn clients_cores(&self) -> f64 {
        self.clients_cpu_s / self.seconds
    }

    /// The slowest, the median and the fastest client, Gbit/s.
    pub fn spread(&self) -> [f64; 3] {
        [0.0, 0.5, 1.0].map(|q| quantile(&self.per_client_gbps, q).unwrap_or(f64::NAN))
    }

    /// What held the phase back, in one line: the server when it kept the cores its worker
    /// threads can use busy, else the machine when its cores were all busy, else neither.
    pub fn limit(&self) -> String {
        let usable = f64::from(self.threads).min(self.cores as f64);
        let tool = self.tool_cpu_s / self.seconds;
        let busy = self.busy_share * self.cores as f64;
        let others = busy - self.server_cores() - self.clients_cores() - tool;
        let shares = format!(
            "server {:.0} % of a core, clients {:.0} %, applications and target {:.0} %, the rest \
             (kernel, other processes) {:.0} %; machine {:.0} % busy of {} cores",
            self.server_cores() * 100.0,
            self.clients_cores() * 100.0,
            tool * 100.0,
            others.max(0.0) * 100.0,
            self.busy_share * 100.0,
            self.cores
        );
        let reason = if self.server_cores() >= SATURATED * usable {
            format!(
                "the server process, its --threads {} worker(s) saturated",
                self.threads
            )
        } else if self.busy_share >= MACHINE_FULL {
            "the machine's cores, all busy, the server below what its threads could use".into()
        } else {
            "neither the server nor the machine saturated".into()
        };
        format!("{reason} ({shares})")
    }

    /// The datagrams dropped at full UDP receive buffers, of those received.
    pub fn drops(&self) -> String {
        let UdpCounters {
            in_datagrams,
            rcvbuf_errors,
            ..
        } = self.udp;
        let all = in_datagrams + rcvbuf_errors;
        format!(
            "{rcvbuf_errors} of {all} ({:.2} %)",
            rcvbuf_errors as f64 * 100.0 / all.max(1) as f64
        )
    }

    /// The clients' packet sizes (`maxUdpPayload`): the smallest, the median and the largest
    /// at the end, and how many clients were down to QUIC's minimum at a reading during the
    /// phase and at its end.
    pub fn packets(&self) -> String {
        let sizes: Vec<f64> = self.payloads.iter().map(|&p| f64::from(p)).collect();
        let [min, median, max] = [0.0, 0.5, 1.0].map(|q| quantile(&sizes, q).unwrap_or(f64::NAN));
        let minimal = |p: &u16| *p <= MIN_PAYLOAD;
        format!(
            "maxUdpPayload at the end min/median/max {min:.0} / {median:.0} / {max:.0} bytes; \
             down to {MIN_PAYLOAD} bytes: {} of {} clients at some reading during the phase, \
             {} at its end",
            self.smallest_payloads
                .iter()
                .flatten()
                .filter(|p| minimal(p))
                .count(),
            self.clients,
            self.payloads.iter().filter(|p| minimal(p)).count(),
        )
    }

    fn gib(&self) -> f64 {
        self.bytes as f64 / f64::from(1u32 << 30)
    }

    fn row(&self, name: &str) -> String {
        let [min, median, max] = self.spread();
        format!(
            "  {name:<26} {:>7.2} {:>26} {:>22} {:>23} {:>6.0} %\n",
            self.gbps(),
            format!("{min:.3} / {median:.3} / {max:.3}"),
            format!(
                "{:.2} ({:.0})",
                self.server_s_per_gib(),
                self.server_cores() * 100.0
            ),
            format!(
                "{:.2} ({:.0})",
                self.clients_s_per_gib(),
                self.clients_cores() * 100.0
            ),
            self.busy_share * 100.0
        )
    }

    fn json(&self) -> String {
        let [min, median, max] = self.spread();
        format!(
            "{{\"clients\":{},\"bytes\":{},\"seconds\":{:.3},\"gbps\":{:.3},\
             \"per_client_gbps\":{{\"min\":{min:.4},\"median\":{median:.4},\"max\":{max:.4}}},\
             \"server_cpu_s_per_gib\":{:.3},\"clients_cpu_s_per_gib\":{:.3},\
             \"server_cores\":{:.3},\"clients_cores\":{:.3},\"tool_cores\":{:.3},\
             \"machine_busy_share\":{:.3},\"cores\":{},\"udp\":{},\"max_udp_payloads\":[{}],\
             \"smallest_max_udp_payloads\":[{}],\"limit\":{}}}",
            self.clients,
            self.bytes,
            self.seconds,
            self.gbps(),
            self.server_s_per_gib(),
            self.clients_s_per_gib(),
            self.server_cores(),
            self.clients_cores(),
            self.tool_cpu_s / self.seconds,
            self.busy_share,
            self.cores,
            self.udp.json(),
            list(self.payloads.iter().map(u16::to_string)),
            list(
                self.smallest_payloads
                    .iter()
                    .map(|p| p.map_or("null".into(), |p| p.to_string()))
            ),
            crate::hostile::good::json_string(&self.limit())
        )
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(server_cpu_s: f64, busy_share: f64) -> Phase {
        Phase {
            clients: 3,
            bytes: 2 << 30,
            seconds: 10.0,
            per_client_gbps: vec![1.0, 3.0, 2.0],
            server_cpu_s,
            clients_cpu_s: 5.0,
            tool_cpu_s: 3.0,
            busy_share,
            udp: UdpCounters {
                in_datagrams: 990,
                rcvbuf_errors: 10,
                sndbuf_errors: 0,
            },
            payloads: vec![1200, 65507, 65507],
            smallest_payloads: vec![Some(1200), Some(1200), None],
            cores: 2,
            threads: 1,
        }
    }

    #[test]
    fn the_limit_is_the_server_when_its_thread_is_busy() {
        let p = phase(9.8, 1.0);
        assert!(p.limit().starts_with("the server process"), "{}", p.limit());
        assert!(p.limit().contains("server 98 % of a core"), "{}", p.limit());
        assert!(p.limit().contains("clients 50 %"), "{}", p.limit());
        let shares = "applications and target 30 %, the rest (kernel, other processes) 22 %";
        assert!(p.limit().contains(shares), "{}", p.limit());
        assert!(phase(4.0, 0.95).limit().starts_with("the machine's cores"));
        assert!(phase(4.0, 0.5).limit().starts_with("neither"));
        assert_eq!(p.spread(), [1.0, 2.0, 3.0]);
        assert!((p.server_s_per_gib() - 4.9).abs() < 1e-9);
        assert_eq!(p.drops(), "10 of 1000 (1.00 %)");
        assert_eq!(
            p.packets(),
            "maxUdpPayload at the end min/median/max 1200 / 65507 / 65507 bytes; down to 1200 \
             bytes: 2 of 3 clients at some reading during the phase, 1 at its end"
        );
    }
}
