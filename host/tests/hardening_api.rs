//! The REST API on an open machine (SPEC §7): it answers only requests addressed to a loopback
//! name or to a host the operator allowed, so a web page rebinding its own name to 127.0.0.1
//! can neither list nor close tunnels; and clients that stall in their headers are cut off
//! without keeping `/healthz` from answering. Real TCP connections to a real API on
//! 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quictun::api::{self, ApiState};
use quictun::quic::connections::ConnectionRegistry;
use quictun::tunnel::{Registered, Side, Tunnel, TunnelRegistry, TunnelSpec};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every answer in these tests comes well within this.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The API of a server endpoint over `tunnels`, listening on a fresh loopback port.
async fn start_api(state: ApiState) -> SocketAddr {
    let listen = "127.0.0.1:0".parse().unwrap();
    api::start(&listen, state)
        .await
        .expect("start the REST API")
}

fn server_state(tunnels: &Arc<TunnelRegistry>) -> ApiState {
    ApiState::new(
        Side::Server,
        tunnels.clone(),
        Arc::<ConnectionRegistry>::default(),
    )
}

/// A tunnel as the server registers one, listed until the guard is dropped.
fn register_tunnel(tunnels: &Arc<TunnelRegistry>) -> Registered {
    tunnels.register(Tunnel::new(TunnelSpec {
        stream_id: 4,
        side: Side::Server,
        client_app: None,
        server_app: Some("tcp:127.0.0.1:22".into()),
        remote_endpoint: "127.0.0.1:50000".parse().unwrap(),
        connection: 0,
        service: None,
        transport: quictun::tunnel::Transport::Tcp,
    }))
}

/// An answer read off the wire: the status code and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

/// Sends `method path` with the given `Host` line (none for `None`) on a new connection and
/// reads the whole answer.
async fn request(addr: SocketAddr, method: &str, path: &str, host: Option<&str>) -> Answer {
    let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let text = format!("{method} {path} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n");
    exchange(addr, &text).await
}

async fn exchange(addr: SocketAddr, text: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the API");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    Answer {
        status,
        body: body.to_owned(),
    }
}

/// The uuids `/tunnels` lists when asked as the operator does.
async fn listed(addr: SocketAddr) -> Vec<String> {
    let answer = request(addr, "GET", "/tunnels", Some("localhost")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let tunnels = answer.json();
    let tunnels = tunnels.as_array().expect("an array");
    tunnels
        .iter()
        .map(|t| t["uuid"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_misdirected(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 421, "{what}: {answer:?}");
    let message = answer.json()["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {answer:?}"))
        .to_owned();
    assert!(message.contains("not allowed"), "{what}: {message}");
    assert!(
        message.contains("--httpd-allowed-host"),
        "{what}: {message}"
    );
}

#[tokio::test]
async fn a_foreign_host_gets_421_on_every_route() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let _tunnel = register_tunnel(&tunnels);
    let addr = start_api(server_state(&tunnels)).await;
    let uuid = &listed(addr).await[0];
    let routes = [
        ("GET", "/".to_owned()),
        ("GET", "/tunnels".to_owned()),
        ("GET", format!("/tunnels/{uuid}")),
        ("DELETE", format!("/tunnels/{uuid}")),
        ("GET", "/connections".to_owned()),
        ("GET", "/metrics".to_owned()),
        ("GET", "/healthz".to_owned()),
        ("GET", "/no-such-route".to_owned()),
        ("POST", "/tunnels".to_owned()),
    ];
    for (method, path) in &routes {
        let answer = request(addr, method, path, Some("attacker.example")).await;
        assert_misdirected(&answer, &format!("{method} {path}"));
        assert!(!answer.body.contains(uuid), "{method} {path}: {answer:?}");
        let message = answer.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("attacker.example"), "{message}");
    }
    // The operator's own requests still work, so the refusals above were the guard's.
    assert_eq!(listed(addr).await, std::slice::from_ref(uuid));
}

#[tokio::test]
async fn a_foreign_host_cannot_close_a_tunnel() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let registered = register_tunnel(&tunnels);
    let tunnel = registered.tunnel().clone();
    let addr = start_api(server_state(&tunnels)).await;
    let path = format!("/tunnels/{}", tunnel.uuid);

    let answer = request(addr, "DELETE", &path, Some("attacker.example:8086")).await;
    assert_misdirected(&answer, "DELETE from a foreign host");
    // No close was asked for: `closed()` would be ready at once if it had been.
    let close_requested = tokio::select! {
        biased;
        _ = tunnel.closed() => true,
        _ = std::future::ready(()) => false,
    };
    assert!(!close_requested, "the relay was told to close the tunnel");
    assert_eq!(listed(addr).await, [tunnel.uuid.to_string()]);

    // The same request from the operator closes it: a relay stand-in ends the tunnel when
    // asked, as the real relay does.
    tokio::spawn(async move {
        registered.tunnel().closed().await;
        drop(registered);
    });
    let answer = request(addr, "DELETE", &path, Some("localhost")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(listed(addr).await.is_empty());
}

