//! Helpers for the integration tests: real endpoints on loopback with the real plugin .so
//! files, real application servers, and byte-exact checks.

#![allow(dead_code)]

pub mod process;
pub mod relay;
pub mod spice;

// Not every test binary starts the binaries.
#[allow(unused_imports)]
pub use process::{Launch, field_of};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quictun::client::service::Service;
use quictun::client::{Client, ClientConfig};
use quictun::plugins::{Discriminator, TokenParser, TokenSource};
use quictun::quic::TransportOptions;
use quictun::quic::connections::ConnectionRegistry;
use quictun::server::{Server, ServerConfig};
use quictun::tls::{Identity, Verification};
use quictun::tunnel::TunnelRegistry;
use quictun::wire::addr::Address;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// The libraries the tests load: the built-in plugins, the misbehaving test parser and the
/// third-party example. Each is a dev-dependency of this package and a `cdylib` as well as an
/// `rlib`, so cargo builds its .so before it runs any test.
const LIBRARIES: &[&str] = &[
    "libquictun_plugin_fixed.so",
    "libquictun_plugin_cleartext.so",
    "libquictun_plugin_file.so",
    "libquictun_plugin_http.so",
    "libquictun_plugin_spice.so",
    "libquictun_test_parser.so",
    "libround_robin_source.so",
];

/// The directory holding the plugin libraries the tests load: `target/<profile>/deps/`, where
/// the test binary itself lives and where cargo writes the .so of each dev-dependency. A copy
/// in `target/<profile>/` (left by an earlier `cargo build`) may be stale and is never used:
/// the tests name this directory first, and every library must be here.
pub fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().expect("target/<profile>/deps").to_path_buf();
        for library in LIBRARIES {
            assert!(
                dir.join(library).is_file(),
                "{library} is not in {}: it is built by cargo as a dev-dependency of quictun",
                dir.display()
            );
        }
        dir
    })
}

/// The plugin built against a later plugin API (`tests/fixtures/future-abi`, a workspace of
/// its own). Cargo cannot build it for these tests: scripts/test.sh builds it into this
/// target directory first, and it lands in `target/<profile>/`.
pub fn future_abi_plugin() -> PathBuf {
    let profile_dir = plugin_dir().parent().expect("target/<profile>");
    let path = profile_dir.join("libquictun_test_future_abi.so");
    let release = if profile_dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh, or first cargo build{release} --manifest-path \
         host/tests/fixtures/future-abi/Cargo.toml --target-dir {}",
        path.display(),
        profile_dir.parent().expect("target dir").display()
    );
    path
}

/// The built-in Spice discriminator, as both endpoints load it by default.
pub fn discriminators() -> Vec<Discriminator> {
    vec![Discriminator::load("Spice", Some(plugin_dir())).expect("load Spice")]
}

pub fn plugin_path(name: &str) -> PathBuf {
    plugin_dir().join(format!("libquictun_plugin_{name}.so"))
}

/// A scratch directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("quictun-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Short time-outs so failure tests finish quickly.
pub fn transport() -> TransportOptions {
    TransportOptions {
        idle_timeout: Duration::from_secs(10),
        ..TransportOptions::default()
    }
}

