//! UDP flows end to end (SPEC §11): the real client and server on loopback, real UDP
//! application sockets, a real UDP echo server, datagrams compared byte for byte.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use quictun::plugins::TokenSource;
use quictun::server::policy::Policy;
use quictun::wire::Status;
use quictun::wire::addr::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// The largest UDP payload over IPv4.
const MAX: usize = 65_507;
/// The largest UDP payload over IPv6.
const MAX_V6: usize = 65_527;

/// A UDP server on IPv4 loopback that sends every datagram back to its sender.
async fn udp_echo() -> SocketAddr {
    udp_echo_on("127.0.0.1:0").await
}

async fn udp_echo_on(bind: &str) -> SocketAddr {
    let socket = UdpSocket::bind(bind).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

fn udp_listen() -> Address {
    "udp:127.0.0.1:0".parse().unwrap()
}

fn udp_addr(addr: &Address) -> SocketAddr {
    let Address::Udp(host_port) = addr else {
        panic!("not a UDP address: {addr}")
    };
    host_port.to_string().parse().unwrap()
}

/// xorshift64*: random sizes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A size from 1 to 65,507: half of them fit a DATAGRAM frame, half need the stream.
    fn size(&mut self) -> usize {
        let roll = self.next();
        if roll & 1 == 0 {
            1 + (roll >> 1) as usize % 1200
        } else {
            1 + (roll >> 1) as usize % MAX
        }
    }
}

/// A datagram tagged with its application socket and sequence number, then filled.
fn datagram(app: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut data = pattern(len.max(5), u64::from(seq) * 31 + u64::from(app));
    data[0] = app;
    data[1..5].copy_from_slice(&seq.to_be_bytes());
    data.truncate(len);
    data
}

