//! SPEC §7's trust and state-file defaults, attacked: an impostor at first use, links planted
//! in the state directory and a state directory others may write.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::*;
use quictun::plugins::TokenParser;
use quictun::tls::{Identity, Verification};
use quictun::wire::Status;
use quictun::wire::handshake::{Protocol, read_answer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

// ---- Trust on first use ------------------------------------------------------------------

/// A server that shows `chain` but signs the handshake with `key`. With another key than the
/// certificate's, it is an impostor that copied a certificate (which is public) or made one
/// up, and cannot prove it holds the certificate's key.
fn signing_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let provider = quictun::tls::provider();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(chain, signer);
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    crypto.alpn_protocols = vec![quictun::wire::ALPN_V2.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), Some(config)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let _ = incoming.await;
            });
        }
    });
    (addr, task)
}

/// A QUIC handshake with `server` under `verification`; the error text when it fails.
async fn handshake(server: SocketAddr, verification: &Verification) -> Result<(), String> {
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(verification, None).map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(crypto), server, "localhost")
        .map_err(|e| e.to_string())?;
    let connection = within(10, connecting).await.map_err(|e| e.to_string())?;
    connection.close(0u32.into(), b"");
    Ok(())
}

fn copy(identity: &Identity) -> Identity {
    Identity {
        chain: identity.chain.clone(),
        key: identity.key.clone_key(),
    }
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_records_a_certificate_only_after_its_key_signed_the_handshake() {
    let dir = TempDir::new("tofu-impostor");
    let known_hosts = dir.join("state").join("known_hosts");
    let genuine = Identity::self_signed(&["localhost"]).unwrap();
    let stranger = Identity::self_signed(&["localhost"]).unwrap();
    // Known hosts are keyed by the endpoint as given: every server below answers for it.
    let tofu = Verification::FirstUse {
        known_hosts: known_hosts.clone(),
        endpoint: "tunnel.example:7500".into(),
    };

    // The genuine certificate, signed for with another key.
    let (copied, _copied_task) = signing_server(genuine.chain.clone(), stranger.key.clone_key());
    let error = handshake(copied, &tofu).await.unwrap_err();
    assert!(error.contains("BadSignature"), "{error}");
    assert_eq!(
        read_or_empty(&known_hosts),
        "",
        "recorded before the signature"
    );

    // A certificate of its own that it cannot sign for either.
    let (made_up, _made_up_task) = signing_server(stranger.chain.clone(), genuine.key.clone_key());
    let error = handshake(made_up, &tofu).await.unwrap_err();
    assert!(error.contains("BadSignature"), "{error}");
    assert_eq!(
        read_or_empty(&known_hosts),
        "",
        "recorded before the signature"
    );

    // The genuine server is then the first use: accepted and recorded.
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| {
        config.identity = copy(&genuine);
    });
    handshake(server.addr, &tofu)
        .await
        .expect("the genuine server");
    let recorded = format!("tunnel.example:7500 {}\n", genuine.fingerprint().unwrap());
    assert_eq!(read_or_empty(&known_hosts), recorded);
    handshake(server.addr, &tofu)
        .await
        .expect("the genuine server again");

    // Once recorded, a made-up certificate is refused as a change, before its signature.
    let error = handshake(made_up, &tofu).await.unwrap_err();
    assert!(
        error.contains("the certificate of tunnel.example:7500 changed"),
        "{error}"
    );
    assert!(
        error.contains(&genuine.fingerprint().unwrap().to_string())
            && error.contains(&stranger.fingerprint().unwrap().to_string()),
        "{error}"
    );
    assert!(error.contains("delete line 1"), "{error}");
    assert!(
        error.contains(&known_hosts.display().to_string()),
        "{error}"
    );
    let error = handshake(copied, &tofu).await.unwrap_err();
    assert!(error.contains("BadSignature"), "{error}");
    assert_eq!(read_or_empty(&known_hosts), recorded);
}

// ---- State files -------------------------------------------------------------------------

/// A file a planted link points at, readable by everyone, as an attacker would choose.
fn victim(dir: &TempDir) -> std::path::PathBuf {
    let victim = dir.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    victim
}

/// A state directory owned by the test, mode 0700.
fn private_dir(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let state = dir.join(name);
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    state
}

