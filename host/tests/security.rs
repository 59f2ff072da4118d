//! SPEC §7 on real endpoints: server identity, every client verification mode, mutual TLS,
//! the target allow-list and the bounds on what a peer controls.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use quictun::plugins::TokenParser;
use quictun::server::policy::Policy;
use quictun::server::{Server, ServerConfig};
use quictun::tls::{ClientAuth, Verification};
use quictun::tls::{Fingerprint, Identity, load_roots};
use quictun::wire::Status;

fn server(
    identity: Identity,
    client_auth: ClientAuth,
    policy: Policy,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        parser,
        identity,
        transport: transport(),
        handshake_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        max_connections: 100,
        limits: Default::default(),
        discriminators: Vec::new(),
        policy,
        client_auth,
        keys: Default::default(),
        server_id: None,
    })
    .unwrap();
    (server.local_addr().unwrap(), tokio::spawn(server.run()))
}

/// Connects with `verification` (and a client certificate) and carries a few bytes through an
/// echo target; the error text when anything fails.
async fn tunnel_works(
    server: SocketAddr,
    verification: &Verification,
    identity: Option<Identity>,
) -> Result<(), String> {
    let app = app_server_tcp(Behaviour::Echo).await;
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(verification, identity).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(crypto), server, "localhost")
        .map_err(|e| e.to_string())?;
    let connection = within(10, connecting).await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    let mut frame = token_frame(&app.addr.to_string());
    frame.extend_from_slice(b"hello");
    send.write_all(&frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = within(
        10,
        quictun::wire::handshake::read_answer(&mut recv, quictun::wire::handshake::Protocol::V2),
    )
    .await
    .map_err(|e| e.to_string())?;
    if answer.status != Status::Ok {
        return Err(answer.reason);
    }
    let echoed = within(10, recv.read_to_end(64))
        .await
        .map_err(|e| e.to_string())?;
    (echoed == b"hello")
        .then_some(())
        .ok_or_else(|| "wrong bytes".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verification_matrix() {
    let dir = TempDir::new("verify");
    let ca = Ca::new(&dir, "right");
    let wrong = Ca::new(&dir, "wrong");
    let identity = ca.leaf(&dir, "server", &["localhost", "127.0.0.1"]);
    let fingerprint = identity.fingerprint().unwrap();
    let (addr, _task) = server(identity, ClientAuth::Off, Policy::any());

    let right_ca = Verification::Pki(load_roots(&ca.ca_file(&dir)).unwrap());
    tunnel_works(addr, &right_ca, None).await.expect("right CA");
    let wrong_ca = Verification::Pki(load_roots(&wrong.ca_file(&dir)).unwrap());
    let error = tunnel_works(addr, &wrong_ca, None).await.unwrap_err();
    assert!(
        error.contains("UnknownIssuer") || error.to_lowercase().contains("issuer"),
        "{error}"
    );

    tunnel_works(addr, &Verification::Pinned(fingerprint), None)
        .await
        .expect("pinned");
    let error = tunnel_works(addr, &Verification::Pinned(Fingerprint([7; 32])), None)
        .await
        .unwrap_err();
    assert!(
        error.contains("its certificate is refused: seen"),
        "{error}"
    );

    tunnel_works(addr, &Verification::Insecure, None)
        .await
        .expect("insecure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_records_then_refuses_a_changed_certificate() {
    let dir = TempDir::new("tofu");
    let state = dir.join("state");
    let known_hosts = state.join("known_hosts");
    // A server keeps its generated certificate across restarts.
    let first = Identity::load_or_create(&state).unwrap();
    let again = Identity::load_or_create(&state).unwrap();
    assert_eq!(first.fingerprint(), again.fingerprint());
    let (addr, task) = server(first, ClientAuth::Off, Policy::any());
    let tofu = Verification::FirstUse {
        known_hosts: known_hosts.clone(),
        endpoint: addr.to_string(),
    };
    tunnel_works(addr, &tofu, None).await.expect("first use");
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(
        recorded,
        format!("{addr} {}\n", again.fingerprint().unwrap())
    );
    tunnel_works(addr, &tofu, None).await.expect("second use");
    task.abort();

    // Another certificate behind the same endpoint name.
    let (other_addr, _task) = server(
        Identity::self_signed(&["localhost"]).unwrap(),
        ClientAuth::Off,
        Policy::any(),
    );
    let moved = Verification::FirstUse {
        known_hosts: known_hosts.clone(),
        endpoint: addr.to_string(),
    };
    let error = tunnel_works(other_addr, &moved, None).await.unwrap_err();
    assert!(
        error.contains(&format!("the certificate of {addr} changed")),
        "{error}"
    );
    assert!(error.contains("delete line 1"), "{error}");
    assert!(
        error.contains(&known_hosts.display().to_string()),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new(&dir, "clients");
    let other = Ca::new(&dir, "other");
    let roots = load_roots(&ca.ca_file(&dir)).unwrap();
    // Required (server --ca-file); then optional (with --verify-remote-endpoint=false): a
    // client without a certificate gets in, one showing a certificate of another CA never.
    for (case, auth, without_one) in [
        ("required", ClientAuth::Required(roots.clone()), false),
        ("optional", ClientAuth::Optional(roots), true),
    ] {
        let server_identity = Identity::self_signed(&["localhost"]).unwrap();
        let (addr, _task) = server(server_identity, auth, Policy::any());
        let anonymous = tunnel_works(addr, &Verification::Insecure, None).await;
        assert_eq!(
            anonymous.is_ok(),
            without_one,
            "{case}: no client certificate"
        );
        let stranger = other.leaf(&dir, &format!("stranger-{case}"), &["client"]);
        assert!(
            tunnel_works(addr, &Verification::Insecure, Some(stranger))
                .await
                .is_err(),
            "{case}: wrong CA"
        );
        let member = ca.leaf(&dir, &format!("member-{case}"), &["client"]);
        tunnel_works(addr, &Verification::Insecure, Some(member))
            .await
            .unwrap_or_else(|e| panic!("{case}: right CA: {e:?}"));
    }
}

/// Asks the server for `target` and returns the answer.
async fn answer_for(server: SocketAddr, target: &str) -> quictun::wire::Answer {
    let connection = raw_connection(server).await;
    raw_answer(&connection, &token_frame(target)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_decides_for_tcp_and_unix_targets() {
    let dir = TempDir::new("allow");
    let allowed_dir = dir.join("allowed");
    std::fs::create_dir_all(&allowed_dir).unwrap();
    let app = app_server_tcp(Behaviour::Echo).await;
    let quictun::wire::addr::Address::Tcp(app_hp) = &app.addr else {
        unreachable!()
    };
    let unix_allowed = tokio::net::UnixListener::bind(allowed_dir.join("ok.sock")).unwrap();
    let _unix_denied = tokio::net::UnixListener::bind(dir.join("no.sock")).unwrap();
    let rules = [
        format!("127.0.0.1/32:{}", app_hp.port),
        format!("localhost:{}", app_hp.port + 1),
        format!("unix:{}/", allowed_dir.display()),
    ];
    let (addr, _task) = server(
        Identity::self_signed(&["localhost"]).unwrap(),
        ClientAuth::Off,
        Policy::new(&rules).unwrap(),
    );

    assert_eq!(
        answer_for(addr, &app.addr.to_string()).await.status,
        Status::Ok
    );
    let denied = answer_for(addr, &format!("tcp:127.0.0.1:{}", app_hp.port + 2)).await;
    assert_eq!(denied.status, Status::NotAllowed);
    assert!(
        denied.reason.contains("is not allowed by --allow-target"),
        "{}",
        denied.reason
    );
    // A name that resolves to an allowed address by IP but is not itself listed: judged on
    // the address dialed, which the CIDR rule allows.
    assert_eq!(
        answer_for(addr, &format!("tcp:localhost:{}", app_hp.port))
            .await
            .status,
        Status::Ok
    );
    // A name whose address is denied: the refusal names the target as asked and never the
    // addresses it resolved to (that would make the server a DNS oracle).
    let target = format!("tcp:localhost:{}", app_hp.port + 3);
    let named = answer_for(addr, &target).await;
    assert_eq!(named.status, Status::NotAllowed);
    assert!(named.reason.contains(&target), "{}", named.reason);
    assert!(
        !named.reason.contains("127.0.0.1") && !named.reason.contains("::1"),
        "{}",
        named.reason
    );

    let ok = format!("unix:{}", allowed_dir.join("ok.sock").display());
    assert_eq!(answer_for(addr, &ok).await.status, Status::Ok);
    drop(unix_allowed);
    let no = format!("unix:{}", dir.join("no.sock").display());
    assert_eq!(answer_for(addr, &no).await.status, Status::NotAllowed);
    let escape = format!("unix:{}/../no.sock", allowed_dir.display());
    assert_eq!(answer_for(addr, &escape).await.status, Status::NotAllowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_gets_bad_token_at_the_handshake_time_out() {
    let (addr, _task) = server(
        Identity::self_signed(&["localhost"]).unwrap(),
        ClientAuth::Off,
        Policy::any(),
    );
    let connection = raw_connection(addr).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // The stream exists for the server only once a frame arrives: send one byte of header.
    send.write_all(&[0]).await.unwrap();
    let started = std::time::Instant::now();
    let answer = within(
        10,
        quictun::wire::handshake::read_answer(&mut recv, quictun::wire::handshake::Protocol::V2),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, Status::BadToken);
    assert!(
        answer.reason.starts_with("no token within"),
        "{}",
        answer.reason
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_token_is_refused_from_its_header() {
    let (addr, _task) = server(
        Identity::self_signed(&["localhost"]).unwrap(),
        ClientAuth::Off,
        Policy::any(),
    );
    let connection = raw_connection(addr).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // A length field can say at most 65535: the rest of a 1 MiB "token" is never read.
    let mut huge = vec![0xff, 0xff];
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    let writer = tokio::spawn(async move {
        let _ = send.write_all(&huge).await;
    });
    let answer = within(
        10,
        quictun::wire::handshake::read_answer(&mut recv, quictun::wire::handshake::Protocol::V2),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, Status::BadToken);
    assert!(answer.reason.contains("65535"), "{}", answer.reason);
    within(10, writer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hit_the_limit_and_the_server_stays_responsive() {
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        parser,
        identity: Identity::self_signed(&["localhost"]).unwrap(),
        transport: transport(),
        handshake_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        max_connections: 3,
        limits: Default::default(),
        discriminators: Vec::new(),
        policy: Policy::any(),
        client_auth: ClientAuth::Off,
        keys: Default::default(),
        server_id: None,
    })
    .unwrap();
    let (addr, connections) = (server.local_addr().unwrap(), server.connections());
    let _task = tokio::spawn(server.run());
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(raw_connection(addr).await);
    }
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(&Verification::Insecure, None).unwrap();
    let fourth = endpoint
        .connect_with(quinn::ClientConfig::new(crypto), addr, "localhost")
        .unwrap();
    assert!(
        within(10, fourth).await.is_err(),
        "the fourth connection must be refused"
    );
    let failures = connections.handshake_failures();
    assert_eq!(failures, vec![("too_many_connections", 1)]);
    // The connections being served still carry tunnels.
    let app = app_server_tcp(Behaviour::Echo).await;
    let answer = raw_answer(&idle[0], &token_frame(&app.addr.to_string()))
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_with_rsa_ed25519_and_ecdsa_keys_in_every_pem_form() {
    let keys = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys"));
    for (cert, key) in [
        ("rsa.pem", "rsa.key"),
        ("rsa.pem", "rsa-pkcs1.key"),
        ("ed25519.pem", "ed25519.key"),
        ("ec-sec1.pem", "ec-sec1.key"),
    ] {
        let identity = Identity::from_pem_files(&keys.join(cert), &keys.join(key)).unwrap();
        let fingerprint = identity.fingerprint().unwrap();
        let (addr, _task) = server(identity, ClientAuth::Off, Policy::any());
        let pinned = Verification::Pinned(fingerprint);
        tunnel_works(addr, &pinned, None)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}
