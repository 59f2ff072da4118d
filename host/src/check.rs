//! `quictun-client --check`: one connection to the server, made and verified exactly as the
//! client makes it, a report of what was found (the server's certificate fingerprint, the
//! protocol agreed on, the round-trip time) and one test token sent the way a tunnel sends it,
//! then a clean close. What to run first when a tunnel does not work.
//!
//! The test token goes on a stream of its own with no application bytes after it and the
//! stream finished at once: a server that accepts it dials the target (it must, to answer),
//! and the target sees the connection end straight away.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::Connection;
use rustls::pki_types::CertificateDer;

use crate::addr::{Address, HostPort};
use crate::client;
use crate::connector::{ConnectorConfig, Dialer};
use crate::identity::{Fingerprint, Identity};
use crate::plugins::TokenSource;
use crate::relay;
use crate::tls::Verification;
use crate::transport::{self, TransportOptions};
use crate::wire::{self, Answer, ErrorCode, Status};

/// Longest wait for the server's answer to the test token. The server dials the target
/// before it answers, and gives up on that after its `--connect-timeout` (10 s by default).
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for the close to reach the server before the process exits.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the check needs, already parsed.
#[derive(Debug)]
pub struct CheckConfig {
    pub server: HostPort,
    pub source: TokenSource,
    /// The application address the token source is asked about.
    pub app_addr: String,
    /// A token to send instead of asking the token source.
    pub token: Option<String>,
    pub verification: Verification,
    /// The client's certificate, for servers that require one.
    pub identity: Option<Identity>,
    pub transport: TransportOptions,
    pub handshake_timeout: Duration,
}

/// Connects once (trying each of the server's addresses until one answers), writes the
/// report to `out`, and succeeds only when the server accepts the test token. A failure to
/// connect is the error the client logs, for each address tried.
pub async fn run(mut config: CheckConfig, out: &mut impl Write) -> anyhow::Result<()> {
    let identity = config.identity.take();
    let quic = client::quic_config(&config.verification, identity, &config.transport)?;
    let mut dialer = Dialer::new(
        ConnectorConfig {
            server: config.server.clone(),
            quic,
            handshake_timeout: config.handshake_timeout,
            max_backoff: Duration::ZERO,
        },
        Arc::default(),
    );
    let connection = dialer.connect_any().await?;
    report(&config.server, &connection, out)?;
    let verdict = test_token(&config, &connection, out).await;
    connection.close(ErrorCode::Done.varint(), b"check done");
    dialer.wait_idle(CLOSE_WAIT).await;
    verdict
}

/// The application address to ask the token source about when none is given: where an
/// application on this host would come from when it connects to `listen` — a UNIX listener's
/// own address, or the TCP listener's address with a wildcard IP read as loopback.
pub async fn app_addr_for(listen: &Address) -> anyhow::Result<String> {
    let host_port = match listen {
        Address::Unix(_) => return Ok(listen.to_string()),
        Address::Tcp(host_port) => host_port,
    };
    let addr = *host_port
        .resolve()
        .await
        .with_context(|| format!("cannot resolve {listen}"))?
        .first()
        .with_context(|| format!("{listen} resolves to no address"))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()).to_string())
}

/// The lines about the connection itself.
fn report(server: &HostPort, connection: &Connection, out: &mut impl Write) -> anyhow::Result<()> {
    let fingerprint = peer_fingerprint(connection)
        .map(|f| f.to_string())
        .unwrap_or_else(|| "unknown (the server showed no certificate)".into());
    let alpn = transport::negotiated_alpn(connection)
        .map(|alpn| describe_alpn(&alpn))
        .unwrap_or_else(|| "none".into());
    let rtt = connection.rtt().as_secs_f64() * 1000.0;
    writeln!(out, "server {server} ({})", connection.remote_address())?;
    writeln!(out, "fingerprint {fingerprint}")?;
    writeln!(out, "alpn {alpn}")?;
    writeln!(out, "rtt {rtt:.2} ms")?;
    Ok(())
}

fn describe_alpn(alpn: &[u8]) -> String {
    let name = String::from_utf8_lossy(alpn);
    if alpn == wire::ALPN_LEGACY {
        format!("{name} (the original protocol)")
    } else {
        name.into_owned()
    }
}

/// The SHA-256 fingerprint of the certificate the server showed.
fn peer_fingerprint(connection: &Connection) -> Option<Fingerprint> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(Fingerprint::of)
}

/// Gets the test token, sends it, and reports the server's answer.
async fn test_token(
    config: &CheckConfig,
    connection: &Connection,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let token = match &config.token {
        Some(token) => {
            writeln!(out, "token from --check-token ({} bytes)", token.len())?;
            token.as_bytes().to_vec()
        }
        None => {
            let (name, app) = (&config.source.info().name, &config.app_addr);
            let token = config
                .source
                .token(app)
                .await
                .with_context(|| format!("the token source {name} gave no token for {app}"))?;
            writeln!(out, "token from {name} for {app} ({} bytes)", token.len())?;
            token
        }
    };
    let legacy = transport::negotiated_alpn(connection).as_deref() == Some(wire::ALPN_LEGACY);
    let answer = tokio::time::timeout(ANSWER_WAIT, send_token(connection, &token, legacy))
        .await
        .map_err(|_| anyhow::anyhow!("no answer to the test token within {ANSWER_WAIT:?}"))??;
    if answer.status == Status::Ok {
        writeln!(out, "token accepted")?;
        return Ok(());
    }
    let refusal = match answer.reason.as_str() {
        "" => format!("token refused: {}", answer.status),
        reason => format!("token refused: {}: {reason}", answer.status),
    };
    writeln!(out, "{refusal}")?;
    anyhow::bail!(refusal)
}

/// Sends `token` on a new stream, finished at once, and reads the answer.
async fn send_token(connection: &Connection, token: &[u8], legacy: bool) -> anyhow::Result<Answer> {
    let (frame, preface) =
        client::token_frame(token, legacy).context("the token cannot be sent")?;
    let (mut send, mut recv) = connection.open_bi().await.context("cannot open a stream")?;
    send.write_all(&frame)
        .await
        .context("cannot send the token")?;
    let _ = send.finish();
    let answer = relay::read_preface(&mut recv, preface).await;
    // Whatever the target would send is of no interest; the original's server repeats a
    // refusal until the client stops reading.
    let _ = recv.stop(ErrorCode::Done.varint());
    Ok(answer
        .context("no answer to the test token")?
        .unwrap_or_else(Answer::ok))
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

    #[test]
    fn the_original_protocol_is_named() {
        assert_eq!(describe_alpn(wire::ALPN_V2), "quic-tun/2");
        assert_eq!(
            describe_alpn(wire::ALPN_LEGACY),
            "quic-tun (the original protocol)"
        );
    }
}
