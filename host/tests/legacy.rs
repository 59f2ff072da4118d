//! Mixed deployments with the original Go implementation (ALPN `quic-tun`), both ways. Its
//! peers are written here and behave like the original's, quirks included: the client writes
//! one 512-byte NUL-padded token block and nothing else before the one-byte answer; the
//! server shows the original's kind of default certificate (1024-bit RSA), keeps only the
//! last chunk of the block it reads, repeats a refusal byte and never half-closes.

mod common;

use std::net::SocketAddr;

use common::*;
use quictun::plugins::TokenParser;
use quictun::server::policy::Policy;
use quictun::tls::Verification;
use quictun::wire::{ALPN_LEGACY, encode_legacy_token};

/// A connection as the original's client makes it: ALPN `quic-tun` only.
async fn legacy_connection(server: SocketAddr) -> quinn::Connection {
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
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
    // Made before connecting: made between the two transfers, it left the connection idle
    // for seconds, past its idle time-out on a busy machine.
    let data = std::sync::Arc::new(pattern(64 * 1024 * 1024, 5));
    let expected = sha256(&data);
    let server = start_server("");
    let connection = legacy_connection(server.addr).await;
    for app in [
        app_server_tcp(Behaviour::Echo).await,
        app_server_unix(&dir, Behaviour::Echo).await,
    ] {
        let (status, mut send, mut recv) = ask(&connection, &app.addr.to_string(), &[]).await;
        assert_eq!(status, 0x01);
        let data = data.clone();
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
    let closed = ClosedPort::new();
    let server = start_server("");
    let connection = legacy_connection(server.addr).await;
    // 0x02: the token does not parse.
    let (status, _send, mut recv) = ask(&connection, "not-an-address", &[]).await;
    assert_eq!(status, 0x02);
    // One byte, then the stream is finished.
    assert_eq!(within(10, recv.read_to_end(64)).await.unwrap(), b"");
    // 0x03: the target cannot be reached.
    let (status, _send, mut recv) = ask(&connection, &closed.target(), &[]).await;
    assert_eq!(status, 0x03);
    assert_eq!(within(10, recv.read_to_end(64)).await.unwrap(), b"");
    // The original's tcp4: spelling is understood.
    let app = app_server_tcp(Behaviour::Echo).await;
    let tcp4 = app.addr.to_string().replacen("tcp:", "tcp4:", 1);
    assert_eq!(ask(&connection, &tcp4, &[]).await.0, 0x01);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_the_allow_list_denies_answers_0x03() {
    let app = app_server_tcp(Behaviour::Echo).await;
    let parser = TokenParser::load("Cleartext", "", Some(plugin_dir())).unwrap();
    let server = start_server_custom(parser, transport(), |config| {
        config.policy = Policy::new(&["10.0.0.0/8"]).unwrap();
    });
    let connection = legacy_connection(server.addr).await;
    let (status, _send, mut recv) = ask(&connection, &app.addr.to_string(), &[]).await;
    assert_eq!(status, 0x03);
    assert_eq!(within(10, recv.read_to_end(64)).await.unwrap(), b"");
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

/// What the original-style server shows in its handshake.
enum OriginalCert {
    /// Its default: a 1024-bit RSA key, an empty subject, valid only on 0001-01-01.
    Default,
    /// The default certificate, but the handshake signed with another 1024-bit key: a peer
    /// that shows a certificate it does not hold the key of.
    DefaultWithoutItsKey,
    /// A certificate given to it with `--cert-file/--key-file`.
    Given(quictun::tls::Identity),
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// The original's default certificate (a fixture made to look like it).
fn original_default_cert() -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(fixture("rsa1024-original.pem")).unwrap()
}

/// Signs TLS 1.3 handshakes with a 1024-bit RSA key (RSA-PSS, SHA-256), which ring cannot.
mod rsa1024 {
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{RandomizedSigner, SignatureEncoding};
    use rustls::sign::{Signer, SigningKey};
    use rustls::{SignatureAlgorithm, SignatureScheme};

    #[derive(Debug, Clone)]
    pub struct Key(RsaPrivateKey);

    impl Key {
        pub fn from_pem_file(path: &std::path::Path) -> Key {
            Key(RsaPrivateKey::read_pkcs8_pem_file(path).unwrap())
        }
    }

    impl SigningKey for Key {
        fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
            offered
                .contains(&SignatureScheme::RSA_PSS_SHA256)
                .then(|| Box::new(self.clone()) as Box<dyn Signer>)
        }

        fn algorithm(&self) -> SignatureAlgorithm {
            SignatureAlgorithm::RSA
        }
    }

    impl Signer for Key {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
            let key = rsa::pss::BlindedSigningKey::<sha2::Sha256>::new(self.0.clone());
            let mut rng = rsa::rand_core::OsRng;
            Ok(key.sign_with_rng(&mut rng, message).to_vec())
        }

        fn scheme(&self) -> SignatureScheme {
            SignatureScheme::RSA_PSS_SHA256
        }
    }
}

fn original_crypto(cert: OriginalCert) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(quictun::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth();
    let rsa_key = |name| {
        let key = rsa1024::Key::from_pem_file(&fixture(name));
        let certified = rustls::sign::CertifiedKey::new(
            vec![original_default_cert()],
            std::sync::Arc::new(key),
        );
        std::sync::Arc::new(rustls::sign::SingleCertAndKey::from(certified))
    };
    match cert {
        OriginalCert::Default => builder.with_cert_resolver(rsa_key("rsa1024-original.key")),
        OriginalCert::DefaultWithoutItsKey => {
            builder.with_cert_resolver(rsa_key("rsa1024-other.key"))
        }
        OriginalCert::Given(identity) => builder
            .with_single_cert(identity.chain, identity.key)
            .unwrap(),
    }
}

/// A server that speaks only the original protocol, quirks included: it keeps only the last
/// chunk it reads of the token block and strips every NUL; it answers 0x01 and relays without
/// half-close, or repeats its refusal byte (0x02 for a token it cannot parse, 0x03 for a
/// target it cannot reach) until the client stops reading.
async fn original_server(cert: OriginalCert) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut crypto = original_crypto(cert);
    crypto.alpn_protocols = vec![ALPN_LEGACY.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
    let config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(quic));
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), Some(config)).unwrap();
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
    let token = String::from_utf8_lossy(&token).into_owned();
    let tcp = ["tcp:", "tcp4:", "tcp6:"]
        .iter()
        .find_map(|scheme| token.strip_prefix(scheme));
    let refusal = match (tcp, token.strip_prefix("unix:")) {
        (Some(host_port), _) => match tokio::net::TcpStream::connect(host_port).await {
            Ok(app) => return relay_without_half_close(app, send, recv).await,
            Err(_) => 0x03,
        },
        (None, Some(path)) => match tokio::net::UnixStream::connect(path).await {
            Ok(app) => return relay_without_half_close(app, send, recv).await,
            Err(_) => 0x03,
        },
        (None, None) => 0x02,
    };
    // Its refusals: the byte again and again until the client stops reading.
    while send.write_all(&[refusal]).await.is_ok() {
        tokio::task::yield_now().await;
    }
}

