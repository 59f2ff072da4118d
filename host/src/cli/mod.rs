//! Command-line pieces shared by both binaries: common flags, value parsers, logging, and how
//! errors are printed (one line, non-zero exit, never a backtrace).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::api::AllowedHost;
use crate::plugins::{Discriminator, LoadError};
use crate::quic::{Congestion, TransportOptions};
use crate::tls::{self, Identity};
use crate::wire::addr::HostPort;

pub mod config;
pub mod generate;
pub mod log_fields;
pub mod log_output;
pub mod services;

/// Flags both endpoints take.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// YAML file of flags (keys are long flag names); flags given here replace its values.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace, or a filter such as `quictun=debug`.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// PEM certificate chain this endpoint presents (with --key-file). The server generates
    /// one in --state-dir when none is given.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// PEM private key of --cert-file (ECDSA, Ed25519 or RSA).
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// PEM bundle of the CA certificates that sign the other endpoint's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Verify the other endpoint's certificate against --ca-file. On the server, --ca-file
    /// alone already requires client certificates; `=false` there keeps them optional (a
    /// certificate shown is still checked), with a warning. Given as `--verify-remote-endpoint`,
    /// `=true|false` or, as the original takes it, `--verify-remote-endpoint true`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub verify_remote_endpoint: Option<bool>,

    /// Where the server keeps its generated certificate and the client its known hosts
    /// [default: $XDG_DATA_HOME/quictun or ~/.local/share/quictun].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Directory searched first for built-in plugins given by name.
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// Protocol discriminator plugin, NAME_OR_PATH[=CONFIG]: the built-in Spice, or the path
    /// of a .so file; repeat for several.
    #[arg(long, value_name = "NAME|PATH[=CONFIG]", default_values_t = [String::from("Spice")])]
    pub discriminator_plugin: Vec<String>,

    /// Congestion controller of the QUIC connection: adaptive (our own, model-based; keeps a
    /// lossy link full without flooding its queue) or quinn's cubic, newreno, bbr.
    #[arg(long, value_enum, value_name = "ALGORITHM", default_value_t = Congestion::Adaptive)]
    pub congestion: Congestion,

    /// Interval of keep-alive packets on an idle connection (0s turns them off).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub keep_alive: Duration,

    /// On SIGINT or SIGTERM, how long open tunnels may go on before they are cut.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,

    /// A connection with no packets for this long is closed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub idle_timeout: Duration,

    /// A UDP flow with no datagram either way for this long ends, on both endpoints.
    #[arg(long, value_name = "DURATION", value_parser = parse_udp_idle, default_value = "60s")]
    pub udp_idle_timeout: Duration,

    /// A host name or address, besides localhost, 127.0.0.0/8 and [::1], under which the REST
    /// API may be reached (repeatable). Matched case-insensitively, with or without a port;
    /// requests naming any other host get 421, so a web page cannot use the API by pointing
    /// its own name at this machine (DNS rebinding). Give only names whose DNS you control:
    /// this adds no authentication.
    #[arg(long, value_name = "HOST")]
    pub httpd_allowed_host: Vec<AllowedHost>,

    /// Worker threads that move the data [default: half the available cores, at least 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// A UDP idle time-out: a duration above zero.
fn parse_udp_idle(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        zero if zero.is_zero() => Err("a UDP flow needs an idle time-out above zero".into()),
        limit => Ok(limit),
    }
}

impl CommonArgs {
    /// The state directory, created (mode 0700) if missing; one another user owns or that
    /// group or others may write is refused.
    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(tls::default_state_dir);
        tls::prepare_state_dir(&dir)?;
        Ok(dir)
    }

    /// The certificate this endpoint presents, when --cert-file and --key-file are given.
    pub fn own_identity(&self) -> anyhow::Result<Option<Identity>> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem_files(cert, key)?)),
            _ => Ok(None),
        }
    }

    /// Whether --verify-remote-endpoint was given true.
    pub fn verify_remote(&self) -> bool {
        self.verify_remote_endpoint == Some(true)
    }

    /// The CA roots of --ca-file, required when --verify-remote-endpoint is given.
    pub fn roots(&self) -> anyhow::Result<Option<rustls::RootCertStore>> {
        match &self.ca_file {
            Some(file) => Ok(Some(tls::load_roots(file)?)),
            None if self.verify_remote() => anyhow::bail!(
                "--verify-remote-endpoint needs --ca-file, the CA that signs the other endpoint's certificate"
            ),
            None => Ok(None),
        }
    }

    /// Loads every `--discriminator-plugin`.
    pub fn discriminators(&self) -> Result<Vec<Discriminator>, LoadError> {
        let dir = self.plugin_dir.as_deref();
        let loaded: Vec<Discriminator> = self
            .discriminator_plugin
            .iter()
            .map(|arg| Discriminator::load(arg, dir))
            .collect::<Result<_, _>>()?;
        for d in &loaded {
            tracing::info!(plugin = %d.info().name, path = %d.info().path.display(), "discriminator loaded");
        }
        Ok(loaded)
    }

    pub fn transport(&self, max_streams: u32) -> TransportOptions {
        TransportOptions {
            congestion: self.congestion,
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
            udp_idle_timeout: self.udp_idle_timeout,
            max_streams,
            ..TransportOptions::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses `500ms`, `10s`, `2m`, `1h`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let bad = || format!("{value:?} is not a duration (write 500ms, 10s, 2m or 1h)");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// Parses a size: plain bytes, or a number with `KiB`, `MiB`, `GiB` (also `K`, `M`, `G`, as
/// powers of 1024).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let bad = || format!("{value:?} is not a size (expected e.g. 65536, 64MiB or 1GiB)");
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(scale).ok_or_else(bad)
}

/// A QUIC endpoint's address as given: the client's `--server-endpoint`, the server's
/// `--listen-on`. The text is kept because known hosts are keyed by it (SPEC §7).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The text as the user wrote it.
    pub given: String,
    pub address: HostPort,
}

