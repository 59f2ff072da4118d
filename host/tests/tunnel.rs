//! End to end through real endpoints on loopback: the real client and server, the real
//! Fixed and Cleartext plugin libraries, real application servers, bytes compared exactly.

mod common;

use base64::Engine;
use common::*;
use quictun::wire::Status;
use quictun::wire::addr::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIG: usize = 64 * 1024 * 1024;

/// Sends 64 MiB through a tunnel to an echo server and checks every byte that comes back.
async fn round_trip_64_mib(client_listen: Address, app: &AppServer) {
    let server = start_server("");
    let client = start_client(client_listen, server.addr, &app.addr.to_string()).await;
    let data = pattern(BIG, 7);
    let expected = sha256(&data);
    let echoed = within(120, exchange(connect(&client.addr).await, data))
        .await
        .unwrap();
    assert_eq!(echoed.len(), BIG);
    assert_eq!(sha256(&echoed), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_tcp_64_mib_each_way() {
    let app = app_server_tcp(Behaviour::Echo).await;
    round_trip_64_mib(local_tcp(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_unix_64_mib_each_way() {
    let dir = TempDir::new("tcp-unix");
    let app = app_server_unix(&dir, Behaviour::Echo).await;
    round_trip_64_mib(local_tcp(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_to_tcp_64_mib_each_way() {
    let dir = TempDir::new("unix-tcp");
    let app = app_server_tcp(Behaviour::Echo).await;
    round_trip_64_mib(Address::Unix(dir.join("client.sock")), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_to_unix_64_mib_each_way() {
    let dir = TempDir::new("unix-unix");
    let app = app_server_unix(&dir, Behaviour::Echo).await;
    round_trip_64_mib(Address::Unix(dir.join("client.sock")), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections_each_get_their_own_bytes() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    let tasks: Vec<_> = (0..100u64)
        .map(|seed| {
            let addr = client.addr.clone();
            tokio::spawn(async move {
                let data = pattern(256 * 1024 + seed as usize, seed);
                let echoed = exchange(connect(&addr).await, data.clone()).await.unwrap();
                assert!(echoed == data, "connection {seed} got other bytes back");
            })
        })
        .collect();
    within(120, async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_still_delivers_the_whole_reply() {
    // The application sends its request, shuts its write side, and only then does the server
    // application answer: the answer must cross the tunnel after the client's EOF.
    let app = app_server_tcp(Behaviour::DigestAfterEof).await;
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    let data = pattern(3 * 1024 * 1024, 11);
    let reply = within(60, exchange(connect(&client.addr).await, data.clone()))
        .await
        .unwrap();
    assert_eq!(reply, sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_tokens_reach_their_target() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("base64");
    let token = base64::engine::general_purpose::STANDARD.encode(app.addr.to_string());
    let client = start_client(local_tcp(), server.addr, &token).await;
    let echoed = within(30, exchange(connect(&client.addr).await, b"ping".to_vec()))
        .await
        .unwrap();
    assert_eq!(echoed, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_is_status_2_and_a_closed_connection() {
    let server = start_server("");
    let connection = raw_connection(server.addr).await;
    let answer = raw_answer(&connection, &token_frame("not-an-address"))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::BadToken);
    assert!(
        answer.reason.contains("not-an-address"),
        "{}",
        answer.reason
    );

    let client = start_client(local_tcp(), server.addr, "not-an-address").await;
    let mut app = connect_tcp(&client.addr).await;
    // The refusal may already have reset the connection: the write may fail.
    let _ = app.write_all(b"hello").await;
    assert_closed_without_data(&mut app).await;
}

/// The tunnel was refused: the application connection closes (reset) with no byte.
async fn assert_closed_without_data(app: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let read = within(30, app.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "no byte may come from a refused tunnel");
    match read {
        Ok(_) => {}
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_status_3_and_a_closed_connection() {
    let closed = ClosedPort::new();
    let target = closed.target();
    let server = start_server("");
    let connection = raw_connection(server.addr).await;
    let answer = raw_answer(&connection, &token_frame(&target))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Unreachable);
    assert!(answer.reason.contains(&target), "{}", answer.reason);
    assert!(answer.reason.contains("refused"), "{}", answer.reason);

    let dir = TempDir::new("unreachable");
    let missing = format!("unix:{}", dir.join("nobody.sock").display());
    let answer = raw_answer(&connection, &token_frame(&missing))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Unreachable);

    let client = start_client(local_tcp(), server.addr, &target).await;
    let mut app = connect_tcp(&client.addr).await;
    assert_closed_without_data(&mut app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_lengths_are_status_2_and_the_server_keeps_serving() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let connection = raw_connection(server.addr).await;
    for header in [[0u8, 0], [0x10, 0x01], [0xff, 0xff]] {
        let answer = raw_answer(&connection, &header).await.unwrap();
        assert_eq!(answer.status, Status::BadToken);
        assert!(answer.reason.contains("token length"), "{}", answer.reason);
    }
    // The same connection still carries a good tunnel.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut frame = token_frame(&app.addr.to_string());
    frame.extend_from_slice(b"still here");
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    let answer =
        quictun::wire::handshake::read_answer(&mut recv, quictun::wire::handshake::Protocol::V2)
            .await
            .unwrap();
    assert_eq!(answer.status, Status::Ok);
    let echoed = within(30, recv.read_to_end(1024)).await.unwrap();
    assert_eq!(echoed, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_reset_reaches_the_other_application_as_a_reset() {
    // The server application records how its connection ended.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("tcp:{}", listener.local_addr().unwrap());
    let (established_tx, established) = tokio::sync::oneshot::channel();
    let ended = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 1024];
        stream.read_exact(&mut first).await.unwrap();
        established_tx.send(()).unwrap();
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).await.map(|_| sink.len())
    });
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &target).await;
    let mut app = connect_tcp(&client.addr).await;
    app.write_all(&pattern(256 * 1024, 3)).await.unwrap();
    // Only once the tunnel reaches the server application: abort. SO_LINGER 0 makes close
    // send a reset.
    within(30, established).await.unwrap();
    socket2::SockRef::from(&app)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(app);
    let result = within(30, ended).await.unwrap();
    let error = result.expect_err("a reset must not look like a complete transfer");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_parser_fails_only_its_tunnel_with_status_5() {
    use quictun::plugins::TokenParser;
    let app = app_server_tcp(Behaviour::Echo).await;
    let path = plugin_dir().join("libquictun_test_parser.so");
    let server = start_server_with(TokenParser::load(path.to_str().unwrap(), "", None).unwrap());
    let connection = raw_connection(server.addr).await;
    let answer = raw_answer(&connection, &token_frame("panic"))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::PluginError);
    assert_eq!(answer.reason, "plugin panicked: asked to panic");
    // The server, the connection and the plugin all go on.
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    let echoed = within(30, exchange(connect(&client.addr).await, b"alive".to_vec()))
        .await
        .unwrap();
    assert_eq!(echoed, b"alive");
    let answer = raw_answer(&connection, &token_frame("panic"))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::PluginError);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_carries_the_bytes_exactly() {
    use quictun::plugins::TokenParser;
    use quictun::quic::{Congestion, TransportOptions};
    let app = app_server_tcp(Behaviour::Echo).await;
    for congestion in [
        Congestion::Cubic,
        Congestion::Newreno,
        Congestion::Bbr,
        Congestion::Adaptive,
    ] {
        let options = TransportOptions {
            congestion,
            ..transport()
        };
        let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
        let server = start_server_opts(parser, options.clone());
        let client =
            start_client_opts(local_tcp(), server.addr, &app.addr.to_string(), options).await;
        let data = pattern(16 * 1024 * 1024, congestion as u64);
        let echoed = within(60, exchange(connect(&client.addr).await, data.clone()))
            .await
            .unwrap();
        assert!(echoed == data, "{congestion:?} changed the bytes");
    }
}
