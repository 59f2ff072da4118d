//! quictun-server: accepts tunnels from quictun-client over QUIC and relays each to the
//! application its token names.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use quictun::api::{self, ApiListen, ApiState};
use quictun::cli::{self, CommonArgs, Endpoint, parse_duration};
use quictun::plugins::TokenParser;
use quictun::quic::cluster_key::ClusterKey;
use quictun::quic::keys::KeySource;
use quictun::server::policy::Policy;
use quictun::server::{Limits, Server, ServerConfig};
use quictun::shutdown::Shutdown;
use quictun::tls;
use quictun::tls::{ClientAuth, Identity};
use quictun::tunnel::Side;
use tracing::{Instrument, error_span, info, warn};

/// Server endpoint of quic-tun: carries TCP and UNIX-socket connections and UDP flows over one
/// QUIC connection per client and relays each to the application its token names.
///
/// Each client connection carries one stream per application connection; the first bytes of
/// a stream are a token, which the token parser turns into the target address. Targets are
/// dialed only when --allow-target permits them. Run quictun-client --check on a client to
/// see whether it reaches this server and whether a token is accepted.
#[derive(Debug, Parser)]
#[command(
    name = "quictun-server",
    version = cli::VERSION,
    about = "relay TCP, UDP and UNIX-socket applications from quictun-client"
)]
struct Args {
    /// UDP address to accept QUIC connections on: HOST:PORT or [IPv6]:PORT, HOST an IP address
    /// or a DNS name, resolved at start to its first address (a tcp: or udp: prefix is ignored).
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:7500",
          value_parser = cli::parse_endpoint)]
    listen_on: Endpoint,

    /// Token parser plugin: the built-in Cleartext, or the path of a .so file.
    #[arg(long, value_name = "NAME|PATH", default_value = "Cleartext")]
    token_parser_plugin: String,

    /// Configuration of the token parser (Cleartext: "" or "base64").
    #[arg(long, value_name = "KEY", default_value = "")]
    token_parser_key: String,

    /// Longest time for a QUIC handshake, and for a new stream's token to arrive.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    handshake_timeout: Duration,

    /// Longest time to connect to a target application.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    connect_timeout: Duration,

    /// Tunnels (streams) one client connection may have open at once.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,

    /// Client connections served at once.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,

    /// QUIC handshakes in progress from one source address (an IPv4 address or an IPv6 /64).
    /// Behind a load balancer that hides client addresses, raise it (docs/SCALING.md).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_handshakes_per_address: u32,

    /// Data buffered for all clients together (receive windows and send buffers): e.g.
    /// `64MiB`, `1GiB` or plain bytes. Each connection also gets 64 KiB outside it.
    #[arg(long, value_name = "SIZE", value_parser = cli::parse_size, default_value = "1GiB")]
    max_buffered: u64,

    /// TCP address of the REST API (tunnels, connections, metrics), or "" for none.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8086")]
    httpd_listen_on: ApiListen,

    /// Targets tokens may name: CIDR, CIDR:PORT, CIDR:LOW-HIGH, HOST:PORT or unix:/dir/
    /// (repeatable), or `any` alone for an open relay. At least one is required.
    #[arg(long, value_name = "RULE")]
    allow_target: Vec<String>,

    /// This instance's id among several behind one load balancer (0-255): carried in byte 1
    /// of every connection ID it issues, so a CID-aware balancer can route by it, and in the
    /// server_id label of the metrics and field of the logs (docs/SCALING.md).
    #[arg(long, value_name = "N")]
    server_id: Option<u8>,

    /// File of the secret that the instances of one service share: 64 or more hex digits,
    /// readable by the server's user alone (mode 600). The stateless-reset, connection-ID and
    /// Retry token keys are derived from it instead of the state directory's, so any instance
    /// resets another's stale connections at once and accepts its Retry tokens. Write one
    /// with `(umask 077; quictun-server --generate cluster-key > FILE)`.
    #[arg(long, value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,

    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run(args.common.threads, serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    cli::init_logging(&args.common)?;
    // With --server-id, every line the server logs carries it (SPEC §12). At the error
    // level, so that no --log-level that lets a line through turns the span off.
    let span = match args.server_id {
        Some(id) => error_span!("server", server_id = id),
        None => tracing::Span::none(),
    };
    serve_as(args).instrument(span).await
}