/// Answers 0x01 and relays; the first end of stream closes both directions.
async fn relay_without_half_close(
    app: impl tokio::io::AsyncRead + tokio::io::AsyncWrite,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    if send.write_all(&[0x01]).await.is_err() {
        return;
    }
    let (mut app_read, mut app_write) = tokio::io::split(app);
    tokio::select! {
        _ = tokio::io::copy(&mut recv, &mut app_write) => {}
        _ = tokio::io::copy(&mut app_read, &mut send) => {}
    }
    let _ = send.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_moves_64_mib_byte_exact_through_an_original_server_to_tcp_and_unix_targets() {
    let dir = TempDir::new("legacy-client");
    // The original's default certificate, which only --insecure-skip-verify accepts as is.
    let (server, _task) = original_server(OriginalCert::Default).await;
    for app in [
        app_server_tcp(Behaviour::Echo).await,
        app_server_unix(&dir, Behaviour::Echo).await,
    ] {
        let client = start_client(local_tcp(), server, &app.addr.to_string()).await;
        let data = pattern(64 * 1024 * 1024, 9);
        let echoed = within(120, echo_without_half_close(&client.addr, &data)).await;
        assert_eq!(echoed.len(), data.len());
        assert_eq!(sha256(&echoed), sha256(&data));
        assert_eq!(client.registry.opened_total(), 1);
    }
}

/// Connects the way our client does with `verification`, offering both protocols.
async fn handshake(
    server: SocketAddr,
    verification: &Verification,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(verification, None).unwrap();
    let connecting = endpoint
        .connect_with(quinn::ClientConfig::new(crypto), server, "127.0.0.1")
        .unwrap();
    within(10, connecting).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_original_default_certificate_is_accepted_only_from_the_holder_of_its_key() {
    let pinned = Verification::Pinned(quictun::tls::Fingerprint::of(&original_default_cert()));
    // Pinned: the 1024-bit key's RSA-PSS signature is checked, and the tunnel works.
    let (server, _task) = original_server(OriginalCert::Default).await;
    let app = app_server_tcp(Behaviour::Echo).await;
    let client = start_client_custom(local_tcp(), server, &app.addr.to_string(), |config| {
        config.verification = pinned.clone();
    })
    .await;
    assert_eq!(
        within(30, echo_without_half_close(&client.addr, b"pinned")).await,
        b"pinned"
    );
    let connection = handshake(server, &pinned).await.unwrap();
    assert_eq!(
        quictun::wire::handshake::negotiated_alpn(&connection).as_deref(),
        Some(ALPN_LEGACY)
    );

    // The same certificate from a server without its key: the signature does not verify.
    let (impostor, _task) = original_server(OriginalCert::DefaultWithoutItsKey).await;
    let error = handshake(impostor, &pinned).await.unwrap_err().to_string();
    assert!(error.contains("BadSignature"), "{error}");
    // No check at all still connects to it: that is what --insecure-skip-verify means.
    handshake(impostor, &Verification::Insecure).await.unwrap();

    // Another pin: refused, naming both fingerprints.
    let other = quictun::tls::Fingerprint::of(
        &quictun::tls::Identity::self_signed(&["localhost"])
            .unwrap()
            .chain[0],
    );
    let error = handshake(server, &Verification::Pinned(other))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("its certificate is refused: seen"),
        "{error}"
    );
    assert!(error.contains(&other.to_string()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_server_with_a_ca_signed_certificate_is_verified_by_the_ca() {
    let dir = TempDir::new("legacy-ca");
    let ca = Ca::new(&dir, "legacy");
    let leaf = ca.leaf(&dir, "original-server", &["localhost", "127.0.0.1"]);
    let (server, _task) = original_server(OriginalCert::Given(leaf)).await;
    let roots = quictun::tls::load_roots(&ca.ca_file(&dir)).unwrap();
    let app = app_server_tcp(Behaviour::Echo).await;
    let client = start_client_custom(local_tcp(), server, &app.addr.to_string(), |config| {
        config.verification = Verification::Pki(roots.clone());
    })
    .await;
    assert_eq!(
        within(30, echo_without_half_close(&client.addr, b"by the CA")).await,
        b"by the CA"
    );
    // Another CA's roots do not vouch for it.
    let other = Ca::new(&dir, "other");
    let other_roots = quictun::tls::load_roots(&other.ca_file(&dir)).unwrap();
    let error = handshake(server, &Verification::Pki(other_roots))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
}

/// The original's server closes both directions at the first EOF, so applications behind it
/// read their whole answer before they close.
async fn echo_without_half_close(addr: &quictun::wire::addr::Address, data: &[u8]) -> Vec<u8> {
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
async fn refusals_from_an_original_server_close_the_application_connection() {
    let closed = ClosedPort::new();
    let (server, _task) = original_server(OriginalCert::Default).await;
    // 0x03 (nothing listens there), then 0x02 (a token it cannot parse).
    for token in [closed.target(), "not-an-address".to_owned()] {
        let client = start_client(local_tcp(), server, &token).await;
        let mut app = connect_tcp(&client.addr).await;
        let mut buf = Vec::new();
        use tokio::io::AsyncReadExt;
        let _ = within(30, app.read_to_end(&mut buf)).await;
        assert!(buf.is_empty(), "{token}: {buf:?}");
        assert_eq!(client.registry.opened_total(), 1, "{token}");
    }
    // Refused tunnels do not pile up: the client stopped the repeated byte and moved on.
    let app = app_server_tcp(Behaviour::Echo).await;
    let next = start_client(local_tcp(), server, &app.addr.to_string()).await;
    assert_eq!(
        within(30, echo_without_half_close(&next.addr, b"next")).await,
        b"next"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_too_long_for_the_original_block_is_refused_not_cut() {
    let (server, _task) = original_server(OriginalCert::Default).await;
    let long = format!("tcp:{}:1", "a".repeat(600));
    let client = start_client(local_tcp(), server, &long).await;
    let mut app = connect_tcp(&client.addr).await;
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = within(30, app.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
}

/// `quictun-client --check` against an original-style server, pinning its default
/// certificate from the command line.
async fn check_original(server: SocketAddr, token: &str) -> std::process::Output {
    let pin = quictun::tls::Fingerprint::of(&original_default_cert()).to_string();
    Launch::check(&server.to_string())
        .args(["--server-cert-fingerprint", &pin, "--token-source", token])
        .output()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_mode_reports_an_original_server_and_its_answers() {
    let (server, _task) = original_server(OriginalCert::Default).await;
    let app = app_server_tcp(Behaviour::Echo).await;
    let output = check_original(server, &app.addr.to_string()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("alpn quic-tun (the original protocol)"),
        "{stdout}"
    );
    assert!(stdout.contains("token accepted"), "{stdout}");

    let output = check_original(server, "not-an-address").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    // The refusal is said once, as the error.
    assert_eq!(
        stderr,
        "quictun-client: error: token refused: 2 (bad token): refused by a server of the \
         original protocol\n"
    );
    assert!(!stdout.contains("refused"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_flow_is_refused_against_an_original_server() {
    let (server, _task) = original_server(OriginalCert::Default).await;
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = format!("udp:{}", echo.local_addr().unwrap());
    let listen: quictun::wire::addr::Address = "udp:127.0.0.1:0".parse().unwrap();
    let client = start_client(listen, server, &target).await;
    let quictun::wire::addr::Address::Udp(to) = &client.addr else {
        panic!("{}", client.addr)
    };
    let app = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    app.send_to(b"dns?", to.to_string()).await.unwrap();
    let mut buf = [0u8; 64];
    // Neither the target nor the application hears anything: the flow never opens.
    let heard =
        tokio::time::timeout(std::time::Duration::from_millis(500), echo.recv(&mut buf)).await;
    assert!(
        heard.is_err(),
        "the target got a datagram through a legacy server"
    );
    let answered =
        tokio::time::timeout(std::time::Duration::from_millis(100), app.recv(&mut buf)).await;
    assert!(answered.is_err());
    assert_eq!(client.registry.opened_total(), 0);
}
