//! End-to-end tests of linkem: real namespaces, TUN devices and kernel TCP/UDP over the
//! emulated link. They need root, `ip` and /dev/net/tun, so a plain `cargo test` ignores them;
//! `scripts/test.sh` runs them as root (and skips them by name, saying so, otherwise). Run
//! without what they need, they fail: they never pass by skipping.
//!
//! They run one at a time (a shared lock): they measure rates and delays, and two at once on a
//! two-core machine would measure each other.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quictun_bench::linkem::{DirStats, Link, LinkConfig, LinkStats, netns, tcp};

static SERIAL: Mutex<()> = Mutex::new(());

const MBIT: u64 = 1_000_000;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn start(config: LinkConfig) -> Link {
    Link::start(config).unwrap_or_else(|e| {
        panic!("linkem end-to-end tests need root, the ip command and /dev/net/tun: {e}")
    })
}

fn link(rtt_ms: u64, rate_mbit: Option<u64>, loss: f64) -> Link {
    start(LinkConfig {
        rtt: Duration::from_millis(rtt_ms),
        rate_bps: rate_mbit.map(|m| m * MBIT),
        loss,
        ..LinkConfig::default()
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Round trips of small UDP datagrams from A to an echo server in B, sorted.
fn udp_round_trips(link: &Link, count: usize) -> Vec<Duration> {
    let server = link
        .run_in_b(|| UdpSocket::bind((link.addr_b(), 0)))
        .expect("enter B")
        .expect("bind echo socket in B");
    let server_addr = server.local_addr().expect("echo address");
    let echo = std::thread::spawn(move || echo_udp(server, count));
    let client = link
        .run_in_a(|| UdpSocket::bind((link.addr_a(), 0)))
        .expect("enter A")
        .expect("bind client socket in A");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..count {
        let sent = Instant::now();
        client
            .send_to(&[i as u8; 32], server_addr)
            .expect("send ping");
        let (n, _) = client.recv_from(&mut buf).expect("echo reply within 2 s");
        assert_eq!(n, 32);
        rtts.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    echo.join().expect("echo thread");
    rtts.sort();
    rtts
}

fn echo_udp(socket: UdpSocket, count: usize) {
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            return;
        };
        let _ = socket.send_to(&buf[..n], from);
    }
}

/// The result of a bulk TCP transfer, as seen by the receiver.
struct Bulk {
    bytes: u64,
    duration: Duration,
    /// Goodput of each 500 ms window (the last, partial one left out), Mbit/s.
    windows: Vec<f64>,
}

impl Bulk {
    fn mbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.duration.as_secs_f64() / 1e6
    }
}

/// Sends from A to a sink in B for `seconds`, as fast as TCP goes.
fn tcp_bulk(link: &Link, seconds: f64) -> Bulk {
    let listener = link
        .run_in_b(|| TcpListener::bind((link.addr_b(), 0)))
        .expect("enter B")
        .expect("bind sink in B");
    let sink_addr = listener.local_addr().expect("sink address");
    let sink = std::thread::spawn(move || tcp_sink(listener));
    let stream = link
        .run_in_a(|| TcpStream::connect(sink_addr))
        .expect("enter A")
        .expect("connect from A to B");
    tcp_source(stream, Duration::from_secs_f64(seconds));
    sink.join().expect("sink thread")
}

fn tcp_source(mut stream: TcpStream, length: Duration) {
    let chunk = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    while start.elapsed() < length {
        stream.write_all(&chunk).expect("send bulk data");
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("close sending side");
}

fn tcp_sink(listener: TcpListener) -> Bulk {
    let (mut stream, _) = listener.accept().expect("accept");
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut windows = Vec::new();
    let mut window_bytes = 0u64;
    let mut window_start = Instant::now();
    loop {
        let n = stream.read(&mut buf).expect("receive bulk data");
        if n == 0 {
            break;
        }
        let now = Instant::now();
        if first.is_none() {
            first = Some(now);
            window_start = now;
        }
        total += n as u64;
        window_bytes += n as u64;
        if now - window_start >= Duration::from_millis(500) {
            let secs = (now - window_start).as_secs_f64();
            windows.push(window_bytes as f64 * 8.0 / secs / 1e6);
            window_bytes = 0;
            window_start = now;
        }
    }
    let duration = first.map_or(Duration::ZERO, |f| f.elapsed());
    Bulk {
        bytes: total,
        duration,
        windows,
    }
}

/// What a UDP receiver saw.
struct Received {
    datagrams: u64,
    /// Rate of IP bytes (payload + 28) from the first datagram to the last.
    mbit: f64,
}

/// Sends `count` UDP datagrams of `payload` bytes from A to B at `rate_bps` (IP bytes), each
/// echoed back by B when `echo` is set. Returns what B received and the seconds spent sending.
fn udp_blast(
    link: &Link,
    count: u64,
    payload: usize,
    rate_bps: u64,
    echo: bool,
) -> (Received, f64) {
    let receiver = link
        .run_in_b(|| UdpSocket::bind((link.addr_b(), 0)))
        .expect("enter B")
        .expect("bind receiver in B");
    let target = receiver.local_addr().expect("receiver address");
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    force_receive_buffer(&receiver, 16 << 20);
    let counter = std::thread::spawn(move || count_udp(receiver, echo));
    let sender = link
        .run_in_a(|| UdpSocket::bind((link.addr_a(), 0)))
        .expect("enter A")
        .expect("bind sender in A");
    let seconds = paced_send(&sender, target, count, payload, rate_bps);
    (counter.join().expect("receiver thread"), seconds)
}

/// Sends at an average rate, in small bursts every ~0.5 ms (IP packet = payload + 28).
fn paced_send(socket: &UdpSocket, to: SocketAddr, count: u64, payload: usize, rate: u64) -> f64 {
    let data = vec![0xa5u8; payload];
    let per_second = rate as f64 / 8.0 / (payload + 28) as f64;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        let due = ((start.elapsed().as_secs_f64() * per_second) as u64).min(count);
        while sent < due {
            // A full socket buffer shows as an error: that datagram was never offered.
            let _ = socket.send_to(&data, to);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    start.elapsed().as_secs_f64()
}

fn count_udp(socket: UdpSocket, echo: bool) -> Received {
    let mut buf = vec![0u8; 2048];
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, Instant::now());
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        last = Instant::now();
        first.get_or_insert(last);
        datagrams += 1;
        // Everything after the first datagram arrived within [first, last].
        if datagrams > 1 {
            bytes += n as u64 + 28;
        }
        if echo {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
    let seconds = first.map_or(0.0, |f| (last - f).as_secs_f64());
    Received {
        datagrams,
        mbit: bytes as f64 * 8.0 / seconds.max(1e-9) / 1e6,
    }
}

/// Enlarges a socket's receive buffer past net.core.rmem_max (root only), so a receiver thread
/// that is briefly not scheduled does not lose datagrams the link delivered.
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: passes a valid c_int of the stated size for the call's duration.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

fn share(part: u64, whole: u64) -> f64 {
    part as f64 / whole.max(1) as f64
}

/// B's socket got what the link forwarded: all of it, unless a starved receiver thread let its
/// (enlarged) socket buffer overflow, which must stay rare.
fn assert_received_what_was_forwarded(received: u64, dir: &DirStats) {
    let forwarded = dir.forwarded.packets;
    assert!(
        received <= forwarded && received >= forwarded * 995 / 1000,
        "B received {received} datagrams, the link forwarded {forwarded}"
    );
}

/// The link's counters once the last packets of a closing connection have crossed it (they
/// are in flight for up to one delay after they were sent), or after two seconds if some
/// never do: the caller's assertions then say which.
fn settled(link: &Link) -> LinkStats {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stats = link.stats();
        let in_flight = stats.a_to_b.in_flight().packets + stats.b_to_a.in_flight().packets;
        if in_flight == 0 || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_accounted(dir: &DirStats) {
    assert_eq!(
        dir.in_flight().packets,
        0,
        "packets still in flight: {dir:?}"
    );
    assert_eq!(dir.write_failed.packets, 0, "write failures: {dir:?}");
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn link_has_the_configured_rtt_and_rate() {
    let _serial = serial();
    let link = link(20, Some(100), 0.0);

    let rtts = udp_round_trips(&link, 20);
    let (min, median) = (rtts[0], rtts[rtts.len() / 2]);
    eprintln!(
        "udp rtt: min {:.2} ms, median {:.2} ms",
        ms(min),
        ms(median)
    );
    assert!(ms(min) >= 19.0 && ms(median) <= 25.0, "rtt {rtts:?}");

    let before = link.stats().a_to_b.forwarded.bytes;
    let started = Instant::now();
    let bulk = tcp_bulk(&link, 3.0);
    let wire_mbit = (link.stats().a_to_b.forwarded.bytes - before) as f64 * 8.0
        / started.elapsed().as_secs_f64()
        / 1e6;
    eprintln!(
        "tcp at 100 Mbit/s, 20 ms: goodput {:.1} Mbit/s over {:.2} s, link {:.1} Mbit/s, \
         500 ms windows {:.1?}",
        bulk.mbit(),
        bulk.duration.as_secs_f64(),
        wire_mbit,
        bulk.windows
    );
    assert!(
        (85.0..=100.0).contains(&bulk.mbit()),
        "goodput {}",
        bulk.mbit()
    );
    assert!(wire_mbit <= 100.0, "link carried {wire_mbit} Mbit/s");
    for window in &bulk.windows {
        // Half a second of goodput can exceed the link only by what a late wake-up of the
        // forwarder delivered at once: allow 2 %.
        assert!(*window <= 102.0, "500 ms window at {window} Mbit/s");
    }
    let stats = settled(&link);
    assert_eq!(stats.a_to_b.random_dropped.packets, 0);
    assert_accounted(&stats.a_to_b);
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn random_loss_matches_its_probability_in_both_directions() {
    let _serial = serial();
    let link = link(2, None, 0.05);
    let count = 20_000;
    let (received, _) = udp_blast(&link, count, 172, 20 * MBIT, true);
    let stats = link.stats();
    let (ab, ba) = (stats.a_to_b, stats.b_to_a);
    let ab_loss = share(ab.random_dropped.packets, ab.offered.packets);
    let ba_loss = share(ba.random_dropped.packets, ba.offered.packets);
    eprintln!(
        "5 % loss: a->b {:.2} % of {} offered, b->a {:.2} % of {} offered",
        ab_loss * 100.0,
        ab.offered.packets,
        ba_loss * 100.0,
        ba.offered.packets
    );
    assert!(ab.offered.packets >= count * 99 / 100, "offered {ab:?}");
    assert!((0.04..=0.06).contains(&ab_loss), "a->b loss {ab_loss}");
    assert!((0.04..=0.06).contains(&ba_loss), "b->a loss {ba_loss}");
    assert_received_what_was_forwarded(received.datagrams, &ab);
    assert_eq!(ab.queue_dropped.packets, 0);
    assert_accounted(&ab);
    assert_accounted(&ba);
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn overdriven_link_drops_at_the_queue_and_forwards_at_its_rate() {
    let _serial = serial();
    let link = link(10, Some(100), 0.0);
    let seconds_wanted = 2.0;
    let count = (200.0 * MBIT as f64 / 8.0 / 1500.0 * seconds_wanted) as u64;
    let (received, seconds) = udp_blast(&link, count, 1472, 200 * MBIT, false);
    let ab = link.stats().a_to_b;
    let offered_mbit = ab.offered.bytes as f64 * 8.0 / seconds / 1e6;
    let dropped = share(ab.queue_dropped.packets, ab.offered.packets);
    eprintln!(
        "overdrive: offered {offered_mbit:.1} Mbit/s, B received {:.2} Mbit/s, \
         {:.1} % dropped at the queue, over {seconds:.2} s",
        received.mbit,
        dropped * 100.0
    );
    assert!(
        offered_mbit >= 180.0,
        "the sender did not overdrive: {offered_mbit}"
    );
    assert!((0.40..=0.55).contains(&dropped), "queue drops {dropped}");
    assert!(
        (95.0..=100.5).contains(&received.mbit),
        "forwarded at {} Mbit/s",
        received.mbit
    );
    assert_received_what_was_forwarded(received.datagrams, &ab);
    assert_accounted(&ab);
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn unlimited_link_forwards_fast_and_cleans_up() {
    let _serial = serial();
    let link = link(0, None, 0.0);
    let (ns_a, ns_b) = (link.ns_a().to_string(), link.ns_b().to_string());

    let output = link
        .command_in_a("ip")
        .expect("command in A")
        .args(["-o", "-4", "addr", "show", "dev", "qtl0"])
        .output()
        .expect("run ip inside A");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("198.18.0.1/30"), "ip addr in A: {text}");

    let bulk = tcp_bulk(&link, 2.0);
    let ab = link.stats().a_to_b;
    eprintln!(
        "no delay, no rate limit: tcp goodput {:.0} Mbit/s, {} packets of {} bytes on average",
        bulk.mbit(),
        ab.forwarded.packets,
        ab.forwarded.bytes / ab.forwarded.packets.max(1)
    );
    // The machine is shared with builds: only a floor far below what the forwarder reaches.
    assert!(
        bulk.mbit() > 150.0,
        "forwarder reached only {} Mbit/s",
        bulk.mbit()
    );
    assert_accounted(&settled(&link).a_to_b);

    drop(link);
    for ns in [ns_a, ns_b] {
        let path = format!("/run/netns/{ns}");
        assert!(!std::path::Path::new(&path).exists(), "{ns} left behind");
    }
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn namespaces_are_removed_when_a_test_panics() {
    let _serial = serial();
    let mut names = Vec::new();
    // Keep the deliberate panic's message out of the output; no other test runs meanwhile.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let link = link(0, None, 0.0);
        names.push(link.ns_a().to_string());
        names.push(link.ns_b().to_string());
        panic!("deliberate");
    }));
    std::panic::set_hook(previous_hook);
    assert!(outcome.is_err());
    assert_eq!(names.len(), 2);
    for ns in names {
        assert!(!std::path::Path::new(&format!("/run/netns/{ns}")).exists());
    }
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn congestion_control_can_be_chosen_per_namespace_or_socket() {
    let _serial = serial();
    let link = link(0, None, 0.0);
    link.set_tcp_congestion("reno")
        .expect("reno is in the allowed list");
    let default = netns::get_sysctl(link.ns_b(), "net.ipv4.tcp_congestion_control");
    assert_eq!(default.as_deref(), Ok("reno"));

    let socket = link
        .run_in_a(|| TcpListener::bind((link.addr_a(), 0)))
        .expect("enter A")
        .expect("bind in A");
    tcp::set_on_socket(&socket, "cubic").expect("cubic per socket");
    assert_eq!(tcp::on_socket(&socket).as_deref(), Ok("cubic"));
}

#[test]
#[ignore = "needs root, ip and /dev/net/tun (network namespaces); scripts/test.sh runs it as root"]
fn cli_runs_a_command_reports_json_and_cleans_up() {
    let _serial = serial();
    let script = "test -e /run/netns/$LINKEM_NS_A && test $LINKEM_ADDR_B = 198.18.0.2 \
                  && echo $LINKEM_NS_A >&2 && exit 3";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_linkem"))
        .args([
            "--rtt", "10ms", "--rate", "50mbit", "--loss", "1%", "--", "sh", "-c",
        ])
        .arg(script)
        .output()
        .expect("run linkem");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(stdout.contains("\"rate_bps\":50000000"), "stdout: {stdout}");
    assert!(
        stdout.contains("\"a_to_b\":{\"offered\""),
        "stdout: {stdout}"
    );
    let ns_a = stderr.lines().last().expect("script printed the namespace");
    assert!(ns_a.starts_with(netns::NAME_PREFIX), "stderr: {stderr}");
    assert!(!std::path::Path::new(&format!("/run/netns/{ns_a}")).exists());

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_linkem"))
        .args(["--rate", "100mbps", "--", "true"])
        .output()
        .expect("run linkem");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unit must be one of"));
}