async fn serve_as(args: Args) -> anyhow::Result<()> {
    let policy = target_policy(&args.allow_target)?;
    let listen = args.listen_on.resolve_first("--listen-on").await?;
    let client_auth = client_auth(&args.common)?;
    let state_dir = args.common.state_dir()?;
    let keys = key_source(args.cluster_key_file.as_deref(), &state_dir)?;
    let identity = match args.common.own_identity()? {
        Some(identity) => identity,
        None => Identity::load_or_create(&state_dir)?,
    };
    let parser = TokenParser::load(
        &args.token_parser_plugin,
        &args.token_parser_key,
        args.common.plugin_dir.as_deref(),
    )?;
    info!(plugin = %parser.info().name, path = %parser.info().path.display(), "token parser loaded");
    let server = Server::bind(ServerConfig {
        listen,
        parser,
        identity,
        transport: args.common.transport(args.max_streams_per_connection),
        handshake_timeout: args.handshake_timeout,
        connect_timeout: args.connect_timeout,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        limits: Limits {
            max_handshakes_per_address: args.max_handshakes_per_address as usize,
            max_buffered: args.max_buffered,
            ..Limits::default()
        },
        discriminators: args.common.discriminators()?,
        policy: policy.clone(),
        client_auth,
        keys,
        server_id: args.server_id,
    })?;
    if let ApiListen(Some(listen)) = &args.httpd_listen_on {
        let state = ApiState::new(Side::Server, server.registry(), server.connections())
            .allowing_hosts(args.common.httpd_allowed_host.clone())
            .with_server_id(args.server_id);
        api::start(listen, state).await?;
    }
    if policy.is_open() {
        warn!(
            "--allow-target any: this server relays any client to any address it names, this machine's own services included"
        );
    }
    let handle = server.handle();
    Shutdown::new(args.common.drain_timeout)
        .run(server.run(), handle)
        .await;
    Ok(())
}

/// The cluster key when a file is given, else the state directory's stateless-reset key.
fn key_source(cluster_key_file: Option<&Path>, state_dir: &Path) -> anyhow::Result<KeySource> {
    let Some(file) = cluster_key_file else {
        return Ok(KeySource::StateDir(tls::load_or_create_reset_key(
            state_dir,
        )?));
    };
    let key = ClusterKey::load(file)?;
    info!(file = %file.display(), "cluster key loaded: reset, connection ID and Retry keys derived from it");
    Ok(KeySource::Cluster(key))
}

/// Which client certificates to ask for: `--ca-file` requires them (as
/// `--verify-remote-endpoint` does), unless `--verify-remote-endpoint=false` says otherwise,
/// which is warned about (SPEC §7: never silently without the authentication given).
fn client_auth(args: &CommonArgs) -> anyhow::Result<ClientAuth> {
    let Some(roots) = args.roots()? else {
        return Ok(ClientAuth::Off);
    };
    if args.verify_remote_endpoint == Some(false) {
        warn!(
            "--verify-remote-endpoint=false: clients without a certificate signed by --ca-file \
             are accepted too; drop it to require client certificates"
        );
        return Ok(ClientAuth::Optional(roots));
    }
    Ok(ClientAuth::Required(roots))
}

/// The target policy from `--allow-target`. Without a rule the server refuses to start: it
/// would relay any client to any address (SPEC §7, fail closed).
fn target_policy(rules: &[String]) -> anyhow::Result<Policy> {
    let policy = Policy::new(rules)?;
    if policy.is_empty() {
        anyhow::bail!(
            "no --allow-target rule: this server would relay any client to any address, this machine's own services included; name what clients may reach (e.g. --allow-target 127.0.0.1:22) or pass --allow-target any to run an open relay"
        );
    }
    Ok(policy)
}