/// Sends `data` from `socket` to `to` until the same bytes come back (a datagram may be lost
/// in a busy kernel); replies to earlier, resent datagrams are skipped, anything else fails.
async fn echo_once(socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..20 {
        socket.send_to(data, to).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            let (len, from) = received.unwrap();
            assert_eq!(from, to, "a reply from elsewhere");
            let reply = &buf[..len];
            if reply == data {
                return;
            }
            // An earlier, resent empty datagram's echo.
            if reply.is_empty() {
                continue;
            }
            // Only ever our own earlier datagrams (1-byte datagrams carry only the tag).
            assert_eq!(reply.first(), data.first(), "another socket's reply");
            if len >= 5 && data.len() >= 5 {
                assert!(reply[1..5] < data[1..5], "a reply from the future");
            }
        }
    }
    panic!("no echo of a {}-byte datagram", data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_of_every_size_echo_byte_exact_to_each_socket_only() {
    let echo = udp_echo().await;
    let server = start_server("");
    let client = start_client(udp_listen(), server.addr, &format!("udp:{echo}")).await;
    let to = udp_addr(&client.addr);
    const SOCKETS: u8 = 4;
    const EACH: u32 = 600;
    let mut tasks = Vec::new();
    for app in 0..SOCKETS {
        tasks.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(app + 1));
            // The extremes first: nothing, 1 byte and the largest UDP payload.
            echo_once(&socket, to, &[]).await;
            echo_once(&socket, to, &datagram(app, 0, 1)).await;
            echo_once(&socket, to, &datagram(app, 1, MAX)).await;
            // Empty again, now in a DATAGRAM frame of the open flow.
            echo_once(&socket, to, &[]).await;
            for seq in 2..EACH {
                echo_once(&socket, to, &datagram(app, seq, rng.size())).await;
            }
        }));
    }
    for task in tasks {
        within(300, task).await.unwrap();
    }
    assert_eq!(server.registry.opened_total(), u64::from(SOCKETS));
    let flows = client.registry.list();
    assert_eq!(flows.len(), usize::from(SOCKETS), "one flow per socket");
    for flow in flows {
        let sent = flow.counters.client_datagrams.load(Ordering::Relaxed);
        assert!(sent >= u64::from(EACH), "{sent} datagrams counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_datagrams_up_to_the_largest_payload_are_carried_whole() {
    let echo = udp_echo_on("[::1]:0").await;
    let server = start_server("");
    let listen = "udp:[::1]:0".parse().unwrap();
    let client = start_client(listen, server.addr, &format!("udp:{echo}")).await;
    let to = udp_addr(&client.addr);
    let socket = UdpSocket::bind("[::1]:0").await.unwrap();
    // Past IPv4's largest payload, up to IPv6's: none cut, none dropped.
    for (seq, len) in [MAX_V6, MAX + 1, 1, MAX_V6 - 1].into_iter().enumerate() {
        echo_once(&socket, to, &datagram(0, seq as u32, len)).await;
    }
    let flow = &client.registry.list()[0];
    assert_eq!(flow.counters.dropped_datagrams.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flow_ends_on_both_ends_and_a_new_datagram_opens_another() {
    let echo = udp_echo().await;
    let transport = quictun::quic::TransportOptions {
        udp_idle_timeout: Duration::from_millis(300),
        ..transport()
    };
    let parser = quictun::plugins::TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_opts(parser, transport.clone());
    let client =
        start_client_opts(udp_listen(), server.addr, &format!("udp:{echo}"), transport).await;
    let to = udp_addr(&client.addr);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    echo_once(&socket, to, b"\x01first").await;
    assert_eq!(client.registry.open_count(), 1);
    let (c, s) = (client.registry.clone(), server.registry.clone());
    wait_until(Duration::from_secs(10), || {
        let (c, s) = (c.clone(), s.clone());
        async move { c.open_count() == 0 && s.open_count() == 0 }
    })
    .await
    .expect("the idle flow ends on both endpoints");
    echo_once(&socket, to, b"\x01second").await;
    assert_eq!(server.registry.opened_total(), 2, "a new flow");
    assert_eq!(client.registry.open_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_refuses_a_udp_target() {
    let echo = udp_echo().await;
    let parser = quictun::plugins::TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    // TCP to the same address and port is allowed; UDP to it is not ruled out by the
    // protocol but by the rule, which names another port.
    let allowed = format!("127.0.0.1:{}", echo.port() + 1);
    let server = start_server_custom(parser, transport(), |config| {
        config.policy = Policy::new(&[allowed.as_str()]).unwrap();
    });
    let connection = raw_connection(server.addr).await;
    let answer = raw_answer(&connection, &token_frame(&format!("udp:{echo}")))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::NotAllowed);
    assert!(answer.reason.contains("not allowed"), "{}", answer.reason);
    // Through the client: the flow is refused and nothing comes back.
    let client = start_client(udp_listen(), server.addr, &format!("udp:{echo}")).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"x", udp_addr(&client.addr)).await.unwrap();
    let refused = client.registry.clone();
    wait_until(Duration::from_secs(10), || {
        let refused = refused.clone();
        async move {
            refused
                .refused_total()
                .iter()
                .any(|(s, n)| *s == Status::NotAllowed && *n > 0)
        }
    })
    .await
    .expect("the client counts the refusal");
    let mut buf = [0u8; 16];
    let nothing = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await;
    assert!(nothing.is_err(), "a refused flow echoes nothing");
    // The source is held for a moment: its next datagrams are dropped and counted, and
    // neither the token source nor the server is asked again.
    let asked = server.registry.opened_total() + refusals(&server.registry);
    for _ in 0..5 {
        socket
            .send_to(b"again", udp_addr(&client.addr))
            .await
            .unwrap();
    }
    let registry = client.registry.clone();
    let held = wait_until(Duration::from_secs(10), || {
        let registry = registry.clone();
        // The first datagram too, when the answer came before it was sent.
        async move { (5..=6).contains(&registry.traffic_total().dropped_datagrams) }
    })
    .await;
    assert!(held.is_ok(), "{:?}", client.registry.traffic_total());
    assert_eq!(
        server.registry.opened_total() + refusals(&server.registry),
        asked
    );
}

fn refusals(registry: &quictun::tunnel::TunnelRegistry) -> u64 {
    registry.refused_total().iter().map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_cannot_drain_holds_at_most_a_mebibyte_and_counts_the_rest() {
    // A server that never answers: the flow waits for a connection, its queue full.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = udp_listen();
    let client = start_client_custom(
        listen,
        silent.local_addr().unwrap(),
        "udp:127.0.0.1:9",
        |config| {
            config.outage_wait = Duration::from_secs(2);
        },
    )
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let big = vec![7u8; 60_000];
    for _ in 0..100 {
        socket.send_to(&big, udp_addr(&client.addr)).await.unwrap();
        // Paced, so the listener's socket buffer does not overflow in the kernel.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // 1 MiB holds 17 of them; all 100 are dropped and counted once the flow gives up.
    let registry = client.registry.clone();
    let counted = wait_until(Duration::from_secs(20), || {
        let registry = registry.clone();
        async move { registry.traffic_total().dropped_datagrams == 100 }
    })
    .await;
    assert!(counted.is_ok(), "{:?}", client.registry.traffic_total());
    drop(silent);
}

/// A token service that counts its requests and always answers `token`.
async fn counting_token_service(token: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let body = format!("{{\"token\": \"{token}\"}}");
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_source_is_asked_once_per_flow() {
    let echo = udp_echo().await;
    let (url, asked) = counting_token_service(format!("udp:{echo}")).await;
    let server = start_server("");
    let client = start_client_custom(udp_listen(), server.addr, "unused", |config| {
        config.services[0].source = TokenSource::load("Http", &url, Some(plugin_dir())).unwrap();
    })
    .await;
    let to = udp_addr(&client.addr);
    for app in 0..3u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for seq in 0..20 {
            echo_once(&socket, to, &datagram(app, seq, 100)).await;
        }
    }
    assert_eq!(asked.load(Ordering::SeqCst), 3, "one token per flow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_source_beyond_the_flow_limit_is_dropped_and_counted() {
    const FLOWS: usize = 1024;
    let echo = udp_echo().await;
    let server = start_server("");
    let client = start_client(udp_listen(), server.addr, &format!("udp:{echo}")).await;
    let to = udp_addr(&client.addr);
    let mut sockets = Vec::with_capacity(FLOWS);
    for _ in 0..FLOWS {
        sockets.push(Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()));
    }
    let mut tasks = Vec::new();
    for (app, socket) in sockets.iter().enumerate() {
        let socket = socket.clone();
        tasks.push(tokio::spawn(async move {
            echo_once(&socket, to, &datagram(app as u8, app as u32, 64)).await;
        }));
    }
    for task in tasks {
        within(120, task).await.unwrap();
    }
    assert_eq!(client.registry.open_count(), FLOWS);
    // One more source: its datagram is dropped, counted, and opens nothing.
    let late = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    late.send_to(b"late", to).await.unwrap();
    let dropped = wait_until(Duration::from_secs(10), || async {
        client.registry.traffic_total().dropped_datagrams == 1
    })
    .await;
    assert!(dropped.is_ok(), "{:?}", client.registry.traffic_total());
    let mut buf = [0u8; 16];
    let reply = tokio::time::timeout(Duration::from_millis(300), late.recv(&mut buf)).await;
    assert!(reply.is_err(), "the late source got a reply");
    assert_eq!(client.registry.open_count(), FLOWS);
    assert_eq!(server.registry.opened_total(), FLOWS as u64);
    // An existing flow still works.
    echo_once(&sockets[0], to, &datagram(0, 9999, 100)).await;
}
