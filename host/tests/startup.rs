//! The client at start (SPEC §9): it connects before any application does and says so, and a
//! failure that retrying cannot fix is logged once, refuses applications at once and is
//! retried on SIGHUP. Real binaries, real QUIC on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_connects_at_start_and_says_to_what() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let mut server = Launch::server().start().await;
    let fingerprint = field_of(
        &server.line("fingerprint=sha256:", LIMIT).await,
        "fingerprint",
    );
    let quic = server.quic_addr().to_string();
    let mut client = Launch::client()
        .args(["--server-endpoint", &quic])
        .args(["--token-source", &app.addr.to_string()])
        .start()
        .await;
    // No application has connected: the line comes from the start alone.
    let line = client.line("connected to server", LIMIT).await;
    assert!(
        line.contains(&format!("fingerprint={fingerprint}")),
        "{line}"
    );
    assert!(line.contains("protocol=quic-tun/2"), "{line}");
    assert!(line.contains(&format!("remote_endpoint={quic}")), "{line}");
    assert!(line.contains("rtt="), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_logged_once_refuses_applications_at_once_and_is_retried_on_sighup() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = Launch::server().start().await;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let mut client = Launch::client()
        .args(["--server-endpoint", &server.quic_addr().to_string()])
        .args(["--token-source", &app.addr.to_string()])
        .args(["--server-cert-fingerprint", &wrong])
        .args(["--outage-wait", "30s"])
        .args(["--log-level", "debug"])
        .start()
        .await;
    let refusal = client.line("next attempt in 60s", LIMIT).await;
    assert!(refusal.contains("ERROR"), "{refusal}");
    assert!(refusal.contains(&wrong), "{refusal}");

    // An application is refused at once, not after --outage-wait.
    for _ in 0..3 {
        let started = Instant::now();
        let mut app_conn = connect_tcp(&client.app_addr()).await;
        let mut buf = [0u8; 1];
        let read = within(10, app_conn.read(&mut buf)).await;
        let took = started.elapsed();
        assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
        eprintln!("application refused after {took:?}");
        // SPEC §9 asks for 100 ms; a loaded test machine gets ten times that.
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
    }

    // SIGHUP retries at once; the same failure is not logged at ERROR again.
    client.signal("HUP");
    client
        .line("retrying the connection to the server now", LIMIT)
        .await;
    client.line("still refused", LIMIT).await;
    let errors = client
        .lines()
        .iter()
        .filter(|l| l.contains("ERROR"))
        .count();
    assert_eq!(errors, 1, "{}", client.log());
}