/// Parses an [`Endpoint`]; the error names the value and the forms accepted.
pub fn parse_endpoint(value: &str) -> Result<Endpoint, String> {
    let address = HostPort::parse_endpoint(value).map_err(|reason| {
        format!(
            "{value:?}: {reason} (expected HOST:PORT or [IPv6]:PORT, HOST an IP address or a DNS \
             name; a tcp: or udp: prefix is ignored)"
        )
    })?;
    Ok(Endpoint {
        given: value.to_owned(),
        address,
    })
}

impl From<Endpoint> for crate::client::ServerEndpoint {
    fn from(endpoint: Endpoint) -> Self {
        crate::client::ServerEndpoint {
            given: endpoint.given,
            address: endpoint.address,
        }
    }
}

impl Endpoint {
    /// The first socket address the endpoint stands for (a DNS name resolved); `flag` names
    /// it in the error.
    pub async fn resolve_first(&self, flag: &str) -> anyhow::Result<std::net::SocketAddr> {
        let addrs =
            self.address.resolve().await.map_err(|error| {
                anyhow::anyhow!("cannot resolve {flag} {}: {error}", self.given)
            })?;
        addrs
            .first()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("{flag} {} resolves to no address", self.given))
    }
}

/// `--version`: the package's version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("QUICTUN_GIT_REVISION"),
    ")"
);

/// Parses the command line; a bad flag is printed as one line and exits with 2.
/// `--config FILE` is expanded first; its warnings are logged by [`init_logging`].
/// `--generate` prints completions or a man page and exits ([`generate`]).
pub fn parse<T: Parser>() -> T {
    let expanded = match config::expand(std::env::args_os().collect(), &T::command()) {
        Ok(expanded) => expanded,
        Err(message) => {
            eprintln!("{}: error: {message}", program());
            std::process::exit(2);
        }
    };
    let _ = CONFIG_LOGGING.set(expanded.logging);
    let _ = CONFIG_SERVICES.set(expanded.services);
    parse_or_generate::<T>(expanded.args).unwrap_or_else(|error| {
        use clap::error::ErrorKind;
        if matches!(
            error.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        ) {
            error.exit();
        }
        let message = one_line(&error.render().to_string());
        eprintln!("{}: {message} (see --help)", program());
        std::process::exit(2);
    })
}

/// A clap error as one line: its message, which clap may spread over several lines, then each
/// of its tips ("a similar argument exists: ..."), which follow a blank line, after a `;`.
/// The usage text and the pointer to `--help` that end it are left out.
fn one_line(rendered: &str) -> String {
    let mut line = String::new();
    let mut after_blank = false;
    for text in rendered.lines().map(str::trim) {
        if text.starts_with("Usage:") || text.starts_with("For more information") {
            break;
        }
        if text.is_empty() {
            after_blank = !line.is_empty();
            continue;
        }
        let separator = match (line.is_empty(), after_blank) {
            (true, _) => "",
            (false, true) => "; ",
            (false, false) => " ",
        };
        line.push_str(separator);
        line.push_str(text);
        after_blank = false;
    }
    line
}

