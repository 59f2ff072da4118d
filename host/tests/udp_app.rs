//! A real UDP application through the tunnel (SPEC §11): dnsmasq, a DNS server, serves
//! behind the server endpoint, and dig, a DNS client, asks it through the client's UDP
//! listener. The answers are compared with what dnsmasq was told to answer; one of them (a
//! 3 KiB TXT record, asked with EDNS) is larger than any QUIC DATAGRAM frame, so it crosses
//! as a record on the flow's stream.
//!
//! Needs dnsmasq (Debian's `dnsmasq-base`) and dig (`bind9-dnsutils`), or `$QUICTUN_DNSMASQ`
//! and `$QUICTUN_DIG`, so it is ignored by a plain `cargo test`: `scripts/test.sh` installs
//! them and runs it. Without them the test fails saying what to install.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use quictun::wire::addr::Address;

/// What dnsmasq answers: `--address` for one name, host records (A, AAAA and their PTRs),
/// TXT records; other names under `quictun.test` are NXDOMAIN.
const RECORDS: &[&str] = &[
    "--address=/example.test/192.0.2.7",
    "--host-record=alpha.quictun.test,192.0.2.11",
    "--host-record=beta.quictun.test,192.0.2.12,2001:db8::12",
    "--txt-record=hello.quictun.test,through-the-tunnel",
    "--local=/quictun.test/",
];

/// Questions and the answers `dig +short` prints for them.
const ANSWERS: &[(&str, &str, &str)] = &[
    ("example.test", "A", "192.0.2.7"),
    ("alpha.quictun.test", "A", "192.0.2.11"),
    ("beta.quictun.test", "A", "192.0.2.12"),
    ("beta.quictun.test", "AAAA", "2001:db8::12"),
    ("hello.quictun.test", "TXT", "\"through-the-tunnel\""),
    ("12.2.0.192.in-addr.arpa", "PTR", "beta.quictun.test."),
    ("nothing.quictun.test", "A", ""),
];

/// The large TXT record: 12 strings of 250 bytes, a 3,069-byte answer.
const BIG_NAME: &str = "big.quictun.test";

fn big_strings() -> Vec<String> {
    (b'a'..b'a' + 12)
        .map(|c| String::from(char::from(c)).repeat(250))
        .collect()
}

/// How `dig +short` prints the large record: each string quoted, separated by spaces.
fn big_answer() -> String {
    let quoted: Vec<String> = big_strings().iter().map(|s| format!("\"{s}\"")).collect();
    quoted.join(" ")
}

/// How many dig processes ask at once, each from its own port.
const PARALLEL: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dnsmasq and dig; scripts/test.sh installs them and runs it"]
async fn dig_asks_dnsmasq_through_the_tunnel() {
    let (dnsmasq, dig) = find_tools();
    let dns = Dnsmasq::start(&dnsmasq).await;
    // What dnsmasq answers directly, so a wrong answer below is the tunnel's.
    let direct = ask(&dig, dns.addr, None, BIG_NAME, "TXT").await;
    assert_eq!(direct, big_answer());
    let server = start_server("");
    let client = start_client(
        "udp:127.0.0.1:0".parse().unwrap(),
        server.addr,
        &format!("udp:{}", dns.addr),
    )
    .await;
    let Address::Udp(listen) = &client.addr else {
        panic!("not a UDP listener: {}", client.addr)
    };
    let tunnel: SocketAddr = listen.to_string().parse().unwrap();
    let [source, parallel @ ..] = free_udp_ports::<{ 1 + PARALLEL }>();

    one_flow_asks_everything(&dig, tunnel, source, &server, &client).await;
    let asked = parallel.iter().enumerate().map(|(i, &source)| {
        let dig = dig.clone();
        tokio::spawn(async move {
            let (name, kind, expected) = match ANSWERS.get(i) {
                Some(&(name, kind, expected)) => (name, kind, expected.to_owned()),
                None => (BIG_NAME, "TXT", big_answer()),
            };
            let answer = ask(&dig, tunnel, Some(source), name, kind).await;
            assert_eq!(answer, expected, "{name} {kind} from port {source}");
        })
    });
    for task in asked.collect::<Vec<_>>() {
        within(60, task).await.unwrap();
    }
    assert_eq!(
        server.registry.opened_total(),
        1 + PARALLEL as u64,
        "a flow for each source port"
    );
}

