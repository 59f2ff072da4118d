//! More than one server, and a client that moves (SPEC §9, §12), with real sockets and real
//! QUIC on loopback:
//! - with two `--server-endpoint`s and no balancer, the client uses the first; when that
//!   server dies, new application connections go through the second within 3 s;
//! - a first server that does not answer at start costs one attempt, and the start-up line
//!   names the server that answered (the list given as YAML in `--config`);
//! - a server that refuses for good is passed over; only when every one refuses are
//!   applications refused at once;
//! - a NAT rebinding (a relay that moves to a new source port mid-transfer) and a deliberate
//!   move to a new socket (SIGUSR1) keep the connection and every byte of a 64 MiB echo, most
//!   of which crosses after the move, and both are seen on the server as one path change of
//!   that one connection;
//! - `--check` with two servers reports each and fails naming the dead one.
//!
//! Client time-outs are short (keep-alive 200 ms, idle time-out 1 s), so a dead server is
//! noticed in about a second.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use quictun::tls::{Identity, Verification};
use quictun::wire::addr::Address;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(20);

/// What the tests' clients are given besides their servers: a dead server noticed in about a
/// second, and short pauses between attempts.
const FAST: [&str; 6] = [
    "--keep-alive",
    "200ms",
    "--idle-timeout",
    "1s",
    "--reconnect-max-backoff",
    "1s",
];

/// A UDP address where a socket is bound but nothing is read: a server that does not answer.
fn silent_server() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Sends `data` through a new application connection to `app` and returns what comes back,
/// or `None` when the tunnel failed (reset, cut short) or took longer than `limit`.
async fn echo_once(app: &Address, data: &[u8], limit: Duration) -> Option<Vec<u8>> {
    let conn = connect(app).await;
    let echoed = tokio::time::timeout(limit, exchange(conn, data.to_vec())).await;
    echoed.ok()?.ok()
}

/// Sends `data` through `conn` while reading what comes back; when `at` bytes have come back,
/// reading pauses until `midway` is done, so what it does happens with most of the transfer
/// still to cross. Returns what came back.
async fn echo_with(
    conn: TcpStream,
    data: Arc<Vec<u8>>,
    at: usize,
    midway: impl std::future::Future<Output = ()>,
) -> Vec<u8> {
    let (mut reader, mut writer) = conn.into_split();
    let sent = data.clone();
    let write = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut received = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 256 * 1024];
    let mut midway = Some(midway);
    loop {
        let n = reader.read(&mut buf).await.expect("read the echo");
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
        if received.len() >= at {
            if let Some(midway) = midway.take() {
                midway.await;
            }
        }
    }
    let _writer = write.await.unwrap();
    assert!(midway.is_none(), "only {} bytes came back", received.len());
    received
}

/// The server's QUIC connections, from its REST API.
fn connections(api: SocketAddr) -> Vec<Value> {
    get_json(api, "/connections")
        .as_array()
        .expect("a list of connections")
        .clone()
}