/// A running server endpoint on 127.0.0.1 with the Cleartext parser.
pub struct TestServer {
    pub addr: SocketAddr,
    pub registry: Arc<TunnelRegistry>,
    pub connections: Arc<ConnectionRegistry>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Handshakes that failed for `reason` (a `quictun_handshake_failures_total` label).
    pub fn handshake_failures(&self, reason: &str) -> u64 {
        self.connections
            .handshake_failures()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start_server(parser_key: &str) -> TestServer {
    let parser =
        TokenParser::load("Cleartext", parser_key, Some(plugin_dir())).expect("load Cleartext");
    start_server_with(parser)
}

pub fn start_server_with(parser: TokenParser) -> TestServer {
    start_server_opts(parser, transport())
}

pub fn start_server_opts(parser: TokenParser, transport: TransportOptions) -> TestServer {
    start_server_custom(parser, transport, |_| {})
}

/// A server whose configuration `adjust` changes from the tests' defaults.
pub fn start_server_custom(
    parser: TokenParser,
    transport: TransportOptions,
    adjust: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        parser,
        identity: Identity::self_signed(&["localhost"]).unwrap(),
        transport: transport.clone(),
        handshake_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        max_connections: 100,
        limits: Default::default(),
        discriminators: discriminators(),
        policy: quictun::server::policy::Policy::any(),
        client_auth: quictun::tls::ClientAuth::Off,
        keys: Default::default(),
        server_id: None,
    };
    adjust(&mut config);
    let server = Server::bind(config).expect("bind server");
    let addr = server.local_addr().unwrap();
    let registry = server.registry();
    let connections = server.connections();
    TestServer {
        addr,
        registry,
        connections,
        task: tokio::spawn(server.run()),
    }
}

/// A running client endpoint with the Fixed token source.
pub struct TestClient {
    pub addr: Address,
    pub registry: Arc<TunnelRegistry>,
    pub connections: Arc<ConnectionRegistry>,
    task: JoinHandle<()>,
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_client(listen: Address, server: SocketAddr, token: &str) -> TestClient {
    start_client_opts(listen, server, token, transport()).await
}

pub async fn start_client_opts(
    listen: Address,
    server: SocketAddr,
    token: &str,
    transport: TransportOptions,
) -> TestClient {
    start_client_custom(listen, server, token, |config| config.transport = transport).await
}

/// A client whose configuration `adjust` changes from the tests' defaults (no certificate
/// check, generous time-outs).
pub async fn start_client_custom(
    listen: Address,
    server: SocketAddr,
    token: &str,
    adjust: impl FnOnce(&mut ClientConfig),
) -> TestClient {
    let source = TokenSource::load("Fixed", token, Some(plugin_dir())).expect("load Fixed");
    let mut config = ClientConfig {
        services: vec![Service {
            name: "default".parse().unwrap(),
            listen,
            source,
        }],
        servers: vec![server.into()],
        verification: Verification::Insecure,
        identity: None,
        transport: transport(),
        handshake_timeout: Duration::from_secs(5),
        // Generous: tests under load (1000 tunnels on 2 busy cores) must not trip it.
        outage_wait: Duration::from_secs(60),
        reconnect_max_backoff: Duration::from_secs(1),
        discriminators: discriminators(),
    };
    adjust(&mut config);
    let client = Client::bind(config).await.expect("bind client");
    let addr = client.local_addr().unwrap();
    let registry = client.registry();
    let connections = client.connections();
    TestClient {
        addr,
        registry,
        connections,
        task: tokio::spawn(client.run()),
    }
}

pub fn local_tcp() -> Address {
    "tcp:127.0.0.1:0".parse().unwrap()
}

/// A loopback TCP port where nothing listens: connecting is refused. The socket stays bound
/// (without listening) so no one else takes the port while the test uses it, and
/// [`ClosedPort::listen`] opens a listener on that same port.
pub struct ClosedPort {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        ClosedPort { socket, addr }
    }

    /// The port as a token: `tcp:127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        format!("tcp:{}", self.addr)
    }

    /// Starts listening on the port.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(128).unwrap();
        self.socket.set_nonblocking(true).unwrap();
        TcpListener::from_std(self.socket.into()).unwrap()
    }
}

/// What a test application server does with each connection.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Sends back everything it receives, then closes its side after the peer's EOF.
    Echo,
    /// Reads until EOF, then answers with the SHA-256 of what it read, then closes.
    DigestAfterEof,
}

/// A real application server on loopback TCP or a UNIX socket.
pub struct AppServer {
    pub addr: Address,
    task: JoinHandle<()>,
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn app_server_tcp(behaviour: Behaviour) -> AppServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = Address::Tcp(listener.local_addr().unwrap().into());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_app(stream, behaviour));
        }
    });
    AppServer { addr, task }
}

pub async fn app_server_unix(dir: &TempDir, behaviour: Behaviour) -> AppServer {
    let path = dir.join("app.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_app(stream, behaviour));
        }
    });
    AppServer {
        addr: Address::Unix(path),
        task,
    }
}

async fn serve_app<S: AsyncRead + AsyncWrite + Unpin>(stream: S, behaviour: Behaviour) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    match behaviour {
        Behaviour::Echo => {
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
        Behaviour::DigestAfterEof => {
            let mut all = Vec::new();
            if reader.read_to_end(&mut all).await.is_ok() {
                let _ = writer.write_all(&sha256(&all)).await;
            }
        }
    }
    let _ = writer.shutdown().await;
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Deterministic bytes that are not a repeating pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // Eight bytes per step: the tests are built without optimisation, and make 64 MiB at once.
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Any application-side connection.
pub enum AppConn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

pub async fn connect(addr: &Address) -> AppConn {
    match addr {
        Address::Tcp(_) => AppConn::Tcp(connect_tcp(addr).await),
        Address::Unix(path) => AppConn::Unix(UnixStream::connect(path).await.unwrap()),
        Address::Udp(_) => panic!("{addr} is not a stream address: use a UdpSocket"),
    }
}

/// Connects with a blocking `connect` (on the blocking pool), which returns as soon as the
/// handshake is done: a tunnel refused right after (a reset) must show up on the first read,
/// not as a connect error when the test's task happens to be polled late.
pub async fn connect_tcp(addr: &Address) -> TcpStream {
    let Address::Tcp(host_port) = addr else {
        panic!("{addr} is not a TCP address")
    };
    let target = host_port.to_string();
    let stream = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(target))
        .await
        .unwrap()
        .unwrap();
    stream.set_nonblocking(true).unwrap();
    TcpStream::from_std(stream).unwrap()
}

