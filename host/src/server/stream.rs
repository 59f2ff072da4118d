//! One tunnel on the server: read the token, ask the token parser for the target, check the
//! policy, dial, answer, relay (SPEC §6).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tracing::{debug, warn};

use super::ServerCore;
use super::connection::OpenStream;
use super::flow::serve_flow;
use super::policy::Policy;
use crate::plugins::TokenParser;
use crate::tunnel::app::{AppStream, within};
use crate::tunnel::relay::{self, Abort, Opening, log_end};
use crate::tunnel::sniff::Sniffer;
use crate::tunnel::udp::FlowTable;
use crate::tunnel::{Side, Transport, Tunnel, TunnelSpec};
use crate::wire::addr::{Address, HostPort};
use crate::wire::handshake::{self, HandshakeError, Protocol};
use crate::wire::{Answer, Status};

/// Serves one tunnel.
/// `open` counts the stream in its connection until the tunnel ends. One of the connection's
/// places to read a token is taken once the token's header is in and given back as soon as
/// the token is (or has failed), so a connection reads at most a bounded number at once.
pub(super) async fn serve_stream(
    (mut send, mut recv): (SendStream, RecvStream),
    connection: Connection,
    core: Arc<ServerCore>,
    mut open: OpenStream,
    flows: Arc<FlowTable>,
) {
    let remote_endpoint = connection.remote_address();
    let protocol = Protocol::of(&connection);
    let limit = core.handshake_timeout;
    let token = handshake::read_token(&mut recv, &connection, protocol, limit, open.reader()).await;
    open.token_read(&connection);
    let token = match token {
        Some(Ok(token)) => token,
        Some(Err(HandshakeError::Wire(error))) => {
            warn!("bad token frame: {error}");
            let answer = Answer::refuse(Status::BadToken, &error.to_string());
            return refuse(&core, (send, recv), protocol, answer).await;
        }
        Some(Err(error)) => {
            return debug!("stream ended before its token: {}", Abort::from(error));
        }
        None => {
            let reason = format!("no token within {limit:?}");
            warn!("tunnel refused: {reason}");
            let answer = Answer::refuse(Status::BadToken, &reason);
            return refuse(&core, (send, recv), protocol, answer).await;
        }
    };
    let target = match target_of(&core.parser, token).await {
        Ok(target) => target,
        Err(answer) => {
            warn!(status = %answer.status, "tunnel refused: {}", answer.reason);
            return refuse(&core, (send, recv), protocol, answer).await;
        }
    };
    tracing::Span::current().record("server_app", tracing::field::display(&target));
    if let Address::Udp(host_port) = &target {
        let streams = (send, recv);
        return serve_flow(
            streams,
            connection,
            core.clone(),
            &target,
            host_port,
            &flows,
        )
        .await;
    }
    let app = match dial(&target, &core.policy, core.connect_timeout).await {
        Ok(app) => app,
        Err(answer) => {
            warn!(status = %answer.status, "tunnel refused: {}", answer.reason);
            return refuse(&core, (send, recv), protocol, answer).await;
        }
    };
    // The original's client waits for the answer before it sends anything: it goes at once.
    // Ours sends right away, and the answer can wait for the target's first bytes.
    let answer = protocol.answer_frame(&Answer::ok());
    let opening = match protocol {
        Protocol::Legacy => {
            if let Err(error) = send.write_all(&answer).await {
                return debug!("peer went away before the answer: {error}");
            }
            None
        }
        Protocol::V2 => Some(Opening::SendAnswer(answer)),
    };
    debug!("tunnel open");
    let registered = core.registry.register(Tunnel::new(TunnelSpec {
        stream_id: u64::from(send.id()),
        side: Side::Server,
        client_app: None,
        server_app: Some(target.to_string()),
        remote_endpoint,
        connection: connection.stable_id(),
        service: None,
        transport: Transport::of(&target),
    }));
    let tunnel = registered.tunnel();
    let sniffer = Sniffer::start(&core.discriminators, tunnel.clone());
    log_end(
        relay::relay(app, send, recv, tunnel, opening, sniffer.as_ref()).await,
        tunnel,
    );
}

/// Asks the parser for the target; a refusal becomes the answer to send.
async fn target_of(parser: &TokenParser, token: Vec<u8>) -> Result<Address, Answer> {
    use quictun_plugin_api::FailureKind;
    let text = parser.target(token).await.map_err(|error| {
        let status = match error.kind {
            FailureKind::Refused => Status::BadToken,
            FailureKind::Failed | FailureKind::Panicked => Status::PluginError,
        };
        Answer::refuse(status, &error.message)
    })?;
    text.parse::<Address>().map_err(|error| {
        Answer::refuse(
            Status::BadToken,
            &format!("token names no valid target: {error}"),
        )
    })
}

/// Dials the target if the policy allows it. CIDR rules are checked against each resolved
/// address, so only allowed addresses are ever dialed.
async fn dial(target: &Address, policy: &Policy, timeout: Duration) -> Result<AppStream, Answer> {
    match target {
        Address::Unix(path) if !policy.allows_unix(path) => Err(not_allowed(target)),
        Address::Unix(path) => AppStream::connect_unix(path, timeout)
            .await
            .map_err(|error| unreachable(target, error)),
        Address::Udp(_) => Err(unreachable(target, io::ErrorKind::Unsupported.into())),
        Address::Tcp(host_port) => {
            let allowed = allowed_addrs(target, host_port, policy, timeout).await?;
            AppStream::connect_tcp(&allowed, timeout)
                .await
                .map_err(|error| unreachable(target, error))
        }
    }
}

/// Resolves a TCP or UDP target and keeps the addresses the policy allows (SPEC §7: rules
/// apply to TCP and UDP targets alike).
pub(super) async fn allowed_addrs(
    target: &Address,
    host_port: &HostPort,
    policy: &Policy,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Answer> {
    let resolved = within(timeout, host_port.resolve())
        .await
        .map_err(|error| unreachable(target, error))?;
    let allowed: Vec<SocketAddr> = if policy.allows_name(host_port) {
        // A name rule trusts the name, but never to this machine's wildcard address.
        let specified = |addr: &&SocketAddr| !addr.ip().is_unspecified();
        resolved.iter().filter(specified).copied().collect()
    } else {
        resolved
            .iter()
            .copied()
            .filter(|&addr| policy.allows_addr(addr))
            .collect()
    };
    // The reason names the target as the token gave it, never what it resolved to:
    // a refusal must not answer DNS questions about the server's network.
    if allowed.is_empty() && !resolved.is_empty() {
        return Err(not_allowed(target));
    }
    Ok(allowed)
}

pub(super) fn unreachable(target: &Address, error: io::Error) -> Answer {
    Answer::refuse(
        Status::Unreachable,
        &format!("cannot reach {target}: {error}"),
    )
}

fn not_allowed(target: &Address) -> Answer {
    Answer::refuse(
        Status::NotAllowed,
        &format!("target {target} is not allowed by --allow-target"),
    )
}

/// Refuses the tunnel with `answer`, counted by status for `/metrics`.
pub(super) async fn refuse(
    core: &ServerCore,
    (send, recv): (SendStream, RecvStream),
    protocol: Protocol,
    answer: Answer,
) {
    core.registry.count_refused(answer.status, None);
    handshake::refuse(send, recv, protocol, answer).await;
}