/// Waits until the REST API at `api` lists one connection with one path change, and returns it.
async fn one_connection_moved_once(api: SocketAddr) -> Value {
    let found = wait_until(LIMIT, || {
        let all = connections(api);
        let moved = match &all[..] {
            [one] if one["pathChanges"] == 1 => Some(one.clone()),
            _ => None,
        };
        std::future::ready(moved)
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "not one connection with one path change: {:?}",
            connections(api)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_first_server_dies_new_connections_go_through_the_second_within_3_s() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let mut first = Launch::server().start().await;
    let second = Launch::server().start().await;
    let (a, b) = (
        first.quic_addr().to_string(),
        second.quic_addr().to_string(),
    );
    let mut client = Launch::client()
        .args(["--server-endpoint", &a, "--server-endpoint", &b])
        .args(["--token-source", &app.addr.to_string()])
        .args(FAST)
        .args(["--handshake-timeout", "1s"])
        .start()
        .await;
    let line = client.line("connected to server", LIMIT).await;
    assert_eq!(field_of(&line, "remote_endpoint"), a, "{line}");
    let data = pattern(4 << 20, 1);
    let echoed = echo_once(&client.app_addr(), &data, LIMIT).await;
    assert!(
        echoed.as_ref() == Some(&data),
        "not byte-exact through the first server"
    );

    first.kill();
    let killed = Instant::now();
    let probe = pattern(64 << 10, 2);
    let mut tries = 0;
    let through_second = wait_until(Duration::from_secs(10), || {
        tries += 1;
        let (app, probe) = (client.app_addr(), probe.clone());
        async move { echo_once(&app, &probe, Duration::from_secs(3)).await == Some(probe) }
    })
    .await;
    let took = killed.elapsed();
    eprintln!(
        "after the first server was killed, a new connection went through the second in {took:?} ({tries} tries)"
    );
    through_second
        .unwrap_or_else(|_| panic!("no tunnel through the second server:\n{}", client.log()));
    assert!(
        took < Duration::from_secs(3),
        "took {took:?}:\n{}",
        client.log()
    );

    let switch = client
        .line(
            &format!("switching to server {b} after: connection to server {a} lost"),
            LIMIT,
        )
        .await;
    assert!(switch.contains("WARN"), "{switch}");
    let lines = client.lines();
    let connected: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("connected to server"))
        .collect();
    assert_eq!(connected.len(), 2, "{}", client.log());
    assert_eq!(field_of(connected[1], "remote_endpoint"), b);
    // Bytes still exact, now through the second server.
    let data = pattern(4 << 20, 3);
    let echoed = echo_once(&client.app_addr(), &data, LIMIT).await;
    assert!(
        echoed.as_ref() == Some(&data),
        "not byte-exact through the second server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_server_that_does_not_answer_at_start_costs_one_attempt() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let silent = silent_server();
    let dead = silent.local_addr().unwrap().to_string();
    let server = Launch::server().start().await;
    let live = server.quic_addr().to_string();
    // The list as YAML, in --config.
    let launch = Launch::client();
    let config = launch.scratch().join("client.yaml");
    std::fs::write(
        &config,
        format!("server-endpoint:\n  - {dead}\n  - {live}\n"),
    )
    .unwrap();
    let started = Instant::now();
    let mut client = launch
        .arg("--config")
        .arg(&config)
        .args(["--token-source", &app.addr.to_string()])
        .args(FAST)
        .args(["--handshake-timeout", "500ms"])
        .start()
        .await;
    let ready = client.line("client ready", LIMIT).await;
    assert_eq!(
        field_of(&ready, "server"),
        format!("{dead},{live}"),
        "{ready}"
    );
    let line = client.line("connected to server", LIMIT).await;
    eprintln!("connected {:?} after the start: {line}", started.elapsed());
    assert_eq!(field_of(&line, "server"), live, "{line}");
    assert_eq!(field_of(&line, "remote_endpoint"), live, "{line}");
    let switch = client
        .line(
            &format!(
                "switching to server {live} after: no handshake with server {dead} within 500ms"
            ),
            LIMIT,
        )
        .await;
    assert!(switch.contains("WARN"), "{switch}");
    let data = pattern(1 << 20, 4);
    let echoed = echo_once(&client.app_addr(), &data, LIMIT).await;
    assert!(echoed.as_ref() == Some(&data), "not byte-exact");
}

/// A server with an identity of its own, whose fingerprint is returned with it.
fn server_with_own_certificate() -> (TestServer, quictun::tls::Fingerprint) {
    let identity = Identity::self_signed(&["localhost"]).unwrap();
    let fingerprint = identity.fingerprint().unwrap();
    let parser = quictun::plugins::TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| config.identity = identity);
    (server, fingerprint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refused_for_good_is_passed_over_and_all_refused_refuses_applications() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let (first, _) = server_with_own_certificate();
    let (second, pinned) = server_with_own_certificate();
    let servers = || vec![first.addr.into(), second.addr.into()];
    // Pinned to the second server's certificate: the first is refused, which retrying cannot fix.
    let client = start_client_custom(local_tcp(), first.addr, &app.addr.to_string(), |config| {
        config.servers = servers();
        config.verification = Verification::Pinned(pinned);
    })
    .await;
    let data = pattern(1 << 20, 5);
    let echoed = echo_once(&client.addr, &data, LIMIT).await;
    assert!(echoed.as_ref() == Some(&data), "not byte-exact");
    let used: Vec<SocketAddr> = client.connections.list().iter().map(|c| c.remote).collect();
    assert_eq!(used, [second.addr]);
    assert_eq!(refusals(&client), 1);

    // Pinned to neither: once both refused, applications are refused at once.
    let wrong = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    let client = start_client_custom(local_tcp(), first.addr, &app.addr.to_string(), |config| {
        config.servers = servers();
        config.verification = Verification::Pinned(wrong);
    })
    .await;
    let refused_at_once = wait_until(LIMIT, || {
        let app = client.addr.clone();
        async move {
            let started = Instant::now();
            let echoed = echo_once(&app, b"x", Duration::from_secs(5)).await;
            assert_eq!(
                echoed.filter(|e| !e.is_empty()),
                None,
                "a tunnel through a refused server"
            );
            started.elapsed() < Duration::from_secs(1)
        }
    })
    .await;
    refused_at_once.expect("applications refused at once");
    assert!(refusals(&client) >= 2, "both servers tried");
    assert_eq!(client.connections.open_count(), 0);
}

/// Handshakes the client gave up on with a TLS alert: certificates it refused.
fn refusals(client: &TestClient) -> u64 {
    let failures = client.connections.handshake_failures();
    failures
        .iter()
        .find(|(reason, _)| *reason == "tls")
        .map_or(0, |(_, n)| *n)
}

/// A UDP relay between a client and a server, standing in for a NAT: datagrams from the
/// client go to the server from the relay's upstream socket, the server's go back to the
/// client. [`Relay::rebind`] moves upstream to a new socket, as a NAT that lost its mapping
/// does: the server then sees the client at a new address.
struct Relay {
    /// Where the client sends.
    addr: SocketAddr,
    upstream: watch::Sender<Arc<UdpSocket>>,
    tasks: [JoinHandle<()>; 2],
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let front = Arc::new(udp_socket());
        let addr = front.local_addr().unwrap();
        let (upstream, current) = watch::channel(Arc::new(udp_socket()));
        let client = Arc::new(std::sync::Mutex::new(None));
        let toward_server = {
            let (front, current, client) = (front.clone(), current.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    let socket = current.borrow().clone();
                    let _ = socket.send_to(&buf[..n], server).await;
                }
            })
        };
        let toward_client = tokio::spawn(relay_back(front, current, client));
        Relay {
            addr,
            upstream,
            tasks: [toward_server, toward_client],
        }
    }

    /// Where the server sees the client now.
    fn upstream_addr(&self) -> SocketAddr {
        self.upstream.borrow().local_addr().unwrap()
    }

    /// Moves upstream to a new socket; the old one is closed. The new address.
    fn rebind(&self) -> SocketAddr {
        self.upstream.send_replace(Arc::new(udp_socket()));
        self.upstream_addr()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Relays the server's datagrams from the current upstream socket to the client.
async fn relay_back(
    front: Arc<UdpSocket>,
    mut current: watch::Receiver<Arc<UdpSocket>>,
    client: Arc<std::sync::Mutex<Option<SocketAddr>>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let socket = current.borrow_and_update().clone();
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, _)) = received else { return };
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
            changed = current.changed() => if changed.is_err() { return },
        }
    }
}