#[tokio::test]
async fn loopback_hosts_are_answered_in_any_form() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let addr = start_api(server_state(&tunnels)).await;
    let port = addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("LOCALHOST:{port}"),
        format!("LocalHost:{port}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "127.8.9.10:8086".to_owned(),
        "[::1]".to_owned(),
        "[0:0:0:0:0:0:0:1]:8086".to_owned(),
    ] {
        let answer = request(addr, "GET", "/tunnels", Some(&host)).await;
        assert_eq!(answer.status, 200, "Host: {host}: {answer:?}");
        assert_eq!(answer.body, "[]", "Host: {host}");
    }
}

#[tokio::test]
async fn rebinding_look_alikes_and_a_missing_host_are_refused() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let addr = start_api(server_state(&tunnels)).await;
    for host in [
        "127.0.0.1.attacker.example",
        "localhost.attacker.example:8086",
        "attacker.example",
        "localhost@attacker.example",
        "attacker.example@localhost",
        "[::2]:8086",
        "[::ffff:127.0.0.1]",
        "127.1",
        "0x7f000001",
        "localhost.",
    ] {
        let answer = request(addr, "GET", "/tunnels", Some(host)).await;
        assert_eq!(answer.status, 421, "Host: {host}: {answer:?}");
    }
    for text in [
        "GET /tunnels HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /tunnels HTTP/1.0\r\n\r\n",
        "GET /tunnels HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
        // Absolute form: the URI's authority is the request's host, and it must pass too.
        "GET http://attacker.example/tunnels HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(addr, text).await;
        assert_eq!(answer.status, 421, "{text:?}: {answer:?}");
    }
}

#[tokio::test]
async fn an_allowed_host_is_answered_only_when_given() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let plain = start_api(server_state(&tunnels)).await;
    let hosts = ["tunnel-box.example", "192.0.2.7", "2001:db8::7"];
    let allowing =
        server_state(&tunnels).allowing_hosts(hosts.iter().map(|h| h.parse().unwrap()).collect());
    let allowing = start_api(allowing).await;
    for host in [
        "tunnel-box.example",
        "TUNNEL-BOX.Example:8086",
        "192.0.2.7:8086",
        "[2001:db8::7]:8086",
    ] {
        let answer = request(plain, "GET", "/tunnels", Some(host)).await;
        assert_misdirected(&answer, &format!("Host: {host} not given"));
        let answer = request(allowing, "GET", "/tunnels", Some(host)).await;
        assert_eq!(answer.status, 200, "Host: {host} given: {answer:?}");
    }
    for host in ["attacker.example", "api.tunnel-box.example", "192.0.2.8"] {
        let answer = request(allowing, "GET", "/tunnels", Some(host)).await;
        assert_misdirected(&answer, &format!("Host: {host} beside the allowed ones"));
    }
    let answer = request(allowing, "GET", "/healthz", Some("localhost")).await;
    assert_eq!(answer.status, 200, "loopback stays allowed: {answer:?}");
}

/// Reads until the server closes the connection; panics if it does not within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration, what: &str) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "{what}: still open after {limit:?}");
}

/// Polls `request` until it is answered 200, for at most `ANSWER_WAIT`.
async fn answered_soon(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + ANSWER_WAIT;
    loop {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let text = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut raw)).await;
        if raw.starts_with(b"HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_at_once() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let mut state = server_state(&tunnels);
    state.options.max_connections = 2;
    let addr = start_api(state).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /tunnels HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // Accepted after the two held ones, so over the cap: closed, not queued.
    let mut over = TcpStream::connect(addr).await.unwrap();
    closed_within(
        &mut over,
        Duration::from_secs(2),
        "the connection over the cap",
    )
    .await;
    // A held connection that ends gives its slot back.
    drop(held.pop());
    answered_soon(addr, "a request once a slot is free").await;
}

#[tokio::test]
async fn silent_and_idle_connections_end_with_the_header_time_out() {
    let tunnels = Arc::<TunnelRegistry>::default();
    let mut state = server_state(&tunnels);
    state.options.header_read_timeout = Duration::from_millis(300);
    let addr = start_api(state).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then the kept-alive connection waits for headers that never come.
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    closed_within(&mut silent, Duration::from_secs(5), "a silent connection").await;
    closed_within(
        &mut idle,
        Duration::from_secs(5),
        "an idle keep-alive connection",
    )
    .await;
}

/// 300 clients send half a request and stall: `/healthz` still answers at once, and every
/// stalled connection is closed by the real 10 s header time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_block_the_api_and_are_cut_off() {
    const STALLED: usize = 300;
    let tunnels = Arc::<TunnelRegistry>::default();
    let addr = start_api(server_state(&tunnels)).await;
    let stalled_at = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /tunnels HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(stream);
    }

    let asked = Instant::now();
    let answer = request(addr, "GET", "/healthz", Some("localhost")).await;
    let took = asked.elapsed();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"status":"ok"}"#);
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");

    let mut ends = tokio::task::JoinSet::new();
    for mut stream in stalled {
        ends.spawn(async move {
            let mut rest = Vec::new();
            // EOF or a reset: either way the server has let go of the connection.
            let _ = stream.read_to_end(&mut rest).await;
        });
    }
    let limit = Duration::from_secs(20).saturating_sub(stalled_at.elapsed());
    let all_closed = tokio::time::timeout(limit, async {
        while let Some(ended) = ends.join_next().await {
            ended.unwrap();
        }
    })
    .await;
    assert!(
        all_closed.is_ok(),
        "{} of {STALLED} stalled connections still open after 20 s",
        ends.len()
    );
}
