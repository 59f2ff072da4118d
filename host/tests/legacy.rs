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

/// A server that speaks only the original protocol, quirks included: it keeps only the last
/// chunk it reads of the token block and strips every NUL; it answers 0x01 and relays without
/// half-close, or repeats its refusal byte until the client stops reading.
async fn original_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let identity = quictun::identity::Identity::self_signed(&["localhost"]).unwrap();
    let mut crypto = rustls::ServerConfig::builder_with_provider(quictun::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .unwrap();
    crypto.alpn_protocols = vec![ALPN_LEGACY.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
    let config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(quic));
    let endpoint =
        quictun::transport::endpoint("127.0.0.1:0".parse().unwrap(), Some(config)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(original_stream(send, recv));
                }
            });
        }
    });
    (addr, task)
}

async fn original_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(Some(chunk)) = recv.read_chunk(512, true).await else {
        return;
    };
    let token: Vec<u8> = chunk.bytes.iter().copied().filter(|&b| b != 0).collect();
    let target = String::from_utf8_lossy(&token)
        .trim_start_matches("tcp:")
        .to_owned();
    let Ok(mut app) = tokio::net::TcpStream::connect(&target).await else {
        // Its refusal: the byte again and again until the client stops reading.
        while send.write_all(&[0x03]).await.is_ok() {
            tokio::task::yield_now().await;
        }
        return;
    };
    send.write_all(&[0x01]).await.unwrap();
    let (mut app_read, mut app_write) = app.split();
    // No half-close: the first end closes both directions.
    tokio::select! {
        _ = tokio::io::copy(&mut recv, &mut app_write) => {}
        _ = tokio::io::copy(&mut app_read, &mut send) => {}
    }
    let _ = send.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_works_against_an_original_server() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let (server, _task) = original_server().await;
    let client = start_client(local_tcp(), server, &app.addr.to_string()).await;
    let data = pattern(8 * 1024 * 1024, 9);
    assert_eq!(
        within(60, echo_without_half_close(&client.addr, &data)).await,
        data
    );
    assert_eq!(client.registry.opened_total(), 1);
}

/// The original's server closes both directions at the first EOF, so applications behind it
/// read their whole answer before they close.
async fn echo_without_half_close(addr: &quictun::addr::Address, data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = connect_tcp(addr).await.into_split();
    let sent = data.to_vec();
    let writing = tokio::spawn(async move { writer.write_all(&sent).await.map(|()| writer) });
    let mut echoed = vec![0u8; data.len()];
    reader.read_exact(&mut echoed).await.unwrap();
    drop(writing.await.unwrap().unwrap());
    echoed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_an_original_server_closes_the_application_connection() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (server, _task) = original_server().await;
    let client = start_client(local_tcp(), server, &format!("tcp:127.0.0.1:{port}")).await;
    let mut app = connect_tcp(&client.addr).await;
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = within(30, app.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
    // Refused tunnels do not pile up: the client stopped the repeated byte and moved on.
    let app = app_server_tcp(Behaviour::Echo).await;
    let second = start_client(local_tcp(), server, &app.addr.to_string()).await;
    assert_eq!(
        within(30, echo_without_half_close(&second.addr, b"next")).await,
        b"next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_too_long_for_the_original_block_is_refused_not_cut() {
    let (server, _task) = original_server().await;
    let long = format!("tcp:{}:1", "a".repeat(600));
    let client = start_client(local_tcp(), server, &long).await;
    let mut app = connect_tcp(&client.addr).await;
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = within(30, app.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
}