/// A loopback UDP socket with large buffers, so the relay itself loses nothing at speed.
fn udp_socket() -> UdpSocket {
    let socket = quictun::quic::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.set_nonblocking(true).unwrap();
    UdpSocket::from_std(socket).unwrap()
}

/// A server with its REST API on.
async fn server_with_api() -> (process::Running, SocketAddr) {
    let server = Launch::server()
        .args(["--httpd-listen-on", "127.0.0.1:0"])
        .start()
        .await;
    let api = server.api.expect("the server's REST API");
    (server, api)
}

/// More than the client can hold between QUIC and the application (a 16 MiB stream window,
/// socket buffers), so most of it crosses the connection after the path changed.
const TRANSFER: usize = 64 << 20;
/// Where in the transfer the path changes.
const MIDWAY: usize = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_rebinding_mid_transfer_keeps_the_connection_and_every_byte() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let (mut server, api) = server_with_api().await;
    let relay = Relay::start(server.quic_addr());
    let mut client = Launch::client()
        .args(["--server-endpoint", &relay.addr.to_string()])
        .args(["--token-source", &app.addr.to_string()])
        .start()
        .await;
    client.line("connected to server", LIMIT).await;
    let before = connections(api);
    assert_eq!(before.len(), 1, "{before:?}");
    let old = relay.upstream_addr();
    assert_eq!(before[0]["remoteEndpointAddr"], old.to_string());
    assert_eq!(before[0]["pathChanges"], 0);

    let data = Arc::new(pattern(TRANSFER, 6));
    let conn = connect_tcp(&client.app_addr()).await;
    let started = Instant::now();
    let new = std::sync::OnceLock::new();
    let rebind = async {
        new.set(relay.rebind()).unwrap();
    };
    let echoed = within(120, echo_with(conn, data.clone(), MIDWAY, rebind)).await;
    let new = *new.get().unwrap();
    eprintln!(
        "{} MiB echoed in {:?}; the relay moved from {old} to {new} after {} MiB",
        TRANSFER >> 20,
        started.elapsed(),
        MIDWAY >> 20
    );
    assert!(
        echoed == *data,
        "not byte-exact: {} of {} bytes",
        echoed.len(),
        data.len()
    );

    let after = one_connection_moved_once(api).await;
    assert_eq!(after["id"], before[0]["id"], "not the same connection");
    assert_eq!(after["remoteEndpointAddr"], new.to_string());
    assert!(after["lastPathChange"].is_string(), "{after}");
    let line = server
        .line(&format!("path changed from {old} to {new}"), LIMIT)
        .await;
    assert!(line.contains("INFO"), "{line}");
    let changes = server
        .lines()
        .iter()
        .filter(|l| l.contains("path changed"))
        .count();
    assert_eq!(changes, 1, "{}", server.log());
    // The client never lost its connection.
    assert!(!client.log().contains("lost"), "{}", client.log());
}

