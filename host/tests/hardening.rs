//! The server on an open UDP port under hostile traffic (SPEC §7): handshake floods, streams
//! that never finish their token, budgets for buffered data, and the target policy's edges.
//! Real QUIC throughout; the hostile side is raw quinn, or quinn-proto where it must send
//! bare Initials, from another loopback address (127.0.0.2) than the good client's.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use quictun::plugins::TokenParser;
use quictun::server::Limits;
use quictun::server::policy::Policy;
use quictun::wire::Status;
use quictun::wire::handshake::{Protocol, read_answer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_leaves_room_for_everyone_else() {
    let server = start_server("");
    let flood = UdpSocket::bind("127.0.0.2:0").unwrap();
    // More than the server's 100 connections: before the budgets, half-open handshakes
    // counted against them, and the good client below was refused.
    for datagram in initials(server.addr, 150) {
        flood.send_to(&datagram, server.addr).unwrap();
    }
    wait_until(Duration::from_secs(10), || async {
        server.handshake_failures("too_many_handshakes_from_address") >= 150 - 32
    })
    .await
    .expect("the flood's handshakes beyond 32 refused");
    let started = Instant::now();
    let app = app_server_tcp(Behaviour::Echo).await;
    let good = within(10, raw_connection(server.addr)).await;
    let answer = raw_answer(&good, &token_frame(&app.addr.to_string()))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Ok);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_handshakes_in_progress_make_new_clients_prove_their_address() {
    let server = start_server("");
    // 64 sources with a handshake each in progress (one Initial from each), then one more.
    let sources: Vec<UdpSocket> = (1..=65)
        .map(|i| UdpSocket::bind(format!("127.0.1.{i}:0")).unwrap())
        .collect();
    let datagrams = initials(server.addr, sources.len());
    for (socket, datagram) in sources.iter().zip(&datagrams).take(64) {
        socket.send_to(datagram, server.addr).unwrap();
    }
    let last = &sources[64];
    last.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The earlier handshakes must be in progress first: resend until the answer is a Retry.
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    let retry = loop {
        assert!(Instant::now() < deadline, "no Retry came back");
        last.send_to(&datagrams[64], server.addr).unwrap();
        let (len, _) = last.recv_from(&mut buf).unwrap();
        // A long header whose type bits are 0b11: a Retry (RFC 9000 §17.2.5).
        if len > 0 && buf[0] & 0xf0 == 0xf0 {
            break true;
        }
    };
    assert!(retry);
    // A real client still gets in: quinn answers the Retry with the token and proves its
    // address.
    let good = within(10, raw_connection(server.addr)).await;
    assert!(good.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_64_wait_unread_and_a_missing_token_gets_status_2() {
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| {
        config.handshake_timeout = Duration::from_millis(1500);
    });
    let connection = raw_connection(server.addr).await;
    // 96 streams that announce a 4096-byte token and send nothing more.
    let started = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..96 {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        send.write_all(&[0x10, 0x00]).await.unwrap();
        waiting.push(tokio::spawn(async move {
            let mut recv = recv;
            let answer = read_answer(&mut recv, Protocol::V2).await.unwrap();
            drop(send);
            (answer, started.elapsed())
        }));
    }
    let mut at = Vec::new();
    for task in waiting {
        let (answer, elapsed) = within(20, task).await.unwrap();
        assert_eq!(answer.status, Status::BadToken);
        assert!(
            answer.reason.starts_with("no token within"),
            "{}",
            answer.reason
        );
        at.push(elapsed);
    }
    at.sort();
    // The first 64 are read at once and time out together. The rest are read only then, so
    // they time out at least one handshake time-out later (their wait for a place is not
    // timed: it is bounded by the readers ahead of them).
    let (first, rest) = at.split_at(64);
    assert!(
        first[63] - first[0] < Duration::from_millis(500),
        "{first:?}"
    );
    assert!(
        rest[0] - first[63] >= Duration::from_millis(1200),
        "{first:?} {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_exist_but_sent_nothing_hold_no_reader_place() {
    // A stream exists for the server as soon as a higher-numbered one arrives (QUIC opens the
    // lower ones implicitly), often before its own token, which may be waiting for credit
    // that only reading later streams frees. Were such streams given the 64 places, a
    // thousand busy tunnels could stall the connection until it timed out.
    let app = app_server_tcp(Behaviour::Echo).await;
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| {
        config.handshake_timeout = Duration::from_secs(30);
    });
    let connection = raw_connection(server.addr).await;
    let token = token_frame(&app.addr.to_string());
    // A connection starts with 64 streams; 48 tunnels make the server grant 128, and 70
    // streams without a token then stand ahead of the next tunnel.
    let mut held = Vec::new();
    for _ in 0..48 {
        let (mut send, mut recv) = within(10, connection.open_bi()).await.unwrap();
        send.write_all(&token).await.unwrap();
        let answer = within(10, read_answer(&mut recv, Protocol::V2))
            .await
            .unwrap();
        assert_eq!(answer.status, Status::Ok, "{}", answer.reason);
        held.push((send, recv));
    }
    let mut silent = Vec::new();
    for _ in 0..70 {
        silent.push(within(10, connection.open_bi()).await.unwrap());
    }
    let answer = within(10, raw_answer(&connection, &token)).await.unwrap();
    assert_eq!(answer.status, Status::Ok, "{}", answer.reason);
    drop((held, silent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_a_token_do_not_raise_the_stream_limit() {
    // 3 connections × 10,000 streams that only announce a token cost the server 216 MiB when
    // every accepted stream made the limit grow; now the limit stops growing while 64 streams
    // wait for their token: a connection that sends none gets at most 128 streams.
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| {
        config.handshake_timeout = Duration::from_secs(30);
    });
    let connection = raw_connection(server.addr).await;
    let mut pending = Vec::new();
    for _ in 0..128 {
        let (mut send, recv) = within(10, connection.open_bi()).await.unwrap();
        send.write_all(&[0x10, 0x00]).await.unwrap();
        pending.push((send, recv));
    }
    // The 129th waits for one of them to end.
    let more = tokio::time::timeout(Duration::from_secs(2), connection.open_bi()).await;
    assert!(more.is_err(), "a 129th stream was granted");
    drop(pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_share_max_buffered_and_never_get_less_than_the_floor() {
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| {
        config.limits = Limits {
            max_buffered: 64 * 1024 * 1024,
            ..Limits::default()
        };
    });
    let mut held = Vec::new();
    let mut windows = Vec::new();
    for _ in 0..3 {
        held.push(raw_connection(server.addr).await);
        wait_until(Duration::from_secs(5), || async {
            server.connections.list().len() == held.len()
        })
        .await
        .expect("the new connection listed");
        let newest = server.connections.list().pop().unwrap();
        windows.push(newest.receive_window.unwrap());
    }
    const MIB: u64 = 1024 * 1024;
    assert_eq!(windows, [24 * MIB, 8 * MIB, 64 * 1024]);
    // Closed connections give their share back.
    drop(held);
    wait_until(Duration::from_secs(15), || async {
        server.connections.list().is_empty()
    })
    .await
    .expect("closed connections unlisted");
    let _again = raw_connection(server.addr).await;
    wait_until(Duration::from_secs(5), || async {
        server
            .connections
            .list()
            .first()
            .and_then(|c| c.receive_window)
            == Some(24 * MIB)
    })
    .await
    .expect("a connection alone gets the full window again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_unspecified_and_mapped_wildcard_targets() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let port = match &app.addr {
        quictun::wire::addr::Address::Tcp(hp) => hp.port,
        other => panic!("{other}"),
    };
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    // The rule that used to allow every IPv4 address on every port.
    let server = start_server_custom(parser, transport(), |config| {
        config.policy = Policy::new(&["::ffff:0.0.0.0"]).unwrap();
    });
    let connection = raw_connection(server.addr).await;
    for target in [
        format!("tcp:127.0.0.1:{port}"),
        format!("tcp:0.0.0.0:{port}"),
        format!("tcp:[::ffff:127.0.0.1]:{port}"),
    ] {
        let answer = raw_answer(&connection, &token_frame(&target))
            .await
            .unwrap();
        assert_eq!(answer.status, Status::NotAllowed, "{target}");
    }
    // Even an open relay never dials the wildcard address, which reaches this machine.
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let open = start_server_custom(parser, transport(), |_| {});
    let connection = raw_connection(open.addr).await;
    let answer = raw_answer(&connection, &token_frame(&format!("tcp:0.0.0.0:{port}")))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::NotAllowed);
    let answer = raw_answer(&connection, &token_frame(&app.addr.to_string()))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Ok);
}

#[test]
fn the_server_binary_refuses_to_start_without_a_target_rule() {
    let state = TempDir::new("fail-closed");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quictun-server"))
        .args(["--listen-on", "127.0.0.1:0", "--httpd-listen-on", ""])
        .arg("--state-dir")
        .arg(&state.0)
        .env_remove("QUICTUN_PLUGIN_DIR")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no --allow-target rule"), "{stderr}");
    assert!(stderr.contains("--allow-target any"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_quictun-server"))
        .args(["--allow-target", "any", "--allow-target", "127.0.0.1:22"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("stands alone"));
}
