//! `quictun-client --check` against a real server: the report of an accepted token, a refused
//! token with the server's reason, a pinned fingerprint in each of its forms or one that does
//! not match (also as the running client logs it), `--server-endpoint` with a prefix, and a
//! server that is not there — each with the exit code and the one-line error a person relies on.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use quictun::tls::Fingerprint;
use rustls::pki_types::CertificateDer;

/// Runs `quictun-client --check` against `server`.
async fn check(server: &str, args: &[&str]) -> Output {
    Launch::check(server).args(args).output().await
}

/// The fingerprint of the certificate the server shows, seen by a connection of our own.
async fn fingerprint_of(server: &TestServer) -> Fingerprint {
    let connection = raw_connection(server.addr).await;
    let chain = connection
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .expect("the server's certificate chain");
    connection.close(0u32.into(), b"");
    Fingerprint::of(&chain[0])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a failed check: exit code 1 and one line on standard error containing `expected`.
fn assert_fails_with(output: &Output, expected: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    for part in expected {
        assert!(stderr.contains(part), "{part:?} not in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !text(&output.stdout).contains("token accepted"),
        "{output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_token_is_reported_with_the_servers_fingerprint_alpn_and_rtt() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let fingerprint = fingerprint_of(&server).await;
    let addr = server.addr.to_string();
    let output = check(&addr, &["--token-source", &app.addr.to_string()]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("server {addr} ({addr})"), "{stdout}");
    assert_eq!(lines[1], format!("fingerprint {fingerprint}"), "{stdout}");
    assert_eq!(lines[2], "alpn quic-tun/2", "{stdout}");
    let rtt: f64 = lines[3]
        .strip_prefix("rtt ")
        .and_then(|rtt| rtt.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no RTT in: {stdout}"));
    assert!(rtt > 0.0, "{stdout}");
    // Asked about the default --listen-on, tcp:127.0.0.1:6500.
    assert!(
        lines[4].starts_with("token from Fixed for 127.0.0.1:6500 ("),
        "{stdout}"
    );
    assert_eq!(lines[5], "token accepted", "{stdout}");
    // Nothing is left open on the server: the test tunnel and the connection are closed.
    wait_until(Duration::from_secs(10), || async {
        server.registry.open_count() == 0 && server.connections.open_count() == 0
    })
    .await
    .expect("the check's tunnel and connection closed on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_with_the_servers_status_and_reason_said_once() {
    let server = start_server("");
    let output = check(&server.addr.to_string(), &["--token-source", "bogus"]).await;
    // The refusal is the error, on standard error only; the report says what was found.
    assert_eq!(
        text(&output.stderr),
        "quictun-client: error: token refused: 2 (bad token): token names no valid target: \
         invalid address \"bogus\": no \
         scheme (expected tcp:HOST:PORT, udp:HOST:PORT or unix:/path/to/socket)\n"
    );
    assert_fails_with(&output, &[]);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("alpn quic-tun/2"), "{stdout}");
    assert!(
        stdout.ends_with("token from Fixed for 127.0.0.1:6500 (5 bytes)\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("refused"), "{stdout}");
}

/// `fingerprint` as `openssl x509 -fingerprint -sha256` prints it after its `=`.
fn openssl_form(fingerprint: &Fingerprint) -> String {
    let pairs: Vec<String> = fingerprint.0.iter().map(|b| format!("{b:02X}")).collect();
    pairs.join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_fingerprint_is_taken_in_each_of_its_forms() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let fingerprint = fingerprint_of(&server).await;
    let prefixed = fingerprint.to_string();
    let bare = prefixed.strip_prefix("sha256:").unwrap().to_owned();
    let forms = [
        prefixed.clone(),
        prefixed.to_uppercase(),
        bare.clone(),
        bare.to_uppercase(),
        openssl_form(&fingerprint),
        openssl_form(&fingerprint).to_lowercase(),
        format!("sha256:{}", openssl_form(&fingerprint)),
    ];
    let token = app.addr.to_string();
    for form in forms {
        let args = ["--server-cert-fingerprint", &form, "--token-source", &token];
        let output = check(&server.addr.to_string(), &args).await;
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{form}: {}", text(&output.stderr));
        assert!(
            stdout.contains(&format!("fingerprint {prefixed}\n")),
            "{stdout}"
        );
        assert!(stdout.ends_with("token accepted\n"), "{form}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_or_udp_prefix_on_the_server_endpoint_is_ignored_but_keys_known_hosts() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let fingerprint = fingerprint_of(&server).await;
    let state = TempDir::new("prefix");
    let addr = server.addr.to_string();
    let state_dir = state.join("state");
    for given in [format!("tcp:{addr}"), format!("UDP:{addr}")] {
        let output = Launch::check(&given)
            .args(["--token-source", &app.addr.to_string()])
            .arg("--state-dir")
            .arg(&state_dir)
            .output()
            .await;
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{given}: {}", text(&output.stderr));
        assert!(
            stdout.starts_with(&format!("server {addr} ({addr})\n")),
            "{stdout}"
        );
        assert!(stdout.ends_with("token accepted\n"), "{stdout}");
    }
    // Known hosts are keyed by --server-endpoint as given (SPEC §7).
    let known = std::fs::read_to_string(state_dir.join("known_hosts")).unwrap();
    assert_eq!(
        known,
        format!("tcp:{addr} {fingerprint}\nUDP:{addr} {fingerprint}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_test_token_is_sent_instead_of_the_sources() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let server = start_server("");
    let args = ["--token-source", "bogus", "--check-token"];
    let token = app.addr.to_string();
    let output = check(
        &server.addr.to_string(),
        &[&args[..], &[token.as_str()]].concat(),
    )
    .await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("token from --check-token"), "{stdout}");
    assert!(stdout.ends_with("token accepted\n"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_fingerprint_names_both_fingerprints_and_what_to_do() {
    let server = start_server("");
    let real = fingerprint_of(&server).await;
    let pinned = format!("sha256:{}", "ab".repeat(32));
    let output = check(
        &server.addr.to_string(),
        &["--server-cert-fingerprint", &pinned, "--token-source", "x"],
    )
    .await;
    assert_eq!(
        text(&output.stderr),
        format!(
            "quictun-client: error: cannot connect to server {}: its certificate is refused: \
             seen {real}, expected {pinned} (--server-cert-fingerprint); if the server's \
             certificate was replaced on purpose, check that the server logged \
             fingerprint={real} at start (\"server certificate\"), then update \
             --server-cert-fingerprint to it\n",
            server.addr
        )
    );
    assert_fails_with(&output, &[]);
    assert_eq!(text(&output.stdout), "", "nothing to report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_client_logs_a_pin_mismatch_with_both_fingerprints_and_what_to_do() {
    let server = start_server("");
    let real = fingerprint_of(&server).await;
    let pinned = format!("sha256:{}", "ab".repeat(32));
    let mut client = Launch::client()
        .args(["--server-endpoint", &server.addr.to_string()])
        .args(["--server-cert-fingerprint", &pinned])
        .args(["--token-source", "tcp:127.0.0.1:9"])
        .start()
        .await;
    // An application makes the client connect.
    let _app = connect_tcp(&client.app_addr()).await;
    let line = client
        .line("its certificate is refused", Duration::from_secs(20))
        .await;
    let expected = format!(
        "cannot connect to server {}: its certificate is refused: seen {real}, expected \
         {pinned} (--server-cert-fingerprint); if the server's certificate was replaced on \
         purpose, check that the server logged fingerprint={real} at start (\"server \
         certificate\"), then update --server-cert-fingerprint to it",
        server.addr
    );
    assert!(line.contains(&expected), "{line}");
    assert!(!line.contains("cryptographic handshake"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_fails_in_one_line_within_the_handshake_time_out() {
    // A UDP port that never answers: bound for the whole test (so no one else takes it) and
    // never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let output = check(
        &server,
        &["--handshake-timeout", "300ms", "--token-source", "x"],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_fails_with(
        &output,
        &[&format!("no handshake with server {server} within 300ms")],
    );
    assert_eq!(text(&output.stdout), "");
}
