//! Our server with clients of the original Go implementation (ALPN `quic-tun`). The client
//! here is written in the test and behaves like the original's: one 512-byte NUL-padded
//! token block in one write, nothing else before the one-byte answer.

mod common;

use std::net::SocketAddr;

use common::*;
use quictun::tls::Verification;
use quictun::wire::{ALPN_LEGACY, encode_legacy_token};

/// A connection as the original's client makes it: ALPN `quic-tun` only.
async fn legacy_connection(server: SocketAddr) -> quinn::Connection {
    let endpoint = quictun::transport::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto =
        quictun::tls::client_crypto_offering(&Verification::Insecure, None, &[ALPN_LEGACY])
            .unwrap();
    endpoint
        .connect_with(quinn::ClientConfig::new(crypto), server, "localhost")
        .unwrap()
        .await
        .unwrap()
}

/// Sends the token block in the given pieces and reads the one-byte answer.
async fn ask(
    connection: &quinn::Connection,
    token: &str,
    pieces: &[usize],
) -> (u8, quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let block = encode_legacy_token(token.as_bytes()).unwrap();
    let mut at = 0;
    for &len in pieces {
        send.write_all(&block[at..at + len]).await.unwrap();
        at += len;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    send.write_all(&block[at..]).await.unwrap();
    let mut answer = [0u8; 1];
    within(10, recv.read_exact(&mut answer)).await.unwrap();
    (answer[0], send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_client_moves_64_mib_byte_exact_to_tcp_and_unix_targets() {
    let dir = TempDir::new("legacy");
    let server = start_server("");
    let connection = legacy_connection(server.addr).await;
    for app in [
        app_server_tcp(Behaviour::Echo).await,
        app_server_unix(&dir, Behaviour::Echo).await,
    ] {
        let (status, mut send, mut recv) = ask(&connection, &app.addr.to_string(), &[]).await;
        assert_eq!(status, 0x01);
        let data = pattern(64 * 1024 * 1024, 5);
        let expected = sha256(&data);
        let writer = tokio::spawn(async move {
            send.write_all(&data).await.unwrap();
            send.finish().unwrap();
        });
        let echoed = within(120, recv.read_to_end(usize::MAX)).await.unwrap();
        writer.await.unwrap();
        assert_eq!(echoed.len(), 64 * 1024 * 1024);
        assert_eq!(sha256(&echoed), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_split_across_several_writes_is_read_whole() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let connection = legacy_connection(server.addr).await;
    let (status, mut send, mut recv) =
        ask(&connection, &app.addr.to_string(), &[3, 100, 200]).await;
    assert_eq!(status, 0x01);
    send.write_all(b"split").await.unwrap();
    send.finish().unwrap();
    assert_eq!(within(10, recv.read_to_end(64)).await.unwrap(), b"split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_the_original_status_bytes_and_never_zero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start_server("");
    let connection = legacy_connection(server.addr).await;
    // 0x02: the token does not parse.
    let (status, _send, mut recv) = ask(&connection, "not-an-address", &[]).await;
    assert_eq!(status, 0x02);
    // One byte, then the stream is finished.
    assert_eq!(within(10, recv.read_to_end(64)).await.unwrap(), b"");
    // 0x03: the target cannot be reached.
    let (status, _send, mut recv) = ask(&connection, &format!("tcp:127.0.0.1:{port}"), &[]).await;
    assert_eq!(status, 0x03);
    assert_eq!(within(10, recv.read_to_end(64)).await.unwrap(), b"");
    // The original's tcp4: spelling is understood.
    let app = app_server_tcp(Behaviour::Echo).await;
    let tcp4 = app.addr.to_string().replacen("tcp:", "tcp4:", 1);
    assert_eq!(ask(&connection, &tcp4, &[]).await.0, 0x01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_clients_still_get_our_protocol() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let client = start_client(local_tcp(), server.addr, &app.addr.to_string()).await;
    let echoed = within(30, exchange(connect(&client.addr).await, b"v2".to_vec()))
        .await
        .unwrap();
    assert_eq!(echoed, b"v2");
    let connection = raw_connection(server.addr).await;
    let alpn = connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    assert_eq!(alpn.as_deref(), Some(quictun::wire::ALPN_V2));
}
