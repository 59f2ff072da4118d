//! Several server instances of one service (SPEC §12): connection IDs that carry the server
//! id, checked on the wire; a cluster key shared by instances, so one resets another's stale
//! connections at once and accepts its Retry tokens; the server id in metrics and logs; and
//! key files refused at start. Real servers on loopback, real packets through a UDP relay
//! that stands where a load balancer would.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::relay::{Relay, is_short_header};
use common::{
    Behaviour, Ca, Launch, TempDir, TestServer, app_server_tcp, connect, exchange, pattern,
    plugin_dir, raw_answer, start_server_custom, token_frame, transport, within,
};
use quictun::plugins::TokenParser;
use quictun::quic::cluster_key::{ClusterKey, Label};
use quictun::quic::keys::KeySource;
use quictun::tls::Verification;
use quictun::wire::Status;
use quinn::ConnectionError;
use ring::{hkdf, hmac};

/// The idle time-out of the servers and clients whose stale connections are redirected.
const IDLE: Duration = Duration::from_secs(3);

/// Writes a new cluster key to `dir/name`, mode 0600.
fn key_file(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("{}\n", ClusterKey::generate().unwrap().to_hex()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The CID key as docs/SCALING.md derives it, computed here apart from the server's code:
/// HKDF-SHA256 with the salt "quictun cluster key" and the info "cid", 32 bytes.
fn documented_cid_key(file: &Path) -> hmac::Key {
    let text = std::fs::read_to_string(file).unwrap();
    let hex = text.trim();
    let ikm: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"quictun cluster key").extract(&ikm);
    let okm = prk.expand(&[b"cid"], hmac::HMAC_SHA256).unwrap();
    hmac::Key::from(okm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_id_metric_and_log_line_carries_the_server_id() {
    let dir = TempDir::new("cluster-cids");
    let key = key_file(&dir, "cluster-key");
    let mut server = Launch::server()
        .args(["--server-id", "7", "--cluster-key-file"])
        .arg(&key)
        .args(["--httpd-listen-on", "127.0.0.1:0"])
        .start()
        .await;
    let relay = Relay::start(server.quic_addr()).await;
    let echo = app_server_tcp(Behaviour::Echo).await;
    let client = Launch::client()
        .args(["--server-endpoint", &relay.addr.to_string()])
        .args(["--token-source", &echo.addr.to_string()])
        .start()
        .await;
    // Enough for dozens of packets even at loopback's 64 KiB packets, one ACK per ten.
    let data = pattern(4 << 20, 7);
    let back = within(
        30,
        exchange(connect(&client.app_addr()).await, data.clone()),
    )
    .await;
    assert!(back.unwrap() == data, "the echo came back changed");

    // Every 1-RTT packet the client sent carries a connection ID the server issued.
    let cid_key = documented_cid_key(&key);
    let short: Vec<Vec<u8>> = relay
        .sent_by_client()
        .into_iter()
        .filter(|d| is_short_header(d))
        .collect();
    assert!(short.len() >= 10, "{} short-header packets", short.len());
    for datagram in &short {
        let cid = &datagram[1..9];
        assert_eq!(cid[0], 0x00, "config rotation: {cid:02x?}");
        assert_eq!(cid[1], 7, "server id: {cid:02x?}");
        let tag = hmac::sign(&cid_key, &cid[..6]);
        assert_eq!(cid[6..8], tag.as_ref()[..2], "check bytes: {cid:02x?}");
    }
    let distinct: std::collections::HashSet<&[u8]> = short.iter().map(|d| &d[1..9]).collect();
    eprintln!(
        "{} short-header packets from the client, {} connection IDs, all 00 07 … with a valid check",
        short.len(),
        distinct.len()
    );

    // Every sample of the metrics, and every line of the server's log, names the server id.
    let metrics = common::http_get(server.api.unwrap(), "/metrics");
    let (_, body) = metrics.split_once("\r\n\r\n").unwrap();
    let samples: Vec<&str> = body.lines().filter(|l| l.starts_with("quictun_")).collect();
    assert!(samples.len() >= 10, "{body}");
    for sample in &samples {
        assert!(sample.contains("{server_id=\"7\""), "{sample}");
    }
    server
        .line("connection established", Duration::from_secs(5))
        .await;
    for line in server.lines() {
        assert!(line.contains("server_id=7"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ids_issued_later_carry_the_server_id_too() {
    let key = ClusterKey::generate().unwrap();
    let server = instance(&key, 9, false);
    let relay = Relay::start(server.addr).await;
    let (endpoint, connection) = quinn_client(relay.addr).await;
    let echo = app_server_tcp(Behaviour::Echo).await;
    let target = token_frame(&echo.addr.to_string());
    // Each move to a new address makes the client switch to an unused connection ID, one the
    // server issued in a NEW_CONNECTION_ID frame (RFC 9000 §9.5); the relay follows it.
    for _ in 0..3 {
        let answer = raw_answer(&connection, &target).await.unwrap();
        assert_eq!(answer.status, Status::Ok);
        endpoint
            .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
    }
    assert_eq!(
        raw_answer(&connection, &target).await.unwrap().status,
        Status::Ok
    );
    let cid_key = hmac::Key::new(hmac::HMAC_SHA256, &key.derive(Label::Cid));
    let ids: std::collections::HashSet<Vec<u8>> = relay
        .sent_by_client()
        .iter()
        .filter(|d| is_short_header(d))
        .map(|d| d[1..9].to_vec())
        .collect();
    assert!(ids.len() >= 4, "{} connection IDs", ids.len());
    for cid in &ids {
        assert_eq!(cid[..2], [0x00, 9], "{cid:02x?}");
        assert_eq!(cid[6..8], hmac::sign(&cid_key, &cid[..6]).as_ref()[..2]);
    }
    eprintln!(
        "{} connection IDs used by a client that moved 3 times, all 00 09 …",
        ids.len()
    );
}

/// A connection to instance A through the relay; A is killed, the relay sends the client's
/// packets to instance B from then on, and the client writes. What ends the connection, and
/// how long after the redirect.
async fn redirected_after_a_dies(same_key: bool) -> (ConnectionError, Duration) {
    let dir = TempDir::new("cluster-reset");
    let ca = Ca::new(&dir, "cluster");
    ca.leaf(&dir, "server", &["localhost"]);
    let key_a = key_file(&dir, "key-a");
    let key_b = match same_key {
        true => key_a.clone(),
        false => key_file(&dir, "key-b"),
    };
    let instance = |id: &str, key: &Path| {
        Launch::server()
            .args(["--server-id", id, "--cluster-key-file"])
            .arg(key)
            .arg("--cert-file")
            .arg(dir.join("server.pem"))
            .arg("--key-file")
            .arg(dir.join("server.key"))
            .args(["--idle-timeout", "3s", "--keep-alive", "1s"])
            .start()
    };
    let a = instance("1", &key_a).await;
    let b = instance("2", &key_b).await;
    let relay = Relay::start(a.quic_addr()).await;
    let (_endpoint, connection) = quinn_client(relay.addr).await;
    let echo = app_server_tcp(Behaviour::Echo).await;
    let target = echo.addr.to_string();
    let answer = raw_answer(&connection, &token_frame(&target))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Ok);

    drop(a); // killed (SIGKILL): it says nothing to the client
    relay.redirect(b.quic_addr());
    let redirected = Instant::now();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    let _ = send.write_all(&token_frame(&target)).await;
    let error = within(20, connection.closed()).await;
    (error, redirected.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_the_same_cluster_key_resets_a_dead_ones_connection_at_once() {
    let (error, after) = redirected_after_a_dies(true).await;
    eprintln!("same cluster key: {error:?} {after:?} after the redirect");
    assert!(matches!(error, ConnectionError::Reset), "{error:?}");
    assert!(after < Duration::from_millis(500), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_another_key_leaves_the_connection_to_its_idle_time_out() {
    let (error, after) = redirected_after_a_dies(false).await;
    eprintln!("another cluster key: {error:?} {after:?} after the redirect");
    assert!(matches!(error, ConnectionError::TimedOut), "{error:?}");
    assert!(after > IDLE / 2, "{after:?}");
}

/// A quinn client connected to `server` (through the relay), without certificate checks,
/// with the idle time-out the servers have.
async fn quinn_client(server: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(&Verification::Insecure, None).unwrap();
    let mut config = quinn::ClientConfig::new(crypto);
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(IDLE.try_into().unwrap()));
    config.transport_config(Arc::new(transport));
    let connecting = endpoint.connect_with(config, server, "localhost").unwrap();
    let connection = within(10, connecting).await.unwrap();
    (endpoint, connection)
}

/// An in-process server with the cluster key `key` and id `id`; `retry_all` makes it ask
/// every client to prove its address first.
fn instance(key: &ClusterKey, id: u8, retry_all: bool) -> TestServer {
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    start_server_custom(parser, transport(), |config| {
        config.keys = KeySource::Cluster(key.clone());
        config.server_id = Some(id);
        if retry_all {
            config.limits.retry_threshold = 0;
        }
    })
}

/// Two in-process instances and a client's connection through the relay, when it came up.
struct RetryRun {
    a: TestServer,
    b: TestServer,
    relay: Relay,
    connection: Option<quinn::Connection>,
}

/// A client's first Initial goes to instance A, which asks it to prove its address (Retry);
/// its second Initial, with A's token, goes to instance B, which asks the same of every
/// client that has not proved it. B either takes the token (a connection comes up after one
/// Retry) or not (a second Retry).
async fn retried_at_a_answered_to_b(key_a: &ClusterKey, key_b: &ClusterKey) -> RetryRun {
    let a = instance(key_a, 1, true);
    let b = instance(key_b, 2, true);
    let relay = Relay::start(a.addr).await;
    relay.redirect_after_retry(b.addr);
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(&Verification::Insecure, None).unwrap();
    let started = Instant::now();
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(crypto), relay.addr, "localhost")
        .unwrap();
    let connection = tokio::select! {
        connected = connecting => connected.inspect_err(|e| eprintln!("handshake: {e}")).ok(),
        // A second Retry: B did not take A's token and asks the client to prove its address
        // itself. (What the client makes of it is quinn's business, not B's.)
        () = async {
            common::wait_until(Duration::from_secs(10), || std::future::ready(relay.retries() >= 2))
                .await
                .expect("neither a connection nor a second Retry")
        } => None,
    };
    eprintln!(
        "Retry from A, then B: {} Retries, connected: {}, after {:?}",
        relay.retries(),
        connection.is_some(),
        started.elapsed()
    );
    RetryRun {
        a,
        b,
        relay,
        connection,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_token_from_one_instance_is_accepted_by_another() {
    let key = ClusterKey::generate().unwrap();
    let run = retried_at_a_answered_to_b(&key, &key).await;
    assert_eq!(
        run.relay.retries(),
        1,
        "B asked again: it did not take A's token"
    );
    // B took the connection on and serves its tunnels; A kept nothing.
    let connection = run.connection.expect("a connection with B");
    let echo = app_server_tcp(Behaviour::Echo).await;
    let answer = raw_answer(&connection, &token_frame(&echo.addr.to_string())).await;
    assert_eq!(answer.unwrap().status, Status::Ok);
    assert_eq!(run.b.connections.open_count(), 1);
    assert_eq!(run.a.connections.open_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_token_is_not_taken_by_an_instance_with_another_key() {
    let (key_a, key_b) = (
        ClusterKey::generate().unwrap(),
        ClusterKey::generate().unwrap(),
    );
    let run = retried_at_a_answered_to_b(&key_a, &key_b).await;
    // B answered the Initial carrying A's token with a Retry of its own.
    assert!(run.relay.retries() >= 2, "{}", run.relay.retries());
}

/// Starts the server with `--cluster-key-file` naming `file`: it must refuse, in one line
/// containing `expected`, with exit code 1.
async fn refused(file: &Path, expected: &str) {
    let output = Launch::server()
        .arg("--cluster-key-file")
        .arg(file)
        .output()
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.contains(expected), "{expected:?} not in: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn bad_cluster_key_files_are_refused_in_one_line() {
    let dir = TempDir::new("cluster-bad-keys");
    let readable = key_file(&dir, "readable");
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o640)).unwrap();
    refused(
        &readable,
        &format!(
            "is open to group or others (mode 0640): run chmod 600 {}",
            readable.display()
        ),
    )
    .await;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let short = write("short", &format!("{}\n", "ab".repeat(31)));
    refused(&short, "62 hex digits is too short (64 or more").await;
    let not_hex = write("not-hex", &format!("{}zz\n", "ab".repeat(32)));
    refused(&not_hex, "character 65 is not a hex digit").await;
    refused(&dir.join("missing"), "cannot read cluster key file").await;
}

#[tokio::test]
async fn a_generated_key_starts_a_server() {
    let output = std::process::Command::new(common::process::SERVER)
        .args(["--generate", "cluster-key"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).unwrap();
    assert_eq!(key.len(), 65, "{key:?}");
    assert!(
        key.trim_end().bytes().all(|b| b.is_ascii_hexdigit()),
        "{key:?}"
    );
    let dir = TempDir::new("cluster-generated");
    let path = dir.join("cluster-key");
    std::fs::write(&path, &key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut server = Launch::server()
        .arg("--cluster-key-file")
        .arg(&path)
        .start()
        .await;
    server
        .line("cluster key loaded", Duration::from_secs(5))
        .await;
}