/// What the client logs when it moved to a new socket.
const MOVED: &str = "path change: the connection moves to a new local UDP socket";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_moves_the_client_to_a_new_socket_mid_transfer_on_the_same_connection() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let (mut server, api) = server_with_api().await;
    let mut client = Launch::client()
        .args(["--server-endpoint", &server.quic_addr().to_string()])
        .args(["--token-source", &app.addr.to_string()])
        .args(["--httpd-listen-on", "127.0.0.1:0"])
        .start()
        .await;
    client.line("connected to server", LIMIT).await;
    let before = connections(api);
    assert_eq!(before.len(), 1, "{before:?}");
    let old: SocketAddr = before[0]["remoteEndpointAddr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let data = Arc::new(pattern(TRANSFER, 7));
    let conn = connect_tcp(&client.app_addr()).await;
    let started = Instant::now();
    // The move is done when the client says so; the transfer goes on afterwards.
    let moves = async {
        client.signal("USR1");
        wait_until(LIMIT, || {
            let said = client.lines().iter().any(|l| l.contains(MOVED));
            std::future::ready(said)
        })
        .await
        .expect("the client moved to a new socket");
    };
    let echoed = within(120, echo_with(conn, data.clone(), MIDWAY, moves)).await;
    eprintln!(
        "{} MiB echoed in {:?}, SIGUSR1 after {} MiB",
        TRANSFER >> 20,
        started.elapsed(),
        MIDWAY >> 20
    );
    assert!(
        echoed == *data,
        "not byte-exact: {} of {} bytes",
        echoed.len(),
        data.len()
    );

    let moved = client.line(MOVED, LIMIT).await;
    let (from, to): (SocketAddr, SocketAddr) = (
        field_of(&moved, "from").parse().unwrap(),
        field_of(&moved, "to").parse().unwrap(),
    );
    assert_eq!(from.port(), old.port(), "{moved}");
    let after = one_connection_moved_once(api).await;
    assert_eq!(after["id"], before[0]["id"], "not the same connection");
    let new = SocketAddr::new(old.ip(), to.port());
    assert_eq!(after["remoteEndpointAddr"], new.to_string());
    server
        .line(&format!("path changed from {old} to {new}"), LIMIT)
        .await;
    // The client counts its own move.
    let client_api = client.api.expect("the client's REST API");
    let own = connections(client_api);
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own[0]["pathChanges"], 1, "{own:?}");
    assert!(!client.log().contains("lost"), "{}", client.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_server_and_fails_naming_the_dead_one() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let (one, two) = (start_server(""), start_server(""));
    let silent = silent_server();
    let dead = silent.local_addr().unwrap().to_string();
    let token = app.addr.to_string();
    let check = |servers: [String; 2]| {
        Launch::check(&servers[0])
            .args(["--server-endpoint", &servers[1]])
            .args(["--handshake-timeout", "1s", "--token-source", &token])
            .output()
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // Both answer: a report for each, exit 0.
    let output = check([one.addr.to_string(), two.addr.to_string()]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    for server in [one.addr, two.addr] {
        assert!(
            stdout.contains(&format!("server {server} ({server})\n")),
            "{stdout}"
        );
    }
    assert_eq!(stdout.matches("token accepted\n").count(), 2, "{stdout}");

    // The second is dead: the first is still reported, the second named, exit 1.
    let live = one.addr.to_string();
    let output = check([live.clone(), dead.clone()]).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    let failure = format!("no handshake with server {dead} within 1s");
    assert_eq!(
        stderr,
        format!("quictun-client: error: 1 of 2 servers failed: {failure}\n")
    );
    assert!(
        stdout.starts_with(&format!("server {live} ({live})\n")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!(
            "token accepted\nserver {dead}: failed: {failure}\n"
        )),
        "{stdout}"
    );
}