/// Sends `data` through the connection while reading everything that comes back, then
/// returns what came back. The write side is shut after `data`, so the far end sees EOF.
pub async fn exchange(conn: AppConn, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    match conn {
        AppConn::Tcp(stream) => exchange_on(stream, data).await,
        AppConn::Unix(stream) => exchange_on(stream, data).await,
    }
}

async fn exchange_on<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    data: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = tokio::spawn(async move {
        writer.write_all(&data).await?;
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut received = Vec::new();
    let read = reader.read_to_end(&mut received).await;
    let _writer = write.await.expect("writer task")?;
    read?;
    Ok(received)
}

/// Runs `future` with a generous bound, so a hang fails the test instead of the CI run.
pub async fn within<T>(secs: u64, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), future)
        .await
        .expect("timed out")
}

/// Checks `condition` every few milliseconds until it holds (`true`, or `Some(value)`), for at
/// most `limit`: the one way the tests wait for something another task or process does.
/// `Err` when it never held; the caller says what it waited for (`.expect("…")`).
pub async fn wait_until<H: Holds, Fut: std::future::Future<Output = H>>(
    limit: Duration,
    mut condition: impl FnMut() -> Fut,
) -> Result<H::Value, NeverHeld> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = condition().await.holds() {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NeverHeld(limit));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A [`wait_until`] condition that did not hold within its limit.
#[derive(Debug)]
pub struct NeverHeld(pub Duration);

/// What a [`wait_until`] condition returns: `bool`, or `Option` to hand back what it found.
pub trait Holds {
    type Value;
    fn holds(self) -> Option<Self::Value>;
}

impl Holds for bool {
    type Value = ();
    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Holds for Option<T> {
    type Value = T;
    fn holds(self) -> Option<T> {
        self
    }
}

/// A bare QUIC connection to a server, for speaking the wire protocol by hand.
pub async fn raw_connection(server: SocketAddr) -> quinn::Connection {
    let endpoint = quictun::quic::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let crypto = quictun::tls::client_crypto(&Verification::Insecure, None).unwrap();
    let config = quinn::ClientConfig::new(crypto);
    endpoint
        .connect_with(config, server, "localhost")
        .unwrap()
        .await
        .unwrap()
}

/// Opens a stream, sends `bytes` as they are, and reads the server's answer.
pub async fn raw_answer(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<quictun::wire::Answer, quictun::wire::handshake::HandshakeError> {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    quictun::wire::handshake::read_answer(&mut recv, quictun::wire::handshake::Protocol::V2).await
}

/// A `quic-tun/2` token frame.
pub fn token_frame(token: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    quictun::wire::encode_token(token.as_bytes(), &mut frame).unwrap();
    frame
}

/// A CA that writes its certificate and the leaves it signs as PEM files in `dir`.
pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    name: String,
}

impl Ca {
    pub fn new(dir: &TempDir, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        std::fs::write(dir.join(&format!("{name}-ca.pem")), issuer.pem()).unwrap();
        Ca {
            issuer,
            name: name.to_owned(),
        }
    }

    pub fn ca_file(&self, dir: &TempDir) -> std::path::PathBuf {
        dir.join(&format!("{}-ca.pem", self.name))
    }

    /// A leaf for `names`, written as `<leaf>.pem` and `<leaf>.key`, and loaded back.
    pub fn leaf(&self, dir: &TempDir, leaf: &str, names: &[&str]) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, leaf);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            dir.join(&format!("{leaf}.pem")),
            dir.join(&format!("{leaf}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Identity::from_pem_files(&cert_file, &key_file).unwrap()
    }
}

/// The datagrams of `count` fresh QUIC Initials to `server`, each a new connection attempt, as
/// a client would send them first; nothing after them will ever be answered.
pub fn initials(server: SocketAddr, count: usize) -> Vec<Vec<u8>> {
    let crypto = quictun::tls::client_crypto(&Verification::Insecure, None).unwrap();
    let mut endpoint = quinn_proto::Endpoint::new(
        std::sync::Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    (0..count)
        .map(|_| {
            let config = quinn_proto::ClientConfig::new(crypto.clone());
            let (_, mut connection) = endpoint
                .connect(std::time::Instant::now(), config, server, "localhost")
                .unwrap();
            let mut datagram = Vec::new();
            let transmit = connection
                .poll_transmit(std::time::Instant::now(), 1, &mut datagram)
                .unwrap();
            datagram.truncate(transmit.size);
            datagram
        })
        .collect()
}

/// The JSON body of `GET path` on a REST API.
pub fn get_json(api: SocketAddr, path: &str) -> serde_json::Value {
    let answer = http_get(api, path);
    let body = answer.split_once("\r\n\r\n").expect("a body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// `GET path` over a plain TCP connection, as curl would send it.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the REST API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