/// Every question, one after the other from one source port: one flow. Its first query goes
/// on the stream before the server's answer, the later ones in DATAGRAM frames; the large
/// answer comes back as a record.
async fn one_flow_asks_everything(
    dig: &Path,
    tunnel: SocketAddr,
    source: u16,
    server: &TestServer,
    client: &TestClient,
) {
    for &(name, kind, expected) in ANSWERS {
        let answer = ask(dig, tunnel, Some(source), name, kind).await;
        assert_eq!(answer, expected, "{name} {kind}");
    }
    let answer = ask(dig, tunnel, Some(source), BIG_NAME, "TXT").await;
    assert_eq!(answer, big_answer());
    assert_eq!(
        server.registry.opened_total(),
        1,
        "one source port, one flow"
    );
    let queries = ANSWERS.len() as u64 + 1;
    let flow = client.registry.list().pop().expect("the flow");
    let counters = &flow.counters;
    // At least one each way: dig resends a query it got no answer to in 5 s.
    wait_until(Duration::from_secs(10), || {
        let answers = counters.server_datagrams.load(Ordering::Relaxed);
        std::future::ready(answers >= queries)
    })
    .await
    .expect("every answer counted");
    assert!(counters.client_datagrams.load(Ordering::Relaxed) >= queries);
    assert_eq!(counters.dropped_datagrams.load(Ordering::Relaxed), 0);
}

/// dnsmasq and dig, or a failure saying how to get them.
fn find_tools() -> (PathBuf, PathBuf) {
    let path = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let dnsmasq = path("QUICTUN_DNSMASQ", "/usr/sbin/dnsmasq");
    let dig = path("QUICTUN_DIG", "/usr/bin/dig");
    let missing: Vec<String> = [&dnsmasq, &dig]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "{} not found: install dnsmasq and dig (apt-get install dnsmasq-base bind9-dnsutils, \
         or run scripts/test.sh), or set QUICTUN_DNSMASQ and QUICTUN_DIG to their paths",
        missing.join(" and ")
    );
    (dnsmasq, dig)
}

/// `dig +short NAME KIND` at `server`, from `source` when given: what it printed.
async fn ask(
    dig: &Path,
    server: SocketAddr,
    source: Option<u16>,
    name: &str,
    kind: &str,
) -> String {
    let mut command = tokio::process::Command::new(dig);
    command
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args([name, kind])
        // EDNS with room for the large TXT answer; no retry over TCP, which would hide a
        // truncated answer (the client's listener is UDP only: it fails instead).
        .args(["+short", "+bufsize=4096", "+time=5", "+tries=2"])
        .kill_on_drop(true);
    if let Some(port) = source {
        command.args(["-b", &format!("127.0.0.1#{port}")]);
    }
    let output = within(30, command.output()).await.expect("run dig");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success() && !stdout.starts_with(";;"),
        "dig {name} {kind} at {server}: {}\n{stdout}{stderr}",
        output.status
    );
    stdout.trim_end().to_owned()
}

/// `N` distinct loopback UDP ports that were free a moment ago (for dig's `-b`: each port is a
/// flow of its own).
fn free_udp_ports<const N: usize>() -> [u16; N] {
    let sockets: Vec<std::net::UdpSocket> = (0..N)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| sockets[i].local_addr().unwrap().port())
}

/// A process's log lines.
type Log = Arc<Mutex<Vec<String>>>;

/// dnsmasq in the foreground on a loopback port of its own, with no system configuration;
/// killed, by its PID, when dropped.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts dnsmasq and waits until it says it serves. dnsmasq cannot be given port 0, so
    /// the port is one that was free a moment ago; if another process took it meanwhile,
    /// another port is tried.
    async fn start(program: &Path) -> Dnsmasq {
        for _ in 0..5 {
            let port = free_port_both_ways();
            let (mut child, log, reader) = Dnsmasq::spawn(program, port);
            let started = wait_until(Duration::from_secs(30), || {
                let started = log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("started, version"));
                let exited = child.try_wait().expect("wait for dnsmasq");
                std::future::ready(match (started, exited) {
                    (true, _) => Some(true),
                    (false, Some(_)) => Some(false),
                    (false, None) => None,
                })
            })
            .await;
            if matches!(started, Ok(true)) {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                return Dnsmasq { child, addr };
            }
            // Ended, or hung: its whole log (the reader ends with the process).
            let _ = child.kill();
            let status = child.wait().expect("wait for dnsmasq");
            let _ = reader.join();
            let log = log.lock().unwrap().join("\n");
            if !log.contains("Address already in use") {
                panic!("dnsmasq did not start ({status}):\n{log}");
            }
        }
        panic!("no free port for dnsmasq in 5 tries");
    }

    /// The process and its log lines (standard error), collected as they come by a thread.
    fn spawn(program: &Path, port: u16) -> (Child, Log, std::thread::JoinHandle<()>) {
        let big = format!("--txt-record={BIG_NAME},{}", big_strings().join(","));
        let mut child = Command::new(program)
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--keep-in-foreground",
                "--log-facility=-",
                "--pid-file",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--edns-packet-max=4096",
            ])
            .arg(format!("--port={port}"))
            .args(RECORDS)
            .arg(big)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        (child, log, reader)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both UDP and TCP a moment ago (dnsmasq serves both).
fn free_port_both_ways() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
