//! quictun-client: accepts application connections locally and carries each over one QUIC
//! stream to quictun-server.

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use quictun::addr::{Address, HostPort};
use quictun::cli::{self, CommonArgs, parse_duration};
use quictun::client::{Client, ClientConfig};
use quictun::plugins::TokenSource;
use quictun::tls::{Fingerprint, Verification};
use tracing::{info, warn};

/// Client endpoint of quic-tun: accepts TCP or UNIX-socket connections and carries each as one
/// stream of a QUIC connection to quictun-server.
#[derive(Debug, Parser)]
#[command(name = "quictun-client", version)]
struct Args {
    /// Where applications connect: tcp:HOST:PORT or unix:/path/to/socket.
    #[arg(long, value_name = "ADDRESS", default_value = "tcp:127.0.0.1:6500")]
    listen_on: Address,

    /// The server endpoint's UDP address.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    server_endpoint: HostPort,

    /// Token source plugin: a built-in name (Fixed) or the path of a .so file.
    #[arg(long, value_name = "NAME|PATH", default_value = "Fixed")]
    token_source_plugin: String,

    /// Configuration of the token source (Fixed: the token, e.g. tcp:127.0.0.1:22).
    #[arg(long, value_name = "CONFIG", default_value = "")]
    token_source: String,

    /// Accept the server's certificate without any check.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    insecure_skip_verify: bool,

    /// Accept only a server certificate with this fingerprint (sha256:HEX, as the server logs).
    #[arg(long, value_name = "sha256:HEX")]
    server_cert_fingerprint: Option<Fingerprint>,

    /// Longest time for the QUIC handshake with the server.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    handshake_timeout: Duration,

    /// How long an application connection waits for the server or a free stream before it
    /// is closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    outage_wait: Duration,

    #[command(flatten)]
    common: CommonArgs,
}

fn parse_host_port(value: &str) -> Result<HostPort, String> {
    value
        .parse()
        .map_err(|reason| format!("{value:?}: {reason} (expected HOST:PORT)"))
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    cli::init_logging(&args.common)?;
    let verification = match (args.server_cert_fingerprint, args.insecure_skip_verify) {
        (Some(fingerprint), _) => Verification::Pinned(fingerprint),
        (None, true) => {
            warn!("--insecure-skip-verify: the server's identity is not checked");
            Verification::Insecure
        }
        (None, false) => anyhow::bail!(
            "no way to verify the server: give --server-cert-fingerprint (the server logs it at start) or --insecure-skip-verify"
        ),
    };
    let source = TokenSource::load(
        &args.token_source_plugin,
        &args.token_source,
        args.common.plugin_dir.as_deref(),
    )?;
    info!(plugin = %source.info().name, path = %source.info().path.display(), "token source loaded");
    let client = Client::bind(ClientConfig {
        listen: args.listen_on,
        server: args.server_endpoint,
        source,
        verification,
        transport: args.common.transport(0),
        handshake_timeout: args.handshake_timeout,
        outage_wait: args.outage_wait,
        discriminators: args.common.discriminators()?,
    })
    .await?;
    tokio::select! {
        _ = client.run() => {}
        _ = cli::shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}