/// As `T::try_parse_from`, but `--generate` alone prints what it asks for and exits.
fn parse_or_generate<T: Parser>(args: Vec<std::ffi::OsString>) -> Result<T, clap::Error> {
    let matches = generate::with_flag(T::command()).try_get_matches_from(args)?;
    if let Some(output) = generate::requested(&matches) {
        let written = generate::write(output, T::command(), &mut std::io::stdout().lock());
        if let Err(error) = written {
            eprintln!("{}: error: cannot write {output:?}: {error}", program());
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    T::from_arg_matches(&matches).map_err(|error| error.format(&mut T::command()))
}

/// The `--config` file's `services:` (the client's), when it has them.
static CONFIG_SERVICES: std::sync::OnceLock<Option<Vec<services::ServiceEntry>>> =
    std::sync::OnceLock::new();

/// The `--config` file's `services:` list, read by [`parse`]; `None` when there is none.
pub fn config_services() -> Option<&'static [services::ServiceEntry]> {
    CONFIG_SERVICES.get()?.as_deref()
}

/// What the `--config` file says about logging, used once logging is set up.
static CONFIG_LOGGING: std::sync::OnceLock<config::Logging> = std::sync::OnceLock::new();

/// Sets up logging to standard error, and to the files of the `--config` key
/// `log-output-paths` ([`log_output`]). Text lines have their fields' control characters
/// escaped ([`log_fields`]), so what a peer, a token or a plugin sends cannot forge a line.
pub fn init_logging(common: &CommonArgs) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&common.log_level)
        .map_err(|error| anyhow::anyhow!("invalid --log-level {:?}: {error}", common.log_level))?;
    let logging = CONFIG_LOGGING.get().cloned().unwrap_or_default();
    let output = log_output::LogOutput::open(&logging.output_paths)?;
    // Colours only on a terminal, and never into a file.
    let ansi = output.is_stderr_only() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(output)
        .with_ansi(ansi);
    match common.log_format {
        LogFormat::Text => builder.fmt_fields(log_fields::EscapedFields).init(),
        LogFormat::Json => builder.json().init(),
    }
    for warning in &logging.warnings {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// Worker threads when `--threads` is not given: half the available cores, at least one.
///
/// Every byte an endpoint relays also crosses the application's or the target's process and
/// the kernel's TCP on the same machine, and all tunnels of a client share one QUIC
/// connection, whose packets one task handles at a time. More workers than that work needs
/// mostly add wake-ups between threads: on 2 cores one worker per endpoint moved about 30 %
/// more through one tunnel than two did, at 20 % less CPU per GiB (docs/BENCHMARKS.md).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// The runtime of an endpoint: `threads` workers (see [`default_threads`]). Blocking plugin
/// calls run on tokio's separate blocking pool, whatever the number of workers.
pub fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.map_or_else(default_threads, usize::from))
        .enable_all()
        .build()
}

/// Runs a binary's main work on the endpoint's runtime and turns an error into one line on
/// standard error and exit code 1. The work runs as a task on the runtime's workers, not on
/// the calling thread: with one worker, an accepted connection is then served by the thread
/// that accepted it, without waking another (new tunnels answer 0.05–0.15 ms sooner here).
pub fn run(
    threads: Option<u16>,
    main: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) -> ExitCode {
    let runtime = match runtime(threads) {
        Ok(runtime) => runtime,
        Err(error) => return fail(anyhow::anyhow!("cannot start the runtime: {error}")),
    };
    match runtime.block_on(runtime.spawn(main)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => fail(error),
        Err(error) => fail(anyhow::anyhow!("internal error: {error}")),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("{}: error: {}", program(), error_line(&error));
    ExitCode::FAILURE
}

/// An error and its causes on one line, a cause left out when the line says it already (most
/// of our messages quote their cause).
fn error_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|arg0| arg0.rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "quictun".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let quoted = anyhow::Error::new(io()).context(format!("cannot read cert.pem: {}", io()));
        assert_eq!(
            error_line(&quoted),
            "cannot read cert.pem: entity not found"
        );
        let unquoted = anyhow::Error::new(io()).context("cannot read cert.pem");
        assert_eq!(
            error_line(&unquoted),
            "cannot read cert.pem: entity not found"
        );
    }

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn allowed_hosts_repeat_and_refuse_a_port() {
        let flags = Flags::try_parse_from([
            "t",
            "--httpd-allowed-host",
            "Tunnel-Box.example",
            "--httpd-allowed-host",
            "[2001:db8::7]",
        ])
        .unwrap();
        let hosts: Vec<String> = flags
            .common
            .httpd_allowed_host
            .iter()
            .map(|h| h.to_string())
            .collect();
        assert_eq!(hosts, ["tunnel-box.example", "[2001:db8::7]"]);
        let error = Flags::try_parse_from(["t", "--httpd-allowed-host", "tunnel-box.example:8086"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("without a port"), "{error}");
    }

    #[test]
    fn a_clap_error_keeps_its_tip_on_one_line() {
        let error = Flags::try_parse_from(["t", "--log-levle", "debug"]).unwrap_err();
        assert_eq!(
            one_line(&error.render().to_string()),
            "error: unexpected argument '--log-levle' found; \
             tip: a similar argument exists: '--log-level'"
        );
        let error = Flags::try_parse_from(["t", "--keep-alive", "5"]).unwrap_err();
        assert_eq!(
            one_line(&error.render().to_string()),
            "error: invalid value '5' for '--keep-alive <DURATION>': \
             \"5\" is not a duration (write 500ms, 10s, 2m or 1h)"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1",
            "1 GiB",
            "1GB",
            "99999999999999999999",
        ] {
            let error = parse_size(bad).unwrap_err();
            assert!(error.contains("not a size"), "{bad}: {error}");
        }
        assert!(parse_size("17179869184GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "3d",
            "99999999999999999999s",
        ] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("not a duration"), "{bad}: {error}");
        }
    }
}