#[test]
fn links_planted_at_the_names_of_new_state_files_are_not_written_through() {
    let dir = TempDir::new("state-partial-links");
    let victim = victim(&dir);
    let state = private_dir(&dir, "state");
    // Every name a state file has been written under on its way into place.
    let pid = std::process::id();
    for name in [
        format!("server-identity.partial-{pid}"),
        format!("reset-key.partial-{pid}"),
        format!("known_hosts.partial-{pid}"),
    ] {
        std::os::unix::fs::symlink(&victim, state.join(name)).unwrap();
    }
    let identity = Identity::load_or_create(&state).unwrap();
    let key = quictun::tls::load_or_create_reset_key(&state).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    for name in ["server-identity.pem", "reset-key"] {
        let meta = std::fs::symlink_metadata(state.join(name)).unwrap();
        assert!(meta.is_file(), "{name} is not a regular file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    // What was written is what is read back, and nothing was left on the way.
    assert_eq!(
        Identity::load_or_create(&state).unwrap().fingerprint(),
        identity.fingerprint()
    );
    assert_eq!(quictun::tls::load_or_create_reset_key(&state).unwrap(), key);
    let mut names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.contains(".partial-"))
        .collect();
    names.sort();
    assert_eq!(names, ["reset-key", "server-identity.pem"]);
}

#[test]
fn a_link_at_a_state_files_name_is_refused_not_followed() {
    let dir = TempDir::new("state-links");
    let victim = victim(&dir);
    let state = private_dir(&dir, "state");
    let identity_file = state.join("server-identity.pem");
    std::os::unix::fs::symlink(&victim, &identity_file).unwrap();
    let error = Identity::load_or_create(&state).unwrap_err().to_string();
    assert!(error.contains("symbolic link"), "{error}");
    assert!(
        error.contains(&identity_file.display().to_string()),
        "{error}"
    );
    // A link to where nothing is yet: nothing is created there.
    let absent = dir.join("absent");
    let reset_file = state.join("reset-key");
    std::os::unix::fs::symlink(&absent, &reset_file).unwrap();
    let error = quictun::tls::load_or_create_reset_key(&state)
        .unwrap_err()
        .to_string();
    assert!(error.contains("symbolic link"), "{error}");
    assert!(error.contains(&reset_file.display().to_string()), "{error}");
    assert!(!absent.exists());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_at_known_hosts_is_not_followed() {
    let dir = TempDir::new("known-hosts-link");
    let victim = victim(&dir);
    let state = private_dir(&dir, "state");
    let known_hosts = state.join("known_hosts");
    std::os::unix::fs::symlink(&victim, &known_hosts).unwrap();
    let server = start_server("");
    let tofu = Verification::FirstUse {
        known_hosts: known_hosts.clone(),
        endpoint: server.addr.to_string(),
    };
    let error = handshake(server.addr, &tofu).await.unwrap_err();
    assert!(error.contains("symbolic link"), "{error}");
    assert!(
        error.contains(&known_hosts.display().to_string()),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert!(
        std::fs::symlink_metadata(&known_hosts)
            .unwrap()
            .is_symlink()
    );
}

// ---- The binaries ------------------------------------------------------------------------

/// Asserts a refused start: a non-zero exit and one line on standard error with `expected`.
async fn assert_refused(binary: Launch, expected: &[&str]) {
    let output = binary.output().await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{:?}: {stderr}", output.status);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    for part in expected {
        assert!(stderr.contains(part), "{part:?} not in: {stderr}");
    }
}

#[tokio::test]
async fn a_state_directory_others_may_write_is_refused_at_start() {
    let dir = TempDir::new("state-modes");
    for mode in [0o770, 0o777, 0o702] {
        let state = dir.join(&format!("state-{mode:o}"));
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
        let shown = state.display().to_string();
        let fix = format!("chmod go-w {shown}");
        let server = Launch::server().arg("--state-dir").arg(&state);
        assert_refused(server, &[&shown, &fix]).await;
        let client = Launch::client()
            .args(["--server-endpoint", "127.0.0.1:9"])
            .arg("--state-dir")
            .arg(&state);
        assert_refused(client, &[&shown, &fix]).await;
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "{shown}");
    }
}

#[tokio::test]
async fn a_state_directory_another_user_owns_is_refused_at_start() {
    // Only root can give a directory away; elsewhere there is nothing to test.
    if running_as_root() {
        let dir = TempDir::new("state-owner");
        let state = private_dir(&dir, "theirs");
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let shown = state.display().to_string();
        let server = Launch::server().arg("--state-dir").arg(&state);
        assert_refused(server, &[&shown, "uid 65534"]).await;
    }
}

/// Whether the tests run as root (asked of `id -u`, to keep the tests free of FFI).
fn running_as_root() -> bool {
    let output = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

#[tokio::test]
async fn the_server_refuses_to_start_on_a_planted_link_and_leaves_its_target_alone() {
    let dir = TempDir::new("state-link-binary");
    let victim = victim(&dir);
    let state = private_dir(&dir, "state");
    let identity_file = state.join("server-identity.pem");
    std::os::unix::fs::symlink(&victim, &identity_file).unwrap();
    let shown = identity_file.display().to_string();
    let server = Launch::server().arg("--state-dir").arg(&state);
    assert_refused(server, &[&shown, "symbolic link"]).await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}

// ---- Client authentication -----------------------------------------------------------------

/// Opens a tunnel to `target` as a client without a certificate: the answer's status, or why
/// there was none.
async fn tunnel_without_a_certificate(server: SocketAddr, target: &str) -> Result<Status, String> {
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(&Verification::Insecure, None).unwrap();
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(crypto), server, "localhost")
        .map_err(|e| e.to_string())?;
    let connection = within(10, connecting).await.map_err(|e| e.to_string())?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&token_frame(target))
        .await
        .map_err(|e| e.to_string())?;
    let answer = within(10, read_answer(&mut recv, Protocol::V2))
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_a_ca_file_requires_client_certificates_unless_told_otherwise() {
    let dir = TempDir::new("ca-file");
    let ca = Ca::new(&dir, "clients");
    let ca_file = ca.ca_file(&dir);
    let app = app_server_tcp(Behaviour::Echo).await;
    let target = app.addr.to_string();

    // --ca-file alone: as if --verify-remote-endpoint were given.
    let required = Launch::server()
        .arg("--ca-file")
        .arg(&ca_file)
        .start()
        .await;
    let refused = tunnel_without_a_certificate(required.quic_addr(), &target).await;
    let error = refused.expect_err("a client without a certificate got a tunnel");
    assert!(error.contains("certificate"), "{error}");

    // An explicit --verify-remote-endpoint=false keeps them optional, and says so.
    let optional = Launch::server()
        .arg("--ca-file")
        .arg(&ca_file)
        .arg("--verify-remote-endpoint=false")
        .start()
        .await;
    assert_eq!(
        tunnel_without_a_certificate(optional.quic_addr(), &target).await,
        Ok(Status::Ok)
    );
    assert!(
        optional
            .log()
            .contains("clients without a certificate signed by --ca-file are accepted too"),
        "{}",
        optional.log()
    );
}
