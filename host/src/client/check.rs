//! `quictun-client --check`: one connection to the server, made and verified exactly as the
//! client makes it, a report of what was found (the server's certificate fingerprint, the
//! protocol agreed on, the round-trip time) and one test token sent the way a tunnel sends it,
//! then a clean close. What to run first when a tunnel does not work.
//!
//! With several servers (`--server-endpoint` repeated), each is checked in turn, in the order
//! given, each with its own connection and report; the check succeeds only when every one
//! works, since the client may be sent to any of them.
//!
//! The test token goes on a stream of its own with no application bytes after it and the
//! stream finished at once: a server that accepts it dials the target (it must, to answer),
//! and the target sees the connection end straight away.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quictun_plugin_api::PluginError;
use quinn::{Connection, ConnectionError, WriteError};

use super::dialer::{ConnectError, ConnectorConfig, Dialer, ServerEndpoint};
use crate::plugins::TokenSource;
use crate::quic::{SetupError, TransportOptions};
use crate::tls::{self, Identity, Verification};
use crate::wire::addr::Address;
use crate::wire::handshake::{self, HandshakeError, Protocol, negotiated_alpn};
use crate::wire::{Answer, ErrorCode, Status, WireError};

/// Longest wait for the server's answer to the test token. The server dials the target
/// before it answers, and gives up on that after its `--connect-timeout` (10 s by default).
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for the close to reach the server before the process exits.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why the check failed: one line, as the report's last.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot resolve {listen}: {source}")]
    Resolve {
        listen: Address,
        source: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(Address),
    #[error("the token source {name} gave no token for {app}: {source}")]
    NoToken {
        name: String,
        app: String,
        source: PluginError,
    },
    #[error("the token cannot be sent: {0}")]
    Token(WireError),
    #[error("cannot open a stream: {0}")]
    Open(ConnectionError),
    #[error("cannot send the token: {0}")]
    Send(WriteError),
    #[error("no answer to the test token: {0}")]
    Answer(HandshakeError),
    #[error("no answer to the test token within {0:?}")]
    AnswerTimeout(Duration),
    #[error("{0}")]
    Refused(String),
    /// With several services: each one that failed, by name.
    #[error("{}", several(.0))]
    Services(Vec<(String, CheckError)>),
    /// With several servers: each one that failed, and how many were checked.
    #[error("{} of {} servers failed: {}", .failed.len(), .checked, servers_failed(.failed))]
    Servers {
        failed: Vec<(ServerEndpoint, CheckError)>,
        checked: usize,
    },
    #[error("cannot write the report: {0}")]
    Report(#[from] std::io::Error),
}

fn several(failed: &[(String, CheckError)]) -> String {
    let each: Vec<String> = failed
        .iter()
        .map(|(service, error)| format!("service {service}: {error}"))
        .collect();
    each.join("; ")
}

/// Each failed server's error, named by the server unless the error already names it.
fn servers_failed(failed: &[(ServerEndpoint, CheckError)]) -> String {
    let each: Vec<String> = failed
        .iter()
        .map(|(server, error)| match error {
            CheckError::Connect(_) => error.to_string(),
            _ => format!("server {server}: {error}"),
        })
        .collect();
    each.join("; ")
}

/// What the check needs, already parsed.
#[derive(Debug)]
pub struct CheckConfig {
    /// The servers, each checked in turn: at least one.
    pub servers: Vec<ServerEndpoint>,
    /// One test token per service, on the one connection.
    pub tests: Vec<TokenTest>,
    pub verification: Verification,
    /// The client's certificate, for servers that require one.
    pub identity: Option<Identity>,
    pub transport: TransportOptions,
    pub handshake_timeout: Duration,
}

/// One service's test token.
#[derive(Debug)]
pub struct TokenTest {
    pub service: String,
    pub source: TokenSource,
    /// The application address the token source is asked about.
    pub app_addr: String,
    /// A token to send instead of asking the token source.
    pub token: Option<String>,
}

/// Connects once to each server (trying each of its addresses until one answers), writes the
/// report to `out`, and succeeds only when every server accepts every service's test token.
/// A server's report holds what was found and, last, `token accepted` (with several services,
/// each service's lines start `service NAME: `). With one server, anything that failed (no
/// connection, a refused token) is the error only, never also a line of the report; a failure
/// to connect is the error the client logs, for each address tried. With several, each
/// server's report ends with `failed: ` and why when it failed, and the error names each
/// server that failed.
pub async fn run(mut config: CheckConfig, out: &mut impl Write) -> Result<(), CheckError> {
    let identity = config.identity.take();
    let servers = super::server_settings(
        &config.servers,
        &config.verification,
        identity,
        &config.transport,
    )?;
    let mut dialer = Dialer::new(
        ConnectorConfig {
            servers,
            handshake_timeout: config.handshake_timeout,
            max_backoff: Duration::ZERO,
        },
        Arc::default(),
    );
    let verdict = match config.servers.len() {
        1 => check_server(&mut dialer, 0, &config.tests, out).await,
        _ => check_each(&mut dialer, &config, out).await,
    };
    dialer.wait_idle(CLOSE_WAIT).await;
    verdict
}

/// Checks every server in turn; each failure is kept, named by its server.
async fn check_each(
    dialer: &mut Dialer,
    config: &CheckConfig,
    out: &mut impl Write,
) -> Result<(), CheckError> {
    let mut failed = Vec::new();
    for (index, server) in config.servers.iter().enumerate() {
        if let Err(error) = check_server(dialer, index, &config.tests, out).await {
            if let CheckError::Report(error) = error {
                return Err(CheckError::Report(error));
            }
            writeln!(out, "server {server}: failed: {error}")?;
            failed.push((server.clone(), error));
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(CheckError::Servers {
            failed,
            checked: config.servers.len(),
        }),
    }
}

/// Connects to the server at `index`, reports on the connection and tests the tokens on it.
async fn check_server(
    dialer: &mut Dialer,
    index: usize,
    tests: &[TokenTest],
    out: &mut impl Write,
) -> Result<(), CheckError> {
    let connection = dialer.connect_any(index).await?;
    report(dialer.current(), &connection, out)?;
    let verdict = test_tokens(tests, &connection, out).await;
    connection.close(ErrorCode::Done.varint(), b"check done");
    verdict
}

/// The application address to ask the token source about when none is given: where an
/// application on this host would come from when it connects to `listen` — a UNIX listener's
/// own address, or the TCP listener's address with a wildcard IP read as loopback.
pub async fn app_addr_for(listen: &Address) -> Result<String, CheckError> {
    let host_port = match listen {
        Address::Unix(_) => return Ok(listen.to_string()),
        Address::Tcp(host_port) | Address::Udp(host_port) => host_port,
    };
    let addr = *host_port
        .resolve()
        .await
        .map_err(|source| CheckError::Resolve {
            listen: listen.clone(),
            source,
        })?
        .first()
        .ok_or_else(|| CheckError::NoAddress(listen.clone()))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()).to_string())
}

