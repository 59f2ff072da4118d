//! quictun-client: accepts application connections locally and carries each over one QUIC
//! stream to quictun-server.

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use quictun::api::{self, ApiListen, ApiState};
use quictun::cli::{self, CommonArgs, Endpoint, parse_duration};
use quictun::client::check::{self, CheckConfig, TokenTest};
use quictun::client::service::{DEFAULT_SERVICE, Service};
use quictun::client::{Client, ClientConfig, ClientHandle, ServerEndpoint};
use quictun::plugins::TokenSource;
use quictun::shutdown::Shutdown;
use quictun::tls::{Fingerprint, Verification};
use quictun::tunnel::Side;
use quictun::wire::addr::Address;
use tracing::{info, warn};

/// Client endpoint of quic-tun: accepts TCP or UNIX-socket connections and UDP flows (one per
/// source address) and carries each as one stream of a QUIC connection to quictun-server, a
/// flow's datagrams in QUIC DATAGRAM frames. A --config file's services: list runs several
/// listeners, each with its own token source, on the one connection.
///
/// When something does not work, run it first with the same flags plus --check: it connects
/// once, prints the server's certificate fingerprint, the protocol, the round-trip time and
/// whether the server accepts a test token, and exits 0 only when all of that worked.
///
/// With several --server-endpoint, the client uses one server at a time and moves to the next
/// when it fails or the connection is lost. Signals: SIGHUP retries at once after a refusal
/// that retrying alone cannot fix; SIGUSR1 moves the connection to a new local UDP socket
/// after this host's network changed (the connection and its tunnels stay).
#[derive(Debug, Parser)]
#[command(
    name = "quictun-client",
    version = cli::VERSION,
    about = "carry local TCP, UDP and UNIX-socket applications over QUIC"
)]
struct Args {
    /// Where applications connect: tcp:HOST:PORT, udp:HOST:PORT or unix:/path/to/socket
    /// [default: tcp:127.0.0.1:6500]. With a --config file's services: list, each service has
    /// its own and this flag is refused.
    #[arg(long, value_name = "ADDRESS")]
    listen_on: Option<Address>,

    /// The server endpoint's UDP address: HOST:PORT or [IPv6]:PORT, HOST an IP address or a
    /// DNS name (a tcp: or udp: prefix is ignored). Known hosts are keyed by it as written.
    /// Repeat it for several servers of one service: the client uses one at a time, the first
    /// at start; after a failure, or when the connection is lost, the next attempt goes to the
    /// next server, and the client stays with the one that answers.
    #[arg(long, value_name = "HOST:PORT", value_parser = cli::parse_endpoint, required = true)]
    server_endpoint: Vec<Endpoint>,

    /// Token source plugin: a built-in name (Fixed, File or Http) or the path of a .so file
    /// [default: Fixed]. Refused with a services: list, whose services have their own.
    #[arg(long, value_name = "NAME|PATH")]
    token_source_plugin: Option<String>,

    /// Configuration of the token source (Fixed: the token, e.g. tcp:127.0.0.1:22; File: a
    /// file of CLIENT_IP TOKEN lines; Http: the URL asked for each connection's token)
    /// [default: ""]. Refused with a services: list, whose services have their own.
    #[arg(long, value_name = "CONFIG")]
    token_source: Option<String>,

    /// Accept the server's certificate without any check.
    #[arg(long, value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    insecure_skip_verify: bool,

    /// Accept only a server certificate with this SHA-256 fingerprint: sha256:HEX as the server
    /// logs it at start, the hex digits alone, or AB:CD:... as `openssl x509 -fingerprint
    /// -sha256` prints it; any case.
    #[arg(long, value_name = "sha256:HEX")]
    server_cert_fingerprint: Option<Fingerprint>,

    /// Longest time for the QUIC handshake with the server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    handshake_timeout: Duration,

    /// How long an application connection waits for the server or a free stream before it
    /// is closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    outage_wait: Duration,

    /// Longest pause between attempts to reconnect to the server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    reconnect_max_backoff: Duration,

    /// TCP address of the REST API (tunnels, connections, metrics), or "" for none.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8087")]
    httpd_listen_on: ApiListen,

    /// Check instead of serving: connect to the server once (verified as usual), print its
    /// certificate fingerprint, ALPN and round-trip time, send a test token from each
    /// service's token source and say whether the server accepts it, then exit: 0 when
    /// connected and every token accepted, 1 otherwise. With several --server-endpoint, each
    /// is checked in turn and reported on, and it exits 0 only when every one works.
    /// Nothing listens, so it can run beside a running client.
    #[arg(long, value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    check: bool,

    /// With --check: the application address each service's token source is asked about
    /// (IP:PORT or unix:/path) [default: the service's listen-on address, a wildcard IP read
    /// as loopback].
    #[arg(long, requires = "check", value_name = "ADDRESS")]
    check_app_addr: Option<String>,

    /// With --check: send this token, for every service, instead of asking the token source.
    #[arg(long, requires = "check", value_name = "TOKEN")]
    check_token: Option<String>,

    #[command(flatten)]
    common: CommonArgs,
}

