//! Several services in one client (SPEC §11), with the real binaries: a `services:` list in the
//! client's YAML, each service its own listener and token source (TCP and UDP ones), all on one
//! QUIC connection; `--check` tests each; a broken entry, or a single-listener flag beside the
//! list, stops the start with one line.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use quictun::wire::addr::Address;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// A UDP server that sends every datagram back to its sender.
async fn udp_echo() -> std::net::SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

/// Sends `count` numbered datagrams to `to` one at a time, each answered before the next.
async fn udp_exchange(to: &Address, count: u32) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = to.to_string();
    let to = to.strip_prefix("udp:").expect("a UDP service");
    let mut buf = vec![0u8; 2048];
    for seq in 0..count {
        let datagram: Vec<u8> = seq.to_be_bytes().repeat(300);
        socket.send_to(&datagram, to).await.unwrap();
        let len = within(10, socket.recv(&mut buf)).await.unwrap();
        assert_eq!(&buf[..len], &datagram[..], "datagram {seq}");
    }
}

/// Writes `yaml` as the client's config file and points the client at it.
fn with_config(client: Launch, yaml: &str) -> Launch {
    let path = client.scratch().join("client.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    client.arg("--config").arg(path)
}

/// The address each service logged as ready.
fn service_addr(log: &[String], service: &str) -> Address {
    let line = log
        .iter()
        .find(|l| l.contains("service ready") && l.contains(&format!("service={service} ")))
        .unwrap_or_else(|| panic!("no ready line for service {service}:\n{}", log.join("\n")));
    field_of(line, "listen").parse().expect("a listen address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_carry_traffic_at_once_over_one_connection() {
    let echo = app_server_tcp(Behaviour::Echo).await;
    let digest = app_server_tcp(Behaviour::DigestAfterEof).await;
    let (udp, udp_2) = (udp_echo().await, udp_echo().await);
    let server = Launch::server().start().await;
    let yaml = format!(
        "services:\n\
         - name: web\n  listen-on: tcp:127.0.0.1:0\n  token-source: {}\n\
         - name: db_2\n  listen-on: tcp:127.0.0.1:0\n  token-source-plugin: Fixed\n  token-source: {}\n\
         - name: dns\n  listen-on: udp:127.0.0.1:0\n  token-source: udp:{udp}\n\
         - name: ntp\n  listen-on: udp:127.0.0.1:0\n  token-source: udp:{udp_2}\n",
        echo.addr, digest.addr
    );
    let client = Launch::client().without("--listen-on").args([
        "--server-endpoint",
        &server.quic_addr().to_string(),
        "--insecure-skip-verify",
        "--httpd-listen-on",
        "127.0.0.1:0",
    ]);
    let client = with_config(client, &yaml).start().await;
    let log = client.lines();
    let (web, db) = (service_addr(&log, "web"), service_addr(&log, "db_2"));
    let (dns, ntp) = (service_addr(&log, "dns"), service_addr(&log, "ntp"));
    let api = client.api.expect("the client's REST API");

    // Both tunnels open: the echo one has carried bytes both ways, the digest one waits.
    let first = pattern(1 << 20, 1);
    let mut web_conn = connect_tcp(&web).await;
    web_conn.write_all(&first).await.unwrap();
    let mut echoed = vec![0; first.len()];
    within(30, web_conn.read_exact(&mut echoed)).await.unwrap();
    assert!(echoed == first, "the echo service's bytes differ");
    let sent = pattern(3 << 20, 2);
    let mut db_conn = connect_tcp(&db).await;
    db_conn.write_all(&sent[..1 << 20]).await.unwrap();
    let listed = wait_until(Duration::from_secs(20), || {
        let tunnels = get_json(api, "/tunnels");
        std::future::ready((tunnels.as_array().map_or(0, Vec::len) == 2).then_some(tunnels))
    })
    .await
    .expect("two tunnels listed");
    let mut services: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["service"].as_str().unwrap().to_owned(),
                t["transport"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    services.sort();
    assert_eq!(
        services,
        [("db_2".into(), "tcp".into()), ("web".into(), "tcp".into())]
    );

    // All four carry traffic at the same time: the rest of both streams, and datagrams of
    // two UDP services, whose frames arrive on the one connection.
    let more = pattern(2 << 20, 3);
    let web_rest = async {
        let (mut reader, mut writer) = web_conn.into_split();
        let write = async {
            writer.write_all(&more).await.unwrap();
            writer.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let read = reader.read_to_end(&mut back);
        let (_, read) = tokio::join!(write, read);
        read.unwrap();
        back
    };
    let db_rest = async {
        db_conn.write_all(&sent[1 << 20..]).await.unwrap();
        db_conn.shutdown().await.unwrap();
        let mut digest = Vec::new();
        db_conn.read_to_end(&mut digest).await.unwrap();
        digest
    };
    let flows = async { tokio::join!(udp_exchange(&dns, 200), udp_exchange(&ntp, 200)) };
    let (back, digest_back, ((), ())) =
        within(60, async { tokio::join!(web_rest, db_rest, flows) }).await;
    assert!(back == more, "the echo service's second part differs");
    assert_eq!(digest_back, sha256(&sent));

    // One QUIC connection; the metrics of tunnels carry the service.
    let connections = get_json(api, "/connections");
    assert_eq!(
        connections.as_array().map(Vec::len),
        Some(1),
        "{connections}"
    );
    let metrics = http_get(api, "/metrics");
    for service in ["web", "db_2", "dns", "ntp"] {
        let total = format!("quictun_tunnels_total{{service=\"{service}\"}} 1");
        assert!(metrics.contains(&total), "{total}:\n{metrics}");
    }
    let datagrams = "quictun_datagrams_total{service=\"dns\",direction=\"client_to_server\"} 200";
    assert!(metrics.contains(datagrams), "{datagrams}:\n{metrics}");
    let bytes = format!(
        "quictun_bytes_total{{service=\"db_2\",direction=\"client_to_server\"}} {}",
        sent.len()
    );
    assert!(metrics.contains(&bytes), "{bytes}:\n{metrics}");
    drop((client, server));
}

/// Runs the client with `yaml` and `flags` (no default --listen-on) until it stops.
async fn refused(yaml: &str, flags: &[&str]) -> String {
    let client = Launch::client()
        .without("--listen-on")
        .args([
            "--server-endpoint",
            "127.0.0.1:9",
            "--server-cert-fingerprint",
        ])
        .arg(format!("sha256:{}", "ab".repeat(32)))
        .args(flags);
    let Output { status, stderr, .. } = with_config(client, yaml).output().await;
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!status.success(), "started: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_broken_service_stops_the_start_with_one_line_naming_it() {
    let good = "- {name: web, listen-on: 'tcp:127.0.0.1:0', token-source: 'tcp:127.0.0.1:9'}\n";
    let cases = [
        (
            "- {name: Bad!, listen-on: 'tcp:127.0.0.1:0'}\n",
            "service \"Bad!\"",
        ),
        (
            "- {name: a, listen-on: 'tcp:127.0.0.1:6599', token-source: x}\n- {name: b, listen-on: 'tcp:127.0.0.1:6599', token-source: x}\n",
            "service \"b\": listen-on tcp:127.0.0.1:6599 is already service \"a\"'s",
        ),
        (
            "- {name: odd, listen-on: 'tcp:127.0.0.1:0', token-source-plugin: NoSuchPlugin}\n",
            "service \"odd\"",
        ),
        (
            "- {name: web, listen-on: 'tcp:127.0.0.1:0'}\n",
            "service \"web\" is named twice",
        ),
        (
            "- {name: bad-addr, listen-on: 'ftp:x'}\n",
            "service \"bad-addr\": listen-on",
        ),
        (
            "- {name: extra, listen-on: 'tcp:127.0.0.1:0', port: 1}\n",
            "service \"extra\": unknown key",
        ),
    ];
    for (entries, expected) in cases {
        let yaml = format!("services:\n{good}{entries}");
        let stderr = refused(&yaml, &[]).await;
        assert!(stderr.contains(expected), "{yaml}\n{stderr}");
    }
}

#[tokio::test]
async fn single_listener_flags_are_refused_beside_services() {
    let yaml =
        "services:\n- {name: web, listen-on: 'tcp:127.0.0.1:0', token-source: 'tcp:127.0.0.1:9'}\n";
    let stderr = refused(
        yaml,
        &["--listen-on", "tcp:127.0.0.1:0", "--token-source", "x"],
    )
    .await;
    assert!(
        stderr.contains(
            "--listen-on, --token-source cannot be given with the --config file's services:"
        ),
        "{stderr}"
    );
    let in_file = format!("token-source-plugin: File\n{yaml}");
    let stderr = refused(&in_file, &[]).await;
    assert!(
        stderr.contains("--token-source-plugin cannot be given"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tests_every_service_and_names_the_ones_refused() {
    let echo = app_server_tcp(Behaviour::Echo).await;
    let udp = udp_echo().await;
    let server = Launch::server().start().await;
    let good = format!(
        "services:\n\
         - {{name: web, listen-on: 'tcp:127.0.0.1:0', token-source: '{}'}}\n\
         - {{name: dns, listen-on: 'udp:127.0.0.1:0', token-source: 'udp:{udp}'}}\n",
        echo.addr
    );
    let check = |yaml: String| {
        let launch = Launch::check(&server.quic_addr().to_string()).args([
            "--insecure-skip-verify",
            "--log-level",
            "off",
        ]);
        with_config(launch, &yaml).output()
    };
    let output = check(good.clone()).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{output:?}");
    for service in ["web", "dns"] {
        let accepted = format!("service {service}: token accepted\n");
        assert!(stdout.contains(&accepted), "{accepted:?} not in:\n{stdout}");
    }

    let broken =
        format!("{good}- {{name: old, listen-on: 'tcp:127.0.0.1:0', token-source: bogus}}\n");
    let output = check(broken).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("service old: token refused: 2 (bad token)"),
        "{stderr}"
    );
    assert!(stdout.contains("service dns: token accepted"), "{stdout}");
    assert!(!stdout.contains("service old: token accepted"), "{stdout}");
}