/// The lines about the connection itself.
fn report(
    server: &ServerEndpoint,
    connection: &Connection,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let fingerprint = tls::peer_fingerprint(connection)
        .map(|f| f.to_string())
        .unwrap_or_else(|| "unknown (the server showed no certificate)".into());
    let alpn = match negotiated_alpn(connection) {
        Some(_) => Protocol::of(connection).describe(),
        None => "none",
    };
    let rtt = connection.rtt().as_secs_f64() * 1000.0;
    writeln!(out, "server {server} ({})", connection.remote_address())?;
    writeln!(out, "fingerprint {fingerprint}")?;
    writeln!(out, "alpn {alpn}")?;
    writeln!(out, "rtt {rtt:.2} ms")?;
    Ok(())
}

/// Tests each service's token in turn; every failure is kept, named by its service.
async fn test_tokens(
    tests: &[TokenTest],
    connection: &Connection,
    out: &mut impl Write,
) -> Result<(), CheckError> {
    if let [only] = tests {
        return test_token(only, connection, "", out).await;
    }
    let mut failed = Vec::new();
    for test in tests {
        let prefix = format!("service {}: ", test.service);
        if let Err(error) = test_token(test, connection, &prefix, out).await {
            failed.push((test.service.clone(), error));
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(CheckError::Services(failed)),
    }
}

/// Gets the test token, sends it, and reports the server's answer, each line after `prefix`.
async fn test_token(
    config: &TokenTest,
    connection: &Connection,
    prefix: &str,
    out: &mut impl Write,
) -> Result<(), CheckError> {
    let token = match &config.token {
        Some(token) => {
            writeln!(
                out,
                "{prefix}token from --check-token ({} bytes)",
                token.len()
            )?;
            token.as_bytes().to_vec()
        }
        None => {
            let (name, app) = (&config.source.info().name, &config.app_addr);
            let token = config
                .source
                .token(app)
                .await
                .map_err(|source| CheckError::NoToken {
                    name: name.clone(),
                    app: app.clone(),
                    source,
                })?;
            writeln!(
                out,
                "{prefix}token from {name} for {app} ({} bytes)",
                token.len()
            )?;
            token
        }
    };
    let protocol = Protocol::of(connection);
    let answer = tokio::time::timeout(ANSWER_WAIT, send_token(connection, &token, protocol))
        .await
        .map_err(|_| CheckError::AnswerTimeout(ANSWER_WAIT))??;
    if answer.status == Status::Ok {
        writeln!(out, "{prefix}token accepted")?;
        return Ok(());
    }
    // A refusal is the error the binary prints, once, on standard error.
    let refusal = match answer.reason.as_str() {
        "" => format!("token refused: {}", answer.status),
        reason => format!("token refused: {}: {reason}", answer.status),
    };
    Err(CheckError::Refused(refusal))
}

/// Sends `token` on a new stream, finished at once, and reads the answer.
async fn send_token(
    connection: &Connection,
    token: &[u8],
    protocol: Protocol,
) -> Result<Answer, CheckError> {
    let frame = protocol.token_frame(token).map_err(CheckError::Token)?;
    let (mut send, mut recv) = connection.open_bi().await.map_err(CheckError::Open)?;
    send.write_all(&frame).await.map_err(CheckError::Send)?;
    let _ = send.finish();
    let answer = handshake::read_answer(&mut recv, protocol).await;
    // Whatever the target would send is of no interest; the original's server repeats a
    // refusal until the client stops reading.
    let _ = recv.stop(ErrorCode::Done.varint());
    answer.map_err(CheckError::Answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_app_address_is_where_a_local_application_comes_from() {
        let app = |s: &str| s.parse::<Address>().unwrap();
        assert_eq!(
            app_addr_for(&app("tcp:127.0.0.1:6500")).await.unwrap(),
            "127.0.0.1:6500"
        );
        assert_eq!(
            app_addr_for(&app("tcp:0.0.0.0:6500")).await.unwrap(),
            "127.0.0.1:6500"
        );
        assert_eq!(
            app_addr_for(&app("tcp:[::]:6500")).await.unwrap(),
            "[::1]:6500"
        );
        assert_eq!(
            app_addr_for(&app("tcp:10.1.2.3:80")).await.unwrap(),
            "10.1.2.3:80"
        );
        assert_eq!(
            app_addr_for(&app("unix:/run/app.sock")).await.unwrap(),
            "unix:/run/app.sock"
        );
    }
}