/// How to check the server: one of --insecure-skip-verify, --server-cert-fingerprint and a CA
/// (--ca-file / --verify-remote-endpoint), or by default trust on first use.
fn verification(args: &Args) -> anyhow::Result<Verification> {
    let pki = args.common.ca_file.is_some() || args.common.verify_remote();
    let chosen = [
        args.insecure_skip_verify,
        args.server_cert_fingerprint.is_some(),
        pki,
    ];
    if chosen.iter().filter(|&&c| c).count() > 1 {
        anyhow::bail!(
            "choose one of --insecure-skip-verify, --server-cert-fingerprint and --ca-file/--verify-remote-endpoint"
        );
    }
    if let Some(fingerprint) = args.server_cert_fingerprint {
        return Ok(Verification::Pinned(fingerprint));
    }
    if let Some(roots) = args.common.roots()? {
        return Ok(Verification::Pki(roots));
    }
    if args.insecure_skip_verify {
        warn!("--insecure-skip-verify: the server's identity is not checked");
        return Ok(Verification::Insecure);
    }
    // The state directory is checked now, not at the first handshake. Each server is
    // remembered under its own endpoint (`Verification::for_endpoint`).
    Ok(Verification::FirstUse {
        known_hosts: args.common.state_dir()?.join("known_hosts"),
        endpoint: args.server_endpoint[0].given.clone(),
    })
}

/// The client's services: the --config file's `services:` list, or else one service named
/// `default` made of the single-listener flags.
fn services(args: &Args) -> anyhow::Result<Vec<Service>> {
    let dir = args.common.plugin_dir.as_deref();
    let Some(entries) = cli::config_services() else {
        let listen = match &args.listen_on {
            Some(listen) => listen.clone(),
            None => "tcp:127.0.0.1:6500".parse()?,
        };
        let plugin = args.token_source_plugin.as_deref().unwrap_or("Fixed");
        let config = args.token_source.as_deref().unwrap_or_default();
        let source = TokenSource::load(plugin, config, dir)?;
        return Ok(vec![Service {
            name: DEFAULT_SERVICE.parse()?,
            listen,
            source,
        }]);
    };
    let given: Vec<&str> = [
        ("--listen-on", args.listen_on.is_some()),
        ("--token-source-plugin", args.token_source_plugin.is_some()),
        ("--token-source", args.token_source.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if !given.is_empty() {
        anyhow::bail!(
            "{} cannot be given with the --config file's services: (each service has its own)",
            given.join(", ")
        );
    }
    cli::services::build(entries, dir)
}

/// Every `--server-endpoint`, in the order given.
fn servers(args: &Args) -> Vec<ServerEndpoint> {
    args.server_endpoint
        .iter()
        .cloned()
        .map(Into::into)
        .collect()
}

/// `--check`: one connection, a report on standard output, and one test token per service,
/// from its token source for an application at its listener (or --check-app-addr).
async fn check(
    args: Args,
    verification: Verification,
    services: Vec<Service>,
) -> anyhow::Result<()> {
    let mut tests = Vec::with_capacity(services.len());
    for service in services {
        let app_addr = match &args.check_app_addr {
            Some(app_addr) => app_addr.clone(),
            None => check::app_addr_for(&service.listen).await?,
        };
        tests.push(TokenTest {
            service: service.name.to_string(),
            source: service.source,
            app_addr,
            token: args.check_token.clone(),
        });
    }
    let config = CheckConfig {
        servers: servers(&args),
        tests,
        verification,
        identity: args.common.own_identity()?,
        transport: args.common.transport(0),
        handshake_timeout: args.handshake_timeout,
    };
    Ok(check::run(config, &mut std::io::stdout()).await?)
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run(args.common.threads, serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    cli::init_logging(&args.common)?;
    let verification = verification(&args)?;
    let services = services(&args)?;
    for s in &services {
        let (plugin, path) = (&s.source.info().name, s.source.info().path.display());
        info!(service = %s.name, %plugin, %path, "token source loaded");
    }
    if args.check {
        return check(args, verification, services).await;
    }
    let client = Client::bind(ClientConfig {
        services,
        servers: servers(&args),
        verification,
        identity: args.common.own_identity()?,
        transport: args.common.transport(0),
        handshake_timeout: args.handshake_timeout,
        outage_wait: args.outage_wait,
        reconnect_max_backoff: args.reconnect_max_backoff,
        discriminators: args.common.discriminators()?,
    })
    .await?;
    if let ApiListen(Some(listen)) = &args.httpd_listen_on {
        let state = ApiState::new(Side::Client, client.registry(), client.connections())
            .allowing_hosts(args.common.httpd_allowed_host.clone());
        api::start(listen, state).await?;
    }
    let handle = client.handle();
    tokio::spawn(retry_on_hangup(handle.clone()));
    tokio::spawn(rebind_on_usr1(handle.clone()));
    // Dropping `run` closes the listener (and removes a UNIX socket file).
    Shutdown::new(args.common.drain_timeout)
        .run(client.run(), handle)
        .await;
    Ok(())
}

/// SIGHUP retries the connection to the server at once: after a failure retrying alone
/// cannot fix (a certificate refused), once the server or the flags were fixed.
async fn retry_on_hangup(client: ClientHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => return warn!("SIGHUP will not retry the connection: {error}"),
    };
    while hangups.recv().await.is_some() {
        info!("SIGHUP: retrying the connection to the server");
        client.retry_now();
    }
}

/// SIGUSR1 moves the connection to a new local UDP socket, for when this host's network
/// changed (a new address, a VPN, a NAT that dropped its mapping): the connection and its
/// tunnels stay, and the server sees them come from the new address.
async fn rebind_on_usr1(client: ClientHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = match signal(SignalKind::user_defined1()) {
        Ok(signals) => signals,
        Err(error) => return warn!("SIGUSR1 will not move the connection: {error}"),
    };
    while signals.recv().await.is_some() {
        info!("SIGUSR1: moving the connection to a new local UDP socket");
        if let Err(error) = client.rebind() {
            warn!("path change failed, the connection stays on its socket: {error}");
        }
    }
}
